//! Root, libvirt, QEMU (TCG here), eBPF: the libvirt backend on two real libvirt daemons
//! (the libvirt lab: each daemon in its own network and mount namespace), traced by a
//! `migtrace agent` started in each host's namespace. Run with `cargo xtask test`.

use std::{path::Path, time::Duration};

use migtrace::{
    clock::estimate_offset,
    hypervisor::{HostPair, MigrationParams, Status},
    lab::{LabConfig, libvirt::LibvirtLab, registry},
    measure::{
        record::MigrationRecord,
        session::{MeasureOptions, Session},
    },
    probe::agent::{Agent, AgentOptions, HostTracing, start_hosts},
};
use workloads::spec::Spec;

const MIGTRACE: &str = env!("CARGO_BIN_EXE_migtrace");
/// Host b's agent reports every stamp this much late: the coordinator must find it.
const INJECTED_OFFSET_NS: i64 = 2_000_000_000;

fn params() -> MigrationParams {
    MigrationParams { timeout_s: 120.0, ..MigrationParams::default() }
}

/// Nothing of the lab is left: no namespace, daemon, QEMU or state.
fn assert_gone(id: &str, daemons: &[u32]) {
    for h in ["a", "b", "c"] {
        let ns = LibvirtLab::ns(id, h);
        assert!(!migtrace::lab::netns::ns_path(&ns).exists(), "namespace {ns} left");
    }
    for pid in daemons {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "libvirtd {pid} left");
    }
    assert!(registry::qemu_processes(id).is_empty(), "QEMU of lab {id} left: {:?}", registry::qemu_processes(id));
    assert!(!Path::new(registry::RUN_DIR).join(id).exists(), "state of lab {id} left");
}

async fn lab(workload: &str) -> LibvirtLab {
    let config = LabConfig { workload: Spec::parse(workload).expect("spec"), ..LabConfig::default() };
    LibvirtLab::up(config, Default::default()).await.expect("libvirt lab up")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, libvirt and QEMU: two libvirt daemons (run `cargo xtask test`)"]
async fn ping_pong_migrations_traced_by_an_agent_in_each_hosts_namespace() {
    let mut lab = lab("wset=32M,rate=5000").await;
    let (id, daemons) = (lab.id.clone(), lab.daemon_pids());
    let mut commands: Vec<(String, Vec<String>)> = ["a", "b"]
        .iter()
        .enumerate()
        .map(|(i, h)| ((*h).to_owned(), lab.agent_command(i, Path::new(MIGTRACE))))
        .collect();
    commands[1].1.extend(["--clock-offset-ns".to_owned(), INJECTED_OFFSET_NS.to_string()]);
    let opts = AgentOptions { domain: lab.domain.clone(), guest_mac: Some(lab.guest_mac().into()), clock_offset_ns: 0 };
    let hosts = start_hosts(&HostTracing::Agents(commands), &opts).await.expect("agents");
    let mut session = Session::with_hosts(lab.network(), MeasureOptions::default(), hosts);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut records: Vec<MigrationRecord> = Vec::new();
    for rep in 0..3 {
        let r = session.migrate(&mut lab, &params(), rep, "libvirt-lab").await.expect("measured migration");
        assert_eq!(r.outcome.status, Status::Completed, "{:?}", r.outcome.error);
        records.push(r);
        lab.prepare_next().await.expect("next");
    }
    session.stop().await.expect("agents quit");
    lab.down().await;
    assert_gone(&id, &daemons);

    let directions: Vec<&str> = records.iter().map(|r| r.outcome.direction.as_str()).collect();
    assert_eq!(directions, ["a → b", "b → a", "a → b"]);
    for r in &records {
        let what = format!("migration {} ({})", r.repetition, r.outcome.direction);
        assert!(r.missing.is_empty(), "{what}: missing {:?}", r.missing);
        let d = &r.downtime_ms;
        for (name, v) in [
            ("ping", d.ping),
            ("ping_max_gap", d.ping_max_gap),
            ("probe_gap", d.probe_gap),
            ("vcpu", d.vcpu),
            ("reported", d.reported),
        ] {
            assert!(v.is_some(), "{what}: downtime_ms.{name} missing");
        }
        // libvirt's own figures on both sides, labelled as libvirt's.
        assert_eq!(r.outcome.stats.reported_by.as_deref(), Some("libvirt job stats"), "{what}");
        assert!(r.outcome.stats.total_time.is_some() && r.outcome.destination_stats.is_some(), "{what}");
        // Both hosts traced: the source's phases and the destination's.
        let t = r.timeline.as_ref().expect("timeline");
        assert!(t.fallbacks.is_empty(), "{what}: {:?}", t.fallbacks);
        for phase in
            ["setup", "pre-copy round 1", "stop-and-copy", "resume", "first guest packet", "destination receive"]
        {
            assert!(t.phase(phase).is_some(), "{what}: phase {phase} missing: {:?}", t.phases);
        }
        assert!(
            r.outcome.source_pid != 0
                && r.outcome.destination_pid != 0
                && r.outcome.source_pid != r.outcome.destination_pid
        );
        let health = r.trace_health.as_ref().expect("health");
        assert!(health.problems.is_empty() && health.lost_records == 0, "{what}: {health:?}");
        // Clocks: the offset injected into host b's agent is found within its bound.
        let (a, b) = (&r.clocks["a"], &r.clocks["b"]);
        assert_eq!((a.source.as_str(), b.source.as_str()), ("agent", "agent"));
        assert!(a.offset_ns.unsigned_abs() <= a.uncertainty_ns, "{what}: host a {a:?}");
        assert!((b.offset_ns - INJECTED_OFFSET_NS).unsigned_abs() <= b.uncertainty_ns, "{what}: host b {b:?}");
        // ... and taken out: the blackout spans two hosts' stamps, yet it is QEMU's
        // downtime plus the destination's load and resume, not 5 ms off.
        let vcpu = d.vcpu.expect("vcpu");
        let reported = d.reported.expect("reported");
        assert!(
            vcpu > 0.0 && (vcpu - reported).abs() < 60.0,
            "{what}: vCPU blackout {vcpu} ms vs libvirt's {reported} ms"
        );
        assert!(r.uncertainty_ms["downtime_ms.vcpu"] > 0.0, "{what}: cross-host bound recorded");
        let check = r.guest.as_ref().and_then(|g| g.memory_check.as_ref()).expect("memory check");
        assert_eq!((check.pages_checked, check.corrupted_pages()), (8192, 0), "{what}");
        let m = r.machine.as_ref().expect("machine");
        assert!(m.hypervisor.contains("libvirt") && !m.version.is_empty(), "{m:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: loads the agent's eBPF programs (run `cargo xtask test`)"]
async fn an_offset_injected_into_an_agent_is_recovered_within_the_reported_uncertainty() {
    for injected in [0i64, 250_000_000, -3_000_000] {
        let opts = AgentOptions { domain: "no-such-domain".into(), guest_mac: None, clock_offset_ns: injected };
        let mut agent = Agent::spawn("test", &[MIGTRACE.to_owned(), "agent".to_owned()], &opts).await.expect("agent");
        let e = agent.clock(32).await.expect("estimate");
        assert!((e.offset_ns - injected).unsigned_abs() <= e.uncertainty_ns, "injected {injected}: {e:?}");
        assert!(e.uncertainty_ns < 5_000_000, "a local pipe bounds it tightly: {e:?}");
        agent.quit().await;
    }
    assert!(estimate_offset(&[]).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, libvirt and QEMU: two libvirt daemons (run `cargo xtask test`)"]
async fn a_migration_to_a_host_whose_daemon_stopped_fails_cleanly_with_a_record() {
    let mut lab = lab("idle").await;
    let (id, daemons) = (lab.id.clone(), lab.daemon_pids());
    lab.stop_daemon(1).await;
    let mut session = Session::with_hosts(
        lab.network(),
        MeasureOptions { trace: false, ..MeasureOptions::default() },
        Default::default(),
    );
    let started = std::time::Instant::now();
    let r = session.migrate(&mut lab, &params(), 0, "dead-destination").await.expect("the attempt is recorded");
    assert_eq!(r.outcome.status, Status::Failed);
    let error = r.outcome.error.clone().unwrap_or_default();
    assert!(error.contains("a → b") && error.contains("unreachable"), "the error names the problem: {error}");
    assert!(started.elapsed() < Duration::from_secs(60), "no hang: {:?}", started.elapsed());
    // The guest still runs on host a.
    assert_eq!(lab.endpoints().0, "a");
    session.stop().await.expect("stop");
    lab.down().await;
    assert_gone(&id, &daemons);
}
