//! The policy engine: the scaling policies (target tracking, step), their votes, the
//! schedules, and the [`Scaler`] that turns them into a scaling group's `desired` capacity.
//!
//! The engine is pure logic: the daemon hands it a [`GroupSample`] of per-backend
//! measurements, the current capacity and the clocks, and gets back at most one [`Decision`].
//! It only decides `desired`; launching `desired − capacity − pending` backends, picking and
//! draining the backend to remove, and replacing dead backends are the orchestration's job
//! ([`super::orchestrate`]).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use croner::Cron;
use serde::Serialize;

use crate::config::{parse_cron, Metric, PolicyConfig, ScalingConfig, ScheduleConfig, StepRule};

// ---------------------------------------------------------------------------------------------
// Samples and metrics
// ---------------------------------------------------------------------------------------------

/// Target tracking leaves capacity alone while the metric is within this fraction of the
/// target (±10%), so that noise around the target does not make the group flap.
pub const TARGET_TOLERANCE: f64 = 0.10;

/// A reported metric value is fresh for at least this long after it was reported (see
/// [`reported_freshness`]).
pub const REPORTED_FRESHNESS_MIN: Duration = Duration::from_secs(60);

/// Keep the states whose config is still there (by equal config), in the config's order, and
/// make fresh ones for new configs.
fn rematch<S, C: PartialEq>(
    states: &mut Vec<S>,
    cfgs: &[C],
    cfg_of: impl Fn(&S) -> &C,
    new: impl Fn(&C) -> S,
) {
    let same = states.len() == cfgs.len() && states.iter().zip(cfgs).all(|(s, c)| cfg_of(s) == c);
    if same {
        return;
    }
    let mut old = std::mem::take(states);
    *states = cfgs
        .iter()
        .map(|c| match old.iter().position(|s| cfg_of(s) == c) {
            Some(i) => old.swap_remove(i),
            None => new(c),
        })
        .collect();
}

/// One backend's measurements for one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendSample {
    pub uid: u64,
    /// When it entered service (for warmup: left out of averages until warmup has passed).
    pub in_service_since: Instant,
    pub healthy: bool,
    pub new_flows_per_s: f64,
    pub packets_per_s: f64,
    pub bytes_per_s: f64,
    pub active_flows: f64,
    /// Numbers the backend reported (health check JSON body / metric_command), with when.
    pub reported: BTreeMap<String, (f64, Instant)>,
}

/// One scaling group's measurements for one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSample {
    pub at: Instant,
    /// The group's in-service backends (draining ones are better left out by the caller:
    /// they receive no new flows and would pull the averages down).
    pub backends: Vec<BackendSample>,
    /// Whether the data-path rates (`*_per_s`, `active_flows`) are fresh: false when the
    /// counters could not be read, or only one reading exists so no rate is known yet.
    pub rates_fresh: bool,
}

/// How long a backend-reported value (health check JSON body or `metric_command` output)
/// counts as fresh: `max(60 s, 3 × metric_interval)`.
///
/// 60 s covers several health check intervals (so one or two missed checks do not make the
/// metric vanish); a slow `metric_command` gets three of its own intervals.
pub fn reported_freshness(cfg: &ScalingConfig) -> Duration {
    REPORTED_FRESHNESS_MIN.max(cfg.metric_interval.saturating_mul(3))
}

/// Whether `b` counts in the group's averages at `now`: healthy and in service for at least
/// `warmup`.
fn qualifies(b: &BackendSample, warmup: Duration, now: Instant) -> bool {
    b.healthy && now.saturating_duration_since(b.in_service_since) >= warmup
}

fn average(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (mut sum, mut n) = (0.0, 0u32);
    for v in values.filter(|v| v.is_finite()) {
        sum += v;
        n += 1;
    }
    (n > 0).then(|| sum / f64::from(n))
}

/// The value of `metric` for the group at `now`: the average over the backends that are
/// healthy and past `cfg.warmup`.
///
/// - Data-path metrics (`new_flows_per_second_per_backend`, `packets_per_second_per_backend`,
///   `bytes_per_second_per_backend`, `active_flows_per_backend`) are `None` when
///   `!sample.rates_fresh` or no backend qualifies.
/// - Reported metrics (`backend_cpu` under the key `cpu`, a custom one under its own name)
///   average only the qualifying backends that reported a finite value within
///   [`reported_freshness`]; `None` when no qualifying backend has one.
///
/// `None` means "no fresh data": a policy on such a metric proposes nothing.
pub fn metric_value(
    metric: &Metric,
    sample: &GroupSample,
    cfg: &ScalingConfig,
    now: Instant,
) -> Option<f64> {
    let qualifying = sample
        .backends
        .iter()
        .filter(|b| qualifies(b, cfg.warmup, now));
    if let Some(key) = metric.reported_key() {
        let fresh = reported_freshness(cfg);
        return average(qualifying.filter_map(|b| {
            let (v, at) = b.reported.get(key)?;
            (now.saturating_duration_since(*at) <= fresh).then_some(*v)
        }));
    }
    if !sample.rates_fresh {
        return None;
    }
    let field: fn(&BackendSample) -> f64 = match metric {
        Metric::NewFlowsPerSecondPerBackend | Metric::NewFlowsPerSecond => |b| b.new_flows_per_s,
        Metric::PacketsPerSecondPerBackend | Metric::PacketsPerSecond => |b| b.packets_per_s,
        Metric::BytesPerSecondPerBackend | Metric::BytesPerSecond => |b| b.bytes_per_s,
        Metric::ActiveFlowsPerBackend | Metric::ActiveFlows => |b| b.active_flows,
        // Reported metrics were handled above.
        Metric::BackendCpu | Metric::Custom(_) => return None,
    };
    if metric.is_group_total() {
        // The whole group's load, warming backends included.
        return Some(sample.backends.iter().map(field).sum());
    }
    average(qualifying.map(field))
}

fn policy_metric(p: &PolicyConfig) -> &Metric {
    match p {
        PolicyConfig::TargetTracking { metric, .. } | PolicyConfig::Step { metric, .. } => metric,
    }
}

// ---------------------------------------------------------------------------------------------
// Decisions
// ---------------------------------------------------------------------------------------------

/// What made a [`Decision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// A target tracking or step policy.
    Policy,
    /// A cron schedule fired.
    Schedule,
    /// `xlb scale GROUP --desired N` or the API.
    Manual,
    /// Not produced by the engine: for the daemon's events when it replaces a backend that
    /// died (capacity below desired).
    Replace,
}

impl fmt::Display for DecisionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Policy => "policy",
            Self::Schedule => "schedule",
            Self::Manual => "manual",
            Self::Replace => "replace",
        })
    }
}

/// A change of `desired` (or, for schedules, of min/max), with why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// `desired` before.
    pub from: u32,
    /// `desired` after (may equal `from` for a schedule that only changed min/max, or a manual
    /// set to the current value).
    pub to: u32,
    /// Human-readable, e.g. `target tracking new_flows_per_second_per_backend: 180.0 vs
    /// target 100 → 4 backends` or `step backend_cpu > 0.7 for 5m → +1`.
    pub reason: String,
    /// For policy decisions: every policy metric that had fresh data at the evaluation
    /// (name → group value), the winning one and the ones that agreed. Empty for manual and
    /// schedule decisions.
    pub metrics: BTreeMap<String, f64>,
    pub kind: DecisionKind,
}

// ---------------------------------------------------------------------------------------------
// Schedules
// ---------------------------------------------------------------------------------------------

fn utc(t: SystemTime) -> Option<DateTime<Utc>> {
    let d = t.duration_since(UNIX_EPOCH).ok()?;
    DateTime::from_timestamp(i64::try_from(d.as_secs()).ok()?, d.subsec_nanos())
}

fn utc_whole_seconds(t: SystemTime) -> Option<DateTime<Utc>> {
    let d = t.duration_since(UNIX_EPOCH).ok()?;
    DateTime::from_timestamp(i64::try_from(d.as_secs()).ok()?, 0)
}

#[derive(Clone)]
struct ScheduleState {
    cfg: ScheduleConfig,
    /// `Err`: logged once when parsed, then ignored.
    cron: Result<Cron, String>,
}

impl ScheduleState {
    fn new(cfg: &ScheduleConfig) -> Self {
        let cron = parse_cron(&cfg.cron);
        if let Err(e) = &cron {
            tracing::warn!("scaling schedule ignored: {e}");
        }
        Self {
            cfg: cfg.clone(),
            cron,
        }
    }

    /// Whether an occurrence lies in `(prev, now]` (`prev` taken to the whole second).
    fn due(&self, prev: SystemTime, now: SystemTime) -> bool {
        let Ok(cron) = &self.cron else { return false };
        let (Some(prev), Some(now)) = (utc_whole_seconds(prev), utc(now)) else {
            return false;
        };
        match cron.find_next_occurrence(&prev, false) {
            Ok(next) => next <= now,
            Err(_) => false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The engine
// ---------------------------------------------------------------------------------------------

/// A step policy's hold timers.
#[derive(Clone)]
struct PolicyState {
    cfg: PolicyConfig,
    /// Since when the value has been above `scale_out.threshold`, continuously.
    out_since: Option<Instant>,
    /// Since when the value has been below `scale_in.threshold`, continuously.
    in_since: Option<Instant>,
}

impl PolicyState {
    fn new(cfg: &PolicyConfig) -> Self {
        Self {
            cfg: cfg.clone(),
            out_since: None,
            in_since: None,
        }
    }
}

/// What one policy thinks at one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vote {
    /// No fresh data: no say at all.
    NoData,
    /// Wants this many backends (more than capacity).
    Out(u32),
    /// The value is above its scale-out threshold but has not held long enough: no proposal,
    /// but it does not agree to a scale-in either.
    OutPending,
    /// Happy with the current capacity; could scale in, so its disagreement blocks a scale-in.
    Steady,
    /// Not above its target and unable to scale in (target tracking with `disable_scale_in`,
    /// step without `scale_in`): neither proposes nor blocks a scale-in.
    Neutral,
    /// The value is below its scale-in threshold, not held long enough yet: agrees to a
    /// scale-in, proposes none.
    InPending,
    /// Wants this many backends (fewer than or as many as capacity).
    In(u32),
}

/// A scaling group's `desired` capacity and the state that decides it: bounds (which
/// schedules may change), cooldown clocks, step hold timers and the schedules' clock.
///
/// Semantics, for every evaluation (see [`Scaler::evaluate`]):
/// - **Metric values** come from [`metric_value`]: averages over healthy backends past
///   warmup; a metric with no fresh data makes its policy propose nothing.
/// - **Target tracking** (as AWS): `ceil(capacity × value / target)`, nothing while the value
///   is within ±[`TARGET_TOLERANCE`] of the target, proposals below capacity dropped with
///   `disable_scale_in`; with capacity 0 it proposes `max(min, 1)`.
/// - **Step**: `capacity + add` once `value > above` has held continuously for `for`,
///   `capacity − remove` once `value < below` has; the hold timer restarts when the value
///   goes back, when data goes stale, and when the rule fires (a policy decision of its
///   direction is made while it proposes; a proposal blocked by cooldown or at max keeps its
///   timer, so it acts as soon as it can).
/// - **Combining**: scaling out wins: the largest proposal above `desired`. Scaling in only
///   when no policy proposes out or sits above its scale-out threshold (target tracking above
///   the tolerance band, step above `above` still holding, even if its proposal is not above
///   desired because launches are pending), at least one proposes in, and every policy with
///   fresh data that could scale in agrees: target tracking within the band or a step policy
///   in its dead band (between `below` and `above`) blocks it; a step policy below `below`
///   still holding agrees; one that can never scale in (`disable_scale_in`, no `scale_in`
///   rule) neither proposes nor blocks. Then the largest in-proposal wins (the least
///   aggressive). Always clamped to `[min, max]`; a decision is returned only when desired
///   changes.
/// - **Cooldown**: one clock per direction: after a scale-out, no policy scale-out until
///   `cooldown` has passed; same for scale-in. Manual and scheduled changes ignore the
///   cooldown but start the clock of their direction.
/// - **Schedules** fire once per occurrence (see [`Scaler::evaluate`]).
#[derive(Clone)]
pub struct Scaler {
    desired: u32,
    min: u32,
    max: u32,
    /// The config's values when last applied, to tell what a reload changed.
    cfg_desired: u32,
    cfg_min: u32,
    cfg_max: u32,
    created: Instant,
    last_out: Option<Instant>,
    last_in: Option<Instant>,
    /// The wall time up to which schedules have been evaluated (never goes back).
    last_wall: Option<SystemTime>,
    policies: Vec<PolicyState>,
    schedules: Vec<ScheduleState>,
}

impl fmt::Debug for Scaler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scaler")
            .field("desired", &self.desired)
            .field("min", &self.min)
            .field("max", &self.max)
            .field("last_out", &self.last_out)
            .field("last_in", &self.last_in)
            .field("last_wall", &self.last_wall)
            .finish_non_exhaustive()
    }
}

impl Scaler {
    /// Starts at `cfg.desired` within `[cfg.min, cfg.max]` (a max below min is raised to min,
    /// desired is clamped), no cooldown running, no hold timer running.
    pub fn new(cfg: &ScalingConfig, now: Instant) -> Self {
        let min = cfg.min;
        let max = cfg.max.max(min);
        Self {
            desired: cfg.desired.clamp(min, max),
            min,
            max,
            cfg_desired: cfg.desired,
            cfg_min: cfg.min,
            cfg_max: cfg.max,
            created: now,
            last_out: None,
            last_in: None,
            last_wall: None,
            policies: cfg.policies.iter().map(PolicyState::new).collect(),
            schedules: cfg.schedules.iter().map(ScheduleState::new).collect(),
        }
    }

    pub fn desired(&self) -> u32 {
        self.desired
    }

    pub fn min(&self) -> u32 {
        self.min
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    fn clamp(&self, n: u32) -> u32 {
        n.clamp(self.min, self.max)
    }

    /// Starts the cooldown clock of the direction from `from` to `to` (none if equal).
    fn start_cooldown(&mut self, from: u32, to: u32, now: Instant) {
        if to > from {
            self.last_out = Some(now);
        } else if to < from {
            self.last_in = Some(now);
        }
    }

    fn cooling(last: Option<Instant>, cooldown: Duration, now: Instant) -> bool {
        last.is_some_and(|t| now.saturating_duration_since(t) < cooldown)
    }

    /// Manual `xlb scale GROUP --desired N` (or the API): sets desired to `n` when
    /// `min <= n <= max`, else `Err` naming the bounds. Not blocked by cooldown, but starts the
    /// cooldown of its direction. Setting the current value is `Ok` with `from == to`.
    pub fn set_desired(&mut self, n: u32, now: Instant) -> Result<Decision, String> {
        if n < self.min || n > self.max {
            return Err(format!(
                "desired {n} is outside the group's bounds: min {}, max {}",
                self.min, self.max
            ));
        }
        let from = self.desired;
        self.desired = n;
        self.start_cooldown(from, n, now);
        Ok(Decision {
            from,
            to: n,
            reason: format!("manual: desired set to {n}"),
            metrics: BTreeMap::new(),
            kind: DecisionKind::Manual,
        })
    }

    /// After the config changed (reload). A reload applies what changed in the file and keeps
    /// the runtime value of what did not:
    /// - `min`/`max` take the config's values if those changed since the last config, else
    ///   keep the current ones (which a schedule may have set); `min <= max` is kept, the
    ///   changed side winning;
    /// - `desired` takes the config's value if that changed, else keeps the current one;
    ///   either way clamped to the bounds;
    /// - cooldown clocks and the schedules' clock are kept (no schedule fires again for an
    ///   occurrence already handled); a step policy's hold timers are kept when the same
    ///   policy (equal config) is still there, and start afresh otherwise.
    ///
    /// `now` is not used today: nothing here restarts on a reload.
    pub fn reconfigure(&mut self, cfg: &ScalingConfig, now: Instant) {
        let _ = now;
        let min_changed = cfg.min != self.cfg_min;
        let max_changed = cfg.max != self.cfg_max;
        if min_changed {
            self.min = cfg.min;
        }
        if max_changed {
            self.max = cfg.max;
        }
        if self.min > self.max {
            if min_changed {
                self.max = self.min;
            } else {
                self.min = self.max;
            }
        }
        if cfg.desired != self.cfg_desired {
            self.desired = cfg.desired;
        }
        self.desired = self.clamp(self.desired);
        self.cfg_min = cfg.min;
        self.cfg_max = cfg.max;
        self.cfg_desired = cfg.desired;
        self.sync(cfg);
    }

    /// Matches the policy and schedule states to `cfg` (by equal config), keeping what still
    /// applies.
    fn sync(&mut self, cfg: &ScalingConfig) {
        rematch(
            &mut self.policies,
            &cfg.policies,
            |s| &s.cfg,
            PolicyState::new,
        );
        rematch(
            &mut self.schedules,
            &cfg.schedules,
            |s| &s.cfg,
            ScheduleState::new,
        );
    }

    /// Evaluates schedules, then policies, and returns the change of `desired` they decide, if
    /// any. `capacity` is the current number of in-service (not draining) backends; `now` the
    /// monotonic clock (hold timers, cooldown, warmup, freshness); `wall` the current UTC time
    /// (cron), passed in so that tests control it.
    ///
    /// **Schedules**: a schedule fires when its next occurrence after the previous
    /// evaluation's wall time (taken to the whole second) is `<= wall`: a tick that misses the
    /// exact second still fires it once, and it never fires twice for one occurrence (nor once
    /// per missed occurrence after a long pause: once). On the first evaluation the previous
    /// wall time is the Scaler's creation, estimated as `wall − (now − created)`, so
    /// occurrences before the Scaler existed do not fire. The wall clock used never goes
    /// back: if it steps back, schedules wait until it passes the last evaluated time again.
    /// A firing schedule sets min and max if given (keeping `min <= max`: the bound it set
    /// wins), then desired if given, clamped to the bounds; it returns a
    /// [`DecisionKind::Schedule`] decision with the reason `schedule "CRON" fired` (plus the
    /// bounds it set), even when desired did not change. Several schedules firing at once
    /// apply in config order and make one decision. An evaluation on which a schedule fires
    /// evaluates no policy: they act from the next evaluation on.
    ///
    /// **Policies**: see [`Scaler`].
    pub fn evaluate(
        &mut self,
        cfg: &ScalingConfig,
        sample: &GroupSample,
        capacity: u32,
        now: Instant,
        wall: SystemTime,
    ) -> Option<Decision> {
        self.sync(cfg);
        if let Some(d) = self.run_schedules(now, wall) {
            return Some(d);
        }
        self.run_policies(cfg, sample, capacity, now)
    }

    fn run_schedules(&mut self, now: Instant, wall: SystemTime) -> Option<Decision> {
        let prev = match self.last_wall {
            Some(prev) => prev,
            None => wall
                .checked_sub(now.saturating_duration_since(self.created))
                .unwrap_or(wall),
        };
        if wall <= prev {
            self.last_wall = Some(prev);
            return None;
        }
        self.last_wall = Some(wall);
        let due: Vec<ScheduleConfig> = self
            .schedules
            .iter()
            .filter(|s| s.due(prev, wall))
            .map(|s| s.cfg.clone())
            .collect();
        if due.is_empty() {
            return None;
        }
        let from = self.desired;
        let mut reasons = Vec::new();
        for s in &due {
            if let Some(min) = s.min {
                self.min = min;
            }
            if let Some(max) = s.max {
                self.max = max;
            }
            if self.min > self.max {
                // The bound the schedule set wins; both set and inconsistent: min wins.
                if s.max.is_some() && s.min.is_none() {
                    self.min = self.max;
                } else {
                    self.max = self.min;
                }
            }
            if let Some(d) = s.desired {
                self.desired = d;
            }
            self.desired = self.clamp(self.desired);
            let mut reason = format!("schedule \"{}\" fired", s.cron);
            match (s.min, s.max) {
                (Some(_), Some(_)) => {
                    reason += &format!(" (min {}, max {})", self.min, self.max);
                }
                (Some(_), None) => reason += &format!(" (min {})", self.min),
                (None, Some(_)) => reason += &format!(" (max {})", self.max),
                (None, None) => {}
            }
            reasons.push(reason);
        }
        let to = self.desired;
        self.start_cooldown(from, to, now);
        Some(Decision {
            from,
            to,
            reason: reasons.join("; "),
            metrics: BTreeMap::new(),
            kind: DecisionKind::Schedule,
        })
    }

    fn run_policies(
        &mut self,
        cfg: &ScalingConfig,
        sample: &GroupSample,
        capacity: u32,
        now: Instant,
    ) -> Option<Decision> {
        let mut metrics = BTreeMap::new();
        // (vote, reason) per policy, in config order.
        let mut votes: Vec<(Vote, String)> = Vec::with_capacity(self.policies.len());
        let min = self.min;
        for state in &mut self.policies {
            let metric = policy_metric(&state.cfg).clone();
            let value = metric_value(&metric, sample, cfg, now);
            if let Some(v) = value {
                metrics.insert(metric.name().to_string(), v);
            }
            votes.push(vote(state, &metric, value, capacity, min, now));
        }

        let desired = self.desired;
        let out = votes
            .iter()
            .filter_map(|(v, r)| match v {
                Vote::Out(n) => Some((*n, r)),
                _ => None,
            })
            .fold(None::<(u32, &String)>, |best, (n, r)| match best {
                Some((b, _)) if b >= n => best,
                _ => Some((n, r)),
            });
        if let Some((n, reason)) = out.filter(|(n, _)| *n > desired) {
            if Self::cooling(self.last_out, cfg.cooldown, now) {
                return None;
            }
            let to = self.clamp(n);
            if to <= desired {
                return None; // at max already
            }
            let mut reason = reason.clone();
            if to < n {
                reason += &format!(" (capped at max {})", self.max);
            }
            self.desired = to;
            self.last_out = Some(now);
            for (state, (v, _)) in self.policies.iter_mut().zip(&votes) {
                if matches!(v, Vote::Out(_)) && state.out_since.is_some() {
                    state.out_since = Some(now);
                }
            }
            return Some(Decision {
                from: desired,
                to,
                reason,
                metrics,
                kind: DecisionKind::Policy,
            });
        }

        // Scaling in: nobody wants more, someone wants fewer, everyone able to scale in agrees.
        if votes
            .iter()
            .any(|(v, _)| matches!(v, Vote::Out(_) | Vote::OutPending | Vote::Steady))
        {
            return None;
        }
        let (n, reason) = votes
            .iter()
            .filter_map(|(v, r)| match v {
                Vote::In(n) => Some((*n, r)),
                _ => None,
            })
            .fold(None::<(u32, &String)>, |best, (n, r)| match best {
                Some((b, _)) if b >= n => best,
                _ => Some((n, r)),
            })?;
        let to = self.clamp(n);
        if to >= desired || Self::cooling(self.last_in, cfg.cooldown, now) {
            return None;
        }
        let mut reason = reason.clone();
        if to > n {
            reason += &format!(" (floored at min {})", self.min);
        }
        self.desired = to;
        self.last_in = Some(now);
        for (state, (v, _)) in self.policies.iter_mut().zip(&votes) {
            if matches!(v, Vote::In(_)) && state.in_since.is_some() {
                state.in_since = Some(now);
            }
        }
        Some(Decision {
            from: desired,
            to,
            reason,
            metrics,
            kind: DecisionKind::Policy,
        })
    }
}

/// One policy's vote, updating its hold timers.
fn vote(
    state: &mut PolicyState,
    metric: &Metric,
    value: Option<f64>,
    capacity: u32,
    min: u32,
    now: Instant,
) -> (Vote, String) {
    let Some(value) = value else {
        state.out_since = None;
        state.in_since = None;
        return (Vote::NoData, String::new());
    };
    let name = metric.name();
    match &state.cfg {
        PolicyConfig::TargetTracking {
            target,
            disable_scale_in,
            ..
        } => {
            let target = *target;
            if !(target.is_finite() && target > 0.0) {
                return (Vote::Neutral, String::new());
            }
            let describe = |n: u32| {
                format!(
                    "target tracking {name}: {} vs target {target} → {n} backends",
                    fmt_value(value)
                )
            };
            if (value - target).abs() <= target * TARGET_TOLERANCE {
                return if *disable_scale_in {
                    (Vote::Neutral, String::new())
                } else {
                    (Vote::Steady, String::new())
                };
            }
            if capacity == 0 {
                let n = min.max(1);
                return (Vote::Out(n), describe(n));
            }
            // A hair below the exact quotient so that float noise (3.0000000004) does not add
            // a backend.
            let exact = f64::from(capacity) * value / target;
            let n = (exact - 1e-9).ceil().max(0.0) as u32;
            if value > target {
                (Vote::Out(n.max(capacity)), describe(n.max(capacity)))
            } else if *disable_scale_in {
                (Vote::Neutral, String::new())
            } else {
                (Vote::In(n.min(capacity)), describe(n.min(capacity)))
            }
        }
        PolicyConfig::Step {
            scale_out,
            scale_in,
            ..
        } => {
            if let Some(rule) = scale_out {
                if value > rule.threshold {
                    state.in_since = None;
                    let since = *state.out_since.get_or_insert(now);
                    if now.saturating_duration_since(since) >= rule.hold {
                        let reason = step_reason(name, ">", rule, "+");
                        return (Vote::Out(capacity.saturating_add(rule.change)), reason);
                    }
                    return (Vote::OutPending, String::new());
                }
            }
            state.out_since = None;
            if let Some(rule) = scale_in {
                if value < rule.threshold {
                    let since = *state.in_since.get_or_insert(now);
                    if now.saturating_duration_since(since) >= rule.hold {
                        let reason = step_reason(name, "<", rule, "-");
                        return (Vote::In(capacity.saturating_sub(rule.change)), reason);
                    }
                    return (Vote::InPending, String::new());
                }
                state.in_since = None;
                return (Vote::Steady, String::new());
            }
            state.in_since = None;
            (Vote::Neutral, String::new())
        }
    }
}

fn step_reason(name: &str, op: &str, rule: &StepRule, sign: &str) -> String {
    format!(
        "step {name} {op} {} for {} → {sign}{}",
        rule.threshold,
        humantime::format_duration(rule.hold),
        rule.change
    )
}

/// `180.0`, `0.42`, `5.0`: one decimal from 10 up, up to three below.
fn fmt_value(v: f64) -> String {
    if v.abs() >= 10.0 {
        return format!("{v:.1}");
    }
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0');
    if s.ends_with('.') {
        format!("{s}0")
    } else {
        s.to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    const S: Duration = Duration::from_secs(1);

    fn cfg(policies: Vec<PolicyConfig>) -> ScalingConfig {
        ScalingConfig {
            min: 1,
            max: 10,
            desired: 2,
            scale_out_command: None,
            scale_in_command: None,
            hook_timeout: 60 * S,
            cooldown: 300 * S,
            warmup: 60 * S,
            grace_period: 120 * S,
            metric_command: None,
            metric_interval: 10 * S,
            policies,
            schedules: Vec::new(),
        }
    }

    fn tt(target: f64) -> PolicyConfig {
        PolicyConfig::TargetTracking {
            metric: Metric::NewFlowsPerSecondPerBackend,
            target,
            disable_scale_in: false,
        }
    }

    fn tt_on(metric: Metric, target: f64) -> PolicyConfig {
        PolicyConfig::TargetTracking {
            metric,
            target,
            disable_scale_in: false,
        }
    }

    fn step_cpu(out: Option<(f64, u64, u32)>, inn: Option<(f64, u64, u32)>) -> PolicyConfig {
        let rule = |(threshold, secs, change): (f64, u64, u32)| StepRule {
            threshold,
            hold: Duration::from_secs(secs),
            change,
        };
        PolicyConfig::Step {
            metric: Metric::BackendCpu,
            scale_out: out.map(rule),
            scale_in: inn.map(rule),
        }
    }

    /// A healthy backend in service since `since`, with `nfps` new flows/s, reporting
    /// `cpu` at `at` if given.
    fn backend(uid: u64, since: Instant, nfps: f64, cpu: Option<(f64, Instant)>) -> BackendSample {
        BackendSample {
            uid,
            in_service_since: since,
            healthy: true,
            new_flows_per_s: nfps,
            packets_per_s: nfps * 10.0,
            bytes_per_s: nfps * 1000.0,
            active_flows: nfps * 2.0,
            reported: cpu
                .map(|c| BTreeMap::from([("cpu".to_string(), c)]))
                .unwrap_or_default(),
        }
    }

    fn sample(at: Instant, backends: Vec<BackendSample>) -> GroupSample {
        GroupSample {
            at,
            backends,
            rates_fresh: true,
        }
    }

    /// `n` old healthy backends at `nfps` each.
    fn flows(t0: Instant, at: Instant, n: u32, nfps: f64) -> GroupSample {
        sample(
            at,
            (0..n)
                .map(|i| backend(u64::from(i), t0, nfps, None))
                .collect(),
        )
    }

    /// `n` old healthy backends reporting `cpu` at `at`.
    fn cpu(t0: Instant, at: Instant, n: u32, cpu: f64) -> GroupSample {
        sample(
            at,
            (0..n)
                .map(|i| backend(u64::from(i), t0, 0.0, Some((cpu, at))))
                .collect(),
        )
    }

    fn wall(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32, ms: u32) -> SystemTime {
        let dt = NaiveDate::from_ymd_opt(y, mo, d)
            .unwrap()
            .and_hms_milli_opt(h, mi, s, ms)
            .unwrap()
            .and_utc();
        UNIX_EPOCH + Duration::from_millis(dt.timestamp_millis() as u64)
    }

    /// Monday 2025-01-06 08:00:00 UTC plus `secs` (may be negative).
    fn monday_8(secs: i64) -> SystemTime {
        let base = wall(2025, 1, 6, 8, 0, 0, 0);
        if secs >= 0 {
            base + Duration::from_secs(secs as u64)
        } else {
            base - Duration::from_secs((-secs) as u64)
        }
    }

    fn w0() -> SystemTime {
        monday_8(-3600)
    }

    #[test]
    fn target_tracking_scales_out_in_proportion() {
        let t0 = Instant::now();
        let c = cfg(vec![tt(100.0)]);
        let mut s = Scaler::new(&c, t0);
        assert_eq!((s.desired(), s.min(), s.max()), (2, 1, 10));
        let now = t0 + 600 * S;
        let d = s
            .evaluate(&c, &flows(t0, now, 2, 180.0), 2, now, w0())
            .expect("scale out");
        assert_eq!((d.from, d.to, d.kind), (2, 4, DecisionKind::Policy));
        assert_eq!(
            d.reason,
            "target tracking new_flows_per_second_per_backend: 180.0 vs target 100 → 4 backends"
        );
        assert_eq!(d.metrics["new_flows_per_second_per_backend"], 180.0);
        assert_eq!(s.desired(), 4);
    }

    #[test]
    fn target_tracking_scales_in_and_respects_tolerance() {
        let t0 = Instant::now();
        let mut c = cfg(vec![tt(100.0)]);
        c.desired = 4;
        let mut s = Scaler::new(&c, t0);
        let now = t0 + 600 * S;
        // Within ±10% of the target: nothing, either way.
        for v in [91.0, 95.0, 100.0, 105.0, 109.0, 110.0, 90.0] {
            assert_eq!(
                s.evaluate(&c, &flows(t0, now, 4, v), 4, now, w0()),
                None,
                "{v}"
            );
        }
        // Just out of tolerance: 4 × 111 / 100 = 4.44 → 5.
        let d = s
            .evaluate(&c, &flows(t0, now, 4, 111.0), 4, now, w0())
            .unwrap();
        assert_eq!((d.from, d.to), (4, 5));

        // Down: 5 × 40 / 100 = 2.
        let mut s = Scaler::new(&c, t0);
        let d = s
            .evaluate(&c, &flows(t0, now, 4, 40.0), 4, now, w0())
            .unwrap();
        assert_eq!((d.from, d.to), (4, 2));
        assert!(
            d.reason.contains("40.0 vs target 100 → 2 backends"),
            "{}",
            d.reason
        );
        // Zero load goes to min, not below.
        let mut s = Scaler::new(&c, t0);
        let d = s
            .evaluate(&c, &flows(t0, now, 4, 0.0), 4, now, w0())
            .unwrap();
        assert_eq!(d.to, 1);
        assert!(d.reason.ends_with("(floored at min 1)"), "{}", d.reason);
    }

    #[test]
    fn target_tracking_clamps_to_max() {
        let t0 = Instant::now();
        let c = cfg(vec![tt(100.0)]);
        let mut s = Scaler::new(&c, t0);
        let now = t0 + 600 * S;
        let d = s
            .evaluate(&c, &flows(t0, now, 2, 5000.0), 2, now, w0())
            .unwrap();
        assert_eq!((d.from, d.to), (2, 10));
        assert!(d.reason.ends_with("(capped at max 10)"), "{}", d.reason);
        // At max, more load changes nothing, cooldown or not.
        let later = now + 3600 * S;
        assert_eq!(
            s.evaluate(&c, &flows(t0, later, 10, 5000.0), 10, later, w0()),
            None
        );
    }

    #[test]
    fn target_tracking_disable_scale_in() {
        let t0 = Instant::now();
        let mut c = cfg(vec![PolicyConfig::TargetTracking {
            metric: Metric::ActiveFlowsPerBackend,
            target: 100.0,
            disable_scale_in: true,
        }]);
        c.desired = 4;
        let mut s = Scaler::new(&c, t0);
        let now = t0 + 600 * S;
        // active_flows = 2 × nfps: 20 active flows, far below the target.
        assert_eq!(s.evaluate(&c, &flows(t0, now, 4, 10.0), 4, now, w0()), None);
        // Out still works: 4 × 300 / 100 = 12 → max 10.
        let d = s
            .evaluate(&c, &flows(t0, now, 4, 150.0), 4, now, w0())
            .unwrap();
        assert_eq!(d.to, 10);
        assert_eq!(d.metrics["active_flows_per_backend"], 300.0);
    }

    #[test]
    fn stale_or_missing_metrics_propose_nothing() {
        let t0 = Instant::now();
        let now = t0 + 600 * S;
        // Data-path rates not fresh.
        let c = cfg(vec![tt(100.0)]);
        let mut s = Scaler::new(&c, t0);
        let mut g = flows(t0, now, 2, 1000.0);
        g.rates_fresh = false;
        assert_eq!(s.evaluate(&c, &g, 2, now, w0()), None);
        // No backend at all.
        assert_eq!(s.evaluate(&c, &flows(t0, now, 0, 0.0), 0, now, w0()), None);
        // Even a near-zero load with stale rates does not scale in.
        let mut g = flows(t0, now, 2, 0.0);
        g.rates_fresh = false;
        assert_eq!(s.evaluate(&c, &g, 2, now, w0()), None);

        // Reported metric: too old (61 s > 60 s), or not reported at all.
        let c = cfg(vec![tt_on(Metric::BackendCpu, 0.5)]);
        let mut s = Scaler::new(&c, t0);
        let old = cpu(t0, now - 61 * S, 2, 0.99);
        assert_eq!(s.evaluate(&c, &old, 2, now, w0()), None);
        assert_eq!(s.evaluate(&c, &flows(t0, now, 2, 50.0), 2, now, w0()), None);
        // A custom metric nobody reports.
        let c2 = cfg(vec![tt_on(Metric::Custom("queue".into()), 10.0)]);
        let mut s2 = Scaler::new(&c2, t0);
        assert_eq!(s2.evaluate(&c2, &cpu(t0, now, 2, 0.99), 2, now, w0()), None);
        // Fresh (60 s old exactly) it acts: 2 × 0.99 / 0.5 = 3.96 → 4.
        let fresh = cpu(t0, now - 60 * S, 2, 0.99);
        let d = s.evaluate(&c, &fresh, 2, now, w0()).unwrap();
        assert_eq!(d.to, 4);
        assert_eq!(d.metrics["backend_cpu"], 0.99);
        assert!(
            d.reason.contains("backend_cpu: 0.99 vs target 0.5"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn freshness_follows_metric_interval() {
        let mut c = cfg(vec![]);
        assert_eq!(reported_freshness(&c), 60 * S);
        c.metric_interval = 30 * S;
        assert_eq!(reported_freshness(&c), 90 * S);
    }

    #[test]
    fn custom_metric_averages_fresh_reports_only() {
        let t0 = Instant::now();
        let now = t0 + 600 * S;
        let c = cfg(vec![tt_on(Metric::Custom("queue".into()), 10.0)]);
        let mk = |uid, v: f64, at: Instant| {
            let mut b = backend(uid, t0, 0.0, None);
            b.reported.insert("queue".into(), (v, at));
            b
        };
        // One fresh report of 30, one stale of 1000, one backend without it.
        let g = sample(
            now,
            vec![
                mk(1, 30.0, now - S),
                mk(2, 1000.0, now - 600 * S),
                backend(3, t0, 0.0, None),
            ],
        );
        assert_eq!(
            metric_value(&Metric::Custom("queue".into()), &g, &c, now),
            Some(30.0)
        );
    }

    #[test]
    fn group_totals_sum_every_backend() {
        let t0 = Instant::now();
        let c = cfg(vec![tt(100.0)]);
        let now = t0 + 600 * S;
        let bs = vec![
            backend(1, t0, 200.0, None),
            backend(2, now - 30 * S, 50.0, None),
        ];
        // Per backend: the warming one is left out; the group total counts it.
        assert_eq!(
            metric_value(
                &Metric::NewFlowsPerSecondPerBackend,
                &sample(now, bs.clone()),
                &c,
                now
            ),
            Some(200.0)
        );
        assert_eq!(
            metric_value(&Metric::NewFlowsPerSecond, &sample(now, bs), &c, now),
            Some(250.0)
        );
    }

    #[test]
    fn warmup_excludes_new_backends() {
        let t0 = Instant::now();
        let c = cfg(vec![tt(100.0)]);
        let mut s = Scaler::new(&c, t0);
        let now = t0 + 600 * S;
        // Two old backends at 200, two that entered 30 s ago (warmup 60 s) at 0: the average
        // is 200, not 100 → 4 × 200 / 100 = 8.
        let mut bs = vec![backend(1, t0, 200.0, None), backend(2, t0, 200.0, None)];
        bs.push(backend(3, now - 30 * S, 0.0, None));
        bs.push(backend(4, now - 30 * S, 0.0, None));
        let d = s
            .evaluate(&c, &sample(now, bs.clone()), 4, now, w0())
            .unwrap();
        assert_eq!(d.to, 8);
        assert_eq!(d.metrics["new_flows_per_second_per_backend"], 200.0);
        // Past warmup (60 s exactly) they count.
        let later = now + 30 * S;
        assert_eq!(
            metric_value(
                &Metric::NewFlowsPerSecondPerBackend,
                &sample(later, bs.clone()),
                &c,
                later
            ),
            Some(100.0)
        );
        // Only warming-up backends: no data, no scaling.
        let mut s = Scaler::new(&c, t0);
        let g = sample(now, bs[2..].to_vec());
        assert_eq!(s.evaluate(&c, &g, 2, now, w0()), None);
    }

    #[test]
    fn unhealthy_backends_excluded() {
        let t0 = Instant::now();
        let c = cfg(vec![tt(100.0)]);
        let mut s = Scaler::new(&c, t0);
        let now = t0 + 600 * S;
        let mut sick = backend(2, t0, 0.0, Some((0.0, now)));
        sick.healthy = false;
        let g = sample(now, vec![backend(1, t0, 300.0, None), sick]);
        // Average 300 over the healthy one: 2 × 300 / 100 = 6.
        let d = s.evaluate(&c, &g, 2, now, w0()).unwrap();
        assert_eq!(d.to, 6);
        assert_eq!(d.metrics["new_flows_per_second_per_backend"], 300.0);
    }

    #[test]
    fn step_out_after_hold_not_before_and_hold_resets_on_dip() {
        let t0 = Instant::now();
        let c = cfg(vec![step_cpu(Some((0.7, 300, 1)), None)]);
        let mut s = Scaler::new(&c, t0);
        let at = |secs: u64| t0 + 600 * S + Duration::from_secs(secs);
        let ev = |s: &mut Scaler, secs: u64, v: f64| {
            s.evaluate(&c, &cpu(t0, at(secs), 2, v), 2, at(secs), w0())
        };
        assert_eq!(ev(&mut s, 0, 0.8), None); // hold starts
        assert_eq!(ev(&mut s, 150, 0.9), None);
        assert_eq!(ev(&mut s, 299, 0.9), None); // not yet
                                                // Dips to exactly the threshold (not above): the hold restarts.
        assert_eq!(ev(&mut s, 300, 0.7), None);
        assert_eq!(ev(&mut s, 310, 0.8), None);
        assert_eq!(ev(&mut s, 609, 0.8), None);
        let d = ev(&mut s, 610, 0.8).expect("held 300 s");
        assert_eq!((d.from, d.to), (2, 3));
        assert_eq!(d.reason, "step backend_cpu > 0.7 for 5m → +1");
        assert_eq!(d.metrics["backend_cpu"], 0.8);

        // Stale data also restarts the hold.
        let mut s = Scaler::new(&c, t0);
        assert_eq!(ev(&mut s, 0, 0.8), None);
        let stale = cpu(t0, at(0), 2, 0.8); // reported at 0, read at 100: older than 60 s
        assert_eq!(s.evaluate(&c, &stale, 2, at(100), w0()), None);
        assert_eq!(ev(&mut s, 200, 0.8), None);
        assert_eq!(ev(&mut s, 300, 0.8), None); // would have fired without the gap
        assert!(ev(&mut s, 500, 0.8).is_some());
    }

    #[test]
    fn step_in_after_hold() {
        let t0 = Instant::now();
        let mut c = cfg(vec![step_cpu(Some((0.7, 300, 1)), Some((0.3, 600, 2)))]);
        c.desired = 5;
        let mut s = Scaler::new(&c, t0);
        let at = |secs: u64| t0 + 600 * S + Duration::from_secs(secs);
        let ev = |s: &mut Scaler, secs: u64, v: f64| {
            s.evaluate(&c, &cpu(t0, at(secs), 5, v), 5, at(secs), w0())
        };
        assert_eq!(ev(&mut s, 0, 0.1), None);
        assert_eq!(ev(&mut s, 599, 0.2), None);
        let d = ev(&mut s, 600, 0.2).expect("held 600 s");
        assert_eq!((d.from, d.to), (5, 3));
        assert_eq!(d.reason, "step backend_cpu < 0.3 for 10m → -2");
        // In the dead band nothing happens.
        let mut s = Scaler::new(&c, t0);
        assert_eq!(ev(&mut s, 0, 0.5), None);
        assert_eq!(ev(&mut s, 5000, 0.5), None);
    }

    #[test]
    fn cooldown_per_direction() {
        let t0 = Instant::now();
        let c = cfg(vec![tt(100.0)]);
        let mut s = Scaler::new(&c, t0);
        let base = t0 + 600 * S;
        let at = |secs: u64| base + Duration::from_secs(secs);
        // Out at 0: 2 → 4.
        let d = s
            .evaluate(&c, &flows(t0, at(0), 2, 200.0), 2, at(0), w0())
            .unwrap();
        assert_eq!(d.to, 4);
        // More out at 100 and 299: blocked by the scale-out cooldown (300 s).
        assert_eq!(
            s.evaluate(&c, &flows(t0, at(100), 4, 200.0), 4, at(100), w0()),
            None
        );
        // Scale-in at 150 is not blocked by the scale-out cooldown: 4 × 50 / 100 = 2.
        let d = s
            .evaluate(&c, &flows(t0, at(150), 4, 50.0), 4, at(150), w0())
            .unwrap();
        assert_eq!((d.from, d.to), (4, 2));
        // Scale-in again at 200: blocked by the scale-in cooldown (until 450).
        assert_eq!(
            s.evaluate(&c, &flows(t0, at(200), 2, 10.0), 2, at(200), w0()),
            None
        );
        assert_eq!(
            s.evaluate(&c, &flows(t0, at(449), 2, 10.0), 2, at(449), w0()),
            None
        );
        // Out at 299 still blocked, at 300 allowed.
        assert_eq!(
            s.evaluate(&c, &flows(t0, at(299), 2, 200.0), 2, at(299), w0()),
            None
        );
        let d = s
            .evaluate(&c, &flows(t0, at(300), 2, 200.0), 2, at(300), w0())
            .unwrap();
        assert_eq!((d.from, d.to), (2, 4));
        // In allowed at 450 (cooldown since 150).
        let d = s
            .evaluate(&c, &flows(t0, at(450), 4, 10.0), 4, at(450), w0())
            .unwrap();
        assert_eq!((d.from, d.to), (4, 1));
    }

    #[test]
    fn manual_and_schedule_ignore_but_start_cooldown() {
        let t0 = Instant::now();
        let c = cfg(vec![tt(100.0)]);
        let mut s = Scaler::new(&c, t0);
        let now = t0 + 600 * S;
        let d = s
            .evaluate(&c, &flows(t0, now, 2, 200.0), 2, now, w0())
            .unwrap();
        assert_eq!(d.to, 4);
        // Manual out right after a policy out: allowed.
        let d = s.set_desired(6, now + S).unwrap();
        assert_eq!((d.from, d.to, d.kind), (4, 6, DecisionKind::Manual));
        // ...and it restarted the out cooldown: at now+300 (past the policy's) still blocked.
        let t = now + 300 * S;
        assert_eq!(s.evaluate(&c, &flows(t0, t, 6, 200.0), 6, t, w0()), None);
        let t = now + 301 * S;
        assert_eq!(
            s.evaluate(&c, &flows(t0, t, 6, 200.0), 6, t, w0())
                .unwrap()
                .to,
            10
        );
        // Manual in starts the in cooldown.
        s.set_desired(5, t).unwrap();
        let t2 = t + 299 * S;
        assert_eq!(s.evaluate(&c, &flows(t0, t2, 5, 10.0), 5, t2, w0()), None);
        let t2 = t + 300 * S;
        assert_eq!(
            s.evaluate(&c, &flows(t0, t2, 5, 10.0), 5, t2, w0())
                .unwrap()
                .to,
            1
        );
    }

    #[test]
    fn scale_out_wins_over_scale_in() {
        let t0 = Instant::now();
        let mut c = cfg(vec![
            tt(100.0),                                      // flows low: wants in
            step_cpu(Some((0.7, 0, 2)), Some((0.3, 0, 1))), // cpu high: wants out
        ]);
        c.desired = 4;
        let mut s = Scaler::new(&c, t0);
        let now = t0 + 600 * S;
        let g = sample(
            now,
            (0..4)
                .map(|i| backend(i, t0, 10.0, Some((0.9, now))))
                .collect(),
        );
        let d = s.evaluate(&c, &g, 4, now, w0()).unwrap();
        assert_eq!((d.from, d.to), (4, 6));
        assert_eq!(d.reason, "step backend_cpu > 0.7 for 0s → +2");
        assert_eq!(d.metrics["backend_cpu"], 0.9);
        assert_eq!(d.metrics["new_flows_per_second_per_backend"], 10.0);

        // Two outs: the largest wins.
        let c = cfg(vec![tt(100.0), step_cpu(Some((0.7, 0, 1)), None)]);
        let mut s = Scaler::new(&c, t0);
        let g = sample(
            now,
            (0..2)
                .map(|i| backend(i, t0, 400.0, Some((0.9, now))))
                .collect(),
        );
        let d = s.evaluate(&c, &g, 2, now, w0()).unwrap();
        assert_eq!(d.to, 8);
        assert!(d.reason.starts_with("target tracking"), "{}", d.reason);
    }

    #[test]
    fn pending_scale_out_blocks_scale_in() {
        let t0 = Instant::now();
        let mut c = cfg(vec![tt(100.0), step_cpu(Some((0.7, 300, 1)), None)]);
        c.desired = 4;
        let mut s = Scaler::new(&c, t0);
        let now = t0 + 600 * S;
        // Flows want 1, cpu is above 0.7 but has not held: no scale-in.
        let g = sample(
            now,
            (0..4)
                .map(|i| backend(i, t0, 10.0, Some((0.9, now))))
                .collect(),
        );
        assert_eq!(s.evaluate(&c, &g, 4, now, w0()), None);
    }

    #[test]
    fn scale_in_needs_agreement() {
        let t0 = Instant::now();
        let mut c = cfg(vec![tt(100.0), tt_on(Metric::BackendCpu, 0.5)]);
        c.desired = 8;
        let now = t0 + 600 * S;
        let mk = |nfps: f64, cpu: f64| {
            sample(
                now,
                (0..8)
                    .map(|i| backend(i, t0, nfps, Some((cpu, now))))
                    .collect(),
            )
        };
        // Flows say 8 × 25 / 100 = 2, cpu is on target: no scale-in.
        let mut s = Scaler::new(&c, t0);
        assert_eq!(s.evaluate(&c, &mk(25.0, 0.5), 8, now, w0()), None);
        // Both want fewer: the larger (least aggressive) wins: cpu 8 × 0.25 / 0.5 = 4.
        let d = s.evaluate(&c, &mk(25.0, 0.25), 8, now, w0()).unwrap();
        assert_eq!((d.from, d.to), (8, 4));
        assert!(
            d.reason.starts_with("target tracking backend_cpu"),
            "{}",
            d.reason
        );
        // A policy without data has no say.
        let mut s = Scaler::new(&c, t0);
        let g = flows(t0, now, 8, 25.0);
        assert_eq!(s.evaluate(&c, &g, 8, now, w0()).unwrap().to, 2);
        // A step policy below its threshold but still holding agrees, in the dead band it does
        // not, and one that cannot scale in (no scale_in rule) does not block.
        let c2 = {
            let mut c2 = cfg(vec![
                tt(100.0),
                step_cpu(Some((0.7, 0, 1)), Some((0.3, 600, 1))),
            ]);
            c2.desired = 8;
            c2
        };
        let mut s = Scaler::new(&c2, t0);
        assert_eq!(s.evaluate(&c2, &mk(25.0, 0.1), 8, now, w0()).unwrap().to, 2);
        let mut s = Scaler::new(&c2, t0);
        assert_eq!(s.evaluate(&c2, &mk(25.0, 0.5), 8, now, w0()), None);
        let c3 = {
            let mut c3 = cfg(vec![tt(100.0), step_cpu(Some((0.7, 0, 1)), None)]);
            c3.desired = 8;
            c3
        };
        let mut s = Scaler::new(&c3, t0);
        assert_eq!(s.evaluate(&c3, &mk(25.0, 0.5), 8, now, w0()).unwrap().to, 2);
    }

    #[test]
    fn never_exceeds_max_whatever_the_load() {
        let t0 = Instant::now();
        let c = cfg(vec![
            tt(100.0),
            tt_on(Metric::PacketsPerSecondPerBackend, 10.0),
            step_cpu(Some((0.7, 0, 5)), Some((0.3, 0, 1))),
        ]);
        let mut s = Scaler::new(&c, t0);
        let mut capacity = 2;
        for i in 0..200u64 {
            let now = t0 + 600 * S + Duration::from_secs(i * 301);
            let load = [1e9, 0.0, 1e6, 150.0, 5.0][(i % 5) as usize];
            let cpu_v = [0.99, 0.0, 0.5][(i % 3) as usize];
            let g = sample(
                now,
                (0..capacity)
                    .map(|u| backend(u64::from(u), t0, load, Some((cpu_v, now))))
                    .collect(),
            );
            if let Some(d) = s.evaluate(&c, &g, capacity, now, w0()) {
                assert!(d.to <= 10 && d.to >= 1, "{d:?}");
            }
            assert!(s.desired() <= s.max() && s.desired() >= s.min());
            capacity = s.desired();
        }
        // Capacity above max (a manual backend) proposes nothing above max either.
        let now = t0 + 10_000_000 * S;
        let d = s.evaluate(&c, &flows(t0, now, 20, 1e9), 20, now, w0());
        assert!(d.is_none_or(|d| d.to <= 10));
        assert!(s.desired() <= 10);
    }

    #[test]
    fn target_tracking_with_zero_capacity_proposes_min() {
        let t0 = Instant::now();
        let mut c = cfg(vec![tt(100.0)]);
        c.min = 0;
        c.desired = 0;
        let mut s = Scaler::new(&c, t0);
        let now = t0 + 600 * S;
        // Capacity 0 (e.g. the only backend is draining, yet still sampled).
        let d = s
            .evaluate(&c, &flows(t0, now, 1, 500.0), 0, now, w0())
            .unwrap();
        assert_eq!((d.from, d.to), (0, 1));
    }

    fn sched(
        cron: &str,
        desired: Option<u32>,
        min: Option<u32>,
        max: Option<u32>,
    ) -> ScheduleConfig {
        ScheduleConfig {
            cron: cron.to_string(),
            desired,
            min,
            max,
        }
    }

    #[test]
    fn schedule_fires_once_at_its_time() {
        let t0 = Instant::now();
        let mut c = cfg(vec![]);
        c.schedules = vec![sched("30 0 8 * * *", Some(6), None, None)];
        // Created at 07:59:00.
        let mut s = Scaler::new(&c, t0);
        let g = flows(t0, t0, 2, 0.0);
        let ev = |s: &mut Scaler, secs: i64, ms: u64| {
            let w = monday_8(secs) + Duration::from_millis(ms);
            let now = t0 + Duration::from_secs((secs + 60) as u64) + Duration::from_millis(ms);
            s.evaluate(&c, &g, 2, now, w)
        };
        assert_eq!(ev(&mut s, 10, 0), None);
        assert_eq!(ev(&mut s, 29, 500), None);
        // The tick misses 08:00:30 exactly: fires at 08:00:31.2.
        let d = ev(&mut s, 31, 200).expect("fires");
        assert_eq!((d.from, d.to, d.kind), (2, 6, DecisionKind::Schedule));
        assert_eq!(d.reason, "schedule \"30 0 8 * * *\" fired");
        assert!(d.metrics.is_empty());
        // Not twice.
        assert_eq!(ev(&mut s, 32, 0), None);
        assert_eq!(ev(&mut s, 45, 0), None);
        s.set_desired(2, t0).unwrap();
        assert_eq!(ev(&mut s, 3600, 0), None);
        // The next day, on the exact second, once.
        let d = ev(&mut s, 86_400 + 30, 0).expect("next day");
        assert_eq!(d.to, 6);
        assert_eq!(ev(&mut s, 86_400 + 30, 400), None);
        assert_eq!(ev(&mut s, 86_400 + 31, 0), None);
    }

    #[test]
    fn schedule_does_not_fire_for_past_occurrences_at_startup() {
        let t0 = Instant::now();
        let mut c = cfg(vec![]);
        c.schedules = vec![sched("30 0 8 * * *", Some(6), None, None)];
        let g = flows(t0, t0, 2, 0.0);
        // Created at 08:00:40, first evaluated at 08:00:41: 08:00:30 was before it existed.
        let mut s = Scaler::new(&c, t0);
        assert_eq!(s.evaluate(&c, &g, 2, t0 + S, monday_8(41)), None);
        assert_eq!(s.evaluate(&c, &g, 2, t0 + 2 * S, monday_8(42)), None);
        // Created at 08:00:20, first evaluated at 08:00:35: it fires.
        let mut s = Scaler::new(&c, t0);
        let d = s.evaluate(&c, &g, 2, t0 + 15 * S, monday_8(35)).unwrap();
        assert_eq!(d.to, 6);
        // Clock stepped back: does not fire again for the same occurrence.
        assert_eq!(s.evaluate(&c, &g, 2, t0 + 16 * S, monday_8(20)), None);
        assert_eq!(s.evaluate(&c, &g, 2, t0 + 17 * S, monday_8(31)), None);
        assert_eq!(s.evaluate(&c, &g, 2, t0 + 18 * S, monday_8(36)), None);
    }

    #[test]
    fn schedule_five_fields_weekdays() {
        let t0 = Instant::now();
        let mut c = cfg(vec![]);
        c.schedules = vec![sched("0 8 * * MON-FRI", Some(6), None, None)];
        let g = flows(t0, t0, 2, 0.0);
        let mut s = Scaler::new(&c, t0);
        assert_eq!(s.evaluate(&c, &g, 2, t0, monday_8(-1)), None);
        let d = s.evaluate(&c, &g, 2, t0 + 2 * S, monday_8(1)).unwrap();
        assert_eq!(d.reason, "schedule \"0 8 * * MON-FRI\" fired");
        // Friday 08:00 fires (once, for all the weekdays since Monday), Saturday does not.
        let fri = 4 * 86_400;
        assert!(s
            .evaluate(&c, &g, 2, t0 + 3 * S, monday_8(fri + 1))
            .is_some());
        let sat = 5 * 86_400;
        assert_eq!(s.evaluate(&c, &g, 2, t0 + 4 * S, monday_8(sat - 1)), None);
        assert_eq!(s.evaluate(&c, &g, 2, t0 + 5 * S, monday_8(sat + 1)), None);
        assert_eq!(
            s.evaluate(&c, &g, 2, t0 + 6 * S, monday_8(sat + 86_400 + 1)),
            None
        );
        // Next Monday does.
        let mon = 7 * 86_400;
        assert!(s
            .evaluate(&c, &g, 2, t0 + 7 * S, monday_8(mon + 1))
            .is_some());
    }

    #[test]
    fn schedule_sets_min_max_desired() {
        let t0 = Instant::now();
        let mut c = cfg(vec![]);
        c.schedules = vec![
            sched("0 0 8 * * *", Some(6), Some(4), Some(12)),
            sched("0 0 20 * * *", None, None, Some(3)),
            sched("0 0 22 * * *", None, Some(5), None),
        ];
        let g = flows(t0, t0, 2, 0.0);
        let mut s = Scaler::new(&c, t0);
        assert_eq!(s.evaluate(&c, &g, 2, t0, monday_8(-10)), None);
        let d = s.evaluate(&c, &g, 2, t0 + S, monday_8(0)).unwrap();
        assert_eq!((d.from, d.to), (2, 6));
        assert_eq!((s.min(), s.max()), (4, 12));
        assert_eq!(d.reason, "schedule \"0 0 8 * * *\" fired (min 4, max 12)");
        // Max 3 below min 4 and desired 6: min follows down, desired clamped.
        let d = s
            .evaluate(&c, &g, 2, t0 + 2 * S, monday_8(12 * 3600))
            .unwrap();
        assert_eq!((d.from, d.to), (6, 3));
        assert_eq!((s.min(), s.max()), (3, 3));
        // Min 5 above max 3: max follows up, desired raised.
        let d = s
            .evaluate(&c, &g, 2, t0 + 3 * S, monday_8(14 * 3600))
            .unwrap();
        assert_eq!((d.from, d.to), (3, 5));
        assert_eq!((s.min(), s.max()), (5, 5));
        assert_eq!(d.reason, "schedule \"0 0 22 * * *\" fired (min 5)");
        // Policies and manual now live within the new bounds.
        assert!(s.set_desired(6, t0).is_err());
        // The cooldown started by the schedule (scale-out at t0+3s).
        assert_eq!(s.desired(), 5);
    }

    #[test]
    fn schedules_firing_together_make_one_decision() {
        let t0 = Instant::now();
        let mut c = cfg(vec![]);
        c.schedules = vec![
            sched("0 0 8 * * *", Some(6), None, None),
            sched("0 8 * * *", None, None, Some(5)),
        ];
        let g = flows(t0, t0, 2, 0.0);
        let mut s = Scaler::new(&c, t0);
        s.evaluate(&c, &g, 2, t0, monday_8(-1));
        let d = s.evaluate(&c, &g, 2, t0 + S, monday_8(1)).unwrap();
        assert_eq!((d.from, d.to), (2, 5));
        assert_eq!(
            d.reason,
            "schedule \"0 0 8 * * *\" fired; schedule \"0 8 * * *\" fired (max 5)"
        );
    }

    #[test]
    fn invalid_cron_is_ignored() {
        assert!(parse_cron("0 8 * * MON-FRI").is_ok());
        assert!(parse_cron("30 0 8 * * *").is_ok());
        assert!(parse_cron("0 0 8 * * * 2030").is_err());
        assert!(parse_cron("not cron").is_err());
        let t0 = Instant::now();
        let mut c = cfg(vec![]);
        c.schedules = vec![sched("61 * * * *", Some(6), None, None)];
        let mut s = Scaler::new(&c, t0);
        let g = flows(t0, t0, 2, 0.0);
        assert_eq!(s.evaluate(&c, &g, 2, t0, monday_8(0)), None);
        assert_eq!(s.evaluate(&c, &g, 2, t0 + S, monday_8(86_400)), None);
    }

    #[test]
    fn manual_set_desired_within_bounds() {
        let t0 = Instant::now();
        let c = cfg(vec![]);
        let mut s = Scaler::new(&c, t0);
        let d = s.set_desired(7, t0).unwrap();
        assert_eq!((d.from, d.to, d.kind), (2, 7, DecisionKind::Manual));
        assert_eq!(d.reason, "manual: desired set to 7");
        assert_eq!(s.desired(), 7);
        assert_eq!(s.set_desired(1, t0).unwrap().to, 1);
        assert_eq!(s.set_desired(10, t0).unwrap().to, 10);
        let e = s.set_desired(11, t0).unwrap_err();
        assert!(e.contains("min 1") && e.contains("max 10"), "{e}");
        let e = s.set_desired(0, t0).unwrap_err();
        assert!(e.contains("min 1") && e.contains("max 10"), "{e}");
        assert_eq!(s.desired(), 10);
    }

    #[test]
    fn reconfigure_keeps_what_did_not_change() {
        let t0 = Instant::now();
        let c = cfg(vec![step_cpu(Some((0.7, 300, 1)), None)]);
        let mut s = Scaler::new(&c, t0);
        s.set_desired(5, t0).unwrap();
        let base = t0 + 600 * S;
        assert_eq!(s.evaluate(&c, &cpu(t0, base, 5, 0.9), 5, base, w0()), None);
        // Reload: max lowered to 8, a policy added, desired unchanged in the file.
        let mut c2 = c.clone();
        c2.max = 8;
        c2.policies.push(tt(100.0));
        s.reconfigure(&c2, base + S);
        assert_eq!((s.desired(), s.min(), s.max()), (5, 1, 8));
        // The step's hold timer survived: fires at base + 300.
        let t = base + 300 * S;
        let d = s.evaluate(&c2, &cpu(t0, t, 5, 0.9), 5, t, w0()).unwrap();
        assert_eq!((d.from, d.to), (5, 6));
        // Desired changed in the file: taken, clamped.
        let mut c3 = c2.clone();
        c3.desired = 9;
        s.reconfigure(&c3, t);
        assert_eq!(s.desired(), 8);
        // Max lowered below desired: clamped.
        let mut c4 = c3.clone();
        c4.max = 4;
        s.reconfigure(&c4, t);
        assert_eq!((s.desired(), s.max()), (4, 4));
        // Min raised above the current max: max follows.
        let mut c5 = c4.clone();
        c5.min = 6;
        s.reconfigure(&c5, t);
        assert_eq!((s.desired(), s.min(), s.max()), (6, 6, 6));
    }

    #[test]
    fn reconfigure_keeps_schedule_bounds_and_clock() {
        let t0 = Instant::now();
        let mut c = cfg(vec![]);
        c.schedules = vec![sched("0 8 * * *", Some(6), Some(4), Some(12))];
        let g = flows(t0, t0, 2, 0.0);
        let mut s = Scaler::new(&c, t0);
        s.evaluate(&c, &g, 2, t0, monday_8(-1));
        assert!(s.evaluate(&c, &g, 2, t0 + S, monday_8(1)).is_some());
        // Unrelated reload: the schedule's bounds stay, and it does not fire again.
        let mut c2 = c.clone();
        c2.cooldown = 10 * S;
        s.reconfigure(&c2, t0 + 2 * S);
        assert_eq!((s.desired(), s.min(), s.max()), (6, 4, 12));
        assert_eq!(s.evaluate(&c2, &g, 2, t0 + 3 * S, monday_8(2)), None);
    }
}
