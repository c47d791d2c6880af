//! Packet builders for the "real network" fixtures (`tests/tests/fixtures_net.rs`): IP packets
//! with any TTL, id, DF/MF and fragment offset, IPv6 extension-header chains, ICMP/ICMPv6
//! errors quoting a packet, frames with 0–3 VLAN tags; a deep checksum check that also covers
//! ICMP (with the ICMPv6 pseudo-header) and the IPv4 header quoted in an ICMP error; and a
//! runner that checks the action, the output, and the global counter each case bumps, and
//! reports every failing case at once.
//!
//! Headers and checksums come from etherparse; only fields it cannot express (a wrong TCP data
//! offset, a wrong UDP length, VLAN stacks, extension-header chains) are patched by hand.
use std::net::IpAddr;

use etherparse::{
    Icmpv4Slice, Icmpv6Slice, IpFragOffset, IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header,
    TcpHeader, UdpHeader,
};

use super::{Fixture, XDP_DROP};

pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88a8;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const EXT_HBH: u8 = 0;
pub const EXT_ROUTING: u8 = 43;
pub const EXT_FRAG: u8 = 44;
pub const EXT_DSTOPTS: u8 = 60;

pub fn ip(a: impl Into<IpAddr>) -> IpAddr {
    a.into()
}

fn v4(a: IpAddr) -> [u8; 4] {
    match a {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(_) => panic!("IPv4 address expected"),
    }
}
fn v6(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(_) => panic!("IPv6 address expected"),
    }
}

/// The L4 payload every data segment carries unless a case gives its own.
pub const DATA: &[u8] = b"xlb fixture payload, 32 bytes.!!";

/// A TCP segment (header + payload) with a correct checksum for `src` → `dst`.
pub fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, syn: bool, payload: &[u8]) -> Vec<u8> {
    let mut h = TcpHeader::new(sport, dport, 1000, 64240);
    if syn {
        h.syn = true;
    } else {
        h.ack = true;
        h.acknowledgment_number = 5000;
        h.psh = !payload.is_empty();
    }
    h.checksum = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => h.calc_checksum_ipv4_raw(s.octets(), d.octets(), payload),
        (IpAddr::V6(s), IpAddr::V6(d)) => h.calc_checksum_ipv6_raw(s.octets(), d.octets(), payload),
        _ => panic!("mixed families"),
    }
    .unwrap();
    let mut out = h.to_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// A TCP segment without payload with the flags `flags` ("SA": SYN-ACK, "R": RST, "RA":
/// RST-ACK, "A": ACK), correct checksum.
pub fn tcp_flags(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: &str) -> Vec<u8> {
    let mut h = TcpHeader::new(sport, dport, 1000, 64240);
    h.syn = flags.contains('S');
    h.ack = flags.contains('A');
    h.rst = flags.contains('R');
    h.fin = flags.contains('F');
    if h.ack {
        h.acknowledgment_number = 5000;
    }
    h.checksum = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => h.calc_checksum_ipv4_raw(s.octets(), d.octets(), &[]),
        (IpAddr::V6(s), IpAddr::V6(d)) => h.calc_checksum_ipv6_raw(s.octets(), d.octets(), &[]),
        _ => panic!("mixed families"),
    }
    .unwrap();
    h.to_bytes().to_vec()
}

/// A UDP datagram (header + payload) with a correct checksum for `src` → `dst`.
pub fn udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let h = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            UdpHeader::with_ipv4_checksum(sport, dport, &ipv4_hdr(s.octets(), d.octets()), payload)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut ip6 = Ipv6Header {
                source: s.octets(),
                destination: d.octets(),
                ..Default::default()
            };
            ip6.next_header = IpNumber::UDP;
            UdpHeader::with_ipv6_checksum(sport, dport, &ip6, payload)
        }
        _ => panic!("mixed families"),
    }
    .unwrap();
    let mut out = h.to_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

fn ipv4_hdr(src: [u8; 4], dst: [u8; 4]) -> Ipv4Header {
    Ipv4Header::new(0, 64, IpNumber::UDP, src, dst).unwrap()
}

/// IPv4 header fields the cases vary.
#[derive(Clone, Copy, Debug)]
pub struct V4 {
    pub ttl: u8,
    pub id: u16,
    pub df: bool,
    pub mf: bool,
    /// Fragment offset in bytes (a multiple of 8).
    pub off: u16,
}
impl Default for V4 {
    fn default() -> Self {
        V4 {
            ttl: 64,
            id: 0x1234,
            df: true,
            mf: false,
            off: 0,
        }
    }
}
impl V4 {
    pub fn ttl(ttl: u8) -> Self {
        V4 {
            ttl,
            ..Default::default()
        }
    }
    pub fn no_df() -> Self {
        V4 {
            df: false,
            ..Default::default()
        }
    }
    pub fn frag(id: u16, off: u16, mf: bool) -> Self {
        V4 {
            id,
            off,
            mf,
            df: false,
            ..Default::default()
        }
    }
    pub fn dec(self) -> Self {
        V4 {
            ttl: self.ttl - 1,
            ..self
        }
    }
}

/// An IPv4 packet around `l4` (which may be a fragment's share of a datagram).
pub fn ip4(src: IpAddr, dst: IpAddr, proto: u8, f: V4, l4: &[u8]) -> Vec<u8> {
    let mut h = Ipv4Header::new(l4.len() as u16, f.ttl, IpNumber(proto), v4(src), v4(dst)).unwrap();
    h.identification = f.id;
    h.dont_fragment = f.df;
    h.more_fragments = f.mf;
    h.fragment_offset = IpFragOffset::try_new(f.off / 8).unwrap();
    h.header_checksum = h.calc_header_checksum();
    let mut out = h.to_bytes().to_vec();
    out.extend_from_slice(l4);
    out
}

/// An IPv6 extension header of `kind` (hop-by-hop, destination options: PadN only; routing:
/// a type 4 header with one segment and `segments_left`). The next-header byte is filled by
/// [`ip6`].
pub fn ext(kind: u8, segments_left: u8) -> Vec<u8> {
    match kind {
        EXT_HBH | EXT_DSTOPTS => vec![0, 0, 1, 4, 0, 0, 0, 0],
        EXT_ROUTING => {
            let mut e = vec![0, 2, 4, segments_left, 0, 0, 0, 0];
            e.extend_from_slice(&super::v6(0x99, 0x300));
            e
        }
        _ => panic!("ext kind {kind}"),
    }
}

/// An IPv6 fragment header (offset in bytes).
pub fn frag6(id: u32, off: u16, more: bool) -> Vec<u8> {
    let mut e = vec![0u8, 0];
    e.extend_from_slice(&((off / 8) << 3 | more as u16).to_be_bytes());
    e.extend_from_slice(&id.to_be_bytes());
    e
}

/// An IPv6 packet: header, the extension headers `exts` (each one's next-header byte set to
/// the following one's kind, the fragment header recognised by its length 8 and kind given in
/// `kinds`), then `l4` of protocol `proto`.
pub fn ip6(
    src: IpAddr,
    dst: IpAddr,
    hop: u8,
    exts: &[(u8, Vec<u8>)],
    proto: u8,
    l4: &[u8],
) -> Vec<u8> {
    let ext_len: usize = exts.iter().map(|(_, e)| e.len()).sum();
    let h = Ipv6Header {
        traffic_class: 0,
        flow_label: Ipv6FlowLabel::ZERO,
        payload_length: (ext_len + l4.len()) as u16,
        next_header: IpNumber(exts.first().map(|(k, _)| *k).unwrap_or(proto)),
        hop_limit: hop,
        source: v6(src),
        destination: v6(dst),
    };
    let mut out = h.to_bytes().to_vec();
    for (i, (_, e)) in exts.iter().enumerate() {
        let mut e = e.clone();
        e[0] = exts.get(i + 1).map(|(k, _)| *k).unwrap_or(proto);
        out.extend_from_slice(&e);
    }
    out.extend_from_slice(l4);
    out
}

/// An IP packet of either family with default header fields (TTL / hop limit `ttl`).
pub fn ipx(src: IpAddr, dst: IpAddr, ttl: u8, proto: u8, l4: &[u8]) -> Vec<u8> {
    match src {
        IpAddr::V4(_) => ip4(src, dst, proto, V4::ttl(ttl), l4),
        IpAddr::V6(_) => ip6(src, dst, ttl, &[], proto, l4),
    }
}

/// An Ethernet frame around the IP packet `l3`, with VLAN tags `(tpid, id)` outermost first.
pub fn eth(smac: [u8; 6], dmac: [u8; 6], tags: &[(u16, u16)], l3: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + 4 * tags.len() + l3.len());
    f.extend_from_slice(&dmac);
    f.extend_from_slice(&smac);
    for (tpid, id) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&id.to_be_bytes());
    }
    let et: u16 = if l3[0] >> 4 == 6 { 0x86dd } else { 0x0800 };
    f.extend_from_slice(&et.to_be_bytes());
    f.extend_from_slice(l3);
    f
}

/// An ICMPv4 message (type, code, the 4 bytes after the checksum, body) with its checksum.
pub fn icmp4_msg(typ: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut m = vec![typ, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(body);
    let s = Icmpv4Slice::from_slice(&m).unwrap();
    let c = s.icmp_type().calc_checksum(s.payload());
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// An ICMPv6 message with its checksum (pseudo-header `src` → `dst`).
pub fn icmp6_msg(
    src: IpAddr,
    dst: IpAddr,
    typ: u8,
    code: u8,
    rest: [u8; 4],
    body: &[u8],
) -> Vec<u8> {
    let mut m = vec![typ, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(body);
    let s = Icmpv6Slice::from_slice(&m).unwrap();
    let c = s
        .icmp_type()
        .calc_checksum(v6(src), v6(dst), s.payload())
        .unwrap();
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// An ICMP (v4) or ICMPv6 (v6) error packet from `src` to `dst` quoting `quote`.
pub fn icmp_err(
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    typ: u8,
    code: u8,
    rest: [u8; 4],
    quote: &[u8],
) -> Vec<u8> {
    match src {
        IpAddr::V4(_) => ip4(
            src,
            dst,
            PROTO_ICMP,
            V4::ttl(ttl),
            &icmp4_msg(typ, code, rest, quote),
        ),
        IpAddr::V6(_) => ip6(
            src,
            dst,
            ttl,
            &[],
            PROTO_ICMPV6,
            &icmp6_msg(src, dst, typ, code, rest, quote),
        ),
    }
}

/// `quote` (the start of an IP packet) with its source (`src_side`) or destination address
/// and port replaced, the quoted IPv4 header checksum fixed, the L4 checksum left alone.
pub fn requote(quote: &[u8], src_side: bool, addr: IpAddr, port: u16) -> Vec<u8> {
    let mut q = quote.to_vec();
    let (off, hl) = match addr {
        IpAddr::V4(a) => {
            let off = if src_side { 12 } else { 16 };
            q[off..off + 4].copy_from_slice(&a.octets());
            (off, ((q[0] & 0xf) as usize) * 4)
        }
        IpAddr::V6(a) => {
            let off = if src_side { 8 } else { 24 };
            q[off..off + 16].copy_from_slice(&a.octets());
            (off, 40)
        }
    };
    let _ = off;
    let p = hl + if src_side { 0 } else { 2 };
    q[p..p + 2].copy_from_slice(&port.to_be_bytes());
    if addr.is_ipv4() {
        fix_ip4_checksum(&mut q);
    }
    q
}

/// Recompute the IPv4 header checksum of `l3` (which may be a truncated packet) with etherparse.
pub fn fix_ip4_checksum(l3: &mut [u8]) {
    let (h, _) = Ipv4Header::from_slice(l3).unwrap();
    let c = h.calc_header_checksum();
    l3[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Where the IP packet of `frame` starts, and its VLAN tags.
pub fn l3_of(frame: &[u8]) -> Result<(usize, Vec<(u16, u16)>), String> {
    let mut off = 12;
    let mut tags = Vec::new();
    loop {
        let et = frame
            .get(off..off + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or("truncated ethernet")?;
        if et == TPID_8021Q || et == TPID_8021AD {
            let id = frame.get(off + 2..off + 4).ok_or("truncated tag")?;
            tags.push((et, u16::from_be_bytes([id[0], id[1]])));
            off += 4;
        } else {
            return Ok((off + 2, tags));
        }
    }
}

/// Check every checksum of `frame` independently with etherparse: the IPv4 header, TCP / UDP
/// (unless the packet is a fragment), ICMP and ICMPv6 (with its pseudo-header), and for ICMP
/// errors the quoted IPv4 header's checksum.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let (l3, _) = l3_of(frame)?;
    let p = &frame[l3..];
    match p.first().map(|b| b >> 4) {
        Some(4) => {
            let (h, rest) = Ipv4Header::from_slice(p).map_err(|e| format!("IPv4: {e}"))?;
            if h.header_checksum != h.calc_header_checksum() {
                return Err("IPv4 header checksum".into());
            }
            let l4_len = (h.total_len as usize)
                .checked_sub(h.header_len())
                .ok_or("IPv4 total length")?;
            let l4 = rest.get(..l4_len).ok_or("IPv4 total length beyond frame")?;
            if h.more_fragments || h.fragment_offset.value() != 0 {
                return Ok(());
            }
            l4_check(
                h.protocol.0,
                IpAddr::from(h.source),
                IpAddr::from(h.destination),
                l4,
            )
        }
        Some(6) => {
            let (h, rest) = Ipv6Header::from_slice(p).map_err(|e| format!("IPv6: {e}"))?;
            let mut rest = rest
                .get(..h.payload_length as usize)
                .ok_or("IPv6 payload beyond frame")?;
            let mut nh = h.next_header.0;
            loop {
                match nh {
                    EXT_HBH | EXT_ROUTING | EXT_DSTOPTS => {
                        let len = (*rest.get(1).ok_or("ext")? as usize + 1) * 8;
                        nh = rest[0];
                        rest = rest.get(len..).ok_or("ext beyond payload")?;
                    }
                    EXT_FRAG => {
                        let b = rest.get(..8).ok_or("frag header")?;
                        if u16::from_be_bytes([b[2], b[3]]) != 0 {
                            return Ok(()); // a fragment: its L4 checksum covers the datagram
                        }
                        nh = b[0];
                        rest = &rest[8..];
                    }
                    _ => break,
                }
            }
            l4_check(
                nh,
                IpAddr::from(h.source),
                IpAddr::from(h.destination),
                rest,
            )
        }
        _ => Err("no IP header".into()),
    }
}

fn l4_check(proto: u8, src: IpAddr, dst: IpAddr, l4: &[u8]) -> Result<(), String> {
    match (proto, src, dst) {
        (PROTO_TCP, IpAddr::V4(s), IpAddr::V4(d)) => {
            let (h, pl) = TcpHeader::from_slice(l4).map_err(|e| format!("TCP: {e}"))?;
            (h.checksum
                == h.calc_checksum_ipv4_raw(s.octets(), d.octets(), pl)
                    .unwrap())
            .then_some(())
            .ok_or("TCP checksum".into())
        }
        (PROTO_TCP, IpAddr::V6(s), IpAddr::V6(d)) => {
            let (h, pl) = TcpHeader::from_slice(l4).map_err(|e| format!("TCP: {e}"))?;
            (h.checksum
                == h.calc_checksum_ipv6_raw(s.octets(), d.octets(), pl)
                    .unwrap())
            .then_some(())
            .ok_or("TCP checksum".into())
        }
        (PROTO_UDP, s, d) => {
            let (h, pl) = UdpHeader::from_slice(l4).map_err(|e| format!("UDP: {e}"))?;
            let want = match (s, d) {
                (IpAddr::V4(_), _) if h.checksum == 0 => return Ok(()),
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    h.calc_checksum_ipv4_raw(s.octets(), d.octets(), pl)
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    h.calc_checksum_ipv6_raw(s.octets(), d.octets(), pl)
                }
                _ => unreachable!(),
            }
            .unwrap();
            (h.checksum == want)
                .then_some(())
                .ok_or("UDP checksum".into())
        }
        (PROTO_ICMP, _, _) => {
            let s = Icmpv4Slice::from_slice(l4).map_err(|e| format!("ICMP: {e}"))?;
            if s.checksum() != s.icmp_type().calc_checksum(s.payload()) {
                return Err("ICMP checksum".into());
            }
            if matches!(l4[0], 3 | 11 | 12) {
                let q = &l4[8..];
                let (qh, _) = Ipv4Header::from_slice(q).map_err(|e| format!("quoted IPv4: {e}"))?;
                if qh.header_checksum != qh.calc_header_checksum() {
                    return Err("quoted IPv4 header checksum".into());
                }
            }
            Ok(())
        }
        (PROTO_ICMPV6, IpAddr::V6(s), IpAddr::V6(d)) => {
            let m = Icmpv6Slice::from_slice(l4).map_err(|e| format!("ICMPv6: {e}"))?;
            let want = m
                .icmp_type()
                .calc_checksum(s.octets(), d.octets(), m.payload())
                .unwrap();
            (m.checksum() == want)
                .then_some(())
                .ok_or("ICMPv6 checksum".into())
        }
        _ => Ok(()),
    }
}

/// A check of an output frame.
pub type OutCheck = Box<dyn Fn(&[u8]) -> Result<(), String>>;

/// What a case expects besides the action.
pub enum Exp {
    /// The frame leaves untouched.
    Same,
    /// Dropped: no output to compare.
    Dropped,
    /// Exactly this frame (and its checksums must verify).
    Frame(Vec<u8>),
    /// A check of the output (checksums verified as well).
    Check(OutCheck),
}

/// Runs cases against one fixture in order (state carries over: flows, fragments) and
/// collects every failure.
pub struct Runner {
    pub fx: Fixture,
    pub failures: Vec<String>,
    pub cases: usize,
}

impl Runner {
    pub fn new(fx: Fixture) -> Self {
        Runner {
            fx,
            failures: Vec::new(),
            cases: 0,
        }
    }

    /// One case: `input` received on `ifindex` must give `action` and `exp`, and bump the
    /// global counter `counter` (if given) by exactly one.
    pub fn case(
        &mut self,
        name: &str,
        input: Vec<u8>,
        ifindex: u32,
        action: u32,
        exp: Exp,
        counter: Option<&str>,
    ) -> Vec<u8> {
        self.cases += 1;
        let before = counter.map(|c| self.fx.global(c));
        let all_before = self.fx.dp.global_counters();
        let (rc, out) = self.fx.run(&input, ifindex);
        let mut errs = Vec::new();
        if rc != action {
            errs.push(format!("action {} (expected {})", act(rc), act(action)));
        }
        if let (Some(c), Some(b)) = (counter, before) {
            let d = self.fx.global(c).wrapping_sub(b);
            if d != 1 {
                errs.push(format!("counter {c} +{d} (expected +1)"));
            }
        }
        if rc == action && action != XDP_DROP {
            match &exp {
                Exp::Same | Exp::Dropped => {
                    if out != input {
                        errs.push(format!(
                            "output differs from the input\n    got      {}\n    input    {}",
                            hex(&out),
                            hex(&input)
                        ));
                    }
                }
                Exp::Frame(want) => {
                    if &out != want {
                        errs.push(format!(
                            "output differs\n    got      {}\n    expected {}\n    first difference at byte {}",
                            hex(&out),
                            hex(want),
                            out.iter()
                                .zip(want.iter())
                                .position(|(a, b)| a != b)
                                .unwrap_or(out.len().min(want.len()))
                        ));
                    } else if let Err(e) = verify_checksums(&out) {
                        errs.push(format!("checksum: {e}"));
                    }
                }
                Exp::Check(f) => {
                    if let Err(e) = f(&out).and_then(|_| verify_checksums(&out)) {
                        errs.push(format!("{e}\n    got {}", hex(&out)));
                    }
                }
            }
        }
        if !errs.is_empty() {
            let changed: Vec<String> = self
                .fx
                .dp
                .global_counters()
                .into_iter()
                .zip(all_before)
                .filter(|((_, a), (_, b))| a != b)
                .map(|((n, a), (_, b))| format!("{n} +{}", a.wrapping_sub(b)))
                .collect();
            self.failures.push(format!(
                "[{name}] {} (counters: {})",
                errs.join("; "),
                changed.join(", ")
            ));
        }
        out
    }

    /// An extra assertion about the state a case left (recorded like a failing case).
    pub fn expect(&mut self, name: &str, ok: bool, what: &str) {
        if !ok {
            self.failures.push(format!("[{name}] {what}"));
        }
    }

    /// Fails the test with every failure listed, unless there are none; checks that the group
    /// has at least `min` cases.
    pub fn finish(self, group: &str, min: usize) {
        eprintln!(
            "{group}: {} cases, {} failed",
            self.cases,
            self.failures.len()
        );
        assert!(
            self.cases >= min,
            "{group}: {} cases, expected at least {min}",
            self.cases
        );
        assert!(
            self.failures.is_empty(),
            "{group}: {} of {} cases failed:\n{}",
            self.failures.len(),
            self.cases,
            self.failures.join("\n")
        );
    }
}

pub fn act(a: u32) -> &'static str {
    match a {
        0 => "XDP_ABORTED",
        1 => "XDP_DROP",
        2 => "XDP_PASS",
        3 => "XDP_TX",
        4 => "XDP_REDIRECT",
        _ => "?",
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
