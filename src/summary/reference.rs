//! The attention summary exactly as it was before the hot-path work (commit 28e50e4), kept
//! only to pin the optimised code to it: results must stay bit for bit the same.

use super::{CROP_OFFSET, PEAKS, SummaryError, local_maxima};
use crate::config::SummaryConfig;
use crate::domain::MODEL_PIXELS as PIXELS;
use crate::domain::{AttentionMap, MODEL_SIZE, ModelOutput, Prepared, SkyProjection};
use crate::proto;

/// Builds the attention summary of one image (see the module docs for the combined map).
/// Peaks are the cells that are local maxima (8 neighbours) of the combined map, strongest
/// first; their position is the cell's centre in model-input pixels, and their sky position
/// that pixel's through `sky` (NaN where it is off the projection).
pub(super) fn attention_summary(
    prepared: &Prepared,
    output: &ModelOutput,
    sky: &dyn SkyProjection,
    cfg: &SummaryConfig,
) -> Result<proto::AttentionSummary, SummaryError> {
    let grid = usize::try_from(cfg.grid)
        .ok()
        .filter(|g| (1..=MODEL_SIZE).contains(g))
        .ok_or(SummaryError::Grid(cfg.grid))?;
    if prepared.emission.len() != PIXELS {
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

    let combined = combine(&output.attention);
    let cells = area_sum(&combined, MODEL_SIZE, grid);
    let (map_zstd, scale) = encode(&cells, cfg.zstd_level)?;

    let on_emission: f64 = combined
        .iter()
        .zip(&prepared.emission)
        .filter(|(_, e)| **e)
        .map(|(v, _)| v)
        .sum();

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

/// Mean of the gates' maps, each upsampled to the model input and normalised to unit sum.
fn combine(maps: &[AttentionMap]) -> Vec<f64> {
    let mut combined = vec![0.0; PIXELS];
    for map in maps {
        let upsampled = unit_sum(bilinear(&map.values, map.side, MODEL_SIZE));
        for (c, v) in combined.iter_mut().zip(upsampled) {
            *c += v / maps.len() as f64;
        }
    }
    combined
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

/// Bilinear resize of a square map from `side` to `out` as PyTorch's
/// `F.interpolate(mode="bilinear", align_corners=False)` does it.
fn bilinear(values: &[f32], side: usize, out: usize) -> Vec<f64> {
    let taps = bilinear_taps(side, out);
    let mut resized = Vec::with_capacity(out * out);
    for &(y0, y1, wy) in &taps {
        let (row0, row1) = (&values[y0 * side..][..side], &values[y1 * side..][..side]);
        for &(x0, x1, wx) in &taps {
            let top = f64::from(row0[x0]) * (1.0 - wx) + f64::from(row0[x1]) * wx;
            let bottom = f64::from(row1[x0]) * (1.0 - wx) + f64::from(row1[x1]) * wx;
            resized.push(top * (1.0 - wy) + bottom * wy);
        }
    }
    resized
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
    // weights[cell] = (pixel, fraction of that pixel's width inside the cell)
    let cell_width = side as f64 / grid as f64;
    let weights: Vec<Vec<(usize, f64)>> = (0..grid)
        .map(|cell| {
            let (lo, hi) = (cell as f64 * cell_width, (cell + 1) as f64 * cell_width);
            (lo.floor() as usize..(hi.ceil() as usize).min(side))
                .map(|p| (p, (hi.min(p as f64 + 1.0) - lo.max(p as f64)).max(0.0)))
                .filter(|&(_, w)| w > 0.0)
                .collect()
        })
        .collect();
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
    let compressed = zstd::bulk::compress(&quantised, level).map_err(SummaryError::Compress)?;
    Ok((compressed, scale))
}
