//! Just enough STUN to route a peer's first datagram on the shared socket: is this a STUN
//! message, and which local ICE ufrag does its USERNAME name?

/// STUN's fixed header length.
const HEADER_LEN: usize = 20;
/// RFC 5389 magic cookie.
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
/// The USERNAME attribute type.
const ATTR_USERNAME: u16 = 0x0006;

/// Whether a datagram is a STUN message (RFC 7983 demultiplexing: first byte 0..=3, cookie).
pub fn is_stun(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER_LEN && datagram[0] < 4 && datagram[4..8] == MAGIC_COOKIE
}

/// The local (receiving side's) ufrag from a STUN binding request's `USERNAME`
/// (`local:remote`), or `None` when there is none.
pub fn local_ufrag(datagram: &[u8]) -> Option<&str> {
    if !is_stun(datagram) {
        return None;
    }
    let body_len = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let body = datagram.get(HEADER_LEN..HEADER_LEN + body_len)?;
    let mut rest = body;
    while rest.len() >= 4 {
        let kind = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let value = rest.get(4..4 + len)?;
        if kind == ATTR_USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next();
        }
        let padded = (len + 3) & !3;
        rest = rest.get(4 + padded..)?;
    }
    None
}

/// A STUN binding request whose `USERNAME` is `username`, for tests.
#[cfg(test)]
pub(crate) fn binding_request(username: &str) -> Vec<u8> {
    let mut attrs = Vec::new();
    // a PRIORITY attribute first, to exercise skipping
    attrs.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4]);
    attrs.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
    attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attrs.extend_from_slice(username.as_bytes());
    while attrs.len() % 4 != 0 {
        attrs.push(0);
    }
    let mut msg = vec![0x00, 0x01];
    msg.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    msg.extend_from_slice(&MAGIC_COOKIE);
    msg.extend_from_slice(&[7; 12]);
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
    fn rejects_non_stun_and_truncated() {
        assert!(!is_stun(&[0x80; 40]), "RTP starts with 0x80");
        assert_eq!(local_ufrag(&[0x16, 0xfe, 0xfd]), None, "DTLS");
        let mut msg = binding_request("abc:def");
        msg.truncate(msg.len() - 6);
        assert_eq!(local_ufrag(&msg), None);
    }
}
