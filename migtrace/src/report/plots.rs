//! Figures as SVG, drawn with `plotters` (SVG backend): the paper's single-variable
//! plots (mean with 95 % CI per level), heatmaps of treatment means over two factors
//! (the paper's surfaces), downtime methods side by side per treatment, CDFs, and
//! migration timelines as Gantt charts with their pre-copy rounds.
//!
//! Every function takes the numbers it draws as plain data (computed by
//! [`super::html`] from the records and the summary), so tests can check the data and
//! the SVG separately.

use plotters::{
    coord::Shift,
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};
use serde::Serialize;

pub mod series;

pub use series::{Series, SeriesFigure, SeriesPanel, series_figure};

type Seg = SegmentValue<i32>;

#[derive(Debug, thiserror::Error)]
#[error("drawing {figure}: {message}")]
pub struct PlotError {
    pub figure: String,
    pub message: String,
}

fn fail<E: std::fmt::Display>(figure: &str) -> impl Fn(E) -> PlotError + '_ {
    move |e| PlotError { figure: figure.to_owned(), message: e.to_string() }
}

const FONT: &str = "sans-serif";

/// How a measure is called in figures.
pub fn label(measure: &str) -> &str {
    match measure {
        "downtime.ping" => "ping (paper: lost × interval)",
        "downtime.ping_max_gap" => "ping largest gap",
        "downtime.probe_gap" => "probe gap",
        "downtime.vcpu" => "vCPU blackout",
        "downtime.vcpu.qmp" => "vCPU blackout (QMP)",
        "downtime.reported" => "reported (QEMU or libvirt)",
        "downtime.outages_total" => "all outages (total)",
        "downtime.longest_outage" => "longest outage",
        "migration_time.command" => "command (paper)",
        "migration_time.reported" => "reported (QEMU total-time or libvirt)",
        "migration_time.traced" => "traced",
        "migration_time.traced.qmp" => "traced (QMP)",
        "migration_time.traced_to_resume" => "traced to resume",
        "migration_time.traced_to_resume.qmp" => "traced to resume (QMP)",
        other => other,
    }
}

/// A short label for axes with many categories.
pub fn short_label(measure: &str) -> &str {
    match measure {
        "downtime.ping" => "ping",
        "downtime.ping_max_gap" => "ping gap",
        "downtime.probe_gap" => "probe gap",
        "downtime.vcpu" => "vCPU",
        "downtime.vcpu.qmp" => "vCPU (QMP)",
        "downtime.reported" => "reported",
        "downtime.outages_total" => "outages",
        "downtime.longest_outage" => "longest outage",
        other => label(other),
    }
}

/// One colour per method, the same in every figure.
pub fn color(measure: &str) -> RGBColor {
    match measure {
        "downtime.ping" | "migration_time.command" => RGBColor(230, 120, 20),
        "downtime.ping_max_gap" => RGBColor(150, 90, 40),
        "downtime.probe_gap" | "migration_time.traced" => RGBColor(31, 100, 180),
        "downtime.vcpu" | "migration_time.traced_to_resume" => RGBColor(40, 150, 70),
        "downtime.vcpu.qmp" | "migration_time.traced.qmp" | "migration_time.traced_to_resume.qmp" => {
            RGBColor(120, 190, 120)
        }
        "downtime.reported" | "migration_time.reported" => RGBColor(200, 40, 60),
        "downtime.outages_total" | "downtime.longest_outage" => RGBColor(120, 80, 170),
        _ => RGBColor(90, 90, 90),
    }
}

/// Segments for `n` categories (at least two: plotters' one-value range is degenerate).
fn categories(n: usize) -> std::ops::Range<i32> {
    0..(n.max(2) as i32 - 1)
}

fn center(i: usize) -> Seg {
    SegmentValue::CenterOf(i as i32)
}

fn left(i: usize) -> Seg {
    SegmentValue::Exact(i as i32)
}

fn right(i: usize, n: usize) -> Seg {
    if i + 1 >= n.max(2) { SegmentValue::Last } else { SegmentValue::Exact(i as i32 + 1) }
}

fn category_label(v: &Seg, labels: &[String]) -> String {
    match v {
        SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
        _ => String::new(),
    }
}

/// Upper end of a value axis: a little headroom above `max`, never an empty range.
fn top(max: f64, min: f64) -> f64 {
    if max > min { max + (max - min) * 0.12 } else { min + 1.0 }
}

/// A rectangle inset by `m` pixels (top, bottom, left, right).
fn inset<C>(corners: [C; 2], style: ShapeStyle, m: (u32, u32, u32, u32)) -> Rectangle<C> {
    let mut r = Rectangle::new(corners, style);
    r.set_margin(m.0, m.1, m.2, m.3);
    r
}

/// Draws into an SVG string of `size` pixels.
fn svg(
    figure: &str,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> Result<(), PlotError>,
) -> Result<String, PlotError> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        root.fill(&WHITE).map_err(fail(figure))?;
        draw(&root)?;
        root.present().map_err(fail(figure))?;
    }
    Ok(out)
}

/// One level of a factor in a single-variable plot.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LevelPoint {
    pub level: String,
    pub mean: f64,
    /// 95 % confidence interval of the mean; `None` where it does not exist (a
    /// treatment with a single migration).
    pub ci95: Option<(f64, f64)>,
    /// Migrations behind the point.
    pub n: usize,
    /// Of them, lower bounds (censored migrations): the mean is then a lower bound.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub censored: usize,
    /// Treatments behind the point.
    pub treatments: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl LevelPoint {
    /// What the plot writes beside the point: n, lower bounds, and an interval that is
    /// missing or of width 0 (every value equal: no spread was measured, which is not a
    /// mean known exactly).
    pub fn note(&self) -> String {
        let n = match self.censored {
            0 => format!("n={}", self.n),
            k => format!("n={} ({k} ≥), mean ≥", self.n),
        };
        match self.ci95 {
            None => format!("{n}, no CI"),
            Some((lo, hi)) if lo == hi => format!("{n}, all equal: CI of width 0"),
            Some(_) => n,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EffectPanel {
    pub measure: String,
    pub points: Vec<LevelPoint>,
}

/// The paper's single-variable plot: one panel per measure, mean and 95 % CI per level.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EffectFigure {
    pub title: String,
    pub factor: String,
    pub panels: Vec<EffectPanel>,
}

pub fn effect_figure(f: &EffectFigure) -> Result<String, PlotError> {
    let figure = f.title.as_str();
    let cols = f.panels.len().clamp(1, 3);
    let rows = f.panels.len().div_ceil(cols).max(1);
    let (pw, ph) = (380u32, 290u32);
    svg(figure, (pw * cols as u32, ph * rows as u32 + 36), |root| {
        let root = root.titled(&f.title, (FONT, 17)).map_err(fail(figure))?;
        let areas = root.split_evenly((rows, cols));
        for (panel, area) in f.panels.iter().zip(areas.iter()) {
            let k = panel.points.len();
            let hi = panel.points.iter().map(|p| p.ci95.map_or(p.mean, |c| c.1)).fold(0.0, f64::max);
            let lo = panel.points.iter().map(|p| p.ci95.map_or(p.mean, |c| c.0)).fold(0.0, f64::min);
            let mut chart = ChartBuilder::on(area)
                .caption(label(&panel.measure), (FONT, 14))
                .margin(8)
                .x_label_area_size(40)
                .y_label_area_size(58)
                .build_cartesian_2d(categories(k).into_segmented(), lo..top(hi, lo))
                .map_err(fail(figure))?;
            let labels: Vec<String> = panel.points.iter().map(|p| p.level.clone()).collect();
            let formatter = |v: &Seg| category_label(v, &labels);
            chart
                .configure_mesh()
                .light_line_style(RGBColor(244, 244, 244))
                .disable_x_mesh()
                .x_labels(k + 1)
                .x_label_formatter(&formatter)
                .x_desc(f.factor.as_str())
                .y_desc("ms")
                .draw()
                .map_err(fail(figure))?;
            let c = color(&panel.measure);
            chart
                .draw_series(LineSeries::new(
                    panel.points.iter().enumerate().map(|(i, p)| (center(i), p.mean)),
                    c.mix(0.45),
                ))
                .map_err(fail(figure))?;
            chart
                .draw_series(panel.points.iter().enumerate().filter_map(|(i, p)| {
                    p.ci95.map(|(l, h)| ErrorBar::new_vertical(center(i), l, p.mean, h, c.stroke_width(2), 12))
                }))
                .map_err(fail(figure))?;
            chart
                .draw_series(
                    panel.points.iter().enumerate().map(|(i, p)| Circle::new((center(i), p.mean), 4, c.filled())),
                )
                .map_err(fail(figure))?;
            chart
                .draw_series(panel.points.iter().enumerate().map(|(i, p)| {
                    EmptyElement::at((center(i), p.mean)) + Text::new(p.note(), (7, -4), (FONT, 11).into_font())
                }))
                .map_err(fail(figure))?;
        }
        Ok(())
    })
}

/// One cell of a heatmap: a treatment mean (or the mean of the treatment means of the
/// factors not shown).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HeatCell {
    pub x: usize,
    pub y: usize,
    pub mean: f64,
    /// Migrations behind it.
    pub n: usize,
    /// Treatments behind it.
    pub treatments: usize,
}

/// The paper's surfaces as a heatmap: a measure's treatment means over two factors.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Heatmap {
    pub title: String,
    pub measure: String,
    pub x_factor: String,
    pub y_factor: String,
    pub x_levels: Vec<String>,
    pub y_levels: Vec<String>,
    /// The levels of the other factors this map is drawn at (none: averaged over them,
    /// or there are no others).
    pub facet: Vec<(String, String)>,
    /// Cells with usable migrations; the others have none.
    pub cells: Vec<HeatCell>,
}

pub fn heatmap(h: &Heatmap) -> Result<String, PlotError> {
    let figure = h.title.as_str();
    let (nx, ny) = (h.x_levels.len(), h.y_levels.len());
    let bar = 120u32;
    let width = 150 + 96 * nx.max(2) as u32 + bar;
    let height = 120 + 62 * ny.max(2) as u32;
    let lo = h.cells.iter().map(|c| c.mean).fold(f64::INFINITY, f64::min);
    let hi = h.cells.iter().map(|c| c.mean).fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if lo.is_finite() { (lo, if hi > lo { hi } else { lo + 1.0 }) } else { (0.0, 1.0) };
    let norm = |v: f64| ((v - lo) / (hi - lo)).clamp(0.0, 1.0);
    svg(figure, (width, height), |root| {
        let root = root.titled(&h.title, (FONT, 16)).map_err(fail(figure))?;
        let (main, side) = root.split_horizontally(width - bar);
        let mut chart = ChartBuilder::on(&main)
            .margin(10)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d(categories(nx).into_segmented(), categories(ny).into_segmented())
            .map_err(fail(figure))?;
        let (xl, yl) = (h.x_levels.clone(), h.y_levels.clone());
        let fx = |v: &Seg| category_label(v, &xl);
        let fy = |v: &Seg| category_label(v, &yl);
        chart
            .configure_mesh()
            .light_line_style(RGBColor(244, 244, 244))
            .disable_mesh()
            .x_labels(nx + 1)
            .y_labels(ny + 1)
            .x_label_formatter(&fx)
            .y_label_formatter(&fy)
            .x_desc(h.x_factor.as_str())
            .y_desc(h.y_factor.as_str())
            .draw()
            .map_err(fail(figure))?;
        // Cells without usable migrations: grey, marked.
        let empty: Vec<(usize, usize)> = (0..nx)
            .flat_map(|x| (0..ny).map(move |y| (x, y)))
            .filter(|(x, y)| !h.cells.iter().any(|c| c.x == *x && c.y == *y))
            .collect();
        chart
            .draw_series(empty.iter().map(|&(x, y)| {
                inset(
                    [(left(x), left(y)), (right(x, nx), right(y, ny))],
                    RGBColor(225, 225, 225).filled(),
                    (1, 1, 1, 1),
                )
            }))
            .map_err(fail(figure))?;
        chart
            .draw_series(empty.iter().map(|&(x, y)| {
                Text::new(
                    "no data",
                    (center(x), center(y)),
                    (FONT, 11).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Center)),
                )
            }))
            .map_err(fail(figure))?;
        chart
            .draw_series(h.cells.iter().map(|c| {
                inset(
                    [(left(c.x), left(c.y)), (right(c.x, nx), right(c.y, ny))],
                    ViridisRGB::get_color_normalized(norm(c.mean), 0.0, 1.0).filled(),
                    (1, 1, 1, 1),
                )
            }))
            .map_err(fail(figure))?;
        chart
            .draw_series(h.cells.iter().map(|c| {
                let ink = if norm(c.mean) < 0.6 { WHITE } else { BLACK };
                let style = |size| (FONT, size).into_font().color(&ink).pos(Pos::new(HPos::Center, VPos::Center));
                EmptyElement::at((center(c.x), center(c.y)))
                    + Text::new(format!("{:.1}", c.mean), (0, -8), style(14))
                    + Text::new(format!("n={}", c.n), (0, 10), style(10))
            }))
            .map_err(fail(figure))?;
        // The colour scale.
        let mut scale = ChartBuilder::on(&side)
            .margin_top(30)
            .margin_bottom(54)
            .margin_right(10)
            .y_label_area_size(62)
            .build_cartesian_2d(0.0..1.0, lo..hi)
            .map_err(fail(figure))?;
        scale
            .configure_mesh()
            .light_line_style(RGBColor(244, 244, 244))
            .disable_mesh()
            .disable_x_axis()
            .y_labels(5)
            .y_label_style((FONT, 12))
            .axis_desc_style((FONT, 13))
            .y_desc(format!("{} ms", short_label(&h.measure)))
            .draw()
            .map_err(fail(figure))?;
        let steps = 40;
        scale
            .draw_series((0..steps).map(|i| {
                let (a, b) = (i as f64 / steps as f64, (i + 1) as f64 / steps as f64);
                Rectangle::new(
                    [(0.0, lo + a * (hi - lo)), (1.0, lo + b * (hi - lo))],
                    ViridisRGB::get_color_normalized((a + b) / 2.0, 0.0, 1.0).filled(),
                )
            }))
            .map_err(fail(figure))?;
        Ok(())
    })
}

/// One method's single migrations in a distribution plot.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StripMethod {
    pub measure: String,
    /// ms, one per usable migration that has the measure.
    pub values: Vec<f64>,
    /// ms, lower bounds of censored migrations (the guest answered again only after
    /// observation ended): drawn hollow at the bound.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bounds: Vec<f64>,
    /// Usable migrations without the measure.
    pub missing: usize,
}

/// Downtime methods side by side for one treatment: every single migration as a dot,
/// a box of the quartiles, the mean as a bar.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Strip {
    pub title: String,
    pub methods: Vec<StripMethod>,
}

pub fn strip(s: &Strip) -> Result<String, PlotError> {
    let figure = s.title.as_str();
    let m = s.methods.len();
    let max = s.methods.iter().flat_map(|x| x.values.iter().chain(&x.bounds).copied()).fold(0.0f64, f64::max);
    let width = 160 + 118 * m.max(2) as u32;
    svg(figure, (width, 400), |root| {
        let root = root.titled(&s.title, (FONT, 15)).map_err(fail(figure))?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(52)
            .y_label_area_size(60)
            .build_cartesian_2d(categories(m).into_segmented(), 0f32..top(max, 0.0) as f32)
            .map_err(fail(figure))?;
        let labels: Vec<String> = s.methods.iter().map(|x| short_label(&x.measure).to_owned()).collect();
        let formatter = |v: &Seg| category_label(v, &labels);
        chart
            .configure_mesh()
            .light_line_style(RGBColor(244, 244, 244))
            .disable_x_mesh()
            .x_labels(m + 1)
            .x_label_formatter(&formatter)
            .x_desc("method (one dot per migration, hollow: at least; box: quartiles; bar: mean)")
            .y_desc("downtime ms")
            .draw()
            .map_err(fail(figure))?;
        for (i, method) in s.methods.iter().enumerate() {
            let c = color(&method.measure);
            if method.values.len() >= 2 {
                let q = Quartiles::new(&method.values);
                chart
                    .draw_series(std::iter::once(
                        Boxplot::new_vertical(center(i), &q).width(34).whisker_width(0.6).style(c.mix(0.6)),
                    ))
                    .map_err(fail(figure))?;
            }
            chart
                .draw_series(method.values.iter().enumerate().map(|(j, v)| {
                    // Deterministic jitter, so equal values (the ping's multiples of its
                    // interval) show as many dots.
                    let dx = ((j * 7919) % 29) as i32 - 14;
                    EmptyElement::at((center(i), *v as f32)) + Circle::new((dx, 0), 3, c.mix(0.75).filled())
                }))
                .map_err(fail(figure))?;
            chart
                .draw_series(method.bounds.iter().enumerate().map(|(j, v)| {
                    let dx = ((j * 7919) % 29) as i32 - 14;
                    EmptyElement::at((center(i), *v as f32)) + Circle::new((dx, 0), 4, c.stroke_width(2))
                }))
                .map_err(fail(figure))?;
            // The mean counts each bound at its bound, as the statistics do (a lower bound).
            let all: Vec<f64> = method.values.iter().chain(&method.bounds).copied().collect();
            if !all.is_empty() {
                let mean = all.iter().sum::<f64>() / all.len() as f64;
                chart
                    .draw_series(std::iter::once(
                        EmptyElement::at((center(i), mean as f32))
                            + PathElement::new(vec![(-22, 0), (22, 0)], BLACK.stroke_width(2)),
                    ))
                    .map_err(fail(figure))?;
            }
            let n = match method.bounds.len() {
                0 => format!("n={}", method.values.len()),
                b => format!("n={} ({b} ≥)", method.values.len() + b),
            };
            let note = match method.missing {
                0 => n,
                k => format!("{n}, {k} missing"),
            };
            chart
                .draw_series(std::iter::once(Text::new(
                    note,
                    (center(i), top(max, 0.0) as f32),
                    (FONT, 11).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Top)),
                )))
                .map_err(fail(figure))?;
        }
        Ok(())
    })
}

/// A cumulative distribution from an HDR histogram.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CdfLine {
    pub measure: String,
    pub n: u64,
    /// (ms, fraction of values ≤ it), one per recorded histogram bucket, ascending.
    pub points: Vec<(f64, f64)>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Cdf {
    pub title: String,
    pub lines: Vec<CdfLine>,
}

pub fn cdf(c: &Cdf) -> Result<String, PlotError> {
    let figure = c.title.as_str();
    let max = c.lines.iter().flat_map(|l| l.points.iter().map(|p| p.0)).fold(0.0f64, f64::max);
    svg(figure, (760, 430), |root| {
        let root = root.titled(&c.title, (FONT, 15)).map_err(fail(figure))?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..top(max, 0.0), 0.0..1.02)
            .map_err(fail(figure))?;
        chart
            .configure_mesh()
            .light_line_style(RGBColor(244, 244, 244))
            .x_desc("downtime ms")
            .y_desc("fraction of migrations ≤ x")
            .draw()
            .map_err(fail(figure))?;
        for line in &c.lines {
            let col = color(&line.measure);
            let mut steps = Vec::with_capacity(line.points.len() * 2 + 1);
            let mut before = 0.0;
            if let Some(first) = line.points.first() {
                steps.push((first.0, 0.0));
            }
            for &(x, f) in &line.points {
                steps.push((x, before));
                steps.push((x, f));
                before = f;
            }
            chart
                .draw_series(LineSeries::new(steps, col.stroke_width(2)))
                .map_err(fail(figure))?
                .label(format!("{} (n={})", label(&line.measure), line.n))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], col.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.4))
            .label_font((FONT, 12))
            .draw()
            .map_err(fail(figure))?;
        Ok(())
    })
}

/// What a Gantt bar stands for (its colour).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BarKind {
    /// A phase on a host, coloured by its name.
    Phase,
    /// A time the guest was not heard (probe gap, ping gap): outlined.
    Gap,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GanttBar {
    pub row: String,
    pub label: String,
    pub start_ms: f64,
    pub end_ms: f64,
    pub kind: BarKind,
}

/// A vertical line at a key instant (vCPUs stopped, vCPUs running).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GanttMark {
    pub label: String,
    pub at_ms: f64,
}

/// One migration's phases on both hosts and the network, on one time axis; with
/// `zoom`, a second panel of the switchover.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Gantt {
    pub title: String,
    pub rows: Vec<String>,
    pub bars: Vec<GanttBar>,
    pub marks: Vec<GanttMark>,
    pub zoom: Option<(f64, f64)>,
}

fn phase_color(name: &str, kind: BarKind) -> RGBColor {
    if kind == BarKind::Gap {
        return if name.starts_with("ping") { RGBColor(230, 120, 20) } else { RGBColor(31, 100, 180) };
    }
    match name {
        n if n.starts_with("pre-copy round") => {
            let k: u32 = n.rsplit(' ').next().and_then(|k| k.parse().ok()).unwrap_or(1);
            if k % 2 == 1 { RGBColor(110, 160, 215) } else { RGBColor(70, 120, 190) }
        }
        "setup" => RGBColor(160, 160, 160),
        "vm-stop" => RGBColor(200, 30, 30),
        "stop-and-copy" => RGBColor(230, 110, 60),
        "destination load" | "destination load + resume" => RGBColor(150, 90, 180),
        "resume" => RGBColor(60, 160, 80),
        "first guest packet" => RGBColor(40, 170, 170),
        "announce" => RGBColor(200, 190, 120),
        "destination receive" => RGBColor(205, 185, 225),
        _ => RGBColor(150, 150, 150),
    }
}

pub fn gantt(g: &Gantt) -> Result<String, PlotError> {
    let figure = g.title.as_str();
    let n = g.rows.len();
    let lo = g.bars.iter().map(|b| b.start_ms).chain(g.marks.iter().map(|m| m.at_ms)).fold(0.0f64, f64::min);
    let hi = g.bars.iter().map(|b| b.end_ms).chain(g.marks.iter().map(|m| m.at_ms)).fold(lo + 1.0, f64::max);
    let mut panels = vec![("whole migration".to_owned(), lo, hi + (hi - lo) * 0.02)];
    if let Some((a, b)) = g.zoom {
        panels.push((format!("switchover, {a:.1}–{b:.1} ms"), a, b));
    }
    let panel_h = 70 + 34 * n.max(1) as u32;
    svg(figure, (1000, 36 + panel_h * panels.len() as u32), |root| {
        let root = root.titled(&g.title, (FONT, 15)).map_err(fail(figure))?;
        let areas = root.split_evenly((panels.len(), 1));
        for ((caption, x0, x1), area) in panels.iter().zip(areas.iter()) {
            let (x0, x1) = (*x0, *x1);
            let mut chart = ChartBuilder::on(area)
                .caption(caption, (FONT, 13))
                .margin(8)
                .x_label_area_size(36)
                .y_label_area_size(160)
                .build_cartesian_2d(x0..x1, categories(n).into_segmented())
                .map_err(fail(figure))?;
            // Row 0 at the top.
            let labels: Vec<String> = g.rows.iter().rev().cloned().collect();
            let formatter = |v: &Seg| category_label(v, &labels);
            chart
                .configure_mesh()
                .light_line_style(RGBColor(244, 244, 244))
                .disable_y_mesh()
                .y_labels(n + 1)
                .y_label_formatter(&formatter)
                .x_desc("ms from the migration command")
                .draw()
                .map_err(fail(figure))?;
            let row_of = |name: &str| g.rows.iter().position(|r| r == name).map(|i| n - 1 - i);
            let px = |x: f64| chart.plotting_area().map_coordinate(&(x, left(0))).0;
            let visible: Vec<(&GanttBar, usize)> = g
                .bars
                .iter()
                .filter(|b| b.end_ms >= x0 && b.start_ms <= x1)
                .filter_map(|b| Some((b, row_of(&b.row)?)))
                .collect();
            let mut boxes = Vec::new();
            let mut texts = Vec::new();
            for (b, y) in &visible {
                let (s, e) = (b.start_ms.max(x0), b.end_ms.min(x1));
                let c = phase_color(&b.label, b.kind);
                let width_px = (px(e) - px(s)).max(2);
                let style = if b.kind == BarKind::Gap { c.stroke_width(2) } else { c.filled() };
                boxes.push(EmptyElement::at((s, center(*y))) + Rectangle::new([(0, -11), (width_px, 11)], style));
                let text = format!("{} {:.1}", b.label, b.end_ms - b.start_ms);
                if (width_px as usize) > text.chars().count() * 6 + 6 {
                    texts.push(
                        EmptyElement::at((s, center(*y)))
                            + Text::new(
                                text,
                                (4, 0),
                                (FONT, 11).into_font().color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center)),
                            ),
                    );
                }
            }
            chart.draw_series(boxes).map_err(fail(figure))?;
            chart.draw_series(texts).map_err(fail(figure))?;
            // Labels of the marks where they do not collide: in the zoom, or without one.
            let label_marks = g.zoom.is_none() || x1 - x0 < hi - lo;
            for m in g.marks.iter().filter(|m| m.at_ms >= x0 && m.at_ms <= x1) {
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![(m.at_ms, left(0)), (m.at_ms, SegmentValue::Last)],
                        BLACK.mix(0.6).stroke_width(1),
                    )))
                    .map_err(fail(figure))?;
                if label_marks {
                    chart
                        .draw_series(std::iter::once(
                            EmptyElement::at((m.at_ms, SegmentValue::Last))
                                + Text::new(m.label.clone(), (3, 2), (FONT, 10).into_font()),
                        ))
                        .map_err(fail(figure))?;
                }
            }
        }
        Ok(())
    })
}

/// One pre-copy round's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RoundBar {
    pub round: u32,
    pub final_round: bool,
    pub remaining_mib: Option<f64>,
    pub sync_ms: Option<f64>,
    /// KVM dirty-log ioctls by kind (`get-dirty-log`, …): count.
    pub kvm: Vec<(String, u64)>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rounds {
    pub title: String,
    pub rounds: Vec<RoundBar>,
    /// Why there are no KVM ioctls (e.g. TCG), instead of "not recorded".
    pub kvm_note: Option<String>,
}

fn kvm_color(what: &str) -> RGBColor {
    match what {
        "get-dirty-log" => RGBColor(31, 100, 180),
        "clear-dirty-log" => RGBColor(230, 120, 20),
        "reset-dirty-rings" => RGBColor(40, 150, 70),
        _ => RGBColor(150, 150, 150),
    }
}

/// Per pre-copy round: remaining bytes, the dirty-log sync's duration and the KVM
/// dirty-log ioctls, each a panel of bars over the round number.
pub fn rounds(r: &Rounds) -> Result<String, PlotError> {
    let figure = r.title.as_str();
    let k = r.rounds.len();
    let labels: Vec<String> = r
        .rounds
        .iter()
        .map(|x| if x.final_round { format!("{} (final)", x.round) } else { x.round.to_string() })
        .collect();
    let width = (200 + 70 * k.max(2) as u32).max(560);
    svg(figure, (width, 640), |root| {
        let root = root.titled(&r.title, (FONT, 15)).map_err(fail(figure))?;
        let areas = root.split_evenly((3, 1));
        type Pick = fn(&RoundBar) -> Option<f64>;
        let panels: [(&str, Pick); 3] = [
            ("remaining MiB (QEMU's pending bytes at the round's last check)", |x| x.remaining_mib),
            ("dirty-log sync ms", |x| x.sync_ms),
            ("KVM dirty-log ioctls", |x| (!x.kvm.is_empty()).then(|| x.kvm.iter().map(|k| k.1 as f64).sum())),
        ];
        for (p, ((caption, pick), area)) in panels.iter().zip(areas.iter()).enumerate() {
            let values: Vec<Option<f64>> = r.rounds.iter().map(pick).collect();
            let max = values.iter().flatten().copied().fold(0.0f64, f64::max);
            let none = values.iter().all(Option::is_none);
            let note = if p == 2 { r.kvm_note.as_deref() } else { None };
            let caption = match (none, note) {
                (true, Some(note)) => format!("{caption}: {note}"),
                (true, None) => format!("{caption}: not recorded"),
                _ => (*caption).to_owned(),
            };
            let mut chart = ChartBuilder::on(area)
                .caption(caption, (FONT, 13))
                .margin(6)
                .margin_right(24)
                .x_label_area_size(30)
                .y_label_area_size(60)
                .build_cartesian_2d(categories(k).into_segmented(), 0.0..top(max, 0.0))
                .map_err(fail(figure))?;
            let formatter = |v: &Seg| category_label(v, &labels);
            chart
                .configure_mesh()
                .light_line_style(RGBColor(244, 244, 244))
                .disable_x_mesh()
                .x_labels(k + 1)
                .x_label_formatter(&formatter)
                .x_desc("pre-copy round")
                .draw()
                .map_err(fail(figure))?;
            if p == 2 {
                // Stacked by ioctl.
                let mut bars = Vec::new();
                for (i, x) in r.rounds.iter().enumerate() {
                    let mut base = 0.0;
                    for (what, count) in &x.kvm {
                        let h = *count as f64;
                        bars.push(inset(
                            [(left(i), base), (right(i, k), base + h)],
                            kvm_color(what).filled(),
                            (0, 0, 10, 10),
                        ));
                        base += h;
                    }
                }
                chart.draw_series(bars).map_err(fail(figure))?;
            } else {
                let c = if p == 0 { RGBColor(31, 100, 180) } else { RGBColor(230, 110, 60) };
                chart
                    .draw_series(values.iter().enumerate().filter_map(|(i, v)| {
                        v.map(|v| inset([(left(i), 0.0), (right(i, k), v)], c.filled(), (0, 0, 10, 10)))
                    }))
                    .map_err(fail(figure))?;
            }
            if none && note.is_some() {
                continue;
            }
            chart
                .draw_series(values.iter().enumerate().map(|(i, v)| {
                    let text = v.map_or_else(|| "missing".to_owned(), |v| format!("{v:.3}"));
                    EmptyElement::at((center(i), v.unwrap_or(0.0)))
                        + Text::new(
                            text,
                            (0, -4),
                            (FONT, 10).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Bottom)),
                        )
                }))
                .map_err(fail(figure))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parses(svg: &str) -> roxmltree::Document<'_> {
        roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("SVG does not parse: {e}\n{svg}"))
    }

    fn texts(svg: &str) -> Vec<String> {
        let doc = parses(svg);
        doc.descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text().map(|t| t.trim().to_owned()))
            .collect()
    }

    #[test]
    fn a_point_says_when_its_interval_is_missing_of_width_0_or_over_bounds() {
        let p = |ci95, censored| LevelPoint { level: "1".into(), mean: 50.0, ci95, n: 4, censored, treatments: 1 };
        assert_eq!(p(Some((40.0, 60.0)), 0).note(), "n=4");
        // The 50 ms ping losing one reply every time: all equal, not a mean known exactly.
        assert_eq!(p(Some((50.0, 50.0)), 0).note(), "n=4, all equal: CI of width 0");
        assert_eq!(p(None, 1).note(), "n=4 (1 ≥), mean ≥, no CI");
    }

    #[test]
    fn lower_bounds_are_drawn_hollow_and_counted() {
        let s = Strip {
            title: "t".into(),
            methods: vec![StripMethod {
                measure: "downtime.probe_gap".into(),
                values: vec![30.0, 50.0],
                bounds: vec![5000.0],
                missing: 0,
            }],
        };
        let svg = strip(&s).expect("svg");
        assert!(texts(&svg).iter().any(|t| t == "n=3 (1 ≥)"), "{:?}", texts(&svg));
        // Two filled dots, one hollow one (and the boxplot draws no circle).
        let doc = parses(&svg);
        let circles: Vec<_> = doc.descendants().filter(|n| n.has_tag_name("circle")).collect();
        assert_eq!(circles.len(), 3);
        assert_eq!(circles.iter().filter(|c| c.attribute("fill") == Some("none")).count(), 1);
    }

    #[test]
    fn a_heatmap_writes_each_cell_mean_and_n_and_marks_empty_cells() {
        let h = Heatmap {
            title: "probe gap".into(),
            measure: "downtime.probe_gap".into(),
            x_factor: "rate".into(),
            y_factor: "wset".into(),
            x_levels: vec!["0".into(), "2000".into()],
            y_levels: vec!["16".into(), "32".into()],
            facet: vec![],
            cells: vec![
                HeatCell { x: 0, y: 0, mean: 12.25, n: 3, treatments: 1 },
                HeatCell { x: 1, y: 1, mean: 80.0, n: 2, treatments: 1 },
                HeatCell { x: 1, y: 0, mean: 40.0, n: 1, treatments: 1 },
            ],
        };
        let t = texts(&heatmap(&h).expect("draws"));
        for want in ["12.2", "80.0", "40.0", "n=3", "n=2", "no data", "rate", "wset", "2000"] {
            assert!(t.iter().any(|x| x == want), "{want} not in {t:?}");
        }
    }

    #[test]
    fn every_figure_parses_with_odd_inputs() {
        let one = EffectFigure {
            title: "t & <x>".into(),
            factor: "rate".into(),
            panels: vec![EffectPanel {
                measure: "downtime.ping".into(),
                points: vec![LevelPoint { level: "0".into(), mean: 0.0, ci95: None, n: 1, censored: 0, treatments: 1 }],
            }],
        };
        parses(&effect_figure(&one).expect("one level"));
        let s = Strip {
            title: "s".into(),
            methods: vec![StripMethod { measure: "downtime.ping".into(), values: vec![], bounds: vec![], missing: 2 }],
        };
        parses(&strip(&s).expect("no values"));
        parses(&cdf(&Cdf { title: "c".into(), lines: vec![] }).expect("no lines"));
        let g = Gantt {
            title: "g".into(),
            rows: vec!["source".into()],
            bars: vec![GanttBar {
                row: "source".into(),
                label: "vm-stop".into(),
                start_ms: 5.0,
                end_ms: 5.0,
                kind: BarKind::Phase,
            }],
            marks: vec![],
            zoom: Some((4.0, 6.0)),
        };
        parses(&gantt(&g).expect("zero-length bar"));
        let r = Rounds {
            title: "r".into(),
            rounds: vec![RoundBar { round: 1, final_round: true, remaining_mib: None, sync_ms: None, kvm: vec![] }],
            kvm_note: None,
        };
        let t = texts(&rounds(&r).expect("nothing recorded"));
        assert!(t.iter().any(|x| x == "missing"), "{t:?}");
    }
}
