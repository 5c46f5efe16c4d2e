//! The pre-copy model on real migrations: fitted and cross-validated on the recorded
//! validation experiment (`specs/model-validation.toml`, 48 lab migrations over the
//! lab's 1gbit link, QEMU 7.2 under TCG) and on its earlier run over an unshaped link,
//! its command line, and (root) a prediction for a running lab guest measured with
//! QEMU's dirty-rate calculation, then checked by migrating that guest.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use migtrace::{
    hypervisor::{HostPair, MigrationParams, Status, link::LinkRate},
    lab::{Lab, LabConfig},
    measure::record,
    model::{self, Manager, Measure, RateKind, Variant, dirty_rate, fit, validate},
};

/// The validation experiment over the lab's 1gbit link.
fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model-validation.jsonl")
}

/// The same design before the lab had a link: over an unshaped veth, at memory speed.
fn unshaped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model-validation-unshaped.jsonl")
}

fn observations_of(path: &Path) -> Vec<fit::Observation> {
    let records = record::read(path).expect("fixture");
    let (obs, skipped) = fit::observations(&records);
    assert!(skipped.is_empty(), "every recorded migration is usable: {skipped:?}");
    obs
}

fn observations() -> Vec<fit::Observation> {
    observations_of(&fixture())
}

/// The plot holds every held-out point of its panels.
fn plotted_whole(v: &validate::Validation) {
    let svg = model::plot::plot_svg(&v.points).expect("svg");
    let plotted = v.points.iter().filter(|p| model::plot::PANELS.contains(&p.measure)).count();
    assert_eq!(svg.matches("<circle").count(), plotted + 3 * 2, "points and legend marks");
}

#[test]
fn the_recorded_experiment_over_the_link_is_fitted_and_held_out_treatments_are_predicted() {
    let obs = observations();
    assert_eq!(obs.len(), 48);
    assert!(obs.iter().all(|o| o.vm.link == LinkRate::BitsPerSecond(1_000_000_000)));
    let p = fit::fit(&obs).expect("fit");
    // The link (125 MB/s) is below QEMU's cap (134 MB/s): it bounds the pre-copy, and
    // QEMU's cap bounds no migration here. The stop-and-copy runs at the link's rate,
    // and the dirty rate the workload achieved, which the guest's own memory check put
    // near its setting in these records.
    let link = p.link_efficiency.expect("link efficiency");
    assert!((0.85..1.0).contains(&link), "{link}");
    assert_eq!((p.bandwidth_efficiency, p.stop_copy_bandwidth), (None, None));
    let sc = p.stop_copy_link_efficiency.expect("stop-and-copy efficiency");
    assert!((0.85..1.05).contains(&sc), "{sc}");
    assert!((0.85..1.05).contains(&p.dirty_rate_efficiency), "{}", p.dirty_rate_efficiency);
    let v = validate::cross_validate(&obs).expect("cross-validation");
    assert_eq!(v.treatments, 12);
    let band = |variant, m| v.errors[&variant][&m].clone();
    eprint!("{}", validate::render(&v));
    // Measured on this machine (README): the simulation's held-out errors of QEMU's
    // downtime and the vCPU blackout are 7–9 % at the median and 24–26 % at p90, the
    // migration time's 7 %. Allow the fit some slack, not a broken model.
    for m in [Measure::QemuDowntime, Measure::Blackout, Measure::GuestDowntime] {
        let b = band(Variant::Simulation, m);
        assert!(b.median_ape < 15.0 && b.p90_ape < 35.0, "{m}: {b:?}");
    }
    assert!(band(Variant::Simulation, Measure::MigrationTime).median_ape < 12.0);
    // Rounds: the simulation follows QEMU's checks, the closed form cannot.
    assert!(
        band(Variant::Simulation, Measure::Rounds).median_ape < band(Variant::ClosedForm, Measure::Rounds).median_ape
    );
    assert_eq!(v.preferred, Variant::Simulation);
    assert!(v.chosen.contains_key(&Measure::QemuDowntime));
    plotted_whole(&v);
}

/// A model fitted on records without a link (the lab before it had one) still fits and
/// predicts as it did: QEMU's cap bounds the pre-copy, the stop-and-copy runs at memory
/// speed.
#[test]
fn the_recorded_experiment_over_an_unshaped_link_is_fitted_as_before() {
    let obs = observations_of(&unshaped());
    assert_eq!(obs.len(), 48);
    assert!(obs.iter().all(|o| o.vm.link == LinkRate::Unlimited));
    let p = fit::fit(&obs).expect("fit");
    let e = p.bandwidth_efficiency.expect("bandwidth efficiency");
    assert!((1.0..1.15).contains(&e), "{e}");
    assert!(p.stop_copy_bandwidth.expect("memory speed") > 134e6, "the stop-and-copy is not rate-limited");
    assert_eq!((p.link_efficiency, p.stop_copy_link_efficiency), (None, None));
    assert!((0.85..1.05).contains(&p.dirty_rate_efficiency), "{}", p.dirty_rate_efficiency);
    let v = validate::cross_validate(&obs).expect("cross-validation");
    let band = |variant, m| v.errors[&variant][&m].clone();
    let noise = |m| v.noise_floor[&m].median_ape;
    eprint!("{}", validate::render(&v));
    // Measured here (README): the simulation's held-out median errors are 7 % for
    // migration time and 22 % for guest-observed downtime, the noise floor 6 % and 24 %.
    assert!(band(Variant::Simulation, Measure::MigrationTime).median_ape < 12.0);
    assert!(band(Variant::Simulation, Measure::GuestDowntime).median_ape < 1.5 * noise(Measure::GuestDowntime));
    assert!(band(Variant::ClosedForm, Measure::MigrationTime).median_ape < 15.0);
    assert_eq!(v.preferred, Variant::Simulation);
    plotted_whole(&v);
}

fn migtrace() -> Command {
    Command::new(env!("CARGO_BIN_EXE_migtrace"))
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("migtrace-model-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn fit_validate_and_predict_from_the_command_line() {
    let dir = temp_dir("cli");
    std::fs::copy(fixture(), dir.join("migrations.jsonl")).expect("copy");
    let out = migtrace().args(["model", "fit"]).arg(&dir).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("fitted on 48 migrations of 12 treatments"), "{text}");
    let m = model::Model::load(&dir).expect("model.json");
    assert_eq!(m.fitted_on.migrations, 48);
    assert!(m.errors.contains_key(&Variant::Simulation));

    let out = migtrace().args(["model", "validate"]).arg(&dir).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("noise floor"));
    assert!(dir.join("validation.json").exists() && dir.join("validation.svg").exists());

    let out = migtrace()
        .args(["predict", "--model"])
        .arg(&dir)
        .args(["--vmsize", "512", "--wset", "96", "--rate", "20000", "--json"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let p = &v["prediction"];
    assert_eq!(p["variant"], "simulation");
    assert!(p["converges"].as_bool().expect("converges"));
    // The treatment's own migrations took 3.7 to 4.6 s over the 1gbit link (the fit saw
    // them), which predict takes from the model when no --link is given.
    let t = p["migration_time_ms"].as_f64().expect("time");
    assert!((3000.0..5500.0).contains(&t), "{t}");
    assert_eq!(v["vm"]["link"], "1gbit");
    let interval = v["interval_80"]["guest_downtime_ms"].as_array().expect("interval");
    assert!(interval[0].as_f64() < p["guest_downtime_ms"].as_f64());
    let predict = |extra: &[&str]| {
        let out = migtrace()
            .args(["predict", "--model"])
            .arg(&dir)
            .args(["--vmsize", "512", "--wset", "32", "--rate", "2000", "--json"])
            .args(extra)
            .output()
            .expect("run");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // A tenth of the link: a tenth of the pre-copy bandwidth and of the stop threshold
    // (QEMU's estimate of it × the downtime limit), a longer migration.
    let (ok, gbit, err) = predict(&[]);
    assert!(ok, "{err}");
    let (ok, slow, err) = predict(&["--link", "100mbit"]);
    assert!(ok, "{err}");
    let field = |text: &str, f: &str| {
        serde_json::from_str::<serde_json::Value>(text).expect("json")["prediction"][f].as_f64().expect(f)
    };
    assert!(field(&slow, "bandwidth_bytes_per_s") * 9.0 < field(&gbit, "bandwidth_bytes_per_s"));
    assert!(field(&slow, "threshold_bytes") * 9.0 < field(&gbit, "threshold_bytes"));
    assert!(field(&slow, "migration_time_ms") > 5.0 * field(&gbit, "migration_time_ms"));
    // No unshaped migration was fitted: that is refused in one line naming the fix.
    let (ok, _, err) = predict(&["--link", "unlimited"]);
    assert!(!ok && err.contains("shaped links only") && err.trim().lines().count() == 1, "{err}");
    let (ok, _, err) = predict(&["--link", "1gbps"]);
    assert!(!ok && err.contains("bytes per second"), "{err}");

    // A link the guest outruns: said so, not a number presented as a prediction.
    let out = migtrace()
        .args(["predict", "--model"])
        .arg(&dir)
        .args(["--vmsize", "512", "--wset", "256", "--rate", "60000"])
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&out.stdout).contains("DOES NOT CONVERGE"));
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// A cross-validation that fails for a reason of its own says that reason: the model is
/// written (without intervals) and the command fails; it is not "one treatment only".
#[test]
fn a_failed_cross_validation_is_said_as_it_is() {
    let dir = temp_dir("fold");
    let records = std::fs::read_to_string(fixture()).expect("fixture");
    let mut lines: Vec<serde_json::Value> = records.lines().map(|l| serde_json::from_str(l).expect("record")).collect();
    // Only the first treatment keeps QEMU's byte counts: a fold without it has no
    // pre-copy bandwidth to fit.
    let first = lines[0]["treatment"].clone();
    for r in lines.iter_mut().filter(|r| r["treatment"] != first) {
        r["stats"]["ram"] = serde_json::Value::Null;
    }
    let text: String = lines.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(dir.join("migrations.jsonl"), text).expect("write");
    let out = migtrace().args(["model", "fit"]).arg(&dir).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("cross-validation failed") && err.contains("pre-copy"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("one treatment only"));
    assert!(model::Model::load(&dir).expect("model.json").errors.is_empty());
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// An experiment directory with a validation: `report --html` shows the model's
/// section, its error table (the figures of validation.json) and the plot with every
/// held-out point of its panels; without one the page has no such section.
#[test]
fn the_html_report_shows_the_validation_of_its_directory() {
    let root = temp_dir("report");
    let dir = root.join("model-validation");
    std::fs::create_dir_all(&dir).expect("dir");
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs/model-validation.toml");
    std::fs::copy(&spec, dir.join("spec.toml")).expect("spec");
    std::fs::copy(fixture(), dir.join("migrations.jsonl")).expect("copy");
    let report = |dir: &Path| {
        let out = migtrace().arg("report").arg(dir).arg("--html").output().expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::read_to_string(dir.join("report.html")).expect("report.html")
    };
    let before = report(&dir);
    assert!(!before.contains("id=\"model\""), "no validation, no model section");

    let out = migtrace().args(["model", "validate"]).arg(&dir).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--html` adds its plot"), "the stale page is pointed out");
    let v: validate::Validation =
        serde_json::from_str(&std::fs::read_to_string(dir.join("validation.json")).expect("json")).expect("parse");
    let html = report(&dir);
    assert!(html.contains("<a href=\"#model\">"), "linked from the navigation");
    let opt = roxmltree::ParsingOptions { allow_dtd: true, ..roxmltree::ParsingOptions::default() };
    roxmltree::Document::parse_with_options(&html, opt).expect("report.html is well-formed");
    let section = &html[html.find("<section id=\"model\">").expect("model section")..];
    let section = &section[..section.find("</section>").expect("section end")];
    // The error table holds validation.json's figures.
    let sim = &v.errors[&Variant::Simulation][&Measure::MigrationTime];
    let row = format!("<td>{}</td><td>{}</td>", Measure::MigrationTime.label(), sim.n);
    let at = section.find(&row).unwrap_or_else(|| panic!("no row {row} in {section}"));
    let cells = &section[at..section[at..].find("</tr>").map_or(section.len(), |e| at + e)];
    assert!(cells.contains(&format!("<td>{:.1}</td>", sim.median_ape)), "{cells}");
    assert!(cells.contains(&format!("<td>{:.1}</td>", v.noise_floor[&Measure::MigrationTime].median_ape)), "{cells}");
    // The plot: inline and under plots/, a circle per held-out point of its panels and
    // one per legend entry.
    let plotted = v.points.iter().filter(|p| model::plot::PANELS.contains(&p.measure)).count();
    let figure = &section[section.find("<figure id=\"model-validation\">").expect("figure")..];
    let figure = &figure[..figure.find("</figure>").expect("figure end")];
    assert_eq!(figure.matches("<circle").count(), plotted + 3 * 2);
    assert_eq!(figure.matches("<tr><td>").count(), plotted, "the figure's data table: a row per point");
    let svg = std::fs::read_to_string(dir.join("plots").join(migtrace::report::html::MODEL_FIGURE)).expect("svg");
    assert_eq!(svg.matches("<circle").count(), plotted + 3 * 2);

    // A validation.json that is not one: the report is written without it.
    std::fs::write(dir.join("validation.json"), "{}").expect("write");
    let out = migtrace().arg("report").arg(&dir).arg("--html").output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a model validation"));
    let html = std::fs::read_to_string(dir.join("report.html")).expect("report.html");
    assert!(!html.contains("id=\"model\""));
    std::fs::remove_dir_all(&root).expect("cleanup");
}

#[test]
fn bad_input_names_the_fix() {
    let dir = temp_dir("bad");
    let run = |args: &[&str]| {
        let out = migtrace().args(args).output().expect("run");
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let missing = dir.join("nothing-here");
    let err = run(&["predict", "--model", missing.to_str().expect("path"), "--vmsize", "256", "--rate", "1000"]);
    assert!(err.contains("migtrace model fit"), "{err}");
    std::fs::write(dir.join("model.json"), "{\"schema\": 1, \"params\": 3}").expect("write");
    let err = run(&["predict", "--model", dir.to_str().expect("path"), "--vmsize", "256", "--rate", "1000"]);
    assert!(err.contains("not a migtrace model") && err.contains("model fit"), "{err}");
    // A working set in bytes where MiB are meant is larger than the VM.
    std::fs::copy(fixture(), dir.join("migrations.jsonl")).expect("copy");
    assert!(migtrace().args(["model", "fit"]).arg(&dir).output().expect("run").status.success());
    let d = dir.to_str().expect("path");
    let err = run(&["predict", "--model", d, "--vmsize", "256", "--wset", "100663296", "--rate", "1000"]);
    assert!(err.contains("--wset 64, MiB"), "{err}");
    let err = run(&["predict", "--model", d, "--vmsize", "256", "--rate=-5"]);
    assert!(err.contains("0 or more pages/s"), "{err}");
    let err = run(&["predict", "--model", d, "--lab", "nosuchlab"]);
    assert!(err.contains("no lab nosuchlab"), "{err}");
    let err = run(&["model", "fit", d, "--out", "/nonexistent-dir/model.json"]);
    assert!(err.contains("/nonexistent-dir/model.json"), "{err}");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// A guest dirtying 96 MiB at 10,000 pages/s: measured while it runs, predicted, then
/// migrated and compared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and QEMU: starts a lab (run `cargo xtask test`)"]
async fn a_running_lab_guest_is_measured_predicted_and_then_migrated() {
    let workload = workloads::spec::Spec::parse("wset=96M,rate=10000").expect("spec");
    let mut lab = Lab::up(LabConfig { workload, ..LabConfig::default() }).await.expect("lab up");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let qmp = &lab.source.as_ref().expect("source").qmp;
    let ram = dirty_rate::qmp_ram_bytes(qmp).await.expect("RAM");
    let samples = dirty_rate::measure_qmp(qmp, &[1, 3]).await.expect("dirty rate");
    let est = dirty_rate::estimate(samples, ram).expect("estimate");
    eprintln!("measured: {est:?}");
    // The workload's rate and working set, plus the kernel's own pages; QEMU reports
    // whole MiB/s of sampled pages.
    assert!((8_500.0..12_000.0).contains(&est.rate_pps), "{}", est.rate_pps);
    assert!(est.wset_bounded, "3 s at 10,000 pages/s dirty all of 96 MiB");
    assert!((90.0..115.0).contains(&(est.wset_bytes / 1048576.0)), "{}", est.wset_bytes);

    let obs = observations();
    let params = fit::fit(&obs).expect("fit");
    let vm = model::Vm {
        vmsize_bytes: ram,
        wset_bytes: est.wset_bytes,
        rate_pps: est.rate_pps,
        rate_kind: RateKind::Measured,
        max_bandwidth: None,
        downtime_limit_ms: None,
        manager: Manager::Qemu,
        // The lab's link: the default one, which the fixture was recorded over too.
        link: lab.config.link.rate,
    };
    let p = model::predict(&params, &vm, Variant::Simulation).expect("prediction");
    eprintln!(
        "predicted: {:.0} ms, {} rounds, QEMU downtime {:.1} ms",
        p.migration_time_ms, p.rounds, p.qemu_downtime_ms
    );

    let mut times = Vec::new();
    for _ in 0..2 {
        let o = lab.migrate(&MigrationParams { timeout_s: 60.0, ..MigrationParams::default() }).await.expect("migrate");
        assert_eq!(o.status, Status::Completed, "{:?}", o.error);
        let t = o.command_ms().expect("time");
        eprintln!(
            "migrated: {t:.0} ms, {} rounds, QEMU downtime {:?} ms",
            o.stats.ram.as_ref().and_then(|r| r.dirty_sync_count).unwrap_or(0),
            o.stats.downtime
        );
        times.push(t);
        lab.prepare_next().await.expect("next");
    }
    lab.down().await;
    // Held-out errors of migration time were within 21 % for 90 % of the validation's
    // migrations; a busy host may add more, a broken measurement far more.
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let err = (p.migration_time_ms - mean).abs() / mean;
    assert!(err < 0.3, "predicted {:.0} ms, measured {mean:.0} ms", p.migration_time_ms);
}

/// `predict --lab` finds a running lab's QEMU through the registry and measures it
/// over the lab's spare QMP monitor while the lab holds its own.
#[test]
#[ignore = "needs root and QEMU: starts a lab (run `cargo xtask test`)"]
fn predict_measures_a_lab_started_by_lab_up() {
    let dir = temp_dir("lab");
    std::fs::copy(fixture(), dir.join("migrations.jsonl")).expect("copy");
    assert!(migtrace().args(["model", "fit"]).arg(&dir).output().expect("run").status.success());
    let mut up = migtrace()
        .args(["lab", "up", "--workload", "wset=32M,rate=5000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("lab up");
    // Stops the lab (its owner tears it down on SIGTERM) however the test ends.
    struct Stop(u32);
    impl Drop for Stop {
        fn drop(&mut self) {
            // SAFETY: signalling the child we started, by its pid.
            unsafe { libc::kill(self.0 as i32, libc::SIGTERM) };
        }
    }
    let _stop = Stop(up.id());
    // Its output is read to the end (a closed pipe would fail its next line).
    let stdout = up.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("lab ")
                && line.contains(" up in ")
            {
                let _ = tx.send(rest.split_whitespace().next().map(str::to_owned));
            }
        }
    });
    let id = rx.recv_timeout(Duration::from_secs(180)).ok().flatten().expect("lab id");
    // The workload first fills its working set at full speed: measure its steady rate.
    std::thread::sleep(Duration::from_secs(3));
    let out = migtrace()
        .args(["predict", "--model"])
        .arg(&dir)
        .args(["--lab", &id, "--calc-time", "1,2", "--json"])
        .output()
        .expect("predict");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let rate = v["vm"]["rate_pps"].as_f64().expect("rate");
    assert!((4_000.0..7_000.0).contains(&rate), "{v}");
    assert_eq!(v["vm"]["rate_kind"], "measured");
    assert!(v["prediction"]["migration_time_ms"].as_f64().expect("time") > 500.0);
    // The lab still runs: its own QMP connection was not disturbed.
    assert!(up.try_wait().expect("lab up").is_none(), "lab up exited");
    assert!(migtrace::lab::registry::list().iter().any(|s| s.id == id && s.source_qmp.is_some()));
    drop(_stop);
    let _ = up.wait();
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
