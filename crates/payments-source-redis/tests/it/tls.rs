//! `rediss://` against servers these tests start themselves (`TlsRedis`: TLS only, a certificate
//! from a CA made for the test, a password), and against the shared plain-text server. Every URL
//! carries a password, which no error may show.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use libtest_mimic::Failed;
use payments_ports::{DeliverySource, OutgoingMessage, Publisher, error_chain};
use payments_source_redis::{
    RedisDeadLetters, RedisPublisher, RedisSource, RedisSourceConfig, RedisStreamConfig,
};
use payments_test_support::redis::{self as test_redis, TlsRedis};
use payments_test_support::tls::TestCa;

const SECRET: &str = "redis-s3cret-pa55";

/// Starts a TLS-only server presenting a certificate for `names` (from a CA of the test's own),
/// runs `test` with the CA and the server, and kills the server and removes every file whatever
/// happened (their `Drop`s, during a panic too).
fn with_server<F, Fut>(names: &[&str], test: F) -> Result<(), Failed>
where
    F: FnOnce(TestCa, u16) -> Fut,
    Fut: Future<Output = Result<(), Failed>>,
{
    let ca = TestCa::new("payments test CA")?;
    let cert = ca.issue(names)?;
    let server = TlsRedis::start(&cert, &ca, Some(SECRET))?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let result = runtime.block_on(test(ca, server.port()));
    drop(runtime);
    drop(server);
    result
}

/// `rediss://:SECRET@<host>:<port>?<params>`.
fn tls_url(host: &str, port: u16, params: &str) -> String {
    format!("rediss://:{SECRET}@{host}:{port}?{params}")
}

fn ssl_ca(ca: &TestCa) -> String {
    format!("ssl-ca={}", ca.cert_path().display())
}

/// The source, the dead-letter sink and the publisher all refuse `params` on `host:port` for good
/// (never unavailable: no retry fixes a certificate), with every piece of `expected` in their
/// errors and never the password.
async fn refused(host: &str, port: u16, params: &str, expected: &[&str]) {
    let source = RedisSourceConfig::from_url(&tls_url(host, port, &format!("stream=s&group=g&{params}")))
        .expect("a valid source URL");
    let stream = RedisStreamConfig::from_url(&tls_url(host, port, &format!("stream=s&{params}")))
        .expect("a valid stream URL");
    let errors = [
        RedisSource::connect(source).await.map(drop).map_err(|err| (err.is_unavailable(), error_chain(&err))),
        RedisDeadLetters::connect(stream.clone())
            .await
            .map(drop)
            .map_err(|err| (err.is_unavailable(), error_chain(&err))),
        RedisPublisher::connect(stream)
            .await
            .map(drop)
            .map_err(|err| (err.is_unavailable(), error_chain(&err))),
    ];
    for (who, result) in ["source", "dead letters", "publisher"].into_iter().zip(errors) {
        let (unavailable, text) = result.err().unwrap_or_else(|| panic!("the {who} must refuse {params}"));
        assert!(!unavailable, "{who}: a TLS refusal is not an outage to wait out: {text}");
        assert!(!text.contains(SECRET), "{who}: the password shows: {text}");
        for piece in expected {
            assert!(text.contains(piece), "{who}: expected {piece:?} in {text}");
        }
    }
}

pub(crate) fn rediss_with_the_right_ca_and_host_publishes_and_consumes() -> Result<(), Failed> {
    with_server(&["localhost", "127.0.0.1"], |ca, port| async move {
        let params = format!("stream=payments-tls&{}", ssl_ca(&ca));
        let stream = RedisStreamConfig::from_url(&tls_url("127.0.0.1", port, &params))?;
        assert_eq!(stream.ssl_ca(), Some(ca.cert_path()));
        let publisher = RedisPublisher::connect(stream).await?;
        let message =
            OutgoingMessage { id: Some("m-1".to_owned()), payload: Bytes::from_static(b"over TLS") };
        publisher.publish(std::slice::from_ref(&message)).await?;

        let config = RedisSourceConfig::from_url(&tls_url(
            "127.0.0.1",
            port,
            &format!("{params}&group=g&consumer=c&claim-idle-ms=400"),
        ))?;
        let mut source = RedisSource::connect(config).await?;
        let delivery = tokio::time::timeout(Duration::from_secs(10), source.next())
            .await
            .map_err(|_| "no delivery within 10 s")??
            .ok_or("the source ended")?;
        assert_eq!(crate::support::body(&delivery), b"over TLS");
        delivery.receipt.ack();
        source.close().await?;

        let sink = RedisDeadLetters::connect(RedisStreamConfig::from_url(&tls_url(
            "localhost",
            port,
            &format!("stream=dead&{}", ssl_ca(&ca)),
        ))?)
        .await;
        assert!(sink.is_ok(), "the certificate names localhost too: {:?}", sink.err());
        Ok(())
    })
}

pub(crate) fn rediss_refuses_a_certificate_for_another_host() -> Result<(), Failed> {
    with_server(&["other.invalid"], |ca, port| async move {
        let expected = ["does not name the URL's host", "certificate not valid for name \"127.0.0.1\""];
        refused("127.0.0.1", port, &ssl_ca(&ca), &expected).await;
        Ok(())
    })
}

pub(crate) fn rediss_refuses_an_unknown_ca() -> Result<(), Failed> {
    with_server(&["localhost", "127.0.0.1"], |_ca, port| async move {
        let stranger = TestCa::new("another test CA")?;
        let expected = ["not signed by a trusted root", "UnknownIssuer"];
        refused("127.0.0.1", port, &ssl_ca(&stranger), &expected).await;
        // Without ssl-ca, the system's roots: they do not know this test's CA either.
        refused("127.0.0.1", port, "", &expected).await;
        Ok(())
    })
}

/// `rediss://` to the shared plain-text server: no connection, and nothing sent in plain text
/// instead. The server reads the TLS hello as the start of an inline command and waits for its
/// end, so the handshake times out: that looks like a slow network, and is `Unavailable` (without
/// the `tls` feature, nothing is even tried, and that is a failure).
pub(crate) fn rediss_never_falls_back_to_plain_text() -> Result<(), Failed> {
    let plain = url::Url::parse(&test_redis::url())?;
    let host = plain.host_str().ok_or("the test server's URL has no host")?.to_owned();
    let port = plain.port().unwrap_or(6379);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let config = RedisSourceConfig::from_url(&tls_url(&host, port, "stream=s&group=g"))?;
    let err = runtime.block_on(RedisSource::connect(config)).map(drop).expect_err("no TLS there");
    let text = error_chain(&err);
    assert!(!text.contains(SECRET), "the password shows: {text}");
    if cfg!(feature = "tls") {
        assert!(text.contains("timed out") || text.contains("the TLS handshake failed"), "{text}");
    } else {
        assert!(!err.is_unavailable() && text.contains("`tls` feature"), "{text}");
    }
    Ok(())
}
