//! Silences over HTTP (creating and ending one needs an operator's token):
//!
//! | method and path | what |
//! |---|---|
//! | `GET /api/v1/silences` | silences that have not ended |
//! | `POST /api/v1/silences` | `{"matchers": ["alertname=offline", "store_id=~s-1.*"], "for": "2h", "comment": "…"}`: 201 and the silence; its author is the token's name |
//! | `DELETE /api/v1/silences/{silence_id}` | ends it now; 404 if there is none |
//!
//! The alerter applies a new or ended silence at its next evaluation.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Extension, Json};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tillwatch_domain::UtcMillis;
use tillwatch_meta::{MetaStore, SilenceRecord};

use crate::auth::Caller;
use crate::error::{ApiError, bad, not_found};
use crate::openapi::{Doc, Routes};

/// The longest a silence may last: longer is a rule to change, not a
/// silence.
const MAX_SILENCE_MS: i64 = 90 * 24 * 3_600_000;

/// A silence: alerts matching every matcher are not paged while it holds.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Silence {
    pub silence_id: String,
    /// `label=value`, `label!=value`, `label=~regex` or `label!~regex`.
    pub matchers: Vec<String>,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    /// The name of the token that made it.
    pub created_by: String,
    pub comment: String,
    pub created_at_ms: i64,
}

impl From<SilenceRecord> for Silence {
    fn from(s: SilenceRecord) -> Silence {
        Silence {
            silence_id: s.silence_id,
            matchers: s.matchers,
            starts_at_ms: s.starts_at_ms,
            ends_at_ms: s.ends_at_ms,
            created_by: s.created_by,
            comment: s.comment,
            created_at_ms: s.created_at_ms,
        }
    }
}

/// The silences that have not ended.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct SilenceList {
    pub silences: Vec<Silence>,
}

/// A silence ended.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct SilenceEnded {
    pub silence_id: String,
    /// Always `true`.
    pub ended: bool,
}

async fn list(State(store): State<MetaStore>) -> Result<Json<SilenceList>, ApiError> {
    let now = UtcMillis::now().0;
    let silences = store
        .silences(now)
        .await?
        .into_iter()
        .map(Silence::from)
        .collect();
    Ok(Json(SilenceList { silences }))
}

/// A silence to make.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct NewSilence {
    /// Every one must match: `label=value`, `label!=value`,
    /// `label=~regex`, `label!~regex`.
    matchers: Vec<String>,
    /// How long, from now: `2h`, `30m` (at most 90 days).
    #[serde(rename = "for")]
    duration: String,
    /// Why (not empty).
    comment: String,
}

async fn create(
    State(store): State<MetaStore>,
    caller: Option<Extension<Caller>>,
    body: Result<Json<NewSilence>, JsonRejection>,
) -> Result<(StatusCode, Json<Silence>), ApiError> {
    let Json(body) = body.map_err(|e| bad(format!("the body: {}", e.body_text())))?;
    let author = Caller::who(caller);
    let record =
        create_silence(&store, body.matchers, &body.duration, body.comment, author).await?;
    Ok((StatusCode::CREATED, Json(record.into())))
}

/// Checks and saves a new silence from now for `duration` (`2h`); every
/// problem is a 400 naming the field (`matchers`, `for`, `comment`).
pub async fn create_silence(
    store: &MetaStore,
    matchers: Vec<String>,
    duration: &str,
    comment: String,
    author: String,
) -> Result<SilenceRecord, ApiError> {
    let body = NewSilence {
        matchers,
        duration: duration.to_string(),
        comment,
    };
    if body.matchers.is_empty() {
        return Err(bad(
            "matchers: give at least one, e.g. \"alertname=offline\" or \"store_id=s-1\"",
        ));
    }
    tillwatch_domain::matchers::parse_all(&body.matchers)
        .map_err(|e| bad(format!("matchers: {e}")))?;
    let duration = humantime::parse_duration(&body.duration).map_err(|e| {
        bad(format!(
            "for: {:?} is not a duration like 2h ({e})",
            body.duration
        ))
    })?;
    let ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
    if ms <= 0 || ms > MAX_SILENCE_MS {
        return Err(bad("for: must be more than 0s and at most 90 days"));
    }
    if body.comment.trim().is_empty() {
        return Err(bad("comment: say why (it is shown with the muted alerts)"));
    }
    let now = UtcMillis::now().0;
    let record = SilenceRecord {
        silence_id: format!("{now:x}-{:08x}", fnv(&body.matchers.join("\n"))),
        matchers: body.matchers,
        starts_at_ms: now,
        ends_at_ms: now + ms,
        created_by: author,
        comment: body.comment,
        created_at_ms: now,
    };
    store.create_silence(&record).await?;
    Ok(record)
}

fn fnv(text: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

async fn end(
    State(store): State<MetaStore>,
    Path(id): Path<String>,
) -> Result<Json<SilenceEnded>, ApiError> {
    if store.expire_silence(&id, UtcMillis::now().0).await? {
        Ok(Json(SilenceEnded {
            silence_id: id,
            ended: true,
        }))
    } else {
        Err(not_found(format!("no silence {id:?}")))
    }
}

/// The silence routes over the metadata store.
pub fn router(store: MetaStore) -> Routes {
    Routes::new()
        .route(
            Doc::get("/api/v1/silences", "alerts", "Silences that have not ended")
                .returns::<SilenceList>(),
            get(list),
        )
        .route(
            Doc::post("/api/v1/silences", "alerts", "Mute alerts matching every matcher for a while")
                .accepts::<NewSilence>("{\"matchers\": [\"alertname=offline\", \"store_id=~s-1.*\"], \"for\": \"2h\", \"comment\": \"why\"}")
                .returns::<Silence>()
                .status(201),
            post(create),
        )
        .route(
            Doc::delete("/api/v1/silences/{silence_id}", "alerts", "End a silence now")
                .path_param("silence_id", "The silence")
                .returns::<SilenceEnded>(),
            delete(end),
        )
        .with_state(store)
}
