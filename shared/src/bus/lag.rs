//! What a subscription tells its owner when it had to drop messages: the
//! [`BUS_LAGGED`](crate::keys::BUS_LAGGED) notice, naming the channels that lost some, so
//! that only their members resynchronise (a gateway's quiet rooms keep going).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::BusMessage;
use crate::hash::Set;
use crate::keys::BUS_LAGGED;

/// Channel names a notice lists at most; beyond, it says "every channel" (an empty list).
pub const MAX_NAMED: usize = 4096;

/// The channels a subscription dropped messages of since its last notice.
#[derive(Debug, Default)]
pub struct Dropped {
    channels: Set<Arc<str>>,
    /// Too many to name, or unknown (fred's own buffer lapped): every channel.
    all: bool,
}

impl Dropped {
    /// Hand `msg` to the owner's queue `tx` without waiting, or drop it and record its
    /// channel: when the queue is full, and while a notice waits (messages after a loss
    /// are dropped until the notice is out, so that it comes before them). False when the
    /// owner is gone.
    pub fn offer(&mut self, tx: &mpsc::Sender<BusMessage>, msg: BusMessage) -> bool {
        if !self.is_empty() {
            self.add(&msg.channel);
            return true;
        }
        match tx.try_send(msg) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(msg)) => {
                self.add(&msg.channel);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// A message of `channel` was dropped.
    pub fn add(&mut self, channel: &Arc<str>) {
        metrics::counter!("jam_bus_dropped_total").increment(1);
        if self.all || self.channels.contains(channel) {
            return;
        }
        if self.channels.len() >= MAX_NAMED {
            self.mark_all();
        } else {
            self.channels.insert(channel.clone());
        }
    }

    /// Messages were dropped on channels nobody can name.
    pub fn mark_all(&mut self) {
        self.all = true;
        self.channels = Set::default();
    }

    pub fn is_empty(&self) -> bool {
        !self.all && self.channels.is_empty()
    }

    /// The notice for what was dropped (one channel name per line, none for "every
    /// channel"); empties the record.
    pub fn take_notice(&mut self) -> BusMessage {
        let mut names: Vec<&str> = if self.all {
            Vec::new()
        } else {
            self.channels.iter().map(|c| &**c).collect()
        };
        names.sort_unstable();
        let notice = BusMessage {
            channel: Arc::from(BUS_LAGGED),
            payload: Bytes::from(names.join("\n")),
        };
        *self = Self::default();
        notice
    }
}

/// The channels a [`BUS_LAGGED`] notice names; `None` when it names none: messages of any
/// channel may have been lost.
pub fn lagged_channels(notice: &BusMessage) -> Option<Vec<&str>> {
    let names = std::str::from_utf8(&notice.payload).ok()?;
    if names.is_empty() {
        return None;
    }
    Some(names.split('\n').collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn a_notice_names_each_channel_that_lost_messages_once() {
        let mut d = Dropped::default();
        assert!(d.is_empty());
        d.add(&ch("jam:t:room:b"));
        d.add(&ch("jam:t:room:a"));
        d.add(&ch("jam:t:room:b"));
        assert!(!d.is_empty());
        let n = d.take_notice();
        assert_eq!(&*n.channel, BUS_LAGGED);
        assert_eq!(
            lagged_channels(&n),
            Some(vec!["jam:t:room:a", "jam:t:room:b"])
        );
        assert!(d.is_empty(), "taking the notice empties the record");
    }

    #[test]
    fn too_many_names_or_an_unknown_loss_mean_every_channel() {
        let mut d = Dropped::default();
        for i in 0..=MAX_NAMED {
            d.add(&ch(&format!("c{i}")));
        }
        assert_eq!(lagged_channels(&d.take_notice()), None);
        d.add(&ch("c"));
        d.mark_all();
        d.add(&ch("d"));
        assert_eq!(lagged_channels(&d.take_notice()), None);
        let mut d = Dropped::default();
        d.add(&ch("c"));
        assert_eq!(lagged_channels(&d.take_notice()), Some(vec!["c"]));
    }
}
