//! The lab itself, with plain kernel routing and no xlb. Needs root (skipped otherwise).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use xlb_lab::client::{self, Request};
use xlb_lab::lab::{self, Lab};
use xlb_lab::Netns;

fn lab_bin() -> PathBuf {
    std::env::var_os("XLB_LAB_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_xlb-lab").into())
}

fn root() -> bool {
    let root = xlb_lab::is_root();
    if !root {
        eprintln!("skipped: needs root (network namespaces)");
    }
    root
}

fn ns_with_prefix(prefix: &str) -> Vec<String> {
    Netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// The client reaches every backend's own address through the lb namespace acting as a plain
/// router: v4 TCP (HTTP), v4 UDP, v6 TCP, and a verified echo stream.
#[test]
fn lab_routes_without_xlb() {
    if !root() {
        return;
    }
    const PREFIX: &str = "xlbt-lab";
    let lab = Lab::new(PREFIX, 3).unwrap();
    assert_eq!(
        lab.namespace_names(),
        [
            "xlbt-lab-client",
            "xlbt-lab-lb",
            "xlbt-lab-sw",
            "xlbt-lab-b1",
            "xlbt-lab-b2",
            "xlbt-lab-b3"
        ]
    );
    // Nothing of the lab lives in the root namespace.
    let root_links = String::from_utf8(
        std::process::Command::new("ip")
            .args(["-o", "link"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    for iface in ["veth-client", "veth-backends", "uplink"] {
        assert!(!root_links.contains(iface), "{iface} in the root namespace");
    }
    let fwd = lab
        .lb_ns()
        .exec(["cat", "/proc/sys/net/ipv4/ip_forward"])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&fwd.stdout).trim(), "1");

    let servers = lab
        .start_backend_servers(&lab_bin(), &[8080, 8081], &[5353], &[7007])
        .unwrap();
    let t = Duration::from_secs(3);
    lab.client_ns().enter(|| {
        for i in 1..=lab.n_backends() {
            let name = lab::backend_name(i);
            let v4 = lab.backend_v4(i).into();
            let v6 = lab.backend_v6(i).into();
            for port in [8080, 8081] {
                let got = client::http_get(SocketAddr::new(v4, port), t).unwrap();
                assert_eq!(got, name, "v4 TCP {port}");
            }
            assert_eq!(
                client::udp_request(SocketAddr::new(v4, 5353), t).unwrap(),
                name,
                "v4 UDP"
            );
            assert_eq!(
                client::http_get(SocketAddr::new(v6, 8080), t).unwrap(),
                name,
                "v6 TCP"
            );
            assert_eq!(
                client::udp_request(SocketAddr::new(v6, 5353), t).unwrap(),
                name,
                "v6 UDP"
            );
            // Same explicit source port twice in a row.
            for _ in 0..2 {
                let got = client::http_get_from(SocketAddr::new(v4, 8080), 40_000, t).unwrap();
                assert_eq!(got, name, "from port 40000");
            }
            let n = client::echo_stream(
                SocketAddr::new(v4, 7007),
                Duration::from_millis(300),
                16_384,
            )
            .unwrap();
            assert!(n > 0);
            let n =
                client::echo_stream(SocketAddr::new(v6, 7007), Duration::from_millis(300), 1_000)
                    .unwrap();
            assert!(n > 0);
        }
        // The VIPs exist nowhere without xlb.
        assert!(client::http_get(
            SocketAddr::new(lab.vip_v4().into(), 80),
            Duration::from_millis(500)
        )
        .is_err());

        let targets: Vec<Request> = (1..=lab.n_backends())
            .map(|i| Request::Http(SocketAddr::new(lab.backend_v4(i).into(), 8080)))
            .collect();
        let counts = client::spread(&targets, 30, t).unwrap();
        assert_eq!(counts.len(), 3, "{counts:?}");
        assert!(counts.values().all(|&c| c == 10), "{counts:?}");
    });

    // Health switch of one backend, seen from the client.
    let b2 = SocketAddr::new(lab.backend_v4(2).into(), 8080);
    lab.client_ns().enter(|| {
        let health = || {
            client::http_request(b2, "GET", "/health", None, t)
                .unwrap()
                .status
        };
        assert_eq!(health(), 200);
        client::http_post(b2, "/health/fail", t).unwrap();
        assert_eq!(health(), 503);
        client::http_post(b2, "/health/ok", t).unwrap();
        assert_eq!(health(), 200);
    });

    drop(servers);
    drop(lab);
    assert!(ns_with_prefix("xlbt-lab-").is_empty());
}

/// Namespace guards: exec errors carry stderr, enter runs code inside, drop and cleanup_stale
/// remove namespaces and kill what runs in them.
#[test]
fn netns_guards_and_cleanup() {
    if !root() {
        return;
    }
    let ns = Netns::new("xlbt-ns-one").unwrap();
    let err = ns.exec(["ip", "link", "set", "nope0", "up"]).unwrap_err();
    assert!(format!("{err:#}").contains("nope0"), "{err:#}");
    let out = ns.exec(["ip", "-o", "link"]).unwrap();
    let links = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(links.lines().count(), 1, "{links}"); // only lo
    ns.exec(["ip", "link", "set", "lo", "up"]).unwrap();
    // Sockets made inside belong to the namespace, wherever they are used later.
    let listener = ns.enter(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let at = listener.local_addr().unwrap();
    assert!(
        std::net::TcpStream::connect(at).is_err(),
        "reached {at} from the root namespace"
    );
    let conn = ns.enter(|| std::net::TcpStream::connect(at).unwrap());
    let (_peer, from) = listener.accept().unwrap();
    assert_eq!(from, conn.local_addr().unwrap());

    let mut child = ns.spawn("sleep", ["30"]).unwrap();
    assert!(child.is_running());
    // The child joins the namespace when `ip netns exec` has run in it: wait for that
    // (bounded), then it is the one process inside.
    let want = vec![child.id() as i32];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut pids = ns.pids().unwrap();
    while pids != want && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        pids = ns.pids().unwrap();
    }
    assert_eq!(pids, want);
    child.stop().unwrap();
    assert!(!child.is_running());

    // A leftover: a namespace with a process inside and no guard.
    std::mem::forget(Netns::new("xlbt-ns-stale").unwrap());
    let orphan = Netns::new("xlbt-ns-stale2").unwrap();
    let mut sleeper = orphan.spawn("sleep", ["30"]).unwrap();
    std::mem::forget(orphan);
    let mut gone = Lab::cleanup_stale("xlbt-ns-stale").unwrap();
    gone.sort();
    assert_eq!(gone, ["xlbt-ns-stale", "xlbt-ns-stale2"]);
    assert!(sleeper
        .wait_timeout(Duration::from_secs(5))
        .unwrap()
        .is_some());

    drop(ns);
    assert!(ns_with_prefix("xlbt-ns-").is_empty());

    // A panic inside enter reaches the caller.
    let ns = Netns::new("xlbt-ns-panic").unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ns.enter(|| panic!("inside"));
    }));
    assert!(r.is_err());
    drop(ns);
    assert!(ns_with_prefix("xlbt-ns-").is_empty());
}
