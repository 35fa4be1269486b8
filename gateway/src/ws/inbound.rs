//! A connection's client frames, read in the connection's own task: tungstenite parses
//! them from the socket's read half and each is stamped with the instant it arrived.
//!
//! No reader task and no channel: an idle connection holds neither (a task cell of
//! 640 bytes, a channel and its waiter, about 0.9 KiB of every idle connection's memory in
//! docs/benchmarks.md), and a frame reaches its handler without a hand-off between tasks.
//! Frames that arrive while one is being handled are read ahead ([`Inbound::alongside`]),
//! up to [`AHEAD`], so that they are still stamped on arrival: the frame-rate limit counts
//! arrivals, not a backlog handled late after a stall. A full read-ahead stops reading,
//! and TCP pushes back on the client.

use std::collections::VecDeque;
use std::future::Future;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::{Stream, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::upgrade::FrameStream;

/// Frames read ahead of the one being handled.
pub const AHEAD: usize = 64;

/// Client frames in order, each with its arrival instant. Generic over the stream so that
/// it is tested without sockets; the server's is tungstenite's over the read half.
pub struct Inbound<S = FrameStream> {
    frames: S,
    /// Allocated when a frame first arrives during work (an idle connection has none).
    #[expect(
        clippy::box_collection,
        reason = "8 bytes inline in every idle connection's task, not the queue's 32"
    )]
    ahead: Option<Box<VecDeque<(Instant, Message)>>>,
    /// The stream ended or failed: nothing more comes.
    ended: bool,
}

impl<S, E> Inbound<S>
where
    S: Stream<Item = Result<Message, E>> + Unpin,
{
    pub fn new(frames: S) -> Self {
        Self {
            frames,
            ahead: None,
            ended: false,
        }
    }

    /// The next frame, oldest first; `None` once the stream has ended or failed.
    /// Cancel-safe: a frame is never lost when this is dropped before it is ready. A
    /// future of one pointer (an `async fn` here was 32 bytes in every idle task).
    pub fn recv(&mut self) -> impl Future<Output = Option<(Instant, Message)>> + '_ {
        std::future::poll_fn(move |cx| self.poll_recv(cx))
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<(Instant, Message)>> {
        if let Some(ahead) = self.ahead.as_mut() {
            let f = ahead.pop_front();
            if ahead.is_empty() {
                // Drained: freed, so that a connection idle again holds none.
                self.ahead = None;
            }
            if f.is_some() {
                return Poll::Ready(f);
            }
        }
        if self.ended {
            return Poll::Ready(None);
        }
        match self.frames.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(m))) => Poll::Ready(Some((Instant::now(), m))),
            Poll::Ready(_) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Run `work` to its end, reading (and stamping) the frames that arrive meanwhile.
    pub async fn alongside<F: Future>(&mut self, work: F) -> F::Output {
        let mut work = std::pin::pin!(work);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = work.as_mut().poll(cx) {
                return Poll::Ready(v);
            }
            self.read_ahead(cx);
            Poll::Pending
        })
        .await
    }

    fn read_ahead(&mut self, cx: &mut Context<'_>) {
        while !self.ended && self.ahead.as_ref().map_or(0, |a| a.len()) < AHEAD {
            match self.frames.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(m))) => {
                    let ahead = self.ahead.get_or_insert_with(Box::default);
                    ahead.push_back((Instant::now(), m));
                }
                Poll::Ready(_) => self.ended = true,
                Poll::Pending => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::stream;

    use super::*;

    type Item = Result<Message, ()>;

    /// Frames from `rx`, as a socket would deliver them.
    fn socket(rx: tokio::sync::mpsc::UnboundedReceiver<Item>) -> impl Stream<Item = Item> + Unpin {
        Box::pin(stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        }))
    }

    #[tokio::test]
    async fn frames_arriving_during_work_are_stamped_when_they_arrive() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut inbound = Inbound::new(socket(rx));
        tx.send(Ok(Message::text("first"))).unwrap();
        let (_, first) = inbound.recv().await.unwrap();
        assert_eq!(first.into_text().unwrap().as_str(), "first");
        // Handling "first" takes 100 ms; "second" arrives at its start.
        let sent = Instant::now();
        let work = async {
            tx.send(Ok(Message::text("second"))).unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        inbound.alongside(work).await;
        let (at, second) = inbound.recv().await.unwrap();
        assert_eq!(second.into_text().unwrap().as_str(), "second");
        assert!(
            at < sent + Duration::from_millis(50),
            "stamped {:?} after it was sent, when the work ended",
            at - sent
        );
    }

    #[tokio::test]
    async fn frames_keep_their_order_and_the_end_is_seen_once_all_are_read() {
        let frames = stream::iter(["a", "b", "c"].map(|t| Ok::<_, ()>(Message::text(t))));
        let mut inbound = Inbound::new(frames);
        let (_, a) = inbound.recv().await.unwrap();
        // "b", "c" and the end are read ahead while something else runs.
        inbound.alongside(tokio::task::yield_now()).await;
        let mut rest = Vec::new();
        while let Some((_, m)) = inbound.recv().await {
            rest.push(m.into_text().unwrap().to_string());
        }
        assert_eq!(a.into_text().unwrap().as_str(), "a");
        assert_eq!(rest, ["b", "c"]);
        assert!(inbound.recv().await.is_none());
    }

    #[tokio::test]
    async fn the_read_ahead_is_bounded() {
        let frames =
            stream::iter((0..AHEAD + 10).map(|i| Ok::<_, ()>(Message::text(i.to_string()))));
        let mut inbound = Inbound::new(frames);
        inbound.alongside(tokio::task::yield_now()).await;
        assert_eq!(inbound.ahead.as_ref().unwrap().len(), AHEAD);
        let mut n = 0;
        while inbound.recv().await.is_some() {
            n += 1;
        }
        assert_eq!(n, AHEAD + 10, "nothing is dropped: the rest is read later");
        assert!(inbound.ahead.is_none(), "drained, the read-ahead is freed");
    }

    #[tokio::test]
    async fn a_failed_stream_ends_the_frames() {
        let frames = stream::iter([Ok(Message::text("a")), Err(()), Ok(Message::text("b"))]);
        let mut inbound = Inbound::new(frames);
        assert!(inbound.recv().await.is_some());
        assert!(inbound.recv().await.is_none());
        assert!(inbound.recv().await.is_none());
    }
}
