//! An engine in a process of its own, to be killed with SIGKILL (a real
//! crash: nothing of it runs after the signal) and started again on the
//! same port.
//!
//! The process is the test binary itself, running only the test
//! [`ENGINE_CHILD_TEST`] with [`CONFIG_VAR`] set: that test calls
//! [`engine_child`], which serves the engine from the configuration file
//! as `sluice serve --config` does, until killed. (Why not the `sluice`
//! binary: Cargo gives its path only to tests of its own package.)

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_config::Settings;

/// The test, in every test binary that starts engine processes, that
/// calls [`engine_child`] (`tests/tests/e2e/main.rs` has it).
pub const ENGINE_CHILD_TEST: &str = "engine_child";

/// The variable that makes [`engine_child`] serve: the configuration file.
pub const CONFIG_VAR: &str = "SLUICE_TESTS_ENGINE_CONFIG";

/// The body of [`ENGINE_CHILD_TEST`]: serves the engine of the file named
/// by [`CONFIG_VAR`] until SIGINT/SIGTERM (or SIGKILL); without the
/// variable (a normal test run) returns at once.
pub fn engine_child() {
    let Some(path) = std::env::var_os(CONFIG_VAR) else {
        return;
    };
    let settings = Settings::load(Some(Path::new(&path))).expect("engine child: settings");
    sluice_engine::logging::init(&settings.log);
    let runtime = tokio::runtime::Runtime::new().expect("engine child: runtime");
    runtime
        .block_on(sluice_engine::run_until_signal(settings))
        .expect("engine child: engine runs");
}

/// An engine process serving `settings` on a fixed loopback port;
/// SIGKILLed and reaped on drop.
pub struct EngineProcess {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    /// The address it listens on.
    pub addr: SocketAddr,
}

impl EngineProcess {
    /// Writes `settings` (its `server.listen` set to `addr`) as
    /// `<dir>/<name>.toml` and starts the engine; it logs to
    /// `<dir>/<name>.log`.
    pub fn start(dir: &Path, name: &str, mut settings: Settings, addr: SocketAddr) -> Self {
        settings.server.listen = addr;
        let config = dir.join(format!("{name}.toml"));
        let toml = settings.to_toml_string().expect("settings as TOML");
        std::fs::write(&config, toml).expect("engine config written");
        let mut engine = Self {
            child: None,
            config,
            log: dir.join(format!("{name}.log")),
            addr,
        };
        engine.restart();
        engine
    }

    /// The `http://` address.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts the process (again) and waits until its port accepts
    /// connections, retrying while the port is still held.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "engine {} already runs", self.addr);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .expect("engine log file");
            let exe = std::env::current_exe().expect("the test binary's path");
            let mut child = Command::new(exe)
                .args([ENGINE_CHILD_TEST, "--exact", "--nocapture"])
                .env(CONFIG_VAR, &self.config)
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("engine process starts");
            loop {
                if std::net::TcpStream::connect(self.addr).is_ok() {
                    self.child = Some(child);
                    return;
                }
                if child.try_wait().expect("try_wait").is_some() {
                    break; // exited at start (port still held): again
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "engine {} did not listen in time:\n{}",
                        self.addr,
                        self.log_tail()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(
                Instant::now() < deadline,
                "engine {} could not start:\n{}",
                self.addr,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL and reap: a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Panics (with the log) if the process died on its own.
    pub fn assert_running(&mut self) {
        if let Some(child) = &mut self.child
            && let Some(status) = child.try_wait().expect("try_wait")
        {
            panic!("engine {} died ({status}):\n{}", self.addr, self.log_tail());
        }
    }

    /// The last 4 kB of its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.floor_char_boundary(text.len().saturating_sub(4_000));
        text[start..].to_owned()
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
