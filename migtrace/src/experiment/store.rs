//! `results/<experiment>/`: the spec as run, per-migration records appended durably,
//! summaries, CSV. Re-running resumes; a changed spec is refused unless asked to start
//! over.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{
    design,
    spec::{Design, ExperimentSpec},
};
use crate::{
    files::{self, DirLock},
    measure::{
        quality::MEASURES,
        record::{self, MigrationRecord, RecordError, RecordWriter},
    },
    stats::{self, EffectDesign, ExperimentSummary},
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the spec of experiment {name} changed since {dir} was started (digest {old}, now {new}): \
         pass --force-new to start over (the old results are kept in {dir}.old-<time>)"
    )]
    SpecChanged { name: String, dir: PathBuf, old: String, new: String },
    #[error("{path}: {source}{}", crate::files::hint(.source))]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Locked(#[from] crate::files::LockError),
}

/// `experiment.json`: identifies the spec the results belong to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub digest: String,
    pub treatments: usize,
    pub repetitions: u32,
    pub created_unix: u64,
    pub migtrace_version: String,
}

pub struct Store {
    pub dir: PathBuf,
    /// Held by a run: no other run writes into `dir` meanwhile.
    lock: Option<DirLock>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

impl Store {
    /// Opens (or creates) `root/<name>/` for `spec`. `spec_text` is stored as run.
    pub fn open(root: &Path, spec: &ExperimentSpec, spec_text: &str, force_new: bool) -> Result<Self, StoreError> {
        Self::open_inner(root, spec, spec_text, force_new, false)
    }

    /// Opens the store for a run: as [`Store::open`], holding the directory's lock
    /// ([`DirLock`]) while the store lives, and checked to take files before anything
    /// long starts. A second run of the same experiment is refused, naming the first.
    pub fn open_for_run(
        root: &Path,
        spec: &ExperimentSpec,
        spec_text: &str,
        force_new: bool,
    ) -> Result<Self, StoreError> {
        Self::open_inner(root, spec, spec_text, force_new, true)
    }

    fn open_inner(
        root: &Path,
        spec: &ExperimentSpec,
        spec_text: &str,
        force_new: bool,
        lock: bool,
    ) -> Result<Self, StoreError> {
        let dir = root.join(&spec.raw.name);
        let mut held = if lock { Some(DirLock::acquire(&dir)?) } else { None };
        let manifest_path = dir.join("experiment.json");
        if let Ok(text) = fs::read_to_string(&manifest_path)
            && let Ok(old) = serde_json::from_str::<Manifest>(&text)
            && old.digest != spec.digest()
        {
            if !force_new {
                return Err(StoreError::SpecChanged {
                    name: spec.raw.name.clone(),
                    dir,
                    old: old.digest,
                    new: spec.digest(),
                });
            }
            let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let aside = PathBuf::from(format!("{}.old-{stamp}", dir.display()));
            fs::rename(&dir, &aside).map_err(io_err(&dir))?;
            // The lock went aside with the old results: take the new directory's before
            // letting go of it.
            if held.is_some() {
                held = Some(DirLock::acquire(&dir)?);
            }
        }
        files::create_dir(&dir).map_err(io_err(&dir))?;
        if held.is_some() {
            files::check_writable(&dir).map_err(io_err(&dir))?;
            remove_stale_temporaries(&dir);
            // Read before the writer opens it: a link there is named now, not misread.
            let records = dir.join(record::RECORDS_FILE);
            files::refuse_link(&records).map_err(io_err(&records))?;
        }
        if !manifest_path.exists() {
            let manifest = Manifest {
                name: spec.raw.name.clone(),
                digest: spec.digest(),
                treatments: design::expand(spec).len(),
                repetitions: spec.raw.repetitions,
                created_unix: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                migtrace_version: env!("CARGO_PKG_VERSION").into(),
            };
            write_atomic(&dir.join("spec.toml"), spec_text.as_bytes())?;
            write_atomic(&manifest_path, serde_json::to_string_pretty(&manifest).unwrap_or_default().as_bytes())?;
        }
        Ok(Self { dir, lock: held })
    }

    /// Whether this store holds its directory's lock (opened for a run).
    pub fn locked(&self) -> bool {
        self.lock.is_some()
    }

    pub fn records_path(&self) -> PathBuf {
        self.dir.join(record::RECORDS_FILE)
    }

    pub fn writer(&self) -> Result<RecordWriter, StoreError> {
        Ok(RecordWriter::open(&self.dir)?)
    }

    pub fn records(&self) -> Result<Vec<MigrationRecord>, StoreError> {
        if !self.records_path().exists() {
            return Ok(Vec::new());
        }
        Ok(record::read(&self.records_path())?)
    }

    /// (treatment, repetition) pairs already recorded: skipped on resume.
    pub fn done(&self) -> Result<BTreeSet<(String, u32)>, StoreError> {
        Ok(self.records()?.into_iter().map(|r| (r.treatment, r.repetition)).collect())
    }

    /// Recomputes and writes every summary from the records: `summary.json` (statistics,
    /// HDR histograms, Table II, effects), `treatments.csv`, `migrations.csv`. Returns the
    /// summary (the report layer draws `report.txt` and `report.html` from it).
    pub fn write_summaries(&self, spec: &ExperimentSpec) -> Result<ExperimentSummary, StoreError> {
        let records = self.records()?;
        let levels_of = levels_of(spec);
        let summary = stats::summarize(&records, &levels_of, &effect_design(spec));
        write_atomic(
            &self.dir.join("summary.json"),
            serde_json::to_string_pretty(&summary).unwrap_or_default().as_bytes(),
        )?;
        write_atomic(&self.dir.join("treatments.csv"), treatments_csv(&summary).as_bytes())?;
        write_atomic(&self.dir.join("migrations.csv"), migrations_csv(&records, &levels_of).as_bytes())?;
        Ok(summary)
    }
}

/// Every treatment of `spec` in run order, with its levels by factor name.
pub fn levels_of(spec: &ExperimentSpec) -> Vec<(String, BTreeMap<String, String>)> {
    design::expand(spec)
        .iter()
        .map(|t| (t.name(), t.levels.iter().map(|(f, l)| (f.to_string(), l.to_string())).collect()))
        .collect()
}

/// How `spec`'s factor effects are read.
pub fn effect_design(spec: &ExperimentSpec) -> EffectDesign {
    match spec.raw.design {
        Design::Factorial => EffectDesign::Factorial,
        Design::Sweep => {
            EffectDesign::Sweep { base: spec.base.iter().map(|(f, l)| (f.to_string(), l.to_string())).collect() }
        }
    }
}

/// Writes through a temporary file and a rename: readers never see a torn file, and a
/// failed write (a full disk) leaves the previous file as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    files::write_atomic(path, bytes).map_err(io_err(path))
}

/// Temporary files of [`files::write_atomic`] left by a process that was killed while
/// writing (`.<name>.tmp.<pid>.<random>`, or `.<name>.tmp.<pid>` from older versions;
/// the pid no longer running). Only the lock holder calls this: nobody else writes here.
fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix('.')
            .and_then(|n| n.rsplit_once(".tmp."))
            .and_then(|(_, rest)| rest.split('.').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn csv_line(fields: impl IntoIterator<Item = String>) -> String {
    let mut w = csv::WriterBuilder::new().has_headers(false).from_writer(Vec::new());
    let _ = w.write_record(fields.into_iter().collect::<Vec<_>>());
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

fn treatments_csv(s: &ExperimentSummary) -> String {
    let factors: Vec<String> = s.treatments.first().map(|t| t.levels.keys().cloned().collect()).unwrap_or_default();
    let mut header: Vec<String> = vec!["treatment".into()];
    header.extend(factors.iter().cloned());
    header.extend(
        ["migrations", "usable", "censored", "did_not_converge", "failed", "guest_crashed", "corrupted", "trace_loss"]
            .map(String::from),
    );
    for m in MEASURES {
        for stat in ["mean", "sd", "min", "p50", "p99", "p999", "max", "ci95_low", "ci95_high", "censored"] {
            header.push(format!("{}.{stat}", m.name));
        }
    }
    let mut out = csv_line(header);
    for t in &s.treatments {
        let mut row = vec![t.treatment.clone()];
        row.extend(factors.iter().map(|f| t.levels.get(f).cloned().unwrap_or_default()));
        row.extend(
            [
                t.migrations,
                t.usable,
                t.censored,
                t.did_not_converge,
                t.failed,
                t.guest_crashed,
                t.corrupted,
                t.trace_loss,
            ]
            .map(|n| n.to_string()),
        );
        for m in MEASURES {
            match t.measures.get(m.name) {
                // Empty cells where a figure does not exist (SD and CI of one value).
                Some(st) => row.extend(
                    [
                        Some(st.mean),
                        st.sd,
                        Some(st.min),
                        Some(st.p50),
                        Some(st.p99),
                        Some(st.p999),
                        Some(st.max),
                        st.ci95.map(|c| c.0),
                        st.ci95.map(|c| c.1),
                    ]
                    .map(|v| v.map_or(String::new(), |v| format!("{v:.3}")))
                    .into_iter()
                    // How many of the values are lower bounds (then so are the figures).
                    .chain(std::iter::once(st.censored.to_string())),
                ),
                None => row.extend(std::iter::repeat_n(String::new(), 10)),
            }
        }
        out.push_str(&csv_line(row));
    }
    out
}

fn migrations_csv(records: &[MigrationRecord], levels_of: &[(String, BTreeMap<String, String>)]) -> String {
    let factors: Vec<String> = levels_of.first().map(|(_, l)| l.keys().cloned().collect()).unwrap_or_default();
    let mut header: Vec<String> = vec!["treatment".into(), "repetition".into()];
    header.extend(factors.iter().cloned());
    header.extend(
        ["status", "direction", "start_unix_us", "guest_healthy", "category", "memory_mismatches"].map(String::from),
    );
    header.extend(MEASURES.iter().map(|m| format!("{}_ms", m.name)));
    let mut out = csv_line(header);
    for r in records {
        let levels = levels_of.iter().find(|(n, _)| n == &r.treatment).map(|(_, l)| l);
        let mut row = vec![r.treatment.clone(), r.repetition.to_string()];
        row.extend(factors.iter().map(|f| levels.and_then(|l| l.get(f)).cloned().unwrap_or_default()));
        row.push(format!("{:?}", r.outcome.status).to_lowercase());
        row.push(r.outcome.direction.clone());
        row.push(r.outcome.start_unix_us.to_string());
        row.push(r.guest.as_ref().is_none_or(|g| g.healthy()).to_string());
        row.push(
            serde_json::to_value(crate::measure::quality::category(r))
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
        );
        row.push(
            r.guest
                .as_ref()
                .and_then(|g| g.memory_check.as_ref())
                .map_or(String::new(), |m| m.corrupted_pages().to_string()),
        );
        row.extend(MEASURES.iter().map(|m| (m.get)(r).map_or(String::new(), |v| format!("{v:.3}"))));
        out.push_str(&csv_line(row));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = "name = \"store-test\"\nrepetitions = 2\n[factors]\nrate = [0, 1000]\nwset = [\"16M\"]\n";

    #[test]
    fn a_changed_spec_is_refused_unless_forced() {
        let root = std::env::temp_dir().join(format!("migtrace-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let spec = ExperimentSpec::parse(SPEC).expect("spec");
        let store = Store::open(&root, &spec, SPEC, false).expect("create");
        assert!(store.dir.join("spec.toml").is_file() && store.dir.join("experiment.json").is_file());
        // Same spec: opens again (resume).
        Store::open(&root, &spec, SPEC, false).expect("resume");
        let changed_text = SPEC.replace("repetitions = 2", "repetitions = 3");
        let changed = ExperimentSpec::parse(&changed_text).expect("spec");
        let err = Store::open(&root, &changed, &changed_text, false).err().expect("refused").to_string();
        assert!(err.contains("changed") && err.contains("--force-new"), "{err}");
        let fresh = Store::open(&root, &changed, &changed_text, true).expect("forced");
        assert_eq!(fs::read_to_string(fresh.dir.join("spec.toml")).expect("spec"), changed_text);
        let aside = fs::read_dir(&root)
            .expect("root")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".old-"))
            .count();
        assert_eq!(aside, 1, "old results moved aside, not deleted");
        fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn a_run_removes_stale_temporaries_and_refuses_a_linked_records_file() {
        let root = std::env::temp_dir().join(format!("migtrace-store-run-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let spec = ExperimentSpec::parse(SPEC).expect("spec");
        let dir = root.join("store-test");
        files::create_dir(&dir).expect("dir");
        // No process has pid u32::MAX: its temporaries are stale, in both name formats.
        let stale = [format!(".summary.json.tmp.{}.AbC123", u32::MAX), format!(".report.txt.tmp.{}", u32::MAX)];
        let live = format!(".summary.json.tmp.{}.XyZ789", std::process::id());
        for name in stale.iter().chain([&live]) {
            fs::write(dir.join(name), b"partial").expect("temporary");
        }
        drop(Store::open_for_run(&root, &spec, SPEC, false).expect("open"));
        for name in &stale {
            assert!(!dir.join(name).exists(), "{name} left");
        }
        assert!(dir.join(&live).exists(), "a live writer's temporary was removed");
        let victim = root.join("victim");
        fs::write(&victim, b"precious").expect("victim");
        let records = dir.join(record::RECORDS_FILE);
        std::os::unix::fs::symlink(&victim, &records).expect("symlink");
        let e = Store::open_for_run(&root, &spec, SPEC, false).err().expect("refused").to_string();
        assert!(e.starts_with(&format!("{}: a symbolic link", records.display())), "{e}");
        assert_eq!(fs::read(&victim).expect("victim"), b"precious");
        fs::remove_dir_all(&root).expect("cleanup");
    }
}
