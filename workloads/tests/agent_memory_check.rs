//! The guest agent's memory check end to end, on the host: the agent runs the paper's
//! dirty-pages generator, answers a check request over UDP, and finds a page of its
//! working set that we corrupt behind its back through /proc/<pid>/mem, the way a
//! migration that loses a dirty page leaves a stale page on the destination.

use std::{
    io::{Seek as _, SeekFrom, Write as _},
    net::UdpSocket,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use workloads::verify::{CHECK_REQUEST, HEADER_BYTES, MemoryCheck};

/// Ends the agent (it never exits by itself) even when the test fails.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn check(socket: &UdpSocket, port: u16, nonce: &str) -> MemoryCheck {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 64 * 1024];
    while Instant::now() < deadline {
        socket.send_to(format!("{CHECK_REQUEST}{nonce}").as_bytes(), ("127.0.0.1", port)).expect("send");
        let Ok((n, _)) = socket.recv_from(&mut buf) else { continue };
        let reply: serde_json::Value = serde_json::from_slice(&buf[..n]).expect("JSON reply");
        if reply["nonce"] == nonce {
            return serde_json::from_value(reply["memory_check"].clone()).expect("a memory check");
        }
    }
    panic!("the agent did not answer within 10 s");
}

#[test]
#[ignore = "needs root: the agent mlocks its working set (run `cargo xtask test`)"]
fn the_agent_finds_a_page_corrupted_behind_its_back() {
    let dir = std::env::temp_dir().join(format!("migtrace-agent-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cmdline = dir.join("cmdline");
    // 1024 pages at 100 pages/s: the writer needs 10 s per pass, so a page far ahead of
    // it stays corrupted until the check.
    std::fs::write(&cmdline, "console=ttyS0 migtrace.workload=wset=4M,rate=100\n").expect("cmdline");
    let port = 17077 + (std::process::id() % 1000) as u16;
    let agent = Agent(
        Command::new(env!("CARGO_BIN_EXE_workloads"))
            .args(["agent", "--cmdline"])
            .arg(&cmdline)
            .args(["--check-port", &port.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .expect("start the agent"),
    );
    let socket = UdpSocket::bind(("127.0.0.1", 0)).expect("socket");
    socket.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");

    let clean = check(&socket, port, "1");
    assert_eq!((clean.pages_checked, clean.mismatches, clean.mismatches_on_write), (1024, 0, 0), "{clean:?}");
    assert!(clean.region_address != 0 && clean.checks == 1);

    // Half a pass (5 s) ahead of the writer, overwrite a page's header.
    let victim = (clean.writes + 512) % 1024;
    let mut mem = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{}/mem", agent.0.id()))
        .expect("open the agent's memory");
    mem.seek(SeekFrom::Start(clean.region_address + victim * 4096)).expect("seek");
    mem.write_all(&[0xa5; HEADER_BYTES]).expect("corrupt one page");
    drop(mem);

    let found = check(&socket, port, "2");
    assert_eq!((found.mismatches, found.mismatches_on_write), (1, 0), "{found:?}");
    let bad = found.first_bad_page.expect("the bad page is named");
    assert_eq!(bad.page, victim);
    assert_eq!(bad.address, clean.region_address + victim * 4096);
    assert_eq!(bad.found_index, u64::from_le_bytes([0xa5; 8]));
    assert_eq!(found.checks, 2);
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}
