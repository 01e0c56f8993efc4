//! Quantities as users write them, parsed strictly: a value outside its range is an error that
//! says the range, never a clamp.
use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// A probability in percent, `0 < p <= 100`, e.g. `30`, `30%`, `0.5`.
///
/// The datapath works in parts per million ([`Percent::ppm`]), so the resolution is 0.0001%
/// and the smallest value is [`Percent::MIN`] (as the CRD's schema says): a smaller one would
/// be a fault that never acts.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Percent(f64);

impl Percent {
    /// The smallest percentage: 1 ppm.
    pub const MIN: f64 = 0.0001;

    /// `Err` with the accepted range unless `MIN <= value <= 100`. The value is kept at the
    /// datapath's resolution (rounded to 1 ppm, 0.0001%): what the fault does, and a number
    /// that every JSON parser reads back exactly (`1.8446764073701538` did not survive
    /// serde_json's default float parsing, 0.0001% steps do).
    pub fn new(value: f64) -> Result<Self, String> {
        if value.is_finite() && (Self::MIN..=100.0).contains(&value) {
            Ok(Self((value * 10_000.0).round() / 10_000.0))
        } else {
            Err(format!(
                "must be a percentage in (0, 100], at least 0.0001 (1 ppm), got {value}"
            ))
        }
    }

    /// The value in percent.
    pub fn value(self) -> f64 {
        self.0
    }

    /// The value in parts per million, rounded to the nearest (1_000_000 = 100%).
    pub fn ppm(self) -> u32 {
        (self.0 * 10_000.0).round() as u32
    }
}

impl FromStr for Percent {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let t = t.strip_suffix('%').unwrap_or(t).trim();
        let v: f64 = t
            .parse()
            .map_err(|_| format!("must be a percentage like 30 or 30%, got {s:?}"))?;
        Percent::new(v)
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0)
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumOrStr::deserialize(d)? {
            NumOrStr::Num(v) => Percent::new(v).map_err(de::Error::custom),
            NumOrStr::Str(s) => s.parse().map_err(de::Error::custom),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrStr {
    Num(f64),
    Str(String),
}

/// A positive duration written `500ms`, `30s`, `5m`, `1h30m`, `1.5h`, `2 hours 5min`
/// (humantime's units), or in JSON a number of seconds. Nanosecond resolution; at most
/// [`FaultDuration::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FaultDuration(Duration);

impl FaultDuration {
    /// The longest duration accepted anywhere (7 days); the agent may cap lower.
    pub const MAX: Duration = Duration::from_secs(7 * 24 * 3600);

    /// `Err` with the accepted range unless `0 < d <= MAX`.
    pub fn new(d: Duration) -> Result<Self, String> {
        if d.is_zero() {
            Err("must be a positive duration like 500ms, 30s or 5m, got 0".into())
        } else if d > Self::MAX {
            Err(format!(
                "must be at most 7 days, got {}",
                humantime::format_duration(d)
            ))
        } else {
            Ok(Self(d))
        }
    }

    /// From milliseconds (`0` is an error).
    pub fn from_millis(ms: u64) -> Result<Self, String> {
        Self::new(Duration::from_millis(ms))
    }

    pub fn get(self) -> Duration {
        self.0
    }

    pub fn as_millis(self) -> u64 {
        self.0.as_millis() as u64
    }
}

impl FromStr for FaultDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.starts_with('-') {
            return Err(format!(
                "must be a positive duration like 500ms, 30s or 5m, got {s:?}"
            ));
        }
        let d = parse_duration(t)
            .map_err(|e| format!("must be a duration like 500ms, 30s or 5m, got {s:?} ({e})"))?;
        FaultDuration::new(d)
    }
}

/// Nanoseconds in a unit of humantime's (what `format_duration` writes, and its aliases).
fn unit_ns(unit: &str) -> Option<u128> {
    const S: u128 = 1_000_000_000;
    Some(match unit {
        "nanos" | "nsec" | "ns" => 1,
        "usec" | "us" | "\u{b5}s" => 1_000,
        "millis" | "msec" | "ms" => 1_000_000,
        "seconds" | "second" | "secs" | "sec" | "s" => S,
        "minutes" | "minute" | "min" | "mins" | "m" => 60 * S,
        "hours" | "hour" | "hr" | "hrs" | "h" => 3_600 * S,
        "days" | "day" | "d" => 86_400 * S,
        "weeks" | "week" | "wk" | "wks" | "w" => 604_800 * S,
        "months" | "month" | "M" => 2_630_016 * S,
        "years" | "year" | "yr" | "yrs" | "y" => 31_557_600 * S,
        _ => return None,
    })
}

/// Splits `digits` off the front of `t`.
fn digits(t: &str) -> (&str, &str) {
    t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()))
}

/// One `<number>[.<fraction>] <unit>` term in nanoseconds, exactly (a fraction finer than 1ns
/// is an error); the rest of the text.
fn term(t: &str) -> Result<(u128, &str), String> {
    let too_large = || "the number is too large".to_owned();
    let (int, rest) = digits(t);
    if int.is_empty() {
        return Err("expected a number".into());
    }
    let (frac, rest) = match rest.strip_prefix('.') {
        Some(r) => match digits(r) {
            ("", _) => return Err("expected digits after '.'".into()),
            (f, r) => (f.trim_end_matches('0'), r),
        },
        None => ("", rest),
    };
    let rest = rest.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_alphabetic() || c == '\u{b5}'))
        .unwrap_or(rest.len());
    let (unit, rest) = rest.split_at(end);
    let per = match unit_ns(unit) {
        Some(n) => n,
        None if unit.is_empty() => return Err("a unit is missing (ns, us, ms, s, m, h, d)".into()),
        None => return Err(format!("unknown unit {unit:?}")),
    };
    let whole = int
        .parse::<u128>()
        .ok()
        .and_then(|n| n.checked_mul(per))
        .ok_or_else(too_large)?;
    let part = if frac.is_empty() {
        0
    } else {
        let scale = u32::try_from(frac.len())
            .ok()
            .and_then(|l| 10u128.checked_pow(l))
            .filter(|_| frac.len() <= 18)
            .ok_or("finer than 1ns")?;
        let n = frac.parse::<u128>().map_err(|_| too_large())? * per;
        if n % scale != 0 {
            return Err("finer than 1ns".into());
        }
        n / scale
    };
    Ok((whole.checked_add(part).ok_or_else(too_large)?, rest))
}

/// Parses a sum of terms (`1h30m`, `1.5s`, `2 hours 5min`) exactly, with checked arithmetic:
/// `humantime::parse_duration` panics on some overflows (`18446744073709551615s
/// 1000000000ns`) and refuses fractions of hours that are not whole seconds (`0.6161h`).
fn parse_duration(t: &str) -> Result<Duration, String> {
    let mut rest = t.trim();
    if rest.is_empty() {
        return Err("empty".into());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (ns, r) = term(rest)?;
        total = total.checked_add(ns).ok_or("the number is too large")?;
        rest = r.trim_start();
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| "the number is too large")?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

impl fmt::Display for FaultDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for FaultDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for FaultDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumOrStr::deserialize(d)? {
            NumOrStr::Num(v) if v.is_finite() && v > 0.0 => {
                FaultDuration::new(Duration::from_secs_f64(v.min(1e9))).map_err(de::Error::custom)
            }
            NumOrStr::Num(v) => Err(de::Error::custom(format!(
                "must be a positive number of seconds or a duration like 500ms, 30s or 5m, got {v}"
            ))),
            NumOrStr::Str(s) => s.parse().map_err(de::Error::custom),
        }
    }
}

/// A rate limit in bytes per second, written as tc(8) writes rates: `1mbit`, `500kbit`, `10mbps`.
///
/// Units (case-insensitive), as in tc and so in Chaos Mesh: `bit`, `kbit`, `mbit`, `gbit`
/// (bits per second, SI: 1 kbit = 1000 bit) and `bps`, `kbps`, `mbps`, `gbps` (**bytes** per
/// second). A bare number is bits per second. So the seed API's `"1mbps"` is 1 MB/s = 8 Mbit/s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rate {
    bytes_per_sec: u64,
}

impl Rate {
    /// Lowest accepted rate: 8 bit/s (1 byte/s).
    pub const MIN_BYTES_PER_SEC: u64 = 1;
    /// Highest accepted rate: 100 Gbit/s.
    pub const MAX_BYTES_PER_SEC: u64 = 12_500_000_000;

    pub fn from_bytes_per_sec(b: u64) -> Result<Self, String> {
        if (Self::MIN_BYTES_PER_SEC..=Self::MAX_BYTES_PER_SEC).contains(&b) {
            Ok(Self { bytes_per_sec: b })
        } else {
            Err(format!(
                "must be between 8bit and 100gbit per second, got {b} bytes/s"
            ))
        }
    }

    /// Bytes per second.
    pub fn bytes_per_sec(self) -> u64 {
        self.bytes_per_sec
    }
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let bad = || format!("must be a rate like 1mbit, 500kbit or 1mbps (tc units), got {s:?}");
        let v: f64 = num.parse().map_err(|_| bad())?;
        let bits_per_unit: f64 = match unit.trim() {
            "" | "bit" => 1.0,
            "kbit" => 1e3,
            "mbit" => 1e6,
            "gbit" => 1e9,
            "bps" => 8.0,
            "kbps" => 8e3,
            "mbps" => 8e6,
            "gbps" => 8e9,
            _ => return Err(bad()),
        };
        let bytes = (v * bits_per_unit / 8.0).round();
        if !(bytes.is_finite() && bytes >= 1.0) {
            return Err(format!("must be at least 8bit, got {s:?}"));
        }
        Rate::from_bytes_per_sec(bytes as u64)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = self.bytes_per_sec * 8;
        if bits.is_multiple_of(1_000_000_000) {
            write!(f, "{}gbit", bits / 1_000_000_000)
        } else if bits.is_multiple_of(1_000_000) {
            write!(f, "{}mbit", bits / 1_000_000)
        } else if bits.is_multiple_of(1_000) {
            write!(f, "{}kbit", bits / 1_000)
        } else {
            write!(f, "{bits}bit")
        }
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_forms_and_range() {
        assert_eq!("30".parse::<Percent>().unwrap().ppm(), 300_000);
        assert_eq!("30%".parse::<Percent>().unwrap().ppm(), 300_000);
        assert_eq!(" 0.5 % ".parse::<Percent>().unwrap().ppm(), 5_000);
        assert_eq!("100".parse::<Percent>().unwrap().ppm(), 1_000_000);
        let e = "150".parse::<Percent>().unwrap_err();
        assert!(e.contains("(0, 100]") && e.contains("150"), "{e}");
        assert!("0".parse::<Percent>().is_err());
        assert!("-1".parse::<Percent>().is_err());
        assert!("abc".parse::<Percent>().is_err());
        assert!("NaN".parse::<Percent>().is_err());
    }

    /// Found by fuzzing (`units`): `1e-9` was accepted and became 0 ppm, a fault that never
    /// acts (the CRD's schema already refused it: minimum 0.0001).
    #[test]
    fn percent_below_one_ppm_is_refused() {
        for tiny in ["1e-9", "0.00004", "0.00009999"] {
            let e = tiny.parse::<Percent>().unwrap_err();
            assert!(e.contains("0.0001"), "{tiny}: {e}");
        }
        assert!(serde_json::from_str::<Percent>("1e-9").is_err());
        assert_eq!("0.0001".parse::<Percent>().unwrap().ppm(), 1);
        assert_eq!(Percent::new(Percent::MIN).unwrap().ppm(), 1);
    }

    /// Found by fuzzing (`units`): `1.8446764073701537965770956516` became
    /// 1.8446764073701538, which serde_json (without `float_roundtrip`) read back as
    /// 1.8446764073701536: a percent changed through the API's JSON. Percents are kept at
    /// 1 ppm, which survives JSON exactly.
    #[test]
    fn percent_survives_json_and_is_kept_at_one_ppm() {
        let p: Percent = "1.8446764073701537965770956516".parse().unwrap();
        assert_eq!(p.value(), 1.8447);
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, "1.8447");
        assert_eq!(serde_json::from_str::<Percent>(&json).unwrap(), p);
        assert_eq!(p.to_string().parse::<Percent>().unwrap(), p);
        assert_eq!(Percent::new(33.333333).unwrap().value(), 33.3333);
        assert_eq!(Percent::new(99.99999).unwrap().value(), 100.0);
        assert_eq!(Percent::new(0.5).unwrap().ppm(), 5000);
    }

    #[test]
    fn duration_forms_and_range() {
        assert_eq!("500ms".parse::<FaultDuration>().unwrap().as_millis(), 500);
        assert_eq!("30s".parse::<FaultDuration>().unwrap().as_millis(), 30_000);
        assert_eq!("5m".parse::<FaultDuration>().unwrap().as_millis(), 300_000);
        let e = "-3s".parse::<FaultDuration>().unwrap_err();
        assert!(e.contains("positive") && e.contains("-3s"), "{e}");
        assert!("0s".parse::<FaultDuration>().is_err());
        assert!("8d".parse::<FaultDuration>().is_err());
        assert!("soon".parse::<FaultDuration>().is_err());
        assert_eq!(
            "1h 30m 5s".parse::<FaultDuration>().unwrap().as_millis(),
            5_405_000
        );
        assert_eq!(
            "2 hours 5min".parse::<FaultDuration>().unwrap().as_millis(),
            7_500_000
        );
        assert_eq!(
            "1.25ms".parse::<FaultDuration>().unwrap().get(),
            Duration::from_micros(1250)
        );
        for bad in ["", "5", "1.s", "1x", "1.0000000001s", "0.5ns", "1 0s", "s"] {
            assert!(bad.parse::<FaultDuration>().is_err(), "{bad:?}");
        }
        let d: FaultDuration = serde_json::from_str("60").unwrap();
        assert_eq!(d.as_millis(), 60_000);
        assert!(serde_json::from_str::<FaultDuration>("-3").is_err());
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"1m\"");
    }

    /// Found by fuzzing (`units`): humantime refused `0.6161h`, which the CRD's schema admits
    /// (fractions of hours had to be whole seconds), and panicked on an overflow.
    #[test]
    fn durations_in_the_schemas_form_parse_exactly_and_overflow_is_an_error() {
        let d: FaultDuration = "0.6161h".parse().unwrap();
        assert_eq!(d.get(), Duration::from_millis(2_217_960));
        assert!(
            "36d0.6161h"
                .parse::<FaultDuration>()
                .unwrap_err()
                .contains("7 days")
        );
        for huge in [
            "18446744073709551615s 1000000000ns",
            "18446744073709551615s 999999999ns 1ns",
            "99999999999999999999999999999999999999999y",
            "340282366920938463463374607431768211455ns 1ns",
        ] {
            let e = huge.parse::<FaultDuration>().unwrap_err();
            assert!(
                e.contains("too large") || e.contains("7 days"),
                "{huge}: {e}"
            );
        }
        assert!(
            serde_json::from_str::<FaultDuration>(r#""18446744073709551615s 1000000000ns""#)
                .is_err()
        );
    }

    #[test]
    fn rate_units_follow_tc() {
        assert_eq!("1mbit".parse::<Rate>().unwrap().bytes_per_sec(), 125_000);
        assert_eq!("1mbps".parse::<Rate>().unwrap().bytes_per_sec(), 1_000_000);
        assert_eq!("500kbit".parse::<Rate>().unwrap().bytes_per_sec(), 62_500);
        assert_eq!("8000".parse::<Rate>().unwrap().bytes_per_sec(), 1_000);
        assert_eq!("1mbit".parse::<Rate>().unwrap().to_string(), "1mbit");
        assert!("fast".parse::<Rate>().is_err());
        assert!("1furlong".parse::<Rate>().is_err());
        assert!("0mbit".parse::<Rate>().is_err());
        assert!("1000gbit".parse::<Rate>().is_err());
    }
}
