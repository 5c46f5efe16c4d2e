//! Which QEMU builds this host has: the system's `qemu-system-x86_64` and the builds
//! `cargo xtask setup` unpacked into migtrace's cache (QEMU 10.0 from Debian's
//! bookworm-backports on Debian 12), and what each needs to run from where it is.
//!
//! A cached build lives under `<cache>/qemu/<version>/root/`, the packages' trees as
//! `dpkg -x` left them. It is not installed at its configured prefix, so it is started
//! with its own firmware directories (`-L`) and module directory (`QEMU_MODULE_DIR`).

use std::{
    cmp::Ordering,
    fmt, fs, io,
    path::{Path, PathBuf},
    process::Command,
};

use super::kernel::cache_dir;

/// The system QEMU's binary name, looked up on `PATH`.
pub const SYSTEM_BINARY: &str = "qemu-system-x86_64";

/// Where Debian's QEMU keeps its firmware (qboot, option ROMs).
pub const SYSTEM_DATA_DIR: &str = "/usr/share/qemu";

/// First QEMU release whose TCG dirty tracking keeps TLB_NOTDIRTY coherent with the
/// migration bitmap (commit 03bfc2188f06, "physmem: Fix migration dirty bitmap
/// coherency with TCG memory access").
pub const TCG_DIRTY_FIX: Version = Version { major: 9, minor: 0, micro: 0 };

/// A QEMU release number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
}

impl Version {
    /// From `QEMU emulator version 7.2.22 (Debian …)`, or a bare `10.0.2`.
    pub fn parse(text: &str) -> Option<Self> {
        let word = text.split_whitespace().find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
        let mut parts = word.split(|c: char| !c.is_ascii_digit()).filter(|p| !p.is_empty());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let micro = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        Some(Self { major, minor, micro })
    }

    /// Whether `selector` (`10`, `10.0`, `10.0.2`) names this version.
    pub fn matches(&self, selector: &str) -> bool {
        let parts: Vec<&str> = selector.split('.').collect();
        let mine = [self.major, self.minor, self.micro];
        !parts.is_empty()
            && parts.len() <= 3
            && parts.iter().zip(mine).all(|(p, m)| p.parse::<u32>().is_ok_and(|p| p == m))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// Where a build comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `qemu-system-x86_64` on `PATH`.
    System,
    /// Unpacked by `cargo xtask setup` into the cache.
    Cache,
    /// A binary the user named by path.
    Path,
}

/// One QEMU build and how to start it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuBuild {
    pub binary: PathBuf,
    pub version: Version,
    /// The first line of `--version`, e.g. `QEMU emulator version 7.2.22 (Debian …)`.
    pub description: String,
    pub origin: Origin,
    /// Firmware and data directories to pass as `-L`, searched before built-in ones.
    pub data_dirs: Vec<PathBuf>,
    /// Module directory (`QEMU_MODULE_DIR`) for a build away from its prefix.
    pub module_dir: Option<PathBuf>,
}

impl QemuBuild {
    /// Runs `binary --version` (with the build's environment) to learn its version.
    pub fn probe(
        binary: &Path,
        origin: Origin,
        data_dirs: Vec<PathBuf>,
        module_dir: Option<PathBuf>,
    ) -> io::Result<Self> {
        let mut cmd = Command::new(binary);
        cmd.arg("--version");
        if let Some(dir) = &module_dir {
            cmd.env("QEMU_MODULE_DIR", dir);
        }
        let out = cmd.output().map_err(|e| io::Error::new(e.kind(), format!("running {}: {e}", binary.display())))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let description = text.lines().next().unwrap_or_default().trim().to_owned();
        let version = Version::parse(&description)
            .filter(|_| out.status.success() && description.contains("QEMU"))
            .ok_or_else(|| {
                io::Error::other(format!(
                    "{} --version did not print a QEMU version ({}): {}",
                    binary.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            })?;
        Ok(Self { binary: binary.to_owned(), version, description, origin, data_dirs, module_dir })
    }

    /// For a build away from its prefix: its own directories to mount over the system's
    /// (source, target), in a mount namespace of the process that runs it. QEMU looks
    /// for modules in its configured directory as well as `QEMU_MODULE_DIR`, and loading
    /// another release's modules there aborts it (`qom-list-types`, which libvirt's
    /// capability probe calls, loads them all).
    pub fn overlay(&self) -> Vec<(PathBuf, PathBuf)> {
        if self.origin != Origin::Cache {
            return Vec::new();
        }
        let Some(root) = self.binary.ancestors().nth(3) else { return Vec::new() };
        ["usr/lib/x86_64-linux-gnu/qemu", "usr/share/qemu", "usr/share/seabios"]
            .iter()
            .map(|d| (root.join(d), Path::new("/").join(d)))
            .filter(|(source, target)| source.is_dir() && target.is_dir())
            .collect()
    }

    /// Whether this build loses TCG dirty pages on 256 KiB-aligned RAM blocks.
    pub fn has_tcg_dirty_bug(&self) -> bool {
        self.version < TCG_DIRTY_FIX
    }

    /// Firmware `name` (e.g. `qboot.rom`) where this build finds it: its `-L`
    /// directories, then the system's data directory.
    pub fn firmware(&self, name: &str) -> Option<PathBuf> {
        self.data_dirs.iter().map(|d| d.join(name)).chain([Path::new(SYSTEM_DATA_DIR).join(name)]).find(|p| p.is_file())
    }

    /// How the build is selected and described, e.g. `7.2.22 (system: /usr/bin/…)`.
    pub fn label(&self) -> String {
        let origin = match self.origin {
            Origin::System => "system",
            Origin::Cache => "cache",
            Origin::Path => "path",
        };
        format!("{} ({origin}: {})", self.version, self.binary.display())
    }
}

/// `<cache>/qemu`: where setup unpacks QEMU builds.
pub fn cache_root() -> PathBuf {
    cache_dir().join("qemu")
}

/// The system QEMU, if `qemu-system-x86_64` is on `PATH` and runs.
pub fn system() -> Option<QemuBuild> {
    let binary = which(SYSTEM_BINARY)?;
    QemuBuild::probe(&binary, Origin::System, Vec::new(), None).ok()
}

/// A cached build unpacked at `dir` (`<cache>/qemu/<version>`), if complete and runnable.
pub fn load_cached(dir: &Path) -> Option<QemuBuild> {
    let root = dir.join("root");
    let binary = root.join("usr/bin").join(SYSTEM_BINARY);
    if !binary.is_file() {
        return None;
    }
    // Debian keeps QEMU's own firmware in /usr/share/qemu and SeaBIOS in its own package.
    let data_dirs: Vec<PathBuf> =
        ["usr/share/qemu", "usr/share/seabios"].iter().map(|d| root.join(d)).filter(|d| d.is_dir()).collect();
    let module_dir = root.join("usr/lib/x86_64-linux-gnu/qemu");
    QemuBuild::probe(&binary, Origin::Cache, data_dirs, module_dir.is_dir().then_some(module_dir)).ok()
}

/// Every cached build, oldest version first.
pub fn cached() -> Vec<QemuBuild> {
    let mut builds: Vec<QemuBuild> = fs::read_dir(cache_root())
        .map(|d| d.filter_map(|e| e.ok()).filter_map(|e| load_cached(&e.path())).collect())
        .unwrap_or_default();
    builds.sort_by_key(|b| b.version);
    builds
}

/// Every build migtrace can use here: the system's first, then cached ones.
pub fn all() -> Vec<QemuBuild> {
    system().into_iter().chain(cached()).collect()
}

#[derive(Debug)]
pub struct SelectError(pub String);

impl fmt::Display for SelectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SelectError {}

/// Resolves a QEMU selector: `system`, a version (`10`, `10.0`, `7.2.22`; the newest
/// build that matches wins, the system's on a tie), or a path to a binary.
pub fn select(selector: &str) -> Result<QemuBuild, SelectError> {
    let selector = selector.trim();
    let builds = all();
    if selector.contains('/') {
        let path = Path::new(selector);
        // A known build named by its path keeps what it needs to run (firmware, modules).
        let canonical = fs::canonicalize(path).ok();
        if let Some(b) = builds.iter().find(|b| canonical.is_some() && fs::canonicalize(&b.binary).ok() == canonical) {
            return Ok(b.clone());
        }
        return QemuBuild::probe(path, Origin::Path, Vec::new(), None)
            .map_err(|e| SelectError(format!("QEMU {selector}: {e}")));
    }
    let known = || {
        if builds.is_empty() {
            "none found".to_owned()
        } else {
            builds.iter().map(QemuBuild::label).collect::<Vec<_>>().join(", ")
        }
    };
    if selector.is_empty() || selector == "system" {
        return builds.into_iter().find(|b| b.origin == Origin::System).ok_or_else(|| {
            SelectError(format!(
                "no system QEMU: {SYSTEM_BINARY} is not on PATH (Debian: apt-get install qemu-system-x86, or `cargo xtask setup`)"
            ))
        });
    }
    if Version::parse(selector).is_none() {
        return Err(SelectError(format!(
            "QEMU selector {selector:?} is neither `system`, a version such as `10.0`, nor a path to a binary"
        )));
    }
    let mut matching: Vec<&QemuBuild> = builds.iter().filter(|b| b.version.matches(selector)).collect();
    matching.sort_by(|a, b| match a.version.cmp(&b.version) {
        Ordering::Equal => (b.origin == Origin::System).cmp(&(a.origin == Origin::System)),
        o => o.reverse(),
    });
    matching.first().map(|b| (*b).clone()).ok_or_else(|| {
        SelectError(format!(
            "no QEMU {selector} on this host (known: {}); on Debian 12 `cargo xtask setup` unpacks QEMU 10.0 from bookworm-backports into {}",
            known(),
            cache_root().display()
        ))
    })
}

/// `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// The Debian suite and packages of the QEMU that setup fetches on Debian 12.
pub const BACKPORTS_SUITE: &str = "bookworm-backports";
pub const BACKPORTS_PACKAGES: &[&str] = &["qemu-system-x86", "qemu-system-common", "qemu-system-data", "seabios"];

/// Downloads QEMU from Debian's bookworm-backports with a private apt state (the host's
/// apt sources and its installed QEMU stay untouched), has `install` put the shared
/// libraries it depends on in place from the host's own suites (setup's installer, which
/// never removes a package), and unpacks it into the cache. Returns the build and the
/// library packages that were missing. Needs root and Debian 12.
pub fn fetch_backports(install: impl FnOnce(&[String]) -> io::Result<()>) -> io::Result<(QemuBuild, Vec<String>)> {
    let root = cache_root();
    let apt_dir = root.join(".apt");
    let _ = fs::remove_dir_all(&apt_dir);
    for d in ["lists/partial", "cache/archives/partial", "download"] {
        fs::create_dir_all(apt_dir.join(d))?;
    }
    let sources = apt_dir.join("sources.list");
    fs::write(
        &sources,
        format!(
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian {BACKPORTS_SUITE} main\n"
        ),
    )?;
    let private = |cmd: &str| {
        let mut c = Command::new(cmd);
        c.arg("-o")
            .arg(format!("Dir::Etc::SourceList={}", sources.display()))
            .args(["-o", "Dir::Etc::SourceParts=/dev/null"])
            .arg("-o")
            .arg(format!("Dir::State::Lists={}", apt_dir.join("lists").display()))
            .arg("-o")
            .arg(format!("Dir::Cache={}", apt_dir.join("cache").display()))
            .args(["-o", "Debug::NoLocking=1", "-o", "APT::Sandbox::User=root"]);
        c
    };
    run(private("apt-get").args(["update", "-q"]))?;
    // Library dependencies come from the host's own suites (backports builds for bookworm).
    let mut libraries = Vec::new();
    for package in ["qemu-system-x86", "qemu-system-common"] {
        let show = run(private("apt-cache").args(["show", &format!("{package}/{BACKPORTS_SUITE}")]))?;
        libraries.extend(library_depends(&show));
    }
    libraries.sort();
    libraries.dedup();
    let missing: Vec<String> = libraries.into_iter().filter(|p| !dpkg_installed(p)).collect();
    if !missing.is_empty() {
        install(&missing)?;
    }
    let download = apt_dir.join("download");
    run(private("apt-get")
        .current_dir(&download)
        .arg("download")
        .args(BACKPORTS_PACKAGES.iter().map(|p| format!("{p}/{BACKPORTS_SUITE}"))))?;
    let staging = root.join(".staging");
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(staging.join("root"))?;
    for deb in fs::read_dir(&download)?.filter_map(|e| e.ok()).map(|e| e.path()) {
        if deb.extension().is_some_and(|x| x == "deb") {
            run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(staging.join("root")))?;
        }
    }
    let probe = load_cached(&staging).ok_or_else(|| {
        io::Error::other(format!("the unpacked QEMU in {} does not run (missing libraries?)", staging.display()))
    })?;
    let dest = root.join(probe.version.to_string());
    let _ = fs::remove_dir_all(&dest);
    fs::rename(&staging, &dest)?;
    let _ = fs::remove_dir_all(&apt_dir);
    let build = load_cached(&dest).ok_or_else(|| io::Error::other("cached QEMU incomplete after the move"))?;
    Ok((build, missing))
}

/// The library packages among a package's `Depends:` (QEMU's own packages, firmware and
/// alternatives beyond the first are left out).
fn library_depends(show: &str) -> Vec<String> {
    let Some(line) = show.lines().find_map(|l| l.strip_prefix("Depends:")) else { return Vec::new() };
    line.split(',')
        .filter_map(|alt| alt.split('|').next())
        .filter_map(|dep| dep.split_whitespace().next())
        .map(|name| name.split(':').next().unwrap_or(name).to_owned())
        .filter(|name| !name.starts_with("qemu-") && name != "seabios" && name != "ipxe-qemu")
        .collect()
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", package])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout == b"installed")
}

fn run(cmd: &mut Command) -> io::Result<String> {
    let out = cmd.output().map_err(|e| io::Error::other(format!("{cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_compare_and_match_selectors() {
        let v = Version::parse("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)").expect("version");
        assert_eq!(v, Version { major: 7, minor: 2, micro: 22 });
        assert!(v < TCG_DIRTY_FIX && Version::parse("10.0.2").expect("v") > TCG_DIRTY_FIX);
        assert!(v.matches("7") && v.matches("7.2") && v.matches("7.2.22"));
        assert!(!v.matches("7.1") && !v.matches("7.2.2") && !v.matches("x") && !v.matches("7.2.22.1"));
        assert_eq!(Version::parse("9"), Some(Version { major: 9, minor: 0, micro: 0 }));
        assert_eq!(Version::parse("QEMU"), None);
    }

    #[test]
    fn library_depends_skip_qemu_packages_and_versions() {
        // Excerpt of `apt-cache show qemu-system-x86/bookworm-backports` (10.0.2).
        let show = "Package: qemu-system-x86\nVersion: 1:10.0.2+ds-2+deb13u1~bpo12+1\n\
            Depends: libaio1 (>= 0.3.93), libbpf1 (>= 1:0.0.8), libc6 (>= 2.34), libfdt1 (>= 1.6.1), \
            libpmem1 (>= 1.4) | libfoo, qemu-system-common (= 1:10.0.2+ds-2+deb13u1~bpo12+1), \
            qemu-system-data (>> 1:10.0.2+ds~), seabios (>> 1.16.3-1~), ipxe-qemu\nRecommends: qemu-utils\n";
        assert_eq!(library_depends(show), ["libaio1", "libbpf1", "libc6", "libfdt1", "libpmem1"]);
        assert!(library_depends("Package: x\n").is_empty());
    }

    #[test]
    fn unknown_selectors_name_the_fix() {
        let err = select("nonsense").expect_err("not a selector").to_string();
        assert!(err.contains("neither `system`"), "{err}");
        let err = select("99.9").expect_err("no such version").to_string();
        assert!(err.contains("no QEMU 99.9") && err.contains("cargo xtask setup"), "{err}");
        let err = select("/nonexistent/qemu").expect_err("no such binary").to_string();
        assert!(err.contains("/nonexistent/qemu"), "{err}");
    }
}
