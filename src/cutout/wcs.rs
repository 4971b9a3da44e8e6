//! The celestial WCS of an image (FITS WCS Paper II, zenithal projections): validated from
//! its header, then evaluated here. This module owns the mapping between sky (RA, Dec in
//! degrees, ICRS) and 0-based pixel coordinates; it does not read pixels.
//!
//! Why not the `wcs` crate (cds-astro), which was the plan: besides the traps RECIPES lists
//! (radians in, 1-based pixels out, NCP treated as SIN, SIN slant terms and distortions
//! ignored, a missing CDELT taken as 1 degree, FK4 ignored, a panic on short CTYPEs), it was
//! found here to invert a non-symmetric CD matrix wrongly (pixels off by several pixels for
//! skewed or non-square-pixel headers), and its `mapproj` back end panics on a
//! debug assertion when a position sits on the projection centre (exactly what a
//! `centre_of_cutout` or a source at a tile's reference point gives). The zenithal
//! projections radio surveys use are a few lines each, so they are evaluated here with unit
//! vectors (accurate near the reference point and the poles), and checked against astropy.
//! Anything else is refused with a message that says why.

use std::f64::consts::PI;
use std::fmt;

use super::fits::{Header, Value};

/// Which zenithal projection (Paper II section 5.1), by its `CTYPE` code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Zenithal {
    Tan,
    Sin,
    Arc,
    Stg,
    Zea,
}

impl Zenithal {
    const ALL: [(Zenithal, &'static str); 5] = [
        (Zenithal::Tan, "TAN"),
        (Zenithal::Sin, "SIN"),
        (Zenithal::Arc, "ARC"),
        (Zenithal::Stg, "STG"),
        (Zenithal::Zea, "ZEA"),
    ];

    fn code(self) -> &'static str {
        Zenithal::ALL
            .iter()
            .find(|(z, _)| *z == self)
            .map_or("", |(_, c)| c)
    }

    /// Radius on the projection plane (radians) of native colatitude `zeta` (radians);
    /// None where the projection does not reach.
    fn radius(self, zeta: f64) -> Option<f64> {
        match self {
            Zenithal::Tan => (zeta < PI / 2.0).then(|| zeta.tan()),
            Zenithal::Sin => (zeta <= PI / 2.0).then(|| zeta.sin()),
            Zenithal::Arc => Some(zeta),
            Zenithal::Stg => (zeta < PI).then(|| 2.0 * (zeta / 2.0).tan()),
            Zenithal::Zea => Some(2.0 * (zeta / 2.0).sin()),
        }
    }

    /// Native colatitude of plane radius `r` (radians); None off the projection.
    fn colatitude(self, r: f64) -> Option<f64> {
        match self {
            Zenithal::Tan => Some(r.atan()),
            Zenithal::Sin => (r <= 1.0).then(|| r.asin()),
            Zenithal::Arc => (r <= PI).then_some(r),
            Zenithal::Stg => Some(2.0 * (r / 2.0).atan()),
            Zenithal::Zea => (r <= 2.0).then(|| 2.0 * (r / 2.0).asin()),
        }
    }
}

/// ICRS to Galactic rotation (rows), as astropy 8 computes it.
const ICRS_TO_GALACTIC: [[f64; 3]; 3] = [
    [
        -0.05487565771259163,
        -0.8734370519556159,
        -0.48383507361671546,
    ],
    [0.4941094371927268, -0.4448297212232952, 0.7469821839866676],
    [
        -0.8676661375596576,
        -0.19807633727300053,
        0.4559838136873016,
    ],
];

/// Why an image has no usable celestial WCS.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WcsError {
    #[error("no celestial WCS: {0}")]
    Missing(String),
    #[error("unsupported WCS: {0}")]
    Unsupported(String),
    #[error("invalid WCS: {0}")]
    Invalid(String),
}

/// A checked celestial WCS for one image.
#[derive(Clone)]
pub struct CelestialWcs {
    projection: Zenithal,
    frame: Frame,
    /// `CRPIXi` (1-based) and the pixel-to-intermediate matrix (degrees per pixel), and its inverse.
    crpix: [f64; 2],
    cd: [[f64; 2]; 2],
    inverse: [[f64; 2]; 2],
    /// Native to celestial (in the image's frame) rotation: celestial = rot * native.
    rot: [[f64; 3]; 3],
}

impl fmt::Debug for CelestialWcs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CelestialWcs")
            .field("projection", &self.projection.code())
            .field("frame", &self.frame)
            .field("crpix", &self.crpix)
            .field("cd", &self.cd)
            .finish_non_exhaustive()
    }
}

impl CelestialWcs {
    /// Validates the header's celestial WCS (axes 1 and 2) for an `nx` x `ny` image.
    pub fn from_header(h: &Header, nx: usize, ny: usize) -> Result<CelestialWcs, WcsError> {
        let ctype1 = h
            .opt_str("CTYPE1")
            .ok_or_else(|| WcsError::Missing("no CTYPE1".into()))?;
        let ctype2 = h
            .opt_str("CTYPE2")
            .ok_or_else(|| WcsError::Missing("no CTYPE2".into()))?;
        check_duplicates(h)?;
        let (frame, projection) = axis_types(ctype1, ctype2)?;
        check_frame(h, frame)?;
        check_units(h)?;
        let pv_lonpole = check_pv(h, projection)?;

        let num = |key: &str| h.opt_f64(key).map_err(WcsError::Invalid);
        let required = |key: &str| num(key)?.ok_or_else(|| WcsError::Missing(format!("no {key}")));
        let crval = [required("CRVAL1")?, required("CRVAL2")?];
        if !(-90.0..=90.0).contains(&crval[1]) {
            return Err(WcsError::Invalid(format!(
                "CRVAL2 = {} is not a latitude",
                crval[1]
            )));
        }
        let crpix = [required("CRPIX1")?, required("CRPIX2")?];
        let mut cd = [[None; 2]; 2];
        let mut pc = [[None; 2]; 2];
        for i in 0..2 {
            for j in 0..2 {
                let (ki, kj) = (i + 1, j + 1);
                cd[i][j] = num(&format!("CD{ki}_{kj}"))?;
                pc[i][j] = num(&format!("PC{ki}_{kj}"))?;
            }
        }
        let has_cd = cd.iter().flatten().any(Option::is_some);
        if has_cd && pc.iter().flatten().any(Option::is_some) {
            // Paper I forbids the mix; wcslib (astropy.wcs) takes PCi_j with CDELTi where
            // others take CDi_j: refuse rather than pick.
            return Err(WcsError::Invalid(
                "both CDi_j and PCi_j keywords: readers disagree on which counts (astropy.wcs \
                 takes PCi_j); keep one of them"
                    .into(),
            ));
        }
        // Paper I precedence: CDi_j, else CDELTi with PCi_j, else CDELTi with CROTA2.
        let matrix = if has_cd {
            cd.map(|r| r.map(|v| v.unwrap_or(0.0)))
        } else {
            let (Some(c1), Some(c2)) = (num("CDELT1")?, num("CDELT2")?) else {
                return Err(WcsError::Missing(
                    "no pixel scale: neither CDi_j nor CDELT1 and CDELT2".into(),
                ));
            };
            if pc.iter().flatten().any(Option::is_some) {
                let p = [
                    [pc[0][0].unwrap_or(1.0), pc[0][1].unwrap_or(0.0)],
                    [pc[1][0].unwrap_or(0.0), pc[1][1].unwrap_or(1.0)],
                ];
                [[c1 * p[0][0], c1 * p[0][1]], [c2 * p[1][0], c2 * p[1][1]]]
            } else {
                // The rotation is CROTA2's (the latitude axis'); astropy.wcs ignores CROTA1,
                // so a CROTA1 that says otherwise is refused, not guessed at.
                let crota = num("CROTA2")?.unwrap_or(0.0);
                if let Some(c1) = num("CROTA1")? {
                    if c1 != crota {
                        return Err(WcsError::Invalid(format!(
                            "CROTA1 = {c1} but CROTA2 = {crota}{}: the rotation is ambiguous \
                             (astropy.wcs takes CROTA2 and ignores CROTA1); give CROTA2 alone \
                             or equal values",
                            if h.get("CROTA2").is_none() {
                                " (absent)"
                            } else {
                                ""
                            }
                        )));
                    }
                }
                let (s, c) = crota.to_radians().sin_cos();
                [[c1 * c, -c2 * s], [c1 * s, c2 * c]]
            }
        };
        let det = matrix[0][0] * matrix[1][1] - matrix[0][1] * matrix[1][0];
        if !(det.is_finite() && det != 0.0) {
            return Err(WcsError::Invalid(format!(
                "singular pixel-to-sky matrix {matrix:?}"
            )));
        }
        let inverse = [
            [matrix[1][1] / det, -matrix[0][1] / det],
            [-matrix[1][0] / det, matrix[0][0] / det],
        ];
        // Zenithal: the reference point is the native pole; LONPOLE (or its alias PV1_3)
        // defaults to 180 deg unless the reference point is the celestial pole (Paper II
        // section 2.5).
        let lonpole = match (num("LONPOLE")?, pv_lonpole) {
            (Some(l), Some(p)) if l != p => {
                return Err(WcsError::Invalid(format!(
                    "LONPOLE = {l} but PV1_3 (its alias) = {p}"
                )));
            }
            (Some(l), _) | (None, Some(l)) => l,
            (None, None) => {
                if crval[1] < 90.0 {
                    180.0
                } else {
                    0.0
                }
            }
        };
        let rot = native_to_celestial(
            crval[0].to_radians(),
            crval[1].to_radians(),
            lonpole.to_radians(),
        );
        let wcs = CelestialWcs {
            projection,
            frame,
            crpix,
            cd: matrix,
            inverse,
            rot,
        };
        // A WCS that cannot map its own centre is unusable (e.g. a reference point so far
        // off that the image lies beyond the projection's horizon).
        let (cx, cy) = ((nx as f64 - 1.0) / 2.0, (ny as f64 - 1.0) / 2.0);
        wcs.pixel_to_world(cx, cy)
            .and_then(|(ra, dec)| wcs.world_to_pixel(ra, dec))
            .filter(|(x, y)| (x - cx).abs() < 1e-6 && (y - cy).abs() < 1e-6)
            .ok_or_else(|| {
                WcsError::Invalid("the image centre does not map to the sky and back".into())
            })?;
        Ok(wcs)
    }

    /// Projection code, e.g. `"TAN"`.
    pub fn projection(&self) -> &'static str {
        self.projection.code()
    }

    /// (RA, Dec) in degrees to a 0-based pixel; None where the projection does not reach.
    pub fn world_to_pixel(&self, ra: f64, dec: f64) -> Option<(f64, f64)> {
        let mut c = unit(ra.to_radians(), dec.to_radians());
        if self.frame == Frame::Galactic {
            c = mul(&ICRS_TO_GALACTIC, c);
        }
        let n = mul_transposed(&self.rot, c);
        let zeta = n[0].hypot(n[1]).atan2(n[2]);
        let phi = n[1].atan2(n[0]);
        let r = self.projection.radius(zeta)?.to_degrees();
        let (u, v) = (r * phi.sin(), -r * phi.cos());
        let m = &self.inverse;
        // 1-based FITS pixel minus one.
        let x = self.crpix[0] + m[0][0] * u + m[0][1] * v - 1.0;
        let y = self.crpix[1] + m[1][0] * u + m[1][1] * v - 1.0;
        (x.is_finite() && y.is_finite()).then_some((x, y))
    }

    /// A 0-based pixel to (RA, Dec) in degrees, RA in [0, 360); None off the projection.
    pub fn pixel_to_world(&self, x: f64, y: f64) -> Option<(f64, f64)> {
        let (dx, dy) = (x + 1.0 - self.crpix[0], y + 1.0 - self.crpix[1]);
        let m = &self.cd;
        let (u, v) = (m[0][0] * dx + m[0][1] * dy, m[1][0] * dx + m[1][1] * dy);
        let zeta = self.projection.colatitude(u.hypot(v).to_radians())?;
        let phi = u.atan2(-v);
        let (sz, cz) = zeta.sin_cos();
        let mut c = mul(&self.rot, [sz * phi.cos(), sz * phi.sin(), cz]);
        if self.frame == Frame::Galactic {
            c = mul_transposed(&ICRS_TO_GALACTIC, c);
        }
        let ra = c[1].atan2(c[0]).to_degrees().rem_euclid(360.0);
        let dec = c[2].atan2(c[0].hypot(c[1])).to_degrees();
        let ra = if ra >= 360.0 { 0.0 } else { ra };
        (ra.is_finite() && dec.is_finite()).then_some((ra, dec))
    }

    /// The sky size (arcsec) of a pixel at 0-based pixel (x, y), along x and along y: the
    /// angles between the positions half a pixel either side. None where one of them is off
    /// the projection.
    pub fn pixel_scale_at(&self, x: f64, y: f64) -> Option<(f64, f64)> {
        let at = |x, y| {
            self.pixel_to_world(x, y)
                .map(|(ra, dec): (f64, f64)| unit(ra.to_radians(), dec.to_radians()))
        };
        Some((
            angle_arcsec(at(x - 0.5, y)?, at(x + 0.5, y)?),
            angle_arcsec(at(x, y - 0.5)?, at(x, y + 0.5)?),
        ))
    }
}

/// The angle between two unit vectors (arcsec), accurate at any size.
fn angle_arcsec(a: [f64; 3], b: [f64; 3]) -> f64 {
    let cross = [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ];
    let sin = cross[0].hypot(cross[1]).hypot(cross[2]);
    let cos = a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
    sin.atan2(cos).to_degrees() * 3600.0
}

fn unit(lon: f64, lat: f64) -> [f64; 3] {
    let (sl, cl) = lon.sin_cos();
    let (sb, cb) = lat.sin_cos();
    [cb * cl, cb * sl, sb]
}

fn mul(m: &[[f64; 3]; 3], v: [f64; 3]) -> [f64; 3] {
    m.map(|row| row[0] * v[0] + row[1] * v[1] + row[2] * v[2])
}

fn mul_transposed(m: &[[f64; 3]; 3], v: [f64; 3]) -> [f64; 3] {
    [0, 1, 2].map(|j| m[0][j] * v[0] + m[1][j] * v[1] + m[2][j] * v[2])
}

/// Rz(alpha_p) * Ry(90 deg - delta_p) * Rz(180 deg - phi_p): Paper II eq. (2) as a matrix
/// taking native unit vectors (the native pole at the reference point) to celestial ones.
fn native_to_celestial(alpha_p: f64, delta_p: f64, phi_p: f64) -> [[f64; 3]; 3] {
    let rz = |a: f64| {
        let (s, c) = a.sin_cos();
        [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]
    };
    let ry = |b: f64| {
        let (s, c) = b.sin_cos();
        [[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]]
    };
    let prod = |a: [[f64; 3]; 3], b: [[f64; 3]; 3]| {
        let mut out = [[0.0; 3]; 3];
        for (i, row) in out.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = (0..3).map(|k| a[i][k] * b[k][j]).sum();
            }
        }
        out
    };
    prod(prod(rz(alpha_p), ry(PI / 2.0 - delta_p)), rz(PI - phi_p))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Frame {
    Equatorial,
    Galactic,
}

/// Checks `CTYPE1`/`CTYPE2` (longitude first, 8 characters, same projection) and returns
/// the frame and the projection.
fn axis_types(ctype1: &str, ctype2: &str) -> Result<(Frame, Zenithal), WcsError> {
    let split = |c: &str| -> Option<(String, String)> {
        if !c.is_ascii() || c.len() < 8 || c.as_bytes()[4] != b'-' {
            return None;
        }
        Some((c[..4].to_string(), c[5..].to_string()))
    };
    let not_celestial = || {
        WcsError::Missing(format!(
            "axes 1 and 2 are not a celestial pair: CTYPE1 = '{ctype1}', CTYPE2 = '{ctype2}'"
        ))
    };
    let (Some((lon, p1)), Some((lat, p2))) = (split(ctype1), split(ctype2)) else {
        return Err(not_celestial());
    };
    let frame = match (lon.as_str(), lat.as_str()) {
        ("RA--", "DEC-") => Frame::Equatorial,
        ("GLON", "GLAT") => Frame::Galactic,
        ("DEC-", "RA--") | ("GLAT", "GLON") => {
            return Err(WcsError::Unsupported(format!(
                "latitude on axis 1 (CTYPE1 = '{ctype1}'): transposed images are not supported"
            )));
        }
        (l, _) if ["ELON", "SLON", "HLON"].contains(&l) => {
            return Err(WcsError::Unsupported(format!(
                "frame of CTYPE1 = '{ctype1}': only RA/DEC and GLON/GLAT"
            )));
        }
        _ => return Err(not_celestial()),
    };
    if p1 != p2 {
        return Err(WcsError::Invalid(format!(
            "CTYPE1 = '{ctype1}' and CTYPE2 = '{ctype2}' differ in projection"
        )));
    }
    if p1.len() > 3 {
        return Err(WcsError::Unsupported(format!(
            "'{ctype1}': distortion conventions ({}) are not supported",
            p1[3..].trim_start_matches('-')
        )));
    }
    if p1 == "NCP" {
        return Err(WcsError::Unsupported(
            "NCP projection (old AIPS north-celestial-pole SIN) is not supported: it is SIN with slant \
             terms; reproject to SIN or TAN"
                .into(),
        ));
    }
    let supported = || Zenithal::ALL.map(|(_, c)| c).join(", ");
    let projection = Zenithal::ALL
        .iter()
        .find(|(_, c)| *c == p1)
        .map(|(z, _)| *z)
        .ok_or_else(|| {
            WcsError::Unsupported(format!("projection '{p1}' (supported: {})", supported()))
        })?;
    Ok((frame, projection))
}

/// Equatorial coordinates must be ICRS or FK5 J2000 (they agree to well under a pixel);
/// FK4/B1950 and apparent places would need a frame conversion that is not done here.
fn check_frame(h: &Header, frame: Frame) -> Result<(), WcsError> {
    if frame == Frame::Galactic {
        return Ok(());
    }
    let radesys = h
        .opt_str("RADESYS")
        .or(h.opt_str("RADECSYS"))
        .map(str::trim);
    let equinox = match h.opt_f64("EQUINOX").map_err(WcsError::Invalid)? {
        Some(e) => Some(e),
        None => h.opt_f64("EPOCH").map_err(WcsError::Invalid)?,
    };
    match radesys {
        Some("ICRS") => Ok(()),
        Some("FK5") | None => match equinox {
            Some(e) if (e - 2000.0).abs() > 1e-6 => Err(WcsError::Unsupported(format!(
                "equinox {e}: only J2000 (FK5) or ICRS coordinates"
            ))),
            _ => Ok(()),
        },
        Some(other) => Err(WcsError::Unsupported(format!(
            "RADESYS = '{other}': only ICRS or FK5 J2000"
        ))),
    }
}

/// The keywords this module reads, or that would change what it computes if another reader
/// took them differently: the primary WCS of axes 1 and 2 and the frame.
fn is_wcs_keyword(key: &str) -> bool {
    const GLOBAL: [&str; 7] = [
        "LONPOLE", "LATPOLE", "EQUINOX", "EPOCH", "RADESYS", "RADECSYS", "WCSAXES",
    ];
    const PER_AXIS: [&str; 6] = ["CTYPE", "CUNIT", "CRVAL", "CRPIX", "CDELT", "CROTA"];
    let axis = |s: &str| matches!(s, "1" | "2");
    if GLOBAL.contains(&key)
        || PER_AXIS
            .iter()
            .any(|p| key.strip_prefix(p).is_some_and(axis))
    {
        return true;
    }
    let matrix = |rest: &str| {
        rest.split_once('_')
            .is_some_and(|(i, j)| axis(i) && axis(j))
    };
    let param = |rest: &str| {
        rest.split_once('_')
            .is_some_and(|(i, m)| axis(i) && !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()))
    };
    key.strip_prefix("CD").is_some_and(matrix)
        || key.strip_prefix("PC").is_some_and(matrix)
        || key.strip_prefix("PV").is_some_and(param)
}

/// A WCS keyword given twice: astropy.io.fits reads the first, wcslib (astropy.wcs) the last;
/// neither is safe to assume.
fn check_duplicates(h: &Header) -> Result<(), WcsError> {
    match h.duplicated().find(|k| is_wcs_keyword(k)) {
        None => Ok(()),
        Some(key) => Err(WcsError::Invalid(format!(
            "WCS keyword {key} is given more than once (after normalising spellings such as \
             PC01_01 or PC001001): readers disagree on which counts (astropy.wcs takes the \
             last); keep one"
        ))),
    }
}

fn check_units(h: &Header) -> Result<(), WcsError> {
    for key in ["CUNIT1", "CUNIT2"] {
        if let Some(u) = h.opt_str(key) {
            let u = u.trim();
            let degrees = ["deg", "degree", "degrees"]
                .iter()
                .any(|d| u.eq_ignore_ascii_case(d));
            if !u.is_empty() && !degrees {
                return Err(WcsError::Unsupported(format!(
                    "{key} = '{u}': celestial axes must be in degrees ('deg')"
                )));
            }
        }
    }
    Ok(())
}

/// Projection parameters. None of the supported projections takes a `PV2_m` (SIN's slant
/// terms, PV2_1 and PV2_2, must be 0): any non-zero one is refused. On the longitude axis,
/// PV1_0..PV1_2 place the fiducial point, which must stay at the zenithal default
/// (phi_0, theta_0) = (0, 90); PV1_3 and PV1_4 are aliases of LONPOLE and LATPOLE and must
/// agree with them where both are given. Returns PV1_3, which stands in for LONPOLE.
fn check_pv(h: &Header, projection: Zenithal) -> Result<Option<f64>, WcsError> {
    let code = projection.code();
    // `PVi_m` of the celestial axes, in (i, m) order so that the first problem is named.
    let mut params: Vec<(u32, u32, f64)> = Vec::new();
    for (key, v) in h.cards() {
        let Some((i, m)) = key.strip_prefix("PV").and_then(|r| r.split_once('_')) else {
            continue;
        };
        let (Ok(i), Ok(m)) = (i.parse::<u32>(), m.parse::<u32>()) else {
            continue;
        };
        if !(1..=2).contains(&i) || *v == Value::Undefined {
            continue;
        }
        let v = v
            .as_f64()
            .filter(|f| f.is_finite())
            .ok_or_else(|| WcsError::Invalid(format!("{key} is not a finite number: {v:?}")))?;
        params.push((i, m, v));
    }
    params.sort_by_key(|&(i, m, _)| (i, m));
    let mut pv1_3 = None;
    for (i, m, v) in params {
        let key = format!("PV{i}_{m}");
        match (i, m) {
            (1, 0) if v == 0.0 || v == 1.0 => {}
            (1, 1) if v == 0.0 => {}
            (1, 2) if v == 90.0 => {}
            (1, 0..=2) => {
                let (what, default) = match m {
                    0 => ("the fiducial offset flag", "0 or 1"),
                    1 => ("phi_0 of the fiducial point", "0"),
                    _ => ("theta_0 of the fiducial point", "90"),
                };
                return Err(WcsError::Unsupported(format!(
                    "{key} = {v} ({what}) on a {code} projection: a moved fiducial point is not \
                     supported (only {default})"
                )));
            }
            (1, 3) => pv1_3 = Some(v),
            (1, 4) => {
                if let Some(l) = h.opt_f64("LATPOLE").map_err(WcsError::Invalid)? {
                    if l != v {
                        return Err(WcsError::Invalid(format!(
                            "LATPOLE = {l} but {key} (its alias) = {v}"
                        )));
                    }
                }
            }
            _ if v == 0.0 => {}
            (1, _) => {
                return Err(WcsError::Unsupported(format!(
                    "{key} = {v} on a {code} projection: not a parameter of a zenithal projection"
                )));
            }
            _ => {
                let what = match (projection, m) {
                    (Zenithal::Sin, 1 | 2) => "a SIN slant term (an NCP-like or tilted projection)",
                    _ => "a projection parameter",
                };
                return Err(WcsError::Unsupported(format!(
                    "{key} = {v} on a {code} projection: {what}, which is not supported (only 0)"
                )));
            }
        }
    }
    Ok(pv1_3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cutout::fits::find_image;
    use crate::cutout::fits::tests::{card, fits_bytes};

    fn header(cards: &[(&str, &str)], nx: usize, ny: usize) -> Header {
        let mut all = vec![
            card("SIMPLE", "T"),
            card("BITPIX", "8"),
            card("NAXIS", "2"),
            card("NAXIS1", &nx.to_string()),
            card("NAXIS2", &ny.to_string()),
        ];
        all.extend(cards.iter().map(|(k, v)| card(k, v)));
        find_image(&fits_bytes(&all, &vec![0u8; nx * ny]))
            .expect("valid test header")
            .header
    }

    fn wcs(cards: &[(&str, &str)]) -> Result<CelestialWcs, WcsError> {
        CelestialWcs::from_header(&header(cards, 100, 100), 100, 100)
    }

    /// Asserts pixel -> sky matches astropy's `wcs_pix2world(x, y, 0)` (to 1e-9 degrees)
    /// and astropy's sky position maps back to the pixel (to 1e-6 pixels).
    /// (x, y) 0-based pixel and astropy's (RA, Dec) there.
    type Case = (f64, f64, f64, f64);

    fn check(w: &CelestialWcs, cases: &[Case]) {
        for &(x, y, ra, dec) in cases {
            let (r, d) = w.pixel_to_world(x, y).expect("on the projection");
            let dra = ((r - ra + 540.0) % 360.0 - 180.0) * dec.to_radians().cos();
            assert!(
                dra.abs() < 1e-9 && (d - dec).abs() < 1e-9,
                "({x}, {y}) -> ({r}, {d}), astropy ({ra}, {dec})"
            );
            let (px, py) = w.world_to_pixel(ra, dec).expect("on the projection");
            assert!(
                (px - x).abs() < 1e-6 && (py - y).abs() < 1e-6,
                "({ra}, {dec}) -> ({px}, {py}), want ({x}, {y})"
            );
        }
    }

    const ROTATED: [(&str, &str); 6] = [
        ("CRPIX1", "40.3"),
        ("CRPIX2", "61.7"),
        ("CRVAL1", "201.5"),
        ("CRVAL2", "62.25"),
        ("CD1_1", "-0.0004"),
        ("CD1_2", "0.00012"),
    ];

    fn rotated(proj: &str) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = ROTATED
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        v.push(("CD2_1".into(), "0.0001".into()));
        v.push(("CD2_2".into(), "0.00045".into()));
        v.push(("CTYPE1".into(), format!("'RA---{proj}'")));
        v.push(("CTYPE2".into(), format!("'DEC--{proj}'")));
        v
    }

    fn borrowed(v: &[(String, String)]) -> Vec<(&str, &str)> {
        v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    #[test]
    fn supported_projections_match_astropy() {
        // astropy wcs_pix2world(x, y, 0) for a rotated, skewed CD matrix at Dec 62.
        let expected: [(&str, [Case; 3]); 5] = [
            (
                "TAN",
                [
                    (0.0, 0.0, 201.51809923124387, 62.21875382425272),
                    (99.0, 99.0, 201.45855186690437, 62.27319882455352),
                    (-250.0, 400.0, 201.8373585890427, 62.37334676644841),
                ],
            ),
            (
                "SIN",
                [
                    (0.0, 0.0, 201.51809923412824, 62.21875381926784),
                    (99.0, 99.0, 201.45855186115298, 62.27319882776927),
                    (-250.0, 400.0, 201.8373606418299, 62.37334751144688),
                ],
            ),
            (
                "ARC",
                [
                    (0.0, 0.0, 201.5180992331668, 62.21875382092947),
                    (99.0, 99.0, 201.45855186307014, 62.273198826697346),
                    (-250.0, 400.0, 201.8373599575617, 62.37334726311198),
                ],
            ),
            (
                "STG",
                [
                    (0.0, 0.0, 201.51809923268604, 62.218753821760295),
                    (99.0, 99.0, 201.4585518640287, 62.2731988261614),
                    (-250.0, 400.0, 201.83735961543007, 62.37334713894541),
                ],
            ),
            (
                "ZEA",
                [
                    (0.0, 0.0, 201.51809923340716, 62.21875382051407),
                    (99.0, 99.0, 201.45855186259084, 62.273198826965334),
                    (-250.0, 400.0, 201.83736012862803, 62.373347325195446),
                ],
            ),
        ];
        for (proj, cases) in expected {
            let w = wcs(&borrowed(&rotated(proj))).expect(proj);
            assert_eq!(w.projection(), proj);
            check(&w, &cases);
        }
    }

    #[test]
    fn pixel_scales_match_astropy() {
        // astropy: SkyCoord separations of wcs_pix2world(x -+ 0.5, y, 0), and along y.
        let at = |proj: &str, x: f64, y: f64| {
            let cards = [
                ("CTYPE1", format!("'RA---{proj}'")),
                ("CTYPE2", format!("'DEC--{proj}'")),
                ("CRPIX1", "200.5".into()),
                ("CRPIX2", "200.5".into()),
                ("CRVAL1", "150.0".into()),
                ("CRVAL2", "2.0".into()),
                ("CDELT1", "-0.0005".into()),
                ("CDELT2", "0.0005".into()),
            ];
            let cards: Vec<(&str, &str)> = cards.iter().map(|(k, v)| (*k, v.as_str())).collect();
            CelestialWcs::from_header(&header(&cards, 400, 400), 400, 400)
                .expect("WCS")
                .pixel_scale_at(x, y)
                .expect("on the projection")
        };
        let cases = [
            ("TAN", 199.5, 199.5, 1.8000000000896736, 1.7999999999580423),
            // 10 degrees from the reference point: radial steps shrink as cos^2 (TAN)
            // or grow as 1 / cos (SIN).
            (
                "TAN",
                20199.5,
                199.5,
                1.7467897415993885,
                1.7731952895898466,
            ),
            (
                "TAN",
                199.5,
                -19800.5,
                1.773195289513674,
                1.7467897415920817,
            ),
            ("SIN", 20199.5, 199.5, 1.8280582476019511, 1.800000000054407),
        ];
        for (proj, x, y, sx, sy) in cases {
            let (gx, gy) = at(proj, x, y);
            assert!(
                (gx - sx).abs() < 1e-6 && (gy - sy).abs() < 1e-6,
                "{proj} at ({x}, {y}): {gx}, {gy} against {sx}, {sy}"
            );
        }
    }

    #[test]
    fn the_celestial_pole_on_and_near_the_image() {
        let at = |crval2: &str| {
            let cards = [
                ("CTYPE1", "'RA---SIN'"),
                ("CTYPE2", "'DEC--SIN'"),
                ("CRPIX1", "200.5"),
                ("CRPIX2", "200.5"),
                ("CRVAL1", "45.0"),
                ("CRVAL2", crval2),
                ("CDELT1", "-0.0005"),
                ("CDELT2", "0.0005"),
            ];
            CelestialWcs::from_header(&header(&cards, 400, 400), 400, 400).expect("polar WCS")
        };
        check(
            &at("90.0"),
            &[
                (0.0, 0.0, 270.0, 89.85893205462916),
                (199.5, 399.0, 45.0, 89.90024994961018),
                (350.0, 120.0, 162.84477033136537, 89.91489635538765),
            ],
        );
        check(
            &at("89.95"),
            &[
                (0.0, 0.0, 78.66802280716341, 89.82006897776282),
                (199.5, 399.0, 225.0, 89.95024994961018),
                (350.0, 120.0, 5.0221578467072305, 89.88287771198229),
            ],
        );
    }

    #[test]
    fn traps_are_refused_with_a_reason() {
        let ncp = wcs(&borrowed(&rotated("NCP"))).expect_err("NCP");
        assert!(ncp.to_string().contains("NCP"), "{ncp}");
        let mut slant = rotated("SIN");
        slant.push(("PV2_1".into(), "0.0".into()));
        slant.push(("PV2_2".into(), "0.5".into()));
        let err = wcs(&borrowed(&slant)).expect_err("SIN slant");
        assert!(err.to_string().contains("PV2_2"), "{err}");
        for proj in ["AIT", "CAR", "ZPN"] {
            let err = wcs(&borrowed(&rotated(proj))).expect_err(proj);
            assert!(err.to_string().contains(&format!("'{proj}'")), "{err}");
        }
        let err = wcs(&[("CTYPE1", "'RA'"), ("CTYPE2", "'DEC'")]).expect_err("short CTYPE");
        assert!(matches!(err, WcsError::Missing(_)), "{err}");
        let err = wcs(&[("CTYPE1", "'FREQ'"), ("CTYPE2", "'STOKES'")]).expect_err("not celestial");
        assert!(matches!(err, WcsError::Missing(_)), "{err}");
        let err = wcs(&[]).expect_err("no WCS");
        assert!(matches!(err, WcsError::Missing(_)), "{err}");
        let sip = [("CTYPE1", "'RA---TAN-SIP'"), ("CTYPE2", "'DEC--TAN-SIP'")];
        assert!(matches!(wcs(&sip), Err(WcsError::Unsupported(_))));
        let mut fk4 = rotated("TAN");
        fk4.push(("EQUINOX".into(), "1950.0".into()));
        assert!(
            wcs(&borrowed(&fk4))
                .expect_err("B1950")
                .to_string()
                .contains("1950")
        );
        let mut no_scale: Vec<(&str, &str)> =
            vec![("CTYPE1", "'RA---TAN'"), ("CTYPE2", "'DEC--TAN'")];
        no_scale.extend([
            ("CRPIX1", "1"),
            ("CRPIX2", "1"),
            ("CRVAL1", "10"),
            ("CRVAL2", "10"),
        ]);
        assert!(
            wcs(&no_scale)
                .expect_err("no CDELT")
                .to_string()
                .contains("pixel scale")
        );
        no_scale.extend([("CDELT1", "0.0"), ("CDELT2", "0.001")]);
        assert!(matches!(wcs(&no_scale), Err(WcsError::Invalid(_))));
    }

    #[test]
    fn pc_cd_crota_conventions_galactic_frame_and_lonpole() {
        // astropy: CDELT -0.0005/0.0005 with PC 0.8660254,-0.5,0.5,0.8660254 (CASA spelling).
        let pc = pc_header(|i, j| format!("PC{i:02}_{j:02}"));
        let w = wcs(&borrowed(&pc)).expect("PC01_01 spelling");
        check(&w, &PC_CASES);
        let gal = [
            ("CTYPE1", "'GLON-TAN'"),
            ("CTYPE2", "'GLAT-TAN'"),
            ("CRPIX1", "50.5"),
            ("CRPIX2", "50.5"),
            ("CRVAL1", "30.0"),
            ("CRVAL2", "45.0"),
            ("CDELT1", "-0.001"),
            ("CDELT2", "0.001"),
        ];
        let w = wcs(&gal).expect("galactic");
        check(
            &w,
            &[
                (0.0, 0.0, 240.48351955719215, 16.899950731873265),
                (80.0, 30.0, 240.4234117486188, 16.83677432334037),
            ],
        );
        // CDELT + CROTA2 with non-square pixels (an asymmetric matrix), across RA = 0.
        let crota = with(&crota_header(), &[("CROTA2", "30.0")]);
        let w = wcs(&borrowed(&crota)).expect("CROTA2");
        check(&w, &CROTA2_30_CASES);
        let mut lonpole = rotated("TAN");
        lonpole.push(("LONPOLE".into(), "170.0".into()));
        let w = wcs(&borrowed(&lonpole)).expect("LONPOLE");
        check(
            &w,
            &[
                (0.0, 0.0, 201.52946672749835, 62.22069145584367),
                (99.0, 99.0, 201.4505268070455, 62.26949503443139),
            ],
        );
    }

    /// A CDELT + PC header (a rotation), its PC keywords spelled by `pc` (e.g. "PC1_1",
    /// "PC01_01", "PC001001").
    fn pc_header(pc: impl Fn(usize, usize) -> String) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = [
            ("CTYPE1", "'RA---SIN'"),
            ("CTYPE2", "'DEC--SIN'"),
            ("CRPIX1", "50.0"),
            ("CRPIX2", "50.0"),
            ("CRVAL1", "150.0"),
            ("CRVAL2", "2.2"),
            ("CDELT1", "-0.0005"),
            ("CDELT2", "0.0005"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (i, j, value) in [
            (1, 1, "0.8660254"),
            (1, 2, "-0.5"),
            (2, 1, "0.5"),
            (2, 2, "0.8660254"),
        ] {
            v.push((pc(i, j), value.into()));
        }
        v
    }

    /// astropy's positions for `pc_header`.
    const PC_CASES: [Case; 2] = [
        (0.0, 0.0, 150.00897403725622, 2.1665323488376957),
        (99.0, 20.0, 149.97107804699277, 2.1999423516886094),
    ];

    /// A CDELT header with non-square pixels across RA = 0, for a CROTA to rotate.
    fn crota_header() -> Vec<(String, String)> {
        [
            ("CTYPE1", "'RA---SIN'"),
            ("CTYPE2", "'DEC--SIN'"),
            ("CRPIX1", "20.0"),
            ("CRPIX2", "70.0"),
            ("CRVAL1", "359.99"),
            ("CRVAL2", "-30.0"),
            ("CDELT1", "-0.001"),
            ("CDELT2", "0.0005"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// astropy's positions for `crota_header` with CROTA2 = 30.
    const CROTA2_30_CASES: [Case; 2] = [
        (0.0, 0.0, 0.028926580719030426, -30.020372152178492),
        (99.0, 50.0, 359.9154485661786, -30.04820625526681),
    ];

    fn with(base: &[(String, String)], extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v = base.to_vec();
        v.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        v
    }

    fn refused(cards: &[(String, String)]) -> String {
        wcs(&borrowed(cards)).expect_err("refused").to_string()
    }

    #[test]
    fn aips_spellings_read_as_wcslib_reads_them() {
        // PC00i00j (AIPS) is PCi_j, as in astropy.wcs.
        let aips = pc_header(|i, j| format!("PC{i:03}{j:03}"));
        check(
            &wcs(&borrowed(&aips)).expect("PC001001 spelling"),
            &PC_CASES,
        );
        // CD00i00j likewise: the CD matrix that CDELT x PC make.
        let cd: Vec<(String, String)> = pc_header(|i, j| format!("CD{i:03}{j:03}"))
            .into_iter()
            .filter(|(k, _)| !k.starts_with("CDELT"))
            .map(|(k, v)| {
                let scale = if k.starts_with("CD001") {
                    -0.0005
                } else {
                    0.0005
                };
                match v.parse::<f64>() {
                    Ok(f) if k.starts_with("CD0") => (k, format!("{:e}", f * scale)),
                    _ => (k, v),
                }
            })
            .collect();
        // (CDELT1 is negative: row 1 of CD is -0.0005 times row 1 of PC.)
        check(&wcs(&borrowed(&cd)).expect("CD001001 spelling"), &PC_CASES);
        // PROJPn is PV2_n: a SIN slant term there is refused like one spelled PV2_1.
        let projp = with(&rotated("SIN"), &[("PROJP1", "0.5")]);
        let err = refused(&projp);
        assert!(
            err.contains("PV2_1 = 0.5") && err.contains("slant"),
            "{err}"
        );
    }

    #[test]
    fn conflicting_and_duplicated_wcs_keywords_are_refused() {
        let pc = pc_header(|i, j| format!("PC{i}_{j}"));
        check(&wcs(&borrowed(&pc)).expect("PC"), &PC_CASES);

        // CD and PC together: astropy.wcs takes PC, others CD.
        let err = refused(&with(&pc, &[("CD1_1", "-0.0005"), ("CD2_2", "0.0005")]));
        assert!(err.contains("both CDi_j and PCi_j"), "{err}");

        // A repeated WCS keyword, in the same spelling or another one.
        for (key, value) in [
            ("CRVAL1", "151.0"),
            ("CRPIX2", "50.0"),
            ("PC01_01", "0.8660254"),
            ("PC001002", "-0.5"),
            ("CTYPE1", "'RA---SIN'"),
            ("LONPOLE", "180.0"),
        ] {
            let mut cards = with(&pc, &[(key, value)]);
            if key == "LONPOLE" {
                cards.push((key.into(), value.into()));
            }
            let err = refused(&cards);
            assert!(err.contains("more than once"), "{key}: {err}");
        }
        // Repeats that do not touch the celestial WCS are harmless.
        let harmless = with(
            &pc,
            &[
                ("OBJECT", "'A'"),
                ("OBJECT", "'B'"),
                ("CTYPE3", "'FREQ'"),
                ("CTYPE3", "'FREQ'"),
            ],
        );
        check(
            &wcs(&borrowed(&harmless)).expect("harmless repeats"),
            &PC_CASES,
        );
    }

    #[test]
    fn crota1_must_agree_with_crota2() {
        let base = crota_header();
        let both = with(&base, &[("CROTA1", "30.0"), ("CROTA2", "30.0")]);
        check(
            &wcs(&borrowed(&both)).expect("equal CROTAs"),
            &CROTA2_30_CASES,
        );
        // CROTA1 = 0 alone: no rotation either way.
        let unrotated = wcs(&borrowed(&base)).expect("no CROTA");
        let zero = wcs(&borrowed(&with(&base, &[("CROTA1", "0.0")]))).expect("CROTA1 = 0");
        assert_eq!(unrotated.cd, zero.cd);
        let err = refused(&with(&base, &[("CROTA1", "30.0")]));
        assert!(
            err.contains("CROTA1 = 30") && err.contains("(absent)"),
            "{err}"
        );
        let err = refused(&with(&base, &[("CROTA1", "30.0"), ("CROTA2", "20.0")]));
        assert!(err.contains("CROTA1 = 30 but CROTA2 = 20"), "{err}");
    }

    #[test]
    fn degrees_in_any_spelling() {
        for unit in ["'deg'", "'DEG'", "'degree'", "'Degrees'", "'DEGREES '"] {
            let cards = with(&rotated("TAN"), &[("CUNIT1", unit), ("CUNIT2", unit)]);
            wcs(&borrowed(&cards)).unwrap_or_else(|e| panic!("{unit}: {e}"));
        }
        for unit in ["'arcsec'", "'rad'", "'degs'"] {
            let err = refused(&with(&rotated("TAN"), &[("CUNIT2", unit)]));
            assert!(err.contains("CUNIT2") && err.contains("degrees"), "{err}");
        }
    }

    #[test]
    fn default_and_alias_projection_parameters_are_accepted() {
        let plain = wcs(&borrowed(&rotated("SIN"))).expect("SIN");
        // The zenithal fiducial point at its default, and zero slant terms.
        let defaults = with(
            &rotated("SIN"),
            &[
                ("PV1_0", "1"),
                ("PV1_1", "0.0"),
                ("PV1_2", "90.0"),
                ("PV2_1", "0.0"),
                ("PV2_2", "0"),
            ],
        );
        let w = wcs(&borrowed(&defaults)).expect("defaults");
        assert_eq!((w.cd, w.rot), (plain.cd, plain.rot));
        // PV1_3 is LONPOLE: astropy's positions for LONPOLE = 170 (see
        // pc_cd_crota_conventions_galactic_frame_and_lonpole), alone or with an equal LONPOLE.
        let lonpole170 = [
            (0.0, 0.0, 201.52946672749835, 62.22069145584367),
            (99.0, 99.0, 201.4505268070455, 62.26949503443139),
        ];
        let alias = with(&rotated("TAN"), &[("PV1_3", "170.0")]);
        check(&wcs(&borrowed(&alias)).expect("PV1_3"), &lonpole170);
        let agreeing = with(&alias, &[("LONPOLE", "170.0")]);
        check(
            &wcs(&borrowed(&agreeing)).expect("PV1_3 = LONPOLE"),
            &lonpole170,
        );
        let err = refused(&with(&alias, &[("LONPOLE", "180.0")]));
        assert!(err.contains("LONPOLE = 180 but PV1_3"), "{err}");
        // PV1_4 is LATPOLE, which a zenithal projection does not use; it must not contradict
        // a LATPOLE that is given.
        wcs(&borrowed(&with(&rotated("TAN"), &[("PV1_4", "62.0")]))).expect("PV1_4");
        let err = refused(&with(
            &rotated("TAN"),
            &[("PV1_4", "62.0"), ("LATPOLE", "90.0")],
        ));
        assert!(err.contains("LATPOLE = 90 but PV1_4"), "{err}");
        // Everything else is refused, naming the parameter.
        for (key, value, says) in [
            ("PV1_1", "10.0", "phi_0"),
            ("PV1_2", "80.0", "theta_0"),
            ("PV1_0", "2", "fiducial offset flag"),
            ("PV1_5", "1.0", "not a parameter of a zenithal projection"),
            ("PV2_3", "0.1", "a projection parameter"),
        ] {
            let err = refused(&with(&rotated("TAN"), &[(key, value)]));
            assert!(
                err.contains(&format!("{key} = ")) && err.contains(says),
                "{key}: {err}"
            );
        }
    }
}
