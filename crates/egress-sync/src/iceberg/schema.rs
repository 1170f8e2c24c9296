//! A day's columns as an Iceberg schema, evolved from the table's: field ids stay with
//! their column's name across days, a column added upstream is a new optional field, a
//! widening Iceberg allows (int→long, float→double, a decimal's precision) is taken, and
//! any other change of type is refused. Pure.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow_schema::{DataType, Field, TimeUnit};
use iceberg::spec::{
    ListType, MappedField, NameMapping, NestedField, NestedFieldRef, PrimitiveType, Schema,
    StructType, TableMetadata, Type,
};

/// The partition column every table has: the day, from the metadata (the data files do
/// not hold it; readers fill an identity partition's value in).
pub const DATE_COLUMN: &str = "egress_date";

/// Why a day's columns cannot be committed to the table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A column's type changed in a way Iceberg cannot promote.
    #[error("column `{column}` is {table_type} in the table but {day_type} in this day: Iceberg cannot change a column's type that way (only int→long, float→double, a wider decimal); the day stays mirrored, the table keeps its last version")]
    TypeChanged {
        /// The column (a nested one as `a.b`).
        column: String,
        /// Its type in the table.
        table_type: String,
        /// Its type in the day.
        day_type: String,
    },
    /// A column whose type has no Iceberg equivalent.
    #[error("column `{column}` is {day_type}, which has no Iceberg type ({why}); the day stays mirrored, the table is not committed")]
    NoIcebergType {
        /// The column.
        column: String,
        /// Its Arrow type.
        day_type: String,
        /// What Iceberg lacks.
        why: &'static str,
    },
    /// A column named as the partition column.
    #[error("column `{DATE_COLUMN}` is the Iceberg table's partition column: rename it in the source (or dump it through a view)")]
    ReservedName,
}

/// The schema a day needs, and whether it differs from the table's.
#[derive(Debug, Clone)]
pub struct Evolved {
    /// The schema (the date column included).
    pub schema: Schema,
    /// It differs from the table's current schema (or the table is new).
    pub changed: bool,
}

/// Hands out field ids above the table's last one.
struct Ids {
    next: i32,
}

impl Ids {
    fn take(&mut self) -> i32 {
        self.next += 1;
        self.next
    }
}

/// The schema for a day whose Parquet files have `day` as their Arrow schema, evolved from
/// the table's `current` schema (`None`: a new table) whose highest field id ever is
/// `last_column_id`. `primary_key` names the identifier fields.
pub fn evolve(
    current: Option<&Schema>,
    last_column_id: i32,
    day: &arrow_schema::Schema,
    primary_key: &[String],
) -> Result<Evolved, Refusal> {
    let mut ids = Ids {
        next: last_column_id.max(0),
    };
    let old: Vec<NestedFieldRef> = current
        .map(|s| s.as_struct().fields().to_vec())
        .unwrap_or_default();
    let mut fields = Vec::new();
    for field in day.fields() {
        if field.name() == DATE_COLUMN {
            return Err(Refusal::ReservedName);
        }
        let before = old.iter().find(|f| &f.name == field.name());
        let path = field.name().clone();
        fields.push(Arc::new(merge_field(
            before,
            field,
            &path,
            &mut ids,
            current.is_none(),
        )?));
    }
    // Columns the day lacks stay (earlier days hold them), optional from now on.
    for before in old.iter().filter(|f| f.name != DATE_COLUMN) {
        if day.field_with_name(&before.name).is_err() {
            fields.push(Arc::new(relaxed(before)));
        }
    }
    let date = match old.iter().find(|f| f.name == DATE_COLUMN) {
        Some(f) => f.clone(),
        None => Arc::new(NestedField::optional(
            ids.take(),
            DATE_COLUMN,
            Type::Primitive(PrimitiveType::Date),
        )),
    };
    fields.push(date);
    let identifiers = identifier_ids(&fields, primary_key);
    let schema = Schema::builder()
        .with_fields(fields)
        .with_identifier_field_ids(identifiers)
        .build()
        .map_err(|e| Refusal::NoIcebergType {
            column: String::new(),
            day_type: e.to_string(),
            why: "the schema does not validate",
        })?;
    let changed = current.is_none_or(|c| !same_schema(c, &schema));
    Ok(Evolved { schema, changed })
}

/// `schema` under the id the table gives it: an identical earlier schema's, else one past
/// the highest. The snapshot written with it names it by this id (time travel reads a
/// snapshot through its own schema).
pub fn with_final_id(base: &TableMetadata, schema: Schema) -> iceberg::Result<Schema> {
    let id = base
        .schemas_iter()
        .find(|s| same_schema(s, &schema))
        .map(|s| s.schema_id())
        .unwrap_or_else(|| {
            base.schemas_iter()
                .map(|s| s.schema_id())
                .max()
                .unwrap_or(-1)
                + 1
        });
    schema.into_builder().with_schema_id(id).build()
}

/// Same fields and identifier fields (schema ids aside).
fn same_schema(a: &Schema, b: &Schema) -> bool {
    a.as_struct() == b.as_struct()
        && a.identifier_field_ids().collect::<Vec<_>>()
            == b.identifier_field_ids().collect::<Vec<_>>()
}

/// The field ids of the primary key, when every key column can be one (required,
/// primitive, not floating point); none otherwise.
fn identifier_ids(fields: &[NestedFieldRef], primary_key: &[String]) -> Vec<i32> {
    let mut ids = Vec::new();
    for name in primary_key {
        let usable = fields.iter().find(|f| &f.name == name).filter(|f| {
            f.required
                && matches!(&*f.field_type, Type::Primitive(p)
                    if !matches!(p, PrimitiveType::Float | PrimitiveType::Double))
        });
        match usable {
            Some(f) => ids.push(f.id),
            None => return Vec::new(),
        }
    }
    ids
}

/// `field` optional.
fn relaxed(field: &NestedField) -> NestedField {
    NestedField::new(field.id, &field.name, (*field.field_type).clone(), false)
}

/// The field for the day's `field`, keeping `before`'s id; `new_table`: required as the
/// day says (an added column of an existing table is optional: earlier days lack it).
fn merge_field(
    before: Option<&NestedFieldRef>,
    field: &Field,
    path: &str,
    ids: &mut Ids,
    new_table: bool,
) -> Result<NestedField, Refusal> {
    match before {
        Some(b) => {
            let ty = merge_type(&b.field_type, field, path, ids)?;
            Ok(NestedField::new(
                b.id,
                field.name(),
                ty,
                b.required && !field.is_nullable(),
            ))
        }
        None => {
            let id = ids.take();
            let ty = new_type(field, path, ids)?;
            Ok(NestedField::new(
                id,
                field.name(),
                ty,
                new_table && !field.is_nullable(),
            ))
        }
    }
}

/// The Iceberg type of a column new to the table, nested ids taken from `ids`.
fn new_type(field: &Field, path: &str, ids: &mut Ids) -> Result<Type, Refusal> {
    match field.data_type() {
        DataType::Struct(children) => {
            let mut fields = Vec::new();
            for child in children {
                let id = ids.take();
                let child_path = format!("{path}.{}", child.name());
                let ty = new_type(child, &child_path, ids)?;
                fields.push(Arc::new(NestedField::new(
                    id,
                    child.name(),
                    ty,
                    !child.is_nullable(),
                )));
            }
            Ok(Type::Struct(StructType::new(fields)))
        }
        DataType::List(element) | DataType::LargeList(element) => {
            let id = ids.take();
            let ty = new_type(element, &format!("{path}.element"), ids)?;
            Ok(Type::List(ListType::new(Arc::new(
                NestedField::list_element(id, ty, !element.is_nullable()),
            ))))
        }
        _ => primitive(field, path).map(Type::Primitive),
    }
}

/// The table's type `before` for the day's `field`: kept, widened, or refused.
fn merge_type(before: &Type, field: &Field, path: &str, ids: &mut Ids) -> Result<Type, Refusal> {
    let refused = |day_type: String| Refusal::TypeChanged {
        column: path.to_string(),
        table_type: before.to_string(),
        day_type,
    };
    match (before, field.data_type()) {
        (Type::Struct(old), DataType::Struct(children)) => {
            let mut fields = Vec::new();
            for child in children {
                let b = old.fields().iter().find(|f| &f.name == child.name());
                let child_path = format!("{path}.{}", child.name());
                fields.push(Arc::new(merge_field(b, child, &child_path, ids, false)?));
            }
            for b in old.fields() {
                if !children.iter().any(|c| c.name() == &b.name) {
                    fields.push(Arc::new(relaxed(b)));
                }
            }
            Ok(Type::Struct(StructType::new(fields)))
        }
        (Type::List(old), DataType::List(element) | DataType::LargeList(element)) => {
            let b = &old.element_field;
            let ty = merge_type(&b.field_type, element, &format!("{path}.element"), ids)?;
            let required = b.required && !element.is_nullable();
            Ok(Type::List(ListType::new(Arc::new(
                NestedField::list_element(b.id, ty, required),
            ))))
        }
        (Type::Primitive(old), _) => {
            let new = primitive(field, path)?;
            widened(old, &new)
                .map(Type::Primitive)
                .ok_or_else(|| refused(new.to_string()))
        }
        (_, other) => Err(refused(format!("{other}"))),
    }
}

/// The type a column of type `old` in the table and `new` in the day has from now on:
/// the wider of the two where Iceberg promotes one to the other, `None` where it cannot.
fn widened(old: &PrimitiveType, new: &PrimitiveType) -> Option<PrimitiveType> {
    use PrimitiveType::{Decimal, Double, Float, Int, Long};
    match (old, new) {
        (a, b) if a == b => Some(a.clone()),
        (Int, Long) | (Float, Double) => Some(new.clone()),
        // Earlier days' files are read as the wider type: an int file under long.
        (Long, Int) | (Double, Float) => Some(old.clone()),
        (
            Decimal {
                precision: p1,
                scale: s1,
            },
            Decimal {
                precision: p2,
                scale: s2,
            },
        ) if s1 == s2 => Some(Decimal {
            precision: (*p1).max(*p2),
            scale: *s1,
        }),
        _ => None,
    }
}

/// The Iceberg type of a primitive Arrow field as egress-dump writes it.
fn primitive(field: &Field, path: &str) -> Result<PrimitiveType, Refusal> {
    let none = |why| Refusal::NoIcebergType {
        column: path.to_string(),
        day_type: field.data_type().to_string(),
        why,
    };
    Ok(match field.data_type() {
        DataType::Boolean => PrimitiveType::Boolean,
        DataType::Int8 | DataType::Int16 | DataType::Int32 => PrimitiveType::Int,
        DataType::Int64 => PrimitiveType::Long,
        DataType::Float32 => PrimitiveType::Float,
        DataType::Float64 => PrimitiveType::Double,
        DataType::Decimal128(p, s) if *s >= 0 => PrimitiveType::Decimal {
            precision: u32::from(*p),
            scale: u32::from(s.unsigned_abs()),
        },
        DataType::Decimal128(..) => return Err(none("a decimal's scale is never negative")),
        DataType::Decimal256(..) => return Err(none("a decimal has at most 38 digits")),
        DataType::Utf8 | DataType::LargeUtf8 => PrimitiveType::String,
        DataType::Binary | DataType::LargeBinary => PrimitiveType::Binary,
        DataType::FixedSizeBinary(16) if is_uuid(field) => PrimitiveType::Uuid,
        DataType::FixedSizeBinary(n) => PrimitiveType::Fixed(u64::try_from(*n).unwrap_or(0)),
        DataType::Date32 => PrimitiveType::Date,
        DataType::Timestamp(TimeUnit::Microsecond, None) => PrimitiveType::Timestamp,
        DataType::Timestamp(TimeUnit::Microsecond, Some(_)) => PrimitiveType::Timestamptz,
        DataType::Time64(TimeUnit::Microsecond) => PrimitiveType::Time,
        _ => return Err(none("not one of the types egress writes")),
    })
}

/// The Arrow field carries the UUID extension type.
fn is_uuid(field: &Field) -> bool {
    field
        .metadata()
        .get("ARROW:extension:name")
        .is_some_and(|n| n == "arrow.uuid")
}

/// The name mapping readers resolve the data files' columns with (the files carry no
/// field ids): every field of every schema the table had, each id under every name it
/// was written with; the date column under none (no file holds it).
///
/// The schemas are taken in the order of their ids, whatever order `schemas` gives them
/// (iceberg's `schemas_iter` walks a hash map): mapping only the last one's fields lost a
/// column added since whenever an older schema came last, and DuckDB and pyiceberg then
/// refused the table ("does not have a field-id"), found by an adversarial run.
pub fn name_mapping<'a>(schemas: impl Iterator<Item = &'a Schema>) -> NameMapping {
    let mut schemas: Vec<&Schema> = schemas.collect();
    schemas.sort_by_key(|s| s.schema_id());
    let mut names: HashMap<i32, Vec<String>> = HashMap::new();
    // Every top-level field of any schema, in the order first seen, as its latest schema
    // defines it.
    let mut fields: Vec<NestedFieldRef> = Vec::new();
    for schema in schemas {
        collect_names(schema.as_struct().fields(), &mut names);
        for f in schema.as_struct().fields() {
            match fields.iter_mut().find(|known| known.id == f.id) {
                Some(known) => *known = f.clone(),
                None => fields.push(f.clone()),
            }
        }
    }
    NameMapping::new(mapped(&fields, &names))
}

fn collect_names(fields: &[NestedFieldRef], names: &mut HashMap<i32, Vec<String>>) {
    for f in fields {
        let list = names.entry(f.id).or_default();
        if !list.contains(&f.name) {
            list.push(f.name.clone());
        }
        collect_names(&children(&f.field_type), names);
    }
}

fn children(ty: &Type) -> Vec<NestedFieldRef> {
    match ty {
        Type::Struct(s) => s.fields().to_vec(),
        Type::List(l) => vec![l.element_field.clone()],
        Type::Map(m) => vec![m.key_field.clone(), m.value_field.clone()],
        Type::Primitive(_) => Vec::new(),
    }
}

fn mapped(fields: &[NestedFieldRef], names: &HashMap<i32, Vec<String>>) -> Vec<MappedField> {
    fields
        .iter()
        .map(|f| {
            let list = match f.name.as_str() {
                DATE_COLUMN => Vec::new(),
                _ => names.get(&f.id).cloned().unwrap_or_default(),
            };
            MappedField::new(Some(f.id), list, mapped(&children(&f.field_type), names))
        })
        .collect()
}

impl fmt::Display for Evolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.schema.as_struct())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(fields: Vec<Field>) -> arrow_schema::Schema {
        arrow_schema::Schema::new(fields)
    }

    fn first(fields: Vec<Field>, pk: &[&str]) -> Schema {
        let pk: Vec<String> = pk.iter().map(|s| s.to_string()).collect();
        evolve(None, 0, &day(fields), &pk)
            .expect("a first day")
            .schema
    }

    #[test]
    fn a_first_day_gives_required_columns_ids_and_the_date() {
        let s = first(
            vec![
                Field::new("id", DataType::Int64, false),
                Field::new("note", DataType::Utf8, true),
            ],
            &["id"],
        );
        let names: Vec<_> = s
            .as_struct()
            .fields()
            .iter()
            .map(|f| (f.id, f.name.clone(), f.required))
            .collect();
        assert_eq!(
            names,
            vec![
                (1, "id".into(), true),
                (2, "note".into(), false),
                (3, DATE_COLUMN.into(), false)
            ]
        );
        assert_eq!(s.identifier_field_ids().collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn ids_stay_with_names_and_an_added_column_is_optional() {
        let s = first(vec![Field::new("a", DataType::Int32, false)], &[]);
        let next = day(vec![
            Field::new("b", DataType::Utf8, false),
            Field::new("a", DataType::Int64, false),
        ]);
        let e = evolve(Some(&s), s.highest_field_id(), &next, &[]).expect("an added column");
        assert!(e.changed);
        let a = e.schema.field_by_name("a").expect("a");
        assert_eq!(
            (a.id, &*a.field_type),
            (1, &Type::Primitive(PrimitiveType::Long))
        );
        let b = e.schema.field_by_name("b").expect("b");
        assert_eq!((b.id, b.required), (3, false));
        let again = evolve(Some(&e.schema), 3, &next, &[]).expect("the same day");
        assert!(!again.changed);
    }

    #[test]
    fn a_type_change_iceberg_cannot_promote_is_refused_by_name() {
        let s = first(vec![Field::new("a", DataType::Int64, false)], &[]);
        let next = day(vec![Field::new("a", DataType::Utf8, false)]);
        let e = evolve(Some(&s), 2, &next, &[]).expect_err("long to string");
        assert_eq!(
            e,
            Refusal::TypeChanged {
                column: "a".into(),
                table_type: "long".into(),
                day_type: "string".into()
            }
        );
        // Narrower files under the wider column are read as it.
        let narrow = day(vec![Field::new("a", DataType::Int32, false)]);
        assert!(
            !evolve(Some(&s), 2, &narrow, &[])
                .expect("int under long")
                .changed
        );
    }

    #[test]
    fn a_missing_column_stays_and_becomes_optional_and_decimals_widen() {
        let s = first(
            vec![
                Field::new("a", DataType::Decimal128(10, 2), false),
                Field::new("gone", DataType::Int32, false),
            ],
            &[],
        );
        let next = day(vec![Field::new("a", DataType::Decimal128(12, 2), false)]);
        let e = evolve(Some(&s), 3, &next, &[]).expect("wider decimal");
        let gone = e.schema.field_by_name("gone").expect("kept");
        assert!(!gone.required);
        let a = e.schema.field_by_name("a").expect("a");
        assert_eq!(
            &*a.field_type,
            &Type::Primitive(PrimitiveType::Decimal {
                precision: 12,
                scale: 2
            })
        );
        let scale = day(vec![Field::new("a", DataType::Decimal128(12, 3), false)]);
        assert!(evolve(Some(&s), 3, &scale, &[]).is_err());
    }

    #[test]
    fn types_without_an_iceberg_equivalent_and_the_reserved_name_are_refused() {
        let wide = day(vec![Field::new("n", DataType::Decimal256(50, 0), true)]);
        assert!(matches!(
            evolve(None, 0, &wide, &[]),
            Err(Refusal::NoIcebergType { .. })
        ));
        let reserved = day(vec![Field::new(DATE_COLUMN, DataType::Date32, true)]);
        assert_eq!(
            evolve(None, 0, &reserved, &[]).unwrap_err(),
            Refusal::ReservedName
        );
    }

    #[test]
    fn the_mapping_holds_every_schema_s_fields_in_any_order_of_the_schemas() {
        use iceberg::spec::{NestedField, PrimitiveType, Type};
        let field = |id, name: &str| {
            Arc::new(NestedField::optional(
                id,
                name,
                Type::Primitive(PrimitiveType::String),
            ))
        };
        let schema = |id, fields| {
            Schema::builder()
                .with_schema_id(id)
                .with_fields(fields)
                .build()
                .unwrap()
        };
        let old = schema(0, vec![field(1, "a"), field(2, "was")]);
        let new = schema(1, vec![field(1, "a"), field(2, "is"), field(3, "extra")]);
        for order in [[&old, &new], [&new, &old]] {
            let mapping = serde_json::to_value(name_mapping(order.into_iter())).unwrap();
            let text = mapping.to_string();
            assert!(text.contains("\"extra\""), "a column added since: {text}");
            assert!(
                text.contains("[\"was\",\"is\"]"),
                "a renamed column under both names: {text}"
            );
        }
    }

    #[test]
    fn nested_types_get_ids_and_the_mapping_names_every_field() {
        let inner = Fields::from(vec![
            Field::new("months", DataType::Int32, false),
            Field::new("micros", DataType::Int64, false),
        ]);
        let s = first(
            vec![
                Field::new("iv", DataType::Struct(inner), true),
                Field::new(
                    "tags",
                    DataType::List(Arc::new(Field::new("element", DataType::Utf8, true))),
                    true,
                ),
            ],
            &[],
        );
        let mapping = serde_json::to_value(name_mapping(std::iter::once(&s))).expect("json");
        let text = mapping.to_string();
        for name in [
            "\"iv\"",
            "\"months\"",
            "\"micros\"",
            "\"tags\"",
            "\"element\"",
        ] {
            assert!(text.contains(name), "{name} in {text}");
        }
        assert!(
            text.contains("\"names\":[]"),
            "the date column is in no file: {text}"
        );
    }

    use arrow_schema::Fields;
}
