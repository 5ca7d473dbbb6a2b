//! The service's one error shape: a status and a message, sent as `{"error": …}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// A JSON error response.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

/// 500 with `e`'s message: a failure of the server's own (a blocking task that panicked, a
/// store that could not be read), not of the request.
pub fn internal(e: impl ToString) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

pub fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}
