//! A pipeline stage on a thread of its own. The async runtime has two workers, and one of them
//! drains the ring buffer: a stage whose work blocks (procfs reads, /proc/net tables, ELF parsing
//! and uprobe attaches, writes to a terminal that may be a slow pipe) runs its future here
//! instead, so it only ever holds up itself. Its timers and channels are still the runtime's.

use std::{future::Future, thread::JoinHandle};

use tokio::sync::oneshot;

/// A stage running on its own thread.
pub struct Stage<T> {
    /// None once its output was taken.
    done: Option<oneshot::Receiver<T>>,
    thread: JoinHandle<()>,
}

impl<T: Send + 'static> Stage<T> {
    /// Starts `future` on a new thread named `name`; must be called from within the runtime.
    pub fn spawn<F>(name: &str, future: F) -> std::io::Result<Self>
    where
        F: Future<Output = T> + Send + 'static,
    {
        let runtime = tokio::runtime::Handle::current();
        Self::on_thread(name, move || runtime.block_on(future))
    }

    /// Starts `future` on a new thread named `name` with a runtime of its own (one thread):
    /// the tasks it spawns (e.g. a client's connections) run on that thread too, never on the
    /// runtime the ring-buffer reader shares.
    pub fn spawn_isolated<F>(name: &str, future: F) -> std::io::Result<Self>
    where
        F: Future<Output = T> + Send + 'static,
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(name)
            .build()?;
        Self::on_thread(name, move || runtime.block_on(future))
    }

    /// Runs `work` on a new thread named `name`; its output is what [`Self::finished`] gives.
    fn on_thread(name: &str, work: impl FnOnce() -> T + Send + 'static) -> std::io::Result<Self> {
        let (tx, done) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let _ = tx.send(work());
            })?;
        Ok(Self {
            done: Some(done),
            thread,
        })
    }

    /// Resolves when the stage has finished: its output, or None if it panicked. Cancel-safe
    /// (a `select!` branch); once it has resolved, it never resolves again.
    pub async fn finished(&mut self) -> Option<T> {
        let Some(done) = self.done.as_mut() else {
            return std::future::pending().await;
        };
        let output = done.await.ok();
        self.done = None;
        output
    }

    /// Waits for the stage to finish (if [`Self::finished`] has not seen it yet) and its thread
    /// to end.
    pub async fn join(mut self) -> Option<T> {
        let output = match self.done {
            Some(_) => self.finished().await,
            None => None,
        };
        let thread = self.thread;
        // The thread has sent its output (or unwound): joining it takes no time, but off the
        // runtime all the same.
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        output
    }
}
