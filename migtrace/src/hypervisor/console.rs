//! What a guest's serial console says after a migration: a crash, a reboot, pages its
//! workload found stale. Both migtrace guests report on the console; any backend that
//! can read it (the lab, libvirt) uses this.

use super::GuestCheck;

/// Lines of migtrace's Linux guest agent start with this.
pub const AGENT_LINE: &str = "migtrace-agent: ";
/// Lines of migtrace's minimal guest start with this.
pub const MINIMAL_GUEST_LINE: &str = "migtrace-guest: ";

/// Reads a guest console for signs of a crash or a reboot.
pub fn check_console(bytes: &[u8]) -> GuestCheck {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    let crash_at = lines.iter().position(|l| {
        ["Kernel panic", "BUG: ", "Oops: ", "general protection fault", "watchdog: BUG"].iter().any(|m| l.contains(m))
    });
    // A new start line: the agent started again, or the minimal guest (a fault resets it).
    let rebooted = lines
        .iter()
        .any(|l| (l.starts_with(AGENT_LINE) || l.starts_with(MINIMAL_GUEST_LINE)) && l.contains(r#""event":"start""#));
    let console =
        crash_at.map(|i| lines[i..].iter().take(6).map(|l| l.trim().to_owned()).collect()).unwrap_or_default();
    // The agent's dirty-pages reports count pages found stale as they were overwritten
    // (since the agent started: before a reboot's new start line only).
    let before_reboot =
        lines.iter().position(|l| l.starts_with(AGENT_LINE) && l.contains(r#""event":"start""#)).unwrap_or(lines.len());
    let stale_writes = lines[..before_reboot]
        .iter()
        .filter_map(|l| l.strip_prefix(AGENT_LINE))
        .filter_map(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        .filter_map(|v| v["stale_on_write"].as_u64())
        .max();
    GuestCheck { crashed: crash_at.is_some(), rebooted, console, stale_writes, ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_a_panic_and_a_reboot() {
        // Excerpt of a destination console after a migration under TCG (QEMU 7.2).
        let console = b"[    6.301765] BUG: kernel NULL pointer dereference, address: 0000000000000001\n\
            [    6.304592] #PF: supervisor instruction fetch in kernel mode\n\
            [    6.313990] Kernel panic - not syncing: Fatal exception in interrupt\n\
            migtrace-guest: eth0 up with 10.77.0.2/24\n\
            migtrace-agent: {\"event\":\"start\",\"spec\":\"idle\"}\n";
        let c = check_console(console);
        assert!(c.crashed && c.rebooted);
        assert!(c.console[0].contains("BUG: kernel NULL pointer dereference"));
        let healthy = check_console(b"migtrace-agent: {\"gen\":\"dirty\",\"pages\":1,\"stale_on_write\":0}\n");
        assert!(healthy.healthy() && healthy.console.is_empty() && healthy.stale_writes == Some(0));
        // Lost writes the agent saw before the kernel went down, not those of a new boot.
        let stale = check_console(
            b"migtrace-agent: {\"gen\":\"dirty\",\"stale_on_write\":3}\n[ 9.1] BUG: unable to handle page fault\n\
              migtrace-agent: {\"event\":\"start\",\"spec\":\"idle\"}\nmigtrace-agent: {\"gen\":\"dirty\",\"stale_on_write\":0}\n",
        );
        assert_eq!(stale.stale_writes, Some(3));
        assert!(stale.corrupted() && stale.crashed && stale.rebooted);
        // The minimal guest's destination console: progress is fine, a start line is a reset.
        let progress = b"migtrace-guest: {\"event\":\"progress\",\"ms\":3017,\"pass\":5}\n";
        assert!(check_console(progress).healthy());
        let reset = b"migtrace-guest: {\"event\":\"start\",\"wset_pages\":4096}\n";
        assert!(check_console(reset).rebooted);
    }
}
