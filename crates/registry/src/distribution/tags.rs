//! `GET /v2/<name>/tags/list` and `GET /v2/_catalog`, both paged with
//! `n` and `last` and a `Link: <…>; rel="next"` header when a page is cut
//! short. Lists come from `KvStore::scan_prefix`, already in ascending
//! (byte, so ASCII-betical) order.
use axum::{
    body::Body,
    http::{StatusCode, header},
    response::Response,
};
use futures::{Stream, StreamExt, TryStreamExt};

use super::{records, routing::Query};
use crate::{
    Registry,
    error::{ErrorCode, RegistryError},
};

/// Largest page served, whatever `n` asks for (a `Link` leads on).
pub const MAX_PAGE: usize = 10_000;

/// One page of a sorted list.
struct Page {
    items: Vec<String>,
    /// The list goes on after the last item.
    more: bool,
}

/// `n` (page size; absent: everything up to [`MAX_PAGE`]) and `last` (start
/// after this item).
fn paging(query: &Query) -> Result<(Option<usize>, Option<String>), RegistryError> {
    let n = match query.get("n") {
        None | Some("") => None,
        Some(n) => Some(n.parse::<usize>().map_err(|_| {
            RegistryError::new(ErrorCode::Unsupported, format!("n={n:?} is not a non-negative integer"))
                .with_status(StatusCode::BAD_REQUEST)
        })?),
    };
    Ok((n, query.get("last").filter(|l| !l.is_empty()).map(str::to_owned)))
}

async fn page(
    items: impl Stream<Item = Result<String, RegistryError>>,
    n: Option<usize>,
    last: Option<&str>,
) -> Result<Page, RegistryError> {
    let limit = n.unwrap_or(MAX_PAGE).min(MAX_PAGE);
    let mut out = Vec::new();
    let mut items = std::pin::pin!(items);
    while let Some(item) = items.next().await {
        let item = item?;
        if last.is_some_and(|l| item.as_str() <= l) {
            continue;
        }
        if out.len() == limit {
            return Ok(Page { items: out, more: true });
        }
        out.push(item);
    }
    Ok(Page { items: out, more: false })
}

fn link(path: &str, n: usize, last: &str) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("n", &n.to_string())
        .append_pair("last", last)
        .finish();
    format!("<{path}?{query}>; rel=\"next\"")
}

fn json_page(path: &str, page: Page, n: Option<usize>, body: serde_json::Value) -> Response {
    let mut response = Response::builder().header(header::CONTENT_TYPE, "application/json");
    if page.more
        && n != Some(0)
        && let Some(last) = page.items.last()
    {
        response = response.header(header::LINK, link(path, page.items.len(), last));
    }
    let bytes = serde_json::to_vec(&body).expect("JSON values serialise");
    response.body(Body::from(bytes)).expect("valid response")
}

/// `GET /v2/<name>/tags/list`.
pub(crate) async fn list(registry: &Registry, name: &str, query: &Query) -> Result<Response, RegistryError> {
    let meta = registry.meta.as_ref();
    let generated = registry.generated_tags(name).await?;
    if generated.is_none() && !records::repo_exists(meta, name).await? {
        return Err(RegistryError::name_unknown(format!("no repository {name}")));
    }
    let (n, last) = paging(query)?;
    let page = if n == Some(0) {
        Page { items: Vec::new(), more: false }
    } else if let Some(mut tags) = generated {
        // Images defined from store paths: their tags, and any pushed ones.
        let stored: Vec<String> =
            records::tags(meta, name).map(|t| t.map(|(tag, _)| tag)).try_collect::<Vec<_>>().await?;
        tags.extend(stored);
        tags.sort();
        tags.dedup();
        page(futures::stream::iter(tags.into_iter().map(Ok)), n, last.as_deref()).await?
    } else {
        let tags = records::tags(meta, name).map(|t| t.map(|(tag, _)| tag));
        page(tags, n, last.as_deref()).await?
    };
    let body = serde_json::json!({ "name": name, "tags": page.items });
    Ok(json_page(&format!("/v2/{name}/tags/list"), page, n, body))
}

/// `GET /v2/_catalog`: every repository that holds a blob or manifest.
pub(crate) async fn catalog(registry: &Registry, query: &Query) -> Result<Response, RegistryError> {
    let (n, last) = paging(query)?;
    let page = if n == Some(0) {
        Page { items: Vec::new(), more: false }
    } else {
        // Stored repositories and those of defined images (both flavours).
        let mut repos: Vec<String> = records::repos(registry.meta.as_ref()).try_collect().await?;
        repos.extend(registry.generated_repositories().await?);
        repos.sort();
        repos.dedup();
        page(futures::stream::iter(repos.into_iter().map(Ok)), n, last.as_deref()).await?
    };
    let body = serde_json::json!({ "repositories": page.items });
    Ok(json_page("/v2/_catalog", page, n, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(v: &[&str]) -> impl Stream<Item = Result<String, RegistryError>> {
        futures::stream::iter(v.iter().map(|s| Ok(s.to_string())).collect::<Vec<_>>())
    }

    #[tokio::test]
    async fn pages() {
        let all = ["a", "b", "c", "d"];
        let p = page(items(&all), Some(2), None).await.unwrap();
        assert_eq!((p.items, p.more), (vec!["a".to_owned(), "b".to_owned()], true));
        let p = page(items(&all), Some(2), Some("b")).await.unwrap();
        assert_eq!((p.items, p.more), (vec!["c".to_owned(), "d".to_owned()], false));
        let p = page(items(&all), None, Some("bb")).await.unwrap();
        assert_eq!(p.items, ["c", "d"]);
        let p = page(items(&all), Some(10), None).await.unwrap();
        assert_eq!((p.items.len(), p.more), (4, false));
        assert_eq!(link("/v2/a/b/tags/list", 2, "v1.0"), "</v2/a/b/tags/list?n=2&last=v1.0>; rel=\"next\"");
        assert_eq!(link("/v2/_catalog", 1, "a/b"), "</v2/_catalog?n=1&last=a%2Fb>; rel=\"next\"");
    }
}
