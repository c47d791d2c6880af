//! The TOML configuration file: parsing, defaults and validation.
//!
//! ```toml
//! [daemon]
//! interfaces = ["eth0"]        # required
//! xdp_mode = "auto"            # auto | native | generic
//! conntrack_size = 1000000
//! reverse_size = 1000000       # the reverse-NAT table; defaults to conntrack_size
//! maglev_table_size = 65537    # a prime
//! max_services = 64            # max_services × 2 × maglev_table_size <= 2^28
//! hash_seed = 12345            # optional
//! api_socket = "/run/xlb/xlb.sock"      # control API (unix socket)
//! pin_path = "/sys/fs/bpf/xlb"          # absolute; where maps are pinned (on bpffs)
//! state_file = "/run/xlb/state.json"    # absolute
//! tcp_idle_timeout = "350s"    # 1s..7d: a TCP flow idle this long is forgotten
//! udp_idle_timeout = "120s"    # 1s..7d: the same for UDP
//! api_group = "xlb"            # optional: its members may read the API; changes stay root's
//! http_listen = "127.0.0.1:9470"        # optional: GET /metrics and the status page
//!
//! # Optional: a fleet of nodes; announce the VIPs this node can serve through BIRD, which
//! # exports the routes xlb keeps in a kernel table of its own.
//! [daemon.announce]
//! via = "bird"                 # required
//! table = 100                  # 1..2^32-1, not 253-255: xlb's kernel routing table
//! bird_socket = "/run/bird/bird.ctl"   # only read, for `xlb status`
//! require_healthy = true       # announce a VIP only with a healthy backend
//! drain_timeout = "300s"       # 0s..1d: `xlb node drain` is drained after this at the latest
//! drain_quiet = "5s"           # 1s..1h: ... or once no packet to a service arrived this long
//!
//! [[service]]
//! name = "web"
//! vip = "198.18.100.1"
//! port = 80
//! protocol = "tcp"             # tcp | udp
//! target_group = "web-servers"
//! forwarding = "nat"           # nat | dsr (direct server return: the backends answer clients)
//! # dsr_encap = "gue"          # with dsr: l2 | ipip | gue
//! # dsr_source_prefix = "198.18.99.0/24"   # ipip, gue: outer sources, picked by flow hash
//! # dsr_gue_port = 6080        # gue: UDP port
//!
//! [[target_group]]
//! name = "web-servers"
//! port = 8080                  # optional: backend port, defaults to the service port
//! backends = ["198.18.2.11", "198.18.2.12:8080", { address = "198.18.2.13", weight = 2 }]
//! deregistration_delay = "300s" # 0s..1h: how long a removed backend keeps its flows
//! all_unhealthy = "drop"       # drop | fail_open: what to do when no backend is healthy
//!
//! # Optional (without it the group is not health checked); it belongs to the
//! # [[target_group]] just above. Also accepted inline: health_check = { protocol = "tcp" }.
//! [target_group.health_check]
//! protocol = "http"            # tcp (connect) | http (GET)
//! path = "/health"             # http only
//! port = 8080                  # defaults to the target group's port, else the backend's
//! interval = "30s"             # 100ms..5m
//! timeout = "5s"               # 10ms..2m, at most the interval
//! healthy_threshold = 2        # 1..10 consecutive successes to become healthy
//! unhealthy_threshold = 5      # 1..10 consecutive failures to become unhealthy
//! success_codes = "200-399"    # http only: "200", "200-299", "200,204,300-399"
//! target = "address"           # address | vip (dsr only: the VIP through the encapsulation)
//!
//! # Optional (without it only the active checks judge the backends; needs a health_check):
//! # what the data path sees of handshakes and answers marks backends down at once.
//! [target_group.passive_health]
//! refused_threshold = 3        # 1..1000 consecutive refused handshakes (RST / ICMP unreachable)
//! unanswered_threshold = 3     # 1..1000 consecutive sampled SYNs without a SYN-ACK
//! unanswered_timeout = "1s"    # 10ms..1m: a sampled SYN unanswered this long counts
//! window = "10s"               # 100ms..1h: older refusals are forgotten; UDP is judged over it
//! redispatch = false           # hold back a refusal from a backend marked down (SYN retried)
//! udp_unanswered_share = 0.9   # (0,1]: UDP: share of new flows unanswered that ejects
//! min_udp_flows = 20           # 1..1000000: UDP: flows in the window before judging
//! base_ejection = "30s"        # 1s..1h: UDP: the n-th consecutive ejection lasts n times this
//! max_ejection = "300s"        # base_ejection..1d: UDP: the longest ejection
//! max_ejection_percent = 50    # 0..100: UDP: at most this share of the group ejected at once
//!
//! # Optional (without it the group does not scale): an auto scaling group behind the
//! # [[target_group]] above. Also accepted inline (scaling = { max = 4, ... }) and as dotted keys.
//! [target_group.scaling]
//! min = 2                      # 0..1000, default 1
//! max = 10                     # required; min <= desired <= max <= 1000
//! desired = 2                  # the size to start at; default min
//! # Commands run with /bin/sh -c, with XLB_TARGET_GROUP and XLB_REASON in their environment.
//! scale_out_command = "/usr/local/bin/launch-backend"   # gets XLB_COUNT; prints the new
//!                              # backend(s), one ADDR[:PORT] a line; required when max is more
//!                              # than the backends listed in the group
//! scale_in_command = "/usr/local/bin/terminate-backend" # optional; gets XLB_BACKEND once drained
//! hook_timeout = "60s"         # 1s..1h: a hook still running then is killed and has failed
//! cooldown = "300s"            # 0s..1d: after a scaling action, before the next one the same way
//! warmup = "60s"               # 0s..1h: a new backend's load is left out of the averages
//! grace_period = "120s"        # 1s..1h: how long a launched backend may take to turn healthy
//! metric_command = "/usr/local/bin/report"   # optional; gets XLB_BACKENDS, prints lines
//!                              # "ADDR:PORT NAME=VALUE ..." (reported metrics)
//! metric_interval = "15s"      # 1s..1h: how often metric_command runs
//!
//! [[target_group.scaling.policy]]   # any number of them; when they disagree, scaling out wins
//! type = "target_tracking"     # keep the metric near the target, changing capacity in proportion
//! metric = "new_flows_per_second_per_backend"
//! target = 100                 # > 0, integer or float
//! disable_scale_in = false     # true: only ever scale out
//!
//! [[target_group.scaling.policy]]
//! type = "step"                # a threshold held for a while, then add or remove backends
//! metric = "backend_cpu"
//! scale_out = { above = 0.70, for = "5m", add = 1 }     # for: 0s..1d; add: 1..1000, default 1
//! scale_in = { below = 0.30, for = "10m", remove = 1 }  # below < above; one rule or both
//!
//! [[target_group.scaling.schedule]] # at each time cron names (UTC): set desired, min and/or max
//! cron = "0 8 * * MON-FRI"     # 5 fields, or 6 with seconds first; @daily and the like
//! desired = 6                  # 0..1000 each, at least one of desired, min, max
//!
//! [[alert]]                    # any number (see config/alerts.rs for every key)
//! name = "backend-down"
//! when = "backend_unhealthy"   # also all_unhealthy, group_at_max, hook_failed,
//!                              # drop_rate_above, reload_failed
//! group = "web-servers"        # optional filter (or service = "web")
//! command = "/usr/local/bin/page-oncall"   # event as JSON on stdin; or webhook = "http://..."
//! repeat_interval = "1h"       # at most one firing notification per backend per hour
//! ```
//!
//! Metrics: `new_flows_per_second_per_backend`, `packets_per_second_per_backend`,
//! `bytes_per_second_per_backend` and `active_flows_per_backend` are measured by the data path;
//! `backend_cpu` (reported as `cpu`) and any other name (`[a-z][a-z0-9_]{0,63}`) are numbers the
//! backends report, in the JSON body of an http health check or through `metric_command`.
//!
//! Durations are strings in `humantime`'s syntax: `"30s"`, `"5m"`, `"1h 30m"`, `"250ms"`;
//! they serialize back the same way (`"5m 50s"`).
//!
//! Every error names the file, the 1-based line and column, and the dotted path of the field
//! (`service[1].port`, `target_group[0].backends[2].weight`, ...).
//!
//! The file is first read into a tree of values that keeps the byte span of every key and value
//! (the `toml` crate's `Spanned` protocol), then checked by hand, so that unknown keys, wrong
//! types and bad values all point at the exact place.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono::NaiveDate;
use croner::errors::CronError;
use croner::parser::{CronParser, Seconds, Year};

use croner::Cron;
use lb_common::consts::{
    DEFAULT_CONNTRACK_SIZE, DEFAULT_MAX_SERVICES, DEFAULT_RING_SIZE, MAX_BACKENDS, PROTO_TCP,
    PROTO_UDP, SLOTS_PER_SERVICE,
};
use serde::{Serialize, Serializer};

use crate::endpoint::check_unicast;

use crate::maglev::is_prime;

mod alerts;
pub use alerts::{
    AlertConfig, AlertSink, AlertWhen, DEFAULT_ALERT_TIMEOUT, DEFAULT_REPEAT_INTERVAL,
};

/// Smallest allowed `conntrack_size`.
pub const MIN_CONNTRACK_SIZE: u32 = 1024;
/// Largest allowed `conntrack_size`.
pub const MAX_CONNTRACK_SIZE: u32 = 100_000_000;
/// Smallest allowed `maglev_table_size`.
pub const MIN_MAGLEV_TABLE_SIZE: u32 = 1021;
/// Largest allowed `maglev_table_size`.
pub const MAX_MAGLEV_TABLE_SIZE: u32 = 4_000_037;
/// The Maglev table must have more than this many slots per backend of the largest group.
pub const MAGLEV_SLOTS_PER_BACKEND: u32 = 100;
/// Largest allowed `max_services`.
pub const MAX_MAX_SERVICES: u32 = 4096;
/// Largest allowed backend weight.
pub const MAX_WEIGHT: u32 = 10_000;
/// Longest interface name Linux accepts (`IFNAMSIZ - 1`).
const MAX_IFNAME_LEN: usize = 15;
/// Most entries of the `MAGLEV` map (`max_services` × 2 × `maglev_table_size`): 1 GiB of u32.
pub const MAX_MAGLEV_ENTRIES: u64 = 1 << 28;
// With the most services, some allowed (prime) table size still fits the MAGLEV map.
const _: () = assert!(
    MAX_MAGLEV_ENTRIES / (SLOTS_PER_SERVICE as u64 * MAX_MAX_SERVICES as u64)
        > MIN_MAGLEV_TABLE_SIZE as u64
);
/// Longest path a unix socket address holds (`sun_path` less its NUL).
const MAX_SOCKET_PATH_LEN: usize = 107;

/// Default `api_socket`.
pub const DEFAULT_API_SOCKET: &str = "/run/xlb/xlb.sock";
/// Default `pin_path`.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/xlb";
/// Default `state_file`.
pub const DEFAULT_STATE_FILE: &str = "/run/xlb/state.json";
/// Default `tcp_idle_timeout` (as AWS NLB).
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(350);
/// Default `udp_idle_timeout`.
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Shortest allowed `tcp_idle_timeout` / `udp_idle_timeout`.
pub const MIN_IDLE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest allowed `tcp_idle_timeout` / `udp_idle_timeout` (7 days).
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default `deregistration_delay` (as AWS).
pub const DEFAULT_DEREGISTRATION_DELAY: Duration = Duration::from_secs(300);
/// Longest allowed `deregistration_delay`.
pub const MAX_DEREGISTRATION_DELAY: Duration = Duration::from_secs(3600);
/// Default `health_check.path`.
pub const DEFAULT_HEALTH_PATH: &str = "/health";
/// Default `health_check.interval`.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(30);
/// Shortest allowed `health_check.interval`.
pub const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(100);
/// Longest allowed `health_check.interval`.
pub const MAX_HEALTH_INTERVAL: Duration = Duration::from_secs(300);
/// Default `health_check.timeout`.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Shortest allowed `health_check.timeout`.
pub const MIN_HEALTH_TIMEOUT: Duration = Duration::from_millis(10);
/// Longest allowed `health_check.timeout` (and never more than the interval).
pub const MAX_HEALTH_TIMEOUT: Duration = Duration::from_secs(120);
/// Default `health_check.healthy_threshold`.
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
/// Default `health_check.unhealthy_threshold`.
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 5;
/// Largest allowed `healthy_threshold` / `unhealthy_threshold` (the smallest is 1).
pub const MAX_HEALTH_THRESHOLD: u32 = 10;
/// Default `health_check.success_codes` (what [`SuccessCodes::default`] displays as).
pub const DEFAULT_SUCCESS_CODES: &str = "200-399";
/// The HTTP status codes `success_codes` may name.
const HTTP_CODES: std::ops::RangeInclusive<u16> = 100..=599;
/// The hint in duration errors.
const DURATION_EXAMPLES: &str = "e.g. \"30s\", \"5m\", \"250ms\"";
/// Default `scaling.min`.
pub const DEFAULT_SCALING_MIN: u32 = 1;
/// Largest `scaling.min`, `max` and `desired` (and those of a schedule), and largest step
/// `add` / `remove`.
pub const MAX_SCALING_CAPACITY: u32 = 1000;
/// Default `scaling.cooldown`.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(300);
/// Longest allowed `scaling.cooldown` (1 day).
pub const MAX_COOLDOWN: Duration = Duration::from_secs(24 * 3600);
/// Default `scaling.warmup`.
pub const DEFAULT_WARMUP: Duration = Duration::from_secs(60);
/// Longest allowed `scaling.warmup`.
pub const MAX_WARMUP: Duration = Duration::from_secs(3600);
/// Default `scaling.grace_period`.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(120);
/// Default `scaling.hook_timeout`.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `scaling.metric_interval`.
pub const DEFAULT_METRIC_INTERVAL: Duration = Duration::from_secs(15);
/// Shortest allowed `grace_period`, `hook_timeout` and `metric_interval`.
pub const MIN_SCALING_PERIOD: Duration = Duration::from_secs(1);
/// Longest allowed `grace_period`, `hook_timeout` and `metric_interval`.
pub const MAX_SCALING_PERIOD: Duration = Duration::from_secs(3600);
/// Longest allowed `for` of a step rule (1 day).
pub const MAX_STEP_HOLD: Duration = Duration::from_secs(24 * 3600);
/// Default `passive_health.refused_threshold`.
pub const DEFAULT_REFUSED_THRESHOLD: u32 = 3;
/// Default `passive_health.unanswered_threshold`.
pub const DEFAULT_UNANSWERED_THRESHOLD: u32 = 3;
/// Largest `refused_threshold` / `unanswered_threshold`.
pub const MAX_PASSIVE_THRESHOLD: u32 = 1000;
/// Default `passive_health.unanswered_timeout`.
pub const DEFAULT_UNANSWERED_TIMEOUT: Duration = Duration::from_secs(1);
/// Default `passive_health.window`.
pub const DEFAULT_PASSIVE_WINDOW: Duration = Duration::from_secs(10);
/// Default `passive_health.udp_unanswered_share`.
pub const DEFAULT_UDP_UNANSWERED_SHARE: f64 = 0.9;
/// Default `passive_health.min_udp_flows`.
pub const DEFAULT_MIN_UDP_FLOWS: u32 = 20;
/// Default `passive_health.base_ejection`.
pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
/// Default `passive_health.max_ejection`.
pub const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);
/// Default `passive_health.max_ejection_percent`.
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 50;
/// Longest name of a metric the backends report (`[a-z][a-z0-9_]{0,63}`).
pub const MAX_METRIC_NAME_LEN: usize = 64;

/// The whole configuration, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub services: Vec<ServiceConfig>,
    pub target_groups: Vec<TargetGroupConfig>,
    /// `[[alert]]` rules.
    pub alerts: Vec<AlertConfig>,
}

/// `[daemon]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DaemonConfig {
    /// Interfaces the XDP program attaches to (required, non-empty, no duplicates).
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    /// Entries of the connection tracking LRU.
    pub conntrack_size: u32,
    /// Entries of the reverse-NAT LRU (`REVERSE`: flows of backend addresses several
    /// services share); defaults to `conntrack_size`.
    pub reverse_size: u32,
    /// Entries of each service's Maglev table (a prime).
    pub maglev_table_size: u32,
    /// Services the maps are sized for.
    pub max_services: u32,
    /// Seed of the flow hash; `None`: the daemon picks one.
    pub hash_seed: Option<u32>,
    /// Unix socket of the control API (at most 107 bytes).
    pub api_socket: PathBuf,
    /// Absolute directory (on bpffs) where the maps and programs are pinned.
    pub pin_path: PathBuf,
    /// Absolute path of the file the daemon keeps its state in.
    pub state_file: PathBuf,
    /// A TCP flow idle this long is forgotten by connection tracking (1s-7d).
    #[serde(serialize_with = "serialize_duration")]
    pub tcp_idle_timeout: Duration,
    /// The same for UDP (1s-7d).
    #[serde(serialize_with = "serialize_duration")]
    pub udp_idle_timeout: Duration,
    /// `[daemon.announce]`: announce the VIPs to routers through BIRD (a fleet of nodes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub announce: Option<AnnounceConfig>,
    /// A group whose members may read the API (the socket gets it, mode 0660); changes stay
    /// root's.
    pub api_group: Option<String>,
    /// Where `GET /metrics` (Prometheus) and the status page are served; off when None.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<std::net::SocketAddr>,
}

/// `[daemon.announce]`: how this node makes routers send it the VIPs' traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnnounceConfig {
    /// Who announces: BIRD (the only one), which exports what xlb puts in `table`.
    pub via: AnnounceVia,
    /// The kernel routing table xlb keeps one route per VIP it can serve in (1 - 2^32-1,
    /// not 253-255); BIRD's kernel protocol learns them from there.
    pub table: u32,
    /// BIRD's control socket: only read, to report in `xlb status` whether BIRD runs.
    pub bird_socket: PathBuf,
    /// Announce a VIP only while one of its services has a healthy backend.
    pub require_healthy: bool,
    /// `xlb node drain`: report drained after this long at the latest (0s - 1d).
    #[serde(serialize_with = "serialize_duration")]
    pub drain_timeout: Duration,
    /// `xlb node drain`: report drained once no packet to a service arrived this long
    /// (1s - 1h), or once no flow is open.
    #[serde(serialize_with = "serialize_duration")]
    pub drain_quiet: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AnnounceVia {
    Bird,
}

/// `[daemon.announce] table` by default.
pub const DEFAULT_ANNOUNCE_TABLE: u32 = 100;
/// The kernel's own tables: default, main, local.
const RESERVED_TABLES: [u32; 3] = [253, 254, 255];
/// Debian's BIRD 2 control socket.
pub const DEFAULT_BIRD_SOCKET: &str = "/run/bird/bird.ctl";
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_DRAIN_QUIET: Duration = Duration::from_secs(5);

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode if the driver supports it, else generic.
    Auto,
    /// Driver mode only.
    Native,
    /// Generic (SKB) mode.
    Generic,
}

impl XdpMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            XdpMode::Auto => "auto",
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[[service]]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceConfig {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// Name of a `[[target_group]]`.
    pub target_group: String,
    /// How client packets reach the backends (`forwarding`, `dsr_*`).
    #[serde(skip_serializing_if = "Forwarding::is_nat")]
    pub forwarding: Forwarding,
}

/// `forwarding` of a service: NAT (the default) or direct server return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "lowercase", tag = "mode")]
pub enum Forwarding {
    /// Destination rewritten to the backend, replies rewritten back through xlb.
    #[default]
    Nat,
    /// Direct server return: packets reach the backend with the VIP as destination; the
    /// backend answers the client itself.
    Dsr(DsrConfig),
}

impl Forwarding {
    pub fn is_nat(&self) -> bool {
        matches!(self, Forwarding::Nat)
    }

    pub fn dsr(&self) -> Option<&DsrConfig> {
        match self {
            Forwarding::Nat => None,
            Forwarding::Dsr(d) => Some(d),
        }
    }
}

/// The `dsr_*` keys of a service with `forwarding = "dsr"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct DsrConfig {
    /// `dsr_encap`
    pub encap: DsrEncap,
    /// `dsr_source_prefix` (`ipip`, `gue`): the outer source addresses, chosen within it by
    /// the flow hash (at most its 16 lowest host bits vary).
    pub source_prefix: Option<Prefix>,
    /// `dsr_gue_port` (`gue`): the UDP destination port.
    pub gue_port: u16,
}

/// `dsr_encap`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DsrEncap {
    /// MACs rewritten only: backends on a directly connected link.
    L2,
    /// IPv4-in-IPv4 / IPv6-in-IPv6.
    Ipip,
    /// IP in GUE (UDP).
    Gue,
}

impl DsrEncap {
    pub fn as_str(&self) -> &'static str {
        match self {
            DsrEncap::L2 => "l2",
            DsrEncap::Ipip => "ipip",
            DsrEncap::Gue => "gue",
        }
    }
}

impl fmt::Display for DsrEncap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An address prefix (`198.18.99.0/24`, `2001:db8:99::/112`); host bits are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// Host bits that vary with the flow hash: those of the prefix, at most 16.
    pub fn hash_bits(&self) -> u32 {
        let max = if self.addr.is_ipv4() { 32 } else { 128 };
        (max - u32::from(self.len)).min(16)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl std::str::FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s.split_once('/').ok_or_else(|| {
            format!("\"{s}\" is not a prefix (address/length, e.g. \"198.18.99.0/24\")")
        })?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("\"{a}\" in \"{s}\" is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len: u8 = match l.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => {
                return Err(format!(
                    "prefix length \"{l}\" in \"{s}\" must be 0..={max}"
                ))
            }
        };
        Ok(Prefix { addr, len })
    }
}

impl Serialize for Prefix {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number (6 / 17).
    pub fn number(&self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[[target_group]]`
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetGroupConfig {
    pub name: String,
    /// Backend port for backends that do not give one; `None`: the service port.
    pub port: Option<u16>,
    /// May be empty: the services using the group then drop their traffic.
    pub backends: Vec<BackendConfig>,
    /// How long a backend that leaves the group keeps serving its existing flows (0s-1h).
    #[serde(serialize_with = "serialize_duration")]
    pub deregistration_delay: Duration,
    /// What new flows do when no backend is healthy.
    pub all_unhealthy: AllUnhealthy,
    /// `None`: the group is not health checked (every backend counts as healthy).
    pub health_check: Option<HealthCheckConfig>,
    /// `None`: the group does not scale.
    pub scaling: Option<ScalingConfig>,
    /// `None`: no passive health (only the active checks judge the backends).
    pub passive_health: Option<PassiveHealthConfig>,
}

/// `[target_group.passive_health]`: what the data path sees of the backends' handshakes and
/// answers marks them down at once (TCP) or ejects them for a while (UDP).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PassiveHealthConfig {
    /// Consecutive refused handshakes (RST or ICMP unreachable answering a SYN) that mark a
    /// backend down (1-1000).
    pub refused_threshold: u32,
    /// Consecutive sampled SYNs left unanswered that mark a backend down (1-1000).
    pub unanswered_threshold: u32,
    /// A sampled SYN without a SYN-ACK within this is unanswered (10ms-1m).
    #[serde(serialize_with = "serialize_duration")]
    pub unanswered_timeout: Duration,
    /// Refusals and unanswered SYNs older than this are forgotten; UDP flows are judged
    /// over this (100ms-1h).
    #[serde(serialize_with = "serialize_duration")]
    pub window: Duration,
    /// Hold back a refusal from a backend marked down, so that the client's SYN
    /// retransmission goes to another backend.
    pub redispatch: bool,
    /// UDP: the share (0-1] of new flows in the window left unanswered that ejects a backend.
    pub udp_unanswered_share: f64,
    /// UDP: new flows in the window needed before a backend is judged (1-1000000).
    pub min_udp_flows: u32,
    /// UDP: the first ejection's length; the n-th consecutive lasts n times this (1s-1h).
    #[serde(serialize_with = "serialize_duration")]
    pub base_ejection: Duration,
    /// UDP: the longest ejection (at least `base_ejection`, at most 1d).
    #[serde(serialize_with = "serialize_duration")]
    pub max_ejection: Duration,
    /// UDP: at most this percentage of the group's backends is ejected at once (0-100).
    pub max_ejection_percent: u32,
}

impl Default for PassiveHealthConfig {
    /// The values of an empty `[target_group.passive_health]`.
    fn default() -> Self {
        PassiveHealthConfig {
            refused_threshold: DEFAULT_REFUSED_THRESHOLD,
            unanswered_threshold: DEFAULT_UNANSWERED_THRESHOLD,
            unanswered_timeout: DEFAULT_UNANSWERED_TIMEOUT,
            window: DEFAULT_PASSIVE_WINDOW,
            redispatch: false,
            udp_unanswered_share: DEFAULT_UDP_UNANSWERED_SHARE,
            min_udp_flows: DEFAULT_MIN_UDP_FLOWS,
            base_ejection: DEFAULT_BASE_EJECTION,
            max_ejection: DEFAULT_MAX_EJECTION,
            max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT,
        }
    }
}

/// `[target_group.scaling]`: an auto scaling group behind the target group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScalingConfig {
    pub min: u32,
    pub max: u32,
    /// Capacity to start with (min <= desired <= max).
    pub desired: u32,
    /// Run with `/bin/sh -c`; env XLB_TARGET_GROUP, XLB_REASON, XLB_COUNT; prints one
    /// `ADDR[:PORT]` per line for the backends it launched.
    pub scale_out_command: Option<String>,
    /// Run with `/bin/sh -c` after a backend is drained; env XLB_TARGET_GROUP, XLB_REASON,
    /// XLB_BACKEND (`ADDR:PORT`).
    pub scale_in_command: Option<String>,
    /// A hook still running after this is killed and counts as failed (default 60s).
    #[serde(serialize_with = "serialize_duration")]
    pub hook_timeout: Duration,
    /// After a scaling action, before the next one of the same direction (default 300s).
    #[serde(serialize_with = "serialize_duration")]
    pub cooldown: Duration,
    /// A new backend's load is left out of the group's averages this long (default 60s).
    #[serde(serialize_with = "serialize_duration")]
    pub warmup: Duration,
    /// How long a launched backend may take to pass its health checks (default 120s).
    #[serde(serialize_with = "serialize_duration")]
    pub grace_period: Duration,
    /// Optional command run every `metric_interval` with env XLB_TARGET_GROUP and
    /// XLB_BACKENDS (space-separated `ADDR:PORT`); prints lines `ADDR:PORT NAME=VALUE ...`.
    pub metric_command: Option<String>,
    #[serde(serialize_with = "serialize_duration")]
    pub metric_interval: Duration,
    pub policies: Vec<PolicyConfig>,
    pub schedules: Vec<ScheduleConfig>,
}

/// What a policy watches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub enum Metric {
    /// New flows per second, averaged over the group's in-service backends.
    NewFlowsPerSecondPerBackend,
    /// Packets (both directions) per second, per backend.
    PacketsPerSecondPerBackend,
    /// Bytes (both directions) per second, per backend.
    BytesPerSecondPerBackend,
    /// Open flows, per backend.
    ActiveFlowsPerBackend,
    /// New flows per second to the whole group (step policies only: a group total does not
    /// fall when capacity grows).
    NewFlowsPerSecond,
    /// Packets (both directions) per second through the whole group (step policies only).
    PacketsPerSecond,
    /// Bytes (both directions) per second through the whole group (step policies only).
    BytesPerSecond,
    /// Open flows of the whole group (step policies only).
    ActiveFlows,
    /// `cpu` as the backends report it (health check JSON body or metric_command), averaged.
    BackendCpu,
    /// Any other number the backends report under this name, averaged.
    Custom(String),
}

impl Metric {
    pub fn name(&self) -> &str {
        match self {
            Self::NewFlowsPerSecondPerBackend => "new_flows_per_second_per_backend",
            Self::PacketsPerSecondPerBackend => "packets_per_second_per_backend",
            Self::BytesPerSecondPerBackend => "bytes_per_second_per_backend",
            Self::ActiveFlowsPerBackend => "active_flows_per_backend",
            Self::NewFlowsPerSecond => "new_flows_per_second",
            Self::PacketsPerSecond => "packets_per_second",
            Self::BytesPerSecond => "bytes_per_second",
            Self::ActiveFlows => "active_flows",
            Self::BackendCpu => "backend_cpu",
            Self::Custom(n) => n,
        }
    }

    /// The key backends report it under, for reported metrics (`cpu` for backend_cpu).
    pub fn reported_key(&self) -> Option<&str> {
        match self {
            Self::BackendCpu => Some("cpu"),
            Self::Custom(n) => Some(n),
            _ => None,
        }
    }
}

impl From<Metric> for String {
    fn from(m: Metric) -> String {
        m.name().to_string()
    }
}

impl Metric {
    /// The metrics the data path measures, and `backend_cpu`.
    pub const BUILT_IN: [Metric; 9] = [
        Metric::NewFlowsPerSecondPerBackend,
        Metric::PacketsPerSecondPerBackend,
        Metric::BytesPerSecondPerBackend,
        Metric::ActiveFlowsPerBackend,
        Metric::NewFlowsPerSecond,
        Metric::PacketsPerSecond,
        Metric::BytesPerSecond,
        Metric::ActiveFlows,
        Metric::BackendCpu,
    ];

    /// A total over the group, rather than a per-backend figure.
    pub fn is_group_total(&self) -> bool {
        matches!(
            self,
            Self::NewFlowsPerSecond
                | Self::PacketsPerSecond
                | Self::BytesPerSecond
                | Self::ActiveFlows
        )
    }
}

impl FromStr for Metric {
    /// Why the name is not a metric.
    type Err = String;

    /// A built-in name, else any name matching `[a-z][a-z0-9_]{0,63}` as [`Metric::Custom`].
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(m) = Self::BUILT_IN.iter().find(|m| m.name() == s) {
            return Ok(m.clone());
        }
        let custom = s.len() <= MAX_METRIC_NAME_LEN
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if custom {
            return Ok(Self::Custom(s.to_owned()));
        }
        Err(format!(
            "unknown metric {s:?}: expected one of {}, or the name of a number the backends \
             report (lowercase letters, digits and _, starting with a letter, at most \
             {MAX_METRIC_NAME_LEN} characters)",
            Self::BUILT_IN
                .iter()
                .map(Metric::name)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PolicyConfig {
    /// Keep the metric near `target` by changing capacity in proportion.
    TargetTracking {
        metric: Metric,
        target: f64,
        /// Only scale out (default false).
        disable_scale_in: bool,
    },
    /// Threshold held for a duration, then add or remove N.
    Step {
        metric: Metric,
        scale_out: Option<StepRule>,
        scale_in: Option<StepRule>,
    },
}

/// `{ above = 0.70, for = "5m", add = 1 }` or `{ below = 0.30, for = "10m", remove = 1 }`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRule {
    /// The `above` (scale_out) or `below` (scale_in) value.
    pub threshold: f64,
    #[serde(rename = "for", serialize_with = "serialize_duration")]
    pub hold: Duration,
    /// The `add` or `remove` count (>= 1).
    pub change: u32,
}

/// `[[target_group.scaling.schedule]]`: at each time the cron expression names, set desired
/// (and optionally min and max).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScheduleConfig {
    /// 5 fields (`min hour dom month dow`) or 6 with seconds first; UTC.
    pub cron: String,
    pub desired: Option<u32>,
    pub min: Option<u32>,
    pub max: Option<u32>,
}

impl TargetGroupConfig {
    /// The port `b` receives traffic on for a service on `service_port`: the backend's own
    /// port, else the group's, else the service's.
    pub fn backend_port(&self, b: &BackendConfig, service_port: u16) -> u16 {
        b.port.or(self.port).unwrap_or(service_port)
    }
}

/// `all_unhealthy`: what a target group does when none of its backends is healthy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AllUnhealthy {
    /// Drop new flows (the default).
    #[default]
    Drop,
    /// Send new flows to all backends as if they were healthy.
    FailOpen,
}

impl AllUnhealthy {
    pub fn as_str(&self) -> &'static str {
        match self {
            AllUnhealthy::Drop => "drop",
            AllUnhealthy::FailOpen => "fail_open",
        }
    }
}

impl fmt::Display for AllUnhealthy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[target_group.health_check]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheckConfig {
    pub protocol: HealthProtocol,
    /// Path of the GET (http only; kept at its default for tcp).
    pub path: String,
    /// `None`: the target group's port, else the backend's (see [`Self::port_for`]).
    pub port: Option<u16>,
    /// Time between the starts of two checks of a backend (100ms-5m).
    #[serde(serialize_with = "serialize_duration")]
    pub interval: Duration,
    /// A check not answered within this fails (10ms-2m, at most `interval`).
    #[serde(serialize_with = "serialize_duration")]
    pub timeout: Duration,
    /// Consecutive successes for a backend to become healthy (1-10).
    pub healthy_threshold: u32,
    /// Consecutive failures for a backend to become unhealthy (1-10).
    pub unhealthy_threshold: u32,
    /// HTTP statuses that count as success (http only; kept at its default for tcp).
    pub success_codes: SuccessCodes,
    /// What the check connects to: the backend's own address (the default), or, for groups
    /// behind DSR services only, the VIP through the service's encapsulation.
    pub target: HealthTarget,
}

/// `health_check.target`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthTarget {
    /// The backend's own address and the check port.
    #[default]
    Address,
    /// DSR only: the VIP and the check port, sent to the backend as the (first) service
    /// using the group sends its clients' packets, so that the check reaches the socket that
    /// serves the VIP.
    Vip,
}

impl Default for HealthCheckConfig {
    /// The values of an empty `[target_group.health_check]`.
    fn default() -> Self {
        HealthCheckConfig {
            protocol: HealthProtocol::Http,
            path: DEFAULT_HEALTH_PATH.to_owned(),
            port: None,
            interval: DEFAULT_HEALTH_INTERVAL,
            timeout: DEFAULT_HEALTH_TIMEOUT,
            healthy_threshold: DEFAULT_HEALTHY_THRESHOLD,
            unhealthy_threshold: DEFAULT_UNHEALTHY_THRESHOLD,
            success_codes: SuccessCodes::default(),
            target: HealthTarget::Address,
        }
    }
}

impl HealthCheckConfig {
    /// The port to check a backend on: the check's own port, else the target group's
    /// (`group_port`), else the port the backend receives traffic on (`backend_port`).
    pub fn port_for(&self, group_port: Option<u16>, backend_port: u16) -> u16 {
        self.port.or(group_port).unwrap_or(backend_port)
    }
}

/// `health_check.protocol`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthProtocol {
    /// A TCP connect that succeeds.
    Tcp,
    /// An HTTP/1.1 `GET path` answered with one of `success_codes` (the default).
    #[default]
    Http,
}

impl HealthProtocol {
    pub fn as_str(&self) -> &'static str {
        match self {
            HealthProtocol::Tcp => "tcp",
            HealthProtocol::Http => "http",
        }
    }
}

impl fmt::Display for HealthProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `health_check.success_codes`: HTTP status codes and ascending ranges of them, e.g. `"200"`,
/// `"200-299"` or `"200,204,300-399"` (codes 100-599, no overlaps). Displays and serializes
/// as the canonical string (no spaces, `"204-204"` as `"204"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SuccessCodes {
    /// Inclusive ranges, in the order written.
    ranges: Vec<(u16, u16)>,
}

impl SuccessCodes {
    /// The codes as inclusive ranges.
    pub fn ranges(&self) -> Vec<std::ops::RangeInclusive<u16>> {
        self.ranges.iter().map(|&(a, b)| a..=b).collect()
    }

    /// Whether `code` is one of the codes.
    pub fn matches(&self, code: u16) -> bool {
        self.ranges
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&code))
    }

    /// One range as written back: `"204"` or `"200-299"`.
    fn show(lo: u16, hi: u16) -> String {
        if lo == hi {
            lo.to_string()
        } else {
            format!("{lo}-{hi}")
        }
    }
}

impl Default for SuccessCodes {
    /// `"200-399"`.
    fn default() -> Self {
        SuccessCodes {
            ranges: vec![(200, 399)],
        }
    }
}

impl FromStr for SuccessCodes {
    /// Why the string is not a list of codes.
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Err(
                "must not be empty; give codes such as \"200\", \"200-299\" or \"200,204,300-399\""
                    .to_owned(),
            );
        }
        let code = |c: &str| -> Result<u16, String> {
            let c = c.trim();
            if c.is_empty() || !c.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "\"{c}\" is not an HTTP status code (expected codes and ranges such as \
                     \"200,204,300-399\")"
                ));
            }
            match c.parse::<u16>() {
                Ok(v) if HTTP_CODES.contains(&v) => Ok(v),
                _ => Err(format!(
                    "{c} is out of range ({}-{})",
                    HTTP_CODES.start(),
                    HTTP_CODES.end()
                )),
            }
        };
        let mut ranges: Vec<(u16, u16)> = Vec::new();
        for item in s.split(',') {
            let (lo, hi) = match item.split_once('-') {
                None => {
                    let c = code(item)?;
                    (c, c)
                }
                Some((a, b)) => {
                    let (lo, hi) = (code(a)?, code(b)?);
                    if lo > hi {
                        return Err(format!(
                            "range {lo}-{hi} is not ascending (write {hi}-{lo})"
                        ));
                    }
                    (lo, hi)
                }
            };
            if let Some(&(a, b)) = ranges.iter().find(|&&(a, b)| lo <= b && a <= hi) {
                return Err(format!(
                    "{} overlaps {}",
                    Self::show(lo, hi),
                    Self::show(a, b)
                ));
            }
            ranges.push((lo, hi));
        }
        Ok(SuccessCodes { ranges })
    }
}

impl fmt::Display for SuccessCodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(lo, hi)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(&Self::show(lo, hi))?;
        }
        Ok(())
    }
}

impl Serialize for SuccessCodes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Durations serialize as `humantime` strings (`"5m 50s"`), like they are written.
fn serialize_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

/// A duration as the errors show it.
fn show_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// One entry of `backends`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendConfig {
    pub address: IpAddr,
    /// `None`: the group's port, else the service's.
    pub port: Option<u16>,
    /// Relative share of new flows (1-10000, default 1).
    pub weight: u32,
}

impl Config {
    pub fn target_group(&self, name: &str) -> Option<&TargetGroupConfig> {
        self.target_groups.iter().find(|g| g.name == name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {field}: {message}")]
    Invalid {
        file: String,
        /// 1-based.
        line: usize,
        /// 1-based, in characters.
        column: usize,
        /// Dotted path, e.g. `service[0].vip`.
        field: String,
        message: String,
    },
}

/// Reads and parses the file at `path`; errors name it as `path` is written.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        file: file.clone(),
        source,
    })?;
    parse(&text, &file)
}

/// Parses and validates `text`; `file` is the name used in errors.
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
    let cx = Cx { text, file };
    let root: Node = toml::from_str(text).map_err(|e| cx.syntax_error(&e))?;
    let root = At {
        node: &root,
        pos: 0,
        path: String::new(),
    };
    let root = root.table(&cx, "a table")?;
    root.allow(&cx, &["daemon", "service", "target_group", "alert"])?;

    let (daemon, dpos) = parse_daemon(&cx, &root)?;

    let mut services = Vec::new();
    let mut spos = Vec::new();
    if let Some(list) = root.get("service") {
        for at in list.tables(&cx, "service")? {
            let (s, p) = parse_service(&cx, &at)?;
            services.push(s);
            spos.push(p);
        }
    }

    let mut target_groups = Vec::new();
    let mut gpos = Vec::new();
    if let Some(list) = root.get("target_group") {
        if let Val::Table(entries) = &list.node.val {
            if let Some(e) = entries.iter().find(|e| {
                e.key == "health_check" || e.key == "scaling" || e.key == "passive_health"
            }) {
                return Err(list.err(
                    &cx,
                    format!(
                        "[target_group.{}] belongs to the [[target_group]] above it; \
                         there is none",
                        e.key
                    ),
                ));
            }
        }
        for at in list.tables(&cx, "target_group")? {
            let (g, p) = parse_target_group(&cx, &at)?;
            target_groups.push(g);
            gpos.push(p);
        }
    }

    let alerts = alerts::parse_alerts(&cx, &root, &services, &target_groups)?;
    let config = Config {
        daemon,
        services,
        target_groups,
        alerts,
    };
    validate(&cx, &config, &dpos, &spos, &gpos)?;
    Ok(config)
}

// ---------------------------------------------------------------------------------------------
// Positions of the parsed fields, for the checks that look at several of them.

struct DaemonPos {
    maglev_table_size: Option<usize>,
    max_services: Option<usize>,
}

struct ServicePos {
    table: usize,
    name: usize,
    vip: usize,
    target_group: usize,
}

struct GroupPos {
    table: usize,
    name: usize,
    backends: Vec<usize>,
    /// `health_check.target`, when given.
    hc_target: Option<usize>,
}

fn parse_daemon(cx: &Cx<'_>, root: &Table<'_>) -> Result<(DaemonConfig, DaemonPos), ConfigError> {
    let Some(at) = root.get("daemon") else {
        return Err(cx.err(
            0,
            "daemon.interfaces",
            "missing: add a [daemon] section with interfaces = [\"<interface>\", ...]",
        ));
    };
    let t = at.table(cx, "a table ([daemon])")?;
    t.allow(
        cx,
        &[
            "interfaces",
            "xdp_mode",
            "conntrack_size",
            "reverse_size",
            "maglev_table_size",
            "max_services",
            "hash_seed",
            "api_socket",
            "pin_path",
            "state_file",
            "tcp_idle_timeout",
            "udp_idle_timeout",
            "announce",
            "api_group",
            "http_listen",
        ],
    )?;

    let list = t.require(cx, "interfaces")?;
    let items = list.array(cx)?;
    if items.is_empty() {
        return Err(list.err(cx, "must name at least one interface"));
    }
    let mut interfaces: Vec<String> = Vec::new();
    for item in &items {
        let name = item.str(cx)?;
        if name.is_empty() {
            return Err(item.err(cx, "interface name is empty"));
        }
        if name.len() > MAX_IFNAME_LEN {
            return Err(item.err(
                cx,
                format!("interface name \"{name}\" is longer than {MAX_IFNAME_LEN} bytes"),
            ));
        }
        if name == "."
            || name == ".."
            || name.contains(['/', ':'])
            || name.contains(char::is_whitespace)
        {
            return Err(item.err(cx, format!("\"{name}\" is not a valid interface name")));
        }
        if let Some(first) = interfaces.iter().position(|i| i == name) {
            return Err(item.err(
                cx,
                format!("duplicate interface \"{name}\" (already daemon.interfaces[{first}])"),
            ));
        }
        interfaces.push(name.to_owned());
    }

    let xdp_mode = match t.get("xdp_mode") {
        None => XdpMode::Auto,
        Some(at) => match at.str(cx)? {
            "auto" => XdpMode::Auto,
            "native" => XdpMode::Native,
            "generic" => XdpMode::Generic,
            other => {
                return Err(at.err(
                    cx,
                    format!(
                        "unknown mode \"{other}\" (expected \"auto\", \"native\" or \"generic\")"
                    ),
                ))
            }
        },
    };

    let conntrack_size = match t.get("conntrack_size") {
        None => DEFAULT_CONNTRACK_SIZE,
        Some(at) => at.int_in(
            cx,
            i64::from(MIN_CONNTRACK_SIZE),
            i64::from(MAX_CONNTRACK_SIZE),
        )? as u32,
    };

    let reverse_size = match t.get("reverse_size") {
        None => conntrack_size,
        Some(at) => at.int_in(
            cx,
            i64::from(MIN_CONNTRACK_SIZE),
            i64::from(MAX_CONNTRACK_SIZE),
        )? as u32,
    };

    let (maglev_table_size, maglev_pos) = match t.get("maglev_table_size") {
        None => (DEFAULT_RING_SIZE, None),
        Some(at) => {
            let m = at.int_in(
                cx,
                i64::from(MIN_MAGLEV_TABLE_SIZE),
                i64::from(MAX_MAGLEV_TABLE_SIZE),
            )? as u32;
            if !is_prime(m) {
                return Err(at.err(
                    cx,
                    format!(
                        "{m} is not prime; Maglev needs a prime table size \
                         (nearest primes: {} and {})",
                        prev_prime(m),
                        next_prime(m)
                    ),
                ));
            }
            (m, Some(at.pos))
        }
    };

    let (max_services, max_services_pos) = match t.get("max_services") {
        None => (DEFAULT_MAX_SERVICES, None),
        Some(at) => (
            at.int_in(cx, 1, i64::from(MAX_MAX_SERVICES))? as u32,
            Some(at.pos),
        ),
    };

    let hash_seed = match t.get("hash_seed") {
        None => None,
        Some(at) => Some(at.int_in(cx, 0, i64::from(u32::MAX))? as u32),
    };

    // The MAGLEV map holds two tables per service.
    let tables = u64::from(max_services) * u64::from(SLOTS_PER_SERVICE);
    let entries = tables * u64::from(maglev_table_size);
    if entries > MAX_MAGLEV_ENTRIES {
        // Above MIN_MAGLEV_TABLE_SIZE (asserted at compile time), so a prime fits.
        let max_table = MAX_MAGLEV_ENTRIES / tables;
        let max_max_services =
            MAX_MAGLEV_ENTRIES / (u64::from(SLOTS_PER_SERVICE) * u64::from(maglev_table_size));
        let message = format!(
            "max_services × {SLOTS_PER_SERVICE} × maglev_table_size = {max_services} × \
             {SLOTS_PER_SERVICE} × {maglev_table_size} = {entries} MAGLEV map entries \
             (two Maglev tables per service), more than the limit of {MAX_MAGLEV_ENTRIES} \
             (2^28 u32 entries, 1 GiB); use a maglev_table_size of at most {max_table} \
             (a prime such as {}) or a max_services of at most {max_max_services}",
            prev_prime(max_table as u32 + 1)
        );
        return Err(match (maglev_pos, max_services_pos) {
            (Some(p), _) => cx.err(p, "daemon.maglev_table_size", message),
            (None, Some(p)) => cx.err(p, "daemon.max_services", message),
            // Not reached: the defaults fit.
            (None, None) => cx.err(t.pos, "daemon.maglev_table_size", message),
        });
    }

    let api_socket_at = t.get("api_socket");
    let api_socket = match &api_socket_at {
        None => PathBuf::from(DEFAULT_API_SOCKET),
        Some(at) => {
            let p = at.file_path(cx, false)?;
            if p.len() > MAX_SOCKET_PATH_LEN {
                return Err(at.err(
                    cx,
                    format!(
                        "\"{p}\" is {} bytes long; a unix socket path holds at most \
                         {MAX_SOCKET_PATH_LEN}",
                        p.len()
                    ),
                ));
            }
            PathBuf::from(p)
        }
    };

    let pin_path = match t.get("pin_path") {
        None => PathBuf::from(DEFAULT_PIN_PATH),
        Some(at) => PathBuf::from(at.path_str(cx, true)?),
    };

    let state_file_at = t.get("state_file");
    let state_file = match &state_file_at {
        None => PathBuf::from(DEFAULT_STATE_FILE),
        Some(at) => PathBuf::from(at.file_path(cx, true)?),
    };
    if state_file == api_socket {
        // The defaults differ, so at least one of the two is set.
        let (at, other) = match (&state_file_at, &api_socket_at) {
            (Some(at), Some(api)) => (at, format!("daemon.api_socket (line {})", cx.line(api.pos))),
            (Some(at), None) => (at, "the default daemon.api_socket".to_owned()),
            (None, Some(at)) => (at, "the default daemon.state_file".to_owned()),
            (None, None) => unreachable!("the default api_socket and state_file differ"),
        };
        return Err(at.err(
            cx,
            format!(
                "\"{}\" is also {other}; the socket and the state file need paths of their own",
                state_file.display()
            ),
        ));
    }

    let tcp_idle_timeout = match t.get("tcp_idle_timeout") {
        None => DEFAULT_TCP_IDLE_TIMEOUT,
        Some(at) => at.duration_in(cx, MIN_IDLE_TIMEOUT, MAX_IDLE_TIMEOUT)?,
    };
    let udp_idle_timeout = match t.get("udp_idle_timeout") {
        None => DEFAULT_UDP_IDLE_TIMEOUT,
        Some(at) => at.duration_in(cx, MIN_IDLE_TIMEOUT, MAX_IDLE_TIMEOUT)?,
    };

    let api_group = match t.get("api_group") {
        None => None,
        Some(at) => Some(api_group(cx, &at)?),
    };

    let http_listen = match t.get("http_listen") {
        None => None,
        Some(at) => Some(parse_http_listen(cx, &at)?),
    };

    Ok((
        DaemonConfig {
            api_group,
            interfaces,
            xdp_mode,
            conntrack_size,
            reverse_size,
            maglev_table_size,
            max_services,
            hash_seed,
            api_socket,
            pin_path,
            state_file,
            tcp_idle_timeout,
            udp_idle_timeout,
            announce: parse_announce(cx, &t)?,
            http_listen,
        },
        DaemonPos {
            maglev_table_size: maglev_pos,
            max_services: max_services_pos,
        },
    ))
}

/// `[daemon.announce]`: the fleet's route announcements (see [`AnnounceConfig`]).
fn parse_announce(cx: &Cx<'_>, daemon: &Table<'_>) -> Result<Option<AnnounceConfig>, ConfigError> {
    let Some(at) = daemon.get("announce") else {
        return Ok(None);
    };
    let t = at.table(cx, "a table ([daemon.announce])")?;
    t.allow(
        cx,
        &[
            "via",
            "table",
            "bird_socket",
            "require_healthy",
            "drain_timeout",
            "drain_quiet",
        ],
    )?;
    let via = t.require(cx, "via")?;
    match via.str(cx)? {
        "bird" => {}
        other => {
            return Err(via.err(
                cx,
                format!("unknown announcer \"{other}\" (expected \"bird\")"),
            ))
        }
    }
    let table = match t.get("table") {
        None => DEFAULT_ANNOUNCE_TABLE,
        Some(at) => {
            let v = at.int_in(cx, 1, i64::from(u32::MAX))? as u32;
            if RESERVED_TABLES.contains(&v) {
                return Err(at.err(
                    cx,
                    format!(
                        "table {v} is one of the kernel's own (253 default, 254 main, 255 local); \
                         give xlb a table of its own"
                    ),
                ));
            }
            v
        }
    };
    let bird_socket = match t.get("bird_socket") {
        None => PathBuf::from(DEFAULT_BIRD_SOCKET),
        Some(at) => PathBuf::from(at.file_path(cx, true)?),
    };
    let require_healthy = match t.get("require_healthy") {
        None => true,
        Some(at) => at.bool(cx)?,
    };
    let drain_timeout = match t.get("drain_timeout") {
        None => DEFAULT_DRAIN_TIMEOUT,
        Some(at) => at.duration_in(cx, Duration::ZERO, Duration::from_secs(86_400))?,
    };
    let drain_quiet = match t.get("drain_quiet") {
        None => DEFAULT_DRAIN_QUIET,
        Some(at) => at.duration_in(cx, Duration::from_secs(1), Duration::from_secs(3600))?,
    };
    Ok(Some(AnnounceConfig {
        via: AnnounceVia::Bird,
        table,
        bird_socket,
        require_healthy,
        drain_timeout,
        drain_quiet,
    }))
}

/// `daemon.api_group`: a group name as `groupadd` takes it (it is looked up when xlb starts).
fn api_group(cx: &Cx<'_>, at: &At<'_>) -> Result<String, ConfigError> {
    let name = at.name(cx)?;
    let ok = name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.starts_with('-');
    if !ok {
        return Err(at.err(
            cx,
            format!("\"{name}\" is not a group name (letters, digits, _ - . and at most 32)"),
        ));
    }
    Ok(name)
}

/// `http_listen = "ADDR:PORT"` (`[V6ADDR]:PORT` for IPv6): an IP address, not a name, and a
/// port from 1 to 65535.
fn parse_http_listen(cx: &Cx<'_>, at: &At<'_>) -> Result<std::net::SocketAddr, ConfigError> {
    let text = at.str(cx)?;
    let addr: std::net::SocketAddr = text.parse().map_err(|_| {
        at.err(
            cx,
            format!(
                "\"{text}\" is not an address and port such as \"127.0.0.1:9470\" or \
                 \"[::1]:9470\" (an IP address, not a host name)"
            ),
        )
    })?;
    if addr.port() == 0 {
        return Err(at.err(cx, "port 0: give the port to listen on (1 - 65535)"));
    }
    if addr.ip().is_multicast() {
        return Err(at.err(cx, format!("{} is a multicast address", addr.ip())));
    }
    Ok(addr)
}

fn parse_service(cx: &Cx<'_>, at: &At<'_>) -> Result<(ServiceConfig, ServicePos), ConfigError> {
    let t = at.table(cx, "a table")?;
    t.allow(
        cx,
        &[
            "name",
            "vip",
            "port",
            "protocol",
            "target_group",
            "forwarding",
            "dsr_encap",
            "dsr_source_prefix",
            "dsr_gue_port",
        ],
    )?;

    let name_at = t.require(cx, "name")?;
    let name = name_at.name(cx)?;

    let vip_at = t.require(cx, "vip")?;
    let vip_str = vip_at.str(cx)?;
    let vip: IpAddr = match vip_str.parse() {
        Ok(ip) => ip,
        Err(_) => {
            let hint = if parse_addr_port(vip_str).is_ok() {
                " (give the address alone; the port goes in port = N)"
            } else {
                ""
            };
            return Err(vip_at.err(cx, format!("\"{vip_str}\" is not an IP address{hint}")));
        }
    };
    check_unicast(vip).map_err(|m| vip_at.err(cx, m))?;

    let port = t.require(cx, "port")?.port(cx)?;

    let proto_at = t.require(cx, "protocol")?;
    let protocol = match proto_at.str(cx)? {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        other => {
            return Err(proto_at.err(
                cx,
                format!("unknown protocol \"{other}\" (expected \"tcp\" or \"udp\")"),
            ))
        }
    };

    let tg_at = t.require(cx, "target_group")?;
    let target_group = tg_at.name(cx)?;
    let forwarding = parse_forwarding(cx, &t, vip)?;

    Ok((
        ServiceConfig {
            name,
            vip,
            port,
            protocol,
            target_group,
            forwarding,
        },
        ServicePos {
            table: t.pos,
            name: name_at.pos,
            vip: vip_at.pos,
            target_group: tg_at.pos,
        },
    ))
}

/// A service's `forwarding` and `dsr_*` keys.
fn parse_forwarding(cx: &Cx<'_>, t: &Table<'_>, vip: IpAddr) -> Result<Forwarding, ConfigError> {
    let fwd_at = t.get("forwarding");
    let dsr = match &fwd_at {
        None => false,
        Some(at) => match at.str(cx)? {
            "nat" => false,
            "dsr" => true,
            other => {
                return Err(at.err(
                    cx,
                    format!("unknown forwarding \"{other}\" (expected \"nat\" or \"dsr\")"),
                ))
            }
        },
    };
    if !dsr {
        for key in ["dsr_encap", "dsr_source_prefix", "dsr_gue_port"] {
            if let Some(at) = t.get(key) {
                return Err(at.err(cx, format!("{key} applies only with forwarding = \"dsr\"")));
            }
        }
        return Ok(Forwarding::Nat);
    }
    let Some(encap_at) = t.get("dsr_encap") else {
        let message = "forwarding = \"dsr\" needs dsr_encap = \"l2\", \"ipip\" or \"gue\"";
        return Err(match &fwd_at {
            Some(at) => at.err(cx, message),
            None => t.err_here(cx, message),
        });
    };
    let encap = match encap_at.str(cx)? {
        "l2" => DsrEncap::L2,
        "ipip" => DsrEncap::Ipip,
        "gue" => DsrEncap::Gue,
        other => {
            return Err(encap_at.err(
                cx,
                format!("unknown dsr_encap \"{other}\" (expected \"l2\", \"ipip\" or \"gue\")"),
            ))
        }
    };
    let source_prefix = match t.get("dsr_source_prefix") {
        Some(at) if encap == DsrEncap::L2 => {
            return Err(at.err(
                cx,
                "dsr_source_prefix applies only to dsr_encap = \"ipip\" or \"gue\" \
                 (l2 keeps the client's packet as it is)",
            ))
        }
        Some(at) => {
            let p: Prefix = at.str(cx)?.parse().map_err(|m: String| at.err(cx, m))?;
            if p.addr.is_ipv4() != vip.is_ipv4() {
                return Err(at.err(
                    cx,
                    format!(
                        "dsr_source_prefix {p} is {} but the vip {vip} is {}: the outer header \
                         has the family of the inner one",
                        family(p.addr),
                        family(vip)
                    ),
                ));
            }
            Some(p)
        }
        None if encap == DsrEncap::L2 => None,
        None => {
            return Err(encap_at.err(
                cx,
                format!(
                    "dsr_encap = \"{encap}\" needs dsr_source_prefix (the outer source \
                     addresses, e.g. \"{}\")",
                    if vip.is_ipv4() {
                        "198.18.99.0/24"
                    } else {
                        "2001:db8:99::/112"
                    }
                ),
            ))
        }
    };
    let gue_port = match t.get("dsr_gue_port") {
        Some(at) if encap != DsrEncap::Gue => {
            return Err(at.err(cx, "dsr_gue_port applies only to dsr_encap = \"gue\""))
        }
        Some(at) => at.port(cx)?,
        None => lb_common::DEFAULT_GUE_PORT,
    };
    Ok(Forwarding::Dsr(DsrConfig {
        encap,
        source_prefix,
        gue_port,
    }))
}

fn parse_target_group(
    cx: &Cx<'_>,
    at: &At<'_>,
) -> Result<(TargetGroupConfig, GroupPos), ConfigError> {
    let t = at.table(cx, "a table")?;
    t.allow(
        cx,
        &[
            "name",
            "port",
            "backends",
            "deregistration_delay",
            "all_unhealthy",
            "health_check",
            "scaling",
            "passive_health",
        ],
    )?;

    let name_at = t.require(cx, "name")?;
    let name = name_at.name(cx)?;

    let port = match t.get("port") {
        None => None,
        Some(at) => Some(at.port(cx)?),
    };

    let mut backends = Vec::new();
    let mut positions = Vec::new();
    for item in t.require(cx, "backends")?.array(cx)? {
        backends.push(parse_backend(cx, &item)?);
        positions.push(item.pos);
    }

    let deregistration_delay = match t.get("deregistration_delay") {
        None => DEFAULT_DEREGISTRATION_DELAY,
        Some(at) => at.duration_in(cx, Duration::ZERO, MAX_DEREGISTRATION_DELAY)?,
    };

    let all_unhealthy = match t.get("all_unhealthy") {
        None => AllUnhealthy::default(),
        Some(at) => match at.str(cx)? {
            "drop" => AllUnhealthy::Drop,
            "fail_open" => AllUnhealthy::FailOpen,
            other => {
                return Err(at.err(
                    cx,
                    format!("unknown value \"{other}\" (expected \"drop\" or \"fail_open\")"),
                ))
            }
        },
    };

    let health_check = match t.get("health_check") {
        None => None,
        Some(at) => Some(parse_health_check(cx, &at)?),
    };
    let hc_target = t
        .get("health_check")
        .and_then(|at| at.table(cx, "").ok())
        .and_then(|h| h.get("target"))
        .map(|at| at.pos);

    let scaling = match t.get("scaling") {
        None => None,
        Some(at) => Some(parse_scaling(cx, &at, backends.len())?),
    };

    let passive_health = match t.get("passive_health") {
        None => None,
        Some(at) => {
            let ph = parse_passive_health(cx, &at)?;
            if health_check.is_none() {
                return Err(at.err(
                    cx,
                    "passive health marks backends down and only the active checks bring them \
                     back: add a [target_group.health_check] to this group",
                ));
            }
            Some(ph)
        }
    };

    Ok((
        TargetGroupConfig {
            name,
            port,
            backends,
            deregistration_delay,
            all_unhealthy,
            health_check,
            scaling,
            passive_health,
        },
        GroupPos {
            table: t.pos,
            name: name_at.pos,
            backends: positions,
            hc_target,
        },
    ))
}

/// `[target_group.health_check]` or `health_check = { ... }`.
fn parse_health_check(cx: &Cx<'_>, at: &At<'_>) -> Result<HealthCheckConfig, ConfigError> {
    let t = at.table(
        cx,
        "a table ([target_group.health_check] after the [[target_group]], \
         or health_check = { ... })",
    )?;
    t.allow(
        cx,
        &[
            "protocol",
            "path",
            "port",
            "interval",
            "timeout",
            "healthy_threshold",
            "unhealthy_threshold",
            "success_codes",
            "target",
        ],
    )?;
    let mut hc = HealthCheckConfig::default();

    if let Some(at) = t.get("target") {
        hc.target = match at.str(cx)? {
            "address" => HealthTarget::Address,
            "vip" => HealthTarget::Vip,
            other => {
                return Err(at.err(
                    cx,
                    format!("unknown target \"{other}\" (expected \"address\" or \"vip\")"),
                ))
            }
        };
    }

    if let Some(at) = t.get("protocol") {
        hc.protocol = match at.str(cx)? {
            "tcp" => HealthProtocol::Tcp,
            "http" => HealthProtocol::Http,
            other => {
                return Err(at.err(
                    cx,
                    format!("unknown protocol \"{other}\" (expected \"tcp\" or \"http\")"),
                ))
            }
        };
    }
    let http_only = |at: &At<'_>, key: &str| {
        if hc.protocol == HealthProtocol::Http {
            Ok(())
        } else {
            Err(at.err(
                cx,
                format!(
                    "{key} is only for http checks; this check's protocol is \"{}\"",
                    hc.protocol
                ),
            ))
        }
    };

    if let Some(at) = t.get("path") {
        http_only(&at, "path")?;
        let path = at.str(cx)?;
        if !path.starts_with('/') {
            return Err(at.err(cx, format!("\"{path}\" must start with /")));
        }
        if path.contains(char::is_whitespace) || path.contains(char::is_control) {
            return Err(at.err(
                cx,
                format!(
                    "{path:?} contains whitespace or a control character \
                     (percent-encode it, e.g. %20)"
                ),
            ));
        }
        hc.path = path.to_owned();
    }

    if let Some(at) = t.get("port") {
        hc.port = Some(at.port(cx)?);
    }

    let interval_at = t.get("interval");
    if let Some(at) = &interval_at {
        hc.interval = at.duration_in(cx, MIN_HEALTH_INTERVAL, MAX_HEALTH_INTERVAL)?;
    }
    let timeout_at = t.get("timeout");
    if let Some(at) = &timeout_at {
        hc.timeout = at.duration_in(cx, MIN_HEALTH_TIMEOUT, MAX_HEALTH_TIMEOUT)?;
    }
    if hc.timeout > hc.interval {
        let (interval, timeout) = (show_duration(hc.interval), show_duration(hc.timeout));
        // Point at the timeout when it is set, else at the interval (one of them is: the
        // defaults fit).
        return Err(match (&timeout_at, &interval_at) {
            (Some(at), _) => {
                let which = if interval_at.is_some() {
                    "the interval"
                } else {
                    "the default interval"
                };
                at.err(
                    cx,
                    format!(
                        "the timeout ({timeout}) must not be longer than {which} ({interval}): \
                         a check must end before the next one starts"
                    ),
                )
            }
            (None, Some(at)) => at.err(
                cx,
                format!(
                    "the interval ({interval}) must not be shorter than the default timeout \
                     ({timeout}): a check must end before the next one starts; \
                     set timeout to at most {interval}"
                ),
            ),
            (None, None) => unreachable!("the default timeout is shorter than the interval"),
        });
    }

    for (key, slot) in [
        ("healthy_threshold", &mut hc.healthy_threshold),
        ("unhealthy_threshold", &mut hc.unhealthy_threshold),
    ] {
        if let Some(at) = t.get(key) {
            *slot = at.int_in(cx, 1, i64::from(MAX_HEALTH_THRESHOLD))? as u32;
        }
    }

    if let Some(at) = t.get("success_codes") {
        http_only(&at, "success_codes")?;
        hc.success_codes = at.str(cx)?.parse().map_err(|m: String| at.err(cx, m))?;
    }

    Ok(hc)
}

/// `[target_group.passive_health]` or `passive_health = { ... }`.
fn parse_passive_health(cx: &Cx<'_>, at: &At<'_>) -> Result<PassiveHealthConfig, ConfigError> {
    let t = at.table(
        cx,
        "a table ([target_group.passive_health] after the [[target_group]], \
         or passive_health = { ... })",
    )?;
    t.allow(
        cx,
        &[
            "refused_threshold",
            "unanswered_threshold",
            "unanswered_timeout",
            "window",
            "redispatch",
            "udp_unanswered_share",
            "min_udp_flows",
            "base_ejection",
            "max_ejection",
            "max_ejection_percent",
        ],
    )?;
    let mut ph = PassiveHealthConfig::default();
    for (key, slot) in [
        ("refused_threshold", &mut ph.refused_threshold),
        ("unanswered_threshold", &mut ph.unanswered_threshold),
    ] {
        if let Some(at) = t.get(key) {
            *slot = at.int_in(cx, 1, i64::from(MAX_PASSIVE_THRESHOLD))? as u32;
        }
    }
    if let Some(at) = t.get("unanswered_timeout") {
        ph.unanswered_timeout =
            at.duration_in(cx, Duration::from_millis(10), Duration::from_secs(60))?;
    }
    if let Some(at) = t.get("window") {
        ph.window = at.duration_in(cx, Duration::from_millis(100), Duration::from_secs(3600))?;
    }
    if let Some(at) = t.get("redispatch") {
        ph.redispatch = at.bool(cx)?;
    }
    if let Some(at) = t.get("udp_unanswered_share") {
        let v = at.number(cx)?;
        if !(v > 0.0 && v <= 1.0) {
            return Err(at.err(
                cx,
                format!("{v} is out of range (more than 0, at most 1: a share of the flows)"),
            ));
        }
        ph.udp_unanswered_share = v;
    }
    if let Some(at) = t.get("min_udp_flows") {
        ph.min_udp_flows = at.int_in(cx, 1, 1_000_000)? as u32;
    }
    if let Some(at) = t.get("base_ejection") {
        ph.base_ejection = at.duration_in(cx, Duration::from_secs(1), Duration::from_secs(3600))?;
    }
    let max_at = t.get("max_ejection");
    if let Some(at) = &max_at {
        ph.max_ejection = at.duration_in(cx, Duration::from_secs(1), Duration::from_secs(86400))?;
    }
    if ph.max_ejection < ph.base_ejection {
        let msg = format!(
            "max_ejection ({}) must not be shorter than base_ejection ({})",
            show_duration(ph.max_ejection),
            show_duration(ph.base_ejection)
        );
        return Err(match max_at.or_else(|| t.get("base_ejection")) {
            Some(at) => at.err(cx, msg),
            None => t.err_here(cx, msg),
        });
    }
    if let Some(at) = t.get("max_ejection_percent") {
        ph.max_ejection_percent = at.int_in(cx, 0, 100)? as u32;
    }
    Ok(ph)
}

/// `[target_group.scaling]` or `scaling = { ... }`, with its `[[target_group.scaling.policy]]`
/// and `[[target_group.scaling.schedule]]`; `listed` is the number of backends the group lists.
fn parse_scaling(cx: &Cx<'_>, at: &At<'_>, listed: usize) -> Result<ScalingConfig, ConfigError> {
    let t = at.table(
        cx,
        "a table ([target_group.scaling] after the [[target_group]], or scaling = { ... })",
    )?;
    t.allow(
        cx,
        &[
            "min",
            "max",
            "desired",
            "scale_out_command",
            "scale_in_command",
            "hook_timeout",
            "cooldown",
            "warmup",
            "grace_period",
            "metric_command",
            "metric_interval",
            "policy",
            "schedule",
        ],
    )?;

    let capacity = |at: &At<'_>| -> Result<u32, ConfigError> {
        Ok(at.int_in(cx, 0, i64::from(MAX_SCALING_CAPACITY))? as u32)
    };
    let min_at = t.get("min");
    let min = match &min_at {
        None => DEFAULT_SCALING_MIN,
        Some(at) => capacity(at)?,
    };
    let max_at = t.require(cx, "max")?;
    let max = capacity(&max_at)?;
    let desired_at = t.get("desired");
    let desired = match &desired_at {
        None => min,
        Some(at) => capacity(at)?,
    };
    const RULE: &str = "a scaling group needs min <= desired <= max";
    if min > max {
        return Err(match &min_at {
            Some(at) => at.err(cx, format!("min ({min}) is more than max ({max}); {RULE}")),
            None => max_at.err(
                cx,
                format!(
                    "max ({max}) is less than the default min ({DEFAULT_SCALING_MIN}); {RULE} \
                     (set min = 0 too for a group that may have no backend)"
                ),
            ),
        });
    }
    // desired defaults to min, so it is set when it is out of bounds.
    if let Some(at) = &desired_at {
        let which = if min_at.is_some() {
            "min"
        } else {
            "the default min"
        };
        if desired < min {
            return Err(at.err(
                cx,
                format!("desired ({desired}) is less than {which} ({min}); {RULE}"),
            ));
        }
        if desired > max {
            return Err(at.err(
                cx,
                format!("desired ({desired}) is more than max ({max}); {RULE}"),
            ));
        }
    }

    let command = |key: &str| t.get(key).map(|at| at.command(cx)).transpose();
    let scale_out_command = command("scale_out_command")?;
    let scale_in_command = command("scale_in_command")?;
    let metric_command = command("metric_command")?;
    if scale_out_command.is_none() && max as usize > listed {
        let backends = match listed {
            0 => "lists no backend".to_owned(),
            1 => "lists 1 backend".to_owned(),
            n => format!("lists {n} backends"),
        };
        return Err(cx.err(
            t.pos,
            t.child_path("scale_out_command"),
            format!(
                "missing: the group {backends} and may grow to max = {max}, which takes a \
                 command that launches backends; give scale_out_command (run with /bin/sh -c, \
                 it prints each new backend as ADDR[:PORT], one a line)"
            ),
        ));
    }

    let duration = |key: &str, default: Duration, lo: Duration, hi: Duration| match t.get(key) {
        None => Ok(default),
        Some(at) => at.duration_in(cx, lo, hi),
    };
    let hook_timeout = duration(
        "hook_timeout",
        DEFAULT_HOOK_TIMEOUT,
        MIN_SCALING_PERIOD,
        MAX_SCALING_PERIOD,
    )?;
    let cooldown = duration("cooldown", DEFAULT_COOLDOWN, Duration::ZERO, MAX_COOLDOWN)?;
    let warmup = duration("warmup", DEFAULT_WARMUP, Duration::ZERO, MAX_WARMUP)?;
    let grace_period = duration(
        "grace_period",
        DEFAULT_GRACE_PERIOD,
        MIN_SCALING_PERIOD,
        MAX_SCALING_PERIOD,
    )?;
    let metric_interval = duration(
        "metric_interval",
        DEFAULT_METRIC_INTERVAL,
        MIN_SCALING_PERIOD,
        MAX_SCALING_PERIOD,
    )?;

    let mut policies = Vec::new();
    if let Some(list) = t.get("policy") {
        for at in list.tables(cx, "target_group.scaling.policy")? {
            policies.push(parse_policy(cx, &at)?);
        }
    }
    let mut schedules = Vec::new();
    if let Some(list) = t.get("schedule") {
        for at in list.tables(cx, "target_group.scaling.schedule")? {
            schedules.push(parse_schedule(cx, &at)?);
        }
    }

    Ok(ScalingConfig {
        min,
        max,
        desired,
        scale_out_command,
        scale_in_command,
        hook_timeout,
        cooldown,
        warmup,
        grace_period,
        metric_command,
        metric_interval,
        policies,
        schedules,
    })
}

/// One `[[target_group.scaling.policy]]`.
fn parse_policy(cx: &Cx<'_>, at: &At<'_>) -> Result<PolicyConfig, ConfigError> {
    const TARGET_TRACKING: &[&str] = &["type", "metric", "target", "disable_scale_in"];
    const STEP: &[&str] = &["type", "metric", "scale_out", "scale_in"];
    let t = at.table(cx, "a table ([[target_group.scaling.policy]])")?;

    let type_at = t.require(cx, "type")?;
    let kind = type_at.str(cx)?;
    let (own, other, other_kind) = match kind {
        "target_tracking" => (TARGET_TRACKING, STEP, "step"),
        "step" => (STEP, TARGET_TRACKING, "target_tracking"),
        _ => {
            return Err(type_at.err(
                cx,
                format!("unknown policy type {kind:?} (expected \"target_tracking\" or \"step\")"),
            ))
        }
    };
    for key in other.iter().filter(|k| !own.contains(k)) {
        if let Some(at) = t.get(key) {
            return Err(at.err(
                cx,
                format!(
                    "`{key}` is only for {other_kind} policies; this policy's type is \"{kind}\""
                ),
            ));
        }
    }
    t.allow(cx, own)?;

    let metric_at = t.require(cx, "metric")?;
    let metric: Metric = metric_at
        .str(cx)?
        .parse()
        .map_err(|m: String| metric_at.err(cx, m))?;

    if kind == "target_tracking" && metric.is_group_total() {
        return Err(metric_at.err(
            cx,
            format!(
                "{} is a total over the group, which does not fall when capacity grows: \
                 target tracking needs a per-backend metric (e.g. {}_per_backend); \
                 use a step policy for group totals",
                metric.name(),
                metric.name()
            ),
        ));
    }
    if kind == "target_tracking" {
        let target_at = t.require(cx, "target")?;
        let target = target_at.number(cx)?;
        if target <= 0.0 {
            return Err(target_at.err(cx, format!("the target must be more than 0, not {target}")));
        }
        let disable_scale_in = match t.get("disable_scale_in") {
            None => false,
            Some(at) => at.bool(cx)?,
        };
        return Ok(PolicyConfig::TargetTracking {
            metric,
            target,
            disable_scale_in,
        });
    }

    let scale_out = match t.get("scale_out") {
        None => None,
        Some(at) => Some(parse_step_rule(cx, &at, true)?),
    };
    let scale_in = match t.get("scale_in") {
        None => None,
        Some(at) => Some(parse_step_rule(cx, &at, false)?),
    };
    match (&scale_out, &scale_in) {
        (None, None) => {
            return Err(t.err_here(
                cx,
                "a step policy needs scale_out = { above = ..., for = \"...\", add = ... }, \
                 scale_in = { below = ..., for = \"...\", remove = ... }, or both",
            ))
        }
        (Some((out, _)), Some((inn, below_at))) if inn.threshold >= out.threshold => {
            return Err(below_at.err(
                cx,
                format!(
                    "below ({}) must be less than scale_out's above ({}), or the policy would \
                     scale in as soon as it scaled out",
                    inn.threshold, out.threshold
                ),
            ))
        }
        _ => {}
    }
    Ok(PolicyConfig::Step {
        metric,
        scale_out: scale_out.map(|(rule, _)| rule),
        scale_in: scale_in.map(|(rule, _)| rule),
    })
}

/// `scale_out = { above = F, for = "DUR", add = N }` (`out`) or
/// `scale_in = { below = F, for = "DUR", remove = N }`; also returns the threshold's place.
fn parse_step_rule<'a>(
    cx: &Cx<'_>,
    at: &At<'a>,
    out: bool,
) -> Result<(StepRule, At<'a>), ConfigError> {
    let (own, threshold_key, change_key, other_threshold, other_change, other) = if out {
        ("scale_out", "above", "add", "below", "remove", "scale_in")
    } else {
        ("scale_in", "below", "remove", "above", "add", "scale_out")
    };
    let t = at.table(
        cx,
        &format!(
            "a table such as {own} = {{ {threshold_key} = 0.5, for = \"5m\", {change_key} = 1 }}"
        ),
    )?;
    for (key, instead) in [(other_threshold, threshold_key), (other_change, change_key)] {
        if let Some(at) = t.get(key) {
            return Err(at.err(
                cx,
                format!("`{key}` is for {other}; {own} takes `{instead}`"),
            ));
        }
    }
    t.allow(cx, &[threshold_key, "for", change_key])?;
    let threshold_at = t.require(cx, threshold_key)?;
    let threshold = threshold_at.number(cx)?;
    let hold = t
        .require(cx, "for")?
        .duration_in(cx, Duration::ZERO, MAX_STEP_HOLD)?;
    let change = match t.get(change_key) {
        None => 1,
        Some(at) => at.int_in(cx, 1, i64::from(MAX_SCALING_CAPACITY))? as u32,
    };
    Ok((
        StepRule {
            threshold,
            hold,
            change,
        },
        threshold_at,
    ))
}

/// One `[[target_group.scaling.schedule]]`.
fn parse_schedule(cx: &Cx<'_>, at: &At<'_>) -> Result<ScheduleConfig, ConfigError> {
    let t = at.table(cx, "a table ([[target_group.scaling.schedule]])")?;
    t.allow(cx, &["cron", "desired", "min", "max"])?;
    let cron_at = t.require(cx, "cron")?;
    let cron = cron_at.str(cx)?;
    parse_cron(cron).map_err(|m| cron_at.err(cx, m))?;

    let get = |key: &str| -> Result<Option<(u32, At<'_>)>, ConfigError> {
        match t.get(key) {
            None => Ok(None),
            Some(at) => Ok(Some((
                at.int_in(cx, 0, i64::from(MAX_SCALING_CAPACITY))? as u32,
                at,
            ))),
        }
    };
    let desired = get("desired")?;
    let min = get("min")?;
    let max = get("max")?;
    if desired.is_none() && min.is_none() && max.is_none() {
        return Err(t.err_here(
            cx,
            "the schedule sets nothing: give desired, min or max (or several)",
        ));
    }
    const RULE: &str = "a schedule that sets several needs min <= desired <= max";
    if let (Some((min, at)), Some((max, _))) = (&min, &max) {
        if min > max {
            return Err(at.err(cx, format!("min ({min}) is more than max ({max}); {RULE}")));
        }
    }
    if let Some((desired, at)) = &desired {
        if let Some((min, _)) = &min {
            if desired < min {
                return Err(at.err(
                    cx,
                    format!("desired ({desired}) is less than min ({min}); {RULE}"),
                ));
            }
        }
        if let Some((max, _)) = &max {
            if desired > max {
                return Err(at.err(
                    cx,
                    format!("desired ({desired}) is more than max ({max}); {RULE}"),
                ));
            }
        }
    }
    Ok(ScheduleConfig {
        cron: cron.to_owned(),
        desired: desired.map(|(v, _)| v),
        min: min.map(|(v, _)| v),
        max: max.map(|(v, _)| v),
    })
}

/// The fields of a 6-field cron expression, and what each takes; a 5-field one has no seconds.
const CRON_FIELDS: [(&str, &str); 6] = [
    ("second", "0-59"),
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31, L or W"),
    ("month", "1-12 or JAN-DEC"),
    ("day-of-week", "0-7 or SUN-SAT, L or #"),
];

/// The parser of a schedule's `cron`: 5 fields (`minute hour day-of-month month day-of-week`)
/// or 6 with seconds first, no year field; names (`MON-FRI`, `JAN`), `@daily` and the like are
/// accepted, case-insensitively. The scaling engine evaluates schedules with this same parser
/// (in UTC); see [`parse_cron`].
pub fn cron_parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
}

/// Parses and checks a schedule's `cron` as the configuration does (with [`cron_parser`]); the
/// error says which field is wrong, or that the expression never fires (`"0 0 30 2 *"`).
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    const FORMS: &str =
        "5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first";
    let parser = cron_parser();
    let cron = parser.parse(expr).map_err(|e| {
        let fields: Vec<&str> = expr.split_whitespace().collect();
        let detail = match fields.len() {
            0 => format!("it is empty; expected {FORMS}"),
            1 if fields[0].starts_with('@') => format!(
                "unknown nickname {:?} (expected @yearly, @annually, @monthly, @weekly, @daily \
                 or @hourly, or {FORMS})",
                fields[0]
            ),
            n @ (5 | 6) => {
                // The first field that fails alone, the others being `*`.
                let names = &CRON_FIELDS[6 - n..];
                (0..n)
                    .find_map(|i| {
                        let mut probe = vec!["*"; n];
                        probe[i] = fields[i];
                        let e = parser.parse(&probe.join(" ")).err()?;
                        let (name, takes) = names[i];
                        Some(format!(
                            "the {name} field {:?}: {} ({name}: {takes})",
                            fields[i],
                            cron_error_text(&e)
                        ))
                    })
                    .unwrap_or_else(|| cron_error_text(&e))
            }
            n => format!("it has {n} fields; expected {FORMS}"),
        };
        format!("{expr:?} is not a valid cron expression: {detail}")
    })?;
    // A year-less expression repeats every 400 years and croner searches far beyond that.
    let start = NaiveDate::from_ymd_opt(2000, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("a valid date");
    if cron.find_next_occurrence(&start, true).is_err() {
        return Err(format!(
            "{expr:?} never fires: no date matches its day-of-month, month and day-of-week \
             fields"
        ));
    }
    Ok(cron)
}

/// croner's error, without its prefix.
fn cron_error_text(e: &CronError) -> String {
    match e {
        CronError::IllegalCharacters(_) => "it contains a character not allowed there".to_owned(),
        CronError::ComponentError(m) | CronError::InvalidPattern(m) => {
            let m = m.trim().trim_end_matches('.');
            let mut chars = m.chars();
            match chars.next() {
                Some(c) => c.to_lowercase().chain(chars).collect(),
                None => e.to_string(),
            }
        }
        _ => e.to_string(),
    }
}

fn parse_backend(cx: &Cx<'_>, at: &At<'_>) -> Result<BackendConfig, ConfigError> {
    match &at.node.val {
        Val::Str(s) => {
            let (address, port) = parse_addr_port(s).map_err(|m| at.err(cx, m))?;
            check_unicast(address).map_err(|m| at.err(cx, m))?;
            Ok(BackendConfig {
                address,
                port,
                weight: 1,
            })
        }
        Val::Table(_) => {
            let t = at.table(cx, "a table")?;
            t.allow(cx, &["address", "port", "weight"])?;
            let addr_at = t.require(cx, "address")?;
            let (address, addr_port) =
                parse_addr_port(addr_at.str(cx)?).map_err(|m| addr_at.err(cx, m))?;
            check_unicast(address).map_err(|m| addr_at.err(cx, m))?;
            let port = match t.get("port") {
                None => addr_port,
                Some(port_at) => {
                    let p = port_at.port(cx)?;
                    if let Some(ap) = addr_port {
                        return Err(port_at.err(
                            cx,
                            format!("port given twice: in address (:{ap}) and as port = {p}"),
                        ));
                    }
                    Some(p)
                }
            };
            let weight = match t.get("weight") {
                None => 1,
                Some(w) => w.int_in(cx, 1, i64::from(MAX_WEIGHT))? as u32,
            };
            Ok(BackendConfig {
                address,
                port,
                weight,
            })
        }
        other => Err(at.err(
            cx,
            format!(
                "expected an address string (\"198.18.2.11\", \"198.18.2.11:8080\", \
                 \"[2001:db8::1]:8080\") or a table {{ address = ..., port = ..., weight = ... }}, \
                 found {}",
                other.kind()
            ),
        )),
    }
}

/// `"198.18.2.11"`, `"198.18.2.11:8080"`, `"2001:db8::1"` or `"[2001:db8::1]:8080"`: an
/// [`Endpoint`](crate::endpoint::Endpoint), as the API, CLI and hooks take it.
fn parse_addr_port(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    s.parse::<crate::endpoint::Endpoint>()
        .map(|e| (e.addr, e.port))
        .map_err(|e| e.0)
}

fn family(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    }
}

fn next_prime(n: u32) -> u32 {
    (n.saturating_add(1)..=u32::MAX)
        .find(|&p| is_prime(p))
        .unwrap_or(u32::MAX)
}

fn prev_prime(n: u32) -> u32 {
    (2..n).rev().find(|&p| is_prime(p)).unwrap_or(2)
}

fn quoted_list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The checks that involve more than one field.
fn validate(
    cx: &Cx<'_>,
    config: &Config,
    dpos: &DaemonPos,
    spos: &[ServicePos],
    gpos: &[GroupPos],
) -> Result<(), ConfigError> {
    let services = &config.services;
    let groups = &config.target_groups;

    // Unique names.
    for (i, s) in services.iter().enumerate() {
        if let Some(j) = services[..i].iter().position(|o| o.name == s.name) {
            return Err(cx.err(
                spos[i].name,
                format!("service[{i}].name"),
                format!(
                    "duplicate service name \"{}\" (already service[{j}], line {})",
                    s.name,
                    cx.line(spos[j].name)
                ),
            ));
        }
    }
    for (i, g) in groups.iter().enumerate() {
        if let Some(j) = groups[..i].iter().position(|o| o.name == g.name) {
            return Err(cx.err(
                gpos[i].name,
                format!("target_group[{i}].name"),
                format!(
                    "duplicate target group name \"{}\" (already target_group[{j}], line {})",
                    g.name,
                    cx.line(gpos[j].name)
                ),
            ));
        }
    }

    // References, and no two services on the same address, port and protocol.
    let mut group_of = Vec::with_capacity(services.len());
    for (i, s) in services.iter().enumerate() {
        let Some(g) = groups.iter().position(|g| g.name == s.target_group) else {
            let known = if groups.is_empty() {
                "no target groups are defined".to_owned()
            } else {
                format!(
                    "defined target groups: {}",
                    quoted_list(groups.iter().map(|g| g.name.as_str()))
                )
            };
            return Err(cx.err(
                spos[i].target_group,
                format!("service[{i}].target_group"),
                format!("no target group named \"{}\"; {known}", s.target_group),
            ));
        };
        group_of.push(g);
        if let Some(j) = services[..i]
            .iter()
            .position(|o| o.vip == s.vip && o.port == s.port && o.protocol == s.protocol)
        {
            return Err(cx.err(
                spos[i].vip,
                format!("service[{i}].vip"),
                format!(
                    "{} port {}/{} is already used by service[{j}] \"{}\" (line {})",
                    s.vip,
                    s.port,
                    s.protocol,
                    services[j].name,
                    cx.line(spos[j].table)
                ),
            ));
        }
    }

    let max_services = config.daemon.max_services;
    if services.len() > max_services as usize {
        let i = max_services as usize;
        let (pos, field, what) = match dpos.max_services {
            Some(p) => (p, "daemon.max_services".to_owned(), "is"),
            None => (spos[i].table, format!("service[{i}]"), "defaults to"),
        };
        return Err(cx.err(
            pos,
            field,
            format!(
                "{} services are defined but daemon.max_services {what} {max_services}; \
                 raise max_services (at most {MAX_MAX_SERVICES})",
                services.len()
            ),
        ));
    }

    // Backends: unique within their group, and not too many.
    let mut total = 0usize;
    for (gi, g) in groups.iter().enumerate() {
        let mut seen: HashMap<(IpAddr, Option<u16>), usize> = HashMap::new();
        for (bi, b) in g.backends.iter().enumerate() {
            let key = (b.address, b.port.or(g.port));
            if let Some(&first) = seen.get(&key) {
                let shown = match key.1 {
                    Some(p) => format_addr_port(b.address, p),
                    None => b.address.to_string(),
                };
                return Err(cx.err(
                    gpos[gi].backends[bi],
                    format!("target_group[{gi}].backends[{bi}]"),
                    format!("duplicate backend {shown} (already backends[{first}])"),
                ));
            }
            seen.insert(key, bi);
            // Backend ids as the daemon takes them: one per member and port, for the groups
            // behind a service; a member without a port (in a group without one) takes the
            // port of each service in front of it.
            let mut ports: Vec<u16> = services
                .iter()
                .filter(|s| s.target_group == g.name)
                .map(|s| key.1.unwrap_or(s.port))
                .collect();
            ports.sort_unstable();
            ports.dedup();
            total += ports.len();
            if total > MAX_BACKENDS as usize {
                return Err(cx.err(
                    gpos[gi].backends[bi],
                    format!("target_group[{gi}].backends[{bi}]"),
                    format!(
                        "more than {MAX_BACKENDS} backend ids in total across all target groups \
                         (one per backend and port: a backend without a port takes one per \
                         service port of its group)"
                    ),
                ));
            }
        }
    }

    // No backend is the VIP of a service (its traffic would come back to the balancer).
    for (gi, g) in groups.iter().enumerate() {
        for (bi, b) in g.backends.iter().enumerate() {
            if let Some(s) = services.iter().find(|s| s.vip == b.address) {
                return Err(cx.err(
                    gpos[gi].backends[bi],
                    format!("target_group[{gi}].backends[{bi}]"),
                    format!(
                        "{} is the vip of service \"{}\": a backend cannot be a VIP",
                        b.address, s.name
                    ),
                ));
            }
        }
    }

    // Per service: backends of the VIP's address family, and distinct once the service port
    // fills in the missing ones.
    for (si, s) in services.iter().enumerate() {
        let gi = group_of[si];
        let g = &groups[gi];
        let wrong: Vec<usize> = (0..g.backends.len())
            .filter(|&bi| g.backends[bi].address.is_ipv4() != s.vip.is_ipv4())
            .collect();
        if !wrong.is_empty() && wrong.len() == g.backends.len() {
            return Err(cx.err(
                spos[si].target_group,
                format!("service[{si}].target_group"),
                format!(
                    "target group \"{}\" has only {} backends but the vip {} is {}; \
                     NAT cannot translate between IPv4 and IPv6",
                    g.name,
                    family(g.backends[0].address),
                    s.vip,
                    family(s.vip)
                ),
            ));
        }
        if let Some(&bi) = wrong.first() {
            let b = &g.backends[bi];
            return Err(cx.err(
                gpos[gi].backends[bi],
                format!("target_group[{gi}].backends[{bi}]"),
                format!(
                    "{} backend {} cannot serve service[{si}] \"{}\" whose vip {} is {}; \
                     NAT cannot translate between IPv4 and IPv6",
                    family(b.address),
                    b.address,
                    s.name,
                    s.vip,
                    family(s.vip)
                ),
            ));
        }
        if s.forwarding.dsr().is_some() {
            if let Some(bi) =
                (0..g.backends.len()).find(|&bi| g.backend_port(&g.backends[bi], s.port) != s.port)
            {
                let b = &g.backends[bi];
                return Err(cx.err(
                    gpos[gi].backends[bi],
                    format!("target_group[{gi}].backends[{bi}]"),
                    format!(
                        "backend {} cannot serve service[{si}] \"{}\" with forwarding = \"dsr\": \
                         the backend receives the client's packet to the vip unchanged and answers \
                         from it, so it must listen on the service port {}",
                        format_addr_port(b.address, g.backend_port(b, s.port)),
                        s.name,
                        s.port
                    ),
                ));
            }
        }
        if s.forwarding.is_nat()
            && g.health_check
                .as_ref()
                .is_some_and(|h| h.target == HealthTarget::Vip)
        {
            return Err(cx.err(
                gpos[gi].hc_target.unwrap_or(gpos[gi].table),
                format!("target_group[{gi}].health_check.target"),
                format!(
                    "target = \"vip\" checks through a DSR service's encapsulation, but \
                     service[{si}] \"{}\" uses this group with forwarding = \"nat\" (its \
                     backends serve their own address: use target = \"address\")",
                    s.name
                ),
            ));
        }
        let mut seen: HashSet<(IpAddr, u16)> = HashSet::new();
        for (bi, b) in g.backends.iter().enumerate() {
            let port = g.backend_port(b, s.port);
            if !seen.insert((b.address, port)) {
                return Err(cx.err(
                    gpos[gi].backends[bi],
                    format!("target_group[{gi}].backends[{bi}]"),
                    format!(
                        "duplicate backend {} for service[{si}] \"{}\" \
                         (backends without a port use the service port {})",
                        format_addr_port(b.address, port),
                        s.name,
                        s.port
                    ),
                ));
            }
        }
    }

    // Maglev stays balanced only with enough slots per backend.
    if let Some((gi, g)) = groups.iter().enumerate().max_by_key(|(i, g)| {
        // Largest group; the first one on ties.
        (g.backends.len(), std::cmp::Reverse(*i))
    }) {
        let n = g.backends.len() as u64;
        let m = config.daemon.maglev_table_size;
        let need = n * u64::from(MAGLEV_SLOTS_PER_BACKEND);
        if n > 0 && u64::from(m) <= need {
            let suggestion = if need < u64::from(MAX_MAGLEV_TABLE_SIZE) {
                format!("; use a prime such as {}", next_prime(need as u32))
            } else {
                String::new()
            };
            let message = format!(
                "{m} is too small for target group \"{}\" with {n} backends: Maglev stays \
                 balanced only if the table size is greater than {MAGLEV_SLOTS_PER_BACKEND} × \
                 the backends of the largest group (> {need}){suggestion}",
                g.name
            );
            return Err(match dpos.maglev_table_size {
                Some(p) => cx.err(p, "daemon.maglev_table_size", message),
                None => cx.err(
                    gpos[gi].table,
                    format!("target_group[{gi}].backends"),
                    format!("daemon.maglev_table_size (default) {message}"),
                ),
            });
        }
    }

    // Every map's capacity, counted by the code the daemon computes its desired state with
    // (backend ids, BACKEND_ADDRS per address, port and protocol, ADDRS).
    if let Err(e) = crate::state::State::new(config.clone()).desired() {
        return Err(cx.err(
            gpos.first().map_or(0, |g| g.table),
            "target_group",
            format!("the configuration does not fit the maps: {e}"),
        ));
    }
    Ok(())
}

fn format_addr_port(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Errors and positions.

struct Cx<'a> {
    text: &'a str,
    file: &'a str,
}

impl Cx<'_> {
    fn err(&self, pos: usize, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        let (line, column) = line_col(self.text, pos);
        ConfigError::Invalid {
            file: self.file.to_owned(),
            line,
            column,
            field: field.into(),
            message: message.into(),
        }
    }

    fn line(&self, pos: usize) -> usize {
        line_col(self.text, pos).0
    }

    /// A TOML syntax error (or duplicate key): the position is exact, the field is guessed
    /// from the text around it.
    fn syntax_error(&self, e: &toml::de::Error) -> ConfigError {
        let pos = e.span().map_or(0, |s| s.start);
        let message = e
            .message()
            .trim()
            .lines()
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("; ");
        let field = field_at(self.text, pos);
        let field = if field.is_empty() {
            "toml".to_owned()
        } else {
            field
        };
        self.err(pos, field, message)
    }
}

/// 1-based line and column (in characters) of byte offset `pos`.
fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let mut pos = pos.min(text.len());
    while !text.is_char_boundary(pos) {
        pos -= 1;
    }
    let before = &text[..pos];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Best guess of the dotted field at byte offset `pos`, from the table headers and keys before
/// it (used only for syntax errors, where there is no parsed tree).
fn field_at(text: &str, pos: usize) -> String {
    // The arrays of tables seen so far, by their path (`target_group[0].scaling.policy`), and
    // how many tables each has.
    let mut counts: HashMap<String, usize> = HashMap::new();
    // The path of a header's dotted name: a part naming an array of tables means its last
    // table, so `[target_group.health_check]` is `target_group[N].health_check`.
    let resolve = |counts: &HashMap<String, usize>, parts: &[&str]| {
        let mut path = String::new();
        for part in parts {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(part);
            if let Some(n) = counts.get(&path).filter(|&&n| n > 0) {
                path = format!("{path}[{}]", n - 1);
            }
        }
        path
    };
    let mut section = String::new();
    let mut key: Option<String> = None;
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if let Some(h) = t.strip_prefix("[[") {
            let name = h.split("]]").next().unwrap_or("");
            let parts: Vec<&str> = name.split('.').map(str::trim).collect();
            let (last, parents) = parts.split_last().unwrap_or((&"", &[]));
            let parent = resolve(&counts, parents);
            let array = if parent.is_empty() {
                (*last).to_owned()
            } else {
                format!("{parent}.{last}")
            };
            let n = counts.entry(array.clone()).or_insert(0);
            section = format!("{array}[{n}]");
            *n += 1;
            key = None;
        } else if let Some(h) = t.strip_prefix('[').filter(|h| h.contains(']')) {
            let name = h.split(']').next().unwrap_or("");
            let parts: Vec<&str> = name.split('.').map(str::trim).collect();
            section = resolve(&counts, &parts);
            key = None;
        } else if let Some((k, _)) = t.split_once('=') {
            let k = k.trim();
            if !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.\"' ".contains(c))
            {
                key = Some(k.to_owned());
            }
        }
        start += line.len();
        if pos < start {
            break;
        }
    }
    match (section.is_empty(), key) {
        (_, None) => section,
        (true, Some(k)) => k,
        (false, Some(k)) => format!("{section}.{k}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Typed access to the tree, with errors at the right place.

struct At<'a> {
    node: &'a Node,
    /// Byte offset of the value (or of its key when the value has no span).
    pos: usize,
    path: String,
}

impl<'a> At<'a> {
    fn err(&self, cx: &Cx<'_>, message: impl Into<String>) -> ConfigError {
        cx.err(self.pos, self.path.clone(), message)
    }

    fn wrong_type(&self, cx: &Cx<'_>, expected: &str) -> ConfigError {
        self.err(
            cx,
            format!("expected {expected}, found {}", self.node.val.kind()),
        )
    }

    fn table(&self, cx: &Cx<'_>, expected: &str) -> Result<Table<'a>, ConfigError> {
        match &self.node.val {
            Val::Table(entries) => Ok(Table {
                entries,
                pos: self.pos,
                path: self.path.clone(),
            }),
            _ => Err(self.wrong_type(cx, expected)),
        }
    }

    fn array(&self, cx: &Cx<'_>) -> Result<Vec<At<'a>>, ConfigError> {
        match &self.node.val {
            Val::Array(items) => Ok(items
                .iter()
                .enumerate()
                .map(|(i, node)| At {
                    node,
                    pos: node.span.as_ref().map_or(self.pos, |s| s.start),
                    path: format!("{}[{i}]", self.path),
                })
                .collect()),
            _ => Err(self.wrong_type(cx, "an array")),
        }
    }

    /// An array of tables (`[[name]]`).
    fn tables(&self, cx: &Cx<'_>, name: &str) -> Result<Vec<At<'a>>, ConfigError> {
        match &self.node.val {
            Val::Array(_) => self.array(cx),
            _ => Err(self.wrong_type(cx, &format!("an array of tables ([[{name}]])"))),
        }
    }

    fn str(&self, cx: &Cx<'_>) -> Result<&'a str, ConfigError> {
        match &self.node.val {
            Val::Str(s) => Ok(s),
            _ => Err(self.wrong_type(cx, "a string")),
        }
    }

    /// A non-empty string.
    fn name(&self, cx: &Cx<'_>) -> Result<String, ConfigError> {
        let s = self.str(cx)?;
        if s.trim().is_empty() {
            return Err(self.err(cx, "must not be empty"));
        }
        Ok(s.to_owned())
    }

    fn int_in(&self, cx: &Cx<'_>, lo: i64, hi: i64) -> Result<i64, ConfigError> {
        match self.node.val {
            Val::Int(v) if (lo..=hi).contains(&v) => Ok(v),
            Val::Int(v) => Err(self.err(cx, format!("{v} is out of range ({lo}-{hi})"))),
            _ => Err(self.wrong_type(cx, "an integer")),
        }
    }

    fn port(&self, cx: &Cx<'_>) -> Result<u16, ConfigError> {
        Ok(self.int_in(cx, 1, 65535)? as u16)
    }

    /// A finite number, written as an integer or a float.
    fn number(&self, cx: &Cx<'_>) -> Result<f64, ConfigError> {
        match self.node.val {
            Val::Int(v) => Ok(v as f64),
            Val::Float(v) if v.is_finite() => Ok(v),
            Val::Float(v) => Err(self.err(cx, format!("{v} is not a finite number"))),
            _ => Err(self.wrong_type(cx, "a number")),
        }
    }

    fn bool(&self, cx: &Cx<'_>) -> Result<bool, ConfigError> {
        match self.node.val {
            Val::Bool(v) => Ok(v),
            _ => Err(self.wrong_type(cx, "a boolean (true or false)")),
        }
    }

    /// A shell command (run with `/bin/sh -c`): not blank, no NUL.
    fn command(&self, cx: &Cx<'_>) -> Result<String, ConfigError> {
        let s = self.str(cx)?;
        if s.trim().is_empty() {
            return Err(self.err(cx, "must not be empty"));
        }
        if s.contains('\0') {
            return Err(self.err(cx, "contains a NUL character"));
        }
        Ok(s.to_owned())
    }

    /// A duration string (`"30s"`, `"1h 30m"`, `"250ms"`) within `lo..=hi`.
    fn duration_in(
        &self,
        cx: &Cx<'_>,
        lo: Duration,
        hi: Duration,
    ) -> Result<Duration, ConfigError> {
        let s = match &self.node.val {
            Val::Str(s) => s,
            Val::Int(v) => {
                return Err(self.err(
                    cx,
                    format!("expected a duration string such as \"{v}s\", found an integer"),
                ))
            }
            _ => {
                return Err(self.wrong_type(cx, &format!("a duration string ({DURATION_EXAMPLES})")))
            }
        };
        let d = humantime::parse_duration(s).map_err(|e| {
            self.err(
                cx,
                format!("\"{s}\" is not a duration ({DURATION_EXAMPLES}): {e}"),
            )
        })?;
        if d < lo || d > hi {
            return Err(self.err(
                cx,
                format!(
                    "\"{s}\" is out of range ({}-{})",
                    show_duration(lo),
                    show_duration(hi)
                ),
            ));
        }
        Ok(d)
    }

    /// A path: not empty, no NUL, and absolute if `absolute`.
    fn path_str(&self, cx: &Cx<'_>, absolute: bool) -> Result<&'a str, ConfigError> {
        let s = self.str(cx)?;
        if s.is_empty() {
            return Err(self.err(cx, "must not be empty"));
        }
        if s.contains('\0') {
            return Err(self.err(cx, "contains a NUL character"));
        }
        if absolute && !s.starts_with('/') {
            return Err(self.err(
                cx,
                format!("\"{s}\" is not an absolute path (it must start with /)"),
            ));
        }
        Ok(s)
    }

    /// The path of a file: as [`Self::path_str`], and not ending with `/`.
    fn file_path(&self, cx: &Cx<'_>, absolute: bool) -> Result<&'a str, ConfigError> {
        let s = self.path_str(cx, absolute)?;
        if s.ends_with('/') {
            return Err(self.err(cx, format!("\"{s}\" ends with /; give the path of a file")));
        }
        Ok(s)
    }
}

struct Table<'a> {
    entries: &'a [Entry],
    pos: usize,
    path: String,
}

impl<'a> Table<'a> {
    fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn allow(&self, cx: &Cx<'_>, allowed: &[&str]) -> Result<(), ConfigError> {
        for e in self.entries {
            if !allowed.contains(&e.key.as_str()) {
                let pos = e
                    .key_span
                    .as_ref()
                    .or(e.node.span.as_ref())
                    .map_or(self.pos, |s| s.start);
                let what = if self.path.is_empty() {
                    "allowed at the top level".to_owned()
                } else {
                    format!("allowed in {}", self.path)
                };
                return Err(cx.err(
                    pos,
                    self.child_path(&e.key),
                    format!("unknown key `{}`; {what}: {}", e.key, allowed.join(", ")),
                ));
            }
        }
        Ok(())
    }

    fn get(&self, key: &str) -> Option<At<'a>> {
        let e = self.entries.iter().find(|e| e.key == key)?;
        let pos = e
            .node
            .span
            .as_ref()
            .or(e.key_span.as_ref())
            .map_or(self.pos, |s| s.start);
        Some(At {
            node: &e.node,
            pos,
            path: self.child_path(key),
        })
    }

    /// An error about the table as a whole.
    fn err_here(&self, cx: &Cx<'_>, message: impl Into<String>) -> ConfigError {
        cx.err(self.pos, self.path.clone(), message)
    }

    fn require(&self, cx: &Cx<'_>, key: &str) -> Result<At<'a>, ConfigError> {
        self.get(key).ok_or_else(|| {
            cx.err(
                self.pos,
                self.child_path(key),
                format!("missing required key `{key}`"),
            )
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The value tree. `toml` hands out spans through `serde_spanned`'s protocol: asked for a struct
// with these (private, but stable within toml 0.8) names, its deserializer answers with a map
// `{start, end, value}` when it knows the span, and with the plain value when it does not
// (implicit tables, dotted keys). Deserializing through `toml::Spanned<T>` would fail in the
// second case, so the tree accepts both shapes itself. The test `spans_are_tracked` notices if
// the protocol changes.

const SPANNED_NAME: &str = "$__serde_spanned_private_Spanned";
const SPANNED_START: &str = "$__serde_spanned_private_start";
const SPANNED_END: &str = "$__serde_spanned_private_end";
const SPANNED_VALUE: &str = "$__serde_spanned_private_value";
const SPANNED_FIELDS: &[&str] = &[SPANNED_START, SPANNED_END, SPANNED_VALUE];
const DATETIME_FIELD: &str = "$__toml_private_datetime";

#[derive(Debug)]
struct Node {
    span: Option<Range<usize>>,
    val: Val,
}

#[derive(Debug)]
enum Val {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime,
    Array(Vec<Node>),
    Table(Vec<Entry>),
}

impl Val {
    fn kind(&self) -> &'static str {
        match self {
            Val::Str(_) => "a string",
            Val::Int(_) => "an integer",
            Val::Float(_) => "a float",
            Val::Bool(_) => "a boolean",
            Val::Datetime => "a date-time",
            Val::Array(_) => "an array",
            Val::Table(_) => "a table",
        }
    }
}

#[derive(Debug)]
struct Entry {
    key: String,
    key_span: Option<Range<usize>>,
    node: Node,
}

struct Key {
    name: String,
    span: Option<Range<usize>>,
}

mod de {
    use super::*;
    use serde::de::{Deserialize, Deserializer, Error, MapAccess, SeqAccess, Visitor};

    impl<'de> Deserialize<'de> for Node {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_struct(SPANNED_NAME, SPANNED_FIELDS, NodeVisitor)
        }
    }

    /// The value inside a spanned map (asking for a span again would recurse).
    struct Bare(Node);

    impl<'de> Deserialize<'de> for Bare {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(NodeVisitor).map(Bare)
        }
    }

    fn bare(val: Val) -> Node {
        Node { span: None, val }
    }

    struct NodeVisitor;

    impl<'de> Visitor<'de> for NodeVisitor {
        type Value = Node;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a TOML value")
        }

        fn visit_bool<E: Error>(self, v: bool) -> Result<Node, E> {
            Ok(bare(Val::Bool(v)))
        }

        fn visit_i64<E: Error>(self, v: i64) -> Result<Node, E> {
            Ok(bare(Val::Int(v)))
        }

        fn visit_u64<E: Error>(self, v: u64) -> Result<Node, E> {
            Ok(bare(Val::Int(i64::try_from(v).unwrap_or(i64::MAX))))
        }

        fn visit_f64<E: Error>(self, v: f64) -> Result<Node, E> {
            Ok(bare(Val::Float(v)))
        }

        fn visit_str<E: Error>(self, v: &str) -> Result<Node, E> {
            Ok(bare(Val::Str(v.to_owned())))
        }

        fn visit_string<E: Error>(self, v: String) -> Result<Node, E> {
            Ok(bare(Val::Str(v)))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element()? {
                items.push(item);
            }
            Ok(bare(Val::Array(items)))
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
            let Some(first) = map.next_key::<Key>()? else {
                return Ok(bare(Val::Table(Vec::new())));
            };
            if first.span.is_none() && first.name == SPANNED_START {
                let start: usize = map.next_value()?;
                expect_key(&mut map, SPANNED_END)?;
                let end: usize = map.next_value()?;
                expect_key(&mut map, SPANNED_VALUE)?;
                let Bare(mut node) = map.next_value()?;
                node.span = Some(start..end);
                return Ok(node);
            }
            if first.span.is_none() && first.name == DATETIME_FIELD {
                map.next_value::<serde::de::IgnoredAny>()?;
                return Ok(bare(Val::Datetime));
            }
            let mut entries = Vec::new();
            let mut key = Some(first);
            while let Some(k) = key {
                let node = map.next_value()?;
                entries.push(Entry {
                    key: k.name,
                    key_span: k.span,
                    node,
                });
                key = map.next_key()?;
            }
            Ok(bare(Val::Table(entries)))
        }
    }

    fn expect_key<'de, A: MapAccess<'de>>(map: &mut A, name: &str) -> Result<(), A::Error> {
        match map.next_key::<String>()? {
            Some(k) if k == name => Ok(()),
            _ => Err(A::Error::custom("malformed spanned value")),
        }
    }

    impl<'de> Deserialize<'de> for Key {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_struct(SPANNED_NAME, SPANNED_FIELDS, KeyVisitor)
        }
    }

    struct KeyVisitor;

    impl<'de> Visitor<'de> for KeyVisitor {
        type Value = Key;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a key")
        }

        fn visit_str<E: Error>(self, v: &str) -> Result<Key, E> {
            Ok(Key {
                name: v.to_owned(),
                span: None,
            })
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Key, A::Error> {
            expect_key(&mut map, SPANNED_START)?;
            let start: usize = map.next_value()?;
            expect_key(&mut map, SPANNED_END)?;
            let end: usize = map.next_value()?;
            expect_key(&mut map, SPANNED_VALUE)?;
            let name: String = map.next_value()?;
            Ok(Key {
                name,
                span: Some(start..end),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn defaults_and_all_daemon_keys() {
        let c = parse(MINIMAL, "x").unwrap();
        assert_eq!(c.daemon.xdp_mode, XdpMode::Auto);
        assert_eq!(c.daemon.conntrack_size, DEFAULT_CONNTRACK_SIZE);
        assert_eq!(c.daemon.maglev_table_size, DEFAULT_RING_SIZE);
        assert_eq!(c.daemon.max_services, DEFAULT_MAX_SERVICES);
        assert_eq!(c.daemon.hash_seed, None);
        assert!(c.services.is_empty() && c.target_groups.is_empty());

        let c = parse(
            "[daemon]\ninterfaces = [\"eth0\"]\nxdp_mode = \"generic\"\nconntrack_size = 2048\n\
             maglev_table_size = 1021\nmax_services = 4096\nhash_seed = 4294967295\n",
            "x",
        )
        .unwrap();
        assert_eq!(c.daemon.xdp_mode, XdpMode::Generic);
        assert_eq!(c.daemon.conntrack_size, 2048);
        assert_eq!(
            c.daemon.reverse_size, 2048,
            "reverse_size follows conntrack_size"
        );
        assert_eq!(c.daemon.maglev_table_size, 1021);
        assert_eq!(c.daemon.max_services, 4096);
        assert_eq!(c.daemon.hash_seed, Some(u32::MAX));

        // Dotted keys and inline tables have no span of their own; still fine.
        let c = parse(
            "daemon.interfaces = [\"eth0\"]\ndaemon.xdp_mode = \"native\"\n",
            "x",
        )
        .unwrap();
        assert_eq!(c.daemon.xdp_mode, XdpMode::Native);
        let c = parse("daemon = { interfaces = [\"eth0\"] }\n", "x").unwrap();
        assert_eq!(c.daemon.interfaces, ["eth0"]);
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
    fn display_format() {
        let e = parse(&sample_with("port = 53", "port = 70000"), "xlb.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "xlb.toml:16:8: service[1].port: 70000 is out of range (1-65535)"
        );
    }

    #[test]
    fn spans_are_tracked() {
        // If toml's span protocol changed, every position would collapse to 1:1.
        let (line, col, field, _) = fail(&sample_with("port = 53", "port = 0"));
        assert_eq!((line, col, field.as_str()), (16, 8, "service[1].port"));
    }

    #[test]
    fn error_unknown_key() {
        let (line, col, field, msg) = fail(&sample_with(
            "protocol = \"udp\"",
            "protocol = \"udp\"\nprotocl = \"udp\"",
        ));
        assert_eq!((line, col, field.as_str()), (18, 1, "service[1].protocl"));
        assert!(msg.contains("unknown key `protocl`"), "{msg}");
        assert!(
            msg.contains("name, vip, port, protocol, target_group"),
            "{msg}"
        );

        let (line, col, field, msg) = fail(&format!("{MINIMAL}[deamon]\nx = 1\n"));
        assert_eq!((line, col, field.as_str()), (3, 2, "deamon"));
        assert!(msg.contains("daemon, service, target_group"), "{msg}");

        let (line, col, field, msg) = fail(&sample_with(
            "{ address = \"198.18.2.13\", weight = 2 }",
            "{ address = \"198.18.2.13\", wieght = 2 }",
        ));
        assert_eq!(
            (line, col, field.as_str()),
            (30, 75, "target_group[0].backends[2].wieght")
        );
        assert!(msg.contains("address, port, weight"), "{msg}");

        let (line, col, field, _) = fail(&format!("{MINIMAL}hash_sed = 1\n"));
        assert_eq!((line, col, field.as_str()), (3, 1, "daemon.hash_sed"));
    }

    #[test]
    fn error_bad_address() {
        let (line, col, field, msg) = fail(&sample_with(
            "\"198.18.2.12:8080\"",
            "\"198.18.2.300:8080\"",
        ));
        assert_eq!(
            (line, col, field.as_str()),
            (30, 28, "target_group[0].backends[1]")
        );
        assert!(msg.contains("198.18.2.300:8080"), "{msg}");

        let (line, col, field, _) = fail(&sample_with(
            "\"198.18.100.1\"\nport = 80",
            "\"198.18.100\"\nport = 80",
        ));
        assert_eq!((line, col, field.as_str()), (8, 7, "service[0].vip"));

        let (line, col, field, _) = fail(&sample_with(
            "{ address = \"198.18.2.13\", weight = 2 }",
            "{ address = \"198.18.2.13:80:80\" }",
        ));
        assert_eq!(
            (line, col, field.as_str()),
            (30, 60, "target_group[0].backends[2].address")
        );

        // Unspecified and multicast VIPs.
        let (line, _, field, msg) = fail(&sample_with("\"2001:db8:100::1\"", "\"::\""));
        assert_eq!((line, field.as_str()), (22, "service[2].vip"));
        assert!(msg.contains("unspecified"), "{msg}");
        let (_, _, field, msg) = fail(&sample_with("\"2001:db8:100::1\"", "\"ff02::1\""));
        assert_eq!(field, "service[2].vip");
        assert!(msg.contains("multicast"), "{msg}");
        // A vip with a port.
        let (_, _, _, msg) = fail(&sample_with(
            "\"2001:db8:100::1\"",
            "\"[2001:db8:100::1]:80\"",
        ));
        assert!(msg.contains("port = N"), "{msg}");
    }

    #[test]
    fn error_port_out_of_range() {
        let (line, col, field, msg) = fail(&sample_with("port = 53", "port = 70000"));
        assert_eq!((line, col, field.as_str()), (16, 8, "service[1].port"));
        assert_eq!(msg, "70000 is out of range (1-65535)");

        let (line, col, field, msg) = fail(&sample_with(
            "\"198.18.2.12:5353\"",
            "\"198.18.2.12:65536\"",
        ));
        assert_eq!(
            (line, col, field.as_str()),
            (34, 33, "target_group[1].backends[1]")
        );
        assert!(msg.contains("65536 is out of range"), "{msg}");

        let (_, _, field, _) = fail(&sample_with(
            "{ address = \"198.18.2.13\", weight = 2 }",
            "{ address = \"198.18.2.13\", port = 0 }",
        ));
        assert_eq!(field, "target_group[0].backends[2].port");

        let (_, _, field, msg) = fail(&sample_with("port = 53", "port = \"53\""));
        assert_eq!(field, "service[1].port");
        assert_eq!(msg, "expected an integer, found a string");
    }

    #[test]
    fn error_port_given_twice() {
        let (_, _, field, msg) = fail(&sample_with(
            "{ address = \"198.18.2.13\", weight = 2 }",
            "{ address = \"198.18.2.13:80\", port = 81 }",
        ));
        assert_eq!(field, "target_group[0].backends[2].port");
        assert!(msg.contains("twice"), "{msg}");
    }

    #[test]
    fn error_missing_target_group() {
        let (line, col, field, msg) = fail(&sample_with(
            "target_group = \"dns-servers\"",
            "target_group = \"dns\"",
        ));
        assert_eq!(
            (line, col, field.as_str()),
            (18, 16, "service[1].target_group")
        );
        assert!(
            msg.contains("\"web-servers\", \"dns-servers\", \"web-servers-v6\""),
            "{msg}"
        );
    }

    #[test]
    fn error_duplicate_vip_port_proto() {
        let (line, col, field, msg) = fail(&sample_with(
            "port = 53\nprotocol = \"udp\"",
            "port = 80\nprotocol = \"tcp\"",
        ));
        assert_eq!((line, col, field.as_str()), (15, 7, "service[1].vip"));
        assert!(msg.contains("service[0] \"web\""), "{msg}");
        // Same address and port over another protocol is fine.
        parse(&sample_with("port = 53", "port = 80"), "x").unwrap();
    }

    #[test]
    fn error_duplicate_names() {
        let (line, col, field, _) = fail(&sample_with("name = \"dns\"", "name = \"web\""));
        assert_eq!((line, col, field.as_str()), (14, 8, "service[1].name"));
        let (line, col, field, _) = fail(&sample_with(
            "name = \"dns-servers\"",
            "name = \"web-servers\"",
        ));
        assert_eq!((line, col, field.as_str()), (33, 8, "target_group[1].name"));
    }

    #[test]
    fn error_duplicate_backend() {
        let (line, col, field, _) =
            fail(&sample_with("\"198.18.2.12:5353\"", "\"198.18.2.11:5353\""));
        assert_eq!(
            (line, col, field.as_str()),
            (34, 33, "target_group[1].backends[1]")
        );
        // Same address, once with the group port implied and once explicitly.
        let (_, _, field, _) = fail(&sample_with("\"198.18.2.12:8080\"", "\"198.18.2.11:8080\""));
        assert_eq!(field, "target_group[0].backends[1]");
        // Equal only once the service port fills in.
        let text = sample_with("\"198.18.2.12:5353\"", "\"198.18.2.11\"")
            .replace("port = 53\n", "port = 5353\n");
        let (_, _, field, msg) = fail(&text);
        assert_eq!(field, "target_group[1].backends[1]");
        assert!(msg.contains("service port"), "{msg}");
    }

    #[test]
    fn error_family_mismatch() {
        // One IPv6 backend in a group used by an IPv4 service.
        let (line, col, field, msg) = fail(&sample_with(
            "\"198.18.2.12:5353\"",
            "\"[2001:db8::5]:5353\"",
        ));
        assert_eq!(
            (line, col, field.as_str()),
            (34, 33, "target_group[1].backends[1]")
        );
        assert!(msg.contains("NAT cannot translate"), "{msg}");
        // An IPv4 service pointing at an IPv6-only group.
        let (line, col, field, msg) = fail(&sample_with(
            "target_group = \"dns-servers\"",
            "target_group = \"web-servers-v6\"",
        ));
        assert_eq!(
            (line, col, field.as_str()),
            (18, 16, "service[1].target_group")
        );
        assert!(msg.contains("only IPv6 backends"), "{msg}");
    }

    #[test]
    fn error_table_size() {
        let (line, col, field, msg) = fail(&format!("{MINIMAL}maglev_table_size = 65536\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (3, 21, "daemon.maglev_table_size")
        );
        assert!(msg.contains("not prime") && msg.contains("65537"), "{msg}");

        let (_, _, field, msg) = fail(&format!("{MINIMAL}maglev_table_size = 1019\n"));
        assert_eq!(field, "daemon.maglev_table_size");
        assert!(msg.contains("out of range"), "{msg}");

        // Too small for the largest group: 11 backends need more than 1100 slots.
        let backends: Vec<String> = (1..=11).map(|i| format!("\"10.0.0.{i}\"")).collect();
        let text = format!(
            "{MINIMAL}maglev_table_size = 1021\n[[target_group]]\nname = \"g\"\nbackends = [{}]\n",
            backends.join(", ")
        );
        let (line, _, field, msg) = fail(&text);
        assert_eq!((line, field.as_str()), (3, "daemon.maglev_table_size"));
        assert!(msg.contains("100 ×") && msg.contains("1103"), "{msg}");
    }

    #[test]
    fn error_bad_xdp_mode() {
        let (line, col, field, msg) = fail(&sample_with("\"auto\"", "\"driver\""));
        assert_eq!((line, col, field.as_str()), (3, 12, "daemon.xdp_mode"));
        assert!(msg.contains("\"driver\""), "{msg}");
    }

    #[test]
    fn error_bad_protocol() {
        let (line, col, field, _) = fail(&sample_with("protocol = \"udp\"", "protocol = \"sctp\""));
        assert_eq!((line, col, field.as_str()), (17, 12, "service[1].protocol"));
    }

    #[test]
    fn error_daemon_limits() {
        let (_, _, field, _) = fail(&format!("{MINIMAL}conntrack_size = 1023\n"));
        assert_eq!(field, "daemon.conntrack_size");
        let (_, _, field, _) = fail(&format!("{MINIMAL}conntrack_size = 100000001\n"));
        assert_eq!(field, "daemon.conntrack_size");
        let (_, _, field, _) = fail(&format!("{MINIMAL}reverse_size = 1023\n"));
        assert_eq!(field, "daemon.reverse_size");
        let (_, _, field, _) = fail(&format!("{MINIMAL}reverse_size = 100000001\n"));
        assert_eq!(field, "daemon.reverse_size");
        let c = parse(
            &format!("{MINIMAL}conntrack_size = 4096\nreverse_size = 1024\n"),
            "x",
        )
        .unwrap();
        assert_eq!(
            (c.daemon.conntrack_size, c.daemon.reverse_size),
            (4096, 1024)
        );
        let (_, _, field, _) = fail(&format!("{MINIMAL}max_services = 0\n"));
        assert_eq!(field, "daemon.max_services");
        let (_, _, field, _) = fail(&format!("{MINIMAL}max_services = 4097\n"));
        assert_eq!(field, "daemon.max_services");
        let (_, _, field, _) = fail(&format!("{MINIMAL}hash_seed = -1\n"));
        assert_eq!(field, "daemon.hash_seed");

        let (line, col, field, _) = fail("[daemon]\ninterfaces = []\n");
        assert_eq!((line, col, field.as_str()), (2, 14, "daemon.interfaces"));
        let (_, col, field, _) = fail("[daemon]\ninterfaces = [\"eth0\", \"\"]\n");
        assert_eq!((col, field.as_str()), (23, "daemon.interfaces[1]"));
        let (_, _, field, msg) = fail("[daemon]\ninterfaces = [\"eth0\", \"eth0\"]\n");
        assert_eq!(field, "daemon.interfaces[1]");
        assert!(msg.contains("duplicate"), "{msg}");
        let (line, col, field, _) = fail("[daemon]\nxdp_mode = \"auto\"\n");
        assert_eq!((line, col, field.as_str()), (1, 1, "daemon.interfaces"));
        let (line, col, field, _) = fail("");
        assert_eq!((line, col, field.as_str()), (1, 1, "daemon.interfaces"));
    }

    #[test]
    fn error_too_many_services() {
        let text = sample_with("conntrack_size = 1000000", "max_services = 2");
        let (line, col, field, msg) = fail(&text);
        assert_eq!((line, col, field.as_str()), (4, 16, "daemon.max_services"));
        assert!(msg.contains("3 services"), "{msg}");
    }

    #[test]
    fn error_weight() {
        for w in ["0", "10001"] {
            let (line, _, field, _) = fail(&sample_with("weight = 2", &format!("weight = {w}")));
            assert_eq!(
                (line, field.as_str()),
                (30, "target_group[0].backends[2].weight")
            );
        }
    }

    #[test]
    fn error_too_many_backends() {
        // Backend ids as the daemon counts them: one per member and port of the groups
        // behind a service. Group "a" (no port) is behind two services: two ids per member.
        let group = |name: &str, n: usize, net: u8| {
            let backends: Vec<String> = (0..n)
                .map(|i| format!("\"10.{net}.{}.{}\"", i / 250, i % 250 + 1))
                .collect();
            format!(
                "[[target_group]]\nname = \"{name}\"\nbackends = [{}]\n",
                backends.join(",")
            )
        };
        let svc = |name: &str, port: u16, group: &str| {
            format!(
                "[[service]]\nname = \"{name}\"\nvip = \"198.18.100.1\"\nport = {port}\n\
                 protocol = \"tcp\"\ntarget_group = \"{group}\"\n"
            )
        };
        let text = |n_b: usize| {
            format!(
                "[daemon]\ninterfaces = [\"eth0\"]\nmaglev_table_size = 150001\n{}{}{}{}{}{}",
                svc("s1", 80, "a"),
                svc("s2", 81, "a"),
                svc("s3", 82, "b"),
                group("a", 1500, 1),
                group("b", n_b, 2),
                // Behind no service: takes no ids.
                group("c", 1000, 3),
            )
        };
        // 2 × 1500 + 1096 = 4096 ids: fits, and the daemon's count agrees.
        let ok = parse(&text(1096), "x").expect("4096 ids fit");
        let desired = crate::state::State::new(ok).desired().unwrap();
        assert_eq!(desired.backends.len(), MAX_BACKENDS as usize);
        let (_, _, field, msg) = fail(&text(1097));
        assert_eq!(field, "target_group[1].backends[1096]");
        assert!(msg.contains("4096") && msg.contains("backend ids"), "{msg}");
    }

    #[test]
    fn empty_target_group_is_allowed() {
        let text = sample_with(
            "backends = [\"198.18.2.11:5353\", \"198.18.2.12:5353\"]",
            "backends = []",
        );
        let c = parse(&text, "x").unwrap();
        assert!(c.target_group("dns-servers").unwrap().backends.is_empty());
    }

    #[test]
    fn error_wrong_types() {
        let (line, col, field, msg) = fail(&format!("{MINIMAL}[service]\nname = \"x\"\n"));
        assert_eq!((line, col, field.as_str()), (3, 1, "service"));
        assert!(msg.contains("[[service]]"), "{msg}");
        let (_, _, field, msg) = fail(&sample_with(
            "\"198.18.2.11\", \"198.18.2.12:8080\"",
            "\"198.18.2.11\", 5",
        ));
        assert_eq!(field, "target_group[0].backends[1]");
        assert!(msg.contains("found an integer"), "{msg}");
        let (_, _, field, msg) = fail(&sample_with(
            "conntrack_size = 1000000",
            "conntrack_size = 1979-05-27",
        ));
        assert_eq!(field, "daemon.conntrack_size");
        assert!(msg.contains("date-time"), "{msg}");
    }

    #[test]
    fn error_missing_key() {
        let (line, col, field, msg) = fail(&sample_with("port = 53\n", ""));
        assert_eq!((line, col, field.as_str()), (13, 1, "service[1].port"));
        assert!(msg.contains("missing"), "{msg}");
    }

    #[test]
    fn error_syntax() {
        // Not TOML: the field is derived from the text.
        let (line, col, field, _) = fail(&sample_with("port = 53", "port = 53 53"));
        assert_eq!((line, field.as_str()), (16, "service[1].port"));
        assert!(col >= 10, "{col}");
        // Duplicate key.
        let (line, _, field, msg) = fail(&sample_with("port = 53", "port = 53\nport = 54"));
        assert_eq!((line, field.as_str()), (17, "service[1].port"));
        assert!(msg.contains("duplicate"), "{msg}");
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
                target: HealthTarget::Address,
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
                target: HealthTarget::Address,
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
    fn success_codes_forms() {
        let codes = |s: &str| s.parse::<SuccessCodes>().unwrap();
        let c = codes("200");
        assert!(c.matches(200) && !c.matches(201) && !c.matches(199));
        let c = codes("200-299");
        assert!(c.matches(200) && c.matches(250) && c.matches(299) && !c.matches(300));
        let c = codes("200,204,300-399");
        assert!(c.matches(204) && c.matches(399) && !c.matches(203) && !c.matches(400));
        assert_eq!(c.to_string(), "200,204,300-399");
        assert_eq!(
            codes(" 200 , 300 - 302 ,204-204").to_string(),
            "200,300-302,204"
        );
        assert_eq!(codes("100-599").to_string(), "100-599");
        assert_eq!(SuccessCodes::default(), codes("200-399"));
        assert_eq!(SuccessCodes::default().to_string(), DEFAULT_SUCCESS_CODES);
        assert_eq!(serde_json::to_value(codes("204")).unwrap(), "204");

        let err = |s: &str| s.parse::<SuccessCodes>().unwrap_err();
        assert!(err("").contains("must not be empty"), "{}", err(""));
        assert!(
            err("2xx").contains("\"2xx\" is not an HTTP status code"),
            "{}",
            err("2xx")
        );
        assert!(err("200,").contains("\"\" is not"), "{}", err("200,"));
        assert!(err("-200").contains("\"\" is not"), "{}", err("-200"));
        assert!(
            err("200-300-400").contains("\"300-400\""),
            "{}",
            err("200-300-400")
        );
        assert_eq!(err("600"), "600 is out of range (100-599)");
        assert_eq!(err("99-200"), "99 is out of range (100-599)");
        assert_eq!(
            err("399-200"),
            "range 399-200 is not ascending (write 200-399)"
        );
        assert_eq!(err("200-299,204"), "204 overlaps 200-299");
        assert_eq!(err("204,200-299"), "200-299 overlaps 204");
        assert_eq!(err("200,200"), "200 overlaps 200");
    }

    #[test]
    fn health_check_port_for() {
        let mut hc = HealthCheckConfig::default();
        assert_eq!(hc.port_for(None, 80), 80);
        assert_eq!(hc.port_for(Some(8080), 80), 8080);
        hc.port = Some(9000);
        assert_eq!(hc.port_for(Some(8080), 80), 9000);
        assert_eq!(hc.port_for(None, 80), 9000);
    }

    #[test]
    fn new_enum_names() {
        assert_eq!(AllUnhealthy::Drop.as_str(), "drop");
        assert_eq!(AllUnhealthy::FailOpen.to_string(), "fail_open");
        assert_eq!(AllUnhealthy::default(), AllUnhealthy::Drop);
        assert_eq!(HealthProtocol::Tcp.to_string(), "tcp");
        assert_eq!(HealthProtocol::Http.as_str(), "http");
        assert_eq!(
            serde_json::to_value(AllUnhealthy::FailOpen).unwrap(),
            "fail_open"
        );
    }

    #[test]
    fn http_listen_is_an_address_and_port() {
        assert_eq!(parse(MINIMAL, "x").unwrap().daemon.http_listen, None);
        let c = parse(&format!("{MINIMAL}http_listen = \"127.0.0.1:9470\"\n"), "x").unwrap();
        assert_eq!(
            c.daemon.http_listen,
            Some("127.0.0.1:9470".parse().unwrap())
        );
        let c = parse(&format!("{MINIMAL}http_listen = \"[::1]:9470\"\n"), "x").unwrap();
        assert_eq!(c.daemon.http_listen, Some("[::1]:9470".parse().unwrap()));
        for (bad, says) in [
            ("\"localhost:9470\"", "not an address and port"),
            ("\"127.0.0.1\"", "not an address and port"),
            ("\"::1:9470\"", "not an address and port"),
            ("\"127.0.0.1:0\"", "port 0"),
            ("\"127.0.0.1:65536\"", "not an address and port"),
            ("\"224.0.0.1:9470\"", "multicast"),
            ("9470", "expected a string"),
        ] {
            let (line, col, field, msg) = fail(&format!("{MINIMAL}http_listen = {bad}\n"));
            assert_eq!(
                (line, col, field.as_str()),
                (3, 15, "daemon.http_listen"),
                "{bad}"
            );
            assert!(msg.contains(says), "{bad}: {msg}");
        }
    }

    #[test]
    fn error_daemon_paths() {
        let (line, col, field, msg) = fail(&format!("{MINIMAL}api_socket = \"\"\n"));
        assert_eq!((line, col, field.as_str()), (3, 14, "daemon.api_socket"));
        assert_eq!(msg, "must not be empty");
        let long = format!("/run/{}", "x".repeat(103));
        let (line, col, field, msg) = fail(&format!("{MINIMAL}api_socket = \"{long}\"\n"));
        assert_eq!((line, col, field.as_str()), (3, 14, "daemon.api_socket"));
        assert!(
            msg.contains("108 bytes long") && msg.contains("at most 107"),
            "{msg}"
        );
        parse(&format!("{MINIMAL}api_socket = \"{}\"\n", &long[1..]), "x").unwrap();
        let (_, _, field, msg) = fail(&format!("{MINIMAL}api_socket = \"/run/xlb/\"\n"));
        assert_eq!(field, "daemon.api_socket");
        assert!(msg.contains("ends with /"), "{msg}");
        let (_, _, field, msg) = fail(&format!("{MINIMAL}api_socket = 1\n"));
        assert_eq!(field, "daemon.api_socket");
        assert_eq!(msg, "expected a string, found an integer");
        let (_, _, field, msg) = fail(&format!("{MINIMAL}api_socket = \"/run/\\u0000x\"\n"));
        assert_eq!(field, "daemon.api_socket");
        assert!(msg.contains("NUL"), "{msg}");
        // A relative socket path is allowed.
        let c = parse(&format!("{MINIMAL}api_socket = \"xlb.sock\"\n"), "x").unwrap();
        assert_eq!(c.daemon.api_socket, Path::new("xlb.sock"));

        let (line, col, field, msg) = fail(&format!("{MINIMAL}pin_path = \"sys/fs/bpf/xlb\"\n"));
        assert_eq!((line, col, field.as_str()), (3, 12, "daemon.pin_path"));
        assert_eq!(
            msg,
            "\"sys/fs/bpf/xlb\" is not an absolute path (it must start with /)"
        );
        // A trailing / is fine for the pin directory.
        parse(&format!("{MINIMAL}pin_path = \"/sys/fs/bpf/xlb/\"\n"), "x").unwrap();

        let (line, col, field, msg) = fail(&format!("{MINIMAL}state_file = \"state.json\"\n"));
        assert_eq!((line, col, field.as_str()), (3, 14, "daemon.state_file"));
        assert!(msg.contains("not an absolute path"), "{msg}");
        let (_, _, field, msg) = fail(&format!("{MINIMAL}state_file = \"/run/xlb/\"\n"));
        assert_eq!(field, "daemon.state_file");
        assert!(msg.contains("ends with /"), "{msg}");

        // The socket and the state file collide.
        let (line, col, field, msg) = fail(&format!(
            "{MINIMAL}api_socket = \"/run/x\"\nstate_file = \"/run/x\"\n"
        ));
        assert_eq!((line, col, field.as_str()), (4, 14, "daemon.state_file"));
        assert!(msg.contains("daemon.api_socket (line 3)"), "{msg}");
        let (line, _, field, msg) = fail(&format!("{MINIMAL}state_file = \"/run/xlb/xlb.sock\"\n"));
        assert_eq!((line, field.as_str()), (3, "daemon.state_file"));
        assert!(msg.contains("the default daemon.api_socket"), "{msg}");
        let (line, _, field, msg) =
            fail(&format!("{MINIMAL}api_socket = \"/run/xlb/state.json\"\n"));
        assert_eq!((line, field.as_str()), (3, "daemon.api_socket"));
        assert!(msg.contains("the default daemon.state_file"), "{msg}");
    }

    #[test]
    fn error_idle_timeouts() {
        let (line, col, field, msg) = fail(&format!("{MINIMAL}tcp_idle_timeout = \"30x\"\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (3, 20, "daemon.tcp_idle_timeout")
        );
        assert!(
            msg.starts_with(
                "\"30x\" is not a duration (e.g. \"30s\", \"5m\", \"250ms\"): unknown time unit"
            ),
            "{msg}"
        );
        let (_, _, field, msg) = fail(&format!("{MINIMAL}udp_idle_timeout = \"120\"\n"));
        assert_eq!(field, "daemon.udp_idle_timeout");
        assert!(msg.contains("time unit needed"), "{msg}");
        let (_, _, field, msg) = fail(&format!("{MINIMAL}udp_idle_timeout = 120\n"));
        assert_eq!(field, "daemon.udp_idle_timeout");
        assert_eq!(
            msg,
            "expected a duration string such as \"120s\", found an integer"
        );
        let (_, _, _, msg) = fail(&format!("{MINIMAL}udp_idle_timeout = 1.5\n"));
        assert_eq!(
            msg,
            "expected a duration string (e.g. \"30s\", \"5m\", \"250ms\"), found a float"
        );
        for bad in ["999ms", "0s", "7d 1s", "8d"] {
            let (_, _, field, msg) = fail(&format!("{MINIMAL}tcp_idle_timeout = \"{bad}\"\n"));
            assert_eq!(field, "daemon.tcp_idle_timeout");
            assert_eq!(msg, format!("\"{bad}\" is out of range (1s-7days)"));
        }
        for good in ["1s", "7d", "1h 30m", "2min", "1.5h"] {
            parse(&format!("{MINIMAL}udp_idle_timeout = \"{good}\"\n"), "x").unwrap();
        }
    }

    #[test]
    fn error_maglev_entries() {
        // maglev_table_size set: the error is there, even when max_services is set too.
        let text = format!("{MINIMAL}max_services = 64\nmaglev_table_size = 4000037\n");
        let (line, col, field, msg) = fail(&text);
        assert_eq!(
            (line, col, field.as_str()),
            (4, 21, "daemon.maglev_table_size")
        );
        assert_eq!(
            msg,
            "max_services × 2 × maglev_table_size = 64 × 2 × 4000037 = 512004736 MAGLEV map \
             entries (two Maglev tables per service), more than the limit of 268435456 \
             (2^28 u32 entries, 1 GiB); use a maglev_table_size of at most 2097152 (a prime \
             such as 2097143) or a max_services of at most 33"
        );
        // Only max_services set.
        let (line, col, field, msg) = fail(&format!("{MINIMAL}max_services = 2048\n"));
        assert_eq!((line, col, field.as_str()), (3, 16, "daemon.max_services"));
        assert!(
            msg.contains("2048 × 2 × 65537 = 268439552") && msg.contains("at most 2047"),
            "{msg}"
        );
        parse(&format!("{MINIMAL}max_services = 2047\n"), "x").unwrap();
        // With the most services, the hint is still a prime the table may have.
        let text = format!("{MINIMAL}max_services = 4096\nmaglev_table_size = 1000003\n");
        let (_, _, field, msg) = fail(&text);
        assert_eq!(field, "daemon.maglev_table_size");
        assert!(
            msg.ends_with("at most 32768 (a prime such as 32749) or a max_services of at most 134"),
            "{msg}"
        );
        parse(
            &format!("{MINIMAL}max_services = 4096\nmaglev_table_size = 32749\n"),
            "x",
        )
        .unwrap();
    }

    #[test]
    fn error_deregistration_delay() {
        let (line, col, field, msg) = fail(&format!(
            "{MINIMAL}{GROUP}deregistration_delay = \"1h 1s\"\n"
        ));
        assert_eq!(
            (line, col, field.as_str()),
            (6, 24, "target_group[0].deregistration_delay")
        );
        assert_eq!(msg, "\"1h 1s\" is out of range (0s-1h)");
        let (_, _, field, msg) = fail(&format!("{MINIMAL}{GROUP}deregistration_delay = \"-1s\"\n"));
        assert_eq!(field, "target_group[0].deregistration_delay");
        assert!(msg.contains("is not a duration"), "{msg}");
        let (_, _, _, msg) = fail(&format!("{MINIMAL}{GROUP}deregistration_delay = 300\n"));
        assert!(msg.contains("such as \"300s\""), "{msg}");
    }

    #[test]
    fn error_all_unhealthy() {
        let (line, col, field, msg) =
            fail(&format!("{MINIMAL}{GROUP}all_unhealthy = \"fail-open\"\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (6, 17, "target_group[0].all_unhealthy")
        );
        assert_eq!(
            msg,
            "unknown value \"fail-open\" (expected \"drop\" or \"fail_open\")"
        );
        let (_, _, field, msg) = fail(&format!("{MINIMAL}{GROUP}all_unhealthy = true\n"));
        assert_eq!(field, "target_group[0].all_unhealthy");
        assert_eq!(msg, "expected a string, found a boolean");
    }

    #[test]
    fn error_health_check_shape() {
        // Unknown key.
        let (line, col, field, msg) = fail(&with_check("protocl = \"tcp\"\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (7, 1, "target_group[0].health_check.protocl")
        );
        assert!(msg.contains("protocol, path, port, interval"), "{msg}");
        // In the second group: the index follows the [[target_group]] above.
        let text = format!(
            "{MINIMAL}{GROUP}[[target_group]]\nname = \"h\"\nbackends = []\n\
             [target_group.health_check]\ntimout = \"1s\"\n"
        );
        let (line, _, field, _) = fail(&text);
        assert_eq!(
            (line, field.as_str()),
            (10, "target_group[1].health_check.timout")
        );
        // Inline, with an unknown key.
        let (line, _, field, _) = fail(&format!(
            "{MINIMAL}{GROUP}health_check = {{ intervall = \"1s\" }}\n"
        ));
        assert_eq!(
            (line, field.as_str()),
            (6, "target_group[0].health_check.intervall")
        );
        // Not a table.
        let (line, col, field, msg) = fail(&format!("{MINIMAL}{GROUP}health_check = true\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (6, 16, "target_group[0].health_check")
        );
        assert!(
            msg.contains("expected a table") && msg.contains("found a boolean"),
            "{msg}"
        );
        let (_, _, field, msg) = fail(&format!(
            "{MINIMAL}{GROUP}[[target_group.health_check]]\nprotocol = \"tcp\"\n"
        ));
        assert_eq!(field, "target_group[0].health_check");
        assert!(msg.contains("found an array"), "{msg}");
        // Before any [[target_group]].
        let (line, _, field, msg) = fail(&format!(
            "{MINIMAL}[target_group.health_check]\nprotocol = \"tcp\"\n"
        ));
        assert_eq!((line, field.as_str()), (3, "target_group"));
        assert!(msg.contains("there is none"), "{msg}");
        // A syntax error inside the section names the group's field.
        let (line, _, field, msg) = fail(&with_check("interval = \"1m\"\ninterval = \"2m\"\n"));
        assert_eq!(
            (line, field.as_str()),
            (8, "target_group[0].health_check.interval")
        );
        assert!(msg.contains("duplicate"), "{msg}");
    }

    #[test]
    fn error_health_check_protocol() {
        let (line, col, field, msg) = fail(&with_check("protocol = \"https\"\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (7, 12, "target_group[0].health_check.protocol")
        );
        assert_eq!(
            msg,
            "unknown protocol \"https\" (expected \"tcp\" or \"http\")"
        );
    }

    #[test]
    fn error_health_check_path() {
        let (line, col, field, msg) = fail(&with_check("path = \"health\"\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (7, 8, "target_group[0].health_check.path")
        );
        assert_eq!(msg, "\"health\" must start with /");
        let (_, _, field, msg) = fail(&with_check("path = \"/a b\"\n"));
        assert_eq!(field, "target_group[0].health_check.path");
        assert!(msg.contains("whitespace"), "{msg}");
        let (_, _, _, msg) = fail(&with_check("path = \"/a\\tb\"\n"));
        assert!(msg.contains("whitespace"), "{msg}");
        let (_, _, _, msg) = fail(&with_check("path = \"/a\\u0001\"\n"));
        assert!(msg.contains("control character"), "{msg}");
        let (_, _, _, msg) = fail(&with_check("path = 1\n"));
        assert_eq!(msg, "expected a string, found an integer");
    }

    #[test]
    fn error_http_only_keys_with_tcp() {
        // `path` before `protocol`: the order of the keys does not matter.
        let (line, col, field, msg) = fail(&with_check("path = \"/health\"\nprotocol = \"tcp\"\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (7, 8, "target_group[0].health_check.path")
        );
        assert_eq!(
            msg,
            "path is only for http checks; this check's protocol is \"tcp\""
        );
        let (line, col, field, msg) =
            fail(&with_check("protocol = \"tcp\"\nsuccess_codes = \"200\"\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (8, 17, "target_group[0].health_check.success_codes")
        );
        assert!(
            msg.starts_with("success_codes is only for http checks"),
            "{msg}"
        );
    }

    #[test]
    fn error_health_check_success_codes() {
        let (line, col, field, msg) = fail(&with_check("success_codes = \"2xx\"\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (7, 17, "target_group[0].health_check.success_codes")
        );
        assert!(msg.contains("\"2xx\" is not an HTTP status code"), "{msg}");
        let (_, _, _, msg) = fail(&with_check("success_codes = \"299-200\"\n"));
        assert_eq!(msg, "range 299-200 is not ascending (write 200-299)");
        let (_, _, _, msg) = fail(&with_check("success_codes = 200\n"));
        assert_eq!(msg, "expected a string, found an integer");
    }

    #[test]
    fn error_health_check_durations() {
        let e = parse(&with_check("interval = \"30x\"\n"), "xlb.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "xlb.toml:7:12: target_group[0].health_check.interval: \"30x\" is not a \
                 duration (e.g. \"30s\", \"5m\", \"250ms\"): unknown time unit \"x\""
            ),
            "{e}"
        );
        for (body, field, msg) in [
            (
                "interval = \"99ms\"",
                "interval",
                "\"99ms\" is out of range (100ms-5m)",
            ),
            (
                "interval = \"301s\"",
                "interval",
                "\"301s\" is out of range (100ms-5m)",
            ),
            (
                "timeout = \"9ms\"",
                "timeout",
                "\"9ms\" is out of range (10ms-2m)",
            ),
            (
                "timeout = \"121s\"",
                "timeout",
                "\"121s\" is out of range (10ms-2m)",
            ),
        ] {
            let (line, col, f, m) = fail(&with_check(&format!("{body}\n")));
            assert_eq!(
                (line, f.as_str(), m.as_str()),
                (
                    7,
                    format!("target_group[0].health_check.{field}").as_str(),
                    msg
                )
            );
            assert_eq!(col, field.len() + 4);
        }
        // The bounds themselves are fine.
        parse(
            &with_check("interval = \"100ms\"\ntimeout = \"10ms\"\n"),
            "x",
        )
        .unwrap();
        parse(&with_check("interval = \"5m\"\ntimeout = \"2m\"\n"), "x").unwrap();
    }

    #[test]
    fn error_health_check_timeout_over_interval() {
        // Both set: the timeout is wrong.
        let (line, col, field, msg) = fail(&with_check("interval = \"2s\"\ntimeout = \"3s\"\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (8, 11, "target_group[0].health_check.timeout")
        );
        assert_eq!(
            msg,
            "the timeout (3s) must not be longer than the interval (2s): a check must end \
             before the next one starts"
        );
        // Only the timeout set.
        let (_, _, field, msg) = fail(&with_check("timeout = \"31s\"\n"));
        assert_eq!(field, "target_group[0].health_check.timeout");
        assert!(msg.contains("the default interval (30s)"), "{msg}");
        // Only the interval set, below the default timeout.
        let (line, col, field, msg) = fail(&with_check("interval = \"1s\"\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (7, 12, "target_group[0].health_check.interval")
        );
        assert!(
            msg.contains("default timeout (5s)") && msg.contains("set timeout to at most 1s"),
            "{msg}"
        );
        // Inline tables point at the value too.
        let (line, col, field, _) = fail(&format!(
            "{MINIMAL}{GROUP}health_check = {{ interval = \"1s\" }}\n"
        ));
        assert_eq!(
            (line, col, field.as_str()),
            (6, 29, "target_group[0].health_check.interval")
        );
    }

    #[test]
    fn error_health_check_thresholds_and_port() {
        for key in ["healthy_threshold", "unhealthy_threshold"] {
            for v in ["0", "11"] {
                let (line, col, field, msg) = fail(&with_check(&format!("{key} = {v}\n")));
                assert_eq!(
                    (line, col, field),
                    (
                        7,
                        key.len() + 4,
                        format!("target_group[0].health_check.{key}")
                    )
                );
                assert_eq!(msg, format!("{v} is out of range (1-10)"));
            }
        }
        for v in ["0", "65536"] {
            let (line, col, field, msg) = fail(&with_check(&format!("port = {v}\n")));
            assert_eq!(
                (line, col, field.as_str()),
                (7, 8, "target_group[0].health_check.port")
            );
            assert_eq!(msg, format!("{v} is out of range (1-65535)"));
        }
    }

    #[test]
    fn error_backend_is_a_vip() {
        let text = format!(
            "{MINIMAL}[[service]]\nname = \"web\"\nvip = \"10.0.0.1\"\nport = 80\n\
             protocol = \"tcp\"\ntarget_group = \"g\"\n{GROUP}"
        );
        let (line, _, field, msg) = fail(&text);
        assert_eq!((line, field.as_str()), (11, "target_group[0].backends[0]"));
        assert_eq!(
            msg,
            "10.0.0.1 is the vip of service \"web\": a backend cannot be a VIP"
        );
    }

    #[test]
    fn addr_port_forms() {
        assert_eq!(
            parse_addr_port("198.18.2.11"),
            Ok((ip("198.18.2.11"), None))
        );
        assert_eq!(
            parse_addr_port("198.18.2.12:8080"),
            Ok((ip("198.18.2.12"), Some(8080)))
        );
        assert_eq!(
            parse_addr_port("2001:db8:2::11"),
            Ok((ip("2001:db8:2::11"), None))
        );
        assert_eq!(
            parse_addr_port("[2001:db8:2::12]:8080"),
            Ok((ip("2001:db8:2::12"), Some(8080)))
        );
        assert_eq!(
            parse_addr_port("[2001:db8:2::12]"),
            Ok((ip("2001:db8:2::12"), None))
        );
        assert!(parse_addr_port("[198.18.2.1]:80").is_err());
        assert!(parse_addr_port("198.18.2.1:").is_err());
        assert!(parse_addr_port("198.18.2.1:+80").is_err());
        assert!(parse_addr_port("host:80").is_err());
        assert!(parse_addr_port(" 198.18.2.1").is_err());
    }

    // ---- [target_group.scaling] ----

    /// `MINIMAL` + `GROUP` (one backend) + `[target_group.scaling]` (line 6) + `body` (from
    /// line 7).
    fn with_scaling(body: &str) -> String {
        format!("{MINIMAL}{GROUP}[target_group.scaling]\n{body}")
    }

    /// `with_scaling("max = 1\n")` + `[[target_group.scaling.policy]]` (line 8) + `body` (from
    /// line 9).
    fn with_policy(body: &str) -> String {
        with_scaling(&format!("max = 1\n[[target_group.scaling.policy]]\n{body}"))
    }

    /// `with_scaling("max = 1\n")` + `[[target_group.scaling.schedule]]` (line 8) + `body`
    /// (from line 9).
    fn with_schedule(body: &str) -> String {
        with_scaling(&format!(
            "max = 1\n[[target_group.scaling.schedule]]\n{body}"
        ))
    }

    /// The scaling part of issue 5, as written there.
    const ISSUE_SCALING: &str = r#"[target_group.scaling]
min = 2
max = 10
desired = 2
scale_out_command = "/usr/local/bin/launch-backend"   # prints the new backend(s), one ADDR[:PORT] a line
scale_in_command = "/usr/local/bin/terminate-backend"  # gets the backend in XLB_BACKEND after it is drained
cooldown = "300s"        # after a scaling action, before the next one of the same direction
warmup = "60s"           # a new backend's load is left out of the group's averages for this long
grace_period = "120s"    # how long a launched backend may take to pass its health checks

[[target_group.scaling.policy]]
type = "target_tracking"
metric = "new_flows_per_second_per_backend"
target = 100

[[target_group.scaling.policy]]
type = "step"
metric = "backend_cpu"
scale_out = { above = 0.70, for = "5m", add = 1 }
scale_in = { below = 0.30, for = "10m", remove = 1 }

[[target_group.scaling.schedule]]
cron = "0 8 * * MON-FRI"
desired = 6
"#;

    fn issue_scaling() -> ScalingConfig {
        ScalingConfig {
            min: 2,
            max: 10,
            desired: 2,
            scale_out_command: Some("/usr/local/bin/launch-backend".into()),
            scale_in_command: Some("/usr/local/bin/terminate-backend".into()),
            hook_timeout: Duration::from_secs(60),
            cooldown: Duration::from_secs(300),
            warmup: Duration::from_secs(60),
            grace_period: Duration::from_secs(120),
            metric_command: None,
            metric_interval: Duration::from_secs(15),
            policies: vec![
                PolicyConfig::TargetTracking {
                    metric: Metric::NewFlowsPerSecondPerBackend,
                    target: 100.0,
                    disable_scale_in: false,
                },
                PolicyConfig::Step {
                    metric: Metric::BackendCpu,
                    scale_out: Some(StepRule {
                        threshold: 0.70,
                        hold: Duration::from_secs(300),
                        change: 1,
                    }),
                    scale_in: Some(StepRule {
                        threshold: 0.30,
                        hold: Duration::from_secs(600),
                        change: 1,
                    }),
                },
            ],
            schedules: vec![ScheduleConfig {
                cron: "0 8 * * MON-FRI".into(),
                desired: Some(6),
                min: None,
                max: None,
            }],
        }
    }

    #[test]
    fn scaling_issue_example_parses() {
        // With an http health check (for backend_cpu) and without any.
        for check in ["[target_group.health_check]\npath = \"/health\"\n", ""] {
            let text = format!(
                "{MINIMAL}[[service]]\nname = \"web\"\nvip = \"198.18.100.1\"\nport = 80\n\
                 protocol = \"tcp\"\ntarget_group = \"web-servers\"\n\n[[target_group]]\n\
                 name = \"web-servers\"\nbackends = [\"198.18.2.11\", \"198.18.2.12\"]\n\
                 {check}\n{ISSUE_SCALING}"
            );
            let c = parse(&text, "xlb.toml").unwrap();
            let g = &c.target_groups[0];
            assert_eq!(g.scaling, Some(issue_scaling()));
            assert_eq!(g.health_check.is_some(), !check.is_empty());
        }
        // Alone in a group with no service and no backend.
        let c = parse(&format!("{MINIMAL}{GROUP}{ISSUE_SCALING}"), "x").unwrap();
        assert_eq!(c.target_groups[0].scaling, Some(issue_scaling()));

        let json = serde_json::to_value(&c).unwrap();
        let s = &json["target_groups"][0]["scaling"];
        assert_eq!(s["min"], 2);
        assert_eq!(s["cooldown"], "5m");
        assert_eq!(s["grace_period"], "2m");
        assert_eq!(s["metric_command"], serde_json::Value::Null);
        assert_eq!(s["policies"][0]["type"], "target_tracking");
        assert_eq!(
            s["policies"][0]["metric"],
            "new_flows_per_second_per_backend"
        );
        assert_eq!(s["policies"][0]["target"], 100.0);
        assert_eq!(s["policies"][1]["type"], "step");
        assert_eq!(s["policies"][1]["metric"], "backend_cpu");
        assert_eq!(s["policies"][1]["scale_out"]["threshold"], 0.7);
        assert_eq!(s["policies"][1]["scale_out"]["for"], "5m");
        assert_eq!(s["policies"][1]["scale_in"]["for"], "10m");
        assert_eq!(s["schedules"][0]["cron"], "0 8 * * MON-FRI");
        assert_eq!(s["schedules"][0]["desired"], 6);
        assert_eq!(s["schedules"][0]["max"], serde_json::Value::Null);
    }

    #[test]
    fn scaling_defaults_and_all_keys() {
        let c = parse(&with_scaling("max = 1\n"), "x").unwrap();
        assert_eq!(
            c.target_groups[0].scaling,
            Some(ScalingConfig {
                min: 1,
                max: 1,
                desired: 1,
                scale_out_command: None,
                scale_in_command: None,
                hook_timeout: DEFAULT_HOOK_TIMEOUT,
                cooldown: DEFAULT_COOLDOWN,
                warmup: DEFAULT_WARMUP,
                grace_period: DEFAULT_GRACE_PERIOD,
                metric_command: None,
                metric_interval: DEFAULT_METRIC_INTERVAL,
                policies: vec![],
                schedules: vec![],
            })
        );
        assert_eq!(DEFAULT_HOOK_TIMEOUT, Duration::from_secs(60));
        assert_eq!(DEFAULT_COOLDOWN, Duration::from_secs(300));
        assert_eq!(DEFAULT_WARMUP, Duration::from_secs(60));
        assert_eq!(DEFAULT_GRACE_PERIOD, Duration::from_secs(120));
        assert_eq!(DEFAULT_METRIC_INTERVAL, Duration::from_secs(15));
        // desired defaults to min; a group may scale to nothing.
        let c = parse(
            &with_scaling("min = 3\nmax = 5\nscale_out_command = \"launch\"\n"),
            "x",
        )
        .unwrap();
        let s = c.target_groups[0].scaling.as_ref().unwrap();
        assert_eq!((s.min, s.desired, s.max), (3, 3, 5));
        let c = parse(&with_scaling("min = 0\nmax = 0\n"), "x").unwrap();
        let s = c.target_groups[0].scaling.as_ref().unwrap();
        assert_eq!((s.min, s.desired, s.max), (0, 0, 0));

        // Every key, at its bounds.
        let text = with_scaling(
            "min = 0\nmax = 1000\ndesired = 1000\nscale_out_command = \"a 'b' c\"\n\
             scale_in_command = \"d\"\nhook_timeout = \"1h\"\ncooldown = \"0s\"\n\
             warmup = \"0s\"\ngrace_period = \"1s\"\nmetric_command = \"m\"\n\
             metric_interval = \"1h\"\n\
             [[target_group.scaling.policy]]\ntype = \"target_tracking\"\n\
             metric = \"queue_depth\"\ntarget = 0.5\ndisable_scale_in = true\n\
             [[target_group.scaling.policy]]\ntype = \"step\"\nmetric = \"active_flows_per_backend\"\n\
             scale_in = { below = -1, for = \"1d\" }\n\
             [[target_group.scaling.policy]]\ntype = \"step\"\nmetric = \"bytes_per_second_per_backend\"\n\
             scale_out = { above = 1e9, for = \"0s\", add = 1000 }\n\
             [[target_group.scaling.schedule]]\ncron = \"30 0 18 * * FRI\"\nmin = 0\nmax = 0\n\
             [[target_group.scaling.schedule]]\ncron = \"@daily\"\nmin = 2\ndesired = 2\nmax = 1000\n",
        );
        let c = parse(&text, "x").unwrap();
        let s = c.target_groups[0].scaling.as_ref().unwrap();
        assert_eq!((s.min, s.desired, s.max), (0, 1000, 1000));
        assert_eq!(s.scale_out_command.as_deref(), Some("a 'b' c"));
        assert_eq!(s.scale_in_command.as_deref(), Some("d"));
        assert_eq!(s.metric_command.as_deref(), Some("m"));
        assert_eq!(
            (
                s.hook_timeout,
                s.cooldown,
                s.warmup,
                s.grace_period,
                s.metric_interval
            ),
            (
                Duration::from_secs(3600),
                Duration::ZERO,
                Duration::ZERO,
                Duration::from_secs(1),
                Duration::from_secs(3600)
            )
        );
        assert_eq!(
            s.policies,
            vec![
                PolicyConfig::TargetTracking {
                    metric: Metric::Custom("queue_depth".into()),
                    target: 0.5,
                    disable_scale_in: true,
                },
                PolicyConfig::Step {
                    metric: Metric::ActiveFlowsPerBackend,
                    scale_out: None,
                    scale_in: Some(StepRule {
                        threshold: -1.0,
                        hold: Duration::from_secs(86400),
                        change: 1,
                    }),
                },
                PolicyConfig::Step {
                    metric: Metric::BytesPerSecondPerBackend,
                    scale_out: Some(StepRule {
                        threshold: 1e9,
                        hold: Duration::ZERO,
                        change: 1000,
                    }),
                    scale_in: None,
                },
            ]
        );
        assert_eq!(
            s.schedules,
            vec![
                ScheduleConfig {
                    cron: "30 0 18 * * FRI".into(),
                    desired: None,
                    min: Some(0),
                    max: Some(0),
                },
                ScheduleConfig {
                    cron: "@daily".into(),
                    desired: Some(2),
                    min: Some(2),
                    max: Some(1000),
                },
            ]
        );
    }

    #[test]
    fn scaling_inline_and_dotted_forms() {
        // Inline, policies and schedules included.
        let text = format!(
            "{MINIMAL}{GROUP}scaling = {{ max = 1, policy = [{{ type = \"step\", \
             metric = \"backend_cpu\", scale_out = {{ above = 0.7, for = \"5m\" }} }}], \
             schedule = [{{ cron = \"0 8 * * *\", desired = 1 }}] }}\n"
        );
        let c = parse(&text, "x").unwrap();
        let s = c.target_groups[0].scaling.as_ref().unwrap();
        assert_eq!(s.policies.len(), 1);
        assert_eq!(s.schedules[0].desired, Some(1));
        // Dotted keys.
        let c = parse(
            &format!("{MINIMAL}{GROUP}scaling.max = 1\nscaling.cooldown = \"1m\"\n"),
            "x",
        )
        .unwrap();
        let s = c.target_groups[0].scaling.as_ref().unwrap();
        assert_eq!((s.max, s.cooldown), (1, Duration::from_secs(60)));
        // A step rule as a sub-table.
        let c = parse(
            &with_policy(
                "type = \"step\"\nmetric = \"backend_cpu\"\n\
                 [target_group.scaling.policy.scale_in]\nbelow = 0.2\nfor = \"1m\"\n",
            ),
            "x",
        )
        .unwrap();
        let PolicyConfig::Step { scale_in, .. } =
            &c.target_groups[0].scaling.as_ref().unwrap().policies[0]
        else {
            panic!()
        };
        assert_eq!(scale_in.as_ref().unwrap().threshold, 0.2);
        // Each [[target_group]] has its own scaling, policies and schedules.
        let text = format!(
            "{MINIMAL}{GROUP}[target_group.scaling]\nmax = 1\n\
             [[target_group]]\nname = \"h\"\nbackends = []\n\
             [target_group.scaling]\nmax = 0\nmin = 0\n\
             [[target_group.scaling.policy]]\ntype = \"target_tracking\"\n\
             metric = \"backend_cpu\"\ntarget = 0.5\n"
        );
        let c = parse(&text, "x").unwrap();
        assert!(c.target_groups[0]
            .scaling
            .as_ref()
            .unwrap()
            .policies
            .is_empty());
        assert_eq!(
            c.target_groups[1].scaling.as_ref().unwrap().policies.len(),
            1
        );
        // Errors in the second group's policy name it.
        let (line, col, field, _) = fail(&format!("{text}[[target_group.scaling.policy]]\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (18, 1, "target_group[1].scaling.policy[1].type")
        );
        // Syntax errors are located the same way.
        let (line, _, field, msg) = fail(&format!("{text}target = 1\n"));
        assert_eq!(
            (line, field.as_str()),
            (18, "target_group[1].scaling.policy[0].target")
        );
        assert!(msg.contains("duplicate"), "{msg}");
        // No group to belong to.
        let (line, _, field, msg) = fail(&format!("{MINIMAL}[target_group.scaling]\nmax = 1\n"));
        assert_eq!((line, field.as_str()), (3, "target_group"));
        assert_eq!(
            msg,
            "[target_group.scaling] belongs to the [[target_group]] above it; there is none"
        );
        let (_, _, field, msg) = fail(&format!(
            "{MINIMAL}[[target_group.scaling.policy]]\ntype = \"step\"\n"
        ));
        assert_eq!(field, "target_group");
        assert!(msg.contains("there is none"), "{msg}");
    }

    #[test]
    fn error_scaling_shape() {
        let (line, col, field, msg) = fail(&format!("{MINIMAL}{GROUP}scaling = 3\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (6, 11, "target_group[0].scaling")
        );
        assert!(
            msg.starts_with("expected a table ([target_group.scaling]")
                && msg.ends_with("found an integer"),
            "{msg}"
        );
        let (_, _, field, msg) = fail(&format!(
            "{MINIMAL}{GROUP}[[target_group.scaling]]\nmax = 1\n"
        ));
        assert_eq!(field, "target_group[0].scaling");
        assert!(msg.contains("found an array"), "{msg}");
        let (line, _, field, msg) = fail(&with_scaling(
            "max = 1\n[target_group.scaling.policy]\ntype = \"step\"\n",
        ));
        assert_eq!(
            (line, field.as_str()),
            (8, "target_group[0].scaling.policy")
        );
        assert_eq!(
            msg,
            "expected an array of tables ([[target_group.scaling.policy]]), found a table"
        );
        let (_, _, field, msg) = fail(&with_scaling("max = 1\nschedule = [1]\n"));
        assert_eq!(field, "target_group[0].scaling.schedule[0]");
        assert!(msg.contains("found an integer"), "{msg}");
    }

    #[test]
    fn error_scaling_capacity() {
        let (line, col, field, msg) = fail(&with_scaling("min = 5\nmax = 3\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (7, 7, "target_group[0].scaling.min")
        );
        assert_eq!(
            msg,
            "min (5) is more than max (3); a scaling group needs min <= desired <= max"
        );
        let (line, col, field, msg) = fail(&with_scaling("max = 0\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (7, 7, "target_group[0].scaling.max")
        );
        assert!(
            msg.starts_with("max (0) is less than the default min (1)") && msg.contains("min = 0"),
            "{msg}"
        );
        let (line, col, field, msg) = fail(&with_scaling("min = 2\nmax = 1\ndesired = 1\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (7, 7, "target_group[0].scaling.min")
        );
        assert!(msg.starts_with("min (2) is more than max (1)"), "{msg}");
        let (line, col, field, msg) = fail(&with_scaling("min = 1\nmax = 1\ndesired = 0\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (9, 11, "target_group[0].scaling.desired")
        );
        assert_eq!(
            msg,
            "desired (0) is less than min (1); a scaling group needs min <= desired <= max"
        );
        let (_, _, field, msg) = fail(&with_scaling("max = 1\ndesired = 0\n"));
        assert_eq!(field, "target_group[0].scaling.desired");
        assert!(
            msg.starts_with("desired (0) is less than the default min (1)"),
            "{msg}"
        );
        let (line, col, field, msg) = fail(&with_scaling("max = 1\ndesired = 2\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (8, 11, "target_group[0].scaling.desired")
        );
        assert_eq!(
            msg,
            "desired (2) is more than max (1); a scaling group needs min <= desired <= max"
        );
        for (body, key, v) in [
            ("max = 1001\n", "max", "1001"),
            ("max = 1\nmin = -1\n", "min", "-1"),
            ("max = 1\ndesired = 1001\n", "desired", "1001"),
        ] {
            let (_, _, field, msg) = fail(&with_scaling(body));
            assert_eq!(field, format!("target_group[0].scaling.{key}"));
            assert_eq!(msg, format!("{v} is out of range (0-1000)"));
        }
        let (_, _, _, msg) = fail(&with_scaling("max = 1.0\n"));
        assert_eq!(msg, "expected an integer, found a float");
        // max is required.
        let (line, col, field, msg) = fail(&with_scaling("min = 1\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (6, 1, "target_group[0].scaling.max")
        );
        assert_eq!(msg, "missing required key `max`");
    }

    #[test]
    fn error_scale_out_command() {
        // One backend listed and room for more: the group could never grow.
        let (line, col, field, msg) = fail(&with_scaling("max = 2\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (6, 1, "target_group[0].scaling.scale_out_command")
        );
        assert!(
            msg.starts_with(
                "missing: the group lists 1 backend and may grow to max = 2, which takes a \
                 command that launches backends; give scale_out_command"
            ),
            "{msg}"
        );
        let (_, _, _, msg) = fail(&format!(
            "{MINIMAL}[[target_group]]\nname = \"g\"\nbackends = []\nscaling = {{ max = 1, min = 0 }}\n"
        ));
        assert!(
            msg.contains("the group lists no backend and may grow to max = 1"),
            "{msg}"
        );
        // As many listed as max: fine without it, and scale_in_command stays optional.
        let text = format!(
            "{MINIMAL}[[target_group]]\nname = \"g\"\nbackends = [\"10.0.0.1\", \"10.0.0.2\"]\n\
             [target_group.scaling]\nmax = 2\n"
        );
        let c = parse(&text, "x").unwrap();
        assert_eq!(
            c.target_groups[0]
                .scaling
                .as_ref()
                .unwrap()
                .scale_out_command,
            None
        );
        // Commands are non-empty strings.
        for key in ["scale_out_command", "scale_in_command", "metric_command"] {
            let (line, col, field, msg) = fail(&with_scaling(&format!("max = 1\n{key} = \" \"\n")));
            assert_eq!(
                (line, col, field),
                (8, key.len() + 4, format!("target_group[0].scaling.{key}"))
            );
            assert_eq!(msg, "must not be empty");
            let (_, _, _, msg) = fail(&with_scaling(&format!("max = 1\n{key} = [\"a\"]\n")));
            assert_eq!(msg, "expected a string, found an array");
            let (_, _, _, msg) = fail(&with_scaling(&format!("max = 1\n{key} = \"a\\u0000\"\n")));
            assert_eq!(msg, "contains a NUL character");
        }
    }

    #[test]
    fn error_scaling_durations() {
        for (key, bad, range) in [
            ("cooldown", "1d 1s", "0s-1day"),
            ("warmup", "1h 1s", "0s-1h"),
            ("grace_period", "0s", "1s-1h"),
            ("grace_period", "61m", "1s-1h"),
            ("hook_timeout", "999ms", "1s-1h"),
            ("hook_timeout", "2h", "1s-1h"),
            ("metric_interval", "0s", "1s-1h"),
            ("metric_interval", "1h 1ms", "1s-1h"),
        ] {
            let (line, col, field, msg) =
                fail(&with_scaling(&format!("max = 1\n{key} = \"{bad}\"\n")));
            assert_eq!(
                (line, col, field),
                (8, key.len() + 4, format!("target_group[0].scaling.{key}"))
            );
            assert_eq!(msg, format!("\"{bad}\" is out of range ({range})"));
        }
        let (_, _, field, msg) = fail(&with_scaling("max = 1\ncooldown = 300\n"));
        assert_eq!(field, "target_group[0].scaling.cooldown");
        assert_eq!(
            msg,
            "expected a duration string such as \"300s\", found an integer"
        );
        let (_, _, _, msg) = fail(&with_scaling("max = 1\nwarmup = \"1 mn\"\n"));
        assert!(
            msg.starts_with(
                "\"1 mn\" is not a duration (e.g. \"30s\", \"5m\", \"250ms\"): unknown time unit \"mn\""
            ),
            "{msg}"
        );
        // The step rule's `for`.
        let (line, col, field, msg) = fail(&with_policy(
            "type = \"step\"\nmetric = \"backend_cpu\"\nscale_out = { above = 1, for = \"1d 1s\" }\n",
        ));
        assert_eq!(
            (line, col, field.as_str()),
            (11, 32, "target_group[0].scaling.policy[0].scale_out.for")
        );
        assert_eq!(msg, "\"1d 1s\" is out of range (0s-1day)");
    }

    #[test]
    fn error_scaling_unknown_keys() {
        let (line, col, field, msg) = fail(&with_scaling("max = 1\ncooldow = \"1s\"\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (8, 1, "target_group[0].scaling.cooldow")
        );
        assert_eq!(
            msg,
            "unknown key `cooldow`; allowed in target_group[0].scaling: min, max, desired, \
             scale_out_command, scale_in_command, hook_timeout, cooldown, warmup, grace_period, \
             metric_command, metric_interval, policy, schedule"
        );
        // In a policy: the keys of its type.
        let (line, col, field, msg) = fail(&with_policy(
            "type = \"target_tracking\"\nmetric = \"backend_cpu\"\ntarget = 1\ntarge = 2\n",
        ));
        assert_eq!(
            (line, col, field.as_str()),
            (12, 1, "target_group[0].scaling.policy[0].targe")
        );
        assert!(
            msg.ends_with(": type, metric, target, disable_scale_in"),
            "{msg}"
        );
        // The other type's keys.
        let (line, col, field, msg) = fail(&with_policy(
            "type = \"step\"\nmetric = \"backend_cpu\"\ntarget = 1\n",
        ));
        assert_eq!(
            (line, col, field.as_str()),
            (11, 10, "target_group[0].scaling.policy[0].target")
        );
        assert_eq!(
            msg,
            "`target` is only for target_tracking policies; this policy's type is \"step\""
        );
        let (_, _, field, msg) = fail(&with_policy(
            "type = \"target_tracking\"\nmetric = \"backend_cpu\"\ntarget = 1\n\
             scale_in = { below = 1, for = \"1m\" }\n",
        ));
        assert_eq!(field, "target_group[0].scaling.policy[0].scale_in");
        assert_eq!(
            msg,
            "`scale_in` is only for step policies; this policy's type is \"target_tracking\""
        );
        let (_, _, field, msg) = fail(&with_policy(
            "type = \"step\"\nmetric = \"backend_cpu\"\ndisable_scale_in = true\n",
        ));
        assert_eq!(field, "target_group[0].scaling.policy[0].disable_scale_in");
        assert!(
            msg.starts_with("`disable_scale_in` is only for target_tracking"),
            "{msg}"
        );
        // In a step rule.
        let (line, col, field, msg) = fail(&with_policy(
            "type = \"step\"\nmetric = \"backend_cpu\"\n\
             scale_out = { above = 1, for = \"1m\", ad = 1 }\n",
        ));
        assert_eq!(
            (line, col, field.as_str()),
            (11, 38, "target_group[0].scaling.policy[0].scale_out.ad")
        );
        assert_eq!(
            msg,
            "unknown key `ad`; allowed in target_group[0].scaling.policy[0].scale_out: above, \
             for, add"
        );
        // The other direction's keys.
        let (line, col, field, msg) = fail(&with_policy(
            "type = \"step\"\nmetric = \"backend_cpu\"\nscale_out = { below = 1, for = \"1m\" }\n",
        ));
        assert_eq!(
            (line, col, field.as_str()),
            (11, 23, "target_group[0].scaling.policy[0].scale_out.below")
        );
        assert_eq!(msg, "`below` is for scale_in; scale_out takes `above`");
        let (_, _, field, msg) = fail(&with_policy(
            "type = \"step\"\nmetric = \"backend_cpu\"\n\
             scale_in = { below = 1, for = \"1m\", add = 1 }\n",
        ));
        assert_eq!(field, "target_group[0].scaling.policy[0].scale_in.add");
        assert_eq!(msg, "`add` is for scale_out; scale_in takes `remove`");
        // In a schedule.
        let (line, col, field, msg) = fail(&with_schedule("cron = \"@daily\"\ndesire = 1\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (10, 1, "target_group[0].scaling.schedule[0].desire")
        );
        assert!(msg.ends_with(": cron, desired, min, max"), "{msg}");
    }

    #[test]
    fn error_policy_type() {
        let (line, col, field, msg) = fail(&with_policy(
            "type = \"simple\"\nmetric = \"backend_cpu\"\n",
        ));
        assert_eq!(
            (line, col, field.as_str()),
            (9, 8, "target_group[0].scaling.policy[0].type")
        );
        assert_eq!(
            msg,
            "unknown policy type \"simple\" (expected \"target_tracking\" or \"step\")"
        );
        let (line, col, field, msg) = fail(&with_policy("metric = \"backend_cpu\"\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (8, 1, "target_group[0].scaling.policy[0].type")
        );
        assert_eq!(msg, "missing required key `type`");
        let (_, _, _, msg) = fail(&with_policy("type = 1\n"));
        assert_eq!(msg, "expected a string, found an integer");
        // metric is required too.
        let (_, _, field, msg) = fail(&with_policy("type = \"target_tracking\"\ntarget = 1\n"));
        assert_eq!(field, "target_group[0].scaling.policy[0].metric");
        assert_eq!(msg, "missing required key `metric`");
    }

    #[test]
    fn error_policy_metric() {
        for bad in ["Backend_CPU", "backend-cpu", "1cpu", "", "_x", "cpu load"] {
            let (line, col, field, msg) = fail(&with_policy(&format!(
                "type = \"target_tracking\"\nmetric = \"{bad}\"\ntarget = 1\n"
            )));
            assert_eq!(
                (line, col, field.as_str()),
                (10, 10, "target_group[0].scaling.policy[0].metric")
            );
            assert_eq!(
                msg,
                format!(
                    "unknown metric \"{bad}\": expected one of new_flows_per_second_per_backend, \
                     packets_per_second_per_backend, bytes_per_second_per_backend, \
                     active_flows_per_backend, new_flows_per_second, packets_per_second, \
                     bytes_per_second, active_flows, backend_cpu, or the name of a number the \
                     backends report (lowercase letters, digits and _, starting with a letter, \
                     at most 64 characters)"
                )
            );
        }
        // A group total cannot drive target tracking.
        let (_, _, field, msg) = fail(&with_policy(
            "type = \"target_tracking\"\nmetric = \"new_flows_per_second\"\ntarget = 1\n",
        ));
        assert_eq!(field, "target_group[0].scaling.policy[0].metric");
        assert!(msg.contains("use a step policy for group totals"), "{msg}");
        let long = format!("m{}", "x".repeat(64));
        let (_, _, _, msg) = fail(&with_policy(&format!(
            "type = \"target_tracking\"\nmetric = \"{long}\"\ntarget = 1\n"
        )));
        assert!(msg.starts_with("unknown metric"), "{msg}");
        // Every built-in name, and custom names up to 64 characters.
        for m in Metric::BUILT_IN
            .iter()
            .filter(|m| !m.is_group_total())
            .map(Metric::name)
            .chain([&long[1..], "x", "cpu2_a"])
        {
            let c = parse(
                &with_policy(&format!(
                    "type = \"target_tracking\"\nmetric = \"{m}\"\ntarget = 1\n"
                )),
                "x",
            )
            .unwrap();
            let PolicyConfig::TargetTracking { metric, .. } =
                &c.target_groups[0].scaling.as_ref().unwrap().policies[0]
            else {
                panic!()
            };
            assert_eq!(metric.name(), m);
            assert_eq!(metric.to_owned(), m.parse::<Metric>().unwrap());
        }
        assert_eq!("backend_cpu".parse::<Metric>(), Ok(Metric::BackendCpu));
        assert_eq!(
            "queue".parse::<Metric>(),
            Ok(Metric::Custom("queue".into()))
        );
    }

    #[test]
    fn error_policy_target() {
        for bad in ["0", "-1", "0.0", "-0.5"] {
            let (line, col, field, msg) = fail(&with_policy(&format!(
                "type = \"target_tracking\"\nmetric = \"backend_cpu\"\ntarget = {bad}\n"
            )));
            assert_eq!(
                (line, col, field.as_str()),
                (11, 10, "target_group[0].scaling.policy[0].target")
            );
            let shown = bad.trim_end_matches(".0");
            assert_eq!(msg, format!("the target must be more than 0, not {shown}"));
        }
        let (_, _, _, msg) = fail(&with_policy(
            "type = \"target_tracking\"\nmetric = \"backend_cpu\"\ntarget = \"100\"\n",
        ));
        assert_eq!(msg, "expected a number, found a string");
        let (_, _, _, msg) = fail(&with_policy(
            "type = \"target_tracking\"\nmetric = \"backend_cpu\"\ntarget = inf\n",
        ));
        assert_eq!(msg, "inf is not a finite number");
        let (_, _, _, msg) = fail(&with_policy(
            "type = \"target_tracking\"\nmetric = \"backend_cpu\"\ntarget = nan\n",
        ));
        assert_eq!(msg, "NaN is not a finite number");
        let (_, _, field, msg) = fail(&with_policy(
            "type = \"target_tracking\"\nmetric = \"backend_cpu\"\n",
        ));
        assert_eq!(field, "target_group[0].scaling.policy[0].target");
        assert_eq!(msg, "missing required key `target`");
        let (_, _, field, msg) = fail(&with_policy(
            "type = \"target_tracking\"\nmetric = \"backend_cpu\"\ntarget = 1\n\
             disable_scale_in = \"yes\"\n",
        ));
        assert_eq!(field, "target_group[0].scaling.policy[0].disable_scale_in");
        assert_eq!(msg, "expected a boolean (true or false), found a string");
    }

    #[test]
    fn error_step_rules() {
        // Neither rule.
        let (line, col, field, msg) =
            fail(&with_policy("type = \"step\"\nmetric = \"backend_cpu\"\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (8, 1, "target_group[0].scaling.policy[0]")
        );
        assert!(
            msg.starts_with(
                "a step policy needs scale_out = { above = ..., for = \"...\", add = ... }"
            ),
            "{msg}"
        );
        // below >= above.
        for (above, below) in [("0.5", "0.5"), ("0.3", "0.7"), ("1", "1.0")] {
            let (line, col, field, msg) = fail(&with_policy(&format!(
                "type = \"step\"\nmetric = \"backend_cpu\"\n\
                 scale_out = {{ above = {above}, for = \"5m\" }}\n\
                 scale_in = {{ below = {below}, for = \"5m\" }}\n"
            )));
            assert_eq!(
                (line, col, field.as_str()),
                (12, 22, "target_group[0].scaling.policy[0].scale_in.below")
            );
            assert!(
                msg.starts_with(&format!(
                    "below ({}) must be less than scale_out's above ({})",
                    below.trim_end_matches(".0"),
                    above
                )),
                "{msg}"
            );
        }
        // add / remove: 1..1000.
        for (rule, key) in [("scale_out", "add"), ("scale_in", "remove")] {
            let threshold = if rule == "scale_out" {
                "above"
            } else {
                "below"
            };
            for bad in ["0", "1001"] {
                let (_, _, field, msg) = fail(&with_policy(&format!(
                    "type = \"step\"\nmetric = \"backend_cpu\"\n\
                     {rule} = {{ {threshold} = 1, for = \"5m\", {key} = {bad} }}\n"
                )));
                assert_eq!(
                    field,
                    format!("target_group[0].scaling.policy[0].{rule}.{key}")
                );
                assert_eq!(msg, format!("{bad} is out of range (1-1000)"));
            }
            // The threshold and `for` are required.
            let (line, col, field, msg) = fail(&with_policy(&format!(
                "type = \"step\"\nmetric = \"backend_cpu\"\n{rule} = {{ for = \"5m\" }}\n"
            )));
            assert_eq!(
                (line, field),
                (
                    11,
                    format!("target_group[0].scaling.policy[0].{rule}.{threshold}")
                )
            );
            assert_eq!(col, rule.len() + 4);
            assert_eq!(msg, format!("missing required key `{threshold}`"));
            let (_, _, field, msg) = fail(&with_policy(&format!(
                "type = \"step\"\nmetric = \"backend_cpu\"\n{rule} = {{ {threshold} = 1 }}\n"
            )));
            assert_eq!(
                field,
                format!("target_group[0].scaling.policy[0].{rule}.for")
            );
            assert_eq!(msg, "missing required key `for`");
        }
        let (_, _, field, msg) = fail(&with_policy(
            "type = \"step\"\nmetric = \"backend_cpu\"\nscale_out = 0.7\n",
        ));
        assert_eq!(field, "target_group[0].scaling.policy[0].scale_out");
        assert_eq!(
            msg,
            "expected a table such as scale_out = { above = 0.5, for = \"5m\", add = 1 }, \
             found a float"
        );
        let (_, _, _, msg) = fail(&with_policy(
            "type = \"step\"\nmetric = \"backend_cpu\"\nscale_out = { above = \"70%\", for = \"5m\" }\n",
        ));
        assert_eq!(msg, "expected a number, found a string");
    }

    #[test]
    fn error_schedule_cron() {
        // A bad field: at the value, naming the field.
        let (line, col, field, msg) = fail(&with_schedule("cron = \"0 8 * * 8\"\ndesired = 1\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (9, 8, "target_group[0].scaling.schedule[0].cron")
        );
        assert_eq!(
            msg,
            "\"0 8 * * 8\" is not a valid cron expression: the day-of-week field \"8\": number \
             out of bounds (day-of-week: 0-7 or SUN-SAT, L or #)"
        );
        let e = parse(
            &with_schedule("desired = 1\ncron = \"61 8 * * MON-FRI\"\n"),
            "xlb.toml",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "xlb.toml:10:8: target_group[0].scaling.schedule[0].cron: \"61 8 * * MON-FRI\" is \
             not a valid cron expression: the minute field \"61\": number out of bounds \
             (minute: 0-59)"
        );
        // With seconds first.
        let (_, _, _, msg) = fail(&with_schedule("cron = \"0 0 25 * * *\"\ndesired = 1\n"));
        assert!(msg.contains("the hour field \"25\""), "{msg}");
        let (_, _, _, msg) = fail(&with_schedule("cron = \"60 0 8 * * *\"\ndesired = 1\n"));
        assert!(msg.contains("the second field \"60\""), "{msg}");
        let (_, _, _, msg) = fail(&with_schedule("cron = \"0 8 * * MONDAY\"\ndesired = 1\n"));
        assert!(
            msg.ends_with("the day-of-week field \"MONDAY\": it contains a character not allowed there (day-of-week: 0-7 or SUN-SAT, L or #)"),
            "{msg}"
        );
        let (_, _, _, msg) = fail(&with_schedule("cron = \"*/0 * * * *\"\ndesired = 1\n"));
        assert!(
            msg.ends_with("the minute field \"*/0\": step cannot be zero (minute: 0-59)"),
            "{msg}"
        );
        // The wrong number of fields.
        for (cron, n) in [("0 8 * *", 4), ("0 0 8 * * * 2030", 7)] {
            let (_, _, _, msg) = fail(&with_schedule(&format!("cron = \"{cron}\"\ndesired = 1\n")));
            assert_eq!(
                msg,
                format!(
                    "\"{cron}\" is not a valid cron expression: it has {n} fields; expected 5 \
                     fields (minute hour day-of-month month day-of-week) or 6 with seconds first"
                )
            );
        }
        let (_, _, _, msg) = fail(&with_schedule("cron = \" \"\ndesired = 1\n"));
        assert!(msg.contains("it is empty"), "{msg}");
        let (_, _, _, msg) = fail(&with_schedule("cron = \"@reboot\"\ndesired = 1\n"));
        assert!(msg.contains("unknown nickname \"@reboot\""), "{msg}");
        // Never fires.
        let (line, col, _, msg) = fail(&with_schedule("cron = \"0 0 30 2 *\"\ndesired = 1\n"));
        assert_eq!((line, col), (9, 8));
        assert_eq!(
            msg,
            "\"0 0 30 2 *\" never fires: no date matches its day-of-month, month and day-of-week \
             fields"
        );
        // Missing, or not a string.
        let (line, col, field, msg) = fail(&with_schedule("desired = 1\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (8, 1, "target_group[0].scaling.schedule[0].cron")
        );
        assert_eq!(msg, "missing required key `cron`");
        let (_, _, _, msg) = fail(&with_schedule("cron = 1\ndesired = 1\n"));
        assert_eq!(msg, "expected a string, found an integer");
        // Forms that are fine.
        for cron in [
            "0 8 * * MON-FRI",
            "0 8 * * mon-fri",
            "30 0 8 * * 1-5",
            "*/15 * * * *",
            "0 0 29 2 *",
            "0 0 L * *",
            "0 9 ? * 1#1",
            "@hourly",
            "0 0 1 JAN,JUL *",
        ] {
            let c = parse(
                &with_schedule(&format!("cron = \"{cron}\"\ndesired = 1\n")),
                "x",
            );
            assert!(c.is_ok(), "{cron}: {c:?}");
        }
    }

    #[test]
    fn cron_evaluation() {
        use chrono::{DateTime, Utc};
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        // Saturday 2026-11-28 12:00 UTC: the next weekday 08:00 is Monday's.
        let next = parse_cron("0 8 * * MON-FRI")
            .unwrap()
            .find_next_occurrence(&at("2026-11-28T12:00:00Z"), false)
            .unwrap();
        assert_eq!(next, at("2026-11-30T08:00:00Z"));
        // 6 fields: seconds first.
        let next = parse_cron("30 0 8 * * *")
            .unwrap()
            .find_next_occurrence(&at("2026-11-28T12:00:00Z"), false)
            .unwrap();
        assert_eq!(next, at("2026-11-29T08:00:30Z"));
        assert!(parse_cron("0 8 * * * 2030").is_err());
        assert!(cron_parser().parse("0 8 * * *").is_ok());
    }

    #[test]
    fn error_schedule_values() {
        let (line, col, field, msg) = fail(&with_schedule("cron = \"@daily\"\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (8, 1, "target_group[0].scaling.schedule[0]")
        );
        assert_eq!(
            msg,
            "the schedule sets nothing: give desired, min or max (or several)"
        );
        let (line, col, field, msg) = fail(&with_schedule("cron = \"@daily\"\nmin = 3\nmax = 2\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (10, 7, "target_group[0].scaling.schedule[0].min")
        );
        assert_eq!(
            msg,
            "min (3) is more than max (2); a schedule that sets several needs min <= desired <= max"
        );
        let (line, col, field, msg) =
            fail(&with_schedule("cron = \"@daily\"\nmin = 3\ndesired = 2\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (11, 11, "target_group[0].scaling.schedule[0].desired")
        );
        assert!(msg.starts_with("desired (2) is less than min (3)"), "{msg}");
        let (_, _, field, msg) = fail(&with_schedule("cron = \"@daily\"\nmax = 3\ndesired = 4\n"));
        assert_eq!(field, "target_group[0].scaling.schedule[0].desired");
        assert!(msg.starts_with("desired (4) is more than max (3)"), "{msg}");
        for key in ["desired", "min", "max"] {
            let (_, _, field, msg) = fail(&with_schedule(&format!(
                "cron = \"@daily\"\n{key} = 1001\n"
            )));
            assert_eq!(field, format!("target_group[0].scaling.schedule[0].{key}"));
            assert_eq!(msg, "1001 is out of range (0-1000)");
        }
        // Alone, each may be anything in range, whatever the group's own bounds.
        for key in ["desired", "min", "max"] {
            parse(
                &with_schedule(&format!("cron = \"@daily\"\n{key} = 1000\n")),
                "x",
            )
            .unwrap();
            parse(
                &with_schedule(&format!("cron = \"@daily\"\n{key} = 0\n")),
                "x",
            )
            .unwrap();
        }
    }

    #[test]
    fn module_doc_example_parses() {
        // The example at the top of this file, with every section, is a valid configuration.
        let source = include_str!("config.rs");
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

    // ---- passive health ----

    /// `MINIMAL` + `GROUP` + a tcp check (line 6-7) + `[target_group.passive_health]`
    /// (line 8) + `body` (from line 9).
    fn with_passive(body: &str) -> String {
        format!(
            "{MINIMAL}{GROUP}[target_group.health_check]\nprotocol = \"tcp\"\n\
             [target_group.passive_health]\n{body}"
        )
    }

    #[test]
    fn passive_health_defaults_and_values() {
        let c = parse(&with_check("protocol = \"tcp\"\n"), "x").unwrap();
        assert_eq!(c.target_groups[0].passive_health, None, "off when absent");
        let c = parse(&with_passive(""), "x").unwrap();
        let ph = c.target_groups[0].passive_health.clone().unwrap();
        assert_eq!(ph, PassiveHealthConfig::default());
        assert_eq!(
            (ph.refused_threshold, ph.unanswered_threshold),
            (3, 3),
            "the issue's defaults"
        );
        assert_eq!(ph.unanswered_timeout, Duration::from_secs(1));
        assert_eq!(ph.window, Duration::from_secs(10));
        assert!(!ph.redispatch);
        assert_eq!(ph.base_ejection, Duration::from_secs(30));
        assert_eq!(ph.max_ejection_percent, 50);
        let c = parse(
            &with_passive(
                "refused_threshold = 5\nunanswered_threshold = 2\nunanswered_timeout = \"250ms\"\n\
                 window = \"2s\"\nredispatch = true\nudp_unanswered_share = 1\n\
                 min_udp_flows = 7\nbase_ejection = \"5s\"\nmax_ejection = \"1m\"\n\
                 max_ejection_percent = 34\n",
            ),
            "x",
        )
        .unwrap();
        let ph = c.target_groups[0].passive_health.clone().unwrap();
        assert_eq!(
            ph,
            PassiveHealthConfig {
                refused_threshold: 5,
                unanswered_threshold: 2,
                unanswered_timeout: Duration::from_millis(250),
                window: Duration::from_secs(2),
                redispatch: true,
                udp_unanswered_share: 1.0,
                min_udp_flows: 7,
                base_ejection: Duration::from_secs(5),
                max_ejection: Duration::from_secs(60),
                max_ejection_percent: 34,
            }
        );
        // Inline too.
        let c = parse(
            &format!(
                "{MINIMAL}{GROUP}health_check = {{ protocol = \"tcp\" }}\n\
                 passive_health = {{ redispatch = true }}\n"
            ),
            "x",
        )
        .unwrap();
        assert!(
            c.target_groups[0]
                .passive_health
                .as_ref()
                .unwrap()
                .redispatch
        );
    }

    #[test]
    fn passive_health_errors() {
        let (line, col, field, msg) = fail(&with_passive("refused_treshold = 3\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (9, 1, "target_group[0].passive_health.refused_treshold")
        );
        assert!(
            msg.contains("refused_threshold, unanswered_threshold"),
            "{msg}"
        );
        let (line, _, field, msg) = fail(&with_passive("refused_threshold = 0\n"));
        assert_eq!(
            (line, field.as_str()),
            (9, "target_group[0].passive_health.refused_threshold")
        );
        assert!(msg.contains("out of range (1-1000)"), "{msg}");
        let (_, _, field, msg) = fail(&with_passive("unanswered_timeout = 1\n"));
        assert_eq!(field, "target_group[0].passive_health.unanswered_timeout");
        assert!(msg.contains("\"1s\""), "{msg}");
        let (_, _, field, msg) = fail(&with_passive("udp_unanswered_share = 0\n"));
        assert_eq!(field, "target_group[0].passive_health.udp_unanswered_share");
        assert!(msg.contains("out of range"), "{msg}");
        let (_, _, _, msg) = fail(&with_passive("udp_unanswered_share = 1.5\n"));
        assert!(msg.contains("at most 1"), "{msg}");
        let (_, _, field, msg) = fail(&with_passive("redispatch = \"yes\"\n"));
        assert_eq!(field, "target_group[0].passive_health.redispatch");
        assert!(msg.contains("boolean"), "{msg}");
        let (line, _, field, msg) = fail(&with_passive("base_ejection = \"10m\"\n"));
        assert_eq!(
            (line, field.as_str()),
            (9, "target_group[0].passive_health.base_ejection")
        );
        assert!(
            msg.contains("must not be shorter than base_ejection"),
            "{msg}"
        );
        let (_, _, _, msg) = fail(&with_passive("max_ejection_percent = 101\n"));
        assert!(msg.contains("out of range (0-100)"), "{msg}");
        // Without active checks nothing would bring a backend back.
        let (line, _, field, msg) = fail(&format!(
            "{MINIMAL}{GROUP}[target_group.passive_health]\nredispatch = true\n"
        ));
        assert_eq!(
            (line, field.as_str()),
            (6, "target_group[0].passive_health")
        );
        assert!(msg.contains("add a [target_group.health_check]"), "{msg}");
        // Before any [[target_group]].
        let (_, _, _, msg) = fail(&format!(
            "{MINIMAL}[target_group.passive_health]\nredispatch = true\n"
        ));
        assert!(msg.contains("there is none"), "{msg}");
    }

    #[test]
    fn announce_section() {
        // Absent: nothing announced.
        assert_eq!(parse(MINIMAL, "xlb.toml").unwrap().daemon.announce, None);
        // Defaults.
        let c = parse(
            &format!("{MINIMAL}[daemon.announce]\nvia = \"bird\"\n"),
            "xlb.toml",
        )
        .unwrap();
        assert_eq!(
            c.daemon.announce,
            Some(AnnounceConfig {
                via: AnnounceVia::Bird,
                table: DEFAULT_ANNOUNCE_TABLE,
                bird_socket: PathBuf::from(DEFAULT_BIRD_SOCKET),
                require_healthy: true,
                drain_timeout: DEFAULT_DRAIN_TIMEOUT,
                drain_quiet: DEFAULT_DRAIN_QUIET,
            })
        );
        // Every key, inline too; and it serializes back.
        let c = parse(
            "[daemon]\ninterfaces = [\"eth0\"]\nannounce = { via = \"bird\", table = 4000, \
             bird_socket = \"/run/bird/node1.ctl\", require_healthy = false, \
             drain_timeout = \"0s\", drain_quiet = \"2s\" }\n",
            "xlb.toml",
        )
        .unwrap();
        let a = c.daemon.announce.clone().unwrap();
        assert_eq!(a.table, 4000);
        assert_eq!(a.bird_socket, PathBuf::from("/run/bird/node1.ctl"));
        assert!(!a.require_healthy);
        assert_eq!(a.drain_timeout, Duration::ZERO);
        assert_eq!(a.drain_quiet, Duration::from_secs(2));
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["daemon"]["announce"]["via"], "bird");
        assert_eq!(json["daemon"]["announce"]["drain_quiet"], "2s");
        // hash_seed: the fleet's other half, settable to the same value on every node.
        let c = parse(&format!("{MINIMAL}hash_seed = 7\n"), "xlb.toml").unwrap();
        assert_eq!(c.daemon.hash_seed, Some(7));
    }

    #[test]
    fn error_announce() {
        let head = format!("{MINIMAL}[daemon.announce]\n");
        for (body, field, needle) in [
            (
                "table = 1\n",
                "daemon.announce.via",
                "missing required key `via`",
            ),
            (
                "via = \"exabgp\"\n",
                "daemon.announce.via",
                "expected \"bird\"",
            ),
            (
                "via = \"bird\"\ntable = 254\n",
                "daemon.announce.table",
                "kernel's own",
            ),
            (
                "via = \"bird\"\ntable = 0\n",
                "daemon.announce.table",
                "out of range",
            ),
            (
                "via = \"bird\"\nbird_socket = \"bird.ctl\"\n",
                "daemon.announce.bird_socket",
                "absolute",
            ),
            (
                "via = \"bird\"\nrequire_healthy = 1\n",
                "daemon.announce.require_healthy",
                "boolean",
            ),
            (
                "via = \"bird\"\ndrain_timeout = \"2d\"\n",
                "daemon.announce.drain_timeout",
                "out of range",
            ),
            (
                "via = \"bird\"\ndrain_quiet = \"0s\"\n",
                "daemon.announce.drain_quiet",
                "out of range",
            ),
            (
                "via = \"bird\"\nprefix = 32\n",
                "daemon.announce.prefix",
                "unknown key",
            ),
        ] {
            let (line, _, f, msg) = fail(&format!("{head}{body}"));
            assert_eq!(f, field, "{body}: {msg}");
            assert!(msg.contains(needle), "{body}: {msg}");
            assert!(line >= 3, "{body}: line {line}");
        }
        let (_, _, f, msg) = fail(&format!("{MINIMAL}announce = 3\n"));
        assert_eq!(f, "daemon.announce");
        assert!(msg.contains("a table"), "{msg}");
    }
}

#[cfg(test)]
mod dsr_tests {
    use super::*;

    /// A DSR service on line 6; the keys after `target_group` are `extra`'s (from line 11).
    fn dsr(extra: &str) -> String {
        format!(
            r#"[daemon]
interfaces = ["eth0"]

[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
protocol = "tcp"
target_group = "web"
{extra}
[[target_group]]
name = "web"
backends = ["198.18.2.11", "198.18.2.12"]
"#
        )
    }

    fn fail(text: &str) -> (usize, usize, String, String) {
        match parse(text, "xlb.toml") {
            Ok(c) => panic!("expected an error, parsed {c:?}"),
            Err(ConfigError::Invalid {
                line,
                column,
                field,
                message,
                ..
            }) => (line, column, field, message),
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    #[test]
    fn forwarding_defaults_and_values() {
        let c = parse(&dsr(""), "x").unwrap();
        assert_eq!(c.services[0].forwarding, Forwarding::Nat);
        let c = parse(&dsr("forwarding = \"nat\"\n"), "x").unwrap();
        assert_eq!(c.services[0].forwarding, Forwarding::Nat);
        let c = parse(&dsr("forwarding = \"dsr\"\ndsr_encap = \"l2\"\n"), "x").unwrap();
        assert_eq!(
            c.services[0].forwarding,
            Forwarding::Dsr(DsrConfig {
                encap: DsrEncap::L2,
                source_prefix: None,
                gue_port: 6080
            })
        );
        let c = parse(
            &dsr("forwarding = \"dsr\"\ndsr_encap = \"gue\"\ndsr_source_prefix = \"198.18.99.0/24\"\n"),
            "x",
        )
        .unwrap();
        let d = *c.services[0].forwarding.dsr().unwrap();
        assert_eq!(d.encap, DsrEncap::Gue);
        assert_eq!(d.gue_port, 6080);
        assert_eq!(d.source_prefix.unwrap().to_string(), "198.18.99.0/24");
        assert_eq!(d.source_prefix.unwrap().hash_bits(), 8);
        let c = parse(
            &dsr("forwarding = \"dsr\"\ndsr_encap = \"gue\"\ndsr_source_prefix = \"198.18.0.0/15\"\ndsr_gue_port = 7777\n"),
            "x",
        )
        .unwrap();
        let d = *c.services[0].forwarding.dsr().unwrap();
        assert_eq!(
            (d.gue_port, d.source_prefix.unwrap().hash_bits()),
            (7777, 16)
        );
        // JSON: NAT services say nothing new; DSR ones say how.
        let json = serde_json::to_value(&c.services[0]).unwrap();
        assert_eq!(json["forwarding"]["mode"], "dsr");
        assert_eq!(json["forwarding"]["encap"], "gue");
        assert_eq!(json["forwarding"]["source_prefix"], "198.18.0.0/15");
        let nat = serde_json::to_value(&parse(&dsr(""), "x").unwrap().services[0]).unwrap();
        assert!(nat.get("forwarding").is_none());
    }

    #[test]
    fn dsr_map_value() {
        let c = parse(
            &dsr("forwarding = \"dsr\"\ndsr_encap = \"ipip\"\ndsr_source_prefix = \"198.18.99.77/24\"\n"),
            "x",
        )
        .unwrap();
        let v = crate::dsr::map_value(&c.services[0].forwarding).unwrap();
        assert_eq!(v.encap, lb_common::DSR_ENCAP_IPIP);
        assert_eq!(&v.src_prefix[..4], &[198, 18, 99, 0], "host bits cleared");
        assert_eq!(v.src_mask, [0, 0, 0, 0xff]);
        let v6 = Forwarding::Dsr(DsrConfig {
            encap: DsrEncap::Gue,
            source_prefix: Some("2001:db8:99::/64".parse().unwrap()),
            gue_port: 6080,
        });
        let v = crate::dsr::map_value(&v6).unwrap();
        assert_eq!(v.src_mask, [0, 0, 0xff, 0xff], "at most 16 bits vary");
        assert_eq!(v.gue_port, 6080u16.to_be_bytes());
        assert_eq!(crate::dsr::map_value(&Forwarding::Nat), None);
    }

    #[test]
    fn forwarding_errors() {
        let (line, col, field, msg) = fail(&dsr("forwarding = \"tunnel\"\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (10, 14, "service[0].forwarding")
        );
        assert!(msg.contains("\"nat\" or \"dsr\""), "{msg}");

        let (line, _, field, msg) = fail(&dsr("forwarding = \"dsr\"\n"));
        assert_eq!((line, field.as_str()), (10, "service[0].forwarding"));
        assert!(msg.contains("needs dsr_encap"), "{msg}");

        let (line, col, field, msg) = fail(&dsr("forwarding = \"dsr\"\ndsr_encap = \"vxlan\"\n"));
        assert_eq!(
            (line, col, field.as_str()),
            (11, 13, "service[0].dsr_encap")
        );
        assert!(msg.contains("\"l2\", \"ipip\" or \"gue\""), "{msg}");

        let (line, _, field, msg) = fail(&dsr("dsr_encap = \"l2\"\n"));
        assert_eq!((line, field.as_str()), (10, "service[0].dsr_encap"));
        assert!(msg.contains("only with forwarding = \"dsr\""), "{msg}");

        let (line, _, field, msg) = fail(&dsr("forwarding = \"dsr\"\ndsr_encap = \"ipip\"\n"));
        assert_eq!((line, field.as_str()), (11, "service[0].dsr_encap"));
        assert!(msg.contains("needs dsr_source_prefix"), "{msg}");

        let (line, _, field, msg) = fail(&dsr(
            "forwarding = \"dsr\"\ndsr_encap = \"l2\"\ndsr_source_prefix = \"198.18.99.0/24\"\n",
        ));
        assert_eq!((line, field.as_str()), (12, "service[0].dsr_source_prefix"));
        assert!(msg.contains("only to dsr_encap"), "{msg}");

        let (line, _, field, msg) = fail(&dsr(
            "forwarding = \"dsr\"\ndsr_encap = \"ipip\"\ndsr_source_prefix = \"2001:db8:99::/112\"\n",
        ));
        assert_eq!((line, field.as_str()), (12, "service[0].dsr_source_prefix"));
        assert!(
            msg.contains("is IPv6 but the vip 198.18.100.1 is IPv4"),
            "{msg}"
        );

        for bad in [
            "198.18.99.0",
            "198.18.99.0/33",
            "nonsense/24",
            "198.18.99.0/x",
        ] {
            let (line, _, field, _) = fail(&dsr(&format!(
                "forwarding = \"dsr\"\ndsr_encap = \"gue\"\ndsr_source_prefix = \"{bad}\"\n"
            )));
            assert_eq!(
                (line, field.as_str()),
                (12, "service[0].dsr_source_prefix"),
                "{bad}"
            );
        }

        let (line, _, field, msg) = fail(&dsr(
            "forwarding = \"dsr\"\ndsr_encap = \"ipip\"\ndsr_source_prefix = \"198.18.99.0/24\"\ndsr_gue_port = 6081\n",
        ));
        assert_eq!((line, field.as_str()), (13, "service[0].dsr_gue_port"));
        assert!(msg.contains("only to dsr_encap = \"gue\""), "{msg}");

        let (line, _, field, _) = fail(&dsr(
            "forwarding = \"dsr\"\ndsr_encap = \"gue\"\ndsr_source_prefix = \"198.18.99.0/24\"\ndsr_gue_port = 0\n",
        ));
        assert_eq!((line, field.as_str()), (13, "service[0].dsr_gue_port"));
    }

    #[test]
    fn dsr_backends_use_the_service_port() {
        let text = dsr("forwarding = \"dsr\"\ndsr_encap = \"l2\"\n").replace(
            "backends = [\"198.18.2.11\", \"198.18.2.12\"]",
            "backends = [\"198.18.2.11\", \"198.18.2.12:8080\"]",
        );
        let (line, _, field, msg) = fail(&text);
        assert_eq!((line, field.as_str()), (15, "target_group[0].backends[1]"));
        assert!(msg.contains("must listen on the service port 80"), "{msg}");
        // The group's port counts too; the same group without DSR is fine.
        let text = dsr("forwarding = \"dsr\"\ndsr_encap = \"l2\"\n").replace(
            "name = \"web\"\nbackends",
            "name = \"web\"\nport = 8080\nbackends",
        );
        let (_, _, field, _) = fail(&text);
        assert_eq!(field, "target_group[0].backends[0]");
        assert!(parse(
            &dsr("").replace(
                "name = \"web\"\nbackends",
                "name = \"web\"\nport = 8080\nbackends"
            ),
            "x"
        )
        .is_ok());
    }

    #[test]
    fn health_check_target() {
        let check = |target: &str| {
            format!("[target_group.health_check]\nprotocol = \"tcp\"\ntarget = \"{target}\"\n")
        };
        // The default, and both values with DSR.
        let c = parse(&dsr("forwarding = \"dsr\"\ndsr_encap = \"l2\"\n"), "x").unwrap();
        assert_eq!(c.target_groups[0].health_check, None);
        let dsr_l2 = dsr("forwarding = \"dsr\"\ndsr_encap = \"l2\"\n");
        for (t, want) in [
            ("address", HealthTarget::Address),
            ("vip", HealthTarget::Vip),
        ] {
            let c = parse(&format!("{dsr_l2}{}", check(t)), "x").unwrap();
            assert_eq!(
                c.target_groups[0].health_check.as_ref().unwrap().target,
                want
            );
        }
        let c = parse(&format!("{dsr_l2}[target_group.health_check]\n"), "x").unwrap();
        assert_eq!(
            c.target_groups[0].health_check.as_ref().unwrap().target,
            HealthTarget::Address
        );
        // A NAT service using the group: refused, at the key.
        let (line, col, field, msg) = fail(&format!("{}{}", dsr(""), check("vip")));
        assert_eq!(
            (line, col, field.as_str()),
            (16, 10, "target_group[0].health_check.target")
        );
        assert!(
            msg.contains("service[0] \"web\" uses this group with forwarding = \"nat\""),
            "{msg}"
        );
        // NAT with target = "address" is fine.
        assert!(parse(&format!("{}{}", dsr(""), check("address")), "x").is_ok());
        // A second, NAT service on the same group is refused too.
        let two = format!(
            "{}{}",
            dsr_l2.replace(
                "[[target_group]]",
                "[[service]]\nname = \"nat\"\nvip = \"198.18.100.2\"\nport = 80\nprotocol = \"tcp\"\ntarget_group = \"web\"\n\n[[target_group]]"
            ),
            check("vip")
        );
        let (_, _, field, msg) = fail(&two);
        assert_eq!(field, "target_group[0].health_check.target");
        assert!(msg.contains("service[1] \"nat\""), "{msg}");
        // Unknown values.
        let (_, _, field, msg) = fail(&format!("{dsr_l2}{}", check("backend")));
        assert_eq!(field, "target_group[0].health_check.target");
        assert!(msg.contains("expected \"address\" or \"vip\""), "{msg}");
    }
}
