//! Codec throughput: a small LWW-like entry encoded, framed and decoded
//! through `MessageCodec`, against raw bincode `encode_into_slice` +
//! `decode_from_slice` of the same struct, in the same run.

use std::hint::black_box;
use std::time::Instant;

use bytes::BytesMut;
use multinode_benchkit::{Better, interleaved, quick, record};
use multinode_wire::{Message, MessageCodec, NodeId, Timestamp};
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Entry {
    #[serde(deserialize_with = "multinode_wire::bounded::string")]
    key: String,
    value: [u8; 8],
    version: Timestamp,
}

impl Message for Entry {}

fn entry(i: u64) -> Entry {
    Entry {
        key: format!("user:{i:011}"),
        value: i.to_le_bytes(),
        version: Timestamp {
            physical_ms: 1_767_225_600_000 + i,
            logical: (i % 7) as u32,
            node: NodeId(i % 5),
        },
    }
}

const BATCH: usize = 1024;

fn main() {
    let rounds = if quick() { 200 } else { 2000 };
    let reps = if quick() { 5 } else { 15 };
    let entries: Vec<Entry> = (0..BATCH as u64).map(entry).collect();

    let mut codec = MessageCodec::<Entry>::new();
    let mut buf = BytesMut::with_capacity(BATCH * 64);
    let ours = || {
        let start = Instant::now();
        for _ in 0..rounds {
            for e in &entries {
                codec.encode(e, &mut buf).expect("encode");
            }
            while let Some(e) = codec.decode(&mut buf).expect("decode") {
                black_box(e);
            }
        }
        (rounds * BATCH) as f64 / start.elapsed().as_secs_f64() / 1e6
    };

    let config = bincode::config::standard();
    let mut slab = vec![0u8; BATCH * 64];
    let mut ends = Vec::with_capacity(BATCH);
    let baseline = || {
        let start = Instant::now();
        for _ in 0..rounds {
            ends.clear();
            let mut at = 0;
            for e in &entries {
                at +=
                    bincode::serde::encode_into_slice(e, &mut slab[at..], config).expect("encode");
                ends.push(at);
            }
            let mut from = 0;
            for &end in &ends {
                let (e, _): (Entry, usize) =
                    bincode::serde::decode_from_slice(&slab[from..end], config).expect("decode");
                black_box(e);
                from = end;
            }
        }
        (rounds * BATCH) as f64 / start.elapsed().as_secs_f64() / 1e6
    };

    let (o, b) = interleaved(reps, ours, baseline);
    record(
        "wire",
        "codec_small_entry",
        "Mmsg/s",
        o,
        b,
        "raw bincode encode_into_slice + decode_from_slice",
        Better::Higher,
        Some(0.85),
    );
}
