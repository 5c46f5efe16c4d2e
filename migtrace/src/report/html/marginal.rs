//! Marginal means for figures over two or three factors: at each combination of the
//! factors shown, the mean of the treatment means over every other factor, with the
//! 95 % confidence interval of that mean (as the single-variable plots have it).

use super::{Experiment, effects::mean_of_means_ci};
use crate::{
    report::plots::{LevelPoint, Series},
    stats::Stats,
};

impl Experiment<'_> {
    /// `measure` over `x`'s levels, a series per level of `series` (one series named
    /// after `single` when None), among the treatments at every level in `at`. Points
    /// without a value are left out, series without a point too.
    pub(super) fn marginal_series(
        &self,
        measure: &str,
        x: (&str, &[String]),
        series: Option<(&str, &[String])>,
        single: &str,
        at: &[(&str, &str)],
    ) -> Vec<Series> {
        let labels: Vec<Option<&String>> = match series {
            Some((_, levels)) => levels.iter().map(Some).collect(),
            None => vec![None],
        };
        labels
            .into_iter()
            .map(|label| {
                let points =
                    x.1.iter()
                        .filter_map(|level| {
                            let mut want: Vec<(&str, &str)> = at.to_vec();
                            want.push((x.0, level));
                            if let (Some((factor, _)), Some(l)) = (series, label) {
                                want.push((factor, l));
                            }
                            self.marginal_point(measure, level, &want)
                        })
                        .collect();
                Series { label: label.cloned().unwrap_or_else(|| single.to_owned()), points }
            })
            .filter(|s| !s.points.is_empty())
            .collect()
    }

    /// The mean of `measure`'s treatment means over the treatments at every level in
    /// `want`, labelled `level`.
    fn marginal_point(&self, measure: &str, level: &str, want: &[(&str, &str)]) -> Option<LevelPoint> {
        let st: Vec<&Stats> = self
            .summary
            .treatments
            .iter()
            .filter(|t| want.iter().all(|(f, l)| t.levels.get(*f).is_some_and(|v| v == l)))
            .filter_map(|t| t.measures.get(measure))
            .collect();
        if st.is_empty() {
            return None;
        }
        Some(LevelPoint {
            level: level.to_owned(),
            mean: st.iter().map(|s| s.mean).sum::<f64>() / st.len() as f64,
            ci95: mean_of_means_ci(&st),
            n: st.iter().map(|s| s.n).sum(),
            censored: st.iter().map(|s| s.censored).sum(),
            treatments: st.len(),
        })
    }
}
