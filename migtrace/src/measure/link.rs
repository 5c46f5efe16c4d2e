//! What a migration achieved over the link: the wire's own count where the hosts
//! count what crosses their link (the labs), else the hypervisor's byte counts over the
//! traced phases that moved them.

use super::timeline::Marks;
use crate::{
    hypervisor::{MigrationOutcome, link::LinkAchieved},
    probe::tracer::{PhaseStamp, Trace},
};

/// Rates and spans of what crossed the link (see [`LinkAchieved`] for each figure's
/// definition). `tx_bytes`: what the source's end of the link counted meanwhile.
/// Returns the figures and, for each missing one, why.
pub fn achieved(
    outcome: &MigrationOutcome,
    marks: &Marks,
    trace: Option<&Trace>,
    tx_bytes: Option<u64>,
) -> (LinkAchieved, Vec<String>) {
    let (mut achieved, missing) = match trace.filter(|t| t.link.is_some()) {
        Some(t) => from_wire(outcome, t),
        None => from_qemu(outcome, marks),
    };
    achieved.link_tx_bytes = tx_bytes;
    (achieved, missing)
}

fn span_ms(from: u64, to: u64) -> Option<f64> {
    (to > from).then(|| (to - from) as f64 / 1e6)
}

fn bps(bytes: u64, ms: f64) -> f64 {
    bytes as f64 * 8.0 / (ms / 1e3)
}

/// The first (or last) stamp of `point` of process `pid`.
fn stamp<'a>(t: &'a Trace, pid: u32, point: &str, ret: bool, last: bool) -> Option<&'a PhaseStamp> {
    let mut all = t.phases.iter().filter(|p| p.tgid == pid && p.point == point && p.ret == ret);
    if last { all.next_back() } else { all.next() }
}

/// From the link's counter: each phase stamp carries the bytes the link had carried
/// when it fired, and the trace when its last data packet arrived.
fn from_wire(outcome: &MigrationOutcome, t: &Trace) -> (LinkAchieved, Vec<String>) {
    let mut missing = Vec::new();
    let Some(link) = t.link.as_ref() else { return (LinkAchieved::default(), missing) };
    let src = outcome.source_pid;
    let mut a = LinkAchieved { from: "link".into(), ..LinkAchieved::default() };
    // The stop: vm_stop_force_state entered on the source.
    match stamp(t, src, "VmStopForceState", false, false) {
        Some(stop) => match span_ms(stop.ts_ns, link.last_data_ns) {
            Some(ms) => {
                let bytes = link.bytes.saturating_sub(stop.link_bytes);
                a.stop_and_copy_bps = Some(bps(bytes, ms));
                a.stop_and_copy_ms = Some(ms);
                a.stop_and_copy_bytes = Some(bytes);
            }
            None => missing.push(
                "params.link.achieved.stop_and_copy_bps: no data crossed the link after the source stopped the VM"
                    .into(),
            ),
        },
        None => missing.push("params.link.achieved.stop_and_copy_bps: the source's VM stop was not traced".into()),
    }
    // The source's last write of the VM's state returned.
    if let Some(sent) = stamp(t, src, "SavevmStateCompletePrecopy", true, true) {
        a.drain_bytes = Some(link.bytes.saturating_sub(sent.link_bytes));
        a.drain_ms = Some(span_ms(sent.ts_ns, link.last_data_ns).unwrap_or(0.0));
    }
    let setup = t.phases.iter().find(|p| p.tgid == src && p.point == "MigrateSetState" && !p.ret);
    match setup.and_then(|s| Some((link.bytes.saturating_sub(s.link_bytes), span_ms(s.ts_ns, link.last_data_ns)?))) {
        Some((bytes, ms)) => a.migration_bps = Some(bps(bytes, ms)),
        None => missing.push("params.link.achieved.migration_bps: no traced setup before the link's last data".into()),
    }
    (a, missing)
}

/// From QEMU's `downtime-bytes` and `transferred` over the source's stop-and-copy
/// (source paused → its last write of the VM's state returned) and its whole
/// migration (setup → completed). The source writes into a socket whose buffer
/// pre-copy filled, so its writes go at the link's pace; what it wrote last then still
/// crosses the link while the destination loads (`drain_ms`: its last write → the
/// destination's load complete).
fn from_qemu(outcome: &MigrationOutcome, marks: &Marks) -> (LinkAchieved, Vec<String>) {
    let mut missing = Vec::new();
    let ram = outcome.stats.ram.as_ref();
    let span = |from: Option<u64>, to: Option<u64>| span_ms(from?, to?);
    let mut rate = |what: &str, bytes: Option<u64>, ms: Option<f64>, span: &str| match (bytes, ms) {
        (Some(bytes), Some(ms)) => Some(bps(bytes, ms)),
        (None, _) => {
            missing.push(format!(
                "params.link.achieved.{what}: {} has no byte count for it, and the link is not counted on these hosts",
                outcome.stats.reported_by.as_deref().unwrap_or("the hypervisor")
            ));
            None
        }
        (_, None) => {
            missing.push(format!("params.link.achieved.{what}: no {span} span in the timeline"));
            None
        }
    };
    let stop_and_copy_ms = span(marks.source_paused_ns, marks.source_sent_ns);
    let downtime_bytes = ram.and_then(|r| r.downtime_bytes);
    let stop_and_copy_bps = rate("stop_and_copy_bps", downtime_bytes, stop_and_copy_ms, "source-paused → source-sent");
    let migration_bps = rate(
        "migration_bps",
        ram.and_then(|r| r.transferred),
        span(marks.setup_ns, marks.source_completed_ns),
        "setup → source-completed",
    );
    // libvirt's job statistics map onto QEMU's names (see `ReportedStats`).
    let from = match outcome.stats.reported_by.as_deref() {
        Some(by) if by.starts_with("libvirt") => "libvirt",
        _ => "qemu",
    };
    let achieved = LinkAchieved {
        from: from.into(),
        stop_and_copy_bps,
        stop_and_copy_ms,
        stop_and_copy_bytes: downtime_bytes.filter(|_| stop_and_copy_bps.is_some()),
        drain_ms: span(marks.source_sent_ns, marks.destination_loaded_ns),
        migration_bps,
        ..LinkAchieved::default()
    };
    (achieved, missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        hypervisor::{RamStats, ReportedStats},
        probe::tracer::LinkTrace,
    };

    fn outcome() -> MigrationOutcome {
        let mut outcome = MigrationOutcome::completed_for_test(Some(3_000_000_000));
        outcome.stats = ReportedStats {
            ram: Some(RamStats {
                downtime_bytes: Some(37_500_000),
                transferred: Some(250_000_000),
                ..RamStats::default()
            }),
            ..ReportedStats::default()
        };
        outcome
    }

    #[test]
    fn from_qemu_rates_are_bytes_over_the_source_spans_that_moved_them() {
        let marks = Marks {
            setup_ns: Some(1_000_000_000),
            source_paused_ns: Some(2_700_000_000),
            source_sent_ns: Some(3_000_000_000),
            source_completed_ns: Some(3_000_000_000),
            destination_loaded_ns: Some(3_020_000_000),
            ..Marks::default()
        };
        let (a, missing) = achieved(&outcome(), &marks, None, Some(260_000_000));
        assert!(missing.is_empty(), "{missing:?}");
        assert_eq!(a.from, "qemu");
        // 37.5 MB in 300 ms: 1 Gbit/s; 250 MB in 2 s: 1 Gbit/s.
        assert!((a.stop_and_copy_bps.expect("s&c") - 1e9).abs() < 1.0);
        assert!((a.stop_and_copy_ms.expect("ms") - 300.0).abs() < 1e-9);
        assert!((a.migration_bps.expect("migration") - 1e9).abs() < 1.0);
        assert!((a.drain_ms.expect("drain") - 20.0).abs() < 1e-9);
        assert_eq!(a.link_tx_bytes, Some(260_000_000));
        // Without the source's last-write and completion marks there is no span: missing,
        // never a guess.
        let (a, missing) =
            achieved(&outcome(), &Marks { source_sent_ns: None, source_completed_ns: None, ..marks }, None, None);
        assert!(a.stop_and_copy_bps.is_none() && a.migration_bps.is_none());
        assert_eq!(missing.len(), 2, "{missing:?}");
    }

    fn stamp_at(ts_ns: u64, point: &str, ret: bool, link_bytes: u64) -> PhaseStamp {
        PhaseStamp {
            ts_ns,
            tgid: 1,
            tid: 1,
            point: point.into(),
            ret,
            args: [0, 0, 1],
            returned: None,
            round: None,
            unread: None,
            link_bytes,
            host: None,
        }
    }

    #[test]
    fn from_the_wire_the_stop_and_copy_runs_from_the_stop_to_the_last_packet() {
        // Recorded shape of an idle guest at 1gbit: 100 MB before the stop; the source
        // writes 7.8 MB into a drained socket buffer in 48 ms, the last packet crosses
        // 29 ms later; 10 MB crossed since the stop in all.
        let trace = Trace {
            source_pid: 1,
            phases: vec![
                stamp_at(1_000_000_000, "MigrateSetState", false, 5_000_000),
                stamp_at(2_000_000_000, "VmStopForceState", false, 105_000_000),
                stamp_at(2_048_000_000, "SavevmStateCompletePrecopy", true, 111_000_000),
            ],
            link: Some(LinkTrace { bytes: 115_000_000, last_data_ns: 2_080_000_000 }),
            ..Trace::default()
        };
        let (a, missing) = achieved(&outcome(), &Marks::default(), Some(&trace), None);
        assert!(missing.is_empty(), "{missing:?}");
        assert_eq!(a.from, "link");
        // 10 MB in 80 ms: 1 Gbit/s, where QEMU's 7.8 MB over the source's 48 ms read 1.3.
        assert_eq!(a.stop_and_copy_bytes, Some(10_000_000));
        assert!((a.stop_and_copy_ms.expect("ms") - 80.0).abs() < 1e-9);
        assert!((a.stop_and_copy_bps.expect("rate") - 1e9).abs() < 1.0);
        assert_eq!(a.drain_bytes, Some(4_000_000));
        assert!((a.drain_ms.expect("drain") - 32.0).abs() < 1e-9);
        assert!((a.migration_bps.expect("migration") - 110e6 * 8.0 / 1.08).abs() < 1.0);
        // No stop traced: missing with the reason.
        let mut no_stop = trace.clone();
        no_stop.phases.retain(|p| p.point != "VmStopForceState");
        let (a, missing) = achieved(&outcome(), &Marks::default(), Some(&no_stop), None);
        assert!(a.stop_and_copy_bps.is_none());
        assert!(missing.iter().any(|m| m.contains("VM stop was not traced")), "{missing:?}");
    }
}
