//! Predicting a migration before it happens: a model of QEMU's pre-copy whose
//! parameters are fitted on traced migrations.
//!
//! - [`precopy`]: the model, two ways: Akoush et al.'s closed form (an average dirty
//!   rate, geometric rounds) and a round-by-round simulation of QEMU's loop (100 ms
//!   rate-limit windows, the stop threshold, what a round leaves unsent, the working
//!   set bounding what a round can dirty).
//! - [`fit`]: the parameters from an experiment's records.
//! - [`validate`]: leave-one-treatment-out cross-validation and the noise floor.
//! - [`plot`]: predicted against measured, as SVG.
//! - [`dirty_rate`]: a running VM's dirty rate, measured without migrating it.

pub mod dirty_rate;
pub mod fit;
pub mod plot;
pub mod precopy;
pub mod validate;

use std::{collections::BTreeMap, fmt, path::Path};

use serde::{Deserialize, Serialize};

pub use precopy::{Params, Prediction, Variant, predict};

use crate::hypervisor::link::LinkRate;

/// Bytes per guest page.
pub const PAGE: f64 = 4096.0;
/// QEMU's default `max-bandwidth`: 128 MiB/s.
pub const QEMU_DEFAULT_BANDWIDTH: f64 = 128.0 * MIB;
const MIB: f64 = 1024.0 * 1024.0;
/// QEMU's default `downtime-limit`, ms.
pub const QEMU_DEFAULT_DOWNTIME_LIMIT_MS: f64 = 300.0;
/// The file `model fit` writes into the experiment directory.
pub const MODEL_FILE: &str = "model.json";
/// Layout version of `model.json`.
pub const MODEL_SCHEMA: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a migtrace model ({source}); write one with `migtrace model fit DIR`")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: not a model validation ({source}); rewrite it with `migtrace model validate DIR`")]
    Validation {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: model schema {found}, this migtrace reads {MODEL_SCHEMA}; refit with `migtrace model fit DIR`")]
    Schema { path: String, found: u32 },
    #[error("{0}")]
    Records(#[from] crate::measure::record::RecordError),
    #[error("cannot fit: {0}")]
    Fit(String),
    #[error("leaving a treatment out needs at least 2 treatments, the records have {0}")]
    TooFewTreatments(usize),
    #[error("{0}")]
    Input(String),
}

/// How a VM's dirty rate was obtained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RateKind {
    /// The workload's setting (pages/s): the model scales it by the dirty rate the
    /// guest achieved during the fitted migrations and adds the guest's background.
    #[default]
    Workload,
    /// Measured on the whole running guest (QEMU's dirty-rate calculation): it holds
    /// the background already.
    Measured,
}

/// What sets the migration's parameters, whose defaults differ.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Manager {
    /// QEMU over QMP (the QEMU lab): `max-bandwidth` 128 MiB/s unless set.
    #[default]
    Qemu,
    /// libvirt: unlimited unless set, and then in whole MiB/s (it truncates).
    Libvirt,
}

/// What a prediction needs: the VM, its memory workload, the migration's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Vm {
    /// Guest RAM, bytes.
    pub vmsize_bytes: f64,
    /// The working set the guest dirties, bytes.
    pub wset_bytes: f64,
    /// Pages per second dirtied in it.
    pub rate_pps: f64,
    #[serde(default)]
    pub rate_kind: RateKind,
    /// Bytes/s; None: QEMU's default.
    pub max_bandwidth: Option<f64>,
    /// ms; None: QEMU's default.
    pub downtime_limit_ms: Option<f64>,
    /// Who sets `max_bandwidth` (and so its default).
    #[serde(default)]
    pub manager: Manager,
    /// The link between the hosts: it bounds the pre-copy with `max_bandwidth` and
    /// paces the stop-and-copy, which QEMU does not rate-limit.
    #[serde(default = "unlimited")]
    pub link: LinkRate,
}

fn unlimited() -> LinkRate {
    LinkRate::Unlimited
}

impl Vm {
    /// The `max-bandwidth` in force, bytes/s; None: unlimited (libvirt's default).
    pub fn bandwidth_limit(&self) -> Option<f64> {
        match (self.manager, self.max_bandwidth) {
            (Manager::Qemu, b) => Some(b.unwrap_or(QEMU_DEFAULT_BANDWIDTH)),
            (Manager::Libvirt, None) => None,
            // libvirt passes whole MiB/s, at least 1 (hypervisor::libvirt).
            (Manager::Libvirt, Some(b)) => Some((b / MIB).floor().max(1.0) * MIB),
        }
    }
    pub fn downtime_limit_ms(&self) -> f64 {
        self.downtime_limit_ms.unwrap_or(QEMU_DEFAULT_DOWNTIME_LIMIT_MS)
    }
    /// Rejects what no VM can be (the CLI's units are MiB, pages/s, MiB/s, ms).
    pub fn check(&self) -> Result<(), ModelError> {
        let bad = |what: &str| Err(ModelError::Input(what.to_owned()));
        if !(self.vmsize_bytes.is_finite() && self.vmsize_bytes > 0.0) {
            return bad("VM size must be more than 0 MiB (--vmsize 512)");
        }
        if !(self.wset_bytes.is_finite() && self.wset_bytes >= 0.0) || self.wset_bytes > self.vmsize_bytes {
            return bad("the working set must be between 0 and the VM size (--wset 64, MiB)");
        }
        if !(self.rate_pps.is_finite() && self.rate_pps >= 0.0) {
            return bad("the dirty rate must be 0 or more pages/s (--rate 20000)");
        }
        if self.max_bandwidth.is_some_and(|b| !(b.is_finite() && b > 0.0)) {
            return bad("the bandwidth must be more than 0 MiB/s (--bandwidth 128)");
        }
        if self.downtime_limit_ms.is_some_and(|d| !(d.is_finite() && d > 0.0)) {
            return bad("the downtime limit must be more than 0 ms (--downtime-limit 300)");
        }
        Ok(())
    }
}

/// A measure the model predicts and validation scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Measure {
    /// The paper's: the migration command's wall time.
    MigrationTime,
    /// QEMU's dirty-sync-count (pre-copy rounds and the final one).
    Rounds,
    /// QEMU's own downtime figure.
    QemuDowntime,
    /// Source vCPUs stopped → destination vCPUs running.
    Blackout,
    /// What the guest's peers see: the probe gap (the minimal guest: its heartbeat gap).
    GuestDowntime,
}

impl Measure {
    pub const ALL: [Measure; 5] =
        [Measure::MigrationTime, Measure::Rounds, Measure::QemuDowntime, Measure::Blackout, Measure::GuestDowntime];

    pub fn label(self) -> &'static str {
        match self {
            Measure::MigrationTime => "migration time (command)",
            Measure::Rounds => "rounds (dirty syncs)",
            Measure::QemuDowntime => "QEMU downtime",
            Measure::Blackout => "vCPU blackout",
            Measure::GuestDowntime => "guest-observed downtime (probe gap)",
        }
    }

    /// This measure of a prediction.
    pub fn of(self, p: &Prediction) -> f64 {
        match self {
            Measure::MigrationTime => p.migration_time_ms,
            Measure::Rounds => p.rounds_mean,
            Measure::QemuDowntime => p.qemu_downtime_ms,
            Measure::Blackout => p.blackout_ms,
            Measure::GuestDowntime => p.guest_downtime_ms,
        }
    }
}

impl fmt::Display for Measure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// How far held-out predictions of one measure were off. Every held-out migration is
/// scored: a prediction that is not a positive, finite number is an infinite error (and
/// an infinite ratio), ranked with the others, never left out. An infinite figure is
/// `null` in JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorBand {
    /// Held-out migrations scored.
    pub n: usize,
    /// Of them, predictions that were not a positive finite number (scored as infinite).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unbounded: usize,
    /// Median absolute percentage error, %.
    #[serde(with = "infinite_as_null")]
    pub median_ape: f64,
    /// 90th percentile absolute percentage error, %.
    #[serde(with = "infinite_as_null")]
    pub p90_ape: f64,
    /// Measured ÷ predicted: 10th and 90th percentiles (an 80 % interval around a
    /// prediction).
    #[serde(with = "infinite_as_null")]
    pub ratio_p10: f64,
    #[serde(with = "infinite_as_null")]
    pub ratio_p90: f64,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// An error or ratio that may be infinite: JSON has no infinity, so it is `null`.
mod infinite_as_null {
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() { s.serialize_f64(*v) } else { s.serialize_none() }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
    }
}

/// Where a model was fitted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub records: String,
    pub migrations: usize,
    pub treatments: usize,
    /// The hypervisor builds and accelerators of the fitted migrations.
    pub machines: Vec<String>,
    /// The links between the hosts the fitted migrations crossed (tc's syntax,
    /// `unlimited` for an unshaped or unknown one).
    #[serde(default)]
    pub links: Vec<String>,
}

impl Provenance {
    /// The link every fitted migration crossed, if they crossed one.
    pub fn link(&self) -> Option<LinkRate> {
        match self.links.as_slice() {
            [one] => one.parse().ok(),
            _ => None,
        }
    }
}

/// `model.json`: fitted parameters and how well they predicted held-out treatments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub schema: u32,
    pub fitted_on: Provenance,
    pub params: Params,
    /// Per variant and measure, leave-one-treatment-out errors on the fitted
    /// experiment: the prediction intervals come from them.
    pub errors: BTreeMap<Variant, BTreeMap<Measure, ErrorBand>>,
    /// The variant with the smaller held-out errors (`predict` uses it by default).
    pub preferred: Variant,
}

impl Model {
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let path = if path.is_dir() { path.join(MODEL_FILE) } else { path.to_owned() };
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|source| {
            let source = if source.kind() == std::io::ErrorKind::NotFound {
                std::io::Error::new(source.kind(), "no model here: fit one first with `migtrace model fit DIR`")
            } else {
                source
            };
            ModelError::Io { path: shown.clone(), source }
        })?;
        let schema = serde_json::from_str::<serde_json::Value>(&text)
            .map_err(|source| ModelError::Parse { path: shown.clone(), source })?
            .get("schema")
            .and_then(|s| s.as_u64())
            .unwrap_or(0) as u32;
        if schema != MODEL_SCHEMA {
            return Err(ModelError::Schema { path: shown, found: schema });
        }
        serde_json::from_str(&text).map_err(|source| ModelError::Parse { path: shown, source })
    }

    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| ModelError::Fit(e.to_string()))?;
        crate::files::write_atomic(path, (text + "\n").as_bytes())
            .map_err(|source| ModelError::Io { path: path.display().to_string(), source })
    }

    /// The 80 % interval around a predicted `value` of `measure` from the held-out
    /// errors, if validation had any (its upper end infinite when more than a tenth of
    /// the held-out predictions were unbounded).
    pub fn interval(&self, variant: Variant, measure: Measure, value: f64) -> Option<(f64, f64)> {
        let band = self.errors.get(&variant)?.get(&measure)?;
        (band.n > 0).then_some((value * band.ratio_p10, value * band.ratio_p90))
    }
}

/// Median of the fit's inputs `v` (None when none is finite).
pub fn median(v: &[f64]) -> Option<f64> {
    quantile(v, 0.5)
}

/// The q-quantile of the fit's inputs `v` by nearest rank ([`crate::percentile`]). A
/// value that is not finite (a phase of 0 s divided by) informs no parameter and is left
/// out here; validation scores every prediction, finite or not.
pub fn quantile(v: &[f64], q: f64) -> Option<f64> {
    let finite: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    crate::percentile::of(&finite, q)
}
