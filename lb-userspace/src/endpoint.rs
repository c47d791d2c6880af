//! One backend address as people write it, with or without a port, used alike by the config,
//! the API, the CLI and scaling hooks; and the checks every backend passes, wherever it comes
//! from.
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use crate::config::{Config, MAGLEV_SLOTS_PER_BACKEND};

/// `ADDR`, `ADDR:PORT`, `[V6ADDR]:PORT` (or `[V6ADDR]`). The port, when given, is 1-65535.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: Option<u16>,
}

/// Why a string is not an [`Endpoint`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EndpointError(pub String);

impl Endpoint {
    pub fn new(addr: IpAddr, port: Option<u16>) -> Self {
        Endpoint { addr, port }
    }

    /// With `port` when it has none.
    pub fn with_default_port(self, port: u16) -> Self {
        Endpoint {
            port: self.port.or(Some(port)),
            ..self
        }
    }
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Endpoint::new(ip, None));
        }
        let bad = || {
            EndpointError(format!(
                "\"{s}\" is not an IP address or address:port \
                 (IPv6 with a port: \"[2001:db8::1]:8080\")"
            ))
        };
        if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(bad)?;
            let ip: Ipv6Addr = host
                .parse()
                .map_err(|_| EndpointError(format!("\"{host}\" is not an IPv6 address")))?;
            if after.is_empty() {
                return Ok(Endpoint::new(IpAddr::V6(ip), None));
            }
            let port = after.strip_prefix(':').ok_or_else(bad)?;
            return Ok(Endpoint::new(IpAddr::V6(ip), Some(parse_port(port)?)));
        }
        if let Some((host, port)) = s.rsplit_once(':') {
            if let Ok(ip) = host.parse::<Ipv4Addr>() {
                return Ok(Endpoint::new(IpAddr::V4(ip), Some(parse_port(port)?)));
            }
        }
        Err(bad())
    }
}

fn parse_port(s: &str) -> Result<u16, EndpointError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(EndpointError(format!("\"{s}\" is not a port number")));
    }
    match s.parse::<u64>() {
        Ok(p @ 1..=65535) => Ok(p as u16),
        _ => Err(EndpointError(format!("port {s} is out of range (1-65535)"))),
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.addr, self.port) {
            (a, None) => write!(f, "{a}"),
            (IpAddr::V4(a), Some(p)) => write!(f, "{a}:{p}"),
            (IpAddr::V6(a), Some(p)) => write!(f, "[{a}]:{p}"),
        }
    }
}

/// A unicast address: not unspecified, multicast or the broadcast address.
pub fn check_unicast(ip: IpAddr) -> Result<(), String> {
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

/// The checks a backend of `group` passes, whether it comes from the config, the API or a
/// scaling hook: a unicast address, not the VIP of a service (its traffic would come back
/// to the balancer), of the address family of every service of its group (NAT does not
/// translate between IPv4 and IPv6), and, with `members` backends in the group once it is
/// in, more than [`MAGLEV_SLOTS_PER_BACKEND`] Maglev slots per backend.
pub fn check_backend(
    config: &Config,
    group: &str,
    addr: IpAddr,
    members: usize,
) -> Result<(), String> {
    check_unicast(addr)?;
    if let Some(s) = config.services.iter().find(|s| s.vip == addr) {
        return Err(format!(
            "{addr} is the vip of service \"{}\": a backend cannot be a VIP",
            s.name
        ));
    }
    if let Some(s) = config
        .services
        .iter()
        .find(|s| s.target_group == group && s.vip.is_ipv4() != addr.is_ipv4())
    {
        return Err(format!(
            "{} backend {addr} cannot serve service \"{}\" whose vip {} is {}; NAT cannot \
             translate between IPv4 and IPv6",
            family(addr),
            s.name,
            s.vip,
            family(s.vip)
        ));
    }
    let table = u64::from(config.daemon.maglev_table_size);
    let need = members as u64 * u64::from(MAGLEV_SLOTS_PER_BACKEND);
    if table <= need {
        return Err(format!(
            "target group \"{group}\" would have {members} backends: Maglev stays balanced only \
             with more than {MAGLEV_SLOTS_PER_BACKEND} table slots per backend, and \
             daemon.maglev_table_size is {table}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        for (text, addr, port) in [
            ("198.18.2.11", "198.18.2.11", None),
            ("198.18.2.11:8080", "198.18.2.11", Some(8080)),
            ("2001:db8::1", "2001:db8::1", None),
            ("[2001:db8::1]:80", "2001:db8::1", Some(80)),
        ] {
            let e: Endpoint = text.parse().unwrap();
            assert_eq!(e, Endpoint::new(addr.parse().unwrap(), port), "{text}");
            assert_eq!(e.to_string(), text);
        }
        let e: Endpoint = "[2001:db8::1]".parse().unwrap();
        assert_eq!((e.port, e.to_string().as_str()), (None, "2001:db8::1"));
        for bad in [
            "nope",
            "1.2.3.4:0",
            "1.2.3.4:65536",
            "1.2.3.4:",
            "1.2.3.4:+80",
            "[198.18.2.1]:80",
            "[2001:db8::1]80",
            "2001:db8::1:80:x",
            "",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad:?}");
        }
        assert_eq!(
            "198.18.2.11"
                .parse::<Endpoint>()
                .unwrap()
                .with_default_port(80),
            "198.18.2.11:80".parse().unwrap()
        );
    }

    #[test]
    fn backend_checks() {
        let cfg = crate::config::parse(
            r#"
[daemon]
interfaces = ["eth0"]
maglev_table_size = 1021

[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
protocol = "tcp"
target_group = "g"

[[target_group]]
name = "g"
backends = ["198.18.2.11"]
"#,
            "t.toml",
        )
        .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        check_backend(&cfg, "g", ip("198.18.2.12"), 2).unwrap();
        for (addr, what) in [
            ("0.0.0.0", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("198.18.100.1", "vip of service"),
            ("2001:db8::1", "NAT cannot"),
        ] {
            let e = check_backend(&cfg, "g", ip(addr), 2).unwrap_err();
            assert!(e.contains(what), "{addr}: {e}");
        }
        // 1021 slots hold at most 10 backends at 100 slots each.
        check_backend(&cfg, "g", ip("198.18.2.12"), 10).unwrap();
        let e = check_backend(&cfg, "g", ip("198.18.2.12"), 11).unwrap_err();
        assert!(e.contains("Maglev"), "{e}");
    }
}
