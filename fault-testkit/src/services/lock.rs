//! The machine-wide lock that allows one [`ServiceNet`](super::ServiceNet) at a time (its host
//! addresses and routes are the same for every topology): an exclusive `flock` on
//! [`LOCK_FILE`], held as long as the `ServiceNet` lives and released by the kernel when its
//! process dies, so a killed test never blocks the next one.
use std::{
    fs::{self, File, OpenOptions},
    io::{Read as _, Seek as _, Write as _},
    os::fd::AsRawFd as _,
};

use anyhow::{Context as _, Result, bail};

use crate::topology::REGISTRY_DIR;

/// The lock file: `/run/faultline-testkit/services.lock`, holding the pid and topology of the
/// current holder (for the error message of the next one).
pub const LOCK_FILE: &str = "/run/faultline-testkit/services.lock";

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub(super) struct Lock {
    _file: File,
}

/// Takes the lock for topology `prefix`, or fails naming the current holder. A second
/// `ServiceNet` of the same process fails too (`flock` locks belong to an open file).
pub(super) fn acquire(prefix: &str) -> Result<Lock> {
    fs::create_dir_all(REGISTRY_DIR).with_context(|| format!("creating {REGISTRY_DIR}"))?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(LOCK_FILE)
        .with_context(|| format!("opening {LOCK_FILE}"))?;
    // SAFETY: flock on a valid file descriptor that `file` owns.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(err).with_context(|| format!("locking {LOCK_FILE}"));
        }
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        bail!(
            "another ServiceNet exists on this machine ({}): only one at a time, since they \
             share host addresses and routes; drop it first (tests hold fault_testkit::serial())",
            holder.trim()
        );
    }
    file.set_len(0).context("truncating the lock file")?;
    file.rewind().context("rewinding the lock file")?;
    let me = format!("pid {}, topology {prefix}\n", std::process::id());
    file.write_all(me.as_bytes())
        .context("writing the lock file")?;
    Ok(Lock { _file: file })
}
