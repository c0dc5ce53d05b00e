//! For tests of crates that use the store: a throwaway database on a
//! real PostgreSQL server (`TILLWATCH_TEST_POSTGRES_URL`, by default the
//! local one with trust auth, as `tests/run` provides) or a SQLite file.

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::any::install_default_drivers;

/// The server tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("TILLWATCH_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A database of its own for one test; dropped by [`TestDatabase::drop_it`]
/// (a leftover one is harmless: every name is new).
pub struct TestDatabase {
    pub url: String,
    name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    pub async fn postgres() -> TestDatabase {
        static N: AtomicU32 = AtomicU32::new(0);
        install_default_drivers();
        let name = format!(
            "tw_test_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        );
        let admin_url = postgres_admin_url();
        let admin = sqlx::AnyPool::connect(&admin_url)
            .await
            .expect("PostgreSQL answers (tests/run starts it)");
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("create a test database");
        admin.close().await;
        let base = &admin_url[..admin_url.rfind('/').expect("a database in the URL")];
        TestDatabase {
            url: format!("{base}/{name}"),
            name: Some(name),
            _dir: None,
        }
    }

    pub fn sqlite() -> TestDatabase {
        let dir = tempfile::tempdir().expect("a temporary directory");
        TestDatabase {
            url: format!("sqlite://{}", dir.path().join("meta.db").display()),
            name: None,
            _dir: Some(dir),
        }
    }

    pub async fn drop_it(self) {
        if let Some(name) = self.name
            && let Ok(admin) = sqlx::AnyPool::connect(&postgres_admin_url()).await
        {
            let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&admin)
                .await;
        }
    }
}
