//! Table II and the effect tables: the paper's Table II per measure over usable
//! migrations, and per factor the effect of each level (the summary's effect tables,
//! read as its design says).

use std::fmt::Write as _;

use super::{Builder, Experiment, HtmlError, esc, num, slug, table};
use crate::{report::experiment::at_least, stats::ExperimentSummary};

pub(super) fn section(b: &mut Builder, e: &Experiment<'_>) -> Result<(), HtmlError> {
    b.section("tables", "Table II and effects", "Table II and effect tables", |b| {
        b.html.push_str(
            "<p class=\"note\">Table II as in the paper, ms, over usable migrations. A max:min ratio is n/a where the \
             smallest value is 0 ms (a ping that lost no reply). SD: sample standard deviation, – where there is a \
             single value. n (k ≥): k of the n values are lower bounds, from censored migrations (the guest answered \
             again only after observation ended), each counted as its open gap; figures marked ≥ are then lower \
             bounds, a ratio whose smallest value is a bound is n/a, and an SD over bounds is –.</p>\n",
        );
        table2(&mut b.html, e.summary);
        effect_tables(&mut b.html, e.summary);
        Ok(())
    })
}

fn table2(out: &mut String, s: &ExperimentSummary) {
    let rows: Vec<Vec<String>> = s
        .table2
        .iter()
        .map(|r| {
            let ge = at_least(r.censored > 0);
            vec![
                esc(&r.measure),
                if r.censored > 0 { format!("{} ({} ≥)", r.n, r.censored) } else { r.n.to_string() },
                r.treatments.to_string(),
                format!("{ge}{}", num(Some(r.overall_mean))),
                r.ratio_treatment_means.map_or_else(|| "n/a".into(), |v| format!("{ge}{v:.2}")),
                r.ratio_all.map_or_else(|| "n/a".into(), |v| format!("{ge}{v:.2}")),
                num(r.max_treatment_sd),
                num(r.overall_sd),
            ]
        })
        .collect();
    table(
        out,
        "table2",
        "table2",
        &[
            "measure",
            "n",
            "treatments",
            "overall mean ms",
            "max:min treatment means",
            "max:min all",
            "max treatment SD ms",
            "overall SD ms",
        ],
        &rows,
    );
}

/// A table per factor: per level the treatments behind it and, per measure, the mean of
/// their means with the migrations behind it.
fn effect_tables(out: &mut String, s: &ExperimentSummary) {
    let how = if s.design == "sweep" {
        "other factors at their base level"
    } else {
        "main effect: the mean of the treatment means at the level"
    };
    for t in &s.effects {
        let measures: Vec<String> = t.rows.first().map(|r| r.cells.keys().cloned().collect()).unwrap_or_default();
        let _ = writeln!(out, "<h3>Effect of {} (ms; {how}; n = migrations)</h3>", esc(&t.factor));
        let mut header = vec![t.factor.as_str(), "treatments"];
        header.extend(measures.iter().map(String::as_str));
        let rows: Vec<Vec<String>> = t
            .rows
            .iter()
            .map(|row| {
                let mut cells = vec![esc(&row.level), row.treatments.to_string()];
                cells.extend(measures.iter().map(|m| match row.cells.get(m) {
                    Some(c) if c.treatments < row.treatments => format!(
                        "{}{:.2} (n={}, {} of {} treatments)",
                        at_least(c.censored > 0),
                        c.mean,
                        c.n,
                        c.treatments,
                        row.treatments
                    ),
                    Some(c) => format!("{}{:.2} (n={})", at_least(c.censored > 0), c.mean, c.n),
                    None => "–".into(),
                }));
                cells
            })
            .collect();
        table(out, &format!("effect-{}", slug(&t.factor)), "effect", &header, &rows);
    }
}
