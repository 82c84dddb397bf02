//! Fuzz target: one Centrifugo text frame (messages one per line) through `frame::decode_centrifugo`.
//! Properties: see `kick_fuzz::check_centrifugo`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(text) = kick_fuzz::as_text(data) {
        kick_fuzz::check_centrifugo(text);
    }
});
