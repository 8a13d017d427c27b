//! Finding the final answer a completion commits to.
//!
//! Priority: last `\boxed{}` > `#### X` > last `<answer>…</answer>` > "the answer
//! is X" > (optionally) the last number. Only text after the last `</think>` is
//! searched, so an answer reached in the scratch work and then changed does not
//! count, and an unterminated `<think>` yields no answer at all.

use super::normalize::{matching_brace, normalize, squash};
use super::{Extracted, ExtractionRule, MathOptions, NoAnswer};
use std::collections::BTreeSet;

/// More distinct boxed answers than this score zero: the completion is hedging.
/// Up to this many are tolerated (a model may box an intermediate result, or
/// correct itself) because only the last one counts anyway, so listing
/// candidates earns nothing over committing to the last of them.
pub const MAX_DISTINCT_BOXED: usize = 4;

/// Boxed contents longer than this are not answers; the cap also bounds the
/// cost of scanning for the closing brace of many unbalanced `\boxed{`.
const MAX_BOXED_LEN: usize = 2000;

pub fn extract_answer(completion: &str, options: &MathOptions) -> Result<Extracted, NoAnswer> {
    let section = final_section(completion).ok_or(NoAnswer::UnterminatedThink)?;
    let found = |answer: String, rule| Ok(Extracted { answer, rule });

    let boxes = boxed_contents(section);
    let distinct: BTreeSet<String> = boxes.iter().map(|b| squash(&normalize(b))).collect();
    if distinct.len() > MAX_DISTINCT_BOXED {
        return Err(NoAnswer::TooManyBoxed(distinct.len()));
    }
    if let Some(last) = boxes.last() {
        return found(last.trim().to_string(), ExtractionRule::Boxed);
    }
    if let Some(answer) = hashes_answer(section) {
        return found(answer.to_string(), ExtractionRule::Hashes);
    }
    if let Some(answer) = answer_tag(section) {
        return found(answer, ExtractionRule::AnswerTag);
    }
    if let Some(answer) = phrase_answer(section) {
        return found(answer, ExtractionRule::AnswerPhrase);
    }
    if options.last_number_fallback
        && let Some(answer) = last_number(section)
    {
        return found(answer.to_string(), ExtractionRule::LastNumber);
    }
    Err(NoAnswer::NotFound)
}

/// The answer inside a reference: its last box, else its `####` line, else all of it
/// (so a full GSM8K or MATH reference solution can be passed as is).
pub(super) fn reference_answer(reference: &str) -> &str {
    if let Some(last) = boxed_contents(reference).last() {
        return last;
    }
    hashes_answer(reference).unwrap_or(reference)
}

/// The text after the last `</think>` (all of it when there is none); `None` when
/// a `<think>` is left open, since then everything is scratch work.
fn final_section(text: &str) -> Option<&str> {
    let section = match text.rfind("</think>") {
        Some(i) => &text[i + "</think>".len()..],
        None => text,
    };
    (!section.contains("<think>")).then_some(section)
}

/// Contents of every well-formed `\boxed{…}`, `\fbox{…}` or brace-less `\boxed 5`,
/// in order. Unbalanced or empty boxes are skipped: they are not a committed answer.
fn boxed_contents(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(off) = text[from..].find('\\') {
        let at = from + off + 1;
        from = at;
        let rest = &text[at..];
        let name_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        if !matches!(&rest[..name_len], "boxed" | "fbox") {
            continue;
        }
        let body_at = at + name_len;
        let body = &text[body_at..];
        let trimmed = body.trim_start();
        let open = body_at + (body.len() - trimmed.len());
        let content = if trimmed.starts_with('{') {
            matching_brace(text, open, MAX_BOXED_LEN).map(|close| &text[open + 1..close])
        } else if trimmed.len() < body.len() {
            // `\boxed 5`: up to whitespace or the closing `$`.
            let end = trimmed.find(|c: char| c.is_whitespace() || c == '$');
            Some(&trimmed[..end.unwrap_or(trimmed.len())])
        } else {
            None
        };
        if let Some(content) = content.filter(|c| !c.trim().is_empty()) {
            out.push(content);
        }
    }
    out
}

/// `#### 42`: the rest of the last such line that starts like an answer. Lines
/// that start with a word or a step number are markdown headings (`#### Step 1`,
/// `#### 3. Add them up`), not answers.
fn hashes_answer(text: &str) -> Option<&str> {
    let mut end = text.len();
    while let Some(i) = text[..end].rfind("####") {
        // Skip the whole run of `#` so a long run is not rescanned per position.
        end = text[..i].trim_end_matches('#').len();
        let rest = text[i..].trim_start_matches('#');
        let line = rest.split('\n').next().unwrap_or("");
        let line = line.trim().trim_matches('*').trim();
        let answer_like = line
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || "-+−.$\\(".contains(c));
        if answer_like && !numbered_heading(line) {
            return Some(line.trim_end_matches('.').trim());
        }
    }
    None
}

/// `3. Add them up`, `2) Compute`: a step number, then words.
fn numbered_heading(line: &str) -> bool {
    let digits = line.bytes().take_while(u8::is_ascii_digit).count();
    let after = &line[digits..];
    digits > 0
        && (after.starts_with(". ") || after.starts_with(") "))
        && after[2..]
            .trim_start()
            .starts_with(|c: char| c.is_alphabetic())
}

/// The last complete `<answer>…</answer>`; a phrase inside it ("The answer is 5")
/// is unwrapped.
fn answer_tag(text: &str) -> Option<String> {
    let close = text.rfind("</answer>")?;
    let open = text[..close].rfind("<answer>")?;
    let inner = text[open + "<answer>".len()..close].trim();
    let answer = phrase_answer(inner).unwrap_or_else(|| strip_math_delimiters(inner).to_string());
    (!answer.is_empty()).then_some(answer)
}

/// "The answer is X", "The final answer is X", "Answer: X", "**Answer:** X"
/// (ASCII case-insensitive, last occurrence with a non-empty X).
fn phrase_answer(text: &str) -> Option<String> {
    // ASCII lowercasing keeps byte offsets, so positions index `text` too.
    let lower = text.to_ascii_lowercase();
    let mut end = lower.len();
    while let Some(i) = lower[..end].rfind("answer") {
        end = i;
        if i > 0 && lower.as_bytes()[i - 1].is_ascii_alphabetic() {
            continue;
        }
        if let Some(start) = after_answer_marker(&lower, i + "answer".len())
            && let Some(value) = phrase_value(&text[start..])
        {
            return Some(value);
        }
    }
    None
}

/// After "answer": accepts ` is`, ` is:`, `:` (with markdown `**` anywhere) and
/// returns where the value starts; `None` for other uses of the word.
fn after_answer_marker(lower: &str, mut j: usize) -> Option<usize> {
    let b = lower.as_bytes();
    let skip_inline = |mut j: usize| {
        while j < b.len() && matches!(b[j], b' ' | b'\t' | b'*') {
            j += 1;
        }
        j
    };
    j = skip_inline(j);
    if lower[j..].starts_with("is") && !b.get(j + 2).is_some_and(u8::is_ascii_alphabetic) {
        j = skip_inline(j + 2);
        if b.get(j) == Some(&b':') {
            j += 1;
        }
    } else if b.get(j) == Some(&b':') {
        j += 1;
    } else {
        return None;
    }
    while j < b.len() && (b[j].is_ascii_whitespace() || b[j] == b'*') {
        j += 1;
    }
    Some(j)
}

/// The value after an answer phrase: a `$…$` / `\(…\)` span when it starts with
/// one, else the rest of the sentence up to a following clause ("42, since …",
/// "42 because …"), without filler words before it ("is simply 42") or a
/// parenthetical note after it ("18 (dollars)").
fn phrase_value(s: &str) -> Option<String> {
    let s = without_filler_words(s);
    let delimited = [("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")]
        .iter()
        .find_map(|(open, close)| {
            let rest = s.strip_prefix(open)?;
            // An escaped `\$` inside (`$\$18$`) does not close the span.
            let end = rest
                .match_indices(close)
                .find(|&(at, _)| !rest[..at].ends_with('\\'))?
                .0;
            Some(&rest[..end])
        });
    let value = delimited.unwrap_or_else(|| main_clause(sentence(s)));
    let value = value
        .trim()
        .trim_matches('*')
        .trim()
        .trim_end_matches(['.', '!'])
        .trim();
    let value = without_note(value);
    (!value.is_empty()).then(|| value.to_string())
}

/// Words that may stand between "the answer is" and the answer.
const FILLER_WORDS: &[&str] = &[
    "therefore",
    "thus",
    "hence",
    "so",
    "simply",
    "just",
    "then",
    "clearly",
    "indeed",
    "exactly",
    "precisely",
    "actually",
    "about",
    "approximately",
    "roughly",
    "around",
];

fn without_filler_words(mut s: &str) -> &str {
    loop {
        let word_len = s.bytes().take_while(u8::is_ascii_alphabetic).count();
        let word = s[..word_len].to_ascii_lowercase();
        let rest = &s[word_len..];
        if word_len == 0 || !FILLER_WORDS.contains(&word.as_str()) {
            return s;
        }
        let Some(rest) = rest.strip_prefix([' ', ':', ',']) else {
            return s;
        };
        s = rest.trim_start_matches([' ', ':']);
    }
}

/// Words that start a new clause after an answer ("42 because …", "42, which …").
/// `or` is not one: "5 or 6" is a list, which never equals one value.
const CLAUSE_WORDS: &[&str] = &[
    "since",
    "because",
    "which",
    "as",
    "so",
    "but",
    "and",
    "that",
    "hence",
    "thus",
    "therefore",
    "when",
    "where",
    "while",
    "if",
    "i",
    "we",
    "he",
    "she",
    "it",
    "they",
    "you",
    "this",
    "these",
    "there",
    "yes",
];

/// `s` up to the first `, ` / `; ` / ` ` before a clause word; `and` counts only
/// before a word ("42 and she …"), not before a value ("5 and 6" stays a list).
fn main_clause(s: &str) -> &str {
    let lower = s.to_ascii_lowercase();
    for (at, _) in lower.match_indices(' ') {
        let word_start = at + 1;
        let word_len = lower[word_start..]
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        let word = &lower[word_start..word_start + word_len];
        let next = lower[word_start + word_len..].trim_start();
        let ends_word = !lower[word_start + word_len..].starts_with(|c: char| c.is_alphanumeric());
        let clause = CLAUSE_WORDS.contains(&word)
            && ends_word
            && (word != "and" || next.starts_with(|c: char| c.is_ascii_alphabetic()));
        if clause {
            return s[..at].trim_end().trim_end_matches([',', ';']);
        }
    }
    s
}

/// `18 (dollars)` → `18`: a closing parenthetical without digits is a note.
fn without_note(value: &str) -> &str {
    if let Some(open) = value.rfind(" (")
        && value.ends_with(')')
        && !value[open..].contains(|c: char| c.is_ascii_digit())
    {
        return value[..open].trim_end();
    }
    value
}

/// Up to the end of the line or the first ". " (a decimal point has no space after it).
fn sentence(s: &str) -> &str {
    let line = s.split('\n').next().unwrap_or("");
    match line.find(". ") {
        Some(end) => &line[..end],
        None => line,
    }
}

fn strip_math_delimiters(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('$')
        .and_then(|r| r.strip_suffix('$'))
        .map_or(s, str::trim)
}

/// The last number; when it ends a list (`4, 5, 6`, `3 or 4`) the whole list, so
/// that listing candidates never matches a single-valued reference.
fn last_number(text: &str) -> Option<&str> {
    let spans = number_spans(text);
    let &(mut start, end) = spans.last()?;
    for &(prev_start, prev_end) in spans.iter().rev().skip(1) {
        let between = text[prev_end..start].trim().to_ascii_lowercase();
        if !matches!(
            between.as_str(),
            "," | ";" | "or" | "and" | ", or" | ", and"
        ) {
            break;
        }
        start = prev_start;
    }
    Some(&text[start..end])
}

/// Byte spans of number tokens: `-1,234.5`, `.5`, `3/4`, `50%`.
fn number_spans(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let after_digit = i > 0 && b[i - 1].is_ascii_digit();
        let starts = b[i].is_ascii_digit()
            || (b[i] == b'.' && !after_digit && b.get(i + 1).is_some_and(u8::is_ascii_digit));
        if !starts {
            i += 1;
            continue;
        }
        let end = scan_number(b, i);
        spans.push((with_sign(text, i), end));
        i = end;
    }
    spans
}

fn scan_number(b: &[u8], start: usize) -> usize {
    let digits = |from: usize| from + b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    let mut j = digits(start);
    // Thousands groups: exactly three digits after each comma.
    while b.get(j) == Some(&b',') && digits(j + 1) == j + 4 {
        j += 4;
    }
    for sep in [b'.', b'/'] {
        if b.get(j) == Some(&sep) && b.get(j + 1).is_some_and(u8::is_ascii_digit) {
            j = digits(j + 1);
        }
    }
    if b.get(j) == Some(&b'%') {
        j += 1;
    }
    j
}

/// Extends a number start over a minus sign that is not a binary minus (`3-4`).
fn with_sign(text: &str, start: usize) -> usize {
    let before = &text[..start];
    let sign_len = if before.ends_with('-') {
        1
    } else if before.ends_with('−') {
        '−'.len_utf8()
    } else {
        return start;
    };
    let prev = before[..start - sign_len].chars().next_back();
    if prev.is_some_and(|c| c.is_alphanumeric() || c == ')') {
        start
    } else {
        start - sign_len
    }
}
