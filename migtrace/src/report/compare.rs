//! `migtrace compare`: the downtime methods side by side, per treatment and overall,
//! with what separates them.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::{Deserialize, Serialize};

use super::{align_right, table};
use crate::{hypervisor::Status, measure::record::MigrationRecord};

/// Mean, min and max of one measure over migrations that have it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub mean: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl Summary {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Self::default();
        }
        Self {
            n: v.len(),
            mean: Some(v.iter().sum::<f64>() / v.len() as f64),
            min: v.iter().copied().reduce(f64::min),
            max: v.iter().copied().reduce(f64::max),
        }
    }
}

/// The comparison of one group of migrations (a treatment, or all).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    pub migrations: usize,
    /// Downtime by method: ping, ping_max_gap, probe_gap, vcpu, reported, heartbeat_gap.
    pub downtime_ms: BTreeMap<String, Summary>,
    /// Migration time by method: command, reported, traced, traced_to_resume.
    pub migration_time_ms: BTreeMap<String, Summary>,
    /// |ping − probe gap|: what the ping's quantisation to its interval costs.
    pub ping_quantisation_error_ms: Summary,
    /// probe gap − QEMU's downtime: how much the hypervisor's figure understates what
    /// the guest's peers see.
    pub reported_understatement_ms: Summary,
    /// probe gap ÷ QEMU's downtime.
    pub reported_understatement_ratio: Summary,
    /// Mean durations of the phases between the VM stop and the first guest packet:
    /// where the difference between QEMU's figure and the guest's goes.
    pub switchover_phases_ms: BTreeMap<String, Summary>,
}

/// Phases that lie between the source stopping the VM and the guest answering again.
const SWITCHOVER: &[&str] =
    &["vm-stop", "stop-and-copy", "destination load", "resume", "first guest packet", "first guest heartbeat"];

fn group(name: String, records: &[&MigrationRecord]) -> Group {
    let completed: Vec<&MigrationRecord> =
        records.iter().copied().filter(|r| r.outcome.status == Status::Completed).collect();
    let field = |f: fn(&MigrationRecord) -> Option<f64>| Summary::of(completed.iter().filter_map(|r| f(r)));
    let mut downtime_ms = BTreeMap::new();
    downtime_ms.insert("ping".into(), field(|r| r.downtime_ms.ping));
    downtime_ms.insert("ping_max_gap".into(), field(|r| r.downtime_ms.ping_max_gap));
    downtime_ms.insert("probe_gap".into(), field(|r| r.downtime_ms.probe_gap));
    downtime_ms.insert("vcpu".into(), field(|r| r.downtime_ms.vcpu));
    downtime_ms.insert("reported".into(), field(|r| r.downtime_ms.reported));
    downtime_ms.insert("heartbeat_gap".into(), field(|r| r.downtime_ms.heartbeat_gap));
    let mut migration_time_ms = BTreeMap::new();
    migration_time_ms.insert("command".into(), field(|r| r.migration_time_ms.command));
    migration_time_ms.insert("reported".into(), field(|r| r.migration_time_ms.reported));
    migration_time_ms.insert("traced".into(), field(|r| r.migration_time_ms.traced));
    migration_time_ms.insert("traced_to_resume".into(), field(|r| r.migration_time_ms.traced_to_resume));
    let pairs = |a: fn(&MigrationRecord) -> Option<f64>, b: fn(&MigrationRecord) -> Option<f64>| {
        completed.iter().filter_map(move |r| a(r).zip(b(r))).collect::<Vec<_>>()
    };
    let exact_vs_ping = pairs(|r| r.downtime_ms.probe_gap, |r| r.downtime_ms.ping);
    let exact_vs_reported = pairs(|r| r.downtime_ms.probe_gap, |r| r.downtime_ms.reported);
    let mut switchover_phases_ms = BTreeMap::new();
    for phase in SWITCHOVER {
        let durations = completed.iter().filter_map(|r| r.timeline.as_ref()?.phase(phase).map(|p| p.duration_ms));
        switchover_phases_ms.insert((*phase).to_owned(), Summary::of(durations));
    }
    Group {
        name,
        migrations: records.len(),
        downtime_ms,
        migration_time_ms,
        ping_quantisation_error_ms: Summary::of(exact_vs_ping.iter().map(|(e, p)| (p - e).abs())),
        reported_understatement_ms: Summary::of(exact_vs_reported.iter().map(|(e, q)| e - q)),
        reported_understatement_ratio: Summary::of(
            exact_vs_reported.iter().filter(|(_, q)| *q > 0.0).map(|(e, q)| e / q),
        ),
        switchover_phases_ms,
    }
}

/// Groups per treatment (in first-seen order) and one overall group, last.
pub fn compare(records: &[MigrationRecord]) -> Vec<Group> {
    let mut order: Vec<&str> = Vec::new();
    for r in records {
        if !order.contains(&r.treatment.as_str()) {
            order.push(&r.treatment);
        }
    }
    let mut groups: Vec<Group> = order
        .iter()
        .map(|t| group((*t).to_owned(), &records.iter().filter(|r| r.treatment == *t).collect::<Vec<_>>()))
        .collect();
    if groups.len() != 1 {
        groups.push(group("overall".into(), &records.iter().collect::<Vec<_>>()));
    }
    groups
}

fn cell(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

/// The comparison as tables.
pub fn render(groups: &[Group]) -> String {
    let mut out = String::new();
    for g in groups {
        let completed = g.downtime_ms.values().map(|s| s.n).max().unwrap_or(0);
        let _ = writeln!(out, "{} ({} migrations, {} with measures)", g.name, g.migrations, completed);
        let mut t = table(&["downtime", "n", "mean ms", "min ms", "max ms", "method"]);
        let methods = [
            ("ping", "paper: lost 50 ms pings × interval"),
            ("ping_max_gap", "largest gap between ping replies"),
            ("probe_gap", "gap between probe replies at the taps"),
            ("vcpu", "source vCPUs stopped → destination vCPUs running"),
            ("reported", "QEMU's own figure (source side)"),
            ("heartbeat_gap", "guest heartbeats on its serial port, last source → first destination"),
        ];
        for (key, what) in methods {
            let s = &g.downtime_ms[key];
            t.add_row(vec![key.into(), s.n.to_string(), cell(s.mean), cell(s.min), cell(s.max), what.into()]);
        }
        align_right(&mut t, &[1, 2, 3, 4]);
        let _ = writeln!(out, "{t}");
        let mut m = table(&["migration time", "n", "mean ms", "min ms", "max ms"]);
        for (key, s) in &g.migration_time_ms {
            m.add_row(vec![key.clone(), s.n.to_string(), cell(s.mean), cell(s.min), cell(s.max)]);
        }
        align_right(&mut m, &[1, 2, 3, 4]);
        let _ = writeln!(out, "{m}");
        let q = &g.ping_quantisation_error_ms;
        let u = &g.reported_understatement_ms;
        let ur = &g.reported_understatement_ratio;
        let _ = writeln!(
            out,
            "ping quantisation error |ping − probe gap|: mean {} ms, max {} ms",
            cell(q.mean),
            cell(q.max)
        );
        let _ = writeln!(
            out,
            "QEMU understates guest-observed downtime by {} ms on average (max {} ms), a factor of {}",
            cell(u.mean),
            cell(u.max),
            ur.mean.map_or("-".into(), |r| format!("{r:.2}"))
        );
        let mut p = table(&["phase (VM stop → first guest packet)", "mean ms", "max ms"]);
        for phase in SWITCHOVER {
            let s = &g.switchover_phases_ms[*phase];
            p.add_row(vec![(*phase).to_owned(), cell(s.mean), cell(s.max)]);
        }
        align_right(&mut p, &[1, 2]);
        let _ = writeln!(out, "{p}");
        let _ = writeln!(
            out,
            "QEMU's downtime covers stop-and-copy; destination load, resume and the first guest packet come on top.\n"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_by_hand() {
        let s = Summary::of([3.0, 1.0, 2.0, f64::NAN]);
        assert_eq!((s.n, s.mean, s.min, s.max), (3, Some(2.0), Some(1.0), Some(3.0)));
        assert_eq!(Summary::of([]), Summary::default());
    }
}
