//! Limits and the protection override, judged the same way in every mode (standalone core,
//! cluster API, controller, dry run): the longest fault (cluster-wide `--max-duration`, per
//! namespace `--max-duration-for NS=DUR`, which can only tighten it), the most targets
//! (`--max-targets`, against the most pods the fault's blast radius can pick), and whether a
//! fault's `override_protection` is honoured (`--allow-protection-override`).
//!
//! A fault without a duration is capped at the limit that applies to its namespace, as it
//! always was with `--max-duration`; when that is a `--max-duration-for` limit, its warnings
//! say so.
use std::{borrow::Cow, collections::BTreeMap, time::Duration};

use fault_api::{FaultSpec, FieldError};

use crate::{blast, pods::Pod, protect::Protection, resolve};

/// The configured limits (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guards {
    /// Per namespace: the longest fault there (at most `--max-duration` still applies).
    pub max_duration_for: BTreeMap<String, Duration>,
    /// The most target pods one fault may act on; `None`: no limit.
    pub max_targets: Option<usize>,
    /// Honour `override_protection` on faults.
    pub allow_protection_override: bool,
}

/// What the guards say about one fault.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// Every guard tripped, in the order a create checks them (empty: accepted).
    pub refusals: Vec<FieldError>,
    /// How long the fault lasts: its duration, or the limit it is capped at.
    pub duration: Duration,
    /// Things the fault should say (a cap applied).
    pub notes: Vec<String>,
    /// The fault acts on protected resources through an honoured override (audit it).
    pub override_used: bool,
    /// What the honoured override set aside: the refusal each protection would have given.
    pub overridden: Vec<FieldError>,
    /// The pods the targets match now, protected ones left out unless overridden.
    pub candidates: Vec<fault_api::PodRef>,
}

/// Parses `NS=DUR` (`--max-duration-for`), e.g. `team-a=10m`.
pub fn parse_namespace_duration(s: &str) -> Result<(String, Duration), String> {
    let (ns, d) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAMESPACE=DURATION (e.g. team-a=10m), got {s:?}"))?;
    fault_api::spec::check_namespace("namespace", ns).map_err(|e| e.to_string())?;
    let d: fault_api::FaultDuration = d.parse().map_err(|e| format!("duration: {e}"))?;
    Ok((ns.to_owned(), d.get()))
}

impl Guards {
    /// The longest fault in `ns` and where that limit comes from (a flag as written).
    pub fn duration_limit(&self, max: Duration, ns: &str) -> (Duration, String) {
        let fmt = |d| humantime::format_duration(d).to_string();
        match self.max_duration_for.get(ns) {
            Some(d) if *d < max => (*d, format!("--max-duration-for {ns}={}", fmt(*d))),
            _ => (max, format!("--max-duration {}", fmt(max))),
        }
    }

    /// The protection a fault resolves against: none when its override is honoured.
    pub fn protection_for<'a>(
        &self,
        spec: &FaultSpec,
        base: &'a Protection,
    ) -> Cow<'a, Protection> {
        if self.allow_protection_override && spec.override_protection.is_some() {
            Cow::Owned(Protection::default())
        } else {
            Cow::Borrowed(base)
        }
    }

    /// Judges `spec` against `pods`, `protection` and the cluster-wide longest fault `max`.
    /// Never fails: what it trips is in [`Verdict::refusals`].
    pub fn judge(
        &self,
        spec: &FaultSpec,
        pods: &[Pod],
        protection: &Protection,
        max: Duration,
    ) -> Verdict {
        let mut v = Verdict::default();
        match (
            protection.check_targets(spec, pods),
            &spec.override_protection,
        ) {
            (Ok(()), _) => {}
            (Err(e), Some(_)) if self.allow_protection_override => {
                v.override_used = true;
                v.overridden.push(e);
            }
            (Err(e), Some(_)) => v.refusals.push(FieldError::new(
                "override_protection",
                format!(
                    "this agent was not started with --allow-protection-override, so the override is refused: {e}"
                ),
            )),
            (Err(e), None) => v.refusals.push(e),
        }
        let (limit, source) = self.duration_limit(max, &spec.namespace);
        v.duration = match spec.duration {
            Some(d) if d.get() > limit => {
                v.refusals.push(FieldError::new(
                    "duration",
                    format!(
                        "must be at most {} (limit {source}, for namespace {}), got {d}",
                        humantime::format_duration(limit),
                        spec.namespace
                    ),
                ));
                limit
            }
            Some(d) => d.get(),
            None => {
                // The cluster-wide cap is the long-standing default (`expires_at` shows it);
                // a namespace's own limit is said.
                if self.max_duration_for.contains_key(&spec.namespace) && limit < max {
                    v.notes.push(format!(
                        "no duration given: capped at {} ({source})",
                        humantime::format_duration(limit)
                    ));
                }
                limit
            }
        };
        let effective = self.protection_for(spec, protection);
        v.candidates = resolve::resolve(spec, pods, &effective).targets;
        let n = v.candidates.len();
        if !spec.mode.is_all() && n == 0 {
            v.refusals.push(FieldError::new(
                "mode",
                format!(
                    "mode {} chooses among the pods the targets match, and none matches in namespace {} now",
                    spec.mode, spec.namespace
                ),
            ));
        }
        let most = blast::upper_bound(spec.mode, spec.value, n);
        if let Some(max_targets) = self.max_targets
            && most > max_targets
        {
            v.refusals.push(FieldError::new(
                "mode",
                format!(
                    "would act on up to {most} pods (mode {}, {n} match), over the limit of {max_targets} (--max-targets {max_targets}); narrow the targets or pick fewer with mode and value",
                    spec.mode
                ),
            ));
        }
        v
    }
}

/// Records one use of a protection override in the audit log ([`crate::audit::record`]: the
/// `audit` log target and `--audit-log`), as a record of its own: method
/// `override-protection`, path `/v1/faults/<fault>`, who (`by`; `unknown` when not known), the
/// namespace and fault id, and in `detail` the override's `reason` and the protections
/// `overridden` (each as the refusal it would have given: `field`, `message`). Every use goes
/// through here.
pub fn audit_override(
    spec: &FaultSpec,
    by: Option<&crate::audit::Actor>,
    fault: &str,
    overridden: &[FieldError],
) {
    use crate::audit::{Actor, Record};
    let unknown = Actor::internal("unknown");
    let mut r = Record::by(
        by.unwrap_or(&unknown),
        "override-protection",
        &format!("/v1/faults/{fault}"),
    );
    r.verb = Some("create".into());
    r.namespace = Some(spec.namespace.clone());
    r.fault_id = Some(fault.to_owned());
    let reason = spec
        .override_protection
        .as_ref()
        .map_or("", |o| o.reason.as_str());
    r.detail = Some(serde_json::json!({
        "reason": reason,
        "overridden": overridden
            .iter()
            .map(|e| serde_json::json!({"field": e.field, "message": e.message}))
            .collect::<Vec<_>>(),
    }));
    crate::audit::record(&r);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str) -> Pod {
        Pod {
            namespace: ns.into(),
            name: name.into(),
            labels: Default::default(),
            node: None,
            ips: vec!["198.18.0.9".parse().unwrap()],
            host_ifs: vec![],
            netns: None,
            pod_ifs: vec![],
            problem: None,
            remote: false,
        }
    }

    fn spec(ns: &str) -> FaultSpec {
        let mut s = FaultSpec::new(ns);
        s.pod_prefix = Some("w".into());
        s.partition = Some(fault_api::PartitionMode::Packets);
        s
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn namespace_durations_parse_or_name_the_shape() {
        assert_eq!(
            parse_namespace_duration("team-a=10m").unwrap(),
            ("team-a".into(), Duration::from_secs(600))
        );
        assert!(
            parse_namespace_duration("team-a")
                .unwrap_err()
                .contains("NAMESPACE=DURATION")
        );
        assert!(
            parse_namespace_duration("Team=1m")
                .unwrap_err()
                .contains("RFC 1123")
        );
        assert!(
            parse_namespace_duration("a=soon")
                .unwrap_err()
                .starts_with("duration")
        );
    }

    #[test]
    fn each_limit_names_itself_its_value_and_source() {
        let g = Guards {
            max_duration_for: [("team-a".to_string(), Duration::from_secs(600))].into(),
            max_targets: Some(2),
            allow_protection_override: false,
        };
        let pods = [
            pod("team-a", "w-0"),
            pod("team-a", "w-1"),
            pod("team-a", "w-2"),
        ];
        let p = Protection::default();
        let mut s = spec("team-a");
        s.duration = Some("20m".parse().unwrap());
        let v = g.judge(&s, &pods, &p, HOUR);
        assert_eq!(v.refusals[0].field, "duration");
        assert!(
            v.refusals[0]
                .message
                .contains("--max-duration-for team-a=10m"),
            "{:?}",
            v.refusals
        );
        assert_eq!(v.refusals[1].field, "mode");
        assert!(
            v.refusals[1].message.contains("--max-targets 2"),
            "{:?}",
            v.refusals
        );
        // Elsewhere the cluster-wide limit; without a duration: capped and said.
        let mut s = spec("team-b");
        s.duration = Some("2h".parse().unwrap());
        let v = g.judge(&s, &[], &p, HOUR);
        assert!(
            v.refusals[0].message.contains("--max-duration 1h"),
            "{:?}",
            v.refusals
        );
        let mut s = spec("team-a");
        s.mode = fault_api::TargetMode::Fixed;
        s.value = Some(2);
        let v = g.judge(&s, &pods, &p, HOUR);
        assert!(v.refusals.is_empty(), "{:?}", v.refusals);
        assert_eq!(v.duration, Duration::from_secs(600));
        assert!(v.notes[0].contains("capped at 10m"), "{:?}", v.notes);
    }

    #[test]
    fn an_override_is_honoured_only_when_allowed() {
        let p = Protection::with_defaults(None, &["team-a".into()], &[], &[]);
        let mut s = spec("team-a");
        s.override_protection = Some(fault_api::ProtectionOverride {
            reason: "drill".into(),
        });
        let mut g = Guards::default();
        let v = g.judge(&s, &[pod("team-a", "w-0")], &p, HOUR);
        assert_eq!(v.refusals[0].field, "override_protection");
        assert!(
            v.refusals[0]
                .message
                .contains("--allow-protection-override")
        );
        g.allow_protection_override = true;
        let v = g.judge(&s, &[pod("team-a", "w-0")], &p, HOUR);
        assert!(v.refusals.is_empty() && v.override_used, "{:?}", v.refusals);
        assert_eq!(v.candidates.len(), 1);
    }
}
