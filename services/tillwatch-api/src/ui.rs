//! The built-in pages, embedded in the binary and served without a token
//! (they hold no data; they call the API with the token the user gives
//! them, kept in the browser): `/ui/` the fleet, `/ui/device?id=…` one
//! terminal, `/ui/merchant?id=…&store=…` a merchant or store,
//! `/ui/alerts` alerts and silences, `/ui/jobs` the rollup jobs. Charts are drawn in the browser by uPlot (vendored under
//! `web/vendor/`, MIT).

use axum::Router;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

fn asset(kind: &'static str, body: &'static str) -> impl IntoResponse + Clone {
    ([(CONTENT_TYPE, kind), (CACHE_CONTROL, "no-cache")], body)
}

/// The page and asset routes.
pub fn router() -> Router {
    let page = |kind, body| get(move || async move { asset(kind, body) });
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui/", page(HTML, include_str!("../web/index.html")))
        .route("/ui/device", page(HTML, include_str!("../web/device.html")))
        .route(
            "/ui/merchant",
            page(HTML, include_str!("../web/merchant.html")),
        )
        .route("/ui/alerts", page(HTML, include_str!("../web/alerts.html")))
        .route("/ui/jobs", page(HTML, include_str!("../web/jobs.html")))
        .route("/ui/app.js", page(JS, include_str!("../web/app.js")))
        .route("/ui/style.css", page(CSS, include_str!("../web/style.css")))
        .route(
            "/ui/vendor/uplot.js",
            page(
                JS,
                include_str!("../web/vendor/uplot-1.6.32/uPlot.iife.min.js"),
            ),
        )
        .route(
            "/ui/vendor/uplot.css",
            page(
                CSS,
                include_str!("../web/vendor/uplot-1.6.32/uPlot.min.css"),
            ),
        )
}
