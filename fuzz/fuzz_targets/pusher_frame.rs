//! Fuzz target: one Pusher protocol 7 text frame through `frame::decode_pusher`.
//! Properties: see `kick_fuzz::check_pusher`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(text) = kick_fuzz::as_text(data) {
        kick_fuzz::check_pusher(text);
    }
});
