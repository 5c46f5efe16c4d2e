//! What dirty rate the lab guest can sustain: boots the lab guest with the dirty-pages
//! generator at each target rate and reads the rate the guest's agent itself reports on
//! its console (pages written per second over each 1 s report), without migrating.
//! Under TCG every guest store goes through QEMU's softmmu, so the guest falls short of
//! high targets long before the host would.
//!
//! Root, after `cargo xtask build`: `cargo bench -p migtrace --bench guest_dirty_rate`.
//! `GUEST_RATES` (comma-separated pages/s), `GUEST_WSET` (default 64M), `GUEST_QEMU`
//! (default `system`), `GUEST_SECONDS` (default 6).

use std::time::Duration;

use migtrace::lab::{Lab, LabConfig};
use workloads::spec::Spec;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn main() {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
    let rates: Vec<f64> = env("GUEST_RATES", "1000,2000,5000,10000,20000,50000,100000,200000,1000000")
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let wset = env("GUEST_WSET", "64M");
    let qemu = env("GUEST_QEMU", "system");
    let seconds: u64 = env("GUEST_SECONDS", "6").parse().unwrap_or(6);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async move {
        println!(
            "lab guest (256 MiB, 1 vCPU), wset {wset}, QEMU {qemu}; median of the agent's 1 s reports over {seconds} s"
        );
        println!();
        println!("| target pages/s | achieved pages/s | achieved ÷ target | schedule resets |");
        println!("| ---: | ---: | ---: | ---: |");
        for rate in rates {
            let config = LabConfig {
                workload: Spec::parse(&format!("wset={wset},rate={rate}")).expect("workload"),
                qemu: Some(qemu.clone()),
                ..LabConfig::default()
            };
            let lab = match Lab::up(config).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("lab: {e}");
                    std::process::exit(1);
                }
            };
            tokio::time::sleep(Duration::from_secs(seconds + 1)).await;
            let console = lab.source.as_ref().map(|q| std::fs::read_to_string(&q.console).unwrap_or_default());
            lab.down().await;
            let reports: Vec<serde_json::Value> = console
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.strip_prefix("migtrace-agent: "))
                .filter_map(|j| serde_json::from_str(j).ok())
                .filter(|v: &serde_json::Value| v["gen"] == "dirty")
                .collect();
            // The first report covers start-up (filling the working set under TCG).
            let rates: Vec<f64> = reports.iter().skip(1).filter_map(|r| r["interval_rate"].as_f64()).collect();
            let achieved = median(rates);
            let resyncs = reports.last().and_then(|r| r["resyncs"].as_u64()).unwrap_or(0);
            println!("| {rate:.0} | {achieved:.0} | {:.2} | {resyncs} |", achieved / rate);
        }
    });
}
