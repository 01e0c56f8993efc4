//! Rebuild when bpf-linker changes (it is not a Cargo dependency, so Cargo cannot see it).
use std::path::PathBuf;

fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        let linker: PathBuf = linker;
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
