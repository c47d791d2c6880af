//! `cargo xtask setup`: installs what is missing, idempotently; one line per item.

use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use crate::run;

/// The bpf-linker version the eBPF build is pinned to.
const BPF_LINKER: &str = "0.10.4";

/// The cargo-fuzz version `cargo xtask fuzz` uses.
const CARGO_FUZZ: &str = "0.13.2";

/// Debian packages the lab and the tests use: `ip`, `ethtool`, `nft`, `ping`, `sysctl`; BIRD 2
/// (`bird`, `birdc`) for the fleet's router and nodes; and for `tests/tests/observe.rs` a
/// Prometheus server and headless Chromium.
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "nftables",
    "iputils-ping",
    "procps",
    "bird2",
    "prometheus",
    "chromium",
];

pub fn setup() -> Result<()> {
    rust_src()?;
    bpf_linker()?;
    cargo_fuzz()?;
    debian_packages()
}

/// Its stdout if `program args` runs and exits 0.
fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn rust_src() -> Result<()> {
    let item = "rust-src (nightly toolchain)";
    match output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    ) {
        Some(list) if list.lines().any(|l| l.trim().starts_with("rust-src")) => {
            println!("{item}: already present");
        }
        Some(_) => {
            run(Command::new("rustup").args([
                "component",
                "add",
                "rust-src",
                "--toolchain",
                "nightly",
            ]))
            .context(item)?;
            println!("{item}: installed");
        }
        None => {
            run(Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))
            .context(item)?;
            println!("{item}: installed (with the nightly toolchain)");
        }
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    let item = format!("bpf-linker {BPF_LINKER}");
    let present = output("bpf-linker", &["--version"])
        .is_some_and(|v| v.split_whitespace().any(|w| w == BPF_LINKER));
    if present {
        println!("{item}: already present");
        return Ok(());
    }
    run(Command::new("cargo").args([
        "install",
        &format!("bpf-linker@{BPF_LINKER}"),
        "--locked",
        "--force",
    ]))
    .with_context(|| item.clone())?;
    println!("{item}: installed");
    Ok(())
}

fn cargo_fuzz() -> Result<()> {
    let item = format!("cargo-fuzz {CARGO_FUZZ}");
    let present = output("cargo", &["fuzz", "--version"])
        .is_some_and(|v| v.split_whitespace().any(|w| w == CARGO_FUZZ));
    if present {
        println!("{item}: already present");
        return Ok(());
    }
    run(Command::new("cargo").args([
        "install",
        &format!("cargo-fuzz@{CARGO_FUZZ}"),
        "--locked",
        "--force",
    ]))
    .with_context(|| item.clone())?;
    println!("{item}: installed");
    Ok(())
}

fn dpkg_installed(pkg: &str) -> bool {
    output("dpkg-query", &["-W", "-f=${Status}", pkg]).is_some_and(|s| s.ends_with(" installed"))
}

fn debian_packages() -> Result<()> {
    if output("dpkg-query", &["--version"]).is_none() {
        for pkg in DEBIAN_PACKAGES {
            println!("{pkg}: cannot check (no dpkg; not Debian?): install it yourself");
        }
        return Ok(());
    }
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            let there = dpkg_installed(p);
            if there {
                println!("{p}: already present");
            }
            !there
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !xlb_lab::is_root() {
        for pkg in &missing {
            println!("{pkg}: missing; Debian packages need root to install: skipped");
        }
        return Ok(());
    }
    run(Command::new("apt-get")
        .args(["update", "-q"])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    for pkg in &missing {
        println!("{pkg}: installed");
    }
    Ok(())
}
