//! Jobs as files: a job is `<root>/<owner>/<job>.toml` (its declaration,
//! see [`JobDeclaration`]) beside its SQL, `<job>.datafusion.sql` and
//! `<job>.clickhouse.sql`. The folder names the owning team and the file
//! the job. The product's own jobs are files of the same form
//! (`services/tillwatch-rollups/jobs/`), built into the binary, and go
//! through the same loader and checks as a team's.
//!
//! Every problem names its file and, where it is one key's, its line:
//! `jobs/payments-risk/refunds.toml:4: schedule "61 * * * *": …`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use tillwatch_config::{
    DayKind, DeclaredGrain, DirectorySource, JobDeclaration, SourceDeclaration, SourceFeed,
};
use tillwatch_scheduler::{Catalog, Grain, Input, JobSpec};

use crate::jobs::RAW_TABLES;
use crate::service::DEVICE_ATTRIBUTES;

/// One problem with a declaration: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

impl Problem {
    /// The declaration (`….toml`) the problem refuses: its own file, or
    /// the declaration beside the SQL file it is in.
    pub fn declaration(&self) -> String {
        let stem = self
            .file
            .strip_suffix(".datafusion.sql")
            .or_else(|| self.file.strip_suffix(".clickhouse.sql"))
            .or_else(|| self.file.strip_suffix(".toml"))
            .unwrap_or(&self.file);
        format!("{stem}.toml")
    }

    /// The name of the job whose file it is in, when it is a job's file.
    pub fn job_name(&self) -> Option<&str> {
        let file = Path::new(&self.file).file_name()?.to_str()?;
        let name = file.split('.').next()?;
        (file.ends_with(".toml") || file.ends_with(".sql")).then_some(name)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// A job's SQL, per engine; a job with one runs only on that engine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobSql {
    pub datafusion: Option<String>,
    pub clickhouse: Option<String>,
}

/// A loaded declaration.
#[derive(Debug, Clone)]
pub struct DeclaredJob {
    pub name: String,
    pub owner: String,
    /// The declaration's path as it was loaded (for messages).
    pub file: String,
    pub text: String,
    pub declaration: JobDeclaration,
    pub sql: JobSql,
}

impl DeclaredJob {
    /// The line a top-level key is set on, if it is.
    pub fn line_of(&self, key: &str) -> Option<usize> {
        line_of(&self.text, key)
    }

    /// The problem `message` about `key`, at its line.
    pub fn problem(&self, key: &str, message: impl Into<String>) -> Problem {
        Problem {
            file: self.file.clone(),
            line: self.line_of(key),
            message: message.into(),
        }
    }

    /// What it reads, raw tables and sources told from jobs. A team's job
    /// that reads a raw table also waits for the hour's compaction (as the
    /// hourly rollup does): it reads the hour once its files are final,
    /// and again only when late data changes them.
    pub fn inputs(&self) -> Vec<Input> {
        let mut inputs: Vec<Input> = self
            .declaration
            .inputs
            .iter()
            .map(|name| {
                if is_source(name) {
                    Input::Source(name.clone())
                } else {
                    Input::Job(name.clone())
                }
            })
            .collect();
        let compaction = Input::Job(crate::jobs::RAW_COMPACTION.to_string());
        if !self.file.starts_with(BUILTIN_ROOT)
            && self
                .declaration
                .inputs
                .iter()
                .any(|i| RAW_TABLES.contains(&i.as_str()))
            && !inputs.contains(&compaction)
        {
            inputs.push(compaction);
        }
        inputs
    }

    /// The job with its declaration's defaults; its settings
    /// ([`JobDeclaration::settings`]) are applied by [`crate::catalog`].
    pub fn spec(&self) -> JobSpec {
        let grain = match self.declaration.grain {
            DeclaredGrain::Hour => Grain::Hour,
            DeclaredGrain::Day => Grain::Day,
            DeclaredGrain::Week => Grain::Week,
            DeclaredGrain::Month => Grain::Month,
        };
        let mut spec = JobSpec::new(&self.name, grain, self.inputs());
        spec.owner = self.owner.clone();
        spec.description = self.declaration.description.clone();
        if self
            .declaration
            .source
            .as_ref()
            .is_some_and(|s| s.cursor.is_none())
        {
            // A snapshot: only the newest partition is worth importing.
            spec.catch_up = false;
        }
        if let Some(source) = &self.declaration.source
            && let Some(within) = source.recheck_within
        {
            spec.recheck = Some(tillwatch_scheduler::Recheck {
                within_ms: within.as_millis().min(i64::MAX as u128) as i64,
                every_ms: source.recheck_every.as_millis().min(i64::MAX as u128) as i64,
            });
        }
        spec.code = Some(self.code());
        spec.rerun_from_ms = self.rerun_from_ms().ok().flatten();
        spec
    }

    /// A fingerprint of what the job computes: its grain, day, inputs and
    /// SQL (not its description, tags or schedule).
    pub fn code(&self) -> String {
        let d = &self.declaration;
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let parts = [
            format!("{:?}/{:?}", d.grain, d.day),
            d.inputs.join(","),
            self.sql.datafusion.clone().unwrap_or_default(),
            self.sql.clickhouse.clone().unwrap_or_default(),
            d.source
                .as_ref()
                .map(|s| format!("{}\0{}", s.query, s.cursor.as_deref().unwrap_or("")))
                .unwrap_or_default(),
        ];
        for part in &parts {
            for b in part.bytes().chain([0u8]) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("{h:016x}")
    }

    /// `rerun_from` as milliseconds (midnight UTC), or the problem with it.
    pub fn rerun_from_ms(&self) -> Result<Option<i64>, Problem> {
        let Some(text) = &self.declaration.rerun_from else {
            return Ok(None);
        };
        text.parse::<jiff::civil::Date>()
            .ok()
            .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
            .map(|z| Some(z.timestamp().as_millisecond()))
            .ok_or_else(|| {
                self.problem(
                    "rerun_from",
                    format!("rerun_from {text:?} is not a date like 2026-11-01"),
                )
            })
    }

    /// Whether it is a SQL job with a `.clickhouse.sql` only: it runs
    /// where the rollups run on ClickHouse, and its columns are the
    /// server's answer for its statement.
    pub fn clickhouse_only(&self) -> bool {
        self.declaration.source.is_none()
            && self.sql.datafusion.is_none()
            && self.sql.clickhouse.is_some()
    }

    /// Whether its day is the stores' local one.
    pub fn store_local_day(&self) -> bool {
        self.declaration.grain == DeclaredGrain::Day && self.declaration.day == DayKind::StoreLocal
    }

    /// Whether it is one of the product's SQL rollups (run by the engines'
    /// own code, with the side inputs they register).
    pub fn is_product_rollup(&self) -> bool {
        self.file.starts_with(BUILTIN_ROOT) && !self.declaration.builtin
    }

    /// Whether its rows are the merchant directory.
    pub fn feeds_directory(&self) -> bool {
        self.declaration
            .source
            .as_ref()
            .is_some_and(|s| s.feeds == Some(SourceFeed::MerchantDirectory))
    }

    /// Whether a job owned by `owner` may read this one.
    pub fn readable_by(&self, owner: &str) -> bool {
        self.declaration.public
            || self.owner == owner
            || self.declaration.readers.iter().any(|r| r == owner)
    }
}

/// Whether `name` is a raw table or a source rather than a job.
pub fn is_source(name: &str) -> bool {
    RAW_TABLES.contains(&name) || name == DEVICE_ATTRIBUTES
}

fn line_of(text: &str, key: &str) -> Option<usize> {
    let table = format!("[{key}]");
    text.lines()
        .position(|line| {
            let line = line.trim_start();
            line.starts_with(&table)
                || line
                    .strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

/// The product's own jobs: (path, text) of each file, built in.
const BUILTIN_FILES: [(&str, &str); 10] = [
    (
        "platform/raw_compaction.toml",
        include_str!("../jobs/platform/raw_compaction.toml"),
    ),
    (
        "health/device_health_hourly.toml",
        include_str!("../jobs/health/device_health_hourly.toml"),
    ),
    (
        "health/device_health_hourly.datafusion.sql",
        crate::jobs::DEVICE_HEALTH_HOURLY_SQL.datafusion,
    ),
    (
        "health/device_health_hourly.clickhouse.sql",
        crate::jobs::DEVICE_HEALTH_HOURLY_SQL.clickhouse,
    ),
    (
        "health/device_health_daily.toml",
        include_str!("../jobs/health/device_health_daily.toml"),
    ),
    (
        "health/device_health_daily.datafusion.sql",
        crate::jobs::DEVICE_HEALTH_DAILY_SQL.datafusion,
    ),
    (
        "health/device_health_daily.clickhouse.sql",
        crate::jobs::DEVICE_HEALTH_DAILY_SQL.clickhouse,
    ),
    (
        "health/fleet_health_daily.toml",
        include_str!("../jobs/health/fleet_health_daily.toml"),
    ),
    (
        "health/fleet_health_daily.datafusion.sql",
        crate::jobs::FLEET_HEALTH_DAILY_SQL.datafusion,
    ),
    (
        "health/fleet_health_daily.clickhouse.sql",
        crate::jobs::FLEET_HEALTH_DAILY_SQL.clickhouse,
    ),
];

/// Where the built-in jobs' files are said to be in messages.
pub const BUILTIN_ROOT: &str = "<built-in jobs>";

/// The files under a jobs root: `owner/file` → text.
type Files = BTreeMap<String, String>;

fn valid_name(name: &str, dash: bool) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || (dash && c == '-'))
}

/// Loads the declarations of one root from its files. Files that are
/// neither a declaration nor SQL are left alone; SQL without a
/// declaration is a problem (a job whose `.toml` was forgotten).
fn load_files(root: &str, files: &Files) -> (Vec<DeclaredJob>, Vec<Problem>) {
    let mut jobs = Vec::new();
    let mut problems = Vec::new();
    let shown = |rel: &str| format!("{root}/{rel}");
    for (rel, text) in files {
        let Some((owner, file)) = rel.split_once('/') else {
            if rel.ends_with(".toml") || rel.ends_with(".sql") {
                problems.push(Problem {
                    file: shown(rel),
                    line: None,
                    message: "a job's files go in a folder named for its owning team, e.g. payments-risk/".into(),
                });
            }
            continue;
        };
        if let Some(stem) = file.strip_suffix(".sql") {
            let job = stem
                .strip_suffix(".datafusion")
                .or_else(|| stem.strip_suffix(".clickhouse"));
            match job {
                Some(job) if files.contains_key(&format!("{owner}/{job}.toml")) => {}
                Some(job) => problems.push(Problem {
                    file: shown(rel),
                    line: None,
                    message: format!("SQL without a declaration: add {owner}/{job}.toml"),
                }),
                None => problems.push(Problem {
                    file: shown(rel),
                    line: None,
                    message: "a job's SQL is named <job>.datafusion.sql or <job>.clickhouse.sql"
                        .into(),
                }),
            }
            continue;
        }
        let Some(name) = file.strip_suffix(".toml") else {
            continue;
        };
        let problem = |line, message: String| Problem {
            file: shown(rel),
            line,
            message,
        };
        if !valid_name(owner, true) {
            problems.push(problem(
                None,
                format!(
                    "owner {owner:?}: a folder name of lower-case letters, digits, '_' and '-'"
                ),
            ));
            continue;
        }
        if !valid_name(name, false) || name.contains('/') {
            problems.push(problem(
                None,
                format!(
                    "job {name:?}: a file name of lower-case letters, digits and '_', starting with a letter"
                ),
            ));
            continue;
        }
        let declaration: JobDeclaration = match toml::from_str(text) {
            Ok(d) => d,
            Err(e) => {
                let line = e
                    .span()
                    .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
                problems.push(problem(line, e.message().trim().to_string()));
                continue;
            }
        };
        let sql = JobSql {
            datafusion: files
                .get(&format!("{owner}/{name}.datafusion.sql"))
                .cloned(),
            clickhouse: files
                .get(&format!("{owner}/{name}.clickhouse.sql"))
                .cloned(),
        };
        let job = DeclaredJob {
            name: name.to_string(),
            owner: owner.to_string(),
            file: shown(rel),
            text: text.clone(),
            declaration,
            sql,
        };
        if let Err(p) = job.rerun_from_ms() {
            problems.push(p);
            continue;
        }
        if job.declaration.builtin && root != BUILTIN_ROOT {
            problems.push(job.problem("builtin", "only the product's own jobs are built in"));
            continue;
        }
        if let Some(source) = &job.declaration.source {
            let problem = if job.sql.datafusion.is_some() || job.sql.clickhouse.is_some() {
                Some("a source job imports with its [source] query and has no SQL files; remove them or [source]".to_string())
            } else if !job.declaration.inputs.is_empty() {
                Some("a source job reads nothing of the lake: remove `inputs`".to_string())
            } else if source.url_env.is_some() == source.url_file.is_some() {
                Some("[source] needs exactly one of url_env (an environment variable) or url_file (a file) holding the database's URL (postgres://, or http(s):// for ClickHouse)".to_string())
            } else if source.query.trim().is_empty() {
                Some("[source] query is empty".to_string())
            } else if source.feeds.is_some() && source.cursor.is_some() {
                Some(
                    "the merchant directory is a snapshot of every store: remove `cursor`"
                        .to_string(),
                )
            } else if source.recheck_within.is_some() && source.cursor.is_none() {
                Some(
                    "recheck_within looks again at past partitions of a `cursor`; without one \
                     every run imports every row already"
                        .to_string(),
                )
            } else if source.recheck_within.is_some() && source.recheck_every.is_zero() {
                Some("recheck_every must be longer than zero".to_string())
            } else if source.feeds.is_some() && job.declaration.grain != DeclaredGrain::Hour {
                Some("the merchant directory is imported hourly: set grain = \"hour\"".to_string())
            } else {
                None
            };
            if let Some(message) = problem {
                problems.push(job.problem("source", message));
                continue;
            }
            jobs.push(job);
            continue;
        }
        if !job.declaration.builtin && job.sql.datafusion.is_none() && job.sql.clickhouse.is_none()
        {
            problems.push(problem(
                None,
                format!(
                    "no SQL: add {owner}/{name}.datafusion.sql (the embedded engine) or \
                     {owner}/{name}.clickhouse.sql (ClickHouse), or both"
                ),
            ));
            continue;
        }
        jobs.push(job);
    }
    (jobs, problems)
}

/// The product's own jobs, from the files built into the binary.
pub fn builtin() -> Vec<DeclaredJob> {
    let files: Files = BUILTIN_FILES
        .iter()
        .map(|(p, t)| (p.to_string(), t.to_string()))
        .collect();
    let (jobs, problems) = load_files(BUILTIN_ROOT, &files);
    assert!(
        problems.is_empty(),
        "the built-in jobs load: {}",
        problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    );
    jobs
}

/// Where `[scheduler.merchant_directory]` is said to be in messages.
pub const DIRECTORY_CONFIG: &str = "[scheduler.merchant_directory]";

/// `[scheduler.merchant_directory]` in the operator's config as the source
/// job it stands for: `merchant_directory`, owned by the platform team,
/// hourly, feeding the merchant directory.
pub fn directory_job(config: &DirectorySource) -> DeclaredJob {
    let text = "description = \"The merchants and stores (names, time zones, opening hours) \
                from the merchant directory\"\ngrain = \"hour\"\n";
    let mut declaration: JobDeclaration =
        toml::from_str(text).expect("the merchant directory's declaration parses");
    declaration.source = Some(SourceDeclaration::merchant_directory(config));
    DeclaredJob {
        name: crate::directory::MERCHANT_DIRECTORY.to_string(),
        owner: crate::jobs::PLATFORM_OWNER.to_string(),
        file: DIRECTORY_CONFIG.to_string(),
        text: text.to_string(),
        declaration,
        sql: JobSql::default(),
    }
}

/// Reads a jobs root: every `owner/*.toml` and `owner/*.sql` one folder
/// down. A root that cannot be read is one problem.
pub fn load_dir(root: &Path) -> (Vec<DeclaredJob>, Vec<Problem>) {
    let shown = root.display().to_string();
    let mut files = Files::new();
    let mut problems = Vec::new();
    let unreadable = |path: &Path, e: std::io::Error| Problem {
        file: path.display().to_string(),
        line: None,
        message: format!("cannot be read: {e}"),
    };
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) => return (Vec::new(), vec![unreadable(root, e)]),
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        let Some(top) = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        if top.starts_with('.') {
            continue;
        }
        if path.is_file() {
            if let Ok(text) = std::fs::read_to_string(&path) {
                files.insert(top, text);
            }
            continue;
        }
        let inner = match std::fs::read_dir(&path) {
            Ok(inner) => inner,
            Err(e) => {
                problems.push(unreadable(&path, e));
                continue;
            }
        };
        for entry in inner.filter_map(Result::ok) {
            let file = entry.path();
            let Some(name) = file.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.starts_with('.') || !(name.ends_with(".toml") || name.ends_with(".sql")) {
                continue;
            }
            match std::fs::read_to_string(&file) {
                Ok(text) => {
                    files.insert(format!("{top}/{name}"), text);
                }
                Err(e) => problems.push(unreadable(&file, e)),
            }
        }
    }
    let (jobs, more) = load_files(&shown, &files);
    problems.extend(more);
    (jobs, problems)
}

/// A stamp of every file under the jobs roots (names and contents): it
/// changes when a declaration or its SQL is added, changed or removed.
pub fn stamp(roots: &[PathBuf]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for root in roots {
        root.hash(&mut hasher);
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        let mut owners: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        owners.sort();
        for owner in owners {
            let Ok(files) = std::fs::read_dir(&owner) else {
                continue;
            };
            let mut files: Vec<PathBuf> = files.filter_map(|e| e.ok().map(|e| e.path())).collect();
            files.sort();
            for file in files {
                file.hash(&mut hasher);
                std::fs::read(&file).unwrap_or_default().hash(&mut hasher);
            }
        }
    }
    hasher.finish()
}

/// The roots' [`stamp`], read again every `every` and at once on SIGHUP,
/// off the async workers: the value changes when a declaration or its SQL
/// is added, changed or removed. The watching stops when every receiver
/// is dropped. One watcher serves all who follow the declarations (the
/// scheduler, the jobs API), so requests never read the files themselves.
pub fn watch_stamp(
    roots: Vec<PathBuf>,
    every: std::time::Duration,
) -> tokio::sync::watch::Receiver<u64> {
    let (tx, rx) = tokio::sync::watch::channel(stamp(&roots));
    if roots.is_empty() {
        // Nothing to watch (and SIGHUP keeps its usual meaning).
        tokio::spawn(async move { tx.closed().await });
        return rx;
    }
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    tokio::spawn(async move {
        loop {
            let hup = async {
                match hangup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep(every) => {}
                () = hup => tracing::info!("SIGHUP: reading the job declarations again"),
            }
            let read = roots.clone();
            let Ok(now) = tokio::task::spawn_blocking(move || stamp(&read)).await else {
                continue;
            };
            tx.send_if_modified(|seen| {
                let changed = *seen != now;
                *seen = now;
                changed
            });
        }
    });
    rx
}

/// The checks across jobs: a name declared twice, inputs that are no
/// job, table or source, a job reading another team's job that is not
/// public to it, and cycles. Problems name the reading job's file and the
/// line of its `inputs`.
pub fn check(jobs: &[DeclaredJob]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut by_name: BTreeMap<&str, &DeclaredJob> = BTreeMap::new();
    let mut directory: Option<&DeclaredJob> = None;
    for job in jobs {
        let reserved = [
            crate::retention::RETENTION,
            crate::directory::MERCHANT_DIRECTORY,
        ];
        // The merchant directory's own name is free to the job that feeds it.
        let named_for_it =
            job.name == crate::directory::MERCHANT_DIRECTORY && job.feeds_directory();
        if !job.file.starts_with(BUILTIN_ROOT)
            && !named_for_it
            && (reserved.contains(&job.name.as_str()) || is_source(&job.name))
        {
            problems.push(Problem {
                file: job.file.clone(),
                line: None,
                message: format!(
                    "{:?} is the name of one of the product's own tables or jobs; rename the file",
                    job.name
                ),
            });
            continue;
        }
        if let Some(first) = by_name.get(job.name.as_str()) {
            problems.push(Problem {
                file: job.file.clone(),
                line: None,
                message: format!("job {:?} is already declared in {}", job.name, first.file),
            });
            continue;
        }
        if job.feeds_directory() {
            if let Some(first) = directory {
                problems.push(job.problem(
                    "source",
                    format!(
                        "the merchant directory is already fed by {} ({}); one source feeds it",
                        first.name, first.file
                    ),
                ));
                continue;
            }
            directory = Some(job);
        }
        by_name.insert(&job.name, job);
    }
    for job in by_name.values() {
        let team = !job.file.starts_with(BUILTIN_ROOT);
        if team && let Some(sql) = &job.sql.clickhouse {
            for (table, line) in crate::clickhouse_declared::tables_named(sql) {
                if !job.declaration.inputs.contains(&table) {
                    problems.push(Problem {
                        file: clickhouse_sql_file(job),
                        line: Some(line),
                        message: format!(
                            "reads {{database}}.{table}, which is not among its inputs ({}); \
                             declare it in `inputs` of {}",
                            job.declaration.inputs.join(", "),
                            job.file
                        ),
                    });
                }
            }
        }
        if job.store_local_day()
            && let Some(input) = job
                .declaration
                .inputs
                .iter()
                .find(|i| LOCAL_DAY_TABLES.contains(&i.as_str()))
        {
            problems.push(job.problem(
                "inputs",
                format!(
                    "a store-local day's SQL reads its own {input:?} table (the terminals' zones \
                     and the hours of each zone's day); an input of that name would hide it"
                ),
            ));
        }
        for input in &job.declaration.inputs {
            if team && input == DEVICE_ATTRIBUTES {
                problems.push(job.problem(
                    "inputs",
                    format!(
                        "{DEVICE_ATTRIBUTES} is read by the built-in rollups only; read merchant_id \
                         and store_id from device_health_hourly"
                    ),
                ));
                continue;
            }
            if is_source(input) {
                continue;
            }
            match by_name.get(input.as_str()) {
                Some(up) if team && up.declaration.builtin => problems.push(job.problem(
                    "inputs",
                    format!(
                        "{input:?} is the lake's upkeep and has no table of its own; read the raw \
                         tables ({}) instead",
                        RAW_TABLES.join(", ")
                    ),
                )),
                None => problems.push(job.problem(
                    "inputs",
                    format!(
                        "input {input:?} is no job, raw table ({}) or source ({DEVICE_ATTRIBUTES})",
                        RAW_TABLES.join(", ")
                    ),
                )),
                Some(up) if !up.readable_by(&job.owner) => problems.push(job.problem(
                    "inputs",
                    format!(
                        "input {input:?} belongs to {} and is not public; its owners can add \
                         `public = true` or `readers = [\"{}\"]` to {}",
                        up.owner, job.owner, up.file
                    ),
                )),
                Some(_) => {}
            }
        }
    }
    if problems.is_empty() {
        let specs = jobs.iter().map(DeclaredJob::spec).collect();
        if let Err(e) = Catalog::new(specs) {
            let file = match &e {
                tillwatch_scheduler::CatalogError::Cycle(path) => path
                    .split(" -> ")
                    .next()
                    .and_then(|n| by_name.get(n))
                    .map(|j| (j.file.clone(), j.line_of("inputs"))),
                _ => None,
            };
            let (file, line) = file.unwrap_or_else(|| ("<jobs>".into(), None));
            problems.push(Problem {
                file,
                line,
                message: e.to_string(),
            });
        }
    }
    problems
}

/// The tables a store-local day's SQL reads besides its inputs:
/// `devices(device_id, zone, model)` (a terminal's time zone, `''`
/// without a known one) and `zone_hours(zone, hour)` (the UTC hours of
/// each zone's local day; zone `''` holds the UTC day's).
pub const LOCAL_DAY_TABLES: [&str; 2] = ["devices", "zone_hours"];

/// Where a job's SQL for the embedded engine is, for messages.
fn clickhouse_sql_file(job: &DeclaredJob) -> String {
    match job.file.strip_suffix(".toml") {
        Some(stem) => format!("{stem}.clickhouse.sql"),
        None => job.file.clone(),
    }
}

fn sql_file(job: &DeclaredJob) -> String {
    match job.file.strip_suffix(".toml") {
        Some(stem) => format!("{stem}.datafusion.sql"),
        None => job.file.clone(),
    }
}

/// The 1-based line of the first whole-word `word` in `text`.
fn line_of_word(text: &str, word: &str) -> Option<usize> {
    let word = word.to_ascii_lowercase();
    text.lines()
        .position(|line| {
            let line = line.to_ascii_lowercase();
            line.match_indices(&word).any(|(at, _)| {
                let before = line[..at].chars().next_back();
                let after = line[at + word.len()..].chars().next();
                let part = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
                !part(before) && !part(after)
            })
        })
        .map(|i| i + 1)
}

/// What DataFusion says of a SQL that does not plan, as a problem at its
/// line: a table it reads that is not among the job's inputs, or the
/// parser's own position.
fn sql_problem(job: &DeclaredJob, sql: &str, error: &str) -> Problem {
    let file = sql_file(job);
    if let Some(rest) = error.split("table '").nth(1)
        && let Some(name) = rest.split("' not found").next()
    {
        let table = name.rsplit('.').next().unwrap_or(name);
        return Problem {
            file,
            line: line_of_word(sql, table),
            message: format!(
                "reads {table:?}, which is not among its inputs ({}); declare it in `inputs` of {}",
                job.declaration.inputs.join(", "),
                job.file
            ),
        };
    }
    if let Some(rest) = error.split("No field named ").nth(1) {
        let field = rest.split_whitespace().next().unwrap_or(rest);
        let field = field.trim_end_matches('.');
        let field = field.rsplit('.').next().unwrap_or(field).trim_matches('"');
        return Problem {
            file,
            line: line_of_word(sql, field),
            message: error.lines().next().unwrap_or(error).to_string(),
        };
    }
    let line = error
        .split("Line: ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok());
    Problem {
        file,
        line,
        message: error.to_string(),
    }
}

/// The options every declared job's SQL runs under: one query, nothing
/// that creates, writes or changes the session.
pub fn query_only() -> datafusion::execution::context::SQLOptions {
    datafusion::execution::context::SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// The SQL with its parameters filled in: `{start_ms}` and `{end_ms}`,
/// the partition's interval in milliseconds since 1970 (end excluded).
pub fn bind(sql: &str, start_ms: i64, end_ms: i64) -> String {
    sql.replace("{start_ms}", &start_ms.to_string())
        .replace("{end_ms}", &end_ms.to_string())
}

/// [`plan`]'s problems, on a thread of its own (for callers that are not
/// async, or that must not block their runtime's workers on it). Sources are
/// not described: loading the jobs never waits on a team's database.
pub fn plan_blocking(jobs: &[DeclaredJob]) -> Vec<Problem> {
    let owned = jobs.to_vec();
    let planned = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .map(|rt| rt.block_on(plan(&owned, &BTreeMap::new())).1)
    })
    .join();
    match planned {
        Ok(Ok(problems)) => problems,
        Ok(Err(e)) => vec![Problem {
            file: "<jobs>".into(),
            line: None,
            message: format!("could not plan the jobs' SQL: {e}"),
        }],
        Err(_) => vec![Problem {
            file: "<jobs>".into(),
            line: None,
            message: "planning the jobs' SQL failed".into(),
        }],
    }
}

/// Plans every team's job's DataFusion SQL over empty inputs of the
/// right columns (no data needed), upstream first: a table it reads that
/// it does not declare, a syntax error or a column that is not there is a
/// problem at the SQL's file and line. Gives each planned job's output
/// columns. Jobs that already failed [`check`] are not planned, nor are
/// jobs reading what is not planned here and not in `known`: a source (its
/// columns are its database's, see [`crate::source::describe_all`]) or a
/// job with ClickHouse SQL only (the server's answer).
pub async fn plan(
    jobs: &[DeclaredJob],
    known: &BTreeMap<String, arrow::datatypes::SchemaRef>,
) -> (BTreeMap<String, arrow::datatypes::SchemaRef>, Vec<Problem>) {
    use crate::embedded::Embedded;
    let mut schemas = known.clone();
    let mut problems = Vec::new();
    for name in RAW_TABLES {
        if let Some(table) = tillwatch_domain::Kind::ALL
            .into_iter()
            .map(tillwatch_storage::Table::Reading)
            .find(|t| t.name() == name)
        {
            schemas.insert(name.to_string(), tillwatch_storage::schema(table));
        }
    }
    for job in jobs.iter().filter(|j| j.is_product_rollup()) {
        match Embedded::output_schema(&job.name).await {
            Ok(schema) => {
                schemas.insert(job.name.clone(), schema);
            }
            Err(e) => problems.push(Problem {
                file: sql_file(job),
                line: None,
                message: e.to_string(),
            }),
        }
    }
    let Ok(catalog) = Catalog::new(jobs.iter().map(DeclaredJob::spec).collect()) else {
        return (schemas, problems);
    };
    for spec in catalog.jobs() {
        let Some(job) = jobs.iter().find(|j| j.name == spec.name) else {
            continue;
        };
        if job.declaration.builtin || job.is_product_rollup() {
            continue;
        }
        let Some(sql) = &job.sql.datafusion else {
            continue;
        };
        let ctx = Embedded::context();
        let mut missing = false;
        for input in &job.declaration.inputs {
            let Some(schema) = schemas.get(input) else {
                missing = true;
                continue;
            };
            let empty = datafusion::datasource::MemTable::try_new(schema.clone(), vec![vec![]])
                .expect("an empty table of a known schema");
            ctx.register_table(input.as_str(), std::sync::Arc::new(empty))
                .expect("a new session takes a table");
        }
        if missing {
            // The input's own problem is reported; this job cannot plan.
            continue;
        }
        if job.store_local_day() {
            let (devices, zone_hours) = crate::side::local_day_batches(&Default::default());
            for (name, batch) in LOCAL_DAY_TABLES.into_iter().zip([devices, zone_hours]) {
                let empty = datafusion::datasource::MemTable::try_new(batch.schema(), vec![vec![]])
                    .expect("an empty table of a known schema");
                ctx.register_table(name, std::sync::Arc::new(empty))
                    .expect("a new session takes a table");
            }
        }
        match ctx.sql_with_options(&bind(sql, 0, 0), query_only()).await {
            Ok(frame) => {
                let schema = frame.schema().inner().clone();
                if let Some(want) = &job.declaration.columns {
                    let got: Vec<&str> =
                        schema.fields().iter().map(|f| f.name().as_str()).collect();
                    if got != *want {
                        problems.push(job.problem(
                            "columns",
                            format!(
                                "the SQL gives the columns {} where `columns` says {}",
                                got.join(", "),
                                want.join(", ")
                            ),
                        ));
                    }
                }
                schemas.insert(job.name.clone(), schema);
            }
            Err(e) => problems.push(sql_problem(job, sql, &e.to_string())),
        }
    }
    (schemas, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> Files {
        list.iter()
            .map(|(p, t)| (p.to_string(), t.to_string()))
            .collect()
    }

    #[test]
    fn the_built_in_jobs_are_declared_files_that_pass_every_check() {
        let jobs = builtin();
        let names: Vec<_> = jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "device_health_daily",
                "device_health_hourly",
                "fleet_health_daily",
                "raw_compaction"
            ]
        );
        assert!(check(&jobs).is_empty());
        let daily = jobs
            .iter()
            .find(|j| j.name == "device_health_daily")
            .unwrap();
        assert!(daily.store_local_day());
        assert_eq!(daily.owner, "health");
        assert_eq!(
            daily.sql.datafusion.as_deref(),
            Some(crate::jobs::DEVICE_HEALTH_DAILY_SQL.datafusion)
        );
        let hourly = jobs
            .iter()
            .find(|j| j.name == "device_health_hourly")
            .unwrap();
        assert_eq!(
            hourly.inputs(),
            [
                Input::Job("raw_compaction".into()),
                Input::Source("device_attributes".into())
            ]
        );
    }

    #[test]
    fn problems_name_the_file_and_line() {
        let (jobs, problems) = load_files(
            "jobs",
            &files(&[
                (
                    "payments-risk/refunds.toml",
                    "description = \"x\"\ngrain = \"hour\"\ninputs = [\"payment_health\"]\nschedul = \"@hourly\"\n",
                ),
                ("payments-risk/refunds.datafusion.sql", "SELECT 1"),
                ("payments-risk/orphan.clickhouse.sql", "SELECT 1"),
                (
                    "payments-risk/nosql.toml",
                    "description = \"x\"\ngrain = \"day\"\n",
                ),
                ("loose.toml", "description = \"x\"\ngrain = \"day\"\n"),
            ]),
        );
        assert!(jobs.is_empty());
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let all = text.join("\n");
        assert!(
            all.contains("jobs/payments-risk/refunds.toml:4: unknown field `schedul`"),
            "{all}"
        );
        assert!(
            all.contains("jobs/payments-risk/orphan.clickhouse.sql: SQL without a declaration")
        );
        assert!(all.contains("jobs/payments-risk/nosql.toml: no SQL"));
        assert!(all.contains("jobs/loose.toml: a job's files go in a folder"));
    }

    #[test]
    fn unknown_columns_are_found_at_their_line() {
        let job = builtin().remove(0);
        let p = sql_problem(
            &job,
            "SELECT a\nFROM t\nWHERE colour = 1\n",
            "Schema error: No field named colour.\nValid fields are t.a.",
        );
        assert_eq!(p.line, Some(3));
        assert_eq!(p.message, "Schema error: No field named colour.");
    }

    #[tokio::test]
    async fn planning_finds_undeclared_tables_and_syntax_errors_at_their_line() {
        let mut all = builtin();
        let (mine, problems) = load_files(
            "jobs",
            &files(&[
                (
                    "payments-risk/risky_hours.toml",
                    "description = \"x\"\ngrain = \"hour\"\ninputs = [\"payment_health\", \"device_health_hourly\"]\n",
                ),
                (
                    "payments-risk/risky_hours.datafusion.sql",
                    "SELECT h.device_id, count(*) AS readings, max(h.transactions) AS transactions\nFROM device_health_hourly h\nJOIN payment_health p ON p.device_id = h.device_id\nWHERE p.sampled_at >= to_timestamp_millis({start_ms})\nGROUP BY h.device_id\n",
                ),
                (
                    "payments-risk/sneaky.toml",
                    "description = \"x\"\ngrain = \"hour\"\ninputs = [\"payment_health\"]\n",
                ),
                (
                    "payments-risk/sneaky.datafusion.sql",
                    "SELECT device_id\nFROM payment_health\nUNION ALL\nSELECT device_id FROM battery\n",
                ),
                (
                    "payments-risk/typo.toml",
                    "description = \"x\"\ngrain = \"hour\"\ninputs = [\"payment_health\"]\n",
                ),
                (
                    "payments-risk/typo.datafusion.sql",
                    "SELECT device_id\nFROM payment_health\nWHERE device_id = = 'x'\n",
                ),
            ]),
        );
        assert!(problems.is_empty(), "{problems:?}");
        all.extend(mine);
        assert!(check(&all).is_empty());
        let (schemas, problems) = plan(&all, &BTreeMap::new()).await;
        let columns: Vec<String> = schemas["risky_hours"]
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(columns, ["device_id", "readings", "transactions"]);
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(
            text[0].starts_with("jobs/payments-risk/sneaky.datafusion.sql:4: reads \"battery\", which is not among its inputs"),
            "{text:?}"
        );
        assert!(
            text[1].starts_with("jobs/payments-risk/typo.datafusion.sql:3: "),
            "{text:?}"
        );
    }

    #[test]
    fn a_team_job_with_clickhouse_sql_only_passes_the_checks() {
        let (jobs, problems) = load_files(
            "jobs",
            &files(&[
                (
                    "t/only_ch.toml",
                    "description = \"x\"\ngrain = \"hour\"\ninputs = [\"battery\"]\n",
                ),
                ("t/only_ch.clickhouse.sql", "SELECT 1"),
            ]),
        );
        assert!(problems.is_empty());
        // Whether it runs depends on the deployment's engine (see
        // `catalog::team_jobs`), not on the files.
        let mut all = builtin();
        all.extend(jobs);
        assert_eq!(check(&all), []);
    }

    #[test]
    fn a_clickhouse_statement_reads_only_declared_inputs() {
        let (jobs, problems) = load_files(
            "jobs",
            &files(&[
                (
                    "t/both.toml",
                    "description = \"x\"\ngrain = \"hour\"\ninputs = [\"battery\"]\n",
                ),
                ("t/both.datafusion.sql", "SELECT device_id FROM battery"),
                (
                    "t/both.clickhouse.sql",
                    "SELECT device_id\nFROM {database}.battery b\nJOIN {database}.payment_health p USING device_id",
                ),
            ]),
        );
        assert!(problems.is_empty());
        let text: Vec<String> = check(&jobs).iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 1, "{text:?}");
        assert!(
            text[0].starts_with(
                "jobs/t/both.clickhouse.sql:3: reads {database}.payment_health, which is not among its inputs (battery)"
            ),
            "{text:?}"
        );
    }

    #[test]
    fn a_job_may_read_only_what_its_owner_may_and_cycles_are_refused() {
        let mut all = builtin();
        let (mine, problems) = load_files(
            "jobs",
            &files(&[
                (
                    "payments-risk/risk.toml",
                    "description = \"x\"\ngrain = \"hour\"\n\ninputs = [\"payment_health\", \"device_health_hourly\", \"private\"]\n",
                ),
                ("payments-risk/risk.datafusion.sql", "SELECT 1"),
                (
                    "finance/private.toml",
                    "description = \"x\"\ngrain = \"hour\"\ninputs = [\"battery\"]\n",
                ),
                ("finance/private.datafusion.sql", "SELECT 1"),
            ]),
        );
        assert!(problems.is_empty(), "{problems:?}");
        all.extend(mine.clone());
        let problems = check(&all);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].file, "jobs/payments-risk/risk.toml");
        assert_eq!(problems[0].line, Some(4));
        assert!(
            problems[0]
                .message
                .contains("belongs to finance and is not public")
        );

        let (cycle, _) = load_files(
            "jobs",
            &files(&[
                (
                    "t/a.toml",
                    "description = \"x\"\ngrain = \"hour\"\ninputs = [\"b\"]\n",
                ),
                ("t/a.datafusion.sql", "SELECT 1"),
                (
                    "t/b.toml",
                    "description = \"x\"\ngrain = \"hour\"\ninputs = [\"a\"]\n",
                ),
                ("t/b.datafusion.sql", "SELECT 1"),
            ]),
        );
        let problems = check(&cycle);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0]
                .to_string()
                .starts_with("jobs/t/a.toml:3: jobs depend on each other in a cycle: a -> b -> a")
        );
    }
}
