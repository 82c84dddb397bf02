//! Fuzz target: a `/public/v1/livestreams` body through `api::decode_page::<Vec<Livestream>>`.
//! Properties: see `kick_fuzz::check_livestreams`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(text) = kick_fuzz::as_text(data) {
        kick_fuzz::check_livestreams(text);
    }
});
