//! How session threads wait for the GPU: the scheduling flag of the device's primary CUDA
//! context, set through the CUDA driver (`libcuda.so.1`, installed with the NVIDIA driver)
//! before any session creates that context.
//!
//! ONNX Runtime's CUDA provider waits for every batch's outputs with a stream
//! synchronisation, and CUDA's default (`auto`) spins a waiting thread at 100% of a core
//! whenever the process has fewer CUDA contexts than the machine has cores: with 8 GPU
//! sessions, 8 cores then spin while the GPU works, and cutting and preprocessing get what
//! is left. `blocking` makes a waiting thread sleep until the GPU signals completion.

use std::ffi::{CStr, c_char, c_int, c_uint};
use std::sync::OnceLock;

use libloading::Library;

use crate::config::GpuWait;

/// The CUDA driver library (the NVIDIA driver installs it; no toolkit needed).
pub const DRIVER_LIBRARY: &str = "libcuda.so.1";

/// The scheduling bits of a context's flags (`CU_CTX_SCHED_MASK`), and each wait's value
/// there (`CU_CTX_SCHED_SPIN`, `_YIELD`, `_BLOCKING_SYNC`; 0 is `_AUTO`).
const SCHED_MASK: c_uint = 0x07;
const SCHED: [(GpuWait, c_uint); 3] = [
    (GpuWait::Spin, 0x01),
    (GpuWait::Yield, 0x02),
    (GpuWait::Blocking, 0x04),
];

type CuResult = c_int;
type CuDevice = c_int;

/// Why the wait could not be set or read.
#[derive(Debug, thiserror::Error)]
pub enum GpuWaitError {
    #[error("cannot load the CUDA driver library {library}")]
    Load {
        library: String,
        #[source]
        source: libloading::Error,
    },
    #[error("the CUDA driver library has no {symbol}")]
    Symbol {
        symbol: &'static str,
        #[source]
        source: libloading::Error,
    },
    #[error("{call} failed: {name} (CUresult {code})")]
    Call {
        call: &'static str,
        code: CuResult,
        name: String,
    },
}

/// The driver entry points used here, resolved once per process.
struct Driver {
    init: unsafe extern "C" fn(c_uint) -> CuResult,
    device_get: unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult,
    set_flags: unsafe extern "C" fn(CuDevice, c_uint) -> CuResult,
    get_state: unsafe extern "C" fn(CuDevice, *mut c_uint, *mut c_int) -> CuResult,
    error_name: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
    /// Keeps the entry points valid; the driver stays loaded for the process's life.
    _library: Library,
}

static DRIVER: OnceLock<Driver> = OnceLock::new();

impl Driver {
    /// Loads `library` and resolves the entry points.
    fn open(library: &str) -> Result<Driver, GpuWaitError> {
        // SAFETY: loading the CUDA driver runs its initialisers, which have no
        // preconditions; the same library is what ONNX Runtime's CUDA provider loads.
        let lib = unsafe { Library::new(library) }.map_err(|source| GpuWaitError::Load {
            library: library.to_string(),
            source,
        })?;
        // SAFETY: each symbol's type is its declaration in the CUDA driver API (cuda.h).
        unsafe {
            Ok(Driver {
                init: *symbol(&lib, "cuInit")?,
                device_get: *symbol(&lib, "cuDeviceGet")?,
                // The _v2 entry point (CUDA 11 and later) may be called while the context is
                // active; the unversioned one only before.
                set_flags: match lib.get(b"cuDevicePrimaryCtxSetFlags_v2") {
                    Ok(f) => *f,
                    Err(_) => *symbol(&lib, "cuDevicePrimaryCtxSetFlags")?,
                },
                get_state: *symbol(&lib, "cuDevicePrimaryCtxGetState")?,
                error_name: *symbol(&lib, "cuGetErrorName")?,
                _library: lib,
            })
        }
    }

    /// The process's driver, loaded on first use.
    fn get() -> Result<&'static Driver, GpuWaitError> {
        if let Some(driver) = DRIVER.get() {
            return Ok(driver);
        }
        let driver = Driver::open(DRIVER_LIBRARY)?;
        Ok(DRIVER.get_or_init(|| driver))
    }

    fn check(&self, call: &'static str, code: CuResult) -> Result<(), GpuWaitError> {
        if code == 0 {
            return Ok(());
        }
        let mut name: *const c_char = std::ptr::null();
        // SAFETY: cuGetErrorName writes a pointer to a static string, or fails and leaves it.
        let known = unsafe { (self.error_name)(code, &mut name) } == 0 && !name.is_null();
        let name = if known {
            // SAFETY: a non-null name from cuGetErrorName is a static C string.
            unsafe { CStr::from_ptr(name) }
                .to_string_lossy()
                .into_owned()
        } else {
            "unknown error".to_string()
        };
        Err(GpuWaitError::Call { call, code, name })
    }

    fn device(&self, device_id: i32) -> Result<CuDevice, GpuWaitError> {
        // SAFETY: plain driver calls with valid out-pointers.
        self.check("cuInit", unsafe { (self.init)(0) })?;
        let mut device: CuDevice = 0;
        self.check("cuDeviceGet", unsafe {
            (self.device_get)(&mut device, device_id)
        })?;
        Ok(device)
    }
}

/// # Safety
/// `T` must be the symbol's real type.
unsafe fn symbol<'a, T>(
    lib: &'a Library,
    name: &'static str,
) -> Result<libloading::Symbol<'a, T>, GpuWaitError> {
    // SAFETY: passed on to the caller.
    unsafe { lib.get(name.as_bytes()) }.map_err(|source| GpuWaitError::Symbol {
        symbol: name,
        source,
    })
}

/// The scheduling flag for `wait`; None for `auto`, which leaves the context alone.
fn sched_flag(wait: GpuWait) -> Option<c_uint> {
    SCHED
        .iter()
        .find(|(w, _)| *w == wait)
        .map(|&(_, flag)| flag)
}

/// Makes session threads on GPU `device_id` wait as `wait` says, keeping the context's other
/// flags. Call before the first session: `auto` does nothing (not even load the driver).
pub fn set_wait(device_id: i32, wait: GpuWait) -> Result<(), GpuWaitError> {
    let Some(flag) = sched_flag(wait) else {
        return Ok(());
    };
    let driver = Driver::get()?;
    let device = driver.device(device_id)?;
    let flags = flags(driver, device)?;
    // SAFETY: a driver call on a device the driver just returned.
    driver.check("cuDevicePrimaryCtxSetFlags", unsafe {
        (driver.set_flags)(device, (flags & !SCHED_MASK) | flag)
    })
}

/// The wait in effect on GPU `device_id`, as CUDA reports it (for the log): a mismatch with
/// what was asked means something else in the process set the context's flags.
pub fn wait_in_effect(device_id: i32) -> Result<GpuWait, GpuWaitError> {
    let driver = Driver::get()?;
    let device = driver.device(device_id)?;
    let sched = flags(driver, device)? & SCHED_MASK;
    Ok(SCHED
        .iter()
        .find(|&&(_, flag)| flag == sched)
        .map_or(GpuWait::Auto, |&(wait, _)| wait))
}

/// The primary context's flags.
fn flags(driver: &Driver, device: CuDevice) -> Result<c_uint, GpuWaitError> {
    let (mut flags, mut active): (c_uint, c_int) = (0, 0);
    // SAFETY: a driver call with valid out-pointers.
    driver.check("cuDevicePrimaryCtxGetState", unsafe {
        (driver.get_state)(device, &mut flags, &mut active)
    })?;
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wait_but_auto_is_one_scheduling_flag() {
        assert_eq!(sched_flag(GpuWait::Auto), None);
        for wait in [GpuWait::Spin, GpuWait::Yield, GpuWait::Blocking] {
            let flag = sched_flag(wait).expect("a flag");
            assert_eq!(flag & SCHED_MASK, flag, "{wait:?}");
            assert_eq!(flag.count_ones(), 1, "{wait:?}");
        }
    }

    #[test]
    fn auto_does_not_touch_the_driver() {
        // No driver on a CPU machine, and none is needed for `auto`.
        set_wait(0, GpuWait::Auto).expect("auto sets nothing");
    }

    #[test]
    fn a_missing_driver_is_named_in_the_error() {
        let err = Driver::open("libcuda-not-installed.so.1")
            .err()
            .expect("no such library");
        assert!(
            matches!(&err, GpuWaitError::Load { library, .. } if library == "libcuda-not-installed.so.1"),
            "{err}"
        );
        assert!(err.to_string().contains("libcuda-not-installed.so.1"));
    }
}
