//! Root, QEMU (TCG here), eBPF: the lab on every QEMU build of the host, the system's
//! (7.2 on Debian 12) and the one `cargo xtask setup` caches (10.0 from
//! bookworm-backports), at the paper's dirty rates. Each record names its machine, the
//! guest's memory check finds no lost page, and the trace is complete on both versions.
//! Run with `cargo xtask test`.

use std::time::Duration;

use migtrace::{
    hypervisor::{HostPair, MigrationParams, Status},
    lab::{Lab, LabConfig, netns},
    measure::{
        record::MigrationRecord,
        session::{MeasureOptions, Session},
    },
    probe::qemu::migration_status_name,
};
use migtrace_common::host::qemu::{self, QemuBuild};
use workloads::spec::Spec;

const WORKLOAD: &str = "wset=64M,rate=20000";

async fn migrate_twice(build: &QemuBuild) -> (Lab, Vec<MigrationRecord>) {
    let config = LabConfig {
        workload: Spec::parse(WORKLOAD).expect("spec"),
        qemu: Some(build.binary.display().to_string()),
        ..LabConfig::default()
    };
    let mut lab = Lab::up(config).await.expect("lab up");
    let network = lab.network();
    let mut session =
        Session::start(network, MeasureOptions { keep_trace: true, ..MeasureOptions::default() }).expect("probes");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let params = MigrationParams { timeout_s: 120.0, ..MigrationParams::default() };
    let mut records = Vec::new();
    for rep in 0..2 {
        records.push(session.migrate(&mut lab, &params, rep, WORKLOAD).await.expect("measured migration"));
        if rep == 0 {
            lab.prepare_next().await.expect("next destination");
        }
    }
    session.stop().await.expect("stop probes");
    (lab, records)
}

fn check(build: &QemuBuild, records: &[MigrationRecord]) {
    for r in records {
        let what = format!("QEMU {} migration {}", build.version, r.repetition);
        assert_eq!(r.outcome.status, Status::Completed, "{what}: {:?}", r.outcome.error);
        let m = r.machine.as_ref().expect("machine section");
        assert_eq!(m.version, build.version.to_string(), "{what}");
        assert_eq!(m.hypervisor, "qemu");
        let workaround = m.accelerator == "tcg" && build.has_tcg_dirty_bug();
        assert_eq!(m.ram_bytes, (256 << 20) + if workaround { 8 << 10 } else { 0 }, "{what}: RAM {}", m.ram_bytes);
        assert_eq!(m.workarounds.len(), usize::from(workaround), "{what}: {:?}", m.workarounds);
        let guest = r.guest.as_ref().expect("guest section");
        assert!(guest.healthy(), "{what}: guest {guest:?}");
        let check = guest.memory_check.as_ref().expect("memory check");
        assert_eq!((check.pages_checked, check.corrupted_pages()), (16384, 0), "{what}: {check:?}");
        assert!(check.writes > 0, "{what}: the generator ran");

        // Tracing is complete on this version: every probe point resolved, no QMP stand-ins.
        let health = r.trace_health.as_ref().expect("trace health");
        assert!(health.missing_source_symbols.is_empty(), "{what}: {:?}", health.missing_source_symbols);
        let t = r.timeline.as_ref().expect("timeline");
        assert!(t.fallbacks.is_empty(), "{what}: fallbacks {:?}", t.fallbacks);
        let syncs = r.outcome.stats.ram.as_ref().and_then(|x| x.dirty_sync_count).expect("dirty-sync-count");
        assert_eq!(t.rounds.len() as u64, syncs, "{what}: one round per dirty-log sync");
        assert!(t.rounds.iter().any(|x| x.remaining_bytes.is_some()), "{what}: pending bytes traced");
        // The state numbers migrate_set_state passed decode to what QMP announced.
        let trace = r.trace.as_ref().expect("raw trace");
        let version = (build.version.major, build.version.minor);
        let traced: Vec<&str> = trace
            .phases
            .iter()
            .filter(|p| p.tgid == r.outcome.source_pid && p.point == "MigrateSetState" && !p.ret)
            .map(|p| migration_status_name(p.args[2], version))
            .collect();
        let announced: Vec<&str> = r.outcome.source_events.iter().filter_map(|e| e.migration_status()).collect();
        assert_eq!(traced, announced, "{what}: state numbering");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and QEMU: lab migrations on every QEMU build (run `cargo xtask test`)"]
async fn every_qemu_build_migrates_the_papers_rates_with_intact_memory_and_a_complete_trace() {
    let mut builds: Vec<QemuBuild> = qemu::system().into_iter().collect();
    let cached = qemu::cached();
    let bookworm = std::fs::read_to_string("/etc/os-release").is_ok_and(|t| t.contains("VERSION_CODENAME=bookworm"));
    assert!(
        !bookworm || cached.iter().any(|b| b.version.major >= 10),
        "no QEMU 10 in {}: `cargo xtask setup` fetches it on Debian 12",
        qemu::cache_root().display()
    );
    builds.extend(cached);
    assert!(!builds.is_empty(), "no QEMU at all");
    for build in &builds {
        eprintln!("QEMU {}", build.label());
        let (lab, records) = migrate_twice(build).await;
        let id = lab.id.clone();
        lab.down().await;
        assert!(netns::namespaces_of(&id).is_empty(), "namespaces of lab {id} left: {:?}", netns::namespaces_of(&id));
        check(build, &records);
    }
}
