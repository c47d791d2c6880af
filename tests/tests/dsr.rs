//! Direct server return end to end (README, "Forwarding modes"): a client, xlb in its own
//! namespace, two backends behind a bridge with every VIP on their loopback (ARP for it
//! suppressed) and `xlb decap` on their interface. For `l2`, `ipip` and `gue`, IPv4 and
//! IPv6: HTTP over TCP answered by both backends, a TCP echo stream every byte of which comes
//! back (MSS-sized segments: the encapsulated ones exceed the 1500-byte link, so path MTU
//! discovery through xlb's "too big" answers is part of it), and UDP request/response. The
//! replies go from the backends straight to the client: through the balancer namespace's
//! kernel routing, which the XDP program only passes (`replies` stays 0, no service counts a
//! reply byte). Every backend decapsulated traffic (`xlb decap --stats`). A router's "too
//! big" about a backend's reply, sent to the VIP, reaches the flow's backend through xlb
//! (decapsulated by `xlb decap`), whose kernel then shows the lowered path MTU towards the
//! client (`ip route get`).
//!
//! Needs root (skipped with a message otherwise).
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{Context, Result};
use xlb_lab::{client, lab::Lab, netns::ChildGuard, xlbd::Xlbd};

const T: Duration = Duration::from_secs(3);
const PREFIX: &str = "xlbt-dsr";
const ENCAPS: [(&str, u8); 3] = [("l2", 21), ("ipip", 22), ("gue", 23)];

fn vip4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 100, last))
}
fn vip6(last: u8) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, last as u16))
}

fn config(name: &str) -> String {
    let mut c = format!(
        "[daemon]\n{}interfaces = [\"veth-client\", \"veth-backends\"]\nmaglev_table_size = 1021\n",
        Xlbd::daemon_paths(name)
    );
    for (encap, last) in ENCAPS {
        for (fam, vip, group, prefix) in [
            ("4", vip4(last), "b4", "198.18.99.0/24"),
            ("6", vip6(last), "b6", "2001:db8:99::/112"),
        ] {
            for (svc, port, proto) in [
                ("http", 8080, "tcp"),
                ("echo", 7007, "tcp"),
                ("udp", 5353, "udp"),
            ] {
                c.push_str(&format!(
                    "\n[[service]]\nname = \"{encap}-{svc}{fam}\"\nvip = \"{vip}\"\nport = {port}\n\
                     protocol = \"{proto}\"\ntarget_group = \"{group}\"\nforwarding = \"dsr\"\n\
                     dsr_encap = \"{encap}\"\n"
                ));
                if encap != "l2" {
                    c.push_str(&format!("dsr_source_prefix = \"{prefix}\"\n"));
                }
            }
        }
    }
    for (group, b1, b2) in [
        ("b4", "198.18.2.11", "198.18.2.12"),
        ("b6", "2001:db8:2::11", "2001:db8:2::12"),
    ] {
        c.push_str(&format!(
            "\n[[target_group]]\nname = \"{group}\"\nbackends = [\"{b1}\", \"{b2}\"]\n\n\
             [target_group.health_check]\nprotocol = \"tcp\"\nport = 8080\ninterval = \"500ms\"\n\
             timeout = \"400ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 3\n"
        ));
    }
    c
}

/// A UDP responder bound to `addr` in a backend namespace (a DSR backend must answer from
/// the VIP: a socket bound to it does), answering each datagram with `name`.
struct UdpResponder {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpResponder {
    fn start(lab: &Lab, i: usize, addr: SocketAddr, name: String) -> Result<Self> {
        let sock = lab
            .backend_ns(i)
            .enter(|| UdpSocket::bind(addr))
            .with_context(|| format!("binding {addr}"))?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(name.as_bytes(), peer);
                }
            }
        });
        Ok(UdpResponder {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for UdpResponder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
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

/// `xlb decap --stats` of backend `i`: counter name → value.
fn decap_stats(lab: &Lab, i: usize) -> Result<BTreeMap<String, u64>> {
    let out = decap(lab, i, &["--interface", "eth0", "--stats"]).output()?;
    anyhow::ensure!(
        out.status.success(),
        "xlb decap --stats: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_owned(), w.next()?.parse().ok()?))
        })
        .collect())
}

/// The balancer's global counters, read from its pinned `GLOBAL_STATS`.
fn global(xlb: &Xlbd, name: &str) -> u64 {
    let i = lb_common::global::NAMES
        .iter()
        .position(|n| *n == name)
        .expect("counter name") as u32;
    let data = aya::maps::MapData::from_pin(xlb.pin_path.join(lb_common::MAP_GLOBAL_STATS))
        .expect("GLOBAL_STATS pinned");
    let map: aya::maps::PerCpuArray<_, u64> =
        aya::maps::PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data)).unwrap();
    map.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0)
}

/// The Internet checksum of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// From the client's namespace (a raw socket, standing in for a router on the path), to the
/// VIP: ICMP "fragmentation needed" / ICMPv6 "packet too big" with MTU 1400 about the UDP reply
/// `vip`:5353 → `client`:`port` (quoting its IP and UDP headers and 4 bytes).
fn send_too_big(lab: &Lab, client: IpAddr, vip: IpAddr, port: u16) -> Result<()> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let udp = |len: u16| {
        let mut u = 5353u16.to_be_bytes().to_vec();
        u.extend_from_slice(&port.to_be_bytes());
        u.extend_from_slice(&len.to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(b"b1b2");
        u
    };
    let (domain, proto, msg) = match (vip, client) {
        (IpAddr::V4(v), IpAddr::V4(c)) => {
            let mut ip = vec![0x45, 0, 0, 32, 0, 0, 0x40, 0, 64, 17, 0, 0];
            ip.extend_from_slice(&v.octets());
            ip.extend_from_slice(&c.octets());
            let ck = checksum(&ip);
            ip[10..12].copy_from_slice(&ck.to_be_bytes());
            let mut m = vec![3, 4, 0, 0, 0, 0, 0x05, 0x78];
            m.extend_from_slice(&ip);
            m.extend_from_slice(&udp(12));
            let ck = checksum(&m);
            m[2..4].copy_from_slice(&ck.to_be_bytes());
            (Domain::IPV4, Protocol::ICMPV4, m)
        }
        (IpAddr::V6(v), IpAddr::V6(c)) => {
            let mut ip = vec![0x60, 0, 0, 0, 0, 12, 17, 64];
            ip.extend_from_slice(&v.octets());
            ip.extend_from_slice(&c.octets());
            // The kernel fills in the ICMPv6 checksum.
            let mut m = vec![2, 0, 0, 0, 0, 0, 0x05, 0x78];
            m.extend_from_slice(&ip);
            m.extend_from_slice(&udp(12));
            (Domain::IPV6, Protocol::ICMPV6, m)
        }
        _ => anyhow::bail!("mixed families"),
    };
    lab.client_ns().enter(|| -> Result<()> {
        let s = Socket::new(domain, Type::RAW, Some(proto)).context("raw socket")?;
        s.send_to(&msg, &SockAddr::from(SocketAddr::new(vip, 0)))
            .context("sending the ICMP error")?;
        Ok(())
    })
}

/// The path MTU backend `i` has cached towards `client` from `vip` (`ip route get`'s `mtu`).
fn route_mtu(lab: &Lab, i: usize, client: IpAddr, vip: IpAddr) -> Option<u32> {
    let out = lab
        .backend_ns(i)
        .exec([
            "ip",
            "route",
            "get",
            &client.to_string(),
            "from",
            &vip.to_string(),
        ])
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut w = text.split_whitespace();
    while let Some(t) = w.next() {
        if t == "mtu" {
            return w.next()?.parse().ok();
        }
    }
    None
}

#[test]
fn dsr_l2_ipip_gue_v4_v6_tcp_udp() {
    if !xlb_lab::is_root() {
        eprintln!("skipped: namespace tests need root");
        return;
    }
    xlb_lab::xlbd::cleanup_stale_pins(PREFIX);
    let mut lab = Lab::new(PREFIX, 2).expect("lab");
    // xlb answers packets too big once encapsulated with XDP_TX: veth delivers those only to
    // a peer that runs XDP.
    lab.attach_xdp_to_lb_peers().expect("XDP on the lb's peers");
    let lab_bin = xlb_lab::lab_bin().unwrap();
    let mut udp = Vec::new();
    let mut decaps: Vec<ChildGuard> = Vec::new();
    for i in 1..=2 {
        let ns = lab.backend_ns(i);
        for s in [
            "net.ipv4.conf.all.arp_ignore=1",
            "net.ipv4.conf.all.arp_announce=2",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.eth0.rp_filter=0",
        ] {
            ns.exec(["sysctl", "-qw", s]).unwrap();
        }
        for (_, last) in ENCAPS {
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
            for vip in [vip4(last), vip6(last)] {
                udp.push(
                    UdpResponder::start(&lab, i, SocketAddr::new(vip, 5353), format!("b{i}"))
                        .unwrap(),
                );
            }
        }
        // Only the tunnelled VIPs are decapsulated (l2's arrive as they are).
        let mut args = vec!["--interface".to_owned(), "eth0".to_owned()];
        for (encap, last) in ENCAPS {
            if encap != "l2" {
                for v in [vip4(last), vip6(last)] {
                    args.push("--vip".into());
                    args.push(v.to_string());
                }
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        decaps.push(
            ChildGuard::spawn(decap(&lab, i, &args).stdin(std::process::Stdio::null())).unwrap(),
        );
    }
    let _servers = lab
        .start_backend_servers(&lab_bin, &[8080], &[], &[7007])
        .unwrap();
    let xlb = Xlbd::start(&lab, PREFIX, &config(PREFIX)).expect("starting xlb");
    // Every backend healthy (its checks to its own address also resolve its neighbour entry,
    // which `l2` needs).
    for g in ["b4", "b6"] {
        xlb.wait_for(&format!("{g} healthy"), Duration::from_secs(20), || {
            Ok(xlb
                .backends(g)?
                .iter()
                .all(|b| b["state"] == "healthy")
                .then_some(()))
        })
        .unwrap();
    }
    // Every decap attached and counting.
    for i in 1..=2 {
        xlb.wait_for("xlb decap running", Duration::from_secs(20), || {
            Ok(decap_stats(&lab, i).ok().map(|_| ()))
        })
        .unwrap();
    }

    let mut failures = Vec::new();
    let mut port = 34000u16;
    for (encap, last) in ENCAPS {
        for vip in [vip4(last), vip6(last)] {
            let what = format!("{encap} {vip}");
            let (seen, errs) = lab.client_ns().enter(|| {
                let mut seen = BTreeMap::<String, usize>::new();
                let mut errs = Vec::new();
                for _ in 0..24 {
                    port += 1;
                    // A client retries once, as a real one would on a busy machine.
                    let r =
                        client::http_get_from(SocketAddr::new(vip, 8080), port, T).or_else(|_| {
                            port += 1;
                            client::http_get_from(SocketAddr::new(vip, 8080), port, T)
                        });
                    match r {
                        Ok(n) => *seen.entry(n).or_default() += 1,
                        Err(e) => errs.push(format!("http: {e:#}")),
                    }
                }
                for _ in 0..10 {
                    let r = client::udp_request(SocketAddr::new(vip, 5353), T)
                        .or_else(|_| client::udp_request(SocketAddr::new(vip, 5353), T));
                    match r {
                        Ok(n) if n == "b1" || n == "b2" => {}
                        Ok(n) => errs.push(format!("udp: answer {n:?}")),
                        Err(e) => errs.push(format!("udp: {e:#}")),
                    }
                }
                match client::echo_stream(
                    SocketAddr::new(vip, 7007),
                    Duration::from_millis(700),
                    16 * 1024,
                ) {
                    Ok(n) if n > 0 => {}
                    Ok(n) => errs.push(format!("echo: {n} bytes")),
                    Err(e) => errs.push(format!("echo: {e:#}")),
                }
                (seen, errs)
            });
            if seen.len() != 2 {
                failures.push(format!("{what}: http answered by {seen:?}, want b1 and b2"));
            }
            for e in errs {
                failures.push(format!("{what}: {e}"));
            }
        }
    }
    if !failures.is_empty() && std::env::var_os("DSR_DEBUG").is_some() {
        for cmd in [
            vec!["ip", "route", "get", "198.18.100.22"],
            vec!["ip", "-6", "route", "get", "2001:db8:100::16"],
            vec!["nstat", "-az"],
            vec!["ss", "-tni"],
        ] {
            let o = lab.client_ns().exec(&cmd);
            eprintln!(
                "client {cmd:?}: {}",
                o.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default()
            );
        }
        for cmd in [vec!["nstat", "-az"], vec!["ss", "-tni"]] {
            let o = lab.backend_ns(1).exec(&cmd);
            eprintln!(
                "b1 {cmd:?}: {}",
                o.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default()
            );
        }
    }
    // ICMP errors about the backends' replies: a router's "fragmentation needed" / "packet
    // too big" about a UDP reply (VIP:5353 → client) goes to the VIP, that is through xlb, to
    // the backend the flow's packets go to (no entry here: the Maglev table's), the way the
    // service forwards; that backend's kernel lowers its path MTU towards the client.
    let icmp_before = global(&xlb, "icmp_to_backend");
    let mut sent = 0;
    for (encap, last) in ENCAPS {
        for vip in [vip4(last), vip6(last)] {
            port += 1;
            let client = if vip.is_ipv4() {
                IpAddr::V4(lab.client_v4())
            } else {
                IpAddr::V6(lab.client_v6())
            };
            for i in 1..=2 {
                let fam = if vip.is_ipv4() { "-4" } else { "-6" };
                lab.backend_ns(i)
                    .exec(["ip", fam, "route", "flush", "cache"])
                    .unwrap();
            }
            send_too_big(&lab, client, vip, port).unwrap();
            sent += 1;
            let deadline = std::time::Instant::now() + T;
            let lowered = loop {
                let with: Vec<usize> = (1..=2)
                    .filter(|&i| route_mtu(&lab, i, client, vip) == Some(1400))
                    .collect();
                if with.len() == 1 || std::time::Instant::now() > deadline {
                    break with;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            if lowered.len() != 1 {
                failures.push(format!(
                    "{encap} {vip}: \"too big\" about a reply to port {port}: path MTU 1400 \
                     towards {client} on backends {lowered:?}, want exactly one"
                ));
            }
        }
    }
    let icmp_sent = global(&xlb, "icmp_to_backend") - icmp_before;
    if icmp_sent != sent {
        failures.push(format!("icmp_to_backend +{icmp_sent}, want +{sent}"));
    }
    let counters: Vec<String> = lb_common::global::NAMES
        .iter()
        .map(|n| (n, global(&xlb, n)))
        .filter(|(_, v)| *v != 0)
        .map(|(n, v)| format!("{n} {v}"))
        .collect();
    assert!(
        failures.is_empty(),
        "{} failures:\n{}\nxlb counters: {}\ndecap: {:?} {:?}",
        failures.len(),
        failures.join("\n"),
        counters.join(", "),
        decap_stats(&lab, 1),
        decap_stats(&lab, 2),
    );
    // xlb carried the client → server direction only.
    let forwarded = global(&xlb, "forwarded");
    assert!(forwarded > 0, "forwarded {forwarded}");
    assert_eq!(
        global(&xlb, "replies"),
        0,
        "xlb translated replies in DSR mode"
    );
    let status = xlb.cli_ok(&["status", "--json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let reply_bytes: u64 = v["services"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s["counters"]["reply_bytes"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0);
    assert_eq!(reply_bytes, 0, "services counted reply bytes: {status}");
    let modes: Vec<&str> = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["forwarding"].as_str())
        .collect();
    assert_eq!(modes.len(), 18, "every service shows its mode: {modes:?}");
    for m in ["dsr/l2", "dsr/ipip", "dsr/gue"] {
        assert_eq!(
            modes.iter().filter(|x| **x == m).count(),
            6,
            "{m}: {modes:?}"
        );
    }
    // Both backends stripped tunnels; nothing malformed.
    for i in 1..=2 {
        let s = decap_stats(&lab, i).unwrap();
        assert!(s["decapsulated"] > 0, "backend {i}: {s:?}");
        assert_eq!(s["malformed"], 0, "backend {i}: {s:?}");
    }
    // SIGTERM: `xlb decap` detaches, removes its counters' pin and exits 0.
    let xdp_on = |i: usize| {
        let link = lab
            .backend_ns(i)
            .exec(["ip", "-d", "link", "show", "eth0"])
            .unwrap();
        String::from_utf8_lossy(&link.stdout).contains("prog/xdp")
    };
    for (i, mut d) in decaps.into_iter().enumerate() {
        assert!(xdp_on(i + 1), "xlb decap of backend {} not attached", i + 1);
        let st = d.stop().unwrap();
        assert!(st.success(), "xlb decap of backend {}: {st}", i + 1);
        assert!(!xdp_on(i + 1), "XDP still attached to backend {}", i + 1);
        assert!(decap_stats(&lab, i + 1).is_err(), "counters still pinned");
    }
}
