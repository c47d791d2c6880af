//! A fleet of three xlb nodes behind a router running BIRD with ECMP (see
//! `xlb_lab::fleet`): every node announces the IPv4 and the IPv6 VIP over BGP; 200 IPv4 and
//! 40 IPv6 long-lived TCP connections and UDP request/response flows survive one node's
//! `kill -9` (its links taken down), another node's `xlb node drain`, and both coming back
//! (0 resets, every byte checked), because every node picks the same backend for a flow (same
//! config, same hash seed) and translates replies without state (NAT mode). Then a stopped
//! daemon withdraws its VIPs, and a node whose BIRD stops is no longer a next hop.
//!
//! The same scenario runs in DSR mode (GUE; `XLB_FLEET_FORWARDING=dsr-ipip` for the first one
//! runs IPIP): the services get `forwarding = "dsr"`, the return route through the nodes is
//! dropped, the VIP goes on the backends' loopback and `xlb decap` runs on them (see
//! `xlb_lab::fleet::Forwarding`).
//!
//! Needs root and BIRD 2 (`cargo xtask setup` installs `bird2`); skipped with a message
//! otherwise.
use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use xlb_lab::{
    echo_pool::{self, EchoPool, Failure},
    fleet::{self, FleetLab, VIP_V4, VIP_V6},
};

/// How the first scenario's services forward (`nat`; `XLB_FLEET_FORWARDING=dsr-ipip` or
/// `dsr-gue` overrides it for one run). The second scenario runs DSR with GUE.
const FORWARDING: &str = "nat";
const NODES: usize = 3;
/// Long-lived IPv4 and IPv6 TCP connections through the whole scenario, and those opened
/// after the rejoin.
const TCP_CONNS: usize = 200;
const TCP_CONNS_V6: usize = 40;
const NEW_CONNS: usize = 60;
const NEW_CONNS_V6: usize = 20;
/// Each connection's pause between two exchanges (256 bytes each way).
const PAUSE: Duration = Duration::from_millis(100);
const UDP_FLOWS: u16 = 30;
/// Bound on every wait for BGP (sessions, withdrawals, re-announcements).
const CONVERGE: Duration = Duration::from_secs(30);

fn skip() -> bool {
    if !xlb_lab::is_root() {
        eprintln!("skipped: namespace tests need root");
        return true;
    }
    if !fleet::bird_available() {
        eprintln!(
            "skipped: BIRD 2 is not installed (`cargo xtask setup` installs the bird2 package)"
        );
        return true;
    }
    false
}

/// UDP flows from fixed source ports: each flow's answers must always name the same backend.
struct UdpFlows {
    handle: JoinHandle<Result<(u64, u64)>>,
}

fn udp_flows(lab: &FleetLab, stop: Arc<AtomicBool>) -> Result<UdpFlows> {
    let to = SocketAddr::new(VIP_V4.into(), 53);
    let sockets: Vec<UdpSocket> = lab.client.enter(|| {
        (0..UDP_FLOWS)
            .map(|k| {
                let s = UdpSocket::bind((fleet::CLIENT_V4, 41000 + k))?;
                s.set_read_timeout(Some(Duration::from_millis(300)))?;
                Ok(s)
            })
            .collect::<std::io::Result<Vec<_>>>()
    })?;
    let handle = std::thread::spawn(move || -> Result<(u64, u64)> {
        let mut backend: BTreeMap<u16, String> = BTreeMap::new();
        let (mut answered, mut retries) = (0u64, 0u64);
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::Relaxed) {
            for (k, s) in sockets.iter().enumerate() {
                let port = 41000 + k as u16;
                // A real client retries: up to 60 tries of 300 ms (18 s) per request.
                let mut name = None;
                for attempt in 0..60 {
                    let _ = s.send_to(format!("flow {port}").as_bytes(), to);
                    match s.recv_from(&mut buf) {
                        Ok((n, from)) => {
                            ensure!(from == to, "flow {port}: answer from {from}, not {to}");
                            name = Some(String::from_utf8_lossy(&buf[..n]).to_string());
                            break;
                        }
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                        {
                            retries += u64::from(attempt == 0);
                        }
                        Err(e) => bail!("flow {port}: {e}"),
                    }
                }
                let name = name.with_context(|| format!("flow {port}: no answer in 18 s"))?;
                let first = backend.entry(port).or_insert_with(|| name.clone());
                ensure!(
                    *first == name,
                    "flow {port} moved from backend {first:?} to {name:?}"
                );
                answered += 1;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok((answered, retries))
    });
    Ok(UdpFlows { handle })
}

fn node_state(lab: &FleetLab, i: usize) -> Result<String> {
    let s = lab.status(i)?;
    Ok(s["announce"]["node"].as_str().unwrap_or("?").to_string())
}

#[test]
fn fleet_survives_node_failure_drain_and_rejoin() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let forwarding = fleet::Forwarding::parse(
        &std::env::var("XLB_FLEET_FORWARDING").unwrap_or_else(|_| FORWARDING.to_string()),
    )?;
    fleet_scenario(forwarding, "fl")
}

/// The same scenario in direct-server-return mode (GUE): the backends answer the clients
/// straight, the nodes see only the client → server direction.
#[test]
fn dsr_fleet_survives_node_failure_drain_and_rejoin() -> Result<()> {
    if skip() {
        return Ok(());
    }
    fleet_scenario(fleet::Forwarding::parse("dsr-gue")?, "fd")
}

fn fleet_scenario(forwarding: fleet::Forwarding, tag: &str) -> Result<()> {
    let began = Instant::now();
    eprintln!("forwarding: {forwarding:?}");
    let prefix = format!("xlbt-{tag}{}", std::process::id());
    let mut lab = FleetLab::with_forwarding(&prefix, NODES, 3, forwarding)?;
    for i in 1..=NODES {
        lab.start_xlb(i)?;
    }

    // Every node announces both VIPs: the router has three next hops for each.
    let t = lab.wait_next_hops(&[1, 2, 3], CONVERGE)?;
    eprintln!("three next hops (IPv4 and IPv6) after {t:?}");
    // The same table everywhere: equal fingerprints, and every VIP announced.
    let mut fps = Vec::new();
    for i in 1..=NODES {
        let s = lab.status(i)?;
        let a = &s["announce"];
        assert_eq!(a["node"], "serving", "node {i}: {a}");
        let vips = a["vips"].as_array().context("announce.vips")?;
        assert_eq!(vips.len(), 2, "node {i}: {a}");
        assert!(vips.iter().all(|v| v["announced"] == true), "node {i}: {a}");
        assert!(
            a["bird"].as_str().unwrap_or("").starts_with("up"),
            "node {i}: {a}"
        );
        let f: Vec<String> = s["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["table_fingerprint"].as_str().unwrap().to_string())
            .collect();
        fps.push(f);
    }
    assert!(
        fps.iter().all(|f| *f == fps[0]),
        "fingerprints differ: {fps:?}"
    );

    // Traffic: long-lived TCP connections (IPv4 and IPv6) on one event loop, and UDP flows.
    let mut pool = EchoPool::new(PAUSE)?;
    let (to4, to6) = (
        SocketAddr::new(VIP_V4.into(), 7000),
        SocketAddr::new(VIP_V6.into(), 7000),
    );
    pool.open(&lab.client, to4, TCP_CONNS, "v4-")?;
    pool.open(&lab.client, to6, TCP_CONNS_V6, "v6-")?;
    let stop = Arc::new(AtomicBool::new(false));
    let udp = udp_flows(&lab, stop.clone())?;
    let t = pool.wait_each(3, CONVERGE, "before any change")?;
    eprintln!(
        "{} connections open, each made 3 exchanges in {t:?}",
        pool.len()
    );
    for svc in ["echo", "echo6"] {
        let before: Vec<u64> = (1..=NODES)
            .map(|i| lab.service_packets(i, svc))
            .collect::<Result<_>>()?;
        assert!(
            before.iter().all(|&p| p > 0),
            "ECMP spreads the {svc} connections over every node: {before:?}"
        );
    }

    // 1. Node 1 dies: kill -9 its xlb and take its link down.
    lab.kill_xlb(1)?;
    lab.node_link(1, false)?;
    let t = lab.wait_next_hops(&[2, 3], CONVERGE)?;
    eprintln!("node 1 down: two next hops after {t:?}");
    let t = pool.wait_each(3, CONVERGE, "after node 1 died")?;
    eprintln!("every connection made 3 exchanges more in {t:?}");

    // 2. Node 2 is drained: its routes are withdrawn, nothing is lost, it reports drained.
    let msg = lab.xlb(2)?.cli_ok(&["node", "drain"])?;
    assert!(msg.contains("draining"), "{msg}");
    let t = lab.wait_next_hops(&[3], CONVERGE)?;
    eprintln!("node 2 drained: one next hop after {t:?}");
    pool.wait_each(3, CONVERGE, "after node 2 was drained")?;
    lab.xlb(2)?.wait_for("node 2 drained", CONVERGE, || {
        Ok((node_state(&lab, 2)? == "drained").then_some(()))
    })?;
    let s = lab.status(2)?;
    for v in s["announce"]["vips"].as_array().context("announce.vips")? {
        assert_eq!(v["announced"], false, "{s}");
        assert_eq!(v["reason"], "node drained", "{s}");
    }

    // 3. Both come back: node 1's link up and xlb restarted, node 2 undrained.
    let p2 = lab.service_packets(2, "echo")?;
    let p2_6 = lab.service_packets(2, "echo6")?;
    lab.node_link(1, true)?;
    lab.start_xlb(1)?;
    let msg = lab.xlb(2)?.cli_ok(&["node", "undrain"])?;
    assert!(msg.contains("serving"), "{msg}");
    let t = lab.wait_next_hops(&[1, 2, 3], CONVERGE)?;
    eprintln!("nodes 1 and 2 back: three next hops after {t:?}");
    let n1 = lab.service_packets(1, "echo")?;
    let n1_6 = lab.service_packets(1, "echo6")?;
    pool.wait_each(3, CONVERGE, "after the rejoin")?;
    // New connections reach the rejoined nodes too.
    pool.open(&lab.client, to4, NEW_CONNS, "new-v4-")?;
    pool.open(&lab.client, to6, NEW_CONNS_V6, "new-v6-")?;
    pool.wait_each(3, CONVERGE, "with new connections")?;
    for (svc, before_1, before_2) in [("echo", n1, p2), ("echo6", n1_6, p2_6)] {
        let (after_1, after_2) = (lab.service_packets(1, svc)?, lab.service_packets(2, svc)?);
        assert!(
            after_1 > before_1,
            "node 1 takes {svc} traffic again: {before_1} → {after_1}"
        );
        assert!(
            after_2 > before_2,
            "node 2 takes {svc} traffic again: {before_2} → {after_2}"
        );
    }

    stop.store(true, Ordering::Relaxed);
    let report = pool.finish();
    let udp_result = udp.handle.join().expect("udp thread panicked");
    let mut logs = String::new();
    for i in 1..=NODES {
        if let Ok(x) = lab.xlb(i) {
            logs.push_str(&format!(
                "--- node {i}\n{}\n",
                xlb_lab::lab::tail(&x.log_text(), 15)
            ));
        }
    }
    assert!(
        report.failures.is_empty(),
        "{} of {} connections failed ({} reset):\n{}\n{logs}",
        report.failures.len(),
        report.connections,
        report.count(Failure::Reset),
        echo_pool::lines(&report.failures)
    );
    let (answered, retries) = udp_result.with_context(|| logs.clone())?;
    eprintln!(
        "{} TCP connections ({TCP_CONNS} IPv4 and {TCP_CONNS_V6} IPv6 through the kill, the \
         drain and the rejoin, {NEW_CONNS} + {NEW_CONNS_V6} opened after the rejoin): {} reset, \
         {} bytes echoed intact; {answered} UDP answers, each flow on one backend throughout \
         ({retries} requests retried)",
        report.connections,
        report.count(Failure::Reset),
        report.bytes,
    );
    assert!(
        answered >= u64::from(UDP_FLOWS) * 3,
        "{answered} UDP answers"
    );

    // A stopped daemon withdraws its VIPs: gone from its table and from the router.
    lab.stop_xlb(3)?;
    let routes = lab.announced_routes(3)?;
    assert_eq!(routes, "", "node 3's table after its xlb stopped");
    let t = lab.wait_next_hops(&[1, 2], CONVERGE)?;
    eprintln!("node 3's xlb stopped: two next hops after {t:?}");
    // BIRD stops on node 2: it is no longer a next hop; its xlb runs on and says so.
    lab.stop_bird(2)?;
    let t = lab.wait_next_hops(&[1], CONVERGE)?;
    eprintln!("node 2's BIRD stopped: one next hop after {t:?}");
    lab.xlb(2)?
        .wait_for("node 2 reports BIRD unreachable", CONVERGE, || {
            let s = lab.status(2)?;
            let bird = s["announce"]["bird"].as_str().unwrap_or("").to_string();
            Ok(bird.starts_with("unreachable").then_some(()))
        })?;
    assert_eq!(node_state(&lab, 2)?, "serving");
    eprintln!("scenario took {:?}", began.elapsed());
    Ok(())
}

/// xlb's routes in the lb namespace's announce table (both families), one per line. A table
/// that does not exist (yet, or any more) holds none.
fn table_routes(lab: &xlb_lab::Lab) -> Result<String> {
    let mut out = String::new();
    for family in ["-4", "-6"] {
        let o = lab
            .lb_ns()
            .command("ip")
            .args([family, "route", "show", "table", "100", "proto", "88"])
            .output()?;
        if o.status.success() {
            out.push_str(&String::from_utf8_lossy(&o.stdout));
        } else {
            let err = String::from_utf8_lossy(&o.stderr);
            ensure!(
                err.contains("does not exist"),
                "ip {family} route show: {err}"
            );
        }
    }
    Ok(out)
}

/// Without BIRD (the announcer needs none): the routes xlb keeps in its table follow the
/// backends' health, `xlb node drain` / `undrain` (also across a restart) and the daemon's
/// stop; a stale route of xlb's is removed and other routes of the table are left alone;
/// `xlb status` says BIRD is unreachable and why each VIP is or is not announced.
#[test]
fn announcements_follow_health_drain_and_stop() -> Result<()> {
    if !xlb_lab::is_root() {
        eprintln!("skipped: namespace tests need root");
        return Ok(());
    }
    use xlb_lab::{client, lab::Lab, xlbd::Xlbd};
    let name = format!("xlbt-an{}", std::process::id());
    let lab = Lab::new(&name, 2)?;
    let servers = lab.start_backend_servers(&xlb_lab::lab_bin()?, &[8080], &[], &[9000])?;
    let paths = Xlbd::daemon_paths(&name);
    let config = format!(
        r#"[daemon]
interfaces = ["veth-client", "veth-backends"]
conntrack_size = 65536
{paths}
[daemon.announce]
via = "bird"
table = 100
bird_socket = "/run/{name}/no-bird.ctl"
drain_quiet = "1s"

[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
protocol = "tcp"
target_group = "web"

[[service]]
name = "web6"
vip = "2001:db8:100::1"
port = 80
protocol = "tcp"
target_group = "web6"

[[service]]
name = "echo"
vip = "198.18.100.2"
port = 7000
protocol = "tcp"
target_group = "echo"

[[target_group]]
name = "web"
port = 8080
backends = ["198.18.2.11", "198.18.2.12"]
health_check = {{ protocol = "http", path = "/health", interval = "300ms", timeout = "300ms", healthy_threshold = 1, unhealthy_threshold = 1 }}

[[target_group]]
name = "web6"
port = 8080
backends = ["2001:db8:2::11", "2001:db8:2::12"]
all_unhealthy = "fail_open"
health_check = {{ protocol = "http", path = "/health", interval = "300ms", timeout = "300ms", healthy_threshold = 1, unhealthy_threshold = 1 }}

[[target_group]]
name = "echo"
port = 9000
backends = ["198.18.2.11", "198.18.2.12"]
"#
    );
    // Before xlb starts: a stale route of xlb's (protocol 88) and someone else's route.
    lab.lb_ns().exec([
        "ip",
        "route",
        "add",
        "blackhole",
        "198.18.100.99/32",
        "table",
        "100",
        "proto",
        "88",
    ])?;
    lab.lb_ns().exec([
        "ip",
        "route",
        "add",
        "blackhole",
        "198.18.100.98/32",
        "table",
        "100",
        "proto",
        "static",
    ])?;
    let mut xlb = Xlbd::start(&lab, &name, &config)?;
    let t = Duration::from_secs(20);
    let has = |routes: &str, vip: &str| routes.contains(&format!("blackhole {vip} "));
    let all = ["198.18.100.1", "198.18.100.2", "2001:db8:100::1"];
    let wait_routes = |xlb: &Xlbd, want: &[&str], what: &str| -> Result<String> {
        xlb.wait_for(what, t, || {
            let r = table_routes(&lab)?;
            let ok = all.iter().all(|v| has(&r, v) == want.contains(v));
            Ok(ok.then_some(r))
        })
        .map(|(r, _)| r)
    };
    let routes = wait_routes(&xlb, &all, "every VIP announced")?;
    assert!(
        !has(&routes, "198.18.100.99"),
        "stale route removed: {routes}"
    );
    let other = lab
        .lb_ns()
        .exec(["ip", "route", "show", "table", "100", "proto", "static"])?;
    assert!(
        String::from_utf8_lossy(&other.stdout).contains("198.18.100.98"),
        "another protocol's route stays"
    );
    let status = |xlb: &Xlbd| -> Result<serde_json::Value> {
        Ok(serde_json::from_str(&xlb.cli_ok(&["status", "--json"])?)?)
    };
    let s = status(&xlb)?;
    let a = &s["announce"];
    assert_eq!(a["node"], "serving", "{a}");
    assert_eq!(a["routes_in_sync"], true, "{a}");
    assert!(
        a["bird"]
            .as_str()
            .unwrap_or("")
            .starts_with("unreachable at "),
        "{a}"
    );
    let text = xlb.cli_ok(&["status"])?;
    assert!(text.contains("TABLE-FINGERPRINT"), "{text}");
    assert!(text.contains("routes:      table 100: in sync"), "{text}");

    // Every web backend fails its check: 198.18.100.1 and the IPv6 VIP go, the echo VIP
    // (no checks) stays.
    let backend = |i: usize, v6: bool| -> SocketAddr {
        if v6 {
            SocketAddr::new(lab.backend_v6(i).into(), 8080)
        } else {
            SocketAddr::new(lab.backend_v4(i).into(), 8080)
        }
    };
    let post = |path: &str| -> Result<()> {
        for i in 1..=2 {
            let status = lab
                .lb_ns()
                .enter(|| client::http_post(backend(i, false), path, Duration::from_secs(2)))?
                .status;
            ensure!(status == 200, "POST {path} to backend {i}: {status}");
        }
        Ok(())
    };
    post("/health/fail")?;
    wait_routes(&xlb, &["198.18.100.2"], "web VIPs withdrawn")?;
    let s = status(&xlb)?;
    let why: BTreeMap<String, String> = s["announce"]["vips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["vip"].as_str().unwrap().to_string(),
                v["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // web drops new flows when no backend is healthy (an empty table); web6 fails open
    // (its table keeps them, none healthy).
    assert_eq!(why["198.18.100.1"], "no backend in the table", "{why:?}");
    assert_eq!(why["2001:db8:100::1"], "no healthy backend", "{why:?}");
    assert_eq!(why["198.18.100.2"], "serving", "{why:?}");
    post("/health/ok")?;
    wait_routes(&xlb, &all, "web VIPs back")?;

    // Drained: everything goes; it reports drained (no traffic: nothing to wait for).
    let m = xlb.cli_ok(&["node", "drain"])?;
    assert!(m.contains("draining"), "{m}");
    wait_routes(&xlb, &[], "every VIP withdrawn by the drain")?;
    xlb.wait_for("drained", t, || {
        Ok((status(&xlb)?["announce"]["node"] == "drained").then_some(()))
    })?;
    // A restart keeps it drained.
    xlb.restart()?;
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(table_routes(&lab)?, "", "still drained after a restart");
    assert_eq!(status(&xlb)?["announce"]["node"], "drained");
    let m = xlb.cli_ok(&["node", "resume"])?;
    assert!(m.contains("serving"), "{m}");
    wait_routes(&xlb, &all, "every VIP back after undrain")?;

    // After kill -9 the routes stay (XDP forwards on); `xlb stop --cleanup` detaches XDP
    // and withdraws them.
    xlb.kill9()?;
    let r = table_routes(&lab)?;
    assert!(
        all.iter().all(|v| has(&r, v)),
        "kill -9 leaves the routes: {r}"
    );
    // (nsenter, not `ip netns exec`: the pins are in the host's bpffs.)
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", lab.lb_ns().path().display()))
        .arg(&xlb.bin)
        .args(["stop", "--cleanup", "--config"])
        .arg(&xlb.config)
        .output()?;
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("withdrew 3 announced VIPs"), "{text}");
    assert!(text.contains("detached XDP"), "{text}");
    assert!(!xlb.pin_path.join("CONNTRACK").exists(), "pins removed");
    assert_eq!(table_routes(&lab)?, "", "withdrawn by the cleanup");

    // A fresh start announces again; a stopping daemon withdraws everything.
    xlb.restart()?;
    wait_routes(&xlb, &all, "every VIP announced after a fresh start")?;
    xlb.stop()?;
    assert_eq!(table_routes(&lab)?, "", "withdrawn at stop");
    drop(servers);
    Ok(())
}
