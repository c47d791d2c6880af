//! The benchmark lab: the tests' namespace topology, plus what measuring needs.
//!
//! ```text
//!  CPU 0: client tool, client eth0 NAPI thread, switch (uplink NAPI thread, bridge), backends
//!  CPU 1: the balancer: NAPI threads of the lb namespace's two veths (XDP runs there, and so
//!         does the kernel's forwarding and nftables), HAProxy, the xlb daemon
//!
//!  client ns ─ eth0 ═══ veth-client [lb ns] veth-backends ═══ uplink ─ br0 ─ b1 b2 b3 b4
//! ```
//!
//! On veth, receive processing runs in the receiving device's NAPI poll, which by default
//! runs in softirq on the CPU that transmitted the frame (the sender's). With threaded NAPI
//! (`/sys/class/net/DEV/threaded`) each veth's poll runs in its own kernel thread
//! (`napi/DEV-ID`), which is pinned: the lb namespace's two veths to the balancer CPU, the
//! client's and the switch's to the client CPU. So everything the balancer does — XDP, or the
//! kernel's routing and netfilter, or HAProxy's sockets — runs on the balancer CPU, and
//! nothing else of the lab does. The NAPI threads are SCHED_FIFO: like softirq, they run as
//! soon as there is work, before any task (the client, a backend, HAProxy, the daemon).
//!
//! Frames reach the balancer the way a NIC hands them to a driver, not as socket buffers:
//! on veth, XDP can only run on an skb by first copying it into a page of its own (a socket's
//! skb has too little headroom and a locked head), a cost no NIC has. So the client's
//! traffic leaves through a veth pair (`gen0` → `gen1`) whose receiving end redirects every
//! frame with XDP into `eth0`, and the backends' traffic is redirected the same way at the
//! switch's ports into `uplink`: the lb namespace's veths receive `xdp_frame`s, in pages, as
//! from a NIC. xlb's XDP runs on them in place; for the kernel baselines veth builds an skb
//! around the same page (as a driver would), without copying. The redirects run on the
//! client CPU.
//!
//! Backends count what reaches them in an nftables `netdev` ingress table (`udp_rx`: UDP to
//! the sink port, dropped there; `tcp_syn`: SYNs to the HTTP port).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xlb_lab::lab::{self, Lab};
use xlb_lab::netns::{ChildGuard, Netns};

use super::sys;
use super::xlbd::Xlbd;

/// Namespace prefix of the bench lab.
pub const PREFIX: &str = "xlbbench";
pub const CLIENT_CPU: usize = 0;
pub const LB_CPU: usize = 1;
/// Backends the systems balance over (the lab has one more, `b4`, for adding).
pub const BACKENDS: usize = 3;
/// UDP port the backends count and drop (the forwarding scenario's sink).
pub const SINK_PORT: u16 = 9000;
/// The backends' lab HTTP server.
pub const HTTP_PORT: u16 = 8080;
/// The VIP's HTTP port.
pub const VIP_HTTP_PORT: u16 = 80;
/// The backends' lab UDP servers (answer with the backend's name).
pub const UDP_PORTS: [u16; 6] = [5353, 5354, 5355, 5356, 5357, 5358];
/// The VIP's UDP service answering port.
pub const VIP_UDP_PORT: u16 = 53;
/// Extra client addresses the UDP generator sends from: 198.18.1.100 ...
pub const SOURCES: u8 = 64;

pub fn sources() -> Vec<Ipv4Addr> {
    (0..SOURCES)
        .map(|i| Ipv4Addr::new(198, 18, 1, 100 + i))
        .collect()
}

/// Paths of the release binaries.
#[derive(Clone, Debug)]
pub struct Bins {
    pub xlb: PathBuf,
    pub lab: PathBuf,
}

/// A pinned NAPI kernel thread.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NapiThread {
    pub pid: i32,
    pub comm: String,
    pub cpu: usize,
}

pub struct BenchLab {
    pub lab: Lab,
    pub bins: Bins,
    pub dir: PathBuf,
    servers: Vec<ChildGuard>,
    /// NAPI threads that existed before the lab (not ours).
    napi_before: BTreeSet<i32>,
    /// Ours, pinned.
    pub napi: Vec<NapiThread>,
    /// Links of the frame-injecting XDP redirects.
    redirects: Vec<OwnedFd>,
}

fn sh(ns: &Netns, cmd: &str) -> Result<()> {
    ns.exec(["sh", "-c", cmd])
        .map(drop)
        .with_context(|| format!("{}: {cmd}", ns.name()))
}

fn nft(ns: &Netns, ruleset: &str, dir: &Path, name: &str) -> Result<()> {
    let file = dir.join(format!("{}-{name}.nft", ns.name()));
    std::fs::write(&file, ruleset)?;
    ns.exec(["nft", "-f", &file.to_string_lossy()])
        .map(drop)
        .with_context(|| format!("{}: nft -f {}", ns.name(), file.display()))
}

impl BenchLab {
    pub fn new(bins: Bins, dir: &Path) -> Result<BenchLab> {
        let napi_before = sys::napi_threads().into_keys().collect();
        let lab = Lab::new(PREFIX, BACKENDS + 1)?;
        let mut b = BenchLab {
            lab,
            bins,
            dir: dir.to_owned(),
            servers: Vec::new(),
            napi_before,
            napi: Vec::new(),
            redirects: Vec::new(),
        };
        b.setup().context("setting up the bench lab")?;
        Ok(b)
    }

    fn setup(&mut self) -> Result<()> {
        let (client, lb, sw) = (self.lab.client_ns(), self.lab.lb_ns(), self.lab.sw_ns());
        // Source addresses of the UDP generator.
        let mut cmds = String::new();
        for a in sources()
            .into_iter()
            .chain(System::ALL.iter().map(|s| s.client_source()))
        {
            cmds.push_str(&format!("addr add {a}/24 dev {}\n", lab::CLIENT_IFACE));
        }
        let batch = self.dir.join("client-addrs.ip");
        std::fs::write(&batch, cmds)?;
        client.exec(["ip", "-batch", &batch.to_string_lossy()])?;
        // The lb's veths get NAPI without XDP too (GRO on), for the baselines; and with TSO
        // off, veth hands every skb the kernel forwards out of them to the peer's NAPI (on
        // the client CPU) instead of processing it in the sender's softirq (the balancer CPU
        // would then run the switch's, the backends' and the client's receive path).
        for dev in [lab::LB_CLIENT_IFACE, lab::LB_BACKENDS_IFACE] {
            lb.exec(["ethtool", "-K", dev, "gro", "on", "tso", "off"])?;
        }
        // Threaded NAPI on every veth that has NAPI: the lb's two, the client's, the switch's.
        for (ns, dev) in [
            (lb, lab::LB_CLIENT_IFACE),
            (lb, lab::LB_BACKENDS_IFACE),
            (client, lab::CLIENT_IFACE),
            (sw, lab::SW_UPLINK_IFACE),
        ] {
            sh(ns, &format!("echo 1 > /sys/class/net/{dev}/threaded"))?;
        }
        self.inject_frames()?;
        self.pin_napi()?;

        // Backends: the lab servers, and the counters.
        self.servers =
            self.lab
                .start_backend_servers(&self.bins.lab, &[HTTP_PORT], &UDP_PORTS, &[])?;
        for b in self.lab.backend_nss() {
            nft(
                b,
                &format!(
                    "table netdev xlbbench {{\n\
                     \tcounter udp_rx {{ }}\n\
                     \tcounter tcp_syn {{ }}\n\
                     \tchain in {{\n\
                     \t\ttype filter hook ingress device \"{dev}\" priority 0; policy accept;\n\
                     \t\tudp dport {SINK_PORT} counter name \"udp_rx\" drop\n\
                     \t\ttcp dport {HTTP_PORT} tcp flags & (syn | ack) == syn counter name \"tcp_syn\"\n\
                     \t}}\n}}\n",
                    dev = lab::BACKEND_IFACE
                ),
                &self.dir,
                "sink",
            )?;
        }
        Ok(())
    }

    /// The XDP redirects that hand frames to the balancer (see the module doc).
    fn inject_frames(&mut self) -> Result<()> {
        let (client, lb, sw) = (self.lab.client_ns(), self.lab.lb_ns(), self.lab.sw_ns());
        let lb_mac = {
            let out = lb.exec(["ip", "-j", "link", "show", "dev", lab::LB_CLIENT_IFACE])?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            v[0]["address"]
                .as_str()
                .context("no MAC address of veth-client")?
                .to_owned()
        };
        for cmd in [
            "ip link add gen0 type veth peer name gen1".to_owned(),
            "ip link set gen0 up".into(),
            "ip link set gen1 up".into(),
            "ethtool -K gen0 tx off".into(),
            "ip addr add 198.18.9.2/30 dev gen0".into(),
            format!("ip neigh replace 198.18.9.1 lladdr {lb_mac} dev gen0 nud permanent"),
            format!(
                "ip route replace default via 198.18.9.1 dev gen0 src {}",
                lab::CLIENT_V4
            ),
        ] {
            client.exec(cmd.split_whitespace())?;
        }
        // Replies arrive on eth0, requests leave through gen0.
        for conf in ["all", "default", lab::CLIENT_IFACE, "gen0", "gen1"] {
            client.sysctl(&format!("net.ipv4.conf.{conf}.rp_filter"), "0")?;
        }
        let eth0 = client.enter(|| nix::net::if_::if_nametoindex(lab::CLIENT_IFACE))?;
        let mut links = vec![attach_redirect(client, "gen1", eth0)?];
        let uplink = sw.enter(|| nix::net::if_::if_nametoindex(lab::SW_UPLINK_IFACE))?;
        for i in 1..=self.lab.n_backends() {
            links.push(attach_redirect(sw, &format!("b{i}"), uplink)?);
        }
        self.redirects = links;
        Ok(())
    }

    /// Finds the lab's NAPI threads and pins them: the lb namespace's to [`LB_CPU`], the others
    /// to [`CLIENT_CPU`]. Call again after XDP is attached or detached (a veth may get new
    /// NAPI instances then).
    pub fn pin_napi(&mut self) -> Result<()> {
        let mut pinned = Vec::new();
        for (pid, comm) in sys::napi_threads() {
            if self.napi_before.contains(&pid) {
                continue;
            }
            // Names are cut to 15 bytes: napi/veth-clien, napi/veth-backe.
            let cpu = if comm.starts_with("napi/veth-") {
                LB_CPU
            } else {
                CLIENT_CPU
            };
            sys::pin(pid, cpu)?;
            // Softirq, where NAPI runs unthreaded, preempts tasks; so does a FIFO thread.
            sys::fifo(pid, 50)?;
            pinned.push(NapiThread { pid, comm, cpu });
        }
        let lb = pinned.iter().filter(|t| t.cpu == LB_CPU).count();
        if lb < 2 {
            bail!("expected the lb namespace's two veths to have NAPI threads, found {pinned:?}");
        }
        self.napi = pinned;
        Ok(())
    }

    /// Pids of the NAPI threads on the balancer CPU.
    pub fn lb_napi_pids(&self) -> Vec<i32> {
        self.napi
            .iter()
            .filter(|t| t.cpu == LB_CPU)
            .map(|t| t.pid)
            .collect()
    }

    /// Counters of every backend and of the lb's interfaces.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let mut s = Snapshot::default();
        for b in self.lab.backend_nss().iter().take(BACKENDS) {
            let out = b.exec([
                "nft", "-j", "list", "counters", "table", "netdev", "xlbbench",
            ])?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            let mut udp = 0;
            let mut syn = 0;
            for item in v["nftables"].as_array().into_iter().flatten() {
                if let Some(c) = item.get("counter") {
                    let n = c["packets"].as_u64().unwrap_or(0);
                    match c["name"].as_str() {
                        Some("udp_rx") => udp = n,
                        Some("tcp_syn") => syn = n,
                        _ => {}
                    }
                }
            }
            s.udp_rx.push(udp);
            s.tcp_syn.push(syn);
        }
        let out = self.lab.lb_ns().exec(["ip", "-s", "-j", "link", "show"])?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        for link in v.as_array().into_iter().flatten() {
            let Some(name) = link["ifname"].as_str() else {
                continue;
            };
            if name == "lo" {
                continue;
            }
            let mut m = BTreeMap::new();
            for dir in ["rx", "tx"] {
                for k in ["packets", "dropped", "errors"] {
                    if let Some(n) = link["stats64"][dir][k].as_u64() {
                        m.insert(format!("{dir}_{k}"), n);
                    }
                }
            }
            s.links.insert(name.to_owned(), m);
        }
        Ok(s)
    }

    /// Restarts backend `i`'s lab servers (after [`BenchLab::kill_servers`]).
    pub fn restart_servers(&mut self, i: usize) -> Result<()> {
        let mut args = vec![
            "serve".to_owned(),
            "--name".to_owned(),
            lab::backend_name(i),
            "--http".to_owned(),
            HTTP_PORT.to_string(),
        ];
        for p in UDP_PORTS {
            args.push("--udp".into());
            args.push(p.to_string());
        }
        let guard = self.lab.backend_ns(i).spawn(&self.bins.lab, &args)?;
        // Wait until it answers HTTP there.
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, HTTP_PORT));
        let deadline = Instant::now() + Duration::from_secs(10);
        while self
            .lab
            .backend_ns(i)
            .enter(|| xlb_lab::client::http_get(addr, Duration::from_millis(200)).is_err())
        {
            if Instant::now() > deadline {
                bail!("b{i}'s servers did not come back");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.servers[i - 1] = guard;
        Ok(())
    }

    /// Kills backend `i`'s lab servers (SIGKILL: the backend dies, nothing answers).
    /// The pid of backend `i`'s lab servers (1-based).
    pub fn server_pid(&self, i: usize) -> u32 {
        self.servers[i - 1].id()
    }

    pub fn kill_servers(&mut self, i: usize) -> Result<()> {
        self.servers[i - 1].signal(nix::sys::signal::Signal::SIGKILL)?;
        self.servers[i - 1].wait_timeout(Duration::from_secs(5))?;
        Ok(())
    }
}

/// Attaches (native XDP) a program redirecting every frame to `to_ifindex` to `dev` in `ns`;
/// it stays attached while the returned link is open.
fn attach_redirect(ns: &Netns, dev: &str, to_ifindex: u32) -> Result<OwnedFd> {
    use std::os::fd::AsFd;
    let prog =
        super::rawbpf::prog_load("xlbbench_redir", &super::rawbpf::redirect_prog(to_ifindex))?;
    ns.enter(|| {
        let idx = nix::net::if_::if_nametoindex(dev)?;
        super::rawbpf::xdp_link(prog.as_fd(), idx)
    })
    .with_context(|| format!("attaching the redirect to {dev} in {}", ns.name()))
}

/// Counters at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Per backend (b1..b3).
    pub udp_rx: Vec<u64>,
    pub tcp_syn: Vec<u64>,
    /// lb interface → counter → value.
    pub links: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Snapshot {
    pub fn udp_since(&self, before: &Snapshot) -> Vec<u64> {
        diff(&self.udp_rx, &before.udp_rx)
    }

    pub fn syn_since(&self, before: &Snapshot) -> Vec<u64> {
        diff(&self.tcp_syn, &before.tcp_syn)
    }

    pub fn links_since(&self, before: &Snapshot) -> BTreeMap<String, BTreeMap<String, u64>> {
        self.links
            .iter()
            .map(|(dev, m)| {
                let b = before.links.get(dev);
                let d = m
                    .iter()
                    .map(|(k, v)| {
                        let old = b.and_then(|b| b.get(k)).copied().unwrap_or(0);
                        (k.clone(), v.saturating_sub(old))
                    })
                    .collect();
                (dev.clone(), d)
            })
            .collect()
    }
}

fn diff(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| x.saturating_sub(*y)).collect()
}

/// The systems compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    Routing,
    Nft,
    Haproxy,
    Xlb,
}

impl System {
    /// In the order they run: xlb last, since a daemon that keeps XDP attached after it
    /// stops must not disturb the others.
    pub const ALL: [System; 4] = [System::Routing, System::Nft, System::Haproxy, System::Xlb];

    pub fn name(self) -> &'static str {
        use super::results::*;
        match self {
            System::Routing => SYS_ROUTING,
            System::Nft => SYS_NFT,
            System::Haproxy => SYS_HAPROXY,
            System::Xlb => SYS_XLB,
        }
    }

    /// The client address TCP tests through this system connect from. Each system has its
    /// own: the same client port reused through two systems would otherwise meet the
    /// backend's TIME_WAIT socket of the other system's connection, with timestamps from
    /// another clock (the client's TCP timestamps are offset per destination), and be refused.
    pub fn client_source(self) -> Ipv4Addr {
        let k = System::ALL.iter().position(|s| *s == self).expect("listed") as u8;
        Ipv4Addr::new(198, 18, 1, 200 + k)
    }

    pub fn balances_udp(self) -> bool {
        self != System::Haproxy
    }

    /// Where the client sends UDP to the sink: the VIP, or (no balancer) the backends.
    pub fn udp_targets(self) -> Vec<SocketAddrV4> {
        match self {
            System::Routing => (1..=BACKENDS)
                .map(|i| SocketAddrV4::new(lab::backend_v4(i), SINK_PORT))
                .collect(),
            _ => vec![SocketAddrV4::new(lab::VIP_V4, SINK_PORT)],
        }
    }

    /// Where the client connects for HTTP.
    pub fn http_targets(self) -> Vec<SocketAddr> {
        match self {
            System::Routing => (1..=BACKENDS)
                .map(|i| SocketAddr::from((lab::backend_v4(i), HTTP_PORT)))
                .collect(),
            _ => vec![SocketAddr::from((lab::VIP_V4, VIP_HTTP_PORT))],
        }
    }
}

/// The xlb config body (services and target groups) of the bench: `sink` (UDP 9000), `web`
/// (TCP 80 → 8080) and `dns` (UDP 53 → `dns_backends`) on the VIP.
pub fn xlb_body(dns_backends: &[String]) -> String {
    let list = |port: u16| {
        (1..=BACKENDS)
            .map(|i| format!("\"{}:{port}\"", lab::backend_v4(i)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let dns = dns_backends
        .iter()
        .map(|b| format!("\"{b}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let vip = lab::VIP_V4;
    format!(
        "[[service]]\nname = \"sink\"\nvip = \"{vip}\"\nport = {SINK_PORT}\nprotocol = \"udp\"\ntarget_group = \"sink\"\n\n\
         [[service]]\nname = \"web\"\nvip = \"{vip}\"\nport = {VIP_HTTP_PORT}\nprotocol = \"tcp\"\ntarget_group = \"web\"\n\n\
         [[service]]\nname = \"dns\"\nvip = \"{vip}\"\nport = {VIP_UDP_PORT}\nprotocol = \"udp\"\ntarget_group = \"dns\"\n\n\
         [[target_group]]\nname = \"sink\"\nbackends = [{}]\n\n\
         [[target_group]]\nname = \"web\"\nbackends = [{}]\n\n\
         [[target_group]]\nname = \"dns\"\nbackends = [{dns}]\n",
        list(SINK_PORT),
        list(HTTP_PORT),
    )
}

/// `[daemon]` lines of the bench's xlb (before the private paths).
pub fn xlb_daemon() -> String {
    format!(
        "interfaces = [\"{}\", \"{}\"]\nxdp_mode = \"native\"\n",
        lab::LB_CLIENT_IFACE,
        lab::LB_BACKENDS_IFACE
    )
}

/// The default `dns` group: b1..b3 on the first lab UDP port.
pub fn dns_default() -> Vec<String> {
    (1..=BACKENDS)
        .map(|i| format!("{}:{}", lab::backend_v4(i), UDP_PORTS[0]))
        .collect()
}

/// A system running in the lab; dropping it stops it and undoes its setup.
pub struct Running {
    pub system: System,
    /// Processes of the balancer to count CPU time of (HAProxy, the xlb daemon).
    pub pids: Vec<i32>,
    pub xlb: Option<Xlbd>,
    guard: Option<ChildGuard>,
    undo: Vec<(String, Vec<String>)>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.xlb.take();
        self.guard.take();
        for (ns, cmd) in self.undo.drain(..).rev() {
            let _ = std::process::Command::new("ip")
                .args(["netns", "exec", &ns])
                .args(&cmd)
                .output();
        }
    }
}

/// The kube-proxy (nftables mode) shape: a service chain picks an endpoint chain with
/// `numgen random mod N vmap`, the endpoint chain DNATs.
fn nft_lb_ruleset() -> String {
    let mut r = String::from("table ip xlbbench {\n");
    let mut udp_map = Vec::new();
    let mut tcp_map = Vec::new();
    for i in 1..=BACKENDS {
        let a = lab::backend_v4(i);
        r.push_str(&format!(
            "\tchain ep-udp-{i} {{\n\t\tdnat to {a}\n\t}}\n\
             \tchain ep-tcp-{i} {{\n\t\tmeta l4proto tcp dnat to {a}:{HTTP_PORT}\n\t}}\n"
        ));
        udp_map.push(format!("{} : goto ep-udp-{i}", i - 1));
        tcp_map.push(format!("{} : goto ep-tcp-{i}", i - 1));
    }
    r.push_str(&format!(
        "\tchain svc-udp {{\n\t\tnumgen random mod {BACKENDS} vmap {{ {} }}\n\t}}\n\
         \tchain svc-tcp {{\n\t\tnumgen random mod {BACKENDS} vmap {{ {} }}\n\t}}\n\
         \tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         \t\tip daddr {vip} udp dport {SINK_PORT} goto svc-udp\n\
         \t\tip daddr {vip} tcp dport {VIP_HTTP_PORT} goto svc-tcp\n\t}}\n}}\n",
        udp_map.join(", "),
        tcp_map.join(", "),
        vip = lab::VIP_V4
    ));
    r
}

/// HAProxy for the failover comparison: the same check timing as xlb's bench (TCP checks every
/// 1 s, down after 2, up after 2), `option redispatch` and retries, as an operator would run it.
pub fn haproxy_failover_config() -> String {
    let mut c = format!(
        "global\n\tnbthread 1\n\tmaxconn 8000\n\n\
         defaults\n\tmode tcp\n\ttimeout connect 2s\n\ttimeout client 30s\n\ttimeout server 30s\n\
         \tretries 3\n\toption redispatch\n\n\
         frontend web\n\tbind {}:{VIP_HTTP_PORT}\n\tdefault_backend web\n\n\
         backend web\n\tbalance roundrobin\n",
        lab::VIP_V4
    );
    for i in 1..=BACKENDS {
        c.push_str(&format!(
            "\tserver b{i} {}:{HTTP_PORT} check inter 1s fall 2 rise 2\n",
            lab::backend_v4(i)
        ));
    }
    c
}

fn haproxy_config() -> String {
    let mut c = format!(
        "global\n\tnbthread 1\n\tmaxconn 8000\n\n\
         defaults\n\tmode tcp\n\ttimeout connect 2s\n\ttimeout client 30s\n\ttimeout server 30s\n\n\
         frontend web\n\tbind {}:{VIP_HTTP_PORT}\n\tdefault_backend web\n\n\
         backend web\n\tbalance roundrobin\n",
        lab::VIP_V4
    );
    for i in 1..=BACKENDS {
        c.push_str(&format!(
            "\tserver b{i} {}:{HTTP_PORT}\n",
            lab::backend_v4(i)
        ));
    }
    c
}

impl BenchLab {
    /// Starts `system` in the lb namespace.
    pub fn start(&mut self, system: System) -> Result<Running> {
        self.start_with(system, None)
    }

    /// Starts `system`; HAProxy with `haproxy_cfg` instead of the throughput config.
    pub fn start_with(&mut self, system: System, haproxy_cfg: Option<String>) -> Result<Running> {
        let lb = self.lab.lb_ns();
        let lb_name = lb.name().to_owned();
        // Nothing of an earlier system may be left on the lb's interfaces.
        for dev in [lab::LB_CLIENT_IFACE, lab::LB_BACKENDS_IFACE] {
            if let Some(id) = super::xlbd::xdp_prog_id(lb, dev)? {
                bail!("an XDP program (id {id}) is still attached to {dev}");
            }
        }
        let mut run = Running {
            system,
            pids: Vec::new(),
            xlb: None,
            guard: None,
            undo: Vec::new(),
        };
        match system {
            System::Routing => {}
            System::Nft => {
                nft(lb, &nft_lb_ruleset(), &self.dir, "lb")?;
                run.undo.push((
                    lb_name,
                    ["nft", "delete", "table", "ip", "xlbbench"]
                        .map(String::from)
                        .to_vec(),
                ));
            }
            System::Haproxy => {
                sys::require_program("haproxy")?;
                let vip = format!("{}/32", lab::VIP_V4);
                lb.exec(["ip", "addr", "add", &vip, "dev", "lo"])?;
                run.undo.push((
                    lb_name,
                    ["ip", "addr", "del", &vip, "dev", "lo"]
                        .map(String::from)
                        .to_vec(),
                ));
                let cfg = self.dir.join("haproxy.cfg");
                std::fs::write(&cfg, haproxy_cfg.unwrap_or_else(haproxy_config))?;
                let mut cmd = lb.command("taskset");
                cmd.args(["-c", &LB_CPU.to_string(), "haproxy", "-db", "-f"])
                    .arg(&cfg)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null());
                let mut guard = ChildGuard::spawn(&mut cmd)?;
                let vip = SocketAddr::from((lab::VIP_V4, VIP_HTTP_PORT));
                let deadline = Instant::now() + Duration::from_secs(10);
                while lb.enter(|| {
                    std::net::TcpStream::connect_timeout(&vip, Duration::from_millis(200)).is_err()
                }) {
                    if !guard.is_running() || Instant::now() > deadline {
                        bail!("HAProxy did not start listening on {vip}");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                run.pids.push(guard.id() as i32);
                run.guard = Some(guard);
            }
            System::Xlb => {
                let x = Xlbd::start(
                    &self.bins.xlb,
                    lb,
                    &self.dir,
                    "xlbbench-lb",
                    &xlb_daemon(),
                    &xlb_body(&dns_default()),
                    Some(LB_CPU),
                    Duration::from_secs(30),
                )?;
                run.pids.push(x.pid());
                run.xlb = Some(x);
            }
        }
        self.pin_napi()?;
        Ok(run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_ruleset_is_kube_proxy_shaped() {
        let r = nft_lb_ruleset();
        assert!(r.contains("numgen random mod 3 vmap { 0 : goto ep-udp-1, 1 : goto ep-udp-2, 2 : goto ep-udp-3 }"), "{r}");
        assert!(
            r.contains("meta l4proto tcp dnat to 198.18.2.13:8080"),
            "{r}"
        );
        assert!(
            r.contains("ip daddr 198.18.100.1 tcp dport 80 goto svc-tcp"),
            "{r}"
        );
    }

    #[test]
    fn targets() {
        assert_eq!(System::Routing.udp_targets().len(), 3);
        assert_eq!(
            System::Xlb.http_targets(),
            vec![SocketAddr::from((lab::VIP_V4, 80))]
        );
        let body = xlb_body(&dns_default());
        assert!(
            body.contains(
                "backends = [\"198.18.2.11:9000\", \"198.18.2.12:9000\", \"198.18.2.13:9000\"]"
            ),
            "{body}"
        );
        assert!(haproxy_config().contains("server b3 198.18.2.13:8080"));
    }
}
