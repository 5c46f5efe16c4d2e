//! Self-test probes: a uprobe on functions of our own process and the
//! `syscalls:sys_enter_getppid` tracepoint. They prove on a given host that programs
//! load, attach and deliver, and drive the collector throughput benchmark.

use std::{num::NonZeroU32, path::Path};

use aya::programs::{
    TracePoint, UProbe,
    uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
};

use super::{ProbeError, Probes, symbols};

impl Probes {
    /// Attaches `selftest_uprobe` to each `(symbol, cookie)` of the ELF file `binary`,
    /// firing only in process `pid`. Returns the symbols that do not exist.
    pub fn attach_selftest_uprobes(
        &mut self,
        binary: &Path,
        pid: u32,
        points: &[(&str, u64)],
    ) -> Result<Vec<String>, ProbeError> {
        let names: Vec<&str> = points.iter().map(|(n, _)| *n).collect();
        let resolved = symbols::resolve(binary, &names)?;
        let scope = NonZeroU32::new(pid).map_or(UProbeScope::AllProcesses, UProbeScope::OneProcess);
        let program: &mut UProbe = self.program("selftest_uprobe")?;
        for (name, cookie) in points {
            let Some(&offset) = resolved.offsets.get(*name) else {
                continue;
            };
            let point =
                UProbeAttachPoint { location: UProbeAttachLocation::AbsoluteOffset(offset), cookie: Some(*cookie) };
            program
                .attach(point, binary, scope)
                .map_err(|source| ProbeError::Program { name: "selftest_uprobe", source })?;
        }
        Ok(resolved.missing)
    }

    /// Attaches the getppid tracepoint; it records only processes added with
    /// [`Probes::add_target`] as [`migtrace_common::event::Role::Selftest`].
    pub fn attach_selftest_syscall(&mut self) -> Result<(), ProbeError> {
        let program: &mut TracePoint = self.program("selftest_getppid")?;
        program
            .attach("syscalls", "sys_enter_getppid")
            .map_err(|source| ProbeError::Program { name: "selftest_getppid", source })?;
        Ok(())
    }
}

/// Exported target of the self-test uprobe; never inlined, so calls really happen.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn migtrace_selftest_target(value: u64) -> u64 {
    std::hint::black_box(value).wrapping_add(1)
}

/// What [`run`] observed.
#[derive(Debug)]
pub struct SelftestReport {
    pub uprobe_events: usize,
    pub syscall_events: usize,
    /// Time from the trigger to the event arriving in userspace, worst case.
    pub max_latency_ns: u64,
    pub lost: u64,
}

/// Loads the programs, attaches the self-test uprobe to this process and the getppid
/// tracepoint, triggers each `n` times and checks that exactly those events arrive.
pub async fn run(n: usize) -> anyhow::Result<SelftestReport> {
    use anyhow::{Context as _, bail};

    use super::{Collector, Event};
    use crate::clock::monotonic_ns;

    let pid = std::process::id();
    let exe = std::env::current_exe().context("locating our own executable")?;
    let mut probes = Probes::load()?;
    probes.add_target(pid, migtrace_common::event::Role::Selftest)?;
    let missing = probes.attach_selftest_uprobes(&exe, pid, &[("migtrace_selftest_target", 1)])?;
    if !missing.is_empty() {
        bail!("{} has no symbol migtrace_selftest_target (stripped binary?)", exe.display());
    }
    probes.attach_selftest_syscall()?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let collector = Collector::spawn(probes.take_events()?, tx)?;
    let (tid, t0) = tokio::task::spawn_blocking(move || {
        let t0 = monotonic_ns();
        for i in 0..n as u64 {
            std::hint::black_box(migtrace_selftest_target(i));
            // SAFETY: getppid has no preconditions.
            std::hint::black_box(unsafe { libc::getppid() });
        }
        // SAFETY: gettid has no preconditions.
        (unsafe { libc::gettid() } as u32, t0)
    })
    .await?;
    let mut report = SelftestReport { uprobe_events: 0, syscall_events: 0, max_latency_ns: 0, lost: 0 };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while report.uprobe_events < n || report.syscall_events < n {
        let Ok(Some(batch)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            break;
        };
        let now = monotonic_ns();
        for event in batch {
            let h = event.header();
            if h.tid != tid || h.ts_ns < t0 {
                continue;
            }
            report.max_latency_ns = report.max_latency_ns.max(now.saturating_sub(h.ts_ns));
            match event {
                Event::SelftestUprobe(_) => report.uprobe_events += 1,
                Event::SelftestSyscall(_) => report.syscall_events += 1,
                _ => {}
            }
        }
    }
    collector.stop().await?;
    report.lost = probes.loss()?.total();
    if report.uprobe_events != n || report.syscall_events != n || report.lost != 0 {
        bail!(
            "expected {n} uprobe and {n} tracepoint events, got {} and {} ({} lost)",
            report.uprobe_events,
            report.syscall_events,
            report.lost
        );
    }
    Ok(report)
}
