//! Who may read and write: one tower layer in front of everything the
//! listener serves (gRPC, the binary cache, the OCI registry), so no
//! protocol can forget a check.
//!
//! A client presents a token as `Authorization: Bearer TOKEN` or as the
//! password of `Authorization: Basic` with any user name (what Nix sends
//! from a netrc file). Writes — HTTP methods other than GET, HEAD and
//! OPTIONS, and gRPC `Put` calls — need a write token unless anonymous
//! writes are allowed; reads are public unless a read token file is given,
//! and then need a read or a write token. `/healthz` is always public, so
//! probes need no secret. The registry's version check `GET /v2/` needs a
//! valid token whenever anything on the server does (registry clients send
//! credentials only after that challenge); refusals under `/v2/` carry the
//! OCI error body (`UNAUTHORIZED`) and a Bearer challenge naming the token
//! realm `/v2/token`, which hands a client its own token back for valid
//! Basic credentials and an anonymous token (worth public reads) for none —
//! the flow docker, skopeo and containerd all follow.
use std::{
    fs::OpenOptions,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    task::{Context, Poll},
};

use anyhow::{Context as _, bail};
use axum::{body::Body, response::IntoResponse};
use futures::future::Either;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use subtle::ConstantTimeEq;
use tracing::{debug, info};

use crate::config::AuthConfig;

/// The write token file `serve` creates in its data directory when given
/// none; `import` looks there too.
pub const DEFAULT_TOKEN_FILE: &str = "write-tokens";

/// Random bytes in a generated token.
const TOKEN_BYTES: usize = 32;

/// The tokens of one file.
pub struct Tokens(Vec<String>);

impl Tokens {
    /// One token a line; blank lines and lines starting with `#` are
    /// skipped, surrounding whitespace is not part of a token.
    pub fn read(path: &Path) -> anyhow::Result<Tokens> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading the token file {}", path.display()))?;
        Ok(Tokens(
            text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect(),
        ))
    }

    /// The first token, for a client that sends one.
    pub fn first(&self) -> Option<&str> {
        self.0.first().map(String::as_str)
    }

    /// Compares `token` with every token in constant time, so response
    /// timing tells nothing about how much of a guess was right (only a
    /// length mismatch returns early, and generated tokens all have one
    /// length).
    fn contains(&self, token: &[u8]) -> bool {
        self.0.iter().fold(subtle::Choice::from(0), |found, t| found | t.as_bytes().ct_eq(token)).into()
    }
}

/// The token a client sends: the first of `token_file`; else
/// `$STOREFRONT_TOKEN`; else the first of the default data directory's
/// write token file when readable (so `serve` and the clients on one
/// machine need no setup); else none.
pub fn client_token(token_file: Option<&Path>) -> anyhow::Result<Option<String>> {
    if let Some(file) = token_file {
        let tokens = Tokens::read(file)?;
        let first = tokens.first().with_context(|| format!("the token file {} holds no token", file.display()))?;
        return Ok(Some(first.to_owned()));
    }
    if let Ok(token) = std::env::var(castore::grpc::TOKEN_ENV)
        && !token.is_empty()
    {
        return Ok(Some(token));
    }
    Ok(Tokens::read(&crate::config::default_data_dir().join(DEFAULT_TOKEN_FILE))
        .ok()
        .and_then(|t| t.first().map(str::to_owned)))
}

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    Nothing,
    Read,
    Write,
    /// The OCI version check `GET /v2/`, which registry clients send before
    /// anything else: its 401 challenge is what makes them send
    /// credentials at all (skopeo and docker send none unless challenged
    /// there). So it asks for a valid token unless nothing on this server
    /// needs one, and so also tells `docker login` whether a token is good.
    Login,
    /// `GET /v2/token`, the token realm registry clients are sent to by the
    /// Bearer challenge (answered here, see [`token_response`]).
    Token,
}

/// The registry's token realm, named in its Bearer challenges.
const TOKEN_PATH: &str = "/v2/token";
/// What a client that presents no credentials gets from the token realm;
/// presented back, it counts as no token.
const ANONYMOUS: &str = "anonymous";

impl Need {
    fn of<B>(req: &Request<B>) -> Need {
        let path = req.uri().path();
        if path == "/healthz" {
            Need::Nothing
        } else if path == TOKEN_PATH && matches!(*req.method(), Method::GET | Method::HEAD) {
            Need::Token
        } else if crate::serve::is_grpc(req) {
            if path.rsplit('/').next() == Some("Put") { Need::Write } else { Need::Read }
        } else if (path == "/v2/" || path == "/v2") && matches!(*req.method(), Method::GET | Method::HEAD) {
            Need::Login
        } else if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
            Need::Read
        } else {
            Need::Write
        }
    }
}

/// The token sets a server checks requests against.
pub struct Policy {
    write: Option<Tokens>,
    anonymous_writes: bool,
    /// `None`: reads are public.
    read: Option<Tokens>,
}

impl Policy {
    /// Reads the token files; with neither a write token file nor anonymous
    /// writes, uses `<data>/write-tokens`, created on first start. Logs
    /// what the server demands.
    pub fn load(cfg: &AuthConfig, data: &Path) -> anyhow::Result<Policy> {
        let write_file = match (&cfg.write_token_file, cfg.allow_anonymous_writes) {
            (Some(file), _) => Some(file.clone()),
            (None, true) => None,
            (None, false) => Some(default_token_file(data)?),
        };
        let write = write_file.as_deref().map(Tokens::read).transpose()?;
        if let (Some(tokens), Some(file)) = (&write, &write_file)
            && tokens.0.is_empty()
            && !cfg.allow_anonymous_writes
        {
            bail!(
                "the write token file {} holds no token: add one a line, or pass --allow-anonymous-writes",
                file.display()
            );
        }
        let read = cfg.read_token_file.as_deref().map(Tokens::read).transpose()?;
        if let (Some(tokens), Some(file)) = (&read, &cfg.read_token_file)
            && tokens.0.is_empty()
        {
            bail!("the read token file {} holds no token", file.display());
        }
        if cfg.allow_anonymous_writes {
            info!("writes need no token (--allow-anonymous-writes)");
        } else if let Some(file) = &write_file {
            info!(file = %file.display(), "writes need a token from the write token file");
        }
        match &cfg.read_token_file {
            Some(file) => info!(file = %file.display(), "reads need a read or write token"),
            None => info!("reads are public"),
        }
        Ok(Policy { write, anonymous_writes: cfg.allow_anonymous_writes, read })
    }

    pub fn layer(self) -> AuthLayer {
        AuthLayer(Arc::new(self))
    }

    /// Whether `token` is any token of this server.
    fn valid(&self, token: &[u8]) -> bool {
        self.write.as_ref().is_some_and(|w| w.contains(token)) || self.read.as_ref().is_some_and(|r| r.contains(token))
    }

    fn allows(&self, need: Need, token: Option<&[u8]>) -> bool {
        let writer = matches!((&self.write, token), (Some(w), Some(t)) if w.contains(t));
        let reader = writer
            || match (&self.read, token) {
                (None, _) => true,
                (Some(r), Some(t)) => r.contains(t),
                (Some(_), None) => false,
            };
        match need {
            Need::Nothing | Need::Token => true,
            Need::Read => reader,
            Need::Write => writer || (self.anonymous_writes && reader),
            Need::Login => {
                let open = self.read.is_none() && (self.anonymous_writes || self.write.is_none());
                let known = writer || matches!((&self.read, token), (Some(r), Some(t)) if r.contains(t));
                open || known
            }
        }
    }
}

/// `<data>/write-tokens`, created with one random token if it does not
/// exist yet (readable by the owner only).
fn default_token_file(data: &Path) -> anyhow::Result<PathBuf> {
    let path = data.join(DEFAULT_TOKEN_FILE);
    let mut file = match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(path),
        Err(e) => return Err(e).with_context(|| format!("creating the write token file {}", path.display())),
    };
    let mut secret = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("reading the OS random source: {e}"))?;
    let token = data_encoding::BASE64URL_NOPAD.encode(&secret);
    writeln!(
        file,
        "# storefront write tokens, one a line: a client sends one as `Authorization: Bearer TOKEN`\n\
         # or as the Basic-auth password (any user name, e.g. in a netrc file).\n{token}"
    )
    .and_then(|()| file.sync_all())
    .with_context(|| format!("writing the write token file {}", path.display()))?;
    info!(
        "write token file created at {}; clients send a token as Bearer or as the Basic-auth password, \
         e.g. in a netrc file",
        path.display()
    );
    Ok(path)
}

/// The token of an `Authorization` header: a Bearer token, or the password
/// of Basic credentials.
fn presented(headers: &HeaderMap) -> Option<Vec<u8>> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        (rest != ANONYMOUS).then(|| rest.as_bytes().to_vec())
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = data_encoding::BASE64.decode(rest.as_bytes()).ok()?;
        let colon = decoded.iter().position(|&b| b == b':')?;
        Some(decoded[colon + 1..].to_vec())
    } else {
        None
    }
}

/// The answer to a refused request, in its protocol's terms: gRPC status
/// UNAUTHENTICATED, or HTTP 401 with a Basic challenge (which makes curl,
/// and so Nix, send netrc credentials).
fn refusal<B>(req: &Request<B>, need: Need, token_sent: bool) -> Response<Body> {
    let what = match need {
        Need::Write => "writing needs a write token",
        Need::Login => "logging in needs a read or write token",
        _ => "reading needs a token",
    };
    let sent = if token_sent { " (the token sent is not one)" } else { "" };
    debug!(method = %req.method(), path = req.uri().path(), "refused: {what}{sent}");
    if crate::serve::is_grpc(req) {
        let msg = format!(
            "{what}{sent}: send it as metadata `authorization: Bearer TOKEN` \
             (storefront import: --token-file FILE or STOREFRONT_TOKEN)"
        );
        return tonic::Status::unauthenticated(msg).into_http();
    }
    let body = format!(
        "{what}{sent}: send it as `Authorization: Bearer TOKEN` or as the password of Basic auth \
         (any user name, e.g. in a netrc file)\n"
    );
    if is_registry(req.uri().path()) {
        // The OCI error body and a Bearer challenge: registry clients
        // (docker, skopeo, containerd) fetch a token from the realm, with
        // their configured credentials or anonymously, and present it.
        return registry_unauthorized(body.trim_end(), &bearer_challenge(req));
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"storefront\""), (header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// An OCI `UNAUTHORIZED` answer with `challenge`.
fn registry_unauthorized(message: &str, challenge: &str) -> Response<Body> {
    let mut response = registry::error::RegistryError::new(registry::error::ErrorCode::Unauthorized, message)
        .with_header(header::WWW_AUTHENTICATE, challenge)
        .into_response();
    response.headers_mut().insert(registry::distribution::API_VERSION, http::HeaderValue::from_static("registry/2.0"));
    response
}

/// `Bearer realm="http://HOST/v2/token",service="storefront"`, the realm
/// on the host the client reached us by.
fn bearer_challenge<B>(req: &Request<B>) -> String {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_else(|| "localhost".to_owned());
    let scheme = req.uri().scheme_str().unwrap_or("http");
    format!("Bearer realm=\"{scheme}://{host}{TOKEN_PATH}\",service=\"storefront\"")
}

/// The token realm: credentials (Basic, as clients send them there) that
/// hold a valid token get that token back; none get an anonymous token
/// (reads, when they are public); wrong ones get 401, so `docker login`
/// tells a bad token from a good one.
fn token_response<B>(policy: &Policy, req: &Request<B>) -> Response<Body> {
    let token = match presented(req.headers()) {
        None => ANONYMOUS.to_owned(),
        Some(t) if policy.allows(Need::Login, Some(&t)) || policy.valid(&t) => String::from_utf8_lossy(&t).into_owned(),
        Some(_) => {
            debug!("token realm: refused credentials");
            return registry_unauthorized(
                "the credentials' password is not a token of this server",
                "Basic realm=\"storefront\"",
            );
        }
    };
    let body = serde_json::json!({ "token": token, "access_token": token, "expires_in": 3600 });
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// Whether a path is the OCI registry's (`/v2/…`).
fn is_registry(path: &str) -> bool {
    path == "/v2" || path.starts_with("/v2/")
}

/// Checks every request against a [`Policy`] before the service sees it.
#[derive(Clone)]
pub struct AuthLayer(Arc<Policy>);

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth { inner, policy: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    policy: Arc<Policy>,
}

impl<S, B> tower::Service<Request<B>> for Auth<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<std::future::Ready<Result<Response<Body>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let need = Need::of(&req);
        if need == Need::Nothing {
            return Either::Right(self.inner.call(req));
        }
        if need == Need::Token {
            return Either::Left(std::future::ready(Ok(token_response(&self.policy, &req))));
        }
        let token = presented(req.headers());
        if self.policy.allows(need, token.as_deref()) {
            Either::Right(self.inner.call(req))
        } else {
            Either::Left(std::future::ready(Ok(refusal(&req, need, token.is_some()))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(list: &[&str]) -> Option<Tokens> {
        Some(Tokens(list.iter().map(|t| t.to_string()).collect()))
    }

    fn request(method: &str, path: &str, grpc: bool) -> Request<()> {
        let mut b = Request::builder().method(method).uri(path);
        if grpc {
            b = b.header(header::CONTENT_TYPE, "application/grpc+proto");
        }
        b.body(()).unwrap()
    }

    #[test]
    fn what_requests_need() {
        let cases = [
            ("GET", "/healthz", false, Need::Nothing),
            ("PUT", "/healthz", false, Need::Nothing),
            ("GET", "/nix-cache-info", false, Need::Read),
            ("HEAD", "/abc.narinfo", false, Need::Read),
            ("OPTIONS", "/v2/", false, Need::Read),
            ("GET", "/v2/", false, Need::Login),
            ("GET", "/v2/token", false, Need::Token),
            ("POST", "/v2/token", false, Need::Write),
            ("HEAD", "/v2", false, Need::Login),
            ("GET", "/v2/x/manifests/y", false, Need::Read),
            ("PUT", "/abc.narinfo", false, Need::Write),
            ("POST", "/v2/x/blobs/uploads/", false, Need::Write),
            ("DELETE", "/v2/x/manifests/y", false, Need::Write),
            ("POST", "/snix.castore.v1.BlobService/Put", true, Need::Write),
            ("POST", "/tvix.castore.v1.DirectoryService/Put", true, Need::Write),
            ("POST", "/snix.store.v1.PathInfoService/Put", true, Need::Write),
            ("POST", "/snix.castore.v1.BlobService/Read", true, Need::Read),
            ("POST", "/snix.store.v1.PathInfoService/CalculateNAR", true, Need::Read),
            ("POST", "/grpc.health.v1.Health/Check", true, Need::Read),
        ];
        for (method, path, grpc, need) in cases {
            assert_eq!(Need::of(&request(method, path, grpc)), need, "{method} {path}");
        }
    }

    #[test]
    fn policies() {
        let secure = Policy { write: tokens(&["w1", "w2"]), anonymous_writes: false, read: None };
        assert!(secure.allows(Need::Read, None));
        assert!(secure.allows(Need::Read, Some(b"wrong")), "a wrong token does not hurt a public read");
        assert!(!secure.allows(Need::Write, None));
        assert!(!secure.allows(Need::Write, Some(b"w")));
        assert!(!secure.allows(Need::Write, Some(b"w1x")));
        assert!(secure.allows(Need::Write, Some(b"w2")));

        let private = Policy { write: tokens(&["w"]), anonymous_writes: false, read: tokens(&["r"]) };
        assert!(!private.allows(Need::Read, None));
        assert!(private.allows(Need::Read, Some(b"r")));
        assert!(private.allows(Need::Read, Some(b"w")), "a write token reads too");
        assert!(!private.allows(Need::Write, Some(b"r")), "a read token does not write");
        assert!(private.allows(Need::Nothing, None));

        // The registry's login check: a token that is one, else refused.
        assert!(!secure.allows(Need::Login, None), "a server that needs tokens challenges registry clients");
        assert!(!secure.allows(Need::Login, Some(b"wrong")), "docker login learns of a bad token");
        assert!(secure.allows(Need::Login, Some(b"w1")));
        assert!(!private.allows(Need::Login, None));
        assert!(private.allows(Need::Login, Some(b"r")) && private.allows(Need::Login, Some(b"w")));

        let open = Policy { write: None, anonymous_writes: true, read: None };
        assert!(open.allows(Need::Login, None) && open.allows(Need::Login, Some(b"junk")));
        assert!(open.allows(Need::Write, None) && open.allows(Need::Write, Some(b"junk")));
        let open_private = Policy { write: None, anonymous_writes: true, read: tokens(&["r"]) };
        assert!(!open_private.allows(Need::Write, None), "with private reads, anonymous writes still need to read");
        assert!(open_private.allows(Need::Write, Some(b"r")));
        assert!(!open_private.allows(Need::Login, None) && open_private.allows(Need::Login, Some(b"r")));
    }

    #[test]
    fn tokens_from_headers() {
        let with = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, value.parse().unwrap());
            presented(&h)
        };
        assert_eq!(with("Bearer abc"), Some(b"abc".to_vec()));
        assert_eq!(with("bearer   abc "), Some(b"abc".to_vec()));
        // base64("nix:tok:en") — the password is everything after the first colon.
        assert_eq!(with(&format!("Basic {}", data_encoding::BASE64.encode(b"nix:tok:en"))), Some(b"tok:en".to_vec()));
        assert_eq!(with(&format!("Basic {}", data_encoding::BASE64.encode(b":tok"))), Some(b"tok".to_vec()));
        assert_eq!(with("Basic !!!"), None);
        assert_eq!(with(&format!("Basic {}", data_encoding::BASE64.encode(b"no-colon"))), None);
        assert_eq!(with("Digest abc"), None);
        assert_eq!(presented(&HeaderMap::new()), None);
    }

    #[test]
    fn token_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "# a comment\n\n  first  \n#second\nthird\n").unwrap();
        let t = Tokens::read(&file).unwrap();
        assert_eq!(t.first(), Some("first"));
        assert!(t.contains(b"first") && t.contains(b"third"));
        assert!(!t.contains(b"#second") && !t.contains(b"") && !t.contains(b"  first  "));

        // The default file: created once, 0600, one token, then reused.
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let path = default_token_file(&data).unwrap();
        let token = Tokens::read(&path).unwrap().first().unwrap().to_owned();
        assert_eq!(token.len(), 43, "32 bytes in unpadded base64url: {token}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(default_token_file(&data).unwrap(), path);
        assert_eq!(Tokens::read(&path).unwrap().first(), Some(token.as_str()));

        let empty = dir.path().join("empty");
        std::fs::write(&empty, "# nothing\n").unwrap();
        let cfg = |anonymous| AuthConfig {
            write_token_file: Some(empty.clone()),
            read_token_file: None,
            allow_anonymous_writes: anonymous,
        };
        let err = Policy::load(&cfg(false), &data).err().expect("an empty write token file is refused");
        assert!(err.to_string().contains("holds no token"), "{err}");
        assert!(Policy::load(&cfg(true), &data).is_ok());
    }
}
