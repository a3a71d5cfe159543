//! A progress bar that follows a client's [`Progress`], for `send` and `demo`.

use std::time::Duration;

use indicatif::ProgressBar;
use sluice_client::Progress;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the bar is redrawn from the client's progress.
const TICK: Duration = Duration::from_millis(100);

/// Spawns a task that sets `bar` to the acked count and to `message` of the
/// client's progress, ten times a second, until it is aborted.
pub(crate) fn follow(
    bar: ProgressBar,
    progress: watch::Receiver<Progress>,
    message: impl Fn(&Progress) -> String + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            {
                let p = progress.borrow();
                bar.set_position(p.acked);
                bar.set_message(message(&p));
            }
            tokio::time::sleep(TICK).await;
        }
    })
}
