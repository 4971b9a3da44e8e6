//! Strict, allocation-light FITS reading from a byte slice (a memory-mapped file or the
//! bytes of an inline cutout): header cards, the first HDU that holds an image, and windows
//! of its pixels with BSCALE/BZERO/BLANK applied.
//!
//! This module owns the FITS *container*: it knows nothing about WCS (see `wcs.rs`) nor
//! about which window to cut (see `mod.rs`). Tile-compressed images (`ZIMAGE = T` binary
//! tables) are recognised here but decoded by CFITSIO in `compressed.rs`.
//!
//! Every size in a header is untrusted: all arithmetic on it is checked, and every read is
//! bounds-checked against the slice, so a truncated or corrupt file is an error, never a
//! panic.

use std::collections::HashMap;

use ndarray::Array2;

/// FITS logical record (block) size in bytes.
const BLOCK: usize = 2880;
/// FITS header card size in bytes.
const CARD: usize = 80;

/// Why a FITS byte stream could not be read as an image.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FitsError {
    #[error("not a FITS file: {0}")]
    NotFits(String),
    #[error("truncated FITS: {0}")]
    Truncated(String),
    #[error("corrupt FITS header in HDU {hdu}: {detail}")]
    BadHeader { hdu: usize, detail: String },
    #[error("no image in the FITS file (HDUs seen: {0})")]
    NoImage(String),
    #[error("unsupported FITS image: {0}")]
    Unsupported(String),
}

/// A header value. Complex numbers and unparsable values are kept as `Other` with their
/// raw text: only an error when a keyword that matters holds one.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Logical(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// A keyword with no value (`KEY     =` followed by blanks).
    Undefined,
    Other(String),
}

impl Value {
    /// The value as a real number (integers widen), if it is one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }
}

/// The value cards of one header, keyed by keyword. Commentary cards (COMMENT, HISTORY,
/// blank) are skipped. When a keyword repeats, the first occurrence is kept (as astropy.io.fits's
/// `header[key]` reads it) and the keyword is recorded as duplicated: wcslib (astropy.wcs)
/// takes the last, so `wcs.rs` refuses duplicated WCS keywords rather than pick one.
/// Non-standard spellings that wcslib accepts are normalised: zero-padded `PC01_01` (CASA) to
/// `PC1_1`, AIPS's `PC001002`/`CD001002` to `PC1_2`/`CD1_2`, and `PROJPn` to `PV2_n`.
#[derive(Debug, Clone, Default)]
pub struct Header {
    values: HashMap<String, Value>,
    /// Normalised keywords seen more than once in this header, first repeat first.
    duplicates: Vec<String>,
}

impl Header {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.values.get(key)
    }

    /// Every value card, in no particular order.
    pub fn cards(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Keywords (normalised) that this header holds more than once, each once.
    pub fn duplicated(&self) -> impl Iterator<Item = &str> {
        self.duplicates.iter().map(String::as_str)
    }

    fn insert(&mut self, key: String, value: Value) {
        use std::collections::hash_map::Entry;
        match self.values.entry(key) {
            Entry::Vacant(slot) => {
                slot.insert(value);
            }
            Entry::Occupied(slot) => {
                if !self.duplicates.contains(slot.key()) {
                    self.duplicates.push(slot.key().clone());
                }
            }
        }
    }

    /// A required integer keyword.
    fn int(&self, hdu: usize, key: &str) -> Result<i64, FitsError> {
        match self.get(key) {
            Some(Value::Int(i)) => Ok(*i),
            Some(other) => Err(FitsError::BadHeader {
                hdu,
                detail: format!("{key} is not an integer: {other:?}"),
            }),
            None => Err(FitsError::BadHeader {
                hdu,
                detail: format!("missing {key}"),
            }),
        }
    }

    /// An optional real-valued keyword: absent is `None`, present but not a number is an error.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, String> {
        match self.get(key) {
            None | Some(Value::Undefined) => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|f| f.is_finite())
                .map(Some)
                .ok_or_else(|| format!("{key} is not a finite number: {v:?}")),
        }
    }

    /// An optional string keyword with trailing blanks removed.
    pub fn opt_str(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(Value::Str(s)) => Some(s.as_str()),
            _ => None,
        }
    }

    fn logical(&self, key: &str) -> bool {
        matches!(self.get(key), Some(Value::Logical(true)))
    }
}

/// Pixel storage type (`BITPIX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bitpix {
    U8,
    I16,
    I32,
    I64,
    F32,
    F64,
}

impl Bitpix {
    fn from_header(value: i64) -> Option<Bitpix> {
        Some(match value {
            8 => Bitpix::U8,
            16 => Bitpix::I16,
            32 => Bitpix::I32,
            64 => Bitpix::I64,
            -32 => Bitpix::F32,
            -64 => Bitpix::F64,
            _ => return None,
        })
    }

    /// Bytes per pixel.
    pub fn size(self) -> usize {
        match self {
            Bitpix::U8 => 1,
            Bitpix::I16 => 2,
            Bitpix::I32 | Bitpix::F32 => 4,
            Bitpix::I64 | Bitpix::F64 => 8,
        }
    }
}

/// Where and how the pixels of an uncompressed image lie in the byte stream.
#[derive(Debug, Clone, PartialEq)]
pub struct PlainLayout {
    /// Byte offset of the first pixel.
    pub data_offset: usize,
    pub bitpix: Bitpix,
    pub bscale: f64,
    pub bzero: f64,
    /// The raw integer value that marks a blank pixel (integer images only).
    pub blank: Option<i64>,
}

/// How an image HDU stores its pixels.
#[derive(Debug, Clone, PartialEq)]
pub enum Storage {
    /// Plain big-endian pixels in the slice: read directly.
    Plain(PlainLayout),
    /// A tile-compressed image (binary table with `ZIMAGE = T`): CFITSIO decodes it.
    /// `hdu` is the 0-based HDU number; `naxis` the number of image axes (`ZNAXIS`).
    TileCompressed { hdu: usize, naxis: usize },
}

/// The first image found in a FITS byte stream.
#[derive(Debug, Clone)]
pub struct ImageHdu {
    /// The header holding the WCS (the image's own, merged with the primary header's when
    /// the image is an extension with `INHERIT = T`).
    pub header: Header,
    /// Width (`NAXIS1`) and height (`NAXIS2`) in pixels; further axes are degenerate.
    pub nx: usize,
    pub ny: usize,
    pub storage: Storage,
}

/// Finds the first HDU holding a 2-D (or degenerate 3-D/4-D) image: the primary array, an
/// `IMAGE` extension or a tile-compressed image.
pub fn find_image(bytes: &[u8]) -> Result<ImageHdu, FitsError> {
    if bytes.len() < CARD || !bytes.starts_with(b"SIMPLE  =") {
        return Err(FitsError::NotFits("the first card is not SIMPLE =".into()));
    }
    let mut offset = 0usize;
    let mut seen: Vec<String> = Vec::new();
    let mut primary: Option<Header> = None;
    for hdu in 0.. {
        if offset >= bytes.len() {
            break;
        }
        let (header, header_len) = parse_header(bytes, offset, hdu)?;
        let kind = if hdu == 0 {
            if !header.logical("SIMPLE") {
                return Err(FitsError::NotFits("SIMPLE is not T".into()));
            }
            "PRIMARY".to_string()
        } else {
            match header.opt_str("XTENSION") {
                Some(x) => x.trim().to_string(),
                None => {
                    return Err(FitsError::BadHeader {
                        hdu,
                        detail: "extension without XTENSION".into(),
                    });
                }
            }
        };
        let data_offset = offset
            .checked_add(header_len)
            .ok_or_else(|| overflow(hdu))?;
        let naxis = header.int(hdu, "NAXIS")?;
        let bitpix = header.int(hdu, "BITPIX")?;
        let axes = axis_sizes(&header, hdu, "NAXIS", naxis)?;

        let is_image = (kind == "PRIMARY" || kind == "IMAGE") && !header.logical("GROUPS");
        if is_image && axes.len() >= 2 && axes.iter().all(|&n| n > 0) {
            let mut header = header;
            if hdu > 0 && header.logical("INHERIT") {
                if let Some(p) = &primary {
                    // The extension's own keywords override the primary's; a keyword the
                    // primary repeats stays a duplicate when it is inherited.
                    for k in &p.duplicates {
                        if !header.values.contains_key(k) && !header.duplicates.contains(k) {
                            header.duplicates.push(k.clone());
                        }
                    }
                    for (k, v) in &p.values {
                        header.values.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
            }
            return plain_image(bytes, header, hdu, bitpix, &axes, data_offset);
        }
        if kind == "BINTABLE" && header.logical("ZIMAGE") {
            let znaxis = header.int(hdu, "ZNAXIS")?;
            let zaxes = axis_sizes(&header, hdu, "ZNAXIS", znaxis)?;
            let (nx, ny) = image_plane(hdu, &zaxes)?;
            return Ok(ImageHdu {
                header,
                nx,
                ny,
                storage: Storage::TileCompressed {
                    hdu,
                    naxis: zaxes.len(),
                },
            });
        }
        seen.push(format!("{kind} (NAXIS={naxis})"));

        // Skip this HDU's data: |BITPIX|/8 * GCOUNT * (PCOUNT + NAXIS1 * ... * NAXISn).
        let bytes_per = Bitpix::from_header(bitpix)
            .map(Bitpix::size)
            .ok_or_else(|| bad(hdu, format!("BITPIX = {bitpix} is not a FITS pixel type")))?;
        let pcount = opt_count(&header, hdu, "PCOUNT", 0)?;
        let gcount = opt_count(&header, hdu, "GCOUNT", 1)?;
        let mut elements: usize = if axes.is_empty() { 0 } else { 1 };
        // Random groups: NAXIS1 = 0 is a placeholder, not a size.
        let skip_first = header.logical("GROUPS") && axes.first() == Some(&0);
        for &n in axes.iter().skip(usize::from(skip_first)) {
            elements = elements.checked_mul(n).ok_or_else(|| overflow(hdu))?;
        }
        let data_len = elements
            .checked_add(pcount)
            .and_then(|n| n.checked_mul(gcount))
            .and_then(|n| n.checked_mul(bytes_per))
            .ok_or_else(|| overflow(hdu))?;
        offset = data_offset
            .checked_add(padded(data_len).ok_or_else(|| overflow(hdu))?)
            .ok_or_else(|| overflow(hdu))?;
        if hdu == 0 {
            primary = Some(header);
        }
    }
    Err(FitsError::NoImage(seen.join(", ")))
}

fn bad(hdu: usize, detail: String) -> FitsError {
    FitsError::BadHeader { hdu, detail }
}

fn overflow(hdu: usize) -> FitsError {
    bad(hdu, "sizes in the header overflow".into())
}

fn padded(len: usize) -> Option<usize> {
    len.div_ceil(BLOCK).checked_mul(BLOCK)
}

fn opt_count(header: &Header, hdu: usize, key: &str, default: usize) -> Result<usize, FitsError> {
    match header.get(key) {
        None => Ok(default),
        Some(_) => usize::try_from(header.int(hdu, key)?)
            .map_err(|_| bad(hdu, format!("{key} is negative"))),
    }
}

/// The sizes of axes 1..=naxis (`NAXISn` or `ZNAXISn`).
fn axis_sizes(
    header: &Header,
    hdu: usize,
    prefix: &str,
    naxis: i64,
) -> Result<Vec<usize>, FitsError> {
    if !(0..=999).contains(&naxis) {
        return Err(bad(hdu, format!("{prefix} = {naxis} is out of range")));
    }
    (1..=naxis)
        .map(|i| {
            let key = format!("{prefix}{i}");
            let n = header.int(hdu, &key)?;
            usize::try_from(n).map_err(|_| bad(hdu, format!("{key} = {n} is negative")))
        })
        .collect()
}

/// Width and height of an image whose axes beyond the second are degenerate (size 1).
fn image_plane(hdu: usize, axes: &[usize]) -> Result<(usize, usize), FitsError> {
    match axes {
        [nx, ny, rest @ ..] => {
            if let Some((i, n)) = rest.iter().enumerate().find(|(_, n)| **n != 1) {
                return Err(FitsError::Unsupported(format!(
                    "HDU {hdu} is a cube: axis {} has {n} planes (only 2-D images, or 3-D/4-D with \
                     single-plane extra axes, are supported)",
                    i + 3
                )));
            }
            Ok((*nx, *ny))
        }
        _ => Err(FitsError::Unsupported(format!(
            "HDU {hdu} has {} axes, need 2",
            axes.len()
        ))),
    }
}

fn plain_image(
    bytes: &[u8],
    header: Header,
    hdu: usize,
    bitpix: i64,
    axes: &[usize],
    data_offset: usize,
) -> Result<ImageHdu, FitsError> {
    let bitpix = Bitpix::from_header(bitpix)
        .ok_or_else(|| bad(hdu, format!("BITPIX = {bitpix} is not a FITS pixel type")))?;
    let (nx, ny) = image_plane(hdu, axes)?;
    let bscale = header
        .opt_f64("BSCALE")
        .map_err(|d| bad(hdu, d))?
        .unwrap_or(1.0);
    let bzero = header
        .opt_f64("BZERO")
        .map_err(|d| bad(hdu, d))?
        .unwrap_or(0.0);
    if bscale == 0.0 {
        return Err(bad(hdu, "BSCALE = 0".into()));
    }
    let blank = match (bitpix, header.get("BLANK")) {
        (Bitpix::F32 | Bitpix::F64, _) | (_, None) => None,
        (_, Some(Value::Int(b))) => Some(*b),
        (_, Some(other)) => return Err(bad(hdu, format!("BLANK is not an integer: {other:?}"))),
    };
    let data_len = nx
        .checked_mul(ny)
        .and_then(|n| n.checked_mul(bitpix.size()))
        .ok_or_else(|| overflow(hdu))?;
    let end = data_offset
        .checked_add(data_len)
        .ok_or_else(|| overflow(hdu))?;
    if end > bytes.len() {
        return Err(FitsError::Truncated(format!(
            "the {nx}x{ny} image of HDU {hdu} needs bytes {data_offset}..{end}, the file has {}",
            bytes.len()
        )));
    }
    Ok(ImageHdu {
        header,
        nx,
        ny,
        storage: Storage::Plain(PlainLayout {
            data_offset,
            bitpix,
            bscale,
            bzero,
            blank,
        }),
    })
}

/// Parses the header starting at `offset`; returns it and its length in bytes (whole blocks).
fn parse_header(bytes: &[u8], offset: usize, hdu: usize) -> Result<(Header, usize), FitsError> {
    let mut header = Header::default();
    let mut pos = offset;
    loop {
        let Some(card) = bytes.get(pos..pos + CARD) else {
            return Err(FitsError::Truncated(format!(
                "header of HDU {hdu} has no END card"
            )));
        };
        pos += CARD;
        let key = card_keyword(card);
        if key == "END" {
            break;
        }
        if &card[8..10] != b"= " || matches!(key.as_str(), "" | "COMMENT" | "HISTORY") {
            continue;
        }
        let value = match std::str::from_utf8(&card[10..]) {
            Ok(text) => parse_value(text),
            Err(_) => Value::Other(String::from_utf8_lossy(&card[10..]).into_owned()),
        };
        header.insert(normalise_keyword(key), value);
    }
    // A missing pad after the last header is tolerated here: data that should follow it is
    // bounds-checked where it is read.
    let len = padded(pos - offset).ok_or_else(|| overflow(hdu))?;
    Ok((header, len))
}

fn card_keyword(card: &[u8]) -> String {
    let key = &card[..8];
    String::from_utf8_lossy(key).trim_end().to_string()
}

/// `PC01_01` -> `PC1_1` (CASA), `CD001_002` -> `CD1_2`; AIPS's `PC001002` -> `PC1_2` and
/// `CD001002` -> `CD1_2`; AIPS's `PROJPn` -> `PV2_n` (wcslib reads it as the latitude axis's
/// parameter). Other keywords unchanged.
fn normalise_keyword(key: String) -> String {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let strip = |s: &str| {
        let t = s.trim_start_matches('0');
        if t.is_empty() {
            "0".to_string()
        } else {
            t.to_string()
        }
    };
    for prefix in ["PC", "CD", "PV"] {
        if let Some(rest) = key.strip_prefix(prefix) {
            if let Some((i, j)) = rest.split_once('_') {
                if digits(i) && digits(j) {
                    return format!("{prefix}{}_{}", strip(i), strip(j));
                }
            } else if prefix != "PV" && rest.len() == 6 && digits(rest) {
                return format!("{prefix}{}_{}", strip(&rest[..3]), strip(&rest[3..]));
            }
        }
    }
    if let Some(n) = key.strip_prefix("PROJP") {
        if n.len() == 1 && digits(n) {
            return format!("PV2_{n}");
        }
    }
    key
}

/// Parses the value field of a card (columns 11..80).
fn parse_value(text: &str) -> Value {
    let t = text.trim_start();
    if let Some(rest) = t.strip_prefix('\'') {
        // A string: '' is an escaped quote; trailing blanks are not significant.
        let mut out = String::new();
        let mut chars = rest.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\'' {
                if chars.peek() == Some(&'\'') {
                    chars.next();
                    out.push('\'');
                } else {
                    return Value::Str(out.trim_end().to_string());
                }
            } else {
                out.push(c);
            }
        }
        return Value::Other(text.to_string());
    }
    let field = t.split('/').next().unwrap_or("").trim();
    match field {
        "" => Value::Undefined,
        "T" => Value::Logical(true),
        "F" => Value::Logical(false),
        _ => {
            if let Ok(i) = field.parse::<i64>() {
                Value::Int(i)
            } else if let Ok(f) = field.replace(['D', 'd'], "E").parse::<f64>() {
                Value::Float(f)
            } else {
                Value::Other(field.to_string())
            }
        }
    }
}

/// Copies the part of the window `[x0, x0 + w) x [y0, y0 + h)` that lies on the image into
/// `out` (shape `[h, w]`, pre-filled with NaN by the caller), converting to physical values;
/// blank and non-finite pixels (+-Inf, or beyond float32's range) are NaN.
/// Returns the number of finite pixels written.
pub fn read_window(
    bytes: &[u8],
    layout: &PlainLayout,
    nx: usize,
    ny: usize,
    x0: i64,
    y0: i64,
    out: &mut Array2<f32>,
) -> usize {
    let w = out.ncols();
    let Some((cx0, cx1)) = overlap(x0, w, nx) else {
        return 0;
    };
    let size = layout.bitpix.size();
    let mut finite = 0;
    for (wy, mut row) in out.rows_mut().into_iter().enumerate() {
        let iy = y0 + wy as i64;
        if iy < 0 || iy >= ny as i64 {
            continue;
        }
        // In bounds: find_image checked that nx * ny pixels follow data_offset.
        let start = layout.data_offset + (iy as usize * nx + cx0) * size;
        let src = &bytes[start..start + (cx1 - cx0) * size];
        let dst_start = (cx0 as i64 - x0) as usize;
        let Some(dst) = row.as_slice_mut() else {
            continue;
        };
        let dst = &mut dst[dst_start..dst_start + (cx1 - cx0)];
        finite += convert(src, dst, layout);
    }
    finite
}

/// The columns `[a, b)` of the image (0..n) that a window starting at `x0` of width `w` covers.
pub fn overlap(x0: i64, w: usize, n: usize) -> Option<(usize, usize)> {
    let a = x0.max(0);
    let b = x0.saturating_add(w as i64).min(n as i64);
    (a < b).then_some((a as usize, b as usize))
}

fn convert(src: &[u8], dst: &mut [f32], l: &PlainLayout) -> usize {
    let identity = l.bscale == 1.0 && l.bzero == 0.0;
    let scale = |raw: f64| (raw * l.bscale + l.bzero) as f32;
    match l.bitpix {
        Bitpix::F32 if identity => fill::<4>(src, dst, f32::from_be_bytes),
        Bitpix::F32 => fill::<4>(src, dst, |b| scale(f32::from_be_bytes(b) as f64)),
        Bitpix::F64 => fill::<8>(src, dst, |b| scale(f64::from_be_bytes(b))),
        Bitpix::U8 => int_fill::<1>(src, dst, l, |b| b[0] as i64),
        Bitpix::I16 => int_fill::<2>(src, dst, l, |b| i16::from_be_bytes(b) as i64),
        Bitpix::I32 => int_fill::<4>(src, dst, l, |b| i32::from_be_bytes(b) as i64),
        Bitpix::I64 => int_fill::<8>(src, dst, l, i64::from_be_bytes),
    }
}

/// A pixel as a window holds it: a non-finite value (a stored +-Inf, or a float64 or scaled
/// value beyond float32's range, which `as f32` makes infinite) is blank (NaN), as a BLANK
/// one is; an infinite pixel would otherwise survive the clipping and make the image's range
/// infinite. Every reader of pixels applies it.
pub(super) fn finite_or_blank(v: f32) -> f32 {
    if v.is_finite() { v } else { f32::NAN }
}

/// Decodes pixels with `f`, each [`finite_or_blank`]. The decoding loop stays as plain as it
/// was (the window's hot loop); only a row with a non-finite pixel, rare outside blanked
/// mosaics, is passed over again.
fn fill<const N: usize>(src: &[u8], dst: &mut [f32], f: impl Fn([u8; N]) -> f32) -> usize {
    let mut finite = 0;
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(N)) {
        let mut b = [0u8; N];
        b.copy_from_slice(s);
        *d = f(b);
        finite += usize::from(d.is_finite());
    }
    if finite < dst.len() {
        for d in dst.iter_mut() {
            *d = finite_or_blank(*d);
        }
    }
    finite
}

fn int_fill<const N: usize>(
    src: &[u8],
    dst: &mut [f32],
    l: &PlainLayout,
    raw: impl Fn([u8; N]) -> i64,
) -> usize {
    let blank = l.blank;
    fill::<N>(src, dst, |b| {
        let r = raw(b);
        if Some(r) == blank {
            f32::NAN
        } else {
            (r as f64 * l.bscale + l.bzero) as f32
        }
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a FITS byte stream from header cards (without END) and raw data bytes.
    pub(crate) fn fits_bytes(cards: &[String], data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in cards {
            let mut card = format!("{c:<80}").into_bytes();
            card.truncate(80);
            out.extend_from_slice(&card);
        }
        out.extend_from_slice(format!("{:<80}", "END").as_bytes());
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, b' ');
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
        out
    }

    pub(crate) fn card(key: &str, value: &str) -> String {
        format!("{key:<8}= {value:>20}")
    }

    fn simple(bitpix: i64, nx: usize, ny: usize, extra: &[String]) -> Vec<String> {
        let mut cards = vec![
            card("SIMPLE", "T"),
            card("BITPIX", &bitpix.to_string()),
            card("NAXIS", "2"),
            card("NAXIS1", &nx.to_string()),
            card("NAXIS2", &ny.to_string()),
        ];
        cards.extend_from_slice(extra);
        cards
    }

    fn window(bytes: &[u8], x0: i64, y0: i64, w: usize, h: usize) -> (Array2<f32>, usize) {
        let img = find_image(bytes).expect("valid test image");
        let Storage::Plain(layout) = &img.storage else {
            panic!("plain image expected")
        };
        let mut out = Array2::from_elem((h, w), f32::NAN);
        let n = read_window(bytes, layout, img.nx, img.ny, x0, y0, &mut out);
        (out, n)
    }

    #[test]
    fn values_parse_like_fits() {
        assert_eq!(
            parse_value("                 150.5 / X ref"),
            Value::Float(150.5)
        );
        assert_eq!(parse_value("                   300"), Value::Int(300));
        assert_eq!(parse_value("  1.5D-03"), Value::Float(1.5e-3));
        assert_eq!(parse_value("                    T"), Value::Logical(true));
        assert_eq!(
            parse_value("'RA---TAN'           / proj"),
            Value::Str("RA---TAN".into())
        );
        assert_eq!(parse_value("'it''s   '"), Value::Str("it's".into()));
        assert_eq!(
            parse_value("'unterminated"),
            Value::Other("'unterminated".into())
        );
        assert_eq!(parse_value("     "), Value::Undefined);
        assert_eq!(
            parse_value(" (1.0, 2.0)"),
            Value::Other("(1.0, 2.0)".into())
        );
    }

    #[test]
    fn casa_pc_keywords_are_normalised() {
        assert_eq!(normalise_keyword("PC01_01".into()), "PC1_1");
        assert_eq!(normalise_keyword("PC002_001".into()), "PC2_1");
        assert_eq!(normalise_keyword("CD1_2".into()), "CD1_2");
        assert_eq!(normalise_keyword("PV2_0".into()), "PV2_0");
        assert_eq!(normalise_keyword("PCOUNT".into()), "PCOUNT");
        // AIPS spellings, as wcslib (astropy.wcs) reads them.
        assert_eq!(normalise_keyword("PC001002".into()), "PC1_2");
        assert_eq!(normalise_keyword("CD002001".into()), "CD2_1");
        assert_eq!(normalise_keyword("PROJP1".into()), "PV2_1");
        assert_eq!(normalise_keyword("PC00100".into()), "PC00100");
        assert_eq!(normalise_keyword("PV001002".into()), "PV001002");
        assert_eq!(normalise_keyword("PROJP10".into()), "PROJP10");
    }

    #[test]
    fn repeated_keywords_keep_the_first_and_are_recorded() {
        let cards = simple(
            -32,
            1,
            1,
            &[
                card("CRVAL1", "10.0"),
                card("CRVAL1", "20.0"),
                card("PC1_1", "1.0"),
                card("PC01_01", "1.0"),
                card("CRVAL1", "30.0"),
                card("OBJECT", "'x'"),
            ],
        );
        let img = find_image(&fits_bytes(&cards, &[0u8; 4])).expect("image");
        assert_eq!(img.header.get("CRVAL1"), Some(&Value::Float(10.0)));
        assert_eq!(
            img.header.duplicated().collect::<Vec<_>>(),
            ["CRVAL1", "PC1_1"]
        );

        // Inherited from the primary header: a duplicate stays one unless the extension
        // sets the keyword itself.
        let mut primary = vec![
            card("SIMPLE", "T"),
            card("BITPIX", "8"),
            card("NAXIS", "0"),
            card("EXTEND", "T"),
        ];
        primary.extend([card("CDELT1", "1.0"), card("CDELT1", "2.0")]);
        primary.extend([card("CDELT2", "1.0"), card("CDELT2", "2.0")]);
        let mut bytes = fits_bytes(&primary, &[]);
        let ext = vec![
            card("XTENSION", "'IMAGE   '"),
            card("BITPIX", "8"),
            card("NAXIS", "2"),
            card("NAXIS1", "1"),
            card("NAXIS2", "1"),
            card("PCOUNT", "0"),
            card("GCOUNT", "1"),
            card("INHERIT", "T"),
            card("CDELT2", "3.0"),
        ];
        bytes.extend(fits_bytes(&ext, &[0u8]));
        let img = find_image(&bytes).expect("image");
        assert_eq!(img.header.duplicated().collect::<Vec<_>>(), ["CDELT1"]);
        assert_eq!(img.header.get("CDELT2"), Some(&Value::Float(3.0)));
    }

    #[test]
    fn every_bitpix_with_scaling_and_blank() {
        // 2x1 images: second pixel is BLANK for the integer types.
        let cases: Vec<(i64, Vec<u8>)> = vec![
            (8, vec![7, 255]),
            (
                16,
                [(-3i16).to_be_bytes(), (-32768i16).to_be_bytes()].concat(),
            ),
            (
                32,
                [(-3i32).to_be_bytes(), (i32::MIN).to_be_bytes()].concat(),
            ),
            (
                64,
                [(-3i64).to_be_bytes(), (i64::MIN).to_be_bytes()].concat(),
            ),
        ];
        for (bitpix, data) in cases {
            let blank = match bitpix {
                8 => 255,
                16 => i16::MIN as i64,
                32 => i32::MIN as i64,
                _ => i64::MIN,
            };
            let extra = [
                card("BSCALE", "0.5"),
                card("BZERO", "10.0"),
                card("BLANK", &blank.to_string()),
            ];
            let bytes = fits_bytes(&simple(bitpix, 2, 1, &extra), &data);
            let (w, n) = window(&bytes, 0, 0, 2, 1);
            let raw0 = if bitpix == 8 { 7.0 } else { -3.0 };
            assert_eq!(w[[0, 0]], (raw0 * 0.5 + 10.0) as f32, "BITPIX {bitpix}");
            assert!(
                w[[0, 1]].is_nan(),
                "BITPIX {bitpix}: BLANK must read as NaN"
            );
            assert_eq!(n, 1);
        }
        let f32s = [1.25f32.to_be_bytes(), f32::NAN.to_be_bytes()].concat();
        let (w, n) = window(&fits_bytes(&simple(-32, 2, 1, &[]), &f32s), 0, 0, 2, 1);
        assert_eq!((w[[0, 0]], n), (1.25, 1));
        let f64s = [2.5f64.to_be_bytes(), 4.0f64.to_be_bytes()].concat();
        let (w, _) = window(
            &fits_bytes(&simple(-64, 2, 1, &[card("BZERO", "1.0")]), &f64s),
            0,
            0,
            2,
            1,
        );
        assert_eq!(w.as_slice(), Some(&[3.5f32, 5.0][..]));
    }

    #[test]
    fn non_finite_and_out_of_range_pixels_read_as_blank() {
        // float32: +-Inf stored; float64: Inf and values beyond float32's range (as f32
        // would make them infinite); scaled integers whose physical value overflows float32.
        let f32s = [f32::INFINITY, 1.5, f32::NEG_INFINITY, f32::MAX]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect::<Vec<u8>>();
        let (w, n) = window(&fits_bytes(&simple(-32, 4, 1, &[]), &f32s), 0, 0, 4, 1);
        assert!(w[[0, 0]].is_nan() && w[[0, 2]].is_nan(), "{w:?}");
        assert_eq!((w[[0, 1]], w[[0, 3]], n), (1.5, f32::MAX, 2));
        // The same through the scaled float32 path.
        let scaled = [card("BSCALE", "2.0")];
        let (w, n) = window(&fits_bytes(&simple(-32, 4, 1, &scaled), &f32s), 0, 0, 4, 1);
        assert!(w[[0, 0]].is_nan() && w[[0, 2]].is_nan() && w[[0, 3]].is_nan());
        assert_eq!((w[[0, 1]], n), (3.0, 1));
        let f64s = [1e40, -1e300, f64::INFINITY, 2.5, f64::NEG_INFINITY]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect::<Vec<u8>>();
        let (w, n) = window(&fits_bytes(&simple(-64, 5, 1, &[]), &f64s), 0, 0, 5, 1);
        assert_eq!(n, 1);
        assert_eq!(w[[0, 3]], 2.5);
        assert!([0, 1, 2, 4].iter().all(|&x| w[[0, x]].is_nan()), "{w:?}");
        let ints = [1i32, -2, 3]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect::<Vec<u8>>();
        let huge = [card("BSCALE", "2.0E38"), card("BZERO", "0.0")];
        let (w, n) = window(&fits_bytes(&simple(32, 3, 1, &huge), &ints), 0, 0, 3, 1);
        assert_eq!((w[[0, 0]], n), (2.0e38, 1));
        assert!(w[[0, 1]].is_nan() && w[[0, 2]].is_nan(), "{w:?}");
    }

    #[test]
    fn window_off_the_edges_is_nan_padded() {
        let data: Vec<u8> = (0..12u8).collect(); // 4x3 image, value = y*4 + x
        let bytes = fits_bytes(&simple(8, 4, 3, &[]), &data);
        let (w, n) = window(&bytes, -1, 1, 3, 3);
        // Rows y = 1, 2 on the image, y = 3 off; column x = -1 off.
        assert!(w[[0, 0]].is_nan() && w[[2, 1]].is_nan());
        assert_eq!(
            (w[[0, 1]], w[[0, 2]], w[[1, 1]], w[[1, 2]]),
            (4.0, 5.0, 8.0, 9.0)
        );
        assert_eq!(n, 4);
        let (_, n) = window(&bytes, 10, 0, 3, 3);
        assert_eq!(n, 0);
    }

    #[test]
    fn degenerate_axes_are_accepted_and_cubes_refused() {
        let mut cards = simple(-32, 2, 2, &[]);
        cards[2] = card("NAXIS", "4");
        cards.push(card("NAXIS3", "1"));
        cards.push(card("NAXIS4", "1"));
        let data = vec![0u8; 16];
        let img = find_image(&fits_bytes(&cards, &data)).expect("degenerate 4-D image");
        assert_eq!((img.nx, img.ny), (2, 2));
        cards[6] = card("NAXIS4", "2");
        let err = find_image(&fits_bytes(&cards, &[0u8; 32])).expect_err("a cube");
        assert!(
            matches!(err, FitsError::Unsupported(ref d) if d.contains("axis 4 has 2 planes")),
            "{err}"
        );
    }

    #[test]
    fn image_in_an_extension_after_an_empty_primary() {
        let primary = vec![
            card("SIMPLE", "T"),
            card("BITPIX", "8"),
            card("NAXIS", "0"),
            card("EXTEND", "T"),
        ];
        let mut bytes = fits_bytes(&primary, &[]);
        let ext = vec![
            card("XTENSION", "'IMAGE   '"),
            card("BITPIX", "16"),
            card("NAXIS", "2"),
            card("NAXIS1", "1"),
            card("NAXIS2", "1"),
            card("PCOUNT", "0"),
            card("GCOUNT", "1"),
        ];
        bytes.extend(fits_bytes(&ext, &5i16.to_be_bytes()));
        let (w, _) = window(&bytes, 0, 0, 1, 1);
        assert_eq!(w[[0, 0]], 5.0);
    }

    #[test]
    fn table_only_truncated_and_garbage_are_errors() {
        let primary = vec![
            card("SIMPLE", "T"),
            card("BITPIX", "8"),
            card("NAXIS", "0"),
            card("EXTEND", "T"),
        ];
        let mut bytes = fits_bytes(&primary, &[]);
        let table = vec![
            card("XTENSION", "'BINTABLE'"),
            card("BITPIX", "8"),
            card("NAXIS", "2"),
            card("NAXIS1", "4"),
            card("NAXIS2", "2"),
            card("PCOUNT", "0"),
            card("GCOUNT", "1"),
            card("TFIELDS", "1"),
        ];
        bytes.extend(fits_bytes(&table, &[0u8; 8]));
        let err = find_image(&bytes).expect_err("no image");
        assert!(
            matches!(err, FitsError::NoImage(ref s) if s.contains("BINTABLE")),
            "{err}"
        );

        let full = fits_bytes(&simple(-32, 10, 10, &[]), &[0u8; 400]);
        let err = find_image(&full[..2880 + 100]).expect_err("truncated data");
        assert!(matches!(err, FitsError::Truncated(_)), "{err}");
        let err = find_image(&full[..800]).expect_err("no END");
        assert!(matches!(err, FitsError::Truncated(_)), "{err}");

        assert!(matches!(find_image(b"hello"), Err(FitsError::NotFits(_))));
        assert!(matches!(
            find_image(&[0u8; 5760]),
            Err(FitsError::NotFits(_))
        ));
        let huge = simple(-64, usize::MAX / 2, 4, &[]);
        assert!(find_image(&fits_bytes(&huge, &[])).is_err());
        let bad_bitpix = simple(12, 2, 2, &[]);
        assert!(matches!(
            find_image(&fits_bytes(&bad_bitpix, &[0; 8])),
            Err(FitsError::BadHeader { .. })
        ));
    }
}
