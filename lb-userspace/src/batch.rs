//! The batch map calls, which aya 0.14 does not wrap: `BPF_MAP_LOOKUP_BATCH` (read a map a
//! few thousand entries per system call) and `BPF_MAP_DELETE_BATCH` (delete a list of keys in
//! one call). Both go through `libc::syscall(SYS_bpf, ...)` with the `batch` member of
//! `union bpf_attr` laid out here (the kernel's uapi `linux/bpf.h`); they work on any map
//! file descriptor aya hands out (`MapData::fd()`).
//!
//! Hash maps (and LRU hash maps) return their entries bucket by bucket; a map changed while it
//! is read may show an entry twice or miss one, as `bpf_map_get_next_key` iteration does.
use std::{
    io,
    mem::{size_of, MaybeUninit},
    ops::ControlFlow,
    os::fd::{AsRawFd, BorrowedFd},
};

use aya::Pod;

/// `enum bpf_cmd` values (uapi `linux/bpf.h`).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    /// Start of this call: a pointer to the previous call's `out_batch`; 0 for the first.
    in_batch: u64,
    /// Where the kernel writes where the next call starts.
    out_batch: u64,
    keys: u64,
    values: u64,
    /// In: room in `keys` / `values` (entries); out: entries processed.
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}
const _: () = assert!(size_of::<BatchAttr>() == 56);

/// The batch token: a bucket index for hash maps, a key for arrays (at most 8 bytes for the
/// maps xlb reads; room for more).
type Token = [u64; 8];

fn sys_bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid `bpf_attr.batch` whose pointers (set by the callers) point at
    // buffers of `count` keys and values of the map's sizes, alive for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            size_of::<BatchAttr>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A buffer of `n` values of a `Pod` type, zeroed.
fn zeroed<T: Pod>(n: usize) -> Vec<T> {
    (0..n)
        // SAFETY: all-zero bytes are a valid value of a `Pod` type (plain integers and arrays).
        .map(|_| unsafe { MaybeUninit::<T>::zeroed().assume_init() })
        .collect()
}

/// Read every entry of the map `fd` (keys `K`, values `V` of the map's own sizes), `chunk`
/// entries per system call, handing each chunk to `f`; `f` may stop the walk early with
/// `ControlFlow::Break`. Answers the number of entries read.
///
/// A hash bucket larger than `chunk` (the kernel's `ENOSPC`) makes the buffers grow.
pub fn lookup_batch<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    chunk: usize,
    mut f: impl FnMut(&[K], &[V]) -> ControlFlow<()>,
) -> io::Result<u64> {
    let mut chunk = chunk.clamp(1, 1 << 20);
    let mut keys: Vec<K> = zeroed(chunk);
    let mut values: Vec<V> = zeroed(chunk);
    let mut token_in: Token = [0; 8];
    let mut token_out: Token = [0; 8];
    let mut first = true;
    let mut total = 0u64;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                token_in.as_mut_ptr() as u64
            },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        let r = sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let n = (attr.count as usize).min(chunk);
        let done = match r {
            Ok(()) => false,
            // The end of the map; `count` says how many this last call returned.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            // One bucket holds more entries than the buffers: grow them and try again.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && n == 0 && chunk < 1 << 20 => {
                chunk *= 2;
                keys = zeroed(chunk);
                values = zeroed(chunk);
                continue;
            }
            Err(e) => return Err(e),
        };
        total += n as u64;
        if n > 0 && f(&keys[..n], &values[..n]).is_break() {
            return Ok(total);
        }
        if done {
            return Ok(total);
        }
        token_in = token_out;
        first = false;
    }
}

/// Delete `keys` from the map `fd`, as many per system call as the kernel takes. A key
/// already gone (deleted or evicted meanwhile: `ENOENT`) is skipped. Answers how many were
/// deleted.
pub fn delete_batch<K: Pod>(fd: BorrowedFd<'_>, keys: &[K]) -> io::Result<u64> {
    let mut deleted = 0u64;
    let mut rest = keys;
    while !rest.is_empty() {
        let mut attr = BatchAttr {
            keys: rest.as_ptr() as u64,
            count: rest.len().min(u32::MAX as usize) as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        let r = sys_bpf(BPF_MAP_DELETE_BATCH, &mut attr);
        let n = (attr.count as usize).min(rest.len());
        deleted += n as u64;
        match r {
            Ok(()) => rest = &rest[n..],
            // The key after the `n` deleted ones is gone already: skip it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                rest = rest.get(n + 1..).unwrap_or(&[]);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

/// CPU time this thread has used in user mode and in the kernel (`getrusage(RUSAGE_THREAD)`):
/// the kernel's share of a sweep is its batch calls.
pub fn thread_user_system_time() -> (std::time::Duration, std::time::Duration) {
    // SAFETY: an all-zero `rusage` is valid and getrusage only writes it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable `rusage`.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return Default::default();
    }
    let tv = |t: libc::timeval| {
        std::time::Duration::new(t.tv_sec.max(0) as u64, (t.tv_usec.max(0) as u32) * 1000)
    };
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

/// CPU time this thread has used (user and system), for the sweep's cost.
pub fn thread_cpu_time() -> std::time::Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| std::time::Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
        .unwrap_or_default()
}
