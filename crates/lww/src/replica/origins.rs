//! One timestamp per origin, kept sorted by origin: watermarks, the newest
//! version held of each origin, a resynchronisation's target. A peer's
//! list (sorted the same way by every honest sender) is walked beside one
//! in a single pass, never looked up origin by origin.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::iter::Peekable;

use multinode_wire::{NodeId, Timestamp};

/// Timestamps by their `node` (the origin), at most one per origin.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Origins(Vec<Timestamp>);

impl Origins {
    /// The timestamps of a list that came from a peer: as they are when
    /// sorted by origin without repeats (every honest list), else sorted,
    /// with an origin listed twice kept at its lowest (the claim that
    /// vouches for least).
    pub(super) fn of_peer(list: &[Timestamp]) -> Cow<'_, [Timestamp]> {
        if list.windows(2).all(|w| w[0].node < w[1].node) {
            return Cow::Borrowed(list);
        }
        let mut v = list.to_vec();
        v.sort_unstable_by_key(|t| (t.node, *t));
        v.dedup_by_key(|t| t.node);
        Cow::Owned(v)
    }

    /// The timestamp of `origin`.
    pub(super) fn get(&self, origin: NodeId) -> Option<Timestamp> {
        self.0
            .binary_search_by_key(&origin, |t| t.node)
            .ok()
            .map(|i| self.0[i])
    }

    /// Sets the timestamp of `t.node` to `t`.
    pub(super) fn set(&mut self, t: Timestamp) {
        match self.0.binary_search_by_key(&t.node, |w| w.node) {
            Ok(i) => self.0[i] = t,
            Err(i) => self.0.insert(i, t),
        }
    }

    /// Forgets `origin`.
    pub(super) fn remove(&mut self, origin: NodeId) {
        if let Ok(i) = self.0.binary_search_by_key(&origin, |t| t.node) {
            self.0.remove(i);
        }
    }

    /// Forgets every origin.
    pub(super) fn clear(&mut self) {
        self.0.clear();
    }

    /// The timestamps, in origin order.
    pub(super) fn as_slice(&self) -> &[Timestamp] {
        &self.0
    }

    /// Raises each origin of `to` (sorted by origin) to its timestamp
    /// where that is higher or the origin is new; returns the origins
    /// raised, in order. One pass, and one sort when origins were added.
    pub(super) fn raise(&mut self, to: impl Iterator<Item = Timestamp>) -> Vec<NodeId> {
        let mut raised = Vec::new();
        let mut added = Vec::new();
        let mut i = 0;
        for t in to {
            while i < self.0.len() && self.0[i].node < t.node {
                i += 1;
            }
            match self.0.get_mut(i).filter(|w| w.node == t.node) {
                Some(w) if t > *w => *w = t,
                Some(_) => continue,
                None => added.push(t),
            }
            raised.push(t.node);
        }
        if !added.is_empty() {
            self.0.extend(added);
            // Two sorted runs: merged in linear time.
            self.0.sort_by_key(|t| t.node);
        }
        raised
    }
}

impl FromIterator<Timestamp> for Origins {
    /// Keeps the last timestamp given for an origin.
    fn from_iter<I: IntoIterator<Item = Timestamp>>(iter: I) -> Self {
        let mut v: Vec<Timestamp> = iter.into_iter().collect();
        v.reverse();
        v.sort_by_key(|t| t.node);
        v.dedup_by_key(|t| t.node);
        Self(v)
    }
}

/// Walks two lists sorted by origin side by side: each origin in either,
/// once, in order, with its timestamp in each.
pub(super) fn side_by_side<A, B>(a: A, b: B) -> SideBySide<A::IntoIter, B::IntoIter>
where
    A: IntoIterator<Item = Timestamp>,
    B: IntoIterator<Item = Timestamp>,
{
    SideBySide {
        a: a.into_iter().peekable(),
        b: b.into_iter().peekable(),
    }
}

/// The iterator of [`side_by_side`].
pub(super) struct SideBySide<A: Iterator<Item = Timestamp>, B: Iterator<Item = Timestamp>> {
    a: Peekable<A>,
    b: Peekable<B>,
}

impl<A, B> Iterator for SideBySide<A, B>
where
    A: Iterator<Item = Timestamp>,
    B: Iterator<Item = Timestamp>,
{
    type Item = (NodeId, Option<Timestamp>, Option<Timestamp>);

    fn next(&mut self) -> Option<Self::Item> {
        let order = match (self.a.peek(), self.b.peek()) {
            (None, None) => return None,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(x), Some(y)) => x.node.cmp(&y.node),
        };
        Some(match order {
            Ordering::Less => {
                let x = self.a.next()?;
                (x.node, Some(x), None)
            }
            Ordering::Greater => {
                let y = self.b.next()?;
                (y.node, None, Some(y))
            }
            Ordering::Equal => {
                let (x, y) = (self.a.next()?, self.b.next()?);
                (x.node, Some(x), Some(y))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(node: u64, ms: u64) -> Timestamp {
        Timestamp {
            physical_ms: ms,
            logical: 0,
            node: NodeId(node),
        }
    }

    #[test]
    fn a_peer_list_out_of_order_or_with_repeats_is_sorted_and_kept_at_its_lowest() {
        let sorted = [ts(1, 5), ts(2, 5), ts(9, 1)];
        assert!(matches!(Origins::of_peer(&sorted), Cow::Borrowed(_)));
        let hostile = [ts(9, 1), ts(2, 7), ts(2, 3), ts(1, 5), ts(2, 4)];
        let got = Origins::of_peer(&hostile);
        assert_eq!(&*got, &[ts(1, 5), ts(2, 3), ts(9, 1)]);
    }

    #[test]
    fn raise_moves_only_up_and_adds_new_origins_in_order() {
        let mut o: Origins = [ts(2, 5), ts(4, 5), ts(8, 5)].into_iter().collect();
        let raised = o.raise([ts(1, 1), ts(2, 9), ts(4, 2), ts(6, 3), ts(9, 9)].into_iter());
        assert_eq!(raised, [1, 2, 6, 9].map(NodeId));
        assert_eq!(
            o.as_slice(),
            &[ts(1, 1), ts(2, 9), ts(4, 5), ts(6, 3), ts(8, 5), ts(9, 9)]
        );
        assert_eq!(o.get(NodeId(6)), Some(ts(6, 3)));
        assert_eq!(o.get(NodeId(7)), None);
        o.remove(NodeId(6));
        o.set(ts(0, 2));
        o.set(ts(8, 1));
        assert_eq!(
            o.as_slice(),
            &[ts(0, 2), ts(1, 1), ts(2, 9), ts(4, 5), ts(8, 1), ts(9, 9)]
        );
    }

    #[test]
    fn side_by_side_meets_each_origin_once_in_order() {
        let a = [ts(1, 1), ts(3, 3), ts(5, 5)];
        let b = [ts(2, 2), ts(3, 4), ts(6, 6)];
        let got: Vec<_> = side_by_side(a, b).collect();
        assert_eq!(
            got,
            vec![
                (NodeId(1), Some(ts(1, 1)), None),
                (NodeId(2), None, Some(ts(2, 2))),
                (NodeId(3), Some(ts(3, 3)), Some(ts(3, 4))),
                (NodeId(5), Some(ts(5, 5)), None),
                (NodeId(6), None, Some(ts(6, 6))),
            ]
        );
    }
}
