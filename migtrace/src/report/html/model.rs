//! The downtime model's leave-one-treatment-out validation, when `migtrace model
//! validate` has run on the directory: per measure both variants' held-out errors beside
//! the noise floor, and every held-out prediction against what was measured.

use std::fmt::Write as _;

use super::{Builder, Experiment, HtmlError, esc, table};
use crate::model::{
    plot,
    validate::{self, VALIDATION_FILE, Validation},
};

/// The figure of the model's held-out predictions under `plots/`.
pub const MODEL_FIGURE: &str = "model-validation.svg";

pub(super) fn section(b: &mut Builder, e: &Experiment<'_>) -> Result<(), HtmlError> {
    let Some(v) = e.validation else { return Ok(()) };
    b.section("model", "downtime model", "Downtime model: predicted against measured", |b| {
        let _ = writeln!(
            b.html,
            "<p class=\"note\">From {VALIDATION_FILE} (<code>migtrace model validate</code>): each of the {} \
             treatments predicted by the model fitted on the others, {} migrations. APE: absolute percentage error \
             of a held-out migration; noise floor: each repetition against the mean of its treatment's other \
             repetitions (the best a prediction of the treatment can do). Better fit: {}.</p>",
            v.treatments,
            v.migrations,
            esc(v.preferred.name()),
        );
        errors(&mut b.html, v);
        predictions(b, v)
    })
}

/// Per measure the median and 90th percentile of each variant's held-out errors and of
/// the noise floor.
fn errors(out: &mut String, v: &Validation) {
    let pct = |x: Option<f64>| x.map_or_else(|| "–".into(), |x| format!("{x:.1}"));
    let rows: Vec<Vec<String>> = validate::error_rows(v)
        .into_iter()
        .map(|row| {
            let mut cells = vec![esc(row.measure.label()), row.n.to_string()];
            cells.extend(row.ape.map(pct));
            cells
        })
        .collect();
    table(
        out,
        "model-errors",
        "model",
        &[
            "measure",
            "n",
            "closed form: median APE %",
            "p90 APE %",
            "simulation: median APE %",
            "p90 APE %",
            "noise floor: median %",
            "p90 %",
        ],
        &rows,
    );
}

/// Every held-out prediction of the plotted measures against the measured value.
fn predictions(b: &mut Builder, v: &Validation) -> Result<(), HtmlError> {
    let rows: Vec<Vec<String>> = v
        .points
        .iter()
        .filter(|p| plot::PANELS.contains(&p.measure))
        .map(|p| {
            vec![
                esc(&p.treatment),
                esc(p.variant.name()),
                esc(p.measure.label()),
                format!("{:.2}", p.measured),
                format!("{:.2}", p.predicted),
            ]
        })
        .collect();
    let mut data = String::new();
    table(
        &mut data,
        "model-validation-data",
        "data",
        &["treatment", "variant", "measure", "measured ms", "predicted ms"],
        &rows,
    );
    b.figure(
        MODEL_FIGURE.into(),
        plot::plot_svg(&v.points)?,
        "Held-out predictions against the measured values, a point per migration and variant (closed form blue, \
         simulation red); on the diagonal they agree.",
        &data,
    );
    Ok(())
}
