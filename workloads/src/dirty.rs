//! The dirty-pages generator: the paper's cyclic modification pattern.
//!
//! Every PERIOD the next BPC pages of the locked working set are modified, cycling
//! through the region; FILL percent of each page is written from pre-computed random
//! data. With a fractional BPC (a rate that is not a multiple of 1/PERIOD) cycle k writes
//! `⌊(k+1)·BPC⌋ − ⌊k·BPC⌋` pages, so the long-run rate is exact.
//!
//! Each write stamps the page's header with its next generation after checking that the
//! page still holds the previous one ([`crate::verify`]): the working set stays checkable
//! and a stale page is counted even when the next write would hide it.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use rand::{Rng as _, SeedableRng as _, rngs::SmallRng};
use serde::Serialize;

use crate::{
    clock::sleep_until,
    memory::LockedRegion,
    spec::{DirtyPattern, PAGE_SIZE},
    verify::{self, CheckDesk, HEADER_BYTES, MemoryCheck},
};

/// Random source bytes: large enough that consecutive pages get different data.
const RANDOM_BYTES: usize = 1 << 20;

pub struct DirtyGen {
    region: LockedRegion,
    pattern: DirtyPattern,
    random: Vec<u8>,
    fill_bytes: usize,
    next_page: usize,
    random_offset: usize,
    /// Pages modified so far.
    pub pages: u64,
    /// Cycles run so far.
    pub cycles: u64,
    /// Times the schedule was reset because the generator fell far behind (e.g. the
    /// guest was paused by a migration).
    pub resyncs: u64,
    /// Pages found stale just before being overwritten, over the whole run.
    pub stale_on_write: u64,
    /// `stale_on_write` and page writes at the last check, when it was, checks answered.
    stale_at_last_check: u64,
    writes_at_last_check: u64,
    last_check: Instant,
    checks: u64,
}

/// A JSON line reporting progress.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DirtyReport {
    pub r#gen: &'static str,
    pub elapsed_s: f64,
    pub pages: u64,
    pub cycles: u64,
    pub target_rate: f64,
    /// Pages per second since the start.
    pub rate: f64,
    /// Pages per second since the previous report.
    pub interval_rate: f64,
    pub fill_bytes: usize,
    pub resyncs: u64,
    /// Pages found stale just before being overwritten (lost writes), over the run.
    pub stale_on_write: u64,
}

impl DirtyGen {
    pub fn new(region: LockedRegion, pattern: DirtyPattern, seed: u64) -> Self {
        let mut random = vec![0u8; RANDOM_BYTES + PAGE_SIZE];
        SmallRng::seed_from_u64(seed ^ 0x5eed).fill_bytes(&mut random);
        let fill_bytes = ((pattern.fill / 100.0 * PAGE_SIZE as f64).round() as usize).clamp(1, PAGE_SIZE);
        Self {
            region,
            pattern,
            random,
            fill_bytes,
            next_page: 0,
            random_offset: 0,
            pages: 0,
            cycles: 0,
            resyncs: 0,
            stale_on_write: 0,
            stale_at_last_check: 0,
            writes_at_last_check: 0,
            last_check: Instant::now(),
            checks: 0,
        }
    }

    pub fn region(&self) -> &LockedRegion {
        &self.region
    }

    pub fn fill_bytes(&self) -> usize {
        self.fill_bytes
    }

    /// Modifies the next `pages` pages of the working set (wrapping around): checks the
    /// page still holds its last generation, then writes the next one and FILL % of
    /// random data (at least the 16-byte header).
    pub fn modify(&mut self, pages: usize) {
        let total = self.region.pages();
        if total == 0 {
            return;
        }
        let fill = self.fill_bytes.max(HEADER_BYTES);
        for i in 0..pages {
            let page = self.next_page;
            // Sequential writes: the page being written was written once per full pass.
            let generation = (self.pages + i as u64) / total as u64;
            let src = &self.random[self.random_offset..self.random_offset + fill - HEADER_BYTES];
            let dst = &mut self.region.bytes_mut()[page * PAGE_SIZE..page * PAGE_SIZE + fill];
            if verify::header(dst) != (page as u64, generation) {
                self.stale_on_write += 1;
            }
            verify::stamp(dst, page as u64, generation + 1);
            dst[HEADER_BYTES..].copy_from_slice(src);
            self.next_page = if page + 1 == total { 0 } else { page + 1 };
            // Step by an odd amount so successive writes of a page differ.
            self.random_offset = (self.random_offset + 4099) % RANDOM_BYTES;
        }
        self.pages += pages as u64;
    }

    /// Checks the whole working set against the writes made so far.
    pub fn check(&mut self) -> MemoryCheck {
        self.checks += 1;
        let mut check = verify::check_region(&self.region, self.pages);
        check.mismatches_on_write = self.stale_on_write - self.stale_at_last_check;
        check.checks = self.checks;
        let now = Instant::now();
        let seconds = (now - self.last_check).as_secs_f64();
        if seconds > 0.0 {
            check.rate_since_last_check = (self.pages - self.writes_at_last_check) as f64 / seconds;
        }
        (self.stale_at_last_check, self.writes_at_last_check, self.last_check) = (self.stale_on_write, self.pages, now);
        check
    }

    /// Pages cycle `k` modifies: `⌊(k+1)·BPC⌋ − ⌊k·BPC⌋`.
    pub fn pages_in_cycle(&self, k: u64) -> usize {
        let bpc = self.pattern.bpc();
        (((k + 1) as f64 * bpc).floor() - (k as f64 * bpc).floor()) as usize
    }

    /// Runs one cycle: modifies its pages.
    pub fn cycle(&mut self) {
        let n = self.pages_in_cycle(self.cycles);
        self.modify(n);
        self.cycles += 1;
    }

    /// Runs the paced pattern until `stop`, or for `duration`; calls `report` every
    /// `report_every` and once at the end; answers memory checks asked at `desk`
    /// between cycles.
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        duration: Option<Duration>,
        report_every: Duration,
        desk: Option<&CheckDesk>,
        mut report: impl FnMut(&DirtyReport),
    ) {
        let period = self.pattern.period;
        // Falling further behind than this means we were not running (guest paused):
        // start the schedule afresh instead of bursting to catch up.
        let max_lag = (period * 4).max(Duration::from_millis(100));
        let start = Instant::now();
        let mut base = start;
        let mut base_cycle = 0u64;
        let (mut last_report, mut last_pages, mut reported_stale) = (start, 0u64, 0u64);
        while !stop.load(Ordering::Relaxed) {
            // Check before the cycle: a cycle's pages belong to the period it starts,
            // so stopping here counts only whole periods.
            if duration.is_some_and(|d| start.elapsed() >= d) {
                break;
            }
            self.cycle();
            if let Some(desk) = desk.filter(|d| d.wanted()) {
                desk.answer(self.check());
            }
            let now = Instant::now();
            // A stale page is news at once: a guest whose memory is corrupt may not live
            // to its next report.
            let stale_news = self.stale_on_write > reported_stale && now - last_report >= Duration::from_millis(20);
            if now - last_report >= report_every || stale_news {
                report(&self.report(start, now, last_report, last_pages));
                (last_report, last_pages, reported_stale) = (now, self.pages, self.stale_on_write);
            }
            let deadline = base + period.mul_f64((self.cycles - base_cycle) as f64);
            if now > deadline + max_lag {
                self.resyncs += 1;
                (base, base_cycle) = (now, self.cycles);
                continue;
            }
            sleep_until(deadline);
        }
        let now = Instant::now();
        report(&self.report(start, now, last_report, last_pages));
    }

    fn report(&self, start: Instant, now: Instant, last: Instant, last_pages: u64) -> DirtyReport {
        let elapsed = (now - start).as_secs_f64();
        let interval = (now - last).as_secs_f64();
        DirtyReport {
            r#gen: "dirty",
            elapsed_s: elapsed,
            pages: self.pages,
            cycles: self.cycles,
            target_rate: self.pattern.rate,
            rate: if elapsed > 0.0 { self.pages as f64 / elapsed } else { 0.0 },
            interval_rate: if interval > 0.0 { (self.pages - last_pages) as f64 / interval } else { 0.0 },
            fill_bytes: self.fill_bytes,
            resyncs: self.resyncs,
            stale_on_write: self.stale_on_write,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gen_with(pages: u64, rate: f64, period_ms: u64, fill: f64) -> DirtyGen {
        let region = LockedRegion::new(pages * PAGE_SIZE as u64, 1).expect("small region");
        DirtyGen::new(region, DirtyPattern { period: Duration::from_millis(period_ms), rate, fill }, 1)
    }

    #[test]
    fn fractional_bpc_hits_the_rate_exactly() {
        // 1234 pages/s at 10 ms: 12.34 pages per cycle.
        let g = gen_with(16, 1234.0, 10, 100.0);
        let total: usize = (0..100).map(|k| g.pages_in_cycle(k)).sum();
        assert_eq!(total, 1234);
        assert!((0..100).all(|k| (12..=13).contains(&g.pages_in_cycle(k))));
    }

    #[test]
    fn integral_bpc_is_constant() {
        let g = gen_with(16, 30_000.0, 10, 100.0); // bpc = 300
        assert!((0..1000).all(|k| g.pages_in_cycle(k) == 300));
    }

    #[test]
    fn wraps_around_the_region() {
        let mut g = gen_with(10, 700.0, 10, 100.0); // 7 pages per cycle
        g.cycle();
        assert_eq!(g.next_page, 7);
        g.cycle();
        assert_eq!(g.next_page, 4);
        assert_eq!(g.pages, 14);
    }

    #[test]
    fn a_page_that_lost_a_write_is_found_by_the_check_and_by_the_next_write() {
        let mut g = gen_with(8, 100.0, 10, 100.0);
        g.modify(13); // pages 0-4 written twice, 5-7 once
        let clean = g.check();
        assert_eq!((clean.pages_checked, clean.mismatches, clean.mismatches_on_write), (8, 0, 0));
        // A migration hands the destination a stale copy of page 3: its last write is lost.
        let page3 = 3 * PAGE_SIZE;
        verify::stamp(&mut g.region.bytes_mut()[page3..page3 + PAGE_SIZE], 3, 1);
        let found = g.check();
        assert_eq!(found.mismatches, 1);
        let bad = found.first_bad_page.expect("first bad page");
        assert_eq!((bad.page, bad.expected_generation, bad.found_index, bad.found_generation), (3, 2, 3, 1));
        assert_eq!(bad.address, g.region().as_ptr() as u64 + page3 as u64);
        // Corrupt page 6 (random bytes over its header), then let the writer reach it.
        g.region.bytes_mut()[6 * PAGE_SIZE..6 * PAGE_SIZE + 16].fill(0x5a);
        g.modify(3); // pages 5, 6, 7
        let after = g.check();
        assert_eq!(after.mismatches_on_write, 1, "the stale page 6 was counted before it was overwritten");
        assert_eq!(after.mismatches, 1, "page 3 is still stale");
        assert_eq!(g.check().mismatches_on_write, 0, "counted once, by the check after it");
    }

    #[test]
    fn fill_sets_bytes_per_page() {
        assert_eq!(gen_with(4, 100.0, 10, 100.0).fill_bytes(), 4096);
        assert_eq!(gen_with(4, 100.0, 10, 50.0).fill_bytes(), 2048);
        assert_eq!(gen_with(4, 100.0, 10, 0.01).fill_bytes(), 1);
    }
}
