//! The CPU engine's compute kernels and everything else that needs `unsafe`:
//! int8 dot products and register-tiled GEMMs for Q8_0 and Q4_0 weights
//! (scalar reference, AVX2, AVX-512 VNNI, chosen at run time), the f32 GEMM,
//! the persistent thread pool, and the memory-mapped model file.
//!
//! Architecture invariant: this module tree is the only place in the engine
//! with `unsafe`; every block carries a `// SAFETY:` note. Its public API is
//! safe: a variant can only be called through an [`Isa`] value, and an `Isa`
//! exists only for instruction sets the running CPU has. Each SIMD variant
//! has a scalar twin in `scalar` that its unit tests compare against.

/// Visits the output of a quantised GEMM in register tiles: `$rows` weight
/// rows × `$tokens` tokens, then 2 and 1 for the token remainder, and one
/// row at a time for the row remainder. `$tile::<R, T>` computes one tile.
/// Shared by the SIMD variants, which differ only in their tiles.
macro_rules! drive_tiles {
    ($tile:ident, $rows:ident, $tokens:ident, $data:expr, $row_bytes:expr, $blocks:expr, $features:expr, $quant:expr, $emit:expr) => {{
        let (data, row_bytes, blocks, quant, emit) = ($data, $row_bytes, $blocks, $quant, $emit);
        let tokens = quant.len();
        let mut feature = $features.start;
        while feature < $features.end {
            let group = if $features.end - feature >= $rows {
                $rows
            } else {
                1
            };
            let rows: &[u8] = &data[feature * row_bytes..(feature + group) * row_bytes];
            let mut token = 0;
            while token < tokens {
                let take = match tokens - token {
                    left if left >= $tokens => $tokens,
                    2 => 2,
                    _ => 1,
                };
                let acts = &quant[token..token + take];
                match (group == $rows, take) {
                    (true, $tokens) => emit_tile(
                        &$tile::<$rows, $tokens>(rows, row_bytes, blocks, acts),
                        feature,
                        token,
                        emit,
                    ),
                    (true, 2) => emit_tile(
                        &$tile::<$rows, 2>(rows, row_bytes, blocks, acts),
                        feature,
                        token,
                        emit,
                    ),
                    (true, _) => emit_tile(
                        &$tile::<$rows, 1>(rows, row_bytes, blocks, acts),
                        feature,
                        token,
                        emit,
                    ),
                    (false, $tokens) => emit_tile(
                        &$tile::<1, $tokens>(rows, row_bytes, blocks, acts),
                        feature,
                        token,
                        emit,
                    ),
                    (false, 2) => emit_tile(
                        &$tile::<1, 2>(rows, row_bytes, blocks, acts),
                        feature,
                        token,
                        emit,
                    ),
                    (false, _) => emit_tile(
                        &$tile::<1, 1>(rows, row_bytes, blocks, acts),
                        feature,
                        token,
                        emit,
                    ),
                }
                token += take;
            }
            feature += group;
        }
    }};
}

mod avx2;
mod avx512;
pub mod mapped;
pub mod packed;
pub mod pool;
mod scalar;

use std::ops::Range;

pub use pool::ThreadPool;

/// Elements per quantisation block (Q8_0, Q4_0).
pub const BLOCK: usize = 32;
/// Bytes of one Q8_0 block: an f16 scale and 32 signed bytes.
pub const Q8_0_BLOCK_BYTES: usize = 34;
/// Bytes of one Q4_0 block: an f16 scale and 32 packed nibbles.
pub const Q4_0_BLOCK_BYTES: usize = 18;

/// An instruction set the running CPU has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Isa(IsaKind);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IsaKind {
    Scalar,
    Avx2,
    Avx512Vnni,
}

impl Isa {
    /// The portable reference; always available.
    pub const SCALAR: Isa = Isa(IsaKind::Scalar);

    /// The best instruction set of this CPU. `CONCIERGE_CPU_ISA`
    /// (`scalar`, `avx2`, `avx512`) lowers it, for comparisons.
    pub fn detect() -> Isa {
        let best = Self::avx512_vnni()
            .or_else(Self::avx2)
            .unwrap_or(Self::SCALAR);
        match std::env::var("CONCIERGE_CPU_ISA").ok().as_deref() {
            Some("scalar") => Self::SCALAR,
            Some("avx2") => Self::avx2().unwrap_or(best),
            _ => best,
        }
    }

    /// AVX2 with FMA and F16C, if present.
    pub fn avx2() -> Option<Isa> {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                return Some(Isa(IsaKind::Avx2));
            }
        }
        None
    }

    /// AVX-512 (F, BW, VL) with VNNI, if present.
    pub fn avx512_vnni() -> Option<Isa> {
        #[cfg(target_arch = "x86_64")]
        {
            if Self::avx2().is_some()
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
            {
                return Some(Isa(IsaKind::Avx512Vnni));
            }
        }
        None
    }

    /// Every instruction set this CPU has, the reference first.
    pub fn available() -> Vec<Isa> {
        [Some(Self::SCALAR), Self::avx2(), Self::avx512_vnni()]
            .into_iter()
            .flatten()
            .collect()
    }

    /// Whether this instruction set's kernels read Q8_0 and Q4_0 weights in
    /// the packed layout (see [`packed`]) rather than row-major.
    pub fn reads_packed_weights(self) -> bool {
        self.0 == IsaKind::Avx512Vnni
    }

    /// A short name for logs and benchmark output.
    pub fn name(self) -> &'static str {
        match self.0 {
            IsaKind::Scalar => "scalar",
            IsaKind::Avx2 => "avx2",
            IsaKind::Avx512Vnni => "avx512-vnni",
        }
    }
}

/// Converts an IEEE half to f32 (bit exact, no hardware needed).
pub fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// Converts bfloat16 to f32.
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// One activation row quantised to Q8_0 blocks, with the sums the SIMD
/// kernels use to undo their unsigned weight offsets: -8 × the sum of each
/// group of four values (per 32-bit lane, AVX2 Q4_0) and the sum of each
/// block (AVX-512).
#[derive(Clone, Debug, Default)]
pub struct QuantRow {
    /// Signed quantised values.
    pub signed: Vec<i8>,
    /// Scale of each block.
    pub scales: Vec<f32>,
    /// -8 × the sum of each group of four signed values.
    pub neg8_lane_sums: Vec<i32>,
    /// Sum of the signed values of each block.
    pub block_sums: Vec<i32>,
    /// The f32 residual a second term is quantised from, kept so that every
    /// step reuses its memory.
    residual: Vec<f32>,
}

impl QuantRow {
    /// Quantises `values` (length a multiple of 32) into this row, reusing
    /// its buffers.
    pub fn quantize(&mut self, isa: Isa, values: &[f32]) {
        assert_eq!(
            values.len() % BLOCK,
            0,
            "quantize: width not a multiple of 32"
        );
        let blocks = values.len() / BLOCK;
        self.signed.resize(values.len(), 0);
        self.scales.resize(blocks, 0.0);
        self.neg8_lane_sums.resize(blocks * 8, 0);
        match isa.0 {
            IsaKind::Scalar => scalar::quantize_row(values, self),
            // SAFETY: this `Isa` exists only when AVX2, FMA and F16C were detected.
            IsaKind::Avx2 => unsafe { avx2::quantize_row(values, self) },
            // SAFETY: this `Isa` exists only when AVX-512 F/BW/VL/VNNI and AVX2 were detected.
            IsaKind::Avx512Vnni => unsafe { avx512::quantize_row(values, self) },
        }
        self.block_sums.clear();
        self.block_sums.extend(
            self.neg8_lane_sums
                .chunks_exact(8)
                .map(|lanes| lanes.iter().sum::<i32>() / -8),
        );
    }

    /// Quantises what `main` (this row's first term, quantised from the
    /// same `values`) left out: `values - main`, so that the two terms
    /// together carry about 15 bits per value instead of 8.
    pub fn quantize_residual(&mut self, isa: Isa, values: &[f32], main: &QuantRow) {
        let mut residual = std::mem::take(&mut self.residual);
        residual.clear();
        residual.extend(
            values
                .chunks_exact(BLOCK)
                .zip(main.signed.chunks_exact(BLOCK))
                .zip(&main.scales)
                .flat_map(|((chunk, quants), &scale)| {
                    chunk
                        .iter()
                        .zip(quants)
                        .map(move |(&value, &quant)| value - scale * f32::from(quant))
                }),
        );
        self.quantize(isa, &residual);
        self.residual = residual;
    }

    /// The scale of a block whose largest magnitude is `amax`, and its
    /// inverse. As ggml and candle do: values are divided by the exact
    /// scale, and the scale is kept rounded through f16, as Q8_0 stores it.
    fn block_scale(amax: f32) -> (f32, f32) {
        let exact = amax / 127.0;
        let inverse = if exact > 0.0 { 1.0 / exact } else { 0.0 };
        (half::f16::from_f32(exact).to_f32(), inverse)
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.signed.len()
    }

    /// Whether the row is empty.
    pub fn is_empty(&self) -> bool {
        self.signed.is_empty()
    }
}

/// A weight matrix as the kernels see it: `rows` rows of `cols` values,
/// row-major in ggml's block layout.
#[derive(Clone, Copy, Debug)]
pub enum WeightView<'a> {
    /// Q8_0 blocks, `cols / 32` per row.
    Q8_0 {
        /// Output features.
        rows: usize,
        /// Input features (a multiple of 32).
        cols: usize,
        /// `rows * cols / 32 * 34` bytes.
        data: &'a [u8],
    },
    /// Q4_0 blocks, `cols / 32` per row.
    Q4_0 {
        /// Output features.
        rows: usize,
        /// Input features (a multiple of 32).
        cols: usize,
        /// `rows * cols / 32 * 18` bytes.
        data: &'a [u8],
    },
    /// Q8_0 regrouped for the AVX-512 kernels (see [`packed`]).
    PackedQ8_0 {
        /// Output features.
        rows: usize,
        /// Input features (a multiple of 32).
        cols: usize,
        /// [`packed::packed_len`] bytes.
        data: &'a [u8],
    },
    /// Q4_0 regrouped for the AVX-512 kernels (see [`packed`]).
    PackedQ4_0 {
        /// Output features.
        rows: usize,
        /// Input features (a multiple of 32).
        cols: usize,
        /// [`packed::packed_len`] bytes.
        data: &'a [u8],
    },
    /// Plain f32, row-major.
    F32 {
        /// Output features.
        rows: usize,
        /// Input features.
        cols: usize,
        /// `rows * cols` values.
        data: &'a [f32],
    },
}

impl WeightView<'_> {
    /// Output features.
    pub fn rows(&self) -> usize {
        match *self {
            Self::Q8_0 { rows, .. }
            | Self::Q4_0 { rows, .. }
            | Self::PackedQ8_0 { rows, .. }
            | Self::PackedQ4_0 { rows, .. }
            | Self::F32 { rows, .. } => rows,
        }
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        match *self {
            Self::Q8_0 { cols, .. }
            | Self::Q4_0 { cols, .. }
            | Self::PackedQ8_0 { cols, .. }
            | Self::PackedQ4_0 { cols, .. }
            | Self::F32 { cols, .. } => cols,
        }
    }

    /// Whether the kernels read quantised activations for this matrix.
    pub fn is_quantized(&self) -> bool {
        !matches!(self, Self::F32 { .. })
    }

    /// Checks that the data length matches the shape.
    pub fn check(&self) -> Result<(), String> {
        let (expected, actual) = match *self {
            Self::Q8_0 { rows, cols, data } => {
                if cols % BLOCK != 0 {
                    return Err(format!("Q8_0 row length {cols} is not a multiple of 32"));
                }
                (rows * cols / BLOCK * Q8_0_BLOCK_BYTES, data.len())
            }
            Self::Q4_0 { rows, cols, data } => {
                if cols % BLOCK != 0 {
                    return Err(format!("Q4_0 row length {cols} is not a multiple of 32"));
                }
                (rows * cols / BLOCK * Q4_0_BLOCK_BYTES, data.len())
            }
            Self::PackedQ8_0 { rows, cols, data } | Self::PackedQ4_0 { rows, cols, data } => {
                if cols % BLOCK != 0 {
                    return Err(format!("packed row length {cols} is not a multiple of 32"));
                }
                let group_block_bytes = match self {
                    Self::PackedQ8_0 { .. } => packed::Q8_0_GROUP_BLOCK_BYTES,
                    _ => packed::Q4_0_GROUP_BLOCK_BYTES,
                };
                (
                    packed::packed_len(rows, cols, group_block_bytes),
                    data.len(),
                )
            }
            Self::F32 { rows, cols, data } => (rows * cols, data.len()),
        };
        if expected == actual {
            Ok(())
        } else {
            Err(format!(
                "weight data has {actual} units, the shape needs {expected}"
            ))
        }
    }

    /// Dequantises row `row` into `out` (length `cols`).
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        match *self {
            Self::Q8_0 { cols, data, .. } => {
                let row_bytes = cols / BLOCK * Q8_0_BLOCK_BYTES;
                scalar::dequantize_q8_0(&data[row * row_bytes..(row + 1) * row_bytes], out);
            }
            Self::Q4_0 { cols, data, .. } => {
                let row_bytes = cols / BLOCK * Q4_0_BLOCK_BYTES;
                scalar::dequantize_q4_0(&data[row * row_bytes..(row + 1) * row_bytes], out);
            }
            Self::PackedQ8_0 { cols, data, .. } => packed::dequantize_row(
                data,
                cols,
                row,
                packed::Q8_0_GROUP_BLOCK_BYTES,
                packed::q8_0_weight,
                out,
            ),
            Self::PackedQ4_0 { cols, data, .. } => packed::dequantize_row(
                data,
                cols,
                row,
                packed::Q4_0_GROUP_BLOCK_BYTES,
                packed::q4_0_weight,
                out,
            ),
            Self::F32 { cols, data, .. } => {
                out.copy_from_slice(&data[row * cols..(row + 1) * cols]);
            }
        }
    }
}

/// The input of one matmul: `rows` token rows as f32 and, for quantised
/// weights, the same rows quantised.
#[derive(Clone, Copy, Debug)]
pub struct Activations<'a> {
    /// `rows × cols` f32 values.
    pub float: &'a [f32],
    /// The same rows quantised (empty when no quantised weight reads them):
    /// `terms` rows per token, whose products the matmul adds up.
    pub quant: &'a [QuantRow],
    /// Quantised rows per token: 1, or 2 for a residual term
    /// ([`quantize_rows`]).
    pub terms: usize,
    /// Token rows.
    pub rows: usize,
    /// Values per row.
    pub cols: usize,
}

/// One matrix product of a batched matmul: `out[t * rows + r] = weights[r] ·
/// input[t] (+ bias[r])`.
pub struct MatmulJob<'a> {
    /// The weights.
    pub weights: WeightView<'a>,
    /// Added to each output row, if any.
    pub bias: Option<&'a [f32]>,
    /// `tokens × weights.rows()` outputs.
    pub out: &'a mut [f32],
}

/// Computes a tile of outputs for weight rows `cols` (a range of output
/// features) and every token, calling `emit(token, first_feature, values)`
/// with the outputs of consecutive features for one token.
fn gemm_range(
    isa: Isa,
    weights: WeightView<'_>,
    input: &Activations<'_>,
    features: Range<usize>,
    emit: &mut dyn FnMut(usize, usize, &[f32]),
) {
    let quant = &input.quant[..(input.rows * input.terms).min(input.quant.len())];
    match (isa.0, weights) {
        (_, WeightView::F32 { cols, data, .. }) => match isa.0 {
            IsaKind::Scalar => scalar::gemm_f32(data, cols, features, input, emit),
            _ => {
                // SAFETY: an Avx2 or Avx512 `Isa` exists only after detection
                // found AVX2 and FMA on this CPU.
                unsafe { avx2::gemm_f32(data, cols, features, input, emit) }
            }
        },
        (IsaKind::Avx512Vnni, WeightView::PackedQ8_0 { cols, data, .. }) => {
            // SAFETY: this `Isa` exists only when AVX-512 F/BW/VL/VNNI and AVX2 were detected.
            unsafe { avx512::gemm_packed_q8_0(data, cols, features, quant, emit) }
        }
        (IsaKind::Avx512Vnni, WeightView::PackedQ4_0 { cols, data, .. }) => {
            // SAFETY: as above.
            unsafe { avx512::gemm_packed_q4_0(data, cols, features, quant, emit) }
        }
        (_, WeightView::PackedQ8_0 { cols, data, .. }) => {
            scalar::gemm_packed_q8_0(data, cols, features, quant, emit)
        }
        (_, WeightView::PackedQ4_0 { cols, data, .. }) => {
            scalar::gemm_packed_q4_0(data, cols, features, quant, emit)
        }
        (IsaKind::Scalar, WeightView::Q8_0 { cols, data, .. }) => {
            scalar::gemm_q8_0(data, cols, features, quant, emit)
        }
        (IsaKind::Scalar, WeightView::Q4_0 { cols, data, .. }) => {
            scalar::gemm_q4_0(data, cols, features, quant, emit)
        }
        // Row-major layouts run the AVX2 tiles under AVX-512 too; the AVX-512
        // kernels read the packed layout.
        (_, WeightView::Q8_0 { cols, data, .. }) => {
            // SAFETY: a non-scalar `Isa` exists only when AVX2, FMA and F16C were detected.
            unsafe { avx2::gemm_q8_0(data, cols, features, quant, emit) }
        }
        (_, WeightView::Q4_0 { cols, data, .. }) => {
            // SAFETY: as above.
            unsafe { avx2::gemm_q4_0(data, cols, features, quant, emit) }
        }
    }
}

/// Hands a SIMD variant's finished tile (`R` features × `T` tokens starting
/// at `feature`, `token`) to the caller.
fn emit_tile<const R: usize, const T: usize>(
    out: &[[f32; T]; R],
    feature: usize,
    token: usize,
    emit: &mut dyn FnMut(usize, usize, &[f32]),
) {
    for (t, token) in (token..token + T).enumerate() {
        let column: [f32; R] = std::array::from_fn(|r| out[r][t]);
        emit(token, feature, &column);
    }
}

fn check_job(job: &MatmulJob<'_>, input: &Activations<'_>) {
    let weights = job.weights;
    if let Err(detail) = weights.check() {
        panic!("matmul: {detail}");
    }
    assert_eq!(weights.cols(), input.cols, "matmul: input width");
    assert!(
        input.float.len() >= input.rows * input.cols,
        "matmul: input rows"
    );
    assert!(
        (1..=2).contains(&input.terms),
        "matmul: 1 or 2 quantised terms"
    );
    if weights.is_quantized() {
        assert!(
            input.quant.len() >= input.rows * input.terms,
            "matmul: quantised rows"
        );
        assert!(
            input.quant[..input.rows * input.terms]
                .iter()
                .all(|row| row.len() == input.cols),
            "matmul: quantised row width"
        );
    }
    assert_eq!(
        job.out.len(),
        input.rows * weights.rows(),
        "matmul: output size"
    );
    if let Some(bias) = job.bias {
        assert_eq!(bias.len(), weights.rows(), "matmul: bias length");
    }
}

/// A raw output pointer that tasks on other threads write through.
struct OutPtr {
    ptr: *mut f32,
    features: usize,
}

// SAFETY: tasks write disjoint feature ranges of the output (see `matmul`),
// and `ThreadPool::run` returns only after every task has finished.
unsafe impl Sync for OutPtr {}

/// Runs every job over all token rows of `input` on the pool: the feature
/// ranges of all jobs are cut into tasks, so small matrices still use every
/// core and one dispatch serves several matrices.
pub fn matmul(pool: &ThreadPool, isa: Isa, input: &Activations<'_>, jobs: &mut [MatmulJob<'_>]) {
    for job in jobs.iter() {
        check_job(job, input);
    }
    let total: usize = jobs.iter().map(|job| job.weights.rows()).sum();
    let threads = pool.threads();
    // Chunks are multiples of 16 features, about eight per thread over all
    // jobs, so threads claiming them finish close together.
    let chunk = (total / (threads * 8)).max(16).div_ceil(16) * 16;
    let mut tasks: Vec<(usize, Range<usize>)> = Vec::new();
    for (index, job) in jobs.iter().enumerate() {
        let rows = job.weights.rows();
        let mut start = 0;
        while start < rows {
            let end = (start + chunk).min(rows);
            tasks.push((index, start..end));
            start = end;
        }
    }
    let outputs: Vec<OutPtr> = jobs
        .iter_mut()
        .map(|job| OutPtr {
            ptr: job.out.as_mut_ptr(),
            features: job.weights.rows(),
        })
        .collect();
    let views: Vec<(WeightView<'_>, Option<&[f32]>)> =
        jobs.iter().map(|job| (job.weights, job.bias)).collect();
    let tokens = input.rows;
    // With two terms each output is the sum of two products; they are added
    // to zeroed outputs, in whatever order a kernel emits them.
    let summed: Vec<bool> = jobs
        .iter_mut()
        .map(|job| {
            let summed = input.terms == 2 && job.weights.is_quantized();
            if summed {
                job.out.fill(0.0);
            }
            summed
        })
        .collect();
    pool.run(tasks.len(), &|task| {
        let (index, ref features) = tasks[task];
        let (weights, bias) = views[index];
        let out = &outputs[index];
        let summed = summed[index];
        let mut emit = |row: usize, first: usize, values: &[f32]| {
            let (token, term) = if summed { (row / 2, row % 2) } else { (row, 0) };
            assert!(
                token < tokens && first >= features.start && first + values.len() <= features.end
            );
            // SAFETY: `token < tokens` and the features lie inside
            // `features`, itself inside `0..out.features`, so the run is
            // inside the output slice checked in `check_job`; this task is the
            // only one writing feature range `features`.
            let run = unsafe {
                std::slice::from_raw_parts_mut(
                    out.ptr.add(token * out.features + first),
                    values.len(),
                )
            };
            let bias = bias.filter(|_| term == 0);
            match (summed, bias) {
                (false, None) => run.copy_from_slice(values),
                (false, Some(bias)) => {
                    for ((out, value), bias) in run.iter_mut().zip(values).zip(&bias[first..]) {
                        *out = value + bias;
                    }
                }
                (true, None) => {
                    for (out, value) in run.iter_mut().zip(values) {
                        *out += value;
                    }
                }
                (true, Some(bias)) => {
                    for ((out, value), bias) in run.iter_mut().zip(values).zip(&bias[first..]) {
                        *out += value + bias;
                    }
                }
            }
        };
        gemm_range(isa, weights, input, features.clone(), &mut emit);
    });
}

/// Quantises `rows` rows of `values` (each `cols` long) into `out`, in
/// parallel when there are several rows: `terms` quantised rows per row,
/// the second (when `terms` is 2) holding what the first left out.
pub fn quantize_rows(
    pool: &ThreadPool,
    isa: Isa,
    values: &[f32],
    rows: usize,
    cols: usize,
    terms: usize,
    out: &mut Vec<QuantRow>,
) {
    assert!((1..=2).contains(&terms), "quantize_rows: 1 or 2 terms");
    if out.len() < rows * terms {
        out.resize_with(rows * terms, QuantRow::default);
    }
    let quantize = |row: usize, quant: &mut [QuantRow]| {
        let values = &values[row * cols..(row + 1) * cols];
        quant[0].quantize(isa, values);
        if let [main, residual] = quant {
            residual.quantize_residual(isa, values, main);
        }
    };
    let work = &mut out[..rows * terms];
    if rows < 4 {
        for (row, quant) in work.chunks_mut(terms).enumerate() {
            quantize(row, quant);
        }
        return;
    }
    pool.for_each_chunk_mut(work, terms, &|row, quant| quantize(row, quant));
}

/// Quantises f32 values (a multiple of 32) to Q8_0 weight blocks, appended
/// to `out`.
pub fn quantize_q8_0(values: &[f32], out: &mut Vec<u8>) {
    scalar::quantize_q8_0(values, out);
}

/// Dot product of two f32 slices with independent accumulators.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let mut chunks_a = a.chunks_exact(16);
    let mut chunks_b = b.chunks_exact(16);
    for (ca, cb) in (&mut chunks_a).zip(&mut chunks_b) {
        for lane in 0..16 {
            lanes[lane] += ca[lane] * cb[lane];
        }
    }
    let tail: f32 = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    lanes.iter().sum::<f32>() + tail
}

/// Sum of f32 values with independent accumulators.
pub fn sum_f32(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let mut chunks = values.chunks_exact(16);
    for chunk in &mut chunks {
        for (lane, value) in lanes.iter_mut().zip(chunk) {
            *lane += value;
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// e^x in straight-line f32 arithmetic that the compiler vectorises:
/// Cody-Waite reduction to r in [-ln2/2, ln2/2] and a degree-6 polynomial
/// (relative error about 2e-7, like libm's expf for |x| < 87).
#[inline]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.3);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let poly = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    poly * scale
}

/// `gate[i] = silu(gate[i]) * up[i]`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (gate, up) in gate.iter_mut().zip(up) {
        let x = *gate;
        *gate = x / (1.0 + exp_f32(-x)) * up;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator, so failures reproduce.
    pub(crate) struct Rng(u64);
    impl Rng {
        pub(crate) fn new(seed: u64) -> Self {
            Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }
        pub(crate) fn next_u32(&mut self) -> u32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 16) as u32
        }
        pub(crate) fn uniform(&mut self) -> f32 {
            (self.next_u32() as f32 / u32::MAX as f32) * 2.0 - 1.0
        }
    }

    fn random_q8_0(rng: &mut Rng, rows: usize, cols: usize) -> Vec<u8> {
        let mut data = Vec::new();
        for _ in 0..rows * cols / BLOCK {
            let scale = half::f16::from_f32(0.001 + rng.uniform().abs() * 0.02);
            data.extend_from_slice(&scale.to_bits().to_le_bytes());
            for _ in 0..BLOCK {
                // Include -128, which only a hand-made file holds.
                data.push((rng.next_u32() % 256) as u8);
            }
        }
        data
    }

    fn random_q4_0(rng: &mut Rng, rows: usize, cols: usize) -> Vec<u8> {
        let mut data = Vec::new();
        for _ in 0..rows * cols / BLOCK {
            let scale = half::f16::from_f32(0.001 + rng.uniform().abs() * 0.05);
            data.extend_from_slice(&scale.to_bits().to_le_bytes());
            for _ in 0..BLOCK / 2 {
                data.push((rng.next_u32() % 256) as u8);
            }
        }
        data
    }

    /// One random matrix in Q8_0 and one in Q4_0, each row-major and packed.
    struct RandomWeights {
        rows: usize,
        cols: usize,
        q8: Vec<u8>,
        q4: Vec<u8>,
        packed_q8: Vec<u8>,
        packed_q4: Vec<u8>,
    }

    impl RandomWeights {
        fn new(rng: &mut Rng, rows: usize, cols: usize) -> Self {
            let q8 = random_q8_0(rng, rows, cols);
            let q4 = random_q4_0(rng, rows, cols);
            Self {
                rows,
                cols,
                packed_q8: packed::pack_q8_0(&q8, rows, cols),
                packed_q4: packed::pack_q4_0(&q4, rows, cols),
                q8,
                q4,
            }
        }

        /// Q8_0, Q4_0, packed Q8_0, packed Q4_0.
        fn views(&self) -> [WeightView<'_>; 4] {
            let (rows, cols) = (self.rows, self.cols);
            [
                WeightView::Q8_0 {
                    rows,
                    cols,
                    data: &self.q8,
                },
                WeightView::Q4_0 {
                    rows,
                    cols,
                    data: &self.q4,
                },
                WeightView::PackedQ8_0 {
                    rows,
                    cols,
                    data: &self.packed_q8,
                },
                WeightView::PackedQ4_0 {
                    rows,
                    cols,
                    data: &self.packed_q4,
                },
            ]
        }
    }

    fn activations(rng: &mut Rng, tokens: usize, cols: usize) -> (Vec<f32>, Vec<QuantRow>) {
        let float: Vec<f32> = (0..tokens * cols).map(|_| rng.uniform() * 3.0).collect();
        let quant = float
            .chunks_exact(cols)
            .map(|row| {
                let mut quant = QuantRow::default();
                quant.quantize(Isa::SCALAR, row);
                quant
            })
            .collect();
        (float, quant)
    }

    fn run(isa: Isa, weights: WeightView<'_>, input: &Activations<'_>) -> Vec<f32> {
        let mut out = vec![f32::NAN; input.rows * weights.rows()];
        let mut emit = |token: usize, first: usize, values: &[f32]| {
            let at = token * weights.rows() + first;
            out[at..at + values.len()].copy_from_slice(values);
        };
        gemm_range(isa, weights, input, 0..weights.rows(), &mut emit);
        out
    }

    fn assert_close(reference: &[f32], actual: &[f32], what: &str) {
        let scale = reference
            .iter()
            .fold(0.0f32, |max, v| max.max(v.abs()))
            .max(1e-3);
        for (index, (a, b)) in reference.iter().zip(actual).enumerate() {
            assert!(
                (a - b).abs() <= scale * 1e-5,
                "{what}: output {index}: reference {a}, variant {b}"
            );
        }
    }

    /// Every variant equals the scalar reference on random data, including
    /// odd block counts, row counts that are not a multiple of the tile and
    /// token counts from decode (1) to a prompt batch.
    #[test]
    fn every_variant_matches_the_scalar_reference() {
        let mut rng = Rng::new(7);
        for &(rows, cols, tokens) in &[
            (1, 32, 1),
            (5, 64, 1),
            (7, 96, 3),
            (16, 576, 1),
            (19, 160, 5),
            (33, 224, 2),
            (64, 1536, 7),
            (13, 32, 13),
        ] {
            let weights = RandomWeights::new(&mut rng, rows, cols);
            let f32s: Vec<f32> = (0..rows * cols).map(|_| rng.uniform()).collect();
            let (float, quant) = activations(&mut rng, tokens, cols);
            let input = Activations {
                float: &float,
                quant: &quant,
                terms: 1,
                rows: tokens,
                cols,
            };
            let [q8, q4, packed_q8, packed_q4] = weights.views();
            let views = [
                q8,
                q4,
                WeightView::F32 {
                    rows,
                    cols,
                    data: &f32s,
                },
                packed_q8,
                packed_q4,
            ];
            // The packed layouts hold the same matrices as the row-major ones.
            let (row_major_q8, row_major_q4) = (
                run(Isa::SCALAR, views[0], &input),
                run(Isa::SCALAR, views[1], &input),
            );
            assert_close(
                &row_major_q8,
                &run(Isa::SCALAR, views[3], &input),
                "packed q8_0",
            );
            assert_close(
                &row_major_q4,
                &run(Isa::SCALAR, views[4], &input),
                "packed q4_0",
            );
            let mut unpacked = vec![0.0; cols];
            let mut expected = vec![0.0; cols];
            for row in [0, rows / 2, rows - 1] {
                for (packed_view, row_major) in [(views[3], views[0]), (views[4], views[1])] {
                    packed_view.dequantize_row(row, &mut unpacked);
                    row_major.dequantize_row(row, &mut expected);
                    assert_eq!(unpacked, expected, "row {row} of {rows}");
                }
            }
            for weights in views {
                weights.check().unwrap();
                let reference = run(Isa::SCALAR, weights, &input);
                assert!(reference.iter().all(|v| v.is_finite()));
                for isa in Isa::available() {
                    let actual = run(isa, weights, &input);
                    assert_close(
                        &reference,
                        &actual,
                        &format!(
                            "{} {rows}x{cols} x{tokens} {:?}",
                            isa.name(),
                            weights.rows()
                        ),
                    );
                }
            }
        }
    }

    /// The quantised product stays near the exact f32 product, so the
    /// reference itself is right (not only self-consistent).
    #[test]
    fn scalar_reference_agrees_with_dequantised_f32() {
        let mut rng = Rng::new(11);
        let (rows, cols, tokens) = (9, 256, 3);
        for format in ["q8_0", "q4_0"] {
            let data = match format {
                "q8_0" => random_q8_0(&mut rng, rows, cols),
                _ => random_q4_0(&mut rng, rows, cols),
            };
            let weights = match format {
                "q8_0" => WeightView::Q8_0 {
                    rows,
                    cols,
                    data: &data,
                },
                _ => WeightView::Q4_0 {
                    rows,
                    cols,
                    data: &data,
                },
            };
            let mut dense = vec![0.0; rows * cols];
            for row in 0..rows {
                weights.dequantize_row(row, &mut dense[row * cols..(row + 1) * cols]);
            }
            let (float, quant) = activations(&mut rng, tokens, cols);
            let input = Activations {
                float: &float,
                quant: &quant,
                terms: 1,
                rows: tokens,
                cols,
            };
            let quantized = run(Isa::SCALAR, weights, &input);
            let exact = run(
                Isa::SCALAR,
                WeightView::F32 {
                    rows,
                    cols,
                    data: &dense,
                },
                &input,
            );
            let scale = exact.iter().fold(0.0f32, |max, v| max.max(v.abs()));
            for (q, e) in quantized.iter().zip(&exact) {
                // Activation quantisation error: at most half a step per value.
                assert!((q - e).abs() <= scale * 0.02, "{format}: {q} vs {e}");
            }
        }
    }

    /// A residual term makes the quantised product nearly exact: two
    /// terms through `matmul` (the pool, every variant and layout) stay
    /// within 1e-4 of the f32 product of the same weights, where one term
    /// is allowed 2e-2 above.
    #[test]
    fn two_activation_terms_are_nearly_exact_on_every_variant() {
        let mut rng = Rng::new(23);
        let pool = ThreadPool::new(2).unwrap();
        for &(rows, cols, tokens) in &[(1, 32, 1), (19, 96, 1), (33, 160, 2), (40, 256, 9)] {
            let random = RandomWeights::new(&mut rng, rows, cols);
            // Outliers, as trained models' activations have: one large value
            // per block costs the others most of a single term's precision.
            let float: Vec<f32> = (0..tokens * cols)
                .map(|i| rng.uniform() * if i % 32 == 5 { 60.0 } else { 1.0 })
                .collect();
            let mut quant = Vec::new();
            quantize_rows(&pool, Isa::SCALAR, &float, tokens, cols, 2, &mut quant);
            let views = random.views();
            for weights in views {
                let mut dense = vec![0.0; rows * cols];
                for row in 0..rows {
                    weights.dequantize_row(row, &mut dense[row * cols..(row + 1) * cols]);
                }
                let bias: Vec<f32> = (0..rows).map(|r| r as f32 * 0.25).collect();
                let exact: Vec<f32> = (0..tokens * rows)
                    .map(|i| {
                        let (t, r) = (i / rows, i % rows);
                        dot_f32(
                            &dense[r * cols..(r + 1) * cols],
                            &float[t * cols..(t + 1) * cols],
                        ) + bias[r]
                    })
                    .collect();
                let scale = exact.iter().fold(1e-3f32, |max, v| max.max(v.abs()));
                for isa in Isa::available() {
                    let mut out = vec![f32::NAN; tokens * rows];
                    let input = Activations {
                        float: &float,
                        quant: &quant,
                        terms: 2,
                        rows: tokens,
                        cols,
                    };
                    matmul(
                        &pool,
                        isa,
                        &input,
                        &mut [MatmulJob {
                            weights,
                            bias: Some(&bias),
                            out: &mut out,
                        }],
                    );
                    for (index, (a, b)) in exact.iter().zip(&out).enumerate() {
                        assert!(
                            (a - b).abs() <= scale * 1e-4,
                            "{} {rows}x{cols} x{tokens}: output {index}: exact {a}, two terms {b}",
                            isa.name()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn exp_matches_libm() {
        let mut worst = 0.0f32;
        for i in -8000..=8000 {
            let x = i as f32 * 0.01;
            let (ours, libm) = (exp_f32(x), x.exp());
            worst = worst.max(((ours - libm) / libm).abs());
        }
        assert!(worst < 5e-7, "relative error {worst}");
        let floor = (-87.3f32).exp();
        assert!((exp_f32(-200.0) - floor).abs() <= floor * 1e-6);
        assert!(exp_f32(200.0).is_finite() && exp_f32(0.0) == 1.0);
    }

    #[test]
    fn quantize_row_round_trips_within_half_a_step() {
        let mut rng = Rng::new(3);
        let values: Vec<f32> = (0..96).map(|_| rng.uniform() * 5.0).collect();
        let mut row = QuantRow::default();
        row.quantize(Isa::SCALAR, &values);
        for (index, value) in values.iter().enumerate() {
            let scale = row.scales[index / BLOCK];
            let restored = f32::from(row.signed[index]) * scale;
            // Half a step, plus the f16 rounding of the scale over 127 steps.
            assert!((restored - value).abs() <= scale * (0.5 + 127.0 / 2048.0) + 1e-6);
        }
        let zeros = vec![0.0; 32];
        row.quantize(Isa::SCALAR, &zeros);
        assert!(row.signed.iter().all(|&q| q == 0) && row.scales[0] == 0.0);
    }

    #[test]
    fn every_variant_quantizes_like_the_reference() {
        let mut rng = Rng::new(11);
        for blocks in [1, 2, 3, 18, 48] {
            let mut values: Vec<f32> = (0..blocks * BLOCK).map(|_| rng.uniform() * 4.0).collect();
            // Exact halves of a step, a saturated value and an all-zero block.
            values[0] = 127.0;
            values[1] = -63.5;
            values[2] = 0.5;
            if blocks > 1 {
                values[BLOCK..2 * BLOCK].fill(0.0);
            }
            let mut reference = QuantRow::default();
            reference.quantize(Isa::SCALAR, &values);
            assert_eq!(reference.signed[1], -64, "half to even");
            for isa in Isa::available() {
                let mut row = QuantRow::default();
                row.quantize(isa, &values);
                assert_eq!(row.signed, reference.signed, "{}", isa.name());
                assert_eq!(row.block_sums, reference.block_sums, "{}", isa.name());
                assert_eq!(row.scales, reference.scales, "{}", isa.name());
                assert_eq!(
                    row.neg8_lane_sums,
                    reference.neg8_lane_sums,
                    "{}",
                    isa.name()
                );
            }
        }
    }

    #[test]
    fn pooled_matmul_equals_single_threaded_kernels() {
        let mut rng = Rng::new(5);
        let pool = ThreadPool::new(3).unwrap();
        let (rows_a, rows_b, cols, tokens) = (200, 40, 128, 6);
        let a = random_q8_0(&mut rng, rows_a, cols);
        let b = random_q4_0(&mut rng, rows_b, cols);
        let bias: Vec<f32> = (0..rows_b).map(|i| i as f32).collect();
        let (float, quant) = activations(&mut rng, tokens, cols);
        let input = Activations {
            float: &float,
            quant: &quant,
            terms: 1,
            rows: tokens,
            cols,
        };
        let isa = Isa::detect();
        let wa = WeightView::Q8_0 {
            rows: rows_a,
            cols,
            data: &a,
        };
        let wb = WeightView::Q4_0 {
            rows: rows_b,
            cols,
            data: &b,
        };
        let packed_a = packed::pack_q8_0(&a, rows_a, cols);
        let wc = WeightView::PackedQ8_0 {
            rows: rows_a,
            cols,
            data: &packed_a,
        };
        let mut out_a = vec![0.0; tokens * rows_a];
        let mut out_b = vec![0.0; tokens * rows_b];
        let mut out_c = vec![0.0; tokens * rows_a];
        matmul(
            &pool,
            isa,
            &input,
            &mut [
                MatmulJob {
                    weights: wa,
                    bias: None,
                    out: &mut out_a,
                },
                MatmulJob {
                    weights: wb,
                    bias: Some(&bias),
                    out: &mut out_b,
                },
                MatmulJob {
                    weights: wc,
                    bias: None,
                    out: &mut out_c,
                },
            ],
        );
        assert_eq!(out_a, run(isa, wa, &input));
        assert_eq!(out_c, run(isa, wc, &input));
        let mut expected_b = run(isa, wb, &input);
        for (index, value) in expected_b.iter_mut().enumerate() {
            *value += bias[index % rows_b];
        }
        assert_eq!(out_b, expected_b);
    }
}
