//! The KVM dirty-log path and vCPU runs, seen through syscall and `kvm:` tracepoints.
//!
//! These fire up to once per dirtied page or per vCPU entry, so nothing here is
//! streamed: counts and latencies accumulate in per-CPU maps keyed by process and
//! pre-copy round, and vCPU run times per thread, for userspace to read per migration.

use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
};
use aya_log_ebpf::warn;
use migtrace_common::event::{Diag, InflightIoctl, KvmStatKey, KvmWhat, kvm_ioctl};

use crate::maps::{
    INFLIGHT, current, kvm_stat_add, kvm_stat_add_n, now_ns, raise, round_of, traced_role, vcpu_enter, vcpu_exit,
};

/// Offset of `cmd` in `syscalls:sys_enter_ioctl`, read by userspace from the tracepoint's
/// format file and patched in at load time.
#[unsafe(no_mangle)]
static IOCTL_CMD_OFFSET: u32 = 24;

/// Offset of `arg` in `syscalls:sys_enter_ioctl` (patched like the command's).
#[unsafe(no_mangle)]
static IOCTL_ARG_OFFSET: u32 = 32;

/// Offset of `ret` in `syscalls:sys_exit_ioctl` (patched like the command's).
#[unsafe(no_mangle)]
static IOCTL_RET_OFFSET: u32 = 16;

/// Pages per memslot of a traced process, key `tgid << 32 | slot`, from its
/// KVM_SET_USER_MEMORY_REGION calls (QEMU makes one per slot when dirty logging
/// starts): the size of the slot's dirty bitmap.
#[map]
static SLOT_PAGES: HashMap<u64, u64> = HashMap::with_max_entries(1024, 0);

/// The `struct kvm_dirty_log *` of a KVM_GET_DIRTY_LOG in flight, by tid.
#[map]
static DIRTY_LOG_ARG: HashMap<u32, u64> = HashMap::with_max_entries(1024, 0);

/// Largest dirty bitmap counted, in chunks of [`CHUNK_WORDS`] 64-bit words: a 4 GiB
/// memslot. Whole chunks keep the loop short enough for the verifier; a larger slot's
/// count is flagged truncated.
const MAX_BITMAP_CHUNKS: u64 = 1 << 10;
const CHUNK_WORDS: usize = 16;

#[inline(always)]
fn patched(global: &u32) -> usize {
    // SAFETY: volatile read of a load-time constant.
    unsafe { core::ptr::read_volatile(global) as usize }
}

#[tracepoint]
pub fn kvm_ioctl_enter(ctx: TracePointContext) -> u32 {
    let Some((tgid, _)) = traced_role() else { return 0 };
    let offset = patched(&IOCTL_CMD_OFFSET);
    // SAFETY: reading fields of the tracepoint record at their format-file offsets.
    let Ok(cmd) = (unsafe { ctx.read_at::<u64>(offset) }) else {
        if raise(Diag::IoctlLayout) {
            warn!(&ctx, "sys_enter_ioctl: no cmd at offset {}: KVM ioctls are not counted", offset);
        }
        return 0;
    };
    let cmd = cmd as u32;
    // SAFETY: as above.
    let arg = unsafe { ctx.read_at::<u64>(patched(&IOCTL_ARG_OFFSET)) }.unwrap_or(0);
    let (_, tid) = current();
    if cmd == kvm_ioctl::KVM_SET_USER_MEMORY_REGION || cmd == kvm_ioctl::KVM_SET_USER_MEMORY_REGION2 {
        remember_slot(tgid, arg);
        return 0;
    }
    let Some(what) = KvmWhat::of_ioctl(cmd) else { return 0 };
    let now = now_ns();
    if what == KvmWhat::Run {
        vcpu_enter(&ctx, tgid, tid, now);
    }
    let inflight = InflightIoctl { what: what as u32, round: round_of(tgid), start_ns: now };
    if INFLIGHT.insert(&tid, &inflight, 0).is_err() && raise(Diag::InflightFull) {
        warn!(&ctx, "INFLIGHT is full: an ioctl of thread {} is not timed", tid);
    }
    if what == KvmWhat::GetDirtyLog && DIRTY_LOG_ARG.insert(&tid, &arg, 0).is_err() && raise(Diag::DirtyLogArgFull) {
        warn!(&ctx, "DIRTY_LOG_ARG is full: a dirty bitmap of thread {} is not counted", tid);
    }
    0
}

/// `struct kvm_userspace_memory_region{,2}`: slot (u32) at 0, memory_size (u64) at 16.
#[inline(always)]
fn remember_slot(tgid: u32, arg: u64) {
    // SAFETY: reading the ioctl's argument from the caller's memory; a bad pointer is an error.
    let (Ok(slot), Ok(size)) =
        (unsafe { (bpf_probe_read_user(arg as *const u32), bpf_probe_read_user((arg + 16) as *const u64)) })
    else {
        return;
    };
    if SLOT_PAGES.insert(&(((tgid as u64) << 32) | slot as u64), &(size >> 12), 0).is_err() {
        // Its bitmaps are flagged unread when counted; counted here, logged nowhere
        // (no context for a log record).
        let _ = raise(Diag::SlotPagesFull);
    }
}

#[tracepoint]
pub fn kvm_ioctl_exit(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current();
    // SAFETY: plain struct copied out before removal.
    let Some(inflight) = (unsafe { INFLIGHT.get(&tid) }).copied() else { return 0 };
    let _ = INFLIGHT.remove(&tid);
    let now = now_ns();
    if inflight.what == KvmWhat::Run as u32 {
        vcpu_exit(tid, now);
    }
    let key = KvmStatKey { tgid, round: inflight.round, what: inflight.what, _pad: 0 };
    kvm_stat_add(&ctx, &key, now.saturating_sub(inflight.start_ns));
    if inflight.what == KvmWhat::GetDirtyLog as u32 {
        // SAFETY: plain u64 copied out before removal.
        let arg = unsafe { DIRTY_LOG_ARG.get(&tid) }.copied();
        let _ = DIRTY_LOG_ARG.remove(&tid);
        // SAFETY: reading the return value at its format-file offset.
        let ok = unsafe { ctx.read_at::<i64>(patched(&IOCTL_RET_OFFSET)) }.is_ok_and(|r| r == 0);
        if ok {
            let key = |what: KvmWhat| KvmStatKey { tgid, round: inflight.round, what: what as u32, _pad: 0 };
            // Without the argument (DIRTY_LOG_ARG was full) nothing can be read.
            let (pages, partial) = arg.map_or((0, Some(KvmWhat::DirtyPagesUnread)), |arg| dirty_pages(tgid, arg));
            // A bitmap not read at all adds no page count: a zero would pose as one.
            if pages > 0 || partial.is_none() {
                kvm_stat_add_n(&ctx, &key(KvmWhat::DirtyPages), pages);
            }
            if let Some(what) = partial {
                kvm_stat_add_n(&ctx, &key(what), 1);
            }
        }
    }
    0
}

/// Pages set in the bitmap a KVM_GET_DIRTY_LOG just filled in, and what kept the count
/// from being whole: [`KvmWhat::DirtyPagesTruncated`] (a memslot over 4 GiB, counted
/// up to 4 GiB) or [`KvmWhat::DirtyPagesUnread`] (the argument or part of the bitmap
/// unreadable, or the slot's size unknown; what was read is counted). `struct
/// kvm_dirty_log`: slot (u32) at 0, the bitmap's address (u64) at 8; its size is the
/// slot's.
#[inline(always)]
fn dirty_pages(tgid: u32, arg: u64) -> (u64, Option<KvmWhat>) {
    // SAFETY: reading the ioctl's argument from the caller's memory; a bad pointer is an error.
    let (Ok(slot), Ok(bitmap)) =
        (unsafe { (bpf_probe_read_user(arg as *const u32), bpf_probe_read_user((arg + 8) as *const u64)) })
    else {
        return (0, Some(KvmWhat::DirtyPagesUnread));
    };
    // SAFETY: plain u64 copied out.
    let Some(pages) = (unsafe { SLOT_PAGES.get(&(((tgid as u64) << 32) | slot as u64)) }).copied() else {
        return (0, Some(KvmWhat::DirtyPagesUnread));
    };
    let words = pages.div_ceil(64);
    let chunks = words / CHUNK_WORDS as u64;
    let mut set = 0;
    // Whole chunks, then the last words one by one: KVM fills exactly the slot's
    // bitmap, nothing beyond it may be read.
    for c in 0..MAX_BITMAP_CHUNKS {
        if c >= chunks {
            break;
        }
        let at = bitmap + c * (CHUNK_WORDS as u64 * 8);
        // SAFETY: as above; the chunk lies within the bitmap.
        let Ok(chunk) = (unsafe { bpf_probe_read_user(at as *const [u64; CHUNK_WORDS]) }) else {
            return (set, Some(KvmWhat::DirtyPagesUnread));
        };
        for word in chunk {
            set += popcount(word);
        }
    }
    if chunks > MAX_BITMAP_CHUNKS {
        return (set, Some(KvmWhat::DirtyPagesTruncated));
    }
    let done = chunks * CHUNK_WORDS as u64;
    for i in 0..CHUNK_WORDS as u64 {
        if done + i >= words {
            break;
        }
        // SAFETY: as above; the word lies within the bitmap.
        let Ok(word) = (unsafe { bpf_probe_read_user((bitmap + (done + i) * 8) as *const u64) }) else {
            return (set, Some(KvmWhat::DirtyPagesUnread));
        };
        set += popcount(word);
    }
    (set, None)
}

/// Bits set in `x` (BPF has no popcount instruction).
#[inline(always)]
fn popcount(mut x: u64) -> u64 {
    x -= (x >> 1) & 0x5555_5555_5555_5555;
    x = (x & 0x3333_3333_3333_3333) + ((x >> 2) & 0x3333_3333_3333_3333);
    x = (x + (x >> 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    x.wrapping_mul(0x0101_0101_0101_0101) >> 56
}

#[inline(always)]
fn count(ctx: &TracePointContext, what: KvmWhat) -> u32 {
    let Some((tgid, _)) = traced_role() else { return 0 };
    kvm_stat_add(ctx, &KvmStatKey { tgid, round: round_of(tgid), what: what as u32, _pad: 0 }, 0);
    0
}

#[tracepoint]
pub fn kvm_dirty_ring_push(ctx: TracePointContext) -> u32 {
    count(&ctx, KvmWhat::DirtyRingPush)
}

#[tracepoint]
pub fn kvm_dirty_ring_reset(ctx: TracePointContext) -> u32 {
    count(&ctx, KvmWhat::DirtyRingReset)
}

#[tracepoint]
pub fn kvm_dirty_ring_exit(ctx: TracePointContext) -> u32 {
    count(&ctx, KvmWhat::DirtyRingExit)
}
