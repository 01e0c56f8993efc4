//! Readiness and liveness from the agent's syncs (`/readyz`, `/healthz`).
//!
//! - Ready: a sync has succeeded, the last one did too, and the datapath is attached (not
//!   every pod interface failed to attach). A failed sync makes the agent unready at once;
//!   the next good one makes it ready again.
//! - Live: syncs have not kept failing for longer than `--liveness-threshold` (from the first
//!   failure of a run of failures to now). A kubelet then restarts the agent, which adopts the
//!   datapath as it is.
use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// Default `--liveness-threshold`.
pub const DEFAULT_LIVENESS_THRESHOLD: Duration = Duration::from_secs(120);

#[derive(Debug, Default)]
struct State {
    /// A sync succeeded at least once.
    synced: bool,
    /// Since when syncs fail (the first failure after a success), and the last error.
    failing: Option<(Instant, String)>,
    /// Why the datapath is not attached, after the last good sync.
    detached: Option<String>,
}

/// See the module docs.
#[derive(Debug)]
pub struct Health {
    state: Mutex<State>,
    liveness_threshold: Duration,
}

impl Health {
    /// Not ready until the first [`Health::sync_ok`]; unlive after `liveness_threshold` of
    /// failing syncs.
    pub fn new(liveness_threshold: Duration) -> Self {
        Self {
            state: Mutex::new(State::default()),
            liveness_threshold,
        }
    }

    /// Ready from the start (the cluster API, whose readiness is its watches').
    pub fn ready_now() -> Self {
        let h = Self::new(DEFAULT_LIVENESS_THRESHOLD);
        h.sync_ok(None);
        h
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A sync succeeded; `detached` says why the datapath is not attached, if it is not.
    pub fn sync_ok(&self, detached: Option<String>) {
        let mut s = self.lock();
        if s.failing.is_some() {
            tracing::info!("sync succeeds again");
        }
        s.synced = true;
        s.failing = None;
        s.detached = detached;
    }

    /// A sync failed with `error`.
    pub fn sync_failed(&self, error: &str) {
        let mut s = self.lock();
        let since = s.failing.as_ref().map_or_else(Instant::now, |(t, _)| *t);
        s.failing = Some((since, error.to_owned()));
    }

    /// Whether the last sync failed.
    pub fn failing(&self) -> bool {
        self.lock().failing.is_some()
    }

    /// `Ok` when ready; otherwise why not.
    pub fn ready(&self) -> Result<(), String> {
        let s = self.lock();
        if let Some((since, e)) = &s.failing {
            return Err(format!(
                "not ready: syncs fail since {:.1} s: {e}",
                since.elapsed().as_secs_f64()
            ));
        }
        if !s.synced {
            return Err("not ready: first reconcile pending".into());
        }
        match &s.detached {
            Some(why) => Err(format!("not ready: datapath not attached: {why}")),
            None => Ok(()),
        }
    }

    /// `Ok` while live; otherwise why not.
    pub fn live(&self) -> Result<(), String> {
        let s = self.lock();
        match &s.failing {
            Some((since, e)) if since.elapsed() > self.liveness_threshold => Err(format!(
                "unhealthy: syncs have failed for {:.0} s (over the agent's --liveness-threshold of {}): {e}",
                since.elapsed().as_secs_f64(),
                humantime::format_duration(self.liveness_threshold)
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_syncs_clear_readiness_at_once_and_liveness_after_the_threshold() {
        let h = Health::new(Duration::from_millis(50));
        assert!(h.ready().unwrap_err().contains("first reconcile"));
        h.sync_ok(None);
        assert!(h.ready().is_ok() && h.live().is_ok());
        h.sync_failed("writing qdiscs.json: EISDIR");
        assert!(h.ready().unwrap_err().contains("EISDIR"));
        assert!(h.live().is_ok(), "not yet past the threshold");
        std::thread::sleep(Duration::from_millis(60));
        h.sync_failed("again");
        let e = h.live().unwrap_err();
        assert!(
            e.contains("--liveness-threshold") && e.contains("again"),
            "{e}"
        );
        h.sync_ok(Some("no pod interface could be attached".into()));
        assert!(h.live().is_ok());
        assert!(h.ready().unwrap_err().contains("not attached"));
        h.sync_ok(None);
        assert!(h.ready().is_ok());
    }
}
