//! `migtrace compare`: the downtime methods side by side, per treatment and overall,
//! with what separates them.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::{Deserialize, Serialize};

use super::{align_right, table};
use crate::measure::{
    quality::{self, Category},
    record::MigrationRecord,
};

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
    /// Migrations the figures are over: the same usable set as the experiment
    /// statistics (completed, healthy guest, no trace loss).
    pub used: usize,
    /// Timed out in pre-copy (the dirty rate outpaced the link).
    #[serde(default)]
    pub did_not_converge: usize,
    pub failed: usize,
    pub guest_crashed: usize,
    pub trace_loss: usize,
    /// The guest answered again only after observation ended: its methods cannot be
    /// set side by side (the gaps are open), so these are counted apart here.
    #[serde(default)]
    pub censored: usize,
    /// The reference ping's interval(s), ms.
    pub ping_intervals_ms: Vec<f64>,
    /// Who reported the `reported` figures (`qemu query-migrate`, `libvirt job stats`).
    #[serde(default)]
    pub reported_by: Vec<String>,
    /// Downtime by method: ping, ping_max_gap, probe_gap, vcpu, vcpu.qmp, reported,
    /// heartbeat_gap.
    pub downtime_ms: BTreeMap<String, Summary>,
    /// Migration time by method: command, reported, traced(.qmp), traced_to_resume(.qmp).
    pub migration_time_ms: BTreeMap<String, Summary>,
    /// |ping − probe gap| per migration: what the ping's quantisation to its interval
    /// costs.
    pub ping_quantisation_error_ms: Summary,
    /// probe gap − QEMU's downtime per migration: how much the hypervisor's figure
    /// understates what the guest's peers see.
    pub reported_understatement_ms: Summary,
    /// Mean probe gap ÷ mean QEMU downtime over the migrations with both (a ratio of
    /// means, consistent with the means shown; not a mean of ratios).
    pub reported_understatement_ratio_of_means: Option<f64>,
    /// Mean durations of the phases between the VM stop and the first guest packet:
    /// where the difference between QEMU's figure and the guest's goes.
    pub switchover_phases_ms: BTreeMap<String, Summary>,
}

/// Phases that lie between the source stopping the VM and the guest answering again.
const SWITCHOVER: &[&str] = &[
    "vm-stop",
    "stop-and-copy",
    "destination load",
    "resume",
    "destination load + resume",
    "first guest packet",
    "first guest heartbeat",
];

/// `(key in the tables, measure of the statistics)`.
const DOWNTIMES: &[(&str, &str)] = &[
    ("ping", "downtime.ping"),
    ("ping_max_gap", "downtime.ping_max_gap"),
    ("probe_gap", "downtime.probe_gap"),
    ("vcpu", "downtime.vcpu"),
    ("vcpu.qmp", "downtime.vcpu.qmp"),
    ("reported", "downtime.reported"),
    ("heartbeat_gap", "downtime.heartbeat_gap"),
    ("outages_total", "downtime.outages_total"),
    ("longest_outage", "downtime.longest_outage"),
];
const MIGRATION_TIMES: &[(&str, &str)] = &[
    ("command", "migration_time.command"),
    ("reported", "migration_time.reported"),
    ("traced", "migration_time.traced"),
    ("traced.qmp", "migration_time.traced.qmp"),
    ("traced_to_resume", "migration_time.traced_to_resume"),
    ("traced_to_resume.qmp", "migration_time.traced_to_resume.qmp"),
];

fn measure(name: &str) -> Option<&'static quality::Measure> {
    quality::MEASURES.iter().find(|m| m.name == name)
}

fn group(name: String, records: &[&MigrationRecord]) -> Group {
    let used: Vec<&MigrationRecord> = records.iter().copied().filter(|r| quality::usable(r)).collect();
    let count = |c: Category| records.iter().filter(|r| quality::category(r) == c).count();
    let summaries = |list: &[(&str, &str)]| -> BTreeMap<String, Summary> {
        list.iter()
            .filter_map(|(key, name)| {
                let m = measure(name)?;
                Some(((*key).to_owned(), Summary::of(used.iter().filter_map(|r| (m.get)(r)))))
            })
            .collect()
    };
    let pairs = |a: fn(&MigrationRecord) -> Option<f64>, b: fn(&MigrationRecord) -> Option<f64>| {
        used.iter().filter_map(move |r| a(r).zip(b(r))).collect::<Vec<_>>()
    };
    let exact_vs_ping = pairs(|r| r.downtime_ms.probe_gap, |r| r.downtime_ms.ping);
    let exact_vs_reported = pairs(|r| r.downtime_ms.probe_gap, |r| r.downtime_ms.reported);
    let mut switchover_phases_ms = BTreeMap::new();
    for phase in SWITCHOVER {
        let durations = used.iter().filter_map(|r| r.timeline.as_ref()?.phase(phase).map(|p| p.duration_ms));
        switchover_phases_ms.insert((*phase).to_owned(), Summary::of(durations));
    }
    let mut ping_intervals_ms: Vec<f64> = Vec::new();
    for i in used.iter().filter_map(|r| r.ping.as_ref().map(|p| p.interval_ms)) {
        if !ping_intervals_ms.contains(&i) {
            ping_intervals_ms.push(i);
        }
    }
    let mut reported_by: Vec<String> = used
        .iter()
        .map(|r| r.outcome.stats.reported_by.clone().unwrap_or_else(|| "qemu query-migrate".into()))
        .collect();
    reported_by.sort();
    reported_by.dedup();
    let exact = Summary::of(exact_vs_reported.iter().map(|(e, _)| *e));
    let reported = Summary::of(exact_vs_reported.iter().map(|(_, q)| *q));
    Group {
        name,
        migrations: records.len(),
        used: used.len(),
        did_not_converge: count(Category::DidNotConverge),
        failed: count(Category::Failed),
        guest_crashed: count(Category::GuestUnhealthy),
        trace_loss: count(Category::TraceLoss),
        censored: count(Category::Censored),
        ping_intervals_ms,
        reported_by,
        downtime_ms: summaries(DOWNTIMES),
        migration_time_ms: summaries(MIGRATION_TIMES),
        ping_quantisation_error_ms: Summary::of(exact_vs_ping.iter().map(|(e, p)| (p - e).abs())),
        reported_understatement_ms: Summary::of(exact_vs_reported.iter().map(|(e, q)| e - q)),
        reported_understatement_ratio_of_means: exact
            .mean
            .zip(reported.mean)
            .filter(|(_, q)| *q > 0.0)
            .map(|(e, q)| e / q),
        switchover_phases_ms,
    }
}

/// Groups per treatment (in first-seen order) and one overall group, last.
/// Records of the same treatment from different backends (the QEMU lab and libvirt, or
/// two QEMU builds) are kept apart: their groups are named `backend: treatment`.
pub fn compare(records: &[MigrationRecord]) -> Vec<Group> {
    let backend = |r: &MigrationRecord| {
        r.machine.as_ref().map_or_else(String::new, |m| format!("{} {}", m.hypervisor, m.version).trim().to_owned())
    };
    let mut backends: Vec<String> = records.iter().map(backend).collect();
    backends.sort();
    backends.dedup();
    let key = |r: &MigrationRecord| {
        if backends.len() > 1 { format!("{}: {}", backend(r), r.treatment) } else { r.treatment.clone() }
    };
    let mut order: Vec<String> = Vec::new();
    for r in records {
        let k = key(r);
        if !order.contains(&k) {
            order.push(k);
        }
    }
    let mut groups: Vec<Group> =
        order.iter().map(|k| group(k.clone(), &records.iter().filter(|r| key(r) == *k).collect::<Vec<_>>())).collect();
    if groups.len() != 1 {
        groups.push(group("overall".into(), &records.iter().collect::<Vec<_>>()));
    }
    groups
}

/// How the hypervisor's own downtime is described, by who reported it.
struct Reporter {
    who: &'static str,
    own_figure: &'static str,
    covers: &'static str,
}

impl Reporter {
    fn of(reported_by: &[String]) -> Self {
        match reported_by {
            [one] if one.starts_with("libvirt") => Self {
                who: "libvirt",
                own_figure: "libvirt's own figure (its clock, source paused → destination finished)",
                covers: "libvirt's downtime runs from the source's pause to the destination's finish, as libvirt saw them; \
                         the guest's first packet comes on top.",
            },
            [one] if one.starts_with("qemu") => Self {
                who: "QEMU",
                own_figure: "QEMU's own figure (source side)",
                covers: "QEMU's downtime covers stop-and-copy; destination load, resume and the first guest packet come on top.",
            },
            _ => Self {
                who: "The hypervisor",
                own_figure: "the hypervisors' own figures (QEMU's and libvirt's mixed)",
                covers: "QEMU's and libvirt's downtimes are mixed in this group: compare backends group by group.",
            },
        }
    }
}

fn cell(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

/// What the reference ping's row measures, with its real interval.
fn ping_label(intervals: &[f64]) -> String {
    match intervals {
        [i] => format!("paper: lost {i} ms pings × {i} ms"),
        _ => "paper: lost pings × the ping's interval".into(),
    }
}

/// The comparison as tables.
pub fn render(groups: &[Group]) -> String {
    let mut out = String::new();
    for g in groups {
        let _ = writeln!(
            out,
            "{} ({} migrations, {} used, {} did not converge; excluded: {} failed, {} crashed or silent guest, {} with \
             trace loss, {} censored: the guest answered again only after observation ended, its gaps open)",
            g.name, g.migrations, g.used, g.did_not_converge, g.failed, g.guest_crashed, g.trace_loss, g.censored
        );
        let mut t = table(&["downtime", "n", "mean ms", "min ms", "max ms", "method"]);
        let ping = ping_label(&g.ping_intervals_ms);
        let reporter = Reporter::of(&g.reported_by);
        let methods = [
            ("ping", ping.as_str()),
            ("ping_max_gap", "largest gap between ping replies around the switchover"),
            ("probe_gap", "gap between probe replies at the taps"),
            ("vcpu", "source vCPUs stopped → destination vCPUs running (eBPF)"),
            ("vcpu.qmp", "the same from QMP STOP/RESUME (no probes)"),
            ("reported", reporter.own_figure),
            ("heartbeat_gap", "guest heartbeats on its serial port, last source → first destination"),
        ];
        for (key, what) in methods {
            let Some(s) = g.downtime_ms.get(key) else { continue };
            if key.ends_with(".qmp") && s.n == 0 {
                continue;
            }
            t.add_row(vec![key.into(), s.n.to_string(), cell(s.mean), cell(s.min), cell(s.max), what.into()]);
        }
        align_right(&mut t, &[1, 2, 3, 4]);
        let _ = writeln!(out, "{t}");
        let mut m = table(&["migration time", "n", "mean ms", "min ms", "max ms"]);
        for (key, s) in &g.migration_time_ms {
            if key.ends_with(".qmp") && s.n == 0 {
                continue;
            }
            m.add_row(vec![key.clone(), s.n.to_string(), cell(s.mean), cell(s.min), cell(s.max)]);
        }
        align_right(&mut m, &[1, 2, 3, 4]);
        let _ = writeln!(out, "{m}");
        let q = &g.ping_quantisation_error_ms;
        let u = &g.reported_understatement_ms;
        let _ = writeln!(
            out,
            "ping quantisation error |ping − probe gap|: mean {} ms, max {} ms (n = {})",
            cell(q.mean),
            cell(q.max),
            q.n
        );
        let _ = writeln!(
            out,
            "{} understates guest-observed downtime by {} ms on average (max {} ms); ratio of means probe gap ÷ \
             its downtime {} (n = {})",
            reporter.who,
            cell(u.mean),
            cell(u.max),
            g.reported_understatement_ratio_of_means.map_or("-".into(), |r| format!("{r:.2}")),
            u.n
        );
        let mut p = table(&["phase (VM stop → first guest packet)", "mean ms", "max ms"]);
        for phase in SWITCHOVER {
            let s = &g.switchover_phases_ms[*phase];
            if s.n > 0 {
                p.add_row(vec![(*phase).to_owned(), cell(s.mean), cell(s.max)]);
            }
        }
        align_right(&mut p, &[1, 2]);
        let _ = writeln!(out, "{p}");
        let _ = writeln!(out, "{}\n", reporter.covers);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::{
        hypervisor::{GuestCheck, MigrationOutcome, MigrationParams},
        measure::ping::PingReport,
    };

    #[test]
    fn summaries_by_hand() {
        let s = Summary::of([3.0, 1.0, 2.0, f64::NAN]);
        assert_eq!((s.n, s.mean, s.min, s.max), (3, Some(2.0), Some(1.0), Some(3.0)));
        assert_eq!(Summary::of([]), Summary::default());
    }

    fn record(rep: u32, probe_gap: f64, reported: f64) -> MigrationRecord {
        let outcome = MigrationOutcome::completed_for_test(Some(1));
        let mut r = MigrationRecord::new(rep, "t".into(), MigrationParams::default(), outcome);
        r.downtime_ms.probe_gap = Some(probe_gap);
        r.downtime_ms.reported = Some(reported);
        r.ping = Some(PingReport { interval_ms: 20.0, ..PingReport::default() });
        r
    }

    #[test]
    fn crashed_guests_are_left_out_and_the_factor_is_a_ratio_of_means() {
        // Probe gap / QEMU downtime: 40/10 and 60/40: mean of ratios 2.75, ratio of
        // means 50/25 = 2. A crashed guest's 500/5 must not count.
        let mut crashed = record(2, 500.0, 5.0);
        crashed.guest = Some(GuestCheck { crashed: true, ..GuestCheck::default() });
        let groups = compare(&[record(0, 40.0, 10.0), record(1, 60.0, 40.0), crashed]);
        let g = &groups[0];
        assert_eq!((g.migrations, g.used, g.guest_crashed), (3, 2, 1));
        assert_eq!(g.downtime_ms["probe_gap"].mean, Some(50.0));
        assert_eq!(g.reported_understatement_ratio_of_means, Some(2.0));
        assert_eq!(g.reported_understatement_ms.mean, Some(25.0));
        let text = render(&groups);
        assert!(text.contains("lost 20 ms pings × 20 ms"), "{text}");
        assert!(!text.contains("50 ms pings"), "{text}");
    }

    #[test]
    fn the_same_treatment_on_two_backends_stays_apart() {
        let on = |hypervisor: &str, rep, gap| {
            let mut r = record(rep, gap, 10.0);
            r.machine = Some(crate::hypervisor::Machine {
                hypervisor: hypervisor.into(),
                version: "7.2.22".into(),
                ..Default::default()
            });
            r
        };
        let groups = compare(&[on("qemu", 0, 40.0), on("qemu (libvirt)", 0, 80.0), on("qemu", 1, 60.0)]);
        let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["qemu 7.2.22: t", "qemu (libvirt) 7.2.22: t", "overall"]);
        assert_eq!(groups[0].downtime_ms["probe_gap"].mean, Some(50.0));
        assert_eq!(groups[1].downtime_ms["probe_gap"].mean, Some(80.0));
        // One backend: plain treatment names.
        assert_eq!(compare(&[on("qemu", 0, 40.0)])[0].name, "t");
    }
}
