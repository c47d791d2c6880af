//! Maps and load-time globals. All maps are pinned by name (in the daemon's `pin_path`), so a
//! restarted daemon adopts them and established flows survive. Names and default sizes come
//! from `lb_common::consts`; the daemon resizes MAGLEV, SERVICES, SERVICE_STATS and
//! CONNTRACK/REVERSE/UNCONFIRMED at load time.
use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    BackendAddr, BackendAddrValue, BackendInfo, Counters, CtValue, FlowKey, FragKey, FragValue,
    NextHop, RevValue, ServiceInfo, ServiceKey, VlanInfo, DEFAULT_CONNTRACK_SIZE,
    DEFAULT_MAX_SERVICES, DEFAULT_RING_SIZE, FRAG_TABLE_SIZE, MAX_BACKENDS, MAX_TX_PORTS,
    MAX_VLANS, SLOTS_PER_SERVICE, UNCONFIRMED_DIVISOR,
};

/// Maglev table size (prime). Set by the loader.
#[unsafe(no_mangle)]
static RING_SIZE: u32 = DEFAULT_RING_SIZE;
/// Seed of the flow hash. Set by the loader.
#[unsafe(no_mangle)]
static HASH_SEED: u32 = 0;

#[inline(always)]
pub fn ring_size() -> u32 {
    // SAFETY: a `.rodata` global the loader sets before the program runs; volatile so the compiler does not fold the default.
    unsafe { core::ptr::read_volatile(&RING_SIZE) }
}

#[inline(always)]
pub fn hash_seed() -> u32 {
    // SAFETY: a `.rodata` global the loader sets before the program runs; volatile so the compiler does not fold the default.
    unsafe { core::ptr::read_volatile(&HASH_SEED) }
}

#[map(name = "SERVICES")]
pub static SERVICES: HashMap<ServiceKey, ServiceInfo> = HashMap::pinned(DEFAULT_MAX_SERVICES, 0);

/// `(service_id * 2 + slot) * RING_SIZE + i` → backend id.
#[map(name = "MAGLEV")]
pub static MAGLEV: Array<u32> = Array::pinned(
    DEFAULT_MAX_SERVICES * SLOTS_PER_SERVICE * DEFAULT_RING_SIZE,
    0,
);

#[map(name = "BACKENDS")]
pub static BACKENDS: Array<BackendInfo> = Array::pinned(MAX_BACKENDS, 0);

/// Client flow (client → VIP) → backend.
#[map(name = "CONNTRACK")]
pub static CONNTRACK: LruHashMap<FlowKey, CtValue> = LruHashMap::pinned(DEFAULT_CONNTRACK_SIZE, 0);

/// Flows not confirmed yet (client flow → backend, as in `CONNTRACK`): TCP handshakes (their
/// SYN seen) and UDP flows without a reply. A flood of SYNs or of one-packet flows evicts only
/// these, never the confirmed flows in `CONNTRACK`. The client's first packet after its SYN
/// (TCP) or the first reply (UDP) moves a flow to `CONNTRACK`. Sized by the daemon.
#[map(name = "UNCONFIRMED")]
pub static UNCONFIRMED: LruHashMap<FlowKey, CtValue> =
    LruHashMap::pinned(DEFAULT_CONNTRACK_SIZE / UNCONFIRMED_DIVISOR, 0);

/// Backend flow (backend → client) → VIP to restore: only for flows to backend addresses
/// that several services share (see `BACKEND_ADDRS`).
#[map(name = "REVERSE")]
pub static REVERSE: LruHashMap<FlowKey, RevValue> = LruHashMap::pinned(DEFAULT_CONNTRACK_SIZE, 0);

/// Backend address (as its replies carry it) → the service it serves.
#[map(name = "BACKEND_ADDRS")]
pub static BACKEND_ADDRS: HashMap<BackendAddr, BackendAddrValue> = HashMap::pinned(MAX_BACKENDS, 0);

/// Port bitmaps: see `lb_common::consts::PORT_WORDS`.
#[map(name = "PORTS")]
pub static PORTS: Array<u64> = Array::pinned(2 * lb_common::PORT_WORDS, 0);

/// Whether `port` is set in the `PORTS` bitmap starting at `base`.
#[inline(always)]
pub fn port_in(base: u32, port: [u8; 2]) -> bool {
    let (word, bit) = lb_common::port_bit(base, u16::from_be_bytes(port));
    match PORTS.get_ptr(word) {
        // SAFETY: a map value pointer the verifier checked for null (map values live as long as the map).
        Some(w) => (unsafe { *w } & bit) != 0,
        None => false,
    }
}

/// Backend id → cached next hop towards it.
#[map(name = "NEXTHOPS")]
pub static NEXTHOPS: Array<NextHop> = Array::pinned(MAX_BACKENDS, 0);

#[map(name = "SERVICE_STATS")]
pub static SERVICE_STATS: PerCpuArray<Counters> = PerCpuArray::pinned(DEFAULT_MAX_SERVICES, 0);

#[map(name = "BACKEND_STATS")]
pub static BACKEND_STATS: PerCpuArray<Counters> = PerCpuArray::pinned(MAX_BACKENDS, 0);

#[map(name = "GLOBAL_STATS")]
pub static GLOBAL_STATS: PerCpuArray<u64> = PerCpuArray::pinned(lb_common::global::SLOTS, 0);

/// Datagrams in flight as fragments: (source, destination, protocol, id) → how the first
/// fragment was rewritten.
#[map(name = "FRAGS")]
pub static FRAGS: LruHashMap<FragKey, FragValue> = LruHashMap::pinned(FRAG_TABLE_SIZE, 0);

/// Interfaces that take redirected XDP frames (ifindex → ifindex), filled by the daemon with
/// the interfaces it attaches to. A redirect to any other interface goes to the kernel.
#[map(name = "TX_PORTS")]
pub static TX_PORTS: DevMapHash = DevMapHash::pinned(MAX_TX_PORTS, 0);

/// VLAN device ifindex → parent interface and VLAN id, learnt by the daemon over netlink.
#[map(name = "VLANS")]
pub static VLANS: HashMap<u32, VlanInfo> = HashMap::pinned(MAX_VLANS, 0);

/// Every VIP and backend address (port and protocol zero) → `ADDR_F_*`.
#[map(name = "ADDRS")]
pub static ADDRS: HashMap<ServiceKey, u32> = HashMap::pinned(lb_common::MAX_ADDRS, 0);

/// Passive health: per-CPU counters per backend id.
#[map(name = "PASSIVE_STATS")]
pub static PASSIVE_STATS: PerCpuArray<lb_common::PassiveCounters> =
    PerCpuArray::pinned(MAX_BACKENDS, 0);

/// Passive health: one sampled SYN per backend id.
#[map(name = "SYN_SAMPLES")]
pub static SYN_SAMPLES: Array<lb_common::SynSample> = Array::pinned(MAX_BACKENDS, 0);

/// Passive health: per-backend settings, written by the daemon.
#[map(name = "PASSIVE_CONF")]
pub static PASSIVE_CONF: Array<lb_common::PassiveConf> = Array::pinned(MAX_BACKENDS, 0);

#[inline(always)]
pub fn passive(id: u32) -> Option<&'static mut lb_common::PassiveCounters> {
    // SAFETY: a map value pointer the verifier checked for null (map values live as long as the map).
    PASSIVE_STATS.get_ptr_mut(id).map(|p| unsafe { &mut *p })
}

/// The packet being classified (see `parse::Pkt`), one per CPU.
#[map(name = "SCRATCH")]
pub static SCRATCH: PerCpuArray<crate::parse::Pkt> = PerCpuArray::with_max_entries(1, 0);

/// The FIB lookup's parameter block, one per CPU (off the stack: the verifier adds up the
/// stack frames of a call chain, 512 bytes in all).
#[map(name = "FIB_SCRATCH")]
pub static FIB_SCRATCH: PerCpuArray<aya_ebpf::bindings::bpf_fib_lookup> =
    PerCpuArray::with_max_entries(1, 0);

/// Client flows to a backend's own address (not a VIP) passing through this host, under
/// their replies' key: those replies are passed, not taken for stray replies.
#[map(name = "DIRECT")]
pub static DIRECT: LruHashMap<FlowKey, u8> = LruHashMap::with_max_entries(65536, 0);

/// A next hop being resolved for a packet without a cached one, one per CPU.
#[map(name = "NH_SCRATCH")]
pub static NH_SCRATCH: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(1, 0);

/// Service id → its DSR settings (services with `SVC_F_DSR`).
#[map(name = "DSR")]
pub static DSR: Array<lb_common::DsrConf> = Array::pinned(DEFAULT_MAX_SERVICES, 0);

#[inline(always)]
pub fn count(idx: u32) {
    if let Some(p) = GLOBAL_STATS.get_ptr_mut(idx) {
        // SAFETY: a per-CPU counter: only this CPU writes it while the program runs.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn counters(map: &PerCpuArray<Counters>, idx: u32) -> Option<&mut Counters> {
    // SAFETY: a map value pointer the verifier checked for null (map values live as long as the map).
    map.get_ptr_mut(idx).map(|p| unsafe { &mut *p })
}
