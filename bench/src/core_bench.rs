//! The core's cost per request, natively: the decisions the filter makes for a closed
//! breaker and a successful call (glance at the stored bytes, admit, judge the response,
//! batch the success), in a loop whose inputs and results go through `black_box`, so the
//! compiler cannot fold the work away.

use std::hint::black_box;
use std::time::Instant;

use envoy_circuit_breaker::core::breaker::{self, Admission, Call, SuccessBatch};
use envoy_circuit_breaker::core::codec;
use envoy_circuit_breaker::core::outcome::Outcome;
use envoy_circuit_breaker::core::settings::Settings;
use envoy_circuit_breaker::core::state::Record;

/// Nanoseconds per call of `step`, the median of `repeats` timed runs of `n` calls.
fn time_per_call(n: u64, repeats: usize, mut step: impl FnMut(u64) -> u64) -> f64 {
    let mut runs = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let started = Instant::now();
        let mut sink = 0u64;
        for i in 0..n {
            sink = sink.wrapping_add(step(black_box(i)));
        }
        black_box(sink);
        runs.push(started.elapsed().as_nanos() as f64 / n as f64);
    }
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

/// What the microbenchmarks measured.
pub struct CoreFigures {
    /// Admit plus record on the common path: closed, fast success.
    pub closed_success_ns: f64,
    /// A failure: full decode, record, encode (the write path's core work).
    pub failure_ns: f64,
}

pub fn run() -> CoreFigures {
    let settings = Settings::default();
    let bytes = codec::encode(&Record::default());
    let mut tally = SuccessBatch::default();
    let closed_success_ns = time_per_call(5_000_000, 7, |i| {
        let glance = match codec::glance(black_box(&bytes)) {
            Some(g) => g,
            None => return 0,
        };
        let ticket = match breaker::admit_at_a_glance(
            &glance,
            black_box(&settings),
            &mut breaker::Now::fixed(black_box(i)),
        ) {
            Some(Admission::Admitted(t)) => t,
            _ => return 0,
        };
        let status = black_box(200 + (i % 2) as u32);
        let outcome = settings
            .classifier
            .success_without_flags(status, None, true)
            .unwrap_or(Outcome::Ignored);
        let call = Call {
            outcome,
            elapsed_ms: 0,
            retry_after_ms: None,
        };
        if SuccessBatch::can_defer(&glance, &settings, ticket, &call) {
            tally.defer(ticket.generation);
            1
        } else {
            0
        }
    });
    black_box(&tally);
    let failure_ns = time_per_call(500_000, 5, |i| {
        let Ok(mut record) = codec::decode(black_box(&bytes)) else {
            return 0;
        };
        let ticket = match breaker::admit(&mut record, &settings, i, 0).value {
            Admission::Admitted(t) => t,
            _ => return 0,
        };
        let fail = Call {
            outcome: Outcome::Failure(envoy_circuit_breaker::core::outcome::Failure::Status(503)),
            elapsed_ms: 1,
            retry_after_ms: None,
        };
        let step = breaker::record(&mut record, &settings, ticket, fail, i);
        codec::encode(&record).len() as u64 + u64::from(step.dirty)
    });
    CoreFigures {
        closed_success_ns,
        failure_ns,
    }
}
