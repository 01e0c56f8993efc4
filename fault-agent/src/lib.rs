//! Faultline's agent. See the crate's README section "How it works" for the big picture:
//! [`dataplane`] (kernel side), [`inventory`] and [`discover`] (which pods exist and where
//! their traffic passes), [`resolve`] and [`compile`] (from faults to map contents),
//! [`core`] (the reconciler), [`api`] (HTTP), [`standalone`] (the single-host agent).
pub mod api;
pub mod audit;
pub mod blast;
pub mod capacity;
pub mod compile;
pub mod core;
pub mod dataplane;
pub mod discover;
pub mod error;
pub mod failpoint;
pub mod guards;
pub mod inventory;
pub mod kube;
pub mod memory;
pub mod metrics;
pub mod netlink;
pub mod plan;
pub mod pods;
pub mod prefixes;
pub mod protect;
pub mod resolve;
pub mod rtdump;
pub mod schedule;
pub mod standalone;
pub mod steady;
pub mod store;
pub mod uplinks;
pub mod verify;
