//! The progress display the long-running commands (`import`, `fetch`,
//! `verify`) share: a bar on stderr when it is a terminal, fed from the
//! `watch` channel the library publishes its progress on; nothing at all
//! otherwise, so logs and pipes stay clean.
use std::{io::IsTerminal, time::Duration};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::watch;

/// Shortest time between two renders of the bar.
const RENDER_EVERY: Duration = Duration::from_millis(50);

/// A running display; [`ProgressDisplay::finish`] clears it.
pub(crate) struct ProgressDisplay {
    task: Option<(ProgressBar, tokio::task::JoinHandle<()>)>,
}

impl ProgressDisplay {
    /// Shows a spinner with `first` until progress arrives, then calls
    /// `render` with the bar and each new value (it sets the style, length,
    /// position and message it wants).
    pub(crate) fn start<T>(
        mut rx: watch::Receiver<T>,
        first: &str,
        mut render: impl FnMut(&ProgressBar, &T) + Send + 'static,
    ) -> Self
    where
        T: Clone + Send + Sync + 'static,
    {
        if !std::io::stderr().is_terminal() {
            return Self { task: None };
        }
        let bar =
            ProgressBar::new(0).with_style(style("{spinner} [{elapsed_precise}] {msg}")).with_message(first.to_owned());
        bar.enable_steady_tick(Duration::from_millis(120));
        let shown = bar.clone();
        let task = tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let value = rx.borrow_and_update().clone();
                render(&shown, &value);
                // At most this often: a fetch publishes progress per file,
                // thousands of times a second, and each wake-up costs.
                tokio::time::sleep(RENDER_EVERY).await;
            }
        });
        Self { task: Some((bar, task)) }
    }

    pub(crate) async fn finish(self) {
        if let Some((bar, task)) = self.task {
            task.abort();
            let _ = task.await;
            bar.finish_and_clear();
        }
    }
}

/// An indicatif style from a template this crate wrote (so it is valid).
pub(crate) fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).expect("a valid progress template")
}
