//! `faultctl inject`'s pre-flight and abort flags, to the spec's `preflight` and `abort`.
use clap::Args;
use fault_api::{
    FaultDuration, Percent,
    conditions::{AbortConditions, HttpAbort, HttpCheck, Preflight, PrometheusAbort},
};

/// Checks before the fault starts, and conditions that abort it.
#[derive(Args, Default)]
pub struct ConditionArgs {
    /// Pre-flight: every target pod must be ready (single host: netns found, host veth up).
    #[arg(long)]
    preflight_targets_ready: bool,
    /// Pre-flight: at least this many target pods must be ready.
    #[arg(long, value_name = "N")]
    preflight_min_ready: Option<u32>,
    /// Pre-flight (cluster): compare --preflight-min-ready with this workload's readyReplicas
    /// (deployment/NAME or statefulset/NAME).
    #[arg(long, value_name = "KIND/NAME", requires = "preflight_min_ready")]
    preflight_workload: Option<String>,
    /// Pre-flight: this URL must answer (2xx/3xx, or --preflight-http-status).
    #[arg(long, value_name = "URL")]
    preflight_http: Option<String>,
    /// Pre-flight: the status --preflight-http must answer with.
    #[arg(long, value_name = "CODE", requires = "preflight_http")]
    preflight_http_status: Option<u16>,
    /// Pre-flight: send --preflight-http from this pod's network namespace (namespace/name).
    #[arg(long, value_name = "NS/POD", requires = "preflight_http")]
    preflight_http_from: Option<String>,

    /// Abort when this URL's probes fail too often (see --abort-max-failure-percent).
    #[arg(long, value_name = "URL", requires = "abort_max_failure_percent")]
    abort_http: Option<String>,
    /// Abort when more than this share of --abort-http's probes failed over --abort-window.
    #[arg(long, value_name = "PCT", requires = "abort_http")]
    abort_max_failure_percent: Option<Percent>,
    /// The window the failure rate is measured over (default 30s).
    #[arg(long, value_name = "DUR", requires = "abort_http")]
    abort_window: Option<FaultDuration>,
    /// Time between two probes or queries (default 500ms for HTTP, 1s for Prometheus).
    #[arg(long, value_name = "DUR")]
    abort_interval: Option<FaultDuration>,
    /// One probe's timeout (default 1s).
    #[arg(long, value_name = "DUR", requires = "abort_http")]
    abort_timeout: Option<FaultDuration>,
    /// The status --abort-http must answer with (default any 2xx/3xx).
    #[arg(long, value_name = "CODE", requires = "abort_http")]
    abort_http_status: Option<u16>,
    /// Send --abort-http from this pod's network namespace (namespace/name).
    #[arg(long, value_name = "NS/POD", requires = "abort_http")]
    abort_http_from: Option<String>,
    /// Abort on a Prometheus query: the server (http://host:9090), with --abort-query.
    #[arg(long, value_name = "URL", requires = "abort_query")]
    abort_prometheus: Option<String>,
    /// The PromQL instant query compared with --abort-above / --abort-below.
    #[arg(long, value_name = "PROMQL", requires = "abort_prometheus")]
    abort_query: Option<String>,
    /// Breached while the query's value is above this.
    #[arg(
        long,
        value_name = "X",
        requires = "abort_prometheus",
        allow_hyphen_values = true
    )]
    abort_above: Option<f64>,
    /// Breached while the query's value is below this.
    #[arg(
        long,
        value_name = "X",
        requires = "abort_prometheus",
        allow_hyphen_values = true
    )]
    abort_below: Option<f64>,
    /// Abort once the query's breach has held this long (default: at once).
    #[arg(long, value_name = "DUR", requires = "abort_prometheus")]
    abort_for: Option<FaultDuration>,
}

impl ConditionArgs {
    /// The spec's `preflight`, when any pre-flight flag is given.
    pub fn preflight(&self) -> Option<Preflight> {
        let p = Preflight {
            targets_ready: self.preflight_targets_ready,
            min_ready_targets: self.preflight_min_ready,
            http: self.preflight_http.clone().map(|url| HttpCheck {
                url,
                expect_status: self.preflight_http_status,
                timeout: None,
                from_pod: self.preflight_http_from.clone(),
            }),
            workload: self.preflight_workload.clone(),
        };
        (!p.is_empty()).then_some(p)
    }

    /// The spec's `abort`, when an abort condition is given.
    pub fn abort(&self) -> Option<AbortConditions> {
        let http = match (&self.abort_http, self.abort_max_failure_percent) {
            (Some(url), Some(max)) => Some(HttpAbort {
                url: url.clone(),
                expect_status: self.abort_http_status,
                timeout: self.abort_timeout,
                from_pod: self.abort_http_from.clone(),
                interval: self.abort_interval,
                max_failure_percent: max,
                window: self.abort_window,
            }),
            _ => None,
        };
        let prometheus = match (&self.abort_prometheus, &self.abort_query) {
            (Some(server), Some(query)) => Some(PrometheusAbort {
                server: server.clone(),
                query: query.clone(),
                above: self.abort_above,
                below: self.abort_below,
                hold: self.abort_for,
                interval: self.abort_interval,
            }),
            _ => None,
        };
        (http.is_some() || prometheus.is_some()).then_some(AbortConditions { http, prometheus })
    }
}

/// The flag behind a `preflight.` or `abort.` field, for errors.
pub fn flag_of(field: &str) -> Option<&'static str> {
    Some(match field {
        "preflight.min_ready_targets" => "--preflight-min-ready",
        "preflight.http.url" => "--preflight-http",
        "preflight.http.expect_status" => "--preflight-http-status",
        "preflight.http.from_pod" => "--preflight-http-from",
        "preflight.workload" => "--preflight-workload",
        "abort.http.url" => "--abort-http",
        "abort.http.window" => "--abort-window",
        "abort.http.interval" | "abort.prometheus.interval" => "--abort-interval",
        "abort.http.expect_status" => "--abort-http-status",
        "abort.http.from_pod" => "--abort-http-from",
        "abort.prometheus.server" => "--abort-prometheus",
        "abort.prometheus.query" => "--abort-query",
        "abort.prometheus.above" => "--abort-above",
        _ => return None,
    })
}
