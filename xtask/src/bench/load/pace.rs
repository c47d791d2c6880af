//! Open-loop pacing: unit `k` (a packet, a connection, a request) is due `k / rate` seconds
//! after the start, whatever happened to the units before it.

use std::time::{Duration, Instant};

/// A fixed-rate schedule of `total` units.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    rate: f64,
    total: u64,
}

impl Schedule {
    /// `rate` units per second (> 0), `total` units in all.
    pub fn new(rate: f64, total: u64) -> Schedule {
        assert!(rate > 0.0 && rate.is_finite(), "rate must be > 0");
        Schedule { rate, total }
    }

    /// `rate` units per second for `duration`.
    pub fn for_duration(rate: f64, duration: Duration) -> Schedule {
        Schedule::new(rate, (rate * duration.as_secs_f64()).round() as u64)
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// When unit `k` is due, after the start.
    pub fn at(&self, k: u64) -> Duration {
        Duration::from_secs_f64(k as f64 / self.rate)
    }

    /// How many units are due `elapsed` after the start (unit 0 is due at once), at most
    /// `total`.
    pub fn due(&self, elapsed: Duration) -> u64 {
        let n = (elapsed.as_secs_f64() * self.rate).floor() as u64 + 1;
        n.min(self.total)
    }

    /// The schedule's length: when the last unit is due.
    pub fn length(&self) -> Duration {
        self.at(self.total.saturating_sub(1))
    }
}

/// Sleeps until `t` (returns at once if it has passed).
pub fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_follows_the_rate() {
        let s = Schedule::new(1000.0, 5000);
        assert_eq!(s.due(Duration::ZERO), 1);
        assert_eq!(s.due(Duration::from_micros(999)), 1);
        assert_eq!(s.due(Duration::from_millis(1)), 2);
        assert_eq!(s.due(Duration::from_millis(100)), 101);
        assert_eq!(s.due(Duration::from_secs(4)), 4001);
        assert_eq!(s.due(Duration::from_secs(100)), 5000, "capped at total");
        assert_eq!(s.at(0), Duration::ZERO);
        assert_eq!(s.at(1500), Duration::from_millis(1500));
        assert_eq!(s.length(), Duration::from_millis(4999));
    }

    #[test]
    fn for_duration_counts_units() {
        let s = Schedule::for_duration(250_000.0, Duration::from_secs(2));
        assert_eq!(s.total(), 500_000);
        let s = Schedule::for_duration(3.0, Duration::from_millis(500));
        assert_eq!(s.total(), 2);
    }

    #[test]
    fn due_is_monotonic_and_paces_a_sender() {
        // A sender that sends what is due every 300 µs ends up with exactly the schedule.
        let s = Schedule::new(100_000.0, 1000);
        let mut sent = 0;
        let mut t = Duration::ZERO;
        let mut last = 0;
        while sent < s.total() {
            let due = s.due(t);
            assert!(due >= last);
            last = due;
            sent += due - sent;
            assert!(sent <= (t.as_secs_f64() * 100_000.0) as u64 + 1);
            t += Duration::from_micros(300);
        }
        assert_eq!(sent, 1000);
    }

    #[test]
    #[should_panic]
    fn zero_rate_is_refused() {
        Schedule::new(0.0, 1);
    }
}
