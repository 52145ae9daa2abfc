//! Recursive-descent parser for the selector grammar (the reference §3, after Calico's
//! `libcalico-go/lib/selector/{tokenizer,parser}`).
//!
//! Lexing is driven by the parser: an operator word (`in`, `contains`, ...) is only looked for
//! after a label, so a label may itself be spelled `in` or `contains`.

use super::ParseError;
use super::expr::Expr;
use super::expr::Key;

/// Longest label key accepted, as in Calico's tokenizer.
const MAX_LABEL_LEN: usize = 512;

/// Deepest nesting of parentheses accepted (bounds recursion on hostile input).
const MAX_DEPTH: usize = 100;

/// Parses a whole selector; the empty (or all-whitespace) string is `all()`.
pub(crate) fn parse(source: &str) -> Result<Expr, ParseError> {
    let mut parser = Parser {
        source,
        bytes: source.as_bytes(),
        pos: 0,
        depth: 0,
    };
    parser.skip_whitespace();
    if parser.at_end() {
        return Ok(Expr::All);
    }
    let expr = parser.or_expr()?;
    parser.skip_whitespace();
    match parser.peek() {
        None => Ok(expr),
        Some(b')') => Err(parser.error_here("unexpected ')'")),
        Some(_) => Err(parser.error_here("expected '&&', '||' or the end of the selector")),
    }
}

struct Parser<'a> {
    source: &'a str,
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
}

fn is_label_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'/' | b'-')
}

impl<'a> Parser<'a> {
    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn rest(&self) -> &[u8] {
        self.bytes.get(self.pos..).unwrap_or_default()
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    /// 1-based column, in characters, of byte offset `pos`.
    fn column_at(&self, pos: usize) -> usize {
        let prefix = self.source.get(..pos).unwrap_or(self.source);
        prefix.chars().count() + 1
    }

    fn error_at(&self, pos: usize, message: &str) -> ParseError {
        ParseError {
            column: self.column_at(pos),
            message: message.to_string(),
        }
    }

    fn error_here(&self, message: &str) -> ParseError {
        self.error_at(self.pos, message)
    }

    /// Consumes `token` if the input continues with it.
    fn eat(&mut self, token: &str) -> bool {
        if self.rest().starts_with(token.as_bytes()) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    /// The run of label characters at the cursor (possibly empty), not consumed.
    fn peek_word(&self) -> &'a str {
        let len = self
            .rest()
            .iter()
            .take_while(|b| is_label_byte(**b))
            .count();
        // Label bytes are ASCII, so this slice is on character boundaries.
        self.source
            .get(self.pos..self.pos + len)
            .unwrap_or_default()
    }

    fn or_expr(&mut self) -> Result<Expr, ParseError> {
        let mut children = vec![self.and_expr()?];
        loop {
            self.skip_whitespace();
            if !self.eat("||") {
                break;
            }
            children.push(self.and_expr()?);
        }
        Ok(Expr::or(children))
    }

    fn and_expr(&mut self) -> Result<Expr, ParseError> {
        let mut children = vec![self.operation()?];
        loop {
            self.skip_whitespace();
            if !self.eat("&&") {
                break;
            }
            children.push(self.operation()?);
        }
        Ok(Expr::and(children))
    }

    /// `"!"* primary`: an even number of `!` cancels out.
    fn operation(&mut self) -> Result<Expr, ParseError> {
        let mut negated = false;
        loop {
            self.skip_whitespace();
            // `!=` never starts an operation, so a lone `!` here is negation.
            if self.peek() == Some(b'!') {
                self.pos += 1;
                negated = !negated;
            } else {
                break;
            }
        }
        let expr = self.primary()?;
        Ok(if negated { expr.negate() } else { expr })
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        self.skip_whitespace();
        let start = self.pos;
        match self.peek() {
            None => Err(self.error_here("expected a label, '(', '!', has(), all() or global()")),
            Some(b'(') => {
                self.pos += 1;
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(self.error_at(start, "parentheses nested too deeply"));
                }
                let inner = self.or_expr()?;
                self.depth -= 1;
                self.skip_whitespace();
                if !self.eat(")") {
                    return Err(self.error_here("expected ')'"));
                }
                Ok(inner)
            }
            Some(b) if is_label_byte(b) => {
                if self.eat("has(") {
                    self.skip_whitespace();
                    let key = self.label()?;
                    self.skip_whitespace();
                    if !self.eat(")") {
                        return Err(self.error_here("expected ')' to close has("));
                    }
                    return Ok(Expr::Has(key));
                }
                if self.eat("all(") {
                    self.close_empty_call("all(")?;
                    return Ok(Expr::All);
                }
                if self.eat("global(") {
                    self.close_empty_call("global(")?;
                    return Ok(Expr::Global);
                }
                let key = self.label()?;
                self.comparison(key)
            }
            Some(_) => Err(self.error_here("expected a label, '(', '!', has(), all() or global()")),
        }
    }

    fn close_empty_call(&mut self, name: &str) -> Result<(), ParseError> {
        self.skip_whitespace();
        if self.eat(")") {
            Ok(())
        } else {
            Err(self.error_here(&format!("expected ')' to close {name}")))
        }
    }

    fn label(&mut self) -> Result<Key, ParseError> {
        let word = self.peek_word();
        if word.is_empty() {
            return Err(self.error_here("expected a label"));
        }
        if word.len() > MAX_LABEL_LEN {
            return Err(self.error_here("label is longer than 512 characters"));
        }
        self.pos += word.len();
        Ok(Key::new(word.into()))
    }

    /// The operator and operand after label `key`.
    fn comparison(&mut self, key: Key) -> Result<Expr, ParseError> {
        const EXPECTED: &str =
            "expected an operator (==, !=, in, not in, contains, starts with, ends with)";
        self.skip_whitespace();
        if self.eat("==") {
            return Ok(Expr::Eq(key, self.string()?));
        }
        if self.eat("!=") {
            return Ok(Expr::Ne(key, self.string()?));
        }
        let op_start = self.pos;
        let word = self.peek_word();
        let expr = match word {
            "in" => {
                self.pos += word.len();
                Expr::In(key, self.set()?)
            }
            "contains" => {
                self.pos += word.len();
                Expr::Contains(key, self.string()?)
            }
            "not" | "starts" | "ends" => {
                let second = if word == "not" { "in" } else { "with" };
                self.pos += word.len();
                self.skip_whitespace();
                if self.peek_word() != second {
                    return Err(self.error_here(&format!("expected '{second}' after '{word}'")));
                }
                self.pos += second.len();
                match word {
                    "not" => Expr::NotIn(key, self.set()?),
                    "starts" => Expr::StartsWith(key, self.string()?),
                    _ => Expr::EndsWith(key, self.string()?),
                }
            }
            _ => return Err(self.error_at(op_start, EXPECTED)),
        };
        Ok(expr)
    }

    /// A quoted string, `"..."` or `'...'`, without escapes.
    fn string(&mut self) -> Result<Box<str>, ParseError> {
        self.skip_whitespace();
        let quote = match self.peek() {
            Some(q @ (b'"' | b'\'')) => q,
            _ => return Err(self.error_here("expected a quoted string")),
        };
        let open = self.pos;
        let body_start = open + 1;
        let Some(len) = self
            .bytes
            .get(body_start..)
            .and_then(|b| b.iter().position(|c| *c == quote))
        else {
            return Err(self.error_at(open, "unterminated string"));
        };
        // Quotes are ASCII, so both ends are character boundaries.
        let value = self
            .source
            .get(body_start..body_start + len)
            .unwrap_or_default();
        self.pos = body_start + len + 1;
        Ok(value.into())
    }

    /// `{ [str ("," str)*] }`, returned sorted and deduplicated.
    fn set(&mut self) -> Result<Box<[Box<str>]>, ParseError> {
        self.skip_whitespace();
        if !self.eat("{") {
            return Err(self.error_here("expected '{'"));
        }
        let mut values = Vec::new();
        self.skip_whitespace();
        if !self.eat("}") {
            loop {
                values.push(self.string()?);
                self.skip_whitespace();
                if self.eat("}") {
                    break;
                }
                if !self.eat(",") {
                    return Err(self.error_here("expected ',' or '}'"));
                }
            }
        }
        values.sort_unstable();
        values.dedup();
        Ok(values.into_boxed_slice())
    }
}
