//! Connectivity checks that reach a subscriber peer before its answer: held, then handed
//! to webrtc-rs once the answer is applied.
//!
//! The server offers on the subscriber leg, and a browser starts its checks as soon as it
//! has the offer, before its answer (with its ICE credentials) is back. webrtc-rs refuses
//! a binding request while it lacks the remote credentials ("password is empty"), so those
//! first checks fail and the browser's UDP checks go into retransmission backoff. Its
//! ICE-TCP checks, made on a fresh connection after the answer, then often succeed first,
//! and Chromium nominates the TCP pair; when UDP succeeds later, Chromium moves to it, but
//! webrtc-rs keeps the first nomination of an ICE-lite agent and, hearing nothing more on
//! that pair, fails the peer 8 s later. Answering the held UDP checks the moment the
//! answer is applied lets UDP win the race, as it does on the publisher leg.

use std::collections::VecDeque;
use std::net::SocketAddr;

use bytes::BytesMut;

/// The early checks held per peer: a browser sends a few per candidate pair in the
/// hundred milliseconds or so an answer takes. When full, the oldest is dropped: a newer
/// check of the same pair does the same job.
const EARLY_CHECKS: usize = 8;

/// The UDP STUN datagrams a subscriber peer received before its first answer.
#[derive(Debug, Default)]
pub(super) struct EarlyChecks {
    /// `None` once the answer came (or for a publisher peer, which answers at once).
    held: Option<VecDeque<(SocketAddr, BytesMut)>>,
}

impl EarlyChecks {
    /// Holding until an answer comes.
    pub(super) fn waiting() -> Self {
        Self {
            held: Some(VecDeque::new()),
        }
    }

    /// Keeps `datagram` if it is a STUN message over UDP that came before the answer;
    /// otherwise hands it back.
    pub(super) fn hold(
        &mut self,
        from: SocketAddr,
        tcp: bool,
        datagram: BytesMut,
    ) -> Option<BytesMut> {
        let Some(held) = self.held.as_mut() else {
            return Some(datagram);
        };
        // RFC 7983: a first byte of 0 to 3 is STUN.
        if tcp || datagram.first().is_none_or(|b| *b > 3) {
            return Some(datagram);
        }
        if held.len() == EARLY_CHECKS {
            held.pop_front();
        }
        held.push_back((from, datagram));
        None
    }

    /// The answer came: what was held, oldest first; nothing is held from now on.
    pub(super) fn release(&mut self) -> VecDeque<(SocketAddr, BytesMut)> {
        self.held.take().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:5000".parse().expect("an address")
    }

    #[test]
    fn udp_stun_is_held_until_the_answer_and_everything_else_passes() {
        let mut checks = EarlyChecks::waiting();
        let stun = BytesMut::from(&[0x00u8, 0x01, 0, 0][..]);
        let dtls = BytesMut::from(&[22u8, 0xfe, 0xfd][..]);
        assert!(checks.hold(addr(), false, stun.clone()).is_none());
        assert!(checks.hold(addr(), true, stun.clone()).is_some(), "ICE-TCP");
        assert!(checks.hold(addr(), false, dtls).is_some());
        for _ in 0..20 {
            checks.hold(addr(), false, stun.clone());
        }
        assert_eq!(checks.release().len(), EARLY_CHECKS);
        assert!(
            checks.hold(addr(), false, stun).is_some(),
            "after the answer"
        );
        assert!(checks.release().is_empty());
    }

    #[test]
    fn a_publisher_peer_holds_nothing() {
        let mut checks = EarlyChecks::default();
        let stun = BytesMut::from(&[0x00u8, 0x01][..]);
        assert!(checks.hold(addr(), false, stun).is_some());
    }
}
