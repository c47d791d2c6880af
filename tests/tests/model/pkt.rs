//! Byte-level helpers shared by the reference model, the generator and the checks: a small
//! header walker (enough to find every checksum of a frame), full checksum computation
//! (ones' complement, RFC 1071) and incremental updates (RFC 1624).
#![allow(dead_code)]

pub fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}
pub fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_be_bytes());
}

/// Ones' complement sum of `data` (16-bit big-endian words, odd byte padded), not folded
/// to 16 bits yet.
pub fn sum(data: &[u8]) -> u32 {
    let mut s: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        s = s.wrapping_add(u16::from_be_bytes([c[0], c[1]]) as u32);
        s = (s & 0xffff) + (s >> 16);
    }
    if let [last] = chunks.remainder() {
        s = s.wrapping_add((*last as u32) << 8);
    }
    s
}

pub fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Full checksum (the value to store) of `parts` concatenated (each part even length except
/// the last).
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut s = 0u32;
    for p in parts {
        s += sum(p);
        s = (s & 0xffff) + (s >> 16);
    }
    !fold(s)
}

/// RFC 1624 eqn. 3: HC' = ~(~HC + Σ(~m + m')). Never yields 0xffff from a non-zero sum.
pub fn incremental(old: u16, diffs: &[(u16, u16)]) -> u16 {
    let mut s = (!old) as u32;
    for &(m, m2) in diffs {
        s += (!m) as u32 + m2 as u32;
    }
    !fold(s)
}

/// The 16-bit word changes between `old` and `new` in `[base, end)` (words aligned at
/// `base`), skipping the checksum field at `skip`.
pub fn word_diffs(old: &[u8], new: &[u8], base: usize, end: usize, skip: usize) -> Vec<(u16, u16)> {
    let mut d = Vec::new();
    let mut i = base;
    while i < end {
        if i != skip {
            let w = |b: &[u8]| {
                let hi = b[i];
                let lo = if i + 1 < end { b[i + 1] } else { 0 };
                u16::from_be_bytes([hi, lo])
            };
            let (a, b) = (w(old), w(new));
            if a != b {
                d.push((a, b));
            }
        }
        i += 2;
    }
    d
}

/// Diffs of two equal-length byte strings (e.g. pseudo-header addresses).
pub fn diffs_of(old: &[u8], new: &[u8]) -> Vec<(u16, u16)> {
    word_diffs(old, new, 0, old.len(), usize::MAX)
}

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

/// Where the checksummed headers of a frame are, as far as they are inside it.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub ip: usize,
    pub v6: bool,
    pub ip_end: usize,
    pub l4: usize,
    pub proto: u8,
    /// A fragment (first or later): the L4 checksum covers bytes that are not here.
    pub fragment: bool,
    pub later_fragment: bool,
}

/// Find the IP and L4 headers (up to two VLAN tags, IPv6 extension headers). None when the
/// frame is not a well-formed IP packet.
pub fn layout(f: &[u8]) -> Option<Layout> {
    let mut off = 12;
    let mut et = be16_opt(f, off)?;
    let mut tags = 0;
    while (et == ETH_P_8021Q || et == ETH_P_8021AD) && tags < 2 {
        off += 4;
        et = be16_opt(f, off)?;
        tags += 1;
    }
    let ip = off + 2;
    match et {
        ETH_P_IP => {
            if f.len() < ip + 20 || f[ip] >> 4 != 4 {
                return None;
            }
            let ihl = (f[ip] & 15) as usize * 4;
            let tot = be16(f, ip + 2) as usize;
            if ihl < 20 || tot < ihl || ip + tot > f.len() {
                return None;
            }
            let fo = be16(f, ip + 6);
            Some(Layout {
                ip,
                v6: false,
                ip_end: ip + tot,
                l4: ip + ihl,
                proto: f[ip + 9],
                fragment: fo & 0x3fff != 0,
                later_fragment: fo & 0x1fff != 0,
            })
        }
        ETH_P_IPV6 => {
            if f.len() < ip + 40 || f[ip] >> 4 != 6 {
                return None;
            }
            let end = ip + 40 + be16(f, ip + 4) as usize;
            if end > f.len() {
                return None;
            }
            let mut nh = f[ip + 6];
            let mut l4 = ip + 40;
            let mut fragment = false;
            let mut later = false;
            for _ in 0..16 {
                match nh {
                    0 | 43 | 60 => {
                        if l4 + 8 > end {
                            return None;
                        }
                        nh = f[l4];
                        l4 += (f[l4 + 1] as usize + 1) * 8;
                    }
                    44 => {
                        if l4 + 8 > end {
                            return None;
                        }
                        let fo = be16(f, l4 + 2);
                        nh = f[l4];
                        l4 += 8;
                        if fo & 0xfff9 != 0 {
                            fragment = true;
                        }
                        if fo & 0xfff8 != 0 {
                            later = true;
                            break;
                        }
                    }
                    _ => break,
                }
            }
            if l4 > end {
                return None;
            }
            Some(Layout {
                ip,
                v6: true,
                ip_end: end,
                l4,
                proto: nh,
                fragment,
                later_fragment: later,
            })
        }
        _ => None,
    }
}

fn be16_opt(f: &[u8], off: usize) -> Option<u16> {
    (f.len() >= off + 2).then(|| be16(f, off))
}

fn pseudo(f: &[u8], l: &Layout, len: usize, proto: u8) -> Vec<u8> {
    let mut p = Vec::with_capacity(40);
    if l.v6 {
        p.extend_from_slice(&f[l.ip + 8..l.ip + 40]);
        p.extend_from_slice(&(len as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, proto]);
    } else {
        p.extend_from_slice(&f[l.ip + 12..l.ip + 20]);
        p.extend_from_slice(&[0, proto]);
        p.extend_from_slice(&(len as u16).to_be_bytes());
    }
    p
}

/// Where the L4 checksum of a complete (unfragmented) packet is, if it has one here.
fn l4_csum_off(l: &Layout) -> Option<(usize, usize)> {
    if l.fragment {
        return None;
    }
    let len = l.ip_end.checked_sub(l.l4)?;
    match (l.proto, l.v6) {
        (6, _) if len >= 20 => Some((l.l4 + 16, 20)),
        (17, _) if len >= 8 => Some((l.l4 + 6, 8)),
        (1, false) if len >= 8 => Some((l.l4 + 2, 8)),
        (58, true) if len >= 8 => Some((l.l4 + 2, 8)),
        _ => None,
    }
}

/// Recompute every checksum of the frame in place (IPv4 header, TCP/UDP/ICMP/ICMPv6 of
/// unfragmented packets, and the quoted IPv4 header inside an ICMP error). Used by the
/// generator after it builds or mutates a frame. A UDP checksum of 0 is left at 0.
pub fn fix_checksums(f: &mut [u8]) {
    let Some(l) = layout(f) else { return };
    if !l.v6 {
        let ihl = (f[l.ip] & 15) as usize * 4;
        put16(f, l.ip + 10, 0);
        let c = checksum(&[&f[l.ip..l.ip + ihl]]);
        put16(f, l.ip + 10, c);
    }
    if l.proto == 1 && !l.v6 && !l.fragment {
        fix_quoted_v4(f, l.l4, l.ip_end);
    }
    let Some((off, _)) = l4_csum_off(&l) else {
        return;
    };
    if l.proto == 17 && be16(f, off) == 0 {
        return;
    }
    put16(f, off, 0);
    let c = l4_checksum(f, &l);
    let c = if l.proto == 17 && c == 0 { 0xffff } else { c };
    put16(f, off, c);
}

fn fix_quoted_v4(f: &mut [u8], icmp: usize, end: usize) {
    let q = icmp + 8;
    if end < q + 20 || f[q] >> 4 != 4 {
        return;
    }
    let ihl = (f[q] & 15) as usize * 4;
    if ihl < 20 || q + ihl > end {
        return;
    }
    put16(f, q + 10, 0);
    let c = checksum(&[&f[q..q + ihl]]);
    put16(f, q + 10, c);
}

fn l4_checksum(f: &[u8], l: &Layout) -> u16 {
    let len = l.ip_end - l.l4;
    if l.proto == 1 {
        return checksum(&[&f[l.l4..l.ip_end]]);
    }
    let ps = pseudo(f, l, len, l.proto);
    checksum(&[&ps, &f[l.l4..l.ip_end]])
}

/// Check every checksum `fix_checksums` would write; Err names the first wrong one.
pub fn verify_checksums(f: &[u8]) -> Result<(), String> {
    let Some(l) = layout(f) else {
        return Err("the frame does not parse as IP".into());
    };
    if !l.v6 {
        let ihl = (f[l.ip] & 15) as usize * 4;
        if checksum(&[&f[l.ip..l.ip + ihl]]) != 0 {
            return Err(format!("IPv4 header checksum {:04x}", be16(f, l.ip + 10)));
        }
    }
    if l.proto == 1 && !l.v6 && !l.fragment {
        let q = l.l4 + 8;
        if l.ip_end >= q + 20 && f[q] >> 4 == 4 {
            let ihl = (f[q] & 15) as usize * 4;
            if ihl >= 20 && q + ihl <= l.ip_end && checksum(&[&f[q..q + ihl]]) != 0 {
                return Err("quoted IPv4 header checksum".into());
            }
        }
    }
    if let Some((off, _)) = l4_csum_off(&l) {
        if l.proto == 17 && be16(f, off) == 0 {
            if l.v6 {
                return Err("IPv6 UDP checksum 0".into());
            }
            return Ok(());
        }
        let len = l.ip_end - l.l4;
        let ok = if l.proto == 1 {
            checksum(&[&f[l.l4..l.ip_end]]) == 0
        } else {
            let ps = pseudo(f, &l, len, l.proto);
            checksum(&[&ps, &f[l.l4..l.ip_end]]) == 0
        };
        if !ok {
            let name = match l.proto {
                6 => "TCP",
                17 => "UDP",
                1 => "ICMP",
                _ => "ICMPv6",
            };
            return Err(format!("{name} checksum {:04x}", be16(f, off)));
        }
    }
    Ok(())
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
