//! Guards a fault carries or is judged by: its blast radius ([`TargetMode`] and its value, like
//! Chaos Mesh's `mode`/`value`), an audited [`ProtectionOverride`], and what a dry run answers
//! ([`FaultPlan`]).
use std::{collections::BTreeMap, fmt, net::IpAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{FaultSpec, FieldError, PodRef};

/// Largest `value` of `mode: fixed` (pods).
pub const MAX_FIXED: u32 = 100_000;

/// How many of the pods the targets match a fault acts on. The choice is made once, when the
/// fault is created, and kept: see the README's "Limits, blast radius and dry run".
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum TargetMode {
    /// Every matching pod (the default).
    #[default]
    All,
    /// One matching pod, chosen at random.
    One,
    /// `value` matching pods (all of them if fewer match), chosen at random.
    Fixed,
    /// `value` percent of the matching pods (rounded down, at least one), chosen at random.
    FixedPercent,
    /// A random count from 1 to `value` percent of the matching pods (rounded down, at least
    /// one), the count uniform, then the pods chosen at random.
    RandomMaxPercent,
}

impl TargetMode {
    /// Whether this is [`TargetMode::All`] (no choice to make or keep).
    pub fn is_all(&self) -> bool {
        *self == Self::All
    }
}

impl std::str::FromStr for TargetMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(Self::All),
            "one" => Ok(Self::One),
            "fixed" => Ok(Self::Fixed),
            "fixed-percent" => Ok(Self::FixedPercent),
            "random-max-percent" => Ok(Self::RandomMaxPercent),
            _ => Err(format!(
                "must be one of all, one, fixed, fixed-percent, random-max-percent, got {s:?}"
            )),
        }
    }
}

impl fmt::Display for TargetMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::All => "all",
            Self::One => "one",
            Self::Fixed => "fixed",
            Self::FixedPercent => "fixed-percent",
            Self::RandomMaxPercent => "random-max-percent",
        })
    }
}

/// Checks `mode` against its `value` (fields `mode` and `value`): `all` and `one` take none,
/// `fixed` a pod count in [1, [`MAX_FIXED`]], the percent modes a percent in [1, 100].
pub fn check_blast_radius(mode: TargetMode, value: Option<u32>) -> Result<(), FieldError> {
    let range = match mode {
        TargetMode::All | TargetMode::One => {
            return match value {
                None => Ok(()),
                Some(v) => Err(FieldError::new(
                    "value",
                    format!("mode {mode} takes no value, got {v}"),
                )),
            };
        }
        TargetMode::Fixed => (1, MAX_FIXED, "a pod count"),
        TargetMode::FixedPercent | TargetMode::RandomMaxPercent => (1, 100, "a percent"),
    };
    match value {
        Some(v) if (range.0..=range.1).contains(&v) => Ok(()),
        Some(v) => Err(FieldError::new(
            "value",
            format!(
                "mode {mode} needs {} in [{}, {}], got {v}",
                range.2, range.0, range.1
            ),
        )),
        None => Err(FieldError::new(
            "value",
            format!(
                "mode {mode} needs a value: {} in [{}, {}]",
                range.2, range.0, range.1
            ),
        )),
    }
}

/// An explicit request to act on protected resources. Honoured only by an agent started with
/// `--allow-protection-override`; every use is logged under the `audit` tracing target with the
/// caller's address and `reason`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProtectionOverride {
    /// Why: 1 to 1024 characters, recorded in the audit log.
    pub reason: String,
}

impl ProtectionOverride {
    /// The reason must be 1 to 1024 characters (field `override_protection.reason`).
    pub fn validate(&self) -> Result<(), FieldError> {
        let n = self.reason.trim().chars().count();
        if n == 0 || self.reason.chars().count() > 1024 {
            return Err(FieldError::new(
                "override_protection.reason",
                format!("must be 1 to 1024 characters (not blank), got {n}"),
            ));
        }
        Ok(())
    }
}

/// The blast-radius choice of a fault: how many of the matching pods it acts on, and which.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BlastRadius {
    pub mode: TargetMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<u32>,
    /// Pods the targets matched (protected ones left out) when the choice was made.
    pub candidates: u32,
    /// The chosen pods, `namespace/name`, sorted. A chosen pod that goes away is not
    /// replaced.
    pub chosen: Vec<String>,
}

/// What one node would do with a fault (dry run).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NodePlan {
    /// Target pods on this node, `namespace/name`.
    pub targets: Vec<String>,
    /// Peer pods on this node, `namespace/name`.
    pub peers: Vec<String>,
}

/// The answer of a dry run (`POST /v1/faults?dryRun=true`, `faultctl inject --dry-run`):
/// what the fault would resolve to, and every guard it would trip. Nothing is applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FaultPlan {
    pub spec: FaultSpec,
    /// Whether a create would be accepted (`refusals` is empty).
    pub accepted: bool,
    /// Every guard the fault trips (protection, limits, a disallowed override), each as
    /// `field: reason`, in the order a create checks them.
    pub refusals: Vec<String>,
    /// Target pods it would act on (after the blast radius).
    pub targets: Vec<PodRef>,
    /// Peer pods (when chosen by selector or namespace).
    pub peers: Vec<PodRef>,
    /// Peer CIDRs as the datapath would hold them.
    #[schemars(with = "Vec<String>")]
    pub peer_cidrs: Vec<IpNet>,
    /// Addresses carved out of the peers, by reason.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub protected: BTreeMap<String, Vec<IpAddr>>,
    /// Targets and peers per node (single host: one entry named after the host; pods with
    /// no known node under `""`).
    pub nodes: BTreeMap<String, NodePlan>,
    /// `FL_RULES` entries the compiler would install for this fault on this host; absent on
    /// the cluster API (each node agent compiles its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<u32>,
    /// The blast-radius choice a create would make now (random modes draw anew each time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blast_radius: Option<BlastRadius>,
    /// How long the fault would last (its duration, or the limit it is capped at), e.g. `1h`.
    pub duration: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print_the_same_names() {
        for m in [
            TargetMode::All,
            TargetMode::One,
            TargetMode::Fixed,
            TargetMode::FixedPercent,
            TargetMode::RandomMaxPercent,
        ] {
            assert_eq!(m.to_string().parse::<TargetMode>(), Ok(m));
        }
        let e = "half".parse::<TargetMode>().unwrap_err();
        assert!(e.contains("random-max-percent"), "{e}");
    }

    #[test]
    fn blast_radius_errors_name_the_field_and_the_range() {
        use TargetMode::*;
        for (mode, value, ok) in [
            (All, None, true),
            (One, None, true),
            (One, Some(1), false),
            (Fixed, Some(1), true),
            (Fixed, Some(0), false),
            (Fixed, None, false),
            (Fixed, Some(MAX_FIXED + 1), false),
            (FixedPercent, Some(100), true),
            (FixedPercent, Some(101), false),
            (RandomMaxPercent, Some(0), false),
            (RandomMaxPercent, Some(50), true),
        ] {
            let r = check_blast_radius(mode, value);
            assert_eq!(r.is_ok(), ok, "{mode} {value:?}: {r:?}");
            if let Err(e) = r {
                assert_eq!(e.field, "value");
                assert!(e.message.contains(&format!("mode {mode}")), "{}", e.message);
            }
        }
        let e = check_blast_radius(FixedPercent, Some(101)).unwrap_err();
        assert!(e.message.contains("[1, 100]"), "{}", e.message);
        let e = check_blast_radius(Fixed, None).unwrap_err();
        assert!(e.message.contains("[1, 100000]"), "{}", e.message);
    }

    #[test]
    fn an_override_needs_a_reason() {
        let e = ProtectionOverride { reason: " ".into() }
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "override_protection.reason");
        assert!(e.message.contains("1 to 1024"), "{}", e.message);
        ProtectionOverride {
            reason: "DNS failover drill, change 4711".into(),
        }
        .validate()
        .unwrap();
    }
}
