//! The HTML report and the Perfetto trace on data with known values: a synthetic
//! factorial experiment whose downtimes are chosen so every mean, confidence interval,
//! heatmap cell and histogram bucket can be worked out by hand; and the recorded lab
//! migration of the fixture (with its raw trace) as a Perfetto trace.
//!
//! The root-only tests render the page in headless Chromium (Debian's `chromium`),
//! and run a small real experiment end to end. Run them with `cargo xtask test`.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use migtrace::{
    experiment::{spec::ExperimentSpec, store},
    hypervisor::{Machine, Status},
    measure::record::{self, MigrationRecord},
    report::{
        html::{self, Experiment},
        perfetto,
    },
    stats,
};

const SPEC: &str = r#"name = "synthetic"
repetitions = 3
[factors]
vmsize = ["256M", "512M"]
wset = ["16M", "32M"]
rate = [0, 2000]
"#;

fn fixture() -> MigrationRecord {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tcg-dirty-2000.jsonl");
    record::read(Path::new(path)).expect("fixture").remove(0)
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("migtrace-report-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The treatment mean of the probe gap: 20 ms, +10 for vmsize 512, +20 for wset 32,
/// +40 for rate 2000. The three repetitions are mean − 1, mean, mean + 1 (SD 1).
fn treatment_mean(levels: &BTreeMap<String, String>) -> f64 {
    20.0 + if levels["vmsize"] == "512" { 10.0 } else { 0.0 }
        + if levels["wset"] == "32" { 20.0 } else { 0.0 }
        + if levels["rate"] == "2000" { 40.0 } else { 0.0 }
}

const STALLED: &str = "downtime_ms.probe_gap: the probe sender stalled 3.6 ms at the gap's edge";

/// 24 usable migrations (8 treatments × 3) with known probe gaps; the ping reads the
/// probe gap rounded down to its 50 ms interval, the vCPU blackout 0.6 × it, QEMU 0.5 ×
/// it. Plus, in the first treatment, a usable migration without a probe gap (its
/// sender stalled) and a failed one.
fn synthetic(spec: &ExperimentSpec) -> Vec<MigrationRecord> {
    let template = fixture();
    let machine = Machine {
        hypervisor: "qemu".into(),
        version: "7.2.22".into(),
        description: "QEMU emulator version 7.2.22 (synthetic)".into(),
        binary: "/usr/bin/qemu-system-x86_64".into(),
        accelerator: "tcg".into(),
        accelerator_reason: Some("no vmx/svm".into()),
        ram_bytes: 256 << 20,
        vcpus: 1,
        workarounds: vec![],
        host_kernel: "6.1.0-test".into(),
        guest: "linux".into(),
        dirty_ring: None,
    };
    let mut out = Vec::new();
    for (i, (name, levels)) in store::levels_of(spec).into_iter().enumerate() {
        let mean = treatment_mean(&levels);
        for rep in 0..3u32 {
            let gap = mean + rep as f64 - 1.0;
            let mut r = template.clone();
            r.treatment = name.clone();
            r.repetition = rep;
            r.machine = Some(machine.clone());
            r.trace = None;
            r.downtime_ms.probe_gap = Some(gap);
            r.downtime_ms.ping = Some((gap / 50.0).floor() * 50.0);
            r.downtime_ms.ping_max_gap = Some(gap + 25.0);
            r.downtime_ms.vcpu = Some(gap * 0.6);
            r.downtime_ms.reported = Some(gap * 0.5);
            r.migration_time_ms.command = Some(800.0 + gap);
            if let Some(p) = r.probe.as_mut() {
                p.gap_ms = Some(gap);
            }
            out.push(r);
        }
        if i == 0 {
            let mut stalled = out[0].clone();
            stalled.repetition = 3;
            stalled.downtime_ms.probe_gap = None;
            stalled.missing = vec![STALLED.into()];
            out.push(stalled);
            let mut failed = out[0].clone();
            failed.repetition = 4;
            failed.outcome.status = Status::Failed;
            failed.outcome.error = Some("synthetic failure".into());
            failed.downtime_ms.probe_gap = Some(5000.0);
            out.push(failed);
        }
    }
    out
}

struct Page {
    dir: PathBuf,
    html: String,
}

fn write_synthetic(tag: &str) -> Page {
    let spec = ExperimentSpec::parse(SPEC).expect("spec");
    let records = synthetic(&spec);
    let summary = stats::summarize(&records, &store::levels_of(&spec), &store::effect_design(&spec));
    let dir = temp_dir(tag);
    let e = Experiment {
        spec: &spec,
        spec_text: SPEC,
        treatments: store::levels_of(&spec).len(),
        effects: &store::effect_design(&spec),
        records: &records,
        summary: &summary,
        validation: None,
    };
    let written = html::write(&dir, &e).expect("report written");
    assert_eq!(written.html, dir.join("report.html"));
    let html = fs::read_to_string(&written.html).expect("report.html");
    Page { dir, html }
}

/// The synthetic experiment with one more migration of its first treatment whose guest
/// answered no probe before observation ended (an open gap of 5012 ms) and answered its
/// memory check after: censored, its probe gap a lower bound.
#[test]
fn a_censored_migration_shows_as_a_lower_bound_on_the_page() {
    let spec = ExperimentSpec::parse(SPEC).expect("spec");
    let mut records = synthetic(&spec);
    let mut late = records[0].clone();
    late.repetition = 5;
    late.downtime_ms.probe_gap = None;
    if let Some(p) = late.probe.as_mut() {
        p.gap_ms = None;
        p.open_gap_ms = Some(5012.0);
    }
    late.guest = Some(migtrace::hypervisor::GuestCheck {
        unreachable: true,
        memory_check: Some(Default::default()),
        ..Default::default()
    });
    records.push(late);
    let summary = stats::summarize(&records, &store::levels_of(&spec), &store::effect_design(&spec));
    let dir = temp_dir("censored");
    let e = Experiment {
        spec: &spec,
        spec_text: SPEC,
        treatments: store::levels_of(&spec).len(),
        effects: &store::effect_design(&spec),
        records: &records,
        summary: &summary,
        validation: None,
    };
    html::write(&dir, &e).expect("report written");
    let page = fs::read_to_string(dir.join("report.html")).expect("report.html");
    let doc = parse(&page);
    let counts = table(&doc, "counts");
    assert_eq!(row(&counts, &["usable"])[1], "25");
    assert!(counts.iter().any(|r| r[0].starts_with("censored") && r[1] == "1"), "{counts:?}");
    // Table II: 25 probe gaps, one of them ≥ 5012 ms: the mean is a lower bound, no SD.
    let t2 = table(&doc, "table2");
    let g = row(&t2, &["downtime.probe_gap"]);
    let mean = (24.0 * 55.0 + 5012.0) / 25.0;
    assert_eq!((g[1].as_str(), g[3].as_str(), g[7].as_str()), ("25 (1 ≥)", format!("≥ {mean:.2}").as_str(), "–"));
    // The first treatment's methods: 19, 20, 21 and the bound, marked.
    let methods = doc
        .descendants()
        .find(|n| n.has_tag_name("table") && n.attribute("id").is_some_and(|i| i.ends_with("-methods-data")))
        .expect("methods table");
    let methods = table(&doc, methods.attribute("id").expect("id"));
    let gap = row(&methods, &["downtime.probe_gap"]);
    assert_eq!((gap[1].as_str(), gap[3].as_str(), gap[6].as_str()), ("4 (1 ≥)", "–", "≥ 5012.00"));
    assert!(
        gap[7].ends_with("≥ 5012.00") && gap[8] == "1 missing (1× the probe sender stalled 3.6 ms at the gap's edge)",
        "{gap:?}"
    );
    // Its vCPU blackout is whole.
    assert_eq!(row(&methods, &["downtime.vcpu"])[1], "5");
    fs::remove_dir_all(&dir).expect("cleanup");
}

/// The page as XML: it is written well-formed (its `<!DOCTYPE html>` is a DTD to XML).
fn parse(html: &str) -> roxmltree::Document<'_> {
    let opt = roxmltree::ParsingOptions { allow_dtd: true, ..roxmltree::ParsingOptions::default() };
    roxmltree::Document::parse_with_options(html, opt).expect("report.html is well-formed")
}

/// The cells of the table with `id`, row by row.
fn table(doc: &roxmltree::Document<'_>, id: &str) -> Vec<Vec<String>> {
    let t = doc
        .descendants()
        .find(|n| n.has_tag_name("table") && n.attribute("id") == Some(id))
        .unwrap_or_else(|| panic!("no table {id}"));
    t.descendants()
        .filter(|n| n.has_tag_name("tr"))
        .filter(|tr| tr.children().any(|c| c.has_tag_name("td")))
        .map(|tr| {
            tr.children()
                .filter(|c| c.has_tag_name("td"))
                .map(|td| td.descendants().filter(|d| d.is_text()).filter_map(|d| d.text()).collect::<String>())
                .collect()
        })
        .collect()
}

fn row<'a>(rows: &'a [Vec<String>], first: &[&str]) -> &'a [String] {
    rows.iter()
        .find(|r| first.iter().enumerate().all(|(i, f)| r.get(i).map(String::as_str) == Some(*f)))
        .unwrap_or_else(|| panic!("no row {first:?} in {rows:?}"))
}

/// The figure whose caption starts with `caption`.
fn figure<'a>(doc: &'a roxmltree::Document<'a>, caption: &str) -> roxmltree::Node<'a, 'a> {
    doc.descendants()
        .filter(|n| n.has_tag_name("figure"))
        .find(|f| {
            f.descendants()
                .find(|c| c.has_tag_name("figcaption"))
                .and_then(|c| c.text())
                .is_some_and(|t| t.starts_with(caption))
        })
        .unwrap_or_else(|| panic!("no figure captioned {caption:?}"))
}

/// Student's t quantile for 97.5 % with 8 degrees of freedom (tables: 2.306004).
const T_8: f64 = 2.306_004_135;
/// … with 2 degrees of freedom (4.302653).
const T_2: f64 = 4.302_652_730;

#[test]
fn the_page_shows_hand_computed_numbers_of_a_synthetic_experiment() {
    let page = write_synthetic("synthetic");
    let doc = parse(&page.html);

    // Counts: 24 + 1 stalled (usable) + 1 failed.
    let counts = table(&doc, "counts");
    assert_eq!(row(&counts, &["planned"])[1], "24");
    assert_eq!(row(&counts, &["run"])[1], "26");
    assert_eq!(row(&counts, &["usable"])[1], "25");
    assert_eq!(row(&counts, &["failed (migration failed, or timed out in its switchover)"])[1], "1");
    let machine = table(&doc, "machine");
    assert_eq!(machine.len(), 1);
    assert!(machine[0][3].starts_with("tcg (no vmx/svm)"), "{:?}", machine[0]);
    assert_eq!(machine[0][4], "256");
    assert_eq!(machine[0][8], "26");

    // The single-variable plot of rate: rate=0 treatments have means 20, 30, 40, 50
    // (mean 35), rate=2000 60…90 (mean 75). Each treatment: n = 3, SD 1, so the
    // standard error of the mean of 4 means is √(4 · 1/3) / 4 = √(1/12), with
    // Welch–Satterthwaite df = (4/3)² / (4 · (1/3)² / 2) = 8.
    let half = T_8 * (1.0f64 / 12.0).sqrt();
    let effect = table(&doc, "effect-rate-downtime-data");
    let r0 = row(&effect, &["downtime.probe_gap", "0"]);
    assert_eq!(r0[2], "35.00");
    assert_eq!(r0[3], format!("{:.2} – {:.2}", 35.0 - half, 35.0 + half));
    assert_eq!(r0[3], "34.33 – 35.67");
    assert_eq!((r0[4].as_str(), r0[5].as_str()), ("12", "4"));
    let r2000 = row(&effect, &["downtime.probe_gap", "2000"]);
    assert_eq!((r2000[2].as_str(), r2000[3].as_str()), ("75.00", "74.33 – 75.67"));

    // Heatmap of the probe gap over rate × wset at vmsize=256: 20, 40, 60, 80.
    let fig = figure(&doc, "probe gap ms over rate × wset, vmsize=256");
    let id = fig.attribute("id").expect("figure id");
    let cells = table(&doc, &format!("{id}-data"));
    for (rate, wset, mean) in
        [("0", "16", "20.00"), ("0", "32", "40.00"), ("2000", "16", "60.00"), ("2000", "32", "80.00")]
    {
        let r = row(&cells, &[rate, wset]);
        assert_eq!((r[2].as_str(), r[3].as_str()), (mean, "3"), "cell rate={rate} wset={wset}");
    }
    // The drawn cells carry the same values (the inline SVG and plots/ alike).
    let svg_texts: Vec<&str> =
        fig.descendants().filter(|n| n.has_tag_name("text")).filter_map(|n| n.text()).map(str::trim).collect();
    for v in ["20.0", "40.0", "60.0", "80.0", "n=3"] {
        assert!(svg_texts.contains(&v), "{v} not drawn: {svg_texts:?}");
    }
    let file = fs::read_to_string(page.dir.join("plots").join(format!("{id}.svg"))).expect("heatmap svg");
    assert!(file.contains("80.0") && file.contains("n=3"));

    // The first treatment's methods: the probe gap of 3 migrations (19, 20, 21: CI
    // 20 ± t₂ · 1/√3), one usable migration without it, with its reason.
    let first = "vmsize=256,wset=16,rate=0";
    let methods = doc
        .descendants()
        .find(|n| n.has_tag_name("table") && n.attribute("id").is_some_and(|i| i.ends_with("-methods-data")))
        .expect("methods table");
    let methods = table(&doc, methods.attribute("id").expect("id"));
    let gap = row(&methods, &["downtime.probe_gap"]);
    let h = T_2 / 3f64.sqrt();
    assert_eq!(gap[1], "3");
    assert_eq!(gap[2], "20.00");
    assert_eq!(gap[3], format!("{:.2} – {:.2}", 20.0 - h, 20.0 + h));
    assert_eq!(gap[7], "19.00, 20.00, 21.00");
    assert_eq!(gap[8], "1 missing (1× the probe sender stalled 3.6 ms at the gap's edge)");
    // The ping has all 4 usable migrations: 0 ms each (below its 50 ms interval).
    let ping = row(&methods, &["downtime.ping"]);
    assert_eq!((ping[1].as_str(), ping[7].as_str(), ping[8].as_str()), ("4", "0.00, 0.00, 0.00, 0.00", "0"));
    assert!(page.html.contains(&format!("<h3>{first}</h3>")));

    // The CDF over all treatments reads the merged HDR histogram: 24 probe gaps; the
    // smallest 19 ms falls in the 16 µs-wide bucket 18,992–19,007 µs (3 significant
    // digits: 16,384–32,767 µs in steps of 16), the median (12th value, 51 ms) in the
    // 32 µs bucket ending at 51,007 µs, the largest (91 ms) in the 64 µs bucket ending
    // at 91,007 µs.
    let cdf = table(&doc, "cdf-all-data");
    let g = row(&cdf, &["downtime.probe_gap"]);
    assert_eq!((g[1].as_str(), g[2].as_str(), g[3].as_str(), g[5].as_str()), ("24", "19.01", "51.01", "91.01"));

    // Timelines: the median (20 ms, repetition 1) and the worst (21 ms, repetition 2)
    // of the first treatment, with the fixture's phases.
    let median = figure(&doc, "Phases on both hosts");
    let title: String = median.descendants().filter(|n| n.has_tag_name("text")).filter_map(|n| n.text()).collect();
    assert!(title.contains("median migration (repetition 1, downtime.probe_gap 20.00 ms)"), "{title}");
    assert!(page.html.contains("worst migration (repetition 2, downtime.probe_gap 21.00 ms)"));
    let phases = table(&doc, &format!("{}-data", median.attribute("id").expect("id")));
    let sc = row(&phases, &["stop-and-copy", "source"]);
    assert_eq!((sc[2].as_str(), sc[3].as_str()), ("804.315", "16.010"));
    let rounds = table(&doc, &format!("{}-rounds-data", median.attribute("id").expect("id")));
    // 82,173,952 bytes = 78.37 MiB left after round 1; TCG: no KVM ioctls.
    assert_eq!(row(&rounds, &["1"])[1..], ["78.37", "0.043", "none (TCG)"]);
    assert_eq!(row(&rounds, &["3 (final)"])[1], "–");

    // Table II: the probe gap over 24 values; treatment means 20…90.
    let t2 = table(&doc, "table2");
    let g = row(&t2, &["downtime.probe_gap"]);
    let values: Vec<f64> = (0..8)
        .flat_map(|i| {
            let m = [20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0][i];
            [m - 1.0, m, m + 1.0]
        })
        .collect();
    let sd = (values.iter().map(|v| (v - 55.0f64).powi(2)).sum::<f64>() / 23.0).sqrt();
    assert_eq!(
        g[1..],
        ["24", "8", "55.00", "4.50", format!("{:.2}", 91.0 / 19.0).as_str(), "1.00", &format!("{sd:.2}")]
    );
    // The ping's smallest value is 0: no ratio.
    assert_eq!(row(&t2, &["downtime.ping"])[5], "n/a");
    let eff = table(&doc, "effect-rate");
    assert!(row(&eff, &["0"]).iter().any(|c| c == "35.00 (n=12)"), "{eff:?}");
    fs::remove_dir_all(&page.dir).expect("cleanup");
}

#[test]
fn every_figure_parses_and_the_page_needs_nothing_from_outside() {
    let page = write_synthetic("selfcontained");
    let plots: Vec<PathBuf> =
        fs::read_dir(page.dir.join("plots")).expect("plots").map(|e| e.expect("entry").path()).collect();
    assert!(plots.len() > 30, "{} figures", plots.len());
    for p in &plots {
        let text = fs::read_to_string(p).expect("svg");
        let doc = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(doc.root_element().has_tag_name("svg"), "{}", p.display());
        // Inlined into the page as drawn.
        assert!(page.html.contains(&text[text.find("<svg").expect("svg tag")..]), "{} not inline", p.display());
    }
    let lower = page.html.to_lowercase();
    for banned in ["<script", "<link", "<img", "<iframe", "@import", "url(", "src=", "http://", "https://"] {
        let hits: Vec<&str> =
            lower.match_indices(banned).map(|(i, _)| &page.html[i..(i + 80).min(page.html.len())]).collect();
        // SVG's namespace is the one URL allowed (an identifier, never fetched).
        let hits: Vec<&&str> = hits.iter().filter(|h| !h.starts_with("http://www.w3.org/")).collect();
        assert!(hits.is_empty(), "{banned}: {hits:?}");
    }
    fs::remove_dir_all(&page.dir).expect("cleanup");
}

#[test]
fn the_fixture_as_perfetto_trace_is_valid_and_complete() {
    let r = fixture();
    let export = perfetto::export(&[&r]);
    let v = perfetto::validate(&export.json).unwrap_or_else(|p| panic!("invalid trace:\n{}", p.join("\n")));
    assert!(export.notes.is_empty(), "{:?}", export.notes);
    let events = export.json["traceEvents"].as_array().expect("events");
    let names = |ph: &str, pid: u64| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["ph"] == ph && e["pid"] == pid)
            .filter_map(|e| e["name"].as_str().map(str::to_owned))
            .collect()
    };
    let source = names("X", perfetto::SOURCE_PID);
    for want in
        ["setup", "pre-copy", "pre-copy round 1", "pre-copy round 2", "vm-stop", "stop-and-copy", "dirty-log sync"]
    {
        assert!(source.iter().any(|n| n == want), "{want} not in {source:?}");
    }
    assert!(source.iter().any(|n| n == "round 3 (final, VM stopped)"));
    assert!(names("X", perfetto::DESTINATION_PID).iter().any(|n| n == "destination load"));
    // The pre-copy rounds nest inside `pre-copy`; the final round inside stop-and-copy.
    let slice = |name: &str| {
        let e = events.iter().find(|e| e["ph"] == "X" && e["name"] == name).expect(name);
        let ts = e["ts"].as_f64().expect("ts");
        (ts, ts + e["dur"].as_f64().expect("dur"))
    };
    let (pre, round1, sc, fin) =
        (slice("pre-copy"), slice("pre-copy round 1"), slice("stop-and-copy"), slice("round 3 (final, VM stopped)"));
    assert!(pre.0 <= round1.0 && round1.1 <= pre.1 + 1e-6);
    assert!(sc.0 <= fin.0 && fin.1 <= sc.1 + 1e-6);
    // Stop-and-copy lasts what the record says: 16.010069 ms.
    assert!((sc.1 - sc.0 - 16_010.069).abs() < 0.002, "{sc:?}");
    // Counters: remaining bytes of rounds 1 and 2 (82,173,952 and 14,426,112 bytes).
    let remaining: Vec<f64> = events
        .iter()
        .filter(|e| e["ph"] == "C" && e["name"] == "remaining MiB")
        .filter_map(|e| e["args"]["value"].as_f64())
        .collect();
    assert_eq!(remaining, [82_173_952.0 / 1_048_576.0, 14_426_112.0 / 1_048_576.0]);
    // vCPU threads of both QEMUs, packets on their taps.
    let threads: Vec<&str> = events
        .iter()
        .filter(|e| e["ph"] == "M" && e["name"] == "thread_name")
        .filter_map(|e| e["args"]["name"].as_str())
        .collect();
    assert!(threads.iter().filter(|t| t.starts_with("vCPU thread")).count() >= 2, "{threads:?}");
    assert!(threads.contains(&"tap tap-a") && threads.contains(&"tap tap-b"), "{threads:?}");
    let replies = events.iter().filter(|e| e["ph"] == "i" && e["name"] == "probe reply").count();
    let in_trace = r
        .trace
        .as_ref()
        .expect("trace")
        .packets
        .iter()
        .filter(|p| p.kind == "icmp-echo-reply" && p.ident == 13492)
        .count();
    assert_eq!(replies, in_trace);
    assert!(events.iter().any(|e| e["ph"] == "i" && e["name"] == "RARP"));
    assert!(v.by_phase["X"] > 10 && v.by_phase["C"] >= 4 && v.by_phase["i"] > 1000, "{v:?}");

    // Without the raw trace: the phases still, and a note saying what is missing.
    let mut bare = r.clone();
    bare.trace = None;
    let mut second = bare.clone();
    second.repetition = 1;
    // A second migration 5 s later: after the first on the same clock.
    if let Some(t) = second.timeline.as_mut() {
        t.marks.command_ns += 5_000_000_000;
        for m in [&mut t.marks.source_paused_ns, &mut t.marks.destination_resumed_ns] {
            *m = m.map(|v| v + 5_000_000_000);
        }
    }
    let export = perfetto::export(&[&bare, &second]);
    perfetto::validate(&export.json).unwrap_or_else(|p| panic!("invalid trace:\n{}", p.join("\n")));
    assert_eq!(export.notes.len(), 2);
    assert!(export.notes[0].contains("--keep-trace"), "{:?}", export.notes);
    let starts: Vec<f64> = export.json["traceEvents"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["ph"] == "X" && e["name"] == "setup")
        .filter_map(|e| e["ts"].as_f64())
        .collect();
    assert_eq!(starts.len(), 2);
    assert!((starts[1] - starts[0] - 5e6).abs() < 1.0, "{starts:?}");
}

#[test]
fn the_validator_rejects_what_the_format_forbids() {
    use serde_json::json;
    let meta = |pid: u64, tid: u64| {
        vec![
            json!({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "ts": 0, "args": {"name": "p"}}),
            json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "ts": 0, "args": {"name": "t"}}),
        ]
    };
    let with = |events: Vec<serde_json::Value>| {
        let mut all = meta(1, 1);
        all.extend(events);
        json!({ "traceEvents": all })
    };
    let ok = with(vec![
        json!({"ph": "X", "name": "a", "pid": 1, "tid": 1, "ts": 0, "dur": 10}),
        json!({"ph": "X", "name": "b", "pid": 1, "tid": 1, "ts": 2, "dur": 3}),
    ]);
    perfetto::validate(&ok).expect("valid");
    let overlapping = with(vec![
        json!({"ph": "X", "name": "a", "pid": 1, "tid": 1, "ts": 0, "dur": 10}),
        json!({"ph": "X", "name": "b", "pid": 1, "tid": 1, "ts": 5, "dur": 10}),
    ]);
    assert!(perfetto::validate(&overlapping).is_err_and(|p| p[0].contains("after its parent")));
    let back = with(vec![
        json!({"ph": "i", "s": "t", "name": "a", "pid": 1, "tid": 1, "ts": 5}),
        json!({"ph": "i", "s": "t", "name": "b", "pid": 1, "tid": 1, "ts": 4}),
    ]);
    assert!(perfetto::validate(&back).is_err_and(|p| p[0].contains("before the previous")));
    for bad in [
        json!({"ph": "X", "name": "no dur", "pid": 1, "tid": 1, "ts": 0}),
        json!({"ph": "C", "name": "no args", "pid": 1, "tid": 1, "ts": 0}),
        json!({"ph": "i", "name": "no scope", "pid": 1, "tid": 1, "ts": 0}),
        json!({"ph": "X", "name": "no pid", "tid": 1, "ts": 0, "dur": 1}),
        json!({"ph": "X", "name": "unnamed thread", "pid": 1, "tid": 9, "ts": 0, "dur": 1}),
    ] {
        assert!(perfetto::validate(&with(vec![bad.clone()])).is_err(), "{bad}");
    }
}

/// A headless Chromium this test started, ended (with its helper processes, by its
/// process group) and its profile removed however the test ends.
struct Browser {
    child: std::process::Child,
    profile: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: signalling the process group of the Chromium this test started.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.profile);
    }
}

/// Opens `page` in headless Chromium, saves a screenshot of `size` to `png`, returns
/// the browser's log (console messages included).
pub fn screenshot(page: &Path, png: &Path, size: (u32, u32)) -> String {
    use std::os::unix::process::CommandExt as _;
    let profile = temp_dir(&format!("chromium-{}", png.file_stem().and_then(|s| s.to_str()).unwrap_or("x")));
    let log = profile.with_extension("log");
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(format!("--window-size={},{}", size.0, size.1))
    .arg(format!("--screenshot={}", png.display()))
    .arg(format!("file://{}", page.display()))
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(fs::File::create(&log).expect("log file"))
    .process_group(0);
    let _ = fs::remove_file(png);
    let mut browser = Browser { child: cmd.spawn().expect("chromium (apt-get install chromium)"), profile };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = browser.child.try_wait().expect("poll chromium") {
            assert!(status.success(), "chromium: {status}\n{}", fs::read_to_string(&log).unwrap_or_default());
            break;
        }
        assert!(Instant::now() < deadline, "chromium did not finish within 90 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(browser);
    let text = fs::read_to_string(&log).unwrap_or_default();
    let _ = fs::remove_file(&log);
    text
}

/// Console errors in a Chromium log: uncaught exceptions, console.error, resources that
/// failed to load.
pub fn console_errors(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            l.contains("CONSOLE")
                || l.contains("Uncaught")
                || l.contains("Failed to load resource")
                || l.contains("ERR_FILE_NOT_FOUND")
                || l.contains("net::ERR_")
        })
        .collect()
}

fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-screenshots");
    fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

#[test]
#[ignore = "needs Debian's chromium (run `cargo xtask test`)"]
fn chromium_renders_the_page_without_console_errors() {
    let page = write_synthetic("chromium");
    let shots = screenshot_dir();
    // A page that does log an error: the check must see it (a positive control).
    let bad = page.dir.join("bad.html");
    fs::write(&bad, "<!DOCTYPE html><html><body><script>undefinedFunction();</script></body></html>").expect("bad");
    let log = screenshot(&bad, &shots.join("control.png"), (400, 300));
    assert!(!console_errors(&log).is_empty(), "the console check missed an uncaught error:\n{log}");

    for (name, size) in [("synthetic-top", (1400, 2200)), ("synthetic-long", (1400, 9000))] {
        let png = shots.join(format!("{name}.png"));
        let log = screenshot(&page.dir.join("report.html"), &png, size);
        let errors = console_errors(&log);
        assert!(errors.is_empty(), "console errors:\n{}", errors.join("\n"));
        let bytes = fs::read(&png).expect("screenshot written");
        assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 50_000, "{} bytes", bytes.len());
        eprintln!("screenshot: {}", png.display());
    }
    fs::remove_dir_all(&page.dir).expect("cleanup");
}

const REAL_SPEC: &str = r#"name = "report-real"
repetitions = 2
warmup = "500ms"
[factors]
vmsize = ["256M"]
wset = ["16M"]
rate = [0, 2000]
[measure]
settle_s = 0.5
"#;

fn migtrace() -> Command {
    Command::new(env!("CARGO_BIN_EXE_migtrace"))
}

#[test]
#[ignore = "needs root, QEMU and chromium: runs an experiment (run `cargo xtask test`)"]
fn a_small_real_experiment_reports_progress_and_a_page_chromium_renders() {
    let root = temp_dir("real");
    let spec = root.join("spec.toml");
    fs::write(&spec, REAL_SPEC).expect("spec");
    // Standard error is a pipe here, as in CI: one line per treatment and repetition.
    let out = migtrace().arg("run").arg(&spec).arg("--results").arg(&root).output().expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let reps: Vec<&str> = stderr.lines().filter(|l| l.contains(" repetition ") && l.contains("ETA")).collect();
    assert_eq!(reps.len(), 4, "one line per migration:\n{stderr}");
    assert!(reps[0].starts_with("[1/4] treatment 1/2 vmsize=256,wset=16,rate=0 repetition 1/2: "), "{}", reps[0]);
    assert!(reps.iter().all(|l| l.contains("downtime ms probe gap") || l.contains("failed")), "{reps:?}");
    assert!(reps[3].ends_with("ETA 0s"), "{}", reps[3]);
    let done: Vec<&str> = stderr.lines().filter(|l| l.contains(": done, ")).collect();
    assert_eq!(done.len(), 2, "one line per treatment:\n{stderr}");
    assert!(stdout.contains("report: "), "{stdout}");

    let dir = root.join("report-real");
    let records = record::read(&dir).expect("records");
    let html = fs::read_to_string(dir.join("report.html")).expect("report.html");
    let doc = parse(&html);
    assert_eq!(row(&table(&doc, "counts"), &["run"])[1], records.len().to_string());
    let usable: Vec<&MigrationRecord> = records.iter().filter(|r| migtrace::measure::quality::usable(r)).collect();
    assert_eq!(row(&table(&doc, "counts"), &["usable"])[1], usable.len().to_string());
    // The page's single values are the records' values.
    let gaps: Vec<String> = usable
        .iter()
        .filter(|r| r.treatment.ends_with("rate=0"))
        .filter_map(|r| r.downtime_ms.probe_gap)
        .map(|v| format!("{v:.2}"))
        .collect();
    let t1 = table(&doc, "t001-vmsize_256-wset_16-rate_0-methods-data");
    assert_eq!(row(&t1, &["downtime.probe_gap"])[7], gaps.join(", "));
    for entry in fs::read_dir(dir.join("plots")).expect("plots") {
        let p = entry.expect("entry").path();
        let text = fs::read_to_string(&p).expect("svg");
        roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }

    // Perfetto: one treatment to a file; both into a directory; a file for two is refused.
    let trace = root.join("rate2000.json");
    let out = migtrace()
        .arg("timeline")
        .arg(&dir)
        .args(["--treatment", "rate=2000", "--perfetto"])
        .arg(&trace)
        .output()
        .expect("timeline");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--keep-trace"), "says what is missing");
    let json: serde_json::Value = serde_json::from_str(&fs::read_to_string(&trace).expect("trace")).expect("json");
    perfetto::validate(&json).unwrap_or_else(|p| panic!("invalid:\n{}", p.join("\n")));
    let refused =
        migtrace().arg("timeline").arg(&dir).arg("--perfetto").arg(root.join("all.json")).output().expect("run");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--treatment"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let traces = root.join("traces");
    let out = migtrace()
        .arg("timeline")
        .arg(&dir)
        .arg("--perfetto")
        .arg(format!("{}/", traces.display()))
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let files: Vec<PathBuf> = fs::read_dir(&traces).expect("traces").map(|e| e.expect("entry").path()).collect();
    assert_eq!(files.len(), 2);
    for f in files {
        let json: serde_json::Value = serde_json::from_str(&fs::read_to_string(&f).expect("trace")).expect("json");
        perfetto::validate(&json).unwrap_or_else(|p| panic!("{}:\n{}", f.display(), p.join("\n")));
    }

    // `report --html` rewrites the page from the records.
    fs::remove_file(dir.join("report.html")).expect("remove");
    let out = migtrace().arg("report").arg(&dir).arg("--html").output().expect("report");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.join("report.html").is_file());

    let png = screenshot_dir().join("real-top.png");
    let log = screenshot(&dir.join("report.html"), &png, (1400, 3000));
    let errors = console_errors(&log);
    assert!(errors.is_empty(), "console errors:\n{}", errors.join("\n"));
    eprintln!("screenshot: {}", png.display());
    fs::remove_dir_all(&root).expect("cleanup");
}

#[test]
#[ignore = "needs root and QEMU: runs lab migrations (run `cargo xtask test`)"]
fn traced_lab_migrations_make_a_valid_perfetto_trace_with_vcpu_and_packet_tracks() {
    let root = temp_dir("traced");
    let out = migtrace()
        .args(["migrate", "--lab", "--keep-trace", "--count", "2", "--workload", "wset=16M,rate=2000", "--out"])
        .arg(&root)
        .output()
        .expect("migrate");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let trace = root.join("trace.json");
    let out = migtrace().arg("timeline").arg(&root).arg("--perfetto").arg(&trace).output().expect("timeline");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_str(&fs::read_to_string(&trace).expect("trace")).expect("json");
    let v = perfetto::validate(&json).unwrap_or_else(|p| panic!("invalid:\n{}", p.join("\n")));
    assert_eq!(json["otherData"]["migrations"], 2);
    assert!(json["otherData"]["notes"].as_array().is_some_and(Vec::is_empty), "{}", json["otherData"]);
    let events = json["traceEvents"].as_array().expect("events");
    let thread = |prefix: &str| {
        events
            .iter()
            .filter(|e| e["ph"] == "M" && e["name"] == "thread_name")
            .filter(|e| e["args"]["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
            .count()
    };
    // Two migrations, each with a vCPU thread on both hosts; both taps.
    assert!(thread("vCPU thread") >= 4, "{}", thread("vCPU thread"));
    assert_eq!(thread("tap "), 2);
    let setups = events.iter().filter(|e| e["ph"] == "X" && e["name"] == "setup").count();
    assert_eq!(setups, 2);
    assert!(events.iter().any(|e| e["ph"] == "i" && e["name"] == "probe reply"));
    assert!(v.by_phase["i"] > 100, "{v:?}");
    fs::remove_dir_all(&root).expect("cleanup");
}
