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

/// What the browser may do with a page: load scripts, styles and data
/// only from this server (the pages have no inline script or style), and
/// never show it in a frame.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn asset(kind: &'static str, body: &'static str) -> impl IntoResponse + Clone {
    (
        [
            (CONTENT_TYPE, kind),
            (CACHE_CONTROL, "no-cache"),
            (
                axum::http::header::CONTENT_SECURITY_POLICY,
                CONTENT_SECURITY_POLICY,
            ),
            (axum::http::header::X_FRAME_OPTIONS, "DENY"),
            (axum::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (axum::http::header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
}

/// Every page's frame (head, header, scripts) around its own `<main>`.
const LAYOUT: &str = include_str!("../web/layout.html");

/// One page: `main` (its file under `web/`) in the [`LAYOUT`], titled
/// `title`, with `data-page` = `id` (which `app.js` dispatches on) and
/// `head` added to the head.
fn render(title: &str, id: &str, head: &str, main: &str) -> String {
    LAYOUT
        .replace("{{title}}", title)
        .replace("{{page}}", id)
        .replace("{{head}}", head)
        .replace("{{main}}", main)
}

/// The pages, rendered once.
struct Pages {
    fleet: String,
    device: String,
    merchant: String,
    alerts: String,
    jobs: String,
}

static PAGES: std::sync::LazyLock<Pages> = std::sync::LazyLock::new(|| Pages {
    fleet: render("Fleet", "fleet", "", include_str!("../web/index.html")),
    device: render(
        "Device",
        "device",
        "<link rel=\"stylesheet\" href=\"/ui/vendor/uplot.css\">\n",
        include_str!("../web/device.html"),
    ),
    merchant: render(
        "Merchant",
        "merchant",
        "",
        include_str!("../web/merchant.html"),
    ),
    alerts: render("Alerts", "alerts", "", include_str!("../web/alerts.html")),
    jobs: render("Jobs", "jobs", "", include_str!("../web/jobs.html")),
});

/// The page and asset routes.
pub fn router() -> Router {
    let page = |kind, body| get(move || async move { asset(kind, body) });
    let pages: &'static Pages = &PAGES;
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui/", page(HTML, &pages.fleet))
        .route("/ui/device", page(HTML, &pages.device))
        .route("/ui/merchant", page(HTML, &pages.merchant))
        .route("/ui/alerts", page(HTML, &pages.alerts))
        .route("/ui/jobs", page(HTML, &pages.jobs))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_is_whole_in_the_shared_frame() {
        for (page, title, id) in [
            (&PAGES.fleet, "Fleet", "fleet"),
            (&PAGES.device, "Device", "device"),
            (&PAGES.merchant, "Merchant", "merchant"),
            (&PAGES.alerts, "Alerts", "alerts"),
            (&PAGES.jobs, "Jobs", "jobs"),
        ] {
            assert!(!page.contains("{{"), "{id}: a placeholder is left");
            assert!(page.starts_with("<!doctype html>"), "{id}");
            assert!(page.contains(&format!("<title>Tillwatch · {title}</title>")));
            assert!(page.contains(&format!("<body data-page=\"{id}\">")));
            assert_eq!(page.matches("<main>").count(), 1, "{id}");
            assert!(page.trim_end().ends_with("</html>"), "{id}");
        }
        assert!(PAGES.device.contains("/ui/vendor/uplot.css"));
        assert!(PAGES.device.contains("/ui/vendor/uplot.js"));
        // The policy holds because no page has inline script or style.
        for page in [&PAGES.fleet, &PAGES.device, &PAGES.merchant, &PAGES.alerts] {
            assert!(!page.contains("<script>") && !page.contains("style="));
        }
    }

    #[test]
    fn every_asset_says_what_the_browser_may_do() {
        let response = asset(HTML, "<p>x</p>").into_response();
        let header = |name| response.headers().get(name).unwrap().to_str().unwrap();
        assert!(
            header(axum::http::header::CONTENT_SECURITY_POLICY).contains("frame-ancestors 'none'")
        );
        assert_eq!(header(axum::http::header::X_FRAME_OPTIONS), "DENY");
        assert_eq!(
            header(axum::http::header::X_CONTENT_TYPE_OPTIONS),
            "nosniff"
        );
    }
}
