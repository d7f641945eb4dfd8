//! Weights of a GGUF file as the CPU engine holds them. Q8_0 and Q4_0
//! matrices are read in place from the memory-mapped file; F32, F16 and
//! BF16 become f32; every other type (Q4_1, Q5_x, the K-quants) is
//! dequantised once at load with candle and re-quantised to Q8_0, and the
//! memory this takes is counted so the loader can log it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{ggml_file, GgmlDType};
use candle_core::Device;

use super::kernels::mapped::MappedFile;
use super::kernels::{self, packed, WeightView};
use crate::engine::gguf::{ggml_type_layout, GgufHeader, TensorEntry};
use crate::engine::EngineError;

const GGML_F32: u32 = 0;
const GGML_F16: u32 = 1;
const GGML_Q4_0: u32 = 2;
const GGML_Q8_0: u32 = 8;
const GGML_BF16: u32 = 30;

/// Bytes of a matrix: in the mapped file, or converted into memory.
enum Bytes {
    Mapped {
        file: Arc<MappedFile>,
        start: usize,
        len: usize,
    },
    Owned(Vec<u8>),
}

impl Bytes {
    fn get(&self) -> &[u8] {
        match self {
            Self::Mapped { file, start, len } => &file.bytes()[*start..*start + *len],
            Self::Owned(bytes) => bytes,
        }
    }
}

enum Data {
    Q8_0(Bytes),
    Q4_0(Bytes),
    PackedQ8_0(Vec<u8>),
    PackedQ4_0(Vec<u8>),
    F32(Vec<f32>),
}

/// A weight matrix of `rows` output features × `cols` inputs.
pub struct Matrix {
    rows: usize,
    cols: usize,
    data: Data,
    activation_terms: usize,
}

impl Matrix {
    /// Quantised activation rows per token this matrix is multiplied with:
    /// 2 (a value and its residual, about 15 bits) for weights stored as
    /// Q8_0 in the file, whose own rounding is as fine as one 8-bit
    /// activation term's would be; 1 for coarser weights (Q4_0, and types
    /// re-quantised from 4 to 6 bits), where the weights' error dominates.
    pub fn activation_terms(&self) -> usize {
        self.activation_terms
    }

    /// The kernels' view of it.
    pub fn view(&self) -> WeightView<'_> {
        let (rows, cols) = (self.rows, self.cols);
        match &self.data {
            Data::Q8_0(bytes) => WeightView::Q8_0 {
                rows,
                cols,
                data: bytes.get(),
            },
            Data::Q4_0(bytes) => WeightView::Q4_0 {
                rows,
                cols,
                data: bytes.get(),
            },
            Data::PackedQ8_0(bytes) => WeightView::PackedQ8_0 {
                rows,
                cols,
                data: bytes,
            },
            Data::PackedQ4_0(bytes) => WeightView::PackedQ4_0 {
                rows,
                cols,
                data: bytes,
            },
            Data::F32(values) => WeightView::F32 {
                rows,
                cols,
                data: values,
            },
        }
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The storage type's name, for logs.
    pub fn kind(&self) -> &'static str {
        match self.data {
            Data::Q8_0(_) => "Q8_0",
            Data::Q4_0(_) => "Q4_0",
            Data::PackedQ8_0(_) => "Q8_0 (packed)",
            Data::PackedQ4_0(_) => "Q4_0 (packed)",
            Data::F32(_) => "F32",
        }
    }
}

/// Reads tensors out of one mapped GGUF file.
pub struct TensorReader<'a> {
    path: PathBuf,
    file: Arc<MappedFile>,
    header: &'a GgufHeader,
    by_name: HashMap<&'a str, &'a TensorEntry>,
    /// Bytes allocated for tensors that could not stay in the mapping.
    pub converted_bytes: usize,
    /// Names of the tensors that were converted, with their original type.
    pub converted: Vec<(String, &'static str)>,
    /// Expand every matrix to f32 (the exact reference the accuracy tests use).
    pub exact: bool,
    /// Regroup Q8_0 and Q4_0 matrices into the interleaved layout the
    /// AVX-512 kernels read (copied out of the mapping, whose pages are then
    /// released, so resident memory stays one copy).
    pub pack: bool,
    /// Multiply Q8_0 matrices with two activation terms (see
    /// [`Matrix::activation_terms`]); otherwise one.
    pub precise_activations: bool,
}

impl<'a> TensorReader<'a> {
    /// Maps `path`, whose header is `header`.
    pub fn open(path: &Path, header: &'a GgufHeader) -> Result<Self, EngineError> {
        let file = MappedFile::open(path).map_err(|err| EngineError::ModelUnreadable {
            path: path.to_path_buf(),
            detail: err.to_string(),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Arc::new(file),
            header,
            by_name: header
                .tensors
                .iter()
                .map(|tensor| (tensor.name.as_str(), tensor))
                .collect(),
            converted_bytes: 0,
            converted: Vec::new(),
            exact: false,
            pack: false,
            precise_activations: true,
        })
    }

    fn corrupt(&self, detail: String) -> EngineError {
        EngineError::ModelCorrupt {
            path: self.path.clone(),
            detail,
        }
    }

    /// Whether the file has a tensor named `name`.
    pub fn has(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    fn entry(&self, name: &str) -> Result<&'a TensorEntry, EngineError> {
        self.by_name.get(name).copied().ok_or_else(|| {
            EngineError::Load(format!(
                "{}: tensor {name} is missing, which the cpu backend needs",
                self.path.display()
            ))
        })
    }

    /// The raw bytes of a tensor, bounds-checked against the file.
    fn raw(&self, entry: &TensorEntry) -> Result<(usize, usize), EngineError> {
        let (_, block_elements, block_bytes) =
            ggml_type_layout(entry.ggml_type).ok_or_else(|| {
                self.corrupt(format!(
                    "tensor {} has unknown ggml type {}",
                    entry.name, entry.ggml_type
                ))
            })?;
        if !entry.elements.is_multiple_of(block_elements) {
            return Err(self.corrupt(format!(
                "tensor {} has {} elements, not whole blocks of {block_elements}",
                entry.name, entry.elements
            )));
        }
        let len = entry.elements / block_elements * block_bytes;
        let start = self.header.data_start + entry.offset;
        let end = start
            .checked_add(len)
            .filter(|&end| end <= self.file.bytes().len() as u64);
        match end {
            Some(_) => Ok((start as usize, len as usize)),
            None => Err(self.corrupt(format!(
                "tensor {} lies past the end of the file",
                entry.name
            ))),
        }
    }

    /// All values of a tensor as f32, whatever its type.
    fn dequantize(&self, entry: &TensorEntry) -> Result<Vec<f32>, EngineError> {
        let (start, len) = self.raw(entry)?;
        let bytes = &self.file.bytes()[start..start + len];
        let values = match entry.ggml_type {
            GGML_F32 => bytes
                .chunks_exact(4)
                .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
                .collect(),
            GGML_F16 => bytes
                .chunks_exact(2)
                .map(|chunk| kernels::f16_to_f32(u16::from_le_bytes([chunk[0], chunk[1]])))
                .collect(),
            GGML_BF16 => bytes
                .chunks_exact(2)
                .map(|chunk| kernels::bf16_to_f32(u16::from_le_bytes([chunk[0], chunk[1]])))
                .collect(),
            GGML_Q8_0 | GGML_Q4_0 => {
                let cols = entry.dims.first().copied().unwrap_or(entry.elements) as usize;
                let rows = (entry.elements as usize) / cols.max(1);
                let view = if entry.ggml_type == GGML_Q8_0 {
                    WeightView::Q8_0 {
                        rows,
                        cols,
                        data: bytes,
                    }
                } else {
                    WeightView::Q4_0 {
                        rows,
                        cols,
                        data: bytes,
                    }
                };
                view.check()
                    .map_err(|detail| self.corrupt(format!("tensor {}: {detail}", entry.name)))?;
                let mut values = vec![0.0; rows * cols];
                for (row, out) in values.chunks_exact_mut(cols).enumerate() {
                    view.dequantize_row(row, out);
                }
                values
            }
            _ => self.dequantize_with_candle(entry, bytes, entry.elements as usize)?,
        };
        // The tensor now lives in `values`; its pages of the mapping need not
        // stay resident beside it.
        self.file.release(start, len);
        Ok(values)
    }

    /// `elements` values of `entry`'s type in `bytes` (whole blocks), as f32.
    fn dequantize_with_candle(
        &self,
        entry: &TensorEntry,
        bytes: &[u8],
        elements: usize,
    ) -> Result<Vec<f32>, EngineError> {
        let dtype = candle_dtype(entry.ggml_type).ok_or_else(|| {
            self.corrupt(format!(
                "tensor {} has unsupported type {}",
                entry.name, entry.ggml_type
            ))
        })?;
        ggml_file::qtensor_from_ggml(dtype, bytes, vec![elements], &Device::Cpu)
            .and_then(|tensor| tensor.dequantize(&Device::Cpu))
            .and_then(|tensor| tensor.to_vec1::<f32>())
            .map_err(|err| {
                self.corrupt(format!(
                    "tensor {} cannot be dequantised: {err}",
                    entry.name
                ))
            })
    }

    /// A quantised type without native kernels re-quantised to Q8_0 blocks,
    /// a slice of rows at a time so that the f32 copy of a large matrix (a
    /// vocabulary of 150,000 rows is 0.5 GB) never exists whole.
    fn convert_to_q8_0(
        &self,
        entry: &TensorEntry,
        rows: usize,
        cols: usize,
    ) -> Result<Vec<u8>, EngineError> {
        const ROWS_PER_SLICE: usize = 512;
        let (start, len) = self.raw(entry)?;
        let block_elements =
            ggml_type_layout(entry.ggml_type).map_or(0, |layout| layout.1 as usize);
        let mut out = Vec::with_capacity(rows * cols / kernels::BLOCK * kernels::Q8_0_BLOCK_BYTES);
        // Rows made of whole blocks can be sliced; others are converted whole.
        if block_elements == 0 || !cols.is_multiple_of(block_elements) || len % rows != 0 {
            kernels::quantize_q8_0(&self.dequantize(entry)?, &mut out);
            return Ok(out);
        }
        let row_bytes = len / rows;
        let bytes = &self.file.bytes()[start..start + len];
        for first in (0..rows).step_by(ROWS_PER_SLICE) {
            let count = ROWS_PER_SLICE.min(rows - first);
            let slice = &bytes[first * row_bytes..(first + count) * row_bytes];
            let values = self.dequantize_with_candle(entry, slice, count * cols)?;
            kernels::quantize_q8_0(&values, &mut out);
        }
        self.file.release(start, len);
        Ok(out)
    }

    /// A vector (norm weight, bias) of length `len`, as f32.
    pub fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>, EngineError> {
        let entry = self.entry(name)?;
        if entry.elements != len as u64 {
            return Err(self.corrupt(format!(
                "tensor {name} has {} elements, the model needs {len}",
                entry.elements
            )));
        }
        self.dequantize(entry)
    }

    /// A matrix of `rows` × `cols`: in place when Q8_0 or Q4_0, otherwise
    /// converted (floats to f32, other quantisations to Q8_0).
    pub fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<Matrix, EngineError> {
        let entry = self.entry(name)?;
        let shape_ok =
            entry.dims.len() == 2 && entry.dims[0] == cols as u64 && entry.dims[1] == rows as u64;
        if !shape_ok {
            return Err(self.corrupt(format!(
                "tensor {name} has shape {:?}, the model needs [{cols}, {rows}]",
                entry.dims
            )));
        }
        let data = match entry.ggml_type {
            _ if self.exact => {
                let values = self.dequantize(entry)?;
                self.note_conversion(entry, values.len() * 4);
                Data::F32(values)
            }
            GGML_Q8_0 | GGML_Q4_0 if self.pack => {
                let (start, len) = self.raw(entry)?;
                let bytes = &self.file.bytes()[start..start + len];
                let expected = rows * cols / kernels::BLOCK
                    * if entry.ggml_type == GGML_Q8_0 {
                        kernels::Q8_0_BLOCK_BYTES
                    } else {
                        kernels::Q4_0_BLOCK_BYTES
                    };
                if len != expected || !cols.is_multiple_of(kernels::BLOCK) {
                    return Err(self.corrupt(format!(
                        "tensor {name} has {len} bytes, its shape needs {expected}"
                    )));
                }
                let data = if entry.ggml_type == GGML_Q8_0 {
                    Data::PackedQ8_0(packed::pack_q8_0(bytes, rows, cols))
                } else {
                    Data::PackedQ4_0(packed::pack_q4_0(bytes, rows, cols))
                };
                self.file.release(start, len);
                data
            }
            GGML_Q8_0 | GGML_Q4_0 => {
                let (start, len) = self.raw(entry)?;
                let bytes = Bytes::Mapped {
                    file: Arc::clone(&self.file),
                    start,
                    len,
                };
                if entry.ggml_type == GGML_Q8_0 {
                    Data::Q8_0(bytes)
                } else {
                    Data::Q4_0(bytes)
                }
            }
            GGML_F32 | GGML_F16 | GGML_BF16 => {
                let values = self.dequantize(entry)?;
                self.note_conversion(entry, values.len() * 4);
                Data::F32(values)
            }
            _ => {
                if !cols.is_multiple_of(kernels::BLOCK) {
                    return Err(self.corrupt(format!(
                        "tensor {name}: rows of {cols} cannot be re-quantised to Q8_0"
                    )));
                }
                let bytes = self.convert_to_q8_0(entry, rows, cols)?;
                self.note_conversion(entry, bytes.len());
                if self.pack {
                    Data::PackedQ8_0(packed::pack_q8_0(&bytes, rows, cols))
                } else {
                    Data::Q8_0(Bytes::Owned(bytes))
                }
            }
        };
        let activation_terms =
            if entry.ggml_type == GGML_Q8_0 && self.precise_activations && !self.exact {
                2
            } else {
                1
            };
        let matrix = Matrix {
            rows,
            cols,
            data,
            activation_terms,
        };
        matrix
            .view()
            .check()
            .map_err(|detail| self.corrupt(format!("tensor {name}: {detail}")))?;
        Ok(matrix)
    }

    fn note_conversion(&mut self, entry: &TensorEntry, bytes: usize) {
        self.converted_bytes += bytes;
        let kind = ggml_type_layout(entry.ggml_type).map_or("?", |layout| layout.0);
        self.converted.push((entry.name.clone(), kind));
    }
}

fn candle_dtype(ggml_type: u32) -> Option<GgmlDType> {
    Some(match ggml_type {
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cpu::kernels::{Activations, Isa, QuantRow};
    use candle_core::quantized::{QMatMul, QTensor};
    use candle_core::{Module, Tensor};

    /// Our Q8_0 product equals candle's (which mistral.rs runs) on the same
    /// weights and inputs, so the engines differ only outside the matmuls.
    #[test]
    fn q8_0_matmul_equals_candles() {
        let (rows, cols, tokens) = (64, 576, 3);
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.05)
            .collect();
        let weights = QTensor::quantize(
            &Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap(),
            GgmlDType::Q8_0,
        )
        .unwrap();
        let bytes = weights.data().unwrap().to_vec();
        let input: Vec<f32> = (0..tokens * cols)
            .map(|i| {
                ((i * 104_729 % 997) as f32 / 498.0 - 1.0) * if i % 97 == 0 { 40.0 } else { 1.0 }
            })
            .collect();
        let reference = QMatMul::from_qtensor(weights)
            .unwrap()
            .forward(&Tensor::from_vec(input.clone(), (tokens, cols), &Device::Cpu).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let quant: Vec<QuantRow> = input
            .chunks_exact(cols)
            .map(|row| {
                let mut quant = QuantRow::default();
                quant.quantize(Isa::SCALAR, row);
                quant
            })
            .collect();
        let view = WeightView::Q8_0 {
            rows,
            cols,
            data: &bytes,
        };
        let pool = kernels::ThreadPool::new(1).unwrap();
        for isa in Isa::available() {
            let mut out = vec![0.0; tokens * rows];
            kernels::matmul(
                &pool,
                isa,
                &Activations {
                    float: &input,
                    quant: &quant,
                    terms: 1,
                    rows: tokens,
                    cols,
                },
                &mut [kernels::MatmulJob {
                    weights: view,
                    bias: None,
                    out: &mut out,
                }],
            );
            let worst = out
                .iter()
                .zip(&reference)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            let scale = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(worst <= scale * 1e-5, "{}: {worst} of {scale}", isa.name());
        }
    }
}
