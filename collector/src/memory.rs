//! Giving memory back. The collector's peaks are transient (a start-up reconcile of 100,000
//! streamers, a placement of all channels at once, a coverage report), but glibc's allocator
//! keeps freed pages in the heap, so without a trim the resident size stays at the highest peak
//! for good. [`trim`] asks glibc to return free pages to the system (`malloc_trim(0)`: a few
//! milliseconds for a heap of tens of MB); the heartbeat calls it every 10 s. Measured in
//! BENCHMARKS.md ("Memory").

/// Returns the heap's free pages to the system (glibc; nothing elsewhere).
#[allow(unsafe_code)]
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointer and
    // is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
