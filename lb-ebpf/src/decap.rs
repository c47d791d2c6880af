//! `xlb_decap`: the backend side of DSR (`xlb decap`). IPv4 / IPv6 packets addressed to one
//! of this host's addresses (`DECAP_LOCAL`, kept by `xlb decap`) that carry IPIP (protocol
//! 4 / 41) or GUE (UDP to the `DECAP_CONF` port; version 0 with its header and options
//! skipped, or version 1: the IP packet right after the UDP header) lose their outer headers;
//! the inner packet goes to the stack (`XDP_PASS`), whose own checks (checksums, local
//! address) apply as for any packet. With a VIP list (`--vip`), only inner packets to those
//! addresses are stripped; the others pass untouched (`not_vip`). Tunnel packets to this
//! host that cannot be stripped (truncated, a GUE control message or unknown version, an
//! inner header that is not what the outer one says) are dropped (`malformed`); everything
//! else passes untouched (`passed`). The outer UDP checksum is not verified (the inner
//! packet's own checksums are, by the stack); outer IPv4 fragments and outer headers with
//! options or extension headers pass untouched.
use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::generated::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{Array, HashMap, PerCpuArray},
    programs::XdpContext,
    EbpfContext,
};
use lb_common::{
    decap, DecapVipKey, AF_INET, AF_INET6, DECAP_CONF_GUE_PORT, DECAP_CONF_VIP_FILTER,
    MAX_DECAP_VIPS, PROTO_UDP,
};

use crate::parse::{ptr_at, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6};

/// Per-CPU counters (`lb_common::decap`).
#[map(name = "DECAP_STATS")]
static DECAP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(decap::COUNT, 0);

/// Inner destinations to decapsulate for, when `DECAP_CONF[DECAP_CONF_VIP_FILTER]` is 1.
#[map(name = "DECAP_VIPS")]
static DECAP_VIPS: HashMap<DecapVipKey, u32> = HashMap::with_max_entries(MAX_DECAP_VIPS, 0);

/// This host's addresses: outer destinations that are "to this host".
#[map(name = "DECAP_LOCAL")]
static DECAP_LOCAL: HashMap<DecapVipKey, u32> = HashMap::with_max_entries(MAX_DECAP_VIPS, 0);

/// `DECAP_CONF_*` settings.
#[map(name = "DECAP_CONF")]
static DECAP_CONF: Array<u32> = Array::with_max_entries(2, 0);

const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;

#[inline(always)]
fn bump(i: u32) {
    if let Some(c) = DECAP_STATS.get_ptr_mut(i) {
        // SAFETY: a per-CPU counter: only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn passed() -> u32 {
    bump(decap::PASSED);
    XDP_PASS
}

#[inline(always)]
fn bad() -> u32 {
    bump(decap::MALFORMED);
    XDP_DROP
}

#[inline(always)]
fn conf(i: u32) -> u32 {
    match DECAP_CONF.get(i) {
        Some(v) => *v,
        None => 0,
    }
}

#[inline(always)]
fn get<const N: usize>(ctx: &XdpContext, off: usize) -> Option<[u8; N]> {
    let p: *const [u8; N] = ptr_at(ctx, off).ok()?;
    // SAFETY: bounds checked by `ptr_at`.
    Some(unsafe { *p })
}

#[inline(always)]
fn addr_key(a: &[u8], family: u8) -> DecapVipKey {
    let mut addr = [0u8; 16];
    if family == AF_INET {
        addr[..4].copy_from_slice(&a[..4]);
    } else {
        addr.copy_from_slice(&a[..16]);
    }
    DecapVipKey {
        addr,
        port: [0; 2],
        proto: 0,
        family,
    }
}

#[xdp]
pub fn xlb_decap(ctx: XdpContext) -> u32 {
    try_decap(&ctx)
}

#[inline(always)]
fn try_decap(ctx: &XdpContext) -> u32 {
    // Ethernet and up to two VLAN tags.
    let Some(eth) = get::<14>(ctx, 0) else {
        return passed();
    };
    let mut ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let mut l3 = 14usize;
    let mut tags = 0u8;
    while tags < 2 && (ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD) {
        let Some(tag) = get::<4>(ctx, l3) else {
            return passed();
        };
        ethertype = u16::from_be_bytes([tag[2], tag[3]]);
        l3 += 4;
        tags += 1;
    }
    let frame_len = ctx.data_end() - ctx.data();
    // The outer header: its end, the protocol it carries, and where its payload ends.
    let (mut off, proto, end) = if ethertype == ETH_P_IPV4 {
        let Some(ip) = get::<20>(ctx, l3) else {
            return passed();
        };
        let frags = u16::from_be_bytes([ip[6], ip[7]]);
        if ip[0] != 0x45 || frags & 0x3fff != 0 {
            return passed();
        }
        let p = ip[9];
        if p != IPPROTO_IPIP && p != IPPROTO_IPV6 && p != PROTO_UDP {
            return passed();
        }
        if DECAP_LOCAL
            .get_ptr(&addr_key(&ip[16..20], AF_INET))
            .is_none()
        {
            return passed();
        }
        let tot = u16::from_be_bytes([ip[2], ip[3]]) as usize;
        (l3 + 20, p, l3 + tot)
    } else if ethertype == ETH_P_IPV6 {
        let Some(ip) = get::<40>(ctx, l3) else {
            return passed();
        };
        let p = ip[6];
        if p != IPPROTO_IPIP && p != IPPROTO_IPV6 && p != PROTO_UDP {
            return passed();
        }
        if DECAP_LOCAL
            .get_ptr(&addr_key(&ip[24..40], AF_INET6))
            .is_none()
        {
            return passed();
        }
        let pl = u16::from_be_bytes([ip[4], ip[5]]) as usize;
        (l3 + 40, p, l3 + 40 + pl)
    } else {
        return passed();
    };
    if end > frame_len {
        return bad();
    }
    let mut inner_proto = proto;
    if proto == PROTO_UDP {
        let Some(uh) = get::<8>(ctx, off) else {
            return bad();
        };
        if u16::from_be_bytes([uh[2], uh[3]]) as u32 != conf(DECAP_CONF_GUE_PORT) {
            return passed();
        }
        off += 8;
        let Some(g) = get::<4>(ctx, off) else {
            return bad();
        };
        match g[0] >> 6 {
            // Version 0: no control messages; the header and its options are skipped.
            0 if g[0] & 0x20 == 0 => {
                inner_proto = g[1];
                off += 4 + (((g[0] & 0x1f) as usize) << 2);
            }
            // Version 1: the IP packet itself (its version says which).
            1 => {
                inner_proto = if g[0] >> 4 == 4 {
                    IPPROTO_IPIP
                } else {
                    IPPROTO_IPV6
                };
            }
            _ => return bad(),
        }
    }
    // The inner header: its version must match what the outer header said, and it must lie
    // inside the outer packet.
    let off = off & 0xff;
    let (inner_type, family, dst, len) = if inner_proto == IPPROTO_IPIP {
        let Some(ip) = get::<20>(ctx, off) else {
            return bad();
        };
        if ip[0] >> 4 != 4 {
            return bad();
        }
        let mut d = [0u8; 16];
        d[..4].copy_from_slice(&ip[16..20]);
        (
            ETH_P_IPV4,
            AF_INET,
            d,
            u16::from_be_bytes([ip[2], ip[3]]) as usize,
        )
    } else if inner_proto == IPPROTO_IPV6 {
        let Some(ip) = get::<40>(ctx, off) else {
            return bad();
        };
        if ip[0] >> 4 != 6 {
            return bad();
        }
        let mut d = [0u8; 16];
        d.copy_from_slice(&ip[24..40]);
        (
            ETH_P_IPV6,
            AF_INET6,
            d,
            40 + u16::from_be_bytes([ip[4], ip[5]]) as usize,
        )
    } else {
        return bad();
    };
    if off + len > end {
        return bad();
    }
    if conf(DECAP_CONF_VIP_FILTER) != 0 && DECAP_VIPS.get_ptr(&addr_key(&dst, family)).is_none() {
        bump(decap::NOT_VIP);
        return XDP_PASS;
    }
    // The L2 header moves up to just before the inner packet, with the inner ethertype.
    let n = off - l3;
    let moved = match tags {
        0 => move_l2::<14>(ctx, n, inner_type),
        1 => move_l2::<18>(ctx, n, inner_type),
        _ => move_l2::<22>(ctx, n, inner_type),
    };
    if !moved {
        return bad();
    }
    // SAFETY: a helper taking the context; the frame is longer than `n`.
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, n as i32) } != 0 {
        return bad();
    }
    bump(decap::DECAPSULATED);
    XDP_PASS
}

/// Copy the `N`-byte L2 header `n` bytes further, with `ethertype` as its last field.
#[inline(always)]
fn move_l2<const N: usize>(ctx: &XdpContext, n: usize, ethertype: u16) -> bool {
    let Some(mut h) = get::<N>(ctx, 0) else {
        return false;
    };
    let t = ethertype.to_be_bytes();
    h[N - 2] = t[0];
    h[N - 1] = t[1];
    let Ok(p) = ptr_at::<[u8; N]>(ctx, n & 0xff) else {
        return false;
    };
    // SAFETY: bounds checked by `ptr_at`.
    unsafe { *p = h };
    true
}
