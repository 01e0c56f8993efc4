//! Builds the eBPF programs (`fault-ebpf`) for bpfel-unknown-none with the nightly toolchain
//! and bpf-linker, through aya-build; the object lands in OUT_DIR and is embedded in the agent.
//! `cargo xtask setup` installs what this needs (nightly rust-src, bpf-linker on LLVM 22).
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fault-ebpf");
    let package = Package {
        name: "fault-ebpf",
        root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::default())
}
