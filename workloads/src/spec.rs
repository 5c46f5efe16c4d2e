//! The treatment spec: which generators run, with which parameters.
//!
//! One string, `key=value` pairs separated by commas, is both the CLI's `spec` argument
//! and what the lab puts on the guest kernel command line (`migtrace.workload=…`):
//!
//! ```text
//! load=30,wset=256M,period=10ms,bpc=300,fill=100
//! ```
//!
//! | key | meaning |
//! | --- | --- |
//! | `load` | CPU utilisation per CPU, percent (0–100) |
//! | `cpus` | CPUs the CPU generator loads (default: all online) |
//! | `wset` | locked working set (`K`, `M`, `G` suffixes, binary) |
//! | `period`, `bpc` | dirty pattern: `bpc` pages modified every `period` (`us`, `ms`, `s`) |
//! | `rate` | dirty pages per second, instead of `bpc` (cycles of `period`, default 10 ms) |
//! | `fill` | percent of each modified page written (default 100) |
//!
//! `idle` (or an empty string) runs nothing.

use std::{fmt, time::Duration};

pub const PAGE_SIZE: usize = 4096;

/// Default cycle when only a rate is given: 10 ms, the paper's finest PERIOD order.
pub const DEFAULT_RATE_PERIOD: Duration = Duration::from_millis(10);

#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub cpu: Option<CpuLoad>,
    /// Locked working set in bytes (whole pages).
    pub wset: Option<u64>,
    pub dirty: Option<DirtyPattern>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CpuLoad {
    pub percent: f64,
    /// None: every online CPU.
    pub cpus: Option<usize>,
}

/// Modify `rate × period` pages of the working set every `period`, cyclically.
#[derive(Clone, Debug, PartialEq)]
pub struct DirtyPattern {
    pub period: Duration,
    /// Pages per second (BPC / PERIOD).
    pub rate: f64,
    /// Percent of each page written.
    pub fill: f64,
}

impl DirtyPattern {
    /// Blocks (pages) per cycle; fractional when given as a rate.
    pub fn bpc(&self) -> f64 {
        self.rate * self.period.as_secs_f64()
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    #[error("unknown key {0:?} in workload spec (keys: load, cpus, wset, period, bpc, rate, fill)")]
    UnknownKey(String),
    #[error("{0:?} is not key=value (e.g. wset=256M)")]
    NotKeyValue(String),
    #[error("{key}={value:?}: {problem}")]
    BadValue { key: &'static str, value: String, problem: String },
    #[error("{0}")]
    Inconsistent(String),
}

fn bad(key: &'static str, value: &str, problem: impl Into<String>) -> SpecError {
    SpecError::BadValue { key, value: value.into(), problem: problem.into() }
}

/// A size with an optional binary suffix: `4096`, `64K`, `256M`, `1G`, `256MiB`.
pub fn parse_size(key: &'static str, value: &str) -> Result<u64, SpecError> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 =
        num.parse().map_err(|_| bad(key, value, "expected a whole number with an optional K, M or G suffix"))?;
    let mult = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => {
            return Err(bad(key, value, format!("unknown unit {unit:?} (use K, M or G)")));
        }
    };
    n.checked_mul(mult).ok_or_else(|| bad(key, value, "too large"))
}

/// A duration with a unit: `500us`, `10ms`, `1s`.
pub fn parse_duration(key: &'static str, value: &str) -> Result<Duration, SpecError> {
    let v = value.trim();
    let split = v.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad(key, value, "expected a number with a unit: us, ms or s"))?;
    let secs = match unit {
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "" => return Err(bad(key, value, "missing unit: write e.g. 10ms")),
        _ => {
            return Err(bad(key, value, format!("unknown unit {unit:?} (use us, ms or s)")));
        }
    };
    if !secs.is_finite() || secs <= 0.0 {
        return Err(bad(key, value, "must be greater than zero"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| bad(key, value, "too large"))
}

fn parse_percent(key: &'static str, value: &str) -> Result<f64, SpecError> {
    let n: f64 =
        value.trim().trim_end_matches('%').parse().map_err(|_| bad(key, value, "expected a percentage 0–100"))?;
    if !(0.0..=100.0).contains(&n) {
        return Err(bad(key, value, "must be between 0 and 100"));
    }
    Ok(n)
}

fn parse_count(key: &'static str, value: &str) -> Result<u64, SpecError> {
    value.trim().parse().map_err(|_| bad(key, value, "expected a whole number"))
}

impl Spec {
    pub fn idle() -> Self {
        Spec { cpu: None, wset: None, dirty: None }
    }

    pub fn parse(text: &str) -> Result<Self, SpecError> {
        let text = text.trim();
        if text.is_empty() || text == "idle" {
            return Ok(Self::idle());
        }
        let (mut load, mut cpus, mut wset, mut period, mut bpc, mut rate, mut fill) =
            (None, None, None, None, None, None, None);
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = item.split_once('=').ok_or_else(|| SpecError::NotKeyValue(item.into()))?;
            match key.trim() {
                "load" => load = Some(parse_percent("load", value)?),
                "cpus" => {
                    let n = parse_count("cpus", value)?;
                    if n == 0 {
                        return Err(bad("cpus", value, "must be at least 1"));
                    }
                    cpus = Some(n as usize)
                }
                "wset" => wset = Some(parse_size("wset", value)?),
                "period" => period = Some(parse_duration("period", value)?),
                "bpc" => bpc = Some(parse_count("bpc", value)?),
                "rate" => {
                    let r: f64 = value.trim().parse().map_err(|_| bad("rate", value, "expected pages per second"))?;
                    if !r.is_finite() || r < 0.0 {
                        return Err(bad("rate", value, "must be zero or more pages per second"));
                    }
                    rate = Some(r)
                }
                "fill" => fill = Some(parse_percent("fill", value)?),
                other => return Err(SpecError::UnknownKey(other.into())),
            }
        }
        if let Some(w) = wset
            && w % PAGE_SIZE as u64 != 0
        {
            return Err(bad("wset", &w.to_string(), "must be a whole number of 4 KiB pages"));
        }
        let dirty_rate = match (rate, period, bpc) {
            (Some(_), _, Some(_)) => {
                return Err(SpecError::Inconsistent("give either rate or bpc, not both (rate = bpc / period)".into()));
            }
            (Some(r), p, None) => Some((p.unwrap_or(DEFAULT_RATE_PERIOD), r)),
            (None, Some(p), Some(b)) => Some((p, b as f64 / p.as_secs_f64())),
            (None, Some(_), None) => {
                return Err(SpecError::Inconsistent("period needs bpc (pages per cycle)".into()));
            }
            (None, None, Some(_)) => {
                return Err(SpecError::Inconsistent("bpc needs period (e.g. period=10ms)".into()));
            }
            (None, None, None) => None,
        };
        let dirty = match dirty_rate {
            Some((_, 0.0)) => None,
            Some((period, rate)) => {
                if fill == Some(0.0) {
                    return Err(bad("fill", "0", "a dirty pattern must write at least part of each page"));
                }
                if wset.unwrap_or(0) == 0 {
                    return Err(SpecError::Inconsistent(
                        "a dirty pattern needs a working set to modify: add wset=SIZE".into(),
                    ));
                }
                Some(DirtyPattern { period, rate, fill: fill.unwrap_or(100.0) })
            }
            None => {
                if fill.is_some() {
                    return Err(SpecError::Inconsistent(
                        "fill applies to a dirty pattern: add rate or period and bpc".into(),
                    ));
                }
                None
            }
        };
        let cpu = match (load, cpus) {
            (Some(p), c) if p > 0.0 => Some(CpuLoad { percent: p, cpus: c }),
            (None, Some(_)) => return Err(SpecError::Inconsistent("cpus needs load=PCT".into())),
            _ => None,
        };
        Ok(Spec { cpu, wset: wset.filter(|w| *w > 0), dirty })
    }

    pub fn is_idle(&self) -> bool {
        self.cpu.is_none() && self.wset.is_none() && self.dirty.is_none()
    }
}

impl fmt::Display for Spec {
    /// The canonical spec string; parses back to the same spec.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(c) = &self.cpu {
            parts.push(format!("load={}", c.percent));
            if let Some(n) = c.cpus {
                parts.push(format!("cpus={n}"));
            }
        }
        if let Some(w) = self.wset {
            parts.push(if w % (1 << 20) == 0 { format!("wset={}M", w >> 20) } else { format!("wset={}K", w >> 10) });
        }
        if let Some(d) = &self.dirty {
            parts.push(format!("period={}us", d.period.as_micros()));
            let bpc = d.bpc();
            if (bpc - bpc.round()).abs() < 1e-9 {
                parts.push(format!("bpc={}", bpc.round()));
            } else {
                parts.push(format!("rate={}", d.rate));
            }
            parts.push(format!("fill={}", d.fill));
        }
        if parts.is_empty() { write!(f, "idle") } else { write!(f, "{}", parts.join(",")) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_papers_example() {
        let s = Spec::parse("load=30,wset=256M,period=10ms,bpc=300,fill=100").expect("valid");
        assert_eq!(s.cpu, Some(CpuLoad { percent: 30.0, cpus: None }));
        assert_eq!(s.wset, Some(256 << 20));
        let d = s.dirty.expect("dirty");
        assert_eq!(d.period, Duration::from_millis(10));
        assert!((d.rate - 30_000.0).abs() < 1e-6);
        assert!((d.bpc() - 300.0).abs() < 1e-6);
        assert_eq!(d.fill, 100.0);
    }

    #[test]
    fn rate_form_and_defaults() {
        let s = Spec::parse("wset=64M, rate=20000").expect("valid");
        let d = s.dirty.expect("dirty");
        assert_eq!(d.period, DEFAULT_RATE_PERIOD);
        assert_eq!(d.rate, 20_000.0);
        assert_eq!(d.fill, 100.0);
        assert!(Spec::parse("idle").expect("idle").is_idle());
        assert!(Spec::parse("").expect("empty").is_idle());
        assert!(Spec::parse("wset=64M,rate=0").expect("rate 0").dirty.is_none());
    }

    #[test]
    fn units() {
        assert_eq!(parse_size("wset", "4096"), Ok(4096));
        assert_eq!(parse_size("wset", "64K"), Ok(64 << 10));
        assert_eq!(parse_size("wset", "1G"), Ok(1 << 30));
        assert_eq!(parse_size("wset", "256MiB"), Ok(256 << 20));
        assert_eq!(parse_duration("period", "500us"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("period", "1.5s"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn display_round_trips() {
        for text in
            ["load=30,wset=256M,period=10ms,bpc=300,fill=50", "wset=12K", "load=5,cpus=2", "idle", "wset=1M,rate=1234"]
        {
            let s = Spec::parse(text).expect("valid");
            assert_eq!(Spec::parse(&s.to_string()).expect("canonical parses"), s, "{text}");
        }
    }

    #[test]
    fn bad_specs_name_the_problem() {
        let err = |t: &str| Spec::parse(t).expect_err(t).to_string();
        assert!(err("wset=256M,colour=red").contains("unknown key \"colour\""));
        assert!(err("wset=256X").contains("unknown unit \"X\""));
        assert!(err("wset=64M,period=0ms,bpc=1").contains("greater than zero"));
        assert!(err("wset=64M,period=10,bpc=1").contains("missing unit"));
        assert!(err("wset=64M,rate=10,fill=101").contains("between 0 and 100"));
        assert!(err("load=130").contains("between 0 and 100"));
        assert!(err("rate=100").contains("add wset"));
        assert!(err("wset=64M,period=10ms").contains("needs bpc"));
        assert!(err("wset=64M,rate=5,bpc=3").contains("not both"));
        assert!(err("wset").contains("not key=value"));
        assert!(err("wset=1000").contains("4 KiB pages"));
        assert!(err("wset=64M,rate=-1").contains("zero or more"));
        assert!(err("wset=64M,rate=10,fill=0").contains("at least part"));
    }
}
