//! The TOML configuration file: parsing, defaults and validation.
//!
//! ```toml
//! [daemon]
//! interfaces = ["eth0"]        # required
//! xdp_mode = "auto"            # auto | native | generic
//! conntrack_size = 1000000
//! maglev_table_size = 65537    # a prime
//! max_services = 64
//! hash_seed = 12345            # optional
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
//! ```
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
use std::path::Path;

use lb_common::consts::{
    DEFAULT_CONNTRACK_SIZE, DEFAULT_MAX_SERVICES, DEFAULT_RING_SIZE, MAX_BACKENDS, PROTO_TCP,
    PROTO_UDP,
};
use serde::Serialize;

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

/// The whole configuration, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetGroupConfig {
    pub name: String,
    /// Backend port for backends that do not give one; `None`: the service port.
    pub port: Option<u16>,
    /// May be empty: the services using the group then drop their traffic.
    pub backends: Vec<BackendConfig>,
}

impl TargetGroupConfig {
    /// The port `b` receives traffic on for a service on `service_port`: the backend's own
    /// port, else the group's, else the service's.
    pub fn backend_port(&self, b: &BackendConfig, service_port: u16) -> u16 {
        b.port.or(self.port).unwrap_or(service_port)
    }
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

    Ok((
        DaemonConfig {
            interfaces,
            xdp_mode,
            conntrack_size,
            maglev_table_size,
            max_services,
            hash_seed,
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
    t.allow(cx, &["name", "port", "backends"])?;

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

    Ok((
        TargetGroupConfig {
            name,
            port,
            backends,
        },
        GroupPos {
            table: t.pos,
            name: name_at.pos,
            backends: positions,
        },
    ))
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
            section = h.split(']').next().unwrap_or("").trim().to_owned();
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
    Float,
    Bool,
    Datetime,
    Array(Vec<Node>),
    Table(Vec<Entry>),
}

impl Val {
    fn kind(&self) -> &'static str {
        match self {
            Val::Str(_) => "a string",
            Val::Int(_) => "an integer",
            Val::Float => "a float",
            Val::Bool => "a boolean",
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

        fn visit_bool<E: Error>(self, _: bool) -> Result<Node, E> {
            Ok(bare(Val::Bool))
        }

        fn visit_i64<E: Error>(self, v: i64) -> Result<Node, E> {
            Ok(bare(Val::Int(v)))
        }

        fn visit_u64<E: Error>(self, v: u64) -> Result<Node, E> {
            Ok(bare(Val::Int(i64::try_from(v).unwrap_or(i64::MAX))))
        }

        fn visit_f64<E: Error>(self, _: f64) -> Result<Node, E> {
            Ok(bare(Val::Float))
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
                },
                TargetGroupConfig {
                    name: "dns-servers".into(),
                    port: None,
                    backends: vec![
                        be("198.18.2.11", Some(5353), 1),
                        be("198.18.2.12", Some(5353), 1),
                    ],
                },
                TargetGroupConfig {
                    name: "web-servers-v6".into(),
                    port: Some(8080),
                    backends: vec![
                        be("2001:db8:2::11", None, 1),
                        be("2001:db8:2::12", Some(8080), 1),
                    ],
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
