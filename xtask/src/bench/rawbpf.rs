//! A few BPF programs of the bench itself, written as instructions here (no BPF toolchain),
//! and the `bpf(2)` commands to create maps, load, pin and test-run them:
//!
//! - [`redirect_prog`]: `bpf_redirect(ifindex)` of every frame. The lab uses it to hand frames
//!   to the balancer the way a NIC does (see `topo`).
//! - [`harness_prog`]: the per-packet-cost harness: it copies the next of a set of template
//!   frames over the packet and tail-calls the program under test, so that the kernel's
//!   `repeat` loop runs the program on a fresh frame every time.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use anyhow::{bail, Context, Result};

const BPF_MAP_CREATE: u32 = 0;
const BPF_MAP_UPDATE_ELEM: u32 = 2;
const BPF_PROG_LOAD: u32 = 5;
const BPF_PROG_TEST_RUN: u32 = 10;
const BPF_LINK_CREATE: u32 = 28;
/// `XDP_FLAGS_DRV_MODE`: native XDP.
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

pub const MAP_ARRAY: u32 = 2;
pub const MAP_PROG_ARRAY: u32 = 3;
const PROG_XDP: u32 = 6;
/// `BPF_XDP`, the expected attach type aya gives XDP programs (tail calls need it to match).
const ATTACH_XDP: u32 = 37;

const HELPER_MAP_LOOKUP: i32 = 1;
const HELPER_TAIL_CALL: i32 = 12;
const HELPER_REDIRECT: i32 = 23;
const HELPER_XDP_ADJUST_HEAD: i32 = 44;

/// `union bpf_attr` as bytes (large enough for every command used here).
type Attr = [u8; 128];

fn put32(a: &mut Attr, off: usize, v: u32) {
    a[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put64(a: &mut Attr, off: usize, v: u64) {
    a[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

fn get32(a: &Attr, off: usize) -> u32 {
    u32::from_ne_bytes(a[off..off + 4].try_into().expect("4 bytes"))
}

fn bpf(cmd: u32, attr: &mut Attr) -> io::Result<i64> {
    // SAFETY: attr is a valid, writable buffer of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr.as_mut_ptr(),
            attr.len() as libc::c_long,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn fd(r: i64) -> OwnedFd {
    // SAFETY: the kernel just returned this new descriptor to us.
    unsafe { OwnedFd::from_raw_fd(r as RawFd) }
}

pub fn map_create(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
) -> Result<OwnedFd> {
    let mut a: Attr = [0; 128];
    put32(&mut a, 0, map_type);
    put32(&mut a, 4, key_size);
    put32(&mut a, 8, value_size);
    put32(&mut a, 12, max_entries);
    let r = bpf(BPF_MAP_CREATE, &mut a).context("BPF_MAP_CREATE")?;
    Ok(fd(r))
}

pub fn map_update(map: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> Result<()> {
    let mut a: Attr = [0; 128];
    put32(&mut a, 0, map.as_raw_fd() as u32);
    put64(&mut a, 8, key.as_ptr() as u64);
    put64(&mut a, 16, value.as_ptr() as u64);
    bpf(BPF_MAP_UPDATE_ELEM, &mut a).context("BPF_MAP_UPDATE_ELEM")?;
    Ok(())
}

/// Loads an XDP program; on failure the error carries the verifier's log.
pub fn prog_load(name: &str, insns: &[Insn]) -> Result<OwnedFd> {
    let license = CString::new("GPL").expect("no NUL");
    let mut log = vec![0u8; 64 * 1024];
    let mut a: Attr = [0; 128];
    put32(&mut a, 0, PROG_XDP);
    put32(&mut a, 4, insns.len() as u32);
    put64(&mut a, 8, insns.as_ptr() as u64);
    put64(&mut a, 16, license.as_ptr() as u64);
    put32(&mut a, 24, 1);
    put32(&mut a, 28, log.len() as u32);
    put64(&mut a, 32, log.as_mut_ptr() as u64);
    for (i, b) in name.bytes().take(15).enumerate() {
        a[48 + i] = b;
    }
    put32(&mut a, 68, ATTACH_XDP);
    match bpf(BPF_PROG_LOAD, &mut a) {
        Ok(r) => Ok(fd(r)),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            bail!(
                "loading BPF program {name}: {e}\n{}",
                String::from_utf8_lossy(&log[..end])
            )
        }
    }
}

/// Attaches an XDP program to interface `ifindex` of the calling thread's network namespace
/// (native mode) with a BPF link; the program stays attached while the returned link is open
/// (or until the interface goes).
pub fn xdp_link(prog: BorrowedFd<'_>, ifindex: u32) -> Result<OwnedFd> {
    let mut a: Attr = [0; 128];
    put32(&mut a, 0, prog.as_raw_fd() as u32);
    put32(&mut a, 4, ifindex);
    put32(&mut a, 8, ATTACH_XDP);
    put32(&mut a, 12, XDP_FLAGS_DRV_MODE);
    let r = bpf(BPF_LINK_CREATE, &mut a).context("BPF_LINK_CREATE (XDP)")?;
    Ok(fd(r))
}

/// `BPF_PROG_TEST_RUN` of an XDP program: (return value, duration per repetition in ns).
pub fn test_run(
    prog: BorrowedFd<'_>,
    data: &[u8],
    ifindex: u32,
    repeat: u32,
) -> Result<(u32, u32)> {
    // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(data.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    let mut a: Attr = [0; 128];
    put32(&mut a, 0, prog.as_raw_fd() as u32);
    put32(&mut a, 8, data.len() as u32);
    put64(&mut a, 16, data.as_ptr() as u64);
    put32(&mut a, 32, repeat);
    put32(&mut a, 40, ctx.len() as u32);
    put64(&mut a, 48, ctx.as_ptr() as u64);
    bpf(BPF_PROG_TEST_RUN, &mut a).context("BPF_PROG_TEST_RUN")?;
    Ok((get32(&a, 4), get32(&a, 36)))
}

// ---- instructions ----

/// One BPF instruction (`struct bpf_insn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

// Opcode parts.
const ALU64: u8 = 0x07;
const JMP: u8 = 0x05;
const LDX: u8 = 0x01;
const STX: u8 = 0x03;
const ST: u8 = 0x02;
const LD: u8 = 0x00;
const K: u8 = 0x00;
const X: u8 = 0x08;
const MOV: u8 = 0xb0;
const ADD: u8 = 0x00;
const SUB: u8 = 0x10;
const AND: u8 = 0x50;
const MEM: u8 = 0x60;
const IMM: u8 = 0x00;
const W: u8 = 0x00;
const B: u8 = 0x10;
const DW: u8 = 0x18;
const JEQ: u8 = 0x10;
const JGT: u8 = 0x20;
const JNE: u8 = 0x50;
const CALL: u8 = 0x80;
const EXIT: u8 = 0x90;
const JA: u8 = 0x00;

pub const R0: u8 = 0;
pub const R1: u8 = 1;
pub const R2: u8 = 2;
pub const R3: u8 = 3;
pub const R4: u8 = 4;
pub const R5: u8 = 5;
pub const R6: u8 = 6;
pub const R7: u8 = 7;
pub const R8: u8 = 8;
pub const R10: u8 = 10;

fn mov_imm(dst: u8, imm: i32) -> Insn {
    insn(ALU64 | MOV | K, dst, 0, 0, imm)
}
fn mov_reg(dst: u8, src: u8) -> Insn {
    insn(ALU64 | MOV | X, dst, src, 0, 0)
}
fn add_imm(dst: u8, imm: i32) -> Insn {
    insn(ALU64 | ADD | K, dst, 0, 0, imm)
}
fn sub_reg(dst: u8, src: u8) -> Insn {
    insn(ALU64 | SUB | X, dst, src, 0, 0)
}
fn and_imm(dst: u8, imm: i32) -> Insn {
    insn(ALU64 | AND | K, dst, 0, 0, imm)
}
fn ldx(size: u8, dst: u8, src: u8, off: i16) -> Insn {
    insn(LDX | MEM | size, dst, src, off, 0)
}
fn stx(size: u8, dst: u8, src: u8, off: i16) -> Insn {
    insn(STX | MEM | size, dst, src, off, 0)
}
fn st_imm(size: u8, dst: u8, off: i16, imm: i32) -> Insn {
    insn(ST | MEM | size, dst, 0, off, imm)
}
fn call(helper: i32) -> Insn {
    insn(JMP | CALL, 0, 0, 0, helper)
}
fn exit() -> Insn {
    insn(JMP | EXIT, 0, 0, 0, 0)
}
/// `dst = map` (two instructions: `BPF_LD | BPF_DW | BPF_IMM` with `BPF_PSEUDO_MAP_FD`).
fn ld_map(dst: u8, map: BorrowedFd<'_>) -> [Insn; 2] {
    [
        insn(LD | DW | IMM, dst, 1, 0, map.as_raw_fd()),
        insn(0, 0, 0, 0, 0),
    ]
}

/// A program under construction, with forward jumps to a label patched at the end.
#[derive(Default)]
struct Asm {
    code: Vec<Insn>,
    /// Indexes of jumps to the `fail` label.
    to_fail: Vec<usize>,
}

impl Asm {
    fn push(&mut self, i: Insn) {
        self.code.push(i);
    }
    fn push2(&mut self, i: [Insn; 2]) {
        self.code.extend(i);
    }
    /// `if dst == imm goto fail`
    fn jeq_imm_fail(&mut self, dst: u8, imm: i32) {
        self.to_fail.push(self.code.len());
        self.push(insn(JMP | JEQ | K, dst, 0, 0, imm));
    }
    /// `if dst != imm goto fail`
    fn jne_imm_fail(&mut self, dst: u8, imm: i32) {
        self.to_fail.push(self.code.len());
        self.push(insn(JMP | JNE | K, dst, 0, 0, imm));
    }
    /// `if dst > src goto fail`
    fn jgt_reg_fail(&mut self, dst: u8, src: u8) {
        self.to_fail.push(self.code.len());
        self.push(insn(JMP | JGT | X, dst, src, 0, 0));
    }
    /// Ends with `fail: r0 = ret; exit` and patches the jumps.
    fn finish(mut self, ret: i32) -> Vec<Insn> {
        let fail = self.code.len();
        for &j in &self.to_fail {
            self.code[j].off = (fail - j - 1) as i16;
        }
        self.push(mov_imm(R0, ret));
        self.push(exit());
        self.code
    }
}

/// `return bpf_redirect(ifindex, 0)`.
pub fn redirect_prog(ifindex: u32) -> Vec<Insn> {
    vec![
        mov_imm(R1, ifindex as i32),
        mov_imm(R2, 0),
        call(HELPER_REDIRECT),
        exit(),
    ]
}

/// Value size of the harness's template map: frames up to this long.
pub const TEMPLATE_BYTES: u32 = 128;

/// The harness: `i = counter++ & mask; bpf_xdp_adjust_head(ctx, (data_end - data) - len);
/// copy templates[i][..len] over the packet; tail_call(progs, 0)`. Returns `XDP_ABORTED` (0)
/// if anything fails (a missing template, a shorter packet, a failed head adjustment, an
/// empty program slot), so a run whose last return value is the tested program's expected
/// action went through the tail call.
///
/// The kernel's `repeat` loop runs every repetition on the same `xdp_buff`: what the previous
/// repetition did to its head stays (an encapsulation moved `data` back by its overhead), and
/// repetition after repetition the headroom would run out (`bpf_xdp_adjust_head` failing: the
/// DSR cases' `XDP_DROP`). The tested programs move only the head, never the tail, so moving
/// the head back to `len` bytes before `data_end` restores the frame's original start. The
/// adjustment is made every time (by 0 for programs that do not move the head), so the floor
/// pays for it too.
pub fn harness_prog(
    counter: BorrowedFd<'_>,
    templates: BorrowedFd<'_>,
    progs: BorrowedFd<'_>,
    len: u32,
    mask: u32,
) -> Vec<Insn> {
    assert!((14..=TEMPLATE_BYTES).contains(&len));
    let mut a = Asm::default();
    a.push(mov_reg(R6, R1));
    // r0 = &counter[0]
    a.push(st_imm(W, R10, -4, 0));
    a.push(mov_reg(R2, R10));
    a.push(add_imm(R2, -4));
    a.push2(ld_map(R1, counter));
    a.push(call(HELPER_MAP_LOOKUP));
    a.jeq_imm_fail(R0, 0);
    // r7 = counter++ & mask
    a.push(ldx(DW, R7, R0, 0));
    a.push(mov_reg(R8, R7));
    a.push(add_imm(R8, 1));
    a.push(stx(DW, R0, R8, 0));
    a.push(and_imm(R7, mask as i32));
    // The frame back to its original start: bpf_xdp_adjust_head(ctx, (data_end - data) - len).
    a.push(ldx(W, R2, R6, 0));
    a.push(ldx(W, R3, R6, 4));
    a.push(sub_reg(R3, R2));
    a.push(add_imm(R3, -(len as i32)));
    a.push(mov_reg(R2, R3));
    a.push(mov_reg(R1, R6));
    a.push(call(HELPER_XDP_ADJUST_HEAD));
    a.jne_imm_fail(R0, 0);
    // r0 = &templates[r7]
    a.push(stx(W, R10, R7, -8));
    a.push(mov_reg(R2, R10));
    a.push(add_imm(R2, -8));
    a.push2(ld_map(R1, templates));
    a.push(call(HELPER_MAP_LOOKUP));
    a.jeq_imm_fail(R0, 0);
    // r2 = data, r3 = data_end; the packet must hold len bytes.
    a.push(ldx(W, R2, R6, 0));
    a.push(ldx(W, R3, R6, 4));
    a.push(mov_reg(R4, R2));
    a.push(add_imm(R4, len as i32));
    a.jgt_reg_fail(R4, R3);
    // Copy: 8 bytes at a time, then the rest byte by byte.
    let mut off = 0i16;
    while off as u32 + 8 <= len {
        a.push(ldx(DW, R5, R0, off));
        a.push(stx(DW, R2, R5, off));
        off += 8;
    }
    while (off as u32) < len {
        a.push(ldx(B, R5, R0, off));
        a.push(stx(B, R2, R5, off));
        off += 1;
    }
    // tail_call(ctx, progs, 0)
    a.push(mov_reg(R1, R6));
    a.push2(ld_map(R2, progs));
    a.push(mov_imm(R3, 0));
    a.push(call(HELPER_TAIL_CALL));
    // Only reached if the tail call failed.
    a.push(insn(JMP | JA, 0, 0, 0, 0));
    a.finish(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_instructions() {
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        let p = redirect_prog(7);
        assert_eq!(
            p[0],
            Insn {
                code: 0xb7,
                regs: 0x01,
                off: 0,
                imm: 7
            }
        );
        assert_eq!(
            p[2],
            Insn {
                code: 0x85,
                regs: 0,
                off: 0,
                imm: 23
            }
        );
        assert_eq!(p[3].code, 0x95);
        assert_eq!(
            ldx(DW, R7, R0, 8),
            Insn {
                code: 0x79,
                regs: 0x07,
                off: 8,
                imm: 0
            }
        );
        assert_eq!(
            stx(B, R2, R5, 3),
            Insn {
                code: 0x73,
                regs: 0x52,
                off: 3,
                imm: 0
            }
        );
        assert_eq!(st_imm(W, R10, -4, 0).code, 0x62);
    }

    #[test]
    fn harness_jumps_land_on_fail() {
        // Map fds are not used for anything but encoding here.
        let f = unsafe { BorrowedFd::borrow_raw(0) };
        let p = harness_prog(f, f, f, 72, 0xffff);
        let fail = p.len() - 2;
        assert_eq!(p[fail], mov_imm(R0, 0));
        for (i, ins) in p.iter().enumerate() {
            if ins.code & 0x07 == JMP && ins.code & 0xf0 != CALL && ins.code & 0xf0 != EXIT {
                assert_eq!(i as i64 + 1 + ins.off as i64, fail as i64, "jump at {i}");
            }
        }
        // 72 bytes: 9 double-word copies.
        assert_eq!(
            p.iter()
                .filter(|i| i.code == (LDX | MEM | DW) && i.regs == 0x05)
                .count(),
            9
        );
    }
}
