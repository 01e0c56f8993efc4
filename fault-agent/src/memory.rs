//! Keeping the agent's resident memory near what it uses. Its work comes in bursts (loading the
//! programs parses the kernel's BTF, 5 MiB on 6.18, into tens of MiB of short-lived
//! allocations; a 10,000-rule compile; a pass over every pod's namespace), and glibc keeps
//! what a burst freed for the process to reuse, so without this the RSS stays at the peak of
//! the largest burst ever (measured with 1,000 pods: 54 MiB resident, 18 MiB after a trim).

/// Allocator settings, to call first thing in `main` (before other threads exist): two
/// arenas instead of up to eight per core (`M_ARENA_MAX`, `mallopt(3)`).
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator parameters; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Gives the memory freed by a burst back to the system (`malloc_trim(3)`: releases free pages
/// at the top of each arena and inside it with `madvise(MADV_DONTNEED)`). Costs about a
/// millisecond; called after each burst, not per request.
pub fn trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory; it takes the allocator's own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}
