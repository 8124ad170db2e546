//! `chorus-loadtest`: loads a Chorus server with simulated participants and reports
//! forwarding rate, loss, latency, CPU per packet and memory; `--baseline` adds a minimal
//! forwarder driven with the same load. See docs/performance.md.

use anyhow::Result;
use chorus_benches::Options;
use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> Result<()> {
    let opts = Options::parse();
    // webrtc-rs logs harmless warnings on loopback; show errors only unless RUST_LOG says
    // otherwise. The server child inherits RUST_LOG, so keep it quiet too.
    if std::env::var_os("RUST_LOG").is_none() {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("RUST_LOG", "error") };
    }
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let report = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(chorus_benches::run(&opts))?;
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
