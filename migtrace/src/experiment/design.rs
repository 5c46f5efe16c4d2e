//! Designs: which combinations of levels (treatments) an experiment runs.

use std::{collections::BTreeMap, time::Duration};

use migtrace_common::host::Accel;
use serde::{Deserialize, Serialize};
use workloads::spec::Spec;

use super::spec::{Design, ExperimentSpec, Factor, Level, Order, SpecError};
use crate::{
    hypervisor::{
        MigrationParams,
        link::{LinkConfig, LinkRate},
    },
    lab::{GuestKind, LabConfig},
};

/// One combination of factor levels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Treatment {
    pub levels: BTreeMap<Factor, Level>,
}

impl Treatment {
    fn get(&self, f: Factor) -> Option<f64> {
        self.levels.get(&f).map(Level::as_f64)
    }

    /// A stable, readable name: `vmsize=256,wset=32,rate=2000` (factors in spec order).
    pub fn name(&self) -> String {
        self.levels.iter().map(|(f, l)| format!("{f}={l}")).collect::<Vec<_>>().join(",")
    }

    pub fn vmsize_mib(&self) -> u32 {
        self.get(Factor::Vmsize).map_or(256, |v| v as u32)
    }

    /// The guest workload spec this treatment implies.
    pub fn workload(&self) -> String {
        let mut parts = Vec::new();
        if let Some(load) = self.get(Factor::Load).filter(|l| *l > 0.0) {
            parts.push(format!("load={load}"));
        }
        if let Some(wset) = self.get(Factor::Wset).filter(|w| *w > 0.0) {
            parts.push(format!("wset={wset}M"));
        }
        if let Some(rate) = self.get(Factor::Rate).filter(|r| *r > 0.0) {
            parts.push(format!("rate={rate}"));
        }
        if let (Some(Level::Text(period)), Some(bpc)) = (self.levels.get(&Factor::Period), self.get(Factor::Bpc))
            && bpc > 0.0
        {
            parts.push(format!("period={period},bpc={bpc}"));
        }
        let dirty = self.get(Factor::Rate).is_some_and(|r| r > 0.0) || self.get(Factor::Bpc).is_some_and(|b| b > 0.0);
        if let Some(fill) = self.get(Factor::Fill)
            && dirty
        {
            parts.push(format!("fill={fill}"));
        }
        if parts.is_empty() { "idle".into() } else { parts.join(",") }
    }

    /// Checks that this combination makes a valid guest of kind `guest`.
    pub fn validate(&self, guest: GuestKind) -> Result<(), SpecError> {
        let workload = Spec::parse(&self.workload()).map_err(|e| {
            SpecError::Treatment(format!("treatment {}: workload {}: {e}", self.name(), self.workload()))
        })?;
        if guest == GuestKind::Minimal {
            let vcpus = self.get(Factor::Vcpus).map_or(1, |v| v as u32);
            return crate::lab::minimal::validate(&workload, self.vmsize_mib(), vcpus)
                .map_err(|e| SpecError::Treatment(format!("treatment {}: {e}", self.name())));
        }
        if let Some(w) = workload.wset
            && (w >> 20) >= self.vmsize_mib() as u64
        {
            return Err(SpecError::Treatment(format!(
                "treatment {}: wset ({} MiB) must be smaller than vmsize ({} MiB): lower wset or raise vmsize",
                self.name(),
                w >> 20,
                self.vmsize_mib()
            )));
        }
        if self.vmsize_mib() < 128 {
            return Err(SpecError::Treatment(format!("treatment {}: vmsize must be at least 128 MiB", self.name())));
        }
        Ok(())
    }

    /// The QEMU selector of this treatment (`qemu` factor), if it has one.
    pub fn qemu(&self) -> Option<&str> {
        match self.levels.get(&Factor::Qemu) {
            Some(Level::Text(q)) => Some(q),
            _ => None,
        }
    }

    /// The lab's link in this treatment (`link` factor), else the lab's default.
    pub fn link(&self) -> LinkConfig {
        match self.levels.get(&Factor::Link).map(|l| l.to_string().parse::<LinkRate>()) {
            Some(Ok(rate)) => LinkConfig { rate, ..crate::lab::default_link() },
            _ => crate::lab::default_link(),
        }
    }

    pub fn lab_config(
        &self,
        boot_timeout: Duration,
        lab: &super::spec::LabSection,
        guest: GuestKind,
    ) -> Result<LabConfig, SpecError> {
        let workload = Spec::parse(&self.workload()).map_err(|e| SpecError::Treatment(e.to_string()))?;
        let accel = match self.levels.get(&Factor::Accel) {
            Some(Level::Text(a)) if a == "kvm" => Some(Accel::Kvm),
            Some(Level::Text(a)) if a == "tcg" => Some(Accel::Tcg { reason: "chosen by the experiment".into() }),
            _ => None,
        };
        Ok(LabConfig {
            vmsize_mib: self.vmsize_mib(),
            vcpus: self.get(Factor::Vcpus).map_or(1, |v| v as u32),
            accel,
            workload,
            kernel: None,
            boot_timeout,
            qemu: self.qemu().map(str::to_owned),
            tcg_dirty_workaround: lab.tcg_dirty_workaround,
            guest,
            dirty_ring: lab.dirty_ring,
            link: self.link(),
        })
    }

    pub fn migration_params(&self, timeout_s: f64) -> MigrationParams {
        MigrationParams {
            max_bandwidth: self.get(Factor::MaxBandwidth).map(|m| (m * (1 << 20) as f64) as u64),
            downtime_limit_ms: self.get(Factor::DowntimeLimit).map(|d| d as u64),
            avail_switchover_bandwidth: self
                .get(Factor::AvailSwitchoverBandwidth)
                .map(|m| (m * (1 << 20) as f64) as u64),
            timeout_s,
            link: None,
        }
    }
}

/// All treatments of a spec, in run order.
pub fn expand(spec: &ExperimentSpec) -> Vec<Treatment> {
    let mut treatments: Vec<Treatment> = match spec.raw.design {
        Design::Factorial => {
            let mut all = vec![BTreeMap::new()];
            for (factor, levels) in &spec.factors {
                all = all
                    .into_iter()
                    .flat_map(|partial: BTreeMap<Factor, Level>| {
                        levels.iter().map(move |l| {
                            let mut t = partial.clone();
                            t.insert(*factor, l.clone());
                            t
                        })
                    })
                    .collect();
            }
            all.into_iter().map(|levels| Treatment { levels }).collect()
        }
        Design::Sweep => {
            // The base treatment once, then each factor over its other levels.
            let mut out = vec![Treatment { levels: spec.base.clone() }];
            for (factor, levels) in &spec.factors {
                for level in levels {
                    if *level == spec.base[factor] {
                        continue;
                    }
                    let mut t = spec.base.clone();
                    t.insert(*factor, level.clone());
                    out.push(Treatment { levels: t });
                }
            }
            out
        }
    };
    if spec.raw.order == Order::Random {
        use rand::{SeedableRng as _, seq::SliceRandom as _};
        treatments.shuffle(&mut rand::rngs::SmallRng::seed_from_u64(spec.raw.seed));
    }
    treatments
}

/// Consecutive repetitions of one treatment on one booted guest (ping-pong migrations).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Boot {
    /// Index into [`expand`]'s treatments.
    pub treatment: usize,
    pub repetitions: Vec<u32>,
    /// Which of the treatment's boots this is (0-based), and how many it has.
    pub index: u32,
    pub of: u32,
}

/// The run order: each treatment's repetitions cut into boots of at most
/// `repetitions_per_boot`; in `random` order the boots of all treatments are shuffled
/// together (seeded), so a treatment's boots fall at different times of the run. The
/// plan depends on the spec alone: a resumed run keeps it and skips what is done.
pub fn plan(spec: &ExperimentSpec, treatments: &[Treatment]) -> Vec<Boot> {
    let reps = spec.raw.repetitions;
    let per = spec.raw.repetitions_per_boot.unwrap_or(reps).clamp(1, reps.max(1));
    let of = reps.div_ceil(per);
    let mut boots: Vec<Boot> = (0..treatments.len())
        .flat_map(|t| {
            (0..of).map(move |b| Boot {
                treatment: t,
                repetitions: (b * per..((b + 1) * per).min(reps)).collect(),
                index: b,
                of,
            })
        })
        .collect();
    if spec.raw.order == Order::Random && of > 1 {
        use rand::{SeedableRng as _, seq::SliceRandom as _};
        // Another stream than the treatments' shuffle, from the same seed.
        boots.shuffle(&mut rand::rngs::SmallRng::seed_from_u64(spec.raw.seed ^ 0x626f_6f74));
    }
    boots
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(body: &str) -> ExperimentSpec {
        ExperimentSpec::parse(&format!("name = \"t\"\nrepetitions = 2\n{body}")).expect("valid spec")
    }

    #[test]
    fn factorial_is_the_cartesian_product() {
        let s = spec("[factors]\nvmsize = [256, 512]\nwset = [\"32M\", \"64M\", \"96M\"]\nrate = [0, 1000]\n");
        let t = expand(&s);
        assert_eq!(t.len(), 2 * 3 * 2);
        let names: std::collections::BTreeSet<String> = t.iter().map(Treatment::name).collect();
        assert_eq!(names.len(), 12, "all distinct");
        assert!(names.contains("vmsize=512,wset=64,rate=1000"));
    }

    #[test]
    fn sweep_varies_one_factor_at_a_time() {
        let s = spec(
            "design = \"sweep\"\n[factors]\nvmsize = [256, 512, 1024]\nwset = [\"32M\", \"64M\"]\nrate = [0, 1000, 5000]\n[base]\nrate = 1000\n",
        );
        let t = expand(&s);
        // base + (3-1) + (2-1) + (3-1)
        assert_eq!(t.len(), 1 + 2 + 1 + 2);
        assert_eq!(t[0].name(), "vmsize=256,wset=32,rate=1000");
        assert!(t.iter().all(|x| x.levels.iter().filter(|(f, l)| s.base[f] != **l).count() <= 1));
    }

    #[test]
    fn the_papers_xen_design_has_528_treatments() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../specs/paper-xen-factorial.toml"))
            .expect("paper spec");
        let s = ExperimentSpec::parse(&text).expect("paper spec parses");
        assert_eq!(expand(&s).len(), 528);
        assert_eq!(s.raw.repetitions, 20);
    }

    #[test]
    fn the_papers_design_scaled_to_the_lab_keeps_its_528_treatments_and_fits_every_guest() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../specs/paper-lab.toml"))
            .expect("paper-lab spec");
        let s = ExperimentSpec::parse(&text).expect("paper-lab spec parses (every treatment validated)");
        assert_eq!(expand(&s).len(), 528);
        let max = |f: Factor| s.factors[&f].iter().map(Level::as_f64).fold(0.0, f64::max);
        // 1/8 of the paper's 8192 MB, 1200 MB and 200,000 pages/s.
        assert_eq!((max(Factor::Vmsize), max(Factor::Wset), max(Factor::Rate)), (1024.0, 144.0, 25_000.0));
    }

    #[test]
    fn the_qemu_factor_selects_the_build_per_treatment() {
        let s = spec(
            "[factors]
qemu = [\"system\", \"10.0\"]\nrate = [0]\n",
        );
        let t = expand(&s);
        assert_eq!(t.iter().filter_map(Treatment::qemu).collect::<Vec<_>>(), ["system", "10.0"]);
        let config = t[1].lab_config(Duration::from_secs(1), &Default::default(), GuestKind::Linux).expect("config");
        assert_eq!(config.qemu.as_deref(), Some("10.0"));
        assert!(t[1].name().contains("qemu=10.0"), "{}", t[1].name());
    }

    #[test]
    fn random_order_is_a_seeded_permutation() {
        let base = "[factors]\nvmsize = [256, 512]\nrate = [0, 100, 200]\nwset = [\"16M\"]\n";
        let seq = expand(&spec(base));
        let a = expand(&spec(&format!("order = \"random\"\nseed = 7\n{base}")));
        let b = expand(&spec(&format!("order = \"random\"\nseed = 7\n{base}")));
        assert_eq!(a, b);
        let mut sorted_a: Vec<String> = a.iter().map(Treatment::name).collect();
        let mut sorted_seq: Vec<String> = seq.iter().map(Treatment::name).collect();
        sorted_a.sort();
        sorted_seq.sort();
        assert_eq!(sorted_a, sorted_seq);
    }

    #[test]
    fn boots_cut_repetitions_and_random_order_interleaves_them() {
        let base = "[factors]\nrate = [0, 100, 200]\nwset = [\"16M\"]\n";
        let reps = |boots: &[Boot], t: usize| -> Vec<u32> {
            boots.iter().filter(|b| b.treatment == t).flat_map(|b| b.repetitions.clone()).collect()
        };
        // Default: one boot per treatment, in treatment order.
        let s = ExperimentSpec::parse(&format!("name = \"t\"\nrepetitions = 5\n{base}")).expect("spec");
        let p = plan(&s, &expand(&s));
        assert_eq!(
            p.iter().map(|b| (b.treatment, b.repetitions.len(), b.of)).collect::<Vec<_>>(),
            [(0, 5, 1), (1, 5, 1), (2, 5, 1)]
        );
        // Two per boot: 5 repetitions are boots of 2, 2 and 1, each repetition once.
        let s = ExperimentSpec::parse(&format!(
            "name = \"t\"\nrepetitions = 5\nrepetitions_per_boot = 2\norder = \"random\"\nseed = 3\n{base}"
        ))
        .expect("spec");
        let p = plan(&s, &expand(&s));
        assert_eq!(p.len(), 9);
        for t in 0..3 {
            let mut r = reps(&p, t);
            r.sort();
            assert_eq!(r, [0, 1, 2, 3, 4]);
        }
        assert!(p.iter().all(|b| b.of == 3 && b.repetitions.len() <= 2));
        // Interleaved: some treatment's boots are not all next to each other.
        let runs = p.windows(2).filter(|w| w[0].treatment != w[1].treatment).count() + 1;
        assert!(runs > 3, "{p:?}");
        assert_eq!(p, plan(&s, &expand(&s)), "seeded");
    }

    #[test]
    fn workloads_follow_the_levels() {
        let s = spec("[factors]\nwset = [\"32M\"]\nrate = [0, 2000]\nfill = [50]\nload = [0, 30]\n");
        let w: Vec<String> = expand(&s).iter().map(Treatment::workload).collect();
        assert!(w.contains(&"wset=32M".to_owned()));
        assert!(w.contains(&"load=30,wset=32M,rate=2000,fill=50".to_owned()));
    }
}
