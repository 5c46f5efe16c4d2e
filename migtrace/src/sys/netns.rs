//! Network namespaces from this process: run `ip`, enter a namespace on one thread,
//! look up an interface inside one. Below every layer that touches a namespace (the
//! lab, the probe sender, the tap classifier, tracing agents).

use std::{
    fs::File,
    io,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
};

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

/// Where `ip netns` keeps namespace `ns`.
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
