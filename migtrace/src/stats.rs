//! Statistics of an experiment: per treatment (mean, standard deviation, exact order
//! statistics, 95 % confidence interval of the mean, an HDR histogram), the paper's
//! Table II per measure, and single-factor effect tables.
//!
//! Pure computation on records, below the experiment that stores the summaries and the
//! report that shows them.

use std::collections::BTreeMap;

use base64::Engine as _;
use hdrhistogram::{
    Histogram,
    serialization::{Serializer as _, V2DeflateSerializer},
};
use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF as _, StudentsT};

use crate::measure::quality::{Category, MEASURES, Reading, category, counted};
use crate::measure::record::MigrationRecord;

/// Descriptive statistics of one measure over one set of migrations, ms.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (n − 1); `None` for a single value.
    pub sd: Option<f64>,
    pub min: f64,
    /// Exact order statistics of the values ([`crate::percentile`]: nearest rank, the
    /// ⌈p·n⌉-th smallest), so p99 and p99.9 are the maximum below 100 and 1000 values.
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    /// 95 % confidence interval of the mean (Student's t); `None` for a single value.
    pub ci95: Option<(f64, f64)>,
    /// Values known only as lower bounds (censored migrations: the guest had not
    /// answered again when observation ended), counted at their bound. When there are
    /// any, the mean and the order statistics are lower bounds too, and `sd` and `ci95`
    /// are `None` (a bound has no spread).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub censored: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Significant digits of the HDR histograms: values are µs, exact below 2,048 µs;
/// above, a value is within 1/1024 of its bucket (32 µs wide at 50 ms, 512 µs at 1 s).
pub const HISTOGRAM_SIGFIG: u8 = 3;

/// Values in µs for HDR histograms.
fn histogram(values: &[f64]) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new(HISTOGRAM_SIGFIG).expect("3 significant digits is valid");
    for v in values {
        let _ = h.record((v * 1000.0).round().max(0.0) as u64);
    }
    h
}

fn encode(h: &Histogram<u64>) -> Option<String> {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new().serialize(h, &mut bytes).ok()?;
    Some(base64::engine::general_purpose::STANDARD.encode(bytes))
}

impl Stats {
    /// `None` without values.
    pub fn of(values: &[f64]) -> Option<Self> {
        Self::of_readings(&values.iter().map(|&v| Reading::Exact(v)).collect::<Vec<_>>())
    }

    /// Statistics of observed values and lower bounds (see [`Stats::censored`]); `None`
    /// without any.
    pub fn of_readings(readings: &[Reading]) -> Option<Self> {
        let values: Vec<f64> = readings.iter().map(|r| r.value()).collect();
        let censored = readings.iter().filter(|r| matches!(r, Reading::AtLeast(_))).count();
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let mean = values.iter().sum::<f64>() / n as f64;
        let sd = (n > 1 && censored == 0)
            .then(|| (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt());
        let ci95 = sd.map(|sd| {
            let t = StudentsT::new(0.0, 1.0, (n - 1) as f64).map(|d| d.inverse_cdf(0.975)).unwrap_or(1.96);
            let half = t * sd / (n as f64).sqrt();
            (mean - half, mean + half)
        });
        let rank = |q: f64| crate::percentile::of_sorted(&sorted, q).unwrap_or(f64::NAN);
        Some(Self {
            n,
            mean,
            sd,
            min: sorted[0],
            p50: rank(0.5),
            p99: rank(0.99),
            p999: rank(0.999),
            max: sorted[n - 1],
            ci95,
            censored,
        })
    }
}

/// One treatment's results.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TreatmentSummary {
    pub treatment: String,
    pub levels: BTreeMap<String, String>,
    pub migrations: usize,
    /// Completed with a healthy guest and a complete trace: the migrations the
    /// statistics are over.
    pub usable: usize,
    /// Timed out in pre-copy: QEMU never stopped the guest (see `Category`).
    #[serde(default)]
    pub did_not_converge: usize,
    pub failed: usize,
    /// The guest crashed, rebooted, or went silent and never answered again.
    pub guest_crashed: usize,
    /// The guest answered again only after observation ended: counted, its open
    /// measures as lower bounds (see `Category::Censored`).
    #[serde(default)]
    pub censored: usize,
    /// The guest's memory check found pages that lost writes (and it did not crash).
    #[serde(default)]
    pub corrupted: usize,
    /// The ring buffer lost records during the migration.
    #[serde(default)]
    pub trace_loss: usize,
    pub measures: BTreeMap<String, Stats>,
    /// HDR histograms (µs, [`HISTOGRAM_SIGFIG`] significant digits), V2-deflate
    /// serialised, base64.
    pub histograms: BTreeMap<String, String>,
}

/// One row of the paper's Table II.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Table2Row {
    pub measure: String,
    pub n: usize,
    /// Of them, lower bounds (censored migrations). When there are any, the mean and the
    /// ratios are lower bounds; a ratio whose smallest value is a bound is `None`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub censored: usize,
    /// Treatments with at least one value.
    pub treatments: usize,
    pub overall_mean: f64,
    /// Largest treatment mean over smallest; `None` when the smallest is 0 (no ratio).
    pub ratio_treatment_means: Option<f64>,
    /// Largest single measurement over smallest; `None` when the smallest is 0.
    pub ratio_all: Option<f64>,
    /// Largest standard deviation within a treatment (treatments with n ≥ 2).
    pub max_treatment_sd: Option<f64>,
    pub overall_sd: Option<f64>,
}

/// The design an experiment's effect tables are read from.
#[derive(Clone, Debug, PartialEq)]
pub enum EffectDesign {
    /// Every combination of levels: a factor's effect is its main effect, the mean of
    /// the treatment means at each level.
    Factorial,
    /// One factor at a time around a base treatment: a factor's effect is read only
    /// from treatments where every other factor is at its base level.
    Sweep { base: BTreeMap<String, String> },
}

impl EffectDesign {
    /// Whether a treatment at `levels` shows `factor`'s effect: every treatment of a
    /// factorial design; in a sweep only those with every other factor at its base level.
    pub fn shows(&self, factor: &str, levels: &BTreeMap<String, String>) -> bool {
        match self {
            EffectDesign::Factorial => true,
            EffectDesign::Sweep { base } => {
                levels.iter().all(|(f, l)| f == factor || base.get(f).is_none_or(|b| b == l))
            }
        }
    }
}

/// One cell of an effect table: a measure at one level.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EffectCell {
    /// Mean of the treatment means.
    pub mean: f64,
    /// Migrations behind it.
    pub n: usize,
    /// Of them, lower bounds: the mean is then a lower bound.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub censored: usize,
    /// Treatments whose means were averaged.
    pub treatments: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EffectRow {
    pub level: String,
    /// Treatments of the design at this level (in a sweep: with the others at base).
    pub treatments: usize,
    pub cells: BTreeMap<String, EffectCell>,
}

/// The effect of one factor on the [`EFFECT_MEASURES`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EffectTable {
    pub factor: String,
    pub rows: Vec<EffectRow>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExperimentSummary {
    pub treatments: Vec<TreatmentSummary>,
    pub table2: Vec<Table2Row>,
    pub effects: Vec<EffectTable>,
    /// "factorial" or "sweep": how the effect tables were read.
    #[serde(default)]
    pub design: String,
    /// HDR histograms of every measure over all usable migrations, merged from the
    /// treatments' (same encoding).
    #[serde(default)]
    pub histograms: BTreeMap<String, String>,
    pub migrations: usize,
    pub usable: usize,
    /// Timed out in pre-copy: the treatment does not converge (see `Category`).
    #[serde(default)]
    pub did_not_converge: usize,
    #[serde(default)]
    pub failed: usize,
    #[serde(default)]
    pub guest_crashed: usize,
    #[serde(default)]
    pub censored: usize,
    #[serde(default)]
    pub corrupted: usize,
    #[serde(default)]
    pub trace_loss: usize,
}

/// The measures shown in effect tables.
pub const EFFECT_MEASURES: &[&str] =
    &["downtime.probe_gap", "downtime.ping", "downtime.reported", "migration_time.command"];

/// Summarises `records`; `levels_of` gives each treatment's factor levels by name, in
/// the order treatments should be listed; `design` says how to read factor effects.
pub fn summarize(
    records: &[MigrationRecord],
    levels_of: &[(String, BTreeMap<String, String>)],
    design: &EffectDesign,
) -> ExperimentSummary {
    let mut treatments = Vec::new();
    let mut merged: BTreeMap<&str, Histogram<u64>> = BTreeMap::new();
    for (name, levels) in levels_of {
        let mine: Vec<&MigrationRecord> = records.iter().filter(|r| &r.treatment == name).collect();
        if mine.is_empty() {
            continue;
        }
        let count = |c: Category| mine.iter().filter(|r| category(r) == c).count();
        let mut t = TreatmentSummary {
            treatment: name.clone(),
            levels: levels.clone(),
            migrations: mine.len(),
            usable: count(Category::Usable),
            did_not_converge: count(Category::DidNotConverge),
            failed: count(Category::Failed),
            guest_crashed: count(Category::GuestUnhealthy),
            censored: count(Category::Censored),
            corrupted: count(Category::Corrupted),
            trace_loss: count(Category::TraceLoss),
            ..TreatmentSummary::default()
        };
        for m in MEASURES {
            let readings: Vec<Reading> = mine.iter().filter(|r| counted(r)).filter_map(|r| m.reading(r)).collect();
            let Some(stats) = Stats::of_readings(&readings) else { continue };
            t.measures.insert(m.name.into(), stats);
            // Distributions of what was observed: a bound is no point of one.
            let exact: Vec<f64> =
                readings.iter().filter_map(|r| if let Reading::Exact(v) = r { Some(*v) } else { None }).collect();
            let h = histogram(&exact);
            if let Some(encoded) = encode(&h) {
                t.histograms.insert(m.name.into(), encoded);
            }
            match merged.get_mut(m.name) {
                Some(all) => {
                    let _ = all.add(&h);
                }
                None => {
                    merged.insert(m.name, h);
                }
            }
        }
        treatments.push(t);
    }

    let counted_records: Vec<&MigrationRecord> = records.iter().filter(|r| counted(r)).collect();
    // A ratio over a smallest value that is only a lower bound is no bound at all; over
    // an exact one, a larger value that is a bound makes it a lower bound.
    let ratio = |max: f64, min: f64, min_is_bound: bool| (min > 0.0 && !min_is_bound).then(|| max / min);
    let table2 = MEASURES
        .iter()
        .filter_map(|m| {
            let all: Vec<Reading> = counted_records.iter().filter_map(|r| m.reading(r)).collect();
            let overall = Stats::of_readings(&all)?;
            let min_is_bound = all.iter().any(|r| matches!(r, Reading::AtLeast(v) if *v <= overall.min));
            let per: Vec<&Stats> = treatments.iter().filter_map(|t| t.measures.get(m.name)).collect();
            let lowest = per.iter().min_by(|a, b| a.mean.total_cmp(&b.mean));
            let highest = per.iter().map(|s| s.mean).fold(f64::NEG_INFINITY, f64::max);
            Some(Table2Row {
                measure: m.name.into(),
                n: overall.n,
                censored: overall.censored,
                treatments: per.len(),
                overall_mean: overall.mean,
                ratio_treatment_means: lowest.and_then(|low| ratio(highest, low.mean, low.censored > 0)),
                ratio_all: ratio(overall.max, overall.min, min_is_bound),
                max_treatment_sd: per.iter().filter_map(|s| s.sd).reduce(f64::max),
                overall_sd: overall.sd,
            })
        })
        .collect();

    let effects = effects(levels_of, &treatments, design);
    ExperimentSummary {
        design: match design {
            EffectDesign::Factorial => "factorial",
            EffectDesign::Sweep { .. } => "sweep",
        }
        .into(),
        histograms: merged.iter().filter_map(|(m, h)| Some(((*m).to_owned(), encode(h)?))).collect(),
        migrations: records.len(),
        usable: records.iter().filter(|r| category(r) == Category::Usable).count(),
        did_not_converge: treatments.iter().map(|t| t.did_not_converge).sum(),
        failed: treatments.iter().map(|t| t.failed).sum(),
        guest_crashed: treatments.iter().map(|t| t.guest_crashed).sum(),
        censored: treatments.iter().map(|t| t.censored).sum(),
        corrupted: treatments.iter().map(|t| t.corrupted).sum(),
        trace_loss: treatments.iter().map(|t| t.trace_loss).sum(),
        treatments,
        table2,
        effects,
    }
}

/// Single-factor effect tables (see [`EffectDesign`]).
fn effects(
    levels_of: &[(String, BTreeMap<String, String>)],
    treatments: &[TreatmentSummary],
    design: &EffectDesign,
) -> Vec<EffectTable> {
    let mut factors: Vec<&String> = levels_of.iter().flat_map(|(_, l)| l.keys()).collect();
    factors.sort();
    factors.dedup();
    factors
        .into_iter()
        .filter_map(|factor| {
            let shows = |levels: &BTreeMap<String, String>| design.shows(factor, levels);
            let mut levels: Vec<&String> = Vec::new();
            for (_, l) in levels_of.iter().filter(|(_, l)| shows(l)) {
                if let Some(level) = l.get(factor)
                    && !levels.contains(&level)
                {
                    levels.push(level);
                }
            }
            if levels.len() < 2 {
                return None;
            }
            let rows = levels
                .into_iter()
                .map(|level| {
                    let names: Vec<&String> = levels_of
                        .iter()
                        .filter(|(_, l)| shows(l) && l.get(factor) == Some(level))
                        .map(|(n, _)| n)
                        .collect();
                    let at: Vec<&TreatmentSummary> =
                        treatments.iter().filter(|t| names.contains(&&t.treatment)).collect();
                    let cells = EFFECT_MEASURES
                        .iter()
                        .filter_map(|m| {
                            let stats: Vec<&Stats> = at.iter().filter_map(|t| t.measures.get(*m)).collect();
                            (!stats.is_empty()).then(|| {
                                let cell = EffectCell {
                                    mean: stats.iter().map(|s| s.mean).sum::<f64>() / stats.len() as f64,
                                    n: stats.iter().map(|s| s.n).sum(),
                                    censored: stats.iter().map(|s| s.censored).sum(),
                                    treatments: stats.len(),
                                };
                                ((*m).to_owned(), cell)
                            })
                        })
                        .collect();
                    EffectRow { level: level.clone(), treatments: names.len(), cells }
                })
                .collect();
            Some(EffectTable { factor: factor.clone(), rows })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        hypervisor::{GuestCheck, MigrationOutcome, MigrationParams, Status},
        measure::timeline::Evidence,
        probe::tracer::TraceHealth,
    };

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn stats_by_hand() {
        // 2, 4, 4, 4, 5, 5, 7, 9: mean 5, sample sd sqrt(32/7).
        let s = Stats::of(&[9.0, 4.0, 2.0, 4.0, 5.0, 4.0, 7.0, 5.0]).expect("stats");
        assert_eq!(s.n, 8);
        assert!(close(s.mean, 5.0));
        let sd = (32.0f64 / 7.0).sqrt();
        assert!(close(s.sd.expect("sd"), sd));
        assert_eq!((s.min, s.max), (2.0, 9.0));
        // t(0.975, 7) = 2.364624; half-width = t * sd / sqrt(8).
        let half = 2.364624 * sd / 8f64.sqrt();
        let (lo, hi) = s.ci95.expect("ci");
        assert!((lo - (5.0 - half)).abs() < 1e-5 && (hi - (5.0 + half)).abs() < 1e-5);
        // Nearest rank: p50 = 4th smallest (4), p99 = p99.9 = 8th (9).
        assert_eq!((s.p50, s.p99, s.p999), (4.0, 9.0, 9.0));
        let one = Stats::of(&[3.5]).expect("one");
        assert_eq!((one.sd, one.ci95), (None, None), "no spread from one value");
        assert_eq!((one.p50, one.p99), (3.5, 3.5));
        assert_eq!(Stats::of(&[]), None);
    }

    #[test]
    fn percentiles_are_observed_values_never_above_max() {
        // HDR buckets at 3 significant digits would put 150.7 ms in a bucket reported
        // as 150.783 ms, above the maximum.
        let v = [10.0, 20.0, 30.0, 150.7];
        let s = Stats::of(&v).expect("stats");
        assert_eq!((s.p50, s.p99, s.max), (20.0, 150.7, 150.7));
        let h = histogram(&v);
        assert!(h.value_at_quantile(0.99) as f64 / 1e3 > 150.7, "the bucket value overshoots");
        // 1000 values 1..=1000: p99.9 is the 999th, p99 the 990th.
        let many: Vec<f64> = (1..=1000).map(f64::from).collect();
        let s = Stats::of(&many).expect("stats");
        assert_eq!((s.p50, s.p99, s.p999, s.max), (500.0, 990.0, 999.0, 1000.0));
    }

    #[test]
    fn histogram_precision_is_what_the_docs_say() {
        let h = histogram(&[1.234, 12.345, 123.456]);
        assert_eq!(h.len(), 3);
        assert_eq!(h.min(), 1234, "exact below 2,048 µs");
        assert_eq!(h.equivalent_range(2047), 1);
        assert_eq!(h.equivalent_range(50_000), 32, "32 µs buckets at 50 ms");
        assert_eq!(h.equivalent_range(1_000_000), 512, "512 µs buckets at 1 s");
        assert!((h.max() as f64 - 123_456.0).abs() / 123_456.0 < 1.0 / 1024.0);
    }

    fn record(treatment: &str, rep: u32, probe_gap: f64, ping: f64) -> MigrationRecord {
        let outcome = MigrationOutcome::completed_for_test(Some(1));
        let mut r = MigrationRecord::new(rep, treatment.into(), MigrationParams::default(), outcome);
        r.downtime_ms.probe_gap = Some(probe_gap);
        r.downtime_ms.ping = Some(ping);
        r
    }

    fn levels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(f, l)| ((*f).to_owned(), (*l).to_owned())).collect()
    }

    #[test]
    fn table2_by_hand_with_a_zero_ping() {
        // Treatment a: probe gaps 30, 40, 50 (mean 40, sd 10); ping 0, 50, 0.
        // Treatment b: probe gaps 80, 100 (mean 90, sd √200); ping 50, 100.
        let records = vec![
            record("a", 0, 30.0, 0.0),
            record("a", 1, 40.0, 50.0),
            record("a", 2, 50.0, 0.0),
            record("b", 0, 80.0, 50.0),
            record("b", 1, 100.0, 100.0),
        ];
        let levels_of = vec![("a".to_owned(), levels(&[("rate", "0")])), ("b".to_owned(), levels(&[("rate", "2000")]))];
        let s = summarize(&records, &levels_of, &EffectDesign::Factorial);
        let row = |m: &str| s.table2.iter().find(|r| r.measure == m).expect("row").clone();
        let gap = row("downtime.probe_gap");
        assert_eq!((gap.n, gap.treatments), (5, 2));
        assert!(close(gap.overall_mean, 60.0));
        assert!(close(gap.ratio_treatment_means.expect("ratio"), 90.0 / 40.0));
        assert!(close(gap.ratio_all.expect("ratio"), 100.0 / 30.0));
        assert!(close(gap.max_treatment_sd.expect("sd"), 200f64.sqrt()));
        // Overall: values 30, 40, 50, 80, 100; mean 60; Σ(x−60)² = 900+400+100+400+1600.
        assert!(close(gap.overall_sd.expect("sd"), (3400.0f64 / 4.0).sqrt()));
        let ping = row("downtime.ping");
        assert!(close(ping.overall_mean, 40.0));
        // Treatment a's ping mean is 50/3 > 0, but single pings of 0 ms exist: no ratio.
        assert!(close(ping.ratio_treatment_means.expect("ratio"), 75.0 / (50.0 / 3.0)));
        assert_eq!(ping.ratio_all, None);
    }

    #[test]
    fn excluded_categories_are_counted_apart() {
        let mut failed = record("a", 0, 999.0, 0.0);
        failed.outcome.status = Status::Failed;
        let mut hung = record("a", 1, 999.0, 0.0);
        hung.guest = Some(GuestCheck { unreachable: true, ..GuestCheck::default() });
        let mut lossy = record("a", 2, 999.0, 0.0);
        lossy.trace_health = Some(TraceHealth { lost_records: 3, ..TraceHealth::default() });
        // A full kernel map lost vCPU stamps: as incomplete as a lost record.
        let mut full_map = record("a", 4, 999.0, 0.0);
        let diagnostics = [("vcpu-run-full".to_owned(), 1)].into();
        full_map.trace_health = Some(TraceHealth { diagnostics, ..TraceHealth::default() });
        // A guest frame the classifier could not parse is no loss of ours.
        let mut odd_frame = record("a", 5, 40.0, 50.0);
        let diagnostics = [("ip-layout".to_owned(), 2)].into();
        odd_frame.trace_health = Some(TraceHealth { diagnostics, ..TraceHealth::default() });
        let good = record("a", 3, 40.0, 50.0);
        let s = summarize(
            &[failed, hung, lossy, good, full_map, odd_frame],
            &[("a".into(), levels(&[]))],
            &EffectDesign::Factorial,
        );
        let t = &s.treatments[0];
        assert_eq!((t.migrations, t.usable, t.failed, t.guest_crashed, t.trace_loss), (6, 2, 1, 1, 2));
        assert_eq!(t.measures["downtime.probe_gap"].max, 40.0, "only the usable records");
        assert_eq!((s.usable, s.failed, s.guest_crashed, s.trace_loss), (2, 1, 1, 2));
    }

    #[test]
    fn censored_migrations_count_as_lower_bounds() {
        // Probe gaps 30 and 50, and a guest silent for at least 5000 ms that answered
        // after the observation.
        let mut late = crate::measure::quality::tests::silent(5000.0, true);
        late.treatment = "a".into();
        late.repetition = 2;
        let mut records = vec![record("a", 0, 30.0, 0.0), record("a", 1, 50.0, 50.0), late];
        records[0].downtime_ms.vcpu = Some(20.0);
        records[1].downtime_ms.vcpu = Some(30.0);
        let s = summarize(&records, &[("a".into(), levels(&[]))], &EffectDesign::Factorial);
        let t = &s.treatments[0];
        assert_eq!((t.usable, t.censored, t.guest_crashed, s.censored), (2, 1, 0, 1));
        let gap = &t.measures["downtime.probe_gap"];
        assert_eq!((gap.n, gap.censored, gap.max), (3, 1, 5000.0));
        assert!(close(gap.mean, 5080.0 / 3.0), "a lower bound of the mean: {}", gap.mean);
        assert_eq!((gap.sd, gap.ci95), (None, None), "no spread from a bound");
        // Its vCPU blackout is whole: an exact value among exact ones.
        let vcpu = &t.measures["downtime.vcpu"];
        assert_eq!((vcpu.n, vcpu.censored), (3, 0));
        assert!(vcpu.sd.is_some());
        let row = s.table2.iter().find(|r| r.measure == "downtime.probe_gap").expect("row");
        assert_eq!((row.n, row.censored), (3, 1));
        assert!(close(row.ratio_all.expect("ratio over an exact minimum"), 5000.0 / 30.0));
        assert_eq!(row.overall_sd, None);
        // Where the smallest value is itself a bound, there is no ratio.
        let mut short = crate::measure::quality::tests::silent(10.0, true);
        short.treatment = "a".into();
        records.push(short);
        let s = summarize(&records, &[("a".into(), levels(&[]))], &EffectDesign::Factorial);
        let row = s.table2.iter().find(|r| r.measure == "downtime.probe_gap").expect("row");
        assert_eq!((row.censored, row.ratio_all), (2, None));
    }

    #[test]
    fn fallback_figures_are_a_measure_of_their_own() {
        let mut traced = record("a", 0, 40.0, 0.0);
        traced.downtime_ms.vcpu = Some(20.0);
        traced.evidence.insert("downtime_ms.vcpu".into(), Evidence::Ebpf);
        let mut qmp = record("a", 1, 40.0, 0.0);
        qmp.downtime_ms.vcpu = Some(35.0);
        qmp.evidence.insert("downtime_ms.vcpu".into(), Evidence::Qmp);
        let s = summarize(&[traced, qmp], &[("a".into(), levels(&[]))], &EffectDesign::Factorial);
        let m = &s.treatments[0].measures;
        assert_eq!((m["downtime.vcpu"].n, m["downtime.vcpu"].mean), (1, 20.0));
        assert_eq!((m["downtime.vcpu.qmp"].n, m["downtime.vcpu.qmp"].mean), (1, 35.0));
    }

    #[test]
    fn factorial_effects_are_means_of_treatment_means() {
        // 2 × 2: rate {0, 2000} × wset {32, 64}. Treatment means of the probe gap:
        // (0,32) 10 from 3 migrations, (0,64) 30 from 1, (2000,32) 50, (2000,64) 90.
        let mut records = vec![record("r0w32", 0, 8.0, 0.0), record("r0w32", 1, 10.0, 0.0)];
        records.push(record("r0w32", 2, 12.0, 0.0));
        records.push(record("r0w64", 0, 30.0, 0.0));
        records.push(record("r2w32", 0, 50.0, 0.0));
        records.push(record("r2w64", 0, 90.0, 0.0));
        let levels_of = vec![
            ("r0w32".to_owned(), levels(&[("rate", "0"), ("wset", "32")])),
            ("r0w64".to_owned(), levels(&[("rate", "0"), ("wset", "64")])),
            ("r2w32".to_owned(), levels(&[("rate", "2000"), ("wset", "32")])),
            ("r2w64".to_owned(), levels(&[("rate", "2000"), ("wset", "64")])),
        ];
        let s = summarize(&records, &levels_of, &EffectDesign::Factorial);
        let cell = |factor: &str, level: &str| {
            let t = s.effects.iter().find(|e| e.factor == factor).expect("table");
            t.rows.iter().find(|r| r.level == level).expect("row").cells["downtime.probe_gap"].clone()
        };
        // rate=0: (10 + 30) / 2 = 20, not the pooled (8+10+12+30)/4 = 15.
        assert_eq!(cell("rate", "0"), EffectCell { mean: 20.0, n: 4, censored: 0, treatments: 2 });
        assert_eq!(cell("rate", "2000"), EffectCell { mean: 70.0, n: 2, censored: 0, treatments: 2 });
        assert_eq!(cell("wset", "32"), EffectCell { mean: 30.0, n: 4, censored: 0, treatments: 2 });
        assert_eq!(cell("wset", "64"), EffectCell { mean: 60.0, n: 2, censored: 0, treatments: 2 });
    }

    #[test]
    fn sweep_effects_hold_the_other_factors_at_base() {
        // Base rate=0, wset=32; the sweep adds rate=2000 and wset=64 (each with the
        // other at base). Probe-gap means: base 10, rate=2000 → 50, wset=64 → 30.
        let records = vec![record("base", 0, 10.0, 0.0), record("rate", 0, 50.0, 0.0), record("wset", 0, 30.0, 0.0)];
        let levels_of = vec![
            ("base".to_owned(), levels(&[("rate", "0"), ("wset", "32")])),
            ("rate".to_owned(), levels(&[("rate", "2000"), ("wset", "32")])),
            ("wset".to_owned(), levels(&[("rate", "0"), ("wset", "64")])),
        ];
        let base = levels(&[("rate", "0"), ("wset", "32")]);
        let s = summarize(&records, &levels_of, &EffectDesign::Sweep { base });
        let rows = |factor: &str| -> Vec<(String, f64, usize)> {
            let t = s.effects.iter().find(|e| e.factor == factor).expect("table");
            t.rows.iter().map(|r| (r.level.clone(), r.cells["downtime.probe_gap"].mean, r.treatments)).collect()
        };
        // rate=0 is the base treatment alone: pooling every rate=0 treatment would mix
        // in the wset=64 sweep and give (10 + 30) / 2 = 20.
        assert_eq!(rows("rate"), [("0".to_owned(), 10.0, 1), ("2000".to_owned(), 50.0, 1)]);
        assert_eq!(rows("wset"), [("32".to_owned(), 10.0, 1), ("64".to_owned(), 30.0, 1)]);
        assert_eq!(s.design, "sweep");
    }

    #[test]
    fn merged_histograms_hold_every_usable_value() {
        let records = vec![record("a", 0, 30.0, 0.0), record("b", 0, 80.0, 50.0), record("b", 1, 100.0, 0.0)];
        let s = summarize(
            &records,
            &[("a".into(), levels(&[("x", "1")])), ("b".into(), levels(&[("x", "2")]))],
            &EffectDesign::Factorial,
        );
        let bytes =
            base64::engine::general_purpose::STANDARD.decode(&s.histograms["downtime.probe_gap"]).expect("base64");
        let h: Histogram<u64> =
            hdrhistogram::serialization::Deserializer::new().deserialize(&mut bytes.as_slice()).expect("histogram");
        assert_eq!((h.len(), h.min(), h.max()), (3, 30_000, h.highest_equivalent(100_000)));
    }
}
