//! A client connection whose client takes none of its answer for [`WRITE_STALL_TIMEOUT`] is
//! closed: a client that sends a request and then never reads would otherwise keep the
//! answer (megabytes, for a recursive GET of a big tree) in memory for as long as it keeps
//! the connection open.
//!
//! A write waits for room in the socket, and the kernel says there is room only once a good
//! part of its send buffer (megabytes, autotuned) has drained: a client reading slowly but
//! steadily could leave a write waiting past the limit. So when the limit is reached, the
//! socket's unsent bytes (`TIOCOUTQ`) are compared with those when the wait began: fewer
//! means the client is taking them, and the wait goes on for another limit.
//!
//! [`WRITE_STALL_TIMEOUT`]: crate::limits::WRITE_STALL_TIMEOUT

use std::io;
use std::os::fd::RawFd;
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
    /// The socket, to ask how much of what was written it has not sent yet.
    socket: Option<RawFd>,
    /// Its unsent bytes when the current wait began (or was last extended).
    unsent_at_stall: Option<u64>,
}

impl<S> WriteStall<S> {
    pub(crate) fn new(inner: S, limit: Duration) -> WriteStall<S> {
        WriteStall { inner, limit, stalled: None, socket: None, unsent_at_stall: None }
    }

    /// [`WriteStall::new`] for a socket whose draining counts as progress.
    pub(crate) fn for_socket(inner: S, limit: Duration, socket: RawFd) -> WriteStall<S> {
        WriteStall { socket: Some(socket), ..WriteStall::new(inner, limit) }
    }

    /// `Pending` from the socket: starts the clock (or checks it).
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let limit = self.limit;
        if self.stalled.is_none() {
            self.unsent_at_stall = self.socket.and_then(unsent_bytes);
        }
        loop {
            let timer = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
            match timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => {
                    let unsent = self.socket.and_then(unsent_bytes);
                    match (self.unsent_at_stall, unsent) {
                        // The client took some: wait on (the new timer registers the waker).
                        (Some(before), Some(now)) if now < before => {
                            self.unsent_at_stall = Some(now);
                            self.stalled = None;
                        }
                        _ => {
                            // Closed with a reset rather than a FIN: the kernel would keep
                            // trying to deliver the unsent answer (megabytes) to a client
                            // that takes none of it, for minutes after the close (an audit
                            // saw 3.6 MB held per stalled stream).
                            if let Some(fd) = self.socket {
                                discard_unsent_at_close(fd);
                            }
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                format!("the client took none of its answer for {limit:?}"),
                            )))
                        }
                    }
                }
            }
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

/// Makes closing socket `fd` drop what it has not sent and reset the connection
/// (`SO_LINGER` with a zero timeout).
fn discard_unsent_at_close(fd: RawFd) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: `fd` is the connection's open socket (see `unsent_bytes`); SO_LINGER reads one
    // `linger` from the pointer, of the size given.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Bytes written to socket `fd` that its peer has not acknowledged yet (`TIOCOUTQ`); `None`
/// if the socket cannot say.
fn unsent_bytes(fd: RawFd) -> Option<u64> {
    let mut unsent: libc::c_int = 0;
    // SAFETY: `fd` is the connection's socket, open while its connection is served (which
    // owns this stream); TIOCOUTQ writes one int to the pointer given.
    let result = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut unsent) };
    (result == 0).then_some(unsent as u64)
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

    /// A client reading steadily but slower than the kernel's wake-ups for room in a big
    /// send buffer: without looking at the socket's unsent bytes the write fails although
    /// the client takes bytes all the time; with them it goes through.
    #[tokio::test]
    async fn a_socket_that_drains_slowly_between_wake_ups_is_no_stall() {
        use std::os::fd::AsRawFd;
        use tokio::io::AsyncReadExt;
        const LIMIT: Duration = Duration::from_millis(100);
        const BYTES: usize = 4 << 20;
        async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.set_send_buffer_size(1 << 20).expect("send buffer");
            let (writer, reader) = tokio::join!(socket.connect(listener.local_addr().expect("addr")), listener.accept());
            (writer.expect("connect"), reader.expect("accept").0)
        }
        // 32 KiB every 10 ms: room for a wake-up (a third of the buffer) takes longer than
        // the limit to drain, the client never stops taking bytes.
        async fn read_slowly(mut reader: tokio::net::TcpStream) -> usize {
            let mut taken = 0;
            let mut chunk = vec![0u8; 32 << 10];
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                match reader.read(&mut chunk).await {
                    Ok(0) | Err(_) => return taken,
                    Ok(n) => taken += n,
                }
            }
        }
        let (writer, reader) = pair().await;
        let reading = tokio::spawn(read_slowly(reader));
        let mut blind = WriteStall::new(writer, LIMIT);
        let error = blind.write_all(&vec![7u8; BYTES]).await.expect_err("the wake-ups come too late");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        drop(blind);
        reading.await.expect("reader");

        let (writer, reader) = pair().await;
        let reading = tokio::spawn(read_slowly(reader));
        let fd = writer.as_raw_fd();
        let mut watching = WriteStall::for_socket(writer, LIMIT, fd);
        watching.write_all(&vec![7u8; BYTES]).await.expect("a draining socket is no stall");
        watching.shutdown().await.expect("shutdown");
        drop(watching);
        assert_eq!(reading.await.expect("reader"), BYTES);
    }

    /// A stalled connection is reset when closed: the kernel then drops its unsent bytes
    /// instead of holding them for minutes, trying to deliver them.
    #[tokio::test]
    async fn a_stalled_socket_is_reset_at_close_and_its_unsent_bytes_dropped() {
        use std::os::fd::AsRawFd;
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (writer, reader) = tokio::join!(tokio::net::TcpStream::connect(listener.local_addr().expect("addr")), listener.accept());
        let (writer, mut reader) = (writer.expect("connect"), reader.expect("accept").0);
        let fd = writer.as_raw_fd();
        let mut stalled = WriteStall::for_socket(writer, Duration::from_millis(100), fd);
        let error = stalled.write_all(&vec![7u8; 16 << 20]).await.expect_err("nobody reads");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        drop(stalled);
        // The reader, reading at last, finds the connection reset, not the rest of the bytes
        // followed by an end.
        let mut chunk = vec![0u8; 1 << 20];
        let ended = loop {
            match reader.read(&mut chunk).await {
                Ok(0) => break Ok(()),
                Ok(_) => {}
                Err(error) => break Err(error.kind()),
            }
        };
        assert_eq!(ended, Err(io::ErrorKind::ConnectionReset));
    }
}
