//! Collector throughput: how many ring-buffer records per second the collector drains
//! without loss. Trigger: `getppid()` in a tight loop under the self-test tracepoint
//! (one 40-byte record per call), filtered to this process.
//!
//! Root, after `cargo xtask build`: `cargo bench -p migtrace --bench collector`.
//! `COLLECTOR_BENCH_SECONDS` sets the run length (default 5), `COLLECTOR_BENCH_PRODUCERS`
//! the number of trigger threads (default 1).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use migtrace::probe::{Collector, Probes};
use migtrace_common::event::Role;
use tokio::sync::mpsc;

fn main() {
    let seconds: f64 = std::env::var("COLLECTOR_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let producers: usize = std::env::var("COLLECTOR_BENCH_PRODUCERS").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let mut probes = match Probes::load() {
            Ok(p) => p,
            Err(e) => {
                eprintln!("collector bench: {e}");
                std::process::exit(1);
            }
        };
        probes.add_target(std::process::id(), Role::Selftest).expect("target");
        probes.attach_selftest_syscall().expect("attach tracepoint");
        let (tx, mut rx) = mpsc::channel::<Vec<migtrace::probe::Event>>(1024);
        let collector = Collector::spawn(probes.take_events().expect("ring"), tx).expect("collector");
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let consumer = tokio::spawn(async move {
            while let Some(batch) = rx.recv().await {
                counter.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
        });
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let start = Instant::now();
        // Producers: threads calling getppid as fast as they can.
        let threads: Vec<_> = (0..producers)
            .map(|_| {
                let flag = flag.clone();
                std::thread::spawn(move || {
                    let mut calls = 0u64;
                    while !flag.load(Ordering::Relaxed) {
                        for _ in 0..1000 {
                            // SAFETY: getppid has no preconditions.
                            std::hint::black_box(unsafe { libc::getppid() });
                        }
                        calls += 1000;
                    }
                    calls
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let calls: u64 = threads.into_iter().map(|t| t.join().expect("producer")).sum();
        let produced_for = start.elapsed();
        let stats = collector.stop().await.expect("stop collector");
        let _ = consumer.await;
        let drained_for = start.elapsed();
        let lost = probes.loss().expect("loss").total();
        let got = received.load(Ordering::Relaxed);
        println!(
            "collector throughput, {seconds} s, {producers} producer thread(s), getppid tracepoint, 40-byte records"
        );
        println!("| triggers | records drained | lost | drained/s | trigger rate/s |");
        println!("| ---: | ---: | ---: | ---: | ---: |");
        println!(
            "| {calls} | {got} | {lost} | {:.0} | {:.0} |",
            stats.records as f64 / drained_for.as_secs_f64(),
            calls as f64 / produced_for.as_secs_f64()
        );
        if got + lost != calls {
            eprintln!(
                "note: {} triggers unaccounted (records from other threads of this process?)",
                calls as i64 - (got + lost) as i64
            );
        }
    });
}
