//! Malformed input, generated: experiment specs, workload specs, records (garbage, torn
//! lines, fields missing or extra or of the wrong type) and QMP replies and events from a
//! fake QEMU. Nothing may panic (also not in a spawned task: a panic hook counts them);
//! bad input is an error. Case counts are bounded so the whole file runs in seconds.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use migtrace::{
    experiment::{design, spec::ExperimentSpec},
    hypervisor::qmp::Qmp,
    measure::record::{self, MigrationRecord},
    stats::{self, EffectDesign},
};
use proptest::prelude::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

/// Panics anywhere in this test binary, spawned tasks included (tokio keeps those to
/// itself).
fn panics() -> usize {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    static HOOK: OnceLock<()> = OnceLock::new();
    HOOK.get_or_init(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            COUNT.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
    COUNT.load(Ordering::SeqCst)
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

// ---- experiment specs ----------------------------------------------------------------

/// A TOML value of any kind, most of them wrong for the key they land on.
fn toml_value() -> impl Strategy<Value = String> {
    let scalar = prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        (-5i64..100_000).prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| if v.is_finite() { format!("{v:?}") } else { "nan".into() }),
        Just("inf".to_owned()),
        Just("-inf".to_owned()),
        Just("nan".to_owned()),
        Just("-0.0".to_owned()),
        Just("1e300".to_owned()),
        any::<bool>().prop_map(|v| v.to_string()),
        "[a-zA-Z0-9 .,=:%/_-]{0,12}".prop_map(|s| format!("{s:?}")),
        prop::sample::select(vec![
            "\"16M\"",
            "\"256M\"",
            "\"0\"",
            "\"1G\"",
            "\"99999999999G\"",
            "\"500ms\"",
            "\"1e30s\"",
            "\"kvm\"",
            "\"tcg\"",
            "\"lab\"",
            "\"minimal\"",
            "\"linux\"",
            "\"random\"",
            "\"sweep\"",
            "\"factorial\"",
            "\"system\"",
            "\"\"",
            "\"-1\"",
            "\"50%\"",
        ])
        .prop_map(str::to_owned),
    ];
    prop_oneof![
        4 => scalar.clone(),
        1 => prop::collection::vec(scalar, 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
    ]
}

const TOP_KEYS: &[&str] =
    &["name", "backend", "guest", "design", "repetitions", "order", "seed", "warmup", "description", "bogus"];
const FACTORS: &[&str] = &[
    "vmsize",
    "vcpus",
    "accel",
    "load",
    "cpus",
    "wset",
    "rate",
    "period",
    "bpc",
    "fill",
    "max_bandwidth",
    "downtime_limit",
    "qemu",
    "nonsense",
];
const MEASURE: &[&str] =
    &["probes", "ping_interval_ms", "probe_rate_hz", "settle_s", "settle_max_s", "memory_check", "other"];
const MIGRATION: &[&str] = &["timeout_s", "boot_timeout_s", "other"];
const LAB: &[&str] = &["tcg_dirty_workaround", "dirty_ring", "other"];
const LIBVIRT: &[&str] = &["source", "destination", "domain", "guest_ip", "agents", "agent_source", "tunnelled"];

fn section(name: &'static str, keys: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::collection::vec((prop::sample::select(keys), toml_value()), 0..5).prop_map(move |pairs| {
        // Distinct keys (a duplicate is only a TOML error, found already).
        let pairs: BTreeMap<_, _> = pairs.into_iter().collect();
        let body: String = pairs.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        if name.is_empty() { body } else { format!("[{name}]\n{body}") }
    })
}

/// A spec assembled from plausible sections with wrong values, or a valid one cut short
/// or with bytes flipped.
fn spec_text() -> impl Strategy<Value = String> {
    const VALID: &str = "name = \"fuzz\"\nrepetitions = 2\nwarmup = \"500ms\"\n[factors]\nwset = [\"16M\", \"32M\"]\n\
                         rate = [0, 1000]\n[measure]\ntracing = false\nsettle_s = 0.2\n[migration]\ntimeout_s = 30\n";
    prop_oneof![
        3 => (
            section("", TOP_KEYS),
            section("factors", FACTORS),
            section("base", FACTORS),
            section("measure", MEASURE),
            section("migration", MIGRATION),
            section("lab", LAB),
            section("libvirt", LIBVIRT),
        )
            .prop_map(|(a, b, c, d, e, f, g)| format!("name = \"f\"\n{a}{b}{c}{d}{e}{f}{g}")),
        1 => (0..VALID.len()).prop_map(|n| VALID[..n].to_owned()),
        1 => (prop::collection::vec((0..VALID.len(), any::<u8>()), 1..4)).prop_map(|flips| {
            let mut bytes = VALID.as_bytes().to_vec();
            for (i, b) in flips {
                bytes[i] = b;
            }
            String::from_utf8_lossy(&bytes).into_owned()
        }),
    ]
}

proptest! {
    #![proptest_config(config(400))]

    #[test]
    fn experiment_specs_never_panic(text in spec_text()) {
        let before = panics();
        if let Ok(spec) = ExperimentSpec::parse(&text) {
            // What a run does with a spec before any lab: expand, name, validate.
            for t in design::expand(&spec).iter().take(64) {
                let _ = t.name();
                let _ = t.migration_params(spec.raw.migration.timeout_s);
                let _ = t.validate(spec.raw.guest);
            }
            let _ = spec.digest();
            // Valid specs only hold what later becomes a Duration without panicking.
            prop_assert!(spec.raw.migration.timeout_s.is_finite() && spec.raw.measure.settle_max_s.is_finite());
        }
        prop_assert_eq!(panics(), before);
    }
}

// ---- workload specs ------------------------------------------------------------------

fn workload_text() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec!["load", "cpus", "wset", "period", "bpc", "rate", "fill", "x", ""]);
    let value = prop_oneof![
        "[0-9]{0,25}",
        "[0-9]{1,6}(\\.[0-9]{1,3})?(us|µs|ms|s|K|M|G|%|KiB|)",
        "[ -~]{0,8}",
        Just("1e30s".to_owned()),
        Just("99999999999999999999999s".to_owned()),
        Just("18446744073709551615G".to_owned()),
        Just("inf".to_owned()),
        Just("NaN".to_owned()),
    ];
    prop_oneof![
        4 => prop::collection::vec((key, value), 0..5)
            .prop_map(|kv| kv.into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")),
        1 => "[ -~]{0,30}",
        1 => any::<Vec<u8>>().prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

proptest! {
    #![proptest_config(config(600))]

    #[test]
    fn workload_specs_never_panic_and_print_as_one_word(text in workload_text()) {
        let before = panics();
        if let Ok(spec) = workloads::spec::Spec::parse(&text) {
            // The spec goes on the guest kernel's command line: one word, never more.
            let shown = spec.to_string();
            prop_assert!(!shown.chars().any(char::is_whitespace), "{shown:?}");
            let again = workloads::spec::Spec::parse(&shown);
            prop_assert!(again.is_ok(), "{shown:?} does not parse back: {again:?}");
        }
        prop_assert_eq!(panics(), before);
    }
}

// ---- records -------------------------------------------------------------------------

/// The first record of the recorded fixture, as JSON, its raw packet stamps cut to 20
/// (all of them make each case a hundred times slower and test nothing more).
fn fixture() -> &'static Value {
    static RECORD: OnceLock<Value> = OnceLock::new();
    RECORD.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tcg-dirty-2000.jsonl");
        let record = record::read(Path::new(path)).expect("fixture").remove(0);
        let mut value = serde_json::to_value(record).expect("json");
        if let Some(packets) = value.pointer_mut("/trace/packets").and_then(Value::as_array_mut) {
            packets.truncate(20);
        }
        value
    })
}

/// Any JSON, shallow.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[a-z_-]{0,10}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_-]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// What happens to one field of a record.
#[derive(Clone, Debug)]
enum Edit {
    Remove,
    Replace(Value),
    Extra(String, Value),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        Just(Edit::Remove),
        json_value().prop_map(Edit::Replace),
        ("[a-z_]{1,8}", json_value()).prop_map(|(k, v)| Edit::Extra(k, v)),
    ]
}

/// Applies `edit` to the object at `path` (keys chosen by index, one level or two deep).
fn apply(record: &mut Value, first: usize, second: Option<usize>, edit: &Edit) {
    let Some(obj) = record.as_object_mut() else { return };
    let keys: Vec<String> = obj.keys().cloned().collect();
    let key = &keys[first % keys.len()];
    let (target, key) = match second {
        Some(i) if obj[key].as_object().is_some_and(|o| !o.is_empty()) => {
            let inner = obj.get_mut(key).and_then(Value::as_object_mut).expect("object");
            let keys: Vec<String> = inner.keys().cloned().collect();
            let k = keys[i % keys.len()].clone();
            (inner, k)
        }
        _ => (obj, key.clone()),
    };
    match edit {
        Edit::Remove => {
            target.remove(&key);
        }
        Edit::Replace(v) => {
            target.insert(key, v.clone());
        }
        Edit::Extra(k, v) => {
            target.insert(format!("x_{k}"), v.clone());
        }
    }
}

proptest! {
    #![proptest_config(config(200))]

    #[test]
    fn records_with_fields_missing_extra_or_wrong_never_panic(
        edits in prop::collection::vec((any::<usize>(), prop::option::of(any::<usize>()), edit()), 1..5),
    ) {
        let before = panics();
        let mut value = fixture().clone();
        for (first, second, e) in &edits {
            apply(&mut value, *first, *second, e);
        }
        if let Ok(r) = serde_json::from_value::<MigrationRecord>(value.clone()) {
            // Everything that reads records: statistics, the text report, comparison.
            let records = vec![r.clone(), r];
            let levels = vec![(records[0].treatment.clone(), BTreeMap::new())];
            let summary = stats::summarize(&records, &levels, &EffectDesign::Factorial);
            let _ = migtrace::report::experiment::render("fuzz", &summary);
            let _ = migtrace::report::compare::render(&migtrace::report::compare::compare(&records));
            let _ = migtrace::measure::quality::category(&records[0]);
        }
        // As a line of a records file, between good ones: an error or a record, never a panic.
        let good = serde_json::to_string(fixture()).expect("json");
        let text = format!("{good}\n{value}\n{good}\n");
        let _ = record::parse(Path::new("m.jsonl"), text.as_bytes());
        prop_assert_eq!(panics(), before);
    }

    #[test]
    fn record_files_of_garbage_and_torn_lines_never_panic(
        garbage in prop::collection::vec(any::<u8>(), 0..200),
        cut in any::<prop::sample::Index>(),
        at in 0usize..3,
    ) {
        let before = panics();
        let good = serde_json::to_string(fixture()).expect("json");
        // Garbage alone.
        let _ = record::parse(Path::new("m.jsonl"), &garbage);
        // A torn last record (cut anywhere, in a character too): the whole ones survive.
        let mut torn = format!("{good}\n{good}\n").into_bytes();
        let half = good.as_bytes();
        torn.extend_from_slice(&half[..cut.index(half.len())]);
        let parsed = record::parse(Path::new("m.jsonl"), &torn);
        prop_assert!(parsed.as_ref().is_ok_and(|r| r.len() == 2 || r.len() == 3), "{parsed:?}");
        // Garbage as a whole line somewhere: an error (unless it happens to be blank).
        let mut lines = vec![good.clone().into_bytes(), good.into_bytes()];
        let mut bad = garbage.clone();
        bad.retain(|&b| b != b'\n');
        let blank = bad.trim_ascii().is_empty();
        lines.insert(at.min(lines.len()), bad);
        let mut bytes = lines.join(&b'\n');
        bytes.push(b'\n');
        let parsed = record::parse(Path::new("m.jsonl"), &bytes);
        if blank {
            prop_assert!(parsed.is_ok());
        } else if let Ok(r) = &parsed {
            // Only a line that happens to be a record passes.
            prop_assert_eq!(r.len(), 3);
        }
        prop_assert_eq!(panics(), before);
    }
}

// ---- QMP -----------------------------------------------------------------------------

/// What the fake QEMU says.
#[derive(Clone, Debug)]
struct Script {
    greeting: Value,
    /// Lines sent before each reply (events, garbage).
    noise: Vec<String>,
    /// The reply to each command, by order (the envelope included).
    replies: Vec<Value>,
}

fn event_line() -> impl Strategy<Value = String> {
    let name = prop::sample::select(vec!["MIGRATION", "STOP", "RESUME", "MIGRATION_PASS", "SHUTDOWN", "NONSENSE"]);
    let number = prop_oneof![any::<i64>().prop_map(Value::from), any::<u64>().prop_map(Value::from), json_value()];
    prop_oneof![
        4 => (name, prop::option::of(json_value()), prop::option::of((number.clone(), number)), prop::option::of(json_value()))
            .prop_map(|(event, data, ts, extra)| {
                let mut e = json!({"event": event});
                if let Some(d) = data {
                    e["data"] = d;
                }
                if let Some((s, us)) = ts {
                    e["timestamp"] = json!({"seconds": s, "microseconds": us});
                }
                if let Some(x) = extra {
                    e["extra"] = x;
                }
                e.to_string()
            }),
        1 => json_value().prop_map(|v| v.to_string()),
        1 => "[ -~]{0,20}",
    ]
}

fn reply() -> impl Strategy<Value = Value> {
    let stats = prop_oneof![
        json_value(),
        (json_value(), json_value(), json_value()).prop_map(|(status, total, ram)| {
            json!({"status": status, "total-time": total, "ram": ram, "unknown-field": 1})
        }),
        Just(json!({"status": "completed", "total-time": 715, "downtime": 14, "ram": {"total": 1, "mbps": 1.5}})),
        Just(json!({"status": "running", "singlestep": false, "running": true})),
        Just(json!({})),
    ];
    prop_oneof![
        4 => stats.prop_map(|r| json!({"return": r})),
        1 => json_value().prop_map(|e| json!({"error": e})),
        1 => Just(json!({"error": {"class": "GenericError", "desc": "no"}})),
        1 => json_value(),
        1 => (json_value(), json_value()).prop_map(|(r, x)| json!({"return": r, "extra": x})),
    ]
}

fn script() -> impl Strategy<Value = Script> {
    let greeting = prop_oneof![
        4 => prop::sample::select(vec![vec![], vec!["oob"]])
            .prop_map(|caps| json!({"QMP": {"version": {"qemu": {"major": 9, "minor": 2, "micro": 0}, "package": ""}, "capabilities": caps}})),
        1 => json_value().prop_map(|v| json!({"QMP": v})),
        1 => json_value(),
    ];
    (greeting, prop::collection::vec(event_line(), 0..4), prop::collection::vec(reply(), 1..4))
        .prop_map(|(greeting, noise, replies)| Script { greeting, noise, replies })
}

/// Serves `script` to one client on `path`: greeting, then for every command the noise
/// and a reply carrying the command's id (if it sent one).
async fn serve(listener: tokio::net::UnixListener, script: Script) {
    let Ok((stream, _)) = listener.accept().await else { return };
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let _ = write.write_all(format!("{}\n", script.greeting).as_bytes()).await;
    let mut n = 0;
    while let Ok(Some(line)) = lines.next_line().await {
        let command: Value = serde_json::from_str(&line).unwrap_or_default();
        // qmp_capabilities is answered properly, so the fuzzed replies reach the commands.
        let mut reply = if command["execute"] == "qmp_capabilities" {
            json!({"return": {}})
        } else {
            let r = script.replies[n % script.replies.len()].clone();
            n += 1;
            for noise in &script.noise {
                let _ = write.write_all(format!("{noise}\n").as_bytes()).await;
            }
            r
        };
        if let (Some(id), Some(obj)) = (command.get("id"), reply.as_object_mut()) {
            obj.insert("id".into(), id.clone());
        }
        if write.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
            return;
        }
    }
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn qmp_replies_and_events_with_missing_or_extra_fields_never_panic(script in script()) {
        let before = panics();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let dir = std::env::temp_dir().join(format!("migtrace-fuzz-qmp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("qmp.sock");
        let _ = std::fs::remove_file(&path);
        runtime.block_on(async {
            let listener = tokio::net::UnixListener::bind(&path).expect("bind");
            let server = tokio::spawn(serve(listener, script));
            let client = async {
                let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
                let Ok(qmp) = Qmp::connect(&path, deadline).await else { return };
                let _ = qmp.query_migrate().await;
                let _ = qmp.run_state().await;
                let _ = qmp.query_migrate().await;
                let _ = qmp.wait_event(0, "an event", tokio::time::Instant::now() + Duration::from_millis(20), |e| e.event == "STOP").await;
                let _ = qmp.events_since(0);
            };
            // Errors are fine; a hang is a failure too.
            let done = tokio::time::timeout(Duration::from_secs(5), client).await;
            server.abort();
            assert!(done.is_ok(), "the QMP client hung");
        });
        drop(runtime);
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir(&dir);
        prop_assert_eq!(panics(), before);
    }
}
