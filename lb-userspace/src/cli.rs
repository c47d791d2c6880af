//! The client side of the control API: `xlb status`, `xlb backends`, `xlb backend ...`,
//! `xlb reload`. Talks HTTP/1.1 to the daemon's Unix socket (see [`crate::api`]) and prints
//! tables, or the API's JSON with `--json`.
use std::{
    fmt::Write as _,
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    header::{ACCEPT, CONTENT_TYPE, HOST},
    Method,
};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::net::UnixStream;

use crate::model::{
    BackendState, BackendStatus, ChangePreview, ChangeResult, Event, GroupStatus, Status,
};

/// Where `xlb run` serves the API unless its config says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/xlb/xlb.sock";

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot reach xlb at {}: is `xlb run` running? ({})", path.display(), describe(source))]
    Unreachable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("permission denied on {}: the xlb API needs root, or membership of its daemon.api_group to read (try sudo)", path.display())]
    PermissionDenied { path: PathBuf },
    #[error("talking to xlb at {}: {message}", path.display())]
    Protocol { path: PathBuf, message: String },
    /// A non-2xx answer; `message` is the API's `error`.
    #[error("{message}")]
    Api { status: u16, message: String },
    #[error("unexpected answer from xlb: {0}")]
    BadAnswer(String),
}

/// An I/O error without its " (os error N)" suffix.
fn describe(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// The socket to talk to: `--socket`, else `daemon.api_socket` of `--config`, else
/// [`DEFAULT_SOCKET`].
pub fn socket_path(socket: Option<&Path>, config: Option<&Path>) -> PathBuf {
    socket
        .map(Path::to_path_buf)
        .or_else(|| config.and_then(api_socket_from_config))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// The API socket a config file sets, if it sets one.
pub fn api_socket_from_config(path: &Path) -> Option<PathBuf> {
    match crate::config::load(path) {
        Ok(c) => Some(c.daemon.api_socket),
        // A config that does not validate (`xlb diff` of a broken file) may still name the
        // socket: the daemon then reports what is wrong with it.
        Err(_) => std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.parse::<toml::Table>().ok())
            .and_then(|t| {
                t.get("daemon")?
                    .get("api_socket")?
                    .as_str()
                    .map(PathBuf::from)
            }),
    }
}

/// Send one request with a JSON body (if any); answer the status code and the JSON body
/// (`null` when empty, a string when the body is not JSON).
pub async fn request(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value), CliError> {
    let body = body.map(|v| Bytes::from(v.to_string()));
    request_bytes(socket, method, path, body).await
}

/// [`request`] with a raw body, sent as `application/json` whatever it holds.
pub async fn request_bytes(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Bytes>,
) -> Result<(u16, Value), CliError> {
    let protocol = |e: &dyn std::fmt::Display| CliError::Protocol {
        path: socket.to_path_buf(),
        message: e.to_string(),
    };
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| match source.kind() {
            io::ErrorKind::PermissionDenied => CliError::PermissionDenied {
                path: socket.to_path_buf(),
            },
            _ => CliError::Unreachable {
                path: socket.to_path_buf(),
                source,
            },
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| protocol(&e))?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });

    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, "xlb")
        .header(ACCEPT, "application/json");
    if body.is_some() {
        req = req.header(CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(body.unwrap_or_default()))
        .map_err(|e| protocol(&e))?;
    let resp = sender.send_request(req).await.map_err(|e| protocol(&e))?;
    let code = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| protocol(&e))?
        .to_bytes();
    drop(sender);
    conn.abort();

    let value = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Ok((code, value))
}

/// A client command, as `main` parsed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Status,
    /// The backends of one group, or of all when `group` is None.
    Backends {
        group: Option<String>,
    },
    AddBackend {
        group: String,
        address: String,
        weight: Option<u32>,
    },
    RemoveBackend {
        group: String,
        address: String,
    },
    DrainBackend {
        group: String,
        address: String,
    },
    SetWeight {
        group: String,
        address: String,
        weight: u32,
    },
    Reload,
    Scale {
        group: String,
        desired: u32,
    },
    Events {
        group: Option<String>,
    },
    NodeDrain,
    NodeUndrain,
    /// What a reload would change: of `config` (its text and the name it was read from), or
    /// of the daemon's own config file when None.
    Diff {
        config: Option<(String, String)>,
    },
}

impl Action {
    /// The API call it makes.
    fn call(&self) -> (Method, String, Option<Value>) {
        let backends = |g: &str| format!("/v1/groups/{}/backends", encode_segment(g));
        match self {
            Self::Status | Self::Backends { group: None } => {
                (Method::GET, "/v1/status".into(), None)
            }
            Self::Backends { group: Some(g) } => (Method::GET, backends(g), None),
            Self::AddBackend {
                group,
                address,
                weight,
            } => {
                let mut body = json!({ "address": address });
                if let Some(w) = weight {
                    body["weight"] = json!(w);
                }
                (Method::POST, backends(group), Some(body))
            }
            Self::RemoveBackend { group, address } => (
                Method::POST,
                format!("{}/remove", backends(group)),
                Some(json!({ "address": address })),
            ),
            Self::DrainBackend { group, address } => (
                Method::POST,
                format!("{}/drain", backends(group)),
                Some(json!({ "address": address })),
            ),
            Self::SetWeight {
                group,
                address,
                weight,
            } => (
                Method::POST,
                format!("{}/weight", backends(group)),
                Some(json!({ "address": address, "weight": weight })),
            ),
            Self::Reload => (Method::POST, "/v1/reload".into(), None),
            Self::NodeDrain => (Method::POST, "/v1/node/drain".into(), None),
            Self::NodeUndrain => (Method::POST, "/v1/node/undrain".into(), None),
            Self::Scale { group, desired } => (
                Method::POST,
                format!("/v1/groups/{}/scale", encode_segment(group)),
                Some(json!({ "desired": desired })),
            ),
            Self::Diff { config } => (
                Method::POST,
                "/v1/diff".into(),
                config
                    .as_ref()
                    .map(|(text, file)| json!({ "config": text, "file": file })),
            ),
            Self::Events { group } => (
                Method::GET,
                match group {
                    Some(g) => format!("/v1/events?group={}", encode_segment(g)),
                    None => "/v1/events".into(),
                },
                None,
            ),
        }
    }
}

/// Percent-encode a path segment (everything but RFC 3986's unreserved characters).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Run `action` against the daemon at `socket`; answer what to print on stdout.
pub async fn execute(socket: &Path, action: &Action, json: bool) -> Result<String, CliError> {
    let (method, path, body) = action.call();
    let (code, value) = request(socket, method, &path, body).await?;
    format_answer(action, code, value, json)
}

/// Turn an answer into the text to print, or the error to report.
pub fn format_answer(
    action: &Action,
    code: u16,
    value: Value,
    json: bool,
) -> Result<String, CliError> {
    if !(200..300).contains(&code) {
        let message = match value.get("error").and_then(Value::as_str) {
            Some(e) => e.to_string(),
            None if value.is_null() => format!("xlb answered HTTP {code}"),
            None => format!("xlb answered HTTP {code}: {value}"),
        };
        return Err(CliError::Api {
            status: code,
            message,
        });
    }
    match action {
        Action::Status => {
            if json {
                return Ok(pretty(&value));
            }
            Ok(render_status(&parse::<Status>(value)?))
        }
        Action::Backends { group: None } => {
            let status = parse::<Status>(value)?;
            let all: Vec<BackendStatus> =
                status.groups.into_iter().flat_map(|g| g.backends).collect();
            if json {
                let v =
                    serde_json::to_value(&all).map_err(|e| CliError::BadAnswer(e.to_string()))?;
                return Ok(pretty(&v));
            }
            Ok(render_backends(&all))
        }
        Action::Backends { group: Some(_) } => {
            if json {
                return Ok(pretty(&value));
            }
            Ok(render_backends(&parse::<Vec<BackendStatus>>(value)?))
        }
        Action::Events { .. } => {
            if json {
                return Ok(pretty(&value));
            }
            Ok(render_events(&parse::<Vec<Event>>(value)?))
        }
        Action::Diff { .. } => {
            if json {
                return Ok(pretty(&value));
            }
            Ok(render_diff(&parse::<ChangePreview>(value)?))
        }
        _ => {
            if json {
                return Ok(pretty(&value));
            }
            Ok(format!("{}\n", parse::<ChangeResult>(value)?.message))
        }
    }
}

fn parse<T: DeserializeOwned>(value: Value) -> Result<T, CliError> {
    serde_json::from_value(value).map_err(|e| CliError::BadAnswer(e.to_string()))
}

fn pretty(value: &Value) -> String {
    let mut s = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    s.push('\n');
    s
}

/// Run a client command, printing its answer; the process's exit code.
pub async fn run(socket: &Path, action: &Action, json: bool) -> ExitCode {
    match execute(socket, action, json).await {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xlb: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---- rendering ----

/// Columns, left-aligned, separated by three spaces; the last column is not padded.
pub(crate) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn render(&self, out: &mut String) {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; cols];
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("   ");
                }
                line.push_str(cell);
                if i + 1 < row.len() {
                    let pad = widths[i] - cell.chars().count();
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
}

/// `addr:port`, IPv6 in brackets.
fn endpoint(addr: std::net::IpAddr, port: u16) -> String {
    SocketAddr::new(addr, port).to_string()
}

/// A coarse age: "12s", "3m", "2h", "4d".
pub fn format_since(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".into();
    }
    let s = secs as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// An uptime in its two largest units: "45s", "3m12s", "2h5m", "4d3h".
fn format_uptime(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".into();
    }
    let s = secs as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// A configured duration, exactly: "300s" is "5m", "90s" stays "90s", "0.5s".
fn format_delay(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".into();
    }
    if secs.fract() != 0.0 {
        return format!("{secs}s");
    }
    let s = secs as u64;
    if s > 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s > 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// Bytes in binary units: "512B", "1.5KiB", "93.2MiB".
fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1}{}", UNITS[unit])
}

fn group_row(g: &GroupStatus) -> Vec<String> {
    let healthy = g
        .backends
        .iter()
        .filter(|b| b.state == BackendState::Healthy)
        .count();
    let fail_open = match (g.all_unhealthy.as_str(), g.failing_open) {
        (_, true) => "yes (failing open now)".to_string(),
        ("fail_open", false) => "yes".to_string(),
        _ => "no".to_string(),
    };
    let scaling = match &g.scaling {
        None => "-".to_string(),
        Some(sc) => {
            let mut v = format!(
                "desired {} (min {}, max {}), in service {}",
                sc.desired, sc.min, sc.max, sc.in_service
            );
            if sc.launching > 0 {
                let _ = write!(v, ", launching {}", sc.launching);
            }
            if sc.hook != "idle" {
                let _ = write!(v, ", {}", sc.hook);
            }
            v
        }
    };
    vec![
        g.name.clone(),
        format!("{healthy}/{}", g.backends.len()),
        g.health_check.clone().unwrap_or_else(|| "none".into()),
        format_delay(g.deregistration_delay_secs),
        fail_open,
        scaling,
    ]
}

/// `xlb diff` / `xlb reload --dry-run` as a human reads it.
pub fn render_diff(p: &ChangePreview) -> String {
    let mut out = String::new();
    if p.is_empty() {
        let _ = writeln!(out, "loading {} would change nothing", p.config_file);
        return out;
    }
    let _ = writeln!(out, "loading {} would change:", p.config_file);
    for n in &p.notes {
        let _ = writeln!(out, "  note: {n}");
    }
    for a in &p.alerts {
        let _ = writeln!(out, "  {a}");
    }
    out.push('\n');
    let mut t = Table::new(&[
        "SERVICE",
        "CHANGE",
        "BACKENDS",
        "TABLE MOVED",
        "OPEN FLOWS",
        "ON LEAVING BACKENDS",
        "DETAILS",
    ]);
    for s in &p.services {
        let moved = match (s.moved_entries, s.moved_share) {
            (Some(n), Some(share)) => format!("{:.1}% ({n} of {})", share * 100.0, s.table_size),
            _ => "-".into(),
        };
        let backends = if s.backends_before == s.backends_after {
            s.backends_after.to_string()
        } else {
            format!("{} → {}", s.backends_before, s.backends_after)
        };
        t.row(vec![
            s.name.clone(),
            s.change.clone(),
            backends,
            moved,
            s.open_flows.to_string(),
            s.flows_on_leaving.to_string(),
            s.details.join("; "),
        ]);
    }
    t.render(&mut out);
    if !p.backends.is_empty() {
        out.push('\n');
        let mut t = Table::new(&["GROUP", "BACKEND", "CHANGE", "WEIGHT", "OPEN FLOWS"]);
        for b in &p.backends {
            let weight = match (b.weight_before, b.weight_after) {
                (Some(a), Some(b)) if a != b => format!("{a} → {b}"),
                (_, Some(w)) | (Some(w), None) => w.to_string(),
                (None, None) => "-".into(),
            };
            t.row(vec![
                b.group.clone(),
                b.backend.clone(),
                b.change.clone(),
                weight,
                b.open_flows.to_string(),
            ]);
        }
        t.render(&mut out);
    }
    out.push_str(
        "\nTABLE MOVED: share of the Maglev table whose new flows would go to another backend\n\
         (open flows stay where they are). ON LEAVING BACKENDS: open flows on backends that\n\
         would drain (they finish within the deregistration delay) or go (they move).\n",
    );
    out
}

/// `xlb events` as a human reads it: time (UTC), group, kind, message and metrics.
pub fn render_events(events: &[Event]) -> String {
    if events.is_empty() {
        return "no events\n".into();
    }
    let mut t = Table::new(&["TIME (UTC)", "GROUP", "KIND", "MESSAGE"]);
    for e in events {
        let time = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(e.time.max(0.0)),
        )
        .to_string();
        let mut msg = e.message.clone();
        if !e.metrics.is_empty() {
            let m: Vec<String> = e
                .metrics
                .iter()
                .map(|(k, v)| format!("{k}={v:.3}"))
                .collect();
            let _ = write!(msg, " [{}]", m.join(" "));
        }
        t.row(vec![time, e.group.clone(), e.kind.clone(), msg]);
    }
    let mut out = String::new();
    t.render(&mut out);
    out
}

/// `xlb status` as a human reads it.
pub fn render_status(s: &Status) -> String {
    let mut out = String::new();
    let interfaces = if s.interfaces.is_empty() {
        "none".to_string()
    } else {
        s.interfaces
            .iter()
            .map(|i| format!("{} ({})", i.name, i.mode))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(out, "version:     {}", s.version);
    let _ = writeln!(out, "pid:         {}", s.pid);
    let _ = writeln!(out, "uptime:      {}", format_uptime(s.uptime_secs));
    let _ = writeln!(out, "config:      {}", s.config_file);
    let _ = writeln!(out, "interfaces:  {interfaces}");

    out.push('\n');
    if s.services.is_empty() {
        out.push_str("no services\n");
    } else {
        let mut t = Table::new(&[
            "NAME",
            "VIP:PORT/PROTO",
            "GROUP",
            "BACKENDS",
            "PACKETS",
            "BYTES",
            "NEW-FLOWS",
            "DROPPED",
        ]);
        for svc in &s.services {
            t.row(vec![
                svc.name.clone(),
                format!("{}/{}", endpoint(svc.vip, svc.port), svc.protocol),
                svc.target_group.clone(),
                svc.backends_in_table.to_string(),
                svc.counters.packets.to_string(),
                format_bytes(svc.counters.bytes),
                svc.counters.new_flows.to_string(),
                svc.counters.dropped.to_string(),
            ]);
        }
        t.render(&mut out);
    }

    out.push('\n');
    if s.groups.is_empty() {
        out.push_str("no target groups\n");
    } else {
        let mut t = Table::new(&[
            "GROUP",
            "HEALTHY/TOTAL",
            "CHECK",
            "DEREG-DELAY",
            "FAIL-OPEN",
            "SCALING",
        ]);
        for g in &s.groups {
            t.row(group_row(g));
        }
        t.render(&mut out);
    }

    render_fleet(s, &mut out);

    out.push('\n');
    let nonzero: Vec<_> = s.global.iter().filter(|(_, v)| **v != 0).collect();
    if nonzero.is_empty() {
        out.push_str("global counters: all zero\n");
    } else {
        let mut t = Table::new(&["COUNTER", "VALUE"]);
        for (name, value) in nonzero {
            t.row(vec![name.clone(), value.to_string()]);
        }
        t.render(&mut out);
    }
    out
}

/// The fleet part of `xlb status`: each service's table fingerprint (equal on every node
/// that sends each flow to the same backend) and, with `[daemon.announce]`, the node's state
/// and its announcements.
fn render_fleet(s: &Status, out: &mut String) {
    if !s.services.is_empty() {
        out.push('\n');
        let mut t = Table::new(&["SERVICE", "TABLE-FINGERPRINT"]);
        for svc in &s.services {
            let fp = if svc.table_fingerprint.is_empty() {
                "-".to_string()
            } else {
                svc.table_fingerprint.clone()
            };
            t.row(vec![svc.name.clone(), fp]);
        }
        t.render(out);
    }
    let Some(a) = &s.announce else {
        return;
    };
    out.push('\n');
    let mut node = a.node.clone();
    if let Some(left) = a.drain_remaining_secs {
        let _ = write!(node, " (drain_timeout in {})", format_since(left));
    }
    let _ = writeln!(out, "node:        {node}");
    let routes = match (&a.route_error, a.routes_in_sync) {
        (Some(e), _) => format!("table {}: retrying after: {e}", a.table),
        (None, true) => format!("table {}: in sync", a.table),
        (None, false) => format!("table {}: writing", a.table),
    };
    let _ = writeln!(out, "routes:      {routes}");
    let _ = writeln!(out, "{:<13}{}", format!("{}:", a.via), a.bird);
    if !a.vips.is_empty() {
        let mut t = Table::new(&["VIP", "ANNOUNCED", "WHY"]);
        for v in &a.vips {
            t.row(vec![
                v.vip.to_string(),
                if v.announced { "yes" } else { "no" }.to_string(),
                v.reason.clone(),
            ]);
        }
        t.render(out);
    }
}

/// `xlb backends` as a human reads it.
pub fn render_backends(backends: &[BackendStatus]) -> String {
    if backends.is_empty() {
        return "no backends\n".into();
    }
    let mut t = Table::new(&[
        "GROUP",
        "BACKEND",
        "STATE",
        "WEIGHT",
        "FLOWS",
        "NEW-FLOWS",
        "PACKETS",
        "SINCE",
        "REASON",
    ]);
    for b in backends {
        let mut reason = if b.reason.is_empty() {
            "-".to_string()
        } else {
            b.reason.clone()
        };
        if let Some(left) = b.drain_remaining_secs {
            let _ = write!(reason, " ({} left)", format_since(left));
        }
        t.row(vec![
            b.group.clone(),
            endpoint(b.address, b.port),
            b.state.to_string(),
            b.weight.to_string(),
            b.active_flows.to_string(),
            b.counters.new_flows.to_string(),
            b.counters.packets.to_string(),
            format_since(b.since_secs),
            reason,
        ]);
    }
    let mut out = String::new();
    t.render(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{serve, testing::*};

    /// The column each header word starts at, and a check that every row has a cell
    /// starting there.
    fn assert_aligned(table: &str) {
        let mut lines = table.lines();
        let header = lines.next().unwrap();
        let starts: Vec<usize> = header
            .match_indices(|c: char| c != ' ')
            .filter(|(i, _)| *i == 0 || header.as_bytes()[i - 1] == b' ')
            .map(|(i, _)| i)
            .collect();
        assert!(starts.len() > 1, "{table}");
        for line in lines {
            for &col in &starts[1..] {
                let b = line.as_bytes();
                assert!(
                    b.len() > col && b[col] != b' ' && b[col - 1] == b' ',
                    "column at {col} misaligned in {line:?}\n{table}"
                );
            }
        }
    }

    /// The block of `text` whose first line starts with `header`.
    fn block<'a>(text: &'a str, header: &str) -> &'a str {
        text.split("\n\n")
            .find(|b| b.starts_with(header))
            .unwrap_or_else(|| panic!("no {header} block in\n{text}"))
    }

    #[test]
    fn status_table() {
        let out = render_status(&canned_status());
        assert!(out.contains("version:     0.1.0\n"), "{out}");
        assert!(out.contains("pid:         4242\n"), "{out}");
        assert!(out.contains("uptime:      1h2m\n"), "{out}");
        assert!(out.contains("config:      /etc/xlb/xlb.toml\n"), "{out}");
        assert!(
            out.contains("interfaces:  eth0 (native), eth1 (generic)\n"),
            "{out}"
        );

        let services = block(&out, "NAME");
        assert_aligned(services);
        let lines: Vec<&str> = services.lines().collect();
        assert_eq!(lines.len(), 3, "{services}");
        let web: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            web,
            [
                "web",
                "192.0.2.10:80/tcp",
                "web",
                "1",
                "123456",
                "94.2MiB",
                "789",
                "5"
            ]
        );
        let v6: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            v6,
            [
                "api-v6",
                "[2001:db8::100]:443/tcp",
                "api6",
                "2",
                "0",
                "0B",
                "0",
                "0"
            ]
        );

        let groups = block(&out, "GROUP");
        assert_aligned(groups);
        assert!(
            groups.contains(
                "web     1/2             http GET /health :8080 every 30s   5m            no"
            ),
            "{groups}"
        );
        let api6 = groups.lines().nth(2).unwrap();
        assert!(api6.starts_with("api6    0/2             none"), "{api6}");
        assert!(
            api6.ends_with("15s           yes (failing open now)   -"),
            "{api6}"
        );

        let counters = block(&out, "COUNTER");
        assert_eq!(
            counters,
            "COUNTER     VALUE\nmalformed   3\npassed      5000\n"
        );
        assert!(
            !out.contains("dropped"),
            "zero counters are left out:\n{out}"
        );
    }

    #[test]
    fn status_shows_fingerprints_and_announcements() {
        let mut s = canned_status();
        let out = render_status(&s);
        let fps = block(&out, "SERVICE");
        assert_aligned(fps);
        assert_eq!(
            fps,
            "SERVICE   TABLE-FINGERPRINT\nweb       0123456789abcdef\napi-v6    fedcba9876543210"
        );
        assert!(
            !out.contains("node:"),
            "no [daemon.announce], no node line:\n{out}"
        );

        s.announce = Some(crate::model::AnnounceStatus {
            via: "bird".into(),
            table: 100,
            node: "draining".into(),
            drain_remaining_secs: Some(125.0),
            routes_in_sync: true,
            route_error: None,
            bird: "up (BIRD 2.0.12 ready.)".into(),
            vips: vec![
                crate::model::VipAnnouncement {
                    vip: "192.0.2.10".parse().unwrap(),
                    announced: false,
                    reason: "node draining".into(),
                },
                crate::model::VipAnnouncement {
                    vip: "2001:db8::100".parse().unwrap(),
                    announced: true,
                    reason: "serving".into(),
                },
            ],
        });
        let out = render_status(&s);
        let node = block(&out, "node:");
        assert!(
            node.contains("node:        draining (drain_timeout in 2m)\n"),
            "{node}"
        );
        assert!(node.contains("routes:      table 100: in sync\n"), "{node}");
        assert!(
            node.contains("bird:        up (BIRD 2.0.12 ready.)\n"),
            "{node}"
        );
        assert!(
            node.contains("192.0.2.10      no          node draining\n"),
            "{node}"
        );
        assert!(
            node.ends_with("2001:db8::100   yes         serving"),
            "{node}"
        );
        // The JSON round trip keeps it (the CLI reads what the daemon serializes).
        let back: Status = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn status_without_anything() {
        let mut s = canned_status();
        s.services.clear();
        s.groups.clear();
        s.interfaces.clear();
        s.global.values_mut().for_each(|v| *v = 0);
        let out = render_status(&s);
        assert!(out.contains("interfaces:  none\n"), "{out}");
        assert!(out.contains("no services\n"), "{out}");
        assert!(out.contains("no target groups\n"), "{out}");
        assert!(out.contains("global counters: all zero\n"), "{out}");
    }

    #[test]
    fn backends_table() {
        let all: Vec<BackendStatus> = canned_status()
            .groups
            .into_iter()
            .flat_map(|g| g.backends)
            .collect();
        let out = render_backends(&all);
        assert_aligned(&out);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 5, "{out}");
        assert!(lines[0].starts_with("GROUP   BACKEND"), "{out}");
        assert!(lines[0].ends_with("SINCE   REASON"), "{out}");
        let cells = |i: usize| lines[i].split_whitespace().collect::<Vec<_>>();
        assert_eq!(
            cells(1),
            [
                "web",
                "10.0.0.1:8080",
                "healthy",
                "100",
                "3",
                "20",
                "1000",
                "12s",
                "HTTP",
                "200"
            ]
        );
        assert_eq!(
            cells(2),
            [
                "web",
                "10.0.0.2:8080",
                "draining",
                "100",
                "3",
                "20",
                "1000",
                "2h",
                "drained",
                "by",
                "API",
                "(40s",
                "left)"
            ]
        );
        assert_eq!(cells(3)[1], "[2001:db8::1]:9000");
        assert_eq!(cells(3)[7], "3m");
        assert!(lines[3].ends_with("connect refused"), "{out}");
        assert_eq!(render_backends(&[]), "no backends\n");
    }

    #[test]
    fn diff_table() {
        use crate::model::{BackendDiff, ServiceDiff};
        let mut p = ChangePreview {
            config_file: "new.toml".into(),
            notes: vec![],
            services: vec![ServiceDiff {
                name: "web".into(),
                change: "changed".into(),
                details: vec![],
                backends_before: 3,
                backends_after: 4,
                table_size: 65537,
                moved_entries: Some(16384),
                moved_share: Some(16384.0 / 65537.0),
                open_flows: 120,
                flows_on_leaving: 7,
            }],
            backends: vec![BackendDiff {
                group: "web".into(),
                backend: "10.0.0.4".into(),
                change: "added".into(),
                weight_before: None,
                weight_after: Some(1),
                open_flows: 0,
            }],
            alerts: vec!["alert pager added".into()],
        };
        let t = render_diff(&p);
        assert!(
            t.starts_with("loading new.toml would change:\n  alert pager added\n"),
            "{t}"
        );
        let line = t.lines().find(|l| l.starts_with("web ")).unwrap();
        assert!(
            line.contains("3 → 4") && line.contains("25.0% (16384 of 65537)"),
            "{line}"
        );
        assert!(line.contains(" 120 ") && line.contains(" 7"), "{line}");
        assert!(t.contains("10.0.0.4   added"), "{t}");
        p.services[0].change = "unchanged".into();
        p.backends.clear();
        p.alerts.clear();
        assert_eq!(render_diff(&p), "loading new.toml would change nothing\n");
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(format_since(0.2), "0s");
        assert_eq!(format_since(59.9), "59s");
        assert_eq!(format_since(60.0), "1m");
        assert_eq!(format_since(3599.0), "59m");
        assert_eq!(format_since(7200.0), "2h");
        assert_eq!(format_since(200_000.0), "2d");
        assert_eq!(format_since(f64::NAN), "-");
        assert_eq!(format_uptime(3725.0), "1h2m");
        assert_eq!(format_uptime(45.0), "45s");
        assert_eq!(format_uptime(90_000.0), "1d1h");
        assert_eq!(format_delay(300.0), "5m");
        assert_eq!(format_delay(90.0), "90s");
        assert_eq!(format_delay(0.0), "0s");
        assert_eq!(format_delay(0.5), "0.5s");
        assert_eq!(format_delay(7200.0), "2h");
        assert_eq!(format_bytes(512), "512B");
        assert_eq!(format_bytes(1536), "1.5KiB");
        assert_eq!(format_bytes(5 << 30), "5.0GiB");
    }

    #[test]
    fn socket_choice() {
        let sock = Path::new("/tmp/x.sock");
        let cfg = Path::new("/etc/xlb/xlb.toml");
        assert_eq!(socket_path(Some(sock), Some(cfg)), sock);
        assert_eq!(socket_path(Some(sock), None), sock);
        assert_eq!(socket_path(None, Some(cfg)), Path::new(DEFAULT_SOCKET));
        assert_eq!(socket_path(None, None), Path::new(DEFAULT_SOCKET));
        // A config that does not validate still names its socket (`xlb diff` of a broken
        // file reaches the daemon, which says what is wrong).
        let dir = tempfile::tempdir().unwrap();
        let broken = dir.path().join("x.toml");
        std::fs::write(
            &broken,
            "[daemon]\napi_socket = \"/run/a/b.sock\"\nbogus = 1\n",
        )
        .unwrap();
        assert_eq!(socket_path(None, Some(&broken)), Path::new("/run/a/b.sock"));
    }

    #[test]
    fn calls() {
        let a = Action::AddBackend {
            group: "web/x y".into(),
            address: "[::1]:80".into(),
            weight: None,
        };
        assert_eq!(
            a.call(),
            (
                Method::POST,
                "/v1/groups/web%2Fx%20y/backends".to_string(),
                Some(json!({"address": "[::1]:80"}))
            )
        );
        let w = Action::SetWeight {
            group: "web".into(),
            address: "10.0.0.1".into(),
            weight: 3,
        };
        assert_eq!(
            w.call().2,
            Some(json!({"address": "10.0.0.1", "weight": 3}))
        );
        assert_eq!(Action::Backends { group: None }.call().1, "/v1/status");
    }

    async fn start() -> (tempfile::TempDir, PathBuf, crate::api::ApiServer) {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("xlb.sock");
        let server = serve(&sock, spawn_owner()).await.unwrap();
        (dir, sock, server)
    }

    #[tokio::test]
    async fn commands_end_to_end() {
        let (_dir, sock, _server) = start().await;

        let out = execute(&sock, &Action::Status, false).await.unwrap();
        assert_eq!(out, render_status(&canned_status()));
        let out = execute(&sock, &Action::Status, true).await.unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["pid"], 4242);
        assert!(out.contains("\n  \"pid\": 4242"), "pretty JSON: {out}");

        let all = execute(&sock, &Action::Backends { group: None }, false)
            .await
            .unwrap();
        assert_eq!(all.lines().count(), 5, "{all}");
        let all_json = execute(&sock, &Action::Backends { group: None }, true)
            .await
            .unwrap();
        let v: Vec<BackendStatus> = serde_json::from_str(&all_json).unwrap();
        assert_eq!(v.len(), 4);

        let one = execute(
            &sock,
            &Action::Backends {
                group: Some("api6".into()),
            },
            false,
        )
        .await
        .unwrap();
        assert_eq!(one, render_backends(&canned_status().groups[1].backends));

        let err = execute(
            &sock,
            &Action::Backends {
                group: Some("nope".into()),
            },
            false,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, CliError::Api { status: 404, .. }), "{err}");

        let msg = execute(
            &sock,
            &Action::AddBackend {
                group: "web".into(),
                address: "10.0.0.3:8080".into(),
                weight: Some(5),
            },
            false,
        )
        .await
        .unwrap();
        assert_eq!(msg, "added 10.0.0.3:8080 to web with weight 5\n");

        let err = execute(
            &sock,
            &Action::AddBackend {
                group: "web".into(),
                address: "10.0.0.1:8080".into(),
                weight: None,
            },
            false,
        )
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), "10.0.0.1:8080 is already in web");

        let err = execute(
            &sock,
            &Action::AddBackend {
                group: "nope".into(),
                address: "10.0.0.3".into(),
                weight: None,
            },
            false,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, CliError::Api { status: 404, .. }), "{err}");

        for (action, expected) in [
            (
                Action::RemoveBackend {
                    group: "web".into(),
                    address: "10.0.0.2:8080".into(),
                },
                "removed 10.0.0.2:8080 from web\n",
            ),
            (
                Action::DrainBackend {
                    group: "api6".into(),
                    address: "[2001:db8::2]:9000".into(),
                },
                "draining [2001:db8::2]:9000 in api6\n",
            ),
            (
                Action::SetWeight {
                    group: "web".into(),
                    address: "10.0.0.1".into(),
                    weight: 0,
                },
                "weight of 10.0.0.1 in web is now 0\n",
            ),
        ] {
            assert_eq!(execute(&sock, &action, false).await.unwrap(), expected);
        }
        let json_out = execute(
            &sock,
            &Action::RemoveBackend {
                group: "web".into(),
                address: "10.0.0.2:8080".into(),
            },
            true,
        )
        .await
        .unwrap();
        assert_eq!(
            json_out,
            "{\n  \"message\": \"removed 10.0.0.2:8080 from web\"\n}\n"
        );

        let err = execute(&sock, &Action::Reload, false).await.unwrap_err();
        assert!(matches!(err, CliError::Api { status: 400, .. }), "{err}");
        assert_eq!(err.to_string(), "xlb.toml:3:1: daemon.foo: unknown key");
    }

    #[tokio::test]
    async fn unreachable_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("missing.sock");
        let err = request(&sock, Method::GET, "/v1/status", None)
            .await
            .unwrap_err();
        assert!(matches!(err, CliError::Unreachable { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "cannot reach xlb at {}: is `xlb run` running? (No such file or directory)",
                sock.display()
            )
        );

        // A stale socket: nothing listens.
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let err = request(&sock, Method::GET, "/v1/status", None)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .ends_with("is `xlb run` running? (Connection refused)"),
            "{err}"
        );
    }

    #[test]
    fn error_answers() {
        let err = format_answer(&Action::Reload, 500, Value::Null, false).unwrap_err();
        assert_eq!(err.to_string(), "xlb answered HTTP 500");
        let err = format_answer(&Action::Reload, 502, json!("bad gateway"), false).unwrap_err();
        assert_eq!(err.to_string(), "xlb answered HTTP 502: \"bad gateway\"");
        let err = format_answer(&Action::Status, 200, json!({"nope": 1}), false).unwrap_err();
        assert!(matches!(err, CliError::BadAnswer(_)), "{err}");
    }
}
