//! Pod events as they happen (`kubectl get pods -w --output-watch-events -o json`), each with
//! the `CLOCK_BOOTTIME` instant it arrived: when a pod got its address, when it became Ready.
//! The API server sends an event within milliseconds of the kubelet's status update, so these
//! instants are what a controller watching the API sees (the Ready condition's own timestamp
//! has one-second resolution).
use std::{
    collections::BTreeMap,
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{Cluster, pods::KubePod};

/// One event.
#[derive(Debug, Clone)]
pub struct Event {
    /// `CLOCK_BOOTTIME` when it was read, ns.
    pub at_ns: u64,
    /// ADDED, MODIFIED, DELETED.
    pub kind: String,
    pub pod: KubePod,
}

/// A running watch; stops (kills its kubectl) on drop.
pub struct PodWatch {
    child: Child,
    events: Arc<Mutex<Vec<Event>>>,
    reader: Option<JoinHandle<()>>,
}

impl PodWatch {
    /// Watches the pods of `namespace` matching `selector`; returns once the first events
    /// (the pods that exist) have arrived or after 5 s.
    pub fn start(cluster: &Cluster, namespace: &str, selector: &str) -> Result<Self> {
        let mut child = cluster
            .command()
            .args(["-n", namespace, "get", "pods", "-l", selector])
            .args(["-w", "--output-watch-events", "-o", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting kubectl get pods -w")?;
        let out = child.stdout.take().context("kubectl stdout")?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let reader = std::thread::Builder::new()
            .name("testkit-pod-watch".into())
            .spawn(move || {
                let stream =
                    serde_json::Deserializer::from_reader(out).into_iter::<serde_json::Value>();
                for v in stream.flatten() {
                    let ev = Event {
                        at_ns: crate::boottime_ns(),
                        kind: v["type"].as_str().unwrap_or_default().to_owned(),
                        pod: KubePod::from_json(&v["object"]),
                    };
                    sink.lock().unwrap_or_else(|p| p.into_inner()).push(ev);
                }
            })?;
        let w = Self {
            child,
            events,
            reader: Some(reader),
        };
        let start = Instant::now();
        while w.events().is_empty() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(w)
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// For each pod: the first event where it was Ready and not terminating.
    pub fn first_ready(&self) -> BTreeMap<String, Event> {
        let mut out = BTreeMap::new();
        for e in self.events() {
            if e.pod.ready && !e.pod.terminating && e.kind != "DELETED" {
                out.entry(e.pod.name.clone()).or_insert(e);
            }
        }
        out
    }

    /// For each pod: the first event where it had an address.
    pub fn first_addressed(&self) -> BTreeMap<String, Event> {
        let mut out = BTreeMap::new();
        for e in self.events() {
            if e.pod.ip.is_some() && e.kind != "DELETED" {
                out.entry(e.pod.name.clone()).or_insert(e);
            }
        }
        out
    }

    /// Waits until `done(events)` holds.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Event]) -> bool,
    ) -> Result<()> {
        let start = Instant::now();
        while !done(&self.events()) {
            if start.elapsed() > timeout {
                bail!("{what}: not within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}
