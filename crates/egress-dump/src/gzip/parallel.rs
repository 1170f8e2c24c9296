//! Ordered parallel deflate, as pigz does it: blocks are deflated on several threads and
//! handed back in input order. Blocks in flight (queued, compressing, or waiting for an
//! earlier one) are limited by tokens, so memory stays fixed however fast input comes.

use std::collections::BTreeMap;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::Scope;

use super::deflate::{DeflateError, Encoder, Engine, WINDOW};

/// One block, deflated.
pub struct Deflated {
    /// The compressed bytes: raw deflate, or a whole gzip member.
    pub data: Vec<u8>,
    /// CRC-32 of the uncompressed block (for the single member's trailer; unused when the
    /// block is a member of its own, which carries its CRC).
    pub crc: crc32fast::Hasher,
    /// Uncompressed length.
    pub len: u64,
    /// The stream's final block.
    pub last: bool,
}

struct Block {
    index: u64,
    data: Vec<u8>,
    dictionary: Vec<u8>,
    last: bool,
}

/// Where blocks go in.
pub struct Submit {
    jobs: SyncSender<Block>,
    tokens: Receiver<()>,
    next: u64,
    dictionary: Vec<u8>,
    primed: bool,
}

impl Submit {
    /// Queue the next block (waits for a free slot); false once the workers are gone.
    pub fn block(&mut self, data: Vec<u8>, last: bool) -> bool {
        if self.tokens.recv().is_err() {
            return false;
        }
        let next_dictionary = match self.primed {
            true => data[data.len().saturating_sub(WINDOW)..].to_vec(),
            false => Vec::new(),
        };
        let job = Block {
            index: self.next,
            data,
            dictionary: std::mem::replace(&mut self.dictionary, next_dictionary),
            last,
        };
        self.next += 1;
        self.jobs.send(job).is_ok()
    }
}

/// Where blocks come out, in order.
pub struct InOrder {
    done: Receiver<(u64, Result<Deflated, DeflateError>)>,
    tokens: SyncSender<()>,
    waiting: BTreeMap<u64, Result<Deflated, DeflateError>>,
    next: u64,
}

impl Iterator for InOrder {
    type Item = Result<Deflated, DeflateError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(block) = self.waiting.remove(&self.next) {
                self.next += 1;
                let _ = self.tokens.send(());
                return Some(block);
            }
            let (index, block) = self.done.recv().ok()?;
            self.waiting.insert(index, block);
        }
    }
}

/// How the workers compress.
#[derive(Debug, Clone, Copy)]
pub struct Workers {
    /// Threads.
    pub threads: usize,
    /// Blocks queued, compressing or waiting for an earlier one, at most.
    pub in_flight: usize,
    /// The library.
    pub engine: Engine,
    /// `--compression-level`.
    pub level: u32,
}

/// Start the deflate workers in `scope`.
pub fn start<'scope>(scope: &'scope Scope<'scope, '_>, workers: Workers) -> (Submit, InOrder) {
    let in_flight = workers.in_flight.max(1);
    let (job_tx, job_rx) = sync_channel::<Block>(in_flight);
    let (done_tx, done_rx) = sync_channel(in_flight);
    let (token_tx, token_rx) = sync_channel::<()>(in_flight);
    for _ in 0..in_flight {
        let _ = token_tx.send(());
    }
    let job_rx = Arc::new(Mutex::new(job_rx));
    for _ in 0..workers.threads.max(1) {
        let (jobs, done) = (job_rx.clone(), done_tx.clone());
        scope.spawn(move || worker(jobs, done, workers));
    }
    let submit = Submit {
        jobs: job_tx,
        tokens: token_rx,
        next: 0,
        dictionary: Vec::new(),
        primed: !workers.engine.member_per_block(),
    };
    let in_order = InOrder {
        done: done_rx,
        tokens: token_tx,
        waiting: BTreeMap::new(),
        next: 0,
    };
    (submit, in_order)
}

type Done = SyncSender<(u64, Result<Deflated, DeflateError>)>;

fn worker(jobs: Arc<Mutex<Receiver<Block>>>, done: Done, workers: Workers) {
    let mut encoder = Encoder::new(workers.engine, workers.level);
    let single_member = !workers.engine.member_per_block();
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let mut crc = crc32fast::Hasher::new();
        if single_member {
            crc.update(&job.data);
        }
        let block = match &mut encoder {
            Ok(encoder) => encoder.block(&job.data, &job.dictionary, job.last),
            Err(e) => Err(DeflateError::from_message(e.to_string())),
        };
        let block = block.map(|data| Deflated {
            data,
            crc,
            len: job.data.len() as u64,
            last: job.last,
        });
        if done.send((job.index, block)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn blocks_come_back_in_input_order() {
        let blocks: Vec<Vec<u8>> = (0..40u32)
            .map(|i| {
                // Uneven sizes, so later blocks often finish first.
                let n = if i % 3 == 0 { 200_000 } else { 3_000 };
                (0..n)
                    .map(|j| ((i * 7 + j as u32 / 11) % 251) as u8)
                    .collect()
            })
            .collect();
        let expected: Vec<u8> = blocks.concat();
        let out = std::thread::scope(|scope| {
            let workers = Workers {
                threads: 3,
                in_flight: 6,
                engine: Engine::Zlib,
                level: 6,
            };
            let (mut submit, in_order) = start(scope, workers);
            let feeder = scope.spawn(move || {
                let n = blocks.len();
                for (i, b) in blocks.into_iter().enumerate() {
                    assert!(submit.block(b, i + 1 == n));
                }
            });
            let deflated: Vec<u8> = in_order.flat_map(|b| b.unwrap().data).collect();
            feeder.join().unwrap();
            deflated
        });
        let mut inflated = Vec::new();
        flate2::read::DeflateDecoder::new(out.as_slice())
            .read_to_end(&mut inflated)
            .unwrap();
        assert!(inflated == expected, "in order, nothing lost");
    }
}
