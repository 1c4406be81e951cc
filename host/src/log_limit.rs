//! Log lines that someone else can cause at will (a refused message, call or handshake): at
//! most one a second, with a count of the ones held back, so that a flood of bad input cannot
//! fill the disk with the node's log or drown what else it says.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The shortest time between two lines of one kind, in milliseconds.
const INTERVAL_MS: u64 = 1000;

/// Lets one line of a kind through per [`INTERVAL_MS`]; shared by threads.
pub struct LogLimiter {
    start: Instant,
    /// Milliseconds since `start` before which no line is let through.
    next_ms: AtomicU64,
    /// Lines held back since the last one let through.
    held_back: AtomicU64,
}

impl LogLimiter {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            next_ms: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(n)` if a line may be logged now (`n` lines were held back since the last one),
    /// `None` if this one is to be held back.
    pub fn admit(&self) -> Option<u64> {
        let now = self.start.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + INTERVAL_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.held_back.swap(0, Ordering::Relaxed));
        }
        self.held_back.fetch_add(1, Ordering::Relaxed);
        None
    }
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_with_the_count_of_the_rest() {
        let limiter = LogLimiter::new();
        assert_eq!(limiter.admit(), Some(0));
        assert_eq!(limiter.admit(), None);
        assert_eq!(limiter.admit(), None);
        // As if a second had passed.
        limiter.next_ms.store(0, Ordering::Relaxed);
        assert_eq!(limiter.admit(), Some(2));
        assert_eq!(limiter.admit(), None);
    }
}
