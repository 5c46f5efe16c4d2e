//! A treatment's timelines, in its section: its median and worst migration (by the probe
//! gap, else the next measure it has) each as a Gantt chart of the phases on both hosts
//! and the network with the guest's silences, and its pre-copy rounds.

use std::fmt::Write as _;

use super::{Builder, Experiment, HtmlError, esc, num, table};
use crate::{
    measure::{
        quality::{self, MEASURES},
        record::MigrationRecord,
        timeline::Host,
    },
    report::plots::{self, BarKind, Gantt, GanttBar, GanttMark, RoundBar, Rounds},
    stats::TreatmentSummary,
};

/// A migration picked for its timeline.
#[derive(Clone, Copy, Debug)]
pub struct Chosen<'a> {
    /// `median` or `worst`.
    pub which: &'static str,
    /// The measure it was picked by, and its value.
    pub by: &'static str,
    pub value: f64,
    pub record: &'a MigrationRecord,
}

/// The timelines of treatment `t`'s chosen migrations, their figures named after `tag`.
pub(super) fn figures(b: &mut Builder, e: &Experiment<'_>, tag: &str, t: &TreatmentSummary) -> Result<(), HtmlError> {
    let chosen = e.chosen(&t.treatment);
    if chosen.is_empty() {
        b.html.push_str("<p>No usable migration to show a timeline of.</p>\n");
    }
    if chosen.len() == 1 {
        b.html.push_str("<p class=\"note\">The median migration is also the worst.</p>\n");
    }
    for c in &chosen {
        let r = c.record;
        let title =
            format!("{} migration (repetition {}, {} {:.2} ms): {}", c.which, r.repetition, c.by, c.value, t.treatment);
        let Some(g) = gantt_of(r, &title) else {
            let _ = writeln!(b.html, "<p>{}: the record has no timeline.</p>", esc(&title));
            continue;
        };
        let stem = format!("{tag}-timeline-{}", c.which);
        gantt_figure(b, &stem, &g, r)?;
        if let Some(rounds) = rounds_of(r, &format!("pre-copy rounds of the {} migration", c.which)) {
            rounds_figure(b, &stem, &rounds, r)?;
        }
    }
    Ok(())
}

/// The Gantt chart with its bars and marks as a table, the downtimes in its caption.
fn gantt_figure(b: &mut Builder, stem: &str, g: &Gantt, r: &MigrationRecord) -> Result<(), HtmlError> {
    let rows: Vec<Vec<String>> = g
        .bars
        .iter()
        .map(|x| {
            vec![esc(&x.label), esc(&x.row), format!("{:.3}", x.start_ms), format!("{:.3}", x.end_ms - x.start_ms)]
        })
        .chain(g.marks.iter().map(|m| vec![esc(&m.label), "mark".into(), format!("{:.3}", m.at_ms), "–".into()]))
        .collect();
    let mut data = String::new();
    table(&mut data, &format!("{stem}-data"), "data", &["phase", "row", "start ms", "duration ms"], &rows);
    let d = &r.downtime_ms;
    let caption = format!(
        "Phases on both hosts and the network. Downtime ms: ping {} | ping largest gap {} | probe gap {} | vCPU {} | \
         reported {}.",
        num(d.ping),
        num(d.ping_max_gap),
        num(d.probe_gap),
        num(d.vcpu),
        num(d.reported)
    );
    b.figure(format!("{stem}.svg"), plots::gantt(g)?, &caption, &data);
    Ok(())
}

/// The pre-copy rounds with their remaining bytes, sync times and KVM ioctls as a table.
fn rounds_figure(b: &mut Builder, stem: &str, rounds: &Rounds, r: &MigrationRecord) -> Result<(), HtmlError> {
    let tcg = r.machine.as_ref().is_some_and(|m| m.accelerator == "tcg");
    let rows: Vec<Vec<String>> = rounds
        .rounds
        .iter()
        .map(|x| {
            vec![
                format!("{}{}", x.round, if x.final_round { " (final)" } else { "" }),
                num(x.remaining_mib),
                x.sync_ms.map_or_else(|| "–".into(), |v| format!("{v:.3}")),
                if x.kvm.is_empty() {
                    if tcg { "none (TCG)".into() } else { "–".into() }
                } else {
                    esc(&x.kvm.iter().map(|(w, n)| format!("{w} ×{n}")).collect::<Vec<_>>().join(", "))
                },
            ]
        })
        .collect();
    let mut data = String::new();
    table(
        &mut data,
        &format!("{stem}-rounds-data"),
        "data",
        &["round", "remaining MiB", "sync ms", "KVM dirty-log ioctls"],
        &rows,
    );
    b.figure(
        format!("{stem}-rounds.svg"),
        plots::rounds(rounds)?,
        "Per pre-copy round: QEMU's remaining bytes, the dirty-log sync, KVM's dirty-log ioctls.",
        &data,
    );
    Ok(())
}

fn measure(name: &str) -> Option<&'static quality::Measure> {
    MEASURES.iter().find(|m| m.name == name)
}

impl Experiment<'_> {
    /// The usable migrations of a treatment whose timelines are shown: the median and
    /// the worst by the probe gap (else the ping's largest gap, the vCPU blackout, the
    /// command's time), the median by nearest rank as in the statistics.
    pub fn chosen(&self, treatment: &str) -> Vec<Chosen<'_>> {
        let usable = self.usable_of(treatment);
        for name in ["downtime.probe_gap", "downtime.ping_max_gap", "downtime.vcpu", "migration_time.command"] {
            let Some(m) = measure(name) else { continue };
            let mut with: Vec<(f64, &MigrationRecord)> =
                usable.iter().filter_map(|r| Some(((m.get)(r)?, *r))).filter(|(v, _)| v.is_finite()).collect();
            if with.is_empty() {
                continue;
            }
            with.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.repetition.cmp(&b.1.repetition)));
            let (Some(median), Some(worst)) =
                (crate::percentile::of_sorted(&with, 0.5), crate::percentile::of_sorted(&with, 1.0))
            else {
                continue;
            };
            let mut out = vec![Chosen { which: "median", by: name, value: median.0, record: median.1 }];
            if worst.1.repetition != median.1.repetition {
                out.push(Chosen { which: "worst", by: name, value: worst.0, record: worst.1 });
            }
            return out;
        }
        Vec::new()
    }
}

fn host_name(h: Host) -> &'static str {
    match h {
        Host::Source => "source",
        Host::Destination => "destination",
        Host::Network => "network",
    }
}

/// A migration's phases on both hosts and the network as a Gantt chart: main chain and
/// the phases beside it per host, the guest's silence (probe gap, ping gap), and the
/// instants the vCPUs stopped and ran again.
pub fn gantt_of(r: &MigrationRecord, title: &str) -> Option<Gantt> {
    let t = r.timeline.as_ref()?;
    let mut bars: Vec<GanttBar> = t
        .phases
        .iter()
        .map(|p| GanttBar {
            row: format!("{}{}", host_name(p.host), if p.parallel { " · beside" } else { "" }),
            label: p.name.clone(),
            start_ms: p.start_ms,
            end_ms: p.start_ms + p.duration_ms,
            kind: BarKind::Phase,
        })
        .collect();
    bars.extend(silences(r));
    let order = ["source", "source · beside", "destination", "destination · beside", "network", "network · beside"];
    let mut rows: Vec<String> =
        order.iter().filter(|o| bars.iter().any(|b| b.row == **o)).map(|o| (*o).to_owned()).collect();
    if bars.iter().any(|b| b.row == "guest not heard") {
        rows.push("guest not heard".into());
    }
    let at = |ns: Option<u64>| ns.map(|v| (v as f64 - t.marks.command_ns as f64) / 1e6);
    let mut marks = Vec::new();
    if let Some(x) = at(t.marks.source_paused_ns) {
        marks.push(GanttMark { label: "vCPUs stopped".into(), at_ms: x });
    }
    if let Some(x) = at(t.marks.destination_resumed_ns) {
        marks.push(GanttMark { label: "vCPUs running".into(), at_ms: x });
    }
    let zoom = zoom(&bars);
    Some(Gantt { title: title.to_owned(), rows, bars, marks, zoom })
}

/// The guest's silences as bars: every outage (the one the switchover fell in, and the
/// stalls before and after it), the probe gap and the ping's largest gap.
fn silences(r: &MigrationRecord) -> Vec<GanttBar> {
    let mut bars: Vec<GanttBar> = r
        .outages
        .iter()
        .flatten()
        .filter(|o| !o.switchover && o.counted())
        .map(|o| GanttBar {
            row: "guest not heard".into(),
            label: if o.open { "outage (open)".into() } else { "outage".into() },
            start_ms: o.start_ms,
            end_ms: o.start_ms + o.duration_ms,
            kind: BarKind::Gap,
        })
        .collect();
    if let Some(p) = &r.probe
        && let (Some(start), Some(gap)) = (p.gap_start_ms, r.downtime_ms.probe_gap)
    {
        bars.push(GanttBar {
            row: "guest not heard".into(),
            label: "probe gap".into(),
            start_ms: start,
            end_ms: start + gap,
            kind: BarKind::Gap,
        });
    }
    if let Some(p) = &r.ping
        && let (Some(start), Some(gap)) = (p.gap_start_ms, r.downtime_ms.ping_max_gap)
    {
        bars.push(GanttBar {
            row: "guest not heard".into(),
            label: "ping gap".into(),
            start_ms: start,
            end_ms: start + gap,
            kind: BarKind::Gap,
        });
    }
    bars
}

/// The switchover (the guest's silences and the phases from the VM's stop to its
/// resume), padded, when it is short next to the whole migration: a close-up of it.
fn zoom(bars: &[GanttBar]) -> Option<(f64, f64)> {
    let whole = bars.iter().map(|b| b.end_ms).fold(0.0f64, f64::max);
    let switch: Vec<&GanttBar> = bars
        .iter()
        .filter(|b| {
            (b.kind == BarKind::Gap && !b.label.starts_with("outage"))
                || ["vm-stop", "stop-and-copy", "destination load", "resume", "destination load + resume"]
                    .contains(&b.label.as_str())
        })
        .collect();
    let a = switch.iter().map(|b| b.start_ms).fold(f64::INFINITY, f64::min);
    let b = switch.iter().map(|b| b.end_ms).fold(f64::NEG_INFINITY, f64::max);
    (a.is_finite() && b > a && (b - a) < whole * 0.5).then(|| {
        let pad = (b - a) * 0.1;
        (a - pad, b + pad)
    })
}

/// A migration's pre-copy rounds: per round QEMU's remaining bytes, the dirty-log sync
/// and KVM's dirty-log ioctls (none under TCG).
pub fn rounds_of(r: &MigrationRecord, title: &str) -> Option<Rounds> {
    let t = r.timeline.as_ref()?;
    if t.rounds.is_empty() {
        return None;
    }
    let tcg = r.machine.as_ref().is_some_and(|m| m.accelerator == "tcg");
    Some(Rounds {
        title: title.to_owned(),
        kvm_note: tcg.then(|| "none, the guest ran under TCG (no KVM)".to_owned()),
        rounds: t
            .rounds
            .iter()
            .map(|x| RoundBar {
                round: x.round,
                final_round: x.final_round,
                remaining_mib: x.remaining_bytes.map(|b| b as f64 / (1u64 << 20) as f64),
                sync_ms: x.sync_ms,
                kvm: x
                    .kvm
                    .iter()
                    .filter(|k| ["get-dirty-log", "clear-dirty-log", "reset-dirty-rings"].contains(&k.what.as_str()))
                    .map(|k| (k.what.clone(), k.counts.count))
                    .collect(),
            })
            .collect(),
    })
}
