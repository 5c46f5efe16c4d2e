//! Subcommands, one module each.

mod lab;
pub mod migrate;
mod model;

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
    /// More log output: -v info, -vv debug (the eBPF programs' diagnostics of odd
    /// packets and layouts), -vvv trace. Warnings (e.g. a full eBPF map) always show.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// migtrace's log: `log` records (its own and the eBPF programs', forwarded by aya-log)
/// to stderr, from warnings up by default.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!("{} {}: {}", record.level(), record.target(), record.args());
        }
    }

    fn flush(&self) {}
}

/// Installs the log at the verbosity of `-v`; call before loading eBPF programs (their
/// log level is fixed at load).
pub fn init_log(verbose: u8) {
    static LOG: StderrLog = StderrLog;
    let level = match verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        2 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    if log::set_logger(&LOG).is_ok() {
        log::set_max_level(level);
    }
}

#[derive(Subcommand)]
enum Command {
    /// The embedded two-host lab: up, down, list, clean, image.
    #[command(subcommand)]
    Lab(lab::LabCommand),
    /// Migrate a VM back and forth N times and write one JSON record per migration.
    ///
    /// Every migration is measured every way: the paper's ping (50 ms by default),
    /// migtrace's probe sender timed at the taps, the vCPU blackout and the phase
    /// timeline from eBPF probes, and QEMU's own figures. In the lab the migration
    /// stream crosses a link between the hosts shaped to --link (1gbit by default).
    ///
    /// Example: migtrace migrate --lab --count 5 --workload wset=64M,rate=2000 --out results/try
    /// Example: migtrace migrate --lab --link 100mbit --count 3 --workload wset=16M,rate=1000
    Migrate(Box<migrate::MigrateArgs>),
    /// Run (or resume) an experiment: a spec of factors and levels, many migrations.
    ///
    /// Results go to RESULTS/<name>/: the records, summaries, Table II, and report.html
    /// with its figures in plots/ (also after each treatment while that is cheap). On a
    /// terminal a bar shows the current treatment and the last migration's downtime;
    /// otherwise (CI, a log file, `| tee`) one line per treatment and per migration with
    /// its key figures and the ETA.
    ///
    /// Example: migtrace run specs/default.toml
    Run(RunArgs),
    /// Recompute an experiment's summaries and print Table II; --html: also report.html
    ///
    /// With --html also writes DIR/report.html and every figure as DIR/plots/*.svg.
    ///
    /// Examples:
    ///   migtrace report results/default
    ///   migtrace report results/default --html
    #[command(verbatim_doc_comment)]
    Report {
        /// An experiment directory (results/<name>).
        dir: PathBuf,
        /// Also write report.html (one self-contained page: inline SVG, no scripts, no
        /// network) and plots/*.svg.
        #[arg(long)]
        html: bool,
    },
    /// Print the phase timeline of recorded migrations, or write it for Perfetto
    ///
    /// As tables, or with --perfetto as a trace for ui.perfetto.dev and chrome://tracing.
    ///
    /// Examples:
    ///   migtrace timeline results/try --rep 2
    ///   migtrace timeline results/try --perfetto try.json
    ///   migtrace timeline results/default --treatment rate=2000 --perfetto rate2000.json
    ///   migtrace timeline results/default --perfetto traces/   (one file per treatment)
    #[command(verbatim_doc_comment)]
    Timeline {
        /// A records file (`migrations.jsonl`) or a directory holding one.
        records: PathBuf,
        /// Only the migration with this repetition number (default: all).
        #[arg(long)]
        rep: Option<u32>,
        /// Only migrations of treatments containing this text.
        #[arg(long)]
        treatment: Option<String>,
        /// Write the chosen migrations, one after another, as Trace Event Format JSON to
        /// FILE (they must be of one treatment), or one file per treatment into an
        /// existing directory (or a path ending in /). vCPU tracks, packets and probe
        /// points need records taken with --keep-trace.
        #[arg(long, value_name = "FILE.json")]
        perfetto: Option<PathBuf>,
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
    /// The pre-copy model: fit it on an experiment's traces, validate it on held-out
    /// treatments.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Predict a migration before running it: migration time, rounds, QEMU downtime,
    /// vCPU blackout and guest-observed downtime, with an interval from the model's
    /// held-out errors. The VM is described (--vmsize --wset --rate) or measured
    /// while it runs, without migrating it (--lab: QEMU's calc-dirty-rate; --libvirt
    /// --domain: libvirt's dirty-rate calculation).
    ///
    /// Examples:
    ///   migtrace predict --model results/model-validation --vmsize 512 --wset 96 --rate 10000
    ///   migtrace predict --model results/model-validation --vmsize 1024 --wset 256 --rate 20000 \
    ///       --bandwidth 256 --downtime-limit 100
    ///   migtrace predict --model results/model-validation --lab 3fa2c1
    ///   migtrace predict --model model.json --libvirt qemu+ssh://h1/system --domain web1
    #[command(verbatim_doc_comment)]
    Predict(Box<model::PredictArgs>),
    /// Trace this hypervisor host for one domain and answer a coordinating migtrace on
    /// stdin and stdout (JSON lines); started by `migrate --libvirt` on each host.
    ///
    /// Example: ssh host1 migtrace agent --domain web1 --mac 52:54:00:12:34:56
    Agent {
        /// The libvirt domain whose QEMU (and tap) to trace on this host.
        #[arg(long)]
        domain: String,
        /// The guest's MAC: its tap on this host is found by it (no packet stamps without).
        #[arg(long)]
        mac: Option<String>,
        /// Test only: report every stamp this much later, as if this host's clock were off.
        #[arg(long, default_value_t = 0, hide = true, allow_hyphen_values = true)]
        clock_offset_ns: i64,
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
        Command::Migrate(args) => migrate::run(*args).await,
        Command::Run(args) => run_experiment(args).await,
        Command::Model(cmd) => model::run(cmd),
        Command::Predict(args) => model::predict(*args).await,
        Command::Report { dir, html } => {
            let text = std::fs::read_to_string(dir.join("spec.toml"))
                .map_err(|e| anyhow::anyhow!("{}: not an experiment directory ({e})", dir.display()))?;
            let spec = migtrace::experiment::spec::ExperimentSpec::parse(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join("spec.toml").display()))?;
            let root = dir.parent().map(PathBuf::from).unwrap_or_default();
            let store = migtrace::experiment::store::Store::open(&root, &spec, &text, false)?;
            let summary = store.write_summaries(&spec)?;
            migtrace::report::pages::write_text(&store, &spec, &summary)?;
            print!("{}", migtrace::report::experiment::render(&spec.raw.name, &summary));
            if html {
                let w = migtrace::report::pages::write_html(&store, &spec, &summary)?;
                println!("{} ({} figures, each also in {})", w.html.display(), w.figures, w.plots.display());
            }
            println!("results in {}", store.dir.display());
            Ok(())
        }
        Command::Timeline { records, rep, treatment, perfetto } => {
            let all = migtrace::measure::record::read(&records)?;
            let chosen: Vec<_> = all
                .iter()
                .filter(|r| rep.is_none_or(|n| r.repetition == n))
                .filter(|r| treatment.as_deref().is_none_or(|t| r.treatment.contains(t)))
                .collect();
            if chosen.is_empty() {
                anyhow::bail!("no migration in {} matches (it holds {} records)", records.display(), all.len());
            }
            match perfetto {
                Some(path) => write_perfetto(&path, &chosen),
                None => {
                    for r in chosen {
                        println!("{}", migtrace::report::timeline::render(r));
                    }
                    Ok(())
                }
            }
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
        Command::Agent { domain, mac, clock_offset_ns } => {
            let opts = migtrace::probe::agent::AgentOptions { domain, guest_mac: mac, clock_offset_ns };
            migtrace::probe::agent::serve(opts).await?;
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

/// `timeline --perfetto`: one trace file of the chosen migrations (one treatment), or one
/// per treatment into a directory.
fn write_perfetto(path: &std::path::Path, chosen: &[&migtrace::measure::record::MigrationRecord]) -> Result<()> {
    use migtrace::report::perfetto;
    let mut groups: Vec<(&str, Vec<&migtrace::measure::record::MigrationRecord>)> = Vec::new();
    for r in chosen {
        match groups.iter_mut().find(|(t, _)| *t == r.treatment) {
            Some(g) => g.1.push(r),
            None => groups.push((&r.treatment, vec![r])),
        }
    }
    let into_dir = path.is_dir() || path.as_os_str().to_string_lossy().ends_with('/');
    if groups.len() > 1 && !into_dir {
        let names: Vec<&str> = groups.iter().map(|g| g.0).collect();
        anyhow::bail!(
            "the chosen migrations are of {} treatments ({}): pick one with --treatment, or give a directory to \
             write one file per treatment",
            groups.len(),
            names.join("; ")
        );
    }
    if into_dir {
        migtrace::files::create_dir(path).map_err(|e| anyhow::anyhow!("creating {}: {e}", path.display()))?;
    }
    let mut notes = 0;
    for (treatment, records) in &groups {
        let out = if into_dir {
            let slug: String = treatment
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
                .collect();
            path.join(format!("{slug}.json"))
        } else {
            path.to_owned()
        };
        let export = perfetto::export(records);
        let text = serde_json::to_string(&export.json)?;
        migtrace::files::write_atomic(&out, text.as_bytes())
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", out.display()))?;
        eprintln!(
            "{}: {} migration(s) of {treatment}, {} trace events; open it in ui.perfetto.dev or chrome://tracing",
            out.display(),
            records.len(),
            export.events
        );
        for n in export.notes.iter().take(3) {
            eprintln!("  note: {n}");
        }
        notes += export.notes.len().saturating_sub(3);
    }
    if notes > 0 {
        eprintln!("  ({notes} more notes in the files' otherData.notes)");
    }
    Ok(())
}

/// The default experiment of `cargo xtask run`.
const DEFAULT_SPEC: &str = include_str!("../../../specs/default.toml");

#[derive(Args)]
pub struct RunArgs {
    /// The experiment spec (TOML); see specs/ for examples.
    #[arg(required_unless_present = "default")]
    spec: Option<PathBuf>,
    /// Run the built-in default experiment (specs/default.toml).
    #[arg(long, conflicts_with = "spec")]
    default: bool,
    /// Where experiment directories go.
    #[arg(long, default_value = "results", value_name = "DIR")]
    results: PathBuf,
    /// Start over if the spec changed since the results were started (old results are
    /// moved aside, not deleted).
    #[arg(long)]
    force_new: bool,
    /// Override the spec's repetitions per treatment (quick runs, tests).
    #[arg(long, value_name = "N")]
    repetitions: Option<u32>,
    /// Override the spec's name (and so its results directory).
    #[arg(long)]
    name: Option<String>,
}

async fn run_experiment(args: RunArgs) -> Result<()> {
    use migtrace::experiment::{runner, spec::ExperimentSpec};
    let (text, origin) = match &args.spec {
        Some(path) => (
            std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?,
            path.display().to_string(),
        ),
        None => (DEFAULT_SPEC.to_owned(), "the default spec".to_owned()),
    };
    let mut spec = ExperimentSpec::parse(&text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    let mut text = text;
    if args.repetitions.is_some() || args.name.is_some() {
        let mut raw = spec.raw.clone();
        if let Some(n) = args.repetitions {
            raw.repetitions = n;
        }
        if let Some(name) = &args.name {
            raw.name = name.clone();
        }
        text = toml::to_string(&raw)?;
        spec = ExperimentSpec::from_raw(raw)?;
    }
    let treatments = migtrace::experiment::design::expand(&spec).len();
    eprintln!(
        "experiment {}: {treatments} treatments × {} repetitions = {} migrations",
        spec.raw.name,
        spec.raw.repetitions,
        treatments * spec.raw.repetitions as usize
    );
    let report = runner::run(
        &spec,
        &text,
        &runner::RunOptions { results: args.results.clone(), force_new: args.force_new, migtrace: None },
        &migtrace::report::pages::Pages,
    )
    .await?;
    print!("{}", migtrace::report::experiment::render(&spec.raw.name, &report.summary));
    println!(
        "{} migrations run, {} already recorded; results in {} (migrations.jsonl, summary.json, treatments.csv, migrations.csv, report.txt, report.html, plots/)",
        report.ran,
        report.skipped,
        report.dir.display()
    );
    match (&report.html, &report.html_error) {
        (Some(html), _) => println!("report: {}", html.display()),
        (None, Some(e)) => eprintln!("warning: report.html was not written: {e}"),
        (None, None) => {}
    }
    Ok(())
}

/// An error and its causes on one line. Most of migtrace's errors already print their
/// source in their own message: a cause the line holds already is not repeated.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
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

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum GuestArg {
    /// Linux with the workloads agent, on the lab's network (every measure).
    #[default]
    Linux,
    /// migtrace's bare-metal guest: runs under KVM also on kvm_pvm hosts; no network,
    /// so no ping or probe gap, but heartbeats on its serial port.
    Minimal,
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
    /// What the lab boots. `minimal` is migtrace's bare-metal guest (dirty pattern,
    /// memory check and heartbeats over its serial port, no network): it runs under KVM
    /// where Linux cannot (kvm_pvm). Example: --guest minimal --workload wset=64M,rate=5000,fill=1
    #[arg(long, value_enum, default_value_t = GuestArg::Linux)]
    pub guest: GuestArg,
    /// Accelerator; default: kvm when the guest can run under this host's KVM (Linux:
    /// hardware virtualisation; minimal: also kvm_pvm), else tcg.
    #[arg(long)]
    pub accel: Option<AccelArg>,
    /// Guest kernel (bzImage with virtio-pci and virtio-net built in). Default: the host's
    /// kernel if usable, else Debian's cloud kernel (downloaded and cached).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Give up if the guest is not up after this many seconds.
    #[arg(long, default_value_t = 90, value_name = "SECONDS")]
    pub boot_timeout: u64,
    /// QEMU build for both hosts: `system` (qemu-system-x86_64 on PATH), a version such
    /// as `10.0` (the system's or one `cargo xtask setup` cached), or a path to a binary.
    /// Default: the system's (the libvirt lab under TCG prefers a cached build without
    /// QEMU < 9.0's lost-dirty-page bug).
    #[arg(long, value_name = "QEMU")]
    pub qemu: Option<String>,
    /// KVM dirty ring of this many entries per vCPU instead of dirty bitmaps (QEMU's
    /// `dirty-ring-size`, a power of two): every dirtied page is counted per round.
    #[arg(long, value_name = "ENTRIES")]
    pub dirty_ring: Option<u32>,
    /// Do not apply the TCG dirty-page workaround on QEMU < 9.0 (guest RAM VMSIZE + 8 KiB):
    /// reproduces QEMU's lost-dirty-page bug (guests crash or their memory check fails).
    #[arg(long)]
    pub no_tcg_dirty_workaround: bool,
    /// The link between the lab's two hosts, which carries the migration stream, in tc's
    /// rate syntax: `100mbit`, `1gbit` (the paper's 1 GbE), `10gbit`, or `unlimited`
    /// (no shaping: the hosts' veth at memory speed). Shaped with the kernel's tbf on
    /// both ends; the guest's own network is not shaped.
    #[arg(long, default_value = "1gbit", value_name = "RATE", allow_hyphen_values = true)]
    pub link: migtrace::hypervisor::link::LinkRate,
    /// One-way delay added on the link in each direction, ms (RTT + 2×). Needs the
    /// kernel's netem qdisc (sch_netem); a kernel without it refuses, and migtrace adds
    /// no delay of its own.
    #[arg(long, value_name = "MS")]
    pub link_delay: Option<f64>,
}

impl MachineArgs {
    pub fn lab_config(&self) -> Result<migtrace::lab::LabConfig> {
        let workload = workloads::spec::Spec::parse(&self.workload)
            .map_err(|e| anyhow::anyhow!("--workload {:?}: {e}", self.workload))?;
        let accel = self.accel.map(|a| match a {
            AccelArg::Kvm => Accel::Kvm,
            AccelArg::Tcg => Accel::Tcg { reason: "--accel tcg".into() },
        });
        let guest = match self.guest {
            GuestArg::Linux => migtrace::lab::GuestKind::Linux,
            GuestArg::Minimal => migtrace::lab::GuestKind::Minimal,
        };
        if matches!(accel, Some(Accel::Kvm)) {
            match (guest, host::detect_accel(), host::kvm_flavour()) {
                (_, Accel::Kvm, _) | (migtrace::lab::GuestKind::Minimal, _, Ok(_)) => {}
                (migtrace::lab::GuestKind::Linux, Accel::Tcg { reason }, Ok(_)) => anyhow::bail!(
                    "--accel kvm, but this host's KVM cannot run the Linux guest: {reason} (--guest minimal runs under it)"
                ),
                (_, Accel::Tcg { reason }, _) => anyhow::bail!("--accel kvm, but KVM is not usable here: {reason}"),
            }
        }
        Ok(migtrace::lab::LabConfig {
            vmsize_mib: self.vmsize,
            vcpus: self.vcpus,
            accel,
            workload,
            kernel: self.kernel.clone(),
            boot_timeout: std::time::Duration::from_secs(self.boot_timeout),
            qemu: self.qemu.clone(),
            tcg_dirty_workaround: !self.no_tcg_dirty_workaround,
            guest,
            dirty_ring: self.dirty_ring,
            link: self.link_config()?,
        })
    }

    fn link_config(&self) -> Result<migtrace::hypervisor::link::LinkConfig> {
        if let Some(ms) = self.link_delay
            && !(ms.is_finite() && ms > 0.0 && ms <= 10_000.0)
        {
            anyhow::bail!("--link-delay {ms}: a one-way delay in ms, more than 0 and at most 10000");
        }
        Ok(migtrace::hypervisor::link::LinkConfig { rate: self.link, delay_ms: self.link_delay, shaper: String::new() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_line_says_each_cause_once() {
        let io = std::io::Error::from_raw_os_error(libc::ENOENT);
        let store = migtrace::experiment::store::StoreError::Io { path: "r/x".into(), source: io };
        let e = anyhow::Error::new(store).context("opening the results");
        assert_eq!(error_line(&e), "opening the results: r/x: No such file or directory (os error 2)");
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_line(&e), "outer: inner");
    }
}
