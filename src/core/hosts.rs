//! Which hosts of a cluster answered, and which of them failed: a bad host is not a bad
//! service. Envoy's outlier detection ejects single bad hosts; this breaker stops calls to
//! a failing service, so a trip rule fires only on failures (or slow calls) from at least
//! `trip_min_hosts` distinct hosts, or from every host the breaker knows of. Calls that had
//! no host at all (no healthy one, a connection never made) speak for the whole cluster.
//! Addresses come from outside, so everything here is bounded: at most [`MAX_HOSTS`]
//! hosts, addresses of at most [`MAX_ADDRESS_BYTES`].

use std::fmt;

use super::window::WindowSpec;

/// Hosts remembered per breaker; a cluster with more is taken to have this many.
pub const MAX_HOSTS: usize = 16;
/// Longest address kept; a longer one keeps its head and a hash of the whole.
pub const MAX_ADDRESS_BYTES: usize = 64;
/// Answers heard from other hosts before a host that is not heard from again is
/// forgotten: Envoy stops choosing a host that left the cluster or was ejected, while the
/// hosts it still chooses keep answering. Counting answers rather than time keeps what a
/// quiet cluster knows through its quiet spells.
pub const HOST_MEMORY: u64 = 128;
/// One success in this many that a worker does not write at once has its host read, so
/// the breaker learns a healthy cluster's hosts without a host call on every success.
pub const SAMPLE_EVERY: u32 = 32;
/// For this long after it first hears a host, a breaker's picture of its cluster is young:
/// right after Envoy starts, the first answers can all come from one failing host that
/// answers fastest while the healthy ones are still working on theirs.
pub const CENSUS_MS: u64 = 1_000;

/// A host's address as Envoy reports it (`upstream.address`), bounded and printable.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Address {
    len: u8,
    bytes: [u8; MAX_ADDRESS_BYTES],
}

impl Address {
    /// The address in `raw`, untrusted: bytes that are not printable ASCII become `?`, and
    /// an address longer than [`MAX_ADDRESS_BYTES`] keeps its head and a hash of the whole,
    /// so two long addresses stay apart. `None` for an empty one.
    pub fn new(raw: &[u8]) -> Option<Address> {
        if raw.is_empty() {
            return None;
        }
        let mut a = Address {
            len: 0,
            bytes: [0; MAX_ADDRESS_BYTES],
        };
        let printable = |b: &u8| if b.is_ascii_graphic() { *b } else { b'?' };
        if raw.len() <= MAX_ADDRESS_BYTES {
            for (to, from) in a.bytes.iter_mut().zip(raw) {
                *to = printable(from);
            }
            a.len = raw.len() as u8;
        } else {
            let tail = format!("~{:016x}", fnv1a(raw));
            let head = MAX_ADDRESS_BYTES - tail.len();
            for (to, from) in a.bytes.iter_mut().zip(&raw[..head]) {
                *to = printable(from);
            }
            a.bytes[head..].copy_from_slice(tail.as_bytes());
            a.len = MAX_ADDRESS_BYTES as u8;
        }
        Some(a)
    }

    /// An address read back from the store: only what [`Address::new`] can make.
    pub fn stored(bytes: &[u8]) -> Option<Address> {
        let fits = bytes.len() <= MAX_ADDRESS_BYTES && bytes.iter().all(u8::is_ascii_graphic);
        fits.then(|| Address::new(bytes)).flatten()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("?")
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What is remembered of one host, or of the calls that had none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    /// `None` stands for the calls that had no host.
    pub address: Option<Address>,
    /// [`Hosts::answers`] when it was last heard from.
    pub heard: u64,
    /// Its latest failure: a time in a time window, a call number in a count window.
    pub failed: Option<u64>,
    /// Its latest slow call, the same way.
    pub slow: Option<u64>,
    /// It failed during the current run of consecutive failures.
    pub in_streak: bool,
}

/// The hosts one breaker has heard from, kept in its shared record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hosts {
    /// At most [`MAX_HOSTS`] with an address, and at most one without.
    pub hosts: Vec<Host>,
    /// Answers heard with a host: the clock by which unheard hosts are forgotten.
    pub answers: u64,
    /// Calls counted into the window: the clock of a count window's marks.
    pub calls: u64,
    /// The marks are call numbers (a count window), not times.
    pub by_calls: bool,
    /// A trip rule is being held back because its calls came from too few hosts: an
    /// episode, logged once when it starts.
    pub confined: bool,
    /// When the first host was heard from; 0 before that.
    pub since_ms: u64,
}

/// Whether a rule's calls are spread over enough hosts to trip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spread {
    /// Over `trip_min_hosts` hosts, or some with no host, or calls the hosts say nothing
    /// about (recorded before they were tracked).
    Enough,
    /// Only because every host known failed, and fewer than `trip_min_hosts` are known:
    /// a one-host cluster, or one whose other hosts have not answered yet.
    EveryKnownHost,
    /// Too few hosts: these, of so many known.
    Confined(Vec<Address>, usize),
}

/// The calls a trip rule stands on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// The current run of consecutive failures.
    Streak,
    /// The failures in the window.
    Failures,
    /// The slow calls in the window.
    Slow,
}

impl Hosts {
    /// One call counted into the window: which host answered (`None`: it had none) and
    /// how it went.
    pub fn record(
        &mut self,
        address: Option<Address>,
        failed: bool,
        slow: bool,
        now_ms: u64,
        spec: WindowSpec,
    ) {
        self.fit(spec);
        self.calls = self.calls.saturating_add(1);
        self.first_heard(address, now_ms);
        let now = self.now(now_ms, spec);
        if failed || slow || address.is_some() {
            if let Some(h) = self.entry(address, failed || slow, now, spec) {
                if failed {
                    h.failed = Some(now);
                    h.in_streak = true;
                }
                if slow {
                    h.slow = Some(now);
                }
            }
        }
        self.forget(now, spec);
    }

    /// `n` successes folded in from a worker's batch, and the host one of them had.
    pub fn successes(&mut self, n: u32, sampled: Option<Address>, now_ms: u64, spec: WindowSpec) {
        self.fit(spec);
        self.calls = self.calls.saturating_add(u64::from(n));
        self.first_heard(sampled, now_ms);
        let now = self.now(now_ms, spec);
        if sampled.is_some() {
            self.entry(sampled, false, now, spec);
        }
        self.forget(now, spec);
    }

    /// The run of consecutive failures ended.
    pub fn end_streak(&mut self) {
        for h in &mut self.hosts {
            h.in_streak = false;
        }
    }

    /// Forgets every failure and slow call, keeping the hosts heard from.
    pub fn clear_marks(&mut self) {
        self.hosts.retain(|h| h.address.is_some());
        for h in &mut self.hosts {
            (h.failed, h.slow, h.in_streak) = (None, None, false);
        }
        self.confined = false;
    }

    /// Hosts the breaker knows of: heard from lately, or with a call still in the window.
    pub fn known(&self, now_ms: u64, spec: WindowSpec) -> usize {
        let now = self.now(now_ms, spec);
        self.hosts
            .iter()
            .filter(|h| h.address.is_some() && self.remembered(h, now, spec))
            .count()
    }

    /// The hosts behind `rule`'s calls, and whether any of those calls had no host.
    pub fn behind(&self, rule: Rule, now_ms: u64, spec: WindowSpec) -> (Vec<Address>, bool) {
        let now = self.now(now_ms, spec);
        let held = |t: Option<u64>| t.is_some_and(|t| spec.holds(t, now));
        let mut hosts = Vec::new();
        let mut hostless = false;
        for h in &self.hosts {
            let behind = match rule {
                Rule::Streak => h.in_streak,
                Rule::Failures => held(h.failed),
                Rule::Slow => held(h.slow),
            };
            match (behind, h.address) {
                (true, Some(a)) => hosts.push(a),
                (true, None) => hostless = true,
                (false, _) => {}
            }
        }
        (hosts, hostless)
    }

    /// Whether `rule`'s calls are spread over enough hosts to trip: at least `min_hosts`
    /// of them, or every host known, or some with no host. Calls the hosts say nothing
    /// about (recorded before they were tracked) trip as they always did.
    pub fn spread(&self, rule: Rule, min_hosts: u32, now_ms: u64, spec: WindowSpec) -> Spread {
        let (hosts, hostless) = self.behind(rule, now_ms, spec);
        let min_hosts = usize::try_from(min_hosts).unwrap_or(usize::MAX);
        if hostless || hosts.is_empty() || hosts.len() >= min_hosts {
            return Spread::Enough;
        }
        let known = self.known(now_ms, spec).max(hosts.len());
        if hosts.len() >= known {
            Spread::EveryKnownHost
        } else {
            Spread::Confined(hosts, known)
        }
    }

    /// Whether the breaker first heard a host less than [`CENSUS_MS`] ago, or never.
    pub fn young(&self, now_ms: u64) -> bool {
        self.since_ms == 0 || now_ms.saturating_sub(self.since_ms) < CENSUS_MS
    }

    fn first_heard(&mut self, address: Option<Address>, now_ms: u64) {
        if address.is_some() && self.since_ms == 0 {
            self.since_ms = now_ms.max(1);
        }
    }

    /// The marks' clock: the time, or the calls counted so far.
    fn now(&self, now_ms: u64, spec: WindowSpec) -> u64 {
        if spec.counts_calls() {
            self.calls
        } else {
            now_ms
        }
    }

    /// A window of the other kind makes the marks meaningless: they start afresh.
    fn fit(&mut self, spec: WindowSpec) {
        if self.by_calls != spec.counts_calls() {
            self.clear_marks();
            self.by_calls = spec.counts_calls();
        }
    }

    fn marked(h: &Host, now: u64, spec: WindowSpec) -> bool {
        let held = |t: Option<u64>| t.is_some_and(|t| spec.holds(t, now));
        h.in_streak || held(h.failed) || held(h.slow)
    }

    fn remembered(&self, h: &Host, now: u64, spec: WindowSpec) -> bool {
        Hosts::marked(h, now, spec)
            || (h.address.is_some() && self.answers.saturating_sub(h.heard) < HOST_MEMORY)
    }

    /// Drops what no rule and no count needs any more, so the record stays small.
    fn forget(&mut self, now: u64, spec: WindowSpec) {
        let keep: Vec<bool> = self
            .hosts
            .iter()
            .map(|h| self.remembered(h, now, spec))
            .collect();
        let mut keep = keep.into_iter();
        self.hosts.retain(|_| keep.next().unwrap_or(true));
    }

    /// The entry of `address` (`None`: the calls with no host), heard from now; a new host
    /// takes the place of the least useful one when the table is full: one with nothing in
    /// the window, heard from longest ago. A success does not push out a host whose
    /// failures still count.
    fn entry(
        &mut self,
        address: Option<Address>,
        marks: bool,
        now: u64,
        spec: WindowSpec,
    ) -> Option<&mut Host> {
        if address.is_some() {
            self.answers = self.answers.saturating_add(1);
        }
        let answers = self.answers;
        if let Some(i) = self.hosts.iter().position(|h| h.address == address) {
            let h = &mut self.hosts[i];
            if address.is_some() {
                h.heard = answers;
            }
            return Some(h);
        }
        let fresh = Host {
            address,
            heard: if address.is_some() { answers } else { 0 },
            failed: None,
            slow: None,
            in_streak: false,
        };
        let full = self.hosts.iter().filter(|h| h.address.is_some()).count() >= MAX_HOSTS;
        if address.is_none() || !full {
            self.hosts.push(fresh);
            return self.hosts.last_mut();
        }
        let victim = self
            .hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| h.address.is_some())
            .min_by_key(|(_, h)| (Hosts::marked(h, now, spec), h.heard))
            .map(|(i, h)| (i, Hosts::marked(h, now, spec)))?;
        if victim.1 && !marks {
            return None;
        }
        self.hosts[victim.0] = fresh;
        self.hosts.get_mut(victim.0)
    }
}

#[cfg(test)]
mod tests;
