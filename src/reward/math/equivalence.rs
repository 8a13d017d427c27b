//! Equality of two answers by value.
//!
//! Both sides are normalised (`normalize`), then read as a shape: a union of
//! intervals, a set `\{…\}`, a bracketed tuple or interval, a bare list (`1, 2`,
//! `3 or 4`, `3 \pm 1`), or a single element. Tuples and intervals compare in order
//! with matching brackets; sets and lists compare as multisets, so a list never
//! equals a single value. Elements compare as equations, single-variable assignments
//! (`x = 5` equals `5`), percentages, or expressions: constants by value, expressions
//! with variables by evaluating both at fixed pseudo-random points.
//!
//! Numbers: two exact integers must be equal, and an exact non-integer (0.999999,
//! 1000000.5) never equals a non-zero integer; otherwise relative `tolerance` (0.3333333
//! equals 1/3 at the default 1e-6; it is loose for large non-integers). An absolute 1e-9
//! applies only when one side is exactly 0, so that tiny answers (6.6e-34) are not
//! all equal to each other. Percent: `50%` equals `50` (the sign is dropped) and
//! `0.5` (value/100); `50` does not equal `0.5`.

use super::MathOptions;
use super::expr::{Parsed, parse};
use super::normalize::{normalize, squash, strip_units};
use super::value::{Ratio, Val};
use std::collections::{BTreeMap, BTreeSet};

/// Longer inputs are only compared verbatim (cost bound).
const MAX_INPUT_LEN: usize = 20_000;
/// Longer normalised answers are only compared as strings (nobody's answer is this long).
const MAX_PARSE_LEN: usize = 1000;
/// Lists longer than this only match verbatim.
const MAX_ITEMS: usize = 64;
const MAX_SHAPE_DEPTH: usize = 8;
const ABS_TOLERANCE: f64 = 1e-9;
/// Points at which expressions with variables are compared.
const TRIALS: u64 = 16;

/// Whether `predicted` denotes the same answer as `reference`. Never panics.
pub fn answers_match(predicted: &str, reference: &str, options: &MathOptions) -> bool {
    if predicted.len() > MAX_INPUT_LEN || reference.len() > MAX_INPUT_LEN {
        return !predicted.trim().is_empty() && predicted.trim() == reference.trim();
    }
    let (p, r) = (normalize(predicted), normalize(reference));
    if p.is_empty() || r.is_empty() {
        return false;
    }
    if squash(&p) == squash(&r) {
        return true;
    }
    if p.len() > MAX_PARSE_LEN || r.len() > MAX_PARSE_LEN {
        return false;
    }
    Cmp { options }.shapes(&shape(&p, 0), &shape(&r, 0))
}

#[derive(Debug, Clone, PartialEq)]
enum Shape {
    Single(String),
    /// Tuple or interval: brackets and order matter.
    Ordered {
        open: u8,
        close: u8,
        items: Vec<Shape>,
    },
    /// Set or bare list: order does not matter, multiplicity does.
    Unordered(Vec<Shape>),
    /// Intervals joined by `\cup`, in any order.
    Union(Vec<Shape>),
}

fn shape(s: &str, depth: usize) -> Shape {
    let s = strip_membership(s.trim());
    if depth >= MAX_SHAPE_DEPTH {
        return Shape::Single(s.to_string());
    }
    let many = |parts: Vec<&str>| parts.into_iter().map(|p| shape(p, depth + 1)).collect();
    let pieces = split_top(s, Sep::Cup);
    if pieces.len() > 1 {
        return Shape::Union(many(pieces));
    }
    if let Some(inner) = s.strip_prefix("\\{").and_then(|r| r.strip_suffix("\\}"))
        && wraps_whole(s)
    {
        let items = split_top(inner, Sep::Comma);
        let items = if inner.trim().is_empty() {
            Vec::new()
        } else {
            items
        };
        return Shape::Unordered(many(items));
    }
    let b = s.as_bytes();
    if let (Some(&open @ (b'(' | b'[')), Some(&close @ (b')' | b']'))) = (b.first(), b.last())
        && wraps_whole(s)
    {
        let items = split_top(&s[1..s.len() - 1], Sep::Comma);
        if items.len() > 1 {
            return Shape::Ordered {
                open,
                close,
                items: many(items),
            };
        }
    }
    let items = split_top(s, Sep::Comma);
    if items.len() > 1 {
        return Shape::Unordered(many(items));
    }
    match expand_plus_minus(s) {
        Some((plus, minus)) => Shape::Unordered(vec![Shape::Single(plus), Shape::Single(minus)]),
        None => Shape::Single(s.to_string()),
    }
}

/// `x \in [0, 1]` → `[0, 1]`.
fn strip_membership(s: &str) -> &str {
    let b = s.as_bytes();
    if b.first().is_some_and(u8::is_ascii_alphabetic)
        && let Some(rest) = s[1..].trim_start().strip_prefix("\\in")
        && !rest.starts_with(|c: char| c.is_ascii_alphabetic())
    {
        return rest.trim();
    }
    s
}

/// Whether the bracket opening `s` closes at its last byte (not `(1)+(2)`).
fn wraps_whole(s: &str) -> bool {
    let mut depth = 0i32;
    for (i, c) in s.bytes().enumerate() {
        match c {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            _ => continue,
        }
        if depth <= 0 {
            return i + 1 == s.len();
        }
    }
    false
}

#[derive(Clone, Copy)]
enum Sep {
    Comma,
    Cup,
}

/// Splits at depth-0 separators (commas and semicolons, or `\cup`).
fn split_top(s: &str, sep: Sep) -> Vec<&str> {
    let b = s.as_bytes();
    let mut parts = Vec::new();
    let (mut depth, mut start, mut i) = (0i32, 0, 0);
    while i < b.len() {
        match b[i] {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            _ => {}
        }
        let width = match sep {
            _ if depth != 0 => 0,
            Sep::Comma if matches!(b[i], b',' | b';') => 1,
            Sep::Cup if b[i..].starts_with(b"\\cup") => 4,
            _ => 0,
        };
        if width > 0 {
            parts.push(&s[start..i]);
            start = i + width;
        }
        i += width.max(1);
    }
    parts.push(&s[start..]);
    parts
}

/// `a \pm b` is the two values `a + b` and `a - b`.
fn expand_plus_minus(s: &str) -> Option<(String, String)> {
    let at = s.find("\\pm")?;
    let after = &s[at + 3..];
    if after.starts_with(|c: char| c.is_ascii_alphabetic()) || after.contains("\\pm") {
        return None;
    }
    let with = |sign: &str| format!("{}{sign}{after}", &s[..at]);
    Some((with("+"), with("-")))
}

struct Cmp<'a> {
    options: &'a MathOptions,
}

impl Cmp<'_> {
    fn shapes(&self, p: &Shape, r: &Shape) -> bool {
        match (p, r) {
            (Shape::Single(a), Shape::Single(b)) => self.elements(a, b),
            (
                Shape::Ordered {
                    open: o1,
                    close: c1,
                    items: xs,
                },
                Shape::Ordered {
                    open: o2,
                    close: c2,
                    items: ys,
                },
            ) => {
                o1 == o2
                    && c1 == c2
                    && xs.len() == ys.len()
                    && xs.iter().zip(ys).all(|(x, y)| self.shapes(x, y))
            }
            (Shape::Unordered(xs), Shape::Unordered(ys)) | (Shape::Union(xs), Shape::Union(ys)) => {
                self.multisets(xs, ys)
            }
            // `\{5\}` and `5` are the same single answer.
            (Shape::Unordered(xs), single @ Shape::Single(_)) => {
                xs.len() == 1 && self.shapes(&xs[0], single)
            }
            (single @ Shape::Single(_), Shape::Unordered(ys)) => {
                ys.len() == 1 && self.shapes(single, &ys[0])
            }
            _ => false,
        }
    }

    /// Same size and a one-to-one matching (greedy: items are far apart in practice).
    fn multisets(&self, xs: &[Shape], ys: &[Shape]) -> bool {
        if xs.len() != ys.len() || xs.len() > MAX_ITEMS {
            return false;
        }
        let mut used = vec![false; ys.len()];
        xs.iter().all(|x| {
            let hit = (0..ys.len()).find(|&j| !used[j] && self.shapes(x, &ys[j]));
            hit.map(|j| used[j] = true).is_some()
        })
    }

    /// Equations compare side by side (either orientation); a single-variable
    /// assignment `x = 5` equals its value `5`.
    fn elements(&self, p: &str, r: &str) -> bool {
        if squash(p) == squash(r) {
            return true;
        }
        match (equation(p), equation(r)) {
            (Some((l1, r1)), Some((l2, r2))) => {
                (self.values(l1, l2) && self.values(r1, r2))
                    || (self.values(l1, r2) && self.values(r1, l2))
            }
            (Some((lhs, rhs)), None) => self.states_value(lhs, rhs) && self.values(rhs, r),
            (None, Some((lhs, rhs))) => is_single_variable(lhs) && self.values(p, rhs),
            (None, None) => self.values(p, r),
        }
    }

    /// Whether a predicted `lhs = rhs` states the value `rhs`: `x = 5`, a label for a
    /// constant (`f(2) = 5`, `AB = 5`, `a + b = 5`), or a true equation of constants
    /// (`6 \times 7 = 42`; `5 = 7` states nothing).
    fn states_value(&self, lhs: &str, rhs: &str) -> bool {
        if is_single_variable(lhs) {
            return true;
        }
        let constant = |s: &str| parse(&strip_units(s)).map(|p| p.vars.is_empty());
        match (constant(lhs), constant(rhs)) {
            (Some(true), Some(true)) => self.values(lhs, rhs),
            (Some(false) | None, Some(true)) => true,
            _ => false,
        }
    }

    fn values(&self, p: &str, r: &str) -> bool {
        let (p, p_pct) = split_percent(&strip_units(p));
        let (r, r_pct) = split_percent(&strip_units(r));
        if let (Some(a), Some(b)) = (plain_integer(&p), plain_integer(&r))
            && !p_pct
            && !r_pct
        {
            return a == b;
        }
        // Words are text, not products of letters ("on" is not "no").
        if is_word(&p) && is_word(&r) {
            return text_equal(&p, &r);
        }
        let (Some(ep), Some(er)) = (parse(&p), parse(&r)) else {
            return text_equal(&p, &r);
        };
        let (p_scale, r_scale) = (p_pct && !r_pct, r_pct && !p_pct);
        self.expressions(&ep, &er, false, false)
            || ((p_scale || r_scale) && self.expressions(&ep, &er, p_scale, r_scale))
    }

    fn expressions(&self, p: &Parsed, r: &Parsed, p_pct: bool, r_pct: bool) -> bool {
        let scale = |v: Val, pct: bool| if pct { v.percent() } else { v };
        let vars: BTreeSet<&String> = p.vars.iter().chain(&r.vars).collect();
        if vars.is_empty() {
            let env = BTreeMap::new();
            let (a, b) = (scale(p.eval(&env), p_pct), scale(r.eval(&env), r_pct));
            return self.numbers(a, b, p.has_infinity && r.has_infinity);
        }
        // Evaluation order differs between equal expressions: allow for rounding.
        let tolerance = self.options.tolerance.max(1e-9);
        let mut agreeing = 0;
        for trial in 0..TRIALS {
            let env = vars
                .iter()
                .map(|v| ((*v).clone(), sample(v, trial)))
                .collect();
            let (a, b) = (scale(p.eval(&env), p_pct).f, scale(r.eval(&env), r_pct).f);
            match (a.is_finite(), b.is_finite()) {
                (true, true) if self.close_within(a, b, tolerance) => agreeing += 1,
                (false, false) => {}
                _ => return false,
            }
        }
        agreeing >= 3
    }

    fn numbers(&self, a: Val, b: Val, infinity_meant: bool) -> bool {
        if let (Some(x), Some(y)) = (a.q, b.q) {
            if x.is_integer() && y.is_integer() {
                return x == y;
            }
            // An exact non-integer never equals a non-zero integer: with the relative
            // tolerance, 1000000.5 would be paid as both 1000000 and 1000001. (Zero
            // keeps the absolute tolerance below.)
            let zero = Ratio::int(0);
            if x.is_integer() != y.is_integer() && x != zero && y != zero {
                return false;
            }
        }
        if !a.f.is_finite() || !b.f.is_finite() {
            // Overflow (10^{400}) is not a value; only a written `\infty` is.
            return infinity_meant && a.f.is_infinite() && a.f == b.f;
        }
        self.close(a.f, b.f)
    }

    fn close(&self, a: f64, b: f64) -> bool {
        self.close_within(a, b, self.options.tolerance)
    }

    fn close_within(&self, a: f64, b: f64, tolerance: f64) -> bool {
        let diff = (a - b).abs();
        let scale = a.abs().max(b.abs());
        // The slack absorbs the rounding of a difference right at the tolerance.
        diff <= tolerance * scale * (1.0 + 1e-9)
            || ((a == 0.0 || b == 0.0) && diff <= ABS_TOLERANCE)
    }
}

/// `lhs = rhs` when there is exactly one `=` (and it is not part of `<=`, `>=`, `!=`).
fn equation(s: &str) -> Option<(&str, &str)> {
    let at = s.find('=')?;
    let (lhs, rhs) = (&s[..at], &s[at + 1..]);
    let relational = lhs.ends_with(['<', '>', '!']) || rhs.contains('=');
    (!relational).then(|| (lhs.trim(), rhs.trim()))
}

/// `x`, `\theta`, `x_1`, `x_{12}`.
fn is_single_variable(s: &str) -> bool {
    let s = s.trim();
    let (name, sub) = s.split_once('_').unwrap_or((s, ""));
    let sub = sub.trim_start_matches('{').trim_end_matches('}');
    let letter = name.len() == 1 && name.bytes().all(|c| c.is_ascii_alphabetic());
    let greek = name
        .strip_prefix('\\')
        .is_some_and(|g| !g.is_empty() && g.bytes().all(|c| c.is_ascii_alphabetic()));
    (letter || greek) && sub.bytes().all(|c| c.is_ascii_alphanumeric())
}

fn split_percent(s: &str) -> (String, bool) {
    let t = s.trim();
    match t.strip_suffix('%') {
        Some(rest) => (rest.trim().to_string(), true),
        None => (t.to_string(), false),
    }
}

/// Canonical digits of a plain integer (`-007` → `-7`), compared as text so that
/// integers too long for any float still compare exactly.
fn plain_integer(s: &str) -> Option<String> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let digits = digits.trim_start_matches('0');
    Some(match (neg, digits) {
        (_, "") => "0".to_string(),
        (true, d) => format!("-{d}"),
        (false, d) => d.to_string(),
    })
}

/// A word of two or more letters (`Monday`, `yes`); single letters are variables.
fn is_word(s: &str) -> bool {
    s.len() >= 2 && s.bytes().all(|c| c.is_ascii_alphabetic())
}

/// Last resort for non-arithmetic answers; words compare case-insensitively.
fn text_equal(a: &str, b: &str) -> bool {
    let (a, b) = (squash(a), squash(b));
    if a.is_empty() || b.is_empty() {
        return false;
    }
    let wordy = |s: &str| s.chars().all(char::is_alphabetic);
    a == b || (wordy(&a) && wordy(&b) && a.to_lowercase() == b.to_lowercase())
}

/// A deterministic value in ±[0.5, 3) for variable `name` at `trial` (splitmix64 of
/// an FNV hash): away from 0, both signs (so `|x|` differs from `x`), reproducible.
fn sample(name: &str, trial: u64) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        h = (h ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = h ^ trial.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let magnitude = 0.5 + 2.5 * ((z >> 11) as f64 / (1u64 << 53) as f64);
    if z & 1 == 0 { magnitude } else { -magnitude }
}
