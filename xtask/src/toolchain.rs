//! Which Rust toolchain builds the eBPF programs.
//!
//! `bpfel-unknown-none` has no prebuilt standard library, so the toolchain must have the
//! Rust library sources for `-Z build-std=core`. In order of preference:
//! 1. `MIGTRACE_EBPF_TOOLCHAIN`: any rustup toolchain name you choose;
//! 2. a rustup nightly that has the `rust-src` component;
//! 3. Debian's `rustc-web` + `cargo-web` + `rust-web-src`, linked into rustup as
//!    `debian-web` and used with `RUSTC_BOOTSTRAP=1` (it is a stable compiler).

use std::{
    fmt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

pub const ENV_OVERRIDE: &str = "MIGTRACE_EBPF_TOOLCHAIN";
/// The rustup name under which set-up links Debian's rustc-web.
pub const DEBIAN_LINK: &str = "debian-web";
/// Debian's rustc-web lives in /usr.
pub const DEBIAN_PREFIX: &str = "/usr";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Override,
    Nightly,
    Debian,
}

#[derive(Clone, Debug)]
pub struct EbpfToolchain {
    /// rustup toolchain name for `rustup run`.
    pub name: String,
    pub origin: Origin,
    pub version: String,
    pub llvm_major: u32,
    /// Stable compilers need RUSTC_BOOTSTRAP=1 for `-Z build-std`.
    pub bootstrap: bool,
}

impl fmt::Display for EbpfToolchain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.origin {
            Origin::Override => format!("from ${ENV_OVERRIDE}"),
            Origin::Nightly => "rustup nightly with rust-src".into(),
            Origin::Debian => "Debian rustc-web + rust-web-src, RUSTC_BOOTSTRAP=1".into(),
        };
        write!(f, "{} ({}, LLVM {}; {why})", self.name, self.version, self.llvm_major)
    }
}

impl EbpfToolchain {
    /// A `cargo` command of this toolchain, with the outer cargo's environment removed so
    /// that rustup does not pick the host toolchain back up.
    pub fn cargo(&self) -> Command {
        let mut cmd = Command::new("rustup");
        cmd.args(["run", &self.name, "cargo"]);
        for var in
            ["RUSTUP_TOOLCHAIN", "RUSTC", "RUSTDOC", "RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER", "RUSTFLAGS", "CARGO"]
        {
            cmd.env_remove(var);
        }
        if self.bootstrap {
            cmd.env("RUSTC_BOOTSTRAP", "1");
        }
        cmd
    }
}

/// Selects the eBPF toolchain, or explains why none is usable.
pub fn select() -> Result<EbpfToolchain> {
    if let Ok(name) = std::env::var(ENV_OVERRIDE) {
        return probe(&name, Origin::Override)
            .with_context(|| format!("${ENV_OVERRIDE}={name} is not a usable eBPF toolchain"));
    }
    for name in rustup_toolchains() {
        if name.starts_with("nightly")
            && let Ok(tc) = probe(&name, Origin::Nightly)
        {
            return Ok(tc);
        }
    }
    if rustup_toolchains().iter().any(|t| t == DEBIAN_LINK) {
        return probe(DEBIAN_LINK, Origin::Debian);
    }
    if debian_rustc_present() {
        bail!("Debian's rustc-web is installed but not linked into rustup: run `cargo xtask setup`");
    }
    bail!(
        "no toolchain can build eBPF: install a rustup nightly with rust-src, or Debian's \
         rustc-web cargo-web rust-web-src (`cargo xtask setup` does), or set ${ENV_OVERRIDE}"
    )
}

/// Whether Debian's rustc-web with its library sources is installed in /usr.
pub fn debian_rustc_present() -> bool {
    Path::new(DEBIAN_PREFIX).join("bin/rustc").exists()
        && Path::new(DEBIAN_PREFIX).join("bin/cargo").exists()
        && Path::new(DEBIAN_PREFIX).join("lib/rustlib/src/rust/library/core").is_dir()
}

pub fn rustup_toolchains() -> Vec<String> {
    Command::new("rustup")
        .args(["toolchain", "list"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn probe(name: &str, origin: Origin) -> Result<EbpfToolchain> {
    let rustc = |args: &[&str]| -> Result<String> {
        let out = Command::new("rustup")
            .args(["run", name, "rustc"])
            .args(args)
            .env_remove("RUSTUP_TOOLCHAIN")
            .output()
            .with_context(|| format!("running rustc of toolchain {name}"))?;
        if !out.status.success() {
            bail!("rustc of toolchain {name}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let sysroot = PathBuf::from(rustc(&["--print", "sysroot"])?.trim());
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        bail!("toolchain {name} has no Rust library sources (rustup component add rust-src)");
    }
    let vv = rustc(&["-vV"])?;
    let field = |key: &str| vv.lines().find_map(|l| l.strip_prefix(key)).map(str::trim).unwrap_or("").to_owned();
    let version = field("release:");
    let llvm_major = field("LLVM version:").split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    let bootstrap = !version.contains("nightly");
    Ok(EbpfToolchain { name: name.to_owned(), origin, version, llvm_major, bootstrap })
}

/// The LLVM major version bpf-linker is linked against, if it is installed.
pub fn bpf_linker_llvm_major() -> Option<u32> {
    let path = which("bpf-linker")?;
    let out = Command::new("ldd").arg(&path).output().ok()?;
    // libLLVM.so.22.1 (Debian) or libLLVM-22.so (upstream) .
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let lib = l.split_whitespace().next()?;
        let rest = lib.strip_prefix("libLLVM.so.").or_else(|| lib.strip_prefix("libLLVM-"))?;
        rest.split(['.', '-']).next()?.parse().ok()
    })
}

pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join(program)).find(|p| p.is_file())
}
