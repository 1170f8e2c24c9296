//! Which Arrow type each PostgreSQL column becomes, and how it is read: in PostgreSQL's
//! binary form where a type maps exactly, else as PostgreSQL's own text of the value.
//! Pure: the catalog lookup is in [`super::columns`].

use std::fmt;

/// Built-in type OIDs (`pg_type.oid`, fixed since PostgreSQL 8): matched by OID, so a
/// user type of the same name in another schema is never mistaken for them.
mod oid {
    pub(super) const BOOL: u32 = 16;
    pub(super) const INT2VECTOR: u32 = 22;
    pub(super) const OIDVECTOR: u32 = 30;
    pub(super) const BYTEA: u32 = 17;
    pub(super) const NAME: u32 = 19;
    pub(super) const INT8: u32 = 20;
    pub(super) const INT2: u32 = 21;
    pub(super) const INT4: u32 = 23;
    pub(super) const TEXT: u32 = 25;
    pub(super) const JSON: u32 = 114;
    pub(super) const FLOAT4: u32 = 700;
    pub(super) const FLOAT8: u32 = 701;
    pub(super) const BPCHAR: u32 = 1042;
    pub(super) const VARCHAR: u32 = 1043;
    pub(super) const DATE: u32 = 1082;
    pub(super) const TIME: u32 = 1083;
    pub(super) const TIMESTAMP: u32 = 1114;
    pub(super) const TIMESTAMPTZ: u32 = 1184;
    pub(super) const INTERVAL: u32 = 1186;
    pub(super) const TIMETZ: u32 = 1266;
    pub(super) const NUMERIC: u32 = 1700;
    pub(super) const UUID: u32 = 2950;
    pub(super) const JSONB: u32 = 3802;
}

/// A column's type with domains resolved to their base type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgType {
    /// The base type's OID.
    pub oid: u32,
    /// Its modifier (`numeric(10,2)`'s precision and scale), -1 for none.
    pub typmod: i32,
    /// An enum (`typtype` 'e'): its text is its label.
    pub is_enum: bool,
    /// The element type, for an array.
    pub element: Option<Box<PgType>>,
}

/// How a value is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Boolean.
    Bool,
    /// 16-bit integer.
    Int16,
    /// 32-bit integer.
    Int32,
    /// 64-bit integer.
    Int64,
    /// 32-bit float, NaN, ±Infinity and -0 kept.
    Float32,
    /// 64-bit float, NaN, ±Infinity and -0 kept.
    Float64,
    /// Decimal of this precision and scale (decimal128 up to 38 digits, decimal256 up to 76).
    Decimal {
        /// Digits in all.
        precision: u8,
        /// Digits after the point.
        scale: i8,
    },
    /// UTF-8 text.
    Text,
    /// PostgreSQL's own text of a value whose type has no exact Arrow equivalent.
    PgText,
    /// Bytes.
    Bytes,
    /// A UUID (the Parquet UUID logical type).
    Uuid,
    /// JSON text (the Parquet JSON logical type), as stored.
    Json,
    /// jsonb, as PostgreSQL prints it (the Parquet JSON logical type).
    Jsonb,
    /// Days since 1970-01-01.
    Date,
    /// Microseconds since 1970-01-01 00:00, no time zone.
    Timestamp,
    /// Microseconds since 1970-01-01 00:00 UTC.
    TimestampTz,
    /// Microseconds since midnight, `24:00:00` included.
    Time,
    /// Microseconds since midnight and the UTC offset in seconds.
    TimeTz,
    /// Months, days and microseconds, as PostgreSQL keeps them.
    Interval,
    /// A one-dimensional array.
    List(Box<Kind>),
}

/// How a column is selected in the `COPY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Its binary form.
    Binary,
    /// Its type's output function, as `COPY ... csv` prints it (`format('%s', v)`; a
    /// `::text` cast may differ: `inet`'s adds the netmask).
    Text,
    /// `::text[]`: an array of enums, each element its label.
    LabelArray,
}

/// One column's plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnPlan {
    /// Its name.
    pub name: String,
    /// Its type as `format_type` prints it (`numeric(10,2)`, a domain's own name).
    pub type_name: String,
    /// How it is selected.
    pub read: Read,
    /// How it is written.
    pub kind: Kind,
    /// Declared `NOT NULL`.
    pub not_null: bool,
    /// Nearly every value differs (a single-column unique index, or the planner's
    /// statistics say over half the rows): written without a dictionary, which could
    /// not pay.
    pub mostly_distinct: bool,
    /// The most characters a value can have (`varchar(n)`, `char(n)`), when declared.
    pub max_chars: Option<u32>,
}

/// The plan of a column of type `pg`.
pub fn plan(name: &str, pg: &PgType, not_null: bool) -> ColumnPlan {
    // The catalog's vectors are arrays indexed from 0: as lists they would be refused.
    let vector = matches!(pg.oid, oid::INT2VECTOR | oid::OIDVECTOR);
    let (read, kind) = match (&pg.element, exact(pg)) {
        _ if vector => (Read::Text, Kind::PgText),
        (None, Some(kind)) => (Read::Binary, kind),
        (None, None) => (Read::Text, Kind::PgText),
        (Some(element), _) => match exact(element) {
            Some(kind) => (Read::Binary, Kind::List(Box::new(kind))),
            None if element.is_enum => (Read::LabelArray, Kind::List(Box::new(Kind::PgText))),
            // The whole array's text: its dimensions and bounds stay as they were.
            None => (Read::Text, Kind::PgText),
        },
    };
    // varchar(n) and char(n) keep n + 4 in their modifier.
    let bounded = matches!(pg.oid, oid::VARCHAR | oid::BPCHAR) && pg.typmod >= 4;
    ColumnPlan {
        name: name.to_string(),
        type_name: String::new(),
        read,
        kind,
        not_null,
        mostly_distinct: false,
        max_chars: bounded.then(|| (pg.typmod - 4) as u32),
    }
}

/// The kind a type is written as exactly from its binary form, or `None` when only its
/// text is exact.
fn exact(pg: &PgType) -> Option<Kind> {
    if pg.element.is_some() {
        return None;
    }
    Some(match pg.oid {
        oid::BOOL => Kind::Bool,
        oid::INT2 => Kind::Int16,
        oid::INT4 => Kind::Int32,
        oid::INT8 => Kind::Int64,
        oid::FLOAT4 => Kind::Float32,
        oid::FLOAT8 => Kind::Float64,
        oid::NUMERIC => decimal(pg.typmod)?,
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME => Kind::Text,
        oid::BYTEA => Kind::Bytes,
        oid::UUID => Kind::Uuid,
        oid::JSON => Kind::Json,
        oid::JSONB => Kind::Jsonb,
        oid::DATE => Kind::Date,
        oid::TIMESTAMP => Kind::Timestamp,
        oid::TIMESTAMPTZ => Kind::TimestampTz,
        oid::TIME => Kind::Time,
        oid::TIMETZ => Kind::TimeTz,
        oid::INTERVAL => Kind::Interval,
        _ => return None,
    })
}

/// `numeric(p,s)` as a decimal, when Parquet can hold it: an unbounded numeric (no
/// modifier), more than 76 digits, or a scale below 0 or above the precision (allowed
/// since PostgreSQL 15) is written as its text instead.
fn decimal(typmod: i32) -> Option<Kind> {
    if typmod < 4 {
        return None;
    }
    let bits = typmod - 4;
    let precision = (bits >> 16) & 0xffff;
    // PostgreSQL 15 keeps the scale as an 11-bit two's complement number.
    let scale = ((bits & 0x7ff) ^ 1024) - 1024;
    if !(1..=76).contains(&precision) || scale < 0 || scale > precision {
        return None;
    }
    Some(Kind::Decimal {
        precision: precision as u8,
        scale: scale as i8,
    })
}

impl ColumnPlan {
    /// The column as it appears in the `COPY`'s select list (`ident` quotes its name).
    pub fn select(&self, ident: &str) -> String {
        match self.read {
            Read::Binary => ident.to_string(),
            // `num_nulls`, not `IS NULL`: a composite of NULL fields IS NULL but is a value.
            // Schema-qualified: a user function named like them cannot stand in.
            Read::Text => format!(
                "CASE WHEN pg_catalog.num_nulls({ident}) = 0 THEN pg_catalog.format('%s', {ident}) END"
            ),
            Read::LabelArray => format!("{ident}::text[]"),
        }
    }
}

impl fmt::Display for Kind {
    /// The type written, as the manifest records it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Bool => write!(f, "boolean"),
            Kind::Int16 => write!(f, "int16"),
            Kind::Int32 => write!(f, "int32"),
            Kind::Int64 => write!(f, "int64"),
            Kind::Float32 => write!(f, "float32"),
            Kind::Float64 => write!(f, "float64"),
            Kind::Decimal { precision, scale } if *precision <= 38 => {
                write!(f, "decimal128({precision},{scale})")
            }
            Kind::Decimal { precision, scale } => write!(f, "decimal256({precision},{scale})"),
            Kind::Text => write!(f, "string"),
            Kind::PgText => write!(f, "string (PostgreSQL's text form)"),
            Kind::Bytes => write!(f, "binary"),
            Kind::Uuid => write!(f, "uuid"),
            Kind::Json | Kind::Jsonb => write!(f, "json"),
            Kind::Date => write!(f, "date32"),
            Kind::Timestamp => write!(f, "timestamp[us]"),
            Kind::TimestampTz => write!(f, "timestamp[us, UTC]"),
            Kind::Time => write!(f, "time64[us]"),
            Kind::TimeTz => write!(f, "struct<time: time64[us], offset_seconds: int32>"),
            Kind::Interval => write!(f, "struct<months: int32, days: int32, microseconds: int64>"),
            Kind::List(element) => write!(f, "list<{element}>"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(oid: u32, typmod: i32) -> PgType {
        PgType {
            oid,
            typmod,
            is_enum: false,
            element: None,
        }
    }

    fn numeric(precision: i32, scale: i32) -> PgType {
        base(oid::NUMERIC, ((precision << 16) | (scale & 0x7ff)) + 4)
    }

    #[test]
    fn numerics_are_decimals_only_where_parquet_holds_them_exactly() {
        let kind = |t: &PgType| plan("n", t, false).kind;
        assert_eq!(
            kind(&numeric(10, 2)),
            Kind::Decimal {
                precision: 10,
                scale: 2
            }
        );
        assert_eq!(kind(&numeric(10, 2)).to_string(), "decimal128(10,2)");
        assert_eq!(kind(&numeric(76, 0)).to_string(), "decimal256(76,0)");
        for text in [
            base(oid::NUMERIC, -1),
            numeric(77, 0),
            numeric(5, -2),
            numeric(2, 5),
        ] {
            let p = plan("n", &text, false);
            assert_eq!((p.read, p.kind), (Read::Text, Kind::PgText), "{text:?}");
        }
    }

    #[test]
    fn arrays_of_exact_types_and_enums_are_lists_and_others_their_text() {
        let array = |element: PgType| PgType {
            oid: 1,
            typmod: -1,
            is_enum: false,
            element: Some(Box::new(element)),
        };
        let ints = plan("a", &array(base(oid::INT4, -1)), true);
        assert_eq!(ints.read, Read::Binary);
        assert_eq!(ints.kind.to_string(), "list<int32>");
        let labels = plan(
            "a",
            &array(PgType {
                is_enum: true,
                ..base(70000, -1)
            }),
            false,
        );
        assert_eq!(labels.read, Read::LabelArray);
        assert_eq!(
            labels.kind.to_string(),
            "list<string (PostgreSQL's text form)>"
        );
        assert_eq!(labels.select("\"a\""), "\"a\"::text[]");
        let inets = plan("a", &array(base(869, -1)), false);
        assert_eq!((inets.read, inets.kind), (Read::Text, Kind::PgText));
        let vector = PgType {
            element: Some(Box::new(base(oid::INT2, -1))),
            ..base(oid::INT2VECTOR, -1)
        };
        assert_eq!(plan("v", &vector, false).kind, Kind::PgText);
        let inet = plan("i", &base(869, -1), false);
        assert_eq!(
            inet.select("\"i\""),
            "CASE WHEN pg_catalog.num_nulls(\"i\") = 0 THEN pg_catalog.format('%s', \"i\") END"
        );
        assert_eq!(plan("t", &base(oid::TEXT, -1), false).select("t"), "t");
    }
}
