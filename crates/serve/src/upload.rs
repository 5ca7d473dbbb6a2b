//! The image bytes of a search request: the multipart `image` fields (several photos of one
//! product are searched together, at most [`MAX_IMAGES`]) or the raw body, refused with 413 past
//! the size limit (before a byte is read when `Content-Length` says so) and 400 when the form is
//! malformed. Public so the fuzz target drives it as the server does.

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{StatusCode, header};

use crate::api_error::{ApiError, bad_request};

/// Most photos in one request.
pub const MAX_IMAGES: usize = 16;

/// The uploaded images of `request` (one or more, in order), at most `max_body_bytes` long in
/// all.
pub async fn read_upload(request: Request, max_body_bytes: usize) -> Result<Vec<Bytes>, ApiError> {
    check_declared_length(&request, max_body_bytes)?;
    let is_multipart = is_multipart(&request);
    let too_big = |e: String| body_error(e, max_body_bytes);
    if is_multipart {
        let mut form = Multipart::from_request(request, &())
            .await
            .map_err(|e| bad_request(e.body_text()))?;
        let mut images = Vec::new();
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|e| too_big(e.body_text()))?
        {
            if field.name() == Some("image") {
                if images.len() == MAX_IMAGES {
                    return Err(bad_request(format!(
                        "more than {MAX_IMAGES} `image` fields in one request"
                    )));
                }
                images.push(field.bytes().await.map_err(|e| too_big(e.body_text()))?);
            }
        }
        if images.is_empty() {
            return Err(bad_request("multipart body has no `image` field"));
        }
        return Ok(images);
    }
    Ok(vec![
        Bytes::from_request(request, &())
            .await
            .map_err(|e| too_big(e.body_text()))?,
    ])
}

fn over_limit(max_body_bytes: usize) -> ApiError {
    ApiError(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body over {max_body_bytes} bytes"),
    )
}

/// 413 before a byte is read when `Content-Length` is over the limit.
pub(crate) fn check_declared_length(
    request: &Request,
    max_body_bytes: usize,
) -> Result<(), ApiError> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > max_body_bytes as u64 => Err(over_limit(max_body_bytes)),
        _ => Ok(()),
    }
}

/// Whether the request is a `multipart/form-data` form.
pub(crate) fn is_multipart(request: &Request) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"))
}

/// A body read failure: 413 past the limit, 400 otherwise.
pub(crate) fn body_error(e: String, max_body_bytes: usize) -> ApiError {
    if e.contains("length limit") || e.contains("too large") {
        over_limit(max_body_bytes)
    } else {
        bad_request(e)
    }
}
