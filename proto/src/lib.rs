//! The wire contract between payment terminals and Tillwatch.
//!
//! The protobuf messages are generated from `proto/tillwatch/**/*.proto` and
//! committed under `src/gen/`, so building needs no `protoc`. The test
//! `generated_code_is_up_to_date` regenerates them with a pure-Rust compiler
//! and fails when the committed code is stale; run
//! `TILLWATCH_REGENERATE=1 cargo test -p tillwatch-proto` to refresh it.

pub mod telemetry {
    pub mod v1 {
        #![allow(clippy::all)]
        include!("gen/tillwatch.telemetry.v1.rs");
    }
}

pub mod topic;
