//! Fuzz target: a `/public/v1/users` body through `api::decode_page::<Vec<User>>`.
//! Properties: see `kick_fuzz::check_users`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(text) = kick_fuzz::as_text(data) {
        kick_fuzz::check_users(text);
    }
});
