//! One migration as a timeline of named phases on both hosts, from the probes, with QMP
//! events standing in for probe points a QEMU build lacks.
//!
//! The main chain is contiguous: setup, pre-copy rounds 1…m, vm-stop, stop-and-copy
//! (which holds the final round), destination load, resume, first guest packet. Announce,
//! cleanup and the destination's receive run beside it (`parallel`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::downtime::span_ms;
use crate::{
    clock::WallClock,
    hypervisor::{HostEvent, MigrationOutcome, Versions},
    probe::{
        qemu::migration_status_name,
        tracer::{PacketStamp, PhaseStamp, RoundKvm, Trace, Unread},
    },
};

/// Which host a phase happens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Host {
    Source,
    Destination,
    /// Seen on the network between them (the taps).
    Network,
}

/// What a phase boundary was measured with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Evidence {
    /// eBPF programs on QEMU (uprobes), KVM or vCPU threads. Records before 2026-12
    /// said `probe`, which the probe sender's figures also say.
    #[serde(alias = "probe")]
    Ebpf,
    /// QMP events (microsecond stamps), standing in for missing probe points.
    Qmp,
    /// Packets at the taps.
    Packet,
    /// Heartbeats on the guest's serial port, stamped by the host that read them.
    Serial,
}

impl Evidence {
    /// The evidence of a span between two instants: as weak as its weaker end.
    pub fn combine(a: Evidence, b: Evidence) -> Evidence {
        match (a, b) {
            (Evidence::Qmp, _) | (_, Evidence::Qmp) => Evidence::Qmp,
            (Evidence::Packet, _) | (_, Evidence::Packet) => Evidence::Packet,
            _ => Evidence::Ebpf,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    pub host: Host,
    /// Milliseconds from the migration command, µs resolution.
    pub start_ms: f64,
    pub duration_ms: f64,
    pub evidence: Evidence,
    /// Runs beside the main chain instead of in it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parallel: bool,
}

/// One pre-copy round: from its dirty-log sync to the next (the final round starts
/// after the VM stopped, inside stop-and-copy).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Round {
    pub round: u32,
    pub start_ms: f64,
    pub duration_ms: f64,
    /// Duration of the dirty-log sync that opened the round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_ms: Option<f64>,
    /// Bytes still to send at the last pending check in the round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_bytes: Option<u64>,
    /// Bytes pending right after the sync that opened the round (the first pending check
    /// in it, which did the sync): what the round has to send, the pages dirtied in the
    /// previous round plus what it left unsent. Round 1: all of RAM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_bytes: Option<u64>,
    /// Pending checks in the round (QEMU checks once per rate-limit window, 100 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<u32>,
    /// QEMU's stop threshold at the round's last check (bandwidth × downtime limit, the
    /// `threshold_size` argument of QEMU < 8.0's `qemu_savevm_state_pending`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_bytes: Option<u64>,
    /// The round that runs with the VM stopped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub final_round: bool,
    /// KVM dirty-log ioctls (count, latency) and dirty-ring events in this round.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kvm: Vec<RoundKvm>,
}

/// Key instants, CLOCK_MONOTONIC ns, for downtime measures.
///
/// The vCPU blackout (`source_paused_ns` → `destination_resumed_ns`) is the guest not
/// running: from the last exit of a source vCPU thread from guest code to the first
/// entry of a destination vCPU thread into it. Each is held only to the call that
/// stops or releases the vCPUs: a source vCPU idle (halted) in the guest left guest
/// code before `vm_stop_force_state` began, and counts as stopped then; a destination
/// vCPU entering guest code before `resume_all_vcpus` began could not be the guest
/// resuming. Never clamped to `resume_all_vcpus` returning: until a vCPU enters guest
/// code (it wakes up, or waits for an interrupt when halted), the guest does not run.
/// `source_last_exit_ns` and `destination_first_entry_ns` keep the raw stamps, the
/// `…_clamped_ms` fields how far the clamp moved them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Marks {
    pub command_ns: u64,
    pub setup_ns: Option<u64>,
    pub active_ns: Option<u64>,
    pub vm_stop_ns: Option<u64>,
    /// Source vCPUs stopped: the last guest exit of a source vCPU thread (KVM_RUN or
    /// TCG's cpu_exec), no earlier than `vm_stop_force_state` entered (else
    /// `pause_all_vcpus`); without vCPU stamps `pause_all_vcpus` returning, else the
    /// STOP event.
    pub source_paused_ns: Option<u64>,
    /// The raw last guest exit behind `source_paused_ns`, and how far the stop's entry
    /// moved it (ms; 0 when the vCPU ran until the stop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_last_exit_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_paused_clamped_ms: Option<f64>,
    /// The source has sent the VM's last state: `qemu_savevm_state_complete_precopy`
    /// returns (it flushes the stream), else the source's completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_sent_ns: Option<u64>,
    pub source_completed_ns: Option<u64>,
    /// `qemu_loadvm_state` returned on the destination, else (when the resume is
    /// probed) the destination's RESUME event, which QEMU sends after the load and
    /// before resuming the vCPUs: an upper bound. Never the destination's MIGRATION
    /// completed event: QEMU sends that after the resume.
    pub destination_loaded_ns: Option<u64>,
    /// Destination vCPUs running: the first guest entry of a destination vCPU thread,
    /// no earlier than `resume_all_vcpus` entered; without vCPU stamps
    /// `resume_all_vcpus` returning, else the RESUME event.
    pub destination_resumed_ns: Option<u64>,
    /// The raw first guest entry behind `destination_resumed_ns`, and how far the
    /// resume's entry moved it (ms; 0 when it came after).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_first_entry_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_resumed_clamped_ms: Option<f64>,
    pub first_packet_ns: Option<u64>,
    pub announce_ns: Option<u64>,
}

/// A vCPU thread at the switchover, from its runs of guest code (KVM_RUN ioctls, or
/// TCG's `cpu_exec`): what the vCPU blackout is measured from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VcpuEdge {
    pub host: Host,
    pub tid: u32,
    /// Source: its last exit from guest code. Destination: its first entry. Milliseconds
    /// from the migration command.
    pub at_ms: f64,
    /// Entries into guest code since the thread was first traced.
    pub enters: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    pub phases: Vec<Phase>,
    pub rounds: Vec<Round>,
    pub marks: Marks,
    /// The vCPU threads of both hosts at the switchover.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vcpus: Vec<VcpuEdge>,
    /// What each mark was taken from (`source-paused` → `probe`); a mark absent here
    /// and not named in `fallbacks` is from probes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub evidence: BTreeMap<String, Evidence>,
    /// Marks taken from QMP because a probe point was missing, and defaults assumed
    /// because the host did not tell.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
    /// Phases, rounds and marks that could not be placed, each with the reason
    /// (reversed or equal stamps are never shown as a duration of 0).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
}

impl Timeline {
    pub fn phase(&self, name: &str) -> Option<&Phase> {
        self.phases.iter().find(|p| p.name == name)
    }

    /// What mark `name` (`source-paused`, `destination-resumed`, …) was taken from.
    /// Records written before marks carried their evidence say it in `fallbacks`.
    pub fn mark_evidence(&self, name: &str) -> Evidence {
        match self.evidence.get(name) {
            Some(e) => *e,
            None if self.fallbacks.iter().any(|f| f.starts_with(&format!("{name} from QMP"))) => Evidence::Qmp,
            None => Evidence::Ebpf,
        }
    }

    /// The main chain, in order.
    pub fn chain(&self) -> impl Iterator<Item = &Phase> {
        self.phases.iter().filter(|p| !p.parallel)
    }
}

/// Everything the assembler needs about one migration.
pub struct Input<'a> {
    pub outcome: &'a MigrationOutcome,
    pub trace: Option<&'a Trace>,
    /// Each host's QEMU (major, minor): `migrate_set_state` numbers depend on it, and
    /// each host's stamps are decoded with its own. Unknown: decoded as
    /// [`ASSUMED_QEMU_VERSION`] (noted in `fallbacks`).
    pub qemu_versions: Versions,
    /// Converts QMP's Unix-µs stamps to monotonic ns.
    pub clock: WallClock,
    /// Tap of the destination, to find the first guest packet after the switchover.
    pub destination_tap: Option<&'a str>,
    /// ICMP identifier of the probe sender (replies to others are ignored).
    pub probe_ident: Option<u16>,
}

/// The numbering `migrate_set_state` states are decoded with when the QEMU version is
/// unknown: Debian 12's QEMU.
pub const ASSUMED_QEMU_VERSION: (u32, u32) = (7, 2);

/// One host's QEMU stamps, and the QEMU release they are decoded with.
struct Stamps<'a> {
    list: Vec<&'a PhaseStamp>,
    version: (u32, u32),
}

impl<'a> Stamps<'a> {
    /// The stamps of one side's QEMU: by pid and, when hosts had tracers of their own,
    /// by host (two hosts' QEMUs may have the same pid).
    fn of(trace: Option<&'a Trace>, side: fn(&Trace, &PhaseStamp) -> bool, version: (u32, u32)) -> Self {
        Self { list: trace.map(|t| t.phases.iter().filter(|p| side(t, p)).collect()).unwrap_or_default(), version }
    }
    fn all(&self, point: &str, ret: bool) -> impl Iterator<Item = &&'a PhaseStamp> {
        self.list.iter().filter(move |p| p.point == point && p.ret == ret)
    }
    fn first(&self, point: &str, ret: bool) -> Option<u64> {
        self.all(point, ret).next().map(|p| p.ts_ns)
    }
    fn last(&self, point: &str, ret: bool) -> Option<u64> {
        self.all(point, ret).last().map(|p| p.ts_ns)
    }
    /// `migrate_set_state` into state `name`, as this host's QEMU numbers its states.
    fn state(&self, name: &str) -> Option<u64> {
        self.all("MigrateSetState", false)
            .find(|p| migration_status_name(p.args[2], self.version) == name)
            .map(|p| p.ts_ns)
    }
}

/// A RESUME this soon after a STOP is QEMU's back-to-back pair for a VM that never
/// stopped (`vm_prepare_start` on a running VM with a stop request pending).
const PAIRED_RESUME_US: i64 = 1000;

struct Qmp<'a> {
    events: &'a [HostEvent],
    clock: WallClock,
}

impl Qmp<'_> {
    fn when(&self, pred: impl Fn(&HostEvent) -> bool) -> Option<u64> {
        self.events.iter().find(|e| pred(e)).map(|e| self.clock.from_unix_us(e.unix_us))
    }
    fn status(&self, status: &str) -> Option<u64> {
        self.when(|e| e.migration_status() == Some(status))
    }
    /// The VM's stop: the first STOP that is not half of the STOP/RESUME pair QEMU
    /// emits back to back when it is asked to start a VM that runs already (a migration
    /// cancelled in pre-copy does that); the VM never stopped then.
    fn stop(&self) -> Option<u64> {
        let resumes: Vec<i64> = self.events.iter().filter(|e| e.event == "RESUME").map(|e| e.unix_us).collect();
        self.events
            .iter()
            .filter(|e| e.event == "STOP")
            .find(|e| !resumes.iter().any(|&r| (0..=PAIRED_RESUME_US).contains(&(r - e.unix_us))))
            .map(|e| self.clock.from_unix_us(e.unix_us))
    }

    fn all(&self, event: &str) -> Vec<u64> {
        self.events.iter().filter(|e| e.event == event).map(|e| self.clock.from_unix_us(e.unix_us)).collect()
    }
}

/// Builds the timeline of one migration.
pub fn assemble(input: &Input<'_>) -> Timeline {
    let o = input.outcome;
    let mut fallbacks = Vec::new();
    let v = input.qemu_versions.source.unwrap_or_else(|| {
        let (major, minor) = ASSUMED_QEMU_VERSION;
        fallbacks.push(format!(
            "QEMU version unknown on the source: migrate_set_state states decoded as QEMU {major}.{minor}'s"
        ));
        ASSUMED_QEMU_VERSION
    });
    // Only the source's states are decoded; the destination's stamps would be with its own.
    let dst_version = input.qemu_versions.destination.unwrap_or(ASSUMED_QEMU_VERSION);
    if let Some(t) = input.trace {
        fallbacks.extend(t.health.fallbacks.iter().cloned());
    }
    let src = Stamps::of(input.trace, Trace::from_source, v);
    let dst = Stamps::of(input.trace, Trace::from_destination, dst_version);
    let sq = Qmp { events: &o.source_events, clock: input.clock };
    let dq = Qmp { events: &o.destination_events, clock: input.clock };
    let mut missing = Vec::new();
    let mut evidence_of = BTreeMap::new();
    let mut pick = |name: &'static str, probe: Option<u64>, qmp: Option<u64>| -> Option<u64> {
        match (probe, qmp) {
            (Some(t), _) => {
                evidence_of.insert(name.to_owned(), Evidence::Ebpf);
                Some(t)
            }
            (None, Some(t)) => {
                fallbacks.push(format!("{name} from QMP"));
                evidence_of.insert(name.to_owned(), Evidence::Qmp);
                Some(t)
            }
            (None, None) => None,
        }
    };

    let setup = pick("setup", src.state("setup"), sq.status("setup"));
    let active = pick("active", src.state("active"), sq.status("active"));
    let stop_call = src.first("VmStopForceState", false);
    let stop_event = sq.stop();
    let vm_stop = pick("vm-stop", stop_call, stop_event);
    // The vCPU blackout (see `Marks`): guest-code stamps, each no earlier than the
    // call that stops or releases the vCPUs.
    let held = |t: Option<u64>, lo: u64| t.map(|t| (t.max(lo), t, lo.saturating_sub(t) as f64 / 1e6));
    let last_source_exit =
        input.trace.and_then(|t| t.source_vcpus.iter().map(|r| r.last_exit_ns).filter(|&t| t > 0).max());
    // Guest-code stamps mark the pause only around a traced stop: without one the last
    // exit is merely where tracing ended (a migration cancelled in pre-copy).
    let stop_entered = stop_call.or(src.first("PauseAllVcpus", false));
    let pause_returned = src.first("PauseAllVcpus", true);
    let source_held = stop_entered.and_then(|lo| held(last_source_exit, lo));
    let source_paused = pick("source-paused", source_held.map(|h| h.0).or(pause_returned), stop_event);
    let completed = pick("source-completed", src.state("completed"), sq.status("completed"));
    // The source completes only once the destination confirmed the load when QEMU has a
    // return path (libvirt enables one): the stream's end is the source's last send.
    let sent = src.last("SavevmStateCompletePrecopy", true).or(completed);
    // A destination traced by a tracer of its own saw nothing before that tracer attached
    // to its QEMU: a vCPU's first entry after that is the resume only if the tracer
    // attached before the destination could resume (the source stopped), or saw the
    // resume begin. Otherwise it is a late stamp, not the resume.
    let since_command = |t: u64| (t as i128 - o.start_ns as i128) as f64 / 1e6;
    let dst_attached = input.trace.and_then(|t| t.destination_host.as_ref()).map(|h| h.attached_ns);
    let resume_entered = dst.first("ResumeAllVcpus", false);
    let late_vcpus = match (dst_attached, stop_call.or(source_paused)) {
        (Some(at), stop) if at > 0 && resume_entered.is_none() && stop.is_none_or(|s| at > s) => {
            let when = stop.map_or_else(
                || "the source's stop is unknown".to_owned(),
                |s| format!("after the source stopped ({:.3} ms)", since_command(s)),
            );
            missing.push(format!(
                "destination-resumed: the destination's tracer attached to its QEMU at {:.3} ms, {when}, and did \
                 not see resume_all_vcpus begin: its vCPUs' first entries may be later than the resume, not taken",
                since_command(at)
            ));
            true
        }
        _ => false,
    };
    let first_dest_enter = input
        .trace
        .filter(|_| !late_vcpus)
        .and_then(|t| t.destination_vcpus.iter().map(|r| r.first_enter_ns).filter(|&t| t > 0).min());
    let destination_held = resume_entered.and_then(|lo| held(first_dest_enter, lo));
    let resumed_probe = destination_held.map(|h| h.0).or(dst.first("ResumeAllVcpus", true));
    let resume_event = dq.when(|e| e.event == "RESUME");
    let resumed = pick("destination-resumed", resumed_probe, resume_event);
    // Attached after the setup, the tracer may have come while the destination loaded:
    // that call shows neither its entry nor (a uretprobe catches only calls that begin
    // after it) its return.
    let receive_start = dst.first("LoadvmState", false);
    let load_missed = match (receive_start, dst_attached, setup) {
        (None, Some(at), Some(setup)) if at > setup => Some(format!(
            "the destination's tracer attached to its QEMU at {:.3} ms, after the migration's setup ({:.3} ms): \
             the load may have begun before",
            since_command(at),
            since_command(setup)
        )),
        _ => None,
    };
    // QEMU 7.2 on the destination: qemu_loadvm_state returns, RESUME, resume_all_vcpus,
    // then MIGRATION completed. Only RESUME lies between the load and the resume, and
    // only a probed resume is later than it.
    let loaded_probe = dst.last("LoadvmState", true);
    let loaded = match (loaded_probe, resumed_probe, resume_event) {
        (Some(t), ..) => {
            evidence_of.insert("destination-loaded".into(), Evidence::Ebpf);
            Some(t)
        }
        (None, Some(r), Some(e)) if e <= r => {
            fallbacks.push(
                "destination-loaded from QMP RESUME (an upper bound: sent after the load, before the vCPUs resume)"
                    .into(),
            );
            evidence_of.insert("destination-loaded".into(), Evidence::Qmp);
            Some(e)
        }
        _ => {
            missing.push(match &load_missed {
                Some(why) => format!("destination-loaded: {why}, and a call under way shows no return"),
                None => "destination-loaded: qemu_loadvm_state not probed, and QEMU sends no event between the end \
                         of the load and the resume (its MIGRATION completed comes after the resume)"
                    .into(),
            });
            None
        }
    };

    let is_dest = |p: &&PacketStamp| input.destination_tap.is_none_or(|tap| p.tap == tap);
    let packets: Vec<&PacketStamp> = input.trace.map(|t| t.packets.iter().collect()).unwrap_or_default();
    // The first answer to a request sent after the stop (as the probe gap's recovery):
    // replies the guest had queued before it come out first, at the resume.
    let first_packet = resumed.and_then(|r| {
        packets
            .iter()
            .filter(|p| p.ts_ns >= r && is_dest(p) && p.kind == "icmp-echo-reply")
            .filter(|p| p.sent_ns == 0 || source_paused.is_none_or(|s| p.sent_ns > s))
            .find(|p| input.probe_ident.is_none_or(|id| p.ident == id))
            .map(|p| p.ts_ns)
    });
    let rarps: Vec<u64> = packets.iter().filter(|p| p.kind == "rarp" && is_dest(p)).map(|p| p.ts_ns).collect();
    let announce_call = dst.first("AnnounceSelf", false);
    let announce = announce_call.or(rarps.first().copied());

    // Dirty-log syncs open rounds; QMP's MIGRATION_PASS is emitted at each sync.
    let sync_entries: Vec<&PhaseStamp> = src.all("DirtyLogSync", false).copied().collect();
    let sync_returns: Vec<u64> = src.all("DirtyLogSync", true).map(|p| p.ts_ns).collect();
    let syncs: Vec<(u64, Option<u64>)> = if sync_entries.is_empty() {
        if !sq.all("MIGRATION_PASS").is_empty() {
            fallbacks.push("rounds from QMP MIGRATION_PASS".into());
        }
        sq.all("MIGRATION_PASS").into_iter().map(|t| (t, None)).collect()
    } else {
        sync_entries.iter().map(|e| (e.ts_ns, sync_returns.iter().copied().find(|&r| r >= e.ts_ns))).collect()
    };

    let origin = o.start_ns;
    let ms = |t: u64| (t as i128 - origin as i128) as f64 / 1e6;
    let ev = |name: &str| evidence_of.get(name).copied().unwrap_or(Evidence::Ebpf);
    let mut phases = Vec::new();
    let mut unplaced = Vec::new();
    let mut push = |name: String, host: Host, a: Option<u64>, b: Option<u64>, evidence: Evidence, parallel: bool| {
        if let (Some(a), Some(b)) = (a, b) {
            match span_ms(a, b) {
                Ok(duration_ms) => phases.push(Phase { name, host, start_ms: ms(a), duration_ms, evidence, parallel }),
                Err(why) => unplaced.push(format!("{name}: {why}")),
            }
        }
    };

    push("setup".into(), Host::Source, setup, active, ev("setup"), false);

    // Rounds: round k opens at sync k (round 1 at the switch to active, since sync 1
    // happens during setup); pre-copy rounds end at the next sync or the VM stop.
    let stop = vm_stop.or(source_paused);
    let mut rounds = Vec::new();
    // QEMU 8.0+ estimates every iteration and computes exactly (with a sync) near the end.
    // A check whose out-parameters the probe could not read has no figure, not 0.
    let mut remaining: Vec<(u64, Result<u64, Unread>)> = src
        .all("SavevmStatePending", true)
        .chain(src.all("SavevmStatePendingEstimate", true))
        .map(|p| (p.ts_ns, p.unread.map_or_else(|| Ok(p.args.iter().sum::<u64>()), Err)))
        .collect();
    remaining.sort_unstable_by_key(|(t, _)| *t);
    // QEMU < 8.0 passes its threshold to every pending check (0 before the first
    // window); stamped at the check's return, as its result is.
    let thresholds: Vec<(u64, u64)> = if v < (8, 0) {
        let entries: Vec<&PhaseStamp> = src.all("SavevmStatePending", false).copied().collect();
        src.all("SavevmStatePending", true)
            .filter_map(|r| entries.iter().rfind(|e| e.ts_ns <= r.ts_ns).map(|e| (r.ts_ns, e.args[1])))
            .filter(|&(_, b)| b > 0)
            .collect()
    } else {
        Vec::new()
    };
    for (i, &(sync_at, sync_ret)) in syncs.iter().enumerate() {
        let n = i as u32 + 1;
        let final_round = stop.is_some_and(|s| sync_at >= s);
        let start = if n == 1 { active.unwrap_or(sync_at).max(sync_at) } else { sync_at };
        let next = syncs.get(i + 1).map(|s| s.0);
        let end = if final_round { sent } else { [next, stop].into_iter().flatten().min().or(sent) };
        let Some(end) = end else { continue };
        let duration_ms = match span_ms(start, end) {
            Ok(d) => d,
            Err(why) => {
                missing.push(format!("round {n}: {why}"));
                continue;
            }
        };
        let in_round = || remaining.iter().filter(|(t, _)| *t >= start && *t <= end);
        let mut read = |figure: &str, check: &str, pending: Option<&Result<u64, Unread>>| match pending? {
            Ok(b) => Some(*b),
            Err(why) => {
                missing
                    .push(format!("round {n}: {figure}: QEMU's pending bytes at its {check} check: {}", why.reason()));
                None
            }
        };
        let remaining_bytes = read("remaining_bytes", "last", in_round().next_back().map(|(_, b)| b));
        let dirty_bytes = read("dirty_bytes", "first", in_round().next().map(|(_, b)| b));
        let checks = (!final_round && !remaining.is_empty()).then(|| in_round().count() as u32);
        let threshold_bytes = thresholds.iter().rfind(|(t, _)| *t >= start && *t <= end).map(|(_, b)| *b);
        let kvm: Vec<RoundKvm> =
            input.trace.map(|t| t.source_kvm.iter().filter(|k| k.round == n).cloned().collect()).unwrap_or_default();
        for (what, why) in [
            ("dirty-pages-truncated", "of memslots over 4 GiB, counted up to 4 GiB"),
            ("dirty-pages-unread", "not read, or read in part"),
        ] {
            if let Some(k) = kvm.iter().find(|k| k.what == what && k.counts.count > 0) {
                missing.push(format!("round {n}: kvm dirty-pages: {} dirty bitmaps {why}", k.counts.count));
            }
        }
        rounds.push(Round {
            round: n,
            start_ms: ms(start),
            duration_ms,
            sync_ms: sync_ret.and_then(|r| span_ms(sync_at, r).ok()),
            remaining_bytes,
            dirty_bytes,
            checks,
            threshold_bytes,
            final_round,
            kvm,
        });
        if !final_round {
            let evidence = if sync_entries.is_empty() { Evidence::Qmp } else { Evidence::Ebpf };
            push(format!("pre-copy round {n}"), Host::Source, Some(start), Some(end), evidence, false);
        }
    }
    // vCPUs idle in the guest before the stop count as stopped at it: no phase then.
    if source_held.is_none_or(|h| h.2 == 0.0) {
        push("vm-stop".into(), Host::Source, stop, source_paused, ev("vm-stop"), false);
    }
    push("stop-and-copy".into(), Host::Source, source_paused.max(stop), sent, ev("source-paused"), false);
    let resume_from = match loaded {
        Some(l) => {
            push("destination load".into(), Host::Destination, sent, Some(l), ev("destination-loaded"), false);
            let load_end = sent.map_or(l, |c| c.max(l));
            push("resume".into(), Host::Destination, Some(load_end), resumed, ev("destination-resumed"), false);
            Some(load_end)
        }
        None => {
            let evidence = ev("destination-resumed");
            push("destination load + resume".into(), Host::Destination, sent, resumed, evidence, false);
            sent
        }
    };
    // Sent → completed: setting the state, and with a return path waiting for the
    // destination's load to be confirmed (libvirt).
    if sent != completed {
        push("source completion".into(), Host::Source, sent, completed, ev("source-completed"), true);
    }
    let resume_end = resumed.max(resume_from);
    push("first guest packet".into(), Host::Network, resume_end, first_packet, Evidence::Packet, false);

    match (announce, rarps.last()) {
        (Some(a), Some(&last)) => {
            push("announce".into(), Host::Destination, Some(a), Some(last), Evidence::Packet, true);
        }
        (Some(_), None) => missing.push("announce: no RARP seen at the destination's tap".into()),
        _ => {}
    }
    push(
        "cleanup".into(),
        Host::Source,
        src.first("SavevmStateCleanup", false),
        src.last("SavevmStateCleanup", true).or(src.first("DirtyLogStop", false)),
        Evidence::Ebpf,
        true,
    );
    push(
        "destination receive".into(),
        Host::Destination,
        receive_start,
        dst.last("LoadvmState", true),
        Evidence::Ebpf,
        true,
    );
    if let Some(why) = load_missed {
        missing.push(format!("destination receive: {why}"));
    }
    missing.extend(unplaced);

    let mut vcpus = Vec::new();
    if let Some(t) = input.trace {
        let edge = |host, v: &crate::probe::tracer::VcpuStamp, at: u64| VcpuEdge {
            host,
            tid: v.tid,
            at_ms: ms(at),
            enters: v.enters,
        };
        vcpus.extend(
            t.source_vcpus.iter().filter(|v| v.last_exit_ns > 0).map(|v| edge(Host::Source, v, v.last_exit_ns)),
        );
        vcpus.extend(
            t.destination_vcpus
                .iter()
                .filter(|v| v.first_enter_ns > 0 && !late_vcpus)
                .map(|v| edge(Host::Destination, v, v.first_enter_ns)),
        );
    }

    Timeline {
        phases,
        rounds,
        vcpus,
        marks: Marks {
            command_ns: origin,
            setup_ns: setup,
            active_ns: active,
            vm_stop_ns: vm_stop,
            source_paused_ns: source_paused,
            source_last_exit_ns: source_held.map(|h| h.1),
            source_paused_clamped_ms: source_held.map(|h| h.2),
            source_sent_ns: sent,
            source_completed_ns: completed,
            destination_loaded_ns: loaded,
            destination_resumed_ns: resumed,
            destination_first_entry_ns: destination_held.map(|h| h.1),
            destination_resumed_clamped_ms: destination_held.map(|h| h.2),
            first_packet_ns: first_packet,
            announce_ns: announce,
        },
        evidence: evidence_of,
        fallbacks,
        missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        hypervisor::Status,
        probe::tracer::{TraceHealth, VcpuStamp},
    };

    const US: u64 = 1_000;
    const MS: u64 = 1_000_000;
    const SRC: u32 = 1;
    const DST: u32 = 2;

    fn stamp(ts_ns: u64, tgid: u32, point: &str, ret: bool, args: [u64; 3]) -> PhaseStamp {
        PhaseStamp {
            ts_ns,
            tgid,
            tid: tgid,
            point: point.into(),
            ret,
            args,
            returned: ret.then_some(0),
            round: (!ret).then_some(0),
            unread: None,
            link_bytes: 0,
            host: None,
        }
    }

    fn event(event: &str, at_ns: u64, data: serde_json::Value) -> HostEvent {
        // Unix µs of monotonic `at_ns` with the clock of `outcome()`.
        HostEvent { event: event.into(), unix_us: 1_000_000 + (at_ns / US) as i64, data }
    }

    fn outcome() -> MigrationOutcome {
        MigrationOutcome {
            status: Status::Completed,
            error: None,
            direction: "tap-a → tap-b".into(),
            source_pid: SRC,
            destination_pid: DST,
            start_unix_us: 1_000_000,
            start_ns: 0,
            end_ns: Some(130 * MS),
            stats: Default::default(),
            destination_stats: None,
            source_events: vec![
                event("MIGRATION", MS, serde_json::json!({"status": "setup"})),
                event("MIGRATION", 2 * MS, serde_json::json!({"status": "active"})),
                event("STOP", 100 * MS + 20 * US, serde_json::Value::Null),
                event("MIGRATION", 120 * MS + 30 * US, serde_json::json!({"status": "completed"})),
            ],
            // QEMU 7.2's order on the destination: RESUME, then MIGRATION completed.
            destination_events: vec![
                event("RESUME", 122 * MS + 500 * US, serde_json::Value::Null),
                event("MIGRATION", 124 * MS, serde_json::json!({"status": "completed"})),
            ],
        }
    }

    /// An idle guest migrated under TCG: its only vCPU halted at 70 ms (last left
    /// guest code), the stop comes at 100 ms, and on the destination it enters guest
    /// code only at its next timer interrupt, 127 ms, long after QEMU released it.
    fn idle_trace(source_exit_ns: u64, destination_enter_ns: u64) -> Trace {
        let phases = vec![
            stamp(MS, SRC, "MigrateSetState", false, [0, 0, 1]),
            stamp(2 * MS, SRC, "MigrateSetState", false, [0, 1, 4]),
            stamp(100 * MS, SRC, "VmStopForceState", false, [0; 3]),
            stamp(100 * MS + 10 * US, SRC, "PauseAllVcpus", false, [0; 3]),
            stamp(100 * MS + 50 * US, SRC, "PauseAllVcpus", true, [0; 3]),
            stamp(120 * MS, SRC, "MigrateSetState", false, [0, 4, 8]),
            stamp(122 * MS, DST, "LoadvmState", true, [0; 3]),
            stamp(123 * MS, DST, "ResumeAllVcpus", false, [0; 3]),
            stamp(123 * MS + 100 * US, DST, "ResumeAllVcpus", true, [0; 3]),
        ];
        let vcpu = |first: u64, last_exit: u64| {
            vec![VcpuStamp {
                tid: 9,
                first_enter_ns: first,
                last_enter_ns: last_exit,
                last_exit_ns: last_exit,
                enters: 1,
            }]
        };
        Trace {
            source_pid: SRC,
            destination_pid: DST,
            phases,
            source_vcpus: vcpu(1, source_exit_ns),
            destination_vcpus: vcpu(destination_enter_ns, 0),
            ..Trace::default()
        }
    }

    fn assemble_with(trace: Option<&Trace>, o: &MigrationOutcome, version: Option<(u32, u32)>) -> Timeline {
        assemble(&Input {
            outcome: o,
            trace,
            qemu_versions: Versions::both(version),
            clock: WallClock::from_pair(o.start_ns, o.start_unix_us),
            destination_tap: Some("tap-b"),
            probe_ident: None,
        })
    }

    #[test]
    fn the_blackout_runs_from_the_last_guest_exit_to_the_first_guest_entry() {
        let o = outcome();
        // Idle on both sides: the source's vCPU left guest code at 70 ms, long before
        // the stop (vm_stop_force_state at 100 ms): stopped at the stop, moved 30 ms.
        // The destination's entered guest code at its next interrupt, 127 ms, after
        // resume_all_vcpus returned (123.1 ms): the guest ran only then.
        let t = assemble_with(Some(&idle_trace(70 * MS, 127 * MS)), &o, Some((7, 2)));
        assert_eq!(t.marks.source_paused_ns, Some(100 * MS));
        assert_eq!(t.marks.source_last_exit_ns, Some(70 * MS));
        assert_eq!(t.marks.source_paused_clamped_ms, Some(30.0));
        assert_eq!(t.marks.destination_resumed_ns, Some(127 * MS));
        assert_eq!(t.marks.destination_first_entry_ns, Some(127 * MS));
        assert_eq!(t.marks.destination_resumed_clamped_ms, Some(0.0));
        // Running on both sides: the stamps as they are, inside or after the calls (a
        // first entry 0.46 ms after the resume returned counts whole).
        let t = assemble_with(Some(&idle_trace(100 * MS + 30 * US, 123 * MS + 560 * US)), &o, Some((7, 2)));
        assert_eq!(t.marks.source_paused_ns, Some(100 * MS + 30 * US));
        assert_eq!(t.marks.source_paused_clamped_ms, Some(0.0));
        assert_eq!(t.marks.destination_resumed_ns, Some(123 * MS + 560 * US));
        assert_eq!(t.mark_evidence("destination-resumed"), Evidence::Ebpf);
        // A destination entry before resume_all_vcpus began (123 ms) is not the resume.
        let t = assemble_with(Some(&idle_trace(100 * MS + 30 * US, 122 * MS + 500 * US)), &o, Some((7, 2)));
        assert_eq!(t.marks.destination_resumed_ns, Some(123 * MS));
        assert_eq!(t.marks.destination_resumed_clamped_ms, Some(0.5));
    }

    #[test]
    fn evidence_reads_the_name_older_records_use() {
        let old: Evidence = serde_json::from_str("\"probe\"").expect("old name");
        assert_eq!(old, Evidence::Ebpf);
        assert_eq!(serde_json::to_string(&Evidence::Ebpf).expect("json"), "\"ebpf\"");
    }

    #[test]
    fn a_migration_cancelled_in_pre_copy_has_no_pause() {
        // QEMU 7.2, cancelled while active: no vm_stop_force_state, no pause_all_vcpus,
        // and the STOP/RESUME pair of starting an already running VM, 10 µs apart.
        let mut o = outcome();
        o.status = Status::TimedOut;
        o.source_events = vec![
            event("MIGRATION", MS, serde_json::json!({"status": "setup"})),
            event("MIGRATION", 2 * MS, serde_json::json!({"status": "active"})),
            event("MIGRATION", 3000 * MS, serde_json::json!({"status": "cancelling"})),
            event("STOP", 3001 * MS, serde_json::Value::Null),
            event("RESUME", 3001 * MS + 10 * US, serde_json::Value::Null),
            event("MIGRATION", 3002 * MS, serde_json::json!({"status": "cancelled"})),
        ];
        o.destination_events.clear();
        let mut trace = idle_trace(2999 * MS, 0);
        trace.phases.retain(|p| p.tgid == SRC && p.point == "MigrateSetState");
        trace.destination_vcpus.clear();
        let t = assemble_with(Some(&trace), &o, Some((7, 2)));
        // Neither the vCPU's last exit (tracing just ended) nor the paired STOP is a pause.
        assert_eq!((t.marks.vm_stop_ns, t.marks.source_paused_ns), (None, None), "{:?}", t.marks);
        // A real stop (a RESUME follows only much later) still counts from QMP.
        o.source_events[4].unix_us += 5_000;
        let t = assemble_with(None, &o, Some((7, 2)));
        assert_eq!(t.marks.vm_stop_ns, Some(3001 * MS));
    }

    #[test]
    fn destination_loaded_never_comes_from_an_event_after_the_resume() {
        let o = outcome();
        let mut trace = idle_trace(70 * MS, 127 * MS);
        trace.phases.retain(|p| p.point != "LoadvmState");
        // A probed resume: RESUME (122.5 ms) is an upper bound of the load's end.
        let t = assemble_with(Some(&trace), &o, Some((7, 2)));
        assert_eq!(t.marks.destination_loaded_ns, Some(122 * MS + 500 * US));
        assert_eq!(t.mark_evidence("destination-loaded"), Evidence::Qmp);
        assert!(t.fallbacks.iter().any(|f| f.starts_with("destination-loaded from QMP RESUME")));
        let load = t.phase("destination load").expect("load phase");
        assert_eq!(load.duration_ms, 2.5, "completed 120 (probe) → RESUME 122.5");
        // QMP only: the destination's MIGRATION completed (124 ms) follows RESUME; no
        // event marks the load's end, so load and resume are one phase.
        let t = assemble_with(None, &o, Some((7, 2)));
        assert_eq!(t.marks.destination_loaded_ns, None);
        assert!(t.missing.iter().any(|m| m.starts_with("destination-loaded:")), "{:?}", t.missing);
        let joined = t.phase("destination load + resume").expect("joined phase");
        assert!((joined.duration_ms - 2.47).abs() < 1e-9, "120.03 → 122.5: {}", joined.duration_ms);
        assert!(t.phase("destination load").is_none() && t.phase("resume").is_none());
        assert_eq!(t.mark_evidence("destination-resumed"), Evidence::Qmp);
    }

    #[test]
    fn reversed_spans_are_reported_not_shown_as_zero() {
        let o = outcome();
        let mut trace = idle_trace(70 * MS, 127 * MS);
        // The destination finishes loading 5 µs before the source says completed.
        for p in trace.phases.iter_mut().filter(|p| p.point == "LoadvmState") {
            p.ts_ns = 120 * MS - 5 * US;
        }
        let t = assemble_with(Some(&trace), &o, Some((7, 2)));
        assert!(t.phase("destination load").is_none());
        assert!(
            t.missing.iter().any(|m| m == "destination load: its end is 0.005 ms before its start"),
            "{:?}",
            t.missing
        );
        // The chain stays contiguous: resume starts where stop-and-copy ended.
        let resume = t.phase("resume").expect("resume");
        assert_eq!(resume.start_ms, 120.0);
        // QMP only, vm-stop has one event for both ends: no zero-length phase.
        let t = assemble_with(None, &o, Some((7, 2)));
        assert!(t.phase("vm-stop").is_none());
        assert!(t.missing.iter().any(|m| m.starts_with("vm-stop: its start and end stamps are equal")));
    }

    /// A recorded lab migration (`migtrace migrate --lab --keep-trace`): its outcome
    /// without QMP events (libvirt hosts have none: the marks come from the probes) and
    /// its raw trace.
    fn recorded(fixture: &str) -> (MigrationOutcome, Trace) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(fixture);
        let r = crate::measure::record::read(&path).expect("fixture").remove(0);
        let mut o = r.outcome;
        (o.source_events, o.destination_events) = (Vec::new(), Vec::new());
        (o, r.trace.expect("recorded with --keep-trace"))
    }

    /// The source's last `migrate_set_state`, as QEMU called it.
    fn last_state(t: &Trace) -> &PhaseStamp {
        t.phases.iter().rfind(|p| p.tgid == t.source_pid && p.point == "MigrateSetState").expect("state change")
    }

    #[tokio::test]
    async fn each_hosts_states_are_decoded_with_its_own_qemu_release() {
        use crate::hypervisor::{
            HostPair as _,
            libvirt::{LibvirtHost, LibvirtPair},
        };
        // QEMU 7.2 completes with state 8 (4 → 8); QEMU 10.0 with 9 (13 → 9): 9.1
        // inserted a state at 7. Both recorded.
        let (o72, t72) = recorded("tcg-dirty-2000.jsonl");
        let (o10, t10) = recorded("qemu-10.0-wset16M-rate1000.jsonl");
        assert_eq!((last_state(&t72).args[2], last_state(&t10).args[2]), (8, 9));
        // The 7.2 recording as if its migration had failed: 7.2's "failed" is 9.
        let mut t72_failed = t72.clone();
        t72_failed
            .phases
            .iter_mut()
            .rfind(|p| p.tgid == t72.source_pid && p.point == "MigrateSetState")
            .expect("state")
            .args[2] = 9;
        let v72 = (7, 2, 22);
        let v10 = (10, 0, 2);
        for (a, b) in [(v72, v10), (v10, v72)] {
            let hosts = ["a", "b"].map(|h| LibvirtHost::from_uri(&format!("qemu+ssh://{h}/system"), h));
            let mut pair = LibvirtPair::unconnected_for_test(hosts, [Some(a), Some(b)]);
            // Ping-pong: a → b, then b → a; each time the source's QEMU decides.
            for source in [a, b] {
                let versions = pair.hypervisor_versions();
                assert_eq!(versions.source, Some((source.0, source.1)));
                let cases: Vec<(&MigrationOutcome, &Trace, bool)> = if source == v72 {
                    vec![(&o72, &t72, true), (&o72, &t72_failed, false)]
                } else {
                    vec![(&o10, &t10, true)]
                };
                for (o, trace, completed) in cases {
                    let t = assemble(&Input {
                        outcome: o,
                        trace: Some(trace),
                        qemu_versions: versions,
                        clock: WallClock::from_pair(o.start_ns, o.start_unix_us),
                        destination_tap: None,
                        probe_ident: None,
                    });
                    let what = format!("QEMU {source:?} source, {}", if completed { "completed" } else { "failed" });
                    let want = completed.then(|| last_state(trace).ts_ns);
                    assert_eq!(t.marks.source_completed_ns, want, "{what}");
                    assert!(t.marks.setup_ns.is_some() && t.marks.active_ns.is_some(), "{what}");
                    assert!(t.fallbacks.is_empty(), "{what}: {:?}", t.fallbacks);
                    // Decoded with the other host's release, it is misread.
                    let other = if source == v72 { (10, 0) } else { (7, 2) };
                    let misread = assemble(&Input {
                        outcome: o,
                        trace: Some(trace),
                        qemu_versions: Versions::both(Some(other)),
                        clock: WallClock::from_pair(o.start_ns, o.start_unix_us),
                        destination_tap: None,
                        probe_ident: None,
                    });
                    assert_ne!(misread.marks.source_completed_ns, want, "{what}: the fixture tells the releases apart");
                }
                pair.prepare_next().await.expect("next");
            }
        }
    }

    #[test]
    fn pending_bytes_the_probe_could_not_read_are_missing_not_zero() {
        let o = outcome();
        let mut trace = idle_trace(70 * MS, 127 * MS);
        let pending = |ts_ns: u64, bytes: u64, unread: Option<Unread>| PhaseStamp {
            unread,
            ..stamp(ts_ns, SRC, "SavevmStatePending", true, [bytes, 0, 0])
        };
        trace.phases.extend([
            stamp(MS + 500 * US, SRC, "DirtyLogSync", false, [0; 3]),
            stamp(MS + 600 * US, SRC, "DirtyLogSync", true, [0; 3]),
            pending(10 * MS, 100 << 20, None),
            pending(50 * MS, 80 << 20, None),
            stamp(60 * MS, SRC, "DirtyLogSync", false, [0; 3]),
            stamp(60 * MS + 100 * US, SRC, "DirtyLogSync", true, [0; 3]),
            // Round 2's first check: its out-parameters were never read (zeros).
            pending(61 * MS, 0, Some(Unread::NotSaved)),
            pending(90 * MS, 30 << 20, None),
        ]);
        trace.phases.sort_by_key(|p| p.ts_ns);
        let unread_pages = RoundKvm {
            round: 2,
            what: "dirty-pages-unread".into(),
            counts: crate::probe::kvm::KvmCounts { count: 1, ..Default::default() },
        };
        trace.source_kvm.push(unread_pages);
        let t = assemble_with(Some(&trace), &o, Some((7, 2)));
        let (r1, r2) = (&t.rounds[0], &t.rounds[1]);
        assert_eq!((r1.dirty_bytes, r1.remaining_bytes), (Some(100 << 20), Some(80 << 20)));
        assert_eq!(r2.dirty_bytes, None, "not Some(0)");
        assert_eq!(r2.remaining_bytes, Some(30 << 20));
        assert_eq!(r2.checks, Some(2), "the unread check still happened");
        assert!(
            t.missing.iter().any(|m| m.starts_with(
                "round 2: dirty_bytes: QEMU's pending bytes at its first check: the \
                 entry probe saved no arguments"
            )),
            "{:?}",
            t.missing
        );
        assert!(t.missing.iter().any(|m| m == "round 2: kvm dirty-pages: 1 dirty bitmaps not read, or read in part"));
        // A faulted read of the round's last check: no remaining bytes either.
        for p in trace.phases.iter_mut().filter(|p| p.ts_ns == 90 * MS) {
            p.unread = Some(Unread::ReadFault);
        }
        let t = assemble_with(Some(&trace), &o, Some((7, 2)));
        assert_eq!(t.rounds[1].remaining_bytes, None);
        assert!(t.missing.iter().any(|m| m.starts_with("round 2: remaining_bytes:") && m.ends_with("faulted")));
    }

    #[test]
    fn assumed_defaults_are_recorded() {
        let o = outcome();
        let mut trace = idle_trace(70 * MS, 127 * MS);
        trace.health =
            TraceHealth { fallbacks: vec!["ioctl cmd assumed at offset 24".into()], ..TraceHealth::default() };
        let t = assemble_with(Some(&trace), &o, None);
        assert!(t.fallbacks.iter().any(|f| f.starts_with("QEMU version unknown on the source")), "{:?}", t.fallbacks);
        assert!(t.fallbacks.iter().any(|f| f.contains("offset 24")));
        assert_eq!(t.marks.setup_ns, Some(MS), "decoded with 7.2's numbering");
    }
}
