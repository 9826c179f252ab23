//! Scalar reference dequantizers for every ggml block type the engine reads, written from the
//! byte layouts in ggml-common.h / ggml-quants.c. They are the "scalar twin" that every optimised
//! path (candle's CPU kernels today, our own SIMD / CUDA / WASM kernels later) is tested against,
//! and they document the formats in plain code.

use half::{bf16, f16};

use crate::dtype::DType;
use crate::error::{Error, Result};

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes `data` (whole blocks of `dtype`) into `out` (`data.len() / type_size * block_size`
/// floats). Errors when the lengths disagree.
pub fn dequantize(dtype: DType, data: &[u8], out: &mut [f32]) -> Result<()> {
    let (bs, ts) = (dtype.block_size(), dtype.type_size());
    if !data.len().is_multiple_of(ts) || data.len() / ts * bs != out.len() {
        return Err(Error::invalid(
            "data",
            format!("{} bytes of {dtype} do not hold exactly {} values", data.len(), out.len()),
        ));
    }
    for (b, y) in data.chunks_exact(ts).zip(out.chunks_exact_mut(bs)) {
        match dtype {
            DType::F32 => y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            DType::F16 => y[0] = f16_at(b, 0),
            DType::BF16 => y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            DType::Q8_0 => block_q8_0(b, y),
            DType::Q4_0 => block_q4_0(b, y),
            DType::Q4_1 => block_q4_1(b, y),
            DType::Q5_0 => block_q5_0(b, y),
            DType::Q5_1 => block_q5_1(b, y),
            DType::Q4K => block_q4_k(b, y),
            DType::Q5K => block_q5_k(b, y),
            DType::Q6K => block_q6_k(b, y),
        }
    }
    Ok(())
}

/// Q8_0 (34 B): f16 d, i8 q[32]; x = q·d.
fn block_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, v) in y.iter_mut().enumerate() {
        *v = (b[2 + j] as i8) as f32 * d;
    }
}

/// Q4_0 (18 B): f16 d, u8 qs[16]; element j in the low nibble of qs[j], j+16 in the high one;
/// x = (q − 8)·d.
fn block_q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        let q = b[2 + j];
        y[j] = ((q & 0xF) as i32 - 8) as f32 * d;
        y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// Q4_1 (20 B): f16 d, f16 m, u8 qs[16]; x = q·d + m.
fn block_q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for j in 0..16 {
        let q = b[4 + j];
        y[j] = (q & 0xF) as f32 * d + m;
        y[j + 16] = (q >> 4) as f32 * d + m;
    }
}

/// Q5_0 (22 B): f16 d, u32 qh (the 5th bit of each element), u8 qs[16]; x = (q − 16)·d.
fn block_q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..16 {
        let q = b[6 + j];
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        y[j] = (((q & 0xF) as u32 | h0) as i32 - 16) as f32 * d;
        y[j + 16] = (((q >> 4) as u32 | h1) as i32 - 16) as f32 * d;
    }
}

/// Q5_1 (24 B): f16 d, f16 m, u32 qh, u8 qs[16]; x = q·d + m.
fn block_q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for j in 0..16 {
        let q = b[8 + j];
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        y[j] = ((q & 0xF) as u32 | h0) as f32 * d + m;
        y[j + 16] = ((q >> 4) as u32 | h1) as f32 * d + m;
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K / Q5_K super-block, packed in 12 bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    };
    (sc as f32, m as f32)
}

/// Q4_K (144 B, 256 weights): f16 d, f16 dmin, u8 scales[12], u8 qs[128]; 8 sub-blocks of 32
/// with 6-bit scales and mins; x = d·sc·q − dmin·m.
fn block_q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for j in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * j, scales);
        let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
        let q = &qs[32 * j..32 * j + 32];
        for l in 0..32 {
            y[64 * j + l] = d * sc1 * (q[l] & 0xF) as f32 - dmin * m1;
            y[64 * j + 32 + l] = d * sc2 * (q[l] >> 4) as f32 - dmin * m2;
        }
    }
}

/// Q5_K (176 B): f16 d, f16 dmin, u8 scales[12], u8 qh[32], u8 qs[128].
fn block_q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for j in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * j, scales);
        let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
        let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
        let q = &qs[32 * j..32 * j + 32];
        for l in 0..32 {
            let lo = (q[l] & 0xF) + if qh[l] & u1 != 0 { 16 } else { 0 };
            let hi = (q[l] >> 4) + if qh[l] & u2 != 0 { 16 } else { 0 };
            y[64 * j + l] = d * sc1 * lo as f32 - dmin * m1;
            y[64 * j + 32 + l] = d * sc2 * hi as f32 - dmin * m2;
        }
    }
}

/// Q6_K (210 B): u8 ql[128] (low 4 bits), u8 qh[64] (high 2 bits), i8 scales[16], f16 d;
/// x = d·scale·(q − 32).
fn block_q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for n in 0..2 {
        let ql = &b[64 * n..64 * n + 64];
        let qh = &b[128 + 32 * n..128 + 32 * n + 32];
        let sc = &b[192 + 8 * n..192 + 8 * n + 8];
        let y = &mut y[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}
