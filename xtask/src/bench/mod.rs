//! `cargo xtask bench`: how fast xlb is, and how it compares with what a user would otherwise
//! pick, measured on this machine in one run. See BENCHMARKS.md for the method.
//!
//! Scenarios (`--only NAME`, by name or number):
//! 1. `prog`: per-packet cost of the XDP program (`BPF_PROG_TEST_RUN`);
//! 2. `forwarding`: UDP forwarding at a fixed rate through xlb, kernel routing, nftables DNAT;
//! 3. `tcp`: TCP connection rate and request latency through those and HAProxy;
//! 4. `maglev`: table build times, and a backend change until it is live;
//! 5. `control`: backend death until removal (with health checks), scaling trigger (by hand
//!    and by a policy) until the first packet at the new backend;
//! 6. `memory`: daemon RSS and BPF map memory for 1 and 100 services;
//! 7. `fleet`: three xlb nodes behind a BIRD router with ECMP: connections broken and
//!    stalled, and the router's reaction time, when a node dies, is drained, comes back;
//! 8. `sweep`: CPU time of one conntrack sweep (batch map calls) of a full 1Mi-entry table.
//!
//! `cargo xtask bench` (a debug build of xtask) builds the release binaries with the `xlb`
//! feature of xtask and runs the release xtask, so that the in-process measurements are of
//! optimized code.

#[cfg_attr(not(feature = "xlb"), allow(dead_code))]
mod calls;
mod charts;
mod control;
mod fleet;
mod load;
mod maglev;
mod memory;
#[cfg(feature = "xlb")]
mod prog;
#[cfg_attr(not(feature = "xlb"), allow(dead_code))]
mod rawbpf;
mod results;
#[cfg(feature = "xlb")]
mod sweep;
mod sys;
mod topo;
mod traffic;
mod xlbd;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

use results::Results;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Short runs (under a minute in all; rough figures).
    #[arg(long)]
    quick: bool,
    /// Run only these scenarios (repeat the flag or separate with commas).
    #[arg(long, value_delimiter = ',', value_name = "NAME")]
    only: Vec<Scenario>,
    /// Where to write the results (default: bench/results in the workspace).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Use the release binaries as they are: do not build them first.
    #[arg(long)]
    no_build: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Scenario {
    /// 1: per-packet cost of the XDP program.
    #[value(alias = "1")]
    Prog,
    /// 2: UDP forwarding through xlb and the baselines.
    #[value(alias = "2")]
    Forwarding,
    /// 3: TCP connection rate and request latency.
    #[value(alias = "3")]
    Tcp,
    /// 4: Maglev build and backend-change times.
    #[value(alias = "4")]
    Maglev,
    /// 5: control plane reaction times.
    #[value(alias = "5")]
    Control,
    /// 6: memory.
    #[value(alias = "6")]
    Memory,
    /// 7: a fleet of nodes failing over (needs BIRD 2).
    #[value(alias = "7")]
    Fleet,
    /// 8: conntrack sweep of a full table.
    #[value(alias = "8")]
    Sweep,
}

impl Scenario {
    const ALL: [Scenario; 8] = [
        Scenario::Prog,
        Scenario::Forwarding,
        Scenario::Tcp,
        Scenario::Maglev,
        Scenario::Control,
        Scenario::Memory,
        Scenario::Fleet,
        Scenario::Sweep,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Prog => "prog",
            Scenario::Forwarding => "forwarding",
            Scenario::Tcp => "tcp",
            Scenario::Maglev => "maglev",
            Scenario::Control => "control",
            Scenario::Memory => "memory",
            Scenario::Fleet => "fleet",
            Scenario::Sweep => "sweep",
        }
    }
}

/// Sizes of a run: the full one, or `--quick`.
#[derive(Clone, Debug)]
#[cfg_attr(not(feature = "xlb"), allow(dead_code))]
pub struct Params {
    pub quick: bool,
    /// BPF_PROG_TEST_RUN calls per case.
    pub prog_calls: u64,
    pub udp_rate: f64,
    pub udp_duration: Duration,
    pub udp_ports_per_source: u16,
    /// Packets the generator sends back to back (one `sendmmsg`).
    pub udp_burst: usize,
    pub conn_rate: f64,
    pub conn_workers: usize,
    pub max_workers: usize,
    pub tcp_duration: Duration,
    pub latency_rate: f64,
    pub latency_connections: usize,
    /// Repetitions of each Maglev build.
    pub maglev_reps: usize,
    /// Backend changes applied per size.
    pub table_changes: usize,
    /// Samples of the daemon's change-to-live time and of backend death.
    pub daemon_samples: usize,
}

impl Params {
    fn new(quick: bool) -> Params {
        if quick {
            Params {
                quick,
                prog_calls: 10_000,
                udp_rate: 150_000.0,
                udp_duration: Duration::from_millis(1500),
                udp_ports_per_source: 16,
                udp_burst: 64,
                conn_rate: 4_000.0,
                conn_workers: 32,
                max_workers: 16,
                tcp_duration: Duration::from_secs(1),
                latency_rate: 1_000.0,
                latency_connections: 4,
                maglev_reps: 3,
                table_changes: 3,
                daemon_samples: 1,
            }
        } else {
            Params {
                quick,
                prog_calls: 100_000,
                udp_rate: 150_000.0,
                udp_duration: Duration::from_secs(6),
                udp_ports_per_source: 64,
                udp_burst: 64,
                conn_rate: 4_000.0,
                conn_workers: 32,
                max_workers: 16,
                tcp_duration: Duration::from_secs(5),
                latency_rate: 2_000.0,
                latency_connections: 8,
                maglev_reps: 15,
                table_changes: 8,
                daemon_samples: 5,
            }
        }
    }
}

/// Set by SIGINT/SIGTERM: stop between steps, so that every guard (namespaces, daemons) runs.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: std::ffi::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn catch_stop_signals() -> Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }.with_context(|| format!("sigaction {sig}"))?;
    }
    Ok(())
}

/// Fails once a stop signal came.
pub fn check_stop() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Set in the environment of the release xtask that `cargo xtask bench` starts.
const CHILD_ENV: &str = "XLB_BENCH_CHILD";

/// Namespace prefixes of the bench (all start with `xlbb`).
const NS_PREFIXES: [&str; 3] = ["xlbbench-", "xlbbfx-", "xlbbmem-"];
// (The fleet scenario's namespaces are `xlbbench-fl-*`.)

pub fn bench(args: Args) -> Result<()> {
    crate::require_root("bench")?;
    if std::env::var_os(CHILD_ENV).is_none() {
        return relaunch(&args);
    }
    run(args)
}

/// Builds the release binaries (with this crate's `xlb` feature) and runs the release xtask.
fn relaunch(args: &Args) -> Result<()> {
    if !args.no_build {
        crate::setup::setup()?;
        crate::run(&mut crate::cargo([
            "build",
            "--release",
            "--workspace",
            "--features",
            "xtask/xlb",
        ]))?;
    }
    let exe = crate::target_dir().join("release").join("xtask");
    if !exe.is_file() {
        bail!("{} was not built", exe.display());
    }
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(std::env::args_os().skip(1)).env(CHILD_ENV, "1");
    let st = cmd
        .status()
        .with_context(|| format!("running {}", exe.display()))?;
    if !st.success() {
        bail!("the benchmark failed ({st})");
    }
    Ok(())
}

fn git(args: &[&str]) -> String {
    std::process::Command::new("git")
        .args(args)
        .current_dir(crate::root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Installs HAProxy (Debian package) if it is missing: a bench-only dependency.
fn ensure_haproxy() -> Result<()> {
    ensure_package("haproxy", "haproxy", "the HAProxy baseline")
}

/// Installs Debian package `package` (which provides `program`) if `program` is missing: the
/// bench's own dependencies, which `cargo xtask setup` does not install.
#[cfg_attr(not(feature = "xlb"), allow(dead_code))]
fn ensure_package(program: &str, package: &str, why: &str) -> Result<()> {
    if sys::require_program(program).is_ok() {
        return Ok(());
    }
    eprintln!("bench: installing {package} (apt-get), for {why}");
    let apt = |args: &[&str]| {
        crate::run(
            std::process::Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    apt(&["update", "-q"])?;
    apt(&["install", "-y", "-q", "--no-install-recommends", package])
}

fn release_bins() -> Result<topo::Bins> {
    let dir = crate::target_dir().join("release");
    let bins = topo::Bins {
        xlb: dir.join("xlb"),
        lab: dir.join("xlb-lab"),
    };
    for b in [&bins.xlb, &bins.lab] {
        if !b.is_file() {
            bail!(
                "{} is missing: build with `cargo build --release --workspace`",
                b.display()
            );
        }
    }
    Ok(bins)
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(args: Args) -> Result<()> {
    // Everything this process and its children do runs on the client CPU unless moved.
    sys::pin(0, topo::CLIENT_CPU)?;
    catch_stop_signals()?;
    if sys::cpus() < 2 {
        bail!("the benchmarks need 2 CPUs (one for the client side, one for the balancer)");
    }
    let p = Params::new(args.quick);
    let mut wanted: Vec<Scenario> = if args.only.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        args.only.clone()
    };
    wanted.sort();
    wanted.dedup();
    let bins = release_bins()?;
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| crate::root().join("bench").join("results"));
    std::fs::create_dir_all(&out_dir)?;
    let tmp = TempDir(std::env::temp_dir().join(format!("xlb-bench.{}", std::process::id())));
    std::fs::create_dir_all(&tmp.0)?;
    for prefix in NS_PREFIXES {
        for name in xlb_lab::Lab::cleanup_stale(prefix)? {
            eprintln!("bench: removed leftover namespace {name}");
        }
    }
    xlbd::cleanup_stale("xlbbench-");

    let started = Instant::now();
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let (date, stamp) = results::utc_stamp(unix);
    let mut r = Results {
        meta: results::Meta {
            date: date.clone(),
            started: stamp,
            host: Some(sys::host_info()),
            git_commit: git(&["rev-parse", "--short", "HEAD"]),
            git_dirty: !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty(),
            quick: args.quick,
            scenarios: wanted.iter().map(|s| s.name().to_owned()).collect(),
            duration_s: 0.0,
            client_cpu: topo::CLIENT_CPU,
            balancer_cpu: topo::LB_CPU,
        },
        ..Default::default()
    };

    let mut lab: Option<topo::BenchLab> = None;
    let get_lab = |lab: &mut Option<topo::BenchLab>| -> Result<()> {
        if lab.is_none() {
            eprintln!("bench: building the lab");
            *lab = Some(topo::BenchLab::new(bins.clone(), &tmp.0)?);
        }
        Ok(())
    };
    let has = |s: Scenario| wanted.contains(&s);
    let fail = |r: &mut Results, s: Scenario, e: anyhow::Error| {
        eprintln!("bench: scenario {} failed: {e:#}", s.name());
        r.errors.insert(s.name().to_owned(), format!("{e:#}"));
    };

    if has(Scenario::Prog) {
        eprintln!("bench: 1. per-packet cost (BPF_PROG_TEST_RUN)");
        match prog_scenario(&p) {
            Ok(x) => r.prog = Some(x),
            Err(e) => fail(&mut r, Scenario::Prog, e),
        }
    }
    if has(Scenario::Forwarding) || has(Scenario::Tcp) {
        if has(Scenario::Tcp) {
            if let Err(e) = ensure_haproxy() {
                eprintln!("bench: HAProxy unavailable, its rows stay empty: {e:#}");
            }
        }
        let res = get_lab(&mut lab).and_then(|_| {
            traffic::run(
                lab.as_mut().expect("built"),
                &p,
                has(Scenario::Forwarding),
                has(Scenario::Tcp),
            )
        });
        match res {
            Ok((f, t)) => {
                r.forwarding = f;
                r.tcp = t;
            }
            Err(e) => {
                let msg = format!("{e:#}");
                for s in [Scenario::Forwarding, Scenario::Tcp] {
                    if has(s) {
                        fail(&mut r, s, anyhow::anyhow!("{msg}"));
                    }
                }
            }
        }
    }
    if has(Scenario::Maglev) {
        eprintln!("bench: 4. Maglev");
        let res =
            get_lab(&mut lab).and_then(|_| maglev::run(lab.as_mut().expect("built"), &p, &tmp.0));
        match res {
            Ok(x) => r.maglev = Some(x),
            Err(e) => fail(&mut r, Scenario::Maglev, e),
        }
    }
    if has(Scenario::Control) {
        eprintln!("bench: 5. control plane");
        let res =
            get_lab(&mut lab).and_then(|_| control::run(lab.as_mut().expect("built"), &p, &tmp.0));
        match res {
            Ok(x) => r.control = Some(x),
            Err(e) => fail(&mut r, Scenario::Control, e),
        }
    }
    drop(lab);
    if has(Scenario::Memory) {
        eprintln!("bench: 6. memory");
        match memory::run(&bins, &tmp.0) {
            Ok(x) => r.memory = Some(x),
            Err(e) => fail(&mut r, Scenario::Memory, e),
        }
    }

    if has(Scenario::Fleet) {
        eprintln!("bench: 7. fleet failover");
        match fleet::run(&p) {
            Ok(x) => r.fleet = Some(x),
            Err(e) => fail(&mut r, Scenario::Fleet, e),
        }
    }
    if has(Scenario::Sweep) {
        eprintln!("bench: 8. conntrack sweep of a full table");
        match sweep_scenario() {
            Ok(x) => r.sweep = Some(x),
            Err(e) => fail(&mut r, Scenario::Sweep, e),
        }
    }

    r.meta.duration_s = started.elapsed().as_secs_f64();
    r.judge();
    let host = r
        .meta
        .host
        .as_ref()
        .map_or("host".into(), |h| sanitize(&h.host));
    let mut stem = format!("{date}-{host}");
    if args.quick {
        stem.push_str("-quick");
    }
    if !args.only.is_empty() {
        stem.push_str("-only-");
        stem.push_str(
            &wanted
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join("-"),
        );
    }
    write_results(
        &r,
        &out_dir,
        &stem,
        args.out.is_none() && !args.quick && args.only.is_empty(),
    )?;
    if !r.errors.is_empty() {
        bail!(
            "{} scenario(s) failed: {}",
            r.errors.len(),
            r.errors.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}

/// Keeps `[A-Za-z0-9._-]` of a host name.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(feature = "xlb")]
fn prog_scenario(p: &Params) -> Result<results::ProgResults> {
    prog::run(p)
}

#[cfg(not(feature = "xlb"))]
fn prog_scenario(_: &Params) -> Result<results::ProgResults> {
    bail!(
        "this xtask was built without its `xlb` feature (run `cargo xtask bench`, which builds it)"
    )
}

#[cfg(feature = "xlb")]
fn sweep_scenario() -> Result<results::SweepResults> {
    sweep::run()
}

#[cfg(not(feature = "xlb"))]
fn sweep_scenario() -> Result<results::SweepResults> {
    bail!(
        "this xtask was built without its `xlb` feature (run `cargo xtask bench`, which builds it)"
    )
}

/// Markers in BENCHMARKS.md between which a full run writes its report.
const BEGIN: &str = "<!-- bench:results:begin -->";
const END: &str = "<!-- bench:results:end -->";

fn write_results(r: &Results, dir: &Path, stem: &str, update_doc: bool) -> Result<()> {
    let json = dir.join(format!("{stem}.json"));
    std::fs::write(&json, serde_json::to_string_pretty(r)? + "\n")?;
    let charts = charts::draw_all(r, dir, stem)?;
    let body = results::markdown(r, &charts);
    let md = dir.join(format!("{stem}.md"));
    std::fs::write(&md, format!("# xlb benchmark results: {stem}\n\n{body}"))?;
    eprintln!("\n{body}");
    eprintln!("bench: wrote {} and {}", json.display(), md.display());
    if update_doc {
        let doc_path = crate::root().join("BENCHMARKS.md");
        if let Ok(doc) = std::fs::read_to_string(&doc_path) {
            if let (Some(b), Some(e)) = (doc.find(BEGIN), doc.find(END)) {
                let rel = dir
                    .strip_prefix(crate::root())
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| dir.display().to_string());
                let charts_rel = results::ChartFiles {
                    prog: charts.prog.map(|f| format!("{rel}/{f}")),
                    forwarding: charts.forwarding.map(|f| format!("{rel}/{f}")),
                    tcp_cpu: charts.tcp_cpu.map(|f| format!("{rel}/{f}")),
                    tcp_rate: charts.tcp_rate.map(|f| format!("{rel}/{f}")),
                    latency: charts.latency.map(|f| format!("{rel}/{f}")),
                    maglev: charts.maglev.map(|f| format!("{rel}/{f}")),
                };
                let section = results::markdown(r, &charts_rel);
                let new = format!(
                    "{}{BEGIN}\n<!-- written by `cargo xtask bench` from {rel}/{stem}.json -->\n\n{section}{}",
                    &doc[..b],
                    &doc[e..]
                );
                std::fs::write(&doc_path, new)?;
                eprintln!("bench: updated the results in {}", doc_path.display());
            }
        }
    }
    Ok(())
}
