//! Root, /dev/kvm: the KVM dirty-log path is traced exactly. A VM with a dirty-logging
//! memslot is created on /dev/kvm (no guest runs, which works even on paravirtual KVM)
//! and the dirty-log ioctls are called a known number of times; the in-kernel counts,
//! and the pages counted in the returned bitmaps, must match exactly. Run with
//! `cargo xtask test`.

use std::{fs::OpenOptions, io, os::fd::AsRawFd as _};

use migtrace::probe::Probes;
use migtrace_common::event::{KvmWhat, Role};

const KVM_CREATE_VM: libc::c_ulong = 0xae01;
const KVM_CHECK_EXTENSION: libc::c_ulong = 0xae03;
const KVM_SET_USER_MEMORY_REGION: libc::c_ulong = 0x4020_ae46;
const KVM_ENABLE_CAP: libc::c_ulong = 0x4068_aea3;
const KVM_GET_DIRTY_LOG: libc::c_ulong = 0x4010_ae42;
const KVM_CLEAR_DIRTY_LOG: libc::c_ulong = 0xc018_aec0;
const KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: u64 = 168;
const KVM_MEM_LOG_DIRTY_PAGES: u32 = 1;

const PAGES: usize = 256;

fn ioctl(fd: i32, req: libc::c_ulong, arg: usize) -> io::Result<i32> {
    // SAFETY: each call passes an argument of the layout its request expects.
    let r = unsafe { libc::ioctl(fd, req, arg) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

#[test]
#[ignore = "needs root and /dev/kvm: loads eBPF programs (run `cargo xtask test`)"]
fn dirty_log_ioctls_are_counted_exactly() {
    let mut probes = Probes::load().expect("load eBPF object");
    probes.attach_kvm().expect("attach KVM tracepoints");
    let pid = std::process::id();
    probes.add_target(pid, Role::Hypervisor).expect("target");
    probes.reset_process(pid).expect("reset");

    let kvm = OpenOptions::new().read(true).write(true).open("/dev/kvm").expect("/dev/kvm");
    let vm = ioctl(kvm.as_raw_fd(), KVM_CREATE_VM, 0).expect("KVM_CREATE_VM");
    // Manual dirty-log protection makes KVM_CLEAR_DIRTY_LOG available.
    let manual = ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 as usize).unwrap_or(0) > 0;
    if manual {
        // struct kvm_enable_cap { cap; flags; args[4]; pad[64] }: enable with both bits.
        let mut cap = [0u8; 104];
        cap[0..4].copy_from_slice(&(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 as u32).to_ne_bytes());
        cap[8..16].copy_from_slice(&3u64.to_ne_bytes());
        ioctl(vm, KVM_ENABLE_CAP, cap.as_ptr() as usize).expect("enable manual dirty-log protect");
    }
    let size = PAGES * 4096;
    // SAFETY: anonymous mapping for the memslot.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(mem, libc::MAP_FAILED);
    // struct kvm_userspace_memory_region { slot; flags; guest_phys_addr; memory_size; userspace_addr }
    let mut region = [0u8; 32];
    region[4..8].copy_from_slice(&KVM_MEM_LOG_DIRTY_PAGES.to_ne_bytes());
    region[16..24].copy_from_slice(&(size as u64).to_ne_bytes());
    region[24..32].copy_from_slice(&(mem as u64).to_ne_bytes());
    ioctl(vm, KVM_SET_USER_MEMORY_REGION, region.as_ptr() as usize).expect("dirty-logging memslot");

    let mut bitmap = vec![0u64; PAGES / 64];
    // struct kvm_dirty_log { slot; pad; dirty_bitmap }
    let mut log = [0u8; 16];
    log[8..16].copy_from_slice(&(bitmap.as_mut_ptr() as u64).to_ne_bytes());
    const GETS: u64 = 37;
    for _ in 0..GETS {
        ioctl(vm, KVM_GET_DIRTY_LOG, log.as_ptr() as usize).expect("KVM_GET_DIRTY_LOG");
    }
    let mut clears = 0u64;
    if manual {
        // struct kvm_clear_dirty_log { slot; num_pages; first_page; dirty_bitmap }
        let mut clear = [0u8; 24];
        clear[4..8].copy_from_slice(&(PAGES as u32).to_ne_bytes());
        clear[16..24].copy_from_slice(&(bitmap.as_mut_ptr() as u64).to_ne_bytes());
        for _ in 0..11 {
            ioctl(vm, KVM_CLEAR_DIRTY_LOG, clear.as_ptr() as usize).expect("KVM_CLEAR_DIRTY_LOG");
            clears += 1;
        }
    }
    // Unrelated ioctls of the same process are not counted.
    for _ in 0..5 {
        let _ = ioctl(vm, KVM_CHECK_EXTENSION, 1);
    }

    let stats = probes.kvm_stats(pid).expect("read stats");
    let get = stats.get(&(0, KvmWhat::GetDirtyLog)).expect("GET_DIRTY_LOG counted");
    assert_eq!(get.count, GETS);
    assert!(get.total_ns > 0 && get.max_ns > 0 && get.max_ns <= get.total_ns);
    assert_eq!(stats.get(&(0, KvmWhat::ClearDirtyLog)).map_or(0, |s| s.count), clears);
    // Pages set in the bitmaps the GETs returned: with manual protection every page of
    // the slot starts dirty and stays so until cleared (the CLEARs came after the GETs).
    let dirty = stats.get(&(0, KvmWhat::DirtyPages)).map_or(0, |s| s.count);
    assert_eq!(dirty, if manual { GETS * PAGES as u64 } else { 0 }, "dirty pages counted in the bitmaps");
    assert_eq!(stats.keys().filter(|(_, w)| *w == KvmWhat::Run).count(), 0);
    eprintln!(
        "GET_DIRTY_LOG ×{} mean {:.1} µs; CLEAR_DIRTY_LOG ×{clears}",
        get.count,
        get.total_ns as f64 / get.count as f64 / 1e3
    );

    // Forgetting the process drops its kernel-side state.
    probes.forget_process(pid).expect("forget");
    assert!(probes.kvm_stats(pid).expect("stats").is_empty());
    // SAFETY: closing what we opened, unmapping what we mapped.
    unsafe {
        libc::close(vm);
        libc::munmap(mem, size);
    }
}

/// An anonymous mapping of `size` bytes, reserved only (no memory is touched).
fn reserve(size: usize) -> *mut libc::c_void {
    // SAFETY: a fresh anonymous mapping, no existing memory involved.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(mem, libc::MAP_FAILED, "mmap of {size} bytes");
    mem
}

/// KVM_SET_USER_MEMORY_REGION with dirty logging: slot `slot` at guest address `gpa`.
fn dirty_logging_slot(vm: i32, slot: u32, gpa: u64, mem: *mut libc::c_void, size: usize) {
    let mut region = [0u8; 32];
    region[0..4].copy_from_slice(&slot.to_ne_bytes());
    region[4..8].copy_from_slice(&KVM_MEM_LOG_DIRTY_PAGES.to_ne_bytes());
    region[8..16].copy_from_slice(&gpa.to_ne_bytes());
    region[16..24].copy_from_slice(&(size as u64).to_ne_bytes());
    region[24..32].copy_from_slice(&(mem as u64).to_ne_bytes());
    ioctl(vm, KVM_SET_USER_MEMORY_REGION, region.as_ptr() as usize).expect("dirty-logging memslot");
}

fn get_dirty_log(vm: i32, slot: u32, bitmap: &mut [u64]) {
    let mut log = [0u8; 16];
    log[0..4].copy_from_slice(&slot.to_ne_bytes());
    log[8..16].copy_from_slice(&(bitmap.as_mut_ptr() as u64).to_ne_bytes());
    ioctl(vm, KVM_GET_DIRTY_LOG, log.as_ptr() as usize).expect("KVM_GET_DIRTY_LOG");
}

#[test]
#[ignore = "needs root and /dev/kvm: loads eBPF programs (run `cargo xtask test`)"]
fn dirty_bitmaps_counted_in_part_are_flagged_never_zero() {
    let kvm = OpenOptions::new().read(true).write(true).open("/dev/kvm").expect("/dev/kvm");
    let vm = ioctl(kvm.as_raw_fd(), KVM_CREATE_VM, 0).expect("KVM_CREATE_VM");
    let manual = ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 as usize).unwrap_or(0) > 0;
    if manual {
        let mut cap = [0u8; 104];
        cap[0..4].copy_from_slice(&(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 as u32).to_ne_bytes());
        cap[8..16].copy_from_slice(&3u64.to_ne_bytes());
        ioctl(vm, KVM_ENABLE_CAP, cap.as_ptr() as usize).expect("enable manual dirty-log protect");
    }
    // Slot 0 is made before the probes are loaded: its size is never seen.
    let small = PAGES * 4096;
    let small_mem = reserve(small);
    dirty_logging_slot(vm, 0, 0, small_mem, small);

    let mut probes = Probes::load().expect("load eBPF object");
    probes.attach_kvm().expect("attach KVM tracepoints");
    let pid = std::process::id();
    probes.add_target(pid, Role::Hypervisor).expect("target");
    probes.reset_process(pid).expect("reset");

    let mut bitmap = vec![0u64; PAGES / 64];
    get_dirty_log(vm, 0, &mut bitmap);
    let stats = probes.kvm_stats(pid).expect("stats");
    assert_eq!(stats.get(&(0, KvmWhat::DirtyPagesUnread)).map(|s| s.count), Some(1), "{stats:?}");
    assert!(!stats.contains_key(&(0, KvmWhat::DirtyPages)), "no page count for an unread bitmap, not 0: {stats:?}");

    // An 8 GiB slot: its bitmap is counted up to 4 GiB, and flagged.
    let huge = 8usize << 30;
    let huge_mem = reserve(huge);
    dirty_logging_slot(vm, 1, 1 << 32, huge_mem, huge);
    let mut bitmap = vec![0u64; huge / 4096 / 64];
    get_dirty_log(vm, 1, &mut bitmap);
    let stats = probes.kvm_stats(pid).expect("stats");
    assert_eq!(stats.get(&(0, KvmWhat::DirtyPagesTruncated)).map(|s| s.count), Some(1), "{stats:?}");
    // With manual protection every page starts dirty: the first 4 GiB of them counted.
    let set_in_4g: u64 = bitmap[..(4usize << 30) / 4096 / 64].iter().map(|w| w.count_ones() as u64).sum();
    assert_eq!(set_in_4g, if manual { 1 << 20 } else { 0 });
    assert_eq!(stats.get(&(0, KvmWhat::DirtyPages)).map(|s| s.count), Some(set_in_4g), "{stats:?}");
    eprintln!("unknown slot: flagged unread; 8 GiB slot: {set_in_4g} pages counted in its first 4 GiB, flagged");

    probes.forget_process(pid).expect("forget");
    // SAFETY: closing what we opened, unmapping what we mapped.
    unsafe {
        libc::close(vm);
        libc::munmap(small_mem, small);
        libc::munmap(huge_mem, huge);
    }
}
