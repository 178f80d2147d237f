//! Warnings that an attack would repeat thousands of times a second are logged at most
//! once per [`EVERY`], with a count of those left out, so that the log stays readable
//! and small.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often one kind of warning may be logged.
const EVERY: Duration = Duration::from_secs(10);

/// One kind of repeated warning.
pub(super) struct Throttled {
    /// When it was last logged, and how many were left out since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttled {
    pub(super) const fn new() -> Self {
        Self {
            state: Mutex::new((None, 0)),
        }
    }

    /// Calls `log` with the number of warnings left out since the last one, unless one
    /// was logged less than [`EVERY`] ago.
    pub(super) fn warn(&self, log: impl FnOnce(u64)) {
        let now = Instant::now();
        let left_out = {
            let mut state = self
                .state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let (last, left_out) = &mut *state;
            if last.is_some_and(|last| now.duration_since(last) < EVERY) {
                *left_out += 1;
                return;
            }
            *last = Some(now);
            std::mem::take(left_out)
        };
        log(left_out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_logs_once_and_counts_the_rest() {
        let throttled = Throttled::new();
        let mut logged = Vec::new();
        for _ in 0..5 {
            throttled.warn(|left_out| logged.push(left_out));
        }
        assert_eq!(logged, [0]);
        // The next one after the pause reports the four left out.
        throttled.state.lock().unwrap().0 = Some(Instant::now() - EVERY);
        throttled.warn(|left_out| logged.push(left_out));
        assert_eq!(logged, [0, 4]);
    }
}
