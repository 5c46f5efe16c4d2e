//! The per-migration record: one JSON object per line, appended and fsynced as each
//! migration finishes, so an interrupted run never loses a finished migration.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{self, Read as _, Seek as _, Write as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{
    downtime::{Downtimes, MigrationTimes, ProbeSummary},
    heartbeat::HeartbeatSummary,
    outage::Outage,
    ping::PingReport,
    timeline::{Evidence, Timeline},
};
use crate::{
    hypervisor::{GuestCheck, Machine, MigrationOutcome, MigrationParams},
    probe::{
        agent::ClockRecord,
        tracer::{Trace, TraceHealth},
    },
};

/// Version of the record layout; bumped on incompatible changes.
pub const SCHEMA: u32 = 1;

/// The file records go to inside an output directory.
pub const RECORDS_FILE: &str = "migrations.jsonl";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MigrationRecord {
    pub schema: u32,
    /// 0-based repetition within its treatment.
    pub repetition: u32,
    /// Treatment name (the workload spec and machine for `migrate`, the design's name in
    /// experiments).
    pub treatment: String,
    pub params: MigrationParams,
    /// What both hosts ran: hypervisor build, accelerator, guest RAM, workarounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<Machine>,
    #[serde(flatten)]
    pub outcome: MigrationOutcome,
    /// Downtime by method (ms); see the README's record reference.
    #[serde(default)]
    pub downtime_ms: Downtimes,
    /// Migration time by method (ms).
    #[serde(default)]
    pub migration_time_ms: MigrationTimes,
    /// What the measures whose source can vary were taken from: `downtime_ms.vcpu`,
    /// `migration_time_ms.traced` and `…traced_to_resume` → `probe` or `qmp`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub evidence: BTreeMap<String, Evidence>,
    /// The paper's reference ping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping: Option<PingReport>,
    /// migtrace's probe sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeSummary>,
    /// The guest's heartbeats (a guest without network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<HeartbeatSummary>,
    /// Every time the guest did not answer during the observation, in time order
    /// (`None`: not measured, `missing` says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outages: Option<Vec<Outage>>,
    /// Phases and rounds on both hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<Timeline>,
    /// Loss counters and what could not be probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_health: Option<TraceHealth>,
    /// The guest's own view after the migration (console); a crashed guest makes every
    /// downtime figure of this migration meaningless.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<GuestCheck>,
    /// Per host traced by its own tracer (an agent): its clock against the coordinator's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub clocks: BTreeMap<String, ClockRecord>,
    /// For measures whose two ends were stamped on two hosts: the bound clock alignment
    /// puts on them, ms (the hosts' uncertainties added).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub uncertainty_ms: BTreeMap<String, f64>,
    /// Where the measurement's wall time went, ms per stage (detach, attach-probes,
    /// attach, preroll, migration, settle-answered, settle, stop-observers,
    /// memory-check, finish): the cost of measuring, not a measure.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub procedure_ms: BTreeMap<String, f64>,
    /// Measures that are missing, each with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    /// The raw trace (`--keep-trace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<Trace>,
}

impl MigrationRecord {
    pub fn new(repetition: u32, treatment: String, params: MigrationParams, outcome: MigrationOutcome) -> Self {
        Self {
            schema: SCHEMA,
            repetition,
            treatment,
            params,
            machine: None,
            outcome,
            downtime_ms: Downtimes::default(),
            migration_time_ms: MigrationTimes::default(),
            evidence: BTreeMap::new(),
            ping: None,
            probe: None,
            heartbeat: None,
            outages: None,
            timeline: None,
            trace_health: None,
            guest: None,
            clocks: BTreeMap::new(),
            uncertainty_ms: BTreeMap::new(),
            procedure_ms: BTreeMap::new(),
            missing: Vec::new(),
            trace: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{path}: {source}{}", crate::files::hint(.source))]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}:{line}: not a migration record: {source}")]
    Parse {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
}

/// Appends records durably.
pub struct RecordWriter {
    path: PathBuf,
    file: File,
}

impl RecordWriter {
    /// Opens `dir/migrations.jsonl` for appending, creating `dir` if needed. Fails now,
    /// not after a migration, if `dir` takes no file (read-only, full, no permission).
    pub fn open(dir: &Path) -> Result<Self, RecordError> {
        let path = dir.join(RECORDS_FILE);
        crate::files::check_writable(dir).map_err(|source| RecordError::Io { path: dir.to_owned(), source })?;
        let err = |source| RecordError::Io { path: path.clone(), source };
        let mut file = crate::files::open_append(&path).map_err(err)?;
        repair_torn_tail(&mut file).map_err(err)?;
        Ok(Self { path, file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one record as one line and syncs it to disk.
    pub fn append<T: Serialize>(&mut self, record: &T) -> Result<(), RecordError> {
        let err = |source| RecordError::Io { path: self.path.clone(), source };
        let mut line = serde_json::to_vec(record).map_err(|e| err(io::Error::other(e)))?;
        line.push(b'\n');
        let before = self.file.metadata().map_err(err)?.len();
        // One write of a whole line: a crash leaves at most a torn last line, which
        // readers skip and the next open cuts off. A failed write (a full disk) is cut
        // off now, so the file never holds half a record while we run on.
        if let Err(e) = self.file.write_all(&line).and_then(|()| self.file.sync_data()) {
            let _ = self.file.set_len(before);
            return Err(err(e));
        }
        Ok(())
    }
}

/// A process killed while writing leaves a last line without its newline; appending
/// after it would glue two records together. Cut such a tail off (it was never a
/// complete record) before appending.
/// Works on the descriptor [`crate::files::open_append`] opened: the file checked, not
/// whatever its name leads to now.
fn repair_torn_tail(file: &mut File) -> io::Result<()> {
    let mut bytes = Vec::new();
    file.rewind()?;
    file.read_to_end(&mut bytes)?;
    if bytes.is_empty() || bytes.ends_with(b"\n") {
        return Ok(());
    }
    let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    file.set_len(keep as u64)?;
    file.sync_all()
}

/// Reads the records of a JSON-lines file or of a directory's `migrations.jsonl`. A
/// torn last line (crash while writing, possibly in the middle of a character) is
/// ignored; a bad line elsewhere is an error naming it.
pub fn read(path: &Path) -> Result<Vec<MigrationRecord>, RecordError> {
    let path = if path.is_dir() { path.join(RECORDS_FILE) } else { path.to_owned() };
    let bytes = fs::read(&path).map_err(|source| RecordError::Io { path: path.clone(), source })?;
    parse(&path, &bytes)
}

/// The records in `bytes`, the contents of `path` (see [`read`]).
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<MigrationRecord>, RecordError> {
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    // Text after the last newline is a line still being written (or torn): the only one
    // that may be incomplete. A whole line (newline-terminated) that is not a record is
    // an error wherever it is.
    let terminated = bytes.ends_with(b"\n");
    let last = lines.len() - usize::from(terminated);
    let mut records = Vec::new();
    for (i, line) in lines.iter().enumerate().take(last) {
        if line.trim_ascii().is_empty() {
            continue;
        }
        match serde_json::from_slice(line) {
            Ok(r) => records.push(r),
            Err(_) if i + 1 == last && !terminated => break,
            Err(source) => return Err(RecordError::Parse { path: path.to_owned(), line: i + 1, source }),
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    #[test]
    fn a_torn_last_line_is_ignored_and_repaired_before_appending() {
        let dir = std::env::temp_dir().join(format!("migtrace-records-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut w = RecordWriter::open(&dir).expect("open");
        w.append(&serde_json::json!({"a": 1})).expect("append");
        drop(w);
        // A crash in the middle of the second record.
        let path = dir.join(RECORDS_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(br#"{"a": 2, "tr"#).expect("write");
        drop(f);
        let mut w = RecordWriter::open(&dir).expect("reopen repairs");
        w.append(&serde_json::json!({"a": 3})).expect("append");
        let text = fs::read_to_string(&path).expect("read");
        assert_eq!(text, "{\"a\":1}\n{\"a\":3}\n");
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn only_an_unterminated_last_line_may_be_torn() {
        let path = Path::new("migrations.jsonl");
        let outcome = crate::hypervisor::MigrationOutcome::completed_for_test(Some(1));
        let record = MigrationRecord::new(0, "t".into(), crate::hypervisor::MigrationParams::default(), outcome);
        let one = serde_json::to_string(&record).expect("json");
        let torn = format!("{one}\n{}", &one[..one.len() / 2]);
        assert_eq!(parse(path, torn.as_bytes()).expect("torn tail skipped").len(), 1);
        // Cut inside a multi-byte character: still just a torn tail.
        let mut bytes = format!("{one}\n").into_bytes();
        bytes.extend_from_slice(&"{\"treatment\": \"é".as_bytes()[..15]);
        assert_eq!(parse(path, &bytes).expect("torn tail skipped").len(), 1);
        // A whole line that is not a record is an error naming it, last or not.
        for text in [format!("{one}\ngarbage\n"), format!("garbage\n{one}\n")] {
            let e = parse(path, text.as_bytes()).expect_err("garbage refused");
            assert!(matches!(e, RecordError::Parse { .. }), "{e}");
        }
        assert!(parse(path, b"").expect("empty").is_empty());
    }
}
