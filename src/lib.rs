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
mod divide;
pub mod domain;
pub mod explain;
pub mod infer;
pub mod pipeline;
pub mod preprocess;
pub mod proto;
pub mod publish;
pub mod render;
pub mod report;
pub mod scheduling;
pub mod sink;
pub mod source;
pub mod summary;
pub mod telemetry;

/// An error and its causes, one line. A cause whose text the line already ends with (an
/// error that shows its source in its own message) is not repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    enum Inner {
        #[error("inner")]
        Io(#[source] std::io::Error),
    }

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("outer: {0}")]
        Shows(#[from] Inner),
    }

    #[test]
    fn error_chain_gives_every_cause_once() {
        let e = Outer::from(Inner::Io(std::io::Error::other("disk on fire")));
        assert_eq!(super::error_chain(&e), "outer: inner: disk on fire");
    }
}
