//! The query-string extractor of every endpoint: axum's `Query`, but a string it cannot read
//! — an unknown parameter (`?top_k=5`, `?K=5`) or a value of the wrong type (`?k=ten`) — is a
//! 400 in the service's JSON error shape naming the parameter, not axum's plain-text
//! rejection. Each parameter struct denies unknown fields, so a misspelt parameter is refused
//! instead of silently falling back to its default.

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::api_error::{ApiError, bad_request};

/// The parsed query string of a request.
pub struct QueryParams<T>(pub T);

impl<T, S> FromRequestParts<S> for QueryParams<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(params)) => Ok(Self(params)),
            Err(rejection) => Err(bad_request(format!(
                "query string: {}",
                rejection
                    .body_text()
                    .trim_start_matches("Failed to deserialize query string: ")
            ))),
        }
    }
}
