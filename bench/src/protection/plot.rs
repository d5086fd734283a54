//! One picture per scenario: users' successes per second, calls reaching the upstream per
//! second and local refusals per second, one line per variant, the fault shaded.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

#[derive(Clone)]
/// One variant's lines: per-second rates in buckets of [`BUCKET_MS`].
pub struct Lines {
    pub variant: &'static str,
    pub success: Vec<f64>,
    pub calls: Vec<f64>,
    pub refused: Vec<f64>,
}

pub const BUCKET_MS: f64 = 500.0;

/// Picks one of a variant's lines for a panel.
type Pick = fn(&Lines) -> &Vec<f64>;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Loads the one font the charts use; false (no pictures) if the machine has none.
pub fn font_ready() -> bool {
    let Ok(bytes) = std::fs::read(FONT) else {
        return false;
    };
    register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(bytes.into_boxed_slice()),
    )
    .is_ok()
}

const COLOURS: [RGBColor; 7] = [
    RGBColor(0, 0, 0),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 158, 115),
    RGBColor(213, 94, 0),
    RGBColor(0, 114, 178),
    RGBColor(204, 121, 167),
];

/// Draws `lines` to `path`; `fault` is the fault's span in seconds.
pub fn draw(path: &Path, title: &str, fault: (f64, f64), lines: &[Lines]) -> Result<(), String> {
    let root = BitMapBackend::new(path, (900, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root
        .titled(title, ("sans-serif", 20))
        .map_err(|e| e.to_string())?;
    let panels = root.split_evenly((3, 1));
    let pick: [(&str, Pick); 3] = [
        ("users served /s", |l| &l.success),
        ("upstream calls /s", |l| &l.calls),
        ("refused locally /s", |l| &l.refused),
    ];
    for (i, (panel, (label, get))) in panels.iter().zip(pick).enumerate() {
        panel_chart(panel, label, fault, lines, get, i == 0)?;
    }
    root.present().map_err(|e| e.to_string())
}

fn panel_chart(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    label: &str,
    fault: (f64, f64),
    lines: &[Lines],
    get: Pick,
    legend: bool,
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let len = lines.iter().map(|l| get(l).len()).max().unwrap_or(1);
    let x_end = len as f64 * BUCKET_MS / 1_000.0;
    let top = lines
        .iter()
        .flat_map(|l| get(l).iter().copied())
        .fold(10.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .margin(8)
        .x_label_area_size(22)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..x_end, 0.0..top)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .y_desc(label)
        .light_line_style(WHITE)
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(std::iter::once(Rectangle::new(
            [(fault.0, 0.0), (fault.1, top)],
            RGBColor(255, 200, 200).mix(0.5).filled(),
        )))
        .map_err(|e| err(&e))?;
    for (i, l) in lines.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points = get(l)
            .iter()
            .enumerate()
            .map(|(b, &v)| ((b as f64 + 0.5) * BUCKET_MS / 1_000.0, v));
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(l.variant)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour.stroke_width(2)));
    }
    if legend {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .draw()
            .map_err(|e| err(&e))?;
    }
    Ok(())
}
