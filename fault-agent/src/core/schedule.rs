//! What the scheduler ([`crate::schedule`]) asks of the core beyond creating faults: tagging a
//! fault with its schedule, and forgetting ended faults past a schedule's history limit.
use fault_api::{Fault, FaultSpec};

use super::Core;
use crate::error::AgentError;

impl Core {
    /// Creates a fault through [`Core::create`] (every check and guard applies) and records
    /// that `schedule` made it ([`Fault::schedule`]), in the same lock. The tag is saved by a
    /// second write: a crash in between leaves the fault untagged (it still ends by its
    /// deadline; the schedule lists it as active from its own record).
    pub fn create_scheduled(
        &mut self,
        spec: FaultSpec,
        schedule: &str,
    ) -> Result<Fault, AgentError> {
        let fault = self.create(spec)?;
        if let Some(f) = self.store.get_mut(&fault.id) {
            f.schedule = Some(schedule.to_owned());
        }
        if let Err(e) = self.store.save() {
            tracing::warn!(fault = %fault.id, error = %format!("{e:#}"), "saving the fault's schedule tag failed; the next save retries");
        }
        self.get(&fault.id)
    }

    /// Removes the records of ended faults `ids` (live ones and unknown ids are left alone);
    /// returns the ids removed. Their files go from the state dir.
    pub fn forget_ended(&mut self, ids: &[String]) -> Result<Vec<String>, AgentError> {
        let gone: Vec<String> = ids
            .iter()
            .filter(|id| self.store.get(id).is_some_and(|f| !f.state.is_live()))
            .cloned()
            .collect();
        for id in &gone {
            self.store.remove(id);
        }
        self.store.save().map_err(AgentError::Internal)?;
        Ok(gone)
    }
}
