//! A bound on how long a response may wait for its client to take it. hyper has a deadline
//! for reading a request head (`header_timeout`), and `body_deadline` bounds the body, but
//! nothing bounded writing: a client that sends requests and never reads the answers (a
//! "slow read" attack: a small receive window, pipelined `k=1000` searches) left the server's
//! writes pending forever, and as many such clients as `--max-connections` shut everyone else
//! out (probed: 8 of them against `--max-connections 8` kept `/healthz` unreachable).
//!
//! [`SendDeadline`] wraps a connection's socket and adds up the time its writes wait for the
//! client; when the waits since the client last sent anything pass `limit`, the write fails
//! and hyper closes the connection. The wait is summed, not reset by each byte taken, so a
//! client that reads a trickle cannot stretch one answer without end; a request read from the
//! client starts a new sum (a keep-alive connection's next exchange).

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A socket whose writes may wait for the client `limit` in all between two of its requests.
pub struct SendDeadline<S> {
    inner: S,
    limit: Duration,
    /// Time writes have waited since the client last sent data.
    waited: Duration,
    /// When the write now pending began waiting.
    waiting_since: Option<Instant>,
    timer: Pin<Box<Sleep>>,
}

impl<S> SendDeadline<S> {
    pub fn new(inner: S, limit: Duration) -> Self {
        // A limit beyond any deadline a clock can hold is no limit (and must not overflow).
        let limit = limit.min(Duration::from_secs(100 * 365 * 86_400));
        SendDeadline {
            inner,
            limit,
            waited: Duration::ZERO,
            waiting_since: None,
            timer: Box::pin(tokio::time::sleep(limit)),
        }
    }

    /// Accounts for a write's outcome: a finished wait is added to the sum; a pending one
    /// arms the timer for what is left of the limit, and fails once nothing is left.
    fn account<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                if let Some(since) = self.waiting_since.take() {
                    self.waited += since.elapsed();
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                let since = *self.waiting_since.get_or_insert_with(Instant::now);
                let Some(left) = self.limit.checked_sub(self.waited) else {
                    return Poll::Ready(Err(self.timed_out()));
                };
                let deadline = since + left;
                if self.timer.deadline() != deadline {
                    self.timer.as_mut().reset(deadline);
                }
                match self.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(self.timed_out())),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn timed_out(&self) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the client took no answer for {:?}", self.limit),
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SendDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.waited = Duration::ZERO;
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SendDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.account(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.account(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.account(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::SendDeadline;

    #[tokio::test(start_paused = true)]
    async fn writes_fail_once_the_client_kept_them_waiting_too_long_in_all() {
        // A pipe the "client" reads 1 KiB of at a time: every write waits for it.
        let (server, mut client) = tokio::io::duplex(1024);
        let mut server = SendDeadline::new(server, Duration::from_secs(10));
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let mut taken = 0;
            // Takes 1 KiB every 3 s: each wait is short, their sum is not.
            loop {
                tokio::time::sleep(Duration::from_secs(3)).await;
                match client.read(&mut buf).await {
                    Ok(0) | Err(_) => return taken,
                    Ok(n) => taken += n,
                }
            }
        });
        let err = server.write_all(&[7u8; 64 * 1024]).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        drop(server);
        let taken = reader.await.unwrap();
        assert!((3 * 1024..=5 * 1024).contains(&taken), "{taken}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_reads_its_answers_is_never_cut_off() {
        let (server, mut client) = tokio::io::duplex(1024);
        let mut server = SendDeadline::new(server, Duration::from_secs(10));
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all.len()
        });
        for _ in 0..20 {
            server.write_all(&[1u8; 8 * 1024]).await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        drop(server);
        assert_eq!(reader.await.unwrap(), 20 * 8 * 1024);
    }
}
