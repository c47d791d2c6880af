//! xlb's XDP programs.
//!
//! `xlb` is the load balancer: client → VIP packets are matched to a service, pinned to a
//! backend (connection table first, then the service's Maglev table), NAT-rewritten to the
//! backend and forwarded out of the interface the FIB names; backend → client replies are
//! rewritten back to the VIP. `xlb_pass` and `xlb_tx` are one-line programs used to enable
//! veth NAPI in labs and as the floor in benchmarks.
//!
//! What it does with every kind of packet (ICMP errors, fragments, TTL, path MTU, stray
//! replies, VLANs, malformed headers) is specified by README's "What the data path does with
//! each packet"; the modules: `parse` (bounds checks, Ethernet/VLAN, IPv4, IPv6 extension
//! headers, TCP/UDP checks), `prog` (classification, connection table, Maglev, fragments,
//! replies), `nat` (rewrites, next hops, transmission), `encap` (direct server return: MACs
//! only, IPIP or GUE to the backend), `icmp` (error translation and the "too big" errors xlb
//! sends), `maps`. `xlb_decap` (`decap`) is the backend side of DSR: it strips IPIP / GUE
//! addressed to its host and passes the inner packet to the stack. `xlb_hc` (`hc`, TC egress)
//! sends the daemon's DSR health checks to their backend through the encapsulation.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod decap;
#[cfg(target_arch = "bpf")]
mod encap;
#[cfg(target_arch = "bpf")]
mod hc;
#[cfg(target_arch = "bpf")]
mod icmp;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod nat;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod prog;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
