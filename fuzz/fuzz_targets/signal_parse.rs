//! A WebSocket text frame from a client: any bytes that are UTF-8 (the WebSocket layer
//! refuses the rest) into `ClientMessage::parse`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        chorus_fuzz::check_client_message(text);
    }
});
