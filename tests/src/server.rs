//! The lab servers behind `xlb-lab serve` (tokio): on every port they answer with the server's
//! name, so a client sees which backend served it. Dual-stack (`[::]`, IPV6_V6ONLY off); they
//! log nothing per request.
//!
//! - HTTP/1.1: `GET /` → `200 NAME\n`; `GET /health` → `200 ok\n`, or `503 fail\n` after
//!   `POST /health/fail` (until `POST /health/ok`); anything else → 404. Keep-alive unless the
//!   client says `Connection: close` (or speaks HTTP/1.0 without keep-alive).
//! - UDP: any datagram → `NAME\n` back to its sender.
//! - Echo: TCP, every byte is sent back until the peer closes.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use nix::errno::Errno;
use nix::sys::socket::{
    bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    SockaddrStorage,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// What to serve.
#[derive(Clone, Debug, Default)]
pub struct ServeConfig {
    /// The name every answer carries (the lab uses `b1`, `b2`, ...).
    pub name: String,
    /// HTTP ports (0 = any free port).
    pub http: Vec<u16>,
    pub udp: Vec<u16>,
    pub echo: Vec<u16>,
    /// UDP sockets bound to one address (a DSR backend answers from the VIP it was asked on:
    /// a socket on the wildcard address would answer from the route's source instead).
    pub udp_bind: Vec<SocketAddr>,
}

/// The addresses actually bound, in the order of the config's ports.
#[derive(Clone, Debug, Default)]
pub struct Bound {
    pub http: Vec<SocketAddr>,
    pub udp: Vec<SocketAddr>,
    pub echo: Vec<SocketAddr>,
}

/// Longest wait for the next request on a kept-alive HTTP connection.
const HTTP_IDLE: Duration = Duration::from_secs(60);
/// Largest request head or body accepted.
const HTTP_MAX: usize = 64 * 1024;

struct State {
    name: String,
    healthy: AtomicBool,
}

/// Binds every port and spawns the servers on the current tokio runtime.
pub async fn start(cfg: &ServeConfig) -> Result<Bound> {
    let state = Arc::new(State {
        name: cfg.name.clone(),
        healthy: AtomicBool::new(true),
    });
    let mut bound = Bound::default();
    for &port in &cfg.http {
        let l = tcp_listener(port).with_context(|| format!("HTTP port {port}"))?;
        bound.http.push(l.local_addr()?);
        tokio::spawn(accept_loop(l, state.clone(), http_conn));
    }
    for &port in &cfg.echo {
        let l = tcp_listener(port).with_context(|| format!("echo port {port}"))?;
        bound.echo.push(l.local_addr()?);
        tokio::spawn(accept_loop(l, state.clone(), |s, _| echo_conn(s)));
    }
    for &port in &cfg.udp {
        let fd = dual_stack_socket(SockType::Datagram, port)
            .with_context(|| format!("UDP port {port}"))?;
        let sock = UdpSocket::from_std(std::net::UdpSocket::from(fd))?;
        bound.udp.push(sock.local_addr()?);
        tokio::spawn(udp_loop(sock, state.clone()));
    }
    for &addr in &cfg.udp_bind {
        let std = std::net::UdpSocket::bind(addr).with_context(|| format!("UDP {addr}"))?;
        std.set_nonblocking(true)?;
        let sock = UdpSocket::from_std(std)?;
        bound.udp.push(sock.local_addr()?);
        tokio::spawn(udp_loop(sock, state.clone()));
    }
    Ok(bound)
}

/// Runs the servers until the process is killed (what `xlb-lab serve` does).
pub fn run(cfg: &ServeConfig) -> Result<()> {
    ensure!(
        !(cfg.http.is_empty()
            && cfg.udp.is_empty()
            && cfg.echo.is_empty()
            && cfg.udp_bind.is_empty()),
        "nothing to serve: give --http, --udp or --echo ports"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        start(cfg).await?;
        std::future::pending::<()>().await;
        Ok(())
    })
}

/// A socket bound to `[::]:port` taking IPv4 too (IPV6_V6ONLY off), or to `0.0.0.0:port` where
/// IPv6 is unavailable; non-blocking, SO_REUSEADDR.
fn dual_stack_socket(ty: SockType, port: u16) -> Result<OwnedFd> {
    let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
    let (fd, addr) = match socket(AddressFamily::Inet6, ty, flags, None) {
        Ok(fd) => {
            setsockopt(&fd, sockopt::Ipv6V6Only, &false)?;
            (fd, SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
        }
        Err(Errno::EAFNOSUPPORT) => (
            socket(AddressFamily::Inet, ty, flags, None)?,
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
        ),
        Err(e) => return Err(e.into()),
    };
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr)).with_context(|| format!("bind {addr}"))?;
    Ok(fd)
}

fn tcp_listener(port: u16) -> Result<TcpListener> {
    let fd = dual_stack_socket(SockType::Stream, port)?;
    listen(&fd, Backlog::new(4096).unwrap_or(Backlog::MAXCONN))?;
    Ok(TcpListener::from_std(std::net::TcpListener::from(fd))?)
}

async fn accept_loop<F, Fut>(l: TcpListener, state: Arc<State>, handle: F)
where
    F: Fn(TcpStream, Arc<State>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        match l.accept().await {
            Ok((s, _)) => {
                let _ = s.set_nodelay(true);
                tokio::spawn(handle(s, state.clone()));
            }
            // Out of fds or the like: back off briefly instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn echo_conn(mut s: TcpStream) {
    let (mut r, mut w) = s.split();
    if tokio::io::copy(&mut r, &mut w).await.is_ok() {
        let _ = w.shutdown().await;
    }
}

async fn udp_loop(sock: UdpSocket, state: Arc<State>) {
    let reply = format!("{}\n", state.name);
    let mut buf = vec![0u8; 65536];
    loop {
        if let Ok((_, peer)) = sock.recv_from(&mut buf).await {
            let _ = sock.send_to(reply.as_bytes(), peer).await;
        }
    }
}

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    method: String,
    path: String,
    content_length: usize,
    keep_alive: bool,
}

fn parse_head(head: &str) -> Option<Head> {
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path, version) = (first.next()?, first.next()?, first.next()?);
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let mut content_length = 0;
    let mut connection = String::new();
    for line in lines {
        let (k, v) = line.split_once(':')?;
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            content_length = v.parse().ok()?;
        } else if k.eq_ignore_ascii_case("connection") {
            connection = v.to_ascii_lowercase();
        }
    }
    let keep_alive = if version == "HTTP/1.0" {
        connection.contains("keep-alive")
    } else {
        !connection.contains("close")
    };
    Some(Head {
        method: method.to_owned(),
        path: path.to_owned(),
        content_length,
        keep_alive,
    })
}

fn route(head: &Head, state: &State) -> (&'static str, String) {
    let ok = || ("200 OK", "ok\n".to_owned());
    match (head.method.as_str(), head.path.as_str()) {
        ("GET", "/") => ("200 OK", format!("{}\n", state.name)),
        ("GET", "/health") => {
            if state.healthy.load(Ordering::Relaxed) {
                ok()
            } else {
                ("503 Service Unavailable", "fail\n".to_owned())
            }
        }
        ("POST", "/health/fail") => {
            state.healthy.store(false, Ordering::Relaxed);
            ok()
        }
        ("POST", "/health/ok") => {
            state.healthy.store(true, Ordering::Relaxed);
            ok()
        }
        (_, "/" | "/health" | "/health/fail" | "/health/ok") => {
            ("405 Method Not Allowed", "method not allowed\n".to_owned())
        }
        _ => ("404 Not Found", "not found\n".to_owned()),
    }
}

async fn http_conn(mut s: TcpStream, state: Arc<State>) {
    let mut buf: Vec<u8> = Vec::with_capacity(2048);
    loop {
        // Request head.
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if buf.len() > HTTP_MAX || !read_more(&mut s, &mut buf).await {
                return;
            }
        };
        let head = std::str::from_utf8(&buf[..end]).ok().and_then(parse_head);
        let Some(head) = head.filter(|h| h.content_length <= HTTP_MAX) else {
            let _ = s
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 12\r\nConnection: close\r\n\r\nbad request\n",
                )
                .await;
            let _ = s.shutdown().await;
            return;
        };
        // Body (ignored).
        let total = end + 4 + head.content_length;
        while buf.len() < total {
            if !read_more(&mut s, &mut buf).await {
                return;
            }
        }
        buf.drain(..total);

        let (status, body) = route(&head, &state);
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{body}",
            body.len(),
            if head.keep_alive { "keep-alive" } else { "close" },
        );
        if s.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
        if !head.keep_alive {
            let _ = s.shutdown().await;
            return;
        }
    }
}

/// Reads more into `buf`; false on EOF, error or idle timeout.
async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    matches!(
        tokio::time::timeout(HTTP_IDLE, s.read_buf(buf)).await,
        Ok(Ok(n)) if n > 0
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client;

    #[test]
    fn parses_heads() {
        let h = parse_head("GET / HTTP/1.1\r\nHost: x\r\nConnection: close").unwrap();
        assert_eq!(
            h,
            Head {
                method: "GET".into(),
                path: "/".into(),
                content_length: 0,
                keep_alive: false
            }
        );
        let h = parse_head("POST /health/fail HTTP/1.1\r\ncontent-length: 3").unwrap();
        assert!(h.keep_alive);
        assert_eq!(h.content_length, 3);
        assert!(!parse_head("GET / HTTP/1.0").unwrap().keep_alive);
        assert!(parse_head("GET /").is_none());
        assert!(parse_head("GET / SPDY/3").is_none());
    }

    /// The servers and the clients against each other on loopback (no root needed).
    #[test]
    fn serves_loopback() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let cfg = ServeConfig {
            name: "bx".into(),
            http: vec![0],
            udp: vec![0],
            echo: vec![0],
            udp_bind: vec![],
        };
        let bound = rt.block_on(start(&cfg)).unwrap();
        let t = Duration::from_secs(5);
        for ip in ["127.0.0.1", "::1"] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            let at = |a: &SocketAddr| SocketAddr::new(ip, a.port());
            let (http, udp, echo) = (at(&bound.http[0]), at(&bound.udp[0]), at(&bound.echo[0]));
            assert_eq!(client::http_get(http, t).unwrap(), "bx");
            assert_eq!(client::udp_request(udp, t).unwrap(), "bx");
            let n = client::echo_stream(echo, Duration::from_millis(200), 1000).unwrap();
            assert!(n >= 1000, "{n}");
            let req = client::Request::Http(http);
            let counts = client::spread(&[req, client::Request::Udp(udp)], 20, t).unwrap();
            assert_eq!(counts.get("bx"), Some(&20));
        }
        let http = bound.http[0];
        let health = |_: ()| {
            client::http_request(http, "GET", "/health", None, t)
                .unwrap()
                .status
        };
        assert_eq!(health(()), 200);
        assert_eq!(
            client::http_post(http, "/health/fail", t).unwrap().status,
            200
        );
        assert_eq!(health(()), 503);
        assert_eq!(
            client::http_post(http, "/health/ok", t).unwrap().status,
            200
        );
        assert_eq!(health(()), 200);
        let nf = client::http_request(http, "GET", "/nope", None, t).unwrap();
        assert_eq!(nf.status, 404);

        // Explicit source ports, reused at once (the server closes first).
        let src = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        for _ in 0..3 {
            assert_eq!(client::http_get_from(http, src, t).unwrap(), "bx");
        }

        // Keep-alive: several requests on one connection.
        let mut s = std::net::TcpStream::connect(http).unwrap();
        s.set_read_timeout(Some(t)).unwrap();
        use std::io::{Read, Write};
        for _ in 0..3 {
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).unwrap();
            let text = String::from_utf8_lossy(&buf[..n]);
            assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
            assert!(text.ends_with("\r\n\r\nbx\n"), "{text}");
        }
    }
}
