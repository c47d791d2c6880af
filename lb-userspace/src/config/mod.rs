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
//! (with the `toml` crate's public span API, `toml::de::DeTable::parse`, whose keys and values
//! are `toml::Spanned`), then checked by hand, so that unknown keys, wrong types and bad values
//! all point at the exact place.
//!
//! Layout: `tree.rs` (the value tree, typed access to it, errors and positions), `parse.rs`
//! (the tree to the types of `types.rs`, section by section), `validate.rs` (the checks across
//! fields), `alerts.rs` (`[[alert]]`), `tests/` (one file per part). Other modules use the
//! re-exports here: `crate::config::{Config, load, parse, ...}`.

use std::path::Path;

mod alerts;
mod parse;
#[cfg(test)]
mod tests;
mod tree;
mod types;
mod validate;

pub use alerts::{
    AlertConfig, AlertSink, AlertWhen, DEFAULT_ALERT_TIMEOUT, DEFAULT_REPEAT_INTERVAL,
};
pub use parse::{cron_parser, parse_cron};
pub use types::*;

use parse::{parse_daemon, parse_service, parse_target_group};
use tree::{read_tree, At, Cx, Table, Val};
use validate::validate;

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
    let root = read_tree(&cx)?;
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
