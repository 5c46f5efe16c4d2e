//! Drain the ring buffer on a tokio task and hand decoded events on in batches.
//!
//! Batching keeps the per-record cost at a copy and a match, which is what lets one core
//! drain over a million records per second; a full channel back-pressures into the ring
//! buffer, where the kernel side counts what it could not reserve (never silent loss).

use std::{
    mem::size_of,
    ptr,
    sync::{Arc, Mutex},
};

use aya::maps::{MapData, RingBuf};
use migtrace_common::event::{EventHeader, EventKind, PacketEvent, PhaseEvent, SelftestEvent};
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use super::store::EventStore;

/// A decoded ring-buffer record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    SelftestUprobe(SelftestEvent),
    SelftestSyscall(SelftestEvent),
    Phase(PhaseEvent),
    Packet(PacketEvent),
}

impl Event {
    pub fn header(&self) -> &EventHeader {
        match self {
            Event::SelftestUprobe(e) | Event::SelftestSyscall(e) => &e.header,
            Event::Phase(e) => &e.header,
            Event::Packet(e) => &e.header,
        }
    }

    /// Decodes one record. Records of unknown kind or wrong size yield `None`: they mean
    /// the userspace and kernel halves come from different builds.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let header: EventHeader = read(bytes)?;
        Some(match EventKind::from_u32(header.kind)? {
            EventKind::SelftestUprobe => Event::SelftestUprobe(read(bytes)?),
            EventKind::SelftestSyscall => Event::SelftestSyscall(read(bytes)?),
            EventKind::Phase => Event::Phase(read(bytes)?),
            EventKind::Packet => Event::Packet(read(bytes)?),
        })
    }
}

fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    (bytes.len() >= size_of::<T>()).then(|| {
        // SAFETY: length checked; T is a plain-old-data record, read unaligned.
        unsafe { ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
    })
}

/// What a collector saw over its lifetime.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CollectorStats {
    pub records: u64,
    pub bytes: u64,
    /// Records that did not decode (see [`Event::decode`]).
    pub undecodable: u64,
}

/// Where drained events go.
#[derive(Clone)]
pub enum Sink {
    /// Batches through a channel; a full channel back-pressures into the ring buffer.
    Channel(mpsc::Sender<Vec<Event>>),
    /// Indexed and kept in a shared store, read after [`Collector::flush`].
    Store(Arc<Mutex<EventStore>>),
}

impl Sink {
    /// Hands a batch on; false when the receiver is gone.
    async fn put(&self, batch: Vec<Event>) -> bool {
        match self {
            Sink::Channel(tx) => tx.send(batch).await.is_ok(),
            Sink::Store(store) => {
                store.lock().unwrap_or_else(|p| p.into_inner()).put(batch);
                true
            }
        }
    }
}

/// A running drain task. Stop it with [`Collector::stop`], which drains what is left.
pub struct Collector {
    undecodable: Arc<std::sync::atomic::AtomicU64>,
    stop: oneshot::Sender<()>,
    flush: mpsc::Sender<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<CollectorStats>>,
}

/// Records handed on per batch, at most.
const BATCH: usize = 4096;

impl Collector {
    /// Starts draining `ring` into a channel. Must be called within a tokio runtime.
    pub fn spawn(ring: RingBuf<MapData>, tx: mpsc::Sender<Vec<Event>>) -> std::io::Result<Self> {
        Self::spawn_into(ring, Sink::Channel(tx))
    }

    /// Starts draining `ring` into `sink`. Must be called within a tokio runtime.
    pub fn spawn_into(ring: RingBuf<MapData>, sink: Sink) -> std::io::Result<Self> {
        // SAFETY: the RingBuf owns its map fd for its whole life and never swaps it.
        let mut fd = unsafe { AsyncFd::register(ring) }.map_err(std::io::Error::from)?;
        let (stop, mut stopped) = oneshot::channel();
        let (flush, mut flushes) = mpsc::channel::<oneshot::Sender<()>>(4);
        let undecodable = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let shared = undecodable.clone();
        let task = tokio::spawn(async move {
            let mut stats = CollectorStats::default();
            loop {
                tokio::select! {
                    biased;
                    guard = fd.readable_mut() => {
                        let mut guard = guard?;
                        // Clear before draining: the kernel only wakes us when we have
                        // consumed everything, so a wakeup during the drain must count.
                        guard.clear_ready();
                        if !drain(guard.get_inner_mut(), &sink, &mut stats).await {
                            break;
                        }
                    }
                    Some(done) = flushes.recv() => {
                        drain(fd.get_mut(), &sink, &mut stats).await;
                        shared.store(stats.undecodable, std::sync::atomic::Ordering::Relaxed);
                        let _ = done.send(());
                    }
                    _ = &mut stopped => {
                        drain(fd.get_mut(), &sink, &mut stats).await;
                        break;
                    }
                }
            }
            Ok(stats)
        });
        Ok(Self { undecodable, stop, flush, task })
    }

    /// Records that did not decode, as of the last flush.
    pub fn undecodable(&self) -> u64 {
        self.undecodable.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Returns once every record submitted before the call has reached the sink.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.flush.send(done).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Drains what is in the ring buffer now, stops, and returns the totals.
    pub async fn stop(self) -> std::io::Result<CollectorStats> {
        let _ = self.stop.send(());
        self.task.await.map_err(std::io::Error::other)?
    }
}

/// Moves everything currently in the ring buffer into the sink. Returns false when the
/// receiver is gone (nobody is listening, so stop).
async fn drain(ring: &mut RingBuf<MapData>, sink: &Sink, stats: &mut CollectorStats) -> bool {
    loop {
        let mut batch = Vec::with_capacity(BATCH);
        while batch.len() < BATCH {
            let Some(item) = ring.next() else { break };
            stats.records += 1;
            stats.bytes += item.len() as u64;
            match Event::decode(&item) {
                Some(event) => batch.push(event),
                None => stats.undecodable += 1,
            }
        }
        let full = batch.len() == BATCH;
        if !batch.is_empty() && !sink.put(batch).await {
            return false;
        }
        if !full {
            return true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a padding-free POD value.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    #[test]
    fn decodes_by_kind_and_rejects_short_or_unknown_records() {
        let ev = SelftestEvent {
            header: EventHeader { kind: EventKind::SelftestUprobe as u32, cpu: 1, tgid: 10, tid: 11, ts_ns: 99 },
            cookie: 7,
            arg0: 41,
        };
        let bytes = bytes_of(&ev);
        assert_eq!(Event::decode(&bytes), Some(Event::SelftestUprobe(ev)));
        assert_eq!(Event::decode(&bytes[..20]), None);
        let mut unknown = ev;
        unknown.header.kind = 999;
        assert_eq!(Event::decode(&bytes_of(&unknown)), None);
    }
}
