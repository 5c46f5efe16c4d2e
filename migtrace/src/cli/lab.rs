//! `migtrace lab …`

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use migtrace::hypervisor::HostPair as _;
use migtrace::lab::{
    Lab, image,
    libvirt::LibvirtLab,
    netns::{GUEST_IP, PROBE_IP, TAPS},
    registry::{self, Owner},
};

use super::MachineArgs;

#[derive(Subcommand)]
pub enum LabCommand {
    /// Start a lab and keep it up until Ctrl-C or `migtrace lab down`.
    ///
    /// Example: migtrace lab up --vmsize 512 --workload wset=64M,rate=10000
    /// Example: migtrace lab up --link 100mbit
    /// Example: migtrace lab up --backend libvirt --workload wset=64M,rate=20000
    /// Example: migtrace lab up --guest minimal --vmsize 128 --workload wset=64M,rate=5000,fill=1
    Up {
        #[command(flatten)]
        machine: MachineArgs,
        /// `qemu`: two QEMU processes in one namespace; `libvirt`: two libvirt daemons,
        /// each in its own namespace, and the guest as a libvirt domain.
        #[arg(long, value_enum, default_value = "qemu")]
        backend: super::migrate::LabBackend,
    },
    /// Stop a lab started by `lab up` (its owner tears it down).
    ///
    /// Example: migtrace lab down 3fa2c1
    Down {
        /// Lab id (see `migtrace lab list`); may be omitted when only one lab exists.
        id: Option<String>,
    },
    /// List labs on this host.
    List,
    /// Remove what crashed runs left behind: QEMU processes, namespaces (with their
    /// bridge and taps) and state of labs whose owner is gone. Running labs are kept.
    Clean,
    /// Build (or find in the cache) the guest image and print where it is.
    Image {
        /// Guest kernel to use instead of the default choice.
        #[arg(long)]
        kernel: Option<std::path::PathBuf>,
    },
}

pub async fn run(cmd: LabCommand) -> Result<()> {
    match cmd {
        LabCommand::Up { machine, backend: super::migrate::LabBackend::Qemu } => up(machine).await,
        LabCommand::Up { machine, backend: super::migrate::LabBackend::Libvirt } => up_libvirt(machine).await,
        LabCommand::Down { id } => down(id).await,
        LabCommand::List => {
            let labs = registry::list();
            if labs.is_empty() {
                println!("no labs");
            }
            for s in labs {
                let state = match registry::owner(&s) {
                    Owner::Running(_) => format!("running (owner pid {})", s.owner_pid),
                    Owner::Gone => "left behind (migtrace lab clean)".into(),
                    Owner::Unknown => format!("owner unknown ({})", unknown_owner(&s)),
                };
                let namespaces = migtrace::lab::netns::namespaces_of(&s.id).join(" ");
                println!("{}  netns {namespaces}  qemu pids {:?}  {state}", s.id, registry::qemu_processes(&s.id));
            }
            Ok(())
        }
        LabCommand::Clean => {
            let mut cleaned = 0;
            for s in registry::list() {
                match registry::owner(&s) {
                    Owner::Running(_) => {
                        println!("{}: in use by pid {}, kept", s.id, s.owner_pid);
                        continue;
                    }
                    Owner::Unknown => {
                        println!("{}: kept, {}", s.id, unknown_owner(&s));
                        continue;
                    }
                    Owner::Gone => {}
                }
                let r = registry::remove(&s);
                println!("{}: killed QEMU {:?}, netns removed: {}, state removed: {}", s.id, r.killed, r.netns, r.dir);
                cleaned += 1;
            }
            println!("lab clean: {cleaned} lab(s) removed");
            Ok(())
        }
        LabCommand::Image { kernel } => {
            let k = image::select_kernel(kernel.as_deref())?;
            let img = image::build(&k)?;
            println!(
                "guest image ({}): kernel {} ({}), initramfs {}",
                if img.built { "built" } else { "cached" },
                img.kernel.display(),
                img.kernel_release,
                img.initramfs.display()
            );
            Ok(())
        }
    }
}

async fn up(machine: MachineArgs) -> Result<()> {
    let config = machine.lab_config()?;
    println!(
        "lab: booting a {} MiB, {} vCPU {} guest ({})…",
        config.vmsize_mib, config.vcpus, config.guest, config.workload
    );
    let lab = Lab::up(config).await?;
    let (src, dst) = (lab.source.as_ref().map_or(0, |q| q.pid), lab.destination.as_ref().map_or(0, |q| q.pid));
    println!("lab {} up in {:.1} s ({})", lab.id, lab.boot_time.as_secs_f64(), lab.accel_label());
    let machine = lab.machine_info();
    println!("  qemu       {} ({})", machine.description, machine.binary);
    println!("  guest RAM  {} KiB", machine.ram_bytes / 1024);
    for w in &machine.workarounds {
        println!("  workaround {w}");
    }
    if let Some(why) = lab.guest_offline() {
        println!("  hosts      netns {} and {} ({why})", lab.host_ns(TAPS[0]), lab.host_ns(TAPS[1]));
        println!(
            "  console    {} (heartbeat bytes stripped)",
            lab.source.as_ref().map_or_else(String::new, |q| q.console.display().to_string())
        );
    } else {
        println!("  hosts      netns {} and {}", lab.host_ns(TAPS[0]), lab.host_ns(TAPS[1]));
        println!("  client     netns {}   (ip netns exec {} ping {GUEST_IP})", lab.client_ns(), lab.client_ns());
        println!("  guest      {GUEST_IP}, probe sender {PROBE_IP}");
    }
    println!("  link       {}", link_line(lab.link()));
    println!("  source     pid {src}, destination pid {dst} (waiting for a migration)");
    println!("  state      {}", lab.runtime_dir().display());
    println!("  agent      {}", lab.agent_line.trim());
    println!("Ctrl-C or `migtrace lab down {}` stops it.", lab.id);
    // Runs until the process is signalled; main's signal handler drops this future, and
    // with it the lab, which kills its QEMUs and deletes the namespace.
    std::future::pending::<()>().await;
    lab.down().await;
    Ok(())
}

async fn up_libvirt(machine: MachineArgs) -> Result<()> {
    let config = machine.lab_config()?;
    println!("libvirt lab: two daemons, booting a {} MiB guest ({})…", config.vmsize_mib, config.workload);
    let lab = LibvirtLab::up(config, Default::default()).await?;
    let machine = lab.machine_info();
    println!("libvirt lab {} up in {:.1} s ({})", lab.id, lab.boot_time.as_secs_f64(), lab.accel);
    for (i, h) in ["a", "b"].iter().enumerate() {
        if let Some(p) = lab.pair() {
            println!("  host {h}     {}   (netns {})", p.hosts[i].uri, LibvirtLab::ns(&lab.id, h));
        }
    }
    println!("  link       {}", link_line(&lab.link()));
    println!("  domain     {} on host a ({}, {} KiB)", lab.domain, machine.description, machine.ram_bytes / 1024);
    println!("  client     netns {} (ping {})", LibvirtLab::ns(&lab.id, "c"), migtrace::lab::libvirt::GUEST_IP);
    println!("  agent      {}", lab.agent_line.trim());
    println!("Ctrl-C or `migtrace lab down {}` stops it.", lab.id);
    std::future::pending::<()>().await;
    lab.down().await;
    Ok(())
}

async fn down(id: Option<String>) -> Result<()> {
    let labs = registry::list();
    let state = match id {
        Some(id) => labs
            .into_iter()
            .find(|s| s.id == id)
            .ok_or_else(|| anyhow::anyhow!("no lab {id} (see `migtrace lab list`)"))?,
        None => match labs.len() {
            0 => bail!("no labs"),
            1 => labs.into_iter().next().ok_or_else(|| anyhow::anyhow!("no labs"))?,
            n => bail!("{n} labs exist: name one (see `migtrace lab list`)"),
        },
    };
    let signalled = match registry::owner(&state) {
        Owner::Unknown => bail!("lab {}: not stopped, {}", state.id, unknown_owner(&state)),
        Owner::Running(owner) => registry::stop_owner(owner)
            .with_context(|| format!("signalling the owner of lab {} (pid {})", state.id, owner.pid))?,
        Owner::Gone => false,
    };
    if signalled {
        for _ in 0..100 {
            if migtrace::lab::netns::namespaces_of(&state.id).is_empty() {
                println!("lab {} stopped by its owner (pid {})", state.id, state.owner_pid);
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        eprintln!("owner pid {} did not stop the lab within 10 s; removing it directly", state.owner_pid);
    }
    let r = registry::remove(&state);
    println!("lab {} removed (killed QEMU {:?})", state.id, r.killed);
    Ok(())
}

/// The link as `lab up` shows it.
fn link_line(link: &migtrace::hypervisor::link::LinkConfig) -> String {
    let delay = link.delay_ms.map_or(String::new(), |d| format!(", {d} ms one-way delay"));
    match link.shaper.as_str() {
        "" => format!("{}{delay} (not shaped)", link.rate),
        shaper => format!("{}{delay} ({shaper})", link.rate),
    }
}

/// Why a lab whose owner cannot be told apart is left alone, and what to do.
fn unknown_owner(s: &registry::State) -> String {
    format!(
        "its state, written by an older migtrace, has no start time for owner pid {pid}, and a migtrace process with \
         that pid runs: it may be the owner or a later process that reused the pid, so it is not signalled; if pid \
         {pid} is this lab's `migtrace lab up`, stop it (`kill -INT {pid}`), otherwise `migtrace lab clean` once \
         it has exited",
        pid = s.owner_pid
    )
}
