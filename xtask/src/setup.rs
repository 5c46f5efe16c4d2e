//! `cargo xtask setup`: install exactly what is missing, nothing else.

use std::{process::Command, time::Instant};

use anyhow::{Context as _, Result, bail};
use migtrace_common::host::{self, kernel, qemu};

use crate::{
    apt::Apt,
    checks::{self, BASE_PACKAGES, BPF_LINKER_VERSION, DEBIAN_RUST_PACKAGES, DEBIAN_RUSTC_WEB_LLVM, Distro},
    toolchain::{self, DEBIAN_LINK, DEBIAN_PREFIX, Origin},
};

pub fn run() -> Result<()> {
    let started = Instant::now();
    let distro = checks::distro();
    let root = host::is_root();
    let Distro::Apt { .. } = distro else {
        return report_manual(&distro);
    };
    if !root {
        return report_manual(&distro);
    }
    let mut apt = Apt::default();
    let installed = install(&mut apt);
    // Packages left out because installing them would remove others: named with the
    // way out, after everything else was done.
    match (installed, apt.check()) {
        (Ok(tc), Ok(())) => {
            println!("setup: done in {:.1} s; eBPF toolchain {tc}", started.elapsed().as_secs_f64());
            Ok(())
        }
        (Err(e), Ok(())) => Err(e),
        (Ok(_), Err(conflicts)) => Err(conflicts),
        (Err(e), Err(conflicts)) => bail!("{conflicts:#}; then: {e:#}"),
    }
}

/// Every install step; returns the eBPF toolchain.
fn install(apt: &mut Apt) -> Result<toolchain::EbpfToolchain> {
    // 1. Base packages, and Debian's Rust when no better eBPF toolchain exists.
    let mut wanted: Vec<&str> = BASE_PACKAGES.iter().map(|(p, _)| *p).collect();
    let tc = toolchain::select().ok();
    if tc.as_ref().is_none_or(|t| t.origin == Origin::Debian) {
        wanted.extend(DEBIAN_RUST_PACKAGES);
    }
    apt.install_missing(&wanted)?;

    // 2. The rustup link for Debian's rustc-web.
    if tc.is_none()
        && toolchain::debian_rustc_present()
        && !toolchain::rustup_toolchains().iter().any(|t| t == DEBIAN_LINK)
    {
        step(&format!("rustup toolchain link {DEBIAN_LINK} {DEBIAN_PREFIX}"));
        sh(Command::new("rustup")
            .args(["toolchain", "link", DEBIAN_LINK, DEBIAN_PREFIX])
            .env_remove("RUSTUP_TOOLCHAIN"))?;
    }
    let tc = toolchain::select().context("no eBPF toolchain after installing Debian's rustc-web")?;

    // 3. LLVM of that toolchain, and bpf-linker built against it.
    let llvm = tc.llvm_major;
    let llvm_pkgs = checks::llvm_packages(llvm);
    apt.install_missing(&llvm_pkgs.iter().map(String::as_str).collect::<Vec<_>>())?;
    let linker_ok =
        toolchain::which("bpf-linker").is_some() && toolchain::bpf_linker_llvm_major().is_none_or(|m| m == llvm);
    if !linker_ok {
        let feature = format!("llvm-{llvm}");
        step(&format!(
            "cargo install bpf-linker@{BPF_LINKER_VERSION} --features {feature} (LLVM {llvm}, a few minutes)"
        ));
        let prefix = format!("/usr/lib/llvm-{llvm}");
        sh(Command::new("cargo")
            .args([
                "install",
                "--locked",
                "--force",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--no-default-features",
                "--features",
                &feature,
            ])
            .env("LLVM_PREFIX", &prefix)
            .env(format!("LLVM_SYS_{llvm}1_PREFIX"), &prefix))?;
    }

    // 4. libvirt's QEMU driver resolves its default user before reading qemu.conf.
    if !checks::libvirt_qemu_user_exists() {
        step("creating the system user and group libvirt-qemu (libvirt's QEMU driver needs them)");
        if !std::fs::read_to_string("/etc/group").is_ok_and(|t| t.lines().any(|l| l.starts_with("libvirt-qemu:"))) {
            sh(Command::new("groupadd").args(["--system", "libvirt-qemu"]))?;
        }
        sh(Command::new("useradd").args([
            "--system",
            "-g",
            "libvirt-qemu",
            "-d",
            "/var/lib/libvirt",
            "-s",
            "/usr/sbin/nologin",
            "libvirt-qemu",
        ]))?;
    }

    // 4b. The guest kernel, unless the host's own can boot the lab guest.
    if checks::guest_kernel().is_none() {
        step("fetching Debian's cloud kernel for the lab guest (apt-get download)");
        apt.update()?;
        let k = kernel::fetch_debian_cloud_kernel().context("fetching the guest kernel")?;
        println!("  cached {} in {}", k.release, k.image.parent().map(|p| p.display().to_string()).unwrap_or_default());
    }

    // 5. A QEMU without the TCG dirty-page bug beside the system's, for comparisons.
    if checks::is_bookworm() && !qemu::cached().iter().any(|b| b.version.major >= 10) {
        step(&format!(
            "fetching QEMU from {} into {} (host apt sources untouched)",
            qemu::BACKPORTS_SUITE,
            qemu::cache_root().display()
        ));
        // Its libraries come from the host's own suites, installed like every package here.
        let install = |libraries: &[String]| {
            let libraries: Vec<&str> = libraries.iter().map(String::as_str).collect();
            apt.install_missing(&libraries).map_err(|e| std::io::Error::other(format!("{e:#}")))
        };
        let (build, libraries) = qemu::fetch_backports(install).context("fetching QEMU from bookworm-backports")?;
        if !libraries.is_empty() {
            println!("  installed its libraries: {}", libraries.join(" "));
        }
        println!("  cached {}", build.label());
    }

    // 6. tracefs, which tracepoint attachment reads.
    if host::tracefs_root().is_none() {
        step("mounting tracefs at /sys/kernel/tracing");
        host::ensure_tracefs().context("mounting tracefs")?;
    }

    Ok(tc)
}

/// Not root or not apt: say precisely what is missing and how to get it, then fail.
fn report_manual(distro: &Distro) -> Result<()> {
    let workspace = crate::workspace_root();
    let missing: Vec<_> = checks::all(&workspace).into_iter().filter(|l| !l.ok && !l.optional).collect();
    if missing.is_empty() {
        println!("setup: everything present");
        return Ok(());
    }
    eprintln!(
        "setup cannot install here ({}):",
        match distro {
            Distro::Apt { pretty } => format!("{pretty}, but not root: run `sudo -E cargo xtask setup`"),
            Distro::Other { pretty } => format!("{pretty} has no apt"),
        }
    );
    for line in &missing {
        eprintln!("  missing {:<24} {}", line.what, line.detail);
    }
    eprintln!("how to get them by hand:");
    eprintln!(
        "  packages: QEMU (x86_64 system emulator), a static busybox, iproute2, iputils ping, libvirt development files, pkg-config, zstd and zlib development files"
    );
    eprintln!(
        "  eBPF toolchain: `rustup toolchain install nightly --component rust-src` (or set {})",
        toolchain::ENV_OVERRIDE
    );
    eprintln!(
        "  bpf-linker: LLVM {DEBIAN_RUSTC_WEB_LLVM} (or your toolchain's) dev files, then `LLVM_PREFIX=/usr/lib/llvm-N cargo install bpf-linker --no-default-features --features llvm-N`"
    );
    eprintln!("  guest kernel: pass `--kernel PATH` to migtrace (a bzImage with virtio-pci and virtio-net built in)");
    bail!("{} prerequisite(s) missing", missing.len())
}

pub fn step(what: &str) {
    println!("setup: {what}");
}

pub fn sh(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
