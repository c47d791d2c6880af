//! Active health checks: one probe ([`check_once`]), the state machine that turns outcomes into
//! a backend state ([`HealthTracker`]), and the per-backend scheduler ([`spawn_checker`]).
//!
//! This module does not read the configuration: the caller builds a [`CheckSpec`] per backend
//! (address plus the resolved check port) and passes the thresholds to
//! [`HealthTracker::observe`].
//!
//! The HTTP check is a small hand-written HTTP/1.1 client: one `GET` with `Connection: close`
//! on a fresh connection. The response head and chunk sizes are parsed by `httparse` (the
//! parser hyper uses); the body framing (`Content-Length`, `chunked`, or until close) is done
//! here, reading at most [`MAX_BODY`] bytes of body. Everything before the body, 1xx interim
//! responses included, is bounded by [`MAX_HEAD`] ([`parse_response_head`], a pure function
//! of the bytes that fuzzing can call). A health check needs a status code and at
//! most a small JSON body, so a full client stack would buy nothing but dependencies, and
//! owning the exchange keeps the failure reasons short and predictable.
use std::{
    io,
    net::SocketAddr,
    ops::RangeInclusive,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
    task::JoinHandle,
    time::MissedTickBehavior,
};

use crate::model::BackendState;

/// The most body an HTTP check reads; a longer body is cut there (and yields no metrics).
pub const MAX_BODY: usize = 64 * 1024;
/// The largest response head (status line and headers) an HTTP check accepts.
pub const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 100;
/// The longest chunk-size line (with extensions) accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 4096;
const USER_AGENT: &str = "xlb-health/0.1";

/// What a check does once connected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// Healthy when a TCP connection can be opened.
    Tcp,
    /// Healthy when `GET {path}` answers with a status in one of the `success` ranges.
    Http {
        /// Request target, e.g. `/health`; a missing leading `/` is added.
        path: String,
        /// Status codes that count as healthy, e.g. `[200..=399]`.
        success: Vec<RangeInclusive<u16>>,
    },
}

/// One backend's check, fully resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckSpec {
    pub kind: CheckKind,
    /// The backend's address with the check port (which may differ from the traffic port).
    pub addr: SocketAddr,
    /// Bound on the whole exchange: connect, and for HTTP also request and response.
    pub timeout: Duration,
    /// DSR `target = "vip"`: the check connects to the VIP (with `addr`'s port) the way
    /// clients do, its packets marked so that `xlb_hc` sends them to this backend through the
    /// service's encapsulation (see `vipcheck`). None: to `addr` itself.
    pub via: Option<ViaVip>,
}

/// How a check reaches the backend's VIP-serving socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViaVip {
    pub vip: std::net::IpAddr,
    /// The service's forwarding (its encapsulation).
    pub dsr: crate::config::DsrConfig,
    /// `SO_MARK` of the check's socket (`HC_MARK_BASE | index`), given by
    /// `vipcheck::VipChecks::assign`; 0 until then.
    pub mark: u32,
}

/// Open the check's connection: to the backend's address, or to the VIP with the check's mark
/// from the local address the kernel would use toward the backend (the backend answers from
/// the VIP straight to it).
async fn connect(spec: &CheckSpec) -> io::Result<TcpStream> {
    let Some(v) = &spec.via else {
        return TcpStream::connect(spec.addr).await;
    };
    if v.mark == 0 {
        // Without its mark the connection would go wherever the routes send the VIP.
        return Err(io::Error::other(
            "no route through the encapsulation (DSR check setup failed: see the log)",
        ));
    }
    let dst = SocketAddr::new(v.vip, spec.addr.port());
    // The marked route must lead to `xlb_hc`: not to a local VIP (this host would answer),
    // nor wherever an earlier routing rule sends marked packets.
    crate::vipcheck::check_route(v.vip, v.mark)
        .await
        .map_err(io::Error::other)?;
    // The source the routes give for the backend's address (a UDP connect sends nothing).
    let probe = std::net::UdpSocket::bind(if dst.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    })?;
    probe.connect(spec.addr)?;
    let local = probe.local_addr()?.ip();
    let sock = if dst.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    set_mark(&sock, v.mark)?;
    // Hop limit 1: the backend takes the check's packets only if the VIP is its own. One that
    // lacks the VIP but forwards IP would otherwise route them on (to the VIP: through a node,
    // to another backend, or to a neighbour holding the VIP), whose answer passed the check.
    set_hop_limit_1(&sock, dst.is_ipv4())?;
    sock.bind(SocketAddr::new(local, 0))?;
    sock.connect(dst).await
}

fn set_hop_limit_1(sock: &impl std::os::fd::AsRawFd, v4: bool) -> io::Result<()> {
    let one: libc::c_int = 1;
    let (level, name) = if v4 {
        (libc::IPPROTO_IP, libc::IP_TTL)
    } else {
        (libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS)
    };
    // SAFETY: setsockopt on an open socket with a pointer to a c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_mark(sock: &impl std::os::fd::AsRawFd, mark: u32) -> io::Result<()> {
    // SAFETY: setsockopt on an open socket with a pointer to a u32 and its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&mark as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The result of one check.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckOutcome {
    pub ok: bool,
    /// `"connected"`, `"HTTP 200"`, `"connect refused"`, `"timeout after 5s"`, ...
    pub reason: String,
    /// From the start of the check to its end (about the timeout for a timeout).
    pub latency: Duration,
    /// The HTTP body when it is a JSON object (backend-reported metrics such as
    /// `{"cpu": 0.42}`), whatever the status; None otherwise and for TCP checks.
    pub metrics: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Runs one check. Never fails: every problem is an outcome with `ok == false` and a reason.
pub async fn check_once(spec: &CheckSpec) -> CheckOutcome {
    let start = Instant::now();
    let result = tokio::time::timeout(spec.timeout, run_check(spec)).await;
    let latency = start.elapsed();
    let (ok, reason, metrics) = match result {
        Err(_elapsed) => (
            false,
            format!("timeout after {}", human_duration(spec.timeout)),
            None,
        ),
        Ok(Err(failure)) => (false, failure.reason(), None),
        Ok(Ok(Probe::Connected)) => (true, "connected".to_string(), None),
        Ok(Ok(Probe::Http { status, metrics })) => {
            let ok = match &spec.kind {
                CheckKind::Http { success, .. } => success.iter().any(|r| r.contains(&status)),
                CheckKind::Tcp => false, // run_check returns Http only for Http checks
            };
            (ok, format!("HTTP {status}"), metrics)
        }
    };
    CheckOutcome {
        ok,
        reason,
        latency,
        metrics,
    }
}

/// A duration as people write it: `5s`, `200ms`, `1.5s`, `250us`.
pub fn human_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        "0s".to_string()
    } else if ns.is_multiple_of(1_000_000_000) {
        format!("{}s", d.as_secs())
    } else if ns.is_multiple_of(1_000_000) {
        let ms = d.as_millis();
        if ms < 1000 {
            format!("{ms}ms")
        } else {
            let frac = format!("{:03}", ms % 1000);
            format!("{}.{}s", ms / 1000, frac.trim_end_matches('0'))
        }
    } else if ns.is_multiple_of(1000) && ns < 1_000_000 {
        format!("{}us", ns / 1000)
    } else {
        format!("{d:?}")
    }
}

/// The reason text for a connection-level error.
pub fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => return "connect refused".to_string(),
        io::ErrorKind::HostUnreachable => return "no route to host".to_string(),
        io::ErrorKind::NetworkUnreachable => return "network unreachable".to_string(),
        io::ErrorKind::TimedOut => return "timeout".to_string(),
        _ => {}
    }
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "connect refused".to_string(),
        Some(libc::EHOSTUNREACH) => "no route to host".to_string(),
        Some(libc::ENETUNREACH) => "network unreachable".to_string(),
        _ => e.to_string(),
    }
}

enum Probe {
    Connected,
    Http {
        status: u16,
        metrics: Option<serde_json::Map<String, serde_json::Value>>,
    },
}

enum Failure {
    Io(io::Error),
    /// The peer spoke, but not HTTP/1.x as we read it.
    Bad(String),
    /// The configured path cannot be put in a request line.
    InvalidPath,
}

impl Failure {
    fn reason(&self) -> String {
        match self {
            Self::Io(e) => io_reason(e),
            Self::Bad(what) => format!("bad HTTP response: {what}"),
            Self::InvalidPath => "invalid health check path".to_string(),
        }
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

fn bad(what: impl Into<String>) -> Failure {
    Failure::Bad(what.into())
}

async fn run_check(spec: &CheckSpec) -> Result<Probe, Failure> {
    match &spec.kind {
        CheckKind::Tcp => {
            let stream = connect(spec).await?;
            drop(stream);
            Ok(Probe::Connected)
        }
        CheckKind::Http { path, .. } => http_get(spec, path).await,
    }
}

fn request(addr: SocketAddr, path: &str) -> Result<String, Failure> {
    // The path goes on the request line as is: no whitespace or control characters.
    if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(Failure::InvalidPath);
    }
    let slash = if path.starts_with('/') { "" } else { "/" };
    Ok(format!(
        "GET {slash}{path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: {USER_AGENT}\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    ))
}

async fn http_get(spec: &CheckSpec, path: &str) -> Result<Probe, Failure> {
    // The Host header names what the socket connects to (the VIP through the encapsulation).
    let host = match &spec.via {
        Some(v) => SocketAddr::new(v.vip, spec.addr.port()),
        None => spec.addr,
    };
    let req = request(host, path)?;
    let mut stream = connect(spec).await?;
    stream.write_all(req.as_bytes()).await?;
    read_response(stream).await
}

/// The response half of [`http_get`], over any byte stream (the fuzz target feeds it bytes).
async fn read_response<S: AsyncRead + Unpin>(stream: S) -> Result<Probe, Failure> {
    let mut r = Reader {
        stream,
        buf: Vec::with_capacity(4096),
    };

    // The head, after any 1xx interim responses; all of it within MAX_HEAD bytes.
    let ResponseHead {
        status,
        framing,
        body_start,
    } = loop {
        if let Some(head) = parse_response_head(&r.buf).map_err(|e| bad(e.0))? {
            break head;
        }
        if !r.fill().await? {
            return Err(bad(if r.buf.is_empty() {
                "connection closed without a response"
            } else {
                "connection closed inside the response head"
            }));
        }
    };

    let body = match framing {
        Framing::None => Some(Vec::new()),
        Framing::Length(len) => r.read_length(body_start, len).await?,
        Framing::Chunked => r.read_chunked(body_start).await?,
        Framing::Close => r.read_to_close(body_start).await?,
    };
    Ok(Probe::Http {
        status,
        metrics: body.as_deref().and_then(json_object),
    })
}

/// How the body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body (101, 204, 304).
    None,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes.
    Close,
}

/// The final response head found by [`parse_response_head`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub framing: Framing,
    /// Where the body starts in the buffer (after every interim response and the head).
    pub body_start: usize,
}

/// Why a response head was refused (the text of the check's reason).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HeadError(pub String);

/// Parses the start of an HTTP/1.x response held in `buf` (parsing by `httparse`): skips 1xx
/// interim responses other than 101, then reads the final status line and headers and how
/// the body is framed. `Ok(None)`: more bytes are needed. A pure function of the bytes, so
/// it can be fuzzed.
///
/// Everything before the body, interim responses included, must fit in [`MAX_HEAD`] bytes:
/// a buffer longer than that without a complete final head is an error, so a caller that
/// reads until this returns something other than `Ok(None)` never holds more than
/// `MAX_HEAD` plus one read (a backend streaming `100 Continue` forever is cut off).
pub fn parse_response_head(buf: &[u8]) -> Result<Option<ResponseHead>, HeadError> {
    let too_big = || HeadError(format!("response head larger than {} KiB", MAX_HEAD / 1024));
    let mut start = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf[start..]) {
            Ok(httparse::Status::Complete(n)) => {
                let end = start + n;
                if end > MAX_HEAD {
                    return Err(too_big());
                }
                let status = resp
                    .code
                    .ok_or_else(|| HeadError("no status code".into()))?;
                if (100..200).contains(&status) && status != 101 {
                    start = end;
                    continue;
                }
                let framing = if matches!(status, 101 | 204 | 304) {
                    Framing::None
                } else {
                    framing(resp.headers)?
                };
                return Ok(Some(ResponseHead {
                    status,
                    framing,
                    body_start: end,
                }));
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_HEAD {
                    return Err(too_big());
                }
                return Ok(None);
            }
            Err(e) => return Err(HeadError(e.to_string())),
        }
    }
}

fn framing(headers: &[httparse::Header<'_>]) -> Result<Framing, HeadError> {
    let bad = |s: &str| HeadError(s.to_string());
    let mut length: Option<u64> = None;
    let mut chunked = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let value =
                std::str::from_utf8(h.value).map_err(|_| bad("invalid Transfer-Encoding"))?;
            // What counts is the last coding of the last header.
            if let Some(last) = value.split(',').map(str::trim).rfind(|c| !c.is_empty()) {
                chunked = Some(last.eq_ignore_ascii_case("chunked"));
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| bad("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(bad("conflicting Content-Length headers"));
            }
            length = Some(n);
        }
    }
    // Transfer-Encoding wins over Content-Length (RFC 9112 6.3); a response whose last coding
    // is not chunked runs until the connection closes.
    Ok(match (chunked, length) {
        (Some(true), _) => Framing::Chunked,
        (Some(false), _) => Framing::Close,
        (None, Some(n)) => Framing::Length(n),
        (None, None) => Framing::Close,
    })
}

fn json_object(body: &[u8]) -> Option<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_slice(body).ok()? {
        serde_json::Value::Object(map) => Some(map),
        _ => None,
    }
}

struct Reader<S> {
    stream: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + Unpin> Reader<S> {
    /// Reads once more into the buffer; false at end of stream.
    async fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// Reads until the buffer holds `len` bytes; false if the stream ended first.
    async fn fill_to(&mut self, len: usize) -> io::Result<bool> {
        while self.buf.len() < len {
            if !self.fill().await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A `Content-Length` body; None when it is longer than [`MAX_BODY`] (cut, not read).
    async fn read_length(&mut self, start: usize, len: u64) -> Result<Option<Vec<u8>>, Failure> {
        let want = usize::try_from(len).unwrap_or(usize::MAX).min(MAX_BODY);
        if !self.fill_to(start + want).await? {
            return Err(bad("connection closed before the end of the body"));
        }
        if len > want as u64 {
            return Ok(None);
        }
        Ok(Some(self.buf[start..start + want].to_vec()))
    }

    /// A body that runs until the connection closes; None when longer than [`MAX_BODY`].
    async fn read_to_close(&mut self, start: usize) -> Result<Option<Vec<u8>>, Failure> {
        while self.buf.len() - start <= MAX_BODY {
            if !self.fill().await? {
                return Ok(Some(self.buf[start..].to_vec()));
            }
        }
        Ok(None)
    }

    /// A chunked body (trailers are not read); None when longer than [`MAX_BODY`].
    async fn read_chunked(&mut self, mut pos: usize) -> Result<Option<Vec<u8>>, Failure> {
        let mut body = Vec::new();
        loop {
            match httparse::parse_chunk_size(&self.buf[pos..]) {
                Ok(httparse::Status::Complete((n, size))) => {
                    pos += n;
                    if size == 0 {
                        return Ok(Some(body));
                    }
                    if size > (MAX_BODY - body.len()) as u64 {
                        return Ok(None);
                    }
                    let size = size as usize; // <= MAX_BODY
                    if !self.fill_to(pos + size + 2).await? {
                        return Err(bad("connection closed inside a chunk"));
                    }
                    body.extend_from_slice(&self.buf[pos..pos + size]);
                    if &self.buf[pos + size..pos + size + 2] != b"\r\n" {
                        return Err(bad("chunk not followed by CRLF"));
                    }
                    pos += size + 2;
                }
                Ok(httparse::Status::Partial) => {
                    if self.buf.len() - pos > MAX_CHUNK_LINE {
                        return Err(bad("chunk size line too long"));
                    }
                    if !self.fill().await? {
                        return Err(bad("connection closed inside a chunked body"));
                    }
                }
                Err(_) => return Err(bad("invalid chunk size")),
            }
        }
    }
}

/// A backend's health as checks have seen it, without the draining overlay (which the owner of
/// the group applies): [`BackendState::Initial`], `Healthy` or `Unhealthy`, never `Draining`.
///
/// Rules, with thresholds of 0 taken as 1:
/// - Initial: `healthy_threshold` consecutive successes make it Healthy; a single failure makes
///   it Unhealthy at once. A backend that fails its first check is not assumed to be up: sending
///   it traffic on hope would turn a broken deployment into user-visible errors, and one more
///   failed check would take it out again anyway.
/// - Healthy: `unhealthy_threshold` consecutive failures make it Unhealthy; a success resets
///   the failure streak.
/// - Unhealthy: `healthy_threshold` consecutive successes make it Healthy; a failure resets the
///   success streak.
///
/// The reason is that of the last outcome that caused or confirmed the state: a failure while
/// Unhealthy or a success while Healthy replaces it; a success while Initial does too (the
/// backend has been checked, "not checked yet" would be wrong). An outcome that goes against
/// the state without (yet) changing it leaves the reason alone. `since` moves only on a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthTracker {
    state: BackendState,
    ok_streak: u32,
    fail_streak: u32,
    reason: String,
    since: Instant,
}

impl HealthTracker {
    /// A backend not yet checked: Initial, reason "not checked yet".
    pub fn new(now: Instant) -> Self {
        Self {
            state: BackendState::Initial,
            ok_streak: 0,
            fail_streak: 0,
            reason: "not checked yet".to_string(),
            since: now,
        }
    }

    /// A backend taken as healthy: for groups without checks, or a state adopted from before.
    pub fn healthy(now: Instant, reason: &str) -> Self {
        Self {
            state: BackendState::Healthy,
            ok_streak: 0,
            fail_streak: 0,
            reason: reason.to_string(),
            since: now,
        }
    }

    /// A backend in `state` as a previous instance of the daemon left it (Draining is kept
    /// outside the tracker, so it restores as Healthy).
    pub fn restore(state: BackendState, reason: &str, now: Instant) -> Self {
        let state = match state {
            BackendState::Draining => BackendState::Healthy,
            s => s,
        };
        Self {
            state,
            ok_streak: 0,
            fail_streak: 0,
            reason: reason.to_string(),
            since: now,
        }
    }

    pub fn state(&self) -> BackendState {
        self.state
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// When the state last changed (or the tracker was made).
    pub fn since(&self) -> Instant {
        self.since
    }

    /// Consecutive successes up to the last outcome.
    pub fn ok_streak(&self) -> u32 {
        self.ok_streak
    }

    /// Consecutive failures up to the last outcome.
    pub fn fail_streak(&self) -> u32 {
        self.fail_streak
    }

    /// Passive health saw the backend fail: Unhealthy at once with `reason`, and the success
    /// streak starts over, so the active checks need `healthy_threshold` successes to bring
    /// it back. Returns `Some((from, to))` when the state changed (not when it was Unhealthy).
    pub fn mark_down(
        &mut self,
        reason: &str,
        now: Instant,
    ) -> Option<(BackendState, BackendState)> {
        self.ok_streak = 0;
        let from = self.state;
        if from == BackendState::Unhealthy {
            return None;
        }
        self.state = BackendState::Unhealthy;
        self.reason = reason.to_string();
        self.since = now;
        Some((from, BackendState::Unhealthy))
    }

    /// Feeds one outcome; returns `Some((from, to))` when the state changed.
    pub fn observe(
        &mut self,
        o: &CheckOutcome,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
        now: Instant,
    ) -> Option<(BackendState, BackendState)> {
        let healthy_threshold = healthy_threshold.max(1);
        let unhealthy_threshold = unhealthy_threshold.max(1);
        if o.ok {
            self.ok_streak = self.ok_streak.saturating_add(1);
            self.fail_streak = 0;
        } else {
            self.fail_streak = self.fail_streak.saturating_add(1);
            self.ok_streak = 0;
        }
        let from = self.state;
        let to = match (from, o.ok) {
            (BackendState::Initial | BackendState::Unhealthy, true)
                if self.ok_streak >= healthy_threshold =>
            {
                BackendState::Healthy
            }
            (BackendState::Initial, false) => BackendState::Unhealthy,
            (BackendState::Healthy, false) if self.fail_streak >= unhealthy_threshold => {
                BackendState::Unhealthy
            }
            _ => from,
        };
        let confirms = matches!(
            (to, o.ok),
            (BackendState::Healthy | BackendState::Initial, true)
                | (BackendState::Unhealthy, false)
        );
        if confirms {
            self.reason.clone_from(&o.reason);
        }
        if to != from {
            self.state = to;
            self.since = now;
            Some((from, to))
        } else {
            None
        }
    }
}

/// The running checker of one backend; dropping it aborts the task.
#[derive(Debug)]
pub struct CheckerHandle {
    task: JoinHandle<()>,
}

impl CheckerHandle {
    /// Whether the task has ended (aborted, or its receiver was dropped).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for CheckerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts checking one backend on its own tokio task (so must be called inside a runtime);
/// every outcome is sent as `(token.clone(), outcome)`.
///
/// The first check runs after a random jitter in `[0, min(interval, 1s) / 2)`, so backends
/// configured together are not all probed at the same instant; then one every `interval`,
/// measured from the start of the previous check ([`MissedTickBehavior::Delay`]: a check that
/// overruns its interval is followed by the next at once, then the schedule restarts from
/// there). Checks of one backend never overlap; a slow backend never delays another's checks,
/// since each has its own task. The check itself is bounded by `spec.timeout`.
///
/// Outcomes are sent with `send().await` on the bounded channel: when the receiver falls
/// behind, the checker waits (back-pressure) instead of dropping outcomes or piling them up,
/// and its next check is due at once after the send. The task ends when the receiver is
/// dropped (noticed also while waiting between checks) or when the handle is dropped.
///
/// `M` is the channel's message type: `(token, outcome)` itself, or a type it converts into
/// (the daemon's one message enum).
pub fn spawn_checker<T: Clone + Send + 'static, M: From<(T, CheckOutcome)> + Send + 'static>(
    token: T,
    spec: CheckSpec,
    interval: Duration,
    tx: mpsc::Sender<M>,
) -> CheckerHandle {
    let interval = interval.max(Duration::from_millis(1));
    let first = jitter(interval.min(Duration::from_secs(1)) / 2);
    let task = tokio::spawn(async move {
        tokio::select! {
            biased;
            _ = tx.closed() => return,
            _ = tokio::time::sleep(first) => {}
        }
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let outcome = tokio::select! {
                biased;
                _ = tx.closed() => break,
                outcome = async {
                    ticker.tick().await;
                    check_once(&spec).await
                } => outcome,
            };
            if tx.send(M::from((token.clone(), outcome))).await.is_err() {
                break;
            }
        }
        tracing::debug!(addr = %spec.addr, "health checker stopped: receiver gone");
    });
    CheckerHandle { task }
}

/// A pseudo-random duration in `[0, max)`: xorshift64 over a process-wide state seeded from the
/// clock and stepped per call, so checkers spawned in the same instant still differ.
fn jitter(max: Duration) -> Duration {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let max_ns = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    if max_ns == 0 {
        return Duration::ZERO;
    }
    let clock = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) ^ clock;
    if x == 0 {
        x = 0x2545_F491_4F6C_DD1D;
    }
    for _ in 0..3 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    Duration::from_nanos(x % max_ns)
}

/// What an HTTP check makes of a response, without a socket: `parts` are what successive reads
/// return (an empty part is skipped), then the peer closes. The status and the body's JSON
/// object (see [`CheckOutcome::metrics`]), or the failure reason as [`check_once`] reports it
/// (`bad HTTP response: ...`). The same code as a real check runs; this entry point is for the
/// fuzz target (`fuzz/fuzz_targets/health_response.rs`) and tests.
pub fn parse_http_response(
    parts: &[&[u8]],
) -> Result<(u16, Option<serde_json::Map<String, serde_json::Value>>), String> {
    let stream = Parts {
        parts,
        part: 0,
        at: 0,
    };
    let mut fut = std::pin::pin!(read_response(stream));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    // `Parts` is always ready, so one poll runs the exchange to its end.
    match std::future::Future::poll(fut.as_mut(), &mut cx) {
        std::task::Poll::Ready(Ok(Probe::Http { status, metrics })) => Ok((status, metrics)),
        std::task::Poll::Ready(Ok(Probe::Connected)) => Err("not an HTTP response".into()),
        std::task::Poll::Ready(Err(failure)) => Err(failure.reason()),
        std::task::Poll::Pending => Err("the response reader waited on an in-memory stream".into()),
    }
}

/// An in-memory stream that returns `parts` one read at a time.
struct Parts<'a> {
    parts: &'a [&'a [u8]],
    part: usize,
    at: usize,
}

impl AsyncRead for Parts<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        while let Some(part) = self.parts.get(self.part) {
            let rest = &part[self.at.min(part.len())..];
            if rest.is_empty() {
                self.part += 1;
                self.at = 0;
                continue;
            }
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.at += n;
            break;
        }
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tokio::net::TcpListener;

    use super::*;

    const LOCAL: &str = "127.0.0.1:0";

    fn http(addr: SocketAddr, path: &str, success: Vec<RangeInclusive<u16>>) -> CheckSpec {
        CheckSpec {
            kind: CheckKind::Http {
                path: path.to_string(),
                success,
            },
            addr,
            timeout: Duration::from_secs(5),
            via: None,
        }
    }

    fn tcp(addr: SocketAddr) -> CheckSpec {
        CheckSpec {
            kind: CheckKind::Tcp,
            addr,
            timeout: Duration::from_secs(5),
            via: None,
        }
    }

    /// A server on 127.0.0.1 that, per connection, reads the request head, sends it on
    /// `requests`, waits `delay`, writes `response` and closes.
    async fn serve(
        response: impl Into<Vec<u8>>,
        delay: Duration,
    ) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
        let response: Vec<u8> = response.into();
        let listener = TcpListener::bind(LOCAL).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (req_tx, req_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let response = response.clone();
                let req_tx = req_tx.clone();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 65536 {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => req.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let _ = req_tx.send(String::from_utf8_lossy(&req).into_owned());
                    tokio::time::sleep(delay).await;
                    let _ = sock.write_all(&response).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        (addr, req_rx)
    }

    fn ok_out(reason: &str) -> CheckOutcome {
        CheckOutcome {
            ok: true,
            reason: reason.to_string(),
            latency: Duration::ZERO,
            metrics: None,
        }
    }

    fn fail_out(reason: &str) -> CheckOutcome {
        CheckOutcome {
            ok: false,
            ..ok_out(reason)
        }
    }

    // ---- durations and reasons

    #[test]
    fn human_durations() {
        assert_eq!(human_duration(Duration::from_secs(5)), "5s");
        assert_eq!(human_duration(Duration::from_millis(200)), "200ms");
        assert_eq!(human_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(human_duration(Duration::from_millis(2050)), "2.05s");
        assert_eq!(human_duration(Duration::from_micros(250)), "250us");
        assert_eq!(human_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn io_reasons() {
        let e = |k| io::Error::from(k);
        assert_eq!(
            io_reason(&e(io::ErrorKind::ConnectionRefused)),
            "connect refused"
        );
        assert_eq!(
            io_reason(&e(io::ErrorKind::HostUnreachable)),
            "no route to host"
        );
        assert_eq!(
            io_reason(&e(io::ErrorKind::NetworkUnreachable)),
            "network unreachable"
        );
        let os = io::Error::from_raw_os_error;
        assert_eq!(io_reason(&os(libc::EHOSTUNREACH)), "no route to host");
        assert_eq!(io_reason(&os(libc::ENETUNREACH)), "network unreachable");
        assert_eq!(io_reason(&os(libc::ECONNREFUSED)), "connect refused");
        let other = os(libc::ECONNRESET);
        assert_eq!(io_reason(&other), other.to_string());
    }

    // ---- TCP

    #[tokio::test]
    async fn tcp_connects() {
        let listener = TcpListener::bind(LOCAL).await.unwrap();
        let o = check_once(&tcp(listener.local_addr().unwrap())).await;
        assert!(o.ok, "{o:?}");
        assert_eq!(o.reason, "connected");
        assert!(o.metrics.is_none());
    }

    #[tokio::test]
    async fn vip_check_without_its_mark_fails_at_once() {
        for kind in [
            CheckKind::Tcp,
            http("127.0.0.1:1".parse().unwrap(), "/", vec![200..=200]).kind,
        ] {
            let spec = CheckSpec {
                kind,
                addr: "127.0.0.1:1".parse().unwrap(),
                timeout: Duration::from_secs(5),
                via: Some(ViaVip {
                    vip: "127.0.0.2".parse().unwrap(),
                    dsr: crate::config::DsrConfig {
                        encap: crate::config::DsrEncap::L2,
                        source_prefix: None,
                        gue_port: 6080,
                    },
                    mark: 0,
                }),
            };
            let o = check_once(&spec).await;
            assert!(!o.ok);
            assert!(o.reason.contains("DSR check setup failed"), "{}", o.reason);
            assert!(o.latency < Duration::from_secs(1), "{:?}", o.latency);
        }
    }

    #[tokio::test]
    async fn tcp_refused() {
        let listener = TcpListener::bind(LOCAL).await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let o = check_once(&tcp(addr)).await;
        assert!(!o.ok);
        assert_eq!(o.reason, "connect refused");
    }

    // ---- HTTP

    #[tokio::test]
    async fn http_200_with_json_metrics() {
        let body = r#"{"cpu": 0.42, "conns": 7}"#;
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (addr, mut reqs) = serve(resp, Duration::ZERO).await;
        let o = check_once(&http(addr, "/health", vec![200..=200])).await;
        assert!(o.ok, "{o:?}");
        assert_eq!(o.reason, "HTTP 200");
        let m = o.metrics.expect("metrics");
        assert_eq!(m["cpu"], serde_json::json!(0.42));
        assert_eq!(m["conns"], serde_json::json!(7));

        let req = reqs.recv().await.unwrap();
        assert!(req.starts_with("GET /health HTTP/1.1\r\n"), "{req}");
        assert!(req.contains(&format!("\r\nHost: {addr}\r\n")), "{req}");
        assert!(req.contains("\r\nUser-Agent: xlb-health/0.1\r\n"), "{req}");
        assert!(req.contains("\r\nConnection: close\r\n"), "{req}");
    }

    #[tokio::test]
    async fn http_non_json_body_has_no_metrics() {
        for body in ["ok\n", "[1, 2]", "42", "{\"cpu\": "] {
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let (addr, _reqs) = serve(resp, Duration::ZERO).await;
            let o = check_once(&http(addr, "/", vec![200..=200])).await;
            assert!(o.ok, "{body}: {o:?}");
            assert!(o.metrics.is_none(), "{body}");
        }
    }

    #[tokio::test]
    async fn http_503_is_unhealthy() {
        let body = r#"{"cpu": 0.99}"#;
        let resp = format!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (addr, _reqs) = serve(resp, Duration::ZERO).await;
        let o = check_once(&http(addr, "/health", vec![200..=399])).await;
        assert!(!o.ok);
        assert_eq!(o.reason, "HTTP 503");
        // Metrics come with whatever status.
        assert_eq!(o.metrics.unwrap()["cpu"], serde_json::json!(0.99));
    }

    #[tokio::test]
    async fn http_302_ok_in_200_to_399() {
        let resp = "HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n";
        let (addr, _reqs) = serve(resp, Duration::ZERO).await;
        let o = check_once(&http(addr, "/", vec![200..=399])).await;
        assert!(o.ok, "{o:?}");
        assert_eq!(o.reason, "HTTP 302");
        let o = check_once(&http(addr, "/", vec![200..=200])).await;
        assert!(!o.ok);
        assert_eq!(o.reason, "HTTP 302");
    }

    #[tokio::test]
    async fn http_custom_success_codes() {
        let resp = "HTTP/1.1 418 I'm a teapot\r\nContent-Length: 0\r\n\r\n";
        let (addr, _reqs) = serve(resp, Duration::ZERO).await;
        let o = check_once(&http(addr, "/", vec![200..=200, 418..=418])).await;
        assert!(o.ok, "{o:?}");
        assert_eq!(o.reason, "HTTP 418");
        let o = check_once(&http(addr, "/", vec![200..=299, 500..=599])).await;
        assert!(!o.ok);
        assert_eq!(o.reason, "HTTP 418");
    }

    #[tokio::test]
    async fn http_never_answers_times_out() {
        let (addr, _reqs) = serve("", Duration::from_secs(60)).await;
        let mut spec = http(addr, "/", vec![200..=200]);
        spec.timeout = Duration::from_millis(200);
        let started = Instant::now();
        let o = check_once(&spec).await;
        assert!(!o.ok);
        assert_eq!(o.reason, "timeout after 200ms");
        assert!(o.latency >= Duration::from_millis(150), "{o:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "{o:?}");
    }

    #[tokio::test]
    async fn http_refused() {
        let listener = TcpListener::bind(LOCAL).await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let o = check_once(&http(addr, "/", vec![200..=200])).await;
        assert!(!o.ok);
        assert_eq!(o.reason, "connect refused");
    }

    #[tokio::test]
    async fn http_garbled_response() {
        let (addr, _reqs) = serve("SSH-2.0-OpenSSH_9.6\r\n\r\n", Duration::ZERO).await;
        let o = check_once(&http(addr, "/", vec![200..=200])).await;
        assert!(!o.ok);
        assert!(o.reason.starts_with("bad HTTP response: "), "{o:?}");

        let (addr, _reqs) = serve("HTTP/1.1 abc Nope\r\n\r\n", Duration::ZERO).await;
        let o = check_once(&http(addr, "/", vec![200..=200])).await;
        assert!(!o.ok);
        assert!(o.reason.starts_with("bad HTTP response: "), "{o:?}");

        let (addr, _reqs) = serve("", Duration::ZERO).await;
        let o = check_once(&http(addr, "/", vec![200..=200])).await;
        assert!(!o.ok);
        assert_eq!(
            o.reason,
            "bad HTTP response: connection closed without a response"
        );

        let (addr, _reqs) = serve("HTTP/1.1 200 OK\r\nContent-Le", Duration::ZERO).await;
        let o = check_once(&http(addr, "/", vec![200..=200])).await;
        assert_eq!(
            o.reason,
            "bad HTTP response: connection closed inside the response head"
        );

        let resp = "HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n";
        let (addr, _reqs) = serve(resp, Duration::ZERO).await;
        let o = check_once(&http(addr, "/", vec![200..=200])).await;
        assert_eq!(o.reason, "bad HTTP response: invalid Content-Length");

        let resp = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort";
        let (addr, _reqs) = serve(resp, Duration::ZERO).await;
        let o = check_once(&http(addr, "/", vec![200..=200])).await;
        assert!(!o.ok);
        assert_eq!(
            o.reason,
            "bad HTTP response: connection closed before the end of the body"
        );
    }

    #[tokio::test]
    async fn http_chunked_body() {
        let resp = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                    5;ext=1\r\n{\"cpu\r\n8\r\n\": 0.5}\n\r\n0\r\n\r\n";
        let (addr, _reqs) = serve(resp, Duration::ZERO).await;
        let o = check_once(&http(addr, "/", vec![200..=200])).await;
        assert!(o.ok, "{o:?}");
        assert_eq!(o.metrics.unwrap()["cpu"], serde_json::json!(0.5));

        let resp = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        let (addr, _reqs) = serve(resp, Duration::ZERO).await;
        let o = check_once(&http(addr, "/", vec![200..=200])).await;
        assert_eq!(o.reason, "bad HTTP response: invalid chunk size");
    }

    #[tokio::test]
    async fn http_body_until_close_and_interim_response() {
        let resp = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\n{\"load\": 3}";
        let (addr, _reqs) = serve(resp, Duration::ZERO).await;
        let o = check_once(&http(addr, "health", vec![200..=200])).await;
        assert!(o.ok, "{o:?}");
        assert_eq!(o.reason, "HTTP 200");
        assert_eq!(o.metrics.unwrap()["load"], serde_json::json!(3));
    }

    #[tokio::test]
    async fn http_large_body_is_cut() {
        let body = format!("{{\"pad\": \"{}\"}}", "x".repeat(MAX_BODY));
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (addr, _reqs) = serve(resp, Duration::ZERO).await;
        let o = check_once(&http(addr, "/", vec![200..=200])).await;
        assert!(o.ok, "{o:?}");
        assert!(o.metrics.is_none());

        let resp = format!("HTTP/1.1 200 OK\r\n\r\n{body}");
        let (addr, _reqs) = serve(resp, Duration::ZERO).await;
        let o = check_once(&http(addr, "/", vec![200..=200])).await;
        assert!(o.ok, "{o:?}");
        assert!(o.metrics.is_none());
    }

    #[tokio::test]
    async fn http_invalid_path_is_not_sent() {
        let (addr, _reqs) = serve("HTTP/1.1 200 OK\r\n\r\n", Duration::ZERO).await;
        let o = check_once(&http(addr, "/a b\r\nX: y", vec![200..=200])).await;
        assert!(!o.ok);
        assert_eq!(o.reason, "invalid health check path");
    }

    #[tokio::test]
    async fn http_endless_interim_responses_are_cut_off() {
        // A backend that streams `100 Continue` forever: the check gives up once the head
        // passes MAX_HEAD, well before its timeout, instead of buffering without end.
        let listener = TcpListener::bind(LOCAL).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sent = std::sync::Arc::new(AtomicU64::new(0));
        let sent2 = sent.clone();
        tokio::spawn(async move {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let line = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(64);
            // Bounded: at most 64 MiB, then close.
            for _ in 0..(64 << 20) / line.len() {
                if sock.write_all(&line).await.is_err() {
                    return;
                }
                sent2.fetch_add(line.len() as u64, Ordering::Relaxed);
            }
        });
        let mut spec = http(addr, "/", vec![200..=200]);
        spec.timeout = Duration::from_secs(20);
        let o = check_once(&spec).await;
        assert!(!o.ok);
        assert_eq!(
            o.reason,
            "bad HTTP response: response head larger than 16 KiB"
        );
        assert!(
            sent.load(Ordering::Relaxed) < 4 << 20,
            "the check stopped reading early"
        );
    }

    #[test]
    fn head_parser_bounds_interim_responses() {
        let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
        let fin = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        // A few interim responses, then the final one.
        let mut buf = interim.repeat(3);
        buf.extend_from_slice(fin);
        let head = parse_response_head(&buf).unwrap().unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.framing, Framing::Length(2));
        assert_eq!(&buf[head.body_start..], b"ok");
        // Incomplete: more bytes needed.
        assert_eq!(parse_response_head(&buf[..buf.len() - 10]).unwrap(), None);
        assert_eq!(parse_response_head(b"").unwrap(), None);
        // Interim responses alone, past MAX_HEAD: refused whether or not the last is whole.
        let many = interim.repeat(MAX_HEAD / interim.len() + 1);
        assert!(parse_response_head(&many).is_err());
        assert!(parse_response_head(&many[..many.len() - 3]).is_err());
        // Interim responses that fit, then a final head crossing MAX_HEAD: refused.
        let mut long = interim.repeat(MAX_HEAD / interim.len() - 1);
        long.extend_from_slice(fin);
        assert!(long.len() > MAX_HEAD);
        assert!(parse_response_head(&long).is_err());
        // Within MAX_HEAD: fine.
        let mut fits = interim.repeat(MAX_HEAD / interim.len() - 3);
        fits.extend_from_slice(fin);
        assert_eq!(parse_response_head(&fits).unwrap().unwrap().status, 200);
        // Garbage is an error, not a panic.
        assert!(parse_response_head(b"\x00\xffgarbage\r\n\r\n").is_err());
    }

    // ---- state machine

    const H: BackendState = BackendState::Healthy;
    const U: BackendState = BackendState::Unhealthy;
    const I: BackendState = BackendState::Initial;

    #[test]
    fn tracker_initial_to_healthy_after_threshold() {
        let t0 = Instant::now();
        let mut t = HealthTracker::new(t0);
        assert_eq!(
            (t.state(), t.reason(), t.since()),
            (I, "not checked yet", t0)
        );
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(t.observe(&ok_out("HTTP 200"), 3, 2, t1), None);
        assert_eq!(t.observe(&ok_out("HTTP 200"), 3, 2, t1), None);
        assert_eq!(t.state(), I);
        assert_eq!(t.reason(), "HTTP 200");
        assert_eq!(t.since(), t0);
        let t3 = t0 + Duration::from_secs(3);
        assert_eq!(t.observe(&ok_out("HTTP 204"), 3, 2, t3), Some((I, H)));
        assert_eq!((t.state(), t.reason(), t.since()), (H, "HTTP 204", t3));
    }

    #[test]
    fn tracker_initial_one_failure_is_unhealthy() {
        let t0 = Instant::now();
        let mut t = HealthTracker::new(t0);
        assert_eq!(t.observe(&ok_out("HTTP 200"), 3, 5, t0), None);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            t.observe(&fail_out("connect refused"), 3, 5, t1),
            Some((I, U))
        );
        assert_eq!(
            (t.state(), t.reason(), t.since()),
            (U, "connect refused", t1)
        );
    }

    #[test]
    fn tracker_healthy_to_unhealthy_after_threshold_with_reset() {
        let t0 = Instant::now();
        let mut t = HealthTracker::healthy(t0, "no health check");
        assert_eq!((t.state(), t.reason()), (H, "no health check"));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(t.observe(&fail_out("HTTP 503"), 2, 3, t1), None);
        assert_eq!(t.observe(&fail_out("HTTP 503"), 2, 3, t1), None);
        // A success resets the failure streak, and confirms Healthy.
        assert_eq!(t.observe(&ok_out("HTTP 200"), 2, 3, t1), None);
        assert_eq!((t.state(), t.reason(), t.fail_streak()), (H, "HTTP 200", 0));
        assert_eq!(t.observe(&fail_out("HTTP 503"), 2, 3, t1), None);
        assert_eq!(t.observe(&fail_out("HTTP 503"), 2, 3, t1), None);
        // Failures below the threshold leave state, reason and since alone.
        assert_eq!((t.state(), t.reason(), t.since()), (H, "HTTP 200", t0));
        let t2 = t0 + Duration::from_secs(2);
        assert_eq!(
            t.observe(&fail_out("timeout after 5s"), 2, 3, t2),
            Some((H, U))
        );
        assert_eq!(
            (t.state(), t.reason(), t.since()),
            (U, "timeout after 5s", t2)
        );
    }

    #[test]
    fn tracker_unhealthy_to_healthy_after_threshold_with_reset() {
        let t0 = Instant::now();
        let mut t = HealthTracker::new(t0);
        assert_eq!(
            t.observe(&fail_out("connect refused"), 2, 2, t0),
            Some((I, U))
        );
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(t.observe(&ok_out("HTTP 200"), 2, 2, t1), None);
        // Successes below the threshold leave the failure reason.
        assert_eq!(
            (t.state(), t.reason(), t.ok_streak()),
            (U, "connect refused", 1)
        );
        // A failure resets the success streak, and its reason confirms Unhealthy.
        assert_eq!(t.observe(&fail_out("HTTP 503"), 2, 2, t1), None);
        assert_eq!((t.state(), t.reason(), t.ok_streak()), (U, "HTTP 503", 0));
        assert_eq!(t.since(), t0);
        assert_eq!(t.observe(&ok_out("HTTP 200"), 2, 2, t1), None);
        let t2 = t0 + Duration::from_secs(2);
        assert_eq!(t.observe(&ok_out("HTTP 200"), 2, 2, t2), Some((U, H)));
        assert_eq!((t.state(), t.reason(), t.since()), (H, "HTTP 200", t2));
    }

    #[test]
    fn tracker_unhealthy_failures_update_reason() {
        let t0 = Instant::now();
        let mut t = HealthTracker::new(t0);
        t.observe(&fail_out("connect refused"), 2, 2, t0);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(t.observe(&fail_out("timeout after 200ms"), 2, 2, t1), None);
        assert_eq!(
            (t.state(), t.reason(), t.since()),
            (U, "timeout after 200ms", t0)
        );
    }

    #[test]
    fn tracker_thresholds_of_one() {
        let t0 = Instant::now();
        let mut t = HealthTracker::new(t0);
        assert_eq!(t.observe(&ok_out("connected"), 1, 1, t0), Some((I, H)));
        assert_eq!(t.observe(&ok_out("connected"), 1, 1, t0), None);
        assert_eq!(
            t.observe(&fail_out("connect refused"), 1, 1, t0),
            Some((H, U))
        );
        assert_eq!(t.observe(&fail_out("connect refused"), 1, 1, t0), None);
        assert_eq!(t.observe(&ok_out("connected"), 1, 1, t0), Some((U, H)));
        // Zero is taken as one.
        assert_eq!(
            t.observe(&fail_out("connect refused"), 0, 0, t0),
            Some((H, U))
        );
        assert_eq!(t.observe(&ok_out("connected"), 0, 0, t0), Some((U, H)));
    }

    // ---- scheduler

    #[test]
    fn jitter_in_range() {
        let max = Duration::from_millis(500);
        let draws: Vec<_> = (0..1000).map(|_| jitter(max)).collect();
        assert!(draws.iter().all(|d| *d < max));
        // Not all the same (spreads the herd).
        assert!(draws.iter().any(|d| *d != draws[0]));
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }

    /// A target group with hundreds of backends: every one is checked, each on its own
    /// schedule, with no check waiting for another.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hundreds_of_backends_are_all_checked() {
        let (addr, _r) = serve(
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            Duration::ZERO,
        )
        .await;
        let (tx, mut rx) = mpsc::channel(1024);
        let handles: Vec<_> = (0..300u32)
            .map(|i| {
                let spec = http(addr, "/", vec![200..=299]);
                spawn_checker(i, spec, Duration::from_millis(200), tx.clone())
            })
            .collect();
        drop(tx);
        let mut seen = std::collections::HashSet::new();
        let deadline = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(deadline);
        while seen.len() < 300 {
            tokio::select! {
                _ = &mut deadline => break,
                Some((i, o)) = rx.recv() => {
                    assert!(o.ok, "{o:?}");
                    seen.insert(i);
                }
            }
        }
        assert_eq!(seen.len(), 300, "every backend was checked");
        drop(handles);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_backend_does_not_delay_fast_one() {
        let (fast, _r1) = serve(
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            Duration::ZERO,
        )
        .await;
        let (slow, _r2) = serve("HTTP/1.1 200 OK\r\n\r\n", Duration::from_secs(30)).await;
        let (tx, mut rx) = mpsc::channel(64);
        let interval = Duration::from_millis(50);
        let mut fast_spec = http(fast, "/", vec![200..=200]);
        fast_spec.timeout = Duration::from_millis(400);
        let mut slow_spec = http(slow, "/", vec![200..=200]);
        slow_spec.timeout = Duration::from_millis(400);
        let _h1 = spawn_checker("fast", fast_spec, interval, tx.clone());
        let _h2 = spawn_checker("slow", slow_spec, interval, tx);

        let mut counts: HashMap<&str, Vec<CheckOutcome>> = HashMap::new();
        let window = tokio::time::sleep(Duration::from_millis(600));
        tokio::pin!(window);
        loop {
            tokio::select! {
                _ = &mut window => break,
                Some((token, o)) = rx.recv() => counts.entry(token).or_default().push(o),
            }
        }
        let fast_n = counts.get("fast").map_or(0, Vec::len);
        let slow = counts.get("slow").cloned().unwrap_or_default();
        // Ideal: ~12 fast outcomes and 1 slow one; serialised checks would give ~2 fast.
        assert!(fast_n >= 5, "fast got {fast_n}: {counts:?}");
        assert!(slow.len() <= 2, "slow got {}: {slow:?}", slow.len());
        for o in &slow {
            assert_eq!(o.reason, "timeout after 400ms");
        }
        assert!(counts["fast"].iter().all(|o| o.ok));
    }

    #[tokio::test]
    async fn dropping_handle_stops_outcomes() {
        let (addr, _reqs) = serve(
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            Duration::ZERO,
        )
        .await;
        let (tx, mut rx) = mpsc::channel(4);
        let handle = spawn_checker(
            1u32,
            http(addr, "/", vec![200..=200]),
            Duration::from_millis(20),
            tx,
        );
        for _ in 0..2 {
            let (token, o) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("an outcome")
                .expect("open channel");
            assert_eq!(token, 1);
            assert!(o.ok, "{o:?}");
        }
        drop(handle);
        // The aborted task drops its sender: after what was already queued, the channel closes.
        let drained = tokio::time::timeout(Duration::from_secs(5), async {
            let mut n = 0;
            while rx.recv().await.is_some() {
                n += 1;
            }
            n
        })
        .await
        .expect("the checker stopped sending");
        assert!(drained <= 5, "{drained}");
    }

    #[tokio::test]
    async fn receiver_gone_ends_task() {
        let listener = TcpListener::bind(LOCAL).await.unwrap();
        let (tx, rx) = mpsc::channel::<((), CheckOutcome)>(1);
        // A long interval: the task must notice the closed channel while waiting.
        let handle = spawn_checker(
            (),
            tcp(listener.local_addr().unwrap()),
            Duration::from_secs(3600),
            tx,
        );
        drop(rx);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !handle.is_finished() {
            assert!(Instant::now() < deadline, "checker still running");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn parse_http_response_without_a_socket() {
        let resp: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\
                            Transfer-Encoding: chunked\r\n\r\n5\r\n{\"cpu\r\n5\r\n\": 1}\r\n0\r\n\r\n";
        let (status, metrics) = parse_http_response(&[resp]).unwrap();
        assert_eq!(status, 200);
        assert_eq!(metrics.unwrap()["cpu"], serde_json::json!(1));
        // Byte by byte: the same answer.
        let bytes: Vec<&[u8]> = resp.chunks(1).collect();
        assert_eq!(parse_http_response(&bytes), parse_http_response(&[resp]));
        assert_eq!(
            parse_http_response(&[b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"]),
            Ok((503, None))
        );
        assert_eq!(
            parse_http_response(&[]),
            Err("bad HTTP response: connection closed without a response".into())
        );
    }
}
