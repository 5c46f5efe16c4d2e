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
    let Some(t) = &r.timeline else { return Evidence::Probe };
    let marks: &[&str] = match measure {
        "downtime_ms.vcpu" => &["source-paused", "destination-resumed"],
        "migration_time_ms.traced" => &["setup", "source-completed"],
        "migration_time_ms.traced_to_resume" => &["setup", "destination-resumed"],
        _ => &[],
    };
    marks.iter().map(|m| t.mark_evidence(m)).fold(Evidence::Probe, Evidence::combine)
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
    Measure { name: "downtime.vcpu", get: |r| from(r, "downtime_ms.vcpu", Evidence::Probe, r.downtime_ms.vcpu) },
    Measure { name: "downtime.vcpu.qmp", get: |r| from(r, "downtime_ms.vcpu", Evidence::Qmp, r.downtime_ms.vcpu) },
    Measure { name: "downtime.reported", get: |r| r.downtime_ms.reported },
    Measure { name: "downtime.heartbeat_gap", get: |r| r.downtime_ms.heartbeat_gap },
    Measure { name: "migration_time.command", get: |r| r.migration_time_ms.command },
    Measure { name: "migration_time.reported", get: |r| r.migration_time_ms.reported },
    Measure {
        name: "migration_time.traced",
        get: |r| from(r, "migration_time_ms.traced", Evidence::Probe, r.migration_time_ms.traced),
    },
    Measure {
        name: "migration_time.traced.qmp",
        get: |r| from(r, "migration_time_ms.traced", Evidence::Qmp, r.migration_time_ms.traced),
    },
    Measure {
        name: "migration_time.traced_to_resume",
        get: |r| from(r, "migration_time_ms.traced_to_resume", Evidence::Probe, r.migration_time_ms.traced_to_resume),
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
    /// The migration failed or timed out.
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
    if r.outcome.status != Status::Completed {
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

/// Whether a record's measures describe a healthy, fully traced migration.
pub fn usable(r: &MigrationRecord) -> bool {
    category(r) == Category::Usable
}
