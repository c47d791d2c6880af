//! The xlb lab: a network-namespace topology with a client, the load balancer's namespace, a
//! switch and N backends, the lab servers that run on the backends, and plain-socket clients.
//!
//! Reused by the end-to-end tests (`tests/tests/*.rs`), `cargo xtask demo` and the benchmarks.
//! Everything here that touches namespaces needs root (CAP_NET_ADMIN + CAP_SYS_ADMIN).
//!
//! ```text
//!  client ns            lb ns                                   sw ns            backend ns
//!  eth0 ──────── veth-client  [xlb]  veth-backends ──────── uplink─┐
//!  198.18.1.2    198.18.1.1          198.18.2.1                    br0 ── b1 ──── eth0 198.18.2.11
//!  2001:db8:1::2 2001:db8:1::1       2001:db8:2::1                     ── b2 ──── eth0 198.18.2.12
//!                                                                      ── bN ──── eth0 198.18.2.(10+N)
//! ```
//! VIPs: [`lab::VIP_V4`] and [`lab::VIP_V6`], configured nowhere: xlb answers for them.

pub mod capture;
pub mod client;
mod cmd;
pub mod config;
pub mod echo_pool;
pub mod fleet;
pub mod lab;
pub mod netns;
pub mod server;
pub mod xdp;
pub mod xlbd;

use std::path::PathBuf;

use anyhow::{bail, Result};

pub use lab::Lab;
pub use netns::{ChildGuard, Netns};

/// Prefix that every integration test's [`Lab`] prefix starts with, so that `cargo xtask test`
/// can remove what a killed test run left behind with `Lab::cleanup_stale(TEST_PREFIX)`.
pub const TEST_PREFIX: &str = "xlbt-";

/// Prefix of the namespaces of `cargo xtask demo`.
pub const DEMO_PREFIX: &str = "xlb-demo";

/// Whether the process runs as root (the namespace tests need it).
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Path of the `xlb` daemon binary: `$XLB_BIN`, else `target/<profile>/xlb` next to the running
/// test executable (`target/<profile>/deps/<test>`) or binary.
pub fn xlb_bin() -> Result<PathBuf> {
    find_bin("XLB_BIN", "xlb")
}

/// Path of the `xlb-lab` server binary: `$XLB_LAB_BIN`, else found like [`xlb_bin`].
/// (Integration tests of this crate can also use `env!("CARGO_BIN_EXE_xlb-lab")`.)
pub fn lab_bin() -> Result<PathBuf> {
    find_bin("XLB_LAB_BIN", "xlb-lab")
}

fn find_bin(var: &str, name: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("${var} = {} is not a file", p.display());
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let cand = dir.join(name);
        if cand.is_file() {
            return Ok(cand);
        }
    }
    bail!("{name} not found: set ${var} or build the workspace (`cargo xtask build`)")
}
