//! The merchant directory source job against a real PostgreSQL standing in
//! for a CRM: a few lines of config (a URL and a query, as
//! `[scheduler.merchant_directory]` gives them) import merchants and stores
//! with their time zones and hours into the metadata store and the lake; a
//! row with a bad time zone is skipped and named; a query with a column
//! Tillwatch does not read fails the run and says which.

use std::sync::Arc;

use tillwatch_config::{DirectorySource, SourceDeclaration};
use tillwatch_meta::MetaStore;
use tillwatch_meta::testing::TestDatabase;
use tillwatch_rollups::directory::{Directory, MERCHANT_DIRECTORY};
use tillwatch_rollups::embedded::Embedded;
use tillwatch_rollups::source;
use tillwatch_scheduler::{Grain, Partition};
use tillwatch_storage::{Lake, read_file};

/// 2026-11-20T10:00Z.
const NOW: i64 = 1_795_132_800_000 + 10 * 3_600_000;

#[tokio::test]
async fn stores_and_their_hours_come_from_the_crm() {
    let crm = TestDatabase::postgres().await;
    let pool = sqlx::AnyPool::connect(&crm.url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE crm_merchants (id INT PRIMARY KEY, code TEXT, title TEXT);
         CREATE TABLE crm_shops (code TEXT, merchant INT, label TEXT, tz TEXT, open_hours TEXT);
         INSERT INTO crm_merchants VALUES (1, 'm-1', 'Corner Bakery'), (2, 'm-2', 'Bike Shop');
         INSERT INTO crm_shops VALUES
           ('s-1', 1, 'Main Street', 'Europe/Berlin', 'Mon-Fri 07:00-18:00, Sat 08:00-12:00'),
           ('s-2', 1, 'Station', 'Europe/Berlin', '24h'),
           ('s-9', 2, 'Harbour', 'Mars/Olympus', 'Mon-Sun 10:00-18:00'),
           ('s-3', 2, 'Harbour', NULL, NULL);",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let meta_db = TestDatabase::sqlite();
    let store = MetaStore::connect(&meta_db.url).await.unwrap();
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::new(dir.path().join("lake"));
    let directory = Directory {
        store: store.clone(),
        lake: Embedded::new(lake.clone()),
        clickhouse: None,
        clock: Arc::new(|| NOW),
    };
    let import = async |query: &str, hour: Partition| {
        let source = SourceDeclaration::merchant_directory(&DirectorySource {
            url: crm.url.clone(),
            query: query.into(),
            connect_timeout: std::time::Duration::from_secs(10),
        });
        let rows = source::fetch(MERCHANT_DIRECTORY, &source, hour).await?;
        directory.apply(MERCHANT_DIRECTORY, hour, &rows).await
    };
    let hour = Partition::containing(Grain::Hour, NOW - 3_600_000);

    let good = "SELECT m.code AS merchant_id, m.title AS merchant_name, s.code AS store_id, \
                s.label AS store_name, s.tz AS time_zone, s.open_hours AS hours \
           FROM crm_shops s JOIN crm_merchants m ON m.id = s.merchant";
    let out = import(good, hour).await.unwrap();
    assert_eq!(out.rows, 3, "the store in an unknown time zone is skipped");

    let stores = store.stores().await.unwrap();
    let keys: Vec<(&str, &str)> = stores
        .iter()
        .map(|s| (s.merchant_id.as_str(), s.store_id.as_str()))
        .collect();
    assert_eq!(keys, [("m-1", "s-1"), ("m-1", "s-2"), ("m-2", "s-3")]);
    assert_eq!(stores[0].time_zone.as_deref(), Some("Europe/Berlin"));
    assert_eq!(
        stores[0].hours.as_deref(),
        Some("Mon-Fri 07:00-18:00, Sat 08:00-12:00")
    );
    assert_eq!(stores[0].updated_at_ms, NOW);
    assert_eq!(stores[2].hours, None);
    let merchants = store.merchants().await.unwrap();
    assert_eq!(merchants[0].name.as_deref(), Some("Corner Bakery"));
    assert_eq!(merchants.len(), 2);

    // The snapshot is in the lake too.
    let path = Embedded::new(lake.clone()).output_path(MERCHANT_DIRECTORY, hour);
    let rows: usize = read_file(&path).unwrap().iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 3);

    // A re-import of an unchanged directory gives the same output.
    assert_eq!(
        import(good, hour).await.unwrap().fingerprint,
        out.fingerprint
    );

    // Mistakes in the query are named.
    let e = import(
        "SELECT code AS store_id, 'm-1' AS merchant_id, label FROM crm_shops",
        hour,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("\"label\"") && e.contains("rename with AS"),
        "{e}"
    );
    let e = import("SELECT code AS store_id FROM crm_shops", hour)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("no merchant_id column"), "{e}");
    let e = import(
        "SELECT code AS merchant_id, code AS store_id FROM crm_shops WHERE false",
        hour,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("no rows"), "{e}");

    // A numeric id is read as its digits.
    let next = Partition::containing(Grain::Hour, NOW);
    import(
        "SELECT merchant AS merchant_id, code AS store_id FROM crm_shops WHERE code = 's-3'",
        next,
    )
    .await
    .unwrap();
    let stores = store.stores().await.unwrap();
    assert!(
        stores
            .iter()
            .any(|s| s.merchant_id == "2" && s.store_id == "s-3"),
        "{stores:?}"
    );

    crm.drop_it().await;
}
