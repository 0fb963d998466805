//! `delivered.png`, in two panels (plotters, bitmap backend; text with the
//! DejaVu font if the machine has it):
//! - top: kxdp / kernel, the ratio of the median delivered packets/s, one
//!   bar per point (frame size, flows) grouped by scenario, on a log axis
//!   with bars growing from the 1× line: up where kxdp delivers more, down
//!   where it delivers less, each bar labelled with its value;
//! - bottom: the absolute figures, Mpps, kxdp (solid) beside the kernel
//!   (light) per point, and the testpmd AF_XDP ceiling in a group of its own.
//!
//! It reads only what [`PlotData`] holds, so `kxdp-bench plot DIR` can
//! redraw a past run from its `report.json`.

use std::path::Path;

use anyhow::{bail, Context};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use serde_json::Value;

use super::Report;

const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/lato/Lato-Regular.ttf",
];
/// Image size: wide enough for 8 scenario groups of 8 bars with readable
/// labels, tall enough for both panels (and the README shows it scaled).
const WIDTH: u32 = 1500;
const HEIGHT: u32 = 1000;
/// The ratio axis: 1/2× to 16× (log), wider if a ratio falls outside.
const RATIO_RANGE: (f64, f64) = (0.5, 16.0);
/// One colour per (size, flows) point, in the order points first appear.
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];
const CEILING_GROUP: &str = "testpmd ceiling";

fn load_font() -> anyhow::Result<()> {
    for f in FONTS {
        if let Ok(bytes) = std::fs::read(f) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return Ok(());
            }
        }
    }
    bail!("no TrueType font found (fonts-dejavu-core)")
}

/// What the plot shows of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct PlotData {
    /// "median of 3 runs, 2026-11-26T05:15:54Z".
    pub subtitle: String,
    pub points: Vec<PlotPoint>,
    /// testpmd's delivered pps per (size, flows).
    pub ceiling: Vec<((usize, u16), f64)>,
}

/// One point: medians of delivered packets/s.
#[derive(Debug, Clone, PartialEq)]
pub struct PlotPoint {
    pub scenario: String,
    pub size: usize,
    pub flows: u16,
    pub kxdp: Option<f64>,
    pub kernel: Option<f64>,
}

impl PlotData {
    pub fn from_report(r: &Report) -> PlotData {
        PlotData {
            subtitle: format!("median of {} runs, {}", r.runs, r.date),
            points: r
                .points
                .iter()
                .map(|p| PlotPoint {
                    scenario: p.scenario.clone(),
                    size: p.size,
                    flows: p.flows,
                    kxdp: p.kxdp.median(),
                    kernel: p.kernel.median(),
                })
                .collect(),
            ceiling: r
                .ceiling
                .iter()
                .filter_map(|c| Some(((c.size, c.flows), c.testpmd.median()?)))
                .collect(),
        }
    }

    /// The same from a `report.json` that [`Report`] wrote.
    pub fn from_json(v: &Value) -> anyhow::Result<PlotData> {
        let median = |m: &Value| m["delivered_pps"]["median"].as_f64();
        let key = |p: &Value| -> anyhow::Result<(usize, u16)> {
            let size = p["size"].as_u64().context("a point without size")?;
            let flows = p["flows"].as_u64().context("a point without flows")?;
            Ok((size as usize, u16::try_from(flows)?))
        };
        let mut points = Vec::new();
        for p in v["points"].as_array().context("report.json: no points")? {
            let (size, flows) = key(p)?;
            points.push(PlotPoint {
                scenario: p["scenario"]
                    .as_str()
                    .context("a point without scenario")?
                    .to_string(),
                size,
                flows,
                kxdp: median(&p["kxdp"]),
                kernel: median(&p["kernel"]),
            });
        }
        let mut ceiling = Vec::new();
        for c in v["ceiling"].as_array().into_iter().flatten() {
            if let Some(pps) = median(&c["testpmd"]) {
                ceiling.push((key(c)?, pps));
            }
        }
        Ok(PlotData {
            subtitle: format!(
                "median of {} runs, {}",
                v["runs"].as_u64().unwrap_or(0),
                v["date"].as_str().unwrap_or("?")
            ),
            points,
            ceiling,
        })
    }

    /// Scenario groups in the order of the run, then the ceiling's.
    fn groups(&self) -> Vec<String> {
        let mut groups: Vec<String> = Vec::new();
        for p in &self.points {
            if !groups.contains(&p.scenario) {
                groups.push(p.scenario.clone());
            }
        }
        if !self.ceiling.is_empty() {
            groups.push(CEILING_GROUP.to_string());
        }
        groups
    }

    /// The (size, flows) series in the order they first appear.
    fn series(&self) -> Vec<(usize, u16)> {
        let mut series = Vec::new();
        let keys = self.points.iter().map(|p| (p.size, p.flows));
        for k in keys.chain(self.ceiling.iter().map(|c| c.0)) {
            if !series.contains(&k) {
                series.push(k);
            }
        }
        series
    }
}

/// "svc-scale (10000 svc)" for "svc-scale, 10000 services / 99982 endpoints":
/// short enough to sit under its group.
fn short_label(scenario: &str) -> String {
    let Some((name, rest)) = scenario.split_once(", ") else {
        return scenario.to_string();
    };
    match rest.split_once(" services") {
        Some((n, _)) => format!("{name} ({n} svc)"),
        None => name.to_string(),
    }
}

fn series_label((size, flows): (usize, u16)) -> String {
    let noun = if flows == 1 { "flow" } else { "flows" };
    format!("{size} B, {flows} {noun}")
}

/// Writes the plot of `r` to `path`.
pub fn delivered(r: &Report, path: &Path) -> anyhow::Result<()> {
    draw(&PlotData::from_report(r), path)
}

/// Writes the two panels of `d` to `path` (a PNG).
pub fn draw(d: &PlotData, path: &Path) -> anyhow::Result<()> {
    if d.points.is_empty() && d.ceiling.is_empty() {
        bail!("nothing to plot");
    }
    load_font()?;
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(HEIGHT * 11 / 20);
    ratio_panel(d, &top)?;
    absolute_panel(d, &bottom)?;
    root.present().context("writing the PNG")?;
    Ok(())
}

/// The x position of bar `slot` of `slots` in group `g` (bars fill the
/// middle 80 % of the group's unit width).
fn bar_x(g: usize, slot: usize, slots: usize) -> (f64, f64) {
    let w = 0.8 / slots.max(1) as f64;
    let x0 = g as f64 + 0.1 + w * slot as f64;
    (x0, x0 + w * 0.9)
}

fn ratio_panel(d: &PlotData, area: &DrawingArea<BitMapBackend, Shift>) -> anyhow::Result<()> {
    let groups: Vec<String> = d
        .groups()
        .into_iter()
        .filter(|g| g != CEILING_GROUP)
        .collect();
    let series = d.series();
    let ratios: Vec<(usize, usize, f64)> = d
        .points
        .iter()
        .filter_map(|p| {
            let g = groups.iter().position(|g| *g == p.scenario)?;
            let s = series.iter().position(|&k| k == (p.size, p.flows))?;
            let (k, l) = (p.kxdp?, p.kernel?);
            (l > 0.0).then(|| (g, s, k / l))
        })
        .collect();
    let lo = ratios.iter().fold(RATIO_RANGE.0, |a, r| a.min(r.2 / 1.3));
    let hi = ratios.iter().fold(RATIO_RANGE.1, |a, r| a.max(r.2 * 1.3));
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("kxdp / kernel, delivered packets/s ({})", d.subtitle),
            ("sans-serif", 22),
        )
        .margin(14)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..groups.len() as f64, (lo..hi).log_scale())
        .context("ratio chart")?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .light_line_style(WHITE)
        .y_desc("kxdp / kernel (log scale)")
        .y_label_formatter(&|v| format!("{v}×"))
        .label_style(("sans-serif", 15))
        .draw()?;
    // 1×: where kxdp and the kernel deliver the same.
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(0.0, 1.0), (groups.len() as f64, 1.0)],
        BLACK.stroke_width(2),
    )))?;
    for (s, &key) in series.iter().enumerate() {
        let color = COLORS[s % COLORS.len()];
        let mine: Vec<_> = ratios.iter().filter(|r| r.1 == s).collect();
        if mine.is_empty() {
            continue;
        }
        chart
            .draw_series(mine.iter().map(|&&(g, s, v)| {
                let (x0, x1) = bar_x(g, s, series.len());
                Rectangle::new([(x0, 1.0), (x1, v)], color.filled())
            }))?
            .label(series_label(key))
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
        chart.draw_series(mine.iter().map(|&&(g, s, v)| {
            let (x0, x1) = bar_x(g, s, series.len());
            let y = if v >= 1.0 { v * 1.04 } else { v / 1.12 };
            let text = if v >= 10.0 {
                format!("{v:.0}×")
            } else {
                format!("{v:.1}×")
            };
            Text::new(
                text,
                ((x0 + x1) / 2.0 - 0.035, y),
                ("sans-serif", 13).into_font().color(&BLACK),
            )
        }))?;
    }
    chart.draw_series(groups.iter().enumerate().map(|(g, name)| {
        Text::new(
            short_label(name),
            (g as f64 + 0.08, lo / 1.04),
            ("sans-serif", 15),
        )
    }))?;
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .label_font(("sans-serif", 15))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    Ok(())
}

fn absolute_panel(d: &PlotData, area: &DrawingArea<BitMapBackend, Shift>) -> anyhow::Result<()> {
    let groups = d.groups();
    let series = d.series();
    // (group, slot, Mpps, colour, light): kxdp and the kernel side by side
    // per series; the ceiling's group has one bar per series.
    let mut bars: Vec<(usize, usize, f64, RGBColor, bool)> = Vec::new();
    let slots = series.len() * 2;
    for p in &d.points {
        let Some(g) = groups.iter().position(|g| *g == p.scenario) else {
            continue;
        };
        let Some(s) = series.iter().position(|&k| k == (p.size, p.flows)) else {
            continue;
        };
        let color = COLORS[s % COLORS.len()];
        for (i, v) in [p.kxdp, p.kernel].into_iter().enumerate() {
            if let Some(v) = v {
                bars.push((g, 2 * s + i, v / 1e6, color, i == 1));
            }
        }
    }
    let ceiling_group = groups.len().saturating_sub(1);
    for &(key, pps) in &d.ceiling {
        if let Some(s) = series.iter().position(|&k| k == key) {
            bars.push((ceiling_group, 2 * s, pps / 1e6, RGBColor(90, 90, 90), false));
        }
    }
    let ymax = bars.iter().fold(0.1f64, |a, b| a.max(b.2)) * 1.12;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "delivered Mpps: kxdp (solid) and the kernel (light) per point; testpmd's AF_XDP io-forward ceiling (grey)",
            ("sans-serif", 18),
        )
        .margin(14)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..groups.len() as f64, 0f64..ymax)
        .context("absolute chart")?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .light_line_style(WHITE)
        .y_desc("Mpps")
        .y_label_formatter(&|v| format!("{v:.1}"))
        .label_style(("sans-serif", 15))
        .draw()?;
    chart.draw_series(bars.iter().map(|&(g, slot, v, color, light)| {
        let (x0, x1) = bar_x(g, slot, slots);
        let style = if light {
            color.mix(0.35).filled()
        } else {
            color.filled()
        };
        Rectangle::new([(x0, 0.0), (x1, v)], style)
    }))?;
    chart.draw_series(groups.iter().enumerate().map(|(g, name)| {
        Text::new(
            short_label(name),
            (g as f64 + 0.08, -ymax * 0.03),
            ("sans-serif", 15),
        )
    }))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Value {
        serde_json::json!({
            "date": "2026-11-26T05:15:54Z",
            "runs": 3,
            "points": [
                {"scenario": "pod-svc", "size": 64, "flows": 1,
                 "kxdp": {"delivered_pps": {"median": 900000.0}},
                 "kernel": {"delivered_pps": {"median": 300000.0}}},
                {"scenario": "svc-scale, 10000 services / 99982 endpoints", "size": 64, "flows": 1000,
                 "kxdp": {"delivered_pps": {"median": 800000.0}},
                 "kernel": {"delivered_pps": null}}
            ],
            "ceiling": [{"size": 64, "flows": 1, "testpmd": {"delivered_pps": {"median": 980000.0}}}]
        })
    }

    #[test]
    fn plot_data_reads_a_report_json() {
        let d = PlotData::from_json(&report()).unwrap();
        assert_eq!(d.subtitle, "median of 3 runs, 2026-11-26T05:15:54Z");
        assert_eq!(d.points.len(), 2);
        assert_eq!(d.points[0].kxdp, Some(900000.0));
        assert_eq!(d.points[1].kernel, None);
        assert_eq!(d.ceiling, vec![((64, 1), 980000.0)]);
        assert_eq!(
            d.groups(),
            [
                "pod-svc",
                "svc-scale, 10000 services / 99982 endpoints",
                CEILING_GROUP
            ]
        );
        assert_eq!(d.series(), [(64, 1), (64, 1000)]);
    }

    #[test]
    fn labels_are_short() {
        assert_eq!(
            short_label("svc-scale, 10000 services / 99982 endpoints"),
            "svc-scale (10000 svc)"
        );
        assert_eq!(short_label("pod-svc"), "pod-svc");
        assert_eq!(series_label((1400, 1000)), "1400 B, 1000 flows");
    }

    #[test]
    fn draws_a_png_of_the_fixed_size() {
        let d = PlotData::from_json(&report()).unwrap();
        let path = std::env::temp_dir().join(format!("kxdp-plot-{}.png", std::process::id()));
        draw(&d, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        // IHDR: width and height, big-endian, at bytes 16..24.
        let dim = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
        assert_eq!((dim(16), dim(20)), (WIDTH, HEIGHT));
    }
}
