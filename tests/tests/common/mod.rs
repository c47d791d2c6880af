//! The harness shared by the packet fixture tests: the fixture namespace (interfaces, routes,
//! static neighbours), the program loaded and filled by the daemon's own code, packet
//! builders and checksum checks. Included with `mod common;` by each fixture test file.
#![allow(dead_code, unused_imports)]
use std::{collections::BTreeMap, net::IpAddr};

use aya::programs::{TestRun, TestRunOptions};
use etherparse::{
    IpHeaders, Ipv4Header, Ipv4Options, NetHeaders, PacketBuilder, PacketHeaders, TransportHeader,
};
use xlb::{
    config,
    dataplane::{Dataplane, LoadOptions},
    reconcile::Reconciler,
    state::State,
};
use xlb_lab::netns::Netns;

pub mod net;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];
pub const LB_CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
pub const LB_BACKENDS_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x01];
pub const CLIENT4: [u8; 4] = [198, 18, 1, 2];
pub const VIP4: [u8; 4] = [198, 18, 100, 1];
pub const VIP4_MULTI: [u8; 4] = [198, 18, 100, 2];
pub const VIP4_EMPTY: [u8; 4] = [198, 18, 100, 3];
pub const LB4: [u8; 4] = [198, 18, 1, 1];
pub const VIP4_HAIRPIN: [u8; 4] = [198, 18, 100, 4];
pub const HAIRPIN4: [u8; 4] = [198, 18, 1, 5];
pub const HAIRPIN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x05];
pub const B4_1: [u8; 4] = [198, 18, 2, 11];
pub const B4_2: [u8; 4] = [198, 18, 2, 12];

pub fn v6(last: u16, net: u16) -> [u8; 16] {
    let a: std::net::Ipv6Addr = format!("2001:db8:{net:x}::{last:x}").parse().unwrap();
    a.octets()
}
pub fn client6() -> [u8; 16] {
    v6(2, 1)
}
pub fn vip6() -> [u8; 16] {
    v6(1, 0x100)
}
pub fn b6(i: u16) -> [u8; 16] {
    v6(0x10 + i, 2)
}
pub fn backend_mac(i: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x02, 0x10 + i]
}

pub const CONFIG: &str = r#"
[daemon]
interfaces = ["veth-client", "veth-backends"]
maglev_table_size = 1021
conntrack_size = 65536
hash_seed = 7

[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
protocol = "tcp"
target_group = "web"

[[service]]
name = "dns"
vip = "198.18.100.1"
port = 53
protocol = "udp"
target_group = "dns"

[[service]]
name = "web6"
vip = "2001:db8:100::1"
port = 80
protocol = "tcp"
target_group = "web6"

[[service]]
name = "dns6"
vip = "2001:db8:100::1"
port = 53
protocol = "udp"
target_group = "dns6"

[[service]]
name = "multi"
vip = "198.18.100.2"
port = 80
protocol = "tcp"
target_group = "multi"

[[service]]
name = "empty"
vip = "198.18.100.3"
port = 80
protocol = "tcp"
target_group = "empty"

[[target_group]]
name = "web"
port = 8080
backends = ["198.18.2.11"]

[[target_group]]
name = "dns"
backends = ["198.18.2.12:5353"]

[[target_group]]
name = "web6"
port = 8080
backends = ["2001:db8:2::11"]

[[target_group]]
name = "dns6"
backends = ["[2001:db8:2::12]:5353"]

[[target_group]]
name = "multi"
port = 8080
backends = ["198.18.2.11", "198.18.2.12", { address = "198.18.2.13", weight = 2 }]

[target_group.health_check]
protocol = "tcp"
healthy_threshold = 1
unhealthy_threshold = 1

[[target_group]]
name = "empty"
backends = []

[[service]]
name = "hairpin"
vip = "198.18.100.4"
port = 80
protocol = "tcp"
target_group = "hairpin"

[[target_group]]
name = "hairpin"
backends = ["198.18.1.5:8080"]
"#;

pub struct Fixture {
    pub ns: Netns,
    pub dp: Dataplane,
    pub state: State,
    pub reconciler: Reconciler,
    pub ifindex_client: u32,
    pub ifindex_backends: u32,
}

pub fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Fixture {
    pub fn new() -> Self {
        Self::with_config(CONFIG)
    }

    /// The fixture namespace with the program filled from `config` (its interfaces:
    /// `veth-client` and `veth-backends`).
    pub fn with_config(config: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ns = Netns::new(format!("xlbfx-{}-{n}", std::process::id())).expect("netns");
        let sh = |cmd: &str| {
            let args: Vec<&str> = cmd.split_whitespace().collect();
            ns.exec(&args).unwrap_or_else(|e| panic!("{cmd}: {e:#}"));
        };
        sh("ip link add veth-client address 02:00:00:00:01:01 type veth peer name peer-client");
        sh("ip link add veth-backends address 02:00:00:00:02:01 type veth peer name peer-backends");
        for l in [
            "lo",
            "veth-client",
            "peer-client",
            "veth-backends",
            "peer-backends",
        ] {
            sh(&format!("ip link set {l} up"));
        }
        sh("ip addr add 198.18.1.1/24 dev veth-client");
        sh("ip addr add 198.18.2.1/24 dev veth-backends");
        sh("ip -6 addr add 2001:db8:1::1/64 dev veth-client nodad");
        sh("ip -6 addr add 2001:db8:2::1/64 dev veth-backends nodad");
        sh("sysctl -qw net.ipv4.ip_forward=1");
        sh("sysctl -qw net.ipv6.conf.all.forwarding=1");
        sh(&format!(
            "ip neigh replace 198.18.1.2 lladdr {} dev veth-client nud permanent",
            mac(CLIENT_MAC)
        ));
        sh(&format!(
            "ip -6 neigh replace 2001:db8:1::2 lladdr {} dev veth-client nud permanent",
            mac(CLIENT_MAC)
        ));
        sh(&format!(
            "ip neigh replace 198.18.1.5 lladdr {} dev veth-client nud permanent",
            mac(HAIRPIN_MAC)
        ));
        for i in 1..=3u8 {
            sh(&format!(
                "ip neigh replace 198.18.2.{} lladdr {} dev veth-backends nud permanent",
                10 + i,
                mac(backend_mac(i))
            ));
            sh(&format!(
                "ip -6 neigh replace 2001:db8:2::{} lladdr {} dev veth-backends nud permanent",
                10 + i,
                mac(backend_mac(i))
            ));
        }
        let (ifindex_client, ifindex_backends) = ns.enter(|| {
            (
                nix::net::if_::if_nametoindex("veth-client").unwrap(),
                nix::net::if_::if_nametoindex("veth-backends").unwrap(),
            )
        });

        let cfg = config::parse(config, "fixtures.toml").expect("fixture config");
        let mut dp = Dataplane::load(
            LoadOptions {
                ring_size: cfg.daemon.maglev_table_size,
                conntrack_size: cfg.daemon.conntrack_size,
                max_services: cfg.daemon.max_services,
                hash_seed: cfg.daemon.hash_seed.unwrap(),
            },
            xlb::dataplane::Pinning::Ephemeral,
        )
        .expect("load XDP object");
        let mut state = State::new(cfg);
        let desired = state.desired().unwrap();
        let mut reconciler = Reconciler::new();
        reconciler.apply(&mut dp, &desired).unwrap();
        ns.enter(|| dp.set_tx_ports(&[ifindex_client, ifindex_backends]))
            .expect("TX_PORTS");
        Fixture {
            ns,
            dp,
            state,
            reconciler,
            ifindex_client,
            ifindex_backends,
        }
    }

    /// Write the state's current desired state to the maps, as the daemon does.
    pub fn apply(&mut self) {
        let desired = self.state.desired().unwrap();
        self.reconciler.apply(&mut self.dp, &desired).unwrap();
    }

    /// Run one frame through `xlb` as if received on `ifindex`.
    pub fn run(&self, frame: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
        let prog = self.dp.program(lb_common::PROG_XDP_LB).unwrap();
        // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 256];
        let (rc, n) = self.ns.enter(|| {
            let r = prog
                .test_run(TestRunOptions {
                    data_in: Some(frame),
                    data_out: Some(&mut out),
                    ctx_in: Some(&ctx),
                    repeat: 1,
                    ..Default::default()
                })
                .expect("BPF_PROG_TEST_RUN");
            (r.return_value, r.data_size_out as usize)
        });
        out.truncate(n);
        (rc, out)
    }

    /// Run a command (split on whitespace) in the fixture namespace.
    pub fn sh(&self, cmd: &str) {
        let args: Vec<&str> = cmd.split_whitespace().collect();
        self.ns
            .exec(&args)
            .unwrap_or_else(|e| panic!("{cmd}: {e:#}"));
    }

    /// Set an interface's MTU (routes through it follow: the FIB's MTU check uses it).
    pub fn set_mtu(&self, dev: &str, mtu: u32) {
        self.sh(&format!("ip link set {dev} mtu {mtu}"));
    }

    /// `VLANS[ifindex] = {parent, vlan_id}`: frames the FIB sends out of `ifindex` leave
    /// `parent` tagged `vlan_id`.
    pub fn set_vlan(&mut self, ifindex: u32, parent: u32, vlan_id: u16) {
        self.dp
            .forge_maps()
            .vlans
            .insert(
                ifindex,
                lb_common::VlanInfo {
                    parent_ifindex: parent,
                    vlan_id,
                    flags: 0,
                },
                0,
            )
            .expect("VLANS");
    }

    /// Replace the interfaces the program may redirect to.
    pub fn set_tx_ports(&mut self, ifindexes: &[u32]) {
        let Fixture { ns, dp, .. } = self;
        ns.enter(|| dp.set_tx_ports(ifindexes)).expect("TX_PORTS");
    }

    /// Whether CONNTRACK holds the client flow `key`.
    /// Whether a client flow has an entry: in CONNTRACK, or (UDP without a reply yet) in
    /// UNCONFIRMED.
    pub fn has_flow(&self, key: &lb_common::FlowKey) -> bool {
        self.dp.maps().conntrack.get(key, 0).is_ok()
            || self.dp.maps().unconfirmed.get(key, 0).is_ok()
    }

    /// Whether a client flow is in CONNTRACK (confirmed: TCP past its SYN, UDP answered).
    pub fn has_confirmed_flow(&self, key: &lb_common::FlowKey) -> bool {
        self.dp.maps().conntrack.get(key, 0).is_ok()
    }

    /// Delete a client flow from CONNTRACK and UNCONFIRMED (as an eviction or a sweep would).
    pub fn delete_flow(&mut self, key: &lb_common::FlowKey) {
        let maps = self.dp.forge_maps();
        let a = maps.conntrack.remove(key).is_ok();
        let b = maps.unconfirmed.remove(key).is_ok();
        assert!(a || b, "no entry to delete");
    }

    pub fn global(&self, name: &str) -> u64 {
        self.dp
            .global_counters()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .unwrap()
    }
}

/// The CONNTRACK key of the client flow `src:sport` → `dst:dport` (VIP and service port).
pub fn flow_key(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, proto: u8) -> lb_common::FlowKey {
    let (s, d, family) = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
            a[..4].copy_from_slice(&s.octets());
            b[..4].copy_from_slice(&d.octets());
            (a, b, lb_common::AF_INET)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => (s.octets(), d.octets(), lb_common::AF_INET6),
        _ => panic!("mixed families"),
    };
    lb_common::FlowKey {
        src: s,
        dst: d,
        sport: sport.to_be_bytes(),
        dport: dport.to_be_bytes(),
        proto,
        family,
        _pad: [0; 2],
    }
}

// ---- packet building ----

#[derive(Clone, Copy)]
pub enum L4 {
    Syn,
    Data,
    Udp,
}

#[allow(clippy::too_many_arguments)]
pub fn build4(
    smac: [u8; 6],
    dmac: [u8; 6],
    vlan: Option<u16>,
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    l4: L4,
) -> Vec<u8> {
    let payload = b"hello xlb";
    let eth = PacketBuilder::ethernet2(smac, dmac);
    let mut out = Vec::new();
    let mut ip = |b: etherparse::PacketBuilderStep<etherparse::IpHeaders>| match l4 {
        L4::Syn => b.tcp(sport, dport, 1000, 64240).syn().write(&mut out, &[]),
        L4::Data => b
            .tcp(sport, dport, 1001, 64240)
            .ack(5000)
            .psh()
            .write(&mut out, payload),
        L4::Udp => b.udp(sport, dport).write(&mut out, payload),
    };
    match vlan {
        Some(id) => ip(eth
            .single_vlan(etherparse::VlanId::try_new(id).unwrap())
            .ipv4(src, dst, 64)),
        None => ip(eth.ipv4(src, dst, 64)),
    }
    .unwrap();
    out
}

pub fn build6(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
    l4: L4,
) -> Vec<u8> {
    let payload = b"hello xlb6";
    let b = PacketBuilder::ethernet2(smac, dmac).ipv6(src, dst, 64);
    let mut out = Vec::new();
    match l4 {
        L4::Syn => b.tcp(sport, dport, 1000, 64240).syn().write(&mut out, &[]),
        L4::Data => b
            .tcp(sport, dport, 1001, 64240)
            .ack(5000)
            .write(&mut out, payload),
        L4::Udp => b.udp(sport, dport).write(&mut out, payload),
    }
    .unwrap();
    out
}

/// Recompute every checksum of `frame` with etherparse and compare with what it carries.
pub fn assert_checksums(frame: &[u8], what: &str) {
    let h = PacketHeaders::from_ethernet_slice(frame)
        .unwrap_or_else(|e| panic!("{what}: output does not parse: {e}"));
    let payload = h.payload.slice();
    match (&h.net, &h.transport) {
        (Some(NetHeaders::Ipv4(ip, _)), t) => {
            assert_eq!(
                ip.header_checksum,
                ip.calc_header_checksum(),
                "{what}: IPv4 header checksum"
            );
            match t {
                Some(TransportHeader::Tcp(tcp)) => assert_eq!(
                    tcp.checksum,
                    tcp.calc_checksum_ipv4(ip, payload).unwrap(),
                    "{what}: TCP checksum"
                ),
                Some(TransportHeader::Udp(udp)) if udp.checksum != 0 => assert_eq!(
                    udp.checksum,
                    udp.calc_checksum_ipv4(ip, payload).unwrap(),
                    "{what}: UDP checksum"
                ),
                _ => {}
            }
        }
        (Some(NetHeaders::Ipv6(ip, _)), t) => match t {
            Some(TransportHeader::Tcp(tcp)) => assert_eq!(
                tcp.checksum,
                tcp.calc_checksum_ipv6(ip, payload).unwrap(),
                "{what}: TCP checksum"
            ),
            Some(TransportHeader::Udp(udp)) => assert_eq!(
                udp.checksum,
                udp.calc_checksum_ipv6(ip, payload).unwrap(),
                "{what}: UDP checksum"
            ),
            _ => {}
        },
        _ => panic!("{what}: output has no IP header"),
    }
}

pub struct Case {
    pub name: &'static str,
    pub input: Vec<u8>,
    pub ifindex: u32,
    pub action: u32,
    /// None: the output must equal the input (untouched).
    pub expected: Option<Vec<u8>>,
}

pub fn run_cases(fx: &Fixture, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for c in &cases {
        let (rc, out) = fx.run(&c.input, c.ifindex);
        if rc != c.action {
            failures.push(format!("{}: action {rc}, expected {}", c.name, c.action));
            continue;
        }
        if c.action == XDP_DROP {
            continue;
        }
        let expected = c.expected.as_ref().unwrap_or(&c.input);
        if &out != expected {
            failures.push(format!(
                "{}: output differs\n  got      {:02x?}\n  expected {:02x?}",
                c.name, out, expected
            ));
            continue;
        }
        if c.expected.is_some() {
            assert_checksums(&out, c.name);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

pub fn skip() -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: BPF_PROG_TEST_RUN fixtures need root");
        return true;
    }
    false
}

/// `frame` with its TTL / hop limit one lower (IPv4 header checksum fixed): how a forwarded
/// packet leaves.
pub fn dec_ttl(mut frame: Vec<u8>) -> Vec<u8> {
    let (l3, _) = net::l3_of(&frame).expect("frame");
    if frame[l3] >> 4 == 4 {
        frame[l3 + 8] -= 1;
        net::fix_ip4_checksum(&mut frame[l3..]);
    } else {
        frame[l3 + 7] -= 1;
    }
    frame
}
