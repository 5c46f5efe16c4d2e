//! What a record's figures are worth: which measures a record has and what each was
//! taken from (traced and QMP-based figures are separate measures, never pooled), and
//! which records count in statistics at all. The rules live here, with the measures,
//! for every consumer (reports, the model, experiments) to share.

use serde::{Deserialize, Serialize};

use super::{record::MigrationRecord, timeline::Evidence};
use crate::hypervisor::Status;

/// A measure: its name and how to read it (ms) from a record.
pub struct Measure {
    pub name: &'static str,
    pub get: fn(&MigrationRecord) -> Option<f64>,
    /// In a censored migration (see [`Category::Censored`]): the lower bound of a value
    /// that was still growing when observation ended, if the measure has one.
    pub open: fn(&MigrationRecord) -> Option<f64>,
}

/// A measure's value in a record, as statistics count it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reading {
    /// Observed.
    Exact(f64),
    /// Known only to be at least this: the guest had not answered again when
    /// observation ended, and answered later (a censored migration).
    AtLeast(f64),
}

impl Reading {
    /// The value, or the bound.
    pub fn value(self) -> f64 {
        match self {
            Reading::Exact(v) | Reading::AtLeast(v) => v,
        }
    }
}

impl Measure {
    /// What `r` says of this measure for statistics: its value, a lower bound where the
    /// migration is censored and the measure was still open, or nothing.
    pub fn reading(&self, r: &MigrationRecord) -> Option<Reading> {
        if category(r) == Category::Censored
            && let Some(bound) = (self.open)(r).filter(|v| v.is_finite())
        {
            return Some(Reading::AtLeast(bound));
        }
        (self.get)(r).filter(|v| v.is_finite()).map(Reading::Exact)
    }
}

/// No lower bound: the measure closes whether or not the guest answers (QEMU's, the
/// vCPUs', the command's).
fn closed(_: &MigrationRecord) -> Option<f64> {
    None
}

/// Whether the record has a counted outage that was still open when observation ended.
fn outage_open(r: &MigrationRecord) -> bool {
    r.outages.as_ref().is_some_and(|o| o.iter().any(|o| o.open && o.counted()))
}

fn open_outage_total(r: &MigrationRecord) -> Option<f64> {
    r.downtime_ms.outages_total.filter(|_| outage_open(r))
}

fn open_outage_longest(r: &MigrationRecord) -> Option<f64> {
    r.downtime_ms.longest_outage.filter(|_| outage_open(r))
}

/// What a measure whose source can vary was taken from in `r` (see
/// [`MigrationRecord::evidence`]); records without that map say it in their timeline.
pub fn evidence_of(r: &MigrationRecord, measure: &str) -> Evidence {
    if let Some(e) = r.evidence.get(measure) {
        return *e;
    }
    let Some(t) = &r.timeline else { return Evidence::Ebpf };
    let marks: &[&str] = match measure {
        "downtime_ms.vcpu" => &["source-paused", "destination-resumed"],
        "migration_time_ms.traced" => &["setup", "source-completed"],
        "migration_time_ms.traced_to_resume" => &["setup", "destination-resumed"],
        _ => &[],
    };
    marks.iter().map(|m| t.mark_evidence(m)).fold(Evidence::Ebpf, Evidence::combine)
}

/// `v` if `r`'s `measure` was taken with `want`: probe-based and QMP-based figures are
/// separate measures, never pooled.
fn from(r: &MigrationRecord, measure: &str, want: Evidence, v: Option<f64>) -> Option<f64> {
    v.filter(|_| evidence_of(r, measure) == want)
}

/// Every downtime and migration-time measure of a record. Measures that may come from
/// eBPF probes or from QMP events appear twice: traced, and `….qmp`.
pub const MEASURES: &[Measure] = &[
    // Lost pings × interval counts the pings lost to the end of observation: a lower
    // bound where ping got no reply after the resume.
    Measure {
        name: "downtime.ping",
        get: |r| r.downtime_ms.ping,
        open: |r| r.downtime_ms.ping.filter(|_| r.ping.as_ref().is_some_and(|p| p.max_gap_ms.is_none())),
    },
    Measure { name: "downtime.ping_max_gap", get: |r| r.downtime_ms.ping_max_gap, open: closed },
    Measure {
        name: "downtime.probe_gap",
        get: |r| r.downtime_ms.probe_gap,
        open: |r| r.probe.as_ref().and_then(|p| p.open_gap_ms),
    },
    Measure {
        name: "downtime.vcpu",
        get: |r| from(r, "downtime_ms.vcpu", Evidence::Ebpf, r.downtime_ms.vcpu),
        open: closed,
    },
    Measure {
        name: "downtime.vcpu.qmp",
        get: |r| from(r, "downtime_ms.vcpu", Evidence::Qmp, r.downtime_ms.vcpu),
        open: closed,
    },
    Measure { name: "downtime.reported", get: |r| r.downtime_ms.reported, open: closed },
    Measure { name: "downtime.heartbeat_gap", get: |r| r.downtime_ms.heartbeat_gap, open: closed },
    // An outage still open when observation ended counts to its end: both are then
    // lower bounds.
    Measure { name: "downtime.outages_total", get: |r| r.downtime_ms.outages_total, open: open_outage_total },
    Measure { name: "downtime.longest_outage", get: |r| r.downtime_ms.longest_outage, open: open_outage_longest },
    Measure { name: "migration_time.command", get: |r| r.migration_time_ms.command, open: closed },
    Measure { name: "migration_time.reported", get: |r| r.migration_time_ms.reported, open: closed },
    Measure {
        name: "migration_time.traced",
        get: |r| from(r, "migration_time_ms.traced", Evidence::Ebpf, r.migration_time_ms.traced),
        open: closed,
    },
    Measure {
        name: "migration_time.traced.qmp",
        get: |r| from(r, "migration_time_ms.traced", Evidence::Qmp, r.migration_time_ms.traced),
        open: closed,
    },
    Measure {
        name: "migration_time.traced_to_resume",
        get: |r| from(r, "migration_time_ms.traced_to_resume", Evidence::Ebpf, r.migration_time_ms.traced_to_resume),
        open: closed,
    },
    Measure {
        name: "migration_time.traced_to_resume.qmp",
        get: |r| from(r, "migration_time_ms.traced_to_resume", Evidence::Qmp, r.migration_time_ms.traced_to_resume),
        open: closed,
    },
];

/// What a migration record is for statistics; only `Usable` ones enter them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    /// Completed, healthy guest, complete trace.
    Usable,
    /// Pre-copy was still running when the migration timed out: the guest dirtied its
    /// memory faster than the link drained it, and QEMU never stopped it. A finding
    /// about the treatment, counted as such: neither a failure nor a downtime. (A
    /// stream that stalled before the timeout is `Failed`.)
    DidNotConverge,
    /// The migration failed, or timed out after its switchover began.
    Failed,
    /// The guest crashed or rebooted after the migration, or went silent and never
    /// answered again (not even its memory check).
    GuestUnhealthy,
    /// The guest's own memory check found pages that lost writes in the migration.
    Corrupted,
    /// The probes lost part of the migration (ring-buffer records, or what a full kernel
    /// map could not hold): probe-based figures may miss their stamps.
    TraceLoss,
    /// Completed, but the guest answered no probe before observation ended (`settle_max`)
    /// and did answer its memory check afterwards: it came back, later than observed.
    /// Its guest-observed downtime is known only as a lower bound (the open gap), which
    /// statistics count as such ([`Reading::AtLeast`]); its other measures are whole.
    Censored,
}

pub fn category(r: &MigrationRecord) -> Category {
    if r.outcome.status == Status::TimedOut && !switchover_began(r) && precopy_ran_to_the_end(r) {
        Category::DidNotConverge
    } else if r.outcome.status != Status::Completed {
        Category::Failed
    } else if r.guest.as_ref().is_some_and(|g| g.crashed || g.rebooted || (g.unreachable && !g.came_back())) {
        Category::GuestUnhealthy
    } else if r.guest.as_ref().is_some_and(|g| g.corrupted()) {
        Category::Corrupted
    } else if r.trace_health.as_ref().is_some_and(|h| h.lossy()) {
        Category::TraceLoss
    } else if r.guest.as_ref().is_some_and(|g| g.unreachable) {
        Category::Censored
    } else {
        Category::Usable
    }
}

/// Whether the source began its switchover: it stopped the VM (the timeline's vm-stop,
/// traced or QEMU's STOP event), or reported a switchover state.
fn switchover_began(r: &MigrationRecord) -> bool {
    let stopped = r.timeline.as_ref().is_some_and(|t| t.marks.vm_stop_ns.is_some());
    stopped
        || r.outcome.source_events.iter().any(|e| {
            matches!(e.migration_status(), Some("pre-switchover" | "device" | "postcopy-active" | "completed"))
        })
}

/// How long the stream may have been quiet before the timeout for pre-copy to count as
/// still running then: a round's dirty sync and bookkeeping pause it briefly.
const QUIET_MS: f64 = 1000.0;

/// Whether pre-copy was still moving when the migration timed out, rather than stalled
/// (a cut link, a hung host): the stream's data crossed the link until its last second
/// (a tenth of the timeout, if longer), or, where the link is not counted, QEMU still
/// reported passes in the timeout's last third.
fn precopy_ran_to_the_end(r: &MigrationRecord) -> bool {
    let timeout_ms = r.params.timeout_s * 1e3;
    let wire = r.params.link.as_ref().map(|l| &l.achieved).filter(|a| a.from == "link");
    match wire {
        Some(a) => a.last_data_ms.is_some_and(|last| timeout_ms - last <= QUIET_MS.max(timeout_ms * 0.1)),
        None => {
            let passes: Vec<i64> =
                r.outcome.source_events.iter().filter(|e| e.event == "MIGRATION_PASS").map(|e| e.unix_us).collect();
            let last_ms = passes.last().map(|&us| (us - r.outcome.start_unix_us) as f64 / 1e3);
            passes.len() >= 2 && last_ms.is_some_and(|ms| ms >= timeout_ms * 2.0 / 3.0)
        }
    }
}

/// Whether a record's measures describe a healthy, fully traced migration.
pub fn usable(r: &MigrationRecord) -> bool {
    category(r) == Category::Usable
}

/// Whether a record enters statistics: usable, or censored (its open measures as lower
/// bounds, [`Measure::reading`]).
pub fn counted(r: &MigrationRecord) -> bool {
    matches!(category(r), Category::Usable | Category::Censored)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::hypervisor::{
        HostEvent, MigrationOutcome, MigrationParams,
        link::{LinkAchieved, LinkRecord},
    };

    /// A migration timed out after 3 s whose source reported MIGRATION events of these
    /// statuses, its stream's data crossing the link until 2.9 s.
    fn timed_out(statuses: &[&str]) -> MigrationRecord {
        let mut outcome = MigrationOutcome::completed_for_test(None);
        outcome.status = Status::TimedOut;
        outcome.source_events = statuses
            .iter()
            .map(|s| HostEvent { event: "MIGRATION".into(), unix_us: 0, data: serde_json::json!({ "status": s }) })
            .collect();
        let achieved = LinkAchieved { from: "link".into(), last_data_ms: Some(2900.0), ..LinkAchieved::default() };
        let params = MigrationParams {
            timeout_s: 3.0,
            link: Some(LinkRecord { configured: None, achieved }),
            ..Default::default()
        };
        MigrationRecord::new(0, "t".into(), params, outcome)
    }

    /// A completed migration whose guest answered no probe before observation ended
    /// (an open gap of `open` ms), with or without answering its memory check after.
    pub(crate) fn silent(open: f64, came_back: bool) -> MigrationRecord {
        let mut r =
            MigrationRecord::new(0, "t".into(), MigrationParams::default(), MigrationOutcome::completed_for_test(None));
        r.probe = Some(crate::measure::downtime::ProbeSummary { open_gap_ms: Some(open), ..Default::default() });
        r.ping =
            Some(crate::measure::ping::PingReport { interval_ms: 50.0, sent: 100, lost: 90, ..Default::default() });
        r.downtime_ms.ping = Some(4500.0);
        r.downtime_ms.vcpu = Some(40.0);
        r.guest = Some(crate::hypervisor::GuestCheck {
            unreachable: true,
            memory_check: came_back.then(crate::hypervisor::MemoryCheck::default),
            ..Default::default()
        });
        r
    }

    #[test]
    fn a_guest_that_came_back_after_the_observation_is_censored_not_unhealthy() {
        let late = silent(5012.0, true);
        assert_eq!(category(&late), Category::Censored);
        assert!(counted(&late) && !usable(&late) && late.guest.as_ref().is_some_and(|g| g.healthy() && !g.dead()));
        let probe = MEASURES.iter().find(|m| m.name == "downtime.probe_gap").expect("measure");
        let ping = MEASURES.iter().find(|m| m.name == "downtime.ping").expect("measure");
        let vcpu = MEASURES.iter().find(|m| m.name == "downtime.vcpu").expect("measure");
        // The guest-observed gaps are open: lower bounds; the vCPUs' is whole.
        assert_eq!(probe.reading(&late), Some(Reading::AtLeast(5012.0)));
        assert_eq!(ping.reading(&late), Some(Reading::AtLeast(4500.0)));
        assert_eq!(vcpu.reading(&late), Some(Reading::Exact(40.0)));
        // An outage still open at the end counts to the end: the totals are bounds.
        let mut outage = late.clone();
        outage.outages = Some(vec![crate::measure::outage::Outage {
            start_ms: 900.0,
            duration_ms: 5012.0,
            phase: "switchover + after resume".into(),
            switchover: true,
            evidence: "probe replies at the taps".into(),
            hosts: None,
            open: true,
            sender_late_ms: None,
        }]);
        (outage.downtime_ms.outages_total, outage.downtime_ms.longest_outage) = (Some(5012.0), Some(5012.0));
        let total = MEASURES.iter().find(|m| m.name == "downtime.outages_total").expect("measure");
        assert_eq!(total.reading(&outage), Some(Reading::AtLeast(5012.0)));
        // Never heard from again, or crashed: unhealthy, not counted.
        let hung = silent(5012.0, false);
        assert_eq!(category(&hung), Category::GuestUnhealthy);
        assert!(hung.guest.as_ref().is_some_and(|g| g.dead()));
        let mut crashed = silent(5012.0, true);
        crashed.guest.as_mut().expect("guest").crashed = true;
        assert_eq!(category(&crashed), Category::GuestUnhealthy);
    }

    #[test]
    fn a_timeout_before_the_switchover_did_not_converge_and_one_after_it_failed() {
        assert_eq!(category(&timed_out(&["setup", "active", "cancelling"])), Category::DidNotConverge);
        // The source got to its switchover: that hung.
        assert_eq!(category(&timed_out(&["setup", "active", "device"])), Category::Failed);
        let mut traced = timed_out(&[]);
        traced.timeline = Some(Default::default());
        assert_eq!(category(&traced), Category::DidNotConverge);
        if let Some(t) = traced.timeline.as_mut() {
            t.marks.vm_stop_ns = Some(5);
        }
        assert_eq!(category(&traced), Category::Failed);
        let mut failed = timed_out(&[]);
        failed.outcome.status = Status::Failed;
        assert_eq!(category(&failed), Category::Failed);
    }

    #[test]
    fn a_stream_that_stalled_before_the_timeout_failed() {
        // Cut 0.7 s in, cancelled at 3 s: pre-copy was not running, the link was gone.
        let mut cut = timed_out(&["setup", "active", "cancelling"]);
        if let Some(l) = cut.params.link.as_mut() {
            l.achieved.last_data_ms = Some(700.0);
        }
        assert_eq!(category(&cut), Category::Failed);
        // Not a byte crossed.
        if let Some(l) = cut.params.link.as_mut() {
            l.achieved.last_data_ms = None;
        }
        assert_eq!(category(&cut), Category::Failed);
        // Without the link's count, QEMU's passes tell: still passing in the last third.
        let mut untraced = timed_out(&[]);
        untraced.params.link = None;
        let pass =
            |ms: i64| HostEvent { event: "MIGRATION_PASS".into(), unix_us: ms * 1000, data: serde_json::Value::Null };
        untraced.outcome.source_events = vec![pass(100), pass(1200), pass(2500)];
        assert_eq!(category(&untraced), Category::DidNotConverge);
        untraced.outcome.source_events = vec![pass(100), pass(600)];
        assert_eq!(category(&untraced), Category::Failed);
    }
}
