//! Predicted against measured, one panel per measure, as an SVG document: written
//! beside `validation.json` and ready to embed in an HTML report.

use plotters::prelude::*;

use super::{Measure, ModelError, precopy::Variant, validate::HeldOut};

/// The measures plotted, in panel order.
pub const PANELS: [Measure; 3] = [Measure::MigrationTime, Measure::QemuDowntime, Measure::GuestDowntime];

/// An SVG of held-out predictions against the measured values: a point per migration
/// and variant, the diagonal where they would agree.
pub fn plot_svg(points: &[HeldOut]) -> Result<String, ModelError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1200, 420)).into_drawing_area();
        let err = |e: &dyn std::fmt::Display| ModelError::Fit(format!("plotting: {e}"));
        root.fill(&WHITE).map_err(|e| err(&e))?;
        for (area, measure) in root.split_evenly((1, PANELS.len())).iter().zip(PANELS) {
            let sel: Vec<&HeldOut> = points.iter().filter(|p| p.measure == measure).collect();
            let top = sel.iter().flat_map(|p| [p.predicted, p.measured]).fold(1.0_f64, f64::max) * 1.05;
            let mut chart = ChartBuilder::on(area)
                .caption(format!("{} (ms)", measure.label()), ("sans-serif", 15))
                .margin(12)
                .x_label_area_size(35)
                .y_label_area_size(55)
                .build_cartesian_2d(0.0..top, 0.0..top)
                .map_err(|e| err(&e))?;
            chart
                .configure_mesh()
                .x_desc("measured")
                .y_desc("predicted (held out)")
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(|e| err(&e))?;
            chart.draw_series(LineSeries::new([(0.0, 0.0), (top, top)], BLACK.mix(0.4))).map_err(|e| err(&e))?;
            for (variant, color) in [(Variant::ClosedForm, BLUE), (Variant::Simulation, RED)] {
                let series = sel.iter().filter(|p| p.variant == variant).map(|p| (p.measured, p.predicted));
                chart
                    .draw_series(series.map(|xy| Circle::new(xy, 3, color.mix(0.7).filled())))
                    .map_err(|e| err(&e))?
                    .label(variant.name())
                    .legend(move |(x, y)| Circle::new((x + 6, y), 4, color.filled()));
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .border_style(BLACK.mix(0.3))
                .background_style(WHITE.mix(0.9))
                .draw()
                .map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_point_is_drawn() {
        let points: Vec<HeldOut> = PANELS
            .iter()
            .flat_map(|&measure| {
                Variant::ALL.into_iter().map(move |variant| HeldOut {
                    treatment: "t".into(),
                    variant,
                    measure,
                    predicted: 90.0,
                    measured: 100.0,
                })
            })
            .collect();
        let svg = plot_svg(&points).expect("plots");
        assert!(svg.starts_with("<svg"), "{}", &svg[..40.min(svg.len())]);
        // A circle per point and one per legend entry.
        assert_eq!(svg.matches("<circle").count(), 2 * points.len());
        assert!(svg.contains("guest-observed downtime"));
    }
}
