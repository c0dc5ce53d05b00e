//! The committed generated code matches the .proto files.

use std::path::{Path, PathBuf};

use prost::Message;

fn proto_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn proto_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read proto dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "proto") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Compares (or, with `TILLWATCH_REGENERATE`, replaces) each generated
/// file with the committed one; returns the stale ones.
fn compare(generated: &Path, committed_dir: &Path, regenerate: bool) -> Vec<String> {
    let mut stale = Vec::new();
    for entry in std::fs::read_dir(generated).expect("read generated") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("file name").to_owned();
        let fresh = std::fs::read(&path).expect("read fresh");
        let committed_path = committed_dir.join(&name);
        let committed = std::fs::read(&committed_path).unwrap_or_default();
        if fresh != committed {
            if regenerate {
                std::fs::write(&committed_path, fresh).expect("write generated code");
            } else {
                stale.push(name.to_string_lossy().into_owned());
            }
        }
    }
    stale
}

#[test]
fn generated_code_is_up_to_date() {
    let root = proto_root();
    let regenerate = std::env::var_os("TILLWATCH_REGENERATE").is_some();
    let committed_dir = root.join("src/gen");

    // The telemetry terminals publish: messages only.
    let files = proto_files(&root.join("tillwatch/telemetry"));
    let descriptors = protox::compile(&files, [&root]).expect("the .proto files compile");
    let out = tempfile::tempdir().expect("tempdir");
    prost_build::Config::new()
        .out_dir(out.path())
        .compile_fds(descriptors)
        .expect("prost generates code");
    let mut stale = compare(out.path(), &committed_dir, regenerate);

    // The gRPC API: messages, client and server, and the descriptors for
    // reflection (not tied to tonic's transport).
    let files = proto_files(&root.join("tillwatch/api"));
    let descriptors = protox::compile(&files, [&root]).expect("the API's .proto files compile");
    let out = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        out.path().join("tillwatch.api.v1.bin"),
        descriptors.encode_to_vec(),
    )
    .expect("write descriptors");
    tonic_prost_build::configure()
        .build_transport(false)
        .out_dir(out.path())
        .compile_fds(descriptors)
        .expect("tonic generates code");
    stale.extend(compare(out.path(), &committed_dir, regenerate));

    assert!(
        stale.is_empty(),
        "generated code in proto/src/gen is stale for {stale:?}; \
         run `TILLWATCH_REGENERATE=1 cargo test -p tillwatch-proto --test codegen` and commit the result"
    );
}
