//! A node's delivery task: hands parcels to its sink when they are due,
//! in due order, overtaking parcels first.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, OnceLock};

use multinode_wire::{FRAME_HEADER_LEN, NodeId};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Net, Parcel};
use crate::RemoteMessageSink;
use crate::stats::{PeerCounters, add};
use crate::transport::dispatch;

/// A parcel waiting at its receiver, ordered by due time (`None` first),
/// then arrival.
struct Waiting {
    key: (Option<Instant>, u64),
    parcel: Parcel,
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl Eq for Waiting {}
impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiting {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key.cmp(&other.key)
    }
}

/// A node's delivery task: hands parcels to the sink when they are due.
pub(super) async fn deliver(
    net: Arc<Net>,
    me: usize,
    mut rx: mpsc::Receiver<Parcel>,
    sink: Arc<dyn RemoteMessageSink>,
    counters: Arc<[OnceLock<PeerCounters>]>,
    cancel: CancellationToken,
) {
    let lost = |from: usize| add(&net.lost[from * net.size + me], 1);
    let hand = |p: Parcel| {
        if cancel.is_cancelled() {
            // Crashed while this batch was being handed over.
            return lost(p.from);
        }
        let peer = counters[p.from].get_or_init(PeerCounters::default);
        let from = NodeId(p.from as u64);
        if peer.observe(p.incarnation) {
            sink.on_peer_restarted(from, p.incarnation);
        }
        add(&peer.frames_received, 1);
        add(&peer.bytes_received, (p.len + FRAME_HEADER_LEN) as u64);
        add(&net.delivered[p.from * net.size + me], 1);
        dispatch(&*sink, from, p.frame);
    };
    let mut waiting: BinaryHeap<Reverse<Waiting>> = BinaryHeap::new();
    let mut arrivals = 1u64;
    let mut batch = Vec::with_capacity(64);
    loop {
        let next_due = waiting.peek().and_then(|w| w.0.key.0);
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            n = rx.recv_many(&mut batch, 64) => {
                if n == 0 {
                    break;
                }
                let now = Instant::now();
                for p in batch.drain(..) {
                    if waiting.is_empty() && !p.overtake && p.due.is_none_or(|d| d <= now) {
                        hand(p);
                    } else {
                        let rank = if p.overtake { 0 } else { arrivals };
                        let due = if p.overtake { None } else { p.due };
                        arrivals += 1;
                        waiting.push(Reverse(Waiting { key: (due, rank), parcel: p }));
                    }
                }
            }
            () = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {}
        }
        let now = Instant::now();
        while waiting
            .peek()
            .is_some_and(|w| w.0.key.0.is_none_or(|d| d <= now))
        {
            if let Some(Reverse(w)) = waiting.pop() {
                hand(w.parcel);
            }
        }
    }
    // Crashed or unregistered: what is left is lost, and counted.
    rx.close();
    for Reverse(w) in waiting {
        lost(w.parcel.from);
    }
    while let Ok(p) = rx.try_recv() {
        lost(p.from);
    }
}
