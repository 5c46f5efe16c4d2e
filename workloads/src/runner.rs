//! Run every generator of a spec at once and report as JSON lines.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    cpu::CpuGen,
    dirty::DirtyGen,
    memory::{LockedRegion, MemoryError, vm_locked},
    spec::Spec,
    verify::{self, CheckDesk, MemoryCheck},
};

#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Stop after this long; None runs until `stop` is set.
    pub duration: Option<Duration>,
    pub report_every: Duration,
    /// Seed for the random fill and the random write data.
    pub seed: u64,
    /// Where memory checks of the working set are asked for (the guest agent's listener).
    pub checks: Option<Arc<CheckDesk>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self { duration: None, report_every: Duration::from_secs(1), seed: 0x6d69_6774, checks: None }
    }
}

/// Report of the locked-pages generator.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LockedReport {
    pub r#gen: &'static str,
    pub wset_bytes: u64,
    /// VmLck of the process: what the kernel says is locked.
    pub locked_bytes: u64,
}

/// Runs `spec` until `stop` or the duration; `emit` receives every report line.
pub fn run(
    spec: &Spec,
    opts: &RunOptions,
    stop: Arc<AtomicBool>,
    emit: &mut dyn FnMut(Value),
) -> Result<(), MemoryError> {
    let region = match spec.wset {
        Some(bytes) => {
            let region = LockedRegion::new(bytes, opts.seed)?;
            emit(json!(LockedReport { r#gen: "locked", wset_bytes: bytes, locked_bytes: vm_locked().unwrap_or(0) }));
            Some(region)
        }
        None => None,
    };
    let cpu = spec.cpu.clone().map(|load| CpuGen::start(load, stop.clone()));
    let emit_cpu = |emit: &mut dyn FnMut(Value)| {
        if let Some(c) = &cpu {
            emit(json!(c.report()));
        }
    };
    match (region, &spec.dirty) {
        (Some(region), Some(pattern)) => {
            let mut generator = DirtyGen::new(region, pattern.clone(), opts.seed);
            generator.run(&stop, opts.duration, opts.report_every, opts.checks.as_deref(), |r| {
                emit(json!(r));
                emit_cpu(emit);
            });
        }
        (region, _) => {
            // Locked pages and/or CPU load only: hold until stopped, reporting.
            let start = Instant::now();
            let mut next_report = start + opts.report_every;
            let mut checks = 0;
            while !stop.load(Ordering::Relaxed) && opts.duration.is_none_or(|d| start.elapsed() < d) {
                std::thread::sleep(Duration::from_millis(20));
                if let Some(desk) = opts.checks.as_deref().filter(|d| d.wanted()) {
                    // Nothing writes a locked-only working set: every page holds generation 0.
                    checks += 1;
                    let check = region.as_ref().map(|r| verify::check_region(r, 0)).unwrap_or_default();
                    desk.answer(MemoryCheck { checks, ..check });
                }
                if Instant::now() >= next_report {
                    emit_cpu(emit);
                    next_report += opts.report_every;
                }
            }
            drop(region);
        }
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(c) = cpu {
        emit(json!(c.join()));
    }
    Ok(())
}
