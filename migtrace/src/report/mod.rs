//! Rendering measurements for people: timeline tables, method comparisons, the HTML
//! report with its figures, Perfetto traces.

pub mod compare;
pub mod experiment;
pub mod html;
pub mod pages;
pub mod perfetto;
pub mod plots;
pub mod timeline;

/// A table in the style every migtrace report uses.
pub fn table(header: &[&str]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(header.iter().map(comfy_table::Cell::new));
    t
}

/// Right-aligns the given columns.
pub fn align_right(t: &mut comfy_table::Table, columns: &[usize]) {
    for &c in columns {
        if let Some(col) = t.column_mut(c) {
            col.set_cell_alignment(comfy_table::CellAlignment::Right);
        }
    }
}

/// `12.345` or `-` for a missing value.
pub fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.3}"))
}
