//! Soak: many consecutive measured migrations of one lab guest (ping-pong, dirty
//! workload, every measure on), as `migtrace run` does them. Checks that nothing is lost
//! or left behind and that migtrace's own memory and open file descriptors stay flat
//! (the trend of a sample after every migration, [`trend`]), and prints the figures.
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

#[path = "soak/trend.rs"]
mod trend;

use trend::Trend;

/// Growth per migration that counts as a leak, well above what the noise draws: open
/// fds move by about 15 with what is in flight, whose slope over 50 samples is a few
/// hundredths; one descriptor every 4 migrations is 50 in 200.
const FDS_PER_MIGRATION: f64 = 0.25;
/// RSS: 20 KiB a migration is 4 MiB in 200. The allocator grows to its high-water mark
/// over the first tens of migrations (+850 KiB from the 10th to the 50th of 200, flat
/// after), and a stall (a migration observed for minutes) raises it once, so RSS is
/// judged over the second half of the samples: a leak grows there too.
const RSS_KIB_PER_MIGRATION: f64 = 20.0;

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
        samples.push((rep + 1, footprint()));
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
    for (at, (rss, fds)) in samples.iter().filter(|(at, _)| *at == warm || *at == n || at % 10 == 0) {
        println!("| {at} | {rss} | {fds} |");
    }
    // The trend after the warm-up, one sample per migration.
    let after: Vec<&(u32, (u64, usize))> = samples.iter().filter(|(at, _)| *at >= warm.max(1)).collect();
    let rss = Trend::fit(
        &after[after.len() / 2..].iter().map(|(at, (rss, _))| (*at as f64, *rss as f64)).collect::<Vec<_>>(),
    );
    let fds = Trend::fit(&after.iter().map(|(at, (_, fds))| (*at as f64, *fds as f64)).collect::<Vec<_>>());
    let range = |f: fn(&(u64, usize)) -> f64| {
        let v: Vec<f64> = after.iter().map(|(_, s)| f(s)).collect();
        (v.iter().copied().fold(f64::INFINITY, f64::min), v.iter().copied().fold(f64::NEG_INFINITY, f64::max))
    };
    let show =
        |t: Option<Trend>| t.map_or_else(|| "too few samples".into(), |t| format!("{:+.3} ± {:.3}", t.slope, t.se));
    println!();
    println!(
        "from migration {warm} to {n} ({} samples): RSS {} KiB per migration over the second half (range \
         {:.0}–{:.0}), open fds {} per migration (range {:.0}–{:.0}); a leak is more than {RSS_KIB_PER_MIGRATION} KiB \
         or {FDS_PER_MIGRATION} fds per migration and 3 standard errors",
        after.len(),
        show(rss),
        range(|s| s.0 as f64).0,
        range(|s| s.0 as f64).1,
        show(fds),
        range(|s| s.1 as f64).0,
        range(|s| s.1 as f64).1,
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
    match fds {
        Some(t) if t.grows(FDS_PER_MIGRATION) => problems
            .push(format!("open fds grew by {:.2} ± {:.2} per migration over {} samples", t.slope, t.se, t.samples)),
        Some(_) => {}
        None => problems.push(format!("too few migrations after the warm-up ({warm}) to judge the fds' trend")),
    }
    if let Some(t) = rss.filter(|t| t.grows(RSS_KIB_PER_MIGRATION)) {
        problems.push(format!("RSS grew by {:.1} ± {:.1} KiB per migration over {} samples", t.slope, t.se, t.samples));
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}
