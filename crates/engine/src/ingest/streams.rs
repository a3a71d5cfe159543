//! The registry of open streams: at most one per source. A newer stream of
//! a source takes over (the older one ends `ABORTED`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use sluice_buffer::SourceId;
use tokio_util::sync::CancellationToken;

/// An active stream of a source, as the registry knows it.
#[derive(Debug)]
struct StreamEntry {
    id: u64,
    takeover: CancellationToken,
    half_closed: Arc<AtomicBool>,
}

/// A newly registered stream: its id, the token cancelled when a newer
/// stream of the source takes over, and the flag it sets when its source
/// half-closes.
#[derive(Debug)]
pub(crate) struct Registration {
    pub(crate) id: u64,
    pub(crate) takeover: CancellationToken,
    pub(crate) half_closed: Arc<AtomicBool>,
}

/// How a source's stream looks from outside (`Admin.Stats`, `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Connection {
    /// No stream is open.
    Disconnected,
    /// A stream is open and may still send.
    Open,
    /// A stream is open but its source half-closed it (it only waits for acks).
    HalfClosed,
}

/// Open streams by source.
///
/// Invariant (kept by the lock): at most one entry per source, and it is
/// the newest stream registered for it; an entry is removed only by its own
/// stream (`unregister` with its id). No other lock is taken while this one
/// is held.
#[derive(Debug, Default)]
pub(crate) struct StreamRegistry {
    streams: Mutex<HashMap<SourceId, StreamEntry>>,
    next_id: AtomicU64,
}

impl StreamRegistry {
    /// Registers a new stream for `source`, ending the older one (ABORTED).
    pub(crate) fn register(&self, source: SourceId) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let takeover = CancellationToken::new();
        let half_closed = Arc::new(AtomicBool::new(false));
        let old = self.streams.lock().insert(
            source,
            StreamEntry {
                id,
                takeover: takeover.clone(),
                half_closed: half_closed.clone(),
            },
        );
        if let Some(old) = old {
            tracing::info!(source = %source, old = old.id, new = id, "newer stream takes over");
            old.takeover.cancel();
        }
        Registration {
            id,
            takeover,
            half_closed,
        }
    }

    /// Forgets `source`'s stream `id` if it is still the registered one.
    pub(crate) fn unregister(&self, source: SourceId, id: u64) {
        let mut streams = self.streams.lock();
        if streams.get(&source).is_some_and(|e| e.id == id) {
            streams.remove(&source);
        }
    }

    /// The connection state of every source with an open stream; sources
    /// not in the map are [`Connection::Disconnected`].
    pub(crate) fn connections(&self) -> HashMap<SourceId, Connection> {
        self.streams
            .lock()
            .iter()
            .map(|(id, e)| {
                let c = if e.half_closed.load(Ordering::Relaxed) {
                    Connection::HalfClosed
                } else {
                    Connection::Open
                };
                (*id, c)
            })
            .collect()
    }
}
