//! The experiment spec: a TOML file (or CLI flags for quick runs).
//!
//! ```toml
//! name = "default"
//! backend = "lab"
//! design = "factorial"          # or "sweep": one factor at a time, others at base
//! repetitions = 5               # migrations per treatment (the paper used 20)
//! order = "sequential"          # or "random" (the order of treatments and boots, with `seed`)
//! seed = 1
//! repetitions_per_boot = 2      # at most this many consecutive migrations per lab boot
//! warmup = "2s"                 # workload runs this long before the first migration
//! guest = "linux"               # or "minimal": migtrace's bare-metal guest (KVM on kvm_pvm)
//!
//! [factors]                     # each a list of levels
//! vmsize = ["256M", "512M"]     # guest memory
//! wset = ["32M", "96M"]         # locked working set
//! rate = [0, 2000, 10000]       # dirtied pages/s (or period + bpc)
//!
//! [base]                        # sweep only: the level of every factor not swept
//! rate = 0
//! ```
//!
//! Factors: `vmsize`, `vcpus`, `accel`, `load`, `wset`, `rate`, `period`, `bpc`, `fill`,
//! `max_bandwidth` (MiB/s), `downtime_limit` (ms), `avail_switchover_bandwidth` (MiB/s,
//! QEMU ≥ 8.2), `link` (the lab's link between the
//! hosts, tc's rate syntax: `100mbit`, `1gbit`, `unlimited`; default `1gbit`), `qemu`. Measurement knobs live in `[measure]`
//! and migration knobs in `[migration]`.

use std::{collections::BTreeMap, fmt, time::Duration};

use serde::{Deserialize, Serialize};
use workloads::spec::{parse_duration, parse_size};

use crate::lab::GuestKind;

/// A factor: what it is called in specs, and what its levels mean.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Factor {
    Vmsize,
    Vcpus,
    Accel,
    Load,
    Wset,
    Rate,
    Period,
    Bpc,
    Fill,
    MaxBandwidth,
    DowntimeLimit,
    Qemu,
    Link,
    AvailSwitchoverBandwidth,
}

impl Factor {
    pub const ALL: [Factor; 14] = [
        Factor::Vmsize,
        Factor::Vcpus,
        Factor::Accel,
        Factor::Load,
        Factor::Wset,
        Factor::Rate,
        Factor::Period,
        Factor::Bpc,
        Factor::Fill,
        Factor::MaxBandwidth,
        Factor::DowntimeLimit,
        Factor::Qemu,
        Factor::Link,
        Factor::AvailSwitchoverBandwidth,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Factor::Vmsize => "vmsize",
            Factor::Vcpus => "vcpus",
            Factor::Accel => "accel",
            Factor::Load => "load",
            Factor::Wset => "wset",
            Factor::Rate => "rate",
            Factor::Period => "period",
            Factor::Bpc => "bpc",
            Factor::Fill => "fill",
            Factor::MaxBandwidth => "max_bandwidth",
            Factor::DowntimeLimit => "downtime_limit",
            Factor::Qemu => "qemu",
            Factor::Link => "link",
            Factor::AvailSwitchoverBandwidth => "avail_switchover_bandwidth",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name.to_ascii_lowercase().replace('-', "_"))
    }

    fn expects(self) -> &'static str {
        match self {
            Factor::Vmsize | Factor::Wset => "a size such as \"512M\" or a number of MiB",
            Factor::Vcpus | Factor::Bpc => "a whole number",
            Factor::Accel => "\"kvm\", \"tcg\" or \"auto\"",
            Factor::Load | Factor::Fill => "a percentage 0–100",
            Factor::Rate => "pages per second (0 or more)",
            Factor::Period => "a duration such as \"10ms\"",
            Factor::MaxBandwidth | Factor::AvailSwitchoverBandwidth => "MiB/s (more than 0)",
            Factor::DowntimeLimit => "milliseconds (0 or more)",
            Factor::Qemu => "a QEMU build: \"system\", a version such as \"10.0\", or a path to a binary",
            Factor::Link => crate::hypervisor::link::RATE_FORMS,
        }
    }
}

impl fmt::Display for Factor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One level of one factor, normalised.
#[derive(Clone, Debug, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Level {
    Number(f64),
    Text(String),
}

impl Level {
    pub fn as_f64(&self) -> f64 {
        match self {
            Level::Number(n) => *n,
            Level::Text(_) => f64::NAN,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Level::Number(n) if n.fract() == 0.0 => write!(f, "{n:.0}"),
            Level::Number(n) => write!(f, "{n}"),
            Level::Text(t) => f.write_str(t),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Design {
    Sweep,
    #[default]
    Factorial,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    #[default]
    Sequential,
    Random,
}

/// `[measure]`: how each migration is observed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeasureSection {
    /// Load the eBPF programs (phase timeline, vCPU blackout, packet stamps at the taps).
    /// Specs before 2026-12 called it `probes`, which the probe sender is called too.
    #[serde(alias = "probes")]
    pub tracing: bool,
    pub ping_interval_ms: f64,
    pub probe_rate_hz: f64,
    pub settle_s: f64,
    pub settle_max_s: f64,
    /// Ask the guest to check its working set after each migration.
    pub memory_check: bool,
    /// A silence of more than this many send intervals is an outage (`outages`).
    /// Left out of the spec's digest at its default (older specs keep theirs).
    #[serde(skip_serializing_if = "is_default_outage_threshold")]
    pub outage_threshold: f64,
}

fn is_default_outage_threshold(v: &f64) -> bool {
    *v == crate::measure::outage::DEFAULT_THRESHOLD_INTERVALS
}

impl Default for MeasureSection {
    fn default() -> Self {
        Self {
            tracing: true,
            ping_interval_ms: 50.0,
            probe_rate_hz: 1000.0,
            settle_s: 1.0,
            settle_max_s: 10.0,
            memory_check: true,
            outage_threshold: crate::measure::outage::DEFAULT_THRESHOLD_INTERVALS,
        }
    }
}

/// The longest time any knob of a spec may say (settle, timeouts): a week.
pub const MAX_SECONDS: f64 = 7.0 * 86_400.0;

/// `[migration]`: knobs that are not factors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MigrationSection {
    pub timeout_s: f64,
    pub boot_timeout_s: f64,
}

impl Default for MigrationSection {
    fn default() -> Self {
        Self { timeout_s: 300.0, boot_timeout_s: 90.0 }
    }
}

/// `[lab]`: how the embedded lab builds its machines (not factors).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LabSection {
    /// Under TCG with QEMU < 9.0, give guests VMSIZE + 8 KiB so dirty pages are not lost
    /// (false reproduces the bug).
    pub tcg_dirty_workaround: bool,
    /// KVM dirty ring entries per vCPU instead of dirty bitmaps (KVM only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dirty_ring: Option<u32>,
}

impl Default for LabSection {
    fn default() -> Self {
        Self { tcg_dirty_workaround: true, dirty_ring: None }
    }
}

/// `[libvirt]`: the hosts of `backend = "libvirt"` and how libvirt migrates (also for
/// `backend = "libvirt-lab"`, which makes its own hosts).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LibvirtSection {
    /// URI of the host the domain runs on, and of the other.
    pub source: Option<String>,
    pub destination: Option<String>,
    pub domain: Option<String>,
    /// The guest's address for the ping and the probe sender (none: no network measures).
    pub guest_ip: Option<std::net::Ipv4Addr>,
    /// Network namespace to send them from (default: where migtrace runs).
    pub probe_netns: Option<String>,
    /// `auto` (an agent per host: over ssh, or in the libvirt lab's namespaces), `local`
    /// (in this process), `none`.
    pub agents: Option<String>,
    /// Agent commands, one argument per element (no shell); default `ssh HOST migtrace agent`.
    pub agent_source: Option<Vec<String>>,
    pub agent_destination: Option<Vec<String>>,
    pub p2p: bool,
    pub tunnelled: bool,
    pub auto_converge: bool,
    pub compressed: bool,
}

/// Where an experiment migrates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The embedded QEMU lab, one per treatment.
    Lab,
    /// The two-daemon libvirt lab, one per treatment.
    LibvirtLab,
    /// Two existing libvirt hosts and their domain, for the whole experiment.
    Libvirt,
}

impl Backend {
    pub fn of(name: &str) -> Option<Self> {
        match name {
            "lab" | "qemu-lab" => Some(Self::Lab),
            "libvirt-lab" => Some(Self::LibvirtLab),
            "libvirt" => Some(Self::Libvirt),
            _ => None,
        }
    }
}

/// The spec as written in TOML.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpec {
    pub name: String,
    #[serde(default = "default_backend")]
    pub backend: String,
    #[serde(default)]
    pub design: Design,
    pub repetitions: u32,
    #[serde(default)]
    pub order: Order,
    #[serde(default)]
    pub seed: u64,
    /// A treatment's repetitions are ping-pong migrations of one booted guest, this many
    /// at most per boot (default: all of them on one boot); each block of them is a boot
    /// of its own, placed in the run by `order`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repetitions_per_boot: Option<u32>,
    #[serde(default = "default_warmup")]
    pub warmup: String,
    #[serde(default)]
    pub description: Option<String>,
    pub factors: BTreeMap<String, Vec<toml::Value>>,
    #[serde(default)]
    pub base: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub measure: MeasureSection,
    #[serde(default)]
    pub migration: MigrationSection,
    #[serde(default, skip_serializing_if = "is_default")]
    pub lab: LabSection,
    /// What the lab boots: `linux` (default) or `minimal` (migtrace's bare-metal guest:
    /// KVM also on kvm_pvm hosts, no network).
    #[serde(default, skip_serializing_if = "is_default")]
    pub guest: GuestKind,
    #[serde(default, skip_serializing_if = "is_default")]
    pub libvirt: LibvirtSection,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn default_backend() -> String {
    "lab".into()
}

fn default_warmup() -> String {
    "2s".into()
}

/// A validated spec.
#[derive(Clone, Debug, PartialEq)]
pub struct ExperimentSpec {
    pub raw: RawSpec,
    pub factors: BTreeMap<Factor, Vec<Level>>,
    pub base: BTreeMap<Factor, Level>,
    pub warmup: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    #[error("spec is not valid TOML or has a misspelled field: {0}")]
    Toml(String),
    #[error(
        "unknown factor {0:?}: use one of vmsize, vcpus, accel, qemu, link, load, wset, rate, period, bpc, fill, max_bandwidth, downtime_limit, avail_switchover_bandwidth"
    )]
    UnknownFactor(String),
    #[error("factor {0} has no levels: give at least one, e.g. {0} = [...]")]
    EmptyLevels(Factor),
    #[error("{factor} level {value}: expected {expects}")]
    BadLevel { factor: Factor, value: String, expects: &'static str },
    #[error(
        "unknown backend {0:?}: use \"lab\" (QEMU lab), \"libvirt-lab\" (two libvirt daemons here) or \"libvirt\" (two libvirt hosts, with [libvirt] source, destination and domain)"
    )]
    Backend(String),
    #[error("{0}")]
    Libvirt(String),
    #[error("repetitions must be at least 1")]
    Repetitions,
    #[error(
        "repetitions_per_boot = {0}: give 1 to repetitions ({1}), the migrations a lab boot runs one after another"
    )]
    RepetitionsPerBoot(u32, u32),
    #[error("name {0:?} must be a plain directory name (letters, digits, '-', '_', '.')")]
    Name(String),
    #[error("give either rate or period and bpc as factors, not both")]
    RateAndPeriod,
    #[error("period and bpc go together: add the missing one")]
    PeriodWithoutBpc,
    #[error("[base] {0}: not a factor of this spec")]
    BaseNotAFactor(String),
    #[error("[base] {factor} = {value} is not one of its levels")]
    BaseNotALevel { factor: Factor, value: String },
    #[error("warmup {0:?}: expected a duration such as \"2s\"")]
    Warmup(String),
    #[error("{0}")]
    Treatment(String),
    #[error("[measure] {0}")]
    Measure(String),
}

fn normalise(factor: Factor, value: &toml::Value) -> Result<Level, SpecError> {
    let bad = || SpecError::BadLevel { factor, value: value.to_string(), expects: factor.expects() };
    let number = || match value {
        toml::Value::Integer(i) => Some(*i as f64),
        toml::Value::Float(f) => Some(*f),
        _ => None,
    };
    let level = match factor {
        Factor::Vmsize | Factor::Wset => {
            let mib = match value {
                toml::Value::String(s) => parse_size(if factor == Factor::Wset { "wset" } else { "vmsize" }, s)
                    .map_err(|_| bad())
                    .map(|b| b as f64 / (1u64 << 20) as f64)?,
                _ => number().ok_or_else(bad)?,
            };
            if mib < 0.0 || mib.fract() != 0.0 {
                return Err(bad());
            }
            Level::Number(mib)
        }
        Factor::Vcpus | Factor::Bpc => {
            let n = number().ok_or_else(bad)?;
            if n < 0.0 || n.fract() != 0.0 || (factor == Factor::Vcpus && n < 1.0) {
                return Err(bad());
            }
            Level::Number(n)
        }
        Factor::Load | Factor::Fill => {
            let n = number().ok_or_else(bad)?;
            if !(0.0..=100.0).contains(&n) {
                return Err(bad());
            }
            Level::Number(n)
        }
        Factor::Rate | Factor::DowntimeLimit => {
            let n = number().ok_or_else(bad)?;
            if n < 0.0 || !n.is_finite() {
                return Err(bad());
            }
            Level::Number(n)
        }
        Factor::MaxBandwidth | Factor::AvailSwitchoverBandwidth => {
            let n = number().ok_or_else(bad)?;
            if n <= 0.0 || !n.is_finite() {
                return Err(bad());
            }
            Level::Number(n)
        }
        Factor::Period => {
            let toml::Value::String(s) = value else { return Err(bad()) };
            parse_duration("period", s).map_err(|_| bad())?;
            Level::Text(s.clone())
        }
        Factor::Accel => {
            let toml::Value::String(s) = value else { return Err(bad()) };
            if !["kvm", "tcg", "auto"].contains(&s.as_str()) {
                return Err(bad());
            }
            Level::Text(s.clone())
        }
        // Resolved when the experiment runs (`report` must work on hosts without it).
        Factor::Qemu => match value {
            toml::Value::String(s) if !s.trim().is_empty() => Level::Text(s.trim().to_owned()),
            toml::Value::Float(f) => Level::Text(f.to_string()),
            toml::Value::Integer(i) => Level::Text(i.to_string()),
            _ => return Err(bad()),
        },
        // Normalised (`1000mbit` is `1gbit`), so equal links are equal levels.
        Factor::Link => {
            let toml::Value::String(s) = value else { return Err(bad()) };
            let rate: crate::hypervisor::link::LinkRate = s.parse().map_err(|_| bad())?;
            Level::Text(rate.to_string())
        }
    };
    Ok(level)
}

impl ExperimentSpec {
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        let raw: RawSpec = toml::from_str(text).map_err(|e| SpecError::Toml(e.to_string()))?;
        Self::from_raw(raw)
    }

    pub fn backend(&self) -> Backend {
        Backend::of(&self.raw.backend).unwrap_or(Backend::Lab)
    }

    pub fn from_raw(raw: RawSpec) -> Result<Self, SpecError> {
        let Some(backend) = Backend::of(&raw.backend) else {
            return Err(SpecError::Backend(raw.backend.clone()));
        };
        if backend == Backend::Libvirt {
            let l = &raw.libvirt;
            if l.source.is_none() || l.destination.is_none() || l.domain.is_none() {
                return Err(SpecError::Libvirt(
                    "backend \"libvirt\" needs [libvirt] source, destination (libvirt URIs) and domain".into(),
                ));
            }
            // An existing domain's guest is what it is: only migration knobs vary.
            if let Some(f) = raw.factors.keys().find(|f| !["max_bandwidth", "downtime_limit"].contains(&f.as_str())) {
                return Err(SpecError::Libvirt(format!(
                    "factor {f}: backend \"libvirt\" migrates an existing domain, whose machine and workload migtrace does not set; \
                     only max_bandwidth and downtime_limit vary here (backend \"libvirt-lab\" varies them all)"
                )));
            }
        }
        if backend != Backend::Lab && raw.factors.contains_key(Factor::AvailSwitchoverBandwidth.name()) {
            return Err(SpecError::Libvirt(
                "factor avail_switchover_bandwidth: libvirt has no parameter for it (use backend \"lab\")".into(),
            ));
        }
        if let Some(a) = raw.libvirt.agents.as_deref()
            && !["auto", "local", "none"].contains(&a)
        {
            return Err(SpecError::Libvirt(format!("[libvirt] agents = {a:?}: use \"auto\", \"local\" or \"none\"")));
        }
        if raw.repetitions == 0 {
            return Err(SpecError::Repetitions);
        }
        if let Some(k) = raw.repetitions_per_boot
            && !(1..=raw.repetitions).contains(&k)
        {
            return Err(SpecError::RepetitionsPerBoot(k, raw.repetitions));
        }
        if raw.name.is_empty()
            || raw.name.starts_with('.')
            || !raw.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(SpecError::Name(raw.name.clone()));
        }
        let warmup = parse_duration("warmup", &raw.warmup).map_err(|_| SpecError::Warmup(raw.warmup.clone()))?;
        let mut factors = BTreeMap::new();
        for (name, values) in &raw.factors {
            let factor = Factor::from_name(name).ok_or_else(|| SpecError::UnknownFactor(name.clone()))?;
            if values.is_empty() {
                return Err(SpecError::EmptyLevels(factor));
            }
            let levels = values.iter().map(|v| normalise(factor, v)).collect::<Result<Vec<_>, _>>()?;
            factors.insert(factor, levels);
        }
        let has = |f| factors.contains_key(&f);
        if has(Factor::Rate) && (has(Factor::Period) || has(Factor::Bpc)) {
            return Err(SpecError::RateAndPeriod);
        }
        if has(Factor::Period) != has(Factor::Bpc) {
            return Err(SpecError::PeriodWithoutBpc);
        }
        let mut base = BTreeMap::new();
        for (name, value) in &raw.base {
            let factor = Factor::from_name(name)
                .filter(|f| factors.contains_key(f))
                .ok_or_else(|| SpecError::BaseNotAFactor(name.clone()))?;
            let level = normalise(factor, value)?;
            if !factors[&factor].contains(&level) {
                return Err(SpecError::BaseNotALevel { factor, value: level.to_string() });
            }
            base.insert(factor, level);
        }
        for (factor, levels) in &factors {
            base.entry(*factor).or_insert_with(|| levels[0].clone());
        }
        let m = &raw.measure;
        // Finite and bounded (TOML has inf and nan): every one of them becomes a Duration.
        let seconds = |key: &str, v: f64, lowest: f64| {
            if v.is_finite() && v >= lowest && v <= MAX_SECONDS {
                Ok(())
            } else {
                Err(format!("{key} = {v}: expected a number of seconds from {lowest} to {MAX_SECONDS} (a week)"))
            }
        };
        if !m.ping_interval_ms.is_finite()
            || m.ping_interval_ms < 0.0
            || (m.ping_interval_ms > 0.0 && m.ping_interval_ms < 2.0)
            || m.ping_interval_ms > 60_000.0
        {
            return Err(SpecError::Measure("ping_interval_ms must be 0 (off) or from 2 to 60000".into()));
        }
        seconds("settle_s", m.settle_s, 0.0).map_err(SpecError::Measure)?;
        seconds("settle_max_s", m.settle_max_s, 0.0).map_err(SpecError::Measure)?;
        let g = &raw.migration;
        for (key, v) in [("timeout_s", g.timeout_s), ("boot_timeout_s", g.boot_timeout_s)] {
            seconds(key, v, 0.001).map_err(|e| SpecError::Treatment(format!("[migration] {e}")))?;
        }
        if !(m.outage_threshold.is_finite() && m.outage_threshold >= 1.0 && m.outage_threshold <= 10_000.0) {
            return Err(SpecError::Measure("outage_threshold must be from 1 to 10000 send intervals".into()));
        }
        if !(0.0..=100_000.0).contains(&m.probe_rate_hz) {
            return Err(SpecError::Measure("probe_rate_hz must be between 0 (off) and 100000".into()));
        }
        if m.settle_s < 0.0 || m.settle_max_s < m.settle_s {
            return Err(SpecError::Measure("settle_s must not be negative, settle_max_s not below it".into()));
        }
        let spec = Self { raw, factors, base, warmup };
        // Every treatment must make a valid guest: checked now, not an hour into the run.
        for t in super::design::expand(&spec) {
            t.validate(spec.raw.guest)?;
        }
        Ok(spec)
    }

    /// A digest of what decides the results: a changed spec must not resume old results.
    pub fn digest(&self) -> String {
        use sha2::Digest as _;
        let canonical = serde_json::to_string(&self.raw).unwrap_or_default();
        sha2::Sha256::digest(canonical.as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &str = include_str!("../../../specs/default.toml");

    #[test]
    fn times_that_would_not_make_a_duration_are_refused() {
        for (section, line) in [
            ("measure", "settle_s = inf"),
            ("measure", "settle_s = nan"),
            ("measure", "settle_max_s = 1e300"),
            ("measure", "ping_interval_ms = inf"),
            ("migration", "timeout_s = -1"),
            ("migration", "timeout_s = nan"),
            ("migration", "boot_timeout_s = inf"),
        ] {
            let text = format!("name = \"t\"\nrepetitions = 1\n[factors]\nwset = [\"16M\"]\n[{section}]\n{line}\n");
            let e = ExperimentSpec::parse(&text).expect_err(line).to_string();
            assert!(!e.contains('\n') && e.contains(line.split(' ').next().unwrap_or_default()), "{line}: {e}");
        }
        let e = ExperimentSpec::parse(
            "name = \"t\"\nrepetitions = 1\nwarmup = \"99999999999999999999999s\"\n[factors]\nwset = [\"16M\"]\n",
        )
        .expect_err("huge");
        assert!(e.to_string().contains("warmup"), "{e}");
    }

    #[test]
    fn the_default_spec_parses() {
        let s = ExperimentSpec::parse(DEFAULT).expect("default spec");
        assert_eq!(s.raw.name, "default");
        assert_eq!(s.factors[&Factor::Vmsize], vec![Level::Number(256.0), Level::Number(512.0)]);
        // The paper's regime: rates up to what the lab guest sustains, working sets up to
        // half of the smallest VMSIZE.
        assert_eq!(s.factors[&Factor::Rate].last(), Some(&Level::Number(20_000.0)));
        assert_eq!(s.factors[&Factor::Wset].last(), Some(&Level::Number(128.0)));
    }

    fn err(text: &str) -> String {
        ExperimentSpec::parse(text).expect_err(text).to_string()
    }

    #[test]
    fn bad_specs_name_the_field_and_the_fix() {
        let head = "name = \"t\"\nrepetitions = 2\n";
        assert!(err(&format!("{head}[factors]\ncolour = [1]\n")).contains("unknown factor \"colour\""));
        assert!(err(&format!("{head}[factors]\nwset = []\n")).contains("factor wset has no levels"));
        assert!(err(&format!("{head}[factors]\nvmsize = [\"256M\"]\nwset = [\"256M\"]\n")).contains("wset"));
        assert!(err(&format!("{head}[factors]\nrate = [-5]\nwset = [\"16M\"]\n")).contains("rate level -5"));
        assert!(err(&format!("{head}backend = \"xen\"\n[factors]\nvcpus = [1]\n")).contains("unknown backend \"xen\""));
        assert!(
            err(&format!("{head}backend = \"libvirt\"\n[factors]\nmax_bandwidth = [100]\n"))
                .contains("needs [libvirt] source")
        );
        let libvirt = "backend = \"libvirt\"\n[libvirt]\nsource = \"qemu+ssh://h1/system\"\ndestination = \"qemu+ssh://h2/system\"\ndomain = \"web\"\n";
        assert!(
            err(&format!("{head}{libvirt}[factors]\nrate = [0, 1000]\n"))
                .contains("factor rate: backend \"libvirt\" migrates an existing domain")
        );
        ExperimentSpec::parse(&format!("{head}{libvirt}[factors]\ndowntime_limit = [100, 300]\n"))
            .expect("migration knobs vary");
        assert!(err("name = \"t\"\nrepetitions = 0\n[factors]\nvcpus = [1]\n").contains("repetitions"));
        for k in [0, 3] {
            let e = err(&format!("{head}repetitions_per_boot = {k}\n[factors]\nvcpus = [1]\n"));
            assert!(e.contains("repetitions_per_boot") && e.contains("give 1 to repetitions (2)"), "{e}");
        }
        assert!(err(&format!("{head}[factors]\nrate = [1]\nperiod = [\"10ms\"]\nbpc = [1]\n")).contains("not both"));
        assert!(err(&format!("{head}[factors]\nfill = [120]\n")).contains("percentage"));
        assert!(err(&format!("{head}colour = 1\n[factors]\nvcpus = [1]\n")).contains("misspelled"));
        assert!(err(&format!("{head}[factors]\nvcpus = [1]\n[base]\nrate = 1\n")).contains("[base] rate"));
        assert!(err("name = \"../x\"\nrepetitions = 1\n[factors]\nvcpus = [1]\n").contains("plain directory name"));
    }

    #[test]
    fn the_minimal_guest_spec_parses_and_its_limits_are_checked() {
        let s = ExperimentSpec::parse(include_str!("../../../specs/minimal-kvm.toml")).expect("minimal-kvm spec");
        assert_eq!(s.raw.guest, GuestKind::Minimal);
        // The digest of a spec without `guest` does not change: it is not serialised.
        assert!(!toml::to_string(&ExperimentSpec::parse(DEFAULT).expect("spec").raw).expect("toml").contains("guest"));
        let head = "name = \"t\"\nrepetitions = 1\nguest = \"minimal\"\n";
        assert!(err(&format!("{head}[factors]\nload = [30]\n")).contains("no CPU burner"));
        assert!(
            err(&format!("{head}[factors]\nvmsize = [\"64M\"]\nwset = [\"60M\"]\nrate = [10]\n"))
                .contains("at least 68 MiB")
        );
        assert!(ExperimentSpec::parse(&format!("{head}[factors]\nvmsize = [\"64M\"]\nwset = [\"32M\"]\n")).is_ok());
        assert!(err("name = \"t\"\nrepetitions = 1\nguest = \"bsd\"\n[factors]\nvcpus = [1]\n").contains("misspelled"));
    }

    #[test]
    fn older_specs_still_say_probes_for_tracing() {
        let head = "name = \"t\"\nrepetitions = 1\n[factors]\nwset = [\"16M\"]\n[measure]\n";
        assert!(!ExperimentSpec::parse(&format!("{head}probes = false\n")).expect("old name").raw.measure.tracing);
        assert!(!ExperimentSpec::parse(&format!("{head}tracing = false\n")).expect("new name").raw.measure.tracing);
    }

    #[test]
    fn digest_changes_with_the_spec() {
        let a = ExperimentSpec::parse(DEFAULT).expect("spec");
        let mut raw = a.raw.clone();
        raw.repetitions += 1;
        let b = ExperimentSpec::from_raw(raw).expect("spec");
        assert_eq!(a.digest(), ExperimentSpec::parse(DEFAULT).expect("spec").digest());
        assert_ne!(a.digest(), b.digest());
    }
}
