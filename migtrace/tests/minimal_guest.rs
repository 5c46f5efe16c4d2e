//! Root, /dev/kvm (hardware or kvm_pvm), QEMU, eBPF: real KVM migrations of migtrace's
//! minimal guest, traced end to end. Every record has the KVM dirty-log ioctls of every
//! round, as many rounds as QEMU's dirty-sync-count, pages counted in KVM's own dirty
//! bitmaps that agree with what QEMU sent, a vCPU blackout from KVM_RUN, the guest's
//! memory check and its heartbeat gap; the network measures are missing with the
//! reason. Also: the guest's own parameters, clock and error reports, and its memory
//! check catching QEMU 7.2's lost TCG dirty pages. Run with `cargo xtask test`.

use std::{fs::OpenOptions, os::fd::AsRawFd as _, process::Command, time::Duration};

use migtrace::{
    hypervisor::{HostPair, MigrationParams, Status},
    lab::{
        GuestKind, Lab, LabConfig,
        minimal::{self, GuestStart},
        netns, registry,
    },
    measure::{
        record::MigrationRecord,
        session::{MeasureOptions, Network, Session},
    },
};
use migtrace_common::host::{self, Accel, qemu};
use workloads::spec::Spec;

const WSET_PAGES: u64 = 32 << 8; // 32 MiB

fn network(lab: &Lab) -> Network {
    lab.network()
}

/// Nothing of lab `id` remains: no QEMU process, no namespace, no state directory.
fn assert_gone(id: &str) {
    assert!(registry::qemu_processes(id).is_empty(), "QEMU processes of lab {id} left");
    assert!(netns::namespaces_of(id).is_empty(), "namespaces of lab {id} left: {:?}", netns::namespaces_of(id));
    assert!(!std::path::Path::new(registry::RUN_DIR).join(id).exists(), "state of lab {id} left");
}

/// The TSC frequency KVM gives a new vCPU here (KVM_GET_TSC_KHZ), in kHz.
fn kvm_tsc_khz() -> u64 {
    const KVM_CREATE_VM: libc::c_ulong = 0xae01;
    const KVM_CREATE_VCPU: libc::c_ulong = 0xae41;
    const KVM_GET_TSC_KHZ: libc::c_ulong = 0xaea3;
    let kvm = OpenOptions::new().read(true).write(true).open("/dev/kvm").expect("/dev/kvm");
    // SAFETY: KVM ioctls with integer arguments on descriptors we own; closed below.
    unsafe {
        let vm = libc::ioctl(kvm.as_raw_fd(), KVM_CREATE_VM, 0);
        assert!(vm >= 0, "KVM_CREATE_VM");
        let vcpu = libc::ioctl(vm, KVM_CREATE_VCPU, 0);
        assert!(vcpu >= 0, "KVM_CREATE_VCPU");
        let khz = libc::ioctl(vcpu, KVM_GET_TSC_KHZ, 0);
        assert!(khz > 0, "KVM_GET_TSC_KHZ");
        libc::close(vcpu);
        libc::close(vm);
        khz as u64
    }
}

/// Everything the guest wrote, in order: the consoles of the lab's QEMUs, oldest first
/// (a line the guest was writing when it stopped ends on the next host).
fn consoles(lab: &Lab) -> String {
    let mut files: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir(lab.runtime_dir())
        .expect("lab state")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "console"))
        .filter_map(|p| Some((p.file_stem()?.to_str()?.rsplit_once("-q")?.1.parse().ok()?, p.clone())))
        .collect();
    files.sort();
    files.iter().map(|(_, p)| std::fs::read_to_string(p).expect("console")).collect()
}

/// Every line the guest wrote is one JSON object, and none reports a bad page.
fn assert_well_formed(console: &str) {
    for line in console.lines().filter(|l| l.starts_with(minimal::LINE_PREFIX)) {
        let json = serde_json::from_str::<serde_json::Value>(&line[minimal::LINE_PREFIX.len()..]);
        assert!(json.is_ok_and(|j| j["event"] != "bad-page"), "{line}");
    }
    assert!(console.lines().filter(|l| l.starts_with(minimal::LINE_PREFIX)).count() > 2, "{console}");
}

async fn migrate(lab: &mut Lab, count: u32, options: MeasureOptions, params: &MigrationParams) -> Vec<MigrationRecord> {
    let mut session = Session::start(network(lab), options).expect("probes");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut records = Vec::new();
    for rep in 0..count {
        let record = session.migrate(lab, params, rep, "minimal").await.expect("measured migration");
        assert_eq!(record.outcome.status, Status::Completed, "{:?}", record.outcome.error);
        records.push(record);
        if rep + 1 < count {
            lab.prepare_next().await.expect("next destination");
        }
    }
    session.stop().await.expect("stop probes");
    records
}

fn count(round: &migtrace::measure::timeline::Round, what: &str) -> u64 {
    round.kvm.iter().filter(|k| k.what == what).map(|k| k.counts.count).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, /dev/kvm and QEMU: KVM lab migrations (run `cargo xtask test`)"]
async fn kvm_migrations_of_the_minimal_guest_are_traced_end_to_end() {
    let flavour = host::kvm_flavour().expect("this test needs KVM: hardware virtualisation or kvm_pvm");
    let config = LabConfig {
        guest: GuestKind::Minimal,
        vmsize_mib: 128,
        workload: Spec::parse("wset=32M,rate=5000,fill=1").expect("spec"),
        ..LabConfig::default()
    };
    let mut lab = Lab::up(config).await.expect("lab up");
    let id = lab.id.clone();
    assert_eq!(lab.accel, Accel::Kvm, "the minimal guest runs under KVM here ({flavour:?})");
    assert_eq!(lab.machine.kvm_pvm, flavour == host::KvmFlavour::Pvm);

    // The guest's clock: calibrated against the PIT, it must agree with the TSC rate KVM
    // gives its vCPUs.
    let start: GuestStart = minimal::parse_line(&lab.agent_line, "start").expect("start line");
    assert_eq!((start.wset_pages, start.rate, start.bpc, start.fill), (WSET_PAGES, 0, 50, 1), "{start:?}");
    assert_eq!(start.tsc_from, "pit");
    let host_khz = kvm_tsc_khz();
    let error = (start.tsc_khz as f64 - host_khz as f64) / host_khz as f64;
    eprintln!(
        "TSC: guest calibrated {} kHz, KVM says {host_khz} kHz ({:+.0} ppm); calibration spread {} ppm",
        start.tsc_khz,
        error * 1e6,
        start.calibration_spread_ppm
    );
    // Within 0.1 %, or within the spread the guest measured itself (a loaded host
    // delays its PIT reads).
    let tolerance = 1e-3_f64.max(start.calibration_spread_ppm as f64 * 1e-6);
    assert!(error.abs() < tolerance, "guest TSC {} kHz vs KVM {host_khz} kHz", start.tsc_khz);

    let params = MigrationParams { timeout_s: 120.0, ..MigrationParams::default() };
    let options = MeasureOptions { keep_trace: true, ..MeasureOptions::default() };
    let records = migrate(&mut lab, 3, options, &params).await;
    let hosts: Vec<&str> = records.iter().map(|r| r.outcome.direction.as_str()).collect();
    assert_eq!(hosts, ["tap-a → tap-b", "tap-b → tap-a", "tap-a → tap-b"]);

    for r in &records {
        let what = format!("migration {}", r.repetition);
        let m = r.machine.as_ref().expect("machine");
        assert_eq!((m.accelerator.as_str(), m.guest.as_str()), ("kvm", "minimal"), "{what}");

        // Rounds: one per dirty-log sync, each with its KVM_GET_DIRTY_LOG and
        // KVM_CLEAR_DIRTY_LOG ioctls (counted and timed in the kernel).
        let t = r.timeline.as_ref().expect("timeline");
        assert!(t.fallbacks.is_empty(), "{what}: {:?}", t.fallbacks);
        let syncs = r.outcome.stats.ram.as_ref().and_then(|x| x.dirty_sync_count).expect("dirty-sync-count");
        assert_eq!(t.rounds.len() as u64, syncs, "{what}: one round per dirty-log sync");
        for round in &t.rounds {
            let get = round.kvm.iter().find(|k| k.what == "get-dirty-log").expect("KVM_GET_DIRTY_LOG in every round");
            assert!(get.counts.count > 0 && get.counts.total_ns > 0, "{what} round {}: {get:?}", round.round);
            let clear = count(round, "clear-dirty-log");
            assert!(clear > 0, "{what} round {}: KVM_CLEAR_DIRTY_LOG ×{clear}", round.round);
            assert!(count(round, "dirty-pages") > 0, "{what} round {}: dirty pages counted", round.round);
        }
        // KVM's bitmaps against QEMU's figures: every page the final sync found dirty
        // was sent while the VM was stopped (4 KiB and a header each).
        let last = t.rounds.last().expect("rounds");
        assert!(last.final_round, "{what}: the last round runs with the VM stopped");
        let final_pages = count(last, "dirty-pages");
        let downtime_bytes = r.outcome.stats.ram.as_ref().and_then(|x| x.downtime_bytes).expect("downtime-bytes");
        assert!(
            final_pages * 4096 <= downtime_bytes && downtime_bytes <= final_pages * 4104 + (4 << 20),
            "{what}: final sync {final_pages} dirty pages, QEMU sent {downtime_bytes} bytes stopped"
        );
        // The vCPUs ran guest code through KVM_RUN in pre-copy.
        assert!(t.rounds.iter().map(|x| count(x, "run")).sum::<u64>() > 0, "{what}: KVM_RUN counted");

        // vCPU blackout from KVM_RUN: the source's last exit, the destination's first entry.
        let trace = r.trace.as_ref().expect("kept trace");
        let last_exit = trace.source_vcpus.iter().map(|v| v.last_exit_ns).max().expect("source vCPU");
        let first_enter =
            trace.destination_vcpus.iter().map(|v| v.first_enter_ns).filter(|&t| t > 0).min().expect("dest vCPU");
        // No earlier than resume_all_vcpus began (see `Marks`): on rare runs a vCPU
        // thread was seen entering KVM_RUN just before the call's entry probe fired.
        // Never cut at its return: the guest runs from its first KVM_RUN entry.
        let resume_in = trace
            .phases
            .iter()
            .find(|p| p.tgid == trace.destination_pid && p.point == "ResumeAllVcpus" && !p.ret)
            .map(|p| p.ts_ns)
            .expect("resume_all_vcpus probed");
        if first_enter < resume_in {
            eprintln!("{what}: first KVM_RUN {} µs before resume_all_vcpus", (resume_in - first_enter) / 1000);
        }
        let expected = first_enter.max(resume_in);
        assert_eq!(t.marks.destination_resumed_ns, Some(expected), "{what}: resume from KVM_RUN");
        let (stop, paused) = (t.marks.vm_stop_ns.expect("vm stop"), t.marks.source_paused_ns.expect("paused"));
        assert!(paused >= stop && (last_exit < stop || paused == last_exit), "{what}: pause from KVM_RUN");
        let vcpu = r.downtime_ms.vcpu.expect("vCPU blackout");
        assert!((vcpu - (expected - paused) as f64 / 1e6).abs() < 1e-6);
        assert!(t.vcpus.iter().any(|v| v.host == migtrace::measure::timeline::Host::Destination));
        assert!(vcpu > 0.0 && r.downtime_ms.reported.is_some());

        // The guest: healthy, its whole working set intact, its heartbeats bound the
        // blackout from above (it cannot progress while its vCPUs are stopped).
        let guest = r.guest.as_ref().expect("guest");
        assert!(guest.healthy(), "{what}: {guest:?}");
        let check = guest.memory_check.as_ref().expect("memory check over the serial port");
        assert_eq!((check.pages_checked, check.corrupted_pages()), (WSET_PAGES, 0), "{what}: {check:?}");
        assert!(check.writes > 0 && check.rate_since_last_check > 0.0, "{what}: {check:?}");
        let hb = r.heartbeat.as_ref().expect("heartbeats");
        let gap = r.downtime_ms.heartbeat_gap.expect("heartbeat gap");
        assert!(hb.source > 0 && hb.destination > 0, "{what}: {hb:?}");
        assert!(gap + 1.0 >= vcpu, "{what}: heartbeat gap {gap} ms ≥ vCPU blackout {vcpu} ms");
        assert!(t.phase("first guest heartbeat").is_some(), "{what}: phase");

        // No network: exactly the network measures are missing, with the reason.
        assert_eq!(r.missing.len(), 4, "{what}: ping, its gap, probe gap, announce: {:?}", r.missing);
        assert!(r.missing.iter().all(|m| m.ends_with(": the minimal guest has no network")), "{:?}", r.missing);
        assert!(r.ping.is_none() && r.probe.is_none() && r.downtime_ms.probe_gap.is_none());
        let health = r.trace_health.as_ref().expect("health");
        assert_eq!(health.lost_records, 0);
        eprintln!(
            "{what}: {} rounds, dirty pages {:?}, vCPU {vcpu:.1} ms, heartbeat gap {gap:.1} ms, QEMU {:?} ms, {:.0} ms",
            t.rounds.len(),
            t.rounds.iter().map(|x| count(x, "dirty-pages")).collect::<Vec<_>>(),
            r.downtime_ms.reported,
            r.migration_time_ms.command.unwrap_or(0.0),
        );
    }
    assert_well_formed(&consoles(&lab));
    lab.down().await;
    assert_gone(&id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and QEMU 7.2: TCG lab migrations (run `cargo xtask test`)"]
async fn the_memory_check_catches_qemu_7_2_losing_tcg_dirty_pages() {
    let Some(build) = qemu::system().filter(|b| b.has_tcg_dirty_bug()) else {
        eprintln!("the system QEMU has no TCG dirty-page bug (9.0 or later): nothing to catch");
        return;
    };
    let params = MigrationParams { timeout_s: 120.0, ..MigrationParams::default() };
    let options = MeasureOptions { trace: false, ..MeasureOptions::default() };
    for workaround in [false, true] {
        let config = LabConfig {
            guest: GuestKind::Minimal,
            accel: Some(Accel::Tcg { reason: "the test reproduces a TCG bug".into() }),
            qemu: Some(build.binary.display().to_string()),
            vmsize_mib: 256,
            workload: Spec::parse("wset=64M,rate=20000,fill=1").expect("spec"),
            tcg_dirty_workaround: workaround,
            ..LabConfig::default()
        };
        let mut lab = Lab::up(config).await.expect("lab up");
        let id = lab.id.clone();
        let records = migrate(&mut lab, 2, options.clone(), &params).await;
        let console = consoles(&lab);
        lab.down().await;
        assert_gone(&id);
        let lost: u64 = records
            .iter()
            .map(|r| r.guest.as_ref().and_then(|g| g.memory_check.as_ref()).expect("memory check").corrupted_pages())
            .sum();
        eprintln!("QEMU {} under TCG, workaround {workaround}: {lost} pages lost writes", build.version);
        if workaround {
            assert_eq!(lost, 0, "with the workaround no page loses a write");
            assert_well_formed(&console);
        } else {
            assert!(lost > 0, "QEMU {} loses dirty pages of 256 KiB-aligned RAM blocks under TCG", build.version);
            assert!(records.iter().any(|r| r.guest.as_ref().is_some_and(|g| g.corrupted() && !g.healthy())));
            // Bad pages are reported with their address. (The guest's own pages lose
            // writes too, its stack among them: some of its lines come out garbled.)
            let bad = console.lines().find_map(|l| minimal::parse_line::<serde_json::Value>(l, "bad-page"));
            let bad = bad.unwrap_or_else(|| panic!("no bad-page line on the consoles: {console}"));
            let address = bad["address"].as_u64().expect("address");
            assert!((minimal::WSET_BASE_MIB << 20..(minimal::WSET_BASE_MIB + 64) << 20).contains(&address), "{bad}");
            assert_eq!(address % 4096, 0);
            assert_ne!(bad["expected_generation"], bad["found_generation"], "{bad}");
        }
    }
}

/// Boots the guest ELF under TCG with `append` and returns its first line.
fn first_line(append: &str) -> String {
    let build = qemu::system().expect("qemu-system-x86_64");
    let elf = minimal::elf().expect("the minimal guest is built in (cargo xtask build)");
    let console =
        std::env::temp_dir().join(format!("migtrace-minimal-{}-{}.console", std::process::id(), append.len()));
    let _ = std::fs::remove_file(&console);
    let mut child = Command::new(&build.binary)
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-accel", "tcg", "-m", "64"])
        .arg("-bios")
        .arg(build.firmware("qboot.rom").expect("qboot"))
        .arg("-kernel")
        .arg(&elf)
        .args(["-append", append])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .spawn()
        .expect("start QEMU");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let line = loop {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        if let Some((line, _)) = text.split_once('\n') {
            break line.replace(minimal::HEARTBEAT as char, "");
        }
        assert!(std::time::Instant::now() < deadline, "no line from the guest: {text:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    // SAFETY: ending the QEMU this test started, by its pid.
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&console);
    line
}

#[test]
#[ignore = "needs QEMU: boots the minimal guest under TCG (run `cargo xtask test`)"]
fn the_guest_reads_its_command_line_and_reports_what_it_cannot_run() {
    let start: GuestStart =
        minimal::parse_line(&first_line("wset=8M period_us=5000 rate=1234 fill=50 hb_us=0 tsc_khz=2000000"), "start")
            .expect("start line");
    assert_eq!((start.wset_pages, start.period_us, start.rate, start.bpc), (2048, 5000, 1234, 0));
    assert_eq!((start.fill, start.fill_bytes, start.heartbeat_us), (50, 2048, 0));
    assert_eq!((start.tsc_khz, start.tsc_from.as_str()), (2_000_000, "cmdline"));
    for (append, error) in [
        ("wset=8M bpc=1 rate=2", "give bpc or rate, not both"),
        ("wset=8M rate=10 fill=101", "fill is a percentage"),
        ("colour=blue", "unknown parameter"),
        ("wset=8M rate=ten", "not a whole number"),
        ("rate=100", "needs a working set"),
        ("wset=100M rate=100", "does not fit in guest RAM"),
    ] {
        let line = first_line(append);
        let message = minimal::error_message(&line).unwrap_or_else(|| panic!("{append}: {line}"));
        assert!(message.contains(error), "{append}: {message}");
    }
}
