//! Incremental Internet checksum updates (RFC 1624: HC' = ~(~HC + ~m + m')).
//!
//! Checksums are handled as the 16-bit big-endian value found in the header.

#[inline(always)]
fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Sum of a byte string's big-endian 16-bit words (even length).
#[inline(always)]
fn sum16<const N: usize>(b: &[u8; N]) -> u32 {
    let mut s = 0u32;
    let mut i = 0;
    while i + 1 < N {
        s += u16::from_be_bytes([b[i], b[i + 1]]) as u32;
        i += 2;
    }
    s
}

/// Fold a 32-bit sum of 16-bit words and complement it: the checksum field's value.
#[inline(always)]
pub fn finish(sum: u32) -> u16 {
    !fold(sum)
}

/// Add a byte string's big-endian 16-bit words (even length) to `sum`.
#[inline(always)]
pub fn add<const N: usize>(sum: u32, b: &[u8; N]) -> u32 {
    fold(sum + sum16(b)) as u32
}

/// Update checksum `check` for `old` bytes replaced by `new` bytes.
#[inline(always)]
pub fn replace<const N: usize>(check: u16, old: &[u8; N], new: &[u8; N]) -> u16 {
    // ~HC + ~m + m', where ~m is summed as 0xffff - word.
    let mut s = (!check) as u32;
    let mut i = 0;
    while i + 1 < N {
        s += 0xffff - u16::from_be_bytes([old[i], old[i + 1]]) as u32;
        s += u16::from_be_bytes([new[i], new[i + 1]]) as u32;
        i += 2;
    }
    // Fold after every few additions is not needed: N <= 16 keeps the sum far below 2^32.
    !fold(s)
}

/// Same as [`replace`] for two fields at once (address and port), folded once.
#[inline(always)]
pub fn replace2<const N: usize>(
    check: u16,
    old_a: &[u8; N],
    new_a: &[u8; N],
    old_p: [u8; 2],
    new_p: [u8; 2],
) -> u16 {
    let s = (!check) as u32 + (0xffff * (N as u32 / 2)) - sum16(old_a) + sum16(new_a) + 0xffff
        - u16::from_be_bytes(old_p) as u32
        + u16::from_be_bytes(new_p) as u32;
    !fold(s)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    fn full(data: &[u8]) -> u16 {
        let mut s = 0u32;
        for c in data.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                (c[0] as u16) << 8
            };
            s += w as u32;
        }
        !fold(s)
    }

    #[test]
    fn incremental_matches_full() {
        let mut hdr = [
            0x45u8, 0, 0, 60, 0x1c, 0x46, 0x40, 0, 0x40, 6, 0, 0, 198, 18, 1, 2, 198, 18, 100, 1,
        ];
        let c = full(&hdr);
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(full(&hdr), 0);
        let old = [198, 18, 100, 1];
        let new = [198, 18, 2, 13];
        let c2 = replace(c, &old, &new);
        hdr[16..20].copy_from_slice(&new);
        hdr[10..12].copy_from_slice(&c2.to_be_bytes());
        assert_eq!(
            full(&hdr),
            0,
            "incremental IPv4 header checksum must verify"
        );
    }

    #[test]
    fn replace2_matches_two_replaces() {
        for (c, a0, a1, p0, p1) in [
            (
                0x1234u16,
                [1u8, 2, 3, 4],
                [9u8, 9, 9, 9],
                [0u8, 80],
                [0x1fu8, 0x90],
            ),
            (
                0xffff,
                [0, 0, 0, 0],
                [255, 255, 255, 255],
                [255, 255],
                [0, 0],
            ),
            (
                0x0000,
                [198, 18, 100, 1],
                [198, 18, 2, 11],
                [0, 53],
                [0x14, 0xe9],
            ),
        ] {
            let one = replace(replace(c, &a0, &a1), &p0, &p1);
            let two = replace2(c, &a0, &a1, p0, p1);
            // 0x0000 and 0xffff are the same value in one's complement.
            let norm = |x: u16| if x == 0xffff { 0 } else { x };
            assert_eq!(norm(one), norm(two));
        }
    }
}
