//! A WebSocket connection's outgoing frames. Whoever has a frame for the connection (the
//! dispatcher, the connection's own reader, the pinger) writes it straight to the socket
//! when nothing is queued before it: one non-blocking `writev(2)` in the caller, no task to
//! wake. What the socket does not take is queued (bounded: a full queue closes the
//! connection as a slow consumer), and a drain, started only then, waits for the socket to
//! become writable and sends the queue in order, a burst per `writev`. An idle connection
//! holds no task, no timer and no queue for its writes.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

use super::framing::OutFrame;

/// A write that cannot make progress for this long means the peer stopped reading.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames handed to one `writev(2)` at most.
const WRITE_BATCH: usize = 64;

pub type Ready<'a> = Pin<Box<dyn Future<Output = io::Result<()>> + Send + 'a>>;

/// The write half of a socket, used without blocking.
pub trait Socket: Send + Sync + 'static {
    /// Write what the socket takes now; `WouldBlock` when it takes nothing.
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// The same for one buffer (`write(2)`: no iovec to copy in and check).
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        self.try_write_vectored(&[IoSlice::new(buf)])
    }
    /// Resolves once the socket may take more.
    fn writable(&self) -> Ready<'_>;
    /// No more writes: the peer reads the end of the stream.
    fn shutdown(&self);
}

impl Socket for tokio::net::tcp::OwnedWriteHalf {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        tokio::net::tcp::OwnedWriteHalf::try_write_vectored(self, bufs)
    }

    /// `send(2)` on the descriptor, without tokio's readiness word: for an idle socket that
    /// word is one more cache miss per frame (a fan-out touches each connection once per
    /// message; docs/benchmarks.md). A `WouldBlock` here leaves tokio thinking the socket
    /// writable, which costs the drain one extra turn: its first `writable()` returns at once,
    /// and its vectored write, made through tokio, then clears the stale readiness.
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        socket2::SockRef::from(self.as_ref()).send_with_flags(buf, libc::MSG_NOSIGNAL)
    }

    fn writable(&self) -> Ready<'_> {
        Box::pin(tokio::net::tcp::OwnedWriteHalf::writable(self))
    }

    fn shutdown(&self) {
        let _ = socket2::SockRef::from(self.as_ref()).shutdown(std::net::Shutdown::Write);
    }
}

/// What became of a frame handed to [`Outbox::push`].
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// On the socket.
    Sent,
    /// Queued behind a drain already running.
    Queued,
    /// Queued, and nobody is draining: the caller starts [`Outbox::drain`].
    NeedsDrain,
    /// The queue is full: the connection has to go (slow consumer).
    Full,
    /// The socket failed: the peer is gone.
    Failed,
    /// The connection is closing; the frame was dropped.
    Closed,
}

/// Why a drain stopped before the queue was empty.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DrainError {
    #[error("the peer took nothing for {WRITE_TIMEOUT:?}")]
    Stalled,
    #[error("the socket failed")]
    Failed,
}

#[derive(Default)]
struct State {
    queue: VecDeque<OutFrame>,
    /// Bytes of the front frame already on the socket.
    written: usize,
    /// A drain is running: it alone writes until the queue is empty.
    draining: bool,
    /// No more frames are taken (a full queue, or the close frame is queued).
    closed: bool,
    /// The socket is unusable.
    failed: bool,
}

pub struct Outbox {
    sock: Box<dyn Socket>,
    state: Mutex<State>,
    cap: usize,
    /// Told when a drain ends.
    idle: Notify,
}

impl Outbox {
    /// An outbox writing to `sock`, queueing at most `cap` frames.
    pub fn new(sock: Box<dyn Socket>, cap: usize) -> Self {
        Self {
            sock,
            state: Mutex::default(),
            cap: cap.max(1),
            idle: Notify::new(),
        }
    }

    /// Write `frame` now if nothing is ahead of it, else queue it.
    pub fn push(&self, frame: OutFrame) -> Pushed {
        let mut s = self.state.lock().unwrap();
        if s.closed || s.failed {
            return Pushed::Closed;
        }
        if s.draining || !s.queue.is_empty() {
            if s.queue.len() >= self.cap {
                s.closed = true;
                // A frame half on the wire is finished (so the close frame can follow it);
                // the rest is dropped.
                let keep = usize::from(s.written > 0);
                s.queue.truncate(keep);
                return Pushed::Full;
            }
            s.queue.push_back(frame);
            return Pushed::Queued;
        }
        self.write_first(&mut s, frame)
    }

    /// The close frame: taken even when the queue is full, and nothing after it.
    pub fn push_last(&self, frame: OutFrame) -> Pushed {
        let mut s = self.state.lock().unwrap();
        if s.failed {
            return Pushed::Failed;
        }
        s.closed = true;
        if s.draining || !s.queue.is_empty() {
            s.queue.push_back(frame);
            return if s.draining {
                Pushed::Queued
            } else {
                Pushed::NeedsDrain
            };
        }
        self.write_first(&mut s, frame)
    }

    /// Nothing is queued and nobody drains: the frame goes to the socket from here.
    fn write_first(&self, s: &mut State, frame: OutFrame) -> Pushed {
        let bytes = frame.as_bytes();
        let n = match self.sock.try_write(bytes) {
            Ok(n) if n == bytes.len() => return Pushed::Sent,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => {
                s.failed = true;
                return Pushed::Failed;
            }
        };
        s.written = n;
        s.queue.push_back(frame);
        s.draining = true;
        Pushed::NeedsDrain
    }

    /// Send the queue until it is empty, waiting for the socket between bursts. Run by the
    /// one caller that got [`Pushed::NeedsDrain`].
    pub async fn drain(&self) -> Result<(), DrainError> {
        {
            let mut s = self.state.lock().unwrap();
            s.draining = true;
        }
        let result = loop {
            match tokio::time::timeout(WRITE_TIMEOUT, self.sock.writable()).await {
                Err(_) => break Err(DrainError::Stalled),
                Ok(Err(_)) => break Err(DrainError::Failed),
                Ok(Ok(())) => {}
            }
            let mut s = self.state.lock().unwrap();
            match self.write_queued(&mut s) {
                Ok(true) => {
                    s.queue = VecDeque::new();
                    break Ok(());
                }
                Ok(false) => continue,
                Err(_) => break Err(DrainError::Failed),
            }
        };
        {
            let mut s = self.state.lock().unwrap();
            s.draining = false;
            if result.is_err() {
                s.failed = true;
                s.queue = VecDeque::new();
            }
        }
        self.idle.notify_waiters();
        result
    }

    /// Write queued frames until the queue is empty (true) or the socket is full (false).
    fn write_queued(&self, s: &mut State) -> io::Result<bool> {
        while !s.queue.is_empty() {
            let mut n = {
                let slices: Vec<IoSlice<'_>> = s
                    .queue
                    .iter()
                    .take(WRITE_BATCH)
                    .enumerate()
                    .map(|(i, f)| {
                        let b = f.as_bytes();
                        IoSlice::new(if i == 0 { &b[s.written..] } else { b })
                    })
                    .collect();
                match self.sock.try_write_vectored(&slices) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) => return Err(e),
                }
            };
            while let Some(front) = s.queue.front() {
                let rest = front.as_bytes().len() - s.written;
                if n < rest {
                    s.written += n;
                    break;
                }
                n -= rest;
                s.written = 0;
                s.queue.pop_front();
            }
        }
        Ok(true)
    }

    /// Until no drain is running.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.state.lock().unwrap().draining {
                return;
            }
            notified.await;
        }
    }

    /// Frames waiting for the socket.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.state.lock().unwrap().queue.len()
    }

    /// End the stream (after the close frame).
    pub fn shutdown(&self) {
        self.state.lock().unwrap().failed = true;
        self.sock.shutdown();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;

    /// A socket that takes `room` more bytes, at most `chunk` per call, then says
    /// `WouldBlock` until given more room; it records what it got and the calls.
    #[derive(Default)]
    pub(crate) struct Fake {
        pub s: Mutex<FakeState>,
        pub more: Notify,
    }

    #[derive(Default)]
    pub(crate) struct FakeState {
        pub bytes: Vec<u8>,
        pub calls: usize,
        pub room: usize,
        pub chunk: usize,
        pub broken: bool,
        pub shut: bool,
    }

    impl Fake {
        pub fn new(room: usize, chunk: usize) -> Arc<Self> {
            let f = Arc::new(Self::default());
            {
                let mut s = f.s.lock().unwrap();
                s.room = room;
                s.chunk = chunk;
            }
            f
        }

        pub fn give(&self, room: usize) {
            self.s.lock().unwrap().room += room;
            self.more.notify_waiters();
        }

        pub fn bytes(&self) -> Vec<u8> {
            self.s.lock().unwrap().bytes.clone()
        }
    }

    impl Socket for Arc<Fake> {
        fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut s = self.s.lock().unwrap();
            s.calls += 1;
            if s.broken {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            let mut budget = s.room.min(s.chunk);
            if budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(budget);
                s.bytes.extend_from_slice(&b[..take]);
                n += take;
                budget -= take;
                if budget == 0 {
                    break;
                }
            }
            s.room -= n;
            Ok(n)
        }

        fn writable(&self) -> Ready<'_> {
            Box::pin(async move {
                loop {
                    let more = self.more.notified();
                    tokio::pin!(more);
                    more.as_mut().enable();
                    {
                        let s = self.s.lock().unwrap();
                        if s.broken {
                            return Err(io::ErrorKind::BrokenPipe.into());
                        }
                        if s.room > 0 {
                            return Ok(());
                        }
                    }
                    more.await;
                }
            })
        }

        fn shutdown(&self) {
            self.s.lock().unwrap().shut = true;
        }
    }

    fn text(i: usize) -> OutFrame {
        OutFrame::text(format!("{{\"n\":{i}}}").as_bytes())
    }

    fn wire(frames: &[OutFrame]) -> Vec<u8> {
        frames.iter().flat_map(|f| f.as_bytes().to_vec()).collect()
    }

    #[test]
    fn a_frame_for_an_idle_socket_is_written_by_the_caller() {
        let sock = Fake::new(usize::MAX, usize::MAX);
        let out = Outbox::new(Box::new(sock.clone()), 8);
        assert_eq!(out.push(text(1)), Pushed::Sent);
        assert_eq!(out.push(text(2)), Pushed::Sent);
        assert_eq!(sock.bytes(), wire(&[text(1), text(2)]));
        assert_eq!(sock.s.lock().unwrap().calls, 2);
        assert_eq!(out.queued(), 0);
    }

    #[tokio::test]
    async fn what_the_socket_does_not_take_is_drained_in_order_once_it_can() {
        // Room for half a frame, then nothing.
        let sock = Fake::new(3, usize::MAX);
        let out = Arc::new(Outbox::new(Box::new(sock.clone()), 1000));
        let frames: Vec<OutFrame> = (0..200).map(text).collect();
        assert_eq!(out.push(frames[0].clone()), Pushed::NeedsDrain);
        for f in &frames[1..] {
            assert_eq!(
                out.push(f.clone()),
                Pushed::Queued,
                "nothing overtakes the queue"
            );
        }
        let drain = tokio::spawn({
            let out = out.clone();
            async move { out.drain().await }
        });
        let calls = sock.s.lock().unwrap().calls;
        // The peer reads in small steps: short writes resume where they stopped.
        sock.s.lock().unwrap().chunk = 7;
        sock.give(usize::MAX / 2);
        drain.await.unwrap().unwrap();
        assert_eq!(sock.bytes(), wire(&frames), "every byte once, in order");
        assert_eq!(out.queued(), 0);
        assert!(sock.s.lock().unwrap().calls > calls);
        // Drained: the next frame goes straight out again.
        sock.s.lock().unwrap().chunk = usize::MAX;
        assert_eq!(out.push(text(7)), Pushed::Sent);
    }

    #[tokio::test]
    async fn a_burst_goes_out_in_one_writev() {
        let sock = Fake::new(0, usize::MAX);
        let out = Outbox::new(Box::new(sock.clone()), 100);
        let frames: Vec<OutFrame> = (0..10).map(text).collect();
        assert_eq!(out.push(frames[0].clone()), Pushed::NeedsDrain);
        for f in &frames[1..] {
            out.push(f.clone());
        }
        let before = sock.s.lock().unwrap().calls;
        sock.give(usize::MAX / 2);
        out.drain().await.unwrap();
        assert_eq!(sock.s.lock().unwrap().calls - before, 1);
        assert_eq!(sock.bytes(), wire(&frames));
    }

    #[tokio::test]
    async fn a_full_queue_finishes_the_frame_on_the_wire_then_only_the_close_frame() {
        let sock = Fake::new(3, usize::MAX);
        let out = Outbox::new(Box::new(sock.clone()), 4);
        let first = text(0);
        assert_eq!(out.push(first.clone()), Pushed::NeedsDrain);
        // The bound counts the frame on the wire.
        for i in 1..4 {
            assert_eq!(out.push(text(i)), Pushed::Queued);
        }
        assert_eq!(out.push(text(5)), Pushed::Full);
        assert_eq!(
            out.push(text(6)),
            Pushed::Closed,
            "nothing after a full queue"
        );
        let close = OutFrame::close(4008, "slow consumer");
        // The drain that started with the first frame sends it.
        assert_eq!(out.push_last(close.clone()), Pushed::Queued);
        sock.give(usize::MAX / 2);
        out.drain().await.unwrap();
        assert_eq!(sock.bytes(), wire(&[first, close]));
    }

    #[test]
    fn a_failed_write_says_so_and_takes_nothing_more() {
        let sock = Fake::new(usize::MAX, usize::MAX);
        sock.s.lock().unwrap().broken = true;
        let out = Outbox::new(Box::new(sock.clone()), 8);
        assert_eq!(out.push(text(1)), Pushed::Failed);
        assert_eq!(out.push(text(2)), Pushed::Closed);
        assert_eq!(out.push_last(OutFrame::close(1000, "")), Pushed::Failed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_never_reads_stalls_the_drain_after_the_write_timeout() {
        let sock = Fake::new(0, usize::MAX);
        let out = Outbox::new(Box::new(sock.clone()), 8);
        assert_eq!(out.push(text(1)), Pushed::NeedsDrain);
        let t = tokio::time::Instant::now();
        assert_eq!(out.drain().await, Err(DrainError::Stalled));
        assert!(t.elapsed() >= WRITE_TIMEOUT);
        assert_eq!(out.push(text(2)), Pushed::Closed);
    }

    #[tokio::test]
    async fn idle_waits_for_a_running_drain() {
        let sock = Fake::new(0, usize::MAX);
        let out = Arc::new(Outbox::new(Box::new(sock.clone()), 8));
        out.idle().await; // nothing running: at once
        assert_eq!(out.push(text(1)), Pushed::NeedsDrain);
        let drain = tokio::spawn({
            let out = out.clone();
            async move { out.drain().await }
        });
        let waiter = tokio::spawn({
            let out = out.clone();
            async move { out.idle().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        sock.give(1000);
        drain.await.unwrap().unwrap();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("idle returns once the drain ends")
            .unwrap();
    }
}
