//! The transformer of the llama family and qwen2, built from GGUF metadata,
//! and its batched forward pass: any mix of tokens from several sequences
//! (a prompt chunk of one, the next token of others) runs as one batch, so
//! every weight matrix is read once per step whatever the batch holds.
//!
//! Supported: GQA, RoPE in ggml's interleaved (llama) and NeoX (qwen2)
//! styles with linear scaling or per-dimension frequency factors, RMSNorm,
//! SwiGLU, q/k/v biases, tied or separate output. Anything else in the
//! file is refused with an error that names it.

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::kernels::{self, Activations, Isa, MatmulJob, QuantRow, ThreadPool};
use super::weights::{Matrix, TensorReader};
use crate::engine::gguf::{GgufHeader, MetaValue};
use crate::engine::EngineError;

/// How [`Model::load`] lays out the weights.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Every matrix expanded to f32: the exact reference of the tests.
    pub exact: bool,
    /// Q8_0 and Q4_0 regrouped for the AVX-512 kernels.
    pub pack: bool,
    /// Q8_0 matrices multiplied with two activation terms.
    pub precise_activations: bool,
}

/// Architectures this engine runs.
pub const CPU_ARCHITECTURES: &[&str] = &["llama", "qwen2"];

/// How RoPE pairs the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (2i, 2i+1): ggml's normal mode, used by llama GGUF files.
    Interleaved,
    /// Halves (i, i + d/2): ggml's NeoX mode, used by qwen2.
    Neox,
}

/// The model's shape and settings, all read from the GGUF metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// `general.architecture`.
    pub architecture: String,
    /// Transformer blocks.
    pub layers: usize,
    /// Width of the residual stream.
    pub embedding: usize,
    /// Hidden width of the feed-forward block.
    pub feed_forward: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (GQA when fewer than `heads`).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// RoPE base frequency.
    pub rope_base: f32,
    /// Dimensions of each head that RoPE rotates.
    pub rope_dims: usize,
    /// Pairing of rotated dimensions.
    pub rope_style: RopeStyle,
    /// Linear position scaling (positions are divided by it).
    pub rope_linear_scale: f32,
    /// RMSNorm epsilon.
    pub rms_epsilon: f32,
    /// Trained context length.
    pub context_length: usize,
}

impl ModelConfig {
    /// Reads the configuration, refusing what this engine cannot run.
    pub fn from_header(path: &Path, header: &GgufHeader) -> Result<Self, EngineError> {
        let unsupported = |detail: String| EngineError::Unsupported {
            path: path.to_path_buf(),
            detail,
        };
        let architecture = header.architecture().unwrap_or_default().to_string();
        if !CPU_ARCHITECTURES.contains(&architecture.as_str()) {
            return Err(unsupported(format!(
                "architecture {architecture:?} (the cpu backend runs {})",
                CPU_ARCHITECTURES.join(", ")
            )));
        }
        let known: HashSet<String> = [
            "block_count",
            "context_length",
            "embedding_length",
            "feed_forward_length",
            "vocab_size",
            "attention.head_count",
            "attention.head_count_kv",
            "attention.layer_norm_rms_epsilon",
            "attention.key_length",
            "attention.value_length",
            "rope.freq_base",
            "rope.dimension_count",
            "rope.scaling.type",
            "rope.scaling.factor",
            "rope.scaling.original_context_length",
            "rope.scaling.finetuned",
        ]
        .iter()
        .map(|key| format!("{architecture}.{key}"))
        .collect();
        let mut unknown: Vec<&str> = header
            .metadata
            .keys()
            .filter(|key| key.starts_with(&format!("{architecture}.")) && !known.contains(*key))
            .map(String::as_str)
            .collect();
        unknown.sort_unstable();
        if let Some(key) = unknown.first() {
            return Err(unsupported(format!(
                "metadata key {key} (a feature the cpu backend does not implement)"
            )));
        }
        let prefix = architecture.clone();
        let key = |name: &str| format!("{prefix}.{name}");
        let integer = |name: &str| -> Option<usize> {
            header
                .metadata
                .get(&key(name))
                .and_then(MetaValue::as_u64)
                .map(|value| value as usize)
        };
        let float = |name: &str| -> Option<f32> {
            match header.metadata.get(&key(name))? {
                MetaValue::Float(value) => Some(*value as f32),
                MetaValue::Int(value) => Some(*value as f32),
                _ => None,
            }
        };
        let required = |name: &str| {
            integer(name)
                .filter(|&value| value > 0)
                .ok_or_else(|| unsupported(format!("missing or zero metadata key {}", key(name))))
        };
        let layers = required("block_count")?;
        let embedding = required("embedding_length")?;
        let feed_forward = required("feed_forward_length")?;
        let heads = required("attention.head_count")?;
        let kv_heads = integer("attention.head_count_kv").unwrap_or(heads);
        let head_dim = match integer("attention.key_length") {
            Some(length) => length,
            None if embedding % heads == 0 => embedding / heads,
            None => {
                return Err(unsupported(format!(
                    "embedding_length {embedding} is not a multiple of head_count {heads}"
                )))
            }
        };
        if let Some(value_length) = integer("attention.value_length") {
            if value_length != head_dim {
                return Err(unsupported(format!(
                    "value_length {value_length} differs from key_length {head_dim}"
                )));
            }
        }
        if kv_heads == 0 || heads % kv_heads != 0 {
            return Err(unsupported(format!(
                "head_count {heads} is not a multiple of head_count_kv {kv_heads}"
            )));
        }
        if head_dim % 2 != 0 || embedding % kernels::BLOCK != 0 {
            return Err(unsupported(format!(
                "head width {head_dim} or embedding width {embedding} is not supported"
            )));
        }
        let rms_epsilon = float("attention.layer_norm_rms_epsilon").ok_or_else(|| {
            unsupported(format!(
                "missing metadata key {}",
                key("attention.layer_norm_rms_epsilon")
            ))
        })?;
        let rope_dims = integer("rope.dimension_count").unwrap_or(head_dim);
        if rope_dims > head_dim || rope_dims % 2 != 0 {
            return Err(unsupported(format!(
                "rope.dimension_count {rope_dims} does not fit heads of {head_dim}"
            )));
        }
        let scaling = header
            .metadata
            .get(&key("rope.scaling.type"))
            .and_then(MetaValue::as_str)
            .unwrap_or("none");
        let rope_linear_scale = match scaling {
            "none" => 1.0,
            "linear" => float("rope.scaling.factor")
                .filter(|&f| f > 0.0)
                .unwrap_or(1.0),
            other => {
                return Err(unsupported(format!(
                    "{} = {other:?} (the cpu backend implements none and linear)",
                    key("rope.scaling.type")
                )))
            }
        };
        let vocab = header
            .tensors
            .iter()
            .find(|tensor| tensor.name == "token_embd.weight")
            .and_then(|tensor| tensor.dims.get(1))
            .map(|&rows| rows as usize)
            .ok_or_else(|| unsupported("tensor token_embd.weight is missing".into()))?;
        Ok(Self {
            rope_style: if architecture == "qwen2" {
                RopeStyle::Neox
            } else {
                RopeStyle::Interleaved
            },
            architecture,
            layers,
            embedding,
            feed_forward,
            heads,
            kv_heads,
            head_dim,
            vocab,
            rope_base: float("rope.freq_base").unwrap_or(10_000.0),
            rope_dims,
            rope_linear_scale,
            rms_epsilon,
            context_length: integer("context_length").unwrap_or(2048),
        })
    }

    /// Width of all query heads together.
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Width of all key (or value) heads together.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Bytes of KV cache one token takes (f32 keys and values, all layers).
    pub fn kv_bytes_per_token(&self) -> usize {
        self.layers * self.kv_dim() * 2 * 4
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    q: Matrix,
    k: Matrix,
    v: Matrix,
    q_bias: Option<Vec<f32>>,
    k_bias: Option<Vec<f32>>,
    v_bias: Option<Vec<f32>>,
    attn_output: Matrix,
    ffn_norm: Vec<f32>,
    gate: Matrix,
    up: Matrix,
    down: Matrix,
}

/// Positions per key tile.
const KEY_TILE: usize = 16;

/// Keys and values of one sequence, per layer. Values are `[position]
/// [kv_dim]`; keys are tiles of 16 positions, `[tile][kv_head][dim][16]`,
/// so attention scores 16 positions with one vector per dimension.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<(Vec<f32>, Vec<f32>)>,
    len: usize,
}

/// Floats of the key tiles that hold `len` positions.
fn key_floats(len: usize, kv_dim: usize) -> usize {
    len.div_ceil(KEY_TILE) * KEY_TILE * kv_dim
}

/// Stores `key` (`kv_dim` values) at `position`, dropping later positions.
fn store_key(keys: &mut Vec<f32>, position: usize, key: &[f32], head_dim: usize) {
    let kv_dim = key.len();
    keys.truncate(key_floats(position, kv_dim));
    keys.resize(key_floats(position + 1, kv_dim), 0.0);
    let tile = &mut keys[position / KEY_TILE * KEY_TILE * kv_dim..][..KEY_TILE * kv_dim];
    let lane = position % KEY_TILE;
    for (dim, &value) in key.iter().enumerate() {
        let (head, within) = (dim / head_dim, dim % head_dim);
        tile[(head * head_dim + within) * KEY_TILE + lane] = value;
    }
}

impl KvCache {
    /// Positions stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps the first `len` positions.
    pub fn truncate(&mut self, len: usize, kv_dim: usize) {
        self.len = self.len.min(len);
        for (keys, values) in &mut self.layers {
            keys.truncate(key_floats(self.len, kv_dim));
            values.truncate(self.len * kv_dim);
        }
    }

    /// Copies the first `len` positions of `other`.
    pub fn copy_prefix(&mut self, other: &KvCache, len: usize, kv_dim: usize) {
        let len = len.min(other.len);
        self.layers = other
            .layers
            .iter()
            .map(|(keys, values)| {
                (
                    keys[..key_floats(len, kv_dim)].to_vec(),
                    values[..len * kv_dim].to_vec(),
                )
            })
            .collect();
        self.len = len;
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|(keys, values)| (keys.capacity() + values.capacity()) * 4)
            .sum()
    }
}

/// One step's tokens: token `i` is `tokens[i]` at `positions[i]` of the
/// sequence whose cache is `caches[slots[i]]`. A sequence's tokens in one
/// batch must be consecutive and continue its cache.
pub struct Batch<'a> {
    /// Token ids.
    pub tokens: &'a [u32],
    /// Position of each token in its sequence.
    pub positions: &'a [usize],
    /// Cache index of each token.
    pub slots: &'a [usize],
    /// Indices of the tokens whose next-token logits are wanted.
    pub outputs: &'a [usize],
}

/// Buffers reused from step to step.
#[derive(Default)]
pub struct Scratch {
    x: Vec<f32>,
    normed: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attention: Vec<f32>,
    projected: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    quant: Vec<QuantRow>,
    rope: Vec<f32>,
    /// Logits of the last step, `outputs × vocab`.
    pub logits: Vec<f32>,
}

/// A loaded model.
pub struct Model {
    /// Shape and settings.
    pub config: ModelConfig,
    embedding: Matrix,
    output_norm: Vec<f32>,
    output: Option<Matrix>,
    layers: Vec<Layer>,
    inverse_frequencies: Vec<f32>,
    /// Bytes converted into memory at load (not in the mapping).
    pub converted_bytes: usize,
    /// The file it came from.
    pub path: PathBuf,
}

fn layer_tensor_names() -> [&'static str; 15] {
    [
        "attn_norm.weight",
        "attn_q.weight",
        "attn_k.weight",
        "attn_v.weight",
        "attn_q.bias",
        "attn_k.bias",
        "attn_v.bias",
        "attn_output.weight",
        "ffn_norm.weight",
        "ffn_gate.weight",
        "ffn_up.weight",
        "ffn_down.weight",
        // Present in some llama files; recomputed here, so ignored.
        "attn_rot_embd",
        "attn_rot_embd.weight",
        "rope_freqs.weight",
    ]
}

impl Model {
    /// Loads the model at `path`, whose header is `header`; `exact` expands
    /// every matrix to f32, the slow reference of the accuracy tests, and
    /// `pack` regroups quantised matrices for kernels that read them packed.
    pub fn load(
        path: &Path,
        header: &GgufHeader,
        options: LoadOptions,
    ) -> Result<Self, EngineError> {
        let config = ModelConfig::from_header(path, header)?;
        let mut known: HashSet<String> = [
            "token_embd.weight",
            "output_norm.weight",
            "output.weight",
            "rope_freqs.weight",
        ]
        .iter()
        .map(|name| name.to_string())
        .collect();
        for layer in 0..config.layers {
            for name in layer_tensor_names() {
                known.insert(format!("blk.{layer}.{name}"));
            }
        }
        if let Some(tensor) = header
            .tensors
            .iter()
            .find(|tensor| !known.contains(&tensor.name))
        {
            return Err(EngineError::Unsupported {
                path: path.to_path_buf(),
                detail: format!(
                    "tensor {} (a feature the cpu backend does not implement)",
                    tensor.name
                ),
            });
        }
        let mut reader = TensorReader::open(path, header)?;
        reader.exact = options.exact;
        reader.pack = options.pack;
        reader.precise_activations = options.precise_activations;
        let (d, ff, q_dim, kv_dim) = (
            config.embedding,
            config.feed_forward,
            config.q_dim(),
            config.kv_dim(),
        );
        let embedding = reader.matrix("token_embd.weight", config.vocab, d)?;
        let output_norm = reader.vector("output_norm.weight", d)?;
        let output = if reader.has("output.weight") {
            Some(reader.matrix("output.weight", config.vocab, d)?)
        } else {
            None
        };
        let mut layers = Vec::with_capacity(config.layers);
        for index in 0..config.layers {
            let name = |part: &str| format!("blk.{index}.{part}");
            let bias = |reader: &mut TensorReader<'_>, part: &str, len: usize| {
                let full = name(part);
                if reader.has(&full) {
                    reader.vector(&full, len).map(Some)
                } else {
                    Ok(None)
                }
            };
            let q_bias = bias(&mut reader, "attn_q.bias", q_dim)?;
            let k_bias = bias(&mut reader, "attn_k.bias", kv_dim)?;
            let v_bias = bias(&mut reader, "attn_v.bias", kv_dim)?;
            layers.push(Layer {
                attn_norm: reader.vector(&name("attn_norm.weight"), d)?,
                q: reader.matrix(&name("attn_q.weight"), q_dim, d)?,
                k: reader.matrix(&name("attn_k.weight"), kv_dim, d)?,
                v: reader.matrix(&name("attn_v.weight"), kv_dim, d)?,
                q_bias,
                k_bias,
                v_bias,
                attn_output: reader.matrix(&name("attn_output.weight"), d, q_dim)?,
                ffn_norm: reader.vector(&name("ffn_norm.weight"), d)?,
                gate: reader.matrix(&name("ffn_gate.weight"), ff, d)?,
                up: reader.matrix(&name("ffn_up.weight"), ff, d)?,
                down: reader.matrix(&name("ffn_down.weight"), d, ff)?,
            });
        }
        let half = config.rope_dims / 2;
        let mut inverse_frequencies: Vec<f32> = (0..half)
            .map(|i| {
                config
                    .rope_base
                    .powf(-2.0 * i as f32 / config.rope_dims as f32)
            })
            .collect();
        if reader.has("rope_freqs.weight") {
            let factors = reader.vector("rope_freqs.weight", half)?;
            for (frequency, factor) in inverse_frequencies.iter_mut().zip(factors) {
                *frequency /= factor;
            }
        }
        if !reader.converted.is_empty() {
            let kinds: HashSet<&str> = reader.converted.iter().map(|(_, kind)| *kind).collect();
            tracing::info!(
                tensors = reader.converted.len(),
                types = ?kinds,
                megabytes = reader.converted_bytes as f64 / 1e6,
                "converted tensors without native kernels at load (quantised types to Q8_0, floats to F32)"
            );
        }
        Ok(Self {
            config,
            embedding,
            output_norm,
            output,
            layers,
            inverse_frequencies,
            converted_bytes: reader.converted_bytes,
            path: path.to_path_buf(),
        })
    }

    /// A cache for one sequence, shaped for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache {
            layers: (0..self.config.layers)
                .map(|_| (Vec::new(), Vec::new()))
                .collect(),
            len: 0,
        }
    }

    /// Runs one batch, appending its keys and values to the caches, and
    /// leaves the logits of `batch.outputs` in `scratch.logits`.
    pub fn forward(
        &self,
        pool: &ThreadPool,
        isa: Isa,
        batch: &Batch<'_>,
        caches: &mut [KvCache],
        scratch: &mut Scratch,
    ) -> Result<(), EngineError> {
        let config = &self.config;
        let n = batch.tokens.len();
        let (d, q_dim, kv_dim, ff) = (
            config.embedding,
            config.q_dim(),
            config.kv_dim(),
            config.feed_forward,
        );
        check_batch(batch, caches, config)?;
        resize(&mut scratch.x, n * d);
        resize(&mut scratch.normed, n * d);
        resize(&mut scratch.q, n * q_dim);
        resize(&mut scratch.k, n * kv_dim);
        resize(&mut scratch.v, n * kv_dim);
        resize(&mut scratch.attention, n * q_dim);
        resize(&mut scratch.projected, n * d);
        resize(&mut scratch.gate, n * ff);
        resize(&mut scratch.up, n * ff);
        let embedding = self.embedding.view();
        for (row, &token) in scratch.x.chunks_exact_mut(d).zip(batch.tokens) {
            embedding.dequantize_row(token as usize, row);
        }
        self.rope_table(batch.positions, &mut scratch.rope);
        for (index, layer) in self.layers.iter().enumerate() {
            rms_norm_rows(
                &scratch.x,
                &layer.attn_norm,
                config.rms_epsilon,
                &mut scratch.normed,
            );
            project(
                pool,
                isa,
                &scratch.normed,
                d,
                &mut scratch.quant,
                &[&layer.q, &layer.k, &layer.v],
                &mut [
                    MatmulJob {
                        weights: layer.q.view(),
                        bias: layer.q_bias.as_deref(),
                        out: &mut scratch.q,
                    },
                    MatmulJob {
                        weights: layer.k.view(),
                        bias: layer.k_bias.as_deref(),
                        out: &mut scratch.k,
                    },
                    MatmulJob {
                        weights: layer.v.view(),
                        bias: layer.v_bias.as_deref(),
                        out: &mut scratch.v,
                    },
                ],
            );
            self.apply_rope(&mut scratch.q, config.heads, &scratch.rope);
            self.apply_rope(&mut scratch.k, config.kv_heads, &scratch.rope);
            for i in 0..n {
                let (keys, values) = &mut caches[batch.slots[i]].layers[index];
                let position = batch.positions[i];
                store_key(
                    keys,
                    position,
                    &scratch.k[i * kv_dim..(i + 1) * kv_dim],
                    config.head_dim,
                );
                values.truncate(position * kv_dim);
                values.extend_from_slice(&scratch.v[i * kv_dim..(i + 1) * kv_dim]);
            }
            attention(
                pool,
                config,
                batch,
                caches,
                index,
                &scratch.q,
                &mut scratch.attention,
            );
            project(
                pool,
                isa,
                &scratch.attention,
                q_dim,
                &mut scratch.quant,
                &[&layer.attn_output],
                &mut [MatmulJob {
                    weights: layer.attn_output.view(),
                    bias: None,
                    out: &mut scratch.projected,
                }],
            );
            add_assign(&mut scratch.x, &scratch.projected);
            rms_norm_rows(
                &scratch.x,
                &layer.ffn_norm,
                config.rms_epsilon,
                &mut scratch.normed,
            );
            project(
                pool,
                isa,
                &scratch.normed,
                d,
                &mut scratch.quant,
                &[&layer.gate, &layer.up],
                &mut [
                    MatmulJob {
                        weights: layer.gate.view(),
                        bias: None,
                        out: &mut scratch.gate,
                    },
                    MatmulJob {
                        weights: layer.up.view(),
                        bias: None,
                        out: &mut scratch.up,
                    },
                ],
            );
            if n < 4 {
                kernels::silu_mul(&mut scratch.gate, &scratch.up);
            } else {
                let up = &scratch.up;
                pool.for_each_chunk_mut(&mut scratch.gate, ff, &|row, gate| {
                    kernels::silu_mul(gate, &up[row * ff..(row + 1) * ff]);
                });
            }
            project(
                pool,
                isa,
                &scratch.gate,
                ff,
                &mut scratch.quant,
                &[&layer.down],
                &mut [MatmulJob {
                    weights: layer.down.view(),
                    bias: None,
                    out: &mut scratch.projected,
                }],
            );
            add_assign(&mut scratch.x, &scratch.projected);
        }
        for i in 0..n {
            let cache = &mut caches[batch.slots[i]];
            cache.len = cache.len.max(batch.positions[i] + 1);
        }
        let outputs = batch.outputs.len();
        let mut selected = vec![0.0; outputs * d];
        for (row, &i) in selected.chunks_exact_mut(d).zip(batch.outputs) {
            row.copy_from_slice(&scratch.x[i * d..(i + 1) * d]);
        }
        let mut normed = vec![0.0; outputs * d];
        rms_norm_rows(
            &selected,
            &self.output_norm,
            config.rms_epsilon,
            &mut normed,
        );
        resize(&mut scratch.logits, outputs * config.vocab);
        let output = self.output.as_ref().unwrap_or(&self.embedding);
        project(
            pool,
            isa,
            &normed,
            d,
            &mut scratch.quant,
            &[output],
            &mut [MatmulJob {
                weights: output.view(),
                bias: None,
                out: &mut scratch.logits,
            }],
        );
        Ok(())
    }

    /// cos and sin of every rotated pair at every position of the batch.
    fn rope_table(&self, positions: &[usize], table: &mut Vec<f32>) {
        let half = self.inverse_frequencies.len();
        table.clear();
        for &position in positions {
            let position = position as f32 / self.config.rope_linear_scale;
            for &frequency in &self.inverse_frequencies {
                let (sin, cos) = (position * frequency).sin_cos();
                table.push(cos);
                table.push(sin);
            }
        }
        debug_assert_eq!(table.len(), positions.len() * half * 2);
    }

    fn apply_rope(&self, rows: &mut [f32], heads: usize, table: &[f32]) {
        let config = &self.config;
        let (head_dim, half) = (config.head_dim, config.rope_dims / 2);
        for (token, row) in rows.chunks_exact_mut(heads * head_dim).enumerate() {
            let angles = &table[token * half * 2..(token + 1) * half * 2];
            for head in row.chunks_exact_mut(head_dim) {
                for i in 0..half {
                    let (cos, sin) = (angles[2 * i], angles[2 * i + 1]);
                    let (a, b) = match config.rope_style {
                        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                        RopeStyle::Neox => (i, i + half),
                    };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * cos - x1 * sin;
                    head[b] = x0 * sin + x1 * cos;
                }
            }
        }
    }
}

fn check_batch(
    batch: &Batch<'_>,
    caches: &[KvCache],
    config: &ModelConfig,
) -> Result<(), EngineError> {
    let n = batch.tokens.len();
    let fail = |detail: String| Err(EngineError::Generation(format!("invalid batch: {detail}")));
    if n == 0 || batch.positions.len() != n || batch.slots.len() != n {
        return fail("lengths differ or the batch is empty".into());
    }
    let mut next: Vec<Option<usize>> = vec![None; caches.len()];
    for i in 0..n {
        let slot = batch.slots[i];
        if slot >= caches.len() {
            return fail(format!("slot {slot} out of range"));
        }
        if batch.tokens[i] as usize >= config.vocab {
            return fail(format!("token {} outside the vocabulary", batch.tokens[i]));
        }
        let expected = next[slot].unwrap_or(caches[slot].len);
        if batch.positions[i] != expected {
            return fail(format!(
                "position {} of slot {slot} does not continue its cache ({expected})",
                batch.positions[i]
            ));
        }
        if caches[slot].layers.len() != config.layers {
            return fail(format!("slot {slot} has no cache for this model"));
        }
        next[slot] = Some(expected + 1);
    }
    if batch.outputs.iter().any(|&i| i >= n) {
        return fail("output index out of range".into());
    }
    Ok(())
}

/// Runs `jobs` over the rows of `input` (each `cols` wide), quantising the
/// rows first when a job's weights read quantised activations, in the
/// largest number of terms any of the `matrices` asks for.
fn project(
    pool: &ThreadPool,
    isa: Isa,
    input: &[f32],
    cols: usize,
    quant: &mut Vec<QuantRow>,
    matrices: &[&Matrix],
    jobs: &mut [MatmulJob<'_>],
) {
    let rows = input.len() / cols;
    let quantized = jobs.iter().any(|job| job.weights.is_quantized());
    let terms = matrices
        .iter()
        .map(|matrix| matrix.activation_terms())
        .max()
        .unwrap_or(1);
    if quantized {
        kernels::quantize_rows(pool, isa, input, rows, cols, terms, quant);
    }
    let activations = Activations {
        float: input,
        quant: if quantized { quant } else { &[] },
        terms,
        rows,
        cols,
    };
    kernels::matmul(pool, isa, &activations, jobs);
}

fn resize(buffer: &mut Vec<f32>, len: usize) {
    buffer.clear();
    buffer.resize(len, 0.0);
}

fn add_assign(x: &mut [f32], y: &[f32]) {
    for (x, y) in x.iter_mut().zip(y) {
        *x += y;
    }
}

fn rms_norm_rows(input: &[f32], weight: &[f32], epsilon: f32, out: &mut [f32]) {
    let width = weight.len();
    for (row, out) in input.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        let mean_square = kernels::dot_f32(row, row) / width as f32;
        let scale = 1.0 / (mean_square + epsilon).sqrt();
        for ((out, value), weight) in out.iter_mut().zip(row).zip(weight) {
            *out = value * scale * weight;
        }
    }
}

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Causal attention of every token of the batch over its own sequence,
/// one task per (token, KV head): the query heads that share a KV head read
/// each key tile and value row once.
fn attention(
    pool: &ThreadPool,
    config: &ModelConfig,
    batch: &Batch<'_>,
    caches: &[KvCache],
    layer: usize,
    queries: &[f32],
    out: &mut [f32],
) {
    let (head_dim, heads, kv_heads) = (config.head_dim, config.heads, config.kv_heads);
    let (group, kv_dim) = (heads / kv_heads, config.kv_dim());
    let scale = 1.0 / (head_dim as f32).sqrt();
    pool.for_each_chunk_mut(out, group * head_dim, &|task, out| {
        let (token, kv_head) = (task / kv_heads, task % kv_heads);
        let queries =
            &queries[token * heads * head_dim + kv_head * group * head_dim..][..group * head_dim];
        let (keys, values) = &caches[batch.slots[token]].layers[layer];
        let visible = batch.positions[token] + 1;
        let padded = visible.div_ceil(KEY_TILE) * KEY_TILE;
        SCORES.with(|scores| {
            let mut scores = scores.borrow_mut();
            scores.clear();
            scores.resize(group * padded, 0.0);
            for tile in 0..padded / KEY_TILE {
                let tile_keys = &keys[tile * KEY_TILE * kv_dim + kv_head * head_dim * KEY_TILE..]
                    [..head_dim * KEY_TILE];
                for (query, scores) in queries
                    .chunks_exact(head_dim)
                    .zip(scores.chunks_exact_mut(padded))
                {
                    let tile_scores = score_tile(query, tile_keys);
                    for (score, value) in scores[tile * KEY_TILE..][..KEY_TILE]
                        .iter_mut()
                        .zip(tile_scores)
                    {
                        *score = value * scale;
                    }
                }
            }
            for (scores, out) in scores
                .chunks_exact_mut(padded)
                .zip(out.chunks_exact_mut(head_dim))
            {
                let scores = &mut scores[..visible];
                let max = scores.iter().fold(f32::NEG_INFINITY, |max, &s| max.max(s));
                for score in scores.iter_mut() {
                    *score = kernels::exp_f32(*score - max);
                }
                let total = kernels::sum_f32(scores);
                weighted_values(out, scores, values, kv_dim, kv_head * head_dim);
                let inverse = 1.0 / total;
                for value in out.iter_mut() {
                    *value *= inverse;
                }
            }
        });
    });
}

/// `out = Σ_p weights[p] × values[p][offset..offset + out.len()]`, rows
/// `stride` apart, accumulated in registers 32 dimensions at a time.
fn weighted_values(out: &mut [f32], weights: &[f32], values: &[f32], stride: usize, offset: usize) {
    const WIDTH: usize = 32;
    let mut start = 0;
    while start < out.len() {
        let width = (out.len() - start).min(WIDTH);
        let mut acc = [0.0f32; WIDTH];
        for (position, &weight) in weights.iter().enumerate() {
            let row = &values[position * stride + offset + start..][..width];
            // A whole 32-wide row as an array: its loop has a fixed length
            // the compiler unrolls; the tail goes through the slice.
            match <&[f32; WIDTH]>::try_from(row) {
                Ok(row) => accumulate(&mut acc, weight, row),
                Err(_) => accumulate(&mut acc, weight, row),
            }
        }
        out[start..start + width].copy_from_slice(&acc[..width]);
        start += width;
    }
}

fn accumulate<'a>(acc: &mut [f32], weight: f32, row: impl IntoIterator<Item = &'a f32>) {
    for (sum, &value) in acc.iter_mut().zip(row) {
        *sum = weight.mul_add(value, *sum);
    }
}

/// Scores of one query against a tile of 16 keys (`[dim][16]`), with four
/// partial sums so consecutive multiply-adds are independent.
fn score_tile(query: &[f32], tile_keys: &[f32]) -> [f32; KEY_TILE] {
    let mut partial = [[0.0f32; KEY_TILE]; 4];
    for (dims, keys) in query.chunks(4).zip(tile_keys.chunks(4 * KEY_TILE)) {
        for (slot, (&q, keys)) in dims.iter().zip(keys.chunks_exact(KEY_TILE)).enumerate() {
            for (sum, &key) in partial[slot].iter_mut().zip(keys) {
                *sum = q.mul_add(key, *sum);
            }
        }
    }
    std::array::from_fn(|lane| {
        partial[0][lane] + partial[1][lane] + partial[2][lane] + partial[3][lane]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_at(keys: &[f32], position: usize, kv_dim: usize, head_dim: usize) -> Vec<f32> {
        let tile = &keys[position / KEY_TILE * KEY_TILE * kv_dim..][..KEY_TILE * kv_dim];
        (0..kv_dim)
            .map(|dim| {
                let (head, within) = (dim / head_dim, dim % head_dim);
                tile[(head * head_dim + within) * KEY_TILE + position % KEY_TILE]
            })
            .collect()
    }

    #[test]
    fn key_tiles_keep_every_position_through_truncation_and_rewrites() {
        let (kv_dim, head_dim) = (6, 3);
        let key = |position: usize, round: usize| -> Vec<f32> {
            (0..kv_dim)
                .map(|dim| (round * 1000 + position * 10 + dim) as f32)
                .collect()
        };
        let mut keys = Vec::new();
        for position in 0..40 {
            store_key(&mut keys, position, &key(position, 0), head_dim);
        }
        assert_eq!(keys.len(), key_floats(40, kv_dim));
        // Rewriting from position 20 drops 21.. and keeps 0..20.
        for position in 20..25 {
            store_key(&mut keys, position, &key(position, 1), head_dim);
        }
        assert_eq!(keys.len(), key_floats(25, kv_dim));
        for position in 0..25 {
            let round = usize::from(position >= 20);
            assert_eq!(
                key_at(&keys, position, kv_dim, head_dim),
                key(position, round)
            );
        }
    }

    #[test]
    fn tiled_scores_equal_plain_dot_products() {
        let head_dim = 10;
        let query: Vec<f32> = (0..head_dim).map(|i| i as f32 * 0.5 - 2.0).collect();
        let keys: Vec<Vec<f32>> = (0..KEY_TILE)
            .map(|p| {
                (0..head_dim)
                    .map(|i| ((p * 7 + i * 3) % 11) as f32 - 5.0)
                    .collect()
            })
            .collect();
        let mut tile = vec![0.0; head_dim * KEY_TILE];
        for (p, key) in keys.iter().enumerate() {
            for (i, &value) in key.iter().enumerate() {
                tile[i * KEY_TILE + p] = value;
            }
        }
        let scores = score_tile(&query, &tile);
        for (p, key) in keys.iter().enumerate() {
            let expected: f32 = query.iter().zip(key).map(|(q, k)| q * k).sum();
            assert!((scores[p] - expected).abs() < 1e-4, "{p}");
        }
    }
}
