//! From the value tree to the typed configuration, section by section: each key is checked
//! for its type and range where it is written.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::NaiveDate;
use croner::errors::CronError;
use croner::parser::{CronParser, Seconds, Year};

use croner::Cron;
use lb_common::consts::{
    DEFAULT_CONNTRACK_SIZE, DEFAULT_MAX_SERVICES, DEFAULT_RING_SIZE, SLOTS_PER_SERVICE,
};

use crate::endpoint::check_unicast;

use crate::maglev::is_prime;

use super::tree::{At, Cx, Table, Val};
use super::types::*;
use super::ConfigError;

// ---------------------------------------------------------------------------------------------
// Positions of the parsed fields, for the checks that look at several of them.

pub(super) struct DaemonPos {
    pub(super) maglev_table_size: Option<usize>,
    pub(super) max_services: Option<usize>,
}

pub(super) struct ServicePos {
    pub(super) table: usize,
    pub(super) name: usize,
    pub(super) vip: usize,
    pub(super) target_group: usize,
}

pub(super) struct GroupPos {
    pub(super) table: usize,
    pub(super) name: usize,
    pub(super) backends: Vec<usize>,
}

pub(super) fn parse_daemon(
    cx: &Cx<'_>,
    root: &Table<'_>,
) -> Result<(DaemonConfig, DaemonPos), ConfigError> {
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

pub(super) fn parse_service(
    cx: &Cx<'_>,
    at: &At<'_>,
) -> Result<(ServiceConfig, ServicePos), ConfigError> {
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

pub(super) fn parse_target_group(
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
pub(super) fn parse_addr_port(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    s.parse::<crate::endpoint::Endpoint>()
        .map(|e| (e.addr, e.port))
        .map_err(|e| e.0)
}

pub(super) fn family(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    }
}

pub(super) fn next_prime(n: u32) -> u32 {
    (n.saturating_add(1)..=u32::MAX)
        .find(|&p| is_prime(p))
        .unwrap_or(u32::MAX)
}

pub(super) fn prev_prime(n: u32) -> u32 {
    (2..n).rev().find(|&p| is_prime(p)).unwrap_or(2)
}
