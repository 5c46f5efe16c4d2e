//! A working set that can be checked: every page carries its index and its generation
//! (how many times the dirty-pages generator has written it) in its first 16 bytes, and
//! the writer knows which generation each page must hold. A page that lost writes, such
//! as one a migration left stale on the destination, shows up by reading 16 bytes per
//! page: the guest's own memory turns a silent lost-dirty-page bug into a count.
//!
//! The generator writes pages in order, cycling through the region, so after `writes`
//! page writes page `p` of `n` has been written `writes / n` times, once more if
//! `p < writes % n`: no table is needed.

use std::{
    sync::{
        Condvar, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{memory::LockedRegion, spec::PAGE_SIZE};

/// Bytes of each page the header takes: index, then generation, little-endian u64s.
pub const HEADER_BYTES: usize = 16;

/// UDP port the guest agent answers memory-check requests on.
pub const CHECK_PORT: u16 = 7077;

/// The request datagram's prefix; a nonce follows, echoed in the reply.
pub const CHECK_REQUEST: &str = "migtrace-memory-check ";

/// Writes page `index`'s header with `generation`.
pub fn stamp(page: &mut [u8], index: u64, generation: u64) {
    page[..8].copy_from_slice(&index.to_le_bytes());
    page[8..16].copy_from_slice(&generation.to_le_bytes());
}

/// (index, generation) from a page's header.
pub fn header(page: &[u8]) -> (u64, u64) {
    let word = |at: usize| u64::from_le_bytes(page[at..at + 8].try_into().unwrap_or([0; 8]));
    (word(0), word(8))
}

/// The generation page `page` of `pages` must hold after `writes` sequential writes.
pub fn expected_generation(page: u64, pages: u64, writes: u64) -> u64 {
    if pages == 0 {
        return 0;
    }
    writes / pages + u64::from(page < writes % pages)
}

/// The first page that did not hold what was last written to it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadPage {
    /// Index of the page in the working set.
    pub page: u64,
    /// Guest-virtual address of the page (the agent's mapping).
    pub address: u64,
    pub expected_generation: u64,
    pub found_index: u64,
    pub found_generation: u64,
}

/// What a check of the working set found.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryCheck {
    /// Pages whose header was read.
    pub pages_checked: u64,
    /// Pages that did not hold the index and generation last written to them.
    pub mismatches: u64,
    /// Pages the writer found stale just before overwriting them, since the previous
    /// check (a later write would otherwise hide them from the next full check).
    #[serde(default)]
    pub mismatches_on_write: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_bad_page: Option<BadPage>,
    /// Page writes of the generator so far.
    #[serde(default)]
    pub writes: u64,
    /// Checks answered so far, this one included: a count that starts over means the
    /// agent started over (the guest rebooted).
    #[serde(default)]
    pub checks: u64,
    /// How long the check of the whole working set took inside the guest.
    #[serde(default)]
    pub check_ms: f64,
    /// Pages written per second since the previous check (or since the generator
    /// started): the dirty rate the guest actually achieved, migration included.
    #[serde(default)]
    pub rate_since_last_check: f64,
    /// Where the working set starts in the agent's address space (for debugging a bad
    /// page, and for tests that corrupt one on purpose).
    #[serde(default)]
    pub region_address: u64,
}

impl MemoryCheck {
    /// Mismatches found either way.
    pub fn corrupted_pages(&self) -> u64 {
        self.mismatches + self.mismatches_on_write
    }
}

/// Checks every page of `region` against `writes` sequential page writes.
pub fn check_region(region: &LockedRegion, writes: u64) -> MemoryCheck {
    let started = Instant::now();
    let pages = region.pages() as u64;
    let bytes = region.bytes();
    let mut check =
        MemoryCheck { pages_checked: pages, writes, region_address: region.as_ptr() as u64, ..MemoryCheck::default() };
    for p in 0..pages {
        let at = p as usize * PAGE_SIZE;
        let (index, generation) = header(&bytes[at..at + HEADER_BYTES]);
        let expected = expected_generation(p, pages, writes);
        if index != p || generation != expected {
            check.mismatches += 1;
            if check.first_bad_page.is_none() {
                check.first_bad_page = Some(BadPage {
                    page: p,
                    address: region.as_ptr() as u64 + at as u64,
                    expected_generation: expected,
                    found_index: index,
                    found_generation: generation,
                });
            }
        }
    }
    check.check_ms = started.elapsed().as_secs_f64() * 1e3;
    check
}

/// Where the agent's listener asks the thread that owns the working set for a check,
/// and gets the answer back (the check must not race the writer).
#[derive(Debug, Default)]
pub struct CheckDesk {
    wanted: AtomicBool,
    answer: Mutex<Option<MemoryCheck>>,
    ready: Condvar,
}

impl CheckDesk {
    /// Asks for a check and waits up to `timeout` for it.
    pub fn request(&self, timeout: Duration) -> Option<MemoryCheck> {
        let mut answer = self.answer.lock().unwrap_or_else(|p| p.into_inner());
        *answer = None;
        self.wanted.store(true, Ordering::Release);
        let deadline = Instant::now() + timeout;
        while answer.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.wanted.store(false, Ordering::Release);
                return None;
            }
            answer = self.ready.wait_timeout(answer, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        answer.take()
    }

    /// The owner's side: whether a check is wanted (clears the request).
    pub fn wanted(&self) -> bool {
        self.wanted.swap(false, Ordering::AcqRel)
    }

    /// The owner's side: hands a check to the waiting listener.
    pub fn answer(&self, check: MemoryCheck) {
        *self.answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(check);
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_generations_follow_the_cyclic_writes() {
        // 4 pages, 10 writes: pages 0 and 1 written 3 times, 2 and 3 twice.
        assert_eq!((0..4).map(|p| expected_generation(p, 4, 10)).collect::<Vec<_>>(), [3, 3, 2, 2]);
        assert_eq!((0..4).map(|p| expected_generation(p, 4, 0)).collect::<Vec<_>>(), [0, 0, 0, 0]);
        assert_eq!(expected_generation(3, 4, 8), 2);
        assert_eq!(expected_generation(0, 0, 5), 0);
    }

    #[test]
    fn headers_round_trip() {
        let mut page = vec![0xaau8; PAGE_SIZE];
        stamp(&mut page, 12345, 678);
        assert_eq!(header(&page), (12345, 678));
        assert_eq!(page[HEADER_BYTES], 0xaa, "only the header is touched");
    }

    #[test]
    fn a_desk_hands_a_check_from_the_owner_to_the_asker() {
        let desk = std::sync::Arc::new(CheckDesk::default());
        let owner = desk.clone();
        let thread = std::thread::spawn(move || {
            while !owner.wanted() {
                std::thread::sleep(Duration::from_millis(1));
            }
            owner.answer(MemoryCheck { pages_checked: 7, ..MemoryCheck::default() });
        });
        let got = desk.request(Duration::from_secs(5)).expect("answered");
        assert_eq!(got.pages_checked, 7);
        thread.join().expect("owner");
        // Nobody answers: the request times out and is withdrawn.
        assert_eq!(desk.request(Duration::from_millis(20)), None);
        assert!(!desk.wanted(), "a timed-out request does not linger");
    }
}
