//! Probe overhead: paired lab migrations of the same guest with and without eBPF probes,
//! alternating (and swapping the order every pair, so drift cancels). Reports the
//! median per-pair ratio of migration time and of downtime (traced ÷ untraced), from
//! QEMU's own figures, which exist in both arms.
//!
//! Root, after `cargo xtask build`: `cargo bench -p migtrace --bench overhead`.
//! `OVERHEAD_PAIRS` (default 10), `OVERHEAD_WORKLOAD` (default `wset=32M,rate=5000`).

use std::time::Duration;

use migtrace::{
    hypervisor::{HostPair, MigrationParams, Status},
    lab::{Lab, LabConfig},
    measure::session::{MeasureOptions, Session},
};
use workloads::spec::Spec;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    command_ms: f64,
    total_ms: f64,
    downtime_ms: f64,
}

async fn one(lab: &mut Lab, traced: bool, rep: u32) -> Sample {
    let options = MeasureOptions {
        trace: traced,
        ping_interval: None,
        probe_interval: None,
        settle: Duration::from_millis(300),
        ..MeasureOptions::default()
    };
    let network = lab.network();
    let mut session = Session::start(network, options).expect("session");
    let params = MigrationParams { timeout_s: 120.0, ..MigrationParams::default() };
    let r = session.migrate(lab, &params, rep, "overhead").await.expect("migration");
    session.stop().await.expect("stop");
    assert_eq!(r.outcome.status, Status::Completed, "{:?}", r.outcome.error);
    lab.prepare_next().await.expect("next destination");
    Sample {
        command_ms: r.migration_time_ms.command.unwrap_or(f64::NAN),
        total_ms: r.migration_time_ms.reported.unwrap_or(f64::NAN),
        downtime_ms: r.downtime_ms.reported.unwrap_or(f64::NAN),
    }
}

fn main() {
    let pairs: u32 = std::env::var("OVERHEAD_PAIRS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let workload = std::env::var("OVERHEAD_WORKLOAD").unwrap_or_else(|_| "wset=32M,rate=5000".into());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let config = LabConfig { workload: Spec::parse(&workload).expect("OVERHEAD_WORKLOAD"), ..LabConfig::default() };
        let mut lab = match Lab::up(config).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("overhead bench: {e}");
                std::process::exit(1);
            }
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!("probe overhead, {pairs} pairs, workload {workload}, {}", lab.accel);
        println!();
        println!("| pair | traced total ms | untraced total ms | traced downtime ms | untraced downtime ms |");
        println!("| ---: | ---: | ---: | ---: | ---: |");
        let (mut cmd, mut total, mut down) = (Vec::new(), Vec::new(), Vec::new());
        for pair in 0..pairs {
            let (t, u) = if pair % 2 == 0 {
                let t = one(&mut lab, true, pair * 2).await;
                (t, one(&mut lab, false, pair * 2 + 1).await)
            } else {
                let u = one(&mut lab, false, pair * 2).await;
                (one(&mut lab, true, pair * 2 + 1).await, u)
            };
            println!("| {pair} | {:.0} | {:.0} | {:.0} | {:.0} |", t.total_ms, u.total_ms, t.downtime_ms, u.downtime_ms);
            cmd.push(t.command_ms / u.command_ms);
            total.push(t.total_ms / u.total_ms);
            down.push(t.downtime_ms / u.downtime_ms);
        }
        lab.down().await;
        println!();
        println!("median ratio traced/untraced: migration time (command) {:.3}, migration time (QEMU total-time) {:.3}, downtime (QEMU) {:.3}",
            median(cmd), median(total), median(down));
    });
}
