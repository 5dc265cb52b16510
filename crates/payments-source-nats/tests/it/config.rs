//! The URL forms are a command-line contract: what they accept, their defaults, and errors that
//! name what is wrong without ever showing a password or a token.

use std::time::Duration;

use libtest_mimic::Failed;
use payments_ports::error_chain;
use payments_source_nats::{
    DEFAULT_IN_FLIGHT, DEFAULT_MAX_MESSAGE_BYTES, NatsDeadLetters, NatsPublisher, NatsSource,
    NatsSourceConfig, NatsStreamConfig,
};

pub(crate) fn a_source_url_is_read_with_its_defaults() -> Result<(), Failed> {
    let config = NatsSourceConfig::from_url(
        "nats://127.0.0.1:4222?stream=PAYMENTS&subject=payments.taken&consumer=ledger",
    )?;
    assert_eq!(
        (config.stream(), config.subject(), config.consumer()),
        ("PAYMENTS", "payments.taken", "ledger")
    );
    assert_eq!(config.ack_wait(), Duration::from_secs(30));
    assert_eq!((config.in_flight(), config.batch()), (DEFAULT_IN_FLIGHT, DEFAULT_IN_FLIGHT));
    assert_eq!(config.max_message_bytes(), DEFAULT_MAX_MESSAGE_BYTES);
    assert_eq!((config.max_deliveries(), config.double_ack()), (None, false));
    let config = config.with_in_flight(10).with_max_message_bytes(100);
    assert_eq!((config.in_flight(), config.batch(), config.max_message_bytes()), (10, 10, 100));
    assert_eq!(config.with_in_flight(0).in_flight(), 1, "at least one in flight");

    let config = NatsSourceConfig::from_url(
        "nats://mq.internal?stream=S&subject=payments.*.taken&consumer=c-1&ack-wait-ms=1500&batch=20&max-deliveries=5&double-ack=true",
    )?
    .with_in_flight(64);
    assert_eq!(config.subject(), "payments.*.taken", "wildcards are fine for a source");
    assert_eq!(config.ack_wait(), Duration::from_millis(1500));
    assert_eq!((config.batch(), config.in_flight()), (20, 64), "an explicit batch stays");
    assert_eq!(config.clone().with_in_flight(8).batch(), 8, "but never above the in-flight bound");
    assert_eq!(config.max_deliveries(), Some(5));
    assert!(config.double_ack());
    assert_eq!(
        config.to_string(),
        "nats://mq.internal:4222?stream=S&subject=payments.*.taken&consumer=c-1&ack-wait-ms=1500&batch=20&max-deliveries=5&double-ack=true"
    );

    let stream = NatsStreamConfig::from_url("nats://localhost?stream=DEAD&subject=payments.dead")?;
    assert_eq!((stream.stream(), stream.subject()), ("DEAD", "payments.dead"));
    assert_eq!(stream.to_string(), "nats://localhost:4222?stream=DEAD&subject=payments.dead");
    Ok(())
}

/// The single place a bad source URL is checked: the error must contain `expected`.
fn check_refused(url: &str, expected: &str) {
    let err = match NatsSourceConfig::from_url(url) {
        Ok(config) => panic!("{url} must be refused, got {config:?}"),
        Err(err) => error_chain(&err),
    };
    assert!(err.contains(expected), "{url}: expected {expected:?} in {err:?}");
}

pub(crate) fn bad_urls_are_refused_by_name() -> Result<(), Failed> {
    let base = "nats://127.0.0.1:4222";
    let ok = "stream=S&subject=a.b&consumer=c";
    check_refused("not a url", "invalid NATS URL");
    check_refused(&format!("redis://127.0.0.1:6379?{ok}"), "unsupported scheme \"redis\"");
    check_refused(&format!("nats://?{ok}"), "needs a host");
    check_refused(&format!("{base}/S?{ok}"), "unexpected path \"/S\"");
    check_refused(&format!("{base}?subject=a&consumer=c"), "needs the `stream` parameter");
    check_refused(&format!("{base}?stream=S&consumer=c"), "needs the `subject` parameter");
    check_refused(&format!("{base}?stream=S&subject=a"), "needs the `consumer` parameter");
    check_refused(&format!("{base}?stream=&subject=a&consumer=c"), "invalid value \"\" for `stream`");
    check_refused(&format!("{base}?stream=a.b&subject=a&consumer=c"), "invalid value \"a.b\" for `stream`");
    check_refused(&format!("{base}?stream=S&subject=a&consumer=c*"), "for `consumer`");
    check_refused(
        &format!("{base}?stream=S&subject=a..b&consumer=c"),
        "invalid value \"a..b\" for `subject`",
    );
    check_refused(&format!("{base}?stream=S&subject=a.>.b&consumer=c"), "for `subject`");
    check_refused(&format!("{base}?stream=S&subject=a%20b&consumer=c"), "for `subject`");
    check_refused(&format!("{base}?{ok}&ack-wait-ms=0"), "invalid value \"0\" for `ack-wait-ms`");
    check_refused(&format!("{base}?{ok}&batch=many"), "invalid value \"many\" for `batch`");
    check_refused(&format!("{base}?{ok}&max-deliveries=-1"), "for `max-deliveries`");
    check_refused(&format!("{base}?{ok}&double-ack=yes"), "invalid value \"yes\" for `double-ack`");
    check_refused(&format!("{base}?{ok}&group=g"), "unknown parameter `group`");
    check_refused(&format!("{base}?{ok}&stream=T"), "`stream` is given twice");
    let err = NatsStreamConfig::from_url(&format!("{base}?{ok}")).expect_err("no consumer here");
    assert!(err.to_string().contains("unknown parameter `consumer`"), "{err}");
    let err = NatsStreamConfig::from_url(&format!("{base}?stream=S&subject=a.*")).expect_err("no wildcard");
    assert!(error_chain(&err).contains("without spaces or wildcards"), "{}", error_chain(&err));
    Ok(())
}

pub(crate) fn credentials_never_show() -> Result<(), Failed> {
    const SECRET: &str = "s3cr3t-pa55";
    let query = "stream=S&subject=a.b&consumer=c";
    let with_password = NatsSourceConfig::from_url(&format!("nats://app:{SECRET}@127.0.0.1:1?{query}"))?;
    let with_token = NatsSourceConfig::from_url(&format!("nats://{SECRET}@127.0.0.1:1?{query}"))?;
    for (config, starred) in [(&with_password, "app:***@"), (&with_token, "//***@")] {
        for shown in [format!("{config}"), format!("{config:?}"), format!("{config:#?}")] {
            assert!(!shown.contains(SECRET), "a secret shows: {shown}");
            assert!(shown.contains(starred), "the secret is starred ({starred}): {shown}");
        }
    }
    for bad in [
        format!("nats://app:{SECRET}@127.0.0.1:4222?stream=S"),
        format!("nats://app:{SECRET}@127.0.0.1:4222/x?{query}"),
        format!("nats://{SECRET}@127.0.0.1:4222?{query}&nope=1"),
        format!("nats://{SECRET}@127.0.0.1:4222?{query}&batch=0"),
        format!("nats://app:{SECRET}@?{query}"),
    ] {
        let err = NatsSourceConfig::from_url(&bad).expect_err("refused");
        let text = format!("{} {err:?}", error_chain(&err));
        assert!(!text.contains(SECRET), "a secret shows in an error: {text}");
    }
    let stream = NatsStreamConfig::from_url(&format!("tls://app:{SECRET}@127.0.0.1:1?stream=D&subject=d"))?;
    assert!(!format!("{stream} {stream:?}").contains(SECRET));

    // Nothing listens on port 1: connecting fails, and says where without the secret.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        for config in [with_password, with_token] {
            let err = NatsSource::connect(config).await.expect_err("nothing listens on port 1");
            assert!(err.is_unavailable(), "a refused connection is worth retrying: {err}");
            let text = format!("{} {err:?}", error_chain(&err));
            assert!(!text.contains(SECRET) && text.contains("127.0.0.1:1"), "{text}");
        }
        let stream =
            NatsStreamConfig::from_url(&format!("nats://app:{SECRET}@127.0.0.1:1?stream=D&subject=d"))
                .expect("valid");
        let err = NatsDeadLetters::connect(stream.clone()).await.expect_err("nothing listens");
        let text = format!("{} {err:?}", error_chain(&err));
        assert!(err.is_unavailable() && !text.contains(SECRET) && text.contains("127.0.0.1:1"), "{text}");
        let err = NatsPublisher::connect(stream).await.expect_err("nothing listens");
        let text = format!("{} {err:?}", error_chain(&err));
        assert!(err.is_unavailable() && !text.contains(SECRET) && text.contains("127.0.0.1:1"), "{text}");
    });
    Ok(())
}

/// `tls://` is read like `nats://`: the client then requires TLS of the server.
pub(crate) fn tls_urls_are_read_like_nats_urls() -> Result<(), Failed> {
    let config = NatsSourceConfig::from_url("tls://user:pw@[::1]:4443?stream=S&subject=a&consumer=c")?;
    assert_eq!(config.to_string(), "tls://user:***@[::1]:4443?stream=S&subject=a&consumer=c");
    let stream = NatsStreamConfig::from_url("tls://mq.example?stream=S&subject=a")?;
    assert_eq!(stream.to_string(), "tls://mq.example:4222?stream=S&subject=a");
    Ok(())
}

/// `ssl-ca=PATH` names the only trusted roots of a `tls://` URL, on the source and stream URLs
/// alike: checked when the URL is parsed (a file of PEM certificates), refused on `nats://`.
pub(crate) fn ssl_ca_is_read_with_the_url_and_needs_tls() -> Result<(), Failed> {
    let ca = payments_test_support::tls::TestCa::new("payments test CA")?;
    let path = ca.cert_path().display().to_string();
    let query = "stream=S&subject=a.b&consumer=c";

    let source = NatsSourceConfig::from_url(&format!("tls://mq.example:4443?{query}&ssl-ca={path}"))?;
    assert_eq!(source.ssl_ca(), Some(ca.cert_path()));
    assert_eq!(source.to_string(), format!("tls://mq.example:4443?{query}&ssl-ca={path}"));
    assert!(format!("{source:?}").contains(&path), "{source:?}");
    let stream = NatsStreamConfig::from_url(&format!("tls://mq.example?stream=D&subject=d&ssl-ca={path}"))?;
    assert_eq!(stream.ssl_ca(), Some(ca.cert_path()));
    assert_eq!(NatsSourceConfig::from_url(&format!("tls://mq.example?{query}"))?.ssl_ca(), None);

    for url in [
        format!("nats://127.0.0.1:4222?{query}&ssl-ca={path}"),
        format!("nats://127.0.0.1:4222?stream=D&subject=d&ssl-ca={path}"),
    ] {
        let source = NatsSourceConfig::from_url(&url).map(drop).map_err(|err| error_chain(&err));
        let stream = NatsStreamConfig::from_url(&url).map(drop).map_err(|err| error_chain(&err));
        // The source URL is refused by the source, the stream URL by the stream (the other one
        // refuses the other's parameters first).
        let err = if url.contains("consumer") { source } else { stream }.expect_err("refused");
        assert!(err.contains("`ssl-ca` needs a tls:// URL"), "{err}");
    }

    let missing = ca.dir().join("missing.pem");
    check_refused(
        &format!("tls://h?{query}&ssl-ca={}", missing.display()),
        &format!("cannot read ssl-ca {}", missing.display()),
    );
    let key_only = ca.issue(&["localhost"])?.key;
    let not_pem = ca.dir().join("not.pem");
    std::fs::write(&not_pem, "not a certificate")?;
    for bad in [&key_only, &not_pem] {
        check_refused(
            &format!("tls://h?{query}&ssl-ca={}", bad.display()),
            &format!("ssl-ca {} holds no valid PEM certificate", bad.display()),
        );
    }
    check_refused(&format!("tls://h?{query}&ssl-ca=a&ssl-ca=b"), "`ssl-ca` is given twice");
    check_refused(&format!("tls://h?{query}&nope=1"), "(tls:// only) ssl-ca");
    let err = NatsStreamConfig::from_url("tls://h?stream=S&subject=s&nope=1").expect_err("unknown");
    assert!(err.to_string().contains("stream, subject and (tls:// only) ssl-ca"), "{err}");
    Ok(())
}
