//! The configuration's tests: every file is parsed with [`parse`] and checked for the value it
//! gives or the exact error (`FILE:LINE:COLUMN: field: message`). The helpers and the examples
//! shared by them are here; each file holds the tests of one part.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use lb_common::consts::{
    DEFAULT_CONNTRACK_SIZE, DEFAULT_MAX_SERVICES, DEFAULT_RING_SIZE, MAX_BACKENDS,
};

use super::parse::parse_addr_port;
use super::*;

mod daemon;
mod dsr;
mod groups;
mod health;
mod scaling;
mod services;
mod syntax;

const SAMPLE: &str = r#"[daemon]
interfaces = ["veth-client", "veth-backends"]   # where XDP attaches
xdp_mode = "auto"                               # auto | native | generic
conntrack_size = 1000000

[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
protocol = "tcp"                                # tcp | udp
target_group = "web-servers"

[[service]]
name = "dns"
vip = "198.18.100.1"
port = 53
protocol = "udp"
target_group = "dns-servers"

[[service]]
name = "web6"
vip = "2001:db8:100::1"
port = 80
protocol = "tcp"
target_group = "web-servers-v6"

[[target_group]]
name = "web-servers"
port = 8080                                     # backend port; defaults to the service port
backends = ["198.18.2.11", "198.18.2.12:8080", { address = "198.18.2.13", weight = 2 }]

[[target_group]]
name = "dns-servers"
backends = ["198.18.2.11:5353", "198.18.2.12:5353"]

[[target_group]]
name = "web-servers-v6"
port = 8080
backends = ["2001:db8:2::11", "[2001:db8:2::12]:8080"]
"#;

const MINIMAL: &str = "[daemon]\ninterfaces = [\"eth0\"]\n";

/// Parses `text`, expecting an error; returns (line, column, field, message).
fn fail(text: &str) -> (usize, usize, String, String) {
    match parse(text, "xlb.toml") {
        Ok(c) => panic!("expected an error, parsed {c:?}"),
        Err(ConfigError::Invalid {
            file,
            line,
            column,
            field,
            message,
        }) => {
            assert_eq!(file, "xlb.toml");
            (line, column, field, message)
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// `SAMPLE` with `from` replaced by `to` (which must occur exactly once).
fn sample_with(from: &str, to: &str) -> String {
    assert_eq!(SAMPLE.matches(from).count(), 1, "{from}");
    SAMPLE.replace(from, to)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn sample_parses() {
    let c = parse(SAMPLE, "xlb.toml").unwrap();
    assert_eq!(
        c.daemon,
        DaemonConfig {
            interfaces: vec!["veth-client".into(), "veth-backends".into()],
            xdp_mode: XdpMode::Auto,
            conntrack_size: 1_000_000,
            reverse_size: 1_000_000,
            maglev_table_size: DEFAULT_RING_SIZE,
            max_services: DEFAULT_MAX_SERVICES,
            hash_seed: None,
            api_socket: PathBuf::from("/run/xlb/xlb.sock"),
            pin_path: PathBuf::from("/sys/fs/bpf/xlb"),
            state_file: PathBuf::from("/run/xlb/state.json"),
            tcp_idle_timeout: Duration::from_secs(350),
            udp_idle_timeout: Duration::from_secs(120),
            announce: None,
            api_group: None,
            http_listen: None,
        }
    );
    assert_eq!(
        c.services,
        vec![
            ServiceConfig {
                name: "web".into(),
                vip: ip("198.18.100.1"),
                port: 80,
                protocol: Protocol::Tcp,
                target_group: "web-servers".into(),
                forwarding: Forwarding::Nat,
            },
            ServiceConfig {
                name: "dns".into(),
                vip: ip("198.18.100.1"),
                port: 53,
                protocol: Protocol::Udp,
                target_group: "dns-servers".into(),
                forwarding: Forwarding::Nat,
            },
            ServiceConfig {
                name: "web6".into(),
                vip: ip("2001:db8:100::1"),
                port: 80,
                protocol: Protocol::Tcp,
                target_group: "web-servers-v6".into(),
                forwarding: Forwarding::Nat,
            },
        ]
    );
    let be = |a: &str, port: Option<u16>, weight: u32| BackendConfig {
        address: ip(a),
        port,
        weight,
    };
    assert_eq!(
        c.target_groups,
        vec![
            TargetGroupConfig {
                name: "web-servers".into(),
                port: Some(8080),
                backends: vec![
                    be("198.18.2.11", None, 1),
                    be("198.18.2.12", Some(8080), 1),
                    be("198.18.2.13", None, 2),
                ],
                deregistration_delay: Duration::from_secs(300),
                all_unhealthy: AllUnhealthy::Drop,
                health_check: None,
                scaling: None,
                passive_health: None,
            },
            TargetGroupConfig {
                name: "dns-servers".into(),
                port: None,
                backends: vec![
                    be("198.18.2.11", Some(5353), 1),
                    be("198.18.2.12", Some(5353), 1),
                ],
                deregistration_delay: Duration::from_secs(300),
                all_unhealthy: AllUnhealthy::Drop,
                health_check: None,
                scaling: None,
                passive_health: None,
            },
            TargetGroupConfig {
                name: "web-servers-v6".into(),
                port: Some(8080),
                backends: vec![
                    be("2001:db8:2::11", None, 1),
                    be("2001:db8:2::12", Some(8080), 1),
                ],
                deregistration_delay: Duration::from_secs(300),
                all_unhealthy: AllUnhealthy::Drop,
                health_check: None,
                scaling: None,
                passive_health: None,
            },
        ]
    );
    // Resolved backend ports.
    for s in &c.services {
        let g = c.target_group(&s.target_group).unwrap();
        let ports: Vec<u16> = g
            .backends
            .iter()
            .map(|b| g.backend_port(b, s.port))
            .collect();
        let expected: &[u16] = match s.name.as_str() {
            "dns" => &[5353, 5353],
            "web" => &[8080, 8080, 8080],
            _ => &[8080, 8080],
        };
        assert_eq!(ports, expected, "{}", s.name);
    }
    assert_eq!(c.target_group("nope"), None);
    assert_eq!(Protocol::Tcp.number(), 6);
    assert_eq!(Protocol::Udp.number(), 17);
    assert_eq!(Protocol::Udp.to_string(), "udp");
    assert_eq!(XdpMode::Generic.to_string(), "generic");
}

#[test]
fn serializes_to_json() {
    let c = parse(SAMPLE, "x").unwrap();
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["daemon"]["xdp_mode"], "auto");
    assert_eq!(json["daemon"]["hash_seed"], serde_json::Value::Null);
    assert_eq!(json["services"][2]["vip"], "2001:db8:100::1");
    assert_eq!(json["services"][1]["protocol"], "udp");
    assert_eq!(json["target_groups"][0]["backends"][2]["weight"], 2);
    assert_eq!(
        json["target_groups"][0]["backends"][0]["port"],
        serde_json::Value::Null
    );
}

#[test]
fn load_reads_files() {
    let dir = std::env::temp_dir().join(format!("xlb-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("xlb.toml");
    std::fs::write(&path, SAMPLE).unwrap();
    assert_eq!(load(&path).unwrap(), parse(SAMPLE, "x").unwrap());
    std::fs::write(&path, "[daemon]\ninterfaces = [1]\n").unwrap();
    let e = load(&path).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}:2:15: daemon.interfaces[0]: ", path.display())),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(matches!(load(&path), Err(ConfigError::Io { .. })));
}

// ---- [daemon] paths and timeouts, target group drain and health checks ----

/// A target group of one backend, lines 3-5 after `MINIMAL`.
const GROUP: &str = "[[target_group]]\nname = \"g\"\nbackends = [\"10.0.0.1\"]\n";

/// `MINIMAL` + `GROUP` + `[target_group.health_check]` (line 6) + `body` (from line 7).
fn with_check(body: &str) -> String {
    format!("{MINIMAL}{GROUP}[target_group.health_check]\n{body}")
}

const FULL: &str = r#"[daemon]
interfaces = ["eth0"]
maglev_table_size = 1021
max_services = 4096
api_socket = "/run/xlb-test/api.sock"
pin_path = "/sys/fs/bpf/xlb-test"
state_file = "/var/lib/xlb/state.json"
tcp_idle_timeout = "1h 30m"
udp_idle_timeout = "45s"

[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
protocol = "tcp"
target_group = "web-servers"

[[target_group]]
name = "plain"
backends = ["198.18.2.21"]

[[target_group]]
name = "web-servers"
port = 8080
backends = ["198.18.2.11", "198.18.2.12:8081"]
deregistration_delay = "0s"
all_unhealthy = "fail_open"

[target_group.health_check]
protocol = "http"
path = "/ready?full=1"
port = 9000
interval = "250ms"
timeout = "250ms"
healthy_threshold = 1
unhealthy_threshold = 10
success_codes = "200, 204,300-399"

[[target_group]]
name = "dns-servers"
backends = ["198.18.2.11:5353"]
deregistration_delay = "1h"
health_check = { protocol = "tcp", port = 53, interval = "5m", timeout = "2m" }
"#;

#[test]
fn new_keys_defaults() {
    let c = parse(&format!("{MINIMAL}{GROUP}"), "x").unwrap();
    let d = &c.daemon;
    assert_eq!(d.api_socket, Path::new("/run/xlb/xlb.sock"));
    assert_eq!(d.pin_path, Path::new("/sys/fs/bpf/xlb"));
    assert_eq!(d.state_file, Path::new("/run/xlb/state.json"));
    assert_eq!(d.tcp_idle_timeout, Duration::from_secs(350));
    assert_eq!(d.udp_idle_timeout, Duration::from_secs(120));
    let g = &c.target_groups[0];
    assert_eq!(g.deregistration_delay, Duration::from_secs(300));
    assert_eq!(g.all_unhealthy, AllUnhealthy::Drop);
    assert_eq!(g.health_check, None);

    // An empty [target_group.health_check]: checked, with every default.
    let c = parse(&with_check(""), "x").unwrap();
    let hc = c.target_groups[0].health_check.as_ref().unwrap();
    assert_eq!(
        *hc,
        HealthCheckConfig {
            protocol: HealthProtocol::Http,
            path: "/health".into(),
            port: None,
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            healthy_threshold: 2,
            unhealthy_threshold: 5,
            success_codes: "200-399".parse().unwrap(),
        }
    );
    assert_eq!(*hc, HealthCheckConfig::default());
    assert_eq!(hc.success_codes.to_string(), "200-399");
    let c = parse(&format!("{MINIMAL}{GROUP}health_check = {{}}\n"), "x").unwrap();
    assert_eq!(
        c.target_groups[0].health_check,
        Some(HealthCheckConfig::default())
    );
}

#[test]
fn full_example_parses() {
    let c = parse(FULL, "xlb.toml").unwrap();
    assert_eq!(
        c.daemon,
        DaemonConfig {
            interfaces: vec!["eth0".into()],
            xdp_mode: XdpMode::Auto,
            conntrack_size: DEFAULT_CONNTRACK_SIZE,
            reverse_size: DEFAULT_CONNTRACK_SIZE,
            maglev_table_size: 1021,
            max_services: 4096,
            hash_seed: None,
            api_socket: PathBuf::from("/run/xlb-test/api.sock"),
            pin_path: PathBuf::from("/sys/fs/bpf/xlb-test"),
            state_file: PathBuf::from("/var/lib/xlb/state.json"),
            tcp_idle_timeout: Duration::from_secs(5400),
            udp_idle_timeout: Duration::from_secs(45),
            announce: None,
            api_group: None,
            http_listen: None,
        }
    );
    let [plain, web, dns] = &c.target_groups[..] else {
        panic!("{:?}", c.target_groups)
    };
    // [target_group.health_check] attaches to the [[target_group]] just above it only.
    assert_eq!(plain.health_check, None);
    assert_eq!(plain.deregistration_delay, DEFAULT_DEREGISTRATION_DELAY);
    assert_eq!(web.deregistration_delay, Duration::ZERO);
    assert_eq!(web.all_unhealthy, AllUnhealthy::FailOpen);
    let web_hc = web.health_check.as_ref().unwrap();
    assert_eq!(
        *web_hc,
        HealthCheckConfig {
            protocol: HealthProtocol::Http,
            path: "/ready?full=1".into(),
            port: Some(9000),
            interval: Duration::from_millis(250),
            timeout: Duration::from_millis(250),
            healthy_threshold: 1,
            unhealthy_threshold: 10,
            success_codes: "200,204,300-399".parse().unwrap(),
        }
    );
    assert_eq!(web_hc.success_codes.to_string(), "200,204,300-399");
    assert_eq!(dns.deregistration_delay, Duration::from_secs(3600));
    assert_eq!(dns.all_unhealthy, AllUnhealthy::Drop);
    assert_eq!(
        dns.health_check,
        Some(HealthCheckConfig {
            protocol: HealthProtocol::Tcp,
            port: Some(53),
            interval: Duration::from_secs(300),
            timeout: Duration::from_secs(120),
            ..HealthCheckConfig::default()
        })
    );
    // Dotted keys work too.
    let c = parse(
        &format!("{MINIMAL}{GROUP}health_check.protocol = \"tcp\"\n"),
        "x",
    )
    .unwrap();
    assert_eq!(
        c.target_groups[0].health_check.as_ref().unwrap().protocol,
        HealthProtocol::Tcp
    );
    // The largest MAGLEV map allowed: 2048 × 2 × 65521 <= 2^28.
    parse(
        &format!("{MINIMAL}max_services = 2048\nmaglev_table_size = 65521\n"),
        "x",
    )
    .unwrap();
}

#[test]
fn serializes_new_keys_to_json() {
    let json = serde_json::to_value(parse(FULL, "x").unwrap()).unwrap();
    let d = &json["daemon"];
    assert_eq!(d["api_socket"], "/run/xlb-test/api.sock");
    assert_eq!(d["pin_path"], "/sys/fs/bpf/xlb-test");
    assert_eq!(d["state_file"], "/var/lib/xlb/state.json");
    assert_eq!(d["tcp_idle_timeout"], "1h 30m");
    assert_eq!(d["udp_idle_timeout"], "45s");
    let g = &json["target_groups"];
    assert_eq!(g[0]["deregistration_delay"], "5m");
    assert_eq!(g[0]["all_unhealthy"], "drop");
    assert_eq!(g[0]["health_check"], serde_json::Value::Null);
    assert_eq!(g[1]["deregistration_delay"], "0s");
    assert_eq!(g[1]["all_unhealthy"], "fail_open");
    let hc = &g[1]["health_check"];
    assert_eq!(hc["protocol"], "http");
    assert_eq!(hc["path"], "/ready?full=1");
    assert_eq!(hc["port"], 9000);
    assert_eq!(hc["interval"], "250ms");
    assert_eq!(hc["timeout"], "250ms");
    assert_eq!(hc["healthy_threshold"], 1);
    assert_eq!(hc["unhealthy_threshold"], 10);
    assert_eq!(hc["success_codes"], "200,204,300-399");
    assert_eq!(g[2]["health_check"]["protocol"], "tcp");
    assert_eq!(g[2]["health_check"]["interval"], "5m");
    // The defaults read back the way they are documented.
    let json = serde_json::to_value(parse(&with_check(""), "x").unwrap()).unwrap();
    assert_eq!(json["daemon"]["tcp_idle_timeout"], "5m 50s");
    assert_eq!(json["daemon"]["udp_idle_timeout"], "2m");
    assert_eq!(
        json["target_groups"][0]["health_check"]["port"],
        serde_json::Value::Null
    );
    assert_eq!(
        json["target_groups"][0]["health_check"]["success_codes"],
        "200-399"
    );
}

#[test]
fn module_doc_example_parses() {
    // The example at the top of config/mod.rs, with every section, is a valid configuration.
    let source = include_str!("../mod.rs");
    let doc: Vec<&str> = source
        .lines()
        .take_while(|l| l.starts_with("//!"))
        .map(|l| l.strip_prefix("//! ").unwrap_or(""))
        .collect();
    let start = doc.iter().position(|l| *l == "```toml").unwrap() + 1;
    let end = start + doc[start..].iter().position(|l| *l == "```").unwrap();
    let text = doc[start..end].join("\n");
    let c = parse(&text, "doc").unwrap();
    let g = &c.target_groups[0];
    assert!(g.health_check.is_some());
    let s = g.scaling.as_ref().unwrap();
    assert_eq!((s.min, s.max, s.desired), (2, 10, 2));
    assert_eq!(s.policies.len(), 2);
    assert_eq!(s.schedules.len(), 1);
    assert_eq!(c.daemon.api_group.as_deref(), Some("xlb"));
    assert_eq!(c.alerts.len(), 1);
}
