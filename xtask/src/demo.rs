//! `cargo xtask demo`: xlb in a lab, with a live table of how requests spread over backends.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use xlb_lab::client::Request;
use xlb_lab::config::DEMO_CONFIG;
use xlb_lab::lab::{self, Lab};

/// The longest a demo runs, whatever `--duration` says.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Per-request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(clap::Args)]
pub struct Args {
    /// Stop after this many seconds (default: at Ctrl-C; at most 3600).
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
    /// Requests per second, rotating over the services web, dns and web6 (1..=1000).
    #[arg(long, value_name = "N", default_value_t = 50)]
    rate: u32,
    /// A fleet instead: a router running BIRD with ECMP, three xlb nodes each running BIRD,
    /// three backends; a live table of where requests go per node and backend while the
    /// demo drains, kills and brings back nodes (needs BIRD 2, installed by setup).
    #[arg(long)]
    fleet: bool,
    /// With `--fleet`: how the services forward: `dsr-gue` (direct server return, the
    /// backends running `xlb decap`), `dsr-ipip` or `nat`.
    #[arg(long, value_name = "MODE", default_value = "dsr-gue")]
    forwarding: String,
}

/// Set by SIGINT/SIGTERM/SIGHUP: stop and clean up.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: std::ffi::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Replaces the default action of the stop signals (dying on the spot, leaving the namespaces
/// behind) with setting [`STOP`], so the guards run.
pub(crate) fn catch_stop_signals() -> Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }.with_context(|| format!("sigaction {sig}"))?;
    }
    Ok(())
}

pub(crate) fn stopped() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// A directory removed on drop unless kept.
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    fn new(prefix: &str) -> Result<TempDir> {
        let path = std::env::temp_dir().join(format!("{prefix}.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("mkdir {}", path.display()))?;
        Ok(TempDir { path, keep: false })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The services the demo config defines, as the client reaches them.
fn services() -> [(&'static str, Request); 3] {
    let v4 = IpAddr::V4(lab::VIP_V4);
    let v6 = IpAddr::V6(lab::VIP_V6);
    [
        ("web", Request::Http(SocketAddr::new(v4, 80))),
        ("dns", Request::Udp(SocketAddr::new(v4, 53))),
        ("web6", Request::Http(SocketAddr::new(v6, 80))),
    ]
}

#[derive(Default)]
struct ServiceStats {
    per_backend: BTreeMap<String, u64>,
    failures: u64,
    last_error: Option<String>,
}

#[derive(Default)]
struct Stats {
    services: BTreeMap<&'static str, ServiceStats>,
}

impl Stats {
    fn successes(&self) -> u64 {
        self.services
            .values()
            .flat_map(|s| s.per_backend.values())
            .sum()
    }

    fn failures(&self) -> u64 {
        self.services.values().map(|s| s.failures).sum()
    }
}

pub fn demo(args: Args) -> Result<()> {
    crate::require_root("demo")?;
    ensure!(
        (1..=1000).contains(&args.rate),
        "--rate must be in 1..=1000"
    );
    let duration = args
        .duration
        .map(Duration::from_secs)
        .unwrap_or(MAX_DURATION)
        .min(MAX_DURATION);
    catch_stop_signals()?;
    if args.fleet {
        return crate::demo_fleet::demo(args.rate, duration, &args.forwarding);
    }

    crate::setup::setup()?;
    crate::build(false)?;
    let xlb = match std::env::var_os("XLB_BIN") {
        Some(p) => PathBuf::from(p),
        None => crate::debug_bin("xlb"),
    };
    let lab_bin = crate::debug_bin("xlb-lab");
    if stopped() {
        eprintln!("interrupted");
        return Ok(());
    }

    let mut tmp = TempDir::new("xlb-demo")?;
    eprintln!("building the lab (namespaces {}-*)", xlb_lab::DEMO_PREFIX);
    let mut lab = Lab::new(xlb_lab::DEMO_PREFIX, 3)?;
    // veth delivers frames xlb sends back out of their ingress (XDP_TX: "too big" answers,
    // hairpin flows) only when the peer runs XDP too.
    lab.attach_xdp_to_lb_peers()?;
    let servers = lab.start_backend_servers(&lab_bin, &[8080], &[5353], &[])?;
    let config = tmp.path.join("xlb.toml");
    let log = tmp.path.join("xlb.log");
    // Keep the demo's socket, state and pins private, so it never meets a real xlb.
    let private = format!(
        "[daemon]\napi_socket = \"{dir}/xlb.sock\"\nstate_file = \"{dir}/state.json\"\npin_path = \"/sys/fs/bpf/xlb-demo-{pid}\"\n",
        dir = tmp.path.display(),
        pid = std::process::id()
    );
    std::fs::write(&config, DEMO_CONFIG.replacen("[daemon]\n", &private, 1))?;
    eprintln!(
        "starting {} run --config {} in {} (log: {})",
        xlb.display(),
        config.display(),
        lab.lb_ns().name(),
        log.display()
    );
    let result = run_with_xlb(&lab, &xlb, &config, &log, args.rate, duration);
    if result.is_err() {
        tmp.keep = true;
        eprintln!("kept {} for inspection", tmp.path.display());
    }
    drop(servers);
    drop(lab);
    result
}

fn run_with_xlb(
    lab: &Lab,
    xlb: &Path,
    config: &Path,
    log: &Path,
    rate: u32,
    duration: Duration,
) -> Result<()> {
    let mut daemon = lab.start_xlb(xlb, config, log, Duration::from_secs(20))?;
    eprintln!(
        "xlb is up; {rate} requests/s from {} ({}), Ctrl-C to stop",
        lab.client_ns().name(),
        lab.client_v4()
    );

    let services = services();
    let stats = Mutex::new(Stats::default());
    let stop_load = AtomicBool::new(false);
    let start = Instant::now();
    let deadline = start + duration;
    let tty = std::io::stdout().is_terminal();
    let mut died = None;
    std::thread::scope(|s| {
        s.spawn(|| {
            lab.client_ns()
                .enter(|| load(&services, rate, deadline, &stop_load, &stats))
        });
        // Redraw every second on a terminal, print every 5 s otherwise.
        let every = Duration::from_secs(if tty { 1 } else { 5 });
        let mut next_draw = start + every;
        loop {
            std::thread::sleep(Duration::from_millis(100));
            if let Ok(Some(st)) = daemon.try_wait() {
                died = Some(st);
                break;
            }
            let now = Instant::now();
            if stopped() || now >= deadline {
                break;
            }
            if now >= next_draw {
                draw(&stats, &services, start, rate, tty);
                next_draw += every;
            }
        }
        stop_load.store(true, Ordering::SeqCst);
    });
    draw(&stats, &services, start, rate, tty);

    let text = || {
        let t = std::fs::read_to_string(log).unwrap_or_default();
        lab::tail(&t, 40)
    };
    if let Some(st) = died {
        bail!("xlb died ({st}); its log:\n{}", text());
    }
    let st = daemon.stop()?;
    eprintln!("xlb stopped ({st})");
    let stats = stats.lock().expect("stats");
    if stats.successes() == 0 {
        bail!(
            "no request succeeded ({} failed); xlb's log:\n{}",
            stats.failures(),
            text()
        );
    }
    Ok(())
}

/// Sends requests at `rate`, rotating over the services, until stopped or the deadline; at
/// most `rate * MAX_DURATION` requests.
fn load(
    services: &[(&'static str, Request)],
    rate: u32,
    deadline: Instant,
    stop: &AtomicBool,
    stats: &Mutex<Stats>,
) {
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let max_requests = u64::from(rate) * MAX_DURATION.as_secs();
    let mut next = Instant::now();
    for (n, (name, req)) in services.iter().cycle().enumerate() {
        if n as u64 >= max_requests
            || stop.load(Ordering::SeqCst)
            || stopped()
            || Instant::now() >= deadline
        {
            break;
        }
        let answer = req.send(REQUEST_TIMEOUT);
        {
            let mut st = stats.lock().expect("stats");
            let svc = st.services.entry(name).or_default();
            match answer {
                Ok(backend) => *svc.per_backend.entry(backend).or_default() += 1,
                Err(e) => {
                    svc.failures += 1;
                    svc.last_error = Some(format!("{e:#}"));
                }
            }
        }
        next += interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > Duration::from_secs(1) {
            // Far behind (timeouts): carry on at the rate instead of bursting to catch up.
            next = now;
        }
    }
}

fn draw(
    stats: &Mutex<Stats>,
    services: &[(&'static str, Request)],
    start: Instant,
    rate: u32,
    tty: bool,
) {
    let st = stats.lock().expect("stats");
    let mut out = String::new();
    if tty {
        out.push_str("\x1b[H\x1b[2J");
    }
    let secs = start.elapsed().as_secs();
    let _ = writeln!(
        out,
        "xlb demo: {secs} s, {rate} req/s, {} ok, {} failed (Ctrl-C to stop)\n",
        st.successes(),
        st.failures()
    );
    let _ = writeln!(
        out,
        "{:<6} {:<30} {:<9} {:>8} {:>7}",
        "SVC", "TARGET", "BACKEND", "COUNT", "%"
    );
    let empty = ServiceStats::default();
    for (name, req) in services {
        let s = st.services.get(name).unwrap_or(&empty);
        let total: u64 = s.per_backend.values().sum::<u64>() + s.failures;
        let pct = |n: u64| {
            if total == 0 {
                0.0
            } else {
                100.0 * n as f64 / total as f64
            }
        };
        let mut first = true;
        let mut row = |backend: &str, n: u64| {
            let (svc, target) = if first {
                (name.to_string(), req.to_string())
            } else {
                (String::new(), String::new())
            };
            first = false;
            let _ = writeln!(
                out,
                "{svc:<6} {target:<30} {backend:<9} {n:>8} {:>6.1}%",
                pct(n)
            );
        };
        for (backend, &n) in &s.per_backend {
            row(backend, n);
        }
        row("failed", s.failures);
        if let Some(e) = &s.last_error {
            let _ = writeln!(out, "{:<6} last error: {e}", "");
        }
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}
