//! Root, QEMU (TCG here), eBPF: the lab's hosts are joined by a shaped link. The
//! stop-and-copy runs at the link's rate, the destination's announce moves the guest's
//! MAC in the switch, a delay is netem's or refused, and nothing of the topology stays
//! behind. Run with `cargo xtask test`.

use std::{process::Command, time::Duration};

use migtrace::{
    hypervisor::{
        HostPair, MigrationParams, Status,
        link::{LinkConfig, LinkRate},
    },
    lab::{
        Lab, LabConfig,
        netns::{self, GUEST_MAC, GuestNet, LINK_IF, LabNet, SWITCH_PORTS, TAPS},
    },
    measure::session::{MeasureOptions, Session},
};
use workloads::spec::Spec;

/// Interfaces of the lab's kinds in the root namespace (there must be none).
fn lab_interfaces_in_root() -> Vec<String> {
    let out = Command::new("ip").args(["-j", "link", "show"]).output().expect("ip link");
    let links: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    links
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| [LINK_IF, "uplink", "client", "sw0"].contains(n) || n.starts_with("port-") || n.starts_with("tap-"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and QEMU: traced lab migrations over a shaped link (run `cargo xtask test`)"]
async fn a_shaped_link_shapes_the_stop_and_copy_and_the_announce_moves_the_guest_in_the_switch() {
    let rate = LinkRate::BitsPerSecond(100_000_000);
    // 16 MiB dirtied at 1,000 pages/s (4 MB/s) over 12.5 MB/s: pre-copy converges and
    // leaves a few MB for the stop-and-copy, a few hundred ms at this rate.
    let config = LabConfig {
        workload: Spec::parse("wset=16M,rate=1000").expect("spec"),
        link: LinkConfig { rate, delay_ms: None, shaper: String::new() },
        ..LabConfig::default()
    };
    let mut lab = Lab::up(config).await.expect("lab up");
    let id = lab.id.clone();
    assert!(lab.link().shaper.contains("tbf rate 100000000bit"), "{:?}", lab.link());
    let options = MeasureOptions { settle_max: Duration::from_secs(5), ..MeasureOptions::default() };
    let mut session = Session::start(lab.network(), options).expect("probes");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let params = MigrationParams { timeout_s: 120.0, ..MigrationParams::default() };
    for rep in 0..2 {
        let (_, dst_tap) = lab.endpoints();
        let r = session.migrate(&mut lab, &params, rep, "link").await.expect("measured migration");
        assert_eq!(r.outcome.status, Status::Completed, "{:?}", r.outcome.error);
        let link = r.params.link.as_ref().expect("params.link");
        assert_eq!(link.configured.as_ref().map(|c| c.rate), Some(rate));
        // Counted on the wire by the link's classifier, not taken from QEMU.
        assert_eq!(link.achieved.from, "link", "{:?}", link.achieved);
        let achieved = link.achieved.stop_and_copy_bps.expect("stop-and-copy rate");
        let downtime_bytes = r.outcome.stats.ram.as_ref().and_then(|x| x.downtime_bytes).expect("downtime-bytes");
        let wire = link.achieved.stop_and_copy_bytes.expect("wire bytes");
        eprintln!(
            "migration {rep}: stop-and-copy {:.1} Mbit/s over {:.1} ms ({wire} bytes on the wire, QEMU's \
             downtime-bytes {downtime_bytes}), migration {:.1} Mbit/s, link counted {:?} bytes",
            achieved / 1e6,
            link.achieved.stop_and_copy_ms.unwrap_or_default(),
            link.achieved.migration_bps.unwrap_or_default() / 1e6,
            link.achieved.link_tx_bytes
        );
        assert!((80e6..=120e6).contains(&achieved), "stop-and-copy at {:.1} Mbit/s, not 100 ± 20 %", achieved / 1e6);
        // After the stop the wire carries what QEMU sent then, and what was in flight.
        assert!(wire >= downtime_bytes, "{wire} bytes on the wire, QEMU sent {downtime_bytes}");
        let sent = r.outcome.stats.ram.as_ref().and_then(|x| x.transferred).expect("transferred");
        let counted = link.achieved.link_tx_bytes.expect("the link's counter");
        assert!(counted >= sent, "the link carried {counted} bytes, QEMU sent {sent}");
        // The announce moved the guest in the switch: frames for its MAC leave through the
        // destination host's port, and the first reply after the gap came from there.
        let dst_port = SWITCH_PORTS[usize::from(dst_tap == TAPS[1])];
        assert_eq!(netns::switch_port_of(&id, GUEST_MAC).as_deref(), Some(dst_port));
        let probe = r.probe.as_ref().expect("probe summary");
        assert_eq!(probe.first_host_after.as_deref(), Some(dst_tap.as_str()), "{probe:?}");
        assert!(r.downtime_ms.probe_gap.is_some(), "{:?}", r.missing);
        lab.prepare_next().await.expect("next destination");
    }
    session.stop().await.expect("stop probes");
    lab.down().await;
    assert!(netns::namespaces_of(&id).is_empty(), "namespaces left: {:?}", netns::namespaces_of(&id));
    assert!(
        lab_interfaces_in_root().is_empty(),
        "interfaces left in the root namespace: {:?}",
        lab_interfaces_in_root()
    );
}

#[test]
#[ignore = "needs root: builds a lab network (run `cargo xtask test`)"]
fn a_link_delay_is_netem_or_refused_with_the_reason() {
    let id = format!("dly{}", std::process::id() % 100_000);
    let link = LinkConfig { rate: LinkRate::BitsPerSecond(1_000_000_000), delay_ms: Some(1.0), shaper: String::new() };
    match LabNet::create(&id, GuestNet::QEMU_LAB, &link) {
        // A kernel with netem: the delay sits above the rate on both ends.
        Ok(net) => {
            for i in 0..2 {
                let out = Command::new("tc")
                    .args(["-n", &net.host_ns(i), "qdisc", "show", "dev", LINK_IF])
                    .output()
                    .expect("tc");
                let qdiscs = String::from_utf8_lossy(&out.stdout);
                assert!(qdiscs.contains("netem") && qdiscs.contains("delay 1ms") && qdiscs.contains("tbf"), "{qdiscs}");
            }
            assert!(net.link.shaper.starts_with("netem delay 1000us, tbf"), "{:?}", net.link);
        }
        // This machine's kernel: no netem, and the error says what it takes.
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains("netem") && e.contains("CONFIG_NET_SCH_NETEM") && !e.contains('\n'), "{e}");
        }
    }
    // Created or refused half-way: nothing stays.
    assert!(netns::namespaces_of(&id).is_empty(), "namespaces left: {:?}", netns::namespaces_of(&id));
}

#[test]
fn bad_rates_get_one_line_errors_naming_the_accepted_forms() {
    let dir = std::env::temp_dir().join(format!("migtrace-link-rates-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for rate in ["1gbps", "0", "-1mbit", "1e99bit"] {
        let spec = dir.join("spec.toml");
        std::fs::write(&spec, format!("name = \"r\"\nrepetitions = 1\n[factors]\nlink = [\"{rate}\"]\n"))
            .expect("spec");
        let runs = [
            vec!["migrate".to_owned(), "--lab".into(), "--link".into(), rate.into()],
            vec!["lab".into(), "up".into(), "--link".into(), rate.into()],
            vec!["run".into(), spec.display().to_string(), "--results".into(), dir.display().to_string()],
        ];
        for args in runs {
            let out = Command::new(env!("CARGO_BIN_EXE_migtrace")).args(&args).output().expect("migtrace");
            assert!(!out.status.success(), "{args:?} accepted {rate}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
            assert_eq!(errors.len(), 1, "{args:?}: {stderr}");
            for form in ["100mbit", "1gbit", "unlimited"] {
                assert!(errors[0].contains(form), "{args:?}: {}", errors[0]);
            }
        }
    }
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and QEMU 10.0 (cargo xtask setup caches it): lab migrations (run `cargo xtask test`)"]
async fn avail_switchover_bandwidth_reaches_qemu_10_and_is_refused_by_7_2() {
    use migtrace::{hypervisor::features::FeatureError, lab::LabError};
    let params =
        MigrationParams { avail_switchover_bandwidth: Some(50 << 20), timeout_s: 120.0, ..MigrationParams::default() };
    let config = LabConfig { qemu: Some("10.0".into()), ..LabConfig::default() };
    let mut lab = Lab::up(config).await.expect("lab up on QEMU 10.0");
    let o = lab.migrate(&params).await.expect("migration");
    assert_eq!(o.status, Status::Completed, "{:?}", o.error);
    // The source took it: QEMU's own view of its parameters.
    let set = lab.source.as_ref().expect("source").qmp.migrate_parameters().await.expect("query");
    assert_eq!(set["avail-switchover-bandwidth"].as_u64(), Some(50 << 20), "{set}");
    lab.down().await;

    let mut lab = Lab::up(LabConfig { qemu: Some("system".into()), ..LabConfig::default() }).await.expect("lab up");
    if lab.qemu_version.is_some_and(|v| v < (8, 2)) {
        match lab.migrate(&params).await {
            Err(LabError::Feature(FeatureError { version, .. })) => assert_eq!(version, lab.qemu_version),
            other => panic!("QEMU {:?} took avail-switchover-bandwidth: {other:?}", lab.qemu_version),
        }
    }
    lab.down().await;
}
