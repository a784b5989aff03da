//! Column-major dense matrices owned by the core, and the few kernels the
//! fit needs beyond faer's products.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

use crate::columns::with_avx2;

/// Column-major matrix stored in a flat vector, as R stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Dense {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Dense { rows, cols, data: vec![0.0; rows * cols] }
    }

    pub fn filled(rows: usize, cols: usize, value: f64) -> Self {
        Dense { rows, cols, data: vec![value; rows * cols] }
    }

    /// Wraps `data`, which must hold `rows * cols` values in column-major order.
    pub fn from_vec(rows: usize, cols: usize, data: Vec<f64>) -> Self {
        assert_eq!(data.len(), rows * cols, "Dense::from_vec: length does not match shape");
        Dense { rows, cols, data }
    }

    pub fn get(&self, row: usize, col: usize) -> f64 {
        self.data[row + self.rows * col]
    }

    pub fn set(&mut self, row: usize, col: usize, value: f64) {
        self.data[row + self.rows * col] = value;
    }

    pub fn col(&self, col: usize) -> &[f64] {
        &self.data[col * self.rows..(col + 1) * self.rows]
    }

    pub fn as_ref(&self) -> MatRef<'_, f64> {
        MatRef::from_column_major_slice(&self.data, self.rows, self.cols)
    }

    pub fn as_mut(&mut self) -> MatMut<'_, f64> {
        MatMut::from_column_major_slice_mut(&mut self.data, self.rows, self.cols)
    }

    pub fn from_mat(matrix: MatRef<'_, f64>) -> Self {
        let mut out = Dense::zeros(matrix.nrows(), matrix.ncols());
        for j in 0..matrix.ncols() {
            for i in 0..matrix.nrows() {
                out.data[i + out.rows * j] = matrix[(i, j)];
            }
        }
        out
    }

    pub fn squared_norm(&self) -> f64 {
        sum_of_squares(&self.data)
    }

    /// Sets every entry of `self` from a same-shaped matrix.
    pub fn copy_from(&mut self, other: &Dense) {
        debug_assert_eq!((self.rows, self.cols), (other.rows, other.cols));
        self.data.copy_from_slice(&other.data);
    }
}

/// Computes `out = alpha * op(left) * op(right)` (or adds it to `out` when
/// `accumulate`), where `op` transposes when the flag is set; faer does the work.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    out: &mut Dense,
    left: &Dense,
    transpose_left: bool,
    right: &Dense,
    transpose_right: bool,
    alpha: f64,
    accumulate: bool,
    par: Par,
) {
    let l = if transpose_left { left.as_ref().transpose() } else { left.as_ref() };
    let r = if transpose_right { right.as_ref().transpose() } else { right.as_ref() };
    let beta = if accumulate { Accum::Add } else { Accum::Replace };
    matmul(out.as_mut(), beta, l, r, alpha, par);
}

/// Sum of squares of `values`, as [`dot`] computes it.
pub fn sum_of_squares(values: &[f64]) -> f64 {
    dot(values, values)
}

/// Inner product with eight independent accumulators, so that the compiler
/// can vectorise it instead of waiting on one chain of additions.
pub fn dot(left: &[f64], right: &[f64]) -> f64 {
    debug_assert_eq!(left.len(), right.len());
    let mut lanes = [0.0f64; 8];
    let left_chunks = left.chunks_exact(8);
    let right_chunks = right.chunks_exact(8);
    let tail: f64 = left_chunks.remainder().iter().zip(right_chunks.remainder()).map(|(l, r)| l * r).sum();
    for (l, r) in left_chunks.zip(right_chunks) {
        for ((lane, a), b) in lanes.iter_mut().zip(l).zip(r) {
            *lane += a * b;
        }
    }
    lanes.iter().sum::<f64>() + tail
}

/// Counts and locations that input checks need, gathered in one pass.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueSummary {
    pub nonfinite: usize,
    /// Index of the first NA, NaN or infinite value.
    pub first_nonfinite: Option<usize>,
    pub negative: usize,
    pub first_negative: Option<usize>,
    pub zeros: usize,
    /// Largest finite value, or -infinity when there is none.
    pub max: f64,
    /// Mean of the finite values, or 0 when there is none.
    pub mean: f64,
}

/// Scans `values` once, without allocating, for the input checks.
pub fn summarise_values(values: &[f64]) -> ValueSummary {
    let mut summary = ValueSummary {
        nonfinite: 0,
        first_nonfinite: None,
        negative: 0,
        first_negative: None,
        zeros: 0,
        max: f64::NEG_INFINITY,
        mean: 0.0,
    };
    // A running mean, updated in two halves so that no step overflows or
    // underflows for any finite values.
    let mut finite = 0usize;
    for (index, &value) in values.iter().enumerate() {
        if !value.is_finite() {
            summary.nonfinite += 1;
            summary.first_nonfinite.get_or_insert(index);
            continue;
        }
        finite += 1;
        if value < 0.0 {
            summary.negative += 1;
            summary.first_negative.get_or_insert(index);
        } else if value == 0.0 {
            summary.zeros += 1;
        }
        summary.max = summary.max.max(value);
        let count = finite as f64;
        summary.mean += value / count - summary.mean / count;
    }
    summary
}

/// Divides `numerator` by `max(denominator, floor)`; a non-finite result becomes 0.
#[inline]
pub fn safe_divide(numerator: f64, denominator: f64, floor: f64) -> f64 {
    let ratio = numerator / denominator.max(floor);
    if ratio.is_finite() {
        ratio
    } else {
        0.0
    }
}

with_avx2!(
    /// Computes `out = left' * right` for column-major `left` (m x a) and
    /// `right` (m x b), each entry summed in four lanes.
    cross_product, (left: &Dense, right: &Dense, out: &mut Dense) -> (), {
    debug_assert_eq!(left.rows, right.rows);
    for j in 0..right.cols {
        let r = right.col(j);
        for i in 0..left.cols {
            let l = left.col(i);
            let (left_chunks, right_chunks) = (l.chunks_exact(4), r.chunks_exact(4));
            let tail: f64 = left_chunks.remainder().iter().zip(right_chunks.remainder()).map(|(a, b)| a * b).sum();
            let mut lanes = [0.0f64; 4];
            for (a, b) in left_chunks.zip(right_chunks) {
                for lane in 0..4 {
                    lanes[lane] += a[lane] * b[lane];
                }
            }
            out.data[i + left.cols * j] = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]) + tail;
        }
    }
});

/// Computes `out = left * right'` for `left` (a x n) and `right` (b x n).
pub fn outer_product_sum(left: &Dense, right: &Dense, out: &mut Dense) {
    debug_assert_eq!(left.cols, right.cols);
    out.data.iter_mut().for_each(|v| *v = 0.0);
    for col in 0..left.cols {
        let l = left.col(col);
        let r = right.col(col);
        for (j, &rv) in r.iter().enumerate() {
            for (i, &lv) in l.iter().enumerate() {
                out.data[i + out.rows * j] += lv * rv;
            }
        }
    }
}

with_avx2!(
    /// Computes `out = left * right` (a x m times m x b). Each block of up
    /// to eight rows of an output column is summed in registers over the m
    /// columns of `left`, in order, and written once.
    product, (left: &Dense, right: &Dense, out: &mut Dense) -> (), {
    #[inline(always)]
    fn rows<const WIDTH: usize>(left: &Dense, right: &[f64], out: &mut [f64], first: usize) {
        let mut sums = [0.0f64; WIDTH];
        for (m, &scale) in right.iter().enumerate() {
            let values = &left.data[m * left.rows + first..m * left.rows + first + WIDTH];
            for (sum, v) in sums.iter_mut().zip(values) {
                *sum += v * scale;
            }
        }
        out[first..first + WIDTH].copy_from_slice(&sums);
    }
    debug_assert_eq!(left.cols, right.rows);
    let height = left.rows;
    for j in 0..right.cols {
        let (column, o) = (right.col(j), &mut out.data[j * height..(j + 1) * height]);
        let mut first = 0;
        while first + 8 <= height {
            rows::<8>(left, column, o, first);
            first += 8;
        }
        while first + 4 <= height {
            rows::<4>(left, column, o, first);
            first += 4;
        }
        while first < height {
            rows::<1>(left, column, o, first);
            first += 1;
        }
    }
});

/// Waits for scoped worker threads on the calling thread, polling
/// `interrupted` every 20 ms and setting `cancel` when it returns true, so
/// that R's interrupt check stays on R's thread while the workers run.
pub fn wait_polling_interrupts<T>(
    handles: &[std::thread::ScopedJoinHandle<'_, T>],
    interrupted: &mut dyn FnMut() -> bool,
    cancel: &std::sync::atomic::AtomicBool,
) {
    while !handles.iter().all(|handle| handle.is_finished()) {
        if interrupted() {
            cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Splits the column range `0..columns` into at most `threads` contiguous
/// chunks, in order. One chunk when `threads` is 1 or the work is small.
pub fn column_chunks(columns: usize, threads: usize, work_per_column: usize) -> Vec<std::ops::Range<usize>> {
    // Below this much work a thread costs more than it saves.
    const MIN_WORK_PER_THREAD: usize = 200_000;
    let total = columns.saturating_mul(work_per_column.max(1));
    let useful = (total / MIN_WORK_PER_THREAD).max(1);
    let count = threads.max(1).min(useful).min(columns.max(1));
    let base = columns / count;
    let extra = columns % count;
    let mut ranges = Vec::with_capacity(count);
    let mut start = 0;
    for i in 0..count {
        let len = base + usize::from(i < extra);
        ranges.push(start..start + len);
        start += len;
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_divide_floors_and_zeroes() {
        assert_eq!(safe_divide(1.0, 0.0, 1e-10), 1e10);
        assert_eq!(safe_divide(f64::INFINITY, 1.0, 1e-10), 0.0);
        assert_eq!(safe_divide(f64::NAN, 1.0, 1e-10), 0.0);
        assert_eq!(safe_divide(6.0, 3.0, 1e-10), 2.0);
    }

    #[test]
    fn small_products_match_hand_values() {
        let a = Dense::from_vec(2, 2, vec![1.0, 2.0, 3.0, 4.0]); // [[1,3],[2,4]]
        let b = Dense::from_vec(2, 1, vec![5.0, 6.0]);
        let mut out = Dense::zeros(2, 1);
        product(&a, &b, &mut out);
        assert_eq!(out.data, vec![23.0, 34.0]);
        let mut cross = Dense::zeros(2, 1);
        cross_product(&a, &b, &mut cross);
        assert_eq!(cross.data, vec![17.0, 39.0]);
        let mut outer = Dense::zeros(2, 2);
        outer_product_sum(&a, &a, &mut outer); // a a'
        assert_eq!(outer.data, vec![10.0, 14.0, 14.0, 20.0]);
    }

    #[test]
    fn summary_counts_and_locates() {
        let summary = summarise_values(&[1.0, f64::NAN, -2.0, 0.0, f64::INFINITY, 3.0, -1.0]);
        assert_eq!(summary.nonfinite, 2);
        assert_eq!(summary.first_nonfinite, Some(1));
        assert_eq!(summary.negative, 2);
        assert_eq!(summary.first_negative, Some(2));
        assert_eq!(summary.zeros, 1);
        assert_eq!(summary.max, 3.0);
        assert!((summary.mean - 0.2).abs() < 1e-12);
        let huge = summarise_values(&[1e308, 1e308]);
        assert!((huge.mean / 1e308 - 1.0).abs() < 1e-12);
        let tiny = summarise_values(&[1e-300, 3e-300]);
        assert!((tiny.mean / 2e-300 - 1.0).abs() < 1e-12);
    }

    #[test]
    fn sum_of_squares_matches_plain_sum() {
        let values: Vec<f64> = (0..37).map(|i| i as f64 * 0.5 - 3.0).collect();
        let plain: f64 = values.iter().map(|v| v * v).sum();
        assert!((sum_of_squares(&values) - plain).abs() < 1e-12 * plain);
    }

    #[test]
    fn column_chunks_cover_range() {
        for &(columns, threads) in &[(10usize, 3usize), (1, 4), (1_000_000, 2), (0, 2)] {
            let chunks = column_chunks(columns, threads, 1000);
            let covered: usize = chunks.iter().map(|r| r.len()).sum();
            assert_eq!(covered, columns);
            assert!(chunks.len() <= threads.max(1));
        }
    }
}
