//! Root, QEMU (TCG here), eBPF: outages outside the switchover are recorded where they
//! fell, and the vCPU blackout lasts until the guest runs on the destination, however
//! late its vCPU thread gets there. Both forced on real QEMU processes. Run with
//! `cargo xtask test`.

use std::{
    fs,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use migtrace::{
    clock::monotonic_ns,
    hypervisor::{HostPair, MigrationParams, Status},
    lab::{Lab, LabConfig},
    measure::session::{MeasureOptions, Session},
};
use workloads::spec::Spec;

/// Whether process `pid` has the lab's migration connection (port 4444) established.
fn migrating(pid: u32) -> bool {
    let table = fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[3] == "01" && (f[1].ends_with(":115C") || f[2].ends_with(":115C"))
    })
}

/// Waits up to `limit` for `pid`'s migration connection.
fn wait_migrating(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if migrating(pid) {
            return true;
        }
        thread::sleep(Duration::from_millis(2));
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and QEMU: a lab whose source QEMU is stopped mid pre-copy (run `cargo xtask test`)"]
async fn a_stall_in_pre_copy_is_an_outage_in_its_round() {
    // 64 MiB dirtied at 2,000 pages/s: pre-copy lasts a second or two over the 1gbit
    // link, time enough to stop the source 400 ms into it.
    let config = LabConfig { workload: Spec::parse("wset=64M,rate=2000").expect("spec"), ..LabConfig::default() };
    let mut lab = Lab::up(config).await.expect("lab up");
    let mut session = Session::start(lab.network(), MeasureOptions::default()).expect("probes");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (src, _) = lab.pids();
    let stopped = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let window = stopped.clone();
    let stopper = thread::spawn(move || {
        if !wait_migrating(src, Duration::from_secs(30)) {
            return;
        }
        thread::sleep(Duration::from_millis(400));
        window.0.store(monotonic_ns(), Ordering::SeqCst);
        // SAFETY: stopping and continuing the lab's own source QEMU, by pid.
        unsafe { libc::kill(src as i32, libc::SIGSTOP) };
        thread::sleep(Duration::from_millis(200));
        unsafe { libc::kill(src as i32, libc::SIGCONT) };
        window.1.store(monotonic_ns(), Ordering::SeqCst);
    });
    let params = MigrationParams { timeout_s: 120.0, ..MigrationParams::default() };
    let r = session.migrate(&mut lab, &params, 0, "stopped").await.expect("measured migration");
    stopper.join().expect("stopper");
    session.stop().await.expect("stop probes");
    lab.down().await;
    assert_eq!(r.outcome.status, Status::Completed, "{:?}", r.outcome.error);
    let (from, to) = (stopped.0.load(Ordering::SeqCst), stopped.1.load(Ordering::SeqCst));
    assert!(from > 0 && to > from, "the source was never stopped");
    let ms = |ns: u64| (ns as f64 - r.outcome.start_ns as f64) / 1e6;
    let outages = r.outages.as_ref().expect("outages measured");
    for o in outages {
        eprintln!(
            "{:>9.3} ms  {:>8.3} ms  {}{}",
            o.start_ms,
            o.duration_ms,
            o.phase,
            if o.switchover { " (switchover)" } else { "" }
        );
    }
    // The stall, 200 ms from the SIGSTOP: silent from the last answer before it to the
    // first after it, in pre-copy, not the switchover.
    let stall = outages
        .iter()
        .find(|o| o.start_ms <= ms(from) + 1.0 && o.start_ms + o.duration_ms >= ms(to) - 1.0)
        .unwrap_or_else(|| panic!("no outage covers the stop at {:.1}–{:.1} ms: {outages:?}", ms(from), ms(to)));
    assert!(!stall.switchover, "{stall:?}");
    assert!(stall.phase.contains("pre-copy round"), "{stall:?}");
    assert!((195.0..600.0).contains(&stall.duration_ms), "{stall:?}");
    assert!(stall.counted(), "{stall:?}");
    // The switchover has its own, and the totals hold both.
    let switchover = outages.iter().find(|o| o.switchover).expect("the switchover's outage");
    assert_eq!(r.downtime_ms.probe_gap, Some(switchover.duration_ms));
    let total = r.downtime_ms.outages_total.expect("total");
    assert!(total >= stall.duration_ms + switchover.duration_ms - 1e-6, "{total}");
    assert!(r.downtime_ms.longest_outage.expect("longest") >= stall.duration_ms);
}

/// The vCPU threads of QEMU process `pid` (named `CPU n/TCG` or `CPU n/KVM`).
fn vcpu_threads(pid: u32) -> Vec<u32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|t| t.parse::<u32>().ok()))
                .filter(|tid| {
                    fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).is_ok_and(|c| c.starts_with("CPU "))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and QEMU: a lab whose destination vCPU thread is held back (run `cargo xtask test`)"]
async fn a_destination_vcpu_held_back_keeps_the_guest_dark_until_it_runs() {
    let mut lab = Lab::up(LabConfig::default()).await.expect("lab up");
    let options = MeasureOptions { settle_max: Duration::from_secs(8), ..MeasureOptions::default() };
    let mut session = Session::start(lab.network(), options).expect("probes");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (src, dst) = lab.pids();
    let tids = vcpu_threads(dst);
    assert_eq!(tids.len(), 1, "one vCPU thread in the destination QEMU: {tids:?}");
    let tid = tids[0] as libc::pid_t;
    let held = Arc::new(AtomicBool::new(false));
    let released = Arc::new(AtomicU64::new(0));
    let (held_flag, released_at) = (held.clone(), released.clone());
    // One thread does all the ptrace calls: a tracee is the tracing thread's.
    let holder = thread::spawn(move || {
        // SAFETY: ptrace on a thread of the lab's own destination QEMU, which this
        // thread seizes, stops, and lets go again.
        unsafe {
            if libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0) != 0 {
                return;
            }
            libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0);
            let mut status = 0;
            libc::waitpid(tid, &mut status, libc::__WALL);
            held_flag.store(true, Ordering::SeqCst);
            // Held until well after the migration completes (an idle guest migrates
            // in about a second over the 1gbit link).
            if wait_migrating(src, Duration::from_secs(30)) {
                thread::sleep(Duration::from_millis(3000));
            }
            released_at.store(monotonic_ns(), Ordering::SeqCst);
            libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0);
        }
    });
    while !held.load(Ordering::SeqCst) && !holder.is_finished() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(held.load(Ordering::SeqCst), "could not stop the destination's vCPU thread {tid}");
    let params = MigrationParams { timeout_s: 120.0, ..MigrationParams::default() };
    let r = session.migrate(&mut lab, &params, 0, "held").await.expect("measured migration");
    holder.join().expect("holder");
    session.stop().await.expect("stop probes");
    lab.down().await;
    assert_eq!(r.outcome.status, Status::Completed, "{:?}", r.outcome.error);
    let release = released.load(Ordering::SeqCst);
    let m = &r.timeline.as_ref().expect("timeline").marks;
    let resumed = m.destination_resumed_ns.expect("resumed");
    let paused = m.source_paused_ns.expect("paused");
    eprintln!(
        "released {:.3} ms, destination's first guest entry {:.3} ms, blackout {:?} ms",
        (release - r.outcome.start_ns) as f64 / 1e6,
        (resumed - r.outcome.start_ns) as f64 / 1e6,
        r.downtime_ms.vcpu
    );
    // QEMU resumed the VM long before the thread could run: the guest ran only once it
    // was let go, and the blackout holds the whole wait.
    assert!(resumed >= release, "the blackout ended before the vCPU thread ran");
    assert_eq!(m.destination_first_entry_ns, Some(resumed));
    let vcpu = r.downtime_ms.vcpu.expect("vcpu blackout");
    assert!(vcpu >= (release - paused) as f64 / 1e6, "{vcpu} ms");
}
