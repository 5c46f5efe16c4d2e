//! The timeline assembler and the downtime measures on a recorded event stream: one
//! real lab migration (QEMU 7.2 under TCG, 256 MiB guest, 32 MiB dirtied at 2,000
//! pages/s), recorded with `migtrace migrate --lab --keep-trace`.
//!
//! Only the raw trace and QEMU's own output (QMP events, query-migrate) of the fixture
//! are used; the figures the recording run derived from them are not. Expected values
//! are read off the raw stamps by hand, or checked against QEMU's independent clock.

use migtrace::{
    clock::WallClock,
    measure::{
        downtime,
        record::{self, MigrationRecord},
        timeline::{self, Evidence, Input},
    },
    probe::tracer::{Trace, Unread},
};

fn recorded() -> MigrationRecord {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tcg-dirty-2000.jsonl");
    record::read(std::path::Path::new(path)).expect("fixture").remove(0)
}

/// The probe sender's ICMP identifier in this recording.
const IDENT: u16 = 13492;

fn reassemble(r: &MigrationRecord, trace: Option<&Trace>) -> timeline::Timeline {
    timeline::assemble(&Input {
        outcome: &r.outcome,
        trace,
        qemu_versions: migtrace::hypervisor::Versions::both(Some((7, 2))),
        clock: WallClock::from_pair(r.outcome.start_ns, r.outcome.start_unix_us),
        destination_tap: Some("tap-b"),
        probe_ident: Some(IDENT),
    })
}

/// Milliseconds of monotonic `ns` after the migration command.
fn ms(r: &MigrationRecord, ns: Option<u64>) -> f64 {
    (ns.expect("mark") - r.outcome.start_ns) as f64 / 1e6
}

/// A QMP event's stamp, ms after the command (QEMU's own wall clock, µs).
fn qmp_ms(r: &MigrationRecord, source: bool, pred: impl Fn(&migtrace::hypervisor::HostEvent) -> bool) -> f64 {
    let events = if source { &r.outcome.source_events } else { &r.outcome.destination_events };
    let e = events.iter().find(|e| pred(e)).expect("event");
    (e.unix_us - r.outcome.start_unix_us) as f64 / 1e3
}

#[test]
fn marks_are_the_raw_stamps_read_by_hand() {
    let r = recorded();
    let t = reassemble(&r, r.trace.as_ref());
    let m = &t.marks;
    let close = |got: f64, want: f64| (got - want).abs() < 1e-6;
    // migrate_set_state(0 → 1 setup), (1 → 4 active) on the source.
    assert!(close(ms(&r, m.setup_ns), 0.542888));
    assert!(close(ms(&r, m.active_ns), 2.438720));
    assert!(close(ms(&r, m.vm_stop_ns), 804.315392), "vm_stop_force_state entry");
    // The source vCPU last left guest code at 804.232158, before the stop: idle in the
    // guest, so stopped when vm_stop_force_state began, 0.083 ms later.
    assert!(close(ms(&r, m.source_paused_ns), 804.315392), "vm_stop_force_state entry");
    assert!(close(ms(&r, m.source_last_exit_ns), 804.232158), "the raw last exit");
    assert!(close(m.source_paused_clamped_ms.expect("moved"), 0.083234), "moved by the stop");
    assert!(close(ms(&r, m.source_completed_ns), 820.325461), "migrate_set_state(4 → 8)");
    assert!(close(ms(&r, m.destination_loaded_ns), 822.045407), "qemu_loadvm_state returned");
    // The destination vCPU first entered guest code at 822.782754, 0.27 ms after
    // resume_all_vcpus returned (822.512312): the guest ran only then.
    assert!(close(ms(&r, m.destination_resumed_ns), 822.782754), "first guest entry");
    assert_eq!(m.destination_resumed_clamped_ms, Some(0.0));
    // The first probe reply through tap-b after the resume.
    assert!(close(ms(&r, m.first_packet_ns), 841.471936));
    assert!(t.fallbacks.is_empty() && t.missing.is_empty(), "{:?} {:?}", t.fallbacks, t.missing);
    assert_eq!(t.mark_evidence("source-paused"), Evidence::Ebpf);
}

#[test]
fn probed_marks_agree_with_qemus_own_events() {
    // QEMU stamps each event just after the state change the probe saw: the probe is
    // earlier, by well under a millisecond.
    let r = recorded();
    let t = reassemble(&r, r.trace.as_ref());
    let m = &t.marks;
    let status = |s: &'static str| move |e: &migtrace::hypervisor::HostEvent| e.migration_status() == Some(s);
    for (what, probe, event) in [
        ("setup", ms(&r, m.setup_ns), qmp_ms(&r, true, status("setup"))),
        ("active", ms(&r, m.active_ns), qmp_ms(&r, true, status("active"))),
        ("stop", ms(&r, m.vm_stop_ns), qmp_ms(&r, true, |e| e.event == "STOP")),
        ("completed", ms(&r, m.source_completed_ns), qmp_ms(&r, true, status("completed"))),
    ] {
        assert!(probe <= event + 0.001 && event - probe < 1.0, "{what}: probe {probe} ms, QMP {event} ms");
    }
    // On the destination QEMU 7.2 sends RESUME after the load and before it resumes
    // the vCPUs, and its MIGRATION completed only after that.
    let resume = qmp_ms(&r, false, |e| e.event == "RESUME");
    let dest_completed = qmp_ms(&r, false, status("completed"));
    let trace = r.trace.as_ref().expect("trace");
    let resumed_call = trace
        .phases
        .iter()
        .find(|p| p.tgid == r.outcome.destination_pid && p.point == "ResumeAllVcpus" && p.ret)
        .map(|p| p.ts_ns);
    assert!(ms(&r, m.destination_loaded_ns) < resume && resume < ms(&r, resumed_call));
    assert!(dest_completed > ms(&r, resumed_call));
    // Traced setup → completed agrees with QEMU's total-time (ms resolution).
    let traced = ms(&r, m.source_completed_ns) - ms(&r, m.setup_ns);
    let total = r.outcome.stats.total_time.expect("total-time") as f64;
    assert!((traced - total).abs() < 1.0, "traced {traced} ms vs QEMU total-time {total} ms");
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
    assert!(chain.iter().all(|p| p.duration_ms > 0.0), "no zero-length phase");
    assert!(chain.iter().all(|p| p.evidence != Evidence::Qmp), "all from probes");
    // Rounds: one per dirty-log sync (QEMU's dirty-sync-count), the last with the VM
    // stopped.
    let syncs = r.outcome.stats.ram.as_ref().and_then(|m| m.dirty_sync_count).expect("dirty-sync-count");
    assert_eq!(t.rounds.len() as u64, syncs);
    assert!(t.rounds.last().is_some_and(|x| x.final_round));
    // Remaining bytes of round 2: the out-parameters of the pending check returning at
    // 804.300 ms, 14,426,112 bytes.
    assert_eq!(t.rounds[1].remaining_bytes, Some(14_426_112));
    // Round 1 starts with all of RAM pending and checks 8 times (every 100 ms window)
    // before the check entering at 804.148 ms syncs; that check's result opens round 2,
    // whose stop decision used its threshold (128 MiB/s measured × 300 ms).
    let (r1, r2) = (&t.rounds[0], &t.rounds[1]);
    assert_eq!((r1.dirty_bytes, r1.checks, r1.remaining_bytes), (Some(268_967_936), Some(8), Some(82_173_952)));
    assert_eq!(r1.threshold_bytes, Some(40_272_795));
    assert_eq!((r2.dirty_bytes, r2.checks, r2.threshold_bytes), (Some(14_426_112), Some(1), Some(40_276_089)));
    assert_eq!((t.rounds[2].dirty_bytes, t.rounds[2].checks), (None, None), "the final round checks nothing");
}

#[test]
fn a_pending_check_the_probe_could_not_read_has_no_figure() {
    let r = recorded();
    let mut trace = r.trace.clone().expect("trace");
    // Round 2's one pending check (returning at 804.300 ms, 14,426,112 bytes), as the
    // return probe records it when its entry saved no arguments: zeros, flagged.
    let check = trace
        .phases
        .iter_mut()
        .find(|p| p.point == "SavevmStatePending" && p.ret && p.args.iter().sum::<u64>() == 14_426_112)
        .expect("round 2's check");
    check.args = [0; 3];
    check.unread = Some(Unread::NotSaved);
    let t = reassemble(&r, Some(&trace));
    let r2 = &t.rounds[1];
    assert_eq!((r2.remaining_bytes, r2.dirty_bytes), (None, None), "no figure, never 0");
    assert_eq!(r2.checks, Some(1), "the check still happened");
    assert_eq!(t.rounds[0].remaining_bytes, Some(82_173_952), "round 1 untouched");
    for figure in ["remaining_bytes", "dirty_bytes"] {
        assert!(
            t.missing.iter().any(|m| m.starts_with(&format!("round 2: {figure}: QEMU's pending bytes"))
                && m.contains("saved no arguments")),
            "{:?}",
            t.missing
        );
    }
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
    assert_eq!(t.phase("setup").expect("setup from QMP").evidence, Evidence::Qmp);
    // No event lies between the destination's load and its resume: one phase for both,
    // from the source's completion (820.331) to RESUME (822.257).
    assert_eq!(t.marks.destination_loaded_ns, None);
    let joined = t.phase("destination load + resume").expect("joined phase");
    assert!((joined.duration_ms - 1.926).abs() < 1e-6, "{}", joined.duration_ms);
    // The vCPU blackout from QMP is labelled so.
    let m = downtime::compute(&r.outcome, &t, None, None);
    assert_eq!(m.evidence.get("downtime_ms.vcpu"), Some(&Evidence::Qmp));
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
    assert_eq!(t.phase("resume").map(|p| p.evidence), Some(Evidence::Ebpf), "other points still from probes");
    // The traced migration time now rests on QMP marks: labelled, not pooled.
    let m = downtime::compute(&r.outcome, &t, None, None);
    assert_eq!(m.evidence.get("migration_time_ms.traced"), Some(&Evidence::Qmp));
    assert_eq!(m.evidence.get("downtime_ms.vcpu"), Some(&Evidence::Ebpf));
}

#[test]
fn the_probe_gap_holds_the_vcpu_blackout() {
    // The guest cannot answer while its vCPUs are stopped: the gap between probe
    // replies at the taps must begin before the source paused and end after the
    // destination resumed, on the other tap.
    let r = recorded();
    let t = reassemble(&r, r.trace.as_ref());
    let trace = r.trace.as_ref().expect("trace");
    let probe = r.probe.as_ref().expect("probe");
    let sent: Vec<u64> = trace.packets.iter().filter(|p| p.ident == IDENT).map(|p| p.sent_ns).collect();
    let prober = migtrace::measure::prober::ProberReport {
        interval_us: probe.interval_us,
        ident: IDENT,
        sent: probe.sent,
        first_sent_ns: sent.iter().copied().min().expect("stamps"),
        last_sent_ns: sent.iter().copied().max().expect("stamps"),
        ..Default::default()
    };
    let m = &t.marks;
    let s = downtime::probe_gap(
        &prober,
        &trace.packets,
        m.source_paused_ns.zip(m.destination_resumed_ns),
        r.outcome.start_ns,
    );
    let (start, gap) = (s.gap_start_ms.expect("start"), s.gap_ms.expect("gap"));
    assert!(start < ms(&r, m.source_paused_ns) && start + gap > ms(&r, m.destination_resumed_ns));
    // It ends with the first reply through the destination's tap after the resume.
    assert!((start + gap - ms(&r, m.first_packet_ns)).abs() < 1e-6);
    assert_eq!((s.last_host_before.as_deref(), s.first_host_after.as_deref()), (Some("tap-a"), Some("tap-b")));
    let vcpu = downtime::compute(&r.outcome, &t, None, Some(&s)).downtime_ms.vcpu.expect("vcpu");
    // The destination vCPU's first guest entry − vm_stop_force_state's entry (the source
    // vCPU idled before it): 822.782754 − 804.315392 ms.
    assert!((vcpu - 18.467362).abs() < 1e-6, "{vcpu}");
    assert!(gap > vcpu);
}
