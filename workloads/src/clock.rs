//! Absolute sleeps, so pacing does not drift with the time spent working.

use std::time::Instant;

/// Sleeps until `deadline` (no-op if it has passed).
pub fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}
