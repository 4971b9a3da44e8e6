//! Resampling a window to the model's pixel size (`cutout.resample`): the image's own pixel
//! grid, scaled about the source, each output pixel the area-weighted mean of the input
//! pixels its footprint covers (surface brightness kept, as astropy's `reproject_exact`
//! gives on an axis-aligned grid). Separable: along x, then along y. An output pixel that
//! overlaps a blank (NaN) input pixel is blank.
//!
//! The grid is not rotated: like a plain cut, the window keeps the image's orientation (the
//! model was trained on every rotation and reflection); only the pixel size changes.

use ndarray::Array2;

use super::fits::finite_or_blank;
use crate::domain::CUTOUT_SIZE;

/// One axis of a resampling: which input pixels to read, and for each output pixel the input
/// pixels its footprint overlaps (indices into what is read) with their shares of it.
#[derive(Debug)]
pub struct Axis {
    /// First image pixel read along this axis.
    pub start: i64,
    /// Image pixels read.
    pub len: usize,
    /// Per output pixel: the first input pixel it overlaps (an index into what is read) and
    /// the shares of that pixel and the ones after it.
    taps: Vec<(usize, Vec<f64>)>,
}

/// Overlaps below this (in image pixels) are rounding, not geometry: a window of pixels
/// exactly half the size would otherwise reach 1e-9 of a pixel into each neighbour (the
/// sizes come through the WCS), and blank its edge where that neighbour is off the image.
const NEGLIGIBLE: f64 = 1e-6;

impl Axis {
    /// `CUTOUT_SIZE` output pixels of `factor` input pixels each, the window's centre
    /// (`SOURCE_PIXEL`, between pixels 149 and 150) at image pixel `centre`.
    pub fn new(centre: f64, factor: f64) -> Axis {
        let half = CUTOUT_SIZE as f64 / 2.0;
        // Output pixel i spans [edge(i), edge(i + 1)] in image pixels; image pixel x spans
        // [x - 0.5, x + 0.5]. Shared edges come from one expression, so that neighbours
        // neither overlap nor leave a gap.
        let edge = |i: usize| centre + (i as f64 - half) * factor;
        let absolute: Vec<Vec<(i64, f64)>> = (0..CUTOUT_SIZE)
            .map(|i| {
                let (a, b) = (edge(i), edge(i + 1));
                let taps: Vec<(i64, f64)> = ((a + 0.5).floor() as i64..=(b - 0.5).ceil() as i64)
                    .filter_map(|x| {
                        let xf = x as f64;
                        let overlap = b.min(xf + 0.5) - a.max(xf - 0.5);
                        (overlap > NEGLIGIBLE).then_some((x, overlap))
                    })
                    .collect();
                let total: f64 = taps.iter().map(|&(_, o)| o).sum();
                taps.into_iter().map(|(x, o)| (x, o / total)).collect()
            })
            .collect();
        // Footprints move right with i, so the first pixel of the first and the last of the
        // last bound what is read (each footprint, at least 1/8 of a pixel, has a tap).
        let start = absolute
            .first()
            .and_then(|t| t.first())
            .map_or(0, |&(x, _)| x);
        let end = absolute
            .last()
            .and_then(|t| t.last())
            .map_or(start, |&(x, _)| x);
        // Each output pixel's input pixels are consecutive.
        let taps = absolute
            .into_iter()
            .map(|taps| {
                let first = taps.first().map_or(0, |&(x, _)| (x - start) as usize);
                (first, taps.into_iter().map(|(_, w)| w).collect())
            })
            .collect();
        Axis {
            start,
            len: (end - start + 1) as usize,
            taps,
        }
    }
}

/// The `CUTOUT_SIZE` x `CUTOUT_SIZE` window from `input` (`ay.len` rows of `ax.len`, as read
/// from the image at (`ax.start`, `ay.start`), NaN where blank or off the image), and how many
/// of its pixels are finite.
pub fn resample(input: &Array2<f32>, ax: &Axis, ay: &Axis) -> (Array2<f32>, usize) {
    // Along x: every input row to `CUTOUT_SIZE` values (a NaN input stays in the sums it
    // enters, blanking the output pixels that overlap it).
    let mut rows = vec![0.0f64; ay.len * CUTOUT_SIZE];
    for (row, resized) in input
        .rows()
        .into_iter()
        .zip(rows.chunks_exact_mut(CUTOUT_SIZE))
    {
        for (v, (first, weights)) in resized.iter_mut().zip(&ax.taps) {
            *v = (*first..)
                .zip(weights)
                .map(|(x, &w)| w * f64::from(row[x]))
                .sum();
        }
    }
    // Along y: each output row a weighted sum of whole resized rows.
    let mut out = Array2::from_elem((CUTOUT_SIZE, CUTOUT_SIZE), f32::NAN);
    let mut finite = 0;
    let mut sum = vec![0.0f64; CUTOUT_SIZE];
    for ((first, weights), mut row) in ay.taps.iter().zip(out.rows_mut()) {
        sum.fill(0.0);
        for (y, &w) in (*first..).zip(weights) {
            let resized = &rows[y * CUTOUT_SIZE..][..CUTOUT_SIZE];
            for (s, &r) in sum.iter_mut().zip(resized) {
                *s += w * r;
            }
        }
        for (v, &s) in row.iter_mut().zip(&sum) {
            // Inputs are finite or NaN (the readers blank the rest), so a mean is too, but
            // for a rounding past float32's largest value.
            *v = finite_or_blank(s as f32);
            finite += usize::from(v.is_finite());
        }
    }
    (out, finite)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_each_output_pixel_once_and_the_read_span_exactly() {
        for (centre, factor) in [(299.5, 2.0), (1000.25, 1.8), (40.0, 0.6), (7.3, 1.0)] {
            let axis = Axis::new(centre, factor);
            for (first, weights) in &axis.taps {
                let total: f64 = weights.iter().sum();
                assert!((total - 1.0).abs() < 1e-12, "{centre} {factor}: {total}");
                assert!(first + weights.len() <= axis.len);
            }
            let (first, _) = &axis.taps[0];
            let (last, weights) = &axis.taps[CUTOUT_SIZE - 1];
            assert_eq!(
                (*first, last + weights.len()),
                (0, axis.len),
                "{centre} {factor}"
            );
            let span = CUTOUT_SIZE as f64 * factor;
            assert!(
                (axis.len as f64) >= span && (axis.len as f64) <= span + 2.0,
                "{centre} {factor}: {} pixels read for a span of {span}",
                axis.len
            );
        }
    }

    #[test]
    fn pixels_replicated_two_by_two_come_back_and_blanks_stay_blank() {
        // A 300 x 300 image with each pixel repeated 2 x 2: pixels half the size, the
        // window's centre at 299.5. Resampling by 2 gives the original back.
        let original = Array2::from_shape_fn((CUTOUT_SIZE, CUTOUT_SIZE), |(y, x)| {
            if (y, x) == (10, 20) {
                f32::NAN
            } else {
                ((y * 7919 + x * 104729) % 1000) as f32 * 1e-4 - 0.02
            }
        });
        let fine = Array2::from_shape_fn((2 * CUTOUT_SIZE, 2 * CUTOUT_SIZE), |(y, x)| {
            original[[y / 2, x / 2]]
        });
        // Exactly, and with sizes as a WCS gives them, a few 1e-10 off: the same pixels read
        // (no edge pixel blanked by a neighbour 1e-9 of a pixel away), the original to
        // rounding.
        for (centre, factor, exact) in [
            (299.5, 2.0, true),
            (299.5 + 1e-9, 2.0 + 3e-10, false),
            (299.5 + 1e-9, 2.0 - 3e-10, false),
        ] {
            let axis = Axis::new(centre, factor);
            assert_eq!((axis.start, axis.len), (0, 2 * CUTOUT_SIZE));
            let (out, finite) = resample(&fine, &axis, &axis);
            assert_eq!(finite, CUTOUT_SIZE * CUTOUT_SIZE - 1);
            let same = |a: f32, b: f32| {
                if exact {
                    a.to_bits() == b.to_bits()
                } else {
                    (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-8
                }
            };
            assert!(
                out.iter().zip(&original).all(|(&a, &b)| same(a, b)),
                "{factor}: not the original"
            );
        }
    }

    #[test]
    fn larger_pixels_are_split_by_area() {
        // Input pixels 1.5 times the output's: output pixel 0 of a window centred at image
        // coordinate 0 spans [-100, -99.33]: half a pixel of pixel -100 (three quarters of
        // the footprint) and a sixth of pixel -99 (a quarter).
        let axis = Axis::new(0.0, 1.0 / 1.5);
        assert_eq!(axis.start, -100);
        let (first, weights) = &axis.taps[0];
        assert_eq!((*first, weights.len()), (0, 2));
        assert!((weights[0] - 0.75).abs() < 1e-12 && (weights[1] - 0.25).abs() < 1e-12);
    }
}
