//! Child processes: one test alone in a process of its own, and engines in
//! child processes that a test can SIGKILL.
//!
//! All end-to-end tests share one test binary, so they share its process.
//! A test that needs process-global state to itself (the Prometheus recorder
//! that every engine of the process feeds) runs its body in a child process
//! of the test binary that runs only that test ([`in_own_process`]). An
//! engine a test kills runs in a child process too ([`EngineProcess`]): the
//! `sluice` binary (the crash test), or the test binary itself serving an
//! engine from a configuration file ([`engine_child_command`]).

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Environment variable that marks the child process.
const CHILD: &str = "SLUICE_TESTS_OWN_PROCESS";

/// Call first in the test `test` (its path in the test binary, e.g.
/// `observe::metrics_after_records`): in the child process it returns `true`
/// and the test runs its body; otherwise it runs the test binary again with
/// only that test, waits for it, panics (with its output) unless it passed,
/// and returns `false` (the body already ran in the child).
pub fn in_own_process(test: &str) -> bool {
    if std::env::var_os(CHILD).is_some_and(|v| v == test) {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, test)
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} in its own process: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    false
}

/// Environment variable that carries the configuration file of an engine
/// child process ([`engine_child_command`]).
const ENGINE_CONFIG: &str = "SLUICE_TESTS_ENGINE_CONFIG";

/// The command that runs the test binary's test `test` (its path, e.g.
/// `postgres::engine_child`) as an engine serving `config`; that test must
/// call [`serve_if_engine_child`]. For [`EngineProcess::start`].
pub fn engine_child_command(test: &str, config: &Path) -> Command {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut c = Command::new(exe);
    c.args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ENGINE_CONFIG, config);
    c
}

/// In a child started by [`engine_child_command`]: loads its configuration
/// and runs the engine as `sluice serve` does, until SIGTERM (or SIGINT)
/// starts its graceful shutdown, after which the test (and the process)
/// ends; or until the process is killed. Anywhere else: returns at once.
pub fn serve_if_engine_child() {
    let Some(config) = std::env::var_os(ENGINE_CONFIG) else {
        return;
    };
    let settings = sluice_config::Settings::load(Some(Path::new(&config))).expect("engine config");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let report = rt
        .block_on(sluice_engine::run_until_signal(settings))
        .expect("engine runs and shuts down");
    eprintln!("engine child stopped: {report:?}");
}

/// An engine in a child process, listening on a fixed port (a restarted
/// engine keeps it); killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct EngineProcess {
    child: Child,
}

impl EngineProcess {
    /// Starts `command()` (standard error appended to `log`) and waits
    /// until `port` accepts connections. Retries the start a few times
    /// within 20 s (the port may still be held briefly after a kill).
    pub fn start(command: impl Fn() -> Command, port: u16, log: &Path) -> Self {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let stderr = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .expect("log file");
            let mut child = command()
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .expect("the engine process starts");
            loop {
                if std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                    return Self { child };
                }
                if let Some(status) = child.try_wait().expect("try_wait") {
                    eprintln!("engine exited at start ({status}); retrying");
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "engine did not listen on {port} in time; log:\n{}",
                        log_tail(log)
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(
                Instant::now() < deadline,
                "engine could not start; log:\n{}",
                log_tail(log)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM: the engine starts its graceful shutdown (health
    /// `NOT_SERVING`, drain, streams ended). See [`wait_exit`](Self::wait_exit).
    pub fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("`kill` runs");
        assert!(status.success(), "kill -TERM {}: {status}", self.child.id());
    }

    /// Waits (polling, at most `limit`) for the process to exit on its own;
    /// panics with the log's end if it does not, or if it did not exit
    /// successfully (a graceful shutdown ends the child's test as passed).
    pub fn wait_exit(&mut self, limit: Duration, log: &Path) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                assert!(
                    status.success(),
                    "engine exited with {status}; log:\n{}",
                    log_tail(log)
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "engine did not exit within {limit:?}; log:\n{}",
                log_tail(log)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    /// Panics (with the log's end) if the engine died on its own.
    pub fn assert_running(&mut self, log: &Path) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("engine died on its own ({status}); log:\n{}", log_tail(log));
        }
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last 4,000 bytes of `log`.
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let start = text.len().saturating_sub(4_000);
    text[text.floor_char_boundary(start)..].to_owned()
}
