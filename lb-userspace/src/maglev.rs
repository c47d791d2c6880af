//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016, section 3.4 and Algorithm 1), extended with weights.
//!
//! Every backend has a permutation of the table slots, `permutation[j] = (offset + j * skip) mod M`
//! with `offset = h1(key) mod M` and `skip = h2(key) mod (M - 1) + 1`. The table is filled in
//! rounds: in each round every backend takes the next slot of its permutation that is still
//! free. With weights, a backend earns `weight` credit per round and takes one slot for every
//! `max_weight` of credit, so the backend(s) with the largest weight take one slot per round
//! (exactly the paper's algorithm when all weights are equal) and the others proportionally
//! fewer.
//!
//! The hashes are computed here (FNV-1a 64 with a murmur3 finalizer, two seeds) so that a
//! backend's permutation depends only on its key bytes: the same on every run, machine and
//! Rust version.

use lb_common::NO_BACKEND;

/// A backend as Maglev sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaglevBackend<'a> {
    /// Stable identity bytes (e.g. address and port). Must not change across restarts, or the
    /// backend's slots (and its flows) move.
    pub key: &'a [u8],
    /// Relative share of the table; 0 places no entry.
    pub weight: u32,
}

/// Seed of `h1` (the offset).
const SEED_OFFSET: u64 = 0x6d61_676c_6576_6f66; // "maglevof"
/// Seed of `h2` (the skip).
const SEED_SKIP: u64 = 0x6d61_676c_6576_736b; // "maglevsk"

/// FNV-1a 64 over `key`, started from the offset basis xored with `seed`, then murmur3's
/// `fmix64` so that every input bit reaches every output bit.
fn hash64(key: &[u8], seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= key.len() as u64;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// `h2 mod (M - 1) + 1`. For a prime `m` (what the table should be) that is the paper's skip;
/// for any other `m` the skip is bumped to the next value coprime with `m`, so that every
/// permutation still visits every slot and the fill always terminates.
fn skip_for(h2: u64, m: u32) -> u32 {
    if m <= 2 {
        return 1;
    }
    let mut skip = (h2 % u64::from(m - 1)) as u32 + 1;
    while gcd(skip, m) != 1 {
        skip = skip % (m - 1) + 1;
    }
    skip
}

/// Builds a lookup table of `m` entries (`m` should be prime, see [`is_prime`]). Each entry is
/// an index into `backends`; all entries are [`NO_BACKEND`] if there is no backend with a
/// non-zero weight (or `m` is 0).
pub fn build(backends: &[MaglevBackend<'_>], m: u32) -> Vec<u32> {
    let size = m as usize;
    let mut table = vec![NO_BACKEND; size];
    let max_weight = u64::from(backends.iter().map(|b| b.weight).max().unwrap_or(0));
    if size == 0 || max_weight == 0 {
        return table;
    }

    struct Cursor {
        index: u32,
        weight: u64,
        credit: u64,
        /// `permutation[next]`: the next slot this backend will try.
        pos: u32,
        skip: u32,
    }
    let mut cursors: Vec<Cursor> = backends
        .iter()
        .enumerate()
        .filter(|(_, b)| b.weight > 0)
        .map(|(i, b)| Cursor {
            index: i as u32,
            weight: u64::from(b.weight),
            credit: 0,
            pos: (hash64(b.key, SEED_OFFSET) % u64::from(m)) as u32,
            skip: skip_for(hash64(b.key, SEED_SKIP), m),
        })
        .collect();

    // (pos + skip) mod m without overflow, given pos < m and skip <= m.
    let advance = |pos: u32, skip: u32| -> u32 {
        let room = m - skip;
        if pos >= room {
            pos - room
        } else {
            pos + skip
        }
    };

    let mut filled = 0usize;
    loop {
        for c in cursors.iter_mut() {
            c.credit += c.weight;
            while c.credit >= max_weight {
                c.credit -= max_weight;
                while table[c.pos as usize] != NO_BACKEND {
                    c.pos = advance(c.pos, c.skip);
                }
                table[c.pos as usize] = c.index;
                c.pos = advance(c.pos, c.skip);
                filled += 1;
                if filled == size {
                    return table;
                }
            }
        }
    }
}

/// Whether `n` is a prime number (trial division; at most ~11000 divisions for any `u32`).
pub fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let n = u64::from(n);
    let mut d: u64 = 5;
    while d * d <= n {
        if n.is_multiple_of(d) || n.is_multiple_of(d + 2) {
            return false;
        }
        d += 6;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u32 = 65537;

    fn keys(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                let mut k = vec![198, 18, 2, (i % 250) as u8 + 1];
                k.extend_from_slice(&((8080 + i / 250) as u16).to_be_bytes());
                k
            })
            .collect()
    }

    fn backends<'a>(keys: &'a [Vec<u8>], weights: &[u32]) -> Vec<MaglevBackend<'a>> {
        keys.iter()
            .zip(weights)
            .map(|(k, &weight)| MaglevBackend { key: k, weight })
            .collect()
    }

    fn counts(table: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &e in table {
            c[e as usize] += 1;
        }
        c
    }

    /// The paper's Algorithm 1, with the permutation matrix materialised.
    fn reference(backends: &[MaglevBackend<'_>], m: u32) -> Vec<u32> {
        let m = m as usize;
        let perm: Vec<Vec<usize>> = backends
            .iter()
            .map(|b| {
                let offset = (hash64(b.key, SEED_OFFSET) % m as u64) as usize;
                let skip = (hash64(b.key, SEED_SKIP) % (m as u64 - 1)) as usize + 1;
                (0..m).map(|j| (offset + j * skip) % m).collect()
            })
            .collect();
        let mut next = vec![0usize; backends.len()];
        let mut entry = vec![NO_BACKEND; m];
        let mut n = 0;
        loop {
            for i in 0..backends.len() {
                let mut c = perm[i][next[i]];
                while entry[c] != NO_BACKEND {
                    next[i] += 1;
                    c = perm[i][next[i]];
                }
                entry[c] = i as u32;
                next[i] += 1;
                n += 1;
                if n == m {
                    return entry;
                }
            }
        }
    }

    #[test]
    fn matches_paper_algorithm_1() {
        for (n, m) in [(1, 7), (3, 7), (5, 13), (50, 1021), (200, 4099)] {
            let k = keys(n);
            let b = backends(&k, &vec![1; n]);
            assert_eq!(build(&b, m), reference(&b, m), "n={n} m={m}");
        }
    }

    #[test]
    fn balance_equal_weights() {
        let n = 100;
        let k = keys(n);
        let table = build(&backends(&k, &[1; 100]), M);
        assert_eq!(table.len(), M as usize);
        let fair = f64::from(M) / n as f64;
        for (i, &c) in counts(&table, n).iter().enumerate() {
            assert!(
                (c as f64 - fair).abs() <= 0.01 * fair,
                "backend {i}: {c} slots, fair share {fair:.2}"
            );
        }
    }

    #[test]
    fn disruption_removing_one_backend() {
        let n = 100;
        let k = keys(n);
        let all = backends(&k, &[1; 100]);
        let before = build(&all, M);
        for removed in [0, 37, 99] {
            let mut rest = all.clone();
            rest.remove(removed);
            let after = build(&rest, M);
            let mut others = 0usize;
            let mut moved = 0usize;
            for (&old, &new) in before.iter().zip(&after) {
                if old as usize == removed {
                    continue;
                }
                others += 1;
                if all[old as usize].key != rest[new as usize].key {
                    moved += 1;
                }
            }
            assert!(
                moved as f64 <= 0.01 * others as f64,
                "removing backend {removed} moved {moved} of {others} other slots"
            );
        }
    }

    #[test]
    fn weights_are_proportional() {
        let weights = [1, 2, 3, 4];
        let k = keys(4);
        let table = build(&backends(&k, &weights), M);
        let total: u32 = weights.iter().sum();
        for (i, &c) in counts(&table, 4).iter().enumerate() {
            let fair = f64::from(M) * f64::from(weights[i]) / f64::from(total);
            assert!(
                (c as f64 - fair).abs() <= 0.01 * fair,
                "weight {}: {c} slots, fair share {fair:.2}",
                weights[i]
            );
        }
    }

    #[test]
    fn weights_with_many_backends() {
        let n = 100;
        let k = keys(n);
        let weights: Vec<u32> = (0..n as u32).map(|i| i % 5 + 1).collect();
        let table = build(&backends(&k, &weights), M);
        let total: u32 = weights.iter().sum();
        for (i, &c) in counts(&table, n).iter().enumerate() {
            let fair = f64::from(M) * f64::from(weights[i]) / f64::from(total);
            assert!(
                (c as f64 - fair).abs() <= 0.01 * fair + 1.0,
                "{i}: {c} vs {fair:.2}"
            );
        }
    }

    #[test]
    fn zero_weight_gets_no_slots() {
        let k = keys(3);
        let table = build(&backends(&k, &[1, 0, 1]), 1021);
        assert!(table.iter().all(|&e| e == 0 || e == 2));
        let c = counts(&table, 3);
        assert_eq!(c[1], 0);
        assert!(c[0].abs_diff(c[2]) <= 1);
    }

    #[test]
    fn deterministic() {
        let k = keys(10);
        let b = backends(&k, &[1, 2, 3, 1, 1, 1, 5, 1, 1, 1]);
        assert_eq!(build(&b, M), build(&b, M));
        // Pinned: tables must not change across versions or machines, or flows would move
        // when the daemon restarts.
        assert_eq!(hash64(b"", 0), 0xefd0_1f60_ba99_2926);
        let k = keys(3);
        assert_eq!(
            build(&backends(&k, &[1, 1, 1]), 13),
            [1, 1, 1, 1, 0, 0, 2, 2, 0, 2, 0, 0, 2]
        );
    }

    #[test]
    fn empty_and_zero_weights() {
        assert!(build(&[], M).iter().all(|&e| e == NO_BACKEND));
        assert_eq!(build(&[], M).len(), M as usize);
        let k = keys(2);
        assert!(build(&backends(&k, &[0, 0]), 1021)
            .iter()
            .all(|&e| e == NO_BACKEND));
        assert!(build(&backends(&k, &[1, 1]), 0).is_empty());
    }

    #[test]
    fn single_backend() {
        let k = keys(1);
        let table = build(&backends(&k, &[7]), M);
        assert_eq!(table.len(), M as usize);
        assert!(table.iter().all(|&e| e == 0));
    }

    #[test]
    fn non_prime_size_still_fills() {
        let k = keys(7);
        for m in [1, 2, 4, 1000, 65536] {
            let table = build(&backends(&k, &[1; 7]), m);
            assert!(table.iter().all(|&e| e < 7), "m={m}");
        }
    }

    #[test]
    fn thousand_backends() {
        let n = 1000;
        let k = keys(n);
        let table = build(&backends(&k, &vec![1; n]), M);
        let c = counts(&table, n);
        assert!(c.iter().all(|&c| c == 65 || c == 66));
    }

    #[test]
    fn primes() {
        let small: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(small, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        for p in [1021, 65537, 4_000_037, 4_294_967_291] {
            assert!(is_prime(p), "{p}");
        }
        for c in [
            1,
            1024,
            65536,
            65535,
            4_000_000,
            25,
            49,
            4_294_967_295,
            65521 * 65521,
        ] {
            assert!(!is_prime(c), "{c}");
        }
    }
}
