//! Root, QEMU (TCG here): the embedded lab boots, answers ping, migrates back and forth
//! with a dirty workload, survives nothing it should not, and leaves nothing behind.
//! Run with `cargo xtask test`.

use std::{process::Command, time::Duration};

use migtrace::{
    hypervisor::{HostPair, MigrationParams, Status},
    lab::{Lab, LabConfig, LabError, netns, qemu::QemuError, registry},
};
use workloads::spec::Spec;

fn ping_once(ns: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", "-q", &netns::GUEST_IP.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Nothing of lab `id` remains: no QEMU process, no namespace (taps and bridge live in
/// it), no state directory.
fn assert_gone(id: &str) {
    assert!(
        registry::qemu_processes(id).is_empty(),
        "QEMU processes of lab {id} left: {:?}",
        registry::qemu_processes(id)
    );
    assert!(netns::namespaces_of(id).is_empty(), "namespaces of lab {id} left: {:?}", netns::namespaces_of(id));
    assert!(!std::path::Path::new(registry::RUN_DIR).join(id).exists(), "state of lab {id} left");
}

/// Labs owned by this test process (other processes may run labs meanwhile).
fn my_labs() -> usize {
    registry::list().into_iter().filter(|s| s.owner_pid == std::process::id()).count()
}

fn params() -> MigrationParams {
    MigrationParams { timeout_s: 120.0, ..MigrationParams::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and QEMU: starts a lab (run `cargo xtask test`)"]
async fn boots_pings_and_migrates_back_and_forth_with_a_dirty_workload() {
    // A mild dirty workload: QEMU 7.2 under TCG corrupts guests at higher rates (README).
    let config = LabConfig { workload: Spec::parse("wset=16M,rate=1000").expect("spec"), ..LabConfig::default() };
    let mut lab = Lab::up(config).await.expect("lab up");
    let id = lab.id.clone();
    assert!(lab.agent_line.contains(r#""event":"start""#), "agent: {}", lab.agent_line);
    assert!(
        lab.agent_line.contains("rate") || lab.agent_line.contains("bpc"),
        "dirty workload running: {}",
        lab.agent_line
    );
    assert!(ping_once(&lab.client_ns()), "guest answers ping after boot");
    eprintln!("boot to agent: {:.2} s", lab.boot_time.as_secs_f64());

    let mut walls = Vec::new();
    let mut hosts = Vec::new();
    for rep in 0..3 {
        let (src, dst) = lab.pids();
        let o = lab.migrate(&params()).await.expect("migrate");
        assert_eq!(o.status, Status::Completed, "migration {rep}: {:?}", o.error);
        assert_eq!((o.source_pid, o.destination_pid), (src, dst));
        assert_eq!(o.stats.status.as_deref(), Some("completed"));
        assert!(o.stats.total_time.is_some() && o.stats.downtime.is_some());
        assert!(o.source_events.iter().any(|e| e.event == "STOP"), "source stopped the VM");
        assert!(o.destination_events.iter().any(|e| e.event == "RESUME"), "destination resumed the VM");
        walls.push(o.command_ms().expect("completed has an end"));
        hosts.push(o.direction.clone());
        lab.prepare_next().await.expect("fresh destination");
        assert!(ping_once(&lab.client_ns()), "guest answers ping after migration {rep}");
    }
    // Ping-pong: the guest went a → b → a → b.
    assert_eq!(hosts, ["tap-a → tap-b", "tap-b → tap-a", "tap-a → tap-b"]);
    walls.sort_by(f64::total_cmp);
    eprintln!("migration wall times (ms): {walls:?}; median {:.0}", walls[1]);
    lab.down().await;
    assert_gone(&id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and QEMU: starts a lab (run `cargo xtask test`)"]
async fn killed_destination_fails_the_migration_cleanly() {
    let config = LabConfig { workload: Spec::parse("wset=64M,rate=20000").expect("spec"), ..LabConfig::default() };
    let mut lab = Lab::up(config).await.expect("lab up");
    let id = lab.id.clone();
    let (_, dst) = lab.pids();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: killing the destination QEMU this test started, by pid.
        unsafe { libc::kill(dst as i32, libc::SIGKILL) };
    });
    let o = lab.migrate(&params()).await.expect("migration attempt is recorded, not an error");
    killer.join().expect("killer thread");
    assert_eq!(o.status, Status::Failed);
    let error = o.error.expect("error text");
    assert!(error.contains("destination") || error.contains("failed"), "error names the problem: {error}");
    // The guest still runs on the source after the failed migration.
    assert!(ping_once(&lab.client_ns()), "guest still answers on the source");
    drop(lab); // the unhappy path: Drop, not down(), must clean up too
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_gone(&id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and QEMU: starts a lab (run `cargo xtask test`)"]
async fn killed_source_fails_the_migration_cleanly() {
    let config = LabConfig { workload: Spec::parse("wset=64M,rate=20000").expect("spec"), ..LabConfig::default() };
    let mut lab = Lab::up(config).await.expect("lab up");
    let id = lab.id.clone();
    let (src, _) = lab.pids();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: killing the source QEMU this test started, by pid.
        unsafe { libc::kill(src as i32, libc::SIGKILL) };
    });
    let o = lab.migrate(&params()).await.expect("migration attempt is recorded, not an error");
    killer.join().expect("killer thread");
    assert_eq!(o.status, Status::Failed);
    let error = o.error.expect("error text");
    assert!(error.contains(&format!("source QEMU (pid {src}) exited")), "error names the problem: {error}");
    drop(lab); // the guest died with its source: Drop cleans up the rest
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_gone(&id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and QEMU: starts a lab (run `cargo xtask test`)"]
async fn migration_stream_cut_midway_times_out_is_cancelled_and_recorded_as_failed() {
    use migtrace::{
        measure::quality::{self, Category},
        measure::{
            record::{self, RecordWriter},
            session::{MeasureOptions, Session},
        },
    };
    // 64 MiB of dirty pages at 32 MiB/s: the stream is still flowing when it is cut.
    let config = LabConfig { workload: Spec::parse("wset=64M,rate=2000").expect("spec"), ..LabConfig::default() };
    let mut lab = Lab::up(config).await.expect("lab up");
    let id = lab.id.clone();
    let link_ns = lab.host_ns(netns::TAPS[0]);
    let network = lab.network();
    let options = MeasureOptions {
        trace: false,
        ping_interval: None,
        probe_interval: None,
        settle: Duration::from_millis(100),
        settle_max: Duration::from_millis(100),
        memory_check: None,
        ..MeasureOptions::default()
    };
    let mut session = Session::start(network, options).expect("session");
    // The stream crosses the hosts' link: with the source's end down, every segment
    // between the two QEMUs is dropped and the connection hangs, as on a cut cable.
    let cutter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        migtrace::sys::netns::ip(&["-n", &link_ns, "link", "set", netns::LINK_IF, "down"]).expect("cut the stream");
    });
    let params = MigrationParams { max_bandwidth: Some(32 << 20), timeout_s: 4.0, ..MigrationParams::default() };
    let r = session.migrate(&mut lab, &params, 0, "cut").await.expect("attempt recorded");
    cutter.join().expect("cutter thread");
    assert_eq!(r.outcome.status, Status::TimedOut, "{:?}", r.outcome.error);
    assert!(
        r.outcome.error.as_deref().is_some_and(|e| e.contains("did not complete within 4 s")),
        "{:?}",
        r.outcome.error
    );
    // Cancelled: the source runs the guest again and answers ping.
    let source = lab.source.as_ref().expect("source");
    let state = source.qmp.run_state().await.expect("query-status");
    assert_eq!(state, "running", "the source resumed the guest after the cancel");
    assert!(ping_once(&lab.client_ns()), "guest still answers on the source");
    // A failed record, written like any other and kept out of the statistics.
    assert_eq!(quality::category(&r), Category::Failed);
    let dir = std::env::temp_dir().join(format!("migtrace-cut-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    RecordWriter::open(&dir).expect("writer").append(&r).expect("append");
    let back = record::read(&dir).expect("read back");
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].outcome.status, Status::TimedOut);
    std::fs::remove_dir_all(&dir).expect("cleanup");
    session.stop().await.expect("stop");
    lab.down().await;
    assert_gone(&id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and QEMU: starts a lab (run `cargo xtask test`)"]
async fn migration_that_does_not_converge_times_out_and_is_cancelled() {
    use migtrace::measure::{
        quality::{self, Category},
        session::{MeasureOptions, Session},
    };
    // 64 MiB dirtied at 8 MB/s over a 1 MiB/s bandwidth cannot converge in 3 s.
    let config = LabConfig { workload: Spec::parse("wset=64M,rate=2000").expect("spec"), ..LabConfig::default() };
    let mut lab = Lab::up(config).await.expect("lab up");
    let id = lab.id.clone();
    let options = MeasureOptions {
        ping_interval: None,
        probe_interval: None,
        settle: Duration::from_millis(100),
        settle_max: Duration::from_millis(100),
        memory_check: None,
        ..MeasureOptions::default()
    };
    let mut session = Session::start(lab.network(), options).expect("session");
    let params = MigrationParams { max_bandwidth: Some(1 << 20), timeout_s: 3.0, ..MigrationParams::default() };
    let r = session.migrate(&mut lab, &params, 0, "stuck").await.expect("attempt recorded");
    assert_eq!(r.outcome.status, Status::TimedOut);
    assert!(
        r.outcome.error.as_deref().is_some_and(|e| e.contains("did not complete within 3 s")),
        "{:?}",
        r.outcome.error
    );
    // Pre-copy never reached a switchover: its own category, neither usable nor failed.
    let marks = r.timeline.as_ref().map(|t| t.marks.clone()).unwrap_or_default();
    assert!(marks.active_ns.is_some() && marks.vm_stop_ns.is_none(), "pre-copy ran, never stopped: {marks:?}");
    assert_eq!(quality::category(&r), Category::DidNotConverge);
    session.stop().await.expect("stop");
    // Cancelled: the guest runs on where it was.
    assert!(ping_once(&lab.client_ns()), "guest still answers on the source");
    lab.down().await;
    assert_gone(&id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and QEMU: starts a lab (run `cargo xtask test`)"]
async fn guest_that_never_comes_up_times_out_with_console_tail() {
    let config = LabConfig { boot_timeout: Duration::from_millis(300), ..LabConfig::default() };
    let before = my_labs();
    match Lab::up(config).await {
        Err(e @ LabError::Qemu(QemuError::BootTimeout { .. })) => {
            // Whatever the guest printed so far (possibly nothing yet) is in the error.
            let LabError::Qemu(QemuError::BootTimeout { tail, .. }) = &e else { unreachable!() };
            let message = e.to_string();
            assert!(message.contains("did not come up within") && message.contains("last console lines"), "{message}");
            assert!(message.ends_with(tail.as_str()), "the console tail is in the error: {message}");
        }
        Err(e) => panic!("expected a boot timeout, got {e}"),
        Ok(_) => panic!("a guest cannot be up in 300 ms under this test"),
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(my_labs(), before, "no lab left behind after a failed boot");
}

#[tokio::test]
#[ignore = "needs root: validates lab configuration"]
async fn bad_configuration_is_refused_before_anything_starts() {
    let before = my_labs();
    let too_big = LabConfig { workload: Spec::parse("wset=256M").expect("spec"), ..LabConfig::default() };
    let err = Lab::up(too_big).await.err().expect("refused").to_string();
    assert!(err.contains("wset=256 MiB must be smaller"), "{err}");
    let tiny = LabConfig { vmsize_mib: 64, ..LabConfig::default() };
    assert!(Lab::up(tiny).await.err().expect("refused").to_string().contains("at least 128 MiB"));
    assert_eq!(my_labs(), before);
}
