//! The counters each worker keeps, read by `/api/stats`, `/metrics` and the load generator.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::handoff::HandoffStats;
use crate::peer::ForwardDrop;

/// Counters the worker keeps; read by `/api/stats` and the load generator.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub peers: AtomicU64,
    pub tracks: AtomicU64,
    pub subscriptions: AtomicU64,
    pub datagrams_in: AtomicU64,
    pub datagrams_out: AtomicU64,
    pub rtp_in: AtomicU64,
    pub rtp_forwarded: AtomicU64,
    /// Forwarded packets dropped before their subscriber was ready or because it refused.
    pub forward_drops: AtomicU64,
    /// Datagrams from addresses that no peer owns.
    pub unrouted: AtomicU64,
    /// Datagrams the kernel would not take (send buffer full).
    pub send_drops: AtomicU64,
    pub keyframe_requests: AtomicU64,
    /// Packets sent again to answer a subscriber's NACK.
    pub retransmitted: AtomicU64,
    /// NACKed packets no longer (or never) in their track's history.
    pub retransmit_misses: AtomicU64,
    /// Packets of a simulcast track from an SSRC that no layer has.
    pub unknown_layer: AtomicU64,
    /// Layer switches completed (each on a keyframe of the new layer).
    pub layer_switches: AtomicU64,
    /// Notices to rooms that did not fit their queue.
    pub notice_drops: AtomicU64,
    /// RTP bytes read from publishers: header and payload, without SRTP or header
    /// extensions (what [`crate::peer::MediaPacket::wire_len`] counts).
    pub rtp_bytes_in: AtomicU64,
    /// RTP bytes forwarded to subscribers, each copy counted at its source packet's
    /// [`crate::peer::MediaPacket::wire_len`].
    pub rtp_bytes_forwarded: AtomicU64,
    /// `forward_drops` by reason, indexed by [`ForwardDrop::index`].
    pub forward_drops_by_reason: [AtomicU64; ForwardDrop::COUNT],
    /// NACKs from subscribers that named packets this server sent them (each NACK may name
    /// several: those are `retransmitted` plus `retransmit_misses`).
    pub nacks_received: AtomicU64,
    /// Keyframe requests (PLI or FIR) from subscribers. `keyframe_requests` counts those
    /// passed on to publishers, after the per-layer throttle.
    pub keyframe_requests_received: AtomicU64,
    /// Peers whose ICE and DTLS came up and that have not failed; the others of `peers`
    /// are connecting or failed.
    pub peers_connected: AtomicU64,
    /// Peers that failed or closed and whose participant is not removed yet.
    pub peers_failed: AtomicU64,
    /// Nanoseconds the worker spent handling datagrams, commands and timers rather than
    /// waiting for them: its rate is the worker's busy share of one core.
    pub busy_nanos: AtomicU64,
    /// Video subscriptions the last allocation pass paused because not even their lowest
    /// layer fit the downlink estimate.
    pub paused_low_bandwidth: AtomicU64,
    /// Video subscriptions the last allocation pass paused because the subscriber does not
    /// show them.
    pub paused_not_visible: AtomicU64,
    /// Connected subscribers with a downlink estimate (transport-cc feedback), as of the
    /// last allocation pass.
    pub subscribers_estimated: AtomicU64,
    /// Of those, the ones whose estimate binds (cut for congestion recently).
    pub subscribers_congested: AtomicU64,
    /// The sum of those subscribers' downlink estimates, in bits per second.
    pub downlink_estimate_bps: AtomicU64,
    /// Audio packets whose audio-level element was not a level (not one byte); the packet
    /// is forwarded, the level is not counted.
    pub audio_levels_invalid: AtomicU64,
    /// Probes started: padding sent to learn whether a subscriber's link carries a paused
    /// video (see [`crate::probe`]).
    pub probes: AtomicU64,
    /// The padding-only packets those probes sent.
    pub padding_packets: AtomicU64,
    /// Datagrams and media passed between this worker and the others (see
    /// [`crate::handoff`]).
    pub handoff: HandoffStats,
}

impl WorkerStats {
    /// The counters of all `workers` added up (gauges too: the server's totals).
    pub fn sum<'a>(workers: impl IntoIterator<Item = &'a WorkerStats>) -> WorkerStats {
        let total = WorkerStats::default();
        let add = |to: &AtomicU64, from: &AtomicU64| {
            to.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
        };
        for w in workers {
            // Destructured, so that a new counter cannot be left out of the sum.
            let WorkerStats {
                peers,
                tracks,
                subscriptions,
                datagrams_in,
                datagrams_out,
                rtp_in,
                rtp_forwarded,
                forward_drops,
                unrouted,
                send_drops,
                keyframe_requests,
                retransmitted,
                retransmit_misses,
                unknown_layer,
                layer_switches,
                notice_drops,
                rtp_bytes_in,
                rtp_bytes_forwarded,
                forward_drops_by_reason,
                nacks_received,
                keyframe_requests_received,
                peers_connected,
                peers_failed,
                busy_nanos,
                paused_low_bandwidth,
                paused_not_visible,
                subscribers_estimated,
                subscribers_congested,
                downlink_estimate_bps,
                audio_levels_invalid,
                probes,
                padding_packets,
                handoff,
            } = w;
            add(&total.peers, peers);
            add(&total.tracks, tracks);
            add(&total.subscriptions, subscriptions);
            add(&total.datagrams_in, datagrams_in);
            add(&total.datagrams_out, datagrams_out);
            add(&total.rtp_in, rtp_in);
            add(&total.rtp_forwarded, rtp_forwarded);
            add(&total.forward_drops, forward_drops);
            add(&total.unrouted, unrouted);
            add(&total.send_drops, send_drops);
            add(&total.keyframe_requests, keyframe_requests);
            add(&total.retransmitted, retransmitted);
            add(&total.retransmit_misses, retransmit_misses);
            add(&total.unknown_layer, unknown_layer);
            add(&total.layer_switches, layer_switches);
            add(&total.notice_drops, notice_drops);
            add(&total.rtp_bytes_in, rtp_bytes_in);
            add(&total.rtp_bytes_forwarded, rtp_bytes_forwarded);
            for (to, from) in total
                .forward_drops_by_reason
                .iter()
                .zip(forward_drops_by_reason)
            {
                add(to, from);
            }
            add(&total.nacks_received, nacks_received);
            add(
                &total.keyframe_requests_received,
                keyframe_requests_received,
            );
            add(&total.peers_connected, peers_connected);
            add(&total.peers_failed, peers_failed);
            add(&total.busy_nanos, busy_nanos);
            add(&total.paused_low_bandwidth, paused_low_bandwidth);
            add(&total.paused_not_visible, paused_not_visible);
            add(&total.subscribers_estimated, subscribers_estimated);
            add(&total.subscribers_congested, subscribers_congested);
            add(&total.downlink_estimate_bps, downlink_estimate_bps);
            add(&total.audio_levels_invalid, audio_levels_invalid);
            add(&total.probes, probes);
            add(&total.padding_packets, padding_packets);
            add(&total.handoff.sent, &handoff.sent);
            add(&total.handoff.dropped, &handoff.dropped);
            add(&total.handoff.received, &handoff.received);
            add(&total.handoff.relayed, &handoff.relayed);
            add(&total.handoff.relay_dropped, &handoff.relay_dropped);
            add(&total.handoff.relayed_in, &handoff.relayed_in);
            add(&total.handoff.mirrors, &handoff.mirrors);
        }
        total
    }
}
