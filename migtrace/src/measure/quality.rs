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
    Measure { name: "downtime.ping", get: |r| r.downtime_ms.ping },
    Measure { name: "downtime.ping_max_gap", get: |r| r.downtime_ms.ping_max_gap },
    Measure { name: "downtime.probe_gap", get: |r| r.downtime_ms.probe_gap },
    Measure { name: "downtime.vcpu", get: |r| from(r, "downtime_ms.vcpu", Evidence::Ebpf, r.downtime_ms.vcpu) },
    Measure { name: "downtime.vcpu.qmp", get: |r| from(r, "downtime_ms.vcpu", Evidence::Qmp, r.downtime_ms.vcpu) },
    Measure { name: "downtime.reported", get: |r| r.downtime_ms.reported },
    Measure { name: "downtime.heartbeat_gap", get: |r| r.downtime_ms.heartbeat_gap },
    Measure { name: "downtime.outages_total", get: |r| r.downtime_ms.outages_total },
    Measure { name: "downtime.longest_outage", get: |r| r.downtime_ms.longest_outage },
    Measure { name: "migration_time.command", get: |r| r.migration_time_ms.command },
    Measure { name: "migration_time.reported", get: |r| r.migration_time_ms.reported },
    Measure {
        name: "migration_time.traced",
        get: |r| from(r, "migration_time_ms.traced", Evidence::Ebpf, r.migration_time_ms.traced),
    },
    Measure {
        name: "migration_time.traced.qmp",
        get: |r| from(r, "migration_time_ms.traced", Evidence::Qmp, r.migration_time_ms.traced),
    },
    Measure {
        name: "migration_time.traced_to_resume",
        get: |r| from(r, "migration_time_ms.traced_to_resume", Evidence::Ebpf, r.migration_time_ms.traced_to_resume),
    },
    Measure {
        name: "migration_time.traced_to_resume.qmp",
        get: |r| from(r, "migration_time_ms.traced_to_resume", Evidence::Qmp, r.migration_time_ms.traced_to_resume),
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
    /// about the treatment, counted as such: neither a failure nor a downtime.
    DidNotConverge,
    /// The migration failed, or timed out after its switchover began.
    Failed,
    /// The guest crashed, rebooted or went silent after the migration.
    GuestUnhealthy,
    /// The guest's own memory check found pages that lost writes in the migration.
    Corrupted,
    /// The probes lost part of the migration (ring-buffer records, or what a full kernel
    /// map could not hold): probe-based figures may miss their stamps.
    TraceLoss,
}

pub fn category(r: &MigrationRecord) -> Category {
    if r.outcome.status == Status::TimedOut && !switchover_began(r) {
        Category::DidNotConverge
    } else if r.outcome.status != Status::Completed {
        Category::Failed
    } else if r.guest.as_ref().is_some_and(|g| g.crashed || g.rebooted || g.unreachable) {
        Category::GuestUnhealthy
    } else if r.guest.as_ref().is_some_and(|g| g.corrupted()) {
        Category::Corrupted
    } else if r.trace_health.as_ref().is_some_and(|h| h.lossy()) {
        Category::TraceLoss
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

/// Whether a record's measures describe a healthy, fully traced migration.
pub fn usable(r: &MigrationRecord) -> bool {
    category(r) == Category::Usable
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::{HostEvent, MigrationOutcome, MigrationParams};

    /// A timed-out migration whose source reported MIGRATION events of these statuses.
    fn timed_out(statuses: &[&str]) -> MigrationRecord {
        let mut outcome = MigrationOutcome::completed_for_test(None);
        outcome.status = Status::TimedOut;
        outcome.source_events = statuses
            .iter()
            .map(|s| HostEvent { event: "MIGRATION".into(), unix_us: 0, data: serde_json::json!({ "status": s }) })
            .collect();
        MigrationRecord::new(0, "t".into(), MigrationParams::default(), outcome)
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
}
