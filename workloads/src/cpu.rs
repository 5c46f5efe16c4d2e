//! The CPU generator: holds utilisation at a target by a duty cycle per CPU, like the
//! paper's burnP6 under cpulimit. One thread per loaded CPU, pinned to it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{clock::sleep_until, spec::CpuLoad};

/// Duty-cycle period: short enough to look steady to any sampler, long enough that the
/// sleep/wake overhead stays small.
pub const DUTY_PERIOD: Duration = Duration::from_millis(100);

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CpuReport {
    pub r#gen: &'static str,
    pub elapsed_s: f64,
    pub cpus: usize,
    pub target_load: f64,
    /// CPU time of the burner threads over wall time × threads, percent.
    pub achieved_load: f64,
}

pub fn online_cpus() -> usize {
    thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid timespec; the thread CPU clock always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        // Best effort: a failure (e.g. restricted cpuset) leaves the thread unpinned.
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Running burner threads.
pub struct CpuGen {
    load: CpuLoad,
    threads: Vec<thread::JoinHandle<()>>,
    cpu_ns: Arc<Vec<AtomicU64>>,
    start: Instant,
}

impl CpuGen {
    pub fn start(load: CpuLoad, stop: Arc<AtomicBool>) -> Self {
        let n = load.cpus.unwrap_or_else(online_cpus).max(1);
        let cpu_ns: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        let busy_ns = DUTY_PERIOD.mul_f64(load.percent / 100.0).as_nanos() as u64;
        let online = online_cpus();
        let threads = (0..n)
            .map(|i| {
                let (stop, cpu_ns) = (stop.clone(), cpu_ns.clone());
                thread::spawn(move || {
                    pin_to(i % online);
                    let t0 = thread_cpu_ns();
                    let mut cycle = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        // The busy share is CPU time, not wall time: on a contended CPU the
                        // thread keeps spinning until it has really burnt its share (or the
                        // period is over), so the load it adds does not shrink with contention.
                        let cycle_cpu = thread_cpu_ns();
                        let period_end = cycle + DUTY_PERIOD;
                        while thread_cpu_ns() - cycle_cpu < busy_ns && Instant::now() < period_end {
                            for _ in 0..64 {
                                std::hint::spin_loop();
                            }
                        }
                        cpu_ns[i].store(thread_cpu_ns() - t0, Ordering::Relaxed);
                        cycle += DUTY_PERIOD;
                        // After a long stall (guest paused), restart the cycle grid.
                        let now = Instant::now();
                        if now > cycle + DUTY_PERIOD {
                            cycle = now;
                        }
                        sleep_until(cycle);
                    }
                })
            })
            .collect();
        Self { load, threads, cpu_ns, start: Instant::now() }
    }

    pub fn report(&self) -> CpuReport {
        let elapsed = self.start.elapsed().as_secs_f64();
        let cpu: u64 = self.cpu_ns.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        let n = self.cpu_ns.len();
        CpuReport {
            r#gen: "cpu",
            elapsed_s: elapsed,
            cpus: n,
            target_load: self.load.percent,
            achieved_load: if elapsed > 0.0 { cpu as f64 / 1e9 / (elapsed * n as f64) * 100.0 } else { 0.0 },
        }
    }

    /// Waits for the threads (after `stop` was set) and returns the final report.
    pub fn join(self) -> CpuReport {
        let report = self.report();
        for t in self.threads {
            let _ = t.join();
        }
        report
    }
}
