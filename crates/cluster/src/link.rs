//! The node link's handshake, sans-IO: how two nodes of a cluster prove to each other that
//! they hold the cluster secret before a room's traffic crosses between them.
//!
//! A link is a WebSocket at [`LINK_PATH`] on the *owner* (the node that hosts a room),
//! opened by a *satellite* (a node that holds other participants of it). Text frames
//! carry [`LinkMessage`]s as JSON:
//!
//! 1. owner → satellite: [`LinkMessage::Challenge`], its id and a fresh nonce;
//! 2. satellite → owner: [`LinkMessage::Hello`], its id, its own nonce, and the proof
//!    HMAC-SHA256(secret, "satellite" ‖ both ids ‖ both nonces);
//! 3. owner → satellite: [`LinkMessage::Welcome`] with the owner's proof (the same MAC
//!    under "owner"), once it has checked the satellite's proof *and* that the satellite
//!    is a live node with a verified record. Either side that finds something wrong sends
//!    [`LinkMessage::Refused`] with a [`LinkRefusal`] and closes.
//!
//! Both nonces go into both proofs, so neither side can replay an answer recorded from
//! another link, and the role names keep one side's proof from being sent back as the
//! other's. Nothing here compares clocks.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Where a node takes links from other nodes.
pub const LINK_PATH: &str = "/cluster/link";

/// Nonce length, in characters of [`chorus_sfu::token::random_token`] (62 symbols each:
/// about 190 bits).
pub const NONCE_CHARS: usize = 32;

/// The longest text frame a handshake step may be: the messages are a few hundred bytes;
/// anything longer is not one of them.
pub const MAX_HANDSHAKE_FRAME: usize = 4096;

/// One message on a node link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum LinkMessage {
    /// The owner's first message: who it is, and the nonce the satellite must sign.
    Challenge { node: String, nonce: String },
    /// The satellite's answer: who it is, its own nonce, and its proof.
    Hello {
        node: String,
        nonce: String,
        proof: String,
    },
    /// The owner accepts, and proves that it holds the secret too.
    Welcome { proof: String },
    /// The link is refused; the sender closes it.
    Refused {
        reason: LinkRefusal,
        message: String,
    },
}

/// Why a link was refused: typed, so that both ends count and log the same reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "camelCase")]
pub enum LinkRefusal {
    /// A frame that is not the handshake step due, or not valid JSON for it.
    #[error("a message that is not the handshake step due")]
    Malformed,
    /// The other node has no live, verified record in Redis.
    #[error("the node is not a live node of this cluster")]
    UnknownNode,
    /// The proof does not match: the other node does not hold this cluster's secret.
    #[error("the proof does not match this cluster's secret")]
    BadProof,
    /// The owner could not check the satellite (its Redis did not answer).
    #[error("the cluster's Redis did not answer; try again shortly")]
    Unavailable,
    /// The other end is not the node that was meant (a satellite dialled one node and
    /// another answered), or a node dialled itself.
    #[error("the other end is not the node that was meant")]
    WrongNode,
    /// After the handshake: a frame that does not open under the link's keys (forged,
    /// altered, replayed, reordered or dropped on the way). The link is closed.
    #[error("a frame that does not open under the link's keys")]
    BadFrame,
}

impl LinkRefusal {
    /// Every reason, for counters that list all of them.
    pub const ALL: [LinkRefusal; 6] = [
        LinkRefusal::Malformed,
        LinkRefusal::UnknownNode,
        LinkRefusal::BadProof,
        LinkRefusal::Unavailable,
        LinkRefusal::WrongNode,
        LinkRefusal::BadFrame,
    ];

    /// The reason's name on the wire and in counters.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkRefusal::Malformed => "malformed",
            LinkRefusal::UnknownNode => "unknownNode",
            LinkRefusal::BadProof => "badProof",
            LinkRefusal::Unavailable => "unavailable",
            LinkRefusal::WrongNode => "wrongNode",
            LinkRefusal::BadFrame => "badFrame",
        }
    }

    /// The message that tells the other end.
    pub fn message(self) -> LinkMessage {
        LinkMessage::Refused {
            reason: self,
            message: self.to_string(),
        }
    }
}

/// Which end of a link a proof (or a frame, once sealed) is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Owner,
    Satellite,
}

/// The two nodes and their nonces: what both proofs cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkIds {
    pub owner: String,
    pub satellite: String,
    pub owner_nonce: String,
    pub satellite_nonce: String,
}

impl LinkIds {
    fn mac(&self, secret: &[u8], label: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key"));
        // Each field is length-prefixed, so that no two different field lists hash alike.
        for field in [
            "chorus node link v1",
            label,
            &self.owner,
            &self.satellite,
            &self.owner_nonce,
            &self.satellite_nonce,
        ] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field.as_bytes());
        }
        mac
    }

    fn proof(&self, secret: &[u8], role: Role) -> String {
        let label = match role {
            Role::Owner => "owner",
            Role::Satellite => "satellite",
        };
        crate::record::hex(&self.mac(secret, label).finalize().into_bytes())
    }

    fn check(&self, secret: &[u8], role: Role, proof: &str) -> Result<(), LinkRefusal> {
        let proof = crate::record::unhex(proof).ok_or(LinkRefusal::BadProof)?;
        let label = match role {
            Role::Owner => "owner",
            Role::Satellite => "satellite",
        };
        // constant time
        self.mac(secret, label)
            .verify_slice(&proof)
            .map_err(|_| LinkRefusal::BadProof)
    }

    /// The key that seals the frames `from` one end sends after the handshake: HMAC under
    /// the secret, as the proofs, with a label of its own (so it is nothing a proof shows),
    /// over both ids and both nonces (so each link has its own keys).
    pub fn key(&self, secret: &[u8], from: Role) -> [u8; 32] {
        let label = match from {
            Role::Owner => "frames from the owner",
            Role::Satellite => "frames from the satellite",
        };
        self.mac(secret, label).finalize().into_bytes().into()
    }
}

/// Parses one handshake frame.
pub fn parse(text: &str) -> Result<LinkMessage, LinkRefusal> {
    if text.len() > MAX_HANDSHAKE_FRAME {
        return Err(LinkRefusal::Malformed);
    }
    serde_json::from_str(text).map_err(|_| LinkRefusal::Malformed)
}

/// The owner's side of a handshake.
#[derive(Debug)]
pub struct Accept {
    owner: String,
    nonce: String,
}

impl Accept {
    /// A new handshake of owner `me`, and the challenge to send.
    pub fn new(me: &str, nonce: String) -> (Self, LinkMessage) {
        let challenge = LinkMessage::Challenge {
            node: me.to_owned(),
            nonce: nonce.clone(),
        };
        (
            Self {
                owner: me.to_owned(),
                nonce,
            },
            challenge,
        )
    }

    /// Reads the satellite's hello: who claims to be calling, before the I/O side looks it
    /// up.
    pub fn hello(&self, message: LinkMessage) -> Result<Hello, LinkRefusal> {
        let (node, nonce, proof) = match message {
            LinkMessage::Hello { node, nonce, proof } => (node, nonce, proof),
            // the satellite refused the challenge
            LinkMessage::Refused { reason, .. } => return Err(reason),
            _ => return Err(LinkRefusal::Malformed),
        };
        if node == self.owner {
            return Err(LinkRefusal::WrongNode);
        }
        if nonce.len() != NONCE_CHARS || nonce == self.nonce {
            return Err(LinkRefusal::Malformed);
        }
        Ok(Hello {
            ids: LinkIds {
                owner: self.owner.clone(),
                satellite: node,
                owner_nonce: self.nonce.clone(),
                satellite_nonce: nonce,
            },
            proof,
        })
    }
}

/// A satellite's hello, read but not yet believed.
#[derive(Debug)]
pub struct Hello {
    ids: LinkIds,
    proof: String,
}

impl Hello {
    /// The node it claims to be.
    pub fn node(&self) -> &str {
        &self.ids.satellite
    }

    /// Checks the proof, given whether the claimed node is live with a verified record;
    /// on success, the welcome to send and the link's identities.
    pub fn verify(self, secret: &[u8], live: bool) -> Result<(LinkMessage, LinkIds), LinkRefusal> {
        // The proof first: a node without the secret learns nothing about who is live.
        self.ids.check(secret, Role::Satellite, &self.proof)?;
        if !live {
            return Err(LinkRefusal::UnknownNode);
        }
        let welcome = LinkMessage::Welcome {
            proof: self.ids.proof(secret, Role::Owner),
        };
        Ok((welcome, self.ids))
    }
}

/// The satellite's side of a handshake.
#[derive(Debug)]
pub struct Dial {
    me: String,
    owner: String,
    nonce: String,
    ids: Option<LinkIds>,
}

impl Dial {
    /// A handshake of satellite `me` with the node `owner` it means to reach.
    pub fn new(me: &str, owner: &str, nonce: String) -> Self {
        Self {
            me: me.to_owned(),
            owner: owner.to_owned(),
            nonce,
            ids: None,
        }
    }

    /// Answers the owner's challenge.
    pub fn challenge(
        &mut self,
        secret: &[u8],
        message: LinkMessage,
    ) -> Result<LinkMessage, LinkRefusal> {
        let LinkMessage::Challenge { node, nonce } = message else {
            return Err(LinkRefusal::Malformed);
        };
        if node != self.owner || node == self.me {
            return Err(LinkRefusal::WrongNode);
        }
        if nonce.len() != NONCE_CHARS || nonce == self.nonce {
            return Err(LinkRefusal::Malformed);
        }
        let ids = LinkIds {
            owner: node,
            satellite: self.me.clone(),
            owner_nonce: nonce,
            satellite_nonce: self.nonce.clone(),
        };
        let hello = LinkMessage::Hello {
            node: self.me.clone(),
            nonce: self.nonce.clone(),
            proof: ids.proof(secret, Role::Satellite),
        };
        self.ids = Some(ids);
        Ok(hello)
    }

    /// Checks the owner's welcome: the link is up.
    pub fn welcome(self, secret: &[u8], message: LinkMessage) -> Result<LinkIds, LinkRefusal> {
        let ids = self.ids.ok_or(LinkRefusal::Malformed)?;
        match message {
            LinkMessage::Welcome { proof } => {
                ids.check(secret, Role::Owner, &proof)?;
                Ok(ids)
            }
            LinkMessage::Refused { reason, .. } => Err(reason),
            _ => Err(LinkRefusal::Malformed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a cluster secret of at least thirty-two bytes";

    fn nonce(c: char) -> String {
        std::iter::repeat_n(c, NONCE_CHARS).collect()
    }

    /// Runs a handshake through JSON, as the wire does; `live` is what the owner's lookup
    /// finds.
    fn handshake(
        owner_secret: &[u8],
        satellite_secret: &[u8],
        live: bool,
    ) -> Result<(LinkIds, LinkIds), LinkRefusal> {
        let wire = |m: &LinkMessage| parse(&serde_json::to_string(m).unwrap());
        let (accept, challenge) = Accept::new("node1", nonce('a'));
        let mut dial = Dial::new("node2", "node1", nonce('b'));
        let hello = dial.challenge(satellite_secret, wire(&challenge)?)?;
        let hello = accept.hello(wire(&hello)?)?;
        assert_eq!(hello.node(), "node2");
        let (welcome, owner_view) = hello.verify(owner_secret, live)?;
        let satellite_view = dial.welcome(satellite_secret, wire(&welcome)?)?;
        Ok((owner_view, satellite_view))
    }

    #[test]
    fn two_nodes_with_the_secret_agree() {
        let (owner, satellite) = handshake(SECRET, SECRET, true).unwrap();
        assert_eq!(owner, satellite);
        assert_eq!(owner.owner, "node1");
        assert_eq!(owner.satellite, "node2");
    }

    #[test]
    fn a_wrong_secret_is_refused_either_way() {
        let other = b"another secret, also long enough for a cluster";
        assert_eq!(handshake(SECRET, other, true), Err(LinkRefusal::BadProof));
        // a satellite never takes an owner that cannot prove the secret: an owner with
        // the wrong secret refuses the satellite's proof first, so forge its welcome
        let (_accept, challenge) = Accept::new("node1", nonce('a'));
        let mut dial = Dial::new("node2", "node1", nonce('b'));
        dial.challenge(SECRET, challenge).unwrap();
        let forged = LinkMessage::Welcome {
            proof: "00".repeat(32),
        };
        assert_eq!(dial.welcome(SECRET, forged), Err(LinkRefusal::BadProof));
    }

    #[test]
    fn a_node_that_is_not_live_is_refused_after_its_proof() {
        assert_eq!(
            handshake(SECRET, SECRET, false),
            Err(LinkRefusal::UnknownNode)
        );
    }

    #[test]
    fn proofs_do_not_replay() {
        // the satellite's proof for one challenge does not pass another
        let (_, challenge) = Accept::new("node1", nonce('a'));
        let mut dial = Dial::new("node2", "node1", nonce('b'));
        let hello = dial.challenge(SECRET, challenge).unwrap();
        let (accept, _) = Accept::new("node1", nonce('c'));
        let hello = accept.hello(hello).unwrap();
        assert_eq!(
            hello.verify(SECRET, true).unwrap_err(),
            LinkRefusal::BadProof
        );
        // the satellite's own proof sent back as the owner's welcome does not pass
        let (_, challenge) = Accept::new("node1", nonce('a'));
        let mut dial = Dial::new("node2", "node1", nonce('b'));
        let LinkMessage::Hello { proof, .. } = dial.challenge(SECRET, challenge).unwrap() else {
            panic!("a hello")
        };
        assert_eq!(
            dial.welcome(SECRET, LinkMessage::Welcome { proof }),
            Err(LinkRefusal::BadProof)
        );
    }

    #[test]
    fn the_wrong_node_or_step_is_refused() {
        let (accept, challenge) = Accept::new("node1", nonce('a'));
        // dialled node3, node1 answered
        let mut dial = Dial::new("node2", "node3", nonce('b'));
        assert_eq!(
            dial.challenge(SECRET, challenge.clone()),
            Err(LinkRefusal::WrongNode)
        );
        // a node that dials itself
        let mut dial = Dial::new("node1", "node1", nonce('b'));
        assert_eq!(
            dial.challenge(SECRET, challenge.clone()),
            Err(LinkRefusal::WrongNode)
        );
        // the owner's own id in a hello, a short nonce, the owner's nonce echoed
        for (node, nonce) in [
            ("node1", nonce('b')),
            ("node2", "short".into()),
            ("node2", nonce('a')),
        ] {
            let hello = LinkMessage::Hello {
                node: node.into(),
                nonce,
                proof: "00".into(),
            };
            assert!(accept.hello(hello).is_err());
        }
        // a challenge where a hello is due, and garbage
        assert_eq!(accept.hello(challenge).unwrap_err(), LinkRefusal::Malformed);
        assert_eq!(parse("{\"type\":\"hello\"}"), Err(LinkRefusal::Malformed));
        assert_eq!(
            parse(&"x".repeat(MAX_HANDSHAKE_FRAME + 1)),
            Err(LinkRefusal::Malformed)
        );
        // a refusal ends a dial with its reason
        let mut dial = Dial::new("node2", "node1", nonce('b'));
        let (_, challenge) = Accept::new("node1", nonce('a'));
        dial.challenge(SECRET, challenge).unwrap();
        assert_eq!(
            dial.welcome(SECRET, LinkRefusal::UnknownNode.message()),
            Err(LinkRefusal::UnknownNode)
        );
    }

    #[test]
    fn every_reason_is_named_on_the_wire_as_in_counters() {
        for reason in LinkRefusal::ALL {
            let json = serde_json::to_value(reason).unwrap();
            assert_eq!(json, reason.as_str());
        }
    }
}
