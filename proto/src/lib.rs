//! The wire contract between payment terminals and Tillwatch.
//!
//! The protobuf messages are generated from `proto/tillwatch/**/*.proto` and
//! committed under `src/gen/`, so building needs no `protoc`: the
//! telemetry terminals publish ([`telemetry`]) and, with the `api`
//! feature, the gRPC API's messages and services ([`api`]) with its
//! encoded descriptors for server reflection. The test
//! `generated_code_is_up_to_date` regenerates them with a pure-Rust compiler
//! and fails when the committed code is stale; run
//! `TILLWATCH_REGENERATE=1 cargo test -p tillwatch-proto` to refresh it.

pub mod telemetry {
    pub mod v1 {
        #![allow(clippy::all)]
        include!("gen/tillwatch.telemetry.v1.rs");
    }
}

#[cfg(feature = "api")]
pub mod api {
    pub mod v1 {
        #![allow(clippy::all)]
        include!("gen/tillwatch.api.v1.rs");

        /// The API's encoded `FileDescriptorSet`, for server reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("gen/tillwatch.api.v1.bin");
    }
}

pub mod topic;

#[cfg(feature = "tls")]
pub mod tls;
