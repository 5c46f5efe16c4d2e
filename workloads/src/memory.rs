//! The locked working set: allocate, fill with random data (each page stamped with its
//! index, see [`crate::verify`]), mlock, hold.

use std::{fs, io, ptr::NonNull};

use rand::{Rng as _, SeedableRng as _, rngs::SmallRng};

use crate::spec::PAGE_SIZE;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error(
        "wset={wanted} bytes is larger than the memory available here ({available} bytes, MemAvailable): choose a smaller wset"
    )]
    TooLarge { wanted: u64, available: u64 },
    #[error("mmap of {0} bytes failed: {1}")]
    Map(u64, #[source] io::Error),
    #[error(
        "mlock of {bytes} bytes failed: {source}; the locked-memory limit is {limit}. Raise it with `ulimit -l unlimited` \
         (or LimitMEMLOCK=infinity for a service), or run as root"
    )]
    Lock {
        bytes: u64,
        limit: String,
        #[source]
        source: io::Error,
    },
}

/// `MemAvailable` from /proc/meminfo, in bytes.
pub fn mem_available() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// `VmLck` of this process from /proc/self/status, in bytes.
pub fn vm_locked() -> Option<u64> {
    let text = fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 =
        text.lines().find_map(|l| l.strip_prefix("VmLck:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

fn memlock_limit() -> String {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: lim is a valid rlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return "unknown".into();
    }
    if lim.rlim_cur == libc::RLIM_INFINITY { "unlimited".into() } else { format!("{} bytes", lim.rlim_cur) }
}

/// An anonymous, page-aligned, mlocked region filled with random data.
pub struct LockedRegion {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the region is plain memory owned by this value.
unsafe impl Send for LockedRegion {}

impl LockedRegion {
    /// Allocates `bytes` (whole pages), fills it with random data and locks it.
    pub fn new(bytes: u64, seed: u64) -> Result<Self, MemoryError> {
        if let Some(available) = mem_available()
            && bytes > available
        {
            return Err(MemoryError::TooLarge { wanted: bytes, available });
        }
        let len = bytes as usize;
        // SAFETY: anonymous private mapping; no file, no fixed address.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(MemoryError::Map(bytes, io::Error::last_os_error()));
        }
        let ptr =
            NonNull::new(addr.cast::<u8>()).ok_or_else(|| MemoryError::Map(bytes, io::Error::other("null mapping")))?;
        let mut region = Self { ptr, len };
        // A block is a 4 KiB page: keep THP from merging pages into 2 MiB units, so
        // "pages dirtied" means the same in the guest, on the host and in our tests.
        // SAFETY: advising our own mapping.
        unsafe { libc::madvise(addr, len, libc::MADV_NOHUGEPAGE) };
        SmallRng::seed_from_u64(seed).fill_bytes(region.bytes_mut());
        // Every page carries its index and generation 0: the working set is checkable.
        for (index, page) in region.bytes_mut().chunks_exact_mut(PAGE_SIZE).enumerate() {
            crate::verify::stamp(page, index as u64, 0);
        }
        // SAFETY: locking our own mapping.
        if unsafe { libc::mlock(addr, len) } != 0 {
            return Err(MemoryError::Lock { bytes, limit: memlock_limit(), source: io::Error::last_os_error() });
        }
        Ok(region)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn pages(&self) -> usize {
        self.len / PAGE_SIZE
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: ptr/len describe our live mapping.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr/len describe our live mapping, borrowed mutably through self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for LockedRegion {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping we created (also unlocks it).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
