//! Factor effects: per varied factor the paper's single-variable plots, downtime and
//! migration time by level, each point the mean of the treatment means at the level
//! (those the effect tables read) with its 95 % confidence interval.

use std::fmt::Write as _;

use statrs::distribution::{ContinuousCDF as _, StudentsT};

use super::{Builder, Experiment, HtmlError, ci, esc, level_mean, level_n, slug, table, varied};
use crate::{
    experiment::spec::Design,
    measure::quality::MEASURES,
    report::plots::{self, EffectFigure, EffectPanel, LevelPoint},
    stats::{Stats, TreatmentSummary},
};

pub(super) fn section(b: &mut Builder, e: &Experiment<'_>) -> Result<(), HtmlError> {
    b.section("effects", "factor effects", "Factor effects", |b| {
        let how = if e.spec.raw.design == Design::Sweep {
            "each level's treatment with every other factor at its base level"
        } else {
            "the mean of the treatment means at the level (the main effect)"
        };
        let _ = writeln!(
            b.html,
            "<p class=\"note\">Per level: {how}, with its 95 % confidence interval (Student's t; for several \
             treatments the standard error of the mean of their means, Welch–Satterthwaite degrees of freedom; none \
             where a treatment has a single migration or lower bounds). n: usable migrations behind the point (k ≥: \
             of them lower bounds, from censored migrations; the mean is then a lower bound). Levels are equally \
             spaced on the axis. {}</p>",
            super::intervals_assume(&e.spec.raw)
        );
        let factors = varied(e.spec);
        if factors.is_empty() {
            b.html.push_str("<p>No factor has more than one level.</p>\n");
        }
        for f in &factors {
            for (family, title) in [("downtime.", "downtime"), ("migration_time.", "migration time")] {
                effect_figure(b, e, &f.name, &f.levels, family, title)?;
            }
        }
        Ok(())
    })
}

/// The plot of one family of measures (`downtime.`, `migration_time.`) over `factor`'s
/// levels, a panel per measure with values, and its data table.
fn effect_figure(
    b: &mut Builder,
    e: &Experiment<'_>,
    factor: &str,
    levels: &[String],
    family: &str,
    title: &str,
) -> Result<(), HtmlError> {
    let panels: Vec<EffectPanel> = MEASURES
        .iter()
        .filter(|m| m.name.starts_with(family))
        .map(|m| EffectPanel { measure: m.name.to_owned(), points: e.effect_points(factor, levels, m.name) })
        .filter(|p| !p.points.is_empty())
        .collect();
    if panels.is_empty() {
        return Ok(());
    }
    let fig = EffectFigure { title: format!("{title} by {factor} (mean, 95 % CI)"), factor: factor.to_owned(), panels };
    let rows: Vec<Vec<String>> = fig
        .panels
        .iter()
        .flat_map(|p| {
            p.points.iter().map(|x| {
                vec![esc(&p.measure), esc(&x.level), level_mean(x), ci(x.ci95), level_n(x), x.treatments.to_string()]
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
    Ok(())
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
    ///
    /// [`EffectDesign::shows`]: crate::stats::EffectDesign::shows
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
                    censored: st.iter().map(|s| s.censored).sum(),
                    treatments: st.len(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        experiment::{spec::ExperimentSpec, store},
        hypervisor::{MigrationOutcome, MigrationParams},
        measure::record::MigrationRecord,
        stats,
    };

    const SWEEP: &str = "name = \"sweep\"\ndesign = \"sweep\"\nrepetitions = 1\n[factors]\nwset = [\"32M\", \
                         \"64M\"]\nrate = [0, 2000]\n[base]\nwset = \"32M\"\nrate = 0\n";

    #[test]
    fn in_a_sweep_the_plots_read_the_treatments_the_effect_tables_read() {
        // Base wset=32, rate=0 (probe gap 10); the sweep adds wset=64 (30) and rate=2000 (50).
        let spec = ExperimentSpec::parse(SWEEP).expect("spec");
        let levels_of = store::levels_of(&spec);
        assert_eq!(levels_of.len(), 3);
        let records: Vec<MigrationRecord> = levels_of
            .iter()
            .map(|(name, levels)| {
                let outcome = MigrationOutcome::completed_for_test(Some(1));
                let mut r = MigrationRecord::new(0, name.clone(), MigrationParams::default(), outcome);
                r.downtime_ms.probe_gap = Some(match (levels["wset"].as_str(), levels["rate"].as_str()) {
                    ("64", _) => 30.0,
                    (_, "2000") => 50.0,
                    _ => 10.0,
                });
                r
            })
            .collect();
        let design = store::effect_design(&spec);
        let summary = stats::summarize(&records, &levels_of, &design);
        let e = Experiment {
            spec: &spec,
            spec_text: SWEEP,
            treatments: levels_of.len(),
            effects: &design,
            records: &records,
            summary: &summary,
            validation: None,
        };
        assert_eq!(summary.effects.len(), 2);
        for table in &summary.effects {
            let levels: Vec<String> = table.rows.iter().map(|r| r.level.clone()).collect();
            let plotted: Vec<(String, f64, usize)> = e
                .effect_points(&table.factor, &levels, "downtime.probe_gap")
                .into_iter()
                .map(|p| (p.level, p.mean, p.treatments))
                .collect();
            let tabled: Vec<(String, f64, usize)> = table
                .rows
                .iter()
                .map(|r| {
                    (r.level.clone(), r.cells["downtime.probe_gap"].mean, r.cells["downtime.probe_gap"].treatments)
                })
                .collect();
            assert_eq!(plotted, tabled, "effect of {}", table.factor);
        }
        // rate=0 is the base treatment alone: pooled with the wset=64 sweep it would be 20.
        let at_zero = e.effect_points("rate", &["0".to_owned()], "downtime.probe_gap");
        assert_eq!((at_zero[0].mean, at_zero[0].treatments), (10.0, 1));
    }
}
