//! Many long-lived TCP echo connections on one event loop (a tokio runtime with one worker
//! thread), for the fleet test and demo: hundreds of connections without a thread each.
//!
//! Each connection writes [`CHUNK`] bytes of the [`pattern_byte`] stream, reads them back,
//! checks every byte, pauses, and so on until [`EchoPool::finish`]. A failure ends that
//! connection and is kept with its kind ([`Failure::Reset`] for a `RST`), the byte it happened
//! at and the error text.
use std::{
    fmt,
    io::ErrorKind,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{client::pattern_byte, netns::Netns};

/// Bytes each exchange writes and reads back.
pub const CHUNK: usize = 256;
/// A write or read that makes no progress for this long fails the connection (it covers BGP
/// convergence and TCP's retransmission backoff).
pub const STALL: Duration = Duration::from_secs(20);

/// Why a connection ended before [`EchoPool::finish`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// `ECONNRESET` (or `EPIPE` after one): the far end, or something on the way, sent a RST.
    Reset,
    /// The far end closed the connection (a read returned 0).
    Closed,
    /// No progress for [`STALL`].
    Stalled,
    /// The echo differs from what was sent.
    Corrupted,
    /// Any other socket error.
    Other,
}

/// A connection that failed.
#[derive(Clone, Debug)]
pub struct ConnError {
    pub label: String,
    pub kind: Failure,
    /// Bytes verified before the failure.
    pub at: u64,
    pub detail: String,
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connection {}: {:?} at byte {}: {}",
            self.label, self.kind, self.at, self.detail
        )
    }
}

struct Conn {
    label: String,
    /// Bytes sent, echoed and verified so far.
    verified: AtomicU64,
    error: Mutex<Option<ConnError>>,
}

/// What [`EchoPool::finish`] found.
#[derive(Debug)]
pub struct Report {
    pub connections: usize,
    /// Bytes echoed and verified over every connection.
    pub bytes: u64,
    pub failures: Vec<ConnError>,
}

impl Report {
    /// Failures of one kind.
    pub fn count(&self, kind: Failure) -> usize {
        self.failures.iter().filter(|e| e.kind == kind).count()
    }
}

/// The pool. Dropping it without [`EchoPool::finish`] stops the loop and closes every socket.
pub struct EchoPool {
    rt: tokio::runtime::Runtime,
    pause: Duration,
    stop: Arc<AtomicBool>,
    conns: Vec<Arc<Conn>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl EchoPool {
    /// An empty pool whose connections pause `pause` between exchanges.
    pub fn new(pause: Duration) -> Result<EchoPool> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("echo-pool")
            .enable_all()
            .build()
            .context("echo pool runtime")?;
        Ok(EchoPool {
            rt,
            pause,
            stop: Arc::new(AtomicBool::new(false)),
            conns: Vec::new(),
            tasks: Vec::new(),
        })
    }

    /// Open `n` connections to `to` from namespace `ns` (one after the other, each within 5 s)
    /// and start their exchanges; they are labelled `{label}{k}` (k from 0).
    pub fn open(&mut self, ns: &Netns, to: SocketAddr, n: usize, label: &str) -> Result<()> {
        raise_fd_limit(self.conns.len() + n);
        let streams = ns.enter(|| {
            (0..n)
                .map(|k| {
                    let s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5))
                        .with_context(|| format!("connection {label}{k}: connect to {to}"))?;
                    s.set_nodelay(true)?;
                    s.set_nonblocking(true)?;
                    Ok(s)
                })
                .collect::<Result<Vec<_>>>()
        })?;
        let _rt = self.rt.enter();
        for (k, s) in streams.into_iter().enumerate() {
            let conn = Arc::new(Conn {
                label: format!("{label}{k}"),
                verified: AtomicU64::new(0),
                error: Mutex::new(None),
            });
            let s = tokio::net::TcpStream::from_std(s)?;
            // Spread the exchanges over the pause rather than all at once.
            let offset = self.pause.mul_f64((k % 16) as f64 / 16.0);
            self.tasks.push(self.rt.spawn(run(
                s,
                conn.clone(),
                self.stop.clone(),
                self.pause,
                offset,
            )));
            self.conns.push(conn);
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Bytes verified so far over every connection.
    pub fn bytes(&self) -> u64 {
        self.conns
            .iter()
            .map(|c| c.verified.load(Ordering::Relaxed))
            .sum()
    }

    /// The failures so far.
    pub fn failures(&self) -> Vec<ConnError> {
        self.conns
            .iter()
            .filter_map(|c| c.error.lock().expect("conn error").clone())
            .collect()
    }

    /// Wait (polling every 50 ms, at most `timeout`) until every connection has verified
    /// `rounds` more exchanges than when called: every one of them still works. Fails at once
    /// when a connection fails. Returns how long it took.
    pub fn wait_each(&self, rounds: u64, timeout: Duration, what: &str) -> Result<Duration> {
        let start = Instant::now();
        let want: Vec<u64> = self
            .conns
            .iter()
            .map(|c| c.verified.load(Ordering::Relaxed) + rounds * CHUNK as u64)
            .collect();
        loop {
            let failures = self.failures();
            if !failures.is_empty() {
                bail!(
                    "{what}: {} of {} connections failed:\n{}",
                    failures.len(),
                    self.len(),
                    lines(&failures)
                );
            }
            let behind: Vec<&str> = self
                .conns
                .iter()
                .zip(&want)
                .filter(|(c, &w)| c.verified.load(Ordering::Relaxed) < w)
                .map(|(c, _)| c.label.as_str())
                .collect();
            if behind.is_empty() {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!(
                    "{what}: {} of {} connections made fewer than {rounds} exchanges in \
                     {timeout:?}: {}",
                    behind.len(),
                    self.len(),
                    behind.join(" ")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop every connection (each finishes its exchange and closes) and report.
    pub fn finish(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        let tasks = self.tasks;
        self.rt.block_on(async {
            for t in tasks {
                let _ = t.await;
            }
        });
        let failures = self
            .conns
            .iter()
            .filter_map(|c| c.error.lock().expect("conn error").clone())
            .collect();
        Report {
            connections: self.conns.len(),
            bytes: self
                .conns
                .iter()
                .map(|c| c.verified.load(Ordering::Relaxed))
                .sum(),
            failures,
        }
    }
}

/// One line per failure.
pub fn lines(failures: &[ConnError]) -> String {
    failures
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Make sure the soft limit of open files leaves room for `conns` more sockets (a default of
/// 1024 does not for a few hundred connections and the lab servers the test starts).
fn raise_fd_limit(conns: usize) {
    let want = (conns as u64 + 512).max(4096);
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < want {
            r.rlim_cur = want.min(r.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

async fn run(
    mut s: tokio::net::TcpStream,
    conn: Arc<Conn>,
    stop: Arc<AtomicBool>,
    pause: Duration,
    offset: Duration,
) {
    tokio::time::sleep(offset).await;
    let mut pos = 0u64;
    let mut buf = [0u8; CHUNK];
    let mut back = [0u8; CHUNK];
    let fail = |kind: Failure, at: u64, detail: String| {
        *conn.error.lock().expect("conn error") = Some(ConnError {
            label: conn.label.clone(),
            kind,
            at,
            detail,
        });
    };
    while !stop.load(Ordering::Relaxed) {
        for (j, b) in buf.iter_mut().enumerate() {
            *b = pattern_byte(pos + j as u64);
        }
        match tokio::time::timeout(STALL, s.write_all(&buf)).await {
            Err(_) => return fail(Failure::Stalled, pos, format!("write stalled {STALL:?}")),
            Ok(Err(e)) => return fail(kind_of(&e), pos, format!("write: {e}")),
            Ok(Ok(())) => {}
        }
        match tokio::time::timeout(STALL, s.read_exact(&mut back)).await {
            Err(_) => return fail(Failure::Stalled, pos, format!("read stalled {STALL:?}")),
            Ok(Err(e)) if e.kind() == ErrorKind::UnexpectedEof => {
                return fail(Failure::Closed, pos, "closed by the far end".into())
            }
            Ok(Err(e)) => return fail(kind_of(&e), pos, format!("read: {e}")),
            Ok(Ok(_)) => {}
        }
        if let Some(j) = (0..CHUNK).find(|&j| back[j] != buf[j]) {
            return fail(
                Failure::Corrupted,
                pos,
                format!(
                    "byte {} is {:#04x}, sent {:#04x}",
                    pos + j as u64,
                    back[j],
                    buf[j]
                ),
            );
        }
        pos += CHUNK as u64;
        conn.verified.store(pos, Ordering::Relaxed);
        tokio::time::sleep(pause).await;
    }
    let _ = s.shutdown().await;
}

fn kind_of(e: &std::io::Error) -> Failure {
    match e.kind() {
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted => {
            Failure::Reset
        }
        _ => Failure::Other,
    }
}
