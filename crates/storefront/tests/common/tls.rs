//! A private CA and a server certificate for `serve --tls-cert/--tls-key`,
//! made with rcgen (no external tool), and a small synchronous HTTPS client
//! for probing such a server.
//!
//! The server certificate names 127.0.0.1, ::1 and localhost (IP SANs:
//! containerd and the gRPC client connect by address). Clients trust the CA
//! certificate ([`TlsFiles::ca`]): as `SSL_CERT_FILE` (rustls-native-certs,
//! Go, OpenSSL), `curl --cacert`, Nix's `ssl-cert-file`, or the `ca.crt` in
//! [`TlsFiles::cert_dir`] (skopeo `--cert-dir`, containerd's certs.d).
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;
use tokio_rustls::rustls::{
    self, ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};

use super::{Response, parse_response, request_head};

/// The names the server certificate is valid for.
pub const SERVER_NAMES: [&str; 3] = ["127.0.0.1", "::1", "localhost"];

/// A CA and a server certificate signed by it, as PEM files in a temporary
/// directory (removed on drop).
pub struct TlsFiles {
    dir: TempDir,
    /// The CA certificate (PEM): what a client trusts.
    pub ca: PathBuf,
    /// The server's chain (PEM): its certificate, then the CA's.
    pub cert: PathBuf,
    /// The server's private key (PEM, PKCS#8).
    pub key: PathBuf,
    /// A directory holding only `ca.crt` (the CA certificate), the layout
    /// skopeo's `--cert-dir` and containerd's `certs.d/HOST` read.
    pub cert_dir: PathBuf,
}

impl TlsFiles {
    /// A fresh CA and a server certificate it signed.
    pub fn generate() -> TlsFiles {
        let dir = tempfile::tempdir().expect("temp dir");
        let (ca_pem, chain_pem, key_pem) = generate_pems();
        let cert_dir = dir.path().join("certs.d");
        std::fs::create_dir(&cert_dir).expect("creating the cert dir");
        let files = TlsFiles {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("server.pem"),
            key: dir.path().join("server.key"),
            cert_dir,
            dir,
        };
        std::fs::write(&files.ca, &ca_pem).expect("writing the CA certificate");
        std::fs::write(files.cert_dir.join("ca.crt"), &ca_pem).expect("writing ca.crt");
        std::fs::write(&files.cert, chain_pem).expect("writing the server certificate");
        std::fs::write(&files.key, key_pem).expect("writing the server key");
        files
    }

    /// `--tls-cert CERT --tls-key KEY`, for `storefront serve`.
    pub fn serve_args(&self) -> Vec<String> {
        let path = |p: &Path| p.to_str().expect("UTF-8 temp path").to_owned();
        vec!["--tls-cert".into(), path(&self.cert), "--tls-key".into(), path(&self.key)]
    }

    /// The temporary directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// (CA certificate, server chain, server key), all PEM.
fn generate_pems() -> (String, String, String) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.distinguished_name.push(DnType::CommonName, "storefront test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-signing the CA");
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate().expect("server key");
    let mut params =
        CertificateParams::new(SERVER_NAMES.map(str::to_owned).to_vec()).expect("server certificate params");
    params.distinguished_name.push(DnType::CommonName, "storefront test server");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer).expect("signing the server certificate");
    let ca_pem = ca_cert.pem();
    (ca_pem.clone(), format!("{}{ca_pem}", cert.pem()), key.serialize_pem())
}

/// A rustls client configuration trusting only the CA certificate(s) in
/// `ca` (PEM), offering `alpn`.
pub fn client_config(ca: &Path, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("opening the CA file") {
        roots.add(cert.expect("a PEM certificate")).expect("a usable CA certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// One HTTPS/1.1 request on a fresh connection (`Connection: close`),
/// trusting only the CA in `ca` and checking the certificate against
/// 127.0.0.1.
pub fn try_https_request(
    addr: SocketAddr,
    ca: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(60)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(60)))?;
    let name = ServerName::IpAddress(addr.ip().into());
    let conn = rustls::ClientConnection::new(client_config(ca, &[b"http/1.1"]), name).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(request_head(addr, method, path, headers, body).as_bytes())?;
    tls.write_all(body)?;
    let mut raw = Vec::new();
    match tls.read_to_end(&mut raw) {
        Ok(_) => {}
        // A peer that closes without close_notify after a whole answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e),
    }
    parse_response(&raw, method == "HEAD")
}

/// A GET over HTTPS; panics on a transport error.
#[track_caller]
pub fn https_get(addr: SocketAddr, ca: &Path, path: &str) -> Response {
    try_https_request(addr, ca, "GET", path, &[], b"").unwrap_or_else(|e| panic!("GET https://{addr}{path}: {e}"))
}
