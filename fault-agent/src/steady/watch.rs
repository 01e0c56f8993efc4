//! The task of one abort condition: measure every interval on a blocking thread, record the
//! measurement, end the fault through its [`Ender`] when the condition is breached.
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use fault_api::conditions::{HttpAbort, Measurement, PrometheusAbort};
use jiff::Timestamp;
use tokio::time::MissedTickBehavior;

use super::{
    Ender, Supervisor,
    judge::{FailureWindow, Hold},
    probe,
};

/// What a condition's task needs of its fault.
#[derive(Clone)]
pub(super) struct Ctx {
    pub id: String,
    pub expires_at: Timestamp,
    /// What ends the fault on a breach.
    pub ender: Ender,
    pub supervisor: Supervisor,
}

impl Ctx {
    fn ended(&self) -> bool {
        Timestamp::now() >= self.expires_at
    }

    fn record(&self, condition: &str, value: Option<f64>, breached: bool, detail: String) {
        self.supervisor.record(
            &self.id,
            Measurement {
                condition: condition.into(),
                value,
                breached,
                detail,
                at: Timestamp::now(),
            },
        );
    }

    /// Ends the fault (`Aborted`, `message`) and every check of it.
    async fn abort(&self, message: String) {
        (self.ender)(self.id.clone(), message).await;
        self.supervisor.stop(&self.id);
    }
}

fn ticker(every: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval(every);
    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    t
}

/// Probes `cond.url` every interval; aborts once a whole window has been probed and more
/// than `max_failure_percent` of the window's probes failed.
pub(super) async fn http(ctx: Ctx, cond: HttpAbort, netns: Option<PathBuf>) {
    let (started, max) = (Instant::now(), cond.max_failure_percent.value());
    let mut window = FailureWindow::new(cond.window());
    let mut tick = ticker(cond.interval());
    let check = cond.check();
    let window_text = humantime::format_duration(cond.window()).to_string();
    loop {
        tick.tick().await;
        if ctx.ended() {
            break;
        }
        let (c, ns) = (check.clone(), netns.clone());
        let outcome = tokio::task::spawn_blocking(move || probe::http_ok(&c, ns.as_deref()))
            .await
            .unwrap_or_else(|e| Err(format!("probe task: {e}")));
        let rate = window.record(started.elapsed(), outcome.is_err());
        let breached = rate.full && rate.percent > max;
        let last = match &outcome {
            Ok(s) => format!("last: status {s}"),
            Err(e) => format!("last: {e}"),
        };
        let detail = format!(
            "{} of {} probes failed over {window_text}{} ({last})",
            rate.failed,
            rate.total,
            if rate.full {
                ""
            } else {
                " (window not yet full)"
            }
        );
        ctx.record("http", Some(rate.percent), breached, detail);
        if breached {
            let message = format!(
                "aborted: http probe {} failed {:.1}% of {} probes over {window_text}, above {max}%",
                check.url, rate.percent, rate.total
            );
            ctx.abort(message).await;
            break;
        }
    }
    ctx.supervisor.stop(&ctx.id);
}

/// Evaluates `cond.query` every interval; aborts once the threshold has been passed at every
/// evaluation for `for`. A query that fails or returns no series is no breach (and breaks a
/// hold).
pub(super) async fn prometheus(ctx: Ctx, cond: PrometheusAbort) {
    let started = Instant::now();
    let mut hold = Hold::default();
    let mut tick = ticker(cond.interval());
    let need = cond.hold.map_or(Duration::ZERO, |d| d.get());
    let timeout = cond.interval().max(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if ctx.ended() {
            break;
        }
        let c = cond.clone();
        let value = tokio::task::spawn_blocking(move || {
            probe::prometheus_value(&c.server, &c.query, c.above.is_some(), timeout)
                .map_err(|e| format!("{e:#}"))
        })
        .await
        .unwrap_or_else(|e| Err(format!("query task: {e}")));
        let v = value.as_ref().ok().copied().flatten();
        let held = hold.update(started.elapsed(), v.is_some_and(|v| cond.breached(v)));
        let breached = held.is_some_and(|h| h >= need);
        let detail = match (&value, held) {
            (Err(e), _) => format!("query failed: {e}"),
            (Ok(None), _) => "no data".to_owned(),
            (Ok(Some(v)), Some(h)) => format!(
                "{v} breaches {} for {}",
                threshold(&cond),
                humantime::format_duration(round_ms(h))
            ),
            (Ok(Some(v)), None) => format!("{v} within {}", threshold(&cond)),
        };
        ctx.record("prometheus", v, breached, detail);
        if let (true, Some(v), Some(h)) = (breached, v, held) {
            let message = format!(
                "aborted: prometheus query `{}` = {v}, {} for {}",
                cond.query,
                threshold(&cond),
                humantime::format_duration(round_ms(h))
            );
            ctx.abort(message).await;
            break;
        }
    }
    ctx.supervisor.stop(&ctx.id);
}

/// `above 0.25`, `below 1`, or both.
fn threshold(c: &PrometheusAbort) -> String {
    match (c.above, c.below) {
        (Some(a), Some(b)) => format!("above {a} or below {b}"),
        (Some(a), None) => format!("above {a}"),
        (None, Some(b)) => format!("below {b}"),
        (None, None) => "no threshold".into(),
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}
