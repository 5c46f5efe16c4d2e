//! Root: what the eBPF programs could not record reaches the trace, flagged, never as
//! zeros posing as figures. The real programs are loaded with tiny maps (resized before
//! load) and attached to this process, which plays QEMU: it exports QEMU 7.2's
//! `qemu_savevm_state_pending` (whose out-parameters the return probe reads) and issues
//! KVM ioctl numbers, on /dev/null, which the syscall tracepoints see all the same.
//! Run with `cargo xtask test`.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    sync::{Arc, Barrier},
};

use migtrace::probe::{
    Probes,
    tracer::{PhaseStamp, Tracer, Unread},
};

/// Lets a call of [`qemu_savevm_state_pending`] wait inside the function.
pub struct Gate {
    inside: Barrier,
    release: Barrier,
}

/// QEMU 7.2's signature: (f, threshold_size, *res_precopy_only, *res_compatible,
/// *res_postcopy_only). Writes threshold × 1, 2, 3 through the pointers that lie above
/// the first page (the others stand for pointers the probe cannot read); `f`, if not
/// null, is a [`Gate`] to wait at.
///
/// # Safety
/// `f` is null or a live [`Gate`]; each pointer is valid for a write or below 4096.
#[unsafe(no_mangle)]
#[inline(never)]
pub unsafe extern "C" fn qemu_savevm_state_pending(
    f: *const Gate,
    threshold: u64,
    precopy: *mut u64,
    compatible: *mut u64,
    postcopy: *mut u64,
) {
    for (i, p) in [precopy, compatible, postcopy].into_iter().enumerate() {
        if p as usize >= 4096 {
            // SAFETY: the test passes valid pointers above the first page.
            unsafe { p.write_volatile(threshold * (i as u64 + 1)) };
        }
    }
    // SAFETY: null or a Gate the caller keeps alive for the call.
    if let Some(gate) = unsafe { f.as_ref() } {
        gate.inside.wait();
        gate.release.wait();
    }
}

fn pending(f: *const Gate, threshold: u64, postcopy_readable: bool) {
    let (mut a, mut b, mut c) = (0u64, 0u64, 0u64);
    // Address 8: on the first page, never mapped, unreadable to the probe too.
    let postcopy = if postcopy_readable { &raw mut c } else { std::ptr::dangling_mut::<u64>() };
    // SAFETY: `f` is null or a live Gate; the pointers are ours, or the one below 4096.
    unsafe { qemu_savevm_state_pending(f, threshold, &raw mut a, &raw mut b, postcopy) };
    std::hint::black_box((a, b, c));
}

fn returns(phases: &[PhaseStamp]) -> Vec<&PhaseStamp> {
    phases.iter().filter(|p| p.point == "SavevmStatePending" && p.ret).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: loads eBPF programs (run `cargo xtask test`)"]
async fn unread_out_parameters_and_a_full_saved_args_map_are_flagged() {
    let pid = std::process::id();
    let probes = Probes::load_with_map_sizes(&[("SAVED_ARGS", 1)]).expect("load eBPF object with SAVED_ARGS of 1");
    let mut tracer = Tracer::with_probes(probes, &[], &[]).expect("tracer");
    let missing = tracer.watch(pid).expect("attach the phase probes to this process");
    assert!(!missing.contains(&"qemu_savevm_state_pending"), "this test binary exports it");
    tracer.begin(pid, 0).await.expect("begin");

    std::thread::spawn(|| {
        // Read whole; then the third out-parameter unreadable.
        pending(std::ptr::null(), 10, true);
        pending(std::ptr::null(), 100, false);
        // A call waits inside, its arguments the one entry SAVED_ARGS holds; another
        // call meanwhile finds the map full and its return nothing to read.
        let gate = Arc::new(Gate { inside: Barrier::new(2), release: Barrier::new(2) });
        let waiting = {
            let gate = gate.clone();
            std::thread::spawn(move || pending(Arc::as_ptr(&gate), 1000, true))
        };
        gate.inside.wait();
        pending(std::ptr::null(), 10_000, true);
        gate.release.wait();
        waiting.join().expect("waiting call");
    })
    .join()
    .expect("calls");

    let trace = tracer.finish(pid, 0).await.expect("finish");
    let stamps = returns(&trace.phases);
    let by_threshold = |t: u64| {
        let entry = trace
            .phases
            .iter()
            .find(|p| p.point == "SavevmStatePending" && !p.ret && p.args[1] == t)
            .unwrap_or_else(|| panic!("entry of the call with threshold {t}: {:?}", trace.phases));
        assert_eq!((entry.round, entry.returned), (Some(0), None), "an entry holds the round counter");
        *stamps.iter().find(|p| p.tid == entry.tid && p.ts_ns > entry.ts_ns).expect("its return")
    };
    let read = by_threshold(10);
    assert_eq!((read.args, read.unread), ([10, 20, 30], None));
    let fault = by_threshold(100);
    assert_eq!((fault.args, fault.unread), ([100, 200, 0], Some(Unread::ReadFault)));
    assert_eq!(stamps.len(), 4, "{stamps:?}");
    let waited = by_threshold(1000);
    assert_eq!((waited.args, waited.unread), ([1000, 2000, 3000], None));
    let crowded_out = by_threshold(10_000);
    assert_eq!((crowded_out.args, crowded_out.unread), ([0, 0, 0], Some(Unread::NotSaved)));
    let h = &trace.health;
    assert_eq!(h.diagnostics.get("saved-args-full"), Some(&1), "{:?}", h.diagnostics);
    assert!(h.lossy(), "a full map makes the trace incomplete");
    assert_eq!(h.lost_records, 0);
    tracer.stop().await.expect("stop");
}

const KVM_RUN: libc::c_ulong = 0xae80;
const KVM_GET_DIRTY_LOG: libc::c_ulong = 0x4010_ae42;

/// An ioctl the tracepoints see; /dev/null refuses it (ENOTTY), which is fine here.
fn kvm_ioctl_number(fd: i32, req: libc::c_ulong) {
    // SAFETY: /dev/null takes no ioctl argument; the call fails without touching it.
    let _ = unsafe { libc::ioctl(fd, req, 0usize) };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: loads eBPF programs (run `cargo xtask test`)"]
async fn full_kvm_maps_reach_the_trace_health() {
    let pid = std::process::id();
    let probes = Probes::load_with_map_sizes(&[("VCPU_RUN", 1), ("KVM_STATS", 1)]).expect("load with tiny maps");
    let mut tracer = Tracer::with_probes(probes, &[], &[]).expect("tracer");
    tracer.watch(pid).expect("trace this process as a hypervisor");
    tracer.begin(pid, 0).await.expect("begin");
    let null = File::open("/dev/null").expect("/dev/null");
    let fd = null.as_raw_fd();
    // Two "vCPU threads": VCPU_RUN holds the first only.
    for _ in 0..2 {
        std::thread::spawn(move || kvm_ioctl_number(fd, KVM_RUN)).join().expect("vCPU thread");
    }
    // KVM_STATS holds the KVM_RUN counts only: the dirty-log ioctl's key finds it full.
    kvm_ioctl_number(fd, KVM_GET_DIRTY_LOG);
    let trace = tracer.finish(pid, 0).await.expect("finish");
    let h = &trace.health;
    assert_eq!(h.diagnostics.get("vcpu-run-full"), Some(&1), "{:?}", h.diagnostics);
    assert_eq!(h.diagnostics.get("kvm-stats-full"), Some(&1), "{:?}", h.diagnostics);
    assert!(h.lossy());
    assert_eq!(trace.source_vcpus.len(), 1, "the one vCPU thread VCPU_RUN could hold");
    assert!(trace.source_kvm.iter().all(|k| k.what == "run"), "{:?}", trace.source_kvm);
    tracer.stop().await.expect("stop");
}
