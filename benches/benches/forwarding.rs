//! Per-packet micro-benchmarks of the forwarding path: ns per packet and heap allocations per
//! packet (a counting global allocator). `cargo bench -p chorus-benches [-- FILTER]`.
//!
//! - `rewrite/ids`: `SeqRewriter::rewrite` + the payload-type `IdMap` look-up, per packet
//!   per subscription.
//! - `rewrite/packet`, `rewrite/packet+dropped-ext`: `chorus_sfu::peer::HeaderRewrite::apply`
//!   (the rewritten copy `Peer::forward` hands webrtc-rs) on a video packet without header
//!   extensions, and on one with three, as a browser sends them (transport-cc, mid and the
//!   like), none of which a subscription forwards.
//! - `rewrite/vp8-switched`: the same on VP8 packets with picture ids, for a subscription
//!   whose picture ids are offset after a layer switch (its payload copied into a reused
//!   buffer).
//! - `rewrite/red`, `rewrite/red-unwrap`: the same on an Opus RED packet, forwarded as it
//!   came (a subscriber with RED) or cut to its primary block (one without).
//! - `fanout/peer/N`: real `chorus_sfu::peer::Peer`s connected in memory (see
//!   `chorus_benches::inmem::Rig`): one SRTP datagram in, N SRTP datagrams out, through
//!   webrtc-rs (`handle_read`, interceptors, SRTP) and Chorus's `Peer::forward`, handled in
//!   batches of 10 datagrams (one frame's burst) as the worker handles a `recvmmsg` batch.
//!   No socket.
//! - `fanout/parts/N`: the same fan-out from its parts, without `Peer`: SRTP-unprotect once,
//!   then per subscription `HeaderRewrite::apply` + marshal + SRTP-protect (AES-128-GCM).
//! - `fanout/threads/T`: `fanout/peer/10` on T threads at once, each with its own rig, as T
//!   media workers forward T rooms: ns per input datagram of all threads together (wall
//!   time), so T threads that scale perfectly show 1/T of `fanout/threads/1`. Shows
//!   whether the forwarding path shares anything across threads (locks, the allocator).

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use chorus_benches::alloc::{AllocCount, Counting};
use chorus_benches::inmem::{Parts, Rig};
use chorus_sfu::peer::HeaderRewrite;
use chorus_sfu::rewrite::{IdMap, SeqRewriter};
use rtc::rtp::header::{Extension, Header};
use rtc::rtp::packet::Packet;

#[global_allocator]
static ALLOC: Counting = Counting;

/// Repeats per bench; the median is reported.
const REPEATS: usize = 5;
/// Datagrams per worker pass in `fanout/peer`: one video frame's burst.
const PEER_BATCH: usize = 10;

struct Row {
    name: String,
    ns_per_in: f64,
    outputs_per_in: f64,
    allocs_per_in: f64,
    bytes_per_in: f64,
}

/// Runs `step` on `inputs` inputs per repeat; `step(i)` handles input `i` and returns how
/// many outputs it made.
fn measure(name: &str, inputs: usize, mut step: impl FnMut(usize) -> usize) -> Row {
    let mut times = Vec::with_capacity(REPEATS);
    let mut outputs = 0usize;
    let before = AllocCount::now();
    for r in 0..REPEATS {
        let start = Instant::now();
        for i in 0..inputs {
            outputs += step(r * inputs + i);
        }
        times.push(start.elapsed().as_nanos() as f64 / inputs as f64);
    }
    let allocs = AllocCount::now().since(before);
    times.sort_by(f64::total_cmp);
    let total = (REPEATS * inputs) as f64;
    Row {
        name: name.to_owned(),
        ns_per_in: times[REPEATS / 2],
        outputs_per_in: outputs as f64 / total,
        allocs_per_in: allocs.allocs as f64 / total,
        bytes_per_in: allocs.bytes as f64 / total,
    }
}

fn print(row: &Row) {
    let per_out = |v: f64| {
        if row.outputs_per_in > 0.0 {
            format!("{:.1}", v / row.outputs_per_in)
        } else {
            "-".to_owned()
        }
    };
    println!(
        "{:<28} {:>12.1} {:>10} {:>12} {:>12.2} {:>12} {:>12.0}",
        row.name,
        row.ns_per_in,
        format!("{:.0}", row.outputs_per_in),
        per_out(row.ns_per_in),
        row.allocs_per_in,
        if row.outputs_per_in > 0.0 {
            format!("{:.2}", row.allocs_per_in / row.outputs_per_in)
        } else {
            "-".to_owned()
        },
        row.bytes_per_in,
    );
}

fn bench_rewrite_ids() -> Row {
    let mut seq = SeqRewriter::new(7);
    let mut pt = IdMap::default();
    pt.insert(96, 98);
    measure("rewrite/ids", 2_000_000, |i| {
        let (s, t) = seq.rewrite(
            black_box(0x1234),
            black_box(i as u16),
            black_box(i as u32 * 3000),
        );
        let p = pt.get(black_box(96));
        black_box((s, t, p));
        1
    })
}

/// `HeaderRewrite::apply` (what `Peer::forward` does before handing the packet to
/// webrtc-rs) on a 1100-byte video packet with `extensions`: (id, length) of its header
/// extensions.
fn bench_rewrite_packet(name: &str, extensions: &[(u8, usize)]) -> Row {
    let mut rewrite = HeaderRewrite::new(0x5000_0001);
    rewrite.pt.insert(96, 98);
    let mut packet = Packet {
        header: Header {
            version: 2,
            payload_type: 96,
            ssrc: 0x1234,
            extension: !extensions.is_empty(),
            extension_profile: 0xBEDE,
            extensions: extensions
                .iter()
                .map(|&(id, len)| Extension {
                    id,
                    payload: Bytes::from(vec![0xAB; len]),
                })
                .collect(),
            ..Default::default()
        },
        payload: Bytes::from(vec![0x10u8; 1100]),
    };
    measure(name, 1_000_000, |i| {
        packet.header.sequence_number = i as u16;
        packet.header.timestamp = (i / 10) as u32 * 3000;
        let out = rewrite.apply(black_box(&packet));
        usize::from(black_box(out).is_ok())
    })
}

/// `HeaderRewrite::apply` on VP8 packets with a picture id and TL0PICIDX, as Chromium
/// sends them, for a subscription that switched layers: its numbers are offset, so each
/// copy's payload is written into the subscription's reused buffer (`vp8::Vp8Rewriter`)
/// instead of shared. Its allocations per packet are the reuse's proof.
fn bench_rewrite_vp8_switched() -> Row {
    let mut rewrite = HeaderRewrite::new(0x5000_0001);
    rewrite.pt.insert(96, 98);
    rewrite.vp8 = Some(chorus_sfu::vp8::Vp8Rewriter::default());
    let vp8 = |ssrc: u32, picture_id: u16| {
        let [hi, lo] = (picture_id & 0x7fff).to_be_bytes();
        let mut payload = vec![0x90, 0xE0, 0x80 | hi, lo, 7, 0x20];
        payload.resize(1100, 0x11);
        Packet {
            header: Header {
                version: 2,
                payload_type: 96,
                ssrc,
                ..Default::default()
            },
            payload: Bytes::from(payload),
        }
    };
    // The first layer, then a switch to a layer whose numbers are elsewhere.
    let _ = rewrite.apply(&vp8(0x1111, 100));
    let mut packet = vp8(0x2222, 20_000);
    let _ = rewrite.apply_switching(&packet);
    measure("rewrite/vp8-switched", 1_000_000, |i| {
        packet.header.sequence_number = i as u16;
        packet.header.timestamp = (i / 10) as u32 * 3000;
        let out = rewrite.apply(black_box(&packet));
        usize::from(black_box(out).is_ok())
    })
}

/// `HeaderRewrite::apply` on an Opus RED packet as Chromium sends it (one redundant frame
/// and the primary, 2 × 75 bytes): mapped as it came (`unwrap: false`, a RED subscriber)
/// or cut to its primary block (`unwrap: true`, a subscriber without RED).
fn bench_rewrite_red(name: &str, unwrap: bool) -> Row {
    let mut rewrite = HeaderRewrite::new(0x5000_0001);
    rewrite.pt.insert(111, 109);
    if unwrap {
        rewrite.pt.insert(63, 109);
        rewrite.unwrap_red = Some((63, 111));
    } else {
        rewrite.pt.insert(63, 120);
    }
    let mut payload = vec![
        0x80 | 111,
        (960u32 >> 6) as u8,
        ((960u32 << 2) & 0xfc) as u8,
        75,
        111,
    ];
    payload.extend(std::iter::repeat_n(0x11u8, 150));
    let mut packet = Packet {
        header: Header {
            version: 2,
            payload_type: 63,
            ssrc: 0x1234,
            ..Default::default()
        },
        payload: Bytes::from(payload),
    };
    measure(name, 1_000_000, |i| {
        packet.header.sequence_number = i as u16;
        packet.header.timestamp = i as u32 * 960;
        let out = rewrite.apply(black_box(&packet));
        usize::from(black_box(out).is_ok_and(|p| p.payload.len() == if unwrap { 75 } else { 155 }))
    })
}

fn bench_peer(subscribers: usize) -> anyhow::Result<Row> {
    let mut rig = Rig::new(subscribers)?;
    let inputs = (20_000 / subscribers).clamp(300, 10_000);
    let mut datagrams = rig.datagrams(REPEATS * inputs, 1100)?;
    let mut row = measure(
        &format!("fanout/peer/{subscribers}"),
        inputs / PEER_BATCH,
        |i| {
            let batch = &mut datagrams[i * PEER_BATCH..(i + 1) * PEER_BATCH];
            rig.forward_batch(batch, Instant::now())
        },
    );
    // `measure` counted batches; report per datagram.
    row.ns_per_in /= PEER_BATCH as f64;
    row.outputs_per_in /= PEER_BATCH as f64;
    row.allocs_per_in /= PEER_BATCH as f64;
    row.bytes_per_in /= PEER_BATCH as f64;
    Ok(row)
}

fn bench_threads(threads: usize) -> anyhow::Result<Row> {
    const SUBSCRIBERS: usize = 10;
    const BATCHES: usize = 2_000;
    let start = std::sync::Arc::new(std::sync::Barrier::new(threads + 1));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let start = std::sync::Arc::clone(&start);
            std::thread::spawn(move || -> anyhow::Result<usize> {
                let mut rig = Rig::new(SUBSCRIBERS)?;
                let mut datagrams = rig.datagrams(REPEATS * BATCHES * PEER_BATCH, 1100)?;
                let mut outputs = 0;
                for r in 0..REPEATS {
                    start.wait();
                    for b in 0..BATCHES {
                        let at = (r * BATCHES + b) * PEER_BATCH;
                        outputs +=
                            rig.forward_batch(&mut datagrams[at..at + PEER_BATCH], Instant::now());
                    }
                    start.wait();
                }
                Ok(outputs)
            })
        })
        .collect();
    let mut times = Vec::with_capacity(REPEATS);
    let mut before = None;
    for _ in 0..REPEATS {
        // Every thread has built its rig once it reaches the first barrier.
        start.wait();
        before.get_or_insert_with(AllocCount::now);
        let t = Instant::now();
        start.wait();
        times.push(t.elapsed().as_nanos() as f64);
    }
    let before = before.unwrap_or_else(AllocCount::now);
    let allocs = AllocCount::now().since(before);
    let mut outputs = 0;
    for worker in workers {
        outputs += worker
            .join()
            .map_err(|_| anyhow::anyhow!("a forwarding thread panicked"))??;
    }
    times.sort_by(f64::total_cmp);
    let inputs = (threads * BATCHES * PEER_BATCH) as f64;
    let total = inputs * REPEATS as f64;
    Ok(Row {
        name: format!("fanout/threads/{threads}"),
        ns_per_in: times[REPEATS / 2] / inputs,
        outputs_per_in: outputs as f64 / total,
        allocs_per_in: allocs.allocs as f64 / total,
        bytes_per_in: allocs.bytes as f64 / total,
    })
}

fn bench_parts(subscribers: usize) -> anyhow::Result<Row> {
    let mut parts = Parts::new(subscribers)?;
    let inputs = (40_000 / subscribers).clamp(500, 20_000);
    let datagrams = parts.datagrams(REPEATS * inputs, 1100)?;
    Ok(measure(
        &format!("fanout/parts/{subscribers}"),
        inputs,
        |i| parts.forward(&datagrams[i]),
    ))
}

fn main() -> anyhow::Result<()> {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    // A filter names a bench or a group: `fanout/peer` runs all three, `fanout/peer/10` one.
    let wanted = |name: &str| {
        filter
            .as_deref()
            .is_none_or(|f| name == f || name.starts_with(&format!("{f}/")))
    };
    println!(
        "{:<28} {:>12} {:>10} {:>12} {:>12} {:>12} {:>12}",
        "bench", "ns/in", "out/in", "ns/out", "allocs/in", "allocs/out", "bytes/in"
    );
    if wanted("rewrite/ids") {
        print(&bench_rewrite_ids());
    }
    if wanted("rewrite/packet") {
        print(&bench_rewrite_packet("rewrite/packet", &[]));
    }
    if wanted("rewrite/packet+dropped-ext") {
        print(&bench_rewrite_packet(
            "rewrite/packet+dropped-ext",
            &[(1, 2), (6, 1), (7, 3)],
        ));
    }
    if wanted("rewrite/vp8-switched") {
        print(&bench_rewrite_vp8_switched());
    }
    if wanted("rewrite/red") {
        print(&bench_rewrite_red("rewrite/red", false));
    }
    if wanted("rewrite/red-unwrap") {
        print(&bench_rewrite_red("rewrite/red-unwrap", true));
    }
    for n in [1, 10, 100] {
        if wanted(&format!("fanout/parts/{n}")) {
            print(&bench_parts(n)?);
        }
    }
    for n in [1, 10, 100] {
        if wanted(&format!("fanout/peer/{n}")) {
            print(&bench_peer(n)?);
        }
    }
    for n in [1, 2] {
        if wanted(&format!("fanout/threads/{n}")) {
            print(&bench_threads(n)?);
        }
    }
    Ok(())
}
