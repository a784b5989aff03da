//! Kernels on the tall N x Q matrices of the estimation loop (the random
//! effects, the fixed scores, Y'X), stored as Q columns of N contiguous
//! values. Each kernel runs along N, so that it vectorises whatever Q is;
//! with Q = 3 and the scores stored unit by unit, every step would instead
//! be a loop of three.
//!
//! The loops are compiled twice, for the baseline x86-64 instruction set
//! and for AVX2, and the AVX2 version is chosen at run time when the
//! processor has it. Both versions perform the same operations in the same
//! order (no fused multiply-add, sums in eight fixed lanes), so they give
//! the same bits.

use crate::dense::Dense;

/// Independent partial sums in [`lane_dot`].
const LANES: usize = 16;

/// Runs `$body` (an expression over the function's arguments) compiled for
/// AVX2 when the processor supports it, and for the baseline otherwise.
macro_rules! with_avx2 {
    ($(#[$meta:meta])* $name:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty, $body:expr) => {
        $(#[$meta])*
        pub fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn body($($arg: $ty),*) -> $ret {
                $body
            }
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) -> $ret {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the processor supports AVX2, as checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use with_avx2;

with_avx2!(
    /// Adds `scale * values` to `out`.
    add_scaled, (out: &mut [f64], values: &[f64], scale: f64) -> (), {
    for (o, v) in out.iter_mut().zip(values) {
        *o += scale * v;
    }
});

with_avx2!(
    /// Inner product summed in sixteen lanes, so that four vector
    /// accumulators hide the latency of the additions. The rows past the
    /// last full chunk are padded with zeros, and the lanes are added
    /// pairwise at the end.
    lane_dot, (left: &[f64], right: &[f64]) -> f64, {
    #[inline(always)]
    fn accumulate(lanes: &mut [f64; LANES], left: &[f64], right: &[f64]) {
        for ((lane, a), b) in lanes.iter_mut().zip(left).zip(right) {
            *lane += a * b;
        }
    }
    let mut lanes = [0.0f64; LANES];
    let left_chunks = left.chunks_exact(LANES);
    let right_chunks = right.chunks_exact(LANES);
    let (mut left_tail, mut right_tail) = ([0.0; LANES], [0.0; LANES]);
    left_tail[..left_chunks.remainder().len()].copy_from_slice(left_chunks.remainder());
    right_tail[..right_chunks.remainder().len()].copy_from_slice(right_chunks.remainder());
    for (l, r) in left_chunks.zip(right_chunks) {
        accumulate(&mut lanes, l, r);
    }
    accumulate(&mut lanes, &left_tail, &right_tail);
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            lanes[l] += lanes[l + width];
        }
        width /= 2;
    }
    lanes[0]
});

with_avx2!(
    /// Multiplies every entry of `values` by `scale`.
    scale_in_place, (values: &mut [f64], scale: f64) -> (), {
    for v in values.iter_mut() {
        *v *= scale;
    }
});

with_avx2!(
    /// Adds `scale * max(values, 0)` to `out`.
    add_scaled_positive, (out: &mut [f64], values: &[f64], scale: f64) -> (), {
    for (o, &v) in out.iter_mut().zip(values) {
        *o += scale * if v > 0.0 { v } else { 0.0 };
    }
});

/// Sets `out[i..i + WIDTH]` to `offset + sum_t sum_r coefficients_t[r] *
/// tall_t[r * n + i + l]` (then to its positive part when `clip`) and
/// returns how many of those sums are negative when `clip`.
#[inline(always)]
fn combine_chunk<const WIDTH: usize>(
    out: &mut [f64],
    n: usize,
    terms: &[(&[f64], &[f64])],
    offset: f64,
    i: usize,
    clip: bool,
) -> usize {
    let mut sums = [offset; WIDTH];
    for (tall, coefficients) in terms {
        for (r, &c) in coefficients.iter().enumerate() {
            let values = &tall[r * n + i..r * n + i + WIDTH];
            for (sum, v) in sums.iter_mut().zip(values) {
                *sum += c * v;
            }
        }
    }
    let mut negative = 0;
    if clip {
        for sum in sums.iter_mut() {
            negative += usize::from(*sum < 0.0);
            *sum = if *sum > 0.0 { *sum } else { 0.0 };
        }
    }
    out[i..i + WIDTH].copy_from_slice(&sums);
    negative
}

/// Runs [`combine_chunk`] over `start..end`: 32 rows at a time, so that
/// the sums stay in registers in independent chains, then 8, then 1.
#[inline(always)]
fn combine_range(
    out: &mut [f64],
    n: usize,
    terms: &[(&[f64], &[f64])],
    offset: f64,
    rows: std::ops::Range<usize>,
    clip: bool,
) -> usize {
    let (mut i, mut negative) = (rows.start, 0);
    while i + 32 <= rows.end {
        negative += combine_chunk::<32>(out, n, terms, offset, i, clip);
        i += 32;
    }
    while i + 8 <= rows.end {
        negative += combine_chunk::<8>(out, n, terms, offset, i, clip);
        i += 8;
    }
    while i < rows.end {
        negative += combine_chunk::<1>(out, n, terms, offset, i, clip);
        i += 1;
    }
    negative
}

with_avx2!(
    /// Sets `out[i] = offset + sum_t sum_r coefficients_t[r] * tall_t[r * n + i]`
    /// for i in `rows`, where each term t is a tall matrix (n rows, stored by
    /// columns, possibly starting at a later column) and the coefficients of
    /// its columns. `out` is written once.
    combine_rows, (out: &mut [f64], n: usize, terms: &[(&[f64], &[f64])], offset: f64, rows: std::ops::Range<usize>) -> (), {
    combine_range(out, n, terms, offset, rows, false);
});

with_avx2!(
    /// Same as [`combine_rows`], then keeps the positive part of each sum
    /// and returns how many sums are negative.
    combine_rows_positive, (out: &mut [f64], n: usize, terms: &[(&[f64], &[f64])], offset: f64, rows: std::ops::Range<usize>) -> usize, {
    combine_range(out, n, terms, offset, rows, true)
});

/// Rows per block in the cross products below: a block of a few columns
/// stays in the first-level cache while every pair of them is multiplied.
const DOT_BLOCK_ROWS: usize = 512;

/// Calls `body` on consecutive row ranges of `0..n` of at most
/// `DOT_BLOCK_ROWS` rows.
pub fn for_row_blocks(n: usize, mut body: impl FnMut(std::ops::Range<usize>)) {
    let mut start = 0;
    while start < n {
        let end = (start + DOT_BLOCK_ROWS).min(n);
        body(start..end);
        start = end;
    }
}

/// Adds to `out` (A x B) the part of `left' * right` from rows `rows` of
/// `left` (N x A) and `right` (N x B). With `symmetric`, `left` and
/// `right` must be the same matrix, and only the upper triangle is added.
pub fn add_block_cross_product(out: &mut Dense, left: &Dense, right: &Dense, rows: std::ops::Range<usize>, symmetric: bool) {
    let n = left.rows;
    for j in 0..right.cols {
        let right_block = &right.data[j * n + rows.start..j * n + rows.end];
        let last = if symmetric { j + 1 } else { left.cols };
        for i in 0..last {
            let left_block = &left.data[i * n + rows.start..i * n + rows.end];
            out.data[i + out.rows * j] += lane_dot(left_block, right_block);
        }
    }
}

/// Copies the upper triangle of the square `out` to its lower triangle.
pub fn mirror_upper(out: &mut Dense) {
    for j in 0..out.cols {
        for i in 0..j {
            out.data[j + out.rows * i] = out.data[i + out.rows * j];
        }
    }
}

/// Returns the transpose of `matrix`.
pub fn transposed(matrix: &Dense) -> Dense {
    let mut out = Dense::zeros(matrix.cols, matrix.rows);
    transpose_into(matrix, &mut out);
    out
}

/// Sets `out` to the transpose of `matrix`.
pub fn transpose_into(matrix: &Dense, out: &mut Dense) {
    debug_assert_eq!((out.rows, out.cols), (matrix.cols, matrix.rows));
    for j in 0..matrix.cols {
        for (i, &value) in matrix.col(j).iter().enumerate() {
            out.data[j + out.rows * i] = value;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(rows: usize, cols: usize, seed: f64) -> Dense {
        let data = (0..rows * cols).map(|i| ((i as f64 + seed) * 0.7359).sin()).collect();
        Dense::from_vec(rows, cols, data)
    }

    #[test]
    fn combined_rows_match_the_definition() {
        // 1100 rows: 34 chunks of 32, one of 8 and four single rows; the
        // second term starts at the second column of its matrix.
        let (tall, other) = (example(1100, 3, 0.0), example(1100, 2, 3.0));
        let (coefficients, other_coefficients) = ([0.5, -1.0, 2.0], [0.25]);
        let terms = [(&tall.data[..], &coefficients[..]), (&other.data[1100..], &other_coefficients[..])];

        let mut out = vec![9.0; 1100];
        combine_rows(&mut out, 1100, &terms, 0.75, 0..1100);
        let expected: Vec<f64> = (0..1100)
            .map(|i| 0.75 + (0..3).map(|r| coefficients[r] * tall.get(i, r)).sum::<f64>() + 0.25 * other.get(i, 1))
            .collect();
        for (o, e) in out.iter().zip(&expected) {
            assert!((o - e).abs() < 1e-13, "{o} vs {e}");
        }

        // The positive part sets the negative sums to 0 and counts them.
        let mut clipped = vec![9.0; 1100];
        let negative = combine_rows_positive(&mut clipped, 1100, &terms, 0.75, 0..1100);
        assert_eq!(negative, expected.iter().filter(|&&e| e < 0.0).count());
        assert!(negative > 0);
        for (c, e) in clipped.iter().zip(&expected) {
            if *e < 0.0 {
                assert_eq!(*c, 0.0);
            } else {
                assert!((c - e).abs() < 1e-13, "{c} vs {e}");
            }
        }

        // Only the given rows are written.
        let mut part = vec![9.0; 1100];
        combine_rows(&mut part, 1100, &terms, 0.75, 40..45);
        assert_eq!(part[39], 9.0);
        assert_eq!(part[45], 9.0);
        assert!((part[42] - expected[42]).abs() < 1e-13);
    }

    #[test]
    fn cross_products_match_the_definition() {
        // 601 rows: a full block and part of a second.
        let (left, right) = (example(601, 6, 1.0), example(601, 5, 2.0));
        let mut out = Dense::zeros(6, 5);
        for_row_blocks(601, |rows| add_block_cross_product(&mut out, &left, &right, rows, false));
        let mut gram = Dense::zeros(6, 6);
        for_row_blocks(601, |rows| add_block_cross_product(&mut gram, &left, &left, rows, true));
        mirror_upper(&mut gram);
        for i in 0..6 {
            for j in 0..5 {
                let expected: f64 = (0..601).map(|n| left.get(n, i) * right.get(n, j)).sum();
                assert!((out.get(i, j) - expected).abs() < 1e-12, "{i} {j}");
            }
            for j in 0..6 {
                let expected: f64 = (0..601).map(|n| left.get(n, i) * left.get(n, j)).sum();
                assert!((gram.get(i, j) - expected).abs() < 1e-12, "{i} {j}");
            }
        }
    }

    #[test]
    fn lane_dot_agrees_with_a_plain_sum() {
        // Sums of multiples of 1/16 below 2^40 are exact in any order.
        let values: Vec<f64> = (0..37).map(|i| i as f64 * 0.25).collect();
        assert_eq!(lane_dot(&values, &values), values.iter().map(|v| v * v).sum::<f64>());
    }
}
