//! A small parser and evaluator for the arithmetic in answers: numbers, `+ - * /`,
//! `^`, `\frac`, `\sqrt`, `\pi`, `\infty`, `!`, `\binom`, `|x|`, a few functions,
//! implicit multiplication (`2\pi`, `3x`) and single-letter variables.
//!
//! Values are `value::Val` (exact rationals where possible). Anything unsupported
//! makes `parse` return `None`, and the caller compares strings instead.

use super::normalize::listed;
use super::value::Val;
use std::collections::{BTreeMap, BTreeSet};

/// Nesting deeper than this is rejected rather than risking the stack.
const MAX_DEPTH: usize = 64;

const FUNCTIONS: &str = "sin cos tan sec csc cot arcsin arccos arctan ln log exp";

const GREEK: &str = concat!(
    "alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu ",
    "xi rho sigma tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Sigma Phi Psi ",
    "Omega",
);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

#[derive(Debug, Clone)]
enum Expr {
    Lit(Val),
    Var(String),
    Pi,
    Inf,
    Neg(Box<Expr>),
    Bin(Op, Box<Expr>, Box<Expr>),
    Call(String, Box<Expr>),
    Sqrt(Box<Expr>),
    Root(Box<Expr>, Box<Expr>),
    Abs(Box<Expr>),
    Fact(Box<Expr>),
    Binom(Box<Expr>, Box<Expr>),
}

/// A parsed expression with its free variables.
#[derive(Debug, Clone)]
pub(super) struct Parsed {
    root: Expr,
    pub vars: BTreeSet<String>,
    /// Contains `\infty`: an infinite value here is meant, not an overflow.
    pub has_infinity: bool,
}

impl Parsed {
    pub(super) fn eval(&self, env: &BTreeMap<String, f64>) -> Val {
        eval(&self.root, env)
    }
}

pub(super) fn parse(s: &str) -> Option<Parsed> {
    let mut p = Parser {
        toks: tokenize(s)?,
        pos: 0,
        depth: 0,
        vars: BTreeSet::new(),
        has_infinity: false,
    };
    let root = p.expr()?;
    (p.pos == p.toks.len()).then_some(Parsed {
        root,
        vars: p.vars,
        has_infinity: p.has_infinity,
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(String),
    Var(String),
    Cmd(String),
    Sym(char),
}

fn tokenize(s: &str) -> Option<Vec<Tok>> {
    if !s.is_ascii() {
        return None;
    }
    let b = s.as_bytes();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let run = |from: usize, pred: fn(&u8) -> bool| {
            from + b[from..].iter().take_while(|x| pred(x)).count()
        };
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            let end = number_end(b, i);
            push_number(&s[i..end], &mut toks);
            i = end;
        } else if c.is_ascii_alphabetic() {
            let end = run(i, u8::is_ascii_alphabetic);
            push_word(&s[i..end], &mut toks)?;
            i = end;
        } else if c == b'\\' {
            let end = run(i + 1, u8::is_ascii_alphabetic);
            toks.push(command_token(&s[i + 1..end])?);
            i = end;
        } else if b"+-*/^()[]{}!|".contains(&c) {
            toks.push(Tok::Sym(char::from(c)));
            i += 1;
        } else {
            return None;
        }
    }
    Some(toks)
}

/// Digits, an optional fraction part, an optional exponent (`1.5e-3`).
fn number_end(b: &[u8], start: usize) -> usize {
    let digits = |from: usize| {
        from + b[from.min(b.len())..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count()
    };
    let mut j = digits(start);
    if b.get(j) == Some(&b'.') {
        j = digits(j + 1);
    }
    if matches!(b.get(j), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(b.get(j + 1), Some(b'+' | b'-')));
        let exp_end = digits(j + 1 + sign);
        if exp_end > j + 1 + sign {
            j = exp_end;
        }
    }
    j
}

/// `\frac12` is `\frac{1}{2}`: a digit run right after `\frac` or `\binom` is one
/// digit per argument.
fn push_number(lit: &str, toks: &mut Vec<Tok>) {
    let after_two_arg = matches!(toks.last(), Some(Tok::Cmd(c)) if c == "frac" || c == "binom");
    if after_two_arg && lit.len() >= 2 && lit.bytes().all(|c| c.is_ascii_digit()) {
        let (first, rest) = lit.split_at(1);
        let (second, tail) = rest.split_at(1);
        toks.extend([first, second].map(|d| Tok::Num(d.to_string())));
        if !tail.is_empty() {
            toks.push(Tok::Num(tail.to_string()));
        }
    } else {
        toks.push(Tok::Num(lit.to_string()));
    }
}

/// Plain-text names (`pi`, `sqrt`, `inf`) or a product of single-letter variables.
/// Longer words (`Monday`) are not arithmetic: `None`, and the caller compares text.
fn push_word(word: &str, toks: &mut Vec<Tok>) -> Option<()> {
    match word {
        "pi" => toks.push(Tok::Cmd("pi".into())),
        "inf" | "infty" | "infinity" => toks.push(Tok::Cmd("infty".into())),
        "sqrt" => toks.push(Tok::Cmd("sqrt".into())),
        _ if listed(FUNCTIONS, word) => toks.push(Tok::Cmd(word.into())),
        _ if word.len() <= 3 => toks.extend(word.chars().map(|c| Tok::Var(c.to_string()))),
        _ => return None,
    }
    Some(())
}

fn command_token(name: &str) -> Option<Tok> {
    Some(match name {
        "cdot" | "times" | "ast" => Tok::Sym('*'),
        "div" => Tok::Sym('/'),
        "frac" | "sqrt" | "pi" | "infty" | "binom" | "tbinom" | "dbinom" => {
            Tok::Cmd(name.trim_start_matches(['t', 'd']).into())
        }
        _ if listed(FUNCTIONS, name) => Tok::Cmd(name.into()),
        _ if listed(GREEK, name) => Tok::Var(name.into()),
        _ => return None,
    })
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
    vars: BTreeSet<String>,
    has_infinity: bool,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn eat(&mut self, c: char) -> bool {
        let hit = self.peek() == Some(&Tok::Sym(c));
        self.pos += usize::from(hit);
        hit
    }

    fn expect(&mut self, c: char) -> Option<()> {
        self.eat(c).then_some(())
    }

    /// Guards recursion; failures abandon the whole parse, so no matching `leave`
    /// is needed on error paths.
    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn expr(&mut self) -> Option<Expr> {
        self.enter()?;
        let mut lhs = self.term()?;
        loop {
            let op = if self.eat('+') {
                Op::Add
            } else if self.eat('-') {
                Op::Sub
            } else {
                break;
            };
            lhs = Expr::Bin(op, Box::new(lhs), Box::new(self.term()?));
        }
        self.leave();
        Some(lhs)
    }

    fn term(&mut self) -> Option<Expr> {
        let mut lhs = self.unary()?;
        loop {
            let (op, rhs) = if self.eat('*') {
                (Op::Mul, self.unary()?)
            } else if self.eat('/') {
                (Op::Div, self.unary()?)
            } else if self.peek().is_some_and(starts_primary) {
                // Two bare numbers in a row (`2 3`) are not a product anyone writes.
                let prev_num = matches!(self.toks.get(self.pos.wrapping_sub(1)), Some(Tok::Num(_)));
                if prev_num && matches!(self.peek(), Some(Tok::Num(_))) {
                    return None;
                }
                (Op::Mul, self.power()?)
            } else {
                break;
            };
            lhs = Expr::Bin(op, Box::new(lhs), Box::new(rhs));
        }
        Some(lhs)
    }

    fn unary(&mut self) -> Option<Expr> {
        self.enter()?;
        let e = if self.eat('-') {
            Expr::Neg(Box::new(self.unary()?))
        } else if self.eat('+') {
            self.unary()?
        } else {
            self.power()?
        };
        self.leave();
        Some(e)
    }

    /// `^` binds tighter than a sign on its left and is right-associative. A plain
    /// exponent is a whole number (`2^10` = 1024: models write it meaning that).
    fn power(&mut self) -> Option<Expr> {
        let mut base = self.primary()?;
        while self.eat('!') {
            base = Expr::Fact(Box::new(base));
        }
        if !self.eat('^') {
            return Some(base);
        }
        let exp = if self.peek() == Some(&Tok::Sym('{')) {
            self.argument()?
        } else {
            self.unary()?
        };
        Some(Expr::Bin(Op::Pow, Box::new(base), Box::new(exp)))
    }

    fn primary(&mut self) -> Option<Expr> {
        self.enter()?;
        let tok = self.peek()?.clone();
        self.pos += 1;
        let e = match tok {
            Tok::Num(lit) => self.number(&lit)?,
            Tok::Var(v) => {
                self.vars.insert(v.clone());
                Expr::Var(v)
            }
            Tok::Sym('(') => self.closed_by(')')?,
            Tok::Sym('[') => self.closed_by(']')?,
            Tok::Sym('{') => self.closed_by('}')?,
            Tok::Sym('|') => Expr::Abs(Box::new(self.closed_by('|')?)),
            Tok::Cmd(c) => self.command(&c)?,
            Tok::Sym(_) => return None,
        };
        self.leave();
        Some(e)
    }

    fn closed_by(&mut self, close: char) -> Option<Expr> {
        let e = self.expr()?;
        self.expect(close)?;
        Some(e)
    }

    /// A literal; an integer directly followed by a proper `\frac{a}{b}` of integers
    /// is a mixed number (`2\frac{1}{2}` = 2.5), as answers write them.
    fn number(&mut self, lit: &str) -> Option<Expr> {
        let int = |s: &str| {
            s.bytes()
                .all(|c| c.is_ascii_digit())
                .then(|| s.parse::<u128>().ok())
                .flatten()
        };
        let mut value = Val::literal(lit)?;
        if int(lit).is_some() {
            let rest = &self.toks[self.pos..];
            let (num, den, used) = match rest {
                [
                    Tok::Cmd(f),
                    Tok::Sym('{'),
                    Tok::Num(a),
                    Tok::Sym('}'),
                    Tok::Sym('{'),
                    Tok::Num(b),
                    Tok::Sym('}'),
                    ..,
                ] if f == "frac" => (a, b, 7),
                [Tok::Cmd(f), Tok::Num(a), Tok::Num(b), ..] if f == "frac" => (a, b, 3),
                _ => return Some(Expr::Lit(value)),
            };
            if let (Some(a), Some(b)) = (int(num), int(den))
                && a < b
            {
                let frac = Val::literal(num)?.div(Val::literal(den)?);
                value = value.add(frac);
                self.pos += used;
            }
        }
        Some(Expr::Lit(value))
    }

    fn command(&mut self, name: &str) -> Option<Expr> {
        Some(match name {
            "pi" => Expr::Pi,
            "infty" => {
                self.has_infinity = true;
                Expr::Inf
            }
            "frac" => {
                let num = self.argument()?;
                Expr::Bin(Op::Div, Box::new(num), Box::new(self.argument()?))
            }
            "binom" => {
                let n = self.argument()?;
                Expr::Binom(Box::new(n), Box::new(self.argument()?))
            }
            "sqrt" if self.eat('[') => {
                let index = self.closed_by(']')?;
                Expr::Root(Box::new(index), Box::new(self.argument()?))
            }
            "sqrt" => Expr::Sqrt(Box::new(self.argument()?)),
            _ => Expr::Call(name.to_string(), Box::new(self.argument()?)),
        })
    }

    /// A command argument: `{…}` or a single primary (`\frac12`, `\sqrt2`, `\sin x`).
    fn argument(&mut self) -> Option<Expr> {
        if self.eat('{') {
            self.closed_by('}')
        } else {
            self.primary()
        }
    }
}

fn starts_primary(t: &Tok) -> bool {
    matches!(
        t,
        Tok::Num(_) | Tok::Var(_) | Tok::Cmd(_) | Tok::Sym('(' | '[' | '{')
    )
}

fn eval(e: &Expr, env: &BTreeMap<String, f64>) -> Val {
    match e {
        Expr::Lit(v) => *v,
        Expr::Var(name) => Val::float(env.get(name).copied().unwrap_or(f64::NAN)),
        Expr::Pi => Val::float(std::f64::consts::PI),
        Expr::Inf => Val::float(f64::INFINITY),
        Expr::Neg(x) => eval(x, env).neg(),
        Expr::Bin(op, a, b) => {
            let (a, b) = (eval(a, env), eval(b, env));
            match op {
                Op::Add => a.add(b),
                Op::Sub => a.sub(b),
                Op::Mul => a.mul(b),
                Op::Div => a.div(b),
                Op::Pow => a.pow(b),
            }
        }
        Expr::Call(name, x) => Val::float(call(name, eval(x, env).f)),
        Expr::Sqrt(x) => eval(x, env).sqrt(),
        Expr::Root(n, x) => Val::float(root(eval(n, env).f, eval(x, env).f)),
        Expr::Abs(x) => eval(x, env).abs(),
        Expr::Fact(x) => eval(x, env).factorial(),
        Expr::Binom(n, k) => eval(n, env).binomial(eval(k, env)),
    }
}

/// The real `n`-th root; odd roots of negatives are real.
fn root(n: f64, x: f64) -> f64 {
    let odd = n.fract() == 0.0 && n.rem_euclid(2.0) == 1.0;
    if x < 0.0 && odd {
        -(-x).powf(1.0 / n)
    } else {
        x.powf(1.0 / n)
    }
}

fn call(name: &str, x: f64) -> f64 {
    match name {
        "sin" => x.sin(),
        "cos" => x.cos(),
        "tan" => x.tan(),
        "sec" => 1.0 / x.cos(),
        "csc" => 1.0 / x.sin(),
        "cot" => 1.0 / x.tan(),
        "arcsin" => x.asin(),
        "arccos" => x.acos(),
        "arctan" => x.atan(),
        "ln" => x.ln(),
        "log" => x.log10(),
        "exp" => x.exp(),
        _ => f64::NAN,
    }
}
