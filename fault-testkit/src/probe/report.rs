//! What a UDP stream measured at its receiver ([`StreamReport`]), and how raw arrivals are
//! judged against what the sender recorded.
use std::fmt;

/// One datagram that arrived intact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// Sequence number (index into [`StreamReport::send_ns`]).
    pub seq: u64,
    /// Send time, `CLOCK_BOOTTIME` ns (as written by the sender).
    pub send_ns: u64,
    /// Receive time, `CLOCK_BOOTTIME` ns (read by the receiver when `recv` returned).
    pub recv_ns: u64,
}

impl Arrival {
    /// One-way time from send to receive, in ns (both ends use the same clock).
    pub fn latency_ns(&self) -> u64 {
        self.recv_ns.saturating_sub(self.send_ns)
    }
}

/// What a stream measured. Counts are datagrams.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamReport {
    /// Datagrams sent (accepted by the sender's stack).
    pub sent: u64,
    /// Distinct sequence numbers that arrived intact at least once.
    pub received: u64,
    /// Extra intact copies: datagrams that arrived intact after one with the same sequence
    /// number did.
    pub duplicates: u64,
    /// Datagrams that arrived from the sender but not intact: content not matching the
    /// pattern of its sequence number and send time, a sequence number never sent, or a send
    /// time other than the sender's for that number.
    pub corrupted: u64,
    /// Datagrams that arrived on the receiver's port from another sender (e.g. late ones of an
    /// earlier stream); ignored by every other count.
    pub foreign: u64,
    /// Send time of each datagram, by sequence number (`CLOCK_BOOTTIME` ns).
    pub send_ns: Vec<u64>,
    /// Send time of the first datagram (`CLOCK_BOOTTIME` ns); 0 if none was sent.
    pub first_send_ns: u64,
    /// Send time of the last datagram (`CLOCK_BOOTTIME` ns); 0 if none was sent.
    pub last_send_ns: u64,
    /// Intact arrivals in arrival order, duplicates included.
    pub arrivals: Vec<Arrival>,
}

/// What a receiver saw, before it is judged against the sender's record.
#[derive(Debug, Default)]
pub(super) struct RecvLog {
    /// Datagrams from the sender whose pattern matched.
    pub valid: Vec<Arrival>,
    /// Datagrams from the sender whose pattern did not match (or of the wrong length).
    pub malformed: u64,
    /// Datagrams from anyone else.
    pub foreign: u64,
}

impl StreamReport {
    /// Judges the receiver's log against the send times the sender recorded.
    pub(super) fn build(send_ns: Vec<u64>, log: RecvLog) -> Self {
        let mut seen = vec![false; send_ns.len()];
        let (mut received, mut duplicates, mut corrupted) = (0, 0, log.malformed);
        let mut arrivals = Vec::with_capacity(log.valid.len());
        for a in log.valid {
            let Ok(i) = usize::try_from(a.seq) else {
                corrupted += 1;
                continue;
            };
            if send_ns.get(i) != Some(&a.send_ns) {
                corrupted += 1;
                continue;
            }
            if seen[i] {
                duplicates += 1;
            } else {
                seen[i] = true;
                received += 1;
            }
            arrivals.push(a);
        }
        Self {
            sent: send_ns.len() as u64,
            received,
            duplicates,
            corrupted,
            foreign: log.foreign,
            first_send_ns: send_ns.first().copied().unwrap_or_default(),
            last_send_ns: send_ns.last().copied().unwrap_or_default(),
            send_ns,
            arrivals,
        }
    }

    /// Share of sent datagrams that did not arrive intact, 0.0..=1.0 (a corrupted datagram
    /// counts as lost here; see [`StreamReport::missing`]).
    pub fn loss_ratio(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            1.0 - self.received as f64 / self.sent as f64
        }
    }

    /// Share of the datagrams that arrived (intact, duplicated or corrupted) that were
    /// corrupted, 0.0..=1.0.
    pub fn corrupt_ratio(&self) -> f64 {
        let arrived = self.received + self.duplicates + self.corrupted;
        if arrived == 0 {
            0.0
        } else {
            self.corrupted as f64 / arrived as f64
        }
    }

    /// Datagrams that did not arrive at all, intact or corrupted (a corrupted one cannot be
    /// told apart from a corrupted duplicate, so this assumes none was a duplicate).
    pub fn missing(&self) -> u64 {
        self.sent.saturating_sub(self.received + self.corrupted)
    }

    /// For each sequence number, whether it arrived intact.
    pub fn arrived(&self) -> Vec<bool> {
        let mut got = vec![false; self.send_ns.len()];
        for a in &self.arrivals {
            if let Some(g) = usize::try_from(a.seq).ok().and_then(|i| got.get_mut(i)) {
                *g = true;
            }
        }
        got
    }
}

impl fmt::Display for StreamReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sent {}, received {} intact (loss {:.2}%), corrupted {} ({:.2}%), duplicates {}",
            self.sent,
            self.received,
            self.loss_ratio() * 100.0,
            self.corrupted,
            self.corrupt_ratio() * 100.0,
            self.duplicates,
        )?;
        if self.foreign > 0 {
            write!(f, ", foreign {}", self.foreign)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival(seq: u64, send_ns: u64) -> Arrival {
        Arrival {
            seq,
            send_ns,
            recv_ns: send_ns + 1,
        }
    }

    #[test]
    fn arrivals_are_judged_against_the_senders_record() {
        let send_ns = vec![100, 200, 300, 400];
        let log = RecvLog {
            valid: vec![
                arrival(0, 100),
                arrival(1, 200),
                arrival(1, 200), // duplicate
                arrival(2, 999), // wrong send time: corrupted
                arrival(9, 900), // never sent: corrupted
            ],
            malformed: 1,
            foreign: 3,
        };
        let r = StreamReport::build(send_ns, log);
        assert_eq!(
            (r.sent, r.received, r.duplicates, r.corrupted, r.foreign),
            (4, 2, 1, 3, 3)
        );
        assert_eq!(r.arrived(), vec![true, true, false, false]);
        assert_eq!((r.first_send_ns, r.last_send_ns), (100, 400));
        assert_eq!(r.missing(), 0);
        assert!((r.loss_ratio() - 0.5).abs() < 1e-9);
        assert!((r.corrupt_ratio() - 0.5).abs() < 1e-9);
        assert!(
            r.to_string()
                .starts_with("sent 4, received 2 intact (loss 50.00%), corrupted 3 (50.00%)"),
            "{r}"
        );
    }

    #[test]
    fn an_empty_stream_has_no_ratios() {
        let r = StreamReport::build(vec![], RecvLog::default());
        assert_eq!((r.loss_ratio(), r.corrupt_ratio()), (0.0, 0.0));
    }
}
