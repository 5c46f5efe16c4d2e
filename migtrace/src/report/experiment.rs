//! An experiment's report: Table II per measure and single-factor effect tables.

use std::fmt::Write as _;

use super::{align_right, table};
use crate::stats::ExperimentSummary;

fn f(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

/// A max:min ratio; "n/a" where the smallest value is 0 or a lower bound (see the
/// footnotes); "≥" where a larger one is a bound.
fn ratio(v: Option<f64>, bound: bool) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{}{v:.2}", at_least(bound)))
}

/// "≥ " before a figure that is a lower bound.
pub fn at_least(bound: bool) -> &'static str {
    if bound { "≥ " } else { "" }
}

/// Table II (as in the paper, in milliseconds) and the effects of each factor.
pub fn render(name: &str, s: &ExperimentSummary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "experiment {name}: {} treatments, {} migrations, {} used, {} censored (used; the guest answered again only \
         after observation ended: its guest-observed downtime a lower bound), {} did not converge ({} failed, {} \
         with a crashed or silent guest, {} with corrupted guest memory, {} with trace loss: excluded)",
        s.treatments.len(),
        s.migrations,
        s.usable,
        s.censored,
        s.did_not_converge,
        s.failed,
        s.guest_crashed,
        s.corrupted,
        s.trace_loss
    );
    let stuck: Vec<String> = s
        .treatments
        .iter()
        .filter(|t| t.did_not_converge > 0)
        .map(|t| format!("{} ({} of {})", t.treatment, t.did_not_converge, t.migrations))
        .collect();
    if !stuck.is_empty() {
        let _ = writeln!(
            out,
            "did not converge (pre-copy still running at the timeout: the guest dirtied memory faster than the link \
             drained it; no downtime to count): {}",
            stuck.join(", ")
        );
    }
    let mut t =
        table(&["measure", "n", "mean ms", "max:min means", "max:min all", "max treatment SD ms", "overall SD ms"]);
    let mut no_ratio = false;
    let mut bounds = false;
    for r in &s.table2 {
        let bound = r.censored > 0;
        no_ratio |= (r.ratio_treatment_means.is_none() || r.ratio_all.is_none()) && !bound;
        bounds |= bound;
        t.add_row(vec![
            r.measure.clone(),
            if bound { format!("{} ({} ≥)", r.n, r.censored) } else { r.n.to_string() },
            format!("{}{}", at_least(bound), f(Some(r.overall_mean))),
            ratio(r.ratio_treatment_means, bound),
            ratio(r.ratio_all, bound),
            f(r.max_treatment_sd),
            f(r.overall_sd),
        ]);
    }
    align_right(&mut t, &[1, 2, 3, 4, 5, 6]);
    let _ = writeln!(out, "Table II (data variability)\n{t}");
    if no_ratio {
        let _ = writeln!(
            out,
            "n/a: the smallest value is 0 ms, so no max:min ratio exists. A ping reports 0 ms whenever the outage \
             fell between two of its requests: it does not see outages shorter than its interval."
        );
    }
    if bounds {
        let _ = writeln!(
            out,
            "(k ≥): k of the n values are lower bounds, from censored migrations: the guest had not answered again \
             when observation ended (settle_max), and did afterwards; each counts as its open gap. Figures marked ≥ \
             are lower bounds; a ratio whose smallest value is a bound is n/a, and an SD over bounds is \"-\"."
        );
    }
    let _ = writeln!(out, "SD: sample standard deviation; \"-\" where a treatment or the experiment has one value.\n");
    let how = if s.design == "sweep" {
        "other factors at their base level"
    } else {
        "main effect: mean of the treatment means at the level"
    };
    for e in &s.effects {
        let measures: Vec<String> = e.rows.first().map(|r| r.cells.keys().cloned().collect()).unwrap_or_default();
        let mut header = vec![e.factor.as_str(), "treatments"];
        header.extend(measures.iter().map(String::as_str));
        let mut t = table(&header);
        for row in &e.rows {
            let mut cells = vec![row.level.clone(), row.treatments.to_string()];
            cells.extend(measures.iter().map(|m| match row.cells.get(m) {
                Some(c) if c.treatments < row.treatments => format!(
                    "{}{:.1} (n={}, {} of {} treatments)",
                    at_least(c.censored > 0),
                    c.mean,
                    c.n,
                    c.treatments,
                    row.treatments
                ),
                Some(c) => format!("{}{:.1} (n={})", at_least(c.censored > 0), c.mean, c.n),
                None => "-".into(),
            }));
            t.add_row(cells);
        }
        align_right(&mut t, &(1..header.len()).collect::<Vec<_>>());
        let _ = writeln!(out, "effect of {} (ms; {how}; n = migrations)\n{t}", e.factor);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::stats::{EffectCell, EffectRow, EffectTable, Table2Row};

    #[test]
    fn a_zero_minimum_is_na_with_a_footnote_and_cells_show_n() {
        let s = ExperimentSummary {
            table2: vec![Table2Row {
                measure: "downtime.ping".into(),
                n: 5,
                censored: 0,
                treatments: 2,
                overall_mean: 40.0,
                ratio_treatment_means: Some(4.5),
                ratio_all: None,
                max_treatment_sd: None,
                overall_sd: Some(41.8),
            }],
            effects: vec![EffectTable {
                factor: "rate".into(),
                rows: vec![EffectRow {
                    level: "0".into(),
                    treatments: 2,
                    cells: BTreeMap::from([(
                        "downtime.ping".into(),
                        EffectCell { mean: 20.0, n: 4, censored: 0, treatments: 1 },
                    )]),
                }],
            }],
            design: "factorial".into(),
            ..ExperimentSummary::default()
        };
        let text = render("t", &s);
        assert!(text.contains("4.50") && text.contains("n/a"), "{text}");
        assert!(!text.contains('∞') && !text.contains("inf"), "{text}");
        assert!(text.contains("n/a: the smallest value is 0 ms"), "{text}");
        assert!(text.contains("20.0 (n=4, 1 of 2 treatments)"), "{text}");
        assert!(text.contains("main effect"), "{text}");
    }

    #[test]
    fn lower_bounds_are_marked_and_explained() {
        let s = ExperimentSummary {
            censored: 1,
            table2: vec![Table2Row {
                measure: "downtime.probe_gap".into(),
                n: 3,
                censored: 1,
                treatments: 1,
                overall_mean: 1693.3,
                ratio_treatment_means: None,
                ratio_all: Some(166.67),
                max_treatment_sd: None,
                overall_sd: None,
            }],
            ..ExperimentSummary::default()
        };
        let text = render("t", &s);
        assert!(text.contains("1 censored"), "{text}");
        assert!(text.contains("3 (1 ≥)") && text.contains("≥ 1693.3") && text.contains("≥ 166.67"), "{text}");
        assert!(text.contains("lower bounds, from censored migrations"), "{text}");
    }
}
