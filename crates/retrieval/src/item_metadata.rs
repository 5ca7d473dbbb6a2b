//! What a catalogue item carries besides its vector: metadata columns from the catalogue list
//! (`category`, `brand`, `in_stock`, …) and the filters a search restricts them with.
//!
//! Metadata is text: a list's extra columns are kept cell by cell, an empty cell meaning "not
//! set". A [`Filter`] is written `name=value,name2=a|b`: every named column must hold one of
//! its listed values (AND across names, OR within one), compared as exact text. `label` names
//! the item's product label. Both engines evaluate the same filter: the embedded index inside
//! its exact scan, PostgreSQL as a `WHERE` clause ([`Filter::sql`]).

use std::collections::BTreeMap;
use std::fmt;

use crate::error::RetrievalError;

/// An item's metadata: column name → non-empty value.
pub type Metadata = BTreeMap<String, String>;

/// Column names an index keeps for itself (`items.csv` has them; `label` filters the label).
pub const RESERVED_NAMES: [&str; 3] = ["id", "label", "path"];

/// Longest metadata value kept (bytes); a longer cell is refused, not truncated.
pub const MAX_VALUE_BYTES: usize = 1024;

/// Most metadata columns one catalogue may have.
pub const MAX_COLUMNS: usize = 64;

/// Whether `name` can be a metadata column: 1–64 ASCII letters, digits, `_`, `-` or `.`, not a
/// reserved name. (`=`, `,` and `|` would make filters ambiguous; the rest keeps names safe to
/// show and to use as JSON keys.)
pub fn check_column_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !ok {
        return Err(format!(
            "metadata column {name:?}: use 1–64 letters, digits, '_', '-' or '.'"
        ));
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(format!(
            "metadata column {name:?} is reserved (the index keeps id, label and path itself)"
        ));
    }
    Ok(())
}

/// Metadata from a JSON object as PostgreSQL keeps it (`jsonb`); values that are not strings
/// are written as JSON text, anything but an object is no metadata.
pub fn from_json(value: &serde_json::Value) -> Metadata {
    value
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                    (k.clone(), text)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Metadata as a JSON object of strings.
pub fn to_json(metadata: &Metadata) -> serde_json::Value {
    serde_json::Value::Object(
        metadata
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect(),
    )
}

/// Checks a metadata value: at most [`MAX_VALUE_BYTES`] and no control characters but tab.
pub fn check_value(value: &str) -> Result<(), String> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "a metadata value of {} bytes (at most {MAX_VALUE_BYTES})",
            value.len()
        ));
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err("a metadata value holds control characters".into());
    }
    Ok(())
}

/// One clause: `column` must hold one of `values`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    pub column: String,
    pub values: Vec<String>,
}

/// A conjunction of clauses; empty means "every item".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub clauses: Vec<Clause>,
}

impl Filter {
    /// The columns this filter names that are neither `label` nor one of `columns` (an index's
    /// metadata columns): a clause on such a column matches no item, so a search with it finds
    /// nothing whatever the query.
    pub fn unknown_columns<'a>(&'a self, columns: &[String]) -> Vec<&'a str> {
        let mut unknown: Vec<&str> = Vec::new();
        for c in self.clauses.iter().map(|c| c.column.as_str()) {
            if c != "label" && !columns.iter().any(|k| k == c) && !unknown.contains(&c) {
                unknown.push(c);
            }
        }
        unknown
    }

    /// An error naming the columns [`Filter::unknown_columns`] finds, and listing `columns`,
    /// for `search` and the server alike.
    pub fn check_columns(&self, columns: &[String]) -> Result<(), RetrievalError> {
        let unknown = self.unknown_columns(columns);
        if unknown.is_empty() {
            return Ok(());
        }
        Err(RetrievalError::Invalid(format!(
            "filter: no catalogue item has {} (metadata columns: {}; and label)",
            unknown.join(", "),
            if columns.is_empty() {
                "none".to_string()
            } else {
                columns.join(", ")
            }
        )))
    }

    /// Parses `name=value[|value…][,name=value…]`; an empty text is the empty filter. A value
    /// holding `,`, `|` or `"` is written in double quotes, a quote inside doubled
    /// (`brand="Smith, ""the"" baker"`). A name given twice must match both clauses.
    pub fn parse(text: &str) -> Result<Filter, RetrievalError> {
        let bad = |m: String| RetrievalError::Invalid(format!("filter {text:?}: {m}"));
        let mut clauses = Vec::new();
        for part in split_outside_quotes(text, ',').map_err(bad)? {
            if part.trim().is_empty() {
                continue;
            }
            let (name, values) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("{:?} is not name=value", part.trim())))?;
            let name = name.trim();
            if name != "label" {
                check_column_name(name).map_err(bad)?;
            }
            let values = split_outside_quotes(values, '|')
                .map_err(bad)?
                .iter()
                .map(|v| unquote(v))
                .collect::<Result<Vec<String>, String>>()
                .map_err(bad)?;
            if values.iter().any(String::is_empty) {
                return Err(bad(format!("{:?} has an empty value", part.trim())));
            }
            for v in &values {
                check_value(v).map_err(bad)?;
                if name == "label" && v.parse::<i64>().is_err() {
                    return Err(bad(format!("label {v:?} is not an integer")));
                }
            }
            clauses.push(Clause {
                column: name.to_string(),
                values,
            });
        }
        Ok(Filter { clauses })
    }

    pub fn is_empty(&self) -> bool {
        self.clauses.is_empty()
    }

    /// Whether an item with `label` and `metadata` passes.
    pub fn matches(&self, label: i64, metadata: &Metadata) -> bool {
        self.clauses.iter().all(|c| {
            if c.column == "label" {
                c.values.iter().any(|v| v.parse() == Ok(label))
            } else {
                metadata
                    .get(&c.column)
                    .is_some_and(|held| c.values.iter().any(|v| v == held))
            }
        })
    }

    /// The filter as a SQL condition over a `label bigint` column and the `jsonb` expression
    /// `metadata`, with its values as parameters numbered from `first_param`:
    /// `(condition, parameters)`, where each parameter is a `text[]` (labels are compared as
    /// text so every parameter has one type). `TRUE` for the empty filter.
    pub fn sql(&self, metadata: &str, first_param: usize) -> (String, Vec<Vec<String>>) {
        if self.is_empty() {
            return ("TRUE".into(), Vec::new());
        }
        let mut conditions = Vec::new();
        let mut params = Vec::new();
        for c in &self.clauses {
            let n = first_param + params.len();
            if c.column == "label" {
                conditions.push(format!("label::text = ANY(${n}::text[])"));
                params.push(c.values.clone());
            } else {
                // The column name travels as a parameter too: nothing user-given is spliced
                // into the statement.
                conditions.push(format!(
                    "jsonb_extract_path_text({metadata}, VARIADIC ${n}::text[]) = ANY(${}::text[])",
                    n + 1
                ));
                params.push(vec![c.column.clone()]);
                params.push(c.values.clone());
            }
        }
        (conditions.join(" AND "), params)
    }
}

/// Splits at `sep` where it is not inside double quotes.
fn split_outside_quotes(text: &str, sep: char) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in text.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            parts.push(&text[start..i]);
            start = i + 1;
        }
    }
    if quoted {
        return Err("a quote is not closed".into());
    }
    parts.push(&text[start..]);
    Ok(parts)
}

/// A value as written: trimmed; in double quotes with doubled quotes inside, or bare (then
/// without quotes).
fn unquote(written: &str) -> Result<String, String> {
    let t = written.trim();
    match t.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) => {
            let value = inner.replace("\"\"", "\"");
            if value.matches('"').count() * 2 != inner.matches('"').count() {
                return Err(format!("{t}: double a quote inside a quoted value"));
            }
            Ok(value)
        }
        None if t.contains('"') => Err(format!(
            "{t}: put a value holding quotes in double quotes, its quotes doubled"
        )),
        None => Ok(t.to_string()),
    }
}

/// A value as [`Filter::parse`] reads it back.
fn quote(value: &str) -> String {
    let plain = !value.contains([',', '|', '"']) && value.trim() == value && !value.is_empty();
    if plain {
        value.to_string()
    } else {
        format!("\"{}\"", value.replace('"', "\"\""))
    }
}

impl std::str::FromStr for Filter {
    type Err = RetrievalError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Filter::parse(text)
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .clauses
            .iter()
            .map(|c| {
                let values: Vec<String> = c.values.iter().map(|v| quote(v)).collect();
                format!("{}={}", c.column, values.join("|"))
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, &str)]) -> Metadata {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_filter_names_the_columns_an_index_lacks() {
        let f = Filter::parse("categroy=Fruit,label=3,brand=Arla,categroy=Milk").unwrap();
        let columns = ["brand".to_string(), "category".to_string()];
        assert_eq!(f.unknown_columns(&columns), ["categroy"]);
        assert_eq!(f.unknown_columns(&[]), ["categroy", "brand"]);
        let err = f.check_columns(&columns).unwrap_err().to_string();
        assert_eq!(
            err,
            "filter: no catalogue item has categroy (metadata columns: brand, category; and label)"
        );
        assert!(
            f.check_columns(&[])
                .unwrap_err()
                .to_string()
                .contains("columns: none;")
        );
        assert!(
            Filter::parse("label=1")
                .unwrap()
                .unknown_columns(&[])
                .is_empty()
        );
    }

    #[test]
    fn filters_parse_match_and_print() {
        let f = Filter::parse("category=Fruit|Vegetables, in_stock=true").unwrap();
        assert_eq!(f.to_string(), "category=Fruit|Vegetables,in_stock=true");
        let fruit = meta(&[("category", "Fruit"), ("in_stock", "true")]);
        let veg_out = meta(&[("category", "Vegetables"), ("in_stock", "false")]);
        assert!(f.matches(1, &fruit));
        assert!(!f.matches(1, &veg_out));
        assert!(
            !f.matches(1, &meta(&[("category", "Fruit")])),
            "unset fails"
        );
        let by_label = Filter::parse("label=3|4").unwrap();
        assert!(by_label.matches(4, &Metadata::new()));
        assert!(!by_label.matches(5, &fruit));
        assert!(Filter::parse("").unwrap().is_empty());
        assert!(Filter::parse(" , ").unwrap().matches(0, &Metadata::new()));
    }

    #[test]
    fn quoted_values_hold_separators_and_print_back() {
        let f = Filter::parse(r#"brand="Smith, ""the"" baker"|"a|b",size= 1 l "#).unwrap();
        assert_eq!(
            f.clauses[0].values,
            vec![r#"Smith, "the" baker"#.to_string(), "a|b".to_string()]
        );
        assert_eq!(f.clauses[1].values, vec!["1 l".to_string()]);
        assert_eq!(Filter::parse(&f.to_string()).unwrap(), f);
        for bad in [r#"brand="open"#, r#"brand=a"b"#, r#"brand="a"b""#] {
            assert!(Filter::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_filters_name_the_problem() {
        for (text, says) in [
            ("category", "not name=value"),
            ("category=", "empty value"),
            ("a b=1", "letters"),
            ("path=x", "reserved"),
            ("label=x", "not an integer"),
            ("c=a||b", "empty value"),
        ] {
            let err = Filter::parse(text).unwrap_err().to_string();
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn sql_keeps_user_text_in_parameters() {
        let f = Filter::parse("brand=x'; DROP TABLE t;--,label=7").unwrap();
        let (sql, params) = f.sql("metadata", 3);
        assert_eq!(
            sql,
            "jsonb_extract_path_text(metadata, VARIADIC $3::text[]) = ANY($4::text[]) \
             AND label::text = ANY($5::text[])"
        );
        assert_eq!(params[0], vec!["brand"]);
        assert_eq!(params[1], vec!["x'; DROP TABLE t;--"]);
        assert_eq!(params[2], vec!["7"]);
        assert_eq!(Filter::default().sql("metadata", 1).0, "TRUE");
    }
}
