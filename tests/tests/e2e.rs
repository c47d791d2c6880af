//! End to end in network namespaces: a real client, xlb in its own namespace, and three real
//! backends behind a bridge. The VIPs are configured on no interface anywhere, so every answer
//! from a VIP went through the XDP program.
//!
//! Needs root (skipped with a message otherwise).
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::{Context, Result};
use xlb_lab::{
    client,
    config::DEMO_CONFIG,
    lab::{Lab, VIP_V4, VIP_V6},
    netns::ChildGuard,
    xlbd::Xlbd,
};

const T: Duration = Duration::from_secs(3);

/// The config (with private daemon paths) plus a TCP echo service.
fn config(name: &str) -> String {
    let paths = Xlbd::daemon_paths(name);
    let base = DEMO_CONFIG.replacen("[daemon]\n", &format!("[daemon]\n{paths}"), 1);
    format!(
        "{base}
[[service]]
name = \"echo\"
vip = \"198.18.100.1\"
port = 7000
protocol = \"tcp\"
target_group = \"echo-servers\"

[[target_group]]
name = \"echo-servers\"
port = 9000
backends = [\"198.18.2.11\", \"198.18.2.12\", \"198.18.2.13\"]
"
    )
}

struct Running {
    lab: Lab,
    _servers: Vec<ChildGuard>,
    _lb_server: ChildGuard,
    xlb: Xlbd,
}

fn start(prefix: &str) -> Result<Running> {
    let lab = Lab::new(prefix, 3)?;
    let lab_bin = xlb_lab::lab_bin()?;
    let servers = lab.start_backend_servers(&lab_bin, &[8080], &[5353], &[9000])?;
    // A service of the balancer host itself, on a port no xlb service uses.
    let lb_server = lab
        .lb_ns()
        .spawn(&lab_bin, ["serve", "--name", "lb-host", "--http", "2222"])?;
    let xlb = Xlbd::start(&lab, prefix, &config(prefix)).context("starting xlb")?;
    Ok(Running {
        lab,
        _servers: servers,
        _lb_server: lb_server,
        xlb,
    })
}

fn skip() -> bool {
    if !xlb_lab::is_root() {
        eprintln!("skipped: namespace tests need root");
        return true;
    }
    false
}

fn log_of(r: &Running) -> String {
    r.xlb.log_text()
}

#[test]
fn tcp_udp_v4_v6_balancing() {
    if skip() {
        return;
    }
    let mut r = start("xlbt-e2e").expect("lab");
    let log = log_of(&r);
    assert!(
        log.contains("iface=veth-client mode=native")
            && log.contains("iface=veth-backends mode=native"),
        "XDP attached natively on veth:\n{log}"
    );

    // 300 TCP connections from distinct source ports: all complete, spread by weight 1:1:2.
    let web = SocketAddr::new(IpAddr::V4(VIP_V4), 80);
    let (counts, failures) = r.lab.client_ns().enter(|| {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut failures = Vec::new();
        for i in 0..300u16 {
            match client::http_get_from(web, 31000 + i, T) {
                Ok(name) => *counts.entry(name).or_default() += 1,
                Err(e) => failures.push(format!("port {}: {e:#}", 31000 + i)),
            }
        }
        (counts, failures)
    });
    assert!(
        failures.is_empty(),
        "{} of 300 failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    for (name, want) in [("b1", 25.0), ("b2", 25.0), ("b3", 50.0)] {
        let got = *counts.get(name).unwrap_or(&0) as f64 / 3.0;
        assert!(
            (got - want).abs() <= 10.0,
            "{name}: {got:.1}% of connections, want {want}% ±10: {counts:?}"
        );
    }

    // UDP request/response, to the two dns backends.
    let dns = SocketAddr::new(IpAddr::V4(VIP_V4), 53);
    let udp = r.lab.client_ns().enter(|| {
        let mut seen = BTreeMap::<String, usize>::new();
        for _ in 0..40 {
            let name = client::udp_request(dns, T).expect("udp request via VIP");
            *seen.entry(name).or_default() += 1;
        }
        seen
    });
    assert!(
        udp.keys().all(|k| k == "b1" || k == "b2") && udp.len() == 2,
        "dns answers come from b1 and b2 only, both used: {udp:?}"
    );

    // IPv6 TCP, to the two v6 backends.
    let web6 = SocketAddr::new(IpAddr::V6(VIP_V6), 80);
    let v6 = r.lab.client_ns().enter(|| {
        let mut seen = BTreeMap::<String, usize>::new();
        for i in 0..60u16 {
            let name = client::http_get_from(web6, 33000 + i, T).expect("http over IPv6 via VIP");
            *seen.entry(name).or_default() += 1;
        }
        seen
    });
    assert!(
        v6.keys().all(|k| k == "b1" || k == "b2") && v6.len() == 2,
        "web6 answers come from b1 and b2 only, both used: {v6:?}"
    );

    // The balancer's own address, on a port that is no service, still reaches the host.
    let own = SocketAddr::new(IpAddr::V4(xlb_lab::lab::LB_CLIENT_V4), 2222);
    let name = r
        .lab
        .client_ns()
        .enter(|| client::http_get(own, T))
        .expect("the balancer host's own service");
    assert_eq!(name, "lb-host");

    assert!(r.xlb.is_running(), "xlb still running:\n{}", log_of(&r));
}

#[test]
fn long_lived_tcp_stream_is_intact() {
    if skip() {
        return;
    }
    let mut r = start("xlbt-stream").expect("lab");
    let echo = SocketAddr::new(IpAddr::V4(VIP_V4), 7000);
    let bytes = r
        .lab
        .client_ns()
        .enter(|| client::echo_stream(echo, Duration::from_secs(3), 16 * 1024))
        .expect("3 s echo stream through the VIP, every byte verified");
    assert!(bytes > 1_000_000, "only {bytes} bytes echoed in 3 s");
    assert!(r.xlb.is_running(), "xlb still running:\n{}", log_of(&r));
}
