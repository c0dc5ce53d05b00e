//! Any query string a viewer can send to the fleet and lake API (the
//! routes of `tillwatch-api` over a real metadata store, SQLite here, and
//! an empty lake): every request is answered, and never with a 5xx, so no
//! parameter reaches arithmetic or a query unchecked.
#![no_main]

use std::sync::LazyLock;

use axum::body::Body;
use axum::http::Request;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const PATHS: [&str; 12] = [
    "/api/v1/fleet",
    "/api/v1/fleet/cohorts",
    "/api/v1/devices",
    "/api/v1/devices/t-1",
    "/api/v1/devices/t-1/series",
    "/api/v1/merchants",
    "/api/v1/merchants/m-1",
    "/api/v1/merchants/m-1/days",
    "/api/v1/search",
    "/api/v1/stores",
    "/api/v1/alerts",
    "/api/v1/devices/%2e%2e/series",
];

struct Api {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    _dir: tempfile::TempDir,
}

static API: LazyLock<Api> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let url = format!("sqlite://{}", dir.path().join("meta.db").display());
    let lake = tillwatch_storage::Lake::new(dir.path().join("lake"));
    let router = runtime.block_on(async {
        let store = tillwatch_meta::MetaStore::connect(&url)
            .await
            .expect("SQLite opens");
        store.migrate().await.expect("migrations run");
        let queries = tillwatch_query::Queries::new(store, lake, 20.0);
        tillwatch_api::fleet::router(queries.clone())
            .merge(tillwatch_api::lake::router(queries))
            .router
    });
    Api {
        runtime,
        router,
        _dir: dir,
    }
});

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let path = PATHS[usize::from(which) % PATHS.len()];
    // The query's structure (= and &) and plain characters as they are,
    // everything else percent-encoded, so every input is a valid URI.
    let mut query = String::with_capacity(rest.len() * 3);
    for &b in rest {
        if b.is_ascii_alphanumeric() || b"=&-_.:,+~".contains(&b) {
            query.push(char::from(b));
        } else {
            query.push_str(&format!("%{b:02X}"));
        }
    }
    let request = Request::get(format!("{path}?{query}"))
        .body(Body::empty())
        .expect("a percent-encoded query is a valid URI");
    let api = &*API;
    let response = api
        .runtime
        .block_on(api.router.clone().oneshot(request))
        .expect("the router answers");
    assert!(
        !response.status().is_server_error(),
        "{path}?{query} answered {}",
        response.status()
    );
});
