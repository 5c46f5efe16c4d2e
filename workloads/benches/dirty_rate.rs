//! Dirty-pages generator: achieved versus target rate, and the maximum rate.
//!
//! `cargo bench -p workloads --bench dirty_rate` (release build). Environment:
//! `DIRTY_BENCH_SECONDS` per level (default 3), `DIRTY_BENCH_WSET` (default 256M).
//! Prints a Markdown table; the README's table comes from here.

use std::{
    sync::atomic::AtomicBool,
    time::{Duration, Instant},
};

use workloads::{
    dirty::DirtyGen,
    memory::LockedRegion,
    spec::{DirtyPattern, parse_size},
};

const TARGETS: &[f64] = &[1_000.0, 2_000.0, 5_000.0, 10_000.0, 20_000.0, 50_000.0, 100_000.0, 150_000.0, 200_000.0];

fn main() {
    let seconds: f64 = std::env::var("DIRTY_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let wset = std::env::var("DIRTY_BENCH_WSET").unwrap_or_else(|_| "256M".into());
    let wset = match parse_size("wset", &wset) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("DIRTY_BENCH_WSET: {e}");
            std::process::exit(2);
        }
    };
    let region = |seed| match LockedRegion::new(wset, seed) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let stop = AtomicBool::new(false);
    println!("dirty-pages generator, wset {} MiB, fill 100 %, 10 ms period, {seconds} s per level", wset >> 20);
    println!();
    println!("| target pages/s | achieved pages/s | deviation |");
    println!("| ---: | ---: | ---: |");
    for &target in TARGETS {
        let pattern = DirtyPattern { period: Duration::from_millis(10), rate: target, fill: 100.0 };
        let mut generator = DirtyGen::new(region(1), pattern, 1);
        let mut last = None;
        generator.run(&stop, Some(Duration::from_secs_f64(seconds)), Duration::from_secs(3600), None, |r| {
            last = Some(r.clone())
        });
        let Some(r) = last else { continue };
        println!("| {target:.0} | {:.0} | {:+.2} % |", r.rate, (r.rate / target - 1.0) * 100.0);
    }
    // Maximum: modify pages back to back, no pacing.
    let pattern = DirtyPattern { period: Duration::from_millis(10), rate: 1.0, fill: 100.0 };
    let mut generator = DirtyGen::new(region(2), pattern, 2);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs_f64(seconds) {
        generator.modify(1024);
    }
    let max = generator.pages as f64 / start.elapsed().as_secs_f64();
    println!();
    println!("maximum achievable (unpaced, fill 100 %): {max:.0} pages/s ({:.1} GB/s written)", max * 4096.0 / 1e9);
}
