//! One HTTP GET or one Prometheus instant query, blocking (run on a blocking thread, never a
//! tokio worker), optionally from a pod's network namespace.
use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result, anyhow, bail};
use fault_api::conditions::HttpCheck;

/// A blocking client that answers with any status (no redirects followed, no proxy from the
/// environment, a fresh connection each time: a probe measures the path, not a pool);
/// `https://` URLs are checked against the system's roots.
fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .max_idle_connections(0)
        .proxy(None)
        .timeout_global(Some(timeout))
        .tls_config(fault_api::client::tls_config(None))
        .build()
        .into()
}

/// GETs `check.url` (from the network namespace `netns` when given); `Ok(status)` when an
/// answer came, `Err` naming the connect error or timeout.
pub fn http_status(check: &HttpCheck, netns: Option<&Path>) -> Result<u16> {
    let timeout = check
        .timeout
        .map_or(HttpCheck::DEFAULT_TIMEOUT, |d| d.get());
    let get = || -> Result<u16> {
        let res = agent(timeout)
            .get(&check.url)
            .call()
            .map_err(|e| anyhow!("{e}"))?;
        Ok(res.status().as_u16())
    };
    match netns {
        Some(ns) => crate::verify::probe::in_netns(ns, get)?,
        None => get(),
    }
}

/// One probe as a success or a failure with why, per [`HttpCheck::accepts`].
pub fn http_ok(check: &HttpCheck, netns: Option<&Path>) -> Result<u16, String> {
    match http_status(check, netns) {
        Ok(s) if check.accepts(s) => Ok(s),
        Ok(s) => Err(format!("status {s}")),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// Runs the instant query `query` on the Prometheus at `server`: `Ok(None)` when it returned
/// no series; with several, the highest (`highest`) or lowest value.
pub fn prometheus_value(
    server: &str,
    query: &str,
    highest: bool,
    timeout: Duration,
) -> Result<Option<f64>> {
    let url = format!("{}/api/v1/query", server.trim_end_matches('/'));
    let mut res = agent(timeout)
        .get(&url)
        .query("query", query)
        .call()
        .with_context(|| format!("querying {url}"))?;
    let status = res.status().as_u16();
    let body: serde_json::Value = res
        .body_mut()
        .read_json()
        .with_context(|| format!("reading the answer of {url} (status {status})"))?;
    if body["status"] != "success" {
        bail!(
            "{url} answered {status}: {}",
            body["error"].as_str().unwrap_or("no error message")
        );
    }
    values(&body["data"]).map(|v| pick(v, highest))
}

/// The sample values of a query result (`scalar` or `vector`).
fn values(data: &serde_json::Value) -> Result<Vec<f64>> {
    let sample = |v: &serde_json::Value| -> Result<f64> {
        v[1].as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("a sample without a number: {v}"))
    };
    match data["resultType"].as_str() {
        Some("scalar") => Ok(vec![sample(&data["result"])?]),
        Some("vector") => data["result"]
            .as_array()
            .map(|a| a.iter().map(|s| sample(&s["value"])).collect())
            .unwrap_or(Ok(vec![])),
        other => bail!("the query must give a scalar or an instant vector, got {other:?}"),
    }
}

fn pick(v: Vec<f64>, highest: bool) -> Option<f64> {
    let v = v.into_iter().filter(|x| !x.is_nan());
    if highest {
        v.reduce(f64::max)
    } else {
        v.reduce(f64::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_results_give_their_extreme_value() {
        let vector: serde_json::Value = serde_json::from_str(
            r#"{"resultType":"vector","result":[{"metric":{},"value":[1,"0.5"]},{"metric":{"a":"b"},"value":[1,"2"]}]}"#,
        )
        .unwrap();
        assert_eq!(pick(values(&vector).unwrap(), true), Some(2.0));
        assert_eq!(pick(values(&vector).unwrap(), false), Some(0.5));
        let scalar: serde_json::Value =
            serde_json::from_str(r#"{"resultType":"scalar","result":[1,"7"]}"#).unwrap();
        assert_eq!(values(&scalar).unwrap(), vec![7.0]);
        let empty: serde_json::Value =
            serde_json::from_str(r#"{"resultType":"vector","result":[]}"#).unwrap();
        assert_eq!(pick(values(&empty).unwrap(), true), None);
        let matrix: serde_json::Value =
            serde_json::from_str(r#"{"resultType":"matrix","result":[]}"#).unwrap();
        assert!(values(&matrix).is_err());
    }
}
