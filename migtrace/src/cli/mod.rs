//! Subcommands, one module each.

mod lab;
mod migrate;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand, ValueEnum};
use migtrace_common::host::{self, Accel};

#[derive(Parser)]
#[command(
    name = "migtrace",
    version,
    about = "Measure VM live migration precisely: phase timelines on both hosts with eBPF, downtime every way",
    after_help = "Run `migtrace <command> --help` for each command's options and examples."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The embedded two-host lab: up, down, list, clean, image.
    #[command(subcommand)]
    Lab(lab::LabCommand),
    /// Migrate a VM back and forth N times and write one JSON record per migration.
    Migrate(migrate::MigrateArgs),
    /// Print the phase timeline of recorded migrations as a table.
    ///
    /// Example: migtrace timeline results/try --rep 2
    Timeline {
        /// A records file (`migrations.jsonl`) or a directory holding one.
        records: PathBuf,
        /// Only the migration with this repetition number (default: all).
        #[arg(long)]
        rep: Option<u32>,
        /// Only migrations of treatments containing this text.
        #[arg(long)]
        treatment: Option<String>,
    },
    /// Compare the downtime methods side by side, per treatment and overall.
    ///
    /// Example: migtrace compare results/try --json
    Compare {
        /// Records files or result directories (each with a `migrations.jsonl`).
        #[arg(required = true)]
        records: Vec<PathBuf>,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Load the eBPF programs into this kernel, attach a uprobe and a tracepoint to
    /// migtrace itself, and check that their events arrive (needs root).
    Selftest {
        /// Triggers per probe.
        #[arg(long, default_value_t = 1000)]
        count: usize,
    },
}

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Lab(cmd) => lab::run(cmd).await,
        Command::Migrate(args) => migrate::run(args).await,
        Command::Timeline { records, rep, treatment } => {
            let all = migtrace::measure::record::read(&records)?;
            let chosen: Vec<_> = all
                .iter()
                .filter(|r| rep.is_none_or(|n| r.repetition == n))
                .filter(|r| treatment.as_deref().is_none_or(|t| r.treatment.contains(t)))
                .collect();
            if chosen.is_empty() {
                anyhow::bail!("no migration in {} matches (it holds {} records)", records.display(), all.len());
            }
            for r in chosen {
                println!("{}", migtrace::report::timeline::render(r));
            }
            Ok(())
        }
        Command::Compare { records, json } => {
            let mut all = Vec::new();
            for path in &records {
                all.extend(migtrace::measure::record::read(path)?);
            }
            let groups = migtrace::report::compare::compare(&all);
            if json {
                println!("{}", serde_json::to_string_pretty(&groups)?);
            } else {
                print!("{}", migtrace::report::compare::render(&groups));
            }
            Ok(())
        }
        Command::Selftest { count } => {
            let r = migtrace::probe::selftest::run(count).await?;
            println!(
                "selftest: {} uprobe and {} tracepoint events delivered, {} lost, worst delivery latency {:.1} ms",
                r.uprobe_events,
                r.syscall_events,
                r.lost,
                r.max_latency_ns as f64 / 1e6
            );
            Ok(())
        }
    }
}

/// Resolves on SIGINT or SIGTERM, with the signal's name.
pub async fn shutdown_signal() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum AccelArg {
    Kvm,
    Tcg,
}

/// The machine both lab QEMUs emulate, and what the guest runs.
#[derive(Args, Clone, Debug)]
pub struct MachineArgs {
    /// Guest memory (VMSIZE), MiB.
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    pub vmsize: u32,
    /// Guest vCPUs.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub vcpus: u32,
    /// Workload inside the guest, e.g. `wset=64M,rate=20000` or `load=30`; see
    /// `workloads --help`. Default: idle.
    #[arg(long, default_value = "idle", value_name = "SPEC")]
    pub workload: String,
    /// Accelerator; default: kvm when hardware virtualisation is usable, else tcg.
    #[arg(long)]
    pub accel: Option<AccelArg>,
    /// Guest kernel (bzImage with virtio-pci and virtio-net built in). Default: the host's
    /// kernel if usable, else Debian's cloud kernel (downloaded and cached).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Give up if the guest is not up after this many seconds.
    #[arg(long, default_value_t = 90, value_name = "SECONDS")]
    pub boot_timeout: u64,
}

impl MachineArgs {
    pub fn lab_config(&self) -> Result<migtrace::lab::LabConfig> {
        let workload = workloads::spec::Spec::parse(&self.workload)
            .map_err(|e| anyhow::anyhow!("--workload {:?}: {e}", self.workload))?;
        let accel = self.accel.map(|a| match a {
            AccelArg::Kvm => Accel::Kvm,
            AccelArg::Tcg => Accel::Tcg { reason: "--accel tcg".into() },
        });
        if matches!(accel, Some(Accel::Kvm))
            && let Accel::Tcg { reason } = host::detect_accel()
        {
            anyhow::bail!("--accel kvm, but KVM is not usable here: {reason}");
        }
        Ok(migtrace::lab::LabConfig {
            vmsize_mib: self.vmsize,
            vcpus: self.vcpus,
            accel,
            workload,
            kernel: self.kernel.clone(),
            boot_timeout: std::time::Duration::from_secs(self.boot_timeout),
        })
    }
}
