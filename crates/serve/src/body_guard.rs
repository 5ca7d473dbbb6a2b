//! A request body watched frame by frame: the one wrapper behind the body deadline
//! (`body_deadline`) and the memory budget (`body_memory_budget`), which differ only in what
//! they check as frames arrive — or fail to.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use http_body::{Frame, SizeHint};

/// What the inner body gave, or will.
pub type FramePoll = Poll<Option<Result<Frame<Bytes>, axum::Error>>>;

/// A check on a body's frames: sees each poll of the inner body and may turn it into an error.
pub trait FrameGuard: Send + Unpin + 'static {
    fn check(&mut self, cx: &mut Context<'_>, poll: FramePoll) -> FramePoll;
}

/// `inner` with `guard` watching its frames.
pub struct GuardedBody<G> {
    inner: Body,
    guard: G,
}

impl<G: FrameGuard> GuardedBody<G> {
    /// The guarded body as axum's body type.
    pub fn wrap(inner: Body, guard: G) -> Body {
        Body::new(GuardedBody { inner, guard })
    }
}

impl<G: FrameGuard> http_body::Body for GuardedBody<G> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> FramePoll {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_frame(cx);
        this.guard.check(cx, poll)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
