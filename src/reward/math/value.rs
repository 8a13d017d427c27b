//! Numbers for `expr`: an f64 always, plus an exact rational (i128) while the
//! arithmetic stays rational and small, so that integers compare exactly even
//! beyond 2^53 and `\frac{6}{8}` is exactly `0.75`.

/// An exact rational: reduced, denominator positive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ratio {
    n: i128,
    d: i128,
}

impl Ratio {
    fn new(n: i128, d: i128) -> Option<Self> {
        if d == 0 {
            return None;
        }
        let (n, d) = if d < 0 {
            (n.checked_neg()?, d.checked_neg()?)
        } else {
            (n, d)
        };
        let g = gcd(n.unsigned_abs(), d.unsigned_abs());
        let g = i128::try_from(g).ok()?.max(1);
        Some(Self { n: n / g, d: d / g })
    }

    pub(super) fn int(n: i128) -> Self {
        Self { n, d: 1 }
    }

    pub(super) fn is_integer(self) -> bool {
        self.d == 1
    }

    fn to_f64(self) -> f64 {
        self.n as f64 / self.d as f64
    }

    fn add(self, o: Self) -> Option<Self> {
        let n = self.n.checked_mul(o.d)?;
        Self::new(
            n.checked_add(o.n.checked_mul(self.d)?)?,
            self.d.checked_mul(o.d)?,
        )
    }

    fn sub(self, o: Self) -> Option<Self> {
        self.add(o.neg()?)
    }

    fn neg(self) -> Option<Self> {
        let n = self.n.checked_neg()?;
        Some(Self { n, d: self.d })
    }

    fn mul(self, o: Self) -> Option<Self> {
        Self::new(self.n.checked_mul(o.n)?, self.d.checked_mul(o.d)?)
    }

    fn div(self, o: Self) -> Option<Self> {
        Self::new(self.n.checked_mul(o.d)?, self.d.checked_mul(o.n)?)
    }

    /// Integer powers only, and small ones (`2^{10^9}` is left to f64).
    fn pow(self, e: Self) -> Option<Self> {
        if !e.is_integer() {
            return None;
        }
        let k = u32::try_from(e.n.unsigned_abs())
            .ok()
            .filter(|&k| k <= 512)?;
        let r = Self::new(self.n.checked_pow(k)?, self.d.checked_pow(k)?)?;
        if e.n < 0 {
            Self::int(1).div(r)
        } else {
            Some(r)
        }
    }

    fn sqrt(self) -> Option<Self> {
        Self::new(exact_sqrt(self.n)?, exact_sqrt(self.d)?)
    }
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn exact_sqrt(n: i128) -> Option<i128> {
    if n < 0 {
        return None;
    }
    let r = (n as f64).sqrt().round() as i128;
    (r.saturating_sub(1)..=r.saturating_add(1)).find(|&c| c >= 0 && c.checked_mul(c) == Some(n))
}

/// A value: always an f64, plus the exact rational when known.
#[derive(Debug, Clone, Copy)]
pub(super) struct Val {
    pub f: f64,
    pub q: Option<Ratio>,
}

impl Val {
    fn exact(q: Ratio) -> Self {
        Self {
            f: q.to_f64(),
            q: Some(q),
        }
    }

    pub(super) fn float(f: f64) -> Self {
        Self { f, q: None }
    }

    /// A numeric literal (`12`, `.5`, `1.5e-3`); `None` when it overflows f64: a
    /// 400-digit integer is not infinity, and two different ones must not be equal.
    pub(super) fn literal(lit: &str) -> Option<Self> {
        let f: f64 = lit.parse().ok()?;
        if !f.is_finite() {
            return None;
        }
        Some(decimal_ratio(lit).map_or(Self::float(f), Self::exact))
    }

    /// Exact where both sides are, else f64.
    fn combine(
        self,
        o: Self,
        exact: impl Fn(Ratio, Ratio) -> Option<Ratio>,
        float: impl Fn(f64, f64) -> f64,
    ) -> Self {
        let q = self.q.zip(o.q).and_then(|(a, b)| exact(a, b));
        q.map_or_else(|| Self::float(float(self.f, o.f)), Self::exact)
    }

    fn map(self, exact: impl Fn(Ratio) -> Option<Ratio>, float: impl Fn(f64) -> f64) -> Self {
        self.q
            .and_then(exact)
            .map_or_else(|| Self::float(float(self.f)), Self::exact)
    }

    pub(super) fn add(self, o: Self) -> Self {
        self.combine(o, Ratio::add, |a, b| a + b)
    }

    pub(super) fn sub(self, o: Self) -> Self {
        self.combine(o, Ratio::sub, |a, b| a - b)
    }

    pub(super) fn mul(self, o: Self) -> Self {
        self.combine(o, Ratio::mul, |a, b| a * b)
    }

    pub(super) fn div(self, o: Self) -> Self {
        self.combine(o, Ratio::div, |a, b| a / b)
    }

    pub(super) fn pow(self, o: Self) -> Self {
        self.combine(o, Ratio::pow, f64::powf)
    }

    pub(super) fn neg(self) -> Self {
        self.map(Ratio::neg, |a| -a)
    }

    pub(super) fn abs(self) -> Self {
        let negative = self.q.map_or(self.f < 0.0, |q| q.n < 0);
        if negative { self.neg() } else { self }
    }

    pub(super) fn sqrt(self) -> Self {
        self.map(Ratio::sqrt, f64::sqrt)
    }

    /// Divides by 100 (for percentages).
    pub(super) fn percent(self) -> Self {
        self.div(Self::exact(Ratio::int(100)))
    }

    fn non_negative_integer(self) -> Option<i128> {
        self.q.filter(|q| q.is_integer() && q.n >= 0).map(|q| q.n)
    }

    /// Exact while it fits i128 (n ≤ 33), f64 up to 170!, then infinite.
    pub(super) fn factorial(self) -> Self {
        let Some(n) = self.non_negative_integer() else {
            return Self::float(f64::NAN);
        };
        let mut exact = Some(Ratio::int(1));
        let mut f = 1.0f64;
        for i in 2..=n.min(171) {
            exact = exact.and_then(|e| e.mul(Ratio::int(i)));
            f *= i as f64;
        }
        exact.map_or(Self::float(f), Self::exact)
    }

    /// `n choose k` for integers n ≥ 0; 0 when k is out of range.
    pub(super) fn binomial(self, k: Self) -> Self {
        let (Some(n), Some(k)) = (self.non_negative_integer(), k.q.filter(|q| q.is_integer()))
        else {
            return Self::float(f64::NAN);
        };
        if k.n < 0 || k.n > n {
            return Self::exact(Ratio::int(0));
        }
        let k = k.n.min(n - k.n);
        if k > 10_000 {
            return Self::float(f64::NAN);
        }
        let mut exact = Some(Ratio::int(1));
        let mut f = 1.0f64;
        for i in 1..=k {
            let factor = Ratio::new(n - k + i, i);
            exact = exact.zip(factor).and_then(|(e, r)| e.mul(r));
            f *= (n - k + i) as f64 / i as f64;
        }
        exact.map_or(Self::float(f), Self::exact)
    }
}

/// `12.5e-3` → 125/10000, when it has at most 36 significant digits.
fn decimal_ratio(lit: &str) -> Option<Ratio> {
    let (mantissa, exp) = match lit.find(['e', 'E']) {
        Some(i) => (&lit[..i], lit[i + 1..].parse::<i32>().ok()?),
        None => (lit, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int_part}{frac_part}");
    if digits.is_empty() || digits.len() > 36 {
        return None;
    }
    let n: i128 = digits.parse().ok()?;
    let scale = exp.checked_sub(i32::try_from(frac_part.len()).ok()?)?;
    let ten = Ratio::int(10).pow(Ratio::int(i128::from(scale)))?;
    Ratio::int(n).mul(ten)
}
