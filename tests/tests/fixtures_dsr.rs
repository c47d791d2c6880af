//! `BPF_PROG_TEST_RUN` fixtures for direct server return (README, "Forwarding modes" and the
//! DSR rows of "What the data path does with each packet"): for `l2`, `ipip` and `gue`, IPv4
//! and IPv6, TCP and UDP, the exact frame that leaves for the backend (MACs; every outer
//! header field: version, lengths, TOS / traffic class, flow label, DF, TTL, protocol, the
//! source chosen from the flow hash within the prefix, the GUE UDP ports and header; the inner
//! packet unchanged but for its TTL), built here from scratch, with every checksum verified
//! independently (the outer IPv4 header, the GUE UDP checksum over IPv6 in full, the inner
//! ones); frames too big once encapsulated (ICMP with the MTU minus the overhead, or the
//! kernel for IPv4 without DF); and `xlb_decap`: IPIP and GUE in, the inner packet out,
//! what is not for it passed untouched, malformed tunnels dropped, the VIP filter, and
//! xlb's own encapsulated frames decapsulated back to the client's packet; ICMP errors about
//! DSR replies carried to the flow's backend unchanged, and decapsulated back.
//!
//! Needs root (skipped with a message otherwise).
mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun, TestRunOptions};
use common::{net::*, *};
use lb_common::hash::flow_hash;

const C4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2));
const C6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2));
const B4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 2, 11));
const B6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x11));
const SEED: u32 = 7;

const CONFIG: &str = r#"
[daemon]
interfaces = ["veth-client", "veth-backends"]
maglev_table_size = 1021
conntrack_size = 65536
hash_seed = 7

[[service]]
name = "l2-tcp"
vip = "198.18.100.11"
port = 80
protocol = "tcp"
target_group = "b4"
forwarding = "dsr"
dsr_encap = "l2"

[[service]]
name = "l2-udp"
vip = "198.18.100.11"
port = 53
protocol = "udp"
target_group = "b4"
forwarding = "dsr"
dsr_encap = "l2"

[[service]]
name = "ipip-tcp"
vip = "198.18.100.12"
port = 80
protocol = "tcp"
target_group = "b4"
forwarding = "dsr"
dsr_encap = "ipip"
dsr_source_prefix = "198.18.99.0/24"

[[service]]
name = "ipip-udp"
vip = "198.18.100.12"
port = 53
protocol = "udp"
target_group = "b4"
forwarding = "dsr"
dsr_encap = "ipip"
dsr_source_prefix = "198.18.99.0/24"

[[service]]
name = "gue-tcp"
vip = "198.18.100.13"
port = 80
protocol = "tcp"
target_group = "b4"
forwarding = "dsr"
dsr_encap = "gue"
dsr_source_prefix = "198.18.99.0/24"

[[service]]
name = "gue-udp"
vip = "198.18.100.13"
port = 53
protocol = "udp"
target_group = "b4"
forwarding = "dsr"
dsr_encap = "gue"
dsr_source_prefix = "198.18.99.0/24"
dsr_gue_port = 7777

[[service]]
name = "l2-tcp6"
vip = "2001:db8:100::11"
port = 80
protocol = "tcp"
target_group = "b6"
forwarding = "dsr"
dsr_encap = "l2"

[[service]]
name = "l2-udp6"
vip = "2001:db8:100::11"
port = 53
protocol = "udp"
target_group = "b6"
forwarding = "dsr"
dsr_encap = "l2"

[[service]]
name = "ipip-tcp6"
vip = "2001:db8:100::12"
port = 80
protocol = "tcp"
target_group = "b6"
forwarding = "dsr"
dsr_encap = "ipip"
dsr_source_prefix = "2001:db8:99::/112"

[[service]]
name = "ipip-udp6"
vip = "2001:db8:100::12"
port = 53
protocol = "udp"
target_group = "b6"
forwarding = "dsr"
dsr_encap = "ipip"
dsr_source_prefix = "2001:db8:99::/112"

[[service]]
name = "gue-tcp6"
vip = "2001:db8:100::13"
port = 80
protocol = "tcp"
target_group = "b6"
forwarding = "dsr"
dsr_encap = "gue"
dsr_source_prefix = "2001:db8:99::/112"

[[service]]
name = "gue-udp6"
vip = "2001:db8:100::13"
port = 53
protocol = "udp"
target_group = "b6"
forwarding = "dsr"
dsr_encap = "gue"
dsr_source_prefix = "2001:db8:99::/112"
dsr_gue_port = 7777

[[service]]
name = "l2-gw"
vip = "198.18.100.14"
port = 80
protocol = "tcp"
target_group = "gw"
forwarding = "dsr"
dsr_encap = "l2"

[[service]]
name = "l2-noneigh"
vip = "198.18.100.15"
port = 80
protocol = "tcp"
target_group = "noneigh"
forwarding = "dsr"
dsr_encap = "l2"

[[service]]
name = "ipip-noneigh"
vip = "198.18.100.16"
port = 80
protocol = "tcp"
target_group = "noneigh"
forwarding = "dsr"
dsr_encap = "ipip"
dsr_source_prefix = "198.18.99.0/24"

[[target_group]]
name = "gw"
backends = ["198.18.5.11"]

[[target_group]]
name = "noneigh"
backends = ["198.18.2.44"]

[[target_group]]
name = "b4"
backends = ["198.18.2.11"]

[[target_group]]
name = "b6"
backends = ["2001:db8:2::11"]
"#;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Encap {
    L2,
    Ipip,
    Gue,
}

fn vip(e: Encap, v6: bool) -> IpAddr {
    let last = match e {
        Encap::L2 => 0x11,
        Encap::Ipip => 0x12,
        Encap::Gue => 0x13,
    };
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, last))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 18, 100, last as u8 - 0x11 + 11))
    }
}

fn bytes16(a: IpAddr) -> [u8; 16] {
    let mut b = [0u8; 16];
    match a {
        IpAddr::V4(a) => b[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => b = a.octets(),
    }
    b
}

/// The flow hash of a client packet (as `lb_common::hash::flow_hash`, seed 7).
fn hash(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, proto: u8) -> u32 {
    flow_hash(
        &bytes16(src),
        &bytes16(dst),
        sport.to_be_bytes(),
        dport.to_be_bytes(),
        proto,
        SEED,
    )
}

/// The outer source: the prefix (198.18.99.0/24, 2001:db8:99::/112) with its host bits from
/// the flow hash.
fn outer_src(v6: bool, h: u32) -> IpAddr {
    if v6 {
        let mut a = Ipv6Addr::new(0x2001, 0xdb8, 0x99, 0, 0, 0, 0, 0).octets();
        a[14] = (h >> 8) as u8;
        a[15] = h as u8;
        IpAddr::V6(Ipv6Addr::from(a))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 18, 99, h as u8))
    }
}

/// The RFC 1071 checksum of `data` starting from the 32-bit sum `sum`.
fn checksum(mut sum: u32, data: &[u8]) -> u16 {
    for c in data.chunks(2) {
        sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// `inner` (an IP packet, TTL already decremented) encapsulated as the README says, from
/// `src` to `dst`; `h`: the flow hash; `gue_port` for GUE.
fn encapsulate(e: Encap, inner: &[u8], src: IpAddr, dst: IpAddr, h: u32, gue_port: u16) -> Vec<u8> {
    let v6 = inner[0] >> 4 == 6;
    let mut payload = Vec::new();
    if e == Encap::Gue {
        let ulen = (8 + 4 + inner.len()) as u16;
        let sport = 0xc000 | (h & 0x3fff) as u16;
        payload.extend_from_slice(&sport.to_be_bytes());
        payload.extend_from_slice(&gue_port.to_be_bytes());
        payload.extend_from_slice(&ulen.to_be_bytes());
        payload.extend_from_slice(&[0, 0]);
        payload.extend_from_slice(&[0, if v6 { 41 } else { 4 }, 0, 0]);
        payload.extend_from_slice(inner);
        if v6 {
            // The full UDP checksum over the IPv6 pseudo-header.
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&bytes16(src));
            pseudo.extend_from_slice(&bytes16(dst));
            pseudo.extend_from_slice(&(ulen as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 17]);
            let mut all = pseudo;
            all.extend_from_slice(&payload);
            let mut c = checksum(0, &all);
            if c == 0 {
                c = 0xffff;
            }
            payload[6..8].copy_from_slice(&c.to_be_bytes());
        }
    } else {
        payload.extend_from_slice(inner);
    }
    let proto = match (e, v6) {
        (Encap::Gue, _) => 17,
        (_, false) => 4,
        (_, true) => 41,
    };
    if v6 {
        let tc = (inner[0] << 4) | (inner[1] >> 4);
        let fl = h & 0xfffff;
        let mut ip = vec![
            0x60 | (tc >> 4),
            (tc << 4) | ((fl >> 16) as u8 & 0xf),
            (fl >> 8) as u8,
            fl as u8,
        ];
        ip.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        ip.push(proto);
        ip.push(64);
        ip.extend_from_slice(&bytes16(src));
        ip.extend_from_slice(&bytes16(dst));
        ip.extend_from_slice(&payload);
        ip
    } else {
        let df = inner[6] & 0x40 != 0;
        let tot = (20 + payload.len()) as u16;
        let mut ip = vec![0x45, inner[1]];
        ip.extend_from_slice(&tot.to_be_bytes());
        ip.extend_from_slice(&[0, 0, if df { 0x40 } else { 0 }, 0, 64, proto, 0, 0]);
        ip.extend_from_slice(&bytes16(src)[..4]);
        ip.extend_from_slice(&bytes16(dst)[..4]);
        let c = checksum(0, &ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        ip.extend_from_slice(&payload);
        ip
    }
}

/// The IP packet `l3` with its TTL / hop limit one lower (IPv4 checksum fixed).
fn dec(mut l3: Vec<u8>) -> Vec<u8> {
    if l3[0] >> 4 == 4 {
        l3[8] -= 1;
        fix_ip4_checksum(&mut l3);
    } else {
        l3[7] -= 1;
    }
    l3
}

/// Check the inner packet's checksums too (the outer ones are checked by the runner).
fn inner_ok(frame: &[u8], e: Encap) -> Result<(), String> {
    let (l3, _) = l3_of(frame)?;
    let v6 = frame[l3] >> 4 == 6;
    let skip = match e {
        Encap::L2 => 0,
        Encap::Ipip => {
            if v6 {
                40
            } else {
                20
            }
        }
        Encap::Gue => {
            if v6 {
                52
            } else {
                32
            }
        }
    };
    let inner = &frame[l3 + skip..];
    verify_checksums(&eth([0; 6], [0; 6], &[], inner)).map_err(|e| format!("inner: {e}"))
}

fn client_frame(l3: Vec<u8>) -> Vec<u8> {
    eth(CLIENT_MAC, LB_CLIENT_MAC, &[], &l3)
}

/// A TCP data segment or UDP datagram of IP length `len` (at least 100) from the client.
fn packet(
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    tcp_: bool,
    len: usize,
    f: V4,
) -> Vec<u8> {
    let hl = if src.is_ipv4() { 20 } else { 40 } + if tcp_ { 20 } else { 8 };
    let payload: Vec<u8> = (0..len - hl).map(|i| (i * 7 + 3) as u8).collect();
    let l4 = if tcp_ {
        tcp(src, dst, sport, dport, false, &payload)
    } else {
        udp(src, dst, sport, dport, &payload)
    };
    let proto = if tcp_ { PROTO_TCP } else { PROTO_UDP };
    match src {
        IpAddr::V4(_) => ip4(src, dst, proto, f, &l4),
        IpAddr::V6(_) => ip6(src, dst, f.ttl, &[], proto, &l4),
    }
}

/// Exactly `want` (an untagged frame with an outer IPv4 header) but for the outer IPv4 id,
/// random when the outer DF is clear (the header checksum is verified all the same).
fn id_aside(want: Vec<u8>) -> Exp {
    Exp::Check(Box::new(move |out: &[u8]| {
        if out.len() != want.len() {
            return Err(format!("length {} ≠ {}", out.len(), want.len()));
        }
        let mut got = out.to_vec();
        got[18..20].copy_from_slice(&want[18..20]);
        fix_ip4_checksum(&mut got[14..]);
        if got != want {
            return Err(format!(
                "frame (id aside)\n    got  {}\n    want {}",
                hex(out),
                hex(&want)
            ));
        }
        Ok(())
    }))
}

fn name(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Every encapsulation, family and protocol: the exact frame to the backend.
#[test]
fn dsr_frames_to_the_backend() {
    if skip() {
        return;
    }
    let mut r = Runner::new(Fixture::with_config(CONFIG));
    let ci = r.fx.ifindex_client;
    let mut port = 40000u16;
    for e in [Encap::L2, Encap::Ipip, Encap::Gue] {
        for v6 in [false, true] {
            for tcp_ in [true, false] {
                for len in [100usize, 333] {
                    port += 1;
                    let (c, b) = if v6 { (C6, B6) } else { (C4, B4) };
                    let v = vip(e, v6);
                    let dport = if tcp_ { 80 } else { 53 };
                    let proto = if tcp_ { PROTO_TCP } else { PROTO_UDP };
                    let f = V4 {
                        // TOS / traffic class carried over to the outer header.
                        ..V4::default()
                    };
                    let mut inner = packet(c, v, port, dport, tcp_, len, f);
                    // A traffic class / TOS to see it copied (DSCP 10).
                    if v6 {
                        inner[0] = 0x62;
                        inner[1] = 0x80;
                    } else {
                        inner[1] = 0x28;
                        fix_ip4_checksum(&mut inner);
                    }
                    let h = hash(c, v, port, dport, proto);
                    let out_l3 = match e {
                        Encap::L2 => dec(inner.clone()),
                        _ => encapsulate(
                            e,
                            &dec(inner.clone()),
                            outer_src(v6, h),
                            b,
                            h,
                            if tcp_ { 6080 } else { 7777 },
                        ),
                    };
                    let want = eth(LB_BACKENDS_MAC, backend_mac(1), &[], &out_l3);
                    let out = r.case(
                        name(format!(
                            "{e:?} {} {} len {len}",
                            if v6 { "v6" } else { "v4" },
                            if tcp_ { "tcp" } else { "udp" }
                        )),
                        client_frame(inner),
                        ci,
                        XDP_REDIRECT,
                        Exp::Frame(want),
                        Some("forwarded"),
                    );
                    if let Err(err) = inner_ok(&out, e) {
                        r.expect("inner checksums", false, &err);
                    }
                    // The flow is pinned (no reverse entry: nothing to translate back).
                    let key = flow_key(c, v, port, dport, proto);
                    let pinned = r.fx.has_confirmed_flow(&key);
                    r.expect("pinned", pinned, "the DSR flow has no CONNTRACK entry");
                }
            }
        }
    }
    let rev = r.fx.dp.maps().reverse.keys().count();
    r.expect(
        "no REVERSE entries",
        rev == 0,
        "DSR flows made REVERSE entries",
    );
    r.finish("dsr frames", 24);
}

/// A DSR handshake waits in `UNCONFIRMED` until the client's ACK (no reply will come through
/// xlb), then enters the connection table and counts as a new flow; a UDP flow enters it at
/// once.
#[test]
fn dsr_flows_enter_the_connection_table() {
    if skip() {
        return;
    }
    let mut fx = Fixture::with_config(CONFIG);
    let id = fx
        .state
        .desired()
        .unwrap()
        .services
        .iter()
        .find(|s| s.name == "ipip-tcp")
        .unwrap()
        .id;
    let v = vip(Encap::Ipip, false);
    let ci = fx.ifindex_client;
    let syn = ip4(
        C4,
        v,
        PROTO_TCP,
        V4::default(),
        &tcp(C4, v, 47000, 80, true, &[]),
    );
    let (rc, _) = fx.run(&client_frame(syn), ci);
    assert_eq!(act(rc), "XDP_REDIRECT");
    let key = flow_key(C4, v, 47000, 80, PROTO_TCP);
    assert!(
        fx.has_flow(&key) && !fx.has_confirmed_flow(&key),
        "a SYN waits in UNCONFIRMED"
    );
    assert_eq!(fx.dp.service_counters(id).new_flows, 0);
    let ack = packet(C4, v, 47000, 80, true, 100, V4::default());
    let (rc, _) = fx.run(&client_frame(ack), ci);
    assert_eq!(act(rc), "XDP_REDIRECT");
    assert!(
        fx.has_confirmed_flow(&key),
        "the ACK confirms the handshake"
    );
    assert_eq!(fx.dp.service_counters(id).new_flows, 1);
    let u = ip4(
        C4,
        v,
        PROTO_UDP,
        V4::default(),
        &udp(C4, v, 47001, 53, DATA),
    );
    let (rc, _) = fx.run(&client_frame(u), ci);
    assert_eq!(act(rc), "XDP_REDIRECT");
    assert!(
        fx.has_confirmed_flow(&flow_key(C4, v, 47001, 53, PROTO_UDP)),
        "UDP at once"
    );
}

/// GUE over IPv6 for an inner packet with an extension header: the UDP checksum cannot be
/// derived from the inner one and is zero (RFC 6935/6936); all else as usual.
#[test]
fn dsr_gue_v6_zero_checksum_with_extension_headers() {
    if skip() {
        return;
    }
    let fx = Fixture::with_config(CONFIG);
    let v = vip(Encap::Gue, true);
    let l4 = tcp(C6, v, 48000, 80, false, DATA);
    let inner = ip6(
        C6,
        v,
        64,
        &[(EXT_DSTOPTS, ext(EXT_DSTOPTS, 0))],
        PROTO_TCP,
        &l4,
    );
    let h = hash(C6, v, 48000, 80, PROTO_TCP);
    let mut want = eth(
        LB_BACKENDS_MAC,
        backend_mac(1),
        &[],
        &encapsulate(
            Encap::Gue,
            &dec(inner.clone()),
            outer_src(true, h),
            B6,
            h,
            6080,
        ),
    );
    want[14 + 40 + 6] = 0;
    want[14 + 40 + 7] = 0;
    let (rc, out) = fx.run(&client_frame(inner), fx.ifindex_client);
    assert_eq!(act(rc), "XDP_REDIRECT");
    assert_eq!(hex(&out), hex(&want));
}

/// A later fragment follows its first fragment's encapsulation.
#[test]
fn dsr_fragments_follow() {
    if skip() {
        return;
    }
    let mut r = Runner::new(Fixture::with_config(CONFIG));
    let ci = r.fx.ifindex_client;
    let v = vip(Encap::Ipip, false);
    let payload: Vec<u8> = (0..64u8).collect();
    let l4 = udp(C4, v, 41000, 53, &payload);
    let first = ip4(C4, v, PROTO_UDP, V4::frag(0x4321, 0, true), &l4[..40]);
    let later = ip4(C4, v, PROTO_UDP, V4::frag(0x4321, 40, false), &l4[40..]);
    let h1 = hash(C4, v, 41000, 53, PROTO_UDP);
    let h2 = hash(C4, v, 0, 0, PROTO_UDP);
    for (n, l3, h) in [("first", first, h1), ("later", later, h2)] {
        let want = encapsulate(Encap::Ipip, &dec(l3.clone()), outer_src(false, h), B4, h, 0);
        r.case(
            n,
            client_frame(l3),
            ci,
            XDP_REDIRECT,
            id_aside(eth(LB_BACKENDS_MAC, backend_mac(1), &[], &want)),
            Some("forwarded"),
        );
    }
    r.finish("dsr fragments", 2);
}

/// The outcome must be an ICMP "fragmentation needed" / ICMPv6 "packet too big" to the
/// client from the VIP carrying `mtu`, out of the ingress (MACs swapped).
fn too_big(from: IpAddr, to: IpAddr, mtu: u32) -> Exp {
    Exp::Check(Box::new(move |out: &[u8]| {
        if out[0..6] != CLIENT_MAC || out[6..12] != LB_CLIENT_MAC {
            return Err("MACs".into());
        }
        let (l3, _) = l3_of(out)?;
        let p = &out[l3..];
        let (icmp, src, dst) = if from.is_ipv4() {
            let (h, rest) = etherparse::Ipv4Header::from_slice(p).map_err(|e| e.to_string())?;
            (rest, IpAddr::from(h.source), IpAddr::from(h.destination))
        } else {
            let (h, rest) = etherparse::Ipv6Header::from_slice(p).map_err(|e| e.to_string())?;
            (rest, IpAddr::from(h.source), IpAddr::from(h.destination))
        };
        if (src, dst) != (from, to) {
            return Err(format!("{src} → {dst}"));
        }
        let (want, got) = if from.is_ipv4() {
            ((3, 4), u16::from_be_bytes([icmp[6], icmp[7]]) as u32)
        } else {
            (
                (2, 0),
                u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]),
            )
        };
        if (icmp[0], icmp[1]) != want || got != mtu {
            return Err(format!(
                "type {} code {} mtu {got}, want {want:?} mtu {mtu}",
                icmp[0], icmp[1]
            ));
        }
        Ok(())
    }))
}

/// With the backends' link at MTU 1400: a packet that fits but not once encapsulated is
/// answered with the MTU minus the overhead; IPv4 without DF goes to the kernel
/// encapsulated (outer DF clear) to be fragmented; exactly fitting ones are forwarded.
#[test]
fn dsr_too_big_once_encapsulated() {
    if skip() {
        return;
    }
    let fx = Fixture::with_config(CONFIG);
    fx.set_mtu("veth-backends", 1400);
    let mut r = Runner::new(fx);
    let ci = r.fx.ifindex_client;
    let mut port = 42000;
    for e in [Encap::L2, Encap::Ipip, Encap::Gue] {
        for v6 in [false, true] {
            let overhead = match (e, v6) {
                (Encap::L2, _) => 0,
                (Encap::Ipip, false) => 20,
                (Encap::Ipip, true) => 40,
                (Encap::Gue, false) => 32,
                (Encap::Gue, true) => 52,
            };
            let (c, b) = if v6 { (C6, B6) } else { (C4, B4) };
            let v = vip(e, v6);
            let fam = if v6 { "v6" } else { "v4" };
            // One byte too many.
            port += 1;
            let inner = packet(c, v, port, 80, true, 1400 - overhead + 1, V4::default());
            r.case(
                name(format!("{e:?} {fam}: too big by one → ICMP")),
                client_frame(inner),
                ci,
                XDP_TX,
                too_big(v, c, 1400 - overhead as u32),
                Some("too_big_icmp"),
            );
            // Exactly fitting.
            port += 1;
            let inner = packet(c, v, port, 80, true, 1400 - overhead, V4::default());
            let h = hash(c, v, port, 80, PROTO_TCP);
            let out_l3 = match e {
                Encap::L2 => dec(inner.clone()),
                _ => encapsulate(e, &dec(inner.clone()), outer_src(v6, h), b, h, 6080),
            };
            r.case(
                name(format!("{e:?} {fam}: exactly the MTU → forwarded")),
                client_frame(inner),
                ci,
                XDP_REDIRECT,
                Exp::Frame(eth(LB_BACKENDS_MAC, backend_mac(1), &[], &out_l3)),
                Some("forwarded"),
            );
            if e != Encap::L2 && !v6 {
                // IPv4 without DF: the kernel fragments the outer packet.
                port += 1;
                let inner = packet(c, v, port, 80, true, 1400, V4::no_df());
                let h = hash(c, v, port, 80, PROTO_TCP);
                let want = eth(
                    CLIENT_MAC,
                    LB_CLIENT_MAC,
                    &[],
                    &encapsulate(e, &inner, outer_src(false, h), b, h, 6080),
                );
                r.case(
                    name(format!("{e:?} v4 without DF → kernel")),
                    client_frame(inner),
                    ci,
                    XDP_PASS,
                    id_aside(want),
                    Some("too_big_kernel"),
                );
            }
        }
    }
    r.finish("dsr too big", 14);
}

/// What the kernel cannot do for `l2` (deliver the packet to a backend it has no MAC for, or
/// through a gateway) is dropped; `ipip` without a neighbour goes to the kernel encapsulated.
#[test]
fn dsr_without_a_direct_path() {
    if skip() {
        return;
    }
    let fx = Fixture::with_config(CONFIG);
    fx.sh("ip route add 198.18.5.0/24 via 198.18.2.12 dev veth-backends");
    let mut r = Runner::new(fx);
    let ci = r.fx.ifindex_client;
    let gw = IpAddr::V4(Ipv4Addr::new(198, 18, 100, 14));
    let l3 = packet(C4, gw, 46000, 80, true, 100, V4::default());
    r.case(
        "l2 through a gateway → dropped",
        client_frame(l3),
        ci,
        XDP_DROP,
        Exp::Dropped,
        Some("egress_kernel"),
    );
    let v = IpAddr::V4(Ipv4Addr::new(198, 18, 100, 15));
    let l3 = packet(C4, v, 46001, 80, true, 100, V4::default());
    r.case(
        "l2 without a neighbour entry → dropped",
        client_frame(l3),
        ci,
        XDP_DROP,
        Exp::Dropped,
        Some("fib_no_neigh"),
    );
    let v = IpAddr::V4(Ipv4Addr::new(198, 18, 100, 16));
    let b = IpAddr::V4(Ipv4Addr::new(198, 18, 2, 44));
    let l3 = packet(C4, v, 46002, 80, true, 100, V4::default());
    let h = hash(C4, v, 46002, 80, PROTO_TCP);
    let want = encapsulate(Encap::Ipip, &l3, outer_src(false, h), b, h, 0);
    r.case(
        "ipip without a neighbour entry → the kernel, encapsulated",
        client_frame(l3),
        ci,
        XDP_PASS,
        Exp::Frame(eth(CLIENT_MAC, LB_CLIENT_MAC, &[], &want)),
        Some("fib_no_neigh"),
    );
    r.finish("dsr without a direct path", 3);
}

// ---- ICMP errors about DSR flows ----

/// Routers on the client side (the sources of the errors).
const R4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 254));
const R6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0xfe));

/// A router's "fragmentation needed" (IPv4) / "packet too big" (IPv6) with MTU 1400, to the
/// VIP, about the backend's reply VIP:80 → client:`port` (quoted whole, as sent with TTL 61).
fn too_big_error(c: IpAddr, v: IpAddr, port: u16) -> Vec<u8> {
    let reply = ipx(v, c, 61, PROTO_TCP, &tcp(v, c, 80, port, false, DATA));
    let mtu = [0, 0, 0x05, 0x78];
    if c.is_ipv4() {
        icmp_err(R4, v, 64, 3, 4, mtu, &reply)
    } else {
        icmp_err(R6, v, 64, 2, 0, mtu, &reply)
    }
}

/// ICMP errors about a DSR flow's replies (which the backend sent from the VIP) reach the
/// flow's backend unchanged inside (the ICMP message and its quote untouched, only the TTL /
/// hop limit one lower), carried as the service's data packets are: MACs only (`l2`), or
/// encapsulated from the outer source the flow's own packets get (`ipip`, `gue`); counted
/// `icmp_to_backend`. A flow without an entry here goes where the Maglev table sends it.
/// `xlb_decap` hands the encapsulated errors to the backend's stack as they were.
#[test]
fn dsr_icmp_errors_reach_the_backend_unchanged() {
    if skip() {
        return;
    }
    let mut r = Runner::new(Fixture::with_config(CONFIG));
    let ci = r.fx.ifindex_client;
    let mut d = xlb::dsr::Decap::load(6080, &[], None).expect("load xlb_decap");
    d.set_local_addrs(&[HOST4, HOST6]).unwrap();
    let mut port = 49000u16;
    for e in [Encap::L2, Encap::Ipip, Encap::Gue] {
        for v6 in [false, true] {
            for pinned in [true, false] {
                port += 1;
                let (c, b) = if v6 { (C6, B6) } else { (C4, B4) };
                let v = vip(e, v6);
                let fam = if v6 {
                    "v6 packet too big"
                } else {
                    "v4 fragmentation needed"
                };
                let how = if pinned {
                    "pinned flow"
                } else {
                    "flow without an entry"
                };
                if pinned {
                    // A data segment pins the flow in the connection table at once.
                    let data = packet(c, v, port, 80, true, 100, V4::default());
                    r.case(
                        name(format!("{e:?} {fam}: the flow's data")),
                        client_frame(data),
                        ci,
                        XDP_REDIRECT,
                        Exp::Check(Box::new(|_| Ok(()))),
                        Some("forwarded"),
                    );
                    let key = flow_key(c, v, port, 80, PROTO_TCP);
                    let pinned_ok = r.fx.has_confirmed_flow(&key);
                    r.expect("flow pinned", pinned_ok, "the data segment pinned no flow");
                }
                let err = too_big_error(c, v, port);
                // The flow's hash: the outer source and GUE port of its data packets.
                let h = hash(c, v, port, 80, PROTO_TCP);
                let out_l3 = match e {
                    Encap::L2 => dec(err.clone()),
                    _ => encapsulate(e, &dec(err.clone()), outer_src(v6, h), b, h, 6080),
                };
                let out = r.case(
                    name(format!("{e:?} {fam}, {how} → the backend, unchanged")),
                    client_frame(err.clone()),
                    ci,
                    XDP_REDIRECT,
                    Exp::Frame(eth(LB_BACKENDS_MAC, backend_mac(1), &[], &out_l3)),
                    Some("icmp_to_backend"),
                );
                if let Err(err) = inner_ok(&out, e) {
                    r.expect("inner checksums", false, &err);
                }
                if e != Encap::L2 && !out.is_empty() {
                    // The backend's side: the error as it left the router, TTL one lower.
                    let (rc, back) = run_decap(&d, &out);
                    let want = eth(LB_BACKENDS_MAC, backend_mac(1), &[], &dec(err));
                    r.expect(
                        name(format!("{e:?} {fam}, {how}: xlb_decap")),
                        rc == XDP_PASS && back == want,
                        &format!(
                            "decap {}\n    got  {}\n    want {}",
                            act(rc),
                            hex(&back),
                            hex(&want)
                        ),
                    );
                }
            }
        }
    }
    r.finish("dsr icmp errors", 18);
}

/// An ICMP error about a DSR flow that arrives with TTL 1 is the kernel's (it answers "time
/// exceeded"); one too big once encapsulated is dropped (no ICMP error about an ICMP error).
#[test]
fn dsr_icmp_errors_ttl_and_mtu() {
    if skip() {
        return;
    }
    let fx = Fixture::with_config(CONFIG);
    fx.set_mtu("veth-backends", 1300);
    let mut r = Runner::new(fx);
    let ci = r.fx.ifindex_client;
    let v = vip(Encap::Gue, false);
    let mut err = too_big_error(C4, v, 49100);
    err[8] = 1;
    fix_ip4_checksum(&mut err);
    r.case(
        "gue v4, TTL 1 → the kernel",
        client_frame(err),
        ci,
        XDP_PASS,
        Exp::Same,
        Some("ttl_exceeded"),
    );
    // An IPv6 error of 1280 bytes: 1332 once in GUE, over the link's 1300.
    let v = vip(Encap::Gue, true);
    let big = packet(v, C6, 80, 49101, true, 1280 - 48, V4::default());
    let err = icmp_err(R6, v, 64, 2, 0, [0, 0, 0x05, 0x00], &big);
    assert_eq!(err.len(), 1280);
    r.case(
        "gue v6, too big once encapsulated → dropped",
        client_frame(err),
        ci,
        XDP_DROP,
        Exp::Dropped,
        Some("dropped"),
    );
    r.finish("dsr icmp errors: ttl and mtu", 2);
}

// ---- xlb_decap ----

const HOST4: IpAddr = B4;
const HOST6: IpAddr = B6;
const OTHER4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 2, 99));

fn run_decap(d: &xlb::dsr::Decap, frame: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; frame.len() + 256];
    let r = d
        .program()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat: 1,
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}

fn counter(d: &xlb::dsr::Decap, n: &str) -> u64 {
    d.counters()
        .into_iter()
        .find(|(k, _)| *k == n)
        .map(|(_, v)| v)
        .unwrap()
}

struct DecapRunner {
    d: xlb::dsr::Decap,
    failures: Vec<String>,
    cases: usize,
}

impl DecapRunner {
    fn case(&mut self, name: &str, input: Vec<u8>, action: u32, want: Option<Vec<u8>>, c: &str) {
        self.cases += 1;
        let before = counter(&self.d, c);
        let (rc, out) = run_decap(&self.d, &input);
        let mut errs = Vec::new();
        if rc != action {
            errs.push(format!("action {} (expected {})", act(rc), act(action)));
        }
        let grew = counter(&self.d, c) - before;
        if grew != 1 {
            errs.push(format!("counter {c} +{grew} (expected +1)"));
        }
        if action == XDP_PASS {
            let want = want.unwrap_or_else(|| input.clone());
            if out != want {
                errs.push(format!(
                    "output\n    got  {}\n    want {}",
                    hex(&out),
                    hex(&want)
                ));
            } else if let Err(e) = verify_checksums(&out) {
                errs.push(format!("checksum: {e}"));
            }
        }
        if !errs.is_empty() {
            self.failures.push(format!("[{name}] {}", errs.join("; ")));
        }
    }

    fn finish(self, min: usize) {
        assert!(self.cases >= min);
        assert!(
            self.failures.is_empty(),
            "{} of {} cases failed:\n{}",
            self.failures.len(),
            self.cases,
            self.failures.join("\n")
        );
    }
}

/// The frame a backend receives from xlb's host, and what the stack must get.
fn tunnel(e: Encap, inner: &[u8], dst: IpAddr, tags: &[(u16, u16)]) -> (Vec<u8>, Vec<u8>) {
    let v6 = inner[0] >> 4 == 6;
    let h = 0x1234_5678;
    let outer = encapsulate(e, inner, outer_src(v6, h), dst, h, 6080);
    (
        eth(LB_BACKENDS_MAC, backend_mac(1), tags, &outer),
        eth(LB_BACKENDS_MAC, backend_mac(1), tags, inner),
    )
}

#[test]
fn decap_strips_ipip_and_gue() {
    if skip() {
        return;
    }
    let mut d = xlb::dsr::Decap::load(6080, &[], None).expect("load xlb_decap");
    d.set_local_addrs(&[HOST4, HOST6]).unwrap();
    let mut r = DecapRunner {
        d,
        failures: Vec::new(),
        cases: 0,
    };
    for e in [Encap::Ipip, Encap::Gue] {
        for v6 in [false, true] {
            for tcp_ in [true, false] {
                let (c, host) = if v6 { (C6, HOST6) } else { (C4, HOST4) };
                let v = vip(e, v6);
                let inner = packet(
                    c,
                    v,
                    43000,
                    if tcp_ { 80 } else { 53 },
                    tcp_,
                    200,
                    V4::default(),
                );
                let (frame, want) = tunnel(e, &inner, host, &[]);
                r.case(
                    &format!("{e:?} v6={v6} tcp={tcp_} → inner"),
                    frame,
                    XDP_PASS,
                    Some(want),
                    "decapsulated",
                );
            }
            // With a VLAN tag: the tag stays.
            let (c, host) = if v6 { (C6, HOST6) } else { (C4, HOST4) };
            let inner = packet(c, vip(e, v6), 43001, 80, true, 150, V4::default());
            let (frame, want) = tunnel(e, &inner, host, &[(TPID_8021Q, 7)]);
            r.case(
                &format!("{e:?} v6={v6} tagged → inner, tag kept"),
                frame,
                XDP_PASS,
                Some(want),
                "decapsulated",
            );
        }
    }
    // Not for this host: passed untouched.
    let inner = packet(
        C4,
        vip(Encap::Ipip, false),
        43002,
        80,
        true,
        120,
        V4::default(),
    );
    let (frame, _) = tunnel(Encap::Ipip, &inner, OTHER4, &[]);
    r.case("IPIP to another host", frame, XDP_PASS, None, "passed");
    // Plain traffic and UDP on another port: passed untouched.
    r.case(
        "plain TCP",
        eth(CLIENT_MAC, backend_mac(1), &[], &inner),
        XDP_PASS,
        None,
        "passed",
    );
    let other_udp = ip4(
        C4,
        HOST4,
        PROTO_UDP,
        V4::default(),
        &udp(C4, HOST4, 5000, 6081, DATA),
    );
    r.case(
        "UDP to another port",
        eth(CLIENT_MAC, backend_mac(1), &[], &other_udp),
        XDP_PASS,
        None,
        "passed",
    );
    // GUE version 1 (the IP packet right after UDP) is accepted too.
    let mut g1 = udp(OTHER4, HOST4, 49999, 6080, &inner);
    g1[6] = 0;
    g1[7] = 0;
    let v1 = ip4(OTHER4, HOST4, PROTO_UDP, V4::default(), &g1);
    r.case(
        "GUE version 1 → inner",
        eth(CLIENT_MAC, backend_mac(1), &[], &v1),
        XDP_PASS,
        Some(eth(CLIENT_MAC, backend_mac(1), &[], &inner)),
        "decapsulated",
    );
    // Malformed: dropped on purpose.
    let (mut frame, _) = tunnel(Encap::Ipip, &inner, HOST4, &[]);
    let cut = frame.len() - 10;
    // The inner header claims more than the outer packet carries.
    frame.truncate(cut);
    let l3 = 14;
    let tot = (frame.len() - l3) as u16;
    frame[l3 + 2..l3 + 4].copy_from_slice(&tot.to_be_bytes());
    fix_ip4_checksum(&mut frame[l3..]);
    r.case(
        "IPIP with a truncated inner packet",
        frame,
        XDP_DROP,
        None,
        "malformed",
    );
    let (mut frame, _) = tunnel(Encap::Gue, &inner, HOST4, &[]);
    frame[14 + 20 + 8] = 0x20; // a GUE control message
    r.case("GUE control message", frame, XDP_DROP, None, "malformed");
    let (mut frame, _) = tunnel(Encap::Ipip, &inner, HOST4, &[]);
    frame[14 + 20] = 0x65; // IPIP whose inner header is not IPv4
    r.case(
        "IPIP with an IPv6 inner header",
        frame,
        XDP_DROP,
        None,
        "malformed",
    );
    r.finish(18);
}

#[test]
fn decap_vip_filter() {
    if skip() {
        return;
    }
    let v = vip(Encap::Gue, false);
    let mut d = xlb::dsr::Decap::load(6080, &[v], None).expect("load xlb_decap");
    d.set_local_addrs(&[HOST4]).unwrap();
    let mut r = DecapRunner {
        d,
        failures: Vec::new(),
        cases: 0,
    };
    let inner = packet(C4, v, 44000, 80, true, 120, V4::default());
    let (frame, want) = tunnel(Encap::Gue, &inner, HOST4, &[]);
    r.case(
        "to the VIP → inner",
        frame,
        XDP_PASS,
        Some(want),
        "decapsulated",
    );
    let other = packet(
        C4,
        vip(Encap::Ipip, false),
        44001,
        80,
        true,
        120,
        V4::default(),
    );
    let (frame, _) = tunnel(Encap::Gue, &other, HOST4, &[]);
    r.case(
        "to another address → untouched",
        frame,
        XDP_PASS,
        None,
        "not_vip",
    );
    r.finish(2);
}

/// xlb's own IPIP and GUE frames, handed to `xlb_decap` on the backend, give back the
/// client's packet (TTL one lower).
#[test]
fn xlb_encap_then_decap_round_trip() {
    if skip() {
        return;
    }
    let fx = Fixture::with_config(CONFIG);
    let mut d = xlb::dsr::Decap::load(6080, &[], None).expect("load xlb_decap");
    d.set_local_addrs(&[HOST4, HOST6]).unwrap();
    let mut failures = Vec::new();
    for (e, v6) in [
        (Encap::Ipip, false),
        (Encap::Ipip, true),
        (Encap::Gue, false),
        (Encap::Gue, true),
    ] {
        let (c, _) = if v6 { (C6, B6) } else { (C4, B4) };
        let inner = packet(c, vip(e, v6), 45000, 80, true, 300, V4::default());
        let (rc, out) = fx.run(&client_frame(inner.clone()), fx.ifindex_client);
        if rc != XDP_REDIRECT {
            failures.push(format!("{e:?} v6={v6}: xlb {}", act(rc)));
            continue;
        }
        let (rc, back) = run_decap(&d, &out);
        let want = eth(LB_BACKENDS_MAC, backend_mac(1), &[], &dec(inner));
        if rc != XDP_PASS || back != want {
            failures.push(format!(
                "{e:?} v6={v6}: decap {}\n    got  {}\n    want {}",
                act(rc),
                hex(&back),
                hex(&want)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---- xlb_hc (DSR health checks through the encapsulation) ----

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
/// `xlbhc0`'s MAC in the fixture (the destination of frames leaving a NOARP interface).
const HC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0c, 0x01];

/// Run `xlb_hc` on `frame` leaving `ifindex` with `mark`.
fn run_hc(
    fx: &Fixture,
    p: &xlb::vipcheck::TestProgram,
    frame: &[u8],
    mark: u32,
    ifindex: u32,
) -> (u32, Vec<u8>) {
    // struct __sk_buff up to ifindex: len, pkt_type, mark, queue_mapping, protocol,
    // vlan_present, vlan_tci, vlan_proto, priority, ingress_ifindex, ifindex.
    let mut ctx = [0u8; 44];
    ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    let mut out = vec![0u8; frame.len() + 256];
    let r = fx.ns.enter(|| {
        p.program()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                repeat: 1,
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN")
    });
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}

/// What `xlb_hc` pushes: the XDP path's outer header with the GUE source port from the
/// check's index, no IPv6 flow label, and a zero GUE UDP checksum (over IPv6 too).
fn hc_outer(e: Encap, inner: &[u8], dst: IpAddr, index: u32) -> Vec<u8> {
    let v6 = inner[0] >> 4 == 6;
    let mut ip = encapsulate(e, inner, outer_src(v6, 1), dst, index, 6080);
    if v6 {
        ip[1] &= 0xf0;
        ip[2] = 0;
        ip[3] = 0;
        if e == Encap::Gue {
            ip[46] = 0;
            ip[47] = 0;
        }
    }
    ip
}

#[test]
fn hc_sends_marked_checks_through_the_encapsulation() {
    if skip() {
        return;
    }
    let fx = Fixture::with_config(CONFIG);
    // The health-check interface: a veth pair, forwarding on (the FIB lookup needs it).
    fx.sh("ip link add hc0 address 02:00:00:00:0c:01 type veth peer name hc1");
    fx.sh("ip link set hc0 arp off up");
    fx.sh("ip link set hc1 up");
    fx.sh("sysctl -qw net.ipv4.conf.hc0.forwarding=1");
    fx.sh("sysctl -qw net.ipv6.conf.hc0.forwarding=1");
    let hc0 = fx
        .ns
        .enter(|| nix::net::if_::if_nametoindex("hc0").unwrap());
    let cfg = xlb::config::parse(CONFIG, "fixtures.toml").unwrap();
    let dsr_of = |name: &str| {
        *cfg.services
            .iter()
            .find(|s| s.name == name)
            .unwrap()
            .forwarding
            .dsr()
            .unwrap()
    };
    let mut p = xlb::vipcheck::TestProgram::load().expect("load xlb_hc");
    let lb4 = IpAddr::V4(Ipv4Addr::new(198, 18, 2, 1));
    let lb6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1));
    let mut failures = Vec::new();
    let mut cases = 0;
    let mut case = |p: &xlb::vipcheck::TestProgram,
                    name: String,
                    frame: Vec<u8>,
                    mark: u32,
                    action: u32,
                    want: Vec<u8>,
                    counter: usize| {
        cases += 1;
        let before = p.stats();
        let (rc, out) = run_hc(&fx, p, &frame, mark, hc0);
        let after = p.stats();
        let mut errs = Vec::new();
        if rc != action {
            errs.push(format!("action {rc} (expected {action})"));
        }
        for (i, n) in lb_common::hc::NAMES.iter().enumerate() {
            let grew = after[i] - before[i];
            let want_grew = u64::from(i == counter);
            if grew != want_grew {
                errs.push(format!("counter {n} +{grew} (expected +{want_grew})"));
            }
        }
        if out != want {
            errs.push(format!(
                "output\n    got  {}\n    want {}",
                hex(&out),
                hex(&want)
            ));
        } else {
            // GUE over IPv6 carries a zero UDP checksum (by design, see lb-ebpf/src/hc.rs):
            // the checksums verified are the inner packet's.
            let zero_udp6 = rc == TC_ACT_REDIRECT
                && out.len() > 66
                && out[12..14] == [0x86, 0xdd]
                && out[20] == 17;
            let checked = if zero_udp6 {
                assert_eq!(out[60..62], [0, 0], "[{name}] zero UDP checksum");
                eth(HC_MAC, HC_MAC, &[], &out[66..])
            } else {
                out.clone()
            };
            if let Err(e) = verify_checksums(&checked) {
                errs.push(format!("checksum: {e}"));
            }
        }
        if !errs.is_empty() {
            failures.push(format!("[{name}] {}", errs.join("; ")));
        }
    };
    let mut index = 0;
    for v6 in [false, true] {
        for (e, svc) in [
            (Encap::L2, "l2-tcp"),
            (Encap::Ipip, "ipip-tcp"),
            (Encap::Gue, "gue-tcp"),
        ] {
            index += 1;
            let svc = if v6 {
                format!("{svc}6")
            } else {
                svc.to_string()
            };
            let (lb, backend) = if v6 { (lb6, B6) } else { (lb4, B4) };
            let t = xlb::vipcheck::target(&dsr_of(&svc), backend, index);
            let mark = lb_common::HC_MARK_BASE | index;
            p.set_target(mark, t).unwrap();
            // A check's SYN and its HTTP request, from the node's address to the VIP.
            for (what, l4) in [
                (
                    "syn",
                    tcp(lb, vip(e, v6), 40000 + index as u16, 80, true, b""),
                ),
                (
                    "get",
                    tcp(
                        lb,
                        vip(e, v6),
                        40000 + index as u16,
                        80,
                        false,
                        b"GET /health HTTP/1.1\r\n\r\n",
                    ),
                ),
            ]
            .map(|(w, seg)| (w, ipx(lb, vip(e, v6), 64, 6, &seg)))
            {
                let frame = eth(HC_MAC, HC_MAC, &[], &l4);
                let want = match e {
                    // The MACs come from the neighbour entry once redirected.
                    Encap::L2 => frame.clone(),
                    _ => eth(HC_MAC, HC_MAC, &[], &hc_outer(e, &l4, backend, index)),
                };
                let v = if v6 { "v6" } else { "v4" };
                case(
                    &p,
                    format!("{svc} {v} {what}"),
                    frame.clone(),
                    mark,
                    TC_ACT_REDIRECT,
                    want,
                    0,
                );
                // Without the mark (or another mark) the packet is not touched.
                case(
                    &p,
                    format!("{svc} {v} {what} unmarked"),
                    frame.clone(),
                    0,
                    TC_ACT_OK,
                    frame.clone(),
                    1,
                );
                case(
                    &p,
                    format!("{svc} {v} {what} foreign mark"),
                    frame.clone(),
                    0x1234_0000 | index,
                    TC_ACT_OK,
                    frame.clone(),
                    1,
                );
            }
        }
    }
    // A check's mark without an entry, a family that does not match the entry, a backend
    // without a route: dropped.
    let l4 = ipx(
        lb4,
        vip(Encap::Gue, false),
        64,
        6,
        &tcp(lb4, vip(Encap::Gue, false), 40100, 80, true, b""),
    );
    let frame = eth(HC_MAC, HC_MAC, &[], &l4);
    case(
        &p,
        "no entry".into(),
        frame.clone(),
        lb_common::HC_MARK_BASE | 999,
        TC_ACT_SHOT,
        frame.clone(),
        2,
    );
    let l6 = ipx(
        lb6,
        vip(Encap::Gue, true),
        64,
        6,
        &tcp(lb6, vip(Encap::Gue, true), 40101, 80, true, b""),
    );
    let frame6 = eth(HC_MAC, HC_MAC, &[], &l6);
    case(
        &p,
        "family mismatch".into(),
        frame6.clone(),
        lb_common::HC_MARK_BASE | 3,
        TC_ACT_SHOT,
        frame6,
        2,
    );
    let nowhere = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
    p.set_target(
        lb_common::HC_MARK_BASE | 100,
        xlb::vipcheck::target(&dsr_of("gue-tcp"), nowhere, 100),
    )
    .unwrap();
    case(
        &p,
        "no route".into(),
        frame.clone(),
        lb_common::HC_MARK_BASE | 100,
        TC_ACT_SHOT,
        frame,
        2,
    );
    assert!(cases >= 39, "{cases} cases");
    assert!(
        failures.is_empty(),
        "{} of {cases} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
