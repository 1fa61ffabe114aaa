//! The link fault model: given a message on a link, it decides the
//! message's fate. Sans-IO (no clock, no threads, no OS randomness): every
//! random choice comes from one seeded generator, so one seed and one
//! sequence of calls give one trace, which [`FaultModel::trace_hash`]
//! fingerprints.

use std::time::Duration;

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
}

impl LinkFaults {
    fn is_off(&self) -> bool {
        self.drop <= 0.0 && self.duplicate <= 0.0 && self.reorder <= 0.0 && self.delay.is_none()
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
    /// To be delivered.
    Deliver {
        /// How long after sending it becomes visible.
        after: Duration,
        /// 1, or 2 when duplicated.
        copies: u8,
        /// Whether it goes to the front of the link's queue.
        overtake: bool,
    },
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
    /// Handed to a receiver (by the transport).
    pub delivered: u64,
    /// Accepted by the link but never delivered: discarded with the queue
    /// of a node that crashed or an end that closed (by the transport).
    pub lost: u64,
}

#[derive(Default)]
struct Link {
    faults: LinkFaults,
    cut: bool,
    holding: bool,
    counters: LinkCounters,
}

/// The fault model of an N-node network: per directed link, its random
/// faults, whether it is cut or held, and its counters.
///
/// Node indices are `0..n`; a method given an index outside that range
/// panics (a bug in the caller, never peer input: the mesh checks indices
/// before it asks).
pub struct FaultModel {
    n: usize,
    rng: ChaCha8Rng,
    links: Vec<Link>,
    trace: u64,
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
    /// A model of `n` nodes with every fault off, drawing from `seed`.
    pub fn new(n: usize, seed: u64) -> Self {
        Self {
            n,
            rng: ChaCha8Rng::seed_from_u64(seed),
            links: (0..n * n).map(|_| Link::default()).collect(),
            trace: 0xcbf2_9ce4_8422_2325,
        }
    }

    /// How many nodes the model covers.
    pub fn nodes(&self) -> usize {
        self.n
    }

    fn link(&mut self, from: usize, to: usize) -> &mut Link {
        assert!(
            from < self.n && to < self.n,
            "link {from}->{to} outside 0..{}",
            self.n
        );
        &mut self.links[from * self.n + to]
    }

    /// Sets the random faults of the link `from → to`. Probabilities are
    /// clamped to `[0, 1]`; a delay range is put in order.
    pub fn set_faults(&mut self, from: usize, to: usize, mut faults: LinkFaults) {
        for p in [&mut faults.drop, &mut faults.duplicate, &mut faults.reorder] {
            *p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
        }
        if let Some((a, b)) = faults.delay {
            faults.delay = Some((a.min(b), a.max(b)));
        }
        self.link(from, to).faults = faults;
    }

    /// Sets the same random faults on every link.
    pub fn set_all_faults(&mut self, faults: &LinkFaults) {
        for from in 0..self.n {
            for to in 0..self.n {
                self.set_faults(from, to, faults.clone());
            }
        }
    }

    /// Cuts the link `from → to` one way: messages on it are lost.
    pub fn cut(&mut self, from: usize, to: usize) {
        self.link(from, to).cut = true;
    }

    /// Cuts every link between set `a` and set `b`, both ways.
    pub fn partition(&mut self, a: &[usize], b: &[usize]) {
        for &x in a {
            for &y in b {
                self.cut(x, y);
                self.cut(y, x);
            }
        }
    }

    /// Restores every cut link. Random faults and holds stay as they are.
    pub fn heal(&mut self) {
        for l in &mut self.links {
            l.cut = false;
        }
    }

    /// Whether `from → to` is cut.
    pub fn is_cut(&self, from: usize, to: usize) -> bool {
        self.links[from * self.n + to].cut
    }

    /// Holds the link `from → to`: from now on its messages are
    /// [`Fate::Held`], to be kept by the caller, in order, until
    /// [`FaultModel::release`].
    pub fn hold(&mut self, from: usize, to: usize) {
        self.link(from, to).holding = true;
    }

    /// Stops holding `from → to`: the caller delivers what it held, in send
    /// order, ahead of anything sent later.
    pub fn release(&mut self, from: usize, to: usize) {
        self.link(from, to).holding = false;
    }

    /// Whether `from → to` is being held.
    pub fn is_holding(&self, from: usize, to: usize) -> bool {
        self.links[from * self.n + to].holding
    }

    /// Whether anything can happen to a message on `from → to` other than
    /// immediate delivery: it is cut, held, or has a random fault set. A
    /// transport may skip [`FaultModel::decide`] (and its counting and
    /// tracing) on a link for which this is false.
    pub fn is_faulty(&self, from: usize, to: usize) -> bool {
        let l = &self.links[from * self.n + to];
        l.cut || l.holding || !l.faults.is_off()
    }

    /// Decides the fate of `msg` sent on `from → to`; the caller delivers
    /// (or keeps) `msg` as the fate says.
    pub fn decide(&mut self, from: usize, to: usize, msg: &[u8]) -> Fate {
        self.decide_len(from, to, msg.len())
    }

    /// [`FaultModel::decide`] for a message of `len` bytes that the caller
    /// holds in another form (the in-process gossip network never encodes
    /// its frames). The same calls give the same fates and trace.
    pub fn decide_len(&mut self, from: usize, to: usize, len: usize) -> Fate {
        let fate = self.draw(from, to);
        let code = match fate {
            Fate::Dropped => 1,
            Fate::Held => 2,
            Fate::Deliver {
                after,
                copies,
                overtake,
            } => {
                3 ^ (u64::from(copies) << 8)
                    ^ (u64::from(overtake) << 16)
                    ^ ((after.as_nanos() as u64) << 20)
            }
        };
        let word = (from as u64) << 48 ^ (to as u64) << 32 ^ len as u64;
        self.trace = fold(fold(self.trace, word), code);
        fate
    }

    fn draw(&mut self, from: usize, to: usize) -> Fate {
        // Borrow the generator and the link apart.
        let Self { rng, links, n, .. } = self;
        assert!(from < *n && to < *n, "link {from}->{to} outside 0..{n}");
        let link = &mut links[from * *n + to];
        link.counters.sent += 1;
        if link.cut {
            link.counters.cut += 1;
            return Fate::Dropped;
        }
        if link.holding {
            link.counters.held += 1;
            return Fate::Held;
        }
        let f = &link.faults;
        if f.is_off() {
            return Fate::Deliver {
                after: Duration::ZERO,
                copies: 1,
                overtake: false,
            };
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
        Fate::Deliver {
            after,
            copies,
            overtake,
        }
    }

    /// What the model did on `from → to` so far.
    pub fn counters(&self, from: usize, to: usize) -> LinkCounters {
        self.links[from * self.n + to].counters
    }

    /// A fingerprint of every decision so far: equal for two runs with the
    /// same seed and the same sends, different (with overwhelming
    /// likelihood) otherwise.
    pub fn trace_hash(&self) -> u64 {
        self.trace
    }
}
