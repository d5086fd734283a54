//! What a finished call means for the breaker. Envoy reports the end of every stream as a
//! status code plus a bit set of response flags; this turns the pair into one [`Outcome`].
//! Calls that say nothing about the upstream's health (the client hung up, Envoy's own
//! overflow, no route) are neutral so they can neither trip nor heal the breaker.

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
    ConnectFailure,
    Timeout,
    Reset,
}

/// What Envoy reports at the end of a stream: status code (0 when no response was sent)
/// and response flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamEnd {
    pub status: u32,
    pub flags: u64,
}

/// Decides the outcome of one finished call.
pub fn classify(end: StreamEnd) -> Outcome {
    let f = end.flags;
    if f & flags::PROXY_OWN != 0 {
        return Outcome::Ignored;
    }
    if f & flags::CONNECT_FAILURE != 0 {
        return Outcome::Failure(Failure::ConnectFailure);
    }
    if f & flags::TIMEOUT != 0 {
        return Outcome::Failure(Failure::Timeout);
    }
    if f & flags::RESET != 0 {
        return Outcome::Failure(Failure::Reset);
    }
    if f & flags::CLIENT_GONE != 0 || end.status == 0 {
        return Outcome::Ignored;
    }
    match u16::try_from(end.status) {
        Ok(code) if (500..600).contains(&code) => Outcome::Failure(Failure::Status(code)),
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Ignored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(status: u32, flags: u64) -> Outcome {
        classify(StreamEnd { status, flags })
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
        assert_eq!(end(503, 0), Outcome::Failure(Failure::Status(503)));
        assert_eq!(end(599, 0), Outcome::Failure(Failure::Status(599)));
    }

    #[test]
    fn router_give_ups_are_failures_by_their_flags() {
        assert_eq!(
            end(503, flags::UPSTREAM_CONNECTION_FAILURE),
            Outcome::Failure(Failure::ConnectFailure)
        );
        assert_eq!(
            end(503, flags::NO_HEALTHY_UPSTREAM),
            Outcome::Failure(Failure::ConnectFailure)
        );
        assert_eq!(
            end(504, flags::UPSTREAM_REQUEST_TIMEOUT),
            Outcome::Failure(Failure::Timeout)
        );
        assert_eq!(
            end(503, flags::UPSTREAM_REMOTE_RESET),
            Outcome::Failure(Failure::Reset)
        );
        assert_eq!(
            end(200, flags::UPSTREAM_CONNECTION_TERMINATION),
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
        assert_eq!(
            end(
                503,
                flags::UPSTREAM_CONNECTION_FAILURE | flags::DOWNSTREAM_CONNECTION_TERMINATION
            ),
            Outcome::Failure(Failure::ConnectFailure)
        );
    }
}
