//! The control API's JSON bodies, read the way the routes read them
//! (`xlb::api::body_request`) and validated the way the daemon validates them (the `State`
//! calls `daemon.rs` makes for each request), on arbitrary bytes: never panics; a group
//! never holds two members at the same address and port, and the data path's desired state
//! can still be computed.
//!
//! Input: requests, one a line: the route (`a` add, `r` remove, `d` drain, `w` weight,
//! `s` scale; other bytes pick one by value), the group (`0`-`4` by value: the four groups of
//! the config below, then a missing one), then the body. Lines apply in order to one state.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use xlb::{
    api::{body_request, BodyRoute},
    config::Config,
    model::{BackendSource, Request},
    state::State,
};

const CONFIG: &str = r#"
[daemon]
interfaces = ["eth0"]
maglev_table_size = 1021

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
name = "dns"
vip = "198.18.100.1"
port = 53
protocol = "udp"
target_group = "auto"

[[target_group]]
name = "web"
port = 8080
backends = ["198.18.2.11", "198.18.2.12:8081", { address = "198.18.2.13", weight = 2 }]
deregistration_delay = "0s"

[target_group.health_check]
protocol = "http"
path = "/health"

[[target_group]]
name = "web6"
backends = ["2001:db8:2::11", "[2001:db8:2::12]:8080"]

[[target_group]]
name = "auto"
port = 5353
backends = ["198.18.2.21"]

[target_group.scaling]
min = 1
max = 10
scale_out_command = "true"

[[target_group.scaling.policy]]
type = "target_tracking"
metric = "new_flows_per_second_per_backend"
target = 100

[[target_group]]
name = "spare"
backends = []
"#;

const GROUPS: [&str; 5] = ["web", "web6", "auto", "spare", "missing"];

static BASE: LazyLock<Config> =
    LazyLock::new(|| xlb::config::parse(CONFIG, "fuzz.toml").expect("the fuzz config is valid"));

/// At most this many requests per input, so that one input stays fast.
const MAX_REQUESTS: usize = 16;

fn route(b: u8) -> BodyRoute {
    match b {
        b'a' => BodyRoute::AddBackend,
        b'r' => BodyRoute::RemoveBackend,
        b'd' => BodyRoute::DrainBackend,
        b'w' => BodyRoute::SetWeight,
        b's' => BodyRoute::Scale,
        other => [
            BodyRoute::AddBackend,
            BodyRoute::RemoveBackend,
            BodyRoute::DrainBackend,
            BodyRoute::SetWeight,
            BodyRoute::Scale,
        ][usize::from(other) % 5],
    }
}

fuzz_target!(|data: &[u8]| {
    let mut state = State::new(BASE.clone());
    for line in data.split(|&b| b == b'\n').take(MAX_REQUESTS) {
        let [r, g, body @ ..] = line else {
            continue;
        };
        let group = GROUPS[usize::from(g.wrapping_sub(b'0')) % GROUPS.len()].to_string();
        let request = match body_request(route(*r), group, body) {
            Ok(request) => request,
            Err(message) => {
                assert!(
                    message.starts_with("missing JSON body")
                        || message.starts_with("invalid JSON body"),
                    "{message}"
                );
                continue;
            }
        };
        // What `Daemon::handle` does with each request (without the data path).
        let _ = match request {
            Request::AddBackend { group, body } => {
                state.add_backend(&group, &body.address, body.weight, BackendSource::Api)
            }
            Request::RemoveBackend { group, body } => state.remove_backend(&group, &body.address),
            Request::DrainBackend { group, body } => {
                state.drain_backend(&group, &body.address, "drained by API")
            }
            Request::SetWeight { group, body } => {
                state.set_weight(&group, &body.address, body.weight)
            }
            Request::Scale { group, body } => state.scale(&group, body.desired),
            other => panic!("a body route made {other:?}"),
        };
    }
    for (name, g) in &state.groups {
        for (i, m) in g.members.iter().enumerate() {
            let port = m.port.or(g.cfg.port);
            assert!(
                !g.members[..i]
                    .iter()
                    .any(|o| o.addr == m.addr && o.port.or(g.cfg.port) == port),
                "{name}: two members at {} port {port:?}",
                m.addr
            );
        }
    }
    let _ = state.desired();
});
