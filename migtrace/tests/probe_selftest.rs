//! Root: loads the real eBPF programs into the running kernel and checks that a uprobe and
//! a syscall tracepoint deliver events with the right pid/tid and sane timestamps.
//! Run with `cargo xtask test` (as root); plain `cargo test` skips it.

use std::{hint::black_box, time::Duration};

use migtrace::{
    clock::monotonic_ns,
    probe::{Collector, Event, Probes},
};
use migtrace_common::event::Role;
use tokio::sync::mpsc;

/// The uprobe target: exported, never inlined, so it has a symbol and a real call.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn migtrace_selftest_mark(value: u64) -> u64 {
    black_box(value).wrapping_mul(3)
}

fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: loads eBPF programs (run `cargo xtask test`)"]
async fn uprobe_and_tracepoint_deliver_events_with_pid_and_monotonic_stamps() {
    let pid = std::process::id();
    let exe = std::env::current_exe().expect("current exe");
    let mut probes = Probes::load().expect("load eBPF object (root, built with cargo xtask build)");
    probes.add_target(pid, Role::Selftest).expect("add target");
    let missing = probes
        .attach_selftest_uprobes(&exe, pid, &[("migtrace_selftest_mark", 7), ("no_such_symbol_in_test", 8)])
        .expect("attach uprobe");
    assert_eq!(missing, vec!["no_such_symbol_in_test".to_owned()]);
    probes.attach_selftest_syscall().expect("attach tracepoint");

    let (tx, mut rx) = mpsc::channel(64);
    let collector = Collector::spawn(probes.take_events().expect("ring buffer"), tx).expect("collector");

    // Trigger from one dedicated thread so tid and ordering are known.
    let (tid, t0, t1) = tokio::task::spawn_blocking(|| {
        let t0 = monotonic_ns();
        for i in 0..5u64 {
            black_box(migtrace_selftest_mark(40 + i));
            // SAFETY: getppid has no preconditions.
            black_box(unsafe { libc::getppid() });
        }
        (gettid(), t0, monotonic_ns())
    })
    .await
    .expect("trigger thread");

    let mut uprobes = Vec::new();
    let mut syscalls = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while uprobes.len() < 5 || syscalls.len() < 5 {
        let batch = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out: {} uprobe, {} syscall events", uprobes.len(), syscalls.len()))
            .expect("collector alive");
        for event in batch {
            match event {
                Event::SelftestUprobe(e) => uprobes.push(e),
                Event::SelftestSyscall(e) if e.header.tid == tid => syscalls.push(e),
                _ => {}
            }
        }
    }
    let stats = collector.stop().await.expect("stop collector");
    assert_eq!(stats.undecodable, 0);
    assert_eq!(probes.loss().expect("loss").total(), 0);

    assert_eq!(uprobes.len(), 5);
    for (i, e) in uprobes.iter().enumerate() {
        assert_eq!((e.header.tgid, e.header.tid), (pid, tid));
        assert_eq!(e.cookie, 7);
        assert_eq!(e.arg0, 40 + i as u64, "first argument of call {i}");
    }
    assert_eq!(syscalls.len(), 5);
    for e in &syscalls {
        assert_eq!(e.header.tgid, pid);
        assert_eq!(e.cookie, 110);
    }
    // Stamps are CLOCK_MONOTONIC, inside the trigger window, and interleave as called.
    let mut all: Vec<_> = uprobes.iter().chain(&syscalls).map(|e| e.header.ts_ns).collect();
    assert!(all.iter().all(|&t| (t0..=t1).contains(&t)), "stamps {all:?} outside [{t0}, {t1}]");
    for pair in uprobes.iter().zip(&syscalls) {
        assert!(pair.0.header.ts_ns < pair.1.header.ts_ns, "mark precedes its getppid");
    }
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 10, "distinct stamps");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: loads eBPF programs (run `cargo xtask test`)"]
async fn other_processes_are_filtered_out() {
    let mut probes = Probes::load().expect("load");
    probes.attach_selftest_syscall().expect("attach tracepoint");
    let (tx, mut rx) = mpsc::channel(8);
    let collector = Collector::spawn(probes.take_events().expect("ring"), tx).expect("collector");
    let getppid = |n: usize| {
        for _ in 0..n {
            // SAFETY: getppid has no preconditions.
            black_box(unsafe { libc::getppid() });
        }
    };
    // Our own pid is not a target yet, and a shell is never one: nothing is recorded.
    getppid(100);
    let status = std::process::Command::new("/bin/sh").args(["-c", "exit 0"]).status().expect("sh");
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rx.try_recv().is_err(), "untargeted processes produced records");
    // Positive control: the same calls once we are a target arrive, every one of them.
    probes.add_target(std::process::id(), Role::Selftest).expect("add target");
    getppid(100);
    let mut ours = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while ours < 100 {
        let Ok(Some(batch)) = tokio::time::timeout_at(deadline, rx.recv()).await else { break };
        ours += batch.iter().filter(|e| matches!(e, Event::SelftestSyscall(_))).count();
    }
    let stats = collector.stop().await.expect("stop");
    assert_eq!(ours, 100, "a target's calls are delivered");
    assert_eq!(stats.records, 100, "and nothing but them");
}
