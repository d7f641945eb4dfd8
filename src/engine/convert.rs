//! Re-quantising a GGUF model to a type with SIMD CPU kernels (Q8_0, or
//! Q4_0 for a smaller file). The default model ships as Q4_1, which candle
//! runs with scalar code only; Q8_0 gives the same answers in practice and
//! runs several times faster.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Device;

use super::EngineError;

/// A quantisation the converter writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// 8-bit blocks.
    Q8_0,
    /// 4-bit blocks.
    Q4_0,
}

impl Target {
    fn dtype(self) -> GgmlDType {
        match self {
            Self::Q8_0 => GgmlDType::Q8_0,
            Self::Q4_0 => GgmlDType::Q4_0,
        }
    }

    /// ggml `general.file_type` of a model mostly of this type.
    fn file_type(self) -> u32 {
        match self {
            Self::Q8_0 => 7,
            Self::Q4_0 => 2,
        }
    }

    /// The name used in file names.
    pub fn name(self) -> &'static str {
        match self {
            Self::Q8_0 => "Q8_0",
            Self::Q4_0 => "Q4_0",
        }
    }
}

/// Where the Q8_0 copy of `source` is kept: `X.Q4_1.gguf` becomes `X.Q8_0.gguf`.
pub fn q8_0_path(source: &Path) -> PathBuf {
    quant_path(source, Target::Q8_0)
}

/// Where the `target` copy of `source` is kept: `X.Q4_1.gguf` becomes `X.<target>.gguf`.
pub fn quant_path(source: &Path, target: Target) -> PathBuf {
    let name = source
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".gguf").unwrap_or(&name);
    let base = match stem.rsplit_once('.') {
        Some((base, quant)) if quant.starts_with(['Q', 'q', 'F', 'f', 'B', 'b']) => base,
        _ => stem,
    };
    source.with_file_name(format!("{base}.{}.gguf", target.name()))
}

fn needs_conversion(dtype: GgmlDType, target: Target) -> bool {
    match target {
        Target::Q8_0 => matches!(
            dtype,
            GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1
        ),
        Target::Q4_0 => matches!(
            dtype,
            GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 | GgmlDType::Q8_0
        ),
    }
}

/// Writes a copy of `source` at `target` with every Q4/Q5 tensor re-quantised
/// to Q8_0; other tensors are copied as they are. The file appears
/// atomically. `progress(done, total)` is called after each tensor.
pub fn convert_to_q8_0(
    source: &Path,
    target: &Path,
    progress: impl FnMut(usize, usize),
) -> Result<(), EngineError> {
    convert(source, target, Target::Q8_0, progress)
}

/// Writes a copy of `source` at `target` with every tensor of another block
/// quantisation re-quantised to `to`; float tensors are copied as they are.
pub fn convert(
    source: &Path,
    target: &Path,
    to: Target,
    mut progress: impl FnMut(usize, usize),
) -> Result<(), EngineError> {
    let header = super::gguf::read_header(source)?;
    super::gguf::check_supported(source, &header)?;
    let fail = |what: &str, err: &dyn std::fmt::Display| {
        EngineError::Convert(format!("{what} ({}): {err}", source.display()))
    };
    let file = File::open(source).map_err(|err| fail("open", &err))?;
    let mut reader = BufReader::new(file);
    let content = gguf_file::Content::read(&mut reader).map_err(|err| fail("read header", &err))?;
    let mut names: Vec<String> = content.tensor_infos.keys().cloned().collect();
    names.sort();
    let total = names.len();
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(total);
    for (done, name) in names.iter().enumerate() {
        let tensor = content
            .tensor(&mut reader, name, &Device::Cpu)
            .map_err(|err| fail(&format!("read tensor {name}"), &err))?;
        let tensor = if needs_conversion(tensor.dtype(), to) {
            let values = tensor
                .dequantize(&Device::Cpu)
                .map_err(|err| fail(&format!("dequantize {name}"), &err))?;
            QTensor::quantize(&values, to.dtype())
                .map_err(|err| fail(&format!("quantize {name}"), &err))?
        } else {
            tensor
        };
        tensors.push((name.clone(), tensor));
        progress(done + 1, total);
    }
    let mut metadata = content.metadata.clone();
    metadata.insert(
        "general.file_type".to_string(),
        gguf_file::Value::U32(to.file_type()),
    );
    let metadata_refs: Vec<(&str, &gguf_file::Value)> = metadata
        .iter()
        .map(|(key, value)| (key.as_str(), value))
        .collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors
        .iter()
        .map(|(name, tensor)| (name.as_str(), tensor))
        .collect();
    // A name of its own per writer: concurrent conversions never share a file.
    let partial = target.with_extension(format!("gguf.{}.partial", std::process::id()));
    let output = File::create(&partial).map_err(|err| fail("create output", &err))?;
    let mut writer = BufWriter::new(output);
    gguf_file::write(&mut writer, &metadata_refs, &tensor_refs)
        .map_err(|err| fail("write output", &err))?;
    let output = writer
        .into_inner()
        .map_err(|err| fail("flush output", &err.error().to_string()))?;
    output.sync_all().map_err(|err| fail("sync output", &err))?;
    std::fs::rename(&partial, target).map_err(|err| fail("rename output", &err))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;

    /// Writes a small llama-architecture GGUF with one Q4_1 and one F32 tensor.
    fn write_q4_1_model(path: &Path) -> Vec<f32> {
        let values: Vec<f32> = (0..64 * 32)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let weights = Tensor::from_vec(values.clone(), (64, 32), &Device::Cpu).unwrap();
        let q4 = QTensor::quantize(&weights, GgmlDType::Q4_1).unwrap();
        let norm = Tensor::from_vec(vec![1.0f32; 32], 32, &Device::Cpu).unwrap();
        let norm = QTensor::quantize(&norm, GgmlDType::F32).unwrap();
        let architecture = gguf_file::Value::String("llama".into());
        let mut file = File::create(path).unwrap();
        gguf_file::write(
            &mut file,
            &[("general.architecture", &architecture)],
            &[("blk.0.attn_q.weight", &q4), ("output_norm.weight", &norm)],
        )
        .unwrap();
        values
    }

    #[test]
    fn q4_1_tensors_become_q8_0_with_the_same_values() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("tiny.Q4_1.gguf");
        let original = write_q4_1_model(&source);
        let target = q8_0_path(&source);
        let mut calls = 0;
        convert_to_q8_0(&source, &target, |_, total| {
            calls += 1;
            assert_eq!(total, 2);
        })
        .unwrap();
        assert_eq!(calls, 2);

        let read = |path: &Path, name: &str| {
            let mut reader = BufReader::new(File::open(path).unwrap());
            let content = gguf_file::Content::read(&mut reader).unwrap();
            content.tensor(&mut reader, name, &Device::Cpu).unwrap()
        };
        let before = read(&source, "blk.0.attn_q.weight");
        let after = read(&target, "blk.0.attn_q.weight");
        assert_eq!(before.dtype(), GgmlDType::Q4_1);
        assert_eq!(after.dtype(), GgmlDType::Q8_0);
        assert_eq!(read(&target, "output_norm.weight").dtype(), GgmlDType::F32);
        let flat = |tensor: &QTensor| {
            tensor
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let (before, after) = (flat(&before), flat(&after));
        // Q8_0 keeps what Q4_1 held: far closer to it than Q4_1 is to the original.
        let max_diff = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max)
        };
        let q4_error = max_diff(&original, &before);
        let conversion_error = max_diff(&before, &after);
        assert!(
            conversion_error < q4_error / 4.0,
            "{conversion_error} vs {q4_error}"
        );
        let header = crate::engine::gguf::read_header(&target).unwrap();
        assert_eq!(header.dominant_type(), Some("Q8_0"));
        assert_eq!(header.architecture(), Some("llama"));
    }

    #[test]
    fn converted_file_is_named_after_the_source() {
        assert_eq!(
            q8_0_path(Path::new("models/SmolLM2-135M-Instruct.Q4_1.gguf")),
            PathBuf::from("models/SmolLM2-135M-Instruct.Q8_0.gguf")
        );
        assert_eq!(
            q8_0_path(Path::new("m/plain.gguf")),
            PathBuf::from("m/plain.Q8_0.gguf")
        );
    }
}
