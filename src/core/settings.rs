//! The validated, runtime form of one cluster's breaker settings: plain numbers in
//! milliseconds, so the decision code never parses or checks anything on the request path.

/// How one breaker decides to trip and to recover.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Consecutive failures that open the breaker; 0 switches the rule off.
    pub failure_threshold: u32,
    /// Share of failures (0 to 1) over the window that opens the breaker; 0 switches it off.
    pub failure_rate_threshold: f64,
    /// Calls the window must hold before the failure rate is trusted.
    pub minimum_requests: u32,
    /// Length of the sliding window the failure rate is computed over.
    pub window_ms: u64,
    /// Time spent open before probing in half-open.
    pub open_duration_ms: u64,
    /// Probes allowed in flight at once in half-open, across all workers.
    pub half_open_max_requests: u32,
    /// Successful probes that close the breaker again.
    pub success_threshold: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            failure_threshold: 5,
            failure_rate_threshold: 0.5,
            minimum_requests: 20,
            window_ms: 10_000,
            open_duration_ms: 60_000,
            half_open_max_requests: 1,
            success_threshold: 1,
        }
    }
}
