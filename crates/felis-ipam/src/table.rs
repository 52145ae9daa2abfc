//! Plain-text tables in calicoctl's style (Go `tablewriter`): `+---+` borders, centred
//! upper-case headers, numbers right-aligned, text left-aligned.
//!
//! ```text
//! +----------+----------------+-----------+------------+--------------+
//! | GROUPING |      CIDR      | IPS TOTAL | IPS IN USE |   IPS FREE   |
//! +----------+----------------+-----------+------------+--------------+
//! | IP Pool  | 192.168.0.0/16 |     65536 | 5 (0%)     | 65531 (100%) |
//! +----------+----------------+-----------+------------+--------------+
//! ```

/// A table: headers and rows of cells.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// Column headers.
    pub headers: Vec<String>,
    /// Rows; short rows are padded with empty cells.
    pub rows: Vec<Vec<String>>,
}

fn is_number(cell: &str) -> bool {
    let digits = cell.strip_prefix('-').unwrap_or(cell);
    !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits.chars().filter(|c| *c == '.').count() <= 1
        && digits.starts_with(|c: char| c.is_ascii_digit())
}

impl Table {
    /// A table with these headers and no rows.
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Table {
        Table {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) -> &mut Table {
        self.rows.push(cells.into_iter().map(Into::into).collect());
        self
    }

    /// Renders the table, ending with a newline.
    pub fn render(&self) -> String {
        let columns = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.headers.len()])
            .max()
            .unwrap_or(0);
        let cell = |row: &[String], i: usize| row.get(i).cloned().unwrap_or_default();
        let mut widths = vec![0usize; columns];
        for (i, width) in widths.iter_mut().enumerate() {
            *width = std::iter::once(cell(&self.headers, i))
                .chain(self.rows.iter().map(|r| cell(r, i)))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0);
        }
        let border: String = {
            let mut line = String::from("+");
            for w in &widths {
                line.push_str(&"-".repeat(w + 2));
                line.push('+');
            }
            line.push('\n');
            line
        };
        let mut out = border.clone();
        out.push('|');
        for (i, w) in widths.iter().enumerate() {
            let text = cell(&self.headers, i).to_uppercase();
            let pad = w - text.chars().count();
            let left = pad / 2;
            out.push_str(&format!(
                " {}{}{} |",
                " ".repeat(left),
                text,
                " ".repeat(pad - left)
            ));
        }
        out.push('\n');
        out.push_str(&border);
        for row in &self.rows {
            out.push('|');
            for (i, w) in widths.iter().enumerate() {
                let text = cell(row, i);
                if is_number(&text) {
                    out.push_str(&format!(" {text:>w$} |"));
                } else {
                    out.push_str(&format!(" {text:<w$} |"));
                }
            }
            out.push('\n');
        }
        if !self.rows.is_empty() {
            out.push_str(&border);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_calicoctl() {
        let mut table = Table::new(["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"]);
        table.row([
            "IP Pool",
            "192.168.0.0/16",
            "65536",
            "5 (0%)",
            "65531 (100%)",
        ]);
        let expected = "\
+----------+----------------+-----------+------------+--------------+
| GROUPING |      CIDR      | IPS TOTAL | IPS IN USE |   IPS FREE   |
+----------+----------------+-----------+------------+--------------+
| IP Pool  | 192.168.0.0/16 |     65536 | 5 (0%)     | 65531 (100%) |
+----------+----------------+-----------+------------+--------------+
";
        assert_eq!(table.render(), expected);
    }
}
