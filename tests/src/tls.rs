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

impl TestCa {
    /// A new CA named `name`, and a broker certificate signed by it.
    pub fn new(name: &str) -> TestCa {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let subject = format!("/CN={name}");
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", &subject,
        ]);
        openssl(d, &ca);
        let mut csr = vec!["req"];
        csr.extend(ec);
        csr.extend([
            "-keyout",
            "broker.key",
            "-out",
            "broker.csr",
            "-subj",
            "/CN=localhost",
        ]);
        openssl(d, &csr);
        std::fs::write(
            d.join("san.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .expect("write san.cnf");
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "broker.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "broker.pem",
                "-days",
                "2",
                "-extfile",
                "san.cnf",
            ],
        );
        TestCa {
            ca_cert: d.join("ca.pem"),
            broker_cert: d.join("broker.pem"),
            broker_key: d.join("broker.key"),
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
