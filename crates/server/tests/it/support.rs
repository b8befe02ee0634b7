//! Helpers: build an app on a fake backend, send requests in-process or over TCP.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response};
use rota_core::Config;
use rota_server::backend::fake::FakeBackend;
use rota_server::{App, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub type TestApp = Arc<App<FakeBackend>>;

pub fn app() -> TestApp {
    App::new(
        FakeBackend::new(Config::default()),
        ServerConfig::single("default"),
    )
}

pub fn app_with(config: ServerConfig) -> TestApp {
    App::new(FakeBackend::new(Config::default()), config)
}

/// A response, read to the end.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: axum::http::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {:?}", self.body))
    }

    pub fn etcd_index(&self) -> u64 {
        self.header("x-etcd-index")
            .and_then(|text| text.parse().ok())
            .expect("X-Etcd-Index")
    }
}

pub async fn into_reply(response: Response<Body>) -> Reply {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// Sends one request in-process. `form`: a urlencoded body.
pub async fn send(app: &TestApp, method: &str, uri: &str, form: Option<&str>) -> Reply {
    let mut builder = Request::builder().method(method).uri(uri);
    let body = match form {
        Some(form) => {
            builder = builder.header("content-type", "application/x-www-form-urlencoded");
            Body::from(form.to_string())
        }
        None => Body::empty(),
    };
    into_reply(app.handle(builder.body(body).expect("request")).await).await
}

pub async fn send_request(app: &TestApp, request: Request<Body>) -> Reply {
    into_reply(app.handle(request).await).await
}

pub async fn get(app: &TestApp, uri: &str) -> Reply {
    send(app, "GET", uri, None).await
}

pub async fn put(app: &TestApp, uri: &str, form: &str) -> Reply {
    send(app, "PUT", uri, Some(form)).await
}

/// The store index, read from the state directly.
pub fn store_index(app: &TestApp) -> u64 {
    use rota_server::Backend as _;
    app.backend().read(|state| state.v2.index())
}

static NEXT_PORT: AtomicU16 = AtomicU16::new(25100);

/// A server on a real socket; dropped with the test's runtime.
pub struct Served {
    pub app: TestApp,
    pub port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub async fn serve(app: TestApp, options: rota_server::ServeOptions) -> Served {
    let (listener, port) = loop {
        let port = NEXT_PORT.fetch_add(1, Ordering::SeqCst);
        assert!(port < 25200, "out of test ports");
        if let Ok(listener) = rota_server::bind(([127, 0, 0, 1], port).into()) {
            break (listener, port);
        }
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(rota_server::serve_with(
        Arc::clone(&app),
        vec![listener],
        async {
            let _ = stopped.await;
        },
        options,
    ));
    Served {
        app,
        port,
        stop: Some(stop),
    }
}

pub async fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect")
}

pub async fn write_all(stream: &mut TcpStream, text: &str) {
    stream.write_all(text.as_bytes()).await.expect("write");
}

/// Reads until `needle` appears in what was read, or panics after `within`.
pub async fn read_until(stream: &mut TcpStream, needle: &str, within: Duration) -> String {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if String::from_utf8_lossy(&seen).contains(needle) {
            return String::from_utf8_lossy(&seen).into_owned();
        }
        let mut buffer = [0u8; 4096];
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0)) => panic!(
                "connection closed before {needle:?}; got {:?}",
                String::from_utf8_lossy(&seen)
            ),
            Ok(Ok(read)) => seen.extend_from_slice(&buffer[..read]),
            Ok(Err(error)) => panic!("read failed: {error}"),
            Err(_) => panic!(
                "no {needle:?} within {within:?}; got {:?}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
}

/// Waits until `condition` holds, polling, or panics after `within`.
pub async fn eventually(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
