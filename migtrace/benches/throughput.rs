//! Lab throughput: back-to-back measured migrations of one 256 MiB guest with every
//! measure on (probes, ping, probe sender, memory check), as `migtrace run` does them.
//! Reports migrations per hour and where each migration's wall time went, stage by
//! stage (the session's own `procedure_ms`, plus preparing the next destination and
//! writing the record).
//!
//! Root, after `cargo xtask build`: `cargo bench -p migtrace --bench throughput`.
//! `THROUGHPUT_MIGRATIONS` (default 20), `THROUGHPUT_WORKLOAD` (default
//! `wset=32M,rate=2000`).

use std::{collections::BTreeMap, time::Instant};

use migtrace::{
    hypervisor::{HostPair, MigrationParams, Status},
    lab::{Lab, LabConfig},
    measure::{
        record::RecordWriter,
        session::{MeasureOptions, Session},
    },
};
use workloads::spec::Spec;

fn main() {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
    let n: u32 = env("THROUGHPUT_MIGRATIONS", "20").parse().unwrap_or(20);
    let workload = env("THROUGHPUT_WORKLOAD", "wset=32M,rate=2000");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let config =
            LabConfig { workload: Spec::parse(&workload).expect("THROUGHPUT_WORKLOAD"), ..LabConfig::default() };
        let booted = Instant::now();
        let mut lab = match Lab::up(config).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("lab: {e}");
                std::process::exit(1);
            }
        };
        let boot_s = booted.elapsed().as_secs_f64();
        let network = lab.network();
        let mut session = Session::start(network, MeasureOptions::default()).expect("probes");
        let out = std::env::temp_dir().join(format!("migtrace-throughput-{}", std::process::id()));
        let mut writer = RecordWriter::open(&out).expect("records");
        let params = MigrationParams { timeout_s: 120.0, ..MigrationParams::default() };
        let mut stages: BTreeMap<String, f64> = BTreeMap::new();
        let mut migration_ms = Vec::new();
        let started = Instant::now();
        for rep in 0..n {
            let record = session.migrate(&mut lab, &params, rep, &workload).await.expect("measured migration");
            assert_eq!(record.outcome.status, Status::Completed, "{:?}", record.outcome.error);
            for (k, v) in &record.procedure_ms {
                *stages.entry(k.clone()).or_default() += v;
            }
            migration_ms.extend(record.migration_time_ms.command);
            let t = Instant::now();
            writer.append(&record).expect("write");
            *stages.entry("write-record".into()).or_default() += t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            lab.prepare_next().await.expect("next destination");
            *stages.entry("prepare-next".into()).or_default() += t.elapsed().as_secs_f64() * 1e3;
        }
        let wall = started.elapsed().as_secs_f64();
        session.stop().await.expect("stop");
        lab.down().await;
        let _ = std::fs::remove_dir_all(&out);
        let per = wall / n as f64;
        println!("{n} migrations of a 256 MiB guest ({workload}), every measure on; lab boot {boot_s:.1} s");
        println!();
        println!("| | per migration |");
        println!("| --- | ---: |");
        println!("| wall time | {:.2} s |", per);
        println!("| migrations per hour | {:.0} |", 3600.0 / per);
        println!(
            "| migration itself (command, mean) | {:.0} ms |",
            migration_ms.iter().sum::<f64>() / migration_ms.len().max(1) as f64
        );
        for (k, v) in &stages {
            println!("| stage {k} | {:.0} ms |", v / n as f64);
        }
    });
}
