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

use crate::domain::{ItemError, MODEL_SIZE, Prepared};
use crate::proto::RejectReason;

/// astropy's defaults as MiraBest used them.
const CLIP_SIGMA: f64 = 3.0;
const CLIP_MAXITERS: usize = 5;
/// Pixels at or below this many clipped std are zeroed.
const THRESHOLD_SIGMA: f64 = 3.0;

thread_local! {
    /// Scratch for the finite pixels of a window: reused so that the hot path does not
    /// allocate 720 KB per call.
    static SCRATCH: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
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
    let std = SCRATCH.with_borrow_mut(|buf| {
        buf.clear();
        buf.extend(pixels.iter().filter(|v| v.is_finite()).map(|&v| f64::from(v)));
        clipped_std(buf)
    });
    let std = std.ok_or_else(|| ItemError::new(RejectReason::EmptyCutout, "no finite pixel in the window"))?;
    let threshold = THRESHOLD_SIGMA * std;

    let (r0, c0) = (ny / 2 - MODEL_SIZE / 2, nx / 2 - MODEL_SIZE / 2);
    let crop = pixels.slice(ndarray::s![r0..r0 + MODEL_SIZE, c0..c0 + MODEL_SIZE]);
    let mut kept = Vec::with_capacity(MODEL_SIZE * MODEL_SIZE);
    let mut emission = Vec::with_capacity(MODEL_SIZE * MODEL_SIZE);
    let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
    for &v in crop.iter() {
        let v = f64::from(v);
        // NaN compares false: it is zeroed like every pixel at or below the threshold.
        let above = v > threshold;
        let v = if above { v } else { 0.0 };
        min = min.min(v);
        max = max.max(v);
        kept.push(v);
        emission.push(above);
    }
    if max <= min {
        return Err(ItemError::new(
            RejectReason::EmptyCutout,
            format!("central {MODEL_SIZE}x{MODEL_SIZE} crop is constant ({min}) after zeroing pixels <= 3 std ({threshold:e})"),
        ));
    }
    let range = max - min;
    let image_u8: Vec<u8> = kept
        .iter()
        // PIL's float to 'L': the float64 array becomes float32 ('F'), then truncates
        // toward zero and clamps to 0..255 (`as u8` from f32 does both).
        .map(|&v| (255.0 * (v - min) / range) as f32 as u8)
        .collect();
    let input = image_u8.iter().map(|&u| (f32::from(u) / 255.0 - 0.5) / 0.5).collect();
    Ok(Prepared { input, image_u8, emission, rms: std as f32, threshold: threshold as f32 })
}

/// astropy `sigma_clipped_stats(data, sigma=3, maxiters=5)[2]` over `values` (all finite),
/// which it reorders and shrinks. None when there are no values.
fn clipped_std(values: &mut Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    for _ in 0..CLIP_MAXITERS {
        let before = values.len();
        let centre = median(values);
        let spread = population_std(values);
        let (lo, hi) = (centre - CLIP_SIGMA * spread, centre + CLIP_SIGMA * spread);
        values.retain(|&v| v >= lo && v <= hi);
        if values.len() == before || values.is_empty() {
            break;
        }
    }
    // Clipping never empties a set: the median is always within its bounds.
    (!values.is_empty()).then(|| population_std(values))
}

/// numpy's median (mean of the two middle values for an even count); reorders `values`.
fn median(values: &mut [f64]) -> f64 {
    let n = values.len();
    let mid = n / 2;
    let (left, upper, _) = values.select_nth_unstable_by(mid, f64::total_cmp);
    let upper = *upper;
    if n % 2 == 1 {
        upper
    } else {
        let lower = left.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lower + upper) / 2.0
    }
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
        let mut s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
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
        let mut buf: Vec<f64> = synthetic().iter().filter(|v| v.is_finite()).map(|&v| f64::from(v)).collect();
        let std = clipped_std(&mut buf).expect("finite values");
        assert!((std - ASTROPY_STD).abs() < 1e-12, "{std} vs astropy {ASTROPY_STD}");
    }
    const ASTROPY_STD: f64 = 0.2915404253795988;

    #[test]
    fn median_and_std_follow_numpy() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        let v: Vec<f64> = (0..1000).map(|i| (i as f64 * 0.37).sin()).collect();
        let naive_mean = v.iter().sum::<f64>() / 1000.0;
        let naive = (v.iter().map(|x| (x - naive_mean).powi(2)).sum::<f64>() / 1000.0).sqrt();
        assert!((population_std(&v) - naive).abs() < 1e-14);
        assert_eq!(pairwise_sum(&[1.0; 1001], |x| x), 1001.0);
    }

    #[test]
    fn prepared_image_is_scaled_thresholded_and_normalised() {
        let window = synthetic();
        let p = prepare(&window).expect("prepared");
        let n = MODEL_SIZE * MODEL_SIZE;
        assert_eq!((p.input.len(), p.image_u8.len(), p.emission.len()), (n, n, n));
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
        assert_eq!(p.input.iter().copied().fold(f32::NEG_INFINITY, f32::max), 1.0);
    }

    #[test]
    fn blank_and_constant_windows_are_rejected() {
        let nan = Array2::from_elem((CUTOUT_SIZE, CUTOUT_SIZE), f32::NAN);
        assert_eq!(prepare(&nan).expect_err("all NaN").reason, RejectReason::EmptyCutout);
        let flat = Array2::from_elem((CUTOUT_SIZE, CUTOUT_SIZE), 1.5f32);
        assert_eq!(prepare(&flat).expect_err("constant").reason, RejectReason::EmptyCutout);
        // Only noise: nothing in the crop above 3 std, so the crop is all zeros.
        let noise = Array2::from_shape_fn((CUTOUT_SIZE, CUTOUT_SIZE), |(y, x)| ((x * 31 + y * 17) % 101) as f32 - 50.0);
        assert_eq!(prepare(&noise).expect_err("no emission").reason, RejectReason::EmptyCutout);
        let small = Array2::from_elem((100, 300), 1.0f32);
        assert!(prepare(&small).is_err());
    }
}
