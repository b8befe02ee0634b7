//! etcd's v2 auth API (`/v2/auth/...`): rota has no users or roles, and says so.
//!
//! etcd answers these paths even while auth is off, and etcd clients probe them: `etcdctl
//! user list` reads `/v2/auth/users`, `etcdctl auth enable` puts `/v2/auth/enable`. A plain
//! 404 page made etcdctl print `invalid character 'p' after top-level value`. Instead:
//! - `GET /v2/auth/enable` is `{"enabled":false}`, as on an etcd without auth;
//! - `DELETE /v2/auth/enable` is etcd's own 409 `auth: already disabled`;
//! - `GET /v2/auth/users` lists none; `GET /v2/auth/roles` lists etcd's built-in `root`
//!   role (every key, read and write), which `GET /v2/auth/roles/root` shows; any other
//!   user or role is etcd's 404 `auth: User x does not exist.` (`etcdctl role list` shows
//!   only the status code of any other answer);
//! - everything else (enabling auth, users, roles) is 404 with etcd's `{"message"}` error
//!   body saying that rota does not implement it. Not 501: etcd's Go client takes any 5xx
//!   for a failing member and reports "cluster is unavailable or misconfigured" instead of
//!   the message; a 4xx message is what etcdctl prints.

use axum::body::Body;
use axum::http::{Method, Response};

use crate::respond;

/// etcd's built-in role, there with auth off too.
const ROOT_ROLE: &str = r#"{"role":"root","permissions":{"kv":{"read":["/*"],"write":["/*"]}}}"#;

const NOT_SUPPORTED: &str = "auth: not supported: rota has no etcd v2 users or roles (every \
client may read and write every key); restrict who reaches its client port instead";

/// The answer to `path` (which starts with `/v2/auth/`).
pub(crate) fn handle(method: &Method, path: &str) -> Response<Body> {
    match (method, path) {
        (&Method::GET, "/v2/auth/users") => return respond::json(200, "{\"users\":null}"),
        (&Method::GET, "/v2/auth/roles") => {
            return respond::json(200, format!("{{\"roles\":[{ROOT_ROLE}]}}\n"))
        }
        (&Method::GET, "/v2/auth/roles/root") => return respond::json(200, format!("{ROOT_ROLE}\n")),
        (_, "/v2/auth/enable") => {}
        (&Method::GET, _) => {
            let named = |prefix| path.strip_prefix(prefix).filter(|name: &&str| !name.is_empty() && !name.contains('/'));
            if let Some(name) = named("/v2/auth/users/") {
                return message(404, &format!("auth: User {name} does not exist."));
            }
            if let Some(name) = named("/v2/auth/roles/") {
                return message(404, &format!("auth: Role {name} does not exist."));
            }
            return message(404, NOT_SUPPORTED);
        }
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
        // etcd 3.4's answers with auth off, byte for byte.
        let root = r#"{"role":"root","permissions":{"kv":{"read":["/*"],"write":["/*"]}}}"#;
        assert_eq!(
            answer(Method::GET, "/v2/auth/roles").await,
            (200, format!("{{\"roles\":[{root}]}}\n"))
        );
        assert_eq!(answer(Method::GET, "/v2/auth/roles/root").await, (200, format!("{root}\n")));
        assert_eq!(
            answer(Method::GET, "/v2/auth/roles/guest").await,
            (404, r#"{"message":"auth: Role guest does not exist."}"#.into())
        );
        assert_eq!(
            answer(Method::GET, "/v2/auth/users/root").await,
            (404, r#"{"message":"auth: User root does not exist."}"#.into())
        );
        for (method, path) in [
            (Method::PUT, "/v2/auth/enable"),
            (Method::PUT, "/v2/auth/users/root"),
            (Method::PUT, "/v2/auth/roles/foo"),
            (Method::DELETE, "/v2/auth/roles/root"),
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
