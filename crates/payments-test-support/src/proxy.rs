//! A TCP proxy inside the test, in front of a test server: clients connect to it, and the test
//! breaks the network between them as a real fault would. [`cut`](TcpProxy::cut) closes every
//! connection through it (both sides see the socket close); while
//! [`set_down`](TcpProxy::set_down) is on, or for the outage given to
//! [`refuse_for`](TcpProxy::refuse_for), new connections are closed as soon as they are
//! accepted, so that a client cannot come back until the test lets it.
//!
//! Every server of the tests runs through the same proxy: the NATS and RabbitMQ tests, and the
//! app's outage tests against PostgreSQL. Its tasks run on the runtime that started it, until it
//! is dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// The proxy; clones share it, and the last one dropped stops it.
#[derive(Clone, Debug)]
pub struct TcpProxy {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    port: u16,
    upstream: String,
    state: Arc<State>,
    accepting: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct State {
    /// The connections through the proxy, to abort.
    links: Mutex<Vec<AbortHandle>>,
    down: AtomicBool,
    /// New connections are refused until then.
    refuse_until: Mutex<Option<Instant>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    fn refusing(&self) -> bool {
        self.down.load(Ordering::SeqCst)
            || lock(&self.refuse_until).is_some_and(|until| Instant::now() < until)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.accepting.abort();
        for link in lock(&self.state.links).drain(..) {
            link.abort();
        }
    }
}

impl TcpProxy {
    /// Starts a proxy to `upstream` (`host:port`) on a free port of 127.0.0.1.
    ///
    /// # Errors
    ///
    /// When no port can be bound.
    pub async fn start(upstream: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(State::default());
        let accepting = tokio::spawn({
            let (state, upstream) = (Arc::clone(&state), upstream.to_owned());
            async move {
                loop {
                    let Ok((mut client, _)) = listener.accept().await else { continue };
                    if state.refusing() {
                        // Closed at once: the client sees its connection attempt fail.
                        drop(client);
                        continue;
                    }
                    let upstream = upstream.clone();
                    let link = tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(upstream.as_str()).await {
                            // As clients and servers do: small writes (an acknowledgement, a
                            // query) must not wait 40 ms for Nagle's algorithm.
                            let _ = (client.set_nodelay(true), server.set_nodelay(true));
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    let mut links = lock(&state.links);
                    links.retain(|link| !link.is_finished());
                    links.push(link.abort_handle());
                }
            }
        });
        Ok(Self { inner: Arc::new(Inner { port, upstream: upstream.to_owned(), state, accepting }) })
    }

    /// The proxy's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.inner.port)
    }

    /// Where it forwards to.
    pub fn upstream(&self) -> &str {
        &self.inner.upstream
    }

    /// `url` with the proxy in the upstream's place.
    pub fn replace_in(&self, url: &str) -> String {
        url.replacen(&self.inner.upstream, &self.address(), 1)
    }

    /// Breaks every connection made through the proxy; returns how many were open.
    pub fn cut(&self) -> usize {
        let links = std::mem::take(&mut *lock(&self.inner.state.links));
        let open = links.iter().filter(|link| !link.is_finished()).count();
        for link in links {
            link.abort();
        }
        open
    }

    /// While `down`, new connections are closed as soon as they are accepted.
    pub fn set_down(&self, down: bool) {
        self.inner.state.down.store(down, Ordering::SeqCst);
    }

    /// Refuses new connections for `outage`, from now.
    pub fn refuse_for(&self, outage: Duration) {
        *lock(&self.inner.state.refuse_until) = Some(Instant::now() + outage);
    }

    /// How many connections go through the proxy now.
    pub fn connections(&self) -> usize {
        lock(&self.inner.state.links).iter().filter(|link| !link.is_finished()).count()
    }
}
