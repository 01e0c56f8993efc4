//! `cargo xtask crash`: the agent killed at every step, 200 runs (`fault-agent/tests/crash.rs`,
//! `killed_at_every_step_200_runs`): every (step, failpoint, hit) case once, then random ones,
//! in both attach modes. About 15 minutes on a quiet 2-core machine.

use anyhow::Result;

use crate::{cargo, setup, util::run};

/// What to run.
pub struct Options {
    /// Runs in all (`FAULTLINE_CRASH_RUNS`).
    pub runs: usize,
    /// Order of the random runs (`FAULTLINE_CRASH_SEED`); printed when not given.
    pub seed: Option<u64>,
    /// Only these failpoint rules, in order (`FAULTLINE_CRASH_RULES`), to replay a failure.
    pub rules: Option<String>,
}

/// Builds the binaries and runs the long crash test.
pub fn run_all(o: &Options) -> Result<()> {
    setup::core()?;
    let bin = cargo::build(false)?;
    let mut cmd = cargo::long_test("crash", "killed_at_every_step_200_runs", &bin);
    cmd.env("FAULTLINE_CRASH_RUNS", o.runs.to_string());
    if let Some(seed) = o.seed {
        cmd.env("FAULTLINE_CRASH_SEED", seed.to_string());
    }
    if let Some(rules) = &o.rules {
        cmd.env("FAULTLINE_CRASH_RULES", rules);
    }
    run(&mut cmd)
}
