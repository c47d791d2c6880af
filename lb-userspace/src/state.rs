//! The one owner of desired state: the config, the backends each target group has now (from
//! the config, the API, and scaling), their health and drains. [`State::desired`] turns it
//! into what the data path should hold, in domain terms (no map types); the reconciler
//! encodes and writes that ([`crate::reconcile::encode`]).
//!
//! This file holds the domain model, the capacities, health (active and passive), flows and
//! drains, and events; the rest of `State` lives beside it:
//! - [`changes`]: changes asked through the API, the CLI or a hook (add, remove, drain,
//!   weight, scale, reload), refused with a [`ChangeError`];
//! - [`persist`]: the state file, [`State::snapshot`] and [`State::restore`];
//! - [`crate::scaling::orchestrate`]: scaling rounds and what the hooks' results change.
//!
//! Ids of services and backends are stable across reloads and restarts (they are saved in the
//! state file), so connection-tracking entries keep pointing at the right backend.
use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    net::IpAddr,
    time::{Duration, Instant},
};

use lb_common::MAX_BACKENDS;
use serde::{Deserialize, Serialize};

use crate::{
    config::{AllUnhealthy, Config, Protocol, TargetGroupConfig},
    endpoint::Endpoint,
    health::{CheckKind, CheckOutcome, CheckSpec, HealthTracker},
    model::{BackendSource, BackendState, Event},
    scaling::GroupScaling,
};

pub mod changes;
pub mod persist;

pub use changes::{parse_backend_ref, ChangeError};

/// Events kept for `xlb events`.
pub const MAX_EVENTS: usize = 1000;

/// A backend as the data path knows it: one (target group, address, port).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BackendKey {
    pub group: String,
    pub addr: IpAddr,
    pub port: u16,
}

impl BackendKey {
    /// Stable identity bytes for Maglev's permutation.
    pub fn maglev_key(&self) -> String {
        fmt_addr_port(self.addr, self.port)
    }
}

pub fn fmt_addr_port(addr: IpAddr, port: u16) -> String {
    Endpoint::new(addr, Some(port)).to_string()
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DesiredBackend {
    pub id: u32,
    pub key: BackendKey,
    pub weight: u32,
    /// May receive new flows (is in its services' Maglev tables).
    pub active: bool,
    /// Established flows may stay (healthy, initial, draining, or failing open).
    pub established_ok: bool,
    /// The group member this backend belongs to.
    pub member: u64,
    /// Its address, port and protocol also serve another service: its flows keep a reverse
    /// entry each for their replies.
    pub shared: bool,
    /// Passive health's `redispatch` (`BE_F_REDISPATCH`).
    pub redispatch: bool,
    /// Passive health's SYN answer timeout (`PASSIVE_CONF`); 0: no SYN sampling.
    pub syn_timeout_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DesiredService {
    pub id: u32,
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub target_group: String,
    /// Backend ids of every member of the group; the active ones form the Maglev table, in
    /// this order.
    pub backends: Vec<u32>,
    /// NAT or direct server return (`SVC_F_DSR` and its `DSR` entry).
    #[serde(skip_serializing_if = "crate::config::Forwarding::is_nat")]
    pub forwarding: crate::config::Forwarding,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Desired {
    pub services: Vec<DesiredService>,
    pub backends: BTreeMap<u32, DesiredBackend>,
}

/// Allocates small integer ids and remembers them by key.
#[derive(Debug, Clone)]
pub struct Ids<K> {
    by_key: HashMap<K, u32>,
    free: VecDeque<u32>,
    next: u32,
    limit: u32,
}

impl<K: std::hash::Hash + Eq + Clone> Ids<K> {
    pub fn new(limit: u32) -> Self {
        Self {
            by_key: HashMap::new(),
            free: VecDeque::new(),
            next: 0,
            limit,
        }
    }

    /// Rebuild from saved pairs (ids of a previous instance).
    pub fn restore(limit: u32, pairs: impl IntoIterator<Item = (K, u32)>) -> Self {
        let by_key: HashMap<K, u32> = pairs.into_iter().filter(|(_, id)| *id < limit).collect();
        let next = by_key.values().map(|id| id + 1).max().unwrap_or(0);
        let used: HashSet<u32> = by_key.values().copied().collect();
        let free = (0..next).filter(|id| !used.contains(id)).collect();
        Self {
            by_key,
            free,
            next,
            limit,
        }
    }

    pub fn pairs(&self) -> impl Iterator<Item = (&K, u32)> {
        self.by_key.iter().map(|(k, v)| (k, *v))
    }

    pub fn get(&mut self, key: &K) -> Option<u32> {
        if let Some(id) = self.by_key.get(key) {
            return Some(*id);
        }
        // Fresh ids first, then the id freed longest ago: a re-used id must not inherit
        // connection-tracking entries of the backend that had it.
        let id = if self.next < self.limit {
            self.next += 1;
            self.next - 1
        } else {
            self.free.pop_front()?
        };
        self.by_key.insert(key.clone(), id);
        Some(id)
    }

    /// Forget every key not in `keep`, freeing their ids.
    pub fn retain(&mut self, keep: impl Fn(&K) -> bool) {
        let mut freed: Vec<u32> = Vec::new();
        self.by_key.retain(|k, id| {
            let k_ok = keep(k);
            if !k_ok {
                freed.push(*id);
            }
            k_ok
        });
        freed.sort_unstable();
        self.free.extend(freed);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("too many services (the maps hold {0})")]
    TooManyServices(u32),
    #[error(
        "too many backends (the maps hold {MAX_BACKENDS} backend ids: one per member and port)"
    )]
    TooManyBackends,
    #[error(
        "too many backend addresses with port and protocol ({0}; BACKEND_ADDRS holds {MAX_BACKENDS})"
    )]
    TooManyBackendAddrs(usize),
    #[error("too many VIPs and backend addresses ({0}; ADDRS holds {max})", max = lb_common::MAX_ADDRS)]
    TooManyAddrs(usize),
}

/// A backend leaving its group.
#[derive(Clone, Debug)]
pub struct Drain {
    pub started: Instant,
    pub deadline: Instant,
    pub reason: String,
}

/// One backend of a target group.
#[derive(Debug, Clone)]
pub struct Member {
    /// Unique for the life of the daemon; the health checker's token.
    pub uid: u64,
    pub addr: IpAddr,
    /// The port given with the address, if any.
    pub port: Option<u16>,
    pub weight: u32,
    pub source: BackendSource,
    pub health: HealthTracker,
    pub drain: Option<Drain>,
    /// Open flows pinned to it, from the last conntrack sweep.
    pub active_flows: u64,
    /// The numbers the backend reported (health check JSON body, metric_command), each with
    /// when it arrived: the two sources merge, the fresher value of a metric wins.
    pub metrics: BTreeMap<String, (f64, Instant)>,
    /// When it joined the group (configured, added or launched): it has the scaling grace
    /// period from here before it counts as missing while unhealthy.
    pub added_at: Instant,
    /// When it entered service (its first healthy check, or when added if unchecked): its
    /// load counts in the group's averages once the scaling warmup has passed.
    pub in_service_since: Instant,
    /// Set for backends a scale-out hook launched: the grace period runs from here.
    pub launched_at: Option<Instant>,
    /// Run the scale-in hook for it once its drain is over.
    pub terminate_after_drain: bool,
    /// Passive health ejected it (UDP outlier): no new flows until then.
    pub ejection: Option<Ejection>,
    /// Consecutive ejections so far (the next one lasts one more `base_ejection`).
    pub ejections: u32,
    /// When its last ejection ended: a backend not ejected again for `max_ejection` after
    /// that starts over from the first ejection.
    pub ejection_ended: Option<Instant>,
}

/// A passive-health ejection.
#[derive(Clone, Debug)]
pub struct Ejection {
    pub until: Instant,
    pub reason: String,
}

impl Member {
    fn new(
        uid: u64,
        addr: IpAddr,
        port: Option<u16>,
        weight: u32,
        source: BackendSource,
        health: HealthTracker,
        now: Instant,
    ) -> Member {
        Member {
            uid,
            addr,
            port,
            weight,
            source,
            health,
            drain: None,
            active_flows: 0,
            metrics: BTreeMap::new(),
            added_at: now,
            in_service_since: now,
            launched_at: None,
            terminate_after_drain: false,
            ejection: None,
            ejections: 0,
            ejection_ended: None,
        }
    }
}

impl Member {
    /// Take reported numbers (finite ones) that arrived at `at`; metrics not named keep their
    /// last value and time.
    pub(crate) fn report_metrics<'a>(
        &mut self,
        values: impl Iterator<Item = (&'a str, f64)>,
        at: Instant,
    ) {
        for (k, x) in values {
            if !x.is_finite() {
                continue;
            }
            match self.metrics.get_mut(k) {
                Some(e) if e.1 > at => {}
                Some(e) => *e = (x, at),
                None => {
                    self.metrics.insert(k.to_string(), (x, at));
                }
            }
        }
    }

    pub fn state(&self) -> BackendState {
        if self.drain.is_some() {
            BackendState::Draining
        } else {
            self.health.state()
        }
    }

    /// The reason shown beside the state.
    pub fn reason(&self) -> String {
        match (&self.drain, &self.ejection) {
            (Some(d), _) => format!("{} (health: {})", d.reason, self.health.reason()),
            (None, Some(e)) => format!("{} (health: {})", e.reason, self.health.reason()),
            (None, None) => self.health.reason().to_string(),
        }
    }

    /// `ADDR` or `ADDR:PORT` as the user gave it.
    pub fn display(&self) -> String {
        self.endpoint().to_string()
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new(self.addr, self.port)
    }

    fn matches(&self, addr: IpAddr, port: Option<u16>, group_port: Option<u16>) -> bool {
        if self.addr != addr {
            return false;
        }
        match port {
            None => true,
            Some(p) => {
                self.port.or(group_port) == Some(p) || self.port.is_none() && group_port.is_none()
            }
        }
    }
}

/// A target group's current backends.
#[derive(Debug, Clone)]
pub struct Group {
    /// The group as the config last set it.
    pub cfg: TargetGroupConfig,
    pub members: Vec<Member>,
    /// Backends were changed at runtime since the config last changed this group.
    pub runtime_changed: bool,
    /// Present when the group scales.
    pub scaling: Option<GroupScaling>,
}

/// Which members receive new flows, and whether that is by failing open.
pub struct Eligible {
    pub uids: HashSet<u64>,
    pub failing_open: bool,
}

impl Group {
    pub fn eligible(&self) -> Eligible {
        let live = || self.members.iter().filter(|m| m.drain.is_none());
        let pick = |s: BackendState| -> HashSet<u64> {
            live()
                .filter(|m| m.health.state() == s && m.ejection.is_none())
                .map(|m| m.uid)
                .collect()
        };
        let healthy = pick(BackendState::Healthy);
        if !healthy.is_empty() {
            return Eligible {
                uids: healthy,
                failing_open: false,
            };
        }
        // Nothing checked healthy yet (cold start, or a group whose backends are all new):
        // backends not yet checked are used rather than none.
        let initial = pick(BackendState::Initial);
        if !initial.is_empty() {
            return Eligible {
                uids: initial,
                failing_open: false,
            };
        }
        match self.cfg.all_unhealthy {
            AllUnhealthy::FailOpen => {
                let all: HashSet<u64> = live().map(|m| m.uid).collect();
                Eligible {
                    failing_open: !all.is_empty(),
                    uids: all,
                }
            }
            AllUnhealthy::Drop => Eligible {
                uids: HashSet::new(),
                failing_open: false,
            },
        }
    }
}

/// A health state change, for the log.
#[derive(Debug)]
pub struct Transition {
    pub group: String,
    pub backend: String,
    pub from: BackendState,
    pub to: BackendState,
    pub reason: String,
}

/// What a health check is for: (group, member uid).
pub type CheckToken = (String, u64);

/// The one owner of desired state.
#[derive(Clone)]
pub struct State {
    pub config: Config,
    pub groups: BTreeMap<String, Group>,
    service_ids: Ids<String>,
    backend_ids: Ids<BackendKey>,
    next_uid: u64,
    /// When the last conntrack sweep was taken.
    pub swept_at: Option<Instant>,
    /// Recent events, oldest first.
    pub events: VecDeque<Event>,
    /// Events pushed since the start (the alerts read the ones they have not seen).
    pub events_total: u64,
}

fn initial_health(cfg: &TargetGroupConfig, now: Instant) -> HealthTracker {
    if cfg.health_check.is_some() {
        HealthTracker::new(now)
    } else {
        HealthTracker::healthy(now, "no health check configured")
    }
}

impl State {
    pub fn new(config: Config) -> Self {
        let max_services = config.daemon.max_services;
        let now = Instant::now();
        let mut state = Self {
            groups: BTreeMap::new(),
            service_ids: Ids::new(max_services),
            backend_ids: Ids::new(MAX_BACKENDS),
            next_uid: 0,
            swept_at: None,
            events: VecDeque::new(),
            events_total: 0,
            config: config.clone(),
        };
        for tg in &config.target_groups {
            let g = state.group_from_config(tg, now);
            state.groups.insert(tg.name.clone(), g);
        }
        state
    }

    fn uid(&mut self) -> u64 {
        self.next_uid += 1;
        self.next_uid
    }

    fn group_from_config(&mut self, tg: &TargetGroupConfig, now: Instant) -> Group {
        let members = tg
            .backends
            .iter()
            .map(|b| {
                let uid = self.uid();
                Member::new(
                    uid,
                    b.address,
                    b.port,
                    b.weight,
                    BackendSource::Config,
                    initial_health(tg, now),
                    now,
                )
            })
            .collect();
        Group {
            cfg: tg.clone(),
            members,
            runtime_changed: false,
            scaling: tg.scaling.as_ref().map(|sc| GroupScaling::new(sc, now)),
        }
    }

    fn services_of<'a>(
        &'a self,
        group: &'a str,
    ) -> impl Iterator<Item = &'a crate::config::ServiceConfig> + 'a {
        self.config
            .services
            .iter()
            .filter(move |s| s.target_group == group)
    }

    /// The backend key of member `m` of `group` behind a service on `svc_port`: a member
    /// without a port, in a group without one, takes the port of each service (one backend
    /// id per port).
    fn backend_key(group: &Group, m: &Member, svc_port: u16) -> BackendKey {
        BackendKey {
            group: group.cfg.name.clone(),
            addr: m.addr,
            port: m.port.or(group.cfg.port).unwrap_or(svc_port),
        }
    }

    /// Whether what the state holds fits the maps: backend ids (one per member and port of
    /// the groups behind a service), `BACKEND_ADDRS` (one entry per backend address, port
    /// and protocol), `ADDRS` (every VIP and backend address). Returns the backend keys
    /// wanted. The one count of capacities: `desired`, `add_backend` and `xlb check` use it.
    pub fn check_capacity(&self) -> Result<HashSet<BackendKey>, StateError> {
        let mut keys: HashSet<BackendKey> = HashSet::new();
        let mut reply_keys: HashSet<(IpAddr, u16, u8)> = HashSet::new();
        let mut addrs: HashSet<IpAddr> = HashSet::new();
        for svc in &self.config.services {
            addrs.insert(svc.vip);
            if let Some(group) = self.groups.get(&svc.target_group) {
                for m in &group.members {
                    let k = Self::backend_key(group, m, svc.port);
                    reply_keys.insert((k.addr, k.port, svc.protocol.number()));
                    addrs.insert(k.addr);
                    keys.insert(k);
                }
            }
        }
        if keys.len() > MAX_BACKENDS as usize {
            return Err(StateError::TooManyBackends);
        }
        if reply_keys.len() > MAX_BACKENDS as usize {
            return Err(StateError::TooManyBackendAddrs(reply_keys.len()));
        }
        if addrs.len() > lb_common::MAX_ADDRS as usize {
            return Err(StateError::TooManyAddrs(addrs.len()));
        }
        Ok(keys)
    }

    /// Compute what the data path should hold now, checked against the maps' capacities
    /// (service ids, backend ids, `BACKEND_ADDRS`, `ADDRS`). Ids of services and backends no
    /// longer wanted are freed before new ones are taken, so a change that replaces backends
    /// fits as long as the result does.
    pub fn desired(&mut self) -> Result<Desired, StateError> {
        let keys = self.check_capacity()?;
        let mut out = Desired::default();
        let services = self.config.services.clone();
        let names: HashSet<&String> = services.iter().map(|s| &s.name).collect();
        self.service_ids.retain(|n| names.contains(n));
        self.backend_ids.retain(|k| keys.contains(k));
        for svc in &services {
            let id = self
                .service_ids
                .get(&svc.name)
                .ok_or(StateError::TooManyServices(self.config.daemon.max_services))?;
            let mut ids = Vec::new();
            if let Some(group) = self.groups.get(&svc.target_group) {
                let eligible = group.eligible();
                for m in &group.members {
                    let key = Self::backend_key(group, m, svc.port);
                    let bid = self
                        .backend_ids
                        .get(&key)
                        .ok_or(StateError::TooManyBackends)?;
                    let active = eligible.uids.contains(&m.uid);
                    let established_ok = m.health.state() != BackendState::Unhealthy
                        || (eligible.failing_open && m.drain.is_none());
                    let passive = group.cfg.passive_health.as_ref();
                    out.backends.entry(bid).or_insert(DesiredBackend {
                        id: bid,
                        key,
                        weight: m.weight,
                        active,
                        established_ok,
                        member: m.uid,
                        shared: false,
                        redispatch: passive.is_some_and(|p| p.redispatch),
                        syn_timeout_ns: passive.map_or(0, |p| {
                            u64::try_from(p.unanswered_timeout.as_nanos()).unwrap_or(u64::MAX)
                        }),
                    });
                    ids.push(bid);
                }
            }
            out.services.push(DesiredService {
                id,
                name: svc.name.clone(),
                vip: svc.vip,
                port: svc.port,
                protocol: svc.protocol,
                target_group: svc.target_group.clone(),
                backends: ids,
                forwarding: svc.forwarding,
            });
        }
        // Backend addresses (with port and protocol) that more than one service reaches
        // (services in NAT mode: DSR replies never pass through xlb).
        // (address, port, protocol): what a `BACKEND_ADDRS` entry is keyed by.
        let reply_key = |b: &DesiredBackend, p: Protocol| (b.key.addr, b.key.port, p.number());
        let mut users: HashMap<(IpAddr, u16, u8), HashSet<u32>> = HashMap::new();
        for svc in out.services.iter().filter(|s| s.forwarding.is_nat()) {
            for id in &svc.backends {
                if let Some(b) = out.backends.get(id) {
                    users
                        .entry(reply_key(b, svc.protocol))
                        .or_default()
                        .insert(svc.id);
                }
            }
        }
        for svc in out.services.iter().filter(|s| s.forwarding.is_nat()) {
            for id in &svc.backends {
                if let Some(b) = out.backends.get_mut(id) {
                    if users[&reply_key(b, svc.protocol)].len() > 1 {
                        b.shared = true;
                    }
                }
            }
        }
        Ok(out)
    }

    // ---- health ----

    /// The checks that should be running: one per member of every checked group.
    pub fn wanted_checks(&self) -> Vec<(CheckToken, CheckSpec, Duration)> {
        let mut out = Vec::new();
        for (name, g) in &self.groups {
            let Some(hc) = &g.cfg.health_check else {
                continue;
            };
            let service_port = self.services_of(name).map(|s| s.port).next();
            // `target = "vip"`: through the first DSR service using the group (config
            // checks refuse NAT ones); a group no service uses is checked at its addresses.
            let via = (hc.target == crate::config::HealthTarget::Vip)
                .then(|| {
                    self.services_of(name).find_map(|s| {
                        Some(crate::health::ViaVip {
                            vip: s.vip,
                            dsr: *s.forwarding.dsr()?,
                            mark: 0,
                        })
                    })
                })
                .flatten();
            for m in &g.members {
                let backend_port = m.port.or(g.cfg.port).or(service_port).unwrap_or(0);
                let port = hc.port_for(g.cfg.port, backend_port);
                if port == 0 {
                    continue;
                }
                let kind = match hc.protocol {
                    crate::config::HealthProtocol::Tcp => CheckKind::Tcp,
                    crate::config::HealthProtocol::Http => CheckKind::Http {
                        path: hc.path.clone(),
                        success: hc.success_codes.ranges(),
                    },
                };
                out.push((
                    (name.clone(), m.uid),
                    CheckSpec {
                        kind,
                        addr: std::net::SocketAddr::new(m.addr, port),
                        timeout: hc.timeout,
                        via: via.clone(),
                    },
                    hc.interval,
                ));
            }
        }
        out
    }

    /// Feed a check outcome. Returns the transition if the member's state changed.
    pub fn observe(&mut self, token: &CheckToken, outcome: &CheckOutcome) -> Option<Transition> {
        let now = Instant::now();
        let g = self.groups.get_mut(&token.0)?;
        let hc = g.cfg.health_check.clone()?;
        let m = g.members.iter_mut().find(|m| m.uid == token.1)?;
        if let Some(body) = &outcome.metrics {
            m.report_metrics(
                body.iter()
                    .filter_map(|(k, v)| Some((k.as_str(), v.as_f64()?))),
                now,
            );
        }
        let (from, to) =
            m.health
                .observe(outcome, hc.healthy_threshold, hc.unhealthy_threshold, now)?;
        Some(Transition {
            group: token.0.clone(),
            backend: m.display(),
            from,
            to,
            reason: m.health.reason().to_string(),
        })
    }

    // ---- passive health ----

    /// Act on a passive-health verdict about member `uid` of `group`: a TCP verdict marks it
    /// down (until the active checks bring it back), a UDP one ejects it for a time growing
    /// with each consecutive ejection, unless `max_ejection_percent` of the group already
    /// is. Returns the event message when something changed (the caller records it and
    /// applies the change).
    pub fn passive_verdict(
        &mut self,
        group: &str,
        uid: u64,
        verdict: &crate::passive::Verdict,
        now: Instant,
    ) -> Option<String> {
        let g = self.groups.get_mut(group)?;
        let ph = g.cfg.passive_health.clone()?;
        let reason = verdict.reason();
        if verdict.marks_down() {
            let m = g.members.iter_mut().find(|m| m.uid == uid)?;
            let (from, to) = m.health.mark_down(&reason, now)?;
            return Some(format!("{} {from} → {to} ({reason})", m.display()));
        }
        let members = g.members.iter().filter(|m| m.drain.is_none()).count();
        let ejected = g.members.iter().filter(|m| m.ejection.is_some()).count();
        let m = g.members.iter().find(|m| m.uid == uid)?;
        if m.ejection.is_some() || m.drain.is_some() {
            return None;
        }
        if !crate::passive::may_eject(members, ejected, ph.max_ejection_percent) {
            tracing::debug!(group, backend = %m.display(), "{reason}: not ejected (max_ejection_percent)");
            return None;
        }
        let m = g.members.iter_mut().find(|m| m.uid == uid)?;
        if m.ejection_ended
            .is_some_and(|t| now.saturating_duration_since(t) > ph.max_ejection)
        {
            m.ejections = 0;
        }
        m.ejections = m.ejections.saturating_add(1);
        let time = crate::passive::ejection_time(ph.base_ejection, ph.max_ejection, m.ejections);
        m.ejection = Some(Ejection {
            until: now + time,
            reason: format!(
                "{reason}: ejected for {} (ejection {})",
                humantime::format_duration(time),
                m.ejections
            ),
        });
        Some(format!(
            "{} ejected for {} ({reason}; ejection {})",
            m.display(),
            humantime::format_duration(time),
            m.ejections
        ))
    }

    /// End the ejections that are over: (group, event message) for each.
    pub fn end_ejections(&mut self, now: Instant) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (name, g) in &mut self.groups {
            for m in &mut g.members {
                if m.ejection.as_ref().is_some_and(|e| e.until <= now) {
                    m.ejection = None;
                    m.ejection_ended = Some(now);
                    out.push((
                        name.clone(),
                        format!("{} ejection over: back in the table", m.display()),
                    ));
                }
            }
        }
        out
    }

    /// Groups with passive health, and the members each has: (group, uid, judged). A member
    /// is judged while it may be marked down or ejected: not unhealthy, ejected or draining
    /// (the evidence gathered meanwhile, e.g. withheld refusals of a backend marked down, is
    /// dropped, so a backend the checks bring back starts afresh).
    pub fn passive_members(&self) -> Vec<(String, u64, bool)> {
        self.groups
            .iter()
            .filter(|(_, g)| g.cfg.passive_health.is_some())
            .flat_map(|(n, g)| {
                g.members.iter().map(move |m| {
                    let judged = m.health.state() != BackendState::Unhealthy
                        && m.ejection.is_none()
                        && m.drain.is_none();
                    (n.clone(), m.uid, judged)
                })
            })
            .collect()
    }

    // ---- flows and drains ----

    /// Take the per-backend open-flow counts of a conntrack sweep started at `at`.
    pub fn apply_sweep(&mut self, counts: &HashMap<u32, u64>, desired: &Desired, at: Instant) {
        let mut per_member: HashMap<u64, u64> = HashMap::new();
        for (id, n) in counts {
            if let Some(b) = desired.backends.get(id) {
                *per_member.entry(b.member).or_default() += n;
            }
        }
        for g in self.groups.values_mut() {
            for m in &mut g.members {
                m.active_flows = per_member.get(&m.uid).copied().unwrap_or(0);
            }
        }
        self.swept_at = Some(at);
    }

    /// Remove members whose drain is over: no open flow left (by a sweep taken after the drain
    /// began) or the deregistration delay ran out. Returns what left, for the log.
    pub fn finish_drains(&mut self, now: Instant) -> Vec<String> {
        let swept = self.swept_at;
        let mut left = Vec::new();
        for (name, g) in &mut self.groups {
            g.members.retain(|m| {
                let Some(d) = &m.drain else { return true };
                let empty = m.active_flows == 0 && swept.is_some_and(|t| t > d.started);
                let expired = now >= d.deadline;
                if empty || expired {
                    if m.terminate_after_drain {
                        if let Some(gs) = g.scaling.as_mut() {
                            let port = m.port.or(g.cfg.port).unwrap_or(0);
                            gs.to_terminate
                                .push_back((fmt_addr_port(m.addr, port), d.reason.clone()));
                        }
                    }
                    left.push(format!(
                        "{name}: {} left the group ({})",
                        m.display(),
                        if empty {
                            "no open flows".to_string()
                        } else {
                            format!(
                                "deregistration delay over, {} flows still open",
                                m.active_flows
                            )
                        }
                    ));
                    false
                } else {
                    true
                }
            });
        }
        left
    }

    pub fn draining(&self) -> bool {
        self.groups
            .values()
            .any(|g| g.members.iter().any(|m| m.drain.is_some()))
    }

    // ---- events ----

    pub fn push_event(
        &mut self,
        group: &str,
        kind: &str,
        message: String,
        metrics: BTreeMap<String, f64>,
    ) {
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        tracing::info!(group, kind, ?metrics, "{message}");
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events_total += 1;
        self.events.push_back(Event {
            time,
            group: group.to_string(),
            kind: kind.to_string(),
            message,
            metrics,
        });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::reconcile::encode::backend_info;

    #[test]
    fn ids_are_stable_and_reused_last() {
        let mut ids = Ids::new(3);
        assert_eq!(ids.get(&"a"), Some(0));
        assert_eq!(ids.get(&"b"), Some(1));
        assert_eq!(ids.get(&"a"), Some(0));
        ids.retain(|k| *k != "a");
        assert_eq!(
            ids.get(&"c"),
            Some(2),
            "a fresh id comes before a freed one"
        );
        assert_eq!(ids.get(&"d"), Some(0), "then the freed one");
        assert_eq!(ids.get(&"e"), None, "the limit holds");
    }

    #[test]
    fn ids_restore_keeps_pairs_and_gaps() {
        let mut ids = Ids::restore(10, [("a", 0), ("c", 2)]);
        assert_eq!(ids.get(&"a"), Some(0));
        assert_eq!(ids.get(&"c"), Some(2));
        assert_eq!(
            ids.get(&"d"),
            Some(3),
            "fresh ids continue after the highest"
        );
    }

    pub(crate) const CFG: &str = r#"
[daemon]
interfaces = ["eth0"]

[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
protocol = "tcp"
target_group = "g"

[[target_group]]
name = "g"
port = 8080
deregistration_delay = "10s"
backends = ["198.18.2.11", "198.18.2.12", "198.18.2.13"]

[target_group.health_check]
protocol = "tcp"
interval = "1s"
timeout = "500ms"
healthy_threshold = 2
unhealthy_threshold = 2
"#;

    pub(crate) fn state(text: &str) -> State {
        State::new(crate::config::parse(text, "t.toml").unwrap())
    }

    pub(crate) fn outcome(ok: bool) -> CheckOutcome {
        CheckOutcome {
            ok,
            reason: if ok { "connected" } else { "connect refused" }.into(),
            latency: Duration::ZERO,
            metrics: None,
        }
    }

    pub(crate) fn token(s: &State, addr: &str) -> CheckToken {
        let a: IpAddr = addr.parse().unwrap();
        let m = s.groups["g"].members.iter().find(|m| m.addr == a).unwrap();
        ("g".into(), m.uid)
    }

    pub(crate) fn active(d: &Desired) -> Vec<String> {
        d.backends
            .values()
            .filter(|b| b.active)
            .map(|b| b.key.addr.to_string())
            .collect()
    }

    #[test]
    fn initial_backends_serve_until_one_is_healthy() {
        let mut s = state(CFG);
        assert_eq!(
            active(&s.desired().unwrap()).len(),
            3,
            "cold start: all initial serve"
        );
        let t = token(&s, "198.18.2.11");
        assert!(s.observe(&t, &outcome(true)).is_none());
        let tr = s.observe(&t, &outcome(true)).expect("healthy after 2");
        assert_eq!(
            (tr.from, tr.to),
            (BackendState::Initial, BackendState::Healthy)
        );
        assert_eq!(
            active(&s.desired().unwrap()),
            ["198.18.2.11"],
            "healthy ones only"
        );
    }

    #[test]
    fn unhealthy_backends_lose_new_and_established_flows() {
        let mut s = state(CFG);
        for a in ["198.18.2.11", "198.18.2.12"] {
            let t = token(&s, a);
            s.observe(&t, &outcome(true));
            s.observe(&t, &outcome(true));
        }
        let t = token(&s, "198.18.2.12");
        s.observe(&t, &outcome(false));
        let tr = s.observe(&t, &outcome(false)).unwrap();
        assert_eq!(tr.to, BackendState::Unhealthy);
        assert_eq!(tr.reason, "connect refused");
        let d = s.desired().unwrap();
        assert_eq!(active(&d), ["198.18.2.11"]);
        let b2 = d
            .backends
            .values()
            .find(|b| b.key.addr.to_string() == "198.18.2.12")
            .unwrap();
        assert!(!b2.established_ok, "flows of a failed backend move");
        assert_eq!(backend_info(b2).flags, 0);
    }

    #[test]
    fn all_unhealthy_drop_or_fail_open() {
        for (mode, expect) in [("drop", 0), ("fail_open", 3)] {
            let mut s = state(&CFG.replace(
                "deregistration_delay",
                &format!("all_unhealthy = \"{mode}\"\nderegistration_delay"),
            ));
            for a in ["198.18.2.11", "198.18.2.12", "198.18.2.13"] {
                let t = token(&s, a);
                s.observe(&t, &outcome(false));
            }
            let d = s.desired().unwrap();
            assert_eq!(active(&d).len(), expect, "{mode}");
            assert_eq!(s.groups["g"].eligible().failing_open, expect > 0);
        }
    }

    #[test]
    fn drain_waits_for_flows_or_the_delay() {
        let mut s = state(CFG);
        let d = s.desired().unwrap();
        s.drain_backend("g", "198.18.2.12", "test").unwrap();
        assert_eq!(s.groups["g"].members[1].state(), BackendState::Draining);
        let d2 = s.desired().unwrap();
        assert_eq!(
            active(&d2).len(),
            2,
            "a draining backend takes no new flows"
        );
        let b2 = d2
            .backends
            .values()
            .find(|b| b.key.addr.to_string() == "198.18.2.12")
            .unwrap();
        assert!(b2.established_ok, "but keeps its established ones");
        // A sweep from before the drain began proves nothing.
        let id2 = b2.id;
        let now = Instant::now();
        assert!(s.finish_drains(now).is_empty());
        // One open flow: it stays.
        let at = Instant::now();
        s.apply_sweep(&HashMap::from([(id2, 1)]), &d, at);
        assert!(s.finish_drains(at).is_empty());
        // No open flow in a later sweep: it leaves.
        let at = Instant::now();
        s.apply_sweep(&HashMap::new(), &d, at);
        let left = s.finish_drains(at);
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(s.groups["g"].members.len(), 2);
        // The delay running out ends a drain with flows still open.
        s.drain_backend("g", "198.18.2.11", "test").unwrap();
        let later = Instant::now() + Duration::from_secs(11);
        assert_eq!(s.finish_drains(later).len(), 1);
    }

    /// One configured backend, HTTP checked, in a scaling group driven by a step policy on
    /// backend_cpu (no hold, no warmup).
    pub(crate) const SCALING: &str = r#"
[daemon]
interfaces = ["eth0"]

[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
protocol = "tcp"
target_group = "g"

[[target_group]]
name = "g"
port = 8080
backends = ["198.18.2.11"]

[target_group.health_check]
protocol = "http"
interval = "1s"
timeout = "500ms"
healthy_threshold = 1
unhealthy_threshold = 1

[target_group.scaling]
min = 1
max = 3
desired = 1
scale_out_command = "/bin/true"
warmup = "0s"
grace_period = "120s"
metric_command = "/bin/true"
metric_interval = "15s"

[[target_group.scaling.policy]]
type = "step"
metric = "backend_cpu"
scale_out = { above = 0.7, for = "0s", add = 1 }
"#;

    pub(crate) fn uid_of(s: &State, addr: &str) -> u64 {
        token(s, addr).1
    }

    #[test]
    fn passive_marks_down_at_once_and_the_checks_bring_it_back() {
        use crate::passive::Verdict;
        let text = format!(
            "{CFG}\n[target_group.passive_health]\nredispatch = true\nunanswered_timeout = \"300ms\"\n"
        );
        let mut s = state(&text);
        for a in ["198.18.2.11", "198.18.2.12", "198.18.2.13"] {
            let t = token(&s, a);
            s.observe(&t, &outcome(true));
            s.observe(&t, &outcome(true));
        }
        let d = s.desired().unwrap();
        for b in d.backends.values() {
            assert_eq!(b.syn_timeout_ns, 300_000_000);
            assert!(backend_info(b).flags & lb_common::BE_F_REDISPATCH != 0);
        }
        let uid = uid_of(&s, "198.18.2.12");
        let now = Instant::now();
        let msg = s
            .passive_verdict("g", uid, &Verdict::Refused(3), now)
            .expect("a transition");
        assert_eq!(
            msg,
            "198.18.2.12 healthy → unhealthy (passive: 3 refused handshakes)"
        );
        let d = s.desired().unwrap();
        assert_eq!(active(&d), ["198.18.2.11", "198.18.2.13"]);
        let b2 = d
            .backends
            .values()
            .find(|b| b.key.addr.to_string() == "198.18.2.12")
            .unwrap();
        assert_eq!(
            backend_info(b2).flags,
            lb_common::BE_F_REDISPATCH,
            "down, still redispatching"
        );
        assert_eq!(
            s.groups["g"].members[1].reason(),
            "passive: 3 refused handshakes"
        );
        // While down it is not judged (its evidence is dropped), the others are.
        let judged: Vec<(u64, bool)> = s
            .passive_members()
            .into_iter()
            .map(|(_, u, j)| (u, j))
            .collect();
        assert!(judged.contains(&(uid, false)), "{judged:?}");
        assert_eq!(judged.iter().filter(|(_, j)| *j).count(), 2);
        // Again while down: nothing new.
        assert!(s
            .passive_verdict("g", uid, &Verdict::Unanswered(3), now)
            .is_none());
        // The active checks bring it back, after healthy_threshold (2) successes.
        let t = token(&s, "198.18.2.12");
        assert!(s.observe(&t, &outcome(true)).is_none(), "one is not enough");
        let tr = s.observe(&t, &outcome(true)).expect("back");
        assert_eq!(tr.to, BackendState::Healthy);
        assert_eq!(active(&s.desired().unwrap()).len(), 3);
        // A group without passive health ignores verdicts.
        let mut plain = state(CFG);
        let uid = uid_of(&plain, "198.18.2.11");
        assert!(plain
            .passive_verdict("g", uid, &Verdict::Refused(9), now)
            .is_none());
        let d = plain.desired().unwrap();
        assert!(d
            .backends
            .values()
            .all(|b| b.syn_timeout_ns == 0 && !b.redispatch));
    }

    #[test]
    fn udp_ejections_grow_end_and_are_capped_by_the_group_share() {
        use crate::passive::Verdict;
        let text = format!(
            "{CFG}\n[target_group.passive_health]\nbase_ejection = \"10s\"\nmax_ejection = \"25s\"\n\
             max_ejection_percent = 50\n"
        );
        let mut s = state(&text);
        let v = Verdict::UdpOutlier {
            flows: 20,
            unanswered: 20,
        };
        let (u1, u2) = (uid_of(&s, "198.18.2.11"), uid_of(&s, "198.18.2.12"));
        let t0 = Instant::now();
        let msg = s.passive_verdict("g", u1, &v, t0).expect("ejected");
        assert!(
            msg.contains("ejected for 10s") && msg.contains("ejection 1"),
            "{msg}"
        );
        assert_eq!(
            active(&s.desired().unwrap()),
            ["198.18.2.12", "198.18.2.13"]
        );
        let d = s.desired().unwrap();
        let b1 = d
            .backends
            .values()
            .find(|b| b.key.addr.to_string() == "198.18.2.11")
            .unwrap();
        assert!(
            b1.established_ok,
            "its flows stay; only new ones go elsewhere"
        );
        assert!(s.groups["g"].members[0]
            .reason()
            .contains("20 of 20 new UDP flows"));
        // 1 of 3 ejected: a second would be more than 50 %.
        assert!(s.passive_verdict("g", u2, &v, t0).is_none());
        // Not over yet, then over.
        assert!(s.end_ejections(t0 + Duration::from_secs(9)).is_empty());
        let ended = s.end_ejections(t0 + Duration::from_secs(10));
        assert_eq!(ended.len(), 1);
        assert_eq!(active(&s.desired().unwrap()).len(), 3);
        // Ejected again soon: twice as long; a third time: capped at 25 s.
        let t1 = t0 + Duration::from_secs(11);
        let msg = s.passive_verdict("g", u1, &v, t1).unwrap();
        assert!(msg.contains("ejected for 20s"), "{msg}");
        s.end_ejections(t1 + Duration::from_secs(20));
        let t2 = t1 + Duration::from_secs(21);
        let msg = s.passive_verdict("g", u1, &v, t2).unwrap();
        assert!(msg.contains("ejected for 25s"), "{msg}");
        s.end_ejections(t2 + Duration::from_secs(25));
        // Quiet for longer than max_ejection: starts over.
        let t3 = t2 + Duration::from_secs(100);
        let msg = s.passive_verdict("g", u1, &v, t3).unwrap();
        assert!(msg.contains("ejected for 10s"), "{msg}");
    }
}
