//! A local S3-compatible server for the object-storage lake's tests: moto's
//! server mode (`moto[server]` from PyPI, in the test venv), on a free port
//! with one empty bucket.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// The one bucket the server starts with.
pub const BUCKET: &str = "tillwatch-lake";
/// Credentials the test clients sign with (moto accepts any).
pub const ACCESS_KEY_ID: &str = "tillwatch-test";
pub const SECRET_ACCESS_KEY: &str = "tillwatch-test-secret";

const SERVER: &str = r#"
import sys, urllib.request
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
host, port = server.get_host_and_port()
urllib.request.urlopen(urllib.request.Request(
    "http://%s:%d/%s" % (host, port, sys.argv[1]), method="PUT")).read()
print(port, flush=True)
sys.stdin.read()
server.stop()
"#;

/// A running moto S3 server; stopped on drop.
pub struct S3Server {
    child: Child,
    pub port: u16,
}

impl S3Server {
    pub fn start() -> S3Server {
        let python = std::env::var("TILLWATCH_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(&python)
            .args(["-c", SERVER, BUCKET])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{python}: {e} (tests/run installs the test venv)"));
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("read the server's port");
        let port = line.trim().parse().unwrap_or_else(|_| {
            panic!("moto's S3 server did not start ({line:?}); is moto[server] in {python}'s venv?")
        });
        S3Server { child, port }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The options a client of this server uses.
    pub fn options(&self) -> tillwatch_storage::LakeS3Config {
        tillwatch_storage::LakeS3Config {
            endpoint: Some(self.endpoint()),
            region: Some("us-east-1".into()),
            access_key_id: Some(ACCESS_KEY_ID.into()),
            secret_access_key: Some(SECRET_ACCESS_KEY.into()),
            allow_http: true,
            secret_access_key_file: None,
        }
    }

    /// `s3://<bucket>/<prefix>`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
