//! `BPF_PROG_TEST_RUN` fixtures for the XDP program, Katran style: input packet → expected
//! output packet → expected action.
//!
//! The program is loaded and its maps filled by the daemon's own code (config → desired state
//! → reconciler). Packets are run from inside a namespace whose interfaces, routes and static
//! neighbours make every FIB lookup deterministic. Expected packets are built from scratch by
//! etherparse (which computes checksums itself), and every output's checksums are recomputed
//! by etherparse too.
//!
//! Needs root (skipped with a message otherwise).
mod common;

use std::{collections::BTreeMap, net::IpAddr};

use common::*;
use etherparse::{IpHeaders, Ipv4Header, Ipv4Options, PacketBuilder};

#[test]
fn packet_fixtures() {
    if skip() {
        return;
    }
    let fx = Fixture::new();
    let (ci, bi) = (fx.ifindex_client, fx.ifindex_backends);
    let c = CLIENT_MAC;
    let l = LB_CLIENT_MAC;
    let lbb = LB_BACKENDS_MAC;
    let b1 = backend_mac(1);
    let b2 = backend_mac(2);

    let mut cases = vec![
        // ---- client → VIP ----
        Case {
            name: "v4 tcp syn to VIP",
            input: build4(c, l, None, CLIENT4, VIP4, 40000, 80, L4::Syn),
            ifindex: ci,
            action: XDP_REDIRECT,
            expected: Some(build4(lbb, b1, None, CLIENT4, B4_1, 40000, 8080, L4::Syn)),
        },
        Case {
            name: "v4 tcp data on the same flow",
            input: build4(c, l, None, CLIENT4, VIP4, 40000, 80, L4::Data),
            ifindex: ci,
            action: XDP_REDIRECT,
            expected: Some(build4(lbb, b1, None, CLIENT4, B4_1, 40000, 8080, L4::Data)),
        },
        Case {
            name: "v4 udp to VIP",
            input: build4(c, l, None, CLIENT4, VIP4, 40001, 53, L4::Udp),
            ifindex: ci,
            action: XDP_REDIRECT,
            expected: Some(build4(lbb, b2, None, CLIENT4, B4_2, 40001, 5353, L4::Udp)),
        },
        Case {
            name: "v6 tcp syn to VIP",
            input: build6(c, l, client6(), vip6(), 40002, 80, L4::Syn),
            ifindex: ci,
            action: XDP_REDIRECT,
            expected: Some(build6(lbb, b1, client6(), b6(1), 40002, 8080, L4::Syn)),
        },
        Case {
            name: "v6 tcp data to VIP",
            input: build6(c, l, client6(), vip6(), 40002, 80, L4::Data),
            ifindex: ci,
            action: XDP_REDIRECT,
            expected: Some(build6(lbb, b1, client6(), b6(1), 40002, 8080, L4::Data)),
        },
        Case {
            name: "v6 udp to VIP",
            input: build6(c, l, client6(), vip6(), 40003, 53, L4::Udp),
            ifindex: ci,
            action: XDP_REDIRECT,
            expected: Some(build6(lbb, b2, client6(), b6(2), 40003, 5353, L4::Udp)),
        },
        Case {
            name: "v4 tcp in an 802.1Q tag leaves untagged (the egress has no VLAN)",
            input: build4(c, l, Some(42), CLIENT4, VIP4, 40004, 80, L4::Syn),
            ifindex: ci,
            action: XDP_REDIRECT,
            expected: Some(build4(lbb, b1, None, CLIENT4, B4_1, 40004, 8080, L4::Syn)),
        },
        Case {
            name: "backend behind the ingress interface: XDP_TX",
            input: build4(c, l, None, CLIENT4, VIP4_HAIRPIN, 40020, 80, L4::Syn),
            ifindex: ci,
            action: XDP_TX,
            expected: Some(build4(
                l,
                HAIRPIN_MAC,
                None,
                CLIENT4,
                HAIRPIN4,
                40020,
                8080,
                L4::Syn,
            )),
        },
        // ---- backend → client (the flows above exist now) ----
        Case {
            name: "v4 tcp reply",
            input: build4(b1, lbb, None, B4_1, CLIENT4, 8080, 40000, L4::Data),
            ifindex: bi,
            action: XDP_REDIRECT,
            expected: Some(build4(l, c, None, VIP4, CLIENT4, 80, 40000, L4::Data)),
        },
        Case {
            name: "v4 udp reply",
            input: build4(b2, lbb, None, B4_2, CLIENT4, 5353, 40001, L4::Udp),
            ifindex: bi,
            action: XDP_REDIRECT,
            expected: Some(build4(l, c, None, VIP4, CLIENT4, 53, 40001, L4::Udp)),
        },
        Case {
            name: "v6 tcp reply",
            input: build6(b1, lbb, b6(1), client6(), 8080, 40002, L4::Data),
            ifindex: bi,
            action: XDP_REDIRECT,
            expected: Some(build6(l, c, vip6(), client6(), 80, 40002, L4::Data)),
        },
        Case {
            name: "v6 udp reply",
            input: build6(b2, lbb, b6(2), client6(), 5353, 40003, L4::Udp),
            ifindex: bi,
            action: XDP_REDIRECT,
            expected: Some(build6(l, c, vip6(), client6(), 53, 40003, L4::Udp)),
        },
        Case {
            name: "reply without a flow from an unshared backend: translated, re-pinned",
            input: build4(b2, lbb, None, B4_2, CLIENT4, 5353, 40999, L4::Udp),
            ifindex: bi,
            action: XDP_REDIRECT,
            expected: Some(build4(l, c, None, VIP4, CLIENT4, 53, 40999, L4::Udp)),
        },
        // ---- not for a service ----
        Case {
            name: "v4 tcp to the balancer's own address",
            input: build4(c, l, None, CLIENT4, LB4, 40005, 22, L4::Syn),
            ifindex: ci,
            action: XDP_PASS,
            expected: None,
        },
        Case {
            name: "v4 tcp to VIP, wrong port",
            input: build4(c, l, None, CLIENT4, VIP4, 40006, 81, L4::Syn),
            ifindex: ci,
            action: XDP_PASS,
            expected: None,
        },
        Case {
            name: "v4 udp to a tcp service port",
            input: build4(c, l, None, CLIENT4, VIP4, 40007, 80, L4::Udp),
            ifindex: ci,
            action: XDP_PASS,
            expected: None,
        },
        Case {
            name: "v6 tcp to VIP, wrong port",
            input: build6(c, l, client6(), vip6(), 40008, 443, L4::Syn),
            ifindex: ci,
            action: XDP_PASS,
            expected: None,
        },
        Case {
            name: "vlan-tagged non-service traffic",
            input: build4(c, l, Some(42), CLIENT4, LB4, 40009, 22, L4::Syn),
            ifindex: ci,
            action: XDP_PASS,
            expected: None,
        },
        Case {
            name: "service with no backend drops",
            input: build4(c, l, None, CLIENT4, VIP4_EMPTY, 40010, 80, L4::Syn),
            ifindex: ci,
            action: XDP_DROP,
            expected: None,
        },
    ];

    // ---- kernel-owned traffic ----
    let arp = {
        let mut f = Vec::new();
        f.extend_from_slice(&[0xff; 6]);
        f.extend_from_slice(&c);
        f.extend_from_slice(&[0x08, 0x06]);
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&c);
        f.extend_from_slice(&CLIENT4);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&VIP4);
        f
    };
    cases.push(Case {
        name: "ARP",
        input: arp,
        ifindex: ci,
        action: XDP_PASS,
        expected: None,
    });
    let icmp4 = {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(c, l)
            .ipv4(CLIENT4, VIP4, 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut f, b"ping")
            .unwrap();
        f
    };
    cases.push(Case {
        name: "ICMP echo to VIP",
        input: icmp4,
        ifindex: ci,
        action: XDP_PASS,
        expected: None,
    });
    let icmp6 = {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(c, l)
            .ipv6(client6(), vip6(), 64)
            .icmpv6_echo_request(1, 1)
            .write(&mut f, b"ping")
            .unwrap();
        f
    };
    cases.push(Case {
        name: "ICMPv6 echo to VIP",
        input: icmp6,
        ifindex: ci,
        action: XDP_PASS,
        expected: None,
    });
    // IPv6 with a hop-by-hop extension header before TCP: passed to the kernel.
    let v6_ext = {
        let mut f = build6(c, l, client6(), vip6(), 40011, 80, L4::Syn);
        // next header 0 (hop-by-hop), then an 8-byte HBH header carrying TCP (6) + PadN.
        let l3 = 14;
        let payload_len = u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]) + 8;
        f[l3 + 4..l3 + 6].copy_from_slice(&payload_len.to_be_bytes());
        f[l3 + 6] = 0;
        let hbh = [6u8, 0, 1, 4, 0, 0, 0, 0];
        f.splice(l3 + 40..l3 + 40, hbh);
        f
    };
    let v6_ext_out = {
        let mut f = build6(lbb, b1, client6(), b6(1), 40011, 8080, L4::Syn);
        let l3 = 14;
        let payload_len = u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]) + 8;
        f[l3 + 4..l3 + 6].copy_from_slice(&payload_len.to_be_bytes());
        f[l3 + 6] = 0;
        f.splice(l3 + 40..l3 + 40, [6u8, 0, 1, 4, 0, 0, 0, 0]);
        f
    };
    cases.push(Case {
        name: "v6 hop-by-hop extension header to VIP: balanced",
        input: v6_ext,
        ifindex: ci,
        action: XDP_REDIRECT,
        expected: Some(v6_ext_out),
    });
    // IPv4 fragments: first (MF) and a later one.
    let frag = |flags_off: u16| {
        let mut f = build4(c, l, None, CLIENT4, VIP4, 40012, 80, L4::Data);
        f[14 + 6..14 + 8].copy_from_slice(&flags_off.to_be_bytes());
        fix_ipv4_checksum(&mut f, 14);
        f
    };
    let frag_out = |flags_off: u16| {
        let mut f = build4(lbb, b1, None, CLIENT4, B4_1, 40012, 8080, L4::Data);
        f[14 + 6..14 + 8].copy_from_slice(&flags_off.to_be_bytes());
        fix_ipv4_checksum(&mut f, 14);
        f
    };
    cases.push(Case {
        name: "v4 first fragment to VIP: balanced",
        input: frag(0x2000),
        ifindex: ci,
        action: XDP_REDIRECT,
        expected: Some(frag_out(0x2000)),
    });
    // A later fragment carries no ports: only the address is rewritten (the checksum it
    // carries in its payload bytes is the first fragment's business).
    let later_out = {
        let mut f = frag(0x0010);
        f[0..6].copy_from_slice(&b1);
        f[6..12].copy_from_slice(&lbb);
        f[14 + 16..14 + 20].copy_from_slice(&B4_1);
        fix_ipv4_checksum(&mut f, 14);
        f
    };
    cases.push(Case {
        name: "v4 later fragment to VIP follows its first",
        input: frag(0x0010),
        ifindex: ci,
        action: XDP_REDIRECT,
        expected: Some(later_out),
    });
    // IPv4 options are forwarded intact.
    let with_opts = |src, dst, sport, dport, smac, dmac| {
        let mut ip = Ipv4Header::new(0, 64, etherparse::IpNumber::TCP, src, dst).unwrap();
        ip.options = Ipv4Options::try_from(&[1u8, 1, 1, 0][..]).unwrap(); // NOP NOP NOP EOL
        let mut f = Vec::new();
        PacketBuilder::ethernet2(smac, dmac)
            .ip(IpHeaders::Ipv4(ip, Default::default()))
            .tcp(sport, dport, 1000, 64240)
            .syn()
            .write(&mut f, &[])
            .unwrap();
        f
    };
    cases.push(Case {
        name: "v4 with IP options to VIP",
        input: with_opts(CLIENT4, VIP4, 40013, 80, c, l),
        ifindex: ci,
        action: XDP_REDIRECT,
        expected: Some(with_opts(CLIENT4, B4_1, 40013, 8080, lbb, b1)),
    });

    // ---- malformed: dropped on purpose ----
    let syn4 = build4(c, l, None, CLIENT4, VIP4, 40014, 80, L4::Syn);
    let udp4 = build4(c, l, None, CLIENT4, VIP4, 40015, 53, L4::Udp);
    let syn6 = build6(c, l, client6(), vip6(), 40016, 80, L4::Syn);
    let udp6 = build6(c, l, client6(), vip6(), 40017, 53, L4::Udp);
    let trunc = |f: &[u8], n: usize| f[..n].to_vec();
    let bad_ip4_len = {
        let mut f = syn4.clone();
        f[16..18].copy_from_slice(&200u16.to_be_bytes());
        fix_ipv4_checksum(&mut f, 14);
        f
    };
    let bad_ihl = {
        let mut f = syn4.clone();
        f[14] = 0x44;
        fix_ipv4_checksum(&mut f, 14);
        f
    };
    let bad_version = {
        let mut f = syn4.clone();
        f[14] = 0x65;
        f
    };
    let bad_ip6_len = {
        let mut f = syn6.clone();
        f[18..20].copy_from_slice(&500u16.to_be_bytes());
        f
    };
    for (name, input) in [
        ("truncated vlan tag", {
            let f = build4(c, l, Some(42), CLIENT4, VIP4, 40018, 80, L4::Syn);
            trunc(&f, 16)
        }),
        ("truncated ipv4 header", trunc(&syn4, 14 + 12)),
        ("truncated tcp header (v4)", trunc(&syn4, 14 + 20 + 10)),
        ("truncated udp header (v4)", trunc(&udp4, 14 + 20 + 4)),
        ("truncated ipv6 header", trunc(&syn6, 14 + 30)),
        ("truncated tcp header (v6)", trunc(&syn6, 14 + 40 + 12)),
        ("truncated udp header (v6)", trunc(&udp6, 14 + 40 + 6)),
        ("ipv4 total length beyond the frame", bad_ip4_len),
        ("ipv4 ihl < 5", bad_ihl),
        ("ipv4 wrong version", bad_version),
        ("ipv6 payload length beyond the frame", bad_ip6_len),
    ] {
        cases.push(Case {
            name: Box::leak(name.to_string().into_boxed_str()),
            input,
            ifindex: ci,
            action: XDP_DROP,
            expected: None,
        });
    }
    assert!(
        cases.len() >= 25,
        "at least 25 fixtures, have {}",
        cases.len()
    );

    let malformed_before = fx.global("malformed");
    let no_backend_before = fx.global("no_backend");
    // Forwarded frames leave with the TTL / hop limit decremented.
    for c in &mut cases {
        if c.action == XDP_REDIRECT || c.action == XDP_TX {
            if let Some(e) = &mut c.expected {
                dec_ttl(e);
            }
        }
    }
    run_cases(&fx, cases);
    assert_eq!(
        fx.global("malformed") - malformed_before,
        11,
        "malformed counter"
    );
    assert_eq!(
        fx.global("no_backend") - no_backend_before,
        1,
        "no_backend counter"
    );
    assert!(fx.global("replies") >= 4, "replies counter");
}

#[test]
fn udp_zero_checksum_stays_zero() {
    if skip() {
        return;
    }
    let fx = Fixture::new();
    let mut input = build4(
        CLIENT_MAC,
        LB_CLIENT_MAC,
        None,
        CLIENT4,
        VIP4,
        41000,
        53,
        L4::Udp,
    );
    input[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
    let mut expected = build4(
        LB_BACKENDS_MAC,
        backend_mac(2),
        None,
        CLIENT4,
        B4_2,
        41000,
        5353,
        L4::Udp,
    );
    expected[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
    dec_ttl(&mut expected);
    let (rc, out) = fx.run(&input, fx.ifindex_client);
    assert_eq!(rc, XDP_REDIRECT, "{:?}", fx.dp.global_counters());
    assert_eq!(out, expected);
    assert_checksums(&out, "udp zero checksum");
}

/// Flows of one service spread over all its backends by weight, and every packet of a flow
/// goes to the same backend.
#[test]
fn maglev_spread_and_flow_affinity() {
    if skip() {
        return;
    }
    let fx = Fixture::new();
    let mut per_backend: BTreeMap<IpAddr, usize> = BTreeMap::new();
    let flows = 400u16;
    for port in 0..flows {
        let sport = 20000 + port;
        let syn = build4(
            CLIENT_MAC,
            LB_CLIENT_MAC,
            None,
            CLIENT4,
            VIP4_MULTI,
            sport,
            80,
            L4::Syn,
        );
        let (rc, out) = fx.run(&syn, fx.ifindex_client);
        assert_eq!(rc, XDP_REDIRECT);
        let dst: [u8; 4] = out[30..34].try_into().unwrap();
        assert_eq!(u16::from_be_bytes([out[36], out[37]]), 8080);
        assert_checksums(&out, "multi syn");
        // Same flow again (a data packet): same backend.
        let data = build4(
            CLIENT_MAC,
            LB_CLIENT_MAC,
            None,
            CLIENT4,
            VIP4_MULTI,
            sport,
            80,
            L4::Data,
        );
        let (rc2, out2) = fx.run(&data, fx.ifindex_client);
        assert_eq!(rc2, XDP_REDIRECT);
        assert_eq!(&out2[30..34], &dst, "flow {sport} changed backend");
        *per_backend.entry(IpAddr::from(dst)).or_default() += 1;
    }
    assert_eq!(
        per_backend.len(),
        3,
        "all three backends get flows: {per_backend:?}"
    );
    // weights 1:1:2 → 25% 25% 50%, ±10 points.
    let share =
        |last: u8| per_backend[&IpAddr::from([198, 18, 2, last])] as f64 / flows as f64 * 100.0;
    for (last, want) in [(11u8, 25.0), (12, 25.0), (13, 50.0)] {
        let got = share(last);
        assert!(
            (got - want).abs() <= 10.0,
            "198.18.2.{last}: {got:.1}% (want {want}%)"
        );
    }
}

fn fix_ipv4_checksum(f: &mut [u8], l3: usize) {
    let ihl = ((f[l3] & 0x0f) as usize) * 4;
    f[l3 + 10] = 0;
    f[l3 + 11] = 0;
    let mut s: u32 = 0;
    for i in (0..ihl.max(20)).step_by(2) {
        s += u16::from_be_bytes([f[l3 + i], f[l3 + i + 1]]) as u32;
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    let c = !(s as u16);
    f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
}

/// Where each flow of the `multi` service goes: source port → backend address.
fn multi_backends(fx: &Fixture, ports: std::ops::Range<u16>, l4: L4) -> BTreeMap<u16, [u8; 4]> {
    ports
        .map(|sport| {
            let f = build4(
                CLIENT_MAC,
                LB_CLIENT_MAC,
                None,
                CLIENT4,
                VIP4_MULTI,
                sport,
                80,
                l4,
            );
            let (rc, out) = fx.run(&f, fx.ifindex_client);
            assert_eq!(rc, XDP_REDIRECT, "flow {sport}");
            assert_checksums(&out, "multi");
            (sport, out[30..34].try_into().unwrap())
        })
        .collect()
}

fn check(fx: &mut Fixture, addr: &str, ok: bool) {
    let uid = fx.state.groups["multi"]
        .members
        .iter()
        .find(|m| m.addr.to_string() == addr)
        .unwrap()
        .uid;
    let outcome = xlb::health::CheckOutcome {
        ok,
        reason: if ok { "connected" } else { "connect refused" }.into(),
        latency: std::time::Duration::ZERO,
        metrics: None,
    };
    fx.state.observe(&("multi".to_string(), uid), &outcome);
}

/// Backend changes as the daemon makes them: a draining backend keeps its established flows
/// and gets no new ones; a failed backend's flows move to the others; a weight change
/// touches no established flow.
#[test]
fn established_flows_across_drain_failure_and_weight_changes() {
    if skip() {
        return;
    }
    let mut fx = Fixture::new();
    for a in ["198.18.2.11", "198.18.2.12", "198.18.2.13"] {
        check(&mut fx, a, true);
    }
    fx.apply();
    let before = multi_backends(&fx, 30000..30200, L4::Syn);

    // Drain 198.18.2.11.
    fx.state
        .drain_backend("multi", "198.18.2.11", "fixture")
        .unwrap();
    fx.apply();
    let during = multi_backends(&fx, 30000..30200, L4::Data);
    assert_eq!(
        before, during,
        "every established flow keeps its backend while one drains"
    );
    let fresh = multi_backends(&fx, 40000..40200, L4::Syn);
    assert!(
        fresh.values().all(|b| *b != B4_1),
        "no new flow goes to the draining backend"
    );

    // 198.18.2.12 fails its check.
    check(&mut fx, "198.18.2.12", false);
    fx.apply();
    let after = multi_backends(&fx, 30000..30200, L4::Data);
    let mut moved = 0;
    for (port, old) in &before {
        let new = after[port];
        if *old == B4_2 {
            assert_ne!(new, B4_2, "flow {port} left the failed backend");
            moved += 1;
        } else {
            assert_eq!(new, *old, "flow {port} on a live backend stays");
        }
    }
    assert!(moved > 0, "some flows were on the failed backend");

    // A weight change: established flows stay, new flows follow the new weights.
    fx.state.set_weight("multi", "198.18.2.13", 1).unwrap();
    fx.apply();
    let again = multi_backends(&fx, 30000..30200, L4::Data);
    assert_eq!(after, again, "a weight change moves no established flow");
}

/// A FIN from the client, or an RST from the backend, marks the flow's conntrack entry as
/// closing (so drains and flow counts see it end); other packets do not.
#[test]
fn fin_and_rst_mark_the_flow_closing() {
    if skip() {
        return;
    }
    let fx = Fixture::new();
    let key = |sport: u16| lb_common::FlowKey {
        src: {
            let mut a = [0; 16];
            a[..4].copy_from_slice(&CLIENT4);
            a
        },
        dst: {
            let mut a = [0; 16];
            a[..4].copy_from_slice(&VIP4);
            a
        },
        sport: sport.to_be_bytes(),
        dport: 80u16.to_be_bytes(),
        proto: lb_common::PROTO_TCP,
        family: lb_common::AF_INET,
        _pad: [0; 2],
    };
    // The flow's entry: in CONNTRACK, or (a handshake) in UNCONFIRMED.
    let flags = |sport| {
        let m = fx.dp.maps();
        m.conntrack
            .get(&key(sport), 0)
            .or_else(|_| m.unconfirmed.get(&key(sport), 0))
            .unwrap()
            .flags
    };
    let tcp = |src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, fin: bool, rst: bool| {
        let mut f = Vec::new();
        let (smac, dmac) = if src == CLIENT4 {
            (CLIENT_MAC, LB_CLIENT_MAC)
        } else {
            (backend_mac(1), LB_BACKENDS_MAC)
        };
        let mut b = PacketBuilder::ethernet2(smac, dmac)
            .ipv4(src, dst, 64)
            .tcp(sport, dport, 7, 1000)
            .ack(1);
        if fin {
            b = b.fin();
        }
        if rst {
            b = b.rst();
        }
        b.write(&mut f, &[]).unwrap();
        f
    };
    // Client FIN.
    fx.run(
        &build4(
            CLIENT_MAC,
            LB_CLIENT_MAC,
            None,
            CLIENT4,
            VIP4,
            45000,
            80,
            L4::Syn,
        ),
        fx.ifindex_client,
    );
    assert_eq!(flags(45000) & lb_common::CT_F_CLOSING, 0, "an open flow");
    fx.run(
        &tcp(CLIENT4, VIP4, 45000, 80, false, false),
        fx.ifindex_client,
    );
    assert_eq!(
        flags(45000) & lb_common::CT_F_CLOSING,
        0,
        "a plain ACK changes nothing"
    );
    let (rc, _) = fx.run(
        &tcp(CLIENT4, VIP4, 45000, 80, true, false),
        fx.ifindex_client,
    );
    assert_eq!(rc, XDP_REDIRECT);
    assert_ne!(flags(45000) & lb_common::CT_F_CLOSING, 0, "client FIN");
    // Backend RST on another flow.
    fx.run(
        &build4(
            CLIENT_MAC,
            LB_CLIENT_MAC,
            None,
            CLIENT4,
            VIP4,
            45001,
            80,
            L4::Syn,
        ),
        fx.ifindex_client,
    );
    let (rc, out) = fx.run(
        &tcp(B4_1, CLIENT4, 8080, 45001, false, true),
        fx.ifindex_backends,
    );
    assert_eq!(rc, XDP_REDIRECT);
    assert_eq!(&out[26..30], &VIP4, "the RST is rewritten back to the VIP");
    assert_ne!(flags(45001) & lb_common::CT_F_CLOSING, 0, "backend RST");
}

/// Replies find their flow in CONNTRACK through the backend address: a flow to a backend
/// address one service uses gets no REVERSE entry; one to an address several services share
/// (198.18.2.11:8080 is in the `web` and `multi` groups) does.
#[test]
fn reverse_entries_only_for_shared_backend_addresses() {
    if skip() {
        return;
    }
    let fx = Fixture::new();
    let reverse_from = |addr: [u8; 4], port: u16| {
        fx.dp
            .maps()
            .reverse
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.src[..4] == addr && k.sport == port.to_be_bytes())
            .count()
    };
    // dns: 198.18.2.12:5353 serves only `dns`.
    let (rc, _) = fx.run(
        &build4(
            CLIENT_MAC,
            LB_CLIENT_MAC,
            None,
            CLIENT4,
            VIP4,
            46000,
            53,
            L4::Udp,
        ),
        fx.ifindex_client,
    );
    assert_eq!(rc, XDP_REDIRECT);
    assert_eq!(
        reverse_from(B4_2, 5353),
        0,
        "no REVERSE entry for an unshared backend"
    );
    let (rc, out) = fx.run(
        &build4(
            backend_mac(2),
            LB_BACKENDS_MAC,
            None,
            B4_2,
            CLIENT4,
            5353,
            46000,
            L4::Udp,
        ),
        fx.ifindex_backends,
    );
    assert_eq!(rc, XDP_REDIRECT, "the reply is found through CONNTRACK");
    let mut want = build4(
        LB_CLIENT_MAC,
        CLIENT_MAC,
        None,
        VIP4,
        CLIENT4,
        53,
        46000,
        L4::Udp,
    );
    dec_ttl(&mut want);
    assert_eq!(out, want);
    // web: 198.18.2.11:8080 is shared with `multi`.
    let (rc, _) = fx.run(
        &build4(
            CLIENT_MAC,
            LB_CLIENT_MAC,
            None,
            CLIENT4,
            VIP4,
            46001,
            80,
            L4::Syn,
        ),
        fx.ifindex_client,
    );
    assert_eq!(rc, XDP_REDIRECT);
    assert_eq!(
        reverse_from(B4_1, 8080),
        1,
        "a REVERSE entry for a shared backend"
    );
}

/// Decrement the TTL / hop limit of an Ethernet frame (no VLAN tag) as forwarding does, fixing
/// the IPv4 header checksum.
fn dec_ttl(f: &mut [u8]) {
    let l3 = 14;
    if f[12..14] == [0x08, 0x00] {
        f[l3 + 8] -= 1;
        fix_ipv4_checksum(f, l3);
    } else {
        f[l3 + 7] -= 1;
    }
}

/// `BPF_PROG_TEST_RUN` through the raw syscall, for a thread that runs frames while another
/// one changes the maps (aya's `test_run` borrows the whole data plane).
fn test_run_raw(prog_fd: i32, frame: &[u8], ifindex: u32, out: &mut [u8]) -> u32 {
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(prog_fd as u32).to_ne_bytes());
    attr[8..12].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    attr[12..16].copy_from_slice(&(out.len() as u32).to_ne_bytes());
    attr[16..24].copy_from_slice(&(frame.as_ptr() as u64).to_ne_bytes());
    attr[24..32].copy_from_slice(&(out.as_mut_ptr() as u64).to_ne_bytes());
    attr[32..36].copy_from_slice(&1u32.to_ne_bytes());
    attr[40..44].copy_from_slice(&(ctx.len() as u32).to_ne_bytes());
    attr[48..56].copy_from_slice(&(ctx.as_ptr() as u64).to_ne_bytes());
    // SAFETY: a zero-padded bpf_attr whose pointers point to live buffers of the sizes given.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, attr.as_mut_ptr(), 128) };
    assert_eq!(
        rc,
        0,
        "BPF_PROG_TEST_RUN: {}",
        std::io::Error::last_os_error()
    );
    u32::from_ne_bytes(attr[4..8].try_into().unwrap())
}

/// New flows keep being balanced while backends fail, recover and drain: the reconciler
/// withdraws a backend's flags only after the tables that name it are swapped out, so no SYN
/// meets a table entry whose backend is not (or no longer) usable (`no_backend` stays 0).
#[test]
fn no_new_flow_is_dropped_while_tables_change() {
    if skip() {
        return;
    }
    use std::os::fd::{AsFd, AsRawFd};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let mut fx = Fixture::new();
    for a in ["198.18.2.11", "198.18.2.12", "198.18.2.13"] {
        check(&mut fx, a, true);
    }
    fx.apply();
    let prog_fd = fx
        .dp
        .program(lb_common::PROG_XDP_LB)
        .unwrap()
        .fd()
        .unwrap()
        .as_fd()
        .try_clone_to_owned()
        .unwrap();
    let ifindex = fx.ifindex_client;
    let stop = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    let dropped_before = fx.global("no_backend");
    let Fixture {
        ns,
        dp,
        state,
        reconciler,
        ..
    } = &mut fx;
    std::thread::scope(|s| {
        let ns = &*ns;
        let (stop, sent, prog_fd) = (&stop, &sent, &prog_fd);
        s.spawn(move || {
            ns.enter(|| {
                let mut out = vec![0u8; 512];
                let mut n: u64 = 0;
                // Bounded: at most 2,000,000 SYNs, and the main thread stops it sooner.
                while !stop.load(Ordering::Relaxed) && n < 2_000_000 {
                    let src = [198, 18, 1, 2 + (n / 60000 % 200) as u8];
                    let port = 1024 + (n % 60000) as u16;
                    let f = build4(
                        CLIENT_MAC,
                        LB_CLIENT_MAC,
                        None,
                        src,
                        VIP4_MULTI,
                        port,
                        80,
                        L4::Syn,
                    );
                    test_run_raw(prog_fd.as_raw_fd(), &f, ifindex, &mut out);
                    n += 1;
                }
                sent.store(n, Ordering::Relaxed);
            })
        });
        for round in 0..40 {
            let a = ["198.18.2.11", "198.18.2.12"][round % 2];
            // Fail, recover, then drain and come back through a weight change.
            for ok in [false, true] {
                let uid = state.groups["multi"]
                    .members
                    .iter()
                    .find(|m| m.addr.to_string() == a)
                    .unwrap()
                    .uid;
                let outcome = xlb::health::CheckOutcome {
                    ok,
                    reason: if ok { "connected" } else { "connect refused" }.into(),
                    latency: std::time::Duration::ZERO,
                    metrics: None,
                };
                state.observe(&("multi".to_string(), uid), &outcome);
                let desired = state.desired().unwrap();
                reconciler.apply(dp, &desired).unwrap();
            }
            state
                .set_weight("multi", a, 1 + (round % 3) as u32)
                .unwrap();
            let desired = state.desired().unwrap();
            reconciler.apply(dp, &desired).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
    let sent = sent.load(Ordering::Relaxed);
    assert!(sent > 1000, "the SYN thread ran ({sent} SYNs)");
    assert_eq!(
        fx.global("no_backend") - dropped_before,
        0,
        "no SYN out of {sent} met a backend the live table names but the entry forbids"
    );
}

/// A TCP frame with the given flags (SYN, SYN-ACK, RST, ...), built with etherparse.
#[allow(clippy::too_many_arguments)]
fn tcp4_flags(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    syn: bool,
    ack: bool,
    rst: bool,
) -> Vec<u8> {
    let mut h = etherparse::TcpHeader::new(sport, dport, 1000, 64240);
    h.syn = syn;
    h.ack = ack;
    h.rst = rst;
    if ack {
        h.acknowledgment_number = 1001;
    }
    h.checksum = h.calc_checksum_ipv4_raw(src, dst, &[]).unwrap();
    let mut ip = Ipv4Header::new(20, 64, etherparse::IpNumber::TCP, src, dst).unwrap();
    ip.header_checksum = ip.calc_header_checksum();
    let mut f = Vec::new();
    etherparse::Ethernet2Header {
        source: smac,
        destination: dmac,
        ether_type: etherparse::EtherType::IPV4,
    }
    .write(&mut f)
    .unwrap();
    ip.write(&mut f).unwrap();
    h.write(&mut f).unwrap();
    f
}

/// Passive health in the data path: a SYN counts, its SYN-ACK answers it, a RST before the
/// answer is a refusal, so is an ICMP unreachable quoting a SYN, UDP flows count and their
/// first reply answers them; with `redispatch`, a refusal of a backend marked down is not
/// forwarded (while its service has backends).
#[test]
fn passive_health_counters() {
    if skip() {
        return;
    }
    let mut fx = Fixture::new();
    let desired = fx.state.desired().unwrap();
    let id_of = |addr: &str, port: u16| {
        desired
            .backends
            .values()
            .find(|b| b.key.addr.to_string() == addr && b.key.port == port)
            .map(|b| b.id)
            .unwrap()
    };
    let web = id_of("198.18.2.11", 8080);
    let dns = id_of("198.18.2.12", 5353);
    let (ci, bi) = (fx.ifindex_client, fx.ifindex_backends);
    let (c, l, lbb, b1) = (CLIENT_MAC, LB_CLIENT_MAC, LB_BACKENDS_MAC, backend_mac(1));
    let syn = |port| tcp4_flags(c, l, CLIENT4, VIP4, port, 80, true, false, false);
    let from_b1 =
        |port, syn, ack, rst| tcp4_flags(b1, lbb, B4_1, CLIENT4, 8080, port, syn, ack, rst);

    // SYN → SYN-ACK: answered; a later RST is no refusal.
    assert_eq!(fx.run(&syn(47000), ci).0, XDP_REDIRECT);
    assert_eq!(
        fx.run(&from_b1(47000, true, true, false), bi).0,
        XDP_REDIRECT
    );
    assert_eq!(
        fx.run(&from_b1(47000, false, true, true), bi).0,
        XDP_REDIRECT
    );
    let p = fx.dp.passive_counters(web);
    assert_eq!((p.syns, p.synacks, p.refused), (1, 1, 0), "{p:?}");

    // SYN → RST: refused, and forwarded (no redispatch).
    assert_eq!(fx.run(&syn(47001), ci).0, XDP_REDIRECT);
    assert_eq!(
        fx.run(&from_b1(47001, false, true, true), bi).0,
        XDP_REDIRECT
    );
    let p = fx.dp.passive_counters(web);
    assert_eq!((p.syns, p.refused, p.redispatched), (2, 1, 0), "{p:?}");

    // SYN → ICMP port unreachable from the backend quoting it: refused, sent to the client.
    assert_eq!(fx.run(&syn(47002), ci).0, XDP_REDIRECT);
    let quoted = common::net::ipx(
        common::net::ip(CLIENT4),
        common::net::ip(B4_1),
        63,
        6,
        &common::net::tcp(
            common::net::ip(CLIENT4),
            common::net::ip(B4_1),
            47002,
            8080,
            true,
            &[],
        ),
    );
    let icmp = common::net::icmp_err(
        common::net::ip(B4_1),
        common::net::ip(CLIENT4),
        64,
        3,
        3,
        [0; 4],
        &quoted,
    );
    let frame = common::net::eth(b1, lbb, &[], &icmp);
    assert_eq!(fx.run(&frame, bi).0, XDP_REDIRECT);
    let p = fx.dp.passive_counters(web);
    assert_eq!((p.syns, p.unreachable), (3, 1), "{p:?}");

    // UDP: a new flow counts; its first reply answers it, the second changes nothing.
    let q = build4(c, l, None, CLIENT4, VIP4, 47003, 53, L4::Udp);
    let r = build4(
        backend_mac(2),
        lbb,
        None,
        B4_2,
        CLIENT4,
        5353,
        47003,
        L4::Udp,
    );
    assert_eq!(fx.run(&q, ci).0, XDP_REDIRECT);
    assert_eq!(fx.run(&r, bi).0, XDP_REDIRECT);
    assert_eq!(fx.run(&r, bi).0, XDP_REDIRECT);
    let p = fx.dp.passive_counters(dns);
    assert_eq!((p.udp_flows, p.udp_answered), (1, 1), "{p:?}");

    // Redispatch: the backend marked down (no new flows) with `redispatch`: its refusal of a
    // handshake is withheld; once redispatch is off, refusals pass again.
    assert_eq!(fx.run(&syn(47004), ci).0, XDP_REDIRECT);
    let mut info = fx.dp.maps().backends.get(&web, 0).unwrap();
    info.flags = (info.flags & !lb_common::BE_F_ACTIVE) | lb_common::BE_F_REDISPATCH;
    fx.dp.forge_maps().backends.set(web, info, 0).unwrap();
    assert_eq!(fx.run(&from_b1(47004, false, true, true), bi).0, XDP_DROP);
    let p = fx.dp.passive_counters(web);
    assert_eq!((p.refused, p.redispatched), (2, 1), "{p:?}");
    // Still in service with `redispatch`: a flow's first refusal is withheld, the second
    // (a port really closed) is forwarded.
    info.flags |= lb_common::BE_F_ACTIVE;
    fx.dp.forge_maps().backends.set(web, info, 0).unwrap();
    assert_eq!(fx.run(&syn(47006), ci).0, XDP_REDIRECT);
    assert_eq!(fx.run(&from_b1(47006, false, true, true), bi).0, XDP_DROP);
    assert_eq!(
        fx.run(&from_b1(47006, false, true, true), bi).0,
        XDP_REDIRECT
    );
    let p = fx.dp.passive_counters(web);
    assert_eq!((p.refused, p.redispatched), (4, 2), "{p:?}");
    info.flags &= !(lb_common::BE_F_REDISPATCH | lb_common::BE_F_ACTIVE);
    fx.dp.forge_maps().backends.set(web, info, 0).unwrap();
    assert_eq!(
        fx.run(&syn(47005), ci).0,
        XDP_DROP,
        "no active backend: no new flow"
    );
}

/// A refused handshake whose backend then fails, with `redispatch`: the refusal is withheld;
/// the client's SYN retransmission meets its entry (naming the failed backend), goes to a
/// live backend by the new table and is pinned there, and that backend's SYN-ACK reaches the
/// client.
#[test]
fn syn_retransmission_after_a_refusal_moves_the_flow() {
    if skip() {
        return;
    }
    let mut fx = Fixture::new();
    for a in ["198.18.2.11", "198.18.2.12", "198.18.2.13"] {
        check(&mut fx, a, true);
    }
    fx.apply();
    let (ci, bi) = (fx.ifindex_client, fx.ifindex_backends);
    let (c, l, lbb) = (CLIENT_MAC, LB_CLIENT_MAC, LB_BACKENDS_MAC);
    let syn = |port| tcp4_flags(c, l, CLIENT4, VIP4_MULTI, port, 80, true, false, false);
    // A client port the table sends to 198.18.2.12 (an unshared address).
    let port = (31000..32000)
        .find(|p| {
            let (rc, out) = fx.run(&syn(*p), ci);
            rc == XDP_REDIRECT && out[30..34] == B4_2
        })
        .expect("a port to 198.18.2.12");
    let key = flow_key(
        IpAddr::from(CLIENT4),
        IpAddr::from(VIP4_MULTI),
        port,
        80,
        lb_common::PROTO_TCP,
    );
    assert!(fx.has_flow(&key), "the SYN made an (unconfirmed) entry");
    // With `redispatch` (set by hand here), its RST is withheld.
    let id = fx
        .state
        .desired()
        .unwrap()
        .backends
        .values()
        .find(|b| b.key.addr.to_string() == "198.18.2.12" && b.key.port == 8080)
        .map(|b| b.id)
        .unwrap();
    let mut info = fx.dp.maps().backends.get(&id, 0).unwrap();
    info.flags |= lb_common::BE_F_REDISPATCH;
    fx.dp.forge_maps().backends.set(id, info, 0).unwrap();
    let rst = tcp4_flags(
        backend_mac(2),
        lbb,
        B4_2,
        CLIENT4,
        8080,
        port,
        false,
        true,
        true,
    );
    assert_eq!(fx.run(&rst, bi).0, XDP_DROP, "withheld");
    let pc = fx.dp.passive_counters(id);
    assert_eq!((pc.refused, pc.redispatched), (1, 1), "{pc:?}");
    // 198.18.2.12 fails; the retransmitted SYN goes elsewhere.
    check(&mut fx, "198.18.2.12", false);
    fx.apply();
    let (rc, out) = fx.run(&syn(port), ci);
    assert_eq!(rc, XDP_REDIRECT);
    let to: [u8; 4] = out[30..34].try_into().unwrap();
    assert_ne!(to, B4_2, "not to the failed backend");
    let i = if to == B4_1 { 1 } else { 3 };
    let synack = tcp4_flags(
        backend_mac(i),
        lbb,
        to,
        CLIENT4,
        8080,
        port,
        true,
        true,
        false,
    );
    let (rc, out) = fx.run(&synack, bi);
    assert_eq!(
        rc, XDP_REDIRECT,
        "the live backend's SYN-ACK reaches the client"
    );
    assert_eq!(out[26..30], VIP4_MULTI, "from the VIP");
}
