//! Flood protection end to end (issue 9), in namespaces with real servers and real clients:
//! `conntrack_size` at its minimum (1,024 entries), 100 established TCP connections through
//! the VIP to echo servers, then a random-source SYN flood and a random-source UDP flood from
//! the client namespace (raw socket, packets built with `etherparse`, sources drawn from
//! 198.18.128.0/17), bounded in count and time, at the highest rate the generator reaches.
//! While the flood runs, a fourth backend joins both groups (the Maglev tables change). Every
//! established connection must survive: no reset, no EOF, no gap over 3 s between successful
//! exchanges; and the floods' flows must never reach the connection table (its size, read
//! from `/metrics`, stays at the established flows). SYNs and new UDP flows wait in
//! `UNCONFIRMED` (see README, "What the data path does with each packet"), so the flood
//! churns only that table; if it evicted the established flows from the connection table,
//! their next packets would be balanced by the changed table and about a quarter of them
//! would reach the new backend, which resets them (with SYNs and new UDP flows pinned
//! straight into the connection table, 21 to 31 of the 100 were reset).
//!
//! The UDP flood of the main test goes to a service whose backends answer nothing (one-packet
//! flows). An ignored test floods a UDP service whose servers answer every datagram: each
//! answer confirms its flow into the connection table, which the data path does not protect
//! established flows from yet.
//!
//! Needs root (skipped with a message otherwise).
use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use etherparse::PacketBuilder;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use xlb_lab::{
    client,
    lab::{Lab, CLIENT_V4, LB_BACKENDS_V4, LB_CLIENT_V4, VIP_V4},
    xlbd::{cleanup_stale_pins, Xlbd},
};

/// One flood at a time (should more tests join this file).
static TURN: Mutex<()> = Mutex::new(());

/// `conntrack_size` at its minimum (`UNCONFIRMED` then has its minimum too: 1,024).
const CONNTRACK_SIZE: u64 = 1024;
const ECHO_PORT: u16 = 7000;
/// UDP service whose servers answer every datagram (the lab servers on 5353).
const UDP_PORT: u16 = 53;
/// UDP service whose backends answer nothing (no server on 5354; their kernels' "port
/// unreachable" is rate limited): its flood is made of one-packet flows.
const SINK_PORT: u16 = 54;
/// Established connections kept busy through the flood.
const CONNECTIONS: usize = 100;
/// Each connection exchanges a line this often. (The issue asks for servers that push a line
/// every second; an echo exchange every 500 ms checks the same path in both directions, twice
/// as often.)
const PERIOD: Duration = Duration::from_millis(500);
/// Longest gap between two successful exchanges of a connection that counts as surviving.
const MAX_GAP: Duration = Duration::from_secs(3);
/// Each flood (SYN, then UDP) lasts at most this long and sends at most `FLOOD_PACKETS`.
const FLOOD_TIME: Duration = Duration::from_secs(4);
const FLOOD_PACKETS: u64 = 1_500_000;
/// Threads each flood is sent from. On a busy 2-CPU VM one thread reached 22,000 to 83,000
/// packets/s and the connections' longest gap was 0.55 to 1.3 s; two threads reached up to
/// 116,000 packets/s, but then the connections stalled together now and then (mostly early in
/// the SYN flood, with or without the table change) for up to 2.35 s: too close to `MAX_GAP`
/// for a test that must not be flaky. The stalls grow with the rate the machine sustains.
const FLOOD_THREADS: usize = 1;
/// And each flood is paced to at most this rate: unpaced on a quiet machine the one thread
/// reached 167,000 packets/s and the longest gap 2.28 s. 60,000 packets/s still churns
/// `UNCONFIRMED` (1,024 entries here) about 230 times over.
const FLOOD_MAX_PPS: f64 = 60_000.0;
/// When the fourth backend joins, from the start of each flood.
const ADD_AT: Duration = Duration::from_millis(1500);
/// Exchanges before the flood starts, and after it ends.
const BEFORE: Duration = Duration::from_secs(1);
const AFTER: Duration = Duration::from_secs(2);
/// The source range of the flood (RFC 2544 test range, outside every lab subnet).
const FLOOD_NET: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 0);
const FLOOD_PREFIX: u8 = 17;
/// Where the daemon serves `/metrics` (in the balancer's namespace), and how often the test
/// reads the connection table's size from it during a flood.
const METRICS: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9470));
const SAMPLE: Duration = Duration::from_millis(250);
/// The backend that joins during the flood (its namespace is in the lab from the start).
const NEW_BACKEND: &str = "198.18.2.14";

fn skip() -> bool {
    if !xlb_lab::is_root() {
        eprintln!("skipped: namespace tests need root");
        return true;
    }
    false
}

/// No health checks (a backend is healthy from the start, and a busy machine cannot mark one
/// down during the flood): only the flood and the table change act on the flows.
fn config(name: &str) -> String {
    format!(
        r#"[daemon]
interfaces = ["veth-client", "veth-backends"]
conntrack_size = {CONNTRACK_SIZE}
http_listen = "{METRICS}"
{paths}
[[service]]
name = "echo"
vip = "{VIP_V4}"
port = {ECHO_PORT}
protocol = "tcp"
target_group = "echo-servers"

[[service]]
name = "dns"
vip = "{VIP_V4}"
port = {UDP_PORT}
protocol = "udp"
target_group = "dns-servers"

[[service]]
name = "sink"
vip = "{VIP_V4}"
port = {SINK_PORT}
protocol = "udp"
target_group = "sink-servers"

[[target_group]]
name = "echo-servers"
port = 9000
backends = ["198.18.2.11", "198.18.2.12", "198.18.2.13"]

[[target_group]]
name = "dns-servers"
port = 5353
backends = ["198.18.2.11", "198.18.2.12", "198.18.2.13"]

[[target_group]]
name = "sink-servers"
port = 5354
backends = ["198.18.2.11", "198.18.2.12", "198.18.2.13"]
"#,
        paths = Xlbd::daemon_paths(name)
    )
}

/// One established connection and what happened to it.
struct Conn {
    stream: TcpStream,
    local_port: u16,
    /// The line in flight and when it was sent.
    pending: Option<(Instant, Vec<u8>)>,
    received: Vec<u8>,
    next_send: Instant,
    last_ok: Instant,
    max_gap: Duration,
    exchanges: u64,
    /// What broke the connection, and when.
    error: Option<(Instant, String)>,
}

impl Conn {
    fn open(to: SocketAddr) -> Result<Conn> {
        let mut last = None;
        for _ in 0..3 {
            match TcpStream::connect_timeout(&to, Duration::from_secs(3)) {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    s.set_nonblocking(true)?;
                    let now = Instant::now();
                    return Ok(Conn {
                        local_port: s.local_addr()?.port(),
                        stream: s,
                        pending: None,
                        received: Vec::new(),
                        next_send: now,
                        last_ok: now,
                        max_gap: Duration::ZERO,
                        exchanges: 0,
                        error: None,
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("tried")).with_context(|| format!("connect to {to}"))
    }

    /// Send the next line when due, read what came back; an exchange completes when the whole
    /// line is back.
    fn step(&mut self, i: usize, now: Instant) {
        if self.error.is_some() {
            return;
        }
        if self.pending.is_none() && now >= self.next_send {
            let line = format!("c{i} #{}\n", self.exchanges).into_bytes();
            match self.stream.write(&line) {
                Ok(n) if n == line.len() => self.pending = Some((now, line)),
                Ok(n) => return self.fail(format!("short write ({n} of {} bytes)", line.len())),
                Err(e) => return self.fail(format!("write: {e}")),
            }
        }
        let mut buf = [0u8; 256];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return self.fail("EOF".to_string()),
                Ok(n) => self.received.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return self.fail(format!("read: {e}")),
            }
        }
        let Some((sent, line)) = &self.pending else {
            if !self.received.is_empty() {
                self.fail(format!("unexpected bytes {:?}", self.received));
            }
            return;
        };
        if self.received.len() < line.len() {
            return;
        }
        if !self.received.starts_with(line) || self.received.len() > line.len() {
            let msg = format!("sent {line:?}, got back {:?}", self.received);
            return self.fail(msg);
        }
        self.max_gap = self.max_gap.max(now - self.last_ok);
        self.last_ok = now;
        self.next_send = *sent + PERIOD;
        self.exchanges += 1;
        self.received.clear();
        self.pending = None;
    }

    fn fail(&mut self, what: String) {
        self.error = Some((Instant::now(), what));
    }
}

/// Keep every connection exchanging lines every `PERIOD` until `stop` is set (one thread,
/// nonblocking sockets). Returns the connections with their records.
fn keep_busy(mut conns: Vec<Conn>, stop: &AtomicBool, start: Instant, limit: Instant) -> Vec<Conn> {
    for (i, c) in conns.iter_mut().enumerate() {
        // Spread the exchanges over the period.
        c.next_send = start + PERIOD * i as u32 / CONNECTIONS as u32;
        c.last_ok = start;
    }
    while !stop.load(Ordering::Relaxed) && Instant::now() < limit {
        let now = Instant::now();
        for (i, c) in conns.iter_mut().enumerate() {
            c.step(i, now);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let end = Instant::now();
    for c in &mut conns {
        // Up to the end, or to the failure.
        let last = c.error.as_ref().map_or(end, |(t, _)| *t);
        c.max_gap = c.max_gap.max(last.saturating_duration_since(c.last_ok));
    }
    conns
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Flood {
    Syn,
    Udp,
}

/// What one flood achieved.
#[derive(Debug)]
struct Sent {
    packets: u64,
    /// Sends the kernel refused (ENOBUFS and the like): not counted in `packets`.
    refused: u64,
    took: Duration,
}

impl Sent {
    fn rate(&self) -> f64 {
        self.packets as f64 / self.took.as_secs_f64().max(1e-3)
    }
}

/// Random-source packets to the VIP through a raw socket (IP_HDRINCL), as fast as this thread
/// can send them, for at most `FLOOD_TIME` and `max` packets (`seed` seeds the sources and
/// ports). Run inside the client namespace.
fn flood(kind: Flood, port: u16, seed: u64, max: u64) -> Result<Sent> {
    // A low priority (nice 10) for this thread: the flood takes what the connections, their
    // servers and xlb leave of the CPUs (on Linux, setpriority with `who` 0 acts on the
    // calling thread only). A failure leaves the priority as it was.
    // SAFETY: a plain system call without pointers.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
    let sock = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(libc::IPPROTO_RAW)),
    )
    .context("raw socket")?;
    let to = SockAddr::from(SocketAddrV4::new(VIP_V4, port));
    let net = u32::from(FLOOD_NET);
    let hosts = 1u32 << (32 - FLOOD_PREFIX);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut buf = Vec::with_capacity(128);
    let payload = [0u8; 16];
    let start = Instant::now();
    let (mut packets, mut refused) = (0u64, 0u64);
    for n in 0u64.. {
        // Check the clock (and the pace) every 256 sends.
        if n.is_multiple_of(256) {
            let elapsed = start.elapsed();
            if elapsed >= FLOOD_TIME {
                break;
            }
            let due = Duration::from_secs_f64(packets as f64 / FLOOD_MAX_PPS);
            if due > elapsed {
                std::thread::sleep(due - elapsed);
            }
        }
        if packets >= max {
            break;
        }
        let src = Ipv4Addr::from(net | rng.u32(1..hosts - 1)).octets();
        let sport = rng.u16(1024..);
        let b = PacketBuilder::ipv4(src, VIP_V4.octets(), 64);
        buf.clear();
        match kind {
            Flood::Syn => b
                .tcp(sport, port, rng.u32(..), 64240)
                .syn()
                .write(&mut buf, &[]),
            Flood::Udp => b.udp(sport, port).write(&mut buf, &payload),
        }
        .context("building a packet")?;
        match sock.send_to(&buf, &to) {
            Ok(_) => packets += 1,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                refused += 1;
                std::thread::yield_now();
            }
            Err(e) => return Err(e).context("sending a flood packet"),
        }
    }
    Ok(Sent {
        packets,
        refused,
        took: start.elapsed(),
    })
}

/// `xlb_conntrack_entries` from the daemon's `/metrics` (in the balancer's namespace), if it
/// answers within a second.
fn conntrack_entries(lab: &Lab) -> Option<u64> {
    let r = lab
        .lb_ns()
        .enter(|| client::http_request(METRICS, "GET", "/metrics", None, Duration::from_secs(1)))
        .ok()?;
    r.body
        .lines()
        .find_map(|l| l.strip_prefix("xlb_conntrack_entries "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

fn counters(xlb: &Xlbd) -> Result<serde_json::Value> {
    let text = xlb.cli_ok(&["status", "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| text.clone())?;
    Ok(v["global"].clone())
}

fn counter(v: &serde_json::Value, name: &str) -> u64 {
    v[name].as_u64().unwrap_or(0)
}

/// One flood of a run: what is sent to which port, and the backend added to which group
/// (`group`, `address`) `ADD_AT` after it starts.
struct Phase {
    kind: Flood,
    port: u16,
    group: &'static str,
    add: String,
}

/// Start the lab and xlb, establish the connections, run `phases` one after the other while
/// the connections exchange lines, and check that every connection survived and that the
/// floods reached xlb.
fn run(name: &str, phases: &[Phase]) {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    cleanup_stale_pins(name);
    let lab = Lab::new(name, 4).expect("lab");
    // The backends answer the flood: SYN-ACKs and UDP answers to 198.18.128.0/17. The lab's
    // namespaces have no route out of the lab; this route sends those answers, translated by
    // xlb, to the client namespace, which drops them (not its addresses, no forwarding),
    // rather than leaving them to the lb's kernel ("no route": answered with ICMP to the VIP,
    // which goes nowhere either).
    lab.lb_ns()
        .exec([
            "ip",
            "route",
            "add",
            &format!("{FLOOD_NET}/{FLOOD_PREFIX}"),
            "via",
            &CLIENT_V4.to_string(),
        ])
        .expect("route for the flood's answers");
    // The floods fill the lab's veth queues, and now and then one of the connections' packets
    // is dropped with the flood's: with the default 200 ms minimum retransmission timeout a
    // few such losses in a row make a gap of seconds that says nothing about xlb. A 20 ms
    // minimum keeps such gaps short, while a flow that xlb breaks (reset, or sent where
    // nothing answers) still shows.
    let rto = |ns: &xlb_lab::Netns, gw: Ipv4Addr| {
        ns.exec([
            "ip",
            "route",
            "change",
            "default",
            "via",
            &gw.to_string(),
            "rto_min",
            "20ms",
        ])
        .map(drop)
    };
    rto(lab.client_ns(), LB_CLIENT_V4).expect("client's rto_min");
    for b in lab.backend_nss() {
        rto(b, LB_BACKENDS_V4).expect("backend's rto_min");
    }
    let _servers = lab
        .start_backend_servers(&xlb_lab::lab_bin().unwrap(), &[], &[5353], &[9000])
        .expect("servers");
    let xlb = Xlbd::start(&lab, name, &config(name)).expect("xlb");
    let echo = SocketAddr::new(IpAddr::V4(VIP_V4), ECHO_PORT);

    let conns: Vec<Conn> = lab
        .client_ns()
        .enter(|| {
            (0..CONNECTIONS)
                .map(|_| Conn::open(echo))
                .collect::<Result<Vec<_>>>()
        })
        .expect("established connections");
    let before = counters(&xlb).expect("counters");

    let stop = AtomicBool::new(false);
    let limit = Instant::now()
        + BEFORE
        + FLOOD_TIME * phases.len() as u32
        + AFTER
        + Duration::from_secs(20);
    let client = lab.client_ns();
    let t0 = Instant::now();
    let ms = |t: Instant| t.duration_since(t0).as_secs_f64();
    let mut timeline = Vec::new();
    let (conns, floods, adds) = std::thread::scope(|s| {
        let busy = s.spawn(|| client.enter(|| keep_busy(conns, &stop, t0, limit)));
        std::thread::sleep(BEFORE);
        let mut floods = Vec::new();
        let mut adds = Vec::new();
        for p in phases {
            let (kind, port) = (p.kind, p.port);
            let c0 = counters(&xlb).unwrap_or_default();
            timeline.push(format!(
                "{:6.2} s: {kind:?} flood to port {port}",
                ms(Instant::now())
            ));
            let fs: Vec<_> = (0..FLOOD_THREADS)
                .map(|t| {
                    let seed = (port as u64) << 8 | t as u64;
                    let max = FLOOD_PACKETS / FLOOD_THREADS as u64;
                    s.spawn(move || client.enter(|| flood(kind, port, seed, max)))
                })
                .collect();
            // The connection table's size while the flood runs (the daemon counts it once a
            // second).
            let mut entries = Vec::new();
            let added = Instant::now() + ADD_AT;
            while Instant::now() < added {
                entries.extend(conntrack_entries(&lab));
                std::thread::sleep(SAMPLE);
            }
            // A table change while the flood runs.
            adds.push(xlb.cli(&["backend", "add", p.group, &p.add]));
            timeline.push(format!(
                "{:6.2} s: {} joined {}",
                ms(Instant::now()),
                p.add,
                p.group
            ));
            while !fs.iter().all(|f| f.is_finished()) {
                entries.extend(conntrack_entries(&lab));
                std::thread::sleep(SAMPLE);
            }
            let sent = fs
                .into_iter()
                .map(|f| f.join().expect("flood thread"))
                .try_fold(
                    Sent {
                        packets: 0,
                        refused: 0,
                        took: Duration::ZERO,
                    },
                    |a, b| {
                        b.map(|b| Sent {
                            packets: a.packets + b.packets,
                            refused: a.refused + b.refused,
                            took: a.took.max(b.took),
                        })
                    },
                );
            timeline.push(format!("{:6.2} s: the flood ended", ms(Instant::now())));
            let pinned = counter(&counters(&xlb).unwrap_or_default(), "unconfirmed")
                .saturating_sub(counter(&c0, "unconfirmed"));
            floods.push((kind, port, sent, pinned, entries));
        }
        std::thread::sleep(AFTER);
        stop.store(true, Ordering::Relaxed);
        (busy.join().expect("connections thread"), floods, adds)
    });
    let after = counters(&xlb).expect("counters");

    let report = |what: &str| {
        format!(
            "{what}\ntimeline:\n{}\ncounters before: {before}\ncounters after: {after}\n{}",
            timeline.join("\n"),
            xlb_lab::lab::tail(&xlb.log_text(), 20)
        )
    };
    for a in adds {
        let out = a.expect("xlb backend add");
        assert!(
            out.status.success(),
            "{}",
            report(&format!(
                "xlb backend add failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        );
    }
    for (kind, port, f, pinned, entries) in &floods {
        let f = f.as_ref().expect("flood");
        eprintln!(
            "{kind:?} flood to port {port}: {} packets in {:.2} s, {:.0} packets/s ({} sends \
             refused); unconfirmed +{pinned}; connection table entries {entries:?}",
            f.packets,
            f.took.as_secs_f64(),
            f.rate(),
            f.refused
        );
    }
    eprintln!("{}", timeline.join("\n"));
    let delta = |c: &str| counter(&after, c).saturating_sub(counter(&before, c));
    eprintln!(
        "in all: unconfirmed +{}, confirmed +{}, synack_stateless +{}, stray_recreated +{}",
        delta("unconfirmed"),
        delta("confirmed"),
        delta("synack_stateless"),
        delta("stray_recreated"),
    );
    let worst = conns.iter().map(|c| c.max_gap).max().unwrap_or_default();
    let exchanges: u64 = conns.iter().map(|c| c.exchanges).sum();
    eprintln!(
        "{} connections, {exchanges} exchanges, longest gap {:.0} ms",
        conns.len(),
        worst.as_secs_f64() * 1e3
    );

    // Every established connection survived, and kept exchanging.
    let broken: Vec<String> = conns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.error.is_some() || c.max_gap > MAX_GAP)
        .map(|(i, c)| {
            format!(
                "connection {i} (port {}): {} after {} exchanges, longest gap {:.0} ms",
                c.local_port,
                c.error
                    .as_ref()
                    .map_or("alive".to_string(), |(t, e)| format!(
                        "{e} at {:.2} s",
                        ms(*t)
                    )),
                c.exchanges,
                c.max_gap.as_secs_f64() * 1e3
            )
        })
        .collect();
    assert!(
        broken.is_empty(),
        "{}",
        report(&format!(
            "{} of {CONNECTIONS} established connections broke:\n{}",
            broken.len(),
            broken.join("\n")
        ))
    );
    // Each flood reached xlb and churned UNCONFIRMED many times over.
    let want = 10 * u64::from(xlb::dataplane::unconfirmed_size(CONNTRACK_SIZE as u32));
    for (kind, port, _, pinned, _) in &floods {
        assert!(
            *pinned >= want,
            "{}",
            report(&format!(
                "the {kind:?} flood to port {port} pinned only {pinned} unconfirmed flows \
                 (want at least {want})"
            ))
        );
    }
    // The floods' flows never reached the connection table: it held the established flows
    // and few more (it fills up at once when the flood's flows go there).
    let entries: Vec<u64> = floods.iter().flat_map(|f| f.4.iter().copied()).collect();
    assert!(
        !entries.is_empty(),
        "{}",
        report("the connection table's size was never read from /metrics during the floods")
    );
    let most = entries.iter().copied().max().unwrap_or_default();
    // (The reading is live: the established flows are there.)
    assert!(
        most >= CONNECTIONS as u64 / 2,
        "{}",
        report(&format!(
            "the connection table held at most {most} entries during the floods, fewer than \
             the established flows"
        ))
    );
    assert!(
        most <= CONNTRACK_SIZE / 2,
        "{}",
        report(&format!(
            "the connection table held {most} entries during the floods (of {CONNTRACK_SIZE}): \
             the flood's flows went there"
        ))
    );
}

/// The issue's check: a SYN flood to the TCP service, then a flood of one-packet UDP flows,
/// with the fourth backend joining the TCP service's group during the SYN flood and the UDP
/// service's group during the UDP flood.
#[test]
fn established_flows_survive_syn_and_udp_floods_and_a_table_change() {
    if skip() {
        return;
    }
    run(
        "xlbt-flood",
        &[
            Phase {
                kind: Flood::Syn,
                port: ECHO_PORT,
                group: "echo-servers",
                add: NEW_BACKEND.to_string(),
            },
            Phase {
                kind: Flood::Udp,
                port: SINK_PORT,
                group: "sink-servers",
                add: format!("{NEW_BACKEND}:5354"),
            },
        ],
    );
}

/// A random-source UDP flood that the servers answer, datagram by datagram (a DNS server
/// answers spoofed queries too): the answers do not confirm the flows (a UDP flow is
/// confirmed by its client's next datagram after a reply, which a spoofed source never
/// sends), so the flood churns `UNCONFIRMED` only and the established TCP flows survive the
/// table change. (When answers confirmed flows, about a quarter of the connections were
/// reset.)
#[test]
fn established_flows_survive_an_answered_udp_flood_and_a_table_change() {
    if skip() {
        return;
    }
    run(
        "xlbt-udpflood",
        &[Phase {
            kind: Flood::Udp,
            port: UDP_PORT,
            group: "echo-servers",
            add: NEW_BACKEND.to_string(),
        }],
    );
}
