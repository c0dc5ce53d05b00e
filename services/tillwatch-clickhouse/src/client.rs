//! Connecting to ClickHouse and telling a configuration mistake (wrong
//! password, missing database, schema not migrated) from an outage.

use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use tillwatch_storage::clickhouse_ddl::{MIGRATIONS, ServerVersion, quote_ident};

/// Connection settings, from `[clickhouse]` in the configuration.
#[derive(Clone)]
pub struct Settings {
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: Option<String>,
    pub insert_timeout: Duration,
    /// The cluster `tillwatch migrate` lays the schema out on (`ON
    /// CLUSTER`); `None` for one server.
    pub cluster: Option<String>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("url", &self.url)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("insert_timeout", &self.insert_timeout)
            .field("cluster", &self.cluster)
            .finish()
    }
}

/// Why a ClickHouse call failed, grouped by what an operator does about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Cannot reach the server: wait and retry.
    Network,
    /// The server took too long: retry.
    Timeout,
    /// Wrong user or password: a configuration error.
    Auth,
    /// Missing database or table, or a column mismatch: run `tillwatch migrate`.
    Schema,
    /// The server could not read the rows sent (a malformed batch):
    /// retrying the same bytes cannot help.
    Data,
    /// Anything else the server refused.
    Server,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Network => "network",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Auth => "auth",
            ErrorClass::Schema => "schema",
            ErrorClass::Data => "data",
            ErrorClass::Server => "server",
        }
    }

    /// Worth retrying without a change of configuration.
    pub fn transient(self) -> bool {
        matches!(
            self,
            ErrorClass::Network | ErrorClass::Timeout | ErrorClass::Server
        )
    }
}

/// A failed ClickHouse call.
#[derive(Debug, thiserror::Error)]
#[error("ClickHouse at {url}: {message}")]
pub struct ChError {
    pub class: ErrorClass,
    pub url: String,
    pub message: String,
}

/// Server error codes that mean the credentials are wrong
/// (`UNKNOWN_USER`, `WRONG_PASSWORD`, `REQUIRED_PASSWORD`, `AUTHENTICATION_FAILED`).
const AUTH_CODES: [u32; 4] = [192, 193, 194, 516];
/// `UNKNOWN_TABLE`, `UNKNOWN_DATABASE`, `NO_SUCH_COLUMN_IN_TABLE`,
/// `THERE_IS_NO_COLUMN`, `NUMBER_OF_COLUMNS_DOESNT_MATCH`.
const SCHEMA_CODES: [u32; 5] = [60, 81, 16, 8, 7];
/// The rows could not be read: `CANNOT_PARSE_TEXT`, `CANNOT_PARSE_ESCAPE_SEQUENCE`,
/// `CANNOT_PARSE_INPUT_ASSERTION_FAILED`, `ATTEMPT_TO_READ_AFTER_EOF`, `CANNOT_READ_ALL_DATA`,
/// `CANNOT_PARSE_DATE`, `CANNOT_PARSE_DATETIME`, `TYPE_MISMATCH`,
/// `CANNOT_CONVERT_TYPE`, `CANNOT_PARSE_NUMBER`, `INCORRECT_DATA`,
/// `TOO_LARGE_STRING_SIZE`.
const DATA_CODES: [u32; 12] = [6, 25, 27, 32, 33, 38, 41, 53, 70, 72, 117, 131];

fn server_code(message: &str) -> Option<u32> {
    let rest = &message[message.find("Code: ")? + 6..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

pub(crate) fn classify(e: &clickhouse::error::Error) -> ErrorClass {
    use clickhouse::error::Error as E;
    match e {
        E::Network(_) => ErrorClass::Network,
        E::TimedOut => ErrorClass::Timeout,
        E::BadResponse(message) => match server_code(message) {
            Some(code) if AUTH_CODES.contains(&code) => ErrorClass::Auth,
            Some(code) if SCHEMA_CODES.contains(&code) => ErrorClass::Schema,
            Some(code) if DATA_CODES.contains(&code) => ErrorClass::Data,
            _ if message.contains("Authentication failed") => ErrorClass::Auth,
            _ => ErrorClass::Server,
        },
        _ => ErrorClass::Server,
    }
}

/// A client for one configured server and database.
#[derive(Clone)]
pub struct ClickHouse {
    client: clickhouse::Client,
    settings: Settings,
}

impl std::fmt::Debug for ClickHouse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouse")
            .field("url", &self.settings.url)
            .field("database", &self.settings.database)
            .field("user", &self.settings.user)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct VersionRow {
    version: String,
}

impl ClickHouse {
    pub fn new(settings: Settings) -> ClickHouse {
        // Validation reads column types with a format 18.16 lacks; the
        // schema check below does that job for every server.
        let mut client = clickhouse::Client::default()
            .with_url(settings.url.trim_end_matches('/'))
            .with_user(settings.user.clone())
            .with_validation(false);
        if let Some(password) = &settings.password {
            client = client.with_password(password.clone());
        }
        ClickHouse { client, settings }
    }

    /// The client for `[clickhouse]`, when a URL is configured.
    pub fn from_config(c: &tillwatch_config::ClickHouseConfig) -> Option<ClickHouse> {
        let url = c.url.as_ref()?;
        Some(ClickHouse::new(Settings {
            url: url.clone(),
            database: c.database.clone(),
            user: c.user.clone(),
            password: c.password.clone(),
            insert_timeout: c.insert_timeout,
            cluster: c.cluster.clone(),
        }))
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn database(&self) -> &str {
        &self.settings.database
    }

    /// `database.table`, quoted.
    pub fn table(&self, table: &str) -> String {
        format!(
            "{}.{}",
            quote_ident(&self.settings.database),
            quote_ident(table)
        )
    }

    pub(crate) fn error(&self, e: &clickhouse::error::Error) -> ChError {
        let class = classify(e);
        // The whole chain: "network error: client error (Connect): invalid
        // peer certificate: UnknownIssuer" says what to fix; the top does not.
        let mut message = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                message = format!("{message}: {text}");
            }
            source = cause.source();
        }
        match class {
            ErrorClass::Auth => {
                message = format!(
                    "user {:?} was refused: {message} (check clickhouse.user and clickhouse.password / TILLWATCH__CLICKHOUSE__PASSWORD)",
                    self.settings.user
                )
            }
            ErrorClass::Network => message = format!("cannot connect: {message}"),
            _ => {}
        }
        ChError {
            class,
            url: self.settings.url.clone(),
            message,
        }
    }

    fn schema_error(&self, message: String) -> ChError {
        ChError {
            class: ErrorClass::Schema,
            url: self.settings.url.clone(),
            message,
        }
    }

    /// Runs one statement that returns nothing, as it is: a `?` in it (a
    /// team's SQL may hold one in a literal) is text, never a placeholder.
    pub async fn execute(&self, sql: &str) -> Result<(), ChError> {
        self.client
            .query_raw(sql)
            .execute()
            .await
            .map_err(|e| self.error(&e))
    }

    /// The underlying client, for typed queries (values go through `.bind()`).
    pub fn client(&self) -> &clickhouse::Client {
        &self.client
    }

    /// The server's version; also proves the credentials work.
    pub async fn server_version(&self) -> Result<ServerVersion, ChError> {
        let row: VersionRow = self
            .client
            .query("SELECT version() AS version")
            .fetch_one()
            .await
            .map_err(|e| self.error(&e))?;
        ServerVersion::parse(&row.version).map_err(|e| ChError {
            class: ErrorClass::Server,
            url: self.settings.url.clone(),
            message: e.to_string(),
        })
    }

    /// Whether `table` of the database has active parts in the partition
    /// `partition_id` (a cheap read, where dropping a partition that is not
    /// there is an ALTER all the same).
    pub async fn has_partition(&self, table: &str, partition_id: &str) -> Result<bool, ChError> {
        let n: u64 = self
            .client
            .query(
                "SELECT count() FROM system.parts \
                 WHERE database = ? AND table = ? AND partition_id = ? AND active",
            )
            .bind(&self.settings.database)
            .bind(table)
            .bind(partition_id)
            .fetch_one()
            .await
            .map_err(|e| self.error(&e))?;
        Ok(n > 0)
    }

    /// The partitions of `table` (one partitioned by a number) that have
    /// active parts, as their numbers.
    pub async fn numbered_partitions(&self, table: &str) -> Result<Vec<i64>, ChError> {
        let ids: Vec<String> = self
            .client
            .query(
                "SELECT DISTINCT partition_id FROM system.parts \
                 WHERE database = ? AND table = ? AND active",
            )
            .bind(&self.settings.database)
            .bind(table)
            .fetch_all()
            .await
            .map_err(|e| self.error(&e))?;
        Ok(ids.iter().filter_map(|id| id.parse().ok()).collect())
    }

    /// Drops `table`'s partition `partition_id` when it has any parts
    /// (checked with a cheap read first: on 18.16 the ALTER costs ~0.1 s
    /// even when there is nothing to drop). Says whether it dropped one.
    pub async fn drop_partition_if_any(
        &self,
        table: &str,
        partition_id: &str,
    ) -> Result<bool, ChError> {
        if !self.has_partition(table, partition_id).await? {
            return Ok(false);
        }
        self.execute(&format!(
            "ALTER TABLE {} DROP PARTITION {partition_id}",
            self.table(table)
        ))
        .await?;
        Ok(true)
    }

    /// Drops `table`'s numbered partition `id` (one [`Self::numbered_partitions`]
    /// listed: a drop of one with no parts costs ~0.1 s on 18.16).
    pub async fn drop_numbered_partition(&self, table: &str, id: i64) -> Result<(), ChError> {
        self.execute(&format!(
            "ALTER TABLE {} DROP PARTITION {id}",
            self.table(table)
        ))
        .await
    }

    pub async fn database_exists(&self) -> Result<bool, ChError> {
        let n: u64 = self
            .client
            .query("SELECT count() FROM system.databases WHERE name = ?")
            .bind(&self.settings.database)
            .fetch_one()
            .await
            .map_err(|e| self.error(&e))?;
        Ok(n > 0)
    }

    /// Checks that the gateway can write: the credentials work, the database
    /// exists and every migration has been applied. A configuration mistake
    /// is an `Auth` or `Schema` error, an outage `Network`/`Timeout`.
    pub async fn check_ready(&self) -> Result<ServerVersion, ChError> {
        let version = self.server_version().await?;
        if !self.database_exists().await? {
            return Err(self.schema_error(format!(
                "database {:?} does not exist; create it with `tillwatch migrate` (or fix clickhouse.database)",
                self.settings.database
            )));
        }
        let applied = crate::migrate::applied_versions(self).await?;
        let missing: Vec<String> = MIGRATIONS
            .iter()
            .filter(|m| !applied.contains(&m.version))
            .map(|m| format!("{:03}_{}", m.version, m.name))
            .collect();
        if !missing.is_empty() {
            return Err(self.schema_error(format!(
                "database {:?} lacks schema migrations {}; run `tillwatch migrate`",
                self.settings.database,
                missing.join(", ")
            )));
        }
        Ok(version)
    }

    /// Sends rows already encoded as RowBinary in one INSERT.
    pub async fn insert_row_binary(
        &self,
        table: &str,
        columns: &str,
        rows: Bytes,
    ) -> Result<(), ChError> {
        let sql = format!(
            "INSERT INTO {} ({columns}) FORMAT RowBinary",
            self.table(table)
        );
        let timeout = Some(self.settings.insert_timeout);
        let mut insert = self
            .client
            .insert_formatted_with(sql)
            .with_timeouts(timeout, timeout);
        insert.send(rows).await.map_err(|e| self.error(&e))?;
        insert.end().await.map_err(|e| self.error(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_codes_are_classified() {
        let auth = clickhouse::error::Error::BadResponse(
            "Code: 193, e.displayText() = DB::Exception: Wrong password for user tillwatch".into(),
        );
        assert_eq!(classify(&auth), ErrorClass::Auth);
        let modern = clickhouse::error::Error::BadResponse(
            "Code: 516. DB::Exception: tillwatch: Authentication failed: password is incorrect"
                .into(),
        );
        assert_eq!(classify(&modern), ErrorClass::Auth);
        let db = clickhouse::error::Error::BadResponse(
            "Code: 81, e.displayText() = DB::Exception: Database nope doesn't exist".into(),
        );
        assert_eq!(classify(&db), ErrorClass::Schema);
        let busy = clickhouse::error::Error::BadResponse(
            "Code: 252, e.displayText() = DB::Exception: Too many parts".into(),
        );
        assert_eq!(classify(&busy), ErrorClass::Server);
        let garbage = clickhouse::error::Error::BadResponse(
            "Code: 33, e.displayText() = DB::Exception: Cannot read all data".into(),
        );
        assert_eq!(classify(&garbage), ErrorClass::Data);
        assert!(!ErrorClass::Data.transient());
        assert!(ErrorClass::Server.transient() && !ErrorClass::Auth.transient());
    }
}
