//! Self-test programs: the smallest real uses of each attach type, used by the
//! integration tests, `migtrace doctor` and the collector throughput benchmark.

use aya_ebpf::{
    EbpfContext as _,
    helpers::bpf_get_attach_cookie,
    macros::{tracepoint, uprobe},
    programs::{ProbeContext, TracePointContext},
};
use migtrace_common::event::{EventKind, Role, SelftestEvent};

use crate::maps::{emit, header, traced_role};

/// `syscalls:sys_enter_getppid`: one record per getppid() of a self-test process.
/// getppid is cheap and never called in hot paths of normal programs, so it makes a
/// clean synthetic trigger.
#[tracepoint]
pub fn selftest_getppid(ctx: TracePointContext) -> u32 {
    if !matches!(traced_role(), Some((_, r)) if r == Role::Selftest as u32) {
        return 0;
    }
    emit(
        &ctx,
        EventKind::SelftestSyscall,
        SelftestEvent {
            header: header(EventKind::SelftestSyscall),
            cookie: 110, // __NR_getppid on x86_64
            arg0: 0,
        },
    );
    0
}

/// Uprobe on any function of a self-test process; the attach cookie tells which.
#[uprobe]
pub fn selftest_uprobe(ctx: ProbeContext) -> u32 {
    // SAFETY: the context pointer comes from the kernel for this program type.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    emit(
        &ctx,
        EventKind::SelftestUprobe,
        SelftestEvent { header: header(EventKind::SelftestUprobe), cookie, arg0: ctx.arg::<u64>(0).unwrap_or(0) },
    );
    0
}
