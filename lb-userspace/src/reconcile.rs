//! The one writer of the BPF maps: makes the data path match a [`Desired`] state.
//!
//! Order of writes: backends first (so every id a table names is valid), then each service's
//! Maglev table into its *inactive* slot, then the service entry that flips the slot (one
//! atomic map update, so no packet sees a half-written table), and last the removal of
//! services and backends nothing refers to any more.
//!
//! It also keeps `ADDRS` (every VIP and backend address), resets a backend's cached next hop
//! (`NEXTHOPS`) whenever its id gets a new address, and writes what the link watcher learns
//! (`VLANS`, `TX_PORTS`: [`Reconciler::apply_links`]).
pub mod encode;

use std::collections::{BTreeMap, HashMap};

use aya::maps::MapError;
use lb_common::{
    AddrKey, BackendAddr, BackendAddrValue, BackendInfo, FlowKey, PassiveConf, ServiceInfo,
    ServiceKey, VlanInfo, ADDR_F_BACKEND, ADDR_F_VIP, BA_F_SHARED, NO_BACKEND, SVC_F_EMPTY,
};
use tracing::{debug, info};

use crate::{
    dataplane::Dataplane,
    maglev::{self, MaglevBackend},
    state::{Desired, DesiredService},
};

/// Every map write the reconciler makes, and the few reads it needs to decide them: what a
/// data plane offers its one writer. [`Dataplane`] implements it over the BPF maps; the tests
/// implement it over hash maps that can fail on the Nth write.
pub trait MapWriter {
    /// Entries per Maglev table.
    fn ring_size(&self) -> u32;
    /// `PORTS[word] = bits`.
    fn set_port_word(&mut self, word: u32, bits: u64) -> Result<(), MapError>;
    /// `ADDRS[key] = flags`.
    fn set_addr(&mut self, key: &AddrKey, flags: u32) -> Result<(), MapError>;
    fn remove_addr(&mut self, key: &AddrKey) -> Result<(), MapError>;
    /// `BACKENDS[id] = info` (all zero: the slot is free).
    fn set_backend(&mut self, id: u32, info: BackendInfo) -> Result<(), MapError>;
    /// Forget backend `id`'s cached next hop (`NEXTHOPS`).
    fn reset_nexthop(&mut self, id: u32) -> Result<(), MapError>;
    /// Zero the counters of a new (or re-used) backend or service id (best effort).
    fn reset_backend_counters(&mut self, id: u32);
    fn reset_service_counters(&mut self, id: u32);
    /// `MAGLEV[index] = backend id`.
    fn set_maglev(&mut self, index: u32, backend_id: u32) -> Result<(), MapError>;
    fn set_service(&mut self, key: &ServiceKey, info: ServiceInfo) -> Result<(), MapError>;
    fn remove_service(&mut self, key: &ServiceKey) -> Result<(), MapError>;
    fn set_backend_addr(&mut self, key: &BackendAddr, v: BackendAddrValue) -> Result<(), MapError>;
    fn remove_backend_addr(&mut self, key: &BackendAddr) -> Result<(), MapError>;
    fn set_vlan(&mut self, ifindex: u32, v: VlanInfo) -> Result<(), MapError>;
    fn remove_vlan(&mut self, ifindex: u32) -> Result<(), MapError>;
    /// Make `TX_PORTS` hold exactly `ifindexes`.
    fn set_tx_ports(&mut self, ifindexes: &[u32]) -> Result<(), MapError>;
    /// The backend id the connection-tracking entry `key` names, if there is one.
    fn flow_backend(&self, key: &FlowKey) -> Option<u32>;
    /// Delete the connection-tracking entry `key`.
    fn remove_flow(&mut self, key: &FlowKey) -> Result<(), MapError>;
    /// Delete the connection-tracking entries `keys` (those already gone are skipped);
    /// answers how many were deleted. [`Dataplane`] makes one `BPF_MAP_DELETE_BATCH` call.
    fn remove_flows(&mut self, keys: &[FlowKey]) -> Result<usize, MapError> {
        let mut n = 0;
        for k in keys {
            if self.remove_flow(k).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }
    /// `PASSIVE_CONF[id] = conf` (passive health's SYN sampling of backend `id`).
    fn set_passive_conf(&mut self, id: u32, conf: PassiveConf) -> Result<(), MapError>;
    /// `DSR[id] = conf` (how DSR service `id` sends packets to its backends).
    fn set_dsr(&mut self, id: u32, conf: lb_common::DsrConf) -> Result<(), MapError>;
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("writing {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> ReconcileError {
    move |source| ReconcileError::Map { map, source }
}

struct WrittenService {
    key: ServiceKey,
    slot: u32,
    flags: u32,
}

/// What the maps hold, as far as this process wrote them.
#[derive(Default)]
pub struct Reconciler {
    services: HashMap<u32, WrittenService>,
    /// What each (service id, slot) table holds, to write only what changes.
    tables: HashMap<(u32, u32), TableSource>,
    backends: HashMap<u32, BackendInfo>,
    /// Maps adopted from a previous instance: tables not seen yet hold unknown contents.
    adopted: bool,
    /// What `BACKEND_ADDRS` holds.
    addrs: HashMap<BackendAddr, BackendAddrValue>,
    /// What `PORTS` holds (word index → bits); absent words are zero.
    ports: HashMap<u32, u64>,
    /// What `ADDRS` holds.
    vaddrs: HashMap<AddrKey, u32>,
    /// What `VLANS` holds.
    vlans: HashMap<u32, VlanInfo>,
    /// What `TX_PORTS` holds, sorted (None: not written by this process yet).
    tx_ports: Option<Vec<u32>>,
    /// What `PASSIVE_CONF` holds other than zeros, by backend id.
    passive: HashMap<u32, PassiveConf>,
    /// What `DSR` holds for the services in DSR mode, by service id.
    dsr: HashMap<u32, lb_common::DsrConf>,
}

/// What the link watcher saw: the VLAN devices of the namespace and the ifindex of each
/// interface xlb attaches to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Links {
    /// VLAN device ifindex → parent and VLAN id.
    pub vlans: BTreeMap<u32, VlanInfo>,
    /// Interfaces the program may redirect to (those xlb is attached to).
    pub tx_ports: Vec<u32>,
    /// The configured interfaces that exist: name → (ifindex, up).
    pub interfaces: BTreeMap<String, (u32, bool)>,
}

/// `ADDRS` as `desired` wants it: every VIP (`ADDR_F_VIP`) and every backend address
/// (`ADDR_F_BACKEND`), or'ed should an address be both (the config refuses that today);
/// port and protocol zero.
pub fn want_addrs(desired: &Desired) -> HashMap<AddrKey, u32> {
    let key = |ip| {
        let (addr, family) = crate::dataplane::addr_bytes(ip);
        AddrKey {
            addr,
            port: [0; 2],
            proto: 0,
            family,
        }
    };
    let mut want: HashMap<AddrKey, u32> = HashMap::new();
    for svc in &desired.services {
        *want.entry(key(svc.vip)).or_default() |= ADDR_F_VIP;
    }
    for b in desired.backends.values() {
        *want.entry(key(b.key.addr)).or_default() |= ADDR_F_BACKEND;
    }
    want
}

/// Whether writing `new` into a `BACKENDS` slot that held `old` makes the slot's cached next
/// hop stale: the id is newly assigned (or reused), or its address changed.
pub fn nexthop_stale(old: Option<&BackendInfo>, new: &BackendInfo) -> bool {
    match old {
        None => true,
        Some(o) => o.addr != new.addr || o.family != new.family,
    }
}

/// What one `apply` changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub tables_swapped: usize,
    pub table_entries_written: usize,
    pub services_removed: usize,
    pub backends_written: usize,
    pub backends_removed: usize,
}

/// A table entry no backend id can equal: marks table contents not known to this process.
const UNKNOWN: u32 = u32::MAX - 1;

/// What a Maglev table slot holds, kept as what built it rather than the table itself (a
/// table is 256 KiB at the default size; rebuilding one to diff against takes about a
/// millisecond).
#[derive(Debug, Clone, PartialEq, Eq)]
enum TableSource {
    /// Never written: zeros (a fresh map).
    Zero,
    /// Not known (adopted maps, or a write that failed half way).
    Unknown,
    /// Built by Maglev from these backends: (identity key, weight, backend id).
    Built(Vec<(String, u32, u32)>),
}

impl TableSource {
    fn table(&self, ring: u32) -> Vec<u32> {
        match self {
            Self::Zero => vec![0; ring as usize],
            Self::Unknown => vec![UNKNOWN; ring as usize],
            Self::Built(members) => {
                let mb: Vec<MaglevBackend<'_>> = members
                    .iter()
                    .map(|(k, w, _)| MaglevBackend {
                        key: k.as_bytes(),
                        weight: *w,
                    })
                    .collect();
                maglev::build(&mb, ring)
                    .into_iter()
                    .map(|i| {
                        if i == NO_BACKEND {
                            NO_BACKEND
                        } else {
                            members[i as usize].2
                        }
                    })
                    .collect()
            }
        }
    }
}

/// What builds `svc`'s Maglev table: its active backends, in order.
fn table_source(desired: &Desired, svc: &DesiredService) -> TableSource {
    TableSource::Built(
        svc.backends
            .iter()
            .filter_map(|id| desired.backends.get(id))
            .filter(|b| b.active)
            .map(|b| (b.key.maglev_key(), b.weight, b.id))
            .collect(),
    )
}

/// The Maglev table (backend ids; [`NO_BACKEND`] when it has none) that `apply` writes for
/// `svc` of `desired`: what `xlb diff` compares.
pub fn service_table(desired: &Desired, svc: &DesiredService, ring: u32) -> Vec<u32> {
    table_source(desired, svc).table(ring)
}

/// Index of the first Maglev entry of `service_id`'s table `slot`.
pub fn table_base(ring: u32, service_id: u32, slot: u32) -> u32 {
    lb_common::maglev_index(service_id, slot, ring, 0)
}

impl Reconciler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Learn what maps adopted from a previous instance hold: which slot of each service is
    /// live, and the backends. Table contents are unknown, so the next change of a service
    /// writes its idle table in full before flipping to it.
    pub fn adopt(dp: &Dataplane) -> Result<Self, ReconcileError> {
        let mut r = Self {
            adopted: true,
            ..Self::default()
        };
        for item in dp.maps().services.iter() {
            let (key, info) = item.map_err(map_err("SERVICES"))?;
            r.services.insert(
                info.id,
                WrittenService {
                    key,
                    slot: info.slot,
                    flags: info.flags,
                },
            );
            for slot in 0..lb_common::SLOTS_PER_SERVICE {
                r.tables.insert((info.id, slot), TableSource::Unknown);
            }
        }
        for id in 0..lb_common::MAX_BACKENDS {
            let info = dp
                .maps()
                .backends
                .get(&id, 0)
                .map_err(map_err("BACKENDS"))?;
            if info != BackendInfo::default() {
                r.backends.insert(id, info);
            }
        }
        for id in 0..lb_common::MAX_BACKENDS {
            let conf = dp
                .maps()
                .passive_conf
                .get(&id, 0)
                .map_err(map_err("PASSIVE_CONF"))?;
            if conf != PassiveConf::default() {
                r.passive.insert(id, conf);
            }
        }
        for item in dp.maps().backend_addrs.iter() {
            let (k, v) = item.map_err(map_err("BACKEND_ADDRS"))?;
            r.addrs.insert(k, v);
        }
        for item in dp.maps().addrs.iter() {
            let (k, v) = item.map_err(map_err("ADDRS"))?;
            r.vaddrs.insert(k, v);
        }
        for item in dp.maps().vlans.iter() {
            let (k, v) = item.map_err(map_err("VLANS"))?;
            r.vlans.insert(k, v);
        }
        for i in 0..2 * lb_common::PORT_WORDS {
            let w = dp.maps().ports.get(&i, 0).map_err(map_err("PORTS"))?;
            if w != 0 {
                r.ports.insert(i, w);
            }
        }
        Ok(r)
    }

    pub fn apply(
        &mut self,
        dp: &mut impl MapWriter,
        desired: &Desired,
    ) -> Result<ApplyReport, ReconcileError> {
        let mut report = ApplyReport::default();
        let ring = dp.ring_size();

        // 0. Port bitmaps: new ports first (a port of a new service or backend must pass the
        // filter before its map entries exist); ports no longer used are cleared at the end.
        let mut want_ports: HashMap<u32, u64> = HashMap::new();
        for svc in &desired.services {
            let (w, bit) = lb_common::port_bit(lb_common::PORTS_SERVICE, svc.port);
            *want_ports.entry(w).or_default() |= bit;
            for id in &svc.backends {
                if let Some(b) = desired.backends.get(id) {
                    let (w, bit) = lb_common::port_bit(lb_common::PORTS_BACKEND, b.key.port);
                    *want_ports.entry(w).or_default() |= bit;
                }
            }
        }
        for (w, bits) in &want_ports {
            let have = self.ports.get(w).copied().unwrap_or(0);
            if have | bits != have {
                dp.set_port_word(*w, have | bits)
                    .map_err(map_err("PORTS"))?;
                self.ports.insert(*w, have | bits);
            }
        }

        // Addresses: new ones first (a later fragment to a new VIP must find it), stale ones
        // at the end.
        let want_vaddrs = want_addrs(desired);
        for (k, v) in &want_vaddrs {
            if self.vaddrs.get(k) != Some(v) {
                dp.set_addr(k, *v).map_err(map_err("ADDRS"))?;
                self.vaddrs.insert(*k, *v);
            }
        }

        // 1. Backends. A slot that gets a new address (a new or reused id) also loses its
        // cached next hop, after the new address is in place: a lookup between the two writes
        // can only cache the new address's next hop.
        //
        // A backend that loses a flag (drained: no new flows; failed: no flows) keeps its old
        // entry until the tables that no longer name it are live (step 2b): a packet that
        // read the old table just before the swap must still find the backend it names
        // usable, or a new flow would be dropped as `no_backend`.
        // Passive health's SYN sampling per backend, before the backend's flags.
        for (id, b) in &desired.backends {
            let conf = PassiveConf {
                syn_timeout_ns: b.syn_timeout_ns,
            };
            if self.passive.get(id).copied().unwrap_or_default() != conf {
                dp.set_passive_conf(*id, conf)
                    .map_err(map_err("PASSIVE_CONF"))?;
                if conf == PassiveConf::default() {
                    self.passive.remove(id);
                } else {
                    self.passive.insert(*id, conf);
                }
            }
        }
        let mut after_tables: Vec<(u32, BackendInfo)> = Vec::new();
        for (id, b) in &desired.backends {
            let info = encode::backend_info(b);
            let old = self.backends.get(id);
            if let Some(o) = old {
                if o.addr == info.addr && o.port == info.port && o.flags & !info.flags != 0 {
                    after_tables.push((*id, info));
                    continue;
                }
            }
            if old != Some(&info) {
                let stale = nexthop_stale(old, &info);
                if old.is_none() {
                    dp.reset_backend_counters(*id);
                }
                dp.set_backend(*id, info).map_err(map_err("BACKENDS"))?;
                // Recorded at once: should the next write fail, what is undone includes it.
                self.backends.insert(*id, info);
                if stale {
                    dp.reset_nexthop(*id).map_err(map_err("NEXTHOPS"))?;
                }
                report.backends_written += 1;
            }
        }

        // 2. Tables and service entries.
        for svc in &desired.services {
            let source = table_source(desired, svc);
            let empty = matches!(&source, TableSource::Built(m) if m.is_empty());
            let mut flags = if empty { SVC_F_EMPTY } else { 0 };
            if let Some(conf) = crate::dsr::map_value(&svc.forwarding) {
                // Written before the service entry that names it.
                if self.dsr.get(&svc.id) != Some(&conf) {
                    dp.set_dsr(svc.id, conf).map_err(map_err("DSR"))?;
                    self.dsr.insert(svc.id, conf);
                }
                flags |= lb_common::SVC_F_DSR;
            }
            let key = encode::service_key(svc);

            let current = self.services.get(&svc.id);
            let live_slot = current.filter(|w| w.key == key).map(|w| w.slot);
            if let Some(slot) = live_slot {
                let same_table = self.tables.get(&(svc.id, slot)) == Some(&source);
                if same_table && current.map(|w| w.flags) == Some(flags) {
                    continue;
                }
            }
            if current.is_none() {
                dp.reset_service_counters(svc.id);
            }
            // Stale entry under another key (the VIP changed): remove it first (an entry
            // already missing is what was wanted), and record that it is gone.
            if current.is_some_and(|w| w.key != key) {
                if let Some(w) = self.services.remove(&svc.id) {
                    let _ = dp.remove_service(&w.key);
                }
            }
            let slot = live_slot.map_or(0, |s| s ^ 1);
            let base = table_base(ring, svc.id, slot);
            let unseen = if self.adopted {
                TableSource::Unknown
            } else {
                TableSource::Zero
            };
            let old = self
                .tables
                .get(&(svc.id, slot))
                .unwrap_or(&unseen)
                .table(ring);
            let table = source.table(ring);
            // What is written is recorded as it goes: a failed write leaves the slot Unknown.
            self.tables.insert((svc.id, slot), TableSource::Unknown);
            for (i, (&new, &was)) in table.iter().zip(old.iter()).enumerate() {
                if new != was {
                    dp.set_maglev(base + i as u32, new)
                        .map_err(map_err("MAGLEV"))?;
                    report.table_entries_written += 1;
                }
            }
            self.tables.insert((svc.id, slot), source);
            let info = ServiceInfo {
                id: svc.id,
                slot,
                flags,
                _pad: 0,
            };
            dp.set_service(&key, info).map_err(map_err("SERVICES"))?;
            self.services
                .insert(svc.id, WrittenService { key, slot, flags });
            report.tables_swapped += 1;
            debug!(service = %svc.name, slot, "table swapped");
        }

        // 2b. Backends that lost a flag, now that no live table sends new flows to them.
        for (id, info) in after_tables {
            dp.set_backend(id, info).map_err(map_err("BACKENDS"))?;
            self.backends.insert(id, info);
            report.backends_written += 1;
        }

        // 3. Where replies from each backend address go: the one service it serves, or
        // "shared" (several services: replies use the flows' REVERSE entries).
        // DSR services have no replies to translate.
        let mut want: HashMap<BackendAddr, BackendAddrValue> = HashMap::new();
        for svc in desired.services.iter().filter(|s| s.forwarding.is_nat()) {
            let (vip, _) = crate::dataplane::addr_bytes(svc.vip);
            for id in &svc.backends {
                let Some(b) = desired.backends.get(id) else {
                    continue;
                };
                let v = BackendAddrValue {
                    vip,
                    vport: svc.port.to_be_bytes(),
                    _pad: [0; 2],
                    service_id: svc.id,
                    backend_id: b.id,
                    flags: if b.shared { BA_F_SHARED } else { 0 },
                };
                want.insert(encode::backend_addr(b, svc.protocol), v);
            }
        }
        for (k, v) in &want {
            if self.addrs.get(k) != Some(v) {
                dp.set_backend_addr(k, *v)
                    .map_err(map_err("BACKEND_ADDRS"))?;
                self.addrs.insert(*k, *v);
            }
        }

        // 4. Services that are gone.
        let live: std::collections::HashSet<u32> = desired.services.iter().map(|s| s.id).collect();
        let gone: Vec<u32> = self
            .services
            .keys()
            .copied()
            .filter(|id| !live.contains(id))
            .collect();
        for id in gone {
            if let Some(w) = self.services.get(&id) {
                dp.remove_service(&w.key).map_err(map_err("SERVICES"))?;
                self.services.remove(&id);
                report.services_removed += 1;
            }
        }

        // 5. Backend addresses and backends that are gone: established flows to them are
        // re-balanced by the data path, since their entry no longer allows traffic.
        let stale: Vec<BackendAddr> = self
            .addrs
            .keys()
            .filter(|k| !want.contains_key(k))
            .copied()
            .collect();
        for k in stale {
            dp.remove_backend_addr(&k)
                .map_err(map_err("BACKEND_ADDRS"))?;
            self.addrs.remove(&k);
        }
        let stale: Vec<AddrKey> = self
            .vaddrs
            .keys()
            .filter(|k| !want_vaddrs.contains_key(k))
            .copied()
            .collect();
        for k in stale {
            dp.remove_addr(&k).map_err(map_err("ADDRS"))?;
            self.vaddrs.remove(&k);
        }
        let words: Vec<u32> = self.ports.keys().copied().collect();
        for w in words {
            let want = want_ports.get(&w).copied().unwrap_or(0);
            if self.ports.get(&w).copied().unwrap_or(0) != want {
                dp.set_port_word(w, want).map_err(map_err("PORTS"))?;
                if want == 0 {
                    self.ports.remove(&w);
                } else {
                    self.ports.insert(w, want);
                }
            }
        }
        let gone: Vec<u32> = self
            .backends
            .keys()
            .copied()
            .filter(|id| !desired.backends.contains_key(id))
            .collect();
        for id in gone {
            dp.set_backend(id, BackendInfo::default())
                .map_err(map_err("BACKENDS"))?;
            self.backends.remove(&id);
            report.backends_removed += 1;
        }
        let gone: Vec<u32> = self
            .passive
            .keys()
            .copied()
            .filter(|id| !desired.backends.contains_key(id))
            .collect();
        for id in gone {
            dp.set_passive_conf(id, PassiveConf::default())
                .map_err(map_err("PASSIVE_CONF"))?;
            self.passive.remove(&id);
        }
        if report != ApplyReport::default() {
            info!(?report, "data path updated");
        }
        Ok(report)
    }

    /// Make each service's idle table slot hold what its live slot holds, off the critical
    /// path: the next change then writes only the entries it changes (about a third of the
    /// ring when one of three backends fails, instead of up to two thirds against a table two
    /// changes old). Safe at any time: a packet that still reads the idle slot gets the old
    /// entry or the live table's. Returns the entries written.
    pub fn prepare_idle_slots(&mut self, dp: &mut impl MapWriter) -> Result<usize, ReconcileError> {
        let ring = dp.ring_size();
        let mut written = 0;
        let live: Vec<(u32, u32)> = self.services.iter().map(|(id, w)| (*id, w.slot)).collect();
        for (id, slot) in live {
            let idle = slot ^ 1;
            let Some(source) = self.tables.get(&(id, slot)).cloned() else {
                continue;
            };
            if !matches!(source, TableSource::Built(_)) {
                continue;
            }
            let unseen = if self.adopted {
                TableSource::Unknown
            } else {
                TableSource::Zero
            };
            let have = self.tables.get(&(id, idle)).unwrap_or(&unseen).clone();
            if have == source {
                continue;
            }
            let old = have.table(ring);
            let table = source.table(ring);
            let base = table_base(ring, id, idle);
            self.tables.insert((id, idle), TableSource::Unknown);
            for (i, (&new, &was)) in table.iter().zip(old.iter()).enumerate() {
                if new != was {
                    dp.set_maglev(base + i as u32, new)
                        .map_err(map_err("MAGLEV"))?;
                    written += 1;
                }
            }
            self.tables.insert((id, idle), source);
        }
        if written > 0 {
            debug!(
                entries = written,
                "idle table slots made equal to the live ones"
            );
        }
        Ok(written)
    }

    /// Delete the connection-tracking entries a conntrack sweep found naming a backend id
    /// that was free when it read them (`found`: key and that id). The sweep runs on its own
    /// thread, so each is decided again here, on the owner loop: an id written since (a
    /// backend added while the sweep ran) keeps its entries, and so does an entry that names
    /// another backend by now. Returns how many entries were deleted.
    pub fn remove_stale_flows(
        &mut self,
        dp: &mut impl MapWriter,
        found: &[(FlowKey, u32)],
    ) -> Result<usize, ReconcileError> {
        let doomed: Vec<FlowKey> = found
            .iter()
            .filter(|(key, id)| {
                !self.backends.contains_key(id) && dp.flow_backend(key) == Some(*id)
            })
            .map(|(key, _)| *key)
            .collect();
        if doomed.is_empty() {
            return Ok(0);
        }
        dp.remove_flows(&doomed).map_err(map_err("CONNTRACK"))
    }

    /// Write what the link watcher saw: `VLANS` made equal to `links.vlans` (new and changed
    /// entries first, then the removal of those gone), and `TX_PORTS` to `links.tx_ports`
    /// when that set changed.
    pub fn apply_links(
        &mut self,
        dp: &mut impl MapWriter,
        links: &Links,
    ) -> Result<(), ReconcileError> {
        for (ifindex, v) in &links.vlans {
            if self.vlans.get(ifindex) != Some(v) {
                dp.set_vlan(*ifindex, *v).map_err(map_err("VLANS"))?;
                self.vlans.insert(*ifindex, *v);
                if links.tx_ports.contains(&v.parent_ifindex) {
                    info!(
                        ifindex,
                        parent = v.parent_ifindex,
                        vlan = v.vlan_id,
                        "VLAN device known to the data path"
                    );
                } else {
                    info!(
                        ifindex,
                        parent = v.parent_ifindex,
                        vlan = v.vlan_id,
                        "VLAN device on an interface xlb is not attached to: packets routed \
                         out of it go through the kernel"
                    );
                }
            }
        }
        let gone: Vec<u32> = self
            .vlans
            .keys()
            .filter(|k| !links.vlans.contains_key(k))
            .copied()
            .collect();
        for ifindex in gone {
            // An entry already missing is what was wanted: not an error.
            let _ = dp.remove_vlan(ifindex);
            self.vlans.remove(&ifindex);
            info!(ifindex, "VLAN device gone");
        }
        self.set_tx_ports(dp, &links.tx_ports)
    }

    /// Make `TX_PORTS` hold exactly `ifindexes` (written only when the set changes).
    pub fn set_tx_ports(
        &mut self,
        dp: &mut impl MapWriter,
        ifindexes: &[u32],
    ) -> Result<(), ReconcileError> {
        let mut ports = ifindexes.to_vec();
        ports.sort_unstable();
        ports.dedup();
        if self.tx_ports.as_ref() != Some(&ports) {
            dp.set_tx_ports(&ports).map_err(map_err("TX_PORTS"))?;
            info!(ifindexes = ?ports, "TX_PORTS set");
            self.tx_ports = Some(ports);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::State;

    const CFG: &str = r#"
[daemon]
interfaces = ["eth0"]

[[service]]
name = "web"
vip = "198.18.100.1"
port = 80
protocol = "tcp"
target_group = "g"

[[service]]
name = "dns"
vip = "198.18.100.1"
port = 53
protocol = "udp"
target_group = "g"

[[service]]
name = "other"
vip = "198.18.100.2"
port = 8443
protocol = "tcp"
target_group = "h"

[[service]]
name = "web6"
vip = "2001:db8:100::1"
port = 80
protocol = "tcp"
target_group = "g6"

[[target_group]]
name = "g"
port = 8080
backends = ["198.18.2.11", "198.18.2.12"]

[[target_group]]
name = "h"
backends = ["198.18.2.11:9443"]

[[target_group]]
name = "g6"
port = 8080
backends = ["2001:db8:2::11"]
"#;

    fn key(ip: &str) -> AddrKey {
        let (addr, family) = crate::dataplane::addr_bytes(ip.parse().unwrap());
        AddrKey {
            addr,
            port: [0; 2],
            proto: 0,
            family,
        }
    }

    #[test]
    fn addrs_hold_every_vip_and_backend_address_once() {
        let mut s = State::new(crate::config::parse(CFG, "t.toml").unwrap());
        let want = want_addrs(&s.desired().unwrap());
        let expected: HashMap<AddrKey, u32> = [
            ("198.18.100.1", ADDR_F_VIP),
            ("198.18.100.2", ADDR_F_VIP),
            ("198.18.2.12", ADDR_F_BACKEND),
            // In two groups and on two ports: one entry.
            ("198.18.2.11", ADDR_F_BACKEND),
            ("2001:db8:100::1", ADDR_F_VIP),
            ("2001:db8:2::11", ADDR_F_BACKEND),
        ]
        .into_iter()
        .map(|(a, f)| (key(a), f))
        .collect();
        assert_eq!(want, expected);
        for k in want.keys() {
            assert_eq!((k.port, k.proto), ([0; 2], 0), "address keys only");
        }

        // A removed backend's address leaves, unless another backend still uses it.
        s.remove_backend("g", "198.18.2.11").unwrap();
        let want = want_addrs(&s.desired().unwrap());
        assert_eq!(want.get(&key("198.18.2.11")), Some(&ADDR_F_BACKEND));
        s.remove_backend("h", "198.18.2.11:9443").unwrap();
        let want = want_addrs(&s.desired().unwrap());
        assert_eq!(want.get(&key("198.18.2.11")), None);
        assert_eq!(want.len(), 5);
    }

    #[test]
    fn nexthop_is_stale_for_new_ids_and_new_addresses_only() {
        let info = |a: u8, port: u16, flags: u8| {
            let (addr, family) =
                crate::dataplane::addr_bytes(std::net::Ipv4Addr::new(198, 18, 2, a).into());
            BackendInfo {
                addr,
                port: port.to_be_bytes(),
                family,
                flags,
            }
        };
        let b = info(11, 8080, lb_common::BE_F_ACTIVE);
        assert!(nexthop_stale(None, &b), "a new (or reused) id");
        assert!(
            nexthop_stale(Some(&info(12, 8080, lb_common::BE_F_ACTIVE)), &b),
            "the id's address changed"
        );
        assert!(
            !nexthop_stale(Some(&info(11, 8080, 0)), &b),
            "a health or weight change keeps the next hop"
        );
        assert!(
            !nexthop_stale(Some(&info(11, 9090, lb_common::BE_F_ACTIVE)), &b),
            "the port does not route"
        );
        let (addr6, family6) = crate::dataplane::addr_bytes("2001:db8:2::11".parse().unwrap());
        let b6 = BackendInfo {
            addr: addr6,
            family: family6,
            ..b
        };
        assert!(nexthop_stale(Some(&b), &b6), "another family");
    }
}
