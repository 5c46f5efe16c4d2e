//! QEMU phase probes: which functions, how they are attached, per QEMU process.
//!
//! Symbols are resolved at run time against the binary the process runs
//! (`/proc/<pid>/exe`); a symbol missing in a QEMU build is reported by name and its
//! phase falls back to QMP events: it never fails the attach.

use std::{
    collections::{BTreeMap, HashMap},
    num::NonZeroU32,
    path::{Path, PathBuf},
};

use aya::programs::{
    UProbe,
    uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
};
use migtrace_common::event::{PhasePoint, Role, cookie};

use super::{ProbeError, Probes, symbols};

/// One probed function: the symbol names it may have (first found wins, each with the
/// mask of pointer arguments its return probe dereferences), and which ends are probed.
#[derive(Clone, Copy, Debug)]
pub struct PointSpec {
    pub point: PhasePoint,
    pub symbols: &'static [(&'static str, u8)],
    pub entry: bool,
    pub ret: bool,
    /// Aggregated per vCPU thread in the kernel; never streamed.
    pub aggregate: bool,
    /// Older QEMU builds do this point's job in this other function: a build that has
    /// it does not miss this point.
    pub older: Option<&'static str>,
}

impl PointSpec {
    pub fn name(&self) -> &'static str {
        self.symbols[0].0
    }
}

macro_rules! optional {
    () => {
        None
    };
    ($x:literal) => {
        Some($x)
    };
}

macro_rules! points {
    ($( $point:ident: [$($sym:literal $(deref $mask:literal)?),+] $(entry $entry:literal)? $(ret $ret:literal)? $(aggregate $agg:literal)? $(older $older:literal)?; )*) => {
        &[$(PointSpec {
            point: PhasePoint::$point,
            symbols: &[$(($sym, 0 $(| $mask)?)),+],
            entry: true $(&& $entry)?,
            ret: false $(|| $ret)?,
            aggregate: false $(|| $agg)?,
            older: optional!($($older)?),
        }),*]
    };
}

/// Every QEMU function migtrace probes. The order of calls seen in a real migration
/// (QEMU 7.2) is in DESIGN.md; the timeline assembler relies on these points.
pub const POINTS: &[PointSpec] = points! {
    MigrateSetState: ["migrate_set_state"];
    SavevmStateSetup: ["qemu_savevm_state_setup"] ret true;
    DirtyLogStart: ["memory_global_dirty_log_start"];
    DirtyLogSync: ["memory_global_dirty_log_sync"] ret true;
    DirtyLogStop: ["memory_global_dirty_log_stop"];
    VmStopForceState: ["vm_stop_force_state"] ret true;
    PauseAllVcpus: ["pause_all_vcpus"] ret true;
    SavevmStateCompletePrecopy: ["qemu_savevm_state_complete_precopy"] ret true;
    SavevmStateCleanup: ["qemu_savevm_state_cleanup"] ret true;
    // QEMU ≤ 7.2: (f, threshold, *precopy, *compatible, *postcopy); 8.0+: (*must, *can).
    SavevmStatePending: ["qemu_savevm_state_pending" deref 0b11100, "qemu_savevm_state_pending_exact" deref 0b00011] ret true;
    SavevmStatePendingEstimate: ["qemu_savevm_state_pending_estimate" deref 0b00011] ret true older "qemu_savevm_state_pending";
    LoadvmState: ["qemu_loadvm_state"] ret true;
    VmPrepareStart: ["vm_prepare_start"];
    VmStart: ["vm_start"];
    ResumeAllVcpus: ["resume_all_vcpus"] ret true;
    AnnounceSelf: ["qemu_announce_self"];
    VmStateNotify: ["vm_state_notify"];
    CpuExec: ["cpu_exec"] ret true aggregate true;
};

pub fn spec_of(point: PhasePoint) -> Option<&'static PointSpec> {
    POINTS.iter().find(|p| p.point == point)
}

/// Probes attached to one QEMU process.
#[derive(Debug, Default)]
pub struct QemuProbes {
    pub pid: u32,
    pub binary: PathBuf,
    /// Points attached, with the symbol that provided each.
    pub attached: BTreeMap<PhasePoint, &'static str>,
    /// Points whose symbols this QEMU build does not export (by first symbol name).
    pub missing: Vec<&'static str>,
    links: Vec<(&'static str, UProbeLinkId)>,
}

/// Symbol offsets per binary file (device and inode), resolved once.
#[derive(Default)]
pub struct SymbolCache {
    by_file: HashMap<(u64, u64), symbols::Resolved>,
}

impl SymbolCache {
    fn resolve(&mut self, binary: &Path) -> Result<&symbols::Resolved, ProbeError> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(binary)
            .map_err(|source| symbols::SymbolError::Read { path: binary.to_owned(), source })?;
        let key = (meta.dev(), meta.ino());
        if let std::collections::hash_map::Entry::Vacant(slot) = self.by_file.entry(key) {
            let names: Vec<&str> =
                POINTS.iter().flat_map(|p| p.symbols.iter().map(|(s, _)| *s).chain(p.older)).collect();
            slot.insert(symbols::resolve(binary, &names)?);
        }
        Ok(&self.by_file[&key])
    }
}

impl Probes {
    /// Attaches the phase probes to QEMU process `pid` and adds it to the kernel-side
    /// filter (KVM ioctls and vCPU runs of this process are aggregated from now on).
    pub fn attach_qemu(&mut self, pid: u32, cache: &mut SymbolCache) -> Result<QemuProbes, ProbeError> {
        // The process's own executable, whatever mount namespace it was started in (a
        // libvirt host may have another QEMU at the same path than ours).
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let binary =
            std::fs::read_link(&exe).map_err(|source| symbols::SymbolError::Read { path: exe.clone(), source })?;
        let resolved = cache.resolve(&exe)?.clone();
        let scope = NonZeroU32::new(pid).map_or(UProbeScope::AllProcesses, UProbeScope::OneProcess);
        let mut probes = QemuProbes { pid, binary, ..QemuProbes::default() };
        self.add_target(pid, Role::Hypervisor)?;
        for spec in POINTS {
            let Some((symbol, deref)) = spec.symbols.iter().find(|(s, _)| resolved.offsets.contains_key(*s)) else {
                if !spec.older.is_some_and(|o| resolved.offsets.contains_key(o)) {
                    probes.missing.push(spec.name());
                }
                continue;
            };
            let offset = resolved.offsets[*symbol];
            let save_args = *deref != 0;
            let c = cookie::make(spec.point, save_args, *deref, spec.aggregate);
            for (program, wanted) in [("qemu_enter", spec.entry || save_args), ("qemu_return", spec.ret)] {
                if !wanted {
                    continue;
                }
                let uprobe: &mut UProbe = self.program(program)?;
                let point =
                    UProbeAttachPoint { location: UProbeAttachLocation::AbsoluteOffset(offset), cookie: Some(c) };
                let link = uprobe
                    .attach(point, &exe, scope)
                    .map_err(|source| ProbeError::Program { name: program, source })?;
                probes.links.push((program, link));
            }
            probes.attached.insert(spec.point, symbol);
        }
        Ok(probes)
    }

    /// Detaches the phase probes of a QEMU process (e.g. once it has exited) and drops
    /// its kernel-side state.
    ///
    /// `in_background`: the links are dropped on a thread of their own. The kernel waits
    /// for an RCU grace period per uprobe it unregisters (2.2 s for one QEMU's links
    /// measured here), which the next migration need not wait for; only for a process
    /// that has exited and while no other process of the binary is being attached
    /// (agents attach to a new incoming QEMU at any time: they detach in place).
    /// [`Probes::wait_detached`] waits for them.
    pub fn detach_qemu(&mut self, probes: QemuProbes, in_background: bool) -> Result<(), ProbeError> {
        let mut links = Vec::with_capacity(probes.links.len());
        for (program, link) in probes.links {
            let uprobe: &mut UProbe = self.program(program)?;
            // A link of an exited process may already be gone; that is fine.
            if let Ok(link) = uprobe.take_link(link) {
                links.push(link);
            }
        }
        if !in_background {
            drop(links);
            return self.forget_process(probes.pid);
        }
        self.detaching.retain(|t| !t.is_finished());
        let dropper = std::thread::Builder::new().name("migtrace-detach".into()).spawn(move || drop(links));
        match dropper {
            Ok(thread) => self.detaching.push(thread),
            // No thread: the links were dropped here, as they would have been anyway.
            Err(e) => log::debug!("detaching on this thread: {e}"),
        }
        self.forget_process(probes.pid)
    }

    /// Waits until the links of every detached process are gone from the kernel.
    pub fn wait_detached(&mut self) {
        for thread in self.detaching.drain(..) {
            let _ = thread.join();
        }
    }
}

/// QEMU's `MigrationStatus` values by name, for the numbers `migrate_set_state` passes.
/// QEMU 9.1 inserted `postcopy-recover-setup` at 7, shifting everything after it.
pub fn migration_status_name(value: u64, qemu_version: (u32, u32)) -> &'static str {
    const UP_TO_9_0: &[&str] = &[
        "none",
        "setup",
        "cancelling",
        "cancelled",
        "active",
        "postcopy-active",
        "postcopy-paused",
        "postcopy-recover",
        "completed",
        "failed",
        "colo",
        "pre-switchover",
        "device",
        "wait-unplug",
    ];
    let index = match (qemu_version >= (9, 1), value) {
        (true, 7) => return "postcopy-recover-setup",
        (true, v) if v > 7 => v - 1,
        (_, v) => v,
    };
    UP_TO_9_0.get(index as usize).copied().unwrap_or("unknown")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_point_fits_what_the_probes_carry() {
        for p in PhasePoint::ALL {
            assert_eq!(POINTS.iter().filter(|s| s.point == p).count(), 1, "{p:?} probed once");
        }
        for spec in POINTS {
            for (symbol, mask) in spec.symbols {
                // The entry probe saves five arguments; a return record has three value
                // slots; only the return probe dereferences.
                assert!(*mask < 1 << 5, "{symbol}: deref mask {mask:#b} names an unsaved argument");
                assert!(mask.count_ones() <= 3, "{symbol}: deref mask {mask:#b} overflows the record");
                assert!(*mask == 0 || spec.ret, "{symbol}: out-parameters need the return probe");
                let c = cookie::make(spec.point, *mask != 0, *mask, spec.aggregate);
                assert_eq!(c & cookie::POINT_MASK, spec.point as u64, "{symbol}: point survives the cookie");
                assert_eq!((c >> cookie::DEREF_SHIFT) & 0xff, u64::from(*mask), "{symbol}: mask survives");
            }
            // Aggregated points time runs per thread: entry and return both.
            assert!(!spec.aggregate || (spec.entry && spec.ret), "{:?}", spec.point);
        }
    }

    #[test]
    fn status_numbers_follow_the_qemu_version() {
        assert_eq!(migration_status_name(1, (7, 2)), "setup");
        assert_eq!(migration_status_name(4, (7, 2)), "active");
        assert_eq!(migration_status_name(8, (7, 2)), "completed");
        assert_eq!(migration_status_name(9, (9, 1)), "completed");
        assert_eq!(migration_status_name(7, (9, 1)), "postcopy-recover-setup");
        assert_eq!(migration_status_name(6, (9, 1)), "postcopy-paused");
        assert_eq!(migration_status_name(14, (9, 1)), "wait-unplug");
        assert_eq!(migration_status_name(99, (7, 2)), "unknown");
    }
}
