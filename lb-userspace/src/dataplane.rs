//! The loaded XDP object: programs, typed maps, and attachment to interfaces.
use std::net::IpAddr;

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{ProgramError, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use lb_common::{
    global, BackendInfo, Counters, CtValue, FlowKey, RevValue, ServiceInfo, ServiceKey,
    MAP_BACKENDS, MAP_BACKEND_STATS, MAP_CONNTRACK, MAP_GLOBAL_STATS, MAP_MAGLEV, MAP_REVERSE,
    MAP_SERVICES, MAP_SERVICE_STATS, MAX_BACKENDS, PROG_XDP_LB, SLOTS_PER_SERVICE,
};
use thiserror::Error;
use tracing::{info, warn};

use crate::config::XdpMode as ConfigXdpMode;

#[derive(Debug, Error)]
pub enum DataplaneError {
    #[error("loading the XDP object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {0} is missing from the XDP object")]
    MissingMap(&'static str),
    #[error("program {0} is missing from the XDP object")]
    MissingProgram(&'static str),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("attaching XDP to {iface} ({mode}): {source}")]
    Attach {
        iface: String,
        mode: &'static str,
        #[source]
        source: ProgramError,
    },
}

type Result<T> = std::result::Result<T, DataplaneError>;

/// Sizes and seeds fixed at load time.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    pub ring_size: u32,
    pub conntrack_size: u32,
    pub max_services: u32,
    pub hash_seed: u32,
}

/// How an interface ended up attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub iface: String,
    pub mode: &'static str,
}

/// The loaded program and its maps.
pub struct Dataplane {
    pub opts: LoadOptions,
    ebpf: Ebpf,
    pub services: HashMap<MapData, ServiceKey, ServiceInfo>,
    pub maglev: Array<MapData, u32>,
    pub backends: Array<MapData, BackendInfo>,
    pub conntrack: HashMap<MapData, FlowKey, CtValue>,
    pub reverse: HashMap<MapData, FlowKey, RevValue>,
    pub service_stats: PerCpuArray<MapData, Counters>,
    pub backend_stats: PerCpuArray<MapData, Counters>,
    pub global_stats: PerCpuArray<MapData, u64>,
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map> {
    ebpf.take_map(name).ok_or(DataplaneError::MissingMap(name))
}

macro_rules! typed {
    ($ty:ident, $ebpf:expr, $name:expr) => {
        $ty::try_from(take($ebpf, $name)?).map_err(|source| DataplaneError::Map {
            name: $name,
            source,
        })?
    };
}

impl Dataplane {
    /// Load the embedded object with the given sizes. Nothing is attached yet.
    pub fn load(opts: LoadOptions) -> Result<Self> {
        let table = opts.max_services * SLOTS_PER_SERVICE * opts.ring_size;
        let mut ebpf = EbpfLoader::new()
            .override_global(lb_common::GLOBAL_RING_SIZE, &opts.ring_size, true)
            .override_global(lb_common::GLOBAL_HASH_SEED, &opts.hash_seed, true)
            .map_max_entries(MAP_SERVICES, opts.max_services)
            .map_max_entries(MAP_SERVICE_STATS, opts.max_services)
            .map_max_entries(MAP_MAGLEV, table)
            .map_max_entries(MAP_CONNTRACK, opts.conntrack_size)
            .map_max_entries(MAP_REVERSE, opts.conntrack_size)
            .load(crate::ebpf::OBJECT)?;
        for name in [
            PROG_XDP_LB,
            lb_common::PROG_XDP_PASS,
            lb_common::PROG_XDP_TX,
        ] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or(DataplaneError::MissingProgram(name))?
                .try_into()
                .map_err(|source| DataplaneError::Program { name, source })?;
            prog.load()
                .map_err(|source| DataplaneError::Program { name, source })?;
        }
        let services = typed!(HashMap, &mut ebpf, MAP_SERVICES);
        let maglev = typed!(Array, &mut ebpf, MAP_MAGLEV);
        let backends = typed!(Array, &mut ebpf, MAP_BACKENDS);
        let conntrack = typed!(HashMap, &mut ebpf, MAP_CONNTRACK);
        let reverse = typed!(HashMap, &mut ebpf, MAP_REVERSE);
        let service_stats = typed!(PerCpuArray, &mut ebpf, MAP_SERVICE_STATS);
        let backend_stats = typed!(PerCpuArray, &mut ebpf, MAP_BACKEND_STATS);
        let global_stats = typed!(PerCpuArray, &mut ebpf, MAP_GLOBAL_STATS);
        Ok(Self {
            opts,
            ebpf,
            services,
            maglev,
            backends,
            conntrack,
            reverse,
            service_stats,
            backend_stats,
            global_stats,
        })
    }

    /// One of the loaded XDP programs (`xlb`, `xlb_pass`, `xlb_tx`).
    pub fn program(&self, name: &'static str) -> Result<&Xdp> {
        self.ebpf
            .program(name)
            .ok_or(DataplaneError::MissingProgram(name))?
            .try_into()
            .map_err(|source| DataplaneError::Program { name, source })
    }

    fn program_mut(&mut self, name: &'static str) -> Result<&mut Xdp> {
        self.ebpf
            .program_mut(name)
            .ok_or(DataplaneError::MissingProgram(name))?
            .try_into()
            .map_err(|source| DataplaneError::Program { name, source })
    }

    /// Attach `program` to `iface`. `auto` tries native (driver) XDP and falls back to
    /// generic with a warning; `native` and `generic` insist on their mode.
    pub fn attach(
        &mut self,
        program: &'static str,
        iface: &str,
        mode: ConfigXdpMode,
    ) -> Result<Attachment> {
        let prog = self.program_mut(program)?;
        let try_mode = |prog: &mut Xdp, m: XdpMode, label: &'static str| {
            prog.attach(iface, m)
                .map(|_| Attachment {
                    iface: iface.to_string(),
                    mode: label,
                })
                .map_err(|source| DataplaneError::Attach {
                    iface: iface.to_string(),
                    mode: label,
                    source,
                })
        };
        match mode {
            ConfigXdpMode::Native => try_mode(prog, XdpMode::Driver, "native"),
            ConfigXdpMode::Generic => try_mode(prog, XdpMode::Skb, "generic"),
            ConfigXdpMode::Auto => match try_mode(prog, XdpMode::Driver, "native") {
                Ok(a) => Ok(a),
                Err(e) => {
                    warn!(iface, error = %e, "native XDP failed, falling back to generic XDP");
                    try_mode(prog, XdpMode::Skb, "generic")
                }
            },
        }
    }

    /// Index of the first Maglev entry of `service_id`'s table `slot`.
    pub fn table_base(&self, service_id: u32, slot: u32) -> u32 {
        (service_id * SLOTS_PER_SERVICE + slot) * self.opts.ring_size
    }

    /// Sum of a per-CPU counters element.
    pub fn service_counters(&self, id: u32) -> Counters {
        sum_counters(&self.service_stats, id)
    }

    pub fn backend_counters(&self, id: u32) -> Counters {
        sum_counters(&self.backend_stats, id)
    }

    /// Global counters by name, summed over CPUs.
    pub fn global_counters(&self) -> Vec<(&'static str, u64)> {
        (0..global::COUNT)
            .map(|i| {
                let v = self
                    .global_stats
                    .get(&i, 0)
                    .map(|vals| vals.iter().sum())
                    .unwrap_or(0);
                (global::NAMES[i as usize], v)
            })
            .collect()
    }

    /// Reset a per-CPU counters element (a re-used id starts from zero).
    pub fn reset_counters(map: &mut PerCpuArray<MapData, Counters>, id: u32) {
        if let Ok(n) = aya::util::nr_cpus() {
            let zero = vec![Counters::default(); n];
            if let Ok(values) = aya::maps::PerCpuValues::try_from(zero) {
                let _ = map.set(id, values, 0);
            }
        }
    }
}

fn sum_counters(map: &PerCpuArray<MapData, Counters>, id: u32) -> Counters {
    let mut total = Counters::default();
    if let Ok(vals) = map.get(&id, 0) {
        for v in vals.iter() {
            total.add(v);
        }
    }
    total
}

/// Wire form of an address: IPv4 in the first 4 bytes.
pub fn addr_bytes(ip: IpAddr) -> ([u8; 16], u8) {
    match ip {
        IpAddr::V4(v4) => {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&v4.octets());
            (a, lb_common::AF_INET)
        }
        IpAddr::V6(v6) => (v6.octets(), lb_common::AF_INET6),
    }
}

const _: () = assert!(MAX_BACKENDS > 0);

pub fn log_attachments(list: &[Attachment]) {
    for a in list {
        info!(iface = %a.iface, mode = %a.mode, "XDP attached");
    }
}
