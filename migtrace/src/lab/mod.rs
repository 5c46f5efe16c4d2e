//! The embedded two-host lab: two QEMU processes, each in the network namespace of its
//! host, joined by a shaped link, that behave like a source and a destination
//! hypervisor host.
//!
//! - [`image`]: the guest kernel and initramfs (busybox + the `workloads` agent).
//! - [`minimal`]: migtrace's minimal bare-metal guest, for KVM where Linux cannot run.
//! - [`netns`]: the hosts' namespaces, the link between them, the switch and the client.
//! - [`qemu`]: starting and stopping one QEMU (QMP: [`crate::hypervisor::qmp`]; children
//!   that die with migtrace: [`crate::sys::tied`]).
//!
//! Migrations ping-pong: after each one the old source is replaced by a fresh `-incoming`
//! QEMU on its tap, which becomes the next destination; the guest keeps running.

pub mod image;
pub mod libvirt;
mod migrate;
pub mod minimal;
pub mod netns;
pub mod qemu;
pub mod registry;

use std::{fmt, path::PathBuf, time::Duration};

use migtrace_common::host::{self, Accel, KvmFlavour};
use qapi::qmp as q;
use tokio::time::Instant;
use workloads::spec::Spec;

use crate::hypervisor::{
    MigrationParams,
    features::{self, FeatureError},
    link::{LinkConfig, LinkRate},
    qmp::QmpError,
};

use self::{
    image::{GuestImage, ImageError},
    minimal::MinimalError,
    netns::{GUEST_IP, GuestNet, LINK_IPS, LabNet, LabNetError, NetError, PREFIX_LEN, TAPS},
    qemu::{MachineSpec, Qemu, QemuError},
};

/// Where a destination listens, on its host's end of the link.
pub const MIGRATION_PORT: u16 = 4444;

/// The host (0: a, 1: b) a QEMU of the lab runs on, by its tap.
fn host_of(tap: &str) -> usize {
    usize::from(tap == TAPS[1])
}

/// The migration URI of a destination on `tap`'s host: its address on the link.
pub fn migration_uri(tap: &str) -> String {
    format!("tcp:{}:{MIGRATION_PORT}", LINK_IPS[host_of(tap)])
}

/// The link the lab's hosts get unless told otherwise: the paper's 1 GbE.
pub fn default_link() -> LinkConfig {
    LinkConfig { rate: LinkRate::BitsPerSecond(1_000_000_000), delay_ms: None, shaper: String::new() }
}

/// What the lab boots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestKind {
    /// A Linux kernel with a busybox initramfs and the `workloads` agent, on the lab's
    /// network: every measure, but only under TCG on hosts without vmx/svm.
    #[default]
    Linux,
    /// migtrace's bare-metal guest ([`minimal`]): no network, runs under KVM also on
    /// kvm_pvm hosts.
    Minimal,
}

impl GuestKind {
    pub fn name(self) -> &'static str {
        match self {
            GuestKind::Linux => "linux",
            GuestKind::Minimal => "minimal",
        }
    }
}

impl fmt::Display for GuestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug)]
pub struct LabConfig {
    pub vmsize_mib: u32,
    pub vcpus: u32,
    /// None: KVM when usable, else TCG.
    pub accel: Option<Accel>,
    pub workload: Spec,
    pub kernel: Option<PathBuf>,
    pub boot_timeout: Duration,
    /// Which QEMU build: `system`, a version (`10.0`) or a path; None: the system's.
    pub qemu: Option<String>,
    /// Under TCG with QEMU < 9.0, give the guest VMSIZE + 8 KiB of RAM so QEMU takes its
    /// slow, correct dirty-bitmap sync (off: reproduce the lost-dirty-page bug).
    pub tcg_dirty_workaround: bool,
    /// What the lab boots.
    pub guest: GuestKind,
    /// KVM tracks dirty pages in per-vCPU rings of this many entries instead of
    /// bitmaps (QEMU's `dirty-ring-size`): every page KVM marks dirty is then a
    /// `kvm:kvm_dirty_ring_push`, counted per round. KVM only.
    pub dirty_ring: Option<u32>,
    /// The link between the hosts, which the migration stream crosses.
    pub link: LinkConfig,
}

impl Default for LabConfig {
    fn default() -> Self {
        Self {
            vmsize_mib: 256,
            vcpus: 1,
            accel: None,
            workload: Spec::idle(),
            kernel: None,
            boot_timeout: Duration::from_secs(90),
            qemu: None,
            tcg_dirty_workaround: true,
            guest: GuestKind::Linux,
            dirty_ring: None,
            link: default_link(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("the lab needs root (network namespaces, taps, eBPF): run migtrace as root")]
    NotRoot,
    #[error(
        "the lab needs CAP_SYS_ADMIN and CAP_NET_ADMIN (namespaces, mounts, taps); this process lacks {0}: run \
         migtrace as root with its full capability set (a container: --privileged)"
    )]
    NoCapability(String),
    #[error(
        "workload wset={wset_mib} MiB must be smaller than the guest's {vmsize_mib} MiB (the guest kernel needs room too)"
    )]
    WsetTooLarge { wset_mib: u64, vmsize_mib: u32 },
    #[error("--vmsize {0} MiB is too small: the guest needs at least 128 MiB")]
    VmTooSmall(u32),
    #[error("--vcpus must be at least 1")]
    NoVcpus,
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Minimal(#[from] MinimalError),
    #[error("the minimal guest stopped at boot: {0}")]
    MinimalGuest(String),
    #[error("firmware {0} not found in the QEMU build's data directories (Debian: qemu-system-data)")]
    Firmware(&'static str),
    #[error("a dirty ring needs KVM, but the lab runs under TCG ({0})")]
    DirtyRingNeedsKvm(String),
    #[error("dirty ring size {0}: a power of two from 512 to 65536 entries")]
    DirtyRingSize(u32),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    LabNet(#[from] LabNetError),
    #[error(transparent)]
    Qemu(#[from] QemuError),
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error(transparent)]
    Feature(#[from] FeatureError),
    #[error(transparent)]
    QemuBuild(#[from] host::qemu::SelectError),
    #[error("lab state in {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A running lab.
pub struct Lab {
    pub id: String,
    pub config: LabConfig,
    pub accel: Accel,
    /// The Linux guest's image (None for the minimal guest).
    pub image: Option<GuestImage>,
    pub machine: MachineSpec,
    /// The QEMU running the guest.
    pub source: Option<Qemu>,
    /// The QEMU waiting for the next migration.
    pub destination: Option<Qemu>,
    /// Started ahead ([`Lab::prepare_ahead`]): the incoming QEMU for the migration after
    /// this one, on the tap the old source freed.
    next: Option<Qemu>,
    /// The tap whose QEMU quit ahead of [`Lab::swap_roles`].
    freed_tap: Option<&'static str>,
    /// Time from starting the first QEMU to the agent's start line.
    pub boot_time: Duration,
    /// The guest's start line (the agent's, or the minimal guest's): the workload it runs.
    pub agent_line: String,
    /// QEMU's (major, minor) version, from the build's `--version`.
    pub qemu_version: Option<(u32, u32)>,
    registry: registry::Entry,
    qemu_serial: u32,
    net: LabNet,
}

impl Lab {
    /// Builds the image if needed, creates the network, boots the source and starts the
    /// destination.
    pub async fn up(config: LabConfig) -> Result<Self, LabError> {
        validate(&config)?;
        let build = host::qemu::select(config.qemu.as_deref().unwrap_or("system"))?;
        let mut workarounds = Vec::new();
        let (image, kernel, append, accel, kvm_pvm, bios) = match config.guest {
            GuestKind::Linux => {
                let kernel = image::select_kernel(config.kernel.as_deref())?;
                let image = image::build(&kernel)?;
                let append = format!(
                    "console=ttyS0 quiet panic=-1 migtrace.ip={GUEST_IP}/{PREFIX_LEN} migtrace.workload={}",
                    config.workload
                );
                let accel = config.accel.clone().unwrap_or_else(host::detect_accel);
                (Some(image.clone()), image.kernel, append, accel, false, None)
            }
            GuestKind::Minimal => {
                let flavour = host::kvm_flavour();
                let accel = config.accel.clone().unwrap_or_else(|| match &flavour {
                    Ok(_) => Accel::Kvm,
                    Err(reason) => Accel::Tcg { reason: reason.clone() },
                });
                let kvm_pvm = accel == Accel::Kvm && flavour == Ok(KvmFlavour::Pvm);
                if kvm_pvm {
                    workarounds.push(
                        "kvm-pvm: -cpu host,arch-capabilities=off and qboot (the paravirtual kvm_pvm cannot set \
                         MSR 0x10a and runs no SeaBIOS; it runs only a guest that never enables interrupts and \
                         never faults, and emulates its instructions)"
                            .to_owned(),
                    );
                }
                // qboot: the fastest way into a PVH kernel, and the one firmware kvm_pvm runs.
                let bios = build.firmware(QBOOT).ok_or(LabError::Firmware(QBOOT))?;
                (None, minimal::elf()?, minimal::cmdline(&config.workload), accel, kvm_pvm, Some(bios))
            }
        };
        if let Some(size) = config.dirty_ring {
            if let Accel::Tcg { reason } = &accel {
                return Err(LabError::DirtyRingNeedsKvm(reason.clone()));
            }
            if !size.is_power_of_two() || !(512..=65536).contains(&size) {
                return Err(LabError::DirtyRingSize(size));
            }
        }
        let mut ram_kib = config.vmsize_mib as u64 * 1024;
        if matches!(accel, Accel::Tcg { .. }) && build.has_tcg_dirty_bug() && config.tcg_dirty_workaround {
            // QEMU < 9.0 syncs 256 KiB-aligned RAM blocks word by word without resetting
            // TCG's TLB_NOTDIRTY, losing later writes (fixed by 03bfc2188f06 in 9.0).
            ram_kib += qemu::TCG_DIRTY_WORKAROUND_KIB;
            workarounds.push(format!(
                "tcg-dirty-bitmap: guest RAM is VMSIZE + {} KiB so QEMU {} syncs dirty pages on its slow, correct path \
                 (QEMU < 9.0 loses TCG dirty pages of 256 KiB-aligned RAM blocks; fixed upstream by 03bfc2188f06)",
                qemu::TCG_DIRTY_WORKAROUND_KIB,
                build.version
            ));
        }
        let id = registry::new_id();
        let mut registry = registry::Entry::create(&id)?;
        for ns in LabNet::all_namespaces(&id).iter().skip(1) {
            registry.add_netns(ns)?;
        }
        let net = LabNet::create(&id, GuestNet::QEMU_LAB, &config.link)?;
        let qemu_version = Some((build.version.major, build.version.minor));
        let machine = MachineSpec {
            qemu: build,
            accel: accel.clone(),
            ram_kib,
            vcpus: config.vcpus,
            kernel,
            initramfs: image.as_ref().map(|i| i.initramfs.clone()),
            append,
            guest: config.guest,
            bios,
            kvm_pvm,
            dirty_ring: config.dirty_ring,
            workarounds,
        };
        let mut lab = Self {
            id,
            config,
            accel,
            image,
            machine,
            source: None,
            destination: None,
            next: None,
            freed_tap: None,
            boot_time: Duration::ZERO,
            agent_line: String::new(),
            qemu_version,
            registry,
            qemu_serial: 0,
            net,
        };
        let started = Instant::now();
        let mut source = lab.start_qemu(TAPS[0], false).await?;
        source.qmp.execute(q::migrate_set_capabilities { capabilities: vec![events_capability()] }).await?;
        let ready = match lab.config.guest {
            GuestKind::Linux => "migtrace-agent: ",
            GuestKind::Minimal => minimal::LINE_PREFIX,
        };
        lab.agent_line = source.wait_console(ready, lab.config.boot_timeout).await?;
        if let Some(message) = minimal::error_message(&lab.agent_line) {
            return Err(LabError::MinimalGuest(message));
        }
        lab.boot_time = started.elapsed();
        lab.registry.set_source_qmp(&source.user_qmp_socket)?;
        lab.source = Some(source);
        let destination = lab.start_destination(TAPS[1]).await?;
        lab.destination = Some(destination);
        Ok(lab)
    }

    /// What both hosts run, for every record.
    pub fn machine_info(&self) -> crate::hypervisor::Machine {
        let m = &self.machine;
        crate::hypervisor::Machine {
            hypervisor: "qemu".into(),
            version: m.qemu.version.to_string(),
            description: m.qemu.description.clone(),
            binary: m.qemu.binary.display().to_string(),
            accelerator: m.accel.qemu_name().into(),
            accelerator_reason: match &m.accel {
                Accel::Tcg { reason } => Some(reason.clone()),
                Accel::Kvm => None,
            },
            ram_bytes: m.ram_kib * 1024,
            vcpus: m.vcpus,
            guest: m.guest.name().into(),
            dirty_ring: m.dirty_ring,
            workarounds: m.workarounds.clone(),
            host_kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
        }
    }

    /// How the guest executes, for people.
    pub fn accel_label(&self) -> String {
        match (&self.accel, self.machine.kvm_pvm) {
            (Accel::Kvm, true) => "kvm (the paravirtual kvm_pvm, which runs only the minimal guest)".into(),
            (accel, _) => accel.to_string(),
        }
    }

    /// The client's namespace: where the guest is reached from (ping, probe sender).
    pub fn client_ns(&self) -> String {
        self.net.client_ns()
    }

    /// The namespace of the host behind `tap`.
    pub fn host_ns(&self, tap: &str) -> String {
        self.net.host_ns(host_of(tap))
    }

    /// The link as configured and shaped.
    pub fn link(&self) -> &LinkConfig {
        &self.net.link
    }

    /// The lab's network as the measurement session sees it: the guest reached from
    /// the client, its packets stamped at both hosts' taps.
    pub fn network(&self) -> crate::measure::session::Network {
        crate::measure::session::Network {
            ns: Some(self.client_ns()),
            guest: GUEST_IP,
            taps: TAPS.iter().map(|t| (self.host_ns(t), *t)).collect(),
            link: (0..2).map(|i| (self.net.host_ns(i), netns::LINK_IF)).collect(),
        }
    }

    pub fn runtime_dir(&self) -> PathBuf {
        self.registry.dir.clone()
    }

    async fn start_qemu(&mut self, tap: &'static str, incoming: bool) -> Result<Qemu, LabError> {
        self.qemu_serial += 1;
        let name = format!("migtrace-{}-q{}", self.id, self.qemu_serial);
        let ns = self.host_ns(tap);
        let qemu = Qemu::start(&self.machine, &name, &ns, tap, &self.registry.dir, incoming).await?;
        self.registry.add_qemu(qemu.pid)?;
        Ok(qemu)
    }

    /// Starts a QEMU waiting for an incoming migration on `tap`, with events enabled.
    async fn start_destination(&mut self, tap: &'static str) -> Result<Qemu, LabError> {
        let dest = self.start_qemu(tap, true).await?;
        dest.qmp.execute(q::migrate_set_capabilities { capabilities: vec![events_capability()] }).await?;
        dest.qmp
            .execute(q::migrate_incoming { uri: Some(migration_uri(tap)), channels: None, exit_on_error: None })
            .await?;
        Ok(dest)
    }

    /// After a completed migration: the destination runs the guest; the old source is
    /// stopped and replaced by a fresh incoming QEMU on its tap.
    pub async fn swap_roles(&mut self) -> Result<(), LabError> {
        if self.destination.is_none() {
            return Ok(());
        }
        let tap = match self.quit_source().await? {
            Some(tap) => tap,
            None => match self.freed_tap.take() {
                Some(tap) => tap,
                None => return Ok(()),
            },
        };
        let next = match self.next.take() {
            Some(next) => next,
            None => self.start_destination(tap).await?,
        };
        self.freed_tap = None;
        self.source = self.destination.take();
        if let Some(source) = &self.source {
            self.registry.set_source_qmp(&source.user_qmp_socket)?;
        }
        self.destination = Some(next);
        Ok(())
    }

    /// After a completed migration, before [`Lab::swap_roles`]: the old source quits and
    /// the next incoming QEMU starts on its tap, while the caller still observes the
    /// guest on the destination. Returns the new QEMU's pid. The minimal guest's old
    /// source keeps running: its serial port holds heartbeats still to be read.
    pub async fn prepare_ahead(&mut self) -> Result<Option<u32>, LabError> {
        if self.config.guest == GuestKind::Minimal || self.next.is_some() || self.destination.is_none() {
            return Ok(None);
        }
        let Some(tap) = self.quit_source().await? else { return Ok(None) };
        self.freed_tap = Some(tap);
        let next = self.start_destination(tap).await?;
        let pid = next.pid;
        self.next = Some(next);
        Ok(Some(pid))
    }

    /// Stops the source QEMU (after a completed migration it holds nothing of the
    /// guest) and returns the tap it freed.
    async fn quit_source(&mut self) -> Result<Option<&'static str>, LabError> {
        let Some(old) = self.source.take() else { return Ok(None) };
        let (tap, pid) = (old.tap, old.pid);
        old.stop().await;
        self.registry.remove_qemu(pid)?;
        Ok(Some(tap))
    }

    /// Stops both QEMUs and deletes the network. Dropping a `Lab` does the same, less
    /// gracefully (SIGKILL).
    pub async fn down(mut self) {
        for qemu in [self.source.take(), self.destination.take(), self.next.take()].into_iter().flatten() {
            qemu.stop().await;
        }
        let _ = self.net.delete();
        self.registry.remove();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // QEMU children are killed by kill_on_drop; the namespace by LabNet's Drop.
        self.source.take();
        self.destination.take();
        self.next.take();
        let _ = self.net.delete();
        self.registry.remove();
    }
}

/// Whether this process may build a lab: root, with the capabilities namespaces and
/// taps take.
pub fn check_privileges() -> Result<(), LabError> {
    use migtrace_common::host::cap;
    if !host::is_root() {
        return Err(LabError::NotRoot);
    }
    let missing: Vec<&str> =
        [cap::SYS_ADMIN, cap::NET_ADMIN].into_iter().filter(|c| !host::has_capability(*c)).map(cap::name).collect();
    if !missing.is_empty() {
        return Err(LabError::NoCapability(missing.join(", ")));
    }
    Ok(())
}

/// Checks a lab configuration before anything is started.
pub fn validate(config: &LabConfig) -> Result<(), LabError> {
    check_privileges()?;
    if config.vcpus == 0 {
        return Err(LabError::NoVcpus);
    }
    match config.guest {
        GuestKind::Linux => {
            if config.vmsize_mib < 128 {
                return Err(LabError::VmTooSmall(config.vmsize_mib));
            }
            if let Some(w) = config.workload.wset
                && w >> 20 >= config.vmsize_mib as u64
            {
                return Err(LabError::WsetTooLarge { wset_mib: w >> 20, vmsize_mib: config.vmsize_mib });
            }
        }
        GuestKind::Minimal => {
            if let Some(k) = &config.kernel {
                let why = format!("--kernel {}: it boots its own ELF, not a Linux kernel", k.display());
                return Err(MinimalError::Unsupported(why).into());
            }
            minimal::validate(&config.workload, config.vmsize_mib, config.vcpus)?
        }
    }
    Ok(())
}

/// The firmware the minimal guest boots with.
const QBOOT: &str = "qboot.rom";

fn events_capability() -> q::MigrationCapabilityStatus {
    q::MigrationCapabilityStatus { capability: q::MigrationCapability::events, state: true }
}

/// Whether QEMU `version` takes every knob of `params`.
pub fn check_parameters(params: &MigrationParams, version: Option<(u32, u32)>) -> Result<(), FeatureError> {
    if params.avail_switchover_bandwidth.is_some() {
        features::require(features::AVAIL_SWITCHOVER_BANDWIDTH, version)?;
    }
    Ok(())
}

/// Applies `max-bandwidth` (bytes/s), `downtime-limit` (ms) and
/// `avail-switchover-bandwidth` (bytes/s) on the source; what `params` leaves at None
/// keeps QEMU's value.
pub async fn set_migration_parameters(qemu: &Qemu, params: &MigrationParams) -> Result<(), QmpError> {
    let MigrationParams { max_bandwidth, downtime_limit_ms, avail_switchover_bandwidth, .. } = *params;
    if max_bandwidth.is_none() && downtime_limit_ms.is_none() && avail_switchover_bandwidth.is_none() {
        return Ok(());
    }
    let set = q::MigrateSetParameters {
        max_bandwidth,
        downtime_limit: downtime_limit_ms,
        avail_switchover_bandwidth,
        ..Default::default()
    };
    qemu.qmp.execute(q::migrate_set_parameters(set)).await.map(|_| ())
}
