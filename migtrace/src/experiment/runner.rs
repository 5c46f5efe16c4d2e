//! Runs an experiment: one lab per treatment, its repetitions as ping-pong migrations,
//! every record appended durably as it finishes, summaries after every treatment.

use std::{path::PathBuf, time::Duration};

use indicatif::{ProgressBar, ProgressStyle};

use super::{
    design::{self, Treatment},
    spec::{ExperimentSpec, SpecError},
    store::{Store, StoreError},
};
use crate::{
    hypervisor::{HostPair, Status},
    lab::{Lab, LabError, netns},
    measure::{
        record::RecordError,
        session::{MeasureOptions, Network, Session, SessionError},
    },
    probe::tracer::TraceError,
    report::stats::ExperimentSummary,
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
    Lab {
        treatment: String,
        #[source]
        source: LabError,
    },
    #[error("treatment {treatment}: starting the probes: {source}")]
    Trace {
        treatment: String,
        #[source]
        source: TraceError,
    },
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Where experiments keep their directories (`results/`).
    pub results: PathBuf,
    /// Start over when the spec changed (old results are moved aside).
    pub force_new: bool,
}

/// What a run did.
pub struct RunReport {
    pub dir: PathBuf,
    pub ran: usize,
    pub skipped: usize,
    pub summary: ExperimentSummary,
}

fn measure_options(spec: &ExperimentSpec) -> MeasureOptions {
    let m = &spec.raw.measure;
    MeasureOptions {
        trace: m.probes,
        ping_interval: (m.ping_interval_ms > 0.0).then(|| Duration::from_secs_f64(m.ping_interval_ms / 1e3)),
        probe_interval: (m.probe_rate_hz > 0.0).then(|| Duration::from_secs_f64(1.0 / m.probe_rate_hz)),
        settle: Duration::from_secs_f64(m.settle_s),
        settle_max: Duration::from_secs_f64(m.settle_max_s),
        memory_check: m.memory_check.then(|| Duration::from_secs(5)),
        ..MeasureOptions::default()
    }
}

/// Runs (or resumes) `spec`; `spec_text` is stored as run.
pub async fn run(spec: &ExperimentSpec, spec_text: &str, opts: &RunOptions) -> Result<RunReport, RunError> {
    let treatments = design::expand(spec);
    // Every QEMU the spec names must exist here: refused now, not an hour into the run.
    let mut selectors: Vec<&str> = treatments.iter().filter_map(Treatment::qemu).collect();
    selectors.dedup();
    for q in selectors {
        migtrace_common::host::qemu::select(q).map_err(|e| SpecError::Treatment(format!("qemu = {q:?}: {e}")))?;
    }
    let store = Store::open(&opts.results, spec, spec_text, opts.force_new)?;
    let done = store.done()?;
    let reps = spec.raw.repetitions;
    let todo: Vec<(usize, &Treatment, Vec<u32>)> = treatments
        .iter()
        .enumerate()
        .map(|(i, t)| (i, t, (0..reps).filter(|r| !done.contains(&(t.name(), *r))).collect::<Vec<u32>>()))
        .filter(|(_, _, r)| !r.is_empty())
        .collect();
    let remaining: usize = todo.iter().map(|(_, _, r)| r.len()).sum();
    let skipped = treatments.len() * reps as usize - remaining;

    let progress = ProgressBar::new(remaining as u64);
    progress.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {pos}/{len} migrations, ETA {eta} · {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let say = |line: String| {
        if progress.is_hidden() {
            eprintln!("{line}");
        } else {
            progress.println(line);
        }
    };
    if skipped > 0 {
        say(format!("resuming {}: {skipped} migrations already recorded, {remaining} to go", spec.raw.name));
    }
    let mut writer = store.writer()?;
    let mut ran = 0;
    for (index, treatment, pending) in todo {
        let name = treatment.name();
        let lab_err = |source| RunError::Lab { treatment: name.clone(), source };
        let config = treatment.lab_config(
            Duration::from_secs_f64(spec.raw.migration.boot_timeout_s),
            &spec.raw.lab,
            spec.raw.guest,
        )?;
        let params = treatment.migration_params(spec.raw.migration.timeout_s);
        progress.set_message(format!("treatment {}/{} {name}: booting", index + 1, treatments.len()));
        let mut lab = Lab::up(config.clone()).await.map_err(lab_err)?;
        let network =
            |lab: &Lab| Network { ns: Some(lab.ns().to_owned()), guest: netns::GUEST_IP, taps: netns::TAPS.to_vec() };
        let mut session = Session::start(network(&lab), measure_options(spec))
            .map_err(|source| RunError::Trace { treatment: name.clone(), source })?;
        tokio::time::sleep(spec.warmup).await;
        for (k, rep) in pending.iter().enumerate() {
            progress.set_message(format!(
                "treatment {}/{} {name}: repetition {}/{reps}",
                index + 1,
                treatments.len(),
                rep + 1
            ));
            let record = match session.migrate(&mut lab, &params, *rep, &name).await {
                Ok(r) => r,
                Err(SessionError::Trace(source)) => return Err(RunError::Trace { treatment: name.clone(), source }),
                Err(SessionError::Hosts(source)) => return Err(lab_err(source)),
            };
            writer.append(&record)?;
            ran += 1;
            progress.inc(1);
            let status = record.outcome.status;
            let crashed = record.guest.as_ref().is_some_and(|g| !g.healthy());
            let dead = record.guest.as_ref().is_some_and(|g| g.dead());
            if status != Status::Completed || crashed {
                say(format!(
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
                lab.prepare_next().await.map_err(lab_err)?;
            } else {
                // The pair may be broken (a dead destination) or the guest gone: start
                // the treatment's lab afresh for its remaining repetitions.
                let _ = session.stop().await;
                lab.down().await;
                lab = Lab::up(config.clone()).await.map_err(lab_err)?;
                session = Session::start(network(&lab), measure_options(spec))
                    .map_err(|source| RunError::Trace { treatment: name.clone(), source })?;
                tokio::time::sleep(spec.warmup).await;
            }
        }
        let _ = session.stop().await;
        lab.down().await;
        store.write_summaries(spec)?;
    }
    progress.finish_and_clear();
    let summary = store.write_summaries(spec)?;
    Ok(RunReport { dir: store.dir.clone(), ran, skipped, summary })
}
