//! A process named so that a later one cannot pass for it: its pid and its start time
//! (`/proc/PID/stat` field 22, clock ticks since boot). Pids are reused; the pair is
//! not. Signals go through a pidfd taken before the start time is checked, so they
//! reach the process that was checked or none.

use std::{fs, io};

use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
use serde::{Deserialize, Serialize};

/// A process at one point in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    pub pid: u32,
    /// Clock ticks after boot at which it started.
    pub start: u64,
}

impl ProcessId {
    /// This process.
    pub fn current() -> Option<Self> {
        let pid = std::process::id();
        start_time(pid).map(|start| Self { pid, start })
    }

    /// Whether that very process still runs.
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start)
    }

    /// Sends `signal` to that very process; `Ok(false)` when it is gone (its pid free or
    /// another process's now).
    pub fn signal(&self, signal: Signal) -> io::Result<bool> {
        let Some(pid) = i32::try_from(self.pid).ok().and_then(Pid::from_raw) else { return Ok(false) };
        let fd = match pidfd_open(pid, PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::SRCH) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        // The pidfd names whatever held the pid when it was opened. Had that process
        // ended and the pid been taken since, the start time read now would differ.
        if !self.alive() {
            return Ok(false);
        }
        match pidfd_send_signal(&fd, signal) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::SRCH) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// When process `pid` started, in clock ticks after boot; None when there is none.
pub fn start_time(pid: u32) -> Option<u64> {
    parse_start_time(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Field 22 of a `/proc/PID/stat` line. The command name (field 2) is in parentheses
/// and may itself hold spaces and parentheses: fields are counted after its last `)`.
fn parse_start_time(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts with field 3 (the state).
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt as _;

    #[test]
    fn the_start_time_is_field_22_whatever_the_command_name() {
        let stat =
            "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200 18446744073709551615";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("4242 (x) S 1"), None);
        let me = ProcessId::current().expect("own start time");
        assert!(me.alive());
        assert!(!ProcessId { start: me.start + 1, ..me }.alive());
    }

    #[test]
    fn a_signal_reaches_the_process_that_was_named_and_no_other_with_its_pid() {
        let mut child = std::process::Command::new("sleep").arg0("migtrace-impostor").arg("30").spawn().expect("sleep");
        let pid = child.id();
        let start = start_time(pid).expect("start time");
        // The same pid with another start time: a process that reused the pid.
        let other = ProcessId { pid, start: start + 1 };
        assert!(!other.signal(Signal::TERM).expect("signal"), "signalled a process that only shares the pid");
        assert!(child.try_wait().expect("wait").is_none(), "the other process got the signal");
        assert!(ProcessId { pid, start }.signal(Signal::TERM).expect("signal"));
        let status = child.wait().expect("wait");
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGTERM));
        assert!(!ProcessId { pid, start }.signal(Signal::TERM).expect("signal"), "a reaped process is gone");
    }
}
