//! `migtrace migrate`

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use migtrace::{
    hypervisor::{HostPair, MigrationParams, Status},
    lab::{GuestKind, Lab, netns},
    measure::{
        record::{MigrationRecord, RecordWriter},
        session::{MeasureOptions, Network, Session},
    },
};

use super::MachineArgs;

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
    #[command(flatten)]
    migration: MigrationArgs,
    #[command(flatten)]
    measure: MeasureArgs,
    /// Seconds to let the workload run before the first migration.
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    warmup: f64,
    /// Directory for the records (`migrations.jsonl`); default: results/migrate-<time>.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// Knobs of the migration itself.
#[derive(Args, Clone, Debug)]
pub struct MigrationArgs {
    /// Migration bandwidth limit, MiB/s (QEMU's `max-bandwidth`); default: QEMU's.
    #[arg(long, value_name = "MIB_PER_S")]
    pub max_bandwidth: Option<u64>,
    /// Target downtime, ms (QEMU's `downtime-limit`); default: QEMU's (300).
    #[arg(long, value_name = "MS")]
    pub downtime_limit: Option<u64>,
    /// Give up on a migration (and cancel it) after this many seconds.
    #[arg(long, default_value_t = 300.0, value_name = "SECONDS")]
    pub timeout: f64,
}

impl MigrationArgs {
    pub fn params(&self) -> Result<MigrationParams> {
        if self.timeout.is_nan() || self.timeout <= 0.0 {
            bail!("--timeout must be positive");
        }
        Ok(MigrationParams {
            max_bandwidth: self.max_bandwidth.map(|m| m << 20),
            downtime_limit_ms: self.downtime_limit,
            timeout_s: self.timeout,
        })
    }
}

/// How migrations are observed.
#[derive(Args, Clone, Debug)]
pub struct MeasureArgs {
    /// Do not load eBPF probes (no phase timeline from QEMU, no packet stamps).
    #[arg(long)]
    pub no_probes: bool,
    /// Interval of the paper's reference ping, ms; 0 turns it off.
    #[arg(long, default_value_t = 50.0, value_name = "MS")]
    pub ping_interval: f64,
    /// Rate of migtrace's probe sender, Hz (1 kHz default; 10 kHz and more work); 0 turns
    /// it off.
    #[arg(long, default_value_t = 1000.0, value_name = "HZ")]
    pub probe_rate: f64,
    /// Seconds to keep observing after a migration completes (announce, late replies).
    #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
    pub settle: f64,
    /// With probes on, keep observing past --settle until the guest answers again, up to
    /// this many seconds after completion.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub settle_max: f64,
    /// Keep the raw eBPF trace in every record (large).
    #[arg(long)]
    pub keep_trace: bool,
    /// Do not ask the guest agent to check its working set after each migration.
    #[arg(long)]
    pub no_memory_check: bool,
}

impl MeasureArgs {
    pub fn options(&self) -> Result<MeasureOptions> {
        if self.ping_interval < 0.0
            || self.ping_interval.is_nan()
            || (self.ping_interval > 0.0 && self.ping_interval < 2.0)
        {
            bail!("--ping-interval must be 0 (off) or at least 2 ms (iputils' floor)");
        }
        if self.probe_rate < 0.0 || self.probe_rate.is_nan() || self.probe_rate > 100_000.0 {
            bail!("--probe-rate must be between 0 (off) and 100000 Hz");
        }
        if self.settle < 0.0 || self.settle.is_nan() || self.settle_max.is_nan() || self.settle_max < self.settle {
            bail!("--settle must not be negative, and --settle-max not below --settle");
        }
        Ok(MeasureOptions {
            trace: !self.no_probes,
            ping_interval: (self.ping_interval > 0.0).then(|| Duration::from_secs_f64(self.ping_interval / 1e3)),
            probe_interval: (self.probe_rate > 0.0).then(|| Duration::from_secs_f64(1.0 / self.probe_rate)),
            settle: Duration::from_secs_f64(self.settle),
            settle_max: Duration::from_secs_f64(self.settle_max),
            keep_trace: self.keep_trace,
            memory_check: (!self.no_memory_check).then(|| Duration::from_secs(5)),
            ..MeasureOptions::default()
        })
    }
}

/// The lab's network as seen by the measurement session.
pub fn lab_network(lab: &Lab) -> Network {
    Network { ns: Some(lab.ns().to_owned()), guest: netns::GUEST_IP, taps: netns::TAPS.to_vec() }
}

pub async fn run(args: MigrateArgs) -> Result<()> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let config = args.machine.lab_config()?;
    let params = args.migration.params()?;
    let options = args.measure.options()?;
    let out = args.out.clone().unwrap_or_else(|| {
        let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string().replace(':', "");
        PathBuf::from("results").join(format!("migrate-{stamp}"))
    });
    let mut writer = RecordWriter::open(&out)?;
    let guest = match config.guest {
        GuestKind::Linux => String::new(),
        g => format!("guest={g},"),
    };
    let treatment = format!("{guest}vmsize={}M,vcpus={},{}", config.vmsize_mib, config.vcpus, config.workload);
    eprintln!(
        "lab: booting a {} MiB, {} vCPU {} guest ({})…",
        config.vmsize_mib, config.vcpus, config.guest, config.workload
    );
    let mut lab = Lab::up(config).await?;
    eprintln!("lab {} up in {:.1} s ({})", lab.id, lab.boot_time.as_secs_f64(), lab.accel_label());
    let mut session =
        Session::start(lab_network(&lab), options).context("starting the eBPF probes (--no-probes runs without)")?;
    tokio::time::sleep(Duration::from_secs_f64(args.warmup.max(0.0))).await;

    for rep in 0..args.count {
        let record = session.migrate(&mut lab, &params, rep, &treatment).await?;
        writer.append(&record).context("writing the migration record")?;
        eprintln!("migration {}/{} {}", rep + 1, args.count, summary_line(&record));
        let o = &record.outcome;
        if o.status != Status::Completed {
            let error = o.error.clone().unwrap_or_default();
            session.stop().await?;
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
    session.stop().await?;
    lab.down().await;
    println!("{} migration record(s) in {}", args.count, writer.path().display());
    Ok(())
}

/// One line per migration for progress output.
pub fn summary_line(r: &MigrationRecord) -> String {
    let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
    let d = &r.downtime_ms;
    format!(
        "{}: {:?}, {} ms (QEMU {}); downtime ms: ping {} | probe gap {} | vCPU {} | QEMU {}{}{}",
        r.outcome.direction,
        r.outcome.status,
        f(r.migration_time_ms.command),
        f(r.migration_time_ms.reported),
        f(d.ping),
        f(d.probe_gap),
        f(d.vcpu),
        f(d.reported),
        d.heartbeat_gap.map_or(String::new(), |g| format!(" | heartbeat gap {g:.1}")),
        r.trace_health
            .as_ref()
            .filter(|h| h.lost_records > 0)
            .map_or(String::new(), |h| format!(" ({} records lost)", h.lost_records)),
    ) + &match r.guest.as_ref().and_then(|g| g.memory_check.as_ref()) {
        Some(m) if m.pages_checked > 0 || m.corrupted_pages() > 0 => {
            format!("; memory check: {} of {} pages bad", m.corrupted_pages(), m.pages_checked)
        }
        _ => String::new(),
    } + &match &r.guest {
        Some(g) if g.crashed => {
            format!(" — GUEST CRASHED after the migration: {}", g.console.first().map_or("", String::as_str))
        }
        Some(g) if g.rebooted => " — GUEST REBOOTED after the migration".into(),
        Some(g) if g.unreachable => " — GUEST UNREACHABLE after the migration (hung?)".into(),
        Some(g) if g.corrupted() => " — GUEST MEMORY CORRUPTED by the migration (pages lost writes)".into(),
        _ => String::new(),
    }
}
