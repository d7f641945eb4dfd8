//! AVX-512 VNNI kernels: register tiles of 4 weight rows × 4 tokens, two
//! 32-value blocks (one zmm register) per step, `vpdpbusd` for the int8
//! products. `vpdpbusd` multiplies unsigned by signed bytes, so:
//! - Q8_0: the activation is the unsigned operand (value + 128) and the
//!   accumulator starts at -128 × the weights' lane sums, which one extra
//!   `vpdpbusd` per weight block computes and all tokens of the tile share;
//! - Q4_0: the nibbles are the unsigned operand and the accumulator starts
//!   at -8 × the activation's lane sums (precomputed when quantising).
//!
//! An odd last block runs through the 256-bit forms of the same instructions.

// Register tiles are indexed by row and token on purpose: the loops unroll.
#![allow(clippy::needless_range_loop)]

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::ops::Range;

use super::{emit_tile, QuantRow, BLOCK, Q4_0_BLOCK_BYTES, Q8_0_BLOCK_BYTES};

/// Weight rows per tile.
const ROWS: usize = 4;
/// Tokens per tile.
const TOKENS: usize = 4;

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn half_at(bytes: &[u8], at: usize) -> f32 {
    let bits = u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn load32(bytes: &[u8], offset: usize) -> __m256i {
    let window = &bytes[offset..offset + 32];
    // SAFETY: `window` has exactly 32 readable bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(window.as_ptr().cast()) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn load16(bytes: &[u8], offset: usize) -> __m128i {
    let window = &bytes[offset..offset + 16];
    // SAFETY: `window` has exactly 16 readable bytes; the load is unaligned.
    unsafe { _mm_loadu_si128(window.as_ptr().cast()) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn load64(bytes: &[u8], offset: usize) -> __m512i {
    let window = &bytes[offset..offset + 64];
    // SAFETY: `window` has exactly 64 readable bytes; the load is unaligned.
    unsafe { _mm512_loadu_si512(window.as_ptr().cast()) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn load_i32x16(values: &[i32], offset: usize) -> __m512i {
    let window = &values[offset..offset + 16];
    // SAFETY: `window` has exactly 16 readable i32; the load is unaligned.
    unsafe { _mm512_loadu_si512(window.as_ptr().cast()) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn load_i32x8(values: &[i32], offset: usize) -> __m256i {
    let window = &values[offset..offset + 8];
    // SAFETY: `window` has exactly 8 readable i32; the load is unaligned.
    unsafe { _mm256_loadu_si256(window.as_ptr().cast()) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn load_f32x16(values: &[f32], offset: usize) -> __m512 {
    let window = &values[offset..offset + 16];
    // SAFETY: `window` has exactly 16 readable f32; the load is unaligned.
    unsafe { _mm512_loadu_ps(window.as_ptr()) }
}

/// Asks for the cache line at `bytes[offset]` ahead of use; an offset past
/// the end is fine (a prefetch never faults).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn prefetch(bytes: &[u8], offset: usize) {
    // A prefetch has no effect on program state and cannot fault, whatever
    // the address; `wrapping_add` keeps the pointer arithmetic defined.
    _mm_prefetch::<_MM_HINT_T0>(bytes.as_ptr().wrapping_add(offset).cast());
}

/// The signed activation bytes viewed as raw bytes for loading.
fn as_bytes(values: &[i8]) -> &[u8] {
    // SAFETY: i8 and u8 have the same size and alignment, and every bit
    // pattern is valid for both.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast(), values.len()) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn tile_q8_0<const R: usize, const T: usize>(
    rows: &[u8],
    row_bytes: usize,
    blocks: usize,
    acts: &[QuantRow],
) -> [[f32; T]; R] {
    let bias = _mm512_set1_epi8(-128);
    let zero = _mm512_setzero_si512();
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    let pairs = blocks / 2;
    for pair in 0..pairs {
        let block = pair * 2;
        let mut weights = [zero; R];
        let mut start = [zero; R];
        let mut scales = [_mm512_setzero_ps(); R];
        for r in 0..R {
            let at = r * row_bytes + block * Q8_0_BLOCK_BYTES;
            // The same place in the next tile's rows, which follow these.
            prefetch(rows, at + 2 * R * row_bytes);
            prefetch(rows, at + 2 * R * row_bytes + 64);
            let low = load32(rows, at + 2);
            let high = load32(rows, at + Q8_0_BLOCK_BYTES + 2);
            weights[r] = _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1);
            // (-128) as unsigned is 128: this is 128 × the lane sums; negate.
            start[r] = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, bias, weights[r]));
            scales[r] = _mm512_mask_blend_ps(
                0xFF00,
                _mm512_set1_ps(half_at(rows, at)),
                _mm512_set1_ps(half_at(rows, at + Q8_0_BLOCK_BYTES)),
            );
        }
        for t in 0..T {
            let values = load64(&acts[t].unsigned, block * BLOCK);
            let value_scales = load_f32x16(&acts[t].lane_scales, block * 8);
            for r in 0..R {
                let dot = _mm512_dpbusd_epi32(start[r], values, weights[r]);
                let scale = _mm512_mul_ps(scales[r], value_scales);
                acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[r][t]);
            }
        }
    }
    let mut out = [[0.0; T]; R];
    for r in 0..R {
        for t in 0..T {
            out[r][t] = _mm512_reduce_add_ps(acc[r][t]);
        }
    }
    if blocks % 2 == 1 {
        let block = blocks - 1;
        let bias = _mm256_set1_epi8(-128);
        let zero = _mm256_setzero_si256();
        for r in 0..R {
            let at = r * row_bytes + block * Q8_0_BLOCK_BYTES;
            let weights = load32(rows, at + 2);
            let start = _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, bias, weights));
            let weight_scale = half_at(rows, at);
            for t in 0..T {
                let values = load32(&acts[t].unsigned, block * BLOCK);
                let dot = _mm256_dpbusd_epi32(start, values, weights);
                let scale = weight_scale * acts[t].scales[block];
                out[r][t] += super::avx2::hsum(_mm256_cvtepi32_ps(dot)) * scale;
            }
        }
    }
    out
}

/// Unpacks two Q4_0 blocks (32 nibble bytes) into 64 unsigned values in
/// element order: block 0's low then high nibbles, then block 1's.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn unpack_q4_0_pair(first: __m128i, second: __m128i) -> __m512i {
    let nibble = _mm256_set1_epi8(0x0F);
    let both = _mm256_set_m128i(second, first);
    let low = _mm256_and_si256(both, nibble);
    let high = _mm256_and_si256(_mm256_srli_epi16(both, 4), nibble);
    // 64-bit lanes: low = [lo0 lo0 lo1 lo1], high = [hi0 hi0 hi1 hi1].
    let joined = _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1);
    _mm512_permutexvar_epi64(_mm512_set_epi64(7, 6, 3, 2, 5, 4, 1, 0), joined)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn tile_q4_0<const R: usize, const T: usize>(
    rows: &[u8],
    row_bytes: usize,
    blocks: usize,
    acts: &[QuantRow],
) -> [[f32; T]; R] {
    let zero = _mm512_setzero_si512();
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    let pairs = blocks / 2;
    for pair in 0..pairs {
        let block = pair * 2;
        let mut weights = [zero; R];
        let mut scales = [_mm512_setzero_ps(); R];
        for r in 0..R {
            let at = r * row_bytes + block * Q4_0_BLOCK_BYTES;
            prefetch(rows, at + R * row_bytes);
            weights[r] = unpack_q4_0_pair(
                load16(rows, at + 2),
                load16(rows, at + Q4_0_BLOCK_BYTES + 2),
            );
            scales[r] = _mm512_mask_blend_ps(
                0xFF00,
                _mm512_set1_ps(half_at(rows, at)),
                _mm512_set1_ps(half_at(rows, at + Q4_0_BLOCK_BYTES)),
            );
        }
        for t in 0..T {
            let values = load64(as_bytes(&acts[t].signed), block * BLOCK);
            let start = load_i32x16(&acts[t].neg8_lane_sums, block * 8);
            let value_scales = load_f32x16(&acts[t].lane_scales, block * 8);
            for r in 0..R {
                let dot = _mm512_dpbusd_epi32(start, weights[r], values);
                let scale = _mm512_mul_ps(scales[r], value_scales);
                acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[r][t]);
            }
        }
    }
    let mut out = [[0.0; T]; R];
    for r in 0..R {
        for t in 0..T {
            out[r][t] = _mm512_reduce_add_ps(acc[r][t]);
        }
    }
    if blocks % 2 == 1 {
        let block = blocks - 1;
        let nibble = _mm_set1_epi8(0x0F);
        for r in 0..R {
            let at = r * row_bytes + block * Q4_0_BLOCK_BYTES;
            let packed = load16(rows, at + 2);
            let low = _mm_and_si128(packed, nibble);
            let high = _mm_and_si128(_mm_srli_epi16(packed, 4), nibble);
            let weights = _mm256_set_m128i(high, low);
            let weight_scale = half_at(rows, at);
            for t in 0..T {
                let values = load32(as_bytes(&acts[t].signed), block * BLOCK);
                let start = load_i32x8(&acts[t].neg8_lane_sums, block * 8);
                let dot = _mm256_dpbusd_epi32(start, weights, values);
                let scale = weight_scale * acts[t].scales[block];
                out[r][t] += super::avx2::hsum(_mm256_cvtepi32_ps(dot)) * scale;
            }
        }
    }
    out
}

/// Q8_0 weights × quantised activations.
///
/// # Safety
/// The CPU must support AVX-512 F, BW, VL and VNNI, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn gemm_q8_0(
    data: &[u8],
    cols: usize,
    features: Range<usize>,
    quant: &[QuantRow],
    emit: &mut dyn FnMut(usize, usize, f32),
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
/// As for [`gemm_q8_0`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn gemm_q4_0(
    data: &[u8],
    cols: usize,
    features: Range<usize>,
    quant: &[QuantRow],
    emit: &mut dyn FnMut(usize, usize, f32),
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
