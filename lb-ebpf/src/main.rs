//! xlb's XDP programs.
//!
//! `xlb` is the load balancer: client → VIP packets are matched to a service, pinned to a
//! backend (connection table first, then the service's Maglev table), NAT-rewritten to the
//! backend and forwarded out of the interface the FIB names; backend → client replies are
//! rewritten back to the VIP. `xlb_pass` and `xlb_tx` are one-line programs used to enable
//! veth NAPI in labs and as the floor in benchmarks.
//!
//! Deliberate choices for traffic that is not plainly TCP/UDP over IPv4/IPv6 (see README):
//! - not IPv4/IPv6 (ARP, LLDP, …), ICMP/ICMPv6, IPv6 extension headers, other L4 protocols,
//!   and IPv4 fragments: `XDP_PASS`, untouched (the kernel owns them);
//! - truncated or malformed Ethernet/VLAN/IP/TCP/UDP headers: `XDP_DROP`, counted `malformed`
//!   (the kernel would drop them too; nothing half-parsed is ever rewritten);
//! - IPv4 options are parsed over (the L4 header is found with IHL) and forwarded intact;
//! - one 802.1Q/802.1ad tag is parsed and kept unchanged on the forwarded frame.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

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
