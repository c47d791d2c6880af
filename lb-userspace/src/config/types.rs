//! The typed configuration, its limits and defaults, and how it serializes.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use lb_common::consts::{PROTO_TCP, PROTO_UDP, SLOTS_PER_SERVICE};
use serde::{Serialize, Serializer};

use super::AlertConfig;

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
pub(super) const MAX_IFNAME_LEN: usize = 15;
/// Most entries of the `MAGLEV` map (`max_services` × 2 × `maglev_table_size`): 1 GiB of u32.
pub const MAX_MAGLEV_ENTRIES: u64 = 1 << 28;
// With the most services, some allowed (prime) table size still fits the MAGLEV map.
const _: () = assert!(
    MAX_MAGLEV_ENTRIES / (SLOTS_PER_SERVICE as u64 * MAX_MAX_SERVICES as u64)
        > MIN_MAGLEV_TABLE_SIZE as u64
);
/// Longest path a unix socket address holds (`sun_path` less its NUL).
pub(super) const MAX_SOCKET_PATH_LEN: usize = 107;

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
pub(super) const DURATION_EXAMPLES: &str = "e.g. \"30s\", \"5m\", \"250ms\"";
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
pub(super) const RESERVED_TABLES: [u32; 3] = [253, 254, 255];
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
pub(super) fn serialize_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

/// A duration as the errors show it.
pub(super) fn show_duration(d: Duration) -> String {
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
