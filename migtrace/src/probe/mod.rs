//! Load migtrace's eBPF programs into the running kernel, attach them, stream events.
//!
//! One file per probe family (what the programs observe); [`collector`] drains the shared
//! ring buffer. Programs are loaded once per [`Probes`]; dropping it detaches everything.

pub mod agent;
pub mod collector;
pub mod host;
pub mod kvm;
pub mod net;
pub mod qemu;
pub mod selftest;
pub mod store;
pub mod symbols;
pub mod tracer;

use std::{
    io,
    os::fd::AsFd as _,
    sync::{Arc, Mutex},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::ProgramError,
};
use aya_log::EbpfLogger;
pub use collector::{Collector, CollectorStats, Event};
use migtrace_common::event::{Diag, LOSS_MAP_LEN, Role};

/// The eBPF object built by `cargo xtask build`; empty when built without it.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/migtrace.bpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("this migtrace binary was built without its eBPF object: build it with `cargo xtask build`")]
    NotBuilt,
    #[error("loading eBPF programs needs root (CAP_BPF and CAP_PERFMON): run migtrace as root")]
    NotRoot,
    #[error(
        "loading eBPF programs needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN), and CAP_NET_ADMIN for the tap \
         classifiers; this process lacks {0}: run migtrace as root with its full capability set (a container: \
         --privileged)"
    )]
    NoCapability(String),
    #[error(
        "tracefs is not mounted and mounting it at /sys/kernel/tracing failed ({0}): mount it \
         (`mount -t tracefs tracefs /sys/kernel/tracing`; the kernel needs CONFIG_FTRACE)"
    )]
    Tracefs(#[source] io::Error),
    #[error("loading the eBPF object into the kernel failed")]
    Load(#[source] aya::EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("eBPF object has no {what} named {name} (stale build? run `cargo xtask build`)")]
    Missing { what: &'static str, name: &'static str },
    #[error(transparent)]
    Symbols(#[from] symbols::SymbolError),
    #[error(
        "{RING_BYTES_ENV}={0:?}: the events ring buffer's size in bytes must be a power of two of at least 4096 \
         (a page); unset it for the default 8 MiB"
    )]
    RingSize(String),
}

/// Overrides the size of the events ring buffer (bytes, a power of two ≥ 4096): a
/// small one makes loss easy to provoke (the fault tests), a larger one absorbs a slower
/// collector.
pub const RING_BYTES_ENV: &str = "MIGTRACE_EVENTS_RING_BYTES";

/// The events ring buffer's size from [`RING_BYTES_ENV`], None when unset (the object's
/// own 8 MiB).
fn ring_bytes() -> Result<Option<u32>, ProbeError> {
    let Some(value) = std::env::var_os(RING_BYTES_ENV) else { return Ok(None) };
    let text = value.to_string_lossy().into_owned();
    match text.trim().parse::<u32>() {
        Ok(n) if n.is_power_of_two() && n >= 4096 => Ok(Some(n)),
        _ => Err(ProbeError::RingSize(text)),
    }
}

/// Whether this binary carries its eBPF programs.
pub fn is_built() -> bool {
    !EBPF_OBJECT.is_empty()
}

/// The loaded eBPF object: programs, maps, and the links of attached programs.
pub struct Probes {
    ebpf: Ebpf,
    /// Defaults taken because the host did not tell (e.g. an unreadable format file).
    pub fallbacks: Vec<String>,
    log: Option<ProgramLog>,
    /// Threads dropping the links of processes no longer watched (see
    /// [`Probes::detach_qemu`]).
    detaching: Vec<std::thread::JoinHandle<()>>,
}

/// `cmd` of `syscalls:sys_enter_ioctl` on x86_64 Linux 6.x, when its format file cannot
/// be read.
const DEFAULT_IOCTL_CMD_OFFSET: u32 = 24;

/// The eBPF programs' own diagnostics (aya-log: unexpected layouts, full maps), handed
/// to migtrace's log (the `log` crate, shown by verbosity).
struct ProgramLog {
    logger: Arc<Mutex<EbpfLogger<&'static dyn log::Log>>>,
    /// Drains as records arrive, when loaded inside a tokio runtime.
    drain: Option<tokio::task::JoinHandle<()>>,
}

impl ProgramLog {
    fn start(ebpf: &mut Ebpf) -> Option<Self> {
        let logger = match EbpfLogger::init(ebpf) {
            Ok(l) => Arc::new(Mutex::new(l)),
            Err(e) => {
                log::warn!("eBPF diagnostics unavailable: {e}");
                return None;
            }
        };
        let drain = tokio::runtime::Handle::try_current().ok().and_then(|rt| {
            // Our own descriptor of the log ring buffer: the drain task may outlive the
            // logger's by a moment (abort is asynchronous).
            let fd = logger.lock().unwrap_or_else(|p| p.into_inner()).as_fd().try_clone_to_owned().ok()?;
            let shared = logger.clone();
            Some(rt.spawn(async move {
                // SAFETY: the OwnedFd is ours alone and stays open while the AsyncFd holds it.
                let Ok(fd) =
                    (unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) })
                else {
                    return;
                };
                loop {
                    let Ok(mut guard) = fd.readable().await else { return };
                    guard.clear_ready();
                    shared.lock().unwrap_or_else(|p| p.into_inner()).flush();
                }
            }))
        });
        Some(Self { logger, drain })
    }
}

impl Drop for ProgramLog {
    fn drop(&mut self) {
        if let Some(task) = self.drain.take() {
            task.abort();
        }
        self.logger.lock().unwrap_or_else(|p| p.into_inner()).flush();
    }
}

/// What loading and attaching the programs needs, checked before anything is started:
/// the object built in, root, the capabilities, tracefs (mounted if it is not). Each
/// failure is one line with its cause and its fix.
pub fn preflight() -> Result<(), ProbeError> {
    use migtrace_common::host::{cap, has_capability};
    if !is_built() {
        return Err(ProbeError::NotBuilt);
    }
    if !migtrace_common::host::is_root() {
        return Err(ProbeError::NotRoot);
    }
    let bpf = (has_capability(cap::BPF) && has_capability(cap::PERFMON)) || has_capability(cap::SYS_ADMIN);
    let mut missing: Vec<&str> = Vec::new();
    if !bpf {
        missing.extend(
            [cap::BPF, cap::PERFMON, cap::SYS_ADMIN].into_iter().filter(|c| !has_capability(*c)).map(cap::name),
        );
    }
    if !has_capability(cap::NET_ADMIN) {
        missing.push(cap::name(cap::NET_ADMIN));
    }
    if !missing.is_empty() {
        return Err(ProbeError::NoCapability(missing.join(", ")));
    }
    migtrace_common::host::ensure_tracefs().map_err(ProbeError::Tracefs)?;
    Ok(())
}

impl Probes {
    /// Loads the embedded eBPF object. Programs are loaded lazily, when first attached.
    /// The programs' diagnostics go to migtrace's log at the level `log::max_level()`
    /// allows; below it they are compiled in but skipped in the kernel.
    pub fn load() -> Result<Self, ProbeError> {
        Self::load_with_map_sizes(&[])
    }

    /// As [`Probes::load`], with the maps named in `max_entries` resized: the tests make
    /// a map tiny to see what happens when it is full.
    pub fn load_with_map_sizes(max_entries: &[(&'static str, u32)]) -> Result<Self, ProbeError> {
        preflight()?;
        let mut fallbacks = Vec::new();
        // The ioctl tracepoint's layout is read from tracefs, not assumed.
        let field = |category: &str, event: &str, name: &str, default: u32, fallbacks: &mut Vec<String>| {
            kvm::field_offset(category, event, name).unwrap_or_else(|| {
                fallbacks.push(format!("{category}:{event} format unreadable: {name} assumed at offset {default}"));
                default
            })
        };
        let cmd_offset = field("syscalls", "sys_enter_ioctl", "cmd", DEFAULT_IOCTL_CMD_OFFSET, &mut fallbacks);
        let arg_offset = field("syscalls", "sys_enter_ioctl", "arg", 32, &mut fallbacks);
        let ret_offset = field("syscalls", "sys_exit_ioctl", "ret", 16, &mut fallbacks);
        // aya-log's levels number like the log crate's (off 0, error 1 … trace 5).
        let log_level = log::max_level() as u8;
        let mut loader = EbpfLoader::new();
        if let Some(bytes) = ring_bytes()? {
            loader.map_max_entries("EVENTS", bytes);
        }
        for &(map, entries) in max_entries {
            loader.map_max_entries(map, entries);
        }
        let mut ebpf = loader
            .override_global("IOCTL_CMD_OFFSET", &cmd_offset, true)
            .override_global("IOCTL_ARG_OFFSET", &arg_offset, true)
            .override_global("IOCTL_RET_OFFSET", &ret_offset, true)
            .override_global(aya_log::LEVEL, &log_level, false)
            .load(EBPF_OBJECT)
            .map_err(ProbeError::Load)?;
        let log = ProgramLog::start(&mut ebpf);
        Ok(Self { ebpf, fallbacks, log, detaching: Vec::new() })
    }

    /// Hands the programs' diagnostics logged so far to migtrace's log now.
    pub fn flush_log(&self) {
        if let Some(l) = &self.log {
            l.logger.lock().unwrap_or_else(|p| p.into_inner()).flush();
        }
    }

    /// Adds a process to the kernel-side filter of programs that trace by process.
    pub fn add_target(&mut self, tgid: u32, role: Role) -> Result<(), ProbeError> {
        self.targets()?.insert(tgid, role as u32, 0).map_err(|source| ProbeError::Map { name: "TARGETS", source })
    }

    /// Removes a process from the filter; unknown processes are ignored.
    pub fn remove_target(&mut self, tgid: u32) -> Result<(), ProbeError> {
        match self.targets()?.remove(&tgid) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(ProbeError::Map { name: "TARGETS", source }),
        }
    }

    fn targets(&mut self) -> Result<HashMap<&mut MapData, u32, u32>, ProbeError> {
        let map = self.ebpf.map_mut("TARGETS").ok_or(ProbeError::Missing { what: "map", name: "TARGETS" })?;
        HashMap::try_from(map).map_err(|source| ProbeError::Map { name: "TARGETS", source })
    }

    /// Takes the ring buffer every program writes to, for a [`Collector`].
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self.ebpf.take_map("EVENTS").ok_or(ProbeError::Missing { what: "map", name: "EVENTS" })?;
        RingBuf::try_from(map).map_err(|source| ProbeError::Map { name: "EVENTS", source })
    }

    /// Records lost so far because the ring buffer was full, summed over CPUs.
    pub fn loss(&self) -> Result<Loss, ProbeError> {
        let map = self.ebpf.map("LOSS").ok_or(ProbeError::Missing { what: "map", name: "LOSS" })?;
        let array: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(|source| ProbeError::Map { name: "LOSS", source })?;
        let mut by_kind = [0u64; LOSS_MAP_LEN as usize];
        for (kind, slot) in by_kind.iter_mut().enumerate() {
            let values = array.get(&(kind as u32), 0).map_err(|source| ProbeError::Map { name: "LOSS", source })?;
            *slot = values.iter().sum();
        }
        Ok(Loss { by_kind })
    }

    /// How often each diagnostic of the eBPF programs was raised so far, summed over CPUs.
    pub fn diagnostics(&self) -> Result<Diagnostics, ProbeError> {
        let map = self.ebpf.map("DIAG_COUNT").ok_or(ProbeError::Missing { what: "map", name: "DIAG_COUNT" })?;
        let array: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(|source| ProbeError::Map { name: "DIAG_COUNT", source })?;
        let mut by_diag = [0u64; Diag::COUNT as usize];
        for (d, slot) in by_diag.iter_mut().enumerate() {
            let values = array.get(&(d as u32), 0).map_err(|source| ProbeError::Map { name: "DIAG_COUNT", source })?;
            *slot = values.iter().sum();
        }
        Ok(Diagnostics { by_diag })
    }

    /// A program of the object, loaded into the kernel on first use.
    fn program<'a, T>(&'a mut self, name: &'static str) -> Result<&'a mut T, ProbeError>
    where
        &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
        T: Loadable + 'a,
    {
        let program = self.ebpf.program_mut(name).ok_or(ProbeError::Missing { what: "program", name })?;
        let program: &mut T = program.try_into().map_err(|source| ProbeError::Program { name, source })?;
        if !program.is_loaded() {
            program.load_program().map_err(|source| ProbeError::Program { name, source })?;
        }
        Ok(program)
    }
}

/// Loss counters by event kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Loss {
    pub by_kind: [u64; LOSS_MAP_LEN as usize],
}

impl Loss {
    pub fn total(&self) -> u64 {
        self.by_kind.iter().sum()
    }

    /// Losses since `earlier`.
    pub fn since(&self, earlier: &Loss) -> Loss {
        let mut by_kind = self.by_kind;
        for (now, before) in by_kind.iter_mut().zip(earlier.by_kind) {
            *now = now.saturating_sub(before);
        }
        Loss { by_kind }
    }
}

/// Counts of the eBPF programs' diagnostics ([`Diag`]), indexed by discriminant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics {
    pub by_diag: [u64; Diag::COUNT as usize],
}

impl Diagnostics {
    /// Diagnostics raised since `earlier`.
    pub fn since(&self, earlier: &Diagnostics) -> Diagnostics {
        let mut by_diag = self.by_diag;
        for (now, before) in by_diag.iter_mut().zip(earlier.by_diag) {
            *now = now.saturating_sub(before);
        }
        Diagnostics { by_diag }
    }

    /// The diagnostics raised, by name, without the ring buffer's (its losses are
    /// counted per kind in [`Loss`]).
    pub fn named(&self) -> std::collections::BTreeMap<String, u64> {
        Diag::ALL
            .into_iter()
            .zip(self.by_diag)
            .filter(|&(d, n)| d != Diag::RingFull && n > 0)
            .map(|(d, n)| (diag_name(d).to_owned(), n))
            .collect()
    }
}

/// A diagnostic's name in records: `*-full` for a kernel map that was full (what it
/// would have held is missing), `*-layout` for a layout the programs could not read.
pub fn diag_name(d: Diag) -> &'static str {
    match d {
        Diag::RingFull => "ring-full",
        Diag::KvmStatsFull => "kvm-stats-full",
        Diag::VcpuRunFull => "vcpu-run-full",
        Diag::InflightFull => "inflight-full",
        Diag::SavedArgsFull => "saved-args-full",
        Diag::RoundFull => "round-full",
        Diag::IoctlLayout => "ioctl-layout",
        Diag::IpLayout => "ip-layout",
        Diag::DirtyLogArgFull => "dirty-log-arg-full",
        Diag::SlotPagesFull => "slot-pages-full",
    }
}

/// Program types with a uniform "load" for [`Probes::program`].
trait Loadable {
    fn is_loaded(&self) -> bool;
    fn load_program(&mut self) -> Result<(), ProgramError>;
}

macro_rules! loadable {
    ($($ty:ty),*) => {$(
        impl Loadable for $ty {
            fn is_loaded(&self) -> bool {
                self.fd().is_ok()
            }
            fn load_program(&mut self) -> Result<(), ProgramError> {
                self.load()
            }
        }
    )*};
}
loadable!(aya::programs::UProbe, aya::programs::TracePoint, aya::programs::SchedClassifier);
