//! Faultline's fault model, shared by the agent (single-host and cluster), `faultctl` and the
//! tests: one code path for what a fault is and what makes one valid.
//!
//! - [`spec::FaultSpec`]: what a user asks for (native API body, CLI flags, CRD spec).
//! - [`spec::FaultSpec::validate`]: every rule a spec must follow, with errors naming the field
//!   ([`error::FieldError`]).
//! - [`fault::Fault`]: a fault as the agent reports it (state, deadline, resolved pods,
//!   counters).
//! - [`units`]: percentages, durations and rates as users write them (`30%`, `500ms`, `1mbit`).
//! - [`selector::Selector`]: Kubernetes label selectors (`app=x,tier!=db,env in (a,b)`).
//! - [`kill_switch::KillSwitch`]: the switch that makes every datapath pass all traffic.
//! - [`schedule::ScheduleSpec`]: recurring experiments (cron in a time zone, a fault template).
//! - [`conditions`]: pre-flight checks and steady-state abort conditions of a fault.
//! - [`client::Client`]: a blocking HTTP client of the native API.
pub mod client;
pub mod conditions;
pub mod error;
pub mod fault;
pub mod guards;
pub mod kill_switch;
pub mod schedule;
pub mod schema;
pub mod seed;
pub mod selector;
pub mod spec;
pub mod units;
pub mod verify;

pub use error::{ApiError, ErrorBody, FieldError};
pub use fault::{Counters, Fault, FaultList, FaultState, PodRef};
pub use guards::{BlastRadius, FaultPlan, ProtectionOverride, TargetMode};
pub use selector::Selector;
pub use spec::{Direction, FaultSpec, PartitionMode, Protocol};
pub use units::{FaultDuration, Percent, Rate};
pub use verify::{Outcome, Verification};
