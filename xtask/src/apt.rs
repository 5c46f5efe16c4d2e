//! apt for `setup`: installs what is missing and never removes a package.
//!
//! apt resolves a conflict by removing whatever stands in the way. On a host with
//! bookworm-backports' qemu-utils 10.0.2, installing Debian 12's QEMU 7.2 removed it:
//! that qemu-utils `Breaks: qemu-system-common (<< 1:8.0+dfsg-5~)`. So every install
//! is simulated first (`apt-get -s` changes nothing). Packages whose install would
//! remove one are left out and reported with the reason and what the user can do, and
//! the install itself runs with `--no-remove`, so apt fails rather than remove
//! anything.

use std::{fmt, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::checks;

/// A package apt names in a simulation: `Remv NAME [VERSION]`, `Inst NAME (VERSION …)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pkg {
    pub name: String,
    pub version: String,
}

impl fmt::Display for Pkg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.name, self.version)
    }
}

/// Wanted packages that setup left out, because installing them removes others.
#[derive(Debug)]
pub struct Conflict {
    pub wanted: Vec<String>,
    pub removed: Vec<Pkg>,
    /// Why, from the packages' own relations ("qemu-utils 1:10.0.2… breaks …").
    pub reasons: Vec<String>,
    /// The host's release (`bookworm`), for the commands suggested.
    pub codename: Option<String>,
    /// The release each removed package came from, where known (`bookworm-backports`).
    pub suites: Vec<Option<String>>,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let wanted = self.wanted.join(" ");
        let removed: Vec<String> = self.removed.iter().map(Pkg::to_string).collect();
        write!(f, "not installed: {wanted}: apt would remove the installed {}", removed.join(", "))?;
        if !self.reasons.is_empty() {
            write!(f, " ({})", self.reasons.join("; "))?;
        }
        write!(f, ", and setup never removes packages; resolve it, then run `cargo xtask setup` again: ")?;
        let mut ways = Vec::new();
        for (r, suite) in self.removed.iter().zip(&self.suites) {
            match suite {
                Some(s) => ways.push(format!(
                    "install {wanted} from the release {} came from (`apt-get install -t {s} {wanted}`, with {s} in \
                     your apt sources)",
                    r.name
                )),
                None => ways.push(format!("install {wanted} from the release {} came from", r.name)),
            }
            if let Some(c) = &self.codename {
                ways.push(format!("put {} back to this release's version (`apt-get install {}/{c}`)", r.name, r.name));
            }
            ways.push(format!("remove {} if nothing of yours needs it (`apt-get remove {}`)", r.name, r.name));
        }
        write!(f, "{}", ways.join(", or "))
    }
}

/// apt-get's arguments to install `packages`: never a removal, no recommends;
/// `simulate` only reports what it would do (and may then show removals).
pub fn install_args(packages: &[String], simulate: bool) -> Vec<String> {
    let mut args: Vec<String> = ["install", "-y", "-q", "--no-install-recommends"].map(str::to_owned).to_vec();
    // A simulation must show what a plain install would remove, so it is the one run
    // without --no-remove; it changes nothing.
    args.push(if simulate { "--simulate" } else { "--no-remove" }.to_owned());
    args.extend(packages.iter().cloned());
    args
}

/// The `Remv` and `Inst` lines of a simulation.
pub fn simulated(stdout: &str) -> (Vec<Pkg>, Vec<Pkg>) {
    let (mut removed, mut installed) = (Vec::new(), Vec::new());
    for line in stdout.lines() {
        let mut words = line.splitn(3, ' ');
        let (Some(action), Some(name), rest) = (words.next(), words.next(), words.next().unwrap_or("")) else {
            continue;
        };
        // `Remv NAME [VERSION]`; `Inst NAME [OLD] (NEW SUITE [ARCH])`.
        let version = |open: char, close: char| {
            let start = rest.find(open)? + 1;
            let end = rest[start..].find(close)? + start;
            rest[start..end].split_whitespace().next().map(str::to_owned)
        };
        match action {
            "Remv" => removed.push(Pkg { name: name.into(), version: version('[', ']').unwrap_or_default() }),
            "Inst" => installed.push(Pkg { name: name.into(), version: version('(', ')').unwrap_or_default() }),
            _ => {}
        }
    }
    (removed, installed)
}

/// The relations in a `Breaks:`/`Conflicts:` value that name `target`, as written.
pub fn relations_naming<'a>(field: &'a str, target: &str) -> Vec<&'a str> {
    field.split(',').map(str::trim).filter(|rel| rel.split(['(', ' ', ':']).next() == Some(target)).collect()
}

/// The value of `field` in an `apt-cache show` stanza.
pub fn field<'a>(stanza: &'a str, name: &str) -> &'a str {
    stanza.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':'))).map_or("", str::trim)
}

/// Whether `version` meets a relation's constraint (`qemu-utils (<< 1:3.1)`); one without
/// a constraint always does. `compare(version, op, bound)` is dpkg's comparison.
pub fn applies(relation: &str, version: &str, compare: &impl Fn(&str, &str, &str) -> bool) -> bool {
    let Some((_, constraint)) = relation.split_once('(') else { return true };
    let mut words = constraint.trim_end_matches(')').split_whitespace();
    match (words.next(), words.next()) {
        (Some(op), Some(bound)) => compare(version, op, bound),
        _ => true,
    }
}

/// `dpkg --compare-versions`: the ordering apt itself uses.
pub fn dpkg_compare(version: &str, op: &str, bound: &str) -> bool {
    Command::new("dpkg").args(["--compare-versions", version, op, bound]).status().is_ok_and(|s| s.success())
}

/// Why installing `installed` removes `removed`: the Breaks and Conflicts between them
/// that hold for the versions involved, each side's as `show` gives its stanza.
pub fn reasons(
    removed: &[Pkg],
    installed: &[Pkg],
    show: impl Fn(&Pkg) -> String,
    compare: impl Fn(&str, &str, &str) -> bool,
) -> Vec<String> {
    let mut out = Vec::new();
    let kinds = ["Breaks", "Conflicts"];
    for r in removed {
        let stanza = show(r);
        for i in installed {
            for kind in kinds {
                for rel in relations_naming(field(&stanza, kind), &i.name) {
                    if applies(rel, &i.version, &compare) {
                        out.push(format!(
                            "{r} {} {rel}, which would be installed at {}",
                            kind.to_lowercase(),
                            i.version
                        ));
                    }
                }
            }
        }
    }
    for i in installed {
        let stanza = show(i);
        for r in removed {
            for kind in kinds {
                for rel in relations_naming(field(&stanza, kind), &r.name) {
                    if applies(rel, &r.version, &compare) {
                        out.push(format!("{i} {} {rel}", kind.to_lowercase()));
                    }
                }
            }
        }
    }
    out
}

/// The release an installed version came from, by apt's sources (`apt-cache policy`),
/// or by a backport's version (`~bpo12` on bookworm: `bookworm-backports`).
pub fn origin_suite(policy: &str, version: &str, codename: Option<&str>) -> Option<String> {
    let mut lines = policy.lines().skip_while(|l| !l.trim_start().starts_with(&format!("*** {version} ")));
    lines.next()?;
    // A version's sources are indented deeper than the versions.
    let from_sources = lines
        .take_while(|l| l.starts_with("        "))
        .filter(|l| l.contains("://"))
        .find_map(|l| l.split_whitespace().nth(2)?.split('/').next().map(str::to_owned));
    from_sources.or_else(|| version.contains("~bpo").then(|| codename.map(|c| format!("{c}-backports"))).flatten())
}

/// Installs packages, never removing one; collects what it left out.
#[derive(Default)]
pub struct Apt {
    updated: bool,
    pub conflicts: Vec<Conflict>,
}

impl Apt {
    pub fn update(&mut self) -> Result<()> {
        if !self.updated {
            crate::setup::step("apt-get update");
            crate::setup::sh(Command::new("apt-get").args(["update", "-q"]))?;
            self.updated = true;
        }
        Ok(())
    }

    /// Installs those of `packages` that are missing. Those whose install would remove
    /// an installed package are left out and recorded in [`Apt::conflicts`].
    pub fn install_missing(&mut self, packages: &[&str]) -> Result<()> {
        let missing: Vec<String> =
            checks::installed(packages).into_iter().filter(|(_, ok)| !ok).map(|(p, _)| p).collect();
        if missing.is_empty() {
            return Ok(());
        }
        self.update()?;
        let mut install = missing.clone();
        let (removed, _) = simulate(&missing)?;
        if !removed.is_empty() {
            // Which of them it is: each on its own.
            let mut wanted = Vec::new();
            for p in &missing {
                let (removed, installed) = simulate(std::slice::from_ref(p))?;
                if !removed.is_empty() {
                    wanted.push(p.clone());
                    self.conflicts.push(conflict(vec![p.clone()], removed, &installed));
                }
            }
            if wanted.is_empty() {
                // Only all together: leave them all out.
                let (removed, installed) = simulate(&missing)?;
                self.conflicts.push(conflict(missing.clone(), removed, &installed));
                wanted = missing.clone();
            }
            install.retain(|p| !wanted.contains(p));
            for c in &self.conflicts {
                println!("setup: {c}");
            }
        }
        if install.is_empty() {
            return Ok(());
        }
        crate::setup::step(&format!("apt-get install {}", install.join(" ")));
        crate::setup::sh(
            Command::new("apt-get").args(install_args(&install, false)).env("DEBIAN_FRONTEND", "noninteractive"),
        )
    }

    /// Fails naming every package left out, why, and how to resolve it.
    pub fn check(&self) -> Result<()> {
        if self.conflicts.is_empty() {
            return Ok(());
        }
        let all: Vec<String> = self.conflicts.iter().map(Conflict::to_string).collect();
        bail!("{}", all.join("; also "))
    }
}

/// What installing `packages` would remove and install; changes nothing.
fn simulate(packages: &[String]) -> Result<(Vec<Pkg>, Vec<Pkg>)> {
    let out = Command::new("apt-get")
        .args(install_args(packages, true))
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .context("starting apt-get --simulate")?;
    let (removed, installed) = simulated(&String::from_utf8_lossy(&out.stdout));
    if !out.status.success() && removed.is_empty() {
        bail!(
            "apt-get install --simulate {} failed ({}): {}",
            packages.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((removed, installed))
}

fn conflict(wanted: Vec<String>, removed: Vec<Pkg>, installed: &[Pkg]) -> Conflict {
    let apt_cache = |args: &[&str]| {
        Command::new("apt-cache")
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let codename = checks::codename();
    let show = |p: &Pkg| apt_cache(&["show", &format!("{}={}", p.name, p.version)]);
    let reasons = reasons(&removed, installed, show, dpkg_compare);
    let suites = removed
        .iter()
        .map(|r| origin_suite(&apt_cache(&["policy", &r.name]), &r.version, codename.as_deref()))
        .collect();
    Conflict { wanted, removed, reasons, codename, suites }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// From `apt-get -s install` on this machine as it was before setup first ran
    /// (bookworm-backports' qemu-utils 10.0.2 installed), the lines that matter.
    const SIMULATION: &str = "NOTE: This is only a simulation!\n\
        The following packages will be REMOVED:\n  qemu-utils\n\
        Remv qemu-utils [1:10.0.2+ds-2+deb13u1~bpo12+1]\n\
        Inst dmidecode (3.4-1 Debian:12.15/oldstable [amd64])\n\
        Inst qemu-system-common (1:7.2+dfsg-7+deb12u18+b3 Debian:12.15/oldstable [amd64])\n\
        Inst libzstd1 [1.5.4+dfsg2-5] (1.5.4+dfsg2-5+deb12u1 Debian:12.15/oldstable [amd64])\n\
        Conf dmidecode (3.4-1 Debian:12.15/oldstable [amd64])\n";

    const QEMU_UTILS: &str = "Package: qemu-utils\nVersion: 1:10.0.2+ds-2+deb13u1~bpo12+1\n\
        Replaces: qemu-system-common (<< 1:8.0+dfsg-5~)\n\
        Breaks: qemu-system-common (<< 1:8.0+dfsg-5~)\n";

    /// Debian 12's, whose Breaks does not hold for qemu-utils 10.0.2.
    const QEMU_SYSTEM_COMMON: &str = "Package: qemu-system-common\nVersion: 1:7.2+dfsg-7+deb12u18+b3\n\
        Breaks: libvirt-daemon (<< 7.2.0-1), qemu-system-data (<< 1:3.1+dfsg-1~), qemu-utils (<< 1:3.1+dfsg-3~)\n";

    /// dpkg's ordering for the versions of these tests (epochs 1: all alike).
    fn compare(version: &str, op: &str, bound: &str) -> bool {
        let key =
            |v: &str| v.split(['.', '+', '-', '~', ':']).filter_map(|n| n.parse::<u32>().ok()).collect::<Vec<_>>();
        let (a, b) = (key(version), key(bound));
        match op {
            "<<" => a < b,
            ">>" => a > b,
            "<=" => a <= b,
            ">=" => a >= b,
            _ => a == b,
        }
    }

    #[test]
    fn an_install_never_removes_and_only_a_simulation_may_show_removals() {
        let p = vec!["qemu-system-x86".to_owned()];
        let real = install_args(&p, false);
        assert!(real.contains(&"--no-remove".to_owned()) && !real.contains(&"--simulate".to_owned()), "{real:?}");
        assert_eq!(real.first().map(String::as_str), Some("install"));
        assert_eq!(real.last(), p.last());
        let sim = install_args(&p, true);
        assert!(sim.contains(&"--simulate".to_owned()), "{sim:?}");
    }

    #[test]
    fn a_simulation_names_what_it_would_remove_and_install() {
        let (removed, installed) = simulated(SIMULATION);
        assert_eq!(removed, [Pkg { name: "qemu-utils".into(), version: "1:10.0.2+ds-2+deb13u1~bpo12+1".into() }]);
        let names: Vec<(&str, &str)> = installed.iter().map(|p| (p.name.as_str(), p.version.as_str())).collect();
        assert_eq!(
            names,
            [
                ("dmidecode", "3.4-1"),
                ("qemu-system-common", "1:7.2+dfsg-7+deb12u18+b3"),
                ("libzstd1", "1.5.4+dfsg2-5+deb12u1")
            ]
        );
    }

    #[test]
    fn the_conflict_says_what_breaks_what_and_three_ways_out() {
        let (removed, installed) = simulated(SIMULATION);
        let show = |p: &Pkg| match p.name.as_str() {
            "qemu-utils" => QEMU_UTILS.to_owned(),
            "qemu-system-common" => QEMU_SYSTEM_COMMON.to_owned(),
            _ => String::new(),
        };
        let reasons = reasons(&removed, &installed, show, compare);
        assert_eq!(
            reasons,
            ["qemu-utils 1:10.0.2+ds-2+deb13u1~bpo12+1 breaks qemu-system-common (<< 1:8.0+dfsg-5~), which would be \
              installed at 1:7.2+dfsg-7+deb12u18+b3"]
        );
        // Installed from a .deb: apt's sources do not know it, its version does.
        let policy = "qemu-utils:\n  Installed: 1:10.0.2+ds-2+deb13u1~bpo12+1\n  Candidate: 1:7.2+dfsg-7+deb12u18+b3\n  \
                      Version table:\n *** 1:10.0.2+ds-2+deb13u1~bpo12+1 100\n        100 /var/lib/dpkg/status\n     \
                      1:7.2+dfsg-7+deb12u18+b3 500\n        500 http://deb.debian.org/debian bookworm/main amd64 Packages\n";
        let suite = origin_suite(policy, &removed[0].version, Some("bookworm"));
        assert_eq!(suite.as_deref(), Some("bookworm-backports"));
        let c = Conflict {
            wanted: vec!["qemu-system-x86".into()],
            removed,
            reasons,
            codename: Some("bookworm".into()),
            suites: vec![suite],
        };
        let message = c.to_string();
        for needle in [
            "not installed: qemu-system-x86: apt would remove the installed qemu-utils 1:10.0.2+ds-2+deb13u1~bpo12+1",
            "breaks qemu-system-common (<< 1:8.0+dfsg-5~)",
            "setup never removes packages",
            "`apt-get install -t bookworm-backports qemu-system-x86`",
            "`apt-get install qemu-utils/bookworm`",
            "`apt-get remove qemu-utils`",
        ] {
            assert!(message.contains(needle), "{message:?} lacks {needle:?}");
        }
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn only_relations_that_hold_for_the_versions_involved_count() {
        assert!(applies("qemu-system-common (<< 1:8.0+dfsg-5~)", "1:7.2+dfsg-7+deb12u18+b3", &compare));
        assert!(!applies("qemu-utils (<< 1:3.1+dfsg-3~)", "1:10.0.2+ds-2+deb13u1~bpo12+1", &compare));
        assert!(applies("qemu-utils", "1:10.0.2", &compare), "no constraint: always");
        if std::path::Path::new("/usr/bin/dpkg").exists() {
            assert!(dpkg_compare("1:7.2+dfsg-7+deb12u18+b3", "<<", "1:8.0+dfsg-5~"));
            assert!(!dpkg_compare("1:10.0.2+ds-2+deb13u1~bpo12+1", "<<", "1:3.1+dfsg-3~"));
        }
    }

    #[test]
    fn an_origin_from_apt_sources_wins_and_relations_match_whole_names() {
        let policy = "qemu-utils:\n  Version table:\n *** 1:10.0.2+ds-2+deb13u1~bpo12+1 100\n        100 \
                      http://deb.debian.org/debian bookworm-backports/main amd64 Packages\n        100 \
                      /var/lib/dpkg/status\n     1:7.2+dfsg-7+deb12u18+b3 500\n        500 \
                      http://deb.debian.org/debian bookworm/main amd64 Packages\n";
        assert_eq!(origin_suite(policy, "1:10.0.2+ds-2+deb13u1~bpo12+1", None).as_deref(), Some("bookworm-backports"));
        assert_eq!(origin_suite(policy, "1:7.2+dfsg-7+deb12u18+b3", None), None, "not the installed version");
        let breaks = "qemu-system-common (<< 1:8.0), qemu-system-common-extra, qemu-utils:any";
        assert_eq!(relations_naming(breaks, "qemu-system-common"), ["qemu-system-common (<< 1:8.0)"]);
        assert_eq!(relations_naming(breaks, "qemu-utils"), ["qemu-utils:any"]);
    }
}
