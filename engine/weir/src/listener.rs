//! Serving an axum router on a TCP listener within the `[http]` limits.
//!
//! `axum::serve` bounds neither the number of connections nor the time a client may
//! take to send a request's head, so a few thousand idle or trickling connections
//! (slowloris) hold the node's sockets and memory. Here each connection takes a slot of
//! `max_connections` (the accept loop waits for one, so further clients stay in the
//! kernel's backlog), and hyper closes a connection whose next request head has not
//! arrived within `header_timeout_secs`, idle keep-alive connections included. Request
//! bodies are read under `body_timeout_secs` by the routes that take them
//! (`crate::server::read_body`). The peer's address reaches handlers as
//! `ConnectInfo<SocketAddr>`. With `[tls]` configured the data plane speaks HTTPS only
//! (`crate::tls`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use weir_core::serving::HttpConfig;

/// Turns true when the client closed its side of the connection. hyper reads nothing
/// while a handler runs, so a handler that computes before answering (a query) would
/// never learn that nobody waits for it; this tells it.
#[derive(Clone)]
pub struct Closed(pub watch::Receiver<bool>);

impl Closed {
    /// Resolves once the client has gone away.
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|c| *c).await;
    }
}

/// Watch a second descriptor of the connection's socket for the client's FIN: `peek`
/// sees end-of-stream without taking bytes that hyper will read.
fn watch_close(
    stream: &tokio::net::TcpStream,
    closed: watch::Sender<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    use std::os::fd::AsFd;
    let fd = stream.as_fd().try_clone_to_owned().ok()?;
    let std_stream = std::net::TcpStream::from(fd);
    std_stream.set_nonblocking(true).ok()?;
    let dup = tokio::net::TcpStream::from_std(std_stream).ok()?;
    Some(tokio::spawn(async move {
        let mut b = [0u8; 1];
        loop {
            match dup.peek(&mut b).await {
                Ok(0) | Err(_) => {
                    let _ = closed.send(true);
                    return;
                }
                // Bytes hyper has yet to read (a body, a pipelined request): look again
                // once it has had the chance.
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }))
}

/// One HTTP/1.1 connection over `io` (plain or TLS), ended gracefully on `stop`.
async fn connection<I, S>(
    io: I,
    service: S,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) -> Result<(), hyper::Error>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    }
}

/// Serve `app` until `shutdown` resolves, then let open requests finish (at most
/// `body_timeout_secs` more) and return. With `tls`, every connection is TLS: its
/// handshake must finish within `header_timeout_secs`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &HttpConfig,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let header_timeout = Duration::from_secs(limits.header_timeout_secs);
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let (closed_tx, closed_rx) = watch::channel(false);
        let service = TowerToHyperService::new(
            app.clone()
                .layer(Extension(ConnectInfo::<SocketAddr>(peer)))
                .layer(Extension(Closed(closed_rx))),
        );
        let watcher = watch_close(&stream, closed_tx);
        let stop = stop_rx.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let r = match tls {
                None => connection(stream, service, header_timeout, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => connection(s, service, header_timeout, stop).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
            if let Some(w) = watcher {
                w.abort();
            }
            drop(slot);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Open requests get their answers; a connection still open after that is dropped.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let grace = Duration::from_secs(limits.body_timeout_secs);
    let _ = tokio::time::timeout(grace, slots.acquire_many(all)).await;
}
