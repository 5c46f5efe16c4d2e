//! QEMU's switchover settings and the link: how `downtime_limit`, `max_bandwidth` and
//! `avail_switchover_bandwidth` each move downtime and migration time at each link
//! rate, and what the stop-and-copy achieved on the link.

use std::{collections::BTreeMap, fmt::Write as _};

use super::{Builder, Experiment, HtmlError, Varied, ci, esc, level_mean, level_n, num, slug, table, varied};
use crate::{
    measure::{quality, record::MigrationRecord},
    report::plots::{self, SeriesFigure, SeriesPanel, label},
};

/// The settings QEMU decides the switchover by, and what each does.
const SETTINGS: [(&str, &str); 3] = [
    (
        "downtime_limit",
        "QEMU stops the guest once the bytes still to send fall below its bandwidth estimate × downtime-limit: a \
         larger limit stops it sooner with more to copy, so the blackout grows with it up to what the link carries \
         in that time; a smaller one takes more rounds, or never converges when the guest dirties faster than the \
         link drains",
    ),
    (
        "max_bandwidth",
        "caps pre-copy only (QEMU lifts it for the stop-and-copy, which runs at the link's rate). Below the link it \
         slows pre-copy and lowers QEMU's bandwidth estimate, so QEMU waits for fewer pending bytes; above the link \
         it changes nothing",
    ),
    (
        "avail_switchover_bandwidth",
        "replaces QEMU's own estimate in the switchover decision (QEMU ≥ 8.2): above the link QEMU expects a faster \
         stop-and-copy than the link gives, so downtime overshoots the limit; below it QEMU waits for fewer pending \
         bytes",
    ),
];

const MEASURES: [&str; 3] = ["downtime.vcpu", "downtime.reported", "migration_time.command"];

pub(super) fn section(b: &mut Builder, e: &Experiment<'_>) -> Result<(), HtmlError> {
    let factors = varied(e.spec);
    let link = factors.iter().find(|f| f.name == "link");
    let settings: Vec<(&Varied, &str)> =
        SETTINGS.iter().filter_map(|(name, what)| Some((factors.iter().find(|f| f.name == *name)?, *what))).collect();
    let mut links: Vec<String> = e.records.iter().filter_map(link_rate).collect();
    links.sort_unstable();
    links.dedup();
    if settings.is_empty() && link.is_none() && links.is_empty() {
        return Ok(());
    }
    b.section("switchover", "switchover and link", "Switchover settings and the link", |b| {
        let _ = writeln!(
            b.html,
            "<p class=\"note\">The migration stream crosses the link between the hosts ({}). QEMU's stop-and-copy \
             is not rate-limited: it runs at the link's rate, so the link and QEMU's switchover settings together \
             decide the downtime.</p>",
            esc(&if links.is_empty() { "not set by migtrace".to_owned() } else { links.join(", ") })
        );
        for (setting, what) in &settings {
            setting_figure(b, e, setting, link, what)?;
        }
        if settings.is_empty()
            && let Some(link) = link
        {
            setting_figure(b, e, link, None, "the link's rate: the stop-and-copy's pace")?;
        }
        achieved_table(b, e);
        Ok(())
    })
}

/// The configured link rate of a record (`1gbit`), if the hosts set one.
fn link_rate(r: &MigrationRecord) -> Option<String> {
    Some(r.params.link.as_ref()?.configured.as_ref()?.rate.to_string())
}

/// Downtime and migration time over `setting`'s levels, a line per link rate.
fn setting_figure(
    b: &mut Builder,
    e: &Experiment<'_>,
    setting: &Varied,
    link: Option<&Varied>,
    what: &str,
) -> Result<(), HtmlError> {
    let series = link.filter(|l| l.name != setting.name).map(|l| (l.name.as_str(), l.levels.as_slice()));
    let panels: Vec<SeriesPanel> = MEASURES
        .iter()
        .map(|m| SeriesPanel {
            title: label(m).to_owned(),
            series: e.marginal_series(m, (&setting.name, &setting.levels), series, "all", &[]),
        })
        .filter(|p| !p.series.is_empty())
        .collect();
    if panels.is_empty() {
        return Ok(());
    }
    let _ = writeln!(b.html, "<h3>{}</h3>\n<p>{}.</p>", esc(&setting.name), esc(what));
    let fig = SeriesFigure {
        title: format!("downtime and migration time by {} (mean, 95 % CI)", setting.name),
        x_factor: setting.name.clone(),
        x_levels: setting.levels.clone(),
        series_factor: series.map_or("", |s| s.0).to_owned(),
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
    let file = format!("switchover-{}.svg", slug(&setting.name));
    let mut data = String::new();
    table(
        &mut data,
        &format!("{}-data", file.trim_end_matches(".svg")),
        "data",
        &["measure", "link", &setting.name, "mean ms", "95 % CI ms", "n"],
        &rows,
    );
    let svg = plots::series_figure(&fig)?;
    b.figure(file, svg, &format!("Downtime and migration time by {}, a line per link rate.", setting.name), &data);
    Ok(())
}

/// Per treatment: what the stop-and-copy achieved on the link, beside QEMU's own
/// expectation and figure, over its usable migrations.
fn achieved_table(b: &mut Builder, e: &Experiment<'_>) {
    let mut per: BTreeMap<&str, Vec<&MigrationRecord>> = BTreeMap::new();
    for r in e.records.iter().filter(|r| quality::usable(r)) {
        per.entry(r.treatment.as_str()).or_default().push(r);
    }
    let mean = |v: Vec<f64>| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let rows: Vec<Vec<String>> = e
        .summary
        .treatments
        .iter()
        .filter_map(|t| {
            let rs = per.get(t.treatment.as_str())?;
            let achieved = |f: fn(&crate::hypervisor::link::LinkAchieved) -> Option<f64>| {
                mean(rs.iter().filter_map(|r| f(&r.params.link.as_ref()?.achieved)).collect())
            };
            let from: Vec<&str> =
                rs.iter().filter_map(|r| Some(r.params.link.as_ref()?.achieved.from.as_str())).collect();
            Some(vec![
                esc(&t.treatment),
                rs.len().to_string(),
                num(achieved(|a| a.stop_and_copy_bps).map(|b| b / 1e6)),
                num(achieved(|a| a.stop_and_copy_ms)),
                num(achieved(|a| a.drain_ms)),
                num(achieved(|a| a.migration_bps).map(|b| b / 1e6)),
                num(mean(rs.iter().filter_map(|r| r.outcome.stats.expected_downtime.map(|d| d as f64)).collect())),
                num(mean(rs.iter().filter_map(|r| r.downtime_ms.reported).collect())),
                num(mean(rs.iter().filter_map(|r| r.downtime_ms.vcpu).collect())),
                esc(from.first().copied().unwrap_or("–")),
            ])
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    b.html.push_str(
        "<h3>What the stop-and-copy achieved</h3>\n<p class=\"note\">Means over each treatment's usable migrations \
         (<code>params.link.achieved</code>): the stop-and-copy's rate on the link and its span (from the VM stop to \
         the stream's last packet, counted on the wire: <code>link</code>; else QEMU's bytes over the source's \
         phases), what still crossed after the source's last write (drain), the whole migration's rate; QEMU's \
         expected downtime at its last check and its reported downtime, and the vCPU blackout.</p>\n",
    );
    table(
        &mut b.html,
        "link-achieved",
        "data",
        &[
            "treatment",
            "n",
            "stop-and-copy Mbit/s",
            "stop-and-copy ms",
            "drain ms",
            "migration Mbit/s",
            "QEMU expected downtime ms",
            "QEMU downtime ms",
            "vCPU blackout ms",
            "from",
        ],
        &rows,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        experiment::{spec::ExperimentSpec, store},
        hypervisor::{
            MigrationOutcome, MigrationParams,
            link::{LinkAchieved, LinkConfig, LinkRecord},
        },
        report::html::render,
        stats,
    };

    const SPEC: &str = "name = \"s\"\nrepetitions = 2\n[factors]\nlink = [\"100mbit\", \"1gbit\"]\n\
                        downtime_limit = [100, 300]\nwset = [\"16M\", \"64M\"]\nrate = [0, 2000]\n";

    #[test]
    fn settings_are_drawn_per_link_rate_with_what_the_link_achieved() {
        let spec = ExperimentSpec::parse(SPEC).expect("spec");
        let levels_of = store::levels_of(&spec);
        let mut records = Vec::new();
        for (name, levels) in &levels_of {
            let mbit: f64 = if levels["link"] == "1gbit" { 1000.0 } else { 100.0 };
            let limit: f64 = levels["downtime_limit"].parse().expect("limit");
            for rep in 0..2 {
                let outcome = MigrationOutcome::completed_for_test(Some(1));
                let link = LinkRecord {
                    configured: Some(LinkConfig {
                        rate: levels["link"].parse().expect("rate"),
                        delay_ms: None,
                        shaper: String::new(),
                    }),
                    achieved: LinkAchieved {
                        from: "link".into(),
                        stop_and_copy_bps: Some(mbit * 0.95e6),
                        ..LinkAchieved::default()
                    },
                };
                let params = MigrationParams { link: Some(link), ..MigrationParams::default() };
                let mut r = MigrationRecord::new(rep, name.clone(), params, outcome);
                r.downtime_ms.vcpu = Some(limit + rep as f64);
                r.downtime_ms.reported = Some(limit - 10.0 + rep as f64);
                r.migration_time_ms.command = Some(1000.0 + rep as f64);
                records.push(r);
            }
        }
        let design = store::effect_design(&spec);
        let summary = stats::summarize(&records, &levels_of, &design);
        let e = Experiment {
            spec: &spec,
            spec_text: SPEC,
            treatments: levels_of.len(),
            effects: &design,
            records: &records,
            summary: &summary,
            validation: None,
        };
        let page = render(&e).expect("page");
        assert!(page.html.contains("<section id=\"switchover\">"), "switchover section");
        assert!(page.html.contains("<section id=\"fig4\">"), "the paper's Fig. 4");
        let files: Vec<&str> = page.figures.iter().map(|f| f.file.as_str()).collect();
        assert!(files.contains(&"switchover-downtime-limit.svg"), "{files:?}");
        assert!(files.contains(&"fig4-downtime.vcpu.svg"), "{files:?}");
        let fig = page.figures.iter().find(|f| f.file == "switchover-downtime-limit.svg").expect("figure");
        assert!(fig.svg.contains("link 100mbit") && fig.svg.contains("link 1gbit"), "a line per link rate");
        // The achieved table: 95.00 Mbit/s at 100mbit, 950.00 at 1gbit, from the wire.
        assert!(page.html.contains("<td>95.00</td>") && page.html.contains("<td>950.00</td>"), "achieved rates");
    }
}
