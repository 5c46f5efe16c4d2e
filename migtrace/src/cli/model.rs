//! `migtrace model fit|validate` and `migtrace predict`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use migtrace::{
    hypervisor::link::LinkRate,
    model::{
        self, MODEL_FILE, Manager, Measure, Model, RateKind, Variant, Vm, dirty_rate, fit, plot, precopy::Prediction,
        validate,
    },
};

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Fit the pre-copy model on an experiment's traced migrations and write
    /// DIR/model.json (parameters, and each variant's held-out errors for intervals).
    ///
    /// Example: migtrace model fit results/model-validation
    Fit {
        /// An experiment directory (or any directory with a migrations.jsonl).
        dir: PathBuf,
        /// Where to write the model (default: DIR/model.json).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Leave-one-treatment-out cross-validation: per measure the median and 90th
    /// percentile absolute percentage error of both variants and of the variant chosen
    /// within each fold, beside the noise floor.
    /// Writes DIR/validation.json and DIR/validation.svg (predicted against measured);
    /// `migtrace report DIR --html` then shows both in report.html.
    ///
    /// Example: migtrace model validate results/model-validation
    Validate {
        /// An experiment directory with at least 2 treatments.
        dir: PathBuf,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: ModelCommand) -> Result<()> {
    match cmd {
        ModelCommand::Fit { dir, out } => {
            let obs = observations(&dir)?;
            let params = fit::fit(&obs)?;
            // One treatment cannot be left out: a model without intervals. Any other
            // failure of the cross-validation is said as it is (the model is still
            // written, without intervals, and the command fails).
            let (validation, failure) = match validate::cross_validate(&obs) {
                Ok(v) => (Some(v), None),
                Err(model::ModelError::TooFewTreatments(_)) => (None, None),
                Err(e) => (None, Some(e)),
            };
            let (errors, preferred) = match &validation {
                Some(v) => (v.errors.clone(), v.preferred),
                None => (Default::default(), Variant::Simulation),
            };
            let m = Model {
                schema: model::MODEL_SCHEMA,
                fitted_on: fit::provenance(&dir.display().to_string(), &obs),
                params,
                errors,
                preferred,
            };
            let path = out.unwrap_or_else(|| dir.join(MODEL_FILE));
            m.save(&path)?;
            print_params(&m);
            println!("model written to {} (variant used by predict: {})", path.display(), m.preferred.name());
            match failure {
                Some(e) => bail!("no held-out errors, so predictions carry no interval: cross-validation failed: {e}"),
                None if validation.is_none() => {
                    println!("(one treatment only: no held-out errors, so predictions carry no interval)");
                    Ok(())
                }
                None => Ok(()),
            }
        }
        ModelCommand::Validate { dir, json } => {
            let obs = observations(&dir)?;
            let v = validate::cross_validate(&obs)?;
            let json_path = dir.join(validate::VALIDATION_FILE);
            migtrace::files::write_atomic(&json_path, (serde_json::to_string_pretty(&v)? + "\n").as_bytes())
                .with_context(|| format!("writing {}", json_path.display()))?;
            let svg_path = dir.join(validate::VALIDATION_SVG);
            migtrace::files::write_atomic(&svg_path, plot::plot_svg(&v.points)?.as_bytes())
                .with_context(|| format!("writing {}", svg_path.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", validate::render(&v));
                println!("written: {} and {}", json_path.display(), svg_path.display());
                if dir.join(migtrace::report::html::REPORT_FILE).exists() {
                    println!(
                        "{} predates this validation: `migtrace report {} --html` adds its plot",
                        migtrace::report::html::REPORT_FILE,
                        dir.display()
                    );
                }
            }
            Ok(())
        }
    }
}

fn observations(dir: &Path) -> Result<Vec<fit::Observation>> {
    let records = migtrace::measure::record::read(dir).with_context(|| {
        format!("{}: no migration records (an experiment directory from `migtrace run`)", dir.display())
    })?;
    let (obs, skipped) = fit::observations(&records);
    if !skipped.is_empty() {
        eprintln!("left out {} of {} migrations:", skipped.len(), records.len());
        for s in skipped.iter().take(10) {
            eprintln!("  {s}");
        }
    }
    if obs.is_empty() {
        bail!("{}: none of its {} migrations is usable with a traced timeline", dir.display(), records.len());
    }
    Ok(obs)
}

fn print_params(m: &Model) {
    let p = &m.params;
    let f = &m.fitted_on;
    println!(
        "fitted on {} migrations of {} treatments ({}) in {}",
        f.migrations,
        f.treatments,
        f.machines.join(", "),
        f.records
    );
    let times = |e: Option<f64>, of: &str| {
        e.map_or_else(|| format!("not fitted (no migration bounded by {of})"), |e| format!("{e:.3} × {of}"))
    };
    println!("  pre-copy bandwidth      {}", times(p.bandwidth_efficiency, "max-bandwidth"));
    println!("                          {}", times(p.link_efficiency, "the link's rate"));
    match p.stop_copy_bandwidth {
        Some(b) => println!(
            "  stop-and-copy           {:.1} ms + bytes at {:.0} MB/s (unshaped link, not rate-limited)",
            p.stop_copy_fixed_ms,
            b / 1e6
        ),
        None => println!("  stop-and-copy           not fitted over an unshaped link"),
    }
    if let Some(e) = p.stop_copy_link_efficiency {
        println!(
            "                          {:.1} ms + bytes at {e:.3} × the link's rate (shaped link); {:.2} MB still in \
             the link at the source's last write",
            p.stop_copy_link_fixed_ms,
            p.link_drain_bytes.unwrap_or(0.0) / 1e6
        );
    }
    println!("  setup                   {:.1} ms + {:.1} ms per GiB of RAM", p.setup_ms.intercept, p.setup_ms.slope);
    println!(
        "  round 1 besides wset    {:.1} MB + {:.3} × RAM (bytes at the pre-copy bandwidth)",
        p.first_round_extra_bytes.intercept / 1e6,
        p.first_round_extra_bytes.slope
    );
    println!("  round 1 leftover        {:.1} MB", p.first_round_leftover_bytes / 1e6);
    println!(
        "  dirty rate              {:.3} × the workload's + {:.0} pages/s background",
        p.dirty_rate_efficiency, p.background_dirty_pps
    );
    println!("  sync, switchover        {:.2} ms, {:.1} ms", p.sync_ms, p.switchover_ms);
    println!("  destination load/resume {:.1} ms / {:.1} ms", p.destination_load_ms, p.resume_ms);
    println!(
        "  first guest packet      {:.1} ms + {:.3} × blackout; probe edges {:.1} ms",
        p.reconvergence_ms.intercept, p.reconvergence_ms.slope, p.probe_edge_ms
    );
    for (variant, bands) in &m.errors {
        let e = |m: Measure| bands.get(&m).map_or("-".into(), |b| format!("{:.1} %", b.median_ape));
        println!(
            "  held out, {:<11}   median APE: migration time {}, QEMU downtime {}, guest-observed {}",
            variant.name(),
            e(Measure::MigrationTime),
            e(Measure::QemuDowntime),
            e(Measure::GuestDowntime)
        );
    }
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("source").args(["vmsize", "lab", "libvirt"]).required(true)))]
pub struct PredictArgs {
    /// The model: a `model.json` or the experiment directory holding one.
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// Guest RAM, MiB.
    #[arg(long, value_name = "MIB", requires = "rate")]
    vmsize: Option<f64>,
    /// Working set the workload dirties, MiB (default: none).
    #[arg(long, value_name = "MIB")]
    wset: Option<f64>,
    /// The workload's dirty rate, pages per second.
    #[arg(long, value_name = "PAGES_PER_S")]
    rate: Option<f64>,
    /// Migration bandwidth limit, MiB/s (default: QEMU's 128; with --libvirt unlimited,
    /// libvirt's default, and a limit in whole MiB/s as libvirt sets it).
    #[arg(long, value_name = "MIB_PER_S")]
    bandwidth: Option<f64>,
    /// Downtime limit, ms (default: QEMU's 300).
    #[arg(long, value_name = "MS")]
    downtime_limit: Option<f64>,
    /// The link between the hosts, in tc's syntax (`1gbit`, `100mbit`, `unlimited`)
    /// (default: the link the model was fitted over, if it was fitted over one).
    #[arg(long, value_name = "RATE")]
    link: Option<LinkRate>,
    /// Measure the guest of this running lab (`migtrace lab up`; see `lab list`) with
    /// QEMU's calc-dirty-rate, without migrating it.
    #[arg(long, value_name = "LAB_ID")]
    lab: Option<String>,
    /// Measure a running libvirt domain (with --domain) with libvirt's dirty-rate
    /// calculation, without migrating it.
    #[arg(long, value_name = "URI", requires = "domain")]
    libvirt: Option<String>,
    /// The libvirt domain.
    #[arg(long, value_name = "NAME")]
    domain: Option<String>,
    /// Dirty-rate calculation periods, seconds: the shortest gives the rate, a longer
    /// one the working set when it finds all of it.
    #[arg(long, value_name = "S,S", value_delimiter = ',', default_values_t = [1u64, 3])]
    calc_time: Vec<u64>,
    /// Model variant (default: the one with the smaller held-out errors).
    #[arg(long, value_enum)]
    variant: Option<Variant>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub async fn predict(args: PredictArgs) -> Result<()> {
    let m = Model::load(&args.model)?;
    let mib = 1048576.0;
    let link = args.link.or(m.fitted_on.link()).unwrap_or(LinkRate::Unlimited);
    let manager = if args.libvirt.is_some() { Manager::Libvirt } else { Manager::Qemu };
    let settings = |vm: Vm| Vm {
        max_bandwidth: args.bandwidth.map(|b| b * mib),
        downtime_limit_ms: args.downtime_limit,
        manager,
        link,
        ..vm
    };
    let (vm, measured) = if let Some(vmsize) = args.vmsize {
        let vm = Vm {
            vmsize_bytes: vmsize * mib,
            wset_bytes: args.wset.unwrap_or(0.0) * mib,
            rate_pps: args.rate.unwrap_or(0.0),
            rate_kind: RateKind::Workload,
            max_bandwidth: None,
            downtime_limit_ms: None,
            manager,
            link,
        };
        (settings(vm), None)
    } else {
        if args.calc_time.is_empty() || args.calc_time.contains(&0) {
            bail!("--calc-time takes whole seconds, at least 1 (e.g. --calc-time 1,3)");
        }
        let (samples, ram) = if let Some(id) = &args.lab {
            let socket = lab_source_qmp(id)?;
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            let qmp = migtrace::hypervisor::qmp::Qmp::connect(&socket, deadline)
                .await
                .with_context(|| format!("lab {id}: its QEMU's QMP socket {}", socket.display()))?;
            let ram = dirty_rate::qmp_ram_bytes(&qmp).await?;
            (dirty_rate::measure_qmp(&qmp, &args.calc_time).await?, ram)
        } else {
            let (uri, domain) = (args.libvirt.clone().unwrap_or_default(), args.domain.clone().unwrap_or_default());
            let periods = args.calc_time.clone();
            tokio::task::spawn_blocking(move || dirty_rate::measure_libvirt(&uri, &domain, &periods)).await??
        };
        let est = dirty_rate::estimate(samples, ram).context("no dirty-rate sample")?;
        let vm = Vm {
            vmsize_bytes: ram,
            wset_bytes: args.wset.map_or(est.wset_bytes, |w| w * mib),
            rate_pps: est.rate_pps,
            rate_kind: RateKind::Measured,
            max_bandwidth: None,
            downtime_limit_ms: None,
            manager,
            link,
        };
        (settings(vm), Some(est))
    };
    vm.check()?;
    let variant = args.variant.unwrap_or(m.preferred);
    let p = model::predict(&m.params, &vm, variant)?;
    if args.json {
        let interval = |measure: Measure| m.interval(variant, measure, measure.of(&p));
        let out = serde_json::json!({
            "vm": vm,
            "dirty_rate": measured,
            "prediction": p,
            "interval_80": {
                "migration_time_ms": interval(Measure::MigrationTime),
                "qemu_downtime_ms": interval(Measure::QemuDowntime),
                "blackout_ms": interval(Measure::Blackout),
                "guest_downtime_ms": interval(Measure::GuestDowntime),
            },
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if let Some(est) = &measured {
        let samples: Vec<String> = est
            .samples
            .iter()
            .map(|s| format!("{:.0} s: {:.0} MiB/s ({:.0} pages)", s.calc_time_s, s.mib_per_s, s.pages()))
            .collect();
        println!(
            "dirty rate measured ({}): {}",
            est.samples.first().map_or("", |s| s.mode.as_str()),
            samples.join(", ")
        );
        println!(
            "  → {:.0} pages/s, working set {}",
            est.rate_pps,
            if est.wset_bounded {
                format!("{:.1} MiB (all of it dirtied within the longer period)", est.wset_bytes / mib)
            } else {
                "not bounded within the longer period: taken as all of RAM (--wset overrides)".into()
            }
        );
    }
    render(&m, &vm, &p);
    Ok(())
}

/// The QMP socket of the QEMU running a lab's guest, from the lab's registry entry.
fn lab_source_qmp(id: &str) -> Result<PathBuf> {
    let labs = migtrace::lab::registry::list();
    let Some(state) = labs.iter().find(|s| s.id == id) else {
        let ids: Vec<&str> = labs.iter().map(|s| s.id.as_str()).collect();
        bail!("no lab {id} on this host (running: {}); start one with `migtrace lab up`", ids.join(", "));
    };
    state.source_qmp.clone().ok_or_else(|| {
        anyhow::anyhow!("lab {id} registers no QMP socket for other clients (a libvirt lab, or an older migtrace): use --libvirt for a libvirt domain")
    })
}

fn render(m: &Model, vm: &Vm, p: &Prediction) {
    let mib = 1048576.0;
    println!(
        "model {} ({}, fitted on {} migrations of {} treatments: {})",
        m.fitted_on.records,
        p.variant.name(),
        m.fitted_on.migrations,
        m.fitted_on.treatments,
        m.fitted_on.machines.join(", ")
    );
    println!(
        "VM: {:.0} MiB RAM, working set {:.1} MiB dirtied at {:.0} pages/s ({}); max-bandwidth {}, downtime limit {:.0} ms, link {}",
        vm.vmsize_bytes / mib,
        vm.wset_bytes / mib,
        vm.rate_pps,
        match vm.rate_kind {
            RateKind::Workload => "the workload's setting",
            RateKind::Measured => "measured on the running guest",
        },
        vm.bandwidth_limit()
            .map_or_else(|| "unlimited (libvirt's default)".into(), |b| format!("{:.0} MiB/s", b / mib)),
        vm.downtime_limit_ms(),
        vm.link
    );
    let rounds: Vec<String> = p.precopy_rounds.iter().map(|r| format!("{:.0}", r.duration_ms)).collect();
    println!(
        "pre-copy at {:.1} MB/s, stop threshold {:.1} MB: rounds {} ms, then {:.1} MB copied with the VM stopped",
        p.bandwidth_bytes_per_s / 1e6,
        p.threshold_bytes / 1e6,
        rounds.join(" + "),
        p.stop_copy_bytes / 1e6
    );
    for a in &p.assumed {
        println!("assumed: {a}");
    }
    if !p.converges {
        println!(
            "DOES NOT CONVERGE: the guest dirties faster than the link drains; QEMU would pre-copy until cancelled \
             (raise --bandwidth or --downtime-limit, or slow the guest)"
        );
    }
    let line = |label: &str, measure: Measure, value: f64, unit: &str| {
        let interval = m
            .interval(p.variant, measure, value)
            .map_or_else(String::new, |(lo, hi)| format!("   [{lo:.0} … {hi:.0}] (80 % of held-out migrations)"));
        println!("  {label:<28}{value:>9.0} {unit}{interval}");
    };
    line("migration time", Measure::MigrationTime, p.migration_time_ms, "ms");
    line("rounds (dirty syncs)", Measure::Rounds, p.rounds as f64, "  ");
    line("QEMU downtime", Measure::QemuDowntime, p.qemu_downtime_ms, "ms");
    line("vCPU blackout", Measure::Blackout, p.blackout_ms, "ms");
    line("guest-observed downtime", Measure::GuestDowntime, p.guest_downtime_ms, "ms");
}
