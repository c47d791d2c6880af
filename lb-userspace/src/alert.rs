//! Alerts: `[[alert]]` rules (see [`crate::config::AlertConfig`]) are a filter over what the
//! owner loop already knows (backend states, scaling groups, drop counters, the event log)
//! and a sender of what passes it to a command or a webhook.
//!
//! The owner loop calls [`Alerter::evaluate`] once a second with a [`Snapshot`]; it answers
//! the notifications to send, which [`send`] runs on tasks of their own (with the rule's
//! timeout), so a slow or failing command never holds up the loop: a failure is logged.
//!
//! Per rule and subject (a backend, a group, a service) a condition is *firing* or not.
//! Becoming firing sends `firing`, ending sends `resolved`; a firing notification is sent at
//! most once per `repeat_interval` (a condition still firing then is sent again), and a
//! condition that comes back within the interval after being resolved is not sent again
//! until the interval is over (nor is its resolution): a flapping backend makes at most two
//! notifications per interval. `hook_failed` has no resolution: each failure is one
//! notification, at most one per group and interval.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::{io::AsyncWriteExt, sync::Semaphore};
use tracing::{info, warn};

use crate::{
    config::{AlertConfig, AlertSink, AlertWhen},
    model::{BackendState, Event},
    state::State,
};

/// Notifications being sent at once, at most; more are dropped (and logged).
const MAX_IN_FLIGHT: usize = 16;

/// One backend as alerts see it.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendSnap {
    pub group: String,
    pub backend: String,
    pub state: BackendState,
    pub reason: String,
}

/// One target group as alerts see it.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupSnap {
    pub name: String,
    /// It has backends in service and none of them may take new flows by its health.
    pub all_unhealthy: bool,
    /// Scaling: (desired, max) when desired is at max.
    pub at_max: Option<(u32, u32)>,
}

/// What the owner loop knows now, for [`Alerter::evaluate`].
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub backends: Vec<BackendSnap>,
    pub groups: Vec<GroupSnap>,
    /// Service name → its target group.
    pub services: BTreeMap<String, String>,
    /// Dropped packets so far: the global counter (None) and each service's.
    pub drops: Vec<(Option<String>, u64)>,
    /// Events pushed since the last snapshot, oldest first.
    pub new_events: Vec<Event>,
}

impl Snapshot {
    /// From the owner's state; `drops` and `new_events` as the daemon reads them.
    pub fn of(state: &State, drops: Vec<(Option<String>, u64)>, new_events: Vec<Event>) -> Self {
        let mut s = Snapshot {
            drops,
            new_events,
            ..Default::default()
        };
        for (name, g) in &state.groups {
            for m in &g.members {
                s.backends.push(BackendSnap {
                    group: name.clone(),
                    backend: m.display(),
                    state: m.state(),
                    reason: m.reason(),
                });
            }
            let live: Vec<_> = g.members.iter().filter(|m| m.drain.is_none()).collect();
            let all_unhealthy = !live.is_empty()
                && live
                    .iter()
                    .all(|m| m.health.state() == BackendState::Unhealthy || m.ejection.is_some());
            let at_max = g.scaling.as_ref().and_then(|gs| {
                let (d, max) = (gs.scaler.desired(), gs.scaler.max());
                (d >= max).then_some((d, max))
            });
            s.groups.push(GroupSnap {
                name: name.clone(),
                all_unhealthy,
                at_max,
            });
        }
        for svc in &state.config.services {
            s.services
                .insert(svc.name.clone(), svc.target_group.clone());
        }
        s
    }
}

/// What is sent: as JSON on the command's stdin or in the webhook's body.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AlertEvent {
    /// The rule's name.
    pub name: String,
    pub when: String,
    /// `firing` or `resolved`.
    pub state: String,
    pub group: String,
    pub backend: String,
    pub service: String,
    pub message: String,
    /// Seconds since the Unix epoch.
    pub time: f64,
    /// The measured value (drops per second), when there is one.
    pub value: Option<f64>,
}

/// A notification to send, and how.
#[derive(Clone, Debug, PartialEq)]
pub struct Notification {
    pub sink: AlertSink,
    pub timeout: Duration,
    pub event: AlertEvent,
}

/// A condition that holds now, for one rule.
struct Hit {
    subject: String,
    group: String,
    backend: String,
    service: String,
    message: String,
    value: Option<f64>,
}

/// Where one rule and subject stand.
#[derive(Debug, Default)]
struct Track {
    /// The condition holds (after its `for`).
    firing: bool,
    /// When a firing notification was last sent.
    last_sent: Option<Instant>,
    /// The current firing was notified (so its resolution is).
    notified: bool,
    /// The last hit's fields, for the resolution.
    last: Option<(String, String, String, String)>,
}

/// The alert rules and where each stands.
#[derive(Default)]
pub struct Alerter {
    rules: Vec<AlertConfig>,
    tracks: HashMap<(String, String), Track>,
    /// Since when a condition with a `for` has held, per (rule, subject).
    pending: HashMap<(String, String), Instant>,
    /// The last drop counter readings (None: global).
    drops: HashMap<Option<String>, (u64, Instant)>,
    /// The last reload was rejected, with this message.
    reload_failed: Option<String>,
}

fn epoch_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl Alerter {
    pub fn new(rules: &[AlertConfig]) -> Self {
        let mut a = Self::default();
        a.set_rules(rules);
        a
    }

    /// Take the rules of a (re)loaded config: rules kept as they were keep where they stand.
    pub fn set_rules(&mut self, rules: &[AlertConfig]) {
        if self.rules == rules {
            return;
        }
        let keep: HashSet<&str> = rules
            .iter()
            .filter(|r| self.rules.contains(r))
            .map(|r| r.name.as_str())
            .collect();
        self.tracks
            .retain(|(rule, _), _| keep.contains(rule.as_str()));
        self.pending
            .retain(|(rule, _), _| keep.contains(rule.as_str()));
        self.rules = rules.to_vec();
    }

    /// The notifications due now.
    pub fn evaluate(&mut self, now: Instant, snap: &Snapshot) -> Vec<Notification> {
        // Facts from the new events.
        let mut hook_failures: Vec<&Event> = Vec::new();
        for e in &snap.new_events {
            match e.kind.as_str() {
                "hook_failed" => hook_failures.push(e),
                "rejected" if e.message.contains("reload rejected") => {
                    self.reload_failed = Some(e.message.clone())
                }
                "change" if e.message.contains("config reloaded") => self.reload_failed = None,
                _ => {}
            }
        }
        // Drop rates since the last reading.
        let mut drop_rates: HashMap<Option<String>, f64> = HashMap::new();
        for (svc, n) in &snap.drops {
            if let Some((prev, at)) = self.drops.get(svc) {
                let dt = now.saturating_duration_since(*at).as_secs_f64();
                if dt > 0.0 {
                    drop_rates.insert(svc.clone(), n.saturating_sub(*prev) as f64 / dt);
                }
            }
            self.drops.insert(svc.clone(), (*n, now));
        }

        let mut out = Vec::new();
        for rule in self.rules.clone() {
            let group_ok = |g: &str| -> bool {
                match (&rule.group, &rule.service) {
                    (Some(want), _) => want == g,
                    (None, Some(svc)) => snap.services.get(svc).is_some_and(|tg| tg == g),
                    (None, None) => true,
                }
            };
            if rule.when == AlertWhen::HookFailed {
                for e in hook_failures.iter().filter(|e| group_ok(&e.group)) {
                    let t = self
                        .tracks
                        .entry((rule.name.clone(), e.group.clone()))
                        .or_default();
                    if t.last_sent
                        .is_some_and(|s| now.saturating_duration_since(s) < rule.repeat_interval)
                    {
                        info!(alert = %rule.name, group = %e.group, "alert held back (repeat_interval)");
                        continue;
                    }
                    t.last_sent = Some(now);
                    out.push(notification(
                        &rule,
                        "firing",
                        &e.group,
                        "",
                        "",
                        format!("{}: {}", e.group, e.message),
                        None,
                    ));
                }
                continue;
            }
            let mut hits: Vec<Hit> = Vec::new();
            match rule.when {
                AlertWhen::BackendUnhealthy => {
                    for b in snap.backends.iter().filter(|b| group_ok(&b.group)) {
                        if b.state == BackendState::Unhealthy {
                            hits.push(Hit {
                                subject: format!("{}/{}", b.group, b.backend),
                                group: b.group.clone(),
                                backend: b.backend.clone(),
                                service: String::new(),
                                message: format!(
                                    "backend {} of {} is unhealthy: {}",
                                    b.backend, b.group, b.reason
                                ),
                                value: None,
                            });
                        }
                    }
                }
                AlertWhen::AllUnhealthy | AlertWhen::GroupAtMax => {
                    for g in snap.groups.iter().filter(|g| group_ok(&g.name)) {
                        let message = match (rule.when, g.at_max) {
                            (AlertWhen::AllUnhealthy, _) if g.all_unhealthy => format!(
                                "no backend of {} is healthy (it drops new flows or fails open)",
                                g.name
                            ),
                            (AlertWhen::GroupAtMax, Some((d, max))) => format!(
                                "{} is at its max capacity (desired {d}, max {max})",
                                g.name
                            ),
                            _ => continue,
                        };
                        hits.push(Hit {
                            subject: g.name.clone(),
                            group: g.name.clone(),
                            backend: String::new(),
                            service: String::new(),
                            message,
                            value: None,
                        });
                    }
                }
                AlertWhen::DropRateAbove => {
                    let key = rule.service.clone();
                    let limit = rule.rate.unwrap_or(0.0);
                    if let Some(&r) = drop_rates.get(&key).filter(|&&r| r > limit) {
                        let what = key
                            .as_ref()
                            .map_or("xlb".to_string(), |s| format!("service {s}"));
                        hits.push(Hit {
                            subject: key.clone().unwrap_or_default(),
                            group: String::new(),
                            backend: String::new(),
                            service: key.clone().unwrap_or_default(),
                            message: format!("{what} drops {r:.1} packets/s (more than {limit})"),
                            value: Some(r),
                        });
                    }
                }
                AlertWhen::ReloadFailed => {
                    if let Some(m) = &self.reload_failed {
                        hits.push(Hit {
                            subject: String::new(),
                            group: String::new(),
                            backend: String::new(),
                            service: String::new(),
                            message: m.clone(),
                            value: None,
                        });
                    }
                }
                AlertWhen::HookFailed => {}
            }
            // `for`: only conditions that have held that long.
            let held: Vec<Hit> = if rule.for_.is_zero() {
                hits
            } else {
                let seen: HashSet<String> = hits.iter().map(|h| h.subject.clone()).collect();
                self.pending
                    .retain(|(r, s), _| *r != rule.name || seen.contains(s));
                hits.into_iter()
                    .filter(|h| {
                        let since = *self
                            .pending
                            .entry((rule.name.clone(), h.subject.clone()))
                            .or_insert(now);
                        now.saturating_duration_since(since) >= rule.for_
                    })
                    .collect()
            };
            let on: HashSet<String> = held.iter().map(|h| h.subject.clone()).collect();
            for h in held {
                let t = self
                    .tracks
                    .entry((rule.name.clone(), h.subject.clone()))
                    .or_default();
                t.last = Some((
                    h.group.clone(),
                    h.backend.clone(),
                    h.service.clone(),
                    h.message.clone(),
                ));
                let due = t
                    .last_sent
                    .is_none_or(|s| now.saturating_duration_since(s) >= rule.repeat_interval);
                let starting = !t.firing;
                t.firing = true;
                if due {
                    t.last_sent = Some(now);
                    t.notified = true;
                    out.push(notification(
                        &rule, "firing", &h.group, &h.backend, &h.service, h.message, h.value,
                    ));
                } else if starting {
                    t.notified = false;
                    info!(alert = %rule.name, subject = %h.subject, "alert held back (repeat_interval)");
                }
            }
            // Resolutions.
            for ((r, subject), t) in self.tracks.iter_mut() {
                if *r != rule.name || !t.firing || on.contains(subject) {
                    continue;
                }
                t.firing = false;
                if !std::mem::take(&mut t.notified) {
                    continue;
                }
                let (group, backend, service, was) = t.last.clone().unwrap_or_default();
                let message = match rule.when {
                    AlertWhen::BackendUnhealthy => {
                        match snap
                            .backends
                            .iter()
                            .find(|b| b.group == group && b.backend == backend)
                        {
                            Some(b) => format!(
                                "backend {backend} of {group} is {} again: {}",
                                b.state, b.reason
                            ),
                            None => format!("backend {backend} of {group} is gone"),
                        }
                    }
                    AlertWhen::AllUnhealthy => format!("{group} has a healthy backend again"),
                    AlertWhen::GroupAtMax => format!("{group} is below its max capacity again"),
                    AlertWhen::DropRateAbove => format!(
                        "drops are at most {} packets/s again (was: {was})",
                        rule.rate.unwrap_or(0.0)
                    ),
                    AlertWhen::ReloadFailed => {
                        format!("a reload was accepted (the last rejected one: {was})")
                    }
                    AlertWhen::HookFailed => was,
                };
                out.push(notification(
                    &rule, "resolved", &group, &backend, &service, message, None,
                ));
            }
            // Tracks of subjects that are gone and quiet are forgotten once their interval is
            // over (a removed backend's).
            self.tracks.retain(|(r, _), t| {
                *r != rule.name
                    || t.firing
                    || t.last_sent
                        .is_some_and(|s| now.saturating_duration_since(s) < rule.repeat_interval)
            });
        }
        out
    }
}

fn notification(
    rule: &AlertConfig,
    state: &str,
    group: &str,
    backend: &str,
    service: &str,
    message: String,
    value: Option<f64>,
) -> Notification {
    Notification {
        sink: rule.sink.clone(),
        timeout: rule.timeout,
        event: AlertEvent {
            name: rule.name.clone(),
            when: rule.when.as_str().to_string(),
            state: state.to_string(),
            group: group.to_string(),
            backend: backend.to_string(),
            service: service.to_string(),
            message,
            time: epoch_secs(),
            value,
        },
    }
}

/// Alert rules added, removed or changed between two configs, for `xlb diff`.
pub fn diff_rules(before: &[AlertConfig], after: &[AlertConfig]) -> Vec<String> {
    let mut out = Vec::new();
    for a in after {
        match before.iter().find(|b| b.name == a.name) {
            None => out.push(format!("alert {} added", a.name)),
            Some(b) if b != a => out.push(format!("alert {} changed", a.name)),
            _ => {}
        }
    }
    for b in before {
        if !after.iter().any(|a| a.name == b.name) {
            out.push(format!("alert {} removed", b.name));
        }
    }
    out
}

/// Sends notifications on tasks of their own, at most [`MAX_IN_FLIGHT`] at once.
#[derive(Clone)]
pub struct Sender {
    slots: Arc<Semaphore>,
}

impl Default for Sender {
    fn default() -> Self {
        Self {
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }
}

impl Sender {
    /// Start sending `n`; never waits.
    pub fn send(&self, n: Notification) {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            warn!(alert = %n.event.name, "{MAX_IN_FLIGHT} alerts are being sent already: this one is dropped");
            return;
        };
        tokio::spawn(async move {
            let _permit = permit;
            let name = n.event.name.clone();
            info!(alert = %name, state = %n.event.state, "{}", n.event.message);
            let r = tokio::time::timeout(n.timeout, deliver(&n)).await;
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(alert = %name, error = %e, "sending an alert failed"),
                Err(_) => warn!(
                    alert = %name,
                    "sending an alert failed: still running after {}",
                    humantime::format_duration(n.timeout)
                ),
            }
        });
    }
}

/// Run the command or POST to the webhook.
pub async fn deliver(n: &Notification) -> Result<(), String> {
    let body = serde_json::to_vec(&n.event).map_err(|e| e.to_string())?;
    match &n.sink {
        AlertSink::Command(cmd) => {
            let e = &n.event;
            let mut child = tokio::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(cmd)
                .env("XLB_ALERT_NAME", &e.name)
                .env("XLB_ALERT_WHEN", &e.when)
                .env("XLB_ALERT_STATE", &e.state)
                .env("XLB_ALERT_GROUP", &e.group)
                .env("XLB_ALERT_BACKEND", &e.backend)
                .env("XLB_ALERT_SERVICE", &e.service)
                .env("XLB_ALERT_MESSAGE", &e.message)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("starting `{cmd}`: {e}"))?;
            if let Some(mut stdin) = child.stdin.take() {
                // A command that does not read its input is not an error.
                let _ = stdin.write_all(&body).await;
                let _ = stdin.write_all(b"\n").await;
            }
            let out = child
                .wait_with_output()
                .await
                .map_err(|e| format!("waiting for `{cmd}`: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                let err = String::from_utf8_lossy(&out.stderr);
                Err(format!(
                    "`{cmd}` failed ({}): {}",
                    out.status,
                    err.trim().chars().take(500).collect::<String>()
                ))
            }
        }
        AlertSink::Webhook(url) => post_json(url, body).await,
    }
}

/// `POST url` with a JSON body over plain HTTP/1.1; a 2xx answer is success.
async fn post_json(url: &str, body: Vec<u8>) -> Result<(), String> {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let host = uri.host().ok_or_else(|| format!("{url}: no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let authority = uri.authority().map_or(host.to_string(), |a| a.to_string());
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connecting to {url}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let req = hyper::Request::builder()
        .method(hyper::Method::POST)
        .uri(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("xlb/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|e| format!("{url}: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    conn.abort();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("{url} answered HTTP {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, when: AlertWhen) -> AlertConfig {
        AlertConfig {
            name: name.into(),
            when,
            group: None,
            service: None,
            for_: Duration::ZERO,
            rate: None,
            sink: AlertSink::Command("true".into()),
            repeat_interval: Duration::from_secs(3600),
            timeout: Duration::from_secs(5),
        }
    }

    fn backend(group: &str, addr: &str, state: BackendState) -> BackendSnap {
        BackendSnap {
            group: group.into(),
            backend: addr.into(),
            state,
            reason: "connect refused".into(),
        }
    }

    fn snap(backends: Vec<BackendSnap>) -> Snapshot {
        Snapshot {
            backends,
            ..Default::default()
        }
    }

    fn states(ns: &[Notification]) -> Vec<(String, String)> {
        ns.iter()
            .map(|n| (n.event.state.clone(), n.event.backend.clone()))
            .collect()
    }

    use BackendState::{Healthy, Unhealthy};

    #[test]
    fn backend_unhealthy_fires_once_and_resolves_once() {
        let mut a = Alerter::new(&[rule("down", AlertWhen::BackendUnhealthy)]);
        let t0 = Instant::now();
        let s = |st| {
            snap(vec![
                backend("web", "198.18.2.11", Healthy),
                backend("web", "198.18.2.12", st),
            ])
        };
        assert!(a.evaluate(t0, &s(Healthy)).is_empty());
        let n = a.evaluate(t0 + Duration::from_secs(1), &s(Unhealthy));
        assert_eq!(states(&n), [("firing".into(), "198.18.2.12".into())]);
        assert_eq!(n[0].event.group, "web");
        assert!(
            n[0].event.message.contains("connect refused"),
            "{:?}",
            n[0].event
        );
        // Still down: nothing more within the repeat interval.
        for i in 2..60 {
            assert!(a
                .evaluate(t0 + Duration::from_secs(i), &s(Unhealthy))
                .is_empty());
        }
        let n = a.evaluate(t0 + Duration::from_secs(61), &s(Healthy));
        assert_eq!(states(&n), [("resolved".into(), "198.18.2.12".into())]);
        assert!(
            n[0].event.message.contains("healthy again"),
            "{:?}",
            n[0].event
        );
        assert!(a
            .evaluate(t0 + Duration::from_secs(62), &s(Healthy))
            .is_empty());
    }

    #[test]
    fn a_flapping_backend_is_held_back_until_the_repeat_interval() {
        let mut r = rule("down", AlertWhen::BackendUnhealthy);
        r.repeat_interval = Duration::from_secs(100);
        let mut a = Alerter::new(&[r]);
        let t0 = Instant::now();
        let s = |st| snap(vec![backend("web", "b1", st)]);
        let at = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(a.evaluate(at(0), &s(Unhealthy)).len(), 1); // firing
        assert_eq!(a.evaluate(at(5), &s(Healthy)).len(), 1); // resolved
                                                             // Flaps within the interval: neither firing nor resolution.
        for i in 0..8 {
            let st = if i % 2 == 0 { Unhealthy } else { Healthy };
            assert!(a.evaluate(at(10 + i * 5), &s(st)).is_empty(), "flap {i}");
        }
        // Down again and still down when the interval is over: sent then.
        assert!(a.evaluate(at(90), &s(Unhealthy)).is_empty());
        let n = a.evaluate(at(100), &s(Unhealthy));
        assert_eq!(states(&n), [("firing".into(), "b1".into())]);
        // Still firing another interval later: sent again (a reminder).
        assert!(a.evaluate(at(150), &s(Unhealthy)).is_empty());
        assert_eq!(a.evaluate(at(200), &s(Unhealthy)).len(), 1);
        assert_eq!(states(&a.evaluate(at(201), &s(Healthy)))[0].0, "resolved");
    }

    #[test]
    fn filters_by_group_and_service() {
        let mut r = rule("web-down", AlertWhen::BackendUnhealthy);
        r.group = Some("web".into());
        let mut by_service = rule("dns-down", AlertWhen::BackendUnhealthy);
        by_service.service = Some("dns".into());
        let mut a = Alerter::new(&[r, by_service]);
        let mut s = snap(vec![
            backend("web", "b1", Unhealthy),
            backend("dns-servers", "b2", Unhealthy),
            backend("other", "b3", Unhealthy),
        ]);
        s.services.insert("dns".into(), "dns-servers".into());
        let n = a.evaluate(Instant::now(), &s);
        let got: Vec<(String, String)> = n
            .iter()
            .map(|n| (n.event.name.clone(), n.event.backend.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("web-down".to_string(), "b1".to_string()),
                ("dns-down".to_string(), "b2".to_string())
            ]
        );
    }

    #[test]
    fn group_at_max_waits_for_its_duration() {
        let mut r = rule("max", AlertWhen::GroupAtMax);
        r.for_ = Duration::from_secs(30);
        let mut a = Alerter::new(&[r]);
        let t0 = Instant::now();
        let g = |at_max: bool| Snapshot {
            groups: vec![GroupSnap {
                name: "web".into(),
                all_unhealthy: false,
                at_max: at_max.then_some((10, 10)),
            }],
            ..Default::default()
        };
        assert!(a.evaluate(t0, &g(true)).is_empty());
        assert!(a
            .evaluate(t0 + Duration::from_secs(20), &g(true))
            .is_empty());
        // It left max before 30 s: the clock starts again.
        assert!(a
            .evaluate(t0 + Duration::from_secs(25), &g(false))
            .is_empty());
        assert!(a
            .evaluate(t0 + Duration::from_secs(26), &g(true))
            .is_empty());
        assert!(a
            .evaluate(t0 + Duration::from_secs(50), &g(true))
            .is_empty());
        let n = a.evaluate(t0 + Duration::from_secs(56), &g(true));
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].event.state, "firing");
        assert!(n[0].event.message.contains("max 10"), "{:?}", n[0].event);
        let n = a.evaluate(t0 + Duration::from_secs(57), &g(false));
        assert_eq!(n[0].event.state, "resolved");
    }

    #[test]
    fn drop_rate_above_measures_between_snapshots() {
        let mut r = rule("drops", AlertWhen::DropRateAbove);
        r.rate = Some(100.0);
        r.service = Some("web".into());
        let mut a = Alerter::new(&[r]);
        let t0 = Instant::now();
        let s = |n| Snapshot {
            drops: vec![(None, 1_000_000), (Some("web".into()), n)],
            ..Default::default()
        };
        assert!(a.evaluate(t0, &s(0)).is_empty(), "no rate from one reading");
        assert!(a.evaluate(t0 + Duration::from_secs(1), &s(50)).is_empty());
        let n = a.evaluate(t0 + Duration::from_secs(2), &s(300));
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].event.value, Some(250.0));
        assert_eq!(n[0].event.service, "web");
        let n = a.evaluate(t0 + Duration::from_secs(3), &s(310));
        assert_eq!(n[0].event.state, "resolved");
    }

    fn event(kind: &str, group: &str, message: &str) -> Event {
        Event {
            time: 0.0,
            group: group.into(),
            kind: kind.into(),
            message: message.into(),
            metrics: Default::default(),
        }
    }

    #[test]
    fn hook_failures_and_reloads_come_from_the_events() {
        let mut a = Alerter::new(&[
            rule("hooks", AlertWhen::HookFailed),
            rule("reload", AlertWhen::ReloadFailed),
        ]);
        let t0 = Instant::now();
        let ev = |events| Snapshot {
            new_events: events,
            ..Default::default()
        };
        let n = a.evaluate(
            t0,
            &ev(vec![
                event("hook_failed", "web", "scale-out hook failed: exit 1"),
                event(
                    "rejected",
                    "",
                    "SIGHUP: reload rejected, the running config stays in force: x.toml:3:1: bad",
                ),
            ]),
        );
        let got: Vec<(&str, &str)> = n
            .iter()
            .map(|n| (n.event.name.as_str(), n.event.state.as_str()))
            .collect();
        assert_eq!(got, [("hooks", "firing"), ("reload", "firing")]);
        // The next failure of the same group within the interval is held back; the reload
        // stays firing without a repeat.
        let n = a.evaluate(
            t0 + Duration::from_secs(1),
            &ev(vec![event("hook_failed", "web", "again")]),
        );
        assert!(n.is_empty(), "{n:?}");
        let n = a.evaluate(
            t0 + Duration::from_secs(2),
            &ev(vec![event(
                "change",
                "",
                "API: config reloaded: nothing changed",
            )]),
        );
        assert_eq!(n.len(), 1);
        assert_eq!(
            (n[0].event.name.as_str(), n[0].event.state.as_str()),
            ("reload", "resolved")
        );
    }

    #[test]
    fn all_unhealthy_and_rules_kept_across_reloads() {
        let r = rule("none", AlertWhen::AllUnhealthy);
        let mut a = Alerter::new(std::slice::from_ref(&r));
        let g = |bad| Snapshot {
            groups: vec![GroupSnap {
                name: "web".into(),
                all_unhealthy: bad,
                at_max: None,
            }],
            ..Default::default()
        };
        let t0 = Instant::now();
        assert_eq!(a.evaluate(t0, &g(true)).len(), 1);
        // The same rule again (a reload that kept it): still firing, nothing new.
        a.set_rules(std::slice::from_ref(&r));
        assert!(a.evaluate(t0 + Duration::from_secs(1), &g(true)).is_empty());
        // A changed rule starts afresh.
        let mut r2 = r.clone();
        r2.repeat_interval = Duration::from_secs(60);
        a.set_rules(&[r2]);
        assert_eq!(a.evaluate(t0 + Duration::from_secs(2), &g(true)).len(), 1);
    }

    #[tokio::test]
    async fn a_command_gets_the_event_on_stdin_and_in_its_environment() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let mut r = rule("down", AlertWhen::BackendUnhealthy);
        r.sink = AlertSink::Command(format!(
            "cat > {o}; echo \"$XLB_ALERT_NAME $XLB_ALERT_STATE $XLB_ALERT_GROUP $XLB_ALERT_BACKEND\" >> {o}",
            o = out.display()
        ));
        let mut a = Alerter::new(&[r]);
        let n = a.evaluate(Instant::now(), &snap(vec![backend("web", "b1", Unhealthy)]));
        deliver(&n[0]).await.unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        let mut lines = text.lines();
        let json: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(json["state"], "firing");
        assert_eq!(json["when"], "backend_unhealthy");
        assert_eq!(lines.next(), Some("down firing web b1"));

        // A failing command is an error (logged by the sender), not a panic.
        let mut bad = n[0].clone();
        bad.sink = AlertSink::Command("echo oops >&2; exit 3".into());
        let e = deliver(&bad).await.unwrap_err();
        assert!(e.contains("oops"), "{e}");
    }

    #[tokio::test]
    async fn a_webhook_gets_the_event_posted() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = s.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf);
                if let Some(i) = text.find("\r\n\r\n") {
                    if text[i + 4..].contains('}') {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            s.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8_lossy(&buf).into_owned()
        });
        let mut r = rule("down", AlertWhen::BackendUnhealthy);
        r.sink = AlertSink::Webhook(format!("http://127.0.0.1:{port}/hook?x=1"));
        let mut a = Alerter::new(&[r]);
        let n = a.evaluate(Instant::now(), &snap(vec![backend("web", "b1", Unhealthy)]));
        deliver(&n[0]).await.unwrap();
        let req = server.await.unwrap();
        assert!(req.starts_with("POST /hook?x=1 HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("\"backend\":\"b1\""), "{req}");

        // Nothing listening: an error.
        let mut gone = n[0].clone();
        gone.sink = AlertSink::Webhook(format!("http://127.0.0.1:{port}/"));
        assert!(deliver(&gone).await.is_err());
    }
}
