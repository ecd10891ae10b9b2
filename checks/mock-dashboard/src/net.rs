//! A listener that remembers every accepted socket, so that
//! [`crate::MockDashboard::shutdown`] can cut them all like a killed process.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::lock;

/// Duplicates of every open accepted socket, to shut them down from outside.
#[derive(Default)]
pub(crate) struct Registry {
    next: AtomicU64,
    sockets: Mutex<Sockets>,
}

#[derive(Default)]
struct Sockets {
    closed: bool,
    open: HashMap<u64, std::net::TcpStream>,
}

impl Registry {
    /// Shut down every socket (the peers see the connection end without a
    /// WebSocket close frame) and every socket accepted from now on.
    pub(crate) fn close_all(&self) {
        let mut s = lock(&self.sockets);
        s.closed = true;
        for (_, sock) in s.open.drain() {
            // Fails only when the peer is gone already.
            let _ = sock.shutdown(std::net::Shutdown::Both);
        }
    }

    fn track(self: &Arc<Self>, stream: TcpStream) -> io::Result<TrackedStream> {
        let std_stream = stream.into_std()?;
        let dup = std_stream.try_clone()?;
        let stream = TcpStream::from_std(std_stream)?;
        // Output lines must arrive within 100 ms; small frames must not wait.
        stream.set_nodelay(true)?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut s = lock(&self.sockets);
        if s.closed {
            let _ = dup.shutdown(std::net::Shutdown::Both);
        } else {
            s.open.insert(id, dup);
        }
        Ok(TrackedStream {
            inner: stream,
            id,
            registry: Arc::clone(self),
        })
    }
}

/// The dashboard's listener.
pub(crate) struct TrackedListener {
    listener: TcpListener,
    registry: Arc<Registry>,
}

impl TrackedListener {
    pub(crate) fn new(listener: TcpListener, registry: Arc<Registry>) -> Self {
        TrackedListener { listener, registry }
    }
}

impl Listener for TrackedListener {
    type Io = TrackedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => match self.registry.track(stream) {
                    Ok(tracked) => return (tracked, peer),
                    Err(e) => tracing::warn!("cannot set up the connection from {peer}: {e}"),
                },
                Err(e) => {
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                    ) {
                        // E.g. out of file descriptors: give the system a moment.
                        tracing::error!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// The remote address of a connection, for the handlers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub(crate) SocketAddr);

impl Connected<IncomingStream<'_, TrackedListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TrackedListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// An accepted socket that leaves the registry when dropped.
pub(crate) struct TrackedStream {
    inner: TcpStream,
    id: u64,
    registry: Arc<Registry>,
}

impl Drop for TrackedStream {
    fn drop(&mut self) {
        lock(&self.registry.sockets).open.remove(&self.id);
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
