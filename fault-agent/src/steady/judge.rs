//! When an abort condition is breached (pure: times are offsets from when checking began, so
//! the rules are tested without clocks).
use std::{collections::VecDeque, time::Duration};

/// Probe outcomes over a sliding window.
#[derive(Debug, Clone)]
pub struct FailureWindow {
    window: Duration,
    /// (when the probe ended, whether it failed), oldest first, within the window.
    samples: VecDeque<(Duration, bool)>,
}

/// The failure rate over a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub failed: usize,
    pub total: usize,
    /// `failed / total` in percent (0 with no sample).
    pub percent: f64,
    /// Whether a whole window has been probed (judgement starts then).
    pub full: bool,
}

impl FailureWindow {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            samples: VecDeque::new(),
        }
    }

    /// Records a probe that ended at `at` and returns the rate over the window ending there.
    pub fn record(&mut self, at: Duration, failed: bool) -> Rate {
        self.samples.push_back((at, failed));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| at.saturating_sub(*t) > self.window)
        {
            self.samples.pop_front();
        }
        let total = self.samples.len();
        let failed = self.samples.iter().filter(|(_, f)| *f).count();
        Rate {
            failed,
            total,
            percent: if total == 0 {
                0.0
            } else {
                100.0 * failed as f64 / total as f64
            },
            full: at >= self.window,
        }
    }
}

/// How long a breach has held without a break.
#[derive(Debug, Clone, Default)]
pub struct Hold {
    since: Option<Duration>,
}

impl Hold {
    /// Records an evaluation at `at`; returns how long the breach has held (`None`: not
    /// breached now).
    pub fn update(&mut self, at: Duration, breached: bool) -> Option<Duration> {
        if !breached {
            self.since = None;
            return None;
        }
        let since = *self.since.get_or_insert(at);
        Some(at.saturating_sub(since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_window_slides_and_judges_only_when_full() {
        let mut w = FailureWindow::new(3 * S);
        let r = w.record(S, true);
        assert!(!r.full && r.percent == 100.0);
        w.record(2 * S, false);
        let r = w.record(3 * S, false);
        assert!(r.full);
        assert_eq!((r.failed, r.total), (1, 3));
        // The first sample (1 s) is more than 3 s before 4.5 s: out.
        let r = w.record(Duration::from_millis(4_500), false);
        assert_eq!((r.failed, r.total), (0, 3));
    }

    #[test]
    fn a_hold_restarts_after_a_break() {
        let mut h = Hold::default();
        assert_eq!(h.update(S, true), Some(Duration::ZERO));
        assert_eq!(h.update(3 * S, true), Some(2 * S));
        assert_eq!(h.update(4 * S, false), None);
        assert_eq!(h.update(5 * S, true), Some(Duration::ZERO));
    }
}
