//! Tile-compressed images (`.fits.fz`, `ZIMAGE = T`) decoded by CFITSIO through `fitsio`:
//! the one thing the memory-mapped fast path cannot read. Only the tiles under the window
//! are decompressed. A `FitsFile` is not `Send`, so each call opens its own handle.
//!
//! This module owns only the CFITSIO call; which window to read is decided by the caller.

use std::ffi::c_void;
use std::os::raw::{c_int, c_long};
use std::path::Path;

use fitsio::FitsFile;
use ndarray::Array2;

use super::fits::{finite_or_blank, overlap};

/// Reads the part of the window `[x0, x0 + w) x [y0, y0 + h)` that lies on the `nx` x `ny`
/// image of HDU `hdu` (0-based, `naxis` axes, all beyond the second of size 1) into `out`
/// (pre-filled with NaN). Pixels come back scaled, with blanks and non-finite values
/// (+-Inf, or beyond float32's range) as NaN. Returns the number of finite pixels written.
pub fn read_window(
    path: &Path,
    hdu: usize,
    naxis: usize,
    (nx, ny): (usize, usize),
    x0: i64,
    y0: i64,
    out: &mut Array2<f32>,
) -> Result<usize, fitsio::errors::Error> {
    let (h, w) = out.dim();
    let (Some((cx0, cx1)), Some((cy0, cy1))) = (overlap(x0, w, nx), overlap(y0, h, ny)) else {
        return Ok(0);
    };
    let mut file = FitsFile::open(path)?;
    // Moves CFITSIO to that HDU; a compressed image HDU reads as an image.
    file.hdu(hdu)?;
    let (cw, ch) = (cx1 - cx0, cy1 - cy0);
    let mut blc: Vec<c_long> = vec![1; naxis];
    let mut trc: Vec<c_long> = vec![1; naxis];
    let mut inc: Vec<c_long> = vec![1; naxis];
    // FITS pixel numbers are 1-based and inclusive; the window is inside the image here.
    (blc[0], trc[0]) = ((cx0 + 1) as c_long, cx1 as c_long);
    (blc[1], trc[1]) = ((cy0 + 1) as c_long, cy1 as c_long);
    let mut buf = vec![f32::NAN; cw * ch];
    let mut nulval = f32::NAN;
    let mut anynul: c_int = 0;
    let mut status: c_int = 0;
    // SAFETY: `file` is open and positioned on the HDU; blc/trc/inc hold `naxis` elements
    // as ffgsv requires for an image of `naxis` axes; `buf` holds exactly the cw * ch
    // TFLOAT values of the requested section; `nulval` asks CFITSIO to write NaN for blank
    // pixels; every pointer outlives the call.
    unsafe {
        fitsio::sys::ffgsv(
            file.as_raw(),
            fitsio::sys::TFLOAT as c_int,
            blc.as_mut_ptr(),
            trc.as_mut_ptr(),
            inc.as_mut_ptr(),
            (&mut nulval as *mut f32).cast::<c_void>(),
            buf.as_mut_ptr().cast::<c_void>(),
            &mut anynul,
            &mut status,
        );
    }
    fitsio::errors::check_status(status)?;
    let mut finite = 0;
    for (r, src) in buf.chunks_exact(cw).enumerate() {
        let wy = (cy0 as i64 - y0) as usize + r;
        let wx = (cx0 as i64 - x0) as usize;
        for (d, &s) in out.row_mut(wy).iter_mut().skip(wx).zip(src) {
            // CFITSIO's TFLOAT conversion makes a value beyond float32's range infinite.
            *d = finite_or_blank(s);
            finite += usize::from(d.is_finite());
        }
    }
    Ok(finite)
}
