//! The binary: exit codes, error messages, JSON-line reports.

use std::process::{Command, Output};

fn workloads(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_workloads")).args(args).output().expect("run workloads")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn bad_specs_exit_2_with_the_problem_named() {
    for (args, needle) in [
        (&["run", "wset=1M,colour=red"][..], "unknown key \"colour\""),
        (&["run", "wset=1Q"], "unknown unit \"Q\""),
        (&["dirty", "--wset", "1M", "--period", "0ms", "--bpc", "1"], "greater than zero"),
        (&["dirty", "--wset", "1M", "--rate", "10", "--fill", "150"], "between 0 and 100"),
        (&["locked", "--wset", "65536G"], "larger than the memory available"),
    ] {
        let o = workloads(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn dirty_reports_achieved_rate_as_json_lines() {
    let o = workloads(&[
        "--duration",
        "1s",
        "--report-every",
        "200ms",
        "dirty",
        "--wset",
        "2M",
        "--rate",
        "5000",
        "--fill",
        "50",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("every stdout line is JSON"))
        .collect();
    assert_eq!(lines[0]["gen"], "locked");
    assert_eq!(lines[0]["wset_bytes"], 2 << 20);
    let dirty: Vec<_> = lines.iter().filter(|l| l["gen"] == "dirty").collect();
    assert!(dirty.len() >= 3, "periodic reports plus the final one: {lines:?}");
    let last = dirty.last().expect("final report");
    assert_eq!(last["target_rate"], 5000.0);
    assert_eq!(last["fill_bytes"], 2048);
    let rate = last["rate"].as_f64().expect("rate");
    assert!((4000.0..6000.0).contains(&rate), "achieved {rate} pages/s for a 5000 target over 1 s");
}

#[test]
fn cpu_generator_reports_achieved_load() {
    let o = workloads(&["--duration", "1s", "cpu", "--load", "30", "--cpus", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let last: serde_json::Value = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .rfind(|v: &serde_json::Value| v["gen"] == "cpu")
        .expect("a cpu report");
    let load = last["achieved_load"].as_f64().expect("achieved_load");
    // A loose band: this checks the duty cycle works, not scheduler precision.
    assert!((15.0..45.0).contains(&load), "achieved {load} % for a 30 % target");
}

#[test]
fn agent_reads_spec_from_kernel_command_line() {
    let dir = std::env::temp_dir().join(format!("workloads-agent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let cmdline = dir.join("cmdline");
    std::fs::write(&cmdline, "console=ttyS0 migtrace.workload=wset=1M,rate=1000 quiet\n").expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_workloads"))
        .args(["--report-every", "100ms", "agent", "--cmdline"])
        .arg(&cmdline)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn agent");
    std::thread::sleep(std::time::Duration::from_millis(600));
    let _ = child.kill();
    let out = child.wait_with_output().expect("agent output");
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().expect("a line");
    assert_eq!(first, r#"migtrace-agent: {"event":"start","spec":"wset=1M,period=10000us,bpc=10,fill=100"}"#);
    assert!(text.lines().any(|l| l.starts_with("migtrace-agent: {") && l.contains(r#""gen":"dirty""#)), "{text}");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
