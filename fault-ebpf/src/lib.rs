//! Library target only so that `fault-agent` can name this crate as a build dependency (Cargo
//! then rebuilds the agent when the programs change). The programs are the `fault-ebpf` binary.
#![no_std]
