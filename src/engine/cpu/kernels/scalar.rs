//! The portable reference kernels: plain loops, one block at a time. Every
//! SIMD variant is tested against these, and CPUs without AVX2 run them.

use std::ops::Range;

use super::{f16_to_f32, packed, Activations, QuantRow, BLOCK, Q4_0_BLOCK_BYTES, Q8_0_BLOCK_BYTES};

fn scale_at(block: &[u8]) -> f32 {
    f16_to_f32(u16::from_le_bytes([block[0], block[1]]))
}

/// Quantises one activation row into `row`, whose buffers are already
/// sized. Rounds half to even, as the SIMD conversions do.
pub fn quantize_row(values: &[f32], row: &mut QuantRow) {
    for (block, chunk) in values.chunks_exact(BLOCK).enumerate() {
        let amax = chunk.iter().fold(0.0f32, |max, value| max.max(value.abs()));
        let (scale, inverse) = QuantRow::block_scale(amax);
        let quants = &mut row.signed[block * BLOCK..(block + 1) * BLOCK];
        for (quant, value) in quants.iter_mut().zip(chunk) {
            *quant = (value * inverse).round_ties_even().clamp(-127.0, 127.0) as i8;
        }
        row.scales[block] = scale;
        for lane in 0..8 {
            let sum: i32 = quants[lane * 4..lane * 4 + 4]
                .iter()
                .map(|&quant| i32::from(quant))
                .sum();
            row.neg8_lane_sums[block * 8 + lane] = -8 * sum;
        }
    }
}

/// Integer dot product of one Q8_0 weight block with 32 activation values.
fn dot_q8_0_block(block: &[u8], values: &[i8]) -> i32 {
    block[2..Q8_0_BLOCK_BYTES]
        .iter()
        .zip(values)
        .map(|(&weight, &value)| i32::from(weight as i8) * i32::from(value))
        .sum()
}

/// Integer dot product of one Q4_0 weight block (nibble - 8) with 32 values:
/// byte j holds element j in its low nibble and element j + 16 in its high.
fn dot_q4_0_block(block: &[u8], values: &[i8]) -> i32 {
    let packed = &block[2..Q4_0_BLOCK_BYTES];
    let mut sum = 0;
    for (j, &byte) in packed.iter().enumerate() {
        let low = i32::from(byte & 0x0F) - 8;
        let high = i32::from(byte >> 4) - 8;
        sum += low * i32::from(values[j]) + high * i32::from(values[j + 16]);
    }
    sum
}

fn gemm_blocks(
    data: &[u8],
    cols: usize,
    block_bytes: usize,
    features: Range<usize>,
    quant: &[QuantRow],
    dot: fn(&[u8], &[i8]) -> i32,
    emit: &mut dyn FnMut(usize, usize, &[f32]),
) {
    let blocks = cols / BLOCK;
    let row_bytes = blocks * block_bytes;
    for feature in features {
        let row = &data[feature * row_bytes..(feature + 1) * row_bytes];
        for (token, input) in quant.iter().enumerate() {
            let mut sum = 0.0f32;
            for block in 0..blocks {
                let weights = &row[block * block_bytes..(block + 1) * block_bytes];
                let values = &input.signed[block * BLOCK..(block + 1) * BLOCK];
                sum += scale_at(weights) * input.scales[block] * dot(weights, values) as f32;
            }
            emit(token, feature, &[sum]);
        }
    }
}

/// Q8_0 weights × quantised activations.
pub fn gemm_q8_0(
    data: &[u8],
    cols: usize,
    features: Range<usize>,
    quant: &[QuantRow],
    emit: &mut dyn FnMut(usize, usize, &[f32]),
) {
    gemm_blocks(
        data,
        cols,
        Q8_0_BLOCK_BYTES,
        features,
        quant,
        dot_q8_0_block,
        emit,
    );
}

/// Q4_0 weights × quantised activations.
pub fn gemm_q4_0(
    data: &[u8],
    cols: usize,
    features: Range<usize>,
    quant: &[QuantRow],
    emit: &mut dyn FnMut(usize, usize, &[f32]),
) {
    gemm_blocks(
        data,
        cols,
        Q4_0_BLOCK_BYTES,
        features,
        quant,
        dot_q4_0_block,
        emit,
    );
}

fn gemm_packed(
    data: &[u8],
    cols: usize,
    group_block_bytes: usize,
    features: Range<usize>,
    quant: &[QuantRow],
    weight: fn(&[u8], usize, usize) -> i32,
    emit: &mut dyn FnMut(usize, usize, &[f32]),
) {
    let blocks = cols / BLOCK;
    for feature in features {
        let (group, lane) = (feature / packed::GROUP_ROWS, feature % packed::GROUP_ROWS);
        for (token, input) in quant.iter().enumerate() {
            let mut sum = 0.0f32;
            for block in 0..blocks {
                let at = (group * blocks + block) * group_block_bytes;
                let group_block = &data[at..at + group_block_bytes];
                let values = &input.signed[block * BLOCK..(block + 1) * BLOCK];
                let dot: i32 = values
                    .iter()
                    .enumerate()
                    .map(|(j, &value)| weight(group_block, lane, j) * i32::from(value))
                    .sum();
                sum += packed::scale_of(group_block, lane) * input.scales[block] * dot as f32;
            }
            emit(token, feature, &[sum]);
        }
    }
}

/// Packed Q8_0 weights × quantised activations.
pub fn gemm_packed_q8_0(
    data: &[u8],
    cols: usize,
    features: Range<usize>,
    quant: &[QuantRow],
    emit: &mut dyn FnMut(usize, usize, &[f32]),
) {
    let bytes = packed::Q8_0_GROUP_BLOCK_BYTES;
    gemm_packed(
        data,
        cols,
        bytes,
        features,
        quant,
        packed::q8_0_weight,
        emit,
    );
}

/// Packed Q4_0 weights × quantised activations.
pub fn gemm_packed_q4_0(
    data: &[u8],
    cols: usize,
    features: Range<usize>,
    quant: &[QuantRow],
    emit: &mut dyn FnMut(usize, usize, &[f32]),
) {
    let bytes = packed::Q4_0_GROUP_BLOCK_BYTES;
    gemm_packed(
        data,
        cols,
        bytes,
        features,
        quant,
        packed::q4_0_weight,
        emit,
    );
}

/// f32 weights × f32 activations.
pub fn gemm_f32(
    data: &[f32],
    cols: usize,
    features: Range<usize>,
    input: &Activations<'_>,
    emit: &mut dyn FnMut(usize, usize, &[f32]),
) {
    for feature in features {
        let row = &data[feature * cols..(feature + 1) * cols];
        for token in 0..input.rows {
            let values = &input.float[token * cols..(token + 1) * cols];
            emit(token, feature, &[super::dot_f32(row, values)]);
        }
    }
}

/// Expands one row of Q8_0 blocks.
pub fn dequantize_q8_0(row: &[u8], out: &mut [f32]) {
    for (block, values) in row
        .chunks_exact(Q8_0_BLOCK_BYTES)
        .zip(out.chunks_exact_mut(BLOCK))
    {
        let scale = scale_at(block);
        for (value, &quant) in values.iter_mut().zip(&block[2..]) {
            *value = scale * f32::from(quant as i8);
        }
    }
}

/// Expands one row of Q4_0 blocks.
pub fn dequantize_q4_0(row: &[u8], out: &mut [f32]) {
    for (block, values) in row
        .chunks_exact(Q4_0_BLOCK_BYTES)
        .zip(out.chunks_exact_mut(BLOCK))
    {
        let scale = scale_at(block);
        for (j, &byte) in block[2..].iter().enumerate() {
            values[j] = scale * (f32::from(byte & 0x0F) - 8.0);
            values[j + 16] = scale * (f32::from(byte >> 4) - 8.0);
        }
    }
}

/// Quantises one row of f32 values to Q8_0 blocks (the weight format), as
/// ggml's reference does: scale = max |v| / 127, values rounded.
pub fn quantize_q8_0(values: &[f32], out: &mut Vec<u8>) {
    for chunk in values.chunks_exact(BLOCK) {
        let amax = chunk.iter().fold(0.0f32, |max, value| max.max(value.abs()));
        let scale = amax / 127.0;
        let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        out.extend_from_slice(&half::f16::from_f32(scale).to_bits().to_le_bytes());
        out.extend(
            chunk
                .iter()
                .map(|value| (value * inverse).round().clamp(-127.0, 127.0) as i8 as u8),
        );
    }
}
