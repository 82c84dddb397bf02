//! Fuzz target: an OAuth token answer through `api::decode_token`.
//! Properties: see `kick_fuzz::check_token`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(text) = kick_fuzz::as_text(data) {
        kick_fuzz::check_token(text);
    }
});
