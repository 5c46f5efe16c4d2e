//! What a migration achieved over the link: the hypervisor's byte counts over the
//! traced phases that moved them.

use super::timeline::Marks;
use crate::hypervisor::{MigrationOutcome, link::LinkAchieved};

/// Rates from QEMU's `downtime-bytes` and `transferred` over the source's stop-and-copy
/// (source paused → its last write returned) and its whole migration (setup →
/// completed). The source writes into a socket whose buffer pre-copy filled, so its
/// writes go at the link's pace; what it wrote last then still crosses the link while
/// the destination loads (`drain_ms`: its last write → the destination's load complete).
/// `tx_bytes`: what the source's end of the link counted meanwhile. Returns the figures
/// and, for each missing one, why.
pub fn achieved(outcome: &MigrationOutcome, marks: &Marks, tx_bytes: Option<u64>) -> (LinkAchieved, Vec<String>) {
    let mut missing = Vec::new();
    let ram = outcome.stats.ram.as_ref();
    let span_ms = |from: Option<u64>, to: Option<u64>| match (from, to) {
        (Some(a), Some(b)) if b > a => Some((b - a) as f64 / 1e6),
        _ => None,
    };
    let mut rate = |what: &str, bytes: Option<u64>, ms: Option<f64>, span: &str| match (bytes, ms) {
        (Some(bytes), Some(ms)) => Some(bytes as f64 * 8.0 / (ms / 1e3)),
        (None, _) => {
            missing.push(format!("params.link.achieved.{what}: the hypervisor reported no byte count for it"));
            None
        }
        (_, None) => {
            missing.push(format!("params.link.achieved.{what}: no {span} span in the timeline"));
            None
        }
    };
    let stop_and_copy_ms = span_ms(marks.source_paused_ns, marks.source_sent_ns);
    let stop_and_copy_bps =
        rate("stop_and_copy_bps", ram.and_then(|r| r.downtime_bytes), stop_and_copy_ms, "source-paused → source-sent");
    let migration_bps = rate(
        "migration_bps",
        ram.and_then(|r| r.transferred),
        span_ms(marks.setup_ns, marks.source_completed_ns),
        "setup → source-completed",
    );
    let drain_ms = span_ms(marks.source_sent_ns, marks.destination_loaded_ns);
    (LinkAchieved { stop_and_copy_bps, stop_and_copy_ms, migration_bps, drain_ms, link_tx_bytes: tx_bytes }, missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::{RamStats, ReportedStats};

    #[test]
    fn rates_are_bytes_over_the_spans_that_moved_them() {
        let mut outcome = MigrationOutcome::completed_for_test(Some(3_000_000_000));
        outcome.stats = ReportedStats {
            ram: Some(RamStats {
                downtime_bytes: Some(37_500_000),
                transferred: Some(250_000_000),
                ..RamStats::default()
            }),
            ..ReportedStats::default()
        };
        let marks = Marks {
            setup_ns: Some(1_000_000_000),
            source_paused_ns: Some(2_700_000_000),
            source_sent_ns: Some(3_000_000_000),
            source_completed_ns: Some(3_000_000_000),
            destination_loaded_ns: Some(3_020_000_000),
            ..Marks::default()
        };
        let (a, missing) = achieved(&outcome, &marks, Some(260_000_000));
        assert!(missing.is_empty(), "{missing:?}");
        // 37.5 MB in 300 ms: 1 Gbit/s; 250 MB in 2 s: 1 Gbit/s.
        assert!((a.stop_and_copy_bps.expect("s&c") - 1e9).abs() < 1.0);
        assert!((a.stop_and_copy_ms.expect("ms") - 300.0).abs() < 1e-9);
        assert!((a.migration_bps.expect("migration") - 1e9).abs() < 1.0);
        assert!((a.drain_ms.expect("drain") - 20.0).abs() < 1e-9);
        assert_eq!(a.link_tx_bytes, Some(260_000_000));
        // Without the source's last-write and completion marks there is no span: missing,
        // never a guess.
        let (a, missing) =
            achieved(&outcome, &Marks { source_sent_ns: None, source_completed_ns: None, ..marks }, None);
        assert!(a.stop_and_copy_bps.is_none() && a.migration_bps.is_none());
        assert_eq!(missing.len(), 2, "{missing:?}");
    }
}
