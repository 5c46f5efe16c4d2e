//! How well the model predicts migrations it was not fitted on: leave-one-treatment-out
//! cross-validation, beside the noise floor (how far repeated identical migrations
//! are from their treatment's mean, the best any prediction of a treatment can do).
//!
//! Nothing is scored in the model's favour: every held-out migration counts, whatever
//! was predicted (see [`ErrorBand`]), and the variant `predict` would use is chosen
//! within each fold, without the held-out treatment, before that treatment is scored.

use std::collections::{BTreeMap, BTreeSet};

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::{Deserialize, Serialize};

use super::{
    ErrorBand, Measure, ModelError, fit,
    precopy::{Variant, predict},
};
use crate::percentile;

/// The file `model validate` writes into the experiment directory (the HTML report
/// shows it when present), and its plot.
pub const VALIDATION_FILE: &str = "validation.json";
pub const VALIDATION_SVG: &str = "validation.svg";

/// One held-out migration's measure, predicted by a model fitted without its treatment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeldOut {
    pub treatment: String,
    pub variant: Variant,
    pub measure: Measure,
    pub predicted: f64,
    pub measured: f64,
}

impl HeldOut {
    /// A prediction that is a positive, finite number: one an error can be a fraction of.
    pub fn bounded(&self) -> bool {
        self.predicted.is_finite() && self.predicted > 0.0
    }

    /// Absolute percentage error, %; infinite for an unbounded prediction.
    pub fn ape(&self) -> f64 {
        if self.bounded() { (self.predicted - self.measured).abs() / self.measured * 100.0 } else { f64::INFINITY }
    }

    /// Measured ÷ predicted; infinite for an unbounded prediction.
    pub fn ratio(&self) -> f64 {
        if self.bounded() { self.measured / self.predicted } else { f64::INFINITY }
    }
}

/// Repeated identical migrations against their treatment's mean.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NoiseFloor {
    pub n: usize,
    /// Median and 90th percentile of |x − m₋| · √((n−1)/n) ÷ x, %, over every repetition
    /// x of a treatment with n ≥ 2 repetitions, m₋ the mean of its others: the error of a
    /// perfect predictor of the treatment's mean. x − m₋ has the variance σ²·n/(n−1)
    /// (the others' mean is uncertain too); the factor brings it back to σ².
    pub median_ape: f64,
    pub p90_ape: f64,
}

/// `validation.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    pub migrations: usize,
    pub treatments: usize,
    pub errors: BTreeMap<Variant, BTreeMap<Measure, ErrorBand>>,
    pub noise_floor: BTreeMap<Measure, NoiseFloor>,
    /// The variant with the smaller held-out errors over all folds: what `predict` uses.
    pub preferred: Variant,
    /// The errors of choosing the variant as `preferred` is chosen, but within each fold
    /// on the training treatments alone (a leave-one-out inside them), then scoring the
    /// held-out treatment with it: an estimate of the preferred variant's error that did
    /// not see the migrations it scores. Empty below 3 treatments.
    #[serde(default)]
    pub chosen: BTreeMap<Measure, ErrorBand>,
    /// The variant each held-out treatment was scored with in `chosen`.
    #[serde(default)]
    pub chosen_variants: BTreeMap<String, Variant>,
    /// Every held-out prediction (the plot's points).
    pub points: Vec<HeldOut>,
}

impl Validation {
    /// `DIR/validation.json`, if `model validate` wrote one there.
    pub fn load(dir: &std::path::Path) -> Result<Option<Self>, ModelError> {
        let path = dir.join(VALIDATION_FILE);
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ModelError::Io { path: shown, source }),
        };
        serde_json::from_str(&text).map(Some).map_err(|source| ModelError::Validation { path: shown, source })
    }
}

/// Fits on all treatments but one and predicts that one, for every treatment.
pub fn cross_validate(obs: &[fit::Observation]) -> Result<Validation, ModelError> {
    let treatments: BTreeSet<&str> = obs.iter().map(|o| o.treatment.as_str()).collect();
    let points = held_out(obs)?;
    let errors = bands(&points);
    let preferred = preferred_of(&errors);
    // The choice itself, validated: per fold, the variant an inner leave-one-out over
    // the training treatments prefers, scored on the held-out treatment.
    let mut chosen_points = Vec::new();
    let mut chosen_variants = BTreeMap::new();
    if treatments.len() >= 3 {
        for &held in &treatments {
            let train: Vec<fit::Observation> = obs.iter().filter(|o| o.treatment != held).cloned().collect();
            let variant = preferred_of(&bands(&held_out(&train)?));
            chosen_variants.insert(held.to_owned(), variant);
            chosen_points.extend(points.iter().filter(|p| p.treatment == held && p.variant == variant).cloned());
        }
    }
    Ok(Validation {
        migrations: obs.len(),
        treatments: treatments.len(),
        chosen: Measure::ALL
            .into_iter()
            .filter_map(|m| {
                let sel: Vec<&HeldOut> = chosen_points.iter().filter(|p| p.measure == m).collect();
                (!sel.is_empty()).then(|| (m, band(&sel)))
            })
            .collect(),
        chosen_variants,
        errors,
        noise_floor: noise_floor(obs),
        preferred,
        points,
    })
}

/// Every migration of every treatment predicted by both variants of a model fitted on
/// the other treatments.
fn held_out(obs: &[fit::Observation]) -> Result<Vec<HeldOut>, ModelError> {
    let treatments: BTreeSet<&str> = obs.iter().map(|o| o.treatment.as_str()).collect();
    if treatments.len() < 2 {
        return Err(ModelError::TooFewTreatments(treatments.len()));
    }
    let mut points = Vec::new();
    for &held in &treatments {
        let train: Vec<fit::Observation> = obs.iter().filter(|o| o.treatment != held).cloned().collect();
        let params = fit::fit(&train).map_err(|e| ModelError::Fit(format!("without treatment {held}: {e}")))?;
        for o in obs.iter().filter(|o| o.treatment == held) {
            for variant in Variant::ALL {
                let p = predict(&params, &o.vm, variant)
                    .map_err(|e| ModelError::Fit(format!("predicting treatment {held}: {e}")))?;
                for (&measure, &measured) in &o.measured {
                    points.push(HeldOut {
                        treatment: held.to_owned(),
                        variant,
                        measure,
                        predicted: measure.of(&p),
                        measured,
                    });
                }
            }
        }
    }
    Ok(points)
}

/// The variant with the smaller sum of median errors on migration time and
/// guest-observed downtime (the simulation on a tie).
fn preferred_of(errors: &BTreeMap<Variant, BTreeMap<Measure, ErrorBand>>) -> Variant {
    let score = |v: Variant| {
        let e = errors.get(&v);
        let m = |m: Measure| e.and_then(|e| e.get(&m)).map_or(f64::INFINITY, |b| b.median_ape);
        m(Measure::MigrationTime) + m(Measure::GuestDowntime)
    };
    if score(Variant::ClosedForm) < score(Variant::Simulation) { Variant::ClosedForm } else { Variant::Simulation }
}

/// Per variant and measure: median and 90th percentile APE, and the ratios for
/// intervals, over every point (nearest rank, unbounded predictions ranked as infinite).
pub fn bands(points: &[HeldOut]) -> BTreeMap<Variant, BTreeMap<Measure, ErrorBand>> {
    let mut out: BTreeMap<Variant, BTreeMap<Measure, ErrorBand>> = BTreeMap::new();
    for variant in Variant::ALL {
        for measure in Measure::ALL {
            let sel: Vec<&HeldOut> = points.iter().filter(|p| p.variant == variant && p.measure == measure).collect();
            if !sel.is_empty() {
                out.entry(variant).or_default().insert(measure, band(&sel));
            }
        }
    }
    out
}

/// The [`ErrorBand`] of some held-out predictions (at least one).
fn band(sel: &[&HeldOut]) -> ErrorBand {
    let apes: Vec<f64> = sel.iter().map(|p| p.ape()).collect();
    let ratios: Vec<f64> = sel.iter().map(|p| p.ratio()).collect();
    let at = |v: &[f64], q: f64| percentile::of(v, q).unwrap_or(f64::INFINITY);
    ErrorBand {
        n: sel.len(),
        unbounded: sel.iter().filter(|p| !p.bounded()).count(),
        median_ape: at(&apes, 0.5),
        p90_ape: at(&apes, 0.9),
        ratio_p10: at(&ratios, 0.1),
        ratio_p90: at(&ratios, 0.9),
    }
}

/// The spread of repeated identical migrations around their treatment's mean, per
/// measure (see [`NoiseFloor`]).
pub fn noise_floor(obs: &[fit::Observation]) -> BTreeMap<Measure, NoiseFloor> {
    let mut by_treatment: BTreeMap<&str, Vec<&fit::Observation>> = BTreeMap::new();
    for o in obs {
        by_treatment.entry(&o.treatment).or_default().push(o);
    }
    let mut out = BTreeMap::new();
    for measure in Measure::ALL {
        let mut apes = Vec::new();
        for reps in by_treatment.values() {
            let values: Vec<f64> = reps.iter().filter_map(|o| o.measured.get(&measure).copied()).collect();
            let n = values.len() as f64;
            if values.len() < 2 {
                continue;
            }
            let sum: f64 = values.iter().sum();
            let scale = ((n - 1.0) / n).sqrt();
            for &x in &values {
                let others = (sum - x) / (n - 1.0);
                apes.push((others - x).abs() * scale / x * 100.0);
            }
        }
        if !apes.is_empty() {
            out.insert(
                measure,
                NoiseFloor {
                    n: apes.len(),
                    median_ape: percentile::of(&apes, 0.5).unwrap_or(f64::NAN),
                    p90_ape: percentile::of(&apes, 0.9).unwrap_or(f64::NAN),
                },
            );
        }
    }
    out
}

/// One measure's held-out errors (median and p90 absolute percentage error, %): closed
/// form, simulation, the variant chosen within each fold, noise floor, in that order.
pub struct ErrorRow {
    pub measure: Measure,
    pub n: usize,
    /// Unbounded predictions (scored as infinite errors) of either variant.
    pub unbounded: usize,
    pub ape: [Option<f64>; 8],
}

/// The columns of [`ErrorRow::ape`].
pub const ERROR_COLUMNS: [&str; 8] = [
    "closed form: median APE",
    "p90 APE",
    "simulation: median APE",
    "p90 APE",
    "chosen per fold: median APE",
    "p90 APE",
    "noise floor: median",
    "p90",
];

/// Per measure that either variant predicted, its [`ErrorRow`].
pub fn error_rows(v: &Validation) -> Vec<ErrorRow> {
    Measure::ALL
        .iter()
        .filter_map(|&measure| {
            let band = |variant| v.errors.get(&variant).and_then(|e| e.get(&measure));
            let (c, s) = (band(Variant::ClosedForm), band(Variant::Simulation));
            if c.is_none() && s.is_none() {
                return None;
            }
            let noise = v.noise_floor.get(&measure);
            let chosen = v.chosen.get(&measure);
            Some(ErrorRow {
                measure,
                n: s.or(c).map_or(0, |b| b.n),
                unbounded: c.map_or(0, |b| b.unbounded) + s.map_or(0, |b| b.unbounded),
                ape: [
                    c.map(|b| b.median_ape),
                    c.map(|b| b.p90_ape),
                    s.map(|b| b.median_ape),
                    s.map(|b| b.p90_ape),
                    chosen.map(|b| b.median_ape),
                    chosen.map(|b| b.p90_ape),
                    noise.map(|n| n.median_ape),
                    noise.map(|n| n.p90_ape),
                ],
            })
        })
        .collect()
}

/// The validation as a table: per measure, both variants' held-out errors and the
/// noise floor.
pub fn render(v: &Validation) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    let mut header = vec!["measure", "n"];
    header.extend(ERROR_COLUMNS);
    t.set_header(header);
    let rows = error_rows(v);
    for row in &rows {
        let n = if row.unbounded > 0 { format!("{} ({} unbounded)", row.n, row.unbounded) } else { row.n.to_string() };
        let mut cells = vec![row.measure.label().to_owned(), n];
        cells.extend(row.ape.map(|x| x.map_or("-".into(), |x| format!("{} %", ape(x)))));
        t.add_row(cells);
    }
    let chosen = if v.chosen_variants.is_empty() {
        "no choice within folds below 3 treatments".to_owned()
    } else {
        let sim = v.chosen_variants.values().filter(|&&x| x == Variant::Simulation).count();
        format!("chosen per fold: simulation in {sim} of {} folds", v.chosen_variants.len())
    };
    format!(
        "leave-one-treatment-out over {} treatments, {} migrations (APE: absolute percentage error of a held-out \
         migration, a prediction that is not a positive number counted as ∞; chosen per fold: the variant with the \
         better fit on the other treatments alone, scored on the held-out one; noise floor: each repetition against \
         the mean of its treatment's others × √((n−1)/n), the error of a perfect predictor of the treatment's \
         mean)\n{t}\nbetter fit: {} (used by predict; {chosen})\n",
        v.treatments,
        v.migrations,
        v.preferred.name()
    )
}

/// An error in %, one decimal; ∞ for an infinite one.
pub fn ape(x: f64) -> String {
    if x.is_finite() { format!("{x:.1}") } else { "∞".into() }
}

#[cfg(test)]
mod tests {
    use statrs::distribution::{ContinuousCDF as _, Normal};

    use super::*;
    use crate::model::fit::tests::{records, truth};

    /// Observations of `treatment` measuring these migration times, ms.
    fn reps(treatment: &str, values: &[f64]) -> Vec<fit::Observation> {
        let template = fit::observations(&records(&truth())).0.remove(0);
        values
            .iter()
            .map(|&v| fit::Observation {
                treatment: treatment.into(),
                measured: [(Measure::MigrationTime, v)].into(),
                ..template.clone()
            })
            .collect()
    }

    #[test]
    fn the_noise_floor_is_a_perfect_predictor_of_the_treatments_mean() {
        // By hand, two repetitions 90 and 110: each is 20 from the other's mean, and
        // × √(1/2) that is 14.14 ms: 15.7 % of 90, 12.9 % of 110 (the median: the lower).
        let floor = noise_floor(&reps("a", &[90.0, 110.0]));
        let f = &floor[&Measure::MigrationTime];
        assert_eq!(f.n, 2);
        assert!((f.median_ape - 20.0 * 0.5f64.sqrt() / 110.0 * 100.0).abs() < 1e-9, "{f:?}");
        // Many treatments of 2 repetitions drawn from N(100, 10²): a predictor of the
        // true mean 100 is off by |z|·10 %, its median 6.74 % (0.6745 σ). Against the
        // other repetition alone the distance is √2 times that: 9.54 %.
        let normal = Normal::new(100.0, 10.0).expect("normal");
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut uniform = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut obs = Vec::new();
        for t in 0..4000 {
            let (a, b) = (normal.inverse_cdf(uniform()), normal.inverse_cdf(uniform()));
            obs.extend(reps(&format!("t{t}"), &[a, b]));
        }
        let floor = noise_floor(&obs)[&Measure::MigrationTime].median_ape;
        assert!((floor - 6.74).abs() < 0.35, "noise floor {floor:.2} %, a perfect predictor's 6.74 %");
    }

    fn point(predicted: f64, measured: f64) -> HeldOut {
        HeldOut {
            treatment: "a".into(),
            variant: Variant::Simulation,
            measure: Measure::QemuDowntime,
            predicted,
            measured,
        }
    }

    #[test]
    fn every_prediction_is_scored_none_left_out() {
        // 10 % off, 20 % off, and three predictions no error can be a fraction of: 0,
        // below 0 and not a number. Left out, the median would be 15 %.
        let points =
            [point(110.0, 100.0), point(80.0, 100.0), point(0.0, 50.0), point(-3.0, 40.0), point(f64::NAN, 1.0)];
        let b = &bands(&points)[&Variant::Simulation][&Measure::QemuDowntime];
        assert_eq!((b.n, b.unbounded), (5, 3));
        assert_eq!((b.median_ape, b.p90_ape), (f64::INFINITY, f64::INFINITY));
        assert_eq!(b.ratio_p90, f64::INFINITY);
        // One of five unbounded (errors 10, 20, 0, 5, ∞ %): the median is the 3rd, 10 %;
        // the p90 is infinite, null in JSON.
        let points =
            [point(110.0, 100.0), point(80.0, 100.0), point(100.0, 100.0), point(95.0, 100.0), point(0.0, 5.0)];
        let b = &bands(&points)[&Variant::Simulation][&Measure::QemuDowntime];
        assert!((b.median_ape - 10.0).abs() < 1e-9 && b.p90_ape.is_infinite(), "{b:?}");
        let json = serde_json::to_value(b).expect("json");
        assert_eq!((json["p90_ape"].clone(), json["unbounded"].clone()), (serde_json::Value::Null, 1.into()));
        let back: ErrorBand = serde_json::from_value(json).expect("back");
        assert_eq!(back.p90_ape, f64::INFINITY);
    }

    #[test]
    fn the_variant_is_chosen_without_the_treatment_it_is_scored_on() {
        let (obs, _) = fit::observations(&records(&truth()));
        let v = cross_validate(&obs).expect("cross-validation");
        assert_eq!(v.chosen_variants.len(), v.treatments);
        for (measure, band) in &v.chosen {
            // Each treatment's points of the variant its own fold chose, and no others.
            let sel: Vec<&HeldOut> = v
                .points
                .iter()
                .filter(|p| p.measure == *measure && v.chosen_variants.get(&p.treatment) == Some(&p.variant))
                .collect();
            assert_eq!(band.n, sel.len());
            assert_eq!(
                band.median_ape,
                percentile::of(&sel.iter().map(|p| p.ape()).collect::<Vec<_>>(), 0.5).expect("median")
            );
        }
        for (t, chosen) in &v.chosen_variants {
            let train: Vec<fit::Observation> = obs.iter().filter(|o| &o.treatment != t).cloned().collect();
            assert_eq!(*chosen, preferred_of(&bands(&held_out(&train).expect("inner"))), "{t}");
        }
    }

    #[test]
    fn a_fold_that_cannot_be_fitted_is_an_error_not_one_treatment() {
        let (mut obs, _) = fit::observations(&records(&truth()));
        assert!(matches!(cross_validate(&obs[..1]), Err(ModelError::TooFewTreatments(1))));
        // Only the first treatment knows the pre-copy bandwidth: the fold without it fails.
        let first = obs[0].treatment.clone();
        for o in obs.iter_mut().filter(|o| o.treatment != first) {
            o.precopy = None;
        }
        match cross_validate(&obs) {
            Err(ModelError::Fit(why)) => assert!(why.contains(&first) && why.contains("pre-copy"), "{why}"),
            other => panic!("{:?}", other.map(|v| v.treatments)),
        }
    }
}
