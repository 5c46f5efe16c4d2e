//! Fitting the model's parameters on traced migrations.
//!
//! Every parameter comes from what the records hold: the bandwidth from the bytes QEMU
//! transferred over the pre-copy rounds' traced time, round 1's extra bytes from its
//! duration, the dirty rate from QEMU's pending bytes right after each sync (what the
//! round before dirtied plus what it left unsent), the stop-and-copy from QEMU's
//! downtime bytes against the traced phase, and the destination's load, resume and
//! reconvergence from their traced phases. Medians and Theil–Sen lines keep a stalled
//! migration on a busy host from pulling a parameter.
//!
//! Only traced figures are fitted and scored: a phase, vCPU blackout or traced time that
//! a QMP event stood in for (no probe point) is left out, never pooled with eBPF's
//! (as the statistics keep `….qmp` apart; [`quality::evidence_of`]).

use std::collections::{BTreeMap, BTreeSet};

use super::{
    Manager, Measure, ModelError, PAGE, Provenance, RateKind, Vm, median,
    precopy::{LINK_WINDOW_S, Line, Params, Rates, WINDOW_S},
    quantile,
};
use crate::{
    hypervisor::link::LinkRate,
    measure::{quality, record::MigrationRecord, timeline::Evidence},
};

/// One sync's pending bytes and what led to them.
#[derive(Clone, Debug, PartialEq)]
pub struct SyncObs {
    /// The sync ends round `round`.
    pub round: u32,
    /// That round's duration, s.
    pub duration_s: f64,
    /// Pending bytes right after the sync.
    pub dirty_bytes: f64,
    /// Round 2 and later: bytes the round left unsent (last check − one window),
    /// at most the threshold. Round 1's leftover is a parameter of its own.
    pub leftover_bytes: Option<f64>,
}

/// What one migration tells the fit, and what it measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub treatment: String,
    pub vm: Vm,
    pub setup_ms: Option<f64>,
    pub round1_ms: Option<f64>,
    /// The last pre-copy round and the VM stop.
    pub switchover_ms: Option<f64>,
    pub sync_ms: Vec<f64>,
    /// Over a link slower than `max-bandwidth`: seconds between QEMU's pending checks.
    pub link_window_s: Option<f64>,
    /// Transferred bytes before the VM stopped, and the pre-copy rounds' time, s.
    pub precopy: Option<(f64, f64)>,
    pub syncs: Vec<SyncObs>,
    /// (bytes, ms) copied with the VM stopped.
    pub stop_copy: Option<(f64, f64)>,
    pub load_ms: Option<f64>,
    pub resume_ms: Option<f64>,
    pub first_packet_ms: Option<f64>,
    pub command_offset_ms: Option<f64>,
    pub measured: BTreeMap<Measure, f64>,
    pub machine: String,
}

/// The VM a record describes: RAM from the machine, working set and rate from its
/// treatment (`vmsize=256,wset=32,rate=2000`, or `migrate`'s `wset=64M,period=…,bpc=…`).
pub fn vm_of(r: &MigrationRecord) -> Result<Vm, String> {
    let kv: BTreeMap<&str, &str> = r.treatment.split(',').filter_map(|p| p.split_once('=')).collect();
    let mib = |key: &'static str, v: &str| -> Result<f64, String> {
        match v.parse::<f64>() {
            Ok(n) => Ok(n * 1048576.0),
            Err(_) => workloads::spec::parse_size(key, v).map(|b| b as f64).map_err(|e| e.to_string()),
        }
    };
    let vmsize = match (r.machine.as_ref().map(|m| m.ram_bytes).filter(|&b| b > 0), kv.get("vmsize")) {
        (Some(b), _) => b as f64,
        (None, Some(v)) => mib("vmsize", v)?,
        (None, None) => return Err(format!("treatment {:?} gives no vmsize and the record no machine", r.treatment)),
    };
    let wset = kv.get("wset").map(|v| mib("wset", v)).transpose()?.unwrap_or(0.0);
    let rate = match (kv.get("rate"), kv.get("bpc"), kv.get("period")) {
        (Some(v), ..) => v.parse::<f64>().map_err(|_| format!("rate {v:?} is not pages/s"))?,
        (None, Some(bpc), Some(period)) => {
            let bpc: f64 = bpc.parse().map_err(|_| format!("bpc {bpc:?} is not a number"))?;
            let period = workloads::spec::parse_duration("period", period).map_err(|e| e.to_string())?;
            bpc / period.as_secs_f64()
        }
        _ => 0.0,
    };
    Ok(Vm {
        vmsize_bytes: vmsize,
        wset_bytes: wset,
        rate_pps: rate,
        rate_kind: RateKind::Workload,
        max_bandwidth: r.params.max_bandwidth.map(|b| b as f64),
        downtime_limit_ms: r.params.downtime_limit_ms.map(|d| d as f64),
        manager: manager_of(r),
        // Real hosts' links are not migtrace's to know: taken as not limiting.
        link: r.params.link.as_ref().and_then(|l| l.configured.as_ref()).map_or(LinkRate::Unlimited, |c| c.rate),
    })
}

/// Who set the record's migration parameters: libvirt names itself in the statistics
/// it reported.
fn manager_of(r: &MigrationRecord) -> Manager {
    match r.outcome.stats.reported_by.as_deref() {
        Some(by) if by.starts_with("libvirt") => Manager::Libvirt,
        _ => Manager::Qemu,
    }
}

/// Whether `r`'s `measure` (`downtime_ms.vcpu`, …) was traced, not a QMP stand-in.
fn traced(r: &MigrationRecord, measure: &str) -> bool {
    quality::evidence_of(r, measure) == Evidence::Ebpf
}

/// The measured values a prediction is scored against (the vCPU blackout only where
/// eBPF took it).
pub fn measured(r: &MigrationRecord) -> BTreeMap<Measure, f64> {
    let rounds = r
        .outcome
        .stats
        .ram
        .as_ref()
        .and_then(|m| m.dirty_sync_count)
        .map(|n| n as f64)
        .or_else(|| r.timeline.as_ref().map(|t| t.rounds.len() as f64).filter(|&n| n > 0.0));
    let guest = r.downtime_ms.probe_gap.or(r.downtime_ms.heartbeat_gap);
    [
        (Measure::MigrationTime, r.migration_time_ms.command),
        (Measure::Rounds, rounds),
        (Measure::QemuDowntime, r.downtime_ms.reported),
        (Measure::Blackout, r.downtime_ms.vcpu.filter(|_| traced(r, "downtime_ms.vcpu"))),
        (Measure::GuestDowntime, guest),
    ]
    .into_iter()
    .filter_map(|(m, v)| v.filter(|v| v.is_finite() && *v > 0.0).map(|v| (m, v)))
    .collect()
}

/// The observations of the usable migrations (completed, healthy guest, intact
/// memory, complete trace), and why the others were left out.
pub fn observations(records: &[MigrationRecord]) -> (Vec<Observation>, Vec<String>) {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for r in records {
        let what = format!("{} #{}", r.treatment, r.repetition);
        if !quality::usable(r) {
            skipped.push(format!("{what}: {:?}", quality::category(r)));
            continue;
        }
        match observe(r) {
            Ok(o) => out.push(o),
            Err(why) => skipped.push(format!("{what}: {why}")),
        }
    }
    (out, skipped)
}

fn observe(r: &MigrationRecord) -> Result<Observation, String> {
    let vm = vm_of(r)?;
    let t = r.timeline.as_ref().ok_or("no timeline")?;
    // Phases a QMP event stood in for are not eBPF's figures: left out.
    let phase = |name: &str| t.phase(name).filter(|p| p.evidence != Evidence::Qmp).map(|p| p.duration_ms);
    let precopy_rounds: Vec<_> = t.rounds.iter().filter(|x| !x.final_round).collect();
    let ram = r.outcome.stats.ram.as_ref();
    let precopy_s = precopy_rounds.iter().map(|x| x.duration_ms).sum::<f64>() / 1e3;
    let precopy_bytes = ram
        .and_then(|m| m.precopy_bytes.or_else(|| Some(m.transferred?.saturating_sub(m.downtime_bytes.unwrap_or(0)))));
    let achieved = precopy_bytes.unwrap_or(0) as f64 / precopy_s.max(1e-9);
    // Seconds between QEMU's pending checks: its rate-limit window where max-bandwidth
    // bounds the pre-copy; else an iteration's bound, as round 1's checks show it.
    let link_window = precopy_rounds
        .first()
        .and_then(|x| Some((x.duration_ms / 1e3, x.checks?)))
        .filter(|&(_, checks)| checks >= 3)
        .map(|(s, checks)| s / checks as f64)
        .filter(|_| !matches!(bound(&vm), Bound::Cap(_)));
    let mut syncs = Vec::new();
    for (i, pair) in precopy_rounds.windows(2).enumerate() {
        let (prev, next) = (pair[0], pair[1]);
        let Some(dirty) = next.dirty_bytes else { continue };
        let leftover = if i == 0 {
            None
        } else {
            // The last check is one window before the sync. Under max-bandwidth a window
            // sends what QEMU measured per window (its threshold is that bandwidth × the
            // downtime limit); over a slower link the link's pace for the time between
            // the round's checks (an iteration ends after 50 ms, or at the next sync).
            let between_checks = prev
                .checks
                .filter(|&c| c > 0)
                .map(|c| (prev.duration_ms - prev.sync_ms.unwrap_or(0.0)) / 1e3 / c as f64);
            let (bandwidth, window) = match (bound(&vm), prev.threshold_bytes) {
                (Bound::Cap(_), Some(theta)) => (theta as f64 / (vm.downtime_limit_ms() / 1e3), WINDOW_S),
                (Bound::Cap(_), None) => (achieved, WINDOW_S),
                _ => (achieved, between_checks.or(link_window).unwrap_or(LINK_WINDOW_S)),
            };
            // Under max-bandwidth the sync came at the first check below the threshold,
            // QEMU's steady estimate: at most that much was left. Over a slower link QEMU's
            // estimate swings with the sockets' buffers (12 to 40 MB in one migration at
            // 1gbit), so what was left is only what the link had not carried.
            let most = match bound(&vm) {
                Bound::Cap(_) => bandwidth * vm.downtime_limit_ms() / 1e3,
                _ => f64::INFINITY,
            };
            prev.remaining_bytes
                .map(|rem| (rem as f64 - bandwidth * window.min(prev.duration_ms / 1e3)).clamp(0.0, most))
        };
        if i > 0 && leftover.is_none() {
            continue;
        }
        syncs.push(SyncObs {
            round: prev.round,
            duration_s: prev.duration_ms / 1e3,
            dirty_bytes: dirty as f64,
            leftover_bytes: leftover,
        });
    }
    let load = phase("destination load").or(phase("destination load + resume"));
    let resume = phase("resume").or(phase("destination load + resume").map(|_| 0.0));
    let machine = r
        .machine
        .as_ref()
        .map_or_else(|| "unknown".into(), |m| format!("{} {} ({})", m.hypervisor, m.version, m.accelerator));
    Ok(Observation {
        treatment: r.treatment.clone(),
        setup_ms: phase("setup"),
        round1_ms: precopy_rounds.first().filter(|_| precopy_rounds.len() >= 2).map(|x| x.duration_ms),
        switchover_ms: precopy_rounds
            .last()
            .filter(|_| precopy_rounds.len() >= 2)
            .map(|x| x.duration_ms + phase("vm-stop").unwrap_or(0.0)),
        sync_ms: precopy_rounds.iter().skip(1).filter_map(|x| x.sync_ms).collect(),
        link_window_s: link_window,
        precopy: precopy_bytes.filter(|_| precopy_s > 0.0).map(|b| (b as f64, precopy_s)),
        syncs,
        stop_copy: ram.and_then(|m| m.downtime_bytes).zip(phase("stop-and-copy")).map(|(b, ms)| (b as f64, ms)),
        load_ms: load,
        resume_ms: resume,
        first_packet_ms: phase("first guest packet").or(phase("first guest heartbeat")),
        command_offset_ms: r
            .migration_time_ms
            .command
            .zip(r.migration_time_ms.traced_to_resume.filter(|_| traced(r, "migration_time_ms.traced_to_resume")))
            .map(|(c, t)| c - t),
        measured: measured(r),
        machine,
        vm,
    })
}

/// What bounded a migration's pre-copy: `max-bandwidth`, the link, or neither (an
/// unshaped link without a cap: memory speed), each with its nominal rate, bytes/s.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Bound {
    Cap(f64),
    Link(f64),
    Memory,
}

fn bound(vm: &Vm) -> Bound {
    match (vm.bandwidth_limit(), vm.link.bytes_per_second()) {
        (Some(c), Some(l)) if l < c => Bound::Link(l),
        (Some(c), _) => Bound::Cap(c),
        (None, Some(l)) => Bound::Link(l),
        (None, None) => Bound::Memory,
    }
}

/// Fits the parameters on `obs`.
pub fn fit(obs: &[Observation]) -> Result<Params, ModelError> {
    if obs.is_empty() {
        return Err(ModelError::Fit("no usable migration with a timeline".into()));
    }
    let med = |f: &dyn Fn(&Observation) -> Option<f64>| median(&obs.iter().filter_map(f).collect::<Vec<_>>());
    let need =
        |what: &str, ok: bool| if ok { Ok(()) } else { Err(ModelError::Fit(format!("no migration has {what}"))) };
    need("pre-copy bytes and rounds", obs.iter().any(|o| o.precopy.is_some()))?;
    need("stop-and-copy bytes", obs.iter().any(|o| o.stop_copy.is_some_and(|(_, ms)| ms > 0.0)))?;
    let link = |o: &Observation| o.vm.link.bytes_per_second();

    // The pre-copy bandwidth against whatever bounded it; each efficiency from the
    // migrations it bounded, so one fit serves several links and caps.
    let achieved = |o: &Observation, want: fn(Bound) -> Option<f64>| {
        let (bytes, s) = o.precopy?;
        Some(bytes / s / want(bound(&o.vm))?)
    };
    let bandwidth_efficiency = med(&|o| achieved(o, |b| if let Bound::Cap(c) = b { Some(c) } else { None }));
    let link_efficiency = med(&|o| achieved(o, |b| if let Bound::Link(l) = b { Some(l) } else { None }));
    // Stop-and-copy over an unshaped link: fixed ms + bytes at memory speed.
    let sc: Vec<(f64, f64)> = obs.iter().filter(|o| link(o).is_none()).filter_map(|o| o.stop_copy).collect();
    let (stop_copy_bandwidth, stop_copy_fixed_ms) = match theil_sen(&sc) {
        Some(l) if l.slope > 0.0 => (Some(1e3 / l.slope), l.intercept.max(0.0)),
        _ => (median(&sc.iter().filter(|p| p.1 > 0.0).map(|(b, ms)| b / ms * 1e3).collect::<Vec<_>>()), 0.0),
    };
    // Over a shaped link: ms against the ms the bytes take at the link's nominal rate,
    // so links of several rates share one line.
    let sc_link: Vec<(f64, f64)> = obs
        .iter()
        .filter_map(|o| {
            let (bytes, ms) = o.stop_copy?;
            Some((bytes / link(o)? * 1e3, ms))
        })
        .collect();
    let (stop_copy_link_efficiency, stop_copy_link_fixed_ms) = match theil_sen(&sc_link) {
        Some(l) if l.slope > 0.0 => (Some(1.0 / l.slope), l.intercept),
        _ => (median(&sc_link.iter().filter(|p| p.1 > 0.0).map(|(at, ms)| at / ms).collect::<Vec<_>>()), 0.0),
    };
    // The destination's load: its own over an unshaped link; over a shaped one what the
    // link still carried comes on top, in bytes at its rate (all of the load when no
    // unshaped migration tells its own part).
    let own_load = median(&obs.iter().filter(|o| link(o).is_none()).filter_map(|o| o.load_ms).collect::<Vec<_>>());
    let link_drain_bytes = median(
        &obs.iter()
            .filter_map(|o| Some(((o.load_ms? - own_load.unwrap_or(0.0)) / 1e3 * link(o)?).max(0.0)))
            .collect::<Vec<_>>(),
    );
    let mut params = Params {
        bandwidth_efficiency,
        link_efficiency,
        stop_copy_bandwidth,
        stop_copy_fixed_ms,
        stop_copy_link_efficiency,
        stop_copy_link_fixed_ms,
        link_drain_bytes,
        link_window_ms: med(&|o| o.link_window_s.map(|s| s * 1e3)),
        destination_load_ms: own_load.unwrap_or(0.0),
        ..Params::default()
    };
    // Each migration's pre-copy bandwidth as the model has it.
    let rate = |o: &Observation| Rates::of(&params, &o.vm).ok().map(|r| r.precopy);
    let setup =
        line_or_median(&obs.iter().filter_map(|o| Some((o.vm.vmsize_bytes / GIB, o.setup_ms?))).collect::<Vec<_>>())
            .unwrap_or_default();
    // Round 1 at the fitted bandwidth: what besides the working set it sent.
    let extra = line_or_median(
        &obs.iter()
            .filter_map(|o| Some((o.vm.vmsize_bytes, o.round1_ms? / 1e3 * rate(o)? - o.vm.wset_bytes)))
            .collect::<Vec<_>>(),
    )
    .unwrap_or_default();
    let (rho, background, leftover) = fit_dirty(obs);
    // Each migration's own round-1 leftover, with the fitted dirty rate.
    let leftovers: Vec<f64> = obs
        .iter()
        .filter_map(|o| {
            let s = o.syncs.iter().find(|s| s.leftover_bytes.is_none())?;
            let t = s.duration_s;
            let workload = (rho * o.vm.rate_pps * t * PAGE).min(o.vm.wset_bytes);
            let theta = rate(o)? * o.vm.downtime_limit_ms() / 1e3;
            Some((s.dirty_bytes - workload - background * t * PAGE).clamp(0.0, theta))
        })
        .collect();
    let deciles: Vec<f64> = if leftovers.len() >= 10 {
        (1..10).filter_map(|i| quantile(&leftovers, i as f64 / 10.0)).collect()
    } else {
        Vec::new()
    };
    let blackout_fp: Vec<(f64, f64)> =
        obs.iter().filter_map(|o| Some((*o.measured.get(&Measure::Blackout)?, o.first_packet_ms?))).collect();
    params = Params {
        setup_ms: setup,
        first_round_extra_bytes: extra,
        first_round_leftover_bytes: leftover,
        first_round_leftover_deciles: deciles,
        dirty_rate_efficiency: rho,
        background_dirty_pps: background,
        sync_ms: median(&obs.iter().flat_map(|o| o.sync_ms.iter().copied()).collect::<Vec<_>>()).unwrap_or(0.0),
        switchover_ms: med(&|o| o.switchover_ms).unwrap_or(0.0),
        resume_ms: med(&|o| o.resume_ms).unwrap_or(0.0),
        reconvergence_ms: line_or_median(&blackout_fp).unwrap_or_default(),
        probe_edge_ms: med(&|o| {
            let m = &o.measured;
            Some(m.get(&Measure::GuestDowntime)? - m.get(&Measure::Blackout)? - o.first_packet_ms?)
        })
        .unwrap_or(0.0),
        reported_downtime_offset_ms: med(&|o| Some(o.measured.get(&Measure::QemuDowntime)? - o.stop_copy?.1))
            .unwrap_or(0.0),
        command_offset_ms: med(&|o| o.command_offset_ms).unwrap_or(0.0),
        ..params
    };
    Ok(params)
}

/// The dirty rate from the pending bytes after each sync: (the workload's achieved
/// share of its rate, background pages/s, round 1's leftover bytes).
///
/// A sync after round k ≥ 2 finds what the round left unsent L (its last check less
/// one window) and what it dirtied, in the working set W again:
/// `Y = min(L + ρ·r·T, max(W, L)) + b·T` (pages × 4 KiB). Round 1's sync finds its
/// leftover ℓ, the workload's pages and the background: `Y = ℓ + min(ρ·r·T, W) + b·T`.
/// Round 2 still sends round 1's leftover, zero pages at the end of RAM among it,
/// faster than a window's bytes, so its own leftover is not known: ρ and b come from
/// the syncs after round 3 on when there are enough of them, else from all syncs with
/// ℓ beside them. For a given ρ the rest is linear: least squares, and ρ where the
/// squared residuals are smallest (a search over 0…2, refined around the best).
pub fn fit_dirty(obs: &[Observation]) -> (f64, f64, f64) {
    let all: Vec<(f64, f64, &SyncObs)> =
        obs.iter().flat_map(|o| o.syncs.iter().map(move |s| (o.vm.rate_pps, o.vm.wset_bytes, s))).collect();
    let late: Vec<(f64, f64, &SyncObs)> = all.iter().copied().filter(|(r, _, s)| s.round >= 3 && *r > 0.0).collect();
    let rows = if late.len() >= 3 { late } else { all.clone() };
    let (rho, b, l) = search_rho(&rows);
    if rows.len() == all.len() {
        return (rho, b, l);
    }
    // ℓ from round 1's syncs given the rate: their median.
    let firsts: Vec<f64> = all
        .iter()
        .filter(|(_, _, s)| s.leftover_bytes.is_none())
        .map(|&(r, w, s)| {
            let t = s.duration_s;
            (s.dirty_bytes - (rho * r * t * PAGE).min(w) - b * t * PAGE).max(0.0)
        })
        .collect();
    (rho, b, median(&firsts).unwrap_or(0.0))
}

/// Least squares of the sync equations for (b, ℓ) at each ρ, and the ρ with the
/// smallest residuals.
fn search_rho(rows: &[(f64, f64, &SyncObs)]) -> (f64, f64, f64) {
    // (residual sum of squares, b, ℓ) at ρ.
    let at = |rho: f64| -> (f64, f64, f64) {
        let eqs: Vec<([f64; 3], f64)> = rows
            .iter()
            .map(|&(r, w, s)| {
                let t = s.duration_s;
                let left = s.leftover_bytes.unwrap_or(0.0);
                let first = if s.leftover_bytes.is_none() { 1.0 } else { 0.0 };
                let workload = (left + rho * r * t * PAGE).min(w.max(left));
                ([0.0, t * PAGE, first], s.dirty_bytes - workload)
            })
            .collect();
        let x = least_squares(&eqs).unwrap_or([0.0; 3]);
        let (b, l) = (x[1].max(0.0), x[2].max(0.0));
        let rss = eqs.iter().map(|(c, y)| (y - c[1] * b - c[2] * l).powi(2)).sum();
        (rss, b, l)
    };
    if !rows.iter().any(|&(r, ..)| r > 0.0) {
        let (_, b, l) = at(1.0);
        return (1.0, b, l);
    }
    let (mut best, mut step) = (1.0, 0.01);
    let (mut lo, mut hi) = (0.0, 2.0);
    for _ in 0..4 {
        let mut rho = lo;
        while rho <= hi + 1e-12 {
            if at(rho).0 < at(best).0 {
                best = rho;
            }
            rho += step;
        }
        (lo, hi) = ((best - step).max(0.0), (best + step).min(2.0));
        step /= 100.0;
    }
    let (_, b, l) = at(best);
    (best, b, l)
}

/// Least squares of `rows` (coefficients, value) by the normal equations; a parameter
/// no row informs stays 0.
fn least_squares(rows: &[([f64; 3], f64)]) -> Option<[f64; 3]> {
    if rows.is_empty() {
        return None;
    }
    let used: Vec<usize> = (0..3).filter(|&j| rows.iter().any(|r| r.0[j] != 0.0)).collect();
    let n = used.len();
    let mut a = vec![vec![0.0; n + 1]; n];
    for (row, y) in rows {
        for (i, &ji) in used.iter().enumerate() {
            for (k, &jk) in used.iter().enumerate() {
                a[i][k] += row[ji] * row[jk];
            }
            a[i][n] += row[ji] * y;
        }
    }
    // Gaussian elimination with partial pivoting.
    for c in 0..n {
        let p = (c..n).max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs()))?;
        a.swap(c, p);
        if a[c][c].abs() < 1e-12 * a[c][c].abs().max(1.0) || a[c][c] == 0.0 {
            return None;
        }
        let pivot = a[c].clone();
        for (i, row) in a.iter_mut().enumerate() {
            if i != c {
                let f = row[c] / pivot[c];
                for (v, p) in row.iter_mut().zip(&pivot).skip(c) {
                    *v -= f * p;
                }
            }
        }
    }
    let mut x = [0.0; 3];
    for (i, &j) in used.iter().enumerate() {
        x[j] = a[i][n] / a[i][i];
    }
    Some(x)
}

/// Theil–Sen line through `points`: the median of the pairwise slopes, the median
/// intercept. None without two distinct x.
pub fn theil_sen(points: &[(f64, f64)]) -> Option<Line> {
    let mut slopes = Vec::new();
    for (i, a) in points.iter().enumerate() {
        for b in &points[i + 1..] {
            if (b.0 - a.0).abs() > 1e-9 * a.0.abs().max(b.0.abs()).max(1e-12) {
                slopes.push((b.1 - a.1) / (b.0 - a.0));
            }
        }
    }
    let slope = median(&slopes)?;
    let intercept = median(&points.iter().map(|(x, y)| y - slope * x).collect::<Vec<_>>())?;
    Some(Line { intercept, slope })
}

/// Theil–Sen, or a flat line at the median when x does not vary.
fn line_or_median(points: &[(f64, f64)]) -> Option<Line> {
    theil_sen(points)
        .or_else(|| median(&points.iter().map(|p| p.1).collect::<Vec<_>>()).map(|m| Line { intercept: m, slope: 0.0 }))
}

/// Where `obs` came from, for `model.json`.
pub fn provenance(records: &str, obs: &[Observation]) -> Provenance {
    Provenance {
        records: records.to_owned(),
        migrations: obs.len(),
        treatments: obs.iter().map(|o| o.treatment.as_str()).collect::<BTreeSet<_>>().len(),
        machines: obs.iter().map(|o| o.machine.clone()).collect::<BTreeSet<_>>().into_iter().collect(),
        links: obs.iter().map(|o| o.vm.link.to_string()).collect::<BTreeSet<_>>().into_iter().collect(),
    }
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        hypervisor::{MigrationOutcome, MigrationParams, RamStats, ReportedStats, link::LinkConfig},
        measure::timeline::{Evidence, Host, Phase, Round, Timeline},
        model::precopy::{Variant, predict},
    };

    /// A parameter set like the lab's (QEMU 7.2 under TCG), every value distinct.
    pub(crate) fn truth() -> Params {
        Params {
            bandwidth_efficiency: Some(1.08),
            link_efficiency: Some(0.95),
            stop_copy_bandwidth: Some(850e6),
            stop_copy_fixed_ms: 4.5,
            stop_copy_link_efficiency: Some(0.97),
            stop_copy_link_fixed_ms: -20.0,
            link_drain_bytes: Some(3.5e6),
            link_window_ms: Some(55.0),
            setup_ms: Line { intercept: 90.0, slope: 260.0 },
            first_round_extra_bytes: Line { intercept: 70e6, slope: 0.12 },
            first_round_leftover_bytes: 6e6,
            first_round_leftover_deciles: Vec::new(),
            dirty_rate_efficiency: 0.93,
            background_dirty_pps: 450.0,
            sync_ms: 0.3,
            switchover_ms: 12.0,
            destination_load_ms: 6.0,
            resume_ms: 1.2,
            reconvergence_ms: Line { intercept: 18.0, slope: 0.4 },
            probe_edge_ms: 2.5,
            reported_downtime_offset_ms: 0.6,
            command_offset_ms: 1.1,
        }
    }

    /// The record a migration of `vm` leaves when QEMU and the guest behave exactly as
    /// `p` says: the simulation's rounds as the trace shows them (dirty bytes after each
    /// sync, a check per window, the last check one window before the sync).
    pub(crate) fn synthetic(p: &Params, vm: &Vm, treatment: &str, repetition: u32) -> MigrationRecord {
        let pred = predict(p, vm, Variant::Simulation).expect("prediction");
        let load_ms = Rates::of(p, vm).expect("rates").load_ms;
        let (b, theta) = (pred.bandwidth_bytes_per_s, pred.threshold_bytes);
        let window = Rates::of(p, vm).expect("rates").window_s;
        let per_window = b * window;
        let mut rounds: Vec<Round> = Vec::new();
        let round =
            |rounds: &mut Vec<Round>, start_ms: f64, duration_ms: f64, dirty: f64, remaining: f64, checks: u32| {
                let final_round = checks == 0;
                rounds.push(Round {
                    round: rounds.len() as u32 + 1,
                    start_ms,
                    duration_ms,
                    sync_ms: Some(p.sync_ms),
                    remaining_bytes: (!final_round).then_some(remaining as u64),
                    dirty_bytes: (!final_round).then_some(dirty as u64),
                    checks: (!final_round).then_some(checks),
                    threshold_bytes: (!final_round).then_some(theta as u64),
                    final_round,
                    kvm: Vec::new(),
                });
                start_ms + duration_ms
            };
        let first = &pred.precopy_rounds[0];
        let checks = (first.duration_ms / (window * 1e3)).round() as u32;
        let mut at =
            round(&mut rounds, pred.setup_ms, first.duration_ms, first.dirty_bytes, theta + 3.0 * per_window, checks);
        for r in &pred.precopy_rounds[1..] {
            let windows = ((r.duration_ms - p.sync_ms) / (window * 1e3)).round();
            let last_check = r.dirty_bytes - (windows - 1.0) * per_window;
            at = round(&mut rounds, at, r.duration_ms, r.dirty_bytes.round(), last_check.round(), windows as u32);
        }
        let vm_stop = 0.5;
        let last = pred.last_sync_bytes;
        at = round(&mut rounds, at, p.switchover_ms - vm_stop, last, last, 1);
        let precopy_s = rounds.iter().map(|r| r.duration_ms).sum::<f64>() / 1e3;
        let paused = at + vm_stop;
        round(&mut rounds, paused, pred.stop_copy_ms, 0.0, 0.0, 0);
        let phase = |name: &str, start_ms: f64, duration_ms: f64| Phase {
            name: name.into(),
            host: Host::Source,
            start_ms,
            duration_ms,
            evidence: Evidence::Ebpf,
            parallel: false,
        };
        let sent = paused + pred.stop_copy_ms;
        let resumed = sent + load_ms + p.resume_ms;
        let phases = vec![
            phase("setup", p.command_offset_ms, pred.setup_ms),
            phase("vm-stop", paused - vm_stop, vm_stop),
            phase("stop-and-copy", paused, pred.stop_copy_ms),
            phase("destination load", sent, load_ms),
            phase("resume", sent + load_ms, p.resume_ms),
            phase("first guest packet", resumed, pred.first_packet_ms),
        ];
        let n_rounds = rounds.len() as u64;
        let outcome = MigrationOutcome {
            stats: ReportedStats {
                downtime: Some(pred.qemu_downtime_ms.round() as u64),
                ram: Some(RamStats {
                    precopy_bytes: Some((b * precopy_s) as u64),
                    downtime_bytes: Some(pred.stop_copy_bytes as u64),
                    dirty_sync_count: Some(n_rounds),
                    ..RamStats::default()
                }),
                ..ReportedStats::default()
            },
            ..MigrationOutcome::completed_for_test(None)
        };
        let params = MigrationParams {
            max_bandwidth: vm.max_bandwidth.map(|b| b as u64),
            downtime_limit_ms: vm.downtime_limit_ms.map(|d| d as u64),
            timeout_s: 60.0,
            link: (vm.link != LinkRate::Unlimited).then(|| crate::hypervisor::link::LinkRecord {
                configured: Some(crate::hypervisor::link::LinkConfig { rate: vm.link, ..LinkConfig::unlimited() }),
                ..Default::default()
            }),
            avail_switchover_bandwidth: None,
        };
        let mut r = MigrationRecord::new(repetition, treatment.into(), params, outcome);
        r.machine = Some(crate::hypervisor::Machine { ram_bytes: vm.vmsize_bytes as u64, ..Default::default() });
        r.downtime_ms.reported = Some(pred.qemu_downtime_ms);
        r.downtime_ms.vcpu = Some(pred.blackout_ms);
        r.downtime_ms.probe_gap = Some(pred.guest_downtime_ms);
        r.migration_time_ms.command = Some(pred.migration_time_ms);
        r.migration_time_ms.traced_to_resume = Some(pred.migration_time_ms - p.command_offset_ms);
        r.timeline = Some(Timeline { phases, rounds, ..Timeline::default() });
        r
    }

    /// The validation experiment's design: 2 VMSIZE × 2 WSET × 3 RATE (MiB, pages/s).
    pub(crate) fn design() -> Vec<(f64, f64, f64)> {
        let mut d = Vec::new();
        for vmsize in [256.0, 512.0] {
            for wset in [32.0, 96.0] {
                for rate in [2000.0, 10_000.0, 20_000.0] {
                    d.push((vmsize, wset, rate));
                }
            }
        }
        d
    }

    /// The validation design's migrations over an unshaped link.
    pub(crate) fn records(p: &Params) -> Vec<MigrationRecord> {
        records_over(p, LinkRate::Unlimited)
    }

    /// The validation design's migrations over `link`.
    pub(crate) fn records_over(p: &Params, link: LinkRate) -> Vec<MigrationRecord> {
        design()
            .into_iter()
            .map(|(vmsize, wset, rate)| {
                let vm = Vm {
                    vmsize_bytes: vmsize * 1048576.0,
                    wset_bytes: wset * 1048576.0,
                    rate_pps: rate,
                    rate_kind: RateKind::Workload,
                    max_bandwidth: None,
                    downtime_limit_ms: None,
                    manager: Manager::Qemu,
                    link,
                };
                synthetic(p, &vm, &format!("vmsize={vmsize},wset={wset},rate={rate},link={link}"), 0)
            })
            .collect()
    }

    #[test]
    fn the_fit_recovers_the_parameters_of_synthetic_traces() {
        let truth = truth();
        let (obs, skipped) = observations(&records(&truth));
        assert!(skipped.is_empty(), "{skipped:?}");
        // Some treatments need window rounds, or the dirty fit would see round 1 only.
        assert!(obs.iter().any(|o| o.syncs.len() >= 3), "{:?}", obs.iter().map(|o| o.syncs.len()).collect::<Vec<_>>());
        let got = fit(&obs).expect("fit");
        let close = |name: &str, got: f64, want: f64, tol: f64| {
            assert!((got - want).abs() <= tol * want.abs().max(1.0), "{name}: fitted {got}, truth {want}");
        };
        let some = |v: Option<f64>| v.expect("fitted");
        close("bandwidth efficiency", some(got.bandwidth_efficiency), some(truth.bandwidth_efficiency), 1e-6);
        close("stop-copy bandwidth", some(got.stop_copy_bandwidth), some(truth.stop_copy_bandwidth), 1e-3);
        // No migration crossed a shaped link: nothing fitted for one.
        assert_eq!((got.link_efficiency, got.stop_copy_link_efficiency, got.link_drain_bytes), (None, None, None));
        close("stop-copy fixed", got.stop_copy_fixed_ms, truth.stop_copy_fixed_ms, 1e-2);
        close("setup intercept", got.setup_ms.intercept, truth.setup_ms.intercept, 1e-6);
        close("setup slope", got.setup_ms.slope, truth.setup_ms.slope, 1e-6);
        close("round-1 extra", got.first_round_extra_bytes.intercept, truth.first_round_extra_bytes.intercept, 1e-3);
        close("round-1 extra per byte", got.first_round_extra_bytes.slope, truth.first_round_extra_bytes.slope, 1e-3);
        close("round-1 leftover", got.first_round_leftover_bytes, truth.first_round_leftover_bytes, 1e-3);
        assert_eq!(got.first_round_leftover_deciles.len(), 9);
        for d in &got.first_round_leftover_deciles {
            close("round-1 leftover decile", *d, truth.first_round_leftover_bytes, 1e-3);
        }
        close("dirty rate efficiency", got.dirty_rate_efficiency, truth.dirty_rate_efficiency, 1e-3);
        close("background", got.background_dirty_pps, truth.background_dirty_pps, 1e-2);
        close("sync", got.sync_ms, truth.sync_ms, 1e-9);
        close("switchover", got.switchover_ms, truth.switchover_ms, 1e-9);
        close("load", got.destination_load_ms, truth.destination_load_ms, 1e-9);
        close("resume", got.resume_ms, truth.resume_ms, 1e-9);
        close("reconvergence", got.reconvergence_ms.intercept, truth.reconvergence_ms.intercept, 1e-6);
        close("reconvergence slope", got.reconvergence_ms.slope, truth.reconvergence_ms.slope, 1e-6);
        close("probe edge", got.probe_edge_ms, truth.probe_edge_ms, 1e-6);
        close("command offset", got.command_offset_ms, truth.command_offset_ms, 1e-6);
    }

    #[test]
    fn over_shaped_links_the_efficiencies_are_fitted_against_the_link() {
        // Migrations over a 1gbit and a 100mbit link (below QEMU's 128 MiB/s: the link
        // bounds the pre-copy) and over an unshaped one (QEMU's cap bounds it).
        let truth = truth();
        let mut all = records_over(&truth, "1gbit".parse().expect("rate"));
        all.extend(records_over(&truth, "100mbit".parse().expect("rate")).into_iter().filter(|r| {
            // At 12.5 MB/s only the slow treatments converge.
            r.treatment.contains("rate=2000,")
        }));
        all.extend(records(&truth));
        let (obs, skipped) = observations(&all);
        assert!(skipped.is_empty(), "{skipped:?}");
        let got = fit(&obs).expect("fit");
        let close = |name: &str, got: Option<f64>, want: Option<f64>, tol: f64| {
            let (got, want) = (got.expect(name), want.expect(name));
            assert!((got - want).abs() <= tol * want.abs().max(1.0), "{name}: fitted {got}, truth {want}");
        };
        close("pre-copy ÷ link", got.link_efficiency, truth.link_efficiency, 1e-6);
        close("pre-copy ÷ max-bandwidth", got.bandwidth_efficiency, truth.bandwidth_efficiency, 1e-6);
        close("stop-and-copy ÷ link", got.stop_copy_link_efficiency, truth.stop_copy_link_efficiency, 1e-3);
        close(
            "stop-and-copy over the link, fixed",
            Some(got.stop_copy_link_fixed_ms),
            Some(truth.stop_copy_link_fixed_ms),
            1e-3,
        );
        close("drain", got.link_drain_bytes, truth.link_drain_bytes, 1e-3);
        // From round 1's whole checks: within one check of its length.
        close("ms between checks", got.link_window_ms, truth.link_window_ms, 0.03);
        close("dirty rate efficiency", Some(got.dirty_rate_efficiency), Some(truth.dirty_rate_efficiency), 1e-3);
        close("unshaped stop-and-copy", got.stop_copy_bandwidth, truth.stop_copy_bandwidth, 1e-3);
        close("own load", Some(got.destination_load_ms), Some(truth.destination_load_ms), 1e-6);
        // A model fitted over the links alone speaks for them, not for an unshaped one.
        let (linked, _) = observations(&records_over(&truth, "1gbit".parse().expect("rate")));
        let p = fit(&linked).expect("fit");
        assert_eq!((p.bandwidth_efficiency, p.stop_copy_bandwidth), (None, None));
        let vm = vm_of(&records(&truth)[0]).expect("vm");
        let e = predict(&p, &vm, Variant::Simulation).expect_err("an unshaped link");
        assert!(e.to_string().contains("shaped links only") && e.to_string().contains("--link"), "{e}");
    }

    #[test]
    fn libvirt_migrates_unlimited_and_in_whole_mib() {
        let mut r = records(&truth()).remove(0);
        assert_eq!(vm_of(&r).expect("vm").bandwidth_limit(), Some(crate::model::QEMU_DEFAULT_BANDWIDTH));
        r.outcome.stats.reported_by = Some("libvirt job stats".into());
        assert_eq!(vm_of(&r).expect("vm").bandwidth_limit(), None, "libvirt's default is unlimited");
        r.params.max_bandwidth = Some(100_000_000);
        // libvirt passes 95 MiB/s for 100,000,000 bytes/s.
        assert_eq!(vm_of(&r).expect("vm").bandwidth_limit(), Some(95.0 * 1048576.0));
    }

    #[test]
    fn a_different_guest_is_fitted_differently() {
        // The fit reads the traces, not defaults: halve the dirty rate the guest
        // achieves and double its background, and the fit follows.
        let truth = Params { dirty_rate_efficiency: 0.5, background_dirty_pps: 900.0, ..truth() };
        let (obs, _) = observations(&records(&truth));
        let got = fit(&obs).expect("fit");
        assert!((got.dirty_rate_efficiency - 0.5).abs() < 1e-3, "{}", got.dirty_rate_efficiency);
        assert!((got.background_dirty_pps - 900.0).abs() < 9.0, "{}", got.background_dirty_pps);
    }

    #[test]
    fn round_figures_the_probes_could_not_read_are_left_out_of_the_fit() {
        let truth = truth();
        let r = records(&truth).into_iter().max_by_key(|r| r.timeline.as_ref().map_or(0, |t| t.rounds.len()));
        let mut r = r.expect("records");
        let whole = observe(&r).expect("observation");
        assert!(whole.syncs.len() >= 3, "{:?}", whole.syncs);
        // The timeline has no figure where the probe could not read QEMU's pending
        // bytes: the dirty bytes of round 3, the remaining bytes of round 3.
        let rounds = &mut r.timeline.as_mut().expect("timeline").rounds;
        rounds[2].dirty_bytes = None;
        rounds[2].remaining_bytes = None;
        let o = observe(&r).expect("observation");
        let ends: Vec<u32> = o.syncs.iter().map(|s| s.round).collect();
        // Sync 3 ends round 2 (its dirty bytes open round 3); sync 4 needs round 3's
        // leftover: both are left out, never fitted as 0.
        assert_eq!(ends, whole.syncs.iter().map(|s| s.round).filter(|&n| n != 2 && n != 3).collect::<Vec<_>>());
        assert!(o.syncs.iter().all(|s| s.dirty_bytes > 0.0));
    }

    #[test]
    fn figures_a_qmp_event_stood_in_for_are_not_fitted() {
        let r = records(&truth()).remove(4);
        let o = observe(&r).expect("observation");
        assert!(o.setup_ms.is_some() && o.command_offset_ms.is_some() && o.measured.contains_key(&Measure::Blackout));
        // No probe point for the VM stop, the resume and the setup: QMP's STOP/RESUME and
        // status events stood in.
        let mut q = r.clone();
        q.evidence.insert("downtime_ms.vcpu".into(), Evidence::Qmp);
        q.evidence.insert("migration_time_ms.traced_to_resume".into(), Evidence::Qmp);
        for p in q.timeline.as_mut().expect("timeline").phases.iter_mut().filter(|p| p.name == "setup") {
            p.evidence = Evidence::Qmp;
        }
        let o = observe(&q).expect("observation");
        assert_eq!((o.setup_ms, o.command_offset_ms), (None, None));
        assert!(!o.measured.contains_key(&Measure::Blackout), "{:?}", o.measured);
        assert!(o.measured.contains_key(&Measure::QemuDowntime), "QEMU's own figure has one source");
    }

    #[test]
    fn treatments_name_the_vm() {
        let r = &records(&truth())[4];
        let vm = vm_of(r).expect("vm");
        assert_eq!((vm.vmsize_bytes, vm.wset_bytes, vm.rate_pps), (256.0 * 1048576.0, 96.0 * 1048576.0, 10_000.0));
        let mut m = r.clone();
        m.machine = None;
        m.treatment = "vmsize=256M,vcpus=1,wset=64M,period=10000us,bpc=200,fill=100".into();
        let vm = vm_of(&m).expect("vm");
        assert_eq!((vm.vmsize_bytes, vm.wset_bytes, vm.rate_pps), (256.0 * 1048576.0, 64.0 * 1048576.0, 20_000.0));
        m.treatment = "wset=64M".into();
        assert!(vm_of(&m).is_err(), "no RAM size anywhere");
    }
}
