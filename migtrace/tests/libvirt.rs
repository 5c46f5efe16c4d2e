//! Root, libvirt, QEMU (TCG here), eBPF: the libvirt backend on two real libvirt daemons
//! (the libvirt lab: each daemon in its own network and mount namespace), traced by a
//! `migtrace agent` started in each host's namespace, or over ssh (a real sshd on each
//! lab host, see `sshd`). Run with `cargo xtask test`.

mod sshd;

use std::{path::Path, time::Duration};

use migtrace::{
    clock::estimate_offset,
    hypervisor::{HostPair, MigrationParams, Status},
    lab::{LabConfig, libvirt::LibvirtLab, registry},
    measure::{
        record::MigrationRecord,
        session::{MeasureOptions, Session},
    },
    probe::agent::{Agent, AgentOptions, HostTracing, start_hosts},
};
use workloads::spec::Spec;

const MIGTRACE: &str = env!("CARGO_BIN_EXE_migtrace");
/// Host b's agent reports every stamp this much late: the coordinator must find it.
const INJECTED_OFFSET_NS: i64 = 2_000_000_000;

/// libvirt's job statistics have no stop-and-copy bytes, and agents do not count the
/// link: that rate is missing, with that reason.
fn no_stop_and_copy_bytes(m: &str) -> bool {
    m.starts_with("params.link.achieved.stop_and_copy_bps: libvirt job stats has no byte count")
}

fn params() -> MigrationParams {
    MigrationParams { timeout_s: 120.0, ..MigrationParams::default() }
}

/// Nothing of the lab is left: no namespace, daemon, QEMU or state.
fn assert_gone(id: &str, daemons: &[u32]) {
    for h in ["a", "b", "c"] {
        let ns = LibvirtLab::ns(id, h);
        assert!(!migtrace::sys::netns::ns_path(&ns).exists(), "namespace {ns} left");
    }
    // A killed daemon may linger as a zombie until its (new) parent reaps it: not running.
    let running = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit(')').next().and_then(|r| r.split_whitespace().next()) != Some("Z"))
    };
    for pid in daemons {
        assert!(!running(pid), "libvirtd {pid} left");
    }
    assert!(registry::qemu_processes(id).is_empty(), "QEMU of lab {id} left: {:?}", registry::qemu_processes(id));
    assert!(!Path::new(registry::RUN_DIR).join(id).exists(), "state of lab {id} left");
}

async fn lab(workload: &str) -> LibvirtLab {
    let config = LabConfig { workload: Spec::parse(workload).expect("spec"), ..LabConfig::default() };
    LibvirtLab::up(config, Default::default()).await.expect("libvirt lab up")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, libvirt and QEMU: two libvirt daemons (run `cargo xtask test`)"]
async fn ping_pong_migrations_traced_by_an_agent_in_each_hosts_namespace() {
    let mut lab = lab("wset=32M,rate=5000").await;
    let (id, daemons) = (lab.id.clone(), lab.daemon_pids());
    let mut commands: Vec<(String, Vec<String>)> = ["a", "b"]
        .iter()
        .enumerate()
        .map(|(i, h)| ((*h).to_owned(), lab.agent_command(i, Path::new(MIGTRACE))))
        .collect();
    commands[1].1.extend(["--clock-offset-ns".to_owned(), INJECTED_OFFSET_NS.to_string()]);
    let opts = AgentOptions { domain: lab.domain.clone(), guest_mac: Some(lab.guest_mac().into()), clock_offset_ns: 0 };
    let hosts = start_hosts(&HostTracing::Agents(commands), &opts).await.expect("agents");
    let mut session = Session::with_hosts(lab.network(), MeasureOptions::default(), hosts);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut records: Vec<MigrationRecord> = Vec::new();
    for rep in 0..3 {
        let r = session.migrate(&mut lab, &params(), rep, "libvirt-lab").await.expect("measured migration");
        assert_eq!(r.outcome.status, Status::Completed, "{:?}", r.outcome.error);
        records.push(r);
        lab.prepare_next().await.expect("next");
    }
    session.stop().await.expect("agents quit");
    lab.down().await;
    assert_gone(&id, &daemons);

    let directions: Vec<&str> = records.iter().map(|r| r.outcome.direction.as_str()).collect();
    assert_eq!(directions, ["a → b", "b → a", "a → b"]);
    for r in &records {
        let what = format!("migration {} ({})", r.repetition, r.outcome.direction);
        // Every measure is there, but for a gap voided because its sender itself stalled
        // (a loaded machine starves the ping or the probe sender; the record says so) and
        // a timeline phase left unplaced (a destination that loaded before the source's
        // last send returned).
        let voided = |m: &&String| m.contains("stalled") || m.contains("late");
        let voided = |m: &&String| voided(m) || no_stop_and_copy_bytes(m);
        let measures_missing: Vec<&String> =
            r.missing.iter().filter(|m| !m.starts_with("timeline: ") && !voided(m)).collect();
        assert!(measures_missing.is_empty(), "{what}: missing {measures_missing:?}");
        let d = &r.downtime_ms;
        for (name, v) in [
            ("ping", d.ping),
            ("ping_max_gap", d.ping_max_gap),
            ("probe_gap", d.probe_gap),
            ("vcpu", d.vcpu),
            ("reported", d.reported),
        ] {
            let why = r.missing.iter().find(|m| m.starts_with(&format!("downtime_ms.{name}:")));
            assert!(v.is_some() || why.is_some_and(|m| voided(&m)), "{what}: downtime_ms.{name} missing ({why:?})");
        }
        // libvirt's own figures on both sides, labelled as libvirt's.
        assert_eq!(r.outcome.stats.reported_by.as_deref(), Some("libvirt job stats"), "{what}");
        assert!(r.outcome.stats.total_time.is_some() && r.outcome.destination_stats.is_some(), "{what}");
        // Both hosts traced: the source's phases and the destination's.
        let t = r.timeline.as_ref().expect("timeline");
        assert!(t.fallbacks.is_empty(), "{what}: {:?}", t.fallbacks);
        for phase in
            ["setup", "pre-copy round 1", "stop-and-copy", "resume", "first guest packet", "destination receive"]
        {
            assert!(t.phase(phase).is_some(), "{what}: phase {phase} missing: {:?}", t.phases);
        }
        assert!(
            r.outcome.source_pid != 0
                && r.outcome.destination_pid != 0
                && r.outcome.source_pid != r.outcome.destination_pid
        );
        let health = r.trace_health.as_ref().expect("health");
        assert!(health.problems.is_empty() && health.lost_records == 0, "{what}: {health:?}");
        // Clocks: the offset injected into host b's agent is found within its bound.
        let (a, b) = (&r.clocks["a"], &r.clocks["b"]);
        assert_eq!((a.source.as_str(), b.source.as_str()), ("agent", "agent"));
        assert!(a.offset_ns.unsigned_abs() <= a.uncertainty_ns, "{what}: host a {a:?}");
        assert!((b.offset_ns - INJECTED_OFFSET_NS).unsigned_abs() <= b.uncertainty_ns, "{what}: host b {b:?}");
        // ... and taken out: the blackout spans two hosts' stamps, yet it is QEMU's
        // downtime plus the destination's load and resume, not 5 ms off.
        let vcpu = d.vcpu.expect("vcpu");
        let reported = d.reported.expect("reported");
        assert!(
            vcpu > 0.0 && (vcpu - reported).abs() < 60.0,
            "{what}: vCPU blackout {vcpu} ms vs libvirt's {reported} ms"
        );
        assert!(r.uncertainty_ms["downtime_ms.vcpu"] > 0.0, "{what}: cross-host bound recorded");
        let check = r.guest.as_ref().and_then(|g| g.memory_check.as_ref()).expect("memory check");
        assert_eq!((check.pages_checked, check.corrupted_pages()), (8192, 0), "{what}");
        let m = r.machine.as_ref().expect("machine");
        assert!(m.hypervisor.contains("libvirt") && !m.version.is_empty(), "{m:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: loads the agent's eBPF programs (run `cargo xtask test`)"]
async fn an_offset_injected_into_an_agent_is_recovered_within_the_reported_uncertainty() {
    for injected in [0i64, 250_000_000, -3_000_000] {
        let opts = AgentOptions { domain: "no-such-domain".into(), guest_mac: None, clock_offset_ns: injected };
        let mut agent = Agent::spawn("test", &[MIGTRACE.to_owned(), "agent".to_owned()], &opts).await.expect("agent");
        let e = agent.clock(32).await.expect("estimate");
        assert!((e.offset_ns - injected).unsigned_abs() <= e.uncertainty_ns, "injected {injected}: {e:?}");
        assert!(e.uncertainty_ns < 5_000_000, "a local pipe bounds it tightly: {e:?}");
        agent.quit().await;
    }
    assert!(estimate_offset(&[]).is_none());
}

#[test]
#[ignore = "needs root: loads the agent's eBPF programs (run `cargo xtask test`)"]
fn an_agent_refuses_an_overlong_request_and_serves_the_next() {
    use std::io::{BufRead as _, Write as _};
    let mut agent = std::process::Command::new(MIGTRACE)
        .args(["agent", "--domain", "no-such-domain"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("agent");
    let mut to = agent.stdin.take().expect("stdin");
    let mut from = std::io::BufReader::new(agent.stdout.take().expect("stdout"));
    let mut answer = || {
        let mut line = String::new();
        from.read_line(&mut line).expect("answer");
        serde_json::from_str::<serde_json::Value>(&line).expect("JSON")
    };
    assert!(answer().get("ready").is_some());
    // 1 MB of a valid request: an agent reading without bound would answer it.
    let pad = "a".repeat(1 << 20);
    writeln!(to, r#"{{"op":"clock","pad":"{pad}"}}"#).expect("write");
    assert_eq!(answer()["error"], "request longer than 65536 bytes");
    writeln!(to, r#"{{"op":"clock"}}"#).expect("write");
    assert!(answer()["t"].as_u64().is_some_and(|t| t > 0), "the next request is served");
    writeln!(to, r#"{{"op":"quit"}}"#).expect("write");
    let status = agent.wait().expect("exit");
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, libvirt and QEMU: two libvirt daemons (run `cargo xtask test`)"]
async fn a_migration_to_a_host_whose_daemon_stopped_fails_cleanly_with_a_record() {
    let mut lab = lab("idle").await;
    let (id, daemons) = (lab.id.clone(), lab.daemon_pids());
    lab.stop_daemon(1).await;
    let mut session = Session::with_hosts(
        lab.network(),
        MeasureOptions { trace: false, ..MeasureOptions::default() },
        Default::default(),
    );
    let started = std::time::Instant::now();
    let r = session.migrate(&mut lab, &params(), 0, "dead-destination").await.expect("the attempt is recorded");
    assert_eq!(r.outcome.status, Status::Failed);
    let error = r.outcome.error.clone().unwrap_or_default();
    assert!(error.contains("a → b") && error.contains("unreachable"), "the error names the problem: {error}");
    assert!(started.elapsed() < Duration::from_secs(60), "no hang: {:?}", started.elapsed());
    // The guest still runs on host a.
    assert_eq!(lab.endpoints().0, "a");
    session.stop().await.expect("stop");
    lab.down().await;
    assert_gone(&id, &daemons);
}

fn migtrace() -> std::process::Command {
    std::process::Command::new(MIGTRACE)
}

/// Runs `migtrace migrate ARGS --out OUT` on the client machine of `ssh`; its records.
fn migrate_on_client(ssh: &sshd::SshLab, args: &[&str], out: &Path) -> Vec<MigrationRecord> {
    let argv = ssh.on_client();
    let output = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .arg(MIGTRACE)
        .arg("migrate")
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .expect("migrate");
    assert!(output.status.success(), "migrate {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    migtrace::measure::record::read(out).expect("records")
}

/// Every measure of a record, with its value.
fn measures(r: &MigrationRecord) -> [(&'static str, Option<f64>); 9] {
    let (d, m) = (&r.downtime_ms, &r.migration_time_ms);
    [
        ("downtime_ms.ping", d.ping),
        ("downtime_ms.ping_max_gap", d.ping_max_gap),
        ("downtime_ms.probe_gap", d.probe_gap),
        ("downtime_ms.vcpu", d.vcpu),
        ("downtime_ms.reported", d.reported),
        ("migration_time_ms.command", m.command),
        ("migration_time_ms.reported", m.reported),
        ("migration_time_ms.traced", m.traced),
        ("migration_time_ms.traced_to_resume", m.traced_to_resume),
    ]
}

/// Whether a missing measure's reason is its sender's stall (the ping's or the probe
/// sender's).
fn stalled(reason: &str) -> bool {
    reason.contains("stalled") || reason.contains("ping itself was")
}

/// What a destination agent that attached late missed, as the record says it: the load
/// (attached after the setup) and the resume (attached after the source stopped). The
/// agent finds libvirt's incoming QEMU by polling and attaches its probes then, a race
/// with libvirt starting the load that a loaded machine sometimes loses.
fn attached_late(r: &MigrationRecord, what: &str) -> bool {
    r.missing.iter().any(|m| m.starts_with(&format!("timeline: {what}: the destination's tracer attached")))
}

/// Whether a measure is missing for a reason the record gives that is not the path's:
/// its sender stalled (a loaded machine starves the ping or the probe sender, which
/// voids their gap and says so), or its destination agent attached after the resume.
fn voided(r: &MigrationRecord, name: &str) -> bool {
    r.missing.iter().any(|m| m.starts_with(&format!("{name}:")) && stalled(m))
        || (attached_late(r, "destination-resumed")
            && ["downtime_ms.vcpu", "migration_time_ms.traced_to_resume"].contains(&name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, libvirt, QEMU and openssh-server: libvirt and the agents over real ssh (run `cargo xtask test`)"]
async fn libvirt_over_ssh_with_default_agents_records_what_namespace_agents_record() {
    use migtrace::{hypervisor::libvirt::LibvirtHost, lab::libvirt::GUEST_IP, probe::agent::ssh_argv};
    use std::net::Ipv4Addr;
    // The hosts' management addresses, on the guest network the client is on.
    const HOST_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 78, 0, 1), Ipv4Addr::new(10, 78, 0, 2)];
    use std::os::unix::fs::PermissionsExt as _;
    let lab = lab("wset=16M,rate=1000").await;
    let (id, daemons) = (lab.id.clone(), lab.daemon_pids());
    // Host a's sshd at ssh's default port, host b's at another: the URIs say which.
    let hosts = [(0, 22), (1, 2222)].map(|(i, port)| sshd::Host {
        ns: lab.host_namespaces()[i].clone(),
        daemon_pid: daemons[i],
        addr: HOST_IPS[i],
        port,
        unknown_port: 2200,
    });
    let ssh = sshd::SshLab::start(&hosts, &LibvirtLab::ns(&id, "c"), Path::new(MIGTRACE));
    let guest = GUEST_IP.to_string();

    // A host key ssh does not know fails at once, never asking: an askpass program that
    // would answer (never) is not even started.
    let (askpass, asked) = (ssh.dir.join("askpass"), ssh.dir.join("asked"));
    std::fs::write(&askpass, format!("#!/bin/sh\ntouch {}\nexec sleep 30\n", asked.display())).expect("askpass");
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o755)).expect("mode");
    // (Host b: ssh also accepts a host key known for the host at port 22, as host a's is.)
    let unknown = LibvirtHost::from_uri(&format!("qemu+ssh://root@{}:2200/system", HOST_IPS[1]), "b");
    let mut argv = ssh.on_client();
    argv.extend(["env".into(), format!("SSH_ASKPASS={}", askpass.display())]);
    argv.extend(["SSH_ASKPASS_REQUIRE=force".into(), "DISPLAY=:0".into()]);
    argv.extend(ssh_argv(&unknown.ssh().expect("ssh")).expect("argv"));
    let opts = AgentOptions { domain: lab.domain.clone(), guest_mac: Some(lab.guest_mac().into()), clock_offset_ns: 0 };
    let started = std::time::Instant::now();
    let e = Agent::spawn(&unknown.name, &argv, &opts).await.err().expect("an unknown host key is refused");
    assert!(started.elapsed() < Duration::from_secs(15), "no wait for a prompt: {:?}", started.elapsed());
    assert!(e.to_string().contains("Host key verification failed"), "{e}");
    assert!(!asked.exists(), "ssh asked");

    // libvirt over qemu+ssh, agents by default (`ssh HOST migtrace agent`), as a user
    // runs it from the client machine; then the same domain with agents in the hosts'
    // namespaces over the daemons' sockets, the path the other tests verify.
    let (a, b) =
        (format!("qemu+ssh://root@{}/system", HOST_IPS[0]), format!("qemu+ssh://root@{}:2222/system", HOST_IPS[1]));
    let common = ["--domain", &lab.domain, "--guest-ip", &guest, "--count", "2", "--warmup", "1"];
    let over_ssh = tokio::task::block_in_place(|| {
        migrate_on_client(&ssh, &[&["--libvirt", &a, &b], &common[..]].concat(), &ssh.dir.join("over-ssh"))
    });
    let uris: Vec<String> = lab.pair().expect("pair").hosts.iter().map(|h| h.uri.clone()).collect();
    let agent = |i: usize| lab.agent_command(i, Path::new(MIGTRACE)).join(" ");
    let (agent_a, agent_b) = (agent(0), agent(1));
    let in_ns = tokio::task::block_in_place(|| {
        let args = [
            &["--libvirt", &uris[0], &uris[1], "--agent-source", &agent_a, "--agent-destination", &agent_b],
            &common[..],
        ]
        .concat();
        migrate_on_client(&ssh, &args, &ssh.dir.join("in-ns"))
    });
    let logs = [ssh.log(0), ssh.log(1)];
    let ssh_pids = ssh.pids();
    drop(ssh);
    lab.down().await;
    assert_gone(&id, &daemons);
    for pid in ssh_pids {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "sshd or client {pid} left");
    }

    // Both hosts' sshd let the client in: libvirt's connection and the agent.
    for (i, log) in logs.iter().enumerate() {
        let logins = log.matches("Accepted publickey for root from 10.78.0.100").count();
        assert!(logins >= 2, "host {i}: {logins} logins: {log}");
    }
    let (h1, h2) = (HOST_IPS[0].to_string(), HOST_IPS[1].to_string());
    let directions: Vec<&str> = over_ssh.iter().map(|r| r.outcome.direction.as_str()).collect();
    assert_eq!(directions, [format!("{h1} → {h2}"), format!("{h2} → {h1}")]);
    assert_eq!(in_ns.len(), 2);
    for (s, n) in over_ssh.iter().zip(&in_ns) {
        let what = format!(
            "migration {} ({}); missing over ssh {:?}, in namespaces {:?}",
            s.repetition, s.outcome.direction, s.missing, n.missing
        );
        assert_eq!((s.outcome.status, n.outcome.status), (Status::Completed, Status::Completed), "{what}");
        // Traced by an agent on each host, reached over ssh.
        let hosts: Vec<(&str, &str)> = s.clocks.iter().map(|(h, c)| (h.as_str(), c.source.as_str())).collect();
        assert_eq!(hosts, [(h1.as_str(), "agent"), (h2.as_str(), "agent")], "{what}");
        // The same fields, the same phases, the same missing; figures of the same order
        // (a loaded 2-core machine varies them by a few times).
        let reason = |r: &MigrationRecord, k: &str| r.missing.iter().find(|m| m.starts_with(&format!("{k}:"))).cloned();
        for ((k, vs), (_, vn)) in measures(s).into_iter().zip(measures(n)) {
            if voided(s, k) || voided(n, k) {
                continue;
            }
            let (Some(vs), Some(vn)) = (vs, vn) else {
                let both = vs.is_none() && vn.is_none() && reason(s, k).is_some() && reason(s, k) == reason(n, k);
                assert!(both, "{what}: {k} over ssh {vs:?}, in namespaces {vn:?}");
                continue;
            };
            if vn > 0.0 {
                let ratio = vs / vn;
                assert!((0.1..=10.0).contains(&ratio), "{what}: {k} over ssh {vs} ms, in namespaces {vn} ms");
            }
        }
        // A late destination agent (its record says so) leaves the load unplaced: its
        // phases are then compared as the load and resume in one.
        let late = [s, n].iter().any(|r| attached_late(r, "destination receive"));
        if late {
            eprintln!("{what}: a destination agent attached after the load began");
        }
        // (How many pre-copy rounds a migration takes varies with the workload, and a
        // vm-stop phase is there only when a vCPU ran guest code at the stop.)
        let phases = |r: &MigrationRecord| {
            let name = |p: &migtrace::measure::timeline::Phase| {
                if p.name.starts_with("pre-copy round ") { "pre-copy round k".to_owned() } else { p.name.clone() }
            };
            let mut p: Vec<String> = r.timeline.as_ref().expect("timeline").phases.iter().map(name).collect();
            p.retain(|p| p != "vm-stop");
            if late {
                p.retain(|p| p != "destination receive");
                for p in p.iter_mut().filter(|p| *p == "destination load" || *p == "resume") {
                    *p = "destination load + resume".into();
                }
            }
            p.sort();
            p.dedup();
            p
        };
        assert_eq!(phases(s), phases(n), "{what}");
        let evidence = |r: &MigrationRecord| {
            let mut e = r.evidence.clone();
            if [s, n].iter().any(|r| attached_late(r, "destination-resumed")) {
                e.retain(|k, _| k == "migration_time_ms.traced");
            }
            e
        };
        assert_eq!(evidence(s), evidence(n), "{what}");
        for r in [s, n] {
            let health = r.trace_health.as_ref().expect("health");
            assert!(health.problems.is_empty() && health.lost_records == 0, "{what}: {health:?}");
            let check = r.guest.as_ref().and_then(|g| g.memory_check.as_ref()).expect("memory check");
            assert_eq!((check.pages_checked, check.corrupted_pages()), (4096, 0), "{what}");
        }
        // Missing for the same reasons, but for a stalled sender or a late agent.
        let reasons = |r: &MigrationRecord| {
            let mut m: Vec<String> = r
                .missing
                .iter()
                .filter(|m| !stalled(m) && !m.contains("the destination's tracer attached"))
                .filter(|m| !voided(r, m.split(':').next().unwrap_or_default()))
                .cloned()
                .collect();
            m.sort();
            m
        };
        assert_eq!(reasons(s), reasons(n), "{what}");
        assert_eq!(s.machine.as_ref().map(|m| &m.version), n.machine.as_ref().map(|m| &m.version));
        // Clocks over ssh: the bound stays small next to the blackout.
        for c in s.clocks.values() {
            assert!(c.uncertainty_ns < 5_000_000, "{what}: {c:?}");
        }
    }
}

fn temp_root(tag: &str) -> std::path::PathBuf {
    let root = std::env::temp_dir().join(format!("migtrace-libvirt-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("temp dir");
    root
}

/// Ends a child migtrace even when the test fails.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        // Stopped as a user stops it (Ctrl-C): the lab tears itself down. A failed
        // assertion must not leave the lab's daemons and their QEMU behind.
        // SAFETY: signalling the child this test started, by pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if !matches!(self.0.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        // What it could not remove: `lab clean` takes labs whose owner is gone.
        let _ = migtrace().args(["lab", "clean"]).status();
    }
}

#[test]
#[ignore = "needs root, libvirt and QEMU: an experiment on the libvirt lab (run `cargo xtask test`)"]
fn an_experiment_runs_on_the_libvirt_lab_through_the_cli() {
    let root = temp_root("run");
    let spec = root.join("spec.toml");
    std::fs::write(
        &spec,
        "name = \"libvirt-run\"\nbackend = \"libvirt-lab\"\nrepetitions = 2\nwarmup = \"1s\"\n\
         [factors]\nwset = [\"16M\"]\nrate = [2000]\n[measure]\nsettle_s = 0.5\n",
    )
    .expect("spec");
    let out = migtrace().args(["run"]).arg(&spec).arg("--results").arg(&root).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let records = migtrace::measure::record::read(&root.join("libvirt-run")).expect("records");
    assert_eq!(records.len(), 2);
    for r in &records {
        assert_eq!(r.outcome.status, Status::Completed, "{:?}", r.outcome.error);
        assert_eq!(r.outcome.stats.reported_by.as_deref(), Some("libvirt job stats"));
        assert_eq!(r.clocks.len(), 2, "both hosts traced by agents");
        assert!(r.downtime_ms.probe_gap.is_some() && r.downtime_ms.vcpu.is_some(), "{:?}", r.missing);
    }
    assert_eq!(records.iter().map(|r| r.outcome.direction.as_str()).collect::<Vec<_>>(), ["a → b", "b → a"]);
    std::fs::remove_dir_all(&root).expect("cleanup");
}

#[test]
#[ignore = "needs root, libvirt and QEMU: `migrate --libvirt` against two daemons (run `cargo xtask test`)"]
fn migrate_points_at_two_libvirt_hosts_by_uri_with_agents_started_by_command() {
    // Two real daemons to point at: a libvirt lab brought up by another migtrace.
    let mut lab = Child(
        migtrace()
            .args(["lab", "up", "--backend", "libvirt", "--workload", "wset=16M,rate=1000"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("lab up"),
    );
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(lab.0.stdout.take().expect("stdout")));
    let (mut uris, mut id, mut domain) = (Vec::new(), String::new(), String::new());
    for line in lines.by_ref() {
        let line = line.expect("line");
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["libvirt", "lab", lab_id, "up", ..] => id = (*lab_id).to_owned(),
            ["host", _, uri, ..] => uris.push((*uri).to_owned()),
            ["domain", name, ..] => domain = (*name).to_owned(),
            ["Ctrl-C", ..] => break,
            _ => {}
        }
    }
    assert_eq!(uris.len(), 2, "the lab printed both hosts' URIs");
    let out_dir = temp_root("cli");
    let agent = |h: &str| format!("ip netns exec {} {MIGTRACE} agent", LibvirtLab::ns(&id, h));
    let out = migtrace()
        .args(["migrate", "--libvirt", &uris[0], &uris[1], "--domain", &domain])
        .args(["--guest-ip", &migtrace::lab::libvirt::GUEST_IP.to_string(), "--probe-netns", &LibvirtLab::ns(&id, "c")])
        .args(["--agent-source", &agent("a"), "--agent-destination", &agent("b"), "--count", "2", "--out"])
        .arg(&out_dir)
        .output()
        .expect("migrate");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let records = migtrace::measure::record::read(&out_dir).expect("records");
    assert_eq!(records.len(), 2);
    for r in &records {
        assert_eq!(r.outcome.status, Status::Completed);
        // A sender stalled by the loaded host voids its own gap, flagged, never passed off
        // as the guest's; nothing else may be missing.
        let stalled = |m: &String| m.contains("stalled") || m.contains("ping itself was") || no_stop_and_copy_bytes(m);
        assert!(r.missing.iter().all(|m| m.starts_with("timeline: ") || stalled(m)), "{:?}", r.missing);
        // Hosts named after their URIs' host part: here the local socket, so source/destination.
        assert_eq!(r.clocks.len(), 2);
    }
    // Stop the lab as a user would; nothing of it may remain.
    let status = migtrace().args(["lab", "down", &id]).status().expect("lab down");
    assert!(status.success());
    let _ = lab.0.wait();
    assert_gone(&id, &[]);
    std::fs::remove_dir_all(&out_dir).expect("cleanup");
}

#[test]
#[ignore = "needs root, libvirt and QEMU: a killed libvirt lab cleaned up (run `cargo xtask test`)"]
fn a_killed_libvirt_lab_is_removed_by_lab_clean() {
    let mut lab = Child(
        migtrace()
            .args(["lab", "up", "--backend", "libvirt"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("lab up"),
    );
    let lines = std::io::BufRead::lines(std::io::BufReader::new(lab.0.stdout.take().expect("stdout")));
    let mut id = String::new();
    for line in lines {
        let line = line.expect("line");
        if let ["libvirt", "lab", lab_id, "up", ..] = line.split_whitespace().collect::<Vec<_>>().as_slice() {
            id = (*lab_id).to_owned();
        }
        if line.starts_with("Ctrl-C") {
            break;
        }
    }
    let state = registry::list().into_iter().find(|s| s.id == id).expect("registered");
    assert_eq!(state.more_netns.len(), 3);
    assert_eq!(state.daemon_pids.len(), 2);
    // SIGKILL: no cleanup by the owner. Its daemons die with it; its QEMU does not.
    lab.0.kill().expect("kill");
    let _ = lab.0.wait();
    assert!(!registry::qemu_processes(&id).is_empty(), "the guest's QEMU outlives a killed owner");
    let out = migtrace().args(["lab", "clean"]).output().expect("lab clean");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id));
    assert_gone(&id, &state.daemon_pids);
}
