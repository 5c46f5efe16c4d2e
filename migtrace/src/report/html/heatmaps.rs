//! Heatmaps of treatment means: the paper's surfaces (downtime and migration time over
//! RATE × WSET per VMSIZE) for every pair of numeric factors of a factorial design, per
//! combination of the other factors' levels when there are few.

use super::{Builder, Experiment, HtmlError, Varied, esc, num, slug, table, varied};
use crate::{
    experiment::spec::Design,
    report::plots::{self, HeatCell, Heatmap},
    stats::{EFFECT_MEASURES, Stats},
};

/// Facet combinations up to which heatmaps are drawn per level of the other factors;
/// beyond, a cell is the mean of the treatment means over them.
const MAX_FACETS: usize = 6;

pub(super) fn section(b: &mut Builder, e: &Experiment<'_>) -> Result<(), HtmlError> {
    b.section("heatmaps", "heatmaps", "Heatmaps of treatment means", |b| {
        let maps = e.heatmaps();
        if e.spec.raw.design != Design::Factorial {
            b.html.push_str("<p>A sweep varies one factor at a time: there are no pairs of factors to map.</p>\n");
        } else if maps.is_empty() {
            b.html.push_str("<p>Fewer than two numeric factors with more than one level: nothing to map.</p>\n");
        } else {
            b.html.push_str(
                "<p class=\"note\">The paper's surfaces (downtime and migration time over RATE × WSET per VMSIZE) \
                 as heatmaps: each cell the mean of a treatment's usable migrations (or of the treatment means over \
                 the factors named in the title), n its migrations; grey cells have no usable migration.</p>\n",
            );
        }
        for (i, h) in maps.iter().enumerate() {
            heatmap_figure(b, i, h)?;
        }
        Ok(())
    })
}

/// The `i`-th heatmap with its cells as a table.
fn heatmap_figure(b: &mut Builder, i: usize, h: &Heatmap) -> Result<(), HtmlError> {
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
    let file =
        format!("heatmap-{:02}-{}-{}-x-{}{facet}.svg", i + 1, slug(&h.measure), slug(&h.y_factor), slug(&h.x_factor));
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
    Ok(())
}

impl Experiment<'_> {
    /// Heatmaps of the [`EFFECT_MEASURES`] for every pair of numeric factors (factorial
    /// designs only): per combination of the other factors' levels when there are few,
    /// else each cell the mean of the treatment means over them.
    pub fn heatmaps(&self) -> Vec<Heatmap> {
        if self.spec.raw.design != Design::Factorial {
            return Vec::new();
        }
        let factors = varied(self.spec);
        let mut out = Vec::new();
        for (i, y) in factors.iter().enumerate() {
            for x in &factors[i + 1..] {
                if !y.numeric || !x.numeric {
                    continue;
                }
                let others: Vec<&Varied> = factors.iter().filter(|f| f.name != y.name && f.name != x.name).collect();
                let facets = facets(&others);
                for m in EFFECT_MEASURES {
                    for facet in &facets {
                        out.push(self.heatmap(m, x, y, facet, &others));
                    }
                }
            }
        }
        out
    }

    /// The heatmap of `measure` over `x` × `y` at the `facet`'s levels of the other
    /// factors; an empty facet averages over `others`.
    fn heatmap(
        &self,
        measure: &str,
        x: &Varied,
        y: &Varied,
        facet: &[(String, String)],
        others: &[&Varied],
    ) -> Heatmap {
        let mut cells = Vec::new();
        for (xi, xl) in x.levels.iter().enumerate() {
            for (yi, yl) in y.levels.iter().enumerate() {
                let st: Vec<&Stats> = self
                    .summary
                    .treatments
                    .iter()
                    .filter(|t| t.levels.get(&x.name) == Some(xl) && t.levels.get(&y.name) == Some(yl))
                    .filter(|t| facet.iter().all(|(f, l)| t.levels.get(f) == Some(l)))
                    .filter_map(|t| t.measures.get(measure))
                    .collect();
                if st.is_empty() {
                    continue;
                }
                cells.push(HeatCell {
                    x: xi,
                    y: yi,
                    mean: st.iter().map(|s| s.mean).sum::<f64>() / st.len() as f64,
                    n: st.iter().map(|s| s.n).sum(),
                    treatments: st.len(),
                });
            }
        }
        Heatmap {
            title: format!("{} ms over {} × {}{}", plots::label(measure), x.name, y.name, facet_text(facet, others)),
            measure: measure.to_owned(),
            x_factor: x.name.clone(),
            y_factor: y.name.clone(),
            x_levels: x.levels.clone(),
            y_levels: y.levels.clone(),
            facet: facet.to_vec(),
            cells,
        }
    }
}

/// Every combination of the other factors' levels, when there are at most
/// [`MAX_FACETS`]; else a single empty facet (the mean over them).
fn facets(others: &[&Varied]) -> Vec<Vec<(String, String)>> {
    let combos: usize = others.iter().map(|o| o.levels.len()).product();
    if combos > MAX_FACETS {
        return vec![Vec::new()];
    }
    others.iter().fold(vec![Vec::new()], |acc, o| {
        acc.into_iter()
            .flat_map(|partial| {
                o.levels.iter().map(move |l| {
                    let mut p = partial.clone();
                    p.push((o.name.clone(), l.clone()));
                    p
                })
            })
            .collect()
    })
}

/// The title's tail naming the facet, or the factors a cell averages over.
fn facet_text(facet: &[(String, String)], others: &[&Varied]) -> String {
    if facet.is_empty() && !others.is_empty() {
        format!(", mean over {}", others.iter().map(|o| o.name.as_str()).collect::<Vec<_>>().join(", "))
    } else if facet.is_empty() {
        String::new()
    } else {
        format!(", {}", facet.iter().map(|(f, l)| format!("{f}={l}")).collect::<Vec<_>>().join(", "))
    }
}
