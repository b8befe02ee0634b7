//! Shared pieces of the job-queue end-to-end tests: `rota` client processes (CLI commands
//! and `rota worker`s) next to a `rota serve` from the harness, `/v1` requests over the
//! harness's raw HTTP client, shell scripts the workers run, and polling with a bound.
//!
//! Invariants: no process outlives its `Proc` (Drop SIGKILLs and reaps it); every wait has
//! a deadline and fails the test with what it was waiting for; a command's output is
//! captured to files, so a chatty process never blocks on a full pipe.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{self, Server};
use crate::http::{self, Request, Response};

/// Bound on one CLI command (its own retry budget is 30 s by default).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Poll period of [`wait_until`].
const POLL_EVERY: Duration = Duration::from_millis(20);

/// A client process of the `rota` binary with its output in files.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts `rota ARGS...` with `envs`, stdout and stderr to files in `dir`.
    pub fn spawn(dir: &Path, name: &str, args: &[String], envs: &[(&str, String)]) -> Proc {
        Proc::spawn_with_stdin(dir, name, args, envs, Stdio::null())
    }

    /// [`Proc::spawn`] with SIGHUP ignored, as `nohup` starts a process.
    pub fn spawn_nohup(dir: &Path, name: &str, args: &[String], envs: &[(&str, String)]) -> Proc {
        Proc::spawn_configured(dir, name, args, envs, Stdio::null(), |command| {
            use std::os::unix::process::CommandExt;
            // SAFETY: signal(2) is async-signal-safe; it only changes the child's disposition.
            unsafe {
                command.pre_exec(|| {
                    libc::signal(libc::SIGHUP, libc::SIG_IGN);
                    Ok(())
                });
            }
        })
    }

    /// [`Proc::spawn`] with `stdin` for the process's standard input.
    pub fn spawn_with_stdin(
        dir: &Path,
        name: &str,
        args: &[String],
        envs: &[(&str, String)],
        stdin: Stdio,
    ) -> Proc {
        Proc::spawn_configured(dir, name, args, envs, stdin, |_| {})
    }

    fn spawn_configured(
        dir: &Path,
        name: &str,
        args: &[String],
        envs: &[(&str, String)],
        stdin: Stdio,
        configure: impl FnOnce(&mut Command),
    ) -> Proc {
        let stdout_path = dir.join(format!("{name}.stdout"));
        let stderr_path = dir.join(format!("{name}.stderr"));
        let stdout = std::fs::File::create(&stdout_path).expect("stdout file");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut command = Command::new(harness::rota_bin());
        command
            .args(args)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(stderr)
            .env_remove("ROTA_ENDPOINTS");
        for (name, value) in envs {
            command.env(name, value);
        }
        configure(&mut command);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start rota {args:?}: {e}"));
        Proc {
            name: name.to_string(),
            child: Some(child),
            stdout_path,
            stderr_path,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("process still owned")
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The exit status once the process ended (`None` while it runs).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.status = Some(status);
                    self.child = None;
                }
            }
        }
        self.status
    }

    /// Waits for the process to exit on its own, failing the test after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return status;
            }
            if Instant::now() >= deadline {
                let stderr = self.stderr();
                self.kill();
                panic!(
                    "{} did not exit within {timeout:?}; its stderr:\n{stderr}",
                    self.name
                );
            }
            std::thread::sleep(POLL_EVERY);
        }
    }

    /// SIGTERM (through kill(1), which every test machine has).
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends the signal named (`TERM`, `HUP`, ...) through kill(1).
    pub fn signal(&self, name: &str) {
        let pid = self.pid();
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {pid} failed");
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            if let Ok(status) = child.wait() {
                self.status = Some(status);
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a finished CLI command printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    /// stdout as JSON (`-o json` commands), failing with the whole output otherwise.
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    pub fn expect_success(self) -> Output {
        assert!(self.status.success(), "command failed: {self:?}");
        self
    }
}

/// Runs `rota ARGS...` to completion (bounded by [`COMMAND_TIMEOUT`]).
pub fn rota(dir: &Path, args: &[String]) -> Output {
    run_rota(dir, args, None)
}

/// [`rota`] with `stdin` as the command's standard input (through a file in `dir`).
pub fn rota_with_stdin(dir: &Path, args: &[String], stdin: &[u8]) -> Output {
    run_rota(dir, args, Some(stdin))
}

fn run_rota(dir: &Path, args: &[String], stdin: Option<&[u8]>) -> Output {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("cmd{n}");
    let stdin = match stdin {
        Some(bytes) => {
            let path = dir.join(format!("{name}.stdin"));
            std::fs::write(&path, bytes).expect("write stdin file");
            Stdio::from(std::fs::File::open(&path).expect("open stdin file"))
        }
        None => Stdio::null(),
    };
    let mut proc = Proc::spawn_with_stdin(dir, &name, args, &[], stdin);
    proc.name = format!("rota {}", args.join(" "));
    let status = proc.wait_exit(COMMAND_TIMEOUT);
    Output {
        status,
        stdout: proc.stdout(),
        stderr: proc.stderr(),
    }
}

/// `["--endpoints", URL]` followed by `args`.
pub fn args(server: &Server, args: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    // Global flags go after the subcommand path (`rota job submit ... --endpoints URL`).
    out.push("--endpoints".into());
    out.push(server.client_url());
    out
}

/// A `/v1` request with a JSON body (and optionally an idempotency key).
pub fn api(
    server: &Server,
    method: &str,
    target: &str,
    body: Option<&Value>,
    key: Option<&str>,
) -> Response {
    let mut request = Request::new(method, target);
    if let Some(body) = body {
        request = request
            .header("Content-Type", "application/json")
            .raw_body(body.to_string().into_bytes());
    }
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    http::send(server.addr(), &request).unwrap_or_else(|e| panic!("{method} {target}: {e}"))
}

/// `GET /v1/jobs/{id}` as JSON, asserting 200.
pub fn get_job(server: &Server, id: u64) -> Value {
    let response = api(server, "GET", &format!("/v1/jobs/{id}"), None, None);
    assert_eq!(response.status(), 200, "GET job {id}: {}", response.text());
    response.json()
}

/// `GET /v1/queues/{q}` as JSON, or `None` when it does not answer 200 (not there yet, or
/// the server is down).
pub fn try_get_queue(server: &Server, queue: &str) -> Option<Value> {
    let response = http::send(
        server.addr(),
        &Request::new("GET", &format!("/v1/queues/{queue}")),
    )
    .ok()?;
    (response.status() == 200).then(|| response.json())
}

/// Every job of a queue, following the pages.
pub fn all_jobs(server: &Server, queue: &str) -> Vec<Value> {
    let mut jobs = Vec::new();
    let mut after: Option<u64> = None;
    loop {
        let mut target = format!("/v1/queues/{queue}/jobs?limit=1000");
        if let Some(after) = after {
            target.push_str(&format!("&after={after}"));
        }
        let response = api(server, "GET", &target, None, None);
        assert_eq!(response.status(), 200, "list jobs: {}", response.text());
        let page = response.json();
        jobs.extend(page["jobs"].as_array().expect("jobs array").iter().cloned());
        match page["next"].as_u64() {
            Some(next) => after = Some(next),
            None => return jobs,
        }
    }
}

/// Polls `check` until it returns `Some`, failing with `what` (and the last state `check`
/// described through `last`) after `timeout`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// Writes an executable `/bin/sh` script.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod script");
    path
}

/// The lines of a log file the scripts append to (empty while it does not exist).
pub fn read_lines(path: &Path) -> Vec<String> {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    text.lines().map(str::to_string).collect()
}

/// The whitespace-separated fields of the log's lines that begin with `tag`, after it.
pub fn log_records(path: &Path, tag: &str) -> Vec<Vec<String>> {
    read_lines(path)
        .iter()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next() == Some(tag)).then(|| fields.map(str::to_string).collect())
        })
        .collect()
}

/// Milliseconds since the Unix epoch of an RFC 3339 UTC time as the server renders them
/// (`2026-11-23T19:05:00.123Z`; fractions of any length, `Z` or `+00:00`).
pub fn unix_ms(text: &str) -> i64 {
    parse_unix_ms(text).unwrap_or_else(|| panic!("not an RFC 3339 UTC time: {text:?}"))
}

fn parse_unix_ms(text: &str) -> Option<i64> {
    let (date, time) = text.split_once('T')?;
    let time = time
        .strip_suffix('Z')
        .or_else(|| time.strip_suffix("+00:00"))?;
    let numbers = |part: &str, separator: char| -> Option<Vec<i64>> {
        part.split(separator)
            .map(|number| number.parse().ok())
            .collect()
    };
    let (hms, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let (date, hms) = (numbers(date, '-')?, numbers(hms, ':')?);
    let [year, month, day] = date[..] else {
        return None;
    };
    let [hour, minute, second] = hms[..] else {
        return None;
    };
    let millis: i64 = format!("{:0<3}", &fraction[..fraction.len().min(3)])
        .parse()
        .ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis)
}

/// SIGKILLs the processes still alive when dropped, so a failing test leaves nothing behind.
pub struct KillOnDrop(pub Vec<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if process_alive(pid) {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// True while a process with this pid exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the parenthesised command name.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            state != Some('Z')
        }
        Err(_) => false,
    }
}

#[test]
fn jobs_util_parses_server_times() {
    assert_eq!(unix_ms("1970-01-01T00:00:00.000Z"), 0);
    assert_eq!(unix_ms("1970-01-02T00:00:01.5Z"), 86_401_500);
    // date -u -d 2026-11-23T19:05:00.123Z +%s%3N
    assert_eq!(unix_ms("2026-11-23T19:05:00.123Z"), 1_795_460_700_123);
    assert_eq!(unix_ms("2024-02-29T12:00:00Z"), 1_709_208_000_000);
}
