//! The MySQL store against the conformance suite, durable and shared cases included.
//! Needs a server: `PAYMENTS_TEST_MYSQL_URL`, default mysql://root@127.0.0.1:3306/test.

use std::process::ExitCode;
use std::sync::Arc;

use payments_conformance::{BoxError, Capabilities, Harness};
use payments_ports::PaymentsRepository;
use payments_store_mysql::{MysqlConfig, MysqlPaymentsRepository};
use payments_test_support::mysql::{self as server, TestDatabase};

struct MysqlHarness;

#[async_trait::async_trait]
impl Harness for MysqlHarness {
    /// Each case gets a database of its own, dropped when the case ends.
    type Env = TestDatabase;

    fn adapter(&self) -> &'static str {
        "mysql"
    }

    /// Survives reconnecting and SIGKILLs, and several pools (several processes) share one database.
    fn capabilities(&self) -> Capabilities {
        Capabilities { durable: true, shared: true, killable: true, outbox: false }
    }

    async fn available(&self) -> Result<(), String> {
        server::reachable().await
    }

    async fn setup(&self) -> Result<TestDatabase, BoxError> {
        TestDatabase::create("conformance").await
    }

    async fn open(&self, database: &TestDatabase) -> Result<Arc<dyn PaymentsRepository>, BoxError> {
        self.open_at(&database.url()).await
    }

    fn locate(&self, database: &TestDatabase) -> Option<String> {
        Some(database.url())
    }

    async fn open_at(&self, url: &str) -> Result<Arc<dyn PaymentsRepository>, BoxError> {
        Ok(Arc::new(MysqlPaymentsRepository::connect(MysqlConfig::from_url(url)?).await?))
    }

    async fn teardown(&self, database: &TestDatabase) -> Result<(), BoxError> {
        database.drop_database().await
    }
}

fn main() -> ExitCode {
    payments_conformance::main(MysqlHarness)
}
