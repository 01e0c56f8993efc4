//! Serving the router: plain HTTP, or HTTPS when the agent has a certificate ([`super::tls`]),
//! with the caller's address for the access guard (`ConnectInfo<SocketAddr>`) and a graceful
//! shutdown either way.
use std::{future::Future, net::SocketAddr};

use anyhow::Context as _;
use axum::{Router, serve::ListenerExt as _};
use tokio::net::TcpListener;

use super::tls::{TlsFiles, TlsListener};

/// A bound API socket, plain or TLS.
pub enum Server {
    Plain(TcpListener),
    Tls(TlsListener),
}

impl Server {
    /// Binds `listen` and, with `tls`, loads the certificate (see [`TlsListener::new`]).
    ///
    /// Errors: the address cannot be bound, or the certificate or key cannot be used.
    pub async fn bind(listen: SocketAddr, tls: Option<TlsFiles>) -> anyhow::Result<Self> {
        let tcp = TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        Ok(match tls {
            Some(files) => Self::Tls(TlsListener::new(tcp, files)?),
            None => Self::Plain(tcp),
        })
    }

    /// The bound address and scheme, e.g. `https://127.0.0.1:8080`.
    pub fn url(&self) -> String {
        use axum::serve::Listener as _;
        match self {
            Self::Plain(l) => l.local_addr().map(|a| format!("http://{a}")),
            Self::Tls(l) => l.local_addr().map(|a| format!("https://{a}")),
        }
        .unwrap_or_else(|e| format!("(unknown address: {e})"))
    }

    /// Serves `app` until `shutdown` completes and open requests are answered.
    ///
    /// Errors: the server failed (I/O).
    pub async fn run(
        self,
        app: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        match self {
            Self::Plain(l) => axum::serve(l, app).with_graceful_shutdown(shutdown).await,
            // `tap_io` is what gives a custom listener's address to `ConnectInfo`.
            Self::Tls(l) => {
                axum::serve(l.tap_io(|_| {}), app)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
        }
    }
}
