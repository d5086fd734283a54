//! What the bench binaries read of this machine and its processes: free ports, the port
//! of a listener's address, a process's CPU time and the load average.

use school_system::stack::free_port;

/// A free port on loopback.
pub fn port() -> Result<u16, String> {
    free_port().map_err(|e| e.to_string())
}

/// The port of `host:port` (0 if there is none).
pub fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// CPU time all of a process's threads have used, in microseconds (the scheduler's
/// counters, in ns).
pub fn cpu_us(pid: u32) -> Result<f64, String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| e.to_string())?;
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Ok(ns as f64 / 1_000.0)
}

/// The 1, 5 and 15 minute load averages, as the kernel prints them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
