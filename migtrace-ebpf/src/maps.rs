//! Maps shared by every program family, and the helpers that write records.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};
use migtrace_common::event::{EventHeader, EventKind, LOSS_MAP_LEN};

/// Every record, in order of reservation. 8 MiB holds over 200,000 of the largest
/// records, i.e. well over 100 ms of the fastest stream at 1M records/s.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Per-CPU count of records that could not be reserved, by [`EventKind`].
#[map]
pub static LOSS: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_MAP_LEN, 0);

/// Processes to trace: tgid → [`migtrace_common::event::Role`].
#[map]
pub static TARGETS: HashMap<u32, u32> = HashMap::with_max_entries(64, 0);

/// The calling task's tgid if it is a traced process, with its role.
#[inline(always)]
pub fn traced_role() -> Option<(u32, u32)> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: the value is a plain u32 copied out immediately.
    unsafe { TARGETS.get(&tgid) }.map(|role| (tgid, *role))
}

/// A header for a record of `kind` raised by the current task, stamped now.
#[inline(always)]
pub fn header(kind: EventKind) -> EventHeader {
    let pid_tgid = bpf_get_current_pid_tgid();
    EventHeader {
        kind: kind as u32,
        // SAFETY: helper without preconditions.
        cpu: unsafe { bpf_get_smp_processor_id() },
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
    }
}

/// Writes `record` to [`EVENTS`], counting a loss if the ring buffer is full.
#[inline(always)]
pub fn emit<T: 'static>(kind: EventKind, record: T) {
    match EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            entry.write(record);
            entry.submit(0);
        }
        None => count_loss(kind),
    }
}

#[inline(always)]
pub fn count_loss(kind: EventKind) {
    if let Some(n) = LOSS.get_ptr_mut(kind as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe { *n += 1 };
    }
}
