//! Just enough STUN to route a peer's first datagram on the shared socket (is this a STUN
//! message, and which local ICE ufrag does its USERNAME name?) and to follow a browser's
//! later nomination (is this a binding request with USE-CANDIDATE, and which transaction
//! does a response answer?).

/// STUN's fixed header length.
const HEADER_LEN: usize = 20;
/// RFC 5389 magic cookie.
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
/// The USERNAME attribute type.
const ATTR_USERNAME: u16 = 0x0006;
/// The USE-CANDIDATE attribute type (RFC 8445): the controlling agent nominates the pair.
const ATTR_USE_CANDIDATE: u16 = 0x0025;
/// Message types: a binding request, its success and its error response.
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const BINDING_ERROR: u16 = 0x0111;

/// A STUN transaction id.
pub type TransactionId = [u8; 12];

/// Whether a datagram is a STUN message (RFC 7983 demultiplexing: first byte 0..=3, cookie).
pub fn is_stun(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER_LEN && datagram[0] < 4 && datagram[4..8] == MAGIC_COOKIE
}

/// The local (receiving side's) ufrag from a STUN binding request's `USERNAME`
/// (`local:remote`), or `None` when there is none.
pub fn local_ufrag(datagram: &[u8]) -> Option<&str> {
    let username = attribute(datagram, ATTR_USERNAME)?;
    std::str::from_utf8(username).ok()?.split(':').next()
}

/// The transaction id of a binding request that nominates its pair (carries
/// USE-CANDIDATE); `None` for anything else. Says nothing of its integrity, which only the
/// ICE agent can check.
pub fn nomination(datagram: &[u8]) -> Option<TransactionId> {
    if message_type(datagram)? != BINDING_REQUEST {
        return None;
    }
    attribute(datagram, ATTR_USE_CANDIDATE)?;
    transaction_id(datagram)
}

/// A binding response: its transaction id, and whether it is a success.
pub fn binding_response(datagram: &[u8]) -> Option<(TransactionId, bool)> {
    let success = match message_type(datagram)? {
        BINDING_SUCCESS => true,
        BINDING_ERROR => false,
        _ => return None,
    };
    Some((transaction_id(datagram)?, success))
}

fn message_type(datagram: &[u8]) -> Option<u16> {
    is_stun(datagram).then(|| u16::from_be_bytes([datagram[0], datagram[1]]))
}

fn transaction_id(datagram: &[u8]) -> Option<TransactionId> {
    datagram.get(8..HEADER_LEN)?.try_into().ok()
}

/// The value of the first attribute of type `wanted` in a STUN message.
fn attribute(datagram: &[u8], wanted: u16) -> Option<&[u8]> {
    if !is_stun(datagram) {
        return None;
    }
    let body_len = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let mut rest = datagram.get(HEADER_LEN..HEADER_LEN + body_len)?;
    while rest.len() >= 4 {
        let kind = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let value = rest.get(4..4 + len)?;
        if kind == wanted {
            return Some(value);
        }
        let padded = (len + 3) & !3;
        rest = rest.get(4 + padded..)?;
    }
    None
}

/// A STUN binding request whose `USERNAME` is `username`, for tests.
#[cfg(test)]
pub(crate) fn binding_request(username: &str) -> Vec<u8> {
    stun_message(BINDING_REQUEST, username, false, [7; 12])
}

/// A STUN message for tests: a type, a `USERNAME`, maybe USE-CANDIDATE, a transaction.
#[cfg(test)]
pub(crate) fn stun_message(
    kind: u16,
    username: &str,
    use_candidate: bool,
    transaction: TransactionId,
) -> Vec<u8> {
    let mut attrs = Vec::new();
    // a PRIORITY attribute first, to exercise skipping
    attrs.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4]);
    attrs.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
    attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attrs.extend_from_slice(username.as_bytes());
    while attrs.len() % 4 != 0 {
        attrs.push(0);
    }
    if use_candidate {
        attrs.extend_from_slice(&ATTR_USE_CANDIDATE.to_be_bytes());
        attrs.extend_from_slice(&[0, 0]);
    }
    let mut msg = kind.to_be_bytes().to_vec();
    msg.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    msg.extend_from_slice(&MAGIC_COOKIE);
    msg.extend_from_slice(&transaction);
    msg.extend_from_slice(&attrs);
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_local_ufrag() {
        let msg = binding_request("srvUfrag1:browserX");
        assert!(is_stun(&msg));
        assert_eq!(local_ufrag(&msg), Some("srvUfrag1"));
    }

    #[test]
    fn reads_a_nomination_and_the_response_to_it() {
        let tx = [9; 12];
        let nominating = stun_message(BINDING_REQUEST, "srv:b", true, tx);
        assert_eq!(nomination(&nominating), Some(tx));
        assert_eq!(local_ufrag(&nominating), Some("srv"));
        assert_eq!(
            nomination(&binding_request("srv:b")),
            None,
            "no USE-CANDIDATE"
        );
        let answered = stun_message(BINDING_SUCCESS, "srv:b", true, tx);
        assert_eq!(nomination(&answered), None, "a response nominates nothing");
        assert_eq!(binding_response(&answered), Some((tx, true)));
        let refused = stun_message(BINDING_ERROR, "srv:b", false, tx);
        assert_eq!(binding_response(&refused), Some((tx, false)));
        assert_eq!(binding_response(&nominating), None);
        assert_eq!(binding_response(&[0x80; 40]), None, "RTP");
    }

    #[test]
    fn rejects_non_stun_and_truncated() {
        assert!(!is_stun(&[0x80; 40]), "RTP starts with 0x80");
        assert_eq!(local_ufrag(&[0x16, 0xfe, 0xfd]), None, "DTLS");
        let mut msg = binding_request("abc:def");
        msg.truncate(msg.len() - 6);
        assert_eq!(local_ufrag(&msg), None);
    }
}
