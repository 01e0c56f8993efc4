//! Random bytes from the OS (ids, nonces), as errors with context when the OS fails us.
use anyhow::{Result, anyhow};

/// Fills `buf` with random bytes from the OS.
pub(crate) fn fill(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| anyhow!("reading random bytes from the OS: {e}"))
}

/// A random u64 from the OS.
pub(crate) fn u64() -> Result<u64> {
    let mut b = [0u8; 8];
    fill(&mut b)?;
    Ok(u64::from_le_bytes(b))
}
