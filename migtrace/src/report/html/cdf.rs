//! Downtime distributions over all treatments: a CDF per downtime method from the
//! summary's merged HDR histograms, and the reading of stored histograms the treatment
//! sections share.

use std::{collections::BTreeMap, fmt::Write as _};

use base64::Engine as _;
use hdrhistogram::{Histogram, serialization::Deserializer};

use super::{Builder, Experiment, HtmlError, esc, num, table};
use crate::{
    measure::quality::MEASURES,
    report::plots::{self, Cdf, CdfLine},
};

pub(super) fn section(b: &mut Builder, e: &Experiment<'_>) -> Result<(), HtmlError> {
    b.section("cdf", "CDFs", "Downtime distributions over all treatments", |b| {
        b.html.push_str(
            "<p class=\"note\">Cumulative distributions from the stored HDR histograms (µs, 3 significant digits: \
             exact below 2 ms, each value within 0.1 % above), over every usable migration. The table reads the same \
             histograms.</p>\n",
        );
        let (c, problems) = cdf_of("downtime CDF per method, all treatments", &e.summary.histograms);
        notes(b, &problems);
        if c.lines.is_empty() {
            b.html.push_str("<p>No usable migration has a downtime figure.</p>\n");
        } else {
            let data = cdf_table("cdf-all-data", &c);
            b.figure(
                "cdf-all.svg".into(),
                plots::cdf(&c)?,
                "Downtime CDF per method over all usable migrations.",
                &data,
            );
        }
        Ok(())
    })
}

/// Histograms that could not be read, said on the page.
pub(super) fn notes(b: &mut Builder, problems: &[String]) {
    for p in problems {
        let _ = writeln!(b.html, "<p class=\"note\">{}</p>", esc(p));
    }
}

/// A CDF's lines as a table: per measure its n, minimum, median, 90th percentile and
/// maximum as the histogram reads them.
pub(super) fn cdf_table(id: &str, c: &Cdf) -> String {
    let rows: Vec<Vec<String>> = c
        .lines
        .iter()
        .map(|l| {
            let first = l.points.first().map(|p| p.0);
            let at = |q: f64| l.points.iter().find(|p| p.1 >= q).map(|p| p.0);
            vec![
                esc(&l.measure),
                l.n.to_string(),
                num(first),
                num(at(0.5)),
                num(at(0.9)),
                num(l.points.last().map(|p| p.0)),
            ]
        })
        .collect();
    let mut out = String::new();
    table(&mut out, id, "data", &["measure", "n", "min ms", "median ms", "90 % ms", "max ms"], &rows);
    out
}

/// Decodes a stored histogram (base64 of V2-deflate, µs).
pub fn decode_histogram(encoded: &str) -> Result<Histogram<u64>, String> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|e| format!("base64: {e}"))?;
    Deserializer::new().deserialize(&mut bytes.as_slice()).map_err(|e| format!("{e:?}"))
}

/// CDF lines of the downtime measures from stored histograms; what could not be read.
pub fn cdf_of(title: &str, histograms: &BTreeMap<String, String>) -> (Cdf, Vec<String>) {
    let mut lines = Vec::new();
    let mut problems = Vec::new();
    for m in MEASURES.iter().filter(|m| m.name.starts_with("downtime.")) {
        let Some(encoded) = histograms.get(m.name) else { continue };
        match decode_histogram(encoded) {
            Ok(h) if !h.is_empty() => {
                let total = h.len() as f64;
                let mut seen = 0u64;
                let points = h
                    .iter_recorded()
                    .map(|v| {
                        seen += v.count_at_value();
                        (v.value_iterated_to() as f64 / 1000.0, seen as f64 / total)
                    })
                    .collect();
                lines.push(CdfLine { measure: m.name.to_owned(), n: h.len(), points });
            }
            Ok(_) => {}
            Err(e) => problems.push(format!("the histogram of {} could not be read: {e}", m.name)),
        }
    }
    (Cdf { title: title.to_owned(), lines }, problems)
}
