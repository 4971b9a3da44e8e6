//! The preprocessing stage: a cutout window to the model input, exactly as the MiraBest
//! training images were made (RECIPES, "MiraBest preprocessing"):
//!
//! 1. sigma-clipped std of the whole window, as astropy's
//!    `sigma_clipped_stats(sigma=3, maxiters=5)` in float64 (median centre, population std,
//!    keep values within centre +- 3 std, repeat until nothing changes or 5 rounds; the std
//!    of what is left), NaNs ignored;
//! 2. every pixel <= 3 std (and every NaN) set to 0;
//! 3. the central 150x150 crop (rows and columns `n/2 - 75 .. n/2 + 75`);
//! 4. min-max scaled to 0..255 in float64, converted to 8 bits the way PIL does it for the
//!    released batches (through float32, truncated, clamped);
//! 5. `(u8 / 255 - 0.5) / 0.5` in float32, as the training transforms do.
//!
//! It owns only this arithmetic: no I/O, no knowledge of where the window came from.

use std::cell::RefCell;

use ndarray::Array2;

use crate::domain::{ItemError, MODEL_PIXELS, MODEL_SIZE, Prepared};
use crate::proto::RejectReason;

/// astropy's defaults as MiraBest used them.
const CLIP_SIGMA: f64 = 3.0;
const CLIP_MAXITERS: usize = 5;
/// Pixels at or below this many clipped std are zeroed.
const THRESHOLD_SIGMA: f64 = 3.0;

thread_local! {
    /// Scratch buffers for the clipping statistics, reused so that the hot path does not
    /// allocate about 1.5 MB per call.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

#[derive(Default)]
struct Scratch {
    /// Order-preserving integer keys of the finite pixels, radix-sorted.
    keys: Vec<u32>,
    tmp: Vec<u32>,
    /// The sorted finite pixels as float64.
    sorted: Vec<f64>,
}

/// Prepares one window (normally `CUTOUT_SIZE` x `CUTOUT_SIZE`, at least `MODEL_SIZE` on
/// each side) for the model. A window with no finite pixel, or whose crop is constant after
/// thresholding (nothing above 3 std, say), is an `EmptyCutout` rejection.
pub fn prepare(pixels: &Array2<f32>) -> Result<Prepared, ItemError> {
    let (ny, nx) = pixels.dim();
    if ny < MODEL_SIZE || nx < MODEL_SIZE {
        return Err(ItemError::new(
            RejectReason::Unspecified,
            format!("window is {ny}x{nx}, preprocessing needs at least {MODEL_SIZE}x{MODEL_SIZE}"),
        ));
    }
    let std = sigma_clipped_std(pixels).ok_or_else(|| {
        ItemError::new(RejectReason::EmptyCutout, "no finite pixel in the window")
    })?;
    let threshold = THRESHOLD_SIGMA * std;

    let crop = model_crop(pixels).ok_or_else(|| {
        ItemError::new(
            RejectReason::Unspecified,
            "window smaller than the model input",
        )
    })?;
    // Which crop pixels are emission, and the crop with every other pixel zeroed (NaN
    // compares false: it is zeroed like every pixel at or below the threshold), written into
    // the model input's buffer, which the second pass turns into the input in place. The
    // kept values stay float32: each is a pixel or 0, exact in either width.
    let mut emission = vec![false; MODEL_PIXELS];
    let mut input = vec![0.0f32; MODEL_PIXELS];
    let rows = emission
        .chunks_exact_mut(MODEL_SIZE)
        .zip(input.chunks_exact_mut(MODEL_SIZE));
    for (row, (emission, kept)) in crop.rows().into_iter().zip(rows) {
        for ((&v, on), kept) in row.iter().zip(emission).zip(kept) {
            *on = f64::from(v) > threshold;
            *kept = if *on { v } else { 0.0 };
        }
    }
    // No kept value is NaN or -0.0 (each is 0 or above a threshold >= 0), so the extremes do
    // not depend on the order they are taken in: eight lanes, then across them.
    let (min, max) = extremes(&input);
    if max <= min {
        return Err(ItemError::new(
            RejectReason::EmptyCutout,
            format!(
                "central {MODEL_SIZE}x{MODEL_SIZE} crop is constant ({min}) after zeroing pixels <= 3 std ({threshold:e})"
            ),
        ));
    }
    let range = max - min;
    let mut image_u8 = vec![0u8; MODEL_PIXELS];
    for (value, u8) in input.iter_mut().zip(&mut image_u8) {
        // PIL's float to 'L': the float64 array becomes float32 ('F'), then truncates
        // toward zero and clamps to 0..255 (`as u8` from f32 does both).
        let u = (255.0 * (f64::from(*value) - min) / range) as f32 as u8;
        *u8 = u;
        *value = (f32::from(u) / 255.0 - 0.5) / 0.5;
    }
    Ok(Prepared {
        input,
        image_u8,
        emission,
        rms: std as f32,
        threshold: threshold as f32,
    })
}

/// The smallest and largest of `values` (none NaN) as float64.
fn extremes(values: &[f32]) -> (f64, f64) {
    const LANES: usize = 8;
    let (mut min, mut max) = ([f32::INFINITY; LANES], [f32::NEG_INFINITY; LANES]);
    let chunks = values.chunks_exact(LANES);
    for &v in chunks.remainder() {
        (min[0], max[0]) = (min[0].min(v), max[0].max(v));
    }
    for chunk in chunks {
        for lane in 0..LANES {
            min[lane] = min[lane].min(chunk[lane]);
            max[lane] = max[lane].max(chunk[lane]);
        }
    }
    (
        f64::from(min.into_iter().fold(f32::INFINITY, f32::min)),
        f64::from(max.into_iter().fold(f32::NEG_INFINITY, f32::max)),
    )
}

/// The central `MODEL_SIZE` x `MODEL_SIZE` crop of a window (rows and columns
/// `n/2 - 75 .. n/2 + 75`), the pixels the model sees; None when the window is smaller.
pub fn model_crop(pixels: &Array2<f32>) -> Option<ndarray::ArrayView2<'_, f32>> {
    let (ny, nx) = pixels.dim();
    if ny < MODEL_SIZE || nx < MODEL_SIZE {
        return None;
    }
    let (r0, c0) = (ny / 2 - MODEL_SIZE / 2, nx / 2 - MODEL_SIZE / 2);
    Some(pixels.slice(ndarray::s![r0..r0 + MODEL_SIZE, c0..c0 + MODEL_SIZE]))
}

/// Step 1 alone: the sigma-clipped std of a window's finite pixels (None when there are
/// none), as [`prepare`] computes it. For benchmarks and diagnostics.
pub fn sigma_clipped_std(pixels: &Array2<f32>) -> Option<f64> {
    SCRATCH.with_borrow_mut(|scratch| match pixels.as_slice() {
        // A contiguous window (every cutout) is read as a plain slice.
        Some(values) => clipped_std(values, scratch),
        None => clipped_std(&pixels.iter().copied().collect::<Vec<_>>(), scratch),
    })
}

/// astropy `sigma_clipped_stats(data, sigma=3, maxiters=5)[2]` over the finite `values`;
/// None when there are none.
///
/// Clipping only ever removes the tails of the set, so the values are sorted once (radix
/// sort on order-preserving keys, linear time) and each round is then a median read at the
/// middle of a range, a std over that range, and two binary searches for the new bounds.
/// The result is the same set arithmetic as astropy's; only the order of the float64
/// sums differs (parity on the MiraBest test set: 157 of 157 images identical).
///
/// Only the last std is returned; the rounds before it only choose bounds. Their std comes
/// from running sums (the whole set's, less what each round clips), with an error bound:
/// where no value lies within that bound of either clipping bound, the exact std would clip
/// the same values, and the round needs no pass over its range. Otherwise (rare) the round
/// takes the exact std. So the bits are those of exact rounds, at two passes in all.
fn clipped_std(values: &[f32], s: &mut Scratch) -> Option<f64> {
    // The keys and the radix histograms in one read of the window, written through a
    // plain slice (a `Vec::push` per key reloads and stores the vector's header each time).
    s.keys.resize(values.len(), 0);
    let mut counts = [[0u32; RADIX_BUCKETS]; RADIX_PASSES];
    let mut n = 0;
    let keys = s.keys.as_mut_slice();
    for &v in values {
        if v.is_finite() {
            let k = sort_key(v);
            for (pass, c) in counts.iter_mut().enumerate() {
                c[radix_digit(k, pass)] += 1;
            }
            keys[n] = k;
            n += 1;
        }
    }
    s.keys.truncate(n);
    if s.keys.is_empty() {
        return None;
    }
    radix_sort(&mut s.keys, &mut s.tmp, &counts);
    s.sorted.clear();
    s.sorted
        .extend(s.keys.iter().map(|&k| f64::from(from_key(k))));
    let sorted = &s.sorted[..];
    let mut sums = RunningSums::new(sorted);
    let (mut a, mut b) = (0, sorted.len());
    for _ in 0..CLIP_MAXITERS {
        let range = &sorted[a..b];
        let centre = sorted_median(range);
        // Kept: lo <= v <= hi, a contiguous run of the sorted range, for a std that may lie
        // `slack` from the exact one; None when a value lies within that of a bound.
        let kept = |spread: f64, slack: f64| {
            let (lo, hi) = (centre - CLIP_SIGMA * spread, centre + CLIP_SIGMA * spread);
            let first = range.partition_point(|&v| v < lo - slack);
            let end = range.partition_point(|&v| v <= hi - slack);
            (first == range.partition_point(|&v| v < lo + slack)
                && end == range.partition_point(|&v| v <= hi + slack))
            .then_some((a + first, a + end))
        };
        let mut exact = None;
        let (na, nb) = match sums.std(centre).and_then(|(spread, err)| kept(spread, err)) {
            Some(bounds) => bounds,
            None => {
                #[cfg(test)]
                EXACT_ROUNDS.set(EXACT_ROUNDS.get() + 1);
                let spread = population_std(range);
                exact = Some(spread);
                kept(spread, 0.0).unwrap_or((a, b))
            }
        };
        if (na, nb) == (a, b) || na >= nb {
            // Converged (or nothing would be left): the std of the range kept.
            return Some(exact.unwrap_or_else(|| population_std(range)));
        }
        sums.remove(&sorted[a..na]);
        sums.remove(&sorted[nb..b]);
        (a, b) = (na, nb);
    }
    Some(population_std(&sorted[a..b]))
}

#[cfg(test)]
thread_local! {
    /// Rounds that took the exact std (the tests check that real windows need none).
    static EXACT_ROUNDS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Sums of a sorted range's values (shifted by the whole set's median, against
/// cancellation), kept as the whole set's sums less the tails clipped so far, with what
/// bounds their rounding error.
struct RunningSums {
    shift: f64,
    n: f64,
    s1: f64,
    s2: f64,
    /// Error bounds of `s1` and `s2`: every term ever added or removed counts once.
    abs1: f64,
    abs2: f64,
    terms: f64,
}

impl RunningSums {
    fn new(sorted: &[f64]) -> Self {
        let mut sums = Self {
            shift: sorted_median(sorted),
            n: 0.0,
            s1: 0.0,
            s2: 0.0,
            abs1: 0.0,
            abs2: 0.0,
            terms: 0.0,
        };
        // Four partial sums each (independent chains): the error bound below holds for
        // any order of summation.
        const LANES: usize = 4;
        let (mut s1, mut s2, mut abs1) = ([0.0; LANES], [0.0; LANES], [0.0; LANES]);
        let chunks = sorted.chunks_exact(LANES);
        let rest = chunks.remainder();
        for chunk in chunks {
            for lane in 0..LANES {
                let y = chunk[lane] - sums.shift;
                s1[lane] += y;
                s2[lane] += y * y;
                abs1[lane] += y.abs();
            }
        }
        for &v in rest {
            let y = v - sums.shift;
            s1[0] += y;
            s2[0] += y * y;
            abs1[0] += y.abs();
        }
        let total = |p: [f64; LANES]| (p[0] + p[1]) + (p[2] + p[3]);
        (sums.s1, sums.s2, sums.abs1) = (total(s1), total(s2), total(abs1));
        sums.abs2 = sums.s2;
        sums.n = sorted.len() as f64;
        sums.terms = sums.n;
        sums
    }

    fn remove(&mut self, values: &[f64]) {
        for &v in values {
            let y = v - self.shift;
            self.s1 -= y;
            self.s2 -= y * y;
        }
        self.n -= values.len() as f64;
        self.terms += values.len() as f64;
    }

    /// The population std of the range, and a bound on how far the clipping bounds
    /// `centre +- 3 std` from it can lie from those from the exact two-pass std (None when
    /// the bound is not small against the std: the round then takes the exact std).
    fn std(&self, centre: f64) -> Option<(f64, f64)> {
        const U: f64 = f64::EPSILON;
        // Each sum's rounding error: at most (terms + 2) u times the sum of the absolute
        // values of its terms (sequential summation), doubled for the shift and squares.
        let e1 = 2.0 * (self.terms + 2.0) * U * self.abs1;
        let e2 = 2.0 * (self.terms + 2.0) * U * self.abs2;
        let mean = self.s1 / self.n;
        let var = self.s2 / self.n - mean * mean;
        let var_err = e2 / self.n
            + 2.0 * mean.abs() * e1 / self.n
            + (e1 / self.n).powi(2)
            // The last operations here, and the exact two-pass std's own error.
            + 64.0 * U * (self.s2.abs() / self.n + mean * mean)
            // The exact std's mean of unshifted values is off by up to this much.
            + (64.0 * U * (self.shift.abs() + mean.abs())).powi(2);
        if var.is_nan() || var <= 16.0 * var_err {
            return None;
        }
        let spread = var.sqrt();
        // |sqrt(x) - sqrt(y)| <= |x - y| / sqrt(min(x, y)), and min >= var - var_err.
        let spread_err = var_err / (var - var_err).sqrt();
        let slack = CLIP_SIGMA * spread_err + 8.0 * U * (centre.abs() + CLIP_SIGMA * spread);
        Some((spread, slack))
    }
}

/// numpy's median of sorted values: the middle one, or the mean of the two middle ones.
fn sorted_median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// A u32 whose unsigned order is the numeric order of finite floats.
fn sort_key(v: f32) -> u32 {
    let b = v.to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

fn from_key(k: u32) -> f32 {
    f32::from_bits(if k & 0x8000_0000 != 0 {
        k & 0x7fff_ffff
    } else {
        !k
    })
}

/// Radix sort digits: 11, 11 and 10 bits (three passes over the keys, not four).
const RADIX_BITS: u32 = 11;
const RADIX_PASSES: usize = 3;
const RADIX_BUCKETS: usize = 1 << RADIX_BITS;

fn radix_digit(key: u32, pass: usize) -> usize {
    ((key >> (RADIX_BITS as usize * pass)) as usize) & (RADIX_BUCKETS - 1)
}

/// LSD radix sort given the histograms of every digit (counted while the keys were made);
/// a pass where every key has the same digit is skipped.
fn radix_sort(
    keys: &mut Vec<u32>,
    tmp: &mut Vec<u32>,
    counts: &[[u32; RADIX_BUCKETS]; RADIX_PASSES],
) {
    tmp.clear();
    tmp.resize(keys.len(), 0);
    let n = u32::try_from(keys.len()).unwrap_or(u32::MAX);
    for (pass, c) in counts.iter().enumerate() {
        if c.contains(&n) {
            continue;
        }
        let mut next = [0u32; RADIX_BUCKETS];
        let mut sum = 0;
        for (slot, &count) in next.iter_mut().zip(c) {
            *slot = sum;
            sum += count;
        }
        for &k in keys.iter() {
            let bucket = radix_digit(k, pass);
            tmp[next[bucket] as usize] = k;
            next[bucket] += 1;
        }
        std::mem::swap(keys, tmp);
    }
}

/// The histograms [`radix_sort`] needs, for keys that were not counted as they were made.
#[cfg(test)]
fn radix_counts(keys: &[u32]) -> [[u32; RADIX_BUCKETS]; RADIX_PASSES] {
    let mut counts = [[0u32; RADIX_BUCKETS]; RADIX_PASSES];
    for &k in keys {
        for (pass, c) in counts.iter_mut().enumerate() {
            c[radix_digit(k, pass)] += 1;
        }
    }
    counts
}

/// Population standard deviation (ddof 0) with numpy's two-pass formula and pairwise sums.
fn population_std(values: &[f64]) -> f64 {
    let n = values.len() as f64;
    let mean = pairwise_sum(values, |v| v) / n;
    (pairwise_sum(values, |v| (v - mean) * (v - mean)) / n).sqrt()
}

/// Pairwise summation as numpy does it (blocks of 128 summed with 8 accumulators): the
/// same rounding behaviour, and accurate for 90 000 terms.
fn pairwise_sum(values: &[f64], f: impl Fn(f64) -> f64 + Copy) -> f64 {
    const BLOCK: usize = 128;
    if values.len() < 8 {
        return values.iter().fold(0.0, |s, &v| s + f(v));
    }
    if values.len() <= BLOCK {
        let mut acc = [0.0f64; 8];
        let chunks = values.chunks_exact(8);
        let rest = chunks.remainder();
        for c in chunks {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a += f(v);
            }
        }
        let mut s =
            ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        for &v in rest {
            s += f(v);
        }
        return s;
    }
    let half = (values.len() / 2) / 8 * 8;
    pairwise_sum(&values[..half], f) + pairwise_sum(&values[half..], f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::CUTOUT_SIZE;

    /// A deterministic 300x300 window: a ramp of noise-like values in [-0.5, 0.5], a few
    /// strong outliers and NaNs, and a bright "source" in the centre. The same formula in
    /// Python gives astropy's clipped std below.
    fn synthetic() -> Array2<f32> {
        Array2::from_shape_fn((CUTOUT_SIZE, CUTOUT_SIZE), |(y, x)| {
            let noise = (((x * 31 + y * 17) % 101) as f64 / 100.0 - 0.5) as f32;
            if (x * 7 + y * 13) % 997 == 0 {
                f32::NAN
            } else if (140..160).contains(&x) && (145..155).contains(&y) {
                5.0 + (x - 140) as f32 * 0.25
            } else if (x + y * 3) % 1009 == 0 {
                40.0
            } else {
                noise
            }
        })
    }

    #[test]
    fn clipped_std_matches_astropy() {
        // numpy/astropy:
        //   y, x = np.mgrid[0:300, 0:300]
        //   a = (((x*31 + y*17) % 101) / 100 - 0.5).astype(np.float32)
        //   a[(x + y*3) % 1009 == 0] = 40; a[145:155, 140:160] = 5 + (x[145:155, 140:160] - 140) * 0.25
        //   a[(x*7 + y*13) % 997 == 0] = np.nan
        //   sigma_clipped_stats(a.astype(np.float64), sigma=3, maxiters=5)[2]
        let std = clipped_std(
            synthetic().as_slice().expect("contiguous"),
            &mut Scratch::default(),
        )
        .expect("finite values");
        assert!(
            (std - ASTROPY_STD).abs() < 1e-12,
            "{std} vs astropy {ASTROPY_STD}"
        );
    }
    const ASTROPY_STD: f64 = 0.2915404253795988;

    #[test]
    fn sorting_median_and_std_follow_numpy() {
        let values: Vec<f32> = (0..5000u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) % 20011) as f32 - 10005.0) * 1.7e-3)
            .chain([-0.0, 0.0, 1e-30, -1e30])
            .collect();
        let mut keys: Vec<u32> = values.iter().map(|&v| sort_key(v)).collect();
        let counts = radix_counts(&keys);
        radix_sort(&mut keys, &mut Vec::new(), &counts);
        let sorted: Vec<f32> = keys.iter().map(|&k| from_key(k)).collect();
        let mut expected = values.clone();
        expected.sort_by(f32::total_cmp);
        assert!(
            sorted
                .iter()
                .zip(&expected)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
        assert_eq!(sorted_median(&[1.0, 2.0, 3.0]), 2.0);
        assert_eq!(sorted_median(&[1.0, 2.0, 3.0, 4.0]), 2.5);
        let v: Vec<f64> = (0..1000).map(|i| (i as f64 * 0.37).sin()).collect();
        let naive_mean = v.iter().sum::<f64>() / 1000.0;
        let naive = (v.iter().map(|x| (x - naive_mean).powi(2)).sum::<f64>() / 1000.0).sqrt();
        assert!((population_std(&v) - naive).abs() < 1e-14);
        assert_eq!(pairwise_sum(&[1.0; 1001], |x| x), 1001.0);
    }

    /// The clipping as first written: a comparison sort, then the same rounds. The radix
    /// sort and the fused passes must give the same bits on real and synthetic windows.
    fn reference_clipped_std(pixels: &Array2<f32>) -> Option<f64> {
        let mut sorted: Vec<f32> = pixels.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f32::total_cmp);
        let sorted: Vec<f64> = sorted.into_iter().map(f64::from).collect();
        let (mut a, mut b) = (0, sorted.len());
        for _ in 0..CLIP_MAXITERS {
            let range = &sorted[a..b];
            let (centre, spread) = (sorted_median(range), population_std(range));
            let (lo, hi) = (centre - CLIP_SIGMA * spread, centre + CLIP_SIGMA * spread);
            let kept: Vec<usize> = (a..b)
                .filter(|&i| sorted[i] >= lo && sorted[i] <= hi)
                .collect();
            let (na, nb) = match (kept.first(), kept.last()) {
                (Some(&f), Some(&l)) => (f, l + 1),
                _ => break,
            };
            if (na, nb) == (a, b) {
                break;
            }
            (a, b) = (na, nb);
        }
        Some(population_std(&sorted[a..b]))
    }

    #[test]
    fn clipping_is_identical_to_the_reference_on_real_and_synthetic_windows() {
        let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/first");
        let cutter = crate::cutout::Cutter::new(&crate::config::CutoutConfig {
            mosaics: Vec::new(),
            workers: 1,
        })
        .expect("cutter");
        let detections = crate::source::open(&crate::config::SourceConfig::Files {
            inputs: vec![samples],
            survey: "FIRST".into(),
        })
        .expect("samples");
        let mut windows: Vec<Array2<f32>> = detections
            .flatten()
            .map(|d| cutter.cut(&d.message).expect("sample cuts").pixels)
            .collect();
        assert_eq!(windows.len(), 20);
        windows.push(synthetic());
        // Heavy tails, negative values, both zeros, many equal values, tiny and huge scales.
        for seed in 0..12u64 {
            windows.push(Array2::from_shape_fn(
                (CUTOUT_SIZE, CUTOUT_SIZE),
                |(y, x)| {
                    let i = (y * CUTOUT_SIZE + x) as u64 ^ (seed << 20);
                    let u =
                        (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as f32 / (1u64 << 24) as f32;
                    let scale = 10f32.powi(seed as i32 - 6);
                    match i % 97 {
                        0 => -0.0,
                        1 => 0.0,
                        2 if seed % 2 == 0 => f32::NAN,
                        3 => 50.0 * scale,
                        4 => (u * 8.0).round() * scale,
                        _ => (u - 0.5) * scale * (1.0 + 20.0 * u.powi(9)),
                    }
                },
            ));
        }
        EXACT_ROUNDS.set(0);
        for (k, window) in windows.iter().enumerate() {
            let ours = sigma_clipped_std(window).map(f64::to_bits);
            let theirs = reference_clipped_std(window).map(f64::to_bits);
            assert_eq!(ours, theirs, "window {k}");
        }
        // The rounds before the last took their bounds from the running sums.
        assert_eq!(EXACT_ROUNDS.get(), 0);
    }

    #[test]
    fn a_value_on_a_clipping_bound_takes_the_exact_std() {
        // 16 zeros and -a, +a: mean 0, std a/3, so -a and +a lie on centre -+ 3 std, where
        // the running sums' error bound cannot tell whether they are kept.
        for a in [1.0f32, 0.3, 7e-5] {
            let mut values = vec![0.0f32; 16];
            values.extend([-a, a]);
            let window = Array2::from_shape_vec((1, values.len()), values).expect("shape");
            EXACT_ROUNDS.set(0);
            let ours = sigma_clipped_std(&window).map(f64::to_bits);
            assert_eq!(
                ours,
                reference_clipped_std(&window).map(f64::to_bits),
                "a = {a}"
            );
            assert!(EXACT_ROUNDS.get() > 0, "a = {a}");
        }
    }

    #[test]
    fn prepared_image_is_scaled_thresholded_and_normalised() {
        let window = synthetic();
        let p = prepare(&window).expect("prepared");
        let n = MODEL_PIXELS;
        assert_eq!(
            (p.input.len(), p.image_u8.len(), p.emission.len()),
            (n, n, n)
        );
        assert!((f64::from(p.threshold) - 3.0 * f64::from(p.rms)).abs() < 1e-6);
        // Crop rows/cols 75..225: the source block starts at crop (70, 65); it holds the
        // max (255) at its right edge; noise is below threshold, zeroed, the min (0).
        let at = |y: usize, x: usize| y * MODEL_SIZE + x;
        assert_eq!(p.image_u8[at(145 - 75, 159 - 75)], 255);
        assert_eq!(p.image_u8[at(0, 0)], 0);
        assert!(p.emission[at(70, 65)] && !p.emission[at(0, 0)]);
        // No 40.0 outlier falls in the crop, so the max is the source's 9.75 and its 5.0
        // pixel becomes trunc(255 * 5 / 9.75) = trunc(130.77) = 130.
        assert!(!(75..225).any(|y| (75..225).any(|x| window[[y, x]] == 40.0)));
        assert_eq!(p.image_u8[at(70, 65)], 130);
        for (&u, &v) in p.image_u8.iter().zip(&p.input) {
            assert_eq!(v, (f32::from(u) / 255.0 - 0.5) / 0.5);
        }
        assert_eq!(p.input.iter().copied().fold(f32::INFINITY, f32::min), -1.0);
        assert_eq!(
            p.input.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            1.0
        );
    }

    #[test]
    fn blank_and_constant_windows_are_rejected() {
        let nan = Array2::from_elem((CUTOUT_SIZE, CUTOUT_SIZE), f32::NAN);
        assert_eq!(
            prepare(&nan).expect_err("all NaN").reason,
            RejectReason::EmptyCutout
        );
        let flat = Array2::from_elem((CUTOUT_SIZE, CUTOUT_SIZE), 1.5f32);
        assert_eq!(
            prepare(&flat).expect_err("constant").reason,
            RejectReason::EmptyCutout
        );
        // Only noise: nothing in the crop above 3 std, so the crop is all zeros.
        let noise = Array2::from_shape_fn((CUTOUT_SIZE, CUTOUT_SIZE), |(y, x)| {
            ((x * 31 + y * 17) % 101) as f32 - 50.0
        });
        assert_eq!(
            prepare(&noise).expect_err("no emission").reason,
            RejectReason::EmptyCutout
        );
        let small = Array2::from_elem((100, 300), 1.0f32);
        assert!(prepare(&small).is_err());
    }
}
