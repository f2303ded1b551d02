//! The OCI error vocabulary: every refusal the registry sends is a
//! [`RegistryError`], answered as the distribution spec's JSON body
//! `{"errors":[{"code":…,"message":…,"detail":…}]}` with the status the
//! spec (or, where it is silent, the reference registry) gives its code.
use std::fmt;

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};

/// The error codes of the distribution spec, plus `RANGE_INVALID` (the
/// reference registry's code for an upload chunk out of order) and
/// `UNKNOWN` (a failure of the server itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    RangeInvalid,
    Unknown,
}

impl ErrorCode {
    /// The code as it appears in the JSON body.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::Unknown => "UNKNOWN",
        }
    }

    /// The status a code is answered with unless an error says otherwise.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BlobUnknown
            | ErrorCode::BlobUploadUnknown
            | ErrorCode::ManifestBlobUnknown
            | ErrorCode::ManifestUnknown
            | ErrorCode::NameUnknown => StatusCode::NOT_FOUND,
            ErrorCode::BlobUploadInvalid
            | ErrorCode::DigestInvalid
            | ErrorCode::ManifestInvalid
            | ErrorCode::NameInvalid
            | ErrorCode::SizeInvalid => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Denied => StatusCode::FORBIDDEN,
            ErrorCode::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request the registry refuses (or fails), in the spec's terms. Boxed:
/// handlers pass it up through many `?`s.
#[derive(Debug)]
pub struct RegistryError(Box<Inner>);

#[derive(Debug)]
struct Inner {
    code: ErrorCode,
    status: StatusCode,
    message: String,
    detail: Option<serde_json::Value>,
    headers: HeaderMap,
}

impl RegistryError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self(Box::new(Inner {
            code,
            status: code.status(),
            message: message.into(),
            detail: None,
            headers: HeaderMap::new(),
        }))
    }

    pub fn blob_unknown(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BlobUnknown, message)
    }

    pub fn blob_upload_invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BlobUploadInvalid, message)
    }

    pub fn blob_upload_unknown(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BlobUploadUnknown, message)
    }

    pub fn digest_invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::DigestInvalid, message)
    }

    pub fn manifest_blob_unknown(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ManifestBlobUnknown, message)
    }

    pub fn manifest_invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ManifestInvalid, message)
    }

    pub fn manifest_unknown(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ManifestUnknown, message)
    }

    pub fn name_invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NameInvalid, message)
    }

    pub fn name_unknown(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NameUnknown, message)
    }

    pub fn size_invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::SizeInvalid, message)
    }

    pub fn denied(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Denied, message)
    }

    /// An operation this registry does not offer (405).
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unsupported, message)
    }

    /// A body over a size limit: 413, code `SIZE_INVALID`.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::SizeInvalid, message).with_status(StatusCode::PAYLOAD_TOO_LARGE)
    }

    /// A failure of the server (storage, a remote backend): 500 `UNKNOWN`.
    pub fn internal(error: impl fmt::Display) -> Self {
        Self::new(ErrorCode::Unknown, error.to_string())
    }

    /// Answers with `status` instead of the code's usual one.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.0.status = status;
        self
    }

    /// Adds the spec's free-form `detail`.
    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.0.detail = Some(detail);
        self
    }

    /// Adds a response header (e.g. `Range` on a refused chunk).
    pub fn with_header(mut self, name: HeaderName, value: impl fmt::Display) -> Self {
        if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
            self.0.headers.append(name, v);
        }
        self
    }

    pub fn code(&self) -> ErrorCode {
        self.0.code
    }

    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        let mut error = serde_json::json!({ "code": self.0.code.as_str(), "message": self.0.message });
        if let Some(detail) = &self.0.detail {
            error["detail"] = detail.clone();
        }
        serde_json::json!({ "errors": [error] })
    }
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.0.code, self.0.message)
    }
}

impl std::error::Error for RegistryError {}

impl From<castore::Error> for RegistryError {
    fn from(e: castore::Error) -> Self {
        match e {
            castore::Error::TooLarge(m) => RegistryError::too_large(m),
            castore::Error::Remote(s) if s.code() == tonic::Code::ResourceExhausted => {
                RegistryError::too_large(s.message().to_owned())
            }
            castore::Error::Remote(s)
                if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded) =>
            {
                RegistryError::internal(format!("storage backend: {}", s.message()))
                    .with_status(StatusCode::SERVICE_UNAVAILABLE)
            }
            // Anything else reaching a handler is the server's failure: a
            // client's mistakes are refused with their own codes before
            // castore sees them.
            e => RegistryError::internal(e),
        }
    }
}

impl From<std::io::Error> for RegistryError {
    fn from(e: std::io::Error) -> Self {
        RegistryError::internal(format!("i/o error: {e}"))
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "registry request failed");
        } else {
            tracing::debug!(error = %self, %status, "registry request refused");
        }
        let body = serde_json::to_vec(&self.body()).expect("JSON values serialise");
        let mut response = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        response.headers_mut().extend(self.0.headers);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_bodies() {
        let e = RegistryError::blob_unknown("no such blob");
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        assert_eq!(e.body(), serde_json::json!({"errors": [{"code": "BLOB_UNKNOWN", "message": "no such blob"}]}));
        let e = RegistryError::manifest_blob_unknown("x").with_detail(serde_json::json!({"digest": "sha256:00"}));
        assert_eq!(e.body()["errors"][0]["detail"]["digest"], "sha256:00");
        assert_eq!(RegistryError::too_large("big").status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(RegistryError::too_large("big").code(), ErrorCode::SizeInvalid);
        assert_eq!(RegistryError::unsupported("no").status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(RegistryError::from(castore::Error::Storage("disk".into())).status(), 500);
        let r = RegistryError::new(ErrorCode::RangeInvalid, "order").with_header(header::RANGE, "0-9").into_response();
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(r.headers()[header::RANGE], "0-9");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
    }
}
