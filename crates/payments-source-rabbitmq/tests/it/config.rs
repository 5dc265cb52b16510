//! The URL forms are a command-line contract: what they accept, their defaults, and errors that
//! name what is wrong without ever showing the password.

use libtest_mimic::Failed;
use payments_ports::error_chain;
use payments_source_rabbitmq::{
    DEFAULT_IN_FLIGHT, DEFAULT_MAX_MESSAGE_BYTES, QUEUE_DELIVERY_LIMIT, RabbitDeadLetters, RabbitPublisher,
    RabbitSource, RabbitSourceConfig, RabbitTargetConfig,
};

pub(crate) fn a_source_url_is_read_with_its_defaults() -> Result<(), Failed> {
    let config = RabbitSourceConfig::from_url("amqp://guest:guest@127.0.0.1:5672/%2f?queue=payments")?;
    assert_eq!(config.queue(), "payments");
    assert_eq!(config.parked_queue(), "payments.parked");
    assert_eq!((config.in_flight(), usize::from(config.prefetch())), (DEFAULT_IN_FLIGHT, DEFAULT_IN_FLIGHT));
    assert_eq!(config.max_message_bytes(), DEFAULT_MAX_MESSAGE_BYTES);
    assert_eq!(config.max_deliveries(), None);
    assert!(
        config.connection_name().starts_with("payments-")
            && config.connection_name().ends_with(&format!("-{}", std::process::id())),
        "the default connection name is payments-<host>-<pid>: {}",
        config.connection_name()
    );
    let config = config.with_in_flight(10).with_max_message_bytes(100);
    assert_eq!(
        (config.prefetch(), config.max_message_bytes()),
        (10, 100),
        "the prefetch follows --concurrency"
    );
    assert_eq!(config.with_in_flight(100_000).prefetch(), u16::MAX, "AMQP's prefetch is 16 bits");

    let config = RabbitSourceConfig::from_url(
        "amqps://app:pw@mq.internal:5671/prod?queue=pay%20ments&prefetch=20&max-deliveries=5",
    )?
    .with_in_flight(64);
    assert_eq!(config.queue(), "pay ments");
    assert_eq!((config.prefetch(), config.in_flight()), (20, 64), "a prefetch in the URL stays");
    assert_eq!(config.max_deliveries(), Some(5));
    assert_eq!(
        config.to_string(),
        "amqps://app:***@mq.internal:5671/prod?queue=pay ments&prefetch=20&max-deliveries=5"
    );
    let limit = format!("amqp://h/%2f?queue=q&max-deliveries={QUEUE_DELIVERY_LIMIT}");
    assert_eq!(RabbitSourceConfig::from_url(&limit)?.max_deliveries(), Some(QUEUE_DELIVERY_LIMIT));
    let bare = RabbitSourceConfig::from_url("amqp://localhost?queue=q")?;
    assert_eq!(bare.to_string(), "amqp://localhost:5672/%2f?queue=q", "no path is the default vhost /");
    Ok(())
}

pub(crate) fn a_target_url_names_a_queue_an_exchange_or_both() -> Result<(), Failed> {
    let queue = RabbitTargetConfig::from_url("amqp://h/%2f?queue=dead")?;
    assert_eq!((queue.queue(), queue.exchange()), (Some("dead"), None));
    assert_eq!((queue.publish_exchange(), queue.routing_key()), ("", "dead"), "through the default exchange");
    let exchange = RabbitTargetConfig::from_url("amqp://h/%2f?exchange=events&routing-key=payments.taken")?;
    assert_eq!((exchange.queue(), exchange.exchange()), (None, Some("events")));
    assert_eq!((exchange.publish_exchange(), exchange.routing_key()), ("events", "payments.taken"));
    let both = RabbitTargetConfig::from_url("amqp://h/%2f?queue=dead&exchange=events")?;
    assert_eq!(
        (both.publish_exchange(), both.routing_key()),
        ("events", "dead"),
        "keyed by the queue's name"
    );
    let fanout = RabbitTargetConfig::from_url("amqp://h/%2f?exchange=all")?;
    assert_eq!(fanout.routing_key(), "");
    assert_eq!(both.to_string(), "amqp://h:5672/%2f?queue=dead&exchange=events");
    Ok(())
}

/// The single place a bad source URL is checked: the error must contain `expected`.
fn check_refused(url: &str, expected: &str) {
    let err = match RabbitSourceConfig::from_url(url) {
        Ok(config) => panic!("{url} must be refused, got {config:?}"),
        Err(err) => error_chain(&err),
    };
    assert!(err.contains(expected), "{url}: expected {expected:?} in {err:?}");
}

pub(crate) fn bad_urls_are_refused_by_name() -> Result<(), Failed> {
    let base = "amqp://guest:guest@127.0.0.1:5672/%2f";
    check_refused("not a url", "invalid RabbitMQ URL");
    check_refused("http://127.0.0.1:5672/%2f?queue=q", "unsupported scheme \"http\"");
    check_refused("amqp:///%2f?queue=q", "needs a host");
    check_refused("amqp://h/%e9?queue=q", "virtual host of a RabbitMQ URL is not valid");
    check_refused(base, "needs the `queue` parameter");
    check_refused(&format!("{base}?queue="), "invalid value \"\" for `queue`");
    check_refused(&format!("{base}?queue={}", "q".repeat(256)), "a name of 1 to 255 bytes");
    check_refused(&format!("{base}?queue=q&prefetch=0"), "invalid value \"0\" for `prefetch`");
    check_refused(&format!("{base}?queue=q&prefetch=65536"), "from 1 to 65535");
    check_refused(&format!("{base}?queue=q&prefetch=many"), "invalid value \"many\" for `prefetch`");
    check_refused(&format!("{base}?queue=q&max-deliveries=0"), "for `max-deliveries`");
    check_refused(
        &format!("{base}?queue=q&max-deliveries={}", QUEUE_DELIVERY_LIMIT + 1),
        "the queues' x-delivery-limit",
    );
    check_refused(&format!("{base}?queue=q&heartbeat=5"), "unknown parameter `heartbeat`");
    check_refused(&format!("{base}?queue=q&exchange=x"), "unknown parameter `exchange`");
    check_refused(&format!("{base}?queue=q&queue=r"), "`queue` is given twice");

    let target = |url: &str| RabbitTargetConfig::from_url(url).expect_err("refused").to_string();
    assert!(target(base).contains("needs `queue=NAME`, `exchange=NAME&routing-key=KEY`, or both"));
    assert!(
        target(&format!("{base}?queue=q&routing-key=k")).contains("a routing key goes with an `exchange`")
    );
    assert!(target(&format!("{base}?exchange=")).contains("invalid value \"\" for `exchange`"));
    assert!(target(&format!("{base}?queue=q&prefetch=1")).contains("unknown parameter `prefetch`"));
    Ok(())
}

pub(crate) fn the_password_never_shows() -> Result<(), Failed> {
    const SECRET: &str = "s3cr3t-pa55";
    let url = format!("amqp://app:{SECRET}@127.0.0.1:1/%2f?queue=q");
    let config = RabbitSourceConfig::from_url(&url)?;
    let target = RabbitTargetConfig::from_url(&format!("amqp://app:{SECRET}@127.0.0.1:1/%2f?queue=d"))?;
    for shown in [
        format!("{config}"),
        format!("{config:?}"),
        format!("{config:#?}"),
        format!("{target}"),
        format!("{target:?}"),
    ] {
        assert!(!shown.contains(SECRET), "the password shows: {shown}");
        assert!(shown.contains("app:***@"), "the user shows, the password is starred: {shown}");
    }
    for bad in [
        format!("amqp://app:{SECRET}@127.0.0.1:5672/%2f"),
        format!("amqp://app:{SECRET}@127.0.0.1:5672/%2f?queue=q&nope=1"),
        format!("amqp://app:{SECRET}@127.0.0.1:5672/%2f?queue=q&prefetch=0"),
        format!("amqp://app:{SECRET}%ff@127.0.0.1:5672/%2f?queue=q"),
        format!("amqp://app:{SECRET}@/%2f?queue=q"),
    ] {
        let err = RabbitSourceConfig::from_url(&bad).expect_err("refused");
        let text = format!("{} {err:?}", error_chain(&err));
        assert!(!text.contains(SECRET), "the password shows in an error: {text}");
    }

    // Nothing listens on port 1: connecting fails, is worth retrying, and says where without the
    // password.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let err = RabbitSource::connect(config).await.expect_err("nothing listens on port 1");
        assert!(err.is_unavailable(), "a refused connection is worth retrying: {err}");
        let text = format!("{} {err:?}", error_chain(&err));
        assert!(!text.contains(SECRET) && text.contains("127.0.0.1:1"), "{text}");
        let err = RabbitDeadLetters::connect(target.clone()).await.expect_err("nothing listens");
        let text = format!("{} {err:?}", error_chain(&err));
        assert!(err.is_unavailable() && !text.contains(SECRET), "{text}");
        let err = RabbitPublisher::connect(target).await.expect_err("nothing listens");
        let text = format!("{} {err:?}", error_chain(&err));
        assert!(err.is_unavailable() && !text.contains(SECRET), "{text}");
    });
    Ok(())
}

/// Against the server: a wrong password is refused for good (no retry fixes it), and the error
/// does not show it; `amqps://` speaks TLS (here to a port that does not: the handshake fails at
/// once, for good too).
pub(crate) fn refused_credentials_fail_for_good_and_amqps_speaks_tls() -> Result<(), Failed> {
    const SECRET: &str = "not-the-password";
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let server = payments_test_support::rabbitmq::url();
    let (_, rest) = server.split_once("://").ok_or("a URL")?;
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = host.split('/').next().ok_or("a host")?;
    runtime.block_on(async {
        let config = RabbitSourceConfig::from_url(&format!("amqp://guest:{SECRET}@{host}/%2f?queue=q"))?;
        let err = RabbitSource::connect(config).await.expect_err("a wrong password");
        let text = format!("{} {err:?}", error_chain(&err));
        assert!(!err.is_unavailable(), "refused credentials will not clear by themselves: {text}");
        assert!(!text.contains(SECRET), "the password shows: {text}");

        let config = RabbitSourceConfig::from_url(&format!("amqps://guest:{SECRET}@{host}/%2f?queue=q"))?;
        let started = std::time::Instant::now();
        let err = RabbitSource::connect(config).await.expect_err("the port does not speak TLS");
        let text = format!("{} {err:?}", error_chain(&err));
        assert!(!err.is_unavailable(), "a failed TLS handshake will not clear by itself: {text}");
        assert!(text.contains("amqps://guest:***@"), "{text}");
        assert!(!text.contains(SECRET), "the password shows: {text}");
        assert!(started.elapsed() < std::time::Duration::from_secs(12), "bounded by the connect timeout");
        Ok::<_, Failed>(())
    })
}

/// `ssl-ca=PATH` names the only trusted roots of an `amqps://` URL, on the source and target URLs
/// alike: checked when the URL is parsed (a file of PEM certificates), refused on `amqp://`.
pub(crate) fn ssl_ca_is_read_with_the_url_and_needs_tls() -> Result<(), Failed> {
    const SECRET: &str = "s3cr3t-pa55";
    let ca = payments_test_support::tls::TestCa::new("payments test CA")?;
    let path = ca.cert_path().display().to_string();
    let base = format!("amqps://app:{SECRET}@mq.example:5671/%2f");

    let source = RabbitSourceConfig::from_url(&format!("{base}?queue=q&ssl-ca={path}"))?;
    assert_eq!(source.ssl_ca(), Some(ca.cert_path()));
    assert_eq!(source.to_string(), format!("amqps://app:***@mq.example:5671/%2f?queue=q&ssl-ca={path}"));
    assert!(format!("{source:?}").contains(&path), "{source:?}");
    let target = RabbitTargetConfig::from_url(&format!("{base}?exchange=x&routing-key=k&ssl-ca={path}"))?;
    assert_eq!(target.ssl_ca(), Some(ca.cert_path()));
    assert!(format!("{target:?}").contains(&path), "{target:?}");
    assert_eq!(RabbitSourceConfig::from_url(&format!("{base}?queue=q"))?.ssl_ca(), None);
    assert_eq!(RabbitTargetConfig::from_url(&format!("{base}?queue=q"))?.ssl_ca(), None);

    let plain = format!("amqp://app:{SECRET}@127.0.0.1:5672/%2f?queue=q&ssl-ca={path}");
    for err in [
        RabbitSourceConfig::from_url(&plain).map(drop).map_err(|err| error_chain(&err)),
        RabbitTargetConfig::from_url(&plain).map(drop).map_err(|err| error_chain(&err)),
    ] {
        let err = err.expect_err("ssl-ca on amqp:// is refused");
        assert!(err.contains("`ssl-ca` needs an amqps:// URL"), "{err}");
        assert!(!err.contains(SECRET), "{err}");
    }

    let missing = ca.dir().join("missing.pem");
    check_refused(
        &format!("{base}?queue=q&ssl-ca={}", missing.display()),
        &format!("cannot read ssl-ca {}", missing.display()),
    );
    let key_only = ca.issue(&["localhost"])?.key;
    let not_pem = ca.dir().join("not.pem");
    std::fs::write(&not_pem, "not a certificate")?;
    for bad in [&key_only, &not_pem] {
        check_refused(
            &format!("{base}?queue=q&ssl-ca={}", bad.display()),
            &format!("ssl-ca {} holds no valid PEM certificate", bad.display()),
        );
        let err = RabbitTargetConfig::from_url(&format!("{base}?queue=q&ssl-ca={}", bad.display()))
            .expect_err("no certificate");
        assert!(err.to_string().contains("holds no valid PEM certificate"), "{err}");
    }
    check_refused(&format!("{base}?queue=q&ssl-ca=a&ssl-ca=b"), "`ssl-ca` is given twice");
    check_refused(&format!("{base}?queue=q&nope=1"), "max-deliveries and (amqps:// only) ssl-ca");
    let err = RabbitTargetConfig::from_url(&format!("{base}?queue=q&nope=1")).expect_err("unknown");
    assert!(err.to_string().contains("routing-key and (amqps:// only) ssl-ca"), "{err}");
    Ok(())
}
