//! Plain-text tables for terminal reports: text columns left-aligned, number columns right-aligned.

/// Renders `rows` under `headers` with columns padded to their widest cell.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let numeric: Vec<bool> = (0..headers.len())
        .map(|i| {
            rows.iter().all(|r| {
                r.get(i).is_some_and(|c| {
                    c == "-"
                        || c.trim_end_matches(['x', '%', 's'])
                            .replace('/', "")
                            .parse::<f64>()
                            .is_ok()
                })
            })
        })
        .collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if numeric[i] {
                    format!("{c:>w$}")
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    out.push_str(&line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    ));
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn pads_columns() {
        let t = super::render(
            &["name", "n"],
            &[
                vec!["a".into(), "100".into()],
                vec!["long name".into(), "2".into()],
            ],
        );
        assert_eq!(
            t,
            "name         n\n---------  ---\na          100\nlong name    2\n"
        );
        let t = super::render(&["a", "b"], &[vec!["x".into(), "yy".into()]]);
        assert_eq!(t, "a  b\n-  --\nx  yy\n");
    }
}
