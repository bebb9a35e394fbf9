//! Cross-site request forgery: state-changing API requests (login, logout, commands, acknowledgements) are
//! refused unless they come from the gateway's own pages, a configured origin, or a non-browser client.
//!
//! A cookie session is sent by the browser with any request to this host, also from another page of the same
//! *site* (another port on the host, a sibling subdomain: `SameSite=Strict` does not stop those). So:
//! - a request with a body must be `application/json`: a page cannot send that cross-origin without a CORS
//!   preflight, which this server never grants (`text/plain` and form posts are "simple" requests);
//! - `Origin`, which browsers send with every POST, must be the gateway's own (the `Host` it was reached at) or
//!   one of `http.allowed_origins` (a reverse proxy's public address); `Origin: null` (sandboxed frames,
//!   `file:`) is refused;
//! - without `Origin`, `Sec-Fetch-Site` (sent by current browsers) must be `same-origin` or `none`;
//! - a request with neither header is not from a browser (curl, scripts with HTTP Basic) and cannot carry a
//!   victim's cookie by accident: it passes.
//!
//! A CSRF token was considered: with the checks above it adds nothing for the browsers the dashboard supports
//! (all send `Origin` on POST), and it would break HTTP Basic scripts that never load a page.

use super::state::{ApiError, HttpState};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Why a request was refused (the `reason` label of `ivy_http_csrf_refused`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A body that is not `application/json`.
    ContentType,
    /// `Origin` of another site or port.
    Origin,
    /// `Sec-Fetch-Site` other than same-origin (and no `Origin`).
    FetchSite,
}

impl Refusal {
    /// Metric label.
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Refusal::ContentType => "content_type",
            Refusal::Origin => "origin",
            Refusal::FetchSite => "fetch_site",
        }
    }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || header_str(headers, header::CONTENT_LENGTH).is_some_and(|l| l.parse::<u64>().map_or(true, |n| n > 0))
}

fn is_json(headers: &HeaderMap) -> bool {
    header_str(headers, header::CONTENT_TYPE)
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// The authority (`host[:port]`) of an origin `scheme://authority`.
fn authority(origin: &str) -> Option<&str> {
    origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"))
}

/// Checks one state-changing request's headers; `allowed` are the configured extra origins.
pub(crate) fn check(headers: &HeaderMap, allowed: &[String]) -> Result<(), Refusal> {
    if has_body(headers) && !is_json(headers) {
        return Err(Refusal::ContentType);
    }
    if let Some(origin) = header_str(headers, header::ORIGIN) {
        let own = header_str(headers, header::HOST)
            .zip(authority(origin))
            .is_some_and(|(host, from)| host.eq_ignore_ascii_case(from));
        let configured = allowed.iter().any(|a| a.eq_ignore_ascii_case(origin));
        return if own || configured { Ok(()) } else { Err(Refusal::Origin) };
    }
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        None | Some("same-origin") | Some("none") => Ok(()),
        Some(_) => Err(Refusal::FetchSite),
    }
}

/// Middleware: applies [`check`] to every API request that is not GET, HEAD or OPTIONS (CSP reports excepted:
/// browsers send them with their own content type, and they change nothing).
pub(crate) async fn refuse_cross_site(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    let safe = matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let path = request.uri().path();
    if safe || !path.starts_with("/api/") || path == "/api/csp-report" {
        return next.run(request).await;
    }
    match check(request.headers(), &state.config.http.allowed_origins) {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            let label = crate::metrics::KindLabel { kind: refusal.as_str().to_owned() };
            state.metrics.http_csrf_refused.get_or_create(&label).inc();
            tracing::info!(path, reason = refusal.as_str(), origin = ?request.headers().get(header::ORIGIN), "cross-site request refused");
            let (status, message) = match refusal {
                Refusal::ContentType => {
                    (StatusCode::UNSUPPORTED_MEDIA_TYPE, "state-changing requests must send application/json")
                }
                _ => (StatusCode::FORBIDDEN, "cross-origin request refused (see http.allowed_origins)"),
            };
            let code = if refusal == Refusal::ContentType { "unsupported_media_type" } else { "cross_origin" };
            ApiError::new(status, code, message).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(header::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn same_origin_json_and_scripts_pass() {
        let own = [("host", "gw.example:3000"), ("origin", "http://gw.example:3000")];
        assert_eq!(check(&headers(&own), &[]), Ok(()));
        let json = [("host", "gw:3000"), ("content-type", "application/json; charset=utf-8"), ("content-length", "9")];
        assert_eq!(check(&headers(&json), &[]), Ok(()), "a script without Origin");
        assert_eq!(check(&headers(&[("sec-fetch-site", "same-origin"), ("host", "gw")]), &[]), Ok(()));
        let proxy = [("host", "10.0.0.5:3000"), ("origin", "https://meters.example.org")];
        assert_eq!(check(&headers(&proxy), &["https://meters.example.org".into()]), Ok(()));
    }

    #[test]
    fn other_origins_simple_bodies_and_cross_site_fetches_are_refused() {
        let sibling_port = [("host", "127.0.0.1:3000"), ("origin", "http://127.0.0.1:8080")];
        assert_eq!(check(&headers(&sibling_port), &[]), Err(Refusal::Origin));
        assert_eq!(check(&headers(&[("host", "gw"), ("origin", "null")]), &[]), Err(Refusal::Origin));
        let text = [("host", "gw"), ("content-type", "text/plain"), ("content-length", "20")];
        assert_eq!(check(&headers(&text), &[]), Err(Refusal::ContentType));
        let form = [("content-type", "application/x-www-form-urlencoded"), ("transfer-encoding", "chunked")];
        assert_eq!(check(&headers(&form), &[]), Err(Refusal::ContentType));
        assert_eq!(check(&headers(&[("sec-fetch-site", "same-site")]), &[]), Err(Refusal::FetchSite));
        let proxy = [("host", "10.0.0.5:3000"), ("origin", "https://evil.example.org")];
        assert_eq!(check(&headers(&proxy), &["https://meters.example.org".into()]), Err(Refusal::Origin));
    }
}
