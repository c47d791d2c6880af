//! The flow hash: a seeded murmur3-style mix over the 5-tuple's 32-bit words.
//!
//! The same function runs in the XDP program (to pick a Maglev slot) and in userspace (so
//! tests can predict the backend a flow lands on).

#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn word(b: &[u8; 16], i: usize) -> u32 {
    u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Hash of a client flow (source address and port, destination address and port, protocol).
#[inline(always)]
pub fn flow_hash(
    src: &[u8; 16],
    dst: &[u8; 16],
    sport: [u8; 2],
    dport: [u8; 2],
    proto: u8,
    seed: u32,
) -> u32 {
    let mut h = seed;
    h = mix(h, word(src, 0));
    h = mix(h, word(src, 4));
    h = mix(h, word(src, 8));
    h = mix(h, word(src, 12));
    h = mix(h, word(dst, 0));
    h = mix(h, word(dst, 4));
    h = mix(h, word(dst, 8));
    h = mix(h, word(dst, 12));
    h = mix(
        h,
        u32::from_ne_bytes([sport[0], sport[1], dport[0], dport[1]]),
    );
    h = mix(h, proto as u32);
    // fmix32
    h ^= 40;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}
