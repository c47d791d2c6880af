//! Request/response latency over long-lived connections at a fixed rate: HTTP/1.1 keep-alive
//! `GET /` on each connection, one request outstanding per connection, into an HDR histogram.
//!
//! Every connection sends at `rate / connections` per second, the connections staggered over
//! one interval. The latency of a request is the time from writing it to having read the whole
//! response (head and `Content-Length` body). It is measured from the actual send, not the
//! scheduled one: at these rates nothing queues in the client (a request that could not be
//! sent on time is counted as `late`), and it keeps the client's own wake-up delays out of
//! the comparison of the paths.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;

use super::pace::sleep_until;
use super::{histogram, record, Summary};

#[derive(Clone, Debug)]
pub struct LatencyTest {
    /// Connection `i` goes to `targets[i % len]`.
    pub targets: Vec<SocketAddr>,
    pub connections: usize,
    /// Requests per second, over all connections.
    pub rate: f64,
    pub duration: Duration,
    /// Requests per connection sent before measuring (not recorded).
    pub warmup: usize,
    pub timeout: Duration,
    /// Local address to connect from (default: the kernel's choice).
    pub source: Option<std::net::IpAddr>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct LatencyResult {
    pub requests: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Requests sent more than one interval after their scheduled time.
    pub late: u64,
    pub achieved_rate: f64,
    pub latency: Summary,
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";

/// Length of the complete response at the start of `buf` (head + `Content-Length` body), or
/// `None` if more is needed. A response without `Content-Length` ends with its head.
pub fn response_len(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let body = head
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (buf.len() >= head_end + body).then_some(head_end + body)
}

struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(
        target: SocketAddr,
        source: Option<std::net::IpAddr>,
        timeout: Duration,
    ) -> Result<Conn> {
        let s = super::tcp::connect(target, source, timeout).context("connect")?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(Conn {
            s,
            buf: Vec::with_capacity(1024),
        })
    }

    /// One request and its whole response.
    fn exchange(&mut self) -> Result<()> {
        self.s.write_all(REQUEST).context("write")?;
        let mut chunk = [0u8; 2048];
        loop {
            if let Some(n) = response_len(&self.buf) {
                ensure!(self.buf.starts_with(b"HTTP/1.1 200"), "bad response");
                self.buf.drain(..n);
                return Ok(());
            }
            match self.s.read(&mut chunk) {
                Ok(0) => bail!("connection closed"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    bail!("timeout")
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("read"),
            }
            ensure!(self.buf.len() < 64 * 1024, "response too long");
        }
    }
}

/// Runs the test from the calling thread (inside the client's namespace).
pub fn run(cfg: &LatencyTest) -> Result<LatencyResult> {
    ensure!(!cfg.targets.is_empty(), "no targets");
    ensure!(
        cfg.connections > 0 && cfg.connections <= 256,
        "connections must be 1..=256"
    );
    ensure!(cfg.rate > 0.0, "rate must be > 0");
    let per_conn = cfg.rate / cfg.connections as f64;
    let interval = Duration::from_secs_f64(1.0 / per_conn);
    let per_conn_total = (per_conn * cfg.duration.as_secs_f64()).round() as u64;

    // Connect and warm up first, so that the measured part starts with every path warm.
    let mut conns = Vec::with_capacity(cfg.connections);
    for i in 0..cfg.connections {
        let target = cfg.targets[i % cfg.targets.len()];
        let mut c =
            Conn::open(target, cfg.source, cfg.timeout).with_context(|| format!("to {target}"))?;
        for _ in 0..cfg.warmup {
            c.exchange()
                .with_context(|| format!("warm-up to {target}"))?;
        }
        conns.push((target, c));
    }

    let hist = Mutex::new(histogram());
    let out = Mutex::new(LatencyResult::default());
    let start = Instant::now() + Duration::from_millis(10);
    let deadline = start + cfg.duration + Duration::from_secs(2);
    std::thread::scope(|s| {
        for (i, (target, conn)) in conns.into_iter().enumerate() {
            let offset = interval.mul_f64(i as f64 / cfg.connections as f64);
            let (hist, out) = (&hist, &out);
            s.spawn(move || {
                super::tight_timer_slack();
                let mut h = histogram();
                let (mut n, mut errors, mut late) = (0u64, 0u64, 0u64);
                let mut first_error = None;
                let mut conn = Some(conn);
                for k in 0..per_conn_total {
                    let at = start + offset + interval.mul_f64(k as f64);
                    if at >= deadline {
                        break;
                    }
                    sleep_until(at);
                    let t0 = Instant::now();
                    if t0 > at + interval {
                        late += 1;
                    }
                    let mut c = match conn.take() {
                        Some(c) => c,
                        None => match Conn::open(target, cfg.source, cfg.timeout) {
                            Ok(c) => c,
                            Err(e) => {
                                errors += 1;
                                first_error.get_or_insert_with(|| format!("{e:#}"));
                                continue;
                            }
                        },
                    };
                    match c.exchange() {
                        Ok(()) => {
                            record(&mut h, t0.elapsed().as_nanos() as u64);
                            n += 1;
                            conn = Some(c);
                        }
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                }
                hist.lock().unwrap().add(&h).expect("same histogram bounds");
                let mut o = out.lock().unwrap();
                o.requests += n;
                o.errors += errors;
                o.late += late;
                if o.first_error.is_none() {
                    o.first_error = first_error;
                }
            });
        }
    });
    let mut res = out.into_inner().unwrap();
    res.latency = Summary::of(&hist.into_inner().unwrap());
    res.achieved_rate = res.requests as f64 / cfg.duration.as_secs_f64();
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn response_length() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ncontent-length: 3\r\n\r\nb1\n";
        assert_eq!(response_len(r), Some(r.len()));
        assert_eq!(response_len(&r[..r.len() - 1]), None);
        assert_eq!(response_len(&r[..20]), None);
        let mut two = r.to_vec();
        two.extend_from_slice(r);
        assert_eq!(response_len(&two), Some(r.len()));
        assert_eq!(
            response_len(b"HTTP/1.1 204 No Content\r\n\r\n"),
            Some(27),
            "no body"
        );
    }

    /// A keep-alive HTTP server on loopback.
    fn serve() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 512];
                    loop {
                        while let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..i + 4);
                            let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbx\n";
                            if s.write_all(resp).is_err() {
                                return;
                            }
                        }
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn fixed_rate_on_loopback() {
        let addr = serve();
        let r = run(&LatencyTest {
            targets: vec![addr],
            connections: 2,
            rate: 200.0,
            duration: Duration::from_millis(300),
            warmup: 3,
            timeout: Duration::from_secs(2),
            source: None,
        })
        .unwrap();
        assert_eq!(r.errors, 0, "{r:?}");
        assert_eq!(r.requests, 60, "{r:?}");
        assert_eq!(r.latency.count, 60);
        assert!(
            r.latency.p50_ns > 0 && r.latency.p50_ns < 50_000_000,
            "{r:?}"
        );
    }
}
