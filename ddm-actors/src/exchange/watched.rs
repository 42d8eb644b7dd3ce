//! A stream that notes when bytes last moved on it, and a watchdog that
//! ends a connection over it once nothing has moved for a while.
//!
//! hyper's HTTP/1 server bounds only the time to read a request's head
//! (`header_read_timeout`); an answer the client never reads is held, with
//! its connection, for as long as the client keeps the connection open. A
//! peer that pulls on each of its connections and reads nothing would hold
//! as many copies of the whole table. (No crate in the dependency tree
//! does this; `tokio-io-timeout`'s per-direction timeouts would be a new
//! dependency for these 60 lines.)

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// When bytes last moved on a [`Watched`] stream.
#[derive(Debug)]
pub(crate) struct Moved {
    base: Instant,
    /// Nanoseconds from `base` to the last move.
    at: AtomicU64,
}

impl Moved {
    /// Moved now (a stream just made counts as a move).
    pub(crate) fn new() -> Arc<Moved> {
        Arc::new(Moved { base: Instant::now(), at: AtomicU64::new(0) })
    }

    fn note(&self) {
        let nanos = self.base.elapsed().as_nanos();
        self.at
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// When bytes last moved.
    pub(crate) fn last(&self) -> Instant {
        self.base + Duration::from_nanos(self.at.load(Ordering::Relaxed))
    }
}

/// `S`, noting in a [`Moved`] each read or write that moved bytes.
#[derive(Debug)]
pub(crate) struct Watched<S> {
    inner: S,
    moved: Arc<Moved>,
}

impl<S> Watched<S> {
    pub(crate) fn new(inner: S, moved: Arc<Moved>) -> Self {
        Watched { inner, moved }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.moved.note();
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let wrote = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(wrote, Poll::Ready(Ok(n)) if n > 0) {
            self.moved.note();
        }
        wrote
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let wrote = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(wrote, Poll::Ready(Ok(n)) if n > 0) {
            self.moved.note();
        }
        wrote
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Run `conn` until it ends (`Some` of its output), or until nothing has
/// moved on its stream for `idle` (`None`; `conn` is dropped).
pub(crate) async fn until_stalled<F: std::future::Future>(
    conn: F,
    moved: &Moved,
    idle: Duration,
) -> Option<F::Output> {
    tokio::pin!(conn);
    loop {
        let due = moved.last() + idle;
        tokio::select! {
            out = &mut conn => return Some(out),
            _ = tokio::time::sleep_until(due) => {
                if moved.last() + idle <= Instant::now() {
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const IDLE: Duration = Duration::from_secs(60);

    /// A megabyte written into a pipe of 64 KiB: with a reader that takes
    /// a little more than twice an idle bound to drain it (a piece every
    /// half bound), the write ends; with a reader that stops, the
    /// watchdog ends it one idle bound after the last byte moved.
    #[tokio::test(start_paused = true)]
    async fn a_write_nobody_reads_is_ended_and_a_slow_one_is_not() {
        for reads in [usize::MAX, 3] {
            let (near, mut far) = tokio::io::duplex(64 << 10);
            let moved = Moved::new();
            let mut w = Watched::new(near, Arc::clone(&moved));
            let write = async move { w.write_all(&vec![7u8; 1 << 20]).await };
            let reader = tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                for _ in 0..reads {
                    tokio::time::sleep(IDLE / 2).await;
                    if far.read(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                }
                // Holds its end open, reading nothing more.
                std::future::pending::<()>().await;
            });
            let start = Instant::now();
            let ended = until_stalled(write, &moved, IDLE).await;
            if reads == usize::MAX {
                assert!(matches!(ended, Some(Ok(()))), "{ended:?}");
            } else {
                assert!(ended.is_none(), "{ended:?}");
                // The last piece read at 3 half bounds, then one bound.
                assert_eq!(start.elapsed(), IDLE * 3 / 2 + IDLE);
            }
            reader.abort();
        }
    }
}
