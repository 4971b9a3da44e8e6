//! `radiogate explain`: a picture of one classified source. The cutout the model saw with
//! an asinh stretch, the combined attention map of the result as a translucent heat map,
//! emission contours at 1, 2, 4, 8, ... times the clipping threshold of the preprocessing,
//! the label and confidence; optionally a panel per attention gate.
//!
//! The source is either a FITS cutout, classified here by the offline pipeline itself (one
//! file through [`pipeline::run`], per-gate maps on), or a result of an earlier
//! `radiogate classify` (JSON Lines or protobuf) picked by source id, whose pixels are cut
//! again from the file its provenance names (or a FITS file given instead) by the cutout
//! stage. Either way the picture is drawn from a `proto::Classification`, so what it shows
//! is exactly what the results say; only the pixels come from the image.
//!
//! It also makes the small overlay of the HTML report (`sink::html`'s `thumbnail`), from
//! the model's own 8-bit input, for results that are still in flight.

use std::path::{Path, PathBuf};

use image::RgbImage;
use ndarray::Array2;

use crate::config::{Config, OutputFormat, SinkConfig, SourceConfig};
use crate::cutout::Cutter;
use crate::domain::{ItemError, MODEL_SIZE, label_name};
use crate::pipeline::{self, PipelineError, RunOptions};
use crate::preprocess;
use crate::proto::{self, source_detection::Pixels};
use crate::render::{self, Map, RenderError, Scene, Stretch, Writer};
use crate::sink::record::{Record, RecordError};
use crate::sink::{self, SinkError};
use crate::summary::{self, DecodeError};

/// Why no picture could be made.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("classifying {}: {source}", path.display())]
    Classify {
        path: PathBuf,
        #[source]
        source: Box<PipelineError>,
    },
    #[error("{} was rejected ({reason}): {detail}", path.display())]
    Rejected {
        path: PathBuf,
        reason: String,
        detail: String,
    },
    #[error("results {}: {source}", path.display())]
    Results {
        path: PathBuf,
        #[source]
        source: Box<SinkError>,
    },
    #[error("results {}: {source}", path.display())]
    Record {
        path: PathBuf,
        #[source]
        source: RecordError,
    },
    #[error("no classification of source '{source_id}' in {}{}", path.display(), rejection_note(.rejection.as_deref()))]
    NotFound {
        path: PathBuf,
        source_id: String,
        rejection: Option<String>,
    },
    #[error(
        "results {}: an ECSV table holds no attention maps; explain reads JSON Lines or protobuf results",
        .0.display()
    )]
    Table(PathBuf),
    #[error("the result of '{0}' has no {1}")]
    Incomplete(String, &'static str),
    #[error(
        "the pixels of '{0}' were sent inline and are not in the results; give the FITS file as well"
    )]
    Inline(String),
    #[error("cutting {file} again: {source}")]
    Cut {
        file: String,
        #[source]
        source: ItemError,
    },
    #[error(
        "cutting {file} again gives the window at ({got_x}, {got_y}), the result says ({want_x}, {want_y}): not the same pixels"
    )]
    Window {
        file: String,
        got_x: i64,
        got_y: i64,
        want_x: i64,
        want_y: i64,
    },
    #[error("attention map: {0}")]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("temporary results: {0}")]
    Temp(#[source] std::io::Error),
}

fn rejection_note(rejection: Option<&str>) -> String {
    rejection.map_or_else(String::new, |r| format!(" (it was rejected: {r})"))
}

/// What to explain.
#[derive(Debug, Clone)]
pub enum Target {
    /// Classify this FITS cutout now (source id = file stem, position = image centre).
    Fits(PathBuf),
    /// Take the result of `source_id` from a results file; cut its pixels from `fits` when
    /// given, else from the file its provenance names.
    Result {
        results: PathBuf,
        source_id: String,
        fits: Option<PathBuf>,
    },
}

/// How the picture looks.
#[derive(Debug, Clone, Copy)]
pub struct FigureOptions {
    /// Side of the main panel in pixels (the picture is as wide).
    pub size: u32,
    /// Add a row with one panel per attention gate (when the result has gate maps).
    pub gates: bool,
}

impl Default for FigureOptions {
    fn default() -> Self {
        FigureOptions {
            size: 600,
            gates: false,
        }
    }
}

/// What [`explain`] wrote.
#[derive(Debug, Clone)]
pub struct Explained {
    pub source_id: String,
    pub label: proto::Label,
    pub confidence: f32,
    pub width: u32,
    pub height: u32,
}

/// Makes the picture of `target` and writes it to `out` as PNG. `config` gives the model,
/// the mosaics and the summary settings (as `radiogate classify` would use them).
pub fn explain(
    target: &Target,
    config: &Config,
    options: FigureOptions,
    out: &Path,
) -> Result<Explained, ExplainError> {
    let (classification, fits) = match target {
        Target::Fits(path) => (classify_one(path, config)?, Some(path.as_path())),
        Target::Result {
            results,
            source_id,
            fits,
        } => (find_result(results, source_id)?, fits.as_deref()),
    };
    let window = cut_again(&classification, fits, config)?;
    let figure = figure(&classification, &window, options)?;
    let bytes = render::png(&figure)?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| ExplainError::Write {
            path: out.to_path_buf(),
            source,
        })?;
    }
    std::fs::write(out, bytes).map_err(|source| ExplainError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    Ok(Explained {
        source_id: classification.source_id.clone(),
        label: classification.label(),
        confidence: classification.confidence,
        width: figure.width(),
        height: figure.height(),
    })
}

/// Classifies one FITS file with the offline pipeline (per-gate maps on) and returns its
/// result; a rejection is an error with its reason.
pub fn classify_one(path: &Path, config: &Config) -> Result<proto::Classification, ExplainError> {
    let dir = tempfile::tempdir().map_err(ExplainError::Temp)?;
    let results = dir.path().join("explain.jsonl");
    let mut config = config.clone();
    config.source = SourceConfig::Files {
        inputs: vec![path.to_path_buf()],
        survey: match &config.source {
            SourceConfig::Files { survey, .. } | SourceConfig::Catalog { survey, .. } => {
                survey.clone()
            }
            _ => crate::config::DEFAULT_SURVEY.into(),
        },
    };
    config.sink = SinkConfig::File {
        path: Some(results.clone()),
        format: OutputFormat::Jsonl,
        resume: false,
    };
    config.summary.per_gate_maps = true;
    let classify_error = |source: PipelineError| ExplainError::Classify {
        path: path.to_path_buf(),
        source: Box::new(source),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| classify_error(PipelineError::Thread(e.to_string())))?;
    runtime
        .block_on(pipeline::run(
            config,
            RunOptions::default(),
            std::future::pending(),
        ))
        .map_err(classify_error)?;
    let records = sink::read_jsonl(&results).map_err(|source| ExplainError::Results {
        path: results.clone(),
        source: Box::new(source),
    })?;
    match records.into_iter().next() {
        Some(Record::Classification(c)) => {
            proto::Classification::try_from(c).map_err(|source| ExplainError::Record {
                path: results,
                source,
            })
        }
        Some(Record::Rejection(r)) => Err(ExplainError::Rejected {
            path: path.to_path_buf(),
            reason: r.reason,
            detail: r.detail,
        }),
        None => Err(ExplainError::Rejected {
            path: path.to_path_buf(),
            reason: "no result".into(),
            detail: "the pipeline wrote nothing for it".into(),
        }),
    }
}

/// The classification of `source_id` in a results file of `radiogate classify`: JSON
/// Lines, or length-delimited protobuf `Classification`s (told apart by the first byte:
/// a JSON line starts with `{`, a protobuf result with a length of more than 127 bytes;
/// an ECSV table, which starts with `#`, is refused).
pub fn find_result(results: &Path, source_id: &str) -> Result<proto::Classification, ExplainError> {
    let results_error = |source| ExplainError::Results {
        path: results.to_path_buf(),
        source: Box::new(source),
    };
    let first = first_byte(results).map_err(|source| {
        results_error(SinkError::Read {
            path: results.to_path_buf(),
            source,
        })
    })?;
    let not_found = |rejection| ExplainError::NotFound {
        path: results.to_path_buf(),
        source_id: source_id.to_string(),
        rejection,
    };
    if first == Some(b'#') {
        return Err(ExplainError::Table(results.to_path_buf()));
    }
    if first == Some(b'{') {
        let mut rejection = None;
        for record in sink::read_jsonl(results).map_err(results_error)? {
            match record {
                Record::Classification(c) if c.source_id == source_id => {
                    return proto::Classification::try_from(c).map_err(|source| {
                        ExplainError::Record {
                            path: results.to_path_buf(),
                            source,
                        }
                    });
                }
                Record::Rejection(r) if r.source_id.as_deref() == Some(source_id) => {
                    rejection = Some(format!("{}: {}", r.reason, r.detail));
                }
                _ => {}
            }
        }
        Err(not_found(rejection))
    } else {
        sink::read_length_delimited::<proto::Classification>(results)
            .map_err(results_error)?
            .into_iter()
            .find(|c| c.source_id == source_id)
            .ok_or_else(|| not_found(None))
    }
}

fn first_byte(path: &Path) -> std::io::Result<Option<u8>> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut byte = [0u8; 1];
    Ok((file.read(&mut byte)? == 1).then_some(byte[0]))
}

/// The cutout window of a result, cut again by the cutout stage from `fits` (when given)
/// or the file of its provenance, at the result's position, and checked to be the same
/// window the result was computed on.
pub fn cut_again(
    c: &proto::Classification,
    fits: Option<&Path>,
    config: &Config,
) -> Result<Array2<f32>, ExplainError> {
    let provenance = c
        .cutout
        .as_ref()
        .ok_or_else(|| ExplainError::Incomplete(c.source_id.clone(), "cutout provenance"))?;
    let file = match fits {
        Some(path) => path.to_string_lossy().into_owned(),
        None if provenance.file == "inline" || provenance.file.is_empty() => {
            return Err(ExplainError::Inline(c.source_id.clone()));
        }
        None => provenance.file.clone(),
    };
    let detection = proto::SourceDetection {
        source_id: c.source_id.clone(),
        survey: c.survey.clone(),
        ra_deg: c.ra_deg,
        dec_deg: c.dec_deg,
        pixels: Some(Pixels::FitsPath(file.clone())),
        ..Default::default()
    };
    // A cutter with no mosaics: the detection names its file; it resamples as the run did.
    let mut cutout_config = config.cutout.clone();
    cutout_config.mosaics.clear();
    cutout_config.resample |= provenance.resampled;
    let cutter = Cutter::new(&cutout_config).map_err(|e| ExplainError::Cut {
        file: file.clone(),
        source: ItemError::new(proto::RejectReason::InternalError, e.to_string()),
    })?;
    let cutout = cutter.cut(&detection).map_err(|source| ExplainError::Cut {
        file: file.clone(),
        source,
    })?;
    let (got_x, got_y) = (cutout.provenance.x0, cutout.provenance.y0);
    // A FITS file given by hand may be a cutout of the mosaic the result was cut from:
    // then its own window is what counts, and only a result's own file must match.
    if fits.is_none() && (got_x, got_y) != (provenance.x0, provenance.y0) {
        return Err(ExplainError::Window {
            file,
            got_x,
            got_y,
            want_x: provenance.x0,
            want_y: provenance.y0,
        });
    }
    Ok(cutout.pixels)
}

/// The full picture: a text band (label, confidence, source id), the main panel, a text
/// band (entropy, attention on emission, contour levels) and, when asked and present, a
/// row of per-gate panels.
pub fn figure(
    c: &proto::Classification,
    window: &Array2<f32>,
    options: FigureOptions,
) -> Result<RgbImage, ExplainError> {
    let attention = c
        .attention
        .as_ref()
        .ok_or_else(|| ExplainError::Incomplete(c.source_id.clone(), "attention summary"))?;
    let provenance = c
        .cutout
        .as_ref()
        .ok_or_else(|| ExplainError::Incomplete(c.source_id.clone(), "cutout provenance"))?;
    let crop: Vec<f32> = preprocess::model_crop(window)
        .ok_or_else(|| ExplainError::Incomplete(c.source_id.clone(), "150x150 model window"))?
        .iter()
        .copied()
        .collect();
    let combined = summary::decode_map(attention)?;
    let grid = attention.grid as usize;
    // Softened at the clipping threshold: noise stays dark, faint emission shows.
    let stretch = Stretch::for_values(&crop, provenance.clip_threshold);
    let levels = render::doubling_levels(provenance.clip_threshold, stretch.max);
    let scene = |map| overlay(&crop, stretch, &levels, map);

    let size = options.size.max(150);
    let writer = Writer::new()?;
    let big = (size as f32 / 20.0).max(14.0);
    let small = (size as f32 / 34.0).max(11.0);
    let pad = (size / 60).max(4);
    let header = (big + small) as u32 + 3 * pad;
    let footer = 2 * small as u32 + 3 * pad;
    let gate_maps: Vec<(u32, usize, Vec<f32>)> = if options.gates {
        attention
            .gates
            .iter()
            .map(|g| Ok((g.gate, g.width as usize, summary::decode_gate_map(g)?)))
            .collect::<Result<_, DecodeError>>()?
    } else {
        Vec::new()
    };
    let gate_side = if gate_maps.is_empty() {
        0
    } else {
        size / gate_maps.len() as u32
    };
    let gate_row = if gate_maps.is_empty() {
        0
    } else {
        gate_side + small as u32 + 2 * pad
    };
    let height = header + size + footer + gate_row;
    let mut img = RgbImage::new(size, height);
    render::fill(&mut img, 0, 0, size, height, render::BACKGROUND);

    let label = label_name(c.label());
    writer.text(
        &mut img,
        &format!("{label}   confidence {:.3}", c.confidence),
        pad as i32,
        pad as i32,
        big,
        render::TEXT_COLOUR,
    );
    writer.text(
        &mut img,
        &format!("{}   model {}", c.source_id, model_name(c)),
        pad as i32,
        (2 * pad) as i32 + big as i32,
        small,
        render::TEXT_COLOUR,
    );

    let main = render::panel(
        &scene(Map {
            values: &combined,
            side: grid,
        }),
        size,
    )?;
    render::paste(&mut img, &main, 0, header);

    let y = header + size + pad;
    writer.text(
        &mut img,
        &format!(
            "entropy {:.3} bits   attention on emission {:.0}%{}",
            c.entropy_bits,
            100.0 * attention.on_emission_fraction,
            c.emission.map_or(String::new(), |e| format!(
                "   LAS {}{:.0} arcsec",
                if e.truncated { "≥ " } else { "" },
                e.largest_angular_size_arcsec
            )),
        ),
        pad as i32,
        y as i32,
        small,
        render::TEXT_COLOUR,
    );
    let multiples = levels
        .iter()
        .map(|l| format!("{:.0}", l / provenance.clip_threshold))
        .collect::<Vec<_>>()
        .join(", ");
    writer.text(
        &mut img,
        &format!(
            "heat: attention ({grid}x{grid});  contours: {multiples} x {:.2e} (3 rms)",
            provenance.clip_threshold
        ),
        pad as i32,
        (y + pad) as i32 + small as i32,
        small,
        render::CONTOUR_COLOUR,
    );

    let row_y = header + size + footer;
    for (k, (gate, side, values)) in gate_maps.iter().enumerate() {
        let x = k as u32 * gate_side;
        writer.text(
            &mut img,
            &format!("gate {gate} ({side}x{side})"),
            (x + pad) as i32,
            row_y as i32,
            small,
            render::TEXT_COLOUR,
        );
        let panel = render::panel(
            &scene(Map {
                values,
                side: *side,
            }),
            gate_side,
        )?;
        render::paste(&mut img, &panel, x, row_y + small as u32 + pad);
    }
    Ok(img)
}

/// The main or a gate panel's scene: the crop, its contours and one attention map.
fn overlay<'a>(crop: &'a [f32], stretch: Stretch, levels: &[f32], map: Map<'a>) -> Scene<'a> {
    Scene {
        image: crop,
        side: MODEL_SIZE,
        stretch,
        attention: Some(map),
        contours: Some((crop, levels.to_vec())),
    }
}

fn model_name(c: &proto::Classification) -> String {
    c.model
        .as_ref()
        .map_or_else(|| "?".into(), crate::domain::model_label)
}
