//! The loaded XDP object: programs, typed maps, and attachment to interfaces.
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, DevMapHash, HashMap, MapData, PerCpuArray},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
        ProgramError, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use lb_common::{
    global, BackendInfo, Counters, CtValue, FlowKey, NextHop, RevValue, ServiceInfo, ServiceKey,
    MAP_BACKENDS, MAP_BACKEND_STATS, MAP_CONNTRACK, MAP_GLOBAL_STATS, MAP_MAGLEV, MAP_NEXTHOPS,
    MAP_REVERSE, MAP_SERVICES, MAP_SERVICE_STATS, MAX_BACKENDS, PROG_XDP_LB, SLOTS_PER_SERVICE,
};
use thiserror::Error;
use tracing::{info, warn};

use crate::{config::XdpMode as ConfigXdpMode, reconcile::MapWriter};
use aya::maps::MapError;
use lb_common::{AddrKey, VlanInfo};

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
    #[error(
        "the maps pinned in {dir} do not fit this configuration or version: {what}. \
         Run `xlb stop --cleanup` to remove them (this drops established flows), then start again"
    )]
    Incompatible { dir: String, what: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pinning the XDP link of {iface}: {source}")]
    PinLink {
        iface: String,
        #[source]
        source: aya::pin::PinError,
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoadOptions {
    pub ring_size: u32,
    pub conntrack_size: u32,
    /// Entries of `REVERSE` (`[daemon] reverse_size`); state files of earlier versions,
    /// which lack it, read as 0 (only their hash seed is used).
    #[serde(default)]
    pub reverse_size: u32,
    pub max_services: u32,
    pub hash_seed: u32,
}

/// Where the maps live.
#[derive(Clone, Debug)]
pub enum Pinning {
    /// Pinned under this bpffs directory: maps found there are adopted (a restarted daemon
    /// keeps its flows), missing ones are created and pinned. Links are pinned there too, so
    /// the program stays attached while no daemon runs.
    Dir(PathBuf),
    /// Private to this process (tests, benchmarks): nothing is left behind.
    Ephemeral,
}

/// How an interface ended up attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub iface: String,
    pub mode: &'static str,
}

/// The typed maps. Reading needs only `&Maps` ([`Dataplane::maps`]); writing needs `&mut`,
/// which the daemon gets only through [`MapWriter`] (the reconciler: the one writer).
pub struct Maps {
    pub services: HashMap<MapData, ServiceKey, ServiceInfo>,
    pub maglev: Array<MapData, u32>,
    pub backends: Array<MapData, BackendInfo>,
    pub conntrack: HashMap<MapData, FlowKey, CtValue>,
    /// Flows not confirmed yet (`UNCONFIRMED`): handshakes, new TCP past its SYN, UDP.
    pub unconfirmed: HashMap<MapData, FlowKey, CtValue>,
    pub reverse: HashMap<MapData, FlowKey, RevValue>,
    pub service_stats: PerCpuArray<MapData, Counters>,
    pub backend_stats: PerCpuArray<MapData, Counters>,
    pub global_stats: PerCpuArray<MapData, u64>,
    /// Backend id → cached next hop (reset when the backend changes).
    pub nexthops: Array<MapData, NextHop>,
    /// Backend address → the service its replies belong to.
    pub backend_addrs: HashMap<MapData, lb_common::BackendAddr, lb_common::BackendAddrValue>,
    /// Port bitmaps (service destination ports, backend source ports).
    pub ports: Array<MapData, u64>,
    /// Datagrams in flight as fragments.
    pub frags: HashMap<MapData, lb_common::FragKey, lb_common::FragValue>,
    /// Interfaces the program may redirect to.
    pub tx_ports: aya::maps::DevMapHash<MapData>,
    /// VLAN device → parent and VLAN id.
    pub vlans: HashMap<MapData, u32, lb_common::VlanInfo>,
    /// Every VIP and backend address → `ADDR_F_*`.
    pub addrs: HashMap<MapData, lb_common::AddrKey, u32>,
    /// Passive health: per-CPU counters per backend id.
    pub passive_stats: PerCpuArray<MapData, lb_common::PassiveCounters>,
    /// Passive health: the sampled SYN per backend id (written by the program).
    pub syn_samples: Array<MapData, lb_common::SynSample>,
    /// Passive health: per-backend settings (written by the daemon).
    pub passive_conf: Array<MapData, lb_common::PassiveConf>,
    /// DSR settings per service id.
    pub dsr: Array<MapData, lb_common::DsrConf>,
}

/// A second handle on a map: the same kernel object, through a duplicated file descriptor.
fn dup<M: TryFrom<aya::maps::Map, Error = MapError>>(data: &MapData) -> Result<M> {
    use std::os::fd::AsFd;
    let name = "(duplicate)";
    let err = |source| DataplaneError::Map { name, source };
    let fd = data.fd().as_fd().try_clone_to_owned().map_err(|io_error| {
        err(MapError::SyscallError(aya::sys::SyscallError {
            call: "dup",
            io_error,
        }))
    })?;
    let data = MapData::from_fd(fd).map_err(err)?;
    M::try_from(aya::maps::Map::from_map_data(data).map_err(err)?).map_err(err)
}

impl Maps {
    /// Handles of their own on the same maps (file descriptors duplicated): for the map
    /// writer's thread ([`WriteMaps`]).
    fn try_clone(&self) -> Result<Maps> {
        use aya::maps::IterableMap;
        Ok(Maps {
            services: dup(self.services.map())?,
            maglev: dup(self.maglev.map())?,
            backends: dup(self.backends.map())?,
            conntrack: dup(self.conntrack.map())?,
            unconfirmed: dup(self.unconfirmed.map())?,
            reverse: dup(self.reverse.map())?,
            service_stats: dup(self.service_stats.map())?,
            backend_stats: dup(self.backend_stats.map())?,
            global_stats: dup(self.global_stats.map())?,
            nexthops: dup(self.nexthops.map())?,
            backend_addrs: dup(self.backend_addrs.map())?,
            ports: dup(self.ports.map())?,
            frags: dup(self.frags.map())?,
            tx_ports: dup(self.tx_ports.map())?,
            vlans: dup(self.vlans.map())?,
            addrs: dup(self.addrs.map())?,
            passive_stats: dup(self.passive_stats.map())?,
            syn_samples: dup(self.syn_samples.map())?,
            passive_conf: dup(self.passive_conf.map())?,
            dsr: dup(self.dsr.map())?,
        })
    }
}

/// The maps on handles of their own, to write from another thread than the one that holds
/// the [`Dataplane`] (the map writer's, [`crate::commit::Writer`]): [`Dataplane::write_maps`].
pub struct WriteMaps {
    ring_size: u32,
    maps: Maps,
}

impl WriteMaps {
    fn ring(&self) -> u32 {
        self.ring_size
    }
}

/// The loaded program and its maps.
pub struct Dataplane {
    pub opts: LoadOptions,
    /// True when the maps were adopted from a previous instance.
    pub adopted: bool,
    pin_dir: Option<PathBuf>,
    ebpf: Ebpf,
    maps: Maps,
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map> {
    ebpf.take_map(name).ok_or(DataplaneError::MissingMap(name))
}

/// Entries of `UNCONFIRMED` (UDP flows without a reply yet) for a connection table of
/// `conntrack_size` entries.
pub fn unconfirmed_size(conntrack_size: u32) -> u32 {
    (conntrack_size / lb_common::UNCONFIRMED_DIVISOR).max(lb_common::MIN_UNCONFIRMED_SIZE)
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
    /// Map name → (max_entries, value_size) for these options.
    fn expected_maps(opts: &LoadOptions) -> [(&'static str, u32, usize); 20] {
        use std::mem::size_of;
        let table = opts.max_services * SLOTS_PER_SERVICE * opts.ring_size;
        [
            (MAP_SERVICES, opts.max_services, size_of::<ServiceInfo>()),
            (MAP_MAGLEV, table, size_of::<u32>()),
            (MAP_BACKENDS, MAX_BACKENDS, size_of::<BackendInfo>()),
            (MAP_CONNTRACK, opts.conntrack_size, size_of::<CtValue>()),
            (MAP_REVERSE, opts.reverse_size, size_of::<RevValue>()),
            (
                lb_common::MAP_UNCONFIRMED,
                unconfirmed_size(opts.conntrack_size),
                size_of::<CtValue>(),
            ),
            (MAP_SERVICE_STATS, opts.max_services, size_of::<Counters>()),
            (MAP_BACKEND_STATS, MAX_BACKENDS, size_of::<Counters>()),
            (MAP_GLOBAL_STATS, global::SLOTS, size_of::<u64>()),
            (MAP_NEXTHOPS, MAX_BACKENDS, size_of::<NextHop>()),
            (
                lb_common::MAP_BACKEND_ADDRS,
                MAX_BACKENDS,
                size_of::<lb_common::BackendAddrValue>(),
            ),
            (
                lb_common::MAP_PORTS,
                2 * lb_common::PORT_WORDS,
                size_of::<u64>(),
            ),
            (
                lb_common::MAP_FRAGS,
                lb_common::FRAG_TABLE_SIZE,
                size_of::<lb_common::FragValue>(),
            ),
            (
                lb_common::MAP_TX_PORTS,
                lb_common::MAX_TX_PORTS,
                2 * size_of::<u32>(),
            ),
            (
                lb_common::MAP_VLANS,
                lb_common::MAX_VLANS,
                size_of::<lb_common::VlanInfo>(),
            ),
            (lb_common::MAP_ADDRS, lb_common::MAX_ADDRS, size_of::<u32>()),
            (
                lb_common::MAP_PASSIVE_STATS,
                MAX_BACKENDS,
                size_of::<lb_common::PassiveCounters>(),
            ),
            (
                lb_common::MAP_SYN_SAMPLES,
                MAX_BACKENDS,
                size_of::<lb_common::SynSample>(),
            ),
            (
                lb_common::MAP_PASSIVE_CONF,
                MAX_BACKENDS,
                size_of::<lb_common::PassiveConf>(),
            ),
            (
                lb_common::MAP_DSR,
                opts.max_services,
                size_of::<lb_common::DsrConf>(),
            ),
        ]
    }

    /// The names of the maps xlb pins (in the pin directory).
    pub fn map_names() -> Vec<&'static str> {
        let opts = LoadOptions {
            ring_size: 0,
            conntrack_size: 0,
            reverse_size: 0,
            max_services: 0,
            hash_seed: 0,
        };
        Self::expected_maps(&opts).iter().map(|m| m.0).collect()
    }

    /// The name under which the XDP link of `iface` is pinned (in the pin directory).
    pub fn link_pin_name(iface: &str) -> String {
        format!("link_{iface}")
    }

    /// Whether `dir` holds maps of a previous instance.
    pub fn has_pinned_maps(dir: &Path) -> bool {
        dir.join(MAP_CONNTRACK).exists()
    }

    /// Check that maps pinned in `dir` were made for `opts` and this version's types.
    fn check_pinned(dir: &Path, opts: &LoadOptions) -> Result<()> {
        let incompatible = |what: String| DataplaneError::Incompatible {
            dir: dir.display().to_string(),
            what,
        };
        for (name, entries, value_size) in Self::expected_maps(opts) {
            let path = dir.join(name);
            // A map this version adds is created (and pinned) by the loader.
            if name != MAP_CONNTRACK && !path.exists() {
                continue;
            }
            let info = aya::maps::MapInfo::from_pin(&path)
                .map_err(|e| incompatible(format!("{name} cannot be opened ({e})")))?;
            if info.max_entries() != entries {
                return Err(incompatible(format!(
                    "{name} holds {} entries, this configuration needs {entries}",
                    info.max_entries()
                )));
            }
            // Per-CPU maps report the size of one CPU's value.
            if info.value_size() as usize != value_size {
                return Err(incompatible(format!(
                    "{name} values are {} bytes, this version's are {value_size}",
                    info.value_size()
                )));
            }
        }
        Ok(())
    }

    /// Load the embedded object with the given sizes. Nothing is attached yet.
    pub fn load(opts: LoadOptions, pinning: Pinning) -> Result<Self> {
        let table = opts.max_services * SLOTS_PER_SERVICE * opts.ring_size;
        static EPHEMERAL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let (dir, ephemeral) = match &pinning {
            Pinning::Dir(d) => (d.clone(), false),
            Pinning::Ephemeral => {
                let n = EPHEMERAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                (
                    PathBuf::from(format!(
                        "/sys/fs/bpf/xlb-ephemeral-{}-{n}",
                        std::process::id()
                    )),
                    true,
                )
            }
        };
        let adopted = !ephemeral && Self::has_pinned_maps(&dir);
        if adopted {
            Self::check_pinned(&dir, &opts)?;
        }
        std::fs::create_dir_all(&dir).map_err(|source| DataplaneError::Io {
            what: "creating pin directory",
            path: dir.display().to_string(),
            source,
        })?;
        let loaded = EbpfLoader::new()
            .default_map_pin_directory(&dir)
            .override_global(lb_common::GLOBAL_RING_SIZE, &opts.ring_size, true)
            .override_global(lb_common::GLOBAL_HASH_SEED, &opts.hash_seed, true)
            .map_max_entries(MAP_SERVICES, opts.max_services)
            .map_max_entries(MAP_SERVICE_STATS, opts.max_services)
            .map_max_entries(lb_common::MAP_DSR, opts.max_services)
            .map_max_entries(MAP_MAGLEV, table)
            .map_max_entries(MAP_CONNTRACK, opts.conntrack_size)
            .map_max_entries(MAP_REVERSE, opts.reverse_size)
            .map_max_entries(
                lb_common::MAP_UNCONFIRMED,
                unconfirmed_size(opts.conntrack_size),
            )
            .load(crate::ebpf::OBJECT);
        if ephemeral {
            // The maps live on through their file descriptors.
            let _ = std::fs::remove_dir_all(&dir);
        }
        let mut ebpf = loaded?;
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
        let unconfirmed = typed!(HashMap, &mut ebpf, lb_common::MAP_UNCONFIRMED);
        let reverse = typed!(HashMap, &mut ebpf, MAP_REVERSE);
        let service_stats = typed!(PerCpuArray, &mut ebpf, MAP_SERVICE_STATS);
        let backend_stats = typed!(PerCpuArray, &mut ebpf, MAP_BACKEND_STATS);
        let global_stats = typed!(PerCpuArray, &mut ebpf, MAP_GLOBAL_STATS);
        let nexthops = typed!(Array, &mut ebpf, MAP_NEXTHOPS);
        let backend_addrs = typed!(HashMap, &mut ebpf, lb_common::MAP_BACKEND_ADDRS);
        let ports = typed!(Array, &mut ebpf, lb_common::MAP_PORTS);
        let frags = typed!(HashMap, &mut ebpf, lb_common::MAP_FRAGS);
        let tx_ports = typed!(DevMapHash, &mut ebpf, lb_common::MAP_TX_PORTS);
        let vlans = typed!(HashMap, &mut ebpf, lb_common::MAP_VLANS);
        let addrs = typed!(HashMap, &mut ebpf, lb_common::MAP_ADDRS);
        let passive_stats = typed!(PerCpuArray, &mut ebpf, lb_common::MAP_PASSIVE_STATS);
        let syn_samples = typed!(Array, &mut ebpf, lb_common::MAP_SYN_SAMPLES);
        let passive_conf = typed!(Array, &mut ebpf, lb_common::MAP_PASSIVE_CONF);
        let dsr = typed!(Array, &mut ebpf, lb_common::MAP_DSR);
        Ok(Self {
            opts,
            adopted,
            pin_dir: (!ephemeral).then_some(dir),
            ebpf,
            maps: Maps {
                services,
                maglev,
                backends,
                conntrack,
                unconfirmed,
                reverse,
                service_stats,
                backend_stats,
                global_stats,
                nexthops,
                backend_addrs,
                ports,
                frags,
                tx_ports,
                vlans,
                addrs,
                passive_stats,
                syn_samples,
                passive_conf,
                dsr,
            },
        })
    }

    /// Make `TX_PORTS` hold exactly `ifindexes`: the interfaces the program may redirect
    /// frames to (the ones xlb is attached to). Others get rewritten packets through the
    /// kernel.
    pub fn set_tx_ports(&mut self, ifindexes: &[u32]) -> Result<()> {
        <Self as MapWriter>::set_tx_ports(self, ifindexes).map_err(|source| DataplaneError::Map {
            name: lb_common::MAP_TX_PORTS,
            source,
        })
    }

    /// Attach the `xlb_xmit` tracepoint program, which counts frames the egress of a
    /// redirect dropped (`xmit_drops`). The link lives as long as this process.
    pub fn attach_xmit_counter(&mut self) -> Result<()> {
        let name = lb_common::PROG_XMIT;
        let prog: &mut aya::programs::TracePoint = self
            .ebpf
            .program_mut(name)
            .ok_or(DataplaneError::MissingProgram(name))?
            .try_into()
            .map_err(|source| DataplaneError::Program { name, source })?;
        prog.load()
            .map_err(|source| DataplaneError::Program { name, source })?;
        prog.attach("xdp", "xdp_devmap_xmit")
            .map_err(|source| DataplaneError::Program { name, source })?;
        Ok(())
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
    ///
    /// With a pin directory, the link is pinned there (`link_<iface>`), so the program stays
    /// attached while no daemon runs; a link pinned by a previous instance is taken over by
    /// swapping this program into it atomically (no packet goes unprocessed), keeping the
    /// mode it was attached with.
    pub fn attach(
        &mut self,
        program: &'static str,
        iface: &str,
        mode: ConfigXdpMode,
    ) -> Result<Attachment> {
        let link_pin = self
            .pin_dir
            .as_ref()
            .map(|d| d.join(Self::link_pin_name(iface)));
        let prog = self.program_mut(program)?;
        let attach_err = |mode: &'static str| {
            let iface = iface.to_string();
            move |source| DataplaneError::Attach {
                iface,
                mode,
                source,
            }
        };
        if let Some(path) = link_pin.as_ref().filter(|p| p.exists()) {
            match adopt_link(prog, path) {
                Ok(()) => {
                    return Ok(Attachment {
                        iface: iface.to_string(),
                        mode: "adopted",
                    })
                }
                Err(e) => {
                    // The link of an interface that was deleted (or re-created under the same
                    // name) is defunct: the kernel refuses to update it (ENOLINK). It holds
                    // nothing any more; attach afresh.
                    warn!(
                        iface,
                        error = %e,
                        "the pinned XDP link cannot be taken over (its interface was deleted \
                         or re-created): attaching afresh"
                    );
                    if let Err(e) = std::fs::remove_file(path) {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            return Err(DataplaneError::Io {
                                what: "removing a stale link pin",
                                path: path.display().to_string(),
                                source: e,
                            });
                        }
                    }
                }
            }
        }
        let try_mode = |prog: &mut Xdp, m: XdpMode, label: &'static str| {
            prog.attach(iface, m)
                .map(|id| (id, label))
                .map_err(attach_err(label))
        };
        let (id, label) = match mode {
            ConfigXdpMode::Native => try_mode(prog, XdpMode::Driver, "native")?,
            ConfigXdpMode::Generic => try_mode(prog, XdpMode::Skb, "generic")?,
            ConfigXdpMode::Auto => match try_mode(prog, XdpMode::Driver, "native") {
                Ok(a) => a,
                Err(e) => {
                    warn!(iface, error = %e, "native XDP failed, falling back to generic XDP");
                    try_mode(prog, XdpMode::Skb, "generic")?
                }
            },
        };
        if let Some(path) = link_pin {
            let link = prog.take_link(id).map_err(attach_err(label))?;
            match FdLink::try_from(link) {
                Ok(fd_link) => {
                    fd_link
                        .pin(&path)
                        .map_err(|source| DataplaneError::PinLink {
                            iface: iface.to_string(),
                            source,
                        })?;
                }
                Err(e) => warn!(
                    iface,
                    error = %e,
                    "the kernel attached XDP through netlink: the link cannot be pinned, \
                     so XDP detaches when xlb exits"
                ),
            }
        }
        Ok(Attachment {
            iface: iface.to_string(),
            mode: label,
        })
    }

    /// The maps on handles of their own, for the one writer of the maps (the daemon's map
    /// writer thread): after this the daemon writes only through them.
    pub fn write_maps(&self) -> Result<WriteMaps> {
        Ok(WriteMaps {
            ring_size: self.opts.ring_size,
            maps: self.maps.try_clone()?,
        })
    }

    fn ring(&self) -> u32 {
        self.opts.ring_size
    }

    /// The maps, to read (tests, status).
    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    /// The maps, to write directly: for tests and benchmarks that forge map contents (flows,
    /// stale next hops). The daemon writes only through the reconciler ([`MapWriter`]).
    pub fn forge_maps(&mut self) -> &mut Maps {
        &mut self.maps
    }

    /// The pin paths of `CONNTRACK` and `BACKENDS`, for the conntrack sweeper's own
    /// read-only handles.
    pub fn sweeper_pins(&self) -> Option<(PathBuf, PathBuf)> {
        self.pin_dir
            .as_ref()
            .map(|d| (d.join(MAP_CONNTRACK), d.join(MAP_BACKENDS)))
    }

    /// The bpffs directory the maps are pinned in (None: ephemeral).
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    /// Index of the first Maglev entry of `service_id`'s table `slot`.
    pub fn table_base(&self, service_id: u32, slot: u32) -> u32 {
        lb_common::maglev_index(service_id, slot, self.opts.ring_size, 0)
    }

    /// Sum of a per-CPU counters element.
    pub fn service_counters(&self, id: u32) -> Counters {
        sum_counters(&self.maps.service_stats, id)
    }

    /// A backend's passive-health counters, summed over the CPUs.
    pub fn passive_counters(&self, id: u32) -> lb_common::PassiveCounters {
        let mut total = lb_common::PassiveCounters::default();
        if let Ok(vals) = self.maps.passive_stats.get(&id, 0) {
            for v in vals.iter() {
                total.add(v);
            }
        }
        total
    }

    pub fn backend_counters(&self, id: u32) -> Counters {
        sum_counters(&self.maps.backend_stats, id)
    }

    /// Global counters by name, summed over CPUs.
    pub fn global_counters(&self) -> Vec<(&'static str, u64)> {
        (0..global::COUNT)
            .map(|i| {
                let v = self
                    .maps
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

/// The BPF maps as the reconciler writes them (see [`MapWriter`]): through the
/// [`Dataplane`] (tests, benchmarks) or through [`WriteMaps`] (the daemon's map writer).
macro_rules! map_writer {
    ($t:ty) => {
        impl MapWriter for $t {
            fn ring_size(&self) -> u32 {
                self.ring()
            }

            fn set_port_word(&mut self, word: u32, bits: u64) -> std::result::Result<(), MapError> {
                self.maps.ports.set(word, bits, 0)
            }

            fn set_addr(&mut self, key: &AddrKey, flags: u32) -> std::result::Result<(), MapError> {
                self.maps.addrs.insert(key, flags, 0)
            }

            fn remove_addr(&mut self, key: &AddrKey) -> std::result::Result<(), MapError> {
                self.maps.addrs.remove(key)
            }

            fn set_backend(
                &mut self,
                id: u32,
                info: BackendInfo,
            ) -> std::result::Result<(), MapError> {
                self.maps.backends.set(id, info, 0)
            }

            fn reset_nexthop(&mut self, id: u32) -> std::result::Result<(), MapError> {
                self.maps.nexthops.set(id, NextHop::default(), 0)
            }

            fn reset_backend_counters(&mut self, id: u32) {
                Dataplane::reset_counters(&mut self.maps.backend_stats, id);
            }

            fn reset_service_counters(&mut self, id: u32) {
                Dataplane::reset_counters(&mut self.maps.service_stats, id);
            }

            fn set_maglev(
                &mut self,
                index: u32,
                backend_id: u32,
            ) -> std::result::Result<(), MapError> {
                self.maps.maglev.set(index, backend_id, 0)
            }

            fn set_service(
                &mut self,
                key: &ServiceKey,
                info: ServiceInfo,
            ) -> std::result::Result<(), MapError> {
                self.maps.services.insert(key, info, 0)
            }

            fn remove_service(&mut self, key: &ServiceKey) -> std::result::Result<(), MapError> {
                self.maps.services.remove(key)
            }

            fn set_backend_addr(
                &mut self,
                key: &lb_common::BackendAddr,
                v: lb_common::BackendAddrValue,
            ) -> std::result::Result<(), MapError> {
                self.maps.backend_addrs.insert(key, v, 0)
            }

            fn remove_backend_addr(
                &mut self,
                key: &lb_common::BackendAddr,
            ) -> std::result::Result<(), MapError> {
                self.maps.backend_addrs.remove(key)
            }

            fn set_vlan(&mut self, ifindex: u32, v: VlanInfo) -> std::result::Result<(), MapError> {
                self.maps.vlans.insert(ifindex, v, 0)
            }

            fn remove_vlan(&mut self, ifindex: u32) -> std::result::Result<(), MapError> {
                self.maps.vlans.remove(&ifindex)
            }

            fn set_tx_ports(&mut self, ifindexes: &[u32]) -> std::result::Result<(), MapError> {
                let old: Vec<u32> = self.maps.tx_ports.keys().filter_map(|k| k.ok()).collect();
                for k in old {
                    if !ifindexes.contains(&k) {
                        self.maps.tx_ports.remove(k)?;
                    }
                }
                for &i in ifindexes {
                    self.maps
                        .tx_ports
                        .insert(i, i, None, 0)
                        .map_err(|e| match e {
                            aya::maps::xdp::XdpMapError::MapError(e) => e,
                            other => MapError::InvalidName {
                                name: other.to_string(),
                            },
                        })?;
                }
                Ok(())
            }

            fn flow_backend(&self, key: &FlowKey) -> Option<u32> {
                self.maps.conntrack.get(key, 0).ok().map(|ct| ct.backend_id)
            }

            fn remove_flow(&mut self, key: &FlowKey) -> std::result::Result<(), MapError> {
                self.maps.conntrack.remove(key)
            }

            fn remove_flows(&mut self, keys: &[FlowKey]) -> std::result::Result<usize, MapError> {
                use aya::maps::IterableMap;
                use std::os::fd::AsFd;
                let fd = IterableMap::map(&self.maps.conntrack).fd().as_fd();
                crate::batch::delete_batch(fd, keys)
                    .map(|n| n as usize)
                    .map_err(|io_error| {
                        MapError::SyscallError(aya::sys::SyscallError {
                            call: "bpf_map_delete_batch",
                            io_error,
                        })
                    })
            }
            fn set_passive_conf(
                &mut self,
                id: u32,
                conf: lb_common::PassiveConf,
            ) -> std::result::Result<(), MapError> {
                self.maps.passive_conf.set(id, conf, 0)
            }

            fn set_dsr(
                &mut self,
                id: u32,
                conf: lb_common::DsrConf,
            ) -> std::result::Result<(), MapError> {
                self.maps.dsr.set(id, conf, 0)
            }
        }
    };
}

map_writer!(Dataplane);
map_writer!(WriteMaps);

/// Take over the XDP link pinned at `path` by swapping `prog` into it (atomic: no packet
/// goes unprocessed).
fn adopt_link(prog: &mut Xdp, path: &Path) -> std::result::Result<(), String> {
    let pinned = PinnedLink::from_pin(path).map_err(|e| e.to_string())?;
    let fd_link: FdLink = pinned.into();
    let link: XdpLink = fd_link
        .try_into()
        .map_err(|e: aya::programs::links::LinkError| e.to_string())?;
    prog.attach_to_link(link).map_err(|e| match e {
        ProgramError::SyscallError(s) => format!("{}: {}", s.call, s.io_error),
        other => other.to_string(),
    })?;
    Ok(())
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
