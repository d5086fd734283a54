//! The answers to the fleet's unary calls, each sent on to the step it is for: a
//! publish's or a progress write's outcome, the holder's token, first read, lease and
//! quorum probe, a context's start-up read.

use crate::filter::host::{Buffer, Host};

use super::super::breakers::Breakers;
use super::calls::Pending;
use super::shared_link::SharedLink;
use super::watch::UNAUTHENTICATED;
use super::Fleet;

impl Fleet {
    /// The answer to one of this context's unary calls (`status` 0: the message is in the
    /// receive buffer, `size` bytes).
    pub fn answered(
        &mut self,
        host: &impl Host,
        breakers: &mut Breakers,
        token: u32,
        status: u32,
        size: usize,
        now_ms: u64,
    ) {
        let Some(pending) = self.calls.answered(token) else {
            return;
        };
        let body = if status == 0 {
            host.buffer(Buffer::GrpcReceive, size).unwrap_or_default()
        } else {
            Vec::new()
        };
        match (pending, status) {
            (Pending::Publish { breaker, sent }, 0) => {
                self.published(host, breakers, &breaker, sent, &body, now_ms)
            }
            (
                Pending::Progress {
                    breaker,
                    sent,
                    progress,
                },
                0,
            ) => self.progressed(host, breakers, &breaker, &sent, &progress, &body, now_ms),
            (
                Pending::Vote {
                    breaker,
                    sent,
                    lease,
                },
                status,
            ) => {
                let sent = Some((sent, lease));
                self.vote_answered(host, breakers, &breaker, sent, status, &body, now_ms)
            }
            (Pending::Unvote { breaker }, status) => {
                self.vote_answered(host, breakers, &breaker, None, status, &body, now_ms)
            }
            (Pending::Publish { breaker, .. } | Pending::Progress { breaker, .. }, status) => {
                if status == UNAUTHENTICATED {
                    SharedLink::update(host, |c| c.token.clear());
                }
                self.publish_failed(&breaker, now_ms)
            }
            (pending, status) => self.answered_link(host, breakers, pending, status, &body, now_ms),
        }
        self.publish(host, breakers, now_ms);
    }

    /// The answers that concern the link and the reads of the whole prefix.
    fn answered_link(
        &mut self,
        host: &impl Host,
        breakers: &mut Breakers,
        pending: Pending,
        status: u32,
        body: &[u8],
        now_ms: u64,
    ) {
        match (pending, status) {
            (Pending::Range(attempt) | Pending::Auth(attempt), _) if !self.attempt_is(attempt) => {}
            (Pending::Auth(attempt), 0) => self.authenticated(host, body, Some(attempt), now_ms),
            (Pending::Reauth, 0) => self.authenticated(host, body, None, now_ms),
            (Pending::Range(_), 0) => self.joined(host, breakers, body, now_ms),
            (Pending::LeaseGrant, 0) => self.leased(host, body, now_ms),
            (Pending::Peek, 0) => self.peeked(host, breakers, body, now_ms),
            (Pending::Quorum, 0) => self.quorum_confirmed(now_ms),
            (Pending::Quorum, UNAUTHENTICATED) => {
                // etcd forgot the token (restarted, or it expired): log in again on the
                // next tick, before the probe's silence ends the link.
                SharedLink::update(host, |c| c.token.clear());
            }
            (Pending::Range(_) | Pending::Auth(_) | Pending::LeaseGrant, status) => {
                // A failed first read or lease grant ends the link like a closed stream.
                let code = if status == 0 { 2 } else { status };
                self.down(host, code, now_ms);
            }
            // A publish or progress answer never gets here; the member put's and a failed
            // re-authentication's answers change nothing.
            _ => {}
        }
    }
}
