//! The value tree with the byte span of every key and value, typed access to it, and errors at
//! the right place (`FILE:LINE:COLUMN: field.path: message`).

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::types::{show_duration, DURATION_EXAMPLES};
use super::ConfigError;

// ---------------------------------------------------------------------------------------------
// Errors and positions.

pub(super) struct Cx<'a> {
    pub(super) text: &'a str,
    pub(super) file: &'a str,
}

impl Cx<'_> {
    pub(super) fn err(
        &self,
        pos: usize,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = line_col(self.text, pos);
        ConfigError::Invalid {
            file: self.file.to_owned(),
            line,
            column,
            field: field.into(),
            message: message.into(),
        }
    }

    pub(super) fn line(&self, pos: usize) -> usize {
        line_col(self.text, pos).0
    }

    /// A TOML syntax error (or duplicate key): the position is exact, the field is guessed
    /// from the text around it.
    pub(super) fn syntax_error(&self, e: &toml::de::Error) -> ConfigError {
        let span = e.span().unwrap_or(0..0);
        let mut pos = span.start;
        let mut message = e
            .message()
            .trim()
            .lines()
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("; ");
        if let Some((at, m)) = self.text.get(span).and_then(trailing_after_value) {
            pos += at;
            message = m;
        }
        let field = field_at(self.text, pos);
        let field = if field.is_empty() {
            "toml".to_owned()
        } else {
            field
        };
        self.err(pos, field, message)
    }
}

/// `port = 53 53`: the parser reads the words after `=` as one unquoted string ("string values
/// must be quoted"), but when the first words are a value by themselves (`53`, `true`,
/// `1979-05-27 07:32:00`), what is wrong is the word after them. Returns the offset of that word
/// in `bad` and the message.
pub(super) fn trailing_after_value(bad: &str) -> Option<(usize, String)> {
    let words: Vec<(usize, &str)> = bad
        .split_whitespace()
        .map(|w| (w.as_ptr() as usize - bad.as_ptr() as usize, w))
        .collect();
    (1..words.len()).rev().find_map(|n| {
        let (at, extra) = words[n];
        let value = bad[..at].trim_end();
        DeValue::parse(value).ok()?;
        Some((
            at,
            format!(
                "unexpected `{extra}` after the value `{value}`; expected a newline or a # comment"
            ),
        ))
    })
}

/// 1-based line and column (in characters) of byte offset `pos`.
pub(super) fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let mut pos = pos.min(text.len());
    while !text.is_char_boundary(pos) {
        pos -= 1;
    }
    let before = &text[..pos];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Best guess of the dotted field at byte offset `pos`, from the table headers and keys before
/// it (used only for syntax errors, where there is no parsed tree).
pub(super) fn field_at(text: &str, pos: usize) -> String {
    // The arrays of tables seen so far, by their path (`target_group[0].scaling.policy`), and
    // how many tables each has.
    let mut counts: HashMap<String, usize> = HashMap::new();
    // The path of a header's dotted name: a part naming an array of tables means its last
    // table, so `[target_group.health_check]` is `target_group[N].health_check`.
    let resolve = |counts: &HashMap<String, usize>, parts: &[&str]| {
        let mut path = String::new();
        for part in parts {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(part);
            if let Some(n) = counts.get(&path).filter(|&&n| n > 0) {
                path = format!("{path}[{}]", n - 1);
            }
        }
        path
    };
    let mut section = String::new();
    let mut key: Option<String> = None;
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if let Some(h) = t.strip_prefix("[[") {
            let name = h.split("]]").next().unwrap_or("");
            let parts: Vec<&str> = name.split('.').map(str::trim).collect();
            let (last, parents) = parts.split_last().unwrap_or((&"", &[]));
            let parent = resolve(&counts, parents);
            let array = if parent.is_empty() {
                (*last).to_owned()
            } else {
                format!("{parent}.{last}")
            };
            let n = counts.entry(array.clone()).or_insert(0);
            section = format!("{array}[{n}]");
            *n += 1;
            key = None;
        } else if let Some(h) = t.strip_prefix('[').filter(|h| h.contains(']')) {
            let name = h.split(']').next().unwrap_or("");
            let parts: Vec<&str> = name.split('.').map(str::trim).collect();
            section = resolve(&counts, &parts);
            key = None;
        } else if let Some((k, _)) = t.split_once('=') {
            let k = k.trim();
            if !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.\"' ".contains(c))
            {
                key = Some(k.to_owned());
            }
        }
        start += line.len();
        if pos < start {
            break;
        }
    }
    match (section.is_empty(), key) {
        (_, None) => section,
        (true, Some(k)) => k,
        (false, Some(k)) => format!("{section}.{k}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Typed access to the tree, with errors at the right place.

pub(super) struct At<'a> {
    pub(super) node: &'a Node,
    /// Byte offset of the value (an implicit table's is that of its key).
    pub(super) pos: usize,
    pub(super) path: String,
}

impl<'a> At<'a> {
    pub(super) fn err(&self, cx: &Cx<'_>, message: impl Into<String>) -> ConfigError {
        cx.err(self.pos, self.path.clone(), message)
    }

    pub(super) fn wrong_type(&self, cx: &Cx<'_>, expected: &str) -> ConfigError {
        self.err(
            cx,
            format!("expected {expected}, found {}", self.node.val.kind()),
        )
    }

    pub(super) fn table(&self, cx: &Cx<'_>, expected: &str) -> Result<Table<'a>, ConfigError> {
        match &self.node.val {
            Val::Table(entries) => Ok(Table {
                entries,
                pos: self.pos,
                path: self.path.clone(),
            }),
            _ => Err(self.wrong_type(cx, expected)),
        }
    }

    pub(super) fn array(&self, cx: &Cx<'_>) -> Result<Vec<At<'a>>, ConfigError> {
        match &self.node.val {
            Val::Array(items) => Ok(items
                .iter()
                .enumerate()
                .map(|(i, node)| At {
                    node,
                    pos: node.span.start,
                    path: format!("{}[{i}]", self.path),
                })
                .collect()),
            _ => Err(self.wrong_type(cx, "an array")),
        }
    }

    /// An array of tables (`[[name]]`).
    pub(super) fn tables(&self, cx: &Cx<'_>, name: &str) -> Result<Vec<At<'a>>, ConfigError> {
        match &self.node.val {
            Val::Array(_) => self.array(cx),
            _ => Err(self.wrong_type(cx, &format!("an array of tables ([[{name}]])"))),
        }
    }

    pub(super) fn str(&self, cx: &Cx<'_>) -> Result<&'a str, ConfigError> {
        match &self.node.val {
            Val::Str(s) => Ok(s),
            _ => Err(self.wrong_type(cx, "a string")),
        }
    }

    /// A non-empty string.
    pub(super) fn name(&self, cx: &Cx<'_>) -> Result<String, ConfigError> {
        let s = self.str(cx)?;
        if s.trim().is_empty() {
            return Err(self.err(cx, "must not be empty"));
        }
        Ok(s.to_owned())
    }

    pub(super) fn int_in(&self, cx: &Cx<'_>, lo: i64, hi: i64) -> Result<i64, ConfigError> {
        match self.node.val {
            Val::Int(v) if (lo..=hi).contains(&v) => Ok(v),
            Val::Int(v) => Err(self.err(cx, format!("{v} is out of range ({lo}-{hi})"))),
            _ => Err(self.wrong_type(cx, "an integer")),
        }
    }

    pub(super) fn port(&self, cx: &Cx<'_>) -> Result<u16, ConfigError> {
        Ok(self.int_in(cx, 1, 65535)? as u16)
    }

    /// A finite number, written as an integer or a float.
    pub(super) fn number(&self, cx: &Cx<'_>) -> Result<f64, ConfigError> {
        match self.node.val {
            Val::Int(v) => Ok(v as f64),
            Val::Float(v) if v.is_finite() => Ok(v),
            Val::Float(v) => Err(self.err(cx, format!("{v} is not a finite number"))),
            _ => Err(self.wrong_type(cx, "a number")),
        }
    }

    pub(super) fn bool(&self, cx: &Cx<'_>) -> Result<bool, ConfigError> {
        match self.node.val {
            Val::Bool(v) => Ok(v),
            _ => Err(self.wrong_type(cx, "a boolean (true or false)")),
        }
    }

    /// A shell command (run with `/bin/sh -c`): not blank, no NUL.
    pub(super) fn command(&self, cx: &Cx<'_>) -> Result<String, ConfigError> {
        let s = self.str(cx)?;
        if s.trim().is_empty() {
            return Err(self.err(cx, "must not be empty"));
        }
        if s.contains('\0') {
            return Err(self.err(cx, "contains a NUL character"));
        }
        Ok(s.to_owned())
    }

    /// A duration string (`"30s"`, `"1h 30m"`, `"250ms"`) within `lo..=hi`.
    pub(super) fn duration_in(
        &self,
        cx: &Cx<'_>,
        lo: Duration,
        hi: Duration,
    ) -> Result<Duration, ConfigError> {
        let s = match &self.node.val {
            Val::Str(s) => s,
            Val::Int(v) => {
                return Err(self.err(
                    cx,
                    format!("expected a duration string such as \"{v}s\", found an integer"),
                ))
            }
            _ => {
                return Err(self.wrong_type(cx, &format!("a duration string ({DURATION_EXAMPLES})")))
            }
        };
        let d = humantime::parse_duration(s).map_err(|e| {
            self.err(
                cx,
                format!("\"{s}\" is not a duration ({DURATION_EXAMPLES}): {e}"),
            )
        })?;
        if d < lo || d > hi {
            return Err(self.err(
                cx,
                format!(
                    "\"{s}\" is out of range ({}-{})",
                    show_duration(lo),
                    show_duration(hi)
                ),
            ));
        }
        Ok(d)
    }

    /// A path: not empty, no NUL, and absolute if `absolute`.
    pub(super) fn path_str(&self, cx: &Cx<'_>, absolute: bool) -> Result<&'a str, ConfigError> {
        let s = self.str(cx)?;
        if s.is_empty() {
            return Err(self.err(cx, "must not be empty"));
        }
        if s.contains('\0') {
            return Err(self.err(cx, "contains a NUL character"));
        }
        if absolute && !s.starts_with('/') {
            return Err(self.err(
                cx,
                format!("\"{s}\" is not an absolute path (it must start with /)"),
            ));
        }
        Ok(s)
    }

    /// The path of a file: as [`Self::path_str`], and not ending with `/`.
    pub(super) fn file_path(&self, cx: &Cx<'_>, absolute: bool) -> Result<&'a str, ConfigError> {
        let s = self.path_str(cx, absolute)?;
        if s.ends_with('/') {
            return Err(self.err(cx, format!("\"{s}\" ends with /; give the path of a file")));
        }
        Ok(s)
    }
}

pub(super) struct Table<'a> {
    pub(super) entries: &'a [Entry],
    pub(super) pos: usize,
    pub(super) path: String,
}

impl<'a> Table<'a> {
    pub(super) fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub(super) fn allow(&self, cx: &Cx<'_>, allowed: &[&str]) -> Result<(), ConfigError> {
        for e in self.entries {
            if !allowed.contains(&e.key.as_str()) {
                let pos = e.key_span.start;
                let what = if self.path.is_empty() {
                    "allowed at the top level".to_owned()
                } else {
                    format!("allowed in {}", self.path)
                };
                return Err(cx.err(
                    pos,
                    self.child_path(&e.key),
                    format!("unknown key `{}`; {what}: {}", e.key, allowed.join(", ")),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn get(&self, key: &str) -> Option<At<'a>> {
        let e = self.entries.iter().find(|e| e.key == key)?;
        let pos = e.node.span.start;
        Some(At {
            node: &e.node,
            pos,
            path: self.child_path(key),
        })
    }

    /// An error about the table as a whole.
    pub(super) fn err_here(&self, cx: &Cx<'_>, message: impl Into<String>) -> ConfigError {
        cx.err(self.pos, self.path.clone(), message)
    }

    pub(super) fn require(&self, cx: &Cx<'_>, key: &str) -> Result<At<'a>, ConfigError> {
        self.get(key).ok_or_else(|| {
            cx.err(
                self.pos,
                self.child_path(key),
                format!("missing required key `{key}`"),
            )
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The value tree. `toml::de::DeTable::parse` (toml's public span API) reads the text into a
// document whose every key and value carries its byte span; implicit tables (`[a.b]` makes `a`,
// dotted keys) carry the span of their key. It is copied into this owned tree, with each
// table's entries in the order they appear in the file (DeTable keeps them sorted by name), so
// that the first unknown key reported is the first one written.

#[derive(Debug)]
pub(super) struct Node {
    pub(super) span: Range<usize>,
    pub(super) val: Val,
}

#[derive(Debug)]
pub(super) enum Val {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime,
    Array(Vec<Node>),
    Table(Vec<Entry>),
}

impl Val {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Val::Str(_) => "a string",
            Val::Int(_) => "an integer",
            Val::Float(_) => "a float",
            Val::Bool(_) => "a boolean",
            Val::Datetime => "a date-time",
            Val::Array(_) => "an array",
            Val::Table(_) => "a table",
        }
    }
}

#[derive(Debug)]
pub(super) struct Entry {
    pub(super) key: String,
    pub(super) key_span: Range<usize>,
    pub(super) node: Node,
}

/// Reads `cx.text` into the value tree; TOML syntax errors (and duplicate keys) are reported
/// at their place.
pub(super) fn read_tree(cx: &Cx<'_>) -> Result<Node, ConfigError> {
    let root = DeTable::parse(cx.text).map_err(|e| cx.syntax_error(&e))?;
    let span = root.span();
    to_node(
        cx,
        Spanned::new(span, DeValue::Table(root.into_inner())),
        "",
    )
}

pub(super) fn to_node(
    cx: &Cx<'_>,
    value: Spanned<DeValue<'_>>,
    path: &str,
) -> Result<Node, ConfigError> {
    let span = value.span();
    let val = match value.into_inner() {
        DeValue::String(s) => Val::Str(s.into_owned()),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(v) => Val::Int(v),
            Err(_) => {
                return Err(cx.err(
                    span.start,
                    path,
                    format!("{i} does not fit in a 64-bit integer"),
                ))
            }
        },
        DeValue::Float(f) => match f.as_str().parse() {
            Ok(v) => Val::Float(v),
            Err(_) => return Err(cx.err(span.start, path, format!("{f} is not a float"))),
        },
        DeValue::Boolean(b) => Val::Bool(b),
        DeValue::Datetime(_) => Val::Datetime,
        DeValue::Array(items) => Val::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| to_node(cx, item, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        DeValue::Table(table) => {
            let mut entries = table
                .into_iter()
                .map(|(key, value)| {
                    let key_span = key.span();
                    let key = key.into_inner().into_owned();
                    let child = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    let node = to_node(cx, value, &child)?;
                    Ok(Entry {
                        key,
                        key_span,
                        node,
                    })
                })
                .collect::<Result<Vec<_>, ConfigError>>()?;
            entries.sort_by_key(|e| e.key_span.start);
            Val::Table(entries)
        }
    };
    Ok(Node { span, val })
}
