//! What a result says about one image: the verdict (label, confidence, entropy) from the
//! model's probabilities, and the attention summary from its gates' maps: one combined,
//! quantised, compressed map over the model input, its strongest peaks with their sky
//! positions, and how much of the attention falls on emission.
//!
//! It does not run the model, cut or preprocess images, or assemble the whole
//! `Classification` (the pipeline does, from this and the other stages' results).
//!
//! The combined map, step by step (as `proto::AttentionSummary` documents it):
//! 1. each gate's map is upsampled bilinearly to the 150x150 input as the model does
//!    (`align_corners=false`), negative or non-finite values counting as no attention,
//!    and normalised to unit sum (a map with no attention at all counts as uniform);
//! 2. the gates' maps are averaged: the combined map, which sums to 1 over the input;
//! 3. the combined map is summed into `grid` x `grid` cells (area-weighted when the
//!    grid does not divide 150), so each cell holds its share of the attention;
//! 4. the cells are quantised to u8 with `scale = max / 255` and compressed with zstd.
//!
//! Rows run as in the model input: row 0 is the lowest pixel y, as in FITS.

use std::io;

use crate::config::SummaryConfig;
use crate::divide::Divisor;
use crate::domain::{
    AttentionMap, CUTOUT_SIZE, MODEL_PIXELS, MODEL_SIZE, ModelOutput, Prepared, SkyProjection,
};
use crate::proto;

/// Offset of the model input within the cutout window: the 150x150 crop starts at pixel
/// (75, 75) of the 300x300 cutout.
pub const CROP_OFFSET: f64 = ((CUTOUT_SIZE - MODEL_SIZE) / 2) as f64;
/// How many attention peaks a summary reports, strongest first.
pub const PEAKS: usize = 3;

/// Why an attention summary could not be built: the inputs break the shapes the other
/// stages promise, or the configuration is out of range.
#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    #[error("summary.grid must be 1 to {MODEL_SIZE}, got {0}")]
    Grid(u32),
    #[error("the model output has no attention maps")]
    NoMaps,
    #[error("attention map {gate} has {len} values for side {side}")]
    MapShape {
        gate: usize,
        side: usize,
        len: usize,
    },
    #[error("emission mask has {0} pixels, expected {MODEL_PIXELS}")]
    Emission(usize),
    #[error("zstd compression failed")]
    Compress(#[source] io::Error),
}

/// Why a stored map could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("map is not valid zstd, or larger than its declared size")]
    Decompress(#[source] io::Error),
    #[error("map has {got} cells, expected {want}")]
    Size { got: usize, want: usize },
}

/// The label, the confidence (probability of that label) and the Shannon entropy of the
/// two probabilities in bits (0: certain, 1: undecided). A tie goes to FRI; probabilities
/// that are not finite give `LABEL_UNSPECIFIED` with NaN confidence and entropy.
pub fn verdict(probs: [f32; 2]) -> (proto::Label, f32, f32) {
    let [fri, frii] = probs;
    if !fri.is_finite() || !frii.is_finite() {
        return (proto::Label::Unspecified, f32::NAN, f32::NAN);
    }
    let (label, confidence) = if frii > fri {
        (proto::Label::Frii, frii)
    } else {
        (proto::Label::Fri, fri)
    };
    let entropy: f64 = probs
        .iter()
        .map(|&p| f64::from(p))
        .filter(|&p| p > 0.0)
        .map(|p| -p * p.log2())
        .sum();
    // abs: a certain answer sums to -0.0, which JSON would print as "-0.0".
    (label, confidence, entropy.abs() as f32)
}

/// Builds the attention summary of one image (see the module docs for the combined map).
/// Peaks are the cells that are local maxima (8 neighbours) of the combined map, strongest
/// first; their position is the cell's centre in model-input pixels, and their sky position
/// that pixel's through `sky` (NaN where it is off the projection).
pub fn attention_summary(
    prepared: &Prepared,
    output: &ModelOutput,
    sky: &dyn SkyProjection,
    cfg: &SummaryConfig,
) -> Result<proto::AttentionSummary, SummaryError> {
    let grid = usize::try_from(cfg.grid)
        .ok()
        .filter(|g| (1..=MODEL_SIZE).contains(g))
        .ok_or(SummaryError::Grid(cfg.grid))?;
    if prepared.emission.len() != MODEL_PIXELS {
        return Err(SummaryError::Emission(prepared.emission.len()));
    }
    if output.attention.is_empty() {
        return Err(SummaryError::NoMaps);
    }
    for (gate, map) in output.attention.iter().enumerate() {
        if map.side == 0 || map.values.len() != map.side * map.side {
            return Err(SummaryError::MapShape {
                gate: gate + 1,
                side: map.side,
                len: map.values.len(),
            });
        }
    }

    let (cells, on_emission) = separable_cells(&output.attention, grid, &prepared.emission)
        .unwrap_or_else(|| {
            let combined = combine(&output.attention);
            let on_emission = combined
                .iter()
                .zip(&prepared.emission)
                .filter(|(_, e)| **e)
                .map(|(v, _)| v)
                .sum();
            (area_sum(&combined, MODEL_SIZE, grid), on_emission)
        });
    let (map_zstd, scale) = encode(&cells, cfg.zstd_level)?;

    let pixels_per_cell = MODEL_SIZE as f64 / grid as f64;
    let peaks = local_maxima(&cells, grid)
        .into_iter()
        .take(PEAKS)
        .map(|cell| {
            let x = ((cell % grid) as f64 + 0.5) * pixels_per_cell - 0.5;
            let y = ((cell / grid) as f64 + 0.5) * pixels_per_cell - 0.5;
            let (ra_deg, dec_deg) = sky
                .pixel_to_sky(x + CROP_OFFSET, y + CROP_OFFSET)
                .unwrap_or((f64::NAN, f64::NAN));
            proto::AttentionPeak {
                x: x as f32,
                y: y as f32,
                ra_deg,
                dec_deg,
                weight: cells[cell] as f32,
            }
        })
        .collect();

    let gates = if cfg.per_gate_maps {
        output
            .attention
            .iter()
            .enumerate()
            .map(|(k, map)| {
                let (map_zstd, scale) = encode(
                    &unit_sum(map.values.iter().map(|&v| f64::from(v)).collect()),
                    cfg.zstd_level,
                )?;
                let side = map.side as u32;
                Ok(proto::GateMap {
                    gate: k as u32 + 1,
                    width: side,
                    height: side,
                    map_zstd,
                    scale,
                })
            })
            .collect::<Result<_, SummaryError>>()?
    } else {
        Vec::new()
    };

    Ok(proto::AttentionSummary {
        grid: cfg.grid,
        map_zstd,
        scale,
        peaks,
        on_emission_fraction: on_emission as f32,
        gates,
    })
}

/// The combined map of a summary, `grid * grid` cells row-major, each its share of the
/// attention (within `scale / 2` of the value before quantisation).
pub fn decode_map(summary: &proto::AttentionSummary) -> Result<Vec<f32>, DecodeError> {
    let grid = summary.grid as usize;
    decode(&summary.map_zstd, grid * grid, summary.scale)
}

/// A per-gate map of a summary, `width * height` values row-major, summing to about 1.
pub fn decode_gate_map(gate: &proto::GateMap) -> Result<Vec<f32>, DecodeError> {
    decode(
        &gate.map_zstd,
        gate.width as usize * gate.height as usize,
        gate.scale,
    )
}

fn decode(map_zstd: &[u8], cells: usize, scale: f32) -> Result<Vec<f32>, DecodeError> {
    // The capacity bounds what a hostile or corrupt map can make us allocate.
    let bytes = zstd::bulk::decompress(map_zstd, cells).map_err(DecodeError::Decompress)?;
    if bytes.len() != cells {
        return Err(DecodeError::Size {
            got: bytes.len(),
            want: cells,
        });
    }
    Ok(bytes.into_iter().map(|q| f32::from(q) * scale).collect())
}

/// The combined map's `grid` x `grid` cells and its sum over the emission pixels, for maps
/// whose values are all finite and non-negative (what sigmoid gates give) and not all zero;
/// None for others, which [`combine`] takes pixel by pixel.
///
/// For such maps no interpolated value needs zeroing, so the cells are linear and
/// separable in each gate's map: upsampling and summing into cells along one axis is one
/// small banded matrix ([`Band`]), applied along y to whole rows of the map, then along x
/// to each resulting cell row: `grid` x `side` work instead of `MODEL_SIZE` squared. A
/// gate's sum is its cells' (the area weights of each pixel add up to 1); its sum over the
/// emission pixels takes each emission pixel's upsampled value as [`bilinear_into`] does.
/// In real arithmetic these are the sums [`combine`] and [`area_sum`] take; in float64
/// they are grouped otherwise, so a cell can differ from theirs by a few ulps, below what
/// the float32 fields or the 8-bit map resolve (the outputs are compared with the first
/// version's in the tests, and over the MiraBest test images in BENCHMARKS.md). Where
/// cells tie exactly, as on the plateaus of a map upsampled from a few pixels, those ulps
/// can make another of the tied cells the peak.
fn separable_cells(
    maps: &[AttentionMap],
    grid: usize,
    emission: &[bool],
) -> Option<(Vec<f64>, f64)> {
    // No early exit: a test per value would keep the loop scalar.
    let gated = |m: &AttentionMap| {
        m.values
            .iter()
            .fold(true, |ok, v| ok & (0.0..f32::INFINITY).contains(v))
    };
    if !maps.iter().all(gated) {
        return None;
    }
    let gates = maps.len() as f64;
    let mut cells = vec![0.0; grid * grid];
    // -0.0, where a sum starts: no emission pixels give what `combine`'s pixel sum gives.
    let mut on_emission = -0.0;
    SCRATCH.with_borrow_mut(|scratch| {
        let Scratch {
            partial,
            gate_cells,
            emission: pixels,
            bands,
            ..
        } = scratch;
        // The emission pixels' indices, passing over 32 at a time where there are none (a
        // test without an early exit, which the compiler makes one vector compare; with
        // one, `contains`, it tested byte after byte).
        pixels.clear();
        const STRETCH: usize = 32;
        for (at, chunk) in emission.chunks(STRETCH).enumerate() {
            if chunk.iter().fold(false, |any, &e| any | e) {
                let first = at * STRETCH;
                pixels.extend((first..first + chunk.len()).filter(|&p| emission[p]));
            }
        }
        gate_cells.clear();
        gate_cells.resize(grid * grid, 0.0);
        for map in maps {
            let side = map.side;
            let band = Band::cached(bands, side, grid);
            // Along y first, for whole rows at once: each cell row's share of every source
            // column; then along x: each cell from its cell row.
            partial.clear();
            partial.resize(grid * side, 0.0);
            for (out, (start, w)) in partial.chunks_exact_mut(side).zip(&band.cells) {
                for (&w, row) in w.iter().zip(map.values.chunks_exact(side).skip(*start)) {
                    for (o, &v) in out.iter_mut().zip(row) {
                        *o += w * f64::from(v);
                    }
                }
            }
            for (out, row) in gate_cells
                .chunks_exact_mut(grid)
                .zip(partial.chunks_exact(side))
            {
                for (cell, (start, w)) in out.iter_mut().zip(&band.cells) {
                    *cell = w.iter().zip(&row[*start..]).map(|(w, v)| w * v).sum();
                }
            }
            let sum: f64 = gate_cells.iter().sum();
            if sum <= 0.0 {
                return None;
            }
            let v = &map.values;
            let gate_emission: f64 = pixels
                .iter()
                .map(|&p| {
                    let ((y0, y1, wy), (x0, x1, wx)) =
                        (band.taps[p / MODEL_SIZE], band.taps[p % MODEL_SIZE]);
                    let at = |y: usize, x: usize| f64::from(v[y * side + x]);
                    let top = at(y0, x0) * (1.0 - wx) + at(y0, x1) * wx;
                    let bottom = at(y1, x0) * (1.0 - wx) + at(y1, x1) * wx;
                    top * (1.0 - wy) + bottom * wy
                })
                .sum();
            for (c, g) in cells.iter_mut().zip(gate_cells.iter()) {
                *c += g / sum / gates;
            }
            on_emission += gate_emission / sum / gates;
        }
        Some((cells, on_emission))
    })
}

/// Upsampling a square map's axis of `side` pixels to `MODEL_SIZE` and summing it into
/// `grid` cells, as one matrix: for each cell, the first source pixel it takes and the
/// weights of that and the following ones (the band of the matrix's row). And the
/// bilinear taps themselves, for single pixels.
struct Band {
    side: usize,
    grid: usize,
    cells: Vec<(usize, Vec<f64>)>,
    taps: Vec<(usize, usize, f64)>,
}

impl Band {
    fn new(side: usize, grid: usize) -> Self {
        let taps = bilinear_taps(side, MODEL_SIZE);
        let cells = area_weights(MODEL_SIZE, grid)
            .iter()
            .map(|pixels| {
                let mut row = vec![0.0; side];
                for &(p, f) in pixels {
                    let (i0, i1, wi) = taps[p];
                    row[i0] += f * (1.0 - wi);
                    row[i1] += f * wi;
                }
                let first = row.iter().position(|&w| w != 0.0).unwrap_or(0);
                let last = row.iter().rposition(|&w| w != 0.0).unwrap_or(first);
                (first, row[first..=last].to_vec())
            })
            .collect();
        Self {
            side,
            grid,
            cells,
            taps,
        }
    }

    /// The band for `side` and `grid` from `cache`, made once.
    fn cached(cache: &mut Vec<Band>, side: usize, grid: usize) -> &Band {
        let at = match cache.iter().position(|b| (b.side, b.grid) == (side, grid)) {
            Some(at) => at,
            None => {
                cache.push(Band::new(side, grid));
                cache.len() - 1
            }
        };
        &cache[at]
    }
}

/// Mean of the gates' maps, each upsampled to the model input and normalised to unit sum.
///
/// The arithmetic, and its order, is exactly that of the first version (kept in
/// `reference` for the tests): per map, bilinear values with negative or non-finite ones
/// zeroed, their sum in pixel order, then `combined += (v / sum) / gates`. Only the
/// allocations are gone (one scratch buffer per thread), the passes are fused, and the
/// divisions are [`Divisor`]'s, which give what `/` gives (a -0.0 pixel adds +0.0 instead,
/// the same to sums that start at +0.0).
fn combine(maps: &[AttentionMap]) -> Vec<f64> {
    let mut combined = vec![0.0; MODEL_PIXELS];
    let gates = maps.len() as f64;
    SCRATCH.with_borrow_mut(|scratch| {
        let Scratch {
            rows,
            maps: upsampled,
            ..
        } = scratch;
        if upsampled.len() < maps.len() {
            upsampled.resize_with(maps.len(), Vec::new);
        }
        let upsampled = &mut upsampled[..maps.len()];
        for (map, up) in maps.iter().zip(upsampled.iter_mut()) {
            bilinear_into(&map.values, map.side, MODEL_SIZE, rows, up);
        }
        for (up, sum) in upsampled.iter().zip(sums_in_order(upsampled)) {
            if sum > 0.0 {
                match (Divisor::new(sum), Divisor::new(gates)) {
                    (Some(by_sum), Some(by_gates)) => {
                        for (c, &v) in combined.iter_mut().zip(up.iter()) {
                            *c += by_gates.divide(by_sum.divide(v));
                        }
                    }
                    // A sum out of the shortcut's range, which float32 maps cannot make.
                    _ => {
                        for (c, &v) in combined.iter_mut().zip(up.iter()) {
                            *c += v / sum / gates;
                        }
                    }
                }
            } else {
                let uniform = 1.0 / up.len() as f64;
                for c in combined.iter_mut() {
                    *c += uniform / gates;
                }
            }
        }
    });
    combined
}

/// Each map's sum, its values added in order (as `Iterator::sum` does). Each sum is a chain
/// of additions that each wait for the one before, so four maps' chains run side by side
/// (a group of fewer maps repeats its first to fill the lanes).
fn sums_in_order(maps: &[Vec<f64>]) -> Vec<f64> {
    const LANES: usize = 4;
    let mut sums = Vec::with_capacity(maps.len());
    for group in maps.chunks(LANES) {
        let lanes: [&[f64]; LANES] =
            std::array::from_fn(|lane| group.get(lane).unwrap_or(&group[0]).as_slice());
        let len = lanes.iter().map(|m| m.len()).min().unwrap_or(0);
        let lanes = lanes.map(|m| &m[..len]);
        let mut acc = [-0.0f64; LANES];
        for i in 0..len {
            for (a, m) in acc.iter_mut().zip(lanes) {
                *a += m[i];
            }
        }
        sums.extend_from_slice(&acc[..group.len()]);
    }
    sums
}

thread_local! {
    /// The combined map's buffers, reused across calls.
    static SCRATCH: std::cell::RefCell<Scratch> = const { std::cell::RefCell::new(Scratch::new()) };
    /// zstd compression contexts by level: creating one costs more than compressing 900 bytes.
    static COMPRESSORS: std::cell::RefCell<Vec<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Scales a map to unit sum, negative and non-finite values counting as zero; a map with
/// nothing left becomes uniform.
fn unit_sum(mut map: Vec<f64>) -> Vec<f64> {
    for v in &mut map {
        if !v.is_finite() || *v < 0.0 {
            *v = 0.0;
        }
    }
    let sum: f64 = map.iter().sum();
    let n = map.len() as f64;
    for v in &mut map {
        *v = if sum > 0.0 { *v / sum } else { 1.0 / n };
    }
    map
}

/// Buffers of [`separable_cells`] (each cell row's share of every source column, one gate's
/// cells, the emission pixels' indices, the bands by side and grid) and of [`combine`] (the
/// source rows resized along x, each gate's upsampled map).
struct Scratch {
    partial: Vec<f64>,
    gate_cells: Vec<f64>,
    emission: Vec<usize>,
    bands: Vec<Band>,
    rows: Vec<f64>,
    maps: Vec<Vec<f64>>,
}

impl Scratch {
    const fn new() -> Self {
        Self {
            partial: Vec::new(),
            gate_cells: Vec::new(),
            emission: Vec::new(),
            bands: Vec::new(),
            rows: Vec::new(),
            maps: Vec::new(),
        }
    }
}

/// Bilinear resize of a square map from `side` to `out` as PyTorch's
/// `F.interpolate(mode="bilinear", align_corners=False)` does it (zeroing as
/// [`bilinear_into`]).
#[cfg(test)]
fn bilinear(values: &[f32], side: usize, out: usize) -> Vec<f64> {
    let (mut rows, mut resized) = (Vec::new(), Vec::new());
    bilinear_into(values, side, out, &mut rows, &mut resized);
    resized
}

/// The bilinear resize (PyTorch's `align_corners=False`) into `resized`, each value
/// that is negative or not finite written as zero (the `unit_sum` rule).
///
/// Separable: every source row is resized along x once (`side` rows, not two per output
/// row), then each output row mixes two of them. The arithmetic per value, and its order,
/// is the same as interpolating each output pixel from its four neighbours.
///
/// A map already at the output size whose values are all finite is copied: its weights
/// are 1 and 0, so interpolating gives each value back, but for the sign of a zero, which
/// nothing downstream sees (a zero's sign moves no sum that is not zero, an all-zero map is
/// uniform either way, and the combined map starts at +0.0). A non-finite neighbour would
/// turn its weight 0 into NaN, so such a map takes the general path.
fn bilinear_into(
    values: &[f32],
    side: usize,
    out: usize,
    rows: &mut Vec<f64>,
    resized: &mut Vec<f64>,
) {
    resized.clear();
    if side == out && values.iter().all(|v| v.is_finite()) {
        resized.extend(values.iter().map(|&v| f64::from(v).max(0.0)));
        return;
    }
    let taps = bilinear_taps(side, out);
    rows.clear();
    rows.reserve(side * out);
    for row in values.chunks_exact(side) {
        rows.extend(
            taps.iter()
                .map(|&(x0, x1, wx)| f64::from(row[x0]) * (1.0 - wx) + f64::from(row[x1]) * wx),
        );
    }
    resized.reserve(out * out);
    for &(y0, y1, wy) in &taps {
        let (top, bottom) = (&rows[y0 * out..][..out], &rows[y1 * out..][..out]);
        resized.extend(top.iter().zip(bottom).map(|(&top, &bottom)| {
            let v = top * (1.0 - wy) + bottom * wy;
            // `!finite || v < 0` becomes 0; -0.0 stays -0.0 as it did.
            if v.is_finite() && v >= 0.0 { v } else { 0.0 }
        }));
    }
}

/// For each output index: the two source indices and the weight of the second.
fn bilinear_taps(side: usize, out: usize) -> Vec<(usize, usize, f64)> {
    let scale = side as f64 / out as f64;
    (0..out)
        .map(|i| {
            let src = ((i as f64 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(side - 1);
            let i1 = (i0 + 1).min(side - 1);
            (i0, i1, src - i0 as f64)
        })
        .collect()
}

/// Sums a square `side` x `side` map into `grid` x `grid` cells, splitting pixels that
/// straddle a cell border by area, so the cells sum to what the map sums to.
fn area_sum(map: &[f64], side: usize, grid: usize) -> Vec<f64> {
    let weights = area_weights(side, grid);
    let mut cells = vec![0.0; grid * grid];
    for (cy, wy) in weights.iter().enumerate() {
        for (cx, wx) in weights.iter().enumerate() {
            let mut sum = 0.0;
            for &(y, fy) in wy {
                let row = &map[y * side..][..side];
                sum += fy * wx.iter().map(|&(x, fx)| fx * row[x]).sum::<f64>();
            }
            cells[cy * grid + cx] = sum;
        }
    }
    cells
}

/// For each of `grid` cells along an axis of `side` pixels: the pixels it covers, each
/// with the fraction of its width inside the cell (a pixel's fractions add up to 1).
fn area_weights(side: usize, grid: usize) -> Vec<Vec<(usize, f64)>> {
    let cell_width = side as f64 / grid as f64;
    (0..grid)
        .map(|cell| {
            let (lo, hi) = (cell as f64 * cell_width, (cell + 1) as f64 * cell_width);
            (lo.floor() as usize..(hi.ceil() as usize).min(side))
                .map(|p| (p, (hi.min(p as f64 + 1.0) - lo.max(p as f64)).max(0.0)))
                .filter(|&(_, w)| w > 0.0)
                .collect()
        })
        .collect()
}

/// Quantises non-negative values to u8 with `scale = max / 255` and compresses them.
fn encode(values: &[f64], level: i32) -> Result<(Vec<u8>, f32), SummaryError> {
    let max = values.iter().copied().fold(0.0, f64::max);
    let scale = (max / 255.0) as f32;
    let quantised: Vec<u8> = if scale > 0.0 {
        values
            .iter()
            .map(|&v| (v / f64::from(scale)).round().clamp(0.0, 255.0) as u8)
            .collect()
    } else {
        vec![0; values.len()]
    };
    let compressed = COMPRESSORS.with_borrow_mut(|compressors| {
        let at = match compressors.iter().position(|(l, _)| *l == level) {
            Some(at) => at,
            None => {
                compressors.push((level, zstd::bulk::Compressor::new(level)?));
                compressors.len() - 1
            }
        };
        compressors[at].1.compress(&quantised)
    });
    Ok((compressed.map_err(SummaryError::Compress)?, scale))
}

/// Indices of the cells above zero that are local maxima among their 8 neighbours,
/// strongest first. On a plateau, a cell beats equal neighbours that come later in row
/// order, so a flat top yields one peak.
fn local_maxima(cells: &[f64], grid: usize) -> Vec<usize> {
    let beats = |a: usize, b: usize| cells[a] > cells[b] || (cells[a] == cells[b] && a < b);
    let mut peaks = Vec::new();
    for (i, &v) in cells.iter().enumerate() {
        if v <= 0.0 || v.is_nan() {
            continue;
        }
        let (y, x) = (i / grid, i % grid);
        let columns = x.saturating_sub(1)..(x + 2).min(grid);
        let peak = (y.saturating_sub(1)..(y + 2).min(grid)).all(|ny| {
            columns
                .clone()
                .map(|nx| ny * grid + nx)
                .all(|n| n == i || beats(i, n))
        });
        if peak {
            peaks.push(i);
        }
    }
    peaks.sort_by(|&a, &b| cells[b].total_cmp(&cells[a]).then(a.cmp(&b)));
    peaks
}

#[cfg(test)]
mod reference;

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A flat-sky projection for tests (1.8 arcsec pixels, cutout centre at (10, 20)
    /// degrees) that records the pixels it is asked about.
    #[derive(Debug, Default)]
    struct TestSky {
        asked: Mutex<Vec<(f64, f64)>>,
    }

    impl SkyProjection for TestSky {
        fn pixel_to_sky(&self, x: f64, y: f64) -> Option<(f64, f64)> {
            self.asked.lock().expect("test lock").push((x, y));
            let centre = (CUTOUT_SIZE as f64 - 1.0) / 2.0;
            Some((10.0 - (x - centre) * 0.0005, 20.0 + (y - centre) * 0.0005))
        }
    }

    fn config(grid: u32) -> SummaryConfig {
        SummaryConfig {
            grid,
            zstd_level: 3,
            per_gate_maps: false,
        }
    }

    fn prepared(emission: impl Fn(usize, usize) -> bool) -> Prepared {
        Prepared {
            input: vec![0.0; MODEL_PIXELS],
            image_u8: vec![0; MODEL_PIXELS],
            emission: (0..MODEL_PIXELS)
                .map(|i| emission(i % MODEL_SIZE, i / MODEL_SIZE))
                .collect(),
            rms: 1.0,
            threshold: 3.0,
            shape: Default::default(),
        }
    }

    fn map(side: usize, f: impl Fn(usize, usize) -> f32) -> AttentionMap {
        AttentionMap {
            side,
            values: (0..side * side).map(|i| f(i % side, i / side)).collect(),
        }
    }

    fn output(maps: Vec<AttentionMap>) -> ModelOutput {
        ModelOutput {
            probs: [0.3, 0.7],
            attention: maps,
        }
    }

    /// A smooth bump of height `h` centred on pixel (cx, cy).
    fn bump(x: usize, y: usize, cx: f32, cy: f32, h: f32) -> f32 {
        let d2 = (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2);
        h * (-d2 / 50.0).exp()
    }

    /// The optimised summary is the first version's, bit for bit: random maps of every
    /// gate shape the model has and some it has not, with negative, non-finite and all-zero
    /// maps (and full-size maps with negatives and signed zeros but nothing non-finite),
    /// over several grids, zstd levels and with per-gate maps; then 100 cases of maps as
    /// sigmoid gates give them, which take `separable_cells`. Those leave out maps of 2
    /// and 10 pixels on a side: upsampled, they are plateaus of cells that tie exactly,
    /// where `separable_cells`'s ulps may make another of the tied cells the peak.
    #[test]
    fn summary_is_identical_to_the_reference_implementation() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let sky = TestSky::default();
        let (mut cases, mut separable) = (0, 0);
        for case in 0..160 {
            // From case 60 on, every map is what sigmoid gates give (finite, non-negative),
            // which takes `separable_cells`: random values, or smooth bumps through a
            // sigmoid with a little noise.
            let gated = case >= 60;
            let sides: &[usize] = match case % 4 {
                0 => &[37, 75, 150],
                1 if gated => &[5, 12, 40],
                1 => &[1, 2, 10],
                2 => &[150],
                _ => &[37, 75, 150, 19],
            };
            let maps: Vec<AttentionMap> = sides
                .iter()
                .enumerate()
                .map(|(k, &side)| {
                    let values: Vec<f64> = (0..side * side).map(|_| next()).collect();
                    map(side, |x, y| {
                        let r = values[y * side + x];
                        match (case + k) % 5 {
                            _ if gated && case % 2 == 0 => (r * r * 3.0) as f32,
                            _ if gated => {
                                let b = bump(x, y, side as f32 * 0.4, side as f32 * 0.55, 8.0);
                                1.0 / (1.0 + (4.0 - b - r as f32).exp())
                            }
                            // all zero: a uniform map
                            0 if case % 3 == 0 => 0.0,
                            // some negatives and non-finite values
                            1 if r < 0.05 => f32::NAN,
                            1 if r < 0.08 => f32::INFINITY,
                            1 if r < 0.2 => -(r as f32),
                            // negatives and signed zeros, all finite
                            2 if r < 0.1 => -(r as f32),
                            2 if r < 0.15 => -0.0,
                            2 if r < 0.2 => 0.0,
                            _ => (r * r * 3.0) as f32,
                        }
                    })
                })
                .collect();
            let emission = (case % 7) as f64 / 7.0;
            let mask: Vec<bool> = (0..MODEL_PIXELS).map(|_| next() < emission).collect();
            let prepared = prepared(|x, y| mask[y * MODEL_SIZE + x]);
            let out = output(maps);
            if separable_cells(&out.attention, 30, &prepared.emission).is_some() {
                separable += 1;
            }
            for (grid, level, per_gate) in [
                (30, 3, false),
                (7, 3, true),
                (150, -1, false),
                (1, 19, true),
            ] {
                let cfg = SummaryConfig {
                    grid,
                    zstd_level: level,
                    per_gate_maps: per_gate,
                };
                let ours = attention_summary(&prepared, &out, &sky, &cfg).expect("summary");
                let theirs =
                    reference::attention_summary(&prepared, &out, &sky, &cfg).expect("reference");
                assert_eq!(ours, theirs, "case {case}, grid {grid}, level {level}");
                assert_eq!(ours.scale.to_bits(), theirs.scale.to_bits());
                assert_eq!(
                    ours.on_emission_fraction.to_bits(),
                    theirs.on_emission_fraction.to_bits()
                );
                cases += 1;
            }
        }
        assert_eq!(cases, 640);
        assert!(
            separable >= 100,
            "{separable} cases took the separable path"
        );
    }

    /// The same with the shipped model's own gates: its three maps for the 16 bundled
    /// MiraBest images, each with its own emission (its pixels above 0), at grids 30, 7 and
    /// 150 with the per-gate maps.
    #[tokio::test]
    async fn summary_of_the_models_gates_is_the_reference_one() {
        use crate::infer::{Inference, testing};
        let (inference, _) =
            Inference::start(&testing::test_config(1)).expect("the test model starts");
        let sample = testing::mirabest_sample();
        let outputs = inference
            .infer(sample.iter().map(|s| s.input()).collect())
            .await
            .expect("batch runs");
        let sky = TestSky::default();
        for (image, out) in sample.iter().zip(&outputs) {
            assert!(separable_cells(&out.attention, 30, &vec![false; MODEL_PIXELS]).is_some());
            let prepared = prepared(|x, y| image.image_u8[y * MODEL_SIZE + x] > 0);
            for grid in [30, 7, 150] {
                let cfg = SummaryConfig {
                    grid,
                    zstd_level: 3,
                    per_gate_maps: true,
                };
                let ours = attention_summary(&prepared, out, &sky, &cfg).expect("summary");
                let theirs =
                    reference::attention_summary(&prepared, out, &sky, &cfg).expect("reference");
                assert_eq!(ours, theirs);
                assert_eq!(ours.scale.to_bits(), theirs.scale.to_bits());
                assert_eq!(
                    ours.on_emission_fraction.to_bits(),
                    theirs.on_emission_fraction.to_bits()
                );
            }
        }
        inference.join();
    }

    #[test]
    fn verdict_picks_the_likelier_label_with_its_entropy() {
        let (label, confidence, entropy) = verdict([0.2, 0.8]);
        assert_eq!(label, proto::Label::Frii);
        assert_eq!(confidence, 0.8);
        let want = -(0.2f64 * 0.2f64.log2() + 0.8 * 0.8f64.log2());
        assert!(
            (f64::from(entropy) - want).abs() < 1e-6,
            "{entropy} vs {want}"
        );

        assert_eq!(verdict([0.9, 0.1]).0, proto::Label::Fri);
        assert_eq!(verdict([1.0, 0.0]), (proto::Label::Fri, 1.0, 0.0));
        assert_eq!(verdict([0.0, 1.0]), (proto::Label::Frii, 1.0, 0.0));
        assert_eq!(verdict([0.5, 0.5]), (proto::Label::Fri, 0.5, 1.0));
        let (label, confidence, entropy) = verdict([f32::NAN, 0.5]);
        assert_eq!(label, proto::Label::Unspecified);
        assert!(confidence.is_nan() && entropy.is_nan());
    }

    #[test]
    fn bilinear_matches_pytorch_align_corners_false() {
        // F.interpolate(torch.tensor([[[[1., 5.], [3., 7.]]]]), size=4, mode="bilinear",
        // align_corners=False)[0, 0, 0] == [1, 2, 4, 5]
        let up = bilinear(&[1.0, 5.0, 3.0, 7.0], 2, 4);
        assert_eq!(&up[..4], &[1.0, 2.0, 4.0, 5.0]);
        assert_eq!(&up[12..], &[3.0, 4.0, 6.0, 7.0]);
        // A map already at the output size is left as it is.
        let values: Vec<f32> = (0..9).map(|v| v as f32).collect();
        assert_eq!(
            bilinear(&values, 3, 3),
            values.iter().map(|&v| f64::from(v)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn area_sum_keeps_the_total_for_grids_that_do_not_divide_150() {
        let map: Vec<f64> = (0..MODEL_PIXELS).map(|i| (i % 7) as f64).collect();
        let total: f64 = map.iter().sum();
        for grid in [1, 7, 32, 50, 149, 150] {
            let cells = area_sum(&map, MODEL_SIZE, grid);
            let sum: f64 = cells.iter().sum();
            assert!(
                (sum - total).abs() < 1e-9 * total,
                "grid {grid}: {sum} vs {total}"
            );
        }
        // Uniform pixels give equal cells when the grid divides the side.
        let cells = area_sum(&vec![1.0; MODEL_PIXELS], MODEL_SIZE, 50);
        assert!(cells.iter().all(|&c| (c - 9.0).abs() < 1e-12));
    }

    #[test]
    fn quantised_map_decodes_within_half_a_step() {
        let gates = vec![
            map(37, |x, y| ((x * 7 + y * 3) % 11) as f32 / 10.0),
            map(75, |x, y| bump(x, y, 20.0, 50.0, 1.0)),
            map(150, |x, y| if (x + y) % 5 == 0 { 0.9 } else { 0.1 }),
        ];
        let out = output(gates);
        let summary = attention_summary(
            &prepared(|_, _| false),
            &out,
            &TestSky::default(),
            &config(50),
        )
        .expect("summary");
        let exact = area_sum(&combine(&out.attention), MODEL_SIZE, 50);
        let decoded = decode_map(&summary).expect("decodes");
        assert_eq!(decoded.len(), 2500);
        let half_step = f64::from(summary.scale) / 2.0;
        for (d, e) in decoded.iter().zip(&exact) {
            assert!(
                (f64::from(*d) - e).abs() <= half_step * (1.0 + 1e-5),
                "{d} vs {e}"
            );
        }
        let total: f64 = exact.iter().sum();
        assert!((total - 1.0).abs() < 1e-9, "combined map sums to {total}");
        let max = exact.iter().copied().fold(0.0, f64::max);
        assert!((f64::from(summary.scale) * 255.0 - max).abs() < 1e-6 * max);
    }

    #[test]
    fn peaks_are_the_strongest_local_maxima_with_sky_positions() {
        // Three bumps of falling height on a 150x150 gate, a fourth weaker one.
        let gate = map(150, |x, y| {
            bump(x, y, 100.0, 40.0, 1.0)
                + bump(x, y, 31.0, 121.0, 0.8)
                + bump(x, y, 70.0, 76.0, 0.6)
                + bump(x, y, 130.0, 130.0, 0.3)
        });
        let sky = TestSky::default();
        let summary = attention_summary(
            &prepared(|_, _| false),
            &output(vec![gate]),
            &sky,
            &config(50),
        )
        .expect("summary");
        let at: Vec<(f32, f32)> = summary.peaks.iter().map(|p| (p.x, p.y)).collect();
        // Cell centres of the cells holding (100, 40), (31, 121) and (70, 76).
        assert_eq!(at, vec![(100.0, 40.0), (31.0, 121.0), (70.0, 76.0)]);
        assert!(summary.peaks.windows(2).all(|w| w[0].weight > w[1].weight));
        // Sky positions are those of the cutout pixel 75 px further on each axis.
        let asked = sky.asked.lock().expect("test lock").clone();
        assert_eq!(asked, vec![(175.0, 115.0), (106.0, 196.0), (145.0, 151.0)]);
        let (ra, dec) = sky.pixel_to_sky(175.0, 115.0).expect("on sky");
        assert_eq!(
            (summary.peaks[0].ra_deg, summary.peaks[0].dec_deg),
            (ra, dec)
        );
    }

    #[test]
    fn peaks_of_a_flat_map_and_off_sky_positions() {
        #[derive(Debug)]
        struct NoSky;
        impl SkyProjection for NoSky {
            fn pixel_to_sky(&self, _: f64, _: f64) -> Option<(f64, f64)> {
                None
            }
        }
        // A uniform map (here: all zeros, which counts as uniform) has one peak, the first
        // cell, and off the projection its sky position is NaN.
        let summary = attention_summary(
            &prepared(|_, _| false),
            &output(vec![map(37, |_, _| 0.0)]),
            &NoSky,
            &config(50),
        )
        .expect("summary");
        assert_eq!(summary.peaks.len(), 1);
        assert_eq!((summary.peaks[0].x, summary.peaks[0].y), (1.0, 1.0));
        assert!(summary.peaks[0].ra_deg.is_nan() && summary.peaks[0].dec_deg.is_nan());
        assert!((summary.peaks[0].weight - 1.0 / 2500.0).abs() < 1e-9);
    }

    #[test]
    fn on_emission_fraction_counts_attention_on_emission_pixels() {
        // Attention only on the left half; emission on the left quarter (x < 37) and on
        // the whole top row band y >= 140 (half of which is in the attended half).
        let gate = map(150, |x, _| if x < 75 { 1.0 } else { 0.0 });
        let emission = prepared(|x, y| x < 37 || y >= 140);
        let summary = attention_summary(
            &emission,
            &output(vec![gate]),
            &TestSky::default(),
            &config(50),
        )
        .expect("summary");
        let want = (37.0 * 140.0 + 75.0 * 10.0) / (75.0 * 150.0);
        assert!(
            (f64::from(summary.on_emission_fraction) - want).abs() < 1e-6,
            "{}",
            summary.on_emission_fraction
        );

        // Uniform attention: the fraction is the share of emission pixels.
        let gate = map(75, |_, _| 0.5);
        let summary = attention_summary(
            &emission,
            &output(vec![gate]),
            &TestSky::default(),
            &config(50),
        )
        .expect("summary");
        let want = (37.0 * 140.0 + 150.0 * 10.0) / MODEL_PIXELS as f64;
        assert!((f64::from(summary.on_emission_fraction) - want).abs() < 1e-6);
    }

    #[test]
    fn gates_are_averaged_after_each_is_normalised() {
        // Gate 1 puts all its attention on the left half, gate 2 on the right half, with
        // very different magnitudes: each half still gets half of the combined attention.
        let left = map(150, |x, _| if x < 75 { 100.0 } else { 0.0 });
        let right = map(75, |x, _| if x >= 38 { 0.01 } else { 0.0 });
        let summary = attention_summary(
            &prepared(|x, _| x < 75),
            &output(vec![left, right]),
            &TestSky::default(),
            &config(50),
        )
        .expect("summary");
        assert!(
            (summary.on_emission_fraction - 0.5).abs() < 0.01,
            "{}",
            summary.on_emission_fraction
        );
    }

    #[test]
    fn per_gate_maps_only_when_configured() {
        let out = output(vec![map(37, |x, _| x as f32), map(75, |_, y| y as f32)]);
        let p = prepared(|_, _| false);
        let without =
            attention_summary(&p, &out, &TestSky::default(), &config(50)).expect("summary");
        assert!(without.gates.is_empty());
        let cfg = SummaryConfig {
            per_gate_maps: true,
            ..config(50)
        };
        let with = attention_summary(&p, &out, &TestSky::default(), &cfg).expect("summary");
        assert_eq!(with.gates.len(), 2);
        let g2 = &with.gates[1];
        assert_eq!((g2.gate, g2.width, g2.height), (2, 75, 75));
        let decoded = decode_gate_map(g2).expect("gate map decodes");
        assert_eq!(decoded.len(), 75 * 75);
        // Row y holds y / sum(all rows): the top row is the largest.
        let total: f64 = (0..75).map(|y| 75.0 * y as f64).sum();
        let top = 74.0 / total;
        assert!((f64::from(decoded[74 * 75]) - top).abs() <= f64::from(g2.scale) / 2.0 + 1e-9);
    }

    #[test]
    fn bad_shapes_and_grids_are_errors_not_panics() {
        let p = prepared(|_, _| false);
        let sky = TestSky::default();
        let good = output(vec![map(37, |_, _| 1.0)]);
        assert!(matches!(
            attention_summary(&p, &good, &sky, &config(0)),
            Err(SummaryError::Grid(0))
        ));
        assert!(matches!(
            attention_summary(&p, &good, &sky, &config(151)),
            Err(SummaryError::Grid(151))
        ));
        let short = output(vec![AttentionMap {
            side: 37,
            values: vec![1.0; 10],
        }]);
        assert!(matches!(
            attention_summary(&p, &short, &sky, &config(50)),
            Err(SummaryError::MapShape { gate: 1, .. })
        ));
        assert!(matches!(
            attention_summary(&p, &output(vec![]), &sky, &config(50)),
            Err(SummaryError::NoMaps)
        ));
        let small = Prepared {
            emission: vec![true; 10],
            ..p
        };
        assert!(matches!(
            attention_summary(&small, &good, &sky, &config(50)),
            Err(SummaryError::Emission(10))
        ));
    }

    #[test]
    fn corrupt_or_oversized_maps_do_not_decode() {
        let summary = attention_summary(
            &prepared(|_, _| false),
            &output(vec![map(37, |x, _| x as f32)]),
            &TestSky::default(),
            &config(50),
        )
        .expect("summary");
        let truncated = proto::AttentionSummary {
            map_zstd: summary.map_zstd[..summary.map_zstd.len() / 2].to_vec(),
            ..summary.clone()
        };
        assert!(matches!(
            decode_map(&truncated),
            Err(DecodeError::Decompress(_))
        ));
        let smaller_grid = proto::AttentionSummary {
            grid: 49,
            ..summary.clone()
        };
        assert!(
            decode_map(&smaller_grid).is_err(),
            "2500 cells do not fit a 49x49 map"
        );
        let larger_grid = proto::AttentionSummary {
            grid: 51,
            ..summary
        };
        assert!(matches!(
            decode_map(&larger_grid),
            Err(DecodeError::Size {
                got: 2500,
                want: 2601
            })
        ));
    }
}
