//! The engine thread: admits requests, runs one batched forward pass per
//! step over every running sequence (prompt chunks and next tokens mixed),
//! samples, streams text, and keeps finished sequences' caches so a later
//! prompt that starts the same way (the byte-stable system prompt) skips
//! that prefix. Cached memory is bounded by a count and a byte budget.

use std::collections::{BTreeSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;

use super::kernels::{Isa, ThreadPool};
use super::model::{Batch, KvCache, Model, Scratch};
use super::sampler::{Sampler, SamplerSettings};
use crate::engine::{EngineError, StreamEvent, Usage};

/// Most prompt tokens processed in one step, so running replies keep flowing
/// while a long prompt is read.
const PROMPT_CHUNK: usize = 256;
/// Shortest shared prefix worth copying out of another cache.
const MIN_COPIED_PREFIX: usize = 16;

/// Work for the engine thread.
pub enum Job {
    /// Generate a reply.
    Generate(Request),
    /// Teacher-forced logits of a token sequence.
    Logits {
        /// The tokens.
        tokens: Vec<u32>,
        /// Only the row after the last token (the output layer, over the
        /// whole vocabulary, is most of the work for a short prompt).
        last_only: bool,
        /// Where the logits go.
        reply: std_mpsc::Sender<Result<Vec<Vec<f32>>, EngineError>>,
    },
}

/// One reply to generate.
pub struct Request {
    /// Prompt tokens, chat template applied.
    pub prompt: Vec<u32>,
    /// Sampling.
    pub settings: SamplerSettings,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Where text goes.
    pub events: Sender<Result<StreamEvent, EngineError>>,
    /// Stops the reply.
    pub cancel: CancellationToken,
}

/// Limits of the scheduler.
pub struct SchedulerSettings {
    /// Sequences decoded together.
    pub max_sequences: usize,
    /// Finished sequences whose caches are kept for prefix reuse.
    pub retained_prefixes: usize,
    /// Bytes all caches may hold together.
    pub cache_bytes: usize,
    /// Tokens that end a reply.
    pub stops: BTreeSet<u32>,
}

/// A cache and the tokens it holds.
struct Slot {
    tokens: Vec<u32>,
    busy: bool,
    last_used: Instant,
}

/// Text decoded so far, emitted only in whole characters.
struct TextStream {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl TextStream {
    fn new() -> Self {
        Self {
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    /// Adds a token; returns the text it completes, if any.
    fn push(&mut self, tokenizer: &tokenizers::Tokenizer, token: u32) -> String {
        self.ids.push(token);
        let decode = |ids: &[u32]| tokenizer.decode(ids, true).unwrap_or_default();
        let before = decode(&self.ids[self.prefix_offset..self.read_offset]);
        let after = decode(&self.ids[self.prefix_offset..]);
        if after.len() > before.len()
            && !after.ends_with('\u{FFFD}')
            && after.is_char_boundary(before.len())
        {
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            after[before.len()..].to_string()
        } else {
            String::new()
        }
    }
}

/// A request being served.
struct Sequence {
    request: Request,
    slot: usize,
    sampler: Sampler,
    /// Prompt tokens not yet in the cache.
    pending: VecDeque<u32>,
    /// The sampled token to feed next.
    next: Option<u32>,
    generated: usize,
    text: TextStream,
    /// Text not yet delivered (the channel was full).
    outbox: String,
    prompt_time: Duration,
    prompt_processed: usize,
    first_token_at: Option<Instant>,
    last_token_at: Option<Instant>,
}

/// A finished reply whose last events wait for room in the channel.
struct Draining {
    events: Sender<Result<StreamEvent, EngineError>>,
    queue: VecDeque<Result<StreamEvent, EngineError>>,
}

struct Scheduler {
    model: Model,
    pool: ThreadPool,
    isa: Isa,
    tokenizer: Arc<tokenizers::Tokenizer>,
    settings: SchedulerSettings,
    slots: Vec<Slot>,
    caches: Vec<KvCache>,
    scratch: Scratch,
    waiting: VecDeque<Request>,
    running: Vec<Sequence>,
    draining: Vec<Draining>,
}

/// Serves jobs until the channel closes.
pub fn run(
    model: Model,
    pool: ThreadPool,
    isa: Isa,
    tokenizer: Arc<tokenizers::Tokenizer>,
    settings: SchedulerSettings,
    jobs: std_mpsc::Receiver<Job>,
) {
    let mut scheduler = Scheduler {
        model,
        pool,
        isa,
        tokenizer,
        settings,
        slots: Vec::new(),
        caches: Vec::new(),
        scratch: Scratch::default(),
        waiting: VecDeque::new(),
        running: Vec::new(),
        draining: Vec::new(),
    };
    let mut open = true;
    while open || !scheduler.running.is_empty() || !scheduler.waiting.is_empty() {
        let idle = scheduler.running.is_empty() && scheduler.waiting.is_empty();
        let first = if !open {
            None
        } else if idle && scheduler.draining.is_empty() {
            match jobs.recv() {
                Ok(job) => Some(job),
                Err(_) => {
                    open = false;
                    None
                }
            }
        } else if idle {
            match jobs.recv_timeout(Duration::from_millis(5)) {
                Ok(job) => Some(job),
                Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                    open = false;
                    None
                }
            }
        } else {
            None
        };
        let mut incoming: Vec<Job> = first.into_iter().collect();
        if open {
            loop {
                match jobs.try_recv() {
                    Ok(job) => incoming.push(job),
                    Err(std_mpsc::TryRecvError::Empty) => break,
                    Err(std_mpsc::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
        }
        for job in incoming {
            match job {
                Job::Generate(request) => scheduler.waiting.push_back(request),
                Job::Logits {
                    tokens,
                    last_only,
                    reply,
                } => {
                    let result = scheduler.teacher_forced(&tokens, last_only);
                    let _ = reply.send(result);
                }
            }
        }
        scheduler.drain();
        scheduler.admit();
        if !scheduler.running.is_empty() {
            scheduler.step();
        }
    }
    // Deliver what finished replies still hold, for a short while.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !scheduler.draining.is_empty() && Instant::now() < deadline {
        scheduler.drain();
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl Scheduler {
    fn kv_dim(&self) -> usize {
        self.model.config.kv_dim()
    }

    /// Starts waiting requests while there is room.
    fn admit(&mut self) {
        while self.running.len() < self.settings.max_sequences {
            let Some(request) = self.waiting.pop_front() else {
                return;
            };
            if request.cancel.is_cancelled() || request.events.is_closed() {
                continue;
            }
            if request.prompt.is_empty() {
                let _ = request
                    .events
                    .try_send(Err(EngineError::Generation("the prompt is empty".into())));
                continue;
            }
            let (slot, reused) = self.place(&request.prompt);
            let mut sampler = Sampler::new(request.settings, self.model.config.vocab);
            sampler.observe(&request.prompt);
            let pending: VecDeque<u32> = request.prompt[reused..].iter().copied().collect();
            self.running.push(Sequence {
                request,
                slot,
                sampler,
                pending,
                next: None,
                generated: 0,
                text: TextStream::new(),
                outbox: String::new(),
                prompt_time: Duration::ZERO,
                prompt_processed: 0,
                first_token_at: None,
                last_token_at: None,
            });
        }
    }

    /// Chooses a cache for `prompt`: the idle one sharing the longest prefix,
    /// a copy of a busy one's prefix, or an empty one. Returns the slot and
    /// how many prompt tokens it already holds.
    fn place(&mut self, prompt: &[u32]) -> (usize, usize) {
        if self.settings.retained_prefixes == 0 {
            return (self.free_slot(None), 0);
        }
        let kv_dim = self.kv_dim();
        // At least one prompt token is run, for its logits.
        let usable = prompt.len() - 1;
        let best = self
            .slots
            .iter()
            .enumerate()
            .map(|(index, slot)| (index, common_prefix(&slot.tokens, prompt).min(usable)))
            .max_by_key(|&(index, shared)| (shared, !self.slots[index].busy));
        if let Some((index, shared)) = best {
            // Take the cache over when the prompt continues all of it; when it
            // shares only a prefix, copy that, so the longer cache stays too.
            let whole = shared == self.slots[index].tokens.len() || shared < MIN_COPIED_PREFIX;
            if shared > 0 && !self.slots[index].busy && whole {
                self.caches[index].truncate(shared, kv_dim);
                let slot = &mut self.slots[index];
                slot.tokens.truncate(shared);
                slot.busy = true;
                slot.last_used = Instant::now();
                return (index, shared);
            }
        }
        let target = self.free_slot(best.map(|(source, _)| source));
        if let Some((source, shared)) = best {
            if shared >= MIN_COPIED_PREFIX && source != target {
                let (copy, tokens) = {
                    let mut copy = KvCache::default();
                    copy.copy_prefix(&self.caches[source], shared, kv_dim);
                    (copy, self.slots[source].tokens[..shared].to_vec())
                };
                self.caches[target] = copy;
                self.slots[target].tokens = tokens;
                return (target, shared);
            }
        }
        (target, 0)
    }

    /// An empty slot, marked busy: an empty idle one, else a new one while
    /// fewer caches than allowed are kept, else the least recently used idle
    /// one other than `keep`.
    fn free_slot(&mut self, keep: Option<usize>) -> usize {
        let idle = |slot: &Slot| !slot.busy;
        let empty =
            self.slots.iter().enumerate().position(|(index, slot)| {
                idle(slot) && slot.tokens.is_empty() && Some(index) != keep
            });
        let retained = self
            .slots
            .iter()
            .filter(|slot| idle(slot) && !slot.tokens.is_empty())
            .count();
        let oldest = || {
            self.slots
                .iter()
                .enumerate()
                .filter(|&(index, slot)| idle(slot) && Some(index) != keep)
                .min_by_key(|(_, slot)| slot.last_used)
                .map(|(index, _)| index)
        };
        let reuse = match empty {
            Some(index) => Some(index),
            None if retained < self.settings.retained_prefixes => None,
            None => oldest(),
        };
        let index = match reuse {
            Some(index) => index,
            None => {
                self.slots.push(Slot {
                    tokens: Vec::new(),
                    busy: false,
                    last_used: Instant::now(),
                });
                self.caches.push(KvCache::default());
                self.slots.len() - 1
            }
        };
        self.caches[index] = self.model.new_cache();
        let slot = &mut self.slots[index];
        slot.tokens.clear();
        slot.busy = true;
        slot.last_used = Instant::now();
        index
    }

    /// Frees a finished sequence's slot, keeping its cache within the bounds.
    fn release(&mut self, slot: usize) {
        self.slots[slot].busy = false;
        self.slots[slot].last_used = Instant::now();
        self.enforce_bounds();
    }

    fn enforce_bounds(&mut self) {
        loop {
            let retained: Vec<usize> = (0..self.slots.len())
                .filter(|&index| !self.slots[index].busy && !self.slots[index].tokens.is_empty())
                .collect();
            let bytes: usize = self.caches.iter().map(KvCache::bytes).sum();
            let over = retained.len() > self.settings.retained_prefixes
                || bytes > self.settings.cache_bytes;
            let Some(&oldest) = retained
                .iter()
                .min_by_key(|&&index| self.slots[index].last_used)
            else {
                return;
            };
            if !over {
                return;
            }
            self.caches[oldest] = KvCache::default();
            self.slots[oldest].tokens = Vec::new();
        }
    }

    /// One forward pass over every running sequence.
    fn step(&mut self) {
        self.cancel_abandoned();
        if self.running.is_empty() {
            return;
        }
        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        let mut slots = Vec::new();
        let mut outputs = Vec::new();
        // (sequence, output row) of sequences that sample this step.
        let mut sampling = Vec::new();
        let mut prompt_tokens_in_step = Vec::new();
        let mut budget = PROMPT_CHUNK;
        for (index, sequence) in self.running.iter_mut().enumerate() {
            let start = self.caches[sequence.slot].len();
            let fed: Vec<u32> = if let Some(token) = sequence.next.take() {
                vec![token]
            } else if !sequence.pending.is_empty() {
                let take = sequence.pending.len().min(budget.max(1));
                budget = budget.saturating_sub(take);
                prompt_tokens_in_step.push((index, take));
                sequence.pending.drain(..take).collect()
            } else {
                continue;
            };
            for (offset, &token) in fed.iter().enumerate() {
                tokens.push(token);
                positions.push(start + offset);
                slots.push(sequence.slot);
            }
            self.slots[sequence.slot].tokens.extend_from_slice(&fed);
            if sequence.pending.is_empty() {
                sampling.push((index, outputs.len()));
                outputs.push(tokens.len() - 1);
            }
        }
        if tokens.is_empty() {
            return;
        }
        let started = Instant::now();
        let batch = Batch {
            tokens: &tokens,
            positions: &positions,
            slots: &slots,
            outputs: &outputs,
        };
        let result = catch_unwind(AssertUnwindSafe(|| {
            self.model.forward(
                &self.pool,
                self.isa,
                &batch,
                &mut self.caches,
                &mut self.scratch,
            )
        }));
        let result = match result {
            Ok(result) => result,
            Err(_) => Err(EngineError::Generation(
                "the engine failed while computing this reply".into(),
            )),
        };
        if let Err(err) = result {
            tracing::error!(error = %err, "engine step failed; its replies end with an error");
            let failed: Vec<Sequence> = self.running.drain(..).collect();
            for sequence in failed {
                // The caches of this step may be partly written: drop them.
                self.slots[sequence.slot].tokens.clear();
                self.caches[sequence.slot] = KvCache::default();
                self.finish(sequence, Some(EngineError::Generation(err.to_string())));
            }
            return;
        }
        let elapsed = started.elapsed();
        for &(index, count) in &prompt_tokens_in_step {
            let sequence = &mut self.running[index];
            sequence.prompt_time += elapsed;
            sequence.prompt_processed += count;
        }
        let vocab = self.model.config.vocab;
        let now = Instant::now();
        let mut finished = Vec::new();
        for &(index, row) in &sampling {
            let logits = &mut self.scratch.logits[row * vocab..(row + 1) * vocab];
            let sequence = &mut self.running[index];
            let token = sequence.sampler.sample(logits);
            sequence.first_token_at.get_or_insert(now);
            if self.settings.stops.contains(&token) {
                finished.push(index);
                continue;
            }
            sequence.generated += 1;
            sequence.last_token_at = Some(now);
            sequence.sampler.observe(&[token]);
            let text = sequence.text.push(&self.tokenizer, token);
            sequence.outbox.push_str(&text);
            let context_full =
                self.caches[sequence.slot].len() + 1 >= self.model.config.context_length;
            if sequence.generated >= sequence.request.max_tokens || context_full {
                finished.push(index);
            } else {
                sequence.next = Some(token);
            }
        }
        for sequence in &mut self.running {
            flush(sequence);
        }
        finished.sort_unstable();
        for index in finished.into_iter().rev() {
            let sequence = self.running.swap_remove(index);
            self.finish(sequence, None);
        }
    }

    /// Ends sequences whose reader left or that were cancelled.
    fn cancel_abandoned(&mut self) {
        let mut index = 0;
        while index < self.running.len() {
            let sequence = &self.running[index];
            if sequence.request.cancel.is_cancelled() || sequence.request.events.is_closed() {
                let sequence = self.running.swap_remove(index);
                // Tokens already fed stay valid in the cache for reuse.
                self.release(sequence.slot);
            } else {
                index += 1;
            }
        }
    }

    fn finish(&mut self, mut sequence: Sequence, error: Option<EngineError>) {
        self.release(sequence.slot);
        let mut queue = VecDeque::new();
        if !sequence.outbox.is_empty() {
            queue.push_back(Ok(StreamEvent::Delta(std::mem::take(&mut sequence.outbox))));
        }
        queue.push_back(match error {
            Some(err) => Err(err),
            None => Ok(StreamEvent::Done(usage_of(&sequence))),
        });
        self.draining.push(Draining {
            events: sequence.request.events,
            queue,
        });
        self.drain();
    }

    /// Delivers queued final events where the channel has room.
    fn drain(&mut self) {
        self.draining.retain_mut(|draining| {
            while let Some(event) = draining.queue.pop_front() {
                match draining.events.try_send(event) {
                    Ok(()) => {}
                    Err(TrySendError::Full(event)) => {
                        draining.queue.push_front(event);
                        return true;
                    }
                    Err(TrySendError::Closed(_)) => return false,
                }
            }
            false
        });
    }

    /// Logits at every position of `tokens` (or the last only), in a
    /// private cache.
    fn teacher_forced(
        &mut self,
        tokens: &[u32],
        last_only: bool,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        if tokens.is_empty() || tokens.len() > self.model.config.context_length {
            return Err(EngineError::Generation(format!(
                "teacher forcing needs 1 to {} tokens",
                self.model.config.context_length
            )));
        }
        let vocab = self.model.config.vocab;
        let mut caches = vec![self.model.new_cache()];
        let mut rows = Vec::with_capacity(tokens.len());
        let chunks = tokens.len().div_ceil(PROMPT_CHUNK);
        for (chunk_index, chunk) in tokens.chunks(PROMPT_CHUNK).enumerate() {
            let start = chunk_index * PROMPT_CHUNK;
            let positions: Vec<usize> = (start..start + chunk.len()).collect();
            let slots = vec![0; chunk.len()];
            let outputs: Vec<usize> = if !last_only {
                (0..chunk.len()).collect()
            } else if chunk_index + 1 == chunks {
                vec![chunk.len() - 1]
            } else {
                Vec::new()
            };
            let batch = Batch {
                tokens: chunk,
                positions: &positions,
                slots: &slots,
                outputs: &outputs,
            };
            let result = catch_unwind(AssertUnwindSafe(|| {
                self.model
                    .forward(&self.pool, self.isa, &batch, &mut caches, &mut self.scratch)
            }))
            .map_err(|_| EngineError::Generation("the engine failed on this input".into()))?;
            result?;
            rows.extend(self.scratch.logits.chunks_exact(vocab).map(<[f32]>::to_vec));
        }
        Ok(rows)
    }
}

/// Sends what the outbox holds, if the channel has room.
fn flush(sequence: &mut Sequence) {
    if sequence.outbox.is_empty() {
        return;
    }
    let text = std::mem::take(&mut sequence.outbox);
    match sequence
        .request
        .events
        .try_send(Ok(StreamEvent::Delta(text)))
    {
        Ok(()) | Err(TrySendError::Closed(_)) => {}
        Err(TrySendError::Full(Ok(StreamEvent::Delta(text)))) => sequence.outbox = text,
        Err(TrySendError::Full(_)) => {}
    }
}

fn usage_of(sequence: &Sequence) -> Usage {
    let prompt_seconds = sequence.prompt_time.as_secs_f64();
    let decode_seconds = match (sequence.first_token_at, sequence.last_token_at) {
        (Some(first), Some(last)) => (last - first).as_secs_f64(),
        _ => 0.0,
    };
    let decoded_after_first = sequence.generated.saturating_sub(1);
    Usage {
        prompt_tokens: sequence.request.prompt.len(),
        cached_prompt_tokens: sequence.request.prompt.len() - sequence.prompt_processed,
        completion_tokens: sequence.generated,
        prompt_tokens_per_sec: if prompt_seconds > 0.0 {
            sequence.prompt_processed as f64 / prompt_seconds
        } else {
            0.0
        },
        decode_tokens_per_sec: if decode_seconds > 0.0 {
            decoded_after_first as f64 / decode_seconds
        } else {
            0.0
        },
    }
}
