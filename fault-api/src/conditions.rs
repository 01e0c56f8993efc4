//! Steady-state conditions of a fault: [`Preflight`] checks that must hold before it starts,
//! and [`AbortConditions`] that end it (state `aborted`) when the system breaks more than the
//! experiment allows. Both are checked by the agent (or the API), never by the user's test.
//!
//! A probe **fails** on a connect error, a timeout, or a status outside 200-399 (outside
//! `expect_status` when given). Redirects are not followed: a 3xx answer counts as success.
use serde::{Deserialize, Serialize};

use crate::{FaultDuration, FieldError, Percent};

/// Checks that must hold before a fault is applied. A fault whose pre-flight fails is not
/// applied: the API refuses it (412, `preflight_failed`) naming the check and what it measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Preflight {
    /// Every target pod must be ready. Single host: its network namespace is known and each
    /// of its host-side veths is up with carrier (`IFF_UP` and `IFF_RUNNING`), i.e. both ends
    /// of the veth are up. At least one target pod must exist.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub targets_ready: bool,
    /// At least this many target pods must be ready (as for `targets_ready`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ready_targets: Option<u32>,
    /// An HTTP probe that must answer once, with `expect_status` (else any 2xx/3xx).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
    /// Cluster mode only: `min_ready_targets` is compared with this workload's
    /// `status.readyReplicas` instead of the ready target pods: `deployment/NAME` or
    /// `statefulset/NAME`, in the fault's namespace. Refused on a single host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
}

/// A workload a pre-flight check reads: (`deployment` or `statefulset`, name).
pub fn parse_workload(w: &str) -> Result<(&str, &str), FieldError> {
    match w.split_once('/') {
        Some((kind @ ("deployment" | "statefulset"), name))
            if !name.is_empty() && !name.contains('/') =>
        {
            Ok((kind, name))
        }
        _ => Err(FieldError::new(
            "preflight.workload",
            format!("must be deployment/NAME or statefulset/NAME, got {w:?}"),
        )),
    }
}

/// One HTTP GET.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    /// `http://` URL to GET.
    pub url: String,
    /// The status that counts as success; without it, any of 200-399.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
    /// How long one request may take (connect to end of headers); default 1 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<FaultDuration>,
    /// Send from this pod's network namespace (`namespace/name`, a pod the agent knows
    /// locally) instead of the agent's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_pod: Option<String>,
}

/// Conditions that end a live fault at once (recovered like a recover, state `aborted`, the
/// message naming the condition and its measured value). Checked while the fault is live.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AbortConditions {
    /// Abort when this probe's failure rate over `window` passes `max_failure_percent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpAbort>,
    /// Abort when this query's value passes its threshold for `for` (Prometheus instant query).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusAbort>,
}

/// An HTTP probe run every `interval`; judged once a whole `window` has been probed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpAbort {
    /// `http://` URL to GET.
    pub url: String,
    /// The status that counts as success; without it, any of 200-399.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
    /// How long one request may take (connect to end of headers); default 1 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<FaultDuration>,
    /// Send from this pod's network namespace (`namespace/name`, a pod the agent knows
    /// locally) instead of the agent's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_pod: Option<String>,
    /// Time between the starts of two probes; default 500 ms, at least 50 ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<FaultDuration>,
    /// Abort when more than this share of the probes in the window failed, percent in (0, 100].
    pub max_failure_percent: Percent,
    /// The sliding window the failure rate is measured over; default 30 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<FaultDuration>,
}

/// A Prometheus instant query (`GET <server>/api/v1/query`) compared with a threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrometheusAbort {
    /// The Prometheus server, `http://host:port`.
    pub server: String,
    /// PromQL; a scalar or an instant vector (with several series: the highest is compared
    /// with `above`, the lowest with `below`; no series: no data, not a breach).
    pub query: String,
    /// Breached while the value is above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    /// Breached while the value is below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
    /// Abort once the breach has held this long (every evaluation in between breached);
    /// without it, at the first breach.
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub hold: Option<FaultDuration>,
    /// Time between two evaluations; default 1 s, at least 50 ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<FaultDuration>,
}

/// The last measurement of one abort condition, shown on the fault while it is checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Measurement {
    /// `http` or `prometheus`.
    pub condition: String,
    /// HTTP: the failure rate in percent over the window; Prometheus: the query's value.
    /// Absent before the first judgement (or when the query returned no series).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Whether the condition is breached at this measurement.
    pub breached: bool,
    /// What was measured, in words (`3 of 12 probes failed over 3s`, `no data`, an error).
    pub detail: String,
    /// When it was measured.
    pub at: jiff::Timestamp,
}

/// The shortest probe interval.
pub const MIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// A URL the probes can use: `http://` and a host.
pub fn check_url(field: &str, url: &str) -> Result<(), FieldError> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        FieldError::new(
            field,
            format!("must be an http:// URL (https is not probed), got {url:?}"),
        )
    })?;
    if rest.is_empty() || rest.starts_with('/') || url.chars().any(char::is_whitespace) {
        return Err(FieldError::new(
            field,
            format!("must name a host, like http://198.18.0.10:8080/healthz, got {url:?}"),
        ));
    }
    Ok(())
}

fn check_interval(field: &str, d: Option<FaultDuration>) -> Result<(), FieldError> {
    match d {
        Some(d) if d.get() < MIN_INTERVAL => Err(FieldError::new(
            field,
            format!("must be at least 50ms, got {d}"),
        )),
        _ => Ok(()),
    }
}

impl HttpCheck {
    /// Default request timeout.
    pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

    fn validate(&self, field: &str) -> Result<(), FieldError> {
        check_url(&format!("{field}.url"), &self.url)?;
        if let Some(s) = self.expect_status
            && !(100..=599).contains(&s)
        {
            return Err(FieldError::new(
                format!("{field}.expect_status"),
                format!("must be an HTTP status in 100-599, got {s}"),
            ));
        }
        if let Some(p) = &self.from_pod {
            let ok = p
                .split_once('/')
                .is_some_and(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains('/'));
            if !ok {
                return Err(FieldError::new(
                    format!("{field}.from_pod"),
                    format!("must be namespace/name, got {p:?}"),
                ));
            }
        }
        Ok(())
    }

    /// Whether `status` counts as success.
    pub fn accepts(&self, status: u16) -> bool {
        match self.expect_status {
            Some(s) => s == status,
            None => (200..400).contains(&status),
        }
    }
}

impl Preflight {
    /// Checks the fields; errors name them under `preflight.`.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.min_ready_targets == Some(0) {
            return Err(FieldError::new(
                "preflight.min_ready_targets",
                "must be at least 1, got 0",
            ));
        }
        if let Some(h) = &self.http {
            h.validate("preflight.http")?;
        }
        if let Some(w) = &self.workload {
            parse_workload(w)?;
            if self.min_ready_targets.is_none() {
                return Err(FieldError::new(
                    "preflight.min_ready_targets",
                    "give the ready replicas the workload needs (preflight.workload is compared with it)",
                ));
            }
        }
        Ok(())
    }

    /// Whether any check is asked for.
    pub fn is_empty(&self) -> bool {
        !self.targets_ready
            && self.min_ready_targets.is_none()
            && self.http.is_none()
            && self.workload.is_none()
    }
}

impl HttpAbort {
    /// Default time between two probes.
    pub const DEFAULT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);
    /// Default window.
    pub const DEFAULT_WINDOW: std::time::Duration = std::time::Duration::from_secs(30);

    /// The interval, or its default.
    pub fn interval(&self) -> std::time::Duration {
        self.interval.map_or(Self::DEFAULT_INTERVAL, |d| d.get())
    }

    /// The window, or its default.
    pub fn window(&self) -> std::time::Duration {
        self.window.map_or(Self::DEFAULT_WINDOW, |d| d.get())
    }

    /// One probe of this condition.
    pub fn check(&self) -> HttpCheck {
        HttpCheck {
            url: self.url.clone(),
            expect_status: self.expect_status,
            timeout: self.timeout,
            from_pod: self.from_pod.clone(),
        }
    }
}

impl PrometheusAbort {
    /// Default time between two evaluations.
    pub const DEFAULT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

    /// The interval, or its default.
    pub fn interval(&self) -> std::time::Duration {
        self.interval.map_or(Self::DEFAULT_INTERVAL, |d| d.get())
    }

    /// Whether `value` breaches the threshold.
    pub fn breached(&self, value: f64) -> bool {
        self.above.is_some_and(|t| value > t) || self.below.is_some_and(|t| value < t)
    }
}

impl AbortConditions {
    /// Checks the fields; errors name them under `abort.`.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.http.is_none() && self.prometheus.is_none() {
            return Err(FieldError::new(
                "abort",
                "give http, prometheus, or both (or leave abort out)",
            ));
        }
        if let Some(h) = &self.http {
            h.check().validate("abort.http")?;
            check_interval("abort.http.interval", h.interval)?;
            if h.window() < h.interval() {
                return Err(FieldError::new(
                    "abort.http.window",
                    format!(
                        "must be at least the interval ({}), got {}",
                        humantime::format_duration(h.interval()),
                        humantime::format_duration(h.window())
                    ),
                ));
            }
        }
        if let Some(p) = &self.prometheus {
            check_url("abort.prometheus.server", &p.server)?;
            if p.query.trim().is_empty() {
                return Err(FieldError::new(
                    "abort.prometheus.query",
                    "must not be empty",
                ));
            }
            check_interval("abort.prometheus.interval", p.interval)?;
            let finite = |v: Option<f64>| v.is_none_or(f64::is_finite);
            if (p.above.is_none() && p.below.is_none()) || !finite(p.above) || !finite(p.below) {
                return Err(FieldError::new(
                    "abort.prometheus.above",
                    "give a finite threshold: above, below, or both",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_status_follows_expect_status() {
        let mut c = HttpCheck {
            url: "http://198.18.0.10:80/".into(),
            expect_status: None,
            timeout: None,
            from_pod: None,
        };
        assert!(c.accepts(200) && c.accepts(302) && !c.accepts(404) && !c.accepts(500));
        c.expect_status = Some(404);
        assert!(c.accepts(404) && !c.accepts(200));
    }

    #[test]
    fn errors_name_the_field() {
        let a: AbortConditions =
            serde_json::from_str(r#"{"http":{"url":"https://x","max_failure_percent":25}}"#)
                .unwrap();
        assert_eq!(a.validate().unwrap_err().field, "abort.http.url");
        let a: AbortConditions = serde_json::from_str(
            r#"{"http":{"url":"http://x","max_failure_percent":25,"interval":"1s","window":"500ms"}}"#,
        )
        .unwrap();
        assert_eq!(a.validate().unwrap_err().field, "abort.http.window");
        let a: AbortConditions =
            serde_json::from_str(r#"{"prometheus":{"server":"http://p:9090","query":"up"}}"#)
                .unwrap();
        assert_eq!(a.validate().unwrap_err().field, "abort.prometheus.above");
        let p: Preflight =
            serde_json::from_str(r#"{"http":{"url":"http://x","from_pod":"nope"}}"#).unwrap();
        assert_eq!(p.validate().unwrap_err().field, "preflight.http.from_pod");
        assert!(AbortConditions::default().validate().is_err());
    }

    #[test]
    fn for_is_the_json_name_of_the_hold() {
        let p: PrometheusAbort = serde_json::from_str(
            r#"{"server":"http://p:9090","query":"x","above":0.25,"for":"30s"}"#,
        )
        .unwrap();
        assert_eq!(p.hold.map(|d| d.as_millis()), Some(30_000));
        assert!(p.breached(0.3) && !p.breached(0.25));
    }
}
