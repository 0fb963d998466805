//! `delivered.png`: delivered packets/s per point, kxdp vs kernel, and the
//! testpmd ceiling, as grouped bars (plotters, bitmap backend; text with
//! the DejaVu font if the machine has it).

use std::path::Path;

use anyhow::{bail, Context};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::scenarios::{self, Kind};
use super::Report;

const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/lato/Lato-Regular.ttf",
];

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

/// One group of bars: a label and up to three values (kxdp, kernel, testpmd).
struct Group {
    label: String,
    bars: [Option<f64>; 3],
}

pub fn delivered(r: &Report, path: &Path) -> anyhow::Result<()> {
    let mut groups: Vec<Group> = r
        .points
        .iter()
        .map(|p| Group {
            label: format!("{} {}B {}f", p.scenario, p.size, p.flows),
            // One-hop scenarios: the ceiling at the same point beside them.
            bars: [
                p.kxdp.median(),
                p.kernel.median(),
                scenarios::find(&p.scenario)
                    .filter(|s| s.kind == Kind::Hop)
                    .and_then(|_| {
                        r.ceiling
                            .iter()
                            .find(|c| c.size == p.size && c.flows == p.flows)
                    })
                    .and_then(|c| c.testpmd.median()),
            ],
        })
        .collect();
    groups.extend(r.ceiling.iter().map(|c| Group {
        label: format!("testpmd {}B {}f", c.size, c.flows),
        bars: [None, None, c.testpmd.median()],
    }));
    if groups.is_empty() {
        bail!("nothing to plot");
    }
    load_font()?;
    let ymax = groups
        .iter()
        .flat_map(|g| g.bars.iter().flatten())
        .fold(1.0f64, |a, &b| a.max(b))
        / 1e3
        * 1.15;
    let n = groups.len();
    let width = (160 * n as u32).max(640) + 120;
    let root = BitMapBackend::new(path, (width, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "delivered packets/s (median of {} runs) — {}",
                r.runs, r.date
            ),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(70)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n as f64, 0f64..ymax)
        .context("chart")?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("kpps")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 14))
        .draw()?;
    let colors = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
    ];
    let names = ["kxdp", "kernel", "testpmd ceiling"];
    for (k, (color, name)) in colors.iter().zip(names).enumerate() {
        let rects: Vec<Rectangle<(f64, f64)>> = groups
            .iter()
            .enumerate()
            .filter_map(|(i, g)| {
                g.bars[k].map(|v| {
                    // kxdp and kernel side by side; the ceiling alone in its
                    // group, or third beside them (one-hop scenarios).
                    let x0 = if g.bars.iter().all(Option::is_some) {
                        i as f64 + 0.1 + 0.27 * k as f64
                    } else {
                        let slot = if k == 2 { 0.5 } else { k as f64 };
                        i as f64 + 0.2 + 0.3 * slot
                    };
                    Rectangle::new([(x0, 0.0), (x0 + 0.26, v / 1e3)], color.filled())
                })
            })
            .collect();
        if rects.is_empty() {
            continue;
        }
        let c = *color;
        chart
            .draw_series(rects)?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
    }
    for (i, g) in groups.iter().enumerate() {
        chart.draw_series(std::iter::once(Text::new(
            g.label.clone(),
            (i as f64 + 0.05, -ymax * 0.04),
            ("sans-serif", 13),
        )))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present().context("writing the PNG")?;
    Ok(())
}
