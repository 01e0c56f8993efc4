//! The inference topology with an agent in front of it: what most tests, the demo and the
//! benchmarks start from.
use std::path::PathBuf;

use anyhow::{Context as _, Result};

use crate::{AgentProcess, Dynamo, Topology};

/// Pods, their inventory file and an agent. Dropped in field order: the agent first (it
/// removes what it made), then the pods, then the inventory's directory.
pub struct DynamoEnv {
    /// The agent, `fault-agent standalone` on the inventory.
    pub agent: AgentProcess,
    /// The inference pods.
    pub pods: Dynamo,
    /// The topology holding them (add, remove or readdress pods through it).
    pub topo: Topology,
    dir: tempfile::TempDir,
}

impl DynamoEnv {
    /// Builds the topology, writes the inventory and starts an agent on it.
    pub fn start() -> Result<Self> {
        Self::start_with(&[])
    }

    /// Same, with extra agent arguments.
    pub fn start_with(agent_args: &[&str]) -> Result<Self> {
        let mut topo = Topology::named("dynamo")?;
        let pods = topo.dynamo()?;
        let dir = tempfile::Builder::new()
            .prefix("faultline-inv-")
            .tempdir()
            .context("creating a temporary directory")?;
        let inventory = dir.path().join("inventory.yaml");
        topo.write_inventory(&inventory)?;
        let agent = AgentProcess::start_with(&inventory, agent_args)?;
        Ok(Self {
            agent,
            pods,
            topo,
            dir,
        })
    }

    /// The inventory file the agent watches.
    pub fn inventory(&self) -> PathBuf {
        self.dir.path().join("inventory.yaml")
    }

    /// Rewrites the inventory from the topology's current pods.
    pub fn write_inventory(&self) -> Result<()> {
        self.topo.write_inventory(&self.inventory())
    }
}
