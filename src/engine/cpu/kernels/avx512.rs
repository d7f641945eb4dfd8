//! AVX-512 VNNI kernels over the packed weight layout (see `packed`):
//! register tiles of 16 weight rows (one per 32-bit lane) × up to 8 tokens.
//! Per block, each token's four activation bytes are broadcast and
//! `vpdpbusd` adds 16 rows' four-input dot products at once, so a block
//! costs 8 `vpdpbusd` per token and its int-to-float scaling is shared by
//! 16 outputs.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes: the weights are the
//! unsigned operand (Q8_0 stored as weight + 128, Q4_0 as its nibbles), and
//! each token's integer accumulator starts at -128 or -8 × the block's sum
//! of activation values, which undoes the offset.

// Register tiles are indexed by row and token on purpose: the loops unroll.
#![allow(clippy::needless_range_loop)]

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::ops::Range;

use super::packed::{GROUP_ROWS, Q4_0_GROUP_BLOCK_BYTES, Q8_0_GROUP_BLOCK_BYTES};
use super::{QuantRow, BLOCK};

/// Tokens per full tile.
const TOKENS: usize = 8;
/// How many blocks ahead of use the weights are prefetched.
const PREFETCH_BLOCKS: usize = 4;

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn load32(bytes: &[u8], offset: usize) -> __m256i {
    let window = &bytes[offset..offset + 32];
    // SAFETY: `window` has exactly 32 readable bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(window.as_ptr().cast()) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn load64(bytes: &[u8], offset: usize) -> __m512i {
    let window = &bytes[offset..offset + 64];
    // SAFETY: `window` has exactly 64 readable bytes; the load is unaligned.
    unsafe { _mm512_loadu_si512(window.as_ptr().cast()) }
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

/// Quantises one activation row into `row`, whose buffers are already
/// sized; equal to `scalar::quantize_row` value for value.
///
/// # Safety
/// The CPU must support AVX-512 F, BW, VL and VNNI, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn quantize_row(values: &[f32], row: &mut QuantRow) {
    for (block, chunk) in values.chunks_exact(BLOCK).enumerate() {
        let first = load_f32x16(chunk, 0);
        let second = load_f32x16(chunk, 16);
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(first), _mm512_abs_ps(second)));
        let (scale, inverse) = QuantRow::block_scale(amax);
        let inverse = _mm512_set1_ps(inverse);
        // Round half to even (the default MXCSR mode), narrow with saturation.
        let low = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(first, inverse)));
        let high = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(second, inverse)));
        let quants = _mm256_max_epi8(_mm256_set_m128i(high, low), _mm256_set1_epi8(-127));
        super::avx2::store_quant_block(row, block, quants, scale);
    }
}

/// The four activation bytes at `at` of one token, as one 32-bit lane.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn broadcast4(values: &[i8; BLOCK], at: usize) -> __m512i {
    let quad = [values[at], values[at + 1], values[at + 2], values[at + 3]];
    _mm512_set1_epi32(i32::from_le_bytes(quad.map(|value| value as u8)))
}

/// One block of one activation row: its values and -offset × their sum.
struct BlockInput<'a> {
    values: &'a [i8; BLOCK],
    start: i32,
    scale: f32,
}

/// 16 packed rows × `T` tokens over all blocks: `out[t][lane]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn packed_tile<const T: usize, const Q4: bool>(
    group: &[u8],
    blocks: usize,
    acts: &[QuantRow],
) -> [[f32; GROUP_ROWS]; T] {
    let group_block_bytes = if Q4 {
        Q4_0_GROUP_BLOCK_BYTES
    } else {
        Q8_0_GROUP_BLOCK_BYTES
    };
    let offset = if Q4 { -8 } else { -128 };
    let nibble = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); T];
    for block in 0..blocks {
        let at = block * group_block_bytes;
        for line in (0..group_block_bytes).step_by(64) {
            prefetch(group, at + PREFETCH_BLOCKS * group_block_bytes + line);
        }
        let inputs: [BlockInput<'_>; T] = std::array::from_fn(|t| {
            let row = &acts[t];
            BlockInput {
                values: row.signed[block * BLOCK..(block + 1) * BLOCK]
                    .try_into()
                    .expect("a whole block"),
                start: offset * row.block_sums[block],
                scale: row.scales[block],
            }
        });
        // Two integer chains per token, so consecutive `vpdpbusd` are independent.
        let mut even = [_mm512_setzero_si512(); T];
        let mut odd = [_mm512_setzero_si512(); T];
        for t in 0..T {
            even[t] = _mm512_set1_epi32(inputs[t].start);
        }
        if Q4 {
            for slice in 0..4 {
                let packed = load64(group, at + 32 + slice * 64);
                let low = _mm512_and_si512(packed, nibble);
                let high = _mm512_and_si512(_mm512_srli_epi16(packed, 4), nibble);
                for t in 0..T {
                    let values = inputs[t].values;
                    even[t] = _mm512_dpbusd_epi32(even[t], low, broadcast4(values, slice * 4));
                    odd[t] = _mm512_dpbusd_epi32(odd[t], high, broadcast4(values, 16 + slice * 4));
                }
            }
        } else {
            for pair in 0..4 {
                let first = load64(group, at + 32 + pair * 128);
                let second = load64(group, at + 32 + pair * 128 + 64);
                for t in 0..T {
                    let values = inputs[t].values;
                    even[t] = _mm512_dpbusd_epi32(even[t], first, broadcast4(values, pair * 8));
                    odd[t] = _mm512_dpbusd_epi32(odd[t], second, broadcast4(values, pair * 8 + 4));
                }
            }
        }
        let weight_scales = _mm512_cvtph_ps(load32(group, at));
        for t in 0..T {
            let dot = _mm512_cvtepi32_ps(_mm512_add_epi32(even[t], odd[t]));
            let scale = _mm512_mul_ps(weight_scales, _mm512_set1_ps(inputs[t].scale));
            acc[t] = _mm512_fmadd_ps(dot, scale, acc[t]);
        }
    }
    let mut out = [[0.0; GROUP_ROWS]; T];
    for t in 0..T {
        // SAFETY: `out[t]` is 16 writable f32; the store is unaligned.
        unsafe { _mm512_storeu_ps(out[t].as_mut_ptr(), acc[t]) };
    }
    out
}

/// Walks the groups of `features` (which starts on a group boundary) and
/// the tokens in tiles of 8, 4, 2 and 1.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn gemm_packed<const Q4: bool>(
    data: &[u8],
    cols: usize,
    features: Range<usize>,
    quant: &[QuantRow],
    emit: &mut dyn FnMut(usize, usize, &[f32]),
) {
    assert_eq!(features.start % GROUP_ROWS, 0, "packed rows start a group");
    let blocks = cols / BLOCK;
    let group_bytes = blocks
        * if Q4 {
            Q4_0_GROUP_BLOCK_BYTES
        } else {
            Q8_0_GROUP_BLOCK_BYTES
        };
    let mut first = features.start;
    while first < features.end {
        let group = first / GROUP_ROWS;
        let rows = &data[group * group_bytes..(group + 1) * group_bytes];
        let width = (features.end - first).min(GROUP_ROWS);
        let mut token = 0;
        while token < quant.len() {
            let acts = &quant[token..];
            let take = match acts.len() {
                left if left >= TOKENS => TOKENS,
                left if left >= 4 => 4,
                left if left >= 2 => 2,
                _ => 1,
            };
            let mut emit_rows = |tile: &[[f32; GROUP_ROWS]]| {
                for (t, outputs) in tile.iter().enumerate() {
                    emit(token + t, first, &outputs[..width]);
                }
            };
            match take {
                TOKENS => emit_rows(&packed_tile::<TOKENS, Q4>(rows, blocks, acts)),
                4 => emit_rows(&packed_tile::<4, Q4>(rows, blocks, acts)),
                2 => emit_rows(&packed_tile::<2, Q4>(rows, blocks, acts)),
                _ => emit_rows(&packed_tile::<1, Q4>(rows, blocks, acts)),
            }
            token += take;
        }
        first += width;
    }
}

/// Packed Q8_0 weights × quantised activations.
///
/// # Safety
/// The CPU must support AVX-512 F, BW, VL and VNNI, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn gemm_packed_q8_0(
    data: &[u8],
    cols: usize,
    features: Range<usize>,
    quant: &[QuantRow],
    emit: &mut dyn FnMut(usize, usize, &[f32]),
) {
    gemm_packed::<false>(data, cols, features, quant, emit);
}

/// Packed Q4_0 weights × quantised activations.
///
/// # Safety
/// As for [`gemm_packed_q8_0`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn gemm_packed_q4_0(
    data: &[u8],
    cols: usize,
    features: Range<usize>,
    quant: &[QuantRow],
    emit: &mut dyn FnMut(usize, usize, &[f32]),
) {
    gemm_packed::<true>(data, cols, features, quant, emit);
}
