//! Maps shared by every program family, and the helpers that write records.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::map,
    maps::{HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use migtrace_common::event::{EventHeader, EventKind, InflightIoctl, KvmStat, KvmStatKey, LOSS_MAP_LEN, VcpuRun};

/// Every streamed record, in order of reservation. 8 MiB holds over 130,000 of the
/// largest records: well over 100 ms of the fastest stream at 1M records/s.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Per-CPU count of records that could not be reserved, by [`EventKind`].
#[map]
pub static LOSS: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_MAP_LEN, 0);

/// Processes to trace: tgid → [`migtrace_common::event::Role`].
#[map]
pub static TARGETS: HashMap<u32, u32> = HashMap::with_max_entries(64, 0);

/// Dirty-log syncs so far per traced QEMU (tgid): the pre-copy round counter that KVM
/// statistics are keyed by.
#[map]
pub static ROUND: HashMap<u32, u32> = HashMap::with_max_entries(64, 0);

/// KVM ioctl counts/latencies and dirty-ring tracepoint counts, per process and round.
/// Aggregated here because these fire up to once per dirtied page.
#[map]
pub static KVM_STATS: PerCpuHashMap<KvmStatKey, KvmStat> = PerCpuHashMap::with_max_entries(4096, 0);

/// Per vCPU thread (tid): when it last entered and left guest code.
#[map]
pub static VCPU_RUN: HashMap<u32, VcpuRun> = HashMap::with_max_entries(1024, 0);

/// KVM ioctls in flight, by tid.
#[map]
pub static INFLIGHT: HashMap<u32, InflightIoctl> = HashMap::with_max_entries(1024, 0);

/// Arguments saved at a probed function's entry for its return probe, by (tid, point).
#[map]
pub static SAVED_ARGS: HashMap<u64, [u64; 5]> = HashMap::with_max_entries(1024, 0);

/// The calling task's tgid if it is a traced process, with its role.
#[inline(always)]
pub fn traced_role() -> Option<(u32, u32)> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: the value is a plain u32 copied out immediately.
    unsafe { TARGETS.get(&tgid) }.map(|role| (tgid, *role))
}

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// (tgid, tid) of the current task.
#[inline(always)]
pub fn current() -> (u32, u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    ((pid_tgid >> 32) as u32, pid_tgid as u32)
}

/// A header for a record of `kind` raised by the current task, stamped `ts_ns`.
#[inline(always)]
pub fn header_at(kind: EventKind, ts_ns: u64) -> EventHeader {
    let (tgid, tid) = current();
    EventHeader {
        kind: kind as u32,
        // SAFETY: helper without preconditions.
        cpu: unsafe { bpf_get_smp_processor_id() },
        tgid,
        tid,
        ts_ns,
    }
}

/// A header for a record of `kind` raised by the current task, stamped now.
#[inline(always)]
pub fn header(kind: EventKind) -> EventHeader {
    header_at(kind, now_ns())
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

/// The current round of process `tgid` (0 before its first dirty-log sync).
#[inline(always)]
pub fn round_of(tgid: u32) -> u32 {
    // SAFETY: plain u32 copied out.
    unsafe { ROUND.get(&tgid) }.copied().unwrap_or(0)
}

/// Adds one occurrence taking `ns` to the statistics under `key`.
#[inline(always)]
pub fn kvm_stat_add(key: &KvmStatKey, ns: u64) {
    match KVM_STATS.get_ptr_mut(key) {
        Some(stat) => {
            // SAFETY: per-CPU value: only this CPU writes it, and we are not preempted.
            unsafe {
                (*stat).count += 1;
                (*stat).total_ns += ns;
                if ns > (*stat).max_ns {
                    (*stat).max_ns = ns;
                }
            }
        }
        None => {
            let _ = KVM_STATS.insert(key, KvmStat { count: 1, total_ns: ns, max_ns: ns }, 0);
        }
    }
}

/// Adds `n` to the count under `key` (a quantity such as pages, without latency).
#[inline(always)]
pub fn kvm_stat_add_n(key: &KvmStatKey, n: u64) {
    match KVM_STATS.get_ptr_mut(key) {
        // SAFETY: per-CPU value: only this CPU writes it, and we are not preempted.
        Some(stat) => unsafe { (*stat).count += n },
        None => {
            let _ = KVM_STATS.insert(key, KvmStat { count: n, total_ns: 0, max_ns: 0 }, 0);
        }
    }
}

/// A vCPU thread starts running guest code.
#[inline(always)]
pub fn vcpu_enter(tgid: u32, tid: u32, now: u64) {
    match VCPU_RUN.get_ptr_mut(&tid) {
        // SAFETY: each entry is written only by its own thread.
        Some(run) => unsafe {
            if (*run).tgid != tgid {
                *run = VcpuRun { tgid, first_enter_ns: now, ..VcpuRun::default() };
            }
            (*run).last_enter_ns = now;
            (*run).enters += 1;
        },
        None => {
            let run = VcpuRun { tgid, _pad: 0, first_enter_ns: now, last_enter_ns: now, last_exit_ns: 0, enters: 1 };
            let _ = VCPU_RUN.insert(&tid, run, 0);
        }
    }
}

/// A vCPU thread stops running guest code.
#[inline(always)]
pub fn vcpu_exit(tid: u32, now: u64) {
    if let Some(run) = VCPU_RUN.get_ptr_mut(&tid) {
        // SAFETY: each entry is written only by its own thread.
        unsafe { (*run).last_exit_ns = now };
    }
}
