//! `xlb flows` and `xlb lookup`: the connection table as an operator reads it, and where one
//! flow goes and why.
//!
//! The owner loop answers only a [`FlowContext`] (names, ids, sizes, pin paths: no map
//! reads); the API then reads the pinned maps on a blocking thread ([`list`], [`lookup`]),
//! so a large table never holds up the daemon. `flows` reads `CONNTRACK` with
//! `BPF_MAP_LOOKUP_BATCH` and stops once `limit` entries matched; `lookup` reads one
//! `SERVICES`, `CONNTRACK`, `MAGLEV` and `BACKENDS` element each, as the data path does for a
//! packet of that flow (README, "What the data path does with each packet").
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    ops::ControlFlow,
    os::fd::AsFd,
    path::PathBuf,
    time::Duration,
};

use aya::maps::{Array, HashMap, Map, MapData};
use lb_common::{
    BackendInfo, CtValue, FlowKey, ServiceInfo, ServiceKey, BE_F_ACTIVE, BE_F_ESTABLISHED_OK,
    CT_F_ANSWERED, CT_F_CLOSING, MAP_BACKENDS, MAP_CONNTRACK, MAP_MAGLEV, MAP_SERVICES,
    MAP_UNCONFIRMED, NO_BACKEND, PROTO_TCP, PROTO_UDP, SVC_F_EMPTY,
};
use serde::{Deserialize, Serialize};

use crate::{
    batch,
    endpoint::Endpoint,
    sweep::{self, SweepConfig, Verdict},
};

/// `--limit` when none is given.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `--limit`.
pub const MAX_LIMIT: usize = 100_000;
/// Entries read per `BPF_MAP_LOOKUP_BATCH` call.
const CHUNK: usize = 4096;

/// A service as the flows name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowService {
    pub id: u32,
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: u8,
}

/// A backend id as the flows name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowBackend {
    pub group: String,
    pub addr: IpAddr,
    pub port: u16,
    /// `healthy`, `draining`, ...
    pub state: String,
}

/// What the owner loop knows that the map reads need: answered without reading a map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowContext {
    /// Where the maps are pinned (None: not pinned, nothing to read).
    pub pin_dir: Option<PathBuf>,
    pub ring_size: u32,
    pub hash_seed: u32,
    pub idle: SweepConfig,
    pub services: Vec<FlowService>,
    /// By backend id.
    pub backends: BTreeMap<u32, FlowBackend>,
}

/// Why flows could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FlowsError {
    #[error("the maps are not pinned: flows cannot be read")]
    NotPinned,
    #[error("opening map {name}: {source}")]
    Open {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("reading {name}: {source}")]
    Read {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// `GET /v1/flows` query.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowsQuery {
    /// Only flows of this service (by name).
    #[serde(default)]
    pub service: Option<String>,
    /// Only flows pinned to this backend: `ADDR` or `ADDR:PORT`.
    #[serde(default)]
    pub backend: Option<String>,
    /// At most this many (1 - [`MAX_LIMIT`], default [`DEFAULT_LIMIT`]).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// One connection-table entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowEntry {
    /// `tcp` or `udp`.
    pub protocol: String,
    pub client: SocketAddr,
    /// The VIP and service port the client sent to.
    pub vip: SocketAddr,
    /// The service's name (None: its id names no service now).
    pub service: Option<String>,
    pub backend_id: u32,
    /// The backend's target group and address (None: its id is free, the backend is gone).
    pub group: Option<String>,
    pub backend: Option<SocketAddr>,
    /// The backend's state (`healthy`, `draining`, ...); `gone` when its id is free.
    pub backend_state: String,
    /// Seconds since a client packet of the flow was last seen (to 0.1 s: the data path
    /// refreshes the time at most every 100 ms). The table records no start time.
    pub idle_secs: f64,
    /// `open`; `closing` (a FIN or RST was seen, still talking); `closed` (FIN or RST and
    /// 2 s quiet: no longer counted as open, deleted after 10 s); `expired` (idle past its
    /// protocol's timeout: the next sweep deletes it).
    pub state: String,
    /// The backend answered the flow (a SYN-ACK for TCP, any reply for UDP).
    pub answered: bool,
    /// The entry is in `UNCONFIRMED` (a TCP handshake before the client's ACK, a UDP flow
    /// before its first reply), not in the connection table.
    #[serde(default)]
    pub unconfirmed: bool,
}

/// `GET /v1/flows` answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowList {
    pub flows: Vec<FlowEntry>,
    /// Entries read to find them.
    pub scanned: u64,
    /// The limit was reached: there may be more.
    pub truncated: bool,
    pub limit: usize,
}

/// `GET /v1/lookup` query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupQuery {
    /// `tcp` or `udp`.
    pub protocol: String,
    /// `ADDR:PORT` (`[V6]:PORT`).
    pub client: String,
    pub vip: String,
}

/// How a flow is placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// Its connection-table entry names a backend that may keep established flows.
    ConnectionTable,
    /// No usable entry: the service's live Maglev table picks (and the entry is written).
    Maglev,
    /// Dropped: no usable backend.
    Dropped,
    /// Not a service's VIP, port and protocol: passed to the kernel untouched.
    NotAService,
}

/// `GET /v1/lookup` answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LookupAnswer {
    pub protocol: String,
    pub client: SocketAddr,
    pub vip: SocketAddr,
    pub service: Option<String>,
    pub via: Via,
    /// The backend the flow's next packet goes to.
    pub backend_id: Option<u32>,
    pub group: Option<String>,
    pub backend: Option<SocketAddr>,
    /// The flow's connection-table entry, if it has one.
    pub entry: Option<FlowEntry>,
    /// Whether that entry's backend may keep established flows (`BE_F_ESTABLISHED_OK`).
    pub entry_usable: Option<bool>,
    /// The flow hash, the live table (0/1), the slot it selects (hash mod table size) and
    /// the backend id written there: what a packet without a usable entry gets.
    pub hash: Option<u32>,
    pub table: Option<u32>,
    pub slot: Option<u32>,
    pub slot_backend_id: Option<u32>,
    /// One sentence saying why.
    pub reason: String,
}

fn proto_name(p: u8) -> String {
    match p {
        PROTO_TCP => "tcp".into(),
        PROTO_UDP => "udp".into(),
        n => format!("proto {n}"),
    }
}

fn proto_number(s: &str) -> Result<u8, FlowsError> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(PROTO_TCP),
        "udp" => Ok(PROTO_UDP),
        other => Err(FlowsError::Invalid(format!(
            "unknown protocol {other:?} (expected tcp or udp)"
        ))),
    }
}

/// The address in a map's wire form (IPv4 in the first 4 bytes).
fn ip_of(addr: &[u8; 16], family: u8) -> IpAddr {
    if family == lb_common::AF_INET6 {
        IpAddr::from(*addr)
    } else {
        IpAddr::from([addr[0], addr[1], addr[2], addr[3]])
    }
}

/// The `CONNTRACK` key of the flow `client` → `vip`.
pub fn flow_key(client: SocketAddr, vip: SocketAddr, proto: u8) -> FlowKey {
    let (src, family) = crate::dataplane::addr_bytes(client.ip());
    let (dst, _) = crate::dataplane::addr_bytes(vip.ip());
    FlowKey {
        src,
        dst,
        sport: client.port().to_be_bytes(),
        dport: vip.port().to_be_bytes(),
        proto,
        family,
        _pad: [0; 2],
    }
}

fn parse_socket(what: &str, s: &str) -> Result<SocketAddr, FlowsError> {
    s.trim().parse::<SocketAddr>().map_err(|_| {
        FlowsError::Invalid(format!(
            "{what} {s:?} is not ADDR:PORT (IPv6: [2001:db8::1]:443)"
        ))
    })
}

/// The ids a filter accepts; None: any.
type IdFilter = Option<Vec<u32>>;

impl LookupQuery {
    /// Protocol number, client and VIP; an error for a query that names no flow.
    pub fn parse(&self) -> Result<(u8, SocketAddr, SocketAddr), FlowsError> {
        let proto = proto_number(&self.protocol)?;
        let client = parse_socket("client", &self.client)?;
        let vip = parse_socket("VIP", &self.vip)?;
        if client.is_ipv4() != vip.is_ipv4() {
            return Err(FlowsError::Invalid(
                "the client and the VIP must be of one family (IPv4 or IPv6)".into(),
            ));
        }
        Ok((proto, client, vip))
    }
}

impl FlowContext {
    fn service(&self, id: u32) -> Option<&FlowService> {
        self.services.iter().find(|s| s.id == id)
    }

    /// An entry as `xlb flows` shows it, at `now_ns` (`CLOCK_MONOTONIC_COARSE`).
    pub fn entry(&self, key: &FlowKey, ct: &CtValue, now_ns: u64) -> FlowEntry {
        let b = self.backends.get(&ct.backend_id);
        let idle_ns = now_ns.saturating_sub(ct.last_seen_ns);
        let state = match self.idle.verdict(key.proto, ct, now_ns) {
            Verdict::Expired => "expired",
            Verdict::Ended => "closed",
            Verdict::Open if key.proto == PROTO_TCP && ct.flags & CT_F_CLOSING != 0 => "closing",
            Verdict::Open => "open",
        };
        FlowEntry {
            protocol: proto_name(key.proto),
            client: SocketAddr::new(ip_of(&key.src, key.family), u16::from_be_bytes(key.sport)),
            vip: SocketAddr::new(ip_of(&key.dst, key.family), u16::from_be_bytes(key.dport)),
            service: self.service(ct.service_id).map(|s| s.name.clone()),
            backend_id: ct.backend_id,
            group: b.map(|b| b.group.clone()),
            backend: b.map(|b| SocketAddr::new(b.addr, b.port)),
            backend_state: b.map_or_else(|| "gone".to_string(), |b| b.state.clone()),
            idle_secs: (idle_ns / 100_000_000) as f64 / 10.0,
            state: state.into(),
            answered: ct.flags & CT_F_ANSWERED != 0,
            unconfirmed: false,
        }
    }

    /// The filter of a flows query: service ids and backend ids it accepts (None: any).
    fn filter(&self, q: &FlowsQuery) -> Result<(IdFilter, IdFilter), FlowsError> {
        let services = match &q.service {
            None => None,
            Some(name) => {
                let ids: Vec<u32> = self
                    .services
                    .iter()
                    .filter(|s| s.name == *name)
                    .map(|s| s.id)
                    .collect();
                if ids.is_empty() {
                    return Err(FlowsError::Invalid(format!("no service named {name:?}")));
                }
                Some(ids)
            }
        };
        let backends = match &q.backend {
            None => None,
            Some(text) => {
                let e: Endpoint = text
                    .parse()
                    .map_err(|e: crate::endpoint::EndpointError| FlowsError::Invalid(e.0))?;
                let ids: Vec<u32> = self
                    .backends
                    .iter()
                    .filter(|(_, b)| b.addr == e.addr && e.port.is_none_or(|p| p == b.port))
                    .map(|(id, _)| *id)
                    .collect();
                if ids.is_empty() {
                    return Err(FlowsError::Invalid(format!("no backend at {text}")));
                }
                Some(ids)
            }
        };
        Ok((services, backends))
    }
}

fn open_map(dir: &std::path::Path, name: &'static str) -> Result<Map, FlowsError> {
    let open = |source| FlowsError::Open { name, source };
    let data = MapData::from_pin(dir.join(name)).map_err(open)?;
    Map::from_map_data(data).map_err(open)
}

/// `xlb flows`: the entries `q` selects, at most its limit.
pub fn list(ctx: &FlowContext, q: &FlowsQuery) -> Result<FlowList, FlowsError> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(FlowsError::Invalid(format!(
            "limit {limit} is out of range (1-{MAX_LIMIT})"
        )));
    }
    let (services, backends) = ctx.filter(q)?;
    let dir = ctx.pin_dir.as_deref().ok_or(FlowsError::NotPinned)?;
    let now = sweep::monotonic_coarse_ns();
    let mut flows = Vec::new();
    let mut truncated = false;
    let mut scanned = 0;
    // The connection table, then the flows waiting in `UNCONFIRMED` (when this version of
    // the data path has it).
    for name in [MAP_CONNTRACK, MAP_UNCONFIRMED] {
        if truncated || (name == MAP_UNCONFIRMED && !dir.join(name).exists()) {
            continue;
        }
        let map = open_map(dir, name)?;
        let data: &MapData = match &map {
            Map::LruHashMap(d) | Map::HashMap(d) => d,
            _ => return Err(FlowsError::Invalid(format!("{name} is not a hash map"))),
        };
        let unconfirmed = name == MAP_UNCONFIRMED;
        scanned += batch::lookup_batch::<FlowKey, CtValue>(data.fd().as_fd(), CHUNK, |ks, vs| {
            for (k, v) in ks.iter().zip(vs) {
                if services
                    .as_ref()
                    .is_some_and(|s| !s.contains(&v.service_id))
                    || backends
                        .as_ref()
                        .is_some_and(|b| !b.contains(&v.backend_id))
                {
                    continue;
                }
                if flows.len() == limit {
                    truncated = true;
                    return ControlFlow::Break(());
                }
                let mut e = ctx.entry(k, v, now);
                e.unconfirmed = unconfirmed;
                flows.push(e);
            }
            ControlFlow::Continue(())
        })
        .map_err(|source| FlowsError::Read { name, source })?;
    }
    flows.sort_by(|a, b| {
        (a.service.as_deref(), a.client.ip(), a.client.port()).cmp(&(
            b.service.as_deref(),
            b.client.ip(),
            b.client.port(),
        ))
    });
    Ok(FlowList {
        flows,
        scanned,
        truncated,
        limit,
    })
}

/// The map elements a lookup reads: the live maps ([`PinnedMaps`]) or a fake (tests).
pub trait LookupMaps {
    fn service(&self, key: &ServiceKey) -> Option<ServiceInfo>;
    fn flow(&self, key: &FlowKey) -> Option<CtValue>;
    /// The flow's entry in `UNCONFIRMED`.
    fn unconfirmed(&self, key: &FlowKey) -> Option<CtValue>;
    fn backend(&self, id: u32) -> Option<BackendInfo>;
    fn maglev(&self, index: u32) -> Option<u32>;
}

/// The pinned maps a lookup reads.
pub struct PinnedMaps {
    services: HashMap<MapData, ServiceKey, ServiceInfo>,
    conntrack: HashMap<MapData, FlowKey, CtValue>,
    /// None for a data path without the map.
    unconfirmed: Option<HashMap<MapData, FlowKey, CtValue>>,
    backends: Array<MapData, BackendInfo>,
    maglev: Array<MapData, u32>,
}

impl PinnedMaps {
    pub fn open(ctx: &FlowContext) -> Result<Self, FlowsError> {
        let dir = ctx.pin_dir.as_deref().ok_or(FlowsError::NotPinned)?;
        let conv = |name| move |source| FlowsError::Open { name, source };
        Ok(Self {
            services: HashMap::try_from(open_map(dir, MAP_SERVICES)?)
                .map_err(conv(MAP_SERVICES))?,
            conntrack: HashMap::try_from(open_map(dir, MAP_CONNTRACK)?)
                .map_err(conv(MAP_CONNTRACK))?,
            unconfirmed: if dir.join(MAP_UNCONFIRMED).exists() {
                Some(
                    HashMap::try_from(open_map(dir, MAP_UNCONFIRMED)?)
                        .map_err(conv(MAP_UNCONFIRMED))?,
                )
            } else {
                None
            },
            backends: Array::try_from(open_map(dir, MAP_BACKENDS)?).map_err(conv(MAP_BACKENDS))?,
            maglev: Array::try_from(open_map(dir, MAP_MAGLEV)?).map_err(conv(MAP_MAGLEV))?,
        })
    }
}

impl LookupMaps for PinnedMaps {
    fn service(&self, key: &ServiceKey) -> Option<ServiceInfo> {
        self.services.get(key, 0).ok()
    }
    fn flow(&self, key: &FlowKey) -> Option<CtValue> {
        self.conntrack.get(key, 0).ok()
    }
    fn unconfirmed(&self, key: &FlowKey) -> Option<CtValue> {
        self.unconfirmed.as_ref()?.get(key, 0).ok()
    }
    fn backend(&self, id: u32) -> Option<BackendInfo> {
        self.backends.get(&id, 0).ok()
    }
    fn maglev(&self, index: u32) -> Option<u32> {
        self.maglev.get(&index, 0).ok()
    }
}

/// `xlb lookup`: where the next packet of `q`'s flow goes and why, as the data path decides
/// (`forward` in lb-ebpf/src/prog.rs): a connection-table entry whose backend may keep
/// established flows wins; otherwise the live Maglev table's slot `hash mod size` picks, and
/// a backend there that may not take new flows means the packet is dropped.
pub fn lookup(
    ctx: &FlowContext,
    maps: &impl LookupMaps,
    q: &LookupQuery,
    now_ns: u64,
) -> Result<LookupAnswer, FlowsError> {
    let (proto, client, vip) = q.parse()?;
    let key = flow_key(client, vip, proto);
    let mut a = LookupAnswer {
        protocol: proto_name(proto),
        client,
        vip,
        service: None,
        via: Via::NotAService,
        backend_id: None,
        group: None,
        backend: None,
        entry: None,
        entry_usable: None,
        hash: None,
        table: None,
        slot: None,
        slot_backend_id: None,
        reason: String::new(),
    };
    let skey = ServiceKey {
        addr: key.dst,
        port: key.dport,
        proto,
        family: key.family,
    };
    let Some(svc) = maps.service(&skey) else {
        a.reason = format!(
            "{vip} {} is not a service: packets are passed to the kernel untouched",
            a.protocol
        );
        return Ok(a);
    };
    a.service = ctx.service(svc.id).map(|s| s.name.clone());
    let set_backend = |a: &mut LookupAnswer, id: u32| {
        a.backend_id = Some(id);
        if let Some(b) = ctx.backends.get(&id) {
            a.group = Some(b.group.clone());
            a.backend = Some(SocketAddr::new(b.addr, b.port));
        }
    };
    let describe = |id: u32| match ctx.backends.get(&id) {
        Some(b) => format!(
            "{} ({}, {})",
            SocketAddr::new(b.addr, b.port),
            b.group,
            b.state
        ),
        None => format!("backend id {id} (gone)"),
    };

    let mut why_not_entry = String::from("the flow has no connection-table entry");
    // The connection table first, then `UNCONFIRMED`, as the data path looks.
    let found = match maps.flow(&key) {
        Some(ct) => Some((ct, false)),
        None => maps.unconfirmed(&key).map(|ct| (ct, true)),
    };
    if let Some((ct, unconfirmed)) = found {
        let usable = maps
            .backend(ct.backend_id)
            .is_some_and(|b| b.flags & BE_F_ESTABLISHED_OK != 0);
        let mut e = ctx.entry(&key, &ct, now_ns);
        e.unconfirmed = unconfirmed;
        a.entry = Some(e);
        a.entry_usable = Some(usable);
        let which = if unconfirmed {
            "its entry in UNCONFIRMED (a handshake, or a UDP flow not answered yet)"
        } else {
            "its connection-table entry"
        };
        if usable {
            a.via = Via::ConnectionTable;
            set_backend(&mut a, ct.backend_id);
            a.reason = format!(
                "{which} names {}, which keeps established flows",
                describe(ct.backend_id)
            );
            return Ok(a);
        }
        why_not_entry = format!(
            "{which} names {}, which may no longer keep established flows",
            describe(ct.backend_id)
        );
    }
    if svc.flags & SVC_F_EMPTY != 0 {
        a.via = Via::Dropped;
        a.reason = format!("{why_not_entry}, and the service has no backend: dropped");
        return Ok(a);
    }
    let ring = ctx.ring_size;
    let h = lb_common::hash::flow_hash(
        &key.src,
        &key.dst,
        key.sport,
        key.dport,
        key.proto,
        ctx.hash_seed,
    );
    a.hash = Some(h);
    a.table = Some(svc.slot);
    let Some(pos) = h.checked_rem(ring) else {
        a.via = Via::Dropped;
        a.reason = "the Maglev table size is 0".into();
        return Ok(a);
    };
    a.slot = Some(pos);
    let id = maps
        .maglev(lb_common::maglev_index(svc.id, svc.slot, ring, pos))
        .unwrap_or(NO_BACKEND);
    a.slot_backend_id = (id != NO_BACKEND).then_some(id);
    let active = maps.backend(id).is_some_and(|b| b.flags & BE_F_ACTIVE != 0);
    if !active {
        a.via = Via::Dropped;
        a.reason = if id == NO_BACKEND {
            format!("{why_not_entry}, and Maglev slot {pos} names no backend: dropped")
        } else {
            format!(
                "{why_not_entry}, and Maglev slot {pos} names {}, which takes no new flows: dropped",
                describe(id)
            )
        };
        return Ok(a);
    }
    a.via = Via::Maglev;
    set_backend(&mut a, id);
    a.reason = format!(
        "{why_not_entry}: Maglev slot {pos} of table {} (flow hash {h:#010x} mod {ring}) \
         names {}",
        svc.slot,
        describe(id)
    );
    Ok(a)
}

// ---- rendering ----

fn idle_text(secs: f64) -> String {
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        crate::cli::format_since(secs)
    }
}

/// `xlb flows` as a human reads it.
pub fn render_flows(list: &FlowList) -> String {
    let mut out = String::new();
    if list.flows.is_empty() {
        let _ = writeln!(out, "no flows ({} entries read)", list.scanned);
        return out;
    }
    let mut rows = vec![[
        "PROTO", "CLIENT", "SERVICE", "VIP", "BACKEND", "IDLE", "STATE",
    ]
    .map(String::from)
    .to_vec()];
    for f in &list.flows {
        let mut state = f.state.clone();
        if f.answered {
            state.push_str(", answered");
        }
        if f.unconfirmed {
            state.push_str(", unconfirmed");
        }
        rows.push(vec![
            f.protocol.clone(),
            f.client.to_string(),
            f.service.clone().unwrap_or_else(|| "-".into()),
            f.vip.to_string(),
            match (&f.backend, &f.group) {
                (Some(b), Some(g)) => format!("{b} ({g}, {})", f.backend_state),
                _ => format!("id {} (gone)", f.backend_id),
            },
            idle_text(f.idle_secs),
            state,
        ]);
    }
    crate::cli::render_rows(&rows, &mut out);
    if list.truncated {
        let _ = writeln!(
            out,
            "(the first {} matching flows; more may exist: raise --limit or filter)",
            list.limit
        );
    }
    out
}

/// `xlb lookup` as a human reads it.
pub fn render_lookup(a: &LookupAnswer) -> String {
    let mut out = String::new();
    let target = match (a.via, a.backend) {
        (Via::ConnectionTable | Via::Maglev, Some(b)) => {
            format!("{b} ({})", a.group.as_deref().unwrap_or("-"))
        }
        (Via::ConnectionTable | Via::Maglev, None) => {
            format!("backend id {}", a.backend_id.unwrap_or(NO_BACKEND))
        }
        (Via::Dropped, _) => "dropped".into(),
        (Via::NotAService, _) => "not balanced (passed to the kernel)".into(),
    };
    let _ = writeln!(
        out,
        "{} {} -> {}{}: {target}",
        a.protocol,
        a.client,
        a.vip,
        a.service
            .as_ref()
            .map_or(String::new(), |s| format!(" (service {s})")),
    );
    let _ = writeln!(out, "  why: {}", a.reason);
    if let Some(e) = &a.entry {
        let _ = writeln!(
            out,
            "  entry: backend id {}, idle {}, {}{}{}",
            e.backend_id,
            idle_text(e.idle_secs),
            e.state,
            if e.answered { ", answered" } else { "" },
            if e.unconfirmed {
                " (in UNCONFIRMED)"
            } else {
                ""
            }
        );
    }
    if let (Some(slot), Some(table)) = (a.slot, a.table) {
        let _ = writeln!(
            out,
            "  maglev: table {table}, slot {slot}, backend id {}",
            a.slot_backend_id
                .map_or_else(|| "none".to_string(), |id| id.to_string())
        );
    }
    out
}

/// The idle timeouts as the context carries them.
pub fn idle_config(tcp: Duration, udp: Duration) -> SweepConfig {
    SweepConfig {
        tcp_idle: tcp,
        udp_idle: udp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap as Map;

    const S: u64 = 1_000_000_000;

    fn ctx() -> FlowContext {
        FlowContext {
            pin_dir: None,
            ring_size: 1021,
            hash_seed: 7,
            idle: idle_config(Duration::from_secs(350), Duration::from_secs(120)),
            services: vec![FlowService {
                id: 3,
                name: "web".into(),
                vip: "198.18.100.1".parse().unwrap(),
                port: 80,
                protocol: PROTO_TCP,
            }],
            backends: [
                (
                    0,
                    FlowBackend {
                        group: "g".into(),
                        addr: "198.18.2.11".parse().unwrap(),
                        port: 8080,
                        state: "healthy".into(),
                    },
                ),
                (
                    1,
                    FlowBackend {
                        group: "g".into(),
                        addr: "198.18.2.12".parse().unwrap(),
                        port: 8080,
                        state: "draining".into(),
                    },
                ),
            ]
            .into(),
        }
    }

    #[derive(Default)]
    struct Fake {
        services: Map<ServiceKey, ServiceInfo>,
        flows: Map<FlowKey, CtValue>,
        unconfirmed: Map<FlowKey, CtValue>,
        backends: Map<u32, BackendInfo>,
        maglev: Map<u32, u32>,
    }

    impl LookupMaps for Fake {
        fn service(&self, key: &ServiceKey) -> Option<ServiceInfo> {
            self.services.get(key).copied()
        }
        fn flow(&self, key: &FlowKey) -> Option<CtValue> {
            self.flows.get(key).copied()
        }
        fn unconfirmed(&self, key: &FlowKey) -> Option<CtValue> {
            self.unconfirmed.get(key).copied()
        }
        fn backend(&self, id: u32) -> Option<BackendInfo> {
            // An array: every id below its size reads (all zero when free).
            (id < lb_common::MAX_BACKENDS)
                .then(|| self.backends.get(&id).copied().unwrap_or_default())
        }
        fn maglev(&self, index: u32) -> Option<u32> {
            self.maglev.get(&index).copied()
        }
    }

    const CLIENT: &str = "198.18.1.2:40000";
    const VIP: &str = "198.18.100.1:80";

    fn q(proto: &str, client: &str, vip: &str) -> LookupQuery {
        LookupQuery {
            protocol: proto.into(),
            client: client.into(),
            vip: vip.into(),
        }
    }

    /// The web service (id 3, live table 1), backend 0 active, 1 draining, and the Maglev
    /// slot of the test flow naming `slot_backend`.
    fn fake(slot_backend: u32) -> (Fake, u32) {
        let c = ctx();
        let mut f = Fake::default();
        let key = flow_key(CLIENT.parse().unwrap(), VIP.parse().unwrap(), PROTO_TCP);
        f.services.insert(
            ServiceKey {
                addr: key.dst,
                port: key.dport,
                proto: PROTO_TCP,
                family: key.family,
            },
            ServiceInfo {
                id: 3,
                slot: 1,
                flags: 0,
                _pad: 0,
            },
        );
        f.backends.insert(
            0,
            BackendInfo {
                flags: BE_F_ACTIVE | BE_F_ESTABLISHED_OK,
                ..Default::default()
            },
        );
        f.backends.insert(
            1,
            BackendInfo {
                flags: BE_F_ESTABLISHED_OK,
                ..Default::default()
            },
        );
        let h = lb_common::hash::flow_hash(
            &key.src,
            &key.dst,
            key.sport,
            key.dport,
            key.proto,
            c.hash_seed,
        );
        let pos = h % c.ring_size;
        f.maglev.insert(
            lb_common::maglev_index(3, 1, c.ring_size, pos),
            slot_backend,
        );
        (f, pos)
    }

    #[test]
    fn without_an_entry_the_live_maglev_slot_decides() {
        let (f, pos) = fake(0);
        let a = lookup(&ctx(), &f, &q("tcp", CLIENT, VIP), 100 * S).unwrap();
        assert_eq!(a.via, Via::Maglev);
        assert_eq!(a.slot, Some(pos));
        assert_eq!(a.table, Some(1));
        assert_eq!(a.backend_id, Some(0));
        assert_eq!(a.backend, Some("198.18.2.11:8080".parse().unwrap()));
        assert!(a.entry.is_none());
        assert!(
            a.reason.contains(&format!("Maglev slot {pos} of table 1")),
            "{}",
            a.reason
        );
        let text = render_lookup(&a);
        assert!(
            text.starts_with(
                "tcp 198.18.1.2:40000 -> 198.18.100.1:80 (service web): 198.18.2.11:8080 (g)"
            ),
            "{text}"
        );
        assert!(
            text.contains(&format!("maglev: table 1, slot {pos}, backend id 0")),
            "{text}"
        );
    }

    #[test]
    fn an_entry_wins_while_its_backend_keeps_established_flows() {
        let (mut f, _) = fake(0);
        let key = flow_key(CLIENT.parse().unwrap(), VIP.parse().unwrap(), PROTO_TCP);
        let ct = CtValue {
            backend_id: 1,
            service_id: 3,
            last_seen_ns: 95 * S,
            flags: CT_F_ANSWERED,
            ..Default::default()
        };
        f.flows.insert(key, ct);
        let a = lookup(&ctx(), &f, &q("TCP", CLIENT, VIP), 100 * S).unwrap();
        assert_eq!(a.via, Via::ConnectionTable);
        assert_eq!(a.backend_id, Some(1), "the draining backend keeps its flow");
        assert_eq!(a.entry_usable, Some(true));
        let e = a.entry.as_ref().unwrap();
        assert_eq!(
            (e.idle_secs, e.state.as_str(), e.answered),
            (5.0, "open", true)
        );
        assert!(
            a.reason.contains("198.18.2.12:8080 (g, draining)"),
            "{}",
            a.reason
        );
        // A handshake in UNCONFIRMED counts as well, after the connection table.
        let mut u = f.flows.remove(&key).unwrap();
        u.backend_id = 0;
        f.unconfirmed.insert(key, u);
        let a = lookup(&ctx(), &f, &q("tcp", CLIENT, VIP), 100 * S).unwrap();
        assert_eq!((a.via, a.backend_id), (Via::ConnectionTable, Some(0)));
        assert!(a.entry.as_ref().unwrap().unconfirmed);
        assert!(a.reason.contains("UNCONFIRMED"), "{}", a.reason);
        assert!(render_lookup(&a).contains("(in UNCONFIRMED)"));
        f.flows.insert(key, ct);
        let a = lookup(&ctx(), &f, &q("tcp", CLIENT, VIP), 100 * S).unwrap();
        assert_eq!(a.backend_id, Some(1), "the connection table first");
        // Its backend gone (id free): the Maglev slot picks again.
        f.backends.remove(&1);
        f.unconfirmed.clear();
        let a = lookup(&ctx(), &f, &q("tcp", CLIENT, VIP), 100 * S).unwrap();
        assert_eq!(
            (a.via, a.backend_id, a.entry_usable),
            (Via::Maglev, Some(0), Some(false))
        );
        assert!(
            a.reason.contains("may no longer keep established flows"),
            "{}",
            a.reason
        );
    }

    #[test]
    fn dropped_and_not_a_service() {
        // The slot names a backend that takes no new flows.
        let (f, _) = fake(1);
        let a = lookup(&ctx(), &f, &q("tcp", CLIENT, VIP), 0).unwrap();
        assert_eq!(
            (a.via, a.backend_id, a.slot_backend_id),
            (Via::Dropped, None, Some(1))
        );
        assert!(render_lookup(&a).contains(": dropped"));
        let (mut f, _) = fake(NO_BACKEND);
        let a = lookup(&ctx(), &f, &q("tcp", CLIENT, VIP), 0).unwrap();
        assert_eq!((a.via, a.slot_backend_id), (Via::Dropped, None));
        for s in f.services.values_mut() {
            s.flags = SVC_F_EMPTY;
        }
        let a = lookup(&ctx(), &f, &q("tcp", CLIENT, VIP), 0).unwrap();
        assert_eq!((a.via, a.slot), (Via::Dropped, None));
        // UDP to the TCP service's address and port: no such service.
        let a = lookup(&ctx(), &f, &q("udp", CLIENT, VIP), 0).unwrap();
        assert_eq!(a.via, Via::NotAService);
        assert!(render_lookup(&a).contains("not balanced"));
    }

    #[test]
    fn bad_queries() {
        let (f, _) = fake(0);
        for (query, want) in [
            (q("sctp", CLIENT, VIP), "unknown protocol"),
            (q("tcp", "198.18.1.2", VIP), "is not ADDR:PORT"),
            (q("tcp", CLIENT, "[2001:db8::1]:80"), "one family"),
        ] {
            let e = lookup(&ctx(), &f, &query, 0).unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
        }
    }

    #[test]
    fn entries_filters_and_rendering() {
        let c = ctx();
        let key = flow_key(CLIENT.parse().unwrap(), VIP.parse().unwrap(), PROTO_TCP);
        let ct = |backend_id, idle: u64, flags| CtValue {
            backend_id,
            service_id: 3,
            last_seen_ns: 1000 * S - idle,
            flags,
            ..Default::default()
        };
        let now = 1000 * S;
        let e = c.entry(&key, &ct(0, S / 2, 0), now);
        assert_eq!(e.client, CLIENT.parse().unwrap());
        assert_eq!(e.vip, VIP.parse().unwrap());
        assert_eq!(e.service.as_deref(), Some("web"));
        assert_eq!((e.idle_secs, e.state.as_str()), (0.5, "open"));
        assert_eq!(c.entry(&key, &ct(0, S, CT_F_CLOSING), now).state, "closing");
        assert_eq!(
            c.entry(&key, &ct(0, 3 * S, CT_F_CLOSING), now).state,
            "closed"
        );
        assert_eq!(c.entry(&key, &ct(0, 400 * S, 0), now).state, "expired");
        let gone = c.entry(&key, &ct(9, 0, 0), now);
        assert_eq!((gone.backend, gone.backend_state.as_str()), (None, "gone"));
        // IPv6 addresses come back whole.
        let k6 = flow_key(
            "[2001:db8:1::2]:5000".parse().unwrap(),
            "[2001:db8:100::1]:80".parse().unwrap(),
            PROTO_TCP,
        );
        assert_eq!(
            c.entry(&k6, &ct(0, 0, 0), now).client.to_string(),
            "[2001:db8:1::2]:5000"
        );

        let filter = |service: Option<&str>, backend: Option<&str>| {
            c.filter(&FlowsQuery {
                service: service.map(String::from),
                backend: backend.map(String::from),
                limit: None,
            })
        };
        assert_eq!(filter(Some("web"), None).unwrap(), (Some(vec![3]), None));
        assert_eq!(
            filter(None, Some("198.18.2.12")).unwrap(),
            (None, Some(vec![1]))
        );
        assert_eq!(
            filter(None, Some("198.18.2.12:8080")).unwrap().1,
            Some(vec![1])
        );
        assert!(filter(None, Some("198.18.2.12:9")).is_err());
        assert!(filter(Some("nope"), None).is_err());
        assert!(filter(None, Some("nonsense")).is_err());
        let bad_limit = list(
            &c,
            &FlowsQuery {
                limit: Some(MAX_LIMIT + 1),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(
            bad_limit.to_string().contains("out of range"),
            "{bad_limit}"
        );

        let list = FlowList {
            flows: vec![e.clone(), gone],
            scanned: 2,
            truncated: true,
            limit: 2,
        };
        let text = render_flows(&list);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("PROTO   CLIENT"), "{text}");
        assert!(
            lines[1].contains("198.18.2.11:8080 (g, healthy)") && lines[1].contains("0.5s"),
            "{text}"
        );
        assert!(lines[2].contains("id 9 (gone)"), "{text}");
        assert!(lines[3].contains("more may exist"), "{text}");
        assert_eq!(
            render_flows(&FlowList {
                flows: vec![],
                scanned: 7,
                truncated: false,
                limit: 100
            }),
            "no flows (7 entries read)\n"
        );
    }
}
