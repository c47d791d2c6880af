//! `[[alert]]` rules: which conditions to tell someone about, and how (see [`crate::alert`]).
//!
//! ```toml
//! [[alert]]
//! name = "backend-down"
//! when = "backend_unhealthy"   # backend_unhealthy | all_unhealthy | group_at_max | hook_failed
//!                              # | drop_rate_above | reload_failed
//! group = "web-servers"        # optional: only this target group
//! # service = "web"            # optional instead: only this service (its target group)
//! command = "/usr/local/bin/page-me"   # run with the event as JSON on stdin and XLB_ALERT_*
//! # webhook = "http://127.0.0.1:9000/hook"   # or: POST the event as JSON
//! repeat_interval = "1h"       # 1s..30d: at most one firing notification per rule and subject
//! timeout = "10s"              # 100ms..5m: a command or webhook still running then has failed
//! # for = "5m"                 # group_at_max, drop_rate_above: how long the condition holds first
//! # rate = 100                 # drop_rate_above: drops per second (> 0)
//! ```
use std::time::Duration;

use serde::Serialize;

use super::{serialize_duration, At, ConfigError, Cx, ServiceConfig, Table, TargetGroupConfig};

/// Default `repeat_interval`.
pub const DEFAULT_REPEAT_INTERVAL: Duration = Duration::from_secs(3600);
/// Default `timeout` of an alert's command or webhook.
pub const DEFAULT_ALERT_TIMEOUT: Duration = Duration::from_secs(10);

/// One `[[alert]]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertConfig {
    pub name: String,
    pub when: AlertWhen,
    /// Only this target group.
    pub group: Option<String>,
    /// Only this service (for group conditions: its target group).
    pub service: Option<String>,
    /// How long the condition must hold (group_at_max, drop_rate_above).
    #[serde(rename = "for", serialize_with = "serialize_duration")]
    pub for_: Duration,
    /// drop_rate_above: drops per second.
    pub rate: Option<f64>,
    pub sink: AlertSink,
    #[serde(serialize_with = "serialize_duration")]
    pub repeat_interval: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub timeout: Duration,
}

/// What an alert watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertWhen {
    /// A backend is unhealthy (resolved when it is not any more, or gone).
    BackendUnhealthy,
    /// A group has backends and none is healthy (it drops, or fails open).
    AllUnhealthy,
    /// A scaling group's desired capacity has been at its max for `for`.
    GroupAtMax,
    /// A scaling hook failed (each failure; no resolution).
    HookFailed,
    /// Packets dropped per second (the global `dropped` counter, or a service's) above `rate`
    /// for `for`.
    DropRateAbove,
    /// The last reload (SIGHUP or API) was rejected (resolved by the next accepted one).
    ReloadFailed,
}

impl AlertWhen {
    pub const ALL: [(&'static str, AlertWhen); 6] = [
        ("backend_unhealthy", AlertWhen::BackendUnhealthy),
        ("all_unhealthy", AlertWhen::AllUnhealthy),
        ("group_at_max", AlertWhen::GroupAtMax),
        ("hook_failed", AlertWhen::HookFailed),
        ("drop_rate_above", AlertWhen::DropRateAbove),
        ("reload_failed", AlertWhen::ReloadFailed),
    ];

    pub fn as_str(&self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, w)| w == self)
            .map_or("", |(n, _)| n)
    }
}

/// Where an alert goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertSink {
    /// `/bin/sh -c COMMAND`, the event as JSON on stdin and in `XLB_ALERT_*` variables.
    Command(String),
    /// `POST` of the event as JSON to this `http://` URL.
    Webhook(String),
}

pub(super) fn parse_alerts(
    cx: &Cx<'_>,
    root: &Table<'_>,
    services: &[ServiceConfig],
    groups: &[TargetGroupConfig],
) -> Result<Vec<AlertConfig>, ConfigError> {
    let Some(list) = root.get("alert") else {
        return Ok(Vec::new());
    };
    let mut out: Vec<AlertConfig> = Vec::new();
    for at in list.tables(cx, "alert")? {
        let a = parse_alert(cx, &at, services, groups)?;
        if out.iter().any(|x| x.name == a.name) {
            let t = at.table(cx, "a table")?;
            return Err(t.get("name").map_or_else(
                || at.err(cx, ""),
                |n| n.err(cx, format!("duplicate alert name \"{}\"", a.name)),
            ));
        }
        out.push(a);
    }
    Ok(out)
}

fn parse_alert(
    cx: &Cx<'_>,
    at: &At<'_>,
    services: &[ServiceConfig],
    groups: &[TargetGroupConfig],
) -> Result<AlertConfig, ConfigError> {
    let t = at.table(cx, "a table ([[alert]])")?;
    t.allow(
        cx,
        &[
            "name",
            "when",
            "group",
            "service",
            "for",
            "rate",
            "command",
            "webhook",
            "repeat_interval",
            "timeout",
        ],
    )?;
    let name = t.require(cx, "name")?.name(cx)?;
    let when_at = t.require(cx, "when")?;
    let when_s = when_at.str(cx)?;
    let when = AlertWhen::ALL
        .iter()
        .find(|(n, _)| *n == when_s)
        .map(|(_, w)| *w)
        .ok_or_else(|| {
            let names: Vec<&str> = AlertWhen::ALL.iter().map(|(n, _)| *n).collect();
            when_at.err(
                cx,
                format!(
                    "unknown condition \"{when_s}\" (expected one of {})",
                    names.join(", ")
                ),
            )
        })?;
    let refuse = |key: &str, why: &str| -> Result<(), ConfigError> {
        match t.get(key) {
            Some(k) => Err(k.err(cx, format!("not used with when = \"{when_s}\": {why}"))),
            None => Ok(()),
        }
    };

    let group = match t.get("group") {
        None => None,
        Some(g) => {
            let name = g.name(cx)?;
            let Some(tg) = groups.iter().find(|x| x.name == name) else {
                let known: Vec<&str> = groups.iter().map(|x| x.name.as_str()).collect();
                return Err(g.err(
                    cx,
                    format!(
                        "no [[target_group]] named \"{name}\" (there are: {})",
                        known.join(", ")
                    ),
                ));
            };
            if when == AlertWhen::GroupAtMax && tg.scaling.is_none() {
                return Err(g.err(
                    cx,
                    format!(
                        "target group \"{name}\" does not scale (it has no [target_group.scaling])"
                    ),
                ));
            }
            Some(name)
        }
    };
    let service = match t.get("service") {
        None => None,
        Some(s) => {
            let name = s.name(cx)?;
            if !services.iter().any(|x| x.name == name) {
                let known: Vec<&str> = services.iter().map(|x| x.name.as_str()).collect();
                return Err(s.err(
                    cx,
                    format!(
                        "no [[service]] named \"{name}\" (there are: {})",
                        known.join(", ")
                    ),
                ));
            }
            if group.is_some() {
                return Err(s.err(cx, "give `group` or `service`, not both"));
            }
            Some(name)
        }
    };
    match when {
        AlertWhen::ReloadFailed => {
            refuse("group", "a reload is not about one group")?;
            refuse("service", "a reload is not about one service")?;
        }
        AlertWhen::DropRateAbove => {
            refuse("group", "drops are counted per service; use `service`")?
        }
        AlertWhen::HookFailed | AlertWhen::GroupAtMax => refuse(
            "service",
            "hooks and scaling belong to target groups; use `group`",
        )?,
        _ => {}
    }

    let for_ = match t.get("for") {
        None => Duration::ZERO,
        Some(f) => {
            if !matches!(when, AlertWhen::GroupAtMax | AlertWhen::DropRateAbove) {
                refuse("for", "only group_at_max and drop_rate_above wait")?;
            }
            f.duration_in(cx, Duration::ZERO, Duration::from_secs(86_400))?
        }
    };
    let rate = match (when, t.get("rate")) {
        (AlertWhen::DropRateAbove, None) => {
            return Err(t
                .require(cx, "rate")
                .err()
                .unwrap_or_else(|| at.err(cx, "missing rate")))
        }
        (AlertWhen::DropRateAbove, Some(r)) => {
            let v = r.number(cx)?;
            if v <= 0.0 {
                return Err(r.err(cx, format!("{v} is not above 0 (drops per second)")));
            }
            Some(v)
        }
        (_, Some(_)) => {
            refuse("rate", "only drop_rate_above has a rate")?;
            None
        }
        (_, None) => None,
    };

    let sink = match (t.get("command"), t.get("webhook")) {
        (Some(c), None) => AlertSink::Command(c.command(cx)?),
        (None, Some(w)) => AlertSink::Webhook(webhook(cx, &w)?),
        (Some(_), Some(w)) => return Err(w.err(cx, "give `command` or `webhook`, not both")),
        (None, None) => {
            return Err(t.err_here(
                cx,
                "missing `command` (run with the event as JSON on stdin) or `webhook` \
                 (an http:// URL the event is POSTed to)",
            ))
        }
    };
    let repeat_interval = match t.get("repeat_interval") {
        None => DEFAULT_REPEAT_INTERVAL,
        Some(r) => r.duration_in(cx, Duration::from_secs(1), Duration::from_secs(30 * 86_400))?,
    };
    let timeout = match t.get("timeout") {
        None => DEFAULT_ALERT_TIMEOUT,
        Some(r) => r.duration_in(cx, Duration::from_millis(100), Duration::from_secs(300))?,
    };
    Ok(AlertConfig {
        name,
        when,
        group,
        service,
        for_,
        rate,
        sink,
        repeat_interval,
        timeout,
    })
}

fn webhook(cx: &Cx<'_>, at: &At<'_>) -> Result<String, ConfigError> {
    let s = at.str(cx)?;
    let uri: hyper::Uri = s
        .parse()
        .map_err(|e| at.err(cx, format!("\"{s}\" is not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(at.err(
                cx,
                "https is not supported (xlb has no TLS client): use http:// to a local relay, \
                 or a command",
            ))
        }
        _ => return Err(at.err(cx, format!("\"{s}\" is not an http:// URL"))),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(at.err(cx, format!("\"{s}\" has no host")));
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const BASE: &str = r#"[daemon]
interfaces = ["eth0"]

[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
protocol = "tcp"
target_group = "web-servers"

[[target_group]]
name = "web-servers"
backends = ["198.18.2.11"]
"#;

    fn with(alert: &str) -> Result<Vec<AlertConfig>, String> {
        parse(&format!("{BASE}\n[[alert]]\n{alert}"), "x.toml")
            .map(|c| c.alerts)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn rules_parse_with_defaults() {
        let a = with("name = \"down\"\nwhen = \"backend_unhealthy\"\ngroup = \"web-servers\"\ncommand = \"logger x\"").unwrap();
        assert_eq!(a[0].when, AlertWhen::BackendUnhealthy);
        assert_eq!(a[0].repeat_interval, DEFAULT_REPEAT_INTERVAL);
        assert_eq!(a[0].timeout, DEFAULT_ALERT_TIMEOUT);
        assert_eq!(a[0].sink, AlertSink::Command("logger x".into()));
        let a = with("name = \"d\"\nwhen = \"drop_rate_above\"\nrate = 50\nfor = \"1m\"\nservice = \"web\"\nwebhook = \"http://127.0.0.1:9000/x\"\nrepeat_interval = \"10m\"").unwrap();
        assert_eq!(a[0].rate, Some(50.0));
        assert_eq!(a[0].for_, Duration::from_secs(60));
        assert_eq!(a[0].repeat_interval, Duration::from_secs(600));
        assert_eq!(
            a[0].sink,
            AlertSink::Webhook("http://127.0.0.1:9000/x".into())
        );
    }

    #[test]
    fn mistakes_are_named_with_their_place() {
        let cases = [
            ("name = \"a\"\nwhen = \"backend_down\"\ncommand = \"x\"", "x.toml:17:8: alert[0].when: unknown condition \"backend_down\""),
            ("name = \"a\"\nwhen = \"backend_unhealthy\"", "alert[0]: missing `command`"),
            ("name = \"a\"\nwhen = \"backend_unhealthy\"\ncommand = \"x\"\nwebhook = \"http://h/\"", "alert[0].webhook: give `command` or `webhook`, not both"),
            ("name = \"a\"\nwhen = \"backend_unhealthy\"\ngroup = \"nope\"\ncommand = \"x\"", "alert[0].group: no [[target_group]] named \"nope\""),
            ("name = \"a\"\nwhen = \"group_at_max\"\ngroup = \"web-servers\"\ncommand = \"x\"", "does not scale"),
            ("name = \"a\"\nwhen = \"drop_rate_above\"\ncommand = \"x\"", "alert[0].rate: missing required key `rate`"),
            ("name = \"a\"\nwhen = \"drop_rate_above\"\nrate = 0\ncommand = \"x\"", "is not above 0"),
            ("name = \"a\"\nwhen = \"backend_unhealthy\"\nrate = 3\ncommand = \"x\"", "only drop_rate_above has a rate"),
            ("name = \"a\"\nwhen = \"hook_failed\"\nfor = \"1m\"\ncommand = \"x\"", "only group_at_max and drop_rate_above wait"),
            ("name = \"a\"\nwhen = \"reload_failed\"\ngroup = \"web-servers\"\ncommand = \"x\"", "a reload is not about one group"),
            ("name = \"a\"\nwhen = \"backend_unhealthy\"\nwebhook = \"https://h/\"", "https is not supported"),
            ("name = \"a\"\nwhen = \"backend_unhealthy\"\nwebhook = \"ftp://h/\"", "is not an http:// URL"),
            ("name = \"a\"\nwhen = \"backend_unhealthy\"\ncommand = \"x\"\nrepeat_interval = \"0s\"", "alert[0].repeat_interval: \"0s\" is out of range"),
            ("name = \"a\"\nwhen = \"backend_unhealthy\"\ncommand = \"x\"\ncolour = 1", "unknown key `colour`"),
            ("name = \"a\"\nwhen = \"backend_unhealthy\"\ncommand = \"x\"\n[[alert]]\nname = \"a\"\nwhen = \"hook_failed\"\ncommand = \"y\"", "duplicate alert name \"a\""),
        ];
        for (alert, want) in cases {
            let e = with(alert).expect_err(alert);
            assert!(e.contains(want), "{alert}\n → {e}\n   wanted {want}");
        }
    }

    #[test]
    fn api_group_is_a_group_name() {
        let c = parse(
            &BASE.replace(
                "interfaces = [\"eth0\"]",
                "interfaces = [\"eth0\"]\napi_group = \"xlb-readers\"",
            ),
            "x.toml",
        )
        .unwrap();
        assert_eq!(c.daemon.api_group.as_deref(), Some("xlb-readers"));
        let e = parse(
            &BASE.replace(
                "interfaces = [\"eth0\"]",
                "interfaces = [\"eth0\"]\napi_group = \"a b\"",
            ),
            "x.toml",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("x.toml:3:13: daemon.api_group: \"a b\" is not a group name"),
            "{e}"
        );
    }
}
