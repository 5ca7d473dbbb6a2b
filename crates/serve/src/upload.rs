//! The image bytes of a search request: a multipart `image` field or the raw body, refused with
//! 413 past the size limit (before a byte is read when `Content-Length` says so) and 400 when
//! the form is malformed. Public so the fuzz target drives it as the server does.

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{StatusCode, header};

use crate::api_error::{ApiError, bad_request};

/// The uploaded image of `request`, at most `max_body_bytes` long.
pub async fn read_upload(request: Request, max_body_bytes: usize) -> Result<Bytes, ApiError> {
    let over_limit = || {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {max_body_bytes} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body_bytes as u64) {
        return Err(over_limit());
    }
    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let too_big = |e: String| {
        if e.contains("length limit") || e.contains("too large") {
            over_limit()
        } else {
            bad_request(e)
        }
    };
    if is_multipart {
        let mut form = Multipart::from_request(request, &())
            .await
            .map_err(|e| bad_request(e.body_text()))?;
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|e| too_big(e.body_text()))?
        {
            if field.name() == Some("image") {
                return field.bytes().await.map_err(|e| too_big(e.body_text()));
            }
        }
        return Err(bad_request("multipart body has no `image` field"));
    }
    Bytes::from_request(request, &())
        .await
        .map_err(|e| too_big(e.body_text()))
}
