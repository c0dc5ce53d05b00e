//! A throwaway certificate authority for TLS tests, made with the
//! `openssl` command (tests/run installs it), and Mosquitto password files
//! made with `mosquitto_passwd`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA and a broker certificate it signed, valid for 127.0.0.1 and
/// localhost, in a temporary directory.
pub struct TestCa {
    pub ca_cert: PathBuf,
    pub broker_cert: PathBuf,
    pub broker_key: PathBuf,
    _dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is installed (tests/run installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes a CA named `name` and a server certificate it signed, valid for
/// 127.0.0.1 and localhost, in `dir`: `ca.pem`, `server.crt`, `server.key`
/// (RSA, which every server here takes, ClickHouse 18.16 included).
pub fn write_certificates(dir: &Path, name: &str) {
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write ext.cnf");
    let subject = format!("/CN={name}");
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", &subject,
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

impl TestCa {
    /// A new CA named `name`, and a broker certificate signed by it.
    pub fn new(name: &str) -> TestCa {
        let dir = tempfile::tempdir().expect("tempdir");
        write_certificates(dir.path(), name);
        TestCa {
            ca_cert: dir.path().join("ca.pem"),
            broker_cert: dir.path().join("server.crt"),
            broker_key: dir.path().join("server.key"),
            _dir: dir,
        }
    }
}

/// Writes a Mosquitto password file at `path` with these accounts.
pub fn password_file(path: &Path, accounts: &[(&str, &str)]) {
    std::fs::write(path, "").expect("create the password file");
    for (user, password) in accounts {
        let out = Command::new("mosquitto_passwd")
            .arg("-b")
            .arg(path)
            .args([user, password])
            .output()
            .expect("mosquitto_passwd is installed with mosquitto");
        assert!(
            out.status.success(),
            "mosquitto_passwd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .expect("chmod the password file");
    }
}
