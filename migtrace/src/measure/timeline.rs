//! One migration as a timeline of named phases on both hosts, from the probes, with QMP
//! events standing in for probe points a QEMU build lacks.
//!
//! The main chain is contiguous: setup, pre-copy rounds 1…m, vm-stop, stop-and-copy
//! (which holds the final round), destination load, resume, first guest packet. Announce,
//! cleanup and the destination's receive run beside it (`parallel`).

use serde::{Deserialize, Serialize};

use crate::{
    clock::WallClock,
    hypervisor::MigrationOutcome,
    lab::qmp::QmpEvent,
    probe::{
        qemu::migration_status_name,
        tracer::{PacketStamp, PhaseStamp, Trace},
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
    /// eBPF probes on QEMU, KVM or vCPU threads.
    Probe,
    /// QMP events (microsecond stamps), standing in for missing probe points.
    Qmp,
    /// Packets at the taps.
    Packet,
    /// Heartbeats on the guest's serial port, stamped by the host that read them.
    Serial,
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
    /// The round that runs with the VM stopped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub final_round: bool,
    /// KVM dirty-log ioctls (count, latency) and dirty-ring events in this round.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kvm: Vec<crate::probe::tracer::RoundKvm>,
}

/// Key instants, CLOCK_MONOTONIC ns, for downtime measures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Marks {
    pub command_ns: u64,
    pub setup_ns: Option<u64>,
    pub active_ns: Option<u64>,
    pub vm_stop_ns: Option<u64>,
    /// Source vCPUs stopped: the last guest exit of a source vCPU thread (KVM_RUN or
    /// TCG's cpu_exec) clamped to [VM stop, `pause_all_vcpus` returning] (a vCPU idle
    /// in the guest when the stop came stopped at the stop), else `pause_all_vcpus`
    /// returning, else the STOP event.
    pub source_paused_ns: Option<u64>,
    pub source_completed_ns: Option<u64>,
    pub destination_loaded_ns: Option<u64>,
    /// Destination vCPUs running: the first guest entry of a destination vCPU thread,
    /// else `resume_all_vcpus` returning, else the RESUME event.
    pub destination_resumed_ns: Option<u64>,
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
    /// Boundaries taken from QMP because a probe point was missing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
}

impl Timeline {
    pub fn phase(&self, name: &str) -> Option<&Phase> {
        self.phases.iter().find(|p| p.name == name)
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
    /// QEMU (major, minor): `migrate_set_state` numbers depend on it.
    pub qemu_version: (u32, u32),
    /// Converts QMP's Unix-µs stamps to monotonic ns.
    pub clock: WallClock,
    /// Tap of the destination, to find the first guest packet after the switchover.
    pub destination_tap: Option<&'a str>,
    /// ICMP identifier of the probe sender (replies to others are ignored).
    pub probe_ident: Option<u16>,
}

struct Stamps<'a> {
    list: Vec<&'a PhaseStamp>,
}

impl<'a> Stamps<'a> {
    fn of(trace: Option<&'a Trace>, pid: u32) -> Self {
        Self { list: trace.map(|t| t.phases.iter().filter(|p| p.tgid == pid).collect()).unwrap_or_default() }
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
    /// `migrate_set_state` into state `name`.
    fn state(&self, name: &str, version: (u32, u32)) -> Option<u64> {
        self.all("MigrateSetState", false).find(|p| migration_status_name(p.args[2], version) == name).map(|p| p.ts_ns)
    }
}

struct Qmp<'a> {
    events: &'a [QmpEvent],
    clock: WallClock,
}

impl Qmp<'_> {
    fn when(&self, pred: impl Fn(&QmpEvent) -> bool) -> Option<u64> {
        self.events.iter().find(|e| pred(e)).map(|e| self.clock.from_unix_us(e.unix_us))
    }
    fn status(&self, status: &str) -> Option<u64> {
        self.when(|e| e.migration_status() == Some(status))
    }
    fn all(&self, event: &str) -> Vec<u64> {
        self.events.iter().filter(|e| e.event == event).map(|e| self.clock.from_unix_us(e.unix_us)).collect()
    }
}

/// Builds the timeline of one migration.
pub fn assemble(input: &Input<'_>) -> Timeline {
    let o = input.outcome;
    let v = input.qemu_version;
    let src = Stamps::of(input.trace, o.source_pid);
    let dst = Stamps::of(input.trace, o.destination_pid);
    let sq = Qmp { events: &o.source_events, clock: input.clock };
    let dq = Qmp { events: &o.destination_events, clock: input.clock };
    let mut fallbacks = Vec::new();
    let mut evidence_of = std::collections::HashMap::new();
    let mut pick = |name: &'static str, probe: Option<u64>, qmp: Option<u64>| -> Option<u64> {
        match (probe, qmp) {
            (Some(t), _) => {
                evidence_of.insert(name, Evidence::Probe);
                Some(t)
            }
            (None, Some(t)) => {
                fallbacks.push(format!("{name} from QMP"));
                evidence_of.insert(name, Evidence::Qmp);
                Some(t)
            }
            (None, None) => None,
        }
    };

    let setup = pick("setup", src.state("setup", v), sq.status("setup"));
    let active = pick("active", src.state("active", v), sq.status("active"));
    let vm_stop = pick("vm-stop", src.first("VmStopForceState", false), sq.when(|e| e.event == "STOP"));
    // A vCPU halted in the guest's idle loop when the stop came was paused at the stop;
    // one running guest code stopped when it last left it. Clamp to [stop, paused-return].
    let pause_return = src.first("PauseAllVcpus", true);
    let last_source_exit = input
        .trace
        .and_then(|t| t.source_vcpus.iter().map(|r| r.last_exit_ns).filter(|&t| t > 0).max())
        .map(|t| match (vm_stop, pause_return) {
            (Some(stop), Some(ret)) => t.clamp(stop, ret.max(stop)),
            (Some(stop), None) => t.max(stop),
            _ => t,
        });
    let source_paused = pick("source-paused", last_source_exit.or(pause_return), sq.when(|e| e.event == "STOP"));
    let completed = pick("source-completed", src.state("completed", v), sq.status("completed"));
    let loaded = pick("destination-loaded", dst.last("LoadvmState", true), dq.status("completed"));
    let first_dest_enter =
        input.trace.and_then(|t| t.destination_vcpus.iter().map(|r| r.first_enter_ns).filter(|&t| t > 0).min());
    let resumed = pick(
        "destination-resumed",
        first_dest_enter.or(dst.first("ResumeAllVcpus", true)),
        dq.when(|e| e.event == "RESUME"),
    );

    let is_dest = |p: &&PacketStamp| input.destination_tap.is_none_or(|tap| p.tap == tap);
    let packets: Vec<&PacketStamp> = input.trace.map(|t| t.packets.iter().collect()).unwrap_or_default();
    let first_packet = resumed.and_then(|r| {
        packets
            .iter()
            .filter(|p| p.ts_ns >= r && is_dest(p) && p.kind == "icmp-echo-reply")
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
    let dur = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e6;
    let ev = |name: &str| evidence_of.get(name).copied().unwrap_or(Evidence::Probe);
    let mut phases = Vec::new();
    let mut push = |name: String, host: Host, a: Option<u64>, b: Option<u64>, evidence: Evidence, parallel: bool| {
        if let (Some(a), Some(b)) = (a, b) {
            phases.push(Phase { name, host, start_ms: ms(a), duration_ms: dur(a, b), evidence, parallel });
        }
    };

    push("setup".into(), Host::Source, setup, active, ev("setup"), false);

    // Rounds: round k opens at sync k (round 1 at the switch to active, since sync 1
    // happens during setup); pre-copy rounds end at the next sync or the VM stop.
    let stop = vm_stop.or(source_paused);
    let mut rounds = Vec::new();
    // QEMU 8.0+ estimates every iteration and computes exactly (with a sync) near the end.
    let mut remaining: Vec<(u64, u64)> = src
        .all("SavevmStatePending", true)
        .chain(src.all("SavevmStatePendingEstimate", true))
        .map(|p| (p.ts_ns, p.args.iter().sum::<u64>()))
        .collect();
    remaining.sort_unstable();
    for (i, &(sync_at, sync_ret)) in syncs.iter().enumerate() {
        let n = i as u32 + 1;
        let final_round = stop.is_some_and(|s| sync_at >= s);
        let start = if n == 1 { active.unwrap_or(sync_at).max(sync_at) } else { sync_at };
        let next = syncs.get(i + 1).map(|s| s.0);
        let end = if final_round { completed } else { [next, stop].into_iter().flatten().min().or(completed) };
        let Some(end) = end else { continue };
        let remaining_bytes = remaining.iter().rfind(|(t, _)| *t >= start && *t <= end).map(|(_, b)| *b);
        let kvm =
            input.trace.map(|t| t.source_kvm.iter().filter(|k| k.round == n).cloned().collect()).unwrap_or_default();
        rounds.push(Round {
            round: n,
            start_ms: ms(start),
            duration_ms: dur(start, end),
            sync_ms: sync_ret.map(|r| dur(sync_at, r)),
            remaining_bytes,
            final_round,
            kvm,
        });
        if !final_round {
            let evidence = if sync_entries.is_empty() { Evidence::Qmp } else { Evidence::Probe };
            push(format!("pre-copy round {n}"), Host::Source, Some(start), Some(end), evidence, false);
        }
    }
    push("vm-stop".into(), Host::Source, stop, source_paused.max(stop), ev("vm-stop"), false);
    push("stop-and-copy".into(), Host::Source, source_paused.max(stop), completed, ev("source-paused"), false);
    let load_end = loaded.zip(completed).map(|(l, c)| l.max(c));
    push("destination load".into(), Host::Destination, completed, load_end, ev("destination-loaded"), false);
    let resume_end = resumed.zip(load_end).map(|(r, l)| r.max(l));
    push("resume".into(), Host::Destination, load_end, resume_end, ev("destination-resumed"), false);
    push("first guest packet".into(), Host::Network, resume_end, first_packet, Evidence::Packet, false);

    push(
        "announce".into(),
        Host::Destination,
        announce,
        rarps.last().copied().or(announce),
        if rarps.is_empty() { Evidence::Probe } else { Evidence::Packet },
        true,
    );
    push(
        "cleanup".into(),
        Host::Source,
        src.first("SavevmStateCleanup", false),
        src.last("SavevmStateCleanup", true).or(src.first("DirtyLogStop", false)),
        Evidence::Probe,
        true,
    );
    push(
        "destination receive".into(),
        Host::Destination,
        dst.first("LoadvmState", false),
        dst.last("LoadvmState", true),
        Evidence::Probe,
        true,
    );

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
                .filter(|v| v.first_enter_ns > 0)
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
            source_completed_ns: completed,
            destination_loaded_ns: loaded,
            destination_resumed_ns: resumed,
            first_packet_ns: first_packet,
            announce_ns: announce,
        },
        fallbacks,
    }
}
