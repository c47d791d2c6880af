//! The load tools. Each runs on the calling thread (and threads it starts), so call it inside
//! [`Netns::enter`](xlb_lab::Netns::enter) to load a lab from its client namespace. Every loop
//! is bounded by a count and a deadline.
//!
//! - [`udp`]: a UDP packet generator (raw IPv4 socket, `sendmmsg`) over many flows;
//! - [`tcp`]: a TCP connection-rate client (connect, one HTTP request, read, close);
//! - [`latency`]: request/response latency over long-lived connections at a fixed rate.

pub mod latency;
pub mod pace;
pub mod tcp;
pub mod udp;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest value the histograms hold: 60 s in ns.
const HIST_MAX_NS: u64 = 60_000_000_000;

/// A histogram of nanoseconds (1 ns .. 60 s, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("valid histogram bounds")
}

/// Records `ns` (clamped into the histogram's range).
pub fn record(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record(ns.clamp(1, HIST_MAX_NS));
}

/// Percentiles of a histogram of nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub count: u64,
    pub mean_ns: f64,
    pub min_ns: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        Summary {
            count: h.len(),
            mean_ns: h.mean(),
            min_ns: h.min(),
            p50_ns: h.value_at_quantile(0.5),
            p90_ns: h.value_at_quantile(0.9),
            p99_ns: h.value_at_quantile(0.99),
            p999_ns: h.value_at_quantile(0.999),
            max_ns: h.max(),
        }
    }
}

/// Sets this thread's timer slack to 1 µs (default 50 µs), so paced sleeps end on time.
pub fn tight_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects the calling thread only.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_a_histogram() {
        let mut h = histogram();
        for v in 1..=1000u64 {
            record(&mut h, v * 1000);
        }
        let s = Summary::of(&h);
        assert_eq!(s.count, 1000);
        let near = |got: u64, want: u64| (got as f64 - want as f64).abs() <= want as f64 * 0.002;
        assert!(near(s.p50_ns, 500_000), "{s:?}");
        assert!(near(s.p99_ns, 990_000), "{s:?}");
        assert!(near(s.p999_ns, 999_000), "{s:?}");
        assert!(near(s.max_ns, 1_000_000), "{s:?}");
        assert!((s.mean_ns - 500_500.0).abs() < 1000.0, "{s:?}");
        assert_eq!(Summary::of(&histogram()), Summary::default());
        // Out-of-range values are clamped, not lost.
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        assert_eq!(Summary::of(&h).count, 1002);
    }
}
