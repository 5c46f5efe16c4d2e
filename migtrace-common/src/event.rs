//! Ring-buffer records and map layouts.

/// Which record follows an [`EventHeader`]; stored in [`EventHeader::kind`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A uprobe on a self-test function fired ([`SelftestEvent`]).
    SelftestUprobe = 1,
    /// A self-test syscall tracepoint fired ([`SelftestEvent`]).
    SelftestSyscall = 2,
    /// A QEMU function was entered or returned from ([`PhaseEvent`]).
    Phase = 3,
    /// A guest packet crossed a lab tap ([`PacketEvent`]).
    Packet = 4,
}

impl EventKind {
    /// One more than the largest discriminant: the size of per-kind arrays.
    pub const COUNT: u32 = 5;

    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::SelftestUprobe),
            2 => Some(Self::SelftestSyscall),
            3 => Some(Self::Phase),
            4 => Some(Self::Packet),
            _ => None,
        }
    }
}

/// Entries of the per-CPU loss map, indexed by [`EventKind`]: ring-buffer reservations
/// that failed because userspace did not drain fast enough.
pub const LOSS_MAP_LEN: u32 = EventKind::COUNT;

/// Conditions the eBPF programs meet: each is counted per CPU in `DIAG_COUNT` (read into
/// the trace's health) and logged (aya-log) once per CPU (`DIAG_SEEN`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Diag {
    /// The ring buffer was full: records lost (also counted per kind).
    RingFull = 0,
    /// `KVM_STATS` is full: new (process, round, ioctl) keys are not counted.
    KvmStatsFull = 1,
    /// `VCPU_RUN` is full: new vCPU threads are not timed.
    VcpuRunFull = 2,
    /// `INFLIGHT` is full: an ioctl's latency is not measured.
    InflightFull = 3,
    /// `SAVED_ARGS` is full: a return probe cannot read its out-parameters.
    SavedArgsFull = 4,
    /// `ROUND` is full: KVM statistics stay in round 0.
    RoundFull = 5,
    /// The ioctl tracepoint's `cmd` cannot be read at the offset from its format file.
    IoctlLayout = 6,
    /// A frame with the IPv4 ethertype whose header is not IPv4 (version, IHL).
    IpLayout = 7,
    /// `DIRTY_LOG_ARG` is full: a KVM_GET_DIRTY_LOG's bitmap is not counted.
    DirtyLogArgFull = 8,
    /// `SLOT_PAGES` is full: a memslot's size is unknown, its bitmaps are not counted.
    SlotPagesFull = 9,
}

impl Diag {
    pub const COUNT: u32 = 10;

    pub const ALL: [Diag; Self::COUNT as usize] = [
        Self::RingFull,
        Self::KvmStatsFull,
        Self::VcpuRunFull,
        Self::InflightFull,
        Self::SavedArgsFull,
        Self::RoundFull,
        Self::IoctlLayout,
        Self::IpLayout,
        Self::DirtyLogArgFull,
        Self::SlotPagesFull,
    ];
}

/// Role of a traced process, the value of the `TARGETS` map keyed by tgid.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A process of migtrace's own self-tests and benchmarks.
    Selftest = 1,
    /// A hypervisor process (QEMU) whose KVM ioctls and vCPU runs are aggregated.
    Hypervisor = 2,
}

/// Common prefix of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// An [`EventKind`] discriminant.
    pub kind: u32,
    /// CPU the program ran on.
    pub cpu: u32,
    /// Process id (thread-group id) of the task that triggered the event.
    pub tgid: u32,
    /// Thread id of that task.
    pub tid: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
}

/// Self-test record: proves a program type loads, attaches and delivers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SelftestEvent {
    pub header: EventHeader,
    /// Uprobe: the attach cookie. Syscall: the syscall number.
    pub cookie: u64,
    /// Uprobe: the probed function's first argument. Syscall: unused.
    pub arg0: u64,
}

/// QEMU functions migtrace probes, identified in attach cookies and records.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PhasePoint {
    MigrateSetState = 1,
    SavevmStateSetup = 2,
    DirtyLogStart = 3,
    DirtyLogSync = 4,
    DirtyLogStop = 5,
    VmStopForceState = 6,
    PauseAllVcpus = 7,
    SavevmStateCompletePrecopy = 8,
    SavevmStateCleanup = 9,
    /// `qemu_savevm_state_pending` (QEMU ≤ 7.2) or `…_pending_exact` (8.0+): pending bytes.
    SavevmStatePending = 10,
    LoadvmState = 11,
    VmPrepareStart = 12,
    VmStart = 13,
    ResumeAllVcpus = 14,
    AnnounceSelf = 15,
    VmStateNotify = 16,
    /// TCG's `cpu_exec`: aggregated per vCPU thread in the kernel, never streamed.
    CpuExec = 17,
    /// `qemu_savevm_state_pending_estimate` (QEMU 8.0+): pending bytes each iteration;
    /// `…_exact` (a dirty sync) runs only when the estimate is under the threshold.
    SavevmStatePendingEstimate = 18,
}

impl PhasePoint {
    pub const ALL: [PhasePoint; 18] = [
        Self::MigrateSetState,
        Self::SavevmStateSetup,
        Self::DirtyLogStart,
        Self::DirtyLogSync,
        Self::DirtyLogStop,
        Self::VmStopForceState,
        Self::PauseAllVcpus,
        Self::SavevmStateCompletePrecopy,
        Self::SavevmStateCleanup,
        Self::SavevmStatePending,
        Self::LoadvmState,
        Self::VmPrepareStart,
        Self::VmStart,
        Self::ResumeAllVcpus,
        Self::AnnounceSelf,
        Self::VmStateNotify,
        Self::CpuExec,
        Self::SavevmStatePendingEstimate,
    ];

    pub const fn from_u16(v: u16) -> Option<Self> {
        if v >= 1 && v as usize <= Self::ALL.len() { Some(Self::ALL[v as usize - 1]) } else { None }
    }
}

/// Attach-cookie layout of the QEMU probes: bits 0–15 the [`PhasePoint`], bit 16 "save
/// the arguments at entry for the return probe", bits 24–31 a mask of arguments that
/// are pointers to `u64` the return probe dereferences (pending-bytes out-parameters),
/// bit 17 "aggregate only" (vCPU run accounting, no record).
pub mod cookie {
    pub const POINT_MASK: u64 = 0xffff;
    pub const SAVE_ARGS: u64 = 1 << 16;
    pub const AGGREGATE_ONLY: u64 = 1 << 17;
    pub const DEREF_SHIFT: u32 = 24;

    pub const fn make(point: super::PhasePoint, save_args: bool, deref_mask: u8, aggregate_only: bool) -> u64 {
        (point as u64)
            | if save_args { SAVE_ARGS } else { 0 }
            | if aggregate_only { AGGREGATE_ONLY } else { 0 }
            | ((deref_mask as u64) << DEREF_SHIFT)
    }
}

/// [`PhaseEvent::flags`]: the record is from the return probe.
pub const PHASE_RETURN: u32 = 1;
/// [`PhaseEvent::flags`] of a return probe that should read values through pointer
/// arguments: the entry probe saved no arguments for this call (the call began before
/// the probe was attached, or `SAVED_ARGS` was full), so none was read.
pub const PHASE_ARGS_NOT_SAVED: u32 = 1 << 1;
/// [`PhaseEvent::flags`] of a return probe: bit `PHASE_ARG_FAULT_SHIFT + i` set when
/// reading `args[i]` through its pointer failed (`args[i]` is then 0, not a value).
pub const PHASE_ARG_FAULT_SHIFT: u32 = 8;
pub const PHASE_ARG_FAULT_MASK: u32 = 0b111 << PHASE_ARG_FAULT_SHIFT;

/// Entry into or return from a probed QEMU function.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhaseEvent {
    pub header: EventHeader,
    /// A [`PhasePoint`] discriminant.
    pub point: u32,
    /// [`PHASE_RETURN`] for return probes, with [`PHASE_ARGS_NOT_SAVED`] and the
    /// [`PHASE_ARG_FAULT_MASK`] bits for values that could not be read.
    pub flags: u32,
    /// Entry: the first three arguments. Return: the values behind the arguments named
    /// in the cookie's deref mask (in argument order), zero elsewhere and where `flags`
    /// says a value could not be read.
    pub args: [u64; 3],
    /// Return: the return value. Entry: the round counter of this process.
    pub ret: u64,
    /// Bytes of data the lab's link had carried when the probe fired ([`LINK_BYTES`]
    /// slot of the link's counter), so that what crossed the link between two phases
    /// is a difference.
    pub link_bytes: u64,
}

/// Slots of the link counter map: the data bytes that crossed the lab's link so far
/// (counted as they arrive at either end), and when its last data packet arrived
/// (monotonic ns).
pub const LINK_BYTES: u32 = 0;
pub const LINK_LAST_NS: u32 = 1;
pub const LINK_MAP_LEN: u32 = 2;
/// Packets on the link at least this long carry the migration stream's data; shorter
/// ones are its ACKs (and a management connection's chatter), which the counter skips
/// so that the reverse direction's ACKs do not add to the stream.
pub const LINK_DATA_MIN_LEN: u32 = 256;

/// What a packet seen at a tap is.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketKind {
    IcmpEchoReply = 1,
    UdpProbeReply = 2,
    Rarp = 3,
    Arp = 4,
}

impl PacketKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::IcmpEchoReply),
            2 => Some(Self::UdpProbeReply),
            3 => Some(Self::Rarp),
            4 => Some(Self::Arp),
            _ => None,
        }
    }
}

/// UDP port the probe sender's echo replies come from.
pub const UDP_PROBE_PORT: u16 = 7;

/// A guest packet leaving the guest through a tap (tc ingress on the tap).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketEvent {
    pub header: EventHeader,
    /// The tap the packet came through, i.e. which host the guest runs on.
    pub ifindex: u32,
    /// A [`PacketKind`] discriminant.
    pub kind: u32,
    /// ICMP identifier, or the UDP destination port (the echo client's port: replies
    /// all come from [`UDP_PROBE_PORT`]).
    pub ident: u16,
    /// ICMP sequence number, or the first 16 bits of the UDP payload.
    pub seq: u16,
    /// Frame length.
    pub len: u32,
    /// IPv4 source and destination (network order), or ARP sender/target addresses.
    pub saddr: u32,
    pub daddr: u32,
    /// The first 8 payload bytes as a big-endian u64: migtrace's probe sender puts its
    /// send stamp (CLOCK_MONOTONIC ns) there, and the guest echoes it back.
    pub payload_stamp: u64,
}

/// KVM ioctls migtrace counts (values of `_IO*(KVMIO, …)`).
pub mod kvm_ioctl {
    pub const KVM_RUN: u32 = 0xae80;
    pub const KVM_GET_DIRTY_LOG: u32 = 0x4010_ae42;
    pub const KVM_CLEAR_DIRTY_LOG: u32 = 0xc018_aec0;
    pub const KVM_RESET_DIRTY_RINGS: u32 = 0xaec7;
    /// `_IOW(KVMIO, 0x46, struct kvm_userspace_memory_region)`: a memslot and its size.
    pub const KVM_SET_USER_MEMORY_REGION: u32 = 0x4020_ae46;
    /// `_IOW(KVMIO, 0x49, struct kvm_userspace_memory_region2)` (Linux 6.8+, QEMU 9+).
    pub const KVM_SET_USER_MEMORY_REGION2: u32 = 0x40a0_ae49;
}

/// What a [`KvmStatKey`] counts.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KvmWhat {
    GetDirtyLog = 1,
    ClearDirtyLog = 2,
    ResetDirtyRings = 3,
    Run = 4,
    DirtyRingPush = 5,
    DirtyRingReset = 6,
    DirtyRingExit = 7,
    /// Pages set in the bitmaps KVM_GET_DIRTY_LOG returned (a count of pages, no latency).
    DirtyPages = 8,
    /// KVM_GET_DIRTY_LOG bitmaps of memslots larger than the eBPF loop reaches (4 GiB):
    /// only their first 4 GiB are in `DirtyPages` (a count of bitmaps).
    DirtyPagesTruncated = 9,
    /// KVM_GET_DIRTY_LOG bitmaps not counted, or counted only in part: the argument or
    /// a chunk of the bitmap could not be read, or the memslot's size is unknown (a
    /// count of bitmaps; what was read is in `DirtyPages`).
    DirtyPagesUnread = 10,
}

impl KvmWhat {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::GetDirtyLog),
            2 => Some(Self::ClearDirtyLog),
            3 => Some(Self::ResetDirtyRings),
            4 => Some(Self::Run),
            5 => Some(Self::DirtyRingPush),
            6 => Some(Self::DirtyRingReset),
            7 => Some(Self::DirtyRingExit),
            8 => Some(Self::DirtyPages),
            9 => Some(Self::DirtyPagesTruncated),
            10 => Some(Self::DirtyPagesUnread),
            _ => None,
        }
    }

    pub const fn of_ioctl(cmd: u32) -> Option<Self> {
        match cmd {
            kvm_ioctl::KVM_GET_DIRTY_LOG => Some(Self::GetDirtyLog),
            kvm_ioctl::KVM_CLEAR_DIRTY_LOG => Some(Self::ClearDirtyLog),
            kvm_ioctl::KVM_RESET_DIRTY_RINGS => Some(Self::ResetDirtyRings),
            kvm_ioctl::KVM_RUN => Some(Self::Run),
            _ => None,
        }
    }
}

/// Key of the per-CPU KVM statistics: per process, per pre-copy round.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct KvmStatKey {
    pub tgid: u32,
    /// The process's round counter (dirty-log syncs so far) when it happened.
    pub round: u32,
    /// A [`KvmWhat`] discriminant.
    pub what: u32,
    pub _pad: u32,
}

/// Count and latency of one [`KvmWhat`]; tracepoint counts have no latency.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvmStat {
    pub count: u64,
    pub total_ns: u64,
    pub max_ns: u64,
}

/// When a vCPU thread last ran guest code: KVM_RUN, or TCG's `cpu_exec`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuRun {
    pub tgid: u32,
    pub _pad: u32,
    pub first_enter_ns: u64,
    pub last_enter_ns: u64,
    pub last_exit_ns: u64,
    pub enters: u64,
}

/// An ioctl in flight on a thread, between the enter and exit tracepoints.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InflightIoctl {
    pub what: u32,
    pub round: u32,
    pub start_ns: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers without padding; any bit pattern is valid.
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::SelftestEvent {}
    unsafe impl aya::Pod for super::PhaseEvent {}
    unsafe impl aya::Pod for super::PacketEvent {}
    unsafe impl aya::Pod for super::KvmStatKey {}
    unsafe impl aya::Pod for super::KvmStat {}
    unsafe impl aya::Pod for super::VcpuRun {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    // The eBPF side reserves records of these sizes; a change here is an ABI change.
    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(size_of::<EventHeader>(), 24);
        assert_eq!(size_of::<SelftestEvent>(), 40);
        assert_eq!(size_of::<PhaseEvent>(), 24 + 8 + 24 + 8 + 8);
        assert_eq!(size_of::<PacketEvent>(), 24 + 4 + 4 + 2 + 2 + 4 + 4 + 4 + 8);
        assert_eq!(size_of::<KvmStatKey>(), 16);
        assert_eq!(size_of::<KvmStat>(), 24);
        assert_eq!(size_of::<VcpuRun>(), 40);
        assert_eq!(size_of::<InflightIoctl>(), 16);
    }

    #[test]
    fn kinds_round_trip() {
        for kind in [EventKind::SelftestUprobe, EventKind::SelftestSyscall, EventKind::Phase, EventKind::Packet] {
            assert_eq!(EventKind::from_u32(kind as u32), Some(kind));
            assert!((kind as u32) < EventKind::COUNT);
        }
        assert_eq!(EventKind::from_u32(0), None);
        for p in PhasePoint::ALL {
            assert_eq!(PhasePoint::from_u16(p as u16), Some(p));
        }
        assert_eq!(PhasePoint::from_u16(0), None);
        assert_eq!(PhasePoint::from_u16(PhasePoint::ALL.len() as u16 + 1), None);
        for (i, d) in Diag::ALL.into_iter().enumerate() {
            assert_eq!(d as usize, i, "Diag::ALL in discriminant order");
        }
    }

    #[test]
    fn cookies_pack_point_and_flags() {
        let c = cookie::make(PhasePoint::SavevmStatePending, true, 0b11100, false);
        assert_eq!(c & cookie::POINT_MASK, PhasePoint::SavevmStatePending as u64);
        assert_ne!(c & cookie::SAVE_ARGS, 0);
        assert_eq!(c & cookie::AGGREGATE_ONLY, 0);
        assert_eq!((c >> cookie::DEREF_SHIFT) & 0xff, 0b11100);
    }

    #[test]
    fn ioctl_numbers_match_linux() {
        // _IOW(0xAE, 0x42, struct kvm_dirty_log /* 16 bytes */)
        assert_eq!(kvm_ioctl::KVM_GET_DIRTY_LOG, (1 << 30) | (16 << 16) | (0xae << 8) | 0x42);
        // _IOWR(0xAE, 0xc0, struct kvm_clear_dirty_log /* 24 bytes */)
        assert_eq!(kvm_ioctl::KVM_CLEAR_DIRTY_LOG, (3 << 30) | (24 << 16) | (0xae << 8) | 0xc0);
        assert_eq!(KvmWhat::of_ioctl(kvm_ioctl::KVM_RUN), Some(KvmWhat::Run));
        assert_eq!(KvmWhat::of_ioctl(0x1234), None);
        // _IOW(0xAE, 0x46, struct kvm_userspace_memory_region /* 32 bytes */)
        assert_eq!(kvm_ioctl::KVM_SET_USER_MEMORY_REGION, (1 << 30) | (32 << 16) | (0xae << 8) | 0x46);
        // _IOW(0xAE, 0x49, struct kvm_userspace_memory_region2 /* 160 bytes */)
        assert_eq!(kvm_ioctl::KVM_SET_USER_MEMORY_REGION2, (1 << 30) | (160 << 16) | (0xae << 8) | 0x49);
        for what in [KvmWhat::DirtyPages, KvmWhat::DirtyPagesTruncated, KvmWhat::DirtyPagesUnread] {
            assert_eq!(KvmWhat::from_u32(what as u32), Some(what));
        }
    }
}
