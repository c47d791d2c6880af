//! What `GET /metrics` and the status page show: a [`Snapshot`] the owner loop publishes once
//! a second (through a `tokio::sync::watch` channel, so that the HTTP server never waits for
//! the loop), the [`Live`] metrics the loop counts as things happen (health checks, hooks,
//! reloads, scaling actions), and [`render`], which writes both in the Prometheus text format
//! (version 0.0.4) with the `prometheus-client` crate.
//!
//! Traffic counters come from the data path's per-CPU maps (pinned, adopted by a restarted
//! daemon), so they do not go backwards when xlb restarts; the [`Live`] counters start from
//! zero with each daemon (Prometheus' `rate()` and `increase()` handle such resets).
use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    encoding::prometheus_text,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram, info::Info},
    registry::Registry,
};
use tokio::sync::watch;

use crate::{
    health::CheckOutcome,
    model::{BackendState, Event, Status},
    state::{CheckToken, State},
};

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Events the snapshot carries for the status page (the newest).
pub const SNAPSHOT_EVENTS: usize = 20;

/// Buckets of `xlb_health_check_duration_seconds`.
const CHECK_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const STATES: [BackendState; 4] = [
    BackendState::Initial,
    BackendState::Healthy,
    BackendState::Unhealthy,
    BackendState::Draining,
];

/// A label set: (name, value) pairs in a fixed order.
pub type Labels = Vec<(&'static str, String)>;

/// Per-second rates between two snapshots.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rate {
    pub new_flows: f64,
    /// Packets both ways (requests and replies).
    pub packets: f64,
    /// Bytes both ways.
    pub bytes: f64,
}

/// What the owner loop publishes: everything a scrape or the status page shows, read from
/// the state and the maps in one go on the loop.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub status: Status,
    /// Seconds since the Unix epoch when the daemon started.
    pub started_unix: f64,
    /// Seconds since the Unix epoch when this snapshot was taken.
    pub taken_unix: f64,
    /// Entries in the connection table at the last sweep (None before the first).
    pub conntrack_entries: Option<u64>,
    /// Entries the connection table holds at most (`conntrack_size`).
    pub conntrack_capacity: u64,
    /// Per service name, since the previous snapshot.
    pub service_rates: BTreeMap<String, Rate>,
    /// Per (group, backend `ADDR:PORT`), since the previous snapshot.
    pub backend_rates: BTreeMap<(String, String), Rate>,
    /// The newest events, oldest first.
    pub events: Vec<Event>,
}

/// `ADDR:PORT` (`[V6ADDR]:PORT`): the `backend` label and the status page's name of a backend.
pub fn backend_label(addr: std::net::IpAddr, port: u16) -> String {
    SocketAddr::new(addr, port).to_string()
}

/// A health check failure's reason as a label value of few values: `connect_refused`,
/// `timeout`, `no_route`, `network_unreachable`, `http_503` (any status), `bad_response`,
/// `invalid_path`, `other`.
pub fn failure_reason(reason: &str) -> String {
    let r = reason.trim();
    if r == "connect refused" {
        return "connect_refused".into();
    }
    if r.starts_with("timeout") {
        return "timeout".into();
    }
    if r == "no route to host" {
        return "no_route".into();
    }
    if r == "network unreachable" {
        return "network_unreachable".into();
    }
    if let Some(code) = r.strip_prefix("HTTP ") {
        if code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()) {
            return format!("http_{code}");
        }
    }
    if r.starts_with("bad HTTP response") {
        return "bad_response".into();
    }
    if r == "invalid health check path" {
        return "invalid_path".into();
    }
    "other".into()
}

fn check_histogram() -> Histogram {
    Histogram::new(CHECK_BUCKETS)
}

/// The metrics the owner loop counts as things happen. Cloning shares them (the HTTP server
/// holds a clone and reads them at each scrape).
#[derive(Clone, Debug)]
pub struct Live {
    check_duration: Family<Labels, Histogram, fn() -> Histogram>,
    check_failures: Family<Labels, Counter>,
    hook_runs: Family<Labels, Counter>,
    reloads: Family<Labels, Counter>,
    scaling_actions: Family<Labels, Counter>,
}

impl Default for Live {
    fn default() -> Self {
        Self {
            check_duration: Family::new_with_constructor(check_histogram as fn() -> Histogram),
            check_failures: Family::default(),
            hook_runs: Family::default(),
            reloads: Family::default(),
            scaling_actions: Family::default(),
        }
    }
}

impl Live {
    /// A health check of `backend` (`ADDR:PORT`) in `group` finished.
    pub fn check(&self, group: &str, backend: &str, outcome: &CheckOutcome) {
        let labels = vec![
            ("group", group.to_string()),
            ("backend", backend.to_string()),
        ];
        self.check_duration
            .get_or_create(&labels)
            .observe(outcome.latency.as_secs_f64());
        if !outcome.ok {
            let mut l = labels;
            l.push(("reason", failure_reason(&outcome.reason)));
            self.check_failures.get_or_create(&l).inc();
        }
    }

    /// A hook finished: `hook` is `scale_out`, `scale_in` or `metrics`.
    pub fn hook_run(&self, group: &str, hook: &'static str, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.hook_runs
            .get_or_create(&vec![
                ("group", group.to_string()),
                ("hook", hook.to_string()),
                ("outcome", outcome.to_string()),
            ])
            .inc();
    }

    /// A reload (SIGHUP or the API) was accepted or rejected.
    pub fn reload(&self, accepted: bool) {
        let outcome = if accepted { "accepted" } else { "rejected" };
        self.reloads
            .get_or_create(&vec![("outcome", outcome.to_string())])
            .inc();
    }

    /// A scaling group's desired capacity went `out` (up) or `in` (down).
    pub fn scaling_action(&self, group: &str, direction: &'static str) {
        self.scaling_actions
            .get_or_create(&vec![
                ("group", group.to_string()),
                ("direction", direction.to_string()),
            ])
            .inc();
    }

    /// Forget the per-backend series of backends that are gone (`present` holds the
    /// (group, backend) pairs that exist).
    fn prune(&self, known: &mut HashSet<Labels>, present: &HashSet<(String, String)>) {
        known.retain(|labels| {
            let g = labels.iter().find(|(k, _)| *k == "group").map(|(_, v)| v);
            let b = labels.iter().find(|(k, _)| *k == "backend").map(|(_, v)| v);
            let keep = match (g, b) {
                (Some(g), Some(b)) => present.contains(&(g.clone(), b.clone())),
                _ => true,
            };
            if !keep {
                self.check_duration.remove(labels);
                self.check_failures.remove(labels);
            }
            keep
        });
    }
}

/// The owner loop's side: the live metrics, the channel it publishes snapshots on (when the
/// HTTP listener is on), and what rates and scaling actions are measured against.
pub struct Telemetry {
    pub live: Live,
    tx: Option<watch::Sender<Option<Arc<Snapshot>>>>,
    started_unix: f64,
    last: Option<Arc<Snapshot>>,
    last_desired: HashMap<String, u32>,
    /// Label sets of per-backend live series, to forget those of backends that leave.
    backend_series: HashSet<Labels>,
}

impl Telemetry {
    /// Telemetry that counts but publishes nothing (no `http_listen`).
    pub fn new() -> Self {
        Self {
            live: Live::default(),
            tx: None,
            started_unix: unix_now(),
            last: None,
            last_desired: HashMap::new(),
            backend_series: HashSet::new(),
        }
    }

    /// Start publishing; the receiver goes to the HTTP server.
    pub fn subscribe(&mut self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        match &self.tx {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(None);
                self.tx = Some(tx);
                rx
            }
        }
    }

    /// Whether snapshots are wanted (an HTTP listener is on).
    pub fn publishing(&self) -> bool {
        self.tx.is_some()
    }

    /// A finished health check of the backend `token` names.
    pub fn check(&mut self, state: &State, token: &CheckToken, outcome: &CheckOutcome) {
        let Some(backend) = member_label(state, &token.0, token.1) else {
            return;
        };
        self.backend_series.insert(vec![
            ("group", token.0.clone()),
            ("backend", backend.clone()),
        ]);
        if !outcome.ok {
            self.backend_series.insert(vec![
                ("group", token.0.clone()),
                ("backend", backend.clone()),
                ("reason", failure_reason(&outcome.reason)),
            ]);
        }
        self.live.check(&token.0, &backend, outcome);
    }

    /// After a scaling round: count each group whose desired capacity moved since the last
    /// look as a scaling action out (up) or in (down).
    pub fn scaling(&mut self, state: &State) {
        let mut seen = HashMap::new();
        for (name, g) in &state.groups {
            let Some(gs) = &g.scaling else { continue };
            let desired = gs.scaler.desired();
            match self.last_desired.get(name) {
                Some(&before) if desired > before => self.live.scaling_action(name, "out"),
                Some(&before) if desired < before => self.live.scaling_action(name, "in"),
                _ => {}
            }
            seen.insert(name.clone(), desired);
        }
        self.last_desired = seen;
    }

    /// Publish what the state and maps hold now (`status` as the API reports it).
    pub fn publish(
        &mut self,
        status: Status,
        events: &VecDeque<Event>,
        conntrack_entries: Option<u64>,
        conntrack_capacity: u64,
    ) {
        let Some(tx) = &self.tx else { return };
        let taken_unix = unix_now();
        let (service_rates, backend_rates) = match &self.last {
            Some(prev) => rates(prev, &status, taken_unix - prev.taken_unix),
            None => Default::default(),
        };
        let present: HashSet<(String, String)> = status
            .groups
            .iter()
            .flat_map(|g| g.backends.iter())
            .map(|b| (b.group.clone(), backend_label(b.address, b.port)))
            .collect();
        self.live.prune(&mut self.backend_series, &present);
        let skip = events.len().saturating_sub(SNAPSHOT_EVENTS);
        let snap = Arc::new(Snapshot {
            status,
            started_unix: self.started_unix,
            taken_unix,
            conntrack_entries,
            conntrack_capacity,
            service_rates,
            backend_rates,
            events: events.iter().skip(skip).cloned().collect(),
        });
        self.last = Some(snap.clone());
        tx.send_replace(Some(snap));
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// The `backend` label of member `uid` of `group`: its address and the port its traffic goes
/// to (its own, else the group's, else the first service's in front of the group), as the
/// API's status reports it.
fn member_label(state: &State, group: &str, uid: u64) -> Option<String> {
    let g = state.groups.get(group)?;
    let m = g.members.iter().find(|m| m.uid == uid)?;
    let port = m
        .port
        .or(g.cfg.port)
        .or_else(|| {
            state
                .config
                .services
                .iter()
                .find(|s| s.target_group == g.cfg.name)
                .map(|s| s.port)
        })
        .unwrap_or(0);
    Some(backend_label(m.addr, port))
}

type RateMaps = (BTreeMap<String, Rate>, BTreeMap<(String, String), Rate>);

/// Rates between the previous snapshot and `now`'s counters, `dt` seconds apart (none when
/// `dt` is not positive). A counter that went down (an id reused) gives 0.
fn rates(prev: &Snapshot, now: &Status, dt: f64) -> RateMaps {
    let mut services = BTreeMap::new();
    let mut backends = BTreeMap::new();
    if dt <= 0.0 || !dt.is_finite() {
        return (services, backends);
    }
    let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
    let rate = |c: &crate::model::TrafficCounters, p: &crate::model::TrafficCounters| Rate {
        new_flows: per(c.new_flows, p.new_flows),
        packets: per(c.packets + c.reply_packets, p.packets + p.reply_packets),
        bytes: per(c.bytes + c.reply_bytes, p.bytes + p.reply_bytes),
    };
    for s in &now.services {
        if let Some(p) = prev.status.services.iter().find(|p| p.name == s.name) {
            services.insert(s.name.clone(), rate(&s.counters, &p.counters));
        }
    }
    let before: HashMap<(&str, std::net::IpAddr, u16), &crate::model::TrafficCounters> = prev
        .status
        .groups
        .iter()
        .flat_map(|g| g.backends.iter())
        .map(|b| ((b.group.as_str(), b.address, b.port), &b.counters))
        .collect();
    for b in now.groups.iter().flat_map(|g| g.backends.iter()) {
        if let Some(p) = before.get(&(b.group.as_str(), b.address, b.port)) {
            backends.insert(
                (b.group.clone(), backend_label(b.address, b.port)),
                rate(&b.counters, p),
            );
        }
    }
    (services, backends)
}

// ---- rendering ----

type Counters = Family<Labels, Counter>;
type Gauges = Family<Labels, Gauge>;
type FloatGauges = Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>;

fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.into_iter().map(|(k, v)| (k, v.to_string())).collect()
}

fn gauge_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A fleet's series: each service's table fingerprint (equal on nodes that send every flow
/// to the same backend: `count by (service) (count by (service, fingerprint)
/// (xlb_service_table_fingerprint)) > 1` finds nodes that disagree) and, with
/// `[daemon.announce]`, the node's state, each VIP's announcement, the routes and BIRD.
fn fleet_metrics(reg: &mut Registry, s: &crate::model::Status) {
    let fp = Gauges::default();
    for sv in &s.services {
        fp.get_or_create(&labels([
            ("service", sv.name.as_str()),
            ("group", sv.target_group.as_str()),
            ("fingerprint", sv.table_fingerprint.as_str()),
        ]))
        .set(1);
    }
    reg.register(
        "service_table_fingerprint",
        "Always 1; the fingerprint of the service's live Maglev table as backend addresses, \
         hash seed and size (equal on every node that sends a flow to the same backend)",
        fp,
    );
    let Some(a) = &s.announce else {
        return;
    };
    let node = Gauges::default();
    for st in ["serving", "draining", "drained"] {
        node.get_or_create(&labels([("state", st)]))
            .set(i64::from(a.node == st));
    }
    reg.register(
        "node_state",
        "1 for the node's state in the fleet (serving, draining, drained), 0 for the others",
        node,
    );
    let vips = Gauges::default();
    for v in &a.vips {
        vips.get_or_create(&labels([("vip", v.vip.to_string().as_str())]))
            .set(i64::from(v.announced));
    }
    reg.register(
        "vip_announced",
        "1 while the node wants the VIP announced (its route is in the announce table once \
         xlb_announce_routes_in_sync is 1), else 0",
        vips,
    );
    let sync: Gauge = Gauge::default();
    sync.set(i64::from(a.routes_in_sync));
    reg.register(
        "announce_routes_in_sync",
        "1 when the announce table holds exactly the routes xlb wants",
        sync,
    );
    let bird: Gauge = Gauge::default();
    bird.set(i64::from(a.bird.starts_with("up")));
    reg.register(
        "bird_up",
        "1 when BIRD's control socket answered the last probe (every 5 s)",
        bird,
    );
}

/// The Prometheus text exposition (version 0.0.4) of `snap` and `live`.
pub fn render(snap: &Snapshot, live: &Live) -> String {
    let mut reg = Registry::with_prefix("xlb");
    let s = &snap.status;

    reg.register(
        "build",
        "The running xlb's version (always 1)",
        Info::new(vec![("version", s.version.clone())]),
    );
    let start: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
    start.set(snap.started_unix);
    reg.register(
        "start_time_seconds",
        "When the running daemon started, in seconds since the Unix epoch",
        start,
    );

    // Services.
    let svc_packets = Counters::default();
    let svc_bytes = Counters::default();
    let svc_new = Counters::default();
    let svc_syns = Counters::default();
    let svc_dropped = Counters::default();
    let svc_table = Gauges::default();
    for sv in &s.services {
        let base = [
            ("service", sv.name.as_str()),
            ("group", sv.target_group.as_str()),
        ];
        let c = &sv.counters;
        for (dir, p, b) in [
            ("request", c.packets, c.bytes),
            ("reply", c.reply_packets, c.reply_bytes),
        ] {
            let l = labels([base[0], base[1], ("direction", dir)]);
            svc_packets.get_or_create(&l).inc_by(p);
            svc_bytes.get_or_create(&l).inc_by(b);
        }
        svc_new.get_or_create(&labels(base)).inc_by(c.new_flows);
        svc_syns.get_or_create(&labels(base)).inc_by(c.syns);
        svc_dropped
            .get_or_create(&labels([base[0], base[1], ("reason", "no_backend")]))
            .inc_by(c.dropped);
        svc_table
            .get_or_create(&labels(base))
            .set(sv.backends_in_table as i64);
    }
    reg.register(
        "service_packets",
        "Packets of a service's flows: direction=request from clients to backends, \
         direction=reply from backends to clients",
        svc_packets,
    );
    reg.register(
        "service_bytes",
        "Bytes of a service's flows (as received), by direction",
        svc_bytes,
    );
    reg.register(
        "service_new_flows",
        "Flows confirmed: their backend answered (TCP: pinned at the client's first packet \
         after the SYN and not refused; UDP: the first reply)",
        svc_new,
    );
    reg.register(
        "service_syns",
        "TCP SYNs from clients (new_flows counts confirmed flows only)",
        svc_syns,
    );
    reg.register(
        "service_dropped_packets",
        "Packets to a service the data path dropped, by reason (no_backend: no usable backend)",
        svc_dropped,
    );
    reg.register(
        "service_table_backends",
        "Backends in the service's live Maglev table",
        svc_table,
    );

    // Backends.
    let be_packets = Counters::default();
    let be_bytes = Counters::default();
    let be_new = Counters::default();
    let be_syns = Counters::default();
    let be_state = Gauges::default();
    let be_up = Gauges::default();
    let be_receiving = Gauges::default();
    let be_weight = Gauges::default();
    let be_open = Gauges::default();
    let be_since = FloatGauges::default();
    let mut open_total = 0u64;
    for b in s.groups.iter().flat_map(|g| g.backends.iter()) {
        let name = backend_label(b.address, b.port);
        let base = [("group", b.group.as_str()), ("backend", name.as_str())];
        let c = &b.counters;
        for (dir, p, by) in [
            ("request", c.packets, c.bytes),
            ("reply", c.reply_packets, c.reply_bytes),
        ] {
            let l = labels([base[0], base[1], ("direction", dir)]);
            be_packets.get_or_create(&l).inc_by(p);
            be_bytes.get_or_create(&l).inc_by(by);
        }
        be_new.get_or_create(&labels(base)).inc_by(c.new_flows);
        be_syns.get_or_create(&labels(base)).inc_by(c.syns);
        for st in STATES {
            let text = st.to_string();
            be_state
                .get_or_create(&labels([base[0], base[1], ("state", text.as_str())]))
                .set(i64::from(b.state == st));
        }
        be_up
            .get_or_create(&labels(base))
            .set(i64::from(b.state == BackendState::Healthy));
        be_receiving
            .get_or_create(&labels(base))
            .set(i64::from(b.receiving_new_flows));
        be_weight
            .get_or_create(&labels(base))
            .set(i64::from(b.weight));
        be_open
            .get_or_create(&labels(base))
            .set(gauge_i64(b.active_flows));
        be_since.get_or_create(&labels(base)).set(b.since_secs);
        open_total = open_total.saturating_add(b.active_flows);
    }
    reg.register(
        "backend_packets",
        "Packets of the flows a backend serves, by direction (request: to it; reply: from it)",
        be_packets,
    );
    reg.register(
        "backend_bytes",
        "Bytes of the flows a backend serves, by direction",
        be_bytes,
    );
    reg.register(
        "backend_new_flows",
        "Flows of the backend confirmed (it answered them)",
        be_new,
    );
    reg.register(
        "backend_syns",
        "TCP SYNs from clients sent to the backend",
        be_syns,
    );
    reg.register(
        "backend_state",
        "1 for the backend's state (initial, healthy, unhealthy, draining), 0 for the others",
        be_state,
    );
    reg.register("backend_up", "1 when the backend is healthy, else 0", be_up);
    reg.register(
        "backend_receiving_new_flows",
        "1 when new flows may go to the backend now, else 0",
        be_receiving,
    );
    reg.register("backend_weight", "The backend's weight", be_weight);
    reg.register(
        "backend_open_flows",
        "Flows pinned to the backend that are still open (at the last connection-table sweep)",
        be_open,
    );
    reg.register(
        "backend_state_duration_seconds",
        "Seconds since the backend's state last changed",
        be_since,
    );
    let open: Gauge = Gauge::default();
    open.set(gauge_i64(open_total));
    reg.register(
        "open_flows",
        "Open flows of all backends (at the last connection-table sweep)",
        open,
    );

    // Groups and scaling.
    let failing_open = Gauges::default();
    let sc_desired = Gauges::default();
    let sc_min = Gauges::default();
    let sc_max = Gauges::default();
    let sc_in_service = Gauges::default();
    let sc_launching = Gauges::default();
    for g in &s.groups {
        let l = labels([("group", g.name.as_str())]);
        failing_open
            .get_or_create(&l)
            .set(i64::from(g.failing_open));
        if let Some(sc) = &g.scaling {
            sc_desired.get_or_create(&l).set(i64::from(sc.desired));
            sc_min.get_or_create(&l).set(i64::from(sc.min));
            sc_max.get_or_create(&l).set(i64::from(sc.max));
            sc_in_service
                .get_or_create(&l)
                .set(i64::from(sc.in_service));
            sc_launching.get_or_create(&l).set(i64::from(sc.launching));
        }
    }
    reg.register(
        "group_failing_open",
        "1 when no backend of the group is healthy and all_unhealthy = \"fail_open\" sends \
         new flows to all of them",
        failing_open,
    );
    reg.register(
        "scaling_desired_backends",
        "A scaling group's desired capacity",
        sc_desired,
    );
    reg.register(
        "scaling_min_backends",
        "A scaling group's minimum capacity (now: schedules change it)",
        sc_min,
    );
    reg.register(
        "scaling_max_backends",
        "A scaling group's maximum capacity (now)",
        sc_max,
    );
    reg.register(
        "scaling_in_service_backends",
        "Backends of a scaling group in service (not draining)",
        sc_in_service,
    );
    reg.register(
        "scaling_launching_backends",
        "Backends the running scale-out hook was asked for",
        sc_launching,
    );

    fleet_metrics(&mut reg, s);

    // The connection table.
    if let Some(n) = snap.conntrack_entries {
        let g: Gauge = Gauge::default();
        g.set(gauge_i64(n));
        reg.register(
            "conntrack_entries",
            "Entries in the connection table at the last sweep (open or idle flows; LRU)",
            g,
        );
    }
    let cap: Gauge = Gauge::default();
    cap.set(gauge_i64(snap.conntrack_capacity));
    reg.register(
        "conntrack_capacity",
        "Entries the connection table holds at most (conntrack_size)",
        cap,
    );

    // The data path's global counters.
    let global = Counters::default();
    for name in lb_common::global::NAMES {
        let v = s.global.get(name).copied().unwrap_or(0);
        global.get_or_create(&labels([("action", name)])).inc_by(v);
    }
    reg.register(
        "datapath_packets",
        "Packets the XDP program handled, by what it did with them (the global counters: \
         forwarded, replies, passed, dropped, no_backend, ...; see the README)",
        global,
    );

    // Live.
    reg.register(
        "health_check_duration_seconds",
        "How long health checks took (a timeout counts as its duration)",
        live.check_duration.clone(),
    );
    reg.register(
        "health_check_failures",
        "Failed health checks, by reason (connect_refused, timeout, no_route, \
         network_unreachable, http_NNN, bad_response, invalid_path, other)",
        live.check_failures.clone(),
    );
    reg.register(
        "hook_runs",
        "Scaling hooks run (hook: scale_out, scale_in, metrics), by outcome (ok, failed)",
        live.hook_runs.clone(),
    );
    reg.register(
        "reloads",
        "Config reloads (SIGHUP or the API), by outcome (accepted, rejected)",
        live.reloads.clone(),
    );
    reg.register(
        "scaling_actions",
        "Changes of a scaling group's desired capacity, by direction (out: up, in: down)",
        live.scaling_actions.clone(),
    );

    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_text::encode(&mut out, &reg);
    out
}

/// A made-up snapshot for the tests of this module and of the status page.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use crate::model::{
        BackendSource, BackendStatus, GroupStatus, InterfaceStatus, ScalingStatus, ServiceStatus,
        TrafficCounters,
    };

    fn backend(group: &str, addr: &str, state: BackendState, n: u64) -> BackendStatus {
        BackendStatus {
            group: group.into(),
            address: addr.parse().unwrap(),
            port: 8080,
            weight: 2,
            state,
            reason: "HTTP 200".into(),
            since_secs: 12.5,
            receiving_new_flows: state == BackendState::Healthy,
            active_flows: n,
            source: BackendSource::Config,
            drain_remaining_secs: None,
            counters: TrafficCounters {
                packets: 100 * n,
                bytes: 10_000 * n,
                new_flows: 10 * n,
                reply_packets: 90 * n,
                reply_bytes: 9_000 * n,
                dropped: 0,
                syns: 12 * n,
            },
        }
    }

    pub fn fake_snapshot() -> Snapshot {
        let mut global = BTreeMap::new();
        global.insert("forwarded".to_string(), 300);
        global.insert("no_backend".to_string(), 4);
        Snapshot {
            status: Status {
                version: "0.1.0".into(),
                pid: 42,
                uptime_secs: 60.0,
                config_file: "/etc/xlb/xlb.toml".into(),
                interfaces: vec![InterfaceStatus {
                    name: "eth0".into(),
                    mode: "native".into(),
                }],
                services: vec![ServiceStatus {
                    name: "web".into(),
                    vip: "198.18.100.1".parse().unwrap(),
                    port: 80,
                    protocol: "tcp".into(),
                    target_group: "web-servers".into(),
                    backends_in_table: 2,
                    counters: TrafficCounters {
                        packets: 300,
                        bytes: 30_000,
                        new_flows: 30,
                        reply_packets: 270,
                        reply_bytes: 27_000,
                        dropped: 4,
                        syns: 33,
                    },
                    forwarding: None,
                    table_fingerprint: "0123456789abcdef".into(),
                }],
                groups: vec![GroupStatus {
                    name: "web-servers".into(),
                    port: Some(8080),
                    all_unhealthy: "drop".into(),
                    deregistration_delay_secs: 300.0,
                    health_check: Some("http GET /health every 5s".into()),
                    failing_open: false,
                    scaling: Some(ScalingStatus {
                        min: 1,
                        max: 4,
                        desired: 3,
                        in_service: 3,
                        launching: 0,
                        hook: "idle".into(),
                        last_decision: None,
                        metrics: BTreeMap::new(),
                    }),
                    backends: vec![
                        backend("web-servers", "198.18.2.11", BackendState::Healthy, 1),
                        backend("web-servers", "198.18.2.12", BackendState::Healthy, 2),
                        backend("web-servers", "2001:db8:2::13", BackendState::Unhealthy, 0),
                    ],
                }],
                global,
                announce: None,
                maps_writing: false,
            },
            started_unix: 1_700_000_000.0,
            taken_unix: 1_700_000_060.0,
            conntrack_entries: Some(7),
            conntrack_capacity: 65536,
            service_rates: BTreeMap::new(),
            backend_rates: BTreeMap::new(),
            events: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::fake_snapshot;
    use super::*;

    /// One sample: name, labels, value.
    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: BTreeMap<String, String>,
        value: f64,
    }

    /// Parse the text format: `# HELP`/`# TYPE` lines (name → type) and samples. Fails on
    /// anything that is not one of those.
    fn parse(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
        let mut types = BTreeMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest.split_once(' ').expect("TYPE name type");
                assert!(
                    types.insert(name.to_string(), ty.to_string()).is_none(),
                    "{name} typed twice"
                );
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
            let (head, value) = line.rsplit_once(' ').expect("sample value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("value of {line}")),
            };
            let (name, labels) = match head.split_once('{') {
                None => (head.to_string(), BTreeMap::new()),
                Some((n, rest)) => {
                    let body = rest.strip_suffix('}').expect("closing brace");
                    let mut labels = BTreeMap::new();
                    // Values in these tests hold no commas or quotes.
                    for pair in body.split(',').filter(|p| !p.is_empty()) {
                        let (k, v) = pair.split_once('=').expect("k=v");
                        let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                        labels.insert(k.to_string(), v.expect("quoted").to_string());
                    }
                    (n.to_string(), labels)
                }
            };
            samples.push(Sample {
                name,
                labels,
                value,
            });
        }
        (types, samples)
    }

    fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<&Sample> = samples
            .iter()
            .filter(|s| {
                s.name == name
                    && s.labels.len() == want.len()
                    && want
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(found.len() <= 1, "{name} {want:?} twice");
        found.first().map(|s| s.value)
    }

    fn live_with_some() -> Live {
        let live = Live::default();
        let ok = CheckOutcome {
            ok: true,
            reason: "HTTP 200".into(),
            latency: Duration::from_millis(3),
            metrics: None,
        };
        let failed = CheckOutcome {
            ok: false,
            reason: "timeout after 5s".into(),
            latency: Duration::from_secs(5),
            metrics: None,
        };
        live.check("web-servers", "198.18.2.11:8080", &ok);
        live.check("web-servers", "198.18.2.11:8080", &failed);
        live.check("web-servers", "198.18.2.11:8080", &failed);
        live.hook_run("web-servers", "scale_out", true);
        live.hook_run("web-servers", "scale_in", false);
        live.reload(true);
        live.reload(false);
        live.reload(true);
        live.scaling_action("web-servers", "out");
        live
    }

    #[test]
    fn names_follow_the_conventions() {
        let text = render(&fake_snapshot(), &live_with_some());
        let (types, samples) = parse(&text);
        assert!(types.len() >= 30, "{types:?}");
        for (name, ty) in &types {
            assert!(name.starts_with("xlb_"), "{name}: the xlb_ prefix");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name}: snake case"
            );
            match ty.as_str() {
                "counter" => assert!(name.ends_with("_total"), "{name}: a counter ends _total"),
                "gauge" | "histogram" => {
                    assert!(
                        !name.ends_with("_total"),
                        "{name}: only counters end _total"
                    )
                }
                other => panic!("{name}: type {other}"),
            }
            // Base units: seconds and bytes, never milliseconds or kilobytes.
            for bad in ["_ms", "_milliseconds", "_kb", "_kilobytes", "_percent"] {
                assert!(!name.contains(bad), "{name}: base units only");
            }
            if name.contains("duration") || name.contains("time") {
                assert!(name.contains("seconds"), "{name}: times in seconds");
            }
            assert!(
                samples.iter().any(|s| s.name == *name
                    || s.name.strip_suffix("_bucket") == Some(name)
                    || s.name.strip_suffix("_count") == Some(name)),
                "{name} has samples"
            );
        }
        // Every sample belongs to a typed family; label names are the conventional ones.
        for s in &samples {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suf| {
                    s.name
                        .strip_suffix(suf)
                        .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
                })
                .unwrap_or(&s.name);
            assert!(types.contains_key(family), "{} untyped", s.name);
            for k in s.labels.keys() {
                assert!(
                    [
                        "service",
                        "group",
                        "backend",
                        "direction",
                        "reason",
                        "state",
                        "action",
                        "hook",
                        "outcome",
                        "version",
                        "fingerprint",
                        "vip",
                        "le"
                    ]
                    .contains(&k.as_str()),
                    "{}: label {k}",
                    s.name
                );
            }
        }
    }

    #[test]
    fn fleet_series() {
        let mut snap = fake_snapshot();
        let text = render(&snap, &live_with_some());
        let (types, samples) = parse(&text);
        let web = [
            ("service", "web"),
            ("group", "web-servers"),
            ("fingerprint", "0123456789abcdef"),
        ];
        assert_eq!(
            value(&samples, "xlb_service_table_fingerprint", &web),
            Some(1.0)
        );
        // No [daemon.announce]: no node series.
        assert!(!types.contains_key("xlb_node_state"), "{text}");
        snap.status.announce = Some(crate::model::AnnounceStatus {
            via: "bird".into(),
            table: 100,
            node: "draining".into(),
            drain_remaining_secs: Some(10.0),
            routes_in_sync: true,
            route_error: None,
            bird: "unreachable at /run/bird/bird.ctl: no such file".into(),
            vips: vec![crate::model::VipAnnouncement {
                vip: "198.18.100.1".parse().unwrap(),
                announced: false,
                reason: "node draining".into(),
            }],
        });
        let text = render(&snap, &live_with_some());
        let (_, samples) = parse(&text);
        let v = |name: &str, l: &[(&str, &str)]| value(&samples, name, l);
        assert_eq!(v("xlb_node_state", &[("state", "draining")]), Some(1.0));
        assert_eq!(v("xlb_node_state", &[("state", "serving")]), Some(0.0));
        assert_eq!(
            v("xlb_vip_announced", &[("vip", "198.18.100.1")]),
            Some(0.0)
        );
        assert_eq!(v("xlb_announce_routes_in_sync", &[]), Some(1.0));
        assert_eq!(v("xlb_bird_up", &[]), Some(0.0));
    }

    #[test]
    fn values_come_from_the_snapshot() {
        let text = render(&fake_snapshot(), &live_with_some());
        let (types, s) = parse(&text);
        if std::env::var_os("XLB_SHOW_METRICS").is_some() {
            eprintln!("{text}");
        }
        let v = |name: &str, l: &[(&str, &str)]| {
            value(&s, name, l).unwrap_or_else(|| panic!("{name} {l:?} missing in\n{text}"))
        };
        assert_eq!(v("xlb_build_info", &[("version", "0.1.0")]), 1.0);
        assert_eq!(v("xlb_start_time_seconds", &[]), 1_700_000_000.0);
        let web = [("service", "web"), ("group", "web-servers")];
        let dir = |d: &'static str| [web[0], web[1], ("direction", d)];
        assert_eq!(v("xlb_service_packets_total", &dir("request")), 300.0);
        assert_eq!(v("xlb_service_packets_total", &dir("reply")), 270.0);
        assert_eq!(v("xlb_service_bytes_total", &dir("request")), 30_000.0);
        assert_eq!(v("xlb_service_bytes_total", &dir("reply")), 27_000.0);
        assert_eq!(v("xlb_service_new_flows_total", &web), 30.0);
        assert_eq!(v("xlb_service_syns_total", &web), 33.0);
        assert_eq!(
            v(
                "xlb_service_dropped_packets_total",
                &[web[0], web[1], ("reason", "no_backend")]
            ),
            4.0
        );
        assert_eq!(v("xlb_service_table_backends", &web), 2.0);

        let b2 = [("group", "web-servers"), ("backend", "198.18.2.12:8080")];
        let b3 = [
            ("group", "web-servers"),
            ("backend", "[2001:db8:2::13]:8080"),
        ];
        assert_eq!(
            v(
                "xlb_backend_packets_total",
                &[b2[0], b2[1], ("direction", "request")]
            ),
            200.0
        );
        assert_eq!(
            v(
                "xlb_backend_bytes_total",
                &[b2[0], b2[1], ("direction", "reply")]
            ),
            18_000.0
        );
        assert_eq!(v("xlb_backend_new_flows_total", &b2), 20.0);
        assert_eq!(v("xlb_backend_syns_total", &b2), 24.0);
        assert_eq!(v("xlb_backend_open_flows", &b2), 2.0);
        assert_eq!(v("xlb_backend_weight", &b2), 2.0);
        assert_eq!(v("xlb_backend_up", &b2), 1.0);
        assert_eq!(v("xlb_backend_up", &b3), 0.0);
        assert_eq!(v("xlb_backend_receiving_new_flows", &b3), 0.0);
        assert_eq!(v("xlb_backend_state_duration_seconds", &b3), 12.5);
        for (st, want) in [
            ("healthy", 0.0),
            ("unhealthy", 1.0),
            ("initial", 0.0),
            ("draining", 0.0),
        ] {
            assert_eq!(
                v("xlb_backend_state", &[b3[0], b3[1], ("state", st)]),
                want,
                "{st}"
            );
        }
        // Exactly one state per backend.
        let ones = s
            .iter()
            .filter(|x| x.name == "xlb_backend_state" && x.value == 1.0)
            .count();
        assert_eq!(ones, 3);
        assert_eq!(v("xlb_open_flows", &[]), 3.0);
        assert_eq!(v("xlb_conntrack_entries", &[]), 7.0);
        assert_eq!(v("xlb_conntrack_capacity", &[]), 65536.0);
        let g = [("group", "web-servers")];
        assert_eq!(v("xlb_scaling_desired_backends", &g), 3.0);
        assert_eq!(v("xlb_scaling_min_backends", &g), 1.0);
        assert_eq!(v("xlb_scaling_max_backends", &g), 4.0);
        assert_eq!(v("xlb_scaling_in_service_backends", &g), 3.0);
        assert_eq!(v("xlb_group_failing_open", &g), 0.0);
        // Every global counter is there, zero or not.
        for name in lb_common::global::NAMES {
            let want = match name {
                "forwarded" => 300.0,
                "no_backend" => 4.0,
                _ => 0.0,
            };
            assert_eq!(
                v("xlb_datapath_packets_total", &[("action", name)]),
                want,
                "{name}"
            );
        }

        // Live metrics.
        let b1 = [("group", "web-servers"), ("backend", "198.18.2.11:8080")];
        assert_eq!(types["xlb_health_check_duration_seconds"], "histogram");
        assert_eq!(v("xlb_health_check_duration_seconds_count", &b1), 3.0);
        assert!((v("xlb_health_check_duration_seconds_sum", &b1) - 10.003).abs() < 1e-9);
        assert_eq!(
            v(
                "xlb_health_check_duration_seconds_bucket",
                &[b1[0], b1[1], ("le", "0.005")]
            ),
            1.0
        );
        assert_eq!(
            v(
                "xlb_health_check_duration_seconds_bucket",
                &[b1[0], b1[1], ("le", "+Inf")]
            ),
            3.0
        );
        assert_eq!(
            v(
                "xlb_health_check_failures_total",
                &[b1[0], b1[1], ("reason", "timeout")]
            ),
            2.0
        );
        assert_eq!(
            v(
                "xlb_hook_runs_total",
                &[g[0], ("hook", "scale_out"), ("outcome", "ok")]
            ),
            1.0
        );
        assert_eq!(
            v(
                "xlb_hook_runs_total",
                &[g[0], ("hook", "scale_in"), ("outcome", "failed")]
            ),
            1.0
        );
        assert_eq!(v("xlb_reloads_total", &[("outcome", "accepted")]), 2.0);
        assert_eq!(v("xlb_reloads_total", &[("outcome", "rejected")]), 1.0);
        assert_eq!(
            v("xlb_scaling_actions_total", &[g[0], ("direction", "out")]),
            1.0
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut snap = fake_snapshot();
        snap.status.services[0].name = "we\"b\\\nx".into();
        let text = render(&snap, &Live::default());
        assert!(
            text.contains(r#"service="we\"b\\\nx""#),
            "escaped label value in\n{text}"
        );
    }

    #[test]
    fn failure_reasons_are_few() {
        for (reason, label) in [
            ("connect refused", "connect_refused"),
            ("timeout after 5s", "timeout"),
            ("timeout", "timeout"),
            ("no route to host", "no_route"),
            ("network unreachable", "network_unreachable"),
            ("HTTP 503", "http_503"),
            ("HTTP 5031", "other"),
            ("bad HTTP response: no status line", "bad_response"),
            ("invalid health check path", "invalid_path"),
            ("Connection reset by peer (os error 104)", "other"),
        ] {
            assert_eq!(failure_reason(reason), label, "{reason}");
        }
    }

    #[test]
    fn rates_between_snapshots() {
        let prev = fake_snapshot();
        let mut now = prev.status.clone();
        now.services[0].counters.new_flows += 20;
        now.services[0].counters.packets += 10;
        now.services[0].counters.reply_packets += 10;
        now.groups[0].backends[0].counters.new_flows += 4;
        // A counter that went down (an id reused) is not a negative rate.
        now.groups[0].backends[1].counters.new_flows = 0;
        let (svc, be) = rates(&prev, &now, 2.0);
        assert_eq!(svc["web"].new_flows, 10.0);
        assert_eq!(svc["web"].packets, 10.0);
        let key = |a: &str| ("web-servers".to_string(), a.to_string());
        assert_eq!(be[&key("198.18.2.11:8080")].new_flows, 2.0);
        assert_eq!(be[&key("198.18.2.12:8080")].new_flows, 0.0);
        assert!(rates(&prev, &now, 0.0).0.is_empty());
    }

    #[test]
    fn telemetry_publishes_only_when_subscribed() {
        let mut t = Telemetry::new();
        let snap = fake_snapshot();
        t.publish(snap.status.clone(), &VecDeque::new(), None, 1024);
        assert!(!t.publishing());
        let rx = t.subscribe();
        assert!(rx.borrow().is_none());
        let mut events = VecDeque::new();
        for i in 0..30 {
            events.push_back(Event {
                time: f64::from(i),
                group: "g".into(),
                kind: "health".into(),
                message: format!("event {i}"),
                metrics: BTreeMap::new(),
            });
        }
        t.publish(snap.status.clone(), &events, Some(5), 1024);
        let got = rx.borrow().clone().expect("published");
        assert_eq!(got.conntrack_entries, Some(5));
        assert_eq!(got.events.len(), SNAPSHOT_EVENTS);
        assert_eq!(got.events.last().unwrap().message, "event 29");
    }

    #[test]
    fn series_of_backends_that_left_are_forgotten() {
        let mut t = Telemetry::new();
        let _rx = t.subscribe();
        let mut known = HashSet::new();
        let failed = CheckOutcome {
            ok: false,
            reason: "connect refused".into(),
            latency: Duration::from_millis(1),
            metrics: None,
        };
        for b in ["198.18.2.11:8080", "198.18.2.99:8080"] {
            t.live.check("web-servers", b, &failed);
            known.insert(vec![("group", "web-servers".into()), ("backend", b.into())]);
            known.insert(vec![
                ("group", "web-servers".into()),
                ("backend", b.into()),
                ("reason", "connect_refused".into()),
            ]);
        }
        t.backend_series = known;
        let snap = fake_snapshot();
        t.publish(snap.status.clone(), &VecDeque::new(), None, 1024);
        let text = render(&snap, &t.live);
        assert!(text.contains("198.18.2.11:8080\",reason"), "{text}");
        assert!(!text.contains("198.18.2.99"), "gone: {text}");
    }
}
