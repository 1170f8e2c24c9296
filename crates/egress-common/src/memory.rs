//! Keeping the resident set as small as the data in flight.

/// Serve every allocation of 128 KiB or more with its own mapping, returned to the system
/// when freed. glibc otherwise raises that threshold as large buffers are freed and then
/// carves later part buffers out of its heap, which fragments: measured here, egress-sync's
/// peak RSS went from 91 MiB to 60 MiB with a 40 MiB part budget. egress-dump does not use
/// it: its buffers are reused, its RSS stays near 45 MiB anyway, and the extra page faults
/// cost it 5-10% of its throughput (measured with bench/run.sh).
pub fn return_large_buffers_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
    }
}

/// This process's peak resident set so far, in MiB (`VmHWM`), for the closing log line:
/// the memory contract the README states, as measured by the run itself.
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    #[test]
    fn peak_rss_is_read_from_proc() {
        assert!(super::peak_rss_mib() > 0.0);
    }
}
