//! Load migtrace's eBPF programs into the running kernel, attach them, stream events.
//!
//! One file per probe family (what the programs observe); [`collector`] drains the shared
//! ring buffer. Programs are loaded once per [`Probes`]; dropping it detaches everything.

pub mod collector;
pub mod kvm;
pub mod net;
pub mod qemu;
pub mod selftest;
pub mod symbols;
pub mod tracer;

use std::io;

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::ProgramError,
};
pub use collector::{Collector, CollectorStats, Event};
use migtrace_common::event::{LOSS_MAP_LEN, Role};

/// The eBPF object built by `cargo xtask build`; empty when built without it.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/migtrace.bpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("this migtrace binary was built without its eBPF object: build it with `cargo xtask build`")]
    NotBuilt,
    #[error("loading eBPF programs needs root (CAP_BPF and CAP_PERFMON): run migtrace as root")]
    NotRoot,
    #[error("tracefs is not mounted and mounting it at /sys/kernel/tracing failed: {0}")]
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
}

/// Whether this binary carries its eBPF programs.
pub fn is_built() -> bool {
    !EBPF_OBJECT.is_empty()
}

/// The loaded eBPF object: programs, maps, and the links of attached programs.
pub struct Probes {
    ebpf: Ebpf,
}

impl Probes {
    /// Loads the embedded eBPF object. Programs are loaded lazily, when first attached.
    pub fn load() -> Result<Self, ProbeError> {
        if !is_built() {
            return Err(ProbeError::NotBuilt);
        }
        if !migtrace_common::host::is_root() {
            return Err(ProbeError::NotRoot);
        }
        migtrace_common::host::ensure_tracefs().map_err(ProbeError::Tracefs)?;
        // The ioctl tracepoint's layout is read from tracefs, not assumed.
        let cmd_offset = kvm::field_offset("syscalls", "sys_enter_ioctl", "cmd").unwrap_or(24);
        let arg_offset = kvm::field_offset("syscalls", "sys_enter_ioctl", "arg").unwrap_or(32);
        let ret_offset = kvm::field_offset("syscalls", "sys_exit_ioctl", "ret").unwrap_or(16);
        let ebpf = EbpfLoader::new()
            .override_global("IOCTL_CMD_OFFSET", &cmd_offset, true)
            .override_global("IOCTL_ARG_OFFSET", &arg_offset, true)
            .override_global("IOCTL_RET_OFFSET", &ret_offset, true)
            .load(EBPF_OBJECT)
            .map_err(ProbeError::Load)?;
        Ok(Self { ebpf })
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
