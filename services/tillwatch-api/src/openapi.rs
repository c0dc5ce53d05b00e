//! Routes declared with their documentation, and the OpenAPI document made
//! from them: a route and its entry in the document are one statement, so
//! they cannot drift apart. `GET /api/v1/openapi.json` serves it.

use axum::Router;
use axum::routing::MethodRouter;
use serde_json::{Map, Value, json};
use tillwatch_config::Role;

/// Where a parameter goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum In {
    Path,
    Query,
}

#[derive(Debug, Clone)]
pub struct Param {
    pub name: &'static str,
    pub at: In,
    pub required: bool,
    /// `string`, `integer` or `boolean`.
    pub kind: &'static str,
    pub description: &'static str,
}

/// One operation: what the document says of it.
#[derive(Debug, Clone)]
pub struct Doc {
    pub method: &'static str,
    pub path: String,
    pub tag: &'static str,
    pub summary: &'static str,
    pub params: Vec<Param>,
    /// A JSON request body, described.
    pub body: Option<&'static str>,
    /// The success status (200, or 201 for a creation, 202 accepted).
    pub status: u16,
}

impl Doc {
    fn new(method: &'static str, path: &str, tag: &'static str, summary: &'static str) -> Doc {
        Doc {
            method,
            path: path.to_string(),
            tag,
            summary,
            params: Vec::new(),
            body: None,
            status: 200,
        }
    }

    pub fn get(path: &str, tag: &'static str, summary: &'static str) -> Doc {
        Doc::new("get", path, tag, summary)
    }

    pub fn post(path: &str, tag: &'static str, summary: &'static str) -> Doc {
        Doc::new("post", path, tag, summary)
    }

    pub fn delete(path: &str, tag: &'static str, summary: &'static str) -> Doc {
        Doc::new("delete", path, tag, summary)
    }

    fn param(mut self, at: In, name: &'static str, kind: &'static str, d: &'static str) -> Doc {
        self.params.push(Param {
            name,
            at,
            required: at == In::Path,
            kind,
            description: d,
        });
        self
    }

    /// A query parameter.
    pub fn query(self, name: &'static str, kind: &'static str, d: &'static str) -> Doc {
        self.param(In::Query, name, kind, d)
    }

    /// A required query parameter.
    pub fn query_required(self, name: &'static str, kind: &'static str, d: &'static str) -> Doc {
        let mut doc = self.param(In::Query, name, kind, d);
        if let Some(p) = doc.params.last_mut() {
            p.required = true;
        }
        doc
    }

    /// A path parameter (`{name}` in the path).
    pub fn path_param(self, name: &'static str, d: &'static str) -> Doc {
        self.param(In::Path, name, "string", d)
    }

    pub fn body(mut self, description: &'static str) -> Doc {
        self.body = Some(description);
        self
    }

    pub fn status(mut self, status: u16) -> Doc {
        self.status = status;
        self
    }

    /// The role the operation needs (see [`crate::auth::needed_role`]).
    pub fn role(&self) -> Role {
        let method = axum::http::Method::from_bytes(self.method.to_uppercase().as_bytes())
            .expect("documented methods are HTTP methods");
        crate::auth::needed_role(&method)
    }
}

/// A router and the documentation of each of its routes.
pub struct Routes<S = ()> {
    pub router: Router<S>,
    pub docs: Vec<Doc>,
}

impl<S: Clone + Send + Sync + 'static> Default for Routes<S> {
    fn default() -> Self {
        Routes {
            router: Router::new(),
            docs: Vec::new(),
        }
    }
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    pub fn new() -> Routes<S> {
        Routes::default()
    }

    /// Adds `handler` at `doc`'s path, with `doc` describing it.
    pub fn route(mut self, doc: Doc, handler: MethodRouter<S>) -> Routes<S> {
        self.router = self.router.route(&doc.path, handler);
        self.docs.push(doc);
        self
    }

    pub fn with_state<S2>(self, state: S) -> Routes<S2> {
        Routes {
            router: self.router.with_state(state),
            docs: self.docs,
        }
    }
}

impl Routes<()> {
    pub fn merge(mut self, other: Routes<()>) -> Routes<()> {
        self.router = self.router.merge(other.router);
        self.docs.extend(other.docs);
        self
    }
}

fn responses(doc: &Doc) -> Value {
    let error = json!({
        "description": "",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    });
    let with = |text: &str| {
        let mut e = error.clone();
        e["description"] = json!(text);
        e
    };
    let mut r = Map::new();
    r.insert(
        doc.status.to_string(),
        json!({"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}),
    );
    r.insert("400".into(), with("A bad parameter or body, named"));
    r.insert(
        "401".into(),
        with("No token, or one the server does not accept"),
    );
    if doc.role() == Role::Operator {
        r.insert("403".into(), with("The token lacks the operator role"));
    }
    if doc.params.iter().any(|p| p.at == In::Path) {
        r.insert("404".into(), with("No such thing"));
    }
    r.insert("503".into(), with("The metadata store is unavailable"));
    Value::Object(r)
}

/// The OpenAPI 3.0 document of `docs`.
pub fn document(docs: &[Doc]) -> Value {
    let mut paths = Map::new();
    for doc in docs {
        let params: Vec<Value> = doc
            .params
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "in": if p.at == In::Path { "path" } else { "query" },
                    "required": p.required,
                    "description": p.description,
                    "schema": {"type": p.kind},
                })
            })
            .collect();
        let mut op = json!({
            "tags": [doc.tag],
            "summary": doc.summary,
            "operationId": format!("{}_{}", doc.method, doc.path.trim_start_matches("/api/v1/")
                .replace(['/', '{', '}'], "_").trim_matches('_')),
            "parameters": params,
            "responses": responses(doc),
            "x-tillwatch-role": doc.role().as_str(),
        });
        if let Some(body) = doc.body {
            op["requestBody"] = json!({
                "required": true,
                "description": body,
                "content": {"application/json": {"schema": {"type": "object"}}},
            });
        }
        let entry = paths
            .entry(doc.path.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        entry[doc.method] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Tillwatch API",
            "version": "v1",
            "description": "Fleet health of payment terminals. Every operation needs Authorization: Bearer <token>; a viewer token reads, an operator token also changes.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string", "description": "What was wrong"}},
            }},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    })
}
