//! A client message built as JSON with the wire types' own field names and `type` values,
//! so that the fuzzer spends its time in the fields' checks rather than in JSON syntax.
#![no_main]

use chorus_fuzz::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|message: Message| {
    chorus_fuzz::check_client_message(&message.0.to_string());
});
