//! `sslmode` and `sslrootcert` against servers these tests start themselves: a PostgreSQL cluster
//! per test in a temporary directory (`TestCluster`), with a certificate from a CA made for the
//! test, or without TLS at all. The shared server is not used. Every URL carries a password (the
//! clusters trust everyone, so it is never checked), which no error may show.

use std::future::Future;

use libtest_mimic::Failed;
use payments_ports::domain::{Payment, SaveOutcome};
use payments_ports::{PaymentsRepository, RepositoryError, error_chain};
use payments_store_postgres::{PostgresConfig, PostgresPaymentsRepository, SslMode};
use payments_test_support::postgres::TestCluster;
use payments_test_support::tls::TestCa;

const SECRET: &str = "pg-s3cret-pa55";

/// What a test gets: the CA that signed the server's certificate (if it has one), and the server.
struct Fixture {
    ca: TestCa,
    cluster: TestCluster,
}

impl Fixture {
    /// `postgres://postgres:SECRET@<host>:<port>/postgres?<params>`.
    fn url(&self, host: &str, params: &str) -> String {
        let url = self.cluster.url(host).replacen("postgres@", &format!("postgres:{SECRET}@"), 1);
        format!("{url}?{params}")
    }

    /// `sslrootcert=<this test's CA>`.
    fn root(&self) -> String {
        format!("sslrootcert={}", self.ca.cert_path().display())
    }
}

/// Starts a cluster (with TLS and a certificate for `localhost` and `127.0.0.1` when `tls`),
/// runs `test`, and stops and removes the cluster whatever happened.
fn with_cluster<F, Fut>(tls: bool, test: F) -> Result<(), Failed>
where
    F: FnOnce(std::sync::Arc<Fixture>) -> Fut,
    Fut: Future<Output = Result<(), Failed>>,
{
    let ca = TestCa::new("payments test CA")?;
    let cert = if tls { Some(ca.issue(&["localhost", "127.0.0.1"])?) } else { None };
    let cluster = TestCluster::start(cert.as_ref())?;
    let fixture = std::sync::Arc::new(Fixture { ca, cluster });
    let runtime = super::runtime();
    // A failed assertion panics: the cluster is stopped all the same (its Drop), then the panic
    // goes on; otherwise `stop` reports whether it stopped cleanly.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(test(std::sync::Arc::clone(&fixture)))
    }));
    drop(runtime);
    let fixture = std::sync::Arc::into_inner(fixture).ok_or("the test kept its fixture")?;
    let stopped = fixture.cluster.stop().map_err(|err| Failed::from(format!("stopping the cluster: {err}")));
    result.unwrap_or_else(|panic| std::panic::resume_unwind(panic)).and(stopped)
}

/// Connects with `url`, as `application`, so that its sessions can be found.
async fn connect(url: &str, application: &str) -> Result<PostgresPaymentsRepository, RepositoryError> {
    let config =
        PostgresConfig::from_url(url).map_err(|err| RepositoryError::failed_because("config", err))?;
    PostgresPaymentsRepository::connect(config.with_application_name(application)).await
}

/// Whether the sessions of `application` on the cluster use TLS, as the server sees them
/// (`pg_stat_ssl`); asked over a connection of its own without TLS.
async fn sessions_use_tls(fixture: &Fixture, application: &str) -> Result<Vec<bool>, Failed> {
    let url = format!("{}?sslmode=disable", fixture.cluster.url("127.0.0.1"));
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    let rows = client
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = $1",
            &[&application],
        )
        .await?;
    drop(client);
    let _ = driver.await;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Connecting with `url` fails for good (never `Unavailable`: no retry fixes it), with every
/// piece of `expected` in the error and never the password; returns the error's text.
async fn refused(url: &str, expected: &[&str]) -> String {
    let err = match connect(url, "payments-tls-refused").await {
        Ok(store) => {
            let _ = store.close().await;
            panic!("{} must be refused", url.replace(SECRET, "***"))
        }
        Err(err) => err,
    };
    let text = format!("{} {err:?}", error_chain(&err));
    assert!(!err.is_unavailable(), "a TLS refusal is not an outage to wait out: {text}");
    assert!(!text.contains(SECRET), "the password shows: {text}");
    for piece in expected {
        assert!(text.contains(piece), "expected {piece:?} in {text}");
    }
    text
}

fn payment(id: &str) -> Payment {
    Payment::parse(id, 100, "EUR").expect("valid")
}

pub(crate) fn verify_full_with_the_right_ca_and_host_connects_over_tls_and_saves() -> Result<(), Failed> {
    with_cluster(true, |fixture| async move {
        // By name and by address: the certificate names both.
        for host in ["localhost", "127.0.0.1"] {
            let application = format!("payments-tls-{host}");
            let url = fixture.url(host, &format!("sslmode=verify-full&{}", fixture.root()));
            let config = PostgresConfig::from_url(&url)?;
            assert_eq!(config.ssl_mode(), SslMode::VerifyFull);
            assert_eq!(config.ssl_root_cert(), Some(fixture.ca.cert_path()));
            let store = connect(&url, &application).await?;
            assert_eq!(store.save(&payment(&format!("tls-{host}"))).await?, SaveOutcome::New);
            let tls = sessions_use_tls(&fixture, &application).await?;
            assert!(
                !tls.is_empty() && tls.iter().all(|on| *on),
                "every session of the store uses TLS: {tls:?}"
            );
            store.close().await?;
        }
        Ok(())
    })
}

pub(crate) fn verify_full_refuses_a_certificate_for_another_host() -> Result<(), Failed> {
    with_cluster(true, |fixture| async move {
        // The server is reached at 127.0.0.1, but the name checked is the one asked for.
        let url = fixture
            .url("wrong.invalid", &format!("hostaddr=127.0.0.1&sslmode=verify-full&{}", fixture.root()));
        refused(
            &url,
            &[
                "cannot connect to PostgreSQL at wrong.invalid",
                "sslmode=verify-full",
                "does not name the host connected to",
                "certificate not valid for name \"wrong.invalid\"",
            ],
        )
        .await;
        // verify-ca checks the chain only: the same connection is accepted.
        let url =
            fixture.url("wrong.invalid", &format!("hostaddr=127.0.0.1&sslmode=verify-ca&{}", fixture.root()));
        let store = connect(&url, "payments-tls-verify-ca").await?;
        assert_eq!(store.save(&payment("verify-ca")).await?, SaveOutcome::New);
        store.close().await?;
        Ok(())
    })
}

pub(crate) fn verify_full_refuses_an_unknown_ca() -> Result<(), Failed> {
    with_cluster(true, |fixture| async move {
        let stranger = TestCa::new("another test CA")?;
        let other_root = format!("sslrootcert={}", stranger.cert_path().display());
        let not_trusted = ["not signed by a trusted root", "UnknownIssuer"];
        for mode in ["verify-full", "verify-ca", "require"] {
            // `require` with a root file verifies the chain, as libpq does.
            let url = fixture.url("localhost", &format!("sslmode={mode}&{other_root}"));
            refused(&url, &not_trusted).await;
        }
        // Without sslrootcert, the system's roots: they do not know this test's CA either.
        refused(&fixture.url("localhost", "sslmode=verify-full"), &not_trusted).await;
        Ok(())
    })
}

pub(crate) fn require_and_prefer_use_tls_without_checking_the_certificate() -> Result<(), Failed> {
    with_cluster(true, |fixture| async move {
        // No sslrootcert, a CA nobody trusts, a name the certificate lacks: encrypted all the same.
        for mode in ["require", "prefer"] {
            let application = format!("payments-tls-{mode}");
            let url = fixture.url("wrong.invalid", &format!("hostaddr=127.0.0.1&sslmode={mode}"));
            let store = connect(&url, &application).await?;
            assert_eq!(store.save(&payment(mode)).await?, SaveOutcome::New);
            assert_eq!(
                sessions_use_tls(&fixture, &application).await?,
                [true],
                "{mode} uses TLS when offered"
            );
            store.close().await?;
        }
        Ok(())
    })
}

pub(crate) fn disable_connects_in_plain_text_to_a_tls_server() -> Result<(), Failed> {
    with_cluster(true, |fixture| async move {
        let store = connect(&fixture.url("localhost", "sslmode=disable"), "payments-tls-disable").await?;
        assert_eq!(store.save(&payment("plain")).await?, SaveOutcome::New);
        assert_eq!(sessions_use_tls(&fixture, "payments-tls-disable").await?, [false]);
        store.close().await?;
        Ok(())
    })
}

pub(crate) fn require_never_falls_back_to_plain_text() -> Result<(), Failed> {
    with_cluster(false, |fixture| async move {
        for mode in ["require", "verify-ca", "verify-full"] {
            let url = fixture.url("localhost", &format!("sslmode={mode}&{}", fixture.root()));
            let text = refused(&url, &["server does not support TLS", &format!("sslmode={mode}")]).await;
            assert!(text.contains("cannot connect to PostgreSQL at localhost"), "{text}");
        }
        // Nothing was written in plain text: the store never got as far as creating its schema.
        let (client, connection) =
            tokio_postgres::connect(&fixture.cluster.url("127.0.0.1"), tokio_postgres::NoTls).await?;
        let driver = tokio::spawn(connection);
        let schemas = client.query("SELECT 1 FROM pg_namespace WHERE nspname = 'payments'", &[]).await?;
        drop(client);
        let _ = driver.await;
        assert!(schemas.is_empty(), "no statement ran without TLS");
        Ok(())
    })
}

pub(crate) fn prefer_connects_in_plain_text_to_a_server_without_tls() -> Result<(), Failed> {
    with_cluster(false, |fixture| async move {
        // The default is prefer.
        for (application, params) in [("payments-tls-default", ""), ("payments-tls-prefer", "sslmode=prefer")]
        {
            let store = connect(&fixture.url("localhost", params), application).await?;
            assert_eq!(store.save(&payment(application)).await?, SaveOutcome::New);
            assert_eq!(sessions_use_tls(&fixture, application).await?, [false]);
            store.close().await?;
        }
        Ok(())
    })
}
