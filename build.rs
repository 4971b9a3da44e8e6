//! Generates the protobuf types of `proto/` with prost (needs `protoc`; `.ci/run` installs it),
//! and records the git commit of the build (`RADIOGATE_GIT_COMMIT`, for `radiogate_build_info`).

use std::path::Path;
use std::process::Command;

fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=proto");
    git_commit();
    prost_build::Config::new()
        .compile_well_known_types()
        .extern_path(".google.protobuf", "::prost_types")
        // Inline cutouts as `bytes::Bytes`: a detection cloned (or a cutout shared) does not
        // copy its FITS file.
        .bytes([".radiogate.v1.SourceDetection.fits_cutout"])
        .compile_protos(&["proto/radiogate/v1/radiogate.proto"], &["proto"])
}

/// The commit checked out (12 hex digits), or "unknown"
/// outside a git checkout; rebuilt when HEAD moves.
fn git_commit() {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .map(|s| s.trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    // HEAD names the branch; the branch's ref file (or packed-refs) moves on each commit.
    for path in ["HEAD", "packed-refs"]
        .into_iter()
        .filter_map(|p| git(&["rev-parse", "--git-path", p]))
        .chain(
            git(&["symbolic-ref", "-q", "HEAD"])
                .and_then(|branch| git(&["rev-parse", "--git-path", &branch])),
        )
    {
        if Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rustc-env=RADIOGATE_GIT_COMMIT={commit}");
}
