//! JSON error answers.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// An error answer: a status and a message saying what was wrong.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<tillwatch_meta::MetaError> for ApiError {
    fn from(e: tillwatch_meta::MetaError) -> ApiError {
        ApiError::from(tillwatch_query::QueryError::from(e))
    }
}

impl From<tillwatch_query::QueryError> for ApiError {
    fn from(e: tillwatch_query::QueryError) -> ApiError {
        use tillwatch_query::QueryError as Q;
        let status = match &e {
            Q::InvalidArgument { .. } => StatusCode::BAD_REQUEST,
            Q::NotFound(_) => StatusCode::NOT_FOUND,
            Q::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Q::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.for_client())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> ApiError {
        bad(e.body_text())
    }
}

/// A JSON answer or an error.
pub type Answer = Result<Json<Value>, ApiError>;

/// 400: the request was wrong; say how.
pub fn bad(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

/// 404: no such thing.
pub fn not_found(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, message.into())
}
