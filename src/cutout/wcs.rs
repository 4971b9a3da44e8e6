//! The celestial WCS of an image: validated from its header, then evaluated by the `wcs`
//! crate (cds-astro). This module owns the mapping between sky (RA, Dec in degrees, ICRS)
//! and 0-based pixel coordinates; it does not read pixels.
//!
//! The `wcs` crate's spherical projections match astropy for the projections allowed
//! below, but it has traps (see RECIPES): it takes radians and returns 1-based pixels,
//! treats NCP as plain SIN, ignores SIN slant terms (PV2_1, PV2_2) and distortions, defaults
//! a missing CDELT to 1 degree, ignores FK4/B1950 frames, may panic on a CTYPE shorter than
//! 8 characters, and (found here) inverts a non-symmetric CD matrix wrongly. So every header
//! is checked here first, anything it would get silently wrong is refused with a message
//! that says why, and the linear pixel <-> intermediate step is done in this module.

use std::fmt;

use serde_json::{Map, Value as Json};

use super::fits::{Header, Value};

/// Projections accepted: each checked against astropy in this module's tests.
const SUPPORTED: [&str; 6] = ["TAN", "SIN", "ARC", "STG", "ZEA", "CAR"];

/// Why an image has no usable celestial WCS.
#[derive(Debug, thiserror::Error)]
pub enum WcsError {
    #[error("no celestial WCS: {0}")]
    Missing(String),
    #[error("unsupported WCS: {0}")]
    Unsupported(String),
    #[error("invalid WCS: {0}")]
    Invalid(String),
    #[error("the wcs crate refused the header")]
    Library(#[source] wcs::error::Error),
}

/// A checked celestial WCS for one image.
pub struct CelestialWcs {
    /// The spherical part only: it is handed intermediate world coordinates (degrees) as
    /// if they were pixels, through an identity matrix, because the crate inverts a
    /// non-symmetric CD matrix wrongly (its inverse swaps the off-diagonal terms: pixels
    /// off by many pixels for skewed or non-square-pixel headers) and orders CROTA2 terms
    /// its own way. The linear part is done here, by the FITS rules.
    proj: wcs::WCSProj,
    /// Projection code (`"TAN"`, `"SIN"`, ...) for provenance.
    projection: &'static str,
    /// `CRPIXi` (1-based) and the pixel-to-intermediate matrix (degrees per pixel), and its inverse.
    crpix: [f64; 2],
    cd: [[f64; 2]; 2],
    inverse: [[f64; 2]; 2],
}

impl fmt::Debug for CelestialWcs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CelestialWcs").field("projection", &self.projection).finish_non_exhaustive()
    }
}

impl CelestialWcs {
    /// Validates the header's celestial WCS (axes 1 and 2) for an `nx` x `ny` image.
    pub fn from_header(h: &Header, nx: usize, ny: usize) -> Result<CelestialWcs, WcsError> {
        let ctype1 = h.opt_str("CTYPE1").ok_or_else(|| WcsError::Missing("no CTYPE1".into()))?;
        let ctype2 = h.opt_str("CTYPE2").ok_or_else(|| WcsError::Missing("no CTYPE2".into()))?;
        let (frame, projection) = axis_types(ctype1, ctype2)?;
        check_frame(h, frame)?;
        check_units(h)?;
        check_pv(h, projection)?;

        let num = |key: &str| h.opt_f64(key).map_err(WcsError::Invalid);
        let required = |key: &str| num(key)?.ok_or_else(|| WcsError::Missing(format!("no {key}")));
        let mut params = Map::new();
        params.insert("CTYPE1".into(), Json::from(format!("{}-{projection}", frame.lon())));
        params.insert("CTYPE2".into(), Json::from(format!("{}-{projection}", frame.lat())));
        params.insert("NAXIS".into(), Json::from(2));
        params.insert("NAXIS1".into(), Json::from(nx as i64));
        params.insert("NAXIS2".into(), Json::from(ny as i64));
        for key in ["CRVAL1", "CRVAL2"] {
            params.insert(key.into(), Json::from(required(key)?));
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
        // Paper II precedence: CDi_j, else CDELTi with PCi_j, else CDELTi with CROTA2.
        let matrix = if cd.iter().flatten().any(Option::is_some) {
            cd.map(|r| r.map(|v| v.unwrap_or(0.0)))
        } else {
            let (Some(c1), Some(c2)) = (num("CDELT1")?, num("CDELT2")?) else {
                return Err(WcsError::Missing("no pixel scale: neither CDi_j nor CDELT1 and CDELT2".into()));
            };
            if pc.iter().flatten().any(Option::is_some) {
                let p = [
                    [pc[0][0].unwrap_or(1.0), pc[0][1].unwrap_or(0.0)],
                    [pc[1][0].unwrap_or(0.0), pc[1][1].unwrap_or(1.0)],
                ];
                [[c1 * p[0][0], c1 * p[0][1]], [c2 * p[1][0], c2 * p[1][1]]]
            } else {
                let crota = num("CROTA2")?.or(num("CROTA1")?).unwrap_or(0.0);
                let (s, c) = crota.to_radians().sin_cos();
                [[c1 * c, -c2 * s], [c1 * s, c2 * c]]
            }
        };
        let det = matrix[0][0] * matrix[1][1] - matrix[0][1] * matrix[1][0];
        if !(det.is_finite() && det != 0.0) {
            return Err(WcsError::Invalid(format!("singular pixel-to-sky matrix {matrix:?}")));
        }
        let inverse = [[matrix[1][1] / det, -matrix[0][1] / det], [-matrix[1][0] / det, matrix[0][0] / det]];
        // The crate sees intermediate world coordinates (degrees) as its "pixels".
        for (key, v) in [("CRPIX1", 0.0), ("CRPIX2", 0.0), ("CD1_1", 1.0), ("CD1_2", 0.0), ("CD2_1", 0.0), ("CD2_2", 1.0)] {
            params.insert(key.into(), Json::from(v));
        }
        for key in ["LONPOLE", "LATPOLE"] {
            if let Some(v) = num(key)? {
                params.insert(key.into(), Json::from(v));
            }
        }
        let params: wcs::WCSParams = serde_json::from_value(Json::Object(params))
            .map_err(|e| WcsError::Invalid(format!("WCS keywords do not fit: {e}")))?;
        let proj = wcs::WCSProj::new(nx as i64, ny as i64, &params).map_err(WcsError::Library)?;
        let wcs = CelestialWcs { proj, projection, crpix, cd: matrix, inverse };
        // A WCS that cannot map its own centre is unusable (e.g. a pole outside the sphere).
        let (cx, cy) = ((nx as f64 - 1.0) / 2.0, (ny as f64 - 1.0) / 2.0);
        wcs.pixel_to_world(cx, cy)
            .and_then(|(ra, dec)| wcs.world_to_pixel(ra, dec))
            .filter(|(x, y)| (x - cx).abs() < 1e-3 && (y - cy).abs() < 1e-3)
            .ok_or_else(|| WcsError::Invalid("the image centre does not map to the sky and back".into()))?;
        Ok(wcs)
    }

    /// Projection code, e.g. `"TAN"`.
    pub fn projection(&self) -> &'static str {
        self.projection
    }

    /// (RA, Dec) in degrees to a 0-based pixel; None where the projection does not reach.
    pub fn world_to_pixel(&self, ra: f64, dec: f64) -> Option<(f64, f64)> {
        let uv = self.proj.proj_lonlat(&wcs::LonLat::new(ra.to_radians(), dec.to_radians()))?;
        let (u, v) = (uv.x(), uv.y());
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
        let uv = wcs::ImgXY::new(m[0][0] * dx + m[0][1] * dy, m[1][0] * dx + m[1][1] * dy);
        let ll = self.proj.unproj_lonlat(&uv)?;
        let (ra, dec) = (ll.lon().to_degrees().rem_euclid(360.0), ll.lat().to_degrees());
        let ra = if ra >= 360.0 { 0.0 } else { ra };
        (ra.is_finite() && dec.is_finite()).then_some((ra, dec))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Frame {
    Equatorial,
    Galactic,
}

impl Frame {
    fn lon(self) -> &'static str {
        match self {
            Frame::Equatorial => "RA--",
            Frame::Galactic => "GLON",
        }
    }
    fn lat(self) -> &'static str {
        match self {
            Frame::Equatorial => "DEC-",
            Frame::Galactic => "GLAT",
        }
    }
}

/// Checks `CTYPE1`/`CTYPE2` (longitude first, 8 characters, same projection) and returns
/// the frame and the projection code.
fn axis_types(ctype1: &str, ctype2: &str) -> Result<(Frame, &'static str), WcsError> {
    let split = |c: &str| -> Option<(String, String)> {
        if !c.is_ascii() || c.len() < 8 || c.as_bytes()[4] != b'-' {
            return None;
        }
        Some((c[..4].to_string(), c[5..].to_string()))
    };
    let not_celestial =
        || WcsError::Missing(format!("axes 1 and 2 are not a celestial pair: CTYPE1 = '{ctype1}', CTYPE2 = '{ctype2}'"));
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
        (l, _) if l.starts_with("ELON") || l.starts_with("SLON") || l.starts_with("HLON") => {
            return Err(WcsError::Unsupported(format!("frame of CTYPE1 = '{ctype1}': only RA/DEC and GLON/GLAT")));
        }
        _ => return Err(not_celestial()),
    };
    if p1 != p2 {
        return Err(WcsError::Invalid(format!("CTYPE1 = '{ctype1}' and CTYPE2 = '{ctype2}' differ in projection")));
    }
    if p1.len() > 3 {
        return Err(WcsError::Unsupported(format!(
            "'{ctype1}': distortion conventions ({}) are not supported",
            p1[3..].trim_start_matches('-')
        )));
    }
    if p1 == "NCP" {
        return Err(WcsError::Unsupported(
            "NCP projection (old AIPS north-celestial-pole SIN) is not supported: it needs SIN slant \
             terms, which the projection library ignores; reproject to SIN or TAN"
                .into(),
        ));
    }
    let projection = SUPPORTED.iter().find(|p| **p == p1).copied().ok_or_else(|| {
        WcsError::Unsupported(format!("projection '{p1}' (supported: {})", SUPPORTED.join(", ")))
    })?;
    Ok((frame, projection))
}

/// Equatorial coordinates must be ICRS or FK5 J2000 (they agree to well under a pixel);
/// FK4/B1950 and apparent places would need a frame conversion the library does not do.
fn check_frame(h: &Header, frame: Frame) -> Result<(), WcsError> {
    if frame == Frame::Galactic {
        return Ok(());
    }
    let radesys = h.opt_str("RADESYS").or(h.opt_str("RADECSYS")).map(str::trim);
    let equinox = match h.opt_f64("EQUINOX").map_err(WcsError::Invalid)? {
        Some(e) => Some(e),
        None => h.opt_f64("EPOCH").map_err(WcsError::Invalid)?,
    };
    match radesys {
        Some("ICRS") => Ok(()),
        Some("FK5") | None => match equinox {
            Some(e) if (e - 2000.0).abs() > 1e-6 => {
                Err(WcsError::Unsupported(format!("equinox {e}: only J2000 (FK5) or ICRS coordinates")))
            }
            _ => Ok(()),
        },
        Some(other) => Err(WcsError::Unsupported(format!("RADESYS = '{other}': only ICRS or FK5 J2000"))),
    }
}

fn check_units(h: &Header) -> Result<(), WcsError> {
    for key in ["CUNIT1", "CUNIT2"] {
        if let Some(u) = h.opt_str(key) {
            let u = u.trim();
            if !u.is_empty() && !u.eq_ignore_ascii_case("deg") {
                return Err(WcsError::Unsupported(format!("{key} = '{u}': celestial axes must be in degrees")));
            }
        }
    }
    Ok(())
}

/// Projection parameters: none of the supported projections takes any, and SIN's slant
/// terms or a moved fiducial point would be silently ignored: refuse any non-zero PV.
fn check_pv(h: &Header, projection: &str) -> Result<(), WcsError> {
    for i in 1..=2 {
        for m in 0..=20 {
            let key = format!("PV{i}_{m}");
            match h.get(&key) {
                None | Some(Value::Undefined) => {}
                Some(v) if v.as_f64() == Some(0.0) => {}
                Some(v) => {
                    return Err(WcsError::Unsupported(format!(
                        "{key} = {v:?} on a {projection} projection: projection parameters (e.g. SIN slant \
                         terms) are not supported"
                    )));
                }
            }
        }
    }
    Ok(())
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
        find_image(&fits_bytes(&all, &vec![0u8; nx * ny])).expect("valid test header").header
    }

    fn wcs(cards: &[(&str, &str)]) -> Result<CelestialWcs, WcsError> {
        CelestialWcs::from_header(&header(cards, 100, 100), 100, 100)
    }

    /// Asserts pixel -> sky matches astropy's `wcs_pix2world(x, y, 0)` within `deg` and
    /// astropy's sky position maps back to the pixel within `deg` worth of pixels.
    fn check_within(w: &CelestialWcs, cases: &[(f64, f64, f64, f64)], deg: f64, px_tol: f64) {
        for &(x, y, ra, dec) in cases {
            let (r, d) = w.pixel_to_world(x, y).expect("on the projection");
            let dra = ((r - ra + 540.0) % 360.0 - 180.0) * dec.to_radians().cos();
            assert!(dra.abs() < deg && (d - dec).abs() < deg, "({x}, {y}) -> ({r}, {d}), astropy ({ra}, {dec})");
            let (px, py) = w.world_to_pixel(ra, dec).expect("on the projection");
            assert!((px - x).abs() < px_tol && (py - y).abs() < px_tol, "({ra}, {dec}) -> ({px}, {py}), want ({x}, {y})");
        }
    }

    fn check(w: &CelestialWcs, cases: &[(f64, f64, f64, f64)]) {
        check_within(w, cases, 1e-9, 1e-6);
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
        let mut v: Vec<(String, String)> = ROTATED.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
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
        let expected: [(&str, [(f64, f64, f64, f64); 3]); 6] = [
            ("TAN", [(0.0, 0.0, 201.51809923124387, 62.21875382425272), (99.0, 99.0, 201.45855186690437, 62.27319882455352), (-250.0, 400.0, 201.8373585890427, 62.37334676644841)]),
            ("SIN", [(0.0, 0.0, 201.51809923412824, 62.21875381926784), (99.0, 99.0, 201.45855186115298, 62.27319882776927), (-250.0, 400.0, 201.8373606418299, 62.37334751144688)]),
            ("ARC", [(0.0, 0.0, 201.5180992331668, 62.21875382092947), (99.0, 99.0, 201.45855186307014, 62.273198826697346), (-250.0, 400.0, 201.8373599575617, 62.37334726311198)]),
            ("STG", [(0.0, 0.0, 201.51809923268604, 62.218753821760295), (99.0, 99.0, 201.4585518640287, 62.2731988261614), (-250.0, 400.0, 201.83735961543007, 62.37334713894541)]),
            ("ZEA", [(0.0, 0.0, 201.51809923340716, 62.21875382051407), (99.0, 99.0, 201.45855186259084, 62.273198826965334), (-250.0, 400.0, 201.83736012862803, 62.373347325195446)]),
            ("CAR", [(0.0, 0.0, 201.51809923137256, 62.21875382081678), (99.0, 99.0, 201.45855186533572, 62.27319882713612), (-250.0, 400.0, 201.83735943467036, 62.37334741813643)]),
        ];
        for (proj, cases) in expected {
            let w = wcs(&borrowed(&rotated(proj))).expect(proj);
            assert_eq!(w.projection(), proj);
            check(&w, &cases);
        }
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
        let err = wcs(&borrowed(&rotated("AIT"))).expect_err("AIT");
        assert!(err.to_string().contains("'AIT'"), "{err}");
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
        assert!(wcs(&borrowed(&fk4)).expect_err("B1950").to_string().contains("1950"));
        let mut no_scale: Vec<(&str, &str)> = vec![("CTYPE1", "'RA---TAN'"), ("CTYPE2", "'DEC--TAN'")];
        no_scale.extend([("CRPIX1", "1"), ("CRPIX2", "1"), ("CRVAL1", "10"), ("CRVAL2", "10")]);
        assert!(wcs(&no_scale).expect_err("no CDELT").to_string().contains("pixel scale"));
        no_scale.extend([("CDELT1", "0.0"), ("CDELT2", "0.001")]);
        assert!(matches!(wcs(&no_scale), Err(WcsError::Invalid(_))));
    }

    #[test]
    fn pc_cd_crota_conventions_galactic_frame_and_lonpole() {
        // astropy: CDELT -0.0005/0.0005 with PC 0.8660254,-0.5,0.5,0.8660254 (CASA spelling).
        let pc = [
            ("CTYPE1", "'RA---SIN'"),
            ("CTYPE2", "'DEC--SIN'"),
            ("CRPIX1", "50.0"),
            ("CRPIX2", "50.0"),
            ("CRVAL1", "150.0"),
            ("CRVAL2", "2.2"),
            ("CDELT1", "-0.0005"),
            ("CDELT2", "0.0005"),
            ("PC01_01", "0.8660254"),
            ("PC01_02", "-0.5"),
            ("PC02_01", "0.5"),
            ("PC02_02", "0.8660254"),
        ];
        let w = wcs(&pc).expect("PC01_01 spelling");
        check(&w, &[(0.0, 0.0, 150.00897403725622, 2.1665323488376957), (99.0, 20.0, 149.97107804699277, 2.1999423516886094)]);
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
        // The crate's Galactic-to-ICRS matrix and astropy's frame differ by ~10 mas
        // (0.005 FIRST pixels): compare at 0.05 arcsec.
        let gal_cases = [(0.0, 0.0, 240.48351955719215, 16.899950731873265), (80.0, 30.0, 240.4234117486188, 16.83677432334037)];
        check_within(&w, &gal_cases, 1.4e-5, 0.014);
        // CDELT + CROTA2 with non-square pixels (an asymmetric matrix), across RA = 0.
        let crota = [
            ("CTYPE1", "'RA---SIN'"),
            ("CTYPE2", "'DEC--SIN'"),
            ("CRPIX1", "20.0"),
            ("CRPIX2", "70.0"),
            ("CRVAL1", "359.99"),
            ("CRVAL2", "-30.0"),
            ("CDELT1", "-0.001"),
            ("CDELT2", "0.0005"),
            ("CROTA2", "30.0"),
        ];
        let w = wcs(&crota).expect("CROTA2");
        check(&w, &[(0.0, 0.0, 0.028926580719030426, -30.020372152178492), (99.0, 50.0, 359.9154485661786, -30.04820625526681)]);
        let mut lonpole = rotated("TAN");
        lonpole.push(("LONPOLE".into(), "170.0".into()));
        let w = wcs(&borrowed(&lonpole)).expect("LONPOLE");
        check(&w, &[(0.0, 0.0, 201.52946672749835, 62.22069145584367), (99.0, 99.0, 201.4505268070455, 62.26949503443139)]);
    }
}
