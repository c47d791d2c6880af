//! `cargo xtask setup | build | test | fuzz | demo | bench`: the project's developer tasks.

mod bench;
mod demo;
mod demo_fleet;
mod fuzz;
mod setup;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use xlb_lab::Lab;

#[derive(Parser)]
#[command(about = "xlb developer tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need, where missing: nightly rust-src, bpf-linker,
    /// cargo-fuzz, Debian packages (iproute2, ethtool, nftables, iputils-ping, procps, bird2).
    Setup,
    /// Setup, then build the workspace (the eBPF object is built by lb-userspace's build.rs).
    Build {
        /// Optimised build (with line tables for profiling)
        #[arg(long)]
        release: bool,
        /// The binary to ship: only `xlb`, optimised, without debug info (profile `dist`,
        /// target/dist/xlb)
        #[arg(long, conflicts_with = "release")]
        dist: bool,
    },
    /// Setup, build, then run every test: unit tests in parallel, integration tests (network
    /// namespaces, XDP) one at a time, and a short run of every fuzz target. Needs root.
    Test,
    /// Fuzz the parsers of outside input (config, health check responses, API bodies) with
    /// cargo-fuzz, 10 million executions each unless told otherwise, then run the data path's
    /// model check with 1,000,000 frames (root).
    Fuzz(fuzz::Args),
    /// Run xlb in a lab of network namespaces (1 client, 3 backends) and show live how the
    /// client's requests spread over the backends (`--fleet`: three xlb nodes behind a BIRD
    /// router with ECMP). Needs root.
    Demo(demo::Args),
    /// Benchmarks: per-packet cost of the XDP program, forwarding and TCP through xlb and
    /// baselines (kernel routing, nftables DNAT, HAProxy), Maglev, control plane, memory.
    /// Builds the release binaries, writes bench/results/. Needs root.
    Bench(bench::Args),
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup::setup(),
        Cmd::Build { release, dist } => {
            setup::setup()?;
            if dist {
                build_dist()
            } else {
                build(release)
            }
        }
        Cmd::Test => test(),
        Cmd::Fuzz(args) => fuzz::fuzz(args),
        Cmd::Demo(args) => demo::demo(args),
        Cmd::Bench(args) => bench::bench(args),
    }
}

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// The cargo target directory (`$CARGO_TARGET_DIR` or `<root>/target`).
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => root().join(d),
        None => root().join("target"),
    }
}

/// Path of a workspace binary of the debug profile.
fn debug_bin(name: &str) -> PathBuf {
    target_dir().join("debug").join(name)
}

/// `cargo ARGS` in the workspace root.
fn cargo<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.args(args).current_dir(root());
    c
}

/// Runs `cmd` with inherited stdio (echoing it first); fails unless it exits 0.
fn run(cmd: &mut Command) -> Result<()> {
    let shown = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    eprintln!("+ {shown}");
    let st = cmd
        .status()
        .with_context(|| format!("cannot run `{shown}`"))?;
    if !st.success() {
        bail!("`{shown}` failed: {st}");
    }
    Ok(())
}

fn build(release: bool) -> Result<()> {
    let mut c = cargo(["build", "--workspace"]);
    if release {
        c.arg("--release");
    }
    run(&mut c)
}

/// `xlb` in the `dist` profile; prints where it is and its size.
fn build_dist() -> Result<()> {
    run(&mut cargo([
        "build",
        "--profile",
        "dist",
        "-p",
        "lb-userspace",
        "--bin",
        "xlb",
    ]))?;
    let bin = root().join("target/dist/xlb");
    let size = std::fs::metadata(&bin)?.len();
    println!(
        "{}: {:.1} MB ({size} bytes)",
        bin.display(),
        size as f64 / 1e6
    );
    Ok(())
}

fn require_root(what: &str) -> Result<()> {
    if !xlb_lab::is_root() {
        bail!(
            "`cargo xtask {what}` needs root: it creates network namespaces and attaches XDP \
             programs. Run it as root (e.g. `sudo -E cargo xtask {what}`)."
        );
    }
    Ok(())
}

/// Prefixes of the namespaces the tests create: the labs' and tests/tests/fixtures.rs' own.
const TEST_NAMESPACE_PREFIXES: &[&str] = &[xlb_lab::TEST_PREFIX, "xlbfx-"];

/// Removes namespaces that killed test runs left behind.
fn cleanup_test_namespaces() -> Result<()> {
    for prefix in TEST_NAMESPACE_PREFIXES {
        for name in Lab::cleanup_stale(prefix)? {
            eprintln!("removed leftover namespace {name}");
        }
    }
    Ok(())
}

fn test() -> Result<()> {
    require_root("test")?;
    setup::setup()?;
    build(false)?;
    let xlb = debug_bin("xlb");
    let lab = debug_bin("xlb-lab");
    for bin in [&xlb, &lab] {
        if !bin.is_file() {
            bail!("{} was not built", bin.display());
        }
    }
    cleanup_test_namespaces()?;
    let phases: [(&str, &[&str]); 3] = [
        (
            "unit tests",
            &["test", "--workspace", "--no-fail-fast", "--lib", "--bins"],
        ),
        (
            "doc tests",
            &["test", "--workspace", "--no-fail-fast", "--doc"],
        ),
        (
            "integration tests",
            &[
                "test",
                "--workspace",
                "--no-fail-fast",
                "--test",
                "*",
                "--",
                "--test-threads=1",
            ],
        ),
    ];
    let mut failed = Vec::new();
    for (name, args) in phases {
        eprintln!("=== {name}");
        let mut c = cargo(args);
        c.env("XLB_BIN", &xlb).env("XLB_LAB_BIN", &lab);
        if let Err(e) = run(&mut c) {
            eprintln!("{e:#}");
            failed.push(name);
        }
    }
    cleanup_test_namespaces()?;
    eprintln!("=== fuzz targets (short run)");
    if let Err(e) = fuzz::short() {
        eprintln!("{e:#}");
        failed.push("fuzz targets");
    }
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    eprintln!("all tests passed");
    Ok(())
}
