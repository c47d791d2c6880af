//! Direct server return: the `DSR` map value of a service in DSR mode, and the backend side,
//! `xlb decap` (the `xlb_decap` XDP program: strips IPIP / GUE addressed to its host and
//! hands the inner packet to the stack).
use std::{
    collections::HashSet,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use lb_common::{
    decap, DecapVipKey, DsrConf, DECAP_CONF_GUE_PORT, DECAP_CONF_VIP_FILTER, DSR_ENCAP_GUE,
    DSR_ENCAP_IPIP, DSR_ENCAP_L2, MAP_DECAP_CONF, MAP_DECAP_STATS, MAP_DECAP_VIPS, MAX_DECAP_VIPS,
    PROG_XDP_DECAP,
};
use thiserror::Error;

use crate::config::{DsrEncap, Forwarding, XdpMode as ConfigXdpMode};

/// The `DSR` map value for a service's forwarding (`None` for NAT).
pub fn map_value(f: &Forwarding) -> Option<DsrConf> {
    let d = f.dsr()?;
    let mut conf = DsrConf {
        encap: match d.encap {
            DsrEncap::L2 => DSR_ENCAP_L2,
            DsrEncap::Ipip => DSR_ENCAP_IPIP,
            DsrEncap::Gue => DSR_ENCAP_GUE,
        },
        gue_port: d.gue_port.to_be_bytes(),
        ..Default::default()
    };
    if let Some(p) = d.source_prefix {
        let (mut addr, _) = crate::dataplane::addr_bytes(p.addr);
        let bits = p.hash_bits();
        let mask: u32 = if bits == 0 {
            0
        } else {
            u32::MAX >> (32 - bits)
        };
        // The network address: host bits cleared (within the last 32 bits, the rest of a
        // longer IPv6 host part is kept as given).
        let i = if p.addr.is_ipv4() { 0 } else { 12 };
        let host_bits = if p.addr.is_ipv4() { 32 } else { 128 } - u32::from(p.len);
        let clear: u32 = match host_bits {
            0 => 0,
            b if b >= 32 => u32::MAX,
            b => u32::MAX >> (32 - b),
        };
        let w = u32::from_be_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]) & !clear;
        addr[i..i + 4].copy_from_slice(&w.to_be_bytes());
        conf.src_prefix = addr;
        conf.src_mask = mask.to_be_bytes();
    }
    Some(conf)
}

#[derive(Debug, Error)]
pub enum DecapError {
    #[error("loading the XDP object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("map {0}: {1}")]
    Map(&'static str, #[source] aya::maps::MapError),
    #[error("map {0} is missing from the XDP object")]
    MissingMap(&'static str),
    #[error("program {PROG_XDP_DECAP}: {0}")]
    Program(#[source] aya::programs::ProgramError),
    #[error("attaching {PROG_XDP_DECAP} to {iface} ({mode}): {source}")]
    Attach {
        iface: String,
        mode: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("more than {MAX_DECAP_VIPS} addresses")]
    TooMany,
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pinning the counters at {path}: {source}")]
    Pin {
        path: String,
        #[source]
        source: aya::pin::PinError,
    },
}

type Result<T> = std::result::Result<T, DecapError>;

/// The loaded `xlb_decap` program and its maps. The object's other maps are created tiny and
/// private (the load balancer's pinned maps are not touched).
pub struct Decap {
    ebpf: Ebpf,
    local: HashMap<MapData, DecapVipKey, u32>,
    stats: PerCpuArray<MapData, u64>,
    known_local: HashSet<IpAddr>,
}

fn key(ip: IpAddr) -> DecapVipKey {
    let (addr, family) = crate::dataplane::addr_bytes(ip);
    DecapVipKey {
        addr,
        port: [0; 2],
        proto: 0,
        family,
    }
}

impl Decap {
    /// Load the program: GUE on `gue_port`; only inner packets to `vips` are stripped unless
    /// `vips` is empty; the counters pinned at `stats_pin` if given (for `--stats`).
    pub fn load(gue_port: u16, vips: &[IpAddr], stats_pin: Option<&Path>) -> Result<Self> {
        if vips.len() > MAX_DECAP_VIPS as usize {
            return Err(DecapError::TooMany);
        }
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The object's maps are declared pinned: a private, emptied directory.
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/xlb-decap-load-{}-{n}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).map_err(|source| DecapError::Io {
            what: "creating",
            path: dir.display().to_string(),
            source,
        })?;
        let loaded = EbpfLoader::new()
            .default_map_pin_directory(&dir)
            .map_max_entries(lb_common::MAP_SERVICES, 1)
            .map_max_entries(lb_common::MAP_SERVICE_STATS, 1)
            .map_max_entries(lb_common::MAP_DSR, 1)
            .map_max_entries(lb_common::MAP_MAGLEV, 1)
            .map_max_entries(lb_common::MAP_CONNTRACK, 1)
            .map_max_entries(lb_common::MAP_REVERSE, 1)
            .map_max_entries(lb_common::MAP_UNCONFIRMED, 1)
            .map_max_entries(lb_common::MAP_FRAGS, 1)
            .map_max_entries("DIRECT", 1)
            .load(crate::ebpf::OBJECT);
        let _ = std::fs::remove_dir_all(&dir);
        let mut ebpf = loaded?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROG_XDP_DECAP)
            .ok_or(DecapError::MissingMap(PROG_XDP_DECAP))?
            .try_into()
            .map_err(DecapError::Program)?;
        prog.load().map_err(DecapError::Program)?;
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(DecapError::MissingMap(name))
        };
        let mut conf: Array<MapData, u32> = Array::try_from(take(&mut ebpf, MAP_DECAP_CONF)?)
            .map_err(|e| DecapError::Map(MAP_DECAP_CONF, e))?;
        conf.set(DECAP_CONF_GUE_PORT, u32::from(gue_port), 0)
            .map_err(|e| DecapError::Map(MAP_DECAP_CONF, e))?;
        conf.set(DECAP_CONF_VIP_FILTER, u32::from(!vips.is_empty()), 0)
            .map_err(|e| DecapError::Map(MAP_DECAP_CONF, e))?;
        let mut vmap: HashMap<MapData, DecapVipKey, u32> =
            HashMap::try_from(take(&mut ebpf, MAP_DECAP_VIPS)?)
                .map_err(|e| DecapError::Map(MAP_DECAP_VIPS, e))?;
        for v in vips {
            vmap.insert(key(*v), 1, 0)
                .map_err(|e| DecapError::Map(MAP_DECAP_VIPS, e))?;
        }
        let local = HashMap::try_from(take(&mut ebpf, "DECAP_LOCAL")?)
            .map_err(|e| DecapError::Map("DECAP_LOCAL", e))?;
        let stats_map = take(&mut ebpf, MAP_DECAP_STATS)?;
        if let Some(path) = stats_pin {
            stats_map.pin(path).map_err(|source| DecapError::Pin {
                path: path.display().to_string(),
                source,
            })?;
        }
        let stats =
            PerCpuArray::try_from(stats_map).map_err(|e| DecapError::Map(MAP_DECAP_STATS, e))?;
        Ok(Decap {
            ebpf,
            local,
            stats,
            known_local: HashSet::new(),
        })
    }

    /// Make `DECAP_LOCAL` (outer destinations that are this host) hold exactly `addrs`.
    pub fn set_local_addrs(&mut self, addrs: &[IpAddr]) -> Result<()> {
        let want: HashSet<IpAddr> = addrs.iter().copied().collect();
        if want.len() > MAX_DECAP_VIPS as usize {
            return Err(DecapError::TooMany);
        }
        for a in self.known_local.difference(&want) {
            let _ = self.local.remove(&key(*a));
        }
        for a in want.difference(&self.known_local) {
            self.local
                .insert(key(*a), 1, 0)
                .map_err(|e| DecapError::Map("DECAP_LOCAL", e))?;
        }
        self.known_local = want;
        Ok(())
    }

    /// The loaded program (tests run it with `BPF_PROG_TEST_RUN`).
    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(PROG_XDP_DECAP)
            .and_then(|p| p.try_into().ok())
            .expect("loaded in Decap::load")
    }

    /// Attach to `iface` (the link lives as long as this value).
    pub fn attach(&mut self, iface: &str, mode: ConfigXdpMode) -> Result<&'static str> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(PROG_XDP_DECAP)
            .ok_or(DecapError::MissingMap(PROG_XDP_DECAP))?
            .try_into()
            .map_err(DecapError::Program)?;
        let mut try_mode = |m: XdpMode, label: &'static str| {
            prog.attach(iface, m)
                .map(|_| label)
                .map_err(|source| DecapError::Attach {
                    iface: iface.to_string(),
                    mode: label,
                    source,
                })
        };
        match mode {
            ConfigXdpMode::Native => try_mode(XdpMode::Driver, "native"),
            ConfigXdpMode::Generic => try_mode(XdpMode::Skb, "generic"),
            ConfigXdpMode::Auto => {
                try_mode(XdpMode::Driver, "native").or_else(|_| try_mode(XdpMode::Skb, "generic"))
            }
        }
    }

    /// The counters, summed over CPUs, by name.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        read_counters(&self.stats)
    }
}

fn read_counters(stats: &PerCpuArray<MapData, u64>) -> Vec<(&'static str, u64)> {
    decap::NAMES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let v = stats
                .get(&(i as u32), 0)
                .map(|vals| vals.iter().sum())
                .unwrap_or(0);
            (*name, v)
        })
        .collect()
}

/// Where `xlb decap --interface DEV` pins its counters: named after the network namespace
/// (its inode) and DEV, so that decaps in different namespaces do not collide.
pub fn stats_pin(iface: &str) -> PathBuf {
    use std::os::unix::fs::MetadataExt as _;
    let ns = std::fs::metadata("/proc/self/ns/net")
        .map(|m| m.ino())
        .unwrap_or(0);
    PathBuf::from(format!("/sys/fs/bpf/xlb-decap-{ns}-{iface}"))
}

/// The counters a running `xlb decap --interface DEV` pinned.
pub fn pinned_counters(iface: &str) -> Result<Vec<(&'static str, u64)>> {
    let path = stats_pin(iface);
    let data = MapData::from_pin(&path).map_err(|e| DecapError::Map(MAP_DECAP_STATS, e))?;
    let map = aya::maps::Map::PerCpuArray(data);
    let stats: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(map).map_err(|e| DecapError::Map(MAP_DECAP_STATS, e))?;
    Ok(read_counters(&stats))
}

/// This host's addresses (every interface's).
pub fn host_addrs() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for a in addrs {
        let Some(sa) = a.address else { continue };
        if let Some(v4) = sa.as_sockaddr_in() {
            out.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = sa.as_sockaddr_in6() {
            out.push(IpAddr::V6(v6.ip()));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Print counters as `name value` lines.
pub fn format_counters(c: &[(&'static str, u64)]) -> String {
    c.iter().map(|(n, v)| format!("{n:<14} {v}\n")).collect()
}

/// `xlb decap`: attach to `iface` and run until SIGINT / SIGTERM, keeping `DECAP_LOCAL` in
/// step with the host's addresses (every second); detach and print the counters on exit.
pub fn run(iface: &str, vips: &[IpAddr], gue_port: u16, mode: ConfigXdpMode) -> anyhow::Result<()> {
    use anyhow::Context as _;
    // The object's maps are pinned while it loads (see `Decap::load`): bpffs must be there
    // (`ip netns exec` mounts a fresh /sys without it).
    if let Err(e) = crate::daemon::ensure_bpffs() {
        tracing::warn!(error = format!("{e:#}"), "bpffs");
    }
    let pin = stats_pin(iface);
    // A pin left by a previous run that was killed.
    let _ = std::fs::remove_file(&pin);
    let mut d = match Decap::load(gue_port, vips, Some(&pin)) {
        Ok(d) => d,
        Err(e @ DecapError::Pin { .. }) => {
            tracing::warn!(error = %e, "`xlb decap --stats` will not see the counters");
            Decap::load(gue_port, vips, None)?
        }
        Err(e) => return Err(e.into()),
    };
    d.set_local_addrs(&host_addrs())?;
    let label = match d.attach(iface, mode) {
        Ok(l) => l,
        Err(e) => {
            let _ = std::fs::remove_file(&pin);
            return Err(e.into());
        }
    };
    tracing::info!(
        iface,
        mode = label,
        gue_port,
        vips = vips.len(),
        "decapsulating IPIP and GUE addressed to this host"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let result = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = tick.tick() => {
                    if let Err(e) = d.set_local_addrs(&host_addrs()) {
                        tracing::warn!(error = %e, "updating this host's addresses");
                    }
                }
            }
        }
        Ok::<(), std::io::Error>(())
    });
    let _ = std::fs::remove_file(&pin);
    print!("{}", format_counters(&d.counters()));
    // Dropping `d` detaches the program.
    drop(d);
    result.context("waiting for signals")?;
    Ok(())
}
