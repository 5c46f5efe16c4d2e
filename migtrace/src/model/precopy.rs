//! The pre-copy model: what QEMU does with a VM, in rounds, until it stops it.
//!
//! Both variants share the start and the end. Setup, then round 1 sends all of RAM:
//! the working set and what else the guest holds, at the pre-copy bandwidth `B`: the
//! lesser of `max-bandwidth` and the link between the hosts, each × the efficiency
//! achieved against it. QEMU stops the VM once the bytes pending right after a
//! dirty-log sync fall below its threshold `θ = B × downtime limit`; the stop-and-copy
//! sends them, and what the guest dirtied from that sync to the stop, without a rate
//! limit: at the link's rate, or at memory speed over an unshaped one. The destination
//! loads what the link still carried and resumes the VM, and the guest answers its
//! peers again after a reconvergence that grows with the blackout.
//!
//! In between the variants differ:
//! - [`Variant::ClosedForm`] (Akoush et al.'s AVG): an average dirty rate `d`; round
//!   `i` sends what round `i − 1` dirtied, `Vᵢ = d·Tᵢ₋₁`, so the rounds shrink
//!   geometrically by `λ = d / B` and their number and length have a closed form.
//! - [`Variant::Simulation`]: QEMU's loop. It checks the pending bytes once per
//!   100 ms rate-limit window, each window sending `B × 100 ms`; a round ends at the
//!   first check below `θ`, leaving that much unsent; the sync then adds what the
//!   guest dirtied in the round: the workload's pages, at most its working set (a
//!   cyclic writer re-dirties the same pages), and the guest's background.

use serde::{Deserialize, Serialize};

use super::{ModelError, PAGE, RateKind, Vm};

/// QEMU's rate-limit window (`BUFFER_DELAY`): one pending check per window while
/// `max-bandwidth` bounds the pre-copy.
pub const WINDOW_S: f64 = 0.1;
/// An iteration the rate limit does not end (a link slower than `max-bandwidth`) ends
/// after 50 ms (`MAX_WAIT` in QEMU's RAM iteration): a check per 50 ms and a little more.
/// Fitted from the records where they have such migrations; this where they have none.
pub const LINK_WINDOW_S: f64 = 0.05;
/// A migration still pre-copying after this long is taken as one that never
/// converges (QEMU has no round limit: it would run until cancelled).
pub const HORIZON_S: f64 = 3600.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// Akoush et al.'s AVG: average dirty rate, geometric rounds.
    ClosedForm,
    /// QEMU's loop round by round: rate-limit windows, threshold, leftover, working set.
    Simulation,
}

impl Variant {
    pub const ALL: [Variant; 2] = [Variant::ClosedForm, Variant::Simulation];

    pub fn name(self) -> &'static str {
        match self {
            Variant::ClosedForm => "closed form",
            Variant::Simulation => "simulation",
        }
    }
}

/// `intercept + slope × x`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Line {
    pub intercept: f64,
    pub slope: f64,
}

impl Line {
    pub fn at(&self, x: f64) -> f64 {
        self.intercept + self.slope * x
    }
}

/// The model's parameters, each fitted from traced migrations (see [`super::fit`]).
/// Those that depend on the link are fitted where the records had such a link, and are
/// `None` where they had none: a prediction that needs one says what it assumed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Params {
    /// Pre-copy bandwidth achieved ÷ the `max-bandwidth` in force, where that was below
    /// the link (transferred bytes over the pre-copy rounds' time).
    #[serde(default)]
    pub bandwidth_efficiency: Option<f64>,
    /// Pre-copy bandwidth achieved ÷ the link's rate, where the link was below
    /// `max-bandwidth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_efficiency: Option<f64>,
    /// Bytes/s of the stop-and-copy over an unshaped link: QEMU lifts its rate limit,
    /// so memory speed.
    #[serde(default)]
    pub stop_copy_bandwidth: Option<f64>,
    /// Stop-and-copy ms besides the RAM it sends (device state, flushing the stream),
    /// over an unshaped link.
    pub stop_copy_fixed_ms: f64,
    /// Over a shaped link: the stop-and-copy's bytes/s ÷ the link's rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_copy_link_efficiency: Option<f64>,
    /// Over a shaped link: its ms besides the RAM (the source's last write returns once
    /// the rest fits its socket's buffer, so this may be below 0).
    #[serde(default)]
    pub stop_copy_link_fixed_ms: f64,
    /// Over a shaped link: bytes the link still carried when the source's last write
    /// returned (the sockets' buffers, the link's queue), which the destination loads
    /// at the link's rate on top of `destination_load_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_drain_bytes: Option<f64>,
    /// Over a link slower than `max-bandwidth`: ms between QEMU's pending checks (round
    /// 1's duration ÷ its checks; [`LINK_WINDOW_S`] where no migration had such a link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_window_ms: Option<f64>,
    /// Setup ms against guest RAM in GiB.
    pub setup_ms: Line,
    /// What round 1 sends besides the working set, in bytes at the pre-copy bandwidth
    /// (the rest of the guest's memory, its zero pages' scan), against RAM bytes.
    pub first_round_extra_bytes: Line,
    /// Bytes round 1 leaves unsent: the end of RAM it had not reached when the
    /// pending bytes fell below the threshold (least squares over all syncs).
    pub first_round_leftover_bytes: f64,
    /// The same per migration, as deciles: where the last window of round 1 ends in the
    /// guest's memory is chance, so the simulation averages over them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub first_round_leftover_deciles: Vec<f64>,
    /// The workload's dirty rate during the migration ÷ its setting.
    pub dirty_rate_efficiency: f64,
    /// Pages/s the guest dirties besides its workload (kernel, network buffers).
    pub background_dirty_pps: f64,
    /// Dirty-log sync ms (each window round).
    pub sync_ms: f64,
    /// ms from the sync whose pending bytes are below the threshold to the source's
    /// vCPUs stopped (the last pre-copy round and the VM stop).
    pub switchover_ms: f64,
    /// Destination: end of the stream → VM loaded, ms (over a shaped link the drain
    /// comes on top).
    pub destination_load_ms: f64,
    /// Destination: loaded → vCPUs running, ms.
    pub resume_ms: f64,
    /// Resumed → the guest's first packet, ms, against the blackout in ms.
    pub reconvergence_ms: Line,
    /// Guest-observed gap beyond blackout + first packet (the probe's edges), ms.
    pub probe_edge_ms: f64,
    /// QEMU's downtime − the stop-and-copy phase, ms.
    pub reported_downtime_offset_ms: f64,
    /// The migration command's time − the traced setup → resume, ms.
    pub command_offset_ms: f64,
}

/// One predicted round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PredictedRound {
    pub round: u32,
    pub duration_ms: f64,
    /// Pending bytes after the sync that opened it.
    pub dirty_bytes: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub variant: Variant,
    /// False: the guest dirties faster than the link drains; QEMU would pre-copy until
    /// cancelled, and the times below are those of the first hour.
    pub converges: bool,
    /// The migration command's time, ms.
    pub migration_time_ms: f64,
    /// QEMU's dirty-sync-count: pre-copy rounds and the final one.
    pub rounds: u32,
    /// Its mean over round 1's leftovers (the simulation; else `rounds`).
    pub rounds_mean: f64,
    pub qemu_downtime_ms: f64,
    pub blackout_ms: f64,
    pub guest_downtime_ms: f64,
    /// Pre-copy bandwidth and stop threshold used.
    pub bandwidth_bytes_per_s: f64,
    pub threshold_bytes: f64,
    /// Bytes pending after the sync that found less than the threshold.
    pub last_sync_bytes: f64,
    /// Bytes sent with the VM stopped.
    pub stop_copy_bytes: f64,
    pub setup_ms: f64,
    pub stop_copy_ms: f64,
    pub first_packet_ms: f64,
    /// The pre-copy rounds (the last two: the round whose sync found less than the
    /// threshold, cut short by the switchover, and the final one are not listed).
    pub precopy_rounds: Vec<PredictedRound>,
    /// What the prediction assumed because the model was not fitted on it (a link or a
    /// bandwidth limit its migrations did not have).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assumed: Vec<String>,
}

/// How fast the migration moves bytes for `vm`: the pre-copy bandwidth, the
/// stop-and-copy's (bytes/s and fixed ms), the destination's load (ms), and what had to be
/// assumed.
pub struct Rates {
    pub precopy: f64,
    /// Seconds between QEMU's pending checks: its rate-limit window where
    /// `max-bandwidth` bounds the pre-copy, else its iteration's bound.
    pub window_s: f64,
    pub stop_copy: f64,
    pub stop_copy_fixed_ms: f64,
    pub load_ms: f64,
    pub assumed: Vec<String>,
}

impl Rates {
    pub fn of(p: &Params, vm: &Vm) -> Result<Self, ModelError> {
        let mut assumed = Vec::new();
        let link = vm.link.bytes_per_second();
        let shown = vm.link;
        // The pre-copy: the lesser of the limits in force, each at its efficiency; an
        // efficiency the fit never saw is taken as 1 only where it decides the figure.
        let link_window = p.link_window_ms.map_or(LINK_WINDOW_S, |ms| ms / 1e3);
        // (bytes/s, seconds between checks, what was assumed)
        let mut bounds: Vec<(f64, f64, Option<String>)> = Vec::new();
        if let Some(cap) = vm.bandwidth_limit() {
            bounds.push(match p.bandwidth_efficiency {
                Some(e) => (e * cap, WINDOW_S, None),
                None => (
                    cap,
                    WINDOW_S,
                    Some("the pre-copy at max-bandwidth exactly: no fitted migration was bounded by it".into()),
                ),
            });
        }
        if let Some(l) = link {
            bounds.push(match p.link_efficiency.or(p.stop_copy_link_efficiency) {
                Some(e) => (e * l, link_window, None),
                None => (
                    l,
                    link_window,
                    Some(format!(
                        "the pre-copy at the link's {shown} exactly: no fitted migration crossed a shaped link"
                    )),
                ),
            });
        }
        let memory = p.stop_copy_bandwidth;
        let unshaped = || {
            ModelError::Input(
                "this model was fitted over shaped links only: it knows no memory-speed copy for an unshaped link \
                 (give --link with the rate it was fitted at, or fit it on migrations over an unshaped link)"
                    .into(),
            )
        };
        let (precopy, window_s, note) = match bounds.into_iter().min_by(|a, b| a.0.total_cmp(&b.0)) {
            // The pre-copy cannot outrun an unlimited copy.
            Some((b, w, note)) => match memory {
                Some(m) if m < b => (m, link_window, None),
                _ => (b, w, note),
            },
            None => (memory.ok_or_else(unshaped)?, link_window, None),
        };
        assumed.extend(note);
        let (stop_copy, stop_copy_fixed_ms, load_ms) = match link {
            Some(l) => {
                let e = p.stop_copy_link_efficiency.or(p.link_efficiency).unwrap_or_else(|| {
                    assumed.push(format!(
                        "the stop-and-copy at the link's {shown} exactly: no fitted migration crossed a shaped link"
                    ));
                    1.0
                });
                let drain = p.link_drain_bytes.unwrap_or_else(|| {
                    assumed.push("nothing left in the link's queue at the source's last write: no fitted migration crossed a shaped link".into());
                    0.0
                });
                (e * l, p.stop_copy_link_fixed_ms, p.destination_load_ms + drain / l * 1e3)
            }
            None => (memory.ok_or_else(unshaped)?, p.stop_copy_fixed_ms, p.destination_load_ms),
        };
        Ok(Self {
            precopy: precopy.max(1.0),
            window_s,
            stop_copy: stop_copy.max(1.0),
            stop_copy_fixed_ms,
            load_ms,
            assumed,
        })
    }
}

/// Predicts one migration of `vm` with `variant`. The simulation averages over round
/// 1's leftover deciles when the fit has them: its times, downtimes and rounds are
/// means, its round list that of the median leftover. Fails only for a link the model
/// cannot speak for (see [`Rates::of`]).
pub fn predict(p: &Params, vm: &Vm, variant: Variant) -> Result<Prediction, ModelError> {
    let rates = Rates::of(p, vm)?;
    let leftovers = &p.first_round_leftover_deciles;
    if variant == Variant::ClosedForm || leftovers.is_empty() {
        return Ok(predict_with(p, vm, &rates, variant, p.first_round_leftover_bytes));
    }
    let runs: Vec<Prediction> = leftovers.iter().map(|&l| predict_with(p, vm, &rates, variant, l)).collect();
    let n = runs.len() as f64;
    let mean = |f: fn(&Prediction) -> f64| runs.iter().map(f).sum::<f64>() / n;
    let mut out = runs[runs.len() / 2].clone();
    out.converges = runs.iter().all(|r| r.converges);
    out.migration_time_ms = mean(|r| r.migration_time_ms);
    out.rounds_mean = mean(|r| r.rounds as f64);
    out.rounds = out.rounds_mean.round() as u32;
    out.qemu_downtime_ms = mean(|r| r.qemu_downtime_ms);
    out.blackout_ms = mean(|r| r.blackout_ms);
    out.guest_downtime_ms = mean(|r| r.guest_downtime_ms);
    out.stop_copy_bytes = mean(|r| r.stop_copy_bytes);
    out.stop_copy_ms = mean(|r| r.stop_copy_ms);
    out.first_packet_ms = mean(|r| r.first_packet_ms);
    Ok(out)
}

fn predict_with(p: &Params, vm: &Vm, rates: &Rates, variant: Variant, leftover1: f64) -> Prediction {
    let b = rates.precopy;
    let theta = b * vm.downtime_limit_ms() / 1e3;
    let (workload_pps, background_pps) = match vm.rate_kind {
        RateKind::Workload => (p.dirty_rate_efficiency * vm.rate_pps, p.background_dirty_pps),
        RateKind::Measured => (p.dirty_rate_efficiency * vm.rate_pps, 0.0),
    };
    let wset = vm.wset_bytes;
    // Bytes a round of `t` s adds to `left` unsent bytes of the working set.
    let dirtied = |left: f64, t: f64| (left + workload_pps * t * PAGE).min(wset.max(left)) + background_pps * t * PAGE;
    let setup_ms = p.setup_ms.at(vm.vmsize_bytes / GIB).max(0.0);
    let t1 = (p.first_round_extra_bytes.at(vm.vmsize_bytes).max(0.0) + wset) / b;
    let mut rounds = vec![PredictedRound { round: 1, duration_ms: t1 * 1e3, dirty_bytes: vm.vmsize_bytes }];
    let mut elapsed = t1;
    let mut converges = true;
    // Pending after the sync that ends round 1: its leftover and what it dirtied.
    let leftover1 = leftover1.clamp(0.0, theta);
    let mut pending = match variant {
        Variant::Simulation => leftover1 + dirtied(0.0, t1),
        Variant::ClosedForm => (workload_pps + background_pps) * t1 * PAGE,
    };
    match variant {
        Variant::Simulation => {
            let window = rates.window_s;
            let per_window = b * window;
            while pending >= theta {
                if elapsed > HORIZON_S {
                    converges = false;
                    break;
                }
                // Windows until a check finds less than the threshold.
                let windows = ((pending - theta) / per_window).floor() + 1.0;
                let t = windows * window + p.sync_ms / 1e3;
                let left = (pending - windows * per_window).max(0.0);
                rounds.push(PredictedRound {
                    round: rounds.len() as u32 + 1,
                    duration_ms: t * 1e3,
                    dirty_bytes: pending,
                });
                elapsed += t;
                pending = dirtied(left, t);
            }
        }
        Variant::ClosedForm => {
            // Vᵢ = V₁ λ^(i−1) until Vₙ < θ: n − 1 more rounds, Σ Tᵢ = V₁ (1 − λ^(n−1)) / ((1 − λ) B).
            let lambda = (workload_pps + background_pps) * PAGE / b;
            if pending >= theta {
                let more =
                    if lambda >= 1.0 { None } else { Some(((theta / pending).ln() / lambda.ln()).floor() + 1.0) };
                let more = more.filter(|&m| {
                    let t = pending * (1.0 - lambda.powf(m)) / ((1.0 - lambda) * b);
                    elapsed + t <= HORIZON_S
                });
                match more {
                    Some(m) => {
                        let mut v = pending;
                        for _ in 0..m as u32 {
                            rounds.push(PredictedRound {
                                round: rounds.len() as u32 + 1,
                                duration_ms: v / b * 1e3,
                                dirty_bytes: v,
                            });
                            elapsed += v / b;
                            v *= lambda;
                        }
                        pending = v;
                    }
                    None => {
                        converges = false;
                        elapsed = HORIZON_S;
                    }
                }
            }
        }
    }
    let switchover_s = p.switchover_ms / 1e3;
    let stop_copy_bytes = match variant {
        Variant::Simulation => dirtied(pending, switchover_s),
        Variant::ClosedForm => pending + (workload_pps + background_pps) * switchover_s * PAGE,
    };
    let stop_copy_ms = (rates.stop_copy_fixed_ms + stop_copy_bytes / rates.stop_copy * 1e3).max(0.0);
    let blackout_ms = stop_copy_ms + rates.load_ms + p.resume_ms;
    let first_packet_ms = p.reconvergence_ms.at(blackout_ms).max(0.0);
    Prediction {
        variant,
        converges,
        migration_time_ms: p.command_offset_ms
            + setup_ms
            + elapsed * 1e3
            + p.switchover_ms
            + stop_copy_ms
            + rates.load_ms
            + p.resume_ms,
        // The pre-copy rounds, the one cut short by the switchover, the final one.
        rounds: rounds.len() as u32 + 2,
        rounds_mean: (rounds.len() + 2) as f64,
        qemu_downtime_ms: stop_copy_ms + p.reported_downtime_offset_ms,
        blackout_ms,
        guest_downtime_ms: blackout_ms + first_packet_ms + p.probe_edge_ms,
        bandwidth_bytes_per_s: b,
        threshold_bytes: theta,
        last_sync_bytes: pending,
        stop_copy_bytes,
        setup_ms,
        stop_copy_ms,
        first_packet_ms,
        precopy_rounds: rounds,
        assumed: rates.assumed.clone(),
    }
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::QEMU_DEFAULT_BANDWIDTH;

    fn params() -> Params {
        Params {
            bandwidth_efficiency: Some(1.0),
            link_efficiency: None,
            stop_copy_bandwidth: Some(1e9),
            stop_copy_link_efficiency: None,
            stop_copy_link_fixed_ms: 0.0,
            link_drain_bytes: None,
            link_window_ms: None,
            stop_copy_fixed_ms: 5.0,
            setup_ms: Line { intercept: 100.0, slope: 0.0 },
            first_round_extra_bytes: Line { intercept: 80e6, slope: 0.0 },
            first_round_leftover_bytes: 0.0,
            first_round_leftover_deciles: Vec::new(),
            dirty_rate_efficiency: 1.0,
            background_dirty_pps: 0.0,
            sync_ms: 0.0,
            switchover_ms: 0.0,
            destination_load_ms: 5.0,
            resume_ms: 1.0,
            reconvergence_ms: Line { intercept: 20.0, slope: 0.0 },
            probe_edge_ms: 0.0,
            reported_downtime_offset_ms: 0.0,
            command_offset_ms: 0.0,
        }
    }

    fn vm(wset_mib: f64, rate: f64) -> Vm {
        Vm {
            vmsize_bytes: 256.0 * 1048576.0,
            wset_bytes: wset_mib * 1048576.0,
            rate_pps: rate,
            rate_kind: RateKind::Workload,
            max_bandwidth: None,
            downtime_limit_ms: None,
            manager: crate::model::Manager::Qemu,
            link: crate::hypervisor::link::LinkRate::Unlimited,
        }
    }

    fn predict(p: &Params, vm: &Vm, variant: Variant) -> Prediction {
        super::predict(p, vm, variant).expect("prediction")
    }

    #[test]
    fn an_idle_guest_stops_after_round_one_with_nothing_to_copy() {
        for variant in Variant::ALL {
            let p = predict(&params(), &vm(32.0, 0.0), variant);
            assert!(p.converges);
            assert_eq!(p.rounds, 3, "round 1, the one cut short, the final one");
            let t1 = (80e6 + 32.0 * 1048576.0) / QEMU_DEFAULT_BANDWIDTH * 1e3;
            assert!((p.migration_time_ms - (100.0 + t1 + 5.0 + 5.0 + 1.0)).abs() < 1e-6, "{p:?}");
            assert!((p.qemu_downtime_ms - 5.0).abs() < 1e-9);
            assert!((p.guest_downtime_ms - (5.0 + 5.0 + 1.0 + 20.0)).abs() < 1e-9);
        }
    }

    #[test]
    fn a_working_set_below_the_threshold_is_the_downtime() {
        // 16 MiB dirtied faster than round 1 lasts: all of it is copied stopped.
        let p = predict(&params(), &vm(16.0, 20_000.0), Variant::Simulation);
        assert_eq!(p.rounds, 3);
        assert!((p.stop_copy_bytes - 16.0 * 1048576.0).abs() < 1.0, "{}", p.stop_copy_bytes);
        // The closed form has no working set: it copies what round 1 dirtied at 20,000 pages/s.
        let c = predict(&params(), &vm(16.0, 20_000.0), Variant::ClosedForm);
        assert!(c.stop_copy_bytes > 16.0 * 1048576.0, "{}", c.stop_copy_bytes);
    }

    #[test]
    fn rounds_shrink_until_below_the_threshold_and_never_when_the_guest_outruns_the_link() {
        let p = predict(&params(), &vm(96.0, 10_000.0), Variant::Simulation);
        assert!(p.converges && p.rounds > 3, "{p:?}");
        assert!(p.stop_copy_bytes < p.threshold_bytes, "{p:?}");
        // Window rounds last whole windows.
        for r in &p.precopy_rounds[1..] {
            let w = r.duration_ms / (WINDOW_S * 1e3);
            assert!((w - w.round()).abs() < 1e-9 && w >= 1.0, "{r:?}");
        }
        // 40,000 pages/s is 164 MB/s: more than 128 MiB/s drains.
        for variant in Variant::ALL {
            let p = predict(&params(), &vm(200.0, 40_000.0), variant);
            assert!(!p.converges, "{variant:?}: {p:?}");
        }
    }

    #[test]
    fn the_link_bounds_the_precopy_below_the_cap_and_paces_the_stop_and_copy() {
        let gbit: crate::hypervisor::link::LinkRate = "1gbit".parse().expect("rate");
        let p = Params {
            link_efficiency: Some(0.95),
            stop_copy_link_efficiency: Some(0.9),
            stop_copy_link_fixed_ms: -2.0,
            link_drain_bytes: Some(3e6),
            ..params()
        };
        let over = |link| Vm { link, ..vm(32.0, 2_000.0) };
        let fast = predict(&p, &over(crate::hypervisor::link::LinkRate::Unlimited), Variant::Simulation);
        let slow = predict(&p, &over(gbit), Variant::Simulation);
        // 125 MB/s × 0.95 is below 128 MiB/s × 1.0.
        assert!((slow.bandwidth_bytes_per_s - 0.95 * 125e6).abs() < 1.0, "{}", slow.bandwidth_bytes_per_s);
        assert!((fast.bandwidth_bytes_per_s - QEMU_DEFAULT_BANDWIDTH).abs() < 1.0);
        // The stop-and-copy at 0.9 × 125 MB/s instead of 1 GB/s (its own fixed ms), the
        // drain on top.
        let want = -2.0 + slow.stop_copy_bytes / (0.9 * 125e6) * 1e3;
        assert!((slow.stop_copy_ms - want).abs() < 1e-6, "{} {want}", slow.stop_copy_ms);
        assert!((slow.blackout_ms - (slow.stop_copy_ms + 5.0 + 3e6 / 125e6 * 1e3 + 1.0)).abs() < 1e-6);
        assert!(slow.assumed.is_empty() && fast.assumed.is_empty());
        // A cap below the link bounds it again; a model that never saw a link says what it
        // assumed for one.
        let capped = Vm { max_bandwidth: Some(50.0 * 1048576.0), ..over(gbit) };
        assert!((predict(&p, &capped, Variant::Simulation).bandwidth_bytes_per_s - 50.0 * 1048576.0).abs() < 1.0);
        let unseen = predict(&params(), &over(gbit), Variant::Simulation);
        assert!(
            unseen.assumed.iter().any(|a| a.contains("no fitted migration crossed a shaped link")),
            "{:?}",
            unseen.assumed
        );
    }

    #[test]
    fn the_closed_form_is_geometric() {
        let mut prm = params();
        prm.first_round_extra_bytes = Line { intercept: 0.0, slope: 0.0 };
        let v = Vm { wset_bytes: 200.0 * 1048576.0, ..vm(200.0, 8_192.0) };
        let p = predict(&prm, &v, Variant::ClosedForm);
        // λ = 8,192 pages/s × 4 KiB ÷ 128 MiB/s = 1/4: V₁ = 50 MiB, V₂ = 12.5 MiB < θ (38.4 MiB).
        assert_eq!(p.rounds, 4, "{p:?}");
        assert!((p.precopy_rounds[1].dirty_bytes - 50.0 * 1048576.0).abs() < 1.0);
        assert!((p.stop_copy_bytes - 12.5 * 1048576.0).abs() < 1.0);
    }
}
