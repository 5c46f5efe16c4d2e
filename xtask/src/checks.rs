//! What migtrace needs on a host, checked without changing anything. `setup` installs
//! from this list, `doctor` prints it.

use std::{collections::BTreeMap, fs, path::Path, process::Command};

use migtrace_common::host::{self, ProgType, kernel, qemu};

use crate::toolchain;

/// Debian packages every migtrace host needs, with what each is for.
pub const BASE_PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86", "QEMU for the embedded lab"),
    ("busybox-static", "the lab guest's userland"),
    ("iproute2", "lab network namespace, bridge and taps"),
    ("iputils-ping", "the paper's 50 ms ping downtime reference"),
    ("libvirt-dev", "libvirt backend (virt crate)"),
    ("libvirt-daemon", "the libvirt lab's two daemons"),
    ("libvirt-daemon-driver-qemu", "the libvirt lab's QEMU driver"),
    ("libvirt-clients", "virsh, for looking at the libvirt lab by hand"),
    ("openssh-server", "sshd on the libvirt lab's hosts, for the test of libvirt and agents over ssh"),
    ("pkg-config", "finding libvirt at build time"),
    ("libc6-dev", "linking the static guest agent"),
    ("binutils", "assembling the minimal guest (as, ld)"),
    ("libzstd-dev", "linking bpf-linker against LLVM"),
    ("zlib1g-dev", "linking bpf-linker against LLVM"),
    ("chromium", "the browser test of report.html (headless)"),
];

/// Debian's packaged Rust with library sources: the eBPF toolchain of last resort.
pub const DEBIAN_RUST_PACKAGES: &[&str] = &["rustc-web", "cargo-web", "rust-web-src"];

/// The LLVM development packages bpf-linker needs for LLVM `major`.
pub fn llvm_packages(major: u32) -> Vec<String> {
    vec![format!("llvm-{major}-dev"), format!("libpolly-{major}-dev")]
}

/// Debian's LLVM of rustc-web, used before rustc-web is installed to ask for it.
pub const DEBIAN_RUSTC_WEB_LLVM: u32 = 22;

/// The bpf-linker release we install, and the cargo features selecting its LLVM.
pub const BPF_LINKER_VERSION: &str = "0.13.0";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Distro {
    /// Debian, Ubuntu and derivatives: apt and dpkg.
    Apt {
        pretty: String,
    },
    Other {
        pretty: String,
    },
}

/// Debian 12, whose backports carry QEMU 10.0 (setup fetches it into the cache).
pub fn is_bookworm() -> bool {
    codename().as_deref() == Some("bookworm")
}

/// The release's code name (`VERSION_CODENAME`: bookworm, noble …).
pub fn codename() -> Option<String> {
    let text = fs::read_to_string("/etc/os-release").ok()?;
    text.lines().find_map(|l| l.strip_prefix("VERSION_CODENAME=")).map(|v| v.trim_matches('"').to_owned())
}

pub fn distro() -> Distro {
    let text = fs::read_to_string("/etc/os-release").unwrap_or_default();
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_default()
    };
    let pretty = get("PRETTY_NAME");
    let ids = format!("{} {}", get("ID"), get("ID_LIKE"));
    if ids.split_whitespace().any(|id| id == "debian" || id == "ubuntu") && Path::new("/usr/bin/dpkg-query").exists() {
        Distro::Apt { pretty }
    } else {
        Distro::Other { pretty: if pretty.is_empty() { "unknown Linux".into() } else { pretty } }
    }
}

/// Installed state of Debian packages (one dpkg-query call).
pub fn installed(packages: &[&str]) -> BTreeMap<String, bool> {
    let mut state: BTreeMap<String, bool> = packages.iter().map(|p| ((*p).to_owned(), false)).collect();
    if let Ok(out) =
        Command::new("dpkg-query").args(["-W", "-f=${Package} ${db:Status-Status}\n"]).args(packages).output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((name, status)) = line.split_once(' ') {
                // Multi-arch packages print as name:arch.
                let name = name.split(':').next().unwrap_or(name);
                if let Some(s) = state.get_mut(name) {
                    *s = status == "installed";
                }
            }
        }
    }
    state
}

/// The guest kernel the lab would use now: the host's, else a cached Debian cloud kernel.
pub fn guest_kernel() -> Option<(kernel::GuestKernel, &'static str)> {
    kernel::host().map(|k| (k, "host kernel")).or_else(|| kernel::cached().map(|k| (k, "cached Debian cloud kernel")))
}

/// Whether the `libvirt-qemu` user and group exist (libvirt-daemon-system would create
/// them; the lab needs only libvirt-daemon).
pub fn libvirt_qemu_user_exists() -> bool {
    let has = |file: &str| fs::read_to_string(file).is_ok_and(|t| t.lines().any(|l| l.starts_with("libvirt-qemu:")));
    has("/etc/passwd") && has("/etc/group")
}

/// One line of `doctor`.
pub struct Line {
    pub ok: bool,
    /// Missing but not needed (an optional extra).
    pub optional: bool,
    pub what: String,
    pub detail: String,
}

impl Line {
    fn new(ok: bool, what: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { ok, optional: false, what: what.into(), detail: detail.into() }
    }
    fn optional(mut self) -> Self {
        self.optional = true;
        self
    }
}

/// Every check, in the order doctor prints them.
pub fn all(workspace: &Path) -> Vec<Line> {
    let mut lines = Vec::new();
    let distro = distro();
    match &distro {
        Distro::Apt { pretty } => lines.push(Line::new(true, "distribution", format!("{pretty} (apt)"))),
        Distro::Other { pretty } => lines.push(Line::new(
            false,
            "distribution",
            format!(
                "{pretty}: setup automates Debian/Ubuntu only; install the equivalents of the packages below by hand"
            ),
        )),
    }
    lines.push(Line::new(
        host::is_root(),
        "root",
        if host::is_root() { "running as root" } else { "not root: probes, lab and setup need root" },
    ));

    let tc = toolchain::select();
    let llvm = tc.as_ref().map(|t| t.llvm_major).unwrap_or(DEBIAN_RUSTC_WEB_LLVM);
    if matches!(distro, Distro::Apt { .. }) {
        let mut names: Vec<String> = BASE_PACKAGES.iter().map(|(p, _)| (*p).to_owned()).collect();
        names.extend(llvm_packages(llvm));
        let wants_debian_rust = tc.as_ref().ok().is_none_or(|t| t.origin == toolchain::Origin::Debian);
        if wants_debian_rust {
            names.extend(DEBIAN_RUST_PACKAGES.iter().map(|p| (*p).to_owned()));
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        for (name, ok) in installed(&refs) {
            let why = BASE_PACKAGES.iter().find(|(p, _)| *p == name).map(|(_, w)| *w).unwrap_or(
                if name.starts_with("llvm-") || name.starts_with("libpolly-") {
                    "building bpf-linker"
                } else {
                    "eBPF toolchain with library sources"
                },
            );
            lines.push(Line::new(
                ok,
                format!("package {name}"),
                if ok { format!("installed ({why})") } else { format!("missing: needed for {why}") },
            ));
        }
    }
    match &tc {
        Ok(t) => lines.push(Line::new(true, "eBPF toolchain", t.to_string())),
        Err(e) => lines.push(Line::new(false, "eBPF toolchain", format!("{e:#}"))),
    }
    match (toolchain::which("bpf-linker"), toolchain::bpf_linker_llvm_major()) {
        (None, _) => lines.push(Line::new(
            false,
            "bpf-linker",
            "missing (cargo xtask setup builds it against the toolchain's LLVM)",
        )),
        (Some(p), Some(m)) if m == llvm => {
            lines.push(Line::new(true, "bpf-linker", format!("{}: LLVM {m}, matches the eBPF toolchain", p.display())))
        }
        (Some(p), Some(m)) => lines.push(Line::new(
            false,
            "bpf-linker",
            format!(
                "{}: LLVM {m}, but the eBPF toolchain uses LLVM {llvm}; cargo xtask setup rebuilds it",
                p.display()
            ),
        )),
        (Some(p), None) => lines.push(Line::new(
            false,
            "bpf-linker",
            format!("{}: cannot tell its LLVM version (statically linked?)", p.display()),
        )),
    }
    let builds = qemu::all();
    if qemu::system().is_none() {
        lines.push(Line::new(false, "qemu-system-x86_64", "missing (package qemu-system-x86)"));
    }
    for b in &builds {
        let what = match b.origin {
            qemu::Origin::System => "qemu-system-x86_64".to_owned(),
            _ => format!("QEMU {}.{} (cache)", b.version.major, b.version.minor),
        };
        let tcg = if b.has_tcg_dirty_bug() {
            "; under TCG the lab gives guests VMSIZE + 8 KiB of RAM (QEMU < 9.0 loses dirty pages of 256 KiB-aligned RAM blocks)"
        } else {
            ""
        };
        lines.push(Line::new(true, what, format!("{} at {}{tcg}", b.description, b.binary.display())));
    }
    if is_bookworm() && !builds.iter().any(|b| b.version.major >= 10) {
        lines.push(
            Line::new(
                false,
                "QEMU 10.0 (cache)",
                format!("not fetched (cargo xtask setup unpacks it from {})", qemu::BACKPORTS_SUITE),
            )
            .optional(),
        );
    }
    let libvirt_user = libvirt_qemu_user_exists();
    lines.push(Line::new(
        libvirt_user,
        "user libvirt-qemu",
        if libvirt_user {
            "exists (libvirt's QEMU driver needs it before it reads qemu.conf)"
        } else {
            "missing: libvirt's QEMU driver needs the user and group (cargo xtask setup creates them)"
        },
    ));
    lines.push(match guest_kernel() {
        Some((k, origin)) => {
            Line::new(true, "guest kernel", format!("{} ({origin}, {} modules)", k.release, k.modules.len()))
        }
        None => Line::new(
            false,
            "guest kernel",
            "none: the host kernel is unusable and no Debian cloud kernel is cached (cargo xtask setup fetches it)",
        ),
    });

    lines.push(match host::tracefs_root() {
        Some(p) => Line::new(true, "tracefs", format!("mounted at {}", p.display())),
        None => Line::new(true, "tracefs", "not mounted: migtrace mounts it at /sys/kernel/tracing when it starts"),
    });
    for ty in [ProgType::Tracepoint, ProgType::Kprobe, ProgType::SchedCls] {
        lines.push(match host::try_load_prog(ty) {
            Ok(()) => Line::new(true, format!("eBPF {}", ty.name()), "a program of this type loads into the kernel"),
            Err(e) => Line::new(false, format!("eBPF {}", ty.name()), format!("does not load: {e}")),
        });
    }
    lines.push(if host::has_pmu("uprobe") {
        Line::new(true, "uprobe PMU", "present (QEMU phase probes attach through it)")
    } else {
        Line::new(false, "uprobe PMU", "missing: the kernel lacks CONFIG_UPROBE_EVENTS")
    });
    lines.push(
        if host::has_pmu("kprobe") {
            Line::new(true, "kprobe PMU", "present (not required)")
        } else {
            Line::new(false, "kprobe PMU", "not available (optional: migtrace does not depend on kprobes)")
        }
        .optional(),
    );
    let accel = host::detect_accel();
    lines.push(Line::new(true, "virtualisation", accel.to_string()));
    lines.push(kvm_guests(workspace));
    let object = crate::build::ebpf_object(workspace);
    lines.push(
        if object.is_file() {
            Line::new(true, "eBPF object", format!("built: {}", object.display()))
        } else {
            Line::new(false, "eBPF object", "not built yet (cargo xtask build)")
        }
        .optional(),
    );
    lines
}

/// Which lab guests KVM can run here; on kvm_pvm, found out by booting the minimal guest.
fn kvm_guests(workspace: &Path) -> Line {
    let what = "KVM guests";
    match host::kvm_flavour() {
        Ok(host::KvmFlavour::Hardware) => Line::new(true, what, "both: the Linux guest and the minimal guest"),
        Ok(host::KvmFlavour::Pvm) => match boot_minimal_guest(workspace) {
            Ok(took) => Line::new(
                true,
                what,
                format!(
                    "kvm_pvm runs the minimal guest only (--guest minimal; booted it under KVM in {:.1} s); \
                     the Linux guest runs under TCG",
                    took.as_secs_f64()
                ),
            ),
            Err(e) => Line::new(false, what, format!("kvm_pvm, but the minimal guest did not boot under it: {e:#}"))
                .optional(),
        },
        Err(reason) => Line::new(true, what, format!("none: both guests run under TCG ({reason})")),
    }
}

/// Assembles the minimal guest into a scratch directory and boots it under KVM the way
/// the lab does on kvm_pvm, until its start line. Returns how long that took.
fn boot_minimal_guest(workspace: &Path) -> anyhow::Result<std::time::Duration> {
    use anyhow::{Context as _, bail};
    let dir = std::env::temp_dir().join(format!("migtrace-doctor-{}", std::process::id()));
    let result = (|| {
        let elf = dir.join("guest.elf");
        crate::build::assemble_minimal_guest(workspace, &elf)?;
        let build = qemu::system().context("no qemu-system-x86_64")?;
        let bios = build.firmware("qboot.rom").context("no qboot.rom (package qemu-system-data)")?;
        let console = dir.join("console");
        let started = std::time::Instant::now();
        let mut child = Command::new(&build.binary)
            .args(["-nodefaults", "-no-user-config", "-display", "none", "-m", "32", "-accel", "kvm"])
            .args(["-cpu", "host,arch-capabilities=off", "-bios"])
            .arg(&bios)
            .arg("-kernel")
            .arg(&elf)
            .args(["-append", "hb_us=0", "-serial"])
            .arg(format!("file:{}", console.display()))
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("starting QEMU")?;
        let outcome = loop {
            if fs::read_to_string(&console).is_ok_and(|t| t.contains("migtrace-guest: {\"event\":\"start\"")) {
                break Ok(started.elapsed());
            }
            if let Ok(Some(status)) = child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
                }
                bail!("QEMU exited ({status}): {}", stderr.trim());
            }
            if started.elapsed() > std::time::Duration::from_secs(10) {
                break Err(anyhow::anyhow!("no start line within 10 s"));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        // Our own QEMU, by its handle.
        let _ = child.kill();
        let _ = child.wait();
        outcome
    })();
    let _ = fs::remove_dir_all(&dir);
    result
}
