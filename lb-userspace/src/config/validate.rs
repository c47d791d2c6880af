//! The checks that involve more than one field (duplicates, references, address families,
//! map capacities), run once the whole file is parsed.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use lb_common::consts::MAX_BACKENDS;

use super::parse::{family, next_prime, DaemonPos, GroupPos, ServicePos};
use super::tree::Cx;
use super::{
    Config, ConfigError, MAGLEV_SLOTS_PER_BACKEND, MAX_MAGLEV_TABLE_SIZE, MAX_MAX_SERVICES,
};

fn quoted_list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The checks that involve more than one field.
pub(super) fn validate(
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
