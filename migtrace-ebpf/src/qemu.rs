//! QEMU phase probes: uprobes and uretprobes on QEMU's exported functions.
//!
//! One program per direction, attached to every probed symbol of every traced QEMU
//! process; the attach cookie names the [`PhasePoint`] (see
//! [`migtrace_common::event::cookie`]).

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_attach_cookie, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use aya_log_ebpf::{debug, warn};
use migtrace_common::event::{
    Diag, EventKind, PHASE_ARG_FAULT_SHIFT, PHASE_ARGS_NOT_SAVED, PHASE_RETURN, PhaseEvent, PhasePoint, cookie,
};

use crate::maps::{
    ROUND, SAVED_ARGS, current, emit, header_at, link_bytes, now_ns, raise, round_of, vcpu_enter, vcpu_exit,
};

#[inline(always)]
fn saved_key(tid: u32, point: u64) -> u64 {
    ((tid as u64) << 16) | point
}

#[uprobe]
pub fn qemu_enter(ctx: ProbeContext) -> u32 {
    let now = now_ns();
    // SAFETY: the context pointer comes from the kernel for this program type.
    let c = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let point = c & cookie::POINT_MASK;
    let (tgid, tid) = current();
    if c & cookie::AGGREGATE_ONLY != 0 {
        vcpu_enter(&ctx, tgid, tid, now);
        return 0;
    }
    if point == PhasePoint::DirtyLogSync as u64 {
        let next = round_of(tgid) + 1;
        if ROUND.insert(&tgid, &next, 0).is_err() && raise(Diag::RoundFull) {
            warn!(&ctx, "ROUND is full: KVM statistics of process {} stay in one round", tgid);
        }
    }
    let arg = |n| ctx.arg::<u64>(n).unwrap_or(0);
    if c & cookie::SAVE_ARGS != 0
        && SAVED_ARGS.insert(&saved_key(tid, point), &[arg(0), arg(1), arg(2), arg(3), arg(4)], 0).is_err()
        && raise(Diag::SavedArgsFull)
    {
        warn!(&ctx, "SAVED_ARGS is full: out-parameters of point {} are not read", point);
    }
    emit(
        &ctx,
        EventKind::Phase,
        PhaseEvent {
            header: header_at(EventKind::Phase, now),
            point: point as u32,
            flags: 0,
            args: [arg(0), arg(1), arg(2)],
            ret: round_of(tgid) as u64,
            link_bytes: link_bytes(),
        },
    );
    0
}

#[uretprobe]
pub fn qemu_return(ctx: RetProbeContext) -> u32 {
    let now = now_ns();
    // SAFETY: the context pointer comes from the kernel for this program type.
    let c = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let point = c & cookie::POINT_MASK;
    let (_, tid) = current();
    if c & cookie::AGGREGATE_ONLY != 0 {
        vcpu_exit(tid, now);
        return 0;
    }
    let mut values = [0u64; 3];
    let mut flags = PHASE_RETURN;
    let deref = (c >> cookie::DEREF_SHIFT) & 0xff;
    if deref != 0 {
        let key = saved_key(tid, point);
        // SAFETY: plain array copied out before the entry is removed.
        if let Some(saved) = unsafe { SAVED_ARGS.get(&key) }.copied() {
            let mut out = 0;
            for (i, ptr) in saved.iter().enumerate() {
                if deref & (1 << i) != 0 && out < values.len() {
                    // SAFETY: reading a u64 the probed function wrote through its
                    // out-parameter; a bad pointer yields an error, flagged, never a 0.
                    match unsafe { bpf_probe_read_user(*ptr as *const u64) } {
                        Ok(v) => values[out] = v,
                        Err(_) => flags |= 1 << (PHASE_ARG_FAULT_SHIFT + out as u32),
                    }
                    out += 1;
                }
            }
            let _ = SAVED_ARGS.remove(&key);
        } else {
            // The entry probe saved nothing for this call (attached mid-call, or
            // SAVED_ARGS was full): no values, and the record says so.
            flags |= PHASE_ARGS_NOT_SAVED;
            debug!(&ctx, "return of point {} without saved arguments", point);
        }
    }
    emit(
        &ctx,
        EventKind::Phase,
        PhaseEvent {
            header: header_at(EventKind::Phase, now),
            point: point as u32,
            flags,
            args: values,
            ret: ctx.ret::<u64>(),
            link_bytes: link_bytes(),
        },
    );
    0
}
