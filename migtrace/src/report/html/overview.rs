//! The overview: the design, how many migrations were planned, run and usable (and why
//! the others are not, overall and per treatment), the machines the records say both
//! hosts ran, and the spec as run.

use std::fmt::Write as _;

use super::{Builder, Experiment, HtmlError, esc, table};
use crate::hypervisor::Machine;

pub(super) fn section(b: &mut Builder, e: &Experiment<'_>) -> Result<(), HtmlError> {
    b.section("overview", "overview", "Overview", |b| {
        counts(&mut b.html, e);
        treatment_counts(&mut b.html, e);
        machines(&mut b.html, e);
        let _ = writeln!(b.html, "<h3>Spec</h3>\n<pre id=\"spec\">{}</pre>", esc(e.spec_text));
        Ok(())
    })
}

/// The design in a sentence, and the migrations by what became of them.
fn counts(out: &mut String, e: &Experiment<'_>) {
    let s = e.summary;
    let spec = &e.spec.raw;
    let _ = writeln!(
        out,
        "<p>{} design, {} treatments × {} repetitions ({} order); backend {}. Statistics are over usable \
         migrations (completed, healthy guest, intact memory, no trace loss: ring buffer, full kernel maps) and \
         censored ones (the guest answered again only after observation ended), whose guest-observed downtime counts \
         as a lower bound, its open gap (≥).</p>",
        esc(&format!("{:?}", spec.design).to_lowercase()),
        e.treatments,
        spec.repetitions,
        esc(&format!("{:?}", spec.order).to_lowercase()),
        esc(&spec.backend),
    );
    let planned = e.treatments * spec.repetitions as usize;
    let rows = vec![
        vec!["planned".into(), planned.to_string()],
        vec!["run".into(), s.migrations.to_string()],
        vec!["usable".into(), s.usable.to_string()],
        vec![
            "censored (the guest answered again only after observation ended: counted, its guest-observed downtime as \
             a lower bound)"
                .into(),
            s.censored.to_string(),
        ],
        vec!["did not converge (pre-copy still running at the timeout)".into(), s.did_not_converge.to_string()],
        vec!["failed (migration failed, or timed out in its switchover)".into(), s.failed.to_string()],
        vec!["guest crashed, rebooted, or silent and never back".into(), s.guest_crashed.to_string()],
        vec!["guest memory corrupted".into(), s.corrupted.to_string()],
        vec!["trace loss".into(), s.trace_loss.to_string()],
    ];
    out.push_str("<h3>Migrations</h3>\n");
    table(out, "counts", "counts", &["migrations", "count"], &rows);
}

/// The same counts per treatment.
fn treatment_counts(out: &mut String, e: &Experiment<'_>) {
    let rows: Vec<Vec<String>> = e
        .summary
        .treatments
        .iter()
        .map(|t| {
            vec![
                esc(&t.treatment),
                t.migrations.to_string(),
                t.usable.to_string(),
                t.censored.to_string(),
                t.did_not_converge.to_string(),
                t.failed.to_string(),
                t.guest_crashed.to_string(),
                t.corrupted.to_string(),
                t.trace_loss.to_string(),
            ]
        })
        .collect();
    table(
        out,
        "treatment-counts",
        "counts",
        &[
            "treatment",
            "run",
            "usable",
            "censored",
            "did not converge",
            "failed",
            "guest crashed/silent",
            "corrupted",
            "trace loss",
        ],
        &rows,
    );
}

/// What the records say both hosts ran, each machine with its migrations.
fn machines(out: &mut String, e: &Experiment<'_>) {
    let mut machines: Vec<(Option<&Machine>, usize)> = Vec::new();
    for r in e.records {
        match machines.iter_mut().find(|(m, _)| *m == r.machine.as_ref()) {
            Some(entry) => entry.1 += 1,
            None => machines.push((r.machine.as_ref(), 1)),
        }
    }
    out.push_str("<h3>Machine</h3>\n");
    let rows: Vec<Vec<String>> = machines.iter().map(|(m, n)| machine_row(*m, *n)).collect();
    table(
        out,
        "machine",
        "machine",
        &[
            "hypervisor",
            "build",
            "binary",
            "accelerator",
            "guest RAM MiB",
            "vCPUs",
            "host kernel",
            "workarounds",
            "migrations",
        ],
        &rows,
    );
}

fn machine_row(m: Option<&Machine>, migrations: usize) -> Vec<String> {
    let Some(m) = m else {
        let mut row = vec!["not recorded".to_owned()];
        row.extend(std::iter::repeat_n("–".to_owned(), 7));
        row.push(migrations.to_string());
        return row;
    };
    vec![
        esc(&format!("{} {}", m.hypervisor, m.version)),
        esc(&m.description),
        esc(&m.binary),
        esc(&match &m.accelerator_reason {
            Some(why) => format!("{} ({why})", m.accelerator),
            None => m.accelerator.clone(),
        }),
        format!("{:.0}", m.ram_bytes as f64 / (1u64 << 20) as f64),
        m.vcpus.to_string(),
        esc(&m.host_kernel),
        esc(&if m.workarounds.is_empty() { "none".to_owned() } else { m.workarounds.join("; ") }),
        migrations.to_string(),
    ]
}
