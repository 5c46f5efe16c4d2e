//! The write pattern is exactly right: after a cycle exactly the intended pages are
//! dirty, and FILL changes the bytes written but not the pages dirtied.
//!
//! Dirty pages are observed with the kernel's own write tracking: userfaultfd
//! write-protect in asynchronous mode (`UFFD_FEATURE_WP_ASYNC`, Linux ≥ 6.7), the
//! mechanism CRIU uses for dirty tracking where soft-dirty is not built in. We
//! write-protect the region, run the generator, and read each page's uffd-wp bit from
//! /proc/self/pagemap: a page the generator wrote has lost its protection.

use std::{fs::File, io, os::unix::fs::FileExt as _, time::Duration};

use workloads::{
    dirty::DirtyGen,
    memory::LockedRegion,
    spec::{DirtyPattern, PAGE_SIZE},
};

const UFFD_API: u64 = 0xAA;
const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
const UFFDIO_API: libc::c_ulong = 0xC018_AA3F;
const UFFDIO_REGISTER: libc::c_ulong = 0xC020_AA00;
const UFFDIO_WRITEPROTECT: libc::c_ulong = 0xC018_AA06;
const UFFDIO_REGISTER_MODE_WP: u64 = 2;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1;
/// pagemap: "pte is uffd-wp write-protected".
const PM_UFFD_WP: u64 = 1 << 57;

/// Write tracking over one region.
struct WriteTracker {
    uffd: i32,
    start: u64,
    len: u64,
}

impl WriteTracker {
    fn new(region: &LockedRegion) -> io::Result<Self> {
        // SAFETY: plain syscall; the fd is owned by the tracker.
        let uffd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) } as i32;
        if uffd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut api = [UFFD_API, UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED, 0];
        ioctl(uffd, UFFDIO_API, api.as_mut_ptr())?;
        let (start, len) = (region.as_ptr() as u64, region.len() as u64);
        let mut register = [start, len, UFFDIO_REGISTER_MODE_WP, 0];
        ioctl(uffd, UFFDIO_REGISTER, register.as_mut_ptr())?;
        Ok(Self { uffd, start, len })
    }

    /// Write-protects the whole region: from now on, a write clears a page's bit.
    fn reset(&self) -> io::Result<()> {
        let mut wp = [self.start, self.len, UFFDIO_WRITEPROTECT_MODE_WP];
        ioctl(self.uffd, UFFDIO_WRITEPROTECT, wp.as_mut_ptr())
    }

    /// Indices of the pages written since the last reset.
    fn written(&self) -> io::Result<Vec<usize>> {
        let pages = (self.len / PAGE_SIZE as u64) as usize;
        let mut buf = vec![0u8; pages * 8];
        File::open("/proc/self/pagemap")?.read_exact_at(&mut buf, self.start / PAGE_SIZE as u64 * 8)?;
        Ok(buf
            .chunks_exact(8)
            .enumerate()
            .filter(|(_, e)| u64::from_le_bytes((*e).try_into().unwrap_or_default()) & PM_UFFD_WP == 0)
            .map(|(i, _)| i)
            .collect())
    }
}

impl Drop for WriteTracker {
    fn drop(&mut self) {
        // SAFETY: closing the fd we opened.
        unsafe { libc::close(self.uffd) };
    }
}

fn ioctl(fd: i32, req: libc::c_ulong, arg: *mut u64) -> io::Result<()> {
    // SAFETY: arg points at a struct of the size encoded in req.
    if unsafe { libc::ioctl(fd, req, arg) } != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn generator(pages: u64, bpc: u64, fill: f64) -> DirtyGen {
    let region = LockedRegion::new(pages * PAGE_SIZE as u64, 7).expect("lock a small region");
    let period = Duration::from_millis(10);
    DirtyGen::new(region, DirtyPattern { period, rate: bpc as f64 / period.as_secs_f64(), fill }, 7)
}

#[test]
fn each_cycle_dirties_exactly_the_next_bpc_pages_cyclically() {
    let mut g = generator(64, 10, 100.0);
    let tracker = WriteTracker::new(g.region()).expect("userfaultfd write-protect (Linux >= 6.7)");
    let mut expected_start = 0;
    for cycle in 0..8 {
        tracker.reset().expect("write-protect");
        assert!(tracker.written().expect("pagemap").is_empty(), "nothing written after reset");
        g.cycle();
        let want: Vec<usize> = (0..10).map(|i| (expected_start + i) % 64).collect();
        let mut got = tracker.written().expect("pagemap");
        let mut want_sorted = want.clone();
        want_sorted.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, want_sorted, "cycle {cycle}");
        expected_start = (expected_start + 10) % 64;
    }
}

#[test]
fn fill_changes_bytes_written_not_pages_dirtied() {
    let mut dirtied = Vec::new();
    for fill in [10.0, 50.0, 100.0] {
        let mut g = generator(32, 8, fill);
        let tracker = WriteTracker::new(g.region()).expect("userfaultfd write-protect");
        let before = g.region().bytes().to_vec();
        tracker.reset().expect("write-protect");
        g.cycle();
        dirtied.push(tracker.written().expect("pagemap"));
        let fill_bytes = g.fill_bytes();
        assert_eq!(fill_bytes, (fill / 100.0 * PAGE_SIZE as f64).round() as usize);
        let after = g.region().bytes();
        for page in 0..32 {
            let range = page * PAGE_SIZE..(page + 1) * PAGE_SIZE;
            let changed: Vec<usize> =
                range.clone().filter(|&i| before[i] != after[i]).map(|i| i - range.start).collect();
            if page < 8 {
                // Written: only the first FILL % may change, and (random data) nearly all of it does.
                assert!(
                    changed.iter().all(|&o| o < fill_bytes),
                    "fill {fill}: byte beyond FILL changed in page {page}"
                );
                assert!(
                    changed.len() * 100 >= fill_bytes * 95,
                    "fill {fill}: page {page} changed {} of {fill_bytes}",
                    changed.len()
                );
            } else {
                assert!(changed.is_empty(), "page {page} was not due but changed");
            }
        }
    }
    assert!(dirtied.iter().all(|d| *d == (0..8).collect::<Vec<_>>()), "pages dirtied by fill: {dirtied:?}");
}

#[test]
fn locked_memory_is_really_locked() {
    // VmLck is per process and tests run in parallel threads: measure in a process of
    // its own. 4 MiB stays under the default 8 MiB RLIMIT_MEMLOCK, so this runs
    // unprivileged too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_workloads"))
        .args(["--duration", "200ms", "locked", "--wset", "4M"])
        .output()
        .expect("run workloads");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok().filter(|v| v["gen"] == "locked"))
        .expect("a locked report");
    assert_eq!(report["wset_bytes"], 4 << 20);
    let locked = report["locked_bytes"].as_u64().expect("VmLck");
    assert!(locked >= 4 << 20, "VmLck {locked} after locking 4 MiB");
    // The region is filled with random data, not left zero.
    let region = LockedRegion::new(1 << 20, 3).expect("mlock 1 MiB");
    let zeros = region.bytes().iter().filter(|&&b| b == 0).count();
    assert!(zeros < region.len() / 100, "{zeros} zero bytes in a random fill");
}
