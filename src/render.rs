//! Pictures of one classified source for people: the image the model saw with an asinh
//! stretch, the attention map as a translucent heat map (inferno), emission contours, and
//! text. Pure Rust (`image`, `imageproc`, `colorous`, `contour`, a bundled DejaVu Sans).
//!
//! It owns pixels-to-picture only: it never reads files, runs the model or decodes results
//! (`explain` and the HTML report sink do, and hand it plain arrays).
//!
//! Every array here is square and row-major with row 0 the lowest pixel y, as in FITS and
//! the model input; pictures are drawn the way astronomers look at them, north (high y) up,
//! so row 0 ends up at the bottom.

use ab_glyph::{FontRef, PxScale};
use image::{ImageEncoder, Rgb, RgbImage};
use imageproc::drawing::{draw_filled_rect_mut, draw_line_segment_mut, draw_text_mut, text_size};
use imageproc::rect::Rect;

/// DejaVu Sans (Bitstream Vera licence, `assets/fonts/DejaVu-LICENSE.txt`).
const FONT_BYTES: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
/// Opacity of the heat map where attention is strongest; weaker attention fades (as the
/// square of its share of the peak) to transparent, so the image shows through where the
/// model did not look.
pub const HEAT_ALPHA: f32 = 0.6;
/// Colour of emission contours: cyan stands out on grey and on every inferno colour.
pub const CONTOUR_COLOUR: Rgb<u8> = Rgb([80, 230, 255]);
/// Background of text bands.
pub const BACKGROUND: Rgb<u8> = Rgb([20, 20, 24]);
pub const TEXT_COLOUR: Rgb<u8> = Rgb([235, 235, 235]);

/// Why a picture could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{what} has {len} values, expected {side}x{side}")]
    Shape {
        what: &'static str,
        len: usize,
        side: usize,
    },
    #[error("contours: {0}")]
    Contour(String),
    #[error("PNG encoding failed: {0}")]
    Png(#[from] image::ImageError),
    #[error("the bundled font does not load")]
    Font,
}

/// An asinh stretch: `asinh(v / soft) / asinh(max / soft)` on `[0, max]`, to 0..255.
/// Values at or below zero (and NaN) are black, values at or above `max` white; `soft`
/// (about the noise level) is where the stretch turns from linear to logarithmic, so faint
/// emission stays visible beside a bright core.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stretch {
    pub soft: f32,
    pub max: f32,
}

impl Stretch {
    /// A stretch for `values`: up to their largest finite value, softened at `soft`
    /// (a non-positive or non-finite `soft` becomes 1% of that maximum).
    pub fn for_values(values: &[f32], soft: f32) -> Stretch {
        let max = values
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .fold(0.0f32, f32::max);
        let soft = if soft.is_finite() && soft > 0.0 {
            soft
        } else {
            (max * 0.01).max(f32::MIN_POSITIVE)
        };
        Stretch { soft, max }
    }

    /// The grey level of one value.
    pub fn grey(&self, v: f32) -> u8 {
        // NaN fails every comparison, so it is black too.
        let positive = |x: f32| x > 0.0;
        if !(positive(v) && positive(self.max) && positive(self.soft)) {
            return 0;
        }
        let t = (f64::from(v) / f64::from(self.soft)).asinh()
            / (f64::from(self.max) / f64::from(self.soft)).asinh();
        (t.clamp(0.0, 1.0) * 255.0).round() as u8
    }
}

/// The inferno colour of `t` in [0, 1] (clamped; NaN is the colour of 0).
pub fn heat_colour(t: f32) -> Rgb<u8> {
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
    let c = colorous::INFERNO.eval_continuous(f64::from(t));
    Rgb([c.r, c.g, c.b])
}

/// A contour line: points in pixel-edge coordinates.
pub type Polyline = Vec<(f64, f64)>;

/// Isolines of a square `side` x `side` field at each level (marching squares): one list
/// of polylines per level, in pixel-edge coordinates (pixel (i, j) spans x in [i, i+1],
/// y in [j, j+1]). The field's border counts as below every level, so lines close there.
/// NaN counts as below every level too.
pub fn contour_lines(
    field: &[f32],
    side: usize,
    levels: &[f32],
) -> Result<Vec<Vec<Polyline>>, RenderError> {
    check(field, side, "contour field")?;
    if levels.is_empty() {
        return Ok(Vec::new());
    }
    let values: Vec<f64> = field
        .iter()
        .map(|&v| {
            if v.is_finite() {
                f64::from(v)
            } else {
                f64::MIN
            }
        })
        .collect();
    let thresholds: Vec<f64> = levels.iter().map(|&l| f64::from(l)).collect();
    let lines = contour::ContourBuilder::new(side, side, true)
        .lines(&values, &thresholds)
        .map_err(|e| RenderError::Contour(format!("{e:?}")))?;
    Ok(lines
        .iter()
        .map(|line| {
            line.geometry()
                .0
                .iter()
                .map(|ls| ls.0.iter().map(|c| (c.x, c.y)).collect())
                .collect()
        })
        .collect())
}

/// Contour levels at `threshold` times 1, 2, 4, 8, ... up to `max` (at most 8 levels);
/// empty when the threshold is not positive.
pub fn doubling_levels(threshold: f32, max: f32) -> Vec<f32> {
    if !(threshold.is_finite() && threshold > 0.0) {
        return Vec::new();
    }
    (0..8)
        .map(|k| threshold * (1u32 << k) as f32)
        .take_while(|&l| l < max)
        .collect()
}

/// A map over the image (attention): `side` x `side` cells covering the whole image.
#[derive(Debug, Clone, Copy)]
pub struct Map<'a> {
    pub values: &'a [f32],
    pub side: usize,
}

/// What one panel shows.
#[derive(Debug, Clone)]
pub struct Scene<'a> {
    /// The image, `side` x `side`.
    pub image: &'a [f32],
    pub side: usize,
    pub stretch: Stretch,
    /// The heat map, scaled to its own maximum.
    pub attention: Option<Map<'a>>,
    /// A field on the image's pixels (often the image itself) and the levels to contour.
    pub contours: Option<(&'a [f32], Vec<f32>)>,
}

/// Draws `scene` as a `size` x `size` picture: the stretched image (nearest pixel), the
/// heat map (bilinear between cell centres, alpha rising with attention up to
/// [`HEAT_ALPHA`] with the square of the attention), then the contours.
pub fn panel(scene: &Scene<'_>, size: u32) -> Result<RgbImage, RenderError> {
    let side = scene.side;
    check(scene.image, side, "image")?;
    if let Some(map) = &scene.attention {
        check(map.values, map.side, "attention map")?;
    }
    let size_f = f64::from(size.max(1));
    let scale = side as f64 / size_f;
    let peak = scene.attention.map(|m| {
        m.values
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .fold(0.0f32, f32::max)
    });
    let mut img = RgbImage::new(size, size);
    for (px, py, pixel) in img.enumerate_pixels_mut() {
        // Image coordinates of the output pixel's centre, y up.
        let x = (f64::from(px) + 0.5) * scale;
        let y = (size_f - f64::from(py) - 0.5) * scale;
        let (ix, iy) = ((x as usize).min(side - 1), (y as usize).min(side - 1));
        let g = scene.stretch.grey(scene.image[iy * side + ix]);
        let mut rgb = [g, g, g];
        if let (Some(map), Some(peak)) = (&scene.attention, peak)
            && peak > 0.0
        {
            let t = (sample_bilinear(map, x / side as f64, y / side as f64) / peak).clamp(0.0, 1.0);
            let alpha = HEAT_ALPHA * t * t;
            let heat = heat_colour(t).0;
            for (c, h) in rgb.iter_mut().zip(heat) {
                *c = (f32::from(*c) * (1.0 - alpha) + f32::from(h) * alpha).round() as u8;
            }
        }
        *pixel = Rgb(rgb);
    }
    if let Some((field, levels)) = &scene.contours {
        let k = size_f / side as f64;
        for level in contour_lines(field, side, levels)? {
            for line in level {
                for pair in line.windows(2) {
                    let to_px = |(x, y): (f64, f64)| ((x * k) as f32, (size_f - y * k) as f32);
                    draw_line_segment_mut(&mut img, to_px(pair[0]), to_px(pair[1]), CONTOUR_COLOUR);
                }
            }
        }
    }
    Ok(img)
}

/// The map's value at fractional image position (u, v) in [0, 1] (y up), bilinear between
/// cell centres, clamped at the border.
fn sample_bilinear(map: &Map<'_>, u: f64, v: f64) -> f32 {
    let n = map.side;
    let at = |c: f64| {
        let c = (c * n as f64 - 0.5).clamp(0.0, (n - 1) as f64);
        let i0 = c.floor() as usize;
        (i0, (i0 + 1).min(n - 1), (c - i0 as f64) as f32)
    };
    let (x0, x1, wx) = at(u);
    let (y0, y1, wy) = at(v);
    let value = |x: usize, y: usize| {
        let v = map.values[y * n + x];
        if v.is_finite() { v.max(0.0) } else { 0.0 }
    };
    let top = value(x0, y0) * (1.0 - wx) + value(x1, y0) * wx;
    let bottom = value(x0, y1) * (1.0 - wx) + value(x1, y1) * wx;
    top * (1.0 - wy) + bottom * wy
}

fn check(values: &[f32], side: usize, what: &'static str) -> Result<(), RenderError> {
    if side == 0 || values.len() != side * side {
        return Err(RenderError::Shape {
            what,
            len: values.len(),
            side,
        });
    }
    Ok(())
}

/// Text drawn with the bundled font.
#[derive(Debug, Clone)]
pub struct Writer {
    font: FontRef<'static>,
}

impl Writer {
    pub fn new() -> Result<Writer, RenderError> {
        Ok(Writer {
            font: FontRef::try_from_slice(FONT_BYTES).map_err(|_| RenderError::Font)?,
        })
    }

    /// Draws one line of text with its top-left corner at (x, y), `height` pixels tall.
    pub fn text(
        &self,
        img: &mut RgbImage,
        text: &str,
        x: i32,
        y: i32,
        height: f32,
        colour: Rgb<u8>,
    ) {
        draw_text_mut(img, colour, x, y, PxScale::from(height), &self.font, text);
    }

    /// Width and height in pixels of `text` at `height`.
    pub fn size(&self, text: &str, height: f32) -> (u32, u32) {
        text_size(PxScale::from(height), &self.font, text)
    }
}

/// Fills a rectangle (clipped to the image).
pub fn fill(img: &mut RgbImage, x: i32, y: i32, w: u32, h: u32, colour: Rgb<u8>) {
    if w > 0 && h > 0 {
        draw_filled_rect_mut(img, Rect::at(x, y).of_size(w, h), colour);
    }
}

/// Copies `src` into `dst` with its top-left corner at (x, y) (clipped).
pub fn paste(dst: &mut RgbImage, src: &RgbImage, x: u32, y: u32) {
    image::imageops::replace(dst, src, i64::from(x), i64::from(y));
}

/// The picture as PNG bytes (best compression: thumbnails travel inside HTML).
pub fn png(img: &RgbImage) -> Result<Vec<u8>, RenderError> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new_with_quality(
        &mut out,
        image::codecs::png::CompressionType::Best,
        image::codecs::png::FilterType::Adaptive,
    )
    .write_image(
        img.as_raw(),
        img.width(),
        img.height(),
        image::ExtendedColorType::Rgb8,
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Gaussian blob of peak `h` at (cx, cy) on a `side` x `side` grid.
    fn blob(side: usize, cx: f32, cy: f32, sigma: f32, h: f32) -> Vec<f32> {
        (0..side * side)
            .map(|i| {
                let (x, y) = ((i % side) as f32, (i / side) as f32);
                h * (-((x - cx).powi(2) + (y - cy).powi(2)) / (2.0 * sigma * sigma)).exp()
            })
            .collect()
    }

    #[test]
    fn asinh_stretch_is_monotonic_black_at_zero_white_at_max_and_lifts_faint_values() {
        let s = Stretch {
            soft: 1.0,
            max: 1000.0,
        };
        assert_eq!(s.grey(0.0), 0);
        assert_eq!(s.grey(-5.0), 0);
        assert_eq!(s.grey(f32::NAN), 0);
        assert_eq!(s.grey(1000.0), 255);
        assert_eq!(s.grey(1e6), 255);
        let greys: Vec<u8> = [0.5, 1.0, 2.0, 10.0, 100.0, 500.0]
            .iter()
            .map(|&v| s.grey(v))
            .collect();
        assert!(greys.windows(2).all(|w| w[0] < w[1]), "{greys:?}");
        // asinh(1)/asinh(1000) = 0.1161: 1% of the maximum... at 0.1% of it.
        assert_eq!(
            s.grey(1.0),
            (0.881_373_6f64 / 7.600_902_5 * 255.0).round() as u8
        );
        // A linear stretch would put 1/1000 of the maximum at grey 0.
        assert!(s.grey(1.0) > 25);

        let auto = Stretch::for_values(&[f32::NAN, 3.0, 7.0, -1.0], 0.0);
        assert_eq!(auto.max, 7.0);
        assert!((auto.soft - 0.07).abs() < 1e-6);
    }

    #[test]
    fn inferno_runs_from_black_to_pale_yellow_with_rising_brightness() {
        let dark = heat_colour(0.0).0;
        let bright = heat_colour(1.0).0;
        assert!(dark.iter().all(|&c| c < 10), "{dark:?}");
        assert!(
            bright[0] > 240 && bright[1] > 240 && bright[2] > 120,
            "{bright:?}"
        );
        let luma = |t: f32| {
            let [r, g, b] = heat_colour(t).0;
            0.299 * f32::from(r) + 0.587 * f32::from(g) + 0.114 * f32::from(b)
        };
        let l: Vec<f32> = (0..=10).map(|i| luma(i as f32 / 10.0)).collect();
        assert!(l.windows(2).all(|w| w[0] < w[1]), "{l:?}");
        assert_eq!(heat_colour(-1.0), heat_colour(0.0));
        assert_eq!(heat_colour(f32::NAN), heat_colour(0.0));
        assert_eq!(heat_colour(2.0), heat_colour(1.0));
    }

    #[test]
    fn contours_of_a_gaussian_are_closed_circles_of_the_right_radius() {
        let side = 64;
        let (cx, cy, sigma, h) = (30.0, 34.0, 6.0, 100.0);
        let field = blob(side, cx, cy, sigma, h);
        let levels = [50.0, 10.0];
        let lines = contour_lines(&field, side, &levels).expect("contours");
        assert_eq!(lines.len(), 2);
        for (level, polylines) in levels.iter().zip(&lines) {
            assert_eq!(polylines.len(), 1, "one ring per level");
            let ring = &polylines[0];
            assert_eq!(ring.first(), ring.last(), "closed");
            // Gaussian radius at this level; pixel centres are at +0.5 in edge coordinates.
            let r = sigma * (2.0 * (h / level).ln()).sqrt();
            for &(x, y) in ring {
                let d = ((x as f32 - 0.5 - cx).powi(2) + (y as f32 - 0.5 - cy).powi(2)).sqrt();
                assert!(
                    (d - r).abs() < 0.5,
                    "level {level}: point at {d}, radius {r}"
                );
            }
        }
        // Levels above the peak draw nothing; no levels, no lines.
        assert!(contour_lines(&field, side, &[200.0]).expect("ok")[0].is_empty());
        assert!(contour_lines(&field, side, &[]).expect("ok").is_empty());
        assert!(matches!(
            contour_lines(&field[1..], side, &[1.0]),
            Err(RenderError::Shape { .. })
        ));
    }

    #[test]
    fn doubling_levels_stop_below_the_maximum() {
        assert_eq!(doubling_levels(1.5, 13.0), vec![1.5, 3.0, 6.0, 12.0]);
        assert_eq!(doubling_levels(1.0, 1e9).len(), 8);
        assert!(doubling_levels(0.0, 10.0).is_empty());
        assert!(doubling_levels(f32::NAN, 10.0).is_empty());
        assert!(doubling_levels(5.0, 4.0).is_empty());
    }

    #[test]
    fn panel_puts_row_zero_at_the_bottom_heat_where_attention_is_and_contours_in_cyan() {
        // A bright source in the lower-left quadrant (low x, low y); attention on the
        // upper-right cell of a 2x2 map.
        let side = 20;
        let image = blob(side, 4.5, 4.5, 2.0, 100.0);
        let attention = [0.0, 0.0, 0.0, 1.0];
        let scene = Scene {
            image: &image,
            side,
            stretch: Stretch::for_values(&image, 1.0),
            attention: Some(Map {
                values: &attention,
                side: 2,
            }),
            contours: Some((&image, vec![50.0])),
        };
        let img = panel(&scene, 100).expect("panel");
        assert_eq!(img.dimensions(), (100, 100));
        // Source pixel (4, 4) is drawn at x 20..25, y (from the top) 75..80.
        let src = img.get_pixel(22, 77).0;
        assert!(src[0] > 200 && src[0] == src[1], "bright grey: {src:?}");
        // The upper-right corner is under full attention: inferno's top colour at HEAT_ALPHA
        // over black.
        let hot = img.get_pixel(97, 2).0;
        let top = heat_colour(1.0).0;
        for (h, t) in hot.iter().zip(top) {
            assert!(
                (f32::from(*h) - HEAT_ALPHA * f32::from(t)).abs() <= 1.0,
                "{hot:?}"
            );
        }
        // The upper-left corner is far from the source and unattended: black.
        assert_eq!(img.get_pixel(0, 0).0, [0, 0, 0]);
        // The contour ring at half the peak is drawn around the source, and nowhere else.
        let cyan: Vec<(u32, u32)> = img
            .enumerate_pixels()
            .filter(|(_, _, p)| **p == CONTOUR_COLOUR)
            .map(|(x, y, _)| (x, y))
            .collect();
        assert!(!cyan.is_empty());
        for (x, y) in cyan {
            // The blob's centre, image (4.5, 4.5), is edge coordinate (5, 5): output
            // (25, 100 - 25); the half-peak radius is 2.355 px * 5 = 11.8 output pixels.
            let d = ((x as f32 - 25.0).powi(2) + (y as f32 - 75.0).powi(2)).sqrt();
            assert!((d - 11.8).abs() < 3.5, "contour pixel ({x}, {y}) at {d}");
        }
    }

    #[test]
    fn panel_refuses_wrong_shapes() {
        let image = vec![1.0; 10];
        let scene = Scene {
            image: &image,
            side: 4,
            stretch: Stretch {
                soft: 1.0,
                max: 1.0,
            },
            attention: None,
            contours: None,
        };
        assert!(matches!(
            panel(&scene, 10),
            Err(RenderError::Shape { what: "image", .. })
        ));
    }

    #[test]
    fn png_decodes_back_to_the_same_picture_and_text_draws() {
        let writer = Writer::new().expect("font");
        let mut img = RgbImage::new(120, 40);
        fill(&mut img, 0, 0, 120, 40, BACKGROUND);
        writer.text(&mut img, "FRII 0.97", 4, 4, 20.0, TEXT_COLOUR);
        let (w, h) = writer.size("FRII 0.97", 20.0);
        assert!(w > 40 && w < 120 && h > 10 && h <= 24, "{w}x{h}");
        assert!(img.pixels().any(|p| *p == TEXT_COLOUR), "text pixels drawn");
        let bytes = png(&img).expect("png");
        let back = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
            .expect("decodes")
            .to_rgb8();
        assert_eq!(back.dimensions(), (120, 40));
        assert_eq!(back, img);
    }
}
