//! The allocator setting of the `sluice` process: large blocks go back to
//! the operating system when they are freed.
//!
//! The engine's large allocations are short-lived: a batch's copy (up to
//! `server.max_message_bytes`), tonic's decode buffer, the bench's encoded
//! messages. glibc's malloc serves a block above its mmap threshold with
//! `mmap` and unmaps it on free, but it raises the threshold to the size of
//! every such block freed (up to 32 MiB), so after the first 4 MB batch is
//! freed the next ones come from the heap arenas, where freed memory stays
//! resident: with 1-KB records in batches of 4,000, peak RSS went to
//! 2.2× the byte budget above the idle RSS, and 1.35× with the threshold
//! fixed (BENCHMARKS.md, "Adversarial memory"). Setting the threshold once
//! turns the adjustment off. Cost: an `mmap`/`munmap` pair and fresh pages
//! per block above it, that is per batch larger than 256 KiB, not per
//! record. A `MALLOC_MMAP_THRESHOLD_` in the environment is left to rule.

/// The fixed mmap threshold, in bytes.
pub const MMAP_THRESHOLD: usize = 256 * 1024;

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD`] unless the
/// environment sets one (does nothing on other C libraries).
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: mallopt only changes a malloc parameter; it is called
        // first thing in `main`, before any other thread exists.
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) };
        if ok != 1 {
            tracing::debug!("mallopt(M_MMAP_THRESHOLD) refused");
        }
    }
}
