//! Passive health: judging backends by what the data path saw of their handshakes and answers
//! (`PASSIVE_STATS`), polled every [`POLL_EVERY`].
//!
//! Everything here is pure: counter snapshots in, verdicts out. The daemon feeds each poll's
//! difference into a [`Window`] per backend; [`judge`] looks at it; the owner loop acts on the
//! verdict through [`crate::state::State::passive_verdict`].
use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use lb_common::PassiveCounters;

use crate::config::PassiveHealthConfig;

/// How often the daemon reads the passive counters: one per-CPU array lookup per backend of a
/// group with passive health (40 a second each). Measured with the end-to-end test (600 new
/// connections a second, a third of them to the backend killed, debug build): polling every
/// 100 ms, 1.1-1.5 % of the requests after the kill failed; every 50 ms, about 1.1 %; every
/// 25 ms, under 1 %.
pub const POLL_EVERY: Duration = Duration::from_millis(25);

/// `cur - prev`, per field (a counter that went back, e.g. a reused id, counts as 0).
pub fn delta(prev: &PassiveCounters, cur: &PassiveCounters) -> PassiveCounters {
    PassiveCounters {
        syns: cur.syns.saturating_sub(prev.syns),
        synacks: cur.synacks.saturating_sub(prev.synacks),
        refused: cur.refused.saturating_sub(prev.refused),
        unreachable: cur.unreachable.saturating_sub(prev.unreachable),
        unanswered: cur.unanswered.saturating_sub(prev.unanswered),
        redispatched: cur.redispatched.saturating_sub(prev.redispatched),
        udp_flows: cur.udp_flows.saturating_sub(prev.udp_flows),
        udp_answered: cur.udp_answered.saturating_sub(prev.udp_answered),
    }
}

/// The program counts a sampled SYN as unanswered only when the next SYN to the same backend
/// arrives after its timeout; a backend that stalls every client (no new SYN reaches it) would
/// never be judged. So the daemon also looks at the sample itself (`SYN_SAMPLES`) on each
/// poll, and counts an overdue one once, taking that count back when the program counts the
/// same sample later.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SampleWatch {
    /// `sent_ns` of the sample the daemon counted itself.
    counted: Option<u64>,
}

impl SampleWatch {
    /// Adjust the poll's difference `d` for the sample `s` read at `now_ns`
    /// (`CLOCK_MONOTONIC_COARSE`), with the backend's SYN timeout (0: no sampling).
    pub fn adjust(
        &mut self,
        d: &mut PassiveCounters,
        s: &lb_common::SynSample,
        now_ns: u64,
        timeout_ns: u64,
    ) {
        if let Some(x) = self.counted {
            if s.sent_ns != x {
                // The program moved on from the sample counted here: it counted it too
                // (unless it was answered late; then this takes back another, a blur).
                d.unanswered = d.unanswered.saturating_sub(1);
                self.counted = None;
            }
        }
        if timeout_ns == 0 || s.sent_ns == 0 || s.answered != 0 || self.counted == Some(s.sent_ns) {
            return;
        }
        if now_ns.saturating_sub(s.sent_ns) > timeout_ns {
            d.unanswered += 1;
            self.counted = Some(s.sent_ns);
        }
    }
}

/// A backend's recent polls: the differences seen, newest last, none older than the window.
#[derive(Debug, Default, Clone)]
pub struct Window {
    polls: VecDeque<(Instant, PassiveCounters)>,
}

impl Window {
    /// Add the difference of the poll at `at`, and forget polls older than `window`.
    pub fn push(&mut self, at: Instant, d: PassiveCounters, window: Duration) {
        if d != PassiveCounters::default() {
            self.polls.push_back((at, d));
        }
        while self
            .polls
            .front()
            .is_some_and(|(t, _)| at.saturating_duration_since(*t) > window)
        {
            self.polls.pop_front();
        }
    }

    /// Forget everything (after a verdict was acted on).
    pub fn clear(&mut self) {
        self.polls.clear();
    }

    /// Refusals (RST or ICMP unreachable answering a SYN) since the last answered handshake.
    ///
    /// Counted from the newest poll back: a poll that saw SYN-ACKs ends the streak; its own
    /// refusals still count (their order within one poll is unknown, and a backend that just
    /// died answers first and refuses after).
    pub fn refused_streak(&self) -> u64 {
        self.streak(|d| d.refused + d.unreachable)
    }

    /// Sampled SYNs left unanswered since the last answered handshake (as
    /// [`Self::refused_streak`]).
    pub fn unanswered_streak(&self) -> u64 {
        self.streak(|d| d.unanswered)
    }

    fn streak(&self, count: impl Fn(&PassiveCounters) -> u64) -> u64 {
        let mut n = 0;
        for (_, d) in self.polls.iter().rev() {
            n += count(d);
            if d.synacks > 0 {
                break;
            }
        }
        n
    }

    /// New UDP flows in the window and how many of them got no answer.
    pub fn udp(&self) -> (u64, u64) {
        let (flows, answered) = self.polls.iter().fold((0, 0), |(f, a), (_, d)| {
            (f + d.udp_flows, a + d.udp_answered)
        });
        (flows, flows.saturating_sub(answered))
    }
}

/// What a backend's window says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Refused `n` handshakes in a row: mark down.
    Refused(u64),
    /// Left `n` sampled SYNs unanswered in a row: mark down.
    Unanswered(u64),
    /// Answered none of `unanswered` of its `flows` new UDP flows: eject.
    UdpOutlier { flows: u64, unanswered: u64 },
}

impl Verdict {
    /// The reason shown with the backend and in the events.
    pub fn reason(&self) -> String {
        match self {
            Verdict::Refused(n) => format!("passive: {n} refused handshakes"),
            Verdict::Unanswered(n) => format!("passive: {n} unanswered SYNs"),
            Verdict::UdpOutlier { flows, unanswered } => {
                format!("passive: {unanswered} of {flows} new UDP flows unanswered")
            }
        }
    }

    /// TCP verdicts mark the backend down until the active checks bring it back; UDP ones
    /// eject it for a time.
    pub fn marks_down(&self) -> bool {
        !matches!(self, Verdict::UdpOutlier { .. })
    }
}

/// Judge a backend's window; refusals first, then unanswered SYNs, then UDP.
pub fn judge(cfg: &PassiveHealthConfig, w: &Window) -> Option<Verdict> {
    let refused = w.refused_streak();
    if refused >= u64::from(cfg.refused_threshold) {
        return Some(Verdict::Refused(refused));
    }
    let unanswered = w.unanswered_streak();
    if unanswered >= u64::from(cfg.unanswered_threshold) {
        return Some(Verdict::Unanswered(unanswered));
    }
    let (flows, unanswered) = w.udp();
    if flows >= u64::from(cfg.min_udp_flows)
        && flows > 0
        && unanswered as f64 >= cfg.udp_unanswered_share * flows as f64
    {
        return Some(Verdict::UdpOutlier { flows, unanswered });
    }
    None
}

/// The length of the `n`-th consecutive ejection (`n` from 1): `n × base`, at most `max`.
pub fn ejection_time(base: Duration, max: Duration, n: u32) -> Duration {
    base.saturating_mul(n.max(1)).min(max)
}

/// Whether one more backend of a group of `members` (not draining) may be ejected while
/// `ejected` already are: at most `floor(members × percent / 100)` at once, so a group of
/// one is never ejected empty at 50 %.
pub fn may_eject(members: usize, ejected: usize, percent: u32) -> bool {
    (ejected + 1) * 100 <= members * percent as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(f: impl FnOnce(&mut PassiveCounters)) -> PassiveCounters {
        let mut x = PassiveCounters::default();
        f(&mut x);
        x
    }

    fn window(polls: &[PassiveCounters]) -> (Window, Instant) {
        let t0 = Instant::now();
        let mut w = Window::default();
        for (i, d) in polls.iter().enumerate() {
            w.push(t0 + POLL_EVERY * i as u32, *d, Duration::from_secs(10));
        }
        (w, t0 + POLL_EVERY * polls.len() as u32)
    }

    #[test]
    fn delta_saturates() {
        let a = c(|x| {
            x.syns = 10;
            x.refused = 3
        });
        let b = c(|x| {
            x.syns = 12;
            x.refused = 1
        });
        let d = delta(&a, &b);
        assert_eq!((d.syns, d.refused), (2, 0));
    }

    #[test]
    fn refusals_add_up_until_a_handshake_is_answered() {
        let cfg = PassiveHealthConfig::default();
        let refuse = |n| c(|x| x.refused = n);
        let icmp = |n| c(|x| x.unreachable = n);
        let ok = |n| c(|x| x.synacks = n);
        // 1 + 1 (ICMP) + 1 across polls: three in a row.
        let (w, _) = window(&[ok(5), refuse(1), icmp(1), refuse(1)]);
        assert_eq!(w.refused_streak(), 3);
        assert_eq!(judge(&cfg, &w), Some(Verdict::Refused(3)));
        // An answered handshake in between resets.
        let (w, _) = window(&[refuse(2), ok(1), refuse(2)]);
        assert_eq!(w.refused_streak(), 2);
        assert_eq!(judge(&cfg, &w), None);
        // A poll with answers and refusals: its refusals count (the backend died in it).
        let (w, _) = window(&[
            refuse(5),
            c(|x| {
                x.synacks = 4;
                x.refused = 3
            }),
        ]);
        assert_eq!(w.refused_streak(), 3);
        assert_eq!(
            judge(&cfg, &w).map(|v| v.reason()),
            Some("passive: 3 refused handshakes".to_string())
        );
        // Polls that saw nothing neither reset nor add.
        let (w, _) = window(&[
            refuse(1),
            PassiveCounters::default(),
            c(|x| x.syns = 3),
            refuse(1),
        ]);
        assert_eq!(w.refused_streak(), 2);
    }

    #[test]
    fn old_refusals_leave_the_window() {
        let cfg = PassiveHealthConfig {
            window: Duration::from_secs(1),
            ..Default::default()
        };
        let t0 = Instant::now();
        let mut w = Window::default();
        w.push(t0, c(|x| x.refused = 2), cfg.window);
        w.push(
            t0 + Duration::from_millis(1500),
            c(|x| x.refused = 1),
            cfg.window,
        );
        assert_eq!(w.refused_streak(), 1, "the first two are older than 1 s");
        assert_eq!(judge(&cfg, &w), None);
        w.push(
            t0 + Duration::from_millis(1600),
            c(|x| x.refused = 2),
            cfg.window,
        );
        assert_eq!(judge(&cfg, &w), Some(Verdict::Refused(3)));
        w.clear();
        assert_eq!(judge(&cfg, &w), None);
    }

    #[test]
    fn unanswered_syns_mark_down_after_their_threshold() {
        let cfg = PassiveHealthConfig {
            unanswered_threshold: 2,
            ..Default::default()
        };
        let lost = c(|x| x.unanswered = 1);
        let (w, _) = window(&[lost]);
        assert_eq!(judge(&cfg, &w), None);
        let (w, _) = window(&[lost, c(|x| x.syns = 9), lost]);
        let v = judge(&cfg, &w).expect("two in a row");
        assert_eq!(v, Verdict::Unanswered(2));
        assert!(v.marks_down());
        assert_eq!(v.reason(), "passive: 2 unanswered SYNs");
        let (w, _) = window(&[lost, c(|x| x.synacks = 1), lost]);
        assert_eq!(judge(&cfg, &w), None, "answered in between");
    }

    #[test]
    fn udp_outliers_need_enough_flows_and_the_share() {
        let cfg = PassiveHealthConfig {
            min_udp_flows: 10,
            udp_unanswered_share: 0.9,
            ..Default::default()
        };
        let flows = |f, a| {
            c(|x| {
                x.udp_flows = f;
                x.udp_answered = a
            })
        };
        // Too few flows to judge, even if none was answered.
        let (w, _) = window(&[flows(9, 0)]);
        assert_eq!(judge(&cfg, &w), None);
        // 10 flows, 1 answered: 90 % unanswered.
        let (w, _) = window(&[flows(4, 1), flows(6, 0)]);
        let v = judge(&cfg, &w).expect("an outlier");
        assert_eq!(
            v,
            Verdict::UdpOutlier {
                flows: 10,
                unanswered: 9
            }
        );
        assert!(!v.marks_down());
        // 2 answered: 80 %.
        let (w, _) = window(&[flows(4, 2), flows(6, 0)]);
        assert_eq!(judge(&cfg, &w), None);
        // Answers to flows from before the window never make the share negative.
        let (w, _) = window(&[flows(10, 30)]);
        assert_eq!(w.udp(), (10, 0));
    }

    #[test]
    fn overdue_samples_count_once_whoever_sees_them_first() {
        let sample = |sent_ns, answered| lb_common::SynSample {
            sent_ns,
            flow_hash: 7,
            answered,
        };
        let t = 1_000_000_000u64;
        let mut w = SampleWatch::default();
        // Not overdue yet, answered, or no sampling: nothing.
        for (s, now, timeout) in [
            (sample(t, 0), t + 100, 200),
            (sample(t, 1), t + 1000, 200),
            (sample(t, 0), t + 1000, 0),
            (sample(0, 0), t, 200),
        ] {
            let mut d = PassiveCounters::default();
            w.adjust(&mut d, &s, now, timeout);
            assert_eq!(d.unanswered, 0);
        }
        // Overdue: counted once, however many polls see it.
        let mut d = PassiveCounters::default();
        w.adjust(&mut d, &sample(t, 0), t + 300, 200);
        assert_eq!(d.unanswered, 1);
        let mut d = PassiveCounters::default();
        w.adjust(&mut d, &sample(t, 0), t + 900, 200);
        assert_eq!(d.unanswered, 0);
        // The program counts it when the next SYN comes (and samples that one): not twice.
        let mut d = PassiveCounters {
            unanswered: 1,
            ..Default::default()
        };
        w.adjust(&mut d, &sample(t + 1000, 0), t + 1100, 200);
        assert_eq!(d.unanswered, 0);
        // The next overdue sample counts again.
        let mut d = PassiveCounters::default();
        w.adjust(&mut d, &sample(t + 1000, 0), t + 1300, 200);
        assert_eq!(d.unanswered, 1);
    }

    #[test]
    fn ejections_grow_and_are_capped() {
        let base = Duration::from_secs(30);
        let max = Duration::from_secs(100);
        assert_eq!(ejection_time(base, max, 0), base);
        assert_eq!(ejection_time(base, max, 1), base);
        assert_eq!(ejection_time(base, max, 3), Duration::from_secs(90));
        assert_eq!(ejection_time(base, max, 4), max);
        assert_eq!(ejection_time(base, max, u32::MAX), max);
    }

    #[test]
    fn ejection_share_of_the_group() {
        assert!(
            !may_eject(1, 0, 50),
            "a group of one is never emptied at 50 %"
        );
        assert!(may_eject(1, 0, 100));
        assert!(may_eject(2, 0, 50));
        assert!(!may_eject(2, 1, 50));
        assert!(may_eject(10, 4, 50));
        assert!(!may_eject(10, 5, 50));
        assert!(!may_eject(10, 0, 0), "0 % turns ejection off");
    }
}
