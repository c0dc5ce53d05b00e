//! A private ClickHouse server per test: its own data directory, free
//! ports, a user with a password for the credential tests. Killed on drop.
//! `tests/run` installs Debian's clickhouse-server when it is missing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// A user the test server knows, with a password (test data, not a secret).
pub const TEST_USER: &str = "tillwatch";
pub const TEST_PASSWORD: &str = "test-only-password";

pub struct ClickHouseServer {
    child: Option<Child>,
    pub http_port: u16,
    /// Set by [`ClickHouseServer::start_tls`].
    pub https_port: Option<u16>,
    dir: tempfile::TempDir,
}

fn write_config(dir: &Path, http_port: u16, tcp_port: u16, https_port: Option<u16>) {
    let tls = match https_port {
        Some(port) => format!(
            "<https_port>{port}</https_port>\n  <openSSL><server><certificateFile>{d}/server.crt</certificateFile>\
             <privateKeyFile>{d}/server.key</privateKeyFile><verificationMode>none</verificationMode>\
             <loadDefaultCAFile>false</loadDefaultCAFile><disableProtocols>sslv2,sslv3</disableProtocols>\
             </server></openSSL>",
            d = dir.display()
        ),
        None => String::new(),
    };
    let d = dir.display();
    let users = format!(
        r#"<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
  <users>
    <default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota></default>
    <{TEST_USER}><password>{TEST_PASSWORD}</password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota></{TEST_USER}>
  </users>
  <quotas><default></default></quotas>
</yandex>
"#
    );
    std::fs::write(dir.join("users.xml"), users).expect("write users.xml");
    let config = format!(
        r#"<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/error.log</errorlog><console>0</console></logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>{http_port}</http_port>
  <tcp_port>{tcp_port}</tcp_port>
  {tls}
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>104857600</mark_cache_size>
</yandex>
"#
    );
    std::fs::write(dir.join("config.xml"), config).expect("write config.xml");
}

/// A query that did not answer: the connection failed, or the server
/// refused it (its status line and message, e.g. `Code: 62 … Syntax error`).
#[derive(Debug)]
pub enum QueryError {
    Io(std::io::Error),
    Server(String),
}

impl From<std::io::Error> for QueryError {
    fn from(e: std::io::Error) -> Self {
        QueryError::Io(e)
    }
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueryError::Io(e) => write!(f, "{e}"),
            QueryError::Server(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for QueryError {}

impl QueryError {
    /// Whether the message holds `text` (`false` for a connection error).
    pub fn contains(&self, text: &str) -> bool {
        matches!(self, QueryError::Server(m) if m.contains(text))
    }
}

impl ClickHouseServer {
    /// Starts a server and waits until it answers queries.
    pub fn start() -> ClickHouseServer {
        ClickHouseServer::start_with(false)
    }

    /// Also serves HTTPS with a certificate from a throwaway CA
    /// ([`Self::ca_file`]).
    pub fn start_tls() -> ClickHouseServer {
        ClickHouseServer::start_with(true)
    }

    pub fn https_url(&self) -> String {
        format!(
            "https://127.0.0.1:{}",
            self.https_port.expect("started with TLS")
        )
    }

    /// The CA that signed the HTTPS certificate.
    pub fn ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn start_with(tls: bool) -> ClickHouseServer {
        let mut dir = tempfile::tempdir().expect("tempdir");
        if tls {
            crate::tls::write_certificates(dir.path(), "tillwatch test CA");
        }
        for _attempt in 0..5 {
            let (http_port, tcp_port) = (free_port(), free_port());
            let https_port = tls.then(free_port);
            write_config(dir.path(), http_port, tcp_port, https_port);
            let mut server = ClickHouseServer {
                child: None,
                http_port,
                https_port,
                dir,
            };
            if server.spawn_and_wait() {
                return server;
            }
            dir = server.take_dir();
        }
        panic!("ClickHouse did not start on free ports five times");
    }

    fn take_dir(mut self) -> tempfile::TempDir {
        self.stop();
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }

    fn spawn_and_wait(&mut self) -> bool {
        let child = Command::new("clickhouse-server")
            .arg(format!(
                "--config-file={}",
                self.dir.path().join("config.xml").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("clickhouse-server is installed (tests/run installs it)");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if self.query("SELECT 1").is_ok_and(|r| r.trim() == "1") {
                return true;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Kills the server (SIGKILL): an outage, not a shutdown.
    pub fn kill(&mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the killed server again on the same ports and data.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "kill it first");
        assert!(self.spawn_and_wait(), "ClickHouse restarts on its ports");
    }

    /// Runs `sql` over HTTP as the default user; the body (TSV) or the
    /// server's error.
    pub fn query(&self, sql: &str) -> Result<String, QueryError> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.http_port))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let request = format!(
            "POST / HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{sql}",
            sql.len()
        );
        stream.write_all(request.as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") {
            Ok(body.to_string())
        } else {
            Err(QueryError::Server(format!(
                "{}: {body}",
                head.lines().next().unwrap_or("")
            )))
        }
    }

    /// Like [`Self::query`], panicking on an error.
    pub fn q(&self, sql: &str) -> String {
        self.query(sql)
            .unwrap_or_else(|e| panic!("ClickHouse query failed: {sql}: {e}"))
    }

    /// A single number.
    pub fn scalar(&self, sql: &str) -> u64 {
        let out = self.q(sql);
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{sql} gave {out:?}, not a number"))
    }
}

impl Drop for ClickHouseServer {
    fn drop(&mut self) {
        self.stop();
    }
}
