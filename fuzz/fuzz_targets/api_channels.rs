//! Fuzz target: a `/public/v1/channels` body through `api::decode_page::<Vec<Channel>>`.
//! Properties: see `kick_fuzz::check_channels`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(text) = kick_fuzz::as_text(data) {
        kick_fuzz::check_channels(text);
    }
});
