//! The KVM dirty-log path and vCPU runs, seen through syscall and `kvm:` tracepoints.
//!
//! These fire up to once per dirtied page or per vCPU entry, so nothing here is
//! streamed: counts and latencies accumulate in per-CPU maps keyed by process and
//! pre-copy round, and vCPU run times per thread, for userspace to read per migration.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use aya_log_ebpf::warn;
use migtrace_common::event::{Diag, InflightIoctl, KvmStatKey, KvmWhat};

use crate::maps::{INFLIGHT, current, first_time, kvm_stat_add, now_ns, round_of, traced_role, vcpu_enter, vcpu_exit};

/// Offset of `cmd` in `syscalls:sys_enter_ioctl`, read by userspace from the tracepoint's
/// format file and patched in at load time.
#[unsafe(no_mangle)]
static IOCTL_CMD_OFFSET: u32 = 24;

#[tracepoint]
pub fn kvm_ioctl_enter(ctx: TracePointContext) -> u32 {
    let Some((tgid, _)) = traced_role() else { return 0 };
    // SAFETY: volatile read of a load-time constant.
    let offset = unsafe { core::ptr::read_volatile(&IOCTL_CMD_OFFSET) } as usize;
    // SAFETY: reading a field of the tracepoint record at its format-file offset.
    let Ok(cmd) = (unsafe { ctx.read_at::<u64>(offset) }) else {
        if first_time(Diag::IoctlLayout) {
            warn!(&ctx, "sys_enter_ioctl: no cmd at offset {}: KVM ioctls are not counted", offset);
        }
        return 0;
    };
    let Some(what) = KvmWhat::of_ioctl(cmd as u32) else { return 0 };
    let now = now_ns();
    let (_, tid) = current();
    if what == KvmWhat::Run {
        vcpu_enter(&ctx, tgid, tid, now);
    }
    let inflight = InflightIoctl { what: what as u32, round: round_of(tgid), start_ns: now };
    if INFLIGHT.insert(&tid, &inflight, 0).is_err() && first_time(Diag::InflightFull) {
        warn!(&ctx, "INFLIGHT is full: an ioctl of thread {} is not timed", tid);
    }
    0
}

#[tracepoint]
pub fn kvm_ioctl_exit(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current();
    // SAFETY: plain struct copied out before removal.
    let Some(inflight) = (unsafe { INFLIGHT.get(&tid) }).copied() else { return 0 };
    let _ = INFLIGHT.remove(&tid);
    let now = now_ns();
    if inflight.what == KvmWhat::Run as u32 {
        vcpu_exit(tid, now);
    }
    let key = KvmStatKey { tgid, round: inflight.round, what: inflight.what, _pad: 0 };
    kvm_stat_add(&ctx, &key, now.saturating_sub(inflight.start_ns));
    0
}

#[inline(always)]
fn count(ctx: &TracePointContext, what: KvmWhat) -> u32 {
    let Some((tgid, _)) = traced_role() else { return 0 };
    kvm_stat_add(ctx, &KvmStatKey { tgid, round: round_of(tgid), what: what as u32, _pad: 0 }, 0);
    0
}

#[tracepoint]
pub fn kvm_dirty_ring_push(ctx: TracePointContext) -> u32 {
    count(&ctx, KvmWhat::DirtyRingPush)
}

#[tracepoint]
pub fn kvm_dirty_ring_reset(ctx: TracePointContext) -> u32 {
    count(&ctx, KvmWhat::DirtyRingReset)
}

#[tracepoint]
pub fn kvm_dirty_ring_exit(ctx: TracePointContext) -> u32 {
    count(&ctx, KvmWhat::DirtyRingExit)
}
