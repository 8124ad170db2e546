//! `--ramp`: raises the offered load step by step until the server no longer keeps up, and
//! reports the last step that did: forwarded packets/s at saturation.
//!
//! Step k runs k × `--rooms` rooms of the scenario against a fresh server (the same run as
//! without `--ramp`, with its own warm-up and window), so that every step starts from the
//! same state. The ramp stops at the first step whose loss passes `--ramp-loss` % or whose
//! server latency (at the sockets) p99 passes `--ramp-p99` ms, or that fails to run; the
//! step before it is the saturation figure. A step whose generator ran at nearly a full
//! core says that the generator, not the server, may have been the limit.

use std::fmt::Write as _;

use anyhow::Result;
use serde::Serialize;

use crate::load::Progress;
use crate::options::{Options, Target};
use crate::report::RunReport;

/// Generator CPU (% of a core, per core it may use) above which a step's limit may be the
/// generator's rather than the server's.
const GENERATOR_BOUND_PCT: f64 = 90.0;

/// One step of the ramp.
#[derive(Debug, Clone, Serialize)]
pub struct RampStep {
    pub rooms: usize,
    pub offered_pps: f64,
    pub forwarded_pps: f64,
    pub loss_pct: f64,
    pub wire_p50_ms: f64,
    pub wire_p99_ms: f64,
    pub server_cpu_pct: Option<f64>,
    pub cpu_us_per_packet: Option<f64>,
    pub generator_cpu_pct: Option<f64>,
    pub light_us_per_packet: Option<f64>,
    pub other_load_pct: Option<f64>,
    /// The server's own drops in the window (`forward_drops` + `send_drops`): loss with none
    /// of its own happened before it read the packets, or after it sent them.
    pub server_drops: Option<u64>,
    /// Within both bounds.
    pub good: bool,
    /// Why the ramp stopped here, if it did.
    pub stopped: Option<String>,
}

/// The whole ramp.
#[derive(Debug, Clone, Serialize)]
pub struct RampReport {
    pub loss_bound_pct: f64,
    pub p99_bound_ms: f64,
    pub steps: Vec<RampStep>,
    /// The last good step's forwarded packets/s: one server at saturation.
    pub saturation_pps: Option<f64>,
    /// The last good step's rooms.
    pub saturation_rooms: Option<usize>,
}

fn step_of(rooms: usize, offered: f64, run: &RunReport, opts: &Options) -> RampStep {
    let good = run.loss_pct <= opts.ramp_loss && run.wire_latency_ms.p99 <= opts.ramp_p99;
    RampStep {
        rooms,
        offered_pps: offered,
        forwarded_pps: run.forwarded_pps,
        loss_pct: run.loss_pct,
        wire_p50_ms: run.wire_latency_ms.p50,
        wire_p99_ms: run.wire_latency_ms.p99,
        server_cpu_pct: run.cpu_pct,
        cpu_us_per_packet: run.cpu_us_per_packet,
        generator_cpu_pct: run.generator_cpu_pct,
        light_us_per_packet: run.light.as_ref().and_then(|l| l.us_per_packet),
        other_load_pct: run.other_load_pct,
        server_drops: ["forward_drops", "send_drops"]
            .iter()
            .map(|k| {
                run.forwarder_counters
                    .get(*k)
                    .and_then(serde_json::Value::as_u64)
            })
            .sum(),
        good,
        stopped: (!good).then(|| {
            if run.loss_pct > opts.ramp_loss {
                format!("loss {:.3} % > {} %", run.loss_pct, opts.ramp_loss)
            } else {
                format!(
                    "p99 {:.2} ms > {} ms",
                    run.wire_latency_ms.p99, opts.ramp_p99
                )
            }
        }),
    }
}

/// Runs the ramp against Chorus.
pub(crate) async fn run(opts: &Options, progress: &Progress) -> Result<RampReport> {
    let mut report = RampReport {
        loss_bound_pct: opts.ramp_loss,
        p99_bound_ms: opts.ramp_p99,
        steps: Vec::new(),
        saturation_pps: None,
        saturation_rooms: None,
    };
    for k in opts.ramp_start.max(1)..opts.ramp_start.max(1) + opts.ramp_steps {
        let mut step_opts = opts.clone();
        step_opts.rooms = opts.rooms * k;
        step_opts.ramp = false;
        step_opts.target = vec![Target::Chorus];
        step_opts.baseline = false;
        step_opts.calibrate = false;
        let offered = crate::scenario(&step_opts).offered_forward_pps;
        progress.say(&format!(
            "ramp step {k}: {} rooms, {offered:.0} packets/s offered",
            step_opts.rooms
        ));
        let mut run = match crate::chorus_run::run(&step_opts, progress).await {
            Ok(run) => run,
            Err(err) => {
                progress.say(&format!("ramp step {k} failed: {err:#}"));
                report.steps.push(RampStep {
                    rooms: step_opts.rooms,
                    offered_pps: offered,
                    forwarded_pps: 0.0,
                    loss_pct: 100.0,
                    wire_p50_ms: 0.0,
                    wire_p99_ms: 0.0,
                    server_cpu_pct: None,
                    cpu_us_per_packet: None,
                    generator_cpu_pct: None,
                    light_us_per_packet: None,
                    other_load_pct: None,
                    server_drops: None,
                    good: false,
                    stopped: Some(format!("the step failed: {err:#}")),
                });
                break;
            }
        };
        run.set_other_load(crate::procfs::cores());
        let step = step_of(step_opts.rooms, offered, &run, opts);
        let unaccounted = run
            .light
            .as_ref()
            .map(|l| l.unaccounted)
            .filter(|u| u.total() > 0)
            .map(|u| format!(" (light subscriptions unaccounted: {u:?})"))
            .unwrap_or_default();
        progress.say(&format!(
            "ramp step {k}: forwarded {:.0} pkt/s, loss {:.3} %, wire p99 {:.2} ms, server CPU {:.0} %{}{unaccounted}",
            step.forwarded_pps,
            step.loss_pct,
            step.wire_p99_ms,
            step.server_cpu_pct.unwrap_or(0.0),
            if step.good { "" } else { " -> stop" }
        ));
        let good = step.good;
        report.steps.push(step);
        if !good {
            break;
        }
    }
    if let Some(last) = report.steps.iter().rev().find(|s| s.good) {
        report.saturation_pps = Some(last.forwarded_pps);
        report.saturation_rooms = Some(last.rooms);
    }
    Ok(report)
}

impl RampReport {
    /// The ramp's table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nramp (bounds: loss <= {} %, server latency p99 <= {} ms)",
            self.loss_bound_pct, self.p99_bound_ms
        );
        let _ = writeln!(
            out,
            "{:>6}{:>12}{:>12}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}{:>10}{:>8}{:>7}  ",
            "rooms",
            "offered",
            "forwarded",
            "loss %",
            "p50 ms",
            "p99 ms",
            "srv %",
            "us/pkt",
            "gen %",
            "light us",
            "other",
            "drops"
        );
        let opt = |v: Option<f64>, p: usize| v.map_or("-".to_owned(), |v| format!("{v:.p$}"));
        for s in &self.steps {
            let _ = writeln!(
                out,
                "{:>6}{:>12.0}{:>12.0}{:>9.3}{:>9.2}{:>9.2}{:>9}{:>9}{:>9}{:>10}{:>8}{:>7}  {}",
                s.rooms,
                s.offered_pps,
                s.forwarded_pps,
                s.loss_pct,
                s.wire_p50_ms,
                s.wire_p99_ms,
                opt(s.server_cpu_pct, 0),
                opt(s.cpu_us_per_packet, 2),
                opt(s.generator_cpu_pct, 0),
                opt(s.light_us_per_packet, 3),
                opt(s.other_load_pct, 0),
                s.server_drops.map_or("-".to_owned(), |d| d.to_string()),
                match (&s.stopped, s.generator_cpu_pct) {
                    (Some(why), Some(g)) if g >= GENERATOR_BOUND_PCT =>
                        format!("stop: {why} (generator at {g:.0} %: may be the limit)"),
                    (Some(why), _) => format!("stop: {why}"),
                    _ => String::new(),
                }
            );
        }
        match (self.saturation_pps, self.saturation_rooms) {
            (Some(pps), Some(rooms)) => {
                let _ = writeln!(
                    out,
                    "saturation: {pps:.0} forwarded packets/s ({rooms} rooms), the last step within the bounds"
                );
            }
            _ => {
                let _ = writeln!(out, "saturation: no step within the bounds");
            }
        }
        out
    }
}
