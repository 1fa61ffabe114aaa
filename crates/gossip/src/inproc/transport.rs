//! One node's transport on an in-process network: the fast send path,
//! the fault model's slow path, and the `GossipTransport` face.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use multinode_mesh::Fate;
use multinode_wire::{ClusterFrame, FRAME_HEADER_LEN, NodeId};
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Net, Offer, Parcel, Slot, offer};
use crate::corrupt::corrupted;
use crate::stats::{PeerCounters, add};
use crate::{GossipTransport, Ready, SendError, TransportStats};

/// One node's transport on an [`InProcessNetwork`](crate::InProcessNetwork).
///
/// Dropping it unregisters the node (only if it still holds the node: a
/// newer registration of the same id is left alone) and stops its
/// delivery task; [`Self::shutdown`] also waits for that task.
pub struct InProcessTransport {
    pub(super) net: Arc<Net>,
    pub(super) index: usize,
    pub(super) incarnation: u64,
    pub(super) counters: Arc<[OnceLock<PeerCounters>]>,
    pub(super) cancel: CancellationToken,
    pub(super) unknown_peer: AtomicU64,
    pub(super) task: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for InProcessTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcessTransport")
            .field("node", &self.index)
            .field("incarnation", &self.incarnation)
            .finish_non_exhaustive()
    }
}

impl InProcessTransport {
    /// This registration's incarnation (new at every registration).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Unregisters the node and waits until its delivery task has stopped.
    pub async fn shutdown(&self) {
        self.unregister();
        let task = self.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    fn unregister(&self) {
        self.cancel.cancel();
        let mut slot = self.net.slots[self.index].write();
        if slot
            .as_ref()
            .is_some_and(|s| s.incarnation == self.incarnation)
        {
            *slot = None;
        }
    }

    fn peer(&self, index: usize) -> &PeerCounters {
        self.counters[index].get_or_init(PeerCounters::default)
    }
}

impl Drop for InProcessTransport {
    fn drop(&mut self) {
        self.unregister();
    }
}

impl GossipTransport for InProcessTransport {
    fn local_node(&self) -> NodeId {
        NodeId(self.index as u64)
    }

    fn send(&self, to: NodeId, frame: &ClusterFrame) -> Result<(), SendError> {
        if self.cancel.is_cancelled() {
            return Err(SendError::Closed);
        }
        let net = &*self.net;
        let Some(t) = usize::try_from(to.0).ok().filter(|&t| t < net.size) else {
            add(&self.unknown_peer, 1);
            return Err(SendError::UnknownPeer(to));
        };
        let peer = self.peer(t);
        let len = frame.payload_len();
        if len > net.config.max_frame {
            add(&peer.too_large, 1);
            return Err(SendError::FrameTooLarge {
                len,
                max: net.config.max_frame,
            });
        }
        let link = self.index * net.size + t;
        let parcel = Parcel {
            from: self.index,
            incarnation: self.incarnation,
            frame: frame.clone(),
            len,
            due: None,
            overtake: false,
        };
        let slot = net.slots[t].read();
        let result = if net.faulty.load(Relaxed) {
            self.send_faulty(slot.as_ref(), t, parcel)
        } else {
            match offer(slot.as_ref(), parcel) {
                Offer::Queued => Ok(()),
                Offer::Full => Err(()),
                // No live receiver: handed to the network, which loses it.
                Offer::Gone => {
                    add(&net.lost[link], 1);
                    Ok(())
                }
            }
        };
        drop(slot);
        match result {
            Ok(()) => {
                add(&net.sent[link], 1);
                add(&peer.frames_sent, 1);
                add(&peer.bytes_sent, (len + FRAME_HEADER_LEN) as u64);
                Ok(())
            }
            Err(()) => {
                add(&peer.queue_full, 1);
                Err(SendError::QueueFull {
                    peer: to,
                    frames: net.config.queue_frames,
                    bytes: 0,
                })
            }
        }
    }

    fn ready(&self, to: NodeId) -> Ready<'_> {
        Box::pin(async move {
            let net = &*self.net;
            let Some(t) = usize::try_from(to.0).ok().filter(|&t| t < net.size) else {
                return;
            };
            let tx = net.slots[t].read().as_ref().map(|s| s.tx.clone());
            let Some(tx) = tx else { return };
            if net.faulty.load(Relaxed) {
                // A held link refuses by the fault model's count, which no
                // channel permit tracks: let the caller try again.
                tokio::task::yield_now().await;
                return;
            }
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => {}
                // A permit that is dropped at once: room, not a reservation.
                _ = tx.reserve() => {}
            }
        })
    }

    fn stats(&self) -> TransportStats {
        TransportStats {
            node: self.local_node(),
            incarnation: self.incarnation,
            peers: self
                .counters
                .iter()
                .enumerate()
                .filter_map(|(i, c)| Some((NodeId(i as u64), c.get()?)))
                .filter(|(_, c)| !c.is_idle())
                .map(|(id, c)| (id, c.snapshot()))
                .collect(),
            unknown_peer: self.unknown_peer.load(Relaxed),
            refused_handshakes: 0,
            bad_connections: 0,
            over_limit: 0,
            auth_failures: 0,
            idle_closed: 0,
        }
    }
}

impl InProcessTransport {
    /// The slow path: the fault model decides. `Err(())` is a full queue.
    fn send_faulty(&self, slot: Option<&Slot>, t: usize, mut parcel: Parcel) -> Result<(), ()> {
        let net = &*self.net;
        let me = self.index;
        let (from, to) = (NodeId(me as u64), NodeId(t as u64));
        let mut ctl = net.ctl.lock();
        let held = ctl.held.get(&(me, t)).map_or(0, VecDeque::len);
        if ctl.model.is_holding(from, to) && held >= net.config.queue_frames {
            return Err(());
        }
        match ctl.model.decide_len(from, to, parcel.len) {
            Fate::Dropped => Ok(()),
            Fate::Held => {
                ctl.held.entry((me, t)).or_default().push_back(parcel);
                Ok(())
            }
            Fate::Deliver(d) => {
                if let Some(flip) = d.corrupt {
                    let Some(frame) = corrupted(&parcel.frame, flip) else {
                        // The receiver's decoder would refuse it.
                        add(&net.lost[me * net.size + t], u64::from(d.copies));
                        return Ok(());
                    };
                    parcel.frame = frame;
                }
                if d.overtake {
                    parcel.overtake = true;
                } else if let Some(&last) = ctl.last_due.get(&(me, t)) {
                    // Keep the link in order behind what it still delays.
                    let due = (Instant::now() + d.after).max(last);
                    if due > Instant::now() {
                        parcel.due = Some(due);
                    }
                } else if !d.after.is_zero() {
                    parcel.due = Some(Instant::now() + d.after);
                }
                if let Some(due) = parcel.due {
                    ctl.last_due.insert((me, t), due);
                }
                drop(ctl);
                if d.copies > 1 {
                    let copy = Parcel {
                        frame: parcel.frame.clone(),
                        ..parcel
                    };
                    match offer(slot, copy) {
                        Offer::Queued => {}
                        Offer::Full => return Err(()),
                        Offer::Gone => add(&net.lost[me * net.size + t], 1),
                    }
                }
                match offer(slot, parcel) {
                    Offer::Queued => Ok(()),
                    Offer::Full => Err(()),
                    Offer::Gone => {
                        add(&net.lost[me * net.size + t], 1);
                        Ok(())
                    }
                }
            }
        }
    }
}
