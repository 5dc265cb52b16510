//! The PostgreSQL adapter against the conformance suite, durable and shared cases included.
//! Needs a server: `PAYMENTS_TEST_POSTGRES_URL`, default postgres://postgres@127.0.0.1:5432/test.

use std::process::ExitCode;
use std::sync::Arc;

use payments_conformance::{BoxError, Capabilities, Harness};
use payments_ports::PaymentsRepository;
use payments_store_postgres::{PostgresConfig, PostgresPaymentsRepository};
use payments_test_support::postgres::{self as pg, TestSchema};

struct PostgresHarness;

#[async_trait::async_trait]
impl Harness for PostgresHarness {
    /// Each case gets a schema of its own, dropped when the case ends.
    type Env = TestSchema;

    fn adapter(&self) -> &'static str {
        "postgres"
    }

    /// Survives reconnecting and SIGKILLs, several pools (several processes) share one schema, and
    /// it keeps an outbox that several relays share.
    fn capabilities(&self) -> Capabilities {
        Capabilities { durable: true, shared: true, killable: true, outbox: true }
    }

    async fn available(&self) -> Result<(), String> {
        pg::reachable().await
    }

    async fn setup(&self) -> Result<TestSchema, BoxError> {
        Ok(TestSchema::new("conformance"))
    }

    async fn open(&self, schema: &TestSchema) -> Result<Arc<dyn PaymentsRepository>, BoxError> {
        self.open_at(&schema.url()).await
    }

    fn locate(&self, schema: &TestSchema) -> Option<String> {
        Some(schema.url())
    }

    async fn open_at(&self, url: &str) -> Result<Arc<dyn PaymentsRepository>, BoxError> {
        Ok(Arc::new(PostgresPaymentsRepository::connect(PostgresConfig::from_url(url)?).await?))
    }

    async fn teardown(&self, schema: &TestSchema) -> Result<(), BoxError> {
        Ok(schema.drop_schema().await?)
    }
}

fn main() -> ExitCode {
    payments_conformance::main(PostgresHarness)
}
