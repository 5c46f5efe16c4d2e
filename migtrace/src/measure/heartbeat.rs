//! The guest-progress gap: a guest without network (the minimal guest) sends a
//! heartbeat byte on its serial port every interval; the hosts stamp each as it
//! arrives. The last heartbeat from the source and the first from the destination
//! bound the time the guest made no progress anyone could see.
//!
//! Precision: a heartbeat is stamped when the host's reader returns from `read()`, a
//! few µs after the guest's `out` on an idle host, later when the reader or the vCPU
//! waits for a CPU. The interval statistics of the heartbeats outside the gap measure
//! exactly that (a perfect stamp would show the guest's interval every time).

use serde::{Deserialize, Serialize};

use super::timeline::{Evidence, Host, Phase, Timeline};
use crate::hypervisor::Heartbeat;

/// What the heartbeats say about one migration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatSummary {
    /// Heartbeats received from the source and from the destination while observed.
    pub source: u64,
    pub destination: u64,
    /// The guest-progress gap: last heartbeat from the source → first from the
    /// destination, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap_ms: Option<f64>,
    /// When it began, ms from the migration command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap_start_ms: Option<f64>,
    /// CLOCK_MONOTONIC ns of the first heartbeat from the destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_destination_ns: Option<u64>,
    /// Intervals between consecutive heartbeats of one host, the gap left out: p50,
    /// p99 (nearest rank, [`crate::percentile`]) and max, ms. Their spread is the stamping precision (and any stall of the
    /// guest before the switchover, such as dirty-logging faults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_p99_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_max_ms: Option<f64>,
    /// Why there is no gap, if there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Summarises the heartbeats of a migration from `source` to `destination` (host
/// names), observed from before the command (`origin_ns`) to the end of observation.
pub fn summarise(beats: &[Heartbeat], source: &str, destination: &str, origin_ns: u64) -> HeartbeatSummary {
    let of = |host: &str| -> Vec<u64> { beats.iter().filter(|b| b.host == host).map(|b| b.ts_ns).collect() };
    let (src, dst) = (of(source), of(destination));
    let mut s = HeartbeatSummary { source: src.len() as u64, destination: dst.len() as u64, ..Default::default() };
    let mut intervals: Vec<u64> = [&src, &dst].iter().flat_map(|b| b.windows(2).map(|w| w[1] - w[0])).collect();
    intervals.sort_unstable();
    if !intervals.is_empty() {
        let at = |q: f64| crate::percentile::of_sorted(&intervals, q).map(ms);
        (s.interval_p50_ms, s.interval_p99_ms, s.interval_max_ms) = (at(0.5), at(0.99), at(1.0));
    }
    match (dst.first(), src.iter().rev().find(|&&t| dst.first().is_none_or(|&d| t <= d))) {
        (Some(&first), Some(&last)) => {
            s.gap_ms = Some(ms(first - last));
            s.gap_start_ms = Some((last as i128 - origin_ns as i128) as f64 / 1e6);
            s.first_destination_ns = Some(first);
        }
        (None, _) => s.error = Some("no heartbeat from the destination (guest hung after the migration?)".into()),
        (Some(_), None) => s.error = Some("no heartbeat from the source before the destination's first".into()),
    }
    s
}

/// Adds `first guest heartbeat` to the main chain: destination vCPUs running → the
/// first heartbeat from the destination (a guest without network has no first packet).
pub fn add_phase(timeline: &mut Timeline, first_destination_ns: u64) {
    let Some(resumed) = timeline.chain().find(|p| p.name == "resume").map(|p| p.start_ms + p.duration_ms) else {
        return;
    };
    let at = (first_destination_ns as i128 - timeline.marks.command_ns as i128) as f64 / 1e6;
    timeline.phases.push(Phase {
        name: "first guest heartbeat".into(),
        host: Host::Destination,
        start_ms: resumed,
        duration_ms: (at - resumed).max(0.0),
        evidence: Evidence::Serial,
        parallel: false,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(ms: u64, host: &str) -> Heartbeat {
        Heartbeat { ts_ns: ms * 1_000_000, host: host.into() }
    }

    #[test]
    fn the_gap_spans_the_switchover() {
        let mut beats: Vec<Heartbeat> = (100..=150).map(|t| beat(t, "tap-a")).collect();
        beats.extend((162..=170).map(|t| beat(t, "tap-b")));
        let s = summarise(&beats, "tap-a", "tap-b", 90_000_000);
        assert_eq!((s.source, s.destination), (51, 9));
        assert_eq!(s.gap_ms, Some(12.0));
        assert_eq!(s.gap_start_ms, Some(60.0));
        assert_eq!(s.first_destination_ns, Some(162_000_000));
        assert_eq!((s.interval_p50_ms, s.interval_max_ms), (Some(1.0), Some(1.0)));
        assert_eq!(s.error, None);
    }

    #[test]
    fn interval_percentiles_are_nearest_rank_as_everywhere() {
        // Intervals 1, 2, 3, 4 ms: the median is the 2nd (⌈0.5 · 4⌉), as in the
        // statistics; a rounded index ((4 − 1) · 0.5 → 2) took the 3rd.
        let mut beats: Vec<Heartbeat> = [0, 1, 3, 6, 10].into_iter().map(|t| beat(t, "tap-a")).collect();
        beats.push(beat(30, "tap-b"));
        let s = summarise(&beats, "tap-a", "tap-b", 0);
        assert_eq!((s.interval_p50_ms, s.interval_p99_ms, s.interval_max_ms), (Some(2.0), Some(4.0), Some(4.0)));
    }

    #[test]
    fn a_silent_destination_is_an_error_not_a_gap() {
        let beats: Vec<Heartbeat> = (0..10).map(|t| beat(t, "tap-a")).collect();
        let s = summarise(&beats, "tap-a", "tap-b", 0);
        assert_eq!(s.gap_ms, None);
        assert!(s.error.as_deref().is_some_and(|e| e.contains("no heartbeat from the destination")));
    }

    #[test]
    fn the_phase_continues_the_chain_after_resume() {
        let mut t = Timeline::default();
        t.marks.command_ns = 1_000_000_000;
        t.phases.push(Phase {
            name: "resume".into(),
            host: Host::Destination,
            start_ms: 100.0,
            duration_ms: 0.5,
            evidence: Evidence::Ebpf,
            parallel: false,
        });
        add_phase(&mut t, 1_000_000_000 + 101_500_000);
        let p = t.phase("first guest heartbeat").expect("phase");
        assert_eq!((p.start_ms, p.duration_ms, p.evidence), (100.5, 1.0, Evidence::Serial));
    }
}
