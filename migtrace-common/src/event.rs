//! Ring-buffer records and map layouts.

/// Which record follows an [`EventHeader`]; stored in [`EventHeader::kind`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A uprobe on a self-test function fired ([`SelftestEvent`]).
    SelftestUprobe = 1,
    /// A self-test syscall tracepoint fired ([`SelftestEvent`]).
    SelftestSyscall = 2,
}

impl EventKind {
    /// Number of kinds, i.e. the size of per-kind arrays such as [`LOSS_MAP_LEN`].
    pub const COUNT: u32 = 3;

    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::SelftestUprobe),
            2 => Some(Self::SelftestSyscall),
            _ => None,
        }
    }
}

/// Entries of the per-CPU loss map, indexed by [`EventKind`]: ring-buffer reservations
/// that failed because userspace did not drain fast enough.
pub const LOSS_MAP_LEN: u32 = EventKind::COUNT;

/// Role of a traced process, the value of the `TARGETS` map keyed by tgid.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A process of migtrace's own self-tests and benchmarks.
    Selftest = 1,
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

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers without padding; any bit pattern is valid.
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::SelftestEvent {}
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
    }

    #[test]
    fn kinds_round_trip() {
        for kind in [EventKind::SelftestUprobe, EventKind::SelftestSyscall] {
            assert_eq!(EventKind::from_u32(kind as u32), Some(kind));
        }
        assert_eq!(EventKind::from_u32(0), None);
        assert!((EventKind::SelftestSyscall as u32) < EventKind::COUNT);
    }
}
