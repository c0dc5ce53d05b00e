//! The ClickHouse schema: versioned DDL files (`clickhouse/NNN_*.sql`),
//! rendered for the server they are applied to.
//!
//! The files are written for a current server; markers step down to what
//! an old one (Debian's 18.16) understands. See `clickhouse/README.md`.

use std::fmt;

mod cluster;

pub use cluster::ClusterDdlError;

/// One versioned schema file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub template: &'static str,
}

impl Migration {
    /// A stable fingerprint of the file as shipped, recorded when applied
    /// so a file edited after release is caught.
    pub fn checksum(&self) -> String {
        format!("{:08x}", crc32fast::hash(self.template.as_bytes()))
    }

    /// The statements of this file for a server with `features`, in order.
    pub fn render(&self, database: &str, features: Features) -> Vec<String> {
        render(self.template, database, features)
    }

    /// The statements of this file for one server, or for `cluster`.
    pub fn statements(
        &self,
        database: &str,
        features: Features,
        cluster: Option<&str>,
    ) -> Result<Vec<String>, ClusterDdlError> {
        match cluster {
            Some(cluster) => self.render_for_cluster(database, features, cluster),
            None => Ok(self.render(database, features)),
        }
    }

    /// The statements of this file for the ClickHouse cluster `cluster`
    /// (see [`cluster`]): each `ON CLUSTER`, raw tables sharded by device
    /// over replicated local tables.
    pub fn render_for_cluster(
        &self,
        database: &str,
        features: Features,
        cluster: &str,
    ) -> Result<Vec<String>, ClusterDdlError> {
        cluster::for_cluster(&self.render(database, features), database, cluster).map_err(|e| {
            ClusterDdlError::InMigration {
                migration: format!("{}_{}", self.version, self.name),
                source: Box::new(e),
            }
        })
    }
}

macro_rules! migration {
    ($version:literal, $file:literal, $name:literal) => {
        Migration {
            version: $version,
            name: $name,
            template: include_str!(concat!("../clickhouse/", $file, "_", $name, ".sql")),
        }
    };
}

/// Every schema file, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    migration!(1, "001", "connectivity"),
    migration!(2, "002", "battery"),
    migration!(3, "003", "app_performance"),
    migration!(4, "004", "payment_health"),
    migration!(5, "005", "dead_letter"),
    migration!(6, "006", "device_latest"),
    migration!(7, "007", "rollups"),
    migration!(8, "008", "rollup_inputs"),
    migration!(9, "009", "rollup_attribution"),
];

/// The table that holds `table`'s rows: itself on one server; on a
/// cluster, a sharded table's `<table>_local` (its `Distributed` front
/// holds none).
pub fn rows_table(table: &str, cluster: Option<&str>) -> String {
    match cluster {
        Some(_) if cluster::is_sharded(table) => format!("{table}_local"),
        _ => table.to_string(),
    }
}

/// A version string that is not `major.minor[…]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("server version {text:?}: no {part} number")]
pub struct VersionError {
    pub text: String,
    pub part: &'static str,
}

/// A server version, from `SELECT version()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    pub major: u32,
    pub minor: u32,
}

impl ServerVersion {
    /// Parses `18.16.1`, `24.8.4.13`, `23.3.1.2823-lts` and the like.
    pub fn parse(text: &str) -> Result<ServerVersion, VersionError> {
        let mut parts = text.trim().split(['.', '-']);
        let mut number = |part: &'static str| {
            parts
                .next()
                .and_then(|p| p.parse::<u32>().ok())
                .ok_or_else(|| VersionError {
                    text: text.to_string(),
                    part,
                })
        };
        Ok(ServerVersion {
            major: number("major")?,
            minor: number("minor")?,
        })
    }

    fn at_least(self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }

    /// What this version offers that the schema can use.
    pub fn features(self) -> Features {
        // LowCardinality without a setting, column codecs and bloom-filter
        // skip indexes without the experimental flag all settled by 20.1.
        let modern = self.at_least(20, 1);
        Features {
            low_cardinality: modern,
            codecs: modern,
            skip_indexes: modern,
            // Table TTL arrived in 19.6.
            ttl: self.at_least(19, 6),
        }
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Optional server features the schema uses where present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Features {
    pub low_cardinality: bool,
    pub codecs: bool,
    pub skip_indexes: bool,
    pub ttl: bool,
}

/// Quotes an identifier for ClickHouse (backticks, escaped).
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

fn render(template: &str, database: &str, features: Features) -> Vec<String> {
    let db = quote_ident(database);
    let mut lines: Vec<String> = Vec::new();
    for line in template.lines() {
        let line = match line.split_once("-- requires ") {
            Some((kept, feature)) => {
                let on = match feature.trim() {
                    "skip_index" => features.skip_indexes,
                    "ttl" => features.ttl,
                    "codec" => features.codecs,
                    "low_cardinality" => features.low_cardinality,
                    other => panic!("unknown feature {other:?} in a DDL file"),
                };
                if !on {
                    continue;
                }
                kept.trim_end()
            }
            None => line,
        };
        let trimmed = line.trim_start();
        if trimmed.starts_with("--") {
            continue;
        }
        // A column list whose last lines were dropped must not end in a comma.
        if trimmed.starts_with(')')
            && let Some(prev) = lines.last_mut()
            && prev.ends_with(',')
        {
            prev.pop();
        }
        lines.push(expand(line, &db, features));
    }
    lines
        .join("\n")
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn expand(line: &str, db: &str, features: Features) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let end = matching_brace(after).expect("DDL markers are closed");
        let marker = &after[..end];
        match marker.split_once(':') {
            None if marker == "database" => out.push_str(db),
            Some(("lc", ty)) if features.low_cardinality => {
                out.push_str(&format!("LowCardinality({ty})"))
            }
            Some(("lc", ty)) => out.push_str(ty),
            Some(("codec", codec)) if features.codecs => out.push_str(&format!("CODEC({codec})")),
            Some(("codec", _)) => {
                // Keep `x UInt64 {codec:…},` tidy as `x UInt64,`.
                while out.ends_with(' ') {
                    out.pop();
                }
            }
            _ => panic!("unknown DDL marker {{{marker}}}"),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

fn matching_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_sql(version: &str) -> String {
        let features = ServerVersion::parse(version).unwrap().features();
        MIGRATIONS
            .iter()
            .flat_map(|m| m.render("tw", features))
            .collect::<Vec<_>>()
            .join(";\n")
    }

    #[test]
    fn versions_parse() {
        assert_eq!(
            ServerVersion::parse("18.16.1").unwrap(),
            ServerVersion {
                major: 18,
                minor: 16
            }
        );
        assert_eq!(
            ServerVersion::parse("24.8.4.13").unwrap(),
            ServerVersion {
                major: 24,
                minor: 8
            }
        );
        assert!(ServerVersion::parse("23.3-lts").is_ok());
        let err = ServerVersion::parse("latest").unwrap_err().to_string();
        assert!(err.contains("latest"), "{err}");
    }

    #[test]
    fn the_version_gate_keeps_an_old_server_to_what_it_parses() {
        let old = all_sql("18.16.1");
        for absent in ["LowCardinality", "CODEC", "INDEX", "TTL", "{", "}", "--"] {
            assert!(!old.contains(absent), "18.16 DDL contains {absent}:\n{old}");
        }
        assert!(!old.contains(",\n)"), "a dangling comma before ')':\n{old}");
        assert!(old.contains("merchant_id String,"));
        assert!(old.contains("sampled_at_ms UInt64,"));
    }

    #[test]
    fn the_version_gate_gives_a_current_server_its_features() {
        let new = all_sql("24.8.4.13");
        assert!(new.contains("merchant_id LowCardinality(String),"));
        assert!(new.contains("sampled_at_ms UInt64 CODEC(Delta, ZSTD(1)),"));
        assert!(new.contains("INDEX merchant_idx merchant_id TYPE bloom_filter GRANULARITY 4,"));
        assert!(new.contains("INDEX store_idx store_id TYPE bloom_filter GRANULARITY 4\n)"));
        assert!(!new.contains('{') && !new.contains("-- requires"));
        // 19.x: TTL yes, the rest not yet.
        let mid = ServerVersion::parse("19.16.3").unwrap().features();
        assert!(mid.ttl && !mid.low_cardinality && !mid.codecs);
    }

    #[test]
    fn migrations_are_numbered_in_order_and_name_their_tables() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
            let sql = m.render("tw", Features::default()).join(";");
            // A file named for a group creates each table of the group.
            let tables: &[&str] = match m.name {
                "rollups" => &[
                    "device_health_hourly",
                    "device_health_daily",
                    "fleet_health_daily",
                    "merchant_directory",
                ],
                "rollup_inputs" => &[
                    "rollup_minutes_online",
                    "rollup_devices",
                    "rollup_zone_hours",
                ],
                name => &[name][..],
            };
            for table in tables {
                assert!(
                    sql.contains(&format!("`tw`.{table}")),
                    "{} does not create {table}",
                    m.name
                );
            }
        }
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("a`b"), "`a\\`b`");
    }
}
