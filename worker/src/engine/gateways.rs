//! The gateway node ids that connections name, one copy each: thousands of connections sit
//! on a handful of gateways, and an idle connection should not carry its gateway's name.
//! The set is also the tick's index of gateways: only a dead gateway's name sends the tick
//! through the connections, and a name no connection holds any more is forgotten.

use std::sync::Arc;

use jam_shared::hash::Set;

#[derive(Default)]
pub(super) struct Gateways(Set<Arc<str>>);

impl Gateways {
    /// The shared copy of `node`.
    pub fn intern(&mut self, node: &str) -> Arc<str> {
        if let Some(g) = self.0.get(node) {
            return g.clone();
        }
        let g: Arc<str> = Arc::from(node);
        self.0.insert(g.clone());
        g
    }

    /// The gateways that some connection still names and `alive` says are gone. Names held
    /// only by this set are dropped first. Every connection the engine keeps was interned
    /// here, so a dead gateway the result leaves out holds no connection of this engine.
    pub fn dead(&mut self, alive: &dyn Fn(&str) -> bool) -> Vec<Arc<str>> {
        self.0.retain(|g| Arc::strong_count(g) > 1);
        self.0.iter().filter(|g| !alive(g)).cloned().collect()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::Gateways;

    #[test]
    fn one_copy_per_name_and_unnamed_ones_forgotten() {
        let mut g = Gateways::default();
        let a = g.intern("gw-a#1");
        let a2 = g.intern("gw-a#1");
        assert!(std::sync::Arc::ptr_eq(&a, &a2));
        let b = g.intern("gw-b#1");
        assert_eq!(g.dead(&|n| n != "gw-b#1"), vec![b.clone()]);
        drop(b);
        assert!(
            g.dead(&|n| n != "gw-b#1").is_empty(),
            "no one names gw-b any more"
        );
        assert_eq!(g.len(), 1);
        drop((a, a2));
        assert!(g.dead(&|_| false).is_empty());
        assert_eq!(g.len(), 0);
    }
}
