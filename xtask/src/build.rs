//! `cargo xtask build`: the eBPF object, then the userspace binary that embeds it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::toolchain;

pub const EBPF_TARGET: &str = "bpfel-unknown-none";

/// Where the eBPF object lands (separate target dir: another toolchain builds it).
pub fn ebpf_object(workspace: &Path) -> PathBuf {
    workspace
        .join("target/ebpf")
        .join(EBPF_TARGET)
        .join("release/migtrace")
}

/// Builds the eBPF object. Cargo's fingerprints make this a no-op unless the eBPF or
/// shared sources changed; the object keeps its symbols, BTF and debug info.
pub fn ebpf(workspace: &Path) -> Result<PathBuf> {
    let tc = toolchain::select()?;
    if toolchain::which("bpf-linker").is_none() {
        bail!("bpf-linker is not installed: run `cargo xtask setup`");
    }
    // Like aya-build: the target arch for pt_regs access, BTF for the loader.
    let rustflags = [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
    ]
    .join("\x1f");
    let status = tc
        .cargo()
        .current_dir(workspace)
        .args([
            "build",
            "--package",
            "migtrace-ebpf",
            "--release",
            "--target",
            EBPF_TARGET,
            "-Z",
            "build-std=core",
        ])
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

/// A host cargo command that embeds the eBPF object.
pub fn host_cargo(workspace: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace)
        .env("MIGTRACE_EBPF_OBJECT", ebpf_object(workspace));
    cmd
}

/// Builds the eBPF object and the workspace's userspace binaries.
pub fn all(workspace: &Path, release: bool) -> Result<PathBuf> {
    let object = ebpf(workspace)?;
    let mut cmd = host_cargo(workspace);
    cmd.args([
        "build",
        "--workspace",
        "--exclude",
        "migtrace-ebpf",
        "--bins",
    ]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("building migtrace failed");
    }
    println!("build: eBPF object {}", object.display());
    Ok(workspace
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("migtrace"))
}
