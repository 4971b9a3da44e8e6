//! The mosaic index: every configured FITS image, memory-mapped once at start, with its
//! WCS and a sky footprint, so that a detection without pixels can be matched to the images
//! that cover it, best first: those whose pixels the model takes as they are, then those it
//! can resample, then the rest; within each, the one where the source lies farthest (in
//! arcsec) from the image's edge. The cutter falls back along that order when a window is
//! blank where the source is (mosaics are NaN beyond their coverage).
//!
//! It owns finding and opening the files and choosing among them; cutting is `mod.rs`'s.
//! Lookups are a linear scan with a cheap angular pre-filter per image: fine for thousands
//! of tiles (a FIRST-sized survey); a spatial index would be the next step beyond that.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::{CutoutSetupError, Image, PixelScale};
use crate::error_chain;

/// One indexed image.
#[derive(Debug)]
pub struct Entry {
    /// File name (`T12345.fits`) and stem (`T12345`, also for `.fits.fz`), for tile hints.
    pub name: String,
    pub stem: String,
    /// The path below its configured folder (`P2/mosaic-blanked.fits`, `/`-separated; the
    /// file name for a file configured itself), and its folder's name (`P2`), for the
    /// hints of surveys whose tiles are folders of same-named files (LoTSS).
    relative: String,
    folder: String,
    pub image: Image<Mmap>,
    footprint: Footprint,
}

/// A spherical cap that contains the whole image: a pre-filter before projecting.
#[derive(Debug, Clone, Copy)]
struct Footprint {
    centre: [f64; 3],
    /// cos of the cap radius; -1 when the image is too large for a cap to help.
    cos_radius: f64,
}

impl Footprint {
    fn of(image: &Image<Mmap>) -> Footprint {
        let everywhere = Footprint {
            centre: [0.0, 0.0, 1.0],
            cos_radius: -1.0,
        };
        let (w, h) = (image.nx as f64 - 0.5, image.ny as f64 - 0.5);
        let Some(c) = image.wcs.pixel_to_world((w - 0.5) / 2.0, (h - 0.5) / 2.0) else {
            return everywhere;
        };
        let centre = unit(c);
        let mut cos_radius: f64 = 1.0;
        for (x, y) in [
            (-0.5, -0.5),
            (w, -0.5),
            (-0.5, h),
            (w, h),
            (w / 2.0, -0.5),
            (w / 2.0, h),
            (-0.5, h / 2.0),
            (w, h / 2.0),
        ] {
            match image.wcs.pixel_to_world(x, y) {
                Some(p) => cos_radius = cos_radius.min(dot(centre, unit(p))),
                None => return everywhere,
            }
        }
        // Widen by 5% and 20 arcsec: edges between the sampled points bulge a little.
        let radius = cos_radius.clamp(-1.0, 1.0).acos() * 1.05 + 1e-4;
        if radius >= std::f64::consts::PI / 2.0 {
            return everywhere;
        }
        Footprint {
            centre,
            cos_radius: radius.cos(),
        }
    }

    fn may_contain(&self, p: [f64; 3]) -> bool {
        dot(self.centre, p) >= self.cos_radius
    }
}

fn unit((ra, dec): (f64, f64)) -> [f64; 3] {
    let (sr, cr) = ra.to_radians().sin_cos();
    let (sd, cd) = dec.to_radians().sin_cos();
    [cd * cr, cd * sr, sd]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// The indexed images, in path order.
#[derive(Debug, Default)]
pub struct MosaicIndex {
    entries: Vec<Entry>,
}

impl MosaicIndex {
    pub fn build(paths: &[PathBuf]) -> Result<MosaicIndex, CutoutSetupError> {
        let mut entries = Vec::new();
        for root in paths {
            let meta = fs::metadata(root).map_err(|source| CutoutSetupError::Io {
                path: root.clone(),
                source,
            })?;
            if meta.is_dir() {
                let mut files = Vec::new();
                collect(root, &mut files)?;
                files.sort();
                let before = entries.len();
                for file in files {
                    match Image::open_path(&file) {
                        Ok(image) => entries.push(entry(&file, root, image)),
                        Err(e) => tracing::warn!(
                            file = %file.display(),
                            error = %error_chain(&e),
                            "skipping a mosaic file that is not a usable image"
                        ),
                    }
                }
                if entries.len() == before {
                    return Err(CutoutSetupError::EmptyFolder(root.clone()));
                }
            } else {
                let image =
                    Image::open_path(root).map_err(|source| CutoutSetupError::BadMosaic {
                        path: root.clone(),
                        source,
                    })?;
                let folder = root.parent().unwrap_or(Path::new(""));
                entries.push(entry(root, folder, image));
            }
        }
        tracing::info!(images = entries.len(), "mosaic index built");
        Ok(MosaicIndex { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The images whose rectangle holds (RA, Dec), with the source's pixel on each and the
    /// pixels' sizes there (arcsec along x and y; None where the WCS cannot size them), best
    /// first: pixels the model takes as they are (`scale`), then pixels it resamples, then
    /// pixels it refuses (or that the WCS cannot size there); within each, the source
    /// farthest from the image's edge in arcsec (so that a survey of finer pixels does not
    /// win by having more of them). Ties keep path order. Empty when none covers it.
    pub fn locate(&self, pos: (f64, f64), scale: PixelScale) -> Vec<Located<'_>> {
        let p = unit(pos);
        let mut found: Vec<(Located<'_>, u8, f64)> = Vec::new();
        for e in self.entries.iter().filter(|e| e.footprint.may_contain(p)) {
            if let Some(pixel) = e.image.pixel_on_image(pos) {
                let sizes = PixelScale::measure(&e.image.wcs, pixel).ok();
                let class = match sizes.map(|s| scale.resampling(s)) {
                    Some(Ok(None)) => 0,
                    Some(Ok(Some(_))) => 1,
                    Some(Err(_)) | None => 2,
                };
                let distance = sizes.map_or(0.0, |s| e.image.edge_distance_arcsec(pixel, s));
                found.push(((e, pixel, sizes), class, distance));
            }
        }
        // Stable: equal candidates stay in path order.
        found.sort_by(|a, b| a.1.cmp(&b.1).then(b.2.total_cmp(&a.2)));
        found.into_iter().map(|(located, _, _)| located).collect()
    }

    /// The image named by a tile hint: its path below its configured folder (with or
    /// without the extension), else its file name or stem, else its folder's name, each only
    /// when one image answers to it.
    pub fn by_tile(&self, tile: &str) -> Result<&Entry, TileError> {
        let matchers: [&dyn Fn(&Entry) -> bool; 3] = [
            &|e| e.relative == tile || without_extension(&e.relative) == tile,
            &|e| e.name == tile || e.stem == tile,
            &|e| e.folder == tile,
        ];
        for matches in matchers {
            let mut found = self.entries.iter().filter(|e| matches(e));
            if let Some(first) = found.next() {
                let others: Vec<&str> = found.map(|e| e.relative.as_str()).collect();
                if others.is_empty() {
                    return Ok(first);
                }
                return Err(TileError::Ambiguous {
                    tile: tile.to_string(),
                    images: std::iter::once(first.relative.as_str())
                        .chain(others)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        Err(TileError::Unknown(tile.to_string()))
    }
}

/// An image that covers a position: the image, the position's pixel on it, and the pixels'
/// sizes there (None where the WCS cannot size them).
pub type Located<'a> = (&'a Entry, (f64, f64), Option<(f64, f64)>);

/// Why a tile hint names no single image.
#[derive(Debug, thiserror::Error)]
pub enum TileError {
    #[error("unknown mosaic tile '{0}'")]
    Unknown(String),
    #[error(
        "mosaic tile '{tile}' names several images ({images}): give its path below the mosaics folder"
    )]
    Ambiguous { tile: String, images: String },
}

/// A FITS file name without its extension (`.fits.fz`, `.fits`, `.fit`, any case).
fn without_extension(name: &str) -> &str {
    let lower = name.to_ascii_lowercase();
    let cut = [".fits.fz", ".fits", ".fit"]
        .iter()
        .find(|ext| lower.ends_with(*ext))
        .map_or(0, |ext| ext.len());
    &name[..name.len() - cut]
}

/// The index entry of `path`, found below the configured `root` folder.
fn entry(path: &Path, root: &Path, image: Image<Mmap>) -> Entry {
    let text = |p: &Path| p.to_str().unwrap_or_default().to_string();
    let name = path
        .file_name()
        .map(|n| text(Path::new(n)))
        .unwrap_or_default();
    let stem = without_extension(&name).to_string();
    let below = path.strip_prefix(root).unwrap_or(Path::new(&name));
    let relative = below
        .components()
        .map(|c| text(Path::new(c.as_os_str())))
        .collect::<Vec<_>>()
        .join("/");
    let folder = path
        .parent()
        .and_then(Path::file_name)
        .map(|n| text(Path::new(n)))
        .unwrap_or_default();
    let footprint = Footprint::of(&image);
    Entry {
        name,
        stem,
        relative,
        folder,
        image,
        footprint,
    }
}

fn is_fits_name(path: &Path) -> bool {
    let name = path
        .file_name()
        .and_then(OsStr::to_str)
        .unwrap_or_default()
        .to_ascii_lowercase();
    [".fits", ".fit", ".fits.fz"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

/// Files with a FITS name under `dir`, recursively; symbolic links to folders are not
/// followed (no cycles), links to files are.
fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), CutoutSetupError> {
    let io = |source| CutoutSetupError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for item in fs::read_dir(dir).map_err(io)? {
        let item = item.map_err(io)?;
        let path = item.path();
        let kind = item.file_type().map_err(io)?;
        if kind.is_dir() {
            collect(&path, out)?;
        } else if is_fits_name(&path) && (kind.is_file() || path.is_file()) {
            out.push(path);
        }
    }
    Ok(())
}
