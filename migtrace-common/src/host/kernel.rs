//! The lab guest's kernel: which one, where it is cached, how to get it.
//!
//! A guest needs a bzImage plus the modules for virtio networking when those are not
//! built in. Debian's cloud kernel is small, boots quickly under TCG, and has virtio as
//! modules; we fetch it with apt and keep only the image and the modules we load.

use std::{
    env, fs, io,
    path::{Path, PathBuf},
    process::Command,
};

/// Modules the guest needs for a virtio NIC, by name; their dependencies are added in
/// load order from each module's `depends=` entry.
pub const NET_MODULES: &[&str] = &["virtio_pci", "virtio_net"];

/// A kernel image and the module files to load, in load order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestKernel {
    pub release: String,
    pub image: PathBuf,
    pub modules: Vec<PathBuf>,
}

/// Where migtrace caches what it downloads or builds for the lab: `$MIGTRACE_CACHE_DIR`,
/// else `/var/cache/migtrace` for root, else `$XDG_CACHE_HOME/migtrace` or `~/.cache/migtrace`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = env::var_os("MIGTRACE_CACHE_DIR") {
        return dir.into();
    }
    if super::is_root() {
        return "/var/cache/migtrace".into();
    }
    env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(|| "/tmp".into())
        .join("migtrace")
}

fn kernels_dir() -> PathBuf {
    cache_dir().join("guest-kernel")
}

/// The newest kernel cached by [`fetch_debian_cloud_kernel`], if any.
pub fn cached() -> Option<GuestKernel> {
    let mut releases: Vec<_> = fs::read_dir(kernels_dir()).ok()?.filter_map(|e| e.ok()).collect();
    releases.sort_by_key(|e| e.file_name());
    releases.into_iter().rev().find_map(|e| load_cached(&e.path()))
}

fn load_cached(dir: &Path) -> Option<GuestKernel> {
    let release = dir.file_name()?.to_str()?.to_owned();
    let image = dir.join("vmlinuz");
    let order = fs::read_to_string(dir.join("modules.order")).ok()?;
    let modules = order.lines().filter(|l| !l.is_empty()).map(|m| dir.join("modules").join(m)).collect::<Vec<_>>();
    (image.is_file() && modules.iter().all(|m| m.is_file())).then_some(GuestKernel { release, image, modules })
}

/// The host's own kernel, if its image is readable and virtio networking is built in or
/// available as modules.
pub fn host() -> Option<GuestKernel> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").ok()?.trim().to_owned();
    let image = PathBuf::from(format!("/boot/vmlinuz-{release}"));
    let config = fs::read_to_string(format!("/boot/config-{release}")).ok()?;
    if !image.is_file() {
        return None;
    }
    let built_in = |opt: &str| config.lines().any(|l| l == format!("{opt}=y"));
    if built_in("CONFIG_VIRTIO_PCI") && built_in("CONFIG_VIRTIO_NET") {
        return Some(GuestKernel { release, image, modules: Vec::new() });
    }
    let modules = module_order(Path::new("/lib/modules").join(&release).as_path(), NET_MODULES).ok()?;
    Some(GuestKernel { release, image, modules })
}

/// Downloads Debian's current cloud kernel with apt and caches its image and the virtio
/// network modules. Needs root and a Debian or Ubuntu apt.
pub fn fetch_debian_cloud_kernel() -> io::Result<GuestKernel> {
    let depends = run(Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]))?;
    let package = depends
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: ").filter(|p| p.starts_with("linux-image-")))
        .ok_or_else(|| io::Error::other("apt-cache knows no linux-image-cloud-amd64 (is this Debian?)"))?
        .to_owned();
    let work = cache_dir().join("download");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    // Download as root into our own directory; apt's sandbox user may not write there.
    run(Command::new("apt-get").current_dir(&work).args(["download", "-o", "APT::Sandbox::User=root", &package]))?;
    let deb = fs::read_dir(&work)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| io::Error::other(format!("apt-get download {package} left no .deb")))?;
    let tree = work.join("tree");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    let release = fs::read_dir(tree.join("lib/modules"))?
        .filter_map(|e| e.ok())
        .find_map(|e| e.file_name().to_str().map(str::to_owned))
        .ok_or_else(|| io::Error::other(format!("{package} has no lib/modules")))?;
    let modules = module_order(&tree.join("lib/modules").join(&release), NET_MODULES)?;

    let dest = kernels_dir().join(&release);
    let staging = kernels_dir().join(format!(".{release}.partial"));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(staging.join("modules"))?;
    fs::copy(tree.join(format!("boot/vmlinuz-{release}")), staging.join("vmlinuz"))?;
    let mut order = String::new();
    for module in &modules {
        let name = module.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        fs::copy(module, staging.join("modules").join(name))?;
        order.push_str(name);
        order.push('\n');
    }
    fs::write(staging.join("modules.order"), order)?;
    let _ = fs::remove_dir_all(&dest);
    fs::rename(&staging, &dest)?;
    fs::remove_dir_all(&work)?;
    load_cached(&dest).ok_or_else(|| io::Error::other("cached kernel incomplete"))
}

/// The `.ko` files for `wanted` and their dependencies under `modules_root`, in an order
/// where every module follows the ones it depends on.
pub fn module_order(modules_root: &Path, wanted: &[&str]) -> io::Result<Vec<PathBuf>> {
    let mut index = std::collections::HashMap::new();
    index_modules(modules_root, &mut index)?;
    let mut order = Vec::new();
    for name in wanted {
        visit(name, &index, &mut order, 0)?;
    }
    Ok(order)
}

fn visit(
    name: &str,
    index: &std::collections::HashMap<String, PathBuf>,
    order: &mut Vec<PathBuf>,
    depth: usize,
) -> io::Result<()> {
    let path = index
        .get(&name.replace('-', "_"))
        .ok_or_else(|| io::Error::other(format!("kernel module {name} not found (built in, or missing?)")))?;
    if order.contains(path) {
        return Ok(());
    }
    if depth > 32 {
        return Err(io::Error::other(format!("module dependency cycle at {name}")));
    }
    for dep in module_depends(&fs::read(path)?) {
        visit(&dep, index, order, depth + 1)?;
    }
    order.push(path.clone());
    Ok(())
}

fn index_modules(dir: &Path, index: &mut std::collections::HashMap<String, PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            index_modules(&path, index)?;
        } else if let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".ko")) {
            index.insert(name.replace('-', "_"), path);
        }
    }
    Ok(())
}

/// The `depends=` list of a module's `.modinfo`.
fn module_depends(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = ko.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let rest = &ko[at + KEY.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end]).split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect()
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
    fn reads_depends_from_modinfo() {
        let ko = b"\x7fELF....\0license=GPL\0depends=virtio_ring,virtio,net_failover\0vermagic=6.1\0";
        assert_eq!(module_depends(ko), ["virtio_ring", "virtio", "net_failover"]);
        assert!(module_depends(b"\0depends=\0").is_empty());
        assert!(module_depends(b"nothing").is_empty());
    }

    #[test]
    fn orders_dependencies_first() {
        let dir = env::temp_dir().join(format!("migtrace-modorder-{}", std::process::id()));
        fs::create_dir_all(dir.join("a/b")).expect("mkdir");
        fs::write(dir.join("a/virtio_ring.ko"), b"\0depends=\0").expect("write");
        fs::write(dir.join("a/virtio.ko"), b"\0depends=virtio_ring\0").expect("write");
        fs::write(dir.join("a/b/failover.ko"), b"\0depends=\0").expect("write");
        fs::write(dir.join("a/b/net_failover.ko"), b"\0depends=failover\0").expect("write");
        fs::write(dir.join("a/b/virtio_net.ko"), b"\0depends=virtio_ring,virtio,net_failover\0").expect("write");
        let order = module_order(&dir, &["virtio_net"]).expect("order");
        let names: Vec<_> = order.iter().map(|p| p.file_name().and_then(|n| n.to_str()).unwrap_or("")).collect();
        assert_eq!(names, ["virtio_ring.ko", "virtio.ko", "failover.ko", "net_failover.ko", "virtio_net.ko"]);
        let err = module_order(&dir, &["e1000"]).expect_err("missing module");
        assert!(err.to_string().contains("e1000"));
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
