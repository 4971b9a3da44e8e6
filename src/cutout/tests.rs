//! Cutter behaviour on real FIRST cutouts, on mosaics built from them, and on every kind of
//! bad input. Reference numbers come from astropy 8 (`wcs_pix2world(x, y, 0)`).

use std::path::PathBuf;

use super::fits::tests::{card, fits_bytes};
use super::*;

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/first-cutouts")
}

/// The first real FIRST cutout (TAN, 300x300 float32, source at its centre).
fn tan_cutout() -> PathBuf {
    shared().join("mirabest-test/100_114.330+029.492_0.1105_0034.32.fits")
}

fn sin_image() -> PathBuf {
    shared().join("first-sin-33x33.fits")
}

fn detection(ra: f64, dec: f64, pixels: Option<Pixels>) -> proto::SourceDetection {
    proto::SourceDetection {
        source_id: "s".into(),
        ra_deg: ra,
        dec_deg: dec,
        pixels,
        ..Default::default()
    }
}

fn at_centre(pixels: Pixels) -> proto::SourceDetection {
    proto::SourceDetection {
        centre_of_cutout: true,
        ..detection(f64::NAN, f64::NAN, Some(pixels))
    }
}

fn path_pixels(p: &Path) -> Pixels {
    Pixels::FitsPath(p.display().to_string())
}

fn no_mosaics() -> Cutter {
    Cutter::new(&CutoutConfig {
        mosaics: vec![],
        workers: 1,
        ..CutoutConfig::default()
    })
    .expect("empty index")
}

fn reject(cutter: &Cutter, det: &proto::SourceDetection) -> ItemError {
    match cutter.cut(det) {
        Ok(c) => panic!(
            "expected a rejection, got a cutout at ({}, {})",
            c.provenance.x0, c.provenance.y0
        ),
        Err(e) => e,
    }
}

fn close(a: (f64, f64), b: (f64, f64), tol: f64) -> bool {
    ((a.0 - b.0) * b.1.to_radians().cos()).abs() < tol && (a.1 - b.1).abs() < tol
}

/// The raw float32 pixels of a plain image file, `[y, x]`.
fn file_pixels(path: &Path) -> Array2<f32> {
    let bytes = std::fs::read(path).expect("readable test image");
    let hdu = fits::find_image(&bytes).expect("FITS");
    let Storage::Plain(layout) = &hdu.storage else {
        panic!("plain image expected")
    };
    let mut out = Array2::from_elem((hdu.ny, hdu.nx), f32::NAN);
    fits::read_window(&bytes, layout, hdu.nx, hdu.ny, 0, 0, &mut out);
    out
}

/// Same pixels, NaN in the same places.
fn same(a: &Array2<f32>, b: &Array2<f32>) -> bool {
    a.shape() == b.shape() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn cutter_is_shareable_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Cutter>();
}

#[test]
fn real_tan_cutout_at_its_centre_is_the_whole_file() {
    let cut = no_mosaics()
        .cut(&at_centre(path_pixels(&tan_cutout())))
        .expect("cutout");
    let p = &cut.provenance;
    assert_eq!((p.x0, p.y0, p.width, p.height), (0, 0, 300, 300));
    assert_eq!((p.coverage, p.projection.as_str()), (1.0, "TAN"));
    assert!((p.pixel_scale_arcsec - 1.8).abs() < 1e-6, "{p:?}");
    assert!(p.file.ends_with("0034.32.fits"));
    assert!(
        close(cut.position, (114.33, 29.4923), 1e-9),
        "{:?}",
        cut.position
    );
    assert!(same(&cut.pixels, &file_pixels(&tan_cutout())));
    // astropy values of the file's pixels.
    assert_eq!(f64::from(cut.pixels[[0, 0]]), 0.000292027136310935);
    assert_eq!(f64::from(cut.pixels[[17, 299]]), -0.0003017005219589919);
    assert_eq!(f64::from(cut.pixels[[150, 150]]), 0.0032883796375244856);
}

#[test]
fn window_pixels_map_to_the_sky_as_astropy_says() {
    let cut = no_mosaics()
        .cut(&at_centre(path_pixels(&tan_cutout())))
        .expect("cutout");
    for (x, y, ra, dec) in [
        (0.0, 0.0, 114.4158145115418, 29.417522547582344),
        (149.5, 149.5, 114.33, 29.4923),
        (299.0, 17.0, 114.24417829267112, 29.426022525152966),
        (-40.0, 310.0, 114.43894143271955, 29.572505491751485),
    ] {
        let sky = cut.sky.pixel_to_sky(x, y).expect("on the projection");
        assert!(
            close(sky, (ra, dec), 1e-9),
            "TAN ({x}, {y}) -> {sky:?}, astropy ({ra}, {dec})"
        );
        // And back: the detection at that position lands on the same window pixel.
        let again = no_mosaics().cut(&detection(ra, dec, Some(path_pixels(&tan_cutout()))));
        if (0.0..299.5).contains(&x) && (0.0..299.5).contains(&y) {
            let c = again.expect("on the image");
            assert_eq!(
                (c.provenance.x0, c.provenance.y0),
                (window_start(x), window_start(y))
            );
        }
    }

    // The SIN image: 33x33, reference pixel off the image, FREQ/STOKES axes declared but
    // absent. Its centre (16, 16) sits at window pixel 149 after a -133 shift.
    let cut = no_mosaics()
        .cut(&at_centre(path_pixels(&sin_image())))
        .expect("SIN cutout");
    assert_eq!((cut.provenance.x0, cut.provenance.y0), (-133, -133));
    assert_eq!(cut.provenance.projection, "SIN");
    assert!((cut.provenance.pixel_scale_arcsec - 1.8).abs() < 1e-4);
    assert!((cut.provenance.coverage - (33.0 * 33.0 / 90000.0)).abs() < 1e-7);
    assert!(close(
        cut.position,
        (162.5298183439104, 30.676918876152964),
        1e-9
    ));
    for (x, y, ra, dec) in [
        (0.0, 0.0, 162.5391375391328, 30.668934272359564),
        (32.0, 5.0, 162.52052967677201, 30.671402825921678),
        (7.0, 25.0, 162.5350405524206, 30.681427611715),
    ] {
        let sky = cut
            .sky
            .pixel_to_sky(x + 133.0, y + 133.0)
            .expect("on the projection");
        assert!(
            close(sky, (ra, dec), 1e-9),
            "SIN ({x}, {y}) -> {sky:?}, astropy ({ra}, {dec})"
        );
    }
    // Sky -> pixel: the source at astropy's position of image pixel (7, 25) ends up at
    // window pixel (149, 149) (a 149.5 centre rounds the window start up).
    let cut = no_mosaics()
        .cut(&detection(
            162.5350405524206,
            30.681427611715,
            Some(path_pixels(&sin_image())),
        ))
        .expect("SIN cutout");
    assert_eq!((cut.provenance.x0, cut.provenance.y0), (-142, -124));
    assert_eq!(f64::from(cut.pixels[[149, 149]]), 0.00019342859741300344);
    assert!(
        cut.pixels[[0, 0]].is_nan()
            && cut.pixels[[148, 141]].is_nan()
            && cut.pixels[[149, 142]].is_finite()
    );
}

/// A file's bytes with the values of some header cards replaced in place.
fn rewritten(path: &Path, values: &[(&str, &str)]) -> Vec<u8> {
    let mut bytes = std::fs::read(path).expect("readable");
    for (key, value) in values {
        let at = bytes
            .chunks(80)
            .position(|c| c.starts_with(format!("{key:<8}=").as_bytes()))
            .unwrap_or_else(|| panic!("no {key} card"));
        let text = format!("{:<80}", card(key, value));
        bytes[at * 80..(at + 1) * 80].copy_from_slice(text.as_bytes());
    }
    bytes
}

#[test]
fn pixels_of_another_size_are_refused_unless_the_model_takes_them() {
    // VLASS's 1 arcsec pixels: the model would see every source 1.8 times too large.
    let vlass = Pixels::FitsCutout(
        rewritten(
            &tan_cutout(),
            &[
                ("CDELT1", "-2.77777777777778E-04"),
                ("CDELT2", "2.77777777777778E-04"),
            ],
        )
        .into(),
    );
    let err = reject(&no_mosaics(), &at_centre(vlass.clone()));
    assert_eq!(err.reason, RejectReason::PixelScale, "{}", err.detail);
    assert!(
        err.detail
            .starts_with("pixels of 1.0000 x 1.0000 arcsec; the model takes 1.8 arcsec")
            && err.detail.contains("cutout.pixel_scale_tolerance")
            && err
                .detail
                .contains("resample the image to 1.8 arcsec pixels"),
        "{}",
        err.detail
    );
    let cutter = |pixel_scale_arcsec: f64, pixel_scale_tolerance: f64| {
        Cutter::new(&CutoutConfig {
            pixel_scale_arcsec,
            pixel_scale_tolerance,
            ..CutoutConfig::default()
        })
        .expect("empty index")
    };
    for accepting in [cutter(1.0, 0.02), cutter(1.8, 0.5)] {
        let cut = accepting.cut(&at_centre(vlass.clone())).expect("taken");
        assert!((cut.provenance.pixel_scale_arcsec - 1.0).abs() < 1e-6);
    }
    // Each axis counts: pixels 1.8 arcsec wide and 2.0 high are refused, 1.83 high (1.7%
    // off) taken.
    let tall = |cdelt2: &str| {
        at_centre(Pixels::FitsCutout(
            rewritten(&tan_cutout(), &[("CDELT2", cdelt2)]).into(),
        ))
    };
    let err = reject(&no_mosaics(), &tall("5.5555555555556E-04"));
    assert_eq!(err.reason, RejectReason::PixelScale);
    assert!(
        err.detail.starts_with("pixels of 1.8000 x 2.0000 arcsec"),
        "{}",
        err.detail
    );
    no_mosaics()
        .cut(&tall("5.0833333333333E-04"))
        .expect("within the tolerance");

    // Resampled instead (cutout.resample): 1.8 image pixels to each window pixel, the
    // source at the window's centre, the window's sky where the image has it.
    let resampling = Cutter::new(&CutoutConfig {
        resample: true,
        ..CutoutConfig::default()
    })
    .expect("empty index");
    let cut = resampling
        .cut(&at_centre(vlass.clone()))
        .expect("resampled");
    let p = &cut.provenance;
    assert!(
        p.resampled && (p.pixel_scale_arcsec - 1.0).abs() < 1e-6,
        "{p:?}"
    );
    // 540 image pixels span the window, 300 of them on the image: 166 window pixels across
    // lie wholly on it (one that straddles the edge is blank).
    assert_eq!(
        (p.x0, p.y0, p.width, p.height),
        (-120, -120, 540, 540),
        "{p:?}"
    );
    assert!(
        (p.coverage - (166.0f32 / 300.0).powi(2)).abs() < 1e-6,
        "{p:?}"
    );
    let centre = cut.sky.pixel_to_sky(149.5, 149.5).expect("on the sky");
    assert!(
        close(centre, cut.position, 1e-9),
        "{centre:?} {:?}",
        cut.position
    );
    let corner = cut.sky.pixel_to_sky(-0.5, 149.5).expect("on the sky");
    let offset = (corner.0 - centre.0) * 3600.0 * centre.1.to_radians().cos();
    assert!((offset - 150.0 * 1.8).abs() < 1e-3, "{offset} arcsec east");
    // Pixels 20 times smaller than the model's are too far to resample.
    let tiny = at_centre(Pixels::FitsCutout(
        rewritten(
            &tan_cutout(),
            &[("CDELT1", "-2.5E-05"), ("CDELT2", "2.5E-05")],
        )
        .into(),
    ));
    let err = reject(&resampling, &tiny);
    assert_eq!(err.reason, RejectReason::PixelScale);
    assert!(
        err.detail.contains("too far from it to resample"),
        "{}",
        err.detail
    );

    // A mosaic of such pixels is indexed (the worker warns at start) and its detections are
    // refused alike.
    let dir = tempfile::tempdir().expect("temp dir");
    let Pixels::FitsCutout(bytes) = &vlass else {
        unreachable!()
    };
    std::fs::write(dir.path().join("vlass.fits"), bytes).expect("write");
    let cutter = Cutter::new(&CutoutConfig {
        mosaics: vec![dir.path().to_path_buf()],
        ..CutoutConfig::default()
    })
    .expect("index");
    assert_eq!(cutter.mosaic_count(), 1);
    let err = reject(&cutter, &detection(114.33, 29.4923, None));
    assert_eq!(err.reason, RejectReason::PixelScale, "{}", err.detail);
}

#[test]
fn inline_bytes_cut_like_the_file() {
    let bytes = std::fs::read(tan_cutout()).expect("readable");
    let cutter = no_mosaics();
    let inline = cutter
        .cut(&at_centre(Pixels::FitsCutout(bytes.into())))
        .expect("inline cutout");
    assert_eq!(inline.provenance.file, "inline");
    assert!(same(&inline.pixels, &file_pixels(&tan_cutout())));
}

/// Writes `cutout`'s WCS and pixels into a `size` x `size` float32 image of `fill`,
/// with the cutout's pixel (0, 0) at (`dx`, `dy`).
fn embed(cutout: &Path, size: usize, dx: usize, dy: usize, fill: f32) -> Vec<u8> {
    let src = file_pixels(cutout);
    let mut data = Vec::with_capacity(size * size * 4);
    for y in 0..size {
        for x in 0..size {
            let v = if (dx..dx + 300).contains(&x) && (dy..dy + 300).contains(&y) {
                src[[y - dy, x - dx]]
            } else {
                fill
            };
            data.extend_from_slice(&v.to_be_bytes());
        }
    }
    let cards = [
        card("SIMPLE", "T"),
        card("BITPIX", "-32"),
        card("NAXIS", "2"),
        card("NAXIS1", &size.to_string()),
        card("NAXIS2", &size.to_string()),
        card("CTYPE1", "'RA---TAN'"),
        card("CTYPE2", "'DEC--TAN'"),
        card("CRVAL1", "114.33"),
        card("CRVAL2", "29.4923"),
        card("RADESYS", "'FK5'"),
        card("EQUINOX", "2000.0"),
        card("CRPIX1", &format!("{}", 150.5 + dx as f64)),
        card("CRPIX2", &format!("{}", 150.5 + dy as f64)),
        card("CDELT1", "-0.0005"),
        card("CDELT2", "0.0005"),
    ];
    fits_bytes(&cards, &data)
}

/// LoTSS's layout: a folder per pointing, each holding a `mosaic-blanked.fits`. A hint names
/// one by its folder, or by its path below the mosaics folder; the bare file name names
/// both, and is refused rather than taken as the first.
#[test]
fn tiles_that_are_folders_of_same_named_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (pointing, x0) in [("P1", 250), ("P2", 137)] {
        let folder = dir.path().join(pointing);
        std::fs::create_dir_all(&folder).expect("mkdir");
        std::fs::write(
            folder.join("mosaic-blanked.fits"),
            embed(&tan_cutout(), 600, x0, 211, 0.0),
        )
        .expect("write");
    }
    let cutter = Cutter::new(&CutoutConfig {
        mosaics: vec![dir.path().to_path_buf()],
        workers: 1,
        ..CutoutConfig::default()
    })
    .expect("index");
    for (tile, x0) in [
        ("P2", 137),
        ("P1", 250),
        ("P2/mosaic-blanked.fits", 137),
        ("P1/mosaic-blanked", 250),
    ] {
        let hint = Some(Pixels::Mosaic(proto::MosaicHint { tile: tile.into() }));
        let cut = cutter
            .cut(&detection(114.33, 29.4923, hint))
            .expect("covered");
        assert_eq!(cut.provenance.x0, x0, "{tile}");
    }
    let hint = Some(Pixels::Mosaic(proto::MosaicHint {
        tile: "mosaic-blanked".into(),
    }));
    let e = reject(&cutter, &detection(114.33, 29.4923, hint));
    assert_eq!(e.reason, RejectReason::NotCovered);
    assert!(
        e.detail.contains(
            "mosaic tile 'mosaic-blanked' names several images (P1/mosaic-blanked.fits, P2/mosaic-blanked.fits)"
        ),
        "{}",
        e.detail
    );
}

#[test]
fn cutting_from_a_bigger_mosaic_gives_the_original_cutout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sub = dir.path().join("tiles/deeper");
    std::fs::create_dir_all(&sub).expect("mkdir");
    // The source is 100 px from the nearest edge of A and 137 px from B's: B wins.
    std::fs::write(sub.join("A.fits"), embed(&tan_cutout(), 600, 250, 60, 0.0)).expect("write");
    std::fs::write(
        dir.path().join("tiles/B.fit"),
        embed(&tan_cutout(), 600, 137, 211, 0.0),
    )
    .expect("write");
    std::fs::write(dir.path().join("notes.txt"), "not FITS").expect("write");
    let cutter = Cutter::new(&CutoutConfig {
        mosaics: vec![dir.path().to_path_buf()],
        workers: 2,
        ..CutoutConfig::default()
    })
    .expect("index");
    assert_eq!(cutter.mosaic_count(), 2);

    let original = file_pixels(&tan_cutout());
    let cut = cutter
        .cut(&detection(114.33, 29.4923, None))
        .expect("covered");
    assert!(
        cut.provenance.file.ends_with("B.fit"),
        "{}",
        cut.provenance.file
    );
    assert_eq!(
        (
            cut.provenance.x0,
            cut.provenance.y0,
            cut.provenance.coverage
        ),
        (137, 211, 1.0)
    );
    assert!(same(&cut.pixels, &original));

    // A tile hint restricts the choice, by stem or by file name.
    for tile in ["A", "A.fits"] {
        let hint = Some(Pixels::Mosaic(proto::MosaicHint { tile: tile.into() }));
        let cut = cutter
            .cut(&detection(114.33, 29.4923, hint))
            .expect("covered by A");
        assert_eq!((cut.provenance.x0, cut.provenance.y0), (250, 60));
        assert!(same(&cut.pixels, &original));
    }
    let hint = Some(Pixels::Mosaic(proto::MosaicHint { tile: "C".into() }));
    let e = reject(&cutter, &detection(114.33, 29.4923, hint));
    assert_eq!(e.reason, RejectReason::NotCovered);
    assert!(e.detail.contains("unknown mosaic tile 'C'"), "{}", e.detail);

    // Near the mosaic's corner the window runs off the image: NaN padding, partial coverage.
    // (Both windows share the original cutout's pixel grid, so B's window maps A's pixels.)
    let corner = cut
        .sky
        .pixel_to_sky(10.2 - 250.0, 20.3 - 60.0)
        .expect("on sky");
    let hint = Some(Pixels::Mosaic(proto::MosaicHint { tile: "A".into() }));
    let cut = cutter
        .cut(&detection(corner.0, corner.1, hint))
        .expect("covered, partly");
    // Source at A's pixel (10.2, 20.3): window start round(-139.3), round(-129.2).
    assert_eq!((cut.provenance.x0, cut.provenance.y0), (-139, -129));
    assert!(cut.pixels[[128, 139]].is_nan() && cut.pixels[[129, 138]].is_nan());
    assert_eq!(cut.pixels[[129, 139]], 0.0);
    let expect = (300.0 - 139.0) * (300.0 - 129.0) / 90000.0;
    assert!(
        (cut.provenance.coverage as f64 - expect).abs() < 1e-6,
        "{}",
        cut.provenance.coverage
    );

    // Far away: no mosaic covers it.
    let e = reject(&cutter, &detection(300.0, -45.0, None));
    assert_eq!(e.reason, RejectReason::NotCovered);
}

#[test]
fn mosaic_setup_errors() {
    let missing = CutoutConfig {
        mosaics: vec![PathBuf::from("/nonexistent/mosaics")],
        workers: 1,
        ..CutoutConfig::default()
    };
    assert!(matches!(
        Cutter::new(&missing),
        Err(CutoutSetupError::Io { .. })
    ));
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("broken.fits"), b"SIMPLE  = garbage").expect("write");
    let empty = CutoutConfig {
        mosaics: vec![dir.path().to_path_buf()],
        workers: 1,
        ..CutoutConfig::default()
    };
    assert!(matches!(
        Cutter::new(&empty),
        Err(CutoutSetupError::EmptyFolder(_))
    ));
    let named = CutoutConfig {
        mosaics: vec![dir.path().join("broken.fits")],
        workers: 1,
        ..CutoutConfig::default()
    };
    assert!(matches!(
        Cutter::new(&named),
        Err(CutoutSetupError::BadMosaic { .. })
    ));
}

#[test]
fn invalid_positions_are_rejected() {
    let cutter = no_mosaics();
    let file = Some(path_pixels(&tan_cutout()));
    for (ra, dec) in [
        (f64::NAN, 0.0),
        (10.0, f64::INFINITY),
        (360.001, 0.0),
        (-0.1, 0.0),
        (10.0, 90.5),
        (10.0, -91.0),
    ] {
        let e = reject(&cutter, &detection(ra, dec, file.clone()));
        assert_eq!(e.reason, RejectReason::InvalidDetection, "({ra}, {dec})");
        let e = reject(&cutter, &detection(ra, dec, None));
        assert_eq!(
            e.reason,
            RejectReason::InvalidDetection,
            "({ra}, {dec}) without pixels"
        );
    }
    let e = reject(
        &cutter,
        &proto::SourceDetection {
            centre_of_cutout: true,
            ..detection(10.0, 10.0, None)
        },
    );
    assert_eq!(e.reason, RejectReason::InvalidDetection);
    // A valid position that is not on the given image.
    let e = reject(&cutter, &detection(200.0, 10.0, file));
    assert_eq!(e.reason, RejectReason::NotCovered);
    // No mosaics at all.
    assert_eq!(
        reject(&cutter, &detection(10.0, 10.0, None)).reason,
        RejectReason::NotCovered
    );
}

fn small_image(bitpix: i64, extra: &[String], data: &[u8], n: usize) -> Vec<u8> {
    let mut cards = vec![
        card("SIMPLE", "T"),
        card("BITPIX", &bitpix.to_string()),
        card("NAXIS", "2"),
        card("NAXIS1", &n.to_string()),
        card("NAXIS2", &n.to_string()),
    ];
    cards.extend_from_slice(extra);
    fits_bytes(&cards, data)
}

fn tan_wcs(n: usize) -> Vec<String> {
    vec![
        card("CTYPE1", "'RA---TAN'"),
        card("CTYPE2", "'DEC--TAN'"),
        card("CRVAL1", "10.0"),
        card("CRVAL2", "20.0"),
        card("CRPIX1", &format!("{}", n as f64 / 2.0 + 0.5)),
        card("CRPIX2", &format!("{}", n as f64 / 2.0 + 0.5)),
        card("CDELT1", "-0.0005"),
        card("CDELT2", "0.0005"),
    ]
}

#[test]
fn bad_fits_bad_wcs_and_empty_cutouts_are_rejected() {
    let cutter = no_mosaics();
    let inline = |b: Vec<u8>| reject(&cutter, &at_centre(Pixels::FitsCutout(b.into())));

    let good = std::fs::read(tan_cutout()).expect("readable");
    for (what, bytes) in [
        ("truncated", good[..good.len() / 2].to_vec()),
        ("header only", good[..2880].to_vec()),
        ("empty", Vec::new()),
        (
            "garbage",
            b"\x89PNG\r\n\x1a\n not a FITS file at all".repeat(40),
        ),
    ] {
        let e = inline(bytes);
        assert_eq!(e.reason, RejectReason::BadFits, "{what}: {}", e.detail);
    }
    let table = {
        let mut b = Vec::new();
        let primary = [
            card("SIMPLE", "T"),
            card("BITPIX", "8"),
            card("NAXIS", "0"),
            card("EXTEND", "T"),
        ];
        b.extend(fits_bytes(&primary, &[]));
        let ext = [
            card("XTENSION", "'BINTABLE'"),
            card("BITPIX", "8"),
            card("NAXIS", "2"),
            card("NAXIS1", "8"),
            card("NAXIS2", "3"),
            card("PCOUNT", "0"),
            card("GCOUNT", "1"),
            card("TFIELDS", "1"),
            card("TFORM1", "'D'"),
        ];
        b.extend(fits_bytes(&ext, &[0u8; 24]));
        b
    };
    let e = inline(table);
    assert_eq!(e.reason, RejectReason::BadFits);
    assert!(e.detail.contains("BINTABLE"), "{}", e.detail);
    let e = reject(
        &cutter,
        &at_centre(Pixels::FitsPath("/nonexistent/x.fits".into())),
    );
    assert_eq!(e.reason, RejectReason::BadFits);

    let n = 8;
    let zeros = vec![0u8; n * n * 4];
    let e = inline(small_image(-32, &[], &zeros, n));
    assert_eq!(e.reason, RejectReason::BadWcs);
    let mut ncp = tan_wcs(n);
    ncp[0] = card("CTYPE1", "'RA---NCP'");
    ncp[1] = card("CTYPE2", "'DEC--NCP'");
    let e = inline(small_image(-32, &ncp, &zeros, n));
    assert_eq!(e.reason, RejectReason::BadWcs);
    assert!(e.detail.contains("NCP"), "{}", e.detail);

    let nans: Vec<u8> = (0..n * n).flat_map(|_| f32::NAN.to_be_bytes()).collect();
    let e = inline(small_image(-32, &tan_wcs(n), &nans, n));
    assert_eq!(e.reason, RejectReason::EmptyCutout);
    let blanks: Vec<u8> = (0..n * n).flat_map(|_| (-1i16).to_be_bytes()).collect();
    let e = inline(small_image(
        16,
        &[tan_wcs(n), vec![card("BLANK", "-1")]].concat(),
        &blanks,
        n,
    ));
    assert_eq!(e.reason, RejectReason::EmptyCutout);
}

#[test]
fn scaled_integers_and_degenerate_axes_through_the_cutter() {
    let n = 4;
    let raw: Vec<i16> = (0..(n * n) as i16).collect();
    let data: Vec<u8> = raw.iter().flat_map(|v| v.to_be_bytes()).collect();
    let mut extra = tan_wcs(n);
    extra.extend([
        card("BSCALE", "0.25"),
        card("BZERO", "-1.0"),
        card("BLANK", "5"),
    ]);
    extra.extend([
        card("NAXIS3", "1"),
        card("NAXIS4", "1"),
        card("CTYPE3", "'FREQ'"),
        card("CTYPE4", "'STOKES'"),
    ]);
    let mut bytes = small_image(16, &extra, &data, n);
    bytes[160..240].copy_from_slice(format!("{:<80}", card("NAXIS", "4")).as_bytes());
    let cut = no_mosaics()
        .cut(&at_centre(Pixels::FitsCutout(bytes.into())))
        .expect("4-D BITPIX 16");
    // Centre (1.5, 1.5): the window starts at -148, so image (x, y) is window (x+148, y+148).
    assert_eq!((cut.provenance.x0, cut.provenance.y0), (-148, -148));
    assert_eq!(cut.pixels[[148, 148]], -1.0);
    assert_eq!(cut.pixels[[148 + 3, 148 + 2]], (14.0 * 0.25 - 1.0) as f32);
    assert!(
        cut.pixels[[148 + 1, 148 + 1]].is_nan(),
        "BLANK (raw 5) must be NaN"
    );
    assert!((cut.provenance.coverage - 15.0 / 90000.0).abs() < 1e-9);
}

#[test]
fn tile_compressed_images_read_through_cfitsio() {
    use fitsio::images::{ImageDescription, ImageType};
    let dir = tempfile::tempdir().expect("temp dir");
    let n = 64usize;
    let values: Vec<i32> = (0..(n * n) as i32)
        .map(|v| (v * 7919) % 30011 - 15000)
        .collect();
    let fz = dir.path().join("tile.fits.fz");
    {
        let spec = format!("{}[compress R]", fz.display());
        let mut f = fitsio::FitsFile::create(&spec)
            .open()
            .expect("create compressed");
        let desc = ImageDescription {
            data_type: ImageType::Long,
            dimensions: &[n, n],
        };
        let hdu = f.create_image("SCI", &desc).expect("image");
        for (k, v) in [("CTYPE1", "RA---TAN"), ("CTYPE2", "DEC--TAN")] {
            hdu.write_key(&mut f, k, v).expect("key");
        }
        for (k, v) in [
            ("CRVAL1", 10.0),
            ("CRVAL2", 20.0),
            ("CRPIX1", 32.5),
            ("CRPIX2", 32.5),
            ("CDELT1", -0.0005),
            ("CDELT2", 0.0005),
        ] {
            hdu.write_key(&mut f, k, v).expect("key");
        }
        hdu.write_image(&mut f, &values).expect("pixels");
    }
    let raw = std::fs::read(&fz).expect("written");
    assert!(matches!(
        fits::find_image(&raw).expect("FITS").storage,
        Storage::TileCompressed { .. }
    ));

    let cutter = Cutter::new(&CutoutConfig {
        mosaics: vec![dir.path().to_path_buf()],
        workers: 1,
        ..CutoutConfig::default()
    })
    .expect("index");
    let cut = cutter.cut(&detection(10.0, 20.0, None)).expect("covered");
    // CRPIX 32.5 (1-based) is 0-based 31.5: window start round(31.5 - 149.5) = -118.
    assert_eq!((cut.provenance.x0, cut.provenance.y0), (-118, -118));
    for (x, y) in [(0usize, 0usize), (63, 0), (5, 40), (63, 63)] {
        assert_eq!(
            cut.pixels[[y + 118, x + 118]],
            values[y * n + x] as f32,
            "pixel ({x}, {y})"
        );
    }
    assert!((cut.provenance.coverage - (n * n) as f32 / 90000.0).abs() < 1e-7);
    let hint = Some(Pixels::Mosaic(proto::MosaicHint {
        tile: "tile".into(),
    }));
    assert!(cutter.cut(&detection(10.0, 20.0, hint)).is_ok());
    // Inline compressed bytes are refused clearly rather than written to a temp file.
    let e = reject(&cutter, &at_centre(Pixels::FitsCutout(raw.into())));
    assert_eq!(e.reason, RejectReason::BadFits);
    assert!(e.detail.contains("tile-compressed"), "{}", e.detail);
}

#[test]
fn window_start_rounds_halves_up_within_tolerance() {
    assert_eq!(window_start(149.5), 0);
    assert_eq!(window_start(149.4999999), 0);
    assert_eq!(window_start(149.5000001), 0);
    assert_eq!(window_start(150.0), 1); // 0.5 -> 1
    assert_eq!(window_start(149.9999999), 1); // 0.4999999 -> 1
    assert_eq!(window_start(149.9999), 0); // 0.4999 -> 0
    assert_eq!(window_start(16.0), -133);
}

#[test]
fn files_by_path_are_read_or_mapped_by_size_and_odd_paths_are_rejected() {
    let cutter = no_mosaics();
    let dir = tempfile::tempdir().expect("temp dir");
    // Below and above the size up to which files are read rather than mapped: both cut
    // what the same bytes sent inline cut.
    for n in [64, 1100] {
        let data: Vec<u8> = (0..n * n)
            .flat_map(|i| ((i % 977) as f32 * 0.25).to_be_bytes())
            .collect();
        let bytes = small_image(-32, &tan_wcs(n), &data, n);
        assert_eq!(bytes.len() as u64 > super::READ_LIMIT, n == 1100);
        let path = dir.path().join(format!("{n}.fits"));
        std::fs::write(&path, &bytes).expect("written");
        let by_path = cutter.cut(&at_centre(path_pixels(&path))).expect("cuts");
        let inline = cutter
            .cut(&at_centre(Pixels::FitsCutout(bytes.into())))
            .expect("cuts");
        assert!(
            by_path
                .pixels
                .iter()
                .zip(&inline.pixels)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "side {n}"
        );
        assert_eq!(by_path.provenance.x0, inline.provenance.x0);
    }
    let empty = dir.path().join("empty.fits");
    std::fs::write(&empty, b"").expect("written");
    for path in [empty.as_path(), dir.path(), Path::new("/dev/zero")] {
        let e = reject(&cutter, &at_centre(path_pixels(path)));
        assert_eq!(
            e.reason,
            RejectReason::BadFits,
            "{}: {}",
            path.display(),
            e.detail
        );
    }
}

/// The real TAN cutout's WCS cards, for an image of its 300x300 pixel grid.
fn tan_cutout_cards(bitpix: i64) -> Vec<String> {
    vec![
        card("SIMPLE", "T"),
        card("BITPIX", &bitpix.to_string()),
        card("NAXIS", "2"),
        card("NAXIS1", "300"),
        card("NAXIS2", "300"),
        card("CTYPE1", "'RA---TAN'"),
        card("CTYPE2", "'DEC--TAN'"),
        card("CRVAL1", "114.33"),
        card("CRVAL2", "29.4923"),
        card("CRPIX1", "150.5"),
        card("CRPIX2", "150.5"),
        card("CDELT1", "-0.0005"),
        card("CDELT2", "0.0005"),
    ]
}

/// Pixels (`[y, x]`, 300 x 300) of the real cutout as float64 with the given pixels
/// replaced.
fn real_pixels_f64(replace: &[((usize, usize), f64)]) -> Vec<f64> {
    let mut values: Vec<f64> = file_pixels(&tan_cutout())
        .iter()
        .map(|&v| v.into())
        .collect();
    for &((y, x), v) in replace {
        values[y * 300 + x] = v;
    }
    values
}

#[test]
fn infinite_and_out_of_range_pixels_are_blank_like_nan() {
    // One +Inf and one 1e40 (beyond float32) in the central 150x150 crop, one -Inf outside
    // it: the cutter and preprocessing treat them exactly as NaN pixels there.
    let spots = [(150, 140), (180, 160), (10, 290)];
    let odd = real_pixels_f64(&[
        (spots[0], f64::INFINITY),
        (spots[1], 1e40),
        (spots[2], f64::NEG_INFINITY),
    ]);
    let nan = real_pixels_f64(&spots.map(|s| (s, f64::NAN)));
    let bytes = |values: &[f64]| {
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
        fits_bytes(&tan_cutout_cards(-64), &data)
    };
    let cutter = no_mosaics();
    let cut = |b: Vec<u8>| {
        cutter
            .cut(&at_centre(Pixels::FitsCutout(b.into())))
            .expect("cutout")
    };
    let (odd_cut, nan_cut) = (cut(bytes(&odd)), cut(bytes(&nan)));
    assert!(spots.iter().all(|&(y, x)| odd_cut.pixels[[y, x]].is_nan()));
    assert!(same(&odd_cut.pixels, &nan_cut.pixels));
    assert_eq!(odd_cut.provenance.coverage, 1.0 - 3.0 / 90000.0);
    let prepared = |c: &Cutout| crate::preprocess::prepare(&c.pixels).expect("prepared");
    let (a, b) = (prepared(&odd_cut), prepared(&nan_cut));
    assert_eq!(a.image_u8, b.image_u8);
    assert_eq!((a.rms, a.threshold), (b.rms, b.threshold));
    assert!(a.input.iter().all(|v| v.is_finite()));
    // A finite range: the source's brightest pixel scales to 255, the image is not blank.
    assert!(a.image_u8.contains(&255));
    assert!(a.image_u8.iter().filter(|&&v| v > 0).count() > 100);

    // The same pixels tile-compressed (lossless), read through CFITSIO.
    use fitsio::images::{ImageDescription, ImageType};
    let dir = tempfile::tempdir().expect("temp dir");
    let fz = dir.path().join("odd.fits.fz");
    {
        let spec = format!("{}[compress G; q 0]", fz.display());
        let mut f = fitsio::FitsFile::create(&spec)
            .open()
            .expect("create compressed");
        let desc = ImageDescription {
            data_type: ImageType::Double,
            dimensions: &[300, 300],
        };
        let hdu = f.create_image("SCI", &desc).expect("image");
        for (k, v) in [("CTYPE1", "RA---TAN"), ("CTYPE2", "DEC--TAN")] {
            hdu.write_key(&mut f, k, v).expect("key");
        }
        for (k, v) in [
            ("CRVAL1", 114.33),
            ("CRVAL2", 29.4923),
            ("CRPIX1", 150.5),
            ("CRPIX2", 150.5),
            ("CDELT1", -0.0005),
            ("CDELT2", 0.0005),
        ] {
            hdu.write_key(&mut f, k, v).expect("key");
        }
        hdu.write_image(&mut f, &odd).expect("pixels");
    }
    let compressed = cutter.cut(&at_centre(path_pixels(&fz))).expect("cutout");
    assert!(same(&compressed.pixels, &nan_cut.pixels));
}

#[test]
fn ra_360_is_ra_0() {
    // An image centred on RA 0: a detection at RA 360 is the one at RA 0.
    let n = 64;
    let mut cards = tan_wcs(n);
    cards[2] = card("CRVAL1", "0.0");
    let data: Vec<u8> = (0..n * n)
        .flat_map(|i| (i as f32 * 0.5).to_be_bytes())
        .collect();
    let bytes = small_image(-32, &cards, &data, n);
    let cutter = no_mosaics();
    let cut = |ra: f64| {
        cutter
            .cut(&detection(
                ra,
                20.001,
                Some(Pixels::FitsCutout(bytes.clone().into())),
            ))
            .expect("on the image")
    };
    let (at_0, at_360) = (cut(0.0), cut(360.0));
    assert_eq!(at_360.position, (0.0, 20.001));
    assert_eq!(
        (at_0.provenance.x0, at_0.provenance.y0),
        (at_360.provenance.x0, at_360.provenance.y0)
    );
    assert!(same(&at_0.pixels, &at_360.pixels));
}

/// An `n` x `n` float32 mosaic of `scale` arcsec pixels, TAN at (10, 20) with that position
/// at 0-based pixel `at`, its pixels `value(x, y)`.
fn mosaic(n: usize, scale: f64, at: (f64, f64), value: impl Fn(usize, usize) -> f32) -> Vec<u8> {
    let data: Vec<u8> = (0..n * n)
        .flat_map(|i| value(i % n, i / n).to_be_bytes())
        .collect();
    let cdelt = scale / 3600.0;
    let extra = [
        card("CTYPE1", "'RA---TAN'"),
        card("CTYPE2", "'DEC--TAN'"),
        card("CRVAL1", "10.0"),
        card("CRVAL2", "20.0"),
        card("CRPIX1", &format!("{}", at.0 + 1.0)),
        card("CRPIX2", &format!("{}", at.1 + 1.0)),
        card("CDELT1", &format!("{:e}", -cdelt)),
        card("CDELT2", &format!("{cdelt:e}")),
    ];
    small_image(-32, &extra, &data, n)
}

fn mosaic_cutter(files: &[(&str, Vec<u8>)], cfg: CutoutConfig) -> (tempfile::TempDir, Cutter) {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).expect("write");
    }
    let cutter = Cutter::new(&CutoutConfig {
        mosaics: vec![dir.path().to_path_buf()],
        ..cfg
    })
    .expect("index");
    (dir, cutter)
}

fn chosen(cutter: &Cutter) -> String {
    let cut = cutter.cut(&detection(10.0, 20.0, None)).expect("covered");
    let file = cut.provenance.file;
    file.rsplit('/').next().unwrap_or_default().to_string()
}

#[test]
fn mosaics_the_model_takes_win_and_edges_count_in_arcsec() {
    let ones = |_, _| 1.0f32;
    // The source 20 pixels (36 arcsec) inside a FIRST mosaic's edge, at the centre of a
    // VLASS one (1 arcsec pixels): the FIRST pixels are the model's, so FIRST is cut
    // rather than the detection rejected for VLASS's pixel size.
    let files = [
        ("a_first.fits", mosaic(400, 1.8, (20.0, 200.0), ones)),
        ("b_vlass.fits", mosaic(400, 1.0, (200.0, 200.0), ones)),
    ];
    let (_dir, cutter) = mosaic_cutter(&files, CutoutConfig::default());
    assert_eq!(chosen(&cutter), "a_first.fits");
    // Resampling on: still the mosaic of the model's own pixels.
    let (_dir, cutter) = mosaic_cutter(
        &files,
        CutoutConfig {
            resample: true,
            ..CutoutConfig::default()
        },
    );
    assert_eq!(chosen(&cutter), "a_first.fits");
    // Both taken as they are (a wide tolerance): the source is 150 pixels (270 arcsec) from
    // the FIRST mosaic's edge and 190 pixels (190 arcsec) from the VLASS one's: FIRST is
    // deeper inside, though fewer pixels in.
    let files = [
        ("a_vlass.fits", mosaic(400, 1.0, (190.0, 200.0), ones)),
        ("b_first.fits", mosaic(400, 1.8, (150.0, 200.0), ones)),
    ];
    let wide = CutoutConfig {
        pixel_scale_tolerance: 0.5,
        ..CutoutConfig::default()
    };
    let (_dir, cutter) = mosaic_cutter(&files, wide);
    assert_eq!(chosen(&cutter), "b_first.fits");
}

#[test]
fn a_mosaic_blank_where_the_source_is_falls_back_to_the_next() {
    // The best-placed mosaic is NaN over its left half (beyond its coverage), where the
    // source lies; the next one has data there.
    let blank_left = |x: usize, _| if x < 250 { f32::NAN } else { 2.0 };
    let files = [
        ("a_blank.fits", mosaic(500, 1.8, (200.0, 250.0), blank_left)),
        ("b_data.fits", mosaic(400, 1.8, (150.0, 200.0), |_, _| 3.0)),
    ];
    let (_dir, cutter) = mosaic_cutter(&files, CutoutConfig::default());
    let cut = cutter.cut(&detection(10.0, 20.0, None)).expect("covered");
    assert!(
        cut.provenance.file.ends_with("b_data.fits"),
        "{:?}",
        cut.provenance
    );
    assert_eq!(cut.pixels[[149, 149]], 3.0);

    // With no other mosaic, the best one's window stands: partly blank here...
    let (_dir, cutter) = mosaic_cutter(&files[..1], CutoutConfig::default());
    let cut = cutter
        .cut(&detection(10.0, 20.0, None))
        .expect("partly covered");
    assert!(cut.pixels[[149, 149]].is_nan() && cut.pixels[[149, 299]] == 2.0);
    // ...and rejected as empty when none of it has data, after trying the others.
    let all_blank = |_, _| f32::NAN;
    let files = [
        ("a.fits", mosaic(500, 1.8, (250.0, 250.0), all_blank)),
        ("b.fits", mosaic(400, 1.8, (150.0, 200.0), all_blank)),
    ];
    let (_dir, cutter) = mosaic_cutter(&files, CutoutConfig::default());
    let e = reject(&cutter, &detection(10.0, 20.0, None));
    assert_eq!(e.reason, RejectReason::EmptyCutout);
    assert!(
        e.detail.contains("a.fits"),
        "the best mosaic's: {}",
        e.detail
    );
}
