//! The fault matrix, through the `migtrace` binary as a user runs it: missing privileges,
//! a full or read-only results directory, a ring buffer that overflows, two runs at
//! once; every one a clear error, the records already written intact, nothing left
//! behind. Also: results are never world-writable, links planted in a results directory
//! are refused, nothing goes through a shell. The
//! lab's own faults (a QEMU killed, the stream cut) are in lab.rs, SIGKILL of a run in
//! experiment.rs. Root-only tests run with `cargo xtask test`.

use std::{
    fs, io,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use migtrace::{
    files::{self, LockError},
    lab::{LabError, registry},
    measure::record::{self, RecordError},
    probe::ProbeError,
};

fn migtrace() -> Command {
    Command::new(env!("CARGO_BIN_EXE_migtrace"))
}

fn temp_root(tag: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("migtrace-fault-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root).expect("temp dir");
    // Readable by an unprivileged user too (the not-root case reads the spec).
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).expect("chmod");
    root
}

/// One repetition of one cheap treatment, no probes: a lab boot and a migration.
fn tiny_spec(name: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\nrepetitions = 1\nwarmup = \"200ms\"\n[factors]\nwset = [\"16M\"]\nrate = [0]\n{extra}\
         [measure]\ntracing = false\nping_interval_ms = 0\nprobe_rate_hz = 0\nsettle_s = 0.2\nsettle_max_s = 0.2\n\
         memory_check = false\n"
    )
}

fn write_spec(root: &Path, name: &str, text: &str) -> PathBuf {
    let path = root.join(format!("{name}.toml"));
    fs::write(&path, text).expect("spec");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
    path
}

/// The message of the `error: …` line: exactly one, and one line.
fn error_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected a failure; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(lines.len(), 1, "one error line expected: {stderr}");
    // Nothing continues it on further lines.
    let after = stderr.split_once(lines[0]).map_or("", |(_, rest)| rest);
    assert!(after.trim().is_empty(), "the error goes on past its line: {stderr}");
    lines[0].to_owned()
}

/// Labs (registry entries, namespaces, QEMUs) owned by `pid` that are still around.
fn labs_of(pid: u32) -> Vec<String> {
    registry::list().into_iter().filter(|s| s.owner_pid == pid).map(|s| s.id).collect()
}

/// Files (and directories) under `dir` whose mode lets group or others write.
fn writable_by_others(dir: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).expect("ls").flatten() {
            let meta = entry.metadata().expect("stat");
            if meta.permissions().mode() & 0o022 != 0 {
                bad.push(format!("{} {:o}", entry.path().display(), meta.permissions().mode() & 0o777));
            }
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    bad
}

/// Temporary files of atomic writes left anywhere under `dir`.
fn temporaries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".tmp.") || n.starts_with(".migtrace-write-check"))
                .collect()
        })
        .unwrap_or_default()
}

/// Every line of the records file is a whole record: nothing torn, nothing to repair.
fn whole_records(dir: &Path) -> usize {
    let bytes = fs::read(dir.join(record::RECORDS_FILE)).unwrap_or_default();
    assert!(bytes.is_empty() || bytes.ends_with(b"\n"), "the records file ends in a torn line");
    let records = record::parse(&dir.join(record::RECORDS_FILE), &bytes).expect("every line parses");
    assert_eq!(records.len(), bytes.iter().filter(|&&b| b == b'\n').count());
    records.len()
}

/// A small tmpfs mounted for one test, unmounted (lazily, whatever happened) on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(tag: &str, size: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("migtrace-tmpfs-{tag}-{}", std::process::id()));
        let _ = fs::create_dir_all(&dir);
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("mount")
            .success();
        assert!(ok, "mounting a tmpfs at {}", dir.display());
        Self { dir }
    }

    fn remount(&self, opts: &str) {
        let ok = Command::new("mount").args(["-o", &format!("remount,{opts}")]).arg(&self.dir).status();
        assert!(ok.expect("mount").success(), "remount {opts}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = fs::remove_dir(&self.dir);
    }
}

/// Fills the file system holding `dir` to the last byte; returns the filler file.
fn fill(dir: &Path) -> PathBuf {
    use io::Write as _;
    let path = dir.join("filler");
    let mut f = fs::File::create(&path).expect("filler");
    let chunk = vec![0u8; 64 << 10];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling: {e}"),
        }
    }
    // The last partial page too.
    while f.write(&[0u8; 512]).is_ok_and(|n| n > 0) {}
    path
}

// ---- without root --------------------------------------------------------------------

#[test]
fn every_fault_message_is_one_line_with_its_cause_and_its_fix() {
    let os = |code| io::Error::from_raw_os_error(code);
    let cases: Vec<(String, &[&str])> = vec![
        (LabError::NotRoot.to_string(), &["needs root", "run migtrace as root"]),
        (LabError::NoCapability("CAP_NET_ADMIN".into()).to_string(), &["lacks CAP_NET_ADMIN", "full capability set"]),
        (ProbeError::NotRoot.to_string(), &["needs root", "run migtrace as root"]),
        (
            ProbeError::NoCapability("CAP_BPF, CAP_PERFMON".into()).to_string(),
            &["lacks CAP_BPF, CAP_PERFMON", "full capability set"],
        ),
        (ProbeError::Tracefs(os(libc::ENODEV)).to_string(), &["tracefs is not mounted", "mount -t tracefs"]),
        (ProbeError::NotBuilt.to_string(), &["cargo xtask build"]),
        (ProbeError::RingSize("1000".into()).to_string(), &["MIGTRACE_EVENTS_RING_BYTES", "power of two", "unset it"]),
        (
            LockError::Held { dir: "results/x".into(), pid: 4242 }.to_string(),
            &["results/x is in use by migtrace pid 4242", "kill -INT 4242"],
        ),
        (
            RecordError::Io { path: "r/migrations.jsonl".into(), source: os(libc::ENOSPC) }.to_string(),
            &["No space left", "file system is full", "resumes"],
        ),
        (
            RecordError::Io { path: "r/migrations.jsonl".into(), source: os(libc::EROFS) }.to_string(),
            &["Read-only", "remount it read-write"],
        ),
        (LockError::Io { path: "r/.migtrace.lock".into(), source: os(libc::EACCES) }.to_string(), &["permission"]),
    ];
    for (message, needles) in cases {
        assert!(!message.contains('\n'), "more than one line: {message}");
        for n in needles {
            assert!(message.contains(n), "{message:?} lacks {n:?}");
        }
    }
}

#[test]
fn results_are_not_world_writable_even_with_umask_0() {
    // A results directory as a run leaves it, recomputed by `migtrace report --html`
    // under umask 0: every file and directory it makes is the owner's to write alone.
    let root = temp_root("umask");
    let dir = root.join("umask-test");
    fs::create_dir_all(&dir).expect("dir");
    fs::write(dir.join("spec.toml"), tiny_spec("umask-test", "")).expect("spec");
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tcg-dirty-2000.jsonl");
    let mut rec = record::read(Path::new(fixture)).expect("fixture").remove(0);
    rec.treatment = "wset=16M,rate=0".into();
    rec.trace = None;
    fs::write(dir.join(record::RECORDS_FILE), format!("{}\n", serde_json::to_string(&rec).expect("json")))
        .expect("records");
    let mut cmd = migtrace();
    cmd.arg("report").arg(&dir).arg("--html");
    // SAFETY: umask only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let out = cmd.output().expect("report");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in ["summary.json", "treatments.csv", "migrations.csv", "report.txt", "report.html", "plots"] {
        assert!(dir.join(f).exists(), "{f} not written");
    }
    let bad = writable_by_others(&dir);
    assert!(bad.is_empty(), "group- or world-writable: {bad:?}");
    fs::remove_dir_all(&root).expect("cleanup");
}

#[test]
fn nothing_is_run_through_a_shell() {
    // Commands are argv vectors everywhere; a shell would read a domain name or a URI
    // as syntax. (The agent command is split into words: see probe::agent::agent_argv.)
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut stack: Vec<PathBuf> =
        ["migtrace/src", "migtrace-common/src", "workloads/src", "xtask/src"].iter().map(|d| root.join(d)).collect();
    let mut offenders = Vec::new();
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).expect("ls").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = fs::read_to_string(&path).expect("read");
                for needle in ["Command::new(\"sh\")", "Command::new(\"bash\")", "Command::new(\"/bin/sh\")", "\"-c\""]
                {
                    if text.contains(needle) {
                        offenders.push(format!("{}: {needle}", path.display()));
                    }
                }
            }
        }
    }
    assert!(offenders.is_empty(), "shell use: {offenders:?}");
}

// ---- root ----------------------------------------------------------------------------

#[test]
#[ignore = "needs root: runs migtrace with privileges dropped (run `cargo xtask test`)"]
fn missing_privileges_fail_at_once_with_one_line_cause_and_fix() {
    let root = temp_root("privileges");
    let spec = write_spec(&root, "priv", &tiny_spec("priv", ""));
    let results = root.join("results");
    let run = |setpriv: &[&str], args: &[&str]| -> (String, Duration) {
        let started = Instant::now();
        let out = Command::new("setpriv")
            .args(setpriv)
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_migtrace"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("setpriv");
        (error_line(&out), started.elapsed())
    };
    let spec_s = spec.to_string_lossy().into_owned();
    let results_s = results.to_string_lossy().into_owned();
    let run_args = ["run", spec_s.as_str(), "--results", results_s.as_str()];
    // Not root.
    let (e, took) = run(&["--reuid=65534", "--regid=65534", "--clear-groups"], &run_args);
    assert!(e.contains("needs root") && e.contains("run migtrace as root"), "{e}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // Root without capabilities (a restricted container).
    let (e, _) = run(&["--inh-caps=-all", "--bounding-set=-all"], &run_args);
    assert!(e.contains("lacks CAP_SYS_ADMIN, CAP_NET_ADMIN") && e.contains("full capability set"), "{e}");
    // Root with what a lab takes but no BPF permission: the probes say so.
    let (e, _) = run(&["--inh-caps=-all", "--bounding-set=-bpf,-perfmon,-sys_admin"], &["selftest"]);
    assert!(e.contains("lacks CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN") && e.contains("full capability set"), "{e}");
    // Refused before anything: no results directory, no lab.
    assert!(!results.join("priv").exists(), "a refused run made its results directory");
    fs::remove_dir_all(&root).expect("cleanup");
}

/// Entries at and under `dir` (not following links) whose mode lets group or others in.
fn open_to_others(dir: &Path) -> (Vec<String>, usize) {
    let (mut open, mut seen) = (Vec::new(), 0);
    let mut stack = vec![dir.to_owned()];
    while let Some(p) = stack.pop() {
        let meta = fs::symlink_metadata(&p).expect("lstat");
        seen += 1;
        if meta.permissions().mode() & 0o077 != 0 {
            open.push(format!("{} {:?} {:o}", p.display(), meta.file_type(), meta.permissions().mode() & 0o7777));
        }
        if meta.is_dir() {
            stack.extend(fs::read_dir(&p).expect("ls").flatten().map(|e| e.path()));
        }
    }
    (open, seen)
}

/// A `migtrace lab up` child, stopped (SIGINT, as Ctrl-C) and reaped on drop.
struct LabUp(std::process::Child);

impl Drop for LabUp {
    fn drop(&mut self) {
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let _ = self.0.wait();
    }
}

/// Whether others can reach `path`: every directory above it lets them through and
/// it lets them read or write.
fn reachable_by_others(path: &Path) -> bool {
    let mode = |p: &Path| fs::symlink_metadata(p).expect("lstat").permissions().mode();
    path.ancestors().skip(1).all(|a| mode(a) & 0o001 != 0) && mode(path) & 0o006 != 0
}

/// Starts `migtrace ARGS` (a `lab up`) under umask 0 and waits until the lab is up;
/// returns it with its id.
fn lab_up_under_umask_0(args: &[&str]) -> (LabUp, String) {
    use io::BufRead as _;
    let mut cmd = migtrace();
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::null());
    // SAFETY: umask only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let mut lab = LabUp(cmd.spawn().expect("lab up"));
    let stdout = lab.0.stdout.take().expect("stdout");
    let (mut id, mut seen) = (None, String::new());
    for line in io::BufReader::new(stdout).lines().map_while(Result::ok) {
        seen.push_str(&line);
        seen.push('\n');
        // "lab ID up in …" or "libvirt lab ID up in …".
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(i) = words.iter().position(|w| *w == "lab")
            && words.get(i + 2..i + 4) == Some(&["up", "in"][..])
        {
            id = Some(words[i + 1].to_owned());
        }
        if line.starts_with("Ctrl-C or") {
            break;
        }
    }
    let id = id.unwrap_or_else(|| panic!("the lab did not come up: {seen}"));
    (lab, id)
}

#[test]
#[ignore = "needs root and QEMU: boots a lab under umask 0 (run `cargo xtask test`)"]
fn a_lab_under_umask_0_keeps_its_runtime_directory_and_qmp_sockets_to_root() {
    // Anyone who reaches a root QEMU's QMP socket runs commands as root: under umask 0
    // nothing of the lab's state may be open to group or others, the sockets QEMU makes
    // included.
    let (lab, id) = lab_up_under_umask_0(&["lab", "up", "--vmsize", "128"]);
    let dir = Path::new(registry::RUN_DIR).join(&id);
    let sockets = fs::read_dir(&dir).expect("ls").flatten().filter(|e| e.path().extension() == Some("qmp".as_ref()));
    assert_eq!(sockets.count(), 4, "two QEMUs, two QMP sockets each");
    let (open, entries) = open_to_others(&dir);
    assert!(open.is_empty(), "open to group or others under umask 0 (of {entries}): {open:?}");
    let run = fs::metadata(registry::RUN_DIR).expect("stat").permissions().mode() & 0o777;
    assert_eq!(run & 0o077, 0, "{} is {run:o}", registry::RUN_DIR);
    drop(lab);
    assert!(!dir.exists(), "the lab's state outlived it");
}

#[test]
#[ignore = "needs root, libvirt and QEMU: boots a libvirt lab under umask 0 (run `cargo xtask test`)"]
fn a_libvirt_lab_under_umask_0_keeps_its_state_to_root() {
    let (lab, id) = lab_up_under_umask_0(&["lab", "up", "--backend", "libvirt", "--vmsize", "128"]);
    let dir = Path::new(registry::RUN_DIR).join(&id);
    // What migtrace makes for each host, and the daemons' sockets (their configuration),
    // are root's alone.
    let mut open = Vec::new();
    for h in ["a", "b"] {
        for p in ["", "etc", "etc/libvirtd.conf", "etc/qemu.conf", "hosts", "libvirtd.stderr", "run", "lib/qemu"]
            .into_iter()
            .chain(["log/qemu", "cache", "run/libvirt-sock", "run/libvirt-sock-ro"])
        {
            let path = dir.join(h).join(p);
            let mode = fs::symlink_metadata(&path).expect("lstat").permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                open.push(format!("{} {mode:o}", path.display()));
            }
        }
    }
    assert!(open.is_empty(), "open to group or others under umask 0: {open:?}");
    // libvirt and its QEMU make the rest with modes of their own (QEMU's monitor socket
    // 0764): none of it is reachable, the lab's directory being root's alone.
    let mut stack = vec![dir.clone()];
    let mut reachable = Vec::new();
    while let Some(p) = stack.pop() {
        if reachable_by_others(&p) {
            reachable.push(p.display().to_string());
        }
        if fs::symlink_metadata(&p).expect("lstat").is_dir() {
            stack.extend(fs::read_dir(&p).expect("ls").flatten().map(|e| e.path()));
        }
    }
    assert!(reachable.is_empty(), "reachable by others: {reachable:?}");
    drop(lab);
    assert!(!dir.exists(), "the lab's state outlived it");
}

/// A lab's registry entry as a crashed owner leaves it, written by hand; removed on drop.
struct PlantedLab {
    id: String,
    dir: PathBuf,
}

impl PlantedLab {
    fn new(owner_pid: u32, owner_start: Option<u64>) -> Self {
        let id = registry::new_id();
        let dir = Path::new(registry::RUN_DIR).join(&id);
        fs::create_dir_all(&dir).expect("state dir");
        let state = registry::State {
            id: id.clone(),
            owner_pid,
            owner_start,
            netns: format!("migtrace-{id}"),
            ..Default::default()
        };
        fs::write(dir.join("lab.json"), serde_json::to_string(&state).expect("json")).expect("state");
        Self { id, dir }
    }
}

impl Drop for PlantedLab {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[test]
#[ignore = "needs root: writes lab state under /run/migtrace (run `cargo xtask test`)"]
fn lab_down_never_signals_a_process_that_reused_the_owners_pid() {
    // A lab's owner died and a process whose command line says migtrace took its pid.
    let mut other = Command::new("sleep").arg0("migtrace-impostor").arg("60").spawn().expect("sleep");
    let pid = other.id();
    // spawn returns once exec began; the new command line shows a little later.
    let cmdline = || fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !cmdline().starts_with(b"migtrace-impostor") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let start = migtrace::sys::process::start_time(pid).expect("start time");
    let lab = PlantedLab::new(pid, Some(start + 1));
    let out = migtrace().args(["lab", "down", &lab.id]).output().expect("lab down");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(other.try_wait().expect("wait").is_none(), "lab down signalled a process that only reused the owner's pid");
    assert!(!lab.dir.exists(), "the abandoned lab's state was not removed");
    // A state an older migtrace wrote has no start time: the process is not signalled,
    // and the error says why and what to do.
    let lab = PlantedLab::new(pid, None);
    let out = migtrace().args(["lab", "down", &lab.id]).output().expect("lab down");
    let e = error_line(&out);
    assert!(e.contains("not signalled") && e.contains(&format!("kill -INT {pid}")), "{e}");
    assert!(other.try_wait().expect("wait").is_none(), "lab down signalled a process it could not tell from the owner");
    assert!(lab.dir.exists(), "the lab of an owner that may still run was removed");
    let list = migtrace().args(["lab", "list"]).output().expect("lab list");
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.lines().any(|l| l.starts_with(&lab.id) && l.contains("owner unknown")), "{list}");
    other.kill().expect("kill");
    other.wait().expect("wait");
}

#[test]
#[ignore = "needs root: runs migtrace as root, which must not write through links (run `cargo xtask test`)"]
fn a_results_directory_with_a_linked_records_file_or_lock_is_refused_and_the_target_untouched() {
    // Another user who may write into the results directory plants a link where root
    // will write: the run refuses it by name, before any lab, and the file it points at
    // keeps its bytes.
    let root = temp_root("links");
    let spec = write_spec(&root, "links", &tiny_spec("links", ""));
    let victim = root.join("victim");
    for name in [files::LOCK_FILE, record::RECORDS_FILE] {
        fs::write(&victim, b"precious").expect("victim");
        let dir = root.join("results/links");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("dir");
        let link = dir.join(name);
        std::os::unix::fs::symlink(&victim, &link).expect("symlink");
        let child = migtrace()
            .arg("run")
            .arg(&spec)
            .arg("--results")
            .arg(root.join("results"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run");
        let pid = child.id();
        let e = error_line(&child.wait_with_output().expect("wait"));
        assert!(e.contains(&format!("{}: a symbolic link", link.display())) && e.contains("remove the link"), "{e}");
        assert_eq!(fs::read(&victim).expect("victim"), b"precious", "{name}: written through the link");
        assert!(fs::symlink_metadata(&link).expect("lstat").file_type().is_symlink(), "{name}: the link was replaced");
        assert!(labs_of(pid).is_empty(), "a refused run started a lab");
    }
    fs::remove_dir_all(&root).expect("cleanup");
}

#[test]
#[ignore = "needs root and QEMU: runs experiments on tmpfs (run `cargo xtask test`)"]
fn a_full_results_directory_stops_the_run_with_records_and_summaries_intact_and_resume_finishes() {
    let fs_ = Tmpfs::mount("full", "4m");
    let spec = write_spec(&fs_.dir, "full-test", &tiny_spec("full-test", "").replace("rate = [0]", "rate = [0, 1000]"));
    let dir = fs_.dir.join("results/full-test");
    let mut child = migtrace()
        .arg("run")
        .arg(&spec)
        .arg("--results")
        .arg(fs_.dir.join("results"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    let pid = child.id();
    // The first treatment is done (its summaries and page written): the disk fills up.
    let stderr = child.stderr.take().expect("stderr");
    let mount = fs_.dir.clone();
    let reader = std::thread::spawn(move || {
        use io::BufRead as _;
        let mut lines = io::BufReader::new(stderr).lines();
        let mut seen = String::new();
        for line in lines.by_ref().map_while(Result::ok) {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("treatment 1/2") && line.contains(": done,") {
                let filler = fill(&mount);
                let rest: Vec<String> = lines.map_while(Result::ok).collect();
                return (seen + &rest.join("\n"), Some(filler));
            }
        }
        (seen, None)
    });
    let status = child.wait().expect("wait");
    let (stderr, filler) = reader.join().expect("reader");
    let filler = filler.unwrap_or_else(|| panic!("the first treatment never finished: {stderr}"));
    assert!(!status.success(), "a full disk must stop the run: {stderr}");
    let error = stderr.lines().find(|l| l.starts_with("error: ")).unwrap_or_default();
    assert!(error.contains("No space left on device") && error.contains("the file system is full"), "{stderr}");
    // The first treatment's record and summaries are whole; nothing torn, no temporaries.
    assert_eq!(whole_records(&dir), 1);
    let summary: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("summary.json")).expect("summary")).expect("summary is whole JSON");
    assert_eq!(summary["treatments"].as_array().map(Vec::len), Some(1), "summaries of the finished treatment only");
    assert!(temporaries(&dir).is_empty(), "left: {:?}", temporaries(&dir));
    std::thread::sleep(Duration::from_millis(500));
    assert!(labs_of(pid).is_empty(), "a stopped run left labs {:?}", labs_of(pid));
    // Space again: the run resumes where it stopped.
    fs::remove_file(filler).expect("free space");
    let out = migtrace().arg("run").arg(&spec).arg("--results").arg(fs_.dir.join("results")).output().expect("resume");
    assert!(out.status.success(), "resume failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(whole_records(&dir), 2);
}

#[test]
#[ignore = "needs root: mounts a read-only tmpfs (run `cargo xtask test`)"]
fn a_read_only_results_directory_is_refused_before_any_lab() {
    let fs_ = Tmpfs::mount("ro", "1m");
    let root = temp_root("ro");
    let spec = write_spec(&root, "ro-test", &tiny_spec("ro-test", ""));
    // An experiment directory already there (from an earlier run), and a fresh one.
    fs::create_dir_all(fs_.dir.join("ro-test")).expect("dir");
    fs::write(fs_.dir.join("ro-test/summary.json"), b"{\"before\": true}").expect("summary");
    fs_.remount("ro");
    for results in [fs_.dir.clone(), fs_.dir.join("fresh")] {
        let started = Instant::now();
        let child = migtrace()
            .arg("run")
            .arg(&spec)
            .arg("--results")
            .arg(&results)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run");
        let pid = child.id();
        let out = child.wait_with_output().expect("wait");
        let e = error_line(&out);
        assert!(e.contains("Read-only file system") && e.contains("remount it read-write"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(15), "refused only after {:?}", started.elapsed());
        assert!(labs_of(pid).is_empty());
    }
    assert_eq!(fs::read(fs_.dir.join("ro-test/summary.json")).expect("summary"), b"{\"before\": true}");
    fs::remove_dir_all(&root).expect("cleanup");
}

#[test]
#[ignore = "needs root, QEMU and eBPF: a traced run with a tiny ring buffer (run `cargo xtask test`)"]
fn ring_buffer_overflow_is_counted_flagged_and_kept_out_of_statistics() {
    let root = temp_root("ring");
    // A probe flood (50,000 requests/s, each reply stamped at the taps) into a 4 KiB ring.
    let text = tiny_spec("ring-test", "")
        .replace("tracing = false", "tracing = true")
        .replace("probe_rate_hz = 0", "probe_rate_hz = 50000");
    let spec = write_spec(&root, "ring-test", &text);
    let bad = migtrace()
        .env("MIGTRACE_EVENTS_RING_BYTES", "1000")
        .arg("run")
        .arg(&spec)
        .arg("--results")
        .arg(root.join("bad"))
        .output()
        .expect("run");
    let e = error_line(&bad);
    assert!(e.contains("MIGTRACE_EVENTS_RING_BYTES=\"1000\"") && e.contains("power of two"), "{e}");
    let out = migtrace()
        .env("MIGTRACE_EVENTS_RING_BYTES", "4096")
        .arg("run")
        .arg(&spec)
        .arg("--results")
        .arg(&root)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let dir = root.join("ring-test");
    let records = record::read(&dir).expect("records");
    assert_eq!(records.len(), 1);
    let lost = records[0].trace_health.as_ref().map_or(0, |h| h.lost_records);
    assert!(lost > 0, "a 4 KiB ring under a probe flood lost nothing: not a test of loss");
    // Flagged as it happened, counted apart, and in no statistic.
    assert!(stderr.contains("trace-loss: excluded from statistics"), "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("summary.json")).expect("summary")).expect("json");
    let t = &summary["treatments"][0];
    assert_eq!((t["migrations"].as_u64(), t["usable"].as_u64(), t["trace_loss"].as_u64()), (Some(1), Some(0), Some(1)));
    assert!(t["measures"].as_object().is_none_or(|m| m.is_empty()), "a lossy record entered statistics: {t}");
    fs::remove_dir_all(&root).expect("cleanup");
}

#[test]
#[ignore = "needs root and QEMU: runs experiments side by side (run `cargo xtask test`)"]
fn the_same_experiment_twice_is_refused_by_its_lock_and_another_runs_beside_it() {
    let root = temp_root("lock");
    let spec_a = write_spec(&root, "lock-a", &tiny_spec("lock-a", ""));
    let spec_b = write_spec(&root, "lock-b", &tiny_spec("lock-b", ""));
    let start = |spec: &Path, umask0: bool| {
        let mut cmd = migtrace();
        cmd.arg("run").arg(spec).arg("--results").arg(&root).stdout(Stdio::null()).stderr(Stdio::piped());
        if umask0 {
            // SAFETY: umask only, between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::umask(0);
                    Ok(())
                });
            }
        }
        cmd.spawn().expect("run")
    };
    let a = start(&spec_a, false);
    let lock = root.join("lock-a").join(files::LOCK_FILE);
    let deadline = Instant::now() + Duration::from_secs(60);
    while fs::read_to_string(&lock).map(|t| t.trim().to_owned()).unwrap_or_default() != a.id().to_string() {
        assert!(Instant::now() < deadline, "the first run never took its lock");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The same experiment again: refused at once, naming the first run.
    let started = Instant::now();
    let twice = migtrace().arg("run").arg(&spec_a).arg("--results").arg(&root).output().expect("second run");
    let e = error_line(&twice);
    assert!(e.contains(&format!("in use by migtrace pid {}", a.id())), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10), "refused only after {:?}", started.elapsed());
    // Another experiment runs beside it, in a lab of its own (and under umask 0).
    let b = start(&spec_b, true);
    let (a, b) = (a.wait_with_output().expect("a"), b.wait_with_output().expect("b"));
    assert!(a.status.success(), "a: {}", String::from_utf8_lossy(&a.stderr));
    assert!(b.status.success(), "b: {}", String::from_utf8_lossy(&b.stderr));
    assert_eq!(whole_records(&root.join("lock-a")), 1);
    assert_eq!(whole_records(&root.join("lock-b")), 1);
    let bad = writable_by_others(&root.join("lock-b"));
    assert!(bad.is_empty(), "group- or world-writable under umask 0: {bad:?}");
    fs::remove_dir_all(&root).expect("cleanup");
}
