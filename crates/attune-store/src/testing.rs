//! Test databases (feature `test-database`, dev-only): a fresh, migrated Postgres database
//! per test, and where the test services are.

use sqlx::Connection;
use std::path::PathBuf;

/// Where the services are, from the environment with local defaults.
pub struct TestEnvironment {
    /// A Postgres URL whose user may create databases.
    pub admin_database_url: String,
    pub message_queue_url: String,
    pub agent_binary: PathBuf,
}

impl TestEnvironment {
    pub fn from_env() -> TestEnvironment {
        let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        TestEnvironment {
            admin_database_url: std::env::var("ATTUNE_TEST_DATABASE_URL").unwrap_or_else(|_| {
                "postgres://postgres:postgres@127.0.0.1:5432/postgres".to_string()
            }),
            message_queue_url: std::env::var("ATTUNE_TEST_MQ_URL")
                .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string()),
            agent_binary: std::env::var("ATTUNE_AGENT_BINARY")
                .map(PathBuf::from)
                .unwrap_or_else(|_| workspace.join("agent-dist/attune-agent-x86_64")),
        }
    }
}

/// A fresh, migrated database, dropped by [`TestDatabase::drop_database`].
pub struct TestDatabase {
    pub url: String,
    pub name: String,
    admin_database_url: String,
}

impl Clone for TestDatabase {
    /// Another handle on the same database (a restarted server's).
    fn clone(&self) -> Self {
        TestDatabase {
            url: self.url.clone(),
            name: self.name.clone(),
            admin_database_url: self.admin_database_url.clone(),
        }
    }
}

impl TestDatabase {
    /// Creates an empty database (migrations run when a [`crate::Store`] connects).
    pub async fn create() -> Result<TestDatabase, String> {
        let environment = TestEnvironment::from_env();
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("attune_test_{}", &unique[..12]);
        let mut admin = sqlx::PgConnection::connect(&environment.admin_database_url)
            .await
            .map_err(|error| format!("connect to {}: {error}", environment.admin_database_url))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .map_err(|error| format!("create database {name}: {error}"))?;
        admin.close().await.ok();
        Ok(TestDatabase {
            url: replace_database(&environment.admin_database_url, &name),
            name,
            admin_database_url: environment.admin_database_url,
        })
    }

    /// Drops the database, closing any connection still open to it.
    pub async fn drop_database(&self) -> Result<(), String> {
        let mut admin = sqlx::PgConnection::connect(&self.admin_database_url)
            .await
            .map_err(|error| format!("connect to drop test database: {error}"))?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await
        .map_err(|error| format!("drop test database {}: {error}", self.name))?;
        Ok(())
    }

    /// The failure kind stored for an execution (the API shows only the reason); panics if
    /// the database cannot be reached or holds no such execution.
    pub async fn failure_kind(&self, execution_id: i64) -> Option<String> {
        let store = crate::Store::connect(&self.url, 1)
            .await
            .expect("connect to test database");
        let kind = store
            .get_execution(execution_id)
            .await
            .expect("execution")
            .failure_kind
            .map(|kind| kind.as_str().to_string());
        store.pool().close().await;
        kind
    }
}

/// A fresh database with the pack in `pack_dir` (relative to the workspace root, e.g.
/// `examples/packs/hello`) registered, and a store of `max_connections` on it.
pub async fn store_with_pack(pack_dir: &str, max_connections: u32) -> (TestDatabase, crate::Store) {
    let database = TestDatabase::create().await.expect("create test database");
    let store = crate::Store::connect(&database.url, max_connections)
        .await
        .expect("connect to the test database");
    let pack_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(pack_dir);
    let pack = attune_pack::load_pack_dir(&pack_dir).expect("the test pack loads");
    let archive = pack.to_archive().expect("archive the test pack");
    store
        .register_pack(
            crate::NewPack {
                pack: &pack,
                archive: &archive,
            },
            false,
        )
        .await
        .expect("register the test pack");
    (database, store)
}

/// `postgres://user:pw@host:port/old?x` → same with `new` as the database.
fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|index| index + 3).unwrap_or(0);
    let prefix = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{prefix}/{database}?{query}"),
        None => format!("{prefix}/{database}"),
    }
}

#[cfg(test)]
mod tests {
    use super::replace_database;

    #[test]
    fn database_is_replaced() {
        assert_eq!(
            replace_database("postgres://u:p@127.0.0.1:5432/postgres", "x"),
            "postgres://u:p@127.0.0.1:5432/x"
        );
        assert_eq!(
            replace_database("postgres://u@h/postgres?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }
}
