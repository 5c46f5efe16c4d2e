//! Maps shared by every program family, and the helpers that write records.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use aya_log_ebpf::warn;
use migtrace_common::event::{
    Diag, EventHeader, EventKind, InflightIoctl, KvmStat, KvmStatKey, LINK_BYTES, LINK_MAP_LEN, LOSS_MAP_LEN, VcpuRun,
};

/// Every streamed record, in order of reservation. The largest record is 64 bytes, a
/// 72-byte slot with the ring buffer's header: 8 MiB hold about 116,000 of them, over
/// 100 ms of the fastest stream at 1M records/s.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Per-CPU "already reported" flags of [`Diag`]: each diagnostic is logged once per CPU,
/// so a broken layout or a full map never turns into a log record per event.
#[map]
pub static DIAG_SEEN: PerCpuArray<u32> = PerCpuArray::with_max_entries(Diag::COUNT, 0);

/// Per-CPU count of each [`Diag`] raised, read by userspace into the trace's health: a
/// full map or an unreadable layout is a figure missing, never a silent zero.
#[map]
pub static DIAG_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(Diag::COUNT, 0);

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

/// The lab link's data counter: [`LINK_BYTES`] bytes of data packets that arrived at
/// either end so far, [`LINK_LAST_NS`] when the last one arrived. Shared by every CPU (atomic
/// adds): one stream crosses the link at a time.
#[map]
pub static LINK: Array<u64> = Array::with_max_entries(LINK_MAP_LEN, 0);

/// Data bytes the lab's link has carried so far (0 where no link is traced).
#[inline(always)]
pub fn link_bytes() -> u64 {
    // A concurrent add makes it at worst one packet stale.
    LINK.get(LINK_BYTES).copied().unwrap_or(0)
}

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

/// Counts diagnostic `d` (see [`DIAG_COUNT`]) and tells whether it is raised for the
/// first time on this CPU, to be logged then.
#[inline(always)]
pub fn raise(d: Diag) -> bool {
    if let Some(n) = DIAG_COUNT.get_ptr_mut(d as u32) {
        atomic_add(n, 1);
    }
    first_time(d)
}

/// Whether diagnostic `d` is raised for the first time on this CPU (see [`DIAG_SEEN`]).
/// Two preempted programs on one CPU may both see "first": a duplicate log line at
/// worst.
#[inline(always)]
fn first_time(d: Diag) -> bool {
    match DIAG_SEEN.get_ptr_mut(d as u32) {
        // SAFETY: a per-CPU u32 slot of a map that outlives the program.
        Some(seen) => unsafe {
            if *seen != 0 {
                return false;
            }
            *seen = 1;
            true
        },
        None => false,
    }
}

/// Adds `n` to a per-CPU counter. Uprobe and syscall tracepoint programs are
/// preemptible, so another program may update the same slot on this CPU in between:
/// a plain `+=` could lose counts.
#[inline(always)]
pub fn atomic_add(counter: *mut u64, n: u64) {
    // The bpf target has no `AtomicU64::fetch_add` (no compare-and-swap); the intrinsic
    // compiles to BPF's atomic add.
    // SAFETY: `counter` points into a map value, 8-byte aligned, valid while we run.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
}

/// Writes `record` to [`EVENTS`], counting a loss if the ring buffer is full.
#[inline(always)]
pub fn emit<C: EbpfContext, T: 'static>(ctx: &C, kind: EventKind, record: T) {
    match EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            entry.write(record);
            entry.submit(0);
        }
        None => {
            if let Some(n) = LOSS.get_ptr_mut(kind as u32) {
                atomic_add(n, 1);
            }
            // Counted per kind in LOSS already.
            if first_time(Diag::RingFull) {
                warn!(ctx, "ring buffer full: records lost (counted per kind in LOSS)");
            }
        }
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
pub fn kvm_stat_add<C: EbpfContext>(ctx: &C, key: &KvmStatKey, ns: u64) {
    if KVM_STATS.get_ptr_mut(key).is_none() {
        // NOEXIST: a program that preempted us may have created the entry meanwhile;
        // then both add below instead of one overwriting the other.
        let zero = KvmStat { count: 0, total_ns: 0, max_ns: 0 };
        if KVM_STATS.insert(key, zero, BPF_NOEXIST as u64).is_err()
            && KVM_STATS.get_ptr_mut(key).is_none()
            && raise(Diag::KvmStatsFull)
        {
            warn!(ctx, "KVM_STATS is full: KVM counts of process {} are incomplete", key.tgid);
        }
    }
    let Some(stat) = KVM_STATS.get_ptr_mut(key) else { return };
    // SAFETY: a per-CPU value of the map, valid while we run.
    unsafe {
        atomic_add(&raw mut (*stat).count, 1);
        atomic_add(&raw mut (*stat).total_ns, ns);
        // The maximum is not atomic (no compare-and-swap here): a preempting program
        // may overwrite a larger value with its own, never a count.
        if ns > (*stat).max_ns {
            (*stat).max_ns = ns;
        }
    }
}

/// Adds `n` to the count under `key` (a quantity such as pages, without latency).
/// The lookup-or-create stays written out in both: a shared helper returning the
/// entry's pointer made `kvm_ioctl_exit` fail verification (state explosion).
#[inline(always)]
pub fn kvm_stat_add_n<C: EbpfContext>(ctx: &C, key: &KvmStatKey, n: u64) {
    if KVM_STATS.get_ptr_mut(key).is_none() {
        // NOEXIST, as in kvm_stat_add: a preempting program may have created it.
        let zero = KvmStat { count: 0, total_ns: 0, max_ns: 0 };
        if KVM_STATS.insert(key, zero, BPF_NOEXIST as u64).is_err()
            && KVM_STATS.get_ptr_mut(key).is_none()
            && raise(Diag::KvmStatsFull)
        {
            warn!(ctx, "KVM_STATS is full: KVM counts of process {} are incomplete", key.tgid);
        }
    }
    let Some(stat) = KVM_STATS.get_ptr_mut(key) else { return };
    // SAFETY: a per-CPU value of the map, valid while we run.
    unsafe { atomic_add(&raw mut (*stat).count, n) };
}

/// A vCPU thread starts running guest code.
#[inline(always)]
pub fn vcpu_enter<C: EbpfContext>(ctx: &C, tgid: u32, tid: u32, now: u64) {
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
            if VCPU_RUN.insert(&tid, run, 0).is_err() && raise(Diag::VcpuRunFull) {
                warn!(ctx, "VCPU_RUN is full: vCPU thread {} of process {} is not timed", tid, tgid);
            }
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
