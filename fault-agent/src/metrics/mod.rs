//! Prometheus metrics at `GET /metrics` (OpenMetrics text, `prometheus-client`), on every agent
//! mode, behind the API's token and limits like every route but health.
//!
//! Two sources: [`Recorder`] holds what the agent observes as it works (histograms and
//! counters the core and the handlers record into); [`collector::StateCollector`] reads the
//! live state at each scrape ([`snapshot::Snapshot`]): per-fault counters from the kernel,
//! faults by phase, map fill, pods. Per-fault series exist while their fault is live and are
//! gone from the next scrape after it ends. Labels are bounded: fault id, namespace, kind,
//! direction, node, phase, map; never an address, port or anything per packet.
//!
//! Every series, its type, labels, modes and meaning: the table in `DEVELOPERS.md` ("Metrics"),
//! which a unit test ([`tests`]) holds to what is served.
//!
//! `direction` is the fault's own (egress, ingress, both): the kernel counts per fault, not
//! per direction.
pub mod collector;
pub mod labels;
pub mod recorder;
pub mod snapshot;
#[cfg(test)]
mod tests;

use prometheus_client::registry::Registry;

pub use collector::Source;
pub use recorder::Recorder;

/// The `Content-Type` of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry one agent serves.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    recorder: Recorder,
}

impl Metrics {
    /// Serves `recorder`'s instruments and, when there is one, what `source` holds at each
    /// scrape.
    pub fn new(recorder: Recorder, source: Option<Source>) -> Self {
        let mut registry = Registry::default();
        recorder.register(&mut registry);
        if let Some(source) = source {
            registry.register_collector(Box::new(collector::StateCollector::new(source)));
        }
        Self { registry, recorder }
    }

    /// Where the handlers record.
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// The OpenMetrics text of every series (blocking: a local source locks the core).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// This host's name, the `node` label of a single-host agent's series (`localhost` if it
/// cannot be read).
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
