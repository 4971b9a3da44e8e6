//! FITS files and folders of them as a source: each file is one detection whose pixels
//! are the file itself and whose position is the image centre (`centre_of_cutout`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::domain::{Detection, Origin, Rejected};
use crate::proto::{self, RejectReason, source_detection::Pixels};

use super::{Detections, SourceError};

/// File name endings taken from folders (case-insensitive); longest first so that the
/// source id of `x.fits.fz` is `x`.
const FITS_ENDINGS: [&str; 3] = [".fits.fz", ".fits", ".fit"];

/// Whether a file name ends like a FITS file: `.fits`, `.fit` or `.fits.fz`, any case.
pub fn is_fits_name(name: &str) -> bool {
    fits_ending(name).is_some()
}

fn fits_ending(name: &str) -> Option<usize> {
    let lower = name.to_ascii_lowercase();
    FITS_ENDINGS
        .iter()
        .find(|ending| lower.len() > ending.len() && lower.ends_with(*ending))
        .map(|ending| ending.len())
}

/// A FITS-named entry of an input folder that could not be followed (a dangling link, a
/// link loop): the path the folder listing gave, and why.
#[derive(Debug)]
pub struct Unlisted {
    pub path: PathBuf,
    pub error: String,
}

/// Expands inputs into FITS files: a file is taken as given (whatever its name), a folder
/// contributes every FITS-named file below it, sorted by path. An input that does not
/// exist, or a folder that cannot be listed at all, is an error; a bad entry below a folder
/// is not: a FITS-named one comes back as [`Unlisted`] in its place (to become a
/// rejection), any other is skipped with a warning.
pub fn fits_files(inputs: &[PathBuf]) -> Result<Vec<Result<PathBuf, Unlisted>>, SourceError> {
    let mut files = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => SourceError::Missing {
                path: input.clone(),
            },
            _ => SourceError::Io {
                path: input.clone(),
                source,
            },
        })?;
        if !meta.is_dir() {
            files.push(Ok(input.clone()));
            continue;
        }
        let walker = walkdir::WalkDir::new(input)
            .follow_links(true)
            .sort_by_file_name();
        let before = files.len();
        for entry in walker {
            let entry = match entry {
                Ok(entry) => entry,
                // The folder itself cannot be listed: the input as a whole is unreadable.
                Err(e) if e.depth() == 0 => {
                    return Err(SourceError::Io {
                        path: e.path().unwrap_or(input).to_path_buf(),
                        source: e.into(),
                    });
                }
                Err(e) => {
                    let path = e.path().unwrap_or(input).to_path_buf();
                    let named_fits = path
                        .file_name()
                        .is_some_and(|name| is_fits_name(&name.to_string_lossy()));
                    if named_fits {
                        files.push(Err(Unlisted {
                            path,
                            error: e.to_string(),
                        }));
                    } else {
                        tracing::warn!(path = %path.display(), error = %e, "skipping an entry of an input folder that cannot be read");
                    }
                    continue;
                }
            };
            let name = entry.file_name().to_string_lossy();
            if entry.file_type().is_file() && is_fits_name(&name) {
                files.push(Ok(entry.into_path()));
            }
        }
        if files.len() == before {
            tracing::warn!(folder = %input.display(), "no FITS files (*.fits, *.fit, *.fits.fz) in folder");
        }
    }
    Ok(files)
}

/// The source id of a FITS file: its name without the FITS ending (or without its last
/// extension when it has no FITS ending).
fn source_id(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    match fits_ending(&name) {
        Some(len) => name[..name.len() - len].to_string(),
        None => path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    }
}

/// A listed file as a detection; a file that cannot be followed, or whose path cannot be
/// carried in one (`fits_path` is UTF-8 text), as a rejection naming it (lossily).
#[allow(
    clippy::result_large_err,
    reason = "Result<Detection, Rejected> is the source item type the pipeline consumes"
)]
fn item(listed: Result<PathBuf, Unlisted>, survey: &str) -> Result<Detection, Rejected> {
    let rejected = |path: &Path, reason, detail: String| Rejected {
        reason,
        detail,
        source_id: Some(source_id(path)).filter(|id| !id.is_empty()),
        original: None,
        origin: Origin::Input(path.to_string_lossy().into_owned()),
    };
    let path = match listed {
        Ok(path) => path,
        Err(Unlisted { path, error }) => {
            let detail = format!("cannot read {}: {error}", path.display());
            return Err(rejected(&path, RejectReason::BadFits, detail));
        }
    };
    let Some(text) = path.to_str() else {
        let detail = format!(
            "path {} is not valid UTF-8, which a detection cannot carry: rename the file",
            path.display()
        );
        return Err(rejected(&path, RejectReason::InvalidDetection, detail));
    };
    let message = proto::SourceDetection {
        source_id: source_id(&path),
        survey: survey.to_string(),
        centre_of_cutout: true,
        pixels: Some(Pixels::FitsPath(text.to_string())),
        ..Default::default()
    };
    Ok(Detection {
        origin: Origin::Input(text.to_string()),
        message,
        // Stamped when the pipeline pulls the item (this iterator is lazy), not when the
        // folder was listed.
        received: Instant::now(),
    })
}

#[allow(
    clippy::result_large_err,
    reason = "Result<Detection, Rejected> is the source item type the pipeline consumes"
)]
pub(super) fn open(inputs: &[PathBuf], survey: &str) -> Result<Detections, SourceError> {
    let files = fits_files(inputs)?;
    let survey = survey.to_string();
    Ok(Box::new(
        files.into_iter().map(move |listed| item(listed, &survey)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SourceConfig;
    use crate::proto::RejectReason;

    fn shared_cutouts() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/first-cutouts")
    }

    fn detections(inputs: Vec<PathBuf>) -> Vec<Detection> {
        let config = SourceConfig::Files {
            inputs,
            survey: "FIRST".into(),
        };
        super::super::open(&config)
            .unwrap()
            .map(|item| item.unwrap())
            .collect()
    }

    #[test]
    fn fits_names() {
        for name in ["a.fits", "A.FITS", "b.fit", "c.fits.fz", "1_2.3+4.5.fits"] {
            assert!(is_fits_name(name), "{name}");
        }
        for name in ["a.fits.gz", "fits", ".fits", "a.csv", "a.fitsx"] {
            assert!(!is_fits_name(name), "{name}");
        }
        assert_eq!(source_id(Path::new("d/x.fits.fz")), "x");
        assert_eq!(
            source_id(Path::new("d/100_114.330+029.492_0.1105_0034.32.fits")),
            "100_114.330+029.492_0.1105_0034.32"
        );
        assert_eq!(source_id(Path::new("d/y.img")), "y");
    }

    #[test]
    fn a_folder_of_real_cutouts_becomes_detections_in_sorted_order() {
        let folder = shared_cutouts().join("mirabest-test");
        let dets = detections(vec![folder.clone()]);
        assert_eq!(dets.len(), 157);
        let ids: Vec<&str> = dets.iter().map(|d| d.message.source_id.as_str()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        let first = &dets[0];
        assert_eq!(
            first.message.source_id,
            "100_114.330+029.492_0.1105_0034.32"
        );
        assert_eq!(first.message.survey, "FIRST");
        assert!(first.message.centre_of_cutout);
        let path = folder.join("100_114.330+029.492_0.1105_0034.32.fits");
        let path = path.to_str().unwrap();
        assert_eq!(first.message.pixels, Some(Pixels::FitsPath(path.into())));
        assert_eq!(first.origin, Origin::Input(path.into()));
        for det in &dets {
            super::super::validate(&det.message).unwrap();
        }
    }

    #[test]
    fn folders_are_searched_recursively_and_files_taken_as_given() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("b/c");
        std::fs::create_dir_all(&nested).unwrap();
        for name in ["z.fits", "a.FIT", "notes.txt", "b/c/m.fits.fz", "b/k.fits"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let explicit = dir.path().join("notes.txt");
        let dets = detections(vec![dir.path().to_path_buf(), explicit]);
        let ids: Vec<&str> = dets.iter().map(|d| d.message.source_id.as_str()).collect();
        assert_eq!(ids, ["a", "m", "k", "z", "notes"]);
    }

    /// Bad entries of a folder do not stop the run: a dangling link or a link loop named
    /// like FITS, and a file whose name is not UTF-8, each become a rejection in their place
    /// (the path, lossily, as its input); bad entries of other names are skipped.
    #[cfg(unix)]
    #[test]
    fn bad_folder_entries_become_rejections_or_are_skipped() {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::symlink;

        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("a.fits"), b"").unwrap();
        std::fs::write(root.join("z.fits"), b"").unwrap();
        symlink(root.join("gone.fits"), root.join("b-dangling.fits")).unwrap();
        symlink(root.join("gone.txt"), root.join("c-dangling.txt")).unwrap();
        std::fs::create_dir(root.join("d")).unwrap();
        symlink(root, root.join("d/loop")).unwrap();
        symlink(root.join("d/e-loop.fits"), root.join("d/e-loop.fits")).unwrap();
        let odd = std::ffi::OsStr::from_bytes(b"f-\xff.fits");
        std::fs::write(root.join(odd), b"").unwrap();

        let config = SourceConfig::Files {
            inputs: vec![root.to_path_buf()],
            survey: "FIRST".into(),
        };
        let items: Vec<_> = super::super::open(&config).unwrap().collect();
        let summary: Vec<(String, Option<RejectReason>)> = items
            .iter()
            .map(|item| match item {
                Ok(d) => (d.message.source_id.clone(), None),
                Err(r) => (r.source_id.clone().unwrap_or_default(), Some(r.reason)),
            })
            .collect();
        let expected = [
            ("a", None),
            ("b-dangling", Some(RejectReason::BadFits)),
            ("e-loop", Some(RejectReason::BadFits)),
            ("f-\u{fffd}", Some(RejectReason::InvalidDetection)),
            ("z", None),
        ]
        .map(|(id, reason)| (id.to_string(), reason));
        assert_eq!(summary, expected);
        let Err(odd) = &items[3] else {
            panic!("{:?}", items[3])
        };
        assert!(odd.detail.contains("not valid UTF-8"), "{}", odd.detail);
        assert_eq!(
            odd.origin,
            Origin::Input(root.join(odd_name()).to_string_lossy().into_owned())
        );
        fn odd_name() -> &'static std::ffi::OsStr {
            std::ffi::OsStr::from_bytes(b"f-\xff.fits")
        }
        let Err(dangling) = &items[1] else {
            panic!("{:?}", items[1])
        };
        assert!(
            dangling.detail.starts_with("cannot read") && dangling.detail.contains("b-dangling"),
            "{}",
            dangling.detail
        );
    }

    #[test]
    fn a_missing_input_is_a_startup_error() {
        let missing = shared_cutouts().join("no-such-file.fits");
        let config = SourceConfig::Files {
            inputs: vec![missing.clone()],
            survey: "FIRST".into(),
        };
        match super::super::open(&config) {
            Err(SourceError::Missing { path }) => assert_eq!(path, missing),
            Err(other) => panic!("expected Missing, got {other}"),
            Ok(_) => panic!("expected Missing, got a source"),
        }
    }

    #[test]
    fn the_configured_survey_is_used() {
        let file = shared_cutouts().join("first-sin-33x33.fits");
        let config = SourceConfig::Files {
            inputs: vec![file],
            survey: "VLASS".into(),
        };
        let dets: Vec<_> = super::super::open(&config).unwrap().collect();
        assert_eq!(dets.len(), 1);
        let det = dets[0].as_ref().unwrap();
        assert_eq!(det.message.survey, "VLASS");
        assert_eq!(det.message.source_id, "first-sin-33x33");
    }
}
