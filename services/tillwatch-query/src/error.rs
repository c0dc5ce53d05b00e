//! The read side's one error type. Its kinds, not protocol codes: each API
//! maps them to its own (HTTP 400/404/503/500, gRPC INVALID_ARGUMENT,
//! NOT_FOUND, UNAVAILABLE, INTERNAL).

/// Why a question got no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The question was wrong: `param` names the argument (by its HTTP
    /// query-parameter name; the gRPC API names the matching field), and
    /// `message` says what was wrong with it.
    #[error("{param}: {message}")]
    InvalidArgument {
        param: &'static str,
        message: String,
    },
    /// What was asked about does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A store the answer needs cannot be reached now; asking again later
    /// may work.
    #[error("{0}")]
    Unavailable(String),
    /// Something that should not fail did (a file in the lake that cannot
    /// be read).
    #[error("{0}")]
    Internal(String),
}

impl QueryError {
    /// A wrong argument `param`.
    pub fn invalid(param: &'static str, message: impl Into<String>) -> QueryError {
        QueryError::InvalidArgument {
            param,
            message: message.into(),
        }
    }
}

impl From<tillwatch_meta::MetaError> for QueryError {
    fn from(e: tillwatch_meta::MetaError) -> QueryError {
        QueryError::Unavailable(format!("the metadata store: {e}"))
    }
}

impl From<tillwatch_storage::LakeError> for QueryError {
    fn from(e: tillwatch_storage::LakeError) -> QueryError {
        QueryError::Internal(format!("reading the lake: {e}"))
    }
}

/// A blocking read of the lake, off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, QueryError> + Send + 'static,
) -> Result<T, QueryError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| QueryError::Internal(format!("reading the lake: {e}")))?
}
