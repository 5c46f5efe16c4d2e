//! The tracer's questions during a migration ("has the guest answered since …?", "how
//! many RARPs since …?"), asked every 10–20 ms under the collector's lock, against a
//! store of n events: answered from the store's indexes, and by scanning every event as
//! the tracer did before. A synthetic stream, no root needed:
//! `cargo bench -p migtrace --bench tracer_store`.

use std::{hint::black_box, time::Instant};

use migtrace::probe::{Event, store::EventStore};
use migtrace_common::event::{EventHeader, EventKind, PacketEvent, PacketKind};

fn packet(kind: PacketKind, ident: u16, ifindex: u32, ts_ns: u64, sent_ns: u64) -> Event {
    Event::Packet(PacketEvent {
        header: EventHeader { kind: EventKind::Packet as u32, ts_ns, ..EventHeader::default() },
        ifindex,
        kind: kind as u32,
        ident,
        payload_stamp: sent_ns,
        ..PacketEvent::default()
    })
}

/// A 100 kHz probe sender's replies (ident 7) through tap 3, a ping's every 5,000th
/// (ident 9), five RARPs at the end through tap 4.
fn stream(n: usize) -> Vec<Event> {
    let mut events: Vec<Event> = (0..n as u64)
        .map(|i| {
            let ident = if i % 5000 == 0 { 9 } else { 7 };
            packet(PacketKind::IcmpEchoReply, ident, 3, i * 10_000 + 50, i * 10_000)
        })
        .collect();
    let end = n as u64 * 10_000;
    events.extend((0..5).map(|i| packet(PacketKind::Rarp, 0, 4, end + i, 0)));
    events
}

/// The tracer's scans before the store was indexed.
fn scan_answered(events: &[Event], ident: u16, since_ns: u64) -> bool {
    events.iter().rev().any(|e| match e {
        Event::Packet(p) => {
            p.kind == PacketKind::IcmpEchoReply as u32 && p.ident == ident && p.payload_stamp >= since_ns
        }
        _ => false,
    })
}

fn scan_rarps(events: &[Event], ifindex: u32, since_ns: u64) -> usize {
    events
        .iter()
        .filter(|e| match e {
            Event::Packet(p) => p.kind == PacketKind::Rarp as u32 && p.ifindex == ifindex && p.header.ts_ns >= since_ns,
            _ => false,
        })
        .count()
}

/// Mean ns per call of `f` over `calls` calls.
fn per_call(calls: u32, mut f: impl FnMut() -> usize) -> f64 {
    let start = Instant::now();
    let mut sink = 0;
    for _ in 0..calls {
        sink += f();
    }
    black_box(sink);
    start.elapsed().as_nanos() as f64 / calls as f64
}

fn main() {
    println!("tracer store: the settle loop's two questions (answered since, RARPs since), ns per pair");
    println!("| events in the store | indexed | scanning every event (before) | store put, ns per event |");
    println!("| ---: | ---: | ---: | ---: |");
    for n in [1_000usize, 10_000, 100_000, 1_000_000] {
        let events = stream(n);
        let mut store = EventStore::with_capacity(n + 5);
        let start = Instant::now();
        for batch in events.chunks(4096) {
            store.put(batch.to_vec());
        }
        let put_ns = start.elapsed().as_nanos() as f64 / events.len() as f64;
        // Not answered yet: the scan's worst case, as in the settle loop's first polls.
        let since = n as u64 * 10_000;
        let calls = (10_000_000 / n as u32).clamp(20, 100_000);
        let indexed = per_call(100_000, || {
            black_box(store.answered_since(7, black_box(since))) as usize + store.rarps_since(4, black_box(0))
        });
        let scanned = per_call(calls, || {
            black_box(scan_answered(&events, 7, black_box(since))) as usize + scan_rarps(&events, 4, black_box(0))
        });
        assert_eq!(store.rarps_since(4, 0), scan_rarps(&events, 4, 0));
        assert_eq!(store.answered_since(7, since), scan_answered(&events, 7, since));
        println!("| {n} | {indexed:.0} | {scanned:.0} | {put_ns:.1} |");
    }
}
