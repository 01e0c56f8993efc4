//! What the fuzz targets share: the properties every input surface must keep, beyond not
//! panicking (see DEVELOPERS.md, "Fuzzing").
//!
//! - a parsed value prints back to text that parses to the same value ([`round_trip`]);
//! - an error names a field the input has, or the one it lacks ([`known_field`]);
//! - an accepted fault never holds a value out of its range ([`check_spec_ranges`]).
use std::{borrow::Cow, fmt::Debug, str::FromStr};

use fault_api::{FaultDuration, FaultSpec, Percent};

pub mod api;

/// The input as text: what a JSON body, a flag or a file becomes before any of our parsers
/// run. Invalid UTF-8 is replaced, so every input still reaches them.
pub fn text(data: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// `Display` then `FromStr` gives the value back.
pub fn round_trip<T>(v: &T)
where
    T: FromStr + std::fmt::Display + PartialEq + Debug,
    T::Err: Debug,
{
    let shown = v.to_string();
    match shown.parse::<T>() {
        Ok(back) => assert_eq!(&back, v, "{shown:?} parses to another value"),
        Err(e) => panic!("{v:?} prints as {shown:?}, which does not parse: {e:?}"),
    }
}

/// JSON serialization then deserialization gives the value back.
pub fn json_round_trip<T>(v: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + Debug,
{
    let json = serde_json::to_string(v).expect("our types always serialize");
    match serde_json::from_str::<T>(&json) {
        Ok(back) => assert_eq!(&back, v, "{json} deserializes to another value"),
        Err(e) => panic!("{v:?} serializes as {json}, which does not deserialize: {e}"),
    }
}

/// The first segment of a field path: `to_selectors` of `to_selectors[1]`, `parameters` of
/// `parameters.delay_ms`.
pub fn head(field: &str) -> &str {
    field.split(['[', '.']).next().unwrap_or(field)
}

/// Whether `field` (a path like `to_cidrs[1]`) starts with one of `names`, or is `body` (the
/// text is not JSON, or not an object), or is the unknown field the message names.
pub fn known_field(field: &str, message: &str, names: &[&str]) -> bool {
    field == "body" || names.contains(&head(field)) || unknown_field_named(field, message)
}

/// serde's "unknown field `x`, expected ..." and a field path ending with `x` (a key may hold
/// dots itself, so the path cannot be split; it may hold backticks, so the message cannot
/// be split at the first one: any backtick may end the name).
pub fn unknown_field_named(field: &str, message: &str) -> bool {
    message.strip_prefix("unknown field `").is_some_and(|rest| {
        rest.match_indices('`')
            .any(|(i, _)| field.ends_with(&rest[..i]))
    })
}

/// The JSON names of [`FaultSpec`]'s fields, from its schema (so a new field is known here
/// without a change).
pub fn spec_fields() -> Vec<String> {
    let schema = serde_json::to_value(schemars::schema_for!(FaultSpec)).expect("schema serializes");
    schema["properties"]
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// Every range a validated spec must be within: what the datapath can represent and what the
/// docs promise. Panics naming the broken one.
pub fn check_spec_ranges(s: &FaultSpec) {
    for (name, p) in [
        ("loss_percent", s.loss_percent),
        ("corrupt_percent", s.corrupt_percent),
        ("duplicate_percent", s.duplicate_percent),
    ] {
        if let Some(p) = p {
            check_percent(name, p);
        }
    }
    for (name, d) in [
        ("delay", s.delay),
        ("jitter", s.jitter),
        ("duration", s.duration),
    ] {
        if let Some(d) = d {
            check_duration(name, d);
        }
    }
    if let Some(j) = s.jitter {
        let d = s.delay.expect("jitter without delay was accepted");
        assert!(j <= d, "jitter {j} above delay {d} was accepted");
        assert!(
            d.get() + j.get() <= std::time::Duration::from_secs(10),
            "delay {d} + jitter {j} beyond 10s was accepted"
        );
    }
    if let Some(r) = s.rate {
        assert!(
            (fault_api::Rate::MIN_BYTES_PER_SEC..=fault_api::Rate::MAX_BYTES_PER_SEC)
                .contains(&r.bytes_per_sec()),
            "rate {r} out of range was accepted"
        );
    }
    assert_ne!(s.port, Some(0), "port 0 was accepted");
    assert!(
        s.partition.is_some()
            != (s.loss_percent.is_some()
                || s.corrupt_percent.is_some()
                || s.delay.is_some()
                || s.duplicate_percent.is_some()
                || s.rate.is_some()),
        "a spec with no action, or a partition with a degradation, was accepted: {s:?}"
    );
    for net in &s.to_cidrs {
        assert_eq!(net.trunc(), *net, "{net} with host bits was accepted");
    }
}

/// A percent the parsers accept is in (0, 100] and is at least one ppm in the datapath.
pub fn check_percent(name: &str, p: Percent) {
    let v = p.value();
    assert!(
        v.is_finite() && v > 0.0 && v <= 100.0,
        "{name}: {v} accepted"
    );
    assert!(
        (1..=1_000_000).contains(&p.ppm()),
        "{name}: {v}% accepted, {} ppm in the datapath",
        p.ppm()
    );
}

/// A duration the parsers accept is positive and at most [`FaultDuration::MAX`].
pub fn check_duration(name: &str, d: FaultDuration) {
    assert!(
        !d.get().is_zero() && d.get() <= FaultDuration::MAX,
        "{name}: {d:?} accepted"
    );
}
