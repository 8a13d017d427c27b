//! Presentation clean-up applied to both sides before comparing: unicode operators,
//! math delimiters, LaTeX spacing and sizing, `\text{}`-like wrappers, degree signs,
//! "or"/"and" as list separators, thousands separators, units after a number.
//! Nothing here decides equality; `equivalence` and `expr` do.

/// `\text{}` inside `\text{}` deeper than this is left as is.
const MAX_DEPTH: usize = 8;
/// A wrapper's argument longer than this is not unwrapped (bounds the cost of many
/// unbalanced `\text{` in one long answer).
const MAX_ARGUMENT_LEN: usize = 4096;

/// Commands whose braced argument is kept and the command dropped.
const UNWRAP: &str = concat!(
    "text textbf textit textrm textnormal textsf mathrm mathbf mathit mathsf mbox hbox ",
    "boxed fbox operatorname",
);

/// Sizing and style commands that carry no value.
const DROP: &str = concat!(
    "left right big Big bigg Bigg bigl bigr Bigl Bigr displaystyle textstyle ",
    "circ degree degrees",
);

/// Whether `word` is one of the space-separated `words`.
pub(super) fn listed(words: &str, word: &str) -> bool {
    words.split_whitespace().any(|w| w == word)
}

/// Normalises one answer string.
pub(super) fn normalize(s: &str) -> String {
    let s = map_unicode(s);
    let s = strip_degree_marks(&s);
    let s = latex_pass(&s, 0);
    let s = words_to_separators(&s);
    let s = remove_thousands_separators(&s);
    s.trim().trim_end_matches('.').trim().to_string()
}

/// Without whitespace: the form two strings are compared in when nothing else applies.
pub(super) fn squash(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

/// Index of the `}` closing the `{` at byte `open`, skipping escaped braces (`\{`);
/// `None` when unbalanced within `limit` bytes.
pub(super) fn matching_brace(s: &str, open: usize, limit: usize) -> Option<usize> {
    let b = s.as_bytes();
    let end = b.len().min(open.saturating_add(limit));
    let mut depth = 0usize;
    let mut i = open;
    while i < end {
        match b[i] {
            b'\\' => i += 1,
            b'{' => depth += 1,
            b'}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

fn map_unicode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\u{2212}' | '\u{FE63}' | '\u{FF0D}' => out.push('-'),
            '×' => out.push_str(" \\times "),
            '÷' => out.push_str(" \\div "),
            '·' | '⋅' => out.push_str(" \\cdot "),
            'π' => out.push_str(" \\pi "),
            '∞' => out.push_str(" \\infty "),
            '√' => out.push_str(" \\sqrt "),
            '±' => out.push_str(" \\pm "),
            '∪' => out.push_str(" \\cup "),
            '°' => {}
            '，' => out.push(','),
            c if c.is_whitespace() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn strip_degree_marks(s: &str) -> String {
    let mut s = s.to_string();
    for mark in [
        "^{\\circ}",
        "^{ \\circ }",
        "^{\\circ }",
        "^{ \\circ}",
        "^\\circ",
        "^{o}",
    ] {
        if s.contains(mark) {
            s = s.replace(mark, "");
        }
    }
    s
}

/// One pass over LaTeX commands and `$`; wrappers recurse into their argument.
fn latex_pass(s: &str, depth: usize) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find(['\\', '$']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(after) = tail.strip_prefix('$') {
            rest = after;
            continue;
        }
        let body = &tail[1..];
        let letters = body.bytes().take_while(u8::is_ascii_alphabetic).count();
        let len = if letters > 0 {
            letters
        } else {
            body.chars().next().map_or(0, char::len_utf8)
        };
        let (name, after) = body.split_at(len);
        rest = apply_command(name, after, &mut out, depth);
    }
    out.push_str(rest);
    out
}

/// Text commands whose argument may be the units of the value before it.
const TEXT: &str = "text textrm textnormal mathrm mbox hbox";

/// Writes the replacement for `\name` to `out` and returns the input left to scan.
fn apply_command<'a>(name: &str, after: &'a str, out: &mut String, depth: usize) -> &'a str {
    if listed(TEXT, name)
        && let Some(rest) = text_units(after, out)
    {
        out.push(' ');
        return rest;
    }
    match name {
        "!" | "$" | "(" | ")" | "[" | "]" | "" => after,
        "," | ";" | ":" | " " | "quad" | "qquad" | "enspace" | "thinspace" => {
            out.push(' ');
            after
        }
        "%" => {
            out.push('%');
            after
        }
        "dfrac" | "tfrac" | "cfrac" => {
            out.push_str("\\frac");
            after
        }
        "lbrace" => {
            out.push_str("\\{");
            after
        }
        "rbrace" => {
            out.push_str("\\}");
            after
        }
        "langle" => {
            out.push('(');
            after
        }
        "rangle" => {
            out.push(')');
            after
        }
        "lvert" | "rvert" | "vert" => {
            out.push('|');
            after
        }
        // `\left.` and `\right.` are invisible delimiters.
        _ if listed(DROP, name) => after.strip_prefix('.').unwrap_or(after),
        _ if listed(UNWRAP, name) => unwrap_argument(after, out, depth),
        _ => {
            out.push('\\');
            out.push_str(name);
            after
        }
    }
}

/// `5\text{ m/s}^2` → `5`: the rest after a text argument that follows a value and
/// reads as units (up to three letter words, `/`, powers, no hedging word); `None`
/// otherwise. Inside `\text{}` a single letter is a unit, not a variable.
fn text_units<'a>(after: &'a str, before: &str) -> Option<&'a str> {
    let value_before = before
        .trim_end()
        .ends_with(|c: char| c.is_ascii_digit() || c == '}' || c == ')');
    let trimmed = after.trim_start();
    let open = after.len() - trimmed.len();
    if !value_before || !trimmed.starts_with('{') {
        return None;
    }
    let close = matching_brace(after, open, MAX_ARGUMENT_LEN)?;
    let content = after[open + 1..close].replace('~', " ");
    let words: Vec<&str> = content
        .split([' ', '/'])
        .filter(|w| !w.is_empty())
        .collect();
    let unit = |word: &&str| {
        let base = word.split('^').next().unwrap_or("");
        // `50\text{ percent}` is a percentage, read by `strip_units`.
        unit_name(base) && !base.eq_ignore_ascii_case("percent")
    };
    if words.is_empty() || words.len() > 3 || !words.iter().all(unit) {
        return None;
    }
    let rest = &after[close + 1..];
    // A power after the units (`\text{m/s}^2`) belongs to them.
    Some(
        ["^{2}", "^{3}", "^2", "^3"]
            .iter()
            .find_map(|power| rest.strip_prefix(power))
            .unwrap_or(rest),
    )
}

/// `\text{ cm}` → ` cm `: the argument, normalised, between spaces.
fn unwrap_argument<'a>(after: &'a str, out: &mut String, depth: usize) -> &'a str {
    let trimmed = after.trim_start();
    let open = after.len() - trimmed.len();
    let close = trimmed
        .starts_with('{')
        .then(|| matching_brace(after, open, MAX_ARGUMENT_LEN))
        .flatten();
    match close {
        Some(close) if depth < MAX_DEPTH => {
            out.push(' ');
            out.push_str(&latex_pass(&after[open + 1..close], depth + 1));
            out.push(' ');
            &after[close + 1..]
        }
        _ => after,
    }
}

/// Whole words "or" / "and" separate alternatives: `3 or 4` is the list `3, 4`.
fn words_to_separators(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find(|c: char| c.is_ascii_alphabetic()) {
        let len = rest[start..]
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        let word = &rest[start..start + len];
        out.push_str(&rest[..start]);
        let is_command = rest[..start].ends_with('\\');
        if !is_command && matches!(word, "or" | "and") {
            out.push(',');
        } else {
            out.push_str(word);
        }
        rest = &rest[start + len..];
    }
    out.push_str(rest);
    out
}

/// `1,234,567` / `1 234` → `1234567` / `1234` outside brackets (inside them a comma
/// separates elements). Groups after the first must have exactly three digits, and a
/// run followed by one more separated group (`1,234,5`) is a list, not a number.
fn remove_thousands_separators(s: &str) -> String {
    let s = s.replace("{,}", "");
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut depth = 0i32;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            _ => {}
        }
        let starts_number =
            c.is_ascii_digit() && (i == 0 || !matches!(b[i - 1], b'0'..=b'9' | b'.'));
        if depth == 0
            && starts_number
            && let Some(end) = grouped_number_end(b, i)
        {
            out.extend(b[i..end].iter().filter(|&&x| x != b',' && x != b' '));
            i = end;
            continue;
        }
        out.push(c);
        i += 1;
    }
    // Only ASCII bytes were removed, so this is still UTF-8.
    String::from_utf8(out).unwrap_or(s)
}

fn grouped_number_end(b: &[u8], start: usize) -> Option<usize> {
    let digits_from = |i: usize| {
        b[i.min(b.len())..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count()
    };
    let lead = digits_from(start);
    if !(1..=3).contains(&lead) {
        return None;
    }
    let sep = *b.get(start + lead).filter(|&&c| c == b',' || c == b' ')?;
    let mut j = start + lead;
    while b.get(j) == Some(&sep) && digits_from(j + 1) == 3 {
        j += 4;
    }
    let list_continues = b.get(j) == Some(&sep) && b.get(j + 1).is_some_and(u8::is_ascii_digit);
    (j > start + lead && !list_continues).then_some(j)
}

/// Words kept after a number: they are part of the value, or they separate values.
/// Words after a value that are not units: math, and words that hedge or change the
/// value (`5 \text{ is wrong}`, `5 \text{ thousand}` must not read as 5).
const MATH_WORDS: &str = "pi inf infty infinity sqrt sin cos tan ln log exp or and \
    not no wrong incorrect maybe perhaps possibly probably unless except is isn are was \
    most least than hundred hundreds thousand thousands million millions billion billions \
    dozen dozens";

/// Units glued to a number (`5cm`).
const GLUED_UNITS: &[&str] = &["cm", "mm", "km", "kg", "ft", "mph", "cm^2", "m^2"];

/// Drops trailing unit words after a value: `5 cm` → `5`, `18 eggs` → `18`,
/// `12 \text{ cm}^2` → `12`, `50 percent` → `50%`. Only words of two or more letters
/// go (a single letter is a variable), and only when what remains ends like a value.
pub(super) fn strip_units(s: &str) -> String {
    let mut words: Vec<&str> = s.split_whitespace().collect();
    let percent = words.len() >= 2
        && words
            .last()
            .is_some_and(|w| w.eq_ignore_ascii_case("percent"));
    if percent {
        words.pop();
    }
    while words.len() >= 2 {
        let n = words.len();
        if is_unit_power(words[n - 1]) && n >= 3 && is_unit_word(words[n - 2]) {
            words.truncate(n - 2);
        } else if is_unit_word(words[n - 1]) {
            words.truncate(n - 1);
        } else {
            break;
        }
    }
    let mut joined = words.join(" ");
    if let Some(stripped) = GLUED_UNITS.iter().find_map(|u| glued_prefix(&joined, u)) {
        joined = stripped.to_string();
    }
    if percent {
        joined.push('%');
    }
    let ends_like_value = joined
        .chars()
        .next_back()
        .is_some_and(|c| c.is_ascii_digit() || ")]}%".contains(c));
    if ends_like_value {
        joined
    } else {
        s.trim().to_string()
    }
}

fn glued_prefix<'a>(s: &'a str, unit: &str) -> Option<&'a str> {
    let prefix = s.strip_suffix(unit)?;
    prefix
        .ends_with(|c: char| c.is_ascii_digit())
        .then_some(prefix)
}

fn is_unit_word(w: &str) -> bool {
    let (base, power) = match w.find('^') {
        Some(i) => w.split_at(i),
        None => (w, ""),
    };
    base.len() >= 2 && unit_name(base) && (power.is_empty() || is_unit_power(power))
}

/// Letters that could name a unit: not empty, and not a math or hedging word.
fn unit_name(base: &str) -> bool {
    !base.is_empty()
        && base.bytes().all(|c| c.is_ascii_alphabetic())
        && !listed(MATH_WORDS, &base.to_ascii_lowercase())
}

fn is_unit_power(w: &str) -> bool {
    matches!(w, "^2" | "^3" | "^{2}" | "^{3}")
}
