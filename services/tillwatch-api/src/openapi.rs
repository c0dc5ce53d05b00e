//! Routes declared with their documentation, and the OpenAPI document made
//! from them: a route and its entry in the document are one statement, so
//! they cannot drift apart. `GET /api/v1/openapi.json` serves it.

use axum::Router;
use axum::routing::MethodRouter;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::{JsonSchema, Schema};
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
    /// A JSON request body: an example, and its schema from its Rust type
    /// ([`Doc::accepts`]).
    pub body: Option<(&'static str, SchemaFn)>,
    /// The success status (200, or 201 for a creation, 202 accepted).
    pub status: u16,
    /// Another success status with the same answer (200 for a dry run of
    /// what is otherwise 202).
    pub also: Option<u16>,
    /// The schema of the success answer's body, from its Rust type
    /// ([`Doc::returns`]).
    pub response: Option<SchemaFn>,
    /// When a 404 means something other than an unknown path parameter
    /// (or the operation has none): what is missing.
    pub not_found: Option<&'static str>,
}

/// Makes a type's schema (a reference to it under `components/schemas`).
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn schema_of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
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
            also: None,
            response: None,
            not_found: None,
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

    /// The request body is a `T`, like `example`.
    pub fn accepts<T: JsonSchema>(mut self, example: &'static str) -> Doc {
        self.body = Some((example, schema_of::<T>));
        self
    }

    /// The success answer is a `T` (its JSON Schema is made from the type,
    /// so the document and the handler share one definition).
    pub fn returns<T: JsonSchema>(mut self) -> Doc {
        self.response = Some(schema_of::<T>);
        self
    }

    pub fn status(mut self, status: u16) -> Doc {
        self.status = status;
        self
    }

    /// The operation answers 404 when `what` is missing.
    pub fn not_found(mut self, what: &'static str) -> Doc {
        self.not_found = Some(what);
        self
    }

    /// `status` is a success too, with the same answer.
    pub fn also(mut self, status: u16) -> Doc {
        self.also = Some(status);
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

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    pub fn merge(mut self, other: Routes<S>) -> Routes<S> {
        self.router = self.router.merge(other.router);
        self.docs.extend(other.docs);
        self
    }
}

fn responses(doc: &Doc, generator: &mut SchemaGenerator) -> Value {
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
    let ok = match doc.response {
        Some(schema) => {
            json!({"description": "OK", "content": {"application/json": {"schema": schema(generator)}}})
        }
        None => json!({"description": "OK"}),
    };
    if let Some(also) = doc.also {
        r.insert(also.to_string(), ok.clone());
    }
    r.insert(doc.status.to_string(), ok);
    r.insert("400".into(), with("A bad parameter or body, named"));
    r.insert(
        "401".into(),
        with("No token, or one the server does not accept"),
    );
    if doc.role() == Role::Operator {
        r.insert("403".into(), with("The token lacks the operator role"));
    }
    if let Some(what) = doc.not_found {
        r.insert("404".into(), with(what));
    } else if doc.params.iter().any(|p| p.at == In::Path) {
        r.insert("404".into(), with("No such thing"));
    }
    r.insert("503".into(), with("The metadata store is unavailable"));
    Value::Object(r)
}

/// The OpenAPI 3.1 document of `docs`. Its schemas are JSON Schema
/// (2020-12, OpenAPI 3.1's dialect), made from the answers' Rust types,
/// each type once under `components/schemas`.
pub fn document(docs: &[Doc]) -> Value {
    // Answers as they are written (an `Option` field is always there, maybe
    // `null`); request bodies as they are read (a defaulted field may be
    // left out). The two sets of types do not overlap.
    let settings = || {
        let mut settings = SchemaSettings::draft2020_12();
        settings.definitions_path = "/components/schemas".into();
        settings.meta_schema = None;
        settings
    };
    let mut generator = settings().for_serialize().into_generator();
    let mut bodies = settings().for_deserialize().into_generator();
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
            "responses": responses(doc, &mut generator),
            "x-tillwatch-role": doc.role().as_str(),
        });
        if let Some((example, schema)) = doc.body {
            op["requestBody"] = json!({
                "required": true,
                "description": format!("For example {example}"),
                "content": {"application/json": {"schema": schema(&mut bodies)}},
            });
        }
        let entry = paths
            .entry(doc.path.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        entry[doc.method] = op;
    }
    let mut schemas = generator.take_definitions(true);
    schemas.extend(bodies.take_definitions(true));
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string", "description": "What was wrong"}},
        }),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Tillwatch API",
            "version": "v1",
            "description": "Fleet health of payment terminals. Every operation needs Authorization: Bearer <token>; a viewer token reads, an operator token also changes.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
        },
        "security": [{"bearer": []}],
        "paths": paths,
    })
}
