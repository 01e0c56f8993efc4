//! Kubernetes label selectors (the syntax of `kubectl get -l`), e.g.
//! `app=vllm-decode,tier!=db,env in (prod,staging),!canary`.
//!
//! Requirements are ANDed. Supported operators: `=`, `==`, `!=`, `in (..)`, `notin (..)`, `key`
//! (exists) and `!key` (does not exist). An empty selector matches every pod. Keys and values
//! follow the Kubernetes label syntax: a value is at most 63 characters of `[A-Za-z0-9._-]`
//! starting and ending alphanumeric; a key is an optional DNS prefix and `/` then such a name.
use std::{collections::BTreeMap, fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// One requirement of a [`Selector`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Requirement {
    /// `key=value` (or `key==value`).
    Equals(String, String),
    /// `key!=value`: also matches pods without the label, as in Kubernetes.
    NotEquals(String, String),
    /// `key in (a,b)`.
    In(String, Vec<String>),
    /// `key notin (a,b)`: also matches pods without the label.
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    NotExists(String),
}

/// A parsed label selector. Serializes as its canonical string; deserializes from a string or
/// from a map of `key: value` pairs (Kubernetes `matchLabels`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// A selector of `key=value` requirements (Kubernetes `matchLabels`).
    pub fn from_labels<'a>(
        labels: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for (k, v) in labels {
            check_key(k)?;
            check_value(v)?;
            requirements.push(Requirement::Equals(k.to_owned(), v.to_owned()));
        }
        Ok(Self { requirements })
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether a pod with these labels is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => !labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

fn check_name(what: &str, s: &str) -> Result<(), String> {
    let ok_chars = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let ends_ok = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars().last().is_some_and(|c| c.is_ascii_alphanumeric());
    if s.is_empty() || s.len() > 63 || !ok_chars || !ends_ok {
        return Err(format!(
            "invalid label {what} {s:?}: at most 63 characters of [A-Za-z0-9._-], starting and ending alphanumeric"
        ));
    }
    Ok(())
}

fn check_key(k: &str) -> Result<(), String> {
    match k.rsplit_once('/') {
        Some((prefix, name)) => {
            let prefix_ok = !prefix.is_empty()
                && prefix.len() <= 253
                && prefix.split('.').all(|p| {
                    !p.is_empty()
                        && p.chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                });
            if !prefix_ok {
                return Err(format!(
                    "invalid label key prefix {prefix:?}: must be a DNS subdomain"
                ));
            }
            check_name("key", name)
        }
        None => check_name("key", k),
    }
}

fn check_value(v: &str) -> Result<(), String> {
    if v.is_empty() {
        Ok(())
    } else {
        check_name("value", v)
    }
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err("unbalanced ')'".into());
                }
            }
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced '('".into());
    }
    parts.push(&s[start..]);
    Ok(parts)
}

fn parse_set(rest: &str) -> Result<Vec<String>, String> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected a set like (a,b), got {rest:?}"))?;
    let values: Vec<String> = inner.split(',').map(|v| v.trim().to_owned()).collect();
    for v in &values {
        check_value(v)?;
    }
    Ok(values)
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    let p = part.trim();
    if p.is_empty() {
        return Err("empty requirement (stray comma?)".into());
    }
    if let Some(k) = p.strip_prefix('!') {
        let k = k.trim();
        check_key(k)?;
        return Ok(Requirement::NotExists(k.to_owned()));
    }
    for (op, neg) in [("!=", true), ("==", false), ("=", false)] {
        if let Some((k, v)) = p.split_once(op) {
            let (k, v) = (k.trim(), v.trim());
            check_key(k)?;
            check_value(v)?;
            return Ok(if neg {
                Requirement::NotEquals(k.into(), v.into())
            } else {
                Requirement::Equals(k.into(), v.into())
            });
        }
    }
    let mut words = p.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or_default();
    match words.next().map(str::trim_start) {
        None => {
            check_key(key)?;
            Ok(Requirement::Exists(key.to_owned()))
        }
        Some(rest) => {
            check_key(key)?;
            if let Some(set) = rest.strip_prefix("notin") {
                Ok(Requirement::NotIn(key.into(), parse_set(set)?))
            } else if let Some(set) = rest.strip_prefix("in") {
                Ok(Requirement::In(key.into(), parse_set(set)?))
            } else {
                Err(format!(
                    "expected =, ==, !=, in or notin after {key:?}, got {rest:?}"
                ))
            }
        }
    }
}

impl FromStr for Selector {
    type Err = String;
    /// Parses `k=v,k2!=v2,k3 in (a,b),!k4`. Errors say which requirement is wrong and why.
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        let requirements = split_top_level(s)
            .and_then(|parts| parts.into_iter().map(parse_requirement).collect())
            .map_err(|e| format!("malformed label selector {s:?}: {e}"))?;
        Ok(Self { requirements })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match r {
                Requirement::Equals(k, v) => write!(f, "{k}={v}")?,
                Requirement::NotEquals(k, v) => write!(f, "{k}!={v}")?,
                Requirement::In(k, vs) => write!(f, "{k} in ({})", vs.join(","))?,
                Requirement::NotIn(k, vs) => write!(f, "{k} notin ({})", vs.join(","))?,
                Requirement::Exists(k) => write!(f, "{k}")?,
                Requirement::NotExists(k) => write!(f, "!{k}")?,
            }
        }
        Ok(())
    }
}

impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Str(String),
            Map(BTreeMap<String, String>),
        }
        match Form::deserialize(d).map_err(|_| {
            de::Error::custom(
                "expected a label selector string like \"app=x,tier=y\" or a map of labels",
            )
        })? {
            Form::Str(s) => s.parse().map_err(de::Error::custom),
            Form::Map(m) => Selector::from_labels(m.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .map_err(de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_and_matches_every_operator() {
        let s: Selector = "app=decode, tier!=db,env in (prod, staging),!canary,nvidia.com/gpu"
            .parse()
            .unwrap();
        assert_eq!(s.requirements().len(), 5);
        let pod = labels(&[("app", "decode"), ("env", "prod"), ("nvidia.com/gpu", "1")]);
        assert!(s.matches(&pod));
        assert!(!s.matches(&labels(&[
            ("app", "decode"),
            ("env", "dev"),
            ("nvidia.com/gpu", "1")
        ])));
        assert!(!s.matches(&labels(&[
            ("app", "decode"),
            ("env", "prod"),
            ("nvidia.com/gpu", "1"),
            ("canary", "")
        ])));
        assert_eq!(
            s.to_string(),
            "app=decode,tier!=db,env in (prod,staging),!canary,nvidia.com/gpu"
        );
        let n: Selector = "env notin (prod)".parse().unwrap();
        assert!(n.matches(&labels(&[])));
        assert!(!n.matches(&labels(&[("env", "prod")])));
    }

    #[test]
    fn rejects_malformed_selectors_with_a_reason() {
        for bad in [
            "app=",
            "=x",
            "app=a b",
            "a,,b",
            "env in (a",
            "env in a",
            "app=x)",
            "-bad=x",
            "env within (a)",
        ] {
            let e = bad.parse::<Selector>();
            // "app=" is a valid selector for an empty value in Kubernetes.
            if bad == "app=" {
                assert!(e.is_ok());
                continue;
            }
            let e = e.unwrap_err();
            assert!(e.contains("malformed label selector"), "{bad}: {e}");
        }
    }

    #[test]
    fn deserializes_from_string_or_map() {
        let s: Selector = serde_json::from_str(r#"{"app.kubernetes.io/name": "nats"}"#).unwrap();
        assert_eq!(s.to_string(), "app.kubernetes.io/name=nats");
        let s: Selector = serde_json::from_str(r#""app=x""#).unwrap();
        assert_eq!(s.to_string(), "app=x");
        assert!(serde_json::from_str::<Selector>("42").is_err());
    }
}
