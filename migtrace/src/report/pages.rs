//! The pages of an experiment directory, for people: `report.txt` (Table II and the
//! effect tables) and `report.html` with its figures, drawn from the store's records and
//! summary. A run keeps them current through [`Pages`], which the CLI hands the runner.

use std::{fs, path::PathBuf};

use super::{experiment, html};
use crate::{
    experiment::{
        runner::PageWriter,
        spec::ExperimentSpec,
        store::{self, Store, StoreError},
    },
    model::validate::Validation,
    stats::ExperimentSummary,
};

/// Table II and the effect tables as text, in an experiment directory.
pub const TEXT_FILE: &str = "report.txt";

#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the HTML report: {0}")]
    Html(#[from] html::HtmlError),
}

/// Writes `report.txt` from `summary`.
pub fn write_text(store: &Store, spec: &ExperimentSpec, summary: &ExperimentSummary) -> Result<(), StoreError> {
    store::write_atomic(&store.dir.join(TEXT_FILE), experiment::render(&spec.raw.name, summary).as_bytes())
}

/// Writes `report.html` and `plots/*.svg` from the records and `summary`, with the
/// model validation of `validation.json` when the directory has one (see [`html`]).
pub fn write_html(
    store: &Store,
    spec: &ExperimentSpec,
    summary: &ExperimentSummary,
) -> Result<html::Written, PageError> {
    let records = store.records()?;
    let spec_text = fs::read_to_string(store.dir.join("spec.toml"))
        .unwrap_or_else(|_| toml::to_string(&spec.raw).unwrap_or_default());
    // A validation the directory holds is shown; one that cannot be read is said so
    // and left out, the rest of the report still written.
    let validation = Validation::load(&store.dir).unwrap_or_else(|e| {
        log::warn!("{e}: the report leaves the model validation out");
        None
    });
    let e = html::Experiment {
        spec,
        spec_text: &spec_text,
        treatments: store::levels_of(spec).len(),
        effects: &store::effect_design(spec),
        records: &records,
        summary,
        validation: validation.as_ref(),
    };
    Ok(html::write(&store.dir, &e)?)
}

/// The pages a run writes: `report.txt` after every treatment, `report.html` when the
/// runner asks.
pub struct Pages;

impl PageWriter for Pages {
    fn text(&self, store: &Store, spec: &ExperimentSpec, summary: &ExperimentSummary) -> Result<(), StoreError> {
        write_text(store, spec, summary)
    }

    fn page(
        &self,
        store: &Store,
        spec: &ExperimentSpec,
        summary: &ExperimentSummary,
    ) -> Result<PathBuf, Box<dyn std::error::Error + Send + Sync>> {
        Ok(write_html(store, spec, summary)?.html)
    }
}
