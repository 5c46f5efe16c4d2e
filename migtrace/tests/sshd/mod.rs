//! Real OpenSSH servers on the libvirt lab's hosts, and the client machine that reaches
//! them: the path real hosts take, libvirt over `qemu+ssh` and the agents over `ssh HOST
//! migtrace agent`.
//!
//! Each sshd (Debian's openssh-server) runs in its host's network, mount and UTS
//! namespaces, the libvirt daemon's own (so `virt-ssh-helper` there reaches that host's
//! daemon at /run/libvirt), with a host key, a configuration and an authorized key made
//! here; its sessions find the `migtrace` under test on PATH (`SetEnv`). It listens on a
//! management address the host gets on its bridge: the lab's hosts have addresses only
//! on their migration link, a real host has one on its management network too. The client
//! machine is a process holding the lab's client network namespace and a mount namespace
//! whose /root is a home made here (`.ssh/id_ed25519`, `.ssh/known_hosts`): what runs
//! there (`nsenter` into it) uses ssh as a user's machine would, with no option added,
//! and root's real ~/.ssh is never read or written. Everything is killed by pid when the
//! [`SshLab`] is dropped, also when a test fails.

use std::{
    ffi::CString,
    fs,
    net::Ipv4Addr,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const SSHD: &str = "/usr/sbin/sshd";

/// One lab host's sshd: where it listens, in which host.
pub struct Host {
    /// The host's network namespace.
    pub ns: String,
    /// A process of the host (its libvirtd): sshd joins its namespaces.
    pub daemon_pid: u32,
    /// Its management address (on its bridge, /24), where sshd listens.
    pub addr: Ipv4Addr,
    /// The port the client knows the host key at.
    pub port: u16,
    /// A second port, whose host key the client does not know.
    pub unknown_port: u16,
}

pub struct SshLab {
    pub dir: PathBuf,
    /// Management addresses given, by namespace.
    addresses: Vec<(String, String)>,
    servers: Vec<Child>,
    client: Option<Child>,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn write(path: &Path, text: &str, mode: u32) {
    fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("mode");
}

fn cstring(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).expect("no NUL in a path")
}

impl SshLab {
    /// Starts an sshd on each host and the client machine in network namespace
    /// `client_ns`; sessions run `migtrace` as `migtrace`.
    pub fn start(hosts: &[Host], client_ns: &str, migtrace: &Path) -> Self {
        assert!(Path::new(SSHD).exists(), "{SSHD} missing: install openssh-server (cargo xtask setup does)");
        let dir = std::env::temp_dir().join(format!("migtrace-sshd-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let home = dir.join("home");
        for d in [home.join(".ssh"), dir.join("bin")] {
            fs::create_dir_all(&d).expect("test dir");
        }
        fs::set_permissions(home.join(".ssh"), fs::Permissions::from_mode(0o700)).expect("mode");
        let mut lab = Self { dir: dir.clone(), addresses: Vec::new(), servers: Vec::new(), client: None };
        let keygen = |path: &Path| {
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "migtrace-test", "-f"])
                .arg(path))
        };
        keygen(&dir.join("host_key"));
        keygen(&home.join(".ssh/id_ed25519"));
        fs::copy(home.join(".ssh/id_ed25519.pub"), dir.join("authorized_keys")).expect("authorized key");
        std::os::unix::fs::symlink(migtrace, dir.join("bin/migtrace")).expect("migtrace on PATH");
        let host_key = fs::read_to_string(dir.join("host_key.pub")).expect("host key");
        let host_key: Vec<&str> = host_key.split_whitespace().take(2).collect();
        let mut known = String::new();
        for h in hosts {
            let name = if h.port == 22 { h.addr.to_string() } else { format!("[{}]:{}", h.addr, h.port) };
            known.push_str(&format!("{name} {}\n", host_key.join(" ")));
        }
        write(&home.join(".ssh/known_hosts"), &known, 0o644);
        // sshd's privilege separation directory, as Debian's service makes it.
        fs::create_dir_all("/run/sshd").expect("/run/sshd");
        for (i, h) in hosts.iter().enumerate() {
            let address = format!("{}/24", h.addr);
            run(Command::new("ip").args(["-n", &h.ns, "addr", "add", &address, "dev", migtrace::lab::netns::BRIDGE]));
            lab.addresses.push((h.ns.clone(), address));
            let config = dir.join(format!("sshd-{i}.conf"));
            write(
                &config,
                &format!(
                    "ListenAddress {addr}:{port}\nListenAddress {addr}:{unknown}\nHostKey {dir}/host_key\nPidFile none\n\
                     AuthorizedKeysFile {dir}/authorized_keys\nPermitRootLogin prohibit-password\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
                     SetEnv PATH={dir}/bin:/usr/sbin:/usr/bin:/sbin:/bin\n",
                    addr = h.addr,
                    port = h.port,
                    unknown = h.unknown_port,
                    dir = dir.display()
                ),
                0o644,
            );
            let log = dir.join(format!("sshd-{i}.log"));
            let mut cmd = Command::new("nsenter");
            cmd.args([
                "--target",
                &h.daemon_pid.to_string(),
                "--mount",
                "--net",
                "--uts",
                "--",
                SSHD,
                "-D",
                "-e",
                "-f",
            ])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("sshd log"));
            let child = migtrace::sys::tied::spawn_std(cmd).expect("sshd");
            eprintln!("sshd {} on {}:{} (log {})", child.id(), h.addr, h.port, log.display());
            lab.servers.push(child);
            let listening = format!("Server listening on {} port {}.", h.addr, h.port);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !lab.log(i).contains(&listening) {
                let exited = lab.servers.last_mut().is_some_and(|c| !matches!(c.try_wait(), Ok(None)));
                assert!(!exited && Instant::now() < deadline, "sshd on {}: {}", h.addr, lab.log(i));
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // The client machine: the client namespace, and /root its own home.
        let ns = fs::File::open(format!("/run/netns/{client_ns}")).expect("client namespace");
        let (home_c, root_c) = (cstring(&home), cstring(Path::new("/root")));
        let fd = std::os::fd::AsRawFd::as_raw_fd(&ns);
        let mut cmd = Command::new("sleep");
        cmd.arg("infinity").stdin(Stdio::null());
        // SAFETY: between fork and exec only async-signal-safe calls on data made before.
        unsafe {
            cmd.pre_exec(move || {
                let check = |rc: libc::c_int| if rc != 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) };
                check(libc::setns(fd, libc::CLONE_NEWNET))?;
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                check(libc::mount(home_c.as_ptr(), root_c.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()))
            });
        }
        let client = migtrace::sys::tied::spawn_std(cmd).expect("client machine");
        drop(ns);
        eprintln!("client machine {} in {client_ns}, home {}", client.id(), home.display());
        lab.client = Some(client);
        lab
    }

    /// What sshd `i` logged.
    pub fn log(&self, i: usize) -> String {
        fs::read_to_string(self.dir.join(format!("sshd-{i}.log"))).unwrap_or_default()
    }

    /// The words that run a command on the client machine.
    pub fn on_client(&self) -> Vec<String> {
        let pid = self.client.as_ref().map_or(0, Child::id);
        ["nsenter", "--target", &pid.to_string(), "--mount", "--net", "--"].map(str::to_owned).to_vec()
    }

    /// The pids of the sshd processes and the client machine.
    pub fn pids(&self) -> Vec<u32> {
        self.servers.iter().chain(&self.client).map(Child::id).collect()
    }
}

impl Drop for SshLab {
    fn drop(&mut self) {
        for child in self.servers.iter_mut().chain(self.client.as_mut()) {
            // SAFETY: signalling a child this test started, by pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for (ns, address) in &self.addresses {
            let _ = Command::new("ip")
                .args(["-n", ns, "addr", "del", address, "dev", migtrace::lab::netns::BRIDGE])
                .status();
        }
        if std::thread::panicking() {
            for i in 0..self.servers.len() {
                eprintln!("sshd {i} logged:\n{}", self.log(i));
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
