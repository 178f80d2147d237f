//! Which message counters of one sender key have been seen, so that a message the relay
//! (or anyone) delivers twice is shown once.
//!
//! A sliding window, as IPsec and DTLS use: the highest counter seen, and a bitmap of
//! the [`WINDOW`] counters below it. Counters that arrive out of order within the window
//! are accepted once; older ones are refused, since they cannot be told apart from
//! replays.

/// How far behind the highest counter a message may arrive.
pub(crate) const WINDOW: u64 = 64;

#[derive(Debug, Default)]
pub(crate) struct ReplayWindow {
    highest: Option<u64>,
    /// Bit `n` set: counter `highest - n` has been seen.
    seen: u64,
}

impl ReplayWindow {
    /// Records `counter`; `false` if it was seen already or is too old to tell.
    pub(crate) fn accept(&mut self, counter: u64) -> bool {
        let Some(highest) = self.highest else {
            self.highest = Some(counter);
            self.seen = 1;
            return true;
        };
        if counter > highest {
            let shift = counter - highest;
            self.seen = if shift >= WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.highest = Some(counter);
            return true;
        }
        let age = highest - counter;
        if age >= WINDOW {
            return false;
        }
        let bit = 1u64 << age;
        let fresh = self.seen & bit == 0;
        self.seen |= bit;
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_counter_is_accepted_once() {
        let mut window = ReplayWindow::default();
        assert!(window.accept(0));
        assert!(window.accept(1));
        assert!(!window.accept(1));
        assert!(!window.accept(0));
        assert!(window.accept(2));
    }

    #[test]
    fn out_of_order_within_the_window_is_fine() {
        let mut window = ReplayWindow::default();
        assert!(window.accept(10));
        assert!(window.accept(7));
        assert!(window.accept(9));
        assert!(!window.accept(7));
        assert!(window.accept(10 + WINDOW - 1));
        assert!(window.accept(11), "still inside the window");
        assert!(!window.accept(10 - 1), "fell out of the window");
    }

    #[test]
    fn a_big_jump_clears_the_window() {
        let mut window = ReplayWindow::default();
        assert!(window.accept(0));
        assert!(window.accept(1_000));
        assert!(!window.accept(0));
        assert!(window.accept(999));
        assert!(!window.accept(1_000));
    }
}
