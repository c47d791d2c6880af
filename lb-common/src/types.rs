//! Map keys and values.

/// Key of the `SERVICES` hash map: a VIP, port and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceKey {
    /// IPv4 in the first 4 bytes (rest zero) or IPv6, network order.
    pub addr: [u8; 16],
    /// Network order.
    pub port: [u8; 2],
    pub proto: u8,
    /// `AF_INET` (4) or `AF_INET6` (6).
    pub family: u8,
}
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 20);

/// Value of the `SERVICES` hash map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceInfo {
    /// Index into `SERVICE_STATS` and the service's pair of Maglev tables.
    pub id: u32,
    /// Which of the two Maglev tables is live (0 or 1).
    pub slot: u32,
    /// `SVC_F_*`
    pub flags: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<ServiceInfo>() == 16);

/// Element of the `BACKENDS` array, indexed by backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BackendInfo {
    pub addr: [u8; 16],
    /// Network order.
    pub port: [u8; 2],
    pub family: u8,
    /// `BE_F_*`
    pub flags: u8,
}
const _: () = assert!(core::mem::size_of::<BackendInfo>() == 20);

/// A flow's 5-tuple: key of `CONNTRACK` (client → VIP) and `REVERSE` (backend → client).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// Value of `CONNTRACK`: the backend a client flow is pinned to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtValue {
    pub backend_id: u32,
    pub service_id: u32,
    /// `CLOCK_MONOTONIC_COARSE` time (ns) a client packet of the flow was last seen.
    pub last_seen_ns: u64,
    /// `CT_F_*`
    pub flags: u32,
    pub _pad: u32,
    /// The next hop of the backend's replies towards the client, cached.
    pub reply_nh: NextHop,
}
const _: () = assert!(core::mem::size_of::<CtValue>() == 56);

/// Key of `BACKEND_ADDRS`: a backend's address, port and protocol, as its replies carry them.
/// The same layout as a service key (address, port, protocol, family), so that the data path
/// can reuse one key on its stack.
pub type BackendAddr = ServiceKey;

/// Value of `BACKEND_ADDRS`: the one service a backend address serves, so that its replies
/// find their flow in `CONNTRACK` (no reverse entry per flow); `BA_F_SHARED` when several
/// services use the address, whose flows then keep a `REVERSE` entry each.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BackendAddrValue {
    pub vip: [u8; 16],
    pub vport: [u8; 2],
    pub _pad: [u8; 2],
    pub service_id: u32,
    pub backend_id: u32,
    /// `BA_F_*`
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<BackendAddrValue>() == 32);

/// A next hop the FIB named, cached for `NEXTHOP_TTL_NS` so that most packets skip the
/// route lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NextHop {
    /// Egress interface (a VLAN device resolved to its parent); 0: nothing cached.
    pub ifindex: u32,
    /// MTU of the route (the FIB's `mtu_result`).
    pub mtu: u16,
    /// VLAN id the frame must carry on `ifindex` (the FIB named a VLAN device); 0: untagged.
    pub vlan: u16,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    /// `NH_F_*`
    pub flags: u32,
    /// `CLOCK_MONOTONIC_COARSE` ns after which the entry must be looked up again.
    pub expires_ns: u64,
}
const _: () = assert!(core::mem::size_of::<NextHop>() == 32);

/// Key of the `FRAGS` LRU: a datagram in flight as fragments (IPv4 id, or the IPv6 fragment
/// header's identification).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// The IPv4 id (16 bits) or the IPv6 fragment identification, as a number (host order).
    pub id: u32,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FragKey>() == 40);

/// Key of `ADDRS`: an address alone (a `ServiceKey` with port and protocol zero).
pub type AddrKey = ServiceKey;

/// Value of `FRAGS`: how the first fragment was rewritten, so that later ones follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragValue {
    /// The address written into the later fragments (backend or VIP).
    pub addr: [u8; 16],
    pub service_id: u32,
    pub backend_id: u32,
    /// `FRAG_F_*`
    pub flags: u32,
    pub _pad: u32,
    /// `CLOCK_MONOTONIC_COARSE` ns when the first fragment was seen.
    pub created_ns: u64,
    /// Next hop of the datagram, cached.
    pub nh: NextHop,
}
const _: () = assert!(core::mem::size_of::<FragValue>() == 72);

/// Per-CPU passive-health counters of a backend (`PASSIVE_STATS`, indexed by backend id):
/// what the data path sees of its handshakes and answers.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PassiveCounters {
    /// TCP SYNs of new flows forwarded to the backend.
    pub syns: u64,
    /// SYN-ACKs from the backend (answered handshakes).
    pub synacks: u64,
    /// RSTs from the backend before it answered the handshake (refused).
    pub refused: u64,
    /// ICMP / ICMPv6 "unreachable" from or about the backend quoting a SYN.
    pub unreachable: u64,
    /// Sampled SYNs not answered within the backend's `syn_timeout_ns`.
    pub unanswered: u64,
    /// Refusals not forwarded to the client (`redispatch`).
    pub redispatched: u64,
    /// New UDP flows sent to the backend.
    pub udp_flows: u64,
    /// UDP flows the backend answered (first reply).
    pub udp_answered: u64,
}
const _: () = assert!(core::mem::size_of::<PassiveCounters>() == 64);

impl PassiveCounters {
    pub fn add(&mut self, o: &PassiveCounters) {
        self.syns += o.syns;
        self.synacks += o.synacks;
        self.refused += o.refused;
        self.unreachable += o.unreachable;
        self.unanswered += o.unanswered;
        self.redispatched += o.redispatched;
        self.udp_flows += o.udp_flows;
        self.udp_answered += o.udp_answered;
    }
}

/// `SYN_SAMPLES`, indexed by backend id: one SYN in flight to the backend, sampled, to learn
/// whether SYNs get answered without a connection-table entry per SYN.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SynSample {
    /// `CLOCK_MONOTONIC_COARSE` ns the sampled SYN was forwarded; 0: none.
    pub sent_ns: u64,
    /// Flow hash of the sampled SYN's flow.
    pub flow_hash: u32,
    /// The backend answered it (SYN-ACK).
    pub answered: u32,
}
const _: () = assert!(core::mem::size_of::<SynSample>() == 16);

/// `PASSIVE_CONF`, indexed by backend id, written by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PassiveConf {
    /// A sampled SYN unanswered this long counts as `unanswered`; 0: no sampling.
    pub syn_timeout_ns: u64,
}
const _: () = assert!(core::mem::size_of::<PassiveConf>() == 8);

/// Value of `VLANS`, keyed by a VLAN device's ifindex: where its frames really leave.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VlanInfo {
    /// The parent (physical) interface.
    pub parent_ifindex: u32,
    /// VLAN id (host order).
    pub vlan_id: u16,
    /// `VLAN_F_*`: 0 for 802.1Q.
    pub flags: u16,
}
const _: () = assert!(core::mem::size_of::<VlanInfo>() == 8);

/// Value of `REVERSE`: what a backend's reply must be rewritten back to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RevValue {
    pub vip: [u8; 16],
    pub vport: [u8; 2],
    pub _pad: [u8; 2],
    pub service_id: u32,
    pub backend_id: u32,
    pub _pad2: u32,
    /// The next hop towards the client, cached.
    pub nh: NextHop,
}
const _: () = assert!(core::mem::size_of::<RevValue>() == 64);

/// Per-CPU traffic counters of a service or a backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counters {
    /// Client → backend packets and bytes (as received).
    pub packets: u64,
    pub bytes: u64,
    /// Flows confirmed: their backend answered (TCP: anything but a RST on a flow pinned at
    /// the client's first non-SYN packet; UDP: the first reply). A flood of SYNs or one-packet
    /// UDP flows cannot inflate it.
    pub new_flows: u64,
    /// Backend → client packets and bytes.
    pub reply_packets: u64,
    pub reply_bytes: u64,
    /// Packets dropped because no backend was usable.
    pub dropped: u64,
    /// TCP SYNs (without ACK) from clients.
    pub syns: u64,
}
const _: () = assert!(core::mem::size_of::<Counters>() == 56);

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.new_flows += o.new_flows;
        self.reply_packets += o.reply_packets;
        self.reply_bytes += o.reply_bytes;
        self.dropped += o.dropped;
        self.syns += o.syns;
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceInfo {}
    unsafe impl aya::Pod for BackendInfo {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for RevValue {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for NextHop {}
    unsafe impl aya::Pod for BackendAddrValue {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragValue {}
    unsafe impl aya::Pod for VlanInfo {}
    unsafe impl aya::Pod for PassiveCounters {}
    unsafe impl aya::Pod for SynSample {}
    unsafe impl aya::Pod for PassiveConf {}
}

/// Value of the `DSR` array, indexed by service id: how a service in direct-server-return
/// mode sends client packets to its backends (read when its `ServiceInfo` has `SVC_F_DSR`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DsrConf {
    /// The outer source prefix (`ipip`, `gue`): its network address, IPv4 in the first 4
    /// bytes, network order.
    pub src_prefix: [u8; 16],
    /// The host bits of the outer source taken from the flow hash: a mask over the last 4
    /// bytes of the address (network order as a `u32` read from memory).
    pub src_mask: [u8; 4],
    /// `DSR_ENCAP_*`
    pub encap: u8,
    pub _pad: u8,
    /// GUE's UDP destination port, network order.
    pub gue_port: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<DsrConf>() == 24);

/// Keys of the `DECAP_VIPS` map of `xlb_decap`: an inner destination address the program
/// decapsulates for (port and protocol zero, as an `AddrKey`).
pub type DecapVipKey = ServiceKey;

#[cfg(feature = "user")]
unsafe impl aya::Pod for DsrConf {}

/// Value of the `HC_TARGETS` map of `xlb_hc` (the TC egress program of DSR health checks),
/// keyed by the check socket's mark (`HC_MARK_BASE | backend id`): how a check's packets to
/// the VIP reach that backend, the way the service's client packets do.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HcTarget {
    /// The backend's address (the outer destination; for `l2` the neighbour), network
    /// order, IPv4 in the first 4 bytes.
    pub backend: [u8; 16],
    /// The outer source (`ipip`, `gue`).
    pub src: [u8; 16],
    /// `AF_INET` / `AF_INET6`: the family of the VIP and of the backend.
    pub family: u8,
    /// `DSR_ENCAP_*`
    pub encap: u8,
    /// GUE's UDP destination port, network order.
    pub gue_port: [u8; 2],
    /// GUE's UDP source port, network order.
    pub gue_sport: [u8; 2],
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<HcTarget>() == 40);

#[cfg(feature = "user")]
unsafe impl aya::Pod for HcTarget {}
