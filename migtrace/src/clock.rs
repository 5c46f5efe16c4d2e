//! Clocks. Every stamp migtrace takes is CLOCK_MONOTONIC nanoseconds, the clock of
//! `bpf_ktime_get_ns()`; wall-clock time is derived once, for display and records.
//! Stamps from other hosts (their tracing agents) are brought onto this host's clock
//! with an offset estimated NTP-style over the agent's own channel.

use serde::{Deserialize, Serialize};

/// CLOCK_MONOTONIC now, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC)
}

fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Maps monotonic stamps to wall-clock time, from one paired reading.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    /// CLOCK_REALTIME − CLOCK_MONOTONIC at the reading, in nanoseconds.
    offset_ns: i128,
}

impl WallClock {
    pub fn now() -> Self {
        // Read realtime between two monotonic reads and take the midpoint.
        let m0 = monotonic_ns();
        let r = read(libc::CLOCK_REALTIME);
        let m1 = monotonic_ns();
        let mid = m0 / 2 + m1 / 2;
        Self { offset_ns: r as i128 - mid as i128 }
    }

    /// The clock of a recorded (monotonic ns, Unix µs) pair, e.g. a migration's start.
    pub fn from_pair(monotonic_ns: u64, unix_us: i64) -> Self {
        Self { offset_ns: unix_us as i128 * 1000 - monotonic_ns as i128 }
    }

    /// Unix time in microseconds, the resolution of QMP event stamps.
    pub fn to_unix_us(&self, monotonic_ns: u64) -> i64 {
        ((monotonic_ns as i128 + self.offset_ns) / 1000) as i64
    }

    /// Inverse of [`Self::to_unix_us`]: monotonic nanoseconds of a Unix time in µs.
    pub fn from_unix_us(&self, unix_us: i64) -> u64 {
        (unix_us as i128 * 1000 - self.offset_ns).max(0) as u64
    }
}

/// One clock exchange with another host: our send stamp, its stamp, our receive stamp
/// (CLOCK_MONOTONIC ns on each side).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockSample {
    pub sent_ns: u64,
    pub remote_ns: u64,
    pub received_ns: u64,
}

impl ClockSample {
    pub fn round_trip_ns(&self) -> u64 {
        self.received_ns.saturating_sub(self.sent_ns)
    }

    /// The offsets (remote − ours) this exchange allows: the remote stamp was taken
    /// somewhere between our send and our receive.
    fn bounds(&self) -> (i128, i128) {
        (self.remote_ns as i128 - self.received_ns as i128, self.remote_ns as i128 - self.sent_ns as i128)
    }
}

/// Another host's clock relative to ours at one moment: remote = ours + `offset_ns`,
/// within ± `uncertainty_ns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetEstimate {
    pub offset_ns: i64,
    pub uncertainty_ns: u64,
    /// Our clock at the middle of the exchanges.
    pub at_ns: u64,
    pub samples: usize,
}

/// Estimates the offset NTP-style from many exchanges. Every exchange bounds the
/// offset to [remote − received, remote − sent]; the fastest exchanges bound it best,
/// so the estimate is the intersection of the bounds of the quarter with the shortest
/// round trips (its midpoint, half its width as the uncertainty). If those bounds do not
/// intersect (a clock stepped), the single fastest exchange decides.
pub fn estimate_offset(samples: &[ClockSample]) -> Option<OffsetEstimate> {
    let mut sorted: Vec<&ClockSample> = samples.iter().filter(|s| s.received_ns >= s.sent_ns).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by_key(|s| s.round_trip_ns());
    let keep = &sorted[..sorted.len().div_ceil(4)];
    let lo = keep.iter().map(|s| s.bounds().0).max()?;
    let hi = keep.iter().map(|s| s.bounds().1).min()?;
    let (lo, hi) = if lo <= hi { (lo, hi) } else { keep[0].bounds() };
    let at = keep.iter().map(|s| (s.sent_ns as u128 + s.received_ns as u128) / 2).sum::<u128>() / keep.len() as u128;
    Some(OffsetEstimate {
        offset_ns: ((lo + hi) / 2) as i64,
        uncertainty_ns: ((hi - lo) as u64).div_ceil(2),
        at_ns: at as u64,
        samples: samples.len(),
    })
}

/// Another host's clock over a migration, from estimates before and after it: what the
/// record keeps per host, and how its stamps are brought onto ours.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostClock {
    /// Remote − ours, at `at_ns` (before the migration).
    pub offset_ns: i64,
    /// Bound on the error of a converted stamp (the larger of the two estimates', plus
    /// what drift between them leaves unexplained).
    pub uncertainty_ns: u64,
    /// How fast the offset changed between the two estimates, parts per million.
    pub drift_ppm: f64,
    /// Our clock at the first estimate.
    pub at_ns: u64,
}

impl HostClock {
    /// The same clock as ours (a tracer in this process).
    pub fn local() -> Self {
        Self::default()
    }

    /// From the estimates before and after (the latter may be missing).
    pub fn from_estimates(before: &OffsetEstimate, after: Option<&OffsetEstimate>) -> Self {
        let Some(after) = after.filter(|a| a.at_ns > before.at_ns) else {
            return Self {
                offset_ns: before.offset_ns,
                uncertainty_ns: before.uncertainty_ns,
                drift_ppm: 0.0,
                at_ns: before.at_ns,
            };
        };
        let span = (after.at_ns - before.at_ns) as f64;
        let drift_ppm = (after.offset_ns - before.offset_ns) as f64 / span * 1e6;
        Self {
            offset_ns: before.offset_ns,
            uncertainty_ns: before.uncertainty_ns.max(after.uncertainty_ns),
            drift_ppm,
            at_ns: before.at_ns,
        }
    }

    /// A remote stamp on our clock.
    pub fn to_local(&self, remote_ns: u64) -> u64 {
        // remote = local + offset + drift·(local − at)  ⇒  solve for local.
        let d = self.drift_ppm / 1e6;
        let local = (remote_ns as f64 - self.offset_ns as f64 + d * self.at_ns as f64) / (1.0 + d);
        local.round().max(0.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::*;

    #[test]
    fn wall_clock_round_trips_and_tracks_system_time() {
        let clock = WallClock::now();
        let mono = monotonic_ns();
        let us = clock.to_unix_us(mono);
        assert!(clock.from_unix_us(us).abs_diff(mono) < 1000);
        let sys = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_micros() as i64;
        assert!((sys - us).abs() < 50_000, "wall clock off by {} us", sys - us);
    }

    fn exchange(local_send: u64, one_way: u64, back: u64, offset: i64) -> ClockSample {
        let remote_local_time = local_send + one_way;
        ClockSample {
            sent_ns: local_send,
            remote_ns: (remote_local_time as i64 + offset) as u64,
            received_ns: remote_local_time + back,
        }
    }

    #[test]
    fn the_fastest_exchanges_bound_a_known_offset() {
        // A remote clock 5 ms ahead; round trips from 40 µs to 10 ms, asymmetric.
        let offset = 5_000_000;
        let samples: Vec<ClockSample> = (0..40u64)
            .map(|i| {
                exchange(
                    1_000_000_000 + i * 1_000_000,
                    20_000 + (i % 7) * 700_000,
                    20_000 + (i % 5) * 1_000_000,
                    offset,
                )
            })
            .collect();
        let e = estimate_offset(&samples).expect("estimate");
        assert!((e.offset_ns - offset).unsigned_abs() <= e.uncertainty_ns, "{e:?}");
        // The kept exchanges' round trips are 40 µs: the uncertainty is at most half that.
        assert!(e.uncertainty_ns <= 20_000, "{e:?}");
        assert_eq!(e.samples, 40);
        assert_eq!(estimate_offset(&[]), None);
    }

    #[test]
    fn drift_between_estimates_is_corrected_in_conversions() {
        // The remote clock runs 100 ppm fast: offset 1 ms at t = 1 s, 1.1 ms at t = 2 s.
        let before = OffsetEstimate { offset_ns: 1_000_000, uncertainty_ns: 10_000, at_ns: 1_000_000_000, samples: 9 };
        let after = OffsetEstimate { offset_ns: 1_100_000, uncertainty_ns: 12_000, at_ns: 2_000_000_000, samples: 9 };
        let c = HostClock::from_estimates(&before, Some(&after));
        assert!((c.drift_ppm - 100.0).abs() < 1e-9, "{c:?}");
        assert_eq!(c.uncertainty_ns, 12_000);
        // Half way, the remote clock is 1.05 ms ahead.
        let local = 1_500_000_000u64;
        assert_eq!(c.to_local(local + 1_050_000), local);
        assert_eq!(HostClock::local().to_local(42), 42);
    }

    #[test]
    fn a_recorded_pair_converts_qmp_stamps_exactly() {
        // A migration issued at monotonic 5 s, Unix 1_700_000_000.000123 s.
        let c = WallClock::from_pair(5_000_000_000, 1_700_000_000_000_123);
        assert_eq!(c.to_unix_us(5_000_000_000), 1_700_000_000_000_123);
        // A QMP event 2.5 ms later is 2.5 ms later on the monotonic clock.
        assert_eq!(c.from_unix_us(1_700_000_000_002_623), 5_002_500_000);
        // Sub-µs parts of monotonic stamps fall into their µs, never the next one.
        assert_eq!(c.to_unix_us(5_000_000_999), 1_700_000_000_000_123);
        // Before the monotonic clock's start: 0, not a wrapped-around stamp.
        assert_eq!(c.from_unix_us(1_000), 0);
    }
}
