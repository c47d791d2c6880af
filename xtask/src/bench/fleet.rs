//! Scenario 7, `fleet`: three xlb nodes behind a router running BIRD with ECMP
//! (`xlb_lab::fleet`), long-lived TCP connections exchanging 64 bytes every 20 ms; one node
//! dies (`kill -9`, link down), another is drained, both come back. For each event: the time
//! until the router's route has changed, the connections broken, and how long the
//! connections that had to move stalled (the longest gap between two exchanges around it).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use xlb_lab::fleet::{self, FleetLab, VIP_V4};

use super::results::{FleetEvent, FleetResults};
use super::Params;

/// Exchanges per connection: when each completed.
type Log = Arc<Mutex<Vec<Instant>>>;

struct Conn {
    log: Log,
    failed: Arc<Mutex<Option<String>>>,
}

fn start_conn(lab: &FleetLab, stop: &Arc<AtomicBool>) -> Result<Conn> {
    let to = SocketAddr::new(VIP_V4.into(), 7000);
    let s = lab
        .client
        .enter(|| TcpStream::connect_timeout(&to, Duration::from_secs(5)))
        .context("connecting to the VIP")?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    s.set_nodelay(true)?;
    let log: Log = Arc::default();
    let failed = Arc::new(Mutex::new(None));
    let (l, f, stop) = (log.clone(), failed.clone(), stop.clone());
    std::thread::spawn(move || {
        let mut s = s;
        let (buf, mut back) = ([0x5au8; 64], [0u8; 64]);
        let r = (|| -> std::io::Result<()> {
            while !stop.load(Ordering::Relaxed) {
                s.write_all(&buf)?;
                let mut got = 0;
                while got < back.len() {
                    match s.read(&mut back[got..]) {
                        Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                        Ok(n) => got += n,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                if back != buf {
                    return Err(std::io::Error::other("echo differs"));
                }
                l.lock().expect("log").push(Instant::now());
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        })();
        if let Err(e) = r {
            *f.lock().expect("failed") = Some(e.to_string());
        }
    });
    Ok(Conn { log, failed })
}

/// What the connections went through around `at` (from `at` - 1 s to `until`).
fn judge(
    name: &str,
    conns: &[Conn],
    at: Instant,
    until: Instant,
    route_ms: f64,
    broken_before: usize,
) -> FleetEvent {
    let mut gaps: Vec<f64> = Vec::new();
    let mut broken = 0;
    for c in conns {
        if c.failed.lock().expect("failed").is_some() {
            broken += 1;
            continue;
        }
        let log = c.log.lock().expect("log");
        let from = at.checked_sub(Duration::from_secs(1)).unwrap_or(at);
        let times: Vec<Instant> = log
            .iter()
            .copied()
            .filter(|t| *t >= from && *t <= until)
            .collect();
        let gap = times
            .windows(2)
            .map(|w| w[1].saturating_duration_since(w[0]))
            .max()
            .unwrap_or(until.saturating_duration_since(from));
        gaps.push(gap.as_secs_f64() * 1000.0);
    }
    gaps.sort_by(f64::total_cmp);
    // Exchanges are 20 ms apart; a connection whose longest gap is over 200 ms waited for
    // the network (its packets went to a path that had just gone, and TCP retransmitted).
    let stalled: Vec<f64> = gaps.iter().copied().filter(|g| *g > 200.0).collect();
    FleetEvent {
        event: name.to_string(),
        route_changed_ms: route_ms,
        broken: broken - broken_before.min(broken),
        stalled: stalled.len(),
        stall_p50_ms: stalled.get(stalled.len() / 2).copied().unwrap_or(0.0),
        stall_max_ms: gaps.last().copied().unwrap_or(0.0),
        drained_after_ms: None,
    }
}

fn broken(conns: &[Conn]) -> usize {
    conns
        .iter()
        .filter(|c| c.failed.lock().expect("failed").is_some())
        .count()
}

/// Poll the router's route every 5 ms until it goes through `want`; ms since `since`.
fn route_ms(lab: &FleetLab, want: &[usize], since: Instant) -> Result<f64> {
    let mut expect: Vec<_> = want.iter().map(|&i| fleet::node_v4(i)).collect();
    expect.sort();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if lab.vip_next_hops()? == expect {
            return Ok(since.elapsed().as_secs_f64() * 1000.0);
        }
        ensure!(
            Instant::now() < deadline,
            "the route did not change in 30 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn run(p: &Params) -> Result<FleetResults> {
    ensure!(
        fleet::bird_available(),
        "BIRD 2 is not installed (the bird2 package; `cargo xtask setup` installs it)"
    );
    let n = if p.quick { 30 } else { 100 };
    let settle = Duration::from_secs(if p.quick { 3 } else { 5 });
    let mut lab = FleetLab::new("xlbbench-fl", 3, 3)?;
    for i in 1..=3 {
        lab.start_xlb(i)?;
    }
    lab.wait_next_hops(&[1, 2, 3], Duration::from_secs(30))?;
    let stop = Arc::new(AtomicBool::new(false));
    let conns = (0..n)
        .map(|_| start_conn(&lab, &stop))
        .collect::<Result<Vec<_>>>()?;
    std::thread::sleep(settle);
    let mut events = Vec::new();
    let r = (|| -> Result<()> {
        // A node dies.
        let before = broken(&conns);
        let t = Instant::now();
        lab.kill_xlb(1)?;
        lab.node_link(1, false)?;
        let ms = route_ms(&lab, &[2, 3], t)?;
        std::thread::sleep(settle);
        events.push(judge(
            "node killed (kill -9, link down)",
            &conns,
            t,
            Instant::now(),
            ms,
            before,
        ));

        // A node is drained.
        let before = broken(&conns);
        let t = Instant::now();
        lab.xlb(2)?.cli_ok(&["node", "drain"])?;
        let ms = route_ms(&lab, &[3], t)?;
        let mut drained = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while drained.is_none() && Instant::now() < deadline {
            let s = lab.status(2)?;
            if s["announce"]["node"] == "drained" {
                drained = Some(t.elapsed().as_secs_f64() * 1000.0);
            } else {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        std::thread::sleep(settle);
        let mut e = judge(
            "node drained (xlb node drain)",
            &conns,
            t,
            Instant::now(),
            ms,
            before,
        );
        e.drained_after_ms = drained;
        events.push(e);

        // Both come back.
        let before = broken(&conns);
        let t = Instant::now();
        lab.node_link(1, true)?;
        lab.xlb(2)?.cli_ok(&["node", "undrain"])?;
        // Node 1's BIRD announces the routes its killed xlb left (XDP forwards on); its
        // xlb is restarted after.
        let ms = route_ms(&lab, &[1, 2, 3], t)?;
        lab.start_xlb(1)?;
        std::thread::sleep(settle);
        events.push(judge(
            "both back (link up, undrain; xlb restarted)",
            &conns,
            t,
            Instant::now(),
            ms,
            before,
        ));
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    r?;
    Ok(FleetResults {
        connections: n,
        events,
    })
}
