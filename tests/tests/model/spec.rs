//! The reference model: what the README's "What the data path does with each packet" says
//! the XDP program does with one frame, given the state it reads (services, Maglev tables,
//! backends, the connection-table, reverse and fragment entries as they are before the
//! frame, the routes and neighbours of the fixture namespace).
//!
//! Written from the README's tables, not from the eBPF code. Where the README leaves a
//! choice open the comment says `AMBIGUOUS:` and names the reading taken.
#![allow(dead_code)]

use lb_common::{
    hash::flow_hash, BackendAddr, BackendAddrValue, BackendInfo, CtValue, FlowKey, FragValue,
    RevValue, ServiceInfo, ServiceKey, AF_INET, AF_INET6, BA_F_SHARED, BE_F_ACTIVE,
    BE_F_ESTABLISHED_OK, FRAG_F_FORWARD, FRAG_F_PASS, FRAG_TTL_NS, ICMP_QUOTE_MAX, MAX_EXT_HEADERS,
    NO_BACKEND, PROTO_TCP, PROTO_UDP, SLOTS_PER_SERVICE, SVC_F_EMPTY,
};

use super::pkt::*;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// What the FIB says about a destination (the fixture's static routes and neighbours).
#[derive(Debug, Clone, Copy)]
pub enum Route {
    /// An address of this host.
    Local,
    /// No route.
    Unreachable,
    /// Addresses whose FIB answer the README does not pin down (broadcast, multicast,
    /// loopback, unspecified): the model makes no claim.
    Special,
    Via {
        ifindex: u32,
        mtu: u16,
        smac: [u8; 6],
        /// None: no neighbour entry.
        dmac: Option<[u8; 6]>,
        /// The egress interface is not in `TX_PORTS`.
        kernel: bool,
    },
}

/// The state the model reads.
pub trait World {
    fn service(&self, k: &ServiceKey) -> Option<ServiceInfo>;
    /// The Maglev table entry `index` of a service's table `slot`.
    fn maglev(&self, service_id: u32, slot: u32, index: u32) -> u32;
    fn backend(&self, id: u32) -> BackendInfo;
    /// A client flow's entry: in `CONNTRACK`, or (a handshake, a UDP flow not answered yet)
    /// in `UNCONFIRMED`.
    fn conntrack(&self, k: &FlowKey) -> Option<CtValue>;
    fn reverse(&self, k: &FlowKey) -> Option<RevValue>;
    fn backend_addr(&self, k: &BackendAddr) -> Option<BackendAddrValue>;
    /// The `FRAGS` entry of a datagram (source, destination, protocol, id), if any.
    fn frag(
        &self,
        src: &[u8; 16],
        dst: &[u8; 16],
        proto: u8,
        family: u8,
        id: u32,
    ) -> Option<FragValue>;
    fn now_ns(&self) -> u64;
    fn is_vip(&self, addr: &[u8; 16], family: u8) -> bool;
    fn is_backend(&self, addr: &[u8; 16], family: u8) -> bool;
    fn route(&self, addr: &[u8; 16], family: u8) -> Route;
    /// Whether a client's packets to a backend's own address and port were seen (the
    /// `DIRECT` LRU; the driver keeps what the model said should be remembered).
    fn direct_seen(&self, k: &DirectKey) -> bool;
    /// The services (VIP, port, protocol) whose target group has this backend address and
    /// port.
    fn services_with_backend(
        &self,
        addr: &[u8; 16],
        port: [u8; 2],
        proto: u8,
        family: u8,
    ) -> Vec<ServiceKey>;
    fn ring_size(&self) -> u32;
    fn hash_seed(&self) -> u32;
}

/// What the output frame must be.
#[derive(Debug, Clone)]
pub enum Out {
    /// Equal to the input.
    Same,
    /// Exactly these bytes.
    Exact(Vec<u8>),
    /// These bytes except the ranges listed (fields the README leaves to the program: IP id,
    /// TTL, TOS of a generated ICMP error); checksums then verified by recomputing.
    Masked(Vec<u8>, Vec<std::ops::Range<usize>>),
    /// Not looked at (drops).
    Any,
}

/// The model's answer for one frame.
#[derive(Debug, Clone)]
pub struct Expect {
    /// Case class, for statistics and reports.
    pub class: String,
    /// None: the README does not say (the frame is counted, not compared).
    pub action: Option<u32>,
    pub out: Out,
    /// Global counter the case bumps (besides `passed` / `dropped`).
    pub counter: Option<&'static str>,
    /// A second counter the case bumps: a later fragment that followed counts as
    /// `forwarded` / `replies` too, a re-created stray reply as `replies`.
    /// AMBIGUOUS: the README names only the specific counter; read as a sub-count.
    pub also: Option<&'static str>,
    /// The connection table must hold this flow → backend id after the frame.
    pub pin: Option<(FlowKey, u32)>,
    /// The connection table must not have gained an entry for this flow.
    pub no_pin: Option<FlowKey>,
    /// A first fragment: `FRAGS` must hold (src, dst, proto, family, id) → (address written
    /// into later fragments, forward?) after the frame.
    pub frag_rec: Option<FragRec>,
    /// A packet to a backend's own address: remembered in `DIRECT`.
    pub direct_rec: Option<DirectKey>,
    /// Input checksums were all valid, so the output's must be too.
    pub check_csums: bool,
}

/// A client talking to a backend's own address and port (not through a VIP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DirectKey {
    pub client: [u8; 16],
    pub backend: [u8; 16],
    pub cport: [u8; 2],
    pub bport: [u8; 2],
    pub proto: u8,
    pub family: u8,
}

#[derive(Debug, Clone)]
pub struct FragRec {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub proto: u8,
    pub family: u8,
    pub id: u32,
    pub addr: [u8; 16],
    pub forward: bool,
}

impl Expect {
    fn new(class: impl Into<String>, action: u32, out: Out, counter: Option<&'static str>) -> Self {
        Expect {
            class: class.into(),
            action: Some(action),
            out,
            counter,
            also: None,
            pin: None,
            no_pin: None,
            frag_rec: None,
            direct_rec: None,
            check_csums: false,
        }
    }
    fn pass(class: &'static str, counter: Option<&'static str>) -> Self {
        Self::new(class, XDP_PASS, Out::Same, counter)
    }
    fn drop(class: &'static str, counter: &'static str) -> Self {
        Self::new(class, XDP_DROP, Out::Any, Some(counter))
    }
    fn unspecified(class: &'static str) -> Self {
        Expect {
            action: None,
            ..Self::new(class, 0, Out::Any, None)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frag {
    None,
    First(u32),
    Later(u32),
}

/// A frame parsed as far as the README's parsing table goes.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// Offset of the IP header (after Ethernet and VLAN tags).
    ip: usize,
    v6: bool,
    family: u8,
    /// End of the IP packet (total / payload length).
    ip_end: usize,
    /// Offset of the L4 header (after IPv6 extension headers).
    l4: usize,
    proto: u8,
    frag: Frag,
    src: [u8; 16],
    dst: [u8; 16],
    ttl: u8,
    /// IPv4 DF.
    df: bool,
}

enum ParseResult {
    /// `XDP_PASS`, counted as given.
    Pass(&'static str, Option<&'static str>),
    Malformed(&'static str),
    Ip(Parsed),
}

fn addr4(b: &[u8]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&b[..4]);
    a
}
fn addr6(b: &[u8]) -> [u8; 16] {
    b[..16].try_into().unwrap()
}

fn parse(f: &[u8]) -> ParseResult {
    if f.len() < 14 {
        return ParseResult::Malformed("truncated ethernet");
    }
    let mut off = 12;
    let mut et = be16(f, off);
    let mut tags = 0;
    while et == ETH_P_8021Q || et == ETH_P_8021AD {
        // AMBIGUOUS: the README allows 802.1ad or 802.1Q outside and 802.1Q inside; an
        // inner 802.1ad tag is read as a second tag too.
        if tags == 2 {
            return ParseResult::Pass("third vlan tag", None);
        }
        if f.len() < off + 6 {
            return ParseResult::Malformed("truncated vlan tag");
        }
        off += 4;
        et = be16(f, off);
        tags += 1;
    }
    let ip = off + 2;
    match et {
        ETH_P_IP => {
            if f.len() < ip + 20 {
                return ParseResult::Malformed("truncated ipv4 header");
            }
            if f[ip] >> 4 != 4 {
                return ParseResult::Malformed("ipv4 version");
            }
            let ihl = (f[ip] & 15) as usize * 4;
            if ihl < 20 {
                return ParseResult::Malformed("ipv4 ihl < 5");
            }
            let tot = be16(f, ip + 2) as usize;
            if tot < ihl {
                return ParseResult::Malformed("ipv4 total length < ihl");
            }
            if ip + tot > f.len() {
                return ParseResult::Malformed("ipv4 total length beyond frame");
            }
            let fo = be16(f, ip + 6);
            let id = be16(f, ip + 4) as u32;
            let frag = if fo & 0x1fff != 0 {
                Frag::Later(id)
            } else if fo & 0x2000 != 0 {
                Frag::First(id)
            } else {
                Frag::None
            };
            ParseResult::Ip(Parsed {
                ip,
                v6: false,
                family: AF_INET,
                ip_end: ip + tot,
                l4: ip + ihl,
                proto: f[ip + 9],
                frag,
                src: addr4(&f[ip + 12..]),
                dst: addr4(&f[ip + 16..]),
                ttl: f[ip + 8],
                df: fo & 0x4000 != 0,
            })
        }
        ETH_P_IPV6 => {
            if f.len() < ip + 40 {
                return ParseResult::Malformed("truncated ipv6 header");
            }
            if f[ip] >> 4 != 6 {
                return ParseResult::Malformed("ipv6 version");
            }
            let end = ip + 40 + be16(f, ip + 4) as usize;
            if end > f.len() {
                return ParseResult::Malformed("ipv6 payload length beyond frame");
            }
            let mut nh = f[ip + 6];
            let mut l4 = ip + 40;
            let mut frag = Frag::None;
            let mut walked = 0;
            while let 0 | 43 | 60 | 44 = nh {
                {
                    if walked == MAX_EXT_HEADERS {
                        return ParseResult::Pass(
                            "ipv6 ext chain too long",
                            Some("ext_headers_passed"),
                        );
                    }
                    walked += 1;
                    // AMBIGUOUS: "inside the frame" read as inside the IP payload.
                    if l4 + 8 > end {
                        return ParseResult::Malformed("ipv6 ext header truncated");
                    }
                    let len = if nh == 44 {
                        8
                    } else {
                        (f[l4 + 1] as usize + 1) * 8
                    };
                    if l4 + len > end {
                        return ParseResult::Malformed("ipv6 ext header truncated");
                    }
                    if nh == 43 && f[l4 + 3] != 0 {
                        return ParseResult::Pass(
                            "ipv6 routing header segments left",
                            Some("ext_headers_passed"),
                        );
                    }
                    let this = nh;
                    nh = f[l4];
                    if this == 44 {
                        let fo = be16(f, l4 + 2);
                        let id = u32::from_be_bytes(f[l4 + 4..l4 + 8].try_into().unwrap());
                        l4 += 8;
                        if fo & 0xfff8 != 0 {
                            frag = Frag::Later(id);
                            break;
                        } else if fo & 1 != 0 {
                            frag = Frag::First(id);
                        }
                        // AMBIGUOUS: offset 0 without M (an atomic fragment, RFC 6946)
                        // is an ordinary packet.
                    } else {
                        l4 += len;
                    }
                }
            }
            ParseResult::Ip(Parsed {
                ip,
                v6: true,
                family: AF_INET6,
                ip_end: end,
                l4,
                proto: nh,
                frag,
                src: addr6(&f[ip + 8..]),
                dst: addr6(&f[ip + 24..]),
                ttl: f[ip + 7],
                df: false,
            })
        }
        _ => ParseResult::Pass("not ip", None),
    }
}

/// The model: the expected action, output and counter for `frame` received on `ingress`.
pub fn decide(f: &[u8], ingress: u32, w: &dyn World) -> Expect {
    let mut e = decide_inner(f, ingress, w);
    e.check_csums = verify_checksums(f).is_ok();
    e
}

fn decide_inner(f: &[u8], ingress: u32, w: &dyn World) -> Expect {
    let p = match parse(f) {
        ParseResult::Pass(class, counter) => return Expect::pass(class, counter),
        ParseResult::Malformed(class) => return Expect::drop(class, "malformed"),
        ParseResult::Ip(p) => p,
    };
    if let Frag::Later(id) = p.frag {
        return later_fragment(f, ingress, w, &p, id);
    }
    match p.proto {
        PROTO_TCP | PROTO_UDP => {
            let need = if p.proto == PROTO_TCP { 20 } else { 8 };
            if p.l4 + need > p.ip_end {
                return Expect::drop("l4 header truncated", "malformed");
            }
            l4_packet(f, ingress, w, &p)
        }
        1 if !p.v6 => icmp(f, ingress, w, &p),
        58 if p.v6 => icmp(f, ingress, w, &p),
        _ => Expect::pass("other l4", None),
    }
}

fn ports(f: &[u8], p: &Parsed) -> ([u8; 2], [u8; 2]) {
    ([f[p.l4], f[p.l4 + 1]], [f[p.l4 + 2], f[p.l4 + 3]])
}

/// The strict L4 checks of packets to a service or from a backend.
fn strict_l4(f: &[u8], p: &Parsed) -> Option<&'static str> {
    let len = p.ip_end - p.l4;
    if p.proto == PROTO_TCP {
        let doff = (f[p.l4 + 12] >> 4) as usize * 4;
        if doff < 20 {
            return Some("tcp data offset < 5");
        }
        if doff > len {
            return Some("tcp data offset beyond payload");
        }
    } else {
        let ulen = be16(f, p.l4 + 4) as usize;
        if matches!(p.frag, Frag::First(_)) {
            if ulen < 8 {
                return Some("udp length < 8 (first fragment)");
            }
        } else if ulen != len {
            return Some("udp length mismatch");
        }
        if p.v6 && be16(f, p.l4 + 6) == 0 {
            return Some("ipv6 udp checksum 0");
        }
    }
    None
}

fn flow_key(
    src: [u8; 16],
    dst: [u8; 16],
    sport: [u8; 2],
    dport: [u8; 2],
    proto: u8,
    family: u8,
) -> FlowKey {
    FlowKey {
        src,
        dst,
        sport,
        dport,
        proto,
        family,
        _pad: [0; 2],
    }
}

fn l4_packet(f: &[u8], ingress: u32, w: &dyn World, p: &Parsed) -> Expect {
    let (sport, dport) = ports(f, p);
    let skey = ServiceKey {
        addr: p.dst,
        port: dport,
        proto: p.proto,
        family: p.family,
    };
    if let Some(svc) = w.service(&skey) {
        return to_service(f, ingress, w, p, svc, sport, dport);
    }
    let bkey = BackendAddr {
        addr: p.src,
        port: sport,
        proto: p.proto,
        family: p.family,
    };
    if let Some(ba) = w.backend_addr(&bkey) {
        return from_backend(f, ingress, w, p, ba, sport, dport);
    }
    let dkey = BackendAddr {
        addr: p.dst,
        port: dport,
        proto: p.proto,
        family: p.family,
    };
    if w.backend_addr(&dkey).is_some() {
        let mut e = Expect::pass("to a backend's own address", None);

        e.direct_rec = Some(DirectKey {
            client: p.src,
            backend: p.dst,
            cport: sport,
            bport: dport,
            proto: p.proto,
            family: p.family,
        });
        return e;
    }
    Expect::pass("no service, no backend", None)
}

/// Whether the Maglev table of a service that has this backend would send the client's
/// flow (the reply's destination and port) to it.
fn table_sends_here(
    w: &dyn World,
    p: &Parsed,
    ba: &BackendAddrValue,
    sport: [u8; 2],
    dport: [u8; 2],
) -> bool {
    let keys = if ba.flags & BA_F_SHARED != 0 {
        w.services_with_backend(&p.src, sport, p.proto, p.family)
    } else {
        vec![ServiceKey {
            addr: ba.vip,
            port: ba.vport,
            proto: p.proto,
            family: p.family,
        }]
    };
    keys.iter().any(|k| {
        let Some(svc) = w.service(k) else {
            return false;
        };
        if svc.flags & SVC_F_EMPTY != 0 {
            return false;
        }
        let h = flow_hash(&p.dst, &k.addr, dport, k.port, p.proto, w.hash_seed());
        let id = w.maglev(svc.id, svc.slot % SLOTS_PER_SERVICE, h % w.ring_size());
        if id == NO_BACKEND {
            return false;
        }
        let b = w.backend(id);
        b.family == p.family && b.addr == p.src && b.port == sport
    })
}

fn to_service(
    f: &[u8],
    ingress: u32,
    w: &dyn World,
    p: &Parsed,
    svc: ServiceInfo,
    sport: [u8; 2],
    dport: [u8; 2],
) -> Expect {
    let key = flow_key(p.src, p.dst, sport, dport, p.proto, p.family);
    if let Some(why) = strict_l4(f, p) {
        let mut e = Expect::drop(why, "malformed");
        if w.conntrack(&key).is_none() {
            e.no_pin = Some(key);
        }
        return e;
    }
    if p.ttl <= 1 {
        return Expect::pass("to service, ttl <= 1", Some("ttl_exceeded"));
    }
    let mut pin = None;
    let ct = w
        .conntrack(&key)
        .filter(|ct| w.backend(ct.backend_id).flags & BE_F_ESTABLISHED_OK != 0);
    let (bid, class) = match ct {
        Some(ct) => (ct.backend_id, "to service, established"),
        None => {
            if svc.flags & SVC_F_EMPTY != 0 {
                return Expect::drop("to service, no backend", "no_backend");
            }
            let ring = w.ring_size();
            let h = flow_hash(&p.src, &p.dst, sport, dport, p.proto, w.hash_seed());
            let id = w.maglev(svc.id, svc.slot % SLOTS_PER_SERVICE, h % ring);
            if id == NO_BACKEND || w.backend(id).flags & BE_F_ACTIVE == 0 {
                return Expect::drop("to service, no backend", "no_backend");
            }
            // Pinned: a handshake or a UDP flow in `UNCONFIRMED`, other TCP in the
            // connection table (the model reads both as one).
            pin = Some((key, id));
            (id, "to service, new flow")
        }
    };
    let b = w.backend(bid);
    let mut out = f.to_vec();
    rewrite_addr(&mut out, p, false, &b.addr);
    rewrite_port(&mut out, p, false, b.port);
    let mut e = route_and_send(f, out, ingress, w, p, &b.addr, class, "forwarded");
    if e.counter == Some("forwarded") {
        e.pin = pin;
    }
    if let Frag::First(id) = p.frag {
        e.frag_rec = frag_rec(p, id, b.addr, true, &e);
    }
    e
}

/// The backend id the service's Maglev table picks for client flow `key` (client → VIP).
fn table_backend(w: &dyn World, key: &FlowKey) -> Option<u32> {
    let svc = w.service(&ServiceKey {
        addr: key.dst,
        port: key.dport,
        proto: key.proto,
        family: key.family,
    })?;
    let h = flow_hash(
        &key.src,
        &key.dst,
        key.sport,
        key.dport,
        key.proto,
        w.hash_seed(),
    );
    let id = w.maglev(svc.id, svc.slot % SLOTS_PER_SERVICE, h % w.ring_size());
    (id != NO_BACKEND).then_some(id)
}

const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;

/// The TCP flags of a TCP packet whose header is present (0 otherwise).
fn tcp_flags(f: &[u8], p: &Parsed) -> u8 {
    if p.proto != 6 || matches!(p.frag, Frag::Later(..)) {
        return 0;
    }
    f.get(p.l4 + 13).copied().unwrap_or(0)
}

fn frag_rec(p: &Parsed, id: u32, addr: [u8; 16], forward: bool, e: &Expect) -> Option<FragRec> {
    // Only checked when the first fragment was forwarded: that is when the README says its
    // rewrite is kept for the later ones.
    (matches!(e.action, Some(XDP_TX | XDP_REDIRECT)) && !e.class.contains("too big")).then_some(
        FragRec {
            src: p.src,
            dst: p.dst,
            proto: p.proto,
            family: p.family,
            id,
            addr,
            forward,
        },
    )
}

fn from_backend(
    f: &[u8],
    ingress: u32,
    w: &dyn World,
    p: &Parsed,
    ba: BackendAddrValue,
    sport: [u8; 2],
    dport: [u8; 2],
) -> Expect {
    if let Some(why) = strict_l4(f, p) {
        return Expect::drop(why, "malformed");
    }
    if p.ttl <= 1 {
        return Expect::pass("from backend, ttl <= 1", Some("ttl_exceeded"));
    }
    // What the reply becomes: source VIP and service port.
    let found: Option<([u8; 16], [u8; 2])> = if ba.flags & BA_F_SHARED != 0 {
        let rkey = flow_key(p.src, p.dst, sport, dport, p.proto, p.family);
        match w.reverse(&rkey) {
            Some(rv) => {
                // AMBIGUOUS: a reverse entry is usable unless the client's flow is pinned
                // to another backend now.
                let ct = w.conntrack(&flow_key(p.dst, rv.vip, dport, rv.vport, p.proto, p.family));
                match ct {
                    Some(ct) if ct.backend_id != rv.backend_id => {
                        return Expect::drop("reply, flow moved (shared)", "stray_dropped")
                    }
                    _ => Some((rv.vip, rv.vport)),
                }
            }
            None => None,
        }
    } else {
        let ckey = flow_key(p.dst, ba.vip, dport, ba.vport, p.proto, p.family);
        match w.conntrack(&ckey) {
            Some(ct) if ct.backend_id == ba.backend_id => Some((ba.vip, ba.vport)),
            Some(_) => return Expect::drop("reply, flow moved", "stray_dropped"),
            None => None,
        }
    };
    let route = w.route(&p.dst, p.family);
    let (vip, vport, class, counter, pin) = match found {
        Some((vip, vport)) => (vip, vport, "reply", "replies", None),
        None => {
            let direct = DirectKey {
                client: p.dst,
                backend: p.src,
                cport: dport,
                bport: sport,
                proto: p.proto,
                family: p.family,
            };
            if w.direct_seen(&direct) {
                return Expect::pass("reply to a client of the backend's own address", None);
            }
            if ba.flags & BA_F_SHARED != 0 {
                // Replies to this host (health checks) or with no route are the kernel's.
                if let Route::Local | Route::Unreachable = route {
                    return Expect::pass("stray reply to this host or no route (shared)", None);
                }
                if let Route::Special = route {
                    return Expect::unspecified("stray reply to special address");
                }
                return Expect::drop("stray reply, shared address", "stray_dropped");
            }
            if !table_sends_here(w, p, &ba, sport, dport) {
                return Expect::pass("stray reply, the table sends the flow elsewhere", None);
            }
            match route {
                // The FIB's "not forwarded": a local destination or no route at all.
                Route::Local | Route::Unreachable => {
                    return Expect::pass("stray reply to this host or no route", None)
                }
                Route::Special => return Expect::unspecified("stray reply to special address"),
                _ => {}
            }
            let ckey = flow_key(p.dst, ba.vip, dport, ba.vport, p.proto, p.family);
            if tcp_flags(f, p) & (TCP_SYN | TCP_RST) != 0 {
                // A SYN-ACK or RST answering a handshake whose entry was evicted: translated,
                // no entry made.
                (
                    ba.vip,
                    ba.vport,
                    "stray reply, syn-ack or rst",
                    "replies",
                    None,
                )
            } else {
                (
                    ba.vip,
                    ba.vport,
                    "stray reply, recreated",
                    "stray_recreated",
                    Some((ckey, ba.backend_id)),
                )
            }
        }
    };
    let mut out = f.to_vec();
    rewrite_addr(&mut out, p, true, &vip);
    rewrite_port(&mut out, p, true, vport);
    let dst = p.dst;
    let mut e = route_and_send(f, out, ingress, w, p, &dst, class, counter);
    if e.counter == Some("stray_recreated") {
        e.pin = pin;
        e.also = Some("replies");
    } else if counter == "stray_recreated" {
        // The entry is re-created and counted whatever the egress then does (README).
        e.pin = pin;
        e.also = Some("stray_recreated");
    }
    if let Frag::First(id) = p.frag {
        e.frag_rec = frag_rec(p, id, vip, false, &e);
    }
    e
}

fn later_fragment(f: &[u8], ingress: u32, w: &dyn World, p: &Parsed, id: u32) -> Expect {
    let raw = w.frag(&p.src, &p.dst, p.proto, p.family, id);
    // The program reads the coarse clock: within a few ms of the entry's expiry either
    // answer is right.
    if let Some(v) = raw {
        let age = w.now_ns().saturating_sub(v.created_ns);
        if age.abs_diff(FRAG_TTL_NS) < 50_000_000 {
            return Expect::unspecified("later fragment at its entry's expiry");
        }
    }
    let entry = raw.filter(|v| w.now_ns().saturating_sub(v.created_ns) < FRAG_TTL_NS);
    let Some(v) = entry else {
        // Only TCP and UDP are balanced: later fragments of other protocols (a big ping to
        // the VIP) are the kernel's.
        let balanced = p.proto == 6 || p.proto == 17;
        if balanced && (w.is_vip(&p.dst, p.family) || w.is_backend(&p.src, p.family)) {
            return Expect::drop("later fragment, orphan", "frags_orphan");
        }
        return Expect::pass("later fragment, not ours", None);
    };
    // A first fragment that was passed (not balanced) lets its later ones pass too.
    if v.flags & FRAG_F_PASS != 0 {
        return Expect::pass("later fragment of a passed datagram", None);
    }
    // AMBIGUOUS: TTL ≤ 1 is not forwarded for later fragments either.
    if p.ttl <= 1 {
        return Expect::pass("later fragment, ttl <= 1", Some("ttl_exceeded"));
    }
    let forward = v.flags & FRAG_F_FORWARD != 0;
    let mut out = f.to_vec();
    rewrite_addr(&mut out, p, !forward, &v.addr);
    let target = if forward { v.addr } else { p.dst };
    let mut e = route_and_send(
        f,
        out,
        ingress,
        w,
        p,
        &target,
        "later fragment, followed",
        "frags_followed",
    );
    if e.counter == Some("frags_followed") {
        e.also = Some(if forward { "forwarded" } else { "replies" });
    } else {
        // `frags_followed` counts every later fragment that followed its first, whatever
        // the egress then does with it (README).
        e.also = Some("frags_followed");
    }
    e
}

/// Rewrite the source (`src`) or destination address, fixing the IPv4 header checksum and
/// the L4 checksum (pseudo-header) of unfragmented and first-fragment TCP/UDP.
fn rewrite_addr(out: &mut [u8], p: &Parsed, src: bool, new: &[u8; 16]) {
    let (off, len) = match (p.v6, src) {
        (false, true) => (p.ip + 12, 4),
        (false, false) => (p.ip + 16, 4),
        (true, true) => (p.ip + 8, 16),
        (true, false) => (p.ip + 24, 16),
    };
    let old = out[off..off + len].to_vec();
    out[off..off + len].copy_from_slice(&new[..len]);
    let d = diffs_of(&old, &new[..len]);
    if !p.v6 {
        let c = incremental(be16(out, p.ip + 10), &d);
        put16(out, p.ip + 10, c);
    }
    if !matches!(p.frag, Frag::Later(_)) {
        update_l4_csum(out, p, &d);
    }
}

fn update_l4_csum(out: &mut [u8], p: &Parsed, d: &[(u16, u16)]) {
    match p.proto {
        PROTO_TCP => {
            let c = incremental(be16(out, p.l4 + 16), d);
            put16(out, p.l4 + 16, c);
        }
        PROTO_UDP => {
            let old = be16(out, p.l4 + 6);
            if old == 0 && !p.v6 {
                return; // an IPv4 UDP zero checksum stays zero
            }
            let c = incremental(old, d);
            put16(out, p.l4 + 6, if c == 0 { 0xffff } else { c });
        }
        _ => {}
    }
}

fn rewrite_port(out: &mut [u8], p: &Parsed, src: bool, new: [u8; 2]) {
    let off = if src { p.l4 } else { p.l4 + 2 };
    let d = diffs_of(&out[off..off + 2], &new);
    out[off..off + 2].copy_from_slice(&new);
    update_l4_csum(out, p, &d);
}

fn decrement_ttl(out: &mut [u8], p: &Parsed) {
    if p.v6 {
        out[p.ip + 7] -= 1;
    } else {
        let old = be16(out, p.ip + 8);
        out[p.ip + 8] -= 1;
        let c = incremental(be16(out, p.ip + 10), &[(old, be16(out, p.ip + 8))]);
        put16(out, p.ip + 10, c);
    }
}

/// The routing part shared by every rewritten packet: next hop of `target`, MTU, neighbour,
/// TTL, MACs and tags. `out` is the input frame with its addresses and ports rewritten.
#[allow(clippy::too_many_arguments)]
fn route_and_send(
    input: &[u8],
    mut out: Vec<u8>,
    ingress: u32,
    w: &dyn World,
    p: &Parsed,
    target: &[u8; 16],
    class: &'static str,
    counter: &'static str,
) -> Expect {
    let (ifindex, mtu, smac, dmac, kernel) = match w.route(target, p.family) {
        // The FIB answers "not forwarded" for no route as for a local address: the packet,
        // rewritten (TTL untouched), is the kernel's.
        Route::Unreachable => {
            return Expect::new(
                format!("{class} → no route: the kernel's"),
                XDP_PASS,
                Out::Exact(out),
                None,
            );
        }
        Route::Local | Route::Special => return Expect::unspecified("target is local or special"),
        Route::Via {
            ifindex,
            mtu,
            smac,
            dmac,
            kernel,
        } => (ifindex, mtu, smac, dmac, kernel),
    };
    let ip_len = p.ip_end - p.ip;
    if ip_len > mtu as usize {
        let fragment = p.frag != Frag::None;
        if !p.v6 && (!p.df || fragment) {
            // AMBIGUOUS: the kernel decrements the TTL when it forwards, so XDP does not.
            return Expect::new(
                format!("{class} → too big, ipv4 without df"),
                XDP_PASS,
                Out::Exact(out),
                Some("too_big_kernel"),
            );
        }
        let mut e = too_big_icmp(input, p, mtu);
        e.class = format!("{class} → too big, icmp");
        return e;
    }
    let Some(dmac) = dmac else {
        // AMBIGUOUS: handed to the kernel with the ingress L2 header (tags) as it came.
        return Expect::new(
            format!("{class} → no neighbour"),
            XDP_PASS,
            Out::Exact(out),
            Some("fib_no_neigh"),
        );
    };
    if kernel {
        return Expect::new(
            format!("{class} → egress not in TX_PORTS"),
            XDP_PASS,
            Out::Exact(out),
            Some("egress_kernel"),
        );
    }
    decrement_ttl(&mut out, p);
    let mut frame = Vec::with_capacity(out.len());
    frame.extend_from_slice(&dmac);
    frame.extend_from_slice(&smac);
    frame.extend_from_slice(&(if p.v6 { ETH_P_IPV6 } else { ETH_P_IP }).to_be_bytes());
    frame.extend_from_slice(&out[p.ip..]);
    let action = if ifindex == ingress {
        XDP_TX
    } else {
        XDP_REDIRECT
    };
    Expect::new(class, action, Out::Exact(frame), Some(counter))
}

/// ICMP "fragmentation needed" / ICMPv6 "packet too big" back to the packet's source, from
/// its destination, out of the ingress interface.
fn too_big_icmp(f: &[u8], p: &Parsed, mtu: u16) -> Expect {
    let quote_len = (p.ip_end - p.ip).min(ICMP_QUOTE_MAX);
    let quote = &f[p.ip..p.ip + quote_len];
    let mut o = Vec::new();
    o.extend_from_slice(&f[6..12]);
    o.extend_from_slice(&f[0..6]);
    o.extend_from_slice(&f[12..p.ip]); // tags kept, same ethertype
    let ip = o.len();
    let mut masked = Vec::new();
    if p.v6 {
        let plen = 8 + quote_len;
        o.extend_from_slice(&[0x60, 0, 0, 0]);
        o.extend_from_slice(&(plen as u16).to_be_bytes());
        o.extend_from_slice(&[58, 64]);
        o.extend_from_slice(&p.dst);
        o.extend_from_slice(&p.src);
        let icmp = o.len();
        o.extend_from_slice(&[2, 0, 0, 0]);
        o.extend_from_slice(&(mtu as u32).to_be_bytes());
        o.extend_from_slice(quote);
        let mut ps = Vec::new();
        ps.extend_from_slice(&p.dst);
        ps.extend_from_slice(&p.src);
        ps.extend_from_slice(&(plen as u32).to_be_bytes());
        ps.extend_from_slice(&[0, 0, 0, 58]);
        let c = checksum(&[&ps, &o[icmp..]]);
        put16(&mut o, icmp + 2, c);
        masked.push(ip + 1..ip + 4); // traffic class, flow label
        masked.push(ip + 7..ip + 8); // hop limit
    } else {
        let tot = 20 + 8 + quote_len;
        o.extend_from_slice(&[0x45, 0]);
        o.extend_from_slice(&(tot as u16).to_be_bytes());
        o.extend_from_slice(&[0, 0, 0, 0, 64, 1, 0, 0]);
        o.extend_from_slice(&p.dst[..4]);
        o.extend_from_slice(&p.src[..4]);
        let c = checksum(&[&o[ip..ip + 20]]);
        put16(&mut o, ip + 10, c);
        let icmp = o.len();
        o.extend_from_slice(&[3, 4, 0, 0, 0, 0]);
        o.extend_from_slice(&mtu.to_be_bytes());
        o.extend_from_slice(quote);
        let c = checksum(&[&o[icmp..]]);
        put16(&mut o, icmp + 2, c);
        masked.push(ip + 1..ip + 2); // TOS
        masked.push(ip + 4..ip + 9); // id, DF, TTL
        masked.push(ip + 10..ip + 12); // header checksum (recomputed and verified)
    }
    Expect::new(
        "too big, icmp",
        XDP_TX,
        Out::Masked(o, masked),
        Some("too_big_icmp"),
    )
}

fn icmp(f: &[u8], ingress: u32, w: &dyn World, p: &Parsed) -> Expect {
    let other = || Expect::pass("icmp, other", Some("icmp"));
    if matches!(p.frag, Frag::First(_)) {
        // AMBIGUOUS: the README does not say what a fragmented ICMP message is.
        return Expect::unspecified("icmp first fragment");
    }
    if p.ip_end < p.l4 + 8 {
        return other();
    }
    let ty = f[p.l4];
    let error = if p.v6 {
        matches!(ty, 1..=4)
    } else {
        matches!(ty, 3 | 11 | 12)
    };
    if !error {
        return other();
    }
    // The quoted packet.
    let q = p.l4 + 8;
    let (qsrc, qdst, qproto, ql4) = if p.v6 {
        if p.ip_end < q + 40 + 8 || f[q] >> 4 != 6 {
            return other();
        }
        // A quoted first fragment (fragment header at offset 0) is walked to its ports (the
        // README); any other extension header in a quote is "other ICMP".
        if f[q + 6] == 44 {
            if p.ip_end < q + 48 + 8 || be16(f, q + 40 + 2) & 0xfff8 != 0 {
                return other();
            }
            (addr6(&f[q + 8..]), addr6(&f[q + 24..]), f[q + 40], q + 48)
        } else {
            (addr6(&f[q + 8..]), addr6(&f[q + 24..]), f[q + 6], q + 40)
        }
    } else {
        if p.ip_end < q + 20 || f[q] >> 4 != 4 {
            return other();
        }
        let ihl = (f[q] & 15) as usize * 4;
        if ihl < 20 || p.ip_end < q + ihl + 8 {
            return other();
        }
        // AMBIGUOUS: a quoted later fragment (offset ≠ 0) carries no ports: other ICMP.
        if be16(f, q + 6) & 0x1fff != 0 {
            return other();
        }
        (addr4(&f[q + 12..]), addr4(&f[q + 16..]), f[q + 9], q + ihl)
    };
    if qproto != PROTO_TCP && qproto != PROTO_UDP {
        return other();
    }
    let qsport = [f[ql4], f[ql4 + 1]];
    let qdport = [f[ql4 + 2], f[ql4 + 3]];
    // To the backend: the quote is a reply xlb sent (VIP → client).
    let skey = ServiceKey {
        addr: qsrc,
        port: qsport,
        proto: qproto,
        family: p.family,
    };
    if p.dst == qsrc && w.service(&skey).is_some() {
        let key = flow_key(qdst, qsrc, qdport, qsport, qproto, p.family);
        if let Some(ct) = w.conntrack(&key) {
            let b = w.backend(ct.backend_id);
            // AMBIGUOUS: the flow's entry counts only while its backend may take
            // established flows (as for client packets).
            if b.family == p.family && b.flags & BE_F_ESTABLISHED_OK != 0 {
                return icmp_translate(
                    f,
                    ingress,
                    w,
                    p,
                    q,
                    ql4,
                    true,
                    b.addr,
                    b.port,
                    "icmp_to_backend",
                );
            }
        }
        return other();
    }
    // To the client: the quote is client → backend.
    let bkey = BackendAddr {
        addr: qdst,
        port: qdport,
        proto: qproto,
        family: p.family,
    };
    if p.dst == qsrc {
        if let Some(ba) = w.backend_addr(&bkey) {
            let vip = if ba.flags & BA_F_SHARED != 0 {
                w.reverse(&flow_key(qdst, qsrc, qdport, qsport, qproto, p.family))
                    .map(|rv| (rv.vip, rv.vport, rv.backend_id))
            } else {
                Some((ba.vip, ba.vport, ba.backend_id))
            };
            if let Some((vip, vport, bid)) = vip {
                let key = flow_key(qsrc, vip, qsport, vport, qproto, p.family);
                // A TCP flow without an entry (a handshake, its SYN balanced without one) is
                // the flow the service's table sends to this backend (unshared addresses).
                let ours = match w.conntrack(&key) {
                    Some(ct) => ct.backend_id == bid,
                    None => {
                        qproto == PROTO_TCP
                            && ba.flags & BA_F_SHARED == 0
                            && table_backend(w, &key) == Some(bid)
                    }
                };
                if ours {
                    return icmp_translate(
                        f,
                        ingress,
                        w,
                        p,
                        q,
                        ql4,
                        false,
                        vip,
                        vport,
                        "icmp_to_client",
                    );
                }
            }
        }
    }
    other()
}

/// Translate an ICMP error: to the backend (outer destination and quoted source become the
/// backend's) or to the client (outer source and quoted destination become the VIP's).
#[allow(clippy::too_many_arguments)]
fn icmp_translate(
    f: &[u8],
    ingress: u32,
    w: &dyn World,
    p: &Parsed,
    q: usize,
    ql4: usize,
    to_backend: bool,
    addr: [u8; 16],
    port: [u8; 2],
    counter: &'static str,
) -> Expect {
    // AMBIGUOUS: TTL ≤ 1 is not forwarded for translated ICMP errors either.
    if p.ttl <= 1 {
        return Expect::pass("icmp error, ttl <= 1", Some("ttl_exceeded"));
    }
    let mut out = f.to_vec();
    let alen = if p.v6 { 16 } else { 4 };
    // Outer address.
    let outer_off = match (p.v6, to_backend) {
        (false, true) => p.ip + 16,
        (false, false) => p.ip + 12,
        (true, true) => p.ip + 24,
        (true, false) => p.ip + 8,
    };
    out[outer_off..outer_off + alen].copy_from_slice(&addr[..alen]);
    // Quoted address and port.
    let qa = match (p.v6, to_backend) {
        (false, true) => q + 12,
        (false, false) => q + 16,
        (true, true) => q + 8,
        (true, false) => q + 24,
    };
    out[qa..qa + alen].copy_from_slice(&addr[..alen]);
    let qp = if to_backend { ql4 } else { ql4 + 2 };
    out[qp..qp + 2].copy_from_slice(&port);
    if !p.v6 {
        let ihl = (f[q] & 15) as usize * 4;
        let d = word_diffs(f, &out, q, q + ihl, q + 10);
        let c = incremental(be16(f, q + 10), &d);
        put16(&mut out, q + 10, c);
        let d = word_diffs(f, &out, p.ip, p.l4, p.ip + 10);
        let c = incremental(be16(f, p.ip + 10), &d);
        put16(&mut out, p.ip + 10, c);
        let d = word_diffs(f, &out, p.l4, p.ip_end, p.l4 + 2);
        let c = incremental(be16(f, p.l4 + 2), &d);
        put16(&mut out, p.l4 + 2, c);
    } else {
        let mut d = diffs_of(
            &f[outer_off..outer_off + 16],
            &out[outer_off..outer_off + 16],
        );
        d.extend(word_diffs(f, &out, p.l4, p.ip_end, p.l4 + 2));
        let c = incremental(be16(f, p.l4 + 2), &d);
        put16(&mut out, p.l4 + 2, c);
    }
    let target = if to_backend { addr } else { p.dst };
    let class = if to_backend {
        "icmp error to backend"
    } else {
        "icmp error to client"
    };
    route_and_send(f, out, ingress, w, p, &target, class, counter)
}
