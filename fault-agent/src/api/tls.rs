//! HTTPS for the API: the certificate chain and private key (PEM files, e.g. a
//! `kubernetes.io/tls` Secret's `tls.crt` and `tls.key`) in a rustls server config (ring
//! provider; TLS 1.2 and 1.3; ALPN `http/1.1`: axum serves HTTP/1 only here), reloaded when the files change, and a
//! listener ([`TlsListener`]) that hands axum only connections whose handshake completed.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

/// How often the files are read again to pick up a renewed certificate (a Secret update
/// reaches a mounted volume within the kubelet's sync period, about a minute).
pub const RELOAD_EVERY: Duration = Duration::from_secs(10);

/// Longest TLS handshake; a client that takes longer is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the certificate or key cannot be used. Each names the file and the flag it came from.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-cert-file {path}: {why}")]
    Cert { path: PathBuf, why: String },
    #[error("--tls-key-file {path}: {why}")]
    Key { path: PathBuf, why: String },
    #[error("--tls-dir {dir}: {why}")]
    Dir { dir: PathBuf, why: String },
    #[error("the certificate in {cert} does not go with the key in {key}: {why}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        why: String,
    },
}

/// Where the certificate chain and its private key are (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate, then any intermediates (PEM `CERTIFICATE` blocks).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl TlsFiles {
    /// The files of `--tls-dir DIR`: `DIR/tls.crt` and `DIR/tls.key` (a `kubernetes.io/tls`
    /// Secret's keys) when both exist; `None` (plain HTTP) when neither does or `DIR` is
    /// missing (an optional Secret that is not there).
    ///
    /// Errors: only one of the two files exists.
    pub fn in_dir(dir: &Path) -> Result<Option<Self>, TlsError> {
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        match (cert.exists(), key.exists()) {
            (true, true) => Ok(Some(Self { cert, key })),
            (false, false) => Ok(None),
            (c, _) => Err(TlsError::Dir {
                dir: dir.to_owned(),
                why: format!(
                    "holds {} but not {}: give both (a kubernetes.io/tls Secret) or neither",
                    if c { "tls.crt" } else { "tls.key" },
                    if c { "tls.key" } else { "tls.crt" }
                ),
            }),
        }
    }

    /// Reads both files into a server config.
    ///
    /// Errors: a file cannot be read, holds no certificate or no key, or the key does not
    /// belong to the first certificate.
    pub fn load(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let cert_err = |why: String| TlsError::Cert {
            path: self.cert.clone(),
            why,
        };
        let chain = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| cert_err(e.to_string()))?;
        if chain.is_empty() {
            return Err(cert_err("no PEM CERTIFICATE block".into()));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| TlsError::Key {
            path: self.key.clone(),
            why: e.to_string(),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
            .map_err(|e| TlsError::Mismatch {
                cert: self.cert.clone(),
                key: self.key.clone(),
                why: e.to_string(),
            })?;
        // axum is built without its `http2` feature: offering h2 would break HTTP/2 clients.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Both files' bytes, to notice a change (`None` while one cannot be read).
    fn contents(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        Some((
            std::fs::read(&self.cert).ok()?,
            std::fs::read(&self.key).ok()?,
        ))
    }
}

/// A TCP listener whose connections are TLS: the handshakes run in tasks of their own (a slow
/// client holds up nobody), and [`axum::serve::Listener::accept`] yields finished ones.
/// Dropping it stops accepting and reloading.
pub struct TlsListener {
    conns: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    tasks: [JoinHandle<()>; 2],
}

impl TlsListener {
    /// Serves TLS with `files` on `tcp`; the files are read now and every [`RELOAD_EVERY`]
    /// (a changed pair that fails to load is logged and the previous one kept).
    ///
    /// Errors: the files cannot be loaded now, or `tcp` has no local address.
    pub fn new(tcp: TcpListener, files: TlsFiles) -> anyhow::Result<Self> {
        let config = files.load()?;
        let local = tcp.local_addr()?;
        let (config_tx, config_rx) = watch::channel(config);
        let (tx, conns) = mpsc::channel(64);
        let reload = tokio::spawn(reload(files, config_tx));
        let accept = tokio::spawn(accept_loop(tcp, config_rx, tx));
        Ok(Self {
            conns,
            local,
            tasks: [accept, reload],
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.conns.recv().await {
            Some(conn) => conn,
            // The accept loop ended (only when aborted): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

async fn accept_loop(
    tcp: TcpListener,
    config: watch::Receiver<Arc<ServerConfig>>,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let (stream, peer) = match tcp.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(error = %e, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = TlsAcceptor::from(config.borrow().clone());
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

async fn reload(files: TlsFiles, config: watch::Sender<Arc<ServerConfig>>) {
    let mut last = files.contents();
    loop {
        tokio::time::sleep(RELOAD_EVERY).await;
        let now = files.contents();
        if now.is_none() || now == last {
            continue;
        }
        match files.load() {
            Ok(c) => {
                tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
                config.send_replace(c);
                last = now;
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate changed but cannot be used; keeping the previous one")
            }
        }
    }
}
