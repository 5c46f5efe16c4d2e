//! `cargo xtask`: set up a host, build, test and run migtrace.

mod apt;
mod build;
mod checks;
mod setup;
mod toolchain;

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Set up, build, test and run migtrace", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing (Debian/Ubuntu, as root): packages, bpf-linker, the eBPF
    /// toolchain link, the guest kernel. Idempotent.
    Setup,
    /// One line per prerequisite: found or missing, and what the host can do.
    Doctor,
    /// Build the eBPF object and the binaries that embed it.
    Build {
        /// Optimised userspace build (the eBPF object is always release).
        #[arg(long)]
        release: bool,
    },
    /// Build (or find in the cache) the lab's guest image: kernel + busybox initramfs
    /// with the workloads agent. Also happens automatically when a lab starts.
    Image {
        /// Guest kernel to boot instead of the default choice.
        #[arg(long)]
        kernel: Option<PathBuf>,
    },
    /// The whole test suite: unit tests, then root-only integration tests serially.
    Test {
        /// Skip the root-only tests (eBPF, lab) instead of failing when not root.
        #[arg(long)]
        no_root_tests: bool,
        /// Only tests whose name contains this.
        filter: Option<String>,
    },
    /// The main job: setup, build, then migtrace's default experiment.
    Run {
        /// Arguments passed on to `migtrace`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> std::process::ExitCode {
    match dispatch(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    let workspace = workspace_root();
    match cli.command {
        Cmd::Setup => setup::run(),
        Cmd::Doctor => doctor(&workspace),
        Cmd::Build { release } => build::all(&workspace, release).map(|_| ()),
        Cmd::Image { kernel } => {
            let binary = build::all(&workspace, false)?;
            let mut cmd = Command::new(&binary);
            cmd.args(["lab", "image"]);
            if let Some(k) = kernel {
                cmd.arg("--kernel").arg(k);
            }
            let status = cmd.status().with_context(|| format!("running {}", binary.display()))?;
            if !status.success() {
                bail!("building the guest image failed");
            }
            Ok(())
        }
        Cmd::Test { no_root_tests, filter } => test(&workspace, no_root_tests, filter),
        Cmd::Run { args } => run(&workspace, args),
    }
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default()
}

fn doctor(workspace: &std::path::Path) -> Result<()> {
    let lines = checks::all(workspace);
    let width = lines.iter().map(|l| l.what.len()).max().unwrap_or(0);
    for l in &lines {
        let mark = match (l.ok, l.optional) {
            (true, _) => "ok     ",
            (false, true) => "absent ",
            (false, false) => "MISSING",
        };
        println!("{mark} {:<width$}  {}", l.what, l.detail);
    }
    let missing = lines.iter().filter(|l| !l.ok && !l.optional).count();
    if missing > 0 {
        bail!("{missing} prerequisite(s) missing: `cargo xtask setup` installs them (Debian/Ubuntu, root)");
    }
    Ok(())
}

fn test(workspace: &std::path::Path, no_root_tests: bool, filter: Option<String>) -> Result<()> {
    let root = migtrace_common::host::is_root();
    if !root && !no_root_tests {
        bail!("the integration tests load eBPF programs and start QEMU labs: run as root, or pass --no-root-tests");
    }
    build::embedded(workspace)?;
    let cargo_test = |extra: &[&str]| -> Result<()> {
        let mut cmd = build::host_cargo(workspace);
        cmd.args(["test", "--workspace", "--exclude", "migtrace-ebpf"]);
        cmd.arg("--");
        if let Some(f) = &filter {
            cmd.arg(f);
        }
        cmd.args(extra);
        let status = cmd.status().context("running cargo test")?;
        if !status.success() {
            bail!("tests failed");
        }
        Ok(())
    };
    println!("test: unit tests");
    cargo_test(&[])?;
    if root && !no_root_tests {
        // Root tests share kernel state (probes, network namespaces, CPU for TCG guests).
        println!("test: root-only integration tests (serial)");
        cargo_test(&["--ignored", "--test-threads=1"])?;
    }
    Ok(())
}

fn run(workspace: &std::path::Path, args: Vec<String>) -> Result<()> {
    setup::run()?;
    let binary = build::all(workspace, true)?;
    let args = if args.is_empty() { vec!["run".to_owned(), "--default".to_owned()] } else { args };
    let status = Command::new(&binary)
        .args(&args)
        .current_dir(workspace)
        .status()
        .with_context(|| format!("running {}", binary.display()))?;
    if !status.success() {
        bail!("migtrace {} failed: {status}", args.join(" "));
    }
    Ok(())
}
