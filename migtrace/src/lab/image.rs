//! The lab guest: a kernel plus a busybox initramfs whose init brings up the network and
//! hands over to the `workloads` agent, which runs the treatment's load generators.
//!
//! Images are cached under `<cache>/guest-image/<digest>/`, keyed by a digest of every
//! input (kernel, modules, busybox, agent, init script), so they are rebuilt only when an
//! input changes.

use std::{
    fs, io,
    io::Write as _,
    path::{Path, PathBuf},
};

use migtrace_common::host::kernel::{self, GuestKernel};
use sha2::{Digest as _, Sha256};

/// The static `workloads` binary built by `cargo xtask build`; empty when built without.
static GUEST_AGENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/workloads.static"));

/// Debian's busybox-static.
pub const BUSYBOX: &str = "/bin/busybox";

const INIT: &str = r#"#!/bin/sh
# migtrace lab guest: mount, load the virtio modules, bring up eth0, start the agent.
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s /bin
for m in $(cat /etc/modules.order); do
    insmod "/lib/modules/$m" || echo "migtrace-guest: insmod $m failed"
done
addr=$(sed -n 's/.*migtrace\.ip=\([^ ]*\).*/\1/p' /proc/cmdline)
n=0
while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 200 ]; do sleep 0.05; n=$((n + 1)); done
ip link set lo up
ip addr add "$addr" dev eth0
ip link set eth0 up
echo "migtrace-guest: eth0 up with $addr"
exec /bin/workloads agent
"#;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("this migtrace binary was built without the guest agent: build it with `cargo xtask build`")]
    NoAgent,
    #[error("{BUSYBOX} not found: install a static busybox (Debian: busybox-static)")]
    NoBusybox,
    #[error("{BUSYBOX} is dynamically linked and cannot run in the guest: install busybox-static")]
    BusyboxNotStatic,
    #[error(
        "no guest kernel: the host kernel lacks virtio networking or is unreadable, and fetching \
         Debian's cloud kernel failed ({0}); pass --kernel PATH or run `cargo xtask setup`"
    )]
    NoKernel(String),
    #[error("kernel {0} not found")]
    KernelMissing(PathBuf),
    #[error("writing the guest image in {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A bootable guest: kernel image and initramfs.
#[derive(Clone, Debug)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub kernel_release: String,
    /// Whether this call built the image (false: cache hit).
    pub built: bool,
}

/// The kernel to boot: `explicit` if given (no modules: virtio must be built in), else
/// the host's own if it has virtio networking, else Debian's cloud kernel (cached, or
/// fetched with apt now).
pub fn select_kernel(explicit: Option<&Path>) -> Result<GuestKernel, ImageError> {
    if let Some(path) = explicit {
        if !path.is_file() {
            return Err(ImageError::KernelMissing(path.into()));
        }
        return Ok(GuestKernel { release: "custom".into(), image: path.into(), modules: Vec::new() });
    }
    if let Some(k) = kernel::host().or_else(kernel::cached) {
        return Ok(k);
    }
    kernel::fetch_debian_cloud_kernel().map_err(|e| ImageError::NoKernel(e.to_string()))
}

fn read(path: &Path) -> Result<Vec<u8>, ImageError> {
    fs::read(path).map_err(|source| ImageError::Read { path: path.into(), source })
}

/// Whether an ELF file has no program interpreter, i.e. is statically linked.
fn is_static_elf(bytes: &[u8]) -> bool {
    use object::read::elf::{FileHeader as _, ProgramHeader as _};
    let Ok(header) = object::elf::FileHeader64::<object::Endianness>::parse(bytes) else { return false };
    let Ok(endian) = header.endian() else { return false };
    let Ok(phdrs) = header.program_headers(endian, bytes) else { return false };
    !phdrs.iter().any(|p| p.p_type(endian) == object::elf::PT_INTERP)
}

/// Builds (or finds in the cache) the guest image for `kernel`.
pub fn build(kernel: &GuestKernel) -> Result<GuestImage, ImageError> {
    if GUEST_AGENT.is_empty() {
        return Err(ImageError::NoAgent);
    }
    let busybox = fs::read(BUSYBOX).map_err(|_| ImageError::NoBusybox)?;
    if !is_static_elf(&busybox) {
        return Err(ImageError::BusyboxNotStatic);
    }
    let modules: Vec<(String, Vec<u8>)> = kernel
        .modules
        .iter()
        .map(|m| Ok((m.file_name().and_then(|n| n.to_str()).unwrap_or("module.ko").to_owned(), read(m)?)))
        .collect::<Result<_, ImageError>>()?;

    let mut digest = Sha256::new();
    for part in [INIT.as_bytes(), &busybox, GUEST_AGENT, kernel.image.to_string_lossy().as_bytes()] {
        digest.update((part.len() as u64).to_le_bytes());
        digest.update(part);
    }
    for (name, bytes) in &modules {
        digest.update(name.as_bytes());
        digest.update(bytes);
    }
    let key: String = digest.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
    let dir = kernel::cache_dir().join("guest-image").join(&key);
    let initramfs = dir.join("initramfs.cpio");
    let image = |built| GuestImage {
        kernel: kernel.image.clone(),
        initramfs: initramfs.clone(),
        kernel_release: kernel.release.clone(),
        built,
    };
    if initramfs.is_file() {
        return Ok(image(false));
    }

    let werr = |source| ImageError::Write { path: dir.clone(), source };
    fs::create_dir_all(&dir).map_err(werr)?;
    let order: String = modules.iter().map(|(n, _)| format!("{n}\n")).collect();
    let mut entries: Vec<(&str, u32, Vec<u8>)> = vec![
        ("bin", 0o040755, Vec::new()),
        ("etc", 0o040755, Vec::new()),
        ("lib", 0o040755, Vec::new()),
        ("lib/modules", 0o040755, Vec::new()),
        ("dev", 0o040755, Vec::new()),
        ("proc", 0o040755, Vec::new()),
        ("sys", 0o040755, Vec::new()),
        ("bin/busybox", 0o100755, busybox),
        ("bin/sh", 0o120777, b"busybox".to_vec()),
        ("bin/workloads", 0o100755, GUEST_AGENT.to_vec()),
        ("init", 0o100755, INIT.as_bytes().to_vec()),
        ("etc/modules.order", 0o100644, order.into_bytes()),
    ];
    let module_paths: Vec<String> = modules.iter().map(|(n, _)| format!("lib/modules/{n}")).collect();
    for ((_, bytes), path) in modules.into_iter().zip(&module_paths) {
        entries.push((path.as_str(), 0o100644, bytes));
    }
    // Write to a temporary name and rename: a crash never leaves a truncated image.
    let partial = dir.join(format!("initramfs.cpio.{}.partial", std::process::id()));
    write_cpio(&partial, entries).map_err(werr)?;
    fs::rename(&partial, &initramfs).map_err(werr)?;
    Ok(image(true))
}

fn write_cpio(path: &Path, entries: Vec<(&str, u32, Vec<u8>)>) -> io::Result<()> {
    let mut out = io::BufWriter::new(fs::File::create(path)?);
    for (ino, (name, mode, bytes)) in entries.into_iter().enumerate() {
        let builder = cpio::newc::Builder::new(name).ino(ino as u32 + 1).mode(mode).nlink(1);
        let mut writer = builder.write(&mut out, bytes.len() as u32);
        writer.write_all(&bytes)?;
        writer.finish()?;
    }
    cpio::newc::trailer(&mut out)?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_archive_lists_entries_with_modes() {
        let path = std::env::temp_dir().join(format!("migtrace-cpio-{}", std::process::id()));
        write_cpio(&path, vec![("bin", 0o040755, vec![]), ("init", 0o100755, b"#!/bin/sh\n".to_vec())]).expect("write");
        let bytes = fs::read(&path).expect("read");
        let mut reader = cpio::newc::Reader::new(&bytes[..]).expect("first entry");
        assert_eq!((reader.entry().name(), reader.entry().mode()), ("bin", 0o040755));
        reader = cpio::newc::Reader::new(reader.finish().expect("next")).expect("second entry");
        assert_eq!((reader.entry().name(), reader.entry().file_size()), ("init", 10));
        reader = cpio::newc::Reader::new(reader.finish().expect("next")).expect("trailer");
        assert!(reader.entry().is_trailer());
        fs::remove_file(&path).expect("cleanup");
    }

    #[test]
    fn static_elf_detection() {
        // Our own test binary is dynamically linked.
        let exe = fs::read(std::env::current_exe().expect("exe")).expect("read exe");
        assert!(!is_static_elf(&exe));
        assert!(!is_static_elf(b"not an elf"));
    }
}
