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

/// The longest message a client is sent: an id or value it sent is quoted
/// only this far.
pub const MAX_CLIENT_MESSAGE: usize = 300;

/// `message`, cut to [`MAX_CLIENT_MESSAGE`] bytes (with `…`) when longer.
pub fn clipped(mut message: String) -> String {
    if message.len() > MAX_CLIENT_MESSAGE {
        let mut end = MAX_CLIENT_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

impl QueryError {
    /// What a client is told. Its own mistakes (a wrong argument, a thing
    /// that does not exist) in full, up to [`MAX_CLIENT_MESSAGE`] bytes; of
    /// a failure on the server's side only that it happened: the detail,
    /// which can name hosts, tables and files, goes to the log.
    pub fn for_client(&self) -> String {
        match self {
            QueryError::InvalidArgument { .. } | QueryError::NotFound(_) => {
                clipped(self.to_string())
            }
            QueryError::Unavailable(detail) => {
                tracing::warn!(%detail, "a question could not be answered");
                "a store the answer needs is unavailable; try again shortly".into()
            }
            QueryError::Internal(detail) => {
                tracing::error!(%detail, "a question failed");
                "an internal error; the server's log has the detail".into()
            }
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_hear_their_own_mistakes_briefly_and_nothing_of_the_servers() {
        let long = QueryError::NotFound(format!("no device {:?}", "x".repeat(10_000)));
        let told = long.for_client();
        assert!(
            told.len() <= MAX_CLIENT_MESSAGE + '…'.len_utf8(),
            "{}",
            told.len()
        );
        assert!(told.starts_with("no device \"xxx"));
        let store = QueryError::Unavailable(
            "the metadata store: connection to db.internal:5432 refused".into(),
        );
        assert!(!store.for_client().contains("db.internal"));
        let lake = QueryError::Internal("reading the lake: /data/lake/x.parquet".into());
        assert!(!lake.for_client().contains("/data"));
        let bad = QueryError::invalid("to", "is not a time");
        assert_eq!(bad.for_client(), "to: is not a time");
    }
}
