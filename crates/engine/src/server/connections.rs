//! `server.max_connections`: at most that many client connections are
//! served at once.
//!
//! Why: every connection may hold up to `server.http2_connection_window`
//! bytes the engine has not read, outside the byte limits, and the number
//! of connections was the one term of the memory budget nothing bounded
//! (docs/architecture.md, "Memory budget"). Past the limit the listener is
//! not polled: a new connection waits in the kernel's listen backlog (its
//! TCP handshake done, its HTTP/2 one not) until a served one closes, and
//! the engine logs one warning per episode.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::Connected;

/// A served connection; its slot returns when it is dropped.
#[derive(Debug)]
pub(crate) struct Limited<IO> {
    io: IO,
    _slot: OwnedSemaphorePermit,
}

/// `incoming` with at most `max` of its connections alive at once.
///
/// Invariant: the connections alive (yielded and not dropped) hold one
/// permit of `slots` each, so there are never more than `max`.
pub(crate) fn limit<I, IO, E>(incoming: I, max: u32) -> impl Stream<Item = Result<Limited<IO>, E>>
where
    I: Stream<Item = Result<IO, E>> + Unpin,
{
    let slots = Arc::new(Semaphore::new(max as usize));
    futures::stream::unfold(
        (incoming, slots, false),
        move |(mut incoming, slots, mut waited)| async move {
            let slot = match slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    waited = false;
                    slot
                }
                Err(_) => {
                    if !waited {
                        tracing::warn!(
                            max,
                            "server.max_connections reached: new connections wait until one closes"
                        );
                        waited = true;
                    }
                    // The semaphore is never closed.
                    slots.clone().acquire_owned().await.ok()?
                }
            };
            let item = incoming.next().await?;
            Some((
                item.map(|io| Limited { io, _slot: slot }),
                (incoming, slots, waited),
            ))
        },
    )
}

impl<IO: Connected> Connected for Limited<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Limited<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Limited<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
