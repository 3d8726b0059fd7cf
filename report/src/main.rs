//! `faultline-report`: turns the figures `qemu/bench` collected into
//! - a console table a person reads at a glance, each ratio beside its target;
//! - `results.json` (every point, the anchors, the machine, the accelerator, the kernel, QEMU's
//!   version, the git revision and the `ratios` object);
//! - SVG plots next to it: throughput against batch size, window and lanes, latency CDFs, storm
//!   against quiet.
//!
//! ```text
//! faultline-report --guest FILE [--fl-bench FILE] [--meta KEY=VALUE]... --out DIR
//! faultline-report --plot RESULTS.json --out DIR      (plots again from a results file)
//! ```
//!
//! `--guest` holds the JSON objects `fl-fault-bench` printed (one per line, after `FLB `);
//! `--fl-bench` the `NAME key=value ...` lines of `fl-bench`. The last line printed is the path
//! of `results.json`.

mod plots;

use serde_json::{json, Map, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// A ratio of the issue: its key, how it is computed (for the reader), and its target.
struct Ratio {
    key: &'static str,
    what: &'static str,
    target: f64,
    /// true: the value must be at least the target; false: at most.
    at_least: bool,
}

const RATIOS: &[Ratio] = &[
    Ratio {
        key: "fault_in_vs_cpu_first_touch",
        what: "device fault-in / CPU first touch (memset), seq, 4 KiB",
        target: 1.0,
        at_least: true,
    },
    Ratio {
        key: "fault_in_vs_cpu_first_touch_thp",
        what: "same on THP",
        target: 1.5,
        at_least: true,
    },
    Ratio {
        key: "fault_in_vs_driver_only_mirror",
        what: "device fault-in / hmm_range_fault alone, same windows",
        target: 0.7,
        at_least: true,
    },
    Ratio {
        key: "device_fault_vs_cpu_prefault",
        what: "(CPU touch + device job) / device job faulting its way in",
        target: 1.0,
        at_least: true,
    },
    Ratio {
        key: "single_fault_added_latency_vs_fence_rtt",
        what: "(1-page job faulting - prefaulted) / FENCE RTT, p50",
        target: 1.5,
        at_least: false,
    },
    Ratio {
        key: "storm_vs_quiet",
        what: "fault-in under DONTNEED storm on own range / quiet",
        target: 0.5,
        at_least: true,
    },
    Ratio {
        key: "storm_vs_cpu_under_storm",
        what: "device COPY / CPU memcpy, same storm (issue 6)",
        target: 0.5,
        at_least: true,
    },
    Ratio {
        key: "unrelated_storm_vs_quiet",
        what: "fault-in, storm on an unrelated range / quiet (issue 6)",
        target: 0.8,
        at_least: true,
    },
    Ratio {
        key: "munmap_device_mapped_vs_cpu_only",
        what: "munmap of a device-mapped buffer / CPU-only",
        target: 2.0,
        at_least: false,
    },
];

fn main() -> ExitCode {
    match run() {
        Ok(path) => {
            println!("{}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("faultline-report: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> String {
    "usage: faultline-report --guest FILE [--fl-bench FILE] [--meta KEY=VALUE]... --out DIR\n       \
     faultline-report --plot RESULTS.json --out DIR"
        .to_string()
}

fn run() -> Result<PathBuf, String> {
    let mut guest = None;
    let mut flbench = None;
    let mut plot_only = None;
    let mut out = None;
    let mut meta = Map::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .ok_or_else(|| format!("{a} needs a value\n{}", usage()))
        };
        match a.as_str() {
            "--guest" => guest = Some(PathBuf::from(val()?)),
            "--fl-bench" => flbench = Some(PathBuf::from(val()?)),
            "--plot" => plot_only = Some(PathBuf::from(val()?)),
            "--out" => out = Some(PathBuf::from(val()?)),
            "--meta" => {
                let kv = val()?;
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| format!("--meta {kv}: KEY=VALUE"))?;
                meta.insert(k.to_string(), Value::String(v.to_string()));
            }
            "-h" | "--help" => return Err(usage()),
            _ => return Err(format!("unknown argument {a}\n{}", usage())),
        }
    }
    let out = out.ok_or_else(usage)?;
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let results = if let Some(p) = plot_only {
        let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?
    } else {
        let guest = guest.ok_or_else(usage)?;
        let text =
            std::fs::read_to_string(&guest).map_err(|e| format!("{}: {e}", guest.display()))?;
        let fl = match flbench {
            Some(p) => std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?,
            None => String::new(),
        };
        build(&text, &fl, meta)?
    };
    print!("{}", table(&results));
    let path = out.join("results.json");
    let text = serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?;
    std::fs::write(&path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
    let svgs = plots::draw_all(&results, &out)?;
    println!("plots: {}", svgs.join(", "));
    Ok(path)
}

/// Parses `NAME key=value ...` lines into `{NAME: {key: number-or-string}}`.
fn parse_kv_lines(text: &str) -> Map<String, Value> {
    let mut m = Map::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(name) = words.next() else { continue };
        let mut obj = Map::new();
        for w in words {
            if let Some((k, v)) = w.split_once('=') {
                let val = v
                    .parse::<f64>()
                    .ok()
                    .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number))
                    .unwrap_or_else(|| Value::String(v.to_string()));
                obj.insert(k.to_string(), val);
            }
        }
        if !obj.is_empty() {
            // fl-bench prints one submit_cmds_per_s line per batch size.
            let batch = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("batch="));
            let key = match batch {
                Some(b) => format!("{name}_batch_{b}"),
                None => name.to_string(),
            };
            m.insert(key, Value::Object(obj));
        }
    }
    m
}

/// Assembles the results object from the guest's lines and the host's metadata.
fn build(guest: &str, flbench: &str, meta: Map<String, Value>) -> Result<Value, String> {
    let mut anchors: Vec<(String, Vec<Value>)> = Vec::new();
    let mut points: Vec<(String, Vec<Value>)> = Vec::new();
    let mut info = Value::Null;
    for (i, line) in guest.lines().enumerate() {
        let line = line.trim();
        let Some(body) = line.strip_prefix("FLB ") else {
            continue;
        };
        let v: Value =
            serde_json::from_str(body).map_err(|e| format!("guest line {}: {e}", i + 1))?;
        let name = v["name"].as_str().unwrap_or("").to_string();
        let list = match v["kind"].as_str() {
            Some("anchor") => &mut anchors,
            Some("point") => &mut points,
            Some("info") => {
                info = v;
                continue;
            }
            _ => continue,
        };
        match list.iter_mut().find(|(n, _)| *n == name) {
            Some((_, reps)) => reps.push(v),
            None => list.push((name, vec![v])),
        }
    }
    let anchors: Map<String, Value> = anchors
        .into_iter()
        .map(|(n, reps)| (n, merge_reps(reps)))
        .collect();
    let points: Vec<Value> = points.into_iter().map(|(_, r)| merge_reps(r)).collect();
    if points.is_empty() && anchors.is_empty() {
        return Err("no figures from the guest (no FLB lines)".into());
    }
    let mut r = json!({
        "meta": meta,
        "guest": info,
        "anchors": anchors,
        "points": points,
        "fl_bench": parse_kv_lines(flbench),
    });
    let (ratios, figures) = ratios(&r);
    r["ratios"] = Value::Object(ratios);
    r["targets"] = RATIOS
        .iter()
        .map(|q| {
            (
                q.key.to_string(),
                json!({"target": q.target, "at_least": q.at_least, "what": q.what}),
            )
        })
        .collect::<Map<_, _>>()
        .into();
    r["figures"] = Value::Object(figures);
    Ok(r)
}

/// One object from the repetitions of a figure: each number is the median over the repetitions
/// (upper median), arrays (histograms) are summed, the rest is the first one's; `reps` says how
/// many there were and `mib_per_s_reps` lists every repetition's rate.
fn merge_reps(mut reps: Vec<Value>) -> Value {
    if reps.len() == 1 {
        return reps.pop().unwrap_or(Value::Null);
    }
    let n = reps.len();
    let mut out = reps[0].clone();
    let Some(obj) = out.as_object_mut() else {
        return out;
    };
    for (k, v) in obj.iter_mut() {
        if v.is_number() {
            let mut xs: Vec<f64> = reps.iter().filter_map(|r| r[k].as_f64()).collect();
            xs.sort_by(f64::total_cmp);
            if let Some(m) = xs.get(xs.len() / 2) {
                *v = if v.is_f64() {
                    json!(m)
                } else {
                    json!(*m as i64)
                };
            }
        } else if let Some(a) = v.as_array() {
            let sum: Vec<f64> = (0..a.len())
                .map(|i| reps.iter().filter_map(|r| r[k][i].as_f64()).sum())
                .collect();
            *v = json!(sum);
        }
    }
    // An error in any repetition is reported.
    if let Some(e) = reps
        .iter()
        .find_map(|r| r["error"].as_i64().filter(|e| *e != 0))
    {
        obj.insert("error".into(), json!(e));
    }
    obj.insert("reps".into(), json!(n));
    let rates: Vec<Value> = reps.iter().map(|r| r["mib_per_s"].clone()).collect();
    if rates.iter().any(|v| !v.is_null()) {
        obj.insert("mib_per_s_reps".into(), Value::Array(rates));
    }
    out
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64().filter(|f| f.is_finite())
}

/// The point named `name`, if it ran without an error.
fn point<'a>(r: &'a Value, name: &str) -> Option<&'a Value> {
    r["points"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name && p["error"].as_i64() == Some(0))
}

fn div(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// The issue's ratios (exactly its keys; null where a side is missing) and the other derived
/// figures.
fn ratios(r: &Value) -> (Map<String, Value>, Map<String, Value>) {
    let a = &r["anchors"];
    let rate = |name: &str| point(r, name).and_then(|p| num(&p["mib_per_s"]));
    let base = rate("base");
    let prefetch_on = r["guest"]["default_prefetch"].as_str().unwrap_or("Y") != "N";
    let mirror = if prefetch_on {
        "mirror_2m_4k"
    } else {
        "mirror_4k_4k"
    };
    let dp = &a["device_prefaulted"];
    let one = &a["one_page_job"];
    let sc = &a["storm_copy"];
    let mu = &a["munmap"];
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<f64>| {
        m.insert(k.to_string(), v.map_or(Value::Null, |f| json!(f)));
    };
    put(
        "fault_in_vs_cpu_first_touch",
        div(base, num(&a["cpu_first_touch_4k"]["mib_per_s"])),
    );
    put(
        "fault_in_vs_cpu_first_touch_thp",
        div(rate("thp"), num(&a["cpu_first_touch_thp"]["mib_per_s"])),
    );
    put(
        "fault_in_vs_driver_only_mirror",
        div(base, num(&a[mirror]["mib_per_s"])),
    );
    let prefault = match (num(&dp["cpu_touch_ns"]), num(&dp["job_after_cpu_touch_ns"])) {
        (Some(t), Some(j)) => Some(t + j),
        _ => None,
    };
    put(
        "device_fault_vs_cpu_prefault",
        div(prefault, num(&dp["job_cold_ns"])),
    );
    let added = match (num(&one["fault_p50_us"]), num(&one["nofault_p50_us"])) {
        (Some(f), Some(n)) => Some(f - n),
        _ => None,
    };
    put(
        "single_fault_added_latency_vs_fence_rtt",
        div(added, num(&a["fence_rtt"]["p50_us"])),
    );
    put("storm_vs_quiet", div(rate("storm_own"), base));
    put(
        "storm_vs_cpu_under_storm",
        div(num(&sc["device_mib_per_s"]), num(&sc["cpu_mib_per_s"])),
    );
    put(
        "unrelated_storm_vs_quiet",
        div(rate("storm_unrelated"), base),
    );
    put(
        "munmap_device_mapped_vs_cpu_only",
        div(num(&mu["device_mapped_ns"]), num(&mu["cpu_only_ns"])),
    );

    let mut f = Map::new();
    let mut putf = |k: &str, v: Option<f64>| {
        f.insert(k.to_string(), v.map_or(Value::Null, |x| json!(x)));
    };
    putf(
        "storm_p99_vs_cpu_p99",
        div(num(&sc["device_p99_ms"]), num(&sc["cpu_p99_ms"])),
    );
    putf("single_fault_added_latency_us", added);
    let one_n = &a["one_page_job_noprefetch"];
    let added_n = match (num(&one_n["fault_p50_us"]), num(&one_n["nofault_p50_us"])) {
        (Some(f), Some(n)) => Some(f - n),
        _ => None,
    };
    putf(
        "single_fault_added_latency_vs_fence_rtt_noprefetch",
        div(added_n, num(&a["fence_rtt"]["p50_us"])),
    );
    putf(
        "fault_in_vs_transfer_ceiling",
        div(base, num(&dp["mib_per_s"])),
    );
    putf(
        "fault_in_vs_driver_only_mirror_thp",
        div(rate("thp"), num(&a["mirror_2m_thp"]["mib_per_s"])),
    );
    putf(
        "fault_in_vs_cpu_first_touch_per_page_only",
        div(base, num(&a["cpu_first_touch_4k"]["touch_mib_per_s"])),
    );
    (m, f)
}

fn fmt_opt(v: &Value, prec: usize) -> String {
    match num(v) {
        Some(f) if f.abs() >= 1e5 => format!("{f:.0}"),
        Some(f) => format!("{f:.prec$}"),
        None => "n/a".into(),
    }
}

/// The console table.
fn table(r: &Value) -> String {
    let mut s = String::new();
    let m = &r["meta"];
    let _ = writeln!(
        s,
        "\n== device faults: how fast, and why  (accelerator: {}, guest kernel {}, {})",
        m["accelerator"].as_str().unwrap_or("?"),
        m["guest_kernel"].as_str().unwrap_or("?"),
        m["git_revision"].as_str().unwrap_or("?"),
    );
    let _ = writeln!(
        s,
        "machine: {} | {}",
        m["machine"].as_str().unwrap_or("?"),
        m["qemu_version"].as_str().unwrap_or("?")
    );
    let _ = writeln!(s, "\n-- ratios (each from this run)");
    let _ = writeln!(
        s,
        "{:<42} {:>8} {:>8}       what",
        "ratio", "value", "target"
    );
    for q in RATIOS {
        let v = &r["ratios"][q.key];
        let verdict = match num(v) {
            None => "n/a",
            Some(x) if (q.at_least && x >= q.target) || (!q.at_least && x <= q.target) => "ok",
            Some(_) => "MISS",
        };
        let _ = writeln!(
            s,
            "{:<42} {:>8} {:>8}  {:<4} {}",
            q.key,
            fmt_opt(v, 2),
            format!("{}{}", if q.at_least { ">=" } else { "<=" }, q.target),
            verdict,
            q.what
        );
    }
    let f = &r["figures"];
    let _ = writeln!(
        s,
        "{:<42} {:>8} {:>8}       device p99 / CPU p99 under the storm (issue 6)",
        "storm_p99_vs_cpu_p99",
        fmt_opt(&f["storm_p99_vs_cpu_p99"], 2),
        "<=5"
    );
    let _ = writeln!(
        s,
        "{:<42} {:>8} {:>8}       single_fault_added_latency_vs_fence_rtt with prefetch N",
        "  (with prefetch N)",
        fmt_opt(&f["single_fault_added_latency_vs_fence_rtt_noprefetch"], 2),
        ""
    );

    let a = &r["anchors"];
    let _ = writeln!(s, "\n-- anchors (same boot, equal buffers)");
    let row = |s: &mut String, name: &str, val: String| {
        let _ = writeln!(s, "  {name:<44} {val}");
    };
    row(
        &mut s,
        "FENCE round trip p50 / p99",
        format!(
            "{} / {} us",
            fmt_opt(&a["fence_rtt"]["p50_us"], 1),
            fmt_opt(&a["fence_rtt"]["p99_us"], 1)
        ),
    );
    for (n, label) in [
        (
            "cpu_first_touch_4k",
            "CPU first touch 4 KiB (memset | 1 B/page)",
        ),
        (
            "cpu_first_touch_thp",
            "CPU first touch THP (memset | 1 B/page)",
        ),
    ] {
        row(
            &mut s,
            label,
            format!(
                "{} | {} MiB/s",
                fmt_opt(&a[n]["mib_per_s"], 1),
                fmt_opt(&a[n]["touch_mib_per_s"], 1)
            ),
        );
    }
    for (n, label) in [
        ("mirror_2m_4k", "driver-only mirror, 2 MiB windows, 4 KiB"),
        ("mirror_2m_thp", "driver-only mirror, 2 MiB windows, THP"),
        ("mirror_4k_4k", "driver-only mirror, 4 KiB windows"),
    ] {
        row(
            &mut s,
            label,
            format!(
                "{} MiB/s, {} retries",
                fmt_opt(&a[n]["mib_per_s"], 1),
                fmt_opt(&a[n]["retries"], 0)
            ),
        );
    }
    let wins: Vec<String> = ["4k", "16k", "64k", "256k", "2048k"]
        .iter()
        .map(|w| fmt_opt(&a[format!("mirror_window_{w}")]["mib_per_s"], 0))
        .collect();
    row(
        &mut s,
        "mirror by window 4K/16K/64K/256K/2M",
        format!("{} MiB/s", wins.join(" / ")),
    );
    let dp = &a["device_prefaulted"];
    row(
        &mut s,
        "device on a device-mapped buffer (transfer)",
        format!("{} MiB/s", fmt_opt(&dp["mib_per_s"], 0)),
    );
    row(
        &mut s,
        "CPU touch + job | cold job",
        format!(
            "{} + {} | {} ms",
            fmt_opt(&(num(&dp["cpu_touch_ns"]).map(|x| x / 1e6).into()), 1),
            fmt_opt(
                &(num(&dp["job_after_cpu_touch_ns"]).map(|x| x / 1e6).into()),
                1
            ),
            fmt_opt(&(num(&dp["job_cold_ns"]).map(|x| x / 1e6).into()), 1)
        ),
    );
    for (n, label) in [
        ("one_page_job", "one-page job p50, fault | no fault"),
        ("one_page_job_noprefetch", "same, prefetch N"),
    ] {
        row(
            &mut s,
            label,
            format!(
                "{} | {} us",
                fmt_opt(&a[n]["fault_p50_us"], 0),
                fmt_opt(&a[n]["nofault_p50_us"], 0)
            ),
        );
    }
    let mu = &a["munmap"];
    row(
        &mut s,
        "munmap, device-mapped | CPU only",
        format!(
            "{} | {} ms",
            fmt_opt(&(num(&mu["device_mapped_ns"]).map(|x| x / 1e6).into()), 2),
            fmt_opt(&(num(&mu["cpu_only_ns"]).map(|x| x / 1e6).into()), 2)
        ),
    );
    let sc = &a["storm_copy"];
    row(
        &mut s,
        "8 MiB COPY under storm, device | CPU",
        format!(
            "{} | {} MiB/s; p99 {} | {} ms; {} device failures; storm ops {} | {}",
            fmt_opt(&sc["device_mib_per_s"], 1),
            fmt_opt(&sc["cpu_mib_per_s"], 1),
            fmt_opt(&sc["device_p99_ms"], 1),
            fmt_opt(&sc["cpu_p99_ms"], 1),
            fmt_opt(&sc["device_failures"], 0),
            fmt_opt(&sc["device_storm_ops"], 0),
            fmt_opt(&sc["cpu_storm_ops"], 0)
        ),
    );

    let q = &r["fl_bench"];
    if q.as_object().is_some_and(|o| !o.is_empty()) {
        let _ = writeln!(s, "\n-- queue (fl-bench, same boot)");
        for (k, label) in [
            ("fence_rtt_us", "FENCE with MSI-X, kernel round trip"),
            ("fence_irq_us", "doorbell -> MSI-X handler"),
            ("fence_poll_rtt_us", "FENCE polled"),
        ] {
            row(
                &mut s,
                label,
                format!(
                    "p50 {} / p99 {} us",
                    fmt_opt(&q[k]["p50"], 1),
                    fmt_opt(&q[k]["p99"], 1)
                ),
            );
        }
        if let Some(o) = q.as_object() {
            for (k, v) in o.iter().filter(|(k, _)| k.starts_with("submit_cmds_per_s")) {
                row(
                    &mut s,
                    &format!(
                        "NOP commands, {}",
                        k.trim_start_matches("submit_cmds_per_s_")
                    ),
                    format!("{} commands/s", fmt_opt(&v["value"], 0)),
                );
            }
        }
    }

    let _ = writeln!(
        s,
        "\n-- matrix (device FILL of a fresh buffer; base: seq, 16 lanes, batch 256, prefetch Y, 4 KiB, 1 process)"
    );
    let _ = writeln!(
        s,
        "{:<20} {:>4} {:>7} {:>8} {:>8} {:>7} {:>6} {:>5} {:>17} {:>11} {:>6} {:>4}",
        "point",
        "MiB",
        "MiB/s",
        "pages/s",
        "faults/s",
        "batch/s",
        "mbatch",
        "dup%",
        "lat p50/99/999 us",
        "svc/xfer ms",
        "retry",
        "esc"
    );
    for p in r["points"].as_array().into_iter().flatten() {
        let ms = |k: &str| num(&p[k]).map(|x| format!("{:.0}", x / 1e6));
        let split = match (ms("servicing_ns"), ms("transfer_ns")) {
            (Some(a), Some(b)) => format!("{a}/{b}"),
            _ => "-".into(),
        };
        let lat = format!(
            "{}/{}/{}",
            fmt_opt(&p["lat_p50_us"], 0),
            fmt_opt(&p["lat_p99_us"], 0),
            fmt_opt(&p["lat_p999_us"], 0)
        );
        let err = p["error"].as_i64().unwrap_or(0);
        let _ = writeln!(
            s,
            "{:<20} {:>4} {:>7} {:>8} {:>8} {:>7} {:>6} {:>5} {:>17} {:>11} {:>6} {:>4}{}",
            match p["reps"].as_i64() {
                Some(n) => format!("{} (x{n})", p["name"].as_str().unwrap_or("?")),
                None => p["name"].as_str().unwrap_or("?").to_string(),
            },
            fmt_opt(&p["mib"], 0),
            fmt_opt(&p["mib_per_s"], 1),
            fmt_opt(&p["pages_per_s"], 0),
            fmt_opt(&p["faults_per_s"], 0),
            fmt_opt(&p["batches_per_s"], 0),
            fmt_opt(&p["mean_batch"], 1),
            num(&p["duplicate_share"]).map_or("n/a".into(), |x| format!("{:.0}", x * 100.0)),
            lat,
            split,
            fmt_opt(&p["retries"], 0),
            fmt_opt(&p["escalations"], 0),
            if err != 0 {
                format!("  (job error {err})")
            } else {
                String::new()
            }
        );
    }
    let _ = writeln!(
        s,
        "latency: the device's fault->replay histogram (log2 buckets; each figure is its bucket's upper bound);\n\
         (xN): N repetitions spread over the run, each figure their median"
    );
    s
}

/// Path helper for the plots module.
pub(crate) fn svg_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.svg"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_from_lines() {
        let guest = r#"FLB {"kind":"info","name":"guest","default_prefetch":"Y"}
FLB {"kind":"anchor","name":"cpu_first_touch_4k","mib_per_s":100}
FLB {"kind":"anchor","name":"mirror_2m_4k","mib_per_s":400}
FLB {"kind":"anchor","name":"fence_rtt","p50_us":50}
FLB {"kind":"anchor","name":"one_page_job","fault_p50_us":300,"nofault_p50_us":200}
FLB {"kind":"point","name":"base","error":0,"mib_per_s":200,"lat_hist":[1,2,3]}
FLB {"kind":"point","name":"storm_own","error":0,"mib_per_s":50}
FLB {"kind":"point","name":"storm_own","error":0,"mib_per_s":70}
FLB {"kind":"point","name":"storm_own","error":0,"mib_per_s":40}
"#;
        let r = build(guest, "fence_us p50=3 p99=4\n", Map::new()).unwrap();
        let q = &r["ratios"];
        assert_eq!(q.as_object().unwrap().len(), RATIOS.len());
        assert_eq!(q["fault_in_vs_cpu_first_touch"], json!(2.0));
        assert_eq!(q["fault_in_vs_driver_only_mirror"], json!(0.5));
        assert_eq!(q["single_fault_added_latency_vs_fence_rtt"], json!(2.0));
        assert_eq!(q["storm_vs_quiet"], json!(0.25));
        assert_eq!(r["points"][1]["reps"], json!(3));
        assert_eq!(q["munmap_device_mapped_vs_cpu_only"], Value::Null);
        assert_eq!(r["fl_bench"]["fence_us"]["p99"], json!(4.0));
        assert!(table(&r).contains("MISS"));
    }
}
