//! Direct server return: client packets to a DSR service leave for the backend unchanged
//! (inner addresses and ports untouched), as its `DSR` entry says:
//!
//! - `l2`: only the MACs are rewritten (the backend, on a directly connected link, has the
//!   VIP on its loopback);
//! - `ipip`: an outer IPv4 / IPv6 header in front (protocol 4 / 41), from an address of the
//!   configured prefix chosen by the flow hash (so that the backend's RSS spreads flows) to
//!   the backend;
//! - `gue`: the same with a UDP header (source port from the flow hash, destination the GUE
//!   port) and a 4-byte GUE header (version 0, no options, protocol 4 / 41) in between.
//!
//! Checksums: the outer IPv4 header's is computed; GUE over IPv4 carries a zero UDP checksum
//! (allowed by RFC 768); GUE over IPv6 carries a computed one, derived from the inner TCP/UDP
//! checksum (the sum of an L4 segment with a valid checksum is the complement of its
//! pseudo-header's, whose addresses cancel those of the inner header, so the outer sum needs
//! only the inner header's first 8 bytes, its length and protocol: the trick
//! of Linux's local checksum offload), except for inner packets that are fragments or carry
//! IPv6 extension headers, which leave with a zero checksum (RFC 6935/6936; `xlb decap`
//! accepts it).
//!
//! ICMP errors about a DSR flow's replies (to the VIP) go to the flow's backend the same way
//! (`send_error`), with the outer tuple of the flow's own packets.
//!
//! The inner TTL / hop limit is decremented when xlb transmits the frame itself (as in NAT
//! mode); packets the kernel forwards (no neighbour yet, an egress without XDP) are handed
//! to it encapsulated, and it decrements the outer one.
use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::generated::{bpf_get_prandom_u32, bpf_xdp_adjust_head},
    macros::map,
    maps::PerCpuArray,
    programs::XdpContext,
    EbpfContext,
};
use lb_common::{
    csum, global, hash::flow_hash, DsrConf, NextHop, AF_INET, DSR_ENCAP_GUE, DSR_ENCAP_L2,
    GUE_HDR_LEN, NH_F_GATEWAY, NH_F_KERNEL, PROTO_UDP,
};

use crate::{
    icmp,
    maps::{count, hash_seed, DSR},
    nat::{self, NH_LOCAL, NH_NO_NEIGH, NH_OK, NH_TOO_BIG},
    parse::{malformed, ptr_at, Pkt, KIND_ICMP, KIND_L4},
};

const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;
const UDP_HDR_LEN: usize = 8;

/// The outer headers of the packet being sent, one per CPU (off the stack: the verifier adds
/// up the stack frames of a call chain, 512 bytes in all).
#[repr(C)]
pub struct Outer {
    src: [u8; 16],
    dst: [u8; 16],
    hash: u32,
    gue_port: [u8; 2],
    gue: bool,
    /// IPv4 outer DF (IPv4 inner with DF; an inner without DF that is too big goes to the
    /// kernel to be fragmented outside).
    df: bool,
}

#[map(name = "ENCAP_SCRATCH")]
static ENCAP_SCRATCH: PerCpuArray<Outer> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn dropped() -> u32 {
    count(global::DROPPED);
    XDP_DROP
}

/// Send `p` (client → VIP of service `service_id`) to the backend at `addr` as the service's
/// `DSR` entry says, through next hop `nh` (resolved here). Counted `forwarded` when xlb
/// transmits it. Answers the action, or [`TOO_BIG`].
#[inline(never)]
pub fn send(ctx: &XdpContext, p: &Pkt, service_id: u32, addr: &[u8; 16], nh: &mut NextHop) -> u32 {
    send_as::<false>(ctx, p, service_id as u64, addr, nh)
}

/// Send `p`, an ICMP / ICMPv6 error about a reply a backend of service `ids as u32` sent from
/// the VIP, to that backend at `addr` as the service's data packets go, with nothing inside
/// rewritten: the outer source, GUE source port and IPv6 flow label come from the flow hash
/// `ids >> 32` of the client's flow (so the error takes its flow's outer tuple, as Katran
/// does). Counted `icmp_to_backend` when xlb transmits it. Answers the action, or
/// [`TOO_BIG`] (never answered: no ICMP error about an ICMP error).
#[inline(never)]
pub fn send_error(ctx: &XdpContext, p: &Pkt, ids: u64, addr: &[u8; 16], nh: &mut NextHop) -> u32 {
    send_as::<true>(ctx, p, ids, addr, nh)
}

/// [`send`] (`ERR` false: `ids` is the service id) and [`send_error`] (`ERR` true).
#[inline(always)]
fn send_as<const ERR: bool>(
    ctx: &XdpContext,
    p: &Pkt,
    ids: u64,
    addr: &[u8; 16],
    nh: &mut NextHop,
) -> u32 {
    let Some(conf) = DSR.get_ptr(ids as u32) else {
        return dropped();
    };
    // SAFETY: a map value pointer checked for null.
    let encap = unsafe { (*conf).encap };
    if encap == DSR_ENCAP_L2 {
        let r = l2::<ERR>(ctx, p, addr, nh);
        if r == TOO_BIG {
            set_too_big_mtu(nh.mtu);
        }
        return r;
    }
    let Some(o) = ENCAP_SCRATCH.get_ptr_mut(0) else {
        return dropped();
    };
    // SAFETY: a per-CPU map value checked for null; XDP runs to completion on its CPU.
    let o = unsafe { &mut *o };
    outer::<ERR>(p, conf, addr, (ids >> 32) as u32, o);
    tunnel::<ERR>(ctx, p, o, nh)
}

/// The counter of a packet xlb transmits: `forwarded`, or for an ICMP error `icmp_to_backend`.
#[inline(always)]
const fn sent<const ERR: bool>() -> u32 {
    if ERR {
        global::ICMP_TO_BACKEND
    } else {
        global::FORWARDED
    }
}

/// Fill `o` for `p` to the backend at `addr` with the service's settings `conf` (`ERR`: with
/// the flow hash `hash`, else with `p`'s). Not inlined: the flow hash's frame is not on the
/// stack while the packet is sent.
#[inline(never)]
fn outer<const ERR: bool>(
    p: &Pkt,
    conf: *const DsrConf,
    addr: &[u8; 16],
    hash: u32,
    o: &mut Outer,
) {
    let k = &p.key;
    let v4 = k.family == AF_INET;
    o.hash = if ERR {
        hash
    } else {
        flow_hash(&k.src, &k.dst, k.sport, k.dport, k.proto, hash_seed())
    };
    o.dst = *addr;
    // SAFETY: a map value pointer checked for null by the caller.
    unsafe {
        o.gue = (*conf).encap == DSR_ENCAP_GUE;
        o.src = (*conf).src_prefix;
        o.gue_port = (*conf).gue_port;
        // The host bits from the flow hash.
        let m = u32::from_be_bytes((*conf).src_mask);
        let i = if v4 { 0 } else { 12 };
        let base = u32::from_be_bytes([o.src[i], o.src[i + 1], o.src[i + 2], o.src[i + 3]]);
        let a = ((base & !m) | (o.hash & m)).to_be_bytes();
        o.src[i] = a[0];
        o.src[i + 1] = a[1];
        o.src[i + 2] = a[2];
        o.src[i + 3] = a[3];
    }
    o.df = !v4 || p.df;
}

/// `ipip` / `gue`: resolve the next hop of the outer packet, apply the MTU rule, encapsulate
/// and send.
#[inline(always)]
fn tunnel<const ERR: bool>(ctx: &XdpContext, p: &Pkt, o: &mut Outer, nh: &mut NextHop) -> u32 {
    let v4 = p.key.family == AF_INET;
    let overhead = overhead(v4, o.gue);
    let rc = nat::resolve(ctx, p, &o.src, &o.dst, nh);
    let too_big =
        rc == NH_TOO_BIG || (rc == NH_OK && nh.mtu != 0 && p.ip_len + overhead > nh.mtu as usize);
    if too_big {
        if v4 && !p.df {
            // The kernel fragments the outer packet (DF clear).
            o.df = false;
            let r = encapsulate(ctx, p, o);
            if r != nat::DONE {
                return r;
            }
            count(global::TOO_BIG_KERNEL);
            return XDP_PASS;
        }
        set_too_big_mtu((nh.mtu as usize).saturating_sub(overhead) as u16);
        return TOO_BIG;
    }
    let kernel = match rc {
        NH_OK => nh.flags & NH_F_KERNEL != 0,
        NH_NO_NEIGH | NH_LOCAL => true,
        other => return other,
    };
    if kernel {
        // The kernel resolves the neighbour (or takes an egress XDP cannot) and forwards the
        // encapsulated packet.
        let r = encapsulate(ctx, p, o);
        if r != nat::DONE {
            return r;
        }
        count(if rc == NH_NO_NEIGH {
            global::FIB_NO_NEIGH
        } else {
            global::EGRESS_KERNEL
        });
        return XDP_PASS;
    }
    let r = dec_ttl(ctx, p);
    if r != nat::DONE {
        return r;
    }
    let r = encapsulate(ctx, p, o);
    if r != nat::DONE {
        return r;
    }
    nat::transmit(ctx, p.tags, nh, sent::<ERR>())
}

/// Bytes the encapsulation adds.
#[inline(always)]
pub fn overhead(v4: bool, gue: bool) -> usize {
    let ip = if v4 { 20 } else { 40 };
    if gue {
        ip + UDP_HDR_LEN + GUE_HDR_LEN
    } else {
        ip
    }
}

/// [`send`]: the packet is too big for the route (once encapsulated): the caller answers
/// it with [`answer_too_big`] (from its own frame: the verifier adds up the stack frames of
/// a call chain, and `icmp::too_big`'s is large).
pub const TOO_BIG: u32 = u32::MAX - 16;

/// The MTU a `TOO_BIG` packet's ICMP error carries, per CPU.
#[map(name = "ENCAP_MTU")]
static ENCAP_MTU: PerCpuArray<u16> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn set_too_big_mtu(mtu: u16) {
    if let Some(m) = ENCAP_MTU.get_ptr_mut(0) {
        // SAFETY: a per-CPU map value checked for null.
        unsafe { *m = mtu };
    }
}

/// The action for `send`'s answer `r`: `TOO_BIG` becomes the ICMP "too big" error with the
/// MTU `send` recorded (the route's, minus the encapsulation's overhead).
#[inline(always)]
pub fn answer_too_big(ctx: &XdpContext, p: &Pkt, r: u32) -> u32 {
    if r != TOO_BIG {
        return r;
    }
    let mtu = match ENCAP_MTU.get_ptr(0) {
        // SAFETY: a per-CPU map value checked for null.
        Some(m) => unsafe { *m },
        None => 0,
    };
    icmp::too_big(ctx, p, mtu)
}

/// `l2`: the backend's MAC from the FIB (its neighbour entry), the egress MAC as source.
/// Nothing the kernel could do for this packet (it would deliver it to the local VIP):
/// without a neighbour entry yet, through a gateway, or out of an egress XDP cannot use, it
/// is dropped (counted `fib_no_neigh` / `egress_kernel` and `dropped`).
#[inline(never)]
fn l2<const ERR: bool>(ctx: &XdpContext, p: &Pkt, addr: &[u8; 16], nh: &mut NextHop) -> u32 {
    let rc = nat::resolve(ctx, p, &p.key.src, addr, nh);
    if rc == NH_TOO_BIG || (rc == NH_OK && nh.mtu != 0 && p.ip_len > nh.mtu as usize) {
        return TOO_BIG;
    }
    match rc {
        NH_OK => {}
        NH_NO_NEIGH => {
            count(global::FIB_NO_NEIGH);
            return dropped();
        }
        NH_LOCAL => return dropped(),
        other => return other,
    }
    if nh.flags & (NH_F_KERNEL | NH_F_GATEWAY) != 0 {
        count(global::EGRESS_KERNEL);
        return dropped();
    }
    let r = dec_ttl(ctx, p);
    if r != nat::DONE {
        return r;
    }
    nat::transmit(ctx, p.tags, nh, sent::<ERR>())
}

/// Decrement the inner TTL / hop limit (IPv4 header checksum updated).
#[inline(always)]
fn dec_ttl(ctx: &XdpContext, p: &Pkt) -> u32 {
    let l3 = p.l3 & 0x1f;
    if p.key.family == AF_INET {
        let Ok(ip) = ptr_at::<[u8; 20]>(ctx, l3) else {
            return malformed();
        };
        // SAFETY: bounds checked by `ptr_at`.
        let ip = unsafe { &mut *ip };
        let (ttl, proto) = (ip[8], ip[9]);
        let c = csum::replace(
            u16::from_be_bytes([ip[10], ip[11]]),
            &[ttl, proto],
            &[ttl.wrapping_sub(1), proto],
        )
        .to_be_bytes();
        ip[8] = ttl.wrapping_sub(1);
        ip[10] = c[0];
        ip[11] = c[1];
    } else {
        let Ok(ip) = ptr_at::<[u8; 8]>(ctx, l3) else {
            return malformed();
        };
        // SAFETY: bounds checked by `ptr_at`.
        unsafe { (*ip)[7] = (*ip)[7].wrapping_sub(1) };
    }
    nat::DONE
}

/// Put the outer headers in front of the IP packet of `p`, keeping its L2 header (with its
/// VLAN tags) in front of them. Answers `nat::DONE` or the action to take.
#[inline(never)]
fn encapsulate(ctx: &XdpContext, p: &Pkt, o: &Outer) -> u32 {
    match try_encapsulate(ctx, p, o) {
        Ok(()) => nat::DONE,
        Err(a) => a,
    }
}

#[inline(always)]
fn try_encapsulate(ctx: &XdpContext, p: &Pkt, o: &Outer) -> Result<(), u32> {
    let v4 = p.key.family == AF_INET;
    let l2 = p.l3 & 0x1f;
    let inner_len = p.ip_len & 0xffff;
    let iph: usize = if v4 { 20 } else { 40 };
    let n = overhead(v4, o.gue);
    // ICMPv6 (never a fragment here) sums its pseudo-header as TCP and UDP do.
    let lco = !v4
        && o.gue
        && (p.kind == KIND_L4 || p.kind == KIND_ICMP)
        && !p.first_fragment
        && p.l4 == p.l3 + 40;
    // The old L2 header (at most 22 bytes; the frame is longer: an IP header follows).
    let old_l2: [u8; 22] = get(ctx, 0)?;
    // SAFETY: a helper taking the context.
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, -(n as i32)) } != 0 {
        return Err(dropped());
    }
    // The L2 header moves to the new front; bytes past it are overwritten below.
    put(ctx, 0, &old_l2)?;
    // What the outer headers need from the inner one: IPv4 TOS / IPv6 traffic class, and
    // for the GUE-over-IPv6 checksum its first 8 bytes.
    let first: [u8; 8] = get(ctx, l2 + n)?;
    let proto = if o.gue {
        PROTO_UDP
    } else if v4 {
        IPPROTO_IPIP
    } else {
        IPPROTO_IPV6
    };
    let outer_len = inner_len + n;
    if v4 {
        let ip: *mut [u8; 20] = ptr_at(ctx, l2).map_err(|_| malformed())?;
        // SAFETY: bounds checked by `ptr_at`.
        let ip = unsafe { &mut *ip };
        let tot = (outer_len as u16).to_be_bytes();
        ip[0] = 0x45;
        ip[1] = first[1];
        ip[2] = tot[0];
        ip[3] = tot[1];
        // DF: id 0 (RFC 6864); without DF the outer packet may be fragmented on the way,
        // so its id must vary.
        let id = if o.df {
            [0, 0]
        } else {
            // SAFETY: a helper without arguments.
            let r = unsafe { bpf_get_prandom_u32() };
            [(r >> 8) as u8, r as u8]
        };
        ip[4] = id[0];
        ip[5] = id[1];
        ip[6] = if o.df { 0x40 } else { 0 };
        ip[7] = 0;
        ip[8] = 64;
        ip[9] = proto;
        ip[10] = 0;
        ip[11] = 0;
        ip[12] = o.src[0];
        ip[13] = o.src[1];
        ip[14] = o.src[2];
        ip[15] = o.src[3];
        ip[16] = o.dst[0];
        ip[17] = o.dst[1];
        ip[18] = o.dst[2];
        ip[19] = o.dst[3];
        let c = csum::finish(csum::add(0, ip)).to_be_bytes();
        ip[10] = c[0];
        ip[11] = c[1];
    } else {
        let ip: *mut [u8; 40] = ptr_at(ctx, l2).map_err(|_| malformed())?;
        // SAFETY: bounds checked by `ptr_at`.
        let ip = unsafe { &mut *ip };
        let pl = ((outer_len - 40) as u16).to_be_bytes();
        // Version 6, the inner traffic class, a flow label from the flow hash.
        let tc = (first[0] << 4) | (first[1] >> 4);
        let fl = o.hash & 0x000f_ffff;
        ip[0] = 0x60 | (tc >> 4);
        ip[1] = (tc << 4) | ((fl >> 16) as u8 & 0x0f);
        ip[2] = (fl >> 8) as u8;
        ip[3] = fl as u8;
        ip[4] = pl[0];
        ip[5] = pl[1];
        ip[6] = proto;
        ip[7] = 64;
        ip[8..24].copy_from_slice(&o.src);
        ip[24..40].copy_from_slice(&o.dst);
    }
    if !o.gue {
        return Ok(());
    }
    let uh: *mut [u8; 12] = ptr_at(ctx, l2 + iph).map_err(|_| malformed())?;
    // SAFETY: bounds checked by `ptr_at`.
    let uh = unsafe { &mut *uh };
    let ulen = ((outer_len - iph) as u16).to_be_bytes();
    let sport = (0xc000 | (o.hash & 0x3fff) as u16).to_be_bytes();
    uh[0] = sport[0];
    uh[1] = sport[1];
    uh[2] = o.gue_port[0];
    uh[3] = o.gue_port[1];
    uh[4] = ulen[0];
    uh[5] = ulen[1];
    uh[6] = 0;
    uh[7] = 0;
    // GUE: version 0, C 0, hlen 0; the inner protocol; flags 0.
    uh[8] = 0;
    uh[9] = if v4 { IPPROTO_IPIP } else { IPPROTO_IPV6 };
    uh[10] = 0;
    uh[11] = 0;
    if lco {
        // Pseudo-header, UDP and GUE headers, then the inner packet as the sum of its first
        // 8 bytes minus the inner pseudo-header's length and protocol (see the module docs).
        let mut s = csum::add(0, &o.src);
        s = csum::add(s, &o.dst);
        s += u16::from_be_bytes(ulen) as u32 + PROTO_UDP as u32;
        s = csum::add(s, uh);
        s = csum::add(s, &first);
        s += 0xffff - u16::from_be_bytes([first[4], first[5]]) as u32;
        s += 0xffff - p.key.proto as u32;
        let mut c = csum::finish(s);
        if c == 0 {
            c = 0xffff;
        }
        let c = c.to_be_bytes();
        uh[6] = c[0];
        uh[7] = c[1];
    }
    Ok(())
}

/// Read `N` bytes at `off`.
#[inline(always)]
fn get<const N: usize>(ctx: &XdpContext, off: usize) -> Result<[u8; N], u32> {
    let p: *const [u8; N] = ptr_at(ctx, off).map_err(|_| malformed())?;
    // SAFETY: bounds checked by `ptr_at`.
    Ok(unsafe { *p })
}

/// Write `N` bytes at `off`.
#[inline(always)]
fn put<const N: usize>(ctx: &XdpContext, off: usize, v: &[u8; N]) -> Result<(), u32> {
    let p: *mut [u8; N] = ptr_at(ctx, off).map_err(|_| malformed())?;
    // SAFETY: bounds checked by `ptr_at`.
    unsafe { *p = *v };
    Ok(())
}
