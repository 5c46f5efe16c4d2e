//! Every time the guest did not answer during the observation, wherever it fell: the
//! switchover's outage, and the stalls before and after it (QEMU 7.2 under TCG stalls
//! the guest at migration setup) that a gap "around the switchover" leaves out. The
//! paper's ping counts every lost reply too.
//!
//! A silence runs from the last reply before it to the first reply that ends it: a
//! reply to a request sent after the silence began, and, when the source stopped the
//! VM within it, after the stop (only the guest running again on the destination can
//! answer those). Replies the guest had queued before the stop, which the destination
//! sends in a burst at the resume, are old news: they do not end it.

use serde::{Deserialize, Serialize};

use super::{
    ping::PingReport,
    prober::{OBSERVE_AFTER_LAST, ProberReport},
    timeline::{Host, Timeline},
};
use crate::{clock::WallClock, hypervisor::Heartbeat, probe::tracer::PacketStamp};

/// A reply as gap measures see it: when it was seen and when its request left
/// (monotonic ns). Heartbeats have no request: their `sent` is their `ts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    pub ts: u64,
    pub sent: u64,
}

/// A silence among replies: from reply `from` to reply `to` (indexes), or still open
/// when the replies end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Silence {
    pub from: usize,
    pub to: Option<usize>,
}

/// Silences longer than `threshold_ns` among `replies` (sorted by `ts`). `switchover`
/// (source paused, destination resumed) decides which replies end a silence the stop
/// fell in. A threshold of 0 finds every gap.
pub fn silences(replies: &[Reply], threshold_ns: u64, switchover: Option<(u64, u64)>) -> Vec<Silence> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 1 < replies.len() {
        let start = replies[i].ts;
        if replies[i + 1].ts.saturating_sub(start) <= threshold_ns {
            i += 1;
            continue;
        }
        let ends = |r: &Reply| match switchover {
            Some((paused, _)) if paused >= start && paused <= r.ts => r.sent > paused,
            _ => r.sent >= start,
        };
        let to = (i + 1..replies.len()).find(|&j| ends(&replies[j]));
        out.push(Silence { from: i, to });
        match to {
            Some(j) => i = j,
            None => break,
        }
    }
    out
}

/// The silence the switchover fell in: the one that spans the source's stop, else the
/// first that ends after it.
pub fn switchover_silence(replies: &[Reply], found: &[Silence], paused: u64) -> Option<Silence> {
    let end = |s: &Silence| s.to.map_or(u64::MAX, |j| replies[j].ts);
    found
        .iter()
        .find(|s| replies[s.from].ts <= paused && end(s) >= paused)
        .or_else(|| found.iter().find(|s| end(s) >= paused))
        .copied()
}

/// One outage, as the record holds it (`outages`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outage {
    /// ms from the migration command to the last answer before it.
    pub start_ms: f64,
    /// ms to the answer that ended it; with `open`, to the end of observation (a lower
    /// bound).
    pub duration_ms: f64,
    /// The phases it overlaps, in order (`before migration`, `setup`, `pre-copy round
    /// N`, `dirty sync N`, `switchover`, `after resume`), joined by " + ".
    pub phase: String,
    /// The outage the switchover fell in.
    pub switchover: bool,
    /// What saw it: `probe replies at the taps`, `heartbeats`, `ping replies`.
    pub evidence: String,
    /// Where it was seen before and after (`tap-a`, `tap-b`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<(String, String)>,
    /// Still open when observation ended: the guest answered nothing after it began.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub open: bool,
    /// The sender itself was late at its edges by this much (ms), beyond the gap's
    /// resolution: not the guest's alone, left out of the totals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_late_ms: Option<f64>,
}

impl Outage {
    /// Whether it counts as the guest's (not a stalled sender's).
    pub fn counted(&self) -> bool {
        self.sender_late_ms.is_none()
    }
}

/// How long a silence must last to be an outage, in send intervals (of the probe, the
/// heartbeat or the ping): more than this many.
pub const DEFAULT_THRESHOLD_INTERVALS: f64 = 3.0;

/// What outages are found in: the guest's answers (or heartbeats) in time order, the
/// host each came through, how often they are asked for.
pub struct Evidence<'a> {
    pub replies: Vec<Reply>,
    pub hosts: Vec<&'a str>,
    pub interval_ns: u64,
    /// `probe replies at the taps`, `heartbeats`, `ping replies`.
    pub what: &'static str,
    /// When observation ended (monotonic ns): an open silence lasts at least until then.
    pub observed_until: u64,
}

/// Every outage in `evidence`: silences longer than `threshold_intervals` send
/// intervals, placed in `timeline`'s phases (ms from `origin_ns`), the one the
/// switchover fell in flagged. `sender_late` says how late the sender itself was at a
/// silence's edges (ms), given its two replies.
pub fn find(
    evidence: &Evidence<'_>,
    threshold_intervals: f64,
    switchover: Option<(u64, u64)>,
    timeline: &Timeline,
    origin_ns: u64,
    sender_late: impl Fn(Reply, Reply) -> Option<f64>,
) -> Vec<Outage> {
    let r = &evidence.replies;
    let threshold = (threshold_intervals * evidence.interval_ns as f64) as u64;
    let mut found = silences(r, threshold, switchover);
    // The switchover's outage is exactly the gap the probe gap takes (every gap
    // considered, not only those above the threshold): it replaces what overlaps it.
    let the_switchover = switchover.and_then(|(paused, _)| switchover_silence(r, &silences(r, 0, switchover), paused));
    if let Some(sw) = the_switchover {
        let span = |s: &Silence| (r[s.from].ts, s.to.map_or(u64::MAX, |j| r[j].ts));
        let (a, b) = span(&sw);
        found.retain(|s| {
            let (sa, sb) = span(s);
            sb <= a || sa >= b
        });
        if b.saturating_sub(a) > threshold {
            found.push(sw);
            found.sort_by_key(|s| r[s.from].ts);
        }
    }
    let ms = |t: u64| (t as i128 - origin_ns as i128) as f64 / 1e6;
    let interval_ms = evidence.interval_ns as f64 / 1e6;
    found
        .iter()
        .map(|s| {
            let a = r[s.from];
            let (end, open) = match s.to {
                Some(j) => (r[j].ts, false),
                None => (evidence.observed_until.max(a.ts), true),
            };
            let duration_ms = (end - a.ts) as f64 / 1e6;
            let late = s.to.and_then(|j| sender_late(a, r[j]));
            Outage {
                start_ms: ms(a.ts),
                duration_ms,
                phase: phases_of(timeline, ms(a.ts), ms(end)),
                switchover: Some(*s) == the_switchover,
                evidence: evidence.what.to_owned(),
                hosts: s.to.map(|j| (evidence.hosts[s.from].to_owned(), evidence.hosts[j].to_owned())),
                open,
                sender_late_ms: late.filter(|&l| super::downtime::late_beyond_resolution(l, interval_ms, duration_ms)),
            }
        })
        .collect()
}

/// The outages' totals: all outage time and the longest (ms), over those counted.
pub fn totals(outages: &[Outage]) -> (Option<f64>, Option<f64>) {
    let counted: Vec<f64> = outages.iter().filter(|o| o.counted()).map(|o| o.duration_ms).collect();
    if counted.is_empty() {
        return (Some(0.0), None);
    }
    (Some(counted.iter().sum()), counted.iter().copied().reduce(f64::max))
}

/// The phases of `timeline` that `[start, end]` (ms from the command) overlaps.
pub fn phases_of(timeline: &Timeline, start: f64, end: f64) -> String {
    let overlaps = |a: f64, b: f64| a < end && b > start;
    let mut names: Vec<String> = Vec::new();
    let mut add = |n: String| {
        if names.last() != Some(&n) {
            names.push(n);
        }
    };
    let first = timeline.chain().next().map(|p| p.start_ms);
    if first.is_none_or(|f| start < f) {
        add("before migration".into());
    }
    let mut resumed_at = None;
    for p in timeline.chain() {
        let (a, b) = (p.start_ms, p.start_ms + p.duration_ms);
        let name = match p.name.as_str() {
            "vm-stop" | "stop-and-copy" | "destination load" | "resume" => "switchover".to_owned(),
            "first guest packet" | "first guest heartbeat" => continue,
            n if n.starts_with("pre-copy round ") => {
                let round = n.trim_start_matches("pre-copy round ");
                let sync = timeline
                    .rounds
                    .iter()
                    .find(|r| r.round.to_string() == round)
                    .and_then(|r| r.sync_ms.map(|s| (r.start_ms, r.start_ms + s)));
                if let Some((sa, sb)) = sync
                    && overlaps(sa, sb)
                {
                    add(format!("dirty sync {round}"));
                }
                n.to_owned()
            }
            n => n.to_owned(),
        };
        if p.name == "resume" && p.host == Host::Destination {
            resumed_at = Some(b);
        }
        if overlaps(a, b) {
            add(name);
        }
    }
    let after = resumed_at.or_else(|| timeline.chain().last().map(|p| p.start_ms + p.duration_ms));
    if after.is_some_and(|r| end > r) {
        add("after resume".into());
    }
    names.join(" + ")
}

/// What one migration left to find outages in.
pub struct Observed<'a> {
    /// The probe sender and the replies stamped at the taps (tracing on).
    pub probe: Option<(&'a ProberReport, &'a [PacketStamp])>,
    /// The guest's heartbeats (a guest without network) and their usual interval, ms.
    pub heartbeats: Option<(&'a [Heartbeat], f64)>,
    pub ping: Option<&'a PingReport>,
    /// Converts the ping's wall-clock stamps.
    pub clock: WallClock,
    /// When observation ended (monotonic ns).
    pub observed_until: u64,
}

/// The outages of one migration from the best evidence it left: the probe's replies at
/// the taps (1 kHz by default), else the guest's heartbeats, else the ping's replies
/// (50 ms). Why none, if it left none.
pub fn of_migration(
    observed: &Observed<'_>,
    threshold_intervals: f64,
    switchover: Option<(u64, u64)>,
    timeline: &Timeline,
    origin_ns: u64,
) -> Result<Vec<Outage>, String> {
    let find = |e: &Evidence<'_>, late: &dyn Fn(Reply, Reply) -> Option<f64>| {
        find(e, threshold_intervals, switchover, timeline, origin_ns, late)
    };
    if let Some((prober, packets)) = observed.probe.filter(|(p, _)| p.error.is_none()) {
        let mut replies: Vec<&PacketStamp> = packets
            .iter()
            .filter(|p| p.kind == "icmp-echo-reply" && p.ident == prober.ident && p.ts_ns >= prober.first_sent_ns)
            .collect();
        replies.sort_by_key(|p| p.ts_ns);
        let evidence = Evidence {
            replies: replies.iter().map(|p| Reply { ts: p.ts_ns, sent: p.sent_ns }).collect(),
            hosts: replies.iter().map(|p| p.tap.as_str()).collect(),
            interval_ns: prober.interval_us * 1000,
            what: "probe replies at the taps",
            observed_until: prober.last_sent_ns + OBSERVE_AFTER_LAST.as_nanos() as u64,
        };
        return Ok(find(&evidence, &|a, b| super::downtime::sender_lateness(prober, a.sent, b.sent)));
    }
    if let Some((beats, interval_ms)) = observed.heartbeats {
        let evidence = Evidence {
            replies: beats.iter().map(|h| Reply { ts: h.ts_ns, sent: h.ts_ns }).collect(),
            hosts: beats.iter().map(|h| h.host.as_str()).collect(),
            interval_ns: (interval_ms * 1e6) as u64,
            what: "heartbeats",
            observed_until: observed.observed_until,
        };
        return Ok(find(&evidence, &|_, _| None));
    }
    if let Some(ping) = observed.ping.filter(|p| p.error.is_none() && !p.replies.is_empty()) {
        let mut replies: Vec<Reply> = ping
            .replies
            .iter()
            .map(|r| {
                let ts = observed.clock.from_unix_us(r.unix_us);
                Reply { ts, sent: ts.saturating_sub(r.rtt_us.max(0) as u64 * 1000) }
            })
            .collect();
        replies.sort_by_key(|r| r.ts);
        let evidence = Evidence {
            hosts: vec![""; replies.len()],
            replies,
            interval_ns: (ping.interval_ms * 1e6) as u64,
            what: "ping replies",
            observed_until: observed.observed_until,
        };
        return Ok(find(&evidence, &|_, _| None));
    }
    Err(match (observed.probe, observed.ping) {
        (Some((p, _)), _) if p.error.is_some() => {
            format!("the probe sender failed ({})", p.error.as_deref().unwrap_or(""))
        }
        (None, None) => "no probe sender, no heartbeats, no ping: nothing asked the guest".into(),
        _ => "no answer of the guest was recorded (tracing off and no ping)".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Requests every ms from `from` to `to` (exclusive), each answered 0.2 ms later.
    fn answered(from: u64, to: u64) -> Vec<Reply> {
        (from..to).map(|t| Reply { ts: t * MS + 200_000, sent: t * MS }).collect()
    }

    #[test]
    fn a_stall_outside_the_switchover_is_an_outage_of_its_own() {
        // Answers every ms; a stall of 60 ms at 100 (requests 100–159 answered in a
        // burst at 160, when the guest runs again); the switchover at 500–520.
        let mut r = answered(0, 100);
        r.extend((100..160).map(|t| Reply { ts: 160 * MS + (t - 100) * 1000, sent: t * MS }));
        r.extend(answered(161, 500));
        r.extend(answered(520, 600));
        let s = silences(&r, 3 * MS, Some((500 * MS, 520 * MS)));
        assert_eq!(s.len(), 2, "{s:?}");
        // 99.2 → the first of the burst (its request left during the stall): 60.8 ms.
        assert_eq!((r[s[0].from].ts, s[0].to.map(|j| r[j].ts)), (99 * MS + 200_000, Some(160 * MS)));
        // 499.2 → 520.2 (the requests of 500–519 were answered by nobody).
        assert_eq!((r[s[1].from].ts, s[1].to.map(|j| r[j].ts)), (499 * MS + 200_000, Some(520 * MS + 200_000)));
        assert_eq!(switchover_silence(&r, &s, 500 * MS), Some(s[1]));
        // Short gaps are no outages; with a threshold of 0 every gap is one.
        assert!(silences(&answered(0, 10), 3 * MS, None).is_empty());
        assert_eq!(silences(&answered(0, 10), 0, None).len(), 9);
    }

    #[test]
    fn replies_queued_before_the_stop_do_not_end_the_outage() {
        // Requests 95–100 were queued in the stopped guest and answered in a burst at
        // the resume (130 ms), but the guest answers no new request until 180: its
        // peers saw it down from 94.2 to 180.2, one outage, not two.
        let mut r = answered(0, 95);
        r.extend((95..=100).map(|t| Reply { ts: 130 * MS, sent: t * MS }));
        r.extend(answered(180, 250));
        let s = silences(&r, 3 * MS, Some((100 * MS, 130 * MS)));
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!((r[s[0].from].ts, s[0].to.map(|j| r[j].ts)), (94 * MS + 200_000, Some(180 * MS + 200_000)));
    }

    #[test]
    fn a_silence_without_an_answer_after_it_is_open() {
        let r = answered(0, 100);
        let mut stale = r.clone();
        // Only replies to requests sent before the stop come after it.
        stale.push(Reply { ts: 300 * MS, sent: 90 * MS });
        let s = silences(&stale, 3 * MS, Some((100 * MS, 120 * MS)));
        assert_eq!(s, vec![Silence { from: 99, to: None }]);
    }

    #[test]
    fn totals_leave_out_what_a_stalled_sender_made() {
        let o = |ms: f64, late: Option<f64>| Outage {
            start_ms: 0.0,
            duration_ms: ms,
            phase: "setup".into(),
            switchover: false,
            evidence: "probe replies at the taps".into(),
            hosts: None,
            open: false,
            sender_late_ms: late,
        };
        assert_eq!(totals(&[o(10.0, None), o(40.0, None), o(90.0, Some(80.0))]), (Some(50.0), Some(40.0)));
        assert_eq!(totals(&[]), (Some(0.0), None));
    }
}
