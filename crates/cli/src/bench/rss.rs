//! Resident memory of the process a bench run measures: this process (an
//! in-process engine next to the load generator) or the engine's child
//! process (`--engine-process`, [`child`](super::child)).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// The process whose memory is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proc {
    /// This process (`/proc/self`).
    This,
    /// Another process, by pid (`/proc/<pid>`).
    Pid(u32),
}

impl Proc {
    /// `VmRSS` (resident set size) in bytes.
    pub(crate) fn rss(self) -> Option<u64> {
        self.status_bytes("VmRSS:")
    }

    /// `VmHWM` (the peak resident set size since the process started) in
    /// bytes: the exact peak, where sampling VmRSS can miss a short one.
    pub(crate) fn hwm(self) -> Option<u64> {
        self.status_bytes("VmHWM:")
    }

    /// The field `key` of `/proc/<pid>/status`, a size in kB, in bytes.
    fn status_bytes(self, key: &str) -> Option<u64> {
        let path = match self {
            Self::This => "/proc/self/status".to_owned(),
            Self::Pid(pid) => format!("/proc/{pid}/status"),
        };
        let status = std::fs::read_to_string(path).ok()?;
        let line = status.lines().find(|l| l.starts_with(key))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }
}

/// Samples a process's VmRSS every 100 ms on a thread; keeps the peak.
pub(crate) struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    proc: Proc,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    /// Starts sampling `proc`.
    pub(crate) fn start(proc: Proc) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(proc.rss().unwrap_or(0)));
        let thread = {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::Builder::new()
                .name("bench-rss".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(rss) = proc.rss() {
                            peak.fetch_max(rss, Ordering::Relaxed);
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                })
                .ok()
        };
        Self {
            stop,
            peak,
            proc,
            thread,
        }
    }

    /// Stops sampling; the peak VmRSS seen (bytes), including a last reading.
    pub(crate) fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(rss) = self.proc.rss() {
            self.peak.fetch_max(rss, Ordering::Relaxed);
        }
        self.peak.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_reads_the_same_as_its_pid() {
        let by_pid = Proc::Pid(std::process::id());
        assert!(Proc::This.rss().is_some_and(|b| b > 0));
        assert!(by_pid.rss().is_some_and(|b| b > 0));
        // The peak is at least any reading taken before it.
        let rss = by_pid.rss().unwrap();
        assert!(by_pid.hwm().unwrap() >= rss);
        assert_eq!(Proc::Pid(u32::MAX).rss(), None);
    }
}
