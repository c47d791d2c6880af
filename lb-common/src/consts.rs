//! Limits and map names: the one place both sides read them from.

/// Services the maps are sized for by default (`[daemon] max_services`).
pub const DEFAULT_MAX_SERVICES: u32 = 64;
/// Backends across all target groups (size of the `BACKENDS` array).
pub const MAX_BACKENDS: u32 = 4096;
/// Default Maglev lookup table size per service (a prime, as the Maglev paper asks).
pub const DEFAULT_RING_SIZE: u32 = 65537;
/// Default size of the connection tracking LRU (`[daemon] conntrack_size`).
pub const DEFAULT_CONNTRACK_SIZE: u32 = 1_000_000;
/// Entries of `UNCONFIRMED` (TCP handshakes, UDP flows without a reply yet) per entry of
/// `CONNTRACK`: a quarter, at least `MIN_UNCONFIRMED_SIZE`.
pub const UNCONFIRMED_DIVISOR: u32 = 4;
pub const MIN_UNCONFIRMED_SIZE: u32 = 1024;
/// Every service has two Maglev tables: the live one and the one being written.
pub const SLOTS_PER_SERVICE: u32 = 2;
/// Index in `MAGLEV` of entry `pos` of the table in `slot` of service `service_id`, for
/// tables of `ring` entries: the one layout both sides use.
#[inline(always)]
pub const fn maglev_index(service_id: u32, slot: u32, ring: u32, pos: u32) -> u32 {
    (service_id * SLOTS_PER_SERVICE + slot) * ring + pos
}
/// A Maglev table entry meaning "no backend".
pub const NO_BACKEND: u32 = u32::MAX;

pub const AF_INET: u8 = 4;
pub const AF_INET6: u8 = 6;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

// Map names, as declared in lb-ebpf and looked up by the daemon.
pub const MAP_SERVICES: &str = "SERVICES";
pub const MAP_MAGLEV: &str = "MAGLEV";
pub const MAP_BACKENDS: &str = "BACKENDS";
pub const MAP_CONNTRACK: &str = "CONNTRACK";
pub const MAP_REVERSE: &str = "REVERSE";
pub const MAP_UNCONFIRMED: &str = "UNCONFIRMED";
pub const MAP_SERVICE_STATS: &str = "SERVICE_STATS";
pub const MAP_BACKEND_STATS: &str = "BACKEND_STATS";
pub const MAP_GLOBAL_STATS: &str = "GLOBAL_STATS";
pub const MAP_NEXTHOPS: &str = "NEXTHOPS";
pub const MAP_BACKEND_ADDRS: &str = "BACKEND_ADDRS";
pub const MAP_PORTS: &str = "PORTS";
pub const MAP_FRAGS: &str = "FRAGS";
pub const MAP_TX_PORTS: &str = "TX_PORTS";
pub const MAP_VLANS: &str = "VLANS";
pub const MAP_ADDRS: &str = "ADDRS";
pub const MAP_PASSIVE_STATS: &str = "PASSIVE_STATS";
pub const MAP_SYN_SAMPLES: &str = "SYN_SAMPLES";
pub const MAP_PASSIVE_CONF: &str = "PASSIVE_CONF";
/// Per-service DSR settings (`DsrConf`, indexed by service id).
pub const MAP_DSR: &str = "DSR";
/// Entries of `ADDRS`: every VIP and backend address (port and protocol zero).
pub const MAX_ADDRS: u32 = 2 * MAX_BACKENDS;

/// Entries of the `FRAGS` LRU: datagrams in flight as fragments (first fragment seen, later
/// ones to follow).
pub const FRAG_TABLE_SIZE: u32 = 16384;
/// How long a `FRAGS` entry lets later fragments follow their first (ns).
pub const FRAG_TTL_NS: u64 = 5_000_000_000;
/// Interfaces the program may redirect to (`TX_PORTS` devmap) and VLAN devices it knows
/// (`VLANS`).
pub const MAX_TX_PORTS: u32 = 256;
pub const MAX_VLANS: u32 = 1024;
/// IPv6 extension headers walked to find TCP/UDP (hop-by-hop, routing, destination options,
/// fragment); a longer chain is passed to the kernel.
pub const MAX_EXT_HEADERS: usize = 6;
/// Bytes of the offending packet quoted in an ICMP error xlb sends (from its IP header on).
pub const ICMP_QUOTE_MAX: usize = 128;

/// `PORTS` is two bitmaps of the 65536 ports, 64 ports a word: destination ports of services
/// (words `0..1024`), then source ports of backends (words `1024..2048`). Packets whose ports
/// are in neither skip both hash lookups.
pub const PORT_WORDS: u32 = 1024;
pub const PORTS_SERVICE: u32 = 0;
pub const PORTS_BACKEND: u32 = PORT_WORDS;

/// The `PORTS` word and bit of `port` in the bitmap starting at `base`.
#[inline(always)]
pub const fn port_bit(base: u32, port: u16) -> (u32, u64) {
    (base + (port as u32 >> 6), 1u64 << (port & 63))
}

/// How long a cached next hop (FIB result) is used before it is looked up again: route and
/// neighbour changes reach established traffic within this.
pub const NEXTHOP_TTL_NS: u64 = 1_000_000_000;
/// `CtValue::last_seen_ns` is rewritten only when it is older than this (a write per packet
/// would dirty the entry's cache line on every CPU).
pub const LAST_SEEN_GRANULARITY_NS: u64 = 100_000_000;

/// Global (`.rodata`) variables set at load time.
pub const GLOBAL_RING_SIZE: &str = "RING_SIZE";
pub const GLOBAL_HASH_SEED: &str = "HASH_SEED";
/// Program names.
pub const PROG_XDP_LB: &str = "xlb";
pub const PROG_XDP_PASS: &str = "xlb_pass";
pub const PROG_XDP_TX: &str = "xlb_tx";
/// Tracepoint program counting frames the egress of a redirect dropped.
pub const PROG_XMIT: &str = "xlb_xmit";
/// The backend side of DSR: strips IPIP / GUE addressed to its host (`xlb decap`).
pub const PROG_XDP_DECAP: &str = "xlb_decap";

/// Indexes into the `GLOBAL_STATS` per-CPU array.
pub mod global {
    /// Packets handed to the kernel untouched (not for a service).
    pub const PASSED: u32 = 0;
    /// Packets dropped on purpose (all reasons).
    pub const DROPPED: u32 = 1;
    /// Truncated or malformed headers (dropped).
    pub const MALFORMED: u32 = 2;
    /// Packets to a service whose flow was in neither the connection table nor `UNCONFIRMED`.
    pub const CONNTRACK_MISS: u32 = 3;
    /// FIB lookups that failed (packet dropped).
    pub const FIB_FAILED: u32 = 4;
    /// FIB lookups that had no neighbour entry: the rewritten packet goes to the kernel,
    /// which resolves the neighbour and forwards it.
    pub const FIB_NO_NEIGH: u32 = 5;
    /// Packets to a service with no usable backend (dropped).
    pub const NO_BACKEND: u32 = 6;
    /// IPv4 fragments (passed to the kernel).
    pub const FRAGMENTS: u32 = 7;
    /// ICMP / ICMPv6 (passed to the kernel).
    pub const ICMP: u32 = 8;
    /// Client-to-service packets forwarded to a backend.
    pub const FORWARDED: u32 = 9;
    /// Backend replies rewritten back to the VIP and forwarded to the client.
    pub const REPLIES: u32 = 10;
    /// Redirects the kernel refused (packet dropped).
    pub const REDIRECT_FAILED: u32 = 11;
    /// ICMP errors about a balanced flow, translated and sent to its backend.
    pub const ICMP_TO_BACKEND: u32 = 12;
    /// ICMP errors about a balanced flow's client-to-backend leg (or sent by a backend),
    /// translated and sent to the client from the VIP.
    pub const ICMP_TO_CLIENT: u32 = 13;
    /// Packets too big for the egress link that may not be fragmented: answered with ICMP
    /// "fragmentation needed" / "packet too big" (dropped).
    pub const TOO_BIG_ICMP: u32 = 14;
    /// IPv4 packets too big for the egress link without DF: rewritten and handed to the
    /// kernel, which fragments them.
    pub const TOO_BIG_KERNEL: u32 = 15;
    /// Later fragments that followed their first fragment's flow (forwarded or replied).
    pub const FRAGS_FOLLOWED: u32 = 16;
    /// Later fragments whose first fragment was not seen (or expired): dropped.
    pub const FRAGS_ORPHAN: u32 = 17;
    /// Packets to a service with TTL / hop limit ≤ 1: handed to the kernel untouched.
    pub const TTL_EXCEEDED: u32 = 18;
    /// Backend replies without a connection-table entry, from an address serving one
    /// service: translated to the VIP and the entry re-created.
    pub const STRAY_RECREATED: u32 = 19;
    /// Backend replies without a usable entry that cannot be translated (shared address,
    /// or the flow now belongs to another backend): dropped.
    pub const STRAY_DROPPED: u32 = 20;
    /// Rewritten packets whose egress interface is not in `TX_PORTS` (cannot take XDP
    /// frames, or nested VLAN): handed to the kernel, which forwards them.
    pub const EGRESS_KERNEL: u32 = 21;
    /// IPv6 packets with more extension headers than are walked (or a routing header with
    /// segments left): passed.
    pub const EXT_HEADERS_PASSED: u32 = 22;
    /// Redirected frames the egress dropped after the program returned (the kernel's
    /// `xdp:xdp_devmap_xmit` tracepoint, counted by `xlb_xmit` for frames from interfaces in
    /// `TX_PORTS`): `forwarded` counts them too, this says how many did not leave.
    pub const XMIT_DROPS: u32 = 23;
    /// Flows pinned in `UNCONFIRMED`: TCP handshakes (a SYN that missed the table) and new
    /// UDP flows.
    pub const UNCONFIRMED_NEW: u32 = 24;
    /// Flows moved from `UNCONFIRMED` to the connection table: TCP by the client's first
    /// packet after its SYN, UDP by the first reply.
    pub const CONFIRMED: u32 = 25;
    /// Backend SYN-ACKs and RSTs of handshakes without any entry (evicted from
    /// `UNCONFIRMED`), translated without making one.
    pub const SYNACK_STATELESS: u32 = 26;
    pub const COUNT: u32 = 27;
    /// Size of the `GLOBAL_STATS` array: room for counters of later versions, so that a
    /// restart adopts the pinned array.
    pub const SLOTS: u32 = 64;

    pub const NAMES: [&str; COUNT as usize] = [
        "passed",
        "dropped",
        "malformed",
        "conntrack_miss",
        "fib_failed",
        "fib_no_neigh",
        "no_backend",
        "fragments",
        "icmp",
        "forwarded",
        "replies",
        "redirect_failed",
        "icmp_to_backend",
        "icmp_to_client",
        "too_big_icmp",
        "too_big_kernel",
        "frags_followed",
        "frags_orphan",
        "ttl_exceeded",
        "stray_recreated",
        "stray_dropped",
        "egress_kernel",
        "ext_headers_passed",
        "xmit_drops",
        "unconfirmed",
        "confirmed",
        "synack_stateless",
    ];
}

/// `ServiceInfo::flags`
pub const SVC_F_EMPTY: u32 = 1;
/// `CtValue::flags`: a FIN or RST was seen in either direction: the flow is ending.
pub const CT_F_CLOSING: u32 = 1;
/// TCP header flags.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
/// `CtValue::flags`: the backend answered the flow (a SYN-ACK for TCP, any reply for UDP).
pub const CT_F_ANSWERED: u32 = 2;
/// `CtValue::flags`: a refusal of this flow's handshake was withheld (`redispatch`): the next
/// one is forwarded.
pub const CT_F_WITHHELD: u32 = 4;
/// `CtValue::flags`: the flow was counted as a new flow (confirmed, and answered since).
pub const CT_F_COUNTED: u32 = 8;
/// `CtValue::flags`: the entry was made (or renewed) by the client's SYN: a RST from the
/// backend before an answer refuses that handshake (passive health). An entry made from a
/// packet past the SYN (a moved flow, or a spoofed ACK) has no handshake to refuse.
pub const CT_F_SYN: u32 = 16;

/// `BackendInfo::flags`: the backend may receive new flows.
pub const BE_F_ACTIVE: u8 = 1;
/// `BackendInfo::flags`: established flows may continue (set while draining too).
pub const BE_F_ESTABLISHED_OK: u8 = 2;
/// `BackendInfo::flags`: the backend's address serves several services, so its flows keep a
/// `REVERSE` entry each for their replies.
pub const BE_F_SHARED: u8 = 4;
/// `BackendAddrValue::flags`: several services use this backend address: look replies up in
/// `REVERSE`.
pub const BA_F_SHARED: u32 = 1;

/// `FragValue::flags`: the datagram goes client → backend (destination rewritten); without
/// it, backend → client (source rewritten to the VIP).
pub const FRAG_F_FORWARD: u32 = 1;
/// `FragValue::flags`: the first fragment was not balanced (passed): so are the later ones.
pub const FRAG_F_PASS: u32 = 2;
/// `ADDRS` values: the address is a service's VIP / a backend's. Later fragments (which
/// carry no ports) to a VIP or from a backend address are dropped when their first fragment
/// was not seen.
pub const ADDR_F_VIP: u32 = 1;
pub const ADDR_F_BACKEND: u32 = 2;
/// `NextHop::flags`: the egress interface cannot take redirected XDP frames (not in
/// `TX_PORTS`): rewritten packets are handed to the kernel.
pub const NH_F_KERNEL: u32 = 1;
/// `NextHop::flags`: the route is through a gateway (the destination is not on a directly
/// connected link): DSR `l2` cannot use it.
pub const NH_F_GATEWAY: u32 = 2;
/// `BackendInfo::flags`: passive health's `redispatch`: the first RST (or ICMP unreachable)
/// the backend sends in answer to a flow's SYN is not forwarded, so that the client's SYN
/// retransmission goes to a healthy backend once the backend is marked down (a second
/// refusal of the same flow is forwarded; with the backend marked down, every refusal is
/// withheld while its service has other backends).
pub const BE_F_REDISPATCH: u8 = 8;

/// `ServiceInfo::flags`: direct server return: client packets go to the backend unchanged
/// (MACs rewritten, or encapsulated), as the service's `DSR` entry says; replies never pass.
pub const SVC_F_DSR: u32 = 2;
/// `DsrConf::encap`: MACs rewritten only (backend on a directly connected link).
pub const DSR_ENCAP_L2: u8 = 1;
/// `DsrConf::encap`: IPv4-in-IPv4 / IPv6-in-IPv6.
pub const DSR_ENCAP_IPIP: u8 = 2;
/// `DsrConf::encap`: IP in GUE (UDP, 4-byte GUE header, variant 0).
pub const DSR_ENCAP_GUE: u8 = 3;
/// The GUE port xlb uses unless configured (Katran's).
pub const DEFAULT_GUE_PORT: u16 = 6080;
/// Bytes of the GUE header xlb writes (version 0, no optional fields).
pub const GUE_HDR_LEN: usize = 4;
/// `FragValue::flags`: the datagram's service is in DSR mode: later fragments are sent the
/// same way (with `FRAG_F_FORWARD`).
pub const FRAG_F_DSR: u32 = 4;

/// DSR health checks through the encapsulation (`target = "vip"`): the TC egress program,
/// its map (mark → `HcTarget`) and its counters.
pub const PROG_TC_HC: &str = "xlb_hc";
pub const MAP_HC_TARGETS: &str = "HC_TARGETS";
pub const MAP_HC_STATS: &str = "HC_STATS";
/// The marks of health-check sockets: `HC_MARK_BASE | backend id` (ids below
/// `MAX_BACKENDS`, so the low 16 bits); `HC_MARK_MASK` selects the base.
pub const HC_MARK_BASE: u32 = 0x584c_0000;
pub const HC_MARK_MASK: u32 = 0xffff_0000;
pub mod hc {
    /// Marked packets sent to their backend (encapsulated or with its MAC).
    pub const SENT: u32 = 0;
    /// Packets without a mark of a known check (passed untouched).
    pub const PASSED: u32 = 1;
    /// Marked packets that could not be sent (no route to the backend, no room): dropped.
    pub const DROPPED: u32 = 2;
    pub const COUNT: u32 = 3;
    pub const NAMES: [&str; COUNT as usize] = ["sent", "passed", "dropped"];
}

/// `xlb_decap`: maps and counters.
pub const MAP_DECAP_STATS: &str = "DECAP_STATS";
pub const MAP_DECAP_VIPS: &str = "DECAP_VIPS";
pub const MAP_DECAP_CONF: &str = "DECAP_CONF";
/// Inner destinations `xlb decap` accepts at most (`--vip`).
pub const MAX_DECAP_VIPS: u32 = 1024;
/// `DECAP_CONF` indexes (u32 values): the GUE port (host order), and whether the VIP list
/// applies (1) or every inner destination is accepted (0).
pub const DECAP_CONF_GUE_PORT: u32 = 0;
pub const DECAP_CONF_VIP_FILTER: u32 = 1;
pub mod decap {
    /// IPIP / GUE packets addressed to this host, stripped and passed to the stack.
    pub const DECAPSULATED: u32 = 0;
    /// Everything else, passed untouched.
    pub const PASSED: u32 = 1;
    /// Tunnel packets addressed to this host that cannot be decapsulated (truncated, bad
    /// GUE header, inner family mismatch): dropped.
    pub const MALFORMED: u32 = 2;
    /// Tunnel packets whose inner destination is not one of `--vip`: passed untouched.
    pub const NOT_VIP: u32 = 3;
    pub const COUNT: u32 = 4;
    pub const NAMES: [&str; COUNT as usize] = ["decapsulated", "passed", "malformed", "not_vip"];
}
