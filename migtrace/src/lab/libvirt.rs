//! Two real libvirt hosts on one machine: the libvirt backend measured for real here.
//!
//! ```text
//!   netns migtrace-<id>-a                      netns migtrace-<id>-b
//!   ┌────────────────────────────────┐         ┌────────────────────────────────┐
//!   │ libvirtd (own /etc,/run,       │         │ libvirtd (own /etc,/run,       │
//!   │  /var/lib,/var/log …)          │         │  /var/lib,/var/log …)          │
//!   │ vnetN (the guest) ─ br0 ─ uplink ─┐   ┌─ uplink ─ br0 ─ vnetN (the guest)│
//!   │ mig0 10.79.0.1 ═══════════════════╪═══╪═════════════════ mig0 10.79.0.2 │
//!   └────────────────────────────────┘  │   │  └────────────────────────────────┘
//!                     netns migtrace-<id>-sw: the switch
//!                     netns migtrace-<id>-c: client 10.78.0.100 (ping and probe sender)
//! ```
//!
//! The network is the QEMU lab's ([`super::netns`]): each daemon listens, and migrates,
//! on its host's end of the shaped link; the guest's NIC is on its host's bridge,
//! joined to the other host's by the switch.
//!
//! Each daemon runs in its host's network namespace and a private mount and UTS
//! namespace of its own (its own configuration, state, logs, host name and host UUID),
//! so the two are as separate as two machines as far as libvirt can tell. The guest is
//! migtrace's lab image, defined as a persistent domain (direct kernel boot, no disks,
//! a bridge interface, its serial console to a file). Everything lives under the lab's
//! state directory and namespaces; teardown destroys the domain, stops the daemons and
//! deletes the namespaces (the mounts die with the daemons' mount namespaces).

use std::{
    ffi::CString,
    fs,
    net::Ipv4Addr,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use migtrace_common::host::{self, Accel, kernel::cache_dir, qemu::QemuBuild};
use tokio::{process::Child, time::Instant};
use virt::connect::Connect;

use super::{
    LabConfig, LabError,
    image::{self, GuestImage},
    netns::{self, GuestNet, LabNet, LabNetError},
    qemu::QemuError,
    registry,
};
use crate::{
    hypervisor::link::LinkConfig,
    hypervisor::{
        GuestCheck, HostPair, Machine, MigrationOutcome, MigrationParams,
        libvirt::{LibvirtError, LibvirtFlags, LibvirtHost, LibvirtPair},
    },
    measure::session::Network,
    sys::{
        netns::{NetError, ns_path},
        private,
    },
};

/// The hosts' addresses: their ends of the link (libvirt's listen and migration
/// address); the client's and the guest's on the guest network.
pub const HOST_IPS: [Ipv4Addr; 2] = netns::LINK_IPS;
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 100);
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 10);
pub const GUEST_MAC: &str = "52:54:00:4d:54:02";
const PREFIX_LEN: u8 = 24;
/// Where libvirt looks for QEMU, and where a cached build is mounted on each host.
const SYSTEM_QEMU: &str = "/usr/bin/qemu-system-x86_64";
use netns::HOSTS;
/// The guest network of the libvirt lab (libvirt makes the taps).
const GUEST_NET: GuestNet = GuestNet { guest_ip: GUEST_IP, guest_mac: GUEST_MAC, client_ip: CLIENT_IP, taps: false };
/// Directories each daemon gets a private copy of.
const PRIVATE_DIRS: [(&str, &str); 5] = [
    ("etc", "/etc/libvirt"),
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("cache", "/var/cache/libvirt"),
    ("log", "/var/log/libvirt"),
];

#[derive(Debug, thiserror::Error)]
pub enum LibvirtLabError {
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    LabNet(#[from] LabNetError),
    #[error(
        "libvirt's daemon is not installed ({0} missing): `cargo xtask setup` installs libvirt-daemon, libvirt-daemon-driver-qemu and libvirt-clients"
    )]
    NoLibvirt(String),
    #[error(
        "the user and group libvirt-qemu do not exist; libvirt's QEMU driver needs them: `cargo xtask setup` creates them"
    )]
    NoLibvirtUser,
    #[error("preparing {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("libvirtd of host {host} did not come up within {seconds} s; its log: {log}")]
    Daemon { host: String, seconds: u64, log: String },
    #[error("libvirt on host {host}: {message}")]
    Libvirt { host: String, message: String },
    #[error(transparent)]
    Pair(#[from] crate::hypervisor::libvirt::LibvirtError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LibvirtLabError + '_ {
    move |source| LibvirtLabError::Io { path: path.to_owned(), source }
}

/// One host's daemon.
struct Daemon {
    child: Child,
    pid: u32,
}

/// A running two-host libvirt lab with the guest on host `a`.
pub struct LibvirtLab {
    pub id: String,
    pub config: LabConfig,
    pub image: GuestImage,
    pub accel: Accel,
    pub qemu: QemuBuild,
    /// The hosts as a migrating pair (None only while the lab comes up).
    pair: Option<LibvirtPair>,
    pub domain: String,
    pub boot_time: Duration,
    pub agent_line: String,
    workarounds: Vec<String>,
    /// The hosts' namespaces, the link, the switch and the client (None until made,
    /// and after teardown).
    net: Option<LabNet>,
    daemons: Vec<Daemon>,
    dir: PathBuf,
    registry: registry::Entry,
}

impl LibvirtLab {
    /// The namespace of host `a` or `b`, and the client's (`c`).
    pub fn ns(id: &str, host: &str) -> String {
        LabNet::ns_of(id, host)
    }

    /// The link as configured and shaped.
    pub fn link(&self) -> LinkConfig {
        self.net.as_ref().map_or_else(|| self.config.link.clone(), |n| n.link.clone())
    }

    /// Where probes are sent from and the guest is reached.
    pub fn network(&self) -> Network {
        Network { ns: Some(Self::ns(&self.id, "c")), guest: GUEST_IP, taps: Vec::new(), link: Vec::new() }
    }

    /// The command that starts a tracing agent in host `i`'s namespace.
    pub fn agent_command(&self, i: usize, migtrace: &Path) -> Vec<String> {
        ["ip", "netns", "exec", &Self::ns(&self.id, HOSTS[i]), &migtrace.display().to_string(), "agent"]
            .map(str::to_owned)
            .to_vec()
    }

    /// The hosts' namespaces (for tracing in this process).
    pub fn host_namespaces(&self) -> [String; 2] {
        [Self::ns(&self.id, "a"), Self::ns(&self.id, "b")]
    }

    pub fn guest_mac(&self) -> &'static str {
        GUEST_MAC
    }

    /// Builds the namespaces, starts both daemons, defines and boots the guest on `a`.
    pub async fn up(config: LabConfig, flags: LibvirtFlags) -> Result<Self, LibvirtLabError> {
        super::validate(&config)?;
        if config.guest != super::GuestKind::Linux {
            return Err(LibvirtLabError::Lab(LabError::Minimal(super::minimal::MinimalError::Unsupported(
                "the libvirt lab boots the Linux guest only (its hosts migrate it over their network)".into(),
            ))));
        }
        for binary in ["/usr/sbin/libvirtd", "/usr/bin/virsh"] {
            if !Path::new(binary).exists() {
                return Err(LibvirtLabError::NoLibvirt(binary.into()));
            }
        }
        if !user_and_group_exist("libvirt-qemu") {
            return Err(LibvirtLabError::NoLibvirtUser);
        }
        let kernel = image::select_kernel(config.kernel.as_deref()).map_err(LabError::from)?;
        let image = image::build(&kernel).map_err(LabError::from)?;
        let accel = config.accel.clone().unwrap_or_else(host::detect_accel);
        let ram_kib = config.vmsize_mib as u64 * 1024;
        let (qemu, workarounds) = choose_qemu(&config, &accel)?;
        let id = registry::new_id();
        let mut registry = registry::Entry::create(&id)?;
        for ns in LabNet::all_namespaces(&id).iter().skip(1) {
            registry.add_netns(ns)?;
        }
        let dir = registry.dir.clone();
        let domain = format!("migtrace-{id}");
        // From here on, a failure tears down what exists (see Drop).
        let mut lab = Self {
            id: id.clone(),
            config,
            image,
            accel,
            qemu,
            pair: None,
            domain: domain.clone(),
            boot_time: Duration::ZERO,
            agent_line: String::new(),
            workarounds,
            net: None,
            daemons: Vec::new(),
            dir: dir.clone(),
            registry,
        };
        lab.net = Some(LabNet::create(&id, GUEST_NET, &lab.config.link)?);
        for (i, h) in HOSTS.iter().enumerate() {
            lab.start_daemon(i, h).await?;
        }
        let uris: Vec<String> = HOSTS.iter().map(|h| socket_uri(&dir, h)).collect();
        let xml =
            domain_xml(&domain, &lab.image, &lab.qemu, &lab.accel, ram_kib, lab.config.vcpus, &lab.config.workload);
        let started = Instant::now();
        let console = dir.join("a/log/qemu").join(format!("{domain}-console.log"));
        let logs = [dir.join("a/log/qemu").join(format!("{domain}.log")), dir.join("a/log/libvirtd.log")];
        tokio::task::block_in_place(|| -> Result<(), LibvirtLabError> {
            virt::error::clear_error_callback();
            let err = |e: virt::error::Error| LibvirtLabError::Libvirt {
                host: "a".into(),
                message: format!("{}; {}", e.message(), log_tails(&logs)),
            };
            let conn = Connect::open(Some(&uris[0])).map_err(err)?;
            let dom = conn.define_domain_xml(&xml).map_err(err)?;
            dom.create().map_err(err)?;
            Ok(())
        })?;
        lab.agent_line = wait_console(&console, "migtrace-agent: ", lab.config.boot_timeout).await?;
        lab.boot_time = started.elapsed();
        let hosts: [LibvirtHost; 2] = std::array::from_fn(|i| LibvirtHost {
            name: HOSTS[i].to_owned(),
            uri: uris[i].clone(),
            peer_uri: Some(format!("qemu+tcp://{}/system", HOST_IPS[i])),
            console: Some(dir.join(HOSTS[i]).join("log/qemu").join(format!("{domain}-console.log"))),
        });
        lab.pair = Some(tokio::task::block_in_place(|| LibvirtPair::open(&domain, hosts, flags))?);
        Ok(lab)
    }

    /// The hosts as a migrating pair.
    pub fn pair(&self) -> Option<&LibvirtPair> {
        self.pair.as_ref()
    }

    /// What both hosts run, for every record.
    pub fn machine_info(&self) -> Machine {
        let mut m = self.pair.as_ref().map(crate::hypervisor::HostPair::machine).unwrap_or_default();
        m.workarounds = self.workarounds.clone();
        m.accelerator_reason = match &self.accel {
            Accel::Tcg { reason } => Some(reason.clone()),
            Accel::Kvm => None,
        };
        m.host_kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
        m.guest = "linux".into();
        m
    }

    async fn start_daemon(&mut self, i: usize, h: &str) -> Result<(), LibvirtLabError> {
        // Root's alone, like the lab's directory they are in (see sys::private).
        let home = self.dir.join(h);
        let dirs = PRIVATE_DIRS.iter().map(|(sub, _)| home.join(sub));
        for d in [home.clone()].into_iter().chain(dirs).chain([home.join("lib/qemu"), home.join("log/qemu")]) {
            private::dir(&d).map_err(io(&d))?;
        }
        // libvirtd probes each QEMU binary's capabilities once; keep its cache across labs.
        let caps = cache_dir().join("libvirt").join(format!("cache-{h}"));
        fs::create_dir_all(&caps).map_err(io(&caps))?;
        let hosts_file = home.join("hosts");
        let write = |path: PathBuf, text: String| private::write(&path, text.as_bytes()).map_err(io(&path));
        write(
            hosts_file.clone(),
            format!(
                "127.0.0.1 localhost\n{} {}\n{} {}\n",
                HOST_IPS[0],
                host_name(&self.id, "a"),
                HOST_IPS[1],
                host_name(&self.id, "b")
            ),
        )?;
        write(
            home.join("etc/libvirtd.conf"),
            format!(
                "listen_tls = 0\nlisten_tcp = 1\nlisten_addr = \"{}\"\nauth_tcp = \"none\"\nauth_unix_rw = \"none\"\n\
                 auth_unix_ro = \"none\"\nunix_sock_group = \"root\"\nunix_sock_rw_perms = \"0700\"\n\
                 unix_sock_ro_perms = \"0700\"\nunix_sock_admin_perms = \"0700\"\n\
                 host_uuid = \"{}\"\nlog_outputs = \"3:file:/var/log/libvirt/libvirtd.log\"\n",
                HOST_IPS[i],
                host_uuid(&self.id, i)
            ),
        )?;
        write(
            home.join("etc/qemu.conf"),
            format!(
                "user = \"root\"\ngroup = \"root\"\ndynamic_ownership = 0\nremember_owner = 0\nsecurity_driver = \"none\"\n\
                 namespaces = [ ]\ncgroup_controllers = [ ]\nstdio_handler = \"file\"\nmigration_host = \"{}\"\n",
                HOST_IPS[i]
            ),
        )?;
        for mount_point in PRIVATE_DIRS.iter().map(|(_, m)| Path::new(m)) {
            // Standard libvirt directories; created empty if the packages did not.
            fs::create_dir_all(mount_point).map_err(io(mount_point))?;
        }
        let mut binds: Vec<(CString, CString)> = PRIVATE_DIRS
            .iter()
            .map(|(sub, target)| {
                let source = if *sub == "cache" { caps.clone() } else { home.join(sub) };
                (cstring(&source), cstring(Path::new(target)))
            })
            .collect();
        binds.push((cstring(&hosts_file), cstring(Path::new("/etc/hosts"))));
        // A cached QEMU is, inside the host, installed where libvirt and QEMU look: its
        // binary, modules and firmware mounted over the system's (libvirt probes the
        // capabilities of every emulator it finds; another release's modules abort it).
        let overlay = self.qemu.overlay();
        if !overlay.is_empty() {
            binds.push((cstring(&self.qemu.binary), cstring(Path::new(SYSTEM_QEMU))));
            for (source, target) in overlay {
                binds.push((cstring(&source), cstring(&target)));
            }
        }
        let hostname = host_name(&self.id, h);
        let ns = Self::ns(&self.id, h);
        let ns_file = fs::File::open(ns_path(&ns)).map_err(io(&ns_path(&ns)))?;
        let stderr_path = home.join("libvirtd.stderr");
        let stderr = private::file(&stderr_path).map_err(io(&stderr_path))?;
        let config = home.join("etc/libvirtd.conf");
        let mut cmd = tokio::process::Command::new("/usr/sbin/libvirtd");
        cmd.arg("--listen")
            .arg("--config")
            .arg(&config)
            .arg("--pid-file")
            .arg(home.join("libvirtd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);
        let fd = ns_file.as_raw_fd();
        let root = c"/".to_owned();
        // SAFETY: between fork and exec only async-signal-safe system calls on data
        // prepared before the fork: umask, setns, unshare, mount, sethostname, prctl.
        unsafe {
            cmd.as_std_mut().pre_exec(move || {
                let check = |rc: libc::c_int| if rc != 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) };
                // What the daemon makes in the lab's state is its owner's alone, whatever
                // the caller's umask.
                libc::umask(0o077);
                check(libc::setns(fd, libc::CLONE_NEWNET))?;
                check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS))?;
                check(libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                for (source, target) in &binds {
                    check(libc::mount(
                        source.as_ptr(),
                        target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ))?;
                }
                check(libc::sethostname(hostname.as_ptr().cast(), hostname.len()))?;
                Ok(())
            });
        }
        // Dies with us (see `tied`).
        let child = crate::sys::tied::spawn(cmd).await.map_err(io(Path::new("/usr/sbin/libvirtd")))?;
        drop(ns_file);
        let pid = child.id().unwrap_or(0);
        self.registry.add_daemon(pid)?;
        self.daemons.push(Daemon { child, pid });
        // Up when its socket answers (the first connection waits for capability probing).
        let uri = socket_uri(&self.dir, h);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = home.join("run/libvirt-sock").exists()
                && tokio::task::block_in_place(|| Connect::open(Some(&uri)).is_ok_and(|c| c.hyp_version().is_ok()));
            if ok {
                return Ok(());
            }
            let exited = self.daemons.last_mut().is_some_and(|d| !matches!(d.child.try_wait(), Ok(None)));
            if exited || Instant::now() >= deadline {
                let log = fs::read_to_string(home.join("log/libvirtd.log"))
                    .unwrap_or_default()
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .join(" | ");
                let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
                return Err(LibvirtLabError::Daemon {
                    host: h.into(),
                    seconds: 60,
                    log: format!("{log} {}", stderr.trim()),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops host `i`'s daemon now, as if that host went away (its QEMU, if any, keeps
    /// running). For fault tests.
    pub async fn stop_daemon(&mut self, i: usize) {
        if let Some(d) = self.daemons.get_mut(i) {
            let _ = d.child.kill().await;
        }
    }

    /// Pids of the daemons the lab started.
    pub fn daemon_pids(&self) -> Vec<u32> {
        self.daemons.iter().map(|d| d.pid).collect()
    }

    /// Destroys and undefines the guest on both hosts, stops the daemons, deletes the
    /// namespaces and the lab's state.
    pub async fn down(mut self) {
        self.destroy_domain();
        for d in &mut self.daemons {
            // SAFETY: signalling the daemon this lab started.
            unsafe { libc::kill(d.pid as i32, libc::SIGTERM) };
            if tokio::time::timeout(Duration::from_secs(5), d.child.wait()).await.is_err() {
                let _ = d.child.kill().await;
            }
        }
        self.daemons.clear();
        self.teardown();
    }

    fn destroy_domain(&self) {
        for h in HOSTS {
            let uri = socket_uri(&self.dir, h);
            let _ = tokio::task::block_in_place(|| -> Result<(), virt::error::Error> {
                let conn = Connect::open(Some(&uri))?;
                if let Ok(dom) = conn.lookup_domain_by_name(&self.domain) {
                    if dom.is_active().unwrap_or(false) {
                        let _ = dom.destroy();
                    }
                    let _ = dom.undefine();
                }
                Ok(())
            });
        }
    }

    /// What Drop and down share: QEMUs (libvirt does not take them down with it), the
    /// namespaces, the state.
    fn teardown(&mut self) {
        // Daemons first: a live libvirtd could start a QEMU after the QEMUs were killed.
        for d in &mut self.daemons {
            let _ = d.child.start_kill();
        }
        for _ in 0..50 {
            if self.daemons.iter_mut().all(|d| !matches!(d.child.try_wait(), Ok(None))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        registry::kill_qemus(&self.id);
        if let Some(mut net) = self.net.take()
            && let Err(e) = net.delete()
        {
            eprintln!("warning: {e}");
        }
        self.registry.remove();
    }
}

/// The lab migrates like the pair it holds; its records name the lab's machine.
impl HostPair for LibvirtLab {
    type Error = LibvirtError;

    fn pids(&self) -> (u32, u32) {
        (0, 0)
    }

    fn endpoints(&self) -> (String, String) {
        self.pair.as_ref().map(HostPair::endpoints).unwrap_or_default()
    }

    fn hypervisor_versions(&self) -> crate::hypervisor::Versions {
        self.pair.as_ref().map(HostPair::hypervisor_versions).unwrap_or_default()
    }

    fn machine(&self) -> Machine {
        self.machine_info()
    }

    async fn migrate(&mut self, params: &MigrationParams) -> Result<MigrationOutcome, LibvirtError> {
        match self.pair.as_mut() {
            Some(p) => p.migrate(params).await,
            None => Err(LibvirtError::NotRunning { domain: self.domain.clone(), hosts: "the lab".into() }),
        }
    }

    fn guest_check(&self) -> Option<GuestCheck> {
        self.pair.as_ref().and_then(HostPair::guest_check)
    }

    fn link(&self) -> Option<LinkConfig> {
        Some(LibvirtLab::link(self))
    }

    fn link_tx_bytes(&self) -> Option<u64> {
        // The domain runs on the host named first in the pair's endpoints.
        let (source, _) = self.endpoints();
        netns::tx_bytes(&Self::ns(&self.id, &source), netns::LINK_IF)
    }

    async fn prepare_next(&mut self) -> Result<(), LibvirtError> {
        match self.pair.as_mut() {
            Some(p) => p.prepare_next().await,
            None => Ok(()),
        }
    }
}

impl Drop for LibvirtLab {
    fn drop(&mut self) {
        if self.net.is_some() || !self.daemons.is_empty() {
            self.teardown();
        }
    }
}

/// The last lines of each log that exists, for an error message.
fn log_tails(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .filter_map(|p| {
            let text = fs::read_to_string(p).ok()?;
            let tail: Vec<&str> = text.lines().rev().take(4).collect();
            Some(format!("{}: {}", p.display(), tail.into_iter().rev().collect::<Vec<_>>().join(" | ")))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The QEMU build for the hosts. libvirt rounds guest RAM to whole MiB, so the lab
/// QEMU's +8 KiB workaround for QEMU < 9.0 under TCG cannot apply here: unless a build
/// was asked for, a cached QEMU without the bug is taken instead, and the record says so.
fn choose_qemu(config: &LabConfig, accel: &Accel) -> Result<(QemuBuild, Vec<String>), LabError> {
    let asked = config.qemu.as_deref();
    let build = host::qemu::select(asked.unwrap_or("system"))?;
    if !matches!(accel, Accel::Tcg { .. }) || !build.has_tcg_dirty_bug() || !config.tcg_dirty_workaround {
        return Ok((build, Vec::new()));
    }
    let fixed = host::qemu::cached().into_iter().rev().find(|b| !b.has_tcg_dirty_bug());
    Ok(match (asked, fixed) {
        (None, Some(fixed)) => {
            let note = format!(
                "tcg-dirty-bitmap: libvirt rounds guest RAM to whole MiB, so the +8 KiB workaround for QEMU < 9.0 cannot apply; the hosts run QEMU {} (fixed) instead of the system's {}",
                fixed.version, build.version
            );
            (fixed, vec![note])
        }
        _ => {
            let note = format!(
                "none possible: QEMU {} under TCG loses dirty pages of 256 KiB-aligned RAM blocks and libvirt rounds guest RAM to whole MiB (run `cargo xtask setup` for QEMU 10.0, or pass --qemu 10.0)",
                build.version
            );
            (build, vec![note])
        }
    })
}

fn socket_uri(dir: &Path, h: &str) -> String {
    format!("qemu+unix:///system?socket={}", dir.join(h).join("run/libvirt-sock").display())
}

fn host_name(id: &str, h: &str) -> String {
    format!("migtrace-{id}-{h}")
}

/// A distinct, stable host UUID per lab and host (libvirt refuses to migrate between
/// two hosts with the same one).
fn host_uuid(id: &str, i: usize) -> String {
    let hex: String = id.chars().filter(char::is_ascii_hexdigit).collect();
    format!("6d696774-7261-4365-8000-{:0>6}{:06x}", hex, i + 1)
}

fn cstring(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).unwrap_or_default()
}

fn user_and_group_exist(name: &str) -> bool {
    let has = |file: &str| fs::read_to_string(file).is_ok_and(|t| t.lines().any(|l| l.split(':').next() == Some(name)));
    has("/etc/passwd") && has("/etc/group")
}

/// Waits until the console file has a line containing `needle`.
async fn wait_console(path: &Path, needle: &str, timeout: Duration) -> Result<String, LibvirtLabError> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return Ok(line.to_owned());
        }
        if Instant::now() >= deadline {
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            return Err(LabError::Qemu(QemuError::BootTimeout {
                timeout,
                what: format!("no {needle:?} on the console"),
                tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            })
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The guest as a persistent libvirt domain: migtrace's lab image booted directly.
fn domain_xml(
    name: &str,
    image: &GuestImage,
    qemu: &QemuBuild,
    accel: &Accel,
    ram_kib: u64,
    vcpus: u32,
    workload: &workloads::spec::Spec,
) -> String {
    let (kind, cpu) = match accel {
        Accel::Kvm => {
            ("kvm", "<cpu mode='host-passthrough'><feature policy='disable' name='arch-capabilities'/></cpu>")
        }
        Accel::Tcg { .. } => ("qemu", "<cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>"),
    };
    // A cached QEMU is mounted at the system's path on each host (see start_daemon).
    let emulator = if qemu.overlay().is_empty() { qemu.binary.display().to_string() } else { SYSTEM_QEMU.to_owned() };
    format!(
        "<domain type='{kind}'>
  <name>{name}</name>
  <memory unit='KiB'>{ram_kib}</memory>
  <vcpu>{vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 migtrace.ip={GUEST_IP}/{PREFIX_LEN} migtrace.workload={workload}</cmdline>
  </os>
  <features><acpi/></features>
  {cpu}
  <on_poweroff>destroy</on_poweroff>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{emulator}</emulator>
    <interface type='bridge'>
      <mac address='{GUEST_MAC}'/>
      <source bridge='br0'/>
      <model type='virtio'/>
      <rom enabled='no'/>
    </interface>
    <serial type='file'><source path='/var/log/libvirt/qemu/{name}-console.log' append='on'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
",
        kernel = xml_escape(&image.kernel.display().to_string()),
        initrd = xml_escape(&image.initramfs.display().to_string()),
        emulator = xml_escape(&emulator),
        workload = xml_escape(&workload.to_string()),
    )
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\'', "&apos;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_uuids_differ_per_host_and_are_uuids() {
        let (a, b) = (host_uuid("1a2b3c", 0), host_uuid("1a2b3c", 1));
        assert_ne!(a, b);
        for u in [&a, &b] {
            let groups: Vec<usize> = u.split('-').map(str::len).collect();
            assert_eq!(groups, [8, 4, 4, 4, 12], "{u}");
        }
    }

    #[test]
    fn the_domain_xml_names_what_the_lab_built_and_parses_back() {
        let image = GuestImage {
            kernel: "/cache/vmlinuz".into(),
            initramfs: "/cache/initramfs.cpio".into(),
            kernel_release: "6.1".into(),
            built: false,
        };
        let qemu = QemuBuild {
            binary: "/opt/qemu/bin/qemu-system-x86_64".into(),
            version: host::qemu::Version { major: 10, minor: 0, micro: 2 },
            description: String::new(),
            origin: host::qemu::Origin::Path,
            data_dirs: Vec::new(),
            module_dir: None,
        };
        let spec = workloads::spec::Spec::parse("wset=64M,rate=20000").expect("spec");
        let xml = domain_xml("migtrace-x", &image, &qemu, &Accel::Tcg { reason: String::new() }, 262152, 1, &spec);
        let d = crate::hypervisor::libvirt::parse_domain_xml(&xml).expect("our own XML parses");
        assert_eq!((d.kind.as_str(), d.memory_kib, d.mac.as_deref()), ("qemu", 262152, Some(GUEST_MAC)));
        assert_eq!(d.emulator.as_deref(), Some("/opt/qemu/bin/qemu-system-x86_64"));
        assert!(d.cmdline.is_some_and(|c| c.contains("migtrace.workload=wset=64M")));
    }
}
