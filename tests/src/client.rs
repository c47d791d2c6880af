//! Blocking clients for the lab servers, on plain std sockets. Use them inside
//! [`Netns::enter`](crate::Netns::enter) to talk from a lab namespace. Every call is bounded by
//! its timeout.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use nix::errno::Errno;
use nix::sys::socket::{
    bind, connect as sys_connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType,
    SockaddrStorage,
};

/// Largest HTTP response read.
const MAX_RESPONSE: usize = 1 << 20;

/// A TCP connection to `addr` within `timeout`, from local port `src_port` if given (bound
/// first, with SO_REUSEADDR) or else an ephemeral one.
pub fn connect(addr: SocketAddr, src_port: Option<u16>, timeout: Duration) -> Result<TcpStream> {
    let Some(port) = src_port else {
        return TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connect to {addr}"));
    };
    let fd = socket(family(addr), SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    let local = SocketAddr::new(unspecified(addr), port);
    bind(fd.as_raw_fd(), &SockaddrStorage::from(local)).with_context(|| format!("bind {local}"))?;
    let stream = TcpStream::from(fd);
    // A blocking connect gives up after SO_SNDTIMEO (with EINPROGRESS).
    stream.set_write_timeout(Some(timeout))?;
    match sys_connect(stream.as_raw_fd(), &SockaddrStorage::from(addr)) {
        Ok(()) => Ok(stream),
        Err(Errno::EINPROGRESS) => bail!("connect to {addr} from port {port}: timed out"),
        Err(e) => Err(e).with_context(|| format!("connect to {addr} from port {port}")),
    }
}

fn family(addr: SocketAddr) -> AddressFamily {
    match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn unspecified(addr: SocketAddr) -> IpAddr {
    match addr {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    }
}

/// Status and body of an HTTP response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// One HTTP/1.1 request (`Connection: close`) on a new connection; reads the response until the
/// server closes, all within `timeout`.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    src_port: Option<u16>,
    timeout: Duration,
) -> Result<HttpResponse> {
    let deadline = Instant::now() + timeout;
    let what = || format!("HTTP {method} http://{addr}{path}");
    let mut s = connect(addr, src_port, timeout).with_context(what)?;
    s.set_write_timeout(Some(remaining(deadline).with_context(what)?))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .with_context(what)?;
    // Read to EOF: the server closes first, so this side leaves no TIME_WAIT behind and the
    // same source port can be used again at once.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        s.set_read_timeout(Some(remaining(deadline).with_context(what)?))?;
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                bail!("{}: timed out after {timeout:?}", what())
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(what),
        }
        ensure!(buf.len() <= MAX_RESPONSE, "{}: response too large", what());
    }
    parse_response(&buf).with_context(what)
}

fn remaining(deadline: Instant) -> Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    ensure!(!left.is_zero(), "timed out");
    Ok(left)
}

fn parse_response(buf: &[u8]) -> Result<HttpResponse> {
    let end = find(buf, b"\r\n\r\n").ok_or_else(|| {
        anyhow!(
            "incomplete response ({} bytes): {:?}",
            buf.len(),
            String::from_utf8_lossy(buf)
        )
    })?;
    let head = std::str::from_utf8(&buf[..end]).context("response head is not UTF-8")?;
    let body = &buf[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.trim().parse::<usize>())
        .transpose()
        .context("bad Content-Length")?;
    if let Some(len) = length {
        ensure!(
            body.len() == len,
            "body has {} bytes, Content-Length says {len}",
            body.len()
        );
    }
    Ok(HttpResponse {
        status,
        body: String::from_utf8_lossy(body).into_owned(),
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn expect_ok(resp: HttpResponse) -> Result<String> {
    ensure!(
        resp.status == 200,
        "HTTP status {}: {}",
        resp.status,
        resp.body.trim()
    );
    Ok(resp.body.trim().to_owned())
}

/// `GET /` on a new connection; the body trimmed (a lab server answers with its name).
/// Fails unless the status is 200.
pub fn http_get(addr: SocketAddr, timeout: Duration) -> Result<String> {
    expect_ok(http_request(addr, "GET", "/", None, timeout)?)
}

/// [`http_get`] from local port `src_port`.
pub fn http_get_from(addr: SocketAddr, src_port: u16, timeout: Duration) -> Result<String> {
    expect_ok(http_request(addr, "GET", "/", Some(src_port), timeout)?)
}

/// `POST path` (e.g. `/health/fail`, `/health/ok` on a lab server).
pub fn http_post(addr: SocketAddr, path: &str, timeout: Duration) -> Result<HttpResponse> {
    http_request(addr, "POST", path, None, timeout)
}

/// One datagram to `addr` and its answer, trimmed (a lab server answers with its name).
pub fn udp_request(addr: SocketAddr, timeout: Duration) -> Result<String> {
    udp_request_inner(addr, 0, timeout)
}

/// [`udp_request`] from local port `src_port`.
pub fn udp_request_from(addr: SocketAddr, src_port: u16, timeout: Duration) -> Result<String> {
    udp_request_inner(addr, src_port, timeout)
}

fn udp_request_inner(addr: SocketAddr, src_port: u16, timeout: Duration) -> Result<String> {
    let what = || format!("UDP request to {addr}");
    let s = UdpSocket::bind(SocketAddr::new(unspecified(addr), src_port)).with_context(what)?;
    s.connect(addr).with_context(what)?;
    s.set_read_timeout(Some(timeout))?;
    s.send(b"xlb-lab\n").with_context(what)?;
    let mut buf = [0u8; 2048];
    match s.recv(&mut buf) {
        Ok(n) => Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned()),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            bail!("{}: no answer within {timeout:?}", what())
        }
        Err(e) => Err(e).with_context(what),
    }
}

/// Byte `i` of the stream [`echo_stream`] sends.
pub fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

/// Streams a deterministic byte pattern to an echo server for `duration`, in writes of `chunk`
/// bytes, while reading the echo concurrently; checks every byte and that all came back.
/// Returns the number of bytes verified. A stall of 5 s either way is an error.
pub fn echo_stream(addr: SocketAddr, duration: Duration, chunk: usize) -> Result<u64> {
    ensure!(chunk > 0, "chunk must be > 0");
    let stall = Duration::from_secs(5);
    let stream = connect(addr, None, stall)?;
    stream.set_write_timeout(Some(stall))?;
    stream.set_read_timeout(Some(stall))?;
    let mut reader = stream.try_clone()?;
    let mut writer = stream;
    std::thread::scope(|s| {
        let read = s.spawn(move || -> Result<u64> {
            let mut buf = vec![0u8; 64 * 1024];
            let mut pos = 0u64;
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => return Ok(pos),
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e).context(format!("reading the echo at byte {pos}")),
                };
                for (k, &b) in buf[..n].iter().enumerate() {
                    let at = pos + k as u64;
                    if b != pattern_byte(at) {
                        let _ = reader.shutdown(Shutdown::Both);
                        bail!(
                            "echo mismatch at byte {at}: got {b:#04x}, sent {:#04x}",
                            pattern_byte(at)
                        );
                    }
                }
                pos += n as u64;
            }
        });
        let sent = (|| -> Result<u64> {
            let start = Instant::now();
            let mut buf = vec![0u8; chunk];
            let mut pos = 0u64;
            while start.elapsed() < duration {
                for (k, b) in buf.iter_mut().enumerate() {
                    *b = pattern_byte(pos + k as u64);
                }
                writer
                    .write_all(&buf)
                    .with_context(|| format!("writing at byte {pos}"))?;
                pos += chunk as u64;
            }
            writer.shutdown(Shutdown::Write)?;
            Ok(pos)
        })();
        if sent.is_err() {
            let _ = writer.shutdown(Shutdown::Both);
        }
        let got = read.join().expect("echo reader panicked");
        let sent = sent.with_context(|| format!("echo stream to {addr}"))?;
        let got = got.with_context(|| format!("echo stream to {addr}"))?;
        ensure!(
            got == sent,
            "echo stream to {addr}: sent {sent} bytes, {got} came back"
        );
        Ok(got)
    })
}

/// A request to a lab service; its answer names the backend that served it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// `GET /` over HTTP.
    Http(SocketAddr),
    /// One UDP datagram.
    Udp(SocketAddr),
}

impl Request {
    /// Sends it on a new connection/socket; the answer (backend name).
    pub fn send(&self, timeout: Duration) -> Result<String> {
        match *self {
            Request::Http(a) => http_get(a, timeout),
            Request::Udp(a) => udp_request(a, timeout),
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Http(a) => write!(f, "http://{a}/"),
            Request::Udp(a) => write!(f, "udp://{a}"),
        }
    }
}

/// Answers counted per backend name, plus failures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub counts: BTreeMap<String, usize>,
    pub failures: usize,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

impl Tally {
    pub fn successes(&self) -> usize {
        self.counts.values().sum()
    }
}

/// Sends `n` requests, cycling through `targets`, each on a new connection (so from a new
/// source port); counts answers by backend name and failures. Takes at most `n * timeout`.
pub fn tally(targets: &[Request], n: usize, timeout: Duration) -> Tally {
    let mut t = Tally::default();
    for req in targets.iter().cycle().take(n) {
        match req.send(timeout) {
            Ok(name) => *t.counts.entry(name).or_default() += 1,
            Err(e) => {
                t.failures += 1;
                t.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    t
}

/// [`tally`] that fails if any request failed: backend name → count.
pub fn spread(targets: &[Request], n: usize, timeout: Duration) -> Result<BTreeMap<String, usize>> {
    ensure!(!targets.is_empty() || n == 0, "spread: no targets");
    let t = tally(targets, n, timeout);
    if let Some(e) = t.first_error {
        bail!("{} of {n} requests failed, first: {e}", t.failures);
    }
    Ok(t.counts)
}
