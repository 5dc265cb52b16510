//! Ready-made [`Harness`]es for the common kinds of store, so that a plug-in file is a few lines:
//!
//! - [`InTempDir`]: a store that lives in files; each case gets a fresh temporary directory.
//! - [`OnServer`]: a store on a server found through an environment variable; each case gets a
//!   namespace of its own on it (a schema, a key prefix: a URL parameter the store honours), and
//!   the cases are skipped by name when the server cannot be reached, or failed under `CI=true`.
//!
//! Both locate their environment, so a durable store that declares `killable` gets the kill case
//! with no code of its own.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use payments_ports::PaymentsRepository;

use crate::{BoxError, Capabilities, Harness};

/// A store that lives in files: each case gets a fresh temporary directory, and `open` makes a
/// store in the directory it is given.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use payments_conformance::{Capabilities, harnesses::InTempDir};
/// # use payments_ports::PaymentsRepository;
/// # fn open(_: std::path::PathBuf) -> Result<Arc<dyn PaymentsRepository>, payments_conformance::BoxError> { unimplemented!() }
/// fn main() -> std::process::ExitCode {
///     let capabilities = Capabilities { durable: true, shared: false, killable: true, outbox: false };
///     payments_conformance::main(InTempDir::new("sqlite", capabilities, |dir| async move { open(dir) }))
/// }
/// ```
#[derive(Debug)]
pub struct InTempDir<F> {
    adapter: &'static str,
    capabilities: Capabilities,
    open: F,
}

impl<F> InTempDir<F> {
    /// The harness of the `adapter` store, which can do `capabilities`, opened by `open`.
    pub fn new<Fut>(adapter: &'static str, capabilities: Capabilities, open: F) -> Self
    where
        F: Fn(PathBuf) -> Fut,
        Fut: Future<Output = Result<Arc<dyn PaymentsRepository>, BoxError>>,
    {
        Self { adapter, capabilities, open }
    }
}

#[async_trait]
impl<F, Fut> Harness for InTempDir<F>
where
    F: Fn(PathBuf) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Arc<dyn PaymentsRepository>, BoxError>> + Send + 'static,
{
    type Env = tempfile::TempDir;

    fn adapter(&self) -> &'static str {
        self.adapter
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    async fn setup(&self) -> Result<tempfile::TempDir, BoxError> {
        Ok(tempfile::tempdir()?)
    }

    async fn open(&self, dir: &tempfile::TempDir) -> Result<Arc<dyn PaymentsRepository>, BoxError> {
        (self.open)(dir.path().to_owned()).await
    }

    fn locate(&self, dir: &tempfile::TempDir) -> Option<String> {
        Some(dir.path().display().to_string())
    }

    async fn open_at(&self, dir: &str) -> Result<Arc<dyn PaymentsRepository>, BoxError> {
        (self.open)(PathBuf::from(dir)).await
    }
}

/// A store on a server: its URL comes from an environment variable (or a default), and each case
/// gets it with a namespace of its own, `?<param>=conformance_<pid>_<n>`, which the store creates
/// when it opens and `remove` deletes afterwards.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use payments_conformance::{Capabilities, harnesses::OnServer};
/// # use payments_ports::PaymentsRepository;
/// # async fn connect(_: String) -> Result<Arc<dyn PaymentsRepository>, payments_conformance::BoxError> { unimplemented!() }
/// # async fn drop_schema(_: String) -> Result<(), payments_conformance::BoxError> { unimplemented!() }
/// fn main() -> std::process::ExitCode {
///     let capabilities = Capabilities { durable: true, shared: true, killable: true, outbox: false };
///     let server = OnServer::new("cockroach", capabilities, "PAYMENTS_TEST_COCKROACH_URL", "postgres://root@127.0.0.1:26257/test", "schema");
///     payments_conformance::main(server.opening(connect).removing(drop_schema))
/// }
/// ```
#[derive(Debug)]
pub struct OnServer<F = (), R = ()> {
    adapter: &'static str,
    capabilities: Capabilities,
    url_env: &'static str,
    default_url: &'static str,
    namespace: &'static str,
    open: F,
    remove: R,
}

impl OnServer {
    /// The harness of the `adapter` store, which can do `capabilities`, on the server at
    /// `$url_env` (or `default_url`), with each case's namespace in the URL parameter `namespace`.
    /// Give it [`opening`](Self::opening) and [`removing`](Self::removing).
    pub const fn new(
        adapter: &'static str,
        capabilities: Capabilities,
        url_env: &'static str,
        default_url: &'static str,
        namespace: &'static str,
    ) -> Self {
        Self { adapter, capabilities, url_env, default_url, namespace, open: (), remove: () }
    }
}

impl<R> OnServer<(), R> {
    /// Opens a store from a URL (the server's, with the case's namespace).
    pub fn opening<F, Fut>(self, open: F) -> OnServer<F, R>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<Arc<dyn PaymentsRepository>, BoxError>>,
    {
        let Self { adapter, capabilities, url_env, default_url, namespace, remove, .. } = self;
        OnServer { adapter, capabilities, url_env, default_url, namespace, open, remove }
    }
}

impl<F> OnServer<F, ()> {
    /// Removes what a case left at a URL (its namespace and everything in it).
    pub fn removing<R, Fut>(self, remove: R) -> OnServer<F, R>
    where
        R: Fn(String) -> Fut,
        Fut: Future<Output = Result<(), BoxError>>,
    {
        let Self { adapter, capabilities, url_env, default_url, namespace, open, .. } = self;
        OnServer { adapter, capabilities, url_env, default_url, namespace, open, remove }
    }
}

impl<F, R> OnServer<F, R> {
    fn server_url(&self) -> String {
        std::env::var(self.url_env).unwrap_or_else(|_| self.default_url.to_owned())
    }
}

/// `host:port` of a URL, for a reachability check that needs no driver.
fn host_and_port(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    host_port.contains(':').then(|| host_port.to_owned())
}

#[async_trait]
impl<F, FFut, R, RFut> Harness for OnServer<F, R>
where
    F: Fn(String) -> FFut + Send + Sync + 'static,
    FFut: Future<Output = Result<Arc<dyn PaymentsRepository>, BoxError>> + Send + 'static,
    R: Fn(String) -> RFut + Send + Sync + 'static,
    RFut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    type Env = String;

    fn adapter(&self) -> &'static str {
        self.adapter
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    async fn available(&self) -> Result<(), String> {
        let url = self.server_url();
        let Some(address) = host_and_port(&url) else {
            return Err(format!("${} has no host:port to reach", self.url_env));
        };
        match tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(&address)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(format!(
                "nothing answers at {address} ({err}); start the server or point {} at one",
                self.url_env
            )),
            Err(_) => Err(format!("{address} did not answer within 5 s; point {} at a server", self.url_env)),
        }
    }

    async fn setup(&self) -> Result<String, BoxError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let url = self.server_url();
        let separator = if url.contains('?') { '&' } else { '?' };
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Ok(format!("{url}{separator}{}=conformance_{}_{n}", self.namespace, std::process::id()))
    }

    async fn open(&self, url: &String) -> Result<Arc<dyn PaymentsRepository>, BoxError> {
        (self.open)(url.clone()).await
    }

    async fn teardown(&self, url: &String) -> Result<(), BoxError> {
        (self.remove)(url.clone()).await
    }

    fn locate(&self, url: &String) -> Option<String> {
        Some(url.clone())
    }

    async fn open_at(&self, url: &str) -> Result<Arc<dyn PaymentsRepository>, BoxError> {
        (self.open)(url.to_owned()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_of_a_server_url_is_found_whatever_its_credentials() {
        assert_eq!(host_and_port("postgres://u:p@db:5432/test?x=1").as_deref(), Some("db:5432"));
        assert_eq!(host_and_port("mysql://root@127.0.0.1:3306/test").as_deref(), Some("127.0.0.1:3306"));
        assert_eq!(host_and_port("redis://127.0.0.1:6379").as_deref(), Some("127.0.0.1:6379"));
        assert_eq!(host_and_port("postgres://db/test"), None);
    }
}
