//! When something about a session falls due, ordered by time, so that the tick looks at
//! what is due and nothing else (not every session every 500 ms). An entry is a reminder,
//! not the truth: when it comes up, the tick checks it against the record, which may have
//! changed since (a host back within the grace, a session ended early).

use std::collections::BTreeSet;

use super::SessionKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Due {
    /// The session's `expiresAt`.
    Expiry,
    /// The host's grace after its last connection went away.
    HostGrace,
    /// The periodic drift check of a playing session.
    SyncCheck,
}

#[derive(Default)]
pub(super) struct Deadlines(BTreeSet<(i64, Due, SessionKey)>);

impl Deadlines {
    pub fn at(&mut self, when: i64, due: Due, key: &SessionKey) {
        if when < i64::MAX {
            self.0.insert((when, due, key.clone()));
        }
    }

    pub fn cancel(&mut self, when: i64, due: Due, key: &SessionKey) {
        self.0.remove(&(when, due, key.clone()));
    }

    /// Everything due at `now`, earliest first, taken out.
    pub fn take_due(&mut self, now: i64) -> Vec<(Due, SessionKey)> {
        let mut out = Vec::new();
        while self.0.first().is_some_and(|(t, _, _)| *t <= now) {
            let (_, due, key) = self.0.pop_first().expect("first");
            out.push((due, key));
        }
        out
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::{Deadlines, Due};

    #[test]
    fn only_what_is_due_comes_out_in_time_order() {
        let mut d = Deadlines::default();
        let (a, b) = (
            ("_".to_string(), "A".to_string()),
            ("_".to_string(), "B".to_string()),
        );
        d.at(30, Due::Expiry, &a);
        d.at(10, Due::HostGrace, &b);
        d.at(20, Due::SyncCheck, &a);
        d.at(i64::MAX, Due::Expiry, &b);
        assert_eq!(d.len(), 3, "never is not a deadline");
        assert!(d.take_due(9).is_empty());
        assert_eq!(
            d.take_due(20),
            vec![(Due::HostGrace, b.clone()), (Due::SyncCheck, a.clone())]
        );
        d.cancel(30, Due::Expiry, &a);
        assert!(d.take_due(100).is_empty());
    }
}
