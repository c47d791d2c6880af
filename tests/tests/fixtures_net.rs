//! `BPF_PROG_TEST_RUN` fixtures for what real networks carry (issue 8): ICMP and ICMPv6 errors
//! in both directions, frames too big for the egress link, IPv4 and IPv6 fragments, IPv6
//! extension-header chains, TTL / hop limit 1 and 0, strict TCP/UDP checks, stray replies,
//! VLAN tags (QinQ in, tags pushed, rewritten and popped out), egresses the program cannot
//! transmit on.
//!
//! Every expectation is written from README.md, "What the data path does with each packet",
//! not from the eBPF code: input frame → action, the exact output frame (built from scratch by
//! etherparse: addresses, ports, TTL, checksums), and the global counter the README names for
//! the case (it must grow by exactly one). Every output's checksums are verified again
//! independently (IPv4 header, TCP/UDP, ICMP, ICMPv6 with its pseudo-header, the IPv4 header
//! quoted in an ICMP error). Cases within a test run in order against one fixture, so flows
//! and fragments made by one case are seen by the next; each test reports all its failing
//! cases at once.
//!
//! Needs root (skipped with a message otherwise).
mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use common::{net::*, *};

const C4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2));
const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 100, 1));
const VIPM: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 100, 2));
const LB: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1));
const LBB: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 2, 1));
const B1: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 2, 11));
const B2: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 2, 12));
const B3: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 2, 13));
/// A router on the client side / the backend side (only ever a source address).
const R4C: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 254));
const R4B: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 2, 254));
const C6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2));
const VIP6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1));
const LB6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1));
const LBB6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1));
const B61: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x11));
const B62: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x12));
const R6C: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0xfe));
const R6B: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0xfe));

// ---- frames ----

/// From the client to the balancer (ingress veth-client).
fn cin(l3: Vec<u8>) -> Vec<u8> {
    eth(CLIENT_MAC, LB_CLIENT_MAC, &[], &l3)
}
fn cin_tagged(tags: &[(u16, u16)], l3: Vec<u8>) -> Vec<u8> {
    eth(CLIENT_MAC, LB_CLIENT_MAC, tags, &l3)
}
/// From backend `i` to the balancer (ingress veth-backends).
fn bin(i: u8, l3: Vec<u8>) -> Vec<u8> {
    eth(backend_mac(i), LB_BACKENDS_MAC, &[], &l3)
}
/// Forwarded to backend `i`.
fn tob(i: u8, l3: Vec<u8>) -> Vec<u8> {
    eth(LB_BACKENDS_MAC, backend_mac(i), &[], &l3)
}
/// Forwarded to the client.
fn toc(l3: Vec<u8>) -> Vec<u8> {
    eth(LB_CLIENT_MAC, CLIENT_MAC, &[], &l3)
}

/// A TCP data segment in an IP packet with TTL / hop limit `ttl`.
fn t(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, ttl: u8) -> Vec<u8> {
    ipx(
        src,
        dst,
        ttl,
        PROTO_TCP,
        &tcp(src, dst, sport, dport, false, DATA),
    )
}
/// A TCP SYN.
fn syn(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, ttl: u8) -> Vec<u8> {
    ipx(
        src,
        dst,
        ttl,
        PROTO_TCP,
        &tcp(src, dst, sport, dport, true, &[]),
    )
}
/// A UDP datagram.
fn u(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, ttl: u8) -> Vec<u8> {
    ipx(src, dst, ttl, PROTO_UDP, &udp(src, dst, sport, dport, DATA))
}

fn name(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

// ---- ICMP ----

/// ICMP and ICMPv6 errors about balanced flows, both ways, every error type; errors about
/// unknown flows, short quotes and other ICMP pass.
#[test]
fn icmp_errors_both_ways() {
    if skip() {
        return;
    }
    let mut r = Runner::new(Fixture::new());
    let (ci, bi) = (r.fx.ifindex_client, r.fx.ifindex_backends);

    // The flows the errors are about.
    r.case(
        "flow v4 tcp 50000 → web",
        cin(syn(C4, VIP, 50000, 80, 64)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(1, syn(C4, B1, 50000, 8080, 63))),
        Some("forwarded"),
    );
    r.case(
        "flow v4 udp 50001 → dns",
        cin(u(C4, VIP, 50001, 53, 64)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(2, u(C4, B2, 50001, 5353, 63))),
        Some("forwarded"),
    );
    r.case(
        "flow v6 tcp 50002 → web6 (a segment after the handshake pins it; a SYN alone does not)",
        cin(t(C6, VIP6, 50002, 80, 64)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(1, t(C6, B61, 50002, 8080, 63))),
        Some("forwarded"),
    );
    r.case(
        "flow v6 udp 50003 → dns6",
        cin(u(C6, VIP6, 50003, 53, 64)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(2, u(C6, B62, 50003, 5353, 63))),
        Some("forwarded"),
    );

    // Flows by family and protocol: (client, VIP, client port, service port, backend mac
    // index, backend, backend port).
    struct Flow {
        c: IpAddr,
        vip: IpAddr,
        cport: u16,
        sport: u16,
        bi: u8,
        b: IpAddr,
        bport: u16,
        proto: u8,
    }
    let flows = [
        Flow {
            c: C4,
            vip: VIP,
            cport: 50000,
            sport: 80,
            bi: 1,
            b: B1,
            bport: 8080,
            proto: PROTO_TCP,
        },
        Flow {
            c: C4,
            vip: VIP,
            cport: 50001,
            sport: 53,
            bi: 2,
            b: B2,
            bport: 5353,
            proto: PROTO_UDP,
        },
        Flow {
            c: C6,
            vip: VIP6,
            cport: 50002,
            sport: 80,
            bi: 1,
            b: B61,
            bport: 8080,
            proto: PROTO_TCP,
        },
        Flow {
            c: C6,
            vip: VIP6,
            cport: 50003,
            sport: 53,
            bi: 2,
            b: B62,
            bport: 5353,
            proto: PROTO_UDP,
        },
    ];
    let seg = |proto: u8, src: IpAddr, dst: IpAddr, sp: u16, dp: u16, ttl: u8| match proto {
        PROTO_TCP => t(src, dst, sp, dp, ttl),
        _ => u(src, dst, sp, dp, ttl),
    };

    // Errors arriving for the VIP about a reply xlb sent (VIP:port → client): to the backend.
    // (name, flow, type, code, rest of header, quote length: None = the whole packet)
    let to_backend = [
        (
            "v4 dest unreachable (host) about a tcp reply",
            0,
            3,
            1,
            [0; 4],
            None,
        ),
        (
            "v4 fragmentation needed (mtu 1400) about a tcp reply",
            0,
            3,
            4,
            [0, 0, 0x05, 0x78],
            None,
        ),
        ("v4 time exceeded about a tcp reply", 0, 11, 0, [0; 4], None),
        (
            "v4 parameter problem about a tcp reply",
            0,
            12,
            0,
            [20, 0, 0, 0],
            None,
        ),
        (
            "v4 port unreachable about a udp reply",
            1,
            3,
            3,
            [0; 4],
            None,
        ),
        (
            "v4 time exceeded about a udp reply, quote IP + 8 bytes",
            1,
            11,
            0,
            [0; 4],
            Some(28),
        ),
        (
            "v6 dest unreachable (address) about a tcp reply",
            2,
            1,
            3,
            [0; 4],
            None,
        ),
        (
            "v6 packet too big (mtu 1400) about a tcp reply",
            2,
            2,
            0,
            [0, 0, 0x05, 0x78],
            None,
        ),
        ("v6 time exceeded about a tcp reply", 2, 3, 0, [0; 4], None),
        (
            "v6 parameter problem about a udp reply",
            3,
            4,
            0,
            [0, 0, 0, 40],
            None,
        ),
        (
            "v6 port unreachable about a udp reply",
            3,
            1,
            4,
            [0; 4],
            None,
        ),
        (
            "v6 dest unreachable about a tcp reply, quote IP + 8 bytes",
            2,
            1,
            0,
            [0; 4],
            Some(48),
        ),
    ];
    for (n, fi, typ, code, rest, qlen) in to_backend {
        let f = &flows[fi];
        let router = if f.c.is_ipv4() { R4C } else { R6C };
        let mut quote = seg(f.proto, f.vip, f.c, f.sport, f.cport, 61);
        if let Some(l) = qlen {
            quote.truncate(l);
        }
        let input = cin(icmp_err(router, f.vip, 64, typ, code, rest, &quote));
        let want = tob(
            f.bi,
            icmp_err(
                router,
                f.b,
                63,
                typ,
                code,
                rest,
                &requote(&quote, true, f.b, f.bport),
            ),
        );
        r.case(
            name(format!("icmp to backend: {n}")),
            input,
            ci,
            XDP_REDIRECT,
            Exp::Frame(want),
            Some("icmp_to_backend"),
        );
    }

    // Errors about the client → backend leg, from a backend or a router behind xlb, to the
    // client: sent from the VIP.
    let to_client = [
        (
            "v4 port unreachable from the udp backend",
            1,
            true,
            3,
            3,
            [0; 4],
        ),
        (
            "v4 admin prohibited from the udp backend",
            1,
            true,
            3,
            13,
            [0; 4],
        ),
        (
            "v4 host unreachable from a router (tcp)",
            0,
            false,
            3,
            1,
            [0; 4],
        ),
        (
            "v4 fragmentation needed from a router (tcp)",
            0,
            false,
            3,
            4,
            [0, 0, 0x05, 0x78],
        ),
        (
            "v4 time exceeded from a router (tcp)",
            0,
            false,
            11,
            0,
            [0; 4],
        ),
        (
            "v4 parameter problem from the shared tcp backend",
            0,
            true,
            12,
            0,
            [20, 0, 0, 0],
        ),
        (
            "v6 port unreachable from the udp backend",
            3,
            true,
            1,
            4,
            [0; 4],
        ),
        (
            "v6 packet too big from a router (tcp)",
            2,
            false,
            2,
            0,
            [0, 0, 0x05, 0x00],
        ),
        (
            "v6 time exceeded from a router (tcp)",
            2,
            false,
            3,
            0,
            [0; 4],
        ),
        (
            "v6 parameter problem from the tcp backend",
            2,
            true,
            4,
            0,
            [0, 0, 0, 6],
        ),
        (
            "v6 admin prohibited from the tcp backend",
            2,
            true,
            1,
            1,
            [0; 4],
        ),
    ];
    for (n, fi, from_backend, typ, code, rest) in to_client {
        let f = &flows[fi];
        let src = match (from_backend, f.c.is_ipv4()) {
            (true, _) => f.b,
            (false, true) => R4B,
            (false, false) => R6B,
        };
        let quote = seg(f.proto, f.c, f.b, f.cport, f.bport, 62);
        let input = bin(f.bi, icmp_err(src, f.c, 64, typ, code, rest, &quote));
        let want = toc(icmp_err(
            f.vip,
            f.c,
            63,
            typ,
            code,
            rest,
            &requote(&quote, false, f.vip, f.sport),
        ));
        r.case(
            name(format!("icmp to client: {n}")),
            input,
            bi,
            XDP_REDIRECT,
            Exp::Frame(want),
            Some("icmp_to_client"),
        );
    }

    // A quoted IPv4 header with options (IHL 6): the quoted ports follow the options.
    let with_opts = |src: IpAddr, dst: IpAddr, sport: u16, dport: u16| {
        let l4 = tcp(src, dst, sport, dport, false, DATA);
        let mut h = etherparse::Ipv4Header::new(
            l4.len() as u16,
            61,
            etherparse::IpNumber::TCP,
            match src {
                IpAddr::V4(a) => a.octets(),
                _ => unreachable!(),
            },
            match dst {
                IpAddr::V4(a) => a.octets(),
                _ => unreachable!(),
            },
        )
        .unwrap();
        h.options = etherparse::Ipv4Options::try_from(&[1u8, 1, 1, 0][..]).unwrap();
        h.header_checksum = h.calc_header_checksum();
        let mut out = h.to_bytes().to_vec();
        out.extend_from_slice(&l4);
        out
    };
    let quote = with_opts(VIP, C4, 80, 50000);
    r.case(
        "icmp to backend: v4 time exceeded quoting a reply with IP options",
        cin(icmp_err(R4C, VIP, 64, 11, 0, [0; 4], &quote)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(
            1,
            icmp_err(R4C, B1, 63, 11, 0, [0; 4], &requote(&quote, true, B1, 8080)),
        )),
        Some("icmp_to_backend"),
    );
    let quote = with_opts(C4, B1, 50000, 8080);
    r.case(
        "icmp to client: v4 host unreachable quoting a packet with IP options",
        bin(1, icmp_err(R4B, C4, 64, 3, 1, [0; 4], &quote)),
        bi,
        XDP_REDIRECT,
        Exp::Frame(toc(icmp_err(
            VIP,
            C4,
            63,
            3,
            1,
            [0; 4],
            &requote(&quote, false, VIP, 80),
        ))),
        Some("icmp_to_client"),
    );
    // An ICMPv6 error behind a hop-by-hop header.
    let quote = t(VIP6, C6, 80, 50002, 61);
    let hbh = [(EXT_HBH, ext(EXT_HBH, 0))];
    r.case(
        "icmp to backend: v6 time exceeded behind a hop-by-hop header",
        cin(ip6(
            R6C,
            VIP6,
            64,
            &hbh,
            PROTO_ICMPV6,
            &icmp6_msg(R6C, VIP6, 3, 0, [0; 4], &quote),
        )),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(
            1,
            ip6(
                R6C,
                B61,
                63,
                &hbh,
                PROTO_ICMPV6,
                &icmp6_msg(R6C, B61, 3, 0, [0; 4], &requote(&quote, true, B61, 8080)),
            ),
        )),
        Some("icmp_to_backend"),
    );
    // QinQ from the backend side: the client's egress is plain.
    let quote = u(C4, B2, 50001, 5353, 62);
    r.case(
        "icmp to client: v4 port unreachable in QinQ from the udp backend",
        eth(
            backend_mac(2),
            LB_BACKENDS_MAC,
            &QINQ,
            &icmp_err(B2, C4, 64, 3, 3, [0; 4], &quote),
        ),
        bi,
        XDP_REDIRECT,
        Exp::Frame(toc(icmp_err(
            VIP,
            C4,
            63,
            3,
            3,
            [0; 4],
            &requote(&quote, false, VIP, 53),
        ))),
        Some("icmp_to_client"),
    );

    // Everything else passes, counted `icmp`.
    let pass: Vec<(&str, Vec<u8>, u32)> = vec![
        (
            "v4 error to the VIP about an unknown flow",
            cin(icmp_err(
                R4C,
                VIP,
                64,
                3,
                1,
                [0; 4],
                &t(VIP, C4, 80, 59999, 61),
            )),
            ci,
        ),
        (
            "v4 error to the VIP quoting an unserved port",
            cin(icmp_err(
                R4C,
                VIP,
                64,
                3,
                1,
                [0; 4],
                &t(VIP, C4, 81, 50000, 61),
            )),
            ci,
        ),
        (
            "v4 error to the VIP, quote shorter than IP + 8",
            cin(icmp_err(
                R4C,
                VIP,
                64,
                3,
                1,
                [0; 4],
                &t(VIP, C4, 80, 50000, 61)[..27],
            )),
            ci,
        ),
        (
            "v4 error from a backend about an unknown flow",
            bin(
                1,
                icmp_err(B1, C4, 64, 3, 3, [0; 4], &t(C4, B1, 59998, 8080, 62)),
            ),
            bi,
        ),
        (
            "v6 error to the VIP about an unknown flow",
            cin(icmp_err(
                R6C,
                VIP6,
                64,
                1,
                3,
                [0; 4],
                &t(VIP6, C6, 80, 59997, 61),
            )),
            ci,
        ),
        (
            "v6 error to the VIP, quote shorter than IP + 8",
            cin(icmp_err(
                R6C,
                VIP6,
                64,
                1,
                3,
                [0; 4],
                &t(VIP6, C6, 80, 50002, 61)[..47],
            )),
            ci,
        ),
        (
            "v6 error from a backend about an unknown flow",
            bin(
                2,
                icmp_err(B62, C6, 64, 1, 4, [0; 4], &u(C6, B62, 59996, 5353, 62)),
            ),
            bi,
        ),
        (
            "v4 echo request from a backend",
            bin(
                1,
                ipx(
                    B1,
                    C4,
                    64,
                    PROTO_ICMP,
                    &icmp4_msg(8, 0, [0, 1, 0, 1], b"ping"),
                ),
            ),
            bi,
        ),
        (
            "v6 echo reply to the VIP",
            cin(ipx(
                C6,
                VIP6,
                64,
                PROTO_ICMPV6,
                &icmp6_msg(C6, VIP6, 129, 0, [0, 1, 0, 1], b"pong"),
            )),
            ci,
        ),
    ];
    for (n, input, ifx) in pass {
        r.case(
            name(format!("icmp passes: {n}")),
            input,
            ifx,
            XDP_PASS,
            Exp::Same,
            Some("icmp"),
        );
    }
    r.finish("icmp", 40);
}

// ---- too big for the egress link ----

/// The output must be an ICMP "fragmentation needed" / ICMPv6 "packet too big" from `from` to
/// `to` carrying `mtu`, quoting the start of `orig` (an IP packet), in a frame from `smac` to
/// `dmac` with `tags`.
fn too_big(
    orig: Vec<u8>,
    from: IpAddr,
    to: IpAddr,
    smac: [u8; 6],
    dmac: [u8; 6],
    tags: Vec<(u16, u16)>,
    mtu: u32,
) -> Exp {
    Exp::Check(Box::new(move |out: &[u8]| {
        if out.len() < 14 || out[0..6] != dmac || out[6..12] != smac {
            return Err(format!("MACs: want {} → {}", mac(smac), mac(dmac)));
        }
        let (l3, got_tags) = l3_of(out)?;
        if got_tags != tags {
            return Err(format!("VLAN tags {got_tags:x?}, want {tags:x?}"));
        }
        let p = &out[l3..];
        let want_quote = &orig[..orig.len().min(128)];
        let (icmp, src, dst) = match from {
            IpAddr::V4(_) => {
                let (h, rest) = etherparse::Ipv4Header::from_slice(p).map_err(|e| e.to_string())?;
                if h.protocol.0 != PROTO_ICMP || h.time_to_live == 0 {
                    return Err(format!("protocol {} ttl {}", h.protocol.0, h.time_to_live));
                }
                if h.total_len as usize != p.len() {
                    return Err(format!("IPv4 total length {} ≠ {}", h.total_len, p.len()));
                }
                (rest, IpAddr::from(h.source), IpAddr::from(h.destination))
            }
            IpAddr::V6(_) => {
                let (h, rest) = etherparse::Ipv6Header::from_slice(p).map_err(|e| e.to_string())?;
                if h.next_header.0 != PROTO_ICMPV6 || h.hop_limit == 0 {
                    return Err(format!(
                        "next header {} hop {}",
                        h.next_header.0, h.hop_limit
                    ));
                }
                if h.payload_length as usize + 40 != p.len() {
                    return Err(format!("IPv6 payload length {}", h.payload_length));
                }
                (rest, IpAddr::from(h.source), IpAddr::from(h.destination))
            }
        };
        if (src, dst) != (from, to) {
            return Err(format!("addresses {src} → {dst}, want {from} → {to}"));
        }
        let (typ, code, got_mtu) = match from {
            IpAddr::V4(_) => (
                icmp[0],
                icmp[1],
                u16::from_be_bytes([icmp[6], icmp[7]]) as u32,
            ),
            IpAddr::V6(_) => (
                icmp[0],
                icmp[1],
                u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]),
            ),
        };
        let want_type = if from.is_ipv4() { (3, 4) } else { (2, 0) };
        if (typ, code) != want_type || got_mtu != mtu {
            return Err(format!(
                "type {typ} code {code} mtu {got_mtu}, want {want_type:?} mtu {mtu}"
            ));
        }
        if &icmp[8..] != want_quote {
            return Err(format!(
                "quote is not the first {} bytes of the packet:\n    quote {}\n    want  {}",
                want_quote.len(),
                hex(&icmp[8..]),
                hex(want_quote)
            ));
        }
        Ok(())
    }))
}

/// A packet of IP length `len`: TCP (`tcp`) or UDP with a payload that fills it.
fn sized(
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    is_tcp: bool,
    len: usize,
    f: V4,
) -> Vec<u8> {
    let hl = if src.is_ipv4() { 20 } else { 40 } + if is_tcp { 20 } else { 8 };
    let payload = vec![0xa5u8; len - hl];
    let l4 = if is_tcp {
        tcp(src, dst, sport, dport, false, &payload)
    } else {
        udp(src, dst, sport, dport, &payload)
    };
    let proto = if is_tcp { PROTO_TCP } else { PROTO_UDP };
    match src {
        IpAddr::V4(_) => ip4(src, dst, proto, f, &l4),
        IpAddr::V6(_) => ip6(src, dst, f.ttl, &[], proto, &l4),
    }
}

/// Both links of the fixture have MTU 1280: packets longer than that may not be forwarded
/// as they are.
#[test]
fn too_big_for_the_egress_link() {
    if skip() {
        return;
    }
    let fx = Fixture::new();
    fx.set_mtu("veth-backends", 1280);
    fx.set_mtu("veth-client", 1280);
    let mut r = Runner::new(fx);
    let (ci, bi) = (r.fx.ifindex_client, r.fx.ifindex_backends);
    let df = V4::default();
    let nodf = V4::no_df();

    for (n, src, dst, sport, dport, is_tcp, len) in [
        ("v4 tcp 1400 DF", C4, VIP, 50100, 80, true, 1400),
        ("v4 udp 1400 DF", C4, VIP, 50101, 53, false, 1400),
        ("v4 tcp 1281 DF", C4, VIP, 50102, 80, true, 1281),
        ("v6 tcp 1400", C6, VIP6, 50103, 80, true, 1400),
        ("v6 udp 1400", C6, VIP6, 50104, 53, false, 1400),
        ("v6 tcp 1281", C6, VIP6, 50105, 80, true, 1281),
    ] {
        let l3 = sized(src, dst, sport, dport, is_tcp, len, df);
        r.case(
            name(format!("too big: {n} → ICMP to the client")),
            cin(l3.clone()),
            ci,
            XDP_TX,
            too_big(l3, dst, src, LB_CLIENT_MAC, CLIENT_MAC, vec![], 1280),
            Some("too_big_icmp"),
        );
    }
    let l3 = sized(C4, VIP, 50106, 80, true, 1400, df);
    r.case(
        "too big: v4 tcp 1400 DF in VLAN 42 → ICMP keeps the tag",
        cin_tagged(&[(TPID_8021Q, 42)], l3.clone()),
        ci,
        XDP_TX,
        too_big(
            l3,
            VIP,
            C4,
            LB_CLIENT_MAC,
            CLIENT_MAC,
            vec![(TPID_8021Q, 42)],
            1280,
        ),
        Some("too_big_icmp"),
    );

    let l3 = sized(C6, VIP6, 50107, 80, true, 1400, df);
    r.case(
        "too big: v6 tcp 1400 in QinQ → ICMPv6 keeps both tags",
        cin_tagged(&QINQ, l3.clone()),
        ci,
        XDP_TX,
        too_big(l3, VIP6, C6, LB_CLIENT_MAC, CLIENT_MAC, QINQ.to_vec(), 1280),
        Some("too_big_icmp"),
    );

    // Exactly the MTU: forwarded.
    r.case(
        "too big: v4 tcp 1280 DF fits",
        cin(sized(C4, VIP, 50110, 80, true, 1280, df)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(1, sized(C4, B1, 50110, 8080, true, 1280, df.dec()))),
        Some("forwarded"),
    );
    r.case(
        "too big: v6 tcp 1280 fits",
        cin(sized(C6, VIP6, 50111, 80, true, 1280, df)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(1, sized(C6, B61, 50111, 8080, true, 1280, df.dec()))),
        Some("forwarded"),
    );

    // IPv4 without DF: rewritten, handed to the kernel to fragment (TTL and MACs are the
    // kernel's to change when it forwards).
    r.case(
        "too big: v4 tcp 1400 without DF → kernel",
        cin(sized(C4, VIP, 50112, 80, true, 1400, nodf)),
        ci,
        XDP_PASS,
        Exp::Frame(cin(sized(C4, B1, 50112, 8080, true, 1400, nodf))),
        Some("too_big_kernel"),
    );
    r.case(
        "too big: v4 udp 1400 without DF → kernel",
        cin(sized(C4, VIP, 50113, 53, false, 1400, nodf)),
        ci,
        XDP_PASS,
        Exp::Frame(cin(sized(C4, B2, 50113, 5353, false, 1400, nodf))),
        Some("too_big_kernel"),
    );

    // Replies too big for the client link: the ICMP error goes back to the backend, from the
    // client's address.
    let l3 = sized(B1, C4, 8080, 50110, true, 1400, df);
    r.case(
        "too big: v4 tcp reply 1400 DF → ICMP to the backend",
        bin(1, l3.clone()),
        bi,
        XDP_TX,
        too_big(l3, C4, B1, LB_BACKENDS_MAC, backend_mac(1), vec![], 1280),
        Some("too_big_icmp"),
    );
    let l3 = sized(B61, C6, 8080, 50111, true, 1400, df);
    r.case(
        "too big: v6 tcp reply 1400 → ICMPv6 to the backend",
        bin(1, l3.clone()),
        bi,
        XDP_TX,
        too_big(l3, C6, B61, LB_BACKENDS_MAC, backend_mac(1), vec![], 1280),
        Some("too_big_icmp"),
    );
    r.case(
        "too big: v4 tcp reply 1400 without DF → kernel",
        bin(1, sized(B1, C4, 8080, 50110, true, 1400, nodf)),
        bi,
        XDP_PASS,
        Exp::Frame(bin(1, sized(VIP, C4, 80, 50110, true, 1400, nodf))),
        Some("too_big_kernel"),
    );

    // A later IPv4 fragment too big for the link: the kernel fragments it further.
    let dgram = udp(C4, VIP, 50114, 53, &[0x5au8; 1500]);
    let dgram_b = udp(C4, B2, 50114, 5353, &[0x5au8; 1500]);
    r.case(
        "too big: v4 first fragment (small) to dns",
        cin(ip4(
            C4,
            VIP,
            PROTO_UDP,
            V4::frag(0x7001, 0, true),
            &dgram[..64],
        )),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(
            2,
            ip4(
                C4,
                B2,
                PROTO_UDP,
                V4::frag(0x7001, 0, true).dec(),
                &dgram_b[..64],
            ),
        )),
        Some("forwarded"),
    );
    r.case(
        "too big: v4 later fragment 1400 → kernel",
        cin(ip4(
            C4,
            VIP,
            PROTO_UDP,
            V4::frag(0x7001, 64, false),
            &dgram[64..64 + 1380],
        )),
        ci,
        XDP_PASS,
        Exp::Frame(cin(ip4(
            C4,
            B2,
            PROTO_UDP,
            V4::frag(0x7001, 64, false),
            &dgram_b[64..64 + 1380],
        ))),
        None,
    );
    // A first IPv6 fragment too big for the link: answered with "packet too big" (README,
    // Fragments: "IPv6 fragments too big: ICMPv6 packet too big"; and "any IPv6" above).
    let dgram = udp(C6, VIP6, 50115, 53, &[0x5au8; 1500]);
    let l3 = ip6(
        C6,
        VIP6,
        64,
        &[(EXT_FRAG, frag6(0x7002, 0, true))],
        PROTO_UDP,
        &dgram[..1352],
    );
    r.case(
        "too big: v6 first fragment 1400 → ICMPv6 to the client",
        cin(l3.clone()),
        ci,
        XDP_TX,
        too_big(l3, VIP6, C6, LB_CLIENT_MAC, CLIENT_MAC, vec![], 1280),
        Some("too_big_icmp"),
    );
    r.finish("too big", 18);
}

// ---- fragments ----

/// The IP packets of one datagram (`l4`, TCP or UDP with its checksum over the whole of it)
/// cut at `cuts` (multiples of 8). IPv6 packets carry `pre` extension headers before the
/// fragment header.
#[allow(clippy::too_many_arguments)]
fn fragments(
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    proto: u8,
    id: u32,
    l4: &[u8],
    cuts: &[usize],
    pre: &[u8],
) -> Vec<Vec<u8>> {
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(l4.len());
    bounds
        .windows(2)
        .map(|w| {
            let (a, b) = (w[0], w[1]);
            let more = b < l4.len();
            match src {
                IpAddr::V4(_) => ip4(
                    src,
                    dst,
                    proto,
                    V4 {
                        ttl,
                        ..V4::frag(id as u16, a as u16, more)
                    },
                    &l4[a..b],
                ),
                IpAddr::V6(_) => {
                    let mut exts: Vec<(u8, Vec<u8>)> =
                        pre.iter().map(|k| (*k, ext(*k, 0))).collect();
                    exts.push((EXT_FRAG, frag6(id, a as u16, more)));
                    ip6(src, dst, ttl, &exts, proto, &l4[a..b])
                }
            }
        })
        .collect()
}

const FRAG_DATA: &[u8] = &[0x42; 56];

/// The `ADDRS` key of an address (port and protocol zero).
fn addr_key(a: IpAddr) -> lb_common::AddrKey {
    let (addr, family) = match a {
        IpAddr::V4(v) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v.octets());
            (b, lb_common::AF_INET)
        }
        IpAddr::V6(v) => (v.octets(), lb_common::AF_INET6),
    };
    lb_common::AddrKey {
        addr,
        port: [0; 2],
        proto: 0,
        family,
    }
}

/// One datagram as fragments from `src:sport` to `dst:dport`, and the same datagram as it
/// must leave (`nsrc:nsport` → `ndst:ndport`, TTL − 1).
#[allow(clippy::too_many_arguments)]
fn frag_pair(
    (src, dst, sport, dport): (IpAddr, IpAddr, u16, u16),
    (nsrc, ndst, nsport, ndport): (IpAddr, IpAddr, u16, u16),
    is_tcp: bool,
    id: u32,
    cuts: &[usize],
    pre: &[u8],
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let (l4, nl4, proto) = if is_tcp {
        (
            tcp(src, dst, sport, dport, false, FRAG_DATA),
            tcp(nsrc, ndst, nsport, ndport, false, FRAG_DATA),
            PROTO_TCP,
        )
    } else {
        (
            udp(src, dst, sport, dport, FRAG_DATA),
            udp(nsrc, ndst, nsport, ndport, FRAG_DATA),
            PROTO_UDP,
        )
    };
    (
        fragments(src, dst, 64, proto, id, &l4, cuts, pre),
        fragments(nsrc, ndst, 63, proto, id, &nl4, cuts, pre),
    )
}

/// Fragments of balanced flows follow their first fragment, both ways; later fragments
/// without a first are dropped when they concern a VIP or a backend, else passed.
#[test]
fn fragments_both_ways() {
    if skip() {
        return;
    }
    let mut r = Runner::new(Fixture::new());
    let (ci, bi) = (r.fx.ifindex_client, r.fx.ifindex_backends);

    // Orphan later fragments are recognised through `ADDRS` (every VIP and backend address),
    // which the daemon's reconciler fills.
    for (a, flag, what) in [
        (VIP, lb_common::ADDR_F_VIP, "VIP 198.18.100.1"),
        (VIP6, lb_common::ADDR_F_VIP, "VIP 2001:db8:100::1"),
        (B2, lb_common::ADDR_F_BACKEND, "backend 198.18.2.12"),
        (B62, lb_common::ADDR_F_BACKEND, "backend 2001:db8:2::12"),
    ] {
        let key = addr_key(a);
        let got = r.fx.dp.maps().addrs.get(&key, 0).unwrap_or(0);
        r.expect(
            "frag: ADDRS filled by the daemon",
            got & flag != 0,
            &format!("ADDRS has no entry for the {what} (value {got})"),
        );
    }

    // (label, family client/vip/backend..., tcp, id, cuts, leading ext headers, backend mac)
    struct F {
        label: &'static str,
        c: IpAddr,
        vip: IpAddr,
        b: IpAddr,
        cport: u16,
        sport: u16,
        bport: u16,
        tcp: bool,
        id: u32,
        cuts: Vec<usize>,
        pre: Vec<u8>,
        mi: u8,
    }
    let flows = [
        F {
            label: "v4 udp (3 fragments)",
            c: C4,
            vip: VIP,
            b: B2,
            cport: 52000,
            sport: 53,
            bport: 5353,
            tcp: false,
            id: 0x1001,
            cuts: vec![24, 48],
            pre: vec![],
            mi: 2,
        },
        F {
            label: "v4 tcp",
            c: C4,
            vip: VIP,
            b: B1,
            cport: 52001,
            sport: 80,
            bport: 8080,
            tcp: true,
            id: 0x1002,
            cuts: vec![32],
            pre: vec![],
            mi: 1,
        },
        F {
            label: "v6 udp (3 fragments)",
            c: C6,
            vip: VIP6,
            b: B62,
            cport: 52010,
            sport: 53,
            bport: 5353,
            tcp: false,
            id: 0x3001,
            cuts: vec![24, 48],
            pre: vec![],
            mi: 2,
        },
        F {
            label: "v6 tcp",
            c: C6,
            vip: VIP6,
            b: B61,
            cport: 52011,
            sport: 80,
            bport: 8080,
            tcp: true,
            id: 0x3002,
            cuts: vec![32],
            pre: vec![],
            mi: 1,
        },
        F {
            label: "v6 udp, hop-by-hop before the fragment header",
            c: C6,
            vip: VIP6,
            b: B62,
            cport: 52012,
            sport: 53,
            bport: 5353,
            tcp: false,
            id: 0x3003,
            cuts: vec![32],
            pre: vec![EXT_HBH],
            mi: 2,
        },
        F {
            label: "v6 tcp, destination options before the fragment header",
            c: C6,
            vip: VIP6,
            b: B61,
            cport: 52013,
            sport: 80,
            bport: 8080,
            tcp: true,
            id: 0x3004,
            cuts: vec![32],
            pre: vec![EXT_DSTOPTS],
            mi: 1,
        },
    ];
    for f in &flows {
        // Client → VIP.
        let (ins, outs) = frag_pair(
            (f.c, f.vip, f.cport, f.sport),
            (f.c, f.b, f.cport, f.bport),
            f.tcp,
            f.id,
            &f.cuts,
            &f.pre,
        );
        for (i, (input, want)) in ins.into_iter().zip(outs).enumerate() {
            let first = i == 0;
            r.case(
                name(format!(
                    "frag: {} to the VIP, {} fragment",
                    f.label,
                    if first { "first" } else { "later" }
                )),
                cin(input),
                ci,
                XDP_REDIRECT,
                Exp::Frame(tob(f.mi, want)),
                Some(if first { "forwarded" } else { "frags_followed" }),
            );
        }
        // Backend → client (the flow exists now), another datagram id.
        let (ins, outs) = frag_pair(
            (f.b, f.c, f.bport, f.cport),
            (f.vip, f.c, f.sport, f.cport),
            f.tcp,
            f.id + 0x100,
            &f.cuts,
            &f.pre,
        );
        for (i, (input, want)) in ins.into_iter().zip(outs).enumerate() {
            let first = i == 0;
            r.case(
                name(format!(
                    "frag: {} reply, {} fragment",
                    f.label,
                    if first { "first" } else { "later" }
                )),
                bin(f.mi, input),
                bi,
                XDP_REDIRECT,
                Exp::Frame(toc(want)),
                Some(if first { "replies" } else { "frags_followed" }),
            );
        }
    }

    // Out of order: the later fragment before its first is dropped; once the first was
    // seen, the retransmitted later fragment follows.
    for (label, c, vip, b, sport, bport, mi, id) in [
        ("v4", C4, VIP, B2, 53, 5353, 2u8, 0x1010u32),
        ("v6", C6, VIP6, B62, 53, 5353, 2, 0x3010),
    ] {
        let (ins, outs) = frag_pair(
            (c, vip, 52020, sport),
            (c, b, 52020, bport),
            false,
            id,
            &[32],
            &[],
        );
        r.case(
            name(format!(
                "frag: {label} later fragment before its first: dropped"
            )),
            cin(ins[1].clone()),
            ci,
            XDP_DROP,
            Exp::Dropped,
            Some("frags_orphan"),
        );
        r.case(
            name(format!("frag: {label} first fragment after its later one")),
            cin(ins[0].clone()),
            ci,
            XDP_REDIRECT,
            Exp::Frame(tob(mi, outs[0].clone())),
            Some("forwarded"),
        );
        r.case(
            name(format!("frag: {label} later fragment again: follows")),
            cin(ins[1].clone()),
            ci,
            XDP_REDIRECT,
            Exp::Frame(tob(mi, outs[1].clone())),
            Some("frags_followed"),
        );
        // From a backend, no first fragment seen.
        let (ins, _) = frag_pair(
            (b, c, bport, 52020),
            (vip, c, sport, 52020),
            false,
            id + 0x500,
            &[32],
            &[],
        );
        r.case(
            name(format!(
                "frag: {label} later fragment from a backend without its first: dropped"
            )),
            bin(mi, ins[1].clone()),
            bi,
            XDP_DROP,
            Exp::Dropped,
            Some("frags_orphan"),
        );
        // Other addresses: the kernel's.
        let lb = if c.is_ipv4() { LB } else { LB6 };
        let (ins, _) = frag_pair(
            (c, lb, 52021, 5000),
            (c, lb, 52021, 5000),
            false,
            id + 0x600,
            &[32],
            &[],
        );
        r.case(
            name(format!(
                "frag: {label} later fragment to the balancer's own address: passed"
            )),
            cin(ins[1].clone()),
            ci,
            XDP_PASS,
            Exp::Same,
            None,
        );
        // A first fragment with TTL 1 is not forwarded.
        let (mut ins, _) = frag_pair(
            (c, vip, 52022, sport),
            (c, b, 52022, bport),
            false,
            id + 0x700,
            &[32],
            &[],
        );
        if c.is_ipv4() {
            ins[0][8] = 1;
            fix_ip4_checksum(&mut ins[0]);
        } else {
            ins[0][7] = 1;
        }
        r.case(
            name(format!("frag: {label} first fragment with TTL 1: passed")),
            cin(ins[0].clone()),
            ci,
            XDP_PASS,
            Exp::Same,
            Some("ttl_exceeded"),
        );
    }

    // A first fragment that is not balanced (a port no service has): passed, and so are its
    // later fragments (not orphans).
    for (label, c, vip, id) in [("v4", C4, VIP, 0x1040u32), ("v6", C6, VIP6, 0x3040)] {
        let (ins, _) = frag_pair(
            (c, vip, 52050, 9999),
            (c, vip, 52050, 9999),
            false,
            id,
            &[32],
            &[],
        );
        r.case(
            name(format!(
                "frag: {label} first fragment to an unserved port of the VIP: passed"
            )),
            cin(ins[0].clone()),
            ci,
            XDP_PASS,
            Exp::Same,
            None,
        );
        r.case(
            name(format!("frag: {label} its later fragment: passed")),
            cin(ins[1].clone()),
            ci,
            XDP_PASS,
            Exp::Same,
            None,
        );
    }
    // A later fragment of a fragmented ping to the VIP (other protocol): the kernel's.
    r.case(
        "frag: v4 later fragment of an ICMP echo to the VIP: passed",
        cin(ip4(
            C4,
            VIP,
            PROTO_ICMP,
            V4::frag(0x1050, 64, false),
            &[0x61u8; 40],
        )),
        ci,
        XDP_PASS,
        Exp::Same,
        None,
    );
    r.case(
        "frag: v6 later fragment of an ICMPv6 echo to the VIP: passed",
        cin(ip6(
            C6,
            VIP6,
            64,
            &[(EXT_FRAG, frag6(0x3050, 64, false))],
            PROTO_ICMPV6,
            &[0x61u8; 40],
        )),
        ci,
        XDP_PASS,
        Exp::Same,
        None,
    );

    // A first fragment whose UDP length is < 8 is malformed.
    let mut l4 = udp(C4, VIP, 52030, 53, FRAG_DATA);
    l4[4..6].copy_from_slice(&4u16.to_be_bytes());
    r.case(
        "frag: v4 first fragment with UDP length 4: dropped",
        cin(ip4(
            C4,
            VIP,
            PROTO_UDP,
            V4::frag(0x1020, 0, true),
            &l4[..32],
        )),
        ci,
        XDP_DROP,
        Exp::Dropped,
        Some("malformed"),
    );
    let fk = flow_key(C4, VIP, 52030, 53, PROTO_UDP);
    let pinned = r.fx.has_flow(&fk);
    r.expect(
        "frag: malformed first fragment not pinned",
        !pinned,
        "CONNTRACK entry made",
    );

    // The outputs of a whole datagram reassemble into one with a valid checksum.
    let (ins, _) = frag_pair(
        (C4, VIP, 52040, 53),
        (C4, B2, 52040, 5353),
        false,
        0x1030,
        &[24, 48],
        &[],
    );
    let mut whole = Vec::new();
    for (i, input) in ins.into_iter().enumerate() {
        let out = r.case(
            name(format!(
                "frag: v4 udp 52040 fragment {i} (reassembly check)"
            )),
            cin(input),
            ci,
            XDP_REDIRECT,
            Exp::Check(Box::new(|_| Ok(()))),
            Some(if i == 0 {
                "forwarded"
            } else {
                "frags_followed"
            }),
        );
        if out.len() > 34 {
            whole.extend_from_slice(&out[34..]);
        }
    }
    let ok = etherparse::UdpHeader::from_slice(&whole)
        .ok()
        .map(|(h, pl)| {
            h.length as usize == whole.len()
                && h.destination_port == 5353
                && h.checksum == h.calc_checksum_ipv4_raw(CLIENT4, B4_2, pl).unwrap()
        })
        .unwrap_or(false);
    r.expect(
        "frag: reassembled v4 datagram",
        ok,
        "the forwarded fragments do not reassemble into a datagram to 198.18.2.12:5353 with a valid UDP checksum",
    );
    r.finish("fragments", 50);
}

// ---- IPv6 extension headers ----

#[test]
fn ipv6_extension_header_chains() {
    if skip() {
        return;
    }
    let mut r = Runner::new(Fixture::new());
    let (ci, bi) = (r.fx.ifindex_client, r.fx.ifindex_backends);
    let chain = |kinds: &[u8], seg_left: u8| -> Vec<(u8, Vec<u8>)> {
        kinds.iter().map(|k| (*k, ext(*k, seg_left))).collect()
    };
    let pkt = |src, dst, sport, dport, hop, exts: &[(u8, Vec<u8>)], is_tcp: bool| {
        if is_tcp {
            ip6(
                src,
                dst,
                hop,
                exts,
                PROTO_TCP,
                &tcp(src, dst, sport, dport, false, DATA),
            )
        } else {
            ip6(
                src,
                dst,
                hop,
                exts,
                PROTO_UDP,
                &udp(src, dst, sport, dport, DATA),
            )
        }
    };
    use EXT_DSTOPTS as D;
    use EXT_HBH as H;
    use EXT_ROUTING as R;
    let forwarded: [(&str, Vec<u8>, bool, u16); 6] = [
        ("hop-by-hop + tcp", vec![H], true, 53000),
        ("destination options + udp", vec![D], false, 53001),
        ("routing (segments left 0) + tcp", vec![R], true, 53002),
        (
            "hop-by-hop, dst opts, routing, dst opts + udp",
            vec![H, D, R, D],
            false,
            53003,
        ),
        ("6 headers + tcp", vec![H, D, R, D, D, D], true, 53004),
        ("hop-by-hop, routing + udp", vec![H, R], false, 53005),
    ];
    for (n, kinds, is_tcp, cport) in forwarded {
        let exts = chain(&kinds, 0);
        let (b, bport, mi, sport) = if is_tcp {
            (B61, 8080, 1, 80)
        } else {
            (B62, 5353, 2, 53)
        };
        r.case(
            name(format!("ext: {n} to the VIP: forwarded")),
            cin(pkt(C6, VIP6, cport, sport, 64, &exts, is_tcp)),
            ci,
            XDP_REDIRECT,
            Exp::Frame(tob(mi, pkt(C6, b, cport, bport, 63, &exts, is_tcp))),
            Some("forwarded"),
        );
    }
    r.case(
        "ext: reply with destination options + tcp",
        bin(1, pkt(B61, C6, 8080, 53000, 64, &chain(&[D], 0), true)),
        bi,
        XDP_REDIRECT,
        Exp::Frame(toc(pkt(VIP6, C6, 80, 53000, 63, &chain(&[D], 0), true))),
        Some("replies"),
    );
    r.case(
        "ext: 7 headers: passed",
        cin(pkt(
            C6,
            VIP6,
            53010,
            80,
            64,
            &chain(&[H, D, R, D, D, D, D], 0),
            true,
        )),
        ci,
        XDP_PASS,
        Exp::Same,
        Some("ext_headers_passed"),
    );
    r.case(
        "ext: routing header with segments left 1: passed",
        cin(pkt(C6, VIP6, 53011, 80, 64, &chain(&[R], 1), true)),
        ci,
        XDP_PASS,
        Exp::Same,
        Some("ext_headers_passed"),
    );
    // A hop-by-hop header claiming 88 bytes in a 28-byte payload.
    let mut trunc = pkt(C6, VIP6, 53012, 80, 64, &chain(&[H], 0), true);
    trunc[41] = 10;
    r.case(
        "ext: hop-by-hop header beyond the payload: dropped",
        cin(trunc),
        ci,
        XDP_DROP,
        Exp::Dropped,
        Some("malformed"),
    );
    r.case(
        "ext: hop-by-hop + ICMPv6 echo to the VIP: passed",
        cin(ip6(
            C6,
            VIP6,
            64,
            &chain(&[H], 0),
            PROTO_ICMPV6,
            &icmp6_msg(C6, VIP6, 128, 0, [0, 1, 0, 1], b"ping"),
        )),
        ci,
        XDP_PASS,
        Exp::Same,
        Some("icmp"),
    );
    r.case(
        "ext: hop-by-hop + tcp to the balancer's own address: passed",
        cin(pkt(C6, LB6, 53013, 22, 64, &chain(&[H], 0), true)),
        ci,
        XDP_PASS,
        Exp::Same,
        None,
    );
    r.case(
        "ext: hop-by-hop + tcp with hop limit 1: passed",
        cin(pkt(C6, VIP6, 53014, 80, 1, &chain(&[H], 0), true)),
        ci,
        XDP_PASS,
        Exp::Same,
        Some("ttl_exceeded"),
    );
    let mut z = pkt(C6, VIP6, 53015, 53, 64, &chain(&[D], 0), false);
    let n = z.len();
    z[n - DATA.len() - 2..n - DATA.len()].copy_from_slice(&[0, 0]);
    r.case(
        "ext: destination options + udp with checksum 0: dropped",
        cin(z),
        ci,
        XDP_DROP,
        Exp::Dropped,
        Some("malformed"),
    );
    r.finish("extension headers", 14);
}

// ---- TTL and strict L4 checks ----

/// `l3` with its TCP data offset (4-bit words) set to `doff`.
fn with_doff(mut l3: Vec<u8>, doff: u8) -> Vec<u8> {
    let hl = if l3[0] >> 4 == 4 {
        ((l3[0] & 0xf) * 4) as usize
    } else {
        40
    };
    l3[hl + 12] = (doff << 4) | (l3[hl + 12] & 0x0f);
    l3
}
/// `l3` with its UDP length field set to `len`.
fn with_udp_len(mut l3: Vec<u8>, len: u16) -> Vec<u8> {
    let hl = if l3[0] >> 4 == 4 {
        ((l3[0] & 0xf) * 4) as usize
    } else {
        40
    };
    l3[hl + 4..hl + 6].copy_from_slice(&len.to_be_bytes());
    l3
}
/// `l3` with its UDP checksum zero.
fn with_udp_csum0(mut l3: Vec<u8>) -> Vec<u8> {
    let hl = if l3[0] >> 4 == 4 {
        ((l3[0] & 0xf) * 4) as usize
    } else {
        40
    };
    l3[hl + 6..hl + 8].copy_from_slice(&[0, 0]);
    l3
}

#[test]
fn ttl_and_strict_l4_checks() {
    if skip() {
        return;
    }
    let mut r = Runner::new(Fixture::new());
    let (ci, bi) = (r.fx.ifindex_client, r.fx.ifindex_backends);

    // ---- TTL ----
    for (n, l3, key) in [
        (
            "v4 tcp syn TTL 1",
            syn(C4, VIP, 54000, 80, 1),
            Some(flow_key(C4, VIP, 54000, 80, PROTO_TCP)),
        ),
        (
            "v4 udp TTL 0",
            u(C4, VIP, 54001, 53, 0),
            Some(flow_key(C4, VIP, 54001, 53, PROTO_UDP)),
        ),
        (
            "v6 tcp syn hop limit 1",
            syn(C6, VIP6, 54002, 80, 1),
            Some(flow_key(C6, VIP6, 54002, 80, PROTO_TCP)),
        ),
        (
            "v6 udp hop limit 0",
            u(C6, VIP6, 54003, 53, 0),
            Some(flow_key(C6, VIP6, 54003, 53, PROTO_UDP)),
        ),
    ] {
        let n = name(format!("ttl: {n} to the VIP: passed"));
        r.case(n, cin(l3), ci, XDP_PASS, Exp::Same, Some("ttl_exceeded"));
        if let Some(k) = key {
            let pinned = r.fx.has_flow(&k);
            r.expect(n, !pinned, "the flow was pinned");
        }
    }
    r.case(
        "ttl: v4 tcp TTL 2: forwarded with TTL 1",
        cin(t(C4, VIP, 54004, 80, 2)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(1, t(C4, B1, 54004, 8080, 1))),
        Some("forwarded"),
    );
    r.case(
        "ttl: v6 udp hop limit 2: forwarded with hop limit 1",
        cin(u(C6, VIP6, 54005, 53, 2)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(2, u(C6, B62, 54005, 5353, 1))),
        Some("forwarded"),
    );
    r.case(
        "ttl: v4 tcp reply TTL 1: passed",
        bin(1, t(B1, C4, 8080, 54004, 1)),
        bi,
        XDP_PASS,
        Exp::Same,
        Some("ttl_exceeded"),
    );
    r.case(
        "ttl: v6 udp reply hop limit 1: passed",
        bin(2, u(B62, C6, 5353, 54005, 1)),
        bi,
        XDP_PASS,
        Exp::Same,
        Some("ttl_exceeded"),
    );
    r.case(
        "ttl: v4 reply TTL 2: forwarded with TTL 1",
        bin(1, t(B1, C4, 8080, 54004, 2)),
        bi,
        XDP_REDIRECT,
        Exp::Frame(toc(t(VIP, C4, 80, 54004, 1))),
        Some("replies"),
    );
    r.case(
        "ttl: v4 TTL 1 to the balancer's own address: passed",
        cin(syn(C4, LB, 54006, 22, 1)),
        ci,
        XDP_PASS,
        Exp::Same,
        None,
    );

    // ---- strict L4 checks ----
    let drops: Vec<(&str, Vec<u8>, Option<lb_common::FlowKey>)> = vec![
        (
            "v4 tcp data offset 4",
            with_doff(syn(C4, VIP, 54100, 80, 64), 4),
            Some(flow_key(C4, VIP, 54100, 80, PROTO_TCP)),
        ),
        (
            "v4 tcp data offset 0",
            with_doff(t(C4, VIP, 54101, 80, 64), 0),
            Some(flow_key(C4, VIP, 54101, 80, PROTO_TCP)),
        ),
        (
            "v4 tcp data offset 15 beyond the segment",
            with_doff(t(C4, VIP, 54102, 80, 64), 15),
            Some(flow_key(C4, VIP, 54102, 80, PROTO_TCP)),
        ),
        (
            "v6 tcp data offset 4",
            with_doff(syn(C6, VIP6, 54103, 80, 64), 4),
            Some(flow_key(C6, VIP6, 54103, 80, PROTO_TCP)),
        ),
        (
            "v6 tcp data offset 15 beyond the segment",
            with_doff(t(C6, VIP6, 54104, 80, 64), 15),
            Some(flow_key(C6, VIP6, 54104, 80, PROTO_TCP)),
        ),
        (
            "v4 udp length longer than the payload",
            with_udp_len(u(C4, VIP, 54105, 53, 64), 8 + DATA.len() as u16 + 8),
            Some(flow_key(C4, VIP, 54105, 53, PROTO_UDP)),
        ),
        (
            "v4 udp length shorter than the payload",
            with_udp_len(u(C4, VIP, 54106, 53, 64), 8 + DATA.len() as u16 - 8),
            Some(flow_key(C4, VIP, 54106, 53, PROTO_UDP)),
        ),
        (
            "v4 udp length 0",
            with_udp_len(u(C4, VIP, 54107, 53, 64), 0),
            Some(flow_key(C4, VIP, 54107, 53, PROTO_UDP)),
        ),
        (
            "v6 udp length longer than the payload",
            with_udp_len(u(C6, VIP6, 54108, 53, 64), 8 + DATA.len() as u16 + 1),
            Some(flow_key(C6, VIP6, 54108, 53, PROTO_UDP)),
        ),
        (
            "v6 udp checksum 0",
            with_udp_csum0(u(C6, VIP6, 54109, 53, 64)),
            Some(flow_key(C6, VIP6, 54109, 53, PROTO_UDP)),
        ),
    ];
    for (n, l3, key) in drops {
        let n = name(format!("strict: {n} to the VIP: dropped"));
        r.case(n, cin(l3), ci, XDP_DROP, Exp::Dropped, Some("malformed"));
        if let Some(k) = key {
            let pinned = r.fx.has_flow(&k);
            r.expect(n, !pinned, "the flow was pinned");
        }
    }
    r.case(
        "strict: v4 tcp reply with data offset 4: dropped",
        bin(1, with_doff(t(B1, C4, 8080, 54004, 64), 4)),
        bi,
        XDP_DROP,
        Exp::Dropped,
        Some("malformed"),
    );
    r.case(
        "strict: v6 udp reply with checksum 0: dropped",
        bin(2, with_udp_csum0(u(B62, C6, 5353, 54005, 64))),
        bi,
        XDP_DROP,
        Exp::Dropped,
        Some("malformed"),
    );
    r.case(
        "strict: v4 udp reply with a wrong length: dropped",
        bin(2, with_udp_len(u(B2, C4, 5353, 54001, 64), 9)),
        bi,
        XDP_DROP,
        Exp::Dropped,
        Some("malformed"),
    );
    r.case(
        "strict: v4 tcp data offset 4 to the balancer's own address: passed",
        cin(with_doff(syn(C4, LB, 54110, 22, 64), 4)),
        ci,
        XDP_PASS,
        Exp::Same,
        None,
    );
    r.case(
        "strict: v6 udp checksum 0 to the balancer's own address: passed",
        cin(with_udp_csum0(u(C6, LB6, 54111, 5000, 64))),
        ci,
        XDP_PASS,
        Exp::Same,
        None,
    );
    // Valid edge cases: TCP options (data offset 6), Ethernet padding after a short packet.
    let opt_seg = |src: IpAddr, dst: IpAddr, dport: u16| {
        let mut h = etherparse::TcpHeader::new(54112, dport, 1000, 64240);
        h.syn = true;
        h.set_options(&[etherparse::TcpOptionElement::MaximumSegmentSize(1460)])
            .unwrap();
        h.checksum = h
            .calc_checksum_ipv4_raw(
                match src {
                    IpAddr::V4(a) => a.octets(),
                    _ => unreachable!(),
                },
                match dst {
                    IpAddr::V4(a) => a.octets(),
                    _ => unreachable!(),
                },
                &[],
            )
            .unwrap();
        h.to_bytes().to_vec()
    };
    r.case(
        "strict: v4 tcp syn with an MSS option (data offset 6): forwarded",
        cin(ip4(
            C4,
            VIP,
            PROTO_TCP,
            V4::default(),
            &opt_seg(C4, VIP, 80),
        )),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(
            1,
            ip4(
                C4,
                B1,
                PROTO_TCP,
                V4::default().dec(),
                &opt_seg(C4, B1, 8080),
            ),
        )),
        Some("forwarded"),
    );
    let short = |src, dst, sport, dport, ttl| {
        ipx(
            src,
            dst,
            ttl,
            PROTO_UDP,
            &udp(src, dst, sport, dport, b"hi"),
        )
    };
    let mut padded_in = cin(short(C4, VIP, 54113, 53, 64));
    let mut padded_out = tob(2, short(C4, B2, 54113, 5353, 63));
    padded_in.resize(60, 0);
    padded_out.resize(60, 0);
    r.case(
        "strict: v4 udp in a frame with Ethernet padding: forwarded, padding kept",
        padded_in,
        ci,
        XDP_REDIRECT,
        Exp::Frame(padded_out),
        Some("forwarded"),
    );
    r.finish("ttl and strict checks", 27);
}

// ---- parsing edges ----

/// Parsing rows of the table not covered by `fixtures.rs`.
#[test]
fn parsing_edges() {
    if skip() {
        return;
    }
    let mut r = Runner::new(Fixture::new());
    let ci = r.fx.ifindex_client;
    let mut short_total = syn(C4, VIP, 59000, 80, 64);
    short_total[2..4].copy_from_slice(&16u16.to_be_bytes());
    fix_ip4_checksum(&mut short_total);
    let mut tcp_outside = t(C4, VIP, 59001, 80, 64);
    tcp_outside[2..4].copy_from_slice(&30u16.to_be_bytes());
    fix_ip4_checksum(&mut tcp_outside);
    let mut udp_outside = u(C6, VIP6, 59002, 53, 64);
    udp_outside[4..6].copy_from_slice(&4u16.to_be_bytes());
    let mut v6_bad_version = syn(C6, VIP6, 59003, 80, 64);
    v6_bad_version[0] = 0x40;
    for (n, frame) in [
        ("ipv4 total length < IHL", cin(short_total)),
        (
            "ipv4 total length ends inside the TCP header (frame longer)",
            cin(tcp_outside),
        ),
        (
            "ipv6 payload length ends inside the UDP header (frame longer)",
            cin(udp_outside),
        ),
        ("ipv6 with version 4", cin(v6_bad_version)),
    ] {
        r.case(
            name(format!("parse: {n}: dropped")),
            frame,
            ci,
            XDP_DROP,
            Exp::Dropped,
            Some("malformed"),
        );
    }
    for (n, proto) in [("GRE", 47u8), ("ESP", 50), ("SCTP", 132)] {
        r.case(
            name(format!("parse: {n} to the VIP: passed")),
            cin(ip4(C4, VIP, proto, V4::default(), &[0u8; 24])),
            ci,
            XDP_PASS,
            Exp::Same,
            None,
        );
    }
    r.case(
        "parse: SCTP to the IPv6 VIP: passed",
        cin(ip6(C6, VIP6, 64, &[], 132, &[0u8; 24])),
        ci,
        XDP_PASS,
        Exp::Same,
        None,
    );
    r.finish("parsing", 8);
}

// ---- stray replies ----

/// Client ports (from 56000) of the `multi` service whose flows Maglev sends to 198.18.2.`last`
/// (probed on a fixture of their own: the same config and seed give the same table).
fn multi_ports_to(last: u8, n: usize) -> Vec<u16> {
    let fx = Fixture::new();
    let mut out = Vec::new();
    for p in 56000..57000u16 {
        let (rc, o) = fx.run(&cin(syn(C4, VIPM, p, 80, 64)), fx.ifindex_client);
        assert_eq!(rc, XDP_REDIRECT, "probe of multi");
        let (l3, _) = l3_of(&o).unwrap();
        if o[l3 + 16..l3 + 20] == [198, 18, 2, last] {
            out.push(p);
            if out.len() == n {
                return out;
            }
        }
    }
    panic!("no multi flows to 198.18.2.{last}");
}

/// A TCP segment with `flags` (see `tcp_flags`) in an IP packet with TTL `ttl`.
fn tf(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: &str, ttl: u8) -> Vec<u8> {
    ipx(
        src,
        dst,
        ttl,
        PROTO_TCP,
        &tcp_flags(src, dst, sport, dport, flags),
    )
}

/// Service counters summed over every service id the fixture uses: (new flows, SYNs).
fn flow_counts(fx: &Fixture) -> (u64, u64) {
    (0..16).fold((0, 0), |(n, s), id| {
        let c = fx.dp.service_counters(id);
        (n + c.new_flows, s + c.syns)
    })
}

/// Flood protection: a SYN that misses the table is pinned in `UNCONFIRMED` (a SYN flood
/// evicts only such entries), its SYN-ACK answers it there, and the client's ACK moves the flow
/// to the connection table; a flow counts as new when its backend answers it after that (SYNs
/// separately); a UDP flow waits in `UNCONFIRMED` until its client sends again after a reply
/// (counted new at the reply); a handshake whose
/// entry was evicted has its SYN-ACK translated without an entry.
#[test]
fn handshakes_and_unconfirmed_udp() {
    if skip() {
        return;
    }
    let mut r = Runner::new(Fixture::new());
    let (ci, bi) = (r.fx.ifindex_client, r.fx.ifindex_backends);
    let k = flow_key(C6, VIP6, 51000, 80, PROTO_TCP);
    let (n0, s0) = flow_counts(&r.fx);
    r.case(
        "handshake: v6 SYN to web6: forwarded, pinned in UNCONFIRMED",
        cin(syn(C6, VIP6, 51000, 80, 64)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(1, syn(C6, B61, 51000, 8080, 63))),
        Some("unconfirmed"),
    );
    let (c, any) = (r.fx.has_confirmed_flow(&k), r.fx.has_flow(&k));
    r.expect(
        "handshake: unconfirmed entry only",
        !c && any,
        &format!("confirmed {c}, any {any}"),
    );
    r.case(
        "handshake: its retransmission follows the entry",
        cin(syn(C6, VIP6, 51000, 80, 64)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(1, syn(C6, B61, 51000, 8080, 63))),
        Some("forwarded"),
    );
    r.case(
        "handshake: the backend's SYN-ACK: to the client from the VIP",
        bin(1, tf(B61, C6, 8080, 51000, "SA", 64)),
        bi,
        XDP_REDIRECT,
        Exp::Frame(toc(tf(VIP6, C6, 80, 51000, "SA", 63))),
        Some("replies"),
    );
    let c = r.fx.has_confirmed_flow(&k);
    r.expect("handshake: still unconfirmed", !c, "a CONNTRACK entry");
    let (n1, s1) = flow_counts(&r.fx);
    r.expect(
        "handshake: two SYNs counted, no new flow yet",
        (n1 - n0, s1 - s0) == (0, 2),
        &format!("new flows +{}, SYNs +{}", n1 - n0, s1 - s0),
    );
    r.case(
        "handshake: the client's ACK confirms the flow",
        cin(tf(C6, VIP6, 51000, 80, "A", 64)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(1, tf(C6, B61, 51000, 8080, "A", 63))),
        Some("confirmed"),
    );
    let c = r.fx.has_confirmed_flow(&k);
    r.expect("handshake: in CONNTRACK", c, "no CONNTRACK entry");
    r.case(
        "handshake: the backend's first data: counted",
        bin(1, t(B61, C6, 8080, 51000, 64)),
        bi,
        XDP_REDIRECT,
        Exp::Frame(toc(t(VIP6, C6, 80, 51000, 63))),
        Some("replies"),
    );
    r.case(
        "handshake: and its second data",
        bin(1, t(B61, C6, 8080, 51000, 64)),
        bi,
        XDP_REDIRECT,
        Exp::Frame(toc(t(VIP6, C6, 80, 51000, 63))),
        Some("replies"),
    );
    let (n2, _) = flow_counts(&r.fx);
    r.expect(
        "handshake: one new flow, once answered",
        n2 - n1 == 1,
        &format!("new flows +{}", n2 - n1),
    );

    // A refused handshake: the RST goes to the client; no new flow.
    r.case(
        "refusal: v6 SYN",
        cin(syn(C6, VIP6, 51001, 80, 64)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(1, syn(C6, B61, 51001, 8080, 63))),
        Some("unconfirmed"),
    );
    r.case(
        "refusal: the backend's RST: to the client from the VIP",
        bin(1, tf(B61, C6, 8080, 51001, "RA", 64)),
        bi,
        XDP_REDIRECT,
        Exp::Frame(toc(tf(VIP6, C6, 80, 51001, "RA", 63))),
        Some("replies"),
    );
    let (n3, _) = flow_counts(&r.fx);
    r.expect(
        "refusal: not a new flow",
        n3 == n2,
        &format!("new flows +{}", n3 - n2),
    );

    // A handshake whose entry a flood evicted: its SYN-ACK is translated without an entry.
    let k3 = flow_key(C6, VIP6, 51003, 80, PROTO_TCP);
    r.case(
        "evicted: v6 SYN",
        cin(syn(C6, VIP6, 51003, 80, 64)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(1, syn(C6, B61, 51003, 8080, 63))),
        Some("unconfirmed"),
    );
    r.fx.delete_flow(&k3);
    r.case(
        "evicted: its SYN-ACK: to the client from the VIP, no entry made",
        bin(1, tf(B61, C6, 8080, 51003, "SA", 64)),
        bi,
        XDP_REDIRECT,
        Exp::Frame(toc(tf(VIP6, C6, 80, 51003, "SA", 63))),
        Some("synack_stateless"),
    );
    let has = r.fx.has_flow(&k3);
    r.expect("evicted: no entry", !has, "an entry");
    r.case(
        "evicted: the client's ACK pins the flow where the table sends it (UNCONFIRMED)",
        cin(tf(C6, VIP6, 51003, 80, "A", 64)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(1, tf(C6, B61, 51003, 8080, "A", 63))),
        Some("conntrack_miss"),
    );
    let (c, any) = (r.fx.has_confirmed_flow(&k3), r.fx.has_flow(&k3));
    r.expect(
        "evicted: unconfirmed",
        !c && any,
        &format!("confirmed {c}, any {any}"),
    );
    r.case(
        "evicted: the backend's data answers it",
        bin(1, t(B61, C6, 8080, 51003, 64)),
        bi,
        XDP_REDIRECT,
        Exp::Frame(toc(t(VIP6, C6, 80, 51003, 63))),
        Some("replies"),
    );
    r.case(
        "evicted: the client's next segment confirms it",
        cin(t(C6, VIP6, 51003, 80, 64)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(1, t(C6, B61, 51003, 8080, 63))),
        Some("confirmed"),
    );
    let c = r.fx.has_confirmed_flow(&k3);
    r.expect("evicted: in CONNTRACK", c, "no CONNTRACK entry");

    // A spoofed ACK (no handshake): pinned in UNCONFIRMED; the backend's RST is no answer
    // (and no refusal), so the source's next packet confirms nothing.
    let k4 = flow_key(C6, VIP6, 51004, 80, PROTO_TCP);
    r.case(
        "spoofed ACK: forwarded, unconfirmed",
        cin(tf(C6, VIP6, 51004, 80, "A", 64)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(1, tf(C6, B61, 51004, 8080, "A", 63))),
        Some("unconfirmed"),
    );
    r.case(
        "spoofed ACK: the backend's RST goes back",
        bin(1, tf(B61, C6, 8080, 51004, "R", 64)),
        bi,
        XDP_REDIRECT,
        Exp::Frame(toc(tf(VIP6, C6, 80, 51004, "R", 63))),
        Some("replies"),
    );
    r.case(
        "spoofed ACK: another one stays unconfirmed",
        cin(tf(C6, VIP6, 51004, 80, "A", 64)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(1, tf(C6, B61, 51004, 8080, "A", 63))),
        Some("forwarded"),
    );
    let c = r.fx.has_confirmed_flow(&k4);
    r.expect("spoofed ACK: not in CONNTRACK", !c, "a CONNTRACK entry");

    // A SYN-ACK for a client port the table sends elsewhere is no balanced flow's: passed.
    let other = multi_ports_to(13, 1)[0];
    r.case(
        name(format!(
            "handshake: SYN-ACK from .12 to client port {other} (the table sends it to .13): passed"
        )),
        bin(2, tf(B2, C4, 8080, other, "SA", 64)),
        bi,
        XDP_PASS,
        Exp::Same,
        None,
    );

    // UDP: unconfirmed until the client sends again after a reply (a spoofed source never
    // does); counted as a new flow at its first reply.
    let ku = flow_key(C4, VIP, 51002, 53, PROTO_UDP);
    r.case(
        "udp: a new flow waits in UNCONFIRMED",
        cin(u(C4, VIP, 51002, 53, 64)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(2, u(C4, B2, 51002, 5353, 63))),
        Some("unconfirmed"),
    );
    let (c, any) = (r.fx.has_confirmed_flow(&ku), r.fx.has_flow(&ku));
    r.expect(
        "udp: unconfirmed entry only",
        !c && any,
        &format!("confirmed {c}, any {any}"),
    );
    r.case(
        "udp: its next datagram follows the unconfirmed entry",
        cin(u(C4, VIP, 51002, 53, 64)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(2, u(C4, B2, 51002, 5353, 63))),
        Some("forwarded"),
    );
    let (n4, _) = flow_counts(&r.fx);
    r.case(
        "udp: the first reply: counted, still unconfirmed",
        bin(2, u(B2, C4, 5353, 51002, 64)),
        bi,
        XDP_REDIRECT,
        Exp::Frame(toc(u(VIP, C4, 53, 51002, 63))),
        Some("replies"),
    );
    let c = r.fx.has_confirmed_flow(&ku);
    r.expect("udp: not in CONNTRACK yet", !c, "a CONNTRACK entry");
    let (n5, _) = flow_counts(&r.fx);
    r.expect(
        "udp: one new flow at the first reply",
        n5 - n4 == 1,
        &format!("new flows +{}", n5 - n4),
    );
    r.case(
        "udp: the client's next datagram confirms it",
        cin(u(C4, VIP, 51002, 53, 64)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(2, u(C4, B2, 51002, 5353, 63))),
        Some("confirmed"),
    );
    let c = r.fx.has_confirmed_flow(&ku);
    r.expect("udp: moved to CONNTRACK", c, "no CONNTRACK entry");
    r.case(
        "udp: a second reply",
        bin(2, u(B2, C4, 5353, 51002, 64)),
        bi,
        XDP_REDIRECT,
        Exp::Frame(toc(u(VIP, C4, 53, 51002, 63))),
        Some("replies"),
    );
    let (n6, _) = flow_counts(&r.fx);
    r.expect(
        "udp: still one new flow",
        n6 == n5,
        &format!("new flows +{}", n6 - n5),
    );
    r.finish("handshakes", 22);
}

/// Backend packets without a connection-table entry: translated without state where the
/// address serves one service and the service's table sends the client there; passed where
/// the table sends the client elsewhere, the client talks to the backend address directly, or
/// the destination is this host; dropped where the address is shared or the flow is pinned
/// to another backend.
#[test]
fn stray_replies() {
    if skip() {
        return;
    }
    let to_b1 = multi_ports_to(11, 2);
    let to_b2 = multi_ports_to(12, 1);
    let to_b3 = multi_ports_to(13, 2);
    let mut r = Runner::new(Fixture::new());
    let (ci, bi) = (r.fx.ifindex_client, r.fx.ifindex_backends);

    // Unshared backend addresses whose table sends the client there: translated, the entry
    // re-created.
    r.case(
        "stray: v4 udp from dns's backend (unshared): to the VIP",
        bin(2, u(B2, C4, 5353, 55000, 64)),
        bi,
        XDP_REDIRECT,
        Exp::Frame(toc(u(VIP, C4, 53, 55000, 63))),
        Some("stray_recreated"),
    );
    let k = flow_key(C4, VIP, 55000, 53, PROTO_UDP);
    let has = r.fx.has_flow(&k);
    r.expect("stray: v4 udp entry re-created", has, "no CONNTRACK entry");
    r.case(
        "stray: v4 udp, the client's next datagram",
        cin(u(C4, VIP, 55000, 53, 64)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(2, u(C4, B2, 55000, 5353, 63))),
        Some("forwarded"),
    );
    let p = to_b2[0];
    r.case(
        name(format!(
            "stray: v4 tcp from multi's 198.18.2.12 (unshared, Maglev sends {p} there): to the VIP"
        )),
        bin(2, t(B2, C4, 8080, p, 64)),
        bi,
        XDP_REDIRECT,
        Exp::Frame(toc(t(VIPM, C4, 80, p, 63))),
        Some("stray_recreated"),
    );
    let has = r.fx.has_flow(&flow_key(C4, VIPM, p, 80, PROTO_TCP));
    r.expect(
        "stray: v4 tcp multi entry re-created",
        has,
        "no CONNTRACK entry",
    );
    r.case(
        "stray: v4 tcp, the client's next segment to 198.18.2.12",
        cin(t(C4, VIPM, p, 80, 64)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(2, t(C4, B2, p, 8080, 63))),
        Some("forwarded"),
    );
    r.case(
        "stray: v6 tcp from web6's backend (unshared): to the VIP",
        bin(1, t(B61, C6, 8080, 55002, 64)),
        bi,
        XDP_REDIRECT,
        Exp::Frame(toc(t(VIP6, C6, 80, 55002, 63))),
        Some("stray_recreated"),
    );
    let has = r.fx.has_flow(&flow_key(C6, VIP6, 55002, 80, PROTO_TCP));
    r.expect("stray: v6 tcp entry re-created", has, "no CONNTRACK entry");
    r.case(
        "stray: v6 udp from dns6's backend (unshared): to the VIP",
        bin(2, u(B62, C6, 5353, 55003, 64)),
        bi,
        XDP_REDIRECT,
        Exp::Frame(toc(u(VIP6, C6, 53, 55003, 63))),
        Some("stray_recreated"),
    );

    // The table sends the client elsewhere: not a balanced flow's reply, passed.
    let q = to_b3[0];
    r.case(
        name(format!(
            "stray: v4 tcp from 198.18.2.12 to client port {q} (Maglev sends it to .13): passed"
        )),
        bin(2, t(B2, C4, 8080, q, 64)),
        bi,
        XDP_PASS,
        Exp::Same,
        None,
    );
    let has = r.fx.has_flow(&flow_key(C4, VIPM, q, 80, PROTO_TCP));
    r.expect(
        "stray: passed stray makes no entry",
        !has,
        "a CONNTRACK entry was made",
    );

    // The client talks to the backend's own address through this host (DIRECT).
    r.case(
        "stray: v4 udp from the client straight to the backend address (not a service): passed",
        cin(u(C4, B2, 55030, 5353, 64)),
        ci,
        XDP_PASS,
        Exp::Same,
        None,
    );
    r.case(
        "stray: v4 udp reply of that direct conversation: passed untranslated",
        bin(2, u(B2, C4, 5353, 55030, 64)),
        bi,
        XDP_PASS,
        Exp::Same,
        None,
    );

    // Shared address (198.18.2.11:8080 serves web and multi; both tables send these client
    // ports there): dropped.
    let s1 = to_b1[0];
    r.case(
        name(format!(
            "stray: v4 tcp from the shared 198.18.2.11:8080 to client port {s1}: dropped"
        )),
        bin(1, t(B1, C4, 8080, s1, 64)),
        bi,
        XDP_DROP,
        Exp::Dropped,
        Some("stray_dropped"),
    );
    // The client's flow is pinned to another backend.
    let q2 = to_b3[1];
    r.case(
        name(format!("stray: multi flow {q2} pinned to 198.18.2.13")),
        cin(t(C4, VIPM, q2, 80, 64)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(3, t(C4, B3, q2, 8080, 63))),
        Some("forwarded"),
    );
    r.case(
        "stray: v4 tcp from 198.18.2.12 for a flow pinned to .13: dropped",
        bin(2, t(B2, C4, 8080, q2, 64)),
        bi,
        XDP_DROP,
        Exp::Dropped,
        Some("stray_dropped"),
    );

    // To this host (health checks): packets pass untouched, from shared addresses too (the
    // daemon's own health checks of a backend several services share).
    for (n, mi, l3) in [
        (
            "v4 udp from an unshared backend address to the balancer",
            2,
            u(B2, LBB, 5353, 55011, 64),
        ),
        (
            "v6 tcp from a backend to the balancer",
            1,
            t(B61, LBB6, 8080, 55012, 64),
        ),
    ] {
        r.case(
            name(format!("stray: {n}: passed")),
            bin(mi, l3),
            bi,
            XDP_PASS,
            Exp::Same,
            None,
        );
    }
    r.case(
        "stray: v4 tcp from the shared backend address to the balancer (a health check): passed",
        bin(1, t(B1, LBB, 8080, 55010, 64)),
        bi,
        XDP_PASS,
        Exp::Same,
        None,
    );

    // Entries evicted or swept: deleted here by hand.
    r.case(
        "stray: v4 udp flow 55020",
        cin(u(C4, VIP, 55020, 53, 64)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(2, u(C4, B2, 55020, 5353, 63))),
        Some("forwarded"),
    );
    let k = flow_key(C4, VIP, 55020, 53, PROTO_UDP);
    r.fx.delete_flow(&k);
    r.case(
        "stray: v4 udp reply after its entry was deleted: to the VIP",
        bin(2, u(B2, C4, 5353, 55020, 64)),
        bi,
        XDP_REDIRECT,
        Exp::Frame(toc(u(VIP, C4, 53, 55020, 63))),
        Some("stray_recreated"),
    );
    let has = r.fx.has_flow(&k);
    r.expect("stray: deleted entry re-created", has, "no CONNTRACK entry");
    let s2 = to_b1[1];
    r.case(
        name(format!(
            "stray: v4 tcp flow {s2} to web (shared backend address)"
        )),
        cin(syn(C4, VIP, s2, 80, 64)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(1, syn(C4, B1, s2, 8080, 63))),
        Some("forwarded"),
    );
    r.fx.delete_flow(&flow_key(C4, VIP, s2, 80, PROTO_TCP));
    let rev: Vec<_> =
        r.fx.dp
            .maps()
            .reverse
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.sport == s2.to_be_bytes() || k.dport == s2.to_be_bytes())
            .collect();
    for k in rev {
        let _ = r.fx.dp.forge_maps().reverse.remove(&k);
    }
    r.case(
        "stray: v4 tcp reply from the shared address after its entries were deleted: dropped",
        bin(1, t(B1, C4, 8080, s2, 64)),
        bi,
        XDP_DROP,
        Exp::Dropped,
        Some("stray_dropped"),
    );
    r.finish("stray replies", 18);
}

// ---- VLANs ----

const QINQ: [(u16, u16); 2] = [(TPID_8021AD, 100), (TPID_8021Q, 42)];
const QINQ_Q: [(u16, u16); 2] = [(TPID_8021Q, 100), (TPID_8021Q, 42)];

/// Without VLAN devices every egress is plain: frames leave untagged, whatever tags they came
/// with.
#[test]
fn vlan_tags_into_plain_egresses() {
    if skip() {
        return;
    }
    let mut r = Runner::new(Fixture::new());
    let (ci, bi) = (r.fx.ifindex_client, r.fx.ifindex_backends);
    r.case(
        "vlan: v4 tcp in QinQ (802.1ad + 802.1Q): leaves untagged",
        cin_tagged(&QINQ, syn(C4, VIP, 57000, 80, 64)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(1, syn(C4, B1, 57000, 8080, 63))),
        Some("forwarded"),
    );
    r.case(
        "vlan: v4 udp in QinQ (802.1Q + 802.1Q): leaves untagged",
        cin_tagged(&QINQ_Q, u(C4, VIP, 57001, 53, 64)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(2, u(C4, B2, 57001, 5353, 63))),
        Some("forwarded"),
    );
    r.case(
        "vlan: v6 tcp in one 802.1Q tag: leaves untagged",
        cin_tagged(&[(TPID_8021Q, 42)], syn(C6, VIP6, 57002, 80, 64)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(1, syn(C6, B61, 57002, 8080, 63))),
        Some("forwarded"),
    );
    r.case(
        "vlan: v6 udp in QinQ: leaves untagged",
        cin_tagged(&QINQ, u(C6, VIP6, 57003, 53, 64)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(2, u(C6, B62, 57003, 5353, 63))),
        Some("forwarded"),
    );
    r.case(
        "vlan: v4 tcp reply tagged 20: leaves untagged",
        eth(
            backend_mac(1),
            LB_BACKENDS_MAC,
            &[(TPID_8021Q, 20)],
            &t(B1, C4, 8080, 57000, 64),
        ),
        bi,
        XDP_REDIRECT,
        Exp::Frame(toc(t(VIP, C4, 80, 57000, 63))),
        Some("replies"),
    );
    r.case(
        "vlan: v6 udp reply in QinQ: leaves untagged",
        eth(
            backend_mac(2),
            LB_BACKENDS_MAC,
            &QINQ,
            &u(B62, C6, 5353, 57003, 64),
        ),
        bi,
        XDP_REDIRECT,
        Exp::Frame(toc(u(VIP6, C6, 53, 57003, 63))),
        Some("replies"),
    );
    r.case(
        "vlan: ICMP error in QinQ about a tcp reply: to the backend untagged",
        cin_tagged(
            &QINQ,
            icmp_err(R4C, VIP, 64, 3, 1, [0; 4], &t(VIP, C4, 80, 57000, 61)),
        ),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(
            1,
            icmp_err(
                R4C,
                B1,
                63,
                3,
                1,
                [0; 4],
                &requote(&t(VIP, C4, 80, 57000, 61), true, B1, 8080),
            ),
        )),
        Some("icmp_to_backend"),
    );
    r.case(
        "vlan: three tags: passed",
        cin_tagged(
            &[(TPID_8021AD, 100), (TPID_8021Q, 42), (TPID_8021Q, 7)],
            syn(C4, VIP, 57004, 80, 64),
        ),
        ci,
        XDP_PASS,
        Exp::Same,
        None,
    );
    r.case(
        "vlan: QinQ to the balancer's own address: passed",
        cin_tagged(&QINQ, syn(C4, LB, 57005, 22, 64)),
        ci,
        XDP_PASS,
        Exp::Same,
        None,
    );
    let mut trunc = cin_tagged(&QINQ, syn(C4, VIP, 57006, 80, 64));
    trunc.truncate(14 + 4 + 2);
    r.case(
        "vlan: QinQ frame cut inside the inner tag: dropped",
        trunc,
        ci,
        XDP_DROP,
        Exp::Dropped,
        Some("malformed"),
    );
    r.finish("vlan (plain egress)", 10);
}

/// `VLANS[veth-backends] = {veth-backends, 20}`: frames towards the backends leave tagged 20
/// (pushed, rewritten, inner tag removed); replies leave untagged towards the client.
#[test]
fn vlan_tags_pushed_rewritten_popped() {
    if skip() {
        return;
    }
    let mut fx = Fixture::new();
    let bi = fx.ifindex_backends;
    fx.set_vlan(bi, bi, 20);
    let mut r = Runner::new(fx);
    let ci = r.fx.ifindex_client;
    let tob20 = |i: u8, l3: Vec<u8>| eth(LB_BACKENDS_MAC, backend_mac(i), &[(TPID_8021Q, 20)], &l3);
    r.case(
        "vlan 20: v4 tcp untagged: tag pushed",
        cin(syn(C4, VIP, 57100, 80, 64)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob20(1, syn(C4, B1, 57100, 8080, 63))),
        Some("forwarded"),
    );
    r.case(
        "vlan 20: v4 udp tagged 42: tag rewritten",
        cin_tagged(&[(TPID_8021Q, 42)], u(C4, VIP, 57101, 53, 64)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob20(2, u(C4, B2, 57101, 5353, 63))),
        Some("forwarded"),
    );
    r.case(
        "vlan 20: v4 tcp in QinQ: one tag 20 left",
        cin_tagged(&QINQ, t(C4, VIP, 57100, 80, 64)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob20(1, t(C4, B1, 57100, 8080, 63))),
        Some("forwarded"),
    );
    r.case(
        "vlan 20: v6 tcp untagged: tag pushed",
        cin(syn(C6, VIP6, 57102, 80, 64)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob20(1, syn(C6, B61, 57102, 8080, 63))),
        Some("forwarded"),
    );
    r.case(
        "vlan 20: v6 udp in QinQ (802.1Q + 802.1Q): one tag 20 left",
        cin_tagged(&QINQ_Q, u(C6, VIP6, 57103, 53, 64)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob20(2, u(C6, B62, 57103, 5353, 63))),
        Some("forwarded"),
    );
    r.case(
        "vlan 20: v4 tcp reply tagged 20: tag popped",
        eth(
            backend_mac(1),
            LB_BACKENDS_MAC,
            &[(TPID_8021Q, 20)],
            &t(B1, C4, 8080, 57100, 64),
        ),
        bi,
        XDP_REDIRECT,
        Exp::Frame(toc(t(VIP, C4, 80, 57100, 63))),
        Some("replies"),
    );
    r.case(
        "vlan 20: v6 udp reply tagged 20: tag popped",
        eth(
            backend_mac(2),
            LB_BACKENDS_MAC,
            &[(TPID_8021Q, 20)],
            &u(B62, C6, 5353, 57103, 64),
        ),
        bi,
        XDP_REDIRECT,
        Exp::Frame(toc(u(VIP6, C6, 53, 57103, 63))),
        Some("replies"),
    );
    r.finish("vlan (VLAN device egress)", 7);
}

/// Routing outcomes other than a resolved next hop: no neighbour entry yet (198.18.2.13's is
/// deleted: rewritten, handed to the kernel with TTL and MACs as they came), no route
/// (2001:db8:2::/64 unreachable: dropped).
#[test]
fn no_neighbour_and_no_route() {
    if skip() {
        return;
    }
    let to_b3 = multi_ports_to(13, 1);
    let fx = Fixture::new();
    fx.sh("ip neigh del 198.18.2.13 dev veth-backends");
    fx.sh("ip -6 route del 2001:db8:2::/64 dev veth-backends");
    fx.sh("ip -6 route add unreachable 2001:db8:2::/64");
    let mut r = Runner::new(fx);
    let ci = r.fx.ifindex_client;
    let p = to_b3[0];
    r.case(
        name(format!(
            "routing: multi flow {p} to 198.18.2.13 without a neighbour entry → kernel"
        )),
        cin(syn(C4, VIPM, p, 80, 64)),
        ci,
        XDP_PASS,
        Exp::Frame(cin(syn(C4, B3, p, 8080, 64))),
        Some("fib_no_neigh"),
    );
    r.case(
        "routing: v4 tcp to web (neighbour known) still forwarded",
        cin(syn(C4, VIP, 58001, 80, 64)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(1, syn(C4, B1, 58001, 8080, 63))),
        Some("forwarded"),
    );
    r.case(
        "routing: v6 tcp to web6, route unreachable: dropped",
        cin(syn(C6, VIP6, 58002, 80, 64)),
        ci,
        XDP_DROP,
        Exp::Dropped,
        Some("fib_failed"),
    );
    r.finish("routing", 3);
}

/// No route at all towards the backends (their prefix deleted, no default route): the FIB
/// answers "not forwarded"; rewritten (TTL not decremented) and handed to the kernel, which
/// answers "unreachable".
#[test]
fn no_route_at_all() {
    if skip() {
        return;
    }
    let fx = Fixture::new();
    fx.sh("ip -6 route del 2001:db8:2::/64 dev veth-backends");
    let mut r = Runner::new(fx);
    let ci = r.fx.ifindex_client;
    r.case(
        "routing: v6 tcp to web6, no route: rewritten, to the kernel",
        cin(syn(C6, VIP6, 58003, 80, 64)),
        ci,
        XDP_PASS,
        Exp::Frame(cin(syn(C6, B61, 58003, 8080, 64))),
        None,
    );
    r.finish("no route", 1);
}

/// Egresses the program cannot transmit on: a VLAN device whose parent is not in TX_PORTS,
/// an interface not in TX_PORTS. Rewritten, handed to the kernel, TTL, MACs and tags as they
/// came.
#[test]
fn egress_not_in_tx_ports() {
    if skip() {
        return;
    }
    let mut fx = Fixture::new();
    let bi = fx.ifindex_backends;
    fx.set_vlan(bi, 999_999, 20);
    let mut r = Runner::new(fx);
    let ci = r.fx.ifindex_client;
    r.case(
        "egress: VLAN device whose parent is not in TX_PORTS: v4 tcp to the kernel",
        cin(syn(C4, VIP, 57200, 80, 64)),
        ci,
        XDP_PASS,
        Exp::Frame(cin(syn(C4, B1, 57200, 8080, 64))),
        Some("egress_kernel"),
    );
    r.case(
        "egress: VLAN device whose parent is not in TX_PORTS: tagged v6 udp to the kernel",
        cin_tagged(&[(TPID_8021Q, 42)], u(C6, VIP6, 57201, 53, 64)),
        ci,
        XDP_PASS,
        Exp::Frame(cin_tagged(&[(TPID_8021Q, 42)], u(C6, B62, 57201, 5353, 64))),
        Some("egress_kernel"),
    );
    let r1 = r;

    let mut fx = Fixture::new();
    let ci = fx.ifindex_client;
    let bi = fx.ifindex_backends;
    fx.set_tx_ports(&[bi]);
    let mut r = Runner::new(fx);
    r.case(
        "egress: veth-client not in TX_PORTS: v4 tcp to the backend still redirected",
        cin(syn(C4, VIP, 57210, 80, 64)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(1, syn(C4, B1, 57210, 8080, 63))),
        Some("forwarded"),
    );
    r.case(
        "egress: veth-client not in TX_PORTS: v4 tcp reply to the kernel",
        bin(1, t(B1, C4, 8080, 57210, 64)),
        bi,
        XDP_PASS,
        Exp::Frame(bin(1, t(VIP, C4, 80, 57210, 64))),
        Some("egress_kernel"),
    );
    r.case(
        "egress: veth-client not in TX_PORTS: v6 udp flow 57211",
        cin(u(C6, VIP6, 57211, 53, 64)),
        ci,
        XDP_REDIRECT,
        Exp::Frame(tob(2, u(C6, B62, 57211, 5353, 63))),
        Some("forwarded"),
    );
    r.case(
        "egress: veth-client not in TX_PORTS: v6 udp reply to the kernel",
        bin(2, u(B62, C6, 5353, 57211, 64)),
        bi,
        XDP_PASS,
        Exp::Frame(bin(2, u(VIP6, C6, 53, 57211, 64))),
        Some("egress_kernel"),
    );
    let mut failures = r1.failures;
    failures.extend(r.failures);
    let cases = r1.cases + r.cases;
    eprintln!("egress: {cases} cases, {} failed", failures.len());
    assert!(cases >= 5);
    assert!(
        failures.is_empty(),
        "egress: {} of {cases} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
