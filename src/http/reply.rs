//! Responses shaped as etcd's Go `net/http` handlers shape them (status,
//! body bytes, the headers clients look at), and the query string read as
//! Go's `url.Values` reads it.

use axum::body::Body;
use axum::response::Response;
use http::{header, HeaderValue, StatusCode};

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

fn build(status: StatusCode, content_type: &str, body: String) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

/// A plain text answer (Go's handlers set `nosniff` with it).
pub fn text(status: StatusCode, body: String) -> Response {
    let mut resp = build(status, TEXT_PLAIN, body);
    resp.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// Go's `http.Error`: the message and a newline, as plain text.
pub fn error(status: StatusCode, message: &str) -> Response {
    text(status, format!("{message}\n"))
}

/// Go's `ServeMux` answer for a path nobody handles.
pub fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "404 page not found")
}

/// etcd's answer to anything but GET on a GET-only endpoint.
pub fn method_not_allowed() -> Response {
    let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET"));
    resp
}

/// A body with an explicit content type (JSON, Prometheus text, ...).
pub fn with_type(status: StatusCode, content_type: &str, body: String) -> Response {
    build(status, content_type, body)
}

/// A request's query parameters, in order, decoded.
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(query: Option<&str>) -> Query {
        Query(
            url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// Whether the parameter is there at all (`?verbose` counts).
    pub fn has(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    /// The first value of a parameter (Go's `Values.Get`).
    pub fn first(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every non-empty value of a parameter, as etcd's `getQuerySet`.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_reads_like_gos() {
        let q = Query::parse(Some(
            "verbose&exclude=a&exclude=&exclude=b%5F1&serializable=true",
        ));
        assert!(q.has("verbose"));
        assert!(!q.has("verb"));
        assert_eq!(q.all("exclude"), ["a", "b_1"]);
        assert_eq!(q.first("serializable"), Some("true"));
        assert_eq!(q.first("missing"), None);
        let empty = Query::parse(None);
        assert!(empty.all("exclude").is_empty());
    }
}
