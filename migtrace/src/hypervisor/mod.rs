//! A pair of hosts that can migrate a VM, whatever runs them: the embedded QEMU lab
//! ([`crate::lab::Lab`]) or two libvirt hosts ([`libvirt`]). Measurement and experiments
//! are written against this trait and these neutral types only: what a backend reports
//! is mapped into them, labelled with where it came from.

pub mod console;
pub mod features;
pub mod libvirt;
pub mod link;
pub mod qmp;

use serde::{Deserialize, Serialize};

pub use workloads::verify::MemoryCheck;

/// Knobs of one migration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationParams {
    /// Bytes per second; None keeps the hypervisor's default.
    pub max_bandwidth: Option<u64>,
    /// Milliseconds; None keeps the hypervisor's default.
    pub downtime_limit_ms: Option<u64>,
    /// Bytes per second QEMU assumes for the switchover when deciding whether what is
    /// left fits in the downtime limit (`avail-switchover-bandwidth`, QEMU ≥ 8.2); None:
    /// QEMU's own estimate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avail_switchover_bandwidth: Option<u64>,
    /// Give up (and cancel) after this many seconds.
    pub timeout_s: f64,
    /// The link between the hosts as configured, and what the migration achieved over
    /// it; filled in by the measurement (a knob of the hosts, not of `migrate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<link::LinkRecord>,
}

/// What both hosts run: the hypervisor build, how it executes the guest, the guest's
/// size, and any deviation from a plain machine (recorded with every migration).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// `qemu`.
    pub hypervisor: String,
    /// Release, e.g. `7.2.22`.
    pub version: String,
    /// The build's own description, e.g. `QEMU emulator version 7.2.22 (Debian …)`.
    pub description: String,
    pub binary: String,
    /// `kvm` or `tcg`.
    pub accelerator: String,
    /// Why not KVM, when TCG.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator_reason: Option<String>,
    /// Guest RAM as configured, bytes.
    pub ram_bytes: u64,
    pub vcpus: u32,
    /// What the guest is: `linux` (kernel, initramfs, workloads agent) or `minimal`
    /// (migtrace's bare-metal guest, no network).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub guest: String,
    /// KVM dirty ring entries per vCPU, when KVM tracked dirty pages in rings instead of
    /// bitmaps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_ring: Option<u32>,
    /// Workarounds applied, each with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workarounds: Vec<String>,
    /// The hosts' kernel release.
    #[serde(default)]
    pub host_kernel: String,
}

/// The hypervisor's (major, minor) release on each host of the next migration, when
/// known. Hosts may differ: QEMU numbers its migration states differently from 9.1 on,
/// so each host's trace is decoded with its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Versions {
    pub source: Option<(u32, u32)>,
    pub destination: Option<(u32, u32)>,
}

impl Versions {
    /// Both hosts run the same release.
    pub fn both(version: Option<(u32, u32)>) -> Self {
        Self { source: version, destination: version }
    }
}

/// An event a hypervisor host reported, stamped by that host (QEMU's QMP events carry
/// microsecond wall-clock stamps).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostEvent {
    pub event: String,
    /// Unix time in microseconds, from the event's `timestamp`.
    pub unix_us: i64,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
}

impl HostEvent {
    /// The `status` of a MIGRATION event.
    pub fn migration_status(&self) -> Option<&str> {
        (self.event == "MIGRATION").then(|| self.data["status"].as_str()).flatten()
    }
}

/// What the hypervisor itself reported about a migration: QEMU's `query-migrate` (its
/// field names, every field optional: QEMU versions differ), or libvirt's completed job
/// statistics mapped onto the same fields. `reported_by` says which.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ReportedStats {
    /// `qemu query-migrate` or `libvirt job stats`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Milliseconds from the start of the migration to its end (source side).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_time: Option<u64>,
    /// The hypervisor's downtime, ms. QEMU's: source VM stopped until the source
    /// finished. libvirt's: its own clock around the switchover, both hosts mixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup_time: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_downtime: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_desc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram: Option<RamStats>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RamStats {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transferred: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normal: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normal_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_sync_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_pages_rate: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mbps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages_per_second: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precopy_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_bytes: Option<u64>,
}

/// How a migration ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Completed,
    Failed,
    TimedOut,
}

/// What the hypervisor side observed of one migration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MigrationOutcome {
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// "<source host> → <destination host>".
    pub direction: String,
    pub source_pid: u32,
    pub destination_pid: u32,
    /// Wall clock when the migration command was issued, Unix µs.
    pub start_unix_us: i64,
    /// CLOCK_MONOTONIC ns when the command was issued.
    pub start_ns: u64,
    /// CLOCK_MONOTONIC ns when completion was observed on the source and the destination
    /// was seen running (the end of the paper's "command" time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_ns: Option<u64>,
    /// The hypervisor's own statistics on the source (QEMU's query-migrate, or libvirt's
    /// completed job statistics).
    pub stats: ReportedStats,
    /// The same on the destination, where the backend reports it (libvirt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_stats: Option<ReportedStats>,
    /// Hypervisor events on both sides, with their own timestamps.
    pub source_events: Vec<HostEvent>,
    pub destination_events: Vec<HostEvent>,
}

impl MigrationOutcome {
    /// A completed lab migration with nothing observed, for tests to fill in.
    #[cfg(test)]
    pub(crate) fn completed_for_test(end_ns: Option<u64>) -> Self {
        Self {
            status: Status::Completed,
            error: None,
            direction: "tap-a → tap-b".into(),
            source_pid: 1,
            destination_pid: 2,
            start_unix_us: 0,
            start_ns: 0,
            end_ns,
            stats: ReportedStats::default(),
            destination_stats: None,
            source_events: Vec::new(),
            destination_events: Vec::new(),
        }
    }

    /// The paper's migration time: runtime of the command that triggers the migration.
    pub fn command_ms(&self) -> Option<f64> {
        self.end_ns.map(|e| e.saturating_sub(self.start_ns) as f64 / 1e6)
    }
}

/// What the guest itself said after a migration (its console, for the lab).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GuestCheck {
    /// The guest kernel reported a panic, an oops or a BUG after the migration.
    pub crashed: bool,
    /// The guest booted again (its agent started anew).
    pub rebooted: bool,
    /// The guest answered no probe sent after it resumed (hung, or its network is dead);
    /// for a guest without network: sent no heartbeat after it resumed.
    #[serde(default)]
    pub unreachable: bool,
    /// The first lines of the report, for the record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub console: Vec<String>,
    /// The guest's check of its working set after the migration (migtrace's guest
    /// agent): pages that did not hold what was last written to them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_check: Option<MemoryCheck>,
    /// Pages the guest's dirty-pages generator found stale as it overwrote them, as its
    /// console reported after the migration (seen even when the guest then crashed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_writes: Option<u64>,
}

impl GuestCheck {
    /// Nothing wrong with the guest; one that was silent through the observation but
    /// answered its memory check afterwards came back (only slower than observed).
    pub fn healthy(&self) -> bool {
        !self.crashed && !self.rebooted && (!self.unreachable || self.came_back()) && !self.corrupted()
    }

    /// The guest answered after the observation: its memory check came back (over its
    /// network or its serial port), so a silence during the observation was not a hang.
    pub fn came_back(&self) -> bool {
        self.memory_check.is_some()
    }

    /// The guest's memory lost writes in the migration.
    pub fn corrupted(&self) -> bool {
        self.memory_check.as_ref().is_some_and(|m| m.corrupted_pages() > 0) || self.stale_writes.is_some_and(|n| n > 0)
    }

    /// The guest is gone for good (not even rebooted): later migrations of it are moot.
    pub fn dead(&self) -> bool {
        (self.crashed || (self.unreachable && !self.came_back())) && !self.rebooted
    }
}

/// A guest heartbeat as a host saw it arrive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// CLOCK_MONOTONIC ns when the host read it.
    pub ts_ns: u64,
    /// The host it came from (as in [`HostPair::endpoints`]).
    pub host: String,
}

/// A source and a destination host that can migrate one VM back and forth.
#[allow(async_fn_in_trait)]
pub trait HostPair {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Process ids of the hypervisor processes running (source) and receiving
    /// (destination) the VM, for tracing. Both on this host for the lab.
    fn pids(&self) -> (u32, u32);

    /// Names of the source and destination hosts (for the lab: their tap devices).
    fn endpoints(&self) -> (String, String);

    /// The hypervisor's (major, minor) release on the source and the destination of the
    /// next migration, when known.
    fn hypervisor_versions(&self) -> Versions;

    /// What both hosts run (hypervisor build, accelerator, guest RAM, workarounds).
    fn machine(&self) -> Machine;

    /// Migrates the VM from source to destination and returns what happened. A migration
    /// that fails, times out or loses its destination is an `Ok` outcome with that status
    /// and the error; `Err` means it could not even be started.
    async fn migrate(&mut self, params: &MigrationParams) -> Result<MigrationOutcome, Self::Error>;

    /// How the guest is doing after the last migration, if the hosts can tell (None:
    /// they cannot see the guest's console).
    fn guest_check(&self) -> Option<GuestCheck>;

    /// After a completed migration: make the old source ready to receive the VM back.
    async fn prepare_next(&mut self) -> Result<(), Self::Error>;

    /// After a completed migration, while its observation ends: start what
    /// [`HostPair::prepare_next`] would do, so that it is quick. Returns the pid of a
    /// hypervisor process started for the next migration, to trace from its start. The
    /// measured migration's processes keep running or have already done their part: the
    /// lab quits the old source (its migration is over) and starts the next incoming
    /// QEMU. Default: nothing ahead.
    async fn prepare_ahead(&mut self) -> Result<Option<u32>, Self::Error> {
        Ok(None)
    }

    /// Why the guest cannot be reached over the network, if it cannot (a guest without
    /// a NIC): the ping and probe measures are then missing with this reason.
    fn guest_offline(&self) -> Option<String> {
        None
    }

    /// After a completed migration: the guest's check of its working set over a channel
    /// of the hosts' own (the minimal guest's serial port), waiting up to `timeout`
    /// beyond the check's own duration. None: no such channel (ask over the network).
    async fn memory_check(&mut self, _timeout: std::time::Duration) -> Option<Result<MemoryCheck, String>> {
        None
    }

    /// Heartbeats the guest sent since `since_ns`, from both hosts, in time order. None:
    /// this guest sends none.
    fn heartbeats(&self, _since_ns: u64) -> Option<Vec<Heartbeat>> {
        None
    }

    /// The link the migration stream crosses, as configured, if the hosts know it (the
    /// labs shape their own).
    fn link(&self) -> Option<link::LinkConfig> {
        None
    }

    /// Bytes the source host's end of the link has sent so far, if the hosts can read
    /// its counter.
    fn link_tx_bytes(&self) -> Option<u64> {
        None
    }
}
