//! Bearer tokens with two roles.

use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tillwatch_config::{ApiToken, Role};

use crate::error::ApiError;

/// The tokens the API accepts, and the addresses that have failed too
/// often.
pub struct Access {
    tokens: Vec<Holder>,
    failures: FailedTokens,
}

/// Failed token checks per client address: after [`MAX_FAILURES`] within
/// [`FAILURE_WINDOW`], every request from that address is refused until
/// the window ends (right or wrong, so a guess tells nothing), which
/// keeps anyone from trying tokens at speed. At most
/// [`MAX_REMEMBERED_ADDRESSES`] addresses are remembered. Behind a proxy
/// the proxy is the address: keep its own limits in front.
#[derive(Default)]
pub struct FailedTokens {
    by_address: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (Instant, u32)>>,
}

pub const MAX_FAILURES: u32 = 20;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
pub const MAX_REMEMBERED_ADDRESSES: usize = 10_000;

impl FailedTokens {
    /// How long `address` is still refused at `now`, if it is.
    pub fn refused_for(&self, address: std::net::IpAddr, now: Instant) -> Option<Duration> {
        let map = self
            .by_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (since, failures) = map.get(&address)?;
        let until = *since + FAILURE_WINDOW;
        (*failures >= MAX_FAILURES && now < until).then(|| until - now)
    }

    /// Counts one failed check from `address` at `now`.
    pub fn failed(&self, address: std::net::IpAddr, now: Instant) {
        let mut map = self
            .by_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_REMEMBERED_ADDRESSES && !map.contains_key(&address) {
            map.retain(|_, (since, _)| now < *since + FAILURE_WINDOW);
            if map.len() >= MAX_REMEMBERED_ADDRESSES {
                // Full of live windows: forget the oldest.
                if let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, (since, _))| *since)
                    .map(|(a, _)| *a)
                {
                    map.remove(&oldest);
                }
            }
        }
        let entry = map.entry(address).or_insert((now, 0));
        if now >= entry.0 + FAILURE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }
}

struct Holder {
    name: String,
    role: Role,
    secret: Vec<u8>,
}

/// Equal without telling, by its timing, how much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who called: a token's name and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

impl Caller {
    /// Who is recorded as having done something: the calling token's
    /// name, or `operator` where no token is configured.
    pub fn who(caller: Option<axum::Extension<Caller>>) -> String {
        caller
            .map(|axum::Extension(c)| c.name)
            .unwrap_or_else(|| Role::Operator.as_str().to_string())
    }
}

/// Why the configured tokens cannot be used (never quoting a token).
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("http.tokens {name:?}: {source}")]
    Token {
        name: String,
        #[source]
        source: tillwatch_config::TokenError,
    },
    #[error("http.tokens {first:?} and {second:?} have the same token")]
    SameToken { first: String, second: String },
}

impl Access {
    /// From the configured tokens (read from their files); every problem
    /// named by the token's name.
    pub fn new(tokens: &[ApiToken]) -> Result<Access, AccessError> {
        let mut holders: Vec<Holder> = Vec::new();
        for t in tokens {
            let secret = t
                .secret()
                .map_err(|source| AccessError::Token {
                    name: t.name.clone(),
                    source,
                })?
                .into_bytes();
            if let Some(other) = holders.iter().find(|h| same(&h.secret, &secret)) {
                return Err(AccessError::SameToken {
                    first: other.name.clone(),
                    second: t.name.clone(),
                });
            }
            holders.push(Holder {
                name: t.name.clone(),
                role: t.role,
                secret,
            });
        }
        Ok(Access {
            tokens: holders,
            failures: FailedTokens::default(),
        })
    }

    /// Who holds `token`, if anyone.
    pub fn caller(&self, token: &str) -> Option<Caller> {
        // Compare with every token, so the time taken says nothing.
        let mut found = None;
        for h in &self.tokens {
            if same(&h.secret, token.as_bytes()) {
                found = Some(Caller {
                    name: h.name.clone(),
                    role: h.role,
                });
            }
        }
        found
    }

    /// Checks a request's `Authorization` header for a call that needs
    /// `need`.
    pub fn check(&self, header: Option<&HeaderValue>, need: Role) -> Result<Caller, Refusal> {
        self.check_text(header.map(|h| h.to_str().unwrap_or("")), need)
    }

    /// [`Access::check_text`] for a request from `peer` (when known) at
    /// `now`: refused outright while `peer` has failed too often, and a
    /// failure counted against it.
    pub fn check_from(
        &self,
        peer: Option<std::net::IpAddr>,
        header: Option<&str>,
        need: Role,
        now: Instant,
    ) -> Result<Caller, Refusal> {
        if let Some(address) = peer
            && let Some(wait) = self.failures.refused_for(address, now)
        {
            return Err(Refusal::TooManyFailures(wait.as_secs().max(1)));
        }
        let checked = self.check_text(header, need);
        if let (Some(address), Err(Refusal::Unauthenticated(_))) = (peer, &checked) {
            self.failures.failed(address, now);
        }
        checked
    }

    /// [`Access::check`] for an `authorization` value as text (gRPC
    /// metadata).
    pub fn check_text(&self, header: Option<&str>, need: Role) -> Result<Caller, Refusal> {
        let Some(header) = header else {
            return Err(Refusal::Unauthenticated(
                "this API needs a token: send Authorization: Bearer <token>".into(),
            ));
        };
        let token = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .ok_or_else(|| {
                Refusal::Unauthenticated("the Authorization header must be Bearer <token>".into())
            })?;
        let caller = self.caller(token).ok_or_else(|| {
            Refusal::Unauthenticated("the bearer token is not one this server accepts".into())
        })?;
        if caller.role < need {
            return Err(Refusal::Forbidden(format!(
                "token {:?} has the {} role; this needs {}",
                caller.name,
                caller.role.as_str(),
                need.as_str()
            )));
        }
        Ok(caller)
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401: no token, or not one we know.
    Unauthenticated(String),
    /// 403: a known token without the role.
    Forbidden(String),
    /// 429: the address failed too often; try again in this many seconds.
    TooManyFailures(u64),
}

impl Refusal {
    /// What the client is told of a [`Refusal::TooManyFailures`].
    pub fn too_many(wait_s: u64) -> String {
        format!(
            "{MAX_FAILURES} failed tokens from this address within {} s; try again in {wait_s} s",
            FAILURE_WINDOW.as_secs()
        )
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Unauthenticated(m) => {
                let mut r = ApiError(StatusCode::UNAUTHORIZED, m).into_response();
                r.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"tillwatch\""),
                );
                r
            }
            Refusal::Forbidden(m) => ApiError(StatusCode::FORBIDDEN, m).into_response(),
            Refusal::TooManyFailures(wait_s) => {
                let mut r = ApiError(StatusCode::TOO_MANY_REQUESTS, Refusal::too_many(wait_s))
                    .into_response();
                r.headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(wait_s));
                r
            }
        }
    }
}

/// The role a request needs: reading is for viewers, anything else
/// changes something and is for operators.
pub fn needed_role(method: &Method) -> Role {
    if method == Method::GET || method == Method::HEAD {
        Role::Viewer
    } else {
        Role::Operator
    }
}

async fn authorize(State(access): State<Arc<Access>>, mut req: Request, next: Next) -> Response {
    let need = needed_role(req.method());
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .map(|h| h.to_str().unwrap_or(""));
    match access.check_from(peer, header, need, Instant::now()) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(refusal) => {
            tracing::debug!(path = %req.uri().path(), ?refusal, "API request refused");
            refusal.into_response()
        }
    }
}

/// `router` with every route behind the tokens of `access`.
pub fn protect(router: Router, access: Arc<Access>) -> Router {
    router.layer(middleware::from_fn_with_state(access, authorize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, role: Role, secret: &str) -> ApiToken {
        ApiToken {
            name: name.into(),
            role,
            token: Some(secret.into()),
            token_file: None,
        }
    }

    #[test]
    fn an_address_that_fails_too_often_waits_out_the_window() {
        let access =
            Access::new(&[token("support", Role::Viewer, "viewer-token-0123456789")]).unwrap();
        let t0 = Instant::now();
        let (guesser, other) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let try_as = |who, token: &str, at| {
            access.check_from(
                Some(who),
                Some(&format!("Bearer {token}")),
                Role::Viewer,
                at,
            )
        };
        for i in 0..MAX_FAILURES {
            let at = t0 + Duration::from_millis(u64::from(i));
            assert!(matches!(
                try_as(guesser, "wrong-token-guess-000", at),
                Err(Refusal::Unauthenticated(_))
            ));
        }
        // Refused outright now, even with the right token: a guess tells nothing.
        let soon = t0 + Duration::from_secs(1);
        assert!(matches!(
            try_as(guesser, "viewer-token-0123456789", soon),
            Err(Refusal::TooManyFailures(59))
        ));
        // Others are not held up; the guesser is let in after the window.
        assert!(try_as(other, "viewer-token-0123456789", soon).is_ok());
        let later = t0 + FAILURE_WINDOW;
        assert!(try_as(guesser, "viewer-token-0123456789", later).is_ok());
        // Memory stays bounded however many addresses fail.
        for i in 0..(MAX_REMEMBERED_ADDRESSES as u32 + 100) {
            access
                .failures
                .failed(std::net::IpAddr::from(i.to_be_bytes()), later);
        }
        assert!(access.failures.by_address.lock().unwrap().len() <= MAX_REMEMBERED_ADDRESSES);
    }

    #[test]
    fn roles_and_refusals() {
        let access = Access::new(&[
            token("support", Role::Viewer, "viewer-token-0123456789"),
            token("ops", Role::Operator, "operator-token-0123456789"),
        ])
        .unwrap();
        let header = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(
            access
                .check(
                    Some(&header("Bearer viewer-token-0123456789")),
                    Role::Viewer
                )
                .unwrap()
                .name,
            "support"
        );
        assert!(matches!(
            access.check(Some(&header("Bearer viewer-token-0123456789")), Role::Operator),
            Err(Refusal::Forbidden(m)) if m.contains("\"support\" has the viewer role")
        ));
        assert!(
            access
                .check(
                    Some(&header("Bearer operator-token-0123456789")),
                    Role::Operator
                )
                .is_ok()
        );
        assert!(matches!(
            access.check(None, Role::Viewer),
            Err(Refusal::Unauthenticated(_))
        ));
        assert!(matches!(
            access.check(Some(&header("Basic abc")), Role::Viewer),
            Err(Refusal::Unauthenticated(m)) if m.contains("Bearer")
        ));
        assert!(matches!(
            access.check(Some(&header("Bearer viewer-token-012345678")), Role::Viewer),
            Err(Refusal::Unauthenticated(_))
        ));
        let twice = Access::new(&[
            token("a", Role::Viewer, "same-token-0123456789"),
            token("b", Role::Operator, "same-token-0123456789"),
        ]);
        assert!(twice.is_err_and(|e| e.to_string().contains("same token")));
        let short = Access::new(&[token("a", Role::Viewer, "short")]);
        assert!(short.is_err_and(|e| {
            let e = e.to_string();
            e.contains("\"a\"") && e.contains("16")
        }));
    }
}
