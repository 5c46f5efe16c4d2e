//! A running VM's dirty rate, measured without migrating it: QEMU's `calc-dirty-rate`
//! over QMP, or libvirt's `virDomainStartDirtyRateCalc` and the domain's dirty-rate
//! statistics (which run the same QEMU command).
//!
//! QEMU counts the pages dirtied during the calculation period (under KVM its dirty
//! log, else by sampling pages' contents) and reports whole MiB/s. Pages
//! written again and again count once, so a short period gives the rate and a long one
//! shows the working set: when the longer period found fewer pages than the rate
//! predicts, it found all of the working set.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::PAGE;
use crate::hypervisor::qmp::{Qmp, QmpError};

#[derive(Debug, thiserror::Error)]
pub enum DirtyRateError {
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("libvirt: {0}")]
    Libvirt(String),
    #[error("the dirty-rate calculation did not finish within {0:?}")]
    Timeout(Duration),
    #[error("unexpected dirty-rate reply: {0}")]
    Reply(String),
}

/// One calculation: pages dirtied over `calc_time_s`, as QEMU reported them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DirtySample {
    pub calc_time_s: f64,
    /// QEMU's figure, MiB/s (whole MiB over the period).
    pub mib_per_s: f64,
    /// `dirty-bitmap`, `page-sampling`, `dirty-ring` (or libvirt's name).
    pub mode: String,
}

impl DirtySample {
    /// Distinct pages dirtied in the period.
    pub fn pages(&self) -> f64 {
        self.mib_per_s * self.calc_time_s * 1048576.0 / PAGE
    }
}

/// What the samples say about the guest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DirtyEstimate {
    /// Pages/s over the shortest period (the whole guest: workload and background).
    pub rate_pps: f64,
    /// Pages the guest keeps dirtying, as bytes: the longest period's pages when it
    /// found fewer than the rate predicts (the whole working set), else the VM's RAM
    /// (no bound seen).
    pub wset_bytes: f64,
    /// Whether the working set was seen whole.
    pub wset_bounded: bool,
    pub samples: Vec<DirtySample>,
}

/// The rate from the shortest sample, the working set from the longest.
pub fn estimate(samples: Vec<DirtySample>, ram_bytes: f64) -> Option<DirtyEstimate> {
    let short = samples.iter().min_by(|a, b| a.calc_time_s.total_cmp(&b.calc_time_s))?;
    let long = samples.iter().max_by(|a, b| a.calc_time_s.total_cmp(&b.calc_time_s))?;
    let rate = short.pages() / short.calc_time_s;
    // Whole MiB over the period: allow one MiB of rounding before calling it bounded.
    let slack = 1048576.0 / PAGE;
    let bounded = long.calc_time_s > short.calc_time_s && long.pages() + slack < 0.9 * rate * long.calc_time_s;
    let wset = if bounded { (long.pages() * PAGE).min(ram_bytes) } else { ram_bytes };
    Some(DirtyEstimate { rate_pps: rate, wset_bytes: wset, wset_bounded: bounded, samples })
}

/// Runs QEMU's calculation once per period in `periods` (seconds), one after another.
///
/// Under KVM QEMU counts the dirty log (`dirty-bitmap`); otherwise it samples pages
/// (as many as it allows, 10,000 per GiB) and counts those whose content changed.
/// QEMU 7.2 crashes on `dirty-bitmap` without KVM (it asks KVM's dirty ring, whose
/// state is NULL under TCG), so the mode is chosen from `query-kvm`, never tried.
pub async fn measure_qmp(qmp: &Qmp, periods: &[u64]) -> Result<Vec<DirtySample>, DirtyRateError> {
    let kvm = qmp.execute(QueryKvm {}).await?;
    let on_kvm = kvm.get("enabled").and_then(|e| e.as_bool()).unwrap_or(false);
    let mut out = Vec::new();
    for &secs in periods {
        let command = if on_kvm {
            CalcDirtyRate { calc_time: secs, mode: Some("dirty-bitmap"), sample_pages: None }
        } else {
            CalcDirtyRate { calc_time: secs, mode: Some("page-sampling"), sample_pages: Some(10_000) }
        };
        qmp.execute(command).await?;
        let deadline = Duration::from_secs(secs + 10);
        let begun = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(secs)).await;
        loop {
            let info = qmp.execute(QueryDirtyRate {}).await?;
            match info.get("status").and_then(|s| s.as_str()) {
                Some("measured") => {
                    let rate = info
                        .get("dirty-rate")
                        .and_then(|r| r.as_f64())
                        .ok_or_else(|| DirtyRateError::Reply(info.to_string()))?;
                    let calc = info.get("calc-time").and_then(|t| t.as_f64()).unwrap_or(secs as f64);
                    // QEMU ≥ 8.2 may count in milliseconds.
                    let calc = if info.get("calc-time-unit").and_then(|u| u.as_str()) == Some("millisecond") {
                        calc / 1e3
                    } else {
                        calc
                    };
                    let mode = info.get("mode").and_then(|m| m.as_str()).unwrap_or("page-sampling").to_owned();
                    out.push(DirtySample { calc_time_s: calc, mib_per_s: rate, mode });
                    break;
                }
                Some("measuring") | Some("unstarted") => {}
                _ => return Err(DirtyRateError::Reply(info.to_string())),
            }
            if begun.elapsed() > deadline {
                return Err(DirtyRateError::Timeout(deadline));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(out)
}

/// The guest's RAM from QMP (`query-memory-size-summary`), bytes.
pub async fn qmp_ram_bytes(qmp: &Qmp) -> Result<f64, DirtyRateError> {
    let v = qmp.execute(QueryMemorySizeSummary {}).await?;
    v.get("base-memory").and_then(|b| b.as_f64()).ok_or_else(|| DirtyRateError::Reply(v.to_string()))
}

#[derive(Serialize)]
struct CalcDirtyRate {
    #[serde(rename = "calc-time")]
    calc_time: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<&'static str>,
    #[serde(rename = "sample-pages", skip_serializing_if = "Option::is_none")]
    sample_pages: Option<u64>,
}

impl qapi::Command for CalcDirtyRate {
    type Ok = serde_json::Value;
    const NAME: &'static str = "calc-dirty-rate";
    const ALLOW_OOB: bool = false;
}
impl qapi::qmp::QmpCommand for CalcDirtyRate {}

/// Decoded leniently: its fields differ between QEMU releases.
#[derive(Serialize)]
struct QueryDirtyRate {}

impl qapi::Command for QueryDirtyRate {
    type Ok = serde_json::Value;
    const NAME: &'static str = "query-dirty-rate";
    const ALLOW_OOB: bool = false;
}
impl qapi::qmp::QmpCommand for QueryDirtyRate {}

#[derive(Serialize)]
struct QueryKvm {}

impl qapi::Command for QueryKvm {
    type Ok = serde_json::Value;
    const NAME: &'static str = "query-kvm";
    const ALLOW_OOB: bool = false;
}
impl qapi::qmp::QmpCommand for QueryKvm {}

#[derive(Serialize)]
struct QueryMemorySizeSummary {}

impl qapi::Command for QueryMemorySizeSummary {
    type Ok = serde_json::Value;
    const NAME: &'static str = "query-memory-size-summary";
    const ALLOW_OOB: bool = false;
}
impl qapi::qmp::QmpCommand for QueryMemorySizeSummary {}

/// libvirt: one calculation per period of the domain `name` on `uri`, and its RAM
/// (bytes). Blocking: call it off the async runtime.
pub fn measure_libvirt(uri: &str, name: &str, periods: &[u64]) -> Result<(Vec<DirtySample>, f64), DirtyRateError> {
    use virt::{connect::Connect, sys};
    let err = |e: virt::error::Error| DirtyRateError::Libvirt(e.to_string());
    let conn = Connect::open(Some(uri)).map_err(err)?;
    let dom = conn.lookup_domain_by_name(name).map_err(err)?;
    let ram = dom.info().map_err(err)?.max_mem as f64 * 1024.0;
    let mut out = Vec::new();
    for &secs in periods {
        // SAFETY: a valid domain pointer; libvirt starts the calculation in QEMU.
        let rc = unsafe { sys::virDomainStartDirtyRateCalc(dom.as_ptr(), secs as i32, 0) };
        if rc < 0 {
            return Err(DirtyRateError::Libvirt(format!(
                "virDomainStartDirtyRateCalc failed: {}",
                virt::error::Error::last_error()
            )));
        }
        std::thread::sleep(Duration::from_secs(secs));
        let deadline = std::time::Instant::now() + Duration::from_secs(secs + 10);
        loop {
            let stats = dirtyrate_stats(&dom)?;
            if stats.status == Some(2) {
                let mib =
                    stats.mib_per_s.ok_or_else(|| DirtyRateError::Reply("no dirtyrate.megabytes_per_second".into()))?;
                let period = stats.period_s.unwrap_or(secs as f64);
                out.push(DirtySample { calc_time_s: period, mib_per_s: mib, mode: stats.mode.unwrap_or_default() });
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(DirtyRateError::Timeout(Duration::from_secs(secs + 10)));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok((out, ram))
}

/// A domain's `dirtyrate.*` statistics.
#[derive(Default)]
struct DirtyRateStats {
    /// `calc_status`: 0 unstarted, 1 measuring, 2 measured.
    status: Option<i32>,
    mib_per_s: Option<f64>,
    period_s: Option<f64>,
    mode: Option<String>,
}

/// The domain's `dirtyrate.*` statistics.
fn dirtyrate_stats(dom: &virt::domain::Domain) -> Result<DirtyRateStats, DirtyRateError> {
    use std::ffi::CStr;
    use virt::sys;
    // SAFETY: the pointer stays valid while `dom` lives, for this call.
    let mut doms = [unsafe { dom.as_ptr() }, std::ptr::null_mut()];
    let mut records: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
    // SAFETY: a NULL-terminated list of valid domains; libvirt allocates `records`.
    let n = unsafe { sys::virDomainListGetStats(doms.as_mut_ptr(), sys::VIR_DOMAIN_STATS_DIRTYRATE, &mut records, 0) };
    if n < 0 || records.is_null() {
        return Err(DirtyRateError::Libvirt(format!(
            "virDomainListGetStats failed: {}",
            virt::error::Error::last_error()
        )));
    }
    let mut found = DirtyRateStats::default();
    // SAFETY: libvirt returned `n` records, each with `nparams` typed parameters; the
    // strings are read before the list is freed.
    unsafe {
        if n > 0 {
            let rec = &**records;
            let params = std::slice::from_raw_parts(rec.params, rec.nparams.max(0) as usize);
            for p in params {
                let field = CStr::from_ptr(p.field.as_ptr()).to_string_lossy();
                let num = match p.type_ as u32 {
                    sys::VIR_TYPED_PARAM_INT => Some(p.value.i as f64),
                    sys::VIR_TYPED_PARAM_UINT => Some(p.value.ui as f64),
                    sys::VIR_TYPED_PARAM_LLONG => Some(p.value.l as f64),
                    sys::VIR_TYPED_PARAM_ULLONG => Some(p.value.ul as f64),
                    _ => None,
                };
                match field.as_ref() {
                    "dirtyrate.calc_status" => found.status = num.map(|v| v as i32),
                    "dirtyrate.megabytes_per_second" => found.mib_per_s = num,
                    "dirtyrate.calc_period" => found.period_s = num,
                    "dirtyrate.calc_mode" if p.type_ as u32 == sys::VIR_TYPED_PARAM_STRING && !p.value.s.is_null() => {
                        found.mode = Some(CStr::from_ptr(p.value.s).to_string_lossy().into_owned())
                    }
                    _ => {}
                }
            }
        }
        sys::virDomainStatsRecordListFree(records);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: f64, mib_s: f64) -> DirtySample {
        DirtySample { calc_time_s: t, mib_per_s: mib_s, mode: "dirty-bitmap".into() }
    }

    #[test]
    fn a_saturated_long_period_bounds_the_working_set() {
        // 10,000 pages/s (39 MiB/s) in a 96 MiB working set: 1 s finds 39 MiB, 3 s all 96.
        let e = estimate(vec![sample(1.0, 39.0), sample(3.0, 32.0)], 256.0 * 1048576.0).expect("estimate");
        assert!((e.rate_pps - 9984.0).abs() < 1.0, "{}", e.rate_pps);
        assert!(e.wset_bounded);
        assert!((e.wset_bytes - 96.0 * 1048576.0).abs() < 1.0);
    }

    #[test]
    fn a_steady_rate_leaves_the_working_set_open() {
        let e = estimate(vec![sample(1.0, 7.0), sample(3.0, 7.0)], 256.0 * 1048576.0).expect("estimate");
        assert!(!e.wset_bounded);
        assert_eq!(e.wset_bytes, 256.0 * 1048576.0);
        assert!(estimate(Vec::new(), 1.0).is_none());
    }
}
