//! etcd's v2 auth API (`/v2/auth/...`): rota has no users or roles, and says so.
//!
//! etcd answers these paths even while auth is off, and etcd clients probe them: `etcdctl
//! user list` reads `/v2/auth/users`, `etcdctl auth enable` puts `/v2/auth/enable`. A plain
//! 404 page made etcdctl print `invalid character 'p' after top-level value`. Instead:
//! - `GET /v2/auth/enable` is `{"enabled":false}`, as on an etcd without auth;
//! - `DELETE /v2/auth/enable` is etcd's own 409 `auth: already disabled`;
//! - `GET /v2/auth/users` and `GET /v2/auth/roles` list none (`etcdctl role list` shows
//!   only the status code of any other answer);
//! - everything else (enabling auth, users, roles) is 404 with etcd's `{"message"}` error
//!   body saying that rota does not implement it. Not 501: etcd's Go client takes any 5xx
//!   for a failing member and reports "cluster is unavailable or misconfigured" instead of
//!   the message; a 4xx message is what etcdctl prints.

use axum::body::Body;
use axum::http::{Method, Response};

use crate::respond;

const NOT_SUPPORTED: &str = "auth: not supported: rota has no etcd v2 users or roles (every \
client may read and write every key); restrict who reaches its client port instead";

/// The answer to `path` (which starts with `/v2/auth/`).
pub(crate) fn handle(method: &Method, path: &str) -> Response<Body> {
    match (method, path) {
        (&Method::GET, "/v2/auth/users") => return respond::json(200, "{\"users\":null}"),
        (&Method::GET, "/v2/auth/roles") => return respond::json(200, "{\"roles\":null}"),
        (_, "/v2/auth/enable") => {}
        _ => return message(404, NOT_SUPPORTED),
    }
    match *method {
        Method::GET => respond::json(200, "{\"enabled\":false}"),
        Method::DELETE => message(409, "auth: already disabled"),
        Method::PUT => message(404, NOT_SUPPORTED),
        _ => respond::method_not_allowed("GET,PUT,DELETE"),
    }
}

/// etcd's auth error body: `{"message":"..."}`.
fn message(status: u16, text: &str) -> Response<Body> {
    let mut body = String::from("{\"message\":");
    respond::push_go_json_string(&mut body, text);
    body.push('}');
    respond::json(status, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(method: Method, path: &str) -> (u16, String) {
        let response = handle(&method, path);
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, String::from_utf8(bytes.to_vec()).expect("utf-8"))
    }

    #[tokio::test]
    async fn auth_is_reported_off_and_everything_else_is_not_supported() {
        assert_eq!(
            answer(Method::GET, "/v2/auth/enable").await,
            (200, "{\"enabled\":false}".into())
        );
        assert_eq!(
            answer(Method::DELETE, "/v2/auth/enable").await,
            (409, "{\"message\":\"auth: already disabled\"}".into())
        );
        assert_eq!(
            answer(Method::GET, "/v2/auth/users").await,
            (200, "{\"users\":null}".into())
        );
        assert_eq!(
            answer(Method::GET, "/v2/auth/roles").await,
            (200, "{\"roles\":null}".into())
        );
        for (method, path) in [
            (Method::PUT, "/v2/auth/enable"),
            (Method::GET, "/v2/auth/users/root"),
            (Method::PUT, "/v2/auth/users/root"),
            (Method::GET, "/v2/auth/roles/root"),
        ] {
            let (status, body) = answer(method.clone(), path).await;
            assert_eq!(status, 404, "{method} {path}");
            let parsed: serde_json::Value = serde_json::from_str(&body).expect("json");
            assert!(parsed["message"]
                .as_str()
                .expect("message")
                .starts_with("auth: not supported"));
        }
        assert_eq!(answer(Method::POST, "/v2/auth/enable").await.0, 405);
    }
}
