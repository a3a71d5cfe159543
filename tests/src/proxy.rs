//! A TCP proxy in front of an engine whose connections can be cut.

use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

/// A TCP proxy in front of an engine whose connections can be cut: every
/// accepted connection is copied both ways to `upstream` by its own task;
/// `cut` aborts those tasks, which closes both sockets.
pub struct Proxy {
    /// `http://` address of the proxy.
    pub addr: String,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let conns = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let conns = conns.clone();
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let task = tokio::spawn(async move {
                        if let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                        }
                    });
                    let mut conns = conns.lock().unwrap();
                    conns.retain(|c: &JoinHandle<()>| !c.is_finished());
                    conns.push(task);
                }
            })
        };
        Self {
            addr,
            conns,
            accept,
        }
    }

    /// Cuts every open connection; returns how many there were.
    pub fn cut(&self) -> usize {
        let mut conns = self.conns.lock().unwrap();
        let n = conns.iter().filter(|c| !c.is_finished()).count();
        for c in conns.drain(..) {
            c.abort();
        }
        n
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
