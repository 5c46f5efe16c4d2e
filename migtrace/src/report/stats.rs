//! Statistics of an experiment: per treatment (mean, standard deviation, percentiles from
//! HDR histograms, 95 % confidence interval of the mean), the paper's Table II per
//! measure, and single-factor effect tables.

use std::collections::BTreeMap;

use base64::Engine as _;
use hdrhistogram::{
    Histogram,
    serialization::{Serializer as _, V2DeflateSerializer},
};
use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF as _, StudentsT};

use crate::{hypervisor::Status, measure::record::MigrationRecord};

/// A measure: its name and how to read it (ms) from a record.
pub struct Measure {
    pub name: &'static str,
    pub get: fn(&MigrationRecord) -> Option<f64>,
}

/// Every downtime and migration-time measure of a record.
pub const MEASURES: &[Measure] = &[
    Measure { name: "downtime.ping", get: |r| r.downtime_ms.ping },
    Measure { name: "downtime.ping_max_gap", get: |r| r.downtime_ms.ping_max_gap },
    Measure { name: "downtime.probe_gap", get: |r| r.downtime_ms.probe_gap },
    Measure { name: "downtime.vcpu", get: |r| r.downtime_ms.vcpu },
    Measure { name: "downtime.reported", get: |r| r.downtime_ms.reported },
    Measure { name: "downtime.heartbeat_gap", get: |r| r.downtime_ms.heartbeat_gap },
    Measure { name: "migration_time.command", get: |r| r.migration_time_ms.command },
    Measure { name: "migration_time.reported", get: |r| r.migration_time_ms.reported },
    Measure { name: "migration_time.traced", get: |r| r.migration_time_ms.traced },
    Measure { name: "migration_time.traced_to_resume", get: |r| r.migration_time_ms.traced_to_resume },
];

/// Whether a record's measures describe a healthy migration (completed, guest fine).
pub fn usable(r: &MigrationRecord) -> bool {
    r.outcome.status == Status::Completed && r.guest.as_ref().is_none_or(|g| g.healthy())
}

/// Descriptive statistics of one measure over one set of migrations, ms.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (n − 1); 0 for a single value.
    pub sd: f64,
    pub min: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    /// 95 % confidence interval of the mean (Student's t); equal bounds for n = 1.
    pub ci95: (f64, f64),
}

/// Values in µs for HDR histograms (3 significant digits, µs resolution).
fn histogram(values: &[f64]) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new(3).expect("3 significant digits is valid");
    for v in values {
        let _ = h.record((v * 1000.0).round().max(0.0) as u64);
    }
    h
}

impl Stats {
    /// `None` without values.
    pub fn of(values: &[f64]) -> Option<Self> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let sd =
            if n > 1 { (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() } else { 0.0 };
        let half = if n > 1 {
            let t = StudentsT::new(0.0, 1.0, (n - 1) as f64).map(|d| d.inverse_cdf(0.975)).unwrap_or(1.96);
            t * sd / (n as f64).sqrt()
        } else {
            0.0
        };
        let h = histogram(values);
        let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
        Some(Self {
            n,
            mean,
            sd,
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            p50: q(0.5),
            p99: q(0.99),
            p999: q(0.999),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            ci95: (mean - half, mean + half),
        })
    }
}

/// One treatment's results.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TreatmentSummary {
    pub treatment: String,
    pub levels: BTreeMap<String, String>,
    pub migrations: usize,
    /// Completed with a healthy guest: the migrations the statistics are over.
    pub usable: usize,
    pub failed: usize,
    /// The guest crashed, rebooted or hung after the migration.
    pub guest_crashed: usize,
    /// The guest's memory check found pages that lost writes (and it did not crash).
    #[serde(default)]
    pub corrupted: usize,
    pub measures: BTreeMap<String, Stats>,
    /// HDR histograms (µs, 3 significant digits), V2-deflate serialised, base64.
    pub histograms: BTreeMap<String, String>,
}

/// One row of the paper's Table II.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Table2Row {
    pub measure: String,
    pub n: usize,
    pub overall_mean: f64,
    /// Largest treatment mean over smallest.
    pub ratio_treatment_means: f64,
    /// Largest single measurement over smallest.
    pub ratio_all: f64,
    /// Largest standard deviation within a treatment.
    pub max_treatment_sd: f64,
    pub overall_sd: f64,
}

/// Mean of each measure per level of one factor (over all treatments at that level).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EffectTable {
    pub factor: String,
    /// (level, migrations, measure → mean)
    pub rows: Vec<(String, usize, BTreeMap<String, f64>)>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExperimentSummary {
    pub treatments: Vec<TreatmentSummary>,
    pub table2: Vec<Table2Row>,
    pub effects: Vec<EffectTable>,
    pub migrations: usize,
    pub usable: usize,
}

/// The measures shown in effect tables.
const EFFECT_MEASURES: &[&str] =
    &["downtime.probe_gap", "downtime.ping", "downtime.reported", "migration_time.command"];

/// Summarises `records`; `levels_of` gives each treatment's factor levels by name, in
/// the order treatments should be listed.
pub fn summarize(records: &[MigrationRecord], levels_of: &[(String, BTreeMap<String, String>)]) -> ExperimentSummary {
    let mut treatments = Vec::new();
    for (name, levels) in levels_of {
        let mine: Vec<&MigrationRecord> = records.iter().filter(|r| &r.treatment == name).collect();
        if mine.is_empty() {
            continue;
        }
        let ok: Vec<&MigrationRecord> = mine.iter().copied().filter(|r| usable(r)).collect();
        let mut t = TreatmentSummary {
            treatment: name.clone(),
            levels: levels.clone(),
            migrations: mine.len(),
            usable: ok.len(),
            failed: mine.iter().filter(|r| r.outcome.status != Status::Completed).count(),
            guest_crashed: mine
                .iter()
                .filter(|r| r.guest.as_ref().is_some_and(|g| g.crashed || g.rebooted || g.unreachable))
                .count(),
            corrupted: mine
                .iter()
                .filter(|r| {
                    r.guest.as_ref().is_some_and(|g| g.corrupted() && !(g.crashed || g.rebooted || g.unreachable))
                })
                .count(),
            ..TreatmentSummary::default()
        };
        for m in MEASURES {
            let values: Vec<f64> = ok.iter().filter_map(|r| (m.get)(r)).filter(|v| v.is_finite()).collect();
            if let Some(stats) = Stats::of(&values) {
                t.measures.insert(m.name.into(), stats);
                let mut bytes = Vec::new();
                if V2DeflateSerializer::new().serialize(&histogram(&values), &mut bytes).is_ok() {
                    t.histograms.insert(m.name.into(), base64::engine::general_purpose::STANDARD.encode(bytes));
                }
            }
        }
        treatments.push(t);
    }

    let usable_records: Vec<&MigrationRecord> = records.iter().filter(|r| usable(r)).collect();
    let table2 = MEASURES
        .iter()
        .filter_map(|m| {
            let all: Vec<f64> = usable_records.iter().filter_map(|r| (m.get)(r)).filter(|v| v.is_finite()).collect();
            let overall = Stats::of(&all)?;
            let per: Vec<&Stats> = treatments.iter().filter_map(|t| t.measures.get(m.name)).collect();
            let means: Vec<f64> = per.iter().map(|s| s.mean).collect();
            let ratio = |max: f64, min: f64| if min > 0.0 { max / min } else { f64::INFINITY };
            Some(Table2Row {
                measure: m.name.into(),
                n: overall.n,
                overall_mean: overall.mean,
                ratio_treatment_means: ratio(
                    means.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    means.iter().copied().fold(f64::INFINITY, f64::min),
                ),
                ratio_all: ratio(overall.max, overall.min),
                max_treatment_sd: per.iter().map(|s| s.sd).fold(0.0, f64::max),
                overall_sd: overall.sd,
            })
        })
        .collect();

    let mut factors: Vec<String> = levels_of.iter().flat_map(|(_, l)| l.keys().cloned()).collect();
    factors.sort();
    factors.dedup();
    let effects = factors
        .into_iter()
        .filter_map(|factor| {
            let mut levels: Vec<String> = levels_of.iter().filter_map(|(_, l)| l.get(&factor).cloned()).collect();
            levels.dedup();
            let mut seen = Vec::new();
            levels.retain(|l| {
                if seen.contains(l) {
                    false
                } else {
                    seen.push(l.clone());
                    true
                }
            });
            if levels.len() < 2 {
                return None;
            }
            let rows = levels
                .into_iter()
                .map(|level| {
                    let names: Vec<&String> =
                        levels_of.iter().filter(|(_, l)| l.get(&factor) == Some(&level)).map(|(n, _)| n).collect();
                    let at: Vec<&&MigrationRecord> =
                        usable_records.iter().filter(|r| names.contains(&&r.treatment)).collect();
                    let means = EFFECT_MEASURES
                        .iter()
                        .filter_map(|name| {
                            let m = MEASURES.iter().find(|m| m.name == *name)?;
                            let v: Vec<f64> = at.iter().filter_map(|r| (m.get)(r)).collect();
                            (!v.is_empty()).then(|| ((*name).to_owned(), v.iter().sum::<f64>() / v.len() as f64))
                        })
                        .collect();
                    (level, at.len(), means)
                })
                .collect();
            Some(EffectTable { factor, rows })
        })
        .collect();

    ExperimentSummary { treatments, table2, effects, migrations: records.len(), usable: usable_records.len() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_by_hand() {
        // 2, 4, 4, 4, 5, 5, 7, 9: mean 5, sample sd sqrt(32/7).
        let s = Stats::of(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).expect("stats");
        assert_eq!(s.n, 8);
        assert!((s.mean - 5.0).abs() < 1e-12);
        assert!((s.sd - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        assert_eq!((s.min, s.max), (2.0, 9.0));
        // t(0.975, 7) = 2.364624; half-width = t * sd / sqrt(8).
        let half = 2.364624 * (32.0f64 / 7.0).sqrt() / 8f64.sqrt();
        assert!((s.ci95.0 - (5.0 - half)).abs() < 1e-4 && (s.ci95.1 - (5.0 + half)).abs() < 1e-4);
        assert!((s.p50 - 4.0).abs() < 0.01);
        assert!((s.p99 - 9.0).abs() < 0.01);
        let one = Stats::of(&[3.5]).expect("one");
        assert_eq!((one.sd, one.ci95), (0.0, (3.5, 3.5)));
        assert_eq!(Stats::of(&[]), None);
    }

    #[test]
    fn histogram_resolution_is_a_microsecond_at_three_digits() {
        let h = histogram(&[1.234, 12.345, 123.456]);
        assert_eq!(h.len(), 3);
        assert_eq!(h.min(), 1234);
        // 123456 µs at 3 significant digits: within 0.1 %.
        assert!((h.max() as f64 - 123_456.0).abs() / 123_456.0 < 0.001);
    }
}
