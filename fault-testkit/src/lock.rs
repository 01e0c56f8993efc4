//! Machine-wide locks that allow one object of a kind at a time (one
//! [`ServiceNet`](crate::services::ServiceNet), one [`Fabric`](crate::nodes::Fabric)): an
//! exclusive `flock` on a file of [`REGISTRY_DIR`], held as long as the object lives and
//! released by the kernel when its process dies, so a killed test never blocks the next one.
use std::{
    fs::{self, File, OpenOptions},
    io::{Read as _, Seek as _, Write as _},
    os::fd::AsRawFd as _,
};

use anyhow::{Context as _, Result, bail};

use crate::topology::REGISTRY_DIR;

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub(crate) struct Lock {
    _file: File,
}

/// Takes the lock of `file` for the object of `kind` (e.g. `ServiceNet`) whose names start
/// with `prefix`, or fails naming the current holder (`why` says why only one may exist). A
/// second object of the same process fails too (`flock` locks belong to an open file). The
/// file keeps the holder's pid and prefix for the next one's error message.
pub(crate) fn acquire(file: &str, kind: &str, prefix: &str, why: &str) -> Result<Lock> {
    fs::create_dir_all(REGISTRY_DIR).with_context(|| format!("creating {REGISTRY_DIR}"))?;
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(file)
        .with_context(|| format!("opening {file}"))?;
    // SAFETY: flock on a valid file descriptor that `f` owns.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(err).with_context(|| format!("locking {file}"));
        }
        let mut holder = String::new();
        let _ = f.read_to_string(&mut holder);
        bail!(
            "another {kind} exists on this machine ({}): only one at a time, since {why}; \
             drop it first (tests hold fault_testkit::serial())",
            holder.trim()
        );
    }
    f.set_len(0).context("truncating the lock file")?;
    f.rewind().context("rewinding the lock file")?;
    let me = format!("pid {}, topology {prefix}\n", std::process::id());
    f.write_all(me.as_bytes())
        .context("writing the lock file")?;
    Ok(Lock { _file: f })
}
