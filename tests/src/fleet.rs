//! The fleet lab: a client, a router running BIRD with ECMP multipath, N xlb nodes each running
//! BIRD and xlb (one-armed: one link to the router), and backends behind the router.
//!
//! ```text
//!  client ns          router ns (BIRD, ECMP)                  node ns i (BIRD + xlb on eth0)
//!  eth0 ───────── r-client 198.18.1.1                          eth0 198.18.3.(4i-2)/30
//!  198.18.1.2         2001:db8:1::1                                 2001:db8:3:i::2/64
//!  2001:db8:1::2      r-n{i} 198.18.3.(4i-3)/30 ─────────────────┘
//!                            2001:db8:3:i::1/64
//!                     br0 198.18.2.1/24 ── r-b{i} ──── backend ns i: eth0 198.18.2.(10+i)
//!                         2001:db8:2::1/64                                2001:db8:2::1i
//! ```
//!
//! Forward path: each node's BIRD exports the VIP routes xlb keeps in kernel table 100
//! (`[daemon.announce]`: the IPv4 VIP's /32 and the IPv6 VIP's /128) over BGP to the router,
//! one session per family (IPv4 and IPv6 addresses of the link), and the router installs one
//! route per VIP with a next hop per node that announces it (`merge paths`), hashed on the
//! 5-tuple (`fib_multipath_hash_policy = 1`, IPv4 and IPv6). Return path (NAT: replies must
//! cross a node, any node): packets arriving from the backends for the client's subnets are
//! routed by table 200, a static ECMP route over every node (one per family); a node whose
//! link is down is skipped (`ignore_routes_with_linkdown`). A drained node stays in that return
//! route and translates the replies it still gets without state (see the README's fleet
//! section).
//!
//! Addresses from 198.18.0.0/15 and 2001:db8::/32 only; every namespace (`{prefix}-client`, `-router`, `-n{i}`,
//! `-b{i}`) and every process (BIRD included) goes when the lab is dropped.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

use crate::{
    lab::{addr, ethtool, ip, ping},
    netns::{ChildGuard, Netns},
    xlbd::{Launch, Xlbd},
};

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
pub const ROUTER_CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const ROUTER_BACKENDS_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
pub const VIP_V4: Ipv4Addr = crate::lab::VIP_V4;
pub const CLIENT_V6: Ipv6Addr = crate::lab::CLIENT_V6;
pub const ROUTER_CLIENT_V6: Ipv6Addr = crate::lab::LB_CLIENT_V6;
pub const ROUTER_BACKENDS_V6: Ipv6Addr = crate::lab::LB_BACKENDS_V6;
/// The IPv6 VIP (service `echo6`, TCP port 7000).
pub const VIP_V6: Ipv6Addr = crate::lab::VIP_V6;
/// The kernel table each node's xlb keeps its announced routes in.
pub const ANNOUNCE_TABLE: u32 = 100;
/// The router's table for the backends' replies (ECMP over the nodes).
pub const RETURN_TABLE: u32 = 200;
pub const ROUTER_AS: u32 = 65000;
pub const NODE_AS: u32 = 65001;
/// The hash seed every node shares.
pub const HASH_SEED: u32 = 20_261_202;

/// Node `i`'s (1-based) address on its link to the router.
pub fn node_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 3, (4 * (i - 1) + 2) as u8)
}

/// The router's address on its link to node `i`.
pub fn router_node_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 3, (4 * (i - 1) + 1) as u8)
}

pub fn backend_v4(i: usize) -> Ipv4Addr {
    crate::lab::backend_v4(i)
}

/// Node `i`'s IPv6 address on its link to the router: 2001:db8:3:i::2.
pub fn node_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 3, i as u16, 0, 0, 0, 2)
}

/// The router's IPv6 address on its link to node `i`: 2001:db8:3:i::1.
pub fn router_node_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 3, i as u16, 0, 0, 0, 1)
}

pub fn backend_v6(i: usize) -> Ipv6Addr {
    crate::lab::backend_v6(i)
}

/// How the fleet's services forward. Only NAT exists in this tree; `Dsr` is the hook for the
/// direct-server-return work (issue 13): it adds `forwarding = "dsr"` and `dsr_encap` to the
/// services, leaves out the return route through the nodes (replies go from the backends
/// straight to the client), puts the VIP on each backend's loopback (ARP for it suppressed)
/// and runs `xlb decap --interface eth0 --vip VIP` there. Not run yet: check it against the
/// DSR branch's config keys and CLI when switching it on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Forwarding {
    Nat,
    /// `encap`: `ipip` or `gue` (`l2` needs the backends on the nodes' link, which this lab
    /// does not have).
    Dsr {
        encap: String,
    },
}

impl Forwarding {
    /// `nat`, `dsr-ipip` or `dsr-gue`.
    pub fn parse(s: &str) -> Result<Forwarding> {
        match s {
            "nat" => Ok(Forwarding::Nat),
            "dsr-ipip" | "dsr-gue" => Ok(Forwarding::Dsr {
                encap: s.trim_start_matches("dsr-").to_string(),
            }),
            "dsr-l2" => {
                bail!("dsr-l2 needs the backends on the nodes' link; this lab routes to them")
            }
            other => bail!("unknown forwarding {other:?} (nat, dsr-ipip, dsr-gue)"),
        }
    }

    /// The backends' echo (TCP) and UDP ports: NAT translates 7000 → 9000 and 53 → 5353; a
    /// DSR backend receives the client's packet unchanged, so it serves the service ports.
    pub fn ports(&self) -> (u16, u16) {
        match self {
            Forwarding::Nat => (9000, 5353),
            Forwarding::Dsr { .. } => (7000, 53),
        }
    }

    /// The lines each `[[service]]` gets (`v6`: of the IPv6 VIP).
    fn service_lines(&self, v6: bool) -> String {
        match self {
            Forwarding::Nat => String::new(),
            // The outer sources: one prefix for every node (the backends never answer them).
            Forwarding::Dsr { encap } => format!(
                "forwarding = \"dsr\"\ndsr_encap = \"{encap}\"\ndsr_source_prefix = \"{}\"\n",
                if v6 {
                    "2001:db8:99::/112"
                } else {
                    "198.18.99.0/24"
                }
            ),
        }
    }
}

/// Whether BIRD 2 is installed (`cargo xtask setup` installs the `bird2` package).
pub fn bird_available() -> bool {
    Command::new("bird")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// BIRD timers short enough for a test: a dead session is noticed within 3 s, a link that
/// comes back is retried within a second or two.
const BGP_TIMERS: &str = "hold time 3; keepalive time 1; connect delay time 1; \
                          connect retry time 1; error wait time 1, 2;";

/// The BIRD config of node `i`: learn xlb's routes (IPv4 and IPv6) from kernel table 100 and
/// export them to the router over BGP, one session per family (the same config the README
/// shows, with the lab's addresses and shorter timers).
pub fn node_bird_config(i: usize) -> String {
    format!(
        "router id {me};
protocol device {{ scan time 10; }}
# xlb keeps one route per VIP it can serve in kernel table {table}; learn them.
protocol kernel xlb_vips4 {{
  ipv4 {{ import all; export none; }};
  kernel table {table};
  learn;
  scan time 10;
}}
protocol kernel xlb_vips6 {{
  ipv6 {{ import all; export none; }};
  kernel table {table};
  learn;
  scan time 10;
}}
protocol bgp router1 {{
  local {me} as {node_as};
  neighbor {peer} as {router_as};
  {BGP_TIMERS}
  ipv4 {{ import none; export where proto = \"xlb_vips4\"; next hop self; }};
}}
protocol bgp router1_v6 {{
  local {me6} as {node_as};
  neighbor {peer6} as {router_as};
  {BGP_TIMERS}
  ipv6 {{ import none; export where proto = \"xlb_vips6\"; next hop self; }};
}}
",
        me = node_v4(i),
        peer = router_node_v4(i),
        me6 = node_v6(i),
        peer6 = router_node_v6(i),
        table = ANNOUNCE_TABLE,
        node_as = NODE_AS,
        router_as = ROUTER_AS,
    )
}

/// The router's BIRD config: two BGP sessions per node (IPv4, IPv6); equal routes from several
/// nodes become one multipath kernel route (`merge paths`).
pub fn router_bird_config(nodes: usize) -> String {
    let mut s = format!(
        "router id {ROUTER_CLIENT_V4};
protocol device {{ scan time 10; }}
protocol kernel {{
  ipv4 {{ import none; export all; }};
  merge paths on;
}}
protocol kernel {{
  ipv6 {{ import none; export all; }};
  merge paths on;
}}
template bgp xlb_node4 {{
  local as {ROUTER_AS};
  {BGP_TIMERS}
  ipv4 {{ import where net ~ [ 198.18.100.0/24{{32,32}} ]; export none; }};
}}
template bgp xlb_node6 {{
  local as {ROUTER_AS};
  {BGP_TIMERS}
  ipv6 {{ import where net ~ [ 2001:db8:100::/48{{128,128}} ]; export none; }};
}}
"
    );
    for i in 1..=nodes {
        s.push_str(&format!(
            "protocol bgp node{i} from xlb_node4 {{ local {} as {ROUTER_AS}; neighbor {} as {NODE_AS}; }}\n\
             protocol bgp node{i}_v6 from xlb_node6 {{ local {} as {ROUTER_AS}; neighbor {} as {NODE_AS}; }}\n",
            router_node_v4(i),
            node_v4(i),
            router_node_v6(i),
            node_v6(i),
        ));
    }
    s
}

/// The xlb config of every node (paths aside): the same services, backends and hash seed,
/// so every node picks the same backend for a flow. Services: `echo` (TCP 7000) and `dns`
/// (UDP 53) on [`VIP_V4`], `echo6` (TCP 7000) on [`VIP_V6`].
pub fn node_xlb_config(
    name: &str,
    bird_socket: &Path,
    backends: usize,
    forwarding: &Forwarding,
) -> String {
    let list = (1..=backends)
        .map(|i| format!("\"{}\"", backend_v4(i)))
        .collect::<Vec<_>>()
        .join(", ");
    let list6 = (1..=backends)
        .map(|i| format!("\"{}\"", backend_v6(i)))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[daemon]
interfaces = [\"eth0\"]
conntrack_size = 65536
maglev_table_size = 1021
max_services = 8
hash_seed = {HASH_SEED}
{paths}
[daemon.announce]
via = \"bird\"
table = {ANNOUNCE_TABLE}
bird_socket = \"{sock}\"
drain_quiet = \"2s\"
drain_timeout = \"30s\"

[[service]]
name = \"echo\"
vip = \"{VIP_V4}\"
port = 7000
protocol = \"tcp\"
target_group = \"echo-servers\"
{fwd}
[[service]]
name = \"dns\"
vip = \"{VIP_V4}\"
port = 53
protocol = \"udp\"
target_group = \"dns-servers\"
{fwd}
[[service]]
name = \"echo6\"
vip = \"{VIP_V6}\"
port = 7000
protocol = \"tcp\"
target_group = \"echo6-servers\"
{fwd6}
[[target_group]]
name = \"echo-servers\"
port = {echo}
backends = [{list}]

[[target_group]]
name = \"dns-servers\"
port = {udp}
backends = [{list}]

[[target_group]]
name = \"echo6-servers\"
port = {echo}
backends = [{list6}]
",
        paths = Xlbd::daemon_paths(name),
        sock = bird_socket.display(),
        fwd = forwarding.service_lines(false),
        fwd6 = forwarding.service_lines(true),
        echo = forwarding.ports().0,
        udp = forwarding.ports().1,
    )
}

/// The fleet lab. Fields drop in order: daemons and BIRD first, then the namespaces.
pub struct FleetLab {
    prefix: String,
    /// xlb of each node (None while stopped or killed).
    pub xlb: Vec<Option<Xlbd>>,
    /// BIRD of the router (index 0) and of each node (1..=N).
    birds: Vec<ChildGuard>,
    servers: Vec<ChildGuard>,
    xdp_pass: Vec<crate::xdp::XdpPass>,
    pub client: Netns,
    pub router: Netns,
    pub nodes: Vec<Netns>,
    pub backends: Vec<Netns>,
    /// BIRD configs, sockets and logs.
    pub dir: PathBuf,
    pub forwarding: Forwarding,
}

impl FleetLab {
    /// Build the namespaces and links of `nodes` nodes and `backends` backends, start the lab
    /// servers on the backends (`xlb-lab serve --udp 5353 --echo 9000`) and BIRD on the
    /// router and every node. xlb is started by [`FleetLab::start_xlb`].
    pub fn new(prefix: &str, nodes: usize, backends: usize) -> Result<FleetLab> {
        Self::with_forwarding(prefix, nodes, backends, Forwarding::Nat)
    }

    /// [`FleetLab::new`] for services that forward as `forwarding` says.
    pub fn with_forwarding(
        prefix: &str,
        nodes: usize,
        backends: usize,
        forwarding: Forwarding,
    ) -> Result<FleetLab> {
        ensure!((1..=8).contains(&nodes), "1..=8 nodes");
        ensure!((1..=9).contains(&backends), "1..=9 backends");
        crate::lab::Lab::cleanup_stale(&format!("{prefix}-"))?;
        let dir = PathBuf::from(format!("/run/{prefix}-bird"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let lab = FleetLab {
            prefix: prefix.to_string(),
            xlb: (0..nodes).map(|_| None).collect(),
            birds: Vec::new(),
            servers: Vec::new(),
            xdp_pass: Vec::new(),
            client: Netns::new(format!("{prefix}-client"))?,
            router: Netns::new(format!("{prefix}-router"))?,
            nodes: (1..=nodes)
                .map(|i| Netns::new(format!("{prefix}-n{i}")))
                .collect::<Result<_>>()?,
            backends: (1..=backends)
                .map(|i| Netns::new(format!("{prefix}-b{i}")))
                .collect::<Result<_>>()?,
            dir,
            forwarding,
        };
        let mut lab = lab;
        lab.build()
            .with_context(|| format!("building the fleet lab {prefix}"))?;
        Ok(lab)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn build(&mut self) -> Result<()> {
        let rn = self.router.name().to_string();
        for ns in std::iter::once(&self.client)
            .chain(std::iter::once(&self.router))
            .chain(&self.nodes)
            .chain(&self.backends)
        {
            ns.sysctl("net.ipv6.conf.default.accept_ra", "0")?;
            // IPv6 addresses usable at once (every one is also added with nodad) and kept
            // while a link is down (a node's link goes down and up again).
            for conf in ["all", "default"] {
                ns.sysctl(&format!("net.ipv6.conf.{conf}.accept_dad"), "0")?;
                ns.sysctl(&format!("net.ipv6.conf.{conf}.keep_addr_on_down"), "1")?;
            }
            ip(ns, "link set lo up")?;
        }
        let r = &self.router;
        r.sysctl("net.ipv4.ip_forward", "1")?;
        r.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        r.sysctl("net.ipv4.fib_multipath_hash_policy", "1")?;
        r.sysctl("net.ipv6.fib_multipath_hash_policy", "1")?;
        for conf in ["all", "default"] {
            r.sysctl(&format!("net.ipv4.conf.{conf}.rp_filter"), "0")?;
            for family in ["ipv4", "ipv6"] {
                r.sysctl(
                    &format!("net.{family}.conf.{conf}.ignore_routes_with_linkdown"),
                    "1",
                )?;
            }
        }
        for n in &self.nodes {
            n.sysctl("net.ipv4.ip_forward", "1")?;
            n.sysctl("net.ipv6.conf.all.forwarding", "1")?;
            for conf in ["all", "default"] {
                n.sysctl(&format!("net.ipv4.conf.{conf}.rp_filter"), "0")?;
            }
        }

        // Client.
        ip(
            &self.client,
            &format!("link add eth0 type veth peer name r-client netns {rn}"),
        )?;
        addr(&self.client, "eth0", CLIENT_V4.into(), 24)?;
        addr(&self.client, "eth0", CLIENT_V6.into(), 64)?;
        ip(&self.client, "link set eth0 up")?;
        ip(
            &self.client,
            &format!("route add default via {ROUTER_CLIENT_V4}"),
        )?;
        ip(
            &self.client,
            &format!("-6 route add default via {ROUTER_CLIENT_V6}"),
        )?;
        addr(r, "r-client", ROUTER_CLIENT_V4.into(), 24)?;
        addr(r, "r-client", ROUTER_CLIENT_V6.into(), 64)?;
        ip(r, "link set r-client up")?;

        // Nodes: one link each to the router.
        for (k, n) in self.nodes.iter().enumerate() {
            let i = k + 1;
            ip(
                n,
                &format!("link add eth0 type veth peer name r-n{i} netns {rn}"),
            )?;
            addr(n, "eth0", node_v4(i).into(), 30)?;
            addr(n, "eth0", node_v6(i).into(), 64)?;
            ip(n, "link set eth0 up")?;
            ip(n, &format!("route add default via {}", router_node_v4(i)))?;
            ip(
                n,
                &format!("-6 route add default via {}", router_node_v6(i)),
            )?;
            addr(r, &format!("r-n{i}"), router_node_v4(i).into(), 30)?;
            addr(r, &format!("r-n{i}"), router_node_v6(i).into(), 64)?;
            ip(r, &format!("link set r-n{i} up"))?;
            // The node's XDP sends frames back out of eth0 (XDP_TX): the router's end needs
            // NAPI (GRO) and an XDP program of its own to take them.
            ethtool(r, &format!("r-n{i}"), "gro on")?;
            ethtool(r, &format!("r-n{i}"), "tx off")?;
        }

        // Backends behind a bridge on the router.
        ip(r, "link add br0 type bridge stp_state 0 forward_delay 0")?;
        addr(r, "br0", ROUTER_BACKENDS_V4.into(), 24)?;
        addr(r, "br0", ROUTER_BACKENDS_V6.into(), 64)?;
        ip(r, "link set br0 up")?;
        for (k, b) in self.backends.iter().enumerate() {
            let i = k + 1;
            ip(
                b,
                &format!("link add eth0 type veth peer name r-b{i} netns {rn}"),
            )?;
            ip(r, &format!("link set r-b{i} master br0 up"))?;
            addr(b, "eth0", backend_v4(i).into(), 24)?;
            addr(b, "eth0", backend_v6(i).into(), 64)?;
            ip(b, "link set eth0 up")?;
            ip(b, &format!("route add default via {ROUTER_BACKENDS_V4}"))?;
            ip(b, &format!("-6 route add default via {ROUTER_BACKENDS_V6}"))?;
            ethtool(b, "eth0", "tx off")?;
        }
        ethtool(&self.client, "eth0", "tx off")?;
        ethtool(r, "r-client", "tx off")?;

        match &self.forwarding {
            Forwarding::Nat => {
                // Return path: what the backends send to the client's subnets goes through a
                // node, any node (ECMP, links that are down skipped).
                let hops: String = (1..=self.nodes.len())
                    .map(|i| format!(" nexthop via {} dev r-n{i}", node_v4(i)))
                    .collect();
                ip(
                    r,
                    &format!("route add default table {RETURN_TABLE} proto static{hops}"),
                )?;
                ip(
                    r,
                    &format!("rule add iif br0 to 198.18.1.0/24 lookup {RETURN_TABLE} pref 100"),
                )?;
                let hops: String = (1..=self.nodes.len())
                    .map(|i| format!(" nexthop via {} dev r-n{i}", node_v6(i)))
                    .collect();
                ip(
                    r,
                    &format!("-6 route add default table {RETURN_TABLE} proto static{hops}"),
                )?;
                ip(
                    r,
                    &format!(
                        "-6 rule add iif br0 to 2001:db8:1::/64 lookup {RETURN_TABLE} pref 100"
                    ),
                )?;
            }
            Forwarding::Dsr { .. } => {
                // Replies go from the backends to the client directly, from the VIP, which
                // each backend holds on its loopback without answering ARP for it.
                for b in &self.backends {
                    ip(b, &format!("addr add {VIP_V4}/32 dev lo"))?;
                    ip(b, &format!("-6 addr add {VIP_V6}/128 dev lo nodad"))?;
                    for (k, v) in [
                        ("net.ipv4.conf.all.arp_ignore", "1"),
                        ("net.ipv4.conf.all.arp_announce", "2"),
                        ("net.ipv4.conf.all.rp_filter", "0"),
                        ("net.ipv4.conf.default.rp_filter", "0"),
                    ] {
                        b.sysctl(k, v)?;
                    }
                }
            }
        }

        for (k, n) in self.nodes.iter().enumerate() {
            let i = k + 1;
            let ifindex = r
                .enter(|| nix::net::if_::if_nametoindex(format!("r-n{i}").as_str()))
                .with_context(|| format!("ifindex of r-n{i}"))?;
            let p = r
                .enter(|| crate::xdp::attach_pass(ifindex))
                .with_context(|| format!("XDP on r-n{i}"))?;
            self.xdp_pass.push(p);
            ping(n, router_node_v4(i).into())?;
            ping(n, router_node_v6(i).into())?;
        }
        ping(&self.client, ROUTER_CLIENT_V4.into())?;
        ping(&self.client, ROUTER_CLIENT_V6.into())?;
        for b in &self.backends {
            ping(b, ROUTER_BACKENDS_V4.into())?;
            ping(b, ROUTER_BACKENDS_V6.into())?;
        }

        // Servers on the backends (and, in DSR mode, the decapsulation).
        let lab_bin = crate::lab_bin()?;
        if matches!(self.forwarding, Forwarding::Dsr { .. }) {
            let xlb = crate::xlb_bin()?;
            for b in &self.backends {
                let (vip, vip6) = (VIP_V4.to_string(), VIP_V6.to_string());
                self.servers.push(b.spawn(
                    &xlb,
                    [
                        "decap",
                        "--interface",
                        "eth0",
                        "--vip",
                        vip.as_str(),
                        "--vip",
                        vip6.as_str(),
                    ],
                )?);
            }
        }
        let (echo, udp) = self.forwarding.ports();
        for (k, b) in self.backends.iter().enumerate() {
            let name = crate::lab::backend_name(k + 1);
            let echo = echo.to_string();
            // DSR: UDP answers must come from the VIP (a socket bound to it).
            let udp = match self.forwarding {
                Forwarding::Nat => ["--udp".to_string(), udp.to_string()],
                Forwarding::Dsr { .. } => ["--udp-bind".to_string(), format!("{VIP_V4}:{udp}")],
            };
            self.servers.push(b.spawn(
                &lab_bin,
                [
                    "serve",
                    "--name",
                    &name,
                    udp[0].as_str(),
                    udp[1].as_str(),
                    "--echo",
                    echo.as_str(),
                ],
            )?);
        }

        // BIRD: the router, then each node.
        let cfg = self.dir.join("router.conf");
        std::fs::write(&cfg, router_bird_config(self.nodes.len()))?;
        let g = self.spawn_bird(&self.router, &cfg, &self.dir.join("router.ctl"), "router")?;
        self.birds.push(g);
        for k in 0..self.nodes.len() {
            let i = k + 1;
            let cfg = self.dir.join(format!("n{i}.conf"));
            std::fs::write(&cfg, node_bird_config(i))?;
            let g =
                self.spawn_bird(&self.nodes[k], &cfg, &self.bird_socket(i), &format!("n{i}"))?;
            self.birds.push(g);
        }
        Ok(())
    }

    fn spawn_bird(&self, ns: &Netns, cfg: &Path, sock: &Path, name: &str) -> Result<ChildGuard> {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        let mut c = ns.command("bird");
        c.arg("-f")
            .arg("-c")
            .arg(cfg)
            .arg("-s")
            .arg(sock)
            .arg("-P")
            .arg(self.dir.join(format!("{name}.pid")))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        ChildGuard::spawn(&mut c)
    }

    /// BIRD's control socket on node `i`.
    pub fn bird_socket(&self, i: usize) -> PathBuf {
        self.dir.join(format!("n{i}.ctl"))
    }

    /// The name node `i`'s xlb uses for its pins, state and socket (`/run/NAME`, ...).
    pub fn xlb_name(&self, i: usize) -> String {
        format!("{}-x{i}", self.prefix)
    }

    /// Start xlb on node `i` (1-based), or start it again after a stop or `kill -9`.
    pub fn start_xlb(&mut self, i: usize) -> Result<()> {
        if let Some(x) = self.xlb[i - 1].as_mut() {
            return x.restart();
        }
        let name = self.xlb_name(i);
        let cfg = node_xlb_config(
            &name,
            &self.bird_socket(i),
            self.backends.len(),
            &self.forwarding,
        );
        let x = Xlbd::start_in(self.nodes[i - 1].name(), &name, &cfg, Launch::default())
            .with_context(|| format!("starting xlb on node {i}"))?;
        self.xlb[i - 1] = Some(x);
        Ok(())
    }

    pub fn xlb(&self, i: usize) -> Result<&Xlbd> {
        self.xlb[i - 1]
            .as_ref()
            .with_context(|| format!("xlb of node {i} is not started"))
    }

    /// `kill -9` xlb on node `i` (its XDP, pins and announced routes stay).
    pub fn kill_xlb(&mut self, i: usize) -> Result<()> {
        let x = self.xlb[i - 1].as_mut().context("not started")?;
        x.kill9()
    }

    /// Stop xlb on node `i` (SIGTERM: it withdraws its VIPs; XDP stays attached).
    pub fn stop_xlb(&mut self, i: usize) -> Result<()> {
        let status = self.xlb[i - 1].as_mut().context("not started")?.stop()?;
        ensure!(status.success(), "xlb on node {i} stopped with {status}");
        Ok(())
    }

    /// Stop BIRD on node `i` (SIGTERM); xlb keeps running without it.
    pub fn stop_bird(&mut self, i: usize) -> Result<()> {
        self.birds
            .get_mut(i)
            .context("no such node")?
            .stop()
            .map(drop)
    }

    /// xlb's routes (protocol 88, IPv4 and IPv6) in node `i`'s announce table, as `ip route`
    /// prints them.
    pub fn announced_routes(&self, i: usize) -> Result<String> {
        let mut routes = String::new();
        for family in ["-4", "-6"] {
            let out = self.nodes[i - 1].exec([
                "ip",
                family,
                "route",
                "show",
                "table",
                &ANNOUNCE_TABLE.to_string(),
                "proto",
                "88",
            ])?;
            routes.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        Ok(routes.trim().to_string())
    }

    /// Set node `i`'s link to the router down or up.
    pub fn node_link(&self, i: usize, up: bool) -> Result<()> {
        ip(
            &self.nodes[i - 1],
            &format!("link set eth0 {}", if up { "up" } else { "down" }),
        )?;
        if up {
            ip(
                &self.nodes[i - 1],
                &format!("route replace default via {}", router_node_v4(i)),
            )?;
            ip(
                &self.nodes[i - 1],
                &format!("-6 route replace default via {}", router_node_v6(i)),
            )?;
        }
        Ok(())
    }

    /// The next hops (node addresses) of the router's route to the VIP.
    pub fn vip_next_hops(&self) -> Result<Vec<Ipv4Addr>> {
        let out = self
            .router
            .exec(["ip", "-4", "route", "show", &VIP_V4.to_string()])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut hops = Vec::new();
        let words: Vec<&str> = text.split_whitespace().collect();
        for w in words.windows(2) {
            if w[0] == "via" {
                if let Ok(a) = w[1].parse() {
                    hops.push(a);
                }
            }
        }
        hops.sort();
        Ok(hops)
    }

    /// The nodes (1-based, sorted) the router's route to `vip` goes through: the `dev r-n{i}`
    /// of each next hop (an IPv6 next hop may be the node's link-local address).
    pub fn next_hop_nodes(&self, vip: IpAddr) -> Result<Vec<usize>> {
        let family = if vip.is_ipv4() { "-4" } else { "-6" };
        let out = self
            .router
            .exec(["ip", family, "route", "show", &vip.to_string()])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let words: Vec<&str> = text.split_whitespace().collect();
        let mut nodes: Vec<usize> = words
            .windows(2)
            .filter(|w| w[0] == "dev")
            .filter_map(|w| w[1].strip_prefix("r-n")?.parse().ok())
            .collect();
        nodes.sort_unstable();
        Ok(nodes)
    }

    /// Poll (every 100 ms, at most `timeout`) until the router's routes to both VIPs (IPv4 and
    /// IPv6) go through exactly the nodes `want` (1-based); returns how long it took.
    pub fn wait_next_hops(&self, want: &[usize], timeout: Duration) -> Result<Duration> {
        let mut expect = want.to_vec();
        expect.sort_unstable();
        let start = Instant::now();
        loop {
            let v4 = self.next_hop_nodes(VIP_V4.into())?;
            let v6 = self.next_hop_nodes(VIP_V6.into())?;
            if v4 == expect && v6 == expect {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!(
                    "after {timeout:?} the router's route to {VIP_V4} goes through nodes {v4:?} \
                     and to {VIP_V6} through {v6:?}, not {expect:?}\n{}",
                    self.bird_state()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `birdc show protocols` of the router, for error messages.
    pub fn bird_state(&self) -> String {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(self.dir.join("router.ctl"))
            .arg("show")
            .arg("protocols")
            .output();
        match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
            Err(e) => format!("birdc: {e}"),
        }
    }

    /// `xlb status --json` of node `i`.
    pub fn status(&self, i: usize) -> Result<serde_json::Value> {
        let text = self.xlb(i)?.cli_ok(&["status", "--json"])?;
        serde_json::from_str(&text).with_context(|| format!("parsing {text}"))
    }

    /// Packets node `i` forwarded to service `name` (its per-service counter).
    pub fn service_packets(&self, i: usize, name: &str) -> Result<u64> {
        let s = self.status(i)?;
        s["services"]
            .as_array()
            .and_then(|l| l.iter().find(|x| x["name"] == name))
            .and_then(|x| x["counters"]["packets"].as_u64())
            .with_context(|| format!("no service {name} in node {i}'s status"))
    }

    /// The pids of every process in the lab's namespaces (for a check that nothing is left).
    pub fn namespace_names(&self) -> Vec<String> {
        std::iter::once(&self.client)
            .chain(std::iter::once(&self.router))
            .chain(&self.nodes)
            .chain(&self.backends)
            .map(|n| n.name().to_string())
            .collect()
    }
}

impl Drop for FleetLab {
    fn drop(&mut self) {
        for x in self.xlb.iter_mut() {
            drop(x.take());
        }
        self.birds.clear();
        self.servers.clear();
        self.xdp_pass.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A client address usable for a socket bound in the client namespace.
pub fn client_addr() -> IpAddr {
    CLIENT_V4.into()
}
