//! The wire path follows the browser's latest nomination.
//!
//! A browser (the controlling ICE agent) may nominate a second candidate pair after the
//! first: it connected over ICE-TCP while its UDP was blocked, then UDP came through and it
//! moved to its better UDP pair. webrtc-rs 0.21's ICE-lite agent keeps the first pair it
//! selected and takes consent only from STUN on that pair, so it would fail the peer a few
//! seconds after the move (`docs/glossary.md`, *Wire path*). Chorus owns its I/O, so it
//! follows the move itself: the agent goes on seeing its selected pair, while the datagrams
//! travel on the pair the browser nominated last.
//!
//! - A nomination (a binding request with USE-CANDIDATE) from another path is given to the
//!   agent as if it came over the selected pair. It becomes the wire path only when the
//!   agent answers it with a success, that is once its message integrity was checked: a
//!   forged nomination cannot steal the media.
//! - From then on, what arrives over the wire path is given to the agent as the selected
//!   pair's, and what the agent sends to the selected pair goes out on the wire path.
//! - A nomination of the selected pair itself moves the wire back to it.
//!
//! Sans-IO: addresses and transaction ids in, addresses out.

use std::net::SocketAddr;

use crate::stun::TransactionId;

/// One side of a candidate pair as the I/O sees it: the remote address, and whether it is
/// an ICE-TCP connection.
pub type Wire = (SocketAddr, bool);

#[derive(Debug, Default)]
pub struct PathFollower {
    /// The pair the ICE agent selected (its remote side), once known.
    selected: Option<Wire>,
    /// Where the datagrams of the selected pair travel instead, after a later nomination.
    moved: Option<Wire>,
    /// A nomination given to the agent and not answered yet: where it came from.
    pending: Option<(Wire, TransactionId)>,
}

impl PathFollower {
    /// Whether the agent's selected pair is still to be learnt.
    pub fn wants_selected(&self) -> bool {
        self.selected.is_none()
    }

    /// The agent selected this pair (it never selects another in webrtc-rs 0.21).
    pub fn set_selected(&mut self, selected: Wire) {
        self.selected = Some(selected);
    }

    /// Where the datagrams of the selected pair travel now.
    pub fn wire(&self) -> Option<Wire> {
        self.moved.or(self.selected)
    }

    /// A datagram arrived over `from`; `nomination` is its transaction when it is a binding
    /// request with USE-CANDIDATE. Returns the path to tell the ICE agent it came over.
    pub fn inbound(&mut self, from: Wire, nomination: Option<TransactionId>) -> Wire {
        let Some(selected) = self.selected else {
            return from;
        };
        if Some(from) == self.wire() {
            return selected;
        }
        if let Some(transaction) = nomination {
            self.pending = Some((from, transaction));
            return selected;
        }
        from
    }

    /// The agent sends a datagram to `to`; `response` is the transaction it answers and
    /// whether with a success, when it is a binding response. Returns where it goes.
    pub fn outbound(&mut self, to: Wire, response: Option<(TransactionId, bool)>) -> Wire {
        let Some(selected) = self.selected else {
            return to;
        };
        if to != selected {
            return to;
        }
        if let (Some((from, pending)), Some((transaction, success))) = (self.pending, response)
            && pending == transaction
        {
            self.pending = None;
            if success {
                self.moved = (from != selected).then_some(from);
            }
            return from;
        }
        self.moved.unwrap_or(selected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp() -> Wire {
        ("10.0.0.2:40001".parse().unwrap(), true)
    }

    fn udp() -> Wire {
        ("10.0.0.2:50123".parse().unwrap(), false)
    }

    const T1: TransactionId = [1; 12];
    const T2: TransactionId = [2; 12];

    #[test]
    fn nothing_changes_before_the_agent_selects_a_pair() {
        let mut path = PathFollower::default();
        assert_eq!(path.inbound(udp(), Some(T1)), udp());
        assert_eq!(path.outbound(udp(), Some((T1, true))), udp());
        assert_eq!(path.wire(), None);
    }

    #[test]
    fn a_checked_nomination_moves_the_wire_and_the_agent_keeps_its_pair() {
        let mut path = PathFollower::default();
        path.set_selected(tcp());
        assert_eq!(path.inbound(tcp(), None), tcp());
        // UDP comes through: plain checks on the new pair stay its own.
        assert_eq!(path.inbound(udp(), None), udp());
        assert_eq!(path.outbound(udp(), Some((T1, true))), udp());
        // The browser nominates it: the agent sees the nomination on its selected pair,
        // and its success goes back where the nomination came from.
        assert_eq!(path.inbound(udp(), Some(T2)), tcp());
        assert_eq!(
            path.wire(),
            Some(tcp()),
            "not moved before the agent's answer"
        );
        assert_eq!(path.outbound(tcp(), Some((T2, true))), udp());
        assert_eq!(path.wire(), Some(udp()));
        // Media both ways now travels over UDP, as the selected pair's.
        assert_eq!(path.inbound(udp(), None), tcp());
        assert_eq!(path.outbound(tcp(), None), udp());
        // Other destinations are left alone.
        let other = ("10.0.0.3:1".parse().unwrap(), false);
        assert_eq!(path.outbound(other, None), other);
    }

    #[test]
    fn a_nomination_the_agent_refuses_moves_nothing() {
        let mut path = PathFollower::default();
        path.set_selected(tcp());
        assert_eq!(path.inbound(udp(), Some(T1)), tcp());
        // Bad integrity: the agent answers with an error (or not at all).
        assert_eq!(path.outbound(tcp(), Some((T1, false))), udp());
        assert_eq!(path.wire(), Some(tcp()));
        assert_eq!(path.outbound(tcp(), None), tcp());
        assert_eq!(path.inbound(udp(), None), udp());
        // A response to another transaction does not move it either.
        path.inbound(udp(), Some(T1));
        assert_eq!(path.outbound(tcp(), Some((T2, true))), tcp());
        assert_eq!(path.wire(), Some(tcp()));
    }

    #[test]
    fn nominating_the_selected_pair_again_moves_the_wire_back() {
        let mut path = PathFollower::default();
        path.set_selected(tcp());
        path.inbound(udp(), Some(T1));
        path.outbound(tcp(), Some((T1, true)));
        assert_eq!(path.wire(), Some(udp()));
        // Stray datagrams on the old path still reach the agent as they are.
        assert_eq!(path.inbound(tcp(), None), tcp());
        assert_eq!(path.inbound(tcp(), Some(T2)), tcp());
        assert_eq!(path.outbound(tcp(), Some((T2, true))), tcp());
        assert_eq!(path.wire(), Some(tcp()));
        assert_eq!(path.outbound(tcp(), None), tcp());
    }
}
