//! Re-quantising a GGUF model to a type with SIMD CPU kernels (Q8_0). The
//! default model ships as Q4_1, which candle runs with scalar code only;
//! Q8_0 gives the same answers in practice and runs several times faster.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Device;

use super::EngineError;

/// ggml `general.file_type` value of a mostly-Q8_0 model.
const FILE_TYPE_Q8_0: u32 = 7;

/// Where the Q8_0 copy of `source` is kept: `X.Q4_1.gguf` becomes `X.Q8_0.gguf`.
pub fn q8_0_path(source: &Path) -> PathBuf {
    let name = source
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".gguf").unwrap_or(&name);
    let base = match stem.rsplit_once('.') {
        Some((base, quant)) if quant.starts_with(['Q', 'q', 'F', 'f', 'B', 'b']) => base,
        _ => stem,
    };
    source.with_file_name(format!("{base}.Q8_0.gguf"))
}

fn needs_conversion(dtype: GgmlDType) -> bool {
    matches!(
        dtype,
        GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1
    )
}

/// Writes a copy of `source` at `target` with every Q4/Q5 tensor re-quantised
/// to Q8_0; other tensors are copied as they are. The file appears
/// atomically. `progress(done, total)` is called after each tensor.
pub fn convert_to_q8_0(
    source: &Path,
    target: &Path,
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
        let tensor = if needs_conversion(tensor.dtype()) {
            let values = tensor
                .dequantize(&Device::Cpu)
                .map_err(|err| fail(&format!("dequantize {name}"), &err))?;
            QTensor::quantize(&values, GgmlDType::Q8_0)
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
        gguf_file::Value::U32(FILE_TYPE_Q8_0),
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
