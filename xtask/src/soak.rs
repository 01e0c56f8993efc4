//! `cargo xtask soak`: 1,000 inject/recover cycles of mixed kinds on 20 pods under continuous
//! traffic, pods added and removed meanwhile (`fault-agent/tests/soak.rs`, `soak_full`); after
//! it, map entries, links, pins, qdiscs, the agent's RSS and fds must be back at the idle
//! baseline and the unaffected pair must have lost nothing. `--out FILE` writes the figures
//! as Markdown (for `BENCHMARKS.md`).
use std::path::PathBuf;

use anyhow::Result;

use crate::{cargo, setup, util::run};

/// What to run.
pub struct Options {
    /// Inject/recover cycles (`FAULTLINE_SOAK_CYCLES`).
    pub cycles: usize,
    /// The RNG's seed (`FAULTLINE_SOAK_SEED`); printed when not given.
    pub seed: Option<u64>,
    /// Where to write the figures (`FAULTLINE_SOAK_OUT`), as Markdown.
    pub out: Option<PathBuf>,
}

/// Builds the binaries and runs the long soak test.
pub fn run_all(o: &Options) -> Result<()> {
    setup::core()?;
    let bin = cargo::build(false)?;
    let mut cmd = cargo::long_test("soak", "soak_full", &bin);
    cmd.env("FAULTLINE_SOAK_CYCLES", o.cycles.to_string());
    if let Some(seed) = o.seed {
        cmd.env("FAULTLINE_SOAK_SEED", seed.to_string());
    }
    if let Some(out) = &o.out {
        // The test runs in fault-agent/: make the path absolute first.
        let out = std::path::absolute(out)?;
        cmd.env("FAULTLINE_SOAK_OUT", out);
    }
    run(&mut cmd)
}
