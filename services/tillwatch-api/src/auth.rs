//! Bearer tokens with two roles.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tillwatch_config::{ApiToken, Role};

use crate::error::ApiError;

/// The tokens the API accepts.
pub struct Access {
    tokens: Vec<Holder>,
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
        Ok(Access { tokens: holders })
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
    match access.check(req.headers().get(AUTHORIZATION), need) {
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
