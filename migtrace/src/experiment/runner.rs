//! Runs an experiment: one lab per treatment (or per block of its repetitions, see
//! [`design::plan`]; one pair of libvirt hosts for all), its repetitions as ping-pong
//! migrations, every record appended durably as it finishes, summaries after every boot, and the pages people read through the
//! [`PageWriter`] its caller passes (the report layer draws them).

use std::{
    io::IsTerminal as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressStyle};

use super::{
    design::{self, Treatment},
    spec::{Backend, ExperimentSpec, SpecError},
    store::{Store, StoreError},
    testbed::{self, Testbed, TestbedError},
};
use crate::{
    hypervisor::{HostPair, Status},
    measure::{
        record::{MigrationRecord, RecordError},
        session::{MeasureOptions, Session, SessionError},
    },
    probe::tracer::TraceError,
    stats::ExperimentSummary,
};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("treatment {treatment}: {source}")]
    Testbed {
        treatment: String,
        #[source]
        source: TestbedError,
    },
    #[error("treatment {treatment}: {source}")]
    Agent {
        treatment: String,
        #[source]
        source: crate::probe::agent::AgentError,
    },
    #[error("treatment {treatment}: starting the eBPF tracing: {source}")]
    Trace {
        treatment: String,
        #[source]
        source: TraceError,
    },
    #[error("{0}")]
    Lab(#[from] crate::lab::LabError),
    #[error("{0} (or set `probes = false` under [measure])")]
    Probes(#[from] crate::probe::ProbeError),
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Where experiments keep their directories (`results/`).
    pub results: PathBuf,
    /// Start over when the spec changed (old results are moved aside).
    pub force_new: bool,
    /// The migtrace binary tracing agents run as; default this executable.
    pub migtrace: Option<PathBuf>,
}

/// What a run did.
pub struct RunReport {
    pub dir: PathBuf,
    pub ran: usize,
    pub skipped: usize,
    pub summary: ExperimentSummary,
    /// `report.html`, unless writing it failed (the reason is in `html_error`).
    pub html: Option<PathBuf>,
    pub html_error: Option<String>,
}

/// The pages a run keeps current in its directory (`report.txt`, `report.html`): drawn
/// by the report layer, handed in by the caller, so the experiment does not depend on how
/// its results are shown.
pub trait PageWriter {
    /// After every treatment, with the summaries (cheap).
    fn text(&self, store: &Store, spec: &ExperimentSpec, summary: &ExperimentSummary) -> Result<(), StoreError>;
    /// After a treatment when it is cheap next to the treatment, and at the end: where
    /// the page went. A failure does not stop the run.
    fn page(
        &self,
        store: &Store,
        spec: &ExperimentSpec,
        summary: &ExperimentSummary,
    ) -> Result<PathBuf, Box<dyn std::error::Error + Send + Sync>>;
}

/// `12.3` or `-`.
fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

/// The key figures of one migration, for a progress line.
pub fn key_figures(r: &MigrationRecord) -> String {
    if crate::measure::quality::category(r) == crate::measure::quality::Category::DidNotConverge {
        return format!(
            "did not converge: pre-copy still running when cancelled after {:.0} s (the guest dirties memory faster than \
             the link drains it)",
            r.params.timeout_s
        );
    }
    if r.outcome.status != Status::Completed {
        return format!(
            "{}: {}",
            format!("{:?}", r.outcome.status).to_lowercase(),
            r.outcome.error.clone().unwrap_or_default()
        );
    }
    let d = &r.downtime_ms;
    let health = match crate::measure::quality::category(r) {
        crate::measure::quality::Category::Usable => String::new(),
        crate::measure::quality::Category::Censored => format!(
            " [censored: the guest answered again only after observation ended; probe gap ≥ {} ms, counted as such]",
            ms(r.probe.as_ref().and_then(|p| p.open_gap_ms))
        ),
        other => format!(
            " [{}: excluded from statistics]",
            serde_json::to_value(other).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
        ),
    };
    format!(
        "downtime ms probe gap {} | ping {} | vCPU {} | QEMU {}; migration {} ms{health}",
        ms(d.probe_gap),
        ms(d.ping),
        ms(d.vcpu),
        ms(d.reported),
        ms(r.migration_time_ms.command)
    )
}

/// Progress a person can follow: an indicatif bar on a terminal (the current treatment
/// and the last migration's downtime), else one line per treatment and per repetition
/// with its key figures and the ETA (CI logs, `| tee`).
struct Progress {
    bar: ProgressBar,
    plain: bool,
    started: Instant,
    total: usize,
    done: usize,
}

impl Progress {
    fn new(total: usize) -> Self {
        let plain = !std::io::stderr().is_terminal();
        let bar = if plain { ProgressBar::hidden() } else { ProgressBar::new(total as u64) };
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {pos}/{len} migrations, ETA {eta} · {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Self { bar, plain, started: Instant::now(), total, done: 0 }
    }

    fn say(&self, line: String) {
        if self.plain {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    /// Remaining time at the pace so far (lab boots included).
    fn eta(&self) -> String {
        if self.done == 0 {
            return "unknown".into();
        }
        let left = self.started.elapsed().as_secs_f64() / self.done as f64 * (self.total - self.done) as f64;
        humantime::format_duration(Duration::from_secs(left.round() as u64)).to_string()
    }

    fn elapsed(&self) -> String {
        humantime::format_duration(Duration::from_secs(self.started.elapsed().as_secs())).to_string()
    }

    fn treatment(&self, at: &str, what: &str) {
        if self.plain {
            eprintln!("{at}: {what}");
        } else {
            self.bar.set_message(format!("{at}: {what}"));
        }
    }

    fn migrated(&mut self, at: &str, rep: u32, reps: u32, r: &MigrationRecord) {
        self.done += 1;
        self.bar.inc(1);
        if self.plain {
            eprintln!(
                "[{}/{}] {at} repetition {}/{reps}: {}; elapsed {}, ETA {}",
                self.done,
                self.total,
                rep + 1,
                key_figures(r),
                self.elapsed(),
                self.eta()
            );
        } else {
            let d = &r.downtime_ms;
            let unit = |v: Option<f64>| v.map_or_else(|| "missing".to_owned(), |v| format!("{v:.1} ms"));
            self.bar.set_message(format!(
                "{at} · last (repetition {}/{reps}): downtime probe gap {}, ping {}",
                rep + 1,
                unit(d.probe_gap),
                unit(d.ping)
            ));
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

fn measure_options(spec: &ExperimentSpec) -> MeasureOptions {
    let m = &spec.raw.measure;
    MeasureOptions {
        trace: m.tracing,
        ping_interval: (m.ping_interval_ms > 0.0).then(|| Duration::from_secs_f64(m.ping_interval_ms / 1e3)),
        probe_interval: (m.probe_rate_hz > 0.0).then(|| Duration::from_secs_f64(1.0 / m.probe_rate_hz)),
        settle: Duration::from_secs_f64(m.settle_s),
        settle_max: Duration::from_secs_f64(m.settle_max_s),
        memory_check: m.memory_check.then(|| Duration::from_secs(5)),
        outage_threshold: m.outage_threshold,
        ..MeasureOptions::default()
    }
}

/// Runs (or resumes) `spec`; `spec_text` is stored as run; `pages` are written after
/// every treatment and at the end.
pub async fn run(
    spec: &ExperimentSpec,
    spec_text: &str,
    opts: &RunOptions,
    pages: &(dyn PageWriter + Sync),
) -> Result<RunReport, RunError> {
    let treatments = design::expand(spec);
    // Every QEMU the spec names must exist here: refused now, not an hour into the run.
    let mut selectors: Vec<&str> = treatments.iter().filter_map(Treatment::qemu).collect();
    selectors.dedup();
    for q in selectors {
        migtrace_common::host::qemu::select(q).map_err(|e| SpecError::Treatment(format!("qemu = {q:?}: {e}")))?;
    }
    // And every knob must be one its QEMU takes.
    for t in &treatments {
        let params = t.migration_params(spec.raw.migration.timeout_s);
        if params.avail_switchover_bandwidth.is_none() {
            continue;
        }
        let q = t.qemu().unwrap_or("system");
        let build = migtrace_common::host::qemu::select(q)
            .map_err(|e| SpecError::Treatment(format!("treatment {}: qemu = {q:?}: {e}", t.name())))?;
        crate::lab::check_parameters(&params, Some((build.version.major, build.version.minor)))
            .map_err(|e| SpecError::Treatment(format!("treatment {}: {e}", t.name())))?;
    }
    // What a lab on this machine needs (root, capabilities, tracefs) fails now, not
    // after the first boot.
    if matches!(spec.backend(), Backend::Lab | Backend::LibvirtLab) {
        crate::lab::check_privileges()?;
        if spec.raw.measure.tracing {
            crate::probe::preflight()?;
        }
    }
    // Locked for this run (a second run of the experiment is refused) and checked to
    // take files: a read-only or full results directory fails here, before any lab.
    let store = Store::open_for_run(&opts.results, spec, spec_text, opts.force_new)?;
    let done = store.done()?;
    let reps = spec.raw.repetitions;
    let todo: Vec<(design::Boot, &Treatment, Vec<u32>)> = design::plan(spec, &treatments)
        .into_iter()
        .map(|b| {
            let t = &treatments[b.treatment];
            let pending = b.repetitions.iter().copied().filter(|r| !done.contains(&(t.name(), *r))).collect();
            (b, t, pending)
        })
        .filter(|(_, _, r): &(_, _, Vec<u32>)| !r.is_empty())
        .collect();
    let remaining: usize = todo.iter().map(|(_, _, r)| r.len()).sum();
    let skipped = treatments.len() * reps as usize - remaining;

    let mut progress = Progress::new(remaining);
    if skipped > 0 {
        progress.say(format!("resuming {}: {skipped} migrations already recorded, {remaining} to go", spec.raw.name));
    }
    let mut writer = store.writer()?;
    let mut ran = 0;
    let mut last_report: Option<Duration> = None;
    let migtrace = opts.migtrace.clone().unwrap_or_else(testbed::this_binary);
    // Existing libvirt hosts serve every treatment; labs are made per treatment.
    let mut kept: Option<(Testbed, Session)> = None;
    for (boot, treatment, pending) in todo {
        let name = treatment.name();
        let err = |source| RunError::Testbed { treatment: name.clone(), source };
        let params = treatment.migration_params(spec.raw.migration.timeout_s);
        let at = if boot.of > 1 {
            format!(
                "treatment {}/{} {name} (boot {}/{})",
                boot.treatment + 1,
                treatments.len(),
                boot.index + 1,
                boot.of
            )
        } else {
            format!("treatment {}/{} {name}", boot.treatment + 1, treatments.len())
        };
        progress.treatment(&at, if kept.is_some() { "starting" } else { "starting its lab" });
        let treatment_started = Instant::now();
        let (mut hosts, mut session) = match kept.take() {
            Some(k) => k,
            None => {
                let up = Testbed::up(spec, treatment, measure_options(spec), &migtrace).await.map_err(err)?;
                tokio::time::sleep(spec.warmup).await;
                up
            }
        };
        for (k, rep) in pending.iter().enumerate() {
            let record = match session.migrate(&mut hosts, &params, *rep, &name).await {
                Ok(r) => r,
                Err(SessionError::Trace(source)) => return Err(RunError::Trace { treatment: name.clone(), source }),
                Err(SessionError::Hosts(source)) => return Err(err(source)),
                Err(SessionError::Agent(source)) => return Err(RunError::Agent { treatment: name.clone(), source }),
            };
            writer.append(&record)?;
            ran += 1;
            progress.migrated(&at, *rep, reps, &record);
            let status = record.outcome.status;
            let crashed = record.guest.as_ref().is_some_and(|g| !g.healthy());
            let dead = record.guest.as_ref().is_some_and(|g| g.dead());
            if status != Status::Completed || crashed {
                progress.say(format!(
                    "{name} repetition {rep}: {}",
                    if crashed {
                        let corrupted = record
                            .guest
                            .as_ref()
                            .and_then(|g| g.memory_check.as_ref())
                            .map_or(0, |m| m.corrupted_pages());
                        if corrupted > 0 {
                            format!(
                                "the guest's memory check found {corrupted} page(s) that lost writes (recorded, excluded from statistics)"
                            )
                        } else {
                            "the guest crashed or hung after the migration (recorded, excluded from statistics)"
                                .to_owned()
                        }
                    } else {
                        format!("{status:?}: {}", record.outcome.error.clone().unwrap_or_default())
                    }
                ));
            }
            if k + 1 == pending.len() {
                break;
            }
            if status == Status::Completed && !dead {
                hosts.prepare_next().await.map_err(err)?;
            } else if hosts.per_treatment() {
                // The pair may be broken (a dead destination) or the guest gone: start
                // the treatment's lab afresh for its remaining repetitions.
                let _ = session.stop().await;
                hosts.down().await;
                (hosts, session) = Testbed::up(spec, treatment, measure_options(spec), &migtrace).await.map_err(err)?;
                tokio::time::sleep(spec.warmup).await;
            }
        }
        if hosts.per_treatment() {
            let _ = session.stop().await;
            hosts.down().await;
        } else {
            kept = Some((hosts, session));
        }
        let summary = store.write_summaries(spec)?;
        pages.text(&store, spec, &summary)?;
        // The page after each treatment while it is cheap next to the treatment itself.
        let mut html = String::new();
        if last_report.is_none_or(|d| d * 20 < treatment_started.elapsed()) {
            let t = Instant::now();
            match pages.page(&store, spec, &summary) {
                Ok(_) => html = "; report.html updated".into(),
                Err(e) => html = format!("; report.html not written: {e}"),
            }
            last_report = Some(t.elapsed());
        }
        let t = summary.treatments.iter().find(|t| t.treatment == name);
        progress.say(format!(
            "{at}: done, {} of {} usable, probe gap mean {} ms{html}",
            t.map_or(0, |t| t.usable),
            t.map_or(0, |t| t.migrations),
            ms(t.and_then(|t| t.measures.get("downtime.probe_gap")).map(|s| s.mean)),
        ));
    }
    if let Some((hosts, session)) = kept {
        let _ = session.stop().await;
        hosts.down().await;
    }
    progress.finish();
    let summary = store.write_summaries(spec)?;
    pages.text(&store, spec, &summary)?;
    let (html, html_error) = match pages.page(&store, spec, &summary) {
        Ok(html) => (Some(html), None),
        Err(e) => (None, Some(e.to_string())),
    };
    Ok(RunReport { dir: store.dir.clone(), ran, skipped, summary, html, html_error })
}
