//! HTTPS on `serve`'s one listener: the certificate and key files become a
//! rustls acceptor (ring, ALPN `h2` then `http/1.1`, so gRPC and HTTP/2
//! keep working), read again on SIGHUP so a renewed certificate needs no
//! restart.
//!
//! Each connection does its handshake in its own task, under
//! [`HANDSHAKE_TIMEOUT`]: a client that connects and says nothing (or
//! speaks slowly) holds only its own task, never the accept loop. A client
//! that speaks plain HTTP to the TLS port gets a short plain-text 400 naming
//! the problem, rather than bytes it cannot read.
use std::{
    io,
    path::Path,
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::Context;
use tokio::{io::AsyncWriteExt, net::TcpStream};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
    server::TlsStream,
};
use tracing::{error, info};

use crate::config::TlsConfig;

/// How long a client gets from connecting to a finished handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The body of the answer to a plain-HTTP request on the TLS port.
const PLAIN_HTTP_BODY: &str = "This port speaks HTTPS: use an https:// (or grpc+https://) URL.\n";

/// The listener's TLS settings, replaceable while connections come in.
pub struct Tls {
    files: TlsConfig,
    current: RwLock<TlsAcceptor>,
}

impl Tls {
    /// Reads the certificate chain and key; any problem is an error that
    /// names the file.
    pub fn load(files: &TlsConfig) -> anyhow::Result<Arc<Tls>> {
        let acceptor = acceptor(files)?;
        Ok(Arc::new(Tls { files: files.clone(), current: RwLock::new(acceptor) }))
    }

    /// The acceptor for a new connection (connections already open keep
    /// the one they started with).
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Rereads the files; on failure the previous certificate stays.
    fn reload(&self) -> anyhow::Result<()> {
        let fresh = acceptor(&self.files)?;
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = fresh;
        Ok(())
    }

    /// Installs the SIGHUP handler now and rereads the files on every
    /// SIGHUP from then on.
    pub fn reload_on_sighup(self: &Arc<Self>) -> anyhow::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let tls = self.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let (cert, key) = (tls.files.cert.display(), tls.files.key.display());
                match tls.reload() {
                    Ok(()) => info!(%cert, %key, "SIGHUP: TLS certificate reloaded"),
                    Err(e) => {
                        error!(error = format!("{e:#}"), "SIGHUP: TLS certificate not reloaded; keeping the old one")
                    }
                }
            }
        });
        Ok(())
    }
}

/// The server side of one connection's handshake, within
/// [`HANDSHAKE_TIMEOUT`]. A plain-HTTP client is answered with a 400 and
/// reported as an error.
pub async fn handshake(acceptor: TlsAcceptor, mut stream: TcpStream) -> io::Result<TlsStream<TcpStream>> {
    let attempt = async {
        let mut first = [0u8; 1];
        if stream.peek(&mut first).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before the TLS handshake"));
        }
        if first[0] != TLS_HANDSHAKE_RECORD {
            // Best effort: the client may already be gone.
            let answer = format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{PLAIN_HTTP_BODY}",
                PLAIN_HTTP_BODY.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
            let _ = stream.shutdown().await;
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not TLS (plain HTTP to the HTTPS port?)"));
        }
        acceptor.accept(stream).await
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt).await.unwrap_or_else(|_| {
        Err(io::Error::new(io::ErrorKind::TimedOut, format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}")))
    })
}

fn acceptor(files: &TlsConfig) -> anyhow::Result<TlsAcceptor> {
    let certs = certificates(&files.cert)?;
    let key = private_key(&files.key)?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    // Loaded once here only for its error: "not a key" reads better than
    // the certificate mismatch `with_single_cert` would report.
    provider
        .key_provider
        .load_private_key(key.clone_key())
        .with_context(|| format!("TLS key {}: not a private key rustls can use", files.key.display()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!("TLS key {} does not go with certificate {}", files.key.display(), files.cert.display())
        })?;
    // h2 first: gRPC clients insist on it; browsers and curl take either.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The PEM certificate chain in `path`, the server's own certificate first.
fn certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading TLS certificate chain {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "TLS certificate chain {}: no PEM CERTIFICATE section in it", path.display());
    Ok(certs)
}

/// The first PEM private key in `path`: PKCS#8 (`PRIVATE KEY`), RSA
/// (`RSA PRIVATE KEY`) or EC (`EC PRIVATE KEY`).
fn private_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    use tokio_rustls::rustls::pki_types::pem::Error;
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        Error::NoItemsFound => anyhow::anyhow!(
            "TLS key {}: no PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY section in it",
            path.display()
        ),
        e => anyhow::Error::new(e).context(format!("reading TLS key {}", path.display())),
    })
}
