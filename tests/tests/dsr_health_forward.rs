//! Review of DSR health checks through the VIP (`target = "vip"`): a backend that does NOT
//! serve the VIP (no VIP on its loopback: the very misconfiguration the check is for) but
//! forwards IP (a router, a container host) must be found unhealthy. Without a hop limit on
//! the check's packets, it forwards them (by its default route) back to xlb, whose XDP
//! program balances them like a client's to another backend that serves the VIP, and that
//! backend's answer (from the VIP, straight to xlb's host) passes the first one's check. (Reproduced on 09ded54: backend 1 "healthy" "connected".)
//!
//! Needs root (skipped with a message otherwise).
use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use xlb_lab::{lab::Lab, xlbd::Xlbd};

const PREFIX: &str = "xlbt-dsrhcfw";
const PORT: u16 = 9091;
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 41);

fn config(name: &str) -> String {
    format!(
        "[daemon]\n{}interfaces = [\"veth-client\", \"veth-backends\"]\nmaglev_table_size = 1021\n\
         \n[[service]]\nname = \"s\"\nvip = \"{VIP}\"\nport = {PORT}\nprotocol = \"tcp\"\n\
         target_group = \"g\"\nforwarding = \"dsr\"\ndsr_encap = \"l2\"\n\
         \n[[target_group]]\nname = \"g\"\nbackends = [\"198.18.2.11\", \"198.18.2.12\"]\n\
         \n[target_group.health_check]\nprotocol = \"tcp\"\ninterval = \"300ms\"\n\
         timeout = \"250ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 2\ntarget = \"vip\"\n",
        Xlbd::daemon_paths(name)
    )
}

#[test]
fn a_forwarding_backend_without_the_vip_is_unhealthy() {
    if !xlb_lab::is_root() {
        eprintln!("skipped: namespace tests need root");
        return;
    }
    xlb_lab::xlbd::cleanup_stale_pins(PREFIX);
    let lab = Lab::new(PREFIX, 2).expect("lab");
    // Backend 1: no VIP, forwards. Backend 2: the VIP on its loopback, a server on it.
    let b1 = lab.backend_ns(1);
    b1.exec(["sysctl", "-qw", "net.ipv4.ip_forward=1"]).unwrap();
    b1.exec(["sysctl", "-qw", "net.ipv4.conf.all.send_redirects=0"])
        .unwrap();
    b1.exec(["sysctl", "-qw", "net.ipv4.conf.eth0.send_redirects=0"])
        .unwrap();
    let b2 = lab.backend_ns(2);
    // Backend 1's route to the VIP: a neighbour that has it (in a fleet, its default route
    // through the routers to any node, which balances the packet to any backend, does the
    // same; here the lb's own XDP does not hairpin it back onto the backends' link).
    b1.exec([
        "ip",
        "route",
        "add",
        &format!("{VIP}/32"),
        "via",
        "198.18.2.12",
    ])
    .unwrap();
    for s in [
        "net.ipv4.conf.all.arp_ignore=1",
        "net.ipv4.conf.all.arp_announce=2",
    ] {
        b2.exec(["sysctl", "-qw", s]).unwrap();
    }
    b2.exec(["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"])
        .unwrap();
    let l = b2
        .enter(|| TcpListener::bind(SocketAddr::new(IpAddr::V4(VIP), PORT)))
        .unwrap();
    l.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let server = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut c, _)) => {
                    let _ = c.set_nonblocking(false);
                    let _ = c.set_read_timeout(Some(Duration::from_millis(100)));
                    let mut b = [0u8; 64];
                    let _ = c.read(&mut b);
                    let _ = c.write_all(b"");
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    let lb = lab.lb_ns();
    lb.exec(["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=2"])
        .unwrap();
    let via4 = lab.client_v4().to_string();
    lb.exec(["ip", "route", "add", "default", "via", &via4])
        .unwrap();
    let xlb = Xlbd::start(&lab, PREFIX, &config(PREFIX)).expect("starting xlb");
    let state = |addr: &str| -> String {
        xlb.backends("g")
            .unwrap_or_default()
            .iter()
            .find(|b| b["address"].as_str().unwrap_or_default().starts_with(addr))
            .map(|b| format!("{} {}", b["state"], b["reason"]))
            .unwrap_or_default()
    };
    xlb.wait_for("backend 2 healthy", Duration::from_secs(20), || {
        Ok(state("198.18.2.12")
            .starts_with("\"healthy\"")
            .then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e:#}: {:?}", xlb.backends("g")));
    // Give backend 1 several check rounds with backend 2 in the table.
    std::thread::sleep(Duration::from_secs(3));
    let s1 = state("198.18.2.11");
    let forwarded = String::from_utf8_lossy(
        &b1.exec(["nstat", "-az", "IpForwDatagrams", "IcmpOutTimeExcds"])
            .unwrap()
            .stdout,
    )
    .to_string();
    stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    assert!(
        !s1.starts_with("\"healthy\""),
        "backend 1 serves no VIP yet its check through the VIP passes: {s1}; all: {:?}\n\
         backend 1: {forwarded}",
        xlb.backends("g")
    );
}

/// The VIP is also a local address of xlb's host (on its loopback, as some hosts keep it) and
/// something there listens on the check port on every address: the check must still reach the
/// backend (which serves nothing here), not be answered by xlb's own host.
#[test]
fn a_check_is_not_answered_by_xlbs_own_host() {
    if !xlb_lab::is_root() {
        eprintln!("skipped: namespace tests need root");
        return;
    }
    const PREFIX: &str = "xlbt-dsrhclo";
    xlb_lab::xlbd::cleanup_stale_pins(PREFIX);
    let lab = Lab::new(PREFIX, 2).expect("lab");
    let lb = lab.lb_ns();
    lb.exec(["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"])
        .unwrap();
    let l = lb
        .enter(|| TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], PORT))))
        .unwrap();
    let xlb = Xlbd::start(&lab, PREFIX, &config(PREFIX)).expect("starting xlb");
    // Several check rounds.
    std::thread::sleep(Duration::from_secs(3));
    let bs = xlb.backends("g").unwrap();
    drop(l);
    assert!(
        bs.iter().all(|b| b["state"] != "healthy"),
        "no backend serves the VIP, yet: {bs:?}"
    );
    for b in &bs {
        let r = b["reason"].as_str().unwrap_or_default();
        assert!(r.contains("address of xlb's host"), "{r}");
    }
}

/// Probe (review, open): a client on the backends' link (backend 1) reaching a DSR `l2` VIP
/// served by backend 2: the lb's XDP turns the SYN around on the interface it came in on
/// (`XDP_TX`, counted `forwarded`, veth stats `xdp_tx` 3) but backend 2 never receives it (its
/// `IpInReceives` stays at 1) and the connect times out. The same happens with the service in
/// NAT mode (tried by hand), so it is `XDP_TX` (ingress = egress) itself, not DSR: whether the
/// lab's veth + bridge loses `XDP_TX` frames or `transmit` writes a wrong frame is not settled
/// yet: ignored until then
/// (`cargo test -p xlb-tests --test dsr_health_forward -- --ignored`).
#[test]
#[ignore = "open: hairpin XDP_TX in the lab loses the frame; see the doc comment"]
fn probe_hairpin_client_on_the_backend_link() {
    if !xlb_lab::is_root() {
        eprintln!("skipped: namespace tests need root");
        return;
    }
    const PREFIX: &str = "xlbt-dsrhp";
    xlb_lab::xlbd::cleanup_stale_pins(PREFIX);
    let lab = Lab::new(PREFIX, 2).expect("lab");
    let b2 = lab.backend_ns(2);
    for s in [
        "net.ipv4.conf.all.arp_ignore=1",
        "net.ipv4.conf.all.arp_announce=2",
    ] {
        b2.exec(["sysctl", "-qw", s]).unwrap();
    }
    b2.exec(["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"])
        .unwrap();
    let l = b2
        .enter(|| TcpListener::bind(SocketAddr::new(IpAddr::V4(VIP), PORT)))
        .unwrap();
    let cfg = config(PREFIX).replace("\"198.18.2.11\", \"198.18.2.12\"", "\"198.18.2.12\"");
    let cfg = cfg
        .split("\n[target_group.health_check]")
        .next()
        .unwrap()
        .to_string();
    let xlb = Xlbd::start(&lab, PREFIX, &cfg).expect("starting xlb");
    std::thread::sleep(Duration::from_millis(500));
    let r = lab.backend_ns(1).enter(|| {
        std::net::TcpStream::connect_timeout(
            &SocketAddr::new(IpAddr::V4(VIP), PORT),
            Duration::from_secs(3),
        )
    });
    let st = xlb.cli_ok(&["status"]).unwrap_or_default();
    let nst = String::from_utf8_lossy(
        &b2.exec([
            "nstat",
            "-az",
            "IpInReceives",
            "TcpPassiveOpens",
            "TcpExtListenDrops",
            "IpInAddrErrors",
        ])
        .unwrap()
        .stdout,
    )
    .to_string();
    drop(l);
    assert!(r.is_ok(), "{r:?}\n{st}\n{nst}");
}
