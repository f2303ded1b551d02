//! One upstream cache: where its files are and how they are read.
use std::{
    fmt, io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use futures::TryStreamExt;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, ReadBuf};
use url::Url;

use super::Body;
use crate::{CacheError, Compression};

/// One upstream cache: a base URL that ends in `/`.
pub(super) struct Upstream {
    pub(super) base: Url,
}

impl Upstream {
    pub(super) fn new(url: &Url) -> Result<Self, CacheError> {
        let bad = |why: &str| CacheError::Config(format!("upstream {}: {why}", redacted(url)));
        match url.scheme() {
            "http" | "https" if url.host().is_none() => return Err(bad("no host")),
            "http" | "https" => {}
            "file" if url.to_file_path().is_err() => return Err(bad("not a local directory (use file:///abs/dir)")),
            "file" => {}
            _ => return Err(bad("only http://, https:// and file:///dir upstreams are supported")),
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("query parameters and fragments are not supported"));
        }
        let mut base = url.clone();
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Ok(Self { base })
    }

    /// `rel` (a narinfo name, or a narinfo's `URL`) against the base;
    /// refused when it leads off this cache.
    pub(super) fn resolve(&self, rel: &str) -> Result<Url, String> {
        let url = self.base.join(rel).map_err(|e| format!("URL {rel:?}: {e}"))?;
        let inside = match self.base.scheme() {
            "file" => url.scheme() == "file" && url.path().starts_with(self.base.path()),
            _ => url.origin() == self.base.origin(),
        };
        if !inside {
            return Err(format!("URL {rel:?} leads outside the upstream cache"));
        }
        Ok(url)
    }

    /// The body at `url`, undone of any `Content-Encoding`; `None` when
    /// absent (404, 403, no such file).
    pub(super) async fn open(&self, client: &reqwest::Client, url: &Url) -> Result<Option<Body>, String> {
        if url.scheme() == "file" {
            let path = url.to_file_path().map_err(|()| format!("{url}: not a local path"))?;
            return match tokio::fs::File::open(&path).await {
                Ok(f) => Ok(Some(Box::new(f))),
                Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied) => Ok(None),
                Err(e) => Err(format!("{}: {e}", path.display())),
            };
        }
        let response = client.get(url.clone()).send().await.map_err(|e| format!("{}: {}", redacted(url), chain(&e)))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::FORBIDDEN {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(format!("{}: HTTP {status}", redacted(url)));
        }
        let encoding = match response.headers().get(http::header::CONTENT_ENCODING) {
            None => Compression::None,
            Some(v) => v
                .to_str()
                .map_err(|_| "unreadable Content-Encoding".to_owned())
                .and_then(|v| Compression::from_content_encoding(v).map_err(|e| e.to_string()))
                .map_err(|e| format!("{}: {e}", redacted(url)))?,
        };
        let body = tokio_util::io::StreamReader::new(response.bytes_stream().map_err(io::Error::other));
        Ok(Some(encoding.decoder(body)))
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redacted(&self.base))
    }
}

/// A URL for messages: without a password.
pub(super) fn redacted(url: &Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    url.to_string()
}

/// An error with its sources (reqwest's own message is terse).
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(e) = source {
        s.push_str(": ");
        s.push_str(&e.to_string());
        source = e.source();
    }
    s
}

/// The compressed file as it passes: its size, and its SHA-256 when
/// there is a FileHash to check.
pub(super) struct FileReader {
    pub(super) inner: Body,
    pub(super) sha: Option<Sha256>,
    pub(super) size: u64,
}

impl AsyncRead for FileReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        this.size += new.len() as u64;
        if let Some(sha) = &mut this.sha {
            sha.update(new);
        }
        Poll::Ready(Ok(()))
    }
}
