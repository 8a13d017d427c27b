//! A checkpoint's own chat template, rendered with minijinja the way transformers'
//! `apply_chat_template` renders it: the same globals (`messages`, `tools`,
//! `add_generation_prompt`, the special tokens, `raise_exception`, `strftime_now`),
//! Python string methods, transformers' `tojson`, trim_blocks and lstrip_blocks, and
//! `{% generation %}` blocks that mark what the assistant wrote.

use anyhow::{Context, Result, anyhow, bail};
use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};
use serde::Deserialize;
use serde_json::{Map, Value as Json};
use std::ops::Range;
use std::path::Path;

/// Marks written where `{% generation %}` and `{% endgeneration %}` stood; private-use
/// characters that no message may contain.
const GEN_START: char = '\u{E000}';
const GEN_END: char = '\u{E001}';

/// What `apply_chat_template` takes besides the template (`rlvr render-chat`'s input).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conversation {
    pub messages: Vec<Json>,
    #[serde(default)]
    pub add_generation_prompt: bool,
    #[serde(default)]
    pub continue_final_message: bool,
    #[serde(default)]
    pub tools: Option<Vec<Json>>,
    /// Extra variables (`enable_thinking`, …), as `chat_template_kwargs` in a run config.
    #[serde(default)]
    pub template_kwargs: Map<String, Json>,
}

/// A rendered conversation: its text and the byte ranges the assistant wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedText {
    pub text: String,
    pub assistant_spans: Vec<Range<usize>>,
}

pub struct ChatTemplate {
    source: String,
    /// Where the template came from, for `rlvr inspect` and error messages.
    pub origin: String,
    /// Named templates of a list-valued `chat_template` (`tool_use`, `rag`, …).
    named: Vec<(String, String)>,
    /// `bos_token`, `eos_token`, … as tokenizer_config.json gives them.
    pub special_tokens: Map<String, Json>,
}

impl ChatTemplate {
    /// The template in a model folder: `chat_template.jinja` wins over
    /// tokenizer_config.json's `chat_template`, as in transformers 5. None when the
    /// folder has neither.
    pub fn find(dir: &Path) -> Result<Option<Self>> {
        let config_path = dir.join("tokenizer_config.json");
        let config: Map<String, Json> = match std::fs::read_to_string(&config_path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{}: not valid JSON", config_path.display()))?,
            Err(_) => Map::new(),
        };
        let special_tokens = special_tokens(&config);
        let jinja = dir.join("chat_template.jinja");
        if let Ok(source) = std::fs::read_to_string(&jinja) {
            return Ok(Some(Self::new(
                source,
                jinja.display().to_string(),
                Vec::new(),
                special_tokens,
            )));
        }
        let origin = format!("{} (chat_template)", config_path.display());
        match config.get("chat_template") {
            None | Some(Json::Null) => Ok(None),
            Some(Json::String(source)) => Ok(Some(Self::new(
                source.clone(),
                origin,
                Vec::new(),
                special_tokens,
            ))),
            Some(Json::Array(list)) => {
                let named = named_templates(list).with_context(|| origin.clone())?;
                let default = named
                    .iter()
                    .find(|(name, _)| name == "default")
                    .map(|(_, t)| t.clone())
                    .ok_or_else(|| anyhow!("{origin}: no template named `default`"))?;
                Ok(Some(Self::new(default, origin, named, special_tokens)))
            }
            Some(other) => bail!("{origin}: expected a string or a list, found {other}"),
        }
    }

    pub fn new(
        source: String,
        origin: String,
        named: Vec<(String, String)>,
        special_tokens: Map<String, Json>,
    ) -> Self {
        Self {
            source,
            origin,
            named,
            special_tokens,
        }
    }

    /// The text transformers 5 renders for `conversation`.
    pub fn render(&self, conversation: &Conversation) -> Result<String> {
        Ok(self.render_marked(conversation)?.text)
    }

    /// The text and, from `{% generation %}` blocks, the assistant's byte ranges (empty
    /// when the template has none).
    pub fn render_marked(&self, conversation: &Conversation) -> Result<RenderedText> {
        if conversation.add_generation_prompt && conversation.continue_final_message {
            bail!("add_generation_prompt and continue_final_message cannot both be set");
        }
        check_no_marks(&conversation.messages)?;
        let source = self.source_for(conversation);
        let marked = self.render_source(&source, conversation)?;
        let mut rendered = split_marks(&marked);
        if conversation.continue_final_message {
            continue_final_message(&mut rendered, conversation)?;
        }
        Ok(rendered)
    }

    /// Whether the template marks assistant text itself.
    pub fn has_generation_blocks(&self) -> bool {
        generation_tag().is_match(&self.source)
    }

    /// With tools, a template named `tool_use` is used where there is one
    /// (transformers picks it the same way).
    fn source_for(&self, conversation: &Conversation) -> String {
        let wanted = if conversation.tools.is_some() {
            "tool_use"
        } else {
            "default"
        };
        self.named
            .iter()
            .find(|(name, _)| name == wanted)
            .map_or_else(|| self.source.clone(), |(_, t)| t.clone())
    }

    fn render_source(&self, source: &str, conversation: &Conversation) -> Result<String> {
        let env = environment();
        let source = replace_generation_tags(source);
        let template = env
            .template_from_str(&source)
            .map_err(|e| anyhow!("{}: cannot parse the chat template: {e:#}", self.origin))?;
        let mut context = self.special_tokens.clone();
        context.insert(
            "messages".into(),
            Json::Array(conversation.messages.clone()),
        );
        context.insert(
            "tools".into(),
            conversation.tools.clone().map_or(Json::Null, Json::Array),
        );
        context.insert("documents".into(), Json::Null);
        context.insert(
            "add_generation_prompt".into(),
            conversation.add_generation_prompt.into(),
        );
        for (key, value) in &conversation.template_kwargs {
            context.insert(key.clone(), value.clone());
        }
        template
            .render(Value::from_serialize(&context))
            .map_err(|e| template_error(&self.origin, e))
    }
}

/// A raised template error carries the template's own message; others say where.
fn template_error(origin: &str, error: Error) -> anyhow::Error {
    if error.kind() == ErrorKind::InvalidOperation
        && let Some(message) = error.detail().and_then(|d| d.strip_prefix(RAISED))
    {
        return anyhow!("the chat template raised: {message}");
    }
    anyhow!("{origin}: cannot render the chat template: {error:#}")
}

const RAISED: &str = "raise_exception: ";

/// The environment transformers builds: trim_blocks, lstrip_blocks, loop controls,
/// Python string methods, `raise_exception`, `strftime_now` and its `tojson`.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |message: String| -> Result<Value, Error> {
            Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("{RAISED}{message}"),
            ))
        },
    );
    env.add_function("strftime_now", |format: String| {
        strftime(&format, now_unix())
    });
    env.add_filter("tojson", tojson);
    env
}

/// `{% generation %}` and `{% endgeneration %}` become blocks that write a mark, with
/// the tag's whitespace control kept on the side it trims.
fn replace_generation_tags(source: &str) -> String {
    generation_tag()
        .replace_all(source, |caps: &regex::Captures| {
            let (left, right) = (&caps[1], &caps[4]);
            let mark = if caps.get(2).is_none() {
                GEN_START
            } else {
                GEN_END
            };
            format!("{{%{left} if true %}}{{{{ \"{mark}\" }}}}{{% endif {right}%}}")
        })
        .into_owned()
}

fn generation_tag() -> regex::Regex {
    regex::Regex::new(r"\{%([-+]?)\s*(end)?(generation)\s*([-+]?)%\}").expect("valid regex")
}

fn check_no_marks(messages: &[Json]) -> Result<()> {
    let text = serde_json::to_string(messages)?;
    if text.contains(GEN_START) || text.contains(GEN_END) {
        bail!("messages contain U+E000 or U+E001, which rlvr reserves to mark assistant text");
    }
    Ok(())
}

/// Removes the marks and returns the byte ranges between them.
fn split_marks(marked: &str) -> RenderedText {
    let mut text = String::with_capacity(marked.len());
    let mut spans = Vec::new();
    let mut start = None;
    for c in marked.chars() {
        match c {
            GEN_START => start = Some(text.len()),
            GEN_END => {
                if let Some(s) = start.take() {
                    spans.push(s..text.len());
                }
            }
            c => text.push(c),
        }
    }
    RenderedText {
        text,
        assistant_spans: spans,
    }
}

/// Cuts the text after the final message's content so the model continues it, as
/// transformers does (the last occurrence of the stripped content).
fn continue_final_message(rendered: &mut RenderedText, conversation: &Conversation) -> Result<()> {
    let last = conversation
        .messages
        .last()
        .ok_or_else(|| anyhow!("continue_final_message needs at least one message"))?;
    let content = match last.get("content") {
        Some(Json::String(s)) => s.clone(),
        Some(Json::Array(parts)) => parts
            .iter()
            .rev()
            .find_map(|p| p.get("text").and_then(Json::as_str))
            .unwrap_or_default()
            .to_string(),
        _ => bail!("continue_final_message: the final message has no text content"),
    };
    let content = content.trim();
    let end = rendered
        .text
        .rfind(content)
        .map(|i| i + content.len())
        .ok_or_else(|| {
            anyhow!("continue_final_message: the final message's content is not in the rendering")
        })?;
    rendered.text.truncate(end);
    for span in &mut rendered.assistant_spans {
        span.end = span.end.min(end);
        span.start = span.start.min(span.end);
    }
    Ok(())
}

/// Special tokens as template variables: a plain string, or an AddedToken object's
/// `content`.
fn special_tokens(config: &Map<String, Json>) -> Map<String, Json> {
    let mut tokens = Map::new();
    for key in [
        "bos_token",
        "eos_token",
        "unk_token",
        "sep_token",
        "pad_token",
        "cls_token",
        "mask_token",
    ] {
        let text = match config.get(key) {
            Some(Json::String(s)) => Some(s.clone()),
            Some(Json::Object(o)) => o.get("content").and_then(Json::as_str).map(String::from),
            _ => None,
        };
        if let Some(text) = text {
            tokens.insert(key.into(), text.into());
        }
    }
    if let Some(extra) = config.get("additional_special_tokens") {
        tokens.insert("additional_special_tokens".into(), extra.clone());
    }
    tokens
}

fn named_templates(list: &[Json]) -> Result<Vec<(String, String)>> {
    list.iter()
        .map(|item| {
            let name = item.get("name").and_then(Json::as_str);
            let template = item.get("template").and_then(Json::as_str);
            match (name, template) {
                (Some(n), Some(t)) => Ok((n.to_string(), t.to_string())),
                _ => bail!("each chat_template entry needs `name` and `template`"),
            }
        })
        .collect()
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=…, separators=…,
/// sort_keys=…)`, so `<`, `>` and `&` stay as they are (minijinja's own filter escapes
/// them for HTML).
fn tojson(value: &Value, kwargs: Kwargs) -> Result<String, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let (item, key) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be a pair",
            ));
        }
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let json: Json = serde_json::to_value(value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let style = JsonStyle {
        indent,
        item,
        key,
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    style.write(&json, 0, &mut out);
    Ok(out)
}

struct JsonStyle {
    indent: Option<usize>,
    item: String,
    key: String,
    sort_keys: bool,
}

impl JsonStyle {
    /// Python's json.dumps layout: items joined by `item`, keys by `key`, and with an
    /// indent each item on its own line.
    fn write(&self, value: &Json, depth: usize, out: &mut String) {
        match value {
            Json::Array(items) if !items.is_empty() => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    self.separate(i, depth + 1, out);
                    self.write(v, depth + 1, out);
                }
                self.close(depth, out);
                out.push(']');
            }
            Json::Object(map) if !map.is_empty() => {
                let mut entries: Vec<_> = map.iter().collect();
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                }
                out.push('{');
                for (i, (k, v)) in entries.into_iter().enumerate() {
                    self.separate(i, depth + 1, out);
                    python_string(k, out);
                    out.push_str(&self.key);
                    self.write(v, depth + 1, out);
                }
                self.close(depth, out);
                out.push('}');
            }
            Json::Array(_) => out.push_str("[]"),
            Json::Object(_) => out.push_str("{}"),
            Json::String(s) => python_string(s, out),
            Json::Number(n) => out.push_str(&python_number(n)),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Null => out.push_str("null"),
        }
    }

    fn separate(&self, i: usize, depth: usize, out: &mut String) {
        match self.indent {
            Some(width) => {
                if i > 0 {
                    out.push_str(self.item.trim_end_matches(' '));
                }
                out.push('\n');
                out.push_str(&" ".repeat(width * depth));
            }
            None if i > 0 => out.push_str(&self.item),
            None => {}
        }
    }

    fn close(&self, depth: usize, out: &mut String) {
        if let Some(width) = self.indent {
            out.push('\n');
            out.push_str(&" ".repeat(width * depth));
        }
    }
}

/// A float as Python's repr writes it (`1.0`, `1e-05`); integers as they are.
fn python_number(n: &serde_json::Number) -> String {
    if n.is_i64() || n.is_u64() {
        return n.to_string();
    }
    let f = n.as_f64().unwrap_or(0.0);
    let text = format!("{f:?}");
    // Rust writes 1e-5 where Python writes 1e-05.
    match text.split_once('e') {
        Some((mantissa, exp)) => {
            let (sign, digits) = exp.strip_prefix('-').map_or(("+", exp), |d| ("-", d));
            let mantissa = mantissa.strip_suffix(".0").unwrap_or(mantissa);
            format!("{mantissa}e{sign}{digits:0>2}")
        }
        None => text,
    }
}

/// A JSON string with `ensure_ascii=False`: only quotes, backslashes and control
/// characters are escaped.
fn python_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Python's `datetime.now().strftime` for the codes templates use (local time is UTC
/// here, as on a server).
fn strftime(format: &str, unix: i64) -> Result<String, Error> {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let code = chars.next().unwrap_or('%');
        let piece = match code {
            'd' => format!("{day:02}"),
            '-' => match chars.next() {
                Some('d') => day.to_string(),
                Some('m') => month.to_string(),
                other => return Err(bad_code(other.unwrap_or(' '))),
            },
            'm' => format!("{month:02}"),
            'Y' => year.to_string(),
            'y' => format!("{:02}", year % 100),
            'b' => MONTHS[month as usize - 1][..3].to_string(),
            'B' => MONTHS[month as usize - 1].to_string(),
            'a' => WEEKDAYS[weekday][..3].to_string(),
            'A' => WEEKDAYS[weekday].to_string(),
            'j' => format!("{day_of_year:03}"),
            'H' => format!("{:02}", secs / 3600),
            'M' => format!("{:02}", secs / 60 % 60),
            'S' => format!("{:02}", secs % 60),
            '%' => "%".into(),
            other => return Err(bad_code(other)),
        };
        out.push_str(&piece);
    }
    Ok(out)
}

fn bad_code(code: char) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("strftime_now: unsupported code %{code}"),
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's method).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(source: &str) -> ChatTemplate {
        let mut specials = Map::new();
        specials.insert("bos_token".into(), "<s>".into());
        specials.insert("eos_token".into(), "</s>".into());
        ChatTemplate::new(source.into(), "test".into(), Vec::new(), specials)
    }

    fn conversation(messages: Json) -> Conversation {
        Conversation {
            messages: serde_json::from_value(messages).unwrap(),
            ..Conversation::default()
        }
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let t = template("{{ x | tojson }}|{{ x | tojson(indent=2) }}");
        let mut c = conversation(json!([]));
        c.template_kwargs.insert(
            "x".into(),
            json!({"b": [1, 2.5, "<a&b>"], "a": {}, "é": null}),
        );
        assert_eq!(
            t.render(&c).unwrap(),
            "{\"b\": [1, 2.5, \"<a&b>\"], \"a\": {}, \"é\": null}|{\n  \"b\": [\n    1,\n    2.5,\n    \"<a&b>\"\n  ],\n  \"a\": {},\n  \"é\": null\n}"
        );
        assert_eq!(
            python_number(&serde_json::Number::from_f64(1e-5).unwrap()),
            "1e-05"
        );
    }

    #[test]
    fn generation_blocks_mark_assistant_text_and_raise_gives_the_message() {
        let t = template(
            "{{ bos_token }}{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content | trim }}{{ eos_token }}{% endgeneration %}{% else %}[{{ m.content.upper() }}]{% endif %}{% endfor %}",
        );
        assert!(t.has_generation_blocks());
        let c = conversation(json!([
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": " yo "}
        ]));
        let r = t.render_marked(&c).unwrap();
        assert_eq!(r.text, "<s>[HI]yo</s>");
        assert_eq!(&r.text[r.assistant_spans[0].clone()], "yo</s>");
        let raises = template("{{ raise_exception('Conversation roles must alternate') }}");
        let err = raises.render(&c).unwrap_err().to_string();
        assert_eq!(
            err,
            "the chat template raised: Conversation roles must alternate"
        );
    }

    #[test]
    fn strftime_knows_the_calendar() {
        // 2024-07-26 12:34:56 UTC, a Friday.
        let t = 1_721_997_296;
        assert_eq!(
            strftime("%d %b %Y %A %H:%M:%S %j %-d/%-m", t).unwrap(),
            "26 Jul 2024 Friday 12:34:56 208 26/7"
        );
        assert!(strftime("%Q", t).is_err());
    }
}
