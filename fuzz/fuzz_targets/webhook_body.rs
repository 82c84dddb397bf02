//! Fuzz target: a webhook body through `webhook::decode_status`.
//! Properties: see `kick_fuzz::check_webhook_body`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kick_fuzz::check_webhook_body(data);
});
