//! What a replica holds past its watermarks, as per-origin fingerprints
//! (`Beyond`): told to every peer it exchanges with, so a peer that holds
//! the same past our watermark sends none of it again. In a burst of
//! writes most entries travel ahead of the watermarks that cover them; a
//! replica that already took them in from one peer is not sent them by
//! the next.

use std::borrow::Cow;

use multinode_wire::{Beyond, NodeId, Timestamp};

use super::origins::side_by_side;
use super::{Replica, origin_range};

impl Replica {
    /// Our `beyond` list: each origin (ourselves aside) of which we hold
    /// entries past our watermark, with their fingerprint; at most an
    /// eighth of the delta budget's worth. Kept until an entry or a
    /// watermark changes.
    pub(super) fn beyond(&mut self) -> Vec<Beyond> {
        if let Some(b) = &self.beyond {
            return b.clone();
        }
        let most = self.cfg.delta_budget / 8 / BEYOND_ITEM_MAX;
        let me = self.cfg.node;
        let newest = self.newest.as_slice().iter().copied();
        let marks = self.watermarks.as_slice().iter().copied();
        let list: Vec<Beyond> = side_by_side(newest, marks)
            .filter(|(origin, newest, mark)| {
                *origin != me && newest.is_some_and(|n| mark.is_none_or(|w| n > w))
            })
            .take(most)
            .map(|(origin, _, mark)| Beyond {
                origin,
                fingerprint: self.fingerprint_past(origin, mark),
            })
            .collect();
        self.beyond = Some(list.clone());
        list
    }

    /// The fingerprint of the versions of `origin` we hold past `from`
    /// (all of them without it).
    pub(super) fn fingerprint_past(&self, origin: NodeId, from: Option<Timestamp>) -> u64 {
        origin_range(&self.by_origin, origin, from)
            .fold(0u64, |sum, ((_, v), _)| sum.wrapping_add(v.fingerprint()))
    }
}

/// The most bytes one `Beyond` takes: two varints of a u64.
const BEYOND_ITEM_MAX: usize = 18;

/// A peer's `beyond` list in origin order without repeats (as every
/// honest peer sends it), for looking origins up by binary search.
pub(super) fn of_peer(list: &[Beyond]) -> Cow<'_, [Beyond]> {
    if list.windows(2).all(|w| w[0].origin < w[1].origin) {
        return Cow::Borrowed(list);
    }
    let mut v = list.to_vec();
    v.sort_unstable_by_key(|b| (b.origin, b.fingerprint));
    v.dedup_by_key(|b| b.origin);
    Cow::Owned(v)
}

/// The fingerprint a peer's (ordered) list gives `origin`.
pub(super) fn fingerprint_of(list: &[Beyond], origin: NodeId) -> Option<u64> {
    list.binary_search_by_key(&origin, |b| b.origin)
        .ok()
        .map(|i| list[i].fingerprint)
}
