//! `tillwatch` roles (gateway, api, scheduler, alerter) as child
//! processes, for tests that kill them or check what a deployment sees.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::{http_get, wait_for};

/// A running `tillwatch` role; killed on drop so a failing test does not
/// leave it behind.
pub struct RoleProcess {
    child: Child,
    /// Where it serves /healthz, /readyz and /metrics.
    pub http: SocketAddr,
    /// What it printed before its HTTP address (the gRPC address, say).
    pub printed: Vec<String>,
}

/// The gateway role.
pub type GatewayProcess = RoleProcess;

/// The binary under test, built by this crate beside the test binaries
/// (`target/<profile>/tillwatch-under-test`; tests run from `…/deps/`).
pub fn tillwatch_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps");
    let bin = profile_dir.join("tillwatch-under-test");
    assert!(bin.exists(), "{} is built with the tests", bin.display());
    bin
}

impl RoleProcess {
    /// Starts a gateway against `broker` with `data_dir`, plus `env`
    /// (`TILLWATCH__…` overrides), and reads the HTTP address it prints.
    pub fn start(broker: &str, data_dir: &Path, env: &[(&str, &str)]) -> RoleProcess {
        RoleProcess::in_dir("gateway", data_dir, &["--broker", broker], env)
    }

    /// A gateway of the shared subscription group `tillwatch`, client id
    /// `id`, writing to `lake`, its data in `dir/ID`, plus `env`.
    pub fn shared_gateway(
        broker: &str,
        id: &str,
        dir: &Path,
        lake: &Path,
        env: &[(&str, &str)],
    ) -> RoleProcess {
        let mut all = vec![
            ("TILLWATCH__MQTT__CLIENT_ID", id),
            ("TILLWATCH__MQTT__SHARED_GROUP", "tillwatch"),
            (
                "TILLWATCH__LAKE__PATH",
                lake.to_str().expect("a UTF-8 path"),
            ),
        ];
        all.extend_from_slice(env);
        RoleProcess::start(broker, &dir.join(id), &all)
    }

    /// Three gateways of the shared group, `gw-a`, `gw-b` and `gw-c`
    /// (as [`RoleProcess::shared_gateway`]); options, so that a test can
    /// take one out.
    pub fn shared_gateways(
        broker: &str,
        dir: &Path,
        lake: &Path,
        env: &[(&str, &str)],
    ) -> Vec<Option<RoleProcess>> {
        ["gw-a", "gw-b", "gw-c"]
            .iter()
            .map(|id| Some(RoleProcess::shared_gateway(broker, id, dir, lake, env)))
            .collect()
    }

    /// `tillwatch ROLE ARGS… --http-listen 127.0.0.1:0 --data-dir DATA_DIR`
    /// with `env`.
    pub fn in_dir(role: &str, data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> RoleProcess {
        let data_dir = data_dir.to_str().expect("a UTF-8 path");
        let mut all = vec![role];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--http-listen", "127.0.0.1:0", "--data-dir", data_dir]);
        RoleProcess::role(&all, env)
    }

    /// Runs `tillwatch ARGS` with `env` and reads its stdout up to the
    /// `http listening on ADDR` line every role prints last.
    pub fn role(args: &[&str], env: &[(&str, &str)]) -> RoleProcess {
        RoleProcess::spawn(args, env, Stdio::inherit())
    }

    /// As [`RoleProcess::role`], its log (stderr) written to `log`.
    pub fn role_logging_to(args: &[&str], env: &[(&str, &str)], log: &Path) -> RoleProcess {
        let file = std::fs::File::create(log).expect("create the log file");
        RoleProcess::spawn(args, env, Stdio::from(file))
    }

    fn spawn(args: &[&str], env: &[(&str, &str)], stderr: Stdio) -> RoleProcess {
        let mut command = Command::new(tillwatch_bin());
        command
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("TILLWATCH_TEST_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start tillwatch");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut printed = Vec::new();
        let http = loop {
            let mut line = String::new();
            let n = stdout
                .read_line(&mut line)
                .expect("read tillwatch's stdout");
            assert!(
                n > 0,
                "tillwatch {args:?} ended before printing its HTTP address; it printed {printed:?}"
            );
            match line.trim().strip_prefix("http listening on ") {
                Some(addr) => break addr.parse().expect("an address"),
                None => printed.push(line.trim().to_string()),
            }
        };
        RoleProcess {
            child,
            http,
            printed,
        }
    }

    /// Waits until /readyz answers 200 (a gateway: connected and subscribed).
    pub async fn ready(&self) {
        let http = self.http;
        wait_for(
            "the role to report ready on /readyz",
            Duration::from_secs(30),
            || matches!(http_get(http, "/readyz"), Ok((200, _))),
        )
        .await;
    }

    /// The value of an unlabelled metric, if exported yet.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = http_get(self.http, "/metrics").ok()?;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// The value of a metric for the label set containing `label`
    /// (`name="value"`), if exported yet.
    pub fn metric_labelled(&self, name: &str, label: &str) -> Option<f64> {
        let (_, body) = http_get(self.http, "/metrics").ok()?;
        body.lines().find_map(|l| {
            let labels = l.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, value) = labels.split_once("} ")?;
            labels
                .split(',')
                .any(|l| l == label)
                .then(|| value.trim().parse().ok())?
        })
    }

    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// Sends `signal` (SIGSTOP to freeze it mid-work, SIGCONT to thaw it).
    pub fn signal(&self, signal: i32) {
        let pid = self.child.id() as i32;
        assert_eq!(send_signal(pid, signal), 0, "signal {signal} to {pid}");
    }

    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id() as i32;
        assert_eq!(send_signal(pid, libc::SIGTERM), 0);
        self.child.wait().expect("reap")
    }
}

impl Drop for RoleProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[allow(unsafe_code)]
pub(crate) fn send_signal(pid: i32, signal: i32) -> i32 {
    // SAFETY: sending a signal to our own child process has no memory effects.
    unsafe { libc::kill(pid, signal) }
}
