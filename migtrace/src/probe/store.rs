//! The tracer's store of one migration's events: bounded, and indexed for what is asked
//! while the migration runs (has the guest answered a probe request sent since …, how
//! many RARPs crossed a tap since …). Those questions come every 10–20 ms under the
//! collector's lock; answered from the indexes they cost the same however many events
//! are kept, so they never hold up the drain of the ring buffer.

use std::collections::{HashMap, VecDeque};

use migtrace_common::event::PacketKind;

use super::Event;

/// Events kept per migration, at most: 80 MiB of them, 10 s of the fastest probe sender
/// (100 kHz) plus everything else. What does not fit is counted and recorded
/// (`trace_health.dropped_records`), never silently lost; the indexes still see it.
pub const CAPACITY: usize = 1 << 20;

/// RARP stamps kept per interface: QEMU announces a handful of times per migration.
const RARPS_KEPT: usize = 256;

pub struct EventStore {
    events: Vec<Event>,
    capacity: usize,
    /// Events not kept since the last [`EventStore::take`] or [`EventStore::clear`].
    dropped: u64,
    /// The latest echoed send stamp of an ICMP echo reply, by identifier.
    latest_reply: HashMap<u16, u64>,
    /// The stamps of the latest RARPs, by interface index, in arrival order.
    rarps: HashMap<u32, VecDeque<u64>>,
}

impl Default for EventStore {
    fn default() -> Self {
        Self::with_capacity(CAPACITY)
    }
}

impl EventStore {
    pub fn with_capacity(capacity: usize) -> Self {
        Self { events: Vec::new(), capacity, dropped: 0, latest_reply: HashMap::new(), rarps: HashMap::new() }
    }

    /// Indexes every event of `batch` and keeps as many as there is room for.
    pub fn put(&mut self, batch: Vec<Event>) {
        for event in &batch {
            self.index(event);
        }
        let room = self.capacity.saturating_sub(self.events.len());
        self.dropped += batch.len().saturating_sub(room) as u64;
        self.events.extend(batch.into_iter().take(room));
    }

    fn index(&mut self, event: &Event) {
        let Event::Packet(p) = event else { return };
        match PacketKind::from_u32(p.kind) {
            Some(PacketKind::IcmpEchoReply) => {
                let latest = self.latest_reply.entry(p.ident).or_default();
                *latest = (*latest).max(p.payload_stamp);
            }
            Some(PacketKind::Rarp) => {
                let stamps = self.rarps.entry(p.ifindex).or_default();
                if stamps.len() == RARPS_KEPT {
                    stamps.pop_front();
                }
                stamps.push_back(p.header.ts_ns);
            }
            _ => {}
        }
    }

    /// Whether an echo reply with identifier `ident` echoed a send stamp at or after
    /// `since_ns` (the guest answered a request sent then or later).
    pub fn answered_since(&self, ident: u16, since_ns: u64) -> bool {
        self.latest_reply.get(&ident).is_some_and(|&sent| sent >= since_ns)
    }

    /// RARPs seen on interface `ifindex` at or after `since_ns` (of the latest
    /// [`RARPS_KEPT`]).
    pub fn rarps_since(&self, ifindex: u32, since_ns: u64) -> usize {
        self.rarps.get(&ifindex).map_or(0, |stamps| stamps.iter().filter(|&&t| t >= since_ns).count())
    }

    /// Events kept so far.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Forgets everything: a new migration starts.
    pub fn clear(&mut self) {
        self.events.clear();
        self.reset();
    }

    /// The events kept and how many were not, and a fresh start.
    pub fn take(&mut self) -> (Vec<Event>, u64) {
        let events = std::mem::take(&mut self.events);
        let dropped = self.dropped;
        self.reset();
        (events, dropped)
    }

    fn reset(&mut self) {
        self.dropped = 0;
        self.latest_reply.clear();
        self.rarps.clear();
    }
}

#[cfg(test)]
mod tests {
    use migtrace_common::event::{EventHeader, EventKind, PacketEvent, PhaseEvent};

    use super::*;

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

    #[test]
    fn keeps_at_most_its_capacity_counts_the_rest_and_still_answers_for_it() {
        let mut store = EventStore::with_capacity(1000);
        // A 100 kHz probe sender's replies (ident 7), 1.5 s of them after 10 ms.
        let replies: Vec<Event> =
            (0..150_000u64).map(|i| packet(PacketKind::IcmpEchoReply, 7, 3, i * 10_000 + 50, i * 10_000)).collect();
        for batch in replies.chunks(4096) {
            store.put(batch.to_vec());
        }
        store.put(vec![packet(PacketKind::Rarp, 0, 4, 2_000_000_000, 0), Event::Phase(PhaseEvent::default())]);
        assert_eq!(store.len(), 1000, "bounded");
        // The guest answered the last request (sent at 1,499,990,000 ns), though its
        // reply was not kept; and the RARP after the store filled is counted.
        assert!(store.answered_since(7, 1_499_990_000));
        assert!(!store.answered_since(7, 1_499_990_001));
        assert!(!store.answered_since(8, 0), "another sender's identifier");
        assert_eq!((store.rarps_since(4, 2_000_000_000), store.rarps_since(4, 2_000_000_001)), (1, 0));
        assert_eq!(store.rarps_since(3, 0), 0, "another interface");
        let (kept, dropped) = store.take();
        assert_eq!((kept.len(), dropped), (1000, 150_002 - 1000));
        // The first events are the ones kept: the migration's start, in order.
        assert_eq!(kept[0], replies[0]);
        assert_eq!(kept[999], replies[999]);
        // Taken: a fresh start.
        assert!(store.is_empty() && !store.answered_since(7, 0) && store.rarps_since(4, 0) == 0);
        assert_eq!(store.take().1, 0);
    }

    #[test]
    fn a_full_store_is_80_mib() {
        assert_eq!(std::mem::size_of::<Event>() * CAPACITY, 80 << 20);
    }

    #[test]
    fn clearing_forgets_the_events_and_the_indexes() {
        let mut store = EventStore::default();
        store.put(vec![packet(PacketKind::IcmpEchoReply, 7, 3, 100, 90), packet(PacketKind::Rarp, 0, 3, 110, 0)]);
        assert!(store.answered_since(7, 90) && store.rarps_since(3, 0) == 1);
        store.clear();
        assert!(store.is_empty() && !store.answered_since(7, 0) && store.rarps_since(3, 0) == 0);
    }

    #[test]
    fn keeps_the_latest_rarps_of_each_interface() {
        let mut store = EventStore::default();
        let rarps: Vec<Event> = (0..RARPS_KEPT as u64 + 10).map(|i| packet(PacketKind::Rarp, 0, 5, i, 0)).collect();
        store.put(rarps);
        assert_eq!(store.rarps_since(5, 0), RARPS_KEPT);
        assert_eq!(store.rarps_since(5, RARPS_KEPT as u64 + 5), 5);
    }
}
