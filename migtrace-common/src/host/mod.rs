//! Facts about the running host that decide how migtrace can work on it: hardware
//! virtualisation, tracefs, the eBPF program types the kernel accepts.
//!
//! Used by `cargo xtask` (before anything is built) and by `migtrace` itself.

pub mod kernel;
pub mod qemu;

use std::{
    ffi::CString,
    fmt, fs, io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

/// How the lab's QEMU processes execute guest code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation through `/dev/kvm`.
    Kvm,
    /// QEMU's software emulator, with the reason KVM is not usable.
    Tcg { reason: String },
}

impl Accel {
    /// The value for QEMU's `-accel`.
    pub fn qemu_name(&self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg { .. } => "tcg",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Accel::Kvm => write!(f, "kvm (hardware virtualisation usable)"),
            Accel::Tcg { reason } => write!(f, "tcg (KVM not usable: {reason})"),
        }
    }
}

const KVM_GET_API_VERSION: libc::c_ulong = 0xae00;
const KVM_API_VERSION: libc::c_int = 12;

/// Decides whether KVM can run a standard guest here.
///
/// `/dev/kvm` alone proves nothing: nested or paravirtual KVM (e.g. `kvm_pvm`) can create
/// VMs yet not boot an ordinary kernel. We require the CPU to expose vmx or svm and the
/// matching vendor module to be loaded.
pub fn detect_accel() -> Accel {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    decide_accel(&cpuinfo, |module| Path::new("/sys/module").join(module).exists(), kvm_api_version)
}

/// [`detect_accel`]'s decision from what the host shows: `/proc/cpuinfo`, whether a
/// kernel module is loaded, and what `/dev/kvm` answers.
fn decide_accel(
    cpuinfo: &str,
    module_loaded: impl Fn(&str) -> bool,
    api_version: impl FnOnce() -> io::Result<libc::c_int>,
) -> Accel {
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f.split_whitespace().collect())
        .unwrap_or_default();
    let vendor_module = if flags.contains(&"vmx") {
        "kvm_intel"
    } else if flags.contains(&"svm") {
        "kvm_amd"
    } else {
        let mut reason = String::from("the CPU exposes no vmx/svm flag");
        if module_loaded("kvm_pvm") {
            reason.push_str("; /dev/kvm is the paravirtual kvm_pvm, which cannot boot a standard guest");
        } else if flags.contains(&"hypervisor") {
            reason.push_str(" (nested virtualisation is not enabled for this VM)");
        }
        return Accel::Tcg { reason };
    };
    if !module_loaded(vendor_module) {
        return Accel::Tcg { reason: format!("module {vendor_module} is not loaded (modprobe {vendor_module})") };
    }
    match api_version() {
        Ok(KVM_API_VERSION) => Accel::Kvm,
        Ok(v) => Accel::Tcg { reason: format!("/dev/kvm reports API version {v}, expected 12") },
        Err(e) => Accel::Tcg { reason: format!("cannot use /dev/kvm: {e}") },
    }
}

/// Which KVM a host offers, for guests that can live with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvmFlavour {
    /// vmx or svm with its vendor module: any guest runs.
    Hardware,
    /// The paravirtual `kvm_pvm` without vmx/svm: it runs only a guest that never
    /// enables interrupts and never faults (migtrace's minimal guest), and only with
    /// `-cpu host,arch-capabilities=off` and qboot as firmware.
    Pvm,
}

/// The KVM migtrace's minimal guest can use here: hardware virtualisation, else
/// `kvm_pvm`; or why neither is usable.
pub fn kvm_flavour() -> Result<KvmFlavour, String> {
    match detect_accel() {
        Accel::Kvm => Ok(KvmFlavour::Hardware),
        Accel::Tcg { reason } => {
            if !Path::new("/sys/module/kvm_pvm").exists() {
                return Err(reason);
            }
            match kvm_api_version() {
                Ok(KVM_API_VERSION) => Ok(KvmFlavour::Pvm),
                Ok(v) => Err(format!("kvm_pvm's /dev/kvm reports API version {v}, expected 12")),
                Err(e) => Err(format!("cannot use kvm_pvm's /dev/kvm: {e}")),
            }
        }
    }
}

fn kvm_api_version() -> io::Result<libc::c_int> {
    let file = fs::OpenOptions::new().read(true).write(true).open("/dev/kvm")?;
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns an int.
    let v = unsafe { libc::ioctl(file.as_raw_fd(), KVM_GET_API_VERSION, 0) };
    if v < 0 { Err(io::Error::last_os_error()) } else { Ok(v) }
}

/// Where tracefs is mounted, if it is.
pub fn tracefs_root() -> Option<&'static Path> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"].into_iter().map(Path::new).find(|p| p.join("events").is_dir())
}

/// Mounts tracefs at `/sys/kernel/tracing` unless it is already mounted somewhere.
///
/// Tracepoint attachment reads event ids from tracefs. Minimal hosts, and processes in a
/// fresh mount namespace (`ip netns exec` remounts /sys), do not have it.
pub fn ensure_tracefs() -> io::Result<&'static Path> {
    if let Some(root) = tracefs_root() {
        return Ok(root);
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: all pointers are valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(c"tracefs".as_ptr(), target.as_ptr(), c"tracefs".as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    tracefs_root().ok_or_else(|| io::Error::other("tracefs mounted but has no events directory"))
}

/// eBPF program types migtrace relies on (values of `enum bpf_prog_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgType {
    /// Uprobes (and kprobes) run as `BPF_PROG_TYPE_KPROBE`.
    Kprobe = 2,
    SchedCls = 3,
    Tracepoint = 5,
}

impl ProgType {
    pub fn name(self) -> &'static str {
        match self {
            ProgType::Kprobe => "kprobe/uprobe",
            ProgType::SchedCls => "sched_cls (tc)",
            ProgType::Tracepoint => "tracepoint",
        }
    }
}

const BPF_PROG_LOAD: libc::c_long = 5;

/// Loads a two-instruction program (`r0 = 0; exit`) of the given type into the kernel and
/// unloads it again: the honest answer to "can this kernel run programs of this type".
pub fn try_load_prog(ty: ProgType) -> io::Result<()> {
    // mov64 r0, 0 ; exit
    let insns: [u64; 2] =
        [u64::from_le_bytes([0xb7, 0, 0, 0, 0, 0, 0, 0]), u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0])];
    let license = CString::from(c"GPL");
    // union bpf_attr, BPF_PROG_LOAD variant: prog_type, insn_cnt, insns, license, ...
    let mut attr = [0u8; 144];
    attr[0..4].copy_from_slice(&(ty as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    // SAFETY: attr is a valid bpf_attr for BPF_PROG_LOAD; pointed-to data outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_mut_ptr(), attr.len() as u32) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; closing it unloads the program.
    drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    Ok(())
}

/// Whether the kernel has the perf PMU a probe family attaches through
/// (`uprobe`, `kprobe`).
pub fn has_pmu(name: &str) -> bool {
    Path::new("/sys/bus/event_source/devices").join(name).join("type").exists()
}

/// Capability numbers (`linux/capability.h`) migtrace needs.
pub mod cap {
    pub const NET_ADMIN: u32 = 12;
    pub const SYS_ADMIN: u32 = 21;
    pub const PERFMON: u32 = 38;
    pub const BPF: u32 = 39;

    pub fn name(cap: u32) -> &'static str {
        match cap {
            NET_ADMIN => "CAP_NET_ADMIN",
            SYS_ADMIN => "CAP_SYS_ADMIN",
            PERFMON => "CAP_PERFMON",
            BPF => "CAP_BPF",
            _ => "a capability",
        }
    }
}

/// The process's effective capability set (`CapEff` of /proc/self/status); None if it
/// cannot be read.
pub fn effective_capabilities() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Whether the process holds capability `cap` (see [`cap`]); true when the set cannot
/// be read (the kernel then has the last word).
pub fn has_capability(cap: u32) -> bool {
    effective_capabilities().is_none_or(|set| set & (1u64 << cap) != 0)
}

/// Whether the process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accel_names_match_qemu() {
        assert_eq!(Accel::Kvm.qemu_name(), "kvm");
        let tcg = Accel::Tcg { reason: "x".into() };
        assert_eq!(tcg.qemu_name(), "tcg");
        assert!(tcg.to_string().contains("KVM not usable: x"));
    }

    fn decide(flags: &str, modules: &[&str], api: io::Result<libc::c_int>) -> Accel {
        let cpuinfo = format!("processor\t: 0\nflags\t\t: fpu {flags} sse2\n");
        decide_accel(&cpuinfo, |m| modules.contains(&m), || api)
    }

    fn tcg_reason(a: Accel) -> String {
        match a {
            Accel::Tcg { reason } => reason,
            Accel::Kvm => panic!("expected TCG"),
        }
    }

    #[test]
    fn kvm_flavour_agrees_with_detect_accel() {
        match (detect_accel(), kvm_flavour()) {
            (Accel::Kvm, flavour) => assert_eq!(flavour, Ok(KvmFlavour::Hardware)),
            (Accel::Tcg { .. }, Ok(flavour)) => assert_eq!(flavour, KvmFlavour::Pvm),
            (Accel::Tcg { reason }, Err(why)) => assert_eq!(reason, why),
        }
    }

    #[test]
    fn kvm_needs_the_flag_the_vendor_module_and_a_working_dev_kvm() {
        assert_eq!(decide("vmx", &["kvm_intel"], Ok(12)), Accel::Kvm);
        assert_eq!(decide("svm", &["kvm_amd"], Ok(12)), Accel::Kvm);
        assert!(tcg_reason(decide("vmx", &[], Ok(12))).contains("module kvm_intel is not loaded"));
        assert!(tcg_reason(decide("svm", &["kvm_intel"], Ok(12))).contains("module kvm_amd is not loaded"));
        assert!(tcg_reason(decide("vmx", &["kvm_intel"], Ok(11))).contains("API version 11"));
        let denied = decide("vmx", &["kvm_intel"], Err(io::Error::from_raw_os_error(libc::EACCES)));
        assert!(tcg_reason(denied).starts_with("cannot use /dev/kvm"));
    }

    #[test]
    fn without_the_flag_the_reason_names_the_host() {
        // A /dev/kvm from kvm_pvm can create VMs but not boot a standard guest.
        let pvm = tcg_reason(decide("hypervisor", &["kvm_pvm"], Ok(12)));
        assert!(pvm.contains("no vmx/svm") && pvm.contains("kvm_pvm"), "{pvm}");
        let nested = tcg_reason(decide("hypervisor", &[], Ok(12)));
        assert!(nested.contains("nested virtualisation is not enabled"), "{nested}");
        assert_eq!(tcg_reason(decide("", &[], Ok(12))), "the CPU exposes no vmx/svm flag");
    }
}
