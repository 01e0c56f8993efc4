//! Quantities as users write them, parsed strictly: a value outside its range is an error that
//! says the range, never a clamp.
use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// A probability in percent, `0 < p <= 100`, e.g. `30`, `30%`, `0.5`.
///
/// The datapath works in parts per million ([`Percent::ppm`]), so the resolution is 0.0001%.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Percent(f64);

impl Percent {
    /// `Err` with the accepted range unless `0 < value <= 100`.
    pub fn new(value: f64) -> Result<Self, String> {
        if value.is_finite() && value > 0.0 && value <= 100.0 {
            Ok(Self(value))
        } else {
            Err(format!("must be a percentage in (0, 100], got {value}"))
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

/// A positive duration written `500ms`, `30s`, `5m`, `1h30m` (humantime syntax), or in JSON a
/// number of seconds. Millisecond resolution; at most [`FaultDuration::MAX`].
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
        let d = humantime::parse_duration(t)
            .map_err(|e| format!("must be a duration like 500ms, 30s or 5m, got {s:?} ({e})"))?;
        FaultDuration::new(d)
    }
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
        let d: FaultDuration = serde_json::from_str("60").unwrap();
        assert_eq!(d.as_millis(), 60_000);
        assert!(serde_json::from_str::<FaultDuration>("-3").is_err());
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"1m\"");
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
