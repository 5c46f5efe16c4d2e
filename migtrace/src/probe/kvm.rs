//! KVM dirty-log path and vCPU runs: syscall ioctl tracepoints and `kvm:` dirty-ring
//! tracepoints, aggregated in the kernel and read per migration.

use std::{collections::BTreeMap, fs};

use aya::{
    maps::{HashMap, MapData, PerCpuHashMap},
    programs::TracePoint,
};
use migtrace_common::event::{KvmStat, KvmStatKey, KvmWhat, VcpuRun};

use super::{ProbeError, Probes};

/// Tracepoints of this family: (program, category, name, required).
const TRACEPOINTS: &[(&str, &str, &str, bool)] = &[
    ("kvm_ioctl_enter", "syscalls", "sys_enter_ioctl", true),
    ("kvm_ioctl_exit", "syscalls", "sys_exit_ioctl", true),
    // Only with the kvm module loaded, and only counted when QEMU uses a dirty ring.
    ("kvm_dirty_ring_push", "kvm", "kvm_dirty_ring_push", false),
    ("kvm_dirty_ring_reset", "kvm", "kvm_dirty_ring_reset", false),
    ("kvm_dirty_ring_exit", "kvm", "kvm_dirty_ring_exit", false),
];

/// Offset of a field in a tracepoint's record, from its tracefs `format` file.
pub fn field_offset(category: &str, event: &str, field: &str) -> Option<u32> {
    let root = migtrace_common::host::tracefs_root()?;
    let text = fs::read_to_string(root.join("events").join(category).join(event).join("format")).ok()?;
    parse_field_offset(&text, field)
}

fn parse_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';').map(str::trim);
        let decl = parts.next()?.strip_prefix("field:")?;
        if decl.split_whitespace().last()? != field {
            return None;
        }
        parts.find_map(|p| p.strip_prefix("offset:")).and_then(|o| o.parse().ok())
    })
}

/// KVM activity of one process in one round.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KvmCounts {
    pub count: u64,
    pub total_ns: u64,
    pub max_ns: u64,
}

impl Probes {
    /// Attaches the KVM tracepoints. Returns the optional ones this kernel lacks.
    pub fn attach_kvm(&mut self) -> Result<Vec<String>, ProbeError> {
        let mut missing = Vec::new();
        for &(program, category, name, required) in TRACEPOINTS {
            let tp: &mut TracePoint = self.program(program)?;
            match tp.attach(category, name) {
                Ok(_) => {}
                Err(_) if !required => missing.push(format!("{category}:{name}")),
                Err(source) => return Err(ProbeError::Program { name: program, source }),
            }
        }
        Ok(missing)
    }

    /// KVM statistics of process `tgid` by (round, what), summed over CPUs.
    pub fn kvm_stats(&self, tgid: u32) -> Result<BTreeMap<(u32, KvmWhat), KvmCounts>, ProbeError> {
        let map = self.ebpf.map("KVM_STATS").ok_or(ProbeError::Missing { what: "map", name: "KVM_STATS" })?;
        let stats: PerCpuHashMap<&MapData, KvmStatKey, KvmStat> =
            PerCpuHashMap::try_from(map).map_err(|source| ProbeError::Map { name: "KVM_STATS", source })?;
        let mut out: BTreeMap<(u32, KvmWhat), KvmCounts> = BTreeMap::new();
        for entry in stats.iter() {
            let (key, per_cpu) = entry.map_err(|source| ProbeError::Map { name: "KVM_STATS", source })?;
            let Some(what) = KvmWhat::from_u32(key.what) else { continue };
            if key.tgid != tgid {
                continue;
            }
            let slot = out.entry((key.round, what)).or_default();
            for v in per_cpu.iter() {
                slot.count += v.count;
                slot.total_ns += v.total_ns;
                slot.max_ns = slot.max_ns.max(v.max_ns);
            }
        }
        Ok(out)
    }

    /// vCPU threads of process `tgid` with their run stamps, by tid.
    pub fn vcpu_runs(&self, tgid: u32) -> Result<BTreeMap<u32, VcpuRun>, ProbeError> {
        let map = self.ebpf.map("VCPU_RUN").ok_or(ProbeError::Missing { what: "map", name: "VCPU_RUN" })?;
        let runs: HashMap<&MapData, u32, VcpuRun> =
            HashMap::try_from(map).map_err(|source| ProbeError::Map { name: "VCPU_RUN", source })?;
        Ok(runs.iter().filter_map(Result::ok).filter(|(_, r)| r.tgid == tgid).collect())
    }

    /// Starts a new migration for `tgid`: round counter and KVM statistics from zero.
    pub fn reset_process(&mut self, tgid: u32) -> Result<(), ProbeError> {
        self.clear_stats(tgid)?;
        let map = self.ebpf.map_mut("ROUND").ok_or(ProbeError::Missing { what: "map", name: "ROUND" })?;
        let mut round: HashMap<&mut MapData, u32, u32> =
            HashMap::try_from(map).map_err(|source| ProbeError::Map { name: "ROUND", source })?;
        let _ = round.remove(&tgid);
        Ok(())
    }

    fn clear_stats(&mut self, tgid: u32) -> Result<(), ProbeError> {
        let map = self.ebpf.map_mut("KVM_STATS").ok_or(ProbeError::Missing { what: "map", name: "KVM_STATS" })?;
        let mut stats: PerCpuHashMap<&mut MapData, KvmStatKey, KvmStat> =
            PerCpuHashMap::try_from(map).map_err(|source| ProbeError::Map { name: "KVM_STATS", source })?;
        let keys: Vec<KvmStatKey> = stats.keys().filter_map(Result::ok).filter(|k| k.tgid == tgid).collect();
        for key in keys {
            let _ = stats.remove(&key);
        }
        Ok(())
    }

    /// Drops all kernel-side state of a process that is no longer traced.
    pub fn forget_process(&mut self, tgid: u32) -> Result<(), ProbeError> {
        self.reset_process(tgid)?;
        let map = self.ebpf.map_mut("VCPU_RUN").ok_or(ProbeError::Missing { what: "map", name: "VCPU_RUN" })?;
        let mut runs: HashMap<&mut MapData, u32, VcpuRun> =
            HashMap::try_from(map).map_err(|source| ProbeError::Map { name: "VCPU_RUN", source })?;
        let tids: Vec<u32> =
            runs.iter().filter_map(Result::ok).filter(|(_, r)| r.tgid == tgid).map(|(t, _)| t).collect();
        for tid in tids {
            let _ = runs.remove(&tid);
        }
        let map = self.ebpf.map_mut("SLOT_PAGES").ok_or(ProbeError::Missing { what: "map", name: "SLOT_PAGES" })?;
        let mut slots: HashMap<&mut MapData, u64, u64> =
            HashMap::try_from(map).map_err(|source| ProbeError::Map { name: "SLOT_PAGES", source })?;
        let keys: Vec<u64> = slots.keys().filter_map(Result::ok).filter(|k| (k >> 32) as u32 == tgid).collect();
        for key in keys {
            let _ = slots.remove(&key);
        }
        self.remove_target(tgid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_field_offsets_in_a_format_file() {
        // syscalls:sys_enter_ioctl on Linux 6.18.
        let format = "name: sys_enter_ioctl\nID: 1024\nformat:\n\
            \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\
            \tfield:unsigned int fd;\toffset:16;\tsize:8;\tsigned:0;\n\
            \tfield:unsigned int cmd;\toffset:24;\tsize:8;\tsigned:0;\n\
            \tfield:unsigned long arg;\toffset:32;\tsize:8;\tsigned:0;\n";
        assert_eq!(parse_field_offset(format, "cmd"), Some(24));
        assert_eq!(parse_field_offset(format, "fd"), Some(16));
        assert_eq!(parse_field_offset(format, "missing"), None);
    }
}
