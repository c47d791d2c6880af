//! Real networks end to end (issue 8), in namespaces with the real daemon: path MTU discovery
//! through a router with a smaller MTU (ICMP errors translated both ways), a smaller MTU on
//! the backend side, UDP datagrams that travel as fragments, TTL 1, replies whose connection
//! table entry is gone, and a VLAN trunk.
//!
//! The servers here run inside the backend namespaces on sockets this process opened there,
//! so a test sees exactly what each backend received and can make a backend send a reply on
//! its own. Every failure message carries xlb's global counters: they tell which row of the
//! README's packet table the data path took.
//!
//! Needs root (skipped with a message otherwise).
use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read, Write},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use lb_common::{CtValue, FlowKey, RevValue};
use xlb_lab::{
    capture::Capture,
    client::pattern_byte,
    lab::{
        Lab, CLIENT_IFACE, CLIENT_V4, CLIENT_V6, LB_BACKENDS_IFACE, LB_CLIENT_IFACE, LB_CLIENT_V4,
        LB_CLIENT_V6, ROUTER_CLIENT_IFACE, SW_UPLINK_IFACE, VIP_V4, VIP_V6,
    },
    netns::Netns,
    xlbd::Xlbd,
};

/// TCP service: `D n\n` downloads n pattern bytes, `U n\n` + n bytes uploads them.
const BULK: u16 = 8000;
const BULK_BACKEND: u16 = 9100;
/// The same server on a port no service uses, for the controls through plain kernel routing
/// that run before xlb starts (to tell a broken lab from a broken xlb).
const BULK_DIRECT: u16 = 9200;
/// UDP service whose backends echo every datagram.
const ECHO: u16 = 5000;
const ECHO_BACKEND: u16 = 5001;
const ECHO_DIRECT: u16 = 5002;
/// UDP service of one backend (b1), whose address serves no other service.
const STRAY: u16 = 6000;
const STRAY_BACKEND: u16 = 6001;
/// Two UDP services of the same group: the backend address b1:6101 is shared.
const SHARED_A: u16 = 6100;
const SHARED_B: u16 = 6200;
const SHARED_BACKEND: u16 = 6101;

/// UDP service whose backend port has no listener: the backend answers with ICMP "port
/// unreachable".
const CLOSED: u16 = 5009;
const CLOSED_BACKEND: u16 = 5010;

const MIB: usize = 1 << 20;
/// A transfer that makes no progress this long has stalled.
const STALL: Duration = Duration::from_secs(10);
/// No transfer takes longer than this in all.
const TRANSFER_LIMIT: Duration = Duration::from_secs(60);

fn skip() -> bool {
    if !xlb_lab::is_root() {
        eprintln!("skipped: namespace tests need root");
        return true;
    }
    false
}

fn config(name: &str) -> String {
    let paths = Xlbd::daemon_paths(name);
    format!(
        r#"[daemon]
interfaces = ["{LB_CLIENT_IFACE}", "{LB_BACKENDS_IFACE}"]
conntrack_size = 65536
maglev_table_size = 1021
max_services = 16
{paths}
[[service]]
name = "bulk"
vip = "{VIP_V4}"
port = {BULK}
protocol = "tcp"
target_group = "bulk"

[[service]]
name = "bulk6"
vip = "{VIP_V6}"
port = {BULK}
protocol = "tcp"
target_group = "bulk6"

[[service]]
name = "echo"
vip = "{VIP_V4}"
port = {ECHO}
protocol = "udp"
target_group = "echo"

[[service]]
name = "echo6"
vip = "{VIP_V6}"
port = {ECHO}
protocol = "udp"
target_group = "echo6"

[[service]]
name = "stray"
vip = "{VIP_V4}"
port = {STRAY}
protocol = "udp"
target_group = "stray"

[[service]]
name = "stray6"
vip = "{VIP_V6}"
port = {STRAY}
protocol = "udp"
target_group = "stray6"

[[service]]
name = "shared-a"
vip = "{VIP_V4}"
port = {SHARED_A}
protocol = "udp"
target_group = "shared"

[[service]]
name = "shared-b"
vip = "{VIP_V4}"
port = {SHARED_B}
protocol = "udp"
target_group = "shared"

[[service]]
name = "closed"
vip = "{VIP_V4}"
port = {CLOSED}
protocol = "udp"
target_group = "closed"

[[service]]
name = "closed6"
vip = "{VIP_V6}"
port = {CLOSED}
protocol = "udp"
target_group = "closed6"

[[target_group]]
name = "closed"
port = {CLOSED_BACKEND}
backends = ["198.18.2.11"]

[[target_group]]
name = "closed6"
port = {CLOSED_BACKEND}
backends = ["2001:db8:2::11"]

[[target_group]]
name = "bulk"
port = {BULK_BACKEND}
backends = ["198.18.2.11", "198.18.2.12"]

[[target_group]]
name = "bulk6"
port = {BULK_BACKEND}
backends = ["2001:db8:2::11", "2001:db8:2::12"]

[[target_group]]
name = "echo"
port = {ECHO_BACKEND}
backends = ["198.18.2.11", "198.18.2.12"]

[[target_group]]
name = "echo6"
port = {ECHO_BACKEND}
backends = ["2001:db8:2::11", "2001:db8:2::12"]

[[target_group]]
name = "stray"
port = {STRAY_BACKEND}
backends = ["198.18.2.11"]

[[target_group]]
name = "stray6"
port = {STRAY_BACKEND}
backends = ["2001:db8:2::11"]

[[target_group]]
name = "shared"
port = {SHARED_BACKEND}
backends = ["198.18.2.11"]
"#
    )
}

// ---- servers in the backend namespaces ----

/// A datagram an echo server received: (backend index, payload).
type Seen = (usize, Vec<u8>);

/// Threads serving sockets opened in lab namespaces; stopped (and joined) on drop.
#[derive(Default)]
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Every datagram the UDP echo servers received.
    udp_seen: Arc<Mutex<Vec<Seen>>>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Servers {
    /// The bulk TCP server and the UDP echo server on every backend of `lab`.
    fn start(lab: &Lab) -> Result<Servers> {
        let mut s = Servers::default();
        for i in 1..=lab.n_backends() {
            let ns = lab.backend_ns(i);
            for port in [BULK_BACKEND, BULK_DIRECT] {
                let l = ns.enter(|| TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)))?;
                l.set_nonblocking(true)?;
                let stop = s.stop.clone();
                s.threads.push(std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match l.accept() {
                            Ok((c, _)) => {
                                std::thread::spawn(move || {
                                    if let Err(e) = bulk_conn(c) {
                                        eprintln!("bulk server: {e:#}");
                                    }
                                });
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(10)),
                        }
                    }
                }));
            }
            for port in [ECHO_BACKEND, ECHO_DIRECT] {
                let u = ns.enter(|| UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port)))?;
                u.set_read_timeout(Some(Duration::from_millis(50)))?;
                let (stop, seen) = (s.stop.clone(), s.udp_seen.clone());
                s.threads.push(std::thread::spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok((n, from)) = u.recv_from(&mut buf) {
                            seen.lock().unwrap().push((i, buf[..n].to_vec()));
                            let _ = u.send_to(&buf[..n], from);
                        }
                    }
                }));
            }
        }
        Ok(s)
    }

    fn udp_seen_containing(&self, needle: &[u8]) -> Vec<usize> {
        self.udp_seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, p)| p.windows(needle.len()).any(|w| w == needle))
            .map(|(i, _)| *i)
            .collect()
    }
}

fn bulk_conn(mut s: TcpStream) -> Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(STALL))?;
    s.set_write_timeout(Some(STALL))?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 64 {
        s.read_exact(&mut b)?;
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
    }
    let line = String::from_utf8(line)?;
    let (cmd, n) = line.split_once(' ').context("bad command")?;
    let n: usize = n.parse()?;
    ensure!(n <= 16 * MIB, "too large");
    match cmd {
        "D" => {
            let mut pos = 0usize;
            let mut chunk = vec![0u8; 64 * 1024];
            while pos < n {
                let len = chunk.len().min(n - pos);
                for (k, c) in chunk[..len].iter_mut().enumerate() {
                    *c = pattern_byte((pos + k) as u64);
                }
                s.write_all(&chunk[..len])?;
                pos += len;
            }
            s.shutdown(std::net::Shutdown::Write)?;
            // Wait for the client to close first.
            let _ = s.read(&mut b);
        }
        "U" => {
            let mut pos = 0usize;
            let mut buf = vec![0u8; 64 * 1024];
            let mut bad = None;
            while pos < n {
                let got = s.read(&mut buf[..(n - pos).min(64 * 1024)])?;
                ensure!(got > 0, "upload ended at byte {pos} of {n}");
                for (k, &c) in buf[..got].iter().enumerate() {
                    if bad.is_none() && c != pattern_byte((pos + k) as u64) {
                        bad = Some(pos + k);
                    }
                }
                pos += got;
            }
            match bad {
                None => s.write_all(b"ok\n")?,
                Some(at) => s.write_all(format!("bad at {at}\n").as_bytes())?,
            }
            let _ = s.read(&mut b);
        }
        other => bail!("unknown command {other:?}"),
    }
    Ok(())
}

// ---- clients ----

/// Download `n` bytes from the bulk service at `to`, every byte checked.
fn download(to: SocketAddr, n: usize) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
        .with_context(|| format!("connect to {to}"))?;
    s.set_read_timeout(Some(STALL))?;
    s.set_write_timeout(Some(STALL))?;
    s.write_all(format!("D {n}\n").as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = 0usize;
    let start = std::time::Instant::now();
    loop {
        ensure!(
            start.elapsed() < TRANSFER_LIMIT,
            "download from {to}: only {pos} of {n} bytes in {TRANSFER_LIMIT:?}"
        );
        let got = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                bail!("download from {to} stalled for {STALL:?} after {pos} of {n} bytes")
            }
            Err(e) => return Err(e).with_context(|| format!("download from {to} at byte {pos}")),
        };
        for (k, &c) in buf[..got].iter().enumerate() {
            ensure!(
                c == pattern_byte((pos + k) as u64),
                "download from {to}: byte {} differs",
                pos + k
            );
        }
        pos += got;
    }
    ensure!(pos == n, "download from {to}: {pos} of {n} bytes");
    Ok(())
}

/// Upload `n` bytes to the bulk service at `to`; the backend checks every byte.
fn upload(to: SocketAddr, n: usize) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
        .with_context(|| format!("connect to {to}"))?;
    s.set_read_timeout(Some(STALL))?;
    s.set_write_timeout(Some(STALL))?;
    s.write_all(format!("U {n}\n").as_bytes())?;
    let mut pos = 0usize;
    let mut chunk = vec![0u8; 64 * 1024];
    let start = std::time::Instant::now();
    while pos < n {
        ensure!(
            start.elapsed() < TRANSFER_LIMIT,
            "upload to {to}: only {pos} of {n} bytes in {TRANSFER_LIMIT:?}"
        );
        let len = chunk.len().min(n - pos);
        for (k, c) in chunk[..len].iter_mut().enumerate() {
            *c = pattern_byte((pos + k) as u64);
        }
        s.write_all(&chunk[..len])
            .with_context(|| format!("upload to {to} stalled at byte {pos} of {n}"))?;
        pos += len;
    }
    // The verdict is one line; the server waits for this side to close first.
    let mut answer = Vec::new();
    let mut b = [0u8; 1];
    while answer.len() < 64 && !answer.ends_with(b"\n") {
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(_) => answer.push(b[0]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("upload to {to}: waiting for the backend's verdict"))
            }
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    ensure!(answer == "ok\n", "upload to {to}: backend says {answer:?}");
    Ok(())
}

/// A datagram of `size` bytes to the echo service at `to` comes back whole, from `to`.
fn udp_echo(to: SocketAddr, size: usize, tag: &str) -> Result<()> {
    let local: SocketAddr = match to {
        SocketAddr::V4(_) => "0.0.0.0:0".parse()?,
        SocketAddr::V6(_) => "[::]:0".parse()?,
    };
    let s = UdpSocket::bind(local)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut msg: Vec<u8> = (0..size).map(|i| pattern_byte(i as u64)).collect();
    msg[..tag.len()].copy_from_slice(tag.as_bytes());
    let mut buf = vec![0u8; 65536];
    for _ in 0..3 {
        s.send_to(&msg, to)?;
        // No answer within the read timeout: send again.
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            ensure!(
                from == to,
                "{size}-byte echo came from {from}, not the VIP {to}"
            );
            ensure!(
                buf[..n] == msg[..],
                "{size}-byte datagram to {to}: {n} bytes came back, not the same"
            );
            return Ok(());
        }
    }
    bail!("{size}-byte datagram to {to}: no echo in 3 tries")
}

// ---- xlb ----

struct Running {
    lab: Lab,
    xlb: Xlbd,
    servers: Servers,
}

impl Running {
    fn start(lab: Lab, name: &str) -> Result<Running> {
        Running::start_after_control(lab, name, || Ok(()))
    }

    /// Start the servers, run `control` from the client before xlb runs (plain kernel
    /// routing on the lb: a failure there means the lab is broken, not xlb), then start xlb.
    fn start_after_control(
        mut lab: Lab,
        name: &str,
        control: impl FnOnce() -> Result<()> + Send,
    ) -> Result<Running> {
        // xlb answers too-big packets with XDP_TX: veth delivers those only to a peer that
        // runs XDP.
        lab.attach_xdp_to_lb_peers()?;
        let servers = Servers::start(&lab)?;
        lab.client_ns()
            .enter(control)
            .context("control through kernel routing, before xlb runs: the lab is broken")?;
        // Forget the path MTUs the control taught the backends, so that xlb's traffic has to
        // discover them again.
        for b in lab.backend_nss() {
            b.exec(["ip", "route", "flush", "cache"])?;
            b.exec(["ip", "-6", "route", "flush", "cache"])?;
        }
        let xlb = Xlbd::start(&lab, name, &config(name)).context("starting xlb")?;
        Ok(Running { lab, xlb, servers })
    }

    fn counters(&self) -> BTreeMap<String, u64> {
        self.xlb
            .cli_ok(&["status", "--json"])
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| serde_json::from_value(v["global"].clone()).ok())
            .unwrap_or_default()
    }

    fn counter(&self, name: &str) -> u64 {
        self.counters().get(name).copied().unwrap_or(0)
    }

    /// Counters and the end of the log, for failure messages.
    fn report(&self) -> String {
        let nonzero: BTreeMap<String, u64> = self
            .counters()
            .into_iter()
            .filter(|(_, v)| *v > 0)
            .collect();
        format!(
            "xlb counters: {nonzero:?}\nxlb log:\n{}",
            xlb_lab::lab::tail(&self.xlb.log_text(), 15)
        )
    }

    fn in_client<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.lab.client_ns().enter(f)
    }
}

fn ip(ns: &Netns, args: &str) {
    let mut a = vec!["ip"];
    a.extend(args.split_whitespace());
    ns.exec(&a)
        .unwrap_or_else(|e| panic!("{}: ip {args}: {e:#}", ns.name()));
}

fn v4(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP_V4), port)
}

fn v6(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(VIP_V6), port)
}

/// Backend 1's own address (v4 or v6, like `like`) on `port`: traffic that xlb leaves to the
/// kernel's routing.
fn direct(like: SocketAddr, port: u16) -> SocketAddr {
    match like {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(xlb_lab::lab::backend_v4(1)), port),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(xlb_lab::lab::backend_v6(1)), port),
    }
}

// ---- tests ----

/// A router between the client and xlb whose link to the client has an MTU of 1280. The
/// client's own end stays at 1500, so its MSS (1460) does not hide the narrower hop: the
/// backends send full-size segments, the router answers them with "fragmentation needed" /
/// "packet too big" addressed to the VIP, and only if xlb hands those to the right backend
/// (translated) does the backend learn the path MTU and the download finish.
#[test]
fn path_mtu_discovery_through_a_router() {
    if skip() {
        return;
    }
    let name = "xlbt-pmtu";
    let lab = Lab::with_router(name, 2).expect("lab");
    let router = lab.router_ns().expect("router");
    ip(router, &format!("link set {ROUTER_CLIENT_IFACE} mtu 1280"));
    let mut r = Running::start_after_control(lab, name, || {
        download(direct(v4(0), BULK_DIRECT), MIB)?;
        download(direct(v6(0), BULK_DIRECT), MIB)
    })
    .expect("xlb");

    for to in [v4(BULK), v6(BULK)] {
        let res = r.in_client(|| download(to, MIB));
        assert!(
            res.is_ok(),
            "1 MiB download from {to} through a 1280-byte hop: {:#}\n{}",
            res.unwrap_err(),
            r.report()
        );
    }
    let n = r.counter("icmp_to_backend");
    assert!(
        n >= 2,
        "the router's ICMP errors (one per family at least) reach the backends as \
         icmp_to_backend, counted {n}\n{}",
        r.report()
    );
    assert!(r.xlb.is_running());
}

/// The link from xlb to the backends has an MTU of 1280 (the client's path and the backends'
/// own interfaces are 1500): the client's full-size segments do not fit, xlb answers them
/// with "fragmentation needed" / "packet too big" from the VIP, and the upload finishes.
#[test]
fn upload_through_a_smaller_backend_side_mtu() {
    if skip() {
        return;
    }
    let name = "xlbt-upmtu";
    let lab = Lab::new(name, 2).expect("lab");
    ip(
        lab.lb_ns(),
        &format!("link set {LB_BACKENDS_IFACE} mtu 1280"),
    );
    ip(lab.sw_ns(), &format!("link set {SW_UPLINK_IFACE} mtu 1280"));
    let mut r = Running::start_after_control(lab, name, || {
        upload(direct(v4(0), BULK_DIRECT), MIB)?;
        upload(direct(v6(0), BULK_DIRECT), MIB)
    })
    .expect("xlb");

    // An IPv4 datagram without DF that does not fit the backend link goes through the
    // kernel, which fragments it: the backend gets it whole. (Before the uploads, while the
    // client has not learnt a smaller path MTU for the VIP.)
    let tag = b"no-df-1400";
    r.in_client(|| -> Result<()> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        let dont: libc::c_int = libc::IP_PMTUDISC_DONT;
        // SAFETY: setsockopt with an int option value of the size given.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                &dont as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        ensure!(
            rc == 0,
            "IP_MTU_DISCOVER: {}",
            std::io::Error::last_os_error()
        );
        let mut msg = vec![0x5a_u8; 1400];
        msg[..tag.len()].copy_from_slice(tag);
        s.send_to(&msg, v4(ECHO))?;
        Ok(())
    })
    .expect("sending without DF");
    let whole = r
        .xlb
        .wait_for("the datagram at a backend", Duration::from_secs(3), || {
            Ok(r.servers
                .udp_seen
                .lock()
                .unwrap()
                .iter()
                .any(|(_, p)| p.len() == 1400 && p.starts_with(tag))
                .then_some(()))
        });
    assert!(
        whole.is_ok(),
        "a 1400-byte datagram without DF reaches a backend whole (fragmented by the kernel)\n{}",
        r.report()
    );
    let n = r.counter("too_big_kernel");
    assert!(n >= 1, "too_big_kernel counted {n}\n{}", r.report());

    for to in [v4(BULK), v6(BULK)] {
        let res = r.in_client(|| upload(to, MIB));
        assert!(
            res.is_ok(),
            "1 MiB upload to {to} through a 1280-byte backend link: {:#}\n{}",
            res.unwrap_err(),
            r.report()
        );
    }
    let n = r.counter("too_big_icmp");
    assert!(
        n >= 2,
        "segments too big for the backend link are answered from XDP (too_big_icmp), \
         counted {n}\n{}",
        r.report()
    );
    assert!(r.xlb.is_running());
}

/// 3000- and 8000-byte datagrams travel as fragments both ways (the client's to the backend,
/// the backend's echo back) and arrive whole, over IPv4 and IPv6.
#[test]
fn large_udp_datagrams_arrive_whole_both_ways() {
    if skip() {
        return;
    }
    let name = "xlbt-frag";
    let r = Running::start_after_control(Lab::new(name, 2).expect("lab"), name, || {
        for to in [direct(v4(0), ECHO_DIRECT), direct(v6(0), ECHO_DIRECT)] {
            for size in [3000, 8000] {
                udp_echo(to, size, &format!("control-{size}-{to}"))?;
            }
        }
        Ok(())
    })
    .expect("xlb");
    for to in [v4(ECHO), v6(ECHO)] {
        for size in [3000, 8000] {
            let tag = format!("frag-{size}-{to}");
            let res = r.in_client(|| udp_echo(to, size, &tag));
            assert!(res.is_ok(), "{:#}\n{}", res.unwrap_err(), r.report());
            let seen = r.servers.udp_seen_containing(tag.as_bytes());
            assert!(
                !seen.is_empty(),
                "{size}-byte datagram to {to}: no backend got it whole"
            );
        }
    }
    let n = r.counter("frags_followed");
    assert!(
        n > 0,
        "later fragments follow their first (frags_followed), counted {n}\n{}",
        r.report()
    );
}

/// A datagram to the VIP with TTL / hop limit 1 is not forwarded: no backend sees it, while
/// the same datagram with a normal TTL goes through.
#[test]
fn ttl_1_to_the_vip_is_not_forwarded() {
    if skip() {
        return;
    }
    let name = "xlbt-ttl";
    let r = Running::start(Lab::new(name, 2).expect("lab"), name).expect("xlb");
    for to in [v4(ECHO), v6(ECHO)] {
        let tag = format!("ttl1-{to}");
        r.in_client(|| -> Result<()> {
            let local: SocketAddr = if to.is_ipv4() {
                "0.0.0.0:0".parse()?
            } else {
                "[::]:0".parse()?
            };
            let s = UdpSocket::bind(local)?;
            if to.is_ipv4() {
                s.set_ttl(1)?;
            } else {
                nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Ipv6Ttl, &1)?;
            }
            for _ in 0..3 {
                s.send_to(tag.as_bytes(), to)?;
            }
            Ok(())
        })
        .expect("sending with TTL 1");
        // The path itself works: the same service answers a normal datagram.
        let control = format!("ttl64-{to}");
        let res = r.in_client(|| udp_echo(to, 100, &control));
        assert!(res.is_ok(), "{:#}\n{}", res.unwrap_err(), r.report());
        std::thread::sleep(Duration::from_millis(300));
        let seen = r.servers.udp_seen_containing(tag.as_bytes());
        assert!(
            seen.is_empty(),
            "a TTL 1 datagram to {to} reached backend(s) {seen:?}\n{}",
            r.report()
        );
    }
    let n = r.counter("ttl_exceeded");
    assert!(n >= 6, "ttl_exceeded counted {n}, 6 sent\n{}", r.report());
}

fn open_map(pin: &std::path::Path, name: &str) -> Result<Map> {
    let data = MapData::from_pin(pin.join(name))?;
    Ok(Map::from_map_data(data)?)
}

/// Delete the client's flows from a pinned map: CONNTRACK entries whose source is `client`
/// and `port`, and REVERSE entries whose destination is. Returns how many went.
fn forget_flows(pin: &std::path::Path, client: IpAddr, port: u16) -> Result<usize> {
    let (addr, _) = xlb::dataplane::addr_bytes(client);
    let port = port.to_be_bytes();
    let mut gone = 0;
    // The flow's entry: in the connection table, or (not confirmed yet) in UNCONFIRMED.
    for table in ["CONNTRACK", "UNCONFIRMED"] {
        let ct_map = open_map(pin, table).with_context(|| format!("{table} pin"))?;
        let mut ct: BpfHashMap<MapData, FlowKey, CtValue> = BpfHashMap::try_from(ct_map)?;
        let keys: Vec<FlowKey> = ct
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.src == addr && k.sport == port)
            .collect();
        for k in keys {
            ct.remove(&k)?;
            gone += 1;
        }
    }
    let rev_map = open_map(pin, "REVERSE").context("REVERSE pin")?;
    let mut rev: BpfHashMap<MapData, FlowKey, RevValue> = BpfHashMap::try_from(rev_map)?;
    let keys: Vec<FlowKey> = rev
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| k.dst == addr && k.dport == port)
        .collect();
    for k in keys {
        rev.remove(&k)?;
        gone += 1;
    }
    Ok(gone)
}

fn has_flow(pin: &std::path::Path, client: IpAddr, port: u16) -> bool {
    let (addr, _) = xlb::dataplane::addr_bytes(client);
    ["CONNTRACK", "UNCONFIRMED"].into_iter().any(|table| {
        let Ok(map) = open_map(pin, table) else {
            return false;
        };
        let Ok(ct) = BpfHashMap::<MapData, FlowKey, CtValue>::try_from(map) else {
            return false;
        };
        let found = ct
            .keys()
            .filter_map(|k| k.ok())
            .any(|k| k.src == addr && k.sport == port.to_be_bytes());
        found
    })
}

/// One UDP exchange through the VIP, then the flow is deleted from the connection table and
/// the backend sends again on its own. Returns the client's socket, the backend's socket and
/// the client's address as the backend saw it.
fn exchange_then_forget(
    r: &Running,
    vip: SocketAddr,
    backend_port: u16,
) -> Result<(UdpSocket, UdpSocket, SocketAddr)> {
    let b = r
        .lab
        .backend_ns(1)
        .enter(|| UdpSocket::bind((Ipv6Addr::UNSPECIFIED, backend_port)))?;
    b.set_read_timeout(Some(Duration::from_secs(3)))?;
    let c = r.in_client(|| -> Result<UdpSocket> {
        let local: SocketAddr = if vip.is_ipv4() {
            "0.0.0.0:0".parse()?
        } else {
            "[::]:0".parse()?
        };
        let c = UdpSocket::bind(local)?;
        c.connect(vip)?;
        Ok(c)
    })?;
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    c.send(b"hello")?;
    let mut buf = [0u8; 64];
    let (n, from) = b
        .recv_from(&mut buf)
        .context("the backend gets the request")?;
    ensure!(&buf[..n] == b"hello");
    b.send_to(b"first", from)?;
    let n = c
        .recv(&mut buf)
        .context("the first reply reaches the client")?;
    ensure!(&buf[..n] == b"first");
    let client_ip = match vip {
        SocketAddr::V4(_) => IpAddr::V4(CLIENT_V4),
        SocketAddr::V6(_) => IpAddr::V6(CLIENT_V6),
    };
    let port = c.local_addr()?.port();
    let gone = forget_flows(&r.xlb.pin_path, client_ip, port)?;
    ensure!(gone >= 1, "the flow was in the connection table");
    ensure!(!has_flow(&r.xlb.pin_path, client_ip, port));
    Ok((c, b, from))
}

fn backend_sources(packets: &[xlb_lab::capture::Packet], lab: &Lab) -> Vec<String> {
    let backends: Vec<IpAddr> = lab
        .backends_v4()
        .into_iter()
        .map(IpAddr::V4)
        .chain(lab.backends_v6().into_iter().map(IpAddr::V6))
        .collect();
    packets
        .iter()
        .filter(|p| !p.outgoing && backends.contains(&p.src))
        .map(|p| format!("{} → {} proto {} {:?}", p.src, p.dst, p.proto, p.sport))
        .collect()
}

/// A backend's reply whose connection-table entry is gone reaches the client from the VIP
/// (backend address serving one service: translated and the entry re-created), or, for a
/// shared backend address, is dropped; a capture on the client never shows a backend's own
/// address.
#[test]
fn stray_replies_never_leak_the_backend_address() {
    if skip() {
        return;
    }
    let name = "xlbt-stray";
    let mut r = Running::start(Lab::new(name, 2).expect("lab"), name).expect("xlb");
    let capture = Capture::start(r.lab.client_ns(), CLIENT_IFACE).expect("capture");

    // One service per backend address: translated, entry re-created.
    for vip in [v4(STRAY), v6(STRAY)] {
        let (c, b, from) = exchange_then_forget(&r, vip, STRAY_BACKEND)
            .unwrap_or_else(|e| panic!("{vip}: {e:#}\n{}", r.report()));
        let _ = capture.packets(Duration::ZERO);
        b.send_to(b"stray", from).unwrap();
        let mut buf = [0u8; 64];
        // A connected socket takes only datagrams from the VIP and service port.
        let got = c.recv(&mut buf);
        let packets = capture.packets(Duration::from_millis(300));
        let leaked = backend_sources(&packets, &r.lab);
        assert!(
            leaked.is_empty(),
            "{vip}: the client saw backend addresses: {leaked:?}\n{}",
            r.report()
        );
        assert!(
            matches!(got, Ok(n) if &buf[..n] == b"stray"),
            "{vip}: the stray reply reaches the client from the VIP: {got:?}; captured \
             {packets:?}\n{}",
            r.report()
        );
        let client_ip = if vip.is_ipv4() {
            IpAddr::V4(CLIENT_V4)
        } else {
            IpAddr::V6(CLIENT_V6)
        };
        assert!(
            has_flow(&r.xlb.pin_path, client_ip, c.local_addr().unwrap().port()),
            "{vip}: the flow's entry is re-created\n{}",
            r.report()
        );
    }
    let n = r.counter("stray_recreated");
    assert!(n >= 2, "stray_recreated counted {n}\n{}", r.report());

    // A backend address two services share: the reply cannot be placed, it is dropped.
    let (c, b, from) = exchange_then_forget(&r, v4(SHARED_A), SHARED_BACKEND)
        .unwrap_or_else(|e| panic!("shared: {e:#}\n{}", r.report()));
    let _ = capture.packets(Duration::ZERO);
    b.send_to(b"stray", from).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    let got = c.recv(&mut buf);
    let packets = capture.packets(Duration::from_millis(300));
    let leaked = backend_sources(&packets, &r.lab);
    assert!(
        leaked.is_empty(),
        "shared address: the client saw backend addresses: {leaked:?}\n{}",
        r.report()
    );
    assert!(got.is_err(), "shared address: the stray reply is dropped");
    let n = r.counter("stray_dropped");
    assert!(n >= 1, "stray_dropped counted {n}\n{}", r.report());
    assert!(r.xlb.is_running());
}

/// An ICMP error a backend sends about a balanced flow (here "port unreachable": nothing
/// listens on the backend port) reaches the client from the VIP, quoting the packet the client
/// sent (to the VIP and service port), so the client's connected socket sees it
/// (`ECONNREFUSED`); no packet from a backend address reaches the client.
#[test]
fn icmp_errors_from_a_backend_reach_the_client_from_the_vip() {
    if skip() {
        return;
    }
    let name = "xlbt-icmp";
    let r = Running::start(Lab::new(name, 2).expect("lab"), name).expect("xlb");
    let capture = Capture::start(r.lab.client_ns(), CLIENT_IFACE).expect("capture");
    for vip in [v4(CLOSED), v6(CLOSED)] {
        let got = r.in_client(|| -> Result<std::io::Result<usize>> {
            let local: SocketAddr = if vip.is_ipv4() {
                "0.0.0.0:0".parse()?
            } else {
                "[::]:0".parse()?
            };
            let c = UdpSocket::bind(local)?;
            c.connect(vip)?;
            c.set_read_timeout(Some(Duration::from_secs(2)))?;
            c.send(b"anyone there?")?;
            Ok(c.recv(&mut [0u8; 64]))
        });
        let got = got.expect("client socket");
        let packets = capture.packets(Duration::from_millis(200));
        let leaked = backend_sources(&packets, &r.lab);
        assert!(
            leaked.is_empty(),
            "{vip}: the client saw backend addresses: {leaked:?}\n{}",
            r.report()
        );
        assert!(
            matches!(&got, Err(e) if e.kind() == ErrorKind::ConnectionRefused),
            "{vip}: the backend's port unreachable reaches the client's socket as \
             ECONNREFUSED, got {got:?}; captured {packets:?}\n{}",
            r.report()
        );
    }
    let n = r.counter("icmp_to_client");
    assert!(n >= 2, "icmp_to_client counted {n}\n{}", r.report());
}

/// Why VLAN devices cannot be made here, if they cannot.
fn vlan_unsupported() -> Option<String> {
    let ns = Netns::new(format!("xlbt-vlanprobe-{}", std::process::id())).ok()?;
    let made = ns
        .exec([
            "ip", "link", "add", "p0", "type", "veth", "peer", "name", "p1",
        ])
        .and_then(|_| {
            ns.exec([
                "ip", "link", "add", "link", "p0", "name", "p0.5", "type", "vlan", "id", "5",
            ])
        });
    made.err().map(|e| {
        format!(
            "this kernel cannot create VLAN devices (CONFIG_VLAN_8021Q is not set or the 8021q \
             module is missing: {}); the VLAN trunk is covered by the packet fixtures",
            format!("{e:#}").trim()
        )
    })
}

/// The client reaches xlb over a VLAN trunk (tag 100 on the link, the addresses on VLAN
/// devices at both ends); the backends are untagged. The daemon learns the VLAN device over
/// netlink, and traffic flows both ways: replies leave tagged by XDP, not through the kernel.
#[test]
fn vlan_trunk_to_untagged_backends() {
    if skip() {
        return;
    }
    if let Some(why) = vlan_unsupported() {
        eprintln!("skipped: {why}");
        return;
    }
    let name = "xlbt-vlan";
    let lab = Lab::new(name, 2).expect("lab");
    let (client, lb) = (lab.client_ns(), lab.lb_ns());
    let cv = format!("{CLIENT_IFACE}.100");
    let lv = format!("{LB_CLIENT_IFACE}.100");
    ip(client, &format!("addr flush dev {CLIENT_IFACE}"));
    ip(
        client,
        &format!("link add link {CLIENT_IFACE} name {cv} type vlan id 100"),
    );
    ip(client, &format!("addr add {CLIENT_V4}/24 dev {cv}"));
    ip(
        client,
        &format!("-6 addr add {CLIENT_V6}/64 dev {cv} nodad"),
    );
    ip(client, &format!("link set {cv} up"));
    ip(client, &format!("route replace default via {LB_CLIENT_V4}"));
    ip(
        client,
        &format!("-6 route replace default via {LB_CLIENT_V6}"),
    );
    client
        .exec(["ethtool", "-K", cv.as_str(), "tx", "off"])
        .expect("ethtool");
    ip(lb, &format!("addr flush dev {LB_CLIENT_IFACE}"));
    ip(
        lb,
        &format!("link add link {LB_CLIENT_IFACE} name {lv} type vlan id 100"),
    );
    // (rp_filter is off: the lab sets it to 0 for `default` before any device exists.)
    ip(lb, &format!("addr add {LB_CLIENT_V4}/24 dev {lv}"));
    ip(lb, &format!("-6 addr add {LB_CLIENT_V6}/64 dev {lv} nodad"));
    ip(lb, &format!("link set {lv} up"));
    for to in [LB_CLIENT_V4.to_string(), LB_CLIENT_V6.to_string()] {
        client
            .exec(["ping", "-n", "-q", "-c1", "-W2", to.as_str()])
            .expect("ping over the VLAN");
    }

    let r = Running::start(lab, name).expect("xlb");
    r.xlb
        .wait_for("the VLAN device in VLANS", Duration::from_secs(5), || {
            Ok(r.xlb
                .log_text()
                .contains("VLAN device known to the data path")
                .then_some(()))
        })
        .expect("VLAN learnt");
    for to in [v4(BULK), v6(BULK)] {
        let res = r.in_client(|| download(to, 256 * 1024));
        assert!(
            res.is_ok(),
            "download from {to} over the VLAN trunk: {:#}\n{}",
            res.unwrap_err(),
            r.report()
        );
    }
    let c = r.counters();
    assert!(
        c.get("replies").copied().unwrap_or(0) > 0,
        "replies forwarded by XDP\n{}",
        r.report()
    );
    assert_eq!(
        c.get("egress_kernel").copied().unwrap_or(0),
        0,
        "replies towards the VLAN device leave tagged from XDP, not through the kernel\n{}",
        r.report()
    );
}

/// The daemon's own map writes on a real host: `TX_PORTS` holds exactly the interfaces xlb
/// attached to, `ADDRS` every VIP and backend address, and an attached interface that is
/// deleted and created again is followed to its new ifindex (link notifications over
/// netlink).
#[test]
fn daemon_keeps_tx_ports_and_addrs() {
    if skip() {
        return;
    }
    let name = "xlbt-txports";
    let r = Running::start(Lab::new(name, 2).expect("lab"), name).expect("xlb");
    let lb = r.lab.lb_ns();
    let ifindex = |iface: &'static str| {
        lb.enter(move || nix::net::if_::if_nametoindex(iface))
            .expect("ifindex")
    };
    let tx_ports = || -> Vec<u32> {
        let Ok(map) = open_map(&r.xlb.pin_path, "TX_PORTS") else {
            return Vec::new();
        };
        let Ok(m) = aya::maps::DevMapHash::try_from(map) else {
            return Vec::new();
        };
        let mut k: Vec<u32> = m.keys().filter_map(|k| k.ok()).collect();
        k.sort();
        k
    };
    let mut want = vec![ifindex(LB_CLIENT_IFACE), ifindex(LB_BACKENDS_IFACE)];
    want.sort();
    assert_eq!(tx_ports(), want, "TX_PORTS = the attached interfaces");

    let addrs = open_map(&r.xlb.pin_path, "ADDRS")
        .and_then(|m| Ok(BpfHashMap::<MapData, lb_common::AddrKey, u32>::try_from(m)?))
        .expect("ADDRS");
    let got: BTreeMap<IpAddr, u32> = addrs
        .iter()
        .filter_map(|e| e.ok())
        .map(|(k, v)| {
            let ip = if k.family == lb_common::AF_INET {
                IpAddr::from(<[u8; 4]>::try_from(&k.addr[..4]).unwrap())
            } else {
                IpAddr::from(k.addr)
            };
            (ip, v)
        })
        .collect();
    let mut expected: BTreeMap<IpAddr, u32> = BTreeMap::new();
    expected.insert(IpAddr::V4(VIP_V4), lb_common::ADDR_F_VIP);
    expected.insert(IpAddr::V6(VIP_V6), lb_common::ADDR_F_VIP);
    for i in 1..=2 {
        expected.insert(
            IpAddr::V4(xlb_lab::lab::backend_v4(i)),
            lb_common::ADDR_F_BACKEND,
        );
        expected.insert(
            IpAddr::V6(xlb_lab::lab::backend_v6(i)),
            lb_common::ADDR_F_BACKEND,
        );
    }
    assert_eq!(got, expected, "ADDRS");

    // The client link goes away and comes back under the same name with a new ifindex.
    let old = ifindex(LB_CLIENT_IFACE);
    ip(lb, &format!("link del {LB_CLIENT_IFACE}"));
    ip(
        lb,
        &format!("link add {LB_CLIENT_IFACE} type veth peer name spare-peer"),
    );
    let new = ifindex(LB_CLIENT_IFACE);
    assert_ne!(old, new);
    let mut want = vec![new, ifindex(LB_BACKENDS_IFACE)];
    want.sort();
    let (got, _) = r
        .xlb
        .wait_for(
            "TX_PORTS to follow the new ifindex",
            Duration::from_secs(5),
            || {
                let now = tx_ports();
                Ok((now == want).then_some(now))
            },
        )
        .unwrap_or_else(|e| panic!("{e:#}\nTX_PORTS now {:?}", tx_ports()));
    assert_eq!(got, want);
}

/// Delete the lb's client-side veth (its peer, the client's eth0, goes with it) and create
/// the pair again as the lab does: new ifindexes on both ends.
fn recreate_client_link(lab: &Lab) {
    let (lb, client) = (lab.lb_ns(), lab.client_ns());
    ip(lb, &format!("link del {LB_CLIENT_IFACE}"));
    ip(
        lb,
        &format!(
            "link add {LB_CLIENT_IFACE} type veth peer name {CLIENT_IFACE} netns {}",
            client.name()
        ),
    );
    ip(
        client,
        &format!("addr add {CLIENT_V4}/24 dev {CLIENT_IFACE}"),
    );
    ip(
        client,
        &format!("addr add {CLIENT_V6}/64 dev {CLIENT_IFACE} nodad"),
    );
    ip(client, &format!("link set {CLIENT_IFACE} up"));
    ip(client, &format!("route add default via {LB_CLIENT_V4}"));
    ip(client, &format!("-6 route add default via {LB_CLIENT_V6}"));
    // NAPI on the receiving end of XDP redirects, and full checksums from the sender (see
    // the lab).
    client
        .exec(["ethtool", "-K", CLIENT_IFACE, "gro", "on", "tx", "off"])
        .expect("ethtool");
    ip(
        lb,
        &format!("addr add {LB_CLIENT_V4}/24 dev {LB_CLIENT_IFACE}"),
    );
    ip(
        lb,
        &format!("addr add {LB_CLIENT_V6}/64 dev {LB_CLIENT_IFACE} nodad"),
    );
    lb.sysctl(&format!("net.ipv4.conf.{LB_CLIENT_IFACE}.rp_filter"), "0")
        .expect("sysctl");
    ip(lb, &format!("link set {LB_CLIENT_IFACE} up"));
}

/// An echo through the VIP that xlb balanced (its `replies` counter grows: the lab's kernel
/// could route the VIP to a backend by itself), retried for up to 10 s while links and XDP
/// settle.
fn echo_through_xlb(r: &Running, tag: &'static str) -> Result<()> {
    // Both ways through xlb: requests forwarded, replies rewritten.
    let replies = || {
        let c = r.counters();
        c.get("replies").copied().unwrap_or(0) + c.get("forwarded").copied().unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let before = replies();
        let e = match r.lab.client_ns().enter(|| udp_echo(v4(ECHO), 200, tag)) {
            Ok(()) if replies() >= before + 2 => return Ok(()),
            Ok(()) => anyhow::anyhow!("the echo came back, but not through xlb"),
            Err(e) => e,
        };
        if std::time::Instant::now() > deadline {
            return Err(e.context(format!("{tag}: no echo through xlb within 10 s")));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Interfaces come and go: an attached interface deleted and created again (a new ifindex)
/// gets XDP attached again by the running daemon (no restart), and a daemon that starts
/// while its pinned link belongs to a deleted interface attaches afresh instead of failing.
#[test]
fn daemon_reattaches_xdp_to_a_recreated_interface() {
    if skip() {
        return;
    }
    let name = "xlbt-reattach";
    let mut r = Running::start(Lab::new(name, 2).expect("lab"), name).expect("xlb");
    echo_through_xlb(&r, "before").expect("echo before");

    // While xlb runs.
    recreate_client_link(&r.lab);
    echo_through_xlb(&r, "recreated").unwrap_or_else(|e| {
        panic!(
            "{e:#}\ncounters {:?}\nxlb log:\n{}",
            r.counters(),
            r.xlb.log_text()
        )
    });
    assert!(
        r.xlb.log_text().contains("XDP attached again"),
        "the daemon says what it did:\n{}",
        r.xlb.log_text()
    );
    assert!(r.xlb.is_running());

    // Down and up again: still through xlb.
    ip(r.lab.lb_ns(), &format!("link set {LB_CLIENT_IFACE} down"));
    ip(r.lab.lb_ns(), &format!("link set {LB_CLIENT_IFACE} up"));
    echo_through_xlb(&r, "up again")
        .unwrap_or_else(|e| panic!("{e:#}\nxlb log:\n{}", r.xlb.log_text()));

    // While no xlb runs: its pinned link now belongs to a deleted interface.
    r.xlb.kill9().expect("kill -9");
    recreate_client_link(&r.lab);
    r.xlb
        .restart()
        .unwrap_or_else(|e| panic!("xlb starts: {e:#}\n{}", r.xlb.log_text()));
    echo_through_xlb(&r, "restarted")
        .unwrap_or_else(|e| panic!("{e:#}\nxlb log:\n{}", r.xlb.log_text()));
    assert!(
        r.xlb.log_text().contains("cannot be taken over"),
        "the stale link was replaced:\n{}",
        r.xlb.log_text()
    );
}

/// 3000/8000-byte UDP through the VIP when the client's path has a
/// 1280-byte hop (a router). Backend replies leave the backend in 1500-byte fragments; the
/// router cannot pass them on (IPv6: it may not fragment) and answers "packet too big"
/// about a fragment to the VIP: only if xlb hands that to the backend does it learn.
#[test]
fn large_udp_through_a_1280_router_both_ways() {
    if skip() {
        return;
    }
    let name = "xlbt-r1280";
    let lab = Lab::with_router(name, 2).expect("lab");
    let router = lab.router_ns().expect("router");
    ip(router, &format!("link set {ROUTER_CLIENT_IFACE} mtu 1280"));
    // Both ends of the client link at 1280 (a veth drops frames bigger than its MTU).
    ip(
        lab.client_ns(),
        &format!("link set {CLIENT_IFACE} mtu 1280"),
    );
    let r = Running::start_after_control(lab, name, || {
        for to in [direct(v4(0), ECHO_DIRECT), direct(v6(0), ECHO_DIRECT)] {
            for size in [3000, 8000] {
                udp_echo(to, size, &format!("control-{size}-{to}"))?;
            }
        }
        Ok(())
    })
    .expect("xlb");
    let mut fails = Vec::new();
    for to in [v4(ECHO), v6(ECHO)] {
        for size in [3000, 8000] {
            let tag = format!("r1280-{size}-{to}");
            let res = r.in_client(|| udp_echo(to, size, &tag));
            eprintln!(
                "{size} bytes to {to}: {:?}",
                res.as_ref().map_err(|e| format!("{e:#}"))
            );
            if let Err(e) = res {
                fails.push(format!("{size} to {to}: {e:#}"));
            }
        }
    }
    eprintln!("{}", r.report());
    assert!(fails.is_empty(), "{fails:#?}\n{}", r.report());
}
