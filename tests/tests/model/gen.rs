//! The frame generator: valid flows to the fixture's services and replies from its backends
//! (IPv4 and IPv6, TCP SYN/data/FIN/RST and UDP), ICMP errors quoting real flows in both
//! directions, fragments (first, later, out of order, orphans), VLAN and QinQ tags, TTL 0/1/2,
//! IPv6 extension-header chains, frames too big for the link; then mutations: truncation,
//! random bytes, random header fields (with and without fixed checksums), random frames.
#![allow(dead_code)]

use fastrand::Rng;
use lb_common::{FlowKey, AF_INET, AF_INET6, PROTO_TCP, PROTO_UDP};

use super::pkt::*;
use crate::common::{self as c};

#[derive(Clone, Copy, Debug)]
pub struct Svc {
    pub vip: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub v6: bool,
}

#[derive(Clone, Copy, Debug)]
struct Flow {
    client: [u8; 16],
    cport: u16,
    svc: Svc,
}

struct PendingFrag {
    frame: Vec<u8>,
    ingress: u32,
    due: u64,
    kind: &'static str,
}

/// Reads the connection table so that replies come from the backend a flow is pinned to.
pub trait Lookup {
    fn backend_of(&self, k: &FlowKey) -> Option<([u8; 16], u16)>;
}

/// A backend: address, port, protocol, IPv6.
type Backend = ([u8; 16], u16, u8, bool);

pub struct Gen {
    pub rng: Rng,
    services: Vec<Svc>,
    /// Backend (address, port, proto, v6).
    backends: Vec<Backend>,
    flows: Vec<Flow>,
    /// Clients talking to a backend's own address: (client, client port, backend).
    direct: Vec<([u8; 16], u16, Backend)>,
    pending: Vec<PendingFrag>,
    n: u64,
    pub ifc: u32,
    pub ifb: u32,
}

fn a4(b: [u8; 4]) -> [u8; 16] {
    let mut a = [0; 16];
    a[..4].copy_from_slice(&b);
    a
}

/// One frame with what it was meant to be.
pub struct Frame {
    pub bytes: Vec<u8>,
    pub ingress: u32,
    pub kind: String,
}

impl Gen {
    pub fn new(seed: u64, ifc: u32, ifb: u32) -> Self {
        let vip4 = a4(c::VIP4);
        let s = |vip, port, proto, v6| Svc {
            vip,
            port,
            proto,
            v6,
        };
        let services = vec![
            s(vip4, 80, PROTO_TCP, false),
            s(vip4, 53, PROTO_UDP, false),
            s(c::vip6(), 80, PROTO_TCP, true),
            s(c::vip6(), 53, PROTO_UDP, true),
            s(a4(c::VIP4_MULTI), 80, PROTO_TCP, false),
            s(a4(c::VIP4_EMPTY), 80, PROTO_TCP, false),
            s(a4(c::VIP4_HAIRPIN), 80, PROTO_TCP, false),
            // Not services: a VIP's other port and protocol.
            s(vip4, 81, PROTO_TCP, false),
            s(vip4, 80, PROTO_UDP, false),
            s(c::vip6(), 443, PROTO_TCP, true),
        ];
        let backends = vec![
            (a4(c::B4_1), 8080, PROTO_TCP, false),
            (a4(c::B4_2), 5353, PROTO_UDP, false),
            (a4(c::B4_2), 8080, PROTO_TCP, false),
            (a4([198, 18, 2, 13]), 8080, PROTO_TCP, false),
            (a4(c::HAIRPIN4), 8080, PROTO_TCP, false),
            (c::b6(1), 8080, PROTO_TCP, true),
            (c::b6(2), 5353, PROTO_UDP, true),
        ];
        Gen {
            rng: Rng::with_seed(seed),
            services,
            backends,
            flows: Vec::new(),
            direct: Vec::new(),
            pending: Vec::new(),
            n: 0,
            ifc,
            ifb,
        }
    }

    fn client(&mut self, v6: bool) -> [u8; 16] {
        let r = self.rng.u8(0..100);
        if v6 {
            match r {
                0..=84 => c::client6(),
                85..=91 => c::v6(7, 1),    // no neighbour
                92..=96 => c::v6(9, 0x77), // no route
                _ => {
                    let mut a = [0u8; 16];
                    self.rng.fill(&mut a);
                    a[0] = 0x20;
                    a
                }
            }
        } else {
            match r {
                0..=84 => a4(c::CLIENT4),
                85..=91 => a4([198, 18, 1, 7]),
                92..=96 => a4([198, 18, 77, 9]),
                _ => a4([
                    self.rng.u8(1..224),
                    self.rng.u8(..),
                    self.rng.u8(..),
                    self.rng.u8(1..255),
                ]),
            }
        }
    }

    fn pick_flow(&mut self) -> Flow {
        if !self.flows.is_empty() && self.rng.u8(0..100) < 70 {
            return self.flows[self.rng.usize(..self.flows.len())];
        }
        let svc = self.services[self.rng.usize(..self.services.len())];
        let f = Flow {
            client: self.client(svc.v6),
            cport: self.rng.u16(2048..),
            svc,
        };
        if self.flows.len() < 256 {
            self.flows.push(f);
        } else {
            let i = self.rng.usize(..self.flows.len());
            self.flows[i] = f;
        }
        f
    }

    fn key(f: &Flow) -> FlowKey {
        FlowKey {
            src: f.client,
            dst: f.svc.vip,
            sport: f.cport.to_be_bytes(),
            dport: f.svc.port.to_be_bytes(),
            proto: f.svc.proto,
            family: if f.svc.v6 { AF_INET6 } else { AF_INET },
            _pad: [0; 2],
        }
    }

    /// The backend side of a flow: where it is pinned, or (a stray) any backend address.
    fn backend_for(&mut self, f: &Flow, l: &dyn Lookup) -> ([u8; 16], u16) {
        if self.rng.u8(0..100) < 85 {
            if let Some(b) = l.backend_of(&Self::key(f)) {
                return b;
            }
        }
        let cands: Vec<_> = self
            .backends
            .iter()
            .filter(|b| b.2 == f.svc.proto && b.3 == f.svc.v6)
            .copied()
            .collect();
        if cands.is_empty() {
            let b = self.backends[self.rng.usize(..self.backends.len())];
            return (b.0, b.1);
        }
        let b = cands[self.rng.usize(..cands.len())];
        (b.0, b.1)
    }

    fn payload(&mut self, max: usize) -> Vec<u8> {
        let n = match self.rng.u8(0..10) {
            0..=3 => 0,
            4..=8 => self.rng.usize(1..64.min(max).max(2)),
            _ => self.rng.usize(0..=max),
        };
        (0..n).map(|_| self.rng.u8(..)).collect()
    }

    fn l4(&mut self, proto: u8, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&sport.to_be_bytes());
        b.extend_from_slice(&dport.to_be_bytes());
        if proto == PROTO_TCP {
            b.extend_from_slice(&self.rng.u32(..).to_be_bytes());
            b.extend_from_slice(&self.rng.u32(..).to_be_bytes());
            let flags = match self.rng.u8(0..10) {
                0..=2 => 0x02, // SYN
                3 => 0x12,     // SYN ACK
                4..=6 => 0x18, // PSH ACK
                7 => 0x11,     // FIN ACK
                8 => 0x04,     // RST
                _ => 0x10,     // ACK
            };
            let opts = if self.rng.bool() {
                0
            } else {
                4 * self.rng.usize(0..3)
            };
            b.push((((20 + opts) / 4) << 4) as u8);
            b.push(flags);
            b.extend_from_slice(&64240u16.to_be_bytes());
            b.extend_from_slice(&[0, 0, 0, 0]);
            b.extend(std::iter::repeat_n(1u8, opts)); // NOPs
        } else {
            b.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            b.extend_from_slice(&[0, 0]);
        }
        b.extend_from_slice(payload);
        b
    }

    fn ttl(&mut self) -> u8 {
        match self.rng.u8(0..40) {
            0 => 0,
            1 => 1,
            2 => 2,
            3 => 255,
            _ => 64,
        }
    }

    fn tags(&mut self) -> Vec<(u16, u16)> {
        match self.rng.u8(0..20) {
            0 | 1 => vec![(ETH_P_8021Q, self.rng.u16(1..4095))],
            2 => vec![
                (ETH_P_8021AD, self.rng.u16(1..4095)),
                (ETH_P_8021Q, self.rng.u16(1..4095)),
            ],
            3 => vec![
                (ETH_P_8021Q, self.rng.u16(1..4095)),
                (ETH_P_8021Q, self.rng.u16(1..4095)),
            ],
            _ => vec![],
        }
    }

    fn eth(&self, dmac: [u8; 6], smac: [u8; 6], tags: &[(u16, u16)], et: u16) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&dmac);
        b.extend_from_slice(&smac);
        for (tpid, vid) in tags {
            b.extend_from_slice(&tpid.to_be_bytes());
            b.extend_from_slice(&vid.to_be_bytes());
        }
        b.extend_from_slice(&et.to_be_bytes());
        b
    }

    /// IPv6 extension headers before `proto`: hop-by-hop, destination options, routing
    /// (segments left usually 0).
    fn exts(&mut self) -> Vec<(u8, Vec<u8>)> {
        if self.rng.u8(0..10) < 7 {
            return vec![];
        }
        let n = match self.rng.u8(0..10) {
            0..=6 => self.rng.usize(1..4),
            7 | 8 => self.rng.usize(4..=6),
            _ => self.rng.usize(7..9),
        };
        (0..n)
            .map(|i| {
                let t = if i == 0 && self.rng.bool() {
                    0
                } else {
                    [60, 43, 60][self.rng.usize(..3)]
                };
                let len = 8 * self.rng.usize(1..4);
                let mut body = vec![0u8; len];
                body[1] = (len / 8 - 1) as u8;
                if t == 43 {
                    body[2] = 4;
                    body[3] = if self.rng.u8(0..10) == 0 { 1 } else { 0 };
                } else {
                    body[2] = 1; // PadN
                    body[3] = (len - 4) as u8;
                }
                (t, body)
            })
            .collect()
    }

    /// A complete IP packet (checksums filled in by `fix_checksums` on the frame).
    #[allow(clippy::too_many_arguments)]
    fn ip(
        &mut self,
        v6: bool,
        src: &[u8; 16],
        dst: &[u8; 16],
        proto: u8,
        ttl: u8,
        df: bool,
        exts: &[(u8, Vec<u8>)],
        l4: &[u8],
    ) -> Vec<u8> {
        let mut b = Vec::new();
        if v6 {
            let ext_len: usize = exts.iter().map(|e| e.1.len()).sum();
            b.extend_from_slice(&[0x60, 0, 0, 0]);
            b.extend_from_slice(&((ext_len + l4.len()) as u16).to_be_bytes());
            b.push(exts.first().map_or(proto, |e| e.0));
            b.push(ttl);
            b.extend_from_slice(src);
            b.extend_from_slice(dst);
            for (i, (_, body)) in exts.iter().enumerate() {
                let mut body = body.clone();
                body[0] = exts.get(i + 1).map_or(proto, |e| e.0);
                b.extend_from_slice(&body);
            }
        } else {
            // Now and then IP options (NOPs, then end of options): IHL 6 or 7.
            let opts = if self.rng.u8(0..10) == 0 {
                4 * self.rng.usize(1..3)
            } else {
                0
            };
            b.extend_from_slice(&[0x45 + (opts / 4) as u8, 0]);
            b.extend_from_slice(&((20 + opts + l4.len()) as u16).to_be_bytes());
            b.extend_from_slice(&self.rng.u16(..).to_be_bytes());
            b.extend_from_slice(&(if df { 0x4000u16 } else { 0 }).to_be_bytes());
            b.extend_from_slice(&[ttl, proto, 0, 0]);
            b.extend_from_slice(&src[..4]);
            b.extend_from_slice(&dst[..4]);
            if opts > 0 {
                b.extend(std::iter::repeat_n(1u8, opts - 1));
                b.push(0);
            }
        }
        b.extend_from_slice(l4);
        b
    }

    fn frame(&self, l2: Vec<u8>, ip: &[u8]) -> Vec<u8> {
        let mut f = l2;
        f.extend_from_slice(ip);
        fix_checksums(&mut f);
        f
    }

    fn client_l2(&mut self, v6: bool, hairpin: bool) -> Vec<u8> {
        let tags = self.tags();
        let smac = if hairpin {
            c::HAIRPIN_MAC
        } else {
            c::CLIENT_MAC
        };
        self.eth(
            c::LB_CLIENT_MAC,
            smac,
            &tags,
            if v6 { ETH_P_IPV6 } else { ETH_P_IP },
        )
    }

    fn backend_l2(&mut self, v6: bool) -> Vec<u8> {
        let tags = self.tags();
        self.eth(
            c::LB_BACKENDS_MAC,
            c::backend_mac(1),
            &tags,
            if v6 { ETH_P_IPV6 } else { ETH_P_IP },
        )
    }

    /// The next frame.
    pub fn next(&mut self, l: &dyn Lookup) -> Frame {
        self.n += 1;
        // Later fragments that are due go first.
        if let Some(i) = self.pending.iter().position(|p| p.due <= self.n) {
            let p = self.pending.remove(i);
            let mut fr = Frame {
                bytes: p.frame,
                ingress: p.ingress,
                kind: p.kind.into(),
            };
            if p.kind == "later fragment" {
                self.maybe_mutate(&mut fr);
            }
            return fr;
        }
        let r = self.rng.u8(0..100);
        let mut fr = match r {
            0..=2 => self.direct_packet(false),
            3..=5 => self.direct_packet(true),
            6..=35 => self.client_packet(l),
            36..=57 => self.reply(l),
            58..=69 => self.icmp_error(l),
            70..=79 => self.fragments(l),
            80..=85 => self.big(l),
            86..=91 => self.other(),
            _ => self.random_frame(),
        };
        if r < 92 && self.rng.u16(0..1000) < 2 && self.pending.len() < 64 {
            // Every truncation of this frame (headers byte by byte, then every 64th length)
            // one after the other.
            let len = fr.bytes.len();
            let lengths = (14..len).filter(|&n| n < 160 || n % 64 == 0 || n + 8 > len);
            for (k, n) in lengths.enumerate() {
                self.pending.push(PendingFrag {
                    frame: fr.bytes[..n].to_vec(),
                    ingress: fr.ingress,
                    due: self.n + 1 + k as u64,
                    kind: "truncation sweep",
                });
            }
        } else if r < 92 {
            self.maybe_mutate(&mut fr);
        }
        fr
    }

    fn client_packet(&mut self, _l: &dyn Lookup) -> Frame {
        let f = self.pick_flow();
        let v6 = f.svc.v6;
        let payload = self.payload(1200);
        let l4 = self.l4(f.svc.proto, f.cport, f.svc.port, &payload);
        let ttl = self.ttl();
        let exts = if v6 { self.exts() } else { vec![] };
        let df = self.rng.bool();
        let ip = self.ip(v6, &f.client, &f.svc.vip, f.svc.proto, ttl, df, &exts, &l4);
        let hairpin = f.client == a4(c::HAIRPIN4);
        let l2 = self.client_l2(v6, hairpin);
        let ingress = if self.rng.u8(0..20) == 0 {
            self.ifb
        } else {
            self.ifc
        };
        Frame {
            bytes: self.frame(l2, &ip),
            ingress,
            kind: format!("to service {:?}", f.svc.port),
        }
    }

    /// A client talking to a backend's own address and port (an admin endpoint), or the
    /// backend's answer.
    fn direct_packet(&mut self, answer: bool) -> Frame {
        if self.direct.is_empty() || (!answer && self.rng.u8(0..3) == 0) {
            let b = self.backends[self.rng.usize(..self.backends.len())];
            let client = self.client(b.3);
            // Client ports of direct flows (1024–2047) are never those of VIP flows.
            let d = (client, self.rng.u16(1024..2048), b);
            if self.direct.len() < 64 {
                self.direct.push(d);
            } else {
                let i = self.rng.usize(..64);
                self.direct[i] = d;
            }
        }
        let (client, cport, (baddr, bport, proto, v6)) =
            self.direct[self.rng.usize(..self.direct.len())];
        let payload = self.payload(300);
        let (src, dst, sp, dp) = if answer {
            (baddr, client, bport, cport)
        } else {
            (client, baddr, cport, bport)
        };
        let l4 = self.l4(proto, sp, dp, &payload);
        let ttl = self.ttl();
        let ip = self.ip(v6, &src, &dst, proto, ttl, true, &[], &l4);
        let (l2, ingress) = if answer {
            (self.backend_l2(v6), self.ifb)
        } else {
            (self.client_l2(v6, false), self.ifc)
        };
        Frame {
            bytes: self.frame(l2, &ip),
            ingress,
            kind: format!("direct answer={answer}"),
        }
    }

    fn reply(&mut self, l: &dyn Lookup) -> Frame {
        let f = self.pick_flow();
        let v6 = f.svc.v6;
        let (baddr, bport) = self.backend_for(&f, l);
        let payload = self.payload(1200);
        let l4 = self.l4(f.svc.proto, bport, f.cport, &payload);
        let ttl = self.ttl();
        let exts = if v6 { self.exts() } else { vec![] };
        let df = self.rng.bool();
        // Sometimes a reply to this host (a health check answer).
        let dst = if self.rng.u8(0..20) == 0 {
            if v6 {
                c::v6(1, 2)
            } else {
                a4([198, 18, 2, 1])
            }
        } else {
            f.client
        };
        let ip = self.ip(v6, &baddr, &dst, f.svc.proto, ttl, df, &exts, &l4);
        let l2 = self.backend_l2(v6);
        let ingress = if baddr == a4(c::HAIRPIN4) {
            self.ifc
        } else {
            self.ifb
        };
        Frame {
            bytes: self.frame(l2, &ip),
            ingress,
            kind: "reply".into(),
        }
    }

    fn icmp_error(&mut self, l: &dyn Lookup) -> Frame {
        let f = self.pick_flow();
        let v6 = f.svc.v6;
        let to_backend = self.rng.bool();
        let (baddr, bport) = self.backend_for(&f, l);
        // The quoted packet: a reply VIP → client, or client → backend.
        let (qs, qd, qsp, qdp) = if to_backend {
            (f.svc.vip, f.client, f.svc.port, f.cport)
        } else {
            (f.client, baddr, f.cport, bport)
        };
        let payload = self.payload(200);
        let ql4 = self.l4(f.svc.proto, qsp, qdp, &payload);
        let qttl = self.rng.u8(1..64);
        let qip = self.ip(v6, &qs, &qd, f.svc.proto, qttl, true, &[], &ql4);
        let mut qframe = self.eth([0; 6], [0; 6], &[], if v6 { ETH_P_IPV6 } else { ETH_P_IP });
        qframe.extend_from_slice(&qip);
        fix_checksums(&mut qframe);
        let mut quote = qframe[14..].to_vec();
        let keep = match self.rng.u8(0..4) {
            0 => quote.len(),
            1 => (if v6 { 40 } else { 20 }) + 8,
            2 => self.rng.usize(0..quote.len() + 1),
            _ => quote.len().min(if v6 { 1232 } else { 548 }),
        };
        quote.truncate(keep);
        let (ty, code, rest): (u8, u8, [u8; 4]) = if v6 {
            match self.rng.u8(0..6) {
                0 => (2, 0, 1280u32.to_be_bytes()),
                1 => (1, self.rng.u8(0..7), [0; 4]),
                2 => (3, 0, [0; 4]),
                3 => (4, 0, [0, 0, 0, 6]),
                4 => (128, 0, [0, 1, 0, 1]), // echo request
                _ => (self.rng.u8(..), self.rng.u8(..), [0; 4]),
            }
        } else {
            match self.rng.u8(0..6) {
                0 => (3, 4, [0, 0, 0x05, 0x00]),
                1 => (3, self.rng.u8(0..16), [0; 4]),
                2 => (11, 0, [0; 4]),
                3 => (12, 0, [20, 0, 0, 0]),
                4 => (8, 0, [0, 1, 0, 1]),
                _ => (self.rng.u8(..), self.rng.u8(..), [0; 4]),
            }
        };
        let mut icmp = vec![ty, code, 0, 0];
        icmp.extend_from_slice(&rest);
        icmp.extend_from_slice(&quote);
        // Outer: to the VIP from a router on the client side, or to the client from the
        // backend (or a router on the backend side).
        let (src, dst) = if to_backend {
            let router = if v6 { c::v6(9, 1) } else { a4([198, 18, 1, 9]) };
            (router, f.svc.vip)
        } else {
            let src = if self.rng.bool() {
                baddr
            } else if v6 {
                c::v6(9, 2)
            } else {
                a4([198, 18, 2, 9])
            };
            (src, f.client)
        };
        let proto = if v6 { 58 } else { 1 };
        let ttl = self.ttl();
        let ip = self.ip(v6, &src, &dst, proto, ttl, false, &[], &icmp);
        let (l2, ingress) = if to_backend {
            (self.client_l2(v6, false), self.ifc)
        } else {
            (self.backend_l2(v6), self.ifb)
        };
        Frame {
            bytes: self.frame(l2, &ip),
            ingress,
            kind: format!("icmp error to_backend={to_backend}"),
        }
    }

    /// A datagram cut into fragments: the first is returned, later ones are queued (some
    /// out of order, some lost).
    fn fragments(&mut self, l: &dyn Lookup) -> Frame {
        let f = self.pick_flow();
        let v6 = f.svc.v6;
        let reply = self.rng.u8(0..3) == 0;
        let (src, dst, sp, dp, ingress) = if reply {
            let (b, bp) = self.backend_for(&f, l);
            (b, f.client, bp, f.cport, self.ifb)
        } else {
            (f.client, f.svc.vip, f.cport, f.svc.port, self.ifc)
        };
        let size = [100, 1000, 2000, 3000][self.rng.usize(..4)];
        let payload: Vec<u8> = (0..size).map(|_| self.rng.u8(..)).collect();
        let l4 = self.l4(f.svc.proto, sp, dp, &payload);
        // Full datagram with its L4 checksum.
        let ip_full = self.ip(v6, &src, &dst, f.svc.proto, 64, false, &[], &l4);
        let mut full = self.eth([0; 6], [0; 6], &[], if v6 { ETH_P_IPV6 } else { ETH_P_IP });
        full.extend_from_slice(&ip_full);
        fix_checksums(&mut full);
        let hl = if v6 { 40 } else { (full[14] & 15) as usize * 4 };
        let data = full[14 + hl..].to_vec();
        let chunk = 8 * self.rng.usize(32..=(1400 / 8));
        let id = self.rng.u32(..);
        let ttl = if self.rng.u8(0..20) == 0 { 1 } else { 64 };
        let tags = self.tags();
        let (dmac, smac) = if reply {
            (c::LB_BACKENDS_MAC, c::backend_mac(1))
        } else {
            (c::LB_CLIENT_MAC, c::CLIENT_MAC)
        };
        let mut frames = Vec::new();
        let mut off = 0;
        while off < data.len() {
            let end = (off + chunk).min(data.len());
            let more = end < data.len();
            let piece = &data[off..end];
            let mut b = self.eth(dmac, smac, &tags, if v6 { ETH_P_IPV6 } else { ETH_P_IP });
            if v6 {
                b.extend_from_slice(&[0x60, 0, 0, 0]);
                b.extend_from_slice(&((8 + piece.len()) as u16).to_be_bytes());
                b.extend_from_slice(&[44, ttl]);
                b.extend_from_slice(&src);
                b.extend_from_slice(&dst);
                b.extend_from_slice(&[f.svc.proto, 0]);
                b.extend_from_slice(&(((off / 8) as u16) << 3 | more as u16).to_be_bytes());
                b.extend_from_slice(&id.to_be_bytes());
            } else {
                b.extend_from_slice(&[0x45, 0]);
                b.extend_from_slice(&((20 + piece.len()) as u16).to_be_bytes());
                b.extend_from_slice(&(id as u16).to_be_bytes());
                b.extend_from_slice(
                    &(((off / 8) as u16) | if more { 0x2000 } else { 0 }).to_be_bytes(),
                );
                b.extend_from_slice(&[ttl, f.svc.proto, 0, 0]);
                b.extend_from_slice(&src[..4]);
                b.extend_from_slice(&dst[..4]);
            }
            b.extend_from_slice(piece);
            fix_checksums(&mut b); // the IPv4 header only: fragments keep the datagram's L4 checksum
            frames.push(b);
            off = end;
        }
        let first = frames.remove(0);
        let lose_first = self.rng.u8(0..10) == 0;
        for (i, fr) in frames.into_iter().enumerate() {
            if self.rng.u8(0..20) == 0 {
                continue; // lost
            }
            let due = self.n + 1 + i as u64 + self.rng.u64(0..4);
            self.pending.push(PendingFrag {
                frame: fr,
                ingress,
                due,
                kind: "later fragment",
            });
        }
        if lose_first {
            // The later fragments arrive alone (orphans); this frame is something else.
            return self.client_packet(l);
        }
        Frame {
            bytes: first,
            ingress,
            kind: format!("first fragment reply={reply}"),
        }
    }

    /// Bigger than the links' MTU (1500), IPv4 with or without DF, IPv6.
    fn big(&mut self, l: &dyn Lookup) -> Frame {
        let mut fr = if self.rng.bool() {
            self.client_packet(l)
        } else {
            self.reply(l)
        };
        // Rebuild with a big payload.
        let Some(lay) = layout(&fr.bytes) else {
            return fr;
        };
        let extra = self.rng.usize(1..1800);
        let mut b = fr.bytes[..lay.ip_end].to_vec();
        b.extend((0..extra).map(|_| self.rng.u8(..)));
        let ip = lay.ip;
        if lay.v6 {
            let pl = be16(&b, ip + 4) as usize + extra;
            put16(&mut b, ip + 4, pl as u16);
        } else {
            let tl = be16(&b, ip + 2) as usize + extra;
            put16(&mut b, ip + 2, tl as u16);
        }
        if lay.proto == PROTO_UDP && lay.l4 + 8 <= b.len() {
            let ul = be16(&b, lay.l4 + 4) as usize + extra;
            put16(&mut b, lay.l4 + 4, ul as u16);
        }
        fix_checksums(&mut b);
        fr.bytes = b;
        fr.kind = format!("big {}", fr.kind);
        fr
    }

    /// Non-IP frames and other L4 protocols.
    fn other(&mut self) -> Frame {
        let v6 = self.rng.bool();
        let r = self.rng.u8(0..4);
        let bytes = if r == 0 {
            // ARP request
            let mut b = self.eth([0xff; 6], c::CLIENT_MAC, &[], 0x0806);
            b.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
            b.extend_from_slice(&c::CLIENT_MAC);
            b.extend_from_slice(&c::CLIENT4);
            b.extend_from_slice(&[0; 6]);
            b.extend_from_slice(&c::VIP4);
            b
        } else {
            let proto = [47u8, 50, 132, 59][self.rng.usize(..4)];
            let vip = if v6 { c::vip6() } else { a4(c::VIP4) };
            let client = self.client(v6);
            let body: Vec<u8> = (0..self.rng.usize(0..64))
                .map(|_| self.rng.u8(..))
                .collect();
            let ip = self.ip(v6, &client, &vip, proto, 64, false, &[], &body);
            let l2 = self.client_l2(v6, false);
            self.frame(l2, &ip)
        };
        Frame {
            bytes,
            ingress: self.ifc,
            kind: "other".into(),
        }
    }

    fn random_frame(&mut self) -> Frame {
        let n = self.rng.usize(14..200);
        let mut b: Vec<u8> = (0..n).map(|_| self.rng.u8(..)).collect();
        match self.rng.u8(0..4) {
            0 => put16(&mut b, 12, ETH_P_IP),
            1 => put16(&mut b, 12, ETH_P_IPV6),
            2 => put16(&mut b, 12, ETH_P_8021Q),
            _ => {}
        }
        Frame {
            bytes: b,
            ingress: if self.rng.bool() { self.ifc } else { self.ifb },
            kind: "random bytes".into(),
        }
    }

    fn maybe_mutate(&mut self, fr: &mut Frame) {
        let r = self.rng.u8(0..100);
        if r < 60 {
            return;
        }
        let f = &mut fr.bytes;
        match r {
            60..=67 => {
                let n = self.rng.usize(14..=f.len().max(14));
                f.truncate(n);
                fr.kind.push_str(&format!(" truncated to {n}"));
            }
            70..=77 => {
                let k = self.rng.usize(1..5);
                for _ in 0..k {
                    let i = self.rng.usize(..f.len());
                    f[i] = self.rng.u8(..);
                }
                fr.kind.push_str(" random bytes");
            }
            _ => {
                let what = self.mutate_field(f);
                if self.rng.u8(0..10) < 7 {
                    fix_checksums(f);
                    fr.kind
                        .push_str(&format!(" field {what} (checksums fixed)"));
                } else {
                    fr.kind.push_str(&format!(" field {what}"));
                }
            }
        }
    }

    fn mutate_field(&mut self, f: &mut [u8]) -> &'static str {
        let Some(l) = layout(f) else {
            return "none";
        };
        let ip = l.ip;
        let rnd16 = |rng: &mut Rng| match rng.u8(0..4) {
            0 => 0,
            1 => 0xffff,
            _ => rng.u16(..),
        };
        let choice = self.rng.u8(0..14);
        match choice {
            0 => {
                f[ip] = (self.rng.u8(0..16) << 4) | (f[ip] & 15);
                "version"
            }
            1 if !l.v6 => {
                f[ip] = 0x40 | self.rng.u8(0..16);
                "ihl"
            }
            2 => {
                let off = if l.v6 { ip + 4 } else { ip + 2 };
                let old = be16(f, off);
                let v = match self.rng.u8(0..3) {
                    0 => rnd16(&mut self.rng),
                    1 => old.wrapping_add(self.rng.u16(1..16)),
                    _ => old.wrapping_sub(self.rng.u16(1..16)),
                };
                put16(f, off, v);
                "ip length"
            }
            3 => {
                let off = if l.v6 { ip + 7 } else { ip + 8 };
                f[off] = self.rng.u8(0..3);
                "ttl"
            }
            4 if !l.v6 => {
                let v = match self.rng.u8(0..4) {
                    0 => 0x2000,
                    1 => self.rng.u16(1..0x2000),
                    2 => 0x4000,
                    _ => self.rng.u16(..),
                };
                put16(f, ip + 6, v);
                "ipv4 flags/offset"
            }
            5 => {
                let off = if l.v6 { ip + 6 } else { ip + 9 };
                f[off] = [0, 1, 6, 17, 43, 44, 58, 60, 59, self.rng.u8(..)][self.rng.usize(..10)];
                "protocol"
            }
            6 | 7 => {
                let (off, len) = match (l.v6, choice == 6) {
                    (false, true) => (ip + 12, 4),
                    (false, false) => (ip + 16, 4),
                    (true, true) => (ip + 8, 16),
                    (true, false) => (ip + 24, 16),
                };
                let i = off + self.rng.usize(..len);
                f[i] = self.rng.u8(..);
                "address"
            }
            8 if l.proto == PROTO_TCP && l.l4 + 20 <= f.len() => {
                f[l.l4 + 12] = self.rng.u8(0..16) << 4;
                "tcp data offset"
            }
            9 if l.proto == PROTO_TCP && l.l4 + 20 <= f.len() => {
                f[l.l4 + 13] = self.rng.u8(..);
                "tcp flags"
            }
            10 if l.proto == PROTO_UDP && l.l4 + 8 <= f.len() => {
                let old = be16(f, l.l4 + 4);
                let v = match self.rng.u8(0..3) {
                    0 => rnd16(&mut self.rng),
                    1 => old.wrapping_add(1),
                    _ => old.wrapping_sub(1),
                };
                put16(f, l.l4 + 4, v);
                "udp length"
            }
            11 if l.proto == PROTO_UDP && l.l4 + 8 <= f.len() => {
                put16(f, l.l4 + 6, 0);
                "udp checksum 0"
            }
            12 if l.l4 + 4 <= f.len() => {
                let off = l.l4 + 2 * self.rng.usize(0..2);
                let v = rnd16(&mut self.rng);
                put16(f, off, v);
                "port"
            }
            _ => {
                // A checksum made wrong.
                let off = if !l.v6 && self.rng.bool() {
                    ip + 10
                } else {
                    match l.proto {
                        6 => l.l4 + 16,
                        17 => l.l4 + 6,
                        _ => l.l4 + 2,
                    }
                };
                if off + 2 <= f.len() {
                    let v = be16(f, off) ^ self.rng.u16(1..);
                    put16(f, off, v);
                }
                "checksum"
            }
        }
    }
}
