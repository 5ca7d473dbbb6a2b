//! A deadline on receiving a request's body. hyper's header timeout bounds how long a client
//! may take to send a request head, but nothing bounded the body: a client that sends its
//! head and then a byte of body every few seconds held its connection forever, and as many
//! such clients as `--max-connections` (a few hundred sockets) shut everyone else out — a
//! "slow POST" attack, measured against this server before this layer. Each request body now
//! has to arrive within `ServeConfig::body_timeout` of the request's start; a late one is
//! answered 408 and its connection closed (hyper does not reuse a connection whose body was
//! not read to the end), so a slow client holds a connection for that long at most. A whole
//! deadline rather than one per read: a deadline reset by every byte is what a trickling
//! client defeats.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::api_error::ApiError;
use crate::body_guard::{FrameGuard, FramePoll, GuardedBody};

/// The error a late body ends with (what the handler's extractor sees).
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
struct BodyTimedOut(Duration);

/// Fails a body's wait once its deadline has passed, and says so in `expired`.
struct Deadline {
    deadline: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
    expired: Arc<AtomicBool>,
}

impl FrameGuard for Deadline {
    fn check(&mut self, cx: &mut Context<'_>, poll: FramePoll) -> FramePoll {
        // What has arrived is taken first; the deadline only ends a wait.
        if poll.is_ready() {
            return poll;
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.expired.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut(self.limit)))));
        }
        Poll::Pending
    }
}

/// Middleware: gives the request's body its deadline and answers 408 (connection closed)
/// when the handler failed because the body came too late.
pub async fn body_deadline(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let limit = state.config.body_timeout;
    let expired = Arc::new(AtomicBool::new(false));
    let request = request.map(|inner| {
        let deadline = Deadline {
            deadline: Box::pin(tokio::time::sleep(limit)),
            limit,
            expired: expired.clone(),
        };
        GuardedBody::wrap(inner, deadline)
    });
    let response = next.run(request).await;
    if !expired.load(Ordering::Relaxed) {
        return response;
    }
    state.metrics.request("body_timeout", 408);
    let mut response = ApiError(
        StatusCode::REQUEST_TIMEOUT,
        format!(
            "the request body did not arrive within {} s",
            limit.as_secs_f64()
        ),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
