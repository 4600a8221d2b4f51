//! Value encodings of Parquet data pages for 8-byte values (`INT64` and
//! `DOUBLE`), written by [`super::primitive`] without parquet's generic
//! per-value encoders: `PLAIN`, `DELTA_BINARY_PACKED` (blocks of 128 deltas
//! in 4 miniblocks, as parquet's own encoder lays them out) and
//! `BYTE_STREAM_SPLIT`, plus the V1 page's definition levels (bit width 1,
//! RLE/bit-packed hybrid with its 4-byte length). Each takes the values'
//! bits as `u64` and appends to a buffer.

/// Values a delta block holds, and its miniblocks.
const BLOCK: usize = 128;
const MINIBLOCKS: usize = 4;
const MINIBLOCK: usize = BLOCK / MINIBLOCKS;

/// `PLAIN`: the values' little-endian bytes.
pub fn plain(values: &[u64], out: &mut Vec<u8>) {
    out.reserve(values.len() * 8);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// `BYTE_STREAM_SPLIT`: byte `k` of every value, for `k` in 0..8, one stream after the other.
pub fn byte_stream_split(values: &[u64], out: &mut Vec<u8>) {
    let n = values.len();
    let start = out.len();
    out.resize(start + n * 8, 0);
    let streams = &mut out[start..];
    let (blocks, rest) = values.as_chunks::<8>();
    for (b, block) in blocks.iter().enumerate() {
        let t = transpose_8x8(*block);
        for (k, word) in t.iter().enumerate() {
            let at = k * n + b * 8;
            streams[at..at + 8].copy_from_slice(&word.to_le_bytes());
        }
    }
    let done = blocks.len() * 8;
    for (i, v) in rest.iter().enumerate() {
        for (k, byte) in v.to_le_bytes().iter().enumerate() {
            streams[k * n + done + i] = *byte;
        }
    }
}

/// Transposes 8 values as an 8 × 8 byte matrix: byte `r` of word `k` of the
/// result is byte `k` of value `r` (three rounds of block swaps).
#[inline(always)]
fn transpose_8x8(mut x: [u64; 8]) -> [u64; 8] {
    #[inline(always)]
    fn swap(x: &mut [u64; 8], a: usize, b: usize, shift: u32, mask: u64) {
        let t = ((x[a] >> shift) ^ x[b]) & mask;
        x[b] ^= t;
        x[a] ^= t << shift;
    }
    for a in [0, 2, 4, 6] {
        swap(&mut x, a, a + 1, 8, 0x00ff_00ff_00ff_00ff);
    }
    for a in [0, 1, 4, 5] {
        swap(&mut x, a, a + 2, 16, 0x0000_ffff_0000_ffff);
    }
    for a in [0, 1, 2, 3] {
        swap(&mut x, a, a + 4, 32, 0x0000_0000_ffff_ffff);
    }
    x
}

/// `DELTA_BINARY_PACKED` of signed 64-bit values (given as their bits).
pub fn delta_binary_packed(values: &[u64], out: &mut Vec<u8>) {
    put_uleb128(out, BLOCK as u64);
    put_uleb128(out, MINIBLOCKS as u64);
    put_uleb128(out, values.len() as u64);
    put_uleb128(out, zigzag(values.first().map_or(0, |v| *v as i64)));
    let mut deltas = [0u64; BLOCK];
    let mut i = 1;
    while i < values.len() {
        let end = (i + BLOCK).min(values.len());
        let n = end - i;
        let mut min = i64::MAX;
        for (k, d) in deltas[..n].iter_mut().enumerate() {
            let delta = values[i + k].wrapping_sub(values[i + k - 1]) as i64;
            *d = delta as u64;
            min = min.min(delta);
        }
        put_uleb128(out, zigzag(min));
        let mut widths = [0u8; MINIBLOCKS];
        for (m, width) in widths.iter_mut().enumerate() {
            let from = m * MINIBLOCK;
            if from >= n {
                break;
            }
            let mut or = 0u64;
            for d in &mut deltas[from..(from + MINIBLOCK).min(n)] {
                *d = d.wrapping_sub(min as u64);
                or |= *d;
            }
            // The last miniblock is padded with zero deltas (above the minimum).
            deltas[(from + MINIBLOCK).min(n)..from + MINIBLOCK].fill(0);
            *width = (u64::BITS - or.leading_zeros()) as u8;
        }
        out.extend_from_slice(&widths);
        for (m, width) in widths.iter().enumerate() {
            if m * MINIBLOCK >= n {
                break;
            }
            bit_pack(&deltas[m * MINIBLOCK..(m + 1) * MINIBLOCK], u32::from(*width), out);
        }
        i = end;
    }
}

/// Packs 32 values of `width` bits, least significant bit first.
fn bit_pack(values: &[u64], width: u32, out: &mut Vec<u8>) {
    if width == 0 {
        return;
    }
    let mut acc: u128 = 0;
    let mut bits = 0u32;
    for v in values {
        acc |= u128::from(*v) << bits;
        bits += width;
        if bits >= 64 {
            out.extend_from_slice(&(acc as u64).to_le_bytes());
            acc >>= 64;
            bits -= 64;
        }
    }
    // 32 values make a whole number of 32-bit words.
    if bits > 0 {
        out.extend_from_slice(&(acc as u64).to_le_bytes()[..bits.div_ceil(8) as usize]);
    }
}

/// Definition levels (0 null, 1 set) of a V1 data page: a 4-byte length,
/// then one RLE run when every value is set, else the validity bits as
/// bit-packed groups of 8 (the Arrow bitmap's own layout).
pub fn definition_levels(rows: usize, validity: Option<&[u8]>, out: &mut Vec<u8>) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    match validity {
        None => {
            put_uleb128(out, (rows as u64) << 1);
            out.push(1);
        }
        Some(bits) => {
            let groups = rows.div_ceil(8);
            put_uleb128(out, ((groups as u64) << 1) | 1);
            out.extend_from_slice(&bits[..groups]);
            // Bits past the last row are levels of no row: make them 0.
            if !rows.is_multiple_of(8) {
                let last = out.len() - 1;
                out[last] &= (1u8 << (rows % 8)) - 1;
            }
        }
    }
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

/// Least and greatest of signed 64-bit values (given as their bits), in
/// independent lanes; `None` when there are none.
pub fn min_max_i64(values: &[u64]) -> Option<(i64, i64)> {
    const LANES: usize = 8;
    if values.is_empty() {
        return None;
    }
    let (mut mins, mut maxs) = ([i64::MAX; LANES], [i64::MIN; LANES]);
    let (chunks, rest) = values.as_chunks::<LANES>();
    for c in chunks {
        for i in 0..LANES {
            mins[i] = mins[i].min(c[i] as i64);
            maxs[i] = maxs[i].max(c[i] as i64);
        }
    }
    for v in rest {
        mins[0] = mins[0].min(*v as i64);
        maxs[0] = maxs[0].max(*v as i64);
    }
    Some((mins.into_iter().min()?, maxs.into_iter().max()?))
}

/// Least and greatest total-order keys ([`total_order_key`]) of doubles
/// (given as their bits) and their NaN count, as parquet orders them for
/// statistics: NaNs are skipped unless nothing else is there, and -0.0
/// sorts before +0.0. `None` when there are none. Compared as doubles in
/// independent lanes (which vectorizes); zeros are settled afterwards.
pub fn min_max_f64(values: &[u64]) -> Option<(i64, i64, u64)> {
    const LANES: usize = 8;
    if values.is_empty() {
        return None;
    }
    let (mut mins, mut maxs, mut nans) = ([f64::INFINITY; LANES], [f64::NEG_INFINITY; LANES], [0u64; LANES]);
    let (chunks, rest) = values.as_chunks::<LANES>();
    for c in chunks {
        for i in 0..LANES {
            let f = f64::from_bits(c[i]);
            mins[i] = if f < mins[i] { f } else { mins[i] };
            maxs[i] = if f > maxs[i] { f } else { maxs[i] };
            nans[i] += u64::from(f.is_nan());
        }
    }
    for v in rest {
        let f = f64::from_bits(*v);
        mins[0] = if f < mins[0] { f } else { mins[0] };
        maxs[0] = if f > maxs[0] { f } else { maxs[0] };
        nans[0] += u64::from(f.is_nan());
    }
    let nan_count: u64 = nans.iter().sum();
    if nan_count as usize == values.len() {
        let keys = values.iter().map(|v| total_order_key(*v));
        return Some((keys.clone().min()?, keys.max()?, nan_count));
    }
    let mut min = mins.into_iter().fold(f64::INFINITY, |a, b| if b < a { b } else { a });
    let mut max = maxs.into_iter().fold(f64::NEG_INFINITY, |a, b| if b > a { b } else { a });
    if min == 0.0 {
        min = if values.contains(&(-0.0f64).to_bits()) { -0.0 } else { 0.0 };
    }
    if max == 0.0 {
        max = if values.contains(&0.0f64.to_bits()) { 0.0 } else { -0.0 };
    }
    Some((total_order_key(min.to_bits()), total_order_key(max.to_bits()), nan_count))
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub fn put_uleb128(buf: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            buf.push(byte);
            return;
        }
        buf.push(byte | 0x80);
    }
}

/// Total-order key of a double's bits (as `f64::total_cmp` orders them):
/// comparing keys as `i64` compares the doubles. Its own inverse.
pub fn total_order_key(bits: u64) -> i64 {
    let b = bits as i64;
    b ^ ((((b >> 63) as u64) >> 1) as i64)
}

pub fn is_nan_bits(bits: u64) -> bool {
    bits & 0x7fff_ffff_ffff_ffff > 0x7ff0_0000_0000_0000
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lane-wise minima and maxima equal a plain scan in total order.
    #[test]
    fn min_max_match_a_total_order_scan() {
        let special = [0.0, -0.0, f64::NAN, -f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1.5, -2.5, 1e-310];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for n in [1usize, 3, 8, 9, 17, 64, 100] {
            for _ in 0..300 {
                let values: Vec<u64> = (0..n)
                    .map(|_| match next() % 4 {
                        0 => next(),
                        _ => special[(next() % special.len() as u64) as usize].to_bits(),
                    })
                    .collect();
                let keys: Vec<i64> = values.iter().map(|v| total_order_key(*v)).collect();
                let numbers: Vec<i64> =
                    values.iter().filter(|v| !is_nan_bits(**v)).map(|v| total_order_key(*v)).collect();
                let nans = (n - numbers.len()) as u64;
                let pool = if numbers.is_empty() { &keys } else { &numbers };
                let expected = (*pool.iter().min().unwrap(), *pool.iter().max().unwrap(), nans);
                assert_eq!(min_max_f64(&values), Some(expected), "{values:x?}");
                let ints: Vec<i64> = values.iter().map(|v| *v as i64).collect();
                let expected = (*ints.iter().min().unwrap(), *ints.iter().max().unwrap());
                assert_eq!(min_max_i64(&values), Some(expected));
            }
        }
        assert_eq!(min_max_f64(&[]), None);
        assert_eq!(min_max_i64(&[]), None);
    }

    #[test]
    fn byte_stream_split_matches_the_definition() {
        for n in [0usize, 1, 7, 8, 9, 64, 1001] {
            let values: Vec<u64> = (0..n as u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i << 7)).collect();
            let mut out = vec![0xAA];
            byte_stream_split(&values, &mut out);
            assert_eq!(out.len(), 1 + n * 8);
            for (i, v) in values.iter().enumerate() {
                for k in 0..8 {
                    assert_eq!(out[1 + k * n + i], v.to_le_bytes()[k], "value {i} byte {k} of {n}");
                }
            }
        }
    }

    #[test]
    fn total_order_keys_order_as_total_cmp() {
        let v = [f64::NEG_INFINITY, -1.5, -0.0, 0.0, 1e-310, 2.0, f64::INFINITY, f64::NAN, -f64::NAN];
        for a in v {
            for b in v {
                assert_eq!(total_order_key(a.to_bits()).cmp(&total_order_key(b.to_bits())), a.total_cmp(&b));
            }
            assert_eq!(total_order_key(total_order_key(a.to_bits()) as u64) as u64, a.to_bits());
            assert_eq!(is_nan_bits(a.to_bits()), a.is_nan());
        }
    }
}
