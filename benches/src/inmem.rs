//! Real `chorus_sfu::peer::Peer`s driven in memory, for the fan-out micro-benchmark.
//!
//! A [`Rig`] holds one server publisher `Peer` and N server subscriber `Peer`s, each
//! connected (ICE-lite, DTLS, SRTP) to a client peer (sans-IO `rtc`) by handing datagrams
//! across in memory, with made-up loopback addresses and no socket. [`Rig::forward`] then
//! does what the media worker does for one received datagram (minus the socket calls and the
//! worker's own table look-ups): `handle_datagram` on the publisher, `poll_events`,
//! `poll_media` with `forward` to every subscription, and `poll_transmit` on every peer.
//!
//! [`Parts`] is the same fan-out built from its parts, with no `Peer`: SRTP-unprotect once,
//! then per subscription `HeaderRewrite::apply` (clone + rewrite) + marshal + SRTP-protect.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::{Bytes, BytesMut};
use chorus_protocol::{IceCandidate, PeerRole, TrackId};
use chorus_sfu::PeerSettings;
use chorus_sfu::history::History;
use chorus_sfu::peer::{HeaderRewrite, MediaPacket, Peer, PeerEvent};
use chorus_tests::socket::rtp_header;
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp::header::Header;
use rtc::rtp::packet::Packet;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::marshal::{Marshal, Unmarshal};
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;

/// The server's (made-up) media address.
const SERVER: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1)),
    50_000,
);
const VP8_PT: u8 = 96;
const OPUS_PT: u8 = 111;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

fn client_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 2], 40_000 + i as u16))
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{e}")
}

/// A client peer (what a browser would be), sans-IO.
fn client_pc(addr: SocketAddr) -> Result<RTCPeerConnection> {
    let mut engine = MediaEngine::default();
    engine
        .register_codec(
            RTCRtpCodecParameters {
                rtp_codec: chorus_tests::peer::opus_codec(),
                payload_type: OPUS_PT,
            },
            RtpCodecKind::Audio,
        )
        .map_err(err)?;
    engine
        .register_codec(
            RTCRtpCodecParameters {
                rtp_codec: chorus_tests::peer::vp8_codec(),
                payload_type: VP8_PT,
            },
            RtpCodecKind::Video,
        )
        .map_err(err)?;
    let registry = register_default_interceptors(Registry::new(), &mut engine).map_err(err)?;
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(engine)
        .with_setting_engine(SettingEngineBuilder::new().build())
        .with_interceptor_registry(registry)
        .build(Instant::now())
        .map_err(err)?;
    pc.add_local_candidate(host_candidate(addr)?).map_err(err)?;
    Ok(pc)
}

/// A UDP host candidate at `addr`, as webrtc-rs takes it.
fn host_candidate(addr: SocketAddr) -> Result<RTCIceCandidateInit> {
    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: addr.ip().to_string(),
            port: addr.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()
    .map_err(err)?;
    RTCIceCandidate::from(&candidate).to_json().map_err(err)
}

fn candidate_of(addr: SocketAddr) -> Result<IceCandidate> {
    let init = host_candidate(addr)?;
    Ok(IceCandidate {
        candidate: init.candidate,
        sdp_mid: Some("0".to_owned()),
        sdp_m_line_index: Some(0),
    })
}

fn new_server_peer(role: PeerRole) -> Result<Peer> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let settings = PeerSettings {
        candidates: vec![SERVER],
        tcp_candidates: Vec::new(),
        srtp_profiles: vec!["aead_aes_128_gcm".to_owned()],
        audio: Default::default(),
    };
    Peer::new(
        &settings,
        role,
        &format!("benchufrag{n:06}"),
        &format!("benchpassword{n:019}"),
        Instant::now(),
    )
    .map_err(err)
}

/// One side of a client ↔ server pair in the rig.
struct Pair {
    server: Peer,
    client: RTCPeerConnection,
    addr: SocketAddr,
    server_connected: bool,
    client_connected: bool,
}

impl Pair {
    /// Moves datagrams both ways and lets timers run; returns whether anything moved.
    fn step(&mut self, events: &mut Vec<PeerEvent>) -> bool {
        let now = Instant::now();
        let mut moved = false;
        while let Some(msg) = self.client.poll_write() {
            moved = true;
            if msg.transport.peer_addr == SERVER {
                self.server
                    .handle_datagram(self.addr, false, msg.message, now);
            }
        }
        let mut out: Vec<(SocketAddr, BytesMut)> = Vec::new();
        self.server.poll_transmit(|to, _, d| out.push((to, d)));
        for (to, d) in out {
            moved = true;
            if to == self.addr {
                let _ = self.client.handle_read(TaggedBytesMut {
                    now,
                    transport: TransportContext {
                        local_addr: self.addr,
                        peer_addr: SERVER,
                        ecn: None,
                        transport_protocol: TransportProtocol::UDP,
                    },
                    message: d,
                });
            }
        }
        self.server.poll_events(events);
        self.server.poll_media(|_, _, _| {}, events);
        for e in events.drain(..) {
            if matches!(e, PeerEvent::Connected) {
                self.server_connected = true;
            }
        }
        while let Some(event) = self.client.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
                RTCPeerConnectionState::Connected,
            ) = event
            {
                self.client_connected = true;
            }
        }
        while self.client.poll_read().is_some() {}
        if self.client.poll_timeout().is_some_and(|t| t <= now) {
            let _ = self.client.handle_timeout(now);
        }
        self.server.refresh_timeout();
        if self.server.next_timeout().is_some_and(|t| t <= now) {
            self.server.handle_timeout(now);
        }
        moved
    }

    fn connect(&mut self) -> Result<()> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let mut events = Vec::new();
        while !(self.server_connected && self.client_connected) {
            if Instant::now() > deadline {
                bail!(
                    "in-memory peers did not connect (server {}, client {})",
                    self.server_connected,
                    self.client_connected
                );
            }
            if !self.step(&mut events) {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        Ok(())
    }
}

/// One publisher and N subscribers on real server `Peer`s, connected in memory.
pub struct Rig {
    publisher: Pair,
    sender: RTCRtpSenderId,
    subscribers: Vec<Pair>,
    ssrc: u32,
    seq: u16,
    ts: u32,
    events: Vec<PeerEvent>,
    /// The track's NACK history, which the worker moves every forwarded packet into.
    history: History<MediaPacket>,
}

impl Rig {
    /// Connects a publisher (one VP8 track) and `subscribers` subscriptions of it.
    pub fn new(subscribers: usize) -> Result<Self> {
        let track = TrackId(1);
        let ssrc = 0x1234_5678;
        let now = Instant::now();
        let mut client = client_pc(client_addr(0))?;
        let media = MediaStreamTrack::new(
            "bench-stream".to_owned(),
            "bench-video".to_owned(),
            "bench video".to_owned(),
            RtpCodecKind::Video,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: chorus_tests::peer::vp8_codec(),
                ..Default::default()
            }],
        );
        let transceiver = client
            .add_transceiver_from_track(
                media,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    streams: vec!["bench-stream".to_owned()],
                    send_encodings: vec![],
                }),
            )
            .map_err(err)?;
        let sender = RTCRtpSenderId::from(transceiver);
        let offer = client.create_offer(None).map_err(err)?;
        client
            .set_local_description(now, offer.clone())
            .map_err(err)?;
        let mut server = new_server_peer(PeerRole::Publisher)?;
        let (answer, offered) = server.apply_offer(offer.sdp, now).map_err(err)?;
        let mid = offered
            .first()
            .map(|o| o.mid.clone())
            .ok_or_else(|| anyhow!("the offer carried no m-line"))?;
        server.bind_inbound(&mid, track, false);
        let codec = server
            .source_codec(&mid)
            .ok_or_else(|| anyhow!("no source codec"))?;
        server
            .add_remote_candidate(candidate_of(client_addr(0))?)
            .map_err(err)?;
        client
            .set_remote_description(now, RTCSessionDescription::answer(answer).map_err(err)?)
            .map_err(err)?;
        let mut publisher = Pair {
            server,
            client,
            addr: client_addr(0),
            server_connected: false,
            client_connected: false,
        };
        publisher.connect().context("publisher")?;

        let mut subs = Vec::with_capacity(subscribers);
        for i in 1..=subscribers {
            let addr = client_addr(i);
            let mut server = new_server_peer(PeerRole::Subscriber)?;
            server
                .add_outbound(track, codec.clone(), 0x5000_0000 + i as u32)
                .map_err(err)?;
            let (offer, _) = server.create_offer(now).map_err(err)?;
            let mut client = client_pc(addr)?;
            client
                .set_remote_description(now, RTCSessionDescription::offer(offer).map_err(err)?)
                .map_err(err)?;
            let answer = client.create_answer(None).map_err(err)?;
            client
                .set_local_description(now, answer.clone())
                .map_err(err)?;
            server.apply_answer(answer.sdp, now).map_err(err)?;
            server
                .add_remote_candidate(candidate_of(addr)?)
                .map_err(err)?;
            let mut pair = Pair {
                server,
                client,
                addr,
                server_connected: false,
                client_connected: false,
            };
            pair.connect().with_context(|| format!("subscriber {i}"))?;
            subs.push(pair);
        }
        let mut rig = Self {
            publisher,
            sender,
            subscribers: subs,
            ssrc,
            seq: 1000,
            ts: 90_000,
            events: Vec::new(),
            history: History::default(),
        };
        // The first packets open the track on the server (OnTrack) and start the streams.
        let mut warm = rig.datagrams(20, 1100)?;
        let out = rig.forward_batch(&mut warm, Instant::now());
        if subscribers > 0 && out == 0 {
            bail!("the rig forwards nothing");
        }
        Ok(rig)
    }

    /// SRTP datagrams of `n` video packets with `payload` bytes each, as the client
    /// publisher sends them (in order; feed each exactly once). Like the worker's receive
    /// blocks, they are split off one buffer, so handing one over allocates nothing.
    pub fn datagrams(&mut self, n: usize, payload: usize) -> Result<Vec<BytesMut>> {
        let mut raw = Vec::with_capacity(n);
        let body = Bytes::from(vec![0x10u8; payload]);
        let pt = VP8_PT;
        for i in 0..n {
            let now = Instant::now();
            let packet = Packet {
                header: Header {
                    version: 2,
                    marker: i % 10 == 9,
                    payload_type: pt,
                    sequence_number: self.seq,
                    timestamp: self.ts,
                    ssrc: self.ssrc,
                    ..Default::default()
                },
                payload: body.clone(),
            };
            self.seq = self.seq.wrapping_add(1);
            if i % 10 == 9 {
                self.ts = self.ts.wrapping_add(3000);
            }
            self.publisher
                .client
                .rtp_sender(self.sender)
                .ok_or_else(|| anyhow!("no sender"))?
                .write_rtp(now, packet)
                .map_err(err)?;
            while let Some(msg) = self.publisher.client.poll_write() {
                if rtp_header(&msg.message).is_some() {
                    raw.push(msg.message);
                }
            }
        }
        Ok(split_off_one_block(&raw))
    }

    /// What the media worker does with one batch of datagrams from the publisher (one
    /// `recvmmsg` worth): for each, `handle_datagram`, `poll_events` and `poll_media` with
    /// `forward` to every subscription, then into the track's history; then, once per
    /// batch, `poll_transmit` and
    /// `refresh_timeout` on every touched peer. Returns how many datagrams went out.
    pub fn forward_batch(&mut self, batch: &mut [BytesMut], now: Instant) -> usize {
        let publisher = &mut self.publisher.server;
        for datagram in batch {
            publisher.handle_datagram(self.publisher.addr, false, std::mem::take(datagram), now);
            publisher.poll_events(&mut self.events);
            let subscribers = &mut self.subscribers;
            let history = &mut self.history;
            publisher.poll_media(
                |track, _layer, packet| {
                    for sub in subscribers.iter_mut() {
                        let _ = sub.server.forward(track, &packet, now);
                    }
                    history.store(packet.ssrc(), packet.sequence_number(), packet);
                },
                &mut self.events,
            );
            self.events.clear();
        }
        let mut sent = 0;
        for sub in &mut self.subscribers {
            sub.server.poll_transmit(|_, _, d| {
                std::hint::black_box(d);
                sent += 1;
            });
            sub.server.refresh_timeout();
        }
        publisher.poll_transmit(|_, _, d| {
            std::hint::black_box(d);
        });
        publisher.refresh_timeout();
        sent
    }

    /// Lets every subscriber's timers run and collects all its peer connection still holds,
    /// as the worker does after a timer; returns how many of those datagrams are RTP.
    pub fn drain_subscribers(&mut self, now: Instant) -> usize {
        let mut rtp = 0;
        for sub in &mut self.subscribers {
            sub.server.handle_timeout(now);
            sub.server.poll_transmit(|_, _, d| {
                if rtp_header(&d).is_some() {
                    rtp += 1;
                }
            });
            sub.server.refresh_timeout();
        }
        rtp
    }
}

/// Copies datagrams into one buffer and splits them off it (no allocation per datagram).
fn split_off_one_block(datagrams: &[BytesMut]) -> Vec<BytesMut> {
    let mut block = BytesMut::with_capacity(datagrams.iter().map(|d| d.len()).sum());
    for d in datagrams {
        block.extend_from_slice(d);
    }
    datagrams.iter().map(|d| block.split_to(d.len())).collect()
}

fn srtp_context(seed: u8) -> Result<Context> {
    let profile = ProtectionProfile::AeadAes128Gcm;
    let provider = rtc::crypto::default_provider().map_err(err)?;
    let key: Vec<u8> = (0..profile.key_len()).map(|i| seed ^ i as u8).collect();
    let salt: Vec<u8> = (0..profile.salt_len())
        .map(|i| seed.wrapping_mul(3) ^ i as u8)
        .collect();
    Context::new(&key, &salt, profile, None, None, provider.crypto()).map_err(err)
}

/// The fan-out from its parts (no `Peer`): unprotect once, then per subscription clone,
/// rewrite, marshal, protect.
pub struct Parts {
    client: Context,
    inbound: Context,
    subscriptions: Vec<PartsSubscription>,
    seq: u16,
}

struct PartsSubscription {
    rewrite: HeaderRewrite,
    srtp: Context,
}

impl Parts {
    pub fn new(subscribers: usize) -> Result<Self> {
        let subscriptions = (0..subscribers)
            .map(|i| {
                let mut rewrite = HeaderRewrite::new(0x5000_0000 + i as u32);
                rewrite.pt.insert(VP8_PT, 98);
                Ok(PartsSubscription {
                    rewrite,
                    srtp: srtp_context(10 + i as u8)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            client: srtp_context(1)?,
            inbound: srtp_context(1)?,
            subscriptions,
            seq: 0,
        })
    }

    /// SRTP datagrams of `n` video packets with `payload` bytes each.
    pub fn datagrams(&mut self, n: usize, payload: usize) -> Result<Vec<Vec<u8>>> {
        let body = Bytes::from(vec![0x10u8; payload]);
        (0..n)
            .map(|_| {
                self.seq = self.seq.wrapping_add(1);
                let packet = Packet {
                    header: Header {
                        version: 2,
                        payload_type: VP8_PT,
                        sequence_number: self.seq,
                        timestamp: u32::from(self.seq) * 300,
                        ssrc: 0x1234_5678,
                        ..Default::default()
                    },
                    payload: body.clone(),
                };
                let raw = packet.marshal().map_err(err)?;
                Ok(self
                    .client
                    .encrypt_rtp_with_header(&raw, &packet.header)
                    .map_err(err)?
                    .to_vec())
            })
            .collect()
    }

    /// Unprotect one datagram and send it to every subscription; returns datagrams made.
    pub fn forward(&mut self, datagram: &[u8]) -> usize {
        let Ok(plain) = self.inbound.decrypt_rtp(datagram) else {
            return 0;
        };
        let Ok(src) = Packet::unmarshal(&mut &plain[..]) else {
            return 0;
        };
        let mut sent = 0;
        for sub in &mut self.subscriptions {
            let Ok(pkt) = sub.rewrite.apply(&src) else {
                continue;
            };
            let Ok(raw) = pkt.marshal() else { continue };
            if let Ok(protected) = sub.srtp.encrypt_rtp_with_header(&raw, &pkt.header) {
                std::hint::black_box(protected);
                sent += 1;
            }
        }
        sent
    }
}
