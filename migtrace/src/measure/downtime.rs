//! Downtime and migration time, every way, from what one migration left behind.

use std::{cmp::Ordering, collections::BTreeMap};

use serde::{Deserialize, Serialize};

use super::{
    outage,
    ping::PingReport,
    prober::{OBSERVE_AFTER_LAST, ProberReport},
    timeline::{Evidence, Timeline},
};
use crate::{clock::WallClock, hypervisor::MigrationOutcome, probe::tracer::PacketStamp};

/// Downtime of one migration by method, milliseconds. `None`: not measured (see the
/// record's `missing`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Downtimes {
    /// The paper's: lost pings × the ping's interval.
    pub ping: Option<f64>,
    /// The largest gap between the ping's replies around the switchover.
    pub ping_max_gap: Option<f64>,
    /// Longest gap between probe replies at the taps around the switchover.
    pub probe_gap: Option<f64>,
    /// vCPU blackout: source vCPUs stopped → destination vCPUs running (see
    /// [`super::timeline::Marks`] for both instants).
    pub vcpu: Option<f64>,
    /// The hypervisor's own figure (QEMU: source VM stopped → source done).
    pub reported: Option<f64>,
    /// Guest-progress gap: last guest heartbeat from the source → first from the
    /// destination (a guest without network; see [`super::heartbeat`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_gap: Option<f64>,
    /// All the time the guest did not answer during the observation, wherever it fell
    /// (the record's `outages`, those the guest's own): the paper's lost × interval at
    /// the probe's resolution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outages_total: Option<f64>,
    /// The longest of those outages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longest_outage: Option<f64>,
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
    /// The guest never answered a request sent after the stop before observation
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
    /// The sender itself stalled at the gap's edges: how late it was (ms) sending the
    /// request after the gap's first reply's and the one of its last reply. Beyond one
    /// interval or 5 % of the gap ([`late_beyond_resolution`]) the gap is not the
    /// guest's alone and is not taken as `downtime_ms.probe_gap`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_late_ms: Option<f64>,
    /// The sender's socket got a reply to a request sent after the resume that no tap
    /// saw: the classifier missed replies, the guest was not silent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub taps_missed_replies: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Milliseconds from `a` to `b` (monotonic ns). Equal or reversed stamps are no
/// duration of 0 but an error saying so.
pub fn span_ms(a: u64, b: u64) -> Result<f64, String> {
    match b.cmp(&a) {
        Ordering::Greater => Ok((b - a) as f64 / 1e6),
        Ordering::Equal => Err("its start and end stamps are equal".into()),
        Ordering::Less => Err(format!("its end is {:.3} ms before its start", (a - b) as f64 / 1e6)),
    }
}

/// A reply as the gap measures see it: when it was seen and when its request left
/// (monotonic ns), and its sequence number.
#[derive(Clone, Copy, Debug)]
struct Reply {
    ts: u64,
    sent: u64,
    seq: u16,
}

/// Whether a sender's lateness at a gap is more than the gap measure resolves anyway:
/// one send interval, or 5 % of the gap. Beyond that the gap is not the guest's alone.
pub fn late_beyond_resolution(late_ms: f64, interval_ms: f64, gap_ms: f64) -> bool {
    late_ms > interval_ms.max(0.05 * gap_ms)
}

/// What [`switchover_gap`] found.
#[derive(Debug, PartialEq)]
enum Choice {
    /// The gap from reply `i` to reply `j`.
    Gap(usize, usize),
    /// No reply to a request sent after the source stopped the guest.
    NoRecovery,
    /// No switchover marks: a gap cannot be placed at it.
    Unwindowed,
    /// No gap qualifies (fewer than two replies, none before the switchover).
    NoGap,
}

/// The downtime gap among `replies` (sorted by `ts`): the silence the source's stop fell
/// in ([`outage::switchover_silence`]), from the last reply before it to the first
/// reply to a request sent after the source stopped (only the guest running on the
/// destination answers those). Replies the guest had queued before the stop, sent in
/// a burst at the resume, do not end it; a stall that begins once the
/// guest answered again is an outage of its own, not the downtime. Without the
/// switchover's marks the gap cannot be placed: no gap (`outages` has every silence).
fn switchover_gap(replies: &[Reply], switchover: Option<(u64, u64)>) -> Choice {
    let Some((paused, _)) = switchover else { return Choice::Unwindowed };
    let plain: Vec<outage::Reply> = replies.iter().map(|r| outage::Reply { ts: r.ts, sent: r.sent }).collect();
    let found = outage::silences(&plain, 0, switchover);
    match outage::switchover_silence(&plain, &found, paused) {
        Some(outage::Silence { from, to: Some(to) }) => Choice::Gap(from, to),
        Some(outage::Silence { to: None, .. }) => Choice::NoRecovery,
        None if replies.iter().any(|r| r.ts >= paused) || replies.len() < 2 => Choice::NoGap,
        None => Choice::NoRecovery,
    }
}

/// How late the sender was around the gap between replies to requests sent at `sa` and
/// `sb` (ns): requests inside the gap that went unanswered prove the guest silent, so
/// only a stall right after `sa` (the guest may still have answered) or right before
/// `sb` (it may already have answered) can have lengthened the gap.
pub(crate) fn sender_lateness(prober: &ProberReport, sa: u64, sb: u64) -> Option<f64> {
    if sa == 0 || sb == 0 {
        return None; // no echoed stamps (replies of another build)
    }
    let interval = prober.interval_us * 1000;
    let late = |&(h0, h1): &(u64, u64)| (h1 - h0).saturating_sub(interval);
    let after_first = prober.holes.iter().find(|h| h.0 == sa);
    let before_last = prober.holes.iter().find(|h| h.1 == sb);
    let ns = match (after_first, before_last) {
        (Some(a), Some(b)) if a == b => late(a),
        (a, b) => a.map_or(0, late) + b.map_or(0, late),
    };
    (ns > 0).then(|| ns as f64 / 1e6)
}

/// The gap between probe replies around the switchover, from the tc stamps of replies
/// to `prober`'s requests (see [`switchover_gap`]).
///
/// If the guest answered no request sent after the stop within the observation, the
/// gap is open: `gap_ms` stays empty and `open_gap_ms` holds the lower bound, unless
/// the sender's own socket saw such an answer (then the taps missed replies).
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
    let stamps: Vec<Reply> = replies.iter().map(|p| Reply { ts: p.ts_ns, sent: p.sent_ns, seq: p.seq }).collect();
    match switchover_gap(&stamps, switchover) {
        Choice::Gap(i, j) => {
            let (a, b) = (replies[i], replies[j]);
            summary.gap_ms = span_ms(a.ts_ns, b.ts_ns).ok();
            summary.gap_start_ms = Some((a.ts_ns as i128 - origin_ns as i128) as f64 / 1e6);
            summary.last_host_before = Some(a.tap.clone());
            summary.first_host_after = Some(b.tap.clone());
            summary.sender_late_ms = sender_lateness(prober, a.sent_ns, b.sent_ns);
        }
        Choice::NoRecovery => {
            let resumed = switchover.map_or(0, |s| s.1);
            if prober.last_answered_sent_ns.is_some_and(|s| s >= resumed) {
                summary.taps_missed_replies = true;
                return summary;
            }
            let end = prober.last_sent_ns + OBSERVE_AFTER_LAST.as_nanos() as u64;
            match replies.iter().rev().find(|p| p.ts_ns <= end) {
                Some(last) => {
                    summary.open_gap_ms = span_ms(last.ts_ns, end).ok();
                    summary.last_host_before = Some(last.tap.clone());
                }
                // Not a single reply: silent from the first request on.
                None => summary.open_gap_ms = span_ms(prober.first_sent_ns, end).ok(),
            }
        }
        Choice::Unwindowed => {
            summary.error = Some(
                "no switchover marks (the hosts were not traced): a gap cannot be placed at the switchover; \
                 `outages` has every silence"
                    .into(),
            );
        }
        Choice::NoGap => {}
    }
    summary
}

/// The reference ping's gap around the switchover.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PingGap {
    pub ms: f64,
    /// When its first reply was printed (monotonic ns).
    pub start_ns: u64,
    /// How late ping itself was within it, ms.
    pub late_ms: Option<f64>,
}

/// The largest gap between the reference ping's replies around the switchover, by the
/// same rule as the probe gap ([`switchover_gap`]), in ms, and how late the ping itself
/// was within it (ms), if at all.
///
/// Ping stamps a reply when it prints it (`-D`, wall clock; `clock` converts), and its
/// request left the reply's round-trip time before. The requests between the gap's two
/// replies went unanswered, and their number is in the sequence numbers: a gap longer
/// than those requests' intervals is the ping's own delay (a stalled or starved ping),
/// not the guest's.
pub fn ping_gap(ping: &PingReport, switchover: Option<(u64, u64)>, clock: WallClock) -> Result<PingGap, String> {
    let mut replies: Vec<Reply> = ping
        .replies
        .iter()
        .map(|r| {
            let ts = clock.from_unix_us(r.unix_us);
            Reply { ts, sent: ts.saturating_sub(r.rtt_us.max(0) as u64 * 1000), seq: r.seq }
        })
        .collect();
    replies.sort_by_key(|r| r.ts);
    match switchover_gap(&replies, switchover) {
        Choice::Gap(i, j) => {
            let (a, b) = (replies[i], replies[j]);
            let expected = u64::from(b.seq.wrapping_sub(a.seq)) * (ping.interval_ms * 1e6) as u64;
            let late = b.sent.saturating_sub(a.sent).saturating_sub(expected);
            Ok(PingGap { ms: span_ms(a.ts, b.ts)?, start_ns: a.ts, late_ms: (late > 0).then(|| late as f64 / 1e6) })
        }
        Choice::NoRecovery => Err("ping got no reply to a request sent after the source stopped the guest".into()),
        Choice::Unwindowed => Err(
            "no switchover marks (the hosts were not traced): the gap cannot be placed at the switchover; `outages` has \
             every silence"
                .into(),
        ),
        Choice::NoGap if replies.len() < 2 => Err(format!("ping got {} replies, a gap needs two", replies.len())),
        Choice::NoGap => Err("ping got no reply before the switchover".into()),
    }
}

/// Everything measured of one migration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measures {
    pub downtime_ms: Downtimes,
    pub migration_time_ms: MigrationTimes,
    /// Where measures whose source can vary came from (`downtime_ms.vcpu` → `probe` or
    /// `qmp`).
    pub evidence: BTreeMap<String, Evidence>,
    /// The ping's gap around the switchover and how late the ping itself was in it,
    /// whether or not it is taken as `ping_max_gap`.
    pub ping_gap: Option<PingGap>,
    /// Each measure that is `None`, and why.
    pub missing: Vec<String>,
}

/// Everything measured of one migration, with what is missing and why.
pub fn compute(
    outcome: &MigrationOutcome,
    timeline: &Timeline,
    ping: Option<&PingReport>,
    probe: Option<&ProbeSummary>,
) -> Measures {
    let mut missing = Vec::new();
    let mut evidence = BTreeMap::new();
    let marks = &timeline.marks;
    let switchover = marks.source_paused_ns.zip(marks.destination_resumed_ns);
    let clock = WallClock::from_pair(outcome.start_ns, outcome.start_unix_us);

    let ping_dt = match ping {
        Some(p) if p.error.is_none() && p.sent > 0 => Some(p.downtime_ms()),
        Some(p) => {
            missing.push(format!("downtime_ms.ping: {}", p.error.as_deref().unwrap_or("ping sent nothing")));
            None
        }
        None => {
            missing.push("downtime_ms.ping: ping disabled".into());
            None
        }
    };
    let raw_ping_gap = ping.filter(|p| p.error.is_none()).map(|p| ping_gap(p, switchover, clock));
    let ping_max_gap = match (ping, &raw_ping_gap) {
        (Some(p), Some(Ok(PingGap { ms: gap, late_ms: Some(late), .. })))
            if late_beyond_resolution(*late, p.interval_ms, *gap) =>
        {
            missing.push(format!(
                "downtime_ms.ping_max_gap: ping itself was {late:.1} ms late within the {gap:.1} ms gap (stalled or \
                 starved): not the guest's alone"
            ));
            None
        }
        (_, Some(Ok(g))) => Some(g.ms),
        (_, Some(Err(why))) => {
            missing.push(format!("downtime_ms.ping_max_gap: {why}"));
            None
        }
        (Some(_), None) => {
            missing.push("downtime_ms.ping_max_gap: ping failed (see downtime_ms.ping)".into());
            None
        }
        (None, _) => {
            missing.push("downtime_ms.ping_max_gap: ping disabled".into());
            None
        }
    };
    let sender_stalled = |s: &ProbeSummary| {
        s.sender_late_ms.zip(s.gap_ms).is_some_and(|(l, g)| late_beyond_resolution(l, s.interval_us as f64 / 1e3, g))
    };
    let probe_gap = match probe {
        Some(s) if s.error.is_none() && !sender_stalled(s) && s.gap_ms.is_some() => s.gap_ms,
        Some(s) => {
            let why = match (&s.error, s.sender_late_ms, s.open_gap_ms, s.gap_ms) {
                (Some(e), ..) => format!("probe sender failed: {e}"),
                (None, Some(late), _, Some(gap)) if sender_stalled(s) => format!(
                    "the probe sender stalled at the gap's edges ({late:.3} ms late): the {gap:.3} ms gap is not the guest's alone"
                ),
                (None, _, Some(lb), _) => format!(
                    "the guest answered no probe sent after the stop before observation ended; downtime > {lb:.0} ms (raise --settle)"
                ),
                _ if s.taps_missed_replies => {
                    "the sender's socket got answers to probes sent after the resume that no tap saw (classifier missed replies)"
                        .into()
                }
                _ => format!("no gap around the switchover among the {} probe replies seen at the taps", s.replies),
            };
            missing.push(format!("downtime_ms.probe_gap: {why}"));
            None
        }
        None => {
            missing.push("downtime_ms.probe_gap: probe sender disabled".into());
            None
        }
    };

    // A span between two marks, with its evidence; why not, if it cannot be taken.
    let mut span = |measure: &str, from: &str, a: Option<u64>, to: &str, b: Option<u64>| -> Option<f64> {
        let Some((a, b)) = a.zip(b) else {
            let absent: Vec<&str> = [(from, a), (to, b)].iter().filter(|(_, m)| m.is_none()).map(|(n, _)| *n).collect();
            missing.push(format!("{measure}: no {} stamp (no probe point and no QMP event)", absent.join(" or ")));
            return None;
        };
        match span_ms(a, b) {
            Ok(ms) => {
                let ev = Evidence::combine(timeline.mark_evidence(from), timeline.mark_evidence(to));
                evidence.insert(measure.to_owned(), ev);
                Some(ms)
            }
            Err(why) => {
                missing.push(format!("{measure}: {from} → {to}: {why}"));
                None
            }
        }
    };
    let vcpu = span(
        "downtime_ms.vcpu",
        "source-paused",
        marks.source_paused_ns,
        "destination-resumed",
        marks.destination_resumed_ns,
    );
    let traced =
        span("migration_time_ms.traced", "setup", marks.setup_ns, "source-completed", marks.source_completed_ns);
    let traced_to_resume = span(
        "migration_time_ms.traced_to_resume",
        "setup",
        marks.setup_ns,
        "destination-resumed",
        marks.destination_resumed_ns,
    );

    let reported = outcome.stats.downtime.map(|d| d as f64);
    if reported.is_none() {
        missing.push("downtime_ms.reported: the hypervisor reported no downtime".into());
    }
    let command = match outcome.end_ns {
        Some(end) => span_ms(outcome.start_ns, end)
            .map_err(|why| missing.push(format!("migration_time_ms.command: command → end: {why}")))
            .ok(),
        None => {
            missing.push(format!("migration_time_ms.command: the migration did not complete ({:?})", outcome.status));
            None
        }
    };
    let reported_total = outcome.stats.total_time.map(|t| t as f64);
    if reported_total.is_none() {
        missing.push("migration_time_ms.reported: the hypervisor reported no total-time".into());
    }
    missing.extend(timeline.missing.iter().map(|m| format!("timeline: {m}")));
    Measures {
        downtime_ms: Downtimes {
            ping: ping_dt,
            ping_max_gap,
            probe_gap,
            vcpu,
            reported,
            heartbeat_gap: None,
            outages_total: None,
            longest_outage: None,
        },
        migration_time_ms: MigrationTimes { command, reported: reported_total, traced, traced_to_resume },
        evidence,
        ping_gap: raw_ping_gap.and_then(Result::ok),
        missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// A 1 kHz sender whose requests left at `sent` (ms) and whose replies left the
    /// guest at `seen` (ms), all through `tap`.
    fn replies(pairs: &[(u64, u64)], tap: &str) -> Vec<PacketStamp> {
        pairs
            .iter()
            .map(|&(sent, seen)| PacketStamp {
                ts_ns: seen * MS,
                tap: tap.into(),
                kind: "icmp-echo-reply".into(),
                ident: 7,
                seq: sent as u16,
                sent_ns: sent * MS,
            })
            .collect()
    }

    /// Replies 0.2 ms after each request sent every ms in `from..to`.
    fn answered(from: u64, to: u64, tap: &str) -> Vec<PacketStamp> {
        replies(&(from..to).map(|t| (t, t)).collect::<Vec<_>>(), tap)
            .into_iter()
            .map(|mut p| {
                p.ts_ns += MS / 5;
                p
            })
            .collect()
    }

    fn prober(sent: u64, first_ms: u64, last_ms: u64) -> ProberReport {
        ProberReport {
            interval_us: 1000,
            ident: 7,
            sent,
            received: sent,
            first_sent_ns: first_ms * MS,
            last_sent_ns: last_ms * MS,
            ..ProberReport::default()
        }
    }

    #[test]
    fn the_gap_spans_pause_to_first_answer_after_resume() {
        // Guest answers until 100 ms, paused at 100.5, resumed at 130; requests 101–129
        // got no answer, 130 on are answered on the other tap.
        let mut p = answered(0, 101, "tap-a");
        p.extend(answered(130, 200, "tap-b"));
        let s = probe_gap(&prober(200, 0, 199), &p, Some((100 * MS + MS / 2, 130 * MS)), 0);
        assert_eq!(s.gap_ms, Some(30.0));
        assert_eq!(s.gap_start_ms, Some(100.2));
        assert_eq!((s.last_host_before.as_deref(), s.first_host_after.as_deref()), (Some("tap-a"), Some("tap-b")));
        assert_eq!((s.replies, s.lost), (171, 29));
        assert_eq!(s.sender_late_ms, None);
    }

    #[test]
    fn replies_queued_before_the_stop_are_not_recovery() {
        // Requests 95–100 were queued in the stopped guest and answered in a burst at
        // the resume (130 ms), but the guest answers no new request until 180: its
        // peers saw it down until 180.2. Taking the burst as recovery would cut the
        // gap at 130.
        let mut p = answered(0, 95, "tap-a");
        p.extend(replies(&[(95, 130), (96, 130), (97, 130), (98, 130), (99, 130), (100, 130)], "tap-b"));
        p.extend(answered(180, 250, "tap-b"));
        let s = probe_gap(&prober(250, 0, 249), &p, Some((100 * MS, 130 * MS)), 0);
        // One gap, 94.2 → 180.2, not its longer half (130 → 180.2, 50.2 ms).
        assert_eq!(s.gap_ms.map(|g| (g * 1e3).round() / 1e3), Some(86.0));
        assert_eq!(s.gap_start_ms, Some(94.2));
    }

    #[test]
    fn a_stall_right_after_recovery_is_not_the_downtime() {
        // Paused at 100, resumed at 110, the guest answers the request sent at 110 at
        // 110.2 (recovery), then stalls for 60 ms (host busy) before answering again.
        let mut p = answered(0, 100, "tap-a");
        p.extend(answered(110, 111, "tap-b"));
        p.extend(replies(&[(111, 171)], "tap-b"));
        p.extend(answered(172, 250, "tap-b"));
        let s = probe_gap(&prober(250, 0, 249), &p, Some((100 * MS, 110 * MS)), 0);
        // The 110.2 → 171 stall begins exactly at recovery: not a candidate.
        assert_eq!(s.gap_ms.map(|g| (g * 1e3).round() / 1e3), Some(11.0));
        assert_eq!(s.gap_start_ms, Some(99.2));
    }

    #[test]
    fn an_open_gap_is_a_lower_bound_not_a_gap() {
        // Answers stop at 100 and never resume; the sender's last request left at 300.
        let p = answered(0, 100, "tap-a");
        let mut pr = prober(301, 0, 300);
        pr.last_answered_sent_ns = Some(99 * MS);
        let s = probe_gap(&pr, &p, Some((100 * MS, 120 * MS)), 0);
        assert_eq!(s.gap_ms, None);
        // From the last reply (99.2) to the end of observation (300 + 50).
        assert_eq!(s.open_gap_ms.map(|g| (g * 1e3).round() / 1e3), Some(250.8));
        assert!(!s.taps_missed_replies);
        let m = compute_with_probe(&s);
        assert!(m.missing.iter().any(|x| x.contains("downtime > 251 ms")), "{:?}", m.missing);
    }

    #[test]
    fn answers_only_the_socket_saw_are_a_classifier_fault_not_silence() {
        let p = answered(0, 100, "tap-a");
        let mut pr = prober(301, 0, 300);
        pr.last_answered_sent_ns = Some(290 * MS);
        let s = probe_gap(&pr, &p, Some((100 * MS, 120 * MS)), 0);
        assert_eq!((s.gap_ms, s.open_gap_ms), (None, None));
        assert!(s.taps_missed_replies);
    }

    #[test]
    fn a_sender_stall_at_the_gaps_edge_flags_the_measure() {
        // The guest was down 100–110 only, but the sender stalled from its request at
        // 99 until 125: the reply gap (99.2 → 125.2) is mostly the sender's.
        let mut p = answered(0, 100, "tap-a");
        p.extend(answered(125, 200, "tap-b"));
        let mut pr = prober(175, 0, 199);
        pr.holes = vec![(99 * MS, 125 * MS)];
        let s = probe_gap(&pr, &p, Some((100 * MS, 110 * MS)), 0);
        assert_eq!(s.gap_ms, Some(26.0));
        assert_eq!(s.sender_late_ms, Some(25.0), "26 ms between requests, one interval expected");
        let m = compute_with_probe(&s);
        assert_eq!(m.downtime_ms.probe_gap, None);
        assert!(m.missing.iter().any(|x| x.contains("stalled") && x.contains("25.000 ms late")), "{:?}", m.missing);

        // A stall inside the outage, between unanswered requests, changes nothing.
        let mut p = answered(0, 100, "tap-a");
        p.extend(answered(130, 200, "tap-b"));
        let mut pr = prober(190, 0, 199);
        pr.holes = vec![(105 * MS, 115 * MS)];
        let s = probe_gap(&pr, &p, Some((100 * MS, 130 * MS)), 0);
        assert_eq!((s.gap_ms, s.sender_late_ms), (Some(31.0), None));

        // Scheduling jitter: 1.5 ms late right after the last answered request, in a
        // 31 ms gap: recorded, but within 5 % of the gap the figure stands.
        let mut pr = prober(190, 0, 199);
        pr.holes = vec![(99 * MS, 101 * MS + MS / 2)];
        let s = probe_gap(&pr, &p, Some((100 * MS, 130 * MS)), 0);
        assert_eq!(s.sender_late_ms, Some(1.5));
        assert_eq!(compute_with_probe(&s).downtime_ms.probe_gap, Some(31.0));
    }

    #[test]
    fn ping_gap_is_windowed_like_the_probe_gap() {
        use crate::measure::ping::PingReply;
        // Wall clock = monotonic + 1 s. Replies every 50 ms; the guest is down 200–240
        // (paused 200, resumed 240), and a 150 ms stall of the ping long after it
        // (1000 → 1150) must not be taken.
        let clock = WallClock::from_pair(0, 1_000_000);
        let at = |ms: i64| PingReply { unix_us: 1_000_000 + ms * 1000, seq: (ms / 50) as u16, rtt_us: 300 };
        let mut times: Vec<i64> = (0..=150).step_by(50).collect();
        times.extend((250..=1000).step_by(50));
        times.extend((1150..=1300).step_by(50));
        let ping =
            PingReport { interval_ms: 50.0, replies: times.into_iter().map(at).collect(), ..PingReport::default() };
        // 150 → 250: seq 3 → 5, one request unanswered: the ping was on time.
        assert_eq!(
            ping_gap(&ping, Some((200 * MS, 240 * MS)), clock),
            Ok(PingGap { ms: 100.0, start_ns: 150 * MS, late_ms: None })
        );
        // Without the switchover's marks the stall would win: no gap, with the reason.
        assert!(ping_gap(&ping, None, clock).is_err_and(|e| e.contains("no switchover marks")));
        // No reply to a request sent after a stop at 1310: no figure, a reason.
        assert!(
            ping_gap(&ping, Some((1310 * MS, 1400 * MS)), clock)
                .is_err_and(|e| e.contains("after the source stopped the guest"))
        );
    }

    #[test]
    fn a_starved_ping_is_not_the_guests_downtime() {
        // The guest is down 200–240, but ping sends seq 4 only at 500 (starved): the
        // replies 150 (seq 3) → 500 (seq 4) are one interval apart in sequence and
        // 350 ms apart in time: 300 ms of it is the ping's.
        let clock = WallClock::from_pair(0, 1_000_000);
        let reply =
            |ms: i64, seq: u16| crate::measure::ping::PingReply { unix_us: 1_000_000 + ms * 1000, seq, rtt_us: 300 };
        let ping = PingReport {
            interval_ms: 50.0,
            sent: 6,
            replies: vec![reply(50, 1), reply(100, 2), reply(150, 3), reply(500, 4), reply(550, 5)],
            ..PingReport::default()
        };
        let found = PingGap { ms: 350.0, start_ns: 150 * MS, late_ms: Some(300.0) };
        assert_eq!(ping_gap(&ping, Some((200 * MS, 240 * MS)), clock), Ok(found));
        let mut t = Timeline::default();
        (t.marks.source_paused_ns, t.marks.destination_resumed_ns) = (Some(200 * MS), Some(240 * MS));
        let m = compute(&outcome(Some(MS)), &t, Some(&ping), None);
        assert_eq!(m.downtime_ms.ping_max_gap, None);
        assert_eq!(m.ping_gap, Some(found), "the raw gap stays in the ping report");
        assert!(m.missing.iter().any(|x| x.contains("ping itself was 300.0 ms late")), "{:?}", m.missing);
    }

    #[test]
    fn equal_or_reversed_stamps_are_no_duration() {
        assert_eq!(span_ms(5 * MS, 7 * MS), Ok(2.0));
        assert!(span_ms(7 * MS, 7 * MS).is_err_and(|e| e.contains("equal")));
        assert!(span_ms(7 * MS, 5 * MS).is_err_and(|e| e.contains("2.000 ms before")));
        let mut t = Timeline::default();
        t.marks.setup_ns = Some(10 * MS);
        t.marks.source_completed_ns = Some(10 * MS);
        t.marks.source_paused_ns = Some(9 * MS);
        t.marks.destination_resumed_ns = Some(8 * MS);
        let o = outcome(Some(0));
        let m = compute(&o, &t, None, None);
        assert_eq!((m.downtime_ms.vcpu, m.migration_time_ms.traced, m.migration_time_ms.command), (None, None, None));
        let has = |p: &str, s: &str| m.missing.iter().any(|x| x.starts_with(p) && x.contains(s));
        assert!(has("downtime_ms.vcpu", "1.000 ms before"), "{:?}", m.missing);
        assert!(has("migration_time_ms.traced:", "equal"), "{:?}", m.missing);
        assert!(has("migration_time_ms.command", "equal"), "{:?}", m.missing);
        assert!(has("migration_time_ms.traced_to_resume", "2.000 ms before"), "{:?}", m.missing);
    }

    fn outcome(end_ns: Option<u64>) -> MigrationOutcome {
        MigrationOutcome { start_unix_us: 1_000_000, ..MigrationOutcome::completed_for_test(end_ns) }
    }

    fn compute_with_probe(s: &ProbeSummary) -> Measures {
        compute(&outcome(Some(MS)), &Timeline::default(), None, Some(s))
    }
}
