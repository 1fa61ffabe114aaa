//! `report.html`: a run's history drawn as a timeline, one self-contained
//! page (inline SVG and CSS, no script, no network). Sans-IO: a history in,
//! a page out.
//!
//! One lane per node with its operations (green: ok; red: failed; amber:
//! unknown, in flight at a kill; reads lighter), its kills, restarts and
//! pauses; partition and loss windows across the lanes; the scenario's
//! phases as dashed lines, the last one marked as the convergence point;
//! and under it each operation's latency over time. Every drawn element
//! names the history records it draws (`data-i`), so a test can check that
//! the page shows every record.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use serde_json::Value;

use crate::history::{Event, Kind, Micro};

/// Page width and the parts of it, in px.
const WIDTH: f64 = 1200.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const LANE: f64 = 28.0;
const LATENCY: f64 = 160.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An operation drawn from its invocation to its completion.
struct Span {
    node: usize,
    start: u64,
    end: u64,
    kind: Kind,
    read: bool,
    label: String,
    records: Vec<u64>,
}

/// Renders `events` (a history, in order) as a page titled `title`.
pub(crate) fn render(title: &str, events: &[Event]) -> String {
    let end_ns = events.iter().map(time_of).max().unwrap_or(1).max(1);
    let nodes = events
        .iter()
        .filter_map(|e| match e {
            Event::Op { node, .. } | Event::State { node, .. } => Some(*node + 1),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let x = |t: u64| LEFT + (WIDTH - LEFT - RIGHT) * t as f64 / end_ns as f64;
    let lane_y = |n: usize| 40.0 + n as f64 * LANE;
    let lanes_bottom = lane_y(nodes);
    let lat_top = lanes_bottom + 40.0;
    let height = lat_top + LATENCY + 40.0;

    // Pair invocations with completions, by client process.
    let mut open: HashMap<u64, (u64, u64)> = HashMap::new();
    let mut spans = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let i = i as u64;
        if let Event::Op {
            kind,
            process,
            node,
            micro,
            time_ns,
            ..
        } = e
        {
            let (read, label) = match micro {
                Micro::Write(op) => (
                    false,
                    format!("w {} {}", op.key, op.value.as_deref().unwrap_or("(delete)")),
                ),
                Micro::Read { key, value } => {
                    (true, format!("r {key} {}", value.as_deref().unwrap_or("-")))
                }
            };
            match kind {
                Kind::Invoke => {
                    // An invocation still open on this process never
                    // completed: drawn up to this one.
                    if let Some((j, t)) = open.insert(*process, (i, *time_ns)) {
                        spans.push(Span {
                            node: *node,
                            start: t,
                            end: *time_ns,
                            kind: Kind::Info,
                            read,
                            label: "never completed".into(),
                            records: vec![j],
                        });
                    }
                }
                done => {
                    let (start_i, start) = open.remove(process).unwrap_or((i, *time_ns));
                    let mut records = vec![start_i];
                    if start_i != i {
                        records.push(i);
                    }
                    spans.push(Span {
                        node: *node,
                        start,
                        end: *time_ns,
                        kind: *done,
                        read,
                        label,
                        records,
                    });
                }
            }
        }
    }
    // Invocations never completed (the run stopped): drawn to the end.
    let mut unfinished: Vec<(u64, u64, u64)> = Vec::new();
    for (process, (i, t)) in open {
        unfinished.push((process, i, t));
    }
    unfinished.sort_unstable();
    for (_, i, t) in unfinished {
        if let Some(Event::Op { node, micro, .. }) = events.get(i as usize) {
            spans.push(Span {
                node: *node,
                start: t,
                end: end_ns,
                kind: Kind::Info,
                read: matches!(micro, Micro::Read { .. }),
                label: "unfinished".into(),
                records: vec![i],
            });
        }
    }

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    // Windows across the lanes: partitions until a heal, drops to the end.
    let mut partition: Option<(u64, u64, String)> = None;
    let mut paused: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
    let band = |svg: &mut String, from: u64, to: u64, class: &str, label: &str, records: &str| {
        let _ = writeln!(
            svg,
            r#"<rect class="{class}" data-i="{records}" x="{:.1}" y="30" width="{:.1}" height="{:.1}"><title>{}</title></rect>"#,
            x(from),
            (x(to) - x(from)).max(1.0),
            lanes_bottom - 30.0,
            esc(label)
        );
    };
    for (i, e) in events.iter().enumerate() {
        let i = i as u64;
        let Event::Fault { f, value, time_ns } = e else {
            continue;
        };
        let t = *time_ns;
        let nodes_of = |v: &Value| -> Vec<usize> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|n| n.as_u64().map(|n| n as usize))
                        .collect()
                })
                .unwrap_or_default()
        };
        match f.as_str() {
            "partition" => partition = Some((i, t, value.to_string())),
            "heal" => {
                let (pi, from, what) = partition.take().unwrap_or((i, t, "?".into()));
                band(
                    &mut svg,
                    from,
                    t,
                    "partition",
                    &format!("partition {what}, healed"),
                    &format!("{pi},{i}"),
                );
            }
            "drop" => band(
                &mut svg,
                t,
                end_ns,
                "loss",
                &format!("loss {value}"),
                &i.to_string(),
            ),
            "pause" => {
                for n in nodes_of(value) {
                    paused.insert(n, (i, t));
                }
            }
            "resume" => {
                for n in nodes_of(value) {
                    let (pi, from) = paused.remove(&n).unwrap_or((i, t));
                    let _ = writeln!(
                        svg,
                        r#"<rect class="pause" data-i="{pi},{i}" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}"><title>node {n} paused</title></rect>"#,
                        x(from),
                        lane_y(n) - LANE / 2.0 + 2.0,
                        (x(t) - x(from)).max(1.0),
                        LANE - 4.0
                    );
                }
            }
            other => {
                // A point fault: a marker on each node it names, or across.
                let targets = match value.get("node").and_then(Value::as_u64) {
                    Some(n) => vec![n as usize],
                    None => nodes_of(value),
                };
                let (y1, y2) = match targets.as_slice() {
                    [n] => (lane_y(*n) - LANE / 2.0, lane_y(*n) + LANE / 2.0),
                    _ => (30.0, lanes_bottom),
                };
                let _ = writeln!(
                    svg,
                    r#"<line class="fault {other}" data-i="{i}" x1="{0:.1}" x2="{0:.1}" y1="{y1:.1}" y2="{y2:.1}"><title>{1} {2}</title></line>"#,
                    x(t),
                    esc(other),
                    esc(&value.to_string())
                );
            }
        }
    }
    if let Some((pi, from, what)) = partition {
        band(
            &mut svg,
            from,
            end_ns,
            "partition",
            &format!("partition {what}"),
            &pi.to_string(),
        );
    }
    for (n, (pi, from)) in paused {
        let _ = writeln!(
            svg,
            r#"<rect class="pause" data-i="{pi}" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}"><title>node {n} paused</title></rect>"#,
            x(from),
            lane_y(n) - LANE / 2.0 + 2.0,
            (x(end_ns) - x(from)).max(1.0),
            LANE - 4.0
        );
    }
    // Lanes.
    for n in 0..nodes {
        let y = lane_y(n);
        let _ = writeln!(
            svg,
            r#"<text x="8" y="{:.1}">node {n}</text><line class="lane" x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}"/>"#,
            y + 4.0,
            WIDTH - RIGHT
        );
    }
    // Operations, and their latency below.
    let lat_max = spans
        .iter()
        .map(|s| s.end.saturating_sub(s.start))
        .max()
        .unwrap_or(1)
        .max(1);
    for s in &spans {
        let class = match (s.kind, s.read) {
            (Kind::Ok, false) => "ok",
            (Kind::Ok, true) => "ok read",
            (Kind::Fail, _) => "fail",
            _ => "info",
        };
        let records: Vec<String> = s.records.iter().map(u64::to_string).collect();
        let y = lane_y(s.node) - 6.0 + if s.read { 7.0 } else { 0.0 };
        let _ = writeln!(
            svg,
            r#"<rect class="op {class}" data-i="{}" x="{:.1}" y="{y:.1}" width="{:.1}" height="5"><title>node {} {} ({:.2} ms)</title></rect>"#,
            records.join(","),
            x(s.start),
            (x(s.end) - x(s.start)).max(1.0),
            s.node,
            esc(&s.label),
            (s.end - s.start) as f64 / 1e6
        );
        let ly = lat_top + LATENCY - LATENCY * (s.end - s.start) as f64 / lat_max as f64;
        let _ = writeln!(
            svg,
            r#"<circle class="lat {class}" cx="{:.1}" cy="{ly:.1}" r="1.6"/>"#,
            x(s.end)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="8" y="{:.1}">latency</text><text x="8" y="{:.1}">{:.1} ms</text><text x="8" y="{:.1}">0</text><line class="lane" x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}"/>"#,
        lat_top - 6.0,
        lat_top + 10.0,
        lat_max as f64 / 1e6,
        lat_top + LATENCY,
        WIDTH - RIGHT,
        lat_top + LATENCY,
        lat_top + LATENCY
    );
    // Phases, and states read from the nodes.
    let phases: Vec<(usize, &Event)> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, Event::Phase { .. }))
        .collect();
    // Phase labels close to the previous one go on a second row.
    let mut last_label = f64::NEG_INFINITY;
    let mut row = 17.0;
    for (i, e) in events.iter().enumerate() {
        match e {
            Event::Phase { name, time_ns } => {
                row = if x(*time_ns) - last_label < 70.0 && row == 17.0 {
                    8.0
                } else {
                    17.0
                };
                last_label = x(*time_ns);
                let converged = name == "converge";
                let class = if converged {
                    "phase converged"
                } else {
                    "phase"
                };
                let text = if converged {
                    "converged".to_owned()
                } else {
                    esc(name)
                };
                let (px, bottom) = (x(*time_ns), lat_top + LATENCY);
                let _ = writeln!(
                    svg,
                    r#"<line class="{class}" data-i="{i}" x1="{px:.1}" x2="{px:.1}" y1="20" y2="{bottom:.1}"/><text x="{:.1}" y="{row}" text-anchor="end">{text}</text>"#,
                    px - 3.0,
                );
            }
            Event::State {
                what,
                node,
                entries,
                time_ns,
            } => {
                let what = what.as_str();
                let _ = writeln!(
                    svg,
                    r#"<circle class="state {what}" data-i="{i}" cx="{:.1}" cy="{:.1}" r="4"><title>node {node}: {what} state, {} entries</title></circle>"#,
                    x(*time_ns),
                    lane_y(*node),
                    entries.len()
                );
            }
            _ => {}
        }
    }
    svg.push_str("</svg>\n");

    let count = |k: Kind| spans.iter().filter(|s| s.kind == k).count();
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 16px; color: #222; }}
.lane {{ stroke: #ccc; }}
.op.ok {{ fill: #2e9d4f; }} .op.ok.read {{ fill: #8fd19e; }}
.op.fail {{ fill: #d33; }} .op.info {{ fill: #f0a020; }}
.lat.ok {{ fill: #2e9d4f; }} .lat.fail {{ fill: #d33; }} .lat.info {{ fill: #f0a020; }}
.partition {{ fill: #7b61ff; opacity: 0.12; }} .loss {{ fill: #999; opacity: 0.10; }}
.pause {{ fill: #555; opacity: 0.25; }}
.fault {{ stroke: #d33; stroke-width: 2; }} .fault.restart {{ stroke: #2e9d4f; }}
.fault.flap {{ stroke: #f0a020; }}
.phase {{ stroke: #888; stroke-dasharray: 4 3; }} .phase.converged {{ stroke: #2e9d4f; stroke-width: 2; }}
.state {{ fill: none; stroke: #333; }}
</style></head><body>
<h1>{title}</h1>
<p>{} operations ({} ok, {} failed, {} unknown), {} phases, over {:.2} s. Lanes: one per node; bars run from
a request's invocation to its reply (green ok, light green reads, red refused, amber unknown);
red lines are kills, green restarts; purple bands partitions, gray loss windows, dark bands
pauses; circles the states read from the nodes; a dashed line ends each phase (named left of
it), the green one where every node agreed. Below: each request's latency, at its completion. Hover for details.</p>
{svg}</body></html>
"#,
        spans.len(),
        count(Kind::Ok),
        count(Kind::Fail),
        count(Kind::Info),
        phases.len(),
        end_ns as f64 / 1e9,
        title = esc(title),
    )
}

fn time_of(e: &Event) -> u64 {
    match e {
        Event::Op { time_ns, .. }
        | Event::Fault { time_ns, .. }
        | Event::Phase { time_ns, .. }
        | Event::State { time_ns, .. } => *time_ns,
    }
}

/// The record numbers an element of a page says it draws.
#[cfg(test)]
pub(crate) fn drawn(page: &str) -> std::collections::BTreeSet<u64> {
    page.split("data-i=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .flat_map(|list| list.split(','))
        .filter_map(|n| n.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::parse;

    const HISTORY: &str = r#"
{"index":0,"type":"info","process":"nemesis","f":"partition","value":{"groups":[[0],[1]],"by":"node"},"time":5}
{"index":1,"type":"invoke","f":"txn","value":[["w","a","1"]],"process":0,"time":10,"node":0,"incarnation":0}
{"index":2,"type":"invoke","f":"txn","value":[["r","a",null]],"process":1,"time":11,"node":0,"incarnation":0}
{"index":3,"type":"ok","f":"txn","value":[["w","a","1"]],"process":0,"time":20,"node":0,"incarnation":0,"version":"1000.0@0"}
{"index":4,"type":"ok","f":"txn","value":[["r","a","1"]],"process":1,"time":21,"node":0,"incarnation":0,"version":"1000.0@0"}
{"index":5,"type":"invoke","f":"txn","value":[["w","b","2"]],"process":8,"time":30,"node":1,"incarnation":0}
{"index":6,"type":"info","f":"txn","value":[["w","b","2"]],"process":8,"time":40,"node":1,"incarnation":0}
{"index":7,"type":"info","process":"nemesis","f":"kill","value":[1],"time":40}
{"index":8,"type":"info","process":"nemesis","f":"pause","value":[0],"time":45}
{"index":9,"type":"info","process":"nemesis","f":"resume","value":[0],"time":50}
{"index":10,"type":"info","process":"nemesis","f":"restart","value":[1],"time":55}
{"index":11,"type":"info","process":"conductor","f":"recovered","node":1,"value":[],"time":56}
{"index":12,"type":"info","process":"nemesis","f":"heal","value":null,"time":60}
{"index":13,"type":"info","process":"conductor","f":"phase","value":"converge","time":70}
{"index":14,"type":"info","process":"conductor","f":"final","node":0,"value":[["a","1000.0@0","1"]],"time":80}
{"index":15,"type":"info","process":"conductor","f":"final","node":1,"value":[["a","1000.0@0","1"]],"time":81}
{"index":16,"type":"invoke","f":"txn","value":[["r","a",null]],"process":3,"time":82,"node":0,"incarnation":0}
{"index":17,"type":"invoke","f":"txn","value":[["r","a",null]],"process":3,"time":83,"node":0,"incarnation":0}
"#;

    #[test]
    fn the_page_draws_every_record_of_the_history() {
        let events = parse(HISTORY).unwrap();
        let page = render("a run <seed 1>", &events);
        let drawn = drawn(&page);
        let all: std::collections::BTreeSet<u64> = (0..events.len() as u64).collect();
        assert_eq!(
            drawn,
            all,
            "missing {:?}",
            all.difference(&drawn).collect::<Vec<_>>()
        );
        assert!(page.contains("<title>a run &lt;seed 1&gt;</title>"));
        assert!(
            page.contains(r#"class="op ok read""#),
            "the read is drawn as a read"
        );
        assert!(
            page.contains(r#"class="op info""#),
            "the write lost at the kill"
        );
        assert!(page.contains(r#"class="fault kill""#));
        assert!(page.contains(r#"class="phase converged""#));
        assert!(!page.contains("<script"), "no script");
        assert!(
            !page.contains("https://") && !page.contains("src="),
            "no network"
        );
    }
}
