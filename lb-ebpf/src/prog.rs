//! Entry points and the per-packet path: parse, classify, pick a backend, rewrite, forward.
use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    helpers::generated::bpf_ktime_get_coarse_ns,
    macros::{tracepoint, xdp},
    programs::{TracePointContext, XdpContext},
};
use lb_common::{
    global, hash::flow_hash, BackendAddrValue, BackendInfo, CtValue, FlowKey, FragKey, FragValue,
    NextHop, RevValue, ServiceInfo, ServiceKey, ADDR_F_BACKEND, ADDR_F_VIP, BA_F_SHARED,
    BE_F_ACTIVE, BE_F_ESTABLISHED_OK, BE_F_REDISPATCH, BE_F_SHARED, CT_F_ANSWERED, CT_F_CLOSING,
    CT_F_COUNTED, CT_F_SYN, CT_F_WITHHELD, FRAG_F_DSR, FRAG_F_FORWARD, FRAG_F_PASS, FRAG_TTL_NS,
    LAST_SEEN_GRANULARITY_NS, NO_BACKEND, PORTS_BACKEND, PORTS_SERVICE, PROTO_TCP, SVC_F_DSR,
    SVC_F_EMPTY, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};

use crate::{
    encap, icmp,
    maps::{
        count, counters, hash_seed, passive, port_in, ring_size, ADDRS, BACKENDS, BACKEND_ADDRS,
        BACKEND_STATS, CONNTRACK, DIRECT, FRAGS, GLOBAL_STATS, MAGLEV, NEXTHOPS, NH_SCRATCH,
        PASSIVE_CONF, REVERSE, SCRATCH, SERVICES, SERVICE_STATS, SYN_SAMPLES, TX_PORTS,
        UNCONFIRMED,
    },
    nat::{self, Rewrite, Target, NH_LOCAL, NH_OK},
    parse::*,
};

#[xdp]
pub fn xlb(ctx: XdpContext) -> u32 {
    match try_xlb(&ctx) {
        Ok(action) | Err(action) => action,
    }
}

/// Returns `XDP_PASS`: attached to the receiving end of veth pairs so that they accept
/// redirected frames (veth NAPI), and used as a benchmark floor.
#[xdp]
pub fn xlb_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// `xdp:xdp_devmap_xmit`: frames a redirect handed to an egress driver that it dropped,
/// counted for frames that came in on an interface xlb drives.
#[tracepoint]
pub fn xlb_xmit(ctx: TracePointContext) -> u32 {
    // Offsets from /sys/kernel/tracing/events/xdp/xdp_devmap_xmit/format.
    // SAFETY: reads of the tracepoint's record, checked by the helper.
    let (from, drops) = unsafe {
        (
            ctx.read_at::<i32>(8).unwrap_or(0),
            ctx.read_at::<i32>(20).unwrap_or(0),
        )
    };
    if drops > 0 && TX_PORTS.get(from as u32).is_some() {
        if let Some(c) = GLOBAL_STATS.get_ptr_mut(global::XMIT_DROPS) {
            // SAFETY: a per-CPU map value checked for null.
            unsafe { *c += drops as u64 };
        }
    }
    0
}

/// Returns `XDP_TX`: the benchmark floor for a forwarding program.
#[xdp]
pub fn xlb_tx(_ctx: XdpContext) -> u32 {
    XDP_TX
}

#[inline(always)]
fn try_xlb(ctx: &XdpContext) -> Result<u32, u32> {
    let (ethertype, l3, tags) = parse_eth(ctx)?;
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return Ok(pass());
    };
    // SAFETY: a per-CPU map value checked for null; XDP runs to completion on its CPU.
    let pm = unsafe { &mut *scratch };
    match ethertype {
        ETH_P_IPV4 => parse_v4(ctx, l3, tags, pm)?,
        ETH_P_IPV6 => parse_v6(ctx, l3, tags, pm)?,
        _ => return Ok(pass()),
    }
    let p: &Pkt = pm;
    match p.kind {
        KIND_L4 => {}
        KIND_ICMP => return Ok(icmp::handle(ctx, p)),
        _ => return Ok(later_fragment(ctx, p)),
    }

    // One key on the stack: the destination for services, then the source for backends.
    // The port bitmaps spare most other traffic both hash lookups.
    let mut key = ServiceKey {
        addr: p.key.dst,
        port: p.key.dport,
        proto: p.key.proto,
        family: p.key.family,
    };
    if port_in(PORTS_SERVICE, p.key.dport) {
        if let Some(svc) = SERVICES.get_ptr(&key) {
            if let Some(action) = screen(p) {
                return Ok(action);
            }
            return forward(ctx, p, svc);
        }
    }
    // A client talking to a backend's own address through this host (not through a VIP):
    // remembered, so that the backend's replies are not mistaken for stray replies of a
    // balanced flow.
    if port_in(PORTS_BACKEND, p.key.dport) {
        key.addr = p.key.dst;
        key.port = p.key.dport;
        if BACKEND_ADDRS.get_ptr(&key).is_some() {
            mark_direct(p);
            return Ok(pass_l4(p));
        }
    }
    if !port_in(PORTS_BACKEND, p.key.sport) {
        return Ok(pass_l4(p));
    }
    key.addr = p.key.src;
    key.port = p.key.sport;
    if let Some(ba) = BACKEND_ADDRS.get_ptr(&key) {
        if let Some(action) = screen(p) {
            return Ok(action);
        }
        // SAFETY: a map value pointer checked for null.
        if unsafe { (*ba).flags } & BA_F_SHARED != 0 {
            if let Some(rv) = REVERSE.get_ptr_mut(&p.key) {
                return shared_reply(ctx, p, rv);
            }
            // A flow pinned before the address became shared has no REVERSE entry: try the
            // service the entry names, as for an unshared address.
        }
        let r = reply(ctx, p, ba)?;
        if r == STRAY || r == MOVED {
            return Ok(stray_reply(ctx, p, ba, r == MOVED));
        }
        return Ok(r);
    }
    Ok(pass_l4(p))
}

/// Pass a TCP/UDP packet that is not balanced. A first fragment leaves a `FRAGS` entry
/// saying so, so that its later fragments are passed too (not taken for orphans of a
/// balanced datagram: a backend's own fragmented traffic on other ports).
#[inline(always)]
fn pass_l4(p: &Pkt) -> u32 {
    if p.first_fragment {
        remember_fragments(p, &[0; 16], 0, FRAG_F_PASS);
    }
    pass()
}

/// The checks for packets to a service or from a backend: strict L4 headers (malformed
/// otherwise) and a TTL that allows forwarding (the kernel's otherwise).
#[inline(always)]
fn screen(p: &Pkt) -> Option<u32> {
    if p.l4_bad {
        return Some(malformed());
    }
    if p.ttl <= 1 {
        count(global::TTL_EXCEEDED);
        return Some(pass());
    }
    None
}

#[inline(always)]
fn no_backend(service_id: u32) -> u32 {
    if let Some(c) = counters(&SERVICE_STATS, service_id) {
        c.dropped += 1;
    }
    count(global::NO_BACKEND);
    count(global::DROPPED);
    XDP_DROP
}

/// Client → VIP. Not inlined: with its frame merged into the entry point's, the call chains
/// below it come out past the verifier's 512 bytes (it adds up the frames of a chain).
#[inline(never)]
fn forward(ctx: &XdpContext, p: &Pkt, svc: *const ServiceInfo) -> Result<u32, u32> {
    // SAFETY: a map value pointer the verifier checked for null (map values live as long as the map).
    let (service_id, slot, flags) = unsafe { ((*svc).id, (*svc).slot, (*svc).flags) };
    let len = (ctx.data_end() - ctx.data()) as u64;
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };

    // A flow keeps its backend while the backend is healthy or draining.
    let mut backend_id = NO_BACKEND;
    let mut be: *const BackendInfo = core::ptr::null();
    let tcp = p.key.proto == PROTO_TCP;
    let syn = tcp && p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let dsr = flags & SVC_F_DSR != 0;
    // Confirmed flows are in the connection table; others (a TCP handshake, a flow seen first
    // past its SYN, a UDP flow) wait in `UNCONFIRMED`.
    let mut confirmed = true;
    let mut entry = CONNTRACK.get_ptr_mut(&p.key);
    if entry.is_none() {
        entry = UNCONFIRMED.get_ptr_mut(&p.key);
        confirmed = false;
        if entry.is_none() {
            count(global::CONNTRACK_MISS);
        }
    }
    match entry {
        // SAFETY: a map value pointer the verifier checked for null (map values live as long as the map).
        Some(ct) => unsafe {
            let id = (*ct).backend_id;
            // An entry of another service (a backend id freed and taken again) is a miss.
            let own = (*ct).service_id == service_id;
            if let Some(b) = BACKENDS.get_ptr(id).filter(|_| own) {
                if (*b).flags & BE_F_ESTABLISHED_OK != 0 {
                    backend_id = id;
                    be = b;
                    if now.wrapping_sub((*ct).last_seen_ns) > LAST_SEEN_GRANULARITY_NS {
                        (*ct).last_seen_ns = now;
                    }
                    if syn {
                        // A new connection on this client port (or the handshake's SYN
                        // again): its own answer, refusal and count to come.
                        (*ct).flags = ((*ct).flags & CT_F_WITHHELD) | CT_F_SYN;
                    }
                    if p.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
                        (*ct).flags |= CT_F_CLOSING;
                    }
                    // The client's packet after its backend answered (the handshake's ACK
                    // after the SYN-ACK, a UDP datagram after a reply) confirms the flow:
                    // into the connection table. A spoofed source sees no answer and sends
                    // nothing after it; a backend answers a spoofed ACK with a RST, which is
                    // no answer. DSR sees no answers: the client's ACK confirms a handshake.
                    let ready = if dsr {
                        tcp && !syn
                    } else {
                        p.tcp_flags & (TCP_SYN | TCP_RST) == 0 && (*ct).flags & CT_F_ANSWERED != 0
                    };
                    if !confirmed && ready {
                        confirm(&p.key, ct);
                        if dsr {
                            dsr_new_flow(service_id, id);
                        }
                    }
                }
            }
        },
        None => {}
    }
    let new_flow = be.is_null();
    if new_flow {
        if flags & SVC_F_EMPTY != 0 {
            return Ok(no_backend(service_id));
        }
        let ring = ring_size();
        let k = &p.key;
        let h = flow_hash(&k.src, &k.dst, k.sport, k.dport, k.proto, hash_seed());
        let Some(pos) = h.checked_rem(ring) else {
            return Ok(no_backend(service_id));
        };
        let idx = lb_common::maglev_index(service_id, slot, ring, pos);
        backend_id = match MAGLEV.get_ptr(idx) {
            // SAFETY: a map value pointer the verifier checked for null (map values live as long as the map).
            Some(id) => unsafe { *id },
            None => NO_BACKEND,
        };
        match BACKENDS.get_ptr(backend_id) {
            // SAFETY: a map value pointer the verifier checked for null (map values live as long as the map).
            Some(b) if unsafe { (*b).flags } & BE_F_ACTIVE != 0 => be = b,
            _ => return Ok(no_backend(service_id)),
        }
        // A new flow is pinned in `UNCONFIRMED` (a flood of SYNs, ACKs or one-packet flows
        // evicts only such entries); a flow whose confirmed entry named a backend now gone,
        // in the connection table.
        if dsr {
            // No reply will ever confirm a DSR flow: UDP flows and TCP seen past its SYN go to
            // the connection table at once; a handshake waits for the client's ACK as above.
            let into_ct = confirmed || (tcp && !syn);
            pin_dsr(p, ids(service_id, backend_id), now, into_ct || !tcp);
        } else {
            pin_flow(p, ids(service_id, backend_id), be, now, confirmed);
        }
        passive_new_flow(p, backend_id, h);
    }
    // SAFETY: a map value pointer the verifier checked for null (map values live as long as the map).
    let (addr, port) = unsafe { (&(*be).addr, (*be).port) };

    let syns = syn as u64;
    if let Some(c) = counters(&SERVICE_STATS, service_id) {
        c.packets += 1;
        c.bytes += len;
        c.syns += syns;
    }
    if let Some(c) = counters(&BACKEND_STATS, backend_id) {
        c.packets += 1;
        c.bytes += len;
        c.syns += syns;
    }

    let dsr = flags & SVC_F_DSR != 0;
    if p.first_fragment {
        let f = if dsr { FRAG_F_DSR } else { 0 };
        remember_fragments(p, addr, ids(service_id, backend_id), FRAG_F_FORWARD | f);
    }
    // Backend ids are below MAX_BACKENDS, the size of NEXTHOPS: the lookup cannot fail.
    let Some(nh) = NEXTHOPS.get_ptr_mut(backend_id) else {
        return Ok(no_backend(service_id));
    };
    // SAFETY: a map value pointer checked for null.
    let nh = unsafe { &mut *nh };
    if dsr {
        // Direct server return: the packet goes to the backend unchanged (encap.rs).
        let r = encap::send(ctx, p, service_id, addr, nh);
        return Ok(encap::answer_too_big(ctx, p, r));
    }
    let t = Target { addr: *addr, port };
    let r = nat::send_to_backend(ctx, p, &t, nh, now);
    Ok(nat::answer_too_big(ctx, p, r, nh))
}

/// A first fragment was balanced: let the later ones of its datagram follow it (`addr`
/// written into them; `ids`: service id << 32 | backend id).
#[inline(never)]
fn remember_fragments(p: &Pkt, addr: &[u8; 16], ids: u64, flags: u32) {
    let key = FragKey {
        src: p.key.src,
        dst: p.key.dst,
        id: p.frag_id,
        proto: p.key.proto,
        family: p.key.family,
        _pad: [0; 2],
    };
    let v = FragValue {
        addr: *addr,
        service_id: (ids >> 32) as u32,
        backend_id: ids as u32,
        flags,
        _pad: 0,
        // SAFETY: a helper without arguments.
        created_ns: unsafe { bpf_ktime_get_coarse_ns() },
        nh: NO_HOP,
    };
    let _ = FRAGS.insert(&key, &v, 0);
}

#[inline(always)]
fn ids(service_id: u32, backend_id: u32) -> u64 {
    ((service_id as u64) << 32) | backend_id as u64
}

/// A later fragment: it follows its first fragment's rewrite, if that was seen lately.
#[inline(never)]
fn later_fragment(ctx: &XdpContext, p: &Pkt) -> u32 {
    let key = FragKey {
        src: p.key.src,
        dst: p.key.dst,
        id: p.frag_id,
        proto: p.key.proto,
        family: p.key.family,
        _pad: [0; 2],
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let fv = match FRAGS.get_ptr_mut(&key) {
        // SAFETY: a map value pointer checked for null.
        Some(fv) if now.wrapping_sub(unsafe { (*fv).created_ns }) <= FRAG_TTL_NS => fv,
        _ => return orphan_fragment(p),
    };
    // SAFETY: as above.
    let (addr, service_id, backend_id, flags) =
        unsafe { ((*fv).addr, (*fv).service_id, (*fv).backend_id, (*fv).flags) };
    if flags & FRAG_F_PASS != 0 {
        return pass();
    }
    if p.ttl <= 1 {
        count(global::TTL_EXCEEDED);
        return pass();
    }
    // SAFETY: as above.
    let nh = unsafe { &mut (*fv).nh };
    count(global::FRAGS_FOLLOWED);
    if flags & FRAG_F_FORWARD != 0 {
        let len = (ctx.data_end() - ctx.data()) as u64;
        if let Some(c) = counters(&SERVICE_STATS, service_id) {
            c.packets += 1;
            c.bytes += len;
        }
        if let Some(c) = counters(&BACKEND_STATS, backend_id) {
            c.packets += 1;
            c.bytes += len;
        }
        if flags & FRAG_F_DSR != 0 {
            let r = encap::send(ctx, p, service_id, &addr, nh);
            return encap::answer_too_big(ctx, p, r);
        }
        let r = nat::send_to_backend(ctx, p, &Target { addr, port: [0; 2] }, nh, now);
        nat::answer_too_big(ctx, p, r, nh)
    } else {
        count_reply(ctx, service_id, backend_id);
        let r = nat::send_to_client(ctx, p, &Target { addr, port: [0; 2] }, nh, now);
        nat::answer_too_big(ctx, p, r, nh)
    }
}

/// A later fragment without its first: dropped when it is to a VIP or from a backend
/// address (it cannot be balanced), else the kernel's.
#[inline(never)]
fn orphan_fragment(p: &Pkt) -> u32 {
    let mut key = ServiceKey {
        addr: p.key.dst,
        port: [0; 2],
        proto: 0,
        family: p.key.family,
    };
    let ours = match ADDRS.get_ptr(&key) {
        // SAFETY: a map value pointer checked for null.
        Some(f) => (unsafe { *f } & ADDR_F_VIP) != 0,
        None => false,
    } || {
        key.addr = p.key.src;
        match ADDRS.get_ptr(&key) {
            // SAFETY: as above.
            Some(f) => (unsafe { *f } & ADDR_F_BACKEND) != 0,
            None => false,
        }
    };
    if ours {
        count(global::FRAGS_ORPHAN);
        count(global::DROPPED);
        return XDP_DROP;
    }
    pass()
}

/// Remember a new flow's backend (and, for a backend address several services share, how to
/// rewrite its replies).
#[inline(never)]
fn pin_flow(p: &Pkt, ids: u64, be: *const BackendInfo, now: u64, into_ct: bool) {
    let (service_id, backend_id) = ((ids >> 32) as u32, ids as u32);
    let syn = p.key.proto == PROTO_TCP && p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let ct = CtValue {
        backend_id,
        service_id,
        last_seen_ns: now,
        flags: if p.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            CT_F_CLOSING
        } else if syn {
            CT_F_SYN
        } else {
            0
        },
        _pad: 0,
        reply_nh: NO_HOP,
    };
    if into_ct {
        let _ = CONNTRACK.insert(&p.key, &ct, 0);
    } else {
        if UNCONFIRMED.insert(&p.key, &ct, 0).is_ok() {
            count(global::UNCONFIRMED_NEW);
        }
    }
    // SAFETY: a map value pointer the verifier checked for null (map values live as long as the map).
    if unsafe { (*be).flags } & BE_F_SHARED == 0 {
        return;
    }
    let rkey = FlowKey {
        // SAFETY: a map value pointer the verifier checked for null (map values live as long as the map).
        src: unsafe { (*be).addr },
        dst: p.key.src,
        // SAFETY: a map value pointer the verifier checked for null (map values live as long as the map).
        sport: unsafe { (*be).port },
        dport: p.key.sport,
        proto: p.key.proto,
        family: p.key.family,
        _pad: [0; 2],
    };
    let rv = RevValue {
        vip: p.key.dst,
        vport: p.key.dport,
        _pad: [0; 2],
        service_id,
        backend_id,
        _pad2: 0,
        nh: NO_HOP,
    };
    let _ = REVERSE.insert(&rkey, &rv, 0);
}

/// Pin a flow of a DSR service (`ids`: service id << 32 | backend id) in the connection
/// table (`into_ct`, counted as a new flow: no answer will ever count it) or `UNCONFIRMED`;
/// there is nothing to translate back (no `REVERSE` entry).
#[inline(never)]
fn pin_dsr(p: &Pkt, ids: u64, now: u64, into_ct: bool) {
    let (service_id, backend_id) = ((ids >> 32) as u32, ids as u32);
    let ct = CtValue {
        backend_id,
        service_id,
        last_seen_ns: now,
        flags: if p.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            CT_F_CLOSING
        } else {
            0
        },
        _pad: 0,
        reply_nh: NO_HOP,
    };
    if into_ct {
        let _ = CONNTRACK.insert(&p.key, &ct, 0);
        dsr_new_flow(service_id, backend_id);
    } else {
        if UNCONFIRMED.insert(&p.key, &ct, 0).is_ok() {
            count(global::UNCONFIRMED_NEW);
        }
    }
}

/// A DSR flow entered the connection table: counted as new there (NAT flows are counted
/// when their backend first answers, which a DSR balancer never sees).
#[inline(always)]
fn dsr_new_flow(service_id: u32, backend_id: u32) {
    if let Some(c) = counters(&SERVICE_STATS, service_id) {
        c.new_flows += 1;
    }
    if let Some(c) = counters(&BACKEND_STATS, backend_id) {
        c.new_flows += 1;
    }
}

pub const NO_HOP: NextHop = NextHop {
    ifindex: 0,
    mtu: 0,
    vlan: 0,
    smac: [0; 6],
    dmac: [0; 6],
    flags: 0,
    expires_ns: 0,
};

/// Backend → client: restore the VIP as the source. The flow is found in `CONNTRACK` under
/// the client's key, rebuilt from the service the backend address serves. A reply without an
/// entry (evicted, swept) is translated all the same and its entry re-created, unless it is
/// addressed to this host (health checks) or the address is shared; a reply of a flow now
/// pinned to another backend is dropped. Nothing leaves with the backend's own address.
#[inline(never)]
fn reply(ctx: &XdpContext, p: &Pkt, ba: *const BackendAddrValue) -> Result<u32, u32> {
    // SAFETY: a map value pointer checked for null by the caller.
    let (vip, vport, service_id, backend_id) =
        unsafe { ((*ba).vip, (*ba).vport, (*ba).service_id, (*ba).backend_id) };
    let key = client_key(p, &vip, vport);
    let mut confirmed = true;
    let ct = match CONNTRACK.get_ptr_mut(&key) {
        Some(ct) => ct,
        None => match unconfirmed(&key) {
            Some((ct, c)) => {
                confirmed = c;
                ct
            }
            None => return Ok(STRAY),
        },
    };
    // SAFETY: as above.
    if unsafe { (*ct).backend_id } != backend_id {
        return Ok(MOVED);
    }
    // Passive health: handshakes answered or refused, UDP flows answered (cold: only SYN-ACKs,
    // RSTs and a flow's first reply get there); a flow's first answer confirms it.
    // SAFETY: as above.
    if p.tcp_flags & (TCP_SYN | TCP_RST) != 0 || unsafe { (*ct).flags } & DONE != DONE {
        if answer(p, ct, &vip, vport, confirmed) == REDISPATCH {
            return Ok(redispatched());
        }
    }
    count_reply(ctx, service_id, backend_id);
    if p.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        // SAFETY: as above.
        unsafe { (*ct).flags |= CT_F_CLOSING };
    }
    // SAFETY: as above.
    let nh = unsafe { &mut (*ct).reply_nh };
    Ok(send_reply(
        ctx,
        p,
        &Target {
            addr: vip,
            port: vport,
        },
        ids(service_id, backend_id),
        nh,
    ))
}

/// A reply's flow in `UNCONFIRMED` (none in the connection table): the entry, and whether
/// its first answer counts it as a new flow (UDP: a reply is what confirms a UDP flow; a TCP
/// handshake counts once the client's ACK confirmed it). Either stays in `UNCONFIRMED` until
/// the client's next packet: a spoofed source never sends one.
#[inline(always)]
fn unconfirmed(key: &FlowKey) -> Option<(*mut CtValue, bool)> {
    let u = UNCONFIRMED.get_ptr_mut(key)?;
    Some((u, key.proto != PROTO_TCP))
}

/// Move a flow from `UNCONFIRMED` to the connection table.
#[inline(never)]
fn confirm(key: &FlowKey, u: *mut CtValue) {
    // SAFETY: a map value pointer checked for null by the caller.
    let v = unsafe { *u };
    if CONNTRACK.insert(key, &v, 0).is_ok() {
        let _ = UNCONFIRMED.remove(key);
        count(global::CONFIRMED);
    }
}

/// `CtValue::flags` of a flow whose replies skip `answer`.
const DONE: u32 = CT_F_ANSWERED | CT_F_COUNTED;

/// A backend's reply on flow `ct` that carries SYN or RST, or whose flow was not answered or
/// counted yet: passive health's bookkeeping, and a confirmed flow's (`confirmed`: in the
/// connection table) first answer that is not a RST counts it as a new flow of its service
/// and backend. Answers `REDISPATCH` for a refusal that must not reach the client, else
/// `FLOW_OK`.
#[inline(never)]
fn answer(p: &Pkt, ct: *mut CtValue, vip: &[u8; 16], vport: [u8; 2], confirmed: bool) -> u32 {
    if passive_reply(p, ct, vip, vport) == REDISPATCH {
        return REDISPATCH;
    }
    if p.tcp_flags & TCP_RST != 0 {
        return FLOW_OK;
    }
    // SAFETY: a map value pointer checked for null by the caller.
    unsafe {
        if !confirmed {
            // A handshake's SYN-ACK: answered, counted once the client confirms it.
            (*ct).flags |= CT_F_ANSWERED;
            return FLOW_OK;
        }
        if (*ct).flags & CT_F_COUNTED != 0 {
            (*ct).flags |= CT_F_ANSWERED;
            return FLOW_OK;
        }
        (*ct).flags |= DONE;
    }
    // SAFETY: as above.
    let (service_id, backend_id) = unsafe { ((*ct).service_id, (*ct).backend_id) };
    if let Some(c) = counters(&SERVICE_STATS, service_id) {
        c.new_flows += 1;
    }
    if let Some(c) = counters(&BACKEND_STATS, backend_id) {
        c.new_flows += 1;
    }
    FLOW_OK
}

#[inline(always)]
fn stray_dropped() -> u32 {
    count(global::STRAY_DROPPED);
    count(global::DROPPED);
    XDP_DROP
}

/// Pin a flow again from its reply (`ids`: service id << 32 | backend id).
#[inline(never)]
fn recreate_flow(p: &Pkt, vip: &[u8; 16], vport: [u8; 2], ids: u64, nh: &NextHop) {
    let key = client_key(p, vip, vport);
    let ct = CtValue {
        backend_id: ids as u32,
        service_id: (ids >> 32) as u32,
        // SAFETY: a helper without arguments.
        last_seen_ns: unsafe { bpf_ktime_get_coarse_ns() },
        // An established flow's reply (evicted, swept): answered already, not a new flow.
        // (SYN-ACKs and RSTs without an entry make none: `stateless_answer`.)
        flags: if p.tcp_flags & TCP_FIN != 0 {
            CT_F_CLOSING | DONE
        } else {
            DONE
        },
        _pad: 0,
        reply_nh: *nh,
    };
    // A UDP flow waits in `UNCONFIRMED` for its client's next packet (a flood of answered
    // spoofed datagrams must not fill the connection table).
    if p.key.proto == PROTO_TCP {
        let _ = CONNTRACK.insert(&key, &ct, 0);
    } else {
        let _ = UNCONFIRMED.insert(&key, &ct, 0);
    }
}

/// The backend the Maglev table of its service picks for client flow `key` (client → VIP),
/// `NO_BACKEND` if none.
#[inline(never)]
pub fn table_backend(key: &FlowKey) -> u32 {
    let skey = ServiceKey {
        addr: key.dst,
        port: key.dport,
        proto: key.proto,
        family: key.family,
    };
    let Some(svc) = SERVICES.get_ptr(&skey) else {
        return NO_BACKEND;
    };
    // SAFETY: a map value pointer checked for null.
    let (service_id, slot) = unsafe { ((*svc).id, (*svc).slot) };
    let ring = ring_size();
    let h = flow_hash(
        &key.src,
        &key.dst,
        key.sport,
        key.dport,
        key.proto,
        hash_seed(),
    );
    let Some(pos) = h.checked_rem(ring) else {
        return NO_BACKEND;
    };
    match MAGLEV.get_ptr(lb_common::maglev_index(service_id, slot, ring, pos)) {
        // SAFETY: as above.
        Some(id) => unsafe { *id },
        None => NO_BACKEND,
    }
}

/// Remember a client → backend-address flow (under its reply's key).
#[inline(never)]
fn mark_direct(p: &Pkt) {
    let key = FlowKey {
        src: p.key.dst,
        dst: p.key.src,
        sport: p.key.dport,
        dport: p.key.sport,
        proto: p.key.proto,
        family: p.key.family,
        _pad: [0; 2],
    };
    if DIRECT.get_ptr(&key).is_none() {
        let _ = DIRECT.insert(&key, &0u8, 0);
    }
}

/// The client's flow (client → `vip`:`vport`) a backend's reply `p` belongs to: the key of
/// its connection-table entry.
#[inline(always)]
fn client_key(p: &Pkt, vip: &[u8; 16], vport: [u8; 2]) -> FlowKey {
    FlowKey {
        src: p.key.dst,
        dst: *vip,
        sport: p.key.dport,
        dport: vport,
        proto: p.key.proto,
        family: p.key.family,
        _pad: [0; 2],
    }
}

/// A reply on its way to the client: later fragments will follow a first one; the source
/// becomes the VIP (`ids`: service id << 32 | backend id).
#[inline(always)]
fn send_reply(ctx: &XdpContext, p: &Pkt, t: &Target, ids: u64, nh: &mut NextHop) -> u32 {
    if p.first_fragment {
        remember_fragments(p, &t.addr, ids, 0);
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let r = nat::send_to_client(ctx, p, t, nh, now);
    nat::answer_too_big(ctx, p, r, nh)
}

/// `reply`: the flow has no connection-table entry.
const STRAY: u32 = u32::MAX - 7;
/// `reply`: the client's flow is pinned to another backend now.
const MOVED: u32 = u32::MAX - 8;

#[inline(never)]
fn stray_reply(ctx: &XdpContext, p: &Pkt, ba: *const BackendAddrValue, moved: bool) -> u32 {
    // SAFETY: a map value pointer checked for null by the caller.
    let (vip, vport, service_id, backend_id, baflags) = unsafe {
        (
            (*ba).vip,
            (*ba).vport,
            (*ba).service_id,
            (*ba).backend_id,
            (*ba).flags,
        )
    };
    // A reply of a client talking to the backend directly (through this host), or to this
    // host itself (health checks), is the kernel's. Otherwise, for a shared address nothing
    // else can be known: dropped. For an unshared one, a reply the service's table would not
    // have sent to this backend is no balanced flow's either.
    // For a shared address, `moved` comes from the fallback service's entry only: a DIRECT
    // flow says more.
    if moved && baflags & BA_F_SHARED == 0 {
        return stray_dropped();
    }
    if DIRECT.get_ptr(&p.key).is_some() {
        return pass_l4(p);
    }
    let shared = baflags & BA_F_SHARED != 0;
    if !shared && table_backend(&client_key(p, &vip, vport)) != backend_id {
        return pass_l4(p);
    }
    let Some(nh) = NH_SCRATCH.get_ptr_mut(0) else {
        return stray_dropped();
    };
    // SAFETY: a per-CPU map value checked for null.
    let nh = unsafe { &mut *nh };
    *nh = NO_HOP;
    let rc = nat::resolve(ctx, p, &vip, &p.key.dst, nh);
    // To this host (a health check or another local connection to the backend), or no
    // route: the kernel's, shared address or not.
    if rc == NH_LOCAL {
        return pass_l4(p);
    }
    if shared {
        return stray_dropped();
    }
    match rc {
        // No neighbour (or too big): the entry is re-created all the same; `send_reply` hands
        // the packet on as for any reply.
        NH_OK | nat::NH_NO_NEIGH | nat::NH_TOO_BIG => {}
        other => return other,
    }
    match BACKENDS.get_ptr(backend_id) {
        // SAFETY: a map value pointer checked for null.
        Some(b) if unsafe { (*b).flags } & BE_F_ESTABLISHED_OK != 0 => {}
        _ => return stray_dropped(),
    }
    if p.key.proto == PROTO_TCP && p.tcp_flags & (TCP_SYN | TCP_RST) != 0 {
        // The answer to a SYN balanced without an entry (a SYN-ACK, or a RST refusing it),
        // or a RST ending an evicted flow: translated as it is, no entry made (the client's
        // ACK pins an accepted flow).
        if stateless_answer(p, backend_id, &vip, vport) == REDISPATCH {
            return redispatched();
        }
    } else {
        recreate_flow(p, &vip, vport, ids(service_id, backend_id), nh);
        count(global::STRAY_RECREATED);
    }
    count_reply(ctx, service_id, backend_id);
    send_reply(
        ctx,
        p,
        &Target {
            addr: vip,
            port: vport,
        },
        ids(service_id, backend_id),
        nh,
    )
}

#[inline(always)]
fn count_reply(ctx: &XdpContext, service_id: u32, backend_id: u32) {
    let len = (ctx.data_end() - ctx.data()) as u64;
    if let Some(c) = counters(&SERVICE_STATS, service_id) {
        c.reply_packets += 1;
        c.reply_bytes += len;
    }
    if let Some(c) = counters(&BACKEND_STATS, backend_id) {
        c.reply_packets += 1;
        c.reply_bytes += len;
    }
}

/// A reply from a backend address several services share: its flow's `REVERSE` entry says
/// which VIP to restore.
#[inline(never)]
fn shared_reply(ctx: &XdpContext, p: &Pkt, rv: *mut RevValue) -> Result<u32, u32> {
    let (vip, vport, service_id, backend_id) =
        // SAFETY: a map value pointer the verifier checked for null (map values live as long as the map).
        unsafe { ((*rv).vip, (*rv).vport, (*rv).service_id, (*rv).backend_id) };
    // The client's flow, if it is in the table, must still be this backend's; a backend
    // ending the flow marks it closing.
    match client_flow(p, &vip, vport, backend_id) {
        FLOW_OK => {}
        REDISPATCH => return Ok(redispatched()),
        _ => return Ok(stray_dropped()),
    }
    count_reply(ctx, service_id, backend_id);
    // SAFETY: a map value pointer checked for null by the caller.
    let nh = unsafe { &mut (*rv).nh };
    Ok(send_reply(
        ctx,
        p,
        &Target {
            addr: vip,
            port: vport,
        },
        ids(service_id, backend_id),
        nh,
    ))
}

/// `client_flow`: the reply may go on.
const FLOW_OK: u32 = 0;
/// `client_flow`: the client's flow is pinned to another backend.
const FLOW_MOVED: u32 = 1;

/// Whether the client's connection-table entry for a shared-address reply is absent or on
/// `backend_id` (marking it closing on a FIN or RST, and doing the passive-health
/// bookkeeping): `FLOW_OK`, `FLOW_MOVED` or `REDISPATCH`.
#[inline(never)]
fn client_flow(p: &Pkt, vip: &[u8; 16], vport: [u8; 2], backend_id: u32) -> u32 {
    let key = client_key(p, vip, vport);
    let entry = match CONNTRACK.get_ptr_mut(&key) {
        Some(ct) => Some((ct, true)),
        None => unconfirmed(&key),
    };
    match entry {
        // SAFETY: a map value pointer checked for null.
        Some((ct, confirmed)) => unsafe {
            if (*ct).backend_id != backend_id {
                return FLOW_MOVED;
            }
            if (p.tcp_flags & (TCP_SYN | TCP_RST) != 0 || (*ct).flags & DONE != DONE)
                && answer(p, ct, vip, vport, confirmed) == REDISPATCH
            {
                return REDISPATCH;
            }
            if p.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
                (*ct).flags |= CT_F_CLOSING;
            }
            FLOW_OK
        },
        None => FLOW_OK,
    }
}

/// `passive_reply`: a refusal of a backend marked down, not forwarded (`redispatch`).
const REDISPATCH: u32 = 2;

#[inline(always)]
fn redispatched() -> u32 {
    count(global::DROPPED);
    XDP_DROP
}

/// Passive health of a new flow: a TCP SYN counts (and may become the backend's sampled SYN,
/// whose answer is then watched for); a UDP flow counts.
#[inline(never)]
fn passive_new_flow(p: &Pkt, backend_id: u32, hash: u32) {
    let Some(c) = passive(backend_id) else {
        return;
    };
    if p.key.proto != PROTO_TCP {
        c.udp_flows += 1;
        return;
    }
    if p.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return;
    }
    c.syns += 1;
    let timeout = match PASSIVE_CONF.get_ptr(backend_id) {
        // SAFETY: a map value pointer checked for null.
        Some(conf) => unsafe { (*conf).syn_timeout_ns },
        None => 0,
    };
    if timeout == 0 {
        return;
    }
    let Some(s) = SYN_SAMPLES.get_ptr_mut(backend_id) else {
        return;
    };
    // SAFETY: a map value pointer checked for null (races between CPUs only blur a sample).
    unsafe {
        // SAFETY: a helper without arguments.
        let now = bpf_ktime_get_coarse_ns();
        if (*s).sent_ns != 0 && (*s).answered == 0 {
            if now.wrapping_sub((*s).sent_ns) <= timeout {
                return;
            }
            c.unanswered += 1;
        }
        (*s).sent_ns = now;
        (*s).flow_hash = hash;
        (*s).answered = 0;
    }
}

/// Passive health of a backend's reply on flow `ct` (client → `vip`:`vport`): a SYN-ACK
/// answers the handshake (and the sampled SYN, if it is this flow's); a RST before it refuses
/// it; a UDP flow's first reply answers it. Answers `REDISPATCH` for a refusal that must not
/// reach the client, else `FLOW_OK`.
#[inline(never)]
fn passive_reply(p: &Pkt, ct: *mut CtValue, vip: &[u8; 16], vport: [u8; 2]) -> u32 {
    // SAFETY: a map value pointer checked for null by the caller.
    let (backend_id, answered) = unsafe { ((*ct).backend_id, (*ct).flags & CT_F_ANSWERED != 0) };
    let Some(c) = passive(backend_id) else {
        return FLOW_OK;
    };
    if p.key.proto != PROTO_TCP {
        if !answered {
            c.udp_answered += 1;
            // SAFETY: as above.
            unsafe { (*ct).flags |= CT_F_ANSWERED };
        }
        return FLOW_OK;
    }
    if p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
        if !answered {
            c.synacks += 1;
            // SAFETY: as above.
            unsafe { (*ct).flags |= CT_F_ANSWERED };
            sample_answered(p, backend_id, vip, vport);
        }
        return FLOW_OK;
    }
    // SAFETY: as above.
    if p.tcp_flags & TCP_RST != 0 && !answered && unsafe { (*ct).flags } & CT_F_SYN != 0 {
        c.refused += 1;
        // SAFETY: as above.
        let first = (unsafe { (*ct).flags } & CT_F_WITHHELD) == 0;
        if refusal_withheld(p, backend_id, vip, vport, first) {
            // SAFETY: as above.
            unsafe { (*ct).flags |= CT_F_WITHHELD };
            c.redispatched += 1;
            return REDISPATCH;
        }
    } else if p.tcp_flags & (TCP_SYN | TCP_RST) == 0 && !answered {
        // Data from the backend on a flow whose handshake was not seen here (a flow moved or
        // re-created): answered, so that its later replies skip this bookkeeping.
        // SAFETY: as above.
        unsafe { (*ct).flags |= CT_F_ANSWERED };
    }
    FLOW_OK
}

/// A SYN-ACK answers `backend_id`'s sampled SYN if it is this flow's (client → `vip`:`vport`).
#[inline(always)]
fn sample_answered(p: &Pkt, backend_id: u32, vip: &[u8; 16], vport: [u8; 2]) {
    if let Some(s) = SYN_SAMPLES.get_ptr_mut(backend_id) {
        let h = flow_hash(
            &p.key.dst,
            vip,
            p.key.dport,
            vport,
            p.key.proto,
            hash_seed(),
        );
        // SAFETY: a map value pointer checked for null.
        unsafe {
            if (*s).flow_hash == h {
                (*s).answered = 1;
            }
        }
    }
}

/// Passive health of a SYN-ACK or RST whose flow has no entry (its SYN was balanced without
/// one): a SYN-ACK answers the handshake, a RST refuses it. `REDISPATCH` if the refusal is
/// withheld (`redispatch`; with no entry to remember a first refusal by, every refusal of a
/// backend with `redispatch` is withheld while its service has backends: the backend is
/// marked down within milliseconds, and the client's SYN retransmission goes elsewhere).
#[inline(never)]
fn stateless_answer(p: &Pkt, backend_id: u32, vip: &[u8; 16], vport: [u8; 2]) -> u32 {
    let synack = p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK;
    if synack {
        count(global::SYNACK_STATELESS);
    }
    let Some(c) = passive(backend_id) else {
        return FLOW_OK;
    };
    if synack {
        c.synacks += 1;
        sample_answered(p, backend_id, vip, vport);
        return FLOW_OK;
    }
    if p.tcp_flags & TCP_RST == 0 {
        return FLOW_OK;
    }
    c.refused += 1;
    if refusal_withheld(p, backend_id, vip, vport, true) {
        c.redispatched += 1;
        return REDISPATCH;
    }
    FLOW_OK
}

/// Whether a refusal from `backend_id` is withheld from the client: the backend's group has
/// `redispatch`, the backend is marked down, and its service (`vip`:`vport`) still has
/// backends (with none left, the client gets the refusal).
#[inline(always)]
pub fn refusal_withheld(
    p: &Pkt,
    backend_id: u32,
    vip: &[u8; 16],
    vport: [u8; 2],
    first: bool,
) -> bool {
    let Some(b) = BACKENDS.get_ptr(backend_id) else {
        return false;
    };
    // SAFETY: a map value pointer checked for null.
    let flags = unsafe { (*b).flags };
    // A backend still in service: its flow's first refusal only (the daemon marks the
    // backend down within milliseconds of a few refusals, long before the client's SYN
    // retransmission; a port that is really closed costs one retransmission).
    if flags & BE_F_REDISPATCH == 0 || (flags & BE_F_ACTIVE != 0 && !first) {
        return false;
    }
    let key = ServiceKey {
        addr: *vip,
        port: vport,
        proto: p.key.proto,
        family: p.key.family,
    };
    match SERVICES.get_ptr(&key) {
        // SAFETY: as above.
        Some(svc) => (unsafe { (*svc).flags } & SVC_F_EMPTY) == 0,
        None => false,
    }
}
