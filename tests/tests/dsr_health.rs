//! DSR health checks through the encapsulation (README, "Health checks in DSR mode"): one
//! backend whose HTTP server listens ONLY on the VIPs (on its loopback), not on its own
//! address, behind DSR services in `gue`, `ipip` and `l2`, IPv4 and IPv6 (HTTP checks, TCP
//! ones for `ipip`). A group checked
//! with `target = "address"` finds it unhealthy (nothing listens on its address); groups
//! checked with `target = "vip"` find it healthy, their checks having reached the VIP socket
//! through the service's encapsulation (`xlb decap` on the backend counts decapsulated
//! packets; the server counts connections on each VIP); stopping the VIP server makes them
//! unhealthy; `xlb stop --cleanup` removes the check interface and rules. xlb's host runs
//! loose reverse-path filtering with a default route, as README asks.
//!
//! Needs root (skipped with a message otherwise).
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener},
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{Context, Result};
use xlb_lab::{lab::Lab, netns::ChildGuard, xlbd::Xlbd};

const PREFIX: &str = "xlbt-dsrhc";
const PORT: u16 = 9090;
/// (encap, VIP last byte / group suffix). The last one is checked at the address.
const CASES: [(&str, u8, &str); 4] = [
    ("gue", 31, "vip"),
    ("ipip", 32, "vip"),
    ("l2", 33, "vip"),
    ("l2", 34, "address"),
];

fn vip4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 100, last))
}
fn vip6(last: u8) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, last as u16))
}

fn group(encap: &str, last: u8, fam: &str) -> String {
    format!("{encap}{last}-{fam}")
}

fn config(name: &str) -> String {
    let mut c = format!(
        "[daemon]\n{}interfaces = [\"veth-client\", \"veth-backends\"]\nmaglev_table_size = 1021\n",
        Xlbd::daemon_paths(name)
    );
    for (encap, last, target) in CASES {
        for (fam, vip, backend, prefix) in [
            ("4", vip4(last), "198.18.2.11", "198.18.99.0/24"),
            ("6", vip6(last), "2001:db8:2::11", "2001:db8:99::/112"),
        ] {
            let g = group(encap, last, fam);
            c.push_str(&format!(
                "\n[[service]]\nname = \"{g}\"\nvip = \"{vip}\"\nport = {PORT}\n\
                 protocol = \"tcp\"\ntarget_group = \"{g}\"\nforwarding = \"dsr\"\n\
                 dsr_encap = \"{encap}\"\n"
            ));
            if encap != "l2" {
                c.push_str(&format!("dsr_source_prefix = \"{prefix}\"\n"));
            }
            // ipip's checks are TCP connects, the others HTTP GETs.
            let check = if encap == "ipip" {
                "protocol = \"tcp\"\n"
            } else {
                "protocol = \"http\"\npath = \"/health\"\n"
            };
            c.push_str(&format!(
                "\n[[target_group]]\nname = \"{g}\"\nbackends = [\"{backend}\"]\n\n\
                 [target_group.health_check]\n{check}\
                 interval = \"300ms\"\ntimeout = \"250ms\"\nhealthy_threshold = 1\n\
                 unhealthy_threshold = 2\ntarget = \"{target}\"\n"
            ));
        }
    }
    c
}

/// An HTTP server on `addrs` (bound to each VIP only) in a backend namespace: every request
/// answered `200 ok`; connections counted per address.
struct VipServer {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    hits: Vec<(SocketAddr, Arc<AtomicU64>)>,
}

impl VipServer {
    fn start(lab: &Lab, i: usize, addrs: &[SocketAddr]) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut hits = Vec::new();
        for &addr in addrs {
            let l = lab
                .backend_ns(i)
                .enter(|| TcpListener::bind(addr))
                .with_context(|| format!("binding {addr}"))?;
            l.set_nonblocking(true)?;
            let n = Arc::new(AtomicU64::new(0));
            hits.push((addr, n.clone()));
            let s = stop.clone();
            threads.push(std::thread::spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((mut c, _)) => {
                            n.fetch_add(1, Ordering::Relaxed);
                            let _ = c.set_nonblocking(false);
                            let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
                            let mut buf = [0u8; 1024];
                            if matches!(c.read(&mut buf), Ok(k) if k > 0) {
                                let _ = c.write_all(
                                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                                );
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            }));
        }
        Ok(VipServer {
            stop,
            threads,
            hits,
        })
    }

    fn hits(&self) -> BTreeMap<String, u64> {
        self.hits
            .iter()
            .map(|(a, n)| (a.to_string(), n.load(Ordering::Relaxed)))
            .collect()
    }
}

impl Drop for VipServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// `xlb decap` in a backend namespace, through `nsenter` (so that it sees bpffs).
fn decap(lab: &Lab, i: usize, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", lab.backend_ns(i).path().display()))
        .arg(xlb_lab::xlb_bin().expect("xlb binary"))
        .arg("decap")
        .args(args);
    c
}

fn decapsulated(lab: &Lab, i: usize) -> Option<u64> {
    let out = decap(lab, i, &["--interface", "eth0", "--stats"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next()? == "decapsulated").then(|| w.next()?.parse().ok())?
    })
}

/// Every backend of each group in `groups` in `state`; their reasons otherwise.
fn states(xlb: &Xlbd, groups: &[String], state: &str) -> Result<Option<()>> {
    for g in groups {
        let bs = xlb.backends(g)?;
        if bs.is_empty() || bs.iter().any(|b| b["state"] != state) {
            return Ok(None);
        }
    }
    Ok(Some(()))
}

fn describe(xlb: &Xlbd, groups: &[String]) -> String {
    groups
        .iter()
        .map(|g| {
            let bs = xlb.backends(g).unwrap_or_default();
            format!(
                "{g}: {}",
                bs.iter()
                    .map(|b| format!("{} {}", b["state"], b["reason"]))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn dsr_checks_reach_the_vip_socket_through_the_encapsulation() {
    if !xlb_lab::is_root() {
        eprintln!("skipped: namespace tests need root");
        return;
    }
    xlb_lab::xlbd::cleanup_stale_pins(PREFIX);
    let lab = Lab::new(PREFIX, 1).expect("lab");
    let ns = lab.backend_ns(1);
    for s in [
        "net.ipv4.conf.all.arp_ignore=1",
        "net.ipv4.conf.all.arp_announce=2",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.eth0.rp_filter=0",
    ] {
        ns.exec(["sysctl", "-qw", s]).unwrap();
    }
    let mut addrs = Vec::new();
    for (_, last, _) in CASES {
        ns.exec([
            "ip",
            "addr",
            "add",
            &format!("{}/32", vip4(last)),
            "dev",
            "lo",
        ])
        .unwrap();
        ns.exec([
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{}/128", vip6(last)),
            "dev",
            "lo",
            "nodad",
        ])
        .unwrap();
        addrs.push(SocketAddr::new(vip4(last), PORT));
        addrs.push(SocketAddr::new(vip6(last), PORT));
    }
    // xlb's host as README asks: loose reverse-path filtering with a route to the VIPs (the
    // replies come in from the VIPs on the backends' link).
    let lb = lab.lb_ns();
    for s in [
        "net.ipv4.conf.all.rp_filter=2",
        "net.ipv4.conf.veth-backends.rp_filter=2",
    ] {
        lb.exec(["sysctl", "-qw", s]).unwrap();
    }
    let via4 = lab.client_v4().to_string();
    let via6 = lab.client_v6().to_string();
    lb.exec(["ip", "route", "add", "default", "via", &via4])
        .unwrap();
    lb.exec(["ip", "-6", "route", "add", "default", "via", &via6])
        .unwrap();
    let mut d = ChildGuard::spawn(
        decap(&lab, 1, &["--interface", "eth0"]).stdin(std::process::Stdio::null()),
    )
    .unwrap();
    let server = VipServer::start(&lab, 1, &addrs).unwrap();
    let xlb = Xlbd::start(&lab, PREFIX, &config(PREFIX)).expect("starting xlb");

    let by_vip: Vec<String> = CASES
        .iter()
        .filter(|c| c.2 == "vip")
        .flat_map(|(e, l, _)| [group(e, *l, "4"), group(e, *l, "6")])
        .collect();
    let by_addr: Vec<String> = vec![group("l2", 34, "4"), group("l2", 34, "6")];

    // Through the VIP: healthy. At the address (nothing listens there): unhealthy.
    if let Err(e) = xlb.wait_for(
        "checks through the VIPs healthy",
        Duration::from_secs(20),
        || states(&xlb, &by_vip, "healthy"),
    ) {
        panic!(
            "{e:#}\n{}\nserver hits: {:?}\ndecapsulated: {:?}",
            describe(&xlb, &by_vip),
            server.hits(),
            decapsulated(&lab, 1)
        );
    }
    xlb.wait_for(
        "checks at the address unhealthy",
        Duration::from_secs(10),
        || states(&xlb, &by_addr, "unhealthy"),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", describe(&xlb, &by_addr)));
    for g in &by_addr {
        let b = &xlb.backends(g).unwrap()[0];
        assert!(
            b["reason"].as_str().unwrap_or_default().contains("refused"),
            "{g}: {b}"
        );
    }
    // Every VIP of a `vip` group was reached; the `address` group's VIPs never were.
    let hits = server.hits();
    for (encap, last, target) in CASES {
        for vip in [vip4(last), vip6(last)] {
            let n = hits[&SocketAddr::new(vip, PORT).to_string()];
            if target == "vip" {
                assert!(
                    n > 0,
                    "{encap} {vip}: no check reached the VIP server: {hits:?}"
                );
            } else {
                assert_eq!(n, 0, "{encap} {vip}: checked at the address: {hits:?}");
            }
        }
    }
    // `xlb status` shows xlb_hc's counters: check packets sent, none dropped.
    let status: serde_json::Value =
        serde_json::from_str(&xlb.cli_ok(&["status", "--json"]).unwrap()).unwrap();
    let sent = status["global"]["hc_sent"].as_u64().unwrap_or(0);
    assert!(sent > 0, "hc_sent {sent}: {}", status["global"]);
    assert_eq!(status["global"]["hc_dropped"], 0, "{}", status["global"]);
    // GUE and IPIP checks arrived encapsulated.
    let dec = decapsulated(&lab, 1).expect("xlb decap --stats");
    assert!(dec > 0, "decapsulated {dec}");

    // The VIP server stops: the checks through the VIPs fail.
    drop(server);
    xlb.wait_for(
        "checks through the VIPs unhealthy",
        Duration::from_secs(10),
        || states(&xlb, &by_vip, "unhealthy"),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", describe(&xlb, &by_vip)));

    // `xlb stop --cleanup` removes the check interface and its rules.
    let has = |cmd: &[&str], what: &str| {
        let o = lab.lb_ns().exec(cmd).unwrap();
        String::from_utf8_lossy(&o.stdout).contains(what)
    };
    assert!(has(&["ip", "link", "show"], "xlbhc0"));
    assert!(has(&["ip", "rule", "show"], "lookup 22604"));
    assert!(has(&["ip", "-6", "rule", "show"], "lookup 22604"));
    let out = Command::new("nsenter")
        .arg(format!("--net={}", lab.lb_ns().path().display()))
        .arg(&xlb.bin)
        .args(["stop", "--cleanup", "--config"])
        .arg(&xlb.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "xlb stop --cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("xlbhc0"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!has(&["ip", "link", "show"], "xlbhc0"));
    assert!(!has(&["ip", "rule", "show"], "lookup 22604"));
    assert!(!has(&["ip", "-6", "rule", "show"], "lookup 22604"));
    let st = d.stop().unwrap();
    assert!(st.success(), "xlb decap: {st}");
}
