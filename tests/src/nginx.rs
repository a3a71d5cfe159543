//! A real nginx balancing gRPC (`grpc_pass`) over engines, for a test: its
//! configuration, pid file, logs and temp paths in a temporary directory,
//! listening on a free loopback port, stopped on drop.
//!
//! Why `daemon off; master_process off;` (in the file, not `-g`): one
//! process the test owns and kills (a killed master would leave its
//! worker behind), and no switch to the `user` of the configuration,
//! which nginx makes only when started as root: so it behaves the same as
//! root (CI) and as any other user, and its files in the temporary
//! directory stay writable by it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::external::external_program;
use crate::settings::free_port;

/// The nginx configuration balancing `listen` over `upstreams`, with every
/// path nginx writes under `dir`. Also the example of `docs/scaling.md`.
///
/// What it must do for sluice: HTTP/2 on both sides (`listen … http2`,
/// `grpc_pass`), long-lived streams (read/send and idle timeouts far above
/// the engine's keepalive interval), a failed engine skipped for new
/// streams (`max_fails`, `fail_timeout`, `grpc_next_upstream`).
pub fn nginx_config(listen: SocketAddr, upstreams: &[SocketAddr], dir: &Path) -> String {
    let d = dir.display();
    let servers: String = upstreams
        .iter()
        .map(|a| format!("        server {a} max_fails=1 fail_timeout=2s;\n"))
        .collect();
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;

events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;

    upstream sluice {{
{servers}    }}

    server {{
        listen {listen} http2;
        # Ingest streams live for hours: no timeout may end one.
        client_body_timeout 1h;
        client_max_body_size 0;
        keepalive_timeout 1h;
        keepalive_requests 100000;
        location / {{
            grpc_pass grpc://sluice;
            grpc_connect_timeout 2s;
            grpc_read_timeout 1h;
            grpc_send_timeout 1h;
            grpc_next_upstream error timeout;
        }}
    }}
}}
"#
    )
}

/// `nginx` (the binary `bin`) run with its prefix and error log in `dir`
/// and the main configuration `conf`, as an unprivileged process does.
pub fn nginx_command(bin: &Path, dir: &Path, conf: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(conf);
    cmd
}

/// An nginx process (see the [module docs](self)).
pub struct Nginx {
    dir: tempfile::TempDir,
    /// Where it listens.
    pub addr: SocketAddr,
    child: Child,
}

impl Nginx {
    /// Starts nginx for `test` in front of `upstreams`; `None` (after a
    /// loud SKIPPED line) when it is not installed.
    pub fn launch(test: &str, upstreams: &[SocketAddr]) -> Option<Self> {
        let bin = external_program(test, "nginx")?;
        let dir = tempfile::tempdir().expect("nginx temp dir");
        let addr = free_port();
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, nginx_config(addr, upstreams, dir.path())).expect("nginx.conf");
        let child = nginx_command(&bin, dir.path(), &conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let mut nginx = Self { dir, addr, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if let Some(status) = nginx.child.try_wait().expect("try_wait") {
                panic!("nginx exited ({status}):\n{}", nginx.error_log());
            }
            assert!(Instant::now() < deadline, "nginx did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(nginx)
    }

    /// The `http://` address sources connect to.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its error log.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
