//! The URL forms are a command-line contract: what they accept, their defaults, and errors that
//! name what is wrong without ever showing the password.

use std::time::Duration;

use libtest_mimic::Failed;
use payments_ports::error_chain;
use payments_source_redis::{
    DEFAULT_IN_FLIGHT, DEFAULT_MAX_MESSAGE_BYTES, RedisDeadLetters, RedisPublisher, RedisSource,
    RedisSourceConfig, RedisStreamConfig,
};

pub(crate) fn a_source_url_is_read_with_its_defaults() -> Result<(), Failed> {
    let config = RedisSourceConfig::from_url("redis://127.0.0.1:6379?stream=payments&group=ledger")?;
    assert_eq!((config.stream(), config.group()), ("payments", "ledger"));
    assert!(
        config.consumer().ends_with(&format!("-{}", std::process::id())),
        "the default consumer is <host>-<pid>: {}",
        config.consumer()
    );
    assert_eq!(config.claim_idle(), Duration::from_secs(30));
    assert_eq!((config.in_flight(), config.batch()), (DEFAULT_IN_FLIGHT, DEFAULT_IN_FLIGHT));
    assert_eq!(config.max_message_bytes(), DEFAULT_MAX_MESSAGE_BYTES);
    assert_eq!(config.max_deliveries(), None);
    let config = config.with_in_flight(10).with_max_message_bytes(100);
    assert_eq!((config.in_flight(), config.batch(), config.max_message_bytes()), (10, 10, 100));

    let config = RedisSourceConfig::from_url(
        "rediss://user:pw@cache.internal:6380/3?stream=s%20x&group=g&consumer=worker-1&claim-idle-ms=1500&batch=20&max-deliveries=5",
    )?
    .with_in_flight(64);
    assert_eq!((config.stream(), config.consumer()), ("s x", "worker-1"));
    assert_eq!(config.claim_idle(), Duration::from_millis(1500));
    assert_eq!((config.batch(), config.in_flight()), (20, 64), "an explicit batch stays");
    assert_eq!(config.max_deliveries(), Some(5));
    assert_eq!(
        config.to_string(),
        "rediss://user:***@cache.internal:6380/3?stream=s x&group=g&consumer=worker-1&claim-idle-ms=1500&batch=20&max-deliveries=5"
    );

    let stream = RedisStreamConfig::from_url("redis://localhost?stream=dead")?;
    assert_eq!(stream.stream(), "dead");
    assert_eq!(stream.to_string(), "redis://localhost:6379/0?stream=dead");
    Ok(())
}

/// The single place a bad URL is checked: the error must contain `expected`.
fn check_refused(url: &str, expected: &str) {
    let err = match RedisSourceConfig::from_url(url) {
        Ok(config) => panic!("{url} must be refused, got {config:?}"),
        Err(err) => error_chain(&err),
    };
    assert!(err.contains(expected), "{url}: expected {expected:?} in {err:?}");
}

pub(crate) fn bad_urls_are_refused_by_name() -> Result<(), Failed> {
    let base = "redis://127.0.0.1:6379";
    check_refused("not a url", "invalid Redis URL");
    check_refused("http://127.0.0.1:6379?stream=s&group=g", "unsupported scheme \"http\"");
    check_refused("redis://?stream=s&group=g", "needs a host");
    check_refused(&format!("{base}/zero?stream=s&group=g"), "invalid database \"zero\"");
    check_refused(&format!("{base}?group=g"), "needs the `stream` parameter");
    check_refused(&format!("{base}?stream=s"), "needs the `group` parameter");
    check_refused(&format!("{base}?stream=&group=g"), "invalid value \"\" for `stream`");
    check_refused(&format!("{base}?stream=s&group=g&consumer="), "for `consumer`");
    check_refused(
        &format!("{base}?stream=s&group=g&claim-idle-ms=0"),
        "invalid value \"0\" for `claim-idle-ms`",
    );
    check_refused(&format!("{base}?stream=s&group=g&batch=many"), "invalid value \"many\" for `batch`");
    check_refused(&format!("{base}?stream=s&group=g&max-deliveries=-1"), "for `max-deliveries`");
    check_refused(&format!("{base}?stream=s&group=g&protocol=resp3"), "unknown parameter `protocol`");
    check_refused(&format!("{base}?stream=s&stream=t&group=g"), "`stream` is given twice");
    let err = RedisStreamConfig::from_url(&format!("{base}?stream=s&group=g")).expect_err("no group here");
    assert!(err.to_string().contains("unknown parameter `group`"), "{err}");
    Ok(())
}

pub(crate) fn the_password_never_shows() -> Result<(), Failed> {
    const SECRET: &str = "s3cr3t-pa55";
    let url = format!("redis://app:{SECRET}@127.0.0.1:1/0?stream=s&group=g");
    let config = RedisSourceConfig::from_url(&url)?;
    for shown in [format!("{config}"), format!("{config:?}"), format!("{config:#?}")] {
        assert!(!shown.contains(SECRET), "the password shows: {shown}");
        assert!(shown.contains("app:***@"), "the user shows, the password is starred: {shown}");
    }
    for bad in [
        format!("redis://app:{SECRET}@127.0.0.1:6379?stream=s"),
        format!("redis://app:{SECRET}@127.0.0.1:6379/x?stream=s&group=g"),
        format!("redis://app:{SECRET}@127.0.0.1:6379?stream=s&group=g&nope=1"),
        format!("redis://app:{SECRET}@127.0.0.1:6379?stream=s&group=g&batch=0"),
        format!("redis://app:{SECRET}@?stream=s&group=g"),
    ] {
        let err = RedisSourceConfig::from_url(&bad).expect_err("refused");
        let text = format!("{} {err:?}", error_chain(&err));
        assert!(!text.contains(SECRET), "the password shows in an error: {text}");
    }
    let stream = RedisStreamConfig::from_url(&format!("redis://app:{SECRET}@127.0.0.1:1?stream=d"))?;
    assert!(!format!("{stream} {stream:?}").contains(SECRET));

    // Nothing listens on port 1: connecting fails, and says where without the password.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let err = RedisSource::connect(config).await.expect_err("nothing listens on port 1");
        assert!(err.is_unavailable(), "a refused connection is worth retrying: {err}");
        let text = format!("{} {err:?}", error_chain(&err));
        assert!(!text.contains(SECRET) && text.contains("127.0.0.1:1"), "{text}");
        let err = RedisDeadLetters::connect(stream.clone()).await.expect_err("nothing listens");
        let text = format!("{} {err:?}", error_chain(&err));
        assert!(err.is_unavailable() && !text.contains(SECRET), "{text}");
        let err = RedisPublisher::connect(stream).await.expect_err("nothing listens");
        let text = format!("{} {err:?}", error_chain(&err));
        assert!(err.is_unavailable() && !text.contains(SECRET), "{text}");
    });
    Ok(())
}

/// `rediss://` is read like `redis://`; connecting needs the `tls` feature, and says so.
pub(crate) fn rediss_is_accepted_and_needs_the_tls_feature() -> Result<(), Failed> {
    let config = RedisSourceConfig::from_url("rediss://:pw@127.0.0.1:6380/1?stream=s&group=g")?;
    assert_eq!(config.to_string(), "rediss://:***@127.0.0.1:6380/1?stream=s&group=g");
    if cfg!(feature = "tls") {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let err = runtime.block_on(RedisSource::connect(config)).expect_err("built without TLS");
    assert!(!err.is_unavailable(), "no retry can fix a missing feature: {err}");
    assert!(err.to_string().contains("`tls` feature"), "{err}");
    Ok(())
}

/// `ssl-ca=PATH` is read with the URL, on `rediss://` only, and shown (it is no secret).
pub(crate) fn ssl_ca_is_read_with_the_url_and_needs_rediss() -> Result<(), Failed> {
    let ca = payments_test_support::tls::TestCa::new("payments test CA")?;
    let path = ca.cert_path().display().to_string();
    let config =
        RedisSourceConfig::from_url(&format!("rediss://:pw@127.0.0.1:6380?stream=s&group=g&ssl-ca={path}"))?;
    assert_eq!(config.ssl_ca(), Some(ca.cert_path()));
    assert_eq!(config.to_string(), format!("rediss://:***@127.0.0.1:6380/0?stream=s&group=g&ssl-ca={path}"));
    let stream = RedisStreamConfig::from_url(&format!("rediss://127.0.0.1:6380?stream=d&ssl-ca={path}"))?;
    assert_eq!(stream.ssl_ca(), Some(ca.cert_path()));
    assert_eq!(RedisStreamConfig::from_url("rediss://127.0.0.1:6380?stream=d")?.ssl_ca(), None);

    check_refused(
        &format!("redis://127.0.0.1:6379?stream=s&group=g&ssl-ca={path}"),
        "`ssl-ca` needs a rediss:// URL",
    );
    check_refused(
        "rediss://:s3cr3t-pa55@127.0.0.1:6380?stream=s&group=g&ssl-ca=/nonexistent/ca.pem",
        "cannot read ssl-ca /nonexistent/ca.pem",
    );
    let not_pem = ca.dir().join("not.pem");
    std::fs::write(&not_pem, "not a certificate\n")?;
    check_refused(
        &format!("rediss://127.0.0.1:6380?stream=s&group=g&ssl-ca={}", not_pem.display()),
        "holds no PEM certificate",
    );
    let err = RedisSourceConfig::from_url("rediss://:s3cr3t-pa55@h?stream=s&group=g&ssl-ca=/nonexistent")
        .expect_err("no such file");
    assert!(!format!("{} {err:?}", error_chain(&err)).contains("s3cr3t-pa55"), "{err:?}");
    Ok(())
}
