//! DSR health checks through the encapsulation (`[target_group.health_check] target = "vip"`).
//!
//! A check's socket connects to the VIP (the check port) from the node's address toward the
//! backend, with `SO_MARK = HC_MARK_BASE | index` (`health::connect`). The routing this
//! module keeps sends marked packets out of `xlbhc0`:
//!
//! - a veth pair `xlbhc0` / `xlbhc1` (no ARP on `xlbhc0`: its neighbours need no answer;
//!   `xlbhc1` takes nothing, it only keeps the pair up);
//! - `ip rule fwmark HC_MARK_BASE/HC_MARK_MASK lookup 22604` (priority 22604), IPv4 and IPv6;
//! - in table 22604, a default route (IPv4 and IPv6) through `xlbhc0`.
//!
//! The TC egress program `xlb_hc` on `xlbhc0` (attached with tcx) looks the mark up in
//! `HC_TARGETS` and sends the packet to its backend as the service sends its clients' packets
//! (MACs only, IPIP or GUE), out of the interface the FIB names for the backend. The backend
//! answers from the VIP straight to the node's address; xlb's XDP program passes that (its
//! destination is no VIP). Everything is made with netlink (`rtnetlink`), on first use; `xlb
//! stop --cleanup` removes the pair (its routes go with it) and the rules.
use std::{
    collections::{HashMap as StdHashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::Duration,
};

use aya::{
    maps::{HashMap, MapData, PerCpuArray},
    programs::{tc::TcAttachType, SchedClassifier},
    Ebpf, EbpfLoader,
};
use lb_common::{
    HcTarget, DSR_ENCAP_GUE, HC_MARK_BASE, HC_MARK_MASK, MAP_HC_STATS, MAP_HC_TARGETS,
    MAX_BACKENDS, PROG_TC_HC,
};
use netlink_packet_route::{
    route::RouteHeader,
    rule::{RuleAction, RuleAttribute, RuleMessage},
    AddressFamily,
};
use rtnetlink::{LinkUnspec, LinkVeth, RouteMessageBuilder};
use thiserror::Error;
use tracing::{info, warn};

use crate::{
    config::{DsrConfig, Forwarding},
    health::CheckSpec,
};

/// The interface marked packets leave through (where `xlb_hc` runs), and its peer.
pub const LINK: &str = "xlbhc0";
pub const PEER: &str = "xlbhc1";
/// The routing table of marked packets, and the priority of the rules that select it.
pub const TABLE: u32 = 22604;
pub const RULE_PRIORITY: u32 = 22604;

#[derive(Debug, Error)]
pub enum VipCheckError {
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {PROG_TC_HC}: {0}")]
    Program(#[source] aya::programs::ProgramError),
    #[error("map {0}: {1}")]
    Map(&'static str, #[source] aya::maps::MapError),
    #[error("{0} is missing from the eBPF object")]
    Missing(&'static str),
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("more than {MAX_BACKENDS} checked backends through VIPs")]
    TooMany,
}

type Result<T> = std::result::Result<T, VipCheckError>;

/// The `HC_TARGETS` value for checks of the backend at `backend` through a service with
/// `dsr`: the outer source is the lowest host address of `dsr_source_prefix` (`.1`), the GUE
/// source port `0xc000 | index`.
pub fn target(dsr: &DsrConfig, backend: IpAddr, index: u32) -> HcTarget {
    let conf = crate::dsr::map_value(&Forwarding::Dsr(*dsr)).unwrap_or_default();
    let (addr, family) = crate::dataplane::addr_bytes(backend);
    let mut src = conf.src_prefix;
    if u32::from_be_bytes(conf.src_mask) != 0 {
        let i = if backend.is_ipv4() { 3 } else { 15 };
        src[i] |= 1;
    }
    HcTarget {
        backend: addr,
        src,
        family,
        encap: conf.encap,
        gue_port: if conf.encap == DSR_ENCAP_GUE {
            conf.gue_port
        } else {
            [0; 2]
        },
        gue_sport: (0xc000u16 | (index & 0x3fff) as u16).to_be_bytes(),
        _pad: [0; 2],
    }
}

/// The loaded `xlb_hc` program (attached to `xlbhc0`) and its maps.
struct Loaded {
    _ebpf: Ebpf,
    targets: HashMap<MapData, u32, HcTarget>,
    stats: PerCpuArray<MapData, u64>,
}

/// Owner of the marks of the checks through VIPs, of `HC_TARGETS`, and (once a check needs
/// them) of the interface, routes, rules and program.
#[derive(Default)]
pub struct VipChecks {
    loaded: Option<Loaded>,
    /// The last setup error (retried at the next sync).
    error: Option<String>,
    /// (backend, forwarding) → mark index.
    marks: StdHashMap<(IpAddr, DsrConfig), u32>,
    /// What `HC_TARGETS` holds: mark → value.
    written: StdHashMap<u32, HcTarget>,
}

impl VipChecks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Give every check through a VIP its mark (stable while its backend and forwarding
    /// stay), and make `HC_TARGETS` hold exactly those checks' targets; the first time a check
    /// needs it, set up the interface, routing and program (an error is logged and retried
    /// at the next call, after the daemon's next change; the checks fail meanwhile).
    pub fn assign<T>(&mut self, wanted: &mut [(T, CheckSpec, Duration)]) {
        let want = self.marks_for(wanted);
        if want.is_empty() && self.loaded.is_none() {
            return;
        }
        if self.loaded.is_none() {
            match setup() {
                Ok(l) => {
                    info!(link = LINK, table = TABLE, "DSR checks through VIPs set up");
                    self.loaded = Some(l);
                    self.error = None;
                    self.written.clear();
                }
                Err(e) => {
                    let msg = e.to_string();
                    if self.error.as_deref() != Some(&msg) {
                        warn!(error = %msg, "setting up DSR checks through VIPs failed (retrying)");
                    }
                    self.error = Some(msg);
                    // Unmarked, the checks fail at once rather than go wherever the main
                    // routes send the VIP (in a fleet: through another node, to any backend).
                    for (_, spec, _) in wanted.iter_mut() {
                        if let Some(v) = spec.via.as_mut() {
                            v.mark = 0;
                        }
                    }
                    return;
                }
            }
        }
        let Some(l) = self.loaded.as_mut() else {
            return;
        };
        let stale: Vec<u32> = self
            .written
            .keys()
            .filter(|m| !want.contains_key(m))
            .copied()
            .collect();
        for m in stale {
            let _ = l.targets.remove(&m);
            self.written.remove(&m);
        }
        for (m, t) in want {
            if self.written.get(&m) == Some(&t) {
                continue;
            }
            match l.targets.insert(m, t, 0) {
                Ok(()) => {
                    self.written.insert(m, t);
                }
                Err(e) => warn!(error = %e, mark = m, "writing {MAP_HC_TARGETS} failed"),
            }
        }
    }

    /// The mark part of [`Self::assign`]: set every check's mark, and answer what
    /// `HC_TARGETS` must hold.
    fn marks_for<T>(
        &mut self,
        wanted: &mut [(T, CheckSpec, Duration)],
    ) -> StdHashMap<u32, HcTarget> {
        let keys: Vec<(IpAddr, DsrConfig)> = wanted
            .iter()
            .filter_map(|(_, s, _)| Some((s.addr.ip(), s.via.as_ref()?.dsr)))
            .collect();
        let set: HashSet<&(IpAddr, DsrConfig)> = keys.iter().collect();
        self.marks.retain(|k, _| set.contains(k));
        let mut used: HashSet<u32> = self.marks.values().copied().collect();
        let mut next = 1;
        for k in &keys {
            if self.marks.contains_key(k) {
                continue;
            }
            while used.contains(&next) {
                next += 1;
            }
            if next >= MAX_BACKENDS {
                // The check keeps mark 0 and fails (its VIP is not routed to the backend).
                warn!("{}", VipCheckError::TooMany);
                break;
            }
            used.insert(next);
            self.marks.insert(*k, next);
        }
        let mut want: StdHashMap<u32, HcTarget> = StdHashMap::new();
        for (_, s, _) in wanted.iter_mut() {
            let Some(v) = s.via.as_mut() else { continue };
            let Some(&i) = self.marks.get(&(s.addr.ip(), v.dsr)) else {
                continue;
            };
            v.mark = HC_MARK_BASE | i;
            want.insert(v.mark, target(&v.dsr, s.addr.ip(), i));
        }
        want
    }

    /// `xlb_hc`'s counters summed over CPUs, as `hc_sent`, `hc_passed`, `hc_dropped` (for
    /// `xlb status`'s global counters); none before setup.
    pub fn counters(&self) -> Vec<(String, u64)> {
        let Some(l) = self.loaded.as_ref() else {
            return Vec::new();
        };
        lb_common::hc::NAMES
            .iter()
            .zip(0u32..)
            .map(|(n, i)| {
                let v = l.stats.get(&i, 0).map(|v| v.iter().sum::<u64>());
                (format!("hc_{n}"), v.unwrap_or(0))
            })
            .collect()
    }
}

/// Run `f` on a current-thread runtime of its own, on a thread of its own (callers may be
/// inside the daemon's runtime).
fn blocking<R: Send + 'static>(
    f: impl FnOnce(rtnetlink::Handle) -> std::pin::Pin<Box<dyn std::future::Future<Output = R> + Send>>
        + Send
        + 'static,
) -> std::result::Result<R, String> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            Ok(f(handle).await)
        })
    })
    .join()
    .map_err(|_| "the netlink thread panicked".to_string())?
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> VipCheckError {
    let what = what.into();
    move |source| VipCheckError::Netlink { what, source }
}

fn exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::EEXIST)
}

/// The rule of `family` (`ip rule fwmark BASE/MASK lookup TABLE priority PRIO`).
fn rule(family: AddressFamily) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header.family = family;
    m.header.table = RouteHeader::RT_TABLE_UNSPEC;
    m.header.action = RuleAction::ToTable;
    m.attributes = vec![
        RuleAttribute::Table(TABLE),
        RuleAttribute::Priority(RULE_PRIORITY),
        RuleAttribute::FwMark(HC_MARK_BASE),
        RuleAttribute::FwMask(HC_MARK_MASK),
    ];
    m
}

fn ifindex(name: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(name).map_err(|e| VipCheckError::Io {
        what: format!("interface {name}"),
        source: e.into(),
    })
}

fn write_sysctl(path: &str, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|source| VipCheckError::Io {
        what: format!("writing {path}"),
        source,
    })
}

async fn setup_routing(handle: rtnetlink::Handle) -> Result<()> {
    if nix::net::if_::if_nametoindex(LINK).is_err() {
        handle
            .link()
            .add(LinkVeth::new(LINK, PEER).build())
            .execute()
            .await
            .or_else(|e| if exists(&e) { Ok(()) } else { Err(e) })
            .map_err(nl(format!("creating {LINK}")))?;
    }
    let link = ifindex(LINK)?;
    let peer = ifindex(PEER)?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(link).arp(false).up().build())
        .execute()
        .await
        .map_err(nl(format!("setting {LINK} up")))?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(peer).up().build())
        .execute()
        .await
        .map_err(nl(format!("setting {PEER} up")))?;
    // `xlb_hc` looks the backend up in the FIB as if the packet came in on `xlbhc0`: that
    // needs forwarding there (the node forwards anyway).
    write_sysctl(&format!("/proc/sys/net/ipv4/conf/{LINK}/forwarding"), "1")?;
    let v6 = std::path::Path::new(&format!("/proc/sys/net/ipv6/conf/{LINK}")).exists();
    if v6 {
        write_sysctl(&format!("/proc/sys/net/ipv6/conf/{LINK}/forwarding"), "1")?;
    }
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        if family == AddressFamily::Inet6 && !v6 {
            continue;
        }
        let mut req = handle.rule().add();
        *req.message_mut() = rule(family);
        req.execute()
            .await
            .or_else(|e| if exists(&e) { Ok(()) } else { Err(e) })
            .map_err(nl(format!("adding the fwmark rule ({family:?})")))?;
    }
    let v4_route = RouteMessageBuilder::<Ipv4Addr>::new()
        .table_id(TABLE)
        .output_interface(link)
        .build();
    handle
        .route()
        .add(v4_route)
        .replace()
        .execute()
        .await
        .map_err(nl(format!("adding the IPv4 route of table {TABLE}")))?;
    if v6 {
        let v6_route = RouteMessageBuilder::<Ipv6Addr>::new()
            .table_id(TABLE)
            .output_interface(link)
            .build();
        handle
            .route()
            .add(v6_route)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("adding the IPv6 route of table {TABLE}")))?;
    }
    Ok(())
}

fn setup() -> Result<Loaded> {
    blocking(|h| Box::pin(setup_routing(h))).map_err(|e| VipCheckError::Io {
        what: "netlink".into(),
        source: std::io::Error::other(e),
    })??;
    let mut l = load()?;
    let prog: &mut SchedClassifier = l
        ._ebpf
        .program_mut(PROG_TC_HC)
        .ok_or(VipCheckError::Missing(PROG_TC_HC))?
        .try_into()
        .map_err(VipCheckError::Program)?;
    prog.attach(LINK, TcAttachType::Egress)
        .map_err(VipCheckError::Program)?;
    Ok(l)
}

/// Load `xlb_hc` and take its maps (the object's other maps are created tiny and private:
/// the load balancer's pinned maps are not touched). Not attached.
fn load() -> Result<Loaded> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = PathBuf::from(format!(
        "/sys/fs/bpf/xlb-hc-load-{}-{n}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).map_err(|source| VipCheckError::Io {
        what: format!("creating {}", dir.display()),
        source,
    })?;
    let loaded = EbpfLoader::new()
        .default_map_pin_directory(&dir)
        .map_max_entries(lb_common::MAP_SERVICES, 1)
        .map_max_entries(lb_common::MAP_SERVICE_STATS, 1)
        .map_max_entries(lb_common::MAP_DSR, 1)
        .map_max_entries(lb_common::MAP_MAGLEV, 1)
        .map_max_entries(lb_common::MAP_CONNTRACK, 1)
        .map_max_entries(lb_common::MAP_REVERSE, 1)
        .map_max_entries(lb_common::MAP_UNCONFIRMED, 1)
        .map_max_entries(lb_common::MAP_FRAGS, 1)
        .map_max_entries("DIRECT", 1)
        .load(crate::ebpf::OBJECT);
    let _ = std::fs::remove_dir_all(&dir);
    let mut ebpf = loaded?;
    let prog: &mut SchedClassifier = ebpf
        .program_mut(PROG_TC_HC)
        .ok_or(VipCheckError::Missing(PROG_TC_HC))?
        .try_into()
        .map_err(VipCheckError::Program)?;
    prog.load().map_err(VipCheckError::Program)?;
    let targets = HashMap::try_from(
        ebpf.take_map(MAP_HC_TARGETS)
            .ok_or(VipCheckError::Missing(MAP_HC_TARGETS))?,
    )
    .map_err(|e| VipCheckError::Map(MAP_HC_TARGETS, e))?;
    let stats = PerCpuArray::try_from(
        ebpf.take_map(MAP_HC_STATS)
            .ok_or(VipCheckError::Missing(MAP_HC_STATS))?,
    )
    .map_err(|e| VipCheckError::Map(MAP_HC_STATS, e))?;
    Ok(Loaded {
        _ebpf: ebpf,
        targets,
        stats,
    })
}

/// The loaded program and its maps, unattached, for `BPF_PROG_TEST_RUN` fixtures.
pub struct TestProgram {
    loaded: Loaded,
}

impl TestProgram {
    pub fn load() -> Result<Self> {
        Ok(Self { loaded: load()? })
    }

    pub fn program(&self) -> &SchedClassifier {
        self.loaded
            ._ebpf
            .program(PROG_TC_HC)
            .and_then(|p| p.try_into().ok())
            .expect("xlb_hc is a SchedClassifier")
    }

    pub fn set_target(&mut self, mark: u32, t: HcTarget) -> Result<()> {
        self.loaded
            .targets
            .insert(mark, t, 0)
            .map_err(|e| VipCheckError::Map(MAP_HC_TARGETS, e))
    }

    pub fn stats(&self) -> Vec<u64> {
        (0..lb_common::hc::COUNT)
            .map(|i| {
                self.loaded
                    .stats
                    .get(&i, 0)
                    .map(|v| v.iter().sum::<u64>())
                    .unwrap_or(0)
            })
            .collect()
    }
}

/// Where the kernel routes a check's packets to `vip` with `mark`: `Ok` when they leave
/// through [`LINK`] (to `xlb_hc`); otherwise why the check would not reach its backend: the
/// VIP is an address of this host (the local table comes before the mark's rule, so the
/// host itself would answer), or a rule before ours sends marked packets elsewhere.
pub async fn check_route(vip: IpAddr, mark: u32) -> std::result::Result<(), String> {
    // One lookup per VIP and mark a second at most, however many checks run.
    type Cache = std::sync::Mutex<StdHashMap<(IpAddr, u32), (std::time::Instant, Verdict)>>;
    type Verdict = std::result::Result<(), String>;
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let now = std::time::Instant::now();
    if let Ok(c) = cache.lock() {
        if let Some((at, r)) = c.get(&(vip, mark)) {
            if now.duration_since(*at) < Duration::from_secs(1) {
                return r.clone();
            }
        }
    }
    let r = lookup_route(vip, mark).await;
    if let Ok(mut c) = cache.lock() {
        c.retain(|_, (at, _)| now.duration_since(*at) < Duration::from_secs(1));
        c.insert((vip, mark), (now, r.clone()));
    }
    r
}

async fn lookup_route(vip: IpAddr, mark: u32) -> std::result::Result<(), String> {
    use futures_util::stream::TryStreamExt;
    use netlink_packet_route::route::{RouteAttribute, RouteType};
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| format!("netlink: {e}"))?;
    let task = tokio::spawn(conn);
    let msg = match vip {
        IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(a, 32)
            .mark(mark)
            .build(),
        IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(a, 128)
            .mark(mark)
            .build(),
    };
    let r = handle.route().get(msg).execute().try_next().await;
    task.abort();
    let r = r
        .map_err(|e| format!("looking up the route to {vip}: {e}"))?
        .ok_or_else(|| format!("no route to {vip}"))?;
    if r.header.kind == RouteType::Local {
        return Err(format!(
            "{vip} is an address of xlb's host: the check would be answered here, not by the backend"
        ));
    }
    let oif = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    });
    let ours = nix::net::if_::if_nametoindex(LINK).ok();
    if oif.is_none() || oif != ours {
        return Err(format!(
            "marked packets to {vip} do not leave through {LINK} (a routing rule before priority {RULE_PRIORITY}?)"
        ));
    }
    Ok(())
}

/// `xlb stop --cleanup`: remove the rules and the interface pair (with its routes), from a
/// program without a runtime; says what it did. Nothing to remove is no error.
pub fn cleanup_blocking() {
    let r = blocking(|handle| {
        Box::pin(async move {
            let mut removed = 0;
            for family in [AddressFamily::Inet, AddressFamily::Inet6] {
                if handle.rule().del(rule(family)).execute().await.is_ok() {
                    removed += 1;
                }
            }
            if let Ok(i) = nix::net::if_::if_nametoindex(LINK) {
                handle
                    .link()
                    .del(i)
                    .execute()
                    .await
                    .map_err(nl(format!("removing {LINK}")))?;
                removed += 1;
            }
            Ok::<_, VipCheckError>(removed)
        })
    });
    match r {
        Ok(Ok(0)) => {}
        Ok(Ok(_)) => println!(
            "removed the DSR health-check interface {LINK} and its fwmark rules (table {TABLE})"
        ),
        Ok(Err(e)) => eprintln!("xlb: removing the DSR health-check routing: {e}"),
        Err(e) => eprintln!("xlb: removing the DSR health-check routing: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::{
        config::{DsrEncap, Prefix},
        health::{CheckKind, ViaVip},
    };

    fn dsr(encap: DsrEncap, prefix: Option<&str>) -> DsrConfig {
        DsrConfig {
            encap,
            source_prefix: prefix.map(|p| p.parse::<Prefix>().unwrap()),
            gue_port: 7777,
        }
    }

    fn spec(backend: &str, via: Option<DsrConfig>) -> ((), CheckSpec, Duration) {
        (
            (),
            CheckSpec {
                kind: CheckKind::Tcp,
                addr: SocketAddr::new(backend.parse().unwrap(), 80),
                timeout: Duration::from_secs(1),
                via: via.map(|dsr| ViaVip {
                    vip: "198.18.100.1".parse().unwrap(),
                    dsr,
                    mark: 0,
                }),
            },
            Duration::from_secs(1),
        )
    }

    #[test]
    fn targets_follow_the_service_forwarding() {
        let t = target(
            &dsr(DsrEncap::Gue, Some("198.18.99.77/24")),
            "198.18.2.11".parse().unwrap(),
            5,
        );
        assert_eq!(t.backend[..4], [198, 18, 2, 11]);
        assert_eq!(
            t.src[..4],
            [198, 18, 99, 1],
            "the prefix's lowest host address"
        );
        assert_eq!(t.family, lb_common::AF_INET);
        assert_eq!(t.encap, lb_common::DSR_ENCAP_GUE);
        assert_eq!(t.gue_port, 7777u16.to_be_bytes());
        assert_eq!(t.gue_sport, 0xc005u16.to_be_bytes());
        let t = target(
            &dsr(DsrEncap::Ipip, Some("2001:db8:99::/112")),
            "2001:db8:2::11".parse().unwrap(),
            1,
        );
        assert_eq!(
            t.src,
            "2001:db8:99::1".parse::<Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(t.family, lb_common::AF_INET6);
        assert_eq!(t.encap, lb_common::DSR_ENCAP_IPIP);
        assert_eq!(t.gue_port, [0, 0]);
        let t = target(&dsr(DsrEncap::L2, None), "198.18.2.12".parse().unwrap(), 2);
        assert_eq!(t.encap, lb_common::DSR_ENCAP_L2);
        assert_eq!(t.src, [0; 16]);
    }

    #[test]
    fn marks_are_stable_and_freed() {
        let gue = dsr(DsrEncap::Gue, Some("198.18.99.0/24"));
        let l2 = dsr(DsrEncap::L2, None);
        let mut v = VipChecks::new();
        let mut w = vec![
            spec("198.18.2.11", Some(gue)),
            spec("198.18.2.12", Some(gue)),
            spec("198.18.2.11", Some(l2)),
            spec("198.18.2.13", None),
        ];
        let want = v.marks_for(&mut w);
        let marks: Vec<u32> = w
            .iter()
            .map(|(_, s, _)| s.via.as_ref().map_or(0, |v| v.mark))
            .collect();
        assert_eq!(
            marks,
            [HC_MARK_BASE | 1, HC_MARK_BASE | 2, HC_MARK_BASE | 3, 0]
        );
        assert_eq!(want.len(), 3);
        assert_eq!(want[&(HC_MARK_BASE | 3)].encap, lb_common::DSR_ENCAP_L2);
        // The first backend leaves: the others keep their marks; a new one takes the free one.
        let mut w = vec![
            spec("198.18.2.12", Some(gue)),
            spec("198.18.2.11", Some(l2)),
            spec("198.18.2.14", Some(gue)),
        ];
        let want = v.marks_for(&mut w);
        let marks: Vec<u32> = w
            .iter()
            .map(|(_, s, _)| s.via.as_ref().unwrap().mark)
            .collect();
        assert_eq!(
            marks,
            [HC_MARK_BASE | 2, HC_MARK_BASE | 3, HC_MARK_BASE | 1]
        );
        assert_eq!(want[&(HC_MARK_BASE | 1)].backend[..4], [198, 18, 2, 14]);
        // No check through a VIP: nothing wanted, nothing set up.
        let mut w = vec![spec("198.18.2.11", None)];
        v.assign(&mut w);
        assert!(v.loaded.is_none() && v.marks.is_empty());
    }
}
