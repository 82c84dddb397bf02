//! Fuzz target: a frame of either transport through the decoders and the collector's row builder.
//! Properties: see `kick_fuzz::check_staged_row`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(text) = kick_fuzz::as_text(data) {
        kick_fuzz::check_staged_row(text);
    }
});
