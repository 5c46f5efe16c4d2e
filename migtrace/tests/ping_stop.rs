//! The reference ping is stopped even when it does not stop at the first interrupt: a
//! `ping` of our own on PATH ignores the first SIGINT, as iputils ping 20221126 did once
//! in the soak (it then ran on for minutes and hung the run).

use std::{os::unix::fs::PermissionsExt as _, time::Duration};

use migtrace::measure::ping::Ping;

#[test]
fn a_ping_that_ignores_an_interrupt_is_asked_again() {
    let dir = std::env::temp_dir().join(format!("migtrace-ping-stop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let fake = dir.join("ping");
    std::fs::write(
        &fake,
        "#!/bin/sh\n\
         n=0\n\
         trap 'n=$((n+1)); if [ $n -ge 2 ]; then echo \"3 packets transmitted, 3 received, 0% packet loss, time 100ms\"; exit 0; fi' INT\n\
         echo \"[1700000000.000000] 64 bytes from 10.0.0.1: icmp_seq=1 ttl=64 time=0.100 ms\"\n\
         while :; do sleep 0.05; done\n",
    )
    .expect("fake ping");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("mode");
    // This test's process alone (a file of its own): its ping is the fake.
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
    // SAFETY: no other thread of this test binary reads the environment now.
    unsafe { std::env::set_var("PATH", path) };
    let ping = Ping::start(None, "10.0.0.1", Duration::from_millis(50));
    std::thread::sleep(Duration::from_millis(300));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(ping.stop());
    });
    let report = rx.recv_timeout(Duration::from_secs(20)).expect("ping stopped within 20 s (it hung on one interrupt)");
    assert_eq!((report.sent, report.received, report.error), (3, 3, None));
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
