//! The lab topology: client ── lb ── switch ── backends, each in its own network namespace;
//! or, with [`Lab::with_router`], client ── router ── lb ── switch ── backends.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::netns::{ChildGuard, Netns};

/// IPv4 VIP of the lab services (configured on no interface: xlb answers for it).
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
/// IPv6 VIP of the lab services (configured on no interface).
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
/// The lb's address on the client side (the client's default gateway).
pub const LB_CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const LB_CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// The lb's address on the backend side (the backends' default gateway).
pub const LB_BACKENDS_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
pub const LB_BACKENDS_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);

/// Interface of the client namespace (peer of [`LB_CLIENT_IFACE`]).
pub const CLIENT_IFACE: &str = "eth0";
/// lb interface towards the client.
pub const LB_CLIENT_IFACE: &str = "veth-client";
/// lb interface towards the switch and the backends (peer of [`SW_UPLINK_IFACE`]).
pub const LB_BACKENDS_IFACE: &str = "veth-backends";
/// Switch port towards the lb.
pub const SW_UPLINK_IFACE: &str = "uplink";
/// The switch's bridge.
pub const SW_BRIDGE: &str = "br0";
/// Interface of each backend namespace.
pub const BACKEND_IFACE: &str = "eth0";

/// Router variant ([`Lab::with_router`]): the router's interface towards the client (which
/// takes the client-side addresses [`LB_CLIENT_V4`] / [`LB_CLIENT_V6`]: it is the client's
/// gateway).
pub const ROUTER_CLIENT_IFACE: &str = "r-client";
/// Router variant: the router's interface towards the lb (peer of [`LB_CLIENT_IFACE`]).
pub const ROUTER_LB_IFACE: &str = "r-lb";
/// Router variant: the lb's address on the router link.
pub const LB_ROUTER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 1);
pub const LB_ROUTER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 1);
/// Router variant: the router's address on the lb link.
pub const ROUTER_LB_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 2);
pub const ROUTER_LB_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 2);

/// Largest number of backends a lab can have.
pub const MAX_BACKENDS: usize = 99;

/// IPv4 address of backend `i` (1-based): 198.18.2.(10+i).
pub fn backend_v4(i: usize) -> Ipv4Addr {
    assert!((1..=MAX_BACKENDS).contains(&i), "backend index {i}");
    Ipv4Addr::new(198, 18, 2, 10 + i as u8)
}

/// IPv6 address of backend `i` (1-based): 2001:db8:2::1{i} (literal digits: ::11, ::12, ...).
pub fn backend_v6(i: usize) -> Ipv6Addr {
    assert!((1..=MAX_BACKENDS).contains(&i), "backend index {i}");
    format!("2001:db8:2::1{i}").parse().expect("valid address")
}

/// Name the lab servers of backend `i` answer with: `b{i}`.
pub fn backend_name(i: usize) -> String {
    format!("b{i}")
}

/// The lab. Dropping it deletes every namespace it created (and kills what runs inside); so
/// does a failure half way through [`Lab::new`].
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    // Dropped in this order; the namespaces' veths and bridge go with them.
    client: Netns,
    /// Between the client and the lb ([`Lab::with_router`]).
    router: Option<Netns>,
    lb: Netns,
    sw: Netns,
    backends: Vec<Netns>,
    /// XDP programs on the lb's peers ([`Lab::attach_xdp_to_lb_peers`]).
    xdp_pass: Vec<crate::xdp::XdpPass>,
}

impl Lab {
    /// Builds the topology in namespaces `{prefix}-client`, `{prefix}-lb`, `{prefix}-sw` and
    /// `{prefix}-b1..bN`. A prefix must be unique among the labs alive at the same time;
    /// leftovers of an earlier run with this prefix (`{prefix}-*`) are removed first.
    pub fn new(prefix: &str, n_backends: usize) -> Result<Lab> {
        Lab::create(prefix, n_backends, false)
    }

    /// Like [`Lab::new`], with a router namespace `{prefix}-router` between the client and the
    /// lb: the client keeps its addresses and gateway ([`LB_CLIENT_V4`] is the router's
    /// address then), the lb reaches the client through the router on 198.18.3.0/24 and
    /// 2001:db8:3::/64, and the router's default route is the lb (so the VIPs route through
    /// it). The router is an ordinary Linux router: it sends ICMP errors (time exceeded,
    /// fragmentation needed, packet too big) to the packets' sources.
    pub fn with_router(prefix: &str, n_backends: usize) -> Result<Lab> {
        Lab::create(prefix, n_backends, true)
    }

    fn create(prefix: &str, n_backends: usize, router: bool) -> Result<Lab> {
        ensure!(
            (1..=MAX_BACKENDS).contains(&n_backends),
            "a lab has 1..={MAX_BACKENDS} backends, not {n_backends}"
        );
        Lab::cleanup_stale(&format!("{prefix}-"))?;
        let client = Netns::new(format!("{prefix}-client"))?;
        let router = if router {
            Some(Netns::new(format!("{prefix}-router"))?)
        } else {
            None
        };
        let lb = Netns::new(format!("{prefix}-lb"))?;
        let sw = Netns::new(format!("{prefix}-sw"))?;
        let backends = (1..=n_backends)
            .map(|i| Netns::new(format!("{prefix}-b{i}")))
            .collect::<Result<Vec<_>>>()?;
        let lab = Lab {
            prefix: prefix.to_owned(),
            client,
            router,
            lb,
            sw,
            backends,
            xdp_pass: Vec::new(),
        };
        lab.build()
            .with_context(|| format!("building lab {prefix}"))?;
        Ok(lab)
    }

    /// Deletes every namespace whose name starts with `prefix` (killing what runs inside);
    /// returns their names.
    pub fn cleanup_stale(prefix: &str) -> Result<Vec<String>> {
        ensure!(!prefix.is_empty(), "refusing to clean up every namespace");
        let mut gone = Vec::new();
        for name in Netns::list()? {
            if name.starts_with(prefix) {
                Netns::delete(&name)?;
                gone.push(name);
            }
        }
        crate::xlbd::cleanup_stale_pins(prefix);
        Ok(gone)
    }

    fn build(&self) -> Result<()> {
        let (lb, sw) = (self.lb.name(), self.sw.name());

        for ns in self.all() {
            // Addresses are usable at once (every v6 address is also added with nodad).
            ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
            ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
            ns.sysctl("net.ipv6.conf.default.accept_ra", "0")?;
            ip(ns, "link set lo up")?;
        }
        // The lb routes; no reverse-path filtering (set before its interfaces exist, so they
        // inherit it from `default`).
        self.lb.sysctl("net.ipv4.ip_forward", "1")?;
        self.lb.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        for conf in ["all", "default"] {
            self.lb
                .sysctl(&format!("net.ipv4.conf.{conf}.rp_filter"), "0")?;
        }

        // Links, created directly inside the namespaces (nothing ever appears in the root one).
        if let Some(r) = &self.router {
            let rn = r.name();
            r.sysctl("net.ipv4.ip_forward", "1")?;
            r.sysctl("net.ipv6.conf.all.forwarding", "1")?;
            for conf in ["all", "default"] {
                r.sysctl(&format!("net.ipv4.conf.{conf}.rp_filter"), "0")?;
            }
            ip(
                &self.client,
                &format!(
                    "link add {CLIENT_IFACE} type veth peer name {ROUTER_CLIENT_IFACE} netns {rn}"
                ),
            )?;
            ip(
                r,
                &format!(
                    "link add {ROUTER_LB_IFACE} type veth peer name {LB_CLIENT_IFACE} netns {lb}"
                ),
            )?;
        } else {
            ip(
                &self.client,
                &format!(
                    "link add {CLIENT_IFACE} type veth peer name {LB_CLIENT_IFACE} netns {lb}"
                ),
            )?;
        }
        ip(
            &self.lb,
            &format!(
                "link add {LB_BACKENDS_IFACE} type veth peer name {SW_UPLINK_IFACE} netns {sw}"
            ),
        )?;
        ip(
            &self.sw,
            &format!(
                "link add {SW_BRIDGE} type bridge stp_state 0 forward_delay 0 mcast_snooping 0"
            ),
        )?;
        ip(
            &self.sw,
            &format!("link set {SW_UPLINK_IFACE} master {SW_BRIDGE}"),
        )?;
        for (i, b) in self.backends_numbered() {
            ip(
                b,
                &format!("link add {BACKEND_IFACE} type veth peer name b{i} netns {sw}"),
            )?;
            ip(&self.sw, &format!("link set b{i} master {SW_BRIDGE} up"))?;
        }

        // Client.
        addr(&self.client, CLIENT_IFACE, CLIENT_V4.into(), 24)?;
        addr(&self.client, CLIENT_IFACE, CLIENT_V6.into(), 64)?;
        ip(&self.client, &format!("link set {CLIENT_IFACE} up"))?;
        ip(
            &self.client,
            &format!("route add default via {LB_CLIENT_V4}"),
        )?;
        ip(
            &self.client,
            &format!("-6 route add default via {LB_CLIENT_V6}"),
        )?;

        // Router.
        if let Some(r) = &self.router {
            addr(r, ROUTER_CLIENT_IFACE, LB_CLIENT_V4.into(), 24)?;
            addr(r, ROUTER_CLIENT_IFACE, LB_CLIENT_V6.into(), 64)?;
            addr(r, ROUTER_LB_IFACE, ROUTER_LB_V4.into(), 24)?;
            addr(r, ROUTER_LB_IFACE, ROUTER_LB_V6.into(), 64)?;
            for iface in [ROUTER_CLIENT_IFACE, ROUTER_LB_IFACE] {
                ip(r, &format!("link set {iface} up"))?;
            }
            ip(r, &format!("route add default via {LB_ROUTER_V4}"))?;
            ip(r, &format!("-6 route add default via {LB_ROUTER_V6}"))?;
        }

        // Load balancer.
        if self.router.is_some() {
            addr(&self.lb, LB_CLIENT_IFACE, LB_ROUTER_V4.into(), 24)?;
            addr(&self.lb, LB_CLIENT_IFACE, LB_ROUTER_V6.into(), 64)?;
        } else {
            addr(&self.lb, LB_CLIENT_IFACE, LB_CLIENT_V4.into(), 24)?;
            addr(&self.lb, LB_CLIENT_IFACE, LB_CLIENT_V6.into(), 64)?;
        }
        addr(&self.lb, LB_BACKENDS_IFACE, LB_BACKENDS_V4.into(), 24)?;
        addr(&self.lb, LB_BACKENDS_IFACE, LB_BACKENDS_V6.into(), 64)?;
        for iface in [LB_CLIENT_IFACE, LB_BACKENDS_IFACE] {
            self.lb
                .sysctl(&format!("net.ipv4.conf.{iface}.rp_filter"), "0")?;
            ip(&self.lb, &format!("link set {iface} up"))?;
        }
        if self.router.is_some() {
            ip(
                &self.lb,
                &format!("route add 198.18.1.0/24 via {ROUTER_LB_V4}"),
            )?;
            ip(
                &self.lb,
                &format!("-6 route add 2001:db8:1::/64 via {ROUTER_LB_V6}"),
            )?;
        }

        // Switch.
        ip(&self.sw, &format!("link set {SW_UPLINK_IFACE} up"))?;
        ip(&self.sw, &format!("link set {SW_BRIDGE} up"))?;

        // Backends.
        for (i, b) in self.backends_numbered() {
            addr(b, BACKEND_IFACE, backend_v4(i).into(), 24)?;
            addr(b, BACKEND_IFACE, backend_v6(i).into(), 64)?;
            ip(b, &format!("link set {BACKEND_IFACE} up"))?;
            ip(b, &format!("route add default via {LB_BACKENDS_V4}"))?;
            ip(b, &format!("-6 route add default via {LB_BACKENDS_V6}"))?;
        }

        // Native XDP redirect into a veth needs NAPI on the receiving end (its peer): since
        // Linux 5.13, GRO on enables it. Receivers: the client's eth0 (frames redirected out of
        // veth-client) and the switch's uplink (frames redirected out of veth-backends).
        // (With a router, its lb-facing interface receives them instead of the client.)
        ethtool(&self.client, CLIENT_IFACE, "gro on")?;
        ethtool(&self.sw, SW_UPLINK_IFACE, "gro on")?;
        if let Some(r) = &self.router {
            ethtool(r, ROUTER_LB_IFACE, "gro on")?;
            ethtool(r, ROUTER_LB_IFACE, "tx off")?;
        }
        // The senders compute full checksums: a CHECKSUM_PARTIAL skb that XDP redirects or
        // bounces leaves its checksum unfinished (xdp_frames carry no checksum offload state).
        ethtool(&self.client, CLIENT_IFACE, "tx off")?;
        for b in &self.backends {
            ethtool(b, BACKEND_IFACE, "tx off")?;
        }

        // Neighbours: the lb learns the client's (or the router's) and each backend's MAC (v4
        // and v6).
        ping(&self.client, LB_CLIENT_V4.into())?;
        ping(&self.client, LB_CLIENT_V6.into())?;
        if let Some(r) = &self.router {
            ping(r, LB_ROUTER_V4.into())?;
            ping(r, LB_ROUTER_V6.into())?;
        }
        for b in &self.backends {
            ping(b, LB_BACKENDS_V4.into())?;
            ping(b, LB_BACKENDS_V6.into())?;
        }
        Ok(())
    }

    /// Attach a `return XDP_PASS` program to the interfaces facing the lb (the client's
    /// `eth0`, or the router's lb link, and the switch's uplink), so that frames xlb sends back
    /// out of the interface they came in on (`XDP_TX`: "fragmentation needed" answers, hairpin
    /// flows) are delivered: a veth passes those on only when its peer runs XDP (GRO is enough
    /// for redirected frames, not for these). Not done by default: the program puts every
    /// frame these interfaces receive through XDP, which the benchmarks' kernel baselines
    /// should not pay. Detached when the lab is dropped.
    pub fn attach_xdp_to_lb_peers(&mut self) -> Result<()> {
        let mut peers = vec![(&self.sw, SW_UPLINK_IFACE)];
        match &self.router {
            Some(r) => peers.push((r, ROUTER_LB_IFACE)),
            None => peers.push((&self.client, CLIENT_IFACE)),
        }
        for (ns, iface) in peers {
            let p = ns
                .enter(|| {
                    let ifindex = nix::net::if_::if_nametoindex(iface)?;
                    crate::xdp::attach_pass(ifindex)
                })
                .with_context(|| format!("{}: XDP on {iface}", ns.name()))?;
            self.xdp_pass.push(p);
        }
        Ok(())
    }

    fn all(&self) -> impl Iterator<Item = &Netns> {
        [&self.client]
            .into_iter()
            .chain(&self.router)
            .chain([&self.lb, &self.sw])
            .chain(&self.backends)
    }

    fn backends_numbered(&self) -> impl Iterator<Item = (usize, &Netns)> {
        self.backends.iter().enumerate().map(|(i, b)| (i + 1, b))
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn n_backends(&self) -> usize {
        self.backends.len()
    }

    pub fn client_ns(&self) -> &Netns {
        &self.client
    }

    /// The router between the client and the lb ([`Lab::with_router`]).
    pub fn router_ns(&self) -> Option<&Netns> {
        self.router.as_ref()
    }

    pub fn lb_ns(&self) -> &Netns {
        &self.lb
    }

    pub fn sw_ns(&self) -> &Netns {
        &self.sw
    }

    /// Namespace of backend `i` (1-based). Panics if there is no such backend.
    pub fn backend_ns(&self, i: usize) -> &Netns {
        assert!(
            (1..=self.backends.len()).contains(&i),
            "backend {i} of a lab with {} backends",
            self.backends.len()
        );
        &self.backends[i - 1]
    }

    pub fn backend_nss(&self) -> &[Netns] {
        &self.backends
    }

    /// Names of all namespaces of the lab.
    pub fn namespace_names(&self) -> Vec<&str> {
        self.all().map(Netns::name).collect()
    }

    pub fn client_v4(&self) -> Ipv4Addr {
        CLIENT_V4
    }

    pub fn client_v6(&self) -> Ipv6Addr {
        CLIENT_V6
    }

    pub fn lb_client_v4(&self) -> Ipv4Addr {
        LB_CLIENT_V4
    }

    pub fn lb_client_v6(&self) -> Ipv6Addr {
        LB_CLIENT_V6
    }

    pub fn lb_backends_v4(&self) -> Ipv4Addr {
        LB_BACKENDS_V4
    }

    pub fn lb_backends_v6(&self) -> Ipv6Addr {
        LB_BACKENDS_V6
    }

    pub fn vip_v4(&self) -> Ipv4Addr {
        VIP_V4
    }

    pub fn vip_v6(&self) -> Ipv6Addr {
        VIP_V6
    }

    /// IPv4 address of backend `i` (1-based).
    pub fn backend_v4(&self, i: usize) -> Ipv4Addr {
        assert!(i <= self.backends.len(), "no backend {i}");
        backend_v4(i)
    }

    /// IPv6 address of backend `i` (1-based).
    pub fn backend_v6(&self, i: usize) -> Ipv6Addr {
        assert!(i <= self.backends.len(), "no backend {i}");
        backend_v6(i)
    }

    /// IPv4 addresses of all backends, b1 first.
    pub fn backends_v4(&self) -> Vec<Ipv4Addr> {
        (1..=self.backends.len()).map(backend_v4).collect()
    }

    /// IPv6 addresses of all backends, b1 first.
    pub fn backends_v6(&self) -> Vec<Ipv6Addr> {
        (1..=self.backends.len()).map(backend_v6).collect()
    }

    /// Starts `bin serve --name b{i} --http .. --udp .. --echo ..` (the `xlb-lab` binary) in
    /// every backend namespace and waits (at most 10 s) until every port answers there.
    pub fn start_backend_servers(
        &self,
        bin: &Path,
        http: &[u16],
        udp: &[u16],
        echo: &[u16],
    ) -> Result<Vec<ChildGuard>> {
        let mut args = Vec::new();
        for (flag, ports) in [("--http", http), ("--udp", udp), ("--echo", echo)] {
            for p in ports {
                args.push(flag.to_owned());
                args.push(p.to_string());
            }
        }
        let mut guards = Vec::new();
        for (i, b) in self.backends_numbered() {
            let mut a = vec!["serve".to_owned(), "--name".to_owned(), backend_name(i)];
            a.extend(args.iter().cloned());
            guards.push(b.spawn(bin, &a)?);
        }
        for ((i, b), guard) in self.backends_numbered().zip(&mut guards) {
            wait_listening(b, guard, http, udp, echo)
                .with_context(|| format!("lab servers of backend {i}"))?;
        }
        Ok(guards)
    }

    /// Starts `xlb run --config CONFIG` in the lb namespace with stdout and stderr appended to
    /// `log`, and waits (at most `timeout`) until the log says `xlb is running`. Fails with the
    /// log if it exits or does not get there in time.
    pub fn start_xlb(
        &self,
        xlb: &Path,
        config: &Path,
        log: &Path,
        timeout: Duration,
    ) -> Result<ChildGuard> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let mut cmd = self.lb.command(xlb);
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let mut guard = ChildGuard::spawn(&mut cmd)?.with_grace(Duration::from_secs(5));
        wait_for_log(&mut guard, log, "xlb is running", timeout)?;
        Ok(guard)
    }
}

/// Waits until `log` contains `needle` while `child` runs, at most `timeout`.
pub fn wait_for_log(
    child: &mut ChildGuard,
    log: &Path,
    needle: &str,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return Ok(());
        }
        if let Some(st) = child.try_wait()? {
            bail!(
                "`{}` exited ({st}) before printing {needle:?}; its log ({}):\n{}",
                child.command_line(),
                log.display(),
                tail(&text, 60)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "`{}` did not print {needle:?} within {timeout:?}; its log ({}):\n{}",
                child.command_line(),
                log.display(),
                tail(&text, 60)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn wait_listening(
    ns: &Netns,
    guard: &mut ChildGuard,
    http: &[u16],
    udp: &[u16],
    echo: &[u16],
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let tcp_ports: Vec<u16> = http.iter().chain(echo).copied().collect();
    loop {
        let pending: Vec<String> = ns.enter(|| {
            let mut pending = Vec::new();
            for &p in &tcp_ports {
                let a = SocketAddr::new(local, p);
                if TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_err() {
                    pending.push(format!("tcp {p}"));
                }
            }
            for &p in udp {
                if !udp_answers(SocketAddr::new(local, p)) {
                    pending.push(format!("udp {p}"));
                }
            }
            pending
        });
        if pending.is_empty() {
            return Ok(());
        }
        if let Some(st) = guard.try_wait()? {
            bail!("`{}` exited: {st}", guard.command_line());
        }
        if Instant::now() >= deadline {
            bail!("not listening after 10 s: {}", pending.join(", "));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn udp_answers(to: SocketAddr) -> bool {
    let probe = || -> std::io::Result<()> {
        let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        s.send_to(b"ready?", to)?;
        s.recv_from(&mut [0u8; 512]).map(drop)
    };
    probe().is_ok()
}

/// `ip -n NS ARGS` (ARGS split on spaces).
pub(crate) fn ip(ns: &Netns, args: &str) -> Result<()> {
    let mut a = vec!["-n", ns.name()];
    a.extend(args.split_whitespace());
    crate::cmd::ip(a).map(drop)
}

pub(crate) fn addr(ns: &Netns, dev: &str, a: IpAddr, len: u8) -> Result<()> {
    match a {
        IpAddr::V4(_) => ip(ns, &format!("addr add {a}/{len} dev {dev}")),
        IpAddr::V6(_) => ip(ns, &format!("-6 addr add {a}/{len} dev {dev} nodad")),
    }
}

pub(crate) fn ethtool(ns: &Netns, dev: &str, features: &str) -> Result<()> {
    let mut a = vec!["ethtool", "-K", dev];
    a.extend(features.split_whitespace());
    ns.exec(a).map(drop)
}

/// One bounded ping (up to 3 tries of `ping -c1 -W1`).
pub(crate) fn ping(ns: &Netns, to: IpAddr) -> Result<()> {
    let family = if to.is_ipv4() { "-4" } else { "-6" };
    let to = to.to_string();
    let mut last = None;
    for _ in 0..3 {
        match ns.exec(["ping", family, "-n", "-q", "-c1", "-W1", &to]) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("tried")).with_context(|| format!("{}: ping {to}", ns.name()))
}
