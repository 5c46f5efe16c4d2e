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
             of a held-out migration (a prediction that is not a positive number counts as ∞); chosen per fold: \
             the variant with the better fit on the other treatments alone, scored on the held-out one (the error \
             of choosing, not only of the variant); noise floor: each repetition against the mean of its \
             treatment's other repetitions × √((n−1)/n), the error of a perfect predictor of the treatment's mean \
             (the best a prediction can do). Better fit: {} (what <code>migtrace predict</code> uses).</p>",
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
    let pct = |x: Option<f64>| x.map_or_else(|| "–".into(), validate::ape);
    let rows: Vec<Vec<String>> = validate::error_rows(v)
        .into_iter()
        .map(|row| {
            let n =
                if row.unbounded > 0 { format!("{} ({} unbounded)", row.n, row.unbounded) } else { row.n.to_string() };
            let mut cells = vec![esc(row.measure.label()), n];
            cells.extend(row.ape.map(pct));
            cells
        })
        .collect();
    let header: Vec<String> = ["measure".to_owned(), "n".to_owned()]
        .into_iter()
        .chain(validate::ERROR_COLUMNS.map(|c| format!("{c} %")))
        .collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    table(out, "model-errors", "model", &header, &rows);
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
