//! SVG pictures (plotters' SVG backend): the interaction graph, and line charts for spectra,
//! sparsity and ablation curves and LLC traces.

use crate::error::{Error, Result};
use crate::graph::{InteractionGraph, Modules};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

fn draw_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::malformed(path, "svg", format!("drawing failed: {e}"))
}

/// A categorical colour (Tableau 10).
fn colour(k: usize) -> RGBColor {
    let (r, g, b) = crate::graph::palette(k);
    RGBColor(r, g, b)
}

/// Draws the graph: one column per node layer (names on top), directions top to bottom,
/// edge width ∝ weight, nodes coloured by module (grey without modules or for singletons).
pub fn draw_graph(path: &Path, graph: &InteractionGraph, modules: Option<&Modules>, title: &str) -> Result<()> {
    let (width, height) = (220 * graph.layers.len().max(2) as u32, 720u32);
    let root = SVGBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(path, e))?;
    let (top, bottom, left) = (70.0, 30.0, 110.0);
    let column = |l: usize| left + l as f64 * (width as f64 - 2.0 * left) / (graph.layers.len().max(2) - 1) as f64;
    let per_layer: Vec<usize> =
        (0..graph.layers.len()).map(|l| graph.nodes.iter().filter(|n| n.layer == l).count()).collect();
    let position = |id: usize| {
        let n = &graph.nodes[id];
        let count = per_layer[n.layer].max(1) as f64;
        let y = top + (n.direction as f64 + 0.5) * (height as f64 - top - bottom) / count;
        (column(n.layer) as i32, y as i32)
    };
    root.draw(&Text::new(title.to_string(), (10, 10), ("sans-serif", 22).into_font()))
        .map_err(|e| draw_err(path, e))?;
    for (l, name) in graph.layers.iter().enumerate() {
        let style = ("sans-serif", 16).into_font().color(&BLACK);
        root.draw(&Text::new(name.clone(), (column(l) as i32 - 30, 45), style)).map_err(|e| draw_err(path, e))?;
    }
    let max = graph.edges.iter().fold(0.0_f64, |m, e| m.max(e.weight)).max(f64::MIN_POSITIVE);
    let flat = modules.map(Modules::flat);
    for e in &graph.edges {
        let w = e.weight / max;
        let same = flat.as_ref().map(|m| m[e.from] == m[e.to]);
        let c = match same {
            Some(true) => colour(flat.as_ref().expect("checked")[e.from]),
            _ => RGBColor(120, 120, 120),
        };
        let style = c.mix(0.25 + 0.6 * w).stroke_width((0.5 + 6.0 * w).round() as u32);
        root.draw(&PathElement::new(vec![position(e.from), position(e.to)], style)).map_err(|e| draw_err(path, e))?;
    }
    for id in 0..graph.nodes.len() {
        let fill = match (&flat, modules) {
            (Some(m), Some(mods)) if mods.sizes[m[id]] > 1 => colour(m[id]),
            _ => RGBColor(187, 187, 187),
        };
        root.draw(&Circle::new(position(id), 5, fill.filled())).map_err(|e| draw_err(path, e))?;
    }
    root.present().map_err(|e| draw_err(path, e))
}

/// One named line of a chart.
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// Points `(x, y)`.
    pub points: Vec<(f64, f64)>,
}

/// Axis scale of a chart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    /// Linear axis.
    Linear,
    /// Base-10 logarithmic axis (non-positive values are dropped).
    Log,
}

/// A line chart with a title, axis labels and a legend.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    y_scale: Scale,
    series: &[Series],
) -> Result<()> {
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(path, e))?;
    let usable = |p: &(f64, f64)| p.0.is_finite() && p.1.is_finite() && (y_scale == Scale::Linear || p.1 > 0.0);
    let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.points.iter().copied()).filter(usable).collect();
    if all.is_empty() {
        return Err(Error::Empty { what: format!("{}: no finite points to plot", path.display()) });
    }
    let (x0, x1) = bounds(all.iter().map(|p| p.0));
    let (y0, y1) = bounds(all.iter().map(|p| p.1));
    let result = match y_scale {
        Scale::Linear => draw_lines(&root, title, x_label, y_label, x0..x1, y0..y1, series, usable),
        Scale::Log => draw_lines(&root, title, x_label, y_label, x0..x1, (y0..y1).log_scale(), series, usable),
    };
    result.map_err(|e| draw_err(path, e))?;
    root.present().map_err(|e| draw_err(path, e))
}

#[allow(clippy::too_many_arguments)]
fn draw_lines<Y>(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    x: std::ops::Range<f64>,
    y: Y,
    series: &[Series],
    usable: impl Fn(&(f64, f64)) -> bool,
) -> std::result::Result<(), String>
where
    Y: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
    Y::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(75)
        .build_cartesian_2d(x, y)
        .map_err(|e| e.to_string())?;
    chart.configure_mesh().x_desc(x_label).y_desc(y_label).draw().map_err(|e| e.to_string())?;
    for (k, s) in series.iter().enumerate() {
        let c = colour(k);
        chart
            .draw_series(LineSeries::new(s.points.iter().copied().filter(|p| usable(p)), c.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if lo == hi { (lo - 0.5 * lo.abs().max(1.0), hi + 0.5 * hi.abs().max(1.0)) } else { (lo, hi) }
}
