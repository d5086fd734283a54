//! The calls a breaker remembers for its rate rules: either a sliding time window made of
//! buckets, so old calls age out a slice at a time instead of the whole window being
//! forgotten at once (a tumbling window forgets a burst of failures the moment it ends), or
//! a ring of the last N calls.

/// Number of buckets a time window is cut into.
pub const BUCKETS: usize = 10;
/// Largest count window; each call takes two bits of the shared record.
pub const MAX_CALLS: u32 = 1_000;

/// Which window the settings ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    /// The calls of the last `window_ms`.
    Time { window_ms: u64 },
    /// The last `size` calls.
    Count { size: u32 },
}

impl WindowSpec {
    /// Whether a call marked `stamp` is still inside the window at `now`. For a time
    /// window both are times, and a call leaves with its bucket, as it does from the
    /// totals; for a count window both are call numbers.
    pub fn holds(self, stamp: u64, now: u64) -> bool {
        match self {
            WindowSpec::Time { window_ms } => {
                let width = bucket_width(window_ms);
                (now / width).saturating_sub(stamp / width) < BUCKETS as u64
            }
            WindowSpec::Count { size } => now.saturating_sub(stamp) < u64::from(size),
        }
    }

    /// Whether the window counts calls rather than time.
    pub fn counts_calls(self) -> bool {
        matches!(self, WindowSpec::Count { .. })
    }
}

/// Calls counted; `slow` calls are also counted as successes or failures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    pub successes: u32,
    pub failures: u32,
    pub slow: u32,
}

impl Bucket {
    /// Calls counted either way.
    pub fn calls(&self) -> u32 {
        self.successes.saturating_add(self.failures)
    }

    fn absorb(&mut self, other: &Bucket) {
        self.successes = self.successes.saturating_add(other.successes);
        self.failures = self.failures.saturating_add(other.failures);
        self.slow = self.slow.saturating_add(other.slow);
    }

    fn remove(&mut self, other: &Bucket) {
        self.successes = self.successes.saturating_sub(other.successes);
        self.failures = self.failures.saturating_sub(other.failures);
        self.slow = self.slow.saturating_sub(other.slow);
    }

    /// One call.
    pub fn call(failed: bool, slow: bool) -> Bucket {
        Bucket {
            successes: u32::from(!failed),
            failures: u32::from(failed),
            slow: u32::from(slow),
        }
    }
}

/// A window of either kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Window {
    Time(TimeWindow),
    Count(CountWindow),
}

impl Default for Window {
    fn default() -> Self {
        Window::Time(TimeWindow::default())
    }
}

impl Window {
    /// Adds one call at `now_ms`.
    pub fn add_call(&mut self, failed: bool, slow: bool, now_ms: u64, spec: WindowSpec) {
        match (self.fit(spec), spec) {
            (Window::Time(w), WindowSpec::Time { window_ms }) => {
                w.add(Bucket::call(failed, slow), now_ms, window_ms)
            }
            (Window::Count(w), _) => w.push(failed, slow),
            (Window::Time(_), WindowSpec::Count { .. }) => {}
        }
    }

    /// Adds `n` fast successes at `now_ms`.
    pub fn add_successes(&mut self, n: u32, now_ms: u64, spec: WindowSpec) {
        let counts = Bucket {
            successes: n,
            ..Bucket::default()
        };
        match (self.fit(spec), spec) {
            (Window::Time(w), WindowSpec::Time { window_ms }) => w.add(counts, now_ms, window_ms),
            (Window::Count(w), _) => {
                for _ in 0..n.min(w.size) {
                    w.push(false, false);
                }
            }
            (Window::Time(_), WindowSpec::Count { .. }) => {}
        }
    }

    /// The calls still inside the window at `now_ms`.
    pub fn totals(&self, now_ms: u64, spec: WindowSpec) -> Bucket {
        match (self, spec) {
            (Window::Time(w), WindowSpec::Time { window_ms }) => w.totals(now_ms, window_ms),
            (Window::Count(w), WindowSpec::Count { size }) if w.size == size => w.totals,
            _ => Bucket::default(),
        }
    }

    /// When the calls counted at `now_ms` next change by time alone: the oldest slice
    /// that still holds calls leaves a time window then. `None` for an empty window, and
    /// for a count window, which time never changes.
    pub fn next_change_ms(&self, now_ms: u64, spec: WindowSpec) -> Option<u64> {
        match (self, spec) {
            (Window::Time(w), WindowSpec::Time { window_ms }) => {
                w.next_change_ms(now_ms, window_ms)
            }
            _ => None,
        }
    }

    /// Forgets every call.
    pub fn clear(&mut self) {
        match self {
            Window::Time(w) => w.buckets = [Bucket::default(); BUCKETS],
            Window::Count(w) => *w = CountWindow::new(w.size),
        }
    }

    /// Makes the window the kind `spec` asks for, starting afresh if it was not; settings
    /// change on a configuration reload while the record lives on in shared data.
    fn fit(&mut self, spec: WindowSpec) -> &mut Window {
        let fits = match (&*self, spec) {
            (Window::Time(_), WindowSpec::Time { .. }) => true,
            (Window::Count(w), WindowSpec::Count { size }) => w.size == size,
            _ => false,
        };
        if !fits {
            *self = match spec {
                WindowSpec::Time { .. } => Window::Time(TimeWindow::default()),
                WindowSpec::Count { size } => Window::Count(CountWindow::new(size)),
            };
        }
        self
    }
}

/// The counts of the last `BUCKETS` slices of `width_ms` each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimeWindow {
    /// Slice length the buckets were filled with; another length means other settings.
    pub width_ms: u64,
    /// Absolute index (`time / width`) of the newest bucket.
    pub head: u64,
    /// Ring of buckets; `head % BUCKETS` is the newest.
    pub buckets: [Bucket; BUCKETS],
}

impl TimeWindow {
    fn add(&mut self, counts: Bucket, now_ms: u64, window_ms: u64) {
        self.roll(now_ms, window_ms);
        let slot = (self.head % BUCKETS as u64) as usize;
        self.buckets[slot].absorb(&counts);
    }

    fn totals(&self, now_ms: u64, window_ms: u64) -> Bucket {
        let width = bucket_width(window_ms);
        let mut sum = Bucket::default();
        if self.width_ms != width {
            return sum;
        }
        let now_index = now_ms / width;
        for age in 0..BUCKETS as u64 {
            let Some(index) = self.head.checked_sub(age) else {
                break;
            };
            if now_index.saturating_sub(index) < BUCKETS as u64 {
                sum.absorb(&self.buckets[(index % BUCKETS as u64) as usize]);
            }
        }
        sum
    }

    fn next_change_ms(&self, now_ms: u64, window_ms: u64) -> Option<u64> {
        let width = bucket_width(window_ms);
        if self.width_ms != width {
            return None;
        }
        let now_index = now_ms / width;
        (0..BUCKETS as u64)
            .rev()
            .filter_map(|age| self.head.checked_sub(age))
            .filter(|index| now_index.saturating_sub(*index) < BUCKETS as u64)
            .find(|index| self.buckets[(index % BUCKETS as u64) as usize].calls() > 0)
            .map(|oldest| (oldest + BUCKETS as u64).saturating_mul(width))
    }

    fn roll(&mut self, now_ms: u64, window_ms: u64) {
        let width = bucket_width(window_ms);
        let now_index = now_ms / width;
        if self.width_ms != width || now_index.saturating_sub(self.head) >= BUCKETS as u64 {
            *self = TimeWindow {
                width_ms: width,
                head: now_index,
                buckets: [Bucket::default(); BUCKETS],
            };
            return;
        }
        // A clock that stepped back keeps counting into the newest slice.
        while self.head < now_index {
            self.head += 1;
            self.buckets[(self.head % BUCKETS as u64) as usize] = Bucket::default();
        }
    }
}

fn bucket_width(window_ms: u64) -> u64 {
    (window_ms / BUCKETS as u64).max(1)
}

/// The last `size` calls, two bits each (failed, slow), with running totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountWindow {
    pub size: u32,
    /// Calls held, up to `size`.
    pub len: u32,
    /// Cell the next call goes into.
    pub next: u32,
    pub cells: Vec<u8>,
    pub totals: Bucket,
}

impl CountWindow {
    pub fn new(size: u32) -> CountWindow {
        let size = size.clamp(1, MAX_CALLS);
        CountWindow {
            size,
            len: 0,
            next: 0,
            cells: vec![0; cells_bytes(size)],
            totals: Bucket::default(),
        }
    }

    fn push(&mut self, failed: bool, slow: bool) {
        if self.len == self.size {
            let old = self.cell(self.next);
            self.totals
                .remove(&Bucket::call(old & 1 != 0, old & 2 != 0));
        } else {
            self.len += 1;
        }
        self.set_cell(self.next, u8::from(failed) | (u8::from(slow) << 1));
        self.totals.absorb(&Bucket::call(failed, slow));
        self.next = (self.next + 1) % self.size;
    }

    fn cell(&self, i: u32) -> u8 {
        let byte = self.cells.get((i / 4) as usize).copied().unwrap_or(0);
        (byte >> ((i % 4) * 2)) & 0b11
    }

    fn set_cell(&mut self, i: u32, value: u8) {
        if let Some(byte) = self.cells.get_mut((i / 4) as usize) {
            let shift = (i % 4) * 2;
            *byte = (*byte & !(0b11 << shift)) | (value << shift);
        }
    }

    /// Recomputes the totals from the cells, to check bytes read back from the store.
    pub fn recount(&self) -> Bucket {
        let mut sum = Bucket::default();
        for age in 0..self.len {
            let i = (self.next + self.size - 1 - age) % self.size;
            let c = self.cell(i);
            sum.absorb(&Bucket::call(c & 1 != 0, c & 2 != 0));
        }
        sum
    }
}

/// Bytes needed for `size` two-bit cells.
pub fn cells_bytes(size: u32) -> usize {
    size.div_ceil(4) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TIME: WindowSpec = WindowSpec::Time { window_ms: 10_000 };

    fn ok() -> Bucket {
        Bucket::call(false, false)
    }

    #[test]
    fn counts_everything_inside_the_window() {
        let mut w = Window::default();
        w.add_call(true, false, 1_000, TIME);
        w.add_call(false, true, 5_500, TIME);
        w.add_call(false, false, 9_999, TIME);
        let expected = Bucket {
            successes: 2,
            failures: 1,
            slow: 1,
        };
        assert_eq!(w.totals(10_000, TIME), expected);
    }

    #[test]
    fn samples_age_out_a_bucket_at_a_time() {
        let mut w = Window::default();
        w.add_call(true, false, 0, TIME);
        w.add_call(true, false, 1_000, TIME);
        assert_eq!(w.totals(9_999, TIME).failures, 2);
        assert_eq!(w.totals(10_000, TIME).failures, 1, "the first slice left");
        assert_eq!(w.totals(11_000, TIME).failures, 0);
    }

    #[test]
    fn the_window_next_changes_when_its_oldest_calls_leave() {
        let spec = WindowSpec::Time { window_ms: 10_000 };
        let mut w = Window::default();
        assert_eq!(w.next_change_ms(0, spec), None, "empty");
        w.add_call(true, false, 2_500, spec);
        w.add_call(false, false, 7_200, spec);
        // Slices of 1 s: the call of 2.5 s leaves at 12 s, the one of 7.2 s at 17 s.
        assert_eq!(w.next_change_ms(8_000, spec), Some(12_000));
        assert_eq!(w.totals(11_999, spec).calls(), 2);
        assert_eq!(w.totals(12_000, spec).calls(), 1);
        assert_eq!(w.next_change_ms(12_000, spec), Some(17_000));
        assert_eq!(w.next_change_ms(17_000, spec), None, "empty again");
        let count = WindowSpec::Count { size: 5 };
        let mut c = Window::default();
        c.add_call(true, false, 0, count);
        assert_eq!(
            c.next_change_ms(0, count),
            None,
            "time never changes a count window"
        );
    }

    #[test]
    fn a_long_silence_empties_the_window() {
        let mut w = Window::default();
        w.add_call(true, false, 0, TIME);
        w.add_call(false, false, 500_000, TIME);
        assert_eq!(w.totals(500_000, TIME), ok());
    }

    #[test]
    fn new_settings_start_a_fresh_window() {
        let mut w = Window::default();
        w.add_call(true, false, 0, TIME);
        let longer = WindowSpec::Time { window_ms: 20_000 };
        assert_eq!(w.totals(0, longer), Bucket::default());
        w.add_call(false, false, 0, longer);
        assert_eq!(w.totals(0, longer), ok());
        let count = WindowSpec::Count { size: 5 };
        assert_eq!(w.totals(0, count), Bucket::default());
        w.add_call(true, false, 0, count);
        assert_eq!(w.totals(0, count).failures, 1);
    }

    #[test]
    fn a_clock_that_steps_back_does_not_lose_counts() {
        let mut w = Window::default();
        w.add_call(true, false, 5_000, TIME);
        w.add_call(true, false, 4_000, TIME);
        assert_eq!(w.totals(5_000, TIME).failures, 2);
    }

    #[test]
    fn a_count_window_keeps_only_the_last_n_calls() {
        let spec = WindowSpec::Count { size: 3 };
        let mut w = Window::default();
        w.add_call(true, true, 0, spec);
        w.add_call(true, false, 0, spec);
        w.add_successes(2, 0, spec);
        let t = w.totals(0, spec);
        assert_eq!((t.calls(), t.failures, t.slow), (3, 1, 0));
    }

    #[test]
    fn a_count_window_ignores_time() {
        let spec = WindowSpec::Count { size: 10 };
        let mut w = Window::default();
        w.add_call(true, false, 0, spec);
        assert_eq!(w.totals(u64::MAX, spec).failures, 1);
    }

    #[test]
    fn a_stamp_leaves_the_window_with_its_bucket() {
        assert!(TIME.holds(1_000, 10_999));
        assert!(!TIME.holds(1_000, 11_000));
        assert!(TIME.holds(5_000, 4_000), "a clock that stepped back");
        let count = WindowSpec::Count { size: 3 };
        assert!(count.holds(7, 9));
        assert!(!count.holds(7, 10));
    }

    proptest! {
        #[test]
        fn time_totals_equal_the_calls_of_the_last_window(
            events in proptest::collection::vec((0u64..3_000, any::<bool>(), any::<bool>()), 1..200)
        ) {
            let mut w = Window::default();
            let mut now = 0u64;
            let mut log = Vec::new();
            for (step, failed, slow) in events {
                now += step;
                w.add_call(failed, slow, now, TIME);
                log.push((now, failed, slow));
            }
            let width = 10_000 / BUCKETS as u64;
            let oldest = (now / width).saturating_sub(BUCKETS as u64 - 1);
            let mut expected = Bucket::default();
            for (t, failed, slow) in log {
                if t / width >= oldest {
                    expected.absorb(&Bucket::call(failed, slow));
                }
            }
            prop_assert_eq!(w.totals(now, TIME), expected);
        }

        #[test]
        fn a_stamp_is_held_exactly_while_its_call_is_in_the_totals(
            window_ms in 100u64..100_000, at in 0u64..1_000_000, later in 0u64..300_000,
        ) {
            let spec = WindowSpec::Time { window_ms };
            let mut w = Window::default();
            w.add_call(true, false, at, spec);
            let now = at + later;
            prop_assert_eq!(spec.holds(at, now), w.totals(now, spec).failures == 1);
        }

        #[test]
        fn count_totals_equal_the_last_n_calls(
            size in 1u32..40,
            calls in proptest::collection::vec((any::<bool>(), any::<bool>()), 0..200),
        ) {
            let spec = WindowSpec::Count { size };
            let mut w = Window::default();
            for (failed, slow) in &calls {
                w.add_call(*failed, *slow, 0, spec);
            }
            let mut expected = Bucket::default();
            for (failed, slow) in calls.iter().rev().take(size as usize) {
                expected.absorb(&Bucket::call(*failed, *slow));
            }
            prop_assert_eq!(w.totals(0, spec), expected);
            if let Window::Count(c) = &w {
                prop_assert_eq!(c.recount(), expected);
            }
        }
    }
}
