//! The load generator's command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::media::MediaShape;

/// Drives simulated participants against a Chorus server (and optionally against a minimal
/// forwarder, the baseline) and reports forwarding rate, loss, latency, CPU and memory.
#[derive(Debug, Clone, Parser)]
#[command(name = "chorus-loadtest", version)]
pub struct Options {
    /// A running server to load (`http://127.0.0.1:PORT`). Without it, a server is started.
    #[arg(long)]
    pub url: Option<String>,
    /// The `chorus` binary to start (default: `$CHORUS_BIN`, else next to this program,
    /// else target/release/chorus, else target/debug/chorus).
    #[arg(long, conflicts_with = "url")]
    pub server: Option<PathBuf>,
    /// Process id of the server given by --url, for CPU and memory (default: the process
    /// listening on its port).
    #[arg(long, requires = "url")]
    pub server_pid: Option<u32>,
    /// Rooms.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Publishers per room: each sends audio and video (and receives the others).
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Subscribers per room: each only receives.
    #[arg(long, default_value_t = 10)]
    pub subscribers: usize,
    /// Measured seconds (after warm-up).
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Seconds of traffic before measuring.
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// Video bit rate per publisher, Mbit/s (RTP payload).
    #[arg(long, default_value_t = 2.5)]
    pub bitrate: f64,
    /// Video RTP payload bytes per packet.
    #[arg(long, default_value_t = 1100)]
    pub packet_size: usize,
    /// Video frames per second (each frame is sent as one burst).
    #[arg(long, default_value_t = 30)]
    pub fps: u32,
    /// Send no audio (by default each publisher also sends Opus-shaped audio at 50 packets/s).
    #[arg(long)]
    pub no_audio: bool,
    /// Publishers send their audio as Opus RED (RFC 2198, payload type 63): each packet
    /// carries the previous frame and its own, twice the bytes. Subscribers negotiate no
    /// RED, so the server cuts every copy to its primary block (publishers that receive
    /// take RED as it came). The baseline sends plain audio packets of the RED size.
    #[arg(long)]
    pub red: bool,
    /// Also run the baseline forwarder with the same load, and report both side by side.
    #[arg(long)]
    pub baseline: bool,
    /// Run only the baseline forwarder.
    #[arg(long, conflicts_with_all = ["baseline", "url", "server"])]
    pub baseline_only: bool,
    /// Also measure the simulated browsers' own latency: one peer connection sending the same
    /// video straight to another, no server (what the Chorus latency contains besides it).
    #[arg(long)]
    pub calibrate: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Participants joining at once.
    #[arg(long, default_value_t = 8)]
    pub join_concurrency: usize,
    /// Run the forwarder (the Chorus server process, or the baseline thread) on this CPU only,
    /// and the load generator on the other CPUs, so that they do not compete for a core.
    #[arg(long)]
    pub pin_forwarder: Option<usize>,
    /// The started server's media workers (`media.workers`): 1 by default, so that one
    /// worker's figures compare with the baseline's one thread; 0 is one per core. With
    /// more than one, rooms spread over the workers and --pin-forwarder pins them all to
    /// one CPU, which measures nothing useful: leave it out.
    #[arg(long, default_value_t = 1, conflicts_with = "url")]
    pub workers: usize,
    /// The started server's `media.spread_room_after`: 0 by default (each room on one
    /// worker); 1 spreads every room evenly over the workers from its second participant,
    /// so that each packet crosses to the other workers once (what a room spread over
    /// workers costs against one that is not).
    #[arg(long, default_value_t = 0, conflicts_with = "url")]
    pub spread_room_after: usize,
    /// Start a cluster of this many Chorus nodes (and a `redis-server` for them) instead of
    /// one server; every participant enters through the first node and follows its
    /// redirects. CPU, memory and counters are the sums over the nodes. 0: one server.
    #[arg(long, default_value_t = 0, conflicts_with = "url")]
    pub cluster: usize,
    /// --cluster: the nodes' `cluster.max_participants_per_node`: a room past it spans
    /// nodes (0: every room on one node).
    #[arg(long, default_value_t = 0, requires = "cluster")]
    pub max_per_node: usize,
    /// Seconds to wait after sending stops, for packets still in flight.
    #[arg(long, default_value_t = 1.0)]
    pub drain: f64,
    /// Publish video as simulcast: three layers (rids q, h, f: 320x180, 640x360, 1280x720 in
    /// their VP8 key frames) sharing --bitrate 6 / 20 / 74 %, each cut into packets of at most
    /// --packet-size. The k-th subscriber of a room shows every video in a tile the size of
    /// layer k mod 3 (trackSettings), publishers show each other at the top layer's size; the
    /// server's own allocation (downlink estimate, dynacast) decides what is forwarded.
    /// The report adds forwarded packets/s and Mbit/s per layer, and each video
    /// subscription is accounted against the layer it received most of. Not with the
    /// baseline or --calibrate, which forward every packet of every layer.
    #[arg(long, conflicts_with_all = ["baseline", "baseline_only", "calibrate"])]
    pub simulcast: bool,
    /// The SFUs to load, one after the other in this order: `chorus`, `janus` (Janus's
    /// VideoRoom, see --janus-url), or both (`chorus,janus` or `janus,chorus`; alternate the
    /// order between invocations).
    #[arg(long, value_delimiter = ',', default_value = "chorus")]
    pub target: Vec<Target>,
    /// Janus's HTTP API (`--target janus`). Unless --janus-pid is given, Janus is started
    /// here with the config in --janus-config, listening on this address.
    #[arg(long, default_value = "http://127.0.0.1:8088/janus")]
    pub janus_url: String,
    /// The `janus` binary (default: `$JANUS_BIN`, else `janus` on the PATH).
    #[arg(long)]
    pub janus_bin: Option<PathBuf>,
    /// The Janus config folder (default: benches/janus in this repo).
    #[arg(long)]
    pub janus_config: Option<PathBuf>,
    /// Use the Janus already running at --janus-url with this pid instead of starting one.
    #[arg(long)]
    pub janus_pid: Option<u32>,
    /// Light receivers (Chorus only): subscribers connect as full simulated browsers
    /// (signaling, ICE, DTLS), then one thread of this process takes over their sockets,
    /// receives with recvmmsg and only counts and sequence-checks the SRTP headers; 1 in
    /// --light-sample packets goes on to the browser stack, which decrypts it, for latency.
    /// Publishers stay full simulated browsers. See benches/src/light.rs.
    #[arg(long, conflicts_with_all = ["baseline_only", "simulcast", "calibrate"])]
    pub light: bool,
    /// --light: one in this many RTP packets of each receiver is decrypted for latency.
    #[arg(long, default_value_t = 64)]
    pub light_sample: u64,
    /// Raise the load step by step: step k runs k x --rooms rooms (a fresh server each
    /// step), until loss passes --ramp-loss % or the server latency p99 passes --ramp-p99
    /// ms, and report the last good step (forwarded packets/s at saturation).
    #[arg(long)]
    pub ramp: bool,
    /// --ramp: the most steps.
    #[arg(long, default_value_t = 40)]
    pub ramp_steps: usize,
    /// --ramp: the first step's multiple of --rooms.
    #[arg(long, default_value_t = 1)]
    pub ramp_start: usize,
    /// --ramp: the loss bound, %.
    #[arg(long, default_value_t = 0.1)]
    pub ramp_loss: f64,
    /// --ramp: the latency bound, server latency (wire) p99, ms.
    #[arg(long, default_value_t = 20.0)]
    pub ramp_p99: f64,
}

/// An SFU the load generator can load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    Chorus,
    Janus,
}

impl Options {
    /// The options with every default, for tests and library callers.
    pub fn defaults() -> Self {
        Self::parse_from(["chorus-loadtest"])
    }

    pub fn shape(&self) -> MediaShape {
        MediaShape {
            video_bitrate: (self.bitrate * 1e6) as u64,
            video_packet_bytes: self.packet_size,
            fps: self.fps,
            audio: !self.no_audio,
            simulcast: self.simulcast,
            red: self.red && !self.no_audio,
            ..MediaShape::default()
        }
    }

    pub fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup.max(0.0))
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration.max(0.1))
    }

    pub fn drain(&self) -> Duration {
        Duration::from_secs_f64(self.drain.max(0.0))
    }

    /// The CPUs the load generator may use when the forwarder is pinned.
    pub fn generator_cpus(&self) -> Option<Vec<usize>> {
        let pinned = self.pin_forwarder?;
        let all = crate::procfs::cores().max(2);
        Some((0..all).filter(|c| *c != pinned).collect())
    }

    pub fn roster(&self) -> Roster {
        Roster {
            rooms: self.rooms,
            publishers: self.publishers,
            subscribers: self.subscribers,
        }
    }
}

/// Who is in which room. Participants are numbered across rooms: room `r` holds
/// `r * per_room .. (r + 1) * per_room`, publishers first. Publishers are numbered across
/// rooms too: publisher `p` of room `r` is `r * publishers + p`.
#[derive(Debug, Clone, Copy)]
pub struct Roster {
    pub rooms: usize,
    pub publishers: usize,
    pub subscribers: usize,
}

impl Roster {
    pub fn per_room(&self) -> usize {
        self.publishers + self.subscribers
    }

    pub fn participants(&self) -> usize {
        self.rooms * self.per_room()
    }

    pub fn publishers_total(&self) -> usize {
        self.rooms * self.publishers
    }

    /// (room, index in room) of a participant.
    pub fn locate(&self, participant: usize) -> (usize, usize) {
        (
            participant / self.per_room().max(1),
            participant % self.per_room().max(1),
        )
    }

    /// The global publisher number of a participant, if it publishes.
    pub fn publisher_of(&self, participant: usize) -> Option<u32> {
        let (room, i) = self.locate(participant);
        (i < self.publishers).then_some((room * self.publishers + i) as u32)
    }

    /// The participant number of a global publisher.
    pub fn participant_of_publisher(&self, publisher: u32) -> usize {
        let publisher = publisher as usize;
        let room = publisher / self.publishers.max(1);
        room * self.per_room() + publisher % self.publishers.max(1)
    }

    /// The publishers whose media `participant` receives (everyone else's in its room).
    pub fn sources_of(&self, participant: usize) -> Vec<u32> {
        let (room, i) = self.locate(participant);
        (0..self.publishers)
            .filter(|p| *p != i)
            .map(|p| (room * self.publishers + p) as u32)
            .collect()
    }

    /// Whether a participant receives anything.
    pub fn receives(&self, participant: usize) -> bool {
        !self.sources_of(participant).is_empty()
    }

    /// `--simulcast`: the layer whose size `participant` shows every video at (its tile),
    /// `None` if it receives nothing. Subscribers cycle through the layers, so that all three
    /// are wanted; publishers show each other at the top layer's size.
    pub fn tile_layer(&self, participant: usize) -> Option<usize> {
        if !self.receives(participant) {
            return None;
        }
        let (_, i) = self.locate(participant);
        Some(match i.checked_sub(self.publishers) {
            Some(subscriber) => subscriber % crate::stats::LAYERS,
            None => crate::stats::LAYERS - 1,
        })
    }

    /// Receivers of each publisher's media.
    pub fn receivers_per_publisher(&self) -> usize {
        (self.per_room()).saturating_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roster_numbers_participants_and_publishers() {
        let r = Roster {
            rooms: 2,
            publishers: 2,
            subscribers: 3,
        };
        assert_eq!(r.participants(), 10);
        assert_eq!(r.locate(7), (1, 2));
        assert_eq!(r.publisher_of(5), Some(2));
        assert_eq!(r.publisher_of(7), None);
        assert_eq!(r.participant_of_publisher(3), 6);
        assert_eq!(r.sources_of(5), vec![3]);
        assert_eq!(r.sources_of(7), vec![2, 3]);
        assert_eq!(r.receivers_per_publisher(), 4);
        assert_eq!(r.tile_layer(0), Some(2));
        assert_eq!(r.tile_layer(2), Some(0));
        assert_eq!(r.tile_layer(4), Some(2));
        assert_eq!(r.tile_layer(7), Some(0));
    }

    #[test]
    fn defaults_parse() {
        let o = Options::defaults();
        assert_eq!(o.subscribers, 10);
        assert_eq!(o.shape().video_bitrate, 2_500_000);
    }
}
