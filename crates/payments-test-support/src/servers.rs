//! Fresh places on the servers tests need, found by the server's name: how the crash torture and
//! the benchmarks reach any store of the app's table that lives on a server (`TestEnv::Server` in
//! its entry). A new server gets its module here (its own tests need one anyway) and a line below.

use crate::Gate;

/// An error of the helpers.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A place of a test's own on a server: a schema, a database. Remove it with [`Place::remove`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Place {
    /// A PostgreSQL schema (the store creates it when it connects).
    #[cfg(feature = "postgres")]
    Postgres(crate::postgres::TestSchema),
    /// A MySQL or MariaDB database.
    #[cfg(feature = "mysql")]
    Mysql(crate::mysql::TestDatabase),
}

impl Place {
    /// A fresh place on the server called `server`, named from `prefix`.
    ///
    /// # Errors
    ///
    /// When no server of that name is built in, or it refuses.
    pub async fn fresh(server: &str, prefix: &str) -> Result<Self, BoxError> {
        let _ = prefix;
        match server {
            #[cfg(feature = "postgres")]
            "postgres" => Ok(Self::Postgres(crate::postgres::TestSchema::new(prefix))),
            #[cfg(feature = "mysql")]
            "mysql" => Ok(Self::Mysql(crate::mysql::TestDatabase::create(prefix).await?)),
            other => Err(unknown(other).into()),
        }
    }

    /// The URL a store spec names it by.
    pub fn url(&self) -> String {
        match *self {
            #[cfg(feature = "postgres")]
            Self::Postgres(ref schema) => schema.url(),
            #[cfg(feature = "mysql")]
            Self::Mysql(ref database) => database.url(),
        }
    }

    /// Removes the place and everything in it.
    ///
    /// # Errors
    ///
    /// The server's error.
    pub async fn remove(&self) -> Result<(), BoxError> {
        match *self {
            #[cfg(feature = "postgres")]
            Self::Postgres(ref schema) => Ok(schema.drop_schema().await?),
            #[cfg(feature = "mysql")]
            Self::Mysql(ref database) => database.drop_database().await,
        }
    }
}

fn unknown(server: &str) -> String {
    format!("no test helpers for a server called `{server}` in payments-test-support (is its feature on?)")
}

/// Whether the server called `server` answers: the gate for tests that need it.
pub async fn gate(server: &str) -> Gate {
    match server {
        #[cfg(feature = "postgres")]
        "postgres" => crate::postgres::gate().await,
        #[cfg(feature = "mysql")]
        "mysql" => crate::mysql::gate().await,
        other => Gate::Fail(unknown(other)),
    }
}
