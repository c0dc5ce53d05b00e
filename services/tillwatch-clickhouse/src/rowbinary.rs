//! Arrow batches of the lake's tables as ClickHouse RowBinary: one typed
//! conversion per column, decided once from the table's Arrow schema, so
//! the live path (staged batches) and backfill (Parquet files) share it.
//!
//! | Arrow | ClickHouse |
//! |---|---|
//! | Utf8, nullable or not | `String` (null as `''`) |
//! | Binary | `String` |
//! | UInt8/32/64, Int32, Float32 | the same width |
//! | nullable numbers | `Nullable(…)` |
//! | Boolean | `UInt8` |
//! | Timestamp(ms) `x` | `x DateTime` (seconds) and `x_ms UInt64` (exact) |

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::{
    DataType, Field, Float32Type, Int32Type, TimeUnit, UInt8Type, UInt32Type, UInt64Type,
};
use tillwatch_storage::{Table, schema};

/// A column as ClickHouse sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChColumn {
    pub name: String,
    /// The type the DDL must declare (without LowCardinality, which does
    /// not change the RowBinary encoding).
    pub ch_type: String,
}

fn ch_type(field: &Field) -> Vec<ChColumn> {
    let base = match field.data_type() {
        DataType::Utf8 | DataType::Binary => "String",
        DataType::UInt8 | DataType::Boolean => "UInt8",
        DataType::UInt32 => "UInt32",
        DataType::UInt64 => "UInt64",
        DataType::Int32 => "Int32",
        DataType::Float32 => "Float32",
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            return vec![
                ChColumn {
                    name: field.name().clone(),
                    ch_type: "DateTime('UTC')".into(),
                },
                ChColumn {
                    name: format!("{}_ms", field.name()),
                    ch_type: "UInt64".into(),
                },
            ];
        }
        other => panic!("no ClickHouse mapping for {other} ({})", field.name()),
    };
    let nullable_number = field.is_nullable() && base != "String";
    vec![ChColumn {
        name: field.name().clone(),
        ch_type: if nullable_number {
            format!("Nullable({base})")
        } else {
            base.to_string()
        },
    }]
}

/// The ClickHouse columns of a table, in encoding order.
pub fn columns(table: Table) -> Vec<ChColumn> {
    schema(table)
        .fields()
        .iter()
        .flat_map(|f| ch_type(f))
        .collect()
}

/// The column list for `INSERT INTO t (…) FORMAT RowBinary`.
pub fn column_list(table: Table) -> String {
    columns(table)
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

enum Col<'a> {
    Str(&'a StringArray),
    Bin(&'a BinaryArray),
    Bool(&'a BooleanArray),
    U8(&'a [u8]),
    U32(&'a [u32]),
    U64(&'a [u64]),
    I32(&'a [i32]),
    F32(&'a [f32]),
    Ts(&'a TimestampMillisecondArray),
}

fn col(array: &ArrayRef) -> Col<'_> {
    match array.data_type() {
        DataType::Utf8 => Col::Str(array.as_string::<i32>()),
        DataType::Binary => Col::Bin(array.as_binary::<i32>()),
        DataType::Boolean => Col::Bool(array.as_boolean()),
        DataType::UInt8 => Col::U8(array.as_primitive::<UInt8Type>().values()),
        DataType::UInt32 => Col::U32(array.as_primitive::<UInt32Type>().values()),
        DataType::UInt64 => Col::U64(array.as_primitive::<UInt64Type>().values()),
        DataType::Int32 => Col::I32(array.as_primitive::<Int32Type>().values()),
        DataType::Float32 => Col::F32(array.as_primitive::<Float32Type>().values()),
        DataType::Timestamp(TimeUnit::Millisecond, _) => Col::Ts(
            array
                .as_any()
                .downcast_ref()
                .expect("a millisecond timestamp"),
        ),
        other => panic!("no ClickHouse mapping for {other}"),
    }
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Appends every row of `batch` (a batch of `table`'s schema) to `out`.
pub fn encode(table: Table, batch: &RecordBatch, out: &mut Vec<u8>) {
    let expected = schema(table);
    assert_eq!(
        batch.schema().fields().len(),
        expected.fields().len(),
        "a batch of {} has the table's columns",
        table.name()
    );
    let fields = expected.fields();
    let cols: Vec<(Col<'_>, &ArrayRef, bool)> = batch
        .columns()
        .iter()
        .zip(fields.iter())
        .map(|(a, f)| {
            (
                col(a),
                a,
                f.is_nullable() && !matches!(f.data_type(), DataType::Utf8),
            )
        })
        .collect();
    out.reserve(batch.num_rows() * 96);
    for row in 0..batch.num_rows() {
        for (col, array, nullable) in &cols {
            if *nullable {
                if array.is_null(row) {
                    out.push(1);
                    continue;
                }
                out.push(0);
            }
            match col {
                Col::Str(a) => {
                    let s = if a.is_null(row) { "" } else { a.value(row) };
                    put_bytes(out, s.as_bytes());
                }
                Col::Bin(a) => put_bytes(out, a.value(row)),
                Col::Bool(a) => out.push(u8::from(a.value(row))),
                Col::U8(v) => out.push(v[row]),
                Col::U32(v) => out.extend_from_slice(&v[row].to_le_bytes()),
                Col::U64(v) => out.extend_from_slice(&v[row].to_le_bytes()),
                Col::I32(v) => out.extend_from_slice(&v[row].to_le_bytes()),
                Col::F32(v) => out.extend_from_slice(&v[row].to_le_bytes()),
                Col::Ts(a) => {
                    let ms = a.value(row).max(0) as u64;
                    let secs = u32::try_from(ms / 1000).unwrap_or(u32::MAX);
                    out.extend_from_slice(&secs.to_le_bytes());
                    out.extend_from_slice(&ms.to_le_bytes());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tillwatch_domain::Kind;

    #[test]
    fn timestamps_become_seconds_and_exact_milliseconds() {
        let cols = columns(Table::Reading(Kind::Battery));
        let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            &names[..9],
            [
                "device_id",
                "merchant_id",
                "store_id",
                "boot_id",
                "seq",
                "sampled_at",
                "sampled_at_ms",
                "received_at",
                "received_at_ms"
            ]
        );
        let startup = columns(Table::Reading(Kind::AppPerformance))
            .into_iter()
            .find(|c| c.name == "startup_ms")
            .unwrap();
        assert_eq!(startup.ch_type, "Nullable(UInt32)");
    }

    #[test]
    fn varints_match_clickhouse() {
        let mut out = Vec::new();
        put_varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
    }
}
