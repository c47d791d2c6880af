//! Bounds-checked access to the frame, and the parsers: Ethernet with up to two VLAN tags,
//! IPv4 (options, fragments), IPv6 (extension headers, fragments), TCP, UDP and ICMP.
use aya_ebpf::programs::XdpContext;
use lb_common::{global, FlowKey, AF_INET, AF_INET6, MAX_EXT_HEADERS, PROTO_TCP, PROTO_UDP};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::maps::count;

/// The one bounds check: a pointer to a `T` at `off`, or `Err` if the frame is too short.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Result<*mut T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    // Offsets read back from map memory are unknown to the verifier: bound them.
    let off = off & 0x3fff;
    if start + off + core::mem::size_of::<T>() > end {
        return Err(());
    }
    Ok((start + off) as *mut T)
}

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;
/// IPv4 flags and fragment offset, in host order of the 16-bit field.
pub const IP_DF: u16 = 0x4000;
pub const IP_MF: u16 = 0x2000;
pub const IP_OFFSET: u16 = 0x1fff;

/// `Pkt::kind`: TCP or UDP with its header (a whole datagram or a first fragment).
pub const KIND_L4: u8 = 0;
/// `Pkt::kind`: a later fragment: no L4 header, ports zero in `key`.
pub const KIND_LATER_FRAGMENT: u8 = 1;
/// `Pkt::kind`: ICMP / ICMPv6, not fragmented.
pub const KIND_ICMP: u8 = 2;

/// A parsed packet: its 5-tuple and header offsets.
///
/// The classifier works on a copy in the per-CPU `SCRATCH` map, not on the stack: the
/// verifier does not track map memory, so the many parse paths (VLAN tags, IPv4 options,
/// IPv6 extension-header chains, fragments) meet in one state instead of multiplying the
/// states of everything after them. Offsets are masked where they are used.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pkt {
    /// The packet's own 5-tuple, as received (ports zero for later fragments).
    pub key: FlowKey,
    pub l3: usize,
    pub l4: usize,
    /// Bytes from `l4` to the end of the IP packet (this fragment's payload).
    pub l4_len: usize,
    /// The IP packet's length (IPv4 total length, IPv6 40 + payload length).
    pub ip_len: usize,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
    pub ttl: u8,
    /// VLAN tags on the frame (0..=2).
    pub tags: u8,
    /// `KIND_*`
    pub kind: u8,
    /// A first fragment (more fragments follow).
    pub first_fragment: bool,
    /// IPv4 DF.
    pub df: bool,
    /// Strict L4 checks failed (bad TCP data offset, UDP length, IPv6 UDP checksum 0):
    /// enforced only for packets to a service or from a backend.
    pub l4_bad: bool,
    pub _pad: u8,
    /// IPv4 id or the IPv6 fragment identification (fragments only).
    pub frag_id: u32,
}

#[inline(always)]
pub fn malformed() -> u32 {
    count(global::MALFORMED);
    count(global::DROPPED);
    aya_ebpf::bindings::xdp_action::XDP_DROP
}

#[inline(always)]
pub fn pass() -> u32 {
    count(global::PASSED);
    aya_ebpf::bindings::xdp_action::XDP_PASS
}

/// Ethernet and VLAN tags: the ethertype of the payload, its offset and the number of tags.
/// `Err(action)` for frames that are not ours.
#[inline(always)]
pub fn parse_eth(ctx: &XdpContext) -> Result<(u16, usize, u8), u32> {
    let eth: *const EthHdr = ptr_at(ctx, 0).map_err(|_| malformed())?;
    // SAFETY: `ptr_at` checked that the Ethernet header is inside the frame.
    let mut ethertype =
        u16::from_be(unsafe { core::ptr::addr_of!((*eth).ether_type).read_unaligned() });
    let mut l3 = EthHdr::LEN;
    let mut tags = 0u8;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let tag: *const [u8; 4] = ptr_at(ctx, l3).map_err(|_| malformed())?;
        // SAFETY: bounds checked by `ptr_at`.
        let tag = unsafe { *tag };
        ethertype = u16::from_be_bytes([tag[2], tag[3]]);
        l3 += 4;
        tags = 1;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            let tag: *const [u8; 4] = ptr_at(ctx, l3).map_err(|_| malformed())?;
            // SAFETY: bounds checked by `ptr_at`.
            let tag = unsafe { *tag };
            ethertype = u16::from_be_bytes([tag[2], tag[3]]);
            l3 += 4;
            tags = 2;
            if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
                return Err(pass());
            }
        }
    }
    Ok((ethertype, l3, tags))
}

/// TCP or UDP header checks: the header must be inside the frame and the IP payload
/// (`malformed` otherwise); answers the ports, the TCP flags and whether the strict checks
/// fail.
#[inline(always)]
fn l4_header(
    ctx: &XdpContext,
    proto: u8,
    l4: usize,
    l4_len: usize,
    first_fragment: bool,
    v6: bool,
) -> Result<([u8; 4], u8, bool), u32> {
    if proto == PROTO_TCP {
        let th: *const [u8; 20] = ptr_at(ctx, l4).map_err(|_| malformed())?;
        if l4_len < 20 {
            return Err(malformed());
        }
        // SAFETY: bounds checked by `ptr_at`.
        let th = unsafe { &*th };
        let doff = ((th[12] >> 4) as usize) << 2;
        let bad = doff < 20 || doff > l4_len;
        Ok(([th[0], th[1], th[2], th[3]], th[13], bad))
    } else {
        let uh: *const [u8; 8] = ptr_at(ctx, l4).map_err(|_| malformed())?;
        if l4_len < 8 {
            return Err(malformed());
        }
        // SAFETY: bounds checked by `ptr_at`.
        let uh = unsafe { &*uh };
        let ulen = u16::from_be_bytes([uh[4], uh[5]]) as usize;
        let mut bad = if first_fragment {
            ulen < 8
        } else {
            ulen != l4_len
        };
        if v6 && uh[6] == 0 && uh[7] == 0 {
            bad = true;
        }
        Ok(([uh[0], uh[1], uh[2], uh[3]], 0, bad))
    }
}

#[inline(always)]
pub fn parse_v4(ctx: &XdpContext, l3: usize, tags: u8, p: &mut Pkt) -> Result<(), u32> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, l3).map_err(|_| malformed())?;
    // SAFETY: bounds checked by `ptr_at`.
    let ip = unsafe { &*ip };
    let vihl = ip.vihl;
    let ihl = ((vihl & 0x0f) as usize) << 2;
    if vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return Err(malformed());
    }
    let tot_len = u16::from_be_bytes(ip.tot_len) as usize;
    let frame_len = ctx.data_end() - ctx.data();
    if tot_len < ihl || l3 + tot_len > frame_len {
        return Err(malformed());
    }
    let frags = u16::from_be_bytes(ip.frags);
    let proto = ip.proto;
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src[..4].copy_from_slice(&ip.src_addr);
    dst[..4].copy_from_slice(&ip.dst_addr);
    let l4 = l3 + ihl;
    let l4_len = tot_len - ihl;
    p.key.src = src;
    p.key.dst = dst;
    p.key.sport = [0; 2];
    p.key.dport = [0; 2];
    p.key.proto = proto;
    p.key.family = AF_INET;
    p.key._pad = [0; 2];
    p.l3 = l3;
    p.l4 = l4;
    p.l4_len = l4_len;
    p.ip_len = tot_len;
    p.tcp_flags = 0;
    p.ttl = ip.ttl;
    p.tags = tags;
    p.kind = KIND_L4;
    p.first_fragment = frags & IP_MF != 0;
    p.df = frags & IP_DF != 0;
    p.l4_bad = false;
    p.frag_id = u16::from_be_bytes(ip.id) as u32;
    if frags & IP_OFFSET != 0 {
        count(global::FRAGMENTS);
        if proto != PROTO_TCP && proto != PROTO_UDP {
            return Err(pass());
        }
        p.kind = KIND_LATER_FRAGMENT;
        p.first_fragment = false;
        return Ok(());
    }
    if proto == IPPROTO_ICMP {
        if p.first_fragment {
            count(global::FRAGMENTS);
            return Err(pass());
        }
        p.kind = KIND_ICMP;
        return Ok(());
    }
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err(pass());
    }
    if p.first_fragment {
        count(global::FRAGMENTS);
    }
    let (ports, flags, bad) = l4_header(ctx, proto, l4, l4_len, p.first_fragment, false)?;
    p.key.sport = [ports[0], ports[1]];
    p.key.dport = [ports[2], ports[3]];
    p.tcp_flags = flags;
    p.l4_bad = bad;
    Ok(())
}

#[inline(always)]
pub fn parse_v6(ctx: &XdpContext, l3: usize, tags: u8, p: &mut Pkt) -> Result<(), u32> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, l3).map_err(|_| malformed())?;
    // SAFETY: bounds checked by `ptr_at`.
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 {
        return Err(malformed());
    }
    let payload_len = u16::from_be_bytes(ip.payload_len) as usize;
    let frame_len = ctx.data_end() - ctx.data();
    let end = l3 + Ipv6Hdr::LEN + payload_len;
    if end > frame_len {
        return Err(malformed());
    }
    let mut nh = ip.next_hdr;
    let mut off = l3 + Ipv6Hdr::LEN;
    let mut fragmented = false;
    let mut frag_offset = 0u16;
    let mut more = false;
    let mut frag_id = 0u32;
    let mut i = 0;
    while i < MAX_EXT_HEADERS {
        if nh != IPPROTO_HOPOPTS
            && nh != IPPROTO_ROUTING
            && nh != IPPROTO_DSTOPTS
            && nh != IPPROTO_FRAGMENT
        {
            break;
        }
        // Every header must lie inside the IP payload.
        if off + 8 > end {
            return Err(malformed());
        }
        // Offsets stay far below 64 KiB: each header is at most 2 KiB.
        let h: *const [u8; 8] = ptr_at(ctx, off & 0xffff).map_err(|_| malformed())?;
        // SAFETY: bounds checked by `ptr_at`.
        let h = unsafe { *h };
        if nh == IPPROTO_FRAGMENT {
            let fo = u16::from_be_bytes([h[2], h[3]]);
            fragmented = true;
            frag_offset = fo >> 3;
            more = fo & 1 != 0;
            frag_id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            off += 8;
            nh = h[0];
            if frag_offset != 0 {
                // What follows a later fragment's header is payload, not headers.
                break;
            }
            i += 1;
            continue;
        } else {
            let len = ((h[1] as usize) + 1) << 3;
            if off + len > end {
                return Err(malformed());
            }
            if nh == IPPROTO_ROUTING && h[3] != 0 {
                count(global::EXT_HEADERS_PASSED);
                return Err(pass());
            }
            off += len;
        }
        nh = h[0];
        i += 1;
    }
    if frag_offset == 0
        && (nh == IPPROTO_HOPOPTS
            || nh == IPPROTO_ROUTING
            || nh == IPPROTO_DSTOPTS
            || nh == IPPROTO_FRAGMENT)
    {
        count(global::EXT_HEADERS_PASSED);
        return Err(pass());
    }
    if off > end {
        return Err(malformed());
    }
    p.key.src = ip.src_addr;
    p.key.dst = ip.dst_addr;
    p.key.sport = [0; 2];
    p.key.dport = [0; 2];
    p.key.proto = nh;
    p.key.family = AF_INET6;
    p.key._pad = [0; 2];
    p.l3 = l3;
    p.l4 = off;
    p.l4_len = end - off;
    p.ip_len = Ipv6Hdr::LEN + payload_len;
    p.tcp_flags = 0;
    p.ttl = ip.hop_limit;
    p.tags = tags;
    p.kind = KIND_L4;
    p.first_fragment = fragmented && frag_offset == 0 && more;
    p.df = true;
    p.l4_bad = false;
    p.frag_id = frag_id;
    if fragmented {
        count(global::FRAGMENTS);
    }
    if fragmented && frag_offset != 0 {
        if nh != PROTO_TCP && nh != PROTO_UDP {
            return Err(pass());
        }
        p.kind = KIND_LATER_FRAGMENT;
        return Ok(());
    }
    if nh != PROTO_TCP && nh != PROTO_UDP {
        if nh == IPPROTO_ICMPV6 && !fragmented {
            p.kind = KIND_ICMP;
            return Ok(());
        }
        return Err(pass());
    }
    let (ports, flags, bad) = l4_header(ctx, nh, off & 0xffff, p.l4_len, p.first_fragment, true)?;
    p.key.sport = [ports[0], ports[1]];
    p.key.dport = [ports[2], ports[3]];
    p.tcp_flags = flags;
    p.l4_bad = bad;
    Ok(())
}
