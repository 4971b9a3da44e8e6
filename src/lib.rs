//! radiogate: a stream classifier for radio surveys. Source detections in, FITS cutouts
//! around them, an attention-gated CNN (ONNX Runtime) over batches of them, and
//! classifications with a summary of where the model looked out.
//!
//! `pipeline` is the only module that knows every stage; the stages share `domain` types.

pub mod ack;
pub mod batch;
pub mod cli;
pub mod config;
pub mod cutout;
pub mod domain;
pub mod explain;
pub mod infer;
pub mod pipeline;
pub mod preprocess;
pub mod proto;
pub mod publish;
pub mod render;
pub mod report;
pub mod sink;
pub mod source;
pub mod summary;
pub mod telemetry;
