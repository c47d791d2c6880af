//! Scenario 6: the daemon's memory (RSS) and the BPF maps' (the kernel's own accounting of
//! each map the daemon holds), with 1 and with 100 services, default sizes otherwise.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use xlb_lab::netns::Netns;

use super::results::{MemoryResults, MemoryRun};
use super::sys;
use super::topo::Bins;
use super::xlbd::Xlbd;

/// Backends per service.
const PER_SERVICE: usize = 3;

/// A namespace with the two interfaces the config names (veth pairs, the peers with GRO on).
fn namespace() -> Result<Netns> {
    let ns = Netns::new("xlbbmem-1")?;
    for (dev, peer) in [
        ("veth-client", "peer-client"),
        ("veth-backends", "peer-backends"),
    ] {
        ns.exec([
            "ip", "link", "add", dev, "type", "veth", "peer", "name", peer,
        ])?;
        ns.exec(["ip", "link", "set", dev, "up"])?;
        ns.exec(["ip", "link", "set", peer, "up"])?;
        ns.exec(["ethtool", "-K", peer, "gro", "on"])?;
    }
    ns.exec(["ip", "addr", "add", "198.18.2.1/24", "dev", "veth-backends"])?;
    Ok(ns)
}

/// The config body of `n` services, each with its own group of [`PER_SERVICE`] backends.
pub fn body(n: usize) -> String {
    let mut b = String::new();
    for s in 0..n {
        b.push_str(&format!(
            "[[service]]\nname = \"s{s}\"\nvip = \"198.18.100.1\"\nport = {}\nprotocol = \"tcp\"\ntarget_group = \"g{s}\"\n\n",
            1000 + s
        ));
        let backends = (0..PER_SERVICE)
            .map(|i| format!("\"198.18.2.{}:{}\"", 11 + i, 10000 + s))
            .collect::<Vec<_>>()
            .join(", ");
        b.push_str(&format!(
            "[[target_group]]\nname = \"g{s}\"\nbackends = [{backends}]\n\n"
        ));
    }
    b
}

pub fn run(bins: &Bins, dir: &Path) -> Result<MemoryResults> {
    let ns = namespace()?;
    let mut out = MemoryResults::default();
    for (services, max_services) in [(1usize, None), (100, Some(128u32))] {
        super::check_stop()?;
        let mut daemon =
            "interfaces = [\"veth-client\", \"veth-backends\"]\nxdp_mode = \"native\"\n".to_owned();
        if let Some(m) = max_services {
            daemon.push_str(&format!("max_services = {m}\n"));
        }
        let x = Xlbd::start(
            &bins.xlb,
            &ns,
            dir,
            &format!("xlbbench-mem{services}"),
            &daemon,
            &body(services),
            None,
            Duration::from_secs(60),
        )?;
        // Let start-up work (table builds, first health-check round if any) settle.
        std::thread::sleep(Duration::from_secs(1));
        let pid = x.pid();
        let (rss, peak) = sys::rss_kib(pid)?;
        let maps = sys::bpf_maps_of(pid).context("the daemon's BPF maps")?;
        let maps_bytes = maps.iter().map(|m| m.bytes).sum();
        eprintln!(
            "bench:   {services} services: RSS {:.1} MiB (peak {:.1}), BPF maps {:.1} MiB",
            rss as f64 / 1024.0,
            peak as f64 / 1024.0,
            maps_bytes as f64 / 1048576.0
        );
        drop(x);
        out.runs.push(MemoryRun {
            services,
            backends: services * PER_SERVICE,
            max_services: max_services.unwrap_or(lb_common::DEFAULT_MAX_SERVICES),
            conntrack_size: lb_common::DEFAULT_CONNTRACK_SIZE,
            maglev_table_size: lb_common::DEFAULT_RING_SIZE,
            rss_kib: rss,
            peak_rss_kib: peak,
            maps,
            maps_bytes,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        let b = body(100);
        assert_eq!(b.matches("[[service]]").count(), 100);
        assert!(b.contains("port = 1099"));
        assert!(b.contains("\"198.18.2.13:10099\""));
    }
}
