//! Finding and loading the ONNX Runtime shared library, and the one ONNX Runtime
//! environment a process may have. Sessions are this module's callers' business.
//!
//! Where the library is looked for, first match wins:
//! 1. `inference.runtime_library` from the configuration (nothing else is tried);
//! 2. the `ORT_DYLIB_PATH` environment variable (nothing else is tried);
//! 3. `vendor/onnxruntime/libonnxruntime.so` under the current directory, then under each
//!    ancestor of the executable (so `target/debug/radiogate` in the repository finds the
//!    copy that `scripts/fetch-onnxruntime.sh` puts there).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;

use super::StartError;

/// The script that fetches the library into [`VENDOR_LIBRARY`].
pub const FETCH_SCRIPT: &str = "scripts/fetch-onnxruntime.sh";
/// Where [`FETCH_SCRIPT`] puts the library, relative to the repository root.
pub const VENDOR_LIBRARY: &str = "vendor/onnxruntime/libonnxruntime.so";

/// The loaded library and the process's environment, which sessions keep a reference to.
#[derive(Debug)]
pub(super) struct Runtime {
    /// Canonical path of the library that was loaded: a process cannot load a second one.
    pub library: PathBuf,
    pub environment: Environment,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
/// Serialises the first initialisation (loading the library and building the environment).
static INIT: Mutex<()> = Mutex::new(());

/// The process's runtime, loading the library found by [`locate`] on first use. Later
/// calls must resolve to the same library file.
pub(super) fn runtime(configured: Option<&Path>) -> Result<&'static Runtime, StartError> {
    let cwd = std::env::current_dir().ok();
    let exe = std::env::current_exe().ok();
    let found = locate(
        configured,
        std::env::var_os("ORT_DYLIB_PATH"),
        cwd.as_deref(),
        exe.as_deref(),
    )?;
    let library = found.canonicalize().unwrap_or(found);

    // A poisoned lock only means another thread panicked while loading; the OnceLock
    // below still says truthfully whether loading finished.
    let _init = INIT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(runtime) = RUNTIME.get() {
        return if runtime.library == library {
            Ok(runtime)
        } else {
            Err(StartError::RuntimeMismatch {
                loaded: runtime.library.clone(),
                requested: library,
            })
        };
    }
    let environment = ort::init_from(&library)
        .map_err(|source| StartError::RuntimeLoad {
            path: library.clone(),
            source,
        })?
        .with_name("radiogate")
        .with_telemetry(false)
        .build()
        .map_err(StartError::Environment)?;
    Ok(RUNTIME.get_or_init(|| Runtime {
        library,
        environment,
    }))
}

/// Resolves where the library should be, without loading it (see the module docs).
pub(super) fn locate(
    configured: Option<&Path>,
    env_var: Option<OsString>,
    cwd: Option<&Path>,
    exe: Option<&Path>,
) -> Result<PathBuf, StartError> {
    let candidates: Vec<PathBuf> = if let Some(path) = configured {
        vec![path.to_path_buf()]
    } else if let Some(path) = env_var.filter(|v| !v.is_empty()) {
        vec![PathBuf::from(path)]
    } else {
        let exe_ancestors = exe.into_iter().flat_map(|exe| exe.ancestors().skip(1));
        cwd.into_iter()
            .chain(exe_ancestors)
            .map(|dir| dir.join(VENDOR_LIBRARY))
            .collect()
    };
    match candidates.iter().find(|path| path.is_file()) {
        Some(path) => Ok(path.clone()),
        None => Err(StartError::RuntimeNotFound { tried: candidates }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().expect("test paths have a parent"))
            .expect("create dir");
        std::fs::write(path, b"").expect("write file");
    }

    #[test]
    fn configured_path_wins_and_nothing_else_is_tried() {
        let dir = tempfile::tempdir().expect("tempdir");
        let configured = dir.path().join("custom/libonnxruntime.so");
        touch(&configured);
        touch(&dir.path().join(VENDOR_LIBRARY));
        let found = locate(
            Some(&configured),
            Some("/elsewhere.so".into()),
            Some(dir.path()),
            None,
        );
        assert_eq!(found.expect("configured library exists"), configured);

        let missing = dir.path().join("missing.so");
        let err = locate(Some(&missing), None, Some(dir.path()), None).expect_err("missing file");
        assert!(
            matches!(&err, StartError::RuntimeNotFound { tried } if tried.as_slice() == std::slice::from_ref(&missing))
        );
    }

    #[test]
    fn env_var_comes_before_the_vendor_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let from_env = dir.path().join("env/libonnxruntime.so");
        touch(&from_env);
        touch(&dir.path().join(VENDOR_LIBRARY));
        let found = locate(None, Some(from_env.clone().into()), Some(dir.path()), None);
        assert_eq!(found.expect("env library exists"), from_env);
        // An empty variable counts as unset.
        let found = locate(None, Some("".into()), Some(dir.path()), None);
        assert_eq!(
            found.expect("vendor library exists"),
            dir.path().join(VENDOR_LIBRARY)
        );
    }

    #[test]
    fn vendor_folder_is_found_above_the_executable() {
        let repo = tempfile::tempdir().expect("tempdir");
        touch(&repo.path().join(VENDOR_LIBRARY));
        let exe = repo.path().join("target/debug/radiogate");
        let elsewhere = tempfile::tempdir().expect("tempdir");
        let found = locate(None, None, Some(elsewhere.path()), Some(&exe));
        assert_eq!(
            found.expect("vendor library above exe"),
            repo.path().join(VENDOR_LIBRARY)
        );
    }

    #[test]
    fn not_found_names_every_path_tried_and_the_script() {
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = dir.path().join("bin/radiogate");
        let err = locate(None, None, Some(dir.path()), Some(&exe)).expect_err("nothing there");
        let StartError::RuntimeNotFound { tried } = &err else {
            panic!("unexpected error {err}")
        };
        assert_eq!(tried[0], dir.path().join(VENDOR_LIBRARY));
        assert_eq!(tried[1], dir.path().join("bin").join(VENDOR_LIBRARY));
        let msg = err.to_string();
        assert!(
            msg.contains(FETCH_SCRIPT) && msg.contains("ORT_DYLIB_PATH"),
            "{msg}"
        );
        assert!(
            msg.contains(
                &dir.path()
                    .join("bin")
                    .join(VENDOR_LIBRARY)
                    .display()
                    .to_string()
            ),
            "{msg}"
        );
    }
}
