//! The timeline assembler and the downtime measures on a recorded event stream: one
//! real lab migration (QEMU 7.2 under TCG, 256 MiB guest, 32 MiB dirtied at 2,000
//! pages/s), recorded with `migtrace migrate --lab --keep-trace`.

use migtrace::{
    clock::WallClock,
    measure::{
        downtime,
        record::{self, MigrationRecord},
        timeline::{self, Evidence, Input},
    },
};

fn recorded() -> MigrationRecord {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tcg-dirty-2000.jsonl");
    record::read(std::path::Path::new(path)).expect("fixture").remove(0)
}

fn reassemble(r: &MigrationRecord, trace: Option<&migtrace::probe::tracer::Trace>) -> timeline::Timeline {
    timeline::assemble(&Input {
        outcome: &r.outcome,
        trace,
        qemu_version: (7, 2),
        clock: WallClock::from_pair(r.outcome.start_ns, r.outcome.start_unix_us),
        destination_tap: Some("tap-b"),
        probe_ident: r
            .trace
            .as_ref()
            .and_then(|t| t.packets.iter().find(|p| p.kind == "icmp-echo-reply").map(|p| p.ident)),
    })
}

#[test]
fn replayed_trace_gives_the_recorded_timeline() {
    let r = recorded();
    let t = reassemble(&r, r.trace.as_ref());
    let recorded = r.timeline.as_ref().expect("recorded timeline");
    assert_eq!(t.phases, recorded.phases);
    assert_eq!(t.rounds, recorded.rounds);
}

#[test]
fn main_chain_is_complete_contiguous_and_ordered() {
    let r = recorded();
    let t = reassemble(&r, r.trace.as_ref());
    let names: Vec<&str> = t.chain().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "setup",
            "pre-copy round 1",
            "pre-copy round 2",
            "vm-stop",
            "stop-and-copy",
            "destination load",
            "resume",
            "first guest packet"
        ]
    );
    let chain: Vec<_> = t.chain().collect();
    for pair in chain.windows(2) {
        let end = pair[0].start_ms + pair[0].duration_ms;
        assert!(
            (pair[1].start_ms - end).abs() < 1e-3,
            "{} ends at {end}, {} starts at {}",
            pair[0].name,
            pair[1].name,
            pair[1].start_ms
        );
    }
    assert!(chain.iter().all(|p| p.evidence != Evidence::Qmp), "all from probes");
    // Rounds: one per dirty-log sync, the last with the VM stopped.
    let syncs = r.outcome.stats.ram.as_ref().and_then(|m| m.dirty_sync_count).expect("dirty-sync-count");
    assert_eq!(t.rounds.len() as u64, syncs);
    assert!(t.rounds.last().is_some_and(|x| x.final_round));
    assert!(t.rounds.iter().all(|x| x.sync_ms.is_some()));
    // Traced setup → completed agrees with QEMU's total-time (ms resolution) within 2 ms.
    let traced = (t.marks.source_completed_ns.expect("completed") - t.marks.setup_ns.expect("setup")) as f64 / 1e6;
    let total = r.outcome.stats.total_time.expect("total-time") as f64;
    assert!((traced - total).abs() < 2.0, "traced {traced} ms vs QEMU total-time {total} ms");
}

#[test]
fn without_probes_the_timeline_falls_back_to_qmp_events() {
    let r = recorded();
    let t = reassemble(&r, None);
    assert!(t.fallbacks.iter().any(|f| f.contains("setup")), "{:?}", t.fallbacks);
    assert!(t.fallbacks.iter().any(|f| f.contains("MIGRATION_PASS")));
    // QMP's MIGRATION_PASS is emitted at each sync: the same number of rounds.
    let syncs = r.outcome.stats.ram.as_ref().and_then(|m| m.dirty_sync_count).expect("dirty-sync-count");
    assert_eq!(t.rounds.len() as u64, syncs);
    let setup = t.phase("setup").expect("setup from QMP");
    assert_eq!(setup.evidence, Evidence::Qmp);
    // The QMP-based stop-and-copy is close to the probed one (QMP stamps are µs).
    let probed = reassemble(&r, r.trace.as_ref());
    let (a, b) = (t.phase("stop-and-copy").expect("qmp"), probed.phase("stop-and-copy").expect("probed"));
    assert!((a.duration_ms - b.duration_ms).abs() < 2.0, "{} vs {}", a.duration_ms, b.duration_ms);
}

#[test]
fn missing_symbols_degrade_to_qmp_without_failing() {
    let r = recorded();
    let mut trace = r.trace.clone().expect("trace");
    // A QEMU build without migrate_set_state and the dirty-log sync.
    trace.phases.retain(|p| p.point != "MigrateSetState" && p.point != "DirtyLogSync");
    let t = reassemble(&r, Some(&trace));
    assert!(t.fallbacks.iter().any(|f| f.starts_with("setup")));
    assert!(t.fallbacks.iter().any(|f| f.contains("rounds from QMP")));
    assert!(t.phase("stop-and-copy").is_some() && t.phase("resume").is_some());
    assert_eq!(t.phase("resume").map(|p| p.evidence), Some(Evidence::Probe), "other points still from probes");
}

#[test]
fn downtime_measures_relate_as_they_must() {
    let r = recorded();
    let d = &r.downtime_ms;
    let (probe, vcpu, reported) = (d.probe_gap.expect("probe"), d.vcpu.expect("vcpu"), d.reported.expect("reported"));
    let interval_ms = r.probe.as_ref().expect("probe").interval_us as f64 / 1e3;
    assert!(probe + interval_ms >= vcpu, "probe gap {probe} ≥ vCPU blackout {vcpu} (within one probe interval)");
    assert!(vcpu >= reported, "the guest is stopped at least as long as QEMU counts");
    let ping = r.ping.as_ref().expect("ping");
    assert_eq!(d.ping, Some(ping.lost as f64 * ping.interval_ms), "ping downtime is lost × interval");
    // Recomputing the probe gap from the raw packets gives the recorded one.
    let prober = migtrace::measure::prober::ProberReport {
        interval_us: r.probe.as_ref().map_or(0, |p| p.interval_us),
        ident: r
            .trace
            .as_ref()
            .and_then(|t| t.packets.iter().find(|p| p.kind == "icmp-echo-reply"))
            .map_or(0, |p| p.ident),
        sent: r.probe.as_ref().map_or(0, |p| p.sent),
        first_sent_ns: 0,
        last_sent_ns: u64::MAX / 2,
        ..Default::default()
    };
    let packets = &r.trace.as_ref().expect("trace").packets;
    let again = downtime::probe_gap(
        &prober,
        packets,
        r.timeline.as_ref().and_then(|t| t.marks.source_paused_ns.zip(t.marks.destination_resumed_ns)),
        r.outcome.start_ns,
    );
    assert_eq!(again.gap_ms, d.probe_gap);
    assert_eq!((again.last_host_before.as_deref(), again.first_host_after.as_deref()), (Some("tap-a"), Some("tap-b")));
}
