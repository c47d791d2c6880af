//! `cargo xtask demo --fleet`: three xlb nodes behind a router running BIRD with ECMP
//! (`xlb_lab::fleet`), a stream of UDP requests (each a new flow) and long-lived TCP echo
//! connections (IPv4 and IPv6) from the client, and a live table of where the requests go per node and
//! backend while the demo changes the fleet every 15 s: node 2 drained, node 2 back, node 1
//! killed (`kill -9`, link down), node 1 back.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use xlb_lab::client::udp_request;
use xlb_lab::echo_pool::EchoPool;
use xlb_lab::fleet::{self, FleetLab, VIP_V4, VIP_V6};

use crate::demo::stopped;

const NODES: usize = 3;
const BACKENDS: usize = 3;
const TCP_CONNS: usize = 12;
const TCP_CONNS_V6: usize = 6;
/// How long each phase of the scripted changes lasts.
const PHASE: Duration = Duration::from_secs(15);

/// What the demo does to the fleet, in turn.
const PHASES: [&str; 4] = [
    "all nodes serving",
    "node 2 drained (xlb node drain)",
    "node 1 killed (kill -9, link down); node 2 back",
    "node 1 back (link up, xlb restarted)",
];

#[derive(Default)]
struct Client {
    per_backend: BTreeMap<String, u64>,
    failed: u64,
}

pub fn demo(rate: u32, duration: Duration, forwarding: &str) -> Result<()> {
    crate::require_root("demo --fleet")?;
    anyhow::ensure!((1..=1000).contains(&rate), "--rate must be in 1..=1000");
    crate::setup::setup()?;
    anyhow::ensure!(
        fleet::bird_available(),
        "BIRD 2 is not installed (the bird2 package; `cargo xtask setup` installs it)"
    );
    crate::build(false)?;
    if stopped() {
        return Ok(());
    }
    let prefix = format!("{}-fleet", xlb_lab::DEMO_PREFIX);
    eprintln!("building the fleet lab (namespaces {prefix}-*)");
    let forwarding = fleet::Forwarding::parse(forwarding)?;
    eprintln!("forwarding: {forwarding:?}");
    let mut lab = FleetLab::with_forwarding(&prefix, NODES, BACKENDS, forwarding)?;
    for i in 1..=NODES {
        lab.start_xlb(i)?;
    }
    lab.wait_next_hops(&[1, 2, 3], Duration::from_secs(30))?;
    eprintln!(
        "every node announces {VIP_V4} and {VIP_V6}; {rate} UDP requests/s, {TCP_CONNS} IPv4 \
         and {TCP_CONNS_V6} IPv6 TCP connections"
    );

    let client = Mutex::new(Client::default());
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let deadline = start + duration;
    let tty = std::io::stdout().is_terminal();
    // Long-lived echo connections on one event loop: 256 bytes every 200 ms each, checked.
    let mut pool = EchoPool::new(Duration::from_millis(200))?;
    pool.open(
        &lab.client,
        SocketAddr::new(VIP_V4.into(), 7000),
        TCP_CONNS,
        "v4-",
    )?;
    pool.open(
        &lab.client,
        SocketAddr::new(VIP_V6.into(), 7000),
        TCP_CONNS_V6,
        "v6-",
    )?;
    let result = std::thread::scope(|s| -> Result<()> {
        let ns = lab.client.path();
        let (stop_l, client_l) = (&stop, &client);
        s.spawn(move || {
            // This thread's sockets belong to the client's namespace.
            let joined = std::fs::File::open(&ns)
                .map_err(|e| e.to_string())
                .and_then(|f| {
                    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| e.to_string())
                });
            match joined {
                Ok(()) => load(rate, stop_l, deadline, client_l),
                Err(e) => eprintln!("cannot enter {}: {e}", ns.display()),
            }
        });
        let r = (|| -> Result<()> {
            let mut phase = 0;
            let mut phase_start = Instant::now();
            let mut prev: BTreeMap<usize, BTreeMap<String, u64>> = BTreeMap::new();
            let mut next_draw = Instant::now() + Duration::from_secs(1);
            while !stopped() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
                if phase_start.elapsed() >= PHASE {
                    phase = (phase + 1) % PHASES.len();
                    phase_start = Instant::now();
                    change(&mut lab, phase)?;
                }
                if Instant::now() >= next_draw {
                    next_draw += Duration::from_secs(if tty { 1 } else { 5 });
                    let now = per_node(&lab);
                    draw(&lab, PHASES[phase], start, &now, &prev, &client, &pool, tty);
                    prev = now;
                }
            }
            Ok(())
        })();
        stop.store(true, Ordering::SeqCst);
        r
    });
    drop(pool);
    drop(lab);
    result
}

/// The scripted change that starts `phase`.
fn change(lab: &mut FleetLab, phase: usize) -> Result<()> {
    match phase {
        0 => {}
        1 => {
            lab.xlb(2)?.cli_ok(&["node", "drain"])?;
        }
        2 => {
            lab.kill_xlb(1)?;
            lab.node_link(1, false)?;
            lab.xlb(2)?.cli_ok(&["node", "undrain"])?;
        }
        _ => {
            lab.node_link(1, true)?;
            lab.start_xlb(1).context("restarting xlb on node 1")?;
        }
    }
    Ok(())
}

/// UDP requests at `rate`, each from a new source port (a new flow).
fn load(rate: u32, stop: &AtomicBool, deadline: Instant, client: &Mutex<Client>) {
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let mut next = Instant::now();
    let to = SocketAddr::new(VIP_V4.into(), 53);
    while !stop.load(Ordering::Relaxed) && !stopped() && Instant::now() < deadline {
        let r = udp_request(to, Duration::from_millis(500));
        {
            let mut c = client.lock().expect("client");
            match r {
                Ok(name) => *c.per_backend.entry(name).or_default() += 1,
                Err(_) => c.failed += 1,
            }
        }
        next += interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > Duration::from_secs(1) {
            next = now;
        }
    }
}

/// UDP requests each node sent to each backend (its per-backend `packets`: one a request), by node;
/// a node whose xlb does not answer is left out.
fn per_node(lab: &FleetLab) -> BTreeMap<usize, BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for i in 1..=NODES {
        let Ok(x) = lab.xlb(i) else { continue };
        let Ok(list) = x.backends("dns-servers") else {
            continue;
        };
        let m = list
            .iter()
            .map(|b| {
                (
                    b["address"].as_str().unwrap_or("?").to_string(),
                    b["counters"]["packets"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        out.insert(i, m);
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn draw(
    lab: &FleetLab,
    phase: &str,
    start: Instant,
    now: &BTreeMap<usize, BTreeMap<String, u64>>,
    prev: &BTreeMap<usize, BTreeMap<String, u64>>,
    client: &Mutex<Client>,
    pool: &EchoPool,
    tty: bool,
) {
    let mut out = String::new();
    if tty {
        out.push_str("\x1b[H\x1b[2J");
    }
    let _ = writeln!(
        out,
        "xlb fleet demo: {} s; now: {phase} (changes every {} s; Ctrl-C to stop)\n",
        start.elapsed().as_secs(),
        PHASE.as_secs()
    );
    for vip in [IpAddr::from(VIP_V4), IpAddr::from(VIP_V6)] {
        let hops = lab
            .next_hop_nodes(vip)
            .map(|h| {
                h.iter()
                    .map(|i| format!("node{i}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_else(|e| format!("? ({e})"));
        let _ = writeln!(out, "router's next hops for {vip}: {hops}");
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "UDP requests each node sent to each backend since the last redraw:"
    );
    let backends: Vec<String> = (1..=BACKENDS)
        .map(|i| fleet::backend_v4(i).to_string())
        .collect();
    let _ = write!(out, "{:<7} {:<10} {:<10}", "NODE", "STATE", "ANNOUNCED");
    for (i, _) in backends.iter().enumerate() {
        let _ = write!(out, " {:>8}", format!("b{}", i + 1));
    }
    out.push('\n');
    for i in 1..=NODES {
        let (state, announced) = match lab.status(i) {
            Ok(s) => (
                s["announce"]["node"].as_str().unwrap_or("?").to_string(),
                if s["announce"]["vips"][0]["announced"] == true {
                    "yes"
                } else {
                    "no"
                }
                .to_string(),
            ),
            Err(_) => ("down".to_string(), "-".to_string()),
        };
        let _ = write!(out, "{:<7} {state:<10} {announced:<10}", format!("node{i}"));
        for b in &backends {
            let n = now.get(&i).and_then(|m| m.get(b)).copied();
            let p = prev.get(&i).and_then(|m| m.get(b)).copied();
            let cell = match (n, p) {
                (Some(n), Some(p)) => n.saturating_sub(p).to_string(),
                (Some(_), None) => "…".to_string(),
                _ => "-".to_string(),
            };
            let _ = write!(out, " {cell:>8}");
        }
        out.push('\n');
    }
    let c = client.lock().expect("client");
    let _ = write!(out, "\nclient: UDP answers by backend:");
    for (name, n) in &c.per_backend {
        let _ = write!(out, " {name} {n}");
    }
    let _ = writeln!(out, ", unanswered {}", c.failed);
    let _ = writeln!(
        out,
        "client: {TCP_CONNS} IPv4 and {TCP_CONNS_V6} IPv6 long-lived TCP connections, {} broken, \
         {} bytes echoed intact",
        pool.failures().len(),
        pool.bytes()
    );
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}
