//! The TOML configuration file: parsing, defaults and validation.
//!
//! ```toml
//! [daemon]
//! interfaces = ["eth0"]        # required
//! xdp_mode = "auto"            # auto | native | generic
//! conntrack_size = 1000000
//! maglev_table_size = 65537    # a prime
//! max_services = 64            # max_services × 2 × maglev_table_size <= 2^28
//! hash_seed = 12345            # optional
//! api_socket = "/run/xlb/xlb.sock"      # control API (unix socket)
//! pin_path = "/sys/fs/bpf/xlb"          # absolute; where maps are pinned (on bpffs)
//! state_file = "/run/xlb/state.json"    # absolute
//! tcp_idle_timeout = "350s"    # 1s..7d: a TCP flow idle this long is forgotten
//! udp_idle_timeout = "120s"    # 1s..7d: the same for UDP
//!
//! [[service]]
//! name = "web"
//! vip = "198.18.100.1"
//! port = 80
//! protocol = "tcp"             # tcp | udp
//! target_group = "web-servers"
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
//! ```
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
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use lb_common::consts::{
    DEFAULT_CONNTRACK_SIZE, DEFAULT_MAX_SERVICES, DEFAULT_RING_SIZE, MAX_BACKENDS, PROTO_TCP,
    PROTO_UDP, SLOTS_PER_SERVICE,
};
use serde::{Serialize, Serializer};

use crate::maglev::is_prime;

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

/// The whole configuration, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub services: Vec<ServiceConfig>,
    pub target_groups: Vec<TargetGroupConfig>,
}

/// `[daemon]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DaemonConfig {
    /// Interfaces the XDP program attaches to (required, non-empty, no duplicates).
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    /// Entries of the connection tracking LRU.
    pub conntrack_size: u32,
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
}

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
    root.allow(&cx, &["daemon", "service", "target_group"])?;

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
            if entries.iter().any(|e| e.key == "health_check") {
                return Err(list.err(
                    &cx,
                    "[target_group.health_check] belongs to the [[target_group]] above it; \
                     there is none",
                ));
            }
        }
        for at in list.tables(&cx, "target_group")? {
            let (g, p) = parse_target_group(&cx, &at)?;
            target_groups.push(g);
            gpos.push(p);
        }
    }

    let config = Config {
        daemon,
        services,
        target_groups,
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
            "maglev_table_size",
            "max_services",
            "hash_seed",
            "api_socket",
            "pin_path",
            "state_file",
            "tcp_idle_timeout",
            "udp_idle_timeout",
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

    Ok((
        DaemonConfig {
            interfaces,
            xdp_mode,
            conntrack_size,
            maglev_table_size,
            max_services,
            hash_seed,
            api_socket,
            pin_path,
            state_file,
            tcp_idle_timeout,
            udp_idle_timeout,
        },
        DaemonPos {
            maglev_table_size: maglev_pos,
            max_services: max_services_pos,
        },
    ))
}

fn parse_service(cx: &Cx<'_>, at: &At<'_>) -> Result<(ServiceConfig, ServicePos), ConfigError> {
    let t = at.table(cx, "a table")?;
    t.allow(cx, &["name", "vip", "port", "protocol", "target_group"])?;

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

    Ok((
        ServiceConfig {
            name,
            vip,
            port,
            protocol,
            target_group,
        },
        ServicePos {
            table: t.pos,
            name: name_at.pos,
            vip: vip_at.pos,
            target_group: tg_at.pos,
        },
    ))
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

    Ok((
        TargetGroupConfig {
            name,
            port,
            backends,
            deregistration_delay,
            all_unhealthy,
            health_check,
            // TODO(scaling): parse [target_group.scaling].
            scaling: None,
        },
        GroupPos {
            table: t.pos,
            name: name_at.pos,
            backends: positions,
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
        ],
    )?;
    let mut hc = HealthCheckConfig::default();

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

/// `"198.18.2.11"`, `"198.18.2.11:8080"`, `"2001:db8::1"` or `"[2001:db8::1]:8080"`.
fn parse_addr_port(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok((ip, None));
    }
    let bad = || {
        format!(
            "\"{s}\" is not an IP address or address:port \
             (IPv6 with a port: \"[2001:db8::1]:8080\")"
        )
    };
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        let ip: Ipv6Addr = host
            .parse()
            .map_err(|_| format!("\"{host}\" is not an IPv6 address"))?;
        if after.is_empty() {
            return Ok((IpAddr::V6(ip), None));
        }
        let port = after.strip_prefix(':').ok_or_else(bad)?;
        return Ok((IpAddr::V6(ip), Some(parse_port(port)?)));
    }
    if let Some((host, port)) = s.rsplit_once(':') {
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            return Ok((IpAddr::V4(ip), Some(parse_port(port)?)));
        }
    }
    Err(bad())
}

fn parse_port(s: &str) -> Result<u16, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("\"{s}\" is not a port number"));
    }
    match s.parse::<u64>() {
        Ok(p @ 1..=65535) => Ok(p as u16),
        _ => Err(format!("port {s} is out of range (1-65535)")),
    }
}

fn check_unicast(ip: IpAddr) -> Result<(), String> {
    if ip.is_unspecified() {
        Err(format!("{ip} is the unspecified address"))
    } else if ip.is_multicast() {
        Err(format!("{ip} is a multicast address"))
    } else if ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
        Err(format!("{ip} is the broadcast address"))
    } else {
        Ok(())
    }
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
            total += 1;
            if total > MAX_BACKENDS as usize {
                return Err(cx.err(
                    gpos[gi].backends[bi],
                    format!("target_group[{gi}].backends[{bi}]"),
                    format!("more than {MAX_BACKENDS} backends in total across all target groups"),
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
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut section = String::new();
    let mut key: Option<String> = None;
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if let Some(h) = t.strip_prefix("[[") {
            let name = h.split("]]").next().unwrap_or("").trim().to_owned();
            let n = counts.entry(name.clone()).or_insert(0);
            section = format!("{name}[{n}]");
            *n += 1;
            key = None;
        } else if let Some(h) = t.strip_prefix('[').filter(|h| h.contains(']')) {
            let name = h.split(']').next().unwrap_or("").trim();
            // `[target_group.health_check]` belongs to the last `[[target_group]]`.
            section = match name.split_once('.') {
                Some((array, rest)) if counts.get(array.trim()).is_some_and(|&n| n > 0) => {
                    let array = array.trim();
                    format!("{array}[{}].{}", counts[array] - 1, rest.trim())
                }
                _ => name.to_owned(),
            };
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
                maglev_table_size: DEFAULT_RING_SIZE,
                max_services: DEFAULT_MAX_SERVICES,
                hash_seed: None,
                api_socket: PathBuf::from("/run/xlb/xlb.sock"),
                pin_path: PathBuf::from("/sys/fs/bpf/xlb"),
                state_file: PathBuf::from("/run/xlb/state.json"),
                tcp_idle_timeout: Duration::from_secs(350),
                udp_idle_timeout: Duration::from_secs(120),
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
                },
                ServiceConfig {
                    name: "dns".into(),
                    vip: ip("198.18.100.1"),
                    port: 53,
                    protocol: Protocol::Udp,
                    target_group: "dns-servers".into(),
                },
                ServiceConfig {
                    name: "web6".into(),
                    vip: ip("2001:db8:100::1"),
                    port: 80,
                    protocol: Protocol::Tcp,
                    target_group: "web-servers-v6".into(),
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
        let mut text = MINIMAL.to_owned();
        for g in 0..5 {
            let backends: Vec<String> = (0..1000)
                .map(|i| format!("\"10.{g}.{}.{}\"", i / 250, i % 250 + 1))
                .collect();
            text += &format!(
                "[[target_group]]\nname = \"g{g}\"\nbackends = [{}]\n",
                backends.join(",")
            );
        }
        let (line, _, field, msg) = fail(&text);
        assert_eq!((line, field.as_str()), (17, "target_group[4].backends[96]"));
        assert!(msg.contains("4096"), "{msg}");
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
                maglev_table_size: 1021,
                max_services: 4096,
                hash_seed: None,
                api_socket: PathBuf::from("/run/xlb-test/api.sock"),
                pin_path: PathBuf::from("/sys/fs/bpf/xlb-test"),
                state_file: PathBuf::from("/var/lib/xlb/state.json"),
                tcp_idle_timeout: Duration::from_secs(5400),
                udp_idle_timeout: Duration::from_secs(45),
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
}
