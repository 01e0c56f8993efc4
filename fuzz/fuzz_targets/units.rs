//! Units as users write them (`faultctl` flags, JSON strings and numbers, `NetworkFault`
//! fields): percents, durations, rates, and the small enums (protocol, direction, partition).
//!
//! Properties: an accepted value is in its range (a percent is at least one ppm); it prints
//! back to text that parses to the same value, and survives JSON; an error says what was
//! expected; text the CRD's schema admits (its patterns) is never refused for its form.
#![no_main]

use std::{str::FromStr, sync::LazyLock};

use fault_api::{Direction, FaultDuration, PartitionMode, Percent, Protocol, Rate};
use fault_fuzz::{check_duration, check_percent, json_round_trip, round_trip, text};
use libfuzzer_sys::fuzz_target;
use regex::Regex;

/// The patterns of `fault_api::schema` (what a `NetworkFault` may hold at admission).
static DURATION_SCHEMA: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h|d) *)+$").unwrap());
static RATE_SCHEMA: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[0-9]+(\.[0-9]+)?([kKmMgG]?([bB][iI][tT]|[bB][pP][sS]))?$").unwrap()
});

fn percent(s: &str) {
    match s.parse::<Percent>() {
        Ok(p) => {
            check_percent("percent", p);
            round_trip(&p);
            json_round_trip(&p);
        }
        Err(e) => assert!(e.contains("percentage"), "{s:?}: {e}"),
    }
}

fn duration(s: &str) {
    match s.parse::<FaultDuration>() {
        Ok(d) => {
            check_duration("duration", d);
            round_trip(&d);
            json_round_trip(&d);
        }
        Err(e) => {
            assert!(e.contains("duration") || e.contains("7 days"), "{s:?}: {e}");
            if DURATION_SCHEMA.is_match(s) {
                // The schema admits the form; only the range (or a fraction of a
                // nanosecond) may refuse it.
                assert!(
                    ["at most", "got 0", "too large", "finer than 1ns"]
                        .iter()
                        .any(|w| e.contains(w)),
                    "{s:?} matches the CRD's duration pattern but is refused: {e}"
                );
            }
        }
    }
}

fn rate(s: &str) {
    match s.parse::<Rate>() {
        Ok(r) => {
            assert!(
                (Rate::MIN_BYTES_PER_SEC..=Rate::MAX_BYTES_PER_SEC).contains(&r.bytes_per_sec())
            );
            round_trip(&r);
            json_round_trip(&r);
        }
        Err(e) => {
            assert!(e.contains("rate") || e.contains("8bit"), "{s:?}: {e}");
            if RATE_SCHEMA.is_match(s) {
                assert!(
                    e.contains("between") || e.contains("at least"),
                    "{s:?} matches the CRD's rate pattern but is refused: {e}"
                );
            }
        }
    }
}

fn small_enum<T: FromStr<Err = String> + std::fmt::Debug>(s: &str, words: &[&str]) {
    match s.parse::<T>() {
        Ok(_) => assert!(
            words.iter().any(|w| w.eq_ignore_ascii_case(s)),
            "{s:?} accepted"
        ),
        Err(e) => assert!(e.contains("must be"), "{s:?}: {e}"),
    }
}

/// A JSON number or string, as the API and the CRD give them.
fn json(data: &[u8]) {
    if let Ok(p) = serde_json::from_slice::<Percent>(data) {
        check_percent("percent", p);
    }
    if let Ok(d) = serde_json::from_slice::<FaultDuration>(data) {
        check_duration("duration", d);
    }
    let _ = serde_json::from_slice::<Rate>(data);
    let _ = serde_json::from_slice::<PartitionMode>(data);
}

fuzz_target!(|data: &[u8]| {
    let s = text(data);
    percent(&s);
    duration(&s);
    rate(&s);
    small_enum::<Protocol>(&s, &["tcp", "udp", "icmp", "icmpv6"]);
    small_enum::<Direction>(&s, &["egress", "ingress", "both"]);
    small_enum::<PartitionMode>(&s, &["packets", "true", "connections"]);
    json(data);
});
