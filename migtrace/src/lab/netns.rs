//! The lab's private network: one network namespace per lab instance, with a bridge, one
//! tap per QEMU and a veth for the probe sender. Nothing routes out of it.
//!
//! ```text
//!   netns migtrace-<id>
//!   ┌──────────────────────────────────────────────────────┐
//!   │  probe (10.77.0.1) ── probe-br ─┐                    │
//!   │                                 br0 ── tap-a  (QEMU) │
//!   │                                     └─ tap-b  (QEMU) │
//!   └──────────────────────────────────────────────────────┘
//! ```
//! Interface names only need to be unique inside the namespace; the namespace name
//! carries the instance id, so labs never collide.

use std::{
    fs::File,
    io,
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
};

/// Prefix of every namespace migtrace creates; `lab clean` only touches these.
pub const NS_PREFIX: &str = "migtrace-";
pub const BRIDGE: &str = "br0";
/// The two tap devices; source and destination alternate between them.
pub const TAPS: [&str; 2] = ["tap-a", "tap-b"];
/// The probe sender's interface and address.
pub const PROBE_IF: &str = "probe";
pub const PROBE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
pub const PREFIX_LEN: u8 = 24;
/// Both QEMUs give the guest the same MAC, as in a real migration.
pub const GUEST_MAC: &str = "52:54:00:4d:54:01";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("`{command}` failed: {stderr}")]
    Ip { command: String, stderr: String },
    #[error("cannot run `ip` (package iproute2): {0}")]
    Spawn(#[source] io::Error),
    #[error("cannot enter network namespace {ns}: {source}")]
    Enter {
        ns: String,
        #[source]
        source: io::Error,
    },
}

/// A lab network namespace; deleted on drop (which also removes its bridge, taps, veth).
#[derive(Debug)]
pub struct LabNet {
    ns: String,
    deleted: bool,
}

impl LabNet {
    pub fn ns_name(id: &str) -> String {
        format!("{NS_PREFIX}{id}")
    }

    /// Creates the namespace and everything in it.
    pub fn create(id: &str) -> Result<Self, NetError> {
        let ns = Self::ns_name(id);
        ip(&["netns", "add", &ns])?;
        // From here on, Drop deletes the namespace if a later step fails.
        let net = Self { ns, deleted: false };
        let n = net.ns.as_str();
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        ip(&["-n", n, "link", "add", BRIDGE, "type", "bridge", "stp_state", "0", "forward_delay", "0"])?;
        for tap in TAPS {
            ip(&["-n", n, "tuntap", "add", "dev", tap, "mode", "tap"])?;
            ip(&["-n", n, "link", "set", tap, "master", BRIDGE, "up"])?;
        }
        ip(&["-n", n, "link", "add", PROBE_IF, "type", "veth", "peer", "name", "probe-br"])?;
        ip(&["-n", n, "link", "set", "probe-br", "master", BRIDGE, "up"])?;
        ip(&["-n", n, "addr", "add", &format!("{PROBE_IP}/{PREFIX_LEN}"), "dev", PROBE_IF])?;
        ip(&["-n", n, "link", "set", PROBE_IF, "up"])?;
        ip(&["-n", n, "link", "set", BRIDGE, "up"])?;
        // The guest's address never changes hosts' view: a static neighbour entry keeps
        // ARP out of the probe path (the guest still announces itself after migration).
        ip(&[
            "-n",
            n,
            "neigh",
            "replace",
            &GUEST_IP.to_string(),
            "lladdr",
            GUEST_MAC,
            "dev",
            PROBE_IF,
            "nud",
            "permanent",
        ])?;
        Ok(net)
    }

    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// Deletes the namespace now (idempotent).
    pub fn delete(&mut self) -> Result<(), NetError> {
        if !self.deleted {
            self.deleted = true;
            delete_ns(&self.ns)?;
        }
        Ok(())
    }
}

impl Drop for LabNet {
    fn drop(&mut self) {
        if let Err(e) = self.delete() {
            eprintln!("warning: {e}");
        }
    }
}

pub fn ns_path(ns: &str) -> PathBuf {
    Path::new("/run/netns").join(ns)
}

/// Deletes a namespace if it exists.
pub fn delete_ns(ns: &str) -> Result<(), NetError> {
    if !ns_path(ns).exists() {
        return Ok(());
    }
    ip(&["netns", "del", ns])
}

/// Names of migtrace's namespaces on this host.
pub fn list_lab_namespaces() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .filter(|n| n.starts_with(NS_PREFIX))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `ip` with `args` (no shell), failing with its stderr.
pub fn ip(args: &[&str]) -> Result<(), NetError> {
    let out = Command::new("ip").args(args).output().map_err(NetError::Spawn)?;
    if !out.status.success() {
        return Err(NetError::Ip {
            command: format!("ip {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Moves the calling thread into network namespace `ns`. Use on a dedicated thread:
/// sockets it creates afterwards live in the namespace.
pub fn enter(ns: &str) -> Result<(), NetError> {
    let err = |source| NetError::Enter { ns: ns.to_owned(), source };
    let file = File::open(ns_path(ns)).map_err(err)?;
    // SAFETY: setns on a valid namespace fd affects only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(())
}

/// Runs `f` on the calling thread inside network namespace `ns`, then moves the thread
/// back. `f` must not await: other tasks of this thread would run in the wrong place.
pub fn with_ns<T>(ns: &str, f: impl FnOnce() -> T) -> Result<T, NetError> {
    let err = |source| NetError::Enter { ns: ns.to_owned(), source };
    let home = File::open("/proc/thread-self/ns/net").map_err(err)?;
    enter(ns)?;
    let result = f();
    // SAFETY: setns back into the namespace this thread came from.
    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        // Staying in the lab namespace would misplace later sockets of this thread.
        panic!("cannot return to the original network namespace: {}", io::Error::last_os_error());
    }
    Ok(result)
}

/// [`with_ns`] for `Some(ns)`; `f` right here for `None` (the current namespace).
pub fn in_ns<T>(ns: Option<&str>, f: impl FnOnce() -> T) -> Result<T, NetError> {
    match ns {
        Some(ns) => with_ns(ns, f),
        None => Ok(f()),
    }
}

/// Index of interface `name` inside namespace `ns` (None: the current one).
pub fn ifindex(ns: Option<&str>, name: &str) -> Result<u32, NetError> {
    let here = || ns.unwrap_or("(current)").to_owned();
    let cname =
        std::ffi::CString::new(name).map_err(|e| NetError::Enter { ns: here(), source: io::Error::other(e) })?;
    // SAFETY: valid NUL-terminated name.
    let index = in_ns(ns, || unsafe { libc::if_nametoindex(cname.as_ptr()) })?;
    if index == 0 {
        return Err(NetError::Enter { ns: here(), source: io::Error::other(format!("no interface {name}")) });
    }
    Ok(index)
}
