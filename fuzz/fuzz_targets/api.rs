//! The HTTP API, native (`/v1`) and seed (`/api/v1`): bodies, query strings, paths, methods
//! and headers, through the agent's real router and core on real BPF maps (see
//! `fault_fuzz::api` for the harness and the input format).
//!
//! Properties: the answer's status is a documented one, never 500 (a panic in a handler or
//! the core becomes one); every error is a JSON `ErrorBody`, naming the field for 400 and
//! 422; a created fault is valid, live, and ends after its duration (or `--max-duration`);
//! once every fault is recovered the kernel maps hold exactly what they held before.
#![no_main]

use std::sync::Mutex;

use fault_fuzz::api::{Harness, Input, on_exit};
use libfuzzer_sys::fuzz_target;

static HARNESS: Mutex<Option<Harness>> = Mutex::new(None);

fuzz_target!(
    init: {
        let h = Harness::new().unwrap_or_else(|e| panic!("fuzz harness: {e:#}"));
        *HARNESS.lock().unwrap() = Some(h);
        on_exit(&HARNESS);
    },
    |data: &[u8]| {
        let Some(input) = Input::parse(data) else { return };
        let mut h = HARNESS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = h.as_mut() {
            h.run(&input);
        }
    }
);
