//! A sliding time window of outcome counts, made of buckets so that old calls age out a
//! slice at a time instead of the whole window being forgotten at once (a tumbling window
//! forgets a burst of failures the moment it ends).

/// Number of buckets a window is cut into.
pub const BUCKETS: usize = 10;

/// Calls counted in one slice of time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    pub successes: u32,
    pub failures: u32,
}

impl Bucket {
    /// Calls counted either way.
    pub fn calls(&self) -> u32 {
        self.successes.saturating_add(self.failures)
    }

    fn absorb(&mut self, other: &Bucket) {
        self.successes = self.successes.saturating_add(other.successes);
        self.failures = self.failures.saturating_add(other.failures);
    }
}

/// The counts of the last `BUCKETS` slices of `width_ms` each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Window {
    /// Slice length the buckets were filled with; a different length means other settings.
    pub width_ms: u64,
    /// Absolute index (`time / width`) of the newest bucket.
    pub head: u64,
    /// Ring of buckets; `head % BUCKETS` is the newest.
    pub buckets: [Bucket; BUCKETS],
}

impl Window {
    /// Adds `counts` to the slice that holds `now_ms`, first dropping slices that aged out.
    pub fn add(&mut self, counts: Bucket, now_ms: u64, window_ms: u64) {
        self.roll(now_ms, window_ms);
        let slot = (self.head % BUCKETS as u64) as usize;
        self.buckets[slot].absorb(&counts);
    }

    /// Sum of the slices still inside the window at `now_ms`.
    pub fn totals(&self, now_ms: u64, window_ms: u64) -> Bucket {
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

    /// Forgets every count.
    pub fn clear(&mut self) {
        self.buckets = [Bucket::default(); BUCKETS];
    }

    fn roll(&mut self, now_ms: u64, window_ms: u64) {
        let width = bucket_width(window_ms);
        let now_index = now_ms / width;
        if self.width_ms != width || now_index.saturating_sub(self.head) >= BUCKETS as u64 {
            self.width_ms = width;
            self.head = now_index;
            self.clear();
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const WINDOW: u64 = 10_000;

    fn fail() -> Bucket {
        Bucket {
            successes: 0,
            failures: 1,
        }
    }
    fn ok() -> Bucket {
        Bucket {
            successes: 1,
            failures: 0,
        }
    }

    #[test]
    fn counts_everything_inside_the_window() {
        let mut w = Window::default();
        w.add(fail(), 1_000, WINDOW);
        w.add(ok(), 5_500, WINDOW);
        w.add(ok(), 9_999, WINDOW);
        assert_eq!(
            w.totals(10_000, WINDOW),
            Bucket {
                successes: 2,
                failures: 1
            }
        );
    }

    #[test]
    fn samples_age_out_a_bucket_at_a_time() {
        let mut w = Window::default();
        w.add(fail(), 0, WINDOW);
        w.add(fail(), 1_000, WINDOW);
        assert_eq!(w.totals(9_999, WINDOW).failures, 2);
        assert_eq!(w.totals(10_000, WINDOW).failures, 1, "the first slice left");
        assert_eq!(w.totals(11_000, WINDOW).failures, 0);
    }

    #[test]
    fn a_long_silence_empties_the_window() {
        let mut w = Window::default();
        w.add(fail(), 0, WINDOW);
        w.add(ok(), 500_000, WINDOW);
        assert_eq!(w.totals(500_000, WINDOW), ok());
    }

    #[test]
    fn new_settings_start_a_fresh_window() {
        let mut w = Window::default();
        w.add(fail(), 0, WINDOW);
        assert_eq!(w.totals(0, 20_000), Bucket::default());
        w.add(ok(), 0, 20_000);
        assert_eq!(w.totals(0, 20_000), ok());
    }

    #[test]
    fn a_clock_that_steps_back_does_not_lose_counts() {
        let mut w = Window::default();
        w.add(fail(), 5_000, WINDOW);
        w.add(fail(), 4_000, WINDOW);
        assert_eq!(w.totals(5_000, WINDOW).failures, 2);
    }

    proptest! {
        #[test]
        fn totals_equal_the_calls_of_the_last_window(
            events in proptest::collection::vec((0u64..3_000, any::<bool>()), 1..200)
        ) {
            let mut w = Window::default();
            let mut now = 0u64;
            let mut log = Vec::new();
            for (step, failed) in events {
                now += step;
                w.add(if failed { fail() } else { ok() }, now, WINDOW);
                log.push((now, failed));
            }
            let width = WINDOW / BUCKETS as u64;
            let oldest_index = (now / width).saturating_sub(BUCKETS as u64 - 1);
            let expected = log.iter().filter(|(t, _)| t / width >= oldest_index).fold(
                Bucket::default(),
                |mut b, (_, failed)| { if *failed { b.failures += 1 } else { b.successes += 1 }; b },
            );
            prop_assert_eq!(w.totals(now, WINDOW), expected);
        }
    }
}
