//! What the kernel cannot settle about a target's fds, settled against `/proc/PID/fd`: which of
//! the sockets an exec set aside are still open (the others were close-on-exec), and which
//! tracked sockets of a long `close_range(2)` lay past the kernel's own scan. It runs on a thread
//! of its own, never on the async runtime, and hands the connections it forgets to the stitch
//! stage as closes.

use std::{os::unix::ffi::OsStrExt as _, sync::mpsc, thread::JoinHandle};

use loupe_common::{SocketInfo, SocketKey};

use super::SocketMap;
use crate::events::{Event, FdNews};

/// A handle on `SOCKETS` of its own and what it does with [`FdNews`].
pub struct FdResync {
    sockets: SocketMap,
}

impl FdResync {
    pub fn new(sockets: SocketMap) -> Self {
        Self { sockets }
    }

    /// Acts on one piece of news; pushes a close to `closed` for every connection it forgets.
    pub fn handle(&mut self, news: FdNews, now_ns: u64, closed: &mut Vec<Event>) {
        match news {
            FdNews::Parked {
                pid,
                fd,
                conn_id,
                role,
            } => {
                let key = SocketKey { pid, fd }.as_u64();
                if !is_socket(pid, fd) {
                    closed.push(close(pid, fd, conn_id, now_ns));
                    return;
                }
                // A socket the new program accepted or connected on that fd since is tracked
                // already, as a new connection: the parked one is gone.
                if self.sockets.get(key).is_some() {
                    closed.push(close(pid, fd, conn_id, now_ns));
                    return;
                }
                // Still open across the exec: tracked again. The new program's goroutine ids
                // are not the old one's, so no Go offsets.
                let info = SocketInfo {
                    role,
                    goid_offset: 0,
                    conn_id,
                };
                if let Err(err) = self.sockets.insert(key, info) {
                    tracing::debug!("socket {fd} of pid {pid} not tracked again: {err}");
                    closed.push(close(pid, fd, conn_id, now_ns));
                }
            }
            FdNews::Resync { pid, first, last } => {
                let stale: Vec<(u64, SocketInfo)> = self
                    .sockets
                    .entries()
                    .filter(|&(key, _)| SocketKey::pid_of(key) == pid)
                    .filter(|&(key, _)| {
                        let fd = key as u32;
                        (first..=last).contains(&fd) && !is_socket(pid, fd as i32)
                    })
                    .collect();
                for (key, info) in stale {
                    self.sockets.remove(key);
                    closed.push(close(pid, key as u32 as i32, info.conn_id, now_ns));
                }
            }
        }
    }

    /// Runs on its own thread until `news` closes; sends each batch of closes to `closes`.
    pub fn spawn(
        mut self,
        news: mpsc::Receiver<FdNews>,
        closes: tokio::sync::mpsc::UnboundedSender<Vec<Event>>,
    ) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("loupe-fd-resync".into())
            .spawn(move || {
                for item in news {
                    let mut closed = Vec::new();
                    self.handle(item, crate::spans::clock::monotonic_now_ns(), &mut closed);
                    if !closed.is_empty() && closes.send(closed).is_err() {
                        return;
                    }
                }
            })
    }
}

/// Whether `/proc/PID/fd/FD` is open and a socket.
fn is_socket(pid: u32, fd: i32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .is_ok_and(|target| target.as_os_str().as_bytes().starts_with(b"socket:"))
}

fn close(pid: u32, fd: i32, conn_id: u64, ts_ns: u64) -> Event {
    Event::Close {
        pid,
        tid: pid,
        fd,
        conn_id,
        ts_ns,
    }
}
