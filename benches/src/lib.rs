//! Chorus benchmarks: the `chorus-loadtest` load generator (against a real server and against
//! a minimal baseline forwarder), and support for the per-packet micro-benchmarks in
//! `benches/`. See docs/performance.md for what is measured and how.

pub mod alloc;
mod baseline;
mod chorus_run;
mod cluster;
mod direct;
pub mod inmem;
pub mod janus;
pub mod light;
mod load;
pub mod media;
pub mod options;
pub mod procfs;
pub mod ramp;
pub mod report;
pub mod stats;
pub mod wire;

use anyhow::Result;

pub use chorus_run::default_server_bin;
pub use options::{Options, Roster, Target};
pub use report::{Report, RunReport};

use crate::load::Progress;
use crate::report::{Machine, Scenario};

/// The scenario as the report states it.
pub(crate) fn scenario(opts: &Options) -> Scenario {
    let roster = opts.roster();
    let shape = opts.shape();
    let kinds = report::kinds(&shape).len();
    let receivers = roster.receivers_per_publisher();
    Scenario {
        rooms: roster.rooms,
        publishers_per_room: roster.publishers,
        subscribers_per_room: roster.subscribers,
        participants: roster.participants(),
        subscriptions: roster.publishers_total() * kinds * receivers,
        media: shape,
        publisher_pps: shape.packets_per_second(),
        offered_forward_pps: if shape.simulcast {
            // each receiver gets audio and the layer of its tile, of every source
            (0..roster.participants())
                .filter_map(|p| {
                    let layer = roster.tile_layer(p)?;
                    let per_source = shape.audio_pps() + shape.video_pps(Some(layer));
                    Some(per_source * roster.sources_of(p).len() as f64)
                })
                .sum()
        } else {
            shape.packets_per_second() * roster.publishers_total() as f64 * receivers as f64
        },
        warmup_s: opts.warmup,
        duration_s: opts.duration,
    }
}

/// Runs what `opts` asks for: Chorus, the baseline, or both (Chorus first), one after the
/// other so that they never compete for the CPU.
pub async fn run(opts: &Options) -> Result<Report> {
    anyhow::ensure!(opts.rooms > 0, "--rooms must be at least 1");
    anyhow::ensure!(opts.publishers > 0, "--publishers must be at least 1");
    let progress = Progress::new(!opts.quiet);
    if let Some(cpus) = opts.generator_cpus() {
        procfs::set_process_affinity(std::process::id(), &cpus)?;
    }
    let mut report = Report {
        scenario: scenario(opts),
        machine: Machine {
            cores: procfs::cores(),
            cpu: procfs::cpu_model(),
        },
        chorus: None,
        baseline: None,
        janus: None,
        ratio: None,
        janus_ratio: None,
        ramp: None,
        client_stacks_latency_ms: None,
        loopback_wire_latency_ms: None,
        loopback_wire_unmatched: None,
    };
    if opts.ramp {
        report.ramp = Some(ramp::run(opts, &progress).await?);
        report.finish();
        return Ok(report);
    }
    if !opts.baseline_only {
        for target in &opts.target {
            match target {
                Target::Chorus => report.chorus = Some(chorus_run::run(opts, &progress).await?),
                Target::Janus => report.janus = Some(janus::run(opts, &progress).await?),
            }
        }
    }
    if opts.baseline || opts.baseline_only {
        report.baseline = Some(baseline::run(opts, &progress).await?);
    }
    if opts.calibrate {
        let direct = direct::run(opts).await?;
        report.client_stacks_latency_ms = Some(direct.app);
        report.loopback_wire_latency_ms = Some(direct.wire);
        report.loopback_wire_unmatched = Some(direct.wire_unmatched);
    }
    report.finish();
    Ok(report)
}
