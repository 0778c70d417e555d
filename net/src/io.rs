//! Bridges glommio's sockets (futures-io traits) to the tokio I/O traits that `h2` is written
//! against. Only the traits are used: no tokio runtime exists anywhere in the process.

use bytes::{Buf, Bytes};
use futures_lite::{AsyncRead, AsyncWrite};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::ReadBuf;

/// The most one read asks of the socket (a few HTTP/2 frames' worth).
const READ_BYTES_MAX: usize = 64 * 1024;

/// A futures-io stream seen through tokio's traits, optionally replaying bytes that were
/// already read off the socket (the protocol sniff on accept reads the first bytes to tell
/// HTTP/2 from HTTP/1.1, and h2 must still see them).
pub(crate) struct TokioIo<S> {
    inner: S,
    replay: Bytes,
}

impl<S> TokioIo<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self::with_replay(inner, Bytes::new())
    }

    pub(crate) fn with_replay(inner: S, replay: Bytes) -> Self {
        Self { inner, replay }
    }
}

impl<S: AsyncRead + Unpin> tokio::io::AsyncRead for TokioIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.replay.has_remaining() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay.advance(n);
            return Poll::Ready(Ok(()));
        }
        // h2's codec hands a fresh ReadBuf over its buffer's spare capacity on every read,
        // so whatever is offered here is zeroed first; the cap keeps that memset small when
        // the buffer has grown for a large frame.
        let offered_bytes = buf.remaining().min(READ_BYTES_MAX);
        let unfilled = buf.initialize_unfilled_to(offered_bytes);
        match Pin::new(&mut this.inner).poll_read(cx, unfilled) {
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> tokio::io::AsyncWrite for TokioIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}
