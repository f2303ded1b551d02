//! The distribution API's URL space. Repository names contain `/`, so the
//! router hands over everything after `/v2/` and the endpoint is read from
//! the right: `<name>/manifests/<reference>`, `<name>/blobs/<digest>`,
//! `<name>/blobs/uploads/[<id>]`, `<name>/tags/list`,
//! `<name>/referrers/<digest>`, and `_catalog`.
use std::str::FromStr;

use crate::{
    error::RegistryError,
    oci::{Digest, DigestError},
};

/// Longest repository name accepted (what clients assume, with the host).
const MAX_NAME: usize = 255;

/// One endpoint, its repository name checked against the grammar.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Catalog,
    Tags {
        name: String,
    },
    Manifest {
        name: String,
        reference: String,
    },
    Blob {
        name: String,
        digest: String,
    },
    /// `<name>/blobs/uploads/`: starting an upload (or a mount).
    Uploads {
        name: String,
    },
    Upload {
        name: String,
        id: String,
    },
    Referrers {
        name: String,
        digest: String,
    },
}

/// Reads the path after `/v2/` (percent-decoded).
pub(crate) fn parse(tail: &str) -> Result<Route, RegistryError> {
    if tail == "_catalog" {
        return Ok(Route::Catalog);
    }
    let no_endpoint = || {
        RegistryError::new(crate::error::ErrorCode::Unsupported, format!("no endpoint /v2/{tail}"))
            .with_status(http::StatusCode::NOT_FOUND)
    };
    let (rest, last) = tail.rsplit_once('/').ok_or_else(no_endpoint)?;
    let (rest2, prev) = rest.rsplit_once('/').ok_or_else(no_endpoint)?;
    let route = match (prev, last) {
        ("manifests", reference) if !reference.is_empty() => {
            Route::Manifest { name: name(rest2)?, reference: reference.to_owned() }
        }
        ("tags", "list") => Route::Tags { name: name(rest2)? },
        ("referrers", digest) if !digest.is_empty() => {
            Route::Referrers { name: name(rest2)?, digest: digest.to_owned() }
        }
        ("blobs", digest) if !digest.is_empty() => Route::Blob { name: name(rest2)?, digest: digest.to_owned() },
        ("uploads", id) => match rest2.rsplit_once('/') {
            Some((repo, "blobs")) if id.is_empty() => Route::Uploads { name: name(repo)? },
            Some((repo, "blobs")) => Route::Upload { name: name(repo)?, id: id.to_owned() },
            _ => return Err(no_endpoint()),
        },
        _ => return Err(no_endpoint()),
    };
    Ok(route)
}

/// Checks a repository name: components
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` joined by `/`, 255 bytes at most.
pub(crate) fn name(name: &str) -> Result<String, RegistryError> {
    let invalid = |why: &str| RegistryError::name_invalid(format!("invalid repository name {name:?}: {why}"));
    if name.is_empty() {
        return Err(invalid("empty"));
    }
    if name.len() > MAX_NAME {
        return Err(invalid(&format!("longer than {MAX_NAME} bytes")));
    }
    for component in name.split('/') {
        if !valid_component(component) {
            return Err(invalid(
                "each /-separated component must be lower-case letters and digits, joined by '.', '_', '__' or dashes",
            ));
        }
    }
    Ok(name.to_owned())
}

fn valid_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// Whether `tag` fits `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub(crate) fn is_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && word(bytes[0])
        && bytes[1..].iter().all(|&b| word(b) || b == b'.' || b == b'-')
}

/// A manifest reference: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reference {
    Tag(String),
    Digest(Digest),
}

/// Why a reference names nothing this registry can hold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BadReference {
    /// Neither a tag nor a well-formed digest.
    Invalid(String),
    /// A well-formed digest of an algorithm other than sha256: nothing
    /// stored here can have it.
    Algorithm(String),
}

impl Reference {
    pub(crate) fn parse(s: &str) -> Result<Reference, BadReference> {
        if s.contains(':') {
            return parse_digest(s).map(Reference::Digest);
        }
        if is_tag(s) {
            Ok(Reference::Tag(s.to_owned()))
        } else {
            Err(BadReference::Invalid(format!("{s:?} is not a tag")))
        }
    }
}

/// A digest from a URL: sha256 as [`Digest`]; other algorithms, when they
/// follow the OCI digest grammar, as [`BadReference::Algorithm`].
pub(crate) fn parse_digest(s: &str) -> Result<Digest, BadReference> {
    match Digest::from_str(s) {
        Ok(d) => Ok(d),
        Err(DigestError::Algorithm(a)) if well_formed_digest(s) => {
            Err(BadReference::Algorithm(format!("digest algorithm {a:?} is not supported (use sha256)")))
        }
        Err(e) => Err(BadReference::Invalid(e.to_string())),
    }
}

/// `algorithm:encoded` per the OCI image spec's grammar.
fn well_formed_digest(s: &str) -> bool {
    let Some((algo, encoded)) = s.split_once(':') else { return false };
    let algo_ok = !algo.is_empty()
        && algo
            .split(['+', '.', '_', '-'])
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    let encoded_ok =
        !encoded.is_empty() && encoded.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'));
    algo_ok && encoded_ok
}

/// The query parameters the API uses, percent-decoded.
#[derive(Debug, Default)]
pub(crate) struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub(crate) fn parse(query: Option<&str>) -> Query {
        let pairs = query
            .map(|q| url::form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
            .unwrap_or_default();
        Query { pairs }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub(crate) fn all(&self, key: &str) -> impl Iterator<Item = &str> {
        self.pairs.iter().filter(move |(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn routes() {
        let s = |x: &str| x.to_owned();
        assert_eq!(parse("_catalog").unwrap(), Route::Catalog);
        assert_eq!(parse("a/b/manifests/latest").unwrap(), Route::Manifest { name: s("a/b"), reference: s("latest") });
        assert_eq!(parse("a/tags/list").unwrap(), Route::Tags { name: s("a") });
        assert_eq!(parse(&format!("x/blobs/{D}")).unwrap(), Route::Blob { name: s("x"), digest: s(D) });
        assert_eq!(parse("x/y/blobs/uploads/").unwrap(), Route::Uploads { name: s("x/y") });
        assert_eq!(parse("x/blobs/uploads/abc").unwrap(), Route::Upload { name: s("x"), id: s("abc") });
        assert_eq!(parse(&format!("r/referrers/{D}")).unwrap(), Route::Referrers { name: s("r"), digest: s(D) });
        // Endpoint words are fine as name components.
        assert_eq!(
            parse("manifests/blobs/manifests/v1").unwrap(),
            Route::Manifest { name: s("manifests/blobs"), reference: s("v1") }
        );
        assert_eq!(parse(&format!("a/blobs/blobs/{D}")).unwrap(), Route::Blob { name: s("a/blobs"), digest: s(D) });
        for bad in ["", "a", "a/manifests/", "a/blobs/", "a/uploads/", "a/other/x", "manifests/x"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse("A/manifests/x").unwrap_err().code(), crate::error::ErrorCode::NameInvalid);
    }

    #[test]
    fn names() {
        for ok in ["a", "a/b", "library/hello-world", "a.b_c__d---e/f0", "0", "nix-snapshotter/pkgs/git"] {
            assert!(name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "A", "a//b", "/a", "a/", "-a", "a-", "a..b", "a___b", "a._b", "a b", "ä", &"a".repeat(256)] {
            assert!(name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tags_and_references() {
        for ok in ["latest", "v1.0", "_x", "A-b.c_d", &"t".repeat(128)] {
            assert!(is_tag(ok), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", &"t".repeat(129)] {
            assert!(!is_tag(bad), "{bad:?}");
        }
        assert_eq!(Reference::parse("v1"), Ok(Reference::Tag("v1".into())));
        assert!(matches!(Reference::parse(D), Ok(Reference::Digest(_))));
        assert!(matches!(Reference::parse(&format!("sha512:{}", "ab".repeat(64))), Err(BadReference::Algorithm(_))));
        assert!(matches!(Reference::parse("sha256:xyz"), Err(BadReference::Invalid(_))));
        assert!(matches!(Reference::parse("no:t a digest"), Err(BadReference::Invalid(_))));
    }

    #[test]
    fn queries() {
        let q = Query::parse(Some("digest=sha256%3Aab&n=2&digest=x&artifactType=application%2Fvnd.x%2Bjson"));
        assert_eq!(q.get("digest"), Some("sha256:ab"));
        assert_eq!(q.all("digest").collect::<Vec<_>>(), ["sha256:ab", "x"]);
        assert_eq!(q.get("artifactType"), Some("application/vnd.x+json"));
        assert_eq!(q.get("last"), None);
        assert_eq!(Query::parse(None).get("n"), None);
    }
}
