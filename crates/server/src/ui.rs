//! `/ui`: the dashboard, three static files compiled into the binary (`ui/index.html`,
//! `ui/app.js`, `ui/style.css`; vanilla JS, no build step, no external assets).
//!
//! The page reads and acts only through the public HTTP API (`/v2/members`, `/v1/queues`,
//! `/v2/keys`, ...) with same-origin paths, so every member serves the same page and the
//! server keeps no state for it. It has no authentication of its own: whoever reaches the
//! client URLs can already make the same calls.

use axum::body::Body;
use axum::http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{Method, Response};

use crate::respond;

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const STYLE_CSS: &str = include_str!("ui/style.css");

/// The page runs only its own script and style and talks only to its own origin, and no
/// other site may frame it (its buttons cancel jobs): defence in depth behind the page's
/// rule of putting user data in the DOM as text only.
const CONTENT_SECURITY_POLICY: HeaderValue = HeaderValue::from_static(
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
     img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
);
static CONTENT_SECURITY_POLICY_HEADER: HeaderName =
    HeaderName::from_static("content-security-policy");
static X_CONTENT_TYPE_OPTIONS: HeaderName = HeaderName::from_static("x-content-type-options");

/// `GET|HEAD /ui`, `/ui/` (the page) and `/ui/app.js`, `/ui/style.css`; any other path under
/// `/ui/` is Go's text 404, any other method 405.
pub(crate) fn handle(method: &Method, path: &str) -> Response<Body> {
    let (body, content_type) = match path {
        "/ui" | "/ui/" => (INDEX_HTML, "text/html; charset=utf-8"),
        "/ui/app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "/ui/style.css" => (STYLE_CSS, "text/css; charset=utf-8"),
        _ => return respond::not_found(),
    };
    if method != Method::GET && method != Method::HEAD {
        return respond::method_not_allowed("GET,HEAD");
    }
    let mut response = respond::with_status(200, body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Revalidate on every load, so a page from before an upgrade never talks to a newer node.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        CONTENT_SECURITY_POLICY_HEADER.clone(),
        CONTENT_SECURITY_POLICY,
    );
    headers.insert(
        X_CONTENT_TYPE_OPTIONS.clone(),
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ui_page_loads_its_script_and_style_from_the_paths_served() {
        assert!(INDEX_HTML.contains(r#"<script src="/ui/app.js" defer></script>"#));
        assert!(INDEX_HTML.contains(r#"<link rel="stylesheet" href="/ui/style.css">"#));
        for path in ["/ui", "/ui/", "/ui/app.js", "/ui/style.css"] {
            assert_eq!(handle(&Method::GET, path).status(), 200, "{path}");
        }
        assert_eq!(handle(&Method::GET, "/ui/index.html").status(), 404);
        assert_eq!(handle(&Method::POST, "/ui").status(), 405);
    }

    #[test]
    fn ui_script_never_writes_html_from_strings() {
        // User data (keys, values, payloads, errors) reaches the DOM only as text nodes.
        for forbidden in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
        ] {
            assert!(!APP_JS.contains(forbidden), "app.js uses {forbidden}");
        }
    }
}
