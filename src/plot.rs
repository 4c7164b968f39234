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
    draw(path, graph, modules, &[], title)
}

/// [`draw_graph`] with a text beside every node (`labels[id]` for graph node `id`; empty strings
/// are left out): directions named by what they compute, such as their Fourier frequencies
/// ([`crate::fourier`]). The picture grows with the longest column so that labels do not overlap.
pub fn draw_graph_labelled(
    path: &Path,
    graph: &InteractionGraph,
    modules: Option<&Modules>,
    labels: &[String],
    title: &str,
) -> Result<()> {
    if labels.len() != graph.nodes.len() {
        return Err(Error::shape(
            "draw_graph_labelled: one label per graph node",
            &[graph.nodes.len()],
            &[labels.len()],
        ));
    }
    draw(path, graph, modules, labels, title)
}

fn draw(
    path: &Path,
    graph: &InteractionGraph,
    modules: Option<&Modules>,
    labels: &[String],
    title: &str,
) -> Result<()> {
    let per_layer: Vec<usize> =
        (0..graph.layers.len()).map(|l| graph.nodes.iter().filter(|n| n.layer == l).count()).collect();
    let (top, bottom, left) = (70.0, 30.0, 110.0);
    let (column_width, height) = if labels.is_empty() {
        (220, 720u32)
    } else {
        let longest = per_layer.iter().copied().max().unwrap_or(1) as f64;
        (300, 720u32.max((top + bottom + 13.0 * longest) as u32))
    };
    let width = column_width * graph.layers.len().max(2) as u32;
    let root = SVGBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(path, e))?;
    let column = |l: usize| left + l as f64 * (width as f64 - 2.0 * left) / (graph.layers.len().max(2) - 1) as f64;
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
        if let Some(label) = labels.get(id).filter(|l| !l.is_empty()) {
            let (x, y) = position(id);
            let style = ("sans-serif", 10).into_font().color(&BLACK);
            root.draw(&Text::new(label.clone(), (x + 8, y - 5), style)).map_err(|e| draw_err(path, e))?;
        }
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
        Scale::Linear => draw_lines(&root, title, x_label, y_label, x0..x1, y0..y1, series, usable, false),
        Scale::Log => draw_lines(&root, title, x_label, y_label, x0..x1, (y0..y1).log_scale(), series, usable, false),
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
    markers: bool,
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
        if markers {
            chart
                .draw_series(s.points.iter().copied().filter(|p| usable(p)).map(|p| Circle::new(p, 5, c.filled())))
                .map_err(|e| e.to_string())?;
        }
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

/// One cell of a [`heat_map`].
#[derive(Clone, Debug, PartialEq)]
pub struct HeatCell {
    /// Column (x) index.
    pub column: usize,
    /// Row (y) index, from the top.
    pub row: usize,
    /// The value that sets the colour; `None` draws the cell grey.
    pub value: Option<f64>,
    /// Main text (the value, formatted).
    pub label: String,
    /// A second, smaller line (a status); may be empty.
    pub note: String,
    /// Draw a thick frame around the cell (the recommended setting).
    pub framed: bool,
}

/// A colour for `t ∈ [0, 1]`: a perceptually ordered ramp from dark blue through teal to yellow
/// (close to viridis), so that the order of values survives greyscale printing.
fn ramp(t: f64) -> RGBColor {
    const STOPS: [(f64, (f64, f64, f64)); 5] = [
        (0.0, (68.0, 1.0, 84.0)),
        (0.25, (59.0, 82.0, 139.0)),
        (0.5, (33.0, 145.0, 140.0)),
        (0.75, (94.0, 201.0, 98.0)),
        (1.0, (253.0, 231.0, 37.0)),
    ];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    let k = STOPS.iter().position(|s| s.0 >= t).unwrap_or(STOPS.len() - 1).max(1);
    let ((t0, a), (t1, b)) = (STOPS[k - 1], STOPS[k]);
    let f = if t1 > t0 { (t - t0) / (t1 - t0) } else { 0.0 };
    let mix = |x: f64, y: f64| (x + f * (y - x)).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// A heat map: `x_ticks.len()` columns by `y_ticks.len()` rows of labelled cells, coloured by
/// value (a dark-to-light ramp between the smallest and largest finite value, named
/// `value_name` in the colour key). Calibration sweeps draw their grid with it.
#[allow(clippy::too_many_arguments)]
pub fn heat_map(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    x_ticks: &[String],
    y_ticks: &[String],
    value_name: &str,
    cells: &[HeatCell],
) -> Result<()> {
    let (cols, rows) = (x_ticks.len(), y_ticks.len());
    if cols == 0 || rows == 0 {
        return Err(Error::Empty { what: format!("{}: heat map without rows or columns", path.display()) });
    }
    if let Some(c) = cells.iter().find(|c| c.column >= cols || c.row >= rows) {
        return Err(Error::invalid("heat map cell", format!("({}, {})", c.column, c.row), "outside the grid"));
    }
    let (cell_w, cell_h) = (130i32, 64i32);
    let (left, top, right, bottom) = (150i32, 70i32, 40i32, 110i32);
    let width = (left + cell_w * cols as i32 + right) as u32;
    let height = (top + cell_h * rows as i32 + bottom) as u32;
    let root = SVGBackend::new(path, (width.max(520), height)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<std::io::Error>| draw_err(path, e);
    root.fill(&WHITE).map_err(err)?;
    let font = |size: i32| ("sans-serif", size).into_font();
    root.draw(&Text::new(title.to_string(), (10, 12), font(20))).map_err(err)?;
    let finite: Vec<f64> = cells.iter().filter_map(|c| c.value).filter(|v| v.is_finite()).collect();
    let (lo, hi) = finite.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let norm = |v: f64| if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
    for c in cells {
        let (x0, y0) = (left + cell_w * c.column as i32, top + cell_h * c.row as i32);
        let fill = match c.value {
            Some(v) if v.is_finite() => ramp(norm(v)),
            _ => RGBColor(190, 190, 190),
        };
        root.draw(&Rectangle::new([(x0, y0), (x0 + cell_w, y0 + cell_h)], fill.filled())).map_err(err)?;
        root.draw(&Rectangle::new([(x0, y0), (x0 + cell_w, y0 + cell_h)], WHITE.stroke_width(1))).map_err(err)?;
        let light = c.value.is_some_and(|v| norm(v) > 0.6) || c.value.is_none();
        let ink = if light { BLACK } else { WHITE };
        root.draw(&Text::new(c.label.clone(), (x0 + 8, y0 + 10), font(16).color(&ink))).map_err(err)?;
        if !c.note.is_empty() {
            root.draw(&Text::new(c.note.clone(), (x0 + 8, y0 + 36), font(12).color(&ink))).map_err(err)?;
        }
        if c.framed {
            root.draw(&Rectangle::new([(x0 + 2, y0 + 2), (x0 + cell_w - 2, y0 + cell_h - 2)], RED.stroke_width(4)))
                .map_err(err)?;
        }
    }
    for (i, t) in x_ticks.iter().enumerate() {
        let x = left + cell_w * i as i32 + 10;
        root.draw(&Text::new(t.clone(), (x, top + cell_h * rows as i32 + 8), font(14))).map_err(err)?;
    }
    for (j, t) in y_ticks.iter().enumerate() {
        let y = top + cell_h * j as i32 + cell_h / 2 - 8;
        root.draw(&Text::new(t.clone(), (left - 90, y), font(14))).map_err(err)?;
    }
    let axis_y = top + cell_h * rows as i32 + 34;
    root.draw(&Text::new(x_label.to_string(), (left, axis_y), font(15))).map_err(err)?;
    root.draw(&Text::new(y_label.to_string(), (10, top - 22), font(15))).map_err(err)?;
    // Colour key.
    let key_y = axis_y + 30;
    for s in 0..100 {
        let x = left + 2 * s;
        root.draw(&Rectangle::new([(x, key_y), (x + 2, key_y + 12)], ramp(s as f64 / 99.0).filled())).map_err(err)?;
    }
    let key = if finite.is_empty() {
        format!("{value_name}: no finite value; grey = none")
    } else {
        format!("{value_name}: {lo:.3} … {hi:.3}; grey = none; red frame = recommended")
    };
    root.draw(&Text::new(key, (left + 210, key_y), font(13))).map_err(err)?;
    root.present().map_err(err)
}

/// One chart of a [`panel_chart`].
pub struct Panel {
    /// The panel's caption.
    pub title: String,
    /// x-axis label.
    pub x_label: String,
    /// y-axis label.
    pub y_label: String,
    /// y-axis scale.
    pub y_scale: Scale,
    /// Mark every point of every series with a dot (one per checkpoint, say).
    pub markers: bool,
    /// The lines.
    pub series: Vec<Series>,
}

/// Several line charts side by side under one title (a training curve next to λ̂ over the
/// checkpoints, say). Panels without a finite point are errors, as for [`line_chart`].
pub fn panel_chart(path: &Path, title: &str, panels: &[Panel]) -> Result<()> {
    if panels.is_empty() {
        return Err(Error::Empty { what: format!("{}: no panel to draw", path.display()) });
    }
    let width = (640 * panels.len()).max(900) as u32;
    let root = SVGBackend::new(path, (width, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(path, e))?;
    root.draw(&Text::new(title.to_string(), (12, 10), ("sans-serif", 22).into_font()))
        .map_err(|e| draw_err(path, e))?;
    let (_, body) = root.split_vertically(40);
    let areas = body.split_evenly((1, panels.len()));
    for (area, panel) in areas.iter().zip(panels) {
        let scale = panel.y_scale;
        let usable = |p: &(f64, f64)| p.0.is_finite() && p.1.is_finite() && (scale == Scale::Linear || p.1 > 0.0);
        let all: Vec<(f64, f64)> = panel.series.iter().flat_map(|s| s.points.iter().copied()).filter(usable).collect();
        if all.is_empty() {
            return Err(Error::Empty {
                what: format!("{}: panel `{}` has no finite point", path.display(), panel.title),
            });
        }
        let (x0, x1) = bounds(all.iter().map(|p| p.0));
        let (y0, y1) = bounds(all.iter().map(|p| p.1));
        let (t, xl, yl, s) = (&panel.title, &panel.x_label, &panel.y_label, &panel.series);
        let result = match scale {
            Scale::Linear => draw_lines(area, t, xl, yl, x0..x1, y0..y1, s, usable, panel.markers),
            Scale::Log => draw_lines(area, t, xl, yl, x0..x1, (y0..y1).log_scale(), s, usable, panel.markers),
        };
        result.map_err(|e| draw_err(path, e))?;
    }
    root.present().map_err(|e| draw_err(path, e))
}
