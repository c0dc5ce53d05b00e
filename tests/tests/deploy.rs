//! `deploy/` is what operators run, so it is checked like code: the Compose
//! file against the Compose specification's parser, the Kubernetes
//! manifests against the API schemas (both strict, through
//! tests/lib/check_deploy.py and the venv tests/run makes), every role
//! configuration through `tillwatch check-config`, every command line the
//! deployment runs against this build's binary, and the Dockerfile against
//! the workspace's packages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tillwatch_integration_tests::{tillwatch_bin, workspace_root};

fn python() -> String {
    std::env::var("TILLWATCH_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn check_deploy(dir: &Path) -> Output {
    Command::new(python())
        .arg(workspace_root().join("tests/lib/check_deploy.py"))
        .arg(dir)
        .output()
        .expect("run check_deploy.py (run the tests through tests/run, which makes the venv)")
}

fn tillwatch(args: &[&str]) -> Output {
    Command::new(tillwatch_bin())
        .args(args)
        .output()
        .expect("run tillwatch")
}

/// `tillwatch check-config` on `path`, reading token files or not.
fn check_config(path: &Path, secret_files: bool) -> Output {
    let path = path.to_str().expect("a UTF-8 path");
    let mut args = vec!["check-config", "--config", path];
    if !secret_files {
        args.push("--no-secret-files");
    }
    tillwatch(&args)
}

/// `check-config` refuses `path` and its message names `named`.
fn assert_refused_naming(path: &Path, named: &str) {
    let check = check_config(path, true);
    assert!(!check.status.success(), "{} was accepted", path.display());
    let stderr = text(&check.stderr);
    assert!(stderr.contains(named), "{stderr}");
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `/etc/tillwatch/X` inside the image is `deploy/config/X` here (the
/// Dockerfile copies it there; the ConfigMap mounts the same files).
fn local_path(arg: &str) -> String {
    match arg.strip_prefix("/etc/tillwatch/") {
        Some(file) => workspace_root()
            .join("deploy/config")
            .join(file)
            .to_string_lossy()
            .into_owned(),
        None => arg.to_string(),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        // Following links: deploy/clickhouse/schema links to the DDL.
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn the_compose_file_and_the_manifests_pass_their_schemas_and_run_real_commands() {
    let deploy = workspace_root().join("deploy");
    let out = check_deploy(&deploy);
    assert!(
        out.status.success(),
        "deploy/ does not validate:\n{}",
        text(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let commands = doc["commands"].as_array().expect("commands");
    // Every role runs in both Compose and Kubernetes, and the schema job.
    for role in ["gateway", "api", "scheduler", "alerter", "migrate"] {
        let runs = commands
            .iter()
            .filter(|c| c["args"][0].as_str() == Some(role))
            .count();
        assert!(runs >= 2, "{role} runs {runs} times in {commands:#?}");
    }
    for command in commands {
        let args: Vec<String> = command["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| local_path(a.as_str().expect("a string")))
            .collect();
        let mut with_help: Vec<&str> = args.iter().map(String::as_str).collect();
        with_help.push("--help");
        let run = tillwatch(&with_help);
        assert!(
            run.status.success(),
            "{}: `tillwatch {}` is not a command of this build:\n{}",
            command["where"],
            args.join(" "),
            text(&run.stderr)
        );
        if let Some(i) = args.iter().position(|a| a == "--config") {
            let check = check_config(Path::new(&args[i + 1]), false);
            assert!(
                check.status.success(),
                "{}: {} does not pass check-config:\n{}",
                command["where"],
                args[i + 1],
                text(&check.stderr)
            );
        }
    }
    // Infrastructure images are pinned; only ours is built as latest.
    for image in doc["images"].as_array().expect("images") {
        let image = image.as_str().unwrap();
        assert!(
            image == "tillwatch:latest" || (image.contains(':') && !image.ends_with(":latest")),
            "image {image:?} is not pinned to a version"
        );
    }
}

#[test]
fn a_misspelt_key_fails_the_deploy_checks_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("deploy");
    copy_dir(&workspace_root().join("deploy"), &copy);
    // Compose mounts the dashboards from beside deploy/.
    copy_dir(
        &workspace_root().join("dashboards"),
        &dir.path().join("dashboards"),
    );
    let out = check_deploy(&copy);
    assert!(
        out.status.success(),
        "the copy validates: {}",
        text(&out.stderr)
    );

    // Each misspelling alone: the checks fail and name what is wrong.
    let misspell = |file: &str, from: &str, to: &str, named: &str| {
        let path = copy.join(file);
        let before = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, before.replacen(from, to, 1)).unwrap();
        let out = check_deploy(&copy);
        let stderr = text(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(named),
            "{file}: {stderr}"
        );
        std::fs::write(&path, before).unwrap();
    };
    misspell("k8s/lake.yaml", "accessModes", "accesModes", "accesModes");
    misspell("compose.yaml", "restart:", "restrat:", "restrat");
    misspell(
        "config/gateway.toml",
        "shared_group",
        "shared_grup",
        "gateway.toml differs",
    );

    let config = copy.join("config/gateway.toml");
    let before = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, before.replace("shared_group", "shared_grup")).unwrap();
    assert_refused_naming(&config, "shared_grup");
}

#[test]
fn every_role_configuration_passes_the_services_own_checks() {
    let dir = workspace_root().join("deploy/config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path: PathBuf = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let check = check_config(&path, false);
        assert!(
            check.status.success(),
            "{}:\n{}",
            path.display(),
            text(&check.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} role configs in deploy/config");
    // Without the flag a token file that is not mounted is an error that
    // names it.
    assert_refused_naming(&dir.join("api.toml"), "tillwatch-viewer-token");
}

#[test]
fn the_dockerfile_builds_packages_and_binaries_the_workspace_has() {
    let root = workspace_root();
    let dockerfile = std::fs::read_to_string(root.join("deploy/Dockerfile")).unwrap();
    let metadata = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--no-deps", "--format-version", "1", "--locked"])
        .current_dir(&root)
        .output()
        .expect("cargo metadata");
    assert!(metadata.status.success(), "{}", text(&metadata.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&metadata.stdout).unwrap();
    let packages = metadata["packages"].as_array().unwrap();
    let build = dockerfile
        .split_once("cargo build")
        .and_then(|(_, rest)| rest.split("&&").next())
        .expect("the Dockerfile runs cargo build");
    let built_words: Vec<&str> = build.split_whitespace().collect();
    let mut built = 0;
    for pair in built_words.windows(2) {
        if pair[0] == "-p" {
            let package = packages
                .iter()
                .find(|p| p["name"] == pair[1])
                .unwrap_or_else(|| {
                    panic!("the Dockerfile builds {}, not a workspace package", pair[1])
                });
            let has_bin = package["targets"].as_array().unwrap().iter().any(|t| {
                t["name"] == pair[1] && t["kind"].as_array().unwrap().iter().any(|k| k == "bin")
            });
            assert!(has_bin, "package {} has no binary of its name", pair[1]);
            built += 1;
        }
    }
    for word in dockerfile.split_whitespace() {
        if let Some(binary) = word.strip_prefix("target/release/") {
            assert!(
                dockerfile.contains(&format!("-p {binary}")),
                "the Dockerfile copies {binary} without building it"
            );
        }
    }
    assert!(built >= 2, "{dockerfile}");
    for line in dockerfile.lines().filter(|l| l.starts_with("COPY deploy/")) {
        let source = line.split_whitespace().nth(1).unwrap();
        assert!(
            root.join(source).exists(),
            "the Dockerfile copies missing {source}"
        );
    }
}

/// The Prometheus configuration loads its alert rules, and the rules fire
/// and end as `rules.test.yml` says (a gateway whose disk is full, one
/// without its broker, no active alerter), by Prometheus's own `promtool`.
/// Each rule's metric is one the roles export.
#[test]
fn the_prometheus_alert_rules_load_and_fire_when_they_should() {
    let dir = workspace_root().join("deploy/prometheus");
    for args in [
        vec!["check", "config", "prometheus.yml"],
        vec!["test", "rules", "rules.test.yml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("promtool is installed (tests/run installs prometheus)");
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    let rules = std::fs::read_to_string(dir.join("rules.yml")).unwrap();
    let sources = [
        "services/tillwatch-gateway/src/metrics.rs",
        "services/tillwatch-alerter/src/run.rs",
    ]
    .map(|p| std::fs::read_to_string(workspace_root().join(p)).unwrap())
    .concat();
    for metric in rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("tillwatch_"))
    {
        assert!(
            sources.contains(&format!("\"{metric}\"")),
            "rules.yml uses {metric}, which no role exports"
        );
    }
}
