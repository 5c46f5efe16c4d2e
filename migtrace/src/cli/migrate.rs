//! `migtrace migrate`

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use migtrace::{
    hypervisor::{HostPair, MigrationParams, Status},
    lab::Lab,
    measure::record::{MigrationRecord, RecordWriter},
};

use super::MachineArgs;

/// Example: migtrace migrate --lab --count 5 --workload wset=64M,rate=20000 --out results/try
#[derive(Args)]
pub struct MigrateArgs {
    /// Use the embedded two-host lab (the only backend so far).
    #[arg(long, required = true)]
    lab: bool,
    /// Number of migrations (ping-pong between the two hosts).
    #[arg(long, default_value_t = 3, value_name = "N")]
    count: u32,
    #[command(flatten)]
    machine: MachineArgs,
    /// Migration bandwidth limit, MiB/s (QEMU's `max-bandwidth`); default: QEMU's.
    #[arg(long, value_name = "MIB_PER_S")]
    max_bandwidth: Option<u64>,
    /// Target downtime, ms (QEMU's `downtime-limit`); default: QEMU's (300).
    #[arg(long, value_name = "MS")]
    downtime_limit: Option<u64>,
    /// Give up on a migration (and cancel it) after this many seconds.
    #[arg(long, default_value_t = 300.0, value_name = "SECONDS")]
    timeout: f64,
    /// Seconds to let the workload run before the first migration.
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    warmup: f64,
    /// Directory for the records (`migrations.jsonl`); default: results/migrate-<time>.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

pub async fn run(args: MigrateArgs) -> Result<()> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    if args.timeout.is_nan() || args.timeout <= 0.0 {
        bail!("--timeout must be positive");
    }
    let config = args.machine.lab_config()?;
    let out = args.out.clone().unwrap_or_else(|| {
        let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string().replace(':', "");
        PathBuf::from("results").join(format!("migrate-{stamp}"))
    });
    let mut writer = RecordWriter::open(&out)?;
    let params = MigrationParams {
        max_bandwidth: args.max_bandwidth.map(|m| m << 20),
        downtime_limit_ms: args.downtime_limit,
        timeout_s: args.timeout,
    };
    let treatment = format!("vmsize={}M,vcpus={},{}", config.vmsize_mib, config.vcpus, config.workload);
    eprintln!("lab: booting a {} MiB, {} vCPU guest ({})…", config.vmsize_mib, config.vcpus, config.workload);
    let mut lab = Lab::up(config).await?;
    eprintln!("lab {} up in {:.1} s ({})", lab.id, lab.boot_time.as_secs_f64(), lab.accel);
    tokio::time::sleep(std::time::Duration::from_secs_f64(args.warmup.max(0.0))).await;

    for rep in 0..args.count {
        let outcome = lab.migrate(&params).await?;
        let record = MigrationRecord::new(rep, treatment.clone(), params.clone(), outcome);
        writer.append(&record).with_context(|| "writing the migration record")?;
        let o = &record.outcome;
        let s = &o.stats;
        eprintln!(
            "migration {}/{} {}: {:?} in {} (QEMU total {} ms, downtime {} ms, {} dirty syncs)",
            rep + 1,
            args.count,
            o.direction,
            o.status,
            o.command_ms().map_or("-".into(), |m| format!("{m:.0} ms")),
            s.total_time.map_or("-".into(), |v| v.to_string()),
            s.downtime.map_or("-".into(), |v| v.to_string()),
            s.ram.as_ref().and_then(|r| r.dirty_sync_count).map_or("-".into(), |v| v.to_string()),
        );
        if o.status != Status::Completed {
            let error = o.error.clone().unwrap_or_default();
            lab.down().await;
            bail!(
                "migration {} {:?}: {error}; {} record(s) in {}",
                rep + 1,
                o.status,
                rep + 1,
                writer.path().display()
            );
        }
        if rep + 1 < args.count {
            lab.prepare_next().await?;
        }
    }
    lab.down().await;
    println!("{} migration record(s) in {}", args.count, writer.path().display());
    Ok(())
}
