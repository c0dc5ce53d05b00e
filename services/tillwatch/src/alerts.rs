//! `tillwatch alerts …`: list alerts, and create, list and end silences,
//! straight in the metadata store (the alerter applies a silence at its
//! next evaluation, within `alerting.evaluation_interval`).

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use tillwatch_meta::{AlertFilter, AlertState, MetaStore, SilenceRecord};

use crate::{Common, load};

#[derive(Debug, Subcommand)]
pub(crate) enum AlertsCommand {
    /// Alerts, newest change first.
    List(ListArgs),
    /// Mute alerts matching every --matcher for a while.
    Silence(SilenceArgs),
    /// Silences that have not ended.
    Silences(StoreArgs),
    /// End a silence now.
    Unsilence(UnsilenceArgs),
}

#[derive(Debug, Args)]
pub(crate) struct StoreArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// sqlite://PATH or postgres://… (config: metadata.url).
    #[arg(long)]
    pub(crate) metadata_url: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// open (pending and firing), pending, firing, resolved or all.
    #[arg(long, default_value = "open")]
    state: String,
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

#[derive(Debug, Args)]
pub(crate) struct SilenceArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// label=value, label!=value, label=~regex or label!~regex; repeat for more.
    #[arg(long = "matcher", required = true)]
    matchers: Vec<String>,
    /// How long, e.g. 2h or 30m.
    #[arg(long = "for", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Who is silencing.
    #[arg(long)]
    author: String,
    /// Why.
    #[arg(long)]
    comment: String,
}

#[derive(Debug, Args)]
pub(crate) struct UnsilenceArgs {
    #[command(flatten)]
    store: StoreArgs,
    silence_id: String,
}

async fn open(args: &StoreArgs) -> anyhow::Result<MetaStore> {
    let mut config = load(&args.common)?;
    if let Some(url) = &args.metadata_url {
        config.metadata.url = Some(url.clone());
    }
    crate::validate(&config)?;
    Ok(MetaStore::open(&config).await?)
}

pub(crate) fn when(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_default()
}

pub(crate) async fn run(command: AlertsCommand) -> anyhow::Result<()> {
    let now = tillwatch_domain::UtcMillis::now().0;
    match command {
        AlertsCommand::List(args) => {
            let filter = match args.state.as_str() {
                "open" => AlertFilter::Open,
                "all" => AlertFilter::All,
                s => AlertFilter::State(AlertState::parse(s).with_context(|| {
                    format!("--state {s:?}: expected open, pending, firing, resolved or all")
                })?),
            };
            let store = open(&args.store).await?;
            for a in store.alerts(filter, args.limit).await? {
                let mut flags = Vec::new();
                if let Some(h) = &a.held_by {
                    flags.push(format!("held by {h}"));
                }
                if let Some(s) = &a.silenced_by {
                    flags.push(format!("muted by {s}"));
                }
                println!(
                    "{:<8} {:<9} {:<18} {:<28} since {}  {}{}",
                    a.state.as_str(),
                    a.severity,
                    a.rule,
                    a.subject,
                    when(a.fired_at_ms.unwrap_or(a.pending_since_ms)),
                    a.annotations
                        .get("summary")
                        .map(String::as_str)
                        .unwrap_or(""),
                    if flags.is_empty() {
                        String::new()
                    } else {
                        format!("  ({})", flags.join(", "))
                    }
                );
            }
        }
        AlertsCommand::Silence(args) => {
            tillwatch_alerter::matchers::parse_all(&args.matchers).context("--matcher")?;
            anyhow::ensure!(!args.duration.is_zero(), "--for must be more than 0s");
            let store = open(&args.store).await?;
            let id = format!("{:x}-{:x}", now, std::process::id());
            store
                .create_silence(&SilenceRecord {
                    silence_id: id.clone(),
                    matchers: args.matchers,
                    starts_at_ms: now,
                    ends_at_ms: now + args.duration.as_millis() as i64,
                    created_by: args.author,
                    comment: args.comment,
                    created_at_ms: now,
                })
                .await?;
            println!(
                "silence {id} until {}",
                when(now + args.duration.as_millis() as i64)
            );
        }
        AlertsCommand::Silences(args) => {
            let store = open(&args).await?;
            for s in store.silences(now).await? {
                println!(
                    "{}  {} .. {}  by {}  [{}]  {}",
                    s.silence_id,
                    when(s.starts_at_ms),
                    when(s.ends_at_ms),
                    s.created_by,
                    s.matchers.join(", "),
                    s.comment
                );
            }
        }
        AlertsCommand::Unsilence(args) => {
            let store = open(&args.store).await?;
            anyhow::ensure!(
                store.expire_silence(&args.silence_id, now).await?,
                "no silence {:?}",
                args.silence_id
            );
            println!("silence {} ended", args.silence_id);
        }
    }
    Ok(())
}
