//! An ICE-TCP connection's byte stream (RFC 4571 framing) read by the same loop the server
//! runs per connection (`chorus_sfu::tcp::read_frames`). The frames read, framed again,
//! must be exactly the start of the stream, and what is left must be less than a frame.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;

use chorus_sfu::tcp::{TcpEvent, frame, read_frames};
use libfuzzer_sys::fuzz_target;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let from: SocketAddr = ([192, 0, 2, 1], 40_000).into();
    // Room for every frame the stream can hold (a frame takes at least its 2-byte length),
    // so the reader never waits on a worker that is not there.
    let (events, mut frames) = mpsc::channel(data.len() / 2 + 1);
    runtime().block_on(read_frames(data, from, &events));
    drop(events);
    let mut rebuilt = Vec::with_capacity(data.len());
    while let Ok(event) = frames.try_recv() {
        let TcpEvent::Frame {
            from: source,
            data: datagram,
        } = event
        else {
            panic!("the reader reports only frames");
        };
        assert_eq!(source, from);
        rebuilt.extend(frame(&datagram).expect("a frame read fits a frame"));
    }
    assert!(data.starts_with(&rebuilt), "frames out of order or altered");
    let rest = &data[rebuilt.len()..];
    if let [hi, lo, body @ ..] = rest {
        assert!(
            body.len() < usize::from(u16::from_be_bytes([*hi, *lo])),
            "a whole frame left unread"
        );
    }
});
