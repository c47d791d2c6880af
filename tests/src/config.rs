//! xlb configurations for the lab.

/// The configuration of `cargo xtask demo` for a lab with 3 backends running the lab servers on
/// HTTP 8080 and UDP 5353 (xlb runs in the lb namespace): `web` (TCP 80) and `dns` (UDP 53) on
/// [`VIP_V4`](crate::lab::VIP_V4), `web6` (TCP 80) on [`VIP_V6`](crate::lab::VIP_V6).
pub const DEMO_CONFIG: &str = r#"[daemon]
interfaces = ["veth-client", "veth-backends"]
xdp_mode = "auto"
conntrack_size = 1000000

[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
protocol = "tcp"
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
port = 8080
backends = ["198.18.2.11", "198.18.2.12:8080", { address = "198.18.2.13", weight = 2 }]

[[target_group]]
name = "dns-servers"
backends = ["198.18.2.11:5353", "198.18.2.12:5353"]

[[target_group]]
name = "web-servers-v6"
port = 8080
backends = ["2001:db8:2::11", "[2001:db8:2::12]:8080"]
"#;
