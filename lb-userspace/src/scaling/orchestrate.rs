//! Scaling orchestration: a target group's scaling state ([`GroupScaling`]: the policy
//! engine, the hooks in flight and their backoff) and the rounds that bring each scaling group
//! towards its `desired` capacity: launch what is missing, replace backends that never became
//! or stopped being healthy, drain the excess, run the scale-in hook for drained backends and
//! the metric hook; then what the hooks' results change. These are `impl State` blocks: they
//! change the one owner's state, and the daemon starts the [`HookJob`]s they return.
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::{Duration, Instant},
};

use super::{Backoff, Decision, Scaler};
use crate::{
    model::{BackendSource, BackendState},
    state::{fmt_addr_port, parse_backend_ref, Drain, State},
};

/// A target group's auto scaling: the policy engine and the hooks in flight.
#[derive(Debug, Clone)]
pub struct GroupScaling {
    pub scaler: Scaler,
    /// Backends the running scale-out hook was asked for.
    pub launching: u32,
    /// When the running scale-out hook started (wall clock: it is saved in the state file).
    pub launch_started: Option<std::time::SystemTime>,
    /// A scale-out hook was running when the previous xlb stopped: its `launching` count
    /// stands until then (the hook's timeout plus the grace period from its start), so a
    /// restart does not launch the same backends twice.
    pub resumed_launch_until: Option<Instant>,
    /// A hook of this group is running (one at a time per group).
    pub hook_running: bool,
    pub backoff: Backoff,
    /// After a failed hook: not before this.
    pub retry_at: Option<Instant>,
    pub last_error: Option<String>,
    pub last_decision: Option<String>,
    /// Drained backends waiting for the scale-in hook: (`ADDR:PORT`, reason).
    pub to_terminate: VecDeque<(String, String)>,
    /// When metric_command runs next.
    pub next_metrics_at: Instant,
    /// Every metric's value at the last round (for status).
    pub metrics: BTreeMap<String, f64>,
}

impl GroupScaling {
    pub(crate) fn new(cfg: &crate::config::ScalingConfig, now: Instant) -> Self {
        GroupScaling {
            scaler: Scaler::new(cfg, now),
            launching: 0,
            launch_started: None,
            resumed_launch_until: None,
            hook_running: false,
            backoff: Backoff::new(),
            retry_at: None,
            last_error: None,
            last_decision: None,
            to_terminate: VecDeque::new(),
            next_metrics_at: now,
            metrics: BTreeMap::new(),
        }
    }

    /// What the hook is doing, for status.
    pub fn hook_state(&self, now: Instant) -> String {
        if self.resumed_launch_until.is_some_and(|t| t > now) {
            return format!(
                "awaiting {} backends of a scale-out hook that ran before a restart",
                self.launching
            );
        }
        if self.hook_running {
            if self.launching > 0 {
                return format!("launching {}", self.launching);
            }
            return "running a hook".into();
        }
        match (&self.retry_at, &self.last_error) {
            (Some(at), Some(e)) if *at > now => format!(
                "retrying in {}s after: {e}",
                at.saturating_duration_since(now).as_secs() + 1
            ),
            _ => "idle".into(),
        }
    }

    /// A hook succeeded: the next failure starts the backoff again.
    fn hook_succeeded(&mut self) {
        self.hook_running = false;
        self.backoff.reset();
        self.retry_at = None;
        self.last_error = None;
    }

    /// A hook failed: no hook of this group before the backoff delay, which is returned.
    fn hook_failed(&mut self, now: Instant, error: &str) -> Duration {
        self.hook_running = false;
        let delay = self.backoff.next_delay();
        self.retry_at = Some(now + delay);
        self.last_error = Some(error.to_string());
        delay
    }

    fn may_run_hook(&self, now: Instant) -> bool {
        !self.hook_running && self.retry_at.is_none_or(|t| t <= now)
    }
}

/// A hook the daemon should start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookJob {
    Launch {
        group: String,
        command: String,
        count: u32,
        reason: String,
        timeout: Duration,
    },
    Terminate {
        group: String,
        command: String,
        backend: String,
        reason: String,
        timeout: Duration,
    },
    Metrics {
        group: String,
        command: String,
        backends: Vec<String>,
        timeout: Duration,
    },
}

impl State {
    /// One scaling round for every scaling group: evaluate policies and schedules with the
    /// measurements given (per member uid: new flows/s, packets/s, bytes/s), then bring the
    /// group towards `desired`: launch what is missing, replace backends that never became or
    /// stopped being healthy past the grace period, drain the excess. Returns the hooks to
    /// start and whether backends changed (the data path needs an update).
    pub fn scaling_round(
        &mut self,
        now: Instant,
        wall: std::time::SystemTime,
        rates: &HashMap<u64, (f64, f64, f64)>,
        rates_fresh: bool,
    ) -> (Vec<HookJob>, bool) {
        let mut jobs = Vec::new();
        let mut changed = false;
        let mut events: Vec<(String, String, String, BTreeMap<String, f64>)> = Vec::new();
        for (name, g) in self.groups.iter_mut() {
            let (Some(gs), Some(cfg)) = (g.scaling.as_mut(), g.cfg.scaling.as_ref()) else {
                continue;
            };
            let checked = g.cfg.health_check.is_some();
            if gs.resumed_launch_until.is_some_and(|t| now >= t) {
                gs.resumed_launch_until = None;
                gs.launching = 0;
                gs.launch_started = None;
                events.push((
                    name.clone(),
                    "hook_failed".into(),
                    "the scale-out hook that was running when xlb stopped never reported its \
                     backends (timeout and grace period are over): launching again if needed"
                        .into(),
                    BTreeMap::new(),
                ));
            }
            // Measurements.
            let backends = g
                .members
                .iter()
                .filter(|m| m.drain.is_none())
                .map(|m| {
                    let (nf, pk, by) = rates.get(&m.uid).copied().unwrap_or_default();
                    let reported = m.metrics.clone();
                    super::BackendSample {
                        uid: m.uid,
                        in_service_since: m.in_service_since,
                        healthy: m.health.state() == BackendState::Healthy,
                        new_flows_per_s: nf,
                        packets_per_s: pk,
                        bytes_per_s: by,
                        active_flows: m.active_flows as f64,
                        reported,
                    }
                })
                .collect();
            let sample = super::GroupSample {
                at: now,
                backends,
                rates_fresh,
            };
            let capacity = g.members.iter().filter(|m| m.drain.is_none()).count() as u32;
            let mut reported: Vec<String> = sample
                .backends
                .iter()
                .flat_map(|b| b.reported.keys().cloned())
                .collect();
            reported.sort();
            reported.dedup();
            gs.metrics = crate::config::Metric::BUILT_IN
                .iter()
                .filter(|m| !matches!(m, crate::config::Metric::BackendCpu))
                .cloned()
                .chain(reported.into_iter().map(|k| {
                    if k == "cpu" {
                        crate::config::Metric::BackendCpu
                    } else {
                        crate::config::Metric::Custom(k)
                    }
                }))
                .filter_map(|m| {
                    super::metric_value(&m, &sample, cfg, now).map(|v| (m.name().to_string(), v))
                })
                .collect();
            if let Some(d) = gs.scaler.evaluate(cfg, &sample, capacity, now, wall) {
                events.push(decision_event(name, &d));
                gs.last_decision = Some(d.reason.clone());
            }
            let desired = gs.scaler.desired();

            // Replace backends a scale-out launched that are unhealthy past the grace period.
            let grace = cfg.grace_period;
            for m in g.members.iter_mut() {
                let overdue = m.source == BackendSource::Scaling
                    && m.drain.is_none()
                    && checked
                    && m.health.state() != BackendState::Healthy
                    && now.saturating_duration_since(
                        m.launched_at
                            .unwrap_or(m.health.since())
                            .max(m.health.since()),
                    ) >= grace;
                if overdue {
                    let reason = format!(
                        "replace: {} not healthy {}s after launch ({})",
                        m.display(),
                        grace.as_secs(),
                        m.health.reason()
                    );
                    m.drain = Some(Drain {
                        started: now,
                        deadline: now,
                        reason: reason.clone(),
                    });
                    m.terminate_after_drain = true;
                    events.push((name.clone(), "replace".into(), reason, BTreeMap::new()));
                    changed = true;
                }
            }

            // Serving: not draining, and not known to be down (healthy, not checked yet, or
            // launched and still within its grace period).
            let serving = g
                .members
                .iter()
                .filter(|m| m.drain.is_none())
                .filter(|m| match m.health.state() {
                    // Configured, added and launched backends alike get the grace period
                    // from when they joined (a configured backend whose server is still
                    // starting is not missing).
                    BackendState::Unhealthy => {
                        now.saturating_duration_since(m.launched_at.unwrap_or(m.added_at)) < grace
                    }
                    _ => true,
                })
                .count() as u32;
            let live = g.members.iter().filter(|m| m.drain.is_none()).count() as u32;

            if serving + gs.launching < desired {
                if let Some(command) = cfg.scale_out_command.clone() {
                    if gs.may_run_hook(now) {
                        let count = desired - serving - gs.launching;
                        let reason = gs
                            .last_decision
                            .clone()
                            .unwrap_or_else(|| format!("desired {desired}, {serving} serving"));
                        gs.hook_running = true;
                        gs.launching = count;
                        gs.launch_started = Some(wall);
                        jobs.push(HookJob::Launch {
                            group: name.clone(),
                            command,
                            count,
                            reason,
                            timeout: cfg.hook_timeout,
                        });
                    }
                }
            } else if live > desired && gs.launching == 0 {
                // Scale in: the unhealthy first, then those with the fewest open flows;
                // launched backends before listed ones.
                let excess = (live - desired) as usize;
                let mut order: Vec<usize> = (0..g.members.len())
                    .filter(|&i| g.members[i].drain.is_none())
                    .collect();
                order.sort_by_key(|&i| {
                    let m = &g.members[i];
                    (
                        m.health.state() == BackendState::Healthy,
                        m.source != BackendSource::Scaling,
                        m.active_flows,
                        std::cmp::Reverse(m.uid),
                    )
                });
                for &i in order.iter().take(excess) {
                    let delay = g.cfg.deregistration_delay;
                    let m = &mut g.members[i];
                    let reason = format!("scale in to {desired}");
                    m.drain = Some(Drain {
                        started: now,
                        deadline: now + delay,
                        reason: reason.clone(),
                    });
                    m.terminate_after_drain = true;
                    events.push((
                        name.clone(),
                        "draining".into(),
                        format!(
                            "{} draining ({reason}; {} open flows)",
                            m.display(),
                            m.active_flows
                        ),
                        BTreeMap::new(),
                    ));
                    changed = true;
                }
            }

            // Scale-in hooks for drained backends, one at a time.
            if !gs.hook_running && gs.may_run_hook(now) {
                if let Some((backend, reason)) = gs.to_terminate.front().cloned() {
                    match cfg.scale_in_command.clone() {
                        Some(command) => {
                            gs.hook_running = true;
                            jobs.push(HookJob::Terminate {
                                group: name.clone(),
                                command,
                                backend,
                                reason,
                                timeout: cfg.hook_timeout,
                            });
                        }
                        None => {
                            gs.to_terminate.pop_front();
                        }
                    }
                }
            }

            // Backend-reported metrics from metric_command.
            if let Some(command) = cfg.metric_command.clone() {
                if now >= gs.next_metrics_at {
                    gs.next_metrics_at = now + cfg.metric_interval;
                    let port = g.cfg.port;
                    jobs.push(HookJob::Metrics {
                        group: name.clone(),
                        command,
                        backends: g
                            .members
                            .iter()
                            .map(|m| fmt_addr_port(m.addr, m.port.or(port).unwrap_or(0)))
                            .collect(),
                        timeout: cfg.hook_timeout,
                    });
                }
            }
        }
        for (g, k, m, metrics) in events {
            self.push_event(&g, k.as_str(), m, metrics);
        }
        (jobs, changed)
    }

    /// A scale-out hook finished: the backends it printed join the group (they receive
    /// traffic once healthy); a failure is retried with backoff.
    pub fn launch_done(&mut self, group: &str, result: Result<super::HookOutput, String>) -> bool {
        let now = Instant::now();
        let Some(g) = self.groups.get_mut(group) else {
            return false;
        };
        let Some(gs) = g.scaling.as_mut() else {
            return false;
        };
        let asked = std::mem::take(&mut gs.launching);
        gs.launch_started = None;
        let failure = match result {
            Err(e) => Some(e),
            Ok(out) => {
                let (addrs, invalid) = super::parse_backends(&out.lines);
                let mut added = Vec::new();
                let mut problems: Vec<String> = invalid
                    .iter()
                    .map(|l| format!("invalid line {l:?}"))
                    .collect();
                for e in addrs.into_iter().take(asked.max(1) as usize) {
                    let text = e.to_string();
                    match self.add_backend(group, &text, None, BackendSource::Scaling) {
                        Ok(_) => added.push(text),
                        Err(e) => problems.push(e.to_string()),
                    }
                }
                if !problems.is_empty() {
                    let msg = format!("scale-out hook output: {}", problems.join("; "));
                    self.push_event(group, "hook_failed", msg, BTreeMap::new());
                }
                if added.is_empty() {
                    Some("the scale-out hook printed no usable backend".to_string())
                } else {
                    self.push_event(
                        group,
                        "launched",
                        format!("launched {}", added.join(", ")),
                        BTreeMap::new(),
                    );
                    None
                }
            }
        };
        let Some(gs) = self.groups.get_mut(group).and_then(|g| g.scaling.as_mut()) else {
            return false;
        };
        match failure {
            None => {
                gs.hook_succeeded();
                true
            }
            Some(e) => {
                let delay = gs.hook_failed(now, &e);
                let msg = format!(
                    "scale-out hook: {e}; retrying in {}",
                    humantime::format_duration(delay)
                );
                self.push_event(group, "hook_failed", msg, BTreeMap::new());
                false
            }
        }
    }

    /// A scale-in hook finished.
    pub fn terminate_done(&mut self, group: &str, backend: &str, result: Result<(), String>) {
        let now = Instant::now();
        let Some(gs) = self.groups.get_mut(group).and_then(|g| g.scaling.as_mut()) else {
            return;
        };
        match result {
            Ok(()) => {
                gs.to_terminate.retain(|(b, _)| b != backend);
                gs.hook_succeeded();
                let msg = format!("{backend} terminated");
                self.push_event(group, "terminated", msg, BTreeMap::new());
            }
            Err(e) => {
                let delay = gs.hook_failed(now, &e);
                let msg = format!(
                    "scale-in hook for {backend}: {e}; retrying in {}",
                    humantime::format_duration(delay)
                );
                self.push_event(group, "hook_failed", msg, BTreeMap::new());
            }
        }
    }

    /// metric_command printed `ADDR:PORT NAME=VALUE ...` lines.
    pub fn metrics_done(&mut self, group: &str, lines: &[String]) {
        let now = Instant::now();
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        let port = g.cfg.port;
        for line in lines {
            let mut parts = line.split_whitespace();
            let Some(who) = parts.next() else { continue };
            let Ok((addr, p)) = parse_backend_ref(who) else {
                continue;
            };
            let Some(m) = g
                .members
                .iter_mut()
                .find(|m| m.addr == addr && (p.is_none() || m.port.or(port) == p))
            else {
                continue;
            };
            m.report_metrics(
                parts.filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k, v.parse::<f64>().ok()?))
                }),
                now,
            );
        }
    }
}

fn decision_event(group: &str, d: &Decision) -> (String, String, String, BTreeMap<String, f64>) {
    use super::DecisionKind;
    let kind = match d.kind {
        DecisionKind::Policy if d.to > d.from => "scale_out",
        DecisionKind::Policy => "scale_in",
        DecisionKind::Schedule => "schedule",
        DecisionKind::Manual => "manual",
        DecisionKind::Replace => "replace",
    };
    (
        group.to_string(),
        kind.to_string(),
        format!("desired {} → {}: {}", d.from, d.to, d.reason),
        d.metrics.clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::CheckOutcome;
    use crate::state::tests::{outcome, state, token, SCALING};

    fn body(ok: bool, json: serde_json::Value) -> CheckOutcome {
        let mut o = outcome(ok);
        o.metrics = json.as_object().cloned();
        o
    }

    fn launches(jobs: &[HookJob]) -> Vec<u32> {
        jobs.iter()
            .filter_map(|j| match j {
                HookJob::Launch { count, .. } => Some(*count),
                _ => None,
            })
            .collect()
    }

    fn round(s: &mut State, at: Instant) -> Vec<HookJob> {
        s.scaling_round(at, std::time::SystemTime::now(), &HashMap::new(), true)
            .0
    }

    #[test]
    fn health_body_metrics_drive_scaling() {
        let mut s = state(SCALING);
        let t = token(&s, "198.18.2.11");
        s.observe(&t, &body(true, serde_json::json!({"cpu": 0.9})));
        assert_eq!(s.groups["g"].members[0].state(), BackendState::Healthy);
        let now = Instant::now();
        let jobs = round(&mut s, now);
        assert_eq!(
            s.groups["g"]
                .scaling
                .as_ref()
                .unwrap()
                .metrics
                .get("backend_cpu"),
            Some(&0.9),
            "the health body's cpu is the group's backend_cpu"
        );
        assert_eq!(s.groups["g"].scaling.as_ref().unwrap().scaler.desired(), 2);
        assert_eq!(launches(&jobs), [1], "{jobs:?}");
    }

    #[test]
    fn health_body_and_metric_command_merge() {
        let mut s = state(SCALING);
        let t = token(&s, "198.18.2.11");
        s.observe(&t, &body(true, serde_json::json!({"ok": true})));
        s.metrics_done("g", &["198.18.2.11:8080 cpu=0.95 queue=3".to_string()]);
        // A later health body without cpu keeps metric_command's cpu; one with queue
        // replaces the older queue.
        s.observe(&t, &body(true, serde_json::json!({"ok": true, "queue": 7})));
        let m = &s.groups["g"].members[0].metrics;
        assert_eq!(m.get("cpu").map(|v| v.0), Some(0.95));
        assert_eq!(
            m.get("queue").map(|v| v.0),
            Some(7.0),
            "the fresher value wins"
        );
        let jobs = round(&mut s, Instant::now());
        assert_eq!(
            launches(&jobs),
            [1],
            "metric_command's cpu scales: {jobs:?}"
        );
        // And metric_command's newer value replaces the body's.
        s.metrics_done("g", &["198.18.2.11 queue=1".to_string()]);
        assert_eq!(s.groups["g"].members[0].metrics["queue"].0, 1.0);
    }

    #[test]
    fn configured_backend_failing_its_first_check_is_not_replaced_within_grace() {
        let mut s = state(&SCALING.replace("metric = \"backend_cpu\"", "metric = \"queue\""));
        let t = token(&s, "198.18.2.11");
        let tr = s.observe(&t, &outcome(false)).expect("initial → unhealthy");
        assert_eq!(tr.to, BackendState::Unhealthy);
        let now = Instant::now();
        for i in 0..3 {
            let jobs = round(&mut s, now + Duration::from_secs(i));
            assert!(
                launches(&jobs).is_empty(),
                "no launch within grace: {jobs:?}"
            );
        }
        // Past the grace period it counts as missing.
        let jobs = round(&mut s, now + Duration::from_secs(121));
        assert_eq!(launches(&jobs), [1], "{jobs:?}");
    }

    #[test]
    fn a_restart_during_a_launch_does_not_launch_again() {
        let cfg = SCALING.replace(
            "min = 1\nmax = 3\ndesired = 1",
            "min = 2\nmax = 3\ndesired = 2",
        );
        let mut s = state(&cfg);
        let now = Instant::now();
        let jobs = round(&mut s, now);
        assert_eq!(launches(&jobs), [1], "one missing: {jobs:?}");
        // xlb stops while the hook runs; the state file is written.
        let saved = serde_json::to_string(&s.snapshot()).unwrap();

        let mut r = state(&cfg);
        let notes = r.restore(serde_json::from_str(&saved).unwrap());
        assert!(
            notes.iter().any(|n| n.contains("scale-out hook")),
            "{notes:?}"
        );
        let now = Instant::now();
        for i in [0, 1, 60, 179] {
            let jobs = round(&mut r, now + Duration::from_secs(i));
            assert!(
                launches(&jobs).is_empty(),
                "no second launch {i}s after the restart: {jobs:?}"
            );
        }
        // Once the hook's timeout (60s) and the grace period (120s) are over, it launches.
        let jobs = round(&mut r, now + Duration::from_secs(181));
        assert_eq!(launches(&jobs), [1], "{jobs:?}");
    }
}
