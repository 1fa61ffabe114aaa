//! The link fault model: given a message on a link, it decides the
//! message's fate. Sans-IO (no clock, no threads, no OS randomness): every
//! random choice comes from one seeded generator, so one seed and one
//! sequence of calls give one trace, which [`FaultModel::trace_hash`]
//! fingerprints.

use std::collections::HashMap;
use std::time::Duration;

use multinode_wire::NodeId;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Random faults on one directed link. All off by default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinkFaults {
    /// Probability in `[0, 1]` that a message is lost.
    pub drop: f64,
    /// Probability in `[0, 1]` that a delivered message arrives twice.
    pub duplicate: f64,
    /// Probability in `[0, 1]` that a delivered message overtakes the ones
    /// queued before it on the link.
    pub reorder: f64,
    /// A delivery delay drawn uniformly from this range, if any.
    pub delay: Option<(Duration, Duration)>,
    /// Probability in `[0, 1]` that a delivered message has one byte
    /// flipped ([`Flip`]).
    pub corrupt: f64,
}

impl LinkFaults {
    /// Whether every fault is off.
    pub fn is_off(&self) -> bool {
        self.drop <= 0.0
            && self.duplicate <= 0.0
            && self.reorder <= 0.0
            && self.corrupt <= 0.0
            && self.delay.is_none()
    }

    /// These faults with every probability clamped to `[0, 1]` (NaN is 0)
    /// and the delay range in order.
    fn clamped(mut self) -> Self {
        for p in [
            &mut self.drop,
            &mut self.duplicate,
            &mut self.reorder,
            &mut self.corrupt,
        ] {
            *p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
        }
        if let Some((a, b)) = self.delay {
            self.delay = Some((a.min(b), a.max(b)));
        }
        self
    }
}

/// One flipped byte: the corruption of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flip {
    /// Which byte, counted from the start of the message (its payload,
    /// for a framed message).
    pub at: usize,
    /// What the byte is XORed with; never zero.
    pub mask: u8,
}

impl Flip {
    /// Flips the byte in `msg`; a message shorter than `at` is left alone.
    pub fn apply(self, msg: &mut [u8]) {
        if let Some(b) = msg.get_mut(self.at) {
            *b ^= self.mask;
        }
    }
}

/// What happens to one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Lost: by a random drop, or because the link is cut.
    Dropped,
    /// Held: the caller keeps it, in order with the link's other held
    /// messages, until [`FaultModel::release`] of its link.
    Held,
    /// To be delivered, as the [`Delivery`] says.
    Deliver(Delivery),
}

/// How a message is delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// How long after sending it becomes visible.
    pub after: Duration,
    /// 1, or 2 when duplicated.
    pub copies: u8,
    /// Whether it goes to the front of the link's queue.
    pub overtake: bool,
    /// The byte to flip in every copy, if it is corrupted.
    pub corrupt: Option<Flip>,
}

impl Fate {
    /// Immediate delivery of one intact copy: the fate on a fault-free link.
    pub const CLEAN: Fate = Fate::Deliver(Delivery {
        after: Duration::ZERO,
        copies: 1,
        overtake: false,
        corrupt: None,
    });
}

/// What happened on one link: every fault is counted, so a test can tell a
/// fault that acted from one that was inert.
///
/// The model fills in what it decides; `delivered` and `lost` are facts only
/// the transport knows, so the model leaves them at zero and transports
/// (the in-memory mesh) fill them in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Messages offered to the link.
    pub sent: u64,
    /// Lost to a random drop.
    pub dropped: u64,
    /// Lost because the link was cut.
    pub cut: u64,
    /// Delivered twice.
    pub duplicated: u64,
    /// Given a non-zero delay.
    pub delayed: u64,
    /// Sent to the front of the queue.
    pub reordered: u64,
    /// Held while the link was held.
    pub held: u64,
    /// Given a flipped byte.
    pub corrupted: u64,
    /// Handed to a receiver (by the transport).
    pub delivered: u64,
    /// Accepted by the link but never delivered: discarded with the queue
    /// of a node that crashed or an end that closed, or corrupted past
    /// decoding (by the transport).
    pub lost: u64,
}

impl std::ops::AddAssign for LinkCounters {
    fn add_assign(&mut self, o: Self) {
        self.sent += o.sent;
        self.dropped += o.dropped;
        self.cut += o.cut;
        self.duplicated += o.duplicated;
        self.delayed += o.delayed;
        self.reordered += o.reordered;
        self.held += o.held;
        self.corrupted += o.corrupted;
        self.delivered += o.delivered;
        self.lost += o.lost;
    }
}

#[derive(Clone, Default)]
struct Link {
    /// Faults set on this link alone; `None`: the model's default.
    faults: Option<LinkFaults>,
    cut: bool,
    holding: bool,
    counters: LinkCounters,
}

/// The fault model of a network: per directed link between two nodes, its
/// random faults, whether it is cut or held, and its counters. Any
/// [`NodeId`] may appear; a link nothing was said of has the faults set by
/// [`FaultModel::set_all_faults`] (none at first).
///
/// The one model of the kit: the in-memory mesh, the in-process gossip
/// network, the LWW simulator and `multinode node` all apply it, in its
/// words (`drop`, `duplicate`, `reorder`, `delay`, `corrupt`, `cut`,
/// `partition`, `heal`, `hold`, `release`).
pub struct FaultModel {
    rng: ChaCha8Rng,
    default: LinkFaults,
    links: HashMap<(NodeId, NodeId), Link>,
    trace: u64,
}

impl std::fmt::Debug for FaultModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultModel")
            .field("default", &self.default)
            .field("links", &self.links.len())
            .field("trace", &format_args!("{:016x}", self.trace))
            .finish()
    }
}

/// FNV-1a, folded one word at a time: a stable fingerprint of the decisions.
fn fold(hash: u64, word: u64) -> u64 {
    let mut h = hash;
    for b in word.to_le_bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl FaultModel {
    /// A model with every fault off, drawing from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            default: LinkFaults::default(),
            links: HashMap::new(),
            trace: 0xcbf2_9ce4_8422_2325,
        }
    }

    fn link(&mut self, from: NodeId, to: NodeId) -> &mut Link {
        self.links.entry((from, to)).or_default()
    }

    fn faults_of<'a>(default: &'a LinkFaults, link: Option<&'a Link>) -> &'a LinkFaults {
        link.and_then(|l| l.faults.as_ref()).unwrap_or(default)
    }

    /// The random faults of `from → to`.
    pub fn faults(&self, from: NodeId, to: NodeId) -> &LinkFaults {
        Self::faults_of(&self.default, self.links.get(&(from, to)))
    }

    /// Sets the random faults of the link `from → to`. Probabilities are
    /// clamped to `[0, 1]`; a delay range is put in order.
    pub fn set_faults(&mut self, from: NodeId, to: NodeId, faults: LinkFaults) {
        self.link(from, to).faults = Some(faults.clamped());
    }

    /// The faults every link has unless set on its own
    /// ([`FaultModel::set_all_faults`]).
    pub fn all_faults(&self) -> &LinkFaults {
        &self.default
    }

    /// Sets the same random faults on every link, those not yet used
    /// included, replacing any set on one link alone.
    pub fn set_all_faults(&mut self, faults: &LinkFaults) {
        self.default = faults.clone().clamped();
        for l in self.links.values_mut() {
            l.faults = None;
        }
    }

    /// Cuts the link `from → to` one way: messages on it are lost.
    pub fn cut(&mut self, from: NodeId, to: NodeId) {
        self.link(from, to).cut = true;
    }

    /// Cuts every link between set `a` and set `b`, both ways.
    pub fn partition(&mut self, a: &[NodeId], b: &[NodeId]) {
        for &x in a {
            for &y in b {
                self.cut(x, y);
                self.cut(y, x);
            }
        }
    }

    /// Restores every cut link. Random faults and holds stay as they are.
    pub fn heal(&mut self) {
        for l in self.links.values_mut() {
            l.cut = false;
        }
    }

    /// Whether `from → to` is cut.
    pub fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        self.links.get(&(from, to)).is_some_and(|l| l.cut)
    }

    /// Holds the link `from → to`: from now on its messages are
    /// [`Fate::Held`], to be kept by the caller, in order, until
    /// [`FaultModel::release`].
    pub fn hold(&mut self, from: NodeId, to: NodeId) {
        self.link(from, to).holding = true;
    }

    /// Stops holding `from → to`: the caller delivers what it held, in send
    /// order, ahead of anything sent later.
    pub fn release(&mut self, from: NodeId, to: NodeId) {
        self.link(from, to).holding = false;
    }

    /// Whether `from → to` is being held.
    pub fn is_holding(&self, from: NodeId, to: NodeId) -> bool {
        self.links.get(&(from, to)).is_some_and(|l| l.holding)
    }

    /// Whether anything can happen to a message on `from → to` other than
    /// immediate delivery: it is cut, held, or has a random fault set. A
    /// transport may skip [`FaultModel::decide`] (and its counting and
    /// tracing) on a link for which this is false.
    pub fn is_faulty(&self, from: NodeId, to: NodeId) -> bool {
        let link = self.links.get(&(from, to));
        link.is_some_and(|l| l.cut || l.holding) || !Self::faults_of(&self.default, link).is_off()
    }

    /// Whether any link may be faulty: false only when every link delivers
    /// at once.
    pub fn any_faulty(&self) -> bool {
        !self.default.is_off()
            || self
                .links
                .values()
                .any(|l| l.cut || l.holding || l.faults.as_ref().is_some_and(|f| !f.is_off()))
    }

    /// Decides the fate of `msg` sent on `from → to`; the caller delivers
    /// (or keeps) `msg` as the fate says.
    pub fn decide(&mut self, from: NodeId, to: NodeId, msg: &[u8]) -> Fate {
        self.decide_len(from, to, msg.len())
    }

    /// [`FaultModel::decide`] for a message of `len` bytes that the caller
    /// holds in another form (the in-process gossip network never encodes
    /// its frames; a [`Flip`] then falls within its encoded payload). The
    /// same calls give the same fates and trace.
    pub fn decide_len(&mut self, from: NodeId, to: NodeId, len: usize) -> Fate {
        let fate = self.draw(from, to, len);
        let code = match fate {
            Fate::Dropped => 1,
            Fate::Held => 2,
            Fate::Deliver(Delivery {
                after,
                copies,
                overtake,
                corrupt,
            }) => {
                let flip = corrupt.map_or(0, |f| ((f.at as u64) << 8) | u64::from(f.mask));
                3 ^ (u64::from(copies) << 8)
                    ^ (u64::from(overtake) << 16)
                    ^ ((after.as_nanos() as u64) << 20)
                    ^ flip.rotate_left(40)
            }
        };
        let word = from.0 << 48 ^ to.0 << 32 ^ len as u64;
        self.trace = fold(fold(self.trace, word), code);
        fate
    }

    fn draw(&mut self, from: NodeId, to: NodeId, len: usize) -> Fate {
        // Borrow the generator, the default and the link apart.
        let Self {
            rng,
            links,
            default,
            ..
        } = self;
        if default.is_off() && !links.contains_key(&(from, to)) {
            // Nothing was ever said of this link and no default fault is
            // on: delivered at once, and not kept (a simulator of N nodes
            // would otherwise hold N² links).
            return Fate::CLEAN;
        }
        let link = links.entry((from, to)).or_default();
        link.counters.sent += 1;
        if link.cut {
            link.counters.cut += 1;
            return Fate::Dropped;
        }
        if link.holding {
            link.counters.held += 1;
            return Fate::Held;
        }
        let f = link.faults.as_ref().unwrap_or(default);
        if f.is_off() {
            return Fate::CLEAN;
        }
        if f.drop > 0.0 && rng.random_bool(f.drop) {
            link.counters.dropped += 1;
            return Fate::Dropped;
        }
        let copies = if f.duplicate > 0.0 && rng.random_bool(f.duplicate) {
            link.counters.duplicated += 1;
            2
        } else {
            1
        };
        let overtake = f.reorder > 0.0 && rng.random_bool(f.reorder);
        if overtake {
            link.counters.reordered += 1;
        }
        let after = match f.delay {
            Some((lo, hi)) if hi > Duration::ZERO => {
                let (lo, hi) = (lo.as_nanos() as u64, hi.as_nanos() as u64);
                let nanos = if lo == hi {
                    lo
                } else {
                    rng.random_range(lo..=hi)
                };
                Duration::from_nanos(nanos)
            }
            _ => Duration::ZERO,
        };
        if !after.is_zero() {
            link.counters.delayed += 1;
        }
        let corrupt = (f.corrupt > 0.0 && len > 0 && rng.random_bool(f.corrupt)).then(|| {
            link.counters.corrupted += 1;
            Flip {
                at: rng.random_range(0..len),
                mask: rng.random_range(1..=u8::MAX),
            }
        });
        Fate::Deliver(Delivery {
            after,
            copies,
            overtake,
            corrupt,
        })
    }

    /// What the model did on `from → to` so far. `sent` counts the
    /// messages decided while the link had something set, or a default
    /// fault was on: a link nothing was ever said of is not tracked.
    pub fn counters(&self, from: NodeId, to: NodeId) -> LinkCounters {
        self.links
            .get(&(from, to))
            .map_or_else(LinkCounters::default, |l| l.counters)
    }

    /// What the model did on every link so far, added up.
    pub fn total(&self) -> LinkCounters {
        let mut sum = LinkCounters::default();
        for l in self.links.values() {
            sum += l.counters;
        }
        sum
    }

    /// A fingerprint of every decision so far: equal for two runs with the
    /// same seed and the same sends, different (with overwhelming
    /// likelihood) otherwise.
    pub fn trace_hash(&self) -> u64 {
        self.trace
    }
}
