//! A tracing session over a pair of hypervisor processes: everything loaded once,
//! QEMU processes watched as they come and go, one [`Trace`] per migration.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use migtrace_common::event::{
    KvmWhat, PHASE_ARG_FAULT_MASK, PHASE_ARGS_NOT_SAVED, PHASE_RETURN, PacketKind, PhaseEvent, PhasePoint, VcpuRun,
};
use serde::{Deserialize, Serialize};

use super::{
    Collector, CollectorStats, Diagnostics, Event, Loss, ProbeError, Probes,
    collector::Sink,
    kvm::KvmCounts,
    net::NetProbeError,
    qemu::{QemuProbes, SymbolCache},
    store::EventStore,
};

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Net(#[from] NetProbeError),
    #[error("starting the event collector: {0}")]
    Collector(#[source] std::io::Error),
}

/// What the probes saw of one migration, in a serialisable form (records can keep it,
/// tests replay it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    pub source_pid: u32,
    pub destination_pid: u32,
    /// QEMU function entries and returns of both processes, in time order.
    pub phases: Vec<PhaseStamp>,
    /// Guest packets at the taps, in time order.
    pub packets: Vec<PacketStamp>,
    /// KVM activity of the source per round.
    pub source_kvm: Vec<RoundKvm>,
    pub source_vcpus: Vec<VcpuStamp>,
    pub destination_vcpus: Vec<VcpuStamp>,
    pub health: TraceHealth,
    /// When each host had a tracer of its own (agents), the host that traced each side:
    /// its phases carry its name (two hosts' QEMUs may have the same pid). None: one
    /// tracer saw both QEMUs (the lab), its phases carry no host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_host: Option<TraceHost>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_host: Option<TraceHost>,
    /// The lab's link, when its classifier counted what crossed it (each phase stamp
    /// then carries the count in `link_bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkTrace>,
}

/// A host that traced one side of a migration with its own tracer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceHost {
    pub name: String,
    /// When its tracer attached to the domain's QEMU (this trace's clock; 0: never): it
    /// saw nothing of that QEMU before.
    pub attached_ns: u64,
}

/// The link's counter at the end of a migration's trace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkTrace {
    /// Data bytes the link had carried (since the programs were loaded).
    pub bytes: u64,
    /// When its last data packet arrived (monotonic ns; 0: none yet).
    pub last_data_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "PhaseStampRecord")]
pub struct PhaseStamp {
    pub ts_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    /// A [`PhasePoint`] name, e.g. `DirtyLogSync`.
    pub point: String,
    /// Return probe (else entry).
    pub ret: bool,
    /// Entry: the first arguments. Return: values read through pointer arguments (0
    /// where `unread` says they could not be read).
    pub args: [u64; 3],
    /// Return: the function's return value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub returned: Option<u64>,
    /// Entry: the process's round counter (its dirty-log syncs so far).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<u32>,
    /// Return: why values behind pointer arguments are missing from `args`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unread: Option<Unread>,
    /// Data bytes the lab's link had carried when the probe fired (meaningful when the
    /// trace has a `link`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub link_bytes: u64,
    /// The host whose tracer saw it, in a trace merged from several hosts' tracers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// Why a return probe could not read the values behind pointer arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unread {
    /// The entry probe saved no arguments for the call: it began before the probe was
    /// attached, or the kernel's `SAVED_ARGS` map was full. No value was read.
    NotSaved,
    /// Reading through a pointer argument failed for at least one value.
    ReadFault,
}

impl Unread {
    /// Of a kernel record's flags.
    pub fn of_flags(flags: u32) -> Option<Self> {
        if flags & PHASE_ARGS_NOT_SAVED != 0 {
            Some(Self::NotSaved)
        } else if flags & PHASE_ARG_FAULT_MASK != 0 {
            Some(Self::ReadFault)
        } else {
            None
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Self::NotSaved => {
                "the entry probe saved no arguments for that call (it began before the probe was attached, or \
                 SAVED_ARGS was full)"
            }
            Self::ReadFault => "reading its out-parameters faulted",
        }
    }
}

impl Trace {
    /// Applies `f` to every stamp of the host's clock (phases, packets, vCPU runs, the
    /// link's last packet): the one list of what converts when the host's clock is not
    /// ours. A 0 stamp means "never" and stays 0; the echoed send stamps in packets are
    /// the sender's and stay.
    pub fn map_stamps(&mut self, f: impl Fn(u64) -> u64) {
        let f = |t: u64| if t == 0 { 0 } else { f(t) };
        for p in &mut self.phases {
            p.ts_ns = f(p.ts_ns);
        }
        for p in &mut self.packets {
            p.ts_ns = f(p.ts_ns);
        }
        for v in self.source_vcpus.iter_mut().chain(&mut self.destination_vcpus) {
            (v.first_enter_ns, v.last_enter_ns, v.last_exit_ns) =
                (f(v.first_enter_ns), f(v.last_enter_ns), f(v.last_exit_ns));
        }
        if let Some(link) = &mut self.link {
            link.last_data_ns = f(link.last_data_ns);
        }
    }

    /// Whether `s` is a stamp of the source's QEMU: its pid and, in a trace merged from
    /// several hosts, its host.
    pub fn from_source(&self, s: &PhaseStamp) -> bool {
        s.tgid == self.source_pid && s.host.as_deref() == self.source_host.as_ref().map(|h| h.name.as_str())
    }

    /// Whether `s` is a stamp of the destination's QEMU (see [`Trace::from_source`]).
    pub fn from_destination(&self, s: &PhaseStamp) -> bool {
        s.tgid == self.destination_pid && s.host.as_deref() == self.destination_host.as_ref().map(|h| h.name.as_str())
    }
}

/// A phase stamp as records hold it. Records written before `returned` and `round`
/// hold one `value`: the return value on returns, the round counter on entries.
#[derive(Deserialize)]
struct PhaseStampRecord {
    ts_ns: u64,
    tgid: u32,
    tid: u32,
    point: String,
    ret: bool,
    args: [u64; 3],
    #[serde(default)]
    returned: Option<u64>,
    #[serde(default)]
    round: Option<u32>,
    #[serde(default)]
    unread: Option<Unread>,
    #[serde(default)]
    link_bytes: u64,
    #[serde(default)]
    value: Option<u64>,
    #[serde(default)]
    host: Option<String>,
}

impl From<PhaseStampRecord> for PhaseStamp {
    fn from(r: PhaseStampRecord) -> Self {
        let (returned, round) = if r.ret {
            (r.returned.or(r.value), None)
        } else {
            (None, r.round.or(r.value.and_then(|v| u32::try_from(v).ok())))
        };
        Self {
            ts_ns: r.ts_ns,
            tgid: r.tgid,
            tid: r.tid,
            point: r.point,
            ret: r.ret,
            args: r.args,
            returned,
            round,
            unread: r.unread,
            link_bytes: r.link_bytes,
            host: r.host,
        }
    }
}

impl PhaseStamp {
    pub fn point(&self) -> Option<PhasePoint> {
        PhasePoint::ALL.into_iter().find(|p| format!("{p:?}") == self.point)
    }

    /// Of a kernel record.
    pub fn of_event(e: &PhaseEvent, point: PhasePoint) -> Self {
        let ret = e.flags & PHASE_RETURN != 0;
        Self {
            ts_ns: e.header.ts_ns,
            tgid: e.header.tgid,
            tid: e.header.tid,
            point: format!("{point:?}"),
            ret,
            args: e.args,
            returned: ret.then_some(e.ret),
            round: (!ret).then(|| u32::try_from(e.ret).ok()).flatten(),
            unread: if ret { Unread::of_flags(e.flags) } else { None },
            link_bytes: e.link_bytes,
            // One tracer saw it; a merge of several hosts' traces names the host.
            host: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PacketStamp {
    pub ts_ns: u64,
    /// Tap name (the host the guest sent from), or the ifindex if unknown.
    pub tap: String,
    /// `icmp-echo-reply`, `udp-probe-reply`, `rarp`, `arp`.
    pub kind: String,
    pub ident: u16,
    pub seq: u16,
    /// The first 8 payload bytes (big-endian): for migtrace's probe replies, the echoed
    /// send stamp of the request (monotonic ns); meaningless for other packets.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sent_ns: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundKvm {
    pub round: u32,
    /// `get-dirty-log`, `clear-dirty-log`, `reset-dirty-rings`, `run`, `dirty-ring-push`,
    /// `dirty-pages` (pages set in the KVM_GET_DIRTY_LOG bitmaps; count only),
    /// `dirty-pages-truncated` and `dirty-pages-unread` (bitmaps counted in part), …
    pub what: String,
    #[serde(flatten)]
    pub counts: KvmCounts,
}

/// When one vCPU thread ran guest code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuStamp {
    pub tid: u32,
    pub first_enter_ns: u64,
    pub last_enter_ns: u64,
    pub last_exit_ns: u64,
    pub enters: u64,
}

pub fn kvm_what_name(what: KvmWhat) -> &'static str {
    match what {
        KvmWhat::GetDirtyLog => "get-dirty-log",
        KvmWhat::ClearDirtyLog => "clear-dirty-log",
        KvmWhat::ResetDirtyRings => "reset-dirty-rings",
        KvmWhat::Run => "run",
        KvmWhat::DirtyRingPush => "dirty-ring-push",
        KvmWhat::DirtyRingReset => "dirty-ring-reset",
        KvmWhat::DirtyRingExit => "dirty-ring-exit",
        KvmWhat::DirtyPages => "dirty-pages",
        KvmWhat::DirtyPagesTruncated => "dirty-pages-truncated",
        KvmWhat::DirtyPagesUnread => "dirty-pages-unread",
    }
}

fn packet_kind_name(kind: u32) -> &'static str {
    match PacketKind::from_u32(kind) {
        Some(PacketKind::IcmpEchoReply) => "icmp-echo-reply",
        Some(PacketKind::UdpProbeReply) => "udp-probe-reply",
        Some(PacketKind::Rarp) => "rarp",
        Some(PacketKind::Arp) => "arp",
        None => "unknown",
    }
}

fn vcpu_stamps(runs: BTreeMap<u32, VcpuRun>) -> Vec<VcpuStamp> {
    runs.into_iter()
        .map(|(tid, r)| VcpuStamp {
            tid,
            first_enter_ns: r.first_enter_ns,
            last_enter_ns: r.last_enter_ns,
            last_exit_ns: r.last_exit_ns,
            enters: r.enters,
        })
        .collect()
}

/// How trustworthy a trace is: losses, and what could not be probed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceHealth {
    /// Records the kernel could not hand over during this migration (ring buffer full).
    pub lost_records: u64,
    /// Records of this migration that did not decode (userspace and kernel from
    /// different builds).
    pub undecodable_records: u64,
    /// QEMU functions the source's and destination's QEMU builds do not export.
    pub missing_source_symbols: Vec<String>,
    pub missing_destination_symbols: Vec<String>,
    /// Optional tracepoints this kernel lacks.
    pub missing_tracepoints: Vec<String>,
    /// What a host's tracer could not trace (its QEMU or tap never appeared, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// Defaults the probes had to assume (see [`Probes::fallbacks`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
    /// Conditions the eBPF programs met during this migration, by name (see
    /// [`super::diag_name`]), with how often: a full kernel map (`*-full`) drops what it
    /// would have held, an unreadable layout (`*-layout`) what it would have read.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub diagnostics: BTreeMap<String, u64>,
    /// Records of this migration the tracer did not keep: more than its store holds
    /// (see [`super::store::CAPACITY`]); the first ones are kept.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped_records: u64,
}

impl TraceHealth {
    /// Whether the probes lost part of this migration: records (in the ring buffer, or
    /// beyond the tracer's store), or what a full map or an unreadable layout kept from
    /// them. Figures from the probes may then miss their stamps. A guest frame the
    /// classifier could not parse (`ip-layout`) is no probe of ours: no loss.
    pub fn lossy(&self) -> bool {
        self.lost_records > 0
            || self.dropped_records > 0
            || self.diagnostics.iter().any(|(name, n)| *n > 0 && name != "ip-layout")
    }
}

pub struct Tracer {
    probes: Probes,
    symbols: SymbolCache,
    collector: Option<Collector>,
    store: Arc<Mutex<EventStore>>,
    qemus: HashMap<u32, QemuProbes>,
    /// (tap name, ifindex) of the lab's taps; empty without a lab network.
    pub taps: Vec<(String, u32)>,
    /// Whether the lab's link is counted.
    link: bool,
    missing_tracepoints: Vec<String>,
    loss_before: Loss,
    diagnostics_before: Diagnostics,
    /// The collector's lifetime count of undecodable records at [`Tracer::begin`].
    undecodable_before: u64,
}

impl Tracer {
    /// Loads the programs, attaches the KVM tracepoints, the packet classifier to each
    /// of `taps` and the link counter to each end of `link` (each an interface in its
    /// namespace), and starts collecting. Must be called within a tokio runtime. Taps
    /// in different namespaces must have different interface indexes (the classifier's
    /// events carry only the index).
    pub fn start(taps: &[(String, &str)], link: &[(String, &str)]) -> Result<Self, TraceError> {
        Self::with_probes(Probes::load()?, taps, link)
    }

    /// As [`Tracer::start`], with probes already loaded (e.g. with resized maps).
    pub fn with_probes(
        mut probes: Probes,
        taps: &[(String, &str)],
        link: &[(String, &str)],
    ) -> Result<Self, TraceError> {
        let missing_tracepoints = probes.attach_kvm()?;
        let mut attached = Vec::new();
        for (ns, tap) in taps {
            attached.extend(probes.attach_taps(Some(ns), &[tap])?);
        }
        let taps = attached;
        for (ns, dev) in link {
            probes.attach_link(ns, dev)?;
        }
        let store = Arc::new(Mutex::new(EventStore::default()));
        let collector =
            Collector::spawn_into(probes.take_events()?, Sink::Store(store.clone())).map_err(TraceError::Collector)?;
        let loss_before = probes.loss()?;
        let diagnostics_before = probes.diagnostics()?;
        Ok(Self {
            probes,
            symbols: SymbolCache::default(),
            collector: Some(collector),
            store,
            qemus: HashMap::new(),
            taps,
            link: !link.is_empty(),
            missing_tracepoints,
            loss_before,
            diagnostics_before,
            undecodable_before: 0,
        })
    }

    /// Attaches the packet classifier to one more tap (in namespace `ns`, None: ours).
    /// A tap it is attached to already (same name, same interface index) stays as it
    /// is; a tap that was deleted and made again gets the classifier anew.
    pub fn attach_tap(&mut self, ns: Option<&str>, tap: &str) -> Result<(), TraceError> {
        let index = crate::sys::netns::ifindex(ns, tap).map_err(super::net::NetProbeError::from)?;
        if self.taps.iter().any(|(n, i)| n == tap && *i == index) {
            return Ok(());
        }
        let attached = self.probes.attach_taps(ns, &[tap])?;
        for (name, index) in attached {
            self.taps.retain(|(n, i)| *n != name && *i != index);
            self.taps.push((name, index));
        }
        Ok(())
    }

    /// Attaches the phase probes to QEMU process `pid`; returns the symbols it lacks.
    pub fn watch(&mut self, pid: u32) -> Result<Vec<&'static str>, TraceError> {
        if let Some(q) = self.qemus.get(&pid) {
            return Ok(q.missing.clone());
        }
        let probes = self.probes.attach_qemu(pid, &mut self.symbols)?;
        let missing = probes.missing.clone();
        self.qemus.insert(pid, probes);
        Ok(missing)
    }

    /// Detaches from a QEMU process that is gone or no longer of interest.
    pub fn unwatch(&mut self, pid: u32) -> Result<(), TraceError> {
        if let Some(q) = self.qemus.remove(&pid) {
            self.probes.detach_qemu(q, false)?;
        }
        Ok(())
    }

    /// As [`Tracer::unwatch`], for a process that has exited, its uprobes unregistered
    /// in the background (see [`Probes::detach_qemu`]).
    pub fn unwatch_exited(&mut self, pid: u32) -> Result<(), TraceError> {
        if let Some(q) = self.qemus.remove(&pid) {
            self.probes.detach_qemu(q, true)?;
        }
        Ok(())
    }

    /// Pids currently watched.
    pub fn watched(&self) -> Vec<u32> {
        self.qemus.keys().copied().collect()
    }

    /// Marks the start of a migration: per-round counters from zero, events from now.
    pub async fn begin(&mut self, source: u32, destination: u32) -> Result<(), TraceError> {
        self.probes.reset_process(source)?;
        self.probes.reset_process(destination)?;
        if let Some(c) = &self.collector {
            c.flush().await;
        }
        self.store.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.loss_before = self.probes.loss()?;
        self.diagnostics_before = self.probes.diagnostics()?;
        self.undecodable_before = self.collector.as_ref().map_or(0, Collector::undecodable);
        Ok(())
    }

    /// Whether the guest has answered a probe request sent at or after `since_ns` (an
    /// echo reply with identifier `ident` whose echoed send stamp is that late).
    pub async fn answered_since(&self, ident: u16, since_ns: u64) -> bool {
        if let Some(c) = &self.collector {
            c.flush().await;
        }
        self.store.lock().unwrap_or_else(|p| p.into_inner()).answered_since(ident, since_ns)
    }

    /// Whether packets crossing tap `tap` are stamped.
    pub fn stamps_tap(&self, tap: &str) -> bool {
        self.taps.iter().any(|(n, _)| n == tap)
    }

    /// How many RARP announcements crossed tap `tap` at or after `since_ns` (QEMU's
    /// self-announce after a migration; 0 for a tap not traced).
    pub async fn rarps_since(&self, tap: &str, since_ns: u64) -> usize {
        let Some(&(_, ifindex)) = self.taps.iter().find(|(n, _)| n == tap) else { return 0 };
        if let Some(c) = &self.collector {
            c.flush().await;
        }
        self.store.lock().unwrap_or_else(|p| p.into_inner()).rarps_since(ifindex, since_ns)
    }

    /// Ends a migration: everything the kernel recorded since [`Tracer::begin`].
    pub async fn finish(&mut self, source: u32, destination: u32) -> Result<Trace, TraceError> {
        if let Some(c) = &self.collector {
            c.flush().await;
        }
        self.probes.flush_log();
        let (events, dropped) = self.store.lock().unwrap_or_else(|p| p.into_inner()).take();
        let loss = self.probes.loss()?.since(&self.loss_before);
        let diagnostics = self.probes.diagnostics()?.since(&self.diagnostics_before);
        let missing = |pid| -> Vec<String> {
            self.qemus.get(&pid).map(|q| q.missing.iter().map(|s| s.to_string()).collect()).unwrap_or_default()
        };
        let tap_name = |ifindex: u32| {
            self.taps.iter().find(|(_, i)| *i == ifindex).map_or_else(|| ifindex.to_string(), |(n, _)| n.clone())
        };
        let mut phases = Vec::new();
        let mut packets = Vec::new();
        for event in events {
            match event {
                Event::Phase(e) if e.header.tgid == source || e.header.tgid == destination => {
                    let Some(point) = PhasePoint::from_u16(e.point as u16) else { continue };
                    phases.push(PhaseStamp::of_event(&e, point));
                }
                Event::Packet(e) => packets.push(PacketStamp {
                    ts_ns: e.header.ts_ns,
                    tap: tap_name(e.ifindex),
                    kind: packet_kind_name(e.kind).to_owned(),
                    ident: e.ident,
                    seq: e.seq,
                    sent_ns: e.payload_stamp,
                }),
                _ => {}
            }
        }
        phases.sort_by_key(|p| p.ts_ns);
        packets.sort_by_key(|p| p.ts_ns);
        let source_kvm = self
            .probes
            .kvm_stats(source)?
            .into_iter()
            .map(|((round, what), counts)| RoundKvm { round, what: kvm_what_name(what).to_owned(), counts })
            .collect();
        let link = match self.link {
            true => {
                let (bytes, last_data_ns) = self.probes.link_counter()?;
                Some(LinkTrace { bytes, last_data_ns })
            }
            false => None,
        };
        Ok(Trace {
            link,
            source_pid: source,
            destination_pid: destination,
            phases,
            packets,
            source_kvm,
            source_vcpus: vcpu_stamps(self.probes.vcpu_runs(source)?),
            destination_vcpus: vcpu_stamps(self.probes.vcpu_runs(destination)?),
            health: TraceHealth {
                lost_records: loss.total(),
                undecodable_records: self
                    .collector
                    .as_ref()
                    .map_or(0, |c| c.undecodable().saturating_sub(self.undecodable_before)),
                missing_source_symbols: missing(source),
                missing_destination_symbols: missing(destination),
                missing_tracepoints: self.missing_tracepoints.clone(),
                problems: Vec::new(),
                fallbacks: self.probes.fallbacks.clone(),
                diagnostics: diagnostics.named(),
                dropped_records: dropped,
            },
            // One tracer, one host: its phases carry no host name.
            source_host: None,
            destination_host: None,
        })
    }

    /// Stops collecting and detaches everything.
    pub async fn stop(mut self) -> Result<CollectorStats, TraceError> {
        for pid in self.watched() {
            let _ = self.unwatch(pid);
        }
        // At most one process's links are still going (about 2 s).
        self.probes.wait_detached();
        match self.collector.take() {
            Some(c) => c.stop().await.map_err(TraceError::Collector),
            None => Ok(CollectorStats::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use migtrace_common::event::{EventHeader, EventKind, PHASE_ARG_FAULT_SHIFT};

    use super::*;

    #[test]
    fn an_entry_holds_a_round_counter_a_return_its_return_value() {
        let event = |flags: u32| PhaseEvent {
            header: EventHeader { kind: EventKind::Phase as u32, cpu: 0, tgid: 7, tid: 8, ts_ns: 100 },
            point: PhasePoint::DirtyLogSync as u32,
            flags,
            args: [9, 0, 0],
            ret: 3,
            link_bytes: 0,
        };
        let entry = PhaseStamp::of_event(&event(0), PhasePoint::DirtyLogSync);
        assert_eq!((entry.round, entry.returned), (Some(3), None));
        let ret = PhaseStamp::of_event(&event(PHASE_RETURN), PhasePoint::DirtyLogSync);
        assert_eq!((ret.round, ret.returned), (None, Some(3)));
    }

    fn phase_event(flags: u32, args: [u64; 3], ret: u64) -> PhaseEvent {
        PhaseEvent {
            header: EventHeader { kind: EventKind::Phase as u32, cpu: 0, tgid: 7, tid: 8, ts_ns: 100 },
            point: PhasePoint::SavevmStatePending as u32,
            flags,
            args,
            ret,
            link_bytes: 0,
        }
    }

    #[test]
    fn values_a_return_probe_could_not_read_are_flagged_not_zero() {
        let point = PhasePoint::SavevmStatePending;
        let read = PhaseStamp::of_event(&phase_event(PHASE_RETURN, [1, 2, 3], 0), point);
        assert_eq!((read.unread, read.returned, read.round), (None, Some(0), None));
        let fault = phase_event(PHASE_RETURN | 1 << (PHASE_ARG_FAULT_SHIFT + 2), [1, 2, 0], 0);
        assert_eq!(PhaseStamp::of_event(&fault, point).unread, Some(Unread::ReadFault));
        let not_saved = phase_event(PHASE_RETURN | PHASE_ARGS_NOT_SAVED, [0; 3], 0);
        assert_eq!(PhaseStamp::of_event(&not_saved, point).unread, Some(Unread::NotSaved));
        // An entry reads registers, never through pointers: nothing unread.
        let entry = PhaseStamp::of_event(&phase_event(PHASE_ARGS_NOT_SAVED, [9, 40_000_000, 0], 3), point);
        assert_eq!(entry.unread, None);
    }

    #[test]
    fn records_with_one_value_field_still_read() {
        // As records before `returned` and `round` hold them.
        let old = r#"[{"ts_ns":1,"tgid":2,"tid":2,"point":"DirtyLogSync","ret":false,"args":[0,0,0],"value":4},
            {"ts_ns":2,"tgid":2,"tid":2,"point":"DirtyLogSync","ret":true,"args":[0,0,0],"value":4}]"#;
        let stamps: Vec<PhaseStamp> = serde_json::from_str(old).expect("old stamps");
        assert_eq!((stamps[0].round, stamps[0].returned), (Some(4), None), "entry: the round counter");
        assert_eq!((stamps[1].round, stamps[1].returned), (None, Some(4)), "return: the return value");
        // Written anew, each meaning has its own field, and they read back the same.
        let json = serde_json::to_string(&stamps).expect("json");
        assert!(
            !json.contains("\"value\"") && json.contains("\"round\":4") && json.contains("\"returned\":4"),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Vec<PhaseStamp>>(&json).expect("new stamps"), stamps);
    }

    #[test]
    fn a_full_map_makes_a_trace_lossy_an_odd_guest_frame_does_not() {
        let mut h = TraceHealth::default();
        assert!(!h.lossy());
        h.diagnostics.insert("ip-layout".into(), 3);
        assert!(!h.lossy());
        h.diagnostics.insert("saved-args-full".into(), 1);
        assert!(h.lossy());
        let beyond_the_store = TraceHealth { dropped_records: 1, ..TraceHealth::default() };
        assert!(beyond_the_store.lossy());
        let old: TraceHealth = serde_json::from_str(
            r#"{"lost_records":0,"undecodable_records":0,"missing_source_symbols":[],
            "missing_destination_symbols":[],"missing_tracepoints":[]}"#,
        )
        .expect("a record's health before diagnostics");
        assert!(old.diagnostics.is_empty() && !old.lossy());
    }
}
