//! `report.html`: an experiment as one self-contained page (inline SVG, no scripts, no
//! network), and every figure as its own SVG under `plots/`.
//!
//! The page holds the spec, the machine and the counts; per factor the paper's
//! single-variable plots (mean and 95 % CI per level); for every pair of numeric factors
//! heatmaps of the treatment means (the paper's surfaces); per treatment the downtime
//! methods side by side (every single migration), CDFs from the stored HDR histograms,
//! and the timelines of its median and worst migration; Table II and the effect tables;
//! and, when `migtrace model validate` has run on the directory, the downtime model's
//! held-out errors and its predicted-against-measured plot.
//! Each figure has its numbers in a table beside it: the page shows nothing the records
//! do not hold.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs, io,
    path::{Path, PathBuf},
};

use base64::Engine as _;
use hdrhistogram::{Histogram, serialization::Deserializer};
use statrs::distribution::{ContinuousCDF as _, StudentsT};

use super::plots::{
    self, BarKind, Cdf, CdfLine, EffectFigure, EffectPanel, Gantt, GanttBar, GanttMark, HeatCell, Heatmap, LevelPoint,
    PlotError, RoundBar, Rounds, Strip, StripMethod,
};
use crate::{
    experiment::spec::{Design, ExperimentSpec, Level},
    measure::{
        quality::{self, MEASURES},
        record::MigrationRecord,
        timeline::Host,
    },
    model::{
        self,
        validate::{self, VALIDATION_FILE, Validation},
    },
    stats::{EFFECT_MEASURES, EffectDesign, ExperimentSummary, Stats, TreatmentSummary},
};

#[derive(Debug, thiserror::Error)]
pub enum HtmlError {
    #[error(transparent)]
    Plot(#[from] PlotError),
    #[error("the model validation's plot: {0}")]
    Model(#[from] model::ModelError),
    #[error("{path}: {source}{}", crate::files::hint(.source))]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The page's file in an experiment directory, and the figures' directory.
pub const REPORT_FILE: &str = "report.html";
pub const PLOTS_DIR: &str = "plots";

/// Per-treatment sections (distributions, CDFs, timelines) inlined in the page; the
/// figures of the others are still written to `plots/`.
pub const MAX_TREATMENT_SECTIONS: usize = 60;

/// The figure of the model's held-out predictions under `plots/`.
pub const MODEL_FIGURE: &str = "model-validation.svg";

/// Facet combinations up to which heatmaps are drawn per level of the other factors;
/// beyond, a cell is the mean of the treatment means over them.
const MAX_FACETS: usize = 6;

/// What a report is made of.
pub struct Experiment<'a> {
    pub spec: &'a ExperimentSpec,
    /// The spec as run (`spec.toml`).
    pub spec_text: &'a str,
    /// Treatments the design plans, run or not.
    pub treatments: usize,
    /// How a factor's effect is read (the effect tables' rule: the per-factor plots
    /// read the same treatments).
    pub effects: &'a EffectDesign,
    pub records: &'a [MigrationRecord],
    pub summary: &'a ExperimentSummary,
    /// The directory's `validation.json` (`migtrace model validate`), if any.
    pub validation: Option<&'a Validation>,
}

/// A figure: its file under `plots/` and its SVG.
#[derive(Clone, Debug)]
pub struct Figure {
    pub file: String,
    pub svg: String,
}

pub struct Page {
    pub html: String,
    pub figures: Vec<Figure>,
}

/// Where a report went.
#[derive(Clone, Debug)]
pub struct Written {
    pub html: PathBuf,
    pub plots: PathBuf,
    pub figures: usize,
}

/// Renders the page and writes it with its figures into `dir` (`report.html`,
/// `plots/*.svg`; SVGs of an earlier report that this one does not draw are removed).
pub fn write(dir: &Path, e: &Experiment<'_>) -> Result<Written, HtmlError> {
    let page = render(e)?;
    let plots = dir.join(PLOTS_DIR);
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| HtmlError::Io { path, source }
    };
    crate::files::create_dir(&plots).map_err(io_err(&plots))?;
    let keep: std::collections::BTreeSet<&str> = page.figures.iter().map(|f| f.file.as_str()).collect();
    if let Ok(entries) = fs::read_dir(&plots) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".svg") && !keep.contains(name.as_str()) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    for f in &page.figures {
        let path = plots.join(&f.file);
        crate::files::write_atomic(&path, f.svg.as_bytes()).map_err(io_err(&path))?;
    }
    let html = dir.join(REPORT_FILE);
    crate::files::write_atomic(&html, page.html.as_bytes()).map_err(io_err(&html))?;
    Ok(Written { html, plots, figures: page.figures.len() })
}

/// Escapes text for HTML (and XML: the page is well-formed XML too).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A file-name-safe form of `s`.
fn slug(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' => c,
            '=' => '_',
            _ => '-',
        })
        .collect();
    out.truncate(80);
    out
}

/// `12.35`, or "–" for no value.
fn num(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.2}"))
}

fn ci(c: Option<(f64, f64)>) -> String {
    c.map_or_else(|| "–".into(), |(l, h)| format!("{l:.2} – {h:.2}"))
}

/// The record field behind a statistics measure (`downtime.vcpu.qmp` → `downtime_ms.vcpu`).
pub fn record_field(measure: &str) -> String {
    let base = measure.strip_suffix(".qmp").unwrap_or(measure);
    match base.split_once('.') {
        Some((family, m)) => format!("{family}_ms.{m}"),
        None => base.to_owned(),
    }
}

/// The raw value of a record's field (regardless of its evidence).
fn field_value(r: &MigrationRecord, field: &str) -> Option<f64> {
    let d = &r.downtime_ms;
    let m = &r.migration_time_ms;
    match field {
        "downtime_ms.ping" => d.ping,
        "downtime_ms.ping_max_gap" => d.ping_max_gap,
        "downtime_ms.probe_gap" => d.probe_gap,
        "downtime_ms.vcpu" => d.vcpu,
        "downtime_ms.reported" => d.reported,
        "migration_time_ms.command" => m.command,
        "migration_time_ms.reported" => m.reported,
        "migration_time_ms.traced" => m.traced,
        "migration_time_ms.traced_to_resume" => m.traced_to_resume,
        _ => None,
    }
}

fn measure(name: &str) -> Option<&'static quality::Measure> {
    MEASURES.iter().find(|m| m.name == name)
}

/// Factors the experiment varies (two levels or more), in spec order.
fn varied(spec: &ExperimentSpec) -> Vec<(String, Vec<String>, bool)> {
    spec.factors
        .iter()
        .filter(|(_, levels)| levels.len() >= 2)
        .map(|(f, levels)| {
            let numeric = levels.iter().all(|l| matches!(l, Level::Number(_)));
            (f.to_string(), levels.iter().map(Level::to_string).collect(), numeric)
        })
        .collect()
}

/// The 95 % confidence interval of the mean of treatment means `stats` (each over its
/// own migrations): standard error √(Σ sᵢ²/nᵢ) / k, Welch–Satterthwaite degrees of
/// freedom, Student's t. For one treatment it is that treatment's interval. `None` when
/// a treatment has a single migration (no standard deviation).
pub fn mean_of_means_ci(stats: &[&Stats]) -> Option<(f64, f64)> {
    let k = stats.len();
    if k == 0 {
        return None;
    }
    let mean = stats.iter().map(|s| s.mean).sum::<f64>() / k as f64;
    let mut vars = Vec::with_capacity(k);
    for s in stats {
        let sd = s.sd?;
        vars.push((sd * sd / s.n as f64, s.n));
    }
    let total: f64 = vars.iter().map(|v| v.0).sum();
    if total == 0.0 {
        return Some((mean, mean));
    }
    let se = total.sqrt() / k as f64;
    let df = total * total / vars.iter().map(|(v, n)| v * v / (*n as f64 - 1.0)).sum::<f64>();
    let t = StudentsT::new(0.0, 1.0, df).map(|d| d.inverse_cdf(0.975)).ok()?;
    Some((mean - t * se, mean + t * se))
}

impl Experiment<'_> {
    /// Treatments whose `factor` is at `level` that show its effect ([`EffectDesign::shows`]).
    fn at_level(&self, factor: &str, level: &str) -> Vec<&TreatmentSummary> {
        self.summary
            .treatments
            .iter()
            .filter(|t| t.levels.get(factor).is_some_and(|l| l == level))
            .filter(|t| self.effects.shows(factor, &t.levels))
            .collect()
    }

    /// The paper's single-variable plot of `measure` over `factor`: per level the mean of
    /// the treatment means (as the effect tables) and its 95 % CI
    /// ([`mean_of_means_ci`]). Levels without a value are left out.
    pub fn effect_points(&self, factor: &str, levels: &[String], measure: &str) -> Vec<LevelPoint> {
        levels
            .iter()
            .filter_map(|level| {
                let ts = self.at_level(factor, level);
                let st: Vec<&Stats> = ts.iter().filter_map(|t| t.measures.get(measure)).collect();
                if st.is_empty() {
                    return None;
                }
                Some(LevelPoint {
                    level: level.clone(),
                    mean: st.iter().map(|s| s.mean).sum::<f64>() / st.len() as f64,
                    ci95: mean_of_means_ci(&st),
                    n: st.iter().map(|s| s.n).sum(),
                    treatments: st.len(),
                })
            })
            .collect()
    }

    /// Heatmaps of the [`EFFECT_MEASURES`] for every pair of numeric factors (factorial
    /// designs only): per combination of the other factors' levels when there are few,
    /// else each cell the mean of the treatment means over them.
    pub fn heatmaps(&self) -> Vec<Heatmap> {
        if self.spec.raw.design != Design::Factorial {
            return Vec::new();
        }
        let factors = varied(self.spec);
        let mut out = Vec::new();
        for (i, (yf, ylevels, ynum)) in factors.iter().enumerate() {
            for (xf, xlevels, xnum) in &factors[i + 1..] {
                if !ynum || !xnum {
                    continue;
                }
                let others: Vec<&(String, Vec<String>, bool)> =
                    factors.iter().filter(|(f, _, _)| f != yf && f != xf).collect();
                let combos: usize = others.iter().map(|o| o.1.len()).product();
                let facets: Vec<Vec<(String, String)>> = if combos <= MAX_FACETS {
                    others.iter().fold(vec![Vec::new()], |acc, (f, levels, _)| {
                        acc.into_iter()
                            .flat_map(|partial| {
                                levels.iter().map(move |l| {
                                    let mut p = partial.clone();
                                    p.push((f.clone(), l.clone()));
                                    p
                                })
                            })
                            .collect()
                    })
                } else {
                    vec![Vec::new()]
                };
                for m in EFFECT_MEASURES {
                    for facet in &facets {
                        let mut cells = Vec::new();
                        for (x, xl) in xlevels.iter().enumerate() {
                            for (y, yl) in ylevels.iter().enumerate() {
                                let st: Vec<&Stats> = self
                                    .summary
                                    .treatments
                                    .iter()
                                    .filter(|t| t.levels.get(xf) == Some(xl) && t.levels.get(yf) == Some(yl))
                                    .filter(|t| facet.iter().all(|(f, l)| t.levels.get(f) == Some(l)))
                                    .filter_map(|t| t.measures.get(*m))
                                    .collect();
                                if st.is_empty() {
                                    continue;
                                }
                                cells.push(HeatCell {
                                    x,
                                    y,
                                    mean: st.iter().map(|s| s.mean).sum::<f64>() / st.len() as f64,
                                    n: st.iter().map(|s| s.n).sum(),
                                    treatments: st.len(),
                                });
                            }
                        }
                        let facet_text = if facet.is_empty() && !others.is_empty() {
                            format!(
                                ", mean over {}",
                                others.iter().map(|o| o.0.as_str()).collect::<Vec<_>>().join(", ")
                            )
                        } else if facet.is_empty() {
                            String::new()
                        } else {
                            format!(
                                ", {}",
                                facet.iter().map(|(f, l)| format!("{f}={l}")).collect::<Vec<_>>().join(", ")
                            )
                        };
                        out.push(Heatmap {
                            title: format!("{} ms over {xf} × {yf}{facet_text}", plots::label(m)),
                            measure: (*m).to_owned(),
                            x_factor: xf.clone(),
                            y_factor: yf.clone(),
                            x_levels: xlevels.clone(),
                            y_levels: ylevels.clone(),
                            facet: facet.clone(),
                            cells,
                        });
                    }
                }
            }
        }
        out
    }

    fn usable_of(&self, treatment: &str) -> Vec<&MigrationRecord> {
        self.records.iter().filter(|r| r.treatment == treatment && quality::usable(r)).collect()
    }

    /// The downtime methods of one treatment side by side, and why values are missing.
    pub fn methods(&self, t: &TreatmentSummary) -> (Strip, Vec<Missing>) {
        let usable = self.usable_of(&t.treatment);
        let mut methods = Vec::new();
        let mut missing = Vec::new();
        for m in MEASURES.iter().filter(|m| m.name.starts_with("downtime.")) {
            let values: Vec<f64> = usable.iter().filter_map(|r| (m.get)(r)).filter(|v| v.is_finite()).collect();
            let qmp = m.name.ends_with(".qmp");
            if qmp && values.is_empty() {
                continue;
            }
            let field = record_field(m.name);
            let without: Vec<&&MigrationRecord> =
                if qmp { Vec::new() } else { usable.iter().filter(|r| field_value(r, &field).is_none()).collect() };
            if !without.is_empty() {
                let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
                for r in &without {
                    let prefix = format!("{field}:");
                    let why = r
                        .missing
                        .iter()
                        .find_map(|x| x.strip_prefix(&prefix).map(|w| w.trim().to_owned()))
                        .unwrap_or_else(|| "no reason recorded".to_owned());
                    *reasons.entry(why).or_default() += 1;
                }
                missing.push(Missing { measure: m.name.to_owned(), count: without.len(), reasons });
            }
            methods.push(StripMethod { measure: m.name.to_owned(), values, missing: without.len() });
        }
        (Strip { title: format!("downtime by method: {}", t.treatment), methods }, missing)
    }

    /// The usable migrations of a treatment whose timelines are shown: the median and
    /// the worst by the probe gap (else the ping's largest gap, the vCPU blackout, the
    /// command's time), the median by nearest rank as in the statistics.
    pub fn chosen(&self, treatment: &str) -> Vec<Chosen<'_>> {
        let usable = self.usable_of(treatment);
        for name in ["downtime.probe_gap", "downtime.ping_max_gap", "downtime.vcpu", "migration_time.command"] {
            let Some(m) = measure(name) else { continue };
            let mut with: Vec<(f64, &MigrationRecord)> =
                usable.iter().filter_map(|r| Some(((m.get)(r)?, *r))).filter(|(v, _)| v.is_finite()).collect();
            if with.is_empty() {
                continue;
            }
            with.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.repetition.cmp(&b.1.repetition)));
            let n = with.len();
            let median = with[n.div_ceil(2) - 1];
            let worst = with[n - 1];
            let mut out = vec![Chosen { which: "median", by: name, value: median.0, record: median.1 }];
            if worst.1.repetition != median.1.repetition {
                out.push(Chosen { which: "worst", by: name, value: worst.0, record: worst.1 });
            }
            return out;
        }
        Vec::new()
    }
}

/// Usable migrations without a measure, and the reasons their records give.
#[derive(Clone, Debug, PartialEq)]
pub struct Missing {
    pub measure: String,
    pub count: usize,
    pub reasons: BTreeMap<String, usize>,
}

/// A migration picked for its timeline.
#[derive(Clone, Copy, Debug)]
pub struct Chosen<'a> {
    /// `median` or `worst`.
    pub which: &'static str,
    /// The measure it was picked by, and its value.
    pub by: &'static str,
    pub value: f64,
    pub record: &'a MigrationRecord,
}

/// Decodes a stored histogram (base64 of V2-deflate, µs).
pub fn decode_histogram(encoded: &str) -> Result<Histogram<u64>, String> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|e| format!("base64: {e}"))?;
    Deserializer::new().deserialize(&mut bytes.as_slice()).map_err(|e| format!("{e:?}"))
}

/// CDF lines of the downtime measures from stored histograms; what could not be read.
pub fn cdf_of(title: &str, histograms: &BTreeMap<String, String>) -> (Cdf, Vec<String>) {
    let mut lines = Vec::new();
    let mut problems = Vec::new();
    for m in MEASURES.iter().filter(|m| m.name.starts_with("downtime.")) {
        let Some(encoded) = histograms.get(m.name) else { continue };
        match decode_histogram(encoded) {
            Ok(h) if !h.is_empty() => {
                let total = h.len() as f64;
                let mut seen = 0u64;
                let points = h
                    .iter_recorded()
                    .map(|v| {
                        seen += v.count_at_value();
                        (v.value_iterated_to() as f64 / 1000.0, seen as f64 / total)
                    })
                    .collect();
                lines.push(CdfLine { measure: m.name.to_owned(), n: h.len(), points });
            }
            Ok(_) => {}
            Err(e) => problems.push(format!("the histogram of {} could not be read: {e}", m.name)),
        }
    }
    (Cdf { title: title.to_owned(), lines }, problems)
}

fn host_name(h: Host) -> &'static str {
    match h {
        Host::Source => "source",
        Host::Destination => "destination",
        Host::Network => "network",
    }
}

/// A migration's phases on both hosts and the network as a Gantt chart: main chain and
/// the phases beside it per host, the guest's silence (probe gap, ping gap), and the
/// instants the vCPUs stopped and ran again.
pub fn gantt_of(r: &MigrationRecord, title: &str) -> Option<Gantt> {
    let t = r.timeline.as_ref()?;
    let mut bars: Vec<GanttBar> = t
        .phases
        .iter()
        .map(|p| GanttBar {
            row: format!("{}{}", host_name(p.host), if p.parallel { " · beside" } else { "" }),
            label: p.name.clone(),
            start_ms: p.start_ms,
            end_ms: p.start_ms + p.duration_ms,
            kind: BarKind::Phase,
        })
        .collect();
    if let Some(p) = &r.probe
        && let (Some(start), Some(gap)) = (p.gap_start_ms, r.downtime_ms.probe_gap)
    {
        bars.push(GanttBar {
            row: "guest not heard".into(),
            label: "probe gap".into(),
            start_ms: start,
            end_ms: start + gap,
            kind: BarKind::Gap,
        });
    }
    if let Some(p) = &r.ping
        && let (Some(start), Some(gap)) = (p.gap_start_ms, r.downtime_ms.ping_max_gap)
    {
        bars.push(GanttBar {
            row: "guest not heard".into(),
            label: "ping gap".into(),
            start_ms: start,
            end_ms: start + gap,
            kind: BarKind::Gap,
        });
    }
    let order = ["source", "source · beside", "destination", "destination · beside", "network", "network · beside"];
    let mut rows: Vec<String> =
        order.iter().filter(|o| bars.iter().any(|b| b.row == **o)).map(|o| (*o).to_owned()).collect();
    if bars.iter().any(|b| b.row == "guest not heard") {
        rows.push("guest not heard".into());
    }
    let at = |ns: Option<u64>| ns.map(|v| (v as f64 - t.marks.command_ns as f64) / 1e6);
    let mut marks = Vec::new();
    if let Some(x) = at(t.marks.source_paused_ns) {
        marks.push(GanttMark { label: "vCPUs stopped".into(), at_ms: x });
    }
    if let Some(x) = at(t.marks.destination_resumed_ns) {
        marks.push(GanttMark { label: "vCPUs running".into(), at_ms: x });
    }
    let whole = bars.iter().map(|b| b.end_ms).fold(0.0f64, f64::max);
    let switch: Vec<&GanttBar> = bars
        .iter()
        .filter(|b| {
            b.kind == BarKind::Gap
                || ["vm-stop", "stop-and-copy", "destination load", "resume", "destination load + resume"]
                    .contains(&b.label.as_str())
        })
        .collect();
    let a = switch.iter().map(|b| b.start_ms).fold(f64::INFINITY, f64::min);
    let b = switch.iter().map(|b| b.end_ms).fold(f64::NEG_INFINITY, f64::max);
    let zoom = (a.is_finite() && b > a && (b - a) < whole * 0.5).then(|| {
        let pad = (b - a) * 0.1;
        (a - pad, b + pad)
    });
    Some(Gantt { title: title.to_owned(), rows, bars, marks, zoom })
}

pub fn rounds_of(r: &MigrationRecord, title: &str) -> Option<Rounds> {
    let t = r.timeline.as_ref()?;
    if t.rounds.is_empty() {
        return None;
    }
    let tcg = r.machine.as_ref().is_some_and(|m| m.accelerator == "tcg");
    Some(Rounds {
        title: title.to_owned(),
        kvm_note: tcg.then(|| "none, the guest ran under TCG (no KVM)".to_owned()),
        rounds: t
            .rounds
            .iter()
            .map(|x| RoundBar {
                round: x.round,
                final_round: x.final_round,
                remaining_mib: x.remaining_bytes.map(|b| b as f64 / (1u64 << 20) as f64),
                sync_ms: x.sync_ms,
                kvm: x
                    .kvm
                    .iter()
                    .filter(|k| ["get-dirty-log", "clear-dirty-log", "reset-dirty-rings"].contains(&k.what.as_str()))
                    .map(|k| (k.what.clone(), k.counts.count))
                    .collect(),
            })
            .collect(),
    })
}

/// An HTML table: `id`, header, rows of already escaped cells.
fn table(out: &mut String, id: &str, class: &str, header: &[&str], rows: &[Vec<String>]) {
    let _ = write!(out, "<table id=\"{}\" class=\"{class}\"><thead><tr>", esc(id));
    for h in header {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for c in row {
            let _ = write!(out, "<td>{c}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>\n");
}

/// Strips what must not appear inside an HTML page from a plotters SVG (an XML
/// declaration, if any).
fn inline_svg(svg: &str) -> &str {
    match svg.find("<svg") {
        Some(i) => &svg[i..],
        None => svg,
    }
}

struct Builder {
    html: String,
    figures: Vec<Figure>,
}

impl Builder {
    /// Adds a figure: its SVG inline, its caption, its data table (already rendered).
    fn figure(&mut self, file: String, svg: String, caption: &str, data: &str) {
        let id = file.trim_end_matches(".svg").to_owned();
        let _ = write!(
            self.html,
            "<figure id=\"{id}\">{}<figcaption>{} <a href=\"{PLOTS_DIR}/{file}\">{PLOTS_DIR}/{file}</a></figcaption>",
            inline_svg(&svg),
            esc(caption),
            id = esc(&id),
            file = esc(&file),
        );
        if !data.is_empty() {
            let _ = write!(self.html, "<details><summary>data</summary>{data}</details>");
        }
        self.html.push_str("</figure>\n");
        self.figures.push(Figure { file, svg });
    }
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em auto;max-width:1500px;padding:0 1em;color:#222}\
h1{font-size:1.6em}h2{border-bottom:1px solid #bbb;margin-top:2em}h3{margin-top:1.5em}\
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.2em .5em}\
td{text-align:right}td:first-child{text-align:left}th{background:#f0f0f0}\
figure{display:inline-block;vertical-align:top;margin:.5em 1em .5em 0;max-width:100%}\
figure svg{max-width:100%;height:auto}figcaption{font-size:.85em;color:#444;max-width:1000px}\
pre{background:#f6f6f6;padding:.6em;overflow-x:auto}.note{color:#555;font-size:.9em}\
nav a{margin-right:1em}details summary{cursor:pointer;font-size:.85em;color:#06c}";

/// Renders the page and its figures.
pub fn render(e: &Experiment<'_>) -> Result<Page, HtmlError> {
    let s = e.summary;
    let name = &e.spec.raw.name;
    let mut b = Builder { html: String::new(), figures: Vec::new() };
    let _ = write!(
        b.html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>\
         <title>migtrace: {n}</title><style>{STYLE}</style></head><body>\n\
         <h1>migtrace experiment {n}</h1>\n<nav><a href=\"#overview\">overview</a><a href=\"#effects\">factor effects</a>\
         <a href=\"#heatmaps\">heatmaps</a><a href=\"#cdf\">CDFs</a><a href=\"#treatments\">treatments</a>\
         <a href=\"#tables\">Table II and effects</a>{m}</nav>\n",
        n = esc(name),
        m = if e.validation.is_some() { "<a href=\"#model\">downtime model</a>" } else { "" },
    );
    overview(&mut b.html, e);
    effects_section(&mut b, e)?;
    heatmap_section(&mut b, e)?;
    cdf_section(&mut b, e)?;
    treatments_section(&mut b, e)?;
    tables_section(&mut b.html, s);
    if let Some(v) = e.validation {
        model_section(&mut b, v)?;
    }
    b.html.push_str("</body></html>\n");
    Ok(Page { html: b.html, figures: b.figures })
}

fn overview(out: &mut String, e: &Experiment<'_>) {
    let s = e.summary;
    let spec = &e.spec.raw;
    let treatments = e.treatments;
    out.push_str("<section id=\"overview\"><h2>Overview</h2>\n");
    let _ = writeln!(
        out,
        "<p>{} design, {treatments} treatments × {} repetitions ({} order); backend {}. Statistics are over usable \
         migrations only: completed, healthy guest, intact memory, no ring-buffer loss.</p>",
        esc(&format!("{:?}", spec.design).to_lowercase()),
        spec.repetitions,
        esc(&format!("{:?}", spec.order).to_lowercase()),
        esc(&spec.backend),
    );
    let planned = treatments * spec.repetitions as usize;
    let rows = vec![
        vec!["planned".into(), planned.to_string()],
        vec!["run".into(), s.migrations.to_string()],
        vec!["usable".into(), s.usable.to_string()],
        vec!["did not converge (pre-copy still running at the timeout)".into(), s.did_not_converge.to_string()],
        vec!["failed (migration failed, or timed out in its switchover)".into(), s.failed.to_string()],
        vec!["guest crashed, rebooted or silent".into(), s.guest_crashed.to_string()],
        vec!["guest memory corrupted".into(), s.corrupted.to_string()],
        vec!["ring-buffer loss".into(), s.trace_loss.to_string()],
    ];
    out.push_str("<h3>Migrations</h3>\n");
    table(out, "counts", "counts", &["migrations", "count"], &rows);
    let rows: Vec<Vec<String>> = s
        .treatments
        .iter()
        .map(|t| {
            vec![
                esc(&t.treatment),
                t.migrations.to_string(),
                t.usable.to_string(),
                t.did_not_converge.to_string(),
                t.failed.to_string(),
                t.guest_crashed.to_string(),
                t.corrupted.to_string(),
                t.trace_loss.to_string(),
            ]
        })
        .collect();
    table(
        out,
        "treatment-counts",
        "counts",
        &[
            "treatment",
            "run",
            "usable",
            "did not converge",
            "failed",
            "guest crashed/silent",
            "corrupted",
            "ring-buffer loss",
        ],
        &rows,
    );
    // Machines: what the records say both hosts ran.
    let mut machines: Vec<(Option<&crate::hypervisor::Machine>, usize)> = Vec::new();
    for r in e.records {
        match machines.iter_mut().find(|(m, _)| *m == r.machine.as_ref()) {
            Some(entry) => entry.1 += 1,
            None => machines.push((r.machine.as_ref(), 1)),
        }
    }
    out.push_str("<h3>Machine</h3>\n");
    let rows: Vec<Vec<String>> = machines
        .iter()
        .map(|(m, n)| match m {
            Some(m) => vec![
                esc(&format!("{} {}", m.hypervisor, m.version)),
                esc(&m.description),
                esc(&m.binary),
                esc(&match &m.accelerator_reason {
                    Some(why) => format!("{} ({why})", m.accelerator),
                    None => m.accelerator.clone(),
                }),
                format!("{:.0}", m.ram_bytes as f64 / (1u64 << 20) as f64),
                m.vcpus.to_string(),
                esc(&m.host_kernel),
                esc(&if m.workarounds.is_empty() { "none".to_owned() } else { m.workarounds.join("; ") }),
                n.to_string(),
            ],
            None => {
                let mut row = vec!["not recorded".to_owned()];
                row.extend(std::iter::repeat_n("–".to_owned(), 7));
                row.push(n.to_string());
                row
            }
        })
        .collect();
    table(
        out,
        "machine",
        "machine",
        &[
            "hypervisor",
            "build",
            "binary",
            "accelerator",
            "guest RAM MiB",
            "vCPUs",
            "host kernel",
            "workarounds",
            "migrations",
        ],
        &rows,
    );
    let _ = write!(out, "<h3>Spec</h3>\n<pre id=\"spec\">{}</pre>\n</section>\n", esc(e.spec_text));
}

fn effects_section(b: &mut Builder, e: &Experiment<'_>) -> Result<(), HtmlError> {
    let how = if e.spec.raw.design == Design::Sweep {
        "each level's treatment with every other factor at its base level"
    } else {
        "the mean of the treatment means at the level (the main effect)"
    };
    let _ = write!(
        b.html,
        "<section id=\"effects\"><h2>Factor effects</h2>\n<p class=\"note\">Per level: {how}, with its 95 % \
         confidence interval (Student's t; for several treatments the standard error of the mean of their means, \
         Welch–Satterthwaite degrees of freedom; none where a treatment has a single migration). n: usable \
         migrations behind the point. Levels are equally spaced on the axis.</p>\n"
    );
    let factors = varied(e.spec);
    if factors.is_empty() {
        b.html.push_str("<p>No factor has more than one level.</p>\n");
    }
    for (factor, levels, _) in &factors {
        for (family, title) in [("downtime.", "downtime"), ("migration_time.", "migration time")] {
            let panels: Vec<EffectPanel> = MEASURES
                .iter()
                .filter(|m| m.name.starts_with(family))
                .map(|m| EffectPanel { measure: m.name.to_owned(), points: e.effect_points(factor, levels, m.name) })
                .filter(|p| !p.points.is_empty())
                .collect();
            if panels.is_empty() {
                continue;
            }
            let fig =
                EffectFigure { title: format!("{title} by {factor} (mean, 95 % CI)"), factor: factor.clone(), panels };
            let rows: Vec<Vec<String>> = fig
                .panels
                .iter()
                .flat_map(|p| {
                    p.points.iter().map(|x| {
                        vec![
                            esc(&p.measure),
                            esc(&x.level),
                            num(Some(x.mean)),
                            ci(x.ci95),
                            x.n.to_string(),
                            x.treatments.to_string(),
                        ]
                    })
                })
                .collect();
            let file = format!("effect-{}-{}.svg", slug(factor), slug(title));
            let mut data = String::new();
            table(
                &mut data,
                &format!("{}-data", file.trim_end_matches(".svg")),
                "data",
                &["measure", factor, "mean ms", "95 % CI ms", "n", "treatments"],
                &rows,
            );
            let svg = plots::effect_figure(&fig)?;
            b.figure(file, svg, &format!("{} over the levels of {factor}.", title), &data);
        }
    }
    b.html.push_str("</section>\n");
    Ok(())
}

fn heatmap_section(b: &mut Builder, e: &Experiment<'_>) -> Result<(), HtmlError> {
    b.html.push_str("<section id=\"heatmaps\"><h2>Heatmaps of treatment means</h2>\n");
    let maps = e.heatmaps();
    if e.spec.raw.design != Design::Factorial {
        b.html.push_str("<p>A sweep varies one factor at a time: there are no pairs of factors to map.</p>\n");
    } else if maps.is_empty() {
        b.html.push_str("<p>Fewer than two numeric factors with more than one level: nothing to map.</p>\n");
    } else {
        b.html.push_str(
            "<p class=\"note\">The paper's surfaces (downtime and migration time over RATE × WSET per VMSIZE) as \
             heatmaps: each cell the mean of a treatment's usable migrations (or of the treatment means over the \
             factors named in the title), n its migrations; grey cells have no usable migration.</p>\n",
        );
    }
    for (i, h) in maps.iter().enumerate() {
        let rows: Vec<Vec<String>> = h
            .cells
            .iter()
            .map(|c| {
                vec![
                    esc(&h.x_levels[c.x]),
                    esc(&h.y_levels[c.y]),
                    num(Some(c.mean)),
                    c.n.to_string(),
                    c.treatments.to_string(),
                ]
            })
            .collect();
        let facet: String = h.facet.iter().map(|(f, l)| format!("-{}", slug(&format!("{f}={l}")))).collect();
        let file = format!(
            "heatmap-{:02}-{}-{}-x-{}{facet}.svg",
            i + 1,
            slug(&h.measure),
            slug(&h.y_factor),
            slug(&h.x_factor)
        );
        let mut data = String::new();
        table(
            &mut data,
            &format!("{}-data", file.trim_end_matches(".svg")),
            "data",
            &[&h.x_factor, &h.y_factor, "mean ms", "n", "treatments"],
            &rows,
        );
        let svg = plots::heatmap(h)?;
        b.figure(file, svg, &h.title, &data);
    }
    b.html.push_str("</section>\n");
    Ok(())
}

fn cdf_table(id: &str, c: &Cdf) -> String {
    let rows: Vec<Vec<String>> = c
        .lines
        .iter()
        .map(|l| {
            let first = l.points.first().map(|p| p.0);
            let at = |q: f64| l.points.iter().find(|p| p.1 >= q).map(|p| p.0);
            vec![
                esc(&l.measure),
                l.n.to_string(),
                num(first),
                num(at(0.5)),
                num(at(0.9)),
                num(l.points.last().map(|p| p.0)),
            ]
        })
        .collect();
    let mut out = String::new();
    table(&mut out, id, "data", &["measure", "n", "min ms", "median ms", "90 % ms", "max ms"], &rows);
    out
}

fn cdf_section(b: &mut Builder, e: &Experiment<'_>) -> Result<(), HtmlError> {
    b.html.push_str(
        "<section id=\"cdf\"><h2>Downtime distributions over all treatments</h2>\n<p class=\"note\">Cumulative \
         distributions from the stored HDR histograms (µs, 3 significant digits: exact below 2 ms, each value \
         within 0.1 % above), over every usable migration. The table reads the same histograms.</p>\n",
    );
    let (c, problems) = cdf_of("downtime CDF per method, all treatments", &e.summary.histograms);
    for p in problems {
        let _ = writeln!(b.html, "<p class=\"note\">{}</p>", esc(&p));
    }
    if c.lines.is_empty() {
        b.html.push_str("<p>No usable migration has a downtime figure.</p>\n");
    } else {
        let data = cdf_table("cdf-all-data", &c);
        b.figure("cdf-all.svg".into(), plots::cdf(&c)?, "Downtime CDF per method over all usable migrations.", &data);
    }
    b.html.push_str("</section>\n");
    Ok(())
}

fn treatments_section(b: &mut Builder, e: &Experiment<'_>) -> Result<(), HtmlError> {
    b.html.push_str(
        "<section id=\"treatments\"><h2>Treatments</h2>\n<p class=\"note\">Per treatment: every usable migration's \
         downtime by each method (the 50 ms ping's quantisation and QEMU's source-only figure show here), the CDFs \
         from its histograms, and the timelines of its median and worst migration (by the probe gap) on one time \
         axis per migration, with the pre-copy rounds.</p>\n",
    );
    let total = e.summary.treatments.len();
    if total > MAX_TREATMENT_SECTIONS {
        let _ = writeln!(
            b.html,
            "<p class=\"note\">The first {MAX_TREATMENT_SECTIONS} of {total} treatments are shown here; the figures of \
             all are in {PLOTS_DIR}/.</p>"
        );
    }
    for (i, t) in e.summary.treatments.iter().enumerate() {
        let start = b.html.len();
        let tag = format!("t{:03}-{}", i + 1, slug(&t.treatment));
        let _ = writeln!(
            b.html,
            "<section id=\"{}\"><h3>{}</h3><p>{} migrations, {} usable.</p>",
            esc(&tag),
            esc(&t.treatment),
            t.migrations,
            t.usable
        );
        let (strip, missing) = e.methods(t);
        let rows: Vec<Vec<String>> = strip
            .methods
            .iter()
            .map(|m| {
                let st = t.measures.get(&m.measure);
                let reasons = missing
                    .iter()
                    .find(|x| x.measure == m.measure)
                    .map(|x| x.reasons.iter().map(|(why, k)| format!("{k}× {why}")).collect::<Vec<_>>().join("; "))
                    .unwrap_or_default();
                vec![
                    esc(&m.measure),
                    m.values.len().to_string(),
                    num(st.map(|s| s.mean)),
                    ci(st.and_then(|s| s.ci95)),
                    num(st.map(|s| s.min)),
                    num(st.map(|s| s.p50)),
                    num(st.map(|s| s.max)),
                    esc(&m.values.iter().map(|v| format!("{v:.2}")).collect::<Vec<_>>().join(", ")),
                    if m.missing == 0 { "0".into() } else { format!("{} missing ({})", m.missing, esc(&reasons)) },
                ]
            })
            .collect();
        let mut data = String::new();
        table(
            &mut data,
            &format!("{tag}-methods-data"),
            "data",
            &["measure", "n", "mean ms", "95 % CI ms", "min ms", "p50 ms", "max ms", "values ms", "missing"],
            &rows,
        );
        b.figure(
            format!("{tag}-methods.svg"),
            plots::strip(&strip)?,
            "Downtime by method, one dot per usable migration.",
            &data,
        );
        let (c, problems) = cdf_of(&format!("downtime CDF: {}", t.treatment), &t.histograms);
        for p in problems {
            let _ = writeln!(b.html, "<p class=\"note\">{}</p>", esc(&p));
        }
        if !c.lines.is_empty() {
            let data = cdf_table(&format!("{tag}-cdf-data"), &c);
            b.figure(format!("{tag}-cdf.svg"), plots::cdf(&c)?, "Downtime CDF per method (HDR histograms).", &data);
        }
        let chosen = e.chosen(&t.treatment);
        if chosen.is_empty() {
            b.html.push_str("<p>No usable migration to show a timeline of.</p>\n");
        }
        if chosen.len() == 1 {
            b.html.push_str("<p class=\"note\">The median migration is also the worst.</p>\n");
        }
        for c in &chosen {
            let r = c.record;
            let title = format!(
                "{} migration (repetition {}, {} {:.2} ms): {}",
                c.which, r.repetition, c.by, c.value, t.treatment
            );
            let Some(g) = gantt_of(r, &title) else {
                let _ = writeln!(b.html, "<p>{}: the record has no timeline.</p>", esc(&title));
                continue;
            };
            let rows: Vec<Vec<String>> = g
                .bars
                .iter()
                .map(|x| {
                    vec![
                        esc(&x.label),
                        esc(&x.row),
                        format!("{:.3}", x.start_ms),
                        format!("{:.3}", x.end_ms - x.start_ms),
                    ]
                })
                .chain(
                    g.marks.iter().map(|m| vec![esc(&m.label), "mark".into(), format!("{:.3}", m.at_ms), "–".into()]),
                )
                .collect();
            let mut data = String::new();
            let stem = format!("{tag}-timeline-{}", c.which);
            table(&mut data, &format!("{stem}-data"), "data", &["phase", "row", "start ms", "duration ms"], &rows);
            let d = &r.downtime_ms;
            let caption = format!(
                "Phases on both hosts and the network. Downtime ms: ping {} | ping largest gap {} | probe gap {} | \
                 vCPU {} | reported {}.",
                num(d.ping),
                num(d.ping_max_gap),
                num(d.probe_gap),
                num(d.vcpu),
                num(d.reported)
            );
            b.figure(format!("{stem}.svg"), plots::gantt(&g)?, &caption, &data);
            if let Some(rounds) = rounds_of(r, &format!("pre-copy rounds of the {} migration", c.which)) {
                let tcg = r.machine.as_ref().is_some_and(|m| m.accelerator == "tcg");
                let rows: Vec<Vec<String>> = rounds
                    .rounds
                    .iter()
                    .map(|x| {
                        vec![
                            format!("{}{}", x.round, if x.final_round { " (final)" } else { "" }),
                            num(x.remaining_mib),
                            x.sync_ms.map_or_else(|| "–".into(), |v| format!("{v:.3}")),
                            if x.kvm.is_empty() {
                                if tcg { "none (TCG)".into() } else { "–".into() }
                            } else {
                                esc(&x.kvm.iter().map(|(w, n)| format!("{w} ×{n}")).collect::<Vec<_>>().join(", "))
                            },
                        ]
                    })
                    .collect();
                let mut data = String::new();
                table(
                    &mut data,
                    &format!("{stem}-rounds-data"),
                    "data",
                    &["round", "remaining MiB", "sync ms", "KVM dirty-log ioctls"],
                    &rows,
                );
                b.figure(
                    format!("{stem}-rounds.svg"),
                    plots::rounds(&rounds)?,
                    "Per pre-copy round: QEMU's remaining bytes, the dirty-log sync, KVM's dirty-log ioctls.",
                    &data,
                );
            }
        }
        b.html.push_str("</section>\n");
        if i >= MAX_TREATMENT_SECTIONS {
            // Keep the figures (for plots/), drop the section from the page.
            b.html.truncate(start);
        }
    }
    b.html.push_str("</section>\n");
    Ok(())
}

fn tables_section(out: &mut String, s: &ExperimentSummary) {
    out.push_str(
        "<section id=\"tables\"><h2>Table II and effect tables</h2>\n<p class=\"note\">Table II as in the paper, ms, \
         over usable migrations. A max:min ratio is n/a where the smallest value is 0 ms (a ping that lost no reply). \
         SD: sample standard deviation, – where there is a single value.</p>\n",
    );
    let rows: Vec<Vec<String>> = s
        .table2
        .iter()
        .map(|r| {
            vec![
                esc(&r.measure),
                r.n.to_string(),
                r.treatments.to_string(),
                num(Some(r.overall_mean)),
                r.ratio_treatment_means.map_or_else(|| "n/a".into(), |v| format!("{v:.2}")),
                r.ratio_all.map_or_else(|| "n/a".into(), |v| format!("{v:.2}")),
                num(r.max_treatment_sd),
                num(r.overall_sd),
            ]
        })
        .collect();
    table(
        out,
        "table2",
        "table2",
        &[
            "measure",
            "n",
            "treatments",
            "overall mean ms",
            "max:min treatment means",
            "max:min all",
            "max treatment SD ms",
            "overall SD ms",
        ],
        &rows,
    );
    let how = if s.design == "sweep" {
        "other factors at their base level"
    } else {
        "main effect: the mean of the treatment means at the level"
    };
    for t in &s.effects {
        let measures: Vec<String> = t.rows.first().map(|r| r.cells.keys().cloned().collect()).unwrap_or_default();
        let _ = writeln!(out, "<h3>Effect of {} (ms; {how}; n = migrations)</h3>", esc(&t.factor));
        let mut header = vec![t.factor.as_str(), "treatments"];
        header.extend(measures.iter().map(String::as_str));
        let rows: Vec<Vec<String>> = t
            .rows
            .iter()
            .map(|row| {
                let mut cells = vec![esc(&row.level), row.treatments.to_string()];
                cells.extend(measures.iter().map(|m| match row.cells.get(m) {
                    Some(c) if c.treatments < row.treatments => {
                        format!("{:.2} (n={}, {} of {} treatments)", c.mean, c.n, c.treatments, row.treatments)
                    }
                    Some(c) => format!("{:.2} (n={})", c.mean, c.n),
                    None => "–".into(),
                }));
                cells
            })
            .collect();
        table(out, &format!("effect-{}", slug(&t.factor)), "effect", &header, &rows);
    }
    out.push_str("</section>\n");
}

/// The downtime model's leave-one-treatment-out validation: per measure both variants'
/// held-out errors beside the noise floor, and every held-out prediction against what
/// was measured.
fn model_section(b: &mut Builder, v: &Validation) -> Result<(), HtmlError> {
    let _ = write!(
        b.html,
        "<section id=\"model\"><h2>Downtime model: predicted against measured</h2>\n<p class=\"note\">From \
         {VALIDATION_FILE} (<code>migtrace model validate</code>): each of the {} treatments predicted by the model \
         fitted on the others, {} migrations. APE: absolute percentage error of a held-out migration; noise floor: \
         each repetition against the mean of its treatment's other repetitions (the best a prediction of the \
         treatment can do). Better fit: {}.</p>\n",
        v.treatments,
        v.migrations,
        esc(v.preferred.name()),
    );
    let pct = |x: Option<f64>| x.map_or_else(|| "–".into(), |x| format!("{x:.1}"));
    let rows: Vec<Vec<String>> = validate::error_rows(v)
        .into_iter()
        .map(|row| {
            let mut cells = vec![esc(row.measure.label()), row.n.to_string()];
            cells.extend(row.ape.map(pct));
            cells
        })
        .collect();
    table(
        &mut b.html,
        "model-errors",
        "model",
        &[
            "measure",
            "n",
            "closed form: median APE %",
            "p90 APE %",
            "simulation: median APE %",
            "p90 APE %",
            "noise floor: median %",
            "p90 %",
        ],
        &rows,
    );
    let rows: Vec<Vec<String>> = v
        .points
        .iter()
        .filter(|p| model::plot::PANELS.contains(&p.measure))
        .map(|p| {
            vec![
                esc(&p.treatment),
                esc(p.variant.name()),
                esc(p.measure.label()),
                format!("{:.2}", p.measured),
                format!("{:.2}", p.predicted),
            ]
        })
        .collect();
    let mut data = String::new();
    table(
        &mut data,
        "model-validation-data",
        "data",
        &["treatment", "variant", "measure", "measured ms", "predicted ms"],
        &rows,
    );
    b.figure(
        MODEL_FIGURE.into(),
        model::plot::plot_svg(&v.points)?,
        "Held-out predictions against the measured values, a point per migration and variant (closed form blue, \
         simulation red); on the diagonal they agree.",
        &data,
    );
    b.html.push_str("</section>\n");
    Ok(())
}
