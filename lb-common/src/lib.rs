//! Types shared by the XDP program (`lb-ebpf`) and the daemon (`lb-userspace`).
//!
//! Everything here is `#[repr(C)]`, made of plain integers with explicit padding, and its size
//! is asserted at compile time, so that kernel and userspace agree byte for byte. Addresses and
//! ports are stored as they are on the wire (network byte order, IPv4 in the first 4 bytes of a
//! 16-byte field); nothing on the per-packet path converts byte order.
#![no_std]

pub mod consts;
pub mod csum;
pub mod hash;
pub mod types;

pub use consts::*;
pub use types::*;
