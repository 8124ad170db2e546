//! Sealing a node link's frames after its handshake, sans-IO: every frame either end sends
//! is encrypted and authenticated with AES-256-GCM under that end's key
//! ([`LinkIds::key`](crate::link::LinkIds::key)), its nonce the frame's number on the link.
//! The receiver expects the next number: a frame that was forged, altered, replayed,
//! reordered or dropped does not open, and the link is closed. So a node's media and
//! control messages are private and bound to the link even over plain `http://` between
//! nodes, and nothing but a node with the cluster secret can speak on one.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

use crate::link::LinkRefusal;

/// The kind of a sealed frame, its first plaintext byte.
const TEXT: u8 = 0;
const BINARY: u8 = 1;

fn key(bytes: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, bytes)
            .unwrap_or_else(|_| unreachable!("32 bytes is an AES-256 key")),
    )
}

fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0u8; NONCE_LEN];
    bytes[NONCE_LEN - 8..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// The sending end of one direction of a link.
pub struct Sealer {
    key: LessSafeKey,
    sent: u64,
}

impl Sealer {
    pub fn new(key_bytes: &[u8; 32]) -> Self {
        Self {
            key: key(key_bytes),
            sent: 0,
        }
    }

    /// Seals one frame: `text` says whether it is a text (JSON) or binary (media) frame.
    pub fn seal(&mut self, text: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(payload.len() + 1 + AES_256_GCM.tag_len());
        out.push(if text { TEXT } else { BINARY });
        out.extend_from_slice(payload);
        self.sent += 1;
        // A key seals at most 2^64 frames: far beyond any link's life.
        self.key
            .seal_in_place_append_tag(nonce(self.sent), Aad::empty(), &mut out)
            .unwrap_or_else(|_| unreachable!("AES-GCM seals any length a frame has"));
        out
    }
}

/// The receiving end of one direction of a link.
pub struct Opener {
    key: LessSafeKey,
    received: u64,
}

impl Opener {
    pub fn new(key_bytes: &[u8; 32]) -> Self {
        Self {
            key: key(key_bytes),
            received: 0,
        }
    }

    /// Opens the next frame: whether it is text, and its payload.
    pub fn open(&mut self, mut sealed: Vec<u8>) -> Result<(bool, Vec<u8>), LinkRefusal> {
        let next = self.received + 1;
        let plain = self
            .key
            .open_in_place(nonce(next), Aad::empty(), &mut sealed)
            .map_err(|_| LinkRefusal::BadFrame)?;
        let (&kind, _) = plain.split_first().ok_or(LinkRefusal::BadFrame)?;
        let len = plain.len();
        let text = match kind {
            TEXT => true,
            BINARY => false,
            _ => return Err(LinkRefusal::BadFrame),
        };
        self.received = next;
        sealed.truncate(len);
        sealed.remove(0);
        Ok((text, sealed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 32] = [7; 32];
    const B: [u8; 32] = [9; 32];

    #[test]
    fn frames_open_in_order_under_the_right_key() {
        let (mut sealer, mut opener) = (Sealer::new(&A), Opener::new(&A));
        let one = sealer.seal(true, b"{\"type\":\"alive\"}");
        let two = sealer.seal(false, &[1, 2, 3]);
        assert!(
            !one.windows(5).any(|w| w == b"alive"),
            "the payload is encrypted"
        );
        assert_eq!(
            opener.open(one).unwrap(),
            (true, b"{\"type\":\"alive\"}".to_vec())
        );
        assert_eq!(opener.open(two).unwrap(), (false, vec![1, 2, 3]));
    }

    #[test]
    fn forged_altered_replayed_or_reordered_frames_do_not_open() {
        let mut sealer = Sealer::new(&A);
        let one = sealer.seal(false, b"first");
        let two = sealer.seal(false, b"second");
        // another key (another link, or a node without the secret)
        assert_eq!(
            Opener::new(&B).open(one.clone()),
            Err(LinkRefusal::BadFrame)
        );
        // one bit changed
        let mut altered = one.clone();
        altered[3] ^= 1;
        assert_eq!(Opener::new(&A).open(altered), Err(LinkRefusal::BadFrame));
        // out of order (or the first dropped)
        assert_eq!(
            Opener::new(&A).open(two.clone()),
            Err(LinkRefusal::BadFrame)
        );
        // replayed
        let mut opener = Opener::new(&A);
        opener.open(one.clone()).unwrap();
        assert_eq!(opener.open(one), Err(LinkRefusal::BadFrame));
        assert!(
            opener.open(two).is_ok(),
            "a refused frame does not move the count on"
        );
        // too short to be a frame
        assert_eq!(Opener::new(&A).open(vec![0; 4]), Err(LinkRefusal::BadFrame));
    }
}
