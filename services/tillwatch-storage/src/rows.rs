//! Reading a few columns of a lake file as plain values, for the read side
//! (`tillwatch-query`), which answers from the rollups' outputs and the raw
//! tables without a query engine and without knowing Arrow: only the named
//! columns are decoded, only for the rows whose text columns equal the
//! given values (a row filter evaluated while decoding).

use std::fs::File;
use std::path::Path;

use arrow::array::{Array, AsArray, BooleanArray, Scalar, StringArray};
use arrow::compute::kernels::cmp::eq;
use arrow::compute::{and, cast};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowPredicateFn, ParquetRecordBatchReaderBuilder, RowFilter};
use parquet::file::reader::ChunkReader;

use crate::lake::{Lake, LakeError, io_err};
use crate::store::Backend;

/// The rows of one file that passed the filter, in file order, with the
/// columns asked for (a column the file lacks is simply absent).
#[derive(Debug, Default)]
pub struct Rows {
    batches: Vec<RecordBatch>,
}

impl Rows {
    /// How many rows passed the filter.
    pub fn len(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every row's value of `column` as a number (integers, decimals and
    /// times are converted; a null or a value that is not finite is
    /// `None`), or `None` when the file has no such column.
    pub fn floats(&self, column: &str) -> Option<Vec<Option<f64>>> {
        self.each(column, DataType::Float64, |c, out| {
            let c = c.as_primitive::<Float64Type>();
            out.extend((0..c.len()).map(|i| {
                let v = c.value(i);
                (c.is_valid(i) && v.is_finite()).then_some(v)
            }));
        })
    }

    /// Every row's value of `column` as an integer (a time in milliseconds
    /// since 1970 for a timestamp column).
    pub fn ints(&self, column: &str) -> Option<Vec<Option<i64>>> {
        self.each(column, DataType::Int64, |c, out| {
            let c = c.as_primitive::<Int64Type>();
            out.extend((0..c.len()).map(|i| c.is_valid(i).then(|| c.value(i))));
        })
    }

    /// Every row's value of `column` as text.
    pub fn texts(&self, column: &str) -> Option<Vec<Option<String>>> {
        self.each(column, DataType::Utf8, |c, out| {
            let c = c.as_string::<i32>();
            out.extend((0..c.len()).map(|i| c.is_valid(i).then(|| c.value(i).to_string())));
        })
    }

    fn each<T>(
        &self,
        column: &str,
        to: DataType,
        mut take: impl FnMut(&dyn Array, &mut Vec<Option<T>>),
    ) -> Option<Vec<Option<T>>> {
        let mut out = Vec::with_capacity(self.len());
        let mut found = self.batches.is_empty();
        for batch in &self.batches {
            let Some(c) = batch.column_by_name(column) else {
                continue;
            };
            found = true;
            // A timestamp becomes its milliseconds, any other type its value.
            let c = match c.data_type() {
                DataType::Timestamp(_, _) if to != DataType::Utf8 => {
                    let ms = cast(
                        c,
                        &DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None),
                    )
                    .ok()?;
                    cast(&ms, &DataType::Int64).ok()?
                }
                _ => cast(c, &to).ok()?,
            };
            take(c.as_ref(), &mut out);
        }
        found.then_some(out)
    }
}

/// `column = value` for every pair, as one mask over `batch` (whose columns
/// are the filter's, in order).
fn all_equal(batch: &RecordBatch, values: &[String]) -> Result<BooleanArray, ArrowError> {
    let mut mask: Option<BooleanArray> = None;
    for (i, value) in values.iter().enumerate() {
        let column = cast(batch.column(i), &DataType::Utf8)?;
        let wanted = Scalar::new(StringArray::from(vec![value.as_str()]));
        let equal = eq(&column, &wanted)?;
        mask = Some(match mask {
            Some(m) => and(&m, &equal)?,
            None => equal,
        });
    }
    Ok(mask.unwrap_or_else(|| BooleanArray::from(vec![true; batch.num_rows()])))
}

fn read<R: ChunkReader + 'static>(
    data: R,
    path: &Path,
    columns: &[&str],
    equal: &[(&str, &str)],
) -> Result<Rows, LakeError> {
    let parquet_err = |source| LakeError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let mut builder = ParquetRecordBatchReaderBuilder::try_new(data).map_err(parquet_err)?;
    let schema = builder.parquet_schema();
    // The filter's columns, in the order of `equal` (a projection keeps the
    // file's order, so each is filtered alone when there are several).
    let mut predicates: Vec<Box<dyn parquet::arrow::arrow_reader::ArrowPredicate>> = Vec::new();
    for (column, value) in equal {
        let index = schema
            .columns()
            .iter()
            .position(|c| c.path().string() == *column);
        let Some(index) = index else {
            // No such column: no row can equal the value.
            return Ok(Rows::default());
        };
        let values = vec![value.to_string()];
        predicates.push(Box::new(ArrowPredicateFn::new(
            ProjectionMask::leaves(schema, [index]),
            move |batch| all_equal(&batch, &values),
        )));
    }
    let projection = ProjectionMask::columns(schema, columns.iter().copied());
    builder = builder.with_projection(projection);
    if !predicates.is_empty() {
        builder = builder.with_row_filter(RowFilter::new(predicates));
    }
    let reader = builder.build().map_err(parquet_err)?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| LakeError::Arrow {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(Rows { batches })
}

impl Lake {
    /// `columns` of the rows of the Parquet file at `path` whose text
    /// columns equal the values of `equal` (`[("device_id", "t-1")]`).
    /// Blocking.
    pub fn read_rows(
        &self,
        path: &Path,
        columns: &[&str],
        equal: &[(&str, &str)],
    ) -> Result<Rows, LakeError> {
        match self.backend() {
            Backend::Local => {
                let file = File::open(path).map_err(io_err("open", path))?;
                read(file, path, columns, equal)
            }
            Backend::Object(_) => read(self.object(path)?, path, columns, equal),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, Int64Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use arrow::record_batch::RecordBatch;
    use parquet::arrow::ArrowWriter;

    use crate::Lake;

    #[test]
    fn reads_the_named_columns_of_the_matching_rows() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("device_id", DataType::Utf8, false),
            Field::new("store_id", DataType::Utf8, true),
            Field::new(
                "at",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("level", DataType::Float64, true),
            Field::new("count", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "a", "a"])),
                Arc::new(StringArray::from(vec![
                    Some("s1"),
                    Some("s1"),
                    None,
                    Some("s2"),
                ])),
                Arc::new(
                    TimestampMillisecondArray::from(vec![10, 20, 30, 40]).with_timezone("UTC"),
                ),
                Arc::new(Float64Array::from(vec![
                    Some(1.5),
                    Some(2.0),
                    None,
                    Some(f64::NAN),
                ])),
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
            ],
        )
        .unwrap();
        let path = dir.path().join("x.parquet");
        let mut writer =
            ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema, None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();

        let lake = Lake::new(dir.path());
        let rows = lake
            .read_rows(
                &path,
                &["at", "level", "count", "nope"],
                &[("device_id", "a")],
            )
            .unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows.ints("at").unwrap(), [Some(10), Some(30), Some(40)]);
        assert_eq!(rows.floats("level").unwrap(), [Some(1.5), None, None]);
        assert_eq!(
            rows.floats("count").unwrap(),
            [Some(1.0), Some(3.0), Some(4.0)]
        );
        assert!(rows.texts("nope").is_none(), "absent columns are None");

        let both = lake
            .read_rows(&path, &["count"], &[("device_id", "a"), ("store_id", "s2")])
            .unwrap();
        assert_eq!(both.ints("count").unwrap(), [Some(4)]);
        let none = lake
            .read_rows(&path, &["count"], &[("merchant_id", "m")])
            .unwrap();
        assert!(none.is_empty(), "no such filter column: no rows");
        let all = lake.read_rows(&path, &["store_id"], &[]).unwrap();
        assert_eq!(
            all.texts("store_id").unwrap(),
            [
                Some("s1".into()),
                Some("s1".into()),
                None,
                Some("s2".into())
            ]
        );
    }
}
