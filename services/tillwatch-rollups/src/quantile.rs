//! `weighted_quantile(value, weight, q)`: the embedded engine's quantile
//! aggregate, for DataFusion.
//!
//! The rollups take quantiles of a few dozen values per terminal and
//! interval (a terminal's hour of readings, or its day of hours). DataFusion's
//! `approx_percentile_cont[_with_weight]` has no grouped accumulator: it
//! keeps one t-digest object per group and passes each group's state
//! between the partial and final aggregation as lists of scalars, which was
//! most of the hourly job's time (allocation, `ScalarValue` conversion,
//! digest merges; BENCHMARKS.md has the profile). This one keeps each
//! group's (value, weight) points in plain vectors, exchanges them as two
//! list columns, and at the end estimates the quantile the way a t-digest
//! does when every point is its own centroid, which is what DataFusion's
//! and ClickHouse's digests hold for groups this small: the same answers,
//! without the digest. Points with a NULL value or weight, or a weight that
//! is not positive, are left out (as the ClickHouse SQL does); a group
//! with no points gives NULL.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array, ListArray};
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};
use datafusion::physical_expr::expressions::Literal;

/// The SQL name.
pub const NAME: &str = "weighted_quantile";

/// The aggregate, ready to register on a `SessionContext`.
pub fn udaf() -> AggregateUDF {
    AggregateUDF::from(WeightedQuantile {
        signature: Signature::exact(vec![DataType::Float64; 3], Volatility::Immutable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct WeightedQuantile {
    signature: Signature,
}

/// The quantile: the third argument, a literal in [0, 1].
fn quantile_arg(args: &AccumulatorArgs) -> Result<f64> {
    let q = args
        .exprs
        .get(2)
        .and_then(|e| e.downcast_ref::<Literal>())
        .map(|l| l.value().clone());
    match q {
        Some(ScalarValue::Float64(Some(q))) if (0.0..=1.0).contains(&q) => Ok(q),
        other => exec_err!("{NAME}: the quantile must be a literal from 0 to 1, got {other:?}"),
    }
}

impl AggregateUDFImpl for WeightedQuantile {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(Single {
            q: quantile_arg(&args)?,
            points: Vec::new(),
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let list = |name: &str| {
            Arc::new(Field::new(
                format!("{}[{name}]", args.name),
                DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true))),
                true,
            ))
        };
        Ok(vec![list("values"), list("weights")])
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(Groups {
            q: quantile_arg(&args)?,
            points: Vec::new(),
        }))
    }
}

type Points = Vec<(f64, f64)>;

/// The quantile `q` of weighted points, as a t-digest estimates it when
/// each point is a centroid of its own: find the centroid holding rank
/// `q × total weight`, interpolate within it towards its neighbours'
/// means, and clamp between them.
pub fn estimate(points: &mut Points, q: f64) -> Option<f64> {
    if points.is_empty() {
        return None;
    }
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = points.len();
    let (lo, hi) = (points[0].0, points[n - 1].0);
    if q <= 0.0 {
        return Some(lo);
    }
    if q >= 1.0 {
        return Some(hi);
    }
    let count: f64 = points.iter().map(|p| p.1).sum();
    let rank = q * count;
    let (mut pos, mut t);
    if q > 0.5 {
        pos = 0;
        t = count;
        for (k, p) in points.iter().enumerate().rev() {
            t -= p.1;
            if rank >= t {
                pos = k;
                break;
            }
        }
    } else {
        pos = n - 1;
        t = 0.0;
        for (k, p) in points.iter().enumerate() {
            if rank < t + p.1 {
                pos = k;
                break;
            }
            t += p.1;
        }
    }
    let (mut delta, mut min, mut max) = (0.0, lo, hi);
    if n > 1 {
        if pos == 0 {
            delta = points[1].0 - points[0].0;
            max = points[1].0;
        } else if pos == n - 1 {
            delta = points[pos].0 - points[pos - 1].0;
            min = points[pos - 1].0;
        } else {
            delta = (points[pos + 1].0 - points[pos - 1].0) / 2.0;
            min = points[pos - 1].0;
            max = points[pos + 1].0;
        }
    }
    let value = points[pos].0 + ((rank - t) / points[pos].1 - 0.5) * delta;
    Some(value.clamp(min, max))
}

/// Calls `push(row, value, weight)` for each row with both set and a
/// positive weight.
fn each_point(
    values: &ArrayRef,
    weights: &ArrayRef,
    mut push: impl FnMut(usize, f64, f64),
) -> Result<()> {
    let (Some(values), Some(weights)) = (
        values.as_primitive_opt::<Float64Type>(),
        weights.as_primitive_opt::<Float64Type>(),
    ) else {
        return exec_err!("{NAME}: value and weight must be DOUBLE");
    };
    for row in 0..values.len() {
        if values.is_null(row) || weights.is_null(row) {
            continue;
        }
        let weight = weights.value(row);
        if weight > 0.0 {
            push(row, values.value(row), weight);
        }
    }
    Ok(())
}

/// The state of some groups: their values and their weights, as two list
/// columns.
fn state_of<'a>(groups: impl Iterator<Item = &'a Points> + Clone) -> Vec<ArrayRef> {
    let column = |pick: fn(&(f64, f64)) -> f64| -> ArrayRef {
        Arc::new(ListArray::from_iter_primitive::<Float64Type, _, _>(
            groups
                .clone()
                .map(|points| Some(points.iter().map(move |p| Some(pick(p))))),
        ))
    };
    vec![column(|p| p.0), column(|p| p.1)]
}

/// Calls `add(row, value, weight)` for every point of every row of a
/// state batch.
fn each_state_point(states: &[ArrayRef], mut add: impl FnMut(usize, f64, f64)) -> Result<()> {
    let (Some(values), Some(weights)) = (
        states[0].as_list_opt::<i32>(),
        states[1].as_list_opt::<i32>(),
    ) else {
        return exec_err!("{NAME}: unexpected state");
    };
    for row in 0..values.len() {
        if values.is_null(row) {
            continue;
        }
        let v = values.value(row);
        let w = weights.value(row);
        let (v, w) = (
            v.as_primitive::<Float64Type>(),
            w.as_primitive::<Float64Type>(),
        );
        for i in 0..v.len() {
            add(row, v.value(i), w.value(i));
        }
    }
    Ok(())
}

/// One group: the aggregate without GROUP BY.
#[derive(Debug)]
struct Single {
    q: f64,
    points: Points,
}

impl Accumulator for Single {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        each_point(&values[0], &values[1], |_, v, w| self.points.push((v, w)))
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(estimate(&mut self.points, self.q)))
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.points.capacity() * size_of::<(f64, f64)>()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(state_of(std::iter::once(&self.points))
            .into_iter()
            .map(|column| ScalarValue::List(Arc::new(column.as_list::<i32>().clone())))
            .collect())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        each_state_point(states, |_, v, w| self.points.push((v, w)))
    }
}

/// Many groups, each a vector of points.
#[derive(Debug)]
struct Groups {
    q: f64,
    points: Vec<Points>,
}

impl GroupsAccumulator for Groups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.points.resize_with(total_num_groups, Vec::new);
        let points = &mut self.points;
        each_point(&values[0], &values[1], |row, v, w| {
            if opt_filter.is_none_or(|f| f.is_valid(row) && f.value(row)) {
                points[group_indices[row]].push((v, w));
            }
        })
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let q = self.q;
        let out: Float64Array = emit_to
            .take_needed(&mut self.points)
            .iter_mut()
            .map(|points| estimate(points, q))
            .collect();
        Ok(Arc::new(out))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let groups = emit_to.take_needed(&mut self.points);
        Ok(state_of(groups.iter()))
    }

    fn merge_batch(
        &mut self,
        states: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.points.resize_with(total_num_groups, Vec::new);
        let points = &mut self.points;
        each_state_point(states, |row, v, w| points[group_indices[row]].push((v, w)))
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        // Each input row its own state of at most one point.
        let mut rows: Vec<Points> = vec![Vec::new(); values[0].len()];
        each_point(&values[0], &values[1], |row, v, w| {
            if opt_filter.is_none_or(|f| f.is_valid(row) && f.value(row)) {
                rows[row].push((v, w));
            }
        })?;
        Ok(state_of(rows.iter()))
    }

    fn size(&self) -> usize {
        size_of_val(self)
            + self.points.capacity() * size_of::<Points>()
            + self
                .points
                .iter()
                .map(|p| p.capacity() * size_of::<(f64, f64)>())
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::Schema;
    use datafusion::prelude::SessionContext;

    /// Groups of 1 to 40 points, pseudo-random values and weights 1-5.
    fn context() -> SessionContext {
        let (mut g, mut v, mut w) = (Vec::new(), Vec::new(), Vec::new());
        let mut x: u64 = 7;
        for group in 0..40i64 {
            for _ in 0..=group {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                g.push(group);
                v.push((x >> 33) as f64 % 2_000.0 / 3.0);
                w.push(((x >> 20) % 5 + 1) as f64);
            }
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("g", DataType::Int64, false),
            Field::new("v", DataType::Float64, false),
            Field::new("w", DataType::Float64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(g)),
                Arc::new(Float64Array::from(v)),
                Arc::new(Float64Array::from(w)),
            ],
        )
        .expect("a batch");
        let ctx = SessionContext::new();
        ctx.register_batch("t", batch).expect("register");
        ctx.register_udaf(udaf());
        ctx
    }

    async fn pairs(ctx: &SessionContext, sql: &str) -> Vec<(f64, f64)> {
        let batches = ctx
            .sql(sql)
            .await
            .expect("plans")
            .collect()
            .await
            .expect("runs");
        let mut out = Vec::new();
        for b in batches {
            let (a, c) = (
                b.column(0).as_primitive::<Float64Type>(),
                b.column(1).as_primitive::<Float64Type>(),
            );
            out.extend((0..b.num_rows()).map(|i| (a.value(i), c.value(i))));
        }
        out
    }

    #[tokio::test]
    async fn gives_datafusions_digest_answers_for_small_groups() {
        let ctx = context();
        for q in ["0.01", "0.25", "0.5", "0.95", "0.99"] {
            let weighted = pairs(
                &ctx,
                &format!(
                    "SELECT weighted_quantile(v, w, {q}), \
                     approx_percentile_cont_with_weight(w, {q}) WITHIN GROUP (ORDER BY v) \
                     FROM t GROUP BY g"
                ),
            )
            .await;
            let plain = pairs(
                &ctx,
                &format!(
                    "SELECT weighted_quantile(v, 1.0, {q}), \
                     approx_percentile_cont({q}) WITHIN GROUP (ORDER BY v) FROM t GROUP BY g"
                ),
            )
            .await;
            assert_eq!(weighted.len(), 40);
            for (ours, theirs) in weighted.into_iter().chain(plain) {
                assert!(
                    (ours - theirs).abs() <= 1e-9 * theirs.abs().max(1.0),
                    "q={q}: {ours} vs DataFusion's {theirs}"
                );
            }
        }
        // Without GROUP BY too.
        let all = pairs(
            &ctx,
            "SELECT weighted_quantile(v, w, 0.5), \
             approx_percentile_cont_with_weight(w, 0.5) WITHIN GROUP (ORDER BY v) FROM t WHERE g = 9",
        )
        .await;
        assert!((all[0].0 - all[0].1).abs() < 1e-9, "{all:?}");
    }

    #[tokio::test]
    async fn leaves_out_zero_weights_and_nulls_and_rejects_a_bad_quantile() {
        let ctx = context();
        let batches = ctx
            .sql(
                "SELECT weighted_quantile(v, CASE WHEN g = 3 THEN 0.0 ELSE w END, 0.5) AS q, \
                 weighted_quantile(CASE WHEN g = 4 THEN NULL ELSE v END, w, 0.5) AS r \
                 FROM t WHERE g IN (3, 4) GROUP BY g ORDER BY g",
            )
            .await
            .expect("plans")
            .collect()
            .await
            .expect("runs");
        let (q, r) = (
            batches[0].column(0).as_primitive::<Float64Type>(),
            batches[0].column(1).as_primitive::<Float64Type>(),
        );
        assert!(q.is_null(0) && !q.is_null(1), "all-zero weights give NULL");
        assert!(!r.is_null(0) && r.is_null(1), "all-NULL values give NULL");

        let err = ctx
            .sql("SELECT weighted_quantile(v, w, 1.5) FROM t GROUP BY g")
            .await
            .expect("plans")
            .collect()
            .await
            .expect_err("a quantile above 1");
        assert!(err.to_string().contains("from 0 to 1"), "{err}");
    }
}
