//! `nst plot`: every loss term of one or more `--json-log` files over iterations (or
//! seconds), on a log scale, as SVG or PNG (plotters, with an embedded font).

use crate::record::Line;
use anyhow::{bail, ensure, Context, Result};
use plotters::prelude::*;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// JSON logs written by `nst render --json-log` (several are overlaid).
    #[arg(required = true, value_name = "LOG.jsonl")]
    logs: Vec<PathBuf>,
    /// The chart: `.svg` or `.png`.
    #[arg(long)]
    out: PathBuf,
    /// The horizontal axis: iterations (counted across scales) or seconds.
    #[arg(long, value_enum, default_value_t = Axis::Iteration)]
    x: Axis,
    /// Which series: every term and the total, or the total only.
    #[arg(long, value_enum, default_value_t = Series::All)]
    terms: Series,
    /// Width and height in pixels.
    #[arg(long, default_value = "1000x600", value_parser = parse_size)]
    size: (u32, u32),
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Axis {
    /// Iterations, counted across scales.
    Iteration,
    /// Seconds since the render started.
    Time,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Series {
    /// Every loss term and the total.
    All,
    /// The total only.
    Total,
}

fn parse_size(s: &str) -> std::result::Result<(u32, u32), String> {
    let bad = || format!("expected WIDTHxHEIGHT (e.g. 1000x600), got {s:?}");
    let (w, h) = s.split_once('x').ok_or_else(bad)?;
    let (w, h): (u32, u32) = (w.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?);
    if !(100..=10_000).contains(&w) || !(100..=10_000).contains(&h) {
        return Err(format!("sizes from 100 to 10000 px, got {s:?}"));
    }
    Ok((w, h))
}

/// One run: per series name, the points (x, value).
struct Run {
    name: String,
    series: Vec<(String, Vec<(f64, f64)>)>,
}

/// One iteration record: scale, iteration, elapsed seconds, terms.
type Record = (u64, u64, f64, Vec<(String, f64)>);

/// Reads a log: iteration records only (not its `event` lines); a render resumed from a
/// checkpoint appends records that go back in time, which replace the ones after them.
fn read_log(path: &Path, axis: Axis, which: Series) -> Result<Run> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut records: Vec<Record> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r = match crate::record::parse_line(line) {
            Ok(Line::Iteration(r)) => r,
            Ok(Line::Event) => continue,
            Err(why) => bail!("{}: line {} {why}", path.display(), i + 1),
        };
        let total = std::iter::once(("total".to_string(), r.total));
        let terms: Vec<(String, f64)> = match which {
            Series::All => total.chain(r.terms.0).collect::<Vec<_>>(),
            Series::Total => total.collect(),
        }
        .into_iter()
        .filter_map(|(k, v)| v.map(|f| (k, f)))
        .collect();
        let (scale, it) = (r.scale as u64, r.iteration as u64);
        // A resumed render starts again at its checkpoint.
        while records.last().is_some_and(|r| (r.0, r.1) >= (scale, it)) {
            records.pop();
        }
        records.push((scale, it, r.elapsed_s, terms));
    }
    ensure!(
        !records.is_empty(),
        "{} has no iteration records (write one with nst render --json-log)",
        path.display()
    );
    // Iterations across scales: each scale continues from the previous one's last.
    let mut offset = 0u64;
    let mut last = (0u64, 0u64);
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for (scale, it, elapsed, terms) in &records {
        if *scale != last.0 {
            offset += last.1;
        }
        last = (*scale, *it);
        let x = match axis {
            Axis::Iteration => (offset + it) as f64,
            Axis::Time => *elapsed,
        };
        for (k, v) in terms {
            if !(*v > 0.0 && v.is_finite()) {
                continue;
            }
            match series.iter_mut().find(|(n, _)| n == k) {
                Some((_, pts)) => pts.push((x, *v)),
                None => series.push((k.clone(), vec![(x, *v)])),
            }
        }
    }
    // The total first, then the terms in their log order.
    series.sort_by_key(|(n, _)| n != "total");
    Ok(Run {
        name: path
            .file_stem()
            .map_or("log".into(), |s| s.to_string_lossy().into_owned()),
        series,
    })
}

const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    runs: &[Run],
    axis: Axis,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("drawing the chart: {e:?}");
    root.fill(&WHITE).map_err(err)?;
    let pts = runs
        .iter()
        .flat_map(|r| r.series.iter().flat_map(|(_, p)| p.iter()));
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    ensure!(x0 <= x1, "no positive loss values to plot");
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let (y0, y1) = (y0 * 0.8, y1 * 1.25);
    let xlabel = match axis {
        Axis::Iteration => "iteration",
        Axis::Time => "seconds",
    };
    let mut chart = ChartBuilder::on(&root)
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(xlabel)
        .y_desc("loss")
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .x_label_formatter(&|v| match axis {
            Axis::Iteration => format!("{v:.0}"),
            Axis::Time => format!("{v:.1}"),
        })
        .draw()
        .map_err(err)?;
    let several = runs.len() > 1;
    let mut k = 0usize;
    for run in runs {
        for (name, pts) in &run.series {
            let color = PALETTE[k % PALETTE.len()];
            k += 1;
            let width = if name == "total" { 3 } else { 2 };
            let style = color.stroke_width(width);
            let label = if several {
                format!("{} {name}", run.name)
            } else {
                name.clone()
            };
            let series = chart
                .draw_series(LineSeries::new(pts.iter().copied(), style))
                .map_err(err)?;
            series.label(label).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3))
            });
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

pub(crate) fn run(a: Args) -> Result<()> {
    let ext = a
        .out
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    let png = match ext.as_deref() {
        Some("svg") => false,
        Some("png") => true,
        _ => bail!(
            "--out {}: the chart is written as .svg or .png",
            a.out.display()
        ),
    };
    crate::io::check_writable(&a.out)?;
    let runs = a
        .logs
        .iter()
        .map(|p| read_log(p, a.x, a.terms))
        .collect::<Result<Vec<_>>>()?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| anyhow::anyhow!("the embedded font cannot be read"))?;
    // Drawn to memory, then written atomically.
    let bytes = if png {
        let (w, h) = a.size;
        let mut buf = vec![0u8; (w * h * 3) as usize];
        draw(
            BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area(),
            &runs,
            a.x,
        )?;
        let img = image::RgbImage::from_raw(w, h, buf).context("the chart's pixels")?;
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png)
            .context("encoding the chart")?;
        out.into_inner()
    } else {
        let mut svg = String::new();
        draw(
            SVGBackend::with_string(&mut svg, a.size).into_drawing_area(),
            &runs,
            a.x,
        )?;
        svg.into_bytes()
    };
    crate::io::write_atomic(&a.out, |tmp| {
        std::fs::write(tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))
    })?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}
