//! Source jobs: rows imported from a team's PostgreSQL with the query of
//! their declaration's `[source]` (see [`crate::declared`]), into the lake
//! as the job's partition, where other jobs read them like any job's
//! output.
//!
//! With a `cursor` (a timestamp column) a partition holds the rows whose
//! cursor falls in its interval: an hourly source imports each hour once,
//! and a backfill or clear imports a range again. Without one, a run
//! imports every row (a snapshot of the table as it is now).
//!
//! The query is planned first (`prepare`), so the output's columns and
//! types are known before a row is read, whatever the partition holds:
//! integers become Int64, reals and numerics Float64, booleans Boolean,
//! timestamps Timestamp(ms, UTC) and dates Date32; anything else arrives
//! as its text. The URL comes from `url_env` or `url_file`, never from the
//! declaration (or, for `[scheduler.merchant_directory]`, from the
//! operator's config).
//!
//! A source with `feeds = "merchant-directory"` hands its rows to
//! [`crate::directory`], which checks them as stores and applies them.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, RecordBatch,
    StringBuilder, TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use sqlx::{Column, Connection, Executor, Row, Statement, TypeInfo};
use tillwatch_config::SourceDeclaration;
use tillwatch_scheduler::{JobError, Output, Partition};

use crate::embedded::Embedded;

/// How a column is read back, by its PostgreSQL type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Float,
    Bool,
    /// Milliseconds since 1970.
    Timestamp,
    /// Days since 1970.
    Date,
    Text,
}

fn kind(type_name: &str) -> Kind {
    match type_name {
        "INT2" | "INT4" | "INT8" | "OID" => Kind::Int,
        "FLOAT4" | "FLOAT8" | "NUMERIC" => Kind::Float,
        "BOOL" => Kind::Bool,
        "TIMESTAMPTZ" | "TIMESTAMP" => Kind::Timestamp,
        "DATE" => Kind::Date,
        _ => Kind::Text,
    }
}

/// A column name as a quoted PostgreSQL identifier.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The select list that turns each column into what [`Kind`] reads.
fn conversions(columns: &[(String, Kind)]) -> String {
    columns
        .iter()
        .map(|(name, kind)| {
            let c = format!("src.{}", quoted(name));
            let expr = match kind {
                Kind::Int => format!("{c}::int8"),
                Kind::Float => format!("{c}::float8"),
                Kind::Bool => c,
                Kind::Timestamp => format!("(extract(epoch from {c}) * 1000)::int8"),
                Kind::Date => format!("({c} - date '1970-01-01')::int4"),
                Kind::Text => format!("{c}::text"),
            };
            format!("{expr} AS {}", quoted(name))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which database the source reads, `"postgres"` or `"clickhouse"`, when
/// its URL can be read here.
pub fn database_kind(source: &SourceDeclaration) -> Option<&'static str> {
    let url = url(source).ok()?;
    Some(if is_clickhouse(&url) {
        "clickhouse"
    } else {
        "postgres"
    })
}

/// Whether a source's URL is a ClickHouse server's (HTTP interface).
fn is_clickhouse(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

/// The URL of the declaration's database.
fn url(source: &SourceDeclaration) -> Result<String, JobError> {
    let url = match (&source.url, &source.url_env, &source.url_file) {
        (Some(inline), _, _) => inline.0.clone(),
        (None, Some(var), _) => std::env::var(var).map_err(|_| {
            JobError::read(
                "the source's URL",
                format_args!("the environment variable {var} is not set"),
            )
        })?,
        (None, None, Some(file)) => std::fs::read_to_string(file).map_err(|e| {
            JobError::read(format_args!("the source's URL ({})", file.display()), e)
        })?,
        (None, None, None) => {
            return Err(JobError::read(
                "the source's URL",
                "[source] names neither url_env nor url_file",
            ));
        }
    };
    let url = url.trim().to_string();
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://") || is_clickhouse(&url))
    {
        return Err(JobError::read(
            "the source's URL",
            "it is neither a postgres:// URL nor a ClickHouse http(s):// one",
        ));
    }
    Ok(url)
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Imports `partition` of source job `job` and writes it to the lake.
pub async fn import(
    lake: &Embedded,
    job: &str,
    source: &SourceDeclaration,
    partition: Partition,
) -> Result<Output, JobError> {
    let batch = fetch(job, source, partition).await?;
    lake.write(job, partition, vec![batch]).await
}

/// A connection to the declaration's database and its query's columns,
/// each with how it is read.
async fn prepare(
    what: &str,
    source: &SourceDeclaration,
) -> Result<(sqlx::postgres::PgConnection, Vec<(String, Kind)>), JobError> {
    let url = url(source)?;
    let timeout = source
        .connect_timeout
        .max(std::time::Duration::from_millis(100));
    let mut conn = tokio::time::timeout(timeout, sqlx::postgres::PgConnection::connect(&url))
        .await
        .map_err(|_| JobError::read(what, format_args!("no answer within {timeout:?}")))?
        .map_err(|e| JobError::read(format_args!("{what} (connecting)"), e))?;
    let described = conn
        .prepare(query_of(source))
        .await
        .map_err(|e| JobError::read(format_args!("{what} (its query)"), e))?;
    let columns: Vec<(String, Kind)> = described
        .columns()
        .iter()
        .map(|c| (c.name().to_string(), kind(c.type_info().name())))
        .collect();
    if columns.is_empty() {
        return Err(JobError::read(what, "the query returns no columns"));
    }
    Ok((conn, columns))
}

fn query_of(source: &SourceDeclaration) -> &str {
    source.query.trim().trim_end_matches(';')
}

/// The columns source job `job` imports, as its query plans in its
/// database now (no rows read): what the jobs reading it are planned
/// against before its first import.
pub async fn describe(job: &str, source: &SourceDeclaration) -> Result<SchemaRef, JobError> {
    if is_clickhouse(&url(source)?) {
        return clickhouse::describe(job, source).await;
    }
    let (conn, columns) = prepare(&format!("source {job}"), source).await?;
    let _ = conn.close().await;
    Ok(schema_of(&columns))
}

/// The columns of every source among `jobs` that lands its rows as they
/// are (not the merchant directory's feed), described in their databases
/// one after another; and each source that could not be described, with why (its
/// database unreachable, its URL not given here).
pub async fn describe_all(
    jobs: &[crate::declared::DeclaredJob],
) -> (BTreeMap<String, SchemaRef>, Vec<(String, String)>) {
    let sources: Vec<(&str, &SourceDeclaration)> = jobs
        .iter()
        .filter_map(|j| {
            j.declaration
                .source
                .as_ref()
                .filter(|s| s.feeds.is_none())
                .map(|s| (j.name.as_str(), s))
        })
        .collect();
    let mut schemas = BTreeMap::new();
    let mut failed = Vec::new();
    for (name, source) in sources {
        match describe(name, source).await {
            Ok(schema) => {
                schemas.insert(name.to_string(), schema);
            }
            Err(e) => failed.push((name.to_string(), e.to_string())),
        }
    }
    (schemas, failed)
}

/// The rows of `partition` of source job `job`, as the query gives them
/// (converted by type, see the module docs).
pub async fn fetch(
    job: &str,
    source: &SourceDeclaration,
    partition: Partition,
) -> Result<RecordBatch, JobError> {
    if is_clickhouse(&url(source)?) {
        return clickhouse::fetch(job, source, partition).await;
    }
    let what = format!("source {job}");
    let (mut conn, columns) = prepare(&what, source).await?;
    let query = query_of(source);
    let mut sql = format!("SELECT {} FROM ({query}) AS src", conversions(&columns));
    if let Some(cursor) = &source.cursor {
        if !columns
            .iter()
            .any(|(n, k)| n == cursor && matches!(k, Kind::Timestamp | Kind::Date))
        {
            return Err(JobError::read(
                &what,
                format_args!(
                    "the cursor {cursor:?} is not a timestamp or date column of the query"
                ),
            ));
        }
        sql.push_str(&format!(
            " WHERE src.{c} >= $1::timestamptz AND src.{c} < $2::timestamptz",
            c = quoted(cursor)
        ));
    }
    let mut q = sqlx::query(&sql);
    if source.cursor.is_some() {
        q = q
            .bind(rfc3339(partition.start_ms))
            .bind(rfc3339(partition.end_ms()));
    }
    let rows = q
        .fetch_all(&mut conn)
        .await
        .map_err(|e| JobError::read(format_args!("{what} (its query)"), e))?;
    let _ = conn.close().await;
    to_batch(&columns, &rows).map_err(|e| JobError::read(&what, e))
}

/// The Arrow type a column of `kind` arrives as.
fn data_type(kind: Kind) -> DataType {
    match kind {
        Kind::Int => DataType::Int64,
        Kind::Float => DataType::Float64,
        Kind::Bool => DataType::Boolean,
        Kind::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        Kind::Date => DataType::Date32,
        Kind::Text => DataType::Utf8,
    }
}

/// The imported columns, each nullable (a database column may hold NULL
/// whatever the query's plan says).
fn schema_of(columns: &[(String, Kind)]) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .iter()
            .map(|(name, kind)| Field::new(name, data_type(*kind), true))
            .collect::<Vec<_>>(),
    ))
}

fn to_batch(
    columns: &[(String, Kind)],
    rows: &[sqlx::postgres::PgRow],
) -> Result<RecordBatch, sqlx::Error> {
    let mut arrays: Vec<ArrayRef> = Vec::new();
    for (i, (_, kind)) in columns.iter().enumerate() {
        let array: ArrayRef = match kind {
            Kind::Int => {
                let mut b = Int64Builder::with_capacity(rows.len());
                for r in rows {
                    b.append_option(r.try_get::<Option<i64>, _>(i)?);
                }
                Arc::new(b.finish())
            }
            Kind::Float => {
                let mut b = Float64Builder::with_capacity(rows.len());
                for r in rows {
                    b.append_option(r.try_get::<Option<f64>, _>(i)?);
                }
                Arc::new(b.finish())
            }
            Kind::Bool => {
                let mut b = BooleanBuilder::with_capacity(rows.len());
                for r in rows {
                    b.append_option(r.try_get::<Option<bool>, _>(i)?);
                }
                Arc::new(b.finish())
            }
            Kind::Timestamp => {
                let mut b =
                    TimestampMillisecondBuilder::with_capacity(rows.len()).with_timezone("UTC");
                for r in rows {
                    b.append_option(r.try_get::<Option<i64>, _>(i)?);
                }
                Arc::new(b.finish())
            }
            Kind::Date => {
                let mut b = Date32Builder::with_capacity(rows.len());
                for r in rows {
                    b.append_option(r.try_get::<Option<i32>, _>(i)?);
                }
                Arc::new(b.finish())
            }
            Kind::Text => {
                let mut b = StringBuilder::new();
                for r in rows {
                    b.append_option(r.try_get::<Option<String>, _>(i)?);
                }
                Arc::new(b.finish())
            }
        };
        arrays.push(array);
    }
    Ok(RecordBatch::try_new(schema_of(columns), arrays)
        .expect("one array per column, each of its type"))
}

/// Sources in a team's ClickHouse: the URL is its HTTP interface,
/// `http(s)://[user[:password]@]host:port[/database]` (user `default`
/// without one; the database is the queries' default). The query is asked
/// for its columns first (`LIMIT 0`), and the rows come back as the
/// PostgreSQL source's do: integers as Int64, floats as Float64,
/// `DateTime` as Timestamp(ms, UTC), `Date` as Date32, text as text; a
/// cursor is a `DateTime` or `Date` column.
mod clickhouse {
    use super::*;
    use crate::clickhouse_declared::{arrow_type, columns_of_query, select_as};

    /// A ClickHouse URL's parts: the server's base URL, the user
    /// (`default` without one), the password and the database, each
    /// percent-decoded (a `+` stays a `+`: this is a URL, not a form).
    fn parts(raw: &str) -> Result<(String, String, Option<String>, String), ::url::ParseError> {
        let parsed = ::url::Url::parse(raw)?;
        let decode = |part: &str| {
            ::url::form_urlencoded::parse(format!("x={}", part.replace('+', "%2B")).as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let user = match parsed.username() {
            "" => "default".to_string(),
            name => decode(name),
        };
        let database = decode(parsed.path().trim_matches('/'));
        let mut base = parsed.clone();
        let _ = base.set_username("");
        let _ = base.set_password(None);
        base.set_path("");
        base.set_query(None);
        let base = base.as_str().trim_end_matches('/').to_string();
        Ok((base, user, parsed.password().map(decode), database))
    }

    /// The client for the source's URL, with the database it names.
    fn client(what: &str, source: &SourceDeclaration) -> Result<::clickhouse::Client, JobError> {
        let (base, user, password, database) = parts(&url(source)?)
            .map_err(|e| JobError::read(format_args!("{what} (its URL)"), e))?;
        let mut client = ::clickhouse::Client::default()
            .with_url(base)
            .with_user(user)
            .with_validation(false);
        if let Some(password) = password {
            client = client.with_password(password);
        }
        if !database.is_empty() {
            client = client.with_database(database);
        }
        Ok(client)
    }

    #[test]
    fn a_clickhouse_url_gives_its_user_password_and_database_decoded() {
        assert_eq!(
            parts("https://risk%40team:p%2Fw+1@ch.example:8443/tills").unwrap(),
            (
                "https://ch.example:8443".to_string(),
                "risk@team".to_string(),
                Some("p/w+1".to_string()),
                "tills".to_string()
            )
        );
        assert_eq!(
            parts("http://127.0.0.1:8123").unwrap(),
            (
                "http://127.0.0.1:8123".to_string(),
                "default".to_string(),
                None,
                String::new()
            )
        );
    }

    /// The type a column of ClickHouse type `ch_type` is imported as.
    fn imported(what: &str, name: &str, ch_type: &str) -> Result<DataType, JobError> {
        let (data_type, _) = arrow_type(ch_type).ok_or_else(|| {
            JobError::read(
                what,
                format_args!(
                    "column {name:?} is {ch_type}, which a source does not import: cast it in \
                     the query (to a number, String, DateTime or Date)"
                ),
            )
        })?;
        Ok(match data_type {
            t if t.is_integer() => DataType::Int64,
            DataType::Float32 | DataType::Float64 => DataType::Float64,
            t => t,
        })
    }

    /// The query's columns as imported; the first contact with the
    /// server, bounded by the source's `connect_timeout`.
    async fn schema(
        what: &str,
        source: &SourceDeclaration,
        client: &::clickhouse::Client,
        query: &str,
    ) -> Result<SchemaRef, JobError> {
        let timeout = source
            .connect_timeout
            .max(std::time::Duration::from_millis(100));
        let columns = tokio::time::timeout(timeout, columns_of_query(client, query, what))
            .await
            .map_err(|_| JobError::read(what, format_args!("no answer within {timeout:?}")))??;
        if columns.is_empty() {
            return Err(JobError::read(what, "the query returns no columns"));
        }
        let fields = columns
            .iter()
            .map(|(name, ty)| Ok(Field::new(name, imported(what, name, ty)?, true)))
            .collect::<Result<Vec<_>, JobError>>()?;
        Ok(Arc::new(Schema::new(fields)))
    }

    pub(super) async fn describe(
        job: &str,
        source: &SourceDeclaration,
    ) -> Result<SchemaRef, JobError> {
        let what = format!("source {job}");
        schema(&what, source, &client(&what, source)?, query_of(source)).await
    }

    pub(super) async fn fetch(
        job: &str,
        source: &SourceDeclaration,
        partition: Partition,
    ) -> Result<RecordBatch, JobError> {
        let what = format!("source {job}");
        let client = client(&what, source)?;
        let query = query_of(source);
        let schema = schema(&what, source, &client, query).await?;
        let mut rows = format!("SELECT * FROM (\n{query}\n)");
        if let Some(cursor) = &source.cursor {
            let field = schema.field_with_name(cursor).map_err(|_| {
                JobError::read(&what, format_args!("the query gives no column {cursor:?}"))
            })?;
            if !matches!(
                field.data_type(),
                DataType::Timestamp(..) | DataType::Date32
            ) {
                return Err(JobError::read(
                    &what,
                    format_args!(
                        "the cursor {cursor:?} is not a DateTime or Date column of the query"
                    ),
                ));
            }
            let c = tillwatch_storage::clickhouse_ddl::quote_ident(cursor);
            rows.push_str(&format!(
                " WHERE toDateTime({c}) >= toDateTime({}) AND toDateTime({c}) < toDateTime({})",
                partition.start_ms.div_euclid(1000),
                partition.end_ms().div_euclid(1000)
            ));
        }
        let batches = select_as(&client, &rows, &schema, &what).await?;
        arrow::compute::concat_batches(&schema, &batches).map_err(|e| JobError::read(&what, e))
    }
}
