//! `migtrace migrate`

use migtrace::experiment::spec::MAX_SECONDS;
use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use migtrace::{
    hypervisor::{
        HostPair, MigrationParams, Status,
        libvirt::{LibvirtFlags, LibvirtHost, LibvirtPair},
    },
    lab::{GuestKind, Lab, libvirt::LibvirtLab},
    measure::{
        record::{MigrationRecord, RecordWriter},
        session::{MeasureOptions, Network, Session},
    },
    probe::agent::{AgentOptions, HostTracing, start_hosts},
};

use super::MachineArgs;

#[derive(Args)]
#[command(group(clap::ArgGroup::new("hosts").required(true).args(["lab", "libvirt"])))]
pub struct MigrateArgs {
    /// Use an embedded two-host lab on this machine (see --backend).
    #[arg(long)]
    lab: bool,
    /// Which lab: `qemu` (two QEMU processes in a namespace) or `libvirt` (two libvirt
    /// daemons, each in its own namespace, migrating a libvirt domain).
    #[arg(long, value_enum, default_value = "qemu", requires = "lab")]
    backend: LabBackend,
    /// Two real libvirt hosts: the URIs of the one running the domain and of the other.
    #[arg(long, num_args = 2, value_names = ["SOURCE_URI", "DESTINATION_URI"], conflicts_with = "lab", requires = "domain")]
    libvirt: Option<Vec<String>>,
    /// The libvirt domain to migrate (persistent, running on one of the hosts).
    #[arg(long, requires = "libvirt")]
    domain: Option<String>,
    /// The guest's address, for the ping and the probe sender (--libvirt; without it
    /// the network measures are missing).
    #[arg(long, value_name = "IP", requires = "libvirt")]
    guest_ip: Option<std::net::Ipv4Addr>,
    /// Network namespace to send the ping and probes from (--libvirt; default: here).
    #[arg(long, value_name = "NS", requires = "libvirt")]
    probe_netns: Option<String>,
    #[command(flatten)]
    agents: AgentArgs,
    #[command(flatten)]
    libvirt_flags: LibvirtFlagArgs,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LabBackend {
    Qemu,
    Libvirt,
}

/// How the hosts of a libvirt pair are traced.
#[derive(Args, Clone, Debug)]
pub struct AgentArgs {
    /// `auto`: an agent per host (the libvirt lab: in each host's namespace; real hosts:
    /// over ssh); `local`: in this process (hosts on this machine); `none`: no tracing,
    /// only libvirt's own figures.
    #[arg(long, value_enum, default_value = "auto")]
    pub agents: AgentMode,
    /// Command that starts the agent on the source host (split like a shell would, but
    /// run without one); default `ssh HOST migtrace agent`.
    #[arg(long, value_name = "CMD")]
    pub agent_source: Option<String>,
    /// The same for the destination host.
    #[arg(long, value_name = "CMD")]
    pub agent_destination: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AgentMode {
    Auto,
    Local,
    None,
}

/// libvirt's migration flags.
#[derive(Args, Clone, Debug, Default)]
pub struct LibvirtFlagArgs {
    /// Peer to peer: the source daemon drives the migration.
    #[arg(long)]
    pub p2p: bool,
    /// Tunnel the migration stream through the daemons (implies --p2p).
    #[arg(long)]
    pub tunnelled: bool,
    /// Let QEMU throttle the guest when pre-copy does not converge.
    #[arg(long)]
    pub auto_converge: bool,
    /// Compress the migration stream.
    #[arg(long)]
    pub compressed: bool,
}

impl LibvirtFlagArgs {
    pub fn flags(&self) -> LibvirtFlags {
        LibvirtFlags {
            p2p: self.p2p,
            tunnelled: self.tunnelled,
            auto_converge: self.auto_converge,
            compressed: self.compressed,
        }
    }
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
    /// The bandwidth QEMU assumes for the switchover when it decides whether the rest
    /// fits in the downtime limit, MiB/s (QEMU's `avail-switchover-bandwidth`, QEMU 8.2
    /// and newer: --qemu 10.0 in the lab); default: QEMU's own estimate.
    #[arg(long, value_name = "MIB_PER_S")]
    pub avail_switchover_bandwidth: Option<u64>,
    /// Give up on a migration (and cancel it) after this many seconds.
    #[arg(long, default_value_t = 300.0, value_name = "SECONDS")]
    pub timeout: f64,
}

impl MigrationArgs {
    pub fn params(&self) -> Result<MigrationParams> {
        if !(self.timeout.is_finite() && self.timeout > 0.0 && self.timeout <= MAX_SECONDS) {
            bail!("--timeout must be positive and at most {MAX_SECONDS} s (a week)");
        }
        // MiB/s to bytes/s, refused where QEMU would take 0 for "unlimited" or the bytes
        // would not fit.
        let bytes = |flag: &str, mib: Option<u64>| -> Result<Option<u64>> {
            match mib {
                None => Ok(None),
                Some(m) if m > 0 && m <= 1 << 40 => Ok(Some(m << 20)),
                Some(m) => bail!("{flag} {m}: MiB/s from 1 to {}", 1u64 << 40),
            }
        };
        Ok(MigrationParams {
            max_bandwidth: bytes("--max-bandwidth", self.max_bandwidth)?,
            downtime_limit_ms: self.downtime_limit,
            avail_switchover_bandwidth: bytes("--avail-switchover-bandwidth", self.avail_switchover_bandwidth)?,
            timeout_s: self.timeout,
            link: None,
        })
    }
}

/// How migrations are observed.
#[derive(Args, Clone, Debug)]
pub struct MeasureArgs {
    /// Do not load the eBPF programs (no phase timeline from QEMU, no vCPU blackout, no
    /// packet stamps at the taps): QMP events and the ping only. (`--no-probes` before
    /// 2026-12; the probe sender is `--probe-rate`.)
    #[arg(long, alias = "no-probes")]
    pub no_tracing: bool,
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
    /// A silence of the guest longer than this many send intervals (probe, heartbeat or
    /// ping) is an outage: the record's `outages` lists every one, wherever it fell.
    #[arg(long, default_value_t = migtrace::measure::outage::DEFAULT_THRESHOLD_INTERVALS, value_name = "INTERVALS")]
    pub outage_threshold: f64,
}

impl MeasureArgs {
    pub fn options(&self) -> Result<MeasureOptions> {
        if self.ping_interval < 0.0
            || !self.ping_interval.is_finite()
            || (self.ping_interval > 0.0 && self.ping_interval < 2.0)
            || self.ping_interval > 60_000.0
        {
            bail!("--ping-interval must be 0 (off) or from 2 ms (iputils' floor) to 60000 ms");
        }
        if self.probe_rate < 0.0 || self.probe_rate.is_nan() || self.probe_rate > 100_000.0 {
            bail!("--probe-rate must be between 0 (off) and 100000 Hz");
        }
        if self.settle < 0.0
            || !self.settle.is_finite()
            || !self.settle_max.is_finite()
            || self.settle_max < self.settle
            || self.settle_max > MAX_SECONDS
        {
            bail!("--settle must not be negative, and --settle-max not below --settle nor above a week");
        }
        if !(self.outage_threshold.is_finite() && self.outage_threshold >= 1.0 && self.outage_threshold <= 10_000.0) {
            bail!("--outage-threshold must be from 1 to 10000 send intervals");
        }
        Ok(MeasureOptions {
            trace: !self.no_tracing,
            ping_interval: (self.ping_interval > 0.0).then(|| Duration::from_secs_f64(self.ping_interval / 1e3)),
            probe_interval: (self.probe_rate > 0.0).then(|| Duration::from_secs_f64(1.0 / self.probe_rate)),
            settle: Duration::from_secs_f64(self.settle),
            settle_max: Duration::from_secs_f64(self.settle_max),
            keep_trace: self.keep_trace,
            memory_check: (!self.no_memory_check).then(|| Duration::from_secs(5)),
            outage_threshold: self.outage_threshold,
            ..MeasureOptions::default()
        })
    }
}

pub async fn run(args: MigrateArgs) -> Result<()> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let params = args.migration.params()?;
    let mut options = args.measure.options()?;
    let out = args.out.clone().unwrap_or_else(|| {
        let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string().replace(':', "");
        PathBuf::from("results").join(format!("migrate-{stamp}"))
    });
    if args.lab {
        // Root, capabilities, tracefs: refused now rather than after the guest booted.
        migtrace::lab::check_privileges()?;
        if options.trace {
            migtrace::probe::preflight().context("the eBPF tracing (--no-tracing measures without it)")?;
        }
    }
    // One run per output directory; checked to take files before any lab starts.
    let _lock = migtrace::files::DirLock::acquire(&out)?;
    let mut writer = RecordWriter::open(&out)?;
    let warmup = Duration::try_from_secs_f64(args.warmup.max(0.0)).context("--warmup: seconds")?;
    if params.avail_switchover_bandwidth.is_some() && (args.libvirt.is_some() || args.backend == LabBackend::Libvirt) {
        bail!("--avail-switchover-bandwidth: libvirt has no parameter for it (migrate with the QEMU lab: --lab)");
    }
    if let Some(uris) = &args.libvirt {
        let domain = args.domain.clone().unwrap_or_default();
        let hosts = [LibvirtHost::from_uri(&uris[0], "source"), LibvirtHost::from_uri(&uris[1], "destination")];
        let flags = args.libvirt_flags.flags();
        let mut pair = tokio::task::block_in_place(|| LibvirtPair::open(&domain, hosts, flags))?;
        let tracing = match args.agents.agents {
            AgentMode::None => HostTracing::Off,
            AgentMode::Local => HostTracing::Local(pair.hosts.iter().map(|h| (h.name.clone(), None)).collect()),
            AgentMode::Auto => HostTracing::Agents(
                pair.hosts
                    .iter()
                    .zip([&args.agents.agent_source, &args.agents.agent_destination])
                    .map(|(h, cmd)| Ok((h.name.clone(), agent_argv(cmd.as_deref(), h)?)))
                    .collect::<Result<_>>()?,
            ),
        };
        // Without migtrace's guest agent in the domain, nobody answers memory checks.
        if !pair.info().cmdline.as_deref().is_some_and(|c| c.contains("migtrace.workload=")) {
            options.memory_check = None;
        }
        let network = args.guest_ip.map(|ip| Network {
            ns: args.probe_netns.clone(),
            guest: ip,
            taps: Vec::new(),
            link: Vec::new(),
        });
        if network.is_none() {
            options.ping_interval = None;
            options.probe_interval = None;
            options.memory_check = None;
            eprintln!("no --guest-ip: the ping, probe gap and memory check are not measured");
        }
        let agent_opts =
            AgentOptions { domain: domain.clone(), guest_mac: pair.info().mac.clone(), clock_offset_ns: 0 };
        let hosts = start_hosts(&tracing, &agent_opts).await.context("starting the hosts' tracing agents")?;
        let network = network.unwrap_or(Network {
            ns: None,
            guest: std::net::Ipv4Addr::UNSPECIFIED,
            taps: Vec::new(),
            link: Vec::new(),
        });
        let mut session = Session::with_hosts(network, options, hosts);
        tokio::time::sleep(warmup).await;
        let treatment = format!("libvirt:{domain}");
        let result = migrate_n(&mut pair, &mut session, &params, args.count, &treatment, &mut writer).await;
        session.stop().await?;
        return result;
    }
    let config = args.machine.lab_config()?;
    // A knob this QEMU lacks is refused before the guest boots.
    let qemu = migtrace_common::host::qemu::select(config.qemu.as_deref().unwrap_or("system"))?;
    migtrace::lab::check_parameters(&params, Some((qemu.version.major, qemu.version.minor)))?;
    let guest = match config.guest {
        GuestKind::Linux => String::new(),
        g => format!("guest={g},"),
    };
    let treatment = format!("{guest}vmsize={}M,vcpus={},{}", config.vmsize_mib, config.vcpus, config.workload);
    eprintln!(
        "lab: booting a {} MiB, {} vCPU {} guest ({})…",
        config.vmsize_mib, config.vcpus, config.guest, config.workload
    );
    match args.backend {
        LabBackend::Qemu => {
            let mut lab = Lab::up(config).await?;
            eprintln!("lab {} up in {:.1} s ({})", lab.id, lab.boot_time.as_secs_f64(), lab.accel_label());
            let mut session = Session::start(lab.network(), options)
                .context("starting the eBPF tracing (--no-tracing runs without)")?;
            tokio::time::sleep(warmup).await;
            let result = migrate_n(&mut lab, &mut session, &params, args.count, &treatment, &mut writer).await;
            session.stop().await?;
            lab.down().await;
            result
        }
        LabBackend::Libvirt => {
            let mut lab = LibvirtLab::up(config, args.libvirt_flags.flags()).await?;
            eprintln!(
                "libvirt lab {} up in {:.1} s (domain {} on host a, {})",
                lab.id,
                lab.boot_time.as_secs_f64(),
                lab.domain,
                lab.accel
            );
            let tracing = libvirt_lab_tracing(&lab, args.agents.agents)?;
            let agent_opts = AgentOptions {
                domain: lab.domain.clone(),
                guest_mac: Some(lab.guest_mac().into()),
                clock_offset_ns: 0,
            };
            let hosts = match start_hosts(&tracing, &agent_opts).await {
                Ok(h) => h,
                Err(e) => {
                    lab.down().await;
                    return Err(anyhow::Error::new(e).context("starting the hosts' tracing agents"));
                }
            };
            let mut session = Session::with_hosts(lab.network(), options, hosts);
            tokio::time::sleep(warmup).await;
            let result = migrate_n(&mut lab, &mut session, &params, args.count, &treatment, &mut writer).await;
            session.stop().await?;
            lab.down().await;
            result
        }
    }
}

/// How the libvirt lab's hosts are traced: agents in their namespaces by default.
pub fn libvirt_lab_tracing(lab: &LibvirtLab, mode: AgentMode) -> Result<HostTracing> {
    Ok(match mode {
        AgentMode::None => HostTracing::Off,
        AgentMode::Local => HostTracing::Local(
            ["a", "b"].into_iter().zip(lab.host_namespaces()).map(|(h, ns)| (h.to_owned(), Some(ns))).collect(),
        ),
        AgentMode::Auto => {
            let me = std::env::current_exe().context("locating the migtrace binary for the agents")?;
            HostTracing::Agents(
                ["a", "b"].iter().enumerate().map(|(i, h)| ((*h).to_owned(), lab.agent_command(i, &me))).collect(),
            )
        }
    })
}

/// An agent command line: the one given (split like a shell would, run without one), or
/// `ssh HOST migtrace agent` as the host's URI says libvirt logs in there.
fn agent_argv(given: Option<&str>, host: &LibvirtHost) -> Result<Vec<String>> {
    match given {
        Some(cmd) => {
            let argv = shell_words::split(cmd).with_context(|| format!("agent command {cmd:?}"))?;
            if argv.is_empty() {
                bail!("agent command {cmd:?} is empty");
            }
            Ok(argv)
        }
        None => Ok(migtrace::probe::agent::ssh_argv(&host.ssh()?)?),
    }
}

/// `count` measured migrations, ping-pong, each record written as it is taken; stops at
/// the first that does not complete.
async fn migrate_n<P: HostPair>(
    pair: &mut P,
    session: &mut Session,
    params: &MigrationParams,
    count: u32,
    treatment: &str,
    writer: &mut RecordWriter,
) -> Result<()>
where
    P::Error: std::error::Error + Send + Sync + 'static,
{
    for rep in 0..count {
        let record = session.migrate(pair, params, rep, treatment).await?;
        writer.append(&record).context("writing the migration record")?;
        eprintln!("migration {}/{count} {}", rep + 1, summary_line(&record));
        let o = &record.outcome;
        if o.status != Status::Completed {
            bail!(
                "migration {} {:?}: {}; {} record(s) in {}",
                rep + 1,
                o.status,
                o.error.clone().unwrap_or_default(),
                rep + 1,
                writer.path().display()
            );
        }
        if rep + 1 < count {
            pair.prepare_next().await?;
        }
    }
    println!("{count} migration record(s) in {}", writer.path().display());
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
        r.trace_health.as_ref().filter(|h| h.lossy()).map_or(String::new(), |h| {
            let mut lost = vec![format!("{} records lost", h.lost_records)];
            lost.extend(h.diagnostics.iter().filter(|(d, _)| *d != "ip-layout").map(|(d, n)| format!("{d} ×{n}")));
            format!(" ({})", lost.join(", "))
        }),
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
