//! The worker's side of recording (see [`crate::record`]): a recorded track has a
//! [`RecordTap`], a subscription that is not a peer. It takes the highest layer the
//! publisher sends, switching only on keyframes (the same [`LayerSwitch`] as
//! subscriptions), and hands each packet it takes to the recording's queue without
//! waiting.
//!
//! Cost: a track that is not recorded pays one `Option` test per packet. A recorded
//! packet costs a [`RecordPacket`] of a few header fields and a reference to the payload
//! buffer (a reference count, no copy, no allocation: the queue's slots were allocated when
//! the recording started), moved into the queue with a `try_send`.

use std::time::Instant;

use chorus_protocol::TrackId;

use super::Worker;
use crate::layer::{Forward, LayerSwitch};
use crate::peer::{MediaPacket, SourceCodec};
use crate::record::{self, RecordPacket, RecordSink};

/// One recorded track's tap.
pub(super) struct RecordTap {
    sink: RecordSink,
    switch: LayerSwitch,
}

impl RecordTap {
    /// The highest layer the tap wants (for dynacast), `None` before the first pass.
    pub(super) fn target(&self) -> Option<u8> {
        self.switch.target()
    }

    /// Stops taking packets at once (a room admin muted the track).
    pub(super) fn silence(&mut self) {
        self.switch.set_target(None);
    }

    /// Takes one packet of the track if it belongs to the layer being recorded.
    pub(super) fn on_packet(
        &mut self,
        layer: u8,
        keyframe: bool,
        packet: &MediaPacket,
        now: Instant,
    ) {
        let forward = self.switch.on_packet(layer, keyframe);
        if forward == Forward::Drop {
            return;
        }
        self.sink.push(RecordPacket {
            ssrc: packet.ssrc(),
            sequence: packet.sequence_number(),
            timestamp: packet.timestamp(),
            marker: packet.marker(),
            payload_type: packet.payload_type(),
            switched: forward == Forward::SwitchAndSend,
            payload: packet.payload_bytes(),
            arrival: now,
        });
    }
}

/// What a track with this negotiated codec is recorded as.
fn codec_of(codec: Option<&SourceCodec>) -> Result<record::TrackCodec, String> {
    match codec {
        Some(codec) => record::codec_of(codec.mime_type(), codec.red_payload_type()),
        None => Err("unknown".into()),
    }
}

impl Worker {
    /// Starts (`Some`) or stops (`None`) recording a track. An unknown track is ignored:
    /// the room syncs its recorded tracks after every change.
    pub(super) fn set_recording(&mut self, track: TrackId, sink: Option<RecordSink>, now: Instant) {
        // a mirror's packets are recorded where the track is published
        let Some(route) = self
            .tracks
            .get_mut(&track)
            .filter(|r| !r.is_mirror(self.index))
        else {
            return;
        };
        match sink {
            Some(sink) => {
                let codec = codec_of(route.codec.as_ref());
                let recordable = codec.is_ok();
                sink.begin(codec);
                // A codec that is not recorded gets no tap: it costs nothing.
                route.record = recordable.then(|| RecordTap {
                    sink,
                    switch: LayerSwitch::new(),
                });
                // the tap's layer is chosen (and its keyframe asked for) at once
                self.next_allocation = now;
            }
            None => route.record = None,
        }
    }

    /// Part of the allocation pass: each tap targets the highest layer the publisher
    /// sends (below the first absent one), none while a room admin mutes the track, and a
    /// keyframe is asked for where the tap waits for one or its writer lost a frame.
    pub(super) fn recording_pass(&mut self, now: Instant, keyframes: &mut Vec<(TrackId, u8)>) {
        for (track, route) in &mut self.tracks {
            let Some(tap) = route.record.as_mut() else {
                continue;
            };
            let offered = route.layers.costs(now).len();
            let top = u8::try_from(offered.saturating_sub(1)).unwrap_or(0);
            // A track a room admin muted is not recorded while muted (nor is its top
            // layer kept on for the recording); it resumes on a keyframe.
            tap.switch.set_target((!route.silenced).then_some(top));
            let wanted = tap.sink.take_keyframe_wanted();
            if let Some(layer) = tap.switch.needs_keyframe() {
                keyframes.push((*track, layer));
            } else if wanted && let Some(layer) = tap.switch.current() {
                keyframes.push((*track, layer));
            }
        }
    }
}
