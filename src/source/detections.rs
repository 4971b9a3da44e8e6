//! A file of `SourceDetection` messages, each preceded by its length as a protobuf varint
//! (what `prost::Message::encode_length_delimited` writes), as a source.
//!
//! A message that does not decode is rejected as undecodable with its bytes, and reading
//! goes on with the next frame; a broken frame (truncated length or body, or a length
//! beyond [`MAX_FRAME`]) ends the file with one last rejection, since nothing after it can
//! be trusted to start on a message boundary. Origins are `path:N`, N counting messages
//! from 1.

use std::fs::File;
use std::io::{BufReader, ErrorKind, Read};
use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use prost::Message;

use crate::domain::{Detection, Origin, Rejected};
use crate::proto::{self, RejectReason};

use super::{Detections, SourceError};

/// Largest message accepted (bytes). A `SourceDetection` with an inline 300x300 float32
/// cutout is about 360 KB; a length far beyond that means the framing is corrupt.
pub const MAX_FRAME: u64 = 64 << 20;

struct Frames {
    reader: BufReader<File>,
    /// The file as written, for origins.
    path: String,
    /// Messages started so far (the current one's number).
    index: u64,
    done: bool,
}

pub(super) fn open(path: &Path) -> Result<Detections, SourceError> {
    let file = File::open(path).map_err(|source| match source.kind() {
        ErrorKind::NotFound => SourceError::Missing {
            path: path.to_path_buf(),
        },
        _ => SourceError::Io {
            path: path.to_path_buf(),
            source,
        },
    })?;
    Ok(Box::new(Frames {
        reader: BufReader::new(file),
        path: path.display().to_string(),
        index: 0,
        done: false,
    }))
}

/// What reading one frame gave.
enum Frame {
    End,
    Message(Vec<u8>),
    /// Framing is lost; the bytes read of the broken frame.
    Broken {
        detail: String,
        bytes: Vec<u8>,
    },
}

impl Frames {
    /// Reads a varint length; None at a clean end of file.
    fn read_length(&mut self) -> Result<Option<u64>, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let mut byte = [0u8; 1];
            match self.reader.read_exact(&mut byte) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::UnexpectedEof && shift == 0 => return Ok(None),
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                    return Err("file ends inside a length prefix".into());
                }
                Err(e) => return Err(format!("read error: {e}")),
            }
            value |= u64::from(byte[0] & 0x7f) << shift;
            if byte[0] & 0x80 == 0 {
                return Ok(Some(value));
            }
        }
        Err("length prefix longer than 10 bytes".into())
    }

    fn read_frame(&mut self) -> Frame {
        let len = match self.read_length() {
            Ok(None) => return Frame::End,
            Ok(Some(len)) => len,
            Err(detail) => {
                return Frame::Broken {
                    detail,
                    bytes: Vec::new(),
                };
            }
        };
        if len > MAX_FRAME {
            return Frame::Broken {
                detail: format!("length prefix {len} exceeds the {MAX_FRAME}-byte limit"),
                bytes: Vec::new(),
            };
        }
        let mut bytes = Vec::new();
        // `take` bounds the read to the frame, so `len` (<= MAX_FRAME) bounds the buffer.
        match (&mut self.reader).take(len).read_to_end(&mut bytes) {
            Ok(n) if n as u64 == len => Frame::Message(bytes),
            Ok(n) => Frame::Broken {
                detail: format!("file ends inside a message: {n} of {len} bytes"),
                bytes,
            },
            Err(e) => Frame::Broken {
                detail: format!("read error: {e}"),
                bytes,
            },
        }
    }
}

impl Iterator for Frames {
    type Item = Result<Detection, Rejected>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let frame = self.read_frame();
        self.index += 1;
        let origin = Origin::Input(format!("{}:{}", self.path, self.index));
        let undecodable = |detail: String, bytes: Vec<u8>, source_id: Option<String>| Rejected {
            reason: RejectReason::Undecodable,
            detail,
            source_id,
            original: Some(Bytes::from(bytes)),
            origin: origin.clone(),
        };
        let bytes = match frame {
            Frame::End => {
                self.done = true;
                return None;
            }
            Frame::Broken { detail, bytes } => {
                self.done = true;
                return Some(Err(undecodable(
                    format!("broken framing: {detail}"),
                    bytes,
                    None,
                )));
            }
            Frame::Message(bytes) => bytes,
        };
        let message = match proto::SourceDetection::decode(bytes.as_slice()) {
            Ok(message) => message,
            Err(e) => {
                return Some(Err(undecodable(
                    format!("not a SourceDetection: {e}"),
                    bytes,
                    None,
                )));
            }
        };
        if let Err(e) = super::validate(&message) {
            return Some(Err(Rejected {
                reason: e.reason,
                detail: e.detail,
                source_id: Some(message.source_id).filter(|s| !s.is_empty()),
                original: Some(Bytes::from(bytes)),
                origin,
            }));
        }
        Some(Ok(Detection {
            message,
            origin,
            received: Instant::now(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SourceConfig;

    fn detection(id: &str, ra: f64) -> proto::SourceDetection {
        proto::SourceDetection {
            source_id: id.into(),
            survey: "FIRST".into(),
            ra_deg: ra,
            dec_deg: 29.5,
            peak_flux_jy: Some(0.01),
            ..Default::default()
        }
    }

    fn framed(message: &impl Message) -> Vec<u8> {
        message.encode_length_delimited_to_vec()
    }

    fn read(bytes: &[u8]) -> (tempfile::TempDir, String, Vec<Result<Detection, Rejected>>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("detections.pb");
        std::fs::write(&path, bytes).unwrap();
        let config = SourceConfig::DetectionsFile { path: path.clone() };
        let items = super::super::open(&config).unwrap().collect();
        (dir, path.display().to_string(), items)
    }

    #[test]
    fn messages_round_trip_in_order() {
        let sent = [
            detection("a", 1.0),
            detection("b", 2.0),
            detection("c", 3.0),
        ];
        let bytes: Vec<u8> = sent.iter().flat_map(framed).collect();
        let (_dir, path, got) = read(&bytes);
        assert_eq!(got.len(), 3);
        for (i, (item, want)) in got.iter().zip(&sent).enumerate() {
            let det = item.as_ref().unwrap();
            assert_eq!(&det.message, want);
            assert_eq!(det.origin, Origin::Input(format!("{path}:{}", i + 1)));
        }
        let (_dir, _, got) = read(&[]);
        assert!(got.is_empty());
    }

    #[test]
    fn an_undecodable_message_is_rejected_with_its_bytes_and_reading_goes_on() {
        // A well-framed body that is not a SourceDetection: field 1 claims 200 bytes.
        let garbage = vec![0x0a, 0xc8, 0x01, 0x41];
        let mut bytes = framed(&detection("a", 1.0));
        bytes.push(garbage.len() as u8);
        bytes.extend_from_slice(&garbage);
        bytes.extend(framed(&detection("c", 3.0)));
        let (_dir, path, got) = read(&bytes);
        assert_eq!(got.len(), 3);
        let r = got[1].as_ref().unwrap_err();
        assert_eq!(r.reason, RejectReason::Undecodable);
        assert_eq!(r.original.as_deref(), Some(garbage.as_slice()));
        assert_eq!(r.origin, Origin::Input(format!("{path}:2")));
        assert_eq!(got[2].as_ref().unwrap().message.source_id, "c");
    }

    #[test]
    fn an_invalid_detection_is_rejected_with_its_identity() {
        let bad = detection("nan", f64::NAN);
        let bytes: Vec<u8> = [framed(&bad), framed(&detection("ok", 5.0))].concat();
        let (_dir, _, got) = read(&bytes);
        let r = got[0].as_ref().unwrap_err();
        assert_eq!(r.reason, RejectReason::InvalidDetection);
        assert_eq!(r.source_id.as_deref(), Some("nan"));
        assert!(r.detail.contains("ra is not finite"), "{}", r.detail);
        assert!(got[1].is_ok());
    }

    #[test]
    fn a_truncated_file_ends_with_one_rejection() {
        let mut bytes = framed(&detection("a", 1.0));
        let second = framed(&detection("b", 2.0));
        bytes.extend_from_slice(&second[..second.len() - 3]);
        let (_dir, _, got) = read(&bytes);
        assert_eq!(got.len(), 2);
        let r = got[1].as_ref().unwrap_err();
        assert_eq!(r.reason, RejectReason::Undecodable);
        assert!(
            r.detail.contains("file ends inside a message"),
            "{}",
            r.detail
        );
        assert_eq!(r.original.as_ref().map(Bytes::len), Some(second.len() - 4));

        let (_dir, _, got) = read(&[0x80]);
        assert_eq!(got.len(), 1);
        assert!(
            got[0]
                .as_ref()
                .unwrap_err()
                .detail
                .contains("inside a length prefix")
        );
    }

    #[test]
    fn an_absurd_length_ends_the_file_without_allocating_it() {
        let mut bytes = Vec::new();
        prost::encoding::encode_varint(MAX_FRAME + 1, &mut bytes);
        bytes.extend_from_slice(&[0; 16]);
        let (_dir, _, got) = read(&bytes);
        assert_eq!(got.len(), 1);
        assert!(got[0].as_ref().unwrap_err().detail.contains("exceeds"));
    }
}
