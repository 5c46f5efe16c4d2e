//! The paper's Fig. 4: mean downtime and mean migration time over WSET × RATE at each
//! VMSIZE. The paper draws surfaces; here each is a line per WSET over RATE, a panel
//! per VMSIZE, every point a treatment mean (or the mean of the treatment means over
//! the other factors) with its 95 % CI.

use super::{Builder, Experiment, HtmlError, ci, esc, level_mean, level_n, slug, table, varied};
use crate::{
    experiment::spec::Design,
    report::plots::{self, SeriesFigure, SeriesPanel, label},
};

/// What the figures show: the vCPU blackout and QEMU's figure (the paper's downtime),
/// the guest's peers' view, the command's migration time (the paper's).
const MEASURES: [&str; 4] = ["downtime.vcpu", "downtime.reported", "downtime.probe_gap", "migration_time.command"];

pub(super) fn section(b: &mut Builder, e: &Experiment<'_>) -> Result<(), HtmlError> {
    let factors = varied(e.spec);
    let find = |name: &str| factors.iter().find(|f| f.name == name);
    let (Some(rate), Some(wset)) = (find("rate"), find("wset")) else { return Ok(()) };
    if e.spec.raw.design != Design::Factorial {
        return Ok(());
    }
    let vmsize = find("vmsize");
    b.section("fig4", "Fig. 4", "The paper's Fig. 4: downtime and migration time over WSET × RATE", |b| {
        b.html.push_str(
            "<p class=\"note\">Salfner, Tröger and Polze plot the mean downtime and migration time over WSET × RATE \
             at each VMSIZE as surfaces (their Fig. 4, VMware; Figs. 1–3, Xen). Here: a line per WSET over RATE, a \
             panel per VMSIZE; each point the mean of the treatment means at those levels (over any other factor) \
             with its 95 % confidence interval.</p>\n",
        );
        for measure in MEASURES {
            let panels: Vec<SeriesPanel> = match vmsize {
                Some(v) => v
                    .levels
                    .iter()
                    .map(|level| SeriesPanel {
                        title: format!("vmsize {level} MiB"),
                        series: e.marginal_series(
                            measure,
                            (&rate.name, &rate.levels),
                            Some((&wset.name, &wset.levels)),
                            "",
                            &[("vmsize", level.as_str())],
                        ),
                    })
                    .collect(),
                None => vec![SeriesPanel {
                    title: "all treatments".into(),
                    series: e.marginal_series(
                        measure,
                        (&rate.name, &rate.levels),
                        Some((&wset.name, &wset.levels)),
                        "",
                        &[],
                    ),
                }],
            };
            if panels.iter().all(|p| p.series.is_empty()) {
                continue;
            }
            let fig = SeriesFigure {
                title: format!("{} over rate and wset (mean, 95 % CI)", label(measure)),
                x_factor: "rate (pages/s)".into(),
                x_levels: rate.levels.clone(),
                series_factor: "wset MiB".into(),
                y_desc: "ms".into(),
                panels,
            };
            let rows: Vec<Vec<String>> = fig
                .panels
                .iter()
                .flat_map(|p| {
                    p.series.iter().flat_map(move |s| {
                        s.points.iter().map(move |x| {
                            vec![esc(&p.title), esc(&s.label), esc(&x.level), level_mean(x), ci(x.ci95), level_n(x)]
                        })
                    })
                })
                .collect();
            let file = format!("fig4-{}.svg", slug(measure));
            let mut data = String::new();
            table(
                &mut data,
                &format!("{}-data", file.trim_end_matches(".svg")),
                "data",
                &["panel", "wset MiB", "rate pages/s", "mean ms", "95 % CI ms", "n"],
                &rows,
            );
            let svg = plots::series_figure(&fig)?;
            b.figure(file, svg, &format!("{} over WSET × RATE (the paper's Fig. 4).", label(measure)), &data);
        }
        Ok(())
    })
}
