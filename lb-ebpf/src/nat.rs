//! Address/port rewriting with incremental checksums and TTL decrement, next-hop resolution
//! (cache, FIB, VLAN devices, MTU), and transmission (MACs, VLAN tags, `XDP_TX` or a devmap
//! redirect).
use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams,
        xdp_action::{XDP_DROP, XDP_REDIRECT, XDP_TX},
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::generated::{
        bpf_csum_diff, bpf_fib_lookup, bpf_ktime_get_coarse_ns, bpf_xdp_adjust_head,
    },
    programs::XdpContext,
    EbpfContext,
};
use lb_common::{
    csum, global, NextHop, AF_INET, NEXTHOP_TTL_NS, NH_F_GATEWAY, NH_F_KERNEL, PROTO_TCP,
};
use network_types::{
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::{
    icmp,
    maps::{count, FIB_SCRATCH, TX_PORTS, VLANS},
    parse::{malformed, pass, ptr_at, Pkt, ETH_P_8021Q, KIND_LATER_FRAGMENT},
};

const AF_INET_KERNEL: u8 = 2;
const AF_INET6_KERNEL: u8 = 10;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Rewrite {
    /// Destination address and port (client → backend).
    Dst,
    /// Source address and port (backend → client).
    Src,
}

/// `set_l2`, an encapsulation or an ICMP translation succeeded.
pub const DONE: u32 = u32::MAX;

/// Rewrite one address (and, when the packet has its L4 header, the port) of `p` to `addr`
/// / `port`, updating the IPv4 header checksum and the TCP/UDP checksum incrementally, and
/// decrement the TTL / hop limit when `dec_ttl`. An IPv4 UDP datagram without checksum (0)
/// keeps none. The error is the action to take instead.
#[inline(always)]
fn rewrite_headers(
    ctx: &XdpContext,
    p: &Pkt,
    which: Rewrite,
    addr: &[u8; 16],
    port: [u8; 2],
    dec_ttl: bool,
) -> Result<(), u32> {
    let old_port = if which == Rewrite::Dst {
        p.key.dport
    } else {
        p.key.sport
    };
    if p.key.family == AF_INET {
        let ip: *mut Ipv4Hdr = ptr_at(ctx, p.l3).map_err(|_| malformed())?;
        // SAFETY: bounds checked by `ptr_at`.
        let ip = unsafe { &mut *ip };
        let new = [addr[0], addr[1], addr[2], addr[3]];
        let old = if which == Rewrite::Dst {
            ip.dst_addr
        } else {
            ip.src_addr
        };
        let mut check = csum::replace(u16::from_be_bytes(ip.check), &old, &new);
        if dec_ttl {
            let ttl = ip.ttl;
            check = csum::replace(check, &[ttl, ip.proto], &[ttl - 1, ip.proto]);
            ip.ttl = ttl - 1;
        }
        ip.check = check.to_be_bytes();
        if which == Rewrite::Dst {
            ip.dst_addr = new;
        } else {
            ip.src_addr = new;
        }
        if p.kind == KIND_LATER_FRAGMENT {
            return Ok(());
        }
        rewrite_l4(ctx, p, which, &old, &new, old_port, port, true)
    } else {
        let ip: *mut Ipv6Hdr = ptr_at(ctx, p.l3).map_err(|_| malformed())?;
        // SAFETY: bounds checked by `ptr_at`.
        let ip = unsafe { &mut *ip };
        let old = if which == Rewrite::Dst {
            ip.dst_addr
        } else {
            ip.src_addr
        };
        if which == Rewrite::Dst {
            ip.dst_addr = *addr;
        } else {
            ip.src_addr = *addr;
        }
        if dec_ttl {
            ip.hop_limit -= 1;
        }
        if p.kind == KIND_LATER_FRAGMENT {
            return Ok(());
        }
        rewrite_l4_v6(ctx, p, which, &old, addr, old_port, port)
    }
}

/// The TCP/UDP checksum and port of an IPv6 packet whose address `old` became `new`: the
/// address part through `bpf_csum_diff` (an unrolled 16-byte sum needs more stack than the
/// call chain can spare).
#[inline(always)]
fn rewrite_l4_v6(
    ctx: &XdpContext,
    p: &Pkt,
    which: Rewrite,
    old: &[u8; 16],
    new: &[u8; 16],
    old_port: [u8; 2],
    port: [u8; 2],
) -> Result<(), u32> {
    let l4 = p.l4 & 0xffff;
    let off = if p.key.proto == PROTO_TCP { 16 } else { 6 };
    let ck: *mut [u8; 2] = ptr_at(ctx, l4 + off).map_err(|_| malformed())?;
    let ports: *mut [u8; 4] = ptr_at(ctx, l4).map_err(|_| malformed())?;
    // SAFETY: bounds checked by `ptr_at`.
    unsafe {
        let mut c = csum_replace16(u16::from_be_bytes(*ck), old, new);
        c = csum::replace(c, &old_port, &port);
        if c == 0 && p.key.proto != PROTO_TCP {
            c = 0xffff;
        }
        *ck = c.to_be_bytes();
        let ports = &mut *ports;
        if which == Rewrite::Dst {
            ports[2] = port[0];
            ports[3] = port[1];
        } else {
            ports[0] = port[0];
            ports[1] = port[1];
        }
    }
    Ok(())
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rewrite_l4<const N: usize>(
    ctx: &XdpContext,
    p: &Pkt,
    which: Rewrite,
    old: &[u8; N],
    new: &[u8; N],
    old_port: [u8; 2],
    port: [u8; 2],
    v4: bool,
) -> Result<(), u32> {
    let l4 = p.l4 & 0xffff;
    if p.key.proto == PROTO_TCP {
        let th: *mut TcpHdr = ptr_at(ctx, l4).map_err(|_| malformed())?;
        // SAFETY: bounds checked by `ptr_at`.
        let th = unsafe { &mut *th };
        let c = csum::replace2(u16::from_be_bytes(th.check), old, new, old_port, port);
        th.check = c.to_be_bytes();
        if which == Rewrite::Dst {
            th.dest = port;
        } else {
            th.source = port;
        }
    } else {
        let uh: *mut UdpHdr = ptr_at(ctx, l4).map_err(|_| malformed())?;
        // SAFETY: bounds checked by `ptr_at`.
        let uh = unsafe { &mut *uh };
        let c = u16::from_be_bytes(uh.check);
        if !(v4 && c == 0) {
            let mut c = csum::replace2(c, old, new, old_port, port);
            if c == 0 {
                c = 0xffff;
            }
            uh.check = c.to_be_bytes();
        }
        if which == Rewrite::Dst {
            uh.dst = port;
        } else {
            uh.src = port;
        }
    }
    Ok(())
}

#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

/// Update checksum `check` for the 16 bytes at `old` replaced by `new`, with the
/// `bpf_csum_diff` helper (one call instead of an unrolled sum: for the cold paths, whose
/// stack frames must stay small).
#[inline(always)]
pub fn csum_replace16(check: u16, old: *const [u8; 16], new: *const [u8; 16]) -> u16 {
    // The helper sums memory as native-endian words: work on the field as it is in memory.
    let mem = u16::from_ne_bytes(check.to_be_bytes());
    // SAFETY: both point to 16 readable bytes (packet checked by `ptr_at`, or the stack).
    let s =
        unsafe { bpf_csum_diff(old as *mut u32, 16, new as *mut u32, 16, (!mem) as u32) } as u32;
    let mut s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    u16::from_be_bytes((!(s as u16)).to_ne_bytes())
}

/// `resolve` made the next hop valid.
pub const NH_OK: u32 = u32::MAX;
/// `resolve`: the destination is this host (the FIB does not forward it).
pub const NH_LOCAL: u32 = u32::MAX - 1;
/// `resolve`: no neighbour entry yet.
pub const NH_NO_NEIGH: u32 = u32::MAX - 2;
/// `resolve`: the packet is longer than the route's MTU (in `nh.mtu`; `nh` stays invalid).
/// Also what `send_to_backend` / `send_to_client` answer for a packet longer than a cached
/// next hop's MTU: the caller answers it through [`answer_too_big`].
pub const NH_TOO_BIG: u32 = u32::MAX - 3;

/// Make `nh` a valid next hop from `src` to `dst` (as the packet will carry them): the cached
/// one while it is fresh, else the kernel FIB's answer (egress, MACs, MTU; a VLAN device
/// resolved to its parent and tag; an egress that cannot take XDP frames marked
/// `NH_F_KERNEL`). Answers [`NH_OK`], [`NH_LOCAL`], [`NH_NO_NEIGH`], or `XDP_DROP` (counted).
#[inline(always)]
pub fn resolve(ctx: &XdpContext, p: &Pkt, src: &[u8; 16], dst: &[u8; 16], nh: &mut NextHop) -> u32 {
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    resolve_at(ctx, p, src, dst, nh, now)
}

/// [`resolve`] with the packet's clock reading `now` (one helper call fewer for callers
/// that read the clock already).
#[inline(always)]
pub fn resolve_at(
    ctx: &XdpContext,
    p: &Pkt,
    src: &[u8; 16],
    dst: &[u8; 16],
    nh: &mut NextHop,
    now: u64,
) -> u32 {
    if nh.ifindex != 0 && nh.expires_ns > now {
        return NH_OK;
    }
    let rc = fib_lookup(ctx, p, src, dst, nh);
    if rc == NH_OK {
        nh.expires_ns = now + NEXTHOP_TTL_NS;
    }
    rc
}

/// Ask the kernel FIB for the next hop and fill `out`. Not inlined: its 64-byte parameter
/// block lives in its own frame only while it runs (the verifier adds up the frames of a call
/// chain), and it runs about once a second per backend.
#[inline(never)]
fn fib_lookup(ctx: &XdpContext, p: &Pkt, src: &[u8; 16], dst: &[u8; 16], out: &mut NextHop) -> u32 {
    let ingress = ctx.ingress_ifindex() as u32;
    let Some(fib) = FIB_SCRATCH.get_ptr_mut(0) else {
        return XDP_DROP;
    };
    // SAFETY: a per-CPU map value checked for null; a plain C struct whose all-zero value
    // means "no input".
    let fib = unsafe {
        *fib = core::mem::zeroed();
        &mut *fib
    };
    fib.l4_protocol = p.key.proto;
    fib.ifindex = ingress;
    // The kernel checks the MTU before the neighbour (and reports the route's MTU on
    // success).
    fib.__bindgen_anon_1.tot_len = (p.ip_len & 0xffff) as u16;
    if p.key.family == AF_INET {
        fib.family = AF_INET_KERNEL;
        fib.__bindgen_anon_3.ipv4_src = words(src)[0];
        fib.__bindgen_anon_4.ipv4_dst = words(dst)[0];
    } else {
        fib.family = AF_INET6_KERNEL;
        fib.__bindgen_anon_3.ipv6_src = words(src);
        fib.__bindgen_anon_4.ipv6_dst = words(dst);
    }
    // SAFETY: `fib` is a valid parameter block of the size passed.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        let mut ifindex = fib.ifindex;
        let mut vlan = 0u16;
        if let Some(v) = VLANS.get_ptr(&ifindex) {
            // SAFETY: a map value pointer the verifier checked for null.
            unsafe {
                ifindex = (*v).parent_ifindex;
                vlan = (*v).vlan_id & 0x0fff;
            }
        }
        out.ifindex = ifindex;
        out.vlan = vlan;
        // SAFETY: the kernel wrote `mtu_result` (the union's output member).
        out.mtu = unsafe { fib.__bindgen_anon_1.mtu_result };
        out.smac = fib.smac;
        out.dmac = fib.dmac;
        // Whatever the ingress: the cache serves packets from every interface.
        out.flags = 0;
        if TX_PORTS.get(ifindex).is_none() {
            out.flags = NH_F_KERNEL;
        }
        // The kernel writes the gateway into the destination when the route has one.
        // SAFETY: plain integers of the parameter block the kernel filled.
        let via_gateway = unsafe {
            if p.key.family == AF_INET {
                fib.__bindgen_anon_4.ipv4_dst != words(dst)[0]
            } else {
                fib.__bindgen_anon_4.ipv6_dst != words(dst)
            }
        };
        if via_gateway {
            out.flags |= NH_F_GATEWAY;
        }
        return NH_OK;
    }
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return NH_NO_NEIGH;
    }
    if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
        out.ifindex = 0;
        // SAFETY: the kernel wrote `mtu_result` (the union's output member).
        out.mtu = unsafe { fib.__bindgen_anon_1.mtu_result };
        return NH_TOO_BIG;
    }
    if rc == BPF_FIB_LKUP_RET_NOT_FWDED as i64 {
        return NH_LOCAL;
    }
    count(global::FIB_FAILED);
    count(global::DROPPED);
    XDP_DROP
}

/// An address and port a packet is rewritten to.
pub struct Target {
    pub addr: [u8; 16],
    pub port: [u8; 2],
}

/// Rewrite `p`'s destination address and port to `t`'s (client → backend) and send it
/// through `nh`, resolved first: see [`send_as`]. Call through [`answer_too_big`].
#[inline(never)]
pub fn send_to_backend(ctx: &XdpContext, p: &Pkt, t: &Target, nh: &mut NextHop, now: u64) -> u32 {
    send_as(ctx, p, Rewrite::Dst, t, nh, now)
}

/// Rewrite `p`'s source address and port to `t`'s (backend → client) and send it through
/// `nh`, resolved first: see [`send_as`]. Call through [`answer_too_big`].
#[inline(never)]
pub fn send_to_client(ctx: &XdpContext, p: &Pkt, t: &Target, nh: &mut NextHop, now: u64) -> u32 {
    send_as(ctx, p, Rewrite::Src, t, nh, now)
}

/// Rewrite `p` (`which` address and port to `t`'s) and send it through `nh`, resolved
/// first (`now`: the packet's clock reading, for the next-hop cache): the MTU rule (ICMP
/// "too big" back to the sender, or the kernel to fragment), the kernel for egresses that
/// cannot take XDP frames, else TTL decremented, MACs and VLAN tags set, `XDP_TX` or a devmap
/// redirect; counted `forwarded` / `replies` on success. A packet to be answered with ICMP
/// "too big" gets [`NH_TOO_BIG`] (the MTU in `nh.mtu`), for the caller to pass to
/// [`answer_too_big`]: building the ICMP message here would add its frame to this one's on
/// the verifier's deepest call chain.
///
/// One function per direction (BPF functions take five arguments at most), each with the
/// header rewrite (one site) and `set_l2` inlined: every call and return costs 10–22 ns on
/// the AMD EPYC VMs (retpolines, SRSO "safe RET").
#[inline(always)]
fn send_as(
    ctx: &XdpContext,
    p: &Pkt,
    which: Rewrite,
    t: &Target,
    nh: &mut NextHop,
    now: u64,
) -> u32 {
    let addr = &t.addr;
    let ok_counter = match which {
        Rewrite::Dst => global::FORWARDED,
        Rewrite::Src => global::REPLIES,
    };
    let (src, dst) = match which {
        Rewrite::Dst => (&p.key.src, addr),
        Rewrite::Src => (addr, &p.key.dst),
    };
    let rc = resolve_at(ctx, p, src, dst, nh, now);
    // Which counter a packet left to the kernel (rewritten, TTL untouched) adds to: none for
    // "not forwarded" (local), `NO_KERNEL` when XDP sends it.
    const NO_KERNEL: u32 = u32::MAX;
    const UNCOUNTED: u32 = u32::MAX - 1;
    let too_big = rc == NH_TOO_BIG || (rc == NH_OK && nh.mtu != 0 && p.ip_len > nh.mtu as usize);
    let kernel = if too_big {
        // IPv4 without DF (fragments included) goes to the kernel, rewritten, to be
        // fragmented; anything else is answered with ICMP "too big".
        if p.key.family != AF_INET || p.df {
            return NH_TOO_BIG;
        }
        global::TOO_BIG_KERNEL
    } else if rc == NH_NO_NEIGH {
        // The kernel resolves the neighbour and forwards this packet.
        global::FIB_NO_NEIGH
    } else if rc == NH_LOCAL {
        UNCOUNTED
    } else if rc != NH_OK {
        return rc;
    } else if nh.flags & NH_F_KERNEL != 0 {
        global::EGRESS_KERNEL
    } else {
        NO_KERNEL
    };
    if let Err(action) = rewrite_headers(ctx, p, which, &t.addr, t.port, kernel == NO_KERNEL) {
        return action;
    }
    if kernel != NO_KERNEL {
        if kernel != UNCOUNTED {
            count(kernel);
        }
        return pass();
    }
    transmit(ctx, p.tags, nh, ok_counter)
}

/// What to do with `r`, the answer of [`send_to_backend`] or [`send_to_client`] through `nh`:
/// ICMP "too big" to the sender for [`NH_TOO_BIG`], else `r` itself.
#[inline(always)]
pub fn answer_too_big(ctx: &XdpContext, p: &Pkt, r: u32, nh: &NextHop) -> u32 {
    if r == NH_TOO_BIG {
        return icmp::too_big(ctx, p, nh.mtu);
    }
    r
}

/// Set the MACs and the VLAN tags the egress needs (removing, rewriting or pushing tags) and
/// send the frame: `XDP_TX` out of the ingress interface, else through the `TX_PORTS` devmap.
#[inline(always)]
pub fn transmit(ctx: &XdpContext, tags: u8, nh: &NextHop, ok_counter: u32) -> u32 {
    let r = set_l2(ctx, tags, nh);
    if r != DONE {
        return r;
    }
    let ingress = ctx.ingress_ifindex() as u32;
    if nh.ifindex == ingress {
        count(ok_counter);
        return XDP_TX;
    }
    let action = match TX_PORTS.redirect(nh.ifindex, XDP_DROP as u64) {
        Ok(a) | Err(a) => a,
    };
    if action == XDP_REDIRECT {
        count(ok_counter);
    } else {
        count(global::REDIRECT_FAILED);
        count(global::DROPPED);
    }
    action
}

/// Write the L2 header for `nh`: MACs, and one 802.1Q tag with `nh.vlan` or none, whatever
/// the frame came with (`tags` tags). Answers [`DONE`] or the action to take.
#[inline(always)]
fn set_l2(ctx: &XdpContext, tags: u8, nh: &NextHop) -> u32 {
    let want: u8 = if nh.vlan != 0 { 1 } else { 0 };
    if tags < want {
        // Push: the new 4 bytes go in front; the old ethertype ends up in place.
        // SAFETY: a helper taking the context.
        if unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, -4) } != 0 {
            count(global::DROPPED);
            return XDP_DROP;
        }
    }
    // Start of the new L2 header within the current frame.
    let start: usize = if tags > want {
        ((tags - want) as usize) << 2
    } else {
        0
    };
    let Ok(h) = ptr_at::<[u8; 16]>(ctx, start & 0xf) else {
        return malformed();
    };
    // SAFETY: bounds checked by `ptr_at`.
    let h = unsafe { &mut *h };
    h[..6].copy_from_slice(&nh.dmac);
    h[6..12].copy_from_slice(&nh.smac);
    if want == 1 {
        let tpid = ETH_P_8021Q.to_be_bytes();
        let tci = nh.vlan.to_be_bytes();
        h[12] = tpid[0];
        h[13] = tpid[1];
        h[14] = tci[0];
        h[15] = tci[1];
    }
    if start != 0 {
        // SAFETY: a helper taking the context; shrinking the head by at most 8 bytes of a
        // frame that has them.
        if unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, start as i32) } != 0 {
            count(global::DROPPED);
            return XDP_DROP;
        }
    }
    DONE
}
