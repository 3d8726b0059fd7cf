//! The fault timeline: an optional trace of every device fault in the Chrome / Perfetto JSON format
//! (open it at ui.perfetto.dev), the way Nsight Systems shows a GPU's unified-memory faults.
//!
//! Off unless [`start`] was called (the server's `--trace PATH`); every hook first does one relaxed
//! atomic load ([`enabled`]). Tracks:
//! - "device lanes", one row per lane: a slice from the lane stalling on a fault to its access
//!   resuming (args: context, page, access, outcome, and how long after the entry was posted the
//!   driver fetched it and the REPLAY released it), with an instant when its entry was posted;
//! - "fault ring": every entry posted, and every `FL_REG_FR_GET` doorbell, which the driver writes
//!   once per batch it takes off the ring (today's driver: right after fetching, before servicing),
//!   so the entries posted before a GET and after the previous one are, roughly, that batch;
//! - "commands": REPLAY, INVALIDATE (a slice: until no access that used an old translation runs)
//!   and FENCE;
//! - "jobs": each job from the command worker consuming it to its completion record (args: seq,
//!   status, faults).
//!
//! At most [`MAX_EVENTS`] events are kept; later ones are counted and dropped. [`flush`] writes the
//! file (the server calls it when a client session ends).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// Most events kept in memory.
pub const MAX_EVENTS: usize = 2_000_000;

static ENABLED: AtomicBool = AtomicBool::new(false);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static STATE: OnceLock<State> = OnceLock::new();

struct State {
    path: PathBuf,
    epoch: Instant,
    events: Mutex<Vec<Event>>,
    /// Start times of the jobs in flight, by device job id.
    jobs: Mutex<HashMap<u64, u64>>,
}

/// Track (Perfetto process) ids.
const PID_LANES: u32 = 1;
const PID_RING: u32 = 2;
const PID_CMDS: u32 = 3;
const PID_JOBS: u32 = 4;

struct Event {
    name: &'static str,
    /// 'X' (complete slice) or 'i' (instant).
    ph: char,
    pid: u32,
    tid: u32,
    ts_ns: u64,
    dur_ns: u64,
    args: String,
    /// Faults: when the entry was posted, and the context (REPLAY: its context, or 0xffff for all),
    /// from which [`json`] finds the GET that fetched the entry and the REPLAY that released it.
    link: Option<(u64, u16)>,
}

/// Turns tracing on; events go to `path` at each [`flush`]. Only the first call counts.
pub fn start(path: PathBuf) {
    let _ = STATE.set(State {
        path,
        epoch: Instant::now(),
        events: Mutex::new(Vec::new()),
        jobs: Mutex::new(HashMap::new()),
    });
    ENABLED.store(true, Ordering::Relaxed);
}

/// True when a trace is being recorded; the cheap check in front of every hook.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Nanoseconds since [`start`], for slices that begin before they are recorded.
pub(crate) fn now() -> u64 {
    STATE
        .get()
        .map_or(0, |s| s.epoch.elapsed().as_nanos() as u64)
}

fn push(e: Event) {
    let Some(s) = STATE.get() else { return };
    let mut v = s.events.lock().unwrap_or_else(|p| p.into_inner());
    if v.len() >= MAX_EVENTS {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    } else {
        v.push(e);
    }
}

/// A lane stalled at `start_ns` on page `va` of context `ctx` and resumed now.
pub(crate) fn fault(
    lane: u32,
    start_ns: u64,
    posted_ns: u64,
    ctx: u16,
    va: u64,
    access: &str,
    outcome: &str,
) {
    let end = now();
    let args = format!(
        "{{\"ctx\":{ctx},\"va\":\"{va:#x}\",\"access\":\"{access}\",\"outcome\":\"{outcome}\"}}"
    );
    push(Event {
        name: "fault",
        ph: 'X',
        pid: PID_LANES,
        tid: lane,
        ts_ns: start_ns,
        dur_ns: end.saturating_sub(start_ns),
        args: args.clone(),
        link: Some((posted_ns, ctx)),
    });
    push(Event {
        name: "entry posted",
        ph: 'i',
        pid: PID_LANES,
        tid: lane,
        ts_ns: posted_ns,
        dur_ns: 0,
        args: String::new(),
        link: None,
    });
    push(Event {
        name: "entry posted",
        ph: 'i',
        pid: PID_RING,
        tid: 1,
        ts_ns: posted_ns,
        dur_ns: 0,
        args,
        link: None,
    });
}

/// Job `id` was consumed from the queue.
pub(crate) fn job_start(id: u64) {
    let Some(s) = STATE.get() else { return };
    let t = now();
    s.jobs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, t);
}

/// Job `id` (queue sequence `seq`) wrote its completion record.
pub(crate) fn job_end(id: u64, seq: u64, status: u32, faults: u32) {
    let Some(s) = STATE.get() else { return };
    let start = s.jobs.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    let Some(start) = start else { return };
    let end = now();
    push(Event {
        name: "job",
        ph: 'X',
        pid: PID_JOBS,
        tid: 1,
        ts_ns: start,
        dur_ns: end.saturating_sub(start),
        args: format!("{{\"seq\":{seq},\"status\":{status},\"faults\":{faults}}}"),
        link: None,
    });
}

/// The driver wrote `FL_REG_FR_GET` = `get`: it took a batch up to there off the ring.
pub(crate) fn get_doorbell(get: u32) {
    push(Event {
        name: "GET (batch fetched)",
        ph: 'i',
        pid: PID_RING,
        tid: 2,
        ts_ns: now(),
        dur_ns: 0,
        args: format!("{{\"get\":{get}}}"),
        link: None,
    });
}

/// A REPLAY of context `ctx` (0xffff: all), begun at `t`, released `lanes` stalled lanes.
pub(crate) fn replay(t: u64, ctx: u16, lanes: usize) {
    push(Event {
        name: "REPLAY",
        ph: 'i',
        pid: PID_CMDS,
        tid: 1,
        ts_ns: t,
        dur_ns: 0,
        args: format!("{{\"ctx\":{ctx},\"lanes\":{lanes}}}"),
        link: Some((t, ctx)),
    });
}

/// A command: `name` from `start_ns` to now (an instant when they are equal).
pub(crate) fn command(name: &'static str, start_ns: u64, args: String) {
    let end = now();
    push(Event {
        name,
        ph: if end > start_ns { 'X' } else { 'i' },
        pid: PID_CMDS,
        tid: 1,
        ts_ns: start_ns,
        dur_ns: end.saturating_sub(start_ns),
        args,
        link: None,
    });
}

fn json(events: &[Event]) -> String {
    let mut s = String::from("{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n");
    let mut lanes: Vec<u32> = events
        .iter()
        .filter(|e| e.pid == PID_LANES)
        .map(|e| e.tid)
        .collect();
    lanes.sort_unstable();
    lanes.dedup();
    let meta = |s: &mut String, kind: &str, pid: u32, tid: u32, name: &str| {
        let _ = writeln!(
            s,
            "{{\"ph\":\"M\",\"name\":\"{kind}\",\"pid\":{pid},\"tid\":{tid},\"args\":{{\"name\":\"{name}\"}}}},"
        );
    };
    meta(&mut s, "process_name", PID_LANES, 0, "device lanes");
    meta(&mut s, "process_name", PID_RING, 0, "fault ring");
    meta(&mut s, "process_name", PID_CMDS, 0, "commands");
    meta(&mut s, "process_name", PID_JOBS, 0, "jobs");
    meta(&mut s, "thread_name", PID_RING, 1, "entries posted");
    meta(
        &mut s,
        "thread_name",
        PID_RING,
        2,
        "GET doorbells (driver batches fetched)",
    );
    meta(
        &mut s,
        "thread_name",
        PID_CMDS,
        1,
        "REPLAY / INVALIDATE / FENCE",
    );
    for l in lanes {
        meta(
            &mut s,
            "thread_name",
            PID_LANES,
            l,
            &format!("engine {} lane {}", l >> 16, l & 0xffff),
        );
    }
    // Per fault: the GET that fetched its entry and the REPLAY that released it (the first of each
    // after the entry was posted; a REPLAY of its context or of all).
    let gets: Vec<u64> = events
        .iter()
        .filter(|e| e.pid == PID_RING && e.tid == 2)
        .map(|e| e.ts_ns)
        .collect();
    let replays: Vec<(u64, u16)> = events
        .iter()
        .filter(|e| e.name == "REPLAY")
        .filter_map(|e| e.link)
        .collect();
    let linked = |e: &Event| -> String {
        let Some((posted, ctx)) = e.link else {
            return e.args.clone();
        };
        let mut extra = String::new();
        let g = gets.partition_point(|&t| t < posted);
        if let Some(t) = gets.get(g) {
            let _ = write!(
                extra,
                ",\"fetched_after_us\":{:.1}",
                (t - posted) as f64 / 1e3
            );
        }
        let r = replays.partition_point(|&(t, _)| t < posted);
        let end = e.ts_ns + e.dur_ns;
        if let Some((t, _)) = replays[r..]
            .iter()
            .take_while(|(t, _)| *t <= end)
            .find(|(_, c)| *c == ctx || *c == 0xffff)
        {
            let _ = write!(
                extra,
                ",\"replay_after_us\":{:.1}",
                (t - posted) as f64 / 1e3
            );
        }
        match e.args.strip_suffix('}') {
            Some(head) => format!("{head}{extra}}}"),
            None => e.args.clone(),
        }
    };
    for (i, e) in events.iter().enumerate() {
        let _ = write!(
            s,
            "{{\"name\":\"{}\",\"ph\":\"{}\",\"pid\":{},\"tid\":{},\"ts\":{:.3}",
            e.name,
            e.ph,
            e.pid,
            e.tid,
            e.ts_ns as f64 / 1e3
        );
        if e.ph == 'X' {
            let _ = write!(s, ",\"dur\":{:.3}", e.dur_ns as f64 / 1e3);
        } else {
            s.push_str(",\"s\":\"t\"");
        }
        if e.link.is_some() && e.pid == PID_LANES {
            let _ = write!(s, ",\"args\":{}", linked(e));
        } else if !e.args.is_empty() {
            let _ = write!(s, ",\"args\":{}", e.args);
        }
        s.push('}');
        if i + 1 < events.len() {
            s.push(',');
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "],\"otherData\":{{\"dropped_events\":{}}}}}",
        DROPPED.load(Ordering::Relaxed)
    );
    s
}

/// Writes every event recorded so far to the trace file (replacing it). No-op when not tracing.
pub fn flush() -> std::io::Result<()> {
    let Some(s) = STATE.get() else { return Ok(()) };
    let mut v = s.events.lock().unwrap_or_else(|p| p.into_inner());
    v.sort_by_key(|e| e.ts_ns);
    let text = json(&v);
    drop(v);
    std::fs::write(&s.path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        let ev = [
            Event {
                name: "fault",
                ph: 'X',
                pid: PID_LANES,
                tid: 3,
                ts_ns: 1500,
                dur_ns: 2000,
                args: "{\"ctx\":1}".into(),
                link: Some((1600, 1)),
            },
            Event {
                name: "GET (batch fetched)",
                ph: 'i',
                pid: PID_RING,
                tid: 2,
                ts_ns: 2000,
                dur_ns: 0,
                args: String::new(),
                link: None,
            },
            Event {
                name: "REPLAY",
                ph: 'i',
                pid: PID_CMDS,
                tid: 1,
                ts_ns: 3100,
                dur_ns: 0,
                args: "{\"ctx\":1,\"lanes\":1}".into(),
                link: Some((3100, 1)),
            },
        ];
        let s = json(&ev);
        assert!(s.starts_with("{\"displayTimeUnit\""));
        assert!(s.contains(
            "\"ts\":1.500,\"dur\":2.000,\"args\":{\"ctx\":1,\"fetched_after_us\":0.4,\"replay_after_us\":1.5}},\n"
        ));
        assert!(s.contains("\"s\":\"t\"},\n"));
        assert!(s.contains("\"s\":\"t\",\"args\":{\"ctx\":1,\"lanes\":1}}\n]"));
        assert!(s.contains("engine 0 lane 3"));
    }
}
