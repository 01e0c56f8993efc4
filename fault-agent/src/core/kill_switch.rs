//! The kill switch on one agent: the record (who engaged or lifted it, when, why) in the state
//! dir, and the flag in the kernel's `FL_CONTROL` map that the programs check before any fault
//! acts. Engaging writes the flag first and the record second, so that the traffic is whole
//! even if the record cannot be written; every reconcile sets the flag from the record again
//! (level-triggered), so a restarted agent keeps the switch as it was left.
use anyhow::Result;
use fault_api::kill_switch::{KillSwitch, KillSwitchAction, KillSwitchRequest};
use jiff::Timestamp;

use super::Core;
use crate::{error::AgentError, store::Store};

/// The record of `store`'s dir; lifted when it cannot be read (logged).
pub(super) fn load(store: &Store) -> KillSwitch {
    crate::store::load_kill_switch(store.dir()).unwrap_or_else(|e| {
        tracing::error!(error = %format!("{e:#}"), "cannot read the kill switch's record; it reads as lifted");
        KillSwitch::default()
    })
}

fn action(req: &KillSwitchRequest, from: Option<String>) -> KillSwitchAction {
    KillSwitchAction {
        by: req.by.clone(),
        reason: req.reason.clone(),
        at: Timestamp::now(),
        from,
    }
}

impl Core {
    /// The kill switch as recorded.
    pub fn kill_switch(&self) -> &KillSwitch {
        &self.kill_switch
    }

    /// Engages the kill switch: the kernel passes every packet from now on, then the record
    /// is saved. Engaging an engaged switch keeps the first record. Errors: 422 for a bad
    /// `req`; 500 when the kernel refused the flag (nothing changed) or the record could not
    /// be saved (the switch is engaged all the same).
    pub fn engage_kill_switch(
        &mut self,
        req: &KillSwitchRequest,
        from: Option<String>,
    ) -> Result<KillSwitch, AgentError> {
        req.validate().map_err(AgentError::Invalid)?;
        self.dataplane.set_kill_switch(true)?;
        if !self.kill_switch.engaged {
            self.kill_switch.engaged = true;
            self.kill_switch.engaged_by = Some(action(req, from));
        }
        tracing::warn!(target: "audit", by = %req.by, reason = ?req.reason, "kill switch engaged: every packet passes");
        self.save_kill_switch()?;
        Ok(self.kill_switch.clone())
    }

    /// Lifts the kill switch: the record first (a restart must not engage it again), then the
    /// kernel flag; faults that did not expire meanwhile act again. Errors as
    /// [`Core::engage_kill_switch`].
    pub fn lift_kill_switch(
        &mut self,
        req: &KillSwitchRequest,
        from: Option<String>,
    ) -> Result<KillSwitch, AgentError> {
        req.validate().map_err(AgentError::Invalid)?;
        let was = self.kill_switch.clone();
        if self.kill_switch.engaged {
            self.kill_switch.engaged = false;
            self.kill_switch.lifted_by = Some(action(req, from));
        }
        if let Err(e) = self.save_kill_switch() {
            self.kill_switch = was;
            return Err(e.into());
        }
        self.dataplane.set_kill_switch(false)?;
        tracing::warn!(target: "audit", by = %req.by, reason = ?req.reason, "kill switch lifted: faults act again");
        Ok(self.kill_switch.clone())
    }

    fn save_kill_switch(&self) -> Result<()> {
        crate::store::save_kill_switch(self.store.dir(), &self.kill_switch)
    }

    /// Sets the kernel's flag from the record when they differ (at every reconcile).
    pub(super) fn sync_kill_switch(&mut self) -> Result<()> {
        if self.dataplane.kill_switch()? != self.kill_switch.engaged {
            tracing::warn!(
                engaged = self.kill_switch.engaged,
                "the kernel's kill switch differs from the record: set from the record"
            );
            self.dataplane.set_kill_switch(self.kill_switch.engaged)?;
        }
        Ok(())
    }
}
