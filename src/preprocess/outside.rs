//! The keys of a window outside its [`Core`]: the groups that the clipping reads, placed
//! first. Listing their positions is a pass over every key of the window, so it runs a
//! vector of keys at a time, without a branch per key.

use super::{GROUP_SHIFT, from_key, overwritable, sort_key, top_digit};

/// The groups that a window's clipping most likely does not read, by the counts alone:
/// those wholly between the 0.5% quantile and as far above the median, less those within
/// 1% of the ranks of the median. In a radio image of noise and sources, the rounds' bounds
/// lie near 3 clipped std from the median, below the 0.5% quantile (2.6 std in Gaussian
/// noise; sources lie above), and the medians move by less than half the clipped tails. It
/// decides only what is placed at first: a read of a core group places them all. On the 157
/// MiraBest test cutouts, 10% of a window's keys lie outside its core (median; 14% at the
/// 90th percentile, 17% at most), and 7 windows read a core group (each a lower bound in
/// the core's first group: a noise narrower than the low tail says; a core one group
/// smaller there did not spare them, and left twice as many keys outside).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Core {
    /// Two ranges of groups, each as (first, how many).
    ranges: [(u32, u32); 2],
}

impl Core {
    /// Fewer keys than this place all their groups (the core saves too little).
    const MIN_KEYS: usize = 4096;

    /// The core of a window of `n` keys, from the group of each rank.
    pub(super) fn of(group_of: impl Fn(usize) -> usize, n: usize) -> Core {
        if n < Core::MIN_KEYS {
            return Core::default();
        }
        let low = group_of(n / 200) + 1;
        let margin = n / 100;
        let (m0, m1) = (group_of(n / 2 - margin), group_of(n / 2 + margin));
        // The groups below the one where the median's group's least value lies as far
        // above as `low`'s least value lies below it (the median is no lower).
        let least = |d: usize| f64::from(from_key((d as u32) << GROUP_SHIFT));
        let (v_low, v_mid) = (least(low), least(group_of(n / 2)));
        let v_high = (2.0 * v_mid - v_low) as f32 + 0.0;
        if !v_low.is_finite() || !v_high.is_finite() {
            return Core::default();
        }
        let high = top_digit(sort_key(v_high));
        Core::new((low, m0), (m1 + 1, high))
    }

    /// The groups `a.0..a.1` and `b.0..b.1` (an empty range when its end is not above its
    /// start).
    fn new(a: (usize, usize), b: (usize, usize)) -> Core {
        let range = |(start, end): (usize, usize)| (start as u32, end.saturating_sub(start) as u32);
        Core {
            ranges: [range(a), range(b)],
        }
    }

    pub(super) fn is_empty(self) -> bool {
        self.ranges.iter().all(|&(_, len)| len == 0)
    }

    /// Whether group `d` is in the core.
    pub(super) fn holds(self, d: usize) -> bool {
        let d = d as u32;
        let [(a, n), (b, m)] = self.ranges;
        (d.wrapping_sub(a) < n) | (d.wrapping_sub(b) < m)
    }
}

/// The positions of the `keys` whose group is outside `core`, in order, written to `buf`.
pub(super) fn list<'b>(keys: &[u32], core: Core, buf: &'b mut Vec<u32>) -> &'b [u32] {
    // Room for a whole vector of positions past the last key's.
    let list = overwritable(buf, keys.len() + 8);
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    // SAFETY: the build enables AVX2 (`target_feature = "avx2"`), all that the function
    // needs.
    let (whole, m) = unsafe { avx2::list(keys, core, list) };
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
    let (whole, m) = (0, 0);
    let m = portable(keys, whole, core, list, m);
    &list[..m]
}

/// The positions of [`list`] from the key at `from` on, one key at a time (each written,
/// then kept when outside: no branch), after the list's first `m`; returns the new count.
fn portable(keys: &[u32], from: usize, core: Core, list: &mut [u32], mut m: usize) -> usize {
    for (i, &k) in keys.iter().enumerate().skip(from) {
        list[m] = i as u32;
        m += usize::from(!core.holds(top_digit(k)));
    }
    m
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
mod avx2 {
    use std::arch::x86_64::{
        __m256i, _mm_cvtsi64_si128, _mm256_add_epi32, _mm256_castsi256_ps, _mm256_cmpgt_epi32,
        _mm256_cvtepu8_epi32, _mm256_loadu_si256, _mm256_movemask_ps, _mm256_or_si256,
        _mm256_set1_epi32, _mm256_srli_epi32, _mm256_storeu_si256, _mm256_sub_epi32,
        _mm256_xor_si256,
    };

    use super::{Core, GROUP_SHIFT};

    /// For each byte, the positions of its set bits, lowest first, a byte each (the rest 0).
    const SET_POSITIONS: [u64; 256] = {
        let mut table = [0u64; 256];
        let mut mask = 0;
        while mask < 256 {
            let (mut packed, mut count, mut bit) = (0u64, 0, 0);
            while bit < 8 {
                if mask >> bit & 1 == 1 {
                    packed |= (bit as u64) << (8 * count);
                    count += 1;
                }
                bit += 1;
            }
            table[mask] = packed;
            mask += 1;
        }
        table
    };

    /// [`super::list`] over the whole vectors of eight keys, into `list` (at least 8
    /// longer than `keys`): each key's group tested against both ranges at once, the
    /// outcomes as a mask of eight bits, the positions of the bits outside from a table,
    /// widened to 32 bits and stored, eight at a time (the list advances by their count).
    /// Returns how many keys it covered and listed.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn list(keys: &[u32], core: Core, list: &mut [u32]) -> (usize, usize) {
        const LANES: usize = 8;
        let mut m = 0;
        let chunks = keys.chunks_exact(LANES);
        let whole = keys.len() - chunks.remainder().len();
        // SAFETY: every load reads one whole chunk of eight keys, every store writes
        // `list[m..m + 8]` (bounds-checked as a slice first); the rest is arithmetic.
        unsafe {
            // Unsigned `d - start < len` as a signed comparison: both sides offset by 2^31.
            let bias = _mm256_set1_epi32(i32::MIN);
            let range = |(start, len): (u32, u32)| {
                (
                    _mm256_set1_epi32(start as i32),
                    _mm256_set1_epi32((len ^ 0x8000_0000) as i32),
                )
            };
            let [(a, n), (b, l)] = core.ranges.map(range);
            for (c, chunk) in chunks.enumerate() {
                let k = _mm256_loadu_si256(chunk.as_ptr().cast::<__m256i>());
                let d = _mm256_srli_epi32::<{ GROUP_SHIFT as i32 }>(k);
                let in_a = _mm256_cmpgt_epi32(n, _mm256_xor_si256(_mm256_sub_epi32(d, a), bias));
                let in_b = _mm256_cmpgt_epi32(l, _mm256_xor_si256(_mm256_sub_epi32(d, b), bias));
                let inside = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_or_si256(in_a, in_b)));
                let outside = !inside & 0xff;
                let positions =
                    _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(SET_POSITIONS[outside as usize] as i64));
                let at = _mm256_add_epi32(positions, _mm256_set1_epi32((c * LANES) as i32));
                let slots = &mut list[m..m + LANES];
                _mm256_storeu_si256(slots.as_mut_ptr().cast::<__m256i>(), at);
                m += outside.count_ones() as usize;
            }
        }
        (whole, m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vectors_list_what_one_key_at_a_time_lists() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let cores = [
            Core::default(),
            Core::new((0, 1024), (0, 0)),
            Core::new((500, 520), (530, 600)),
            Core::new((700, 600), (3, 4)),
            Core::new((0, 1), (1023, 1024)),
        ];
        for len in [0, 1, 7, 8, 9, 64, 1001, 4096] {
            // Keys in a few groups near the cores' edges, and anywhere.
            let keys: Vec<u32> = (0..len)
                .map(|_| {
                    let r = next();
                    let group = [499, 500, 519, 520, 529, 530, 599, 600, 0, 1023][r as usize % 10];
                    if r >> 60 == 0 {
                        (r >> 20) as u32
                    } else {
                        (group << GROUP_SHIFT) as u32 | (r >> 40) as u32 & 0x3f_ffff
                    }
                })
                .collect();
            for core in cores {
                let expected: Vec<u32> = (0..len as u32)
                    .filter(|&i| !core.holds(top_digit(keys[i as usize])))
                    .collect();
                let mut buf = vec![u32::MAX; 3];
                assert_eq!(
                    list(&keys, core, &mut buf),
                    expected,
                    "{len} keys, {core:?}"
                );
                let mut one_by_one = vec![u32::MAX; len];
                let m = portable(&keys, 0, core, &mut one_by_one, 0);
                assert_eq!(one_by_one[..m], expected, "{len} keys, {core:?}");
            }
        }
    }
}
