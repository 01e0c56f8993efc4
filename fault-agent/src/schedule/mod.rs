//! Schedules on the single-host agent (`/v1/schedules`): recurring experiments that create
//! faults from a template at the fire times of a cron expression ([`fault_api::schedule`]).
//!
//! - [`files`]: one JSON file per schedule in `<state-dir>/schedules/`, so a restart keeps them.
//! - [`Scheduler`]: the schedules in memory, the API's operations, and [`Scheduler::run`], the
//!   task that sleeps until the nearest fire time and fires.
//! - A fire creates the fault through [`Core::create_scheduled`](crate::core::Core), the same
//!   path as `POST /v1/faults` (every check and guard applies), tagged with the schedule's
//!   name ([`fault_api::Fault::schedule`]).
//! - The schedule's live faults and history are the faults tagged with its name (so a fault
//!   created just before a crash is still counted); ended ones beyond `history_limit` are
//!   forgotten (removed from the agent's records), oldest first.
//! - **Concurrency policy** at a fire time with a live fault: `Allow` creates anyway, `Forbid`
//!   skips (counted in `skipped`, said in `last_error`), `Replace` recovers the live ones, then
//!   creates.
//! - **Missed fire times** (agent down, suspended): only the latest is made up, once, when the
//!   scheduler next looks, and only within `starting_deadline` if one is set (beyond it the
//!   fire time is counted as skipped). Fire times before the schedule was created never fire.
//! - **Delete** stops new faults and recovers the schedule's live faults before it answers
//!   (as deleting a CronJob deletes its running Jobs); ended faults stay on record until the
//!   agent's retention drops them.
mod files;
mod scheduler;

pub use scheduler::{ScheduleError, Scheduler};
