//! AVX2 kernels (with FMA and F16C): register tiles of 2 weight rows × 4
//! tokens, one 32-value block per step. Signed × signed int8 products use
//! the sign trick (|w| as the unsigned operand of `maddubs`, the value's
//! sign moved to the activation), which cannot saturate for |w| ≤ 128.

// Register tiles are indexed by row and token on purpose: the loops unroll.
#![allow(clippy::needless_range_loop)]

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::ops::Range;

use super::{emit_tile, Activations, QuantRow, BLOCK, Q4_0_BLOCK_BYTES, Q8_0_BLOCK_BYTES};

/// Weight rows per tile.
const ROWS: usize = 2;
/// Tokens per tile.
const TOKENS: usize = 4;

/// Sum of the eight lanes.
#[target_feature(enable = "avx2,fma")]
pub(super) fn hsum(v: __m256) -> f32 {
    let high = _mm256_extractf128_ps(v, 1);
    let sum = _mm_add_ps(_mm256_castps256_ps128(v), high);
    let sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
    let sum = _mm_add_ss(sum, _mm_movehdup_ps(sum));
    _mm_cvtss_f32(sum)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn half_at(block: &[u8]) -> f32 {
    let bits = u16::from_le_bytes([block[0], block[1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

/// Loads 32 bytes starting at `offset`.
#[target_feature(enable = "avx2")]
fn load32(bytes: &[u8], offset: usize) -> __m256i {
    let window = &bytes[offset..offset + 32];
    // SAFETY: `window` has exactly 32 readable bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(window.as_ptr().cast()) }
}

/// Loads 16 bytes starting at `offset`.
#[target_feature(enable = "avx2")]
fn load16(bytes: &[u8], offset: usize) -> __m128i {
    let window = &bytes[offset..offset + 16];
    // SAFETY: `window` has exactly 16 readable bytes; the load is unaligned.
    unsafe { _mm_loadu_si128(window.as_ptr().cast()) }
}

/// Loads 8 i32 starting at `offset`.
#[target_feature(enable = "avx2")]
fn load_i32x8(values: &[i32], offset: usize) -> __m256i {
    let window = &values[offset..offset + 8];
    // SAFETY: `window` has exactly 8 readable i32; the load is unaligned.
    unsafe { _mm256_loadu_si256(window.as_ptr().cast()) }
}

/// Stores one quantised block (`quants`: 32 signed bytes in order) and its
/// derived tables into `row`. Shared with the AVX-512 variant.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn store_quant_block(row: &mut QuantRow, block: usize, quants: __m256i, scale: f32) {
    let pairs = _mm256_maddubs_epi16(_mm256_set1_epi8(1), quants);
    let lane_sums = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
    let neg8_lane_sums = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(lane_sums, 3));
    let signed = &mut row.signed[block * BLOCK..(block + 1) * BLOCK];
    // SAFETY: `signed` has exactly 32 writable bytes; the store is unaligned.
    unsafe { _mm256_storeu_si256(signed.as_mut_ptr().cast(), quants) };
    let sums_out = &mut row.neg8_lane_sums[block * 8..(block + 1) * 8];
    // SAFETY: `sums_out` has exactly 8 writable i32.
    unsafe { _mm256_storeu_si256(sums_out.as_mut_ptr().cast(), neg8_lane_sums) };
    row.scales[block] = scale;
}

/// Quantises one activation row into `row`, whose buffers are already
/// sized; equal to `scalar::quantize_row` value for value.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_row(values: &[f32], row: &mut QuantRow) {
    let magnitude = _mm256_set1_ps(-0.0);
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (block, chunk) in values.chunks_exact(BLOCK).enumerate() {
        let parts = [
            load_f32x8(chunk, 0),
            load_f32x8(chunk, 8),
            load_f32x8(chunk, 16),
            load_f32x8(chunk, 24),
        ];
        let mut largest = _mm256_setzero_ps();
        for part in parts {
            largest = _mm256_max_ps(largest, _mm256_andnot_ps(magnitude, part));
        }
        let half = _mm_max_ps(
            _mm256_castps256_ps128(largest),
            _mm256_extractf128_ps(largest, 1),
        );
        let quarter = _mm_max_ps(half, _mm_movehl_ps(half, half));
        let amax = _mm_cvtss_f32(_mm_max_ss(quarter, _mm_movehdup_ps(quarter)));
        let (scale, inverse) = QuantRow::block_scale(amax);
        let inverse = _mm256_set1_ps(inverse);
        // Round half to even (the default MXCSR mode), then pack with
        // saturation; the packs interleave 128-bit lanes, `order` undoes it.
        let mut ints = [_mm256_setzero_si256(); 4];
        for (int, part) in ints.iter_mut().zip(parts) {
            *int = _mm256_cvtps_epi32(_mm256_mul_ps(part, inverse));
        }
        let low = _mm256_packs_epi32(ints[0], ints[1]);
        let high = _mm256_packs_epi32(ints[2], ints[3]);
        let quants = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(low, high), order);
        let quants = _mm256_max_epi8(quants, _mm256_set1_epi8(-127));
        store_quant_block(row, block, quants, scale);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn tile_q8_0<const R: usize, const T: usize>(
    rows: &[u8],
    row_bytes: usize,
    blocks: usize,
    acts: &[QuantRow],
) -> [[f32; T]; R] {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    for block in 0..blocks {
        let mut weights = [_mm256_setzero_si256(); R];
        let mut magnitudes = [_mm256_setzero_si256(); R];
        let mut scales = [0.0f32; R];
        for r in 0..R {
            let at = r * row_bytes + block * Q8_0_BLOCK_BYTES;
            weights[r] = load32(rows, at + 2);
            magnitudes[r] = _mm256_sign_epi8(weights[r], weights[r]);
            scales[r] = half_at(&rows[at..]);
        }
        for t in 0..T {
            let values = load32(bytemuck_i8(&acts[t].signed), block * BLOCK);
            let value_scale = acts[t].scales[block];
            for r in 0..R {
                let signed = _mm256_sign_epi8(values, weights[r]);
                let pairs = _mm256_maddubs_epi16(magnitudes[r], signed);
                let dot = _mm256_madd_epi16(pairs, ones);
                let scale = _mm256_set1_ps(scales[r] * value_scale);
                acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[r][t]);
            }
        }
    }
    let mut out = [[0.0; T]; R];
    for r in 0..R {
        for t in 0..T {
            out[r][t] = hsum(acc[r][t]);
        }
    }
    out
}

#[target_feature(enable = "avx2,fma,f16c")]
fn tile_q4_0<const R: usize, const T: usize>(
    rows: &[u8],
    row_bytes: usize,
    blocks: usize,
    acts: &[QuantRow],
) -> [[f32; T]; R] {
    let ones = _mm256_set1_epi16(1);
    let nibble = _mm_set1_epi8(0x0F);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    for block in 0..blocks {
        let mut weights = [_mm256_setzero_si256(); R];
        let mut scales = [0.0f32; R];
        for r in 0..R {
            let at = r * row_bytes + block * Q4_0_BLOCK_BYTES;
            let packed = load16(rows, at + 2);
            let low = _mm_and_si128(packed, nibble);
            let high = _mm_and_si128(_mm_srli_epi16(packed, 4), nibble);
            weights[r] = _mm256_set_m128i(high, low);
            scales[r] = half_at(&rows[at..]);
        }
        for t in 0..T {
            let values = load32(bytemuck_i8(&acts[t].signed), block * BLOCK);
            let offset = load_i32x8(&acts[t].neg8_lane_sums, block * 8);
            let value_scale = acts[t].scales[block];
            for r in 0..R {
                let pairs = _mm256_maddubs_epi16(weights[r], values);
                let dot = _mm256_add_epi32(_mm256_madd_epi16(pairs, ones), offset);
                let scale = _mm256_set1_ps(scales[r] * value_scale);
                acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[r][t]);
            }
        }
    }
    let mut out = [[0.0; T]; R];
    for r in 0..R {
        for t in 0..T {
            out[r][t] = hsum(acc[r][t]);
        }
    }
    out
}

/// The signed activation bytes viewed as raw bytes for loading.
fn bytemuck_i8(values: &[i8]) -> &[u8] {
    // SAFETY: i8 and u8 have the same size and alignment, and every bit
    // pattern is valid for both.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast(), values.len()) }
}

/// Q8_0 weights × quantised activations.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemm_q8_0(
    data: &[u8],
    cols: usize,
    features: Range<usize>,
    quant: &[QuantRow],
    emit: &mut dyn FnMut(usize, usize, &[f32]),
) {
    let blocks = cols / BLOCK;
    drive_tiles!(
        tile_q8_0,
        ROWS,
        TOKENS,
        data,
        blocks * Q8_0_BLOCK_BYTES,
        blocks,
        features,
        quant,
        emit
    );
}

/// Q4_0 weights × quantised activations.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gemm_q4_0(
    data: &[u8],
    cols: usize,
    features: Range<usize>,
    quant: &[QuantRow],
    emit: &mut dyn FnMut(usize, usize, &[f32]),
) {
    let blocks = cols / BLOCK;
    drive_tiles!(
        tile_q4_0,
        ROWS,
        TOKENS,
        data,
        blocks * Q4_0_BLOCK_BYTES,
        blocks,
        features,
        quant,
        emit
    );
}

#[target_feature(enable = "avx2,fma")]
fn load_f32x8(values: &[f32], offset: usize) -> __m256 {
    let window = &values[offset..offset + 8];
    // SAFETY: `window` has exactly 8 readable f32; the load is unaligned.
    unsafe { _mm256_loadu_ps(window.as_ptr()) }
}

#[target_feature(enable = "avx2,fma")]
fn tile_f32<const R: usize, const T: usize>(
    weights: &[f32],
    cols: usize,
    input: &[f32],
) -> [[f32; T]; R] {
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let full = cols / 8 * 8;
    for at in (0..full).step_by(8) {
        let mut rows = [_mm256_setzero_ps(); R];
        for r in 0..R {
            rows[r] = load_f32x8(weights, r * cols + at);
        }
        for t in 0..T {
            let values = load_f32x8(input, t * cols + at);
            for r in 0..R {
                acc[r][t] = _mm256_fmadd_ps(rows[r], values, acc[r][t]);
            }
        }
    }
    let mut out = [[0.0; T]; R];
    for r in 0..R {
        for t in 0..T {
            let tail: f32 = (full..cols)
                .map(|i| weights[r * cols + i] * input[t * cols + i])
                .sum();
            out[r][t] = hsum(acc[r][t]) + tail;
        }
    }
    out
}

/// f32 weights × f32 activations.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn gemm_f32(
    data: &[f32],
    cols: usize,
    features: Range<usize>,
    input: &Activations<'_>,
    emit: &mut dyn FnMut(usize, usize, &[f32]),
) {
    let tokens = input.rows;
    let mut feature = features.start;
    while feature < features.end {
        let group = if features.end - feature >= ROWS {
            ROWS
        } else {
            1
        };
        let rows = &data[feature * cols..(feature + group) * cols];
        let mut token = 0;
        while token < tokens {
            let take = if tokens - token >= TOKENS { TOKENS } else { 1 };
            let values = &input.float[token * cols..(token + take) * cols];
            match (group, take) {
                (ROWS, TOKENS) => emit_tile(
                    &tile_f32::<ROWS, TOKENS>(rows, cols, values),
                    feature,
                    token,
                    emit,
                ),
                (ROWS, _) => emit_tile(
                    &tile_f32::<ROWS, 1>(rows, cols, values),
                    feature,
                    token,
                    emit,
                ),
                (_, TOKENS) => emit_tile(
                    &tile_f32::<1, TOKENS>(rows, cols, values),
                    feature,
                    token,
                    emit,
                ),
                _ => emit_tile(&tile_f32::<1, 1>(rows, cols, values), feature, token, emit),
            }
            token += take;
        }
        feature += group;
    }
}
