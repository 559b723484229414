//! Plain-text tables: the first column left-aligned, the rest right-aligned, columns as wide as
//! their widest cell.

/// A table of strings with a header row.
#[derive(Clone, Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    /// How many leading columns are left-aligned (labels); the rest are numbers.
    label_columns: usize,
}

impl Table {
    /// A table with these column headers, whose first `label_columns` columns are text.
    pub fn new(header: &[&str], label_columns: usize) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
            label_columns,
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as lines of text, with a rule under the header.
    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).chain([self.header.len()]).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let line = |row: &[String]| {
            let cells: Vec<String> = (0..columns)
                .map(|i| {
                    let cell = row.get(i).map(String::as_str).unwrap_or("");
                    if i < self.label_columns {
                        format!("{cell:<w$}", w = widths[i])
                    } else {
                        format!("{cell:>w$}", w = widths[i])
                    }
                })
                .collect();
            cells.join("  ").trim_end().to_string()
        };
        let mut out = line(&self.header);
        out.push('\n');
        let rule_len = widths.iter().sum::<usize>() + 2 * columns.saturating_sub(1);
        out.push_str(&"-".repeat(rule_len));
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row));
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_labels_left_and_numbers_right() {
        let mut t = Table::new(&["tool", "s"], 1);
        t.row(vec!["bitsd".into(), "1.25".into()]);
        t.row(vec!["aria2c -x16".into(), "10.5".into()]);
        assert_eq!(
            t.render(),
            "tool            s\n-----------------\nbitsd        1.25\naria2c -x16  10.5\n"
        );
    }
}
