//! Per treatment: every usable migration's downtime by each method side by side (where
//! the 50 ms ping's quantisation and QEMU's source-only figure show), with the reasons
//! values are missing; the CDFs from its histograms; and the [`timelines`] of its median
//! and worst migration.
//!
//! [`timelines`]: super::timelines

use std::{collections::BTreeMap, fmt::Write as _};

use super::{Builder, Experiment, HtmlError, PLOTS_DIR, cdf, ci, esc, num, slug, table, timelines};
use crate::{
    measure::{
        quality::{self, MEASURES, Reading},
        record::MigrationRecord,
    },
    report::plots::{self, Strip, StripMethod},
    stats::TreatmentSummary,
};

/// Per-treatment sections (distributions, CDFs, timelines) inlined in the page; the
/// figures of the others are still written to `plots/`.
pub const MAX_TREATMENT_SECTIONS: usize = 60;

pub(super) fn section(b: &mut Builder, e: &Experiment<'_>) -> Result<(), HtmlError> {
    b.section("treatments", "treatments", "Treatments", |b| {
        b.html.push_str(
            "<p class=\"note\">Per treatment: every usable migration's downtime by each method (the 50 ms ping's \
             quantisation and QEMU's source-only figure show here), the CDFs from its histograms, and the timelines \
             of its median and worst migration (by the probe gap) on one time axis per migration, with the pre-copy \
             rounds.</p>\n",
        );
        let _ = writeln!(b.html, "<p class=\"note\">{}</p>", super::intervals_assume(&e.spec.raw));
        let total = e.summary.treatments.len();
        if total > MAX_TREATMENT_SECTIONS {
            let _ = writeln!(
                b.html,
                "<p class=\"note\">The first {MAX_TREATMENT_SECTIONS} of {total} treatments are shown here; the \
                 figures of all are in {PLOTS_DIR}/.</p>"
            );
        }
        for (i, t) in e.summary.treatments.iter().enumerate() {
            let start = b.html.len();
            treatment(b, e, i, t)?;
            if i >= MAX_TREATMENT_SECTIONS {
                // Keep the figures (for plots/), drop the section from the page.
                b.html.truncate(start);
            }
        }
        Ok(())
    })
}

/// The `i`-th treatment's section.
fn treatment(b: &mut Builder, e: &Experiment<'_>, i: usize, t: &TreatmentSummary) -> Result<(), HtmlError> {
    let tag = format!("t{:03}-{}", i + 1, slug(&t.treatment));
    let _ = writeln!(
        b.html,
        "<section id=\"{}\"><h3>{}</h3><p>{} migrations, {} usable{}.</p>",
        esc(&tag),
        esc(&t.treatment),
        t.migrations,
        t.usable,
        if t.censored > 0 { format!(", {} censored (counted as lower bounds)", t.censored) } else { String::new() }
    );
    methods_figure(b, e, &tag, t)?;
    let (c, problems) = cdf::cdf_of(&format!("downtime CDF: {}", t.treatment), &t.histograms);
    cdf::notes(b, &problems);
    if !c.lines.is_empty() {
        let data = cdf::cdf_table(&format!("{tag}-cdf-data"), &c);
        b.figure(format!("{tag}-cdf.svg"), plots::cdf(&c)?, "Downtime CDF per method (HDR histograms).", &data);
    }
    timelines::figures(b, e, &tag, t)?;
    b.html.push_str("</section>\n");
    Ok(())
}

/// The downtime methods side by side, one dot per usable migration, and their
/// statistics, values and missing values as a table.
fn methods_figure(b: &mut Builder, e: &Experiment<'_>, tag: &str, t: &TreatmentSummary) -> Result<(), HtmlError> {
    let (strip, missing) = e.methods(t);
    let rows: Vec<Vec<String>> = strip
        .methods
        .iter()
        .map(|m| {
            let st = t.measures.get(&m.measure);
            let reasons = missing
                .iter()
                .find(|x| x.measure == m.measure)
                .map(|x| x.reasons.iter().map(|(why, k)| format!("{k}× {why}")).collect::<Vec<_>>().join("; "))
                .unwrap_or_default();
            // With lower bounds among them the statistics are lower bounds too.
            let ge = if m.bounds.is_empty() { "" } else { "≥ " };
            let stat = |f: fn(&crate::stats::Stats) -> f64| format!("{ge}{}", num(st.map(f)));
            let values = m.values.iter().map(|v| format!("{v:.2}")).chain(m.bounds.iter().map(|v| format!("≥ {v:.2}")));
            vec![
                esc(&m.measure),
                match m.bounds.len() {
                    0 => m.values.len().to_string(),
                    k => format!("{} ({k} ≥)", m.values.len() + k),
                },
                stat(|s| s.mean),
                ci(st.and_then(|s| s.ci95)),
                stat(|s| s.min),
                stat(|s| s.p50),
                stat(|s| s.max),
                esc(&values.collect::<Vec<_>>().join(", ")),
                if m.missing == 0 { "0".into() } else { format!("{} missing ({})", m.missing, esc(&reasons)) },
            ]
        })
        .collect();
    let mut data = String::new();
    table(
        &mut data,
        &format!("{tag}-methods-data"),
        "data",
        &["measure", "n", "mean ms", "95 % CI ms", "min ms", "p50 ms", "max ms", "values ms", "missing"],
        &rows,
    );
    b.figure(
        format!("{tag}-methods.svg"),
        plots::strip(&strip)?,
        "Downtime by method, one dot per usable migration; a hollow one is a lower bound (a censored migration: the \
         guest answered again only after observation ended).",
        &data,
    );
    Ok(())
}

/// The record field behind a statistics measure (`downtime.vcpu.qmp` → `downtime_ms.vcpu`).
pub fn record_field(measure: &str) -> String {
    let base = measure.strip_suffix(".qmp").unwrap_or(measure);
    match base.split_once('.') {
        Some((family, m)) => format!("{family}_ms.{m}"),
        None => base.to_owned(),
    }
}

/// The raw value of a record's field (regardless of its evidence).
fn field_value(r: &MigrationRecord, field: &str) -> Option<f64> {
    let d = &r.downtime_ms;
    let m = &r.migration_time_ms;
    match field {
        "downtime_ms.ping" => d.ping,
        "downtime_ms.ping_max_gap" => d.ping_max_gap,
        "downtime_ms.probe_gap" => d.probe_gap,
        "downtime_ms.vcpu" => d.vcpu,
        "downtime_ms.reported" => d.reported,
        "migration_time_ms.command" => m.command,
        "migration_time_ms.reported" => m.reported,
        "migration_time_ms.traced" => m.traced,
        "migration_time_ms.traced_to_resume" => m.traced_to_resume,
        _ => None,
    }
}

/// Usable migrations without a measure, and the reasons their records give.
#[derive(Clone, Debug, PartialEq)]
pub struct Missing {
    pub measure: String,
    pub count: usize,
    pub reasons: BTreeMap<String, usize>,
}

impl Experiment<'_> {
    pub(super) fn usable_of(&self, treatment: &str) -> Vec<&MigrationRecord> {
        self.records.iter().filter(|r| r.treatment == treatment && quality::usable(r)).collect()
    }

    /// The migrations of a treatment that statistics count: usable and censored.
    fn counted_of(&self, treatment: &str) -> Vec<&MigrationRecord> {
        self.records.iter().filter(|r| r.treatment == treatment && quality::counted(r)).collect()
    }

    /// The downtime methods of one treatment side by side (a censored migration's open
    /// measures as lower bounds), and why values are missing.
    pub fn methods(&self, t: &TreatmentSummary) -> (Strip, Vec<Missing>) {
        let counted = self.counted_of(&t.treatment);
        let mut methods = Vec::new();
        let mut missing = Vec::new();
        for m in MEASURES.iter().filter(|m| m.name.starts_with("downtime.")) {
            let readings: Vec<(&MigrationRecord, Option<Reading>)> =
                counted.iter().map(|r| (*r, m.reading(r))).collect();
            let values: Vec<f64> = readings
                .iter()
                .filter_map(|(_, x)| if let Some(Reading::Exact(v)) = x { Some(*v) } else { None })
                .collect();
            let bounds: Vec<f64> = readings
                .iter()
                .filter_map(|(_, x)| if let Some(Reading::AtLeast(v)) = x { Some(*v) } else { None })
                .collect();
            let qmp = m.name.ends_with(".qmp");
            if qmp && values.is_empty() {
                continue;
            }
            let field = record_field(m.name);
            let without: Vec<&&MigrationRecord> = if qmp {
                Vec::new()
            } else {
                counted
                    .iter()
                    .filter(|r| field_value(r, &field).is_none() && !matches!(m.reading(r), Some(Reading::AtLeast(_))))
                    .collect()
            };
            if !without.is_empty() {
                missing.push(Missing {
                    measure: m.name.to_owned(),
                    count: without.len(),
                    reasons: reasons(&without, &field),
                });
            }
            methods.push(StripMethod { measure: m.name.to_owned(), values, bounds, missing: without.len() });
        }
        (Strip { title: format!("downtime by method: {}", t.treatment), methods }, missing)
    }
}

/// Why records lack `field`, as their `missing` entries say, counted.
fn reasons(without: &[&&MigrationRecord], field: &str) -> BTreeMap<String, usize> {
    let prefix = format!("{field}:");
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for r in without {
        let why = r
            .missing
            .iter()
            .find_map(|x| x.strip_prefix(&prefix).map(|w| w.trim().to_owned()))
            .unwrap_or_else(|| "no reason recorded".to_owned());
        *reasons.entry(why).or_default() += 1;
    }
    reasons
}
