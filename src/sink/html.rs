//! The HTML report of a run (`radiogate classify --report report.html`): one
//! self-contained file (thumbnails as base64 PNG data URIs, CSS and JS inline, no external
//! URL) with a card per classified source (attention overlay, label, confidence, entropy,
//! attention on emission, largest angular size), sortable and filterable by label,
//! confidence and size, and a table of the rejections with their reasons.
//!
//! It is a sink beside the results, written by the same run as results arrive: each card is
//! written out at once and rejections go to an anonymous temporary file until the end, so
//! memory stays bounded whatever the run's size (a thumbnail is 150x150, a few KB). Every
//! string from the input is escaped before it goes into the HTML.
//!
//! It owns the page and its thumbnails; the drawing is [`crate::render`]'s.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use html_escape::encode_quoted_attribute as esc;

use image::RgbImage;

use super::SinkError;
use crate::domain::{MODEL_SIZE, Prepared, label_name, model_label, reason_name};
use crate::proto;
use crate::render::{self, Map, RenderError, Scene, Stretch};
use crate::summary::{self, DecodeError};

/// Side of the thumbnails in pixels.
pub const THUMBNAIL: u32 = 150;

const CSS: &str = include_str!("report.css");
const JS: &str = include_str!("report.js");

/// What a report holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportCounts {
    pub cards: u64,
    pub rejections: u64,
    /// Cards whose overlay could not be drawn (the card says why).
    pub without_image: u64,
}

/// Writes the report as results arrive; [`HtmlReport::finish`] completes the page.
pub struct HtmlReport {
    out: BufWriter<File>,
    path: PathBuf,
    /// Rejection rows, kept out of memory until the gallery is complete.
    rejections: BufWriter<File>,
    counts: ReportCounts,
    model: Option<String>,
}

impl std::fmt::Debug for HtmlReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HtmlReport")
            .field("path", &self.path)
            .field("counts", &self.counts)
            .finish()
    }
}

impl HtmlReport {
    /// Creates the file (and its folder) and writes the head of the page.
    pub fn create(path: &Path) -> Result<HtmlReport, SinkError> {
        let create_error = |source| SinkError::Create {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(create_error)?;
        }
        let file = File::create(path).map_err(create_error)?;
        let rejections = tempfile::tempfile().map_err(create_error)?;
        let mut report = HtmlReport {
            out: BufWriter::new(file),
            path: path.to_path_buf(),
            rejections: BufWriter::new(rejections),
            counts: ReportCounts::default(),
            model: None,
        };
        let head = format!(
            r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>radiogate report</title>
<style>
{CSS}</style>
</head>
<body>
<header>
<h1>radiogate report</h1>
<p class="meta">Heat map: where the attention-gated CNN looked (combined attention, inferno); cyan: outline of the emission above the clipping threshold. <span id="shown"></span></p>
<div class="controls">
<label>label <select id="label"><option value="all">all</option><option value="FRI">FRI</option><option value="FRII">FRII</option></select></label>
<label>confidence &ge; <input id="min" type="range" min="0.5" max="1" step="0.01" value="0.5"> <span id="min-shown">0.50</span></label>
<label title="largest angular size of the emission; the model card gives the training images' range">LAS &ge; <input id="las" type="number" min="0" step="5" value="0"> arcsec</label>
<label title="hide sources whose emission reaches the edge of the model's image: the model saw only part of them"><input id="whole" type="checkbox"> whole sources only</label>
<label>sort by <select id="sort">
<option value="seq-asc">input order</option>
<option value="confidence-desc">confidence, highest first</option>
<option value="confidence-asc">confidence, lowest first</option>
<option value="entropy-desc">entropy, highest first</option>
<option value="emission-asc">attention on emission, lowest first</option>
<option value="las-asc">largest angular size, smallest first</option>
<option value="id-asc">source id</option>
</select></label>
</div>
</header>
<main id="gallery">
"#
        );
        report.write(head.as_bytes())?;
        Ok(report)
    }

    /// Adds the card of one classification; `prepared` is the image the model saw.
    pub fn add_classification(
        &mut self,
        c: &proto::Classification,
        prepared: &Prepared,
    ) -> Result<(), SinkError> {
        if self.model.is_none() {
            self.model = c.model.as_ref().map(model_label);
        }
        let picture = thumbnail(c, prepared, THUMBNAIL).and_then(|img| Ok(render::png(&img)?));
        let image = match picture {
            Ok(png) => format!(
                r#"<img alt="attention overlay of {id}" width="{THUMBNAIL}" height="{THUMBNAIL}" src="data:image/png;base64,{data}">"#,
                id = esc(&c.source_id),
                data = BASE64.encode(png),
            ),
            Err(e) => {
                tracing::warn!(source_id = %c.source_id, error = %e, "no report thumbnail");
                self.counts.without_image += 1;
                format!(
                    r#"<div class="noimage">no overlay: {}</div>"#,
                    esc(&e.to_string())
                )
            }
        };
        let attention = c.attention.as_ref();
        let emission = attention.map_or(f32::NAN, |a| a.on_emission_fraction);
        let label = label_name(c.label());
        let las = c
            .emission
            .map_or(f32::NAN, |e| e.largest_angular_size_arcsec);
        let extent = c.emission.map_or(String::new(), |e| {
            format!(
                "<dt>LAS</dt><dd>{}{:.0}&Prime; ({} island{}{})</dd>",
                if e.truncated { "&ge; " } else { "" },
                e.largest_angular_size_arcsec,
                e.islands,
                if e.islands == 1 { "" } else { "s" },
                if e.truncated {
                    ", cut off at the image's edge"
                } else {
                    ""
                }
            )
        });
        let card = format!(
            r#"<figure class="card" data-seq="{seq}" data-id="{id}" data-label="{label}" data-confidence="{conf:.6}" data-entropy="{entropy:.6}" data-emission="{emission:.6}" data-las="{las:.3}" data-truncated="{truncated}">
{image}
<figcaption><span class="label">{label}</span> <span class="confidence">{conf:.3}</span>
<div class="id">{id}</div>
<dl><dt>entropy</dt><dd>{entropy:.3} bits</dd><dt>on emission</dt><dd>{percent:.0}%</dd>{extent}</dl></figcaption>
</figure>
"#,
            seq = self.counts.cards,
            id = esc(&c.source_id),
            conf = c.confidence,
            entropy = c.entropy_bits,
            percent = 100.0 * emission,
            truncated = c.emission.is_some_and(|e| e.truncated),
        );
        self.write(card.as_bytes())?;
        self.counts.cards += 1;
        Ok(())
    }

    /// Adds a row to the rejections table.
    pub fn add_rejection(&mut self, r: &proto::Rejection) -> Result<(), SinkError> {
        let row = format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"detail\">{}</td></tr>\n",
            esc(&r.source_id),
            esc(reason_name(r.reason())),
            esc(&r.input),
            esc(&r.detail),
        );
        self.rejections
            .write_all(row.as_bytes())
            .map_err(|source| self.error(source))?;
        self.counts.rejections += 1;
        Ok(())
    }

    /// Completes the page (rejections, footer, script), flushes and fsyncs it.
    pub fn finish(self) -> Result<ReportCounts, SinkError> {
        let HtmlReport {
            mut out,
            path,
            rejections,
            counts,
            model,
        } = self;
        let error = |source: std::io::Error| SinkError::Write {
            target: path.display().to_string(),
            source,
        };
        write!(
            out,
            "</main>\n<section id=\"rejections\">\n<h2>Rejections ({})</h2>\n",
            counts.rejections
        )
        .map_err(error)?;
        if counts.rejections == 0 {
            out.write_all(b"<p class=\"meta\" style=\"margin: 0 20px\">None.</p>\n")
                .map_err(error)?;
        } else {
            out.write_all(
                b"<table>\n<thead><tr><th>source</th><th>reason</th><th>input</th><th>detail</th></tr></thead>\n<tbody>\n",
            )
            .map_err(error)?;
            let mut rows = rejections.into_inner().map_err(|e| error(e.into_error()))?;
            rows.seek(SeekFrom::Start(0)).map_err(error)?;
            std::io::copy(&mut rows, &mut out).map_err(error)?;
            out.write_all(b"</tbody>\n</table>\n").map_err(error)?;
        }
        write!(
            out,
            "</section>\n<footer>{} classified, {} rejected; model {}; written by radiogate {}.</footer>\n<script>\n{JS}</script>\n</body>\n</html>\n",
            counts.cards,
            counts.rejections,
            esc(model.as_deref().unwrap_or("-")),
            env!("CARGO_PKG_VERSION"),
        )
        .map_err(error)?;
        let file = out.into_inner().map_err(|e| error(e.into_error()))?;
        file.sync_all().map_err(error)?;
        Ok(counts)
    }

    pub fn counts(&self) -> ReportCounts {
        self.counts
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        self.out
            .write_all(bytes)
            .map_err(|source| self.error(source))
    }

    fn error(&self, source: std::io::Error) -> SinkError {
        SinkError::Write {
            target: self.path.display().to_string(),
            source,
        }
    }
}

/// Why a card has no overlay.
#[derive(Debug, thiserror::Error)]
enum ThumbnailError {
    #[error("the result of '{0}' has no attention summary")]
    NoAttention(String),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Render(#[from] RenderError),
}

/// The report's overlay of a result in flight: the model's 8-bit input (asinh stretch,
/// softened at the dimmest emission level), the combined attention map of the result, and
/// the outline of the emission (pixels above the clipping threshold). `size` x `size`.
fn thumbnail(
    c: &proto::Classification,
    prepared: &Prepared,
    size: u32,
) -> Result<RgbImage, ThumbnailError> {
    let attention = c
        .attention
        .as_ref()
        .ok_or_else(|| ThumbnailError::NoAttention(c.source_id.clone()))?;
    let combined = summary::decode_map(attention)?;
    let image: Vec<f32> = prepared.image_u8.iter().map(|&u| f32::from(u)).collect();
    let mask: Vec<f32> = prepared
        .emission
        .iter()
        .map(|&e| if e { 1.0 } else { 0.0 })
        .collect();
    let dimmest = prepared
        .image_u8
        .iter()
        .zip(&prepared.emission)
        .filter(|(_, e)| **e)
        .map(|(u, _)| f32::from(*u))
        .fold(f32::INFINITY, f32::min);
    let scene = Scene {
        image: &image,
        side: MODEL_SIZE,
        stretch: Stretch::for_values(&image, dimmest.max(1.0)),
        attention: Some(Map {
            values: &combined,
            side: attention.grid as usize,
        }),
        contours: Some((&mask, vec![0.5])),
    };
    Ok(render::panel(&scene, size)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{MODEL_PIXELS, MODEL_SIZE};

    fn prepared() -> Prepared {
        // A bright square in the middle of the model input.
        let inside = |i: usize| {
            let (x, y) = (i % MODEL_SIZE, i / MODEL_SIZE);
            (60..90).contains(&x) && (60..90).contains(&y)
        };
        Prepared {
            input: Vec::new(),
            image_u8: (0..MODEL_PIXELS)
                .map(|i| if inside(i) { 200 } else { 0 })
                .collect(),
            emission: (0..MODEL_PIXELS).map(inside).collect(),
            rms: 1.0,
            threshold: 3.0,
            shape: Default::default(),
        }
    }

    fn classification(source_id: &str, with_attention: bool) -> proto::Classification {
        let cells: Vec<u8> = (0..900).map(|i| (i % 30) as u8).collect();
        proto::Classification {
            source_id: source_id.into(),
            label: proto::Label::Frii as i32,
            confidence: 0.875,
            entropy_bits: 0.5436,
            attention: with_attention.then(|| proto::AttentionSummary {
                grid: 30,
                map_zstd: zstd::bulk::compress(&cells, 3).expect("zstd"),
                scale: 1.0 / 255.0,
                on_emission_fraction: 0.25,
                ..Default::default()
            }),
            model: Some(proto::ModelInfo {
                name: "m<1>".into(),
                ..Default::default()
            }),
            emission: with_attention.then_some(proto::Emission {
                islands: 2,
                pixels: 900,
                largest_angular_size_arcsec: 97.4,
                truncated: true,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_page_is_self_contained_escaped_and_holds_every_card_and_rejection() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sub/report.html");
        let mut report = HtmlReport::create(&path).expect("create");
        let hostile = r#"<script>alert("x")</script>&'"#;
        report
            .add_classification(&classification(hostile, true), &prepared())
            .expect("card");
        report
            .add_classification(&classification("J2", false), &prepared())
            .expect("card without attention");
        report
            .add_rejection(&proto::Rejection {
                reason: proto::RejectReason::BadFits as i32,
                detail: "</td><img src=x onerror=alert(1)>".into(),
                source_id: "bad".into(),
                input: "in/bad.fits".into(),
                ..Default::default()
            })
            .expect("rejection");
        let counts = report.finish().expect("finish");
        assert_eq!(
            counts,
            ReportCounts {
                cards: 2,
                rejections: 1,
                without_image: 1
            }
        );

        let html = std::fs::read_to_string(&path).expect("report");
        assert_eq!(html.matches("<figure class=\"card\"").count(), 2);
        assert_eq!(html.matches("data:image/png;base64,").count(), 1);
        assert!(html.contains("no overlay: the result of &#x27;J2&#x27; has no attention summary"));
        // Input strings are escaped wherever they go.
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(!html.contains("<img src=x"));
        assert!(html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#x27;"));
        assert!(html.contains("&lt;/td&gt;&lt;img src=x onerror=alert(1)&gt;"));
        assert!(html.contains("model m&lt;1&gt;"));
        // The emission's extent, on the card and as a sort key; absent, no extent.
        assert!(html.contains(
            "<dt>LAS</dt><dd>&ge; 97&Prime; (2 islands, cut off at the image's edge)</dd>"
        ));
        assert!(html.contains("data-las=\"97.400\"") && html.contains("data-las=\"NaN\""));
        // One rejection row with its reason, after the gallery; nothing loaded from outside.
        let rejections = html.find("<section id=\"rejections\">").expect("section");
        assert!(html.find("</main>").expect("gallery end") < rejections);
        assert_eq!(html[rejections..].matches("<tr><td>").count(), 1);
        assert!(html.contains("<td>bad_fits</td><td>in/bad.fits</td>"));
        for external in ["http:", "https:", "src=\"//", "@import", "<link"] {
            assert!(!html.contains(external), "{external}");
        }
        assert!(html.trim_end().ends_with("</html>"));

        // The thumbnail decodes to a 150x150 PNG of a few KB.
        let start = html.find("base64,").expect("data URI") + "base64,".len();
        let end = start + html[start..].find('"').expect("end of URI");
        let png = BASE64.decode(&html[start..end]).expect("base64");
        assert!(png.len() < 16_000, "{} bytes", png.len());
        let img = image::load_from_memory(&png).expect("PNG");
        assert_eq!((img.width(), img.height()), (THUMBNAIL, THUMBNAIL));
    }

    #[test]
    fn a_report_without_rejections_says_none() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("report.html");
        let report = HtmlReport::create(&path).expect("create");
        assert_eq!(report.finish().expect("finish"), ReportCounts::default());
        let html = std::fs::read_to_string(&path).expect("report");
        assert!(html.contains("<h2>Rejections (0)</h2>\n<p"));
        assert!(!html.contains("<table>"));
        assert!(HtmlReport::create(&dir.path().join("report.html/x")).is_err());
    }
}
