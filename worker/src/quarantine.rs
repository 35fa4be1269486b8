//! What a partition learned from commits the store refused for their data (SQLSTATE
//! classes 22 and 23: retrying the same commit cannot help). The committer drops a refused
//! batch and the partition starts again from the store, knowing which entries were in
//! it: it applies those one per batch, with the timers' effects apart, so the next
//! refusal names one entry, and that entry is then answered with an error and
//! acknowledged without being applied. Pure: no
//! I/O, no clocks (docs/decisions/0035-a-refused-commit-names-its-command.md).

use std::collections::BTreeSet;

use crate::partition::EntryId;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Quarantine {
    /// Entries up to here were in a refused batch of several: applied one per batch.
    suspect_through: Option<EntryId>,
    /// Entries refused on their own: answered with an error, never applied.
    refused: BTreeSet<EntryId>,
}

impl Quarantine {
    /// A batch holding the commands of `entries` was refused. Its entries become suspects
    /// (read again one per batch, the timers' effects committed apart), unless it was one
    /// suspect alone: that entry is the culprit. A batch without entries (only timers'
    /// effects) names no command: the partition starts again from the store, which is all
    /// it can do.
    pub fn batch_refused(&mut self, entries: &[EntryId]) {
        let Some(last) = entries.iter().max().copied() else {
            return;
        };
        match entries {
            [one] if self.suspect_through.is_some_and(|s| *one <= s) => {
                self.refused.insert(*one);
            }
            _ => self.suspect_through = self.suspect_through.max(Some(last)),
        }
    }

    /// How many entries the next read takes, `applied` being the last one applied: one
    /// while suspects are ahead, `normal` otherwise.
    pub fn read_size(&self, applied: EntryId, normal: usize) -> usize {
        match self.suspect_through {
            Some(s) if s > applied => 1,
            _ => normal,
        }
    }

    /// Whether `entry` was refused on its own (skip it, answer with an error).
    pub fn is_refused(&self, entry: EntryId) -> bool {
        self.refused.contains(&entry)
    }

    /// Forget what lies at or below `applied`: it is committed (or skipped) now.
    pub fn passed(&mut self, applied: EntryId) {
        self.refused.retain(|e| *e > applied);
        if self.suspect_through.is_some_and(|s| s <= applied) {
            self.suspect_through = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> EntryId {
        EntryId::parse(&format!("{n}-0")).unwrap()
    }

    #[test]
    fn a_refused_batch_of_several_is_read_again_one_entry_at_a_time() {
        let mut q = Quarantine::default();
        assert_eq!(q.read_size(id(0), 256), 256);
        q.batch_refused(&[id(3), id(5), id(4)]);
        assert_eq!(q.read_size(id(2), 256), 1);
        assert_eq!(q.read_size(id(4), 256), 1);
        // Past the last suspect, batches are whole again.
        assert_eq!(q.read_size(id(5), 256), 256);
        assert!(!q.is_refused(id(3)) && !q.is_refused(id(5)));
    }

    #[test]
    fn a_suspect_refused_alone_is_named_until_it_is_passed() {
        let mut q = Quarantine::default();
        q.batch_refused(&[id(3), id(5)]);
        q.batch_refused(&[id(4)]);
        assert!(q.is_refused(id(4)));
        assert!(!q.is_refused(id(3)));
        // Entry 3 committed on its own: 4 is still ahead, and so is suspect 5.
        q.passed(id(3));
        assert!(q.is_refused(id(4)));
        assert_eq!(q.read_size(id(3), 256), 1);
        q.passed(id(5));
        assert!(!q.is_refused(id(4)));
        assert_eq!(q, Quarantine::default());
        assert_eq!(q.read_size(id(5), 256), 256);
    }

    #[test]
    fn a_batch_of_one_that_was_no_suspect_becomes_one_first() {
        // Its batch also held the timers' effects of that round: read it again alone.
        let mut q = Quarantine::default();
        q.batch_refused(&[id(8)]);
        assert!(!q.is_refused(id(8)));
        assert_eq!(q.read_size(id(7), 256), 1);
        q.batch_refused(&[id(8)]);
        assert!(q.is_refused(id(8)));
        // One past the suspects is a suspect first, too.
        q.batch_refused(&[id(9)]);
        assert!(!q.is_refused(id(9)));
        assert_eq!(q.read_size(id(8), 256), 1);
    }

    #[test]
    fn a_batch_without_entries_names_nothing() {
        let mut q = Quarantine::default();
        q.batch_refused(&[]);
        assert_eq!(q, Quarantine::default());
    }

    #[test]
    fn a_later_refusal_extends_the_suspects() {
        let mut q = Quarantine::default();
        q.batch_refused(&[id(1), id(2)]);
        q.batch_refused(&[id(7), id(9)]);
        assert_eq!(q.read_size(id(8), 256), 1);
        q.batch_refused(&[id(1), id(2)]);
        assert_eq!(
            q.read_size(id(8), 256),
            1,
            "an earlier batch does not shorten it"
        );
    }
}
