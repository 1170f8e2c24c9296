//! PostgreSQL's binary values into Arrow arrays, one column at a time. A value the chosen
//! type cannot hold exactly is refused with what it is, never altered.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, FixedSizeBinaryBuilder, PrimitiveBuilder, StringBuilder,
};
use arrow_array::types::{
    ArrowPrimitiveType, Date32Type, Decimal128Type, Decimal256Type, Float32Type, Float64Type,
    Int16Type, Int32Type, Int64Type, Time64MicrosecondType, TimestampMicrosecondType,
};
use arrow_array::{
    Array, ArrayRef, Int32Array, Int64Array, ListArray, StructArray, Time64MicrosecondArray,
};
use arrow_buffer::{i256, NullBufferBuilder, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Fields, TimeUnit};

use super::types::{ColumnPlan, Kind};

/// Why a value was refused: what it is, and what to do.
pub type Refusal = String;

/// One column being filled.
pub trait Column: Send {
    /// Add a value (`None` for NULL).
    fn push(&mut self, value: Option<&[u8]>) -> Result<(), Refusal>;
    /// The values added since the last call, as an array.
    fn finish(&mut self) -> ArrayRef;
}

/// Microseconds from 1970-01-01 to 2000-01-01, PostgreSQL's epoch.
const EPOCH_SHIFT_MICROS: i64 = 946_684_800_000_000;
/// Days from 1970-01-01 to 2000-01-01.
const EPOCH_SHIFT_DAYS: i32 = 10_957;

/// The Arrow field of a column.
pub fn field(plan: &ColumnPlan) -> Field {
    typed_field(&plan.name, &plan.kind, !plan.not_null)
}

fn typed_field(name: &str, kind: &Kind, nullable: bool) -> Field {
    let field = Field::new(name, data_type(kind), nullable);
    // Canonical extension types, which the Parquet writer turns into logical types.
    let name = |extension: &str| ("ARROW:extension:name".to_string(), extension.to_string());
    // Each extension is valid only with the metadata it expects (arrow-rs 58), else the
    // writer falls back to plain bytes or a plain string: UUID with none, JSON with an
    // empty one.
    match kind {
        Kind::Uuid => field.with_metadata(HashMap::from([name("arrow.uuid")])),
        Kind::Json | Kind::Jsonb => field.with_metadata(HashMap::from([
            name("arrow.json"),
            ("ARROW:extension:metadata".to_string(), String::new()),
        ])),
        _ => field,
    }
}

fn data_type(kind: &Kind) -> DataType {
    match kind {
        Kind::Bool => DataType::Boolean,
        Kind::Int16 => DataType::Int16,
        Kind::Int32 => DataType::Int32,
        Kind::Int64 => DataType::Int64,
        Kind::Float32 => DataType::Float32,
        Kind::Float64 => DataType::Float64,
        Kind::Decimal { precision, scale } if *precision <= 38 => {
            DataType::Decimal128(*precision, *scale)
        }
        Kind::Decimal { precision, scale } => DataType::Decimal256(*precision, *scale),
        Kind::Text | Kind::PgText | Kind::Json | Kind::Jsonb => DataType::Utf8,
        Kind::Bytes => DataType::Binary,
        Kind::Uuid => DataType::FixedSizeBinary(16),
        Kind::Date => DataType::Date32,
        Kind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        Kind::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        Kind::Time => DataType::Time64(TimeUnit::Microsecond),
        Kind::TimeTz => DataType::Struct(timetz_fields()),
        Kind::Interval => DataType::Struct(interval_fields()),
        Kind::List(element) => DataType::List(Arc::new(typed_field("element", element, true))),
    }
}

fn timetz_fields() -> Fields {
    Fields::from(vec![
        Field::new("time", DataType::Time64(TimeUnit::Microsecond), false),
        Field::new("offset_seconds", DataType::Int32, false),
    ])
}

fn interval_fields() -> Fields {
    Fields::from(vec![
        Field::new("months", DataType::Int32, false),
        Field::new("days", DataType::Int32, false),
        Field::new("microseconds", DataType::Int64, false),
    ])
}

/// An empty column for `kind`.
pub fn column(kind: &Kind) -> Box<dyn Column> {
    match kind {
        Kind::Bool => Box::new(Bools(BooleanBuilder::new())),
        Kind::Int16 => prim::<Int16Type>(kind, |v| Ok(i16::from_be_bytes(fixed(v)?))),
        Kind::Int32 => prim::<Int32Type>(kind, |v| Ok(i32::from_be_bytes(fixed(v)?))),
        Kind::Int64 => prim::<Int64Type>(kind, |v| Ok(i64::from_be_bytes(fixed(v)?))),
        Kind::Float32 => prim::<Float32Type>(kind, |v| Ok(f32::from_be_bytes(fixed(v)?))),
        Kind::Float64 => prim::<Float64Type>(kind, |v| Ok(f64::from_be_bytes(fixed(v)?))),
        Kind::Decimal { precision, scale } if *precision <= 38 => {
            let fits = digits_fit(*precision, *scale);
            prim::<Decimal128Type>(kind, move |v| fits(v).map(|n| n.as_i128()))
        }
        Kind::Decimal { precision, scale } => {
            prim::<Decimal256Type>(kind, digits_fit(*precision, *scale))
        }
        Kind::Text | Kind::PgText | Kind::Json => Box::new(Strings::new(0)),
        Kind::Jsonb => Box::new(Strings::new(1)),
        Kind::Bytes => Box::new(Binaries(BinaryBuilder::new())),
        Kind::Uuid => Box::new(Uuids(FixedSizeBinaryBuilder::new(16))),
        Kind::Date => prim::<Date32Type>(kind, date),
        Kind::Timestamp | Kind::TimestampTz => prim::<TimestampMicrosecondType>(kind, timestamp),
        Kind::Time => prim::<Time64MicrosecondType>(kind, |v| Ok(i64::from_be_bytes(fixed(v)?))),
        Kind::TimeTz => Box::new(TimeTz {
            time: Vec::new(),
            offset: Vec::new(),
            nulls: NullBufferBuilder::new(0),
        }),
        Kind::Interval => Box::new(Interval {
            months: Vec::new(),
            days: Vec::new(),
            micros: Vec::new(),
            nulls: NullBufferBuilder::new(0),
        }),
        Kind::List(element) => Box::new(List::new(element)),
    }
}

/// The value as `N` big-endian bytes.
fn fixed<const N: usize>(v: &[u8]) -> Result<[u8; N], Refusal> {
    v.try_into()
        .map_err(|_| format!("a {N}-byte value arrived as {} bytes", v.len()))
}

fn date(v: &[u8]) -> Result<i32, Refusal> {
    match i32::from_be_bytes(fixed(v)?) {
        i32::MAX => Err(infinite("date 'infinity'")),
        i32::MIN => Err(infinite("date '-infinity'")),
        // PostgreSQL's dates end in 5874897 AD: shifted, they still fit 32 bits.
        days => days.checked_add(EPOCH_SHIFT_DAYS).ok_or_else(|| {
            format!("date {days} days after 2000-01-01 does not fit a Parquet date")
        }),
    }
}

fn timestamp(v: &[u8]) -> Result<i64, Refusal> {
    match i64::from_be_bytes(fixed(v)?) {
        i64::MAX => Err(infinite("timestamp 'infinity'")),
        i64::MIN => Err(infinite("timestamp '-infinity'")),
        micros => micros.checked_add(EPOCH_SHIFT_MICROS).ok_or_else(|| {
            "a timestamp after 294247-01-10 04:00:54.775807, the last microsecond since 1970 \
             a Parquet timestamp holds; dump this table with --format csv"
                .to_string()
        }),
    }
}

fn infinite(what: &str) -> Refusal {
    format!(
        "{what} has no Parquet value; dump this table with --format csv, or list a view \
         that maps it to a date of your choosing"
    )
}

/// A decoder of `numeric(precision, scale)` values that refuses one with more digits than
/// the precision: the Parquet writer would cut it silently (a foreign table's values are
/// only as good as its source).
fn digits_fit(precision: u8, scale: i8) -> impl Fn(&[u8]) -> Result<i256, Refusal> + Send {
    let bound = i256::from_i128(10).wrapping_pow(u32::from(precision));
    move |v| {
        let n = numeric(v, scale)?;
        match n < bound && n > bound.wrapping_neg() {
            true => Ok(n),
            false => Err(format!(
                "numeric {n} (scaled by 10^{scale}) has more than the column's {precision} digits"
            )),
        }
    }
}

/// A binary `numeric` as an integer scaled by `10^scale`: exact, or refused (NaN and
/// ±Infinity, which a decimal cannot hold).
fn numeric(v: &[u8], scale: i8) -> Result<i256, Refusal> {
    if v.len() < 8 || !(v.len() - 8).is_multiple_of(2) {
        return Err(format!("a numeric value arrived as {} bytes", v.len()));
    }
    let word = |i: usize| u16::from_be_bytes([v[2 * i], v[2 * i + 1]]);
    let (digits, weight, sign) = (word(0) as usize, word(1) as i16, word(2));
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => {
            return Err(
                "numeric 'NaN' has no decimal value; dump this table with --format csv".into(),
            )
        }
        _ => {
            return Err(
                "numeric 'Infinity' has no decimal value; dump this table with --format csv".into(),
            )
        }
    }
    if v.len() != 8 + 2 * digits {
        return Err(format!(
            "a numeric of {digits} digit groups arrived as {} bytes",
            v.len()
        ));
    }
    let groups = (0..digits).map(|i| word(4 + i));
    // The groups as one integer N, whose last group has weight `weight - digits + 1`: the
    // value scaled by 10^scale is N * 10^exponent.
    let exponent = 4 * (i32::from(weight) - digits as i32 + 1) + i32::from(scale);
    let lost = || format!("a numeric value has more than {scale} digits after the point");
    // i128 first (fast); i256 when N or the result needs more than 38 digits.
    let total = match scaled::<i128>(groups.clone(), exponent) {
        Some(Ok(n)) => i256::from_i128(n),
        Some(Err(())) => return Err(lost()),
        None => match scaled::<i256>(groups, exponent) {
            Some(Ok(n)) => n,
            Some(Err(())) => return Err(lost()),
            None => {
                return Err(format!(
                    "a numeric value does not fit a decimal of scale {scale}"
                ))
            }
        },
    };
    Ok(if sign == 0x4000 {
        total.wrapping_neg()
    } else {
        total
    })
}

/// `N * 10^exponent` for the base-10,000 digit groups of N: `None` on overflow, `Err` when
/// a negative exponent would drop digits that are not zero.
fn scaled<T: Wide>(groups: impl Iterator<Item = u16>, exponent: i32) -> Option<Result<T, ()>> {
    let mut n = T::ZERO;
    for group in groups {
        n = n.mul(T::from_u16(10_000))?.add(T::from_u16(group))?;
    }
    if n == T::ZERO {
        return Some(Ok(n));
    }
    let power = T::ten_pow(exponent.unsigned_abs())?;
    if exponent >= 0 {
        return n.mul(power).map(Ok);
    }
    Some(match n.rem(power)? == T::ZERO {
        true => Ok(n.div(power)?),
        false => Err(()),
    })
}

/// The checked arithmetic [`scaled`] needs, on i128 and on i256.
trait Wide: Copy + PartialEq {
    const ZERO: Self;
    fn from_u16(v: u16) -> Self;
    fn mul(self, o: Self) -> Option<Self>;
    fn add(self, o: Self) -> Option<Self>;
    fn div(self, o: Self) -> Option<Self>;
    fn rem(self, o: Self) -> Option<Self>;
    fn ten_pow(n: u32) -> Option<Self>;
}

/// One implementation for both widths: the same checked operations, by name.
macro_rules! wide {
    ($t:ty, $zero:expr, $from_u16:expr, $ten:expr) => {
        impl Wide for $t {
            const ZERO: Self = $zero;
            fn from_u16(v: u16) -> Self {
                $from_u16(v)
            }
            fn mul(self, o: Self) -> Option<Self> {
                self.checked_mul(o)
            }
            fn add(self, o: Self) -> Option<Self> {
                self.checked_add(o)
            }
            fn div(self, o: Self) -> Option<Self> {
                self.checked_div(o)
            }
            fn rem(self, o: Self) -> Option<Self> {
                self.checked_rem(o)
            }
            fn ten_pow(n: u32) -> Option<Self> {
                $ten.checked_pow(n)
            }
        }
    };
}

wide!(i128, 0, i128::from, 10i128);
wide!(
    i256,
    i256::ZERO,
    |v: u16| i256::from_i128(i128::from(v)),
    i256::from_i128(10)
);

/// Decodes one binary value.
type Decoder<N> = Box<dyn Fn(&[u8]) -> Result<N, Refusal> + Send>;

/// A primitive column, each value decoded by `decode`.
struct Prim<T: ArrowPrimitiveType> {
    builder: PrimitiveBuilder<T>,
    data_type: DataType,
    decode: Decoder<T::Native>,
}

fn prim<T: ArrowPrimitiveType>(
    kind: &Kind,
    decode: impl Fn(&[u8]) -> Result<T::Native, Refusal> + Send + 'static,
) -> Box<dyn Column> {
    Box::new(Prim::<T> {
        builder: PrimitiveBuilder::new(),
        data_type: data_type(kind),
        decode: Box::new(decode),
    })
}

impl<T: ArrowPrimitiveType> Column for Prim<T> {
    fn push(&mut self, value: Option<&[u8]>) -> Result<(), Refusal> {
        match value {
            None => self.builder.append_null(),
            Some(v) => self.builder.append_value((self.decode)(v)?),
        }
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        let array = self.builder.finish();
        // The next batch is about as long: grown from nothing again, its buffer was copied
        // by realloc at every doubling (`perf record` on the bench table).
        self.builder = PrimitiveBuilder::with_capacity(array.len().min(super::BATCH_ROWS));
        Arc::new(array.with_data_type(self.data_type.clone()))
    }
}

struct Bools(BooleanBuilder);

impl Column for Bools {
    fn push(&mut self, value: Option<&[u8]>) -> Result<(), Refusal> {
        match value {
            None => self.0.append_null(),
            Some([b]) => self.0.append_value(*b != 0),
            Some(v) => return Err(format!("a boolean arrived as {} bytes", v.len())),
        }
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        Arc::new(self.0.finish())
    }
}

/// Text, after a version byte for jsonb (`skip` 1).
struct Strings {
    builder: StringBuilder,
    skip: usize,
}

impl Strings {
    fn new(skip: usize) -> Strings {
        Strings {
            builder: StringBuilder::new(),
            skip,
        }
    }
}

impl Column for Strings {
    fn push(&mut self, value: Option<&[u8]>) -> Result<(), Refusal> {
        let Some(v) = value else {
            self.builder.append_null();
            return Ok(());
        };
        if self.skip == 1 && v.first() != Some(&1) {
            return Err("a jsonb value of an unknown binary version".into());
        }
        let text = &v[self.skip..];
        // Most text is ASCII, which a word-wide check proves valid UTF-8 in a few
        // nanoseconds; a UTF-8 validator costs more per call on short values (simdutf8
        // leaves values under 64 bytes to std's: 4.5% of a typed dump's samples).
        let text = match text.is_ascii() {
            // SAFETY: ASCII bytes are valid UTF-8.
            true => unsafe { std::str::from_utf8_unchecked(text) },
            false => simdutf8::basic::from_utf8(text)
                .map_err(|_| "a text value is not UTF-8 (the session's client_encoding is UTF8)")?,
        };
        self.builder.append_value(text);
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        let array = self.builder.finish();
        // The next batch is about as large (batches are cut by rows and bytes): growing
        // its buffers from nothing again was 1.5% of the bench table's samples in realloc.
        // Never more than a batch's bound: one huge value must not be reserved again.
        self.builder = StringBuilder::with_capacity(
            array.len().min(super::BATCH_ROWS),
            array.value_data().len().min(super::BATCH_BYTES),
        );
        Arc::new(array)
    }
}

struct Binaries(BinaryBuilder);

impl Column for Binaries {
    fn push(&mut self, value: Option<&[u8]>) -> Result<(), Refusal> {
        match value {
            None => self.0.append_null(),
            Some(v) => self.0.append_value(v),
        }
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        Arc::new(self.0.finish())
    }
}

struct Uuids(FixedSizeBinaryBuilder);

impl Column for Uuids {
    fn push(&mut self, value: Option<&[u8]>) -> Result<(), Refusal> {
        match value {
            None => self.0.append_null(),
            Some(v) => self
                .0
                .append_value(v)
                .map_err(|_| format!("a uuid arrived as {} bytes", v.len()))?,
        }
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        let array = self.0.finish();
        // As for primitives: the next batch's buffer reserved rather than regrown.
        self.0 = FixedSizeBinaryBuilder::with_capacity(array.len().min(super::BATCH_ROWS), 16);
        Arc::new(array)
    }
}

/// `timetz`: the local time and its UTC offset (PostgreSQL sends seconds west of UTC).
struct TimeTz {
    time: Vec<i64>,
    offset: Vec<i32>,
    nulls: NullBufferBuilder,
}

impl Column for TimeTz {
    fn push(&mut self, value: Option<&[u8]>) -> Result<(), Refusal> {
        let (time, offset) = match value {
            None => (0, 0),
            Some(v) if v.len() == 12 => {
                let time = i64::from_be_bytes(fixed(&v[..8])?);
                let west = i32::from_be_bytes(fixed(&v[8..])?);
                (time, -west)
            }
            Some(v) => return Err(format!("a timetz arrived as {} bytes", v.len())),
        };
        self.nulls.append(value.is_some());
        self.time.push(time);
        self.offset.push(offset);
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        let time = Time64MicrosecondArray::from(std::mem::take(&mut self.time));
        let offset = Int32Array::from(std::mem::take(&mut self.offset));
        Arc::new(StructArray::new(
            timetz_fields(),
            vec![Arc::new(time), Arc::new(offset)],
            self.nulls.finish(),
        ))
    }
}

/// `interval`: months, days and microseconds, each kept (PostgreSQL sends them the other
/// way round).
struct Interval {
    months: Vec<i32>,
    days: Vec<i32>,
    micros: Vec<i64>,
    nulls: NullBufferBuilder,
}

impl Column for Interval {
    fn push(&mut self, value: Option<&[u8]>) -> Result<(), Refusal> {
        let (micros, days, months) = match value {
            None => (0, 0, 0),
            Some(v) if v.len() == 16 => (
                i64::from_be_bytes(fixed(&v[..8])?),
                i32::from_be_bytes(fixed(&v[8..12])?),
                i32::from_be_bytes(fixed(&v[12..])?),
            ),
            Some(v) => return Err(format!("an interval arrived as {} bytes", v.len())),
        };
        self.nulls.append(value.is_some());
        self.months.push(months);
        self.days.push(days);
        self.micros.push(micros);
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        let months = Int32Array::from(std::mem::take(&mut self.months));
        let days = Int32Array::from(std::mem::take(&mut self.days));
        let micros = Int64Array::from(std::mem::take(&mut self.micros));
        Arc::new(StructArray::new(
            interval_fields(),
            vec![Arc::new(months), Arc::new(days), Arc::new(micros)],
            self.nulls.finish(),
        ))
    }
}

/// A one-dimensional array whose lower bound is 1 (PostgreSQL's default) as a list; any
/// other array is refused, since a list cannot say it.
struct List {
    element: Kind,
    offsets: Vec<i32>,
    nulls: NullBufferBuilder,
    values: Box<dyn Column>,
}

impl List {
    fn new(element: &Kind) -> List {
        List {
            element: element.clone(),
            offsets: vec![0],
            nulls: NullBufferBuilder::new(0),
            values: column(element),
        }
    }

    /// Push the elements of a binary array; how many there were.
    fn elements(&mut self, v: &[u8]) -> Result<usize, Refusal> {
        let int = |at: usize| -> Result<i32, Refusal> {
            v.get(at..at + 4)
                .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| "an array value ended early".to_string())
        };
        match int(0)? {
            0 => return Ok(0),
            1 => {}
            n => {
                return Err(format!(
                    "a {n}-dimensional array value has no exact list form; dump this table \
                     with --format csv"
                ))
            }
        }
        let (count, lower) = (int(12)?, int(16)?);
        if lower != 1 {
            return Err(format!(
                "an array value starting at index {lower} (not 1) has no exact list form; dump \
                 this table with --format csv"
            ));
        }
        let mut at = 20;
        for _ in 0..count {
            let len = int(at)?;
            at += 4;
            if len < 0 {
                self.values.push(None)?;
                continue;
            }
            let end = at + len as usize;
            let element = v.get(at..end).ok_or("an array element ended early")?;
            self.values.push(Some(element))?;
            at = end;
        }
        Ok(count.max(0) as usize)
    }
}

impl Column for List {
    fn push(&mut self, value: Option<&[u8]>) -> Result<(), Refusal> {
        let added = match value {
            None => 0,
            Some(v) => self.elements(v)?,
        };
        self.nulls.append(value.is_some());
        let last = self.offsets.last().copied().unwrap_or(0);
        let next = i32::try_from(added)
            .ok()
            .and_then(|n| last.checked_add(n))
            .ok_or("more than 2^31 array elements in one batch")?;
        self.offsets.push(next);
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        let offsets = std::mem::replace(&mut self.offsets, vec![0]);
        let field = Arc::new(typed_field("element", &self.element, true));
        Arc::new(ListArray::new(
            field,
            OffsetBuffer::new(ScalarBuffer::from(offsets)),
            self.values.finish(),
            self.nulls.finish(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Array, Decimal128Array};

    /// PostgreSQL's binary numeric: digit groups of base 10,000, the first one's weight.
    fn numeric_bytes(groups: &[u16], weight: i16, sign: u16, dscale: u16) -> Vec<u8> {
        let mut v = Vec::new();
        for word in [groups.len() as u16, weight as u16, sign, dscale] {
            v.extend_from_slice(&word.to_be_bytes());
        }
        for g in groups {
            v.extend_from_slice(&g.to_be_bytes());
        }
        v
    }

    #[test]
    fn numerics_become_exact_scaled_integers_or_are_refused() {
        // 12345678.90 = 1234|5678.9000
        let v = numeric_bytes(&[1234, 5678, 9000], 1, 0, 2);
        assert_eq!(numeric(&v, 2).unwrap(), i256::from_i128(1_234_567_890));
        // -0.01 = -0.0100
        let v = numeric_bytes(&[100], -1, 0x4000, 2);
        assert_eq!(numeric(&v, 2).unwrap(), i256::from_i128(-1));
        assert_eq!(
            numeric(&numeric_bytes(&[], 0, 0, 0), 3).unwrap(),
            i256::ZERO
        );
        // A digit beyond the scale is never rounded away.
        let v = numeric_bytes(&[1, 5000], 0, 0, 4);
        assert!(numeric(&v, 0).unwrap_err().contains("more than 0 digits"));
        for (sign, what) in [(0xC000, "NaN"), (0xD000, "Infinity"), (0xF000, "Infinity")] {
            let v = numeric_bytes(&[], 0, sign, 0);
            assert!(numeric(&v, 2).unwrap_err().contains(what), "{sign:x}");
        }
        // More digits than the column's precision: refused, never cut by the writer.
        let wide = numeric_bytes(&[1, 2345], 1, 0, 0);
        assert!(digits_fit(4, 0)(&wide)
            .unwrap_err()
            .contains("more than the column's 4 digits"));
        assert_eq!(digits_fit(5, 0)(&wide).unwrap(), i256::from_i128(12345));
        let mut column = column(&Kind::Decimal {
            precision: 10,
            scale: 2,
        });
        column.push(Some(&numeric_bytes(&[5], 0, 0, 2))).unwrap();
        column.push(None).unwrap();
        let array = column.finish();
        let array = array.as_any().downcast_ref::<Decimal128Array>().unwrap();
        assert_eq!(array.value_as_string(0), "5.00");
        assert!(array.is_null(1));
    }

    #[test]
    fn dates_and_timestamps_shift_to_1970_or_are_refused() {
        assert_eq!(date(&0i32.to_be_bytes()).unwrap(), 10_957);
        assert!(date(&i32::MAX.to_be_bytes())
            .unwrap_err()
            .contains("'infinity'"));
        assert_eq!(timestamp(&0i64.to_be_bytes()).unwrap(), EPOCH_SHIFT_MICROS);
        assert!(timestamp(&i64::MIN.to_be_bytes())
            .unwrap_err()
            .contains("'-infinity'"));
        let far = (i64::MAX - 1).to_be_bytes();
        assert!(timestamp(&far).unwrap_err().contains("294247-01-10"));
        assert!(date(&[0, 1])
            .unwrap_err()
            .contains("4-byte value arrived as 2 bytes"));
    }

    #[test]
    fn arrays_keep_null_elements_and_refuse_what_a_list_cannot_say() {
        let array = |dims: &[(i32, i32)], elements: &[Option<i32>]| {
            let mut v = Vec::new();
            for word in [dims.len() as i32, 1, 23] {
                v.extend_from_slice(&word.to_be_bytes());
            }
            for (len, lower) in dims {
                v.extend_from_slice(&len.to_be_bytes());
                v.extend_from_slice(&lower.to_be_bytes());
            }
            for e in elements {
                match e {
                    None => v.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(x) => {
                        v.extend_from_slice(&4i32.to_be_bytes());
                        v.extend_from_slice(&x.to_be_bytes());
                    }
                }
            }
            v
        };
        let mut list = column(&Kind::List(Box::new(Kind::Int32)));
        list.push(Some(&array(&[(3, 1)], &[Some(1), None, Some(3)])))
            .unwrap();
        list.push(Some(&array(&[], &[]))).unwrap();
        list.push(None).unwrap();
        let out = list.finish();
        let out = out.as_any().downcast_ref::<ListArray>().unwrap();
        assert_eq!(out.value_offsets(), &[0, 3, 3, 3]);
        assert!(out.is_null(2) && !out.is_null(1));
        assert_eq!(out.values().null_count(), 1);
        let two_d = array(&[(1, 1), (2, 1)], &[Some(1), Some(2)]);
        assert!(list
            .push(Some(&two_d))
            .unwrap_err()
            .contains("2-dimensional"));
        let from_zero = array(&[(1, 0)], &[Some(1)]);
        assert!(list.push(Some(&from_zero)).unwrap_err().contains("index 0"));
    }
}
