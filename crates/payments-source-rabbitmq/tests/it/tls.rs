//! `amqps://` against RabbitMQ nodes these tests start themselves (`TlsRabbit`: TLS only, a
//! certificate from a CA made for the test, a user with a password), against the shared
//! plain-text server, and against a plain-text server faked here that records what the client
//! sends. Every URL carries a password, which no error may show. The queues a test makes on its
//! own node go with the node's directory.

use std::future::Future;
use std::io::{Read as _, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use libtest_mimic::Failed;
use payments_ports::{
    DeadLetter, DeadLetterKind, DeadLetterSink, DeliverySource, OutgoingMessage, Payload, Publisher,
    error_chain,
};
use payments_source_rabbitmq::{
    RabbitDeadLetters, RabbitPublisher, RabbitSource, RabbitSourceConfig, RabbitTargetConfig,
};
use payments_test_support::rabbitmq::{self as test_rabbitmq, TlsRabbit};
use payments_test_support::tls::TestCa;

use crate::support::{PATIENCE, body, next_within};

const USER: &str = "app";
const SECRET: &str = "amqp-s3cret-pa55";

/// How long a refusal may take: connecting gives up after 10 s, and is never tried again.
const REFUSAL_WITHIN: Duration = Duration::from_secs(15);

/// Set in the environment of this binary run again by
/// [`tls_ssl_ca_replaces_the_system_roots`]: what [`only_ssl_ca_child`] checks.
pub(crate) const CHILD_ENV: &str = "PAYMENTS_TEST_RABBITMQ_TLS_CHILD";

/// Starts a TLS-only node presenting a certificate for `names` (from a CA of the test's own),
/// admitting `USER` with `SECRET`, runs `test` with the CA and the node's port, and kills the
/// node and removes every file (its database too) whatever happened (their `Drop`s, during a
/// panic too).
fn with_server<F, Fut>(names: &[&str], test: F) -> Result<(), Failed>
where
    F: FnOnce(TestCa, u16) -> Fut,
    Fut: Future<Output = Result<(), Failed>>,
{
    let ca = TestCa::new("payments test CA")?;
    let cert = ca.issue(names)?;
    let server = TlsRabbit::start(&ca, &cert, Some((USER, SECRET)))?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let result = runtime.block_on(test(ca, server.port()));
    drop(runtime);
    drop(server);
    result
}

/// `amqps://USER:SECRET@<host>:<port>/%2f`.
fn server_url(host: &str, port: u16) -> String {
    format!("amqps://{USER}:{SECRET}@{host}:{port}/%2f")
}

fn ssl_ca(ca: &TestCa) -> String {
    format!("&ssl-ca={}", ca.cert_path().display())
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

/// Connects a source, a dead-letter sink and a publisher to `server` (an `amqps://` address, with
/// credentials) with the extra `params`: how each ended.
async fn connect_all(server: &str, params: &str) -> [(&'static str, Outcome); 3] {
    let source = RabbitSourceConfig::from_url(&format!("{server}?queue=payments{params}"))
        .expect("a valid source URL");
    let target = RabbitTargetConfig::from_url(&format!("{server}?queue=dead{params}")).expect("a valid URL");
    let source = within(RabbitSource::connect(source)).await;
    let dead_letters = within(RabbitDeadLetters::connect(target.clone())).await;
    let publisher = within(RabbitPublisher::connect(target)).await;
    [
        ("source", source.map(drop).err().map(|err| (err.is_unavailable(), error_chain(&err)))),
        ("dead letters", dead_letters.map(drop).err().map(|err| (err.is_unavailable(), error_chain(&err)))),
        ("publisher", publisher.map(drop).err().map(|err| (err.is_unavailable(), error_chain(&err)))),
    ]
}

/// The source, the dead-letter sink and the publisher all refuse `server` with `params` for good
/// (never unavailable: no retry fixes a certificate), with every piece of `expected` in their
/// errors and never the password.
async fn refused(server: &str, params: &str, expected: &[&str]) {
    for (who, outcome) in connect_all(server, params).await {
        let (unavailable, text) = outcome.unwrap_or_else(|| panic!("the {who} must refuse {server}{params}"));
        assert!(!unavailable, "{who}: a TLS refusal is not an outage to wait out: {text}");
        assert!(!text.contains(SECRET), "{who}: the password shows: {text}");
        for piece in expected {
            assert!(text.contains(piece), "{who}: expected {piece:?} in {text}");
        }
    }
}

pub(crate) fn tls_with_the_right_ca_and_host_publishes_consumes_and_dead_letters() -> Result<(), Failed> {
    with_server(&["localhost"], |ca, port| async move {
        let server = server_url("localhost", port);
        let target = RabbitTargetConfig::from_url(&format!("{server}?queue=payments{}", ssl_ca(&ca)))?;
        assert_eq!(target.ssl_ca(), Some(ca.cert_path()));
        assert!(!format!("{target} {target:?}").contains(SECRET), "{target:?}");
        let publisher = RabbitPublisher::connect(target).await?;
        let message =
            OutgoingMessage { id: Some("m-1".to_owned()), payload: Bytes::from_static(b"over TLS") };
        publisher.publish(std::slice::from_ref(&message)).await?;
        publisher.close().await?;

        let config = RabbitSourceConfig::from_url(&format!("{server}?queue=payments{}", ssl_ca(&ca)))?;
        assert_eq!(config.ssl_ca(), Some(ca.cert_path()));
        let mut source = RabbitSource::connect(config).await?;
        let delivery = next_within(&mut source, PATIENCE).await.ok_or("no delivery over TLS")?;
        assert_eq!(body(&delivery), b"over TLS");
        assert_eq!(delivery.attempt, 1);
        delivery.receipt.ack();
        source.close().await?;

        let sink = RabbitDeadLetters::connect(RabbitTargetConfig::from_url(&format!(
            "{server}?queue=dead{}",
            ssl_ca(&ca)
        ))?)
        .await?;
        let letter = DeadLetter {
            kind: DeadLetterKind::Invalid,
            reason: "amount: not a number".to_owned(),
            origin: "rabbitmq queue payments delivery 1".to_owned(),
            attempt: 1,
            payload: Payload::Complete(Bytes::from_static(b"{\"amount\":\"x\"}")),
            conflict: None,
        };
        sink.put(&letter).await?;
        sink.close().await?;
        // The letter is there, read back over TLS too.
        let mut dead = RabbitSource::connect(RabbitSourceConfig::from_url(&format!(
            "{server}?queue=dead{}",
            ssl_ca(&ca)
        ))?)
        .await?;
        let delivery = next_within(&mut dead, PATIENCE).await.ok_or("no dead letter over TLS")?;
        assert_eq!(body(&delivery), b"{\"amount\":\"x\"}");
        delivery.receipt.ack();
        dead.close().await?;
        Ok(())
    })
}

pub(crate) fn tls_refuses_a_certificate_for_another_host() -> Result<(), Failed> {
    // Issued for "localhost" alone: 127.0.0.1 is the same node, but not a name it has.
    with_server(&["localhost"], |ca, port| async move {
        let expected = ["does not name the URL's host", "certificate not valid for name \"127.0.0.1\""];
        let started = std::time::Instant::now();
        refused(&server_url("127.0.0.1", port), &ssl_ca(&ca), &expected).await;
        assert!(started.elapsed() < REFUSAL_WITHIN, "refused at once, not retried");
        Ok(())
    })
}

pub(crate) fn tls_refuses_an_unknown_ca() -> Result<(), Failed> {
    with_server(&["localhost"], |_ca, port| async move {
        let stranger = TestCa::new("another test CA")?;
        let expected = ["not signed by a trusted root", "UnknownIssuer"];
        let server = server_url("localhost", port);
        refused(&server, &ssl_ca(&stranger), &expected).await;
        // Without ssl-ca, the system's roots: they do not know this test's CA either.
        refused(&server, "", &expected).await;
        Ok(())
    })
}

/// `ssl-ca` replaces the system's roots, it does not add to them: with the system's roots made
/// the node's CA (`SSL_CERT_FILE`, which rustls-native-certs reads), in a run of this binary of its
/// own, a URL without `ssl-ca` connects, and one whose `ssl-ca` is another CA is refused.
pub(crate) fn tls_ssl_ca_replaces_the_system_roots() -> Result<(), Failed> {
    with_server(&["localhost"], |ca, port| async move {
        let stranger = TestCa::new("another test CA")?;
        let output = std::process::Command::new(std::env::current_exe()?)
            .env("SSL_CERT_FILE", ca.cert_path())
            .env_remove("SSL_CERT_DIR")
            .env(CHILD_ENV, format!("{port}\n{}", stranger.cert_path().display()))
            .output()?;
        let said =
            format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "the run with SSL_CERT_FILE failed ({}): {said}", output.status);
        assert!(said.contains("system roots: connected") && said.contains("ssl-ca: refused"), "{said}");
        Ok(())
    })
}

/// What [`tls_ssl_ca_replaces_the_system_roots`] checks in a run of its own, `spec` being
/// `<port>\n<another CA's file>`: exits with success when both hold.
#[allow(clippy::print_stdout)]
pub(crate) fn only_ssl_ca_child(spec: &str) -> ExitCode {
    let Some((port, stranger)) = spec.split_once('\n') else {
        println!("bad {CHILD_ENV}: {spec:?}");
        return ExitCode::FAILURE;
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return ExitCode::FAILURE;
    };
    let server = format!("amqps://{USER}:{SECRET}@localhost:{port}/%2f");
    runtime.block_on(async {
        let mut ok = true;
        let config = RabbitSourceConfig::from_url(&format!("{server}?queue=payments")).expect("valid");
        match within(RabbitSource::connect(config)).await {
            Ok(mut source) => {
                println!("system roots: connected");
                let _ = source.close().await;
            }
            Err(err) => {
                println!("system roots: {}", error_chain(&err));
                ok = false;
            }
        }
        let config = RabbitSourceConfig::from_url(&format!("{server}?queue=payments&ssl-ca={stranger}"))
            .expect("valid");
        match within(RabbitSource::connect(config)).await {
            Ok(_) => {
                println!("ssl-ca: connected, trusting the system's roots beside ssl-ca's");
                ok = false;
            }
            Err(err) => {
                let text = error_chain(&err);
                let refused = !err.is_unavailable() && text.contains("not signed by a trusted root");
                println!("ssl-ca: {}: {text}", if refused { "refused" } else { "failed otherwise" });
                ok &= refused;
            }
        }
        if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
    })
}

/// Right CA and host, wrong password: refused by the node, for good, and the password shows in
/// no error.
pub(crate) fn tls_credentials_never_show_in_errors() -> Result<(), Failed> {
    with_server(&["localhost"], |ca, port| async move {
        let server = format!("amqps://{USER}:{SECRET}-wrong@localhost:{port}/%2f");
        for (who, outcome) in connect_all(&server, &ssl_ca(&ca)).await {
            let (unavailable, text) = outcome.unwrap_or_else(|| panic!("the {who} must be refused"));
            assert!(!unavailable, "{who}: a wrong password is not an outage: {text}");
            assert!(!text.contains(SECRET), "{who}: the password shows: {text}");
            assert!(text.contains("ACCESS_REFUSED") || text.contains("access refused"), "{who}: {text}");
            assert!(
                text.contains(&format!("amqps://{USER}:***@localhost:{port}")),
                "{who}: says where: {text}"
            );
        }
        // Shown configurations star it too.
        let source = RabbitSourceConfig::from_url(&format!(
            "{}?queue=q{}",
            server_url("localhost", port),
            ssl_ca(&ca)
        ))?;
        let shown = format!("{source} {source:?} {source:#?}");
        assert!(!shown.contains(SECRET) && shown.contains(&format!("{USER}:***@")), "{shown}");
        Ok(())
    })
}

/// `amqps://` to the shared plain-text server: no connection, and no fallback to plain text. The
/// server answers the TLS hello with its AMQP protocol header, which rustls refuses: for good.
pub(crate) fn tls_never_falls_back_to_plain_text() -> Result<(), Failed> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let url = test_rabbitmq::url();
    let (_, rest) = url.split_once("://").ok_or("a URL")?;
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = host.split('/').next().ok_or("a host")?;
    let server = format!("amqps://{USER}:{SECRET}@{host}/%2f");
    let started = std::time::Instant::now();
    for (who, outcome) in runtime.block_on(connect_all(&server, "")) {
        let (unavailable, text) = outcome.unwrap_or_else(|| panic!("the {who} must not connect without TLS"));
        assert!(!unavailable, "{who}: a server without TLS is not an outage: {text}");
        assert!(!text.contains(SECRET), "{who}: the password shows: {text}");
        assert!(text.contains("the TLS handshake failed"), "{who}: says it is the TLS handshake: {text}");
    }
    assert!(started.elapsed() < REFUSAL_WITHIN, "refused at once: {:?}", started.elapsed());
    Ok(())
}

/// A plain-text server gets a TLS hello and nothing else: no AMQP protocol header, no
/// credentials, in plain text. (It hangs up then, which the client cannot tell from a network
/// fault: that error may be `Unavailable`.)
pub(crate) fn tls_sends_nothing_in_plain_text_to_a_server_without_tls() -> Result<(), Failed> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    let port = listener.local_addr()?.port();
    let fake = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let (mut stream, _) = listener.accept()?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut received = vec![0_u8; 4096];
        let n = stream.read(&mut received)?;
        received.truncate(n);
        // What a RabbitMQ node answers to what is not its protocol header.
        stream.write_all(b"AMQP\x00\x00\x09\x01")?;
        Ok(received)
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let config = RabbitSourceConfig::from_url(&format!("{}?queue=q", server_url("127.0.0.1", port)))?;
    let err = runtime.block_on(within(RabbitSource::connect(config))).map(drop).expect_err("a fake server");
    let text = error_chain(&err);
    assert!(!text.contains(SECRET), "the password shows: {text}");
    let received = fake.join().map_err(|_| "the fake server panicked")??;
    assert_eq!(received.first(), Some(&0x16), "a TLS handshake record first: {received:?}");
    let plain = String::from_utf8_lossy(&received);
    assert!(!plain.contains("AMQP") && !plain.contains(SECRET), "plain text sent: {plain}");
    Ok(())
}
