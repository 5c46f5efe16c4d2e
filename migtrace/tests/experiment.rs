//! Root, QEMU (TCG here): the experiment runner end to end, through the `migtrace`
//! binary as a user runs it. Resume after a kill by pid mid-migration loses and
//! duplicates nothing, and the run's QEMUs die with it;
//! Ctrl-C ends cleanly; the default experiment runs. Run with `cargo xtask test`.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use migtrace::{lab::registry, measure::record};

const SPEC: &str = r#"name = "resume-test"
repetitions = 3
repetitions_per_boot = 2
order = "random"
seed = 3
warmup = "500ms"
[factors]
wset = ["16M"]
rate = [0, 1000]
[measure]
tracing = false
ping_interval_ms = 0
probe_rate_hz = 0
settle_s = 0.2
settle_max_s = 0.2
"#;

fn migtrace() -> Command {
    Command::new(env!("CARGO_BIN_EXE_migtrace"))
}

fn temp_root(tag: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("migtrace-exp-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root).expect("temp dir");
    root
}

fn records_in(dir: &Path) -> usize {
    fs::read_to_string(dir.join("migrations.jsonl")).map(|t| t.lines().count()).unwrap_or(0)
}

/// Labs owned by `pid` that are still around.
fn labs_of(pid: u32) -> Vec<String> {
    registry::list().into_iter().filter(|s| s.owner_pid == pid).map(|s| s.id).collect()
}

fn wait_for_records(dir: &Path, n: usize, child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while records_in(dir) < n {
        assert!(Instant::now() < deadline, "no {n} records within 3 minutes");
        assert!(child.try_wait().expect("poll").is_none(), "run ended early");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether process `pid` has a TCP connection to or from the lab's migration port
/// (4444, `lab::MIGRATION_PORT`) established: a migration is under way. Read in its own
/// network namespace's view.
fn migrating(pid: u32) -> bool {
    let table = fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[3] == "01" && (f[1].ends_with(":115C") || f[2].ends_with(":115C"))
    })
}

/// Waits until a lab of run `pid` is migrating; returns that lab.
fn wait_for_migration(pid: u32, child: &mut std::process::Child) -> registry::State {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "no migration under way within 2 minutes");
        assert!(child.try_wait().expect("poll").is_none(), "run ended early");
        let labs = registry::list().into_iter().filter(|s| s.owner_pid == pid);
        if let Some(lab) = labs.into_iter().find(|s| s.qemu_pids.iter().any(|&q| migrating(q))) {
            return lab;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Processes in network namespace `ns` (a named one, /run/netns/NS).
fn in_namespace(ns: &str) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(inode) = fs::metadata(migtrace::sys::netns::ns_path(ns)).map(|m| m.ino()) else { return Vec::new() };
    let want = format!("net:[{inode}]");
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
                .filter(|p| fs::read_link(format!("/proc/{p}/ns/net")).is_ok_and(|l| l.to_string_lossy() == want))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
#[ignore = "needs root and QEMU: runs experiments (run `cargo xtask test`)"]
fn resume_after_kill_by_pid_loses_and_duplicates_nothing() {
    let root = temp_root("resume");
    let spec = root.join("spec.toml");
    // With the ping on: its process must not outlive the run either.
    fs::write(&spec, SPEC.replace("ping_interval_ms = 0", "ping_interval_ms = 50")).expect("spec");
    let dir = root.join("resume-test");
    let mut child =
        migtrace().arg("run").arg(&spec).arg("--results").arg(&root).stderr(Stdio::null()).spawn().expect("run");
    wait_for_records(&dir, 2, &mut child);
    let pid = child.id();
    // Mid-migration: the source QEMU holds the migration stream's connection open.
    let lab = wait_for_migration(pid, &mut child);
    // SAFETY: killing the migtrace process this test started, by pid.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    child.wait().expect("reap");
    // Its QEMUs and ping die with it (nothing forked by migtrace outlives it): the lab's
    // namespaces (both hosts, the switch, the client) hold no process even before `lab clean`.
    let namespaces = migtrace::lab::netns::namespaces_of(&lab.id);
    assert_eq!(namespaces.len(), 4, "the lab's hosts, switch and client: {namespaces:?}");
    let in_lab = || namespaces.iter().flat_map(|ns| in_namespace(ns)).collect::<Vec<_>>();
    let deadline = Instant::now() + Duration::from_secs(3);
    while !registry::qemu_processes(&lab.id).is_empty() || !in_lab().is_empty() {
        assert!(
            Instant::now() < deadline,
            "outlived the killed run: QEMUs {:?}, processes in its namespaces {:?}",
            registry::qemu_processes(&lab.id),
            in_lab()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = fs::read_to_string(dir.join("migrations.jsonl")).expect("records");
    let complete_before = before.lines().filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()).count();
    assert!(complete_before >= 2);

    // A killed run leaves its lab behind (no chance to clean up); `lab clean` removes it.
    let clean = migtrace().args(["lab", "clean"]).output().expect("lab clean");
    assert!(clean.status.success(), "{}", String::from_utf8_lossy(&clean.stderr));
    assert!(labs_of(pid).is_empty(), "lab clean left {:?}", labs_of(pid));
    let left = migtrace::lab::netns::namespaces_of(&lab.id);
    assert!(left.is_empty(), "lab clean left namespaces {left:?}");

    let out = migtrace().arg("run").arg(&spec).arg("--results").arg(&root).output().expect("resume");
    assert!(out.status.success(), "resume failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("already recorded"));
    let after = fs::read_to_string(dir.join("migrations.jsonl")).expect("records");
    // Nothing written before the kill changed.
    let kept: Vec<&str> = before.lines().take(complete_before).collect();
    assert_eq!(after.lines().take(complete_before).collect::<Vec<_>>(), kept);
    let records = record::read(&dir).expect("all records parse");
    let pairs: BTreeSet<(String, u32)> = records.iter().map(|r| (r.treatment.clone(), r.repetition)).collect();
    assert_eq!(records.len(), 6, "2 treatments × 3 repetitions, no duplicate");
    assert_eq!(pairs.len(), 6);
    // Each treatment's repetitions ran on at least two boots of its guest (boots of at
    // most 2): a boot's ping-pong migrations chain, each one's destination the next one's
    // source.
    for t in records.iter().map(|r| r.treatment.as_str()).collect::<BTreeSet<_>>() {
        let mine: Vec<_> = records.iter().filter(|r| r.treatment == t).collect();
        let chained =
            mine.iter().filter(|r| mine.iter().any(|p| p.outcome.destination_pid == r.outcome.source_pid)).count();
        assert!(mine.len() - chained >= 2, "{t}: one boot for all its repetitions");
    }
    for f in ["summary.json", "treatments.csv", "migrations.csv", "report.txt", "spec.toml", "experiment.json"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    fs::remove_dir_all(&root).expect("cleanup");
}

#[test]
#[ignore = "needs root and QEMU: runs experiments (run `cargo xtask test`)"]
fn interrupt_ends_cleanly_and_keeps_records() {
    let root = temp_root("sigint");
    let spec = root.join("spec.toml");
    fs::write(&spec, SPEC.replace("resume-test", "sigint-test")).expect("spec");
    let dir = root.join("sigint-test");
    let mut child =
        migtrace().arg("run").arg(&spec).arg("--results").arg(&root).stderr(Stdio::null()).spawn().expect("run");
    wait_for_records(&dir, 1, &mut child);
    let pid = child.id();
    // SAFETY: interrupting the migtrace process this test started, as Ctrl-C would.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let started = Instant::now();
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(130), "exit code of an interrupted run");
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?} to stop", started.elapsed());
    std::thread::sleep(Duration::from_millis(500));
    assert!(labs_of(pid).is_empty(), "interrupted run left labs {:?}", labs_of(pid));
    let records = record::read(&dir).expect("records intact");
    assert!(!records.is_empty());
    fs::remove_dir_all(&root).expect("cleanup");
}

#[test]
#[ignore = "needs root and QEMU: runs the default experiment (run `cargo xtask test`)"]
fn default_experiment_runs_with_one_repetition() {
    let root = temp_root("default");
    let out = migtrace()
        .args(["run", "--default", "--repetitions", "1", "--results"])
        .arg(&root)
        .output()
        .expect("run default");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{}", stdout, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("Table II"), "{stdout}");
    let dir = root.join("default");
    let summary: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("summary.json")).expect("summary")).expect("json");
    // As many treatments as the default spec has (it changes; the test follows it).
    let spec = migtrace::experiment::spec::ExperimentSpec::parse(include_str!("../../specs/default.toml"))
        .expect("default spec");
    let treatments = migtrace::experiment::design::expand(&spec).len();
    assert_eq!(summary["treatments"].as_array().map(Vec::len), Some(treatments));
    assert!(summary["table2"].as_array().is_some_and(|t| t.iter().any(|r| r["measure"] == "downtime.probe_gap")));
    let t = &summary["treatments"][0];
    assert!(t["histograms"]["downtime.probe_gap"].as_str().is_some_and(|h| !h.is_empty()), "serialised HDR histogram");
    assert_eq!(fs::read_to_string(dir.join("migrations.csv")).expect("csv").lines().count(), treatments + 1);
    fs::remove_dir_all(&root).expect("cleanup");
}
