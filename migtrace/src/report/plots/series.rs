//! Lines over one factor's levels, one per level of a second factor, a panel per level
//! of a third (or per measure): the paper's Fig. 4 (downtime over RATE, a line per
//! WSET, a panel per VMSIZE) and a setting's interplay with the link.

use plotters::prelude::*;
use serde::Serialize;

use super::{FONT, LevelPoint, PlotError, Seg, categories, category_label, center, fail, svg, top};

/// One line: a level of the series factor.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Series {
    pub label: String,
    pub points: Vec<LevelPoint>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SeriesPanel {
    pub title: String,
    pub series: Vec<Series>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SeriesFigure {
    pub title: String,
    /// The x axis: a factor, its levels in order.
    pub x_factor: String,
    pub x_levels: Vec<String>,
    /// What the lines are (`wset`, `link`).
    pub series_factor: String,
    pub y_desc: String,
    pub panels: Vec<SeriesPanel>,
}

/// A colour per line, by its index.
fn line_color(i: usize) -> RGBColor {
    const COLORS: [RGBColor; 6] = [
        RGBColor(31, 100, 180),
        RGBColor(230, 120, 20),
        RGBColor(40, 150, 70),
        RGBColor(200, 40, 60),
        RGBColor(120, 80, 170),
        RGBColor(90, 90, 90),
    ];
    COLORS[i % COLORS.len()]
}

pub fn series_figure(f: &SeriesFigure) -> Result<String, PlotError> {
    let figure = f.title.as_str();
    let cols = f.panels.len().clamp(1, 3);
    let rows = f.panels.len().div_ceil(cols).max(1);
    let (pw, ph) = (420u32, 320u32);
    let k = f.x_levels.len();
    svg(figure, (pw * cols as u32, ph * rows as u32 + 36), |root| {
        let root = root.titled(&f.title, (FONT, 17)).map_err(fail(figure))?;
        let areas = root.split_evenly((rows, cols));
        for (panel, area) in f.panels.iter().zip(areas.iter()) {
            let points = || panel.series.iter().flat_map(|s| s.points.iter());
            let hi = points().map(|p| p.ci95.map_or(p.mean, |c| c.1)).fold(0.0, f64::max);
            let lo = points().map(|p| p.ci95.map_or(p.mean, |c| c.0)).fold(0.0, f64::min);
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.title, (FONT, 14))
                .margin(8)
                .x_label_area_size(40)
                .y_label_area_size(58)
                .build_cartesian_2d(categories(k).into_segmented(), lo..top(hi, lo))
                .map_err(fail(figure))?;
            let formatter = |v: &Seg| category_label(v, &f.x_levels);
            chart
                .configure_mesh()
                .light_line_style(RGBColor(244, 244, 244))
                .disable_x_mesh()
                .x_labels(k + 1)
                .x_label_formatter(&formatter)
                .x_desc(f.x_factor.as_str())
                .y_desc(f.y_desc.as_str())
                .draw()
                .map_err(fail(figure))?;
            for (i, s) in panel.series.iter().enumerate() {
                let c = line_color(i);
                let at = |p: &LevelPoint| f.x_levels.iter().position(|l| *l == p.level).map(center);
                chart
                    .draw_series(LineSeries::new(s.points.iter().filter_map(|p| Some((at(p)?, p.mean))), c))
                    .map_err(fail(figure))?
                    .label(format!("{} {}", f.series_factor, s.label))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
                chart
                    .draw_series(s.points.iter().filter_map(|p| {
                        let (l, h) = p.ci95?;
                        Some(ErrorBar::new_vertical(at(p)?, l, p.mean, h, c.stroke_width(1), 8))
                    }))
                    .map_err(fail(figure))?;
                chart
                    .draw_series(s.points.iter().filter_map(|p| Some(Circle::new((at(p)?, p.mean), 3, c.filled()))))
                    .map_err(fail(figure))?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.8))
                .border_style(RGBColor(200, 200, 200))
                .label_font((FONT, 11))
                .draw()
                .map_err(fail(figure))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_line_with_its_legend() {
        let point = |level: &str, mean: f64| LevelPoint {
            level: level.into(),
            mean,
            ci95: Some((mean - 5.0, mean + 5.0)),
            n: 3,
            censored: 0,
            treatments: 1,
        };
        let f = SeriesFigure {
            title: "vCPU blackout over rate".into(),
            x_factor: "rate".into(),
            x_levels: vec!["0".into(), "20000".into()],
            series_factor: "wset".into(),
            y_desc: "ms".into(),
            panels: vec![SeriesPanel {
                title: "vmsize 256".into(),
                series: vec![
                    Series { label: "16".into(), points: vec![point("0", 80.0), point("20000", 180.0)] },
                    Series { label: "128".into(), points: vec![point("0", 90.0), point("20000", 300.0)] },
                ],
            }],
        };
        let svg = series_figure(&f).expect("svg");
        assert!(svg.contains("wset 16") && svg.contains("wset 128") && svg.contains("vmsize 256"), "{svg}");
    }
}
