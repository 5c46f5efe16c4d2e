//! `report.html`: an experiment as one self-contained page (inline SVG, no scripts, no
//! network), and every figure as its own SVG under `plots/`.
//!
//! The page is its sections, one file each, in this order: `overview` (the spec, the
//! machine and the counts), `effects` (per factor the paper's single-variable plots),
//! `heatmaps` (the treatment means over every pair of numeric factors), `fig4` (the
//! paper's Fig. 4: downtime and migration time over WSET × RATE per VMSIZE),
//! `switchover` (QEMU's switchover settings against the link, what the stop-and-copy
//! achieved on it), `cdf` (the
//! downtime distributions over all treatments), `treatments` (per treatment the downtime
//! methods side by side, its CDFs and the `timelines` of its median and worst
//! migration), `tables` (Table II and the effect tables) and, when `migtrace model
//! validate` has run on the directory, `model` (the downtime model's held-out errors and
//! its predicted-against-measured plot). A section opens with `Builder::section`, which
//! also links it from the page's navigation: adding one is a file and a call in
//! [`render`].
//!
//! The page reads the spec, the records, their summary and the model's validation, all
//! given in [`Experiment`]. Each figure has its numbers in a table beside it: the page
//! shows nothing the records do not hold.

mod cdf;
mod effects;
mod fig4;
mod heatmaps;
mod marginal;
mod model;
mod overview;
mod switchover;
mod tables;
mod timelines;
mod treatments;

use std::{
    fmt::Write as _,
    fs, io,
    path::{Path, PathBuf},
};

pub use cdf::{cdf_of, decode_histogram};
pub use effects::mean_of_means_ci;
pub use model::MODEL_FIGURE;
pub use timelines::{Chosen, gantt_of, rounds_of};
pub use treatments::{MAX_TREATMENT_SECTIONS, Missing, record_field};

use super::plots::PlotError;
use crate::{
    experiment::spec::{ExperimentSpec, Level},
    measure::record::MigrationRecord,
    model::validate::Validation,
    stats::{EffectDesign, ExperimentSummary},
};

#[derive(Debug, thiserror::Error)]
pub enum HtmlError {
    #[error(transparent)]
    Plot(#[from] PlotError),
    #[error("the model validation's plot: {0}")]
    Model(#[from] crate::model::ModelError),
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

/// Renders the page and its figures: its sections in order.
pub fn render(e: &Experiment<'_>) -> Result<Page, HtmlError> {
    let mut b = Builder::default();
    overview::section(&mut b, e)?;
    effects::section(&mut b, e)?;
    heatmaps::section(&mut b, e)?;
    fig4::section(&mut b, e)?;
    switchover::section(&mut b, e)?;
    cdf::section(&mut b, e)?;
    treatments::section(&mut b, e)?;
    tables::section(&mut b, e)?;
    model::section(&mut b, e)?;
    Ok(b.page(&e.spec.raw.name))
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

/// A level's mean, "≥" where lower bounds (censored migrations) are among its values.
fn level_mean(x: &crate::report::plots::LevelPoint) -> String {
    format!("{}{}", if x.censored > 0 { "≥ " } else { "" }, num(Some(x.mean)))
}

/// A level's migrations, with how many are lower bounds.
fn level_n(x: &crate::report::plots::LevelPoint) -> String {
    if x.censored > 0 { format!("{} ({} ≥)", x.n, x.censored) } else { x.n.to_string() }
}

/// A 95 % confidence interval; one of width 0 says why (every value was equal: no
/// spread was measured, which is not a mean known exactly).
fn ci(c: Option<(f64, f64)>) -> String {
    match c {
        None => "–".into(),
        Some((l, h)) if l == h => format!("{l:.2} – {h:.2} (all values equal: no spread measured)"),
        Some((l, h)) => format!("{l:.2} – {h:.2}"),
    }
}

/// What the confidence intervals assume, and how far this experiment's repetitions
/// meet it.
fn intervals_assume(spec: &crate::experiment::spec::RawSpec) -> String {
    let reps = spec.repetitions;
    let per = spec.repetitions_per_boot.unwrap_or(reps).clamp(1, reps.max(1));
    let boots = reps.div_ceil(per);
    let order = match spec.order {
        crate::experiment::spec::Order::Random => "in a seeded random order",
        crate::experiment::spec::Order::Sequential => "in sequence",
    };
    let how = if boots > 1 {
        format!("on {boots} boots of its guest of at most {per} consecutive migrations each, the boots {order}")
    } else {
        format!("as {reps} consecutive ping-pong migrations of one booted guest, the treatments {order}")
    };
    format!(
        "The intervals treat a treatment's repetitions as independent draws of one distribution. Here each \
         treatment ran {how}: repetitions on one boot share its memory layout and the machine's load of those \
         minutes, so the intervals describe the spread within this run and may be narrower than the spread between \
         runs, boots or hosts. An interval of width 0 means every value was equal (a 50 ms ping that lost the same \
         replies each time), not that the mean is known exactly."
    )
}

/// A factor the experiment varies (two levels or more).
struct Varied {
    name: String,
    levels: Vec<String>,
    /// Every level is a number (the factor has an axis).
    numeric: bool,
}

/// The factors the experiment varies, in spec order.
fn varied(spec: &ExperimentSpec) -> Vec<Varied> {
    spec.factors
        .iter()
        .filter(|(_, levels)| levels.len() >= 2)
        .map(|(f, levels)| Varied {
            name: f.to_string(),
            levels: levels.iter().map(Level::to_string).collect(),
            numeric: levels.iter().all(|l| matches!(l, Level::Number(_))),
        })
        .collect()
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

/// The page as it is built: the sections' HTML, their figures, and the navigation's
/// links to them.
#[derive(Default)]
struct Builder {
    html: String,
    figures: Vec<Figure>,
    /// Section id and link text, in page order.
    nav: Vec<(&'static str, &'static str)>,
}

impl Builder {
    /// A section of the page: `<section id>` with its `<h2>` title, linked from the
    /// navigation as `link`; `body` writes its content.
    fn section(
        &mut self,
        id: &'static str,
        link: &'static str,
        title: &str,
        body: impl FnOnce(&mut Self) -> Result<(), HtmlError>,
    ) -> Result<(), HtmlError> {
        let _ = writeln!(self.html, "<section id=\"{}\"><h2>{}</h2>", esc(id), esc(title));
        self.nav.push((id, link));
        body(self)?;
        self.html.push_str("</section>\n");
        Ok(())
    }

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

    /// The whole page: head, navigation to the sections, the sections.
    fn page(self, name: &str) -> Page {
        let nav: String =
            self.nav.iter().map(|(id, link)| format!("<a href=\"#{}\">{}</a>", esc(id), esc(link))).collect();
        let mut html = String::with_capacity(self.html.len() + 2048);
        let _ = write!(
            html,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/>\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>\
             <title>migtrace: {n}</title><style>{STYLE}</style></head><body>\n\
             <h1>migtrace experiment {n}</h1>\n<nav>{nav}</nav>\n",
            n = esc(name),
        );
        html.push_str(&self.html);
        html.push_str("</body></html>\n");
        Page { html, figures: self.figures }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interval_of_width_0_says_why() {
        assert_eq!(ci(Some((40.0, 60.0))), "40.00 – 60.00");
        assert!(ci(Some((50.0, 50.0))).contains("all values equal: no spread measured"));
        assert_eq!(ci(None), "–");
    }

    #[test]
    fn the_intervals_say_how_the_repetitions_ran() {
        let spec = |extra: &str| {
            crate::experiment::spec::ExperimentSpec::parse(&format!(
                "name = \"t\"\nrepetitions = 4\n{extra}\n[factors]\nvcpus = [1, 2]\n"
            ))
            .expect("spec")
            .raw
        };
        let one = intervals_assume(&spec(""));
        assert!(
            one.contains("4 consecutive ping-pong migrations of one booted guest, the treatments in sequence"),
            "{one}"
        );
        let two = intervals_assume(&spec("repetitions_per_boot = 2\norder = \"random\""));
        assert!(
            two.contains(
                "on 2 boots of its guest of at most 2 consecutive migrations each, the boots in a seeded random order"
            ),
            "{two}"
        );
        assert!(two.contains("independent") && two.contains("width 0"), "{two}");
    }
}
