//! The SVG plots, drawn with plotters' SVG backend (no system library needed).

use plotters::prelude::*;
use serde_json::Value;
use std::path::Path;

type Series = (String, Vec<(f64, f64)>);

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn err<E: std::fmt::Display>(e: E) -> String {
    format!("plot: {e}")
}

fn line_plot(
    path: &Path,
    title: &str,
    xdesc: &str,
    ydesc: &str,
    series: &[Series],
    log_x: bool,
) -> Result<(), String> {
    let pts = series.iter().flat_map(|s| s.1.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0f64);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return Ok(());
    }
    if x1 <= x0 {
        x1 = x0 * 2.0 + 1.0;
    }
    let y1 = if y1 > 0.0 { y1 * 1.1 } else { 1.0 };
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut b = ChartBuilder::on(&root);
    b.caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70);
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(xdesc)
                .y_desc(ydesc)
                .draw()
                .map_err(err)?;
            for (i, (name, p)) in series.iter().enumerate() {
                let c = COLORS[i % COLORS.len()];
                chart
                    .draw_series(LineSeries::new(p.iter().copied(), c.stroke_width(2)))
                    .map_err(err)?
                    .label(name.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
                chart
                    .draw_series(p.iter().map(|&q| Circle::new(q, 3, c.filled())))
                    .map_err(err)?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(err)?;
        }};
    }
    if log_x {
        draw!(b
            .build_cartesian_2d((x0.max(1e-3)..x1 * 1.2).log_scale(), 0f64..y1)
            .map_err(err)?);
    } else {
        draw!(b.build_cartesian_2d(x0..x1, 0f64..y1).map_err(err)?);
    }
    root.present().map_err(err)
}

fn bar_plot(path: &Path, title: &str, ydesc: &str, bars: &[(String, f64)]) -> Result<(), String> {
    if bars.is_empty() {
        return Ok(());
    }
    let ymax = bars.iter().map(|b| b.1).fold(0f64, f64::max).max(1e-9) * 1.15;
    let root = SVGBackend::new(path, (180 * bars.len() as u32 + 160, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let n = bars.len() as u32;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(60)
        .y_label_area_size(70)
        .build_cartesian_2d((0u32..n).into_segmented(), 0f64..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(ydesc)
        .x_labels(bars.len())
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => bars
                .get(*i as usize)
                .map(|b| b.0.clone())
                .unwrap_or_default(),
            _ => String::new(),
        })
        .draw()
        .map_err(err)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            let c = COLORS[i % COLORS.len()];
            let i = i as u32;
            let mut r = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), b.1),
                ],
                c.filled(),
            );
            r.set_margin(0, 0, 12, 12);
            r
        }))
        .map_err(err)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            Text::new(
                format!("{:.1}", b.1),
                (SegmentValue::CenterOf(i as u32), b.1),
                ("sans-serif", 14),
            )
        }))
        .map_err(err)?;
    root.present().map_err(err)
}

fn points(r: &Value) -> impl Iterator<Item = &Value> {
    r["points"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["error"].as_i64() == Some(0))
}

/// Points of `group` plus the base point, as (x from `xkey`, MiB/s), sorted by x.
fn sweep(r: &Value, group: &str, xkey: &str) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, f64)> = points(r)
        .filter(|p| p["group"] == group || p["group"] == "base")
        .filter_map(|p| Some((p[xkey].as_f64()?, p["mib_per_s"].as_f64()?)))
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

fn named_rate(r: &Value, name: &str) -> Option<f64> {
    points(r)
        .find(|p| p["name"] == name)
        .and_then(|p| p["mib_per_s"].as_f64())
}

/// Draws every plot into `dir`; returns the file names written.
pub fn draw_all(r: &Value, dir: &Path) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut done = |name: &str| out.push(format!("{name}.svg"));

    let p = crate::svg_path(dir, "throughput_vs_batch");
    line_plot(
        &p,
        "Device fault-in vs the driver's batch limit (fault_batch)",
        "fault_batch (entries per batch)",
        "MiB/s made device-accessible",
        &[(
            "seq, 4 KiB, 16 lanes".into(),
            sweep(r, "batch", "fault_batch"),
        )],
        true,
    )?;
    done("throughput_vs_batch");

    let p = crate::svg_path(dir, "throughput_vs_lanes");
    line_plot(
        &p,
        "Device fault-in vs lanes in flight",
        "lanes",
        "MiB/s made device-accessible",
        &[("seq, 4 KiB, batch 256".into(), sweep(r, "lanes", "lanes"))],
        true,
    )?;
    done("throughput_vs_lanes");

    let a = &r["anchors"];
    let mut bars = Vec::new();
    for (label, name) in [
        ("2 MiB window\nseq", "base"),
        ("fault span\nseq", "prefetch_N"),
        ("2 MiB window\nrandom", "pattern_random"),
        ("fault span\nrandom", "prefetch_N_random"),
        ("2 MiB window\nTHP", "thp"),
        ("fault span\nTHP", "prefetch_N_thp"),
    ] {
        if let Some(v) = named_rate(r, name) {
            bars.push((label.replace('\n', " "), v));
        }
    }
    for p in points(r).filter(|p| {
        p["group"] == "param"
            && p["param"]
                .as_str()
                .is_some_and(|n| n.starts_with("prefetch"))
    }) {
        if let Some(v) = p["mib_per_s"].as_f64() {
            bars.push((p["name"].as_str().unwrap_or("?").to_string(), v));
        }
    }
    for (label, name) in [
        ("HMM only 2 MiB", "mirror_2m_4k"),
        ("HMM only 4 KiB", "mirror_4k_4k"),
    ] {
        if let Some(v) = a[name]["mib_per_s"].as_f64() {
            bars.push((label.into(), v));
        }
    }
    let p = crate::svg_path(dir, "throughput_vs_window");
    bar_plot(
        &p,
        "Fault-in by window and prefetch policy (prefetch Y/N, prefetch_pct), against HMM alone",
        "MiB/s",
        &bars,
    )?;
    done("throughput_vs_window");

    let mut w: Vec<(f64, f64)> = a
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("mirror_window_"))
        .filter_map(|(_, v)| Some((v["window"].as_f64()? / 1024.0, v["mib_per_s"].as_f64()?)))
        .collect();
    w.sort_by(|x, y| x.0.total_cmp(&y.0));
    let p = crate::svg_path(dir, "hmm_ceiling_vs_window");
    line_plot(
        &p,
        "Driver-only mirror (hmm_range_fault, no device) vs window size, 4 KiB pages",
        "window (KiB)",
        "MiB/s",
        &[("FL_IOC_MIRROR_BENCH".into(), w)],
        true,
    )?;
    done("hmm_ceiling_vs_window");

    let mut cdfs = Vec::new();
    for p in points(r) {
        let Some(h) = p["lat_hist"].as_array() else {
            continue;
        };
        let h: Vec<f64> = h.iter().map(|x| x.as_f64().unwrap_or(0.0)).collect();
        let total: f64 = h.iter().sum();
        if total <= 0.0 {
            continue;
        }
        let mut acc = 0.0;
        let mut s = Vec::new();
        for (i, c) in h.iter().enumerate() {
            if acc == 0.0 && *c > 0.0 {
                // The CDF leaves 0 at the lower bound of the first non-empty bucket.
                s.push(((1u64 << i) as f64, 0.0));
            }
            acc += c;
            if *c > 0.0 || (acc > 0.0 && acc < total) {
                s.push(((2u64 << i) as f64, acc / total));
            }
        }
        cdfs.push((p["name"].as_str().unwrap_or("?").to_string(), s));
    }
    // Keep the plot readable: the base and the points that differ most from it.
    let keep = [
        "base",
        "prefetch_N",
        "thp",
        "batch_1",
        "lanes_1",
        "pattern_random",
        "storm_own",
        "procs_2",
    ];
    cdfs.retain(|s| keep.contains(&s.0.as_str()));
    let p = crate::svg_path(dir, "latency_cdf");
    line_plot(
        &p,
        "Fault -> replay latency CDF (device histogram, log2 buckets)",
        "latency (us, bucket upper bound)",
        "fraction of faults",
        &cdfs,
        true,
    )?;
    done("latency_cdf");

    let sc = &a["storm_copy"];
    let mut bars = Vec::new();
    for (label, name) in [
        ("fault-in quiet", "base"),
        ("fault-in, storm own", "storm_own"),
        ("fault-in, storm unrelated", "storm_unrelated"),
    ] {
        if let Some(v) = named_rate(r, name) {
            bars.push((label.into(), v));
        }
    }
    for (label, key) in [
        ("COPY 8 MiB, device, storm", "device_mib_per_s"),
        ("memcpy 8 MiB, CPU, storm", "cpu_mib_per_s"),
    ] {
        if let Some(v) = sc[key].as_f64() {
            bars.push((label.into(), v));
        }
    }
    let p = crate::svg_path(dir, "storm_vs_quiet");
    bar_plot(
        &p,
        "Invalidation storm (MADV_DONTNEED) against quiet",
        "MiB/s",
        &bars,
    )?;
    done("storm_vs_quiet");
    Ok(out)
}
