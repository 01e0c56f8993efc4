//! The standalone core's dry run: [`crate::plan::plan`] plus what only this host knows (the
//! kernel's support for the actions, the free slots, and the rule count its compiler would
//! install). Nothing is written: no map entry, no record.
use fault_api::{FaultPlan, FaultSpec};

use super::Core;
use crate::{
    capacity,
    compile::{self, CompileInput, Interner, NodeView},
    dataplane::kernel,
    error::AgentError,
    plan::reason,
};

impl Core {
    /// What creating `spec` would do, and every guard it would trip (as reasons, not an
    /// error). Errors (422) only for a spec that is not valid at all.
    pub fn plan(&self, spec: &FaultSpec) -> Result<FaultPlan, AgentError> {
        spec.validate().map_err(AgentError::Invalid)?;
        let verdict = self.config.guards.judge(
            spec,
            &self.pods,
            &self.config.protection,
            self.config.max_duration,
        );
        let (mut plan, res) = crate::plan::plan(
            spec,
            &self.pods,
            &verdict,
            &self.config.guards,
            &self.config.protection,
        );
        if let Err(AgentError::Unsupported(e)) = self.check_supported(spec) {
            plan.refusals.push(reason(&e));
        }
        if let Err(e) = capacity::check_live(self.store.live().count(), &self.config.limits) {
            plan.refusals.push(format!("capacity: {e}"));
        }
        let deadline = kernel::boottime_ns().unwrap_or(0) + verdict.duration.as_nanos() as u64;
        let input = CompileInput {
            slot: 0,
            seq: 0,
            params: compile::params(spec, deadline),
            target_ips: res.local_target_ips.clone(),
            all_target_ips: res.all_target_ips(),
            peer_ips: res.local_peer_ips.clone(),
            directions: compile::directions(spec),
            l4: compile::l4_keys(spec),
            includes: res.includes.clone(),
            excludes: res.excludes.clone(),
        };
        let node = NodeView {
            virtual_nets: self.virtual_nets.clone(),
            remote_ips: (self.pods.iter())
                .filter(|p| p.remote)
                .flat_map(|p| p.ips.iter().copied())
                .collect(),
        };
        match compile::compile(&[input], &node, &mut Interner::default()) {
            Ok(tables) => {
                let rules = capacity::rules_of(&tables, 0);
                plan.rules = Some(rules as u32);
                if let Err(e) = capacity::check_fault(&tables, 0, &self.config.limits) {
                    plan.refusals.push(format!("capacity: {e}"));
                }
            }
            Err(e) => plan.refusals.push(format!("capacity: {e}")),
        }
        plan.accepted = plan.refusals.is_empty();
        Ok(plan)
    }
}
