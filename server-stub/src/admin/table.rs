//! A small aligned-column text table for the human output of `flex-admin`.
//!
//! Columns are separated by two spaces and padded to their widest cell,
//! counted in characters so that names with accents line up. Numeric columns
//! are right-aligned. The last column is not padded, so lines carry no
//! trailing spaces.

/// How a column's cells are aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table of text cells under a header row.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers, all left-aligned.
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            align: vec![Align::Left; headers.len()],
            rows: Vec::new(),
        }
    }

    /// Right-aligns the columns at these indexes (numbers).
    pub fn right(mut self, columns: &[usize]) -> Table {
        for &c in columns {
            if let Some(a) = self.align.get_mut(c) {
                *a = Align::Right;
            }
        }
        self
    }

    /// Adds a row; missing cells are empty, extra cells are dropped.
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut row: Vec<String> = cells
            .into_iter()
            .map(Into::into)
            .take(self.headers.len())
            .collect();
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as lines, each ending in `\n`.
    pub fn render(&self) -> String {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let last = self.headers.len().saturating_sub(1);
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = " ".repeat(widths[i] - width(cell));
                match self.align[i] {
                    Align::Right => {
                        line.push_str(&pad);
                        line.push_str(cell);
                    }
                    Align::Left => {
                        line.push_str(cell);
                        if i != last {
                            line.push_str(&pad);
                        }
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell() {
        let mut t = Table::new(&["ID", "NAME", "CHARGE"]);
        t.row(["autocad", "AutoCAD", "7 tokens/day"]);
        t.row(["recap-photo", "ReCap Photo", "1 token per 50 results"]);
        assert_eq!(
            t.render(),
            "ID           NAME         CHARGE\n\
             autocad      AutoCAD      7 tokens/day\n\
             recap-photo  ReCap Photo  1 token per 50 results\n"
        );
    }

    #[test]
    fn right_aligned_numbers_and_no_trailing_spaces() {
        let mut t = Table::new(&["LOT", "TOKENS", "NOTE"]).right(&[0, 1]);
        t.row(["1", "500", ""]);
        t.row(["12", "10000", "x"]);
        assert_eq!(
            t.render(),
            "LOT  TOKENS  NOTE\n\
             \x20 1     500\n\
             \x2012   10000  x\n"
        );
    }

    #[test]
    fn width_counts_characters_not_bytes() {
        let mut t = Table::new(&["NAME", "FLEX"]);
        t.row(["Zoë", "yes"]);
        t.row(["Bob", "no"]);
        assert_eq!(t.render(), "NAME  FLEX\nZoë   yes\nBob   no\n");
    }

    #[test]
    fn short_rows_are_padded_and_long_rows_cut() {
        let mut t = Table::new(&["A", "B"]);
        t.row(["1"]);
        t.row(["2", "3", "4"]);
        assert_eq!(t.render(), "A  B\n1\n2  3\n");
        assert!(!t.is_empty());
        assert!(Table::new(&["A"]).is_empty());
    }
}
