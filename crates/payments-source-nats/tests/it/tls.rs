//! `tls://` against servers these tests start themselves (`TlsNats`: TLS only, JetStream, a
//! certificate from a CA made for the test, a user with a password), against the shared
//! plain-text server, and against a plain-text server faked here that records what the client
//! sends. Every URL carries a password or a token, which no error may show. The streams a test
//! makes on its own server go with the server's directory.

use std::future::Future;
use std::io::{Read as _, Write as _};
use std::time::Duration;

use bytes::Bytes;
use libtest_mimic::Failed;
use payments_ports::{DeadLetterSink, DeliverySource, OutgoingMessage, Publisher, error_chain};
use payments_source_nats::{NatsDeadLetters, NatsPublisher, NatsSource, NatsSourceConfig, NatsStreamConfig};
use payments_test_support::nats::{self as test_nats, TlsNats};
use payments_test_support::tls::TestCa;

use crate::support::{PATIENCE, body, next_within};

const USER: &str = "app";
const SECRET: &str = "nats-s3cret-pa55";
/// A token: alone before the `@`, a secret as a whole.
const TOKEN: &str = "nats-t0ken-s3cret";

/// How long a refusal may take: connecting gives up after 5 s, and is never tried again.
const REFUSAL_WITHIN: Duration = Duration::from_secs(15);

/// Starts a TLS-only server presenting a certificate for `names` (from a CA of the test's own),
/// admitting `USER` with `SECRET`, runs `test` with the CA and the server's port, and kills the
/// server and removes every file (its store too) whatever happened (their `Drop`s, during a panic
/// too).
fn with_server<F, Fut>(names: &[&str], test: F) -> Result<(), Failed>
where
    F: FnOnce(TestCa, u16) -> Fut,
    Fut: Future<Output = Result<(), Failed>>,
{
    let ca = TestCa::new("payments test CA")?;
    let cert = ca.issue(names)?;
    let server = TlsNats::start(&cert, Some((USER, SECRET)))?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let result = runtime.block_on(test(ca, server.port()));
    drop(runtime);
    drop(server);
    result
}

/// `tls://USER:SECRET@<host>:<port>?<params>`.
fn tls_url(host: &str, port: u16, params: &str) -> String {
    format!("tls://{USER}:{SECRET}@{host}:{port}?{params}")
}

fn ssl_ca(ca: &TestCa) -> String {
    format!("ssl-ca={}", ca.cert_path().display())
}

/// How connecting ended: `None` when it worked, else whether the error was "unavailable" and its
/// whole chain.
type Outcome = Option<(bool, String)>;

/// `future` within [`REFUSAL_WITHIN`]: connecting must end, one way or the other, and not be
/// tried again and again.
async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(REFUSAL_WITHIN, future)
        .await
        .unwrap_or_else(|_| panic!("connecting neither worked nor failed within {REFUSAL_WITHIN:?}"))
}

/// Connects a source, a dead-letter sink and a publisher to `server` (a `tls://` address, with
/// credentials) with the extra `params`: how each ended.
async fn connect_all(server: &str, params: &str) -> [(&'static str, Outcome); 3] {
    let source = NatsSourceConfig::from_url(&format!("{server}?stream=S&subject=s&consumer=c{params}"))
        .expect("a valid source URL");
    let stream =
        NatsStreamConfig::from_url(&format!("{server}?stream=D&subject=d{params}")).expect("a valid URL");
    let source = within(NatsSource::connect(source)).await;
    let dead_letters = within(NatsDeadLetters::connect(stream.clone())).await;
    let publisher = within(NatsPublisher::connect(stream)).await;
    [
        ("source", source.map(drop).err().map(|err| (err.is_unavailable(), error_chain(&err)))),
        ("dead letters", dead_letters.map(drop).err().map(|err| (err.is_unavailable(), error_chain(&err)))),
        ("publisher", publisher.map(drop).err().map(|err| (err.is_unavailable(), error_chain(&err)))),
    ]
}

/// The source, the dead-letter sink and the publisher all refuse `server` with `params` for good
/// (never unavailable: no retry fixes a certificate), with every piece of `expected` in their
/// errors and never a secret.
async fn refused(server: &str, params: &str, expected: &[&str]) {
    for (who, outcome) in connect_all(server, params).await {
        let (unavailable, text) = outcome.unwrap_or_else(|| panic!("the {who} must refuse {server}{params}"));
        assert!(!unavailable, "{who}: a TLS refusal is not an outage to wait out: {text}");
        assert!(!text.contains(SECRET) && !text.contains(TOKEN), "{who}: a secret shows: {text}");
        for piece in expected {
            assert!(text.contains(piece), "{who}: expected {piece:?} in {text}");
        }
    }
}

pub(crate) fn tls_with_the_right_ca_and_host_publishes_and_consumes() -> Result<(), Failed> {
    with_server(&["localhost", "127.0.0.1"], |ca, port| async move {
        let params = format!("stream=PAYMENTS&subject=payments.tls&{}", ssl_ca(&ca));
        let stream = NatsStreamConfig::from_url(&tls_url("localhost", port, &params))?;
        assert_eq!(stream.ssl_ca(), Some(ca.cert_path()));
        assert!(!format!("{stream} {stream:?}").contains(SECRET), "{stream:?}");
        let publisher = NatsPublisher::connect(stream).await?;
        let message =
            OutgoingMessage { id: Some("m-1".to_owned()), payload: Bytes::from_static(b"over TLS") };
        publisher.publish(std::slice::from_ref(&message)).await?;
        publisher.close().await?;

        let config =
            NatsSourceConfig::from_url(&tls_url("localhost", port, &format!("{params}&consumer=c")))?;
        assert_eq!(config.ssl_ca(), Some(ca.cert_path()));
        let mut source = NatsSource::connect(config).await?;
        let delivery = next_within(&mut source, PATIENCE).await.ok_or("no delivery over TLS")?;
        assert_eq!(body(&delivery), b"over TLS");
        delivery.receipt.ack();
        source.close().await?;

        // The certificate names 127.0.0.1 too.
        let sink = NatsDeadLetters::connect(NatsStreamConfig::from_url(&tls_url(
            "127.0.0.1",
            port,
            &format!("stream=DEAD&subject=payments.dead&{}", ssl_ca(&ca)),
        ))?)
        .await?;
        sink.close().await?;
        Ok(())
    })
}

pub(crate) fn tls_refuses_a_certificate_for_another_host() -> Result<(), Failed> {
    // Issued for "localhost" alone: 127.0.0.1 is the same server, but not a name it has.
    with_server(&["localhost"], |ca, port| async move {
        let expected = ["does not name the URL's host", "certificate not valid for name \"127.0.0.1\""];
        refused(&format!("tls://{USER}:{SECRET}@127.0.0.1:{port}"), &format!("&{}", ssl_ca(&ca)), &expected)
            .await;
        // And a certificate for another name altogether, from the same server's CA.
        let other = ca.issue(&["other.example"])?;
        let elsewhere = TlsNats::start(&other, Some((USER, SECRET)))?;
        let server = format!("tls://{USER}:{SECRET}@localhost:{}", elsewhere.port());
        refused(&server, &format!("&{}", ssl_ca(&ca)), &["does not name the URL's host", "localhost"]).await;
        Ok(())
    })
}

pub(crate) fn tls_refuses_an_unknown_ca() -> Result<(), Failed> {
    with_server(&["localhost", "127.0.0.1"], |_ca, port| async move {
        let stranger = TestCa::new("another test CA")?;
        let expected = ["not signed by a trusted root", "UnknownIssuer"];
        let server = format!("tls://{USER}:{SECRET}@localhost:{port}");
        refused(&server, &format!("&{}", ssl_ca(&stranger)), &expected).await;
        // Without ssl-ca, the system's roots: they do not know this test's CA either.
        refused(&server, "", &expected).await;
        // A token is kept as secret as a password.
        refused(&format!("tls://{TOKEN}@localhost:{port}"), "", &expected).await;
        Ok(())
    })
}

/// Right CA and host, wrong credentials: refused by the server, for good, and neither the
/// password nor the token shows in any error.
pub(crate) fn tls_credentials_never_show_in_errors() -> Result<(), Failed> {
    with_server(&["localhost", "127.0.0.1"], |ca, port| async move {
        let ca_param = format!("&{}", ssl_ca(&ca));
        for server in [
            format!("tls://{USER}:{SECRET}-wrong@localhost:{port}"),
            format!("tls://{TOKEN}@localhost:{port}"),
        ] {
            for (who, outcome) in connect_all(&server, &ca_param).await {
                let (unavailable, text) = outcome.unwrap_or_else(|| panic!("the {who} must be refused"));
                assert!(!unavailable, "{who}: bad credentials are not an outage: {text}");
                assert!(!text.contains(SECRET) && !text.contains(TOKEN), "{who}: a secret shows: {text}");
                assert!(text.contains("authorization violation"), "{who}: {text}");
                assert!(text.contains(&format!("localhost:{port}")), "{who}: says where: {text}");
            }
        }
        // Shown configurations star them too.
        let source = NatsSourceConfig::from_url(&tls_url(
            "localhost",
            port,
            &format!("stream=S&subject=s&consumer=c{ca_param}"),
        ))?;
        let shown = format!("{source} {source:?} {source:#?}");
        assert!(!shown.contains(SECRET) && shown.contains(&format!("{USER}:***@")), "{shown}");
        Ok(())
    })
}

/// `tls://` to the shared plain-text server: no connection, and no fallback to plain text. The
/// client upgrades after the server's INFO whatever it says; the server takes the TLS hello for
/// a bad command and hangs up, and the handshake fails.
pub(crate) fn tls_never_falls_back_to_plain_text() -> Result<(), Failed> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let server = format!("tls://{USER}:{SECRET}@{}", test_nats::address());
    for (who, outcome) in runtime.block_on(connect_all(&server, "")) {
        let (_, text) = outcome.unwrap_or_else(|| panic!("the {who} must not connect without TLS"));
        assert!(!text.contains(SECRET), "{who}: the password shows: {text}");
        assert!(
            text.contains("the TLS handshake failed") || text.contains("tls handshake"),
            "{who}: says it is the TLS handshake: {text}"
        );
    }
    Ok(())
}

/// A server that says it does not do TLS (its INFO has no `tls_required`) gets a TLS hello and
/// nothing else: no CONNECT, no credentials, in plain text. (It hangs up then, which the client
/// cannot tell from a network fault: that error may be `Unavailable`.)
pub(crate) fn tls_sends_nothing_in_plain_text_to_a_server_without_tls() -> Result<(), Failed> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    let port = listener.local_addr()?.port();
    let fake = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let (mut stream, _) = listener.accept()?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let info = format!(
            "INFO {{\"server_id\":\"FAKE\",\"server_name\":\"fake\",\"version\":\"2.9.10\",\"proto\":1,\"host\":\"127.0.0.1\",\"port\":{port},\"headers\":true,\"max_payload\":1048576}}\r\n"
        );
        stream.write_all(info.as_bytes())?;
        let mut received = vec![0_u8; 4096];
        let n = stream.read(&mut received)?;
        received.truncate(n);
        Ok(received)
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let config = NatsSourceConfig::from_url(&format!(
        "tls://{USER}:{SECRET}@127.0.0.1:{port}?stream=S&subject=s&consumer=c"
    ))?;
    let err = runtime.block_on(within(NatsSource::connect(config))).map(drop).expect_err("a fake server");
    let text = error_chain(&err);
    assert!(!text.contains(SECRET), "the password shows: {text}");
    let received = fake.join().map_err(|_| "the fake server panicked")??;
    assert_eq!(received.first(), Some(&0x16), "a TLS handshake record first: {received:?}");
    let plain = String::from_utf8_lossy(&received);
    assert!(!plain.contains("CONNECT") && !plain.contains(SECRET), "plain text sent: {plain}");
    Ok(())
}
