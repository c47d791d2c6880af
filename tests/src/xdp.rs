//! A one-instruction XDP program (`return XDP_PASS`) attached to a veth device, loaded with
//! the raw `bpf(2)` calls (no object file needed).
//!
//! Why: a veth device delivers the frames an XDP program on its peer sends back with
//! `XDP_TX` (xlb's "fragmentation needed" answers, hairpin flows) only when it runs an XDP
//! program itself. GRO on it is enough for frames *redirected* into it, not for `XDP_TX`
//! ones: those wait in its queue until something else wakes it up. Physical NICs do not need
//! this.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The program and its XDP link: attached while this lives (and while the device does).
#[derive(Debug)]
pub struct XdpPass {
    _link: OwnedFd,
    _prog: OwnedFd,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> io::Result<OwnedFd> {
    // SAFETY: bpf(2) reads `attr` (a zero-padded bpf_attr of the size given) and returns a new
    // descriptor, owned from here on.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attach `return XDP_PASS` in driver (native) mode to `ifindex` of the calling thread's
/// network namespace.
pub fn attach_pass(ifindex: u32) -> io::Result<XdpPass> {
    // r0 = XDP_PASS (2); exit.
    let insns: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0x00, 0, 0, 2, 0, 0, 0]),
        u64::from_le_bytes([0x95, 0x00, 0, 0, 0, 0, 0, 0]),
    ];
    let license = b"GPL\0";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_XDP.to_ne_bytes());
    attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[48..57].copy_from_slice(b"xlbt_pass");
    attr[68..72].copy_from_slice(&BPF_XDP.to_ne_bytes());
    let prog = bpf(BPF_PROG_LOAD, &mut attr)?;

    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    attr[8..12].copy_from_slice(&BPF_XDP.to_ne_bytes());
    attr[12..16].copy_from_slice(&XDP_FLAGS_DRV_MODE.to_ne_bytes());
    let link = bpf(BPF_LINK_CREATE, &mut attr)?;
    Ok(XdpPass {
        _link: link,
        _prog: prog,
    })
}
