//! The watch holder's link to etcd as a state machine over time: when to connect, ask for
//! progress and keep the lease alive, when silence means dead, and how long to back off.
//! A frozen or partitioned etcd says nothing at all and a member without quorum still
//! answers progress requests, so life is judged on three signals: the watch (any
//! message), the lease keep-alives, which only a leader answers, and a linearizable read,
//! which only a member in touch with a quorum answers (a leader cut off still renews
//! leases until it steps down, a second or two later). Host calls stay with the caller,
//! which carries out the returned commands.

/// The link's clock settings, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub progress_every_ms: u64,
    pub keep_alive_every_ms: u64,
    /// Silence on either signal for this long is a dead link.
    pub deadline_ms: u64,
    /// How long the first Range and the watch's creation may take (`fleet.timeout`).
    pub join_timeout_ms: u64,
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// Connected this long, the backoff starts over.
    pub stable_after_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            progress_every_ms: 1_000,
            keep_alive_every_ms: 1_000,
            deadline_ms: 2_000,
            join_timeout_ms: 500,
            backoff_min_ms: 250,
            backoff_max_ms: 8_000,
            stable_after_ms: 30_000,
        }
    }
}

/// Why the link went down, for the log line, the control API and `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Down {
    /// No message on the watch, not even a progress answer: etcd frozen or cut off.
    WatchSilent { for_ms: u64 },
    /// No keep-alive answered: no leader (quorum lost), or etcd frozen.
    KeepAliveSilent { for_ms: u64 },
    /// No linearizable read answered: the member reached has no quorum behind it.
    QuorumSilent { for_ms: u64 },
    /// A stream or call ended with this gRPC status (14: unreachable or no leader,
    /// 13: the member died, 16: the token expired, 3: wrong password).
    Closed { status: u32 },
    /// The first Range or the watch's creation did not answer within the join timeout.
    JoinTimedOut,
}

impl Down {
    /// What a user should check, for the log line and `/health`; empty when the cause is
    /// etcd's own (down, frozen, without a leader).
    pub fn hint(&self) -> &'static str {
        match self {
            Down::Closed { status: 14 } => ": check the etcd cluster's address and TLS",
            Down::Closed { status: 3 | 16 } => {
                ": check the etcd user and password (fleet.username_env, fleet.password_env)"
            }
            _ => "",
        }
    }
}

impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Down::WatchSilent { for_ms } => write!(f, "etcd silent on the watch for {for_ms}ms"),
            Down::KeepAliveSilent { for_ms } => {
                write!(
                    f,
                    "no lease keep-alive answered for {for_ms}ms (no leader?)"
                )
            }
            Down::QuorumSilent { for_ms } => {
                write!(
                    f,
                    "no read confirmed by a quorum for {for_ms}ms (quorum lost?)"
                )
            }
            Down::Closed { status } => write!(f, "etcd call ended with gRPC status {status}"),
            Down::JoinTimedOut => write!(f, "the first read of etcd did not answer in time"),
        }
    }
}

/// What the caller must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Read the prefix (Range), then open the watch from the Range's revision + 1 and the
    /// keep-alive stream; report with [`Link::on_joined`].
    Connect,
    SendProgress,
    SendKeepAlive,
    /// Send the quorum probe ([`super::etcd::range_quorum`]); report an answer with
    /// [`Link::on_quorum`].
    SendQuorumCheck,
    /// Cancel the streams and run every fleet breaker locally; `log` is true once per
    /// outage, not on every failed retry, and again when a retry fails with something
    /// else for the user to check.
    Disconnect {
        why: Down,
        log: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Waiting { retry_at_ms: u64 },
    Joining { since_ms: u64 },
    Up { since_ms: u64 },
}

/// The link of one Envoy process (kept by the holder; its state in shared data lets a new
/// holder carry on).
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    timing: Timing,
    phase: Phase,
    attempt: u32,
    /// The hint of the outage last logged; `None` while up.
    said_down: Option<&'static str>,
    heard_watch_ms: u64,
    heard_keep_ms: u64,
    heard_quorum_ms: u64,
    sent_progress_ms: u64,
    sent_keep_ms: u64,
    /// The highest store revision seen, for `/health`.
    pub last_revision: i64,
    pub last_down: Option<Down>,
}

impl Link {
    /// A link that connects on its first tick.
    pub fn new(timing: Timing, now_ms: u64) -> Link {
        Link {
            timing,
            phase: Phase::Waiting {
                retry_at_ms: now_ms,
            },
            attempt: 0,
            said_down: None,
            heard_watch_ms: now_ms,
            heard_keep_ms: now_ms,
            heard_quorum_ms: now_ms,
            sent_progress_ms: now_ms,
            sent_keep_ms: now_ms,
            last_revision: 0,
            last_down: None,
        }
    }

    pub fn connected(&self) -> bool {
        matches!(self.phase, Phase::Up { .. })
    }

    /// The wait before reconnect attempt `attempt` (0-based): doubling from the minimum to
    /// the cap, shortened by up to half by `jitter` (uniform in [0, 1)) so that a fleet
    /// cut off at once does not come back at once.
    pub fn backoff_ms(&self, attempt: u32, jitter: f64) -> u64 {
        let t = &self.timing;
        let base = t
            .backoff_min_ms
            .saturating_mul(1u64 << attempt.min(20))
            .min(t.backoff_max_ms);
        base - (base as f64 * jitter.clamp(0.0, 1.0) / 2.0) as u64
    }

    /// The timer's step.
    pub fn tick(&mut self, now_ms: u64, jitter: f64) -> Vec<Command> {
        let t = self.timing;
        match self.phase {
            Phase::Waiting { retry_at_ms } if now_ms >= retry_at_ms => {
                self.phase = Phase::Joining { since_ms: now_ms };
                vec![Command::Connect]
            }
            Phase::Waiting { .. } => Vec::new(),
            Phase::Joining { since_ms } if now_ms.saturating_sub(since_ms) >= t.join_timeout_ms => {
                self.down(Down::JoinTimedOut, now_ms, jitter)
            }
            Phase::Joining { .. } => Vec::new(),
            Phase::Up { since_ms } => {
                if now_ms.saturating_sub(since_ms) >= t.stable_after_ms {
                    self.attempt = 0;
                }
                let watch_silent = now_ms.saturating_sub(self.heard_watch_ms);
                let keep_silent = now_ms.saturating_sub(self.heard_keep_ms);
                if watch_silent > t.deadline_ms {
                    return self.down(
                        Down::WatchSilent {
                            for_ms: watch_silent,
                        },
                        now_ms,
                        jitter,
                    );
                }
                if keep_silent > t.deadline_ms {
                    return self.down(
                        Down::KeepAliveSilent {
                            for_ms: keep_silent,
                        },
                        now_ms,
                        jitter,
                    );
                }
                let quorum_silent = now_ms.saturating_sub(self.heard_quorum_ms);
                if quorum_silent > t.deadline_ms {
                    return self.down(
                        Down::QuorumSilent {
                            for_ms: quorum_silent,
                        },
                        now_ms,
                        jitter,
                    );
                }
                let mut out = Vec::new();
                if now_ms.saturating_sub(self.sent_progress_ms) >= t.progress_every_ms {
                    self.sent_progress_ms = now_ms;
                    out.push(Command::SendProgress);
                }
                if now_ms.saturating_sub(self.sent_keep_ms) >= t.keep_alive_every_ms {
                    self.sent_keep_ms = now_ms;
                    out.push(Command::SendKeepAlive);
                    out.push(Command::SendQuorumCheck);
                }
                out
            }
        }
    }

    /// The first Range answered and the watch was created at `revision`.
    pub fn on_joined(&mut self, revision: i64, now_ms: u64) {
        if matches!(self.phase, Phase::Joining { .. }) {
            self.phase = Phase::Up { since_ms: now_ms };
            self.said_down = None;
            self.heard_watch_ms = now_ms;
            self.heard_keep_ms = now_ms;
            self.heard_quorum_ms = now_ms;
            self.sent_progress_ms = now_ms;
            self.sent_keep_ms = now_ms;
            self.last_revision = self.last_revision.max(revision);
        }
    }

    /// Any message on the watch: events, a progress answer, the creation.
    pub fn on_watch(&mut self, revision: i64, now_ms: u64) {
        self.heard_watch_ms = now_ms;
        self.last_revision = self.last_revision.max(revision);
    }

    /// The quorum probe answered.
    pub fn on_quorum(&mut self, now_ms: u64) {
        self.heard_quorum_ms = now_ms;
    }

    /// A keep-alive answer with TTL left.
    pub fn on_keep_alive(&mut self, now_ms: u64) {
        self.heard_keep_ms = now_ms;
    }

    /// A stream closed or a holder's call failed with gRPC `status`.
    pub fn on_closed(&mut self, status: u32, now_ms: u64, jitter: f64) -> Vec<Command> {
        match self.phase {
            Phase::Waiting { .. } => Vec::new(),
            _ => self.down(Down::Closed { status }, now_ms, jitter),
        }
    }

    fn down(&mut self, why: Down, now_ms: u64, jitter: f64) -> Vec<Command> {
        let wait = self.backoff_ms(self.attempt, jitter);
        self.attempt = self.attempt.saturating_add(1);
        self.phase = Phase::Waiting {
            retry_at_ms: now_ms.saturating_add(wait),
        };
        // Once per outage, and again when etcd refuses the credentials: a first attempt
        // cut short by load (14) must not hide the wrong password (3) every retry meets
        // after it. Anything else on a retry (a frozen etcd's 14, a join timing out) is
        // the same outage.
        let hint = why.hint();
        let log = match self.said_down {
            None => true,
            Some(said) => matches!(why, Down::Closed { status: 3 | 16 }) && hint != said,
        };
        if log {
            self.said_down = Some(hint);
        }
        self.last_down = Some(why);
        vec![Command::Disconnect { why, log }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up_at(now: u64) -> Link {
        let mut l = Link::new(Timing::default(), now);
        assert_eq!(l.tick(now, 0.0), vec![Command::Connect]);
        l.on_joined(10, now + 2);
        l
    }

    #[test]
    fn connects_at_once_and_is_up_when_the_first_read_answers() {
        let mut l = Link::new(Timing::default(), 0);
        assert!(!l.connected());
        assert_eq!(l.tick(0, 0.0), vec![Command::Connect]);
        assert!(!l.connected(), "joining until the Range answers");
        l.on_joined(42, 3);
        assert!(l.connected());
        assert_eq!(l.last_revision, 42);
    }

    #[test]
    fn asks_for_progress_and_keeps_the_lease_alive_every_second() {
        let mut l = up_at(0);
        assert_eq!(l.tick(500, 0.0), vec![]);
        l.on_watch(10, 900);
        l.on_keep_alive(900);
        assert_eq!(
            l.tick(1_002, 0.0),
            vec![
                Command::SendProgress,
                Command::SendKeepAlive,
                Command::SendQuorumCheck
            ]
        );
        assert_eq!(l.tick(1_500, 0.0), vec![]);
    }

    #[test]
    fn a_silent_watch_is_dead_after_two_seconds() {
        let mut l = up_at(0);
        for now in (100..=2_000).step_by(100) {
            l.on_keep_alive(now);
            let out = l.tick(now, 0.0);
            assert!(
                !out.iter().any(|c| matches!(c, Command::Disconnect { .. })),
                "{now}"
            );
        }
        l.on_keep_alive(2_100);
        assert_eq!(
            l.tick(2_100, 0.0),
            vec![Command::Disconnect {
                why: Down::WatchSilent { for_ms: 2_098 },
                log: true
            }]
        );
        assert!(!l.connected());
    }

    #[test]
    fn a_member_without_quorum_is_found_by_its_silent_keep_alives() {
        // It still answers progress requests; only the leader answers keep-alives.
        let mut l = up_at(0);
        let mut out = Vec::new();
        for now in (100..=3_000).step_by(100) {
            l.on_watch(10, now);
            out = l.tick(now, 0.0);
            if !out.is_empty() && matches!(out[0], Command::Disconnect { .. }) {
                break;
            }
        }
        assert_eq!(
            out,
            vec![Command::Disconnect {
                why: Down::KeepAliveSilent { for_ms: 2_098 },
                log: true
            }]
        );
    }

    #[test]
    fn a_closed_stream_is_dead_at_once_and_logged_once_per_outage() {
        let mut l = up_at(0);
        assert_eq!(
            l.on_closed(13, 50, 0.0),
            vec![Command::Disconnect {
                why: Down::Closed { status: 13 },
                log: true
            }]
        );
        assert_eq!(l.on_closed(13, 60, 0.0), vec![], "already down");
        assert_eq!(l.tick(300, 0.0), vec![Command::Connect]);
        assert_eq!(
            l.on_closed(13, 301, 0.0),
            vec![Command::Disconnect {
                why: Down::Closed { status: 13 },
                log: false
            }],
            "a failed retry is not a new outage"
        );
        assert_eq!(l.tick(900, 0.0), vec![Command::Connect]);
        assert_eq!(
            l.on_closed(3, 901, 0.0),
            vec![Command::Disconnect {
                why: Down::Closed { status: 3 },
                log: true
            }],
            "but something new to check is said"
        );
        assert_eq!(l.last_down, Some(Down::Closed { status: 3 }));
        assert_eq!(l.tick(2_000, 0.0), vec![Command::Connect]);
        assert_eq!(
            l.tick(2_500, 0.0),
            vec![Command::Disconnect {
                why: Down::JoinTimedOut,
                log: false
            }],
            "a retry that only times out is the same outage"
        );
    }

    #[test]
    fn a_join_that_never_answers_times_out() {
        let mut l = Link::new(Timing::default(), 0);
        l.tick(0, 0.0);
        assert_eq!(l.tick(499, 0.0), vec![]);
        assert_eq!(
            l.tick(500, 0.0),
            vec![Command::Disconnect {
                why: Down::JoinTimedOut,
                log: true
            }]
        );
    }

    #[test]
    fn reconnects_back_off_doubling_to_the_cap_with_jitter() {
        let l = Link::new(Timing::default(), 0);
        let waits: Vec<u64> = (0..8).map(|a| l.backoff_ms(a, 0.0)).collect();
        assert_eq!(waits, [250, 500, 1_000, 2_000, 4_000, 8_000, 8_000, 8_000]);
        assert_eq!(l.backoff_ms(3, 0.999_999), 1_000 + 1);
        assert_eq!(l.backoff_ms(u32::MAX, 0.0), 8_000);
        let mut l = up_at(0);
        l.on_closed(14, 10, 0.0);
        assert_eq!(l.tick(259, 0.0), vec![]);
        assert_eq!(l.tick(260, 0.0), vec![Command::Connect]);
        l.on_closed(14, 261, 0.0);
        assert_eq!(l.tick(760, 0.0), vec![]);
        assert_eq!(l.tick(761, 0.0), vec![Command::Connect]);
    }

    #[test]
    fn a_long_stable_connection_resets_the_backoff() {
        let mut l = up_at(0);
        for _ in 0..4 {
            l.on_closed(14, 1, 0.0);
            l.tick(100_000, 0.0);
            l.on_joined(10, 100_000);
        }
        // Connected for 30 s: the next outage waits the minimum again.
        for now in (100_000..=130_000).step_by(500) {
            l.on_watch(10, now);
            l.on_keep_alive(now);
            l.on_quorum(now);
            l.tick(now, 0.0);
        }
        l.on_closed(14, 130_000, 0.0);
        assert_eq!(l.tick(130_249, 0.0), vec![]);
        assert_eq!(l.tick(130_250, 0.0), vec![Command::Connect]);
    }

    #[test]
    fn a_member_cut_off_from_its_quorum_is_dead_two_seconds_after_its_last_confirmed_read() {
        let mut l = up_at(0);
        // A leader left alone still answers keep-alives and progress; only the
        // linearizable read goes unanswered after the loss (at 1_000).
        for now in (100..=3_100).step_by(100) {
            l.on_watch(10, now);
            l.on_keep_alive(now);
            if now <= 1_000 {
                l.on_quorum(now);
            }
            let out = l.tick(now, 0.0);
            if now <= 3_000 {
                assert!(
                    !out.iter().any(|c| matches!(c, Command::Disconnect { .. })),
                    "{now}"
                );
            } else {
                assert_eq!(
                    out,
                    vec![Command::Disconnect {
                        why: Down::QuorumSilent { for_ms: 2_100 },
                        log: true
                    }]
                );
            }
        }
    }

    #[test]
    fn revisions_only_go_forward() {
        let mut l = up_at(0);
        l.on_watch(50, 1);
        l.on_watch(40, 2);
        assert_eq!(l.last_revision, 50);
    }
}
