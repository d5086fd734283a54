//! The outages played against every variant: which hosts misbehave, how and when. Times are
//! ms from the start of the users' load; every scenario warms up healthy first, so the
//! breaker and Envoy's tools have seen normal traffic before the fault.

use super::upstream::{Capacity, Mode};
use super::variants::Balancing;
use std::time::Duration;

/// A change to the upstream at a moment of the run.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    /// Hosts `from..to` switch to a mode.
    Mode(usize, usize, Mode),
    /// Host `0`'s next `1` requests fail, whatever its mode.
    FailNext(usize, u32),
}

/// One outage.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    /// Users' requests per second.
    pub rate: f64,
    pub balancing: Balancing,
    pub hosts: usize,
    pub capacity: Capacity,
    /// Work-time multiplier of hosts in [`Mode::Slow`].
    pub slow_factor: u32,
    pub fault_start_ms: u64,
    pub fault_end_ms: u64,
    pub end_ms: u64,
    pub actions: Vec<(u64, Action)>,
    /// Spans (ms) in which a healthy host could serve, beyond before and after the fault.
    pub serviceable_in_fault: Vec<(u64, u64)>,
}

/// The service: 3 hosts of 2 slots x 15 ms each, 400 requests/s in all, with users at
/// 150/s, so that the retries of a slowed service (3 tries a request) exceed its capacity.
const CAPACITY: Capacity = Capacity {
    slots: 2,
    work: Duration::from_millis(15),
};
const HOSTS: usize = 3;
const RATE: f64 = 150.0;
const WARM: u64 = 3_000;

/// Every scenario name, the ones the targets judge first.
pub const NAMES: [&str; 10] = [
    "hard_down",
    "brownout",
    "partial_lr",
    "partial_rr",
    "low_traffic",
    "refused",
    "hang",
    "slow",
    "flapping",
    "herd",
];

/// The scenario called `name`.
pub fn named(name: &str) -> Option<Scenario> {
    let all_hosts = |mode| vec![(WARM, Action::Mode(0, HOSTS, mode))];
    let outage = |name, mode, fault: u64, tail: u64| Scenario {
        name,
        rate: RATE,
        balancing: Balancing::RoundRobin,
        hosts: HOSTS,
        capacity: CAPACITY,
        slow_factor: 10,
        fault_start_ms: WARM,
        fault_end_ms: WARM + fault,
        end_ms: WARM + fault + tail,
        actions: [
            all_hosts(mode),
            vec![(WARM + fault, Action::Mode(0, HOSTS, Mode::Healthy))],
        ]
        .concat(),
        serviceable_in_fault: Vec::new(),
    };
    let partial = |name, balancing| {
        let mut s = outage(name, Mode::Fail, 6_000, 6_000);
        s.balancing = balancing;
        s.actions = vec![
            (WARM, Action::Mode(0, 1, Mode::Fail)),
            (s.fault_end_ms, Action::Mode(0, 1, Mode::Healthy)),
        ];
        s.serviceable_in_fault = vec![(s.fault_start_ms, s.fault_end_ms)];
        s
    };
    Some(match name {
        "hard_down" => outage("hard_down", Mode::Fail, 6_000, 12_000),
        "refused" => outage("refused", Mode::Refused, 6_000, 12_000),
        "hang" => outage("hang", Mode::Hang, 6_000, 12_000),
        "slow" => outage("slow", Mode::Slow, 6_000, 12_000),
        "brownout" => {
            let mut s = outage("brownout", Mode::Slow, 3_000, 15_000);
            s.slow_factor = 8;
            s
        }
        "partial_rr" => partial("partial_rr", Balancing::RoundRobin),
        "partial_lr" => partial("partial_lr", Balancing::LeastRequest),
        "herd" => outage("herd", Mode::Fail, 12_000, 8_000),
        "flapping" => flapping(outage("flapping", Mode::Fail, 6_000, 10_000)),
        "low_traffic" => low_traffic(outage("low_traffic", Mode::Fail, 24_000, 3_000)),
        _ => return None,
    })
}

/// 2 s bad, 2 s good, 2 s bad.
fn flapping(mut s: Scenario) -> Scenario {
    let w = s.fault_start_ms;
    s.actions = vec![
        (w, Action::Mode(0, HOSTS, Mode::Fail)),
        (w + 2_000, Action::Mode(0, HOSTS, Mode::Healthy)),
        (w + 4_000, Action::Mode(0, HOSTS, Mode::Fail)),
        (w + 6_000, Action::Mode(0, HOSTS, Mode::Healthy)),
    ];
    s.serviceable_in_fault = vec![(w + 2_000, w + 4_000)];
    s
}

/// 2 requests/s and one isolated failure every 6 s: nothing any protection should act on.
fn low_traffic(mut s: Scenario) -> Scenario {
    s.rate = 2.0;
    s.actions = (0..4)
        .map(|i| (s.fault_start_ms + i * 6_000, Action::FailNext(0, 1)))
        .collect();
    s.serviceable_in_fault = vec![(s.fault_start_ms, s.fault_end_ms)];
    s
}

impl Scenario {
    /// What each run says about the scenario, for the progress lines.
    pub fn describe(&self) -> String {
        format!(
            "{} hosts x {} slots x {} ms, users at {}/s, fault {:.0}-{:.0} s, end {:.0} s",
            self.hosts,
            self.capacity.slots,
            self.capacity.work.as_millis(),
            self.rate,
            self.fault_start_ms as f64 / 1e3,
            self.fault_end_ms as f64 / 1e3,
            self.end_ms as f64 / 1e3
        )
    }
}
