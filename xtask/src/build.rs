//! `cargo xtask build`: the artifacts `migtrace` embeds (the eBPF object, the static
//! guest agent, the minimal guest), then the userspace binaries.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::toolchain;

pub const EBPF_TARGET: &str = "bpfel-unknown-none";
/// The host triple: the guest agent is built for it explicitly, so that its static-link
/// flags do not reach build scripts and proc macros.
const HOST_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Where the eBPF object lands (separate target dir: another toolchain builds it).
pub fn ebpf_object(workspace: &Path) -> PathBuf {
    workspace.join("target/ebpf").join(EBPF_TARGET).join("release/migtrace")
}

pub fn guest_agent(workspace: &Path) -> PathBuf {
    workspace.join("target").join(HOST_TARGET).join("release/workloads")
}

/// The minimal guest's ELF (guest/minimal), a PVH kernel for QEMU's `-kernel`.
pub fn minimal_guest(workspace: &Path) -> PathBuf {
    workspace.join("target/minimal-guest/migtrace-minimal-guest.elf")
}

fn host_cargo_bin() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Builds the eBPF object. Cargo's fingerprints make this a no-op unless the eBPF or
/// shared sources changed; the object keeps its symbols, BTF and debug info.
pub fn ebpf(workspace: &Path) -> Result<PathBuf> {
    let tc = toolchain::select()?;
    if toolchain::which("bpf-linker").is_none() {
        bail!("bpf-linker is not installed: run `cargo xtask setup`");
    }
    // Like aya-build: the target arch for pt_regs access, BTF for the loader.
    let rustflags = ["--cfg=bpf_target_arch=\"x86_64\"", "-Cdebuginfo=2", "-Clink-arg=--btf"].join("\x1f");
    let status = tc
        .cargo()
        .current_dir(workspace)
        .args(["build", "--package", "migtrace-ebpf", "--release", "--target", EBPF_TARGET, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(workspace.join("target/ebpf"))
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .status()
        .with_context(|| format!("running cargo of eBPF toolchain {}", tc.name))?;
    if !status.success() {
        bail!("building the eBPF programs with {tc} failed");
    }
    Ok(ebpf_object(workspace))
}

/// Builds `workloads` as one statically linked binary, the lab guest's agent.
pub fn workloads_static(workspace: &Path) -> Result<PathBuf> {
    let status = Command::new(host_cargo_bin())
        .current_dir(workspace)
        .args(["build", "--package", "workloads", "--bin", "workloads", "--release", "--target", HOST_TARGET])
        .env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS", "-C target-feature=+crt-static")
        .status()
        .context("running cargo build for the static guest agent")?;
    if !status.success() {
        bail!("building the static workloads binary failed (is libc6-dev installed?)");
    }
    Ok(guest_agent(workspace))
}

/// Assembles the minimal guest with binutils into `out` (32-bit, loaded at 1 MiB).
/// Plain `as` and `ld`: it is a few hundred lines of assembly, and no Rust target
/// fits a 32-bit guest that must never fault (no SSE, no paging).
pub fn assemble_minimal_guest(workspace: &Path, out: &Path) -> Result<()> {
    let source = workspace.join("guest/minimal/guest.S");
    let script = workspace.join("guest/minimal/link.ld");
    let dir = out.parent().context("the minimal guest's output has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let object = out.with_extension("o");
    let run = |cmd: &mut Command, what: &str| -> Result<()> {
        let output =
            cmd.output().with_context(|| format!("running {what} (binutils; cargo xtask setup installs it)"))?;
        if !output.status.success() {
            bail!("{what} failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(())
    };
    run(Command::new("as").arg("--32").arg(&source).arg("-o").arg(&object), "as")?;
    run(Command::new("ld").args(["-m", "elf_i386", "-T"]).arg(&script).arg(&object).arg("-o").arg(out), "ld")?;
    Ok(())
}

/// Builds the minimal guest unless it is newer than its sources.
pub fn minimal_guest_elf(workspace: &Path) -> Result<PathBuf> {
    let out = minimal_guest(workspace);
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let newest_source =
        ["guest/minimal/guest.S", "guest/minimal/link.ld"].iter().filter_map(|s| modified(&workspace.join(s))).max();
    if modified(&out).is_none_or(|built| newest_source.is_none_or(|s| s > built)) {
        assemble_minimal_guest(workspace, &out)?;
    }
    Ok(out)
}

/// Builds what `migtrace` embeds: the eBPF object, the static guest agent and the
/// minimal guest.
pub fn embedded(workspace: &Path) -> Result<()> {
    ebpf(workspace)?;
    workloads_static(workspace)?;
    minimal_guest_elf(workspace)?;
    Ok(())
}

/// A host cargo command whose build of `migtrace` embeds the eBPF object and the agent.
pub fn host_cargo(workspace: &Path) -> Command {
    let mut cmd = Command::new(host_cargo_bin());
    cmd.current_dir(workspace)
        .env("MIGTRACE_EBPF_OBJECT", ebpf_object(workspace))
        .env("MIGTRACE_GUEST_AGENT", guest_agent(workspace))
        .env("MIGTRACE_MINIMAL_GUEST", minimal_guest(workspace));
    cmd
}

/// Builds the embedded artifacts and the workspace's userspace binaries.
pub fn all(workspace: &Path, release: bool) -> Result<PathBuf> {
    embedded(workspace)?;
    let mut cmd = host_cargo(workspace);
    cmd.args(["build", "--workspace", "--exclude", "migtrace-ebpf", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("building migtrace failed");
    }
    println!("build: eBPF object {}", ebpf_object(workspace).display());
    println!("build: guest agent {}", guest_agent(workspace).display());
    println!("build: minimal guest {}", minimal_guest(workspace).display());
    Ok(workspace.join("target").join(if release { "release" } else { "debug" }).join("migtrace"))
}
