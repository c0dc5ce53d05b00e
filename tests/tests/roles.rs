//! The roles a deployment runs as separate processes (`tillwatch api`,
//! `scheduler`, `alerter`): each serves the probes and metrics a
//! Kubernetes Deployment points at, answers its own work, and stops
//! cleanly on SIGTERM.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tillwatch_integration_tests::{
    Mosquitto, RoleProcess, http_call, http_get, tillwatch_bin, wait_for,
};

const VIEWER: &str = "roles-test-viewer-token";

/// A config file for the api role: one viewer token, gRPC on a free port.
fn api_config(dir: &Path, with_tokens: bool) -> std::path::PathBuf {
    let mut toml = String::from("[grpc]\nlisten = \"127.0.0.1:0\"\n");
    if with_tokens {
        toml.push_str(&format!(
            "\n[[http.tokens]]\nname = \"support\"\nrole = \"viewer\"\ntoken = \"{VIEWER}\"\n"
        ));
    }
    let path = dir.join("api.toml");
    std::fs::write(&path, toml).expect("write the config");
    path
}

fn data_dir_arg(dir: &Path) -> String {
    dir.join("data").to_str().expect("UTF-8").to_string()
}

/// What a Kubernetes probe and a Prometheus scrape ask of every role.
fn assert_probes(role: &RoleProcess) {
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, body) = http_get(role.http, path).unwrap();
        assert_eq!(status, 200, "{path}: {body}");
    }
}

#[tokio::test]
async fn the_api_role_serves_the_api_behind_its_tokens_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = api_config(dir.path(), true);
    let data = data_dir_arg(dir.path());
    let mut api = RoleProcess::role(
        &[
            "api",
            "--config",
            config.to_str().unwrap(),
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
            &data,
        ],
        &[],
    );
    api.ready().await;
    assert_probes(&api);
    assert!(
        api.printed
            .iter()
            .any(|l| l.starts_with("grpc listening on")),
        "{:?}",
        api.printed
    );

    let (status, _) = http_call(api.http, "GET", "/api/v1/fleet", None, None).unwrap();
    assert_eq!(status, 401, "the API needs a token");
    let (status, body) = http_call(api.http, "GET", "/api/v1/fleet", None, Some(VIEWER)).unwrap();
    assert_eq!(status, 200, "{body}");
    let fleet: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(fleet.get("worst").is_some(), "{fleet}");
    let (status, _) = http_get(api.http, "/api/v1/openapi.json").unwrap();
    assert_eq!(status, 200);

    let exit = api.terminate();
    assert!(
        exit.success(),
        "the api role exits cleanly on SIGTERM: {exit}"
    );
}

#[tokio::test]
async fn the_api_role_refuses_to_start_without_tokens_and_says_which_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = api_config(dir.path(), false);
    let mut child = Command::new(tillwatch_bin())
        .args(["api", "--config", config.to_str().unwrap()])
        .args(["--http-listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir_arg(dir.path()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    wait_for("the api role to exit", Duration::from_secs(30), || {
        status = child.try_wait().unwrap();
        status.is_some()
    })
    .await;
    assert!(!status.unwrap().success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("http.tokens"), "{stderr}");
}

#[tokio::test]
async fn the_scheduler_and_alerter_roles_serve_probes_and_stop_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir_arg(dir.path());
    let scheduler = RoleProcess::role(
        &[
            "scheduler",
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
            &data,
        ],
        &[],
    );
    scheduler.ready().await;
    assert_probes(&scheduler);

    let broker = Mosquitto::start();
    let url = broker.url();
    // Its own SQLite file: in production both share one PostgreSQL.
    let alerter_data = dir.path().join("alerter").to_str().unwrap().to_string();
    let alerter = RoleProcess::role(
        &[
            "alerter",
            "--broker",
            &url,
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
            &alerter_data,
        ],
        &[],
    );
    alerter.ready().await;
    assert_probes(&alerter);

    for (name, mut role) in [("scheduler", scheduler), ("alerter", alerter)] {
        let exit = role.terminate();
        assert!(
            exit.success(),
            "the {name} exits cleanly on SIGTERM: {exit}"
        );
    }
}
