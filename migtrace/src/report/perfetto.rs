//! Migrations as a trace in the Trace Event Format (JSON), which ui.perfetto.dev and
//! chrome://tracing open.
//!
//! One process per host: `source`, `destination`, `network`. Phases are slices on their
//! host's main-chain thread (phases beside the chain on threads of their own), the
//! pre-copy rounds nested under a `pre-copy` slice and the final round under
//! stop-and-copy, each round with its dirty-log sync nested inside. QEMU's remaining
//! bytes, the dirty pages they stand for and KVM's dirty-log ioctls per round are
//! counter tracks. With the raw trace (`--keep-trace`) also: each vCPU thread's run and
//! stop as its own track, probe replies and RARPs as instants on the tap that saw them,
//! and every QEMU probe point as an instant. Everything is on one clock (the
//! coordinator's monotonic clock; agents' stamps were converted when recorded), and
//! several migrations follow one another at their real times.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::measure::{
    record::MigrationRecord,
    timeline::{Host, Phase},
};

pub const SOURCE_PID: u64 = 1;
pub const DESTINATION_PID: u64 = 2;
pub const NETWORK_PID: u64 = 3;

/// Main-chain thread of each process; the other threads follow.
const MAIN_TID: u64 = 1;
const PROBE_POINTS_TID: u64 = 2;
const COUNTERS_TID: u64 = 0;

/// A trace and what it could not show.
#[derive(Clone, Debug)]
pub struct Export {
    pub json: Value,
    /// E.g. records without a raw trace (no vCPU tracks, packets or probe points).
    pub notes: Vec<String>,
    pub events: usize,
}

#[derive(Clone, Debug)]
struct Slice {
    pid: u64,
    tid: u64,
    name: String,
    cat: &'static str,
    start: i64,
    end: i64,
    args: Value,
}

#[derive(Clone, Debug)]
enum Ev {
    Slice(Slice),
    Instant { pid: u64, tid: u64, name: String, cat: &'static str, at: i64, args: Value },
    Counter { pid: u64, name: String, at: i64, value: f64 },
}

impl Ev {
    fn at(&self) -> i64 {
        match self {
            Ev::Slice(s) => s.start,
            Ev::Instant { at, .. } | Ev::Counter { at, .. } => *at,
        }
    }
}

#[derive(Default)]
struct Builder {
    events: Vec<Ev>,
    /// (pid, tid) → thread name, in order of first use.
    threads: BTreeMap<(u64, u64), String>,
    /// Extra threads by (pid, name).
    named: BTreeMap<(u64, String), u64>,
    next_tid: u64,
}

impl Builder {
    fn thread(&mut self, pid: u64, tid: u64, name: &str) -> u64 {
        self.threads.entry((pid, tid)).or_insert_with(|| name.to_owned());
        tid
    }

    /// A thread of `pid` called `name`, made on first use.
    fn named_thread(&mut self, pid: u64, name: &str) -> u64 {
        if let Some(t) = self.named.get(&(pid, name.to_owned())) {
            return *t;
        }
        self.next_tid = self.next_tid.max(100) + 1;
        let tid = self.next_tid;
        self.named.insert((pid, name.to_owned()), tid);
        self.thread(pid, tid, name)
    }

    fn slice(
        &mut self,
        (pid, tid): (u64, u64),
        name: impl Into<String>,
        cat: &'static str,
        start: i64,
        end: i64,
        args: Value,
    ) {
        self.events.push(Ev::Slice(Slice { pid, tid, name: name.into(), cat, start, end: end.max(start), args }));
    }

    fn instant(&mut self, pid: u64, tid: u64, name: impl Into<String>, cat: &'static str, at: i64, args: Value) {
        self.events.push(Ev::Instant { pid, tid, name: name.into(), cat, at, args });
    }

    fn counter(&mut self, pid: u64, name: &str, at: i64, value: f64) {
        self.events.push(Ev::Counter { pid, name: name.to_owned(), at, value });
    }
}

fn pid_of(h: Host) -> u64 {
    match h {
        Host::Source => SOURCE_PID,
        Host::Destination => DESTINATION_PID,
        Host::Network => NETWORK_PID,
    }
}

fn ns(ms: f64) -> i64 {
    (ms * 1e6).round() as i64
}

/// The Trace Event Format of `records`, one after another at their real times.
pub fn export(records: &[&MigrationRecord]) -> Export {
    let mut b = Builder::default();
    let mut notes = Vec::new();
    for pid in [SOURCE_PID, DESTINATION_PID, NETWORK_PID] {
        b.thread(pid, MAIN_TID, "main chain");
    }
    for r in records {
        migration(&mut b, r, &mut notes);
    }
    finish(b, records, notes)
}

fn migration(b: &mut Builder, r: &MigrationRecord, notes: &mut Vec<String>) {
    let label = format!("migration {}", r.repetition);
    let Some(t) = &r.timeline else {
        notes.push(format!("{} of {}: no timeline in the record; left out", label, r.treatment));
        return;
    };
    let base = t.marks.command_ns as i64;
    let at = |ms: f64| base + ns(ms);
    let rel = |abs: u64| abs as i64;

    // The main chain and the phases beside it.
    let mut source_chain: Vec<&Phase> = Vec::new();
    for p in &t.phases {
        let pid = pid_of(p.host);
        let tid = if p.parallel { b.named_thread(pid, &p.name) } else { MAIN_TID };
        if !p.parallel && p.host == Host::Source {
            source_chain.push(p);
        }
        if p.name.starts_with("pre-copy round") {
            continue; // nested under `pre-copy` below
        }
        b.slice(
            (pid, tid),
            p.name.clone(),
            "phase",
            at(p.start_ms),
            at(p.start_ms + p.duration_ms),
            json!({"evidence": p.evidence, "duration_ms": p.duration_ms}),
        );
    }
    // The whole migration on the source's main chain, around its phases.
    let (first, last) = source_chain
        .iter()
        .fold((i64::MAX, i64::MIN), |(a, z), p| (a.min(at(p.start_ms)), z.max(at(p.start_ms + p.duration_ms))));
    if first <= last {
        let d = &r.downtime_ms;
        let m = &r.migration_time_ms;
        b.slice(
            (SOURCE_PID, MAIN_TID),
            format!("{label}: {}", r.treatment),
            "migration",
            first,
            last,
            json!({
                "treatment": r.treatment, "repetition": r.repetition, "direction": r.outcome.direction,
                "status": r.outcome.status, "source_qemu_pid": r.outcome.source_pid,
                "destination_qemu_pid": r.outcome.destination_pid,
                "downtime_ms": {"ping": d.ping, "ping_max_gap": d.ping_max_gap, "probe_gap": d.probe_gap,
                                "vcpu": d.vcpu, "reported": d.reported},
                "migration_time_ms": {"command": m.command, "reported": m.reported, "traced": m.traced,
                                      "traced_to_resume": m.traced_to_resume},
            }),
        );
    }
    // Pre-copy: one slice around the rounds, each round with its figures and its sync.
    let rounds: Vec<&Phase> = t.phases.iter().filter(|p| p.name.starts_with("pre-copy round")).collect();
    if let (Some(a), Some(z)) = (rounds.first(), rounds.last()) {
        b.slice((SOURCE_PID, MAIN_TID), "pre-copy", "phase", at(a.start_ms), at(z.start_ms + z.duration_ms), json!({}));
    }
    for p in &rounds {
        let k: Option<u32> = p.name.rsplit(' ').next().and_then(|k| k.parse().ok());
        let round = t.rounds.iter().find(|x| Some(x.round) == k && !x.final_round);
        let args = round.map_or_else(|| json!({"evidence": p.evidence}), |x| round_args(x, p.evidence));
        let (s, e) = (at(p.start_ms), at(p.start_ms + p.duration_ms));
        b.slice((SOURCE_PID, MAIN_TID), p.name.clone(), "round", s, e, args);
        if let Some(sync) = round.and_then(|x| x.sync_ms) {
            b.slice((SOURCE_PID, MAIN_TID), "dirty-log sync", "sync", s, (s + ns(sync)).min(e), json!({"ms": sync}));
        }
    }
    for x in t.rounds.iter().filter(|x| x.final_round) {
        let (s, e) = (at(x.start_ms), at(x.start_ms + x.duration_ms));
        b.slice(
            (SOURCE_PID, MAIN_TID),
            format!("round {} (final, VM stopped)", x.round),
            "round",
            s,
            e,
            round_args(x, crate::measure::timeline::Evidence::Ebpf),
        );
        if let Some(sync) = x.sync_ms {
            b.slice((SOURCE_PID, MAIN_TID), "dirty-log sync", "sync", s, (s + ns(sync)).min(e), json!({"ms": sync}));
        }
    }
    // Counters per round.
    for x in &t.rounds {
        let s = at(x.start_ms);
        if let Some(bytes) = x.remaining_bytes {
            b.counter(SOURCE_PID, "remaining MiB", s, bytes as f64 / (1u64 << 20) as f64);
            b.counter(SOURCE_PID, "dirty pages to send (remaining / 4 KiB)", s, (bytes / 4096) as f64);
        }
        let ioctls: u64 = x
            .kvm
            .iter()
            .filter(|k| ["get-dirty-log", "clear-dirty-log", "reset-dirty-rings"].contains(&k.what.as_str()))
            .map(|k| k.counts.count)
            .sum();
        if x.kvm.iter().any(|k| k.what != "run") {
            b.counter(SOURCE_PID, "KVM dirty-log ioctls in the round", s, ioctls as f64);
        }
        if let Some(push) = x.kvm.iter().find(|k| k.what == "dirty-ring-push") {
            b.counter(SOURCE_PID, "dirty-ring pushes in the round", s, push.counts.count as f64);
        }
    }
    // The guest's silence as the network saw it.
    if let (Some(p), Some(gap)) = (&r.probe, r.downtime_ms.probe_gap)
        && let Some(start) = p.gap_start_ms
    {
        let tid = b.named_thread(NETWORK_PID, "probe gap");
        let args = json!({"ms": gap, "before": p.last_host_before, "after": p.first_host_after});
        b.slice((NETWORK_PID, tid), "probe gap", "downtime", at(start), at(start + gap), args);
    }
    if let (Some(p), Some(gap)) = (&r.ping, r.downtime_ms.ping_max_gap)
        && let Some(start) = p.gap_start_ms
    {
        let tid = b.named_thread(NETWORK_PID, "ping gap");
        b.slice(
            (NETWORK_PID, tid),
            "ping gap",
            "downtime",
            at(start),
            at(start + gap),
            json!({"ms": gap, "interval_ms": p.interval_ms}),
        );
    }
    if let Some(v) = t.marks.source_paused_ns {
        b.instant(
            SOURCE_PID,
            MAIN_TID,
            "vCPUs stopped",
            "mark",
            rel(v),
            json!({"evidence": t.mark_evidence("source-paused")}),
        );
    }
    if let Some(v) = t.marks.destination_resumed_ns {
        b.instant(
            DESTINATION_PID,
            MAIN_TID,
            "vCPUs running",
            "mark",
            rel(v),
            json!({"evidence": t.mark_evidence("destination-resumed")}),
        );
    }

    let Some(trace) = &r.trace else {
        notes.push(format!(
            "{label} of {}: the record has no raw trace (run with --keep-trace): no vCPU tracks, packet instants or \
             QEMU probe points",
            r.treatment
        ));
        return;
    };
    let end = [t.marks.first_packet_ns, t.marks.destination_resumed_ns, r.outcome.end_ns]
        .into_iter()
        .flatten()
        .map(rel)
        .max()
        .unwrap_or(base);
    for (pid, vcpus, qemu) in [
        (SOURCE_PID, &trace.source_vcpus, trace.source_pid),
        (DESTINATION_PID, &trace.destination_vcpus, trace.destination_pid),
    ] {
        for v in vcpus.iter().filter(|v| v.first_enter_ns > 0) {
            let tid = b.named_thread(pid, &format!("vCPU thread {} (QEMU {qemu})", v.tid));
            let ran_to = rel(v.last_exit_ns.max(v.last_enter_ns));
            let args = json!({"entries": v.enters, "first_entry_ns": v.first_enter_ns, "last_exit_ns": v.last_exit_ns});
            if pid == DESTINATION_PID && rel(v.first_enter_ns) > base {
                b.slice((pid, tid), "not run yet", "vcpu", base, rel(v.first_enter_ns), json!({}));
            }
            b.slice(
                (pid, tid),
                "ran guest code (first entry to last exit)",
                "vcpu",
                rel(v.first_enter_ns),
                ran_to,
                args,
            );
            if pid == SOURCE_PID && end > ran_to {
                b.slice((pid, tid), "stopped", "vcpu", ran_to, end, json!({}));
            }
        }
    }
    for p in &trace.packets {
        let tid = b.named_thread(NETWORK_PID, &format!("tap {}", p.tap));
        let probe = r.probe.as_ref().is_some_and(|x| x.ident == p.ident) && p.kind == "icmp-echo-reply";
        let name = match p.kind.as_str() {
            "rarp" => "RARP",
            "arp" => "ARP",
            _ if probe => "probe reply",
            "icmp-echo-reply" => "echo reply",
            other => other,
        };
        b.instant(
            NETWORK_PID,
            tid,
            name,
            "packet",
            rel(p.ts_ns),
            json!({"seq": p.seq, "ident": p.ident, "kind": p.kind}),
        );
    }
    for s in &trace.phases {
        let pid = if trace.from_source(s) {
            SOURCE_PID
        } else if trace.from_destination(s) {
            DESTINATION_PID
        } else {
            continue;
        };
        b.thread(pid, PROBE_POINTS_TID, "QEMU probe points");
        let name = if s.ret { format!("{} return", s.point) } else { s.point.clone() };
        b.instant(
            pid,
            PROBE_POINTS_TID,
            name,
            "uprobe",
            rel(s.ts_ns),
            json!({"tid": s.tid, "args": s.args, "returned": s.returned, "round": s.round, "unread": s.unread}),
        );
    }
}

fn round_args(x: &crate::measure::timeline::Round, evidence: crate::measure::timeline::Evidence) -> Value {
    let kvm: BTreeMap<&str, Value> = x
        .kvm
        .iter()
        .filter(|k| k.what != "run")
        .map(|k| (k.what.as_str(), json!({"count": k.counts.count, "total_ms": k.counts.total_ns as f64 / 1e6})))
        .collect();
    json!({
        "round": x.round, "sync_ms": x.sync_ms, "remaining_bytes": x.remaining_bytes,
        "final": x.final_round, "kvm": kvm, "evidence": evidence,
    })
}

/// Keeps slices on a thread properly nested: a slice that overruns its parent by
/// rounding (≤ 1 µs) is cut to it; one that really overlaps moves to a thread of its own.
fn nest(b: &mut Builder) {
    let mut slices: Vec<Slice> = Vec::new();
    let mut rest = Vec::new();
    for e in std::mem::take(&mut b.events) {
        match e {
            Ev::Slice(s) => slices.push(s),
            other => rest.push(other),
        }
    }
    slices.sort_by(|a, b| {
        (a.pid, a.tid, a.start, std::cmp::Reverse(a.end)).cmp(&(b.pid, b.tid, b.start, std::cmp::Reverse(b.end)))
    });
    let mut out: Vec<Slice> = Vec::with_capacity(slices.len());
    let mut stack: Vec<(u64, u64, i64)> = Vec::new();
    for mut s in slices {
        while stack.last().is_some_and(|&(p, t, end)| p != s.pid || t != s.tid || end <= s.start) {
            stack.pop();
        }
        if let Some(&(_, _, parent_end)) = stack.last()
            && s.end > parent_end
        {
            if s.end - parent_end <= 1_000 {
                s.end = parent_end;
            } else {
                let name = format!("{} (overlapping)", b.threads.get(&(s.pid, s.tid)).cloned().unwrap_or_default());
                let tid = b.named_thread(s.pid, &name);
                s.tid = tid;
                out.push(s);
                continue;
            }
        }
        stack.push((s.pid, s.tid, s.end));
        out.push(s);
    }
    b.events = out.into_iter().map(Ev::Slice).chain(rest).collect();
}

fn us(ns: i64) -> f64 {
    ns as f64 / 1000.0
}

fn finish(mut b: Builder, records: &[&MigrationRecord], notes: Vec<String>) -> Export {
    nest(&mut b);
    // Moving overlapping slices to threads of their own may overlap there again; one
    // more pass settles it (each pass only moves slices to fresh threads).
    nest(&mut b);
    let t0 = b.events.iter().map(Ev::at).min().unwrap_or(0);
    // Parents before children at the same start; metadata first.
    b.events.sort_by(|x, y| {
        let key = |e: &Ev| match e {
            Ev::Slice(s) => (s.start, std::cmp::Reverse(s.end - s.start)),
            other => (other.at(), std::cmp::Reverse(0)),
        };
        key(x).cmp(&key(y))
    });
    let mut out = Vec::with_capacity(b.events.len() + b.threads.len() + 8);
    for (pid, name, sort) in
        [(SOURCE_PID, "source", 1), (DESTINATION_PID, "destination", 2), (NETWORK_PID, "network", 3)]
    {
        out.push(json!({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "ts": 0, "args": {"name": name}}));
        out.push(json!({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "ts": 0, "args": {"sort_index": sort}}));
    }
    for ((pid, tid), name) in &b.threads {
        out.push(json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "ts": 0, "args": {"name": name}}));
        out.push(json!({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "ts": 0, "args": {"sort_index": tid}}));
    }
    for e in &b.events {
        out.push(match e {
            Ev::Slice(s) => json!({
                "ph": "X", "name": s.name, "cat": s.cat, "pid": s.pid, "tid": s.tid,
                "ts": us(s.start - t0), "dur": us(s.end - s.start), "args": s.args,
            }),
            Ev::Instant { pid, tid, name, cat, at, args } => json!({
                "ph": "i", "s": "t", "name": name, "cat": cat, "pid": pid, "tid": tid, "ts": us(at - t0), "args": args,
            }),
            Ev::Counter { pid, name, at, value } => json!({
                "ph": "C", "name": name, "pid": pid, "tid": COUNTERS_TID, "ts": us(at - t0), "args": {"value": value},
            }),
        });
    }
    let events = out.len();
    let clocks: BTreeMap<String, Value> = records
        .iter()
        .filter(|r| !r.clocks.is_empty())
        .map(|r| (format!("repetition {}", r.repetition), json!(r.clocks)))
        .collect();
    let json = json!({
        "traceEvents": out,
        "displayTimeUnit": "ms",
        "otherData": {
            "generator": format!("migtrace {}", env!("CARGO_PKG_VERSION")),
            "treatments": records.iter().map(|r| r.treatment.as_str()).collect::<std::collections::BTreeSet<_>>(),
            "migrations": records.len(),
            "clock": "the coordinator's CLOCK_MONOTONIC; ts 0 is the earliest event",
            "t0_monotonic_ns": t0,
            "host_clocks": clocks,
            "notes": notes,
        },
    });
    Export { json, notes, events }
}

/// What a valid trace holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Validated {
    /// Events by phase type (`X`, `i`, `C`, `M`).
    pub by_phase: BTreeMap<String, usize>,
    pub threads: usize,
}

/// Checks `trace` against the Trace Event Format as migtrace writes it: every event has
/// `ph`, `name`, `pid`, `tid` and `ts`; `X` a non-negative `dur`; `C` numeric `args`;
/// `i`/`I` a scope `s`; `M` a known metadata name with its argument; timestamps never
/// go back; slices on each thread properly nested; every process and thread with an
/// event is named.
pub fn validate(trace: &Value) -> Result<Validated, Vec<String>> {
    let mut problems = Vec::new();
    let events = match trace {
        Value::Array(a) => a,
        Value::Object(o) => match o.get("traceEvents").and_then(Value::as_array) {
            Some(a) => a,
            None => return Err(vec!["no traceEvents array".into()]),
        },
        _ => return Err(vec!["neither an array nor an object".into()]),
    };
    let mut v = Validated::default();
    let mut last_ts = f64::NEG_INFINITY;
    let mut stacks: BTreeMap<(u64, u64), Vec<(f64, String)>> = BTreeMap::new();
    let mut named_processes = std::collections::BTreeSet::new();
    let mut named_threads = std::collections::BTreeSet::new();
    let mut used = std::collections::BTreeSet::new();
    const EPS: f64 = 1e-6;
    for (i, e) in events.iter().enumerate() {
        let mut bad = |what: String| problems.push(format!("event {i}: {what}: {e}"));
        let Some(ph) = e.get("ph").and_then(Value::as_str) else {
            bad("no ph".into());
            continue;
        };
        let name = e.get("name").and_then(Value::as_str);
        let pid = e.get("pid").and_then(Value::as_u64);
        let tid = e.get("tid").and_then(Value::as_u64);
        let ts = e.get("ts").and_then(Value::as_f64);
        let (Some(name), Some(pid), Some(tid), Some(ts)) = (name, pid, tid, ts) else {
            bad("missing name, pid, tid or ts".into());
            continue;
        };
        if !ts.is_finite() || ts < 0.0 {
            bad(format!("ts {ts}"));
        }
        *v.by_phase.entry(ph.to_owned()).or_default() += 1;
        let args = e.get("args");
        match ph {
            "M" => {
                match name {
                    "process_name" => {
                        named_processes.insert(pid);
                    }
                    "thread_name" => {
                        named_threads.insert((pid, tid));
                    }
                    "process_sort_index" | "thread_sort_index" | "process_labels" => {}
                    other => bad(format!("unknown metadata {other}")),
                }
                let key = if name.ends_with("sort_index") { "sort_index" } else { "name" };
                if args.and_then(|a| a.get(key)).is_none() {
                    bad(format!("metadata without args.{key}"));
                }
                continue;
            }
            "X" => match e.get("dur").and_then(Value::as_f64) {
                Some(d) if d >= 0.0 && d.is_finite() => {
                    let stack = stacks.entry((pid, tid)).or_default();
                    while stack.last().is_some_and(|(end, _)| *end <= ts + EPS) {
                        stack.pop();
                    }
                    if let Some((end, parent)) = stack.last()
                        && ts + d > end + EPS
                    {
                        bad(format!("slice {name} ends at {} after its parent {parent} ({end})", ts + d));
                    }
                    stack.push((ts + d, name.to_owned()));
                }
                _ => bad("X without a non-negative dur".into()),
            },
            "C" => {
                let ok = args
                    .and_then(Value::as_object)
                    .is_some_and(|a| !a.is_empty() && a.values().all(|x| x.as_f64().is_some_and(f64::is_finite)));
                if !ok {
                    bad("C without numeric args".into());
                }
            }
            "i" | "I" => {
                if !matches!(e.get("s").and_then(Value::as_str), Some("g" | "p" | "t")) {
                    bad("instant without scope s (g, p or t)".into());
                }
            }
            other => bad(format!("phase {other} is not one migtrace writes")),
        }
        if ts + EPS < last_ts {
            bad(format!("ts {ts} before the previous event's {last_ts}"));
        }
        last_ts = last_ts.max(ts);
        used.insert((pid, tid, ph == "C"));
    }
    for (pid, tid, counter) in &used {
        if !named_processes.contains(pid) {
            problems.push(format!("process {pid} has events but no process_name"));
        }
        if !counter && !named_threads.contains(&(*pid, *tid)) {
            problems.push(format!("thread {pid}/{tid} has events but no thread_name"));
        }
    }
    v.threads = named_threads.len();
    if problems.is_empty() { Ok(v) } else { Err(problems) }
}
