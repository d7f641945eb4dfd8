//! Writes tiny GGUF models with random weights (llama or qwen2, GQA, biases
//! for qwen2, odd block counts) and either a byte-level BPE vocabulary with
//! a few merges, ChatML markers and a ChatML template, or a SentencePiece
//! vocabulary with an instruction template of the Llama 2 / Mistral kind,
//! so both engines can be compared without a download.

use std::fs::File;
use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};

/// Shape of a tiny model.
#[derive(Clone, Copy, Debug)]
pub struct TinyShape {
    pub architecture: &'static str,
    pub layers: usize,
    pub embedding: usize,
    pub feed_forward: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub weights: GgmlDType,
    pub tied_output: bool,
    pub seed: u64,
    /// A SentencePiece vocabulary (`tokenizer.ggml.model = "llama"`)
    /// instead of byte-level BPE.
    pub sentencepiece: bool,
}

impl TinyShape {
    /// A llama-family model: no biases, GQA 4:2, tied output.
    pub fn llama() -> Self {
        Self {
            architecture: "llama",
            layers: 2,
            embedding: 96,
            feed_forward: 160,
            heads: 4,
            kv_heads: 2,
            weights: GgmlDType::Q8_0,
            tied_output: true,
            seed: 1,
            sentencepiece: false,
        }
    }

    /// A Mistral-class llama model: SentencePiece vocabulary, GQA 4:1,
    /// separate output, a template without a system role.
    pub fn mistral() -> Self {
        Self {
            architecture: "llama",
            layers: 2,
            embedding: 128,
            feed_forward: 192,
            heads: 4,
            kv_heads: 1,
            weights: GgmlDType::Q8_0,
            tied_output: false,
            seed: 9,
            sentencepiece: true,
        }
    }

    /// Tokens in this shape's vocabulary.
    pub fn vocab_size(&self) -> usize {
        if self.sentencepiece {
            sentencepiece_vocabulary().0.len()
        } else {
            vocabulary().0.len()
        }
    }

    /// A qwen2 model: q/k/v biases, GQA 4:1, separate output.
    pub fn qwen2() -> Self {
        Self {
            architecture: "qwen2",
            layers: 2,
            embedding: 128,
            feed_forward: 224,
            heads: 4,
            kv_heads: 1,
            weights: GgmlDType::Q8_0,
            tied_output: false,
            seed: 2,
            sentencepiece: false,
        }
    }
}

/// GPT-2's byte-to-character table, as byte-level BPE vocabularies spell bytes.
pub fn byte_chars() -> Vec<char> {
    let mut printable: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
    let mut chars = vec!['\0'; 256];
    for &byte in &printable {
        chars[byte as usize] = char::from_u32(byte).unwrap();
    }
    let mut next = 256;
    for byte in 0..256u32 {
        if !printable.contains(&byte) {
            chars[byte as usize] = char::from_u32(next).unwrap();
            next += 1;
            printable.push(byte);
        }
    }
    chars
}

/// Special tokens appended after the bytes and merges.
pub const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// The vocabulary: 256 byte tokens, merged tokens, then the specials.
pub fn vocabulary() -> (Vec<String>, Vec<String>, Vec<i32>) {
    let chars = byte_chars();
    let mut tokens: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
    let space = chars[b' ' as usize];
    let merges: Vec<(String, String)> = vec![
        (space.to_string(), "t".into()),
        ("h".into(), "e".into()),
        (format!("{space}t"), "he".into()),
        ("i".into(), "n".into()),
    ];
    for (left, right) in &merges {
        tokens.push(format!("{left}{right}"));
    }
    let mut types = vec![1; tokens.len()];
    for special in SPECIALS {
        tokens.push(special.to_string());
        types.push(3);
    }
    let merges = merges
        .into_iter()
        .map(|(left, right)| format!("{left} {right}"))
        .collect();
    (tokens, merges, types)
}

/// SentencePiece's word-boundary mark.
pub const SPACE_MARK: char = '\u{2581}';

/// A SentencePiece vocabulary: `<unk>`, `<s>`, `</s>`, the 256 byte pieces,
/// the mark and the letters, and merged pieces scoring above them. Returns
/// the pieces, their scores and their GGUF token types.
pub fn sentencepiece_vocabulary() -> (Vec<String>, Vec<f32>, Vec<i32>) {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    for byte in 0..=255u8 {
        tokens.push(format!("<0x{byte:02X}>"));
        types.push(6);
    }
    let mut scores = vec![0.0; tokens.len()];
    let merged = [
        "he", "_t", "_the", "in", "er", "_a", "_i", "_in", "ll", "_he", "_hell", "o_",
    ];
    for (rank, piece) in merged.iter().enumerate() {
        tokens.push(piece.replace('_', &SPACE_MARK.to_string()));
        scores.push(-(rank as f32) - 1.0);
        types.push(1);
    }
    let singles = std::iter::once(SPACE_MARK).chain('a'..='z');
    for (rank, ch) in singles.enumerate() {
        tokens.push(ch.to_string());
        scores.push(-100.0 - rank as f32);
        types.push(1);
    }
    (tokens, scores, types)
}

struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// Writes the model to `path`.
pub fn write(path: &Path, shape: TinyShape) {
    let vocab = shape.vocab_size();
    let d = shape.embedding;
    let head_dim = d / shape.heads;
    let kv_dim = head_dim * shape.kv_heads;
    let mut rng = Rng(shape.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let matrix = |rng: &mut Rng, rows: usize, cols: usize, scale: f32, dtype: GgmlDType| {
        let values: Vec<f32> = (0..rows * cols).map(|_| rng.uniform() * scale).collect();
        let tensor = Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap();
        QTensor::quantize(&tensor, dtype).unwrap()
    };
    // Rows of very different norms give the logits clear winners, as a
    // trained model's have; equal-norm random rows make near-ties everywhere.
    let vocabulary_matrix =
        |rng: &mut Rng, rows: usize, cols: usize, scale: f32, dtype: GgmlDType| {
            let mut values = Vec::with_capacity(rows * cols);
            for _ in 0..rows {
                let row_scale = scale * (0.2 + 2.8 * (rng.uniform() * 0.5 + 0.5).powi(3));
                values.extend((0..cols).map(|_| rng.uniform() * row_scale));
            }
            let tensor = Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap();
            QTensor::quantize(&tensor, dtype).unwrap()
        };
    let arch = shape.architecture;
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    tensors.push((
        "token_embd.weight".into(),
        vocabulary_matrix(&mut rng, vocab, d, 1.0, shape.weights),
    ));
    tensors.push(("output_norm.weight".into(), norm(d, 1.0)));
    if !shape.tied_output {
        tensors.push((
            "output.weight".into(),
            vocabulary_matrix(&mut rng, vocab, d, 0.3, shape.weights),
        ));
    }
    let projection = 1.0 / (d as f32).sqrt();
    for layer in 0..shape.layers {
        let name = |part: &str| format!("blk.{layer}.{part}");
        tensors.push((name("attn_norm.weight"), norm(d, 1.0 + 0.1 * layer as f32)));
        tensors.push((
            name("attn_q.weight"),
            matrix(&mut rng, d, d, projection, shape.weights),
        ));
        tensors.push((
            name("attn_k.weight"),
            matrix(&mut rng, kv_dim, d, projection, shape.weights),
        ));
        tensors.push((
            name("attn_v.weight"),
            matrix(&mut rng, kv_dim, d, projection, shape.weights),
        ));
        if arch == "qwen2" {
            tensors.push((name("attn_q.bias"), vector(&mut rng, d, 0.5)));
            tensors.push((name("attn_k.bias"), vector(&mut rng, kv_dim, 0.5)));
            tensors.push((name("attn_v.bias"), vector(&mut rng, kv_dim, 0.5)));
        }
        tensors.push((
            name("attn_output.weight"),
            matrix(&mut rng, d, d, projection, shape.weights),
        ));
        tensors.push((name("ffn_norm.weight"), norm(d, 1.0)));
        let ff = shape.feed_forward;
        tensors.push((
            name("ffn_gate.weight"),
            matrix(&mut rng, ff, d, projection, shape.weights),
        ));
        tensors.push((
            name("ffn_up.weight"),
            matrix(&mut rng, ff, d, projection, shape.weights),
        ));
        let down = 1.0 / (ff as f32).sqrt();
        tensors.push((
            name("ffn_down.weight"),
            matrix(&mut rng, d, ff, down, shape.weights),
        ));
    }
    use gguf_file::Value;
    let key = |name: &str| format!("{arch}.{name}");
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.name".into(), Value::String(format!("tiny {arch}"))),
        (key("block_count"), Value::U32(shape.layers as u32)),
        (key("context_length"), Value::U32(512)),
        (key("embedding_length"), Value::U32(d as u32)),
        (
            key("feed_forward_length"),
            Value::U32(shape.feed_forward as u32),
        ),
        (key("attention.head_count"), Value::U32(shape.heads as u32)),
        (
            key("attention.head_count_kv"),
            Value::U32(shape.kv_heads as u32),
        ),
        (key("attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
        (key("rope.dimension_count"), Value::U32(head_dim as u32)),
        (
            key("rope.freq_base"),
            Value::F32(if arch == "qwen2" {
                1_000_000.0
            } else {
                10_000.0
            }),
        ),
    ];
    metadata.extend(if shape.sentencepiece {
        sentencepiece_metadata()
    } else {
        byte_level_metadata()
    });
    let metadata_refs: Vec<(&str, &Value)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = File::create(path).unwrap();
    gguf_file::write(&mut file, &metadata_refs, &tensor_refs).unwrap();
}

fn strings(values: &[String]) -> gguf_file::Value {
    gguf_file::Value::Array(
        values
            .iter()
            .map(|v| gguf_file::Value::String(v.clone()))
            .collect(),
    )
}

fn byte_level_metadata() -> Vec<(String, gguf_file::Value)> {
    use gguf_file::Value;
    let (tokens, merges, types) = vocabulary();
    let vocab = tokens.len();
    let template = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("qwen2".into())),
        ("tokenizer.ggml.tokens".into(), strings(&tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.iter().map(|&t| Value::I32(t)).collect()),
        ),
        ("tokenizer.ggml.merges".into(), strings(&merges)),
        (
            "tokenizer.ggml.bos_token_id".into(),
            Value::U32((vocab - 2) as u32),
        ),
        (
            "tokenizer.ggml.eos_token_id".into(),
            Value::U32((vocab - 1) as u32),
        ),
        (
            "tokenizer.ggml.padding_token_id".into(),
            Value::U32((vocab - 3) as u32),
        ),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        (
            "tokenizer.chat_template".into(),
            Value::String(template.into()),
        ),
    ]
}

fn sentencepiece_metadata() -> Vec<(String, gguf_file::Value)> {
    use gguf_file::Value;
    let (tokens, scores, types) = sentencepiece_vocabulary();
    // Strict user/assistant turns, no system role, as Mistral's and Llama
    // 2's instruction templates.
    let template = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% else %}{{ raise_exception('Only user and assistant roles are supported') }}{% endif %}{% endfor %}";
    vec![
        ("tokenizer.ggml.model".into(), Value::String("llama".into())),
        ("tokenizer.ggml.tokens".into(), strings(&tokens)),
        (
            "tokenizer.ggml.scores".into(),
            Value::Array(scores.iter().map(|&s| Value::F32(s)).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.iter().map(|&t| Value::I32(t)).collect()),
        ),
        ("tokenizer.ggml.unknown_token_id".into(), Value::U32(0)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        (
            "tokenizer.chat_template".into(),
            Value::String(template.into()),
        ),
    ]
}

fn norm(len: usize, value: f32) -> QTensor {
    let tensor = Tensor::from_vec(vec![value; len], len, &Device::Cpu).unwrap();
    QTensor::quantize(&tensor, GgmlDType::F32).unwrap()
}

fn vector(rng: &mut Rng, len: usize, scale: f32) -> QTensor {
    let values: Vec<f32> = (0..len).map(|_| rng.uniform() * scale).collect();
    let tensor = Tensor::from_vec(values, len, &Device::Cpu).unwrap();
    QTensor::quantize(&tensor, GgmlDType::F32).unwrap()
}
