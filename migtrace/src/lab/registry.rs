//! Which labs exist on this host, who owns them, and what they started: the state
//! `lab down` and `lab clean` work from. One directory per lab under /run/migtrace/,
//! only root's to enter (see [`crate::sys::private`]).

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use super::{LabError, netns};
use crate::sys::{
    netns::{delete_ns, ns_path},
    private,
    process::{self, ProcessId},
};

pub const RUN_DIR: &str = "/run/migtrace";

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub id: String,
    pub owner_pid: u32,
    /// When the owner started (clock ticks after boot): with the pid, it tells the
    /// owner from a later process that reuses the pid. None in states an older
    /// migtrace wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_start: Option<u64>,
    pub netns: String,
    pub qemu_pids: Vec<u32>,
    /// More namespaces of the lab (the libvirt lab's hosts and client).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_netns: Vec<String>,
    /// Daemons the lab started (the libvirt lab's libvirtd per host).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub daemon_pids: Vec<u32>,
    /// The QMP socket of the QEMU running the guest that other clients may use
    /// (`migtrace predict --lab`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_qmp: Option<PathBuf>,
}

/// The registry entry of a lab this process owns.
#[derive(Debug)]
pub struct Entry {
    pub dir: PathBuf,
    state: State,
    removed: bool,
}

/// A fresh lab id: 6 hex digits from the clock and our pid.
pub fn new_id() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let mixed = (nanos ^ std::process::id().rotate_left(16)).wrapping_mul(0x9e37_79b9);
    format!("{:06x}", mixed >> 8)
}

impl Entry {
    /// Makes the lab's state directory, 0700 inside /run/migtrace (0700 too): the QMP
    /// sockets there give root to whoever reaches them.
    pub fn create(id: &str) -> Result<Self, LabError> {
        let run = Path::new(RUN_DIR);
        private::dir(run).map_err(|source| LabError::State { path: run.to_owned(), source })?;
        let dir = run.join(id);
        private::dir(&dir).map_err(|source| LabError::State { path: dir.clone(), source })?;
        let state = State {
            id: id.into(),
            owner_pid: std::process::id(),
            owner_start: process::start_time(std::process::id()),
            netns: netns::LabNet::ns_of(id, netns::HOSTS[0]),
            ..State::default()
        };
        let entry = Self { dir, state, removed: false };
        entry.save()?;
        Ok(entry)
    }

    fn save(&self) -> Result<(), LabError> {
        let path = self.dir.join("lab.json");
        let text = serde_json::to_string_pretty(&self.state).map_err(io::Error::other);
        text.and_then(|t| private::write(&path, t.as_bytes())).map_err(|source| LabError::State { path, source })
    }

    pub fn add_qemu(&mut self, pid: u32) -> Result<(), LabError> {
        self.state.qemu_pids.push(pid);
        self.save()
    }

    /// Records more namespaces the lab made (removed with it by `lab clean`).
    pub fn add_netns(&mut self, ns: &str) -> Result<(), LabError> {
        self.state.more_netns.push(ns.to_owned());
        self.save()
    }

    /// Records a daemon the lab started.
    pub fn add_daemon(&mut self, pid: u32) -> Result<(), LabError> {
        self.state.daemon_pids.push(pid);
        self.save()
    }

    /// Records which QMP socket reaches the QEMU running the guest.
    pub fn set_source_qmp(&mut self, socket: &Path) -> Result<(), LabError> {
        self.state.source_qmp = Some(socket.to_owned());
        self.save()
    }

    pub fn remove_qemu(&mut self, pid: u32) -> Result<(), LabError> {
        self.state.qemu_pids.retain(|p| *p != pid);
        self.save()
    }

    pub fn remove(&mut self) {
        if !self.removed {
            self.removed = true;
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Labs recorded on this host (running or left behind).
pub fn list() -> Vec<State> {
    let mut states: Vec<State> = fs::read_dir(RUN_DIR)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| fs::read_to_string(e.path().join("lab.json")).ok())
                .filter_map(|t| serde_json::from_str(&t).ok())
                .collect()
        })
        .unwrap_or_default();
    // Namespaces without a state directory are leftovers too (`migtrace-<id>` or
    // `migtrace-<id>-<host>`).
    for ns in netns::list_lab_namespaces() {
        let id = ns.trim_start_matches(netns::NS_PREFIX).split('-').next().unwrap_or_default().to_owned();
        match states.iter_mut().find(|s| s.id == id) {
            Some(s) if s.netns != ns && !s.more_netns.contains(&ns) => s.more_netns.push(ns),
            Some(_) => {}
            None => states.push(State { id, netns: ns, ..State::default() }),
        }
    }
    states.sort_by(|a, b| a.id.cmp(&b.id));
    states
}

fn cmdline(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline")).map(|b| String::from_utf8_lossy(&b).replace('\0', " ")).unwrap_or_default()
}

/// Whether a lab's owner, the process that made it, still runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    Running(ProcessId),
    Gone,
    /// A migtrace process has the owner's pid, but the state has no start time (an
    /// older migtrace wrote it): it may be the owner or a later process with its pid.
    Unknown,
}

/// Whether the owner of `state` still runs: its pid, started at the recorded time.
pub fn owner(state: &State) -> Owner {
    if state.owner_pid == 0 {
        return Owner::Gone;
    }
    match state.owner_start {
        Some(start) => {
            let id = ProcessId { pid: state.owner_pid, start };
            if id.alive() { Owner::Running(id) } else { Owner::Gone }
        }
        None if cmdline(state.owner_pid).contains("migtrace") => Owner::Unknown,
        None => Owner::Gone,
    }
}

/// Asks a lab's owner to stop (SIGTERM: it tears its lab down). `Ok(false)` when that
/// process is gone; a process that took its pid since is never signalled.
pub fn stop_owner(owner: ProcessId) -> io::Result<bool> {
    owner.signal(rustix::process::Signal::TERM)
}

/// QEMU processes of lab `id`: recognised by the name they were given, `-name
/// migtrace-<id>-qN` (QEMU lab) or `-name guest=migtrace-<id>,…` (libvirt lab's domain).
pub fn qemu_processes(id: &str) -> Vec<u32> {
    let markers = [format!("-name migtrace-{id}-"), format!("-name guest=migtrace-{id},")];
    fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
                .filter(|pid| {
                    let c = cmdline(*pid);
                    markers.iter().any(|m| c.contains(m.as_str()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What removing a lab did.
#[derive(Debug, Default)]
pub struct Removed {
    pub killed: Vec<u32>,
    pub netns: bool,
    pub dir: bool,
}

/// Removes everything of lab `state`: its QEMU processes (by pid, recognised by name),
/// its namespace (and with it bridge, taps, veth), its state directory.
pub fn remove(state: &State) -> Removed {
    let mut removed = Removed::default();
    // Daemons first, so none of them starts another QEMU (libvirt spawns the destination's
    // during a migration) after the QEMUs were killed. Only daemons that still are what
    // the lab started: a libvirtd whose command line names this lab's state directory.
    let dir_marker = Path::new(RUN_DIR).join(&state.id).display().to_string();
    let mut daemons = Vec::new();
    for &pid in &state.daemon_pids {
        if cmdline(pid).contains(&dir_marker) {
            // SAFETY: signalling a daemon this lab started, recognised by its command line.
            if unsafe { libc::kill(pid as i32, libc::SIGKILL) } == 0 {
                removed.killed.push(pid);
                daemons.push(pid);
            }
        }
    }
    wait_gone(|| daemons.iter().any(|&pid| cmdline(pid).contains(&dir_marker)));
    removed.killed.extend(kill_qemus(&state.id));
    removed.netns = ns_path(&state.netns).exists() && delete_ns(&state.netns).is_ok();
    for ns in &state.more_netns {
        removed.netns |= ns_path(ns).exists() && delete_ns(ns).is_ok();
    }
    let dir = Path::new(RUN_DIR).join(&state.id);
    removed.dir = dir.exists() && fs::remove_dir_all(&dir).is_ok();
    removed
}

/// SIGKILLs every QEMU of lab `id` and waits (up to a second) until none is left, so the
/// kernel has released their taps before the namespace goes. Returns the pids signalled.
pub fn kill_qemus(id: &str) -> Vec<u32> {
    let mut killed = Vec::new();
    for _ in 0..50 {
        let left = qemu_processes(id);
        if left.is_empty() {
            break;
        }
        for pid in left {
            // SAFETY: signalling a process we verified is one of this lab's QEMUs.
            if unsafe { libc::kill(pid as i32, libc::SIGKILL) } == 0 && !killed.contains(&pid) {
                killed.push(pid);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    killed
}

fn wait_gone(alive: impl Fn() -> bool) {
    for _ in 0..50 {
        if !alive() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_that_reuses_the_owners_pid_is_not_the_owner() {
        use std::os::unix::process::CommandExt as _;
        // A migtrace process (by its command line) holding the pid a lab recorded.
        let mut other = std::process::Command::new("sleep").arg0("migtrace-impostor").arg("30").spawn().expect("sleep");
        let pid = other.id();
        // spawn returns once exec began; the new command line shows a little later.
        for _ in 0..200 {
            if cmdline(pid).contains("migtrace-impostor") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let start = process::start_time(pid).expect("start time");
        let state = |owner_start| State { id: "t".into(), owner_pid: pid, owner_start, ..State::default() };
        // The lab's owner started at another time: it is gone, whatever holds its pid now.
        assert_eq!(owner(&state(Some(start + 1))), Owner::Gone);
        assert_eq!(owner(&state(Some(start))), Owner::Running(ProcessId { pid, start }));
        // A state without a start time cannot tell: neither running nor gone.
        assert_eq!(owner(&state(None)), Owner::Unknown);
        other.kill().expect("kill");
        other.wait().expect("wait");
        assert_eq!(owner(&state(Some(start))), Owner::Gone);
        assert_eq!(owner(&state(None)), Owner::Gone);
    }

    #[test]
    fn a_state_without_the_owners_start_time_still_reads() {
        let old = r#"{"id": "3fa2c1", "owner_pid": 4242, "netns": "migtrace-3fa2c1", "qemu_pids": [4243]}"#;
        let state: State = serde_json::from_str(old).expect("old state");
        assert_eq!((state.owner_pid, state.owner_start), (4242, None));
    }

    #[test]
    fn ids_are_short_hex_and_vary() {
        let a = new_id();
        assert_eq!(a.len(), 6);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert_ne!(a, new_id());
    }
}
