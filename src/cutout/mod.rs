//! The cutout stage: from a `SourceDetection` to the `CUTOUT_SIZE` x `CUTOUT_SIZE` pixels
//! around it, placed as SkyView placed the sources of the MiraBest cutouts (the source at
//! 0-based pixel (149.5, 149.5) of the window, no resampling), so that preprocessing sees
//! the same pixels the training images were made from. Images whose pixels are not the
//! model's size are refused, or resampled to it when `cutout.resample` asks (`resample.rs`).
//!
//! It owns: the mosaic index built at start ([`Cutter::new`]), choosing the image for a
//! detection (index lookup, tile hint, inline bytes or a path), the sky-to-pixel step, the
//! window with NaN padding and its provenance, the check that the image's pixels are the
//! size the model was trained on, and turning every bad input into an
//! [`ItemError`] with its `RejectReason` (never a panic). It does not preprocess, batch or
//! know any other stage.
//!
//! Plain images are read straight from their bytes (`fits.rs`): inline bytes, a mosaic's
//! memory map, or a detection's own file, read into a per-thread buffer (mapped when
//! large); tile-compressed images go through CFITSIO (`compressed.rs`); the WCS is checked
//! and evaluated in `wcs.rs`; the index in `index.rs`.

mod compressed;
mod fits;
mod index;
mod resample;
pub mod table;
mod wcs;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use ndarray::Array2;

use crate::config::CutoutConfig;
use crate::domain::{CUTOUT_SIZE, Cutout, ItemError, SkyProjection};
use crate::error_chain;
use crate::proto::{self, RejectReason, source_detection::Pixels};

use self::fits::{FitsError, Storage};
use self::index::MosaicIndex;
use self::wcs::{CelestialWcs, WcsError};

/// Pixel of the window (0-based, both axes) where the source sits: its centre.
const SOURCE_PIXEL: f64 = (CUTOUT_SIZE as f64 - 1.0) / 2.0;
/// Rounding tolerance (pixels): a window start that comes out within this of a half
/// integer is rounded up, so that a .5 computed as .4999999 rounds the same way.
const HALF_TOLERANCE: f64 = 1e-6;

/// Why the cutter could not start.
#[derive(Debug, thiserror::Error)]
pub enum CutoutSetupError {
    #[error("mosaic path {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mosaic file {path} is not a usable image")]
    BadMosaic {
        path: PathBuf,
        #[source]
        source: OpenError,
    },
    #[error("no usable FITS image (*.fits, *.fit, *.fits.fz) under {0}")]
    EmptyFolder(PathBuf),
}

/// Why an image could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot read the file")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Fits(#[from] FitsError),
    #[error(transparent)]
    Wcs(#[from] WcsError),
}

impl OpenError {
    fn into_item(self, what: &str) -> ItemError {
        let reason = match self {
            OpenError::Wcs(_) => RejectReason::BadWcs,
            OpenError::Io(_) | OpenError::Fits(_) => RejectReason::BadFits,
        };
        ItemError::new(reason, format!("{what}: {}", error_chain(&self)))
    }
}

/// Cuts windows around detections. Shared by the worker threads (`Send + Sync`): the index
/// and its memory maps are read-only after [`Cutter::new`].
#[derive(Debug)]
pub struct Cutter {
    index: MosaicIndex,
    scale: PixelScale,
}

/// The pixel size the model takes (`cutout.pixel_scale_arcsec`), how far an image's may
/// differ (`cutout.pixel_scale_tolerance`, a fraction along each axis), and whether other
/// sizes are resampled (`cutout.resample`) rather than refused.
#[derive(Debug, Clone, Copy)]
struct PixelScale {
    arcsec: f64,
    tolerance: f64,
    resample: bool,
}

/// How far (a factor either way) a window is resampled; beyond it the read would be huge (a
/// window of 0.1 arcsec pixels for a 1.8 arcsec model: 5,400 x 5,400) or nearly empty.
const MAX_RESAMPLE: f64 = 8.0;

impl PixelScale {
    /// The image's pixel sizes (arcsec) at `pixel`, along x and along y.
    fn measure(wcs: &CelestialWcs, pixel: (f64, f64)) -> Result<(f64, f64), ItemError> {
        wcs.pixel_scale_at(pixel.0, pixel.1).ok_or_else(|| {
            ItemError::new(
                RejectReason::BadWcs,
                "the pixels around the source are not on the sky through the WCS",
            )
        })
    }

    /// None when the model takes pixels of these sizes as they are; otherwise why not.
    fn mismatch(self, (sx, sy): (f64, f64)) -> Option<String> {
        let off = |s: f64| (s / self.arcsec - 1.0).abs() > self.tolerance;
        (off(sx) || off(sy)).then(|| {
            format!(
                "pixels of {sx:.4} x {sy:.4} arcsec; the model takes {} arcsec \
                 (cutout.pixel_scale_arcsec) to within a fraction {} \
                 (cutout.pixel_scale_tolerance)",
                self.arcsec, self.tolerance
            )
        })
    }

    /// How many image pixels, along x and along y, make one model pixel; or why the pixels
    /// cannot be taken.
    fn resampling(self, sizes: (f64, f64)) -> Result<Option<(f64, f64)>, ItemError> {
        let Some(why) = self.mismatch(sizes) else {
            return Ok(None);
        };
        let factors = (self.arcsec / sizes.0, self.arcsec / sizes.1);
        let within = |f: f64| (1.0 / MAX_RESAMPLE..=MAX_RESAMPLE).contains(&f);
        match (self.resample, within(factors.0) && within(factors.1)) {
            (true, true) => Ok(Some(factors)),
            (true, false) => Err(ItemError::new(
                RejectReason::PixelScale,
                format!("{why}: too far from it to resample (at most {MAX_RESAMPLE} times)"),
            )),
            (false, _) => Err(ItemError::new(
                RejectReason::PixelScale,
                format!(
                    "{why}: resample the image to {} arcsec pixels first, or set \
                     cutout.resample = true",
                    self.arcsec
                ),
            )),
        }
    }
}

impl Cutter {
    /// Builds the mosaic index over `cfg.mosaics`: folders are searched recursively for
    /// `*.fits`, `*.fit` and `*.fits.fz`; a file found in a folder that is not a usable image
    /// is skipped with a warning, while a file named directly must be usable.
    pub fn new(cfg: &CutoutConfig) -> Result<Cutter, CutoutSetupError> {
        let index = MosaicIndex::build(&cfg.mosaics)?;
        let scale = PixelScale {
            arcsec: cfg.pixel_scale_arcsec,
            tolerance: cfg.pixel_scale_tolerance,
            resample: cfg.resample,
        };
        // Said once at start: mounting another survey's mosaics would otherwise show only as
        // rejections (or, resampled, nowhere).
        let mut other = index.entries().iter().filter_map(|e| {
            let centre = (
                (e.image.nx as f64 - 1.0) / 2.0,
                (e.image.ny as f64 - 1.0) / 2.0,
            );
            let sizes = PixelScale::measure(&e.image.wcs, centre).ok()?;
            Some((e.name.as_str(), scale.mismatch(sizes)?))
        });
        if let Some((first, why)) = other.next() {
            let what = if scale.resample {
                "mosaics whose pixels are not the model's: their windows will be resampled"
            } else {
                "mosaics whose pixels are not the model's: detections on them will be rejected"
            };
            let mosaics = 1 + other.count();
            tracing::warn!(mosaics, of = index.len(), first = %first, detail = %why, "{what}");
        }
        Ok(Cutter { index, scale })
    }

    /// Number of images in the mosaic index.
    pub fn mosaic_count(&self) -> usize {
        self.index.len()
    }

    /// The window around one detection, or why there is none.
    pub fn cut(&self, det: &proto::SourceDetection) -> Result<Cutout, ItemError> {
        match &det.pixels {
            None | Some(Pixels::Mosaic(_)) if det.centre_of_cutout => Err(ItemError::new(
                RejectReason::InvalidDetection,
                "centre_of_cutout needs the pixels in fits_cutout or fits_path",
            )),
            None => {
                let pos = checked_position(det)?;
                // The best mosaic whose window has data where the source is; mosaics are
                // blank (NaN) beyond their coverage, inside their rectangle. When none has,
                // the best one's window (partly blank) or its rejection.
                let mut best = None;
                for (entry, pixel, sizes) in self.index.locate(pos, self.scale) {
                    // Sized while ranking: not measured again.
                    let cut = match sizes {
                        Some(sizes) => entry.image.cut_sized(pixel, pos, sizes, self.scale),
                        None => entry.image.cut_at(pixel, pos, self.scale),
                    };
                    if matches!(&cut, Ok(c) if has_data_at_source(&c.pixels)) {
                        return cut;
                    }
                    best.get_or_insert(cut);
                }
                best.unwrap_or_else(|| {
                    Err(ItemError::new(
                        RejectReason::NotCovered,
                        format!(
                            "no mosaic covers RA {:.6}, Dec {:.6} ({} images indexed)",
                            pos.0,
                            pos.1,
                            self.index.len()
                        ),
                    ))
                })
            }
            Some(Pixels::Mosaic(hint)) => {
                let pos = checked_position(det)?;
                let entry = self
                    .index
                    .by_tile(&hint.tile)
                    .map_err(|e| ItemError::new(RejectReason::NotCovered, e.to_string()))?;
                let pixel = entry.image.pixel_on_image(pos).ok_or_else(|| {
                    ItemError::new(
                        RejectReason::NotCovered,
                        format!(
                            "tile '{}' does not cover RA {:.6}, Dec {:.6}",
                            hint.tile, pos.0, pos.1
                        ),
                    )
                })?;
                entry.image.cut_at(pixel, pos, self.scale)
            }
            Some(Pixels::FitsCutout(bytes)) => {
                let image =
                    Image::open(bytes.as_ref(), None).map_err(|e| e.into_item("inline FITS"))?;
                image.cut_for(det, self.scale)
            }
            Some(Pixels::FitsPath(path)) => cut_file(Path::new(path), det, self.scale)
                .unwrap_or_else(|e| Err(e.into_item(path))),
        }
    }
}

/// Files up to this size that a detection names are read into a buffer each thread
/// reuses, not mapped: for a cutout (360 KB for FIRST's 300x300) one copy costs less than
/// mapping it, faulting its pages in and unmapping it, which also interrupts the other
/// cores to flush their TLBs. Larger files are mapped, as mosaics are, so a thread keeps at
/// most this much.
const READ_LIMIT: u64 = 1 << 20;

thread_local! {
    static FILE_BYTES: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The window for a detection that names its image file.
fn cut_file(
    path: &Path,
    det: &proto::SourceDetection,
    scale: PixelScale,
) -> Result<Result<Cutout, ItemError>, OpenError> {
    let mut file = File::open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        // A device or a pipe would be read without end.
        return Err(FitsError::NotFits("not a regular file".into()).into());
    }
    if metadata.len() > READ_LIMIT {
        return Ok(Image::map(&file, metadata.len(), path)?.cut_for(det, scale));
    }
    FILE_BYTES.with_borrow_mut(|bytes| {
        // The length the metadata gave (at most READ_LIMIT), in one read; the old contents
        // are overwritten, only growth is zeroed.
        bytes.resize(metadata.len() as usize, 0);
        file.read_exact(bytes)?;
        if bytes.is_empty() {
            return Err(FitsError::NotFits("empty file".into()).into());
        }
        Ok(Image::open(bytes.as_slice(), Some(path.to_path_buf()))?.cut_for(det, scale))
    })
}

/// The detection's (RA, Dec), checked; RA 360 is the meridian of RA 0 and becomes 0.
fn checked_position(det: &proto::SourceDetection) -> Result<(f64, f64), ItemError> {
    let (ra, dec) = (det.ra_deg, det.dec_deg);
    if !(ra.is_finite()
        && dec.is_finite()
        && (0.0..=360.0).contains(&ra)
        && (-90.0..=90.0).contains(&dec))
    {
        return Err(ItemError::new(
            RejectReason::InvalidDetection,
            format!("position out of range: RA {ra} (need [0, 360]), Dec {dec} (need [-90, 90])"),
        ));
    }
    Ok((if ra == 360.0 { 0.0 } else { ra }, dec))
}

/// An opened image: its geometry, how its pixels are stored, its WCS, and the bytes
/// (`D`: a memory map or a borrowed slice).
#[derive(Debug)]
struct Image<D> {
    data: D,
    /// The file, or None for inline bytes.
    path: Option<PathBuf>,
    nx: usize,
    ny: usize,
    storage: Storage,
    wcs: Arc<CelestialWcs>,
}

impl Image<Mmap> {
    fn open_path(path: &Path) -> Result<Self, OpenError> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Image::map(&file, len, path)
    }

    /// Maps `file` (`len` bytes, as its metadata said).
    fn map(file: &File, len: u64, path: &Path) -> Result<Self, OpenError> {
        if len == 0 {
            return Err(FitsError::NotFits("empty file".into()).into());
        }
        // SAFETY: the map is read-only. Mosaics and cutouts are inputs nobody rewrites while
        // the worker runs; a file truncated under the map would fault, which is why files
        // are never mapped for writing or modified by this program.
        let map = unsafe { Mmap::map(file)? };
        Image::open(map, Some(path.to_path_buf()))
    }
}

impl<D: AsRef<[u8]>> Image<D> {
    fn open(data: D, path: Option<PathBuf>) -> Result<Self, OpenError> {
        let hdu = fits::find_image(data.as_ref())?;
        if matches!(hdu.storage, Storage::TileCompressed { .. }) && path.is_none() {
            return Err(FitsError::Unsupported(
                "tile-compressed inline cutouts; send the image uncompressed".into(),
            )
            .into());
        }
        let wcs = CelestialWcs::from_header(&hdu.header, hdu.nx, hdu.ny)?;
        Ok(Image {
            data,
            path,
            nx: hdu.nx,
            ny: hdu.ny,
            storage: hdu.storage,
            wcs: Arc::new(wcs),
        })
    }

    /// The 0-based pixel of (RA, Dec) if it lies on the image.
    fn pixel_on_image(&self, (ra, dec): (f64, f64)) -> Option<(f64, f64)> {
        let (x, y) = self.wcs.world_to_pixel(ra, dec)?;
        let inside = |v: f64, n: usize| v >= -0.5 && v < n as f64 - 0.5;
        (inside(x, self.nx) && inside(y, self.ny)).then_some((x, y))
    }

    /// Distance (arcsec) from a pixel on the image to its nearest edge, for pixels of
    /// `sizes` (arcsec along x and along y, as measured there).
    fn edge_distance_arcsec(&self, (x, y): (f64, f64), (sx, sy): (f64, f64)) -> f64 {
        let (w, h) = (self.nx as f64 - 0.5, self.ny as f64 - 0.5);
        ((x + 0.5).min(w - x) * sx).min((y + 0.5).min(h - y) * sy)
    }

    /// Cut for a detection that brought its own image (inline or a path).
    fn cut_for(
        &self,
        det: &proto::SourceDetection,
        scale: PixelScale,
    ) -> Result<Cutout, ItemError> {
        if det.centre_of_cutout {
            let pixel = ((self.nx as f64 - 1.0) / 2.0, (self.ny as f64 - 1.0) / 2.0);
            let pos = self.wcs.pixel_to_world(pixel.0, pixel.1).ok_or_else(|| {
                ItemError::new(
                    RejectReason::BadWcs,
                    "the image centre is not on the sky through its WCS",
                )
            })?;
            return self.cut_at(pixel, pos, scale);
        }
        let pos = checked_position(det)?;
        let pixel = self.pixel_on_image(pos).ok_or_else(|| {
            ItemError::new(
                RejectReason::NotCovered,
                format!(
                    "RA {:.6}, Dec {:.6} is outside the {}x{} image",
                    pos.0, pos.1, self.nx, self.ny
                ),
            )
        })?;
        self.cut_at(pixel, pos, scale)
    }

    /// The window that puts `pixel` at the window's centre pixel (149.5, 149.5), in pixels of
    /// the size `scale` asks for: the image's own, or resampled to it.
    fn cut_at(
        &self,
        pixel: (f64, f64),
        position: (f64, f64),
        scale: PixelScale,
    ) -> Result<Cutout, ItemError> {
        let sizes = PixelScale::measure(&self.wcs, pixel)?;
        self.cut_sized(pixel, position, sizes, scale)
    }

    /// `cut_at` with the pixels' sizes at `pixel` already measured.
    fn cut_sized(
        &self,
        pixel: (f64, f64),
        position: (f64, f64),
        sizes: (f64, f64),
        scale: PixelScale,
    ) -> Result<Cutout, ItemError> {
        let factors = scale.resampling(sizes)?;
        let (pixels, finite, read, origin, step) = match factors {
            None => {
                let (x0, y0) = (window_start(pixel.0), window_start(pixel.1));
                let mut pixels = Array2::from_elem((CUTOUT_SIZE, CUTOUT_SIZE), f32::NAN);
                let finite = self.read(x0, y0, &mut pixels)?;
                let read = (x0, y0, CUTOUT_SIZE, CUTOUT_SIZE);
                (pixels, finite, read, (x0 as f64, y0 as f64), (1.0, 1.0))
            }
            Some(factors) => {
                let ax = resample::Axis::new(pixel.0, factors.0);
                let ay = resample::Axis::new(pixel.1, factors.1);
                let mut input = Array2::from_elem((ay.len, ax.len), f32::NAN);
                self.read(ax.start, ay.start, &mut input)?;
                let (pixels, finite) = resample::resample(&input, &ax, &ay);
                let origin = (
                    pixel.0 - SOURCE_PIXEL * factors.0,
                    pixel.1 - SOURCE_PIXEL * factors.1,
                );
                let read = (ax.start, ay.start, ax.len, ay.len);
                (pixels, finite, read, origin, factors)
            }
        };
        let file = self
            .path
            .as_ref()
            .map_or_else(|| "inline".to_string(), |p| p.display().to_string());
        let (x0, y0, width, height) = read;
        if finite == 0 {
            return Err(ItemError::new(
                RejectReason::EmptyCutout,
                format!("no finite pixel in the {width}x{height} window at ({x0}, {y0}) of {file}"),
            ));
        }
        let provenance = proto::CutoutProvenance {
            file,
            x0,
            y0,
            width: width as u32,
            height: height as u32,
            coverage: (finite as f64 / (CUTOUT_SIZE * CUTOUT_SIZE) as f64) as f32,
            rms: 0.0,
            clip_threshold: 0.0,
            projection: self.wcs.projection().to_string(),
            pixel_scale_arcsec: ((sizes.0 + sizes.1) / 2.0) as f32,
            resampled: factors.is_some(),
        };
        let sky = Arc::new(WindowSky {
            wcs: Arc::clone(&self.wcs),
            origin,
            step,
        });
        Ok(Cutout {
            pixels,
            provenance,
            sky,
            position,
        })
    }

    /// The image's pixels from (`x0`, `y0`) into `out` (NaN where off the image); how many
    /// are finite.
    fn read(&self, x0: i64, y0: i64, out: &mut Array2<f32>) -> Result<usize, ItemError> {
        match &self.storage {
            Storage::Plain(layout) => Ok(fits::read_window(
                self.data.as_ref(),
                layout,
                self.nx,
                self.ny,
                x0,
                y0,
                out,
            )),
            Storage::TileCompressed { hdu, naxis } => {
                // Image::open refuses compressed images without a path.
                let path = self.path.as_deref().unwrap_or(Path::new(""));
                compressed::read_window(path, *hdu, *naxis, (self.nx, self.ny), x0, y0, out)
                    .map_err(|e| {
                        ItemError::new(
                            RejectReason::BadFits,
                            format!("{}: CFITSIO: {}", path.display(), error_chain(&e)),
                        )
                    })
            }
        }
    }
}

/// Whether any of the window's four pixels around the source (`SOURCE_PIXEL`) is finite.
fn has_data_at_source(pixels: &Array2<f32>) -> bool {
    let (a, b) = (SOURCE_PIXEL.floor() as usize, SOURCE_PIXEL.ceil() as usize);
    [(a, a), (a, b), (b, a), (b, b)]
        .iter()
        .any(|&at| pixels.get(at).is_some_and(|v| v.is_finite()))
}

/// First image pixel of the window that puts `pixel` at `SOURCE_PIXEL`: the nearest integer
/// to `pixel - 149.5`, halves (within `HALF_TOLERANCE`) rounded up.
fn window_start(pixel: f64) -> i64 {
    (pixel - SOURCE_PIXEL + 0.5 + HALF_TOLERANCE).floor() as i64
}

/// Maps window pixels back to the sky through the image's WCS.
#[derive(Debug)]
struct WindowSky {
    wcs: Arc<CelestialWcs>,
    /// Image pixel of the window's (0, 0), and image pixels per window pixel (1 unless the
    /// window was resampled).
    origin: (f64, f64),
    step: (f64, f64),
}

impl SkyProjection for WindowSky {
    fn pixel_to_sky(&self, x: f64, y: f64) -> Option<(f64, f64)> {
        self.wcs.pixel_to_world(
            self.origin.0 + self.step.0 * x,
            self.origin.1 + self.step.1 * y,
        )
    }
}

#[cfg(test)]
mod tests;
