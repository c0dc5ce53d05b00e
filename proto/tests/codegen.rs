//! The committed generated code matches the .proto files.

use std::path::{Path, PathBuf};
fn proto_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn proto_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.join("tillwatch")];
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

#[test]
fn generated_code_is_up_to_date() {
    let root = proto_root();
    let files = proto_files(&root);
    let descriptors = protox::compile(&files, [&root]).expect("the .proto files compile");
    let out = tempfile::tempdir().expect("tempdir");
    prost_build::Config::new()
        .out_dir(out.path())
        .compile_fds(descriptors)
        .expect("prost generates code");

    let committed_dir = root.join("src/gen");
    let regenerate = std::env::var_os("TILLWATCH_REGENERATE").is_some();
    let mut stale = Vec::new();
    for entry in std::fs::read_dir(out.path()).expect("read generated") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("file name").to_owned();
        let fresh = std::fs::read_to_string(&path).expect("read fresh");
        let committed_path = committed_dir.join(&name);
        let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
        if fresh != committed {
            if regenerate {
                std::fs::write(&committed_path, fresh).expect("write generated code");
            } else {
                stale.push(name.to_string_lossy().into_owned());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "generated code in proto/src/gen is stale for {stale:?}; \
         run `TILLWATCH_REGENERATE=1 cargo test -p tillwatch-proto` and commit the result"
    );
}
