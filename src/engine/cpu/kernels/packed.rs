//! The interleaved weight layout the AVX-512 kernels read: Q8_0 and Q4_0
//! rows regrouped at load in groups of 16, so one 64-byte load holds the
//! same four inputs of 16 output features (one per 32-bit lane) and a GEMM
//! keeps outputs, not partial sums, in its lanes.
//!
//! For each group of 16 rows and each 32-value block, in order:
//! - 16 f16 scales (32 bytes), row by row;
//! - Q8_0: 8 slices of 64 bytes; slice k holds inputs 4k..4k+4 of each row,
//!   as unsigned bytes (weight + 128);
//! - Q4_0: 4 slices of 64 bytes; slice k holds packed bytes 4k..4k+4 of
//!   each row, whose low nibbles are inputs 4k..4k+4 and whose high nibbles
//!   are inputs 16+4k..16+4k+4.
//!
//! A last, partial group is padded with zero-scale rows.

use super::{BLOCK, Q4_0_BLOCK_BYTES, Q8_0_BLOCK_BYTES};

/// Rows per interleaved group (one per 32-bit lane of a zmm register).
pub const GROUP_ROWS: usize = 16;
/// Bytes of the scales of one group's block.
const SCALE_BYTES: usize = GROUP_ROWS * 2;
/// Bytes of one group's block of packed Q8_0.
pub const Q8_0_GROUP_BLOCK_BYTES: usize = SCALE_BYTES + GROUP_ROWS * BLOCK;
/// Bytes of one group's block of packed Q4_0.
pub const Q4_0_GROUP_BLOCK_BYTES: usize = SCALE_BYTES + GROUP_ROWS * BLOCK / 2;

/// Bytes of a packed matrix of `rows` × `cols` with `group_block_bytes`
/// per group and block.
pub fn packed_len(rows: usize, cols: usize, group_block_bytes: usize) -> usize {
    rows.div_ceil(GROUP_ROWS) * (cols / BLOCK) * group_block_bytes
}

/// Regroups row-major blocks (`block_bytes` each: an f16 scale, then
/// `payload` bytes) into the interleaved layout; `convert` maps a payload
/// byte to its stored form.
fn pack(
    data: &[u8],
    rows: usize,
    cols: usize,
    block_bytes: usize,
    convert: fn(u8) -> u8,
) -> Vec<u8> {
    let blocks = cols / BLOCK;
    let payload = block_bytes - 2;
    let group_block_bytes = SCALE_BYTES + GROUP_ROWS * payload;
    let mut out = vec![0u8; packed_len(rows, cols, group_block_bytes)];
    for (index, chunk) in out.chunks_exact_mut(group_block_bytes).enumerate() {
        let (group, block) = (index / blocks, index % blocks);
        let (scales, slices) = chunk.split_at_mut(SCALE_BYTES);
        for lane in 0..GROUP_ROWS {
            let row = group * GROUP_ROWS + lane;
            if row >= rows {
                break;
            }
            let at = (row * blocks + block) * block_bytes;
            let source = &data[at..at + block_bytes];
            scales[lane * 2..lane * 2 + 2].copy_from_slice(&source[..2]);
            for (slice, quad) in source[2..].chunks_exact(4).enumerate() {
                let target = slice * GROUP_ROWS * 4 + lane * 4;
                for (stored, &byte) in slices[target..target + 4].iter_mut().zip(quad) {
                    *stored = convert(byte);
                }
            }
        }
    }
    out
}

/// Packs row-major Q8_0 (`rows * cols / 32 * 34` bytes).
pub fn pack_q8_0(data: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    pack(data, rows, cols, Q8_0_BLOCK_BYTES, |byte| byte ^ 0x80)
}

/// Packs row-major Q4_0 (`rows * cols / 32 * 18` bytes).
pub fn pack_q4_0(data: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    pack(data, rows, cols, Q4_0_BLOCK_BYTES, |byte| byte)
}

/// The f16 scale of `lane` in a group's block.
pub fn scale_of(group_block: &[u8], lane: usize) -> f32 {
    super::f16_to_f32(u16::from_le_bytes([
        group_block[lane * 2],
        group_block[lane * 2 + 1],
    ]))
}

/// Input `j` (0..32) of `lane` in a packed Q8_0 group's block, as the
/// signed weight.
pub fn q8_0_weight(group_block: &[u8], lane: usize, j: usize) -> i32 {
    let byte = group_block[SCALE_BYTES + (j / 4) * GROUP_ROWS * 4 + lane * 4 + j % 4];
    i32::from(byte) - 128
}

/// Input `j` (0..32) of `lane` in a packed Q4_0 group's block, as the
/// signed weight (nibble - 8).
pub fn q4_0_weight(group_block: &[u8], lane: usize, j: usize) -> i32 {
    let (slot, high) = (j % 16, j >= 16);
    let byte = group_block[SCALE_BYTES + (slot / 4) * GROUP_ROWS * 4 + lane * 4 + slot % 4];
    let nibble = if high { byte >> 4 } else { byte & 0x0F };
    i32::from(nibble) - 8
}

/// Expands row `row` of a packed matrix into `out` (length `cols`).
pub fn dequantize_row(
    data: &[u8],
    cols: usize,
    row: usize,
    group_block_bytes: usize,
    weight: fn(&[u8], usize, usize) -> i32,
    out: &mut [f32],
) {
    let blocks = cols / BLOCK;
    let (group, lane) = (row / GROUP_ROWS, row % GROUP_ROWS);
    for (block, values) in out.chunks_exact_mut(BLOCK).enumerate() {
        let at = (group * blocks + block) * group_block_bytes;
        let group_block = &data[at..at + group_block_bytes];
        let scale = scale_of(group_block, lane);
        for (j, value) in values.iter_mut().enumerate() {
            *value = scale * weight(group_block, lane, j) as f32;
        }
    }
}
