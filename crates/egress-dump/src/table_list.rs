//! The list of tables to dump: parsing `TABLES`, and quoting identifiers for SQL.

use std::fmt;

/// One entry of the table list, as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRef {
    /// Schema, when written as `schema.table`.
    pub schema: Option<Ident>,
    /// Table (or view) name.
    pub name: Ident,
}

/// One identifier; `quoted` when the user wrote it in double quotes (then its case is exact).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ident {
    /// The identifier's text, without quotes.
    pub text: String,
    /// Written as `"..."`.
    pub quoted: bool,
}

/// Why a table list was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableListError {
    /// Nothing to dump.
    #[error("no tables given: set --tables or TABLES to a space- or comma-separated list")]
    Empty,
    /// A malformed entry.
    #[error("invalid table name '{0}': {1}")]
    Invalid(String, &'static str),
    /// The same table twice.
    #[error("table '{0}' is listed more than once: remove the duplicate from TABLES")]
    Duplicate(String),
    /// Two different entries that would be written to the same file.
    #[error("'{0}' and '{1}' would both be written to {2}: list only one of them (dump the other through a view of another name)")]
    SameFile(String, String, String),
}

impl TableRef {
    /// The object's base name: `schema.table` or `table`, as written (quotes removed).
    pub fn file_stem(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", schema.text, self.name.text),
            None => self.name.text.clone(),
        }
    }
}

impl Ident {
    /// As written: in double quotes (doubled inside) when it was quoted.
    pub fn spelled(&self) -> String {
        if self.quoted {
            quote_ident(&self.text)
        } else {
            self.text.clone()
        }
    }
}

impl TableRef {
    /// The entry as written in TABLES (quotes kept).
    pub fn spelled(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", schema.spelled(), self.name.spelled()),
            None => self.name.spelled(),
        }
    }
}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file_stem())
    }
}

/// Quote an identifier for SQL: always, so that no table name is ever read as SQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Parse a space- or comma-separated list of `table`, `schema.table` or `"Quoted"."Name"`.
pub fn parse_list(text: &str) -> Result<Vec<TableRef>, TableListError> {
    let mut tables: Vec<TableRef> = Vec::new();
    for entry in split_entries(text)? {
        let table = parse_entry(&entry)?;
        if let Some(twin) = tables.iter().find(|t| t.file_stem() == table.file_stem()) {
            return Err(if twin.spelled() == table.spelled() {
                TableListError::Duplicate(table.file_stem())
            } else {
                TableListError::SameFile(
                    twin.spelled(),
                    table.spelled(),
                    format!("{}.csv.gz", table.file_stem()),
                )
            });
        }
        tables.push(table);
    }
    if tables.is_empty() {
        return Err(TableListError::Empty);
    }
    Ok(tables)
}

/// Split on whitespace and commas that are outside double quotes.
fn split_entries(text: &str) -> Result<Vec<String>, TableListError> {
    let mut entries = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    for c in text.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                current.push(c);
            }
            c if !in_quotes && (c.is_whitespace() || c == ',') => {
                if !current.is_empty() {
                    entries.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if in_quotes {
        return Err(TableListError::Invalid(current, "unbalanced double quote"));
    }
    if !current.is_empty() {
        entries.push(current);
    }
    Ok(entries)
}

fn parse_entry(entry: &str) -> Result<TableRef, TableListError> {
    let mut parts: Vec<Ident> = Vec::new();
    let mut chars = entry.chars().peekable();
    loop {
        let mut text = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        text.push('"');
                    }
                    Some('"') => break,
                    Some(c) => text.push(c),
                    None => {
                        return Err(TableListError::Invalid(
                            entry.into(),
                            "unbalanced double quote",
                        ))
                    }
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if c == '"' {
                    return Err(TableListError::Invalid(
                        entry.into(),
                        "quote in the middle of a name",
                    ));
                }
                text.push(c);
                chars.next();
            }
        }
        if text.is_empty() {
            return Err(TableListError::Invalid(entry.into(), "empty name part"));
        }
        if text.contains('/') || text.contains('\0') {
            return Err(TableListError::Invalid(
                entry.into(),
                "'/' and NUL cannot appear in an object name",
            ));
        }
        parts.push(Ident { text, quoted });
        match chars.next() {
            None => break,
            Some('.') => continue,
            Some(_) => {
                return Err(TableListError::Invalid(
                    entry.into(),
                    "text after a quoted name",
                ))
            }
        }
    }
    match parts.len() {
        1 => Ok(TableRef {
            schema: None,
            name: parts.remove(0),
        }),
        2 => {
            let name = parts.remove(1);
            Ok(TableRef {
                schema: Some(parts.remove(0)),
                name,
            })
        }
        _ => Err(TableListError::Invalid(
            entry.into(),
            "use table or schema.table",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Vec<String> {
        parse_list(text)
            .unwrap()
            .iter()
            .map(|t| t.file_stem())
            .collect()
    }

    #[test]
    fn splits_on_spaces_and_commas() {
        assert_eq!(names("a b,c ,, d\n"), ["a", "b", "c", "d"]);
    }

    #[test]
    fn schema_and_quotes() {
        let t = parse_list(r#"s.t "My Schema"."Odd""Name""#).unwrap();
        assert_eq!(t[0].schema.as_ref().unwrap().text, "s");
        assert!(!t[0].name.quoted);
        assert_eq!(t[1].schema.as_ref().unwrap().text, "My Schema");
        assert_eq!(t[1].name.text, "Odd\"Name");
        assert!(t[1].name.quoted);
        assert_eq!(t[1].file_stem(), "My Schema.Odd\"Name");
    }

    #[test]
    fn injection_is_just_a_name() {
        let t = parse_list(r#""x; drop table y""#).unwrap();
        assert_eq!(t[0].name.text, "x; drop table y");
        assert_eq!(quote_ident(&t[0].name.text), "\"x; drop table y\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn rejects_bad_lists() {
        assert_eq!(parse_list(" , "), Err(TableListError::Empty));
        assert!(matches!(
            parse_list("a a"),
            Err(TableListError::Duplicate(_))
        ));
        assert_eq!(
            parse_list(r#""a.b" a.b"#),
            Err(TableListError::SameFile(
                r#""a.b""#.into(),
                "a.b".into(),
                "a.b.csv.gz".into()
            ))
        );
        for invalid in ["a.b.c", "a..b", "\"abc", "a/b"] {
            let refused = parse_list(invalid);
            assert!(
                matches!(refused, Err(TableListError::Invalid(..))),
                "{invalid}: {refused:?}"
            );
        }
    }
}
