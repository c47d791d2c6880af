//! A fleet of xlb nodes behind routers' ECMP: the table fingerprint that lets operators
//! compare nodes, and the announcements (`[daemon.announce]`) that make routers send a VIP's
//! traffic to this node only while it can serve it.
//!
//! Mechanism: xlb keeps one `blackhole` route per VIP it can serve (`/32` or `/128`,
//! `proto 88`) in a kernel routing table of its own (`[daemon.announce] table`, 100 by
//! default), over rtnetlink. BIRD's kernel protocol learns that table (`learn`) and its BGP
//! sessions export those routes to the routers. xlb never talks to BIRD to announce: it
//! neither blocks nor fails when BIRD is absent or down (BIRD picks the table up whenever it
//! runs; it hears route changes at once over netlink), and only reads BIRD's control socket
//! to say in `xlb status` whether BIRD runs. Nothing routes through that table (no `ip
//! rule` points at it), so the blackhole routes change nothing on the node itself.
//!
//! A VIP is announced while the node can serve it: XDP attached to every configured
//! interface, the maps written, one of the VIP's services with a backend in its table and,
//! with `require_healthy`, with a healthy backend. It is withdrawn when that stops, when the
//! daemon stops (SIGTERM / SIGINT; after `kill -9` the routes stay, and so does XDP, which
//! keeps forwarding), and while the node is drained (`xlb node drain`, remembered across
//! restarts in a marker file beside the state file).
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::stream::TryStreamExt;
use lb_common::NO_BACKEND;
use netlink_packet_route::{
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType},
    AddressFamily,
};
use rtnetlink::RouteMessageBuilder;
use tokio::{io::AsyncBufReadExt, sync::watch};
use tracing::{info, warn};

use crate::{
    config::AnnounceConfig,
    maglev::{self, MaglevBackend},
    model::{AnnounceStatus, ApiError, VipAnnouncement},
};

/// The `rtm_protocol` of xlb's routes (`ip route ... proto 88`): how xlb tells its routes
/// from anything else in the table.
pub const ROUTE_PROTOCOL: u8 = 88;
/// The routes are written again at least this often (someone may flush the table).
const RESYNC_EVERY: Duration = Duration::from_secs(10);
/// After a failed write, the next attempt.
const RETRY_EVERY: Duration = Duration::from_secs(2);
/// How often BIRD's control socket is looked at.
const BIRD_PROBE_EVERY: Duration = Duration::from_secs(5);
const BIRD_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// Fingerprints

/// The fingerprint of a Maglev table built from `members` (identity key, i.e. backend
/// `ADDR:PORT`, and weight, in table order) with `ring` entries, for flows hashed with
/// `seed`: FNV-1a 64 over the seed, the size and every entry as its backend's address. Two
/// nodes that send every flow to the same backend address show the same fingerprint, whatever
/// backend ids each gave its backends.
pub fn table_fingerprint(members: &[(String, u32)], ring: u32, seed: u32) -> String {
    let mb: Vec<MaglevBackend<'_>> = members
        .iter()
        .map(|(k, w)| MaglevBackend {
            key: k.as_bytes(),
            weight: *w,
        })
        .collect();
    let table = maglev::build(&mb, ring);
    let mut h = Fnv::new();
    h.write(&seed.to_le_bytes());
    h.write(&ring.to_le_bytes());
    for i in table {
        if i == NO_BACKEND {
            h.write(&[0xff]);
        } else {
            h.write(members[i as usize].0.as_bytes());
            h.write(&[0]);
        }
    }
    format!("{:016x}", h.0)
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Fingerprints by service id, computed again only when what builds the table changes
/// (building a table of the default size takes about a millisecond). The last two of each
/// service are kept: the daemon computes the new tables' fingerprints off its loop while it
/// still shows the tables the maps hold.
#[derive(Default)]
pub struct FingerprintCache {
    cache: Mutex<HashMap<u32, Vec<Cached>>>,
}

/// What a fingerprint was computed from (members, table size, seed) and the fingerprint.
type Cached = (Vec<(String, u32)>, u32, u32, String);

impl FingerprintCache {
    pub fn get(
        &self,
        service_id: u32,
        members: Vec<(String, u32)>,
        ring: u32,
        seed: u32,
    ) -> String {
        let lock = || self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(kept) = lock().get(&service_id) {
            if let Some((.., fp)) = kept
                .iter()
                .find(|(m, r, s, _)| *m == members && *r == ring && *s == seed)
            {
                return fp.clone();
            }
        }
        // Built without the lock: another thread's lookup does not wait for it.
        let fp = table_fingerprint(&members, ring, seed);
        let mut cache = lock();
        let kept = cache.entry(service_id).or_default();
        kept.insert(0, (members, ring, seed, fp.clone()));
        kept.truncate(2);
        fp
    }
}

// ---------------------------------------------------------------------------------------------
// What to announce

/// One service as the announcer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceReadiness {
    pub vip: IpAddr,
    /// Its live Maglev table names a backend.
    pub in_table: bool,
    /// A backend of its group is healthy.
    pub healthy: bool,
}

/// The node as the announcer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeReadiness {
    /// XDP is attached to every configured interface.
    pub attached: bool,
    /// The maps hold the desired state (no failed write waiting for a retry).
    pub maps_ok: bool,
}

/// Draining, for `xlb node drain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeMode {
    Serving,
    /// Withdrawn; forwarding what still arrives until it is quiet or `deadline`.
    Draining {
        deadline: Instant,
        /// Packets to services counted so far, and when that number last moved.
        packets: Option<u64>,
        moved: Instant,
    },
    /// Withdrawn and (as far as xlb can tell) nothing arrives any more.
    Drained {
        why: String,
    },
}

impl NodeMode {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Serving => "serving",
            Self::Draining { .. } => "draining",
            Self::Drained { .. } => "drained",
        }
    }

    /// Follow a drain: `packets` is the sum of the services' packet counters, `open_flows`
    /// the flows the last sweep counted open. Returns the message when it has become drained.
    pub fn observe(
        &mut self,
        now: Instant,
        packets: u64,
        open_flows: u64,
        quiet: Duration,
    ) -> Option<String> {
        let Self::Draining {
            deadline,
            packets: last,
            moved,
        } = self
        else {
            return None;
        };
        if *last != Some(packets) {
            *last = Some(packets);
            *moved = now;
        }
        let why = if open_flows == 0 {
            "no flow is open".to_string()
        } else if now.saturating_duration_since(*moved) >= quiet {
            format!(
                "no packet to a service for {}",
                humantime::format_duration(quiet)
            )
        } else if now >= *deadline {
            format!("drain_timeout ran out with {open_flows} flows still open")
        } else {
            return None;
        };
        let msg = format!("node drained: {why}");
        *self = Self::Drained { why };
        Some(msg)
    }
}

/// Which VIPs to announce, and why each is or is not.
pub fn plan(
    services: &[ServiceReadiness],
    node: NodeReadiness,
    mode: &NodeMode,
    require_healthy: bool,
) -> Vec<VipAnnouncement> {
    let mut vips: BTreeMap<IpAddr, (bool, bool)> = BTreeMap::new();
    for s in services {
        let e = vips.entry(s.vip).or_default();
        e.0 |= s.in_table;
        e.1 |= s.in_table && s.healthy;
    }
    vips.into_iter()
        .map(|(vip, (in_table, healthy))| {
            let reason = match mode {
                NodeMode::Draining { .. } => Some("node draining"),
                NodeMode::Drained { .. } => Some("node drained"),
                NodeMode::Serving if !node.attached => Some("XDP not attached everywhere"),
                NodeMode::Serving if !node.maps_ok => Some("maps not written (retrying)"),
                NodeMode::Serving if !in_table => Some("no backend in the table"),
                NodeMode::Serving if require_healthy && !healthy => Some("no healthy backend"),
                NodeMode::Serving => None,
            };
            VipAnnouncement {
                vip,
                announced: reason.is_none(),
                reason: reason.unwrap_or("serving").to_string(),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Routes

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("opening a netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error("{what} {vip}: {source}")]
    Write {
        what: &'static str,
        vip: IpAddr,
        source: rtnetlink::Error,
    },
    #[error("reading routes: {0}")]
    Dump(rtnetlink::Error),
}

/// The route xlb keeps for `vip` in `table`.
pub fn vip_route(vip: IpAddr, table: u32) -> RouteMessage {
    let len = if vip.is_ipv4() { 32 } else { 128 };
    // A host prefix of the right family: the builder accepts it.
    let b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(vip, len)
        .unwrap_or_else(|_| RouteMessageBuilder::<IpAddr>::new());
    b.table_id(table)
        .protocol(RouteProtocol::from(ROUTE_PROTOCOL))
        .kind(RouteType::BlackHole)
        .build()
}

/// The VIP of one of xlb's routes in `table` (a host route of protocol 88), if `msg` is one.
pub fn our_vip(msg: &RouteMessage, table: u32) -> Option<IpAddr> {
    let t = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table));
    if t != table || msg.header.protocol != RouteProtocol::from(ROUTE_PROTOCOL) {
        return None;
    }
    let dst = msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    })?;
    let host = match (dst, msg.header.address_family) {
        (IpAddr::V4(_), AddressFamily::Inet) => 32,
        (IpAddr::V6(_), AddressFamily::Inet6) => 128,
        _ => return None,
    };
    (msg.header.destination_prefix_length == host).then_some(dst)
}

/// xlb's routes in `table` now. The dump asks the kernel for that table's blackhole routes
/// of protocol 88 only (the socket has `NETLINK_GET_STRICT_CHK`: a node holding a full BGP
/// table elsewhere is not dumped every 10 s); the answer is filtered again here in case the
/// kernel ignores the filter.
async fn current(handle: &rtnetlink::Handle, table: u32) -> Result<BTreeSet<IpAddr>, RouteError> {
    let mut out = BTreeSet::new();
    let filter = |mut m: RouteMessage| {
        m.header.protocol = RouteProtocol::from(ROUTE_PROTOCOL);
        m.header.kind = RouteType::BlackHole;
        m
    };
    for q in [
        filter(
            RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .table_id(table)
                .build(),
        ),
        filter(
            RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .table_id(table)
                .build(),
        ),
    ] {
        let mut s = handle.route().get(q).execute();
        loop {
            match s.try_next().await {
                Ok(Some(m)) => {
                    if let Some(v) = our_vip(&m, table) {
                        out.insert(v);
                    }
                }
                Ok(None) => break,
                // A table that does not exist (yet) holds none of xlb's routes.
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENOENT => break,
                Err(e) => return Err(RouteError::Dump(e)),
            }
        }
    }
    Ok(out)
}

/// Make xlb's routes in `table` exactly `want`.
pub async fn sync_routes(
    handle: &rtnetlink::Handle,
    table: u32,
    want: &BTreeSet<IpAddr>,
) -> Result<(), RouteError> {
    let have = current(handle, table).await?;
    for vip in want.difference(&have) {
        handle
            .route()
            .add(vip_route(*vip, table))
            .replace()
            .execute()
            .await
            .map_err(|source| RouteError::Write {
                what: "announcing",
                vip: *vip,
                source,
            })?;
        info!(vip = %vip, table, "VIP announced (route added)");
    }
    for vip in have.difference(want) {
        handle
            .route()
            .del(vip_route(*vip, table))
            .execute()
            .await
            .map_err(|source| RouteError::Write {
                what: "withdrawing",
                vip: *vip,
                source,
            })?;
        info!(vip = %vip, table, "VIP withdrawn (route deleted)");
    }
    Ok(())
}

#[derive(Debug, Default)]
struct RouteState {
    in_sync: bool,
    error: Option<String>,
}

/// A task that keeps the routes equal to what the owner wants, retrying on errors. It writes
/// nothing before the owner has said what it wants (None): a restarted daemon does not
/// withdraw the routes its predecessor left only to announce them again a moment later.
struct Routes {
    want: watch::Sender<Option<BTreeSet<IpAddr>>>,
    state: Arc<Mutex<RouteState>>,
    handle: rtnetlink::Handle,
}

impl Routes {
    fn spawn(table: u32) -> Result<Self, RouteError> {
        let (mut conn, handle, _) = rtnetlink::new_connection()?;
        {
            use rtnetlink::sys::AsyncSocket;
            if let Err(e) = conn
                .socket_mut()
                .socket_ref()
                .set_netlink_get_strict_chk(true)
            {
                // Older kernels: every route is dumped and filtered here.
                warn!(error = %e, "NETLINK_GET_STRICT_CHK not available");
            }
        }
        tokio::spawn(conn);
        let (want, mut rx) = watch::channel(None);
        let state = Arc::new(Mutex::new(RouteState::default()));
        let st = state.clone();
        let h = handle.clone();
        tokio::spawn(async move {
            loop {
                let Some(wanted) = rx.borrow_and_update().clone() else {
                    if rx.changed().await.is_err() {
                        return;
                    }
                    continue;
                };
                let r = sync_routes(&h, table, &wanted).await;
                let wait = {
                    let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
                    match r {
                        Ok(()) => {
                            s.in_sync = true;
                            s.error = None;
                            RESYNC_EVERY
                        }
                        Err(e) => {
                            if s.error.as_deref() != Some(&e.to_string()) {
                                warn!(error = %e, "writing the announced routes failed (retrying)");
                            }
                            s.in_sync = false;
                            s.error = Some(e.to_string());
                            RETRY_EVERY
                        }
                    }
                };
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return },
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        });
        Ok(Self {
            want,
            state,
            handle,
        })
    }

    fn set(&self, want: BTreeSet<IpAddr>) {
        self.want.send_if_modified(|w| {
            if w.as_ref() == Some(&want) {
                return false;
            }
            *w = Some(want);
            if let Ok(mut s) = self.state.lock() {
                s.in_sync = false;
            }
            true
        });
    }
}

// ---------------------------------------------------------------------------------------------
// BIRD

/// Connect to BIRD's control socket and read its greeting (`0001 BIRD 2.0.12 ready.`).
pub async fn probe_bird(path: &Path) -> String {
    let attempt = async {
        let s = tokio::net::UnixStream::connect(path).await?;
        let mut line = String::new();
        tokio::io::BufReader::new(s).read_line(&mut line).await?;
        Ok::<_, std::io::Error>(line)
    };
    match tokio::time::timeout(BIRD_PROBE_TIMEOUT, attempt).await {
        Ok(Ok(line)) if line.contains("BIRD") => {
            let greeting = line.trim().trim_start_matches("0001 ").to_string();
            format!("up ({greeting})")
        }
        Ok(Ok(line)) => format!(
            "unexpected greeting at {}: {:?}",
            path.display(),
            line.trim()
        ),
        Ok(Err(e)) => format!("unreachable at {}: {e}", path.display()),
        Err(_) => format!("unreachable at {}: no greeting within 1s", path.display()),
    }
}

fn spawn_bird_probe(path: PathBuf) -> Arc<Mutex<String>> {
    let out = Arc::new(Mutex::new("not checked yet".to_string()));
    let o = out.clone();
    tokio::spawn(async move {
        let mut last = String::new();
        loop {
            let now = probe_bird(&path).await;
            if now != last {
                if now.starts_with("up") {
                    info!(bird = %now, "BIRD");
                } else {
                    warn!(bird = %now, "BIRD is not reachable: the routes xlb keeps are announced once it runs");
                }
                last = now.clone();
            }
            *o.lock().unwrap_or_else(|e| e.into_inner()) = now;
            if Arc::strong_count(&o) == 1 {
                return;
            }
            tokio::time::sleep(BIRD_PROBE_EVERY).await;
        }
    });
    out
}

// ---------------------------------------------------------------------------------------------
// The announcer

/// Withdraw every VIP route xlb keeps in `table` of this network namespace, from a
/// program without a runtime (`xlb stop --cleanup`), within 3 s; says what it did.
pub fn withdraw_blocking(table: u32) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("xlb: withdrawing the announced VIPs: {e}");
            return;
        }
    };
    let r = rt.block_on(async {
        let (mut conn, handle, _) = rtnetlink::new_connection()?;
        {
            use rtnetlink::sys::AsyncSocket;
            let _ = conn
                .socket_mut()
                .socket_ref()
                .set_netlink_get_strict_chk(true);
        }
        tokio::spawn(conn);
        let had = current(&handle, table).await?;
        sync_routes(&handle, table, &BTreeSet::new()).await?;
        Ok::<_, RouteError>(had.len())
    });
    match r {
        Ok(0) => {}
        Ok(n) => println!("withdrew {n} announced VIPs from routing table {table}"),
        Err(e) => eprintln!("xlb: withdrawing the announced VIPs from table {table}: {e}"),
    }
}

/// The marker file that keeps a node drained across restarts.
pub fn drain_marker(state_file: &Path) -> PathBuf {
    let mut s = state_file.as_os_str().to_owned();
    s.push(".drained");
    PathBuf::from(s)
}

/// The daemon's announcer: owned by the owner loop, fed on every change and tick.
pub struct Fleet {
    cfg: AnnounceConfig,
    mode: NodeMode,
    routes: Routes,
    bird: Arc<Mutex<String>>,
    plan: Vec<VipAnnouncement>,
    marker: PathBuf,
}

impl Fleet {
    /// Start the route writer and the BIRD probe (on the current tokio runtime). Starts
    /// drained when the marker file says the node was drained.
    pub fn start(cfg: AnnounceConfig, state_file: &Path) -> Result<Self, RouteError> {
        let marker = drain_marker(state_file);
        let mode = if marker.exists() {
            info!(marker = %marker.display(), "the node was drained before: staying drained (`xlb node undrain` to announce)");
            NodeMode::Drained {
                why: "drained before the restart".into(),
            }
        } else {
            NodeMode::Serving
        };
        Ok(Self {
            routes: Routes::spawn(cfg.table)?,
            bird: spawn_bird_probe(cfg.bird_socket.clone()),
            cfg,
            mode,
            plan: Vec::new(),
            marker,
        })
    }

    /// Decide again what to announce. Returns a message when a drain has just finished.
    pub fn update(
        &mut self,
        now: Instant,
        services: &[ServiceReadiness],
        node: NodeReadiness,
        packets: u64,
        open_flows: u64,
    ) -> Option<String> {
        let done = self
            .mode
            .observe(now, packets, open_flows, self.cfg.drain_quiet);
        let plan = plan(services, node, &self.mode, self.cfg.require_healthy);
        for p in &plan {
            let before = self.plan.iter().find(|q| q.vip == p.vip);
            if before.map(|q| q.announced) != Some(p.announced) {
                info!(vip = %p.vip, announced = p.announced, reason = %p.reason, "announcement");
            }
        }
        self.routes
            .set(plan.iter().filter(|p| p.announced).map(|p| p.vip).collect());
        self.plan = plan;
        done
    }

    pub fn drain(&mut self, now: Instant) -> Result<String, ApiError> {
        match self.mode {
            NodeMode::Draining { .. } => return Ok("the node is draining already".into()),
            NodeMode::Drained { .. } => return Ok("the node is drained already".into()),
            NodeMode::Serving => {}
        }
        if let Err(e) = std::fs::write(&self.marker, b"drained by xlb node drain\n") {
            warn!(marker = %self.marker.display(), error = %e, "cannot write the drain marker: a restart would announce again");
        }
        self.mode = NodeMode::Draining {
            deadline: now + self.cfg.drain_timeout,
            packets: None,
            moved: now,
        };
        let n = self.plan.iter().filter(|p| p.announced).count();
        Ok(format!(
            "draining: withdrawing {n} VIPs; forwarding what still arrives until nothing does \
             for {} or drain_timeout ({}) runs out",
            humantime::format_duration(self.cfg.drain_quiet),
            humantime::format_duration(self.cfg.drain_timeout)
        ))
    }

    pub fn undrain(&mut self) -> Result<String, ApiError> {
        if self.mode == NodeMode::Serving {
            return Ok("the node is serving already".into());
        }
        match std::fs::remove_file(&self.marker) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ApiError::Internal(format!(
                    "removing the drain marker {}: {e}",
                    self.marker.display()
                )))
            }
        }
        self.mode = NodeMode::Serving;
        Ok("serving: announcing the VIPs it can serve again".into())
    }

    pub fn status(&self, now: Instant) -> AnnounceStatus {
        let rs = self.routes.state.lock().unwrap_or_else(|e| e.into_inner());
        AnnounceStatus {
            via: "bird".into(),
            table: self.cfg.table,
            node: self.mode.name().into(),
            drain_remaining_secs: match &self.mode {
                NodeMode::Draining { deadline, .. } => {
                    Some(deadline.saturating_duration_since(now).as_secs_f64())
                }
                _ => None,
            },
            routes_in_sync: rs.in_sync,
            route_error: rs.error.clone(),
            bird: self.bird.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            vips: self.plan.clone(),
        }
    }

    /// Withdraw everything (the daemon stops), within `limit`.
    pub async fn withdraw_all(&self, limit: Duration) {
        self.routes.set(BTreeSet::new());
        match tokio::time::timeout(
            limit,
            sync_routes(&self.routes.handle, self.cfg.table, &BTreeSet::new()),
        )
        .await
        {
            Ok(Ok(())) => info!(table = self.cfg.table, "withdrew every VIP"),
            Ok(Err(e)) => warn!(error = %e, "withdrawing the VIPs failed"),
            Err(_) => warn!("withdrawing the VIPs took too long"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(list: &[(&str, u32)]) -> Vec<(String, u32)> {
        list.iter().map(|(k, w)| (k.to_string(), *w)).collect()
    }

    #[test]
    fn fingerprint_depends_on_addresses_seed_and_size_only() {
        let a = m(&[("198.18.2.11:8080", 1), ("198.18.2.12:8080", 1)]);
        let fp = table_fingerprint(&a, 1021, 7);
        assert_eq!(fp.len(), 16);
        // Same inputs, same answer (what another node computes from the same config).
        assert_eq!(fp, table_fingerprint(&a.clone(), 1021, 7));
        // Another seed, size, weight or address: another table, another fingerprint.
        assert_ne!(fp, table_fingerprint(&a, 1021, 8));
        assert_ne!(fp, table_fingerprint(&a, 1031, 7));
        let heavier = m(&[("198.18.2.11:8080", 2), ("198.18.2.12:8080", 1)]);
        assert_ne!(fp, table_fingerprint(&heavier, 1021, 7));
        let other = m(&[("198.18.2.11:8080", 1), ("198.18.2.13:8080", 1)]);
        assert_ne!(fp, table_fingerprint(&other, 1021, 7));
        // An empty table has a fingerprint too, different from any filled one.
        assert_ne!(fp, table_fingerprint(&[], 1021, 7));
    }

    #[test]
    fn fingerprint_ignores_backend_ids() {
        // Two daemons that gave the same backends different ids (one had a backend added and
        // removed before): the tables they write name other ids, the fingerprint is the same.
        let members = m(&[("198.18.2.11:80", 1), ("198.18.2.12:80", 3)]);
        let cache = FingerprintCache::default();
        let node_a = cache.get(0, members.clone(), 1021, 42);
        let node_b = FingerprintCache::default().get(5, members.clone(), 1021, 42);
        assert_eq!(node_a, node_b);
        // Cached, and recomputed when the members change.
        assert_eq!(cache.get(0, members, 1021, 42), node_a);
        let fewer = m(&[("198.18.2.11:80", 1)]);
        assert_ne!(cache.get(0, fewer, 1021, 42), node_a);
    }

    fn svc(vip: &str, in_table: bool, healthy: bool) -> ServiceReadiness {
        ServiceReadiness {
            vip: vip.parse().unwrap(),
            in_table,
            healthy,
        }
    }

    const READY: NodeReadiness = NodeReadiness {
        attached: true,
        maps_ok: true,
    };

    fn announced(p: &[VipAnnouncement]) -> Vec<String> {
        p.iter()
            .filter(|a| a.announced)
            .map(|a| a.vip.to_string())
            .collect()
    }

    #[test]
    fn plan_announces_what_the_node_can_serve() {
        let services = [
            svc("198.18.100.1", true, true),
            // A VIP with two services: announced while either can serve.
            svc("198.18.100.2", true, false),
            svc("198.18.100.2", true, true),
            // A healthy group is not enough without a backend in the table.
            svc("198.18.100.3", false, true),
            svc("2001:db8:100::1", true, false),
        ];
        let p = plan(&services, READY, &NodeMode::Serving, true);
        assert_eq!(announced(&p), ["198.18.100.1", "198.18.100.2"]);
        let reason = |vip: &str| {
            p.iter()
                .find(|a| a.vip.to_string() == vip)
                .unwrap()
                .reason
                .clone()
        };
        assert_eq!(reason("198.18.100.3"), "no backend in the table");
        assert_eq!(reason("2001:db8:100::1"), "no healthy backend");
        // Without require_healthy, a table is enough.
        let p = plan(&services, READY, &NodeMode::Serving, false);
        assert_eq!(
            announced(&p),
            ["198.18.100.1", "198.18.100.2", "2001:db8:100::1"]
        );
    }

    #[test]
    fn plan_withdraws_everything_when_the_node_cannot_serve() {
        let services = [svc("198.18.100.1", true, true)];
        for (node, mode, why) in [
            (
                NodeReadiness {
                    attached: false,
                    maps_ok: true,
                },
                NodeMode::Serving,
                "XDP not attached everywhere",
            ),
            (
                NodeReadiness {
                    attached: true,
                    maps_ok: false,
                },
                NodeMode::Serving,
                "maps not written (retrying)",
            ),
            (
                READY,
                NodeMode::Drained { why: "test".into() },
                "node drained",
            ),
        ] {
            let p = plan(&services, node, &mode, true);
            assert_eq!(p.len(), 1);
            assert!(!p[0].announced);
            assert_eq!(p[0].reason, why);
        }
    }

    #[test]
    fn drain_ends_when_quiet_when_no_flow_is_open_or_at_the_deadline() {
        let t0 = Instant::now();
        let quiet = Duration::from_secs(5);
        let draining = || NodeMode::Draining {
            deadline: t0 + Duration::from_secs(60),
            packets: None,
            moved: t0,
        };
        // Packets keep arriving: not drained until the deadline.
        let mut mode = draining();
        for s in 0..60 {
            let now = t0 + Duration::from_secs(s);
            assert_eq!(mode.observe(now, s * 10, 3, quiet), None, "at {s}s");
        }
        let msg = mode
            .observe(t0 + Duration::from_secs(60), 600, 3, quiet)
            .unwrap();
        assert!(msg.contains("drain_timeout"), "{msg}");
        assert_eq!(mode.name(), "drained");
        // Nothing arrives for 5 s.
        let mut mode = draining();
        assert_eq!(mode.observe(t0, 100, 3, quiet), None);
        assert_eq!(
            mode.observe(t0 + Duration::from_secs(4), 100, 3, quiet),
            None
        );
        let msg = mode
            .observe(t0 + Duration::from_secs(5), 100, 3, quiet)
            .unwrap();
        assert!(msg.contains("no packet"), "{msg}");
        // No flow open.
        let mut mode = draining();
        assert!(mode
            .observe(t0, 100, 0, quiet)
            .unwrap()
            .contains("no flow is open"));
        // Serving and drained nodes have nothing to observe.
        assert_eq!(NodeMode::Serving.observe(t0, 1, 0, quiet), None);
    }

    #[test]
    fn routes_are_blackholes_of_protocol_88_in_the_table() {
        for (vip, len) in [("198.18.100.1", 32), ("2001:db8:100::1", 128)] {
            let ip: IpAddr = vip.parse().unwrap();
            for table in [100, 1000] {
                let r = vip_route(ip, table);
                assert_eq!(r.header.kind, RouteType::BlackHole);
                assert_eq!(r.header.destination_prefix_length, len);
                assert_eq!(our_vip(&r, table), Some(ip), "{vip} table {table}");
                assert_eq!(our_vip(&r, table + 1), None);
            }
            let mut other = vip_route(ip, 100);
            other.header.protocol = RouteProtocol::Bird;
            assert_eq!(our_vip(&other, 100), None, "another protocol's route");
        }
    }

    #[tokio::test]
    async fn bird_probe_reports_what_it_finds() {
        let dir = tempfile::tempdir().unwrap();
        // No socket: unreachable, with the path.
        let missing = dir.path().join("none.ctl");
        let s = probe_bird(&missing).await;
        assert!(
            s.starts_with("unreachable at ") && s.contains("none.ctl"),
            "{s}"
        );
        // A socket that greets like BIRD.
        let path = dir.path().join("bird.ctl");
        let l = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let (mut c, _) = l.accept().await.unwrap();
            c.write_all(b"0001 BIRD 2.0.12 ready.\n").await.unwrap();
            // A second one that never says anything.
            let (_c2, _) = l.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(3)).await;
        });
        assert_eq!(probe_bird(&path).await, "up (BIRD 2.0.12 ready.)");
        let t = Instant::now();
        let s = probe_bird(&path).await;
        assert!(s.contains("no greeting within 1s"), "{s}");
        assert!(t.elapsed() < Duration::from_secs(3), "the probe is bounded");
        server.abort();
    }

    #[test]
    fn drain_marker_sits_beside_the_state_file() {
        assert_eq!(
            drain_marker(Path::new("/run/xlb/state.json")),
            PathBuf::from("/run/xlb/state.json.drained")
        );
    }
}
