//! What a finished call means for the breaker. Envoy reports the end of every stream as a
//! status code plus a bit set of response flags (and, for gRPC, a `grpc-status`); the
//! [`Classifier`] turns that into one [`Outcome`]. Calls that say nothing about the
//! upstream's health (the client hung up, Envoy's own overflow, no route, ignored codes)
//! are neutral so they can neither trip nor heal the breaker.

use super::limits as l;

/// Envoy's response flag bits (`StreamInfo::CoreResponseFlag`), as read from the
/// `response.flags` property.
pub mod flags {
    pub const NO_HEALTHY_UPSTREAM: u64 = 0x2;
    pub const UPSTREAM_REQUEST_TIMEOUT: u64 = 0x4;
    pub const LOCAL_RESET: u64 = 0x8;
    pub const UPSTREAM_REMOTE_RESET: u64 = 0x10;
    pub const UPSTREAM_CONNECTION_FAILURE: u64 = 0x20;
    pub const UPSTREAM_CONNECTION_TERMINATION: u64 = 0x40;
    pub const UPSTREAM_OVERFLOW: u64 = 0x80;
    pub const NO_ROUTE_FOUND: u64 = 0x100;
    pub const DOWNSTREAM_CONNECTION_TERMINATION: u64 = 0x4000;
    pub const UPSTREAM_RETRY_LIMIT_EXCEEDED: u64 = 0x8000;
    pub const STREAM_IDLE_TIMEOUT: u64 = 0x10000;
    pub const UPSTREAM_MAX_STREAM_DURATION_REACHED: u64 = 0x80000;
    pub const UPSTREAM_PROTOCOL_ERROR: u64 = 0x800000;
    pub const NO_CLUSTER_FOUND: u64 = 0x1000000;
    pub const DOWNSTREAM_REMOTE_RESET: u64 = 0x10000000;

    pub const CONNECT_FAILURE: u64 =
        UPSTREAM_CONNECTION_FAILURE | NO_HEALTHY_UPSTREAM | UPSTREAM_RETRY_LIMIT_EXCEEDED;
    pub const TIMEOUT: u64 =
        UPSTREAM_REQUEST_TIMEOUT | UPSTREAM_MAX_STREAM_DURATION_REACHED | STREAM_IDLE_TIMEOUT;
    pub const RESET: u64 =
        UPSTREAM_REMOTE_RESET | UPSTREAM_CONNECTION_TERMINATION | UPSTREAM_PROTOCOL_ERROR;
    pub const PROXY_OWN: u64 = UPSTREAM_OVERFLOW | NO_ROUTE_FOUND | NO_CLUSTER_FOUND;
    pub const CLIENT_GONE: u64 =
        DOWNSTREAM_CONNECTION_TERMINATION | DOWNSTREAM_REMOTE_RESET | LOCAL_RESET;
}

/// gRPC status codes by name, as `grpc_failure_codes` may spell them.
pub const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// How a call ended, as far as the breaker is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure(Failure),
    /// Counts neither way.
    Ignored,
}

/// The kind of failure, kept for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Status(u16),
    Grpc(u32),
    ConnectFailure,
    Timeout,
    Reset,
}

/// What Envoy reports at the end of a stream: status code (0 when no response was sent),
/// response flags, and the `grpc-status` of a gRPC call if one was seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamEnd {
    pub status: u32,
    pub flags: u64,
    pub grpc_status: Option<u32>,
}

/// A set of HTTP status codes, 100 to 599.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatusSet([u64; 10]);

impl StatusSet {
    pub fn empty() -> StatusSet {
        StatusSet([0; 10])
    }

    /// Every code from `low` to `high`; codes outside 100 to 599 are left out.
    pub fn with_range(mut self, low: u16, high: u16) -> StatusSet {
        for code in low.max(100)..=high.min(599) {
            let i = usize::from(code) - 100;
            self.0[i / 64] |= 1 << (i % 64);
        }
        self
    }

    pub fn contains(&self, code: u32) -> bool {
        if !(100..600).contains(&code) {
            return false;
        }
        let i = code as usize - 100;
        self.0[i / 64] & (1 << (i % 64)) != 0
    }

    /// Parses `"5xx"`, `"502-504"` or `"429"` into the set of codes it names.
    pub fn parse_item(text: &str) -> Option<(u16, u16)> {
        let text = text.trim();
        if let Some(class) = text.strip_suffix("xx") {
            let c: u16 = class.parse().ok()?;
            // `then`, not `then_some`: `c * 100` overflows for a class such as "5444".
            return (1..=5).contains(&c).then(|| (c * 100, c * 100 + 99));
        }
        let (low, high) = match text.split_once('-') {
            Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
            None => {
                let c = text.parse().ok()?;
                (c, c)
            }
        };
        ((100..=599).contains(&low) && (100..=599).contains(&high) && low <= high)
            .then_some((low, high))
    }
}

/// What counts as a failure, per cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classifier {
    pub failure_status: StatusSet,
    /// Codes that count neither way; they win over `failure_status`.
    pub ignore_status: StatusSet,
    pub connect_failures: bool,
    pub resets: bool,
    pub timeouts: bool,
    /// Bit `n` set: gRPC status `n` is a failure.
    pub grpc_failure_codes: u32,
}

impl Default for Classifier {
    fn default() -> Self {
        Classifier {
            failure_status: StatusSet::empty().with_range(l::FAILURE_STATUS.0, l::FAILURE_STATUS.1),
            ignore_status: StatusSet::empty(),
            connect_failures: l::COUNT_CONNECT_FAILURES,
            resets: l::COUNT_RESETS,
            timeouts: l::COUNT_TIMEOUTS,
            grpc_failure_codes: l::GRPC_FAILURE_CODES
                .iter()
                .fold(0, |bits, code| bits | 1 << code),
        }
    }
}

impl Classifier {
    /// The outcome from the status alone, when the response completed and its status (or
    /// gRPC status) says success: no flag can change that, so the caller need not read
    /// them. `None`: read the flags and [`Classifier::classify`].
    pub fn success_without_flags(
        &self,
        status: u32,
        grpc_status: Option<u32>,
        complete: bool,
    ) -> Option<Outcome> {
        if !complete || !(100..600).contains(&status) {
            return None;
        }
        let end = StreamEnd {
            status,
            flags: 0,
            grpc_status,
        };
        (self.classify(end) == Outcome::Success).then_some(Outcome::Success)
    }

    /// Decides the outcome of one finished call.
    pub fn classify(&self, end: StreamEnd) -> Outcome {
        let f = end.flags;
        let counted = |on: bool, failure: Failure| {
            if on {
                Outcome::Failure(failure)
            } else {
                Outcome::Ignored
            }
        };
        if f & flags::PROXY_OWN != 0 {
            return Outcome::Ignored;
        }
        if f & flags::CONNECT_FAILURE != 0 {
            return counted(self.connect_failures, Failure::ConnectFailure);
        }
        if f & flags::TIMEOUT != 0 {
            return counted(self.timeouts, Failure::Timeout);
        }
        if f & flags::RESET != 0 {
            return counted(self.resets, Failure::Reset);
        }
        if f & flags::CLIENT_GONE != 0 || end.status == 0 {
            return Outcome::Ignored;
        }
        if let Some(grpc) = end.grpc_status {
            return if grpc < 32 && self.grpc_failure_codes & (1 << grpc) != 0 {
                Outcome::Failure(Failure::Grpc(grpc))
            } else {
                Outcome::Success
            };
        }
        if self.ignore_status.contains(end.status) {
            Outcome::Ignored
        } else if self.failure_status.contains(end.status) {
            Outcome::Failure(Failure::Status(end.status as u16))
        } else {
            Outcome::Success
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn end(status: u32, flags: u64) -> Outcome {
        Classifier::default().classify(StreamEnd {
            status,
            flags,
            grpc_status: None,
        })
    }

    #[test]
    fn upstream_answers_below_500_are_successes() {
        for status in [200, 201, 204, 301, 400, 404, 429, 499] {
            assert_eq!(end(status, 0), Outcome::Success, "{status}");
        }
    }

    #[test]
    fn upstream_5xx_are_failures() {
        assert_eq!(end(500, 0), Outcome::Failure(Failure::Status(500)));
        assert_eq!(end(599, 0), Outcome::Failure(Failure::Status(599)));
    }

    #[test]
    fn router_give_ups_are_failures_by_their_flags() {
        use flags::*;
        assert_eq!(
            end(503, UPSTREAM_CONNECTION_FAILURE),
            Outcome::Failure(Failure::ConnectFailure)
        );
        assert_eq!(
            end(503, NO_HEALTHY_UPSTREAM),
            Outcome::Failure(Failure::ConnectFailure)
        );
        assert_eq!(
            end(504, UPSTREAM_REQUEST_TIMEOUT),
            Outcome::Failure(Failure::Timeout)
        );
        assert_eq!(
            end(503, UPSTREAM_REMOTE_RESET),
            Outcome::Failure(Failure::Reset)
        );
        assert_eq!(
            end(200, UPSTREAM_CONNECTION_TERMINATION),
            Outcome::Failure(Failure::Reset),
            "a reset after the headers went out is still a failure"
        );
    }

    #[test]
    fn envoys_own_refusals_are_neutral() {
        assert_eq!(end(503, flags::UPSTREAM_OVERFLOW), Outcome::Ignored);
        assert_eq!(end(404, flags::NO_ROUTE_FOUND), Outcome::Ignored);
        assert_eq!(end(503, flags::NO_CLUSTER_FOUND), Outcome::Ignored);
    }

    #[test]
    fn a_client_that_hung_up_is_neutral() {
        assert_eq!(
            end(0, flags::DOWNSTREAM_CONNECTION_TERMINATION),
            Outcome::Ignored
        );
        assert_eq!(end(200, flags::DOWNSTREAM_REMOTE_RESET), Outcome::Ignored);
        assert_eq!(
            end(0, 0),
            Outcome::Ignored,
            "no response at all says nothing"
        );
    }

    #[test]
    fn an_upstream_failure_outweighs_the_client_leaving() {
        let both = flags::UPSTREAM_CONNECTION_FAILURE | flags::DOWNSTREAM_CONNECTION_TERMINATION;
        assert_eq!(end(503, both), Outcome::Failure(Failure::ConnectFailure));
    }

    #[test]
    fn switched_off_router_failures_become_neutral() {
        let c = Classifier {
            connect_failures: false,
            timeouts: false,
            resets: false,
            ..Classifier::default()
        };
        for f in [
            flags::UPSTREAM_CONNECTION_FAILURE,
            flags::UPSTREAM_REQUEST_TIMEOUT,
            flags::UPSTREAM_REMOTE_RESET,
        ] {
            let e = StreamEnd {
                status: 503,
                flags: f,
                grpc_status: None,
            };
            assert_eq!(c.classify(e), Outcome::Ignored);
        }
    }

    #[test]
    fn status_lists_and_ignored_codes() {
        let c = Classifier {
            failure_status: StatusSet::empty().with_range(502, 504).with_range(429, 429),
            ignore_status: StatusSet::empty().with_range(503, 503),
            ..Classifier::default()
        };
        let at = |status| {
            c.classify(StreamEnd {
                status,
                flags: 0,
                grpc_status: None,
            })
        };
        assert_eq!(at(429), Outcome::Failure(Failure::Status(429)));
        assert_eq!(at(502), Outcome::Failure(Failure::Status(502)));
        assert_eq!(at(503), Outcome::Ignored, "ignore wins");
        assert_eq!(at(500), Outcome::Success, "500 is not in the list");
    }

    #[test]
    fn grpc_calls_are_judged_by_grpc_status() {
        let c = Classifier::default();
        let at = |grpc| {
            c.classify(StreamEnd {
                status: 200,
                flags: 0,
                grpc_status: Some(grpc),
            })
        };
        assert_eq!(at(0), Outcome::Success);
        assert_eq!(at(5), Outcome::Success, "NOT_FOUND is the caller's problem");
        for code in [4, 8, 13, 14] {
            assert_eq!(at(code), Outcome::Failure(Failure::Grpc(code)));
        }
        assert_eq!(at(99), Outcome::Success);
    }

    #[test]
    fn only_complete_successes_skip_the_flags() {
        let c = Classifier::default();
        assert_eq!(
            c.success_without_flags(200, None, true),
            Some(Outcome::Success)
        );
        assert_eq!(
            c.success_without_flags(404, None, true),
            Some(Outcome::Success)
        );
        assert_eq!(
            c.success_without_flags(200, None, false),
            None,
            "a reset mid-body"
        );
        assert_eq!(c.success_without_flags(503, None, true), None);
        assert_eq!(c.success_without_flags(0, None, true), None);
        assert_eq!(c.success_without_flags(200, Some(14), true), None);
        assert_eq!(
            c.success_without_flags(200, Some(0), true),
            Some(Outcome::Success)
        );
    }

    proptest! {
        #[test]
        fn skipping_the_flags_never_changes_a_complete_success(
            status in 0u32..700, grpc in proptest::option::of(0u32..20), flags_seen: u64,
        ) {
            let c = Classifier::default();
            if let Some(quick) = c.success_without_flags(status, grpc, true) {
                // Whatever the flags, a complete answer that says success is one, except
                // for flags that only accompany Envoy's own error replies.
                let full = c.classify(StreamEnd { status, flags: flags_seen & flags::CLIENT_GONE, grpc_status: grpc });
                prop_assert!(full == quick || full == Outcome::Ignored);
            }
        }
    }

    #[test]
    fn status_items_parse() {
        assert_eq!(StatusSet::parse_item("5xx"), Some((500, 599)));
        assert_eq!(StatusSet::parse_item("4xx"), Some((400, 499)));
        assert_eq!(StatusSet::parse_item("502-504"), Some((502, 504)));
        assert_eq!(StatusSet::parse_item("429"), Some((429, 429)));
        for bad in [
            "6xx", "0xx", "5444xx", "65535xx", "504-502", "99", "600", "abc", "5x", "-1", "",
        ] {
            assert_eq!(StatusSet::parse_item(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn a_range_contains_exactly_its_codes(low in 100u16..600, len in 0u16..100, probe in 0u32..700) {
            let high = (low + len).min(599);
            let set = StatusSet::empty().with_range(low, high);
            prop_assert_eq!(set.contains(probe), probe >= u32::from(low) && probe <= u32::from(high));
        }
    }
}
