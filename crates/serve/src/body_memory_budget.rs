//! A bound on the memory that request bodies hold in all. `--max-body-mb` bounds one body and
//! `--max-connections` the number of connections, but their product is what a server must be
//! able to hold: 256 × 20 MB is 5 GB, and a client needs nothing but uploads to get there
//! (probed: 60 connections each holding an unfinished 20 MB upload took the server to 1.3 GB,
//! so the defaults reach ~5 GB and a smaller machine's out-of-memory killer ends the service).
//! Every body's bytes are counted against one budget (`ServeConfig::max_body_memory`) as they
//! arrive and given back when the request is answered (or its connection dies); a body that
//! would overdraw it fails, and the request is answered 503 with `Retry-After`, so the
//! server sheds load instead of dying.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::api_error::ApiError;
use crate::body_guard::{FrameGuard, FramePoll, GuardedBody};

/// The bytes all request bodies may hold at once, and what they hold now.
#[derive(Debug)]
pub struct BodyBudget {
    limit: usize,
    held: AtomicUsize,
}

impl BodyBudget {
    pub fn new(limit: usize) -> Self {
        BodyBudget {
            limit,
            held: AtomicUsize::new(0),
        }
    }

    /// Takes `n` bytes from the budget, unless that would overdraw it.
    fn take(&self, n: usize) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(n).filter(|&after| after <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::AcqRel);
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// What one request has taken; given back when it is dropped (answered, or its connection
/// gone), whatever happened to the body.
struct Charge {
    budget: Arc<BodyBudget>,
    taken: Arc<AtomicUsize>,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give_back(self.taken.load(Ordering::Acquire));
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the server holds too many request bodies; retry shortly")]
struct OverBudget;

/// Pays for a body's frames from the budget as they arrive.
struct Payment {
    budget: Arc<BodyBudget>,
    taken: Arc<AtomicUsize>,
    refused: Arc<AtomicBool>,
}

impl FrameGuard for Payment {
    fn check(&mut self, _: &mut Context<'_>, poll: FramePoll) -> FramePoll {
        if let Poll::Ready(Some(Ok(frame))) = &poll
            && let Some(data) = frame.data_ref()
        {
            if !self.budget.take(data.len()) {
                self.refused.store(true, Ordering::Relaxed);
                return Poll::Ready(Some(Err(axum::Error::new(OverBudget))));
            }
            self.taken.fetch_add(data.len(), Ordering::AcqRel);
        }
        poll
    }
}

/// Middleware: pays for the request's body from the budget until the request is answered,
/// and answers 503 when the handler failed because the budget was spent.
pub async fn limit_body_memory(
    State((state, budget)): State<(Arc<AppState>, Arc<BodyBudget>)>,
    request: Request,
    next: Next,
) -> Response {
    let charge = Charge {
        budget: budget.clone(),
        taken: Arc::new(AtomicUsize::new(0)),
    };
    let refused = Arc::new(AtomicBool::new(false));
    let request = request.map(|inner| {
        let payment = Payment {
            budget,
            taken: charge.taken.clone(),
            refused: refused.clone(),
        };
        GuardedBody::wrap(inner, payment)
    });
    let response = next.run(request).await;
    drop(charge);
    if !refused.load(Ordering::Relaxed) {
        return response;
    }
    state.metrics.request("body_memory_spent", 503);
    let mut response =
        ApiError(StatusCode::SERVICE_UNAVAILABLE, OverBudget.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::BodyBudget;

    #[test]
    fn the_budget_is_never_overdrawn_and_refills() {
        let budget = BodyBudget::new(100);
        assert!(budget.take(60));
        assert!(!budget.take(41), "would overdraw");
        assert!(budget.take(40));
        assert_eq!(budget.held(), 100);
        budget.give_back(60);
        assert!(budget.take(50));
        assert_eq!(budget.held(), 90);
    }
}
