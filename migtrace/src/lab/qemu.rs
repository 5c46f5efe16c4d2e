//! One QEMU process of the lab: started inside the lab's network namespace, console to a
//! file (the minimal guest's through a socket of ours), QMP on a unix socket, killed
//! with its parent.

use std::{
    fs,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use migtrace_common::host::{Accel, qemu::QemuBuild};
use tokio::{process::Child, time::Instant};

use crate::{
    hypervisor::qmp::{Qmp, QmpError},
    sys::{netns, private},
};

use super::{GuestKind, minimal::Console, netns::GUEST_MAC};

/// Everything both QEMUs of a lab share: migration needs identical machines.
#[derive(Clone, Debug)]
pub struct MachineSpec {
    /// The QEMU build both sides run.
    pub qemu: QemuBuild,
    pub accel: Accel,
    /// Guest RAM in KiB: VMSIZE, plus 8 KiB under the TCG dirty-page workaround.
    pub ram_kib: u64,
    pub vcpus: u32,
    pub kernel: PathBuf,
    /// The Linux guest's initramfs; the minimal guest has none.
    pub initramfs: Option<PathBuf>,
    pub append: String,
    pub guest: GuestKind,
    /// Firmware instead of QEMU's default (qboot for the minimal guest).
    pub bios: Option<PathBuf>,
    /// KVM is the paravirtual kvm_pvm: `-cpu host,arch-capabilities=off`.
    pub kvm_pvm: bool,
    /// KVM dirty ring entries per vCPU (`dirty-ring-size`) instead of dirty bitmaps.
    pub dirty_ring: Option<u32>,
    /// Deviations from a plain VMSIZE machine, each with why (recorded per migration).
    pub workarounds: Vec<String>,
}

/// Extra guest RAM that moves the RAM block off QEMU < 9.0's 64-page fast path.
pub const TCG_DIRTY_WORKAROUND_KIB: u64 = 8;

impl MachineSpec {
    fn args(&self, tap: &str) -> Vec<String> {
        let cpu = match self.accel {
            // kvm_pvm cannot set MSR 0x10a (IA32_ARCH_CAPABILITIES): QEMU aborts without this.
            Accel::Kvm if self.kvm_pvm => "host,arch-capabilities=off",
            // Some nested hosts advertise arch-capabilities that KVM cannot migrate.
            Accel::Kvm => "host,-arch-capabilities",
            Accel::Tcg { .. } => "qemu64",
        };
        let mut args: Vec<String> =
            self.qemu.data_dirs.iter().flat_map(|d| ["-L".into(), d.display().to_string()]).collect();
        let accel = match (&self.accel, self.dirty_ring) {
            (Accel::Kvm, Some(n)) => format!("kvm,dirty-ring-size={n}"),
            (a, _) => a.qemu_name().to_owned(),
        };
        args.extend(
            [
                "-nodefaults",
                "-no-user-config",
                "-machine",
                "pc",
                "-accel",
                &accel,
                "-cpu",
                cpu,
                "-m",
                &format!("{}k", self.ram_kib),
                "-smp",
                &self.vcpus.to_string(),
                "-kernel",
                &self.kernel.to_string_lossy(),
                "-append",
                &self.append,
                "-display",
                "none",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        if let Some(bios) = &self.bios {
            args.extend(["-bios".into(), bios.display().to_string()]);
        }
        if let Some(initramfs) = &self.initramfs {
            args.extend(["-initrd".into(), initramfs.display().to_string()]);
        }
        // The minimal guest has no network: its QEMU gets no NIC.
        if self.guest == GuestKind::Linux {
            args.extend([
                "-netdev".into(),
                format!("tap,id=net0,ifname={tap},script=no,downscript=no"),
                "-device".into(),
                format!("virtio-net-pci,netdev=net0,mac={GUEST_MAC},romfile="),
            ]);
        }
        args
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("starting {binary}: {source}")]
    Spawn {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU {name} exited during start-up ({status}): {stderr}")]
    EarlyExit { name: String, status: String, stderr: String },
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("the guest did not come up within {timeout:?} ({what}); last console lines:\n{tail}")]
    BootTimeout { timeout: Duration, what: String, tail: String },
    #[error("preparing {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A running QEMU process of the lab.
pub struct Qemu {
    pub name: String,
    pub pid: u32,
    pub tap: &'static str,
    pub qmp_socket: PathBuf,
    /// A second QMP monitor for other clients (`migtrace predict --lab`): QEMU serves
    /// one client per monitor, and `qmp` holds the first.
    pub user_qmp_socket: PathBuf,
    pub console: PathBuf,
    pub stderr_log: PathBuf,
    child: Child,
    pub qmp: Qmp,
    /// The minimal guest's serial link (heartbeats, check requests).
    pub serial: Option<Console>,
}

impl Qemu {
    /// Starts QEMU in namespace `ns` on `tap`; with `incoming`, waiting for a migration.
    pub async fn start(
        spec: &MachineSpec,
        name: &str,
        ns: &str,
        tap: &'static str,
        dir: &Path,
        incoming: bool,
    ) -> Result<Self, QemuError> {
        let qmp_socket = dir.join(format!("{name}.qmp"));
        let user_qmp_socket = dir.join(format!("{name}.user.qmp"));
        let console = dir.join(format!("{name}.console"));
        let stderr_log = dir.join(format!("{name}.stderr"));
        for p in [&qmp_socket, &user_qmp_socket, &console] {
            let _ = fs::remove_file(p);
        }
        let stderr = private::file(&stderr_log).map_err(|source| QemuError::Io { path: stderr_log.clone(), source })?;
        // The minimal guest's serial port connects to our socket as QEMU starts; the
        // Linux guest's goes straight to the console file.
        let serial_socket = dir.join(format!("{name}.serial"));
        let serial_listener = match spec.guest {
            GuestKind::Minimal => {
                let _ = fs::remove_file(&serial_socket);
                let io = |source| QemuError::Io { path: serial_socket.clone(), source };
                let listener = tokio::net::UnixListener::bind(&serial_socket).map_err(io)?;
                // Made under our umask; the directory keeps others out meanwhile.
                fs::set_permissions(&serial_socket, fs::Permissions::from_mode(private::FILE_MODE)).map_err(io)?;
                Some(listener)
            }
            GuestKind::Linux => None,
        };
        let serial_args = match serial_listener {
            Some(_) => vec![
                "-chardev".to_owned(),
                format!("socket,id=serial0,path={}", serial_socket.display()),
                "-serial".to_owned(),
                "chardev:serial0".to_owned(),
            ],
            None => vec!["-serial".to_owned(), format!("file:{}", console.display())],
        };
        let mut cmd = tokio::process::Command::new(&spec.qemu.binary);
        if let Some(dir) = &spec.qemu.module_dir {
            cmd.env("QEMU_MODULE_DIR", dir);
        }
        // debug-threads: QEMU names its threads ("CPU 0/TCG"), so tools and tests tell the
        // vCPU threads apart.
        cmd.args(["-name", &format!("{name},debug-threads=on")])
            .args(spec.args(tap))
            .args(&serial_args)
            .args(["-qmp", &format!("unix:{},server=on,wait=off", qmp_socket.display())])
            .args(["-qmp", &format!("unix:{},server=on,wait=off", user_qmp_socket.display())])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);
        if incoming {
            cmd.args(["-incoming", "defer"]);
        }
        let ns_file =
            fs::File::open(netns::ns_path(ns)).map_err(|source| QemuError::Io { path: netns::ns_path(ns), source })?;
        let overlay = mount_pairs(&spec.qemu.overlay());
        // SAFETY: only async-signal-safe calls between fork and exec, on data prepared
        // before: umask, setns on an fd we own, unshare and mount for a cached QEMU's
        // own directories. QEMU then opens its tap inside the lab namespace; `tied::spawn`
        // makes it die with us.
        unsafe {
            use std::os::fd::AsRawFd as _;
            let fd = ns_file.as_raw_fd();
            cmd.as_std_mut().pre_exec(move || {
                // QEMU makes its QMP sockets and console file with the umask it inherits:
                // the owner's alone, whatever the caller's umask.
                libc::umask(0o077);
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if !overlay.is_empty() {
                    mount_private_overlay(&overlay)?;
                }
                Ok(())
            });
        }
        let mut child = crate::sys::tied::spawn(cmd)
            .await
            .map_err(|source| QemuError::Spawn { binary: spec.qemu.binary.display().to_string(), source })?;
        drop(ns_file);
        let pid = child.id().unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(20);
        let early_exit = |status: std::io::Result<std::process::ExitStatus>| {
            let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            let stderr = fs::read_to_string(&stderr_log).unwrap_or_default().trim().to_owned();
            QemuError::EarlyExit { name: name.into(), status, stderr }
        };
        let serial = match serial_listener {
            Some(listener) => {
                let accepted = tokio::select! {
                    accepted = tokio::time::timeout_at(deadline, listener.accept()) => accepted,
                    status = child.wait() => return Err(early_exit(status)),
                };
                let io = |source| QemuError::Io { path: serial_socket.clone(), source };
                let stream = accepted
                    .map_err(|_| io(std::io::Error::other("QEMU did not connect its serial port within 20 s")))?
                    .map_err(io)?
                    .0
                    .into_std()
                    .map_err(io)?;
                stream.set_nonblocking(false).map_err(io)?;
                let _ = fs::remove_file(&serial_socket);
                Some(
                    Console::serve(stream, &console)
                        .map_err(|source| QemuError::Io { path: console.clone(), source })?,
                )
            }
            None => None,
        };
        let qmp = tokio::select! {
            qmp = Qmp::connect(&qmp_socket, deadline) => qmp,
            status = child.wait() => return Err(early_exit(status)),
        }?;
        Ok(Self { name: name.into(), pid, tap, qmp_socket, user_qmp_socket, console, stderr_log, child, qmp, serial })
    }

    /// The last `n` lines of the guest console.
    pub fn console_tail(&self, n: usize) -> String {
        tail(&self.console, n)
    }

    /// Waits until a console line contains `needle`; returns that line.
    pub async fn wait_console(&mut self, needle: &str, timeout: Duration) -> Result<String, QemuError> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = fs::read_to_string(&self.console).unwrap_or_default();
            // Whole lines only: the guest may still be writing the last one.
            let complete = text.rsplit_once('\n').map_or("", |(done, _)| done);
            if let Some(line) = complete.lines().find(|l| l.contains(needle)) {
                return Ok(line.to_owned());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let stderr = fs::read_to_string(&self.stderr_log).unwrap_or_default().trim().to_owned();
                return Err(QemuError::EarlyExit { name: self.name.clone(), status: status.to_string(), stderr });
            }
            if Instant::now() >= deadline {
                return Err(QemuError::BootTimeout {
                    timeout,
                    what: format!("no {needle:?} on the console"),
                    tail: self.console_tail(15),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Resolves when the process exits.
    pub async fn wait_exit(&mut self) -> String {
        match self.child.wait().await {
            Ok(s) => s.to_string(),
            Err(e) => e.to_string(),
        }
    }

    /// Ends the process: `quit` over QMP, then SIGKILL if it lingers. Removes its sockets.
    pub async fn stop(mut self) {
        if !self.exited() {
            let _ = tokio::time::timeout(Duration::from_secs(2), self.qmp.execute(qapi::qmp::quit {})).await;
            if tokio::time::timeout(Duration::from_secs(3), self.child.wait()).await.is_err() {
                let _ = self.child.kill().await;
            }
        }
        let _ = fs::remove_file(&self.qmp_socket);
        let _ = fs::remove_file(&self.user_qmp_socket);
    }

    /// Kills the process at once (SIGKILL) and reaps it.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
        let _ = fs::remove_file(&self.qmp_socket);
        let _ = fs::remove_file(&self.user_qmp_socket);
    }
}

/// (source, target) paths as C strings, made before a fork.
pub fn mount_pairs(pairs: &[(PathBuf, PathBuf)]) -> Vec<(std::ffi::CString, std::ffi::CString)> {
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap_or_default();
    pairs.iter().map(|(s, t)| (c(s), c(t))).collect()
}

/// In a child between fork and exec: a private mount namespace with `binds` mounted.
/// Only async-signal-safe calls.
pub fn mount_private_overlay(binds: &[(std::ffi::CString, std::ffi::CString)]) -> std::io::Result<()> {
    let check = |rc: libc::c_int| if rc != 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) };
    // SAFETY: plain system calls on valid NUL-terminated strings.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        for (source, target) in binds {
            check(libc::mount(source.as_ptr(), target.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()))?;
        }
    }
    Ok(())
}

/// The last `n` lines of a text file (lossy).
pub fn tail(path: &Path, n: usize) -> String {
    let text = String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
