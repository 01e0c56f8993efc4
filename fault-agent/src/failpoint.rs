//! Failpoints: named places between the steps of create, recover, expiry, inventory changes,
//! attach/detach and shutdown where a test can have the agent killed, to prove that a crash at
//! any step leaves a state the next agent recovers from (`tests/crash.rs`).
//!
//! Always compiled in, inert unless the environment variable [`ENV`] is set (then one atomic
//! load per site and a lock on a small table). Its value is a comma-separated list of
//! `PHASE/NAME:N` or `NAME:N`: the process kills itself with `SIGKILL` (no destructor runs,
//! nothing is flushed or removed: what a crash, an OOM kill or a power cut leaves) at the
//! `N`-th time (from 1) it reaches failpoint `NAME` while in phase `PHASE` (any phase without
//! one). The phase says why the core is running ([`Phase`]): e.g.
//! `FAULTLINE_FAILPOINTS=expiry/reconcile.saved:1` kills the agent in the first reconcile of
//! the expiry loop after it saved the expired faults and before it touched the kernel maps.
//!
//! Failpoints ([`ALL`]) and what is done when each is reached:
//!
//! | name | done | not done |
//! | --- | --- | --- |
//! | `store.tmp` | a state file's new content written and synced to a temporary file | renamed over the file |
//! | `store.rename` | one state file replaced (renamed) | the folder synced, the other files of the same save |
//! | `create.shaped` | fq and pod-side programs a delay/rate needs | maps, record |
//! | `create.written` | the fault in the kernel maps | its record saved |
//! | `create.saved` | maps and record | the API's answer |
//! | `end.saved` | recovered state saved | lifted from the kernel maps |
//! | `end.lifted` | lifted from the maps | final counters saved, fq and programs removed |
//! | `reconcile.attached` | attachments synced (intent records, attach, records) | maps |
//! | `reconcile.saved` | expired/failed faults saved | maps written |
//! | `reconcile.written` | maps written | unused fq and programs removed |
//! | `maps.rules` | fault parameters and new rules of a map write | gates, targets, removals |
//! | `maps.targets` | new gates and targets | old targets, gates, rules, slots removed |
//! | `attach.intent` | intent records of the interfaces about to be attached | any attach |
//! | `attach.one` | one more interface attached | the others, the final records |
//! | `detach.one` | one more interface detached | the others, the records |
//! | `fq.installed` | one more fq root qdisc installed (after its intent record) | the others, the final records |
//! | `shutdown.saved` | faults saved at shutdown | anything removed |
//! | `shutdown.detached` | every program detached, fq removed | pins removed, records cleared |
//! | `shutdown.unpinned` | pins removed | records cleared |
//! | `uninstall.one` | one more record's programs removed by `fault-agent uninstall` | the others, pins |
use std::{
    cell::Cell,
    collections::HashMap,
    sync::{Mutex, OnceLock},
};

use anyhow::{Result, bail};

/// The environment variable that arms failpoints.
pub const ENV: &str = "FAULTLINE_FAILPOINTS";

/// Every failpoint name (see the module docs).
pub const ALL: &[&str] = &[
    "store.tmp",
    "store.rename",
    "create.shaped",
    "create.written",
    "create.saved",
    "end.saved",
    "end.lifted",
    "reconcile.attached",
    "reconcile.saved",
    "reconcile.written",
    "maps.rules",
    "maps.targets",
    "attach.intent",
    "attach.one",
    "detach.one",
    "fq.installed",
    "shutdown.saved",
    "shutdown.detached",
    "shutdown.unpinned",
    "uninstall.one",
];

/// Why the core runs (the `PHASE` of a failpoint rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Nothing set (tests of the library, the node agent's other tasks).
    None,
    /// The agent's start: pods read, first reconcile.
    Start,
    /// `POST /v1/faults`.
    Create,
    /// Recover and cleanup.
    Recover,
    /// The expiry loop's reconcile at a deadline.
    Expiry,
    /// A reconcile after the inventory or the pods' addresses changed.
    Inventory,
    /// The node agent's sync with the cluster's NetworkFaults.
    Sync,
    /// SIGTERM: removing everything.
    Shutdown,
    /// Exit leaving the datapath for the next agent.
    Leave,
    /// `fault-agent uninstall`.
    Uninstall,
}

impl Phase {
    /// Its name in rules.
    pub fn name(self) -> &'static str {
        match self {
            Phase::None => "none",
            Phase::Start => "start",
            Phase::Create => "create",
            Phase::Recover => "recover",
            Phase::Expiry => "expiry",
            Phase::Inventory => "inventory",
            Phase::Sync => "sync",
            Phase::Shutdown => "shutdown",
            Phase::Leave => "leave",
            Phase::Uninstall => "uninstall",
        }
    }

    const ALL: [Phase; 10] = [
        Phase::None,
        Phase::Start,
        Phase::Create,
        Phase::Recover,
        Phase::Expiry,
        Phase::Inventory,
        Phase::Sync,
        Phase::Shutdown,
        Phase::Leave,
        Phase::Uninstall,
    ];
}

/// One armed failpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    phase: Option<Phase>,
    name: String,
    /// Kill at this hit (from 1).
    at: u64,
}

#[derive(Default)]
struct Armed {
    rules: Vec<Rule>,
    /// Hits so far, per rule index.
    hits: Mutex<HashMap<usize, u64>>,
}

static ARMED: OnceLock<Armed> = OnceLock::new();

thread_local! {
    static PHASE: Cell<Phase> = const { Cell::new(Phase::None) };
}

/// Parses a rule list (the value of [`ENV`]); errors name the bad entry and the accepted form.
fn parse(spec: &str) -> Result<Vec<Rule>> {
    let mut rules = Vec::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((point, n)) = entry.rsplit_once(':') else {
            bail!("{ENV}: {entry:?} is not PHASE/NAME:N or NAME:N");
        };
        let at: u64 = match n.parse() {
            Ok(at) if at >= 1 => at,
            _ => bail!("{ENV}: in {entry:?}, N must be a whole number from 1, got {n:?}"),
        };
        let (phase, name) = match point.split_once('/') {
            Some((p, name)) => {
                let Some(phase) = Phase::ALL.iter().find(|x| x.name() == p) else {
                    let names: Vec<&str> = Phase::ALL.iter().map(|x| x.name()).collect();
                    bail!("{ENV}: unknown phase {p:?} in {entry:?}; phases: {names:?}");
                };
                (Some(*phase), name)
            }
            None => (None, point),
        };
        if !ALL.contains(&name) {
            bail!("{ENV}: unknown failpoint {name:?} in {entry:?}; failpoints: {ALL:?}");
        }
        rules.push(Rule {
            phase,
            name: name.to_owned(),
            at,
        });
    }
    Ok(rules)
}

/// Reads [`ENV`] once; call at start so that a bad value stops the agent with a clear error
/// instead of being ignored. Without the variable, every failpoint stays inert.
pub fn init() -> Result<()> {
    let rules = match std::env::var(ENV) {
        Ok(v) => parse(&v)?,
        Err(_) => Vec::new(),
    };
    if !rules.is_empty() {
        tracing::warn!(failpoints = ?rules, "failpoints armed: this agent will kill itself (tests only)");
    }
    let _ = ARMED.set(Armed {
        rules,
        hits: Mutex::default(),
    });
    Ok(())
}

/// Sets this thread's phase until the guard drops (then the previous one is back).
#[must_use = "the phase lasts as long as the guard"]
pub fn phase(p: Phase) -> PhaseGuard {
    let previous = PHASE.with(|c| c.replace(p));
    PhaseGuard { previous }
}

/// Restores the previous phase on drop; see [`phase`].
pub struct PhaseGuard {
    previous: Phase,
}

impl Drop for PhaseGuard {
    fn drop(&mut self) {
        PHASE.with(|c| c.set(self.previous));
    }
}

/// Failpoint `name` (one of [`ALL`]): kills the process with `SIGKILL` if an armed rule says
/// this is its hit; does nothing otherwise.
pub fn hit(name: &'static str) {
    debug_assert!(ALL.contains(&name), "failpoint {name} is not in ALL");
    let Some(armed) = ARMED.get() else { return };
    if armed.rules.is_empty() {
        return;
    }
    let phase = PHASE.with(Cell::get);
    let mut hits = armed.hits.lock().unwrap_or_else(|p| p.into_inner());
    for (i, rule) in armed.rules.iter().enumerate() {
        if rule.name != name || rule.phase.is_some_and(|p| p != phase) {
            continue;
        }
        let n = hits.entry(i).or_default();
        *n += 1;
        if *n == rule.at {
            // stderr is unbuffered: this line is in the log before the process is gone.
            eprintln!(
                "failpoint {}/{name}:{} reached: SIGKILL",
                phase.name(),
                rule.at
            );
            // SAFETY: plain syscalls; SIGKILL cannot be caught, the process ends here.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            loop {
                std::thread::park();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_with_and_without_a_phase() {
        let r = parse("expiry/reconcile.saved:2, store.tmp:1").unwrap();
        assert_eq!(
            r,
            vec![
                Rule {
                    phase: Some(Phase::Expiry),
                    name: "reconcile.saved".into(),
                    at: 2
                },
                Rule {
                    phase: None,
                    name: "store.tmp".into(),
                    at: 1
                }
            ]
        );
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn bad_rules_are_refused_naming_the_entry() {
        for (bad, says) in [
            ("store.tmp", "PHASE/NAME:N"),
            ("store.tmp:0", "from 1"),
            ("store.tmp:x", "from 1"),
            ("later/store.tmp:1", "unknown phase"),
            ("store.nope:1", "unknown failpoint"),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn phases_nest_and_restore() {
        assert_eq!(PHASE.with(Cell::get), Phase::None);
        {
            let _a = phase(Phase::Create);
            {
                let _b = phase(Phase::Recover);
                assert_eq!(PHASE.with(Cell::get), Phase::Recover);
            }
            assert_eq!(PHASE.with(Cell::get), Phase::Create);
        }
        assert_eq!(PHASE.with(Cell::get), Phase::None);
    }
}
