//! migtrace's minimal guest (`guest/minimal/guest.S`): a bare-metal PVH kernel that
//! dirties its working set in the paper's cyclic pattern, checks it, and talks over the
//! serial port. It runs under KVM where a Linux guest cannot (`kvm_pvm` runs only a
//! guest that never enables interrupts and never faults), and has no network.
//!
//! Its serial port is a unix socket of ours: a thread stamps the guest's heartbeat
//! bytes as they arrive (the guest-progress gap of a migration) and writes the text to
//! the console file; memory checks are asked for over the same socket.

use std::{
    collections::VecDeque,
    fs, io,
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::{Digest as _, Sha256};
use workloads::{spec::Spec, verify::MemoryCheck};

use crate::clock::monotonic_ns;

/// The guest ELF assembled by `cargo xtask build`; empty when built without.
static MINIMAL_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/minimal-guest.elf"));

/// Every line the guest writes starts with this; a JSON object follows.
pub const LINE_PREFIX: &str = crate::hypervisor::console::MINIMAL_GUEST_LINE;
/// The heartbeat byte: stamped and stripped by the host, never part of a line's text.
pub const HEARTBEAT: u8 = 0x06;
/// Heartbeat interval the lab asks for: the resolution of the guest-progress gap.
pub const HEARTBEAT_US: u32 = 1000;
/// Where the working set starts in guest-physical memory (the guest runs with paging
/// off): above the firmware and the guest's own image at 1 MiB.
pub const WSET_BASE_MIB: u64 = 4;
/// RAM kept free above the working set (firmware tables at the top of RAM).
const RAM_HEADROOM_MIB: u64 = 4;
/// Largest guest RAM: with paging off, the working set must stay below QEMU pc's PCI hole.
pub const MAX_VMSIZE_MIB: u32 = 3072;
/// Heartbeat stamps kept per QEMU: 17 minutes at 1 kHz.
const MAX_STAMPS: usize = 1 << 20;
/// Time per page the guest's check takes at worst (every instruction emulated under
/// kvm_pvm, on a busy host), on top of the caller's timeout.
const CHECK_NS_PER_PAGE: u64 = 200_000;

#[derive(Debug, thiserror::Error)]
pub enum MinimalError {
    #[error("this migtrace binary was built without the minimal guest: build it with `cargo xtask build`")]
    NotBuilt,
    #[error("writing the minimal guest to {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the minimal guest cannot run this machine and workload: {0}")]
    Unsupported(String),
}

/// The guest ELF on disk (cached by content), written from this binary if needed.
pub fn elf() -> Result<PathBuf, MinimalError> {
    if MINIMAL_GUEST.is_empty() {
        return Err(MinimalError::NotBuilt);
    }
    let digest: String = Sha256::digest(MINIMAL_GUEST).iter().take(8).map(|b| format!("{b:02x}")).collect();
    let dir = migtrace_common::host::kernel::cache_dir().join("minimal-guest");
    let path = dir.join(format!("{digest}.elf"));
    if fs::read(&path).is_ok_and(|b| b == MINIMAL_GUEST) {
        return Ok(path);
    }
    let werr = |source| MinimalError::Write { path: path.clone(), source };
    fs::create_dir_all(&dir).map_err(werr)?;
    // Write aside and rename: a concurrent lab never boots a half-written guest.
    let partial = dir.join(format!("{digest}.elf.{}.partial", std::process::id()));
    fs::write(&partial, MINIMAL_GUEST).map_err(werr)?;
    fs::rename(&partial, &path).map_err(werr)?;
    Ok(path)
}

/// Whether the minimal guest can run `workload` in `vmsize_mib` of RAM on `vcpus`.
pub fn validate(workload: &Spec, vmsize_mib: u32, vcpus: u32) -> Result<(), MinimalError> {
    let no = |why: String| Err(MinimalError::Unsupported(why));
    if workload.cpu.is_some() {
        return no(format!("workload {workload}: it has no CPU burner (load, cpus); it is one busy loop already"));
    }
    if vcpus != 1 {
        return no(format!("--vcpus {vcpus}: it runs on one vCPU"));
    }
    if vmsize_mib > MAX_VMSIZE_MIB {
        return no(format!("--vmsize {vmsize_mib}: at most {MAX_VMSIZE_MIB} MiB (it runs with paging off)"));
    }
    let wset_mib = workload.wset.unwrap_or(0).div_ceil(1 << 20);
    let needed = wset_mib + WSET_BASE_MIB + RAM_HEADROOM_MIB;
    if needed > vmsize_mib as u64 {
        return no(format!(
            "wset={wset_mib} MiB needs at least {needed} MiB of guest RAM (it starts at {WSET_BASE_MIB} MiB, \
             {RAM_HEADROOM_MIB} MiB stay free above it): lower wset or raise --vmsize"
        ));
    }
    Ok(())
}

/// The guest's command line for `workload`: integers only (the guest parses them).
pub fn cmdline(workload: &Spec) -> String {
    let mut parts = Vec::new();
    if let Some(w) = workload.wset {
        parts.push(format!("wset={}K", w >> 10));
    }
    if let Some(d) = &workload.dirty {
        parts.push(format!("period_us={}", d.period.as_micros().max(1)));
        let bpc = d.bpc();
        if (bpc - bpc.round()).abs() < 1e-9 {
            parts.push(format!("bpc={}", bpc.round()));
        } else {
            // The guest spreads a rate over its cycles exactly; it takes whole pages/s.
            parts.push(format!("rate={}", d.rate.round()));
        }
        parts.push(format!("fill={}", d.fill.round()));
    }
    parts.push(format!("hb_us={HEARTBEAT_US}"));
    parts.join(" ")
}

/// The guest's first line: what it runs, and its clock.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GuestStart {
    pub wset_pages: u64,
    pub region_address: u64,
    pub period_us: u64,
    pub bpc: u64,
    pub rate: u64,
    pub fill: u64,
    pub fill_bytes: u64,
    pub heartbeat_us: u64,
    pub tsc_khz: u64,
    /// `pit` (calibrated at boot) or `cmdline`.
    pub tsc_from: String,
    /// Spread of the calibration runs, ppm of the shortest (the one taken).
    pub calibration_spread_ppm: u64,
    pub init_ms: u64,
}

/// The guest's progress line, once a second.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GuestProgress {
    /// Guest time since its main loop started (TSC).
    pub ms: u64,
    pub pass: u64,
    pub writes: u64,
    /// Pages written per second since the previous progress line.
    pub rate: u64,
    pub cycles: u64,
    /// Times the schedule restarted because the guest fell far behind it.
    pub resyncs: u64,
    pub stale_on_write: u64,
    pub heartbeats: u64,
}

/// The event of a guest line (`start`, `progress`, `check`, `bad-page`, `error`), and
/// the line decoded as `T` if it is one of those.
pub fn parse_line<T: DeserializeOwned>(line: &str, event: &str) -> Option<T> {
    let json = line.trim().strip_prefix(LINE_PREFIX)?;
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    if value["event"].as_str()? != event {
        return None;
    }
    serde_json::from_value(value).ok()
}

/// The error a guest reported before it stopped, if it did.
pub fn error_message(line: &str) -> Option<String> {
    let json = line.trim().strip_prefix(LINE_PREFIX)?;
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    (value["event"].as_str()? == "error").then(|| value["message"].as_str().unwrap_or("unknown error").to_owned())
}

/// One QEMU's serial link to the guest.
pub struct Console {
    requests: Mutex<UnixStream>,
    heartbeats: Arc<Mutex<VecDeque<u64>>>,
    console: PathBuf,
}

impl Console {
    /// Serves QEMU's serial socket `stream`: text goes to `console` (created or
    /// appended to), heartbeat bytes are stamped (CLOCK_MONOTONIC) and dropped. The
    /// thread ends when QEMU closes its end.
    pub fn serve(stream: UnixStream, console: &Path) -> io::Result<Self> {
        let mut file = crate::sys::private::append(console)?;
        let mut reader = stream.try_clone()?;
        let heartbeats = Arc::new(Mutex::new(VecDeque::new()));
        let stamps = heartbeats.clone();
        std::thread::Builder::new().name("migtrace-serial".into()).spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                // Stamped as soon as the read returns: bytes that arrived together (we
                // were late) share a stamp.
                let now = monotonic_ns();
                let beats = buf[..n].iter().filter(|&&b| b == HEARTBEAT).count();
                if beats > 0 {
                    let mut s = stamps.lock().unwrap_or_else(|p| p.into_inner());
                    s.extend(std::iter::repeat_n(now, beats));
                    let excess = s.len().saturating_sub(MAX_STAMPS);
                    s.drain(..excess);
                }
                let text: Vec<u8> = buf[..n].iter().copied().filter(|&b| b != HEARTBEAT).collect();
                if !text.is_empty() && file.write_all(&text).is_err() {
                    break;
                }
            }
        })?;
        Ok(Self { requests: Mutex::new(stream), heartbeats, console: console.to_owned() })
    }

    /// Heartbeat stamps at or after `since_ns`, in order.
    pub fn heartbeats_since(&self, since_ns: u64) -> Vec<u64> {
        let s = self.heartbeats.lock().unwrap_or_else(|p| p.into_inner());
        let start = s.partition_point(|&t| t < since_ns);
        s.range(start..).copied().collect()
    }

    /// Asks the guest to check its whole working set and waits for the answer, up to
    /// `timeout` plus the time the check of `pages` pages may take.
    pub async fn memory_check(&self, pages: u64, timeout: Duration) -> Result<MemoryCheck, String> {
        let nonce = (monotonic_ns() % 1_000_000_000) as u32;
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_all(format!("C{nonce}\n").as_bytes())
            .map_err(|e| format!("sending the check request on the serial port: {e}"))?;
        let needle = format!("\"event\":\"check\",\"nonce\":{nonce},");
        let deadline = tokio::time::Instant::now() + timeout + Duration::from_nanos(pages * CHECK_NS_PER_PAGE);
        loop {
            let text = fs::read_to_string(&self.console).unwrap_or_default();
            // Only whole lines: the guest may still be printing the last one.
            let complete = text.rsplit_once('\n').map_or("", |(done, _)| done);
            if let Some(line) = complete.lines().find(|l| l.contains(&needle)) {
                return parse_line::<MemoryCheck>(line, "check")
                    .ok_or_else(|| format!("unexpected check answer from the minimal guest: {line}"));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "the minimal guest did not answer the check request (nonce {nonce}) in time (guest hung?)"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_carry_the_pattern_in_whole_numbers() {
        let spec = |s| Spec::parse(s).expect("spec");
        assert_eq!(cmdline(&spec("idle")), "hb_us=1000");
        assert_eq!(cmdline(&spec("wset=64M,rate=2000")), "wset=65536K period_us=10000 bpc=20 fill=100 hb_us=1000");
        assert_eq!(
            cmdline(&spec("wset=32M,rate=1234.5,fill=1")),
            "wset=32768K period_us=10000 rate=1235 fill=1 hb_us=1000"
        );
        assert_eq!(
            cmdline(&spec("wset=8M,period=5ms,bpc=3,fill=50")),
            "wset=8192K period_us=5000 bpc=3 fill=50 hb_us=1000"
        );
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        let spec = |s| Spec::parse(s).expect("spec");
        assert!(validate(&spec("wset=64M,rate=2000"), 128, 1).is_ok());
        let err = |s, vm, cpus| validate(&spec(s), vm, cpus).expect_err(s).to_string();
        assert!(err("load=30", 128, 1).contains("no CPU burner"));
        assert!(err("idle", 128, 2).contains("one vCPU"));
        assert!(err("wset=124M,rate=10", 128, 1).contains("at least 132 MiB"));
        assert!(err("idle", 4096, 1).contains("at most 3072 MiB"));
    }

    #[test]
    fn reads_its_lines() {
        // Lines of the guest under kvm_pvm (QEMU 7.2).
        let start = r#"migtrace-guest: {"event":"start","wset_pages":4096,"region_address":4194304,"period_us":10000,"bpc":0,"rate":2000,"fill":1,"fill_bytes":40,"heartbeat_us":1000,"tsc_khz":2445894,"tsc_from":"pit","calibration_spread_ppm":289,"init_ms":50}"#;
        let s: GuestStart = parse_line(start, "start").expect("start line");
        assert_eq!((s.wset_pages, s.tsc_khz, s.tsc_from.as_str()), (4096, 2445894, "pit"));
        assert!(parse_line::<GuestStart>(start, "progress").is_none());
        let check = r#"migtrace-guest: {"event":"check","nonce":4242,"pages_checked":8192,"mismatches":1,"mismatches_on_write":0,"writes":51000,"checks":1,"check_ms":331,"rate_since_last_check":12301,"region_address":4194304,"first_bad_page":{"page":7,"address":4222976,"expected_generation":7,"found_index":7,"found_generation":6}}"#;
        let c: MemoryCheck = parse_line(check, "check").expect("check line");
        assert_eq!((c.pages_checked, c.mismatches, c.writes), (8192, 1, 51000));
        let bad = c.first_bad_page.expect("bad page");
        assert_eq!((bad.address, bad.expected_generation, bad.found_generation), (0x407000, 7, 6));
        let error = r#"migtrace-guest: {"event":"error","message":"give bpc or rate, not both"}"#;
        assert_eq!(error_message(error).as_deref(), Some("give bpc or rate, not both"));
        assert_eq!(error_message(start), None);
    }

    #[test]
    fn the_console_stamps_heartbeats_and_keeps_the_text() {
        let dir = std::env::temp_dir().join(format!("migtrace-console-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("guest.console");
        let (mut qemu, ours) = UnixStream::pair().expect("socket pair");
        let before = monotonic_ns();
        let console = Console::serve(ours, &file).expect("serve");
        qemu.write_all(b"\x06migtrace-\x06guest: hello\n\x06").expect("write");
        drop(qemu);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while console.heartbeats_since(0).len() < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let beats = console.heartbeats_since(before);
        assert_eq!(beats.len(), 3);
        assert!(beats.windows(2).all(|w| w[0] <= w[1]));
        assert!(console.heartbeats_since(monotonic_ns() + 1).is_empty());
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(fs::read_to_string(&file).expect("console"), "migtrace-guest: hello\n");
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
