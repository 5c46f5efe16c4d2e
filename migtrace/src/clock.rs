//! Clocks. Every stamp migtrace takes is CLOCK_MONOTONIC nanoseconds, the clock of
//! `bpf_ktime_get_ns()`; wall-clock time is derived once, for display and records.

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
