//! `migtrace timeline`: one migration's phases and rounds as a table.

use std::fmt::Write as _;

use super::{align_right, ms, table};
use crate::measure::record::MigrationRecord;

/// The timeline of a record as text.
pub fn render(r: &MigrationRecord) -> String {
    let mut out = String::new();
    let o = &r.outcome;
    let _ = writeln!(
        out,
        "migration {} of {} ({}): {:?}, {} ms; QEMU total-time {} ms, downtime {} ms",
        r.repetition,
        r.treatment,
        o.direction,
        o.status,
        ms(r.migration_time_ms.command),
        o.stats.total_time.map_or("-".into(), |v| v.to_string()),
        o.stats.downtime.map_or("-".into(), |v| v.to_string()),
    );
    if let Some(e) = &o.error {
        let _ = writeln!(out, "error: {e}");
    }
    let Some(t) = &r.timeline else {
        let _ = writeln!(out, "(no timeline in this record)");
        return out;
    };
    let mut phases = table(&["phase", "host", "start ms", "duration ms", "from", "detail"]);
    for p in &t.phases {
        let detail = if p.parallel { "beside the main chain" } else { "" };
        phases.add_row(vec![
            p.name.clone(),
            format!("{:?}", p.host).to_lowercase(),
            format!("{:.3}", p.start_ms),
            format!("{:.3}", p.duration_ms),
            format!("{:?}", p.evidence).to_lowercase(),
            detail.into(),
        ]);
    }
    align_right(&mut phases, &[2, 3]);
    let _ = writeln!(out, "{phases}");
    if !t.rounds.is_empty() {
        let has = |what: &str| t.rounds.iter().any(|x| x.kvm.iter().any(|k| k.what == what));
        let (bitmap, ring) = (has("dirty-pages"), has("dirty-ring-push"));
        let mut header = vec!["round", "start ms", "duration ms", "sync ms", "remaining MiB"];
        if bitmap {
            header.push("dirty pages");
        }
        if ring {
            header.push("dirty-ring pushes");
        }
        header.push("KVM dirty-log ioctls");
        let mut rounds = table(&header);
        for x in &t.rounds {
            // The ioctls with their latencies; vCPU runs and dirty-ring events apart.
            let kvm: Vec<String> = x
                .kvm
                .iter()
                .filter(|k| matches!(k.what.as_str(), "get-dirty-log" | "clear-dirty-log" | "reset-dirty-rings"))
                .map(|k| {
                    format!(
                        "{} ×{} ({:.3} ms, max {:.3})",
                        k.what,
                        k.counts.count,
                        k.counts.total_ns as f64 / 1e6,
                        k.counts.max_ns as f64 / 1e6
                    )
                })
                .collect();
            let count = |what: &str| -> u64 { x.kvm.iter().filter(|k| k.what == what).map(|k| k.counts.count).sum() };
            let mut row = vec![
                format!("{}{}", x.round, if x.final_round { " (final, VM stopped)" } else { "" }),
                format!("{:.3}", x.start_ms),
                format!("{:.3}", x.duration_ms),
                ms(x.sync_ms),
                x.remaining_bytes.map_or("-".into(), |b| format!("{:.1}", b as f64 / (1 << 20) as f64)),
            ];
            if bitmap {
                // A bitmap counted in part is flagged; one not read at all is no figure.
                let partial = count("dirty-pages-truncated") + count("dirty-pages-unread") > 0;
                row.push(match (x.kvm.iter().any(|k| k.what == "dirty-pages"), partial) {
                    (false, _) => "-".into(),
                    (true, false) => count("dirty-pages").to_string(),
                    (true, true) => format!("≥{} (partial)", count("dirty-pages")),
                });
            }
            if ring {
                row.push(count("dirty-ring-push").to_string());
            }
            row.push(if kvm.is_empty() { "-".into() } else { kvm.join(", ") });
            rounds.add_row(row);
        }
        let numeric: Vec<usize> = (1..header.len() - 1).collect();
        align_right(&mut rounds, &numeric);
        let _ = writeln!(out, "{rounds}");
    }
    let d = &r.downtime_ms;
    let vcpu_from = match r.evidence.get("downtime_ms.vcpu") {
        Some(crate::measure::timeline::Evidence::Qmp) => " (from QMP)",
        _ => "",
    };
    let _ = writeln!(
        out,
        "downtime ms: ping{} {} | ping largest gap {} | probe gap {}{} | vCPU {}{vcpu_from} | QEMU {}{}",
        r.ping.as_ref().map_or(String::new(), |p| format!(" ({} ms)", p.interval_ms)),
        ms(d.ping),
        ms(d.ping_max_gap),
        ms(d.probe_gap),
        r.probe
            .as_ref()
            .and_then(|p| Some(format!(" ({} → {})", p.last_host_before.as_deref()?, p.first_host_after.as_deref()?)))
            .unwrap_or_default(),
        ms(d.vcpu),
        ms(d.reported),
        d.heartbeat_gap.map_or(String::new(), |g| format!(" | heartbeat gap {g:.3}")),
    );
    if let Some(h) = &r.heartbeat {
        let _ = writeln!(
            out,
            "guest heartbeats: gap {} ms (source {} → destination {} heartbeats); intervals p50 {} | p99 {} | max {} ms",
            ms(h.gap_ms),
            h.source,
            h.destination,
            ms(h.interval_p50_ms),
            ms(h.interval_p99_ms),
            ms(h.interval_max_ms),
        );
    }
    let runs = match r.machine.as_ref().map(|m| m.accelerator.as_str()) {
        Some("kvm") => "KVM_RUN",
        _ => "vCPU runs",
    };
    let edges: Vec<String> = t
        .vcpus
        .iter()
        .map(|v| {
            let (host, what) = match v.host {
                crate::measure::timeline::Host::Source => ("source", "left guest code last"),
                _ => ("destination", "entered guest code first"),
            };
            format!("{host} vCPU thread {} {what} at {:.3} ms ({} entries)", v.tid, v.at_ms, v.enters)
        })
        .collect();
    if !edges.is_empty() {
        let _ = writeln!(out, "vCPU blackout from {runs}: {}", edges.join("; "));
    }
    let m = &r.migration_time_ms;
    let _ = writeln!(
        out,
        "migration time ms: command {} | QEMU {} | traced {} | traced to resume {}",
        ms(m.command),
        ms(m.reported),
        ms(m.traced),
        ms(m.traced_to_resume)
    );
    if let Some(h) = &r.trace_health {
        let _ = writeln!(out, "probe records lost: {}", h.lost_records);
        if !h.diagnostics.is_empty() {
            let named: Vec<String> = h.diagnostics.iter().map(|(d, n)| format!("{d} ×{n}")).collect();
            let _ = writeln!(out, "eBPF diagnostics: {}", named.join(", "));
        }
        if !h.missing_source_symbols.is_empty() || !h.missing_destination_symbols.is_empty() {
            let _ = writeln!(
                out,
                "QEMU symbols not exported (QMP events used instead): source {:?}, destination {:?}",
                h.missing_source_symbols, h.missing_destination_symbols
            );
        }
    }
    for f in &t.fallbacks {
        let _ = writeln!(out, "fallback: {f}");
    }
    for m in &r.missing {
        let _ = writeln!(out, "missing: {m}");
    }
    out
}
