//! Greedy selection over a row of logits.

/// Index of the largest value; the first one on ties, NaN never wins.
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in row.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best
}

/// Difference between the largest and the second largest value (the greedy decision's margin).
pub fn top2_margin(row: &[f32]) -> f32 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &v in row {
        if v > a {
            b = a;
            a = v;
        } else if v > b {
            b = v;
        }
    }
    a - b
}

/// [`argmax`] of a row split into consecutive column slices, from each slice's
/// `(first column, argmax of the slice, its value)` in column order — what each rank of a
/// vocab-parallel lm_head reports. A slice without a value above -inf reports `(_, 0, -inf)`, as
/// [`argmax`] and the device argmax give; strict `>` keeps the lowest column on ties across slices.
pub fn argmax_of_slices(slices: impl IntoIterator<Item = (usize, usize, f32)>) -> usize {
    let (mut best, mut best_v) = (0, f32::NEG_INFINITY);
    for (start, i, v) in slices {
        if v > best_v {
            best = start + i;
            best_v = v;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value [`argmax`] picks (-inf when no value exceeds it), as the device reports it.
    fn best_value(row: &[f32]) -> f32 {
        let v = row[argmax(row)];
        if v > f32::NEG_INFINITY { v } else { f32::NEG_INFINITY }
    }

    #[test]
    fn argmax_takes_the_first_maximum_and_never_nan_or_minus_inf() {
        let (nan, inf) = (f32::NAN, f32::INFINITY);
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[nan, 1.0, nan, 1.0]), 1);
        assert_eq!(argmax(&[nan, -inf, -inf]), 0, "no value above -inf: 0");
        assert_eq!(argmax(&[-inf, nan, -inf]), 0);
        assert_eq!(argmax(&[nan, nan]), 0);
        assert_eq!(argmax(&[-1.0, inf, inf]), 1);
        assert_eq!(argmax(&[-0.0, 0.0]), 0, "-0 and +0 are equal: the first");
    }

    #[test]
    fn argmax_of_slices_is_the_argmax_of_the_row() {
        let (nan, inf) = (f32::NAN, f32::INFINITY);
        let rows: Vec<Vec<f32>> = vec![
            vec![0.5, 2.0, -1.0, 2.0, 0.0, 3.0, 3.0, 1.0],
            vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
            vec![nan, -inf, 2.0, nan, 2.0, -inf],
            vec![nan, -inf, -inf, nan, -inf],
            vec![-inf, -inf, -inf, -inf],
            vec![nan, nan, nan, 7.0],
            vec![-0.0, 0.0, -0.0, 0.0],
            vec![-3.0, -2.0, -2.0, -5.0, inf, 1.0, inf],
        ];
        for row in &rows {
            let n = row.len();
            // Every way to cut the row into two or three consecutive slices.
            for a in 1..n {
                for b in a..n {
                    let cuts = [0, a, b, n];
                    let parts = cuts.windows(2).filter(|w| w[0] < w[1]).map(|w| {
                        let s = &row[w[0]..w[1]];
                        (w[0], argmax(s), best_value(s))
                    });
                    assert_eq!(argmax_of_slices(parts), argmax(row), "{row:?} cut at {a}, {b}");
                }
            }
        }
    }
}
