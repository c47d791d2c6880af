//! Passive health end to end, in namespaces with real servers and real clients: a bounded load
//! of new connections (about 600 a second) against three backends with TCP checks every 1 s
//! (unhealthy after 2); one backend's server is killed. The data path sees the refused
//! handshakes and the daemon marks the backend down within a poll or two, long before the
//! active checks would; with `redispatch = true` the refusals of the backend marked down are
//! held back and the clients' SYN retransmissions go to the healthy backends. The backend comes
//! back through the active checks when its server restarts.
//!
//! Needs root (skipped with a message otherwise). The two tests take turns (one load at a time
//! on a small machine).
use std::{
    net::{IpAddr, SocketAddr},
    sync::Mutex,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Result;
use nix::sys::signal::Signal;
use xlb_lab::{
    client,
    lab::{Lab, VIP_V4},
    netns::ChildGuard,
    xlbd::{cleanup_stale_pins, Xlbd},
};

/// One load at a time.
static TURN: Mutex<()> = Mutex::new(());

/// New connections per second, and for how long.
const RATE: u32 = 600;
const LOAD: Duration = Duration::from_secs(5);
/// When the server is killed, from the start of the load.
const KILL_AT: Duration = Duration::from_millis(1500);
/// Client threads the load is spread over.
const WORKERS: u32 = 12;
/// A connection's timeout: a SYN retransmission (1 s) fits.
const T: Duration = Duration::from_secs(3);
/// The victim: backend 2 (198.18.2.12, "b2").
const VICTIM: usize = 2;
const VICTIM_ADDR: &str = "198.18.2.12";

fn skip() -> bool {
    if !xlb_lab::is_root() {
        eprintln!("skipped: namespace tests need root");
        return true;
    }
    false
}

fn config(name: &str, redispatch: bool) -> String {
    format!(
        r#"[daemon]
interfaces = ["veth-client", "veth-backends"]
conntrack_size = 65536
{paths}
[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
protocol = "tcp"
target_group = "web-servers"

[[target_group]]
name = "web-servers"
port = 8080
deregistration_delay = "5s"
backends = ["198.18.2.11", "198.18.2.12", "198.18.2.13"]

[target_group.health_check]
protocol = "tcp"
interval = "1s"
timeout = "500ms"
healthy_threshold = 2
unhealthy_threshold = 2

[target_group.passive_health]
refused_threshold = 3
redispatch = {redispatch}
"#,
        paths = Xlbd::daemon_paths(name)
    )
}

/// One request of the load.
#[derive(Debug)]
struct Request {
    /// When it started, from the start of the load.
    start: Duration,
    took: Duration,
    result: Result<String, String>,
}

/// `RATE` new connections a second for `LOAD` (bounded: each request at most `T`, the whole
/// run at most `LOAD` + 2 `T`), from `workers` threads of the calling thread's namespace.
fn load(t0: Instant, workers: u32) -> Vec<Request> {
    let total = RATE * LOAD.as_secs() as u32;
    let gap = Duration::from_secs(1) / RATE;
    let deadline = t0 + LOAD + 2 * T;
    let vip = SocketAddr::new(IpAddr::V4(VIP_V4), 80);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                s.spawn(move || {
                    let mut out = Vec::new();
                    let mut k = w;
                    while k < total {
                        let due = t0 + gap * k;
                        let now = Instant::now();
                        if now > deadline {
                            break;
                        }
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        let start = Instant::now();
                        let result = client::http_get(vip, T).map_err(|e| format!("{e:#}"));
                        out.push(Request {
                            start: start - t0,
                            took: start.elapsed(),
                            result,
                        });
                        k += workers;
                    }
                    out
                })
            })
            .collect();
        let mut all: Vec<Request> = handles
            .into_iter()
            .flat_map(|h| h.join().expect("a load worker panicked"))
            .collect();
        all.sort_by_key(|r| r.start);
        all
    })
}

/// A new lab server for the victim (as the lab starts them), once it listens.
fn restart_server(lab: &Lab) -> Result<ChildGuard> {
    let ns = lab.backend_ns(VICTIM);
    let name = lab_name(VICTIM);
    let g = ns.spawn(
        xlb_lab::lab_bin()?,
        ["serve", "--name", name.as_str(), "--http", "8080"],
    )?;
    let addr: SocketAddr = format!("{VICTIM_ADDR}:8080").parse()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while ns
        .enter(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)))
        .is_err()
    {
        if Instant::now() > deadline {
            anyhow::bail!("the victim's server did not come up");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(g)
}

/// What the run says about the failover.
#[derive(Debug)]
struct Figures {
    /// Achieved rate of new connections.
    rate: f64,
    after_kill: usize,
    failed_after_kill: usize,
    /// Requests after the kill that took longer than 800 ms (a SYN retransmission).
    delayed: usize,
    /// First to last request after the kill that the dead backend refused (failed, or
    /// delayed by a withheld refusal): how long new connections still went to it.
    stop: Option<Duration>,
    /// From the first refused request's start to the daemon's passive event.
    marked_down_after: Option<Duration>,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Option<Duration>| {
            d.map_or("-".to_string(), |d| {
                format!("{:.0} ms", d.as_secs_f64() * 1e3)
            })
        };
        write!(
            f,
            "{:.0} new connections/s; after the kill {} requests, {} failed ({:.2} %), {} delayed \
             by a SYN retransmission; refused for {} from the first refusal; marked down {} \
             after it",
            self.rate,
            self.after_kill,
            self.failed_after_kill,
            100.0 * self.failed_after_kill as f64 / self.after_kill.max(1) as f64,
            self.delayed,
            ms(self.stop),
            ms(self.marked_down_after)
        )
    }
}

fn run(name: &str, redispatch: bool) -> Figures {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    cleanup_stale_pins(name);
    let lab = Lab::new(name, 3).expect("lab");
    let mut servers = lab
        .start_backend_servers(&xlb_lab::lab_bin().unwrap(), &[8080], &[], &[])
        .expect("servers");
    let xlb = Xlbd::start(&lab, name, &config(name, redispatch)).expect("xlb");
    for i in 1..=3 {
        let a = format!("198.18.2.{}", 10 + i);
        xlb.wait_for(&format!("{a} healthy"), Duration::from_secs(10), || {
            Ok(xlb
                .backend("web-servers", &a)?
                .filter(|b| b["state"] == "healthy")
                .map(|_| ()))
        })
        .unwrap();
    }

    let t0 = Instant::now() + Duration::from_millis(100);
    let wall0 = SystemTime::now() + Duration::from_millis(100);
    let (requests, killed) = std::thread::scope(|s| {
        let h = s.spawn(|| lab.client_ns().enter(|| load(t0, WORKERS)));
        std::thread::sleep((t0 + KILL_AT).saturating_duration_since(Instant::now()));
        let kill_sent = t0.elapsed();
        servers[VICTIM - 1].signal(Signal::SIGKILL).unwrap();
        let _ = servers[VICTIM - 1].wait_timeout(Duration::from_secs(5));
        // The server is gone from here on: a request started earlier may have been accepted
        // by it and reset as it died (in flight: counted neither way).
        let killed = t0.elapsed();
        (h.join().expect("load"), (kill_sent, killed))
    });
    let (kill_sent, killed) = killed;

    // Requests in flight at the kill (reset by the dying server) count neither way.
    let before: Vec<&Request> = requests
        .iter()
        .filter(|r| r.start + r.took < kill_sent)
        .collect();
    let after: Vec<&Request> = requests.iter().filter(|r| r.start >= killed).collect();
    let failed: Vec<&&Request> = after.iter().filter(|r| r.result.is_err()).collect();
    let delayed = after
        .iter()
        .filter(|r| r.took > Duration::from_millis(800))
        .count();
    let refused: Vec<Duration> = after
        .iter()
        .filter(|r| r.result.is_err() || r.took > Duration::from_millis(800))
        .map(|r| r.start)
        .collect();
    let stop = match (refused.first(), refused.last()) {
        (Some(a), Some(b)) => Some(*b - *a),
        _ => None,
    };
    let events: Vec<serde_json::Value> =
        serde_json::from_str(&xlb.cli_ok(&["events", "--json"]).unwrap()).unwrap();
    let passive = events
        .iter()
        .find(|e| {
            e["kind"] == "passive"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(VICTIM_ADDR))
        })
        .cloned();
    let marked_down_after = passive
        .as_ref()
        .zip(refused.first())
        .and_then(|(e, first)| {
            let at = UNIX_EPOCH + Duration::from_secs_f64(e["time"].as_f64()?);
            at.duration_since(wall0 + *first).ok()
        });
    let span = requests
        .last()
        .map_or(Duration::from_secs(1), |r| r.start)
        .max(Duration::from_millis(1));
    let figures = Figures {
        rate: requests.len() as f64 / span.as_secs_f64(),
        after_kill: after.len(),
        failed_after_kill: failed.len(),
        delayed,
        stop,
        marked_down_after,
    };
    eprintln!(
        "{name} (redispatch = {redispatch}): {} requests, {} before the kill at {killed:?}; {figures}",
        requests.len(),
        before.len()
    );
    for l in xlb
        .log_text()
        .lines()
        .filter(|l| l.contains("passive") || l.contains("data path updated"))
        .take(6)
    {
        eprintln!("  log: {l}");
    }
    for f in failed.iter().take(5) {
        eprintln!("  failed at {:?}: {:?}", f.start, f.result);
    }

    // Sanity of the run itself: the load reached every backend before the kill, and no
    // request failed before it.
    assert!(
        before.iter().all(|r| r.result.is_ok()),
        "failures of requests done before the kill: {:?}",
        before.iter().find(|r| r.result.is_err())
    );
    assert!(
        before
            .iter()
            .any(|r| r.result.as_deref() == Ok(lab_name(VICTIM).as_str())),
        "the victim served before the kill"
    );
    assert!(
        after
            .iter()
            .all(|r| r.result.as_deref() != Ok(lab_name(VICTIM).as_str())),
        "nothing is served by a killed server"
    );

    // The backend was marked down by passive health, with its reason shown.
    let e = passive.unwrap_or_else(|| panic!("no passive event for {VICTIM_ADDR}: {events:#?}"));
    let msg = e["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("→ unhealthy (passive: ") && msg.contains("refused handshakes"),
        "{msg}"
    );
    let b = xlb.backend("web-servers", VICTIM_ADDR).unwrap().unwrap();
    assert_eq!(b["state"], "unhealthy");
    let reason = b["reason"].as_str().unwrap_or_default().to_string();
    assert!(
        reason.starts_with("passive: ") || reason.contains("refused"),
        "{reason}"
    );
    let shown = xlb.cli_ok(&["backends", "web-servers"]).unwrap();
    assert!(shown.contains("unhealthy"), "{shown}");

    // It comes back through the active checks once its server restarts.
    servers[VICTIM - 1] = restart_server(&lab).expect("restart");
    let (_, took) = xlb
        .wait_for("the victim healthy again", Duration::from_secs(15), || {
            Ok(xlb
                .backend("web-servers", VICTIM_ADDR)?
                .filter(|b| b["state"] == "healthy")
                .map(|_| ()))
        })
        .unwrap();
    eprintln!("{name}: {VICTIM_ADDR} healthy again {took:?} after its server restarted");
    let back = lab.client_ns().enter(|| {
        (0..60)
            .filter_map(|_| client::http_get(SocketAddr::new(IpAddr::V4(VIP_V4), 80), T).ok())
            .filter(|n| *n == lab_name(VICTIM))
            .count()
    });
    assert!(back > 0, "the victim receives connections again");
    figures
}

fn lab_name(i: usize) -> String {
    xlb_lab::lab::backend_name(i)
}

#[test]
fn refused_handshakes_take_a_dead_backend_out_within_milliseconds() {
    if skip() {
        return;
    }
    let f = run("xlbt-pas", false);
    let stop = f.stop.expect("the dead backend refused some handshakes");
    assert!(
        stop < Duration::from_millis(200),
        "new connections went to the dead backend for {stop:?} after its first refusal: {f:?}"
    );
    let share = f.failed_after_kill as f64 / f.after_kill.max(1) as f64;
    assert!(
        share < 0.01,
        "{} of {} requests after the kill failed ({:.2} %): {f:?}",
        f.failed_after_kill,
        f.after_kill,
        share * 100.0
    );
}

#[test]
fn redispatch_turns_refusals_into_delays() {
    if skip() {
        return;
    }
    let f = run("xlbt-pasr", true);
    assert_eq!(
        f.failed_after_kill, 0,
        "with redispatch no request fails (a SYN retransmission delay is allowed): {f:?}"
    );
}

/// A UDP service whose backends all pass their TCP checks, but one stops answering UDP: it is
/// ejected (outlier detection), its new flows go to the others meanwhile, and it returns
/// when the ejection ends.
#[test]
fn a_backend_that_answers_no_udp_is_ejected_for_a_while() {
    if skip() {
        return;
    }
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let name = "xlbt-pasu";
    cleanup_stale_pins(name);
    let lab = Lab::new(name, 3).expect("lab");
    let mut servers = lab
        .start_backend_servers(&xlb_lab::lab_bin().unwrap(), &[8080], &[5353], &[])
        .expect("servers");
    let config = format!(
        r#"[daemon]
interfaces = ["veth-client", "veth-backends"]
conntrack_size = 65536
{paths}
[[service]]
name = "dns"
vip = "198.18.100.1"
port = 53
protocol = "udp"
target_group = "dns-servers"

[[target_group]]
name = "dns-servers"
port = 5353
backends = ["198.18.2.11", "198.18.2.12", "198.18.2.13"]

[target_group.health_check]
protocol = "tcp"
port = 8080
interval = "1s"
timeout = "500ms"
healthy_threshold = 2
unhealthy_threshold = 2

[target_group.passive_health]
window = "2s"
min_udp_flows = 10
udp_unanswered_share = 0.9
base_ejection = "5s"
max_ejection = "10s"
max_ejection_percent = 50
"#,
        paths = Xlbd::daemon_paths(name)
    );
    let xlb = Xlbd::start(&lab, name, &config).expect("xlb");
    for i in 1..=3 {
        let a = format!("198.18.2.{}", 10 + i);
        xlb.wait_for(&format!("{a} healthy"), Duration::from_secs(10), || {
            Ok(xlb
                .backend("dns-servers", &a)?
                .filter(|b| b["state"] == "healthy")
                .map(|_| ()))
        })
        .unwrap();
    }
    let vip = SocketAddr::new(IpAddr::V4(VIP_V4), 53);
    // Every backend answers at first.
    let answered = |n: usize| {
        lab.client_ns().enter(|| {
            (0..n)
                // A UDP client retries once (a datagram lost on a busy 2-core machine is
                // not what this test is about).
                .filter_map(|_| {
                    (0..2).find_map(|_| client::udp_request(vip, Duration::from_millis(300)).ok())
                })
                .collect::<Vec<String>>()
        })
    };
    let first = answered(30);
    assert_eq!(first.len(), 30, "all answered before: {first:?}");
    // The victim's UDP server stops; its HTTP port (the check's) keeps accepting.
    servers[VICTIM - 1].stop().unwrap();
    let name_v = lab_name(VICTIM);
    let _http_only = lab
        .backend_ns(VICTIM)
        .spawn(
            xlb_lab::lab_bin().unwrap(),
            ["serve", "--name", name_v.as_str(), "--http", "8080"],
        )
        .unwrap();
    // New flows (fresh source ports), 100 a second, not waiting for answers: bounded at 5 s.
    let ejected = lab.client_ns().enter(|| {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut socks = Vec::new();
        while Instant::now() < deadline {
            if let Ok(s) = std::net::UdpSocket::bind("0.0.0.0:0") {
                let _ = s.connect(vip).and_then(|_| s.send(b"xlb-lab\n"));
                socks.push(s);
            }
            std::thread::sleep(Duration::from_millis(10));
            if socks.len() % 20 == 0 {
                let b = xlb.backend("dns-servers", VICTIM_ADDR).ok().flatten();
                if let Some(b) = b.filter(|b| !b["receiving_new_flows"].as_bool().unwrap_or(true)) {
                    return Some(b);
                }
            }
        }
        None
    });
    let b = ejected.expect("the victim was ejected within 5 s");
    let reason = b["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("new UDP flows unanswered") && reason.contains("ejected for 5s"),
        "{reason}"
    );
    assert_eq!(b["state"], "healthy", "its checks still pass");
    let events = xlb.cli_ok(&["events"]).unwrap();
    assert!(
        events.contains("passive") && events.contains("ejected for 5s"),
        "{events}"
    );
    // Meanwhile every new flow is answered by the others.
    let during = answered(30);
    assert_eq!(during.len(), 30, "answered while ejected: {during:?}");
    assert!(during.iter().all(|n| *n != name_v), "{during:?}");
    // The ejection ends by itself.
    xlb.wait_for("the ejection over", Duration::from_secs(15), || {
        Ok(xlb
            .cli_ok(&["events", "--json"])?
            .contains("ejection over")
            .then_some(()))
    })
    .unwrap();
}

/// A backend that stops answering SYNs at all (dropped by a firewall in its namespace): the
/// sampled SYNs go unanswered and it is marked down for that, before the active checks (every
/// 1 s, 500 ms timeout, unhealthy after 2) would notice; the clients' SYN retransmissions go
/// to the others.
#[test]
fn unanswered_syns_take_a_silent_backend_out() {
    if skip() {
        return;
    }
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let name = "xlbt-pass";
    cleanup_stale_pins(name);
    let lab = Lab::new(name, 3).expect("lab");
    let _servers = lab
        .start_backend_servers(&xlb_lab::lab_bin().unwrap(), &[8080], &[], &[])
        .expect("servers");
    let config = config(name, false).replace(
        "refused_threshold = 3\n",
        "refused_threshold = 3\nunanswered_threshold = 2\nunanswered_timeout = \"200ms\"\n",
    );
    let xlb = Xlbd::start(&lab, name, &config).expect("xlb");
    for i in 1..=3 {
        let a = format!("198.18.2.{}", 10 + i);
        xlb.wait_for(&format!("{a} healthy"), Duration::from_secs(10), || {
            Ok(xlb
                .backend("web-servers", &a)?
                .filter(|b| b["state"] == "healthy")
                .map(|_| ()))
        })
        .unwrap();
    }
    let t0 = Instant::now() + Duration::from_millis(100);
    let (requests, silenced) = std::thread::scope(|s| {
        // Clients whose SYNs go unanswered wait for their retransmission: enough of them
        // that new SYNs keep coming meanwhile (as from many independent clients).
        let h = s.spawn(|| lab.client_ns().enter(|| load(t0, 64)));
        std::thread::sleep((t0 + KILL_AT).saturating_duration_since(Instant::now()));
        let silenced = t0.elapsed();
        lab.backend_ns(VICTIM)
            .exec([
                "nft",
                "add table inet xlbt; add chain inet xlbt in { type filter hook input priority 0; }; \
                 add rule inet xlbt in tcp dport 8080 tcp flags & (syn | ack) == syn drop",
            ])
            .expect("nft");
        (h.join().expect("load"), silenced)
    });
    let after: Vec<&Request> = requests.iter().filter(|r| r.start >= silenced).collect();
    let failed = after.iter().filter(|r| r.result.is_err()).count();
    let delayed = after
        .iter()
        .filter(|r| r.took > Duration::from_millis(800))
        .count();
    eprintln!(
        "{name}: after the SYN drop {} requests, {failed} failed, {delayed} delayed by a SYN \
         retransmission",
        after.len()
    );
    let mut by: std::collections::BTreeMap<String, usize> = Default::default();
    for r in &after {
        *by.entry(r.result.clone().unwrap_or_else(|_| "failed".into()))
            .or_default() += 1;
    }
    let slow: Vec<Duration> = after
        .iter()
        .filter(|r| r.took > Duration::from_millis(800))
        .map(|r| r.start)
        .collect();
    eprintln!("{name}: after the drop at {silenced:?}: {by:?}; delayed ones started at {slow:?}");
    let events = xlb.cli_ok(&["events"]).unwrap();
    let down = events
        .lines()
        .find(|l| l.contains(VICTIM_ADDR) && l.contains("→ unhealthy"))
        .unwrap_or_else(|| panic!("{VICTIM_ADDR} was not marked down: {events}"))
        .to_string();
    eprintln!("{name}: {down}");
    assert!(
        down.contains("passive") && down.contains("unanswered SYNs"),
        "marked down by passive health, before the active checks: {down}"
    );
    // (Requests in the few milliseconds `nft` takes may still be answered.)
    assert!(
        after
            .iter()
            .filter(|r| r.start > silenced + Duration::from_millis(100))
            .all(|r| r.result.as_deref() != Ok(lab_name(VICTIM).as_str())),
        "nothing answered by the silenced backend"
    );
}
