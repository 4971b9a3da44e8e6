//! FITS files and folders of them as a source: each file is one detection whose pixels
//! are the file itself and whose position is the image centre (`centre_of_cutout`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::domain::{Detection, Origin};
use crate::proto::{self, source_detection::Pixels};

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

/// Expands inputs into FITS files: a file is taken as given (whatever its name), a folder
/// contributes every FITS-named file below it, sorted by path. Any input that does not
/// exist, or a folder that cannot be listed, is an error.
pub fn fits_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, SourceError> {
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
            files.push(input.clone());
            continue;
        }
        let walker = walkdir::WalkDir::new(input)
            .follow_links(true)
            .sort_by_file_name();
        let before = files.len();
        for entry in walker {
            let entry = entry.map_err(|e| {
                let path = e.path().unwrap_or(input).to_path_buf();
                SourceError::Io {
                    path,
                    source: e.into(),
                }
            })?;
            let name = entry.file_name().to_string_lossy();
            if entry.file_type().is_file() && is_fits_name(&name) {
                files.push(entry.into_path());
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

pub(super) fn open(inputs: &[PathBuf], survey: &str) -> Result<Detections, SourceError> {
    let files = fits_files(inputs)?;
    let mut items = Vec::with_capacity(files.len());
    for path in files {
        let Some(text) = path.to_str() else {
            return Err(SourceError::NonUtf8Path { path });
        };
        let message = proto::SourceDetection {
            source_id: source_id(&path),
            survey: survey.to_string(),
            centre_of_cutout: true,
            pixels: Some(Pixels::FitsPath(text.to_string())),
            ..Default::default()
        };
        items.push((message, Origin::Input(text.to_string())));
    }
    // `received` is stamped when the pipeline pulls the item, not when the folder was listed.
    let detections = items.into_iter().map(|(message, origin)| Detection {
        message,
        origin,
        received: Instant::now(),
    });
    Ok(Box::new(detections.map(Ok)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SourceConfig;

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
