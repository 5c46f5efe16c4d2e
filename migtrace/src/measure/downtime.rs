//! Downtime and migration time, every way, from what one migration left behind.

use serde::{Deserialize, Serialize};

use super::{ping::PingReport, prober::ProberReport, timeline::Timeline};
use crate::{hypervisor::MigrationOutcome, probe::tracer::PacketStamp};

/// Downtime of one migration by method, milliseconds. `None`: not measured (see the
/// record's `missing`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Downtimes {
    /// The paper's: lost 50 ms pings × interval.
    pub ping: Option<f64>,
    /// The largest gap between the ping's replies.
    pub ping_max_gap: Option<f64>,
    /// Longest gap between probe replies at the taps around the switchover.
    pub probe_gap: Option<f64>,
    /// Source vCPUs stopped → destination vCPUs running.
    pub vcpu: Option<f64>,
    /// The hypervisor's own figure (QEMU: source VM stopped → source done).
    pub reported: Option<f64>,
    /// Guest-progress gap: last guest heartbeat from the source → first from the
    /// destination (a guest without network; see [`super::heartbeat`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_gap: Option<f64>,
}

/// Migration time by method, milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationTimes {
    /// The paper's: wall time of the triggering command until completion.
    pub command: Option<f64>,
    /// The hypervisor's (QEMU `total-time`).
    pub reported: Option<f64>,
    /// Traced: migration set up → source completed.
    pub traced: Option<f64>,
    /// Traced: migration set up → destination vCPUs running.
    pub traced_to_resume: Option<f64>,
}

/// The probe sender's side of a migration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeSummary {
    pub interval_us: u64,
    /// ICMP identifier of the sender's requests (replies carry it).
    #[serde(default)]
    pub ident: u16,
    pub sent: u64,
    /// Requests without a reply seen at a tap.
    pub lost: u64,
    /// Replies seen at the taps (the stamps the gap is measured from).
    pub replies: u64,
    /// The gap around the switchover, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap_ms: Option<f64>,
    /// The guest never answered a request sent after it resumed before observation
    /// ended: the downtime is at least this long (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_gap_ms: Option<f64>,
    /// When it began: ms from the migration command to the last reply before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap_start_ms: Option<f64>,
    /// Host (tap) of the last reply before the gap and of the first after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_host_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_host_after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn ms_between(a: u64, b: u64) -> f64 {
    b.saturating_sub(a) as f64 / 1e6
}

/// The longest gap between probe replies around the switchover, from the tc stamps of
/// replies to `prober`'s requests.
///
/// With the switchover known (`paused`, `resumed`), the candidates are the gaps that end
/// after the source paused and begin before the guest first answered a request sent
/// after it resumed (replies it had queued before the stop do not count as recovery).
/// If it never did within the observation, the gap is open: `gap_ms` stays empty and
/// `open_gap_ms` holds the lower bound.
pub fn probe_gap(
    prober: &ProberReport,
    packets: &[PacketStamp],
    switchover: Option<(u64, u64)>,
    origin_ns: u64,
) -> ProbeSummary {
    let mut replies: Vec<&PacketStamp> = packets
        .iter()
        .filter(|p| p.kind == "icmp-echo-reply" && p.ident == prober.ident && p.ts_ns >= prober.first_sent_ns)
        .collect();
    replies.sort_by_key(|p| p.ts_ns);
    let mut summary = ProbeSummary {
        interval_us: prober.interval_us,
        ident: prober.ident,
        sent: prober.sent,
        lost: prober.sent.saturating_sub(replies.len() as u64),
        replies: replies.len() as u64,
        error: prober.error.clone(),
        ..ProbeSummary::default()
    };
    let gaps = replies.windows(2).map(|w| (w[0], w[1]));
    let chosen = match switchover {
        Some((paused, resumed)) => {
            let Some(recovery) = replies.iter().find(|p| p.ts_ns >= resumed && p.sent_ns >= resumed).map(|p| p.ts_ns)
            else {
                // Observation ends 50 ms after the last request (the sender's final wait).
                let end = prober.last_sent_ns + 50_000_000;
                if let Some(last) = replies.iter().rev().find(|p| p.ts_ns <= end) {
                    summary.open_gap_ms = Some(ms_between(last.ts_ns, end));
                    summary.last_host_before = Some(last.tap.clone());
                }
                return summary;
            };
            gaps.filter(|(a, b)| b.ts_ns >= paused && a.ts_ns <= recovery).max_by_key(|(a, b)| b.ts_ns - a.ts_ns)
        }
        None => gaps.max_by_key(|(a, b)| b.ts_ns - a.ts_ns),
    };
    if let Some((a, b)) = chosen {
        summary.gap_ms = Some(ms_between(a.ts_ns, b.ts_ns));
        summary.gap_start_ms = Some((a.ts_ns as i128 - origin_ns as i128) as f64 / 1e6);
        summary.last_host_before = Some(a.tap.clone());
        summary.first_host_after = Some(b.tap.clone());
    }
    summary
}

/// Everything measured of one migration, with what is missing and why.
pub fn compute(
    outcome: &MigrationOutcome,
    timeline: &Timeline,
    ping: Option<&PingReport>,
    probe: Option<&ProbeSummary>,
) -> (Downtimes, MigrationTimes, Vec<String>) {
    let mut missing = Vec::new();
    let marks = &timeline.marks;
    let mark_span = |a: Option<u64>, b: Option<u64>| a.zip(b).map(|(a, b)| ms_between(a, b));

    let ping_dt = match ping {
        Some(p) if p.error.is_none() && p.sent > 0 => Some(p.downtime_ms()),
        Some(p) => {
            missing.push(format!("downtime_ms.ping: {}", p.error.as_deref().unwrap_or("ping got no replies")));
            None
        }
        None => {
            missing.push("downtime_ms.ping: ping disabled".into());
            None
        }
    };
    let ping_max_gap = ping.filter(|p| p.error.is_none()).and_then(|p| p.max_gap_ms);
    let probe_gap = match probe {
        Some(summary) if summary.error.is_none() && summary.gap_ms.is_some() => summary.gap_ms,
        Some(summary) => {
            let why = match (&summary.error, summary.open_gap_ms) {
                (Some(e), _) => format!("probe sender failed: {e}"),
                (None, Some(lb)) => format!(
                    "the guest answered no probe sent after it resumed before observation ended; downtime > {lb:.0} ms (raise --settle)"
                ),
                (None, None) => "fewer than two probe replies seen at the taps".into(),
            };
            missing.push(format!("downtime_ms.probe_gap: {why}"));
            None
        }
        None => {
            missing.push("downtime_ms.probe_gap: probe sender disabled or probes off".into());
            None
        }
    };
    let vcpu = mark_span(marks.source_paused_ns, marks.destination_resumed_ns);
    if vcpu.is_none() {
        missing.push("downtime_ms.vcpu: no pause/resume stamps (probes off and no QMP STOP/RESUME)".into());
    }
    let reported = outcome.stats.downtime.map(|d| d as f64);
    if reported.is_none() {
        missing.push("downtime_ms.reported: the hypervisor reported no downtime".into());
    }
    let traced = mark_span(marks.setup_ns, marks.source_completed_ns);
    let traced_to_resume = mark_span(marks.setup_ns, marks.destination_resumed_ns);
    if traced.is_none() {
        missing.push("migration_time_ms.traced: no setup/completion stamps".into());
    }
    (
        Downtimes { ping: ping_dt, ping_max_gap, probe_gap, vcpu, reported, heartbeat_gap: None },
        MigrationTimes {
            command: outcome.command_ms(),
            reported: outcome.stats.total_time.map(|t| t as f64),
            traced,
            traced_to_resume,
        },
        missing,
    )
}
