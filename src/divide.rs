//! Division by one divisor, many times, bit for bit what `/` gives, for about a third of a
//! division's cost: the attention summary divides every pixel of every gate's map by the
//! map's sum and by the number of gates, the preprocessing every pixel of the model image by
//! its range, and their results must stay exactly what they were.
//!
//! With `y = 1/d` correctly rounded and `q = a * y` within an ulp of `a / d`, the remainder
//! `a - q * d` is exact in one fused multiply-add, and `q + remainder * y` rounds to the
//! correctly rounded quotient (Markstein's theorem; Muller et al., Handbook of
//! Floating-Point Arithmetic, 2nd ed., section 4.7), provided nothing underflows or
//! overflows. Hence the ranges: divisors within `1e-90 ..= 1e90`, dividends zero or of
//! magnitude `2^-300 ..= 2^140` (sums and products of float32 values are), where the
//! quotient, the remainder and its product with `y` stay normal numbers.

/// A divisor with its reciprocal.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Divisor {
    d: f64,
    recip: f64,
}

impl Divisor {
    /// None for a divisor outside the range the shortcut is exact in (divide with `/`).
    pub(crate) fn new(d: f64) -> Option<Self> {
        const LIMIT: f64 = 1e90;
        (1.0 / LIMIT..=LIMIT)
            .contains(&d)
            .then(|| Divisor { d, recip: 1.0 / d })
    }

    /// `a / d` for a non-negative `a` in the module's range, as `/` rounds it (but for the
    /// sign of a zero: -0.0 gives +0.0).
    #[inline]
    pub(crate) fn divide(self, a: f64) -> f64 {
        let q = a * self.recip;
        let remainder = (-q).mul_add(self.d, a);
        remainder.mul_add(self.recip, q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shortcut is `/`, bit for bit, on ten million pairs: float32 dividends of every
    /// magnitude (subnormal ones too) and float64 ones of random significand over the whole
    /// range, divided by divisors of random significand (those just above a power of two
    /// and just below the next, where the reciprocal rounds the most, included) and by
    /// small integers.
    #[test]
    fn divide_is_exactly_division() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let significand = |bits: u64| f64::from_bits((bits & ((1 << 52) - 1)) | 1f64.to_bits());
        for i in 0..10_000_000u64 {
            let a = if i % 2 == 0 {
                f64::from(f32::from_bits(next() as u32 & 0x7f7f_ffff))
            } else {
                significand(next()) * 2f64.powi((next() % 440) as i32 - 300)
            };
            let d = match i % 4 {
                0 => f64::from((1 + next() % 8) as u32),
                1 => significand(next() & 0xff) * 2f64.powi((next() % 590) as i32 - 295),
                2 => {
                    (2.0 - significand(next() & 0xff) / 1e13)
                        * 2f64.powi((next() % 590) as i32 - 296)
                }
                _ => significand(next()) * 2f64.powi((next() % 590) as i32 - 295),
            };
            let by = Divisor::new(d).expect("a divisor in range");
            let (want, got) = (a / d, by.divide(a));
            assert_eq!(want.to_bits(), got.to_bits(), "{a:e} / {d:e}");
        }
    }

    #[test]
    fn divisors_out_of_range_are_refused() {
        for d in [0.0, -1.0, 1e-91, 1e91, f64::INFINITY, f64::NAN] {
            assert!(Divisor::new(d).is_none(), "{d}");
        }
        assert!(Divisor::new(1e-90).is_some() && Divisor::new(1e90).is_some());
    }
}
