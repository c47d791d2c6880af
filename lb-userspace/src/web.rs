//! The HTTP listener of `[daemon] http_listen`: `GET /metrics` (Prometheus text format, see
//! [`crate::metrics`]) and `GET /`, a read-only status page rendered on the server.
//!
//! It never waits for the owner loop: both pages are made from the last [`Snapshot`] the loop
//! published (a `tokio::sync::watch` channel) and the shared [`Live`] metrics. It only reads,
//! so nothing it is asked can change anything. A slow or hostile client cannot hurt: at most
//! [`MAX_CONNECTIONS`] connections at once (more are closed at once), the request head must
//! arrive within [`HEAD_TIMEOUT`] and fit in [`MAX_HEAD_BYTES`], bodies are never read, and a
//! connection lives at most [`CONNECTION_LIFETIME`] whatever it does.
use std::{
    fmt::{self, Write as _},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use axum::{
    extract::State,
    http::{header, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    net::TcpListener,
    sync::{oneshot, watch, Semaphore},
    task::JoinHandle,
};
use tracing::{debug, info, warn};

use crate::{
    metrics::{self, backend_label, Live, Snapshot},
    model::BackendState,
};

/// Connections served at once; one more is closed as soon as it is accepted.
pub const MAX_CONNECTIONS: usize = 32;
/// The request line and headers must arrive within this.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request head read (hyper's smallest buffer limit).
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// A connection is closed after this, whatever it is doing.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// How often the status page reloads itself.
const REFRESH_SECS: u32 = 5;

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("http_listen {addr}: {source}")]
pub struct WebError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// What each request reads.
#[derive(Clone)]
struct Shared {
    snapshot: watch::Receiver<Option<Arc<Snapshot>>>,
    live: Live,
}

/// The running listener; dropping it stops accepting.
pub struct HttpServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// The address it listens on (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Listen on `addr` and serve `/metrics` and `/` from what `snapshot` and `live` hold.
pub async fn serve(
    addr: SocketAddr,
    snapshot: watch::Receiver<Option<Arc<Snapshot>>>,
    live: Live,
) -> Result<HttpServer, WebError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| WebError { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| WebError { addr, source })?;
    let app = router(Shared { snapshot, live });
    let (shutdown_tx, mut shutdown_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown_rx => return,
                a = listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    warn!(error = %e, "http_listen: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                debug!(%peer, "http_listen: too many connections, closing one");
                continue;
            };
            let service = TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let mut b = hyper::server::conn::http1::Builder::new();
                b.timer(TokioTimer::new())
                    .header_read_timeout(HEAD_TIMEOUT)
                    .max_buf_size(MAX_HEAD_BYTES)
                    .max_headers(64)
                    .keep_alive(true);
                let conn = b.serve_connection(TokioIo::new(stream), service);
                match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!(%peer, error = %e, "http_listen connection"),
                    Err(_) => debug!(%peer, "http_listen connection closed after its lifetime"),
                }
                drop(slot);
            });
        }
    });
    info!(address = %local, "HTTP listening (/metrics, status page /)");
    Ok(HttpServer {
        addr: local,
        shutdown: Some(shutdown_tx),
        task: Some(task),
    })
}

fn router(shared: Shared) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/metrics", get(prometheus))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(shared)
}

fn text(status: StatusCode, body: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{body}\n"),
    )
        .into_response()
}

fn not_ready() -> Response {
    text(StatusCode::SERVICE_UNAVAILABLE, "xlb is starting")
}

async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "not found: try /metrics or /")
}

async fn method_not_allowed(method: Method) -> Response {
    let mut r = text(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("{method} is not allowed: this listener only reads (GET)"),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    r
}

async fn prometheus(State(s): State<Shared>) -> Response {
    let Some(snap) = s.snapshot.borrow().clone() else {
        return not_ready();
    };
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(&snap, &s.live),
    )
        .into_response()
}

async fn page(State(s): State<Shared>) -> Response {
    let Some(snap) = s.snapshot.borrow().clone() else {
        return not_ready();
    };
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // No scripts, no outside resources: the page is text and its own style.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        render_page(&snap),
    )
        .into_response()
}

/// Text made safe for HTML content and (quoted) attribute values.
pub struct Esc<'a>(pub &'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

fn secs(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "-".into();
    }
    humantime::format_duration(Duration::from_secs(s as u64)).to_string()
}

fn per_sec(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn utc(unix: f64) -> String {
    if !unix.is_finite() || unix < 0.0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs_f64(unix)).to_string()
}

fn state_class(s: BackendState) -> &'static str {
    match s {
        BackendState::Healthy => "ok",
        BackendState::Initial => "wait",
        BackendState::Draining => "wait",
        BackendState::Unhealthy => "bad",
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}\
table{border-collapse:collapse;margin:.4em 0}\
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;font-size:.9em}\
th{background:#f2f2f2}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.ok{color:#176b2c;font-weight:600}.bad{color:#b00020;font-weight:600}\
.wait{color:#8a6100;font-weight:600}.muted{color:#777}";

/// The status page of `snap`: every text from the state or the config is escaped.
pub fn render_page(snap: &Snapshot) -> String {
    let s = &snap.status;
    let mut h = String::with_capacity(16 * 1024);
    // Writing to a String cannot fail: the results are ignored below.
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <title>xlb status</title><style>{STYLE}</style></head><body>\n"
    );
    let interfaces: Vec<String> = s
        .interfaces
        .iter()
        .map(|i| format!("{} ({})", i.name, i.mode))
        .collect();
    let _ = write!(
        h,
        "<h1>xlb {version}</h1>\n<p id=\"summary\">pid {pid}, up {up}, config {config}, \
         interfaces {ifaces}; connection table {entries} of {cap} entries; \
         <span class=\"muted\">as of {at} (refreshes every {REFRESH_SECS} s)</span></p>\n",
        version = Esc(&s.version),
        pid = s.pid,
        up = secs(s.uptime_secs),
        config = Esc(&s.config_file),
        ifaces = Esc(&interfaces.join(", ")),
        entries = snap
            .conntrack_entries
            .map_or("-".to_string(), |n| n.to_string()),
        cap = snap.conntrack_capacity,
        at = utc(snap.taken_unix),
    );

    // Services.
    h.push_str(
        "<h2>Services</h2>\n<table id=\"services\"><thead><tr><th>service</th><th>address</th>\
         <th>target group</th><th>backends in table</th><th>new flows/s</th><th>packets/s</th>\
         <th>bytes/s</th><th>new flows</th><th>dropped (no backend)</th></tr></thead><tbody>\n",
    );
    for sv in &s.services {
        let r = snap
            .service_rates
            .get(&sv.name)
            .copied()
            .unwrap_or_default();
        let addr = SocketAddr::new(sv.vip, sv.port);
        let _ = writeln!(
            h,
            "<tr class=\"service\" data-service=\"{name}\"><td>{name}</td><td>{addr}/{proto}</td>\
             <td>{group}</td><td class=\"n\">{table}</td><td class=\"n\">{nf}</td>\
             <td class=\"n\">{pk}</td><td class=\"n\">{by}</td><td class=\"n\">{new}</td>\
             <td class=\"n\">{drop}</td></tr>",
            name = Esc(&sv.name),
            proto = Esc(&sv.protocol),
            group = Esc(&sv.target_group),
            table = sv.backends_in_table,
            nf = per_sec(r.new_flows),
            pk = per_sec(r.packets),
            by = per_sec(r.bytes),
            new = sv.counters.new_flows,
            drop = sv.counters.dropped,
        );
    }
    h.push_str("</tbody></table>\n");

    // Groups and their backends.
    for g in &s.groups {
        let _ = write!(
            h,
            "<section class=\"group\" data-group=\"{name}\">\n<h2>Target group {name}</h2>\n\
             <p class=\"group-info\">health check: {hc}; all unhealthy: {au}{fo}; \
             deregistration delay {dd}</p>\n",
            name = Esc(&g.name),
            hc = Esc(g.health_check.as_deref().unwrap_or("none")),
            au = Esc(&g.all_unhealthy),
            fo = if g.failing_open {
                " <span class=\"bad failing-open\">(failing open now)</span>"
            } else {
                ""
            },
            dd = secs(g.deregistration_delay_secs),
        );
        if let Some(sc) = &g.scaling {
            let _ = writeln!(
                h,
                "<p class=\"scaling\" data-desired=\"{d}\" data-min=\"{mi}\" data-max=\"{ma}\" \
                 data-in-service=\"{is}\">scaling: desired {d} (min {mi}, max {ma}), \
                 {is} in service, {la} launching; hook: {hook}; last decision: {last}</p>",
                d = sc.desired,
                mi = sc.min,
                ma = sc.max,
                is = sc.in_service,
                la = sc.launching,
                hook = Esc(&sc.hook),
                last = Esc(sc.last_decision.as_deref().unwrap_or("none")),
            );
        }
        h.push_str(
            "<table class=\"backends\"><thead><tr><th>backend</th><th>state</th><th>reason</th>\
             <th>for</th><th>weight</th><th>new flows</th><th>open flows</th>\
             <th>new flows/s</th><th>packets/s</th><th>bytes/s</th><th>source</th></tr>\
             </thead><tbody>\n",
        );
        for b in &g.backends {
            let name = backend_label(b.address, b.port);
            let r = snap
                .backend_rates
                .get(&(b.group.clone(), name.clone()))
                .copied()
                .unwrap_or_default();
            let state = b.state.to_string();
            let state_text = match (b.state, b.drain_remaining_secs) {
                (BackendState::Draining, Some(left)) => {
                    format!("draining ({} left)", secs(left))
                }
                _ => state.clone(),
            };
            let source = serde_json::to_value(b.source)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let _ = writeln!(
                h,
                "<tr class=\"backend\" data-group=\"{group}\" data-backend=\"{name}\" \
                 data-state=\"{state}\" data-receiving=\"{recv}\"><td class=\"address\">{name}</td>\
                 <td class=\"state {cls}\">{state_text}</td><td class=\"reason\">{reason}</td>\
                 <td>{since}</td><td class=\"n weight\">{weight}</td>\
                 <td class=\"n new-flows\">{new}</td><td class=\"n open-flows\">{open}</td>\
                 <td class=\"n\">{nf}</td><td class=\"n\">{pk}</td><td class=\"n\">{by}</td>\
                 <td>{source}</td></tr>",
                group = Esc(&b.group),
                name = Esc(&name),
                state = Esc(&state),
                recv = b.receiving_new_flows,
                cls = state_class(b.state),
                state_text = Esc(&state_text),
                reason = Esc(&b.reason),
                since = secs(b.since_secs),
                weight = b.weight,
                new = b.counters.new_flows,
                open = b.active_flows,
                nf = per_sec(r.new_flows),
                pk = per_sec(r.packets),
                by = per_sec(r.bytes),
                source = Esc(&source),
            );
        }
        h.push_str("</tbody></table>\n</section>\n");
    }

    // Events, newest first.
    h.push_str(
        "<h2>Recent events</h2>\n<table id=\"events\"><thead><tr><th>time (UTC)</th>\
         <th>group</th><th>kind</th><th>what</th></tr></thead><tbody>\n",
    );
    for e in snap.events.iter().rev() {
        let _ = writeln!(
            h,
            "<tr class=\"event\" data-kind=\"{kind}\"><td>{time}</td><td>{group}</td>\
             <td>{kind}</td><td class=\"message\">{msg}</td></tr>",
            kind = Esc(&e.kind),
            time = utc(e.time),
            group = Esc(&e.group),
            msg = Esc(&e.message),
        );
    }
    if snap.events.is_empty() {
        h.push_str("<tr><td colspan=\"4\" class=\"muted\">none yet</td></tr>\n");
    }
    h.push_str("</tbody></table>\n");

    // Non-zero global counters.
    h.push_str(
        "<h2>Data path</h2>\n<table id=\"global\"><thead><tr><th>counter</th><th>packets</th>\
         </tr></thead><tbody>\n",
    );
    for (name, v) in s.global.iter().filter(|(_, v)| **v > 0) {
        let _ = writeln!(
            h,
            "<tr class=\"counter\" data-counter=\"{n}\"><td>{n}</td><td class=\"n\">{v}</td></tr>",
            n = Esc(name),
        );
    }
    h.push_str(
        "</tbody></table>\n<p class=\"muted\">Metrics for Prometheus: \
         <a href=\"/metrics\">/metrics</a></p>\n</body></html>\n",
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Event;
    use std::collections::BTreeMap;

    fn snap() -> Snapshot {
        crate::metrics::tests_support::fake_snapshot()
    }

    #[test]
    fn escapes_everything_that_could_be_markup() {
        assert_eq!(
            Esc(r#"<script>alert("x" & 'y')</script>"#).to_string(),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
        );
        assert_eq!(
            Esc("plain 198.18.2.11:8080").to_string(),
            "plain 198.18.2.11:8080"
        );
        assert_eq!(Esc("").to_string(), "");
        assert_eq!(Esc("ünïcødé <").to_string(), "ünïcødé &lt;");
    }

    #[test]
    fn page_shows_backends_with_their_state() {
        let html = render_page(&snap());
        assert!(html.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
        assert!(!html.contains("<script"), "no scripts");
        for (b, st) in [
            ("198.18.2.11:8080", "healthy"),
            ("198.18.2.12:8080", "healthy"),
            ("[2001:db8:2::13]:8080", "unhealthy"),
        ] {
            let row = format!(
                "<tr class=\"backend\" data-group=\"web-servers\" data-backend=\"{b}\" \
                 data-state=\"{st}\""
            );
            assert!(html.contains(&row), "{row} in\n{html}");
        }
        assert!(html.contains("<tr class=\"service\" data-service=\"web\">"));
        assert!(html.contains(
            "<p class=\"scaling\" data-desired=\"3\" data-min=\"1\" data-max=\"4\" \
             data-in-service=\"3\">"
        ));
    }

    #[test]
    fn page_escapes_reasons_and_events() {
        let mut s = snap();
        s.status.groups[0].backends[2].reason = "<img src=x onerror=alert(1)>".into();
        s.status.groups[0].name = "g\"><b>".into();
        s.events.push(Event {
            time: 1_700_000_000.0,
            group: "<i>g</i>".into(),
            kind: "health\"".into(),
            message: "</td></tr><script>alert(1)</script>".into(),
            metrics: BTreeMap::new(),
        });
        let html = render_page(&s);
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<i>g"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(html.contains("data-group=\"g&quot;&gt;&lt;b&gt;\""));
        assert!(html.contains("data-kind=\"health&quot;\""));
        assert!(html.contains("2023-11-14T22:13:20Z"), "event time in UTC");
    }

    async fn get(addr: SocketAddr, raw: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A refused or reset connection reads as an empty answer.
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = c.write_all(raw.as_bytes()).await;
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "neither answered nor closed within 10 s");
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn serves_metrics_and_page_and_only_reads() {
        let (tx, rx) = watch::channel(None);
        let server = serve("127.0.0.1:0".parse().unwrap(), rx, Live::default())
            .await
            .unwrap();
        let addr = server.local_addr();
        let close = "Connection: close\r\n\r\n";
        let r = get(
            addr,
            &format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{close}"),
        )
        .await;
        assert!(
            r.starts_with("HTTP/1.1 503"),
            "before the first snapshot: {r}"
        );

        tx.send_replace(Some(Arc::new(snap())));
        let r = get(
            addr,
            &format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{close}"),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.contains("content-type: text/plain; version=0.0.4"), "{r}");
        assert!(r.contains("xlb_backend_up{group=\"web-servers\",backend=\"198.18.2.11:8080\"} 1"));
        let r = get(addr, &format!("GET / HTTP/1.1\r\nHost: x\r\n{close}")).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(
            r.contains("content-security-policy: default-src 'none'"),
            "{r}"
        );
        assert!(r.contains("data-backend=\"198.18.2.11:8080\""), "{r}");
        let r = get(
            addr,
            &format!("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n{close}"),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 405"), "{r}");
        let r = get(
            addr,
            &format!("GET /v1/status HTTP/1.1\r\nHost: x\r\n{close}"),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        // A head larger than the limit is refused, not buffered.
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n{close}",
            "a".repeat(MAX_HEAD_BYTES * 4)
        );
        let r = get(addr, &big).await;
        assert!(
            r.is_empty() || r.starts_with("HTTP/1.1 431") || r.starts_with("HTTP/1.1 400"),
            "{r}"
        );
    }

    #[tokio::test]
    async fn large_answers_are_whole() {
        // Far more than the connection's buffer limit: written in pieces, not refused.
        let mut big = snap();
        let template = big.status.groups[0].backends[0].clone();
        for i in 0..600u32 {
            let mut b = template.clone();
            b.address = std::net::IpAddr::from([198, 18, 4 + (i / 250) as u8, (i % 250) as u8]);
            big.status.groups[0].backends.push(b);
        }
        let (_tx, rx) = watch::channel(Some(Arc::new(big)));
        let server = serve("127.0.0.1:0".parse().unwrap(), rx, Live::default())
            .await
            .unwrap();
        let r = get(
            server.local_addr(),
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.len() > 20 * MAX_HEAD_BYTES, "{} bytes", r.len());
        assert!(
            r.contains("backend=\"198.18.6.99:8080\""),
            "the last backend is there"
        );
        let (_, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(body.ends_with('\n') && body.lines().all(|l| !l.is_empty()));
        let r = get(
            server.local_addr(),
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.trim_end().ends_with("</html>"), "the whole page");
    }

    #[tokio::test]
    async fn idle_and_excess_clients_do_not_block_others() {
        let (_tx, rx) = watch::channel(Some(Arc::new(snap())));
        let server = serve("127.0.0.1:0".parse().unwrap(), rx, Live::default())
            .await
            .unwrap();
        let addr = server.local_addr();
        // Clients that connect and say nothing, more than the server takes at once.
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS + 8 {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // The idle ones are closed once the head timeout passes; a real request is then
        // answered (bounded wait: the head timeout plus slack).
        let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT * 4;
        loop {
            let r = get(
                addr,
                "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .await;
            if r.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never answered: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        drop(idle);
    }
}
