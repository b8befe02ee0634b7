//! The `/ui` dashboard in a real headless Chromium against a real `rota serve` holding real
//! data: a queue with queued and dead jobs, a paused queue, keys in a directory.
//!
//! Two ways in: `--dump-dom` (the DOM after the page's scripts ran against the API) checks
//! what the page renders, and a small Chrome DevTools Protocol client (over the browser's
//! WebSocket, std only) clicks Retry and Cancel and checks the jobs changed on the server.
//! Chromium is required (`/usr/bin/chromium`, Debian's `chromium`): the tests fail, never
//! skip, without it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{Kind, Server};
use crate::http::{self, Request};
use crate::jobs_util::{api, get_job, wait_until};

/// Where Debian's `chromium` package installs the browser.
const CHROMIUM_PATH: &str = "/usr/bin/chromium";
/// Bound on one browser run or wait (a cold Chromium start on a loaded 2-core machine takes
/// a few seconds).
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);
/// Virtual time the page gets in `--dump-dom` mode: a few of its 2 s refreshes.
const VIRTUAL_TIME_BUDGET_MS: u64 = 5_000;
/// Largest WebSocket message accepted from the browser.
const DEVTOOLS_MESSAGE_BYTES_MAX: usize = 16 << 20;

const QUEUE: &str = "ui-q";
const PAUSED_QUEUE: &str = "ui-paused";
const HOSTILE_VALUE: &str = "<img src=x onerror=\"document.title='pwned'\">";
const BIG_INTEGER: &str = "123456789012345678901234567890";

/// Fails the test (never skips) when Chromium is missing.
fn require_chromium() {
    if !Path::new(CHROMIUM_PATH).exists() {
        panic!(
            "Chromium is not installed at {CHROMIUM_PATH}: the dashboard tests run the page in \
             headless Chromium. Run ./scripts/test.sh, which installs it, or \
             `apt-get install -y chromium`."
        );
    }
}

/// What [`seed`] created.
struct Seeded {
    dead_id: u64,
    queued_ids: Vec<u64>,
}

/// A queue (`concurrency` 2, a rate, `max_attempts` 1) with two queued jobs and one dead
/// one, an empty paused queue, and keys under `/ui-dir` (one with a ttl and a value that
/// is HTML).
fn seed(server: &Server) -> Seeded {
    let config = json!({"concurrency": 2, "rate": {"limit": 5, "per": "1s"}, "max_attempts": 1});
    let put = api(
        server,
        "PUT",
        &format!("/v1/queues/{QUEUE}"),
        Some(&config),
        None,
    );
    assert_eq!(put.status(), 200, "{}", put.text());
    let paused = api(
        server,
        "PUT",
        &format!("/v1/queues/{PAUSED_QUEUE}"),
        Some(&json!({"paused": true})),
        None,
    );
    assert_eq!(paused.status(), 200, "{}", paused.text());

    let mut ids = Vec::new();
    for priority in 1..=3 {
        // As text: the payload holds what a decode to doubles would change (an integer past
        // 2^53, `1.0`, keys out of order), which the job detail must show as sent.
        let body = format!(
            r#"{{"payload": {{"n": {priority}, "big": {BIG_INTEGER}, "f": 1.0, "html": {}}}, "priority": {priority}}}"#,
            serde_json::to_string(HOSTILE_VALUE).expect("a JSON string")
        );
        let submit = http::send(
            server.addr(),
            &Request::new("POST", &format!("/v1/queues/{QUEUE}/jobs"))
                .header("Content-Type", "application/json")
                .raw_body(body.into_bytes()),
        )
        .expect("submit");
        assert_eq!(submit.status(), 202, "{}", submit.text());
        ids.push(submit.json()["id"].as_u64().expect("job id"));
    }
    // The highest priority is leased first; one failed attempt of one makes it dead.
    let lease = api(
        server,
        "POST",
        &format!("/v1/queues/{QUEUE}/lease"),
        Some(&json!({"worker": "ui-test", "max": 1})),
        None,
    );
    assert_eq!(lease.status(), 200, "{}", lease.text());
    let leased = &lease.json()["jobs"][0];
    let dead_id = leased["id"].as_u64().expect("leased job id");
    assert_eq!(dead_id, ids[2]);
    let fail = json!({"lease_token": leased["lease_token"], "error": "boom <b>bold</b>"});
    let failed = api(
        server,
        "POST",
        &format!("/v1/jobs/{dead_id}/fail"),
        Some(&fail),
        None,
    );
    assert_eq!(failed.status(), 200, "{}", failed.text());
    assert_eq!(failed.json()["state"], "dead", "{}", failed.text());

    for (key, form) in [
        ("/v2/keys/ui-dir/alpha", "value=one".to_string()),
        (
            "/v2/keys/ui-dir/sub/beta",
            format!("value={}&ttl=600", form_encode(HOSTILE_VALUE)),
        ),
    ] {
        let response = http::send(server.addr(), &Request::new("PUT", key).form(&form))
            .unwrap_or_else(|e| panic!("PUT {key}: {e}"));
        assert!(
            response.status() == 201 || response.status() == 200,
            "PUT {key}: {}",
            response.text()
        );
    }
    Seeded {
        dead_id,
        queued_ids: ids[..2].to_vec(),
    }
}

fn form_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The text from `marker` up to the next `end` (e.g. one table row), failing with the DOM.
fn section<'a>(dom: &'a str, marker: &str, end: &str) -> &'a str {
    let start = dom
        .find(marker)
        .unwrap_or_else(|| panic!("{marker:?} is not in the rendered page:\n{dom}"));
    let rest = &dom[start..];
    &rest[..rest.find(end).map_or(rest.len(), |at| at + end.len())]
}

fn assert_contains(haystack: &str, needle: &str, what: &str) {
    assert!(
        haystack.contains(needle),
        "{what}: {needle:?} is not in:\n{haystack}"
    );
}

#[test]
fn ui_page_and_its_files_answer_get_and_head_only() {
    let server = Server::start(Kind::Rota);
    for (path, content_type) in [
        ("/ui", "text/html; charset=utf-8"),
        ("/ui/", "text/html; charset=utf-8"),
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/style.css", "text/css; charset=utf-8"),
    ] {
        let get = http::send(server.addr(), &Request::new("GET", path)).expect("GET");
        assert_eq!(get.status(), 200, "GET {path}: {}", get.text());
        assert_eq!(get.header("content-type"), Some(content_type), "{path}");
        assert_eq!(get.header("cache-control"), Some("no-cache"), "{path}");
        assert!(
            get.header("content-security-policy")
                .is_some_and(|csp| csp.contains("script-src 'self'")),
            "{path}: {:?}",
            get.head
        );
        let head = http::send(server.addr(), &Request::new("HEAD", path)).expect("HEAD");
        assert_eq!(head.status(), 200, "HEAD {path}");
        assert!(head.body.is_empty());
        for method in ["POST", "PUT", "DELETE"] {
            let refused = http::send(server.addr(), &Request::new(method, path)).expect(method);
            assert_eq!(refused.status(), 405, "{method} {path}: {}", refused.text());
            assert_eq!(refused.header("allow"), Some("GET,HEAD"), "{method} {path}");
        }
    }
    let page = http::send(server.addr(), &Request::new("GET", "/ui")).expect("GET /ui");
    assert_contains(
        &page.text(),
        "<script src=\"/ui/app.js\" defer></script>",
        "/ui",
    );
    let missing = http::send(server.addr(), &Request::new("GET", "/ui/nope.js")).expect("GET");
    assert_eq!(missing.status(), 404);
}

#[test]
fn ui_renders_members_queues_jobs_and_keys_from_the_api_in_chromium() {
    require_chromium();
    let server = Server::start(Kind::Rota);
    let seeded = seed(&server);
    let dead = seeded.dead_id;
    let profile = tempfile::tempdir().expect("profile dir");
    let url = format!(
        "{}/ui#queue={QUEUE}&job={dead}&key=%2Fui-dir",
        server.client_url()
    );
    let dom = dump_dom(profile.path(), &url);

    // Every refresh step succeeded: no error is shown (a broken script renders nothing
    // below, so the checks after this one fail too).
    assert_contains(&dom, "<ul id=\"errors\" role=\"alert\"></ul>", "error list");
    assert_contains(&dom, "data-refreshes=", "refresh counter");

    let member = section(&dom, "<tr data-member-id=", "</tr>");
    assert_contains(
        member,
        &format!("<td>{}</td>", server.member_name),
        "member",
    );
    assert_contains(member, "leader, this node", "member");
    assert_contains(
        &dom,
        "<dd data-fact=\"health\" class=\"ok\">healthy</dd>",
        "node",
    );

    let queue = section(&dom, &format!("<tr data-queue=\"{QUEUE}\""), "</tr>");
    for (state, count) in [
        ("scheduled", 0),
        ("queued", 2),
        ("leased", 0),
        ("succeeded", 0),
        ("dead", 1),
        ("cancelled", 0),
        ("depth", 2),
    ] {
        assert_contains(
            queue,
            &format!("data-count=\"{state}\">{count}</td>"),
            "queue counts",
        );
    }
    assert_contains(queue, "5 per 1s (burst 5)", "queue rate");
    let paused = section(&dom, &format!("<tr data-queue=\"{PAUSED_QUEUE}\""), "</tr>");
    assert_contains(paused, ">paused</td>", "paused queue");

    let dead_row = section(&dom, &format!("<tr data-job-id=\"{dead}\""), "</tr>");
    assert_contains(dead_row, "data-state=\"dead\"", "dead job row");
    assert_contains(
        dead_row,
        &format!("data-action=\"retry\" data-job-id=\"{dead}\""),
        "retry button",
    );
    for queued in &seeded.queued_ids {
        let row = section(&dom, &format!("<tr data-job-id=\"{queued}\""), "</tr>");
        assert_contains(
            row,
            &format!("data-action=\"cancel\" data-job-id=\"{queued}\""),
            "cancel button",
        );
    }

    let detail = section(&dom, "<div id=\"job-detail\"", "</section>");
    assert_contains(detail, &format!("data-job-id=\"{dead}\""), "job detail");
    assert_contains(detail, "<dd data-field=\"state\">dead</dd>", "job detail");
    assert_contains(detail, "boom &lt;b&gt;bold&lt;/b&gt;", "job errors");
    assert_contains(
        detail,
        "&lt;img src=x onerror=\\\"document.title='pwned'\\\"&gt;",
        "payload as text",
    );
    assert_contains(
        detail,
        &format!("\"n\": 3,\n  \"big\": {BIG_INTEGER},\n  \"f\": 1.0,"),
        "payload as sent",
    );

    let keys = section(&dom, "<section id=\"keys\"", "</section>");
    let alpha = section(keys, "<tr data-key=\"/ui-dir/alpha\"", "</tr>");
    assert_contains(alpha, "<td class=\"mono\">one</td>", "key value");
    assert_contains(
        keys,
        "<tr data-key=\"/ui-dir/sub\" data-dir=\"\"",
        "directory row",
    );

    // No user data became markup anywhere.
    assert!(
        !dom.contains("<img src=\"x\""),
        "a value was parsed as HTML:\n{dom}"
    );
    assert!(
        !dom.contains("<b>bold</b>"),
        "an error was parsed as HTML:\n{dom}"
    );
    assert!(!dom.contains("pwned</title>"));
}

#[test]
fn ui_retry_and_cancel_buttons_change_the_jobs_in_chromium() {
    require_chromium();
    let mut server = Server::start(Kind::Rota);
    let seeded = seed(&server);
    let dead = seeded.dead_id;
    let queued = seeded.queued_ids[0];
    let mut browser = Browser::launch();
    let url = format!("{}/ui#queue={QUEUE}&job={dead}", server.client_url());
    let mut page = browser.open(&url);

    // Retry from the job's detail panel: the server has the job queued again.
    let retry = format!("#job-detail button[data-action=\"retry\"][data-job-id=\"{dead}\"]");
    page.wait_for(&format!("document.querySelector('{retry}') !== null"));
    page.evaluate(&format!("document.querySelector('{retry}').click()"));
    wait_until(BROWSER_TIMEOUT, "the retried job to be queued", || {
        (get_job(&server, dead)["state"] == "queued").then_some(())
    });
    page.wait_for(&format!(
        "document.getElementById('notice').textContent === 'Job {dead} is now queued.'"
    ));
    page.wait_for(
        "document.querySelector('#job-detail [data-field=\"state\"]').textContent === 'queued'",
    );

    // Cancel from the job list, after the page asked for confirmation.
    let cancel = format!("#job-table button[data-action=\"cancel\"][data-job-id=\"{queued}\"]");
    page.wait_for(&format!("document.querySelector('{cancel}') !== null"));
    page.evaluate(&format!(
        "window.confirm = (text) => {{ window.confirmed = text; return true; }}; \
         document.querySelector('{cancel}').click()"
    ));
    wait_until(BROWSER_TIMEOUT, "the job to be cancelled", || {
        (get_job(&server, queued)["state"] == "cancelled").then_some(())
    });
    let asked = page.evaluate("window.confirmed");
    assert_eq!(asked, json!(format!("Cancel job {queued}?")));
    page.wait_for(&format!(
        "document.querySelector('#job-table tr[data-job-id=\"{queued}\"]').dataset.state === 'cancelled'"
    ));

    // A command's error in the list: its exit status and the last line of its stderr (a
    // traceback's exception), not the tail's first line.
    let lease = api(&server, "POST", &format!("/v1/queues/{QUEUE}/lease"), Some(&json!({"worker": "ui-test", "max": 1})), None);
    let leased = &lease.json()["jobs"][0];
    assert_eq!(leased["id"], json!(dead), "{}", lease.text());
    let error = "exit status 1: Traceback (most recent call last):\n  File \"call.py\", line 3, in <module>\nValueError: bad <input>\n";
    let fail = json!({"lease_token": leased["lease_token"], "error": error});
    let failed = api(&server, "POST", &format!("/v1/jobs/{dead}/fail"), Some(&fail), None);
    assert_eq!(failed.json()["state"], "dead", "{}", failed.text());
    page.evaluate(&format!("location.hash = '#queue={QUEUE}&state=dead'"));
    let cell = format!("#job-table tr[data-job-id=\"{dead}\"] td[data-field=\"last-error\"]");
    page.wait_for(&format!(
        "document.querySelector('{cell}') !== null && \
         document.querySelector('{cell}').textContent === 'exit status 1: … ValueError: bad <input>'"
    ));
    // The queue's dead jobs, queued again with one button, after the page asked.
    page.wait_for("!document.getElementById('jobs-retry-dead').hidden");
    assert_eq!(page.evaluate("document.getElementById('jobs-retry-dead').textContent"), json!("Retry 1 dead"));
    page.evaluate(
        "window.confirm = (text) => { window.confirmed = text; return true; }; \
         document.getElementById('jobs-retry-dead').click()",
    );
    wait_until(BROWSER_TIMEOUT, "the dead job queued again", || {
        (get_job(&server, dead)["state"] == "queued").then_some(())
    });
    assert_eq!(page.evaluate("window.confirmed"), json!(format!("Queue the 1 dead jobs of {QUEUE} again?")));
    page.wait_for(&format!(
        "document.getElementById('notice').textContent === '1 dead jobs of {QUEUE} queued again.'"
    ));
    page.wait_for("document.getElementById('jobs-retry-dead').hidden");

    // An API error is shown with the error envelope's message, not swallowed.
    page.evaluate("location.hash = '#job=999999'");
    page.wait_for("document.querySelector('#errors li[data-source=\"job\"]') !== null");
    let shown =
        page.evaluate("document.querySelector('#errors li[data-source=\"job\"]').textContent");
    let shown = shown.as_str().unwrap_or_default();
    assert!(
        shown.contains("404") && shown.contains("[not_found]"),
        "error shown: {shown:?}"
    );

    // A key's value, ttl and index, and the value stays text.
    page.evaluate("location.hash = '#key=%2Fui-dir%2Fsub%2Fbeta'");
    page.wait_for("document.querySelector('#key-detail pre[data-field=\"value\"]') !== null");
    let value = page
        .evaluate("document.querySelector('#key-detail pre[data-field=\"value\"]').textContent");
    assert_eq!(value, json!(HOSTILE_VALUE));
    let ttl =
        page.evaluate("document.querySelector('#key-detail [data-field=\"ttl\"]').textContent");
    let ttl = ttl.as_str().unwrap_or_default();
    assert!(ttl.ends_with(" s"), "ttl shown: {ttl:?}");
    assert_eq!(page.evaluate("document.title"), json!("rota"));
    assert_eq!(
        page.evaluate("document.querySelector('#errors li[data-source=\"page\"]') === null"),
        json!(true),
        "the page reported a script error"
    );

    // The server goes away: one line says so, what is shown is greyed out, health is not
    // claimed, and the time of the last good refresh stays. (It showed one red line per
    // request, "healthy" in green and a clock that went on.)
    server.kill();
    page.wait_for("document.body.classList.contains('stale')");
    assert_eq!(page.evaluate("document.querySelectorAll('#errors li').length"), json!(1));
    let line = page.evaluate("document.querySelector('#errors li').textContent");
    assert!(line.as_str().unwrap_or_default().starts_with("server: unreachable"), "{line}");
    let health = page.evaluate("document.querySelector('dd[data-fact=\"health\"]').textContent");
    assert_eq!(health, json!("unknown (server unreachable)"));
    let updated = page.evaluate("document.getElementById('updated').textContent");
    let refreshes = page.evaluate("Number(document.documentElement.dataset.refreshes)");
    page.wait_for(&format!("Number(document.documentElement.dataset.refreshes) > {refreshes}"));
    assert_eq!(page.evaluate("document.getElementById('updated').textContent"), updated);
    // Back: fresh again, no error left.
    server.restart();
    page.wait_for("!document.body.classList.contains('stale') && document.querySelectorAll('#errors li').length === 0");
    page.wait_for("document.querySelector('dd[data-fact=\"health\"]').textContent === 'healthy'");
}

/// `chromium --headless --dump-dom URL`: the DOM once the page's work (its fetches and a
/// few refreshes) is done.
fn dump_dom(profile: &Path, url: &str) -> String {
    let stderr_path = profile.join("chromium.stderr");
    let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
    let child = chromium_command(profile)
        .arg(format!("--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}"))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {CHROMIUM_PATH}: {e}"));
    let mut child = ChildGuard(child);
    let mut stdout = child.0.stdout.take().expect("stdout pipe");
    // Read on another thread so a hung browser fails the test instead of hanging it.
    let reader = std::thread::spawn(move || {
        let mut dom = String::new();
        stdout.read_to_string(&mut dom).map(|_| dom)
    });
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    while !reader.is_finished() {
        if Instant::now() >= deadline {
            child.kill();
            panic!(
                "chromium --dump-dom did not finish within {BROWSER_TIMEOUT:?}; its stderr:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let dom = reader.join().expect("reader thread").expect("read the DOM");
    let status = child.0.wait().expect("wait for chromium");
    assert!(
        status.success() && dom.contains("</html>"),
        "chromium --dump-dom failed ({status}); its stderr:\n{}",
        std::fs::read_to_string(&stderr_path).unwrap_or_default()
    );
    dom
}

fn chromium_command(profile: &Path) -> Command {
    let mut command = Command::new(CHROMIUM_PATH);
    command
        .arg("--headless")
        .arg("--no-sandbox") // tests may run as root, where the sandbox refuses to start
        .arg("--disable-gpu")
        .arg("--no-first-run")
        .arg("--no-default-browser-check")
        .arg("--disable-extensions")
        .arg(format!("--user-data-dir={}", profile.display()));
    command
}

/// Kills and reaps the browser however the test ends.
struct ChildGuard(Child);

impl ChildGuard {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A headless Chromium driven over the DevTools protocol on its browser WebSocket.
struct Browser {
    // Dropped before `_profile`, so the directory is removed after the browser is gone.
    _child: ChildGuard,
    socket: WebSocket,
    next_id: u64,
    stderr_path: PathBuf,
    _profile: tempfile::TempDir,
}

/// One tab, attached with a flat session.
struct Page<'a> {
    browser: &'a mut Browser,
    session: String,
}

impl Browser {
    fn launch() -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let stderr_path = profile.path().join("chromium.stderr");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let child = chromium_command(profile.path())
            .arg("--remote-debugging-port=0")
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMIUM_PATH}: {e}"));
        let mut child = ChildGuard(child);
        // Chromium writes the port it chose and the browser target's path to this file.
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + BROWSER_TIMEOUT;
        let (port, path) = loop {
            let text = std::fs::read_to_string(&port_file).unwrap_or_default();
            let mut lines = text.lines();
            if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                if let Ok(port) = port.parse::<u16>() {
                    break (port, path.to_string());
                }
            }
            if Instant::now() >= deadline || matches!(child.0.try_wait(), Ok(Some(_))) {
                child.kill();
                panic!(
                    "chromium did not open its DevTools port; its stderr:\n{}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let socket = WebSocket::connect(port, &path);
        Browser {
            _child: child,
            socket,
            next_id: 0,
            stderr_path,
            _profile: profile,
        }
    }

    /// Sends one command and returns its `result`, skipping the events that arrive meanwhile.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        self.socket.send_text(&message.to_string());
        let deadline = Instant::now() + BROWSER_TIMEOUT;
        loop {
            let text = self.socket.receive_text(deadline).unwrap_or_else(|e| {
                panic!(
                    "DevTools {method}: {e}; chromium's stderr:\n{}",
                    std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
                )
            });
            let answer: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("DevTools sent non-JSON ({e}): {text}"));
            if answer["id"] != json!(id) {
                continue;
            }
            if let Some(error) = answer.get("error") {
                panic!("DevTools {method} failed: {error}");
            }
            return answer["result"].clone();
        }
    }

    fn open(&mut self, url: &str) -> Page<'_> {
        let target = self.call(None, "Target.createTarget", json!({"url": url}));
        let target_id = target["targetId"].as_str().expect("targetId").to_string();
        let attached = self.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        );
        let session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        Page {
            browser: self,
            session,
        }
    }
}

impl Page<'_> {
    /// The value of a JS expression in the page (JSON); an exception fails the test.
    fn evaluate(&mut self, expression: &str) -> Value {
        let answer = self.try_evaluate(expression);
        match answer {
            Ok(value) => value,
            Err(error) => panic!("{expression}: {error}"),
        }
    }

    fn try_evaluate(&mut self, expression: &str) -> Result<Value, String> {
        let session = self.session.clone();
        let answer = self.browser.call(
            Some(&session),
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        if let Some(details) = answer.get("exceptionDetails") {
            return Err(format!("threw {details}"));
        }
        Ok(answer["result"]["value"].clone())
    }

    /// Polls until the expression is `true` (errors count as not yet: the page may still be
    /// loading), failing with the page's error list after [`BROWSER_TIMEOUT`].
    fn wait_for(&mut self, expression: &str) {
        let deadline = Instant::now() + BROWSER_TIMEOUT;
        let mut last = Ok(Value::Null);
        while Instant::now() < deadline {
            last = self.try_evaluate(expression);
            if last == Ok(json!(true)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let errors = self.try_evaluate("document.getElementById('errors').textContent");
        panic!("timed out waiting for {expression} (last: {last:?}); page errors: {errors:?}");
    }
}

/// The client side of RFC 6455, as much as DevTools needs: masked text frames out,
/// unmasked (possibly fragmented) text frames in.
struct WebSocket {
    stream: BufReader<TcpStream>,
}

impl WebSocket {
    fn connect(port: u16, path: &str) -> WebSocket {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connect to DevTools on port {port}: {e}"));
        stream
            .set_read_timeout(Some(BROWSER_TIMEOUT))
            .expect("read timeout");
        let mut stream = BufReader::new(stream);
        let handshake = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        stream
            .get_mut()
            .write_all(handshake.as_bytes())
            .expect("send the WebSocket handshake");
        let mut status = String::new();
        stream.read_line(&mut status).expect("handshake answer");
        assert!(
            status.starts_with("HTTP/1.1 101"),
            "DevTools refused the WebSocket: {status:?}"
        );
        loop {
            let mut line = String::new();
            stream.read_line(&mut line).expect("handshake headers");
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        WebSocket { stream }
    }

    fn send_text(&mut self, text: &str) {
        const MASK: [u8; 4] = [0x5a, 0x17, 0xc3, 0x81];
        let payload = text.as_bytes();
        let mut frame = vec![0x81u8]; // FIN, text
        match payload.len() {
            len @ 0..=125 => frame.push(0x80 | len as u8),
            len @ 126..=0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&MASK);
        frame.extend(payload.iter().enumerate().map(|(at, b)| b ^ MASK[at % 4]));
        self.stream
            .get_mut()
            .write_all(&frame)
            .expect("send to DevTools");
    }

    fn receive_text(&mut self, deadline: Instant) -> Result<String, String> {
        let mut message = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("no answer in time".into());
            }
            self.stream
                .get_mut()
                .set_read_timeout(Some(left))
                .map_err(|e| e.to_string())?;
            let mut head = [0u8; 2];
            self.read_exact(&mut head)?;
            let fin = head[0] & 0x80 != 0;
            let opcode = head[0] & 0x0f;
            let len = match head[1] & 0x7f {
                126 => {
                    let mut bytes = [0u8; 2];
                    self.read_exact(&mut bytes)?;
                    u16::from_be_bytes(bytes) as usize
                }
                127 => {
                    let mut bytes = [0u8; 8];
                    self.read_exact(&mut bytes)?;
                    usize::try_from(u64::from_be_bytes(bytes)).unwrap_or(usize::MAX)
                }
                len => len as usize,
            };
            if message.len().saturating_add(len) > DEVTOOLS_MESSAGE_BYTES_MAX {
                return Err(format!("a message over {DEVTOOLS_MESSAGE_BYTES_MAX} bytes"));
            }
            let mut payload = vec![0u8; len];
            self.read_exact(&mut payload)?;
            match opcode {
                0x0 | 0x1 => message.extend_from_slice(&payload),
                0x8 => return Err("the browser closed the WebSocket".into()),
                _ => continue, // ping, pong: DevTools sends none we must answer
            }
            if fin {
                return String::from_utf8(message).map_err(|e| e.to_string());
            }
        }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), String> {
        self.stream
            .read_exact(buf)
            .map_err(|e| format!("reading from DevTools: {e}"))
    }
}
