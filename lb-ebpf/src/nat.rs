//! Address/port rewriting with incremental checksums, and FIB-based forwarding.
use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams,
        xdp_action::{XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::generated::{bpf_fib_lookup, bpf_ktime_get_coarse_ns, bpf_redirect},
    programs::XdpContext,
    EbpfContext,
};
use lb_common::{csum, global, FlowKey, NextHop, AF_INET, NEXTHOP_TTL_NS, PROTO_TCP};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::{maps::count, parse::ptr_at};

const AF_INET_KERNEL: u8 = 2;
const AF_INET6_KERNEL: u8 = 10;

/// A parsed TCP/UDP packet: its 5-tuple and header offsets.
pub struct Pkt {
    /// The packet's own 5-tuple, as received.
    pub key: FlowKey,
    pub l3: usize,
    pub l4: usize,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
}

impl Pkt {
    /// `ports` is the first 4 bytes of the TCP/UDP header (source, destination).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        src: [u8; 16],
        dst: [u8; 16],
        ports: [u8; 4],
        proto: u8,
        family: u8,
        l3: usize,
        l4: usize,
        tcp_flags: u8,
    ) -> Pkt {
        Pkt {
            key: FlowKey {
                src,
                dst,
                sport: [ports[0], ports[1]],
                dport: [ports[2], ports[3]],
                proto,
                family,
                _pad: [0; 2],
            },
            l3,
            l4,
            tcp_flags,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Rewrite {
    /// Destination address and port (client → backend).
    Dst,
    /// Source address and port (backend → client).
    Src,
}

#[inline(always)]
fn drop_malformed() -> u32 {
    count(global::MALFORMED);
    count(global::DROPPED);
    XDP_DROP
}

/// Rewrite one address and port of `p`, updating the IPv4 header checksum and the TCP/UDP
/// checksum incrementally. An IPv4 UDP datagram without checksum (0) keeps none.
///
/// Not inlined, to keep the callers' stack frames small (the verifier adds up the frames of a
/// call chain); answers [`DONE`] or the action to take instead (a plain integer: a `Result`
/// would be returned through a sixth, stack-passed argument).
#[inline(never)]
pub fn rewrite(ctx: &XdpContext, p: &Pkt, which: Rewrite, addr: &[u8; 16], port: [u8; 2]) -> u32 {
    match rewrite_headers(ctx, p, which, addr, port) {
        Ok(()) => DONE,
        Err(action) => action,
    }
}

/// [`rewrite`] succeeded.
pub const DONE: u32 = u32::MAX;

#[inline(always)]
fn rewrite_headers(
    ctx: &XdpContext,
    p: &Pkt,
    which: Rewrite,
    addr: &[u8; 16],
    port: [u8; 2],
) -> Result<(), u32> {
    let old_port = if which == Rewrite::Dst {
        p.key.dport
    } else {
        p.key.sport
    };
    if p.key.family == AF_INET {
        let ip: *mut Ipv4Hdr = ptr_at(ctx, p.l3).map_err(|_| drop_malformed())?;
        let ip = unsafe { &mut *ip };
        let new = [addr[0], addr[1], addr[2], addr[3]];
        let old = if which == Rewrite::Dst {
            ip.dst_addr
        } else {
            ip.src_addr
        };
        let check = csum::replace(u16::from_be_bytes(ip.check), &old, &new);
        ip.check = check.to_be_bytes();
        if which == Rewrite::Dst {
            ip.dst_addr = new;
        } else {
            ip.src_addr = new;
        }
        rewrite_l4(ctx, p, which, &old, &new, old_port, port, true)
    } else {
        let ip: *mut Ipv6Hdr = ptr_at(ctx, p.l3).map_err(|_| drop_malformed())?;
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
        rewrite_l4(ctx, p, which, &old, addr, old_port, port, false)
    }
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
    if p.key.proto == PROTO_TCP {
        let th: *mut TcpHdr = ptr_at(ctx, p.l4).map_err(|_| drop_malformed())?;
        let th = unsafe { &mut *th };
        let c = csum::replace2(u16::from_be_bytes(th.check), old, new, old_port, port);
        th.check = c.to_be_bytes();
        if which == Rewrite::Dst {
            th.dest = port;
        } else {
            th.source = port;
        }
    } else {
        let uh: *mut UdpHdr = ptr_at(ctx, p.l4).map_err(|_| drop_malformed())?;
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

/// Send the packet rewritten by [`rewrite`] (`which` address now `addr`): through the next hop
/// cached in `cache`
/// while it is fresh, else through the kernel FIB (and cache what it says). Sets the MACs and
/// returns `XDP_TX` out of the ingress interface, otherwise a redirect. Without a neighbour
/// entry the packet goes to the kernel, which resolves it and forwards this one packet.
#[inline(never)]
pub fn fib_forward(
    ctx: &XdpContext,
    p: &Pkt,
    which: Rewrite,
    addr: &[u8; 16],
    cache: &mut NextHop,
) -> u32 {
    let (src, dst, ok_counter) = match which {
        Rewrite::Dst => (&p.key.src, addr, global::FORWARDED),
        Rewrite::Src => (addr, &p.key.dst, global::REPLIES),
    };
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let ingress = ctx.ingress_ifindex() as u32;
    if cache.ifindex == 0 || cache.expires_ns <= now {
        let action = fib_lookup(ctx, p, src, dst, cache);
        if action != FIB_OK {
            return action;
        }
        cache.expires_ns = now + NEXTHOP_TTL_NS;
    }
    let (ifindex, smac, dmac) = (cache.ifindex, cache.smac, cache.dmac);
    let Ok(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return drop_malformed();
    };
    unsafe {
        (*eth).dst_addr = dmac;
        (*eth).src_addr = smac;
    }
    if ifindex == ingress {
        count(ok_counter);
        return XDP_TX;
    }
    let action = unsafe { bpf_redirect(ifindex, 0) } as u32;
    if action == XDP_REDIRECT {
        count(ok_counter);
    } else {
        count(global::REDIRECT_FAILED);
        count(global::DROPPED);
    }
    action
}

/// `fib_lookup` found a next hop.
const FIB_OK: u32 = u32::MAX;

/// Ask the kernel FIB for the next hop: fills `out` (egress ifindex, source and destination
/// MAC) and answers [`FIB_OK`], or the action to take when there is none. Not inlined: its 64-byte parameter block lives in its own
/// frame only while it runs (the verifier adds up the frames of a call chain).
#[inline(never)]
fn fib_lookup(ctx: &XdpContext, p: &Pkt, src: &[u8; 16], dst: &[u8; 16], out: &mut NextHop) -> u32 {
    let ingress = ctx.ingress_ifindex() as u32;
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.l4_protocol = p.key.proto;
    fib.ifindex = ingress;
    if p.key.family == AF_INET {
        fib.family = AF_INET_KERNEL;
        fib.__bindgen_anon_3.ipv4_src = words(src)[0];
        fib.__bindgen_anon_4.ipv4_dst = words(dst)[0];
    } else {
        fib.family = AF_INET6_KERNEL;
        fib.__bindgen_anon_3.ipv6_src = words(src);
        fib.__bindgen_anon_4.ipv6_dst = words(dst);
    }
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        out.ifindex = fib.ifindex;
        out.smac = fib.smac;
        out.dmac = fib.dmac;
        return FIB_OK;
    }
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        count(global::FIB_NO_NEIGH);
        return XDP_PASS;
    }
    count(global::FIB_FAILED);
    count(global::DROPPED);
    XDP_DROP
}
