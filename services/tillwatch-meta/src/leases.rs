//! Leases: one holder at a time for work that must not run twice at once
//! (the alerter's evaluation and delivery), over the shared store. A
//! holder renews its lease well within its length; another takes it over
//! only once it has lapsed.

use sqlx::Row;

use crate::{MetaError, MetaStore};

impl MetaStore {
    /// Takes or renews the lease `name` for `holder` until `until_ms`:
    /// true when `holder` holds it now (it was free, lapsed at `now_ms`, or
    /// already `holder`'s).
    pub async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, MetaError> {
        let done = sqlx::query(
            "INSERT INTO leases (name, holder, until_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms \
             WHERE leases.holder = excluded.holder OR leases.until_ms < $4",
        )
        .bind(name)
        .bind(holder)
        .bind(until_ms)
        .bind(now_ms)
        .execute(self.pool())
        .await
        .map_err(self.db())?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives the lease up at once (a clean stop), if `holder` has it.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), MetaError> {
        sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(self.pool())
            .await
            .map_err(self.db())?;
        Ok(())
    }

    /// Who holds the lease `name`, and until when.
    pub async fn lease_holder(&self, name: &str) -> Result<Option<(String, i64)>, MetaError> {
        let row = sqlx::query("SELECT holder, until_ms FROM leases WHERE name = $1")
            .bind(name)
            .fetch_optional(self.pool())
            .await
            .map_err(self.db())?;
        row.map(|r| Ok((r.try_get("holder")?, r.try_get("until_ms")?)))
            .transpose()
            .map_err(self.db())
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::TestDatabase;

    async fn one_holder_at_a_time(url: &str) {
        let store = crate::MetaStore::connect(url).await.unwrap();
        store.migrate().await.unwrap();
        assert!(store.acquire_lease("alerter", "a", 0, 100).await.unwrap());
        assert!(!store.acquire_lease("alerter", "b", 50, 150).await.unwrap());
        assert!(store.acquire_lease("alerter", "a", 90, 190).await.unwrap());
        assert!(!store.acquire_lease("alerter", "b", 190, 290).await.unwrap());
        assert!(store.acquire_lease("alerter", "b", 191, 291).await.unwrap());
        assert_eq!(
            store.lease_holder("alerter").await.unwrap(),
            Some(("b".to_string(), 291))
        );
        assert!(!store.acquire_lease("alerter", "a", 200, 300).await.unwrap());
        store.release_lease("alerter", "a").await.unwrap();
        assert!(store.lease_holder("alerter").await.unwrap().is_some());
        store.release_lease("alerter", "b").await.unwrap();
        assert!(store.acquire_lease("alerter", "a", 200, 300).await.unwrap());
    }

    #[tokio::test]
    async fn one_holder_at_a_time_on_sqlite() {
        let db = TestDatabase::sqlite();
        one_holder_at_a_time(&db.url).await;
    }

    #[tokio::test]
    async fn one_holder_at_a_time_on_postgres() {
        let db = TestDatabase::postgres().await;
        one_holder_at_a_time(&db.url).await;
        db.drop_it().await;
    }
}
