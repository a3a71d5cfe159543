//! A real nats-server with JetStream for a test: on a free loopback port,
//! its store in a temporary directory, stopped on drop; [`stop`] and
//! [`start`] it again (same port, same store) for outage tests; more
//! configuration (a `tls` block, an `authorization` block) for the tests
//! of TLS and credentials ([`launch_with`]). And reading a stream back
//! with a JetStream consumer.
//!
//! [`launch_with`]: NatsServer::launch_with
//!
//! [`stop`]: NatsServer::stop
//! [`start`]: NatsServer::start

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt as _;

use crate::external::external_program;
use crate::settings::free_port;

/// How the test itself connects to a server that wants TLS or
/// credentials (to read its streams back): the options of a connection.
pub type TestConnect = Box<dyn Fn() -> async_nats::ConnectOptions + Send + Sync>;

/// A nats-server process with JetStream (see the [module docs](self)).
pub struct NatsServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    /// Where it listens.
    pub addr: SocketAddr,
    child: Option<Child>,
    connect: TestConnect,
}

impl NatsServer {
    /// Starts `nats-server` for `test`, its `max_payload` set when given;
    /// `None` (after a loud SKIPPED line) when it is not installed.
    pub fn launch(test: &str, max_payload: Option<u32>) -> Option<Self> {
        let extra = max_payload.map_or(String::new(), |n| format!("max_payload: {n}\n"));
        Self::launch_with(test, &extra, Box::new(async_nats::ConnectOptions::new))
    }

    /// Starts `nats-server` for `test` with `extra` appended to its
    /// configuration file (e.g. a `tls { … }` or `authorization { … }`
    /// block); the test's own connections (e.g. [`messages`]) use
    /// `connect`'s options. `None` (after a loud SKIPPED line) when it is
    /// not installed.
    ///
    /// [`messages`]: Self::messages
    pub fn launch_with(test: &str, extra: &str, connect: TestConnect) -> Option<Self> {
        let bin = external_program(test, "nats-server")?;
        let dir = tempfile::tempdir().expect("nats temp dir");
        let addr = free_port();
        let store = dir.path().join("store");
        let mut conf = format!(
            "listen: \"{addr}\"\njetstream {{ store_dir: \"{}\" }}\n",
            store.display()
        );
        conf.push_str(extra);
        std::fs::write(dir.path().join("nats.conf"), conf).expect("nats config written");
        let mut server = Self {
            bin,
            dir,
            addr,
            child: None,
            connect,
        };
        server.start();
        Some(server)
    }

    /// The `nats://` URL.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "nats-server already runs");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("nats.log"))
            .expect("nats log");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut child = Command::new(&self.bin)
                .arg("-c")
                .arg(self.dir.path().join("nats.conf"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log.try_clone().expect("nats log"))
                .spawn()
                .expect("nats-server starts");
            loop {
                if std::net::TcpStream::connect(self.addr).is_ok() {
                    self.child = Some(child);
                    return;
                }
                if child.try_wait().expect("try_wait").is_some() {
                    break; // the port still held after a stop: again
                }
                assert!(Instant::now() < deadline, "nats-server did not listen");
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(Instant::now() < deadline, "nats-server could not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the server (SIGKILL: an outage, not a goodbye) and reaps it.
    /// Its store stays for [`start`](Self::start).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    /// A JetStream context on a new connection (with the options given to
    /// [`launch_with`](Self::launch_with)).
    pub async fn jetstream(&self) -> jetstream::Context {
        let client = (self.connect)()
            .connect(self.url())
            .await
            .expect("test connects to nats");
        jetstream::new(client)
    }

    /// Creates the stream `name` capturing `subjects`, file storage, with
    /// JetStream's default 2 min duplicate window.
    pub async fn create_stream(&self, name: &str, subjects: &[&str]) {
        self.jetstream()
            .await
            .create_stream(stream::Config {
                name: name.to_owned(),
                subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
                ..Default::default()
            })
            .await
            .expect("stream created");
    }

    /// Every message of stream `name`, from the first: (subject,
    /// `Nats-Msg-Id`, payload), read with an ephemeral pull consumer.
    pub async fn messages(&self, name: &str) -> Vec<StreamMessage> {
        let js = self.jetstream().await;
        let mut stream = js.get_stream(name).await.expect("stream exists");
        let total = stream.info().await.expect("stream info").state.messages;
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .expect("consumer created");
        let mut out = Vec::with_capacity(total as usize);
        let mut idle = 0;
        while (out.len() as u64) < total && idle < 20 {
            let mut batch = consumer
                .fetch()
                .max_messages(1_000)
                .expires(Duration::from_millis(500))
                .messages()
                .await
                .expect("fetch");
            let before = out.len();
            while let Some(m) = batch.next().await {
                let m = m.expect("message");
                let id = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default();
                out.push(StreamMessage {
                    subject: m.subject.to_string(),
                    id,
                    payload: m.payload.to_vec(),
                });
            }
            idle = if out.len() == before { idle + 1 } else { 0 };
        }
        out
    }
}

/// One message read back from a stream.
#[derive(Debug, Clone)]
pub struct StreamMessage {
    /// Its subject.
    pub subject: String,
    /// Its `Nats-Msg-Id` header (empty when absent).
    pub id: String,
    /// Its payload.
    pub payload: Vec<u8>,
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Asserts every `Nats-Msg-Id` of `messages` is there once, and they are
/// exactly `expected` (`<source_id>:<seq>` strings); returns their count.
pub fn assert_ids_exactly_once(
    messages: &[StreamMessage],
    expected: impl IntoIterator<Item = String>,
) -> usize {
    let mut seen = std::collections::HashMap::<&str, u32>::new();
    for m in messages {
        *seen.entry(m.id.as_str()).or_default() += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(dups.is_empty(), "duplicated message ids, e.g. {dups:?}");
    let mut expected: Vec<String> = expected.into_iter().collect();
    expected.sort();
    let mut got: Vec<&str> = seen.keys().copied().collect();
    got.sort_unstable();
    let missing: Vec<_> = expected
        .iter()
        .filter(|e| got.binary_search(&e.as_str()).is_err())
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && got.len() == expected.len(),
        "{} ids in the stream, {} expected; missing e.g. {missing:?}",
        got.len(),
        expected.len()
    );
    got.len()
}
