//! Reading a GGUF file's header before any loader touches it: magic, version,
//! metadata and tensor table, every length checked against the file size, so
//! a truncated or damaged file and an unsupported architecture get a clear
//! error instead of a panic or a huge allocation deep inside a loader.
//! Also builds the model's own tokenizer from the metadata.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};

use super::EngineError;

const GGUF_MAGIC: [u8; 4] = *b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// Architectures the mistral.rs GGUF loader supports (0.8.1).
pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "llama",
    "mistral3",
    "phi2",
    "phi3",
    "starcoder2",
    "qwen2",
    "qwen3",
    "qwen3moe",
];

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    /// Any integer type, widened.
    Int(i128),
    /// f32 or f64.
    Float(f64),
    /// bool.
    Bool(bool),
    /// UTF-8 string.
    Str(String),
    /// Array of values.
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The value as a string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(text) => Some(text),
            _ => None,
        }
    }
    /// The value as an unsigned integer, if it is one.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Self::Int(value) => u64::try_from(*value).ok(),
            _ => None,
        }
    }
}

/// One tensor's entry in the table.
#[derive(Clone, Debug)]
pub struct TensorEntry {
    /// Tensor name.
    pub name: String,
    /// ggml type id.
    pub ggml_type: u32,
    /// Number of elements.
    pub elements: u64,
    /// Dimensions, fastest-varying first (ggml's `ne`): `[cols, rows]` for a matrix.
    pub dims: Vec<u64>,
    /// Offset in the data section.
    pub offset: u64,
}

/// What the header says.
#[derive(Clone, Debug)]
pub struct GgufHeader {
    /// Format version (2 or 3).
    pub version: u32,
    /// All metadata key/values.
    pub metadata: HashMap<String, MetaValue>,
    /// The tensor table.
    pub tensors: Vec<TensorEntry>,
    /// File offset of the data section (tensor offsets are relative to it).
    pub data_start: u64,
}

impl GgufHeader {
    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.metadata
            .get("general.architecture")
            .and_then(MetaValue::as_str)
    }

    /// The model's trained context length, if stated.
    pub fn context_length(&self) -> Option<u64> {
        let arch = self.architecture()?;
        self.metadata
            .get(&format!("{arch}.context_length"))
            .and_then(MetaValue::as_u64)
    }

    /// Name of the quant type most tensors use, e.g. `Q4_1`.
    pub fn dominant_type(&self) -> Option<&'static str> {
        let mut counts: HashMap<u32, u64> = HashMap::new();
        for tensor in &self.tensors {
            *counts.entry(tensor.ggml_type).or_default() += tensor.elements;
        }
        counts
            .into_iter()
            .max_by_key(|&(_, elements)| elements)
            .and_then(|(ggml_type, _)| ggml_type_layout(ggml_type).map(|layout| layout.0))
    }
}

/// (name, elements per block, bytes per block) of ggml types.
pub fn ggml_type_layout(ggml_type: u32) -> Option<(&'static str, u64, u64)> {
    Some(match ggml_type {
        0 => ("F32", 1, 4),
        1 => ("F16", 1, 2),
        2 => ("Q4_0", 32, 18),
        3 => ("Q4_1", 32, 20),
        6 => ("Q5_0", 32, 22),
        7 => ("Q5_1", 32, 24),
        8 => ("Q8_0", 32, 34),
        9 => ("Q8_1", 32, 40),
        10 => ("Q2K", 256, 84),
        11 => ("Q3K", 256, 110),
        12 => ("Q4K", 256, 144),
        13 => ("Q5K", 256, 176),
        14 => ("Q6K", 256, 210),
        15 => ("Q8K", 256, 292),
        30 => ("BF16", 1, 2),
        _ => return None,
    })
}

/// Reads and checks the header of `path`.
pub fn read_header(path: &Path) -> Result<GgufHeader, EngineError> {
    let file = File::open(path).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => EngineError::ModelMissing {
            path: path.to_path_buf(),
        },
        _ => EngineError::ModelUnreadable {
            path: path.to_path_buf(),
            detail: err.to_string(),
        },
    })?;
    let file_len = file
        .metadata()
        .map_err(|err| EngineError::ModelUnreadable {
            path: path.to_path_buf(),
            detail: err.to_string(),
        })?
        .len();
    let mut reader = HeaderReader {
        inner: BufReader::new(file),
        file_len,
        path: path.to_path_buf(),
    };
    let mut header = reader.header()?;
    let data_start = reader.data_start(&header)?;
    header.data_start = data_start;
    let mut end = 0;
    for tensor in &header.tensors {
        let Some((_, block_elements, block_bytes)) = ggml_type_layout(tensor.ggml_type) else {
            return Err(reader.corrupt(format!(
                "tensor {} has unsupported ggml type {}",
                tensor.name, tensor.ggml_type
            )));
        };
        let bytes = tensor
            .elements
            .div_ceil(block_elements)
            .saturating_mul(block_bytes);
        end = end.max(
            data_start
                .saturating_add(tensor.offset)
                .saturating_add(bytes),
        );
    }
    if end > file_len {
        return Err(reader.corrupt(format!(
            "file is truncated: tensors need {end} bytes, the file has {file_len}"
        )));
    }
    Ok(header)
}

/// Checks that the header describes a model the engine can load.
pub fn check_supported(path: &Path, header: &GgufHeader) -> Result<(), EngineError> {
    let architecture = header
        .architecture()
        .ok_or_else(|| EngineError::ModelCorrupt {
            path: path.to_path_buf(),
            detail: "metadata has no general.architecture".into(),
        })?;
    if !SUPPORTED_ARCHITECTURES.contains(&architecture) {
        return Err(EngineError::UnsupportedArchitecture {
            path: path.to_path_buf(),
            architecture: architecture.to_string(),
        });
    }
    Ok(())
}

struct HeaderReader {
    inner: BufReader<File>,
    file_len: u64,
    path: PathBuf,
}

impl HeaderReader {
    fn corrupt(&self, detail: String) -> EngineError {
        EngineError::ModelCorrupt {
            path: self.path.clone(),
            detail,
        }
    }

    fn position(&mut self) -> u64 {
        self.inner.stream_position().unwrap_or(self.file_len)
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], EngineError> {
        let mut buffer = [0u8; N];
        self.inner
            .read_exact(&mut buffer)
            .map_err(|_| self.corrupt("unexpected end of file in the header".into()))?;
        Ok(buffer)
    }

    fn u32(&mut self) -> Result<u32, EngineError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> Result<u64, EngineError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    /// A length that must fit in what is left of the file.
    fn length(&mut self, unit_bytes: u64, what: &str) -> Result<u64, EngineError> {
        let length = self.u64()?;
        let remaining = self.file_len.saturating_sub(self.position());
        if length.saturating_mul(unit_bytes) > remaining {
            return Err(self.corrupt(format!(
                "{what} length {length} exceeds the rest of the file ({remaining} bytes)"
            )));
        }
        Ok(length)
    }

    fn string(&mut self) -> Result<String, EngineError> {
        let length = self.length(1, "string")?;
        let mut buffer = vec![0u8; length as usize];
        self.inner
            .read_exact(&mut buffer)
            .map_err(|_| self.corrupt("unexpected end of file in a string".into()))?;
        String::from_utf8(buffer).map_err(|_| self.corrupt("a metadata string is not UTF-8".into()))
    }

    fn value(&mut self, value_type: u32, depth: u32) -> Result<MetaValue, EngineError> {
        Ok(match value_type {
            0 => MetaValue::Int(u8::from_le_bytes(self.bytes()?).into()),
            1 => MetaValue::Int(i8::from_le_bytes(self.bytes()?).into()),
            2 => MetaValue::Int(u16::from_le_bytes(self.bytes()?).into()),
            3 => MetaValue::Int(i16::from_le_bytes(self.bytes()?).into()),
            4 => MetaValue::Int(self.u32()?.into()),
            5 => MetaValue::Int(i32::from_le_bytes(self.bytes()?).into()),
            6 => MetaValue::Float(f32::from_le_bytes(self.bytes()?).into()),
            7 => {
                let [byte] = self.bytes()?;
                MetaValue::Bool(byte != 0)
            }
            8 => MetaValue::Str(self.string()?),
            9 => {
                if depth > 2 {
                    return Err(self.corrupt("metadata arrays nest too deeply".into()));
                }
                let element_type = self.u32()?;
                let count = self.length(1, "array")?;
                let mut values = Vec::with_capacity(count.min(1 << 20) as usize);
                for _ in 0..count {
                    values.push(self.value(element_type, depth + 1)?);
                }
                MetaValue::Array(values)
            }
            10 => MetaValue::Int(self.u64()?.into()),
            11 => MetaValue::Int(i64::from_le_bytes(self.bytes()?).into()),
            12 => MetaValue::Float(f64::from_le_bytes(self.bytes()?)),
            other => return Err(self.corrupt(format!("unknown metadata value type {other}"))),
        })
    }

    fn header(&mut self) -> Result<GgufHeader, EngineError> {
        if self.bytes::<4>().ok() != Some(GGUF_MAGIC) {
            return Err(self.corrupt("not a GGUF file (bad magic number)".into()));
        }
        let version = self.u32()?;
        if !(2..=3).contains(&version) {
            return Err(self.corrupt(format!("unsupported GGUF version {version}")));
        }
        // Each tensor entry and each key/value take at least 8 bytes.
        let tensor_count = self.length(8, "tensor table")?;
        let kv_count = self.length(8, "metadata table")?;
        let mut metadata = HashMap::new();
        for _ in 0..kv_count {
            let key = self.string()?;
            let value_type = self.u32()?;
            let value = self.value(value_type, 0)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::with_capacity(tensor_count.min(1 << 16) as usize);
        for _ in 0..tensor_count {
            let name = self.string()?;
            let dimensions = self.u32()?;
            if dimensions > 8 {
                return Err(self.corrupt(format!("tensor {name} has {dimensions} dimensions")));
            }
            let mut elements: u64 = 1;
            let mut dims = Vec::with_capacity(dimensions as usize);
            for _ in 0..dimensions {
                let dim = self.u64()?;
                elements = elements.saturating_mul(dim);
                dims.push(dim);
            }
            let ggml_type = self.u32()?;
            let offset = self.u64()?;
            tensors.push(TensorEntry {
                name,
                ggml_type,
                elements,
                dims,
                offset,
            });
        }
        Ok(GgufHeader {
            version,
            metadata,
            tensors,
            data_start: 0,
        })
    }

    fn data_start(&mut self, header: &GgufHeader) -> Result<u64, EngineError> {
        let alignment = header
            .metadata
            .get("general.alignment")
            .and_then(MetaValue::as_u64)
            .filter(|&alignment| alignment > 0)
            .unwrap_or(DEFAULT_ALIGNMENT);
        let position = self.position();
        Ok(position.div_ceil(alignment) * alignment)
    }
}

const SINGLE_DIGIT_SPLIT: &str = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const LLAMA3_SPLIT: &str = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/// The text of every token of the vocabulary that is not a normal one
/// (control, user-defined, unused, byte), or of BOS and EOS when the file
/// gives no token types: what a tokenizer matches whole in raw text, so
/// customer text must never contain it verbatim.
pub fn special_token_strings(header: &GgufHeader) -> Vec<String> {
    let tokens: Vec<&str> = match header.metadata.get("tokenizer.ggml.tokens") {
        Some(MetaValue::Array(values)) => values.iter().filter_map(MetaValue::as_str).collect(),
        _ => return Vec::new(),
    };
    let types = token_types(header).unwrap_or_default();
    if types.len() == tokens.len() {
        tokens
            .iter()
            .zip(&types)
            .filter(|(_, kind)| **kind != TOKEN_NORMAL)
            .map(|(token, _)| token.to_string())
            .collect()
    } else {
        ["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"]
            .iter()
            .filter_map(|key| header.metadata.get(*key)?.as_u64())
            .filter_map(|id| tokens.get(id as usize))
            .map(|token| token.to_string())
            .collect()
    }
}

/// The model's own tokenizer, built from GGUF metadata (gpt2-style BPE).
/// Returns `None` for tokenizer kinds this build cannot reconstruct.
pub fn tokenizer_from_header(header: &GgufHeader) -> Option<tokenizers::Tokenizer> {
    use tokenizers::models::bpe::{Vocab, BPE};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

    let kind = header.metadata.get("tokenizer.ggml.model")?.as_str()?;
    match kind {
        "gpt2" => {}
        "llama" => return sentencepiece_tokenizer(header),
        _ => return None,
    }
    let strings = |key: &str| string_array(header, key);
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges: Vec<(String, String)> = strings("tokenizer.ggml.merges")?
        .into_iter()
        .filter_map(|merge| {
            merge
                .split_once(' ')
                .map(|(left, right)| (left.to_string(), right.to_string()))
        })
        .collect();
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, token)| (token.clone(), id as u32))
        .collect();
    let llama3 = matches!(
        header
            .metadata
            .get("tokenizer.ggml.pre")
            .and_then(MetaValue::as_str),
        Some("llama-bpe" | "llama3")
    );
    // Llama 3 takes a word that is itself in the vocabulary whole, before
    // any merge (as its own tokenizer and llama.cpp do).
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(llama3)
        .build()
        .ok()?;
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    // The pre-tokenisation regex of the vocabulary's family: Llama 3 groups
    // up to three digits; the others split digits one by one (the regex
    // mistral.rs uses for every gpt2 GGUF vocabulary).
    let pattern = if llama3 {
        LLAMA3_SPLIT
    } else {
        SINGLE_DIGIT_SPLIT
    };
    let split = Split::new(
        SplitPattern::Regex(pattern.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .ok()?;
    tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)),
    ])));
    tokenizer.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::new(
        false, false, false,
    )));
    // Every token that is not a normal one (control, user-defined, unused)
    // is matched whole in the text, as mistral.rs and llama.cpp do, so chat
    // markers such as <|im_start|> become one token.
    let special: Vec<AddedToken> = special_token_strings(header)
        .into_iter()
        .map(|token| AddedToken::from(token, true))
        .collect();
    tokenizer.add_special_tokens(&special);
    Some(tokenizer)
}

fn string_array(header: &GgufHeader, key: &str) -> Option<Vec<String>> {
    match header.metadata.get(key)? {
        MetaValue::Array(values) => values
            .iter()
            .map(|value| value.as_str().map(str::to_string))
            .collect(),
        _ => None,
    }
}

/// GGUF token types (`tokenizer.ggml.token_type`).
const TOKEN_NORMAL: i128 = 1;
const TOKEN_UNKNOWN: i128 = 2;
const TOKEN_CONTROL: i128 = 3;
const TOKEN_USER_DEFINED: i128 = 4;

/// SentencePiece's word-boundary mark, which stands for a space.
const SPACE_MARK: &str = "\u{2581}";

/// A SentencePiece BPE vocabulary (`tokenizer.ggml.model = "llama"`: Llama 2,
/// Mistral, TinyLlama): pieces are merged pairwise, the pair whose merged
/// piece scores highest first, as llama.cpp tokenises these files. The
/// score order becomes a BPE merge list; characters outside the vocabulary
/// fall back to the `<0xXX>` byte pieces.
fn sentencepiece_tokenizer(header: &GgufHeader) -> Option<tokenizers::Tokenizer> {
    use tokenizers::decoders::byte_fallback::ByteFallback;
    use tokenizers::decoders::fuse::Fuse;
    use tokenizers::decoders::sequence::Sequence as DecoderSequence;
    use tokenizers::decoders::strip::Strip;
    use tokenizers::models::bpe::{Vocab, BPE};
    use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
    use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper};

    let tokens = string_array(header, "tokenizer.ggml.tokens")?;
    let scores: Vec<f64> = match header.metadata.get("tokenizer.ggml.scores") {
        Some(MetaValue::Array(values)) => values
            .iter()
            .map(|value| match value {
                MetaValue::Float(score) => Some(*score),
                MetaValue::Int(score) => Some(*score as f64),
                _ => None,
            })
            .collect::<Option<_>>()?,
        _ => return None,
    };
    let types = token_types(header).unwrap_or_else(|| vec![TOKEN_NORMAL; tokens.len()]);
    if scores.len() != tokens.len() || types.len() != tokens.len() {
        return None;
    }
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, token)| (token.clone(), id as u32))
        .collect();
    let normal = |id: u32| types[id as usize] == TOKEN_NORMAL;
    // Every split of a normal piece into two normal pieces is a merge,
    // ranked by the merged piece's score (ties by id, as the file orders).
    let mut ranked: Vec<(f64, u32, u32, u32)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        let id = id as u32;
        if !normal(id) {
            continue;
        }
        for (cut, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(cut);
            if let (Some(&l), Some(&r)) = (vocab.get(left), vocab.get(right)) {
                if normal(l) && normal(r) {
                    ranked.push((scores[id as usize], id, l, r));
                }
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let merges: Vec<(String, String)> = ranked
        .into_iter()
        .map(|(_, _, l, r)| (tokens[l as usize].clone(), tokens[r as usize].clone()))
        .collect();
    let unknown = header
        .metadata
        .get("tokenizer.ggml.unknown_token_id")
        .and_then(MetaValue::as_u64)
        .map(|id| id as usize)
        .or_else(|| types.iter().position(|&kind| kind == TOKEN_UNKNOWN))
        .and_then(|id| tokens.get(id).cloned());
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unknown) = unknown {
        builder = builder.unk_token(unknown);
    }
    let mut tokenizer = tokenizers::Tokenizer::new(builder.build().ok()?);
    // Text between special tokens gets a leading space mark when the file
    // asks for one (the default), and every space becomes the mark.
    let space_prefix = !matches!(
        header.metadata.get("tokenizer.ggml.add_space_prefix"),
        Some(MetaValue::Bool(false))
    );
    let mut normalizers = Vec::new();
    if space_prefix {
        normalizers.push(NormalizerWrapper::Prepend(Prepend::new(SPACE_MARK.into())));
    }
    normalizers.push(NormalizerWrapper::Replace(
        Replace::new(" ", SPACE_MARK).ok()?,
    ));
    tokenizer.with_normalizer(Some(NormalizerSequence::new(normalizers)));
    let mut decoders = vec![
        DecoderWrapper::Replace(Replace::new(SPACE_MARK, " ").ok()?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if space_prefix {
        decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    // Control, user-defined and unknown pieces are matched whole in the
    // text (llama.cpp's special-token pass); byte pieces are not.
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, kind)| matches!(**kind, TOKEN_UNKNOWN | TOKEN_CONTROL | TOKEN_USER_DEFINED))
        .map(|(token, _)| AddedToken::from(token.clone(), true))
        .collect();
    tokenizer.add_special_tokens(&special);
    Some(tokenizer)
}

fn token_types(header: &GgufHeader) -> Option<Vec<i128>> {
    match header.metadata.get("tokenizer.ggml.token_type")? {
        MetaValue::Array(values) => values
            .iter()
            .map(|value| match value {
                MetaValue::Int(kind) => Some(*kind),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SentencePiece header: `<unk>`, `<s>`, `</s>`, the 256 byte pieces,
    /// then `pieces` with their scores.
    fn sentencepiece_header(pieces: &[(&str, f64)], space_prefix: bool) -> GgufHeader {
        let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
        let mut types = vec![TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_CONTROL];
        let mut scores = vec![0.0, 0.0, 0.0];
        for byte in 0..=255u8 {
            tokens.push(format!("<0x{byte:02X}>"));
            types.push(6);
            scores.push(0.0);
        }
        for (piece, score) in pieces {
            tokens.push(piece.replace(' ', SPACE_MARK));
            types.push(TOKEN_NORMAL);
            scores.push(*score);
        }
        let array = |values: Vec<MetaValue>| MetaValue::Array(values);
        let metadata = HashMap::from([
            (
                "tokenizer.ggml.model".to_string(),
                MetaValue::Str("llama".into()),
            ),
            (
                "tokenizer.ggml.tokens".into(),
                array(tokens.into_iter().map(MetaValue::Str).collect()),
            ),
            (
                "tokenizer.ggml.token_type".into(),
                array(types.into_iter().map(MetaValue::Int).collect()),
            ),
            (
                "tokenizer.ggml.scores".into(),
                array(scores.into_iter().map(MetaValue::Float).collect()),
            ),
            (
                "tokenizer.ggml.add_space_prefix".into(),
                MetaValue::Bool(space_prefix),
            ),
        ]);
        GgufHeader {
            version: 3,
            metadata,
            tensors: Vec::new(),
            data_start: 0,
        }
    }

    fn pieces_of(tokenizer: &tokenizers::Tokenizer, text: &str) -> Vec<String> {
        tokenizer
            .encode(text, false)
            .unwrap()
            .get_tokens()
            .iter()
            .map(|token| token.replace(SPACE_MARK, " "))
            .collect()
    }

    #[test]
    fn sentencepiece_merges_the_best_scoring_pair_first_not_the_longest_match() {
        let header = sentencepiece_header(
            &[
                ("a", -10.0),
                ("b", -11.0),
                ("c", -12.0),
                ("ab", -5.0),
                ("bc", -1.0),
            ],
            false,
        );
        let tokenizer = tokenizer_from_header(&header).unwrap();
        // "bc" outscores "ab", so it is merged first, although a left-to-right
        // longest match would take "ab".
        assert_eq!(pieces_of(&tokenizer, "abc"), ["a", "bc"]);
        assert_eq!(pieces_of(&tokenizer, "abab"), ["ab", "ab"]);
    }

    #[test]
    fn sentencepiece_marks_spaces_falls_back_to_bytes_and_matches_control_pieces() {
        let words = [
            (" ", -100.0),
            ("h", -101.0),
            ("e", -102.0),
            ("l", -103.0),
            ("o", -104.0),
            ("w", -105.0),
            ("r", -106.0),
            ("d", -107.0),
            ("ll", -1.0),
            (" h", -2.0),
            (" he", -3.0),
            (" hell", -4.0),
            (" hello", -5.0),
            ("or", -6.0),
            (" w", -7.0),
            (" wor", -8.0),
            ("ld", -9.0),
            (" world", -10.0),
        ];
        let header = sentencepiece_header(&words, true);
        let tokenizer = tokenizer_from_header(&header).unwrap();
        assert_eq!(pieces_of(&tokenizer, "hello world"), [" hello", " world"]);
        // A character outside the vocabulary becomes its UTF-8 bytes.
        assert_eq!(
            pieces_of(&tokenizer, "hello 你"),
            [" hello", " ", "<0xE4>", "<0xBD>", "<0xA0>"]
        );
        assert_eq!(pieces_of(&tokenizer, "\n"), [" ", "<0x0A>"]);
        // Control pieces are matched whole; the text after one starts a
        // new word.
        let ids = tokenizer
            .encode("<s>hello</s>", false)
            .unwrap()
            .get_ids()
            .to_vec();
        let hello = tokenizer
            .token_to_id(&format!("{SPACE_MARK}hello"))
            .unwrap();
        assert_eq!(ids, [1, hello, 2]);
        // Decoding restores the text: marks become spaces, bytes characters,
        // and the added leading space goes.
        let ids = tokenizer
            .encode("hello world 你", false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(tokenizer.decode(&ids, true).unwrap(), "hello world 你");
    }

    #[test]
    fn a_vocabulary_without_scores_is_not_read_as_sentencepiece() {
        let mut header = sentencepiece_header(&[("a", -1.0)], true);
        header.metadata.remove("tokenizer.ggml.scores");
        assert!(tokenizer_from_header(&header).is_none());
    }

    /// A minimal valid GGUF file with one F32 tensor.
    fn tiny_gguf(architecture: &str) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"GGUF");
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&1u64.to_le_bytes()); // tensors
        bytes.extend_from_slice(&1u64.to_le_bytes()); // kv
        let key = "general.architecture";
        bytes.extend_from_slice(&(key.len() as u64).to_le_bytes());
        bytes.extend_from_slice(key.as_bytes());
        bytes.extend_from_slice(&8u32.to_le_bytes());
        bytes.extend_from_slice(&(architecture.len() as u64).to_le_bytes());
        bytes.extend_from_slice(architecture.as_bytes());
        let name = "weight";
        bytes.extend_from_slice(&(name.len() as u64).to_le_bytes());
        bytes.extend_from_slice(name.as_bytes());
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&4u64.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        while bytes.len() % 32 != 0 {
            bytes.push(0);
        }
        bytes.extend_from_slice(&[0u8; 16]);
        bytes
    }

    fn write(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.gguf");
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    #[test]
    fn reads_a_valid_header() {
        let (_dir, path) = write(&tiny_gguf("llama"));
        let header = read_header(&path).unwrap();
        assert_eq!(header.architecture(), Some("llama"));
        assert_eq!(header.tensors.len(), 1);
        check_supported(&path, &header).unwrap();
    }

    #[test]
    fn unsupported_architecture_is_named() {
        let (_dir, path) = write(&tiny_gguf("gemma"));
        let header = read_header(&path).unwrap();
        let err = check_supported(&path, &header).unwrap_err();
        assert!(err.to_string().contains("gemma"), "{err}");
    }

    #[test]
    fn truncation_and_garbage_are_corrupt_not_panics() {
        let bytes = tiny_gguf("llama");
        let (_dir, path) = write(&bytes[..bytes.len() - 8]);
        assert!(matches!(
            read_header(&path),
            Err(EngineError::ModelCorrupt { .. })
        ));
        let (_dir, path) = write(b"this is not a model at all");
        assert!(matches!(
            read_header(&path),
            Err(EngineError::ModelCorrupt { .. })
        ));
        let mut huge = tiny_gguf("llama");
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let (_dir, path) = write(&huge);
        assert!(matches!(
            read_header(&path),
            Err(EngineError::ModelCorrupt { .. })
        ));
        for cut in [0, 3, 7, 20, 40, 60] {
            let (_dir, path) = write(&bytes[..cut]);
            assert!(read_header(&path).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn missing_file_is_reported_as_missing() {
        let err = read_header(Path::new("/nonexistent/model.gguf")).unwrap_err();
        assert!(matches!(err, EngineError::ModelMissing { .. }));
    }
}
