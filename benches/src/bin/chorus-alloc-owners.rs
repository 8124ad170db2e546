//! Who allocates in a running server: reads the profile `valgrind --tool=dhat` writes and
//! counts every heap block by the code that asked for it, the innermost frame of its stack
//! that belongs to Chorus, to webrtc-rs, or to the runtime and HTTP stack (allocator, `std`,
//! `bytes` and `hashbrown` frames are looked through). Prints the totals, then Chorus's
//! allocation sites, most blocks first.
//!
//! `chorus-alloc-owners dhat.out [--top N]`; how to record the profile is in
//! docs/performance.md ("Allocations in a running server").

use std::collections::HashMap;

use anyhow::{Context, Result};
use clap::Parser;
use serde::Deserialize;

#[derive(Parser)]
#[command(about = "Counts the heap blocks in a dhat profile by the code that allocated them")]
struct Args {
    /// The profile (`--dhat-out-file` of `valgrind --tool=dhat`).
    profile: std::path::PathBuf,
    /// Chorus allocation sites to list.
    #[arg(long, default_value_t = 15)]
    top: usize,
}

/// The parts of dhat's JSON format this reads.
#[derive(Deserialize)]
struct Profile {
    /// Program points: one allocation stack each.
    pps: Vec<ProgramPoint>,
    /// Frame descriptions, indexed by `ProgramPoint::fs`.
    ftbl: Vec<String>,
}

#[derive(Deserialize)]
struct ProgramPoint {
    /// Total blocks allocated here.
    tbk: u64,
    /// Frames, innermost first.
    fs: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Owner {
    Chorus,
    WebrtcRs,
    RuntimeAndHttp,
    Unattributed,
}

/// The owner a frame names, if it names one.
fn owner_of(frame: &str) -> Option<Owner> {
    const CHORUS: &[&str] = &[
        "chorus_sfu::",
        "chorus_signal::",
        "chorus_protocol::",
        "chorus::",
    ];
    const WEBRTC_RS: &[&str] = &["rtc::", "rtc_", "sansio::"];
    const RUNTIME: &[&str] = &["tokio::", "axum::", "hyper::", "tracing", "clap"];
    let has = |names: &[&str]| names.iter().any(|n| frame.contains(n));
    if has(CHORUS) {
        Some(Owner::Chorus)
    } else if has(WEBRTC_RS) {
        Some(Owner::WebrtcRs)
    } else if has(RUNTIME) {
        Some(Owner::RuntimeAndHttp)
    } else {
        None
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.profile)
        .with_context(|| format!("reading {}", args.profile.display()))?;
    let profile: Profile = serde_json::from_str(&text).context("not a dhat profile")?;
    let frame = |i: usize| profile.ftbl.get(i).map_or("?", String::as_str);

    let mut totals: HashMap<Owner, u64> = HashMap::new();
    let mut chorus_sites: HashMap<&str, u64> = HashMap::new();
    for pp in &profile.pps {
        let found = pp
            .fs
            .iter()
            .find_map(|&i| owner_of(frame(i)).map(|owner| (owner, frame(i))));
        let owner = found.map_or(Owner::Unattributed, |(owner, _)| owner);
        *totals.entry(owner).or_default() += pp.tbk;
        if let Some((Owner::Chorus, site)) = found {
            *chorus_sites.entry(site).or_default() += pp.tbk;
        }
    }

    let mut totals: Vec<_> = totals.into_iter().collect();
    totals.sort();
    println!("heap blocks by owner");
    for (owner, blocks) in totals {
        println!("  {owner:?}: {blocks}");
    }
    let mut sites: Vec<_> = chorus_sites.into_iter().collect();
    sites.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    println!("Chorus's allocation sites");
    for (site, blocks) in sites.into_iter().take(args.top) {
        let site: String = site.split_whitespace().collect::<Vec<_>>().join(" ");
        println!(
            "  {blocks:>8}  {}",
            site.chars().take(150).collect::<String>()
        );
    }
    Ok(())
}
