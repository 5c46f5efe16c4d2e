//! Soak: many consecutive measured migrations of one lab guest (ping-pong, dirty
//! workload, every measure on), as `migtrace run` does them. Checks that nothing is lost
//! or left behind and that migtrace's own memory and open file descriptors stay flat,
//! and prints the figures.
//!
//! Root, after `cargo xtask build`: `cargo bench -p migtrace --bench soak`.
//! `SOAK_MIGRATIONS` (default 200), `SOAK_WORKLOAD` (default `wset=32M,rate=2000`).

use std::{fs, path::Path, time::Instant};

use migtrace::{
    hypervisor::{HostPair, MigrationParams, Status},
    lab::{Lab, LabConfig, netns, registry},
    measure::{
        record::{self, RecordWriter},
        session::{MeasureOptions, Session},
    },
};
use workloads::spec::Spec;

/// migtrace's resident memory (KiB) and open file descriptors.
fn footprint() -> (u64, usize) {
    let rss = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok()))
        .unwrap_or(0);
    let fds = fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    (rss, fds)
}

/// Live processes whose parent is this one (QEMU, ping, …).
fn children() -> Vec<String> {
    let me = std::process::id().to_string();
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| {
            let stat = fs::read_to_string(e.path().join("stat")).ok()?;
            // pid (comm) state ppid …: comm may hold spaces, so split after its ')'.
            let (head, rest) = stat.rsplit_once(") ")?;
            let mut fields = rest.split_whitespace();
            let state = fields.next()?;
            let ppid = fields.next()?;
            (ppid == me && state != "Z").then(|| head.replacen(" (", " ", 1))
        })
        .collect()
}

fn main() {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
    let n: u32 = env("SOAK_MIGRATIONS", "200").parse().unwrap_or(200);
    let workload = env("SOAK_WORKLOAD", "wset=32M,rate=2000");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let out = std::env::temp_dir().join(format!("migtrace-soak-{}", std::process::id()));
    let result = runtime.block_on(soak(n, &workload, &out));
    let _ = fs::remove_dir_all(&out);
    if let Err(e) = result {
        eprintln!("soak: {e}");
        std::process::exit(1);
    }
}

async fn soak(n: u32, workload: &str, out: &Path) -> Result<(), String> {
    let config = LabConfig { workload: Spec::parse(workload).map_err(|e| e.to_string())?, ..LabConfig::default() };
    let mut lab = Lab::up(config).await.map_err(|e| e.to_string())?;
    let id = lab.id.clone();
    let network = lab.network();
    let mut session = Session::start(network, MeasureOptions::default()).map_err(|e| e.to_string())?;
    let mut writer = RecordWriter::open(out).map_err(|e| e.to_string())?;
    let params = MigrationParams { timeout_s: 120.0, ..MigrationParams::default() };
    let started = Instant::now();
    // After the first few migrations: allocators and caches have reached their size.
    let warm = 10.min(n.saturating_sub(1));
    let mut samples = vec![(0, footprint())];
    let (mut completed, mut lost, mut unhealthy) = (0u32, 0u64, 0u32);
    for rep in 0..n {
        let record = session.migrate(&mut lab, &params, rep, workload).await.map_err(|e| format!("{rep}: {e}"))?;
        completed += u32::from(record.outcome.status == Status::Completed);
        lost += record.trace_health.as_ref().map_or(0, |h| h.lost_records);
        unhealthy += u32::from(record.guest.as_ref().is_some_and(|g| !g.healthy()));
        writer.append(&record).map_err(|e| e.to_string())?;
        if record.outcome.status != Status::Completed {
            return Err(format!("migration {rep}: {:?} {:?}", record.outcome.status, record.outcome.error));
        }
        if rep + 1 < n {
            lab.prepare_next().await.map_err(|e| e.to_string())?;
        }
        if rep + 1 == warm || rep + 1 == n || (rep + 1) % 50 == 0 {
            samples.push((rep + 1, footprint()));
        }
        if (rep + 1) % 10 == 0 {
            eprintln!("soak: {}/{n} migrations, {:.0} s", rep + 1, started.elapsed().as_secs_f64());
        }
    }
    let wall = started.elapsed().as_secs_f64();
    session.stop().await.map_err(|e| e.to_string())?;
    lab.down().await;
    let written = record::read(out).map_err(|e| e.to_string())?.len();
    let left = children();
    let lab_left = registry::list().into_iter().any(|s| s.id == id) || !netns::namespaces_of(&id).is_empty();

    println!("{n} consecutive migrations of a 256 MiB guest ({workload}), every measure on, {:.0} s", wall);
    println!();
    println!("| | |");
    println!("| --- | ---: |");
    println!("| completed | {completed} / {n} |");
    println!("| records written and read back | {written} |");
    println!("| guests unhealthy after a migration | {unhealthy} |");
    println!("| trace records lost (ring buffer) | {lost} |");
    println!("| processes left (children of migtrace) | {} |", left.len());
    println!("| lab left (registry, namespace) | {} |", if lab_left { "yes" } else { "no" });
    println!();
    println!("| after migration | RSS (KiB) | open fds |");
    println!("| ---: | ---: | ---: |");
    for (at, (rss, fds)) in &samples {
        println!("| {at} | {rss} | {fds} |");
    }
    let (_, (rss_warm, fds_warm)) = samples.iter().find(|(at, _)| *at == warm).copied().unwrap_or((0, (0, 0)));
    let (_, (rss_end, fds_end)) = samples.last().copied().unwrap_or((0, (0, 0)));
    println!();
    println!(
        "from migration {warm} to {n}: RSS {:+} KiB, fds {:+}",
        rss_end as i64 - rss_warm as i64,
        fds_end as i64 - fds_warm as i64
    );
    let mut problems = Vec::new();
    if written != n as usize {
        problems.push(format!("{written} records read back of {n}"));
    }
    if lost > 0 {
        problems.push(format!("{lost} trace records lost"));
    }
    if !left.is_empty() || lab_left {
        problems.push(format!("left behind: {left:?}, lab {lab_left}"));
    }
    if fds_end > fds_warm {
        problems.push(format!("open fds grew from {fds_warm} to {fds_end}"));
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}
