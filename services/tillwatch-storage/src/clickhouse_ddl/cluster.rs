//! The same schema on a ClickHouse cluster (`clickhouse.cluster`): every
//! statement `ON CLUSTER`, generated from the single-server DDL files.
//!
//! - The raw tables and the latest-state table are sharded by device:
//!   `<name>_local` is a `Replicated*MergeTree` on every shard (ZooKeeper
//!   path `/clickhouse/tables/{shard}/<database>/<name>_local`, replica
//!   `{replica}`: the servers' macros), and `<name>` a `Distributed` table
//!   over them keyed by `cityHash64(device_id)`, so a device's rows, their
//!   deduplication and its latest state stay on one shard. Writers and
//!   readers use `<name>` as on one server.
//! - The materialized views feeding the latest state run on each shard,
//!   from `<raw>_local` to `device_latest_state_local`.
//! - The rollup tables are replicated but not sharded: the ClickHouse
//!   rollup engine swaps whole partitions on the server it is connected to,
//!   so it needs a single-shard cluster (any number of replicas). With more
//!   shards, run the embedded engine over the lake.
//! - Staging and scratch tables are plain `MergeTree` on every server.

use super::quote_ident;

/// Tables split across shards by device.
const SHARDED: &[&str] = &[
    "connectivity",
    "battery",
    "app_performance",
    "payment_health",
    "dead_letter",
    "device_latest_state",
];

/// Whether `table` is split across shards (over `<table>_local`).
pub(super) fn is_sharded(table: &str) -> bool {
    SHARDED.contains(&table)
}

/// Tables kept whole on every replica of the (single) shard.
const REPLICATED: &[&str] = &[
    "device_health_hourly",
    "device_health_daily",
    "fleet_health_daily",
    "merchant_directory",
];

/// A single-server statement the cluster rewrite cannot take (a template
/// of ours out of the shape it expects).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterDdlError {
    #[error("{table}: {problem}")]
    Engine {
        table: String,
        problem: &'static str,
    },
    #[error("{table} is declared AS {source_table}, not created before it")]
    AsBeforeSource { table: String, source_table: String },
    #[error("no cluster form for the statement starting {0:?}")]
    Unsupported(String),
    #[error("{migration}: {source}")]
    InMigration {
        migration: String,
        #[source]
        source: Box<ClusterDdlError>,
    },
}

/// The statements for a cluster, from one file's statements as rendered
/// for a single server (`database` already expanded in them).
pub(super) fn for_cluster(
    statements: &[String],
    database: &str,
    cluster: &str,
) -> Result<Vec<String>, ClusterDdlError> {
    let db = quote_ident(database);
    let on = format!("ON CLUSTER {}", quote_ident(cluster));
    let prefix = format!("{db}.");
    let mut out = Vec::new();
    // Single-server CREATE TABLE bodies seen so far, for staging tables
    // declared `AS` one of them.
    let mut bodies: Vec<(String, String)> = Vec::new();
    for s in statements {
        if let Some(rest) = s.strip_prefix(&format!("CREATE TABLE IF NOT EXISTS {prefix}")) {
            let (name, body) = split_name(rest);
            if let Some(source) = body.trim().strip_prefix(&format!("AS {prefix}")) {
                // `<name> AS <source>`: a plain table shaped like the source.
                let source = source.trim();
                let source_body = bodies
                    .iter()
                    .find(|(n, _)| n == source)
                    .map(|(_, b)| b.clone())
                    .ok_or_else(|| ClusterDdlError::AsBeforeSource {
                        table: name.to_string(),
                        source_table: source.to_string(),
                    })?;
                out.push(format!(
                    "CREATE TABLE IF NOT EXISTS {prefix}{name} {on}{source_body}"
                ));
                continue;
            }
            bodies.push((name.to_string(), body.to_string()));
            if SHARDED.contains(&name) {
                let local = format!("{name}_local");
                out.push(format!(
                    "CREATE TABLE IF NOT EXISTS {prefix}{local} {on}{}",
                    replicated(body, database, &local)?
                ));
                let key = if body.contains("device_id ") {
                    "cityHash64(device_id)"
                } else {
                    "rand()"
                };
                out.push(format!(
                    "CREATE TABLE IF NOT EXISTS {prefix}{name} {on} AS {prefix}{local} \
                     ENGINE = Distributed({}, {}, {}, {key})",
                    quote_string(cluster),
                    quote_string(database),
                    quote_string(&local)
                ));
            } else if REPLICATED.contains(&name) {
                out.push(format!(
                    "CREATE TABLE IF NOT EXISTS {prefix}{name} {on}{}",
                    replicated(body, database, name)?
                ));
            } else {
                out.push(format!(
                    "CREATE TABLE IF NOT EXISTS {prefix}{name} {on}{body}"
                ));
            }
        } else if let Some(rest) =
            s.strip_prefix(&format!("CREATE MATERIALIZED VIEW IF NOT EXISTS {prefix}"))
        {
            let (name, body) = split_name(rest);
            let mut body = body.to_string();
            for table in SHARDED {
                for keyword in ["TO", "FROM"] {
                    body = to_local(&body, &format!("{keyword} {prefix}{table}"));
                }
            }
            out.push(format!(
                "CREATE MATERIALIZED VIEW IF NOT EXISTS {prefix}{name} {on}{body}"
            ));
        } else if let Some(rest) = s.strip_prefix(&format!("CREATE VIEW IF NOT EXISTS {prefix}")) {
            let (name, body) = split_name(rest);
            out.push(format!(
                "CREATE VIEW IF NOT EXISTS {prefix}{name} {on}{body}"
            ));
        } else if let Some(rest) = s.strip_prefix(&format!("ALTER TABLE {prefix}")) {
            let (name, body) = split_name(rest);
            if SHARDED.contains(&name) {
                out.push(format!("ALTER TABLE {prefix}{name}_local {on}{body}"));
            }
            out.push(format!("ALTER TABLE {prefix}{name} {on}{body}"));
        } else {
            return Err(ClusterDdlError::Unsupported(
                s.chars().take(60).collect::<String>(),
            ));
        }
    }
    Ok(out)
}

/// `text` with each `reference` that is a whole name (not the start of a
/// longer one) followed by `_local`.
fn to_local(text: &str, reference: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(reference) {
        let end = at + reference.len();
        out.push_str(&rest[..end]);
        let whole = rest[end..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        if whole {
            out.push_str("_local");
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// `name rest…` → (`name`, ` rest…`), the name ending at whitespace or `(`.
fn split_name(s: &str) -> (&str, &str) {
    let end = s
        .find(|c: char| c.is_whitespace() || c == '(')
        .unwrap_or(s.len());
    (&s[..end], &s[end..])
}

fn quote_string(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A CREATE TABLE body with its `ENGINE = XMergeTree(args)` made
/// `ReplicatedXMergeTree('<zk path>', '{replica}'[, args])`.
fn replicated(body: &str, database: &str, table: &str) -> Result<String, ClusterDdlError> {
    let bad = |problem: &'static str| ClusterDdlError::Engine {
        table: table.to_string(),
        problem,
    };
    let at = body
        .find("ENGINE = ")
        .ok_or_else(|| bad("no ENGINE clause"))?;
    let engine_start = at + "ENGINE = ".len();
    let rest = &body[engine_start..];
    let open = rest
        .find('(')
        .ok_or_else(|| bad("the engine has no arguments"))?;
    let engine = &rest[..open];
    if !engine.ends_with("MergeTree") {
        return Err(bad("the engine is not a MergeTree"));
    }
    let close = rest[open..]
        .find(')')
        .ok_or_else(|| bad("unclosed engine arguments"))?
        + open;
    let args = rest[open + 1..close].trim();
    let path = quote_string(&format!("/clickhouse/tables/{{shard}}/{database}/{table}"));
    let replica = quote_string("{replica}");
    let args = if args.is_empty() {
        format!("{path}, {replica}")
    } else {
        format!("{path}, {replica}, {args}")
    };
    Ok(format!(
        "{}ENGINE = Replicated{engine}({args}){}",
        &body[..at],
        &rest[close + 1..]
    ))
}

#[cfg(test)]
mod tests {
    use super::super::{Features, MIGRATIONS};

    fn cluster_sql() -> Vec<String> {
        MIGRATIONS
            .iter()
            .flat_map(|m| {
                m.render_for_cluster("tw", Features::default(), "fleet")
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn every_statement_runs_on_the_whole_cluster() {
        let all = cluster_sql();
        assert!(!all.is_empty());
        for s in &all {
            assert!(s.contains(" ON CLUSTER `fleet`"), "{s}");
        }
    }

    #[test]
    fn raw_tables_are_sharded_by_device_over_replicated_local_tables() {
        let all = cluster_sql().join(";\n");
        assert!(
            all.contains("CREATE TABLE IF NOT EXISTS `tw`.battery_local ON CLUSTER `fleet`\n(\n")
        );
        assert!(all.contains(
            "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/tw/battery_local', '{replica}')"
        ));
        assert!(all.contains(
            "CREATE TABLE IF NOT EXISTS `tw`.battery ON CLUSTER `fleet` AS `tw`.battery_local \
             ENGINE = Distributed('fleet', 'tw', 'battery_local', cityHash64(device_id))"
        ));
        // The latest state is fed on each shard from its local rows.
        assert!(
            all.contains("TO `tw`.device_latest_state_local AS"),
            "{all}"
        );
        assert!(
            all.contains("FROM `tw`.battery_local\nGROUP BY device_id"),
            "{all}"
        );
        assert!(all.contains(
            "ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/tw/device_latest_state_local', '{replica}')"
        ));
        // Readers keep the names they use on one server.
        assert!(all.contains("CREATE VIEW IF NOT EXISTS `tw`.battery_final ON CLUSTER `fleet` AS SELECT * FROM `tw`.battery FINAL"));
    }

    #[test]
    fn rollups_are_replicated_and_their_staging_tables_plain() {
        let all = cluster_sql().join(";\n");
        assert!(all.contains(
            "ReplicatedMergeTree('/clickhouse/tables/{shard}/tw/device_health_hourly', '{replica}')"
        ));
        let staging = cluster_sql()
            .into_iter()
            .find(|s| s.starts_with("CREATE TABLE IF NOT EXISTS `tw`.device_health_hourly_staging"))
            .unwrap();
        assert!(staging.contains("ENGINE = MergeTree()"), "{staging}");
        assert!(!staging.contains("Replicated"), "{staging}");
        assert!(all.contains(
            "ALTER TABLE `tw`.device_health_hourly ON CLUSTER `fleet` ADD COLUMN minutes_online"
        ));
    }
}
