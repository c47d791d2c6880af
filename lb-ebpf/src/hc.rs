//! `xlb_hc`: DSR health checks through the encapsulation (`target = "vip"`). A TC egress
//! program on xlb's health-check interface (`xlbhc0`, a veth whose peer takes nothing): the
//! daemon's check sockets connect to the VIP with the mark `HC_MARK_BASE | backend id`, an
//! `ip rule` sends marked packets to a table whose routes leave through that interface, and
//! here each marked packet is sent to its backend as the service's client packets are
//! (README, "Forwarding modes"), from `HC_TARGETS[mark]`:
//!
//! - `l2`: redirected out of the interface the FIB names for the backend's address, with the
//!   backend's MAC (`bpf_redirect_neigh` with the backend as the neighbour);
//! - `ipip` / `gue`: the outer IPv4 / IPv6 header (and UDP + 4-byte GUE header) pushed in
//!   front of the IP packet (`bpf_skb_adjust_room` with the encapsulation flags, so that the
//!   kernel's GSO and checksum offload treat it as a tunnel), from the `HcTarget` source to
//!   the backend, then redirected toward the backend (`bpf_redirect_neigh`, the neighbour
//!   from the route). The outer header is built as the XDP path builds it (`encap.rs`): TTL
//!   64, TOS / traffic class copied, DF copied (IPv4 id 0), IPv4 header checksum computed;
//!   the GUE UDP checksum is zero, over IPv6 too (the inner checksum of a local socket's
//!   packet is not final yet: offloaded); `xlb decap` accepts it.
//!
//! Packets without a check's mark pass untouched (`passed`); marked packets that cannot be
//! sent (no entry, a family mismatch, no route to the backend) are dropped (`dropped`).
use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_fib_lookup, bpf_redir_neigh,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4,
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV6, BPF_F_ADJ_ROOM_ENCAP_L4_UDP, TC_ACT_OK, TC_ACT_SHOT,
    },
    helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_redirect_neigh, bpf_skb_store_bytes},
    macros::{classifier, map},
    maps::{HashMap, PerCpuArray},
    programs::TcContext,
    EbpfContext,
};
use lb_common::{
    csum, hc, HcTarget, AF_INET, DSR_ENCAP_GUE, DSR_ENCAP_L2, GUE_HDR_LEN, HC_MARK_BASE,
    HC_MARK_MASK, MAX_BACKENDS, PROTO_UDP,
};

use crate::parse::{ETH_P_IPV4, ETH_P_IPV6};

/// Mark → where the check's packets go (filled by the daemon).
#[map(name = "HC_TARGETS")]
static HC_TARGETS: HashMap<u32, HcTarget> = HashMap::with_max_entries(MAX_BACKENDS, 0);

/// The outer header being written and the FIB lookup's parameter block, one per CPU (off
/// the stack).
#[repr(C)]
pub struct Scratch {
    fib: bpf_fib_lookup,
    hdr: [u8; MAX_OUTER],
}

#[map(name = "HC_SCRATCH")]
static HC_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU counters (`lb_common::hc`).
#[map(name = "HC_STATS")]
static HC_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(hc::COUNT, 0);

const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;
/// The kernel's address families (`bpf_fib_lookup`, `bpf_redir_neigh`).
const KERNEL_AF_INET: u8 = 2;
const KERNEL_AF_INET6: u8 = 10;
const ETH_HLEN: usize = 14;
/// The largest outer header: IPv6, UDP, GUE.
const MAX_OUTER: usize = 40 + 8 + GUE_HDR_LEN;

#[inline(always)]
fn bump(i: u32) {
    if let Some(c) = HC_STATS.get_ptr_mut(i) {
        // SAFETY: a per-CPU counter: only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn dropped() -> i32 {
    bump(hc::DROPPED);
    TC_ACT_SHOT as i32
}

#[classifier]
pub fn xlb_hc(ctx: TcContext) -> i32 {
    try_hc(&ctx)
}

#[inline(always)]
fn try_hc(ctx: &TcContext) -> i32 {
    // SAFETY: the context pointer the kernel passed.
    let mark = unsafe { (*ctx.skb.skb).mark };
    if mark & HC_MARK_MASK != HC_MARK_BASE {
        bump(hc::PASSED);
        return TC_ACT_OK as i32;
    }
    let Some(t) = HC_TARGETS.get_ptr(&mark) else {
        return dropped();
    };
    // SAFETY: a map value pointer checked for null (map values live as long as the map).
    let t = unsafe { &*t };
    let Some(sc) = HC_SCRATCH.get_ptr_mut(0) else {
        return dropped();
    };
    // SAFETY: a per-CPU map value checked for null; the program runs to completion on its CPU.
    let sc = unsafe { &mut *sc };
    let v4 = t.family == AF_INET;
    let Ok(eth) = ctx.load::<[u8; ETH_HLEN]>(0) else {
        return dropped();
    };
    let ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    if ethertype != if v4 { ETH_P_IPV4 } else { ETH_P_IPV6 } {
        return dropped();
    }
    let Some(ifindex) = route(ctx, t, &mut sc.fib) else {
        return dropped();
    };
    if t.encap == DSR_ENCAP_L2 {
        let mut nh = bpf_redir_neigh {
            nh_family: 0,
            __bindgen_anon_1: aya_ebpf::bindings::bpf_redir_neigh__bindgen_ty_1 { ipv6_nh: [0; 4] },
        };
        if v4 {
            nh.nh_family = u32::from(KERNEL_AF_INET);
            nh.__bindgen_anon_1.ipv4_nh =
                u32::from_ne_bytes([t.backend[0], t.backend[1], t.backend[2], t.backend[3]]);
        } else {
            nh.nh_family = u32::from(KERNEL_AF_INET6);
            nh.__bindgen_anon_1.ipv6_nh = words(&t.backend);
        }
        bump(hc::SENT);
        // SAFETY: a helper taking a pointer to a parameter block on the stack and its size.
        return unsafe {
            bpf_redirect_neigh(
                ifindex,
                &mut nh,
                core::mem::size_of::<bpf_redir_neigh>() as i32,
                0,
            )
        } as i32;
    }
    if encapsulate(ctx, t, &mut sc.hdr).is_err() {
        return dropped();
    }
    bump(hc::SENT);
    // SAFETY: a helper without pointers (no neighbour given: the route's).
    unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}

/// An address as the kernel's `__u32[4]` (network order bytes kept).
#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

/// The interface the FIB names toward the backend (the main tables: the lookup carries no
/// mark), looked up as if the packet came in on this interface.
#[inline(always)]
fn route(ctx: &TcContext, t: &HcTarget, p: &mut bpf_fib_lookup) -> Option<u32> {
    // SAFETY: an all-zero `bpf_fib_lookup` is a valid parameter block.
    *p = unsafe { core::mem::zeroed() };
    // SAFETY: the context pointer the kernel passed.
    p.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if t.family == AF_INET {
        p.family = KERNEL_AF_INET;
        p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([t.src[0], t.src[1], t.src[2], t.src[3]]);
        p.__bindgen_anon_4.ipv4_dst =
            u32::from_ne_bytes([t.backend[0], t.backend[1], t.backend[2], t.backend[3]]);
    } else {
        p.family = KERNEL_AF_INET6;
        p.__bindgen_anon_3.ipv6_src = words(&t.src);
        p.__bindgen_anon_4.ipv6_dst = words(&t.backend);
    }
    // SAFETY: a helper taking the context and a parameter block on the stack with its size.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            p,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 || rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        Some(p.ifindex)
    } else {
        None
    }
}

/// Push the outer headers of `t` in front of the IP packet (after the Ethernet header).
#[inline(always)]
fn encapsulate(ctx: &TcContext, t: &HcTarget, h: &mut [u8; MAX_OUTER]) -> Result<(), ()> {
    let v4 = t.family == AF_INET;
    let gue = t.encap == DSR_ENCAP_GUE;
    let iph: usize = if v4 { 20 } else { 40 };
    let n = if gue { iph + 8 + GUE_HDR_LEN } else { iph };
    // The inner header's first 8 bytes: length, TOS / traffic class, DF.
    let first = ctx.load::<[u8; 8]>(ETH_HLEN).map_err(|_| ())?;
    let inner_len = if v4 {
        u16::from_be_bytes([first[2], first[3]]) as usize
    } else {
        40 + u16::from_be_bytes([first[4], first[5]]) as usize
    };
    let mut flags = if v4 {
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
    } else {
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV6
    } as u64;
    if gue {
        flags |= BPF_F_ADJ_ROOM_ENCAP_L4_UDP as u64;
    }
    ctx.adjust_room(n as i32, BPF_ADJ_ROOM_MAC, flags)
        .map_err(|_| ())?;
    let proto = if gue {
        PROTO_UDP
    } else if v4 {
        IPPROTO_IPIP
    } else {
        IPPROTO_IPV6
    };
    let outer_len = inner_len + n;
    *h = [0u8; MAX_OUTER];
    if v4 {
        let tot = (outer_len as u16).to_be_bytes();
        let df = first[6] & 0x40;
        h[0] = 0x45;
        h[1] = first[1];
        h[2] = tot[0];
        h[3] = tot[1];
        h[6] = df;
        h[8] = 64;
        h[9] = proto;
        h[12..16].copy_from_slice(&t.src[..4]);
        h[16..20].copy_from_slice(&t.backend[..4]);
        let Some(ip) = h.first_chunk::<20>() else {
            return Err(());
        };
        let c = csum::finish(csum::add(0, ip)).to_be_bytes();
        h[10] = c[0];
        h[11] = c[1];
    } else {
        let pl = ((outer_len - 40) as u16).to_be_bytes();
        let tc = (first[0] << 4) | (first[1] >> 4);
        h[0] = 0x60 | (tc >> 4);
        h[1] = tc << 4;
        h[4] = pl[0];
        h[5] = pl[1];
        h[6] = proto;
        h[7] = 64;
        h[8..24].copy_from_slice(&t.src);
        h[24..40].copy_from_slice(&t.backend);
    }
    if gue {
        let ulen = ((outer_len - iph) as u16).to_be_bytes();
        h[iph] = t.gue_sport[0];
        h[iph + 1] = t.gue_sport[1];
        h[iph + 2] = t.gue_port[0];
        h[iph + 3] = t.gue_port[1];
        h[iph + 4] = ulen[0];
        h[iph + 5] = ulen[1];
        // Checksum zero; GUE version 0, no options, the inner protocol, flags 0.
        h[iph + 9] = if v4 { IPPROTO_IPIP } else { IPPROTO_IPV6 };
    }
    // SAFETY: a helper reading `n` (at most `MAX_OUTER`) bytes of the per-CPU buffer.
    let rc = unsafe {
        bpf_skb_store_bytes(
            ctx.as_ptr() as *mut _,
            ETH_HLEN as u32,
            h.as_ptr() as *const _,
            (n & 0x3f) as u32,
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(())
    }
}
