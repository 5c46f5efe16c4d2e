//! How well the model predicts migrations it was not fitted on: leave-one-treatment-out
//! cross-validation, beside the noise floor (how far repeated identical migrations
//! are from each other, the best any prediction of a treatment can do).

use std::collections::{BTreeMap, BTreeSet};

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::{Deserialize, Serialize};

use super::{
    ErrorBand, Measure, ModelError, fit,
    precopy::{Variant, predict},
    quantile,
};

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
    /// Absolute percentage error, %.
    pub fn ape(&self) -> f64 {
        (self.predicted - self.measured).abs() / self.measured * 100.0
    }
}

/// Repeated identical migrations against each other.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NoiseFloor {
    pub n: usize,
    /// Median and 90th percentile of |mean of the other repetitions − this one| ÷ this
    /// one, %: the error of a perfect predictor of the treatment's mean.
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
    pub preferred: Variant,
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
    if treatments.len() < 2 {
        return Err(ModelError::Fit(format!(
            "leaving a treatment out needs at least 2 treatments, the records have {}",
            treatments.len()
        )));
    }
    let mut points = Vec::new();
    for &held in &treatments {
        let train: Vec<fit::Observation> = obs.iter().filter(|o| o.treatment != held).cloned().collect();
        let params = fit::fit(&train)?;
        for o in obs.iter().filter(|o| o.treatment == held) {
            for variant in Variant::ALL {
                let p = predict(&params, &o.vm, variant);
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
    let errors = bands(&points);
    let score = |v: Variant| {
        let e = errors.get(&v);
        let m = |m: Measure| e.and_then(|e| e.get(&m)).map_or(f64::INFINITY, |b| b.median_ape);
        m(Measure::MigrationTime) + m(Measure::GuestDowntime)
    };
    let preferred =
        if score(Variant::ClosedForm) < score(Variant::Simulation) { Variant::ClosedForm } else { Variant::Simulation };
    Ok(Validation {
        migrations: obs.len(),
        treatments: treatments.len(),
        errors,
        noise_floor: noise_floor(obs),
        preferred,
        points,
    })
}

/// Per variant and measure: median and 90th percentile APE, and the ratios for intervals.
pub fn bands(points: &[HeldOut]) -> BTreeMap<Variant, BTreeMap<Measure, ErrorBand>> {
    let mut out: BTreeMap<Variant, BTreeMap<Measure, ErrorBand>> = BTreeMap::new();
    for variant in Variant::ALL {
        for measure in Measure::ALL {
            let sel: Vec<&HeldOut> =
                points.iter().filter(|p| p.variant == variant && p.measure == measure && p.predicted > 0.0).collect();
            if sel.is_empty() {
                continue;
            }
            let apes: Vec<f64> = sel.iter().map(|p| p.ape()).collect();
            let ratios: Vec<f64> = sel.iter().map(|p| p.measured / p.predicted).collect();
            out.entry(variant).or_default().insert(
                measure,
                ErrorBand {
                    n: sel.len(),
                    median_ape: quantile(&apes, 0.5).unwrap_or(f64::NAN),
                    p90_ape: quantile(&apes, 0.9).unwrap_or(f64::NAN),
                    ratio_p10: quantile(&ratios, 0.1).unwrap_or(1.0),
                    ratio_p90: quantile(&ratios, 0.9).unwrap_or(1.0),
                },
            );
        }
    }
    out
}

/// The spread of repeated identical migrations, per measure.
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
            if values.len() < 2 {
                continue;
            }
            let sum: f64 = values.iter().sum();
            for &x in &values {
                let others = (sum - x) / (values.len() - 1) as f64;
                apes.push((others - x).abs() / x * 100.0);
            }
        }
        if !apes.is_empty() {
            out.insert(
                measure,
                NoiseFloor {
                    n: apes.len(),
                    median_ape: quantile(&apes, 0.5).unwrap_or(f64::NAN),
                    p90_ape: quantile(&apes, 0.9).unwrap_or(f64::NAN),
                },
            );
        }
    }
    out
}

/// One measure's held-out errors (median and p90 absolute percentage error, %): closed
/// form, simulation, noise floor, in that order.
pub struct ErrorRow {
    pub measure: Measure,
    pub n: usize,
    pub ape: [Option<f64>; 6],
}

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
            Some(ErrorRow {
                measure,
                n: s.or(c).map_or(0, |b| b.n),
                ape: [
                    c.map(|b| b.median_ape),
                    c.map(|b| b.p90_ape),
                    s.map(|b| b.median_ape),
                    s.map(|b| b.p90_ape),
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
    t.set_header(vec![
        "measure",
        "n",
        "closed form: median APE",
        "p90 APE",
        "simulation: median APE",
        "p90 APE",
        "noise floor: median",
        "p90",
    ]);
    let pct = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.1} %"));
    for row in error_rows(v) {
        let mut cells = vec![row.measure.label().to_owned(), row.n.to_string()];
        cells.extend(row.ape.map(pct));
        t.add_row(cells);
    }
    format!(
        "leave-one-treatment-out over {} treatments, {} migrations (APE: absolute percentage error of a held-out \
         migration; noise floor: each repetition against the mean of its treatment's others)\n{t}\nbetter fit: {}\n",
        v.treatments,
        v.migrations,
        v.preferred.name()
    )
}
