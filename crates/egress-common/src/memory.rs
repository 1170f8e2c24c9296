//! Keeping the resident set as small as the data in flight.

/// Serve every allocation of `threshold` bytes or more with its own mapping, returned to
/// the system when freed. glibc otherwise raises that threshold as large buffers are freed
/// and then carves later buffers out of its per-thread heaps, which fragments. Measured:
/// egress-sync's peak RSS went from 91 MiB to 60 MiB with a 40 MiB part budget (threshold
/// 128 KiB); egress-dump's from 59-61 MiB to 37 MiB for two tables dumped one after the
/// other (threshold 1 MiB, so that only parts are mapped: at 128 KiB the compression
/// blocks were too, and the page faults cost 5-10% of its throughput).
pub fn map_buffers_from(threshold: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; called before other threads start.
    unsafe {
        let threshold = threshold.min(i32::MAX as usize) as i32;
        libc::mallopt(libc::M_MMAP_THRESHOLD, threshold);
        libc::mallopt(libc::M_TRIM_THRESHOLD, threshold);
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
