//! Loading manifests: YAML (one or more documents separated by `---`) or JSON (one object, an
//! array, a stream of objects, or a `kind: List` with `items`) into validated resources.
//!
//! All or nothing: the first bad document fails the whole load, and the error names the
//! document (1-based, counting non-empty documents), the line it starts on, the field path and
//! the reason. YAML and JSON syntax errors carry the line and column in the whole text.

use std::fmt;

use serde_json::Value;

use crate::error::ValidationError;
use crate::resource::Resource;

/// Why a manifest could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    /// The text is not valid YAML or JSON.
    Syntax {
        /// 1-based index of the document.
        document: usize,
        /// 1-based line in the whole text.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A document parsed but is not a valid resource.
    Invalid {
        /// 1-based index of the document.
        document: usize,
        /// 1-based line in the whole text where the document starts.
        line: usize,
        /// 1-based line of the offending field, when it could be found in block-style YAML.
        field_line: Option<usize>,
        /// The field and the reason (paths inside lists start with `items[i]` or `[i]`).
        error: ValidationError,
    },
}

impl LoadError {
    /// The 1-based index of the failing document.
    pub fn document(&self) -> usize {
        match self {
            LoadError::Syntax { document, .. } | LoadError::Invalid { document, .. } => *document,
        }
    }

    /// The line of the syntax error, or where the invalid document starts.
    pub fn line(&self) -> usize {
        match self {
            LoadError::Syntax { line, .. } | LoadError::Invalid { line, .. } => *line,
        }
    }

    /// The field path of a validation error (empty for syntax errors).
    pub fn path(&self) -> &str {
        match self {
            LoadError::Syntax { .. } => "",
            LoadError::Invalid { error, .. } => &error.path,
        }
    }

    /// The reason, without the position.
    pub fn reason(&self) -> &str {
        match self {
            LoadError::Syntax { message, .. } => message,
            LoadError::Invalid { error, .. } => &error.reason,
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Syntax {
                document,
                line,
                column,
                message,
            } => write!(
                f,
                "document {document}: syntax error at line {line} column {column}: {message}"
            ),
            LoadError::Invalid {
                document,
                line,
                field_line: Some(at),
                error,
            } if at != line => {
                write!(
                    f,
                    "document {document} (starting at line {line}), line {at}: {error}"
                )
            }
            LoadError::Invalid {
                document,
                line,
                error,
                ..
            } => {
                write!(f, "document {document} (line {line}): {error}")
            }
        }
    }
}

impl std::error::Error for LoadError {}

/// Parses every resource in `text` (YAML or JSON). Objects of namespaced kinds without a
/// namespace go in `default_namespace`, or `default`. Empty documents are skipped.
pub fn parse_documents(
    text: &str,
    default_namespace: Option<&str>,
) -> Result<Vec<Resource>, LoadError> {
    let docs = if looks_like_json(text) {
        json_documents(text)?
    } else {
        yaml_documents(text)?
    };
    let mut out = Vec::new();
    for (index, doc) in docs.into_iter().enumerate() {
        let document = index + 1;
        let source = &doc.source;
        let invalid = |error: ValidationError| LoadError::Invalid {
            document,
            line: doc.line,
            field_line: source
                .as_ref()
                .and_then(|(text, first)| field_line(text, &error.path).map(|i| first + i)),
            error,
        };
        match doc.value {
            Value::Array(items) => {
                for (i, item) in items.into_iter().enumerate() {
                    let r = Resource::from_value_in(item, default_namespace)
                        .map_err(|e| invalid(e.within(&format!("[{i}]"))))?;
                    out.push(r);
                }
            }
            Value::Object(ref o)
                if o.get("kind")
                    .and_then(Value::as_str)
                    .is_some_and(is_list_kind) =>
            {
                let Value::Object(mut o) = doc.value else {
                    continue;
                };
                // A typed list (`IPPoolList`, as `get -o yaml` prints several resources) gives its
                // items that kind and apiVersion when they do not say.
                let item_kind = o
                    .get("kind")
                    .and_then(Value::as_str)
                    .and_then(|k| k.strip_suffix("List"))
                    .filter(|k| !k.is_empty())
                    .map(str::to_string);
                let item_api_version = o.get("apiVersion").cloned();
                let items = match o.remove("items") {
                    Some(Value::Array(items)) => items,
                    Some(Value::Null) | None => Vec::new(),
                    Some(_) => {
                        return Err(invalid(ValidationError::new("items", "expected a list")));
                    }
                };
                for (i, mut item) in items.into_iter().enumerate() {
                    if let (Some(kind), Value::Object(fields)) = (&item_kind, &mut item) {
                        fields
                            .entry("kind")
                            .or_insert_with(|| Value::String(kind.clone()));
                        if let Some(api_version) = &item_api_version {
                            fields
                                .entry("apiVersion")
                                .or_insert_with(|| api_version.clone());
                        }
                    }
                    let r = Resource::from_value_in(item, default_namespace)
                        .map_err(|e| invalid(e.within(&format!("items[{i}]"))))?;
                    out.push(r);
                }
            }
            value => out.push(Resource::from_value_in(value, default_namespace).map_err(invalid)?),
        }
    }
    Ok(out)
}

/// `List`, or a typed list of a known kind such as `IPPoolList`.
fn is_list_kind(kind: &str) -> bool {
    kind == "List"
        || kind
            .strip_suffix("List")
            .is_some_and(|k| crate::Kind::all().iter().any(|known| known.name() == k))
}

/// One non-empty document and the line its content starts on; for YAML also its text and the
/// line that text starts on, to find fields in.
struct Document {
    line: usize,
    value: Value,
    source: Option<(String, usize)>,
}

fn looks_like_json(text: &str) -> bool {
    // JSON starts with `{"` or `[{"` (or is empty braces); YAML flow style such as
    // `{kind: Tier, ...}` starts with a brace too but has unquoted keys.
    let trimmed = text.trim_start();
    if !trimmed.starts_with(['{', '[']) {
        return false;
    }
    let rest = trimmed.trim_start_matches(|c: char| c == '{' || c == '[' || c.is_whitespace());
    rest.is_empty() || rest.starts_with(['"', '}', ']'])
}

/// A stream of JSON values (usually one).
fn json_documents(text: &str) -> Result<Vec<Document>, LoadError> {
    let mut docs = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let mut start = 0;
    loop {
        let begin = start + leading_whitespace(&text[start..]);
        let line = 1 + text[..begin].matches('\n').count();
        match stream.next() {
            None => break,
            Some(Ok(value)) => {
                start = stream.byte_offset();
                if !value.is_null() {
                    docs.push(Document {
                        line,
                        value,
                        source: None,
                    });
                }
            }
            Some(Err(e)) => {
                return Err(LoadError::Syntax {
                    document: docs.len() + 1,
                    line: e.line(),
                    column: e.column(),
                    message: strip_position(&e.to_string()),
                });
            }
        }
    }
    Ok(docs)
}

fn leading_whitespace(s: &str) -> usize {
    s.len() - s.trim_start().len()
}

/// Splits YAML on `---` lines and parses each document, keeping line numbers of the whole text.
fn yaml_documents(text: &str) -> Result<Vec<Document>, LoadError> {
    let mut docs = Vec::new();
    for chunk in split_yaml(text) {
        let Some(content_line) = chunk.content_line else {
            continue;
        };
        let document = docs.len() + 1;
        let value: Value = serde_saphyr::from_str(&chunk.text).map_err(|e| {
            let (line, column) = match e.location() {
                Some(loc) if loc.line() > 0 => (
                    chunk.first_line + usize::try_from(loc.line()).unwrap_or(1) - 1,
                    usize::try_from(loc.column()).unwrap_or(1),
                ),
                _ => (content_line, 1),
            };
            LoadError::Syntax {
                document,
                line,
                column,
                message: saphyr_message(&e.to_string()),
            }
        })?;
        if !value.is_null() {
            docs.push(Document {
                line: content_line,
                value,
                source: Some((chunk.text, chunk.first_line)),
            });
        }
    }
    Ok(docs)
}

/// One `---`-separated chunk of YAML: its text, the line its text starts on, and the line of
/// its first non-blank, non-comment line (none if it is empty).
struct Chunk {
    text: String,
    first_line: usize,
    content_line: Option<usize>,
}

fn split_yaml(text: &str) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    let mut current = Chunk {
        text: String::new(),
        first_line: 1,
        content_line: None,
    };
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        let is_marker = |m: &str| {
            line.strip_prefix(m)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
        };
        if is_marker("---") || is_marker("...") {
            let rest = line.get(3..).unwrap_or("");
            let next = Chunk {
                text: String::new(),
                first_line: number,
                content_line: None,
            };
            chunks.push(std::mem::replace(&mut current, next));
            if is_marker("---") && !is_blank_or_comment(rest) {
                // `--- value` on the marker line: keep the value, at its column.
                current.text.push_str("   ");
                current.text.push_str(rest);
                current.content_line = Some(number);
            }
            current.text.push('\n');
            continue;
        }
        if line.starts_with('%') && current.content_line.is_none() {
            // A directive (`%YAML 1.2`) before the document: not content.
            current.text.push('\n');
            continue;
        }
        if current.content_line.is_none() && !is_blank_or_comment(line) {
            current.content_line = Some(number);
        }
        current.text.push_str(line);
        current.text.push('\n');
    }
    chunks.push(current);
    chunks
}

fn is_blank_or_comment(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

/// The first line of a serde-saphyr message, without its `error: line N column M:` prefix.
fn saphyr_message(full: &str) -> String {
    let first = full.lines().next().unwrap_or(full);
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // The library's advice names its own options; ours has none to offer.
    let first = first
        .split(", set DuplicateKeyPolicy")
        .next()
        .unwrap_or(first);
    strip_position(first)
}

/// Removes a leading `line N column M: ` and a trailing ` at line N column M`.
fn strip_position(msg: &str) -> String {
    let mut m = msg;
    if let Some(rest) = m.strip_prefix("line ")
        && let Some((_, after)) = rest.split_once(": ")
        && rest
            .split(": ")
            .next()
            .is_some_and(|p| p.contains("column"))
    {
        m = after;
    }
    if let Some(idx) = m.rfind(" at line ") {
        m = &m[..idx];
    }
    m.to_string()
}

/// One step of a field path.
#[derive(Debug, PartialEq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// Splits `spec.ingress[0].ports[1]` into steps.
fn steps(path: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Step::Key(key));
        }
        while let Some(stripped) = rest.strip_prefix('[') {
            let Some((n, after)) = stripped.split_once(']') else {
                break;
            };
            match n.parse() {
                Ok(n) => out.push(Step::Index(n)),
                Err(_) => break,
            }
            rest = after;
        }
    }
    out
}

/// The 0-based line of `path` in block-style YAML `text`, or of the deepest part of it found.
/// A best effort for error messages: flow style (`{...}`, `[...]`) stops the search.
fn field_line(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = None;
    let mut pos = 0;
    let mut parent: isize = -1;
    let mut on_item_line = false;
    for step in steps(path) {
        let hit = match step {
            Step::Key(key) => find_key(&lines, pos, parent, on_item_line, key),
            Step::Index(n) => find_item(&lines, pos, parent, n),
        };
        let Some((line, indent)) = hit else { break };
        found = Some(line);
        parent = indent;
        match step {
            Step::Key(_) => {
                pos = line + 1;
                on_item_line = false;
            }
            Step::Index(_) => {
                pos = line;
                on_item_line = true;
            }
        }
    }
    found
}

fn indent_of(line: &str) -> isize {
    isize::try_from(line.len() - line.trim_start_matches(' ').len()).unwrap_or(isize::MAX)
}

/// Finds `key:` in the mapping whose keys are indented more than `parent`, starting at `pos`.
fn find_key(
    lines: &[&str],
    pos: usize,
    parent: isize,
    on_item_line: bool,
    key: &str,
) -> Option<(usize, isize)> {
    for (i, line) in lines.iter().enumerate().skip(pos) {
        if is_blank_or_comment(line) {
            continue;
        }
        let first = i == pos && on_item_line;
        if indent_of(line) <= parent && !first {
            return None;
        }
        // Keys of a list item start after its "- ".
        let mut body = line.trim_start_matches(' ');
        let mut col = indent_of(line);
        while let Some(rest) = body.strip_prefix("- ") {
            let trimmed = rest.trim_start_matches(' ');
            col += isize::try_from(body.len() - trimmed.len()).unwrap_or(0);
            body = trimmed;
        }
        let unquoted = body.trim_start_matches(['"', '\'']);
        if let Some(rest) = unquoted.strip_prefix(key)
            && rest.trim_start_matches(['"', '\'']).starts_with(':')
            && col > parent
        {
            return Some((i, col));
        }
    }
    None
}

/// Finds the `n`th `- ` item of the list that follows a key whose indentation is `parent`.
fn find_item(lines: &[&str], pos: usize, parent: isize, n: usize) -> Option<(usize, isize)> {
    let mut dash_indent = None;
    let mut count = 0;
    for (i, line) in lines.iter().enumerate().skip(pos) {
        if is_blank_or_comment(line) {
            continue;
        }
        let indent = indent_of(line);
        let is_item = line.trim_start_matches(' ').starts_with('-');
        if indent < parent || (indent == parent && !is_item) {
            return None;
        }
        if !is_item || dash_indent.is_some_and(|d| d != indent) {
            continue;
        }
        dash_indent = Some(indent);
        if count == n {
            return Some((i, indent));
        }
        count += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_keys_and_indices() {
        assert_eq!(
            steps("items[1].spec.ingress[0].ports[2]"),
            [
                Step::Key("items"),
                Step::Index(1),
                Step::Key("spec"),
                Step::Key("ingress"),
                Step::Index(0),
                Step::Key("ports"),
                Step::Index(2)
            ]
        );
        assert_eq!(
            steps("[3].metadata"),
            [Step::Index(3), Step::Key("metadata")]
        );
    }

    #[test]
    fn fields_are_found_in_block_yaml() {
        let text = "\
kind: GlobalNetworkPolicy
spec:
  selector: all()
  ingress:
  - action: Allow
  - action: Allow
    protocol: TCP
    destination:
      selector: a == 'b'
      ports:
        - 80
        - http
  egress:
    - action: Deny
";
        assert_eq!(field_line(text, "spec.selector"), Some(2));
        assert_eq!(field_line(text, "spec.ingress[1].protocol"), Some(6));
        assert_eq!(
            field_line(text, "spec.ingress[1].destination.ports[1]"),
            Some(11)
        );
        assert_eq!(field_line(text, "spec.ingress[0].action"), Some(4));
        assert_eq!(field_line(text, "spec.egress[0].action"), Some(13));
        // Missing parts: the deepest part found.
        assert_eq!(field_line(text, "spec.ingress[1].source"), Some(5));
        assert_eq!(field_line(text, "spec.types"), Some(1));
    }
}

#[cfg(test)]
mod typed_list_tests {
    use super::*;

    #[test]
    fn typed_lists_as_get_prints_them_load_back() {
        let text = "apiVersion: projectcalico.org/v3\nkind: IPPoolList\nitems:\n- apiVersion: projectcalico.org/v3\n  kind: IPPool\n  metadata:\n    name: a\n  spec:\n    cidr: 10.1.0.0/16\n- metadata:\n    name: b\n  spec:\n    cidr: 10.2.0.0/16\n";
        let resources = parse_documents(text, None).unwrap();
        assert_eq!(resources.len(), 2);
        assert!(resources.iter().all(|r| r.kind() == crate::Kind::IpPool));
        assert!(parse_documents("apiVersion: v1\nkind: BananaList\nitems: []\n", None).is_err());
    }
}
