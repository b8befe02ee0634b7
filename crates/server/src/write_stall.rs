//! A client connection whose client takes none of its answer for [`WRITE_STALL_TIMEOUT`] is
//! closed: a client that sends a request and then never reads would otherwise keep the
//! answer (megabytes, for a recursive GET of a big tree) in memory for as long as it keeps
//! the connection open.
//!
//! [`WRITE_STALL_TIMEOUT`]: crate::limits::WRITE_STALL_TIMEOUT

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::future::Future as _;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `inner`, whose writes fail with `TimedOut` once one has waited `limit` without a byte
/// taken. Reads pass through.
pub(crate) struct WriteStall<S> {
    inner: S,
    limit: Duration,
    /// Set while a write waits for room in the socket; reset by any progress.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteStall<S> {
    pub(crate) fn new(inner: S, limit: Duration) -> WriteStall<S> {
        WriteStall { inner, limit, stalled: None }
    }

    /// `Pending` from the socket: starts the clock (or checks it).
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let limit = self.limit;
        let timer = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client took none of its answer for {limit:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(&mut self, result: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match result {
            Poll::Pending => self.pending(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteStall<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteStall<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress(result, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(result, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_write_nobody_takes_fails_after_the_limit_and_progress_resets_the_clock() {
        let (near, far) = tokio::io::duplex(16);
        let started = std::time::Instant::now();
        let mut stalled = WriteStall::new(near, Duration::from_millis(300));
        // 16 bytes fit; the rest waits for the far end (kept open) to read.
        let error = stalled.write_all(&[7u8; 64]).await.expect_err("nobody reads");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(300));
        drop(far);

        let (near, mut far2) = tokio::io::duplex(16);
        // Longer in all than the limit: only progress resetting the clock lets it through.
        let mut slow = WriteStall::new(near, Duration::from_secs(1));
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut taken = Vec::new();
            let mut chunk = [0u8; 16];
            // A slow reader: 16 bytes every 400 ms, each wait well under the limit.
            while taken.len() < 64 {
                tokio::time::sleep(Duration::from_millis(400)).await;
                let n = far2.read(&mut chunk).await.expect("read");
                taken.extend_from_slice(&chunk[..n]);
            }
            taken.len()
        });
        slow.write_all(&[7u8; 64]).await.expect("a slow reader is no stall");
        assert_eq!(reader.await.expect("reader"), 64);
    }
}
