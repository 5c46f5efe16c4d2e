//! An experiment's report: Table II per measure and single-factor effect tables.

use std::fmt::Write as _;

use super::{align_right, stats::ExperimentSummary, table};

fn f(v: f64) -> String {
    if v.is_finite() { format!("{v:.1}") } else { "∞".into() }
}

fn ratio(v: f64) -> String {
    if v.is_finite() { format!("{v:.2}") } else { "∞".into() }
}

/// Table II (as in the paper, in milliseconds) and the effects of each factor.
pub fn render(name: &str, s: &ExperimentSummary) -> String {
    let mut out = String::new();
    let crashed: usize = s.treatments.iter().map(|t| t.guest_crashed).sum();
    let corrupted: usize = s.treatments.iter().map(|t| t.corrupted).sum();
    let failed: usize = s.treatments.iter().map(|t| t.failed).sum();
    let _ = writeln!(
        out,
        "experiment {name}: {} treatments, {} migrations, {} used ({} failed, {} with a crashed guest and {} with \
         corrupted guest memory excluded)",
        s.treatments.len(),
        s.migrations,
        s.usable,
        failed,
        crashed,
        corrupted
    );
    let mut t =
        table(&["measure", "n", "mean ms", "max:min means", "max:min all", "max treatment SD ms", "overall SD ms"]);
    for r in &s.table2 {
        t.add_row(vec![
            r.measure.clone(),
            r.n.to_string(),
            f(r.overall_mean),
            ratio(r.ratio_treatment_means),
            ratio(r.ratio_all),
            f(r.max_treatment_sd),
            f(r.overall_sd),
        ]);
    }
    align_right(&mut t, &[1, 2, 3, 4, 5, 6]);
    let _ = writeln!(out, "Table II (data variability)\n{t}");
    for e in &s.effects {
        let measures: Vec<String> = e.rows.first().map(|(_, _, m)| m.keys().cloned().collect()).unwrap_or_default();
        let mut header = vec![e.factor.as_str(), "migrations"];
        header.extend(measures.iter().map(String::as_str));
        let mut t = table(&header);
        for (level, n, means) in &e.rows {
            let mut row = vec![level.clone(), n.to_string()];
            row.extend(measures.iter().map(|m| means.get(m).map_or("-".into(), |v| f(*v))));
            t.add_row(row);
        }
        align_right(&mut t, &(1..header.len()).collect::<Vec<_>>());
        let _ = writeln!(out, "effect of {} (mean ms per level)\n{t}", e.factor);
    }
    out
}
