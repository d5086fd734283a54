//! Successes batched per worker, with the sampled host that teaches the breaker a
//! healthy cluster's hosts.

use crate::core::codec::RecordHeader;
use crate::core::hosts::{Address, SAMPLE_EVERY};
use crate::core::outcome::Outcome;
use crate::core::settings::Settings;
use crate::core::state::{Record, State};

use super::{Call, Ticket};

/// Successes a worker has seen but not yet written to the shared record. A closed breaker
/// with no failure streak gains nothing from hearing about each fast success at once, so
/// they are batched and folded in on the next write, keeping shared-data writes off the
/// success path. One of them in [`SAMPLE_EVERY`] has its host read, which is how the
/// breaker learns a healthy cluster's hosts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SuccessBatch {
    pub(super) generation: u32,
    pub(super) successes: u32,
    /// The host of a sampled success, folded in with the successes.
    pub(super) sampled: Option<Address>,
    /// Successes until the next one is sampled; 0: this one. Kept across folds.
    pub(super) until_sample: u32,
}

impl SuccessBatch {
    /// Whether the call may wait in the batch instead of being written now, judged against
    /// the freshest record this worker has seen.
    pub fn can_defer(
        last_seen: &RecordHeader,
        settings: &Settings,
        ticket: Ticket,
        call: &Call,
    ) -> bool {
        call.outcome == Outcome::Success
            && !ticket.probe
            && !settings.is_slow(call.elapsed_ms)
            && (call.retry_after_ms.is_none() || !settings.honor_retry_after)
            && last_seen.state == State::Closed
            && last_seen.generation == ticket.generation
            && last_seen.consecutive_failures == 0
    }

    /// Adds one success from `generation`; successes from an older generation are dropped.
    pub fn defer(&mut self, generation: u32) {
        if self.generation != generation {
            *self = SuccessBatch {
                generation,
                until_sample: self.until_sample,
                ..SuccessBatch::default()
            };
        }
        self.successes = self.successes.saturating_add(1);
        self.until_sample = self.until_sample.saturating_sub(1);
    }

    /// Whether the success just deferred is the one whose host should be read.
    pub fn wants_host(&self) -> bool {
        self.until_sample == 0
    }

    /// The host the sampled success had (`None` if Envoy said none); the next sample
    /// comes [`SAMPLE_EVERY`] successes later whatever the read gave, so a cluster whose
    /// hosts cannot be read costs no more than one whose hosts can.
    pub fn sample(&mut self, host: Option<Address>) {
        self.sampled = host.or(self.sampled);
        self.until_sample = SAMPLE_EVERY;
    }

    /// Takes the successes (and the sample) out to be written, leaving the sampling pace.
    pub fn take(&mut self) -> SuccessBatch {
        let taken = SuccessBatch {
            until_sample: 0,
            ..*self
        };
        *self = SuccessBatch {
            generation: self.generation,
            until_sample: self.until_sample,
            ..SuccessBatch::default()
        };
        taken
    }

    pub fn is_empty(&self) -> bool {
        self.successes == 0
    }

    /// Puts back successes a failed write could not fold in.
    pub fn restore(&mut self, other: SuccessBatch) {
        if self.is_empty() || self.generation == other.generation {
            self.generation = other.generation;
            self.successes = self.successes.saturating_add(other.successes);
            self.sampled = self.sampled.or(other.sampled);
        }
    }

    /// Folds the batch into `record`; reports whether the record changed.
    pub fn fold_into(self, record: &mut Record, settings: &Settings, now_ms: u64) -> bool {
        if self.successes == 0
            || self.generation != record.generation
            || record.state != State::Closed
        {
            return false;
        }
        record
            .window
            .add_successes(self.successes, now_ms, settings.window);
        record
            .hosts
            .successes(self.successes, self.sampled, now_ms, settings.window);
        true
    }
}
