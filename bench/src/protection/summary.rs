//! The figures of one run, computed from what the users saw and what the upstream got:
//! pure functions of the answers and arrival times, so the harness' arithmetic (recovery
//! time above all) is tested without Envoy.

use serde_json::{json, Value};

/// What a user got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    UpstreamFailure,
    Refused,
}

/// One user request: when it was sent (ms since the run's start), how long its answer took
/// and what it was.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub sent_ms: f64,
    pub latency_ms: f64,
    pub outcome: Outcome,
}

/// The times of a run, in ms since its start.
#[derive(Debug, Clone)]
pub struct Timeline {
    pub fault_start: f64,
    pub fault_end: f64,
    pub end: f64,
    /// Spans in which a healthy host could have served a request: a refusal then is
    /// collateral.
    pub serviceable: Vec<(f64, f64)>,
}

/// The figures of one variant in one scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    pub upstream_calls_during_fault: u64,
    pub success: u64,
    pub upstream_failure: u64,
    pub refused: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Median time to a local refusal during the fault (0 for none).
    pub refused_p50_ms: f64,
    pub first_refusal_ms: Option<f64>,
    pub recovery_s: Option<f64>,
    pub collateral_refusals: u64,
    pub calls_first_second_back: u64,
    /// Upstream calls during the fault from 1 s after the first refusal on (the retries in
    /// flight at the trip are over by then): what half-open let through.
    pub half_open_calls: u64,
    pub trips: u64,
}

/// Everything a run of one variant left behind.
pub struct Run<'a> {
    pub answers: &'a [Answer],
    /// Arrival times at the upstream hosts, ms since the run's start.
    pub arrivals: &'a [f64],
    /// Connections the upstream refused during the fault (calls the model cannot see).
    pub refused_connects: u64,
    pub trips: u64,
}

/// Computes the figures of `run` over `t`.
pub fn figures(run: &Run, t: &Timeline) -> Figures {
    let in_fault = |ms: f64| ms >= t.fault_start && ms < t.fault_end;
    let during: Vec<&Answer> = run.answers.iter().filter(|a| in_fault(a.sent_ms)).collect();
    let count = |o: Outcome| during.iter().filter(|a| a.outcome == o).count() as u64;
    let mut latencies: Vec<f64> = during.iter().map(|a| a.latency_ms).collect();
    latencies.sort_by(f64::total_cmp);
    let mut refusals: Vec<f64> = during
        .iter()
        .filter(|a| a.outcome == Outcome::Refused)
        .map(|a| a.latency_ms)
        .collect();
    refusals.sort_by(f64::total_cmp);
    let first_refusal_ms = run
        .answers
        .iter()
        .find(|a| a.outcome == Outcome::Refused && a.sent_ms >= t.fault_start)
        .map(|a| a.sent_ms - t.fault_start);
    let collateral = run
        .answers
        .iter()
        .filter(|a| a.outcome == Outcome::Refused)
        .filter(|a| {
            t.serviceable
                .iter()
                .any(|&(s, e)| a.sent_ms >= s && a.sent_ms < e)
        })
        .count() as u64;
    let back = t.fault_end..t.fault_end + 1_000.0;
    let after_refusal = first_refusal_ms.map_or(0, |r| {
        let from = t.fault_start + r + 1_000.0;
        run.arrivals
            .iter()
            .filter(|&&a| a >= from && a < t.fault_end)
            .count() as u64
    });
    Figures {
        upstream_calls_during_fault: run.arrivals.iter().filter(|&&a| in_fault(a)).count() as u64
            + run.refused_connects,
        success: count(Outcome::Success),
        upstream_failure: count(Outcome::UpstreamFailure),
        refused: count(Outcome::Refused),
        p50_ms: quantile(&latencies, 0.5),
        p99_ms: quantile(&latencies, 0.99),
        refused_p50_ms: quantile(&refusals, 0.5),
        first_refusal_ms,
        recovery_s: recovery_s(run.answers, t.fault_end, t.end),
        collateral_refusals: collateral,
        calls_first_second_back: run.arrivals.iter().filter(|a| back.contains(a)).count() as u64,
        half_open_calls: after_refusal,
        trips: run.trips,
    }
}

/// The `q` quantile of sorted values (0 for none).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Seconds from `from` (ms) until users are back: the first moment after which every
/// window (of at least 1 s and 10 requests, stepped by 250 ms) until `end` has at least
/// 90 % of its requests succeed. `None` if that never happens before the run ends.
pub fn recovery_s(answers: &[Answer], from: f64, end: f64) -> Option<f64> {
    const STEP: f64 = 250.0;
    let sent = answers
        .iter()
        .filter(|a| a.sent_ms >= from && a.sent_ms < end)
        .count() as f64;
    let rate = sent / ((end - from) / 1_000.0).max(0.001);
    let width = (1_000.0f64).max(10_000.0 / rate.max(0.001)).min(end - from);
    let good = |start: f64| {
        let window = answers
            .iter()
            .filter(|a| a.sent_ms >= start && a.sent_ms < start + width);
        let (mut all, mut ok) = (0u32, 0u32);
        for a in window {
            all += 1;
            ok += u32::from(a.outcome == Outcome::Success);
        }
        all == 0 || f64::from(ok) >= 0.9 * f64::from(all)
    };
    let starts: Vec<f64> = (0..)
        .map(|i| from + f64::from(i) * STEP)
        .take_while(|s| s + width <= end)
        .collect();
    // The latest window that fails; recovery starts right after it.
    match starts.iter().rposition(|&s| !good(s)) {
        None => Some(0.0),
        Some(i) if i + 1 < starts.len() => Some((starts[i + 1] - from) / 1_000.0),
        Some(_) => None,
    }
}

/// Per-second rates of `times` (ms) in buckets of `bucket_ms`, from 0 to `end`.
pub fn rate_series(times: impl Iterator<Item = f64>, bucket_ms: f64, end: f64) -> Vec<f64> {
    let n = (end / bucket_ms).ceil() as usize;
    let mut buckets = vec![0.0; n];
    for t in times {
        if let Some(b) = buckets.get_mut((t / bucket_ms) as usize) {
            *b += 1_000.0 / bucket_ms;
        }
    }
    buckets
}

/// One variant's entry in results.json.
pub fn to_json(f: &Figures) -> Value {
    let round = |v: f64| (v * 10.0).round() / 10.0;
    let ms = |v: f64| (v * 100.0).round() / 100.0;
    json!({
        "upstream_calls_during_fault": f.upstream_calls_during_fault,
        "users": {"success": f.success, "upstream_failure": f.upstream_failure, "refused": f.refused},
        "latency_ms": {"p50": ms(f.p50_ms), "p99": ms(f.p99_ms), "refused_p50": ms(f.refused_p50_ms)},
        "recovery_s": f.recovery_s.map(round),
        "collateral_refusals": f.collateral_refusals,
        "first_refusal_ms": f.first_refusal_ms.map(round),
        "calls_first_second_back": f.calls_first_second_back,
        "half_open_calls": f.half_open_calls,
        "trips": f.trips,
    })
}

/// The results of `scenarios` (results.json's `scenarios` object) as one Markdown table.
pub fn markdown(scenarios: &serde_json::Map<String, Value>) -> String {
    let mut t = String::from(
        "| scenario | variant | upstream calls in fault | users ok / failed / refused | p50 / p99 ms | first refusal | recovery | collateral refusals | calls 1st s back | trips |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (scenario, variants) in scenarios {
        let Some(variants) = variants.as_object() else {
            continue;
        };
        for (variant, v) in variants {
            let opt = |x: &Value, unit: &str| {
                x.as_f64()
                    .map_or("-".to_string(), |f| format!("{f} {unit}"))
            };
            let u = &v["users"];
            t.push_str(&format!(
                "| {scenario} | {variant} | {} | {} / {} / {} | {} / {} | {} | {} | {} | {} | {} |\n",
                v["upstream_calls_during_fault"],
                u["success"],
                u["upstream_failure"],
                u["refused"],
                v["latency_ms"]["p50"],
                v["latency_ms"]["p99"],
                opt(&v["first_refusal_ms"], "ms"),
                opt(&v["recovery_s"], "s"),
                v["collateral_refusals"],
                v["calls_first_second_back"],
                v["trips"],
            ));
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ten requests a second from 0 to `end` ms, failing in `[bad_from, bad_to)`.
    fn users(end: f64, bad_from: f64, bad_to: f64, bad: Outcome) -> Vec<Answer> {
        (0..(end / 100.0) as u32)
            .map(|i| f64::from(i) * 100.0)
            .map(|sent_ms| Answer {
                sent_ms,
                latency_ms: 1.0,
                outcome: if sent_ms >= bad_from && sent_ms < bad_to {
                    bad
                } else {
                    Outcome::Success
                },
            })
            .collect()
    }

    #[test]
    fn recovery_is_counted_from_the_fault_end_to_the_last_bad_window() {
        let a = users(20_000.0, 2_000.0, 8_000.0, Outcome::UpstreamFailure);
        // The fault ends at 5 s; users fail until 8 s; a 1 s window from 7.25 s holds a
        // failure, so the first clean start is 8 s: 3 s after the fault's end.
        assert_eq!(recovery_s(&a, 5_000.0, 20_000.0), Some(3.0));
    }

    #[test]
    fn a_service_that_never_comes_back_has_no_recovery() {
        let a = users(20_000.0, 2_000.0, 20_000.0, Outcome::Refused);
        assert_eq!(recovery_s(&a, 5_000.0, 20_000.0), None);
    }

    #[test]
    fn a_relapse_after_a_good_spell_counts_as_not_recovered_yet() {
        let mut a = users(20_000.0, 2_000.0, 6_000.0, Outcome::UpstreamFailure);
        for x in a
            .iter_mut()
            .filter(|x| x.sent_ms >= 12_000.0 && x.sent_ms < 14_000.0)
        {
            x.outcome = Outcome::Refused;
        }
        assert_eq!(recovery_s(&a, 5_000.0, 20_000.0), Some(9.0));
    }

    #[test]
    fn figures_split_users_and_calls_by_the_fault_window() {
        let a = users(10_000.0, 3_000.0, 5_000.0, Outcome::Refused);
        let arrivals: Vec<f64> = (0..100).map(|i| f64::from(i) * 100.0).collect();
        let t = Timeline {
            fault_start: 2_000.0,
            fault_end: 6_000.0,
            end: 10_000.0,
            serviceable: vec![(4_000.0, 10_000.0)],
        };
        let run = Run {
            answers: &a,
            arrivals: &arrivals,
            refused_connects: 3,
            trips: 1,
        };
        let f = figures(&run, &t);
        assert_eq!((f.success, f.refused, f.upstream_failure), (20, 20, 0));
        assert_eq!(f.upstream_calls_during_fault, 43);
        assert_eq!(f.first_refusal_ms, Some(1_000.0));
        assert_eq!(f.collateral_refusals, 10);
        assert_eq!(f.calls_first_second_back, 10);
        // Refused from 3 s, the fault over at 6 s: the arrivals from 4 s to 6 s.
        assert_eq!(f.half_open_calls, 20);
    }

    #[test]
    fn the_json_entry_has_the_documented_shape() {
        let a = users(10_000.0, 3_000.0, 5_000.0, Outcome::Refused);
        let t = Timeline {
            fault_start: 2_000.0,
            fault_end: 6_000.0,
            end: 10_000.0,
            serviceable: vec![],
        };
        let v = to_json(&figures(
            &Run {
                answers: &a,
                arrivals: &[],
                refused_connects: 0,
                trips: 2,
            },
            &t,
        ));
        for key in [
            "upstream_calls_during_fault",
            "recovery_s",
            "collateral_refusals",
            "first_refusal_ms",
            "trips",
        ] {
            assert!(v.get(key).is_some(), "{key} missing from {v}");
        }
        assert!(v["users"]["success"].is_u64() && v["users"]["upstream_failure"].is_u64());
        assert!(v["users"]["refused"].is_u64() && v["trips"].is_u64());
        assert!(v["recovery_s"].is_f64() && v["first_refusal_ms"].is_f64());
        let mut m = serde_json::Map::new();
        m.insert("hard_down".into(), json!({ "none": v }));
        let table = markdown(&m);
        assert_eq!(table.lines().count(), 3, "{table}");
        assert!(
            table.contains("| hard_down | none | 0 | 20 / 0 / 20 |"),
            "{table}"
        );
    }

    #[test]
    fn rates_are_per_second_whatever_the_bucket() {
        let s = rate_series([0.0, 100.0, 600.0].into_iter(), 500.0, 1_000.0);
        assert_eq!(s, vec![4.0, 2.0]);
    }
}
