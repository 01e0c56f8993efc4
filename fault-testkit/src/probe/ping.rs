//! ICMP echo with the system's `ping`, run inside the sending pod's network namespace.
use std::{net::IpAddr, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};

use crate::topology::Pod;

/// What `ping` reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingReport {
    /// Echo requests sent.
    pub transmitted: u32,
    /// Echo replies received.
    pub received: u32,
}

/// Sends `count` ICMP (or ICMPv6) echo requests from `from` to `to`, 200 ms apart, and waits
/// at most `timeout` overall (rounded up to whole seconds, at least 1 s).
pub fn ping(from: &Pod, to: IpAddr, count: u32, timeout: Duration) -> Result<PingReport> {
    let deadline_s = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
    let args = [
        "-n".to_owned(),
        "-q".to_owned(),
        "-c".to_owned(),
        count.max(1).to_string(),
        "-i".to_owned(),
        "0.2".to_owned(),
        "-w".to_owned(),
        deadline_s.max(1).to_string(),
        to.to_string(),
    ];
    // A child inherits the network namespace of the thread that forks it.
    let out = from
        .run(move || Command::new("ping").args(&args).output())?
        .context("running ping")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "5 packets transmitted, 4 received, 20% packet loss, time 803ms"
    let Some(line) = text.lines().find(|l| l.contains("packets transmitted")) else {
        bail!(
            "ping {to}: {}{}",
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    };
    let number_before = |word: &str| -> Option<u32> {
        let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
        let i = words.iter().position(|w| *w == word)?;
        words.get(i.checked_sub(1)?)?.parse().ok()
    };
    let transmitted = number_before("packets").with_context(|| format!("parsing {line:?}"))?;
    let received = number_before("received").with_context(|| format!("parsing {line:?}"))?;
    Ok(PingReport {
        transmitted,
        received,
    })
}
