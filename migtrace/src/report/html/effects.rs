//! Factor effects: per varied factor the paper's single-variable plots, downtime and
//! migration time by level, each point the mean of the treatment means at the level
//! (those the effect tables read) with its 95 % confidence interval.

use std::fmt::Write as _;

use statrs::distribution::{ContinuousCDF as _, StudentsT};

use super::{Builder, Experiment, HtmlError, ci, esc, num, slug, table, varied};
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
             where a treatment has a single migration). n: usable migrations behind the point. Levels are equally \
             spaced on the axis.</p>"
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
                    treatments: st.len(),
                })
            })
            .collect()
    }
}

