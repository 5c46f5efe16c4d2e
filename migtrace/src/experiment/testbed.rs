//! The hosts an experiment migrates on, whatever runs them: the QEMU lab or the libvirt
//! lab (one per treatment), or two existing libvirt hosts (one pair for the whole
//! experiment). Each comes with the session that measures it.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use super::{
    design::Treatment,
    spec::{Backend, ExperimentSpec, LibvirtSection},
};
use crate::{
    hypervisor::{
        GuestCheck, Heartbeat, HostPair, Machine, MemoryCheck, MigrationOutcome, MigrationParams,
        libvirt::{LibvirtError, LibvirtFlags, LibvirtHost, LibvirtPair},
    },
    lab::{
        Lab, LabError,
        libvirt::{LibvirtLab, LibvirtLabError},
    },
    measure::session::{MeasureOptions, Network, Session},
    probe::{
        agent::{AgentError, AgentOptions, HostTracing, start_hosts},
        tracer::TraceError,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error(transparent)]
    LibvirtLab(#[from] LibvirtLabError),
    #[error(transparent)]
    Libvirt(#[from] LibvirtError),
    #[error("starting the eBPF tracing: {0}")]
    Trace(#[from] TraceError),
    #[error("starting the hosts' tracing agents: {0}")]
    Agent(#[from] AgentError),
    #[error("{0}")]
    Config(String),
}

/// The hosts of one treatment.
pub enum Testbed {
    Qemu(Box<Lab>),
    LibvirtLab(Box<LibvirtLab>),
    Libvirt(Box<LibvirtPair>),
}

impl Testbed {
    /// Brings up the hosts for `treatment` and the session that measures them.
    /// `migtrace` is the binary agents run as (`migtrace agent`).
    pub async fn up(
        spec: &ExperimentSpec,
        treatment: &Treatment,
        options: MeasureOptions,
        migtrace: &std::path::Path,
    ) -> Result<(Self, Session), TestbedError> {
        let boot_timeout = Duration::from_secs_f64(spec.raw.migration.boot_timeout_s);
        let l = &spec.raw.libvirt;
        match spec.backend() {
            Backend::Lab => {
                let config = treatment
                    .lab_config(boot_timeout, &spec.raw.lab, spec.raw.guest)
                    .map_err(|e| TestbedError::Config(e.to_string()))?;
                let lab = Lab::up(config).await?;
                let session = Session::start(lab.network(), options)?;
                Ok((Self::Qemu(Box::new(lab)), session))
            }
            Backend::LibvirtLab => {
                let config = treatment
                    .lab_config(boot_timeout, &spec.raw.lab, spec.raw.guest)
                    .map_err(|e| TestbedError::Config(e.to_string()))?;
                let lab = LibvirtLab::up(config, flags(l)).await?;
                let tracing = match l.agents.as_deref().unwrap_or("auto") {
                    "none" => HostTracing::Off,
                    "local" => HostTracing::Local(
                        ["a", "b"]
                            .into_iter()
                            .zip(lab.host_namespaces())
                            .map(|(h, ns)| (h.to_owned(), Some(ns)))
                            .collect(),
                    ),
                    _ => HostTracing::Agents(
                        ["a", "b"]
                            .iter()
                            .enumerate()
                            .map(|(i, h)| ((*h).to_owned(), lab.agent_command(i, migtrace)))
                            .collect(),
                    ),
                };
                let opts = AgentOptions {
                    domain: lab.domain.clone(),
                    guest_mac: Some(lab.guest_mac().into()),
                    clock_offset_ns: 0,
                };
                let hosts = if options.trace { start_hosts(&tracing, &opts).await? } else { BTreeMap::new() };
                let session = Session::with_hosts(lab.network(), options, hosts);
                Ok((Self::LibvirtLab(Box::new(lab)), session))
            }
            Backend::Libvirt => {
                let (Some(src), Some(dst), Some(domain)) = (&l.source, &l.destination, &l.domain) else {
                    return Err(TestbedError::Config("[libvirt] needs source, destination and domain".into()));
                };
                let hosts = [LibvirtHost::from_uri(src, "source"), LibvirtHost::from_uri(dst, "destination")];
                let pair = tokio::task::block_in_place(|| LibvirtPair::open(domain, hosts, flags(l)))?;
                let tracing = match l.agents.as_deref().unwrap_or("auto") {
                    "none" => HostTracing::Off,
                    "local" => HostTracing::Local(pair.hosts.iter().map(|h| (h.name.clone(), None)).collect()),
                    _ => HostTracing::Agents(
                        pair.hosts
                            .iter()
                            .zip([&l.agent_source, &l.agent_destination])
                            .map(|(h, argv)| {
                                let argv = match argv {
                                    Some(argv) => argv.clone(),
                                    None => crate::probe::agent::ssh_argv(&h.ssh()?)
                                        .map_err(|e| TestbedError::Config(e.to_string()))?,
                                };
                                Ok((h.name.clone(), argv))
                            })
                            .collect::<Result<_, TestbedError>>()?,
                    ),
                };
                let mut options = options;
                if !pair.info().cmdline.as_deref().is_some_and(|c| c.contains("migtrace.workload=")) {
                    options.memory_check = None;
                }
                let network = match l.guest_ip {
                    Some(ip) => Network { ns: l.probe_netns.clone(), guest: ip, taps: Vec::new(), link: Vec::new() },
                    None => {
                        (options.ping_interval, options.probe_interval, options.memory_check) = (None, None, None);
                        Network { ns: None, guest: std::net::Ipv4Addr::UNSPECIFIED, taps: Vec::new(), link: Vec::new() }
                    }
                };
                let opts =
                    AgentOptions { domain: domain.clone(), guest_mac: pair.info().mac.clone(), clock_offset_ns: 0 };
                let hosts = if options.trace { start_hosts(&tracing, &opts).await? } else { BTreeMap::new() };
                let session = Session::with_hosts(network, options, hosts);
                Ok((Self::Libvirt(Box::new(pair)), session))
            }
        }
    }

    /// Whether this testbed lives for one treatment (labs) or the whole experiment.
    pub fn per_treatment(&self) -> bool {
        !matches!(self, Self::Libvirt(_))
    }

    /// Takes the hosts down (labs: everything they made; libvirt hosts: nothing).
    pub async fn down(self) {
        match self {
            Self::Qemu(lab) => lab.down().await,
            Self::LibvirtLab(lab) => lab.down().await,
            Self::Libvirt(_) => {}
        }
    }
}

fn flags(l: &LibvirtSection) -> LibvirtFlags {
    LibvirtFlags { p2p: l.p2p, tunnelled: l.tunnelled, auto_converge: l.auto_converge, compressed: l.compressed }
}

/// The migtrace binary agents run as: this executable.
pub fn this_binary() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("migtrace"))
}

impl HostPair for Testbed {
    type Error = TestbedError;

    fn pids(&self) -> (u32, u32) {
        match self {
            Self::Qemu(l) => l.pids(),
            Self::LibvirtLab(l) => l.pids(),
            Self::Libvirt(p) => p.pids(),
        }
    }

    fn endpoints(&self) -> (String, String) {
        match self {
            Self::Qemu(l) => l.endpoints(),
            Self::LibvirtLab(l) => l.endpoints(),
            Self::Libvirt(p) => p.endpoints(),
        }
    }

    fn hypervisor_versions(&self) -> crate::hypervisor::Versions {
        match self {
            Self::Qemu(l) => l.hypervisor_versions(),
            Self::LibvirtLab(l) => l.hypervisor_versions(),
            Self::Libvirt(p) => p.hypervisor_versions(),
        }
    }

    fn machine(&self) -> Machine {
        match self {
            Self::Qemu(l) => l.machine(),
            Self::LibvirtLab(l) => l.machine(),
            Self::Libvirt(p) => p.machine(),
        }
    }

    async fn migrate(&mut self, params: &MigrationParams) -> Result<MigrationOutcome, TestbedError> {
        Ok(match self {
            Self::Qemu(l) => l.migrate(params).await?,
            Self::LibvirtLab(l) => l.migrate(params).await?,
            Self::Libvirt(p) => p.migrate(params).await?,
        })
    }

    fn guest_check(&self) -> Option<GuestCheck> {
        match self {
            Self::Qemu(l) => l.guest_check(),
            Self::LibvirtLab(l) => l.guest_check(),
            Self::Libvirt(p) => p.guest_check(),
        }
    }

    fn guest_offline(&self) -> Option<String> {
        match self {
            Self::Qemu(l) => l.guest_offline(),
            Self::LibvirtLab(l) => l.guest_offline(),
            Self::Libvirt(p) => p.guest_offline(),
        }
    }

    async fn memory_check(&mut self, timeout: Duration) -> Option<Result<MemoryCheck, String>> {
        match self {
            Self::Qemu(l) => l.memory_check(timeout).await,
            Self::LibvirtLab(l) => l.memory_check(timeout).await,
            Self::Libvirt(p) => p.memory_check(timeout).await,
        }
    }

    fn link(&self) -> Option<crate::hypervisor::link::LinkConfig> {
        match self {
            Self::Qemu(l) => HostPair::link(l.as_ref()),
            Self::LibvirtLab(l) => HostPair::link(l.as_ref()),
            Self::Libvirt(p) => p.link(),
        }
    }

    fn link_tx_bytes(&self) -> Option<u64> {
        match self {
            Self::Qemu(l) => l.link_tx_bytes(),
            Self::LibvirtLab(l) => l.link_tx_bytes(),
            Self::Libvirt(p) => p.link_tx_bytes(),
        }
    }

    fn heartbeats(&self, since_ns: u64) -> Option<Vec<Heartbeat>> {
        match self {
            Self::Qemu(l) => l.heartbeats(since_ns),
            Self::LibvirtLab(l) => l.heartbeats(since_ns),
            Self::Libvirt(p) => p.heartbeats(since_ns),
        }
    }

    async fn prepare_next(&mut self) -> Result<(), TestbedError> {
        match self {
            Self::Qemu(l) => l.prepare_next().await?,
            Self::LibvirtLab(l) => l.prepare_next().await?,
            Self::Libvirt(p) => p.prepare_next().await?,
        }
        Ok(())
    }

    async fn prepare_ahead(&mut self) -> Result<Option<u32>, TestbedError> {
        Ok(match self {
            Self::Qemu(l) => l.prepare_ahead().await?,
            Self::LibvirtLab(l) => l.prepare_ahead().await?,
            Self::Libvirt(p) => p.prepare_ahead().await?,
        })
    }
}
