//! TCP connection-rate client: each connection connects, sends one small HTTP request
//! (`Connection: close`), reads the answer to the end and closes. Many run concurrently, on a
//! pool of worker threads, either at a fixed rate (open loop: connection `k` starts `k / rate`
//! after the start) or as fast as the workers go (closed loop).

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;

use super::pace::{sleep_until, Schedule};
use super::{histogram, record, Summary};

/// What to run.
#[derive(Clone, Debug)]
pub struct ConnTest {
    /// Connection `k` goes to `targets[k % len]`.
    pub targets: Vec<SocketAddr>,
    /// Connections per second; `None`: as fast as the workers go.
    pub rate: Option<f64>,
    pub duration: Duration,
    /// Concurrent connections at most (worker threads).
    pub workers: usize,
    /// Per-connection timeout (connect, and the whole exchange).
    pub timeout: Duration,
    /// Local address to connect from (default: the kernel's choice).
    pub source: Option<IpAddr>,
}

/// What happened.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConnResult {
    pub attempted: u64,
    pub ok: u64,
    pub failed: u64,
    /// Failures by kind ("connect: Connection refused", "timeout", ...).
    pub failures: BTreeMap<String, u64>,
    pub elapsed_s: f64,
    /// Successful connections per second over the run.
    pub conn_per_s: f64,
    /// Connections that started more than 10 ms after their scheduled time (fixed rate).
    pub late: u64,
    /// Connect to close, per successful connection.
    pub time: Summary,
    /// Which answer each backend gave ("b1", ...), from the response bodies.
    pub answers: BTreeMap<String, u64>,
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";

/// One connection: the backend's answer (response body, trimmed).
fn one(target: SocketAddr, source: Option<IpAddr>, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    let mut s = connect(target, source, timeout).context("connect")?;
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(REQUEST).context("write")?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("timeout");
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                bail!("timeout")
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("read"),
        }
        ensure!(buf.len() < 64 * 1024, "response too long");
    }
    ensure!(buf.starts_with(b"HTTP/1.1 200"), "bad response");
    let body = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| String::from_utf8_lossy(&buf[i + 4..]).trim().to_owned())
        .unwrap_or_default();
    Ok(body)
}

/// A TCP connection to `to` from `source` (any port), within `timeout`.
pub fn connect(
    to: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let Some(src) = source else {
        return TcpStream::connect_timeout(&to, timeout);
    };
    use nix::sys::socket::{
        self as so, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage,
    };
    let fam = if to.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = so::socket(fam, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    // Pick the port at connect time, by the whole 4-tuple.
    let one: libc::c_int = 1;
    // SAFETY: a valid fd and option value.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    so::bind(
        fd.as_raw_fd(),
        &SockaddrStorage::from(SocketAddr::new(src, 0)),
    )?;
    let s = TcpStream::from(fd);
    // A blocking connect gives up after SO_SNDTIMEO.
    so::setsockopt(
        &s,
        sockopt::SendTimeout,
        &nix::sys::time::TimeVal::new(timeout.as_secs() as _, timeout.subsec_micros() as _),
    )?;
    match so::connect(s.as_raw_fd(), &SockaddrStorage::from(to)) {
        Ok(()) => Ok(s),
        Err(nix::errno::Errno::EINPROGRESS) => Err(std::io::Error::new(
            ErrorKind::TimedOut,
            "connect timed out",
        )),
        Err(e) => Err(e.into()),
    }
}

/// A short name for an error, to count failures by kind.
fn kind(e: &anyhow::Error) -> String {
    let io = e
        .chain()
        .find_map(|c| c.downcast_ref::<std::io::Error>())
        .map(|io| io.kind().to_string());
    let top = e.to_string();
    match io {
        Some(k) => format!("{top}: {k}"),
        None => top,
    }
}

#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    late: u64,
    failures: BTreeMap<String, u64>,
    answers: BTreeMap<String, u64>,
}

/// Runs the test from the calling thread (inside the client's namespace; the workers it
/// starts stay there).
pub fn run(cfg: &ConnTest) -> Result<ConnResult> {
    ensure!(!cfg.targets.is_empty(), "no targets");
    ensure!(
        cfg.workers > 0 && cfg.workers <= 512,
        "workers must be 1..=512"
    );
    let sched = cfg.rate.map(|r| Schedule::for_duration(r, cfg.duration));
    let total = sched.map_or(u64::MAX, |s| s.total());
    let next = AtomicU64::new(0);
    let hist = Mutex::new(histogram());
    let tally = Mutex::new(Tally::default());
    let start = Instant::now();
    // A fixed-rate run may fall behind: its last connections still start, up to 2 s late.
    let stop_issuing =
        start + cfg.duration + sched.map_or(Duration::ZERO, |_| Duration::from_secs(2));
    std::thread::scope(|s| {
        for _ in 0..cfg.workers {
            s.spawn(|| {
                super::tight_timer_slack();
                let mut h = histogram();
                let mut t = Tally::default();
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= total {
                        break;
                    }
                    if let Some(sched) = sched {
                        let at = start + sched.at(k);
                        sleep_until(at);
                        if Instant::now() > at + Duration::from_millis(10) {
                            t.late += 1;
                        }
                    }
                    if Instant::now() >= stop_issuing {
                        break;
                    }
                    let target = cfg.targets[(k % cfg.targets.len() as u64) as usize];
                    let t0 = Instant::now();
                    match one(target, cfg.source, cfg.timeout) {
                        Ok(answer) => {
                            record(&mut h, t0.elapsed().as_nanos() as u64);
                            t.ok += 1;
                            *t.answers.entry(answer).or_default() += 1;
                        }
                        Err(e) => {
                            t.failed += 1;
                            *t.failures.entry(kind(&e)).or_default() += 1;
                        }
                    }
                }
                hist.lock().unwrap().add(&h).expect("same histogram bounds");
                let mut all = tally.lock().unwrap();
                all.ok += t.ok;
                all.failed += t.failed;
                all.late += t.late;
                for (k, v) in t.failures {
                    *all.failures.entry(k).or_default() += v;
                }
                for (k, v) in t.answers {
                    *all.answers.entry(k).or_default() += v;
                }
            });
        }
    });
    let elapsed = start.elapsed().as_secs_f64();
    let t = tally.into_inner().unwrap();
    let h = hist.into_inner().unwrap();
    // The rate is over the issuing window (closed loop) or the schedule (fixed rate): the
    // connections still finishing after it are counted, their time is not.
    let window = match sched {
        Some(s) => s.length().as_secs_f64().max(1e-3),
        None => cfg.duration.as_secs_f64(),
    };
    Ok(ConnResult {
        attempted: t.ok + t.failed,
        ok: t.ok,
        failed: t.failed,
        failures: t.failures,
        elapsed_s: elapsed,
        conn_per_s: t.ok as f64 / window,
        late: t.late,
        time: Summary::of(&h),
        answers: t.answers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A tiny HTTP server on loopback answering `Connection: close` requests with `name`.
    fn serve(name: &'static str, conns: usize) -> (SocketAddr, std::thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            for s in l.incoming().take(conns) {
                let mut s = s.unwrap();
                let mut buf = [0u8; 512];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                let body = format!("{name}\n");
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (addr, h)
    }

    #[test]
    fn fixed_rate_on_loopback() {
        let (addr, h) = serve("bx", 20);
        let r = run(&ConnTest {
            targets: vec![addr],
            rate: Some(100.0),
            duration: Duration::from_millis(200),
            workers: 4,
            timeout: Duration::from_secs(2),
            source: Some("127.0.0.1".parse().unwrap()),
        })
        .unwrap();
        h.join().unwrap();
        assert_eq!(r.ok, 20, "{r:?}");
        assert_eq!(r.failed, 0);
        assert_eq!(r.answers.get("bx"), Some(&20));
        assert_eq!(r.time.count, 20);
        assert!(r.conn_per_s > 80.0 && r.conn_per_s < 120.0, "{r:?}");
    }

    #[test]
    fn failures_are_counted_by_kind() {
        // A port nobody listens on: refused.
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let r = run(&ConnTest {
            targets: vec![addr],
            rate: Some(50.0),
            duration: Duration::from_millis(100),
            workers: 2,
            timeout: Duration::from_millis(500),
            source: None,
        })
        .unwrap();
        assert_eq!(r.ok, 0);
        assert_eq!(r.failed, 5, "{r:?}");
        assert_eq!(r.failures.len(), 1, "{r:?}");
        assert!(r.failures.keys().next().unwrap().starts_with("connect"));
    }
}
