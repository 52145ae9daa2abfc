//! The etcd v3 backend.
//!
//! ```text
//!   caller thread (sync)            backend runtime (1 worker thread, owned by the store)
//!   ───────────────────            ───────────────────────────────────────────────────
//!   get/list/commit ── spawn ───▶  async etcd call ── std channel ──▶ caller blocks on recv
//!   Watch::next ◀── std channel ── watch pump task (reconnects, resumes from last revision)
//! ```
//!
//! The async client runs on a runtime this backend owns, and callers wait on plain std channels,
//! so the sync API works from any thread, including one inside another tokio runtime (it never
//! calls `block_on`, and the runtime is shut down with `shutdown_background`).
//!
//! `commit` is one etcd transaction: compares for every precondition (create: `create_revision
//! == 0`; update/delete: `version > 0`, plus `mod_revision == expected`), then all puts and
//! deletes. On failure the else branch reads every key, and the same precondition check as the
//! embedded store names the key that failed.
//!
//! Each endpoint gets its own client; calls go to the current one and move on to the next
//! endpoint when a connection cannot be made (the request was never sent, so a retry is safe).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Txn, TxnOpResponse,
    WatchOptions,
};
use tokio::runtime::{Handle, Runtime};

use crate::{
    Current, Datastore, Error, KeyValue, Listing, Revision, TxnOp, Watch, WatchEvent,
    check_precondition, check_transaction, prefix_end,
};

/// How long one etcd request may take before the call fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `connect` waits for a first answer from the cluster.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Keys per page when listing (the listing stays at one revision across pages).
const LIST_PAGE: i64 = 1000;
/// Largest gRPC message accepted from etcd (default tonic limit is 4 MiB).
const MAX_MESSAGE: usize = 256 * 1024 * 1024;
/// Pause before a broken watch stream is re-established, doubling up to the maximum.
const WATCH_RETRY_MIN: Duration = Duration::from_millis(100);
const WATCH_RETRY_MAX: Duration = Duration::from_secs(2);

/// The etcd v3 datastore.
pub struct EtcdStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.inner.cluster.endpoints)
            .finish_non_exhaustive()
    }
}

/// The runtime and the cluster's clients; shared by the store and its watches.
struct Inner {
    runtime: Option<Runtime>,
    handle: Handle,
    cluster: Arc<Cluster>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Unlike dropping it, this never panics inside another runtime's context.
            runtime.shutdown_background();
        }
    }
}

/// One client per endpoint and the one in use.
struct Cluster {
    endpoints: Vec<String>,
    clients: Vec<Client>,
    current: AtomicUsize,
}

impl Cluster {
    /// Runs `request` against the current endpoint, moving on to the next one while the
    /// connection cannot be established (at most two rounds over all endpoints).
    async fn call<T, F, Fut>(&self, request: F) -> Result<T, etcd_client::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let attempts = self.clients.len() * 2;
        let mut attempt = 1;
        loop {
            let Some((index, client)) = self.client() else {
                return Err(etcd_client::Error::InvalidArgs(
                    "no etcd endpoints".to_string(),
                ));
            };
            match request(client).await {
                Err(e) if attempt < attempts && is_connect_error(&e) => {
                    self.advance(index);
                    attempt += 1;
                    if attempt > self.clients.len() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                other => return other,
            }
        }
    }

    /// The current endpoint's index and client.
    fn client(&self) -> Option<(usize, Client)> {
        let index = self.current.load(Ordering::Relaxed) % self.clients.len().max(1);
        self.clients
            .get(index)
            .map(|client| (index, client.clone()))
    }

    /// Moves to the endpoint after `failed`, unless another caller already moved on.
    fn advance(&self, failed: usize) {
        let next = (failed + 1) % self.clients.len().max(1);
        let _ = self
            .current
            .compare_exchange(failed, next, Ordering::Relaxed, Ordering::Relaxed);
        tracing::debug!(
            failed = self.endpoints.get(failed).map(String::as_str),
            "etcd endpoint unreachable, trying the next one"
        );
    }
}

impl EtcdStore {
    /// Connects to the cluster at `endpoints` (`host:port`, plain HTTP) and checks that one of
    /// them answers.
    pub fn connect(endpoints: &[String]) -> Result<Self, Error> {
        let names = endpoints.join(",");
        let context = || format!("connecting to etcd at {names}");
        if endpoints.is_empty() {
            return Err(Error::backend(context(), "no endpoints given"));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("felis-etcd")
            .enable_all()
            .build()
            .map_err(|e| Error::backend(context(), e))?;
        let handle = runtime.handle().clone();
        let urls: Vec<String> = endpoints.iter().map(|e| format!("http://{e}")).collect();
        let clients = run(&handle, CONNECT_TIMEOUT, context, async move {
            let mut clients = Vec::new();
            for url in urls {
                let options = ConnectOptions::new()
                    .with_connect_timeout(CONNECT_TIMEOUT)
                    .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
                    .with_keep_alive_while_idle(true);
                clients.push(Client::connect([url], Some(options)).await?);
            }
            Ok(clients)
        })?;
        let store = Self {
            inner: Arc::new(Inner {
                runtime: Some(runtime),
                handle,
                cluster: Arc::new(Cluster {
                    endpoints: endpoints.to_vec(),
                    clients,
                    current: AtomicUsize::new(0),
                }),
            }),
        };
        // Clients connect lazily: ask for the revision so a wrong address fails here.
        store.revision().map_err(|e| match e {
            Error::Backend { source, .. } => Error::Backend {
                context: context(),
                source,
            },
            other => other,
        })?;
        Ok(store)
    }

    /// The `host:port` endpoints this store talks to.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.cluster.endpoints
    }

    /// Runs `request` with a KV client of the current endpoint (with failover), waiting for it
    /// on this thread.
    fn kv_call<T, F, Fut>(&self, context: impl FnOnce() -> String, request: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: Fn(etcd_client::KvClient) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send,
    {
        let cluster = Arc::clone(&self.inner.cluster);
        run(&self.inner.handle, CALL_TIMEOUT, context, async move {
            cluster
                .call(|client| request(client.kv_client().max_decoding_message_size(MAX_MESSAGE)))
                .await
        })
    }

    fn list_once(&self, prefix: &str) -> Result<Listing, Error> {
        let (mut start, end) = key_range(prefix);
        let mut items = Vec::new();
        let mut revision = 0;
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let page_start = start.clone();
            let mut response = self.kv_call(
                || format!("listing {prefix}"),
                move |mut kv| {
                    let (key, options) = (page_start.clone(), options.clone());
                    async move { kv.get(key, Some(options)).await }
                },
            )?;
            if revision == 0 {
                revision = header_revision(response.header());
            }
            let more = response.more();
            let kvs = response.take_kvs();
            let Some(last) = kvs.last() else { break };
            start = last.key().to_vec();
            start.push(0);
            for kv in kvs {
                items.push(convert_kv(&kv, || format!("listing {prefix}"))?);
            }
            if !more {
                break;
            }
        }
        Ok(Listing {
            items,
            revision: Revision(revision),
        })
    }
}

/// The compares of an update or delete: the key exists, at mod revision `expected` if given.
/// One compare per op where possible (etcd limits compares per transaction): an existing key
/// never has a mod revision <= 0, so `mod_revision == expected > 0` implies existence.
fn exists_at(key: &[u8], expected: Option<Revision>) -> Vec<Compare> {
    match expected {
        Some(Revision(expected)) if expected > 0 => {
            vec![Compare::mod_revision(
                key.to_vec(),
                CompareOp::Equal,
                expected,
            )]
        }
        Some(Revision(expected)) => vec![
            Compare::version(key.to_vec(), CompareOp::Greater, 0),
            Compare::mod_revision(key.to_vec(), CompareOp::Equal, expected),
        ],
        None => vec![Compare::version(key.to_vec(), CompareOp::Greater, 0)],
    }
}

/// Runs `future` on the backend runtime and waits for it on this thread, without `block_on`.
fn run<T, F>(
    handle: &Handle,
    timeout: Duration,
    context: impl FnOnce() -> String,
    future: F,
) -> Result<T, Error>
where
    T: Send + 'static,
    F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    handle.spawn(async move {
        let result = tokio::time::timeout(timeout, future).await;
        // The caller may have gone (it never does before the answer); nothing to do then.
        let _ = tx.send(result);
    });
    match rx.recv() {
        Ok(Ok(Ok(value))) => Ok(value),
        Ok(Ok(Err(e))) => Err(Error::backend(context(), e)),
        Ok(Err(_elapsed)) => Err(Error::backend(
            context(),
            format!("etcd did not answer within {timeout:?}"),
        )),
        Err(_) => Err(Error::backend(
            context(),
            "the etcd client runtime has stopped",
        )),
    }
}

/// The etcd key range `[start, end)` of every key starting with `prefix` (`end = "\0"` is
/// etcd's "no upper bound").
fn key_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let start = if prefix.is_empty() {
        vec![0]
    } else {
        prefix.as_bytes().to_vec()
    };
    let end = prefix_end(prefix.as_bytes()).unwrap_or_else(|| vec![0]);
    (start, end)
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.map_or(0, etcd_client::ResponseHeader::revision)
}

fn convert_kv(
    kv: &etcd_client::KeyValue,
    context: impl FnOnce() -> String,
) -> Result<KeyValue, Error> {
    let key = std::str::from_utf8(kv.key())
        .map_err(|e| Error::backend(format!("{}: a key is not UTF-8", context()), e))?;
    Ok(KeyValue {
        key: key.to_string(),
        value: kv.value().to_vec(),
        create_revision: Revision(kv.create_revision()),
        mod_revision: Revision(kv.mod_revision()),
    })
}

/// Could no connection be made (so the request was never sent and may go elsewhere)?
fn is_connect_error(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(status) => {
            // Only failures to open a connection: "connection reset" and the like may come
            // after the request was sent, and retrying a write then could apply it twice.
            let message = status.message();
            status.code() == tonic::Code::Unavailable
                && (message.contains("tcp connect error")
                    || message.contains("error trying to connect"))
        }
        _ => false,
    }
}

/// Is this etcd's "required revision has been compacted" answer?
fn is_compacted(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(status)
        if status.message().contains("required revision has been compacted"))
}

impl Datastore for EtcdStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, Error> {
        let request = key.as_bytes().to_vec();
        let response = self.kv_call(
            || format!("reading {key}"),
            move |mut kv| {
                let request = request.clone();
                async move { kv.get(request, None).await }
            },
        )?;
        response
            .kvs()
            .first()
            .map(|kv| convert_kv(kv, || format!("reading {key}")))
            .transpose()
    }

    fn list(&self, prefix: &str) -> Result<Listing, Error> {
        // A page pinned to the first page's revision can be compacted away mid-listing:
        // start over at the new revision.
        let mut attempt = 0;
        loop {
            match self.list_once(prefix) {
                Err(Error::Backend { source, .. })
                    if attempt < 3
                        && source
                            .downcast_ref::<etcd_client::Error>()
                            .is_some_and(is_compacted) =>
                {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn commit(&self, ops: &[TxnOp]) -> Result<Revision, Error> {
        check_transaction(ops)?;
        if ops.is_empty() {
            return self.revision();
        }
        let mut compares = Vec::new();
        let mut writes = Vec::new();
        let mut reads = Vec::new();
        for op in ops {
            let key = op.key().as_bytes().to_vec();
            match op {
                TxnOp::Create { value, .. } => {
                    compares.push(Compare::create_revision(key.clone(), CompareOp::Equal, 0));
                    writes.push(etcd_client::TxnOp::put(key.clone(), value.clone(), None));
                }
                TxnOp::Put { value, .. } => {
                    writes.push(etcd_client::TxnOp::put(key.clone(), value.clone(), None));
                }
                TxnOp::Update {
                    value, expected, ..
                } => {
                    compares.extend(exists_at(&key, *expected));
                    writes.push(etcd_client::TxnOp::put(key.clone(), value.clone(), None));
                }
                TxnOp::Delete { expected, .. } => {
                    compares.extend(exists_at(&key, *expected));
                    writes.push(etcd_client::TxnOp::delete(key.clone(), None));
                }
            }
            reads.push(etcd_client::TxnOp::get(
                key,
                Some(GetOptions::new().with_keys_only()),
            ));
        }
        let txn = Txn::new().when(compares).and_then(writes).or_else(reads);
        let context = || match ops {
            [op] => format!("writing {}", op.key()),
            [first, ..] => format!("committing {} ops starting with {}", ops.len(), first.key()),
            [] => "committing".to_string(),
        };
        let response = self.kv_call(context, move |mut kv| {
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })?;
        if response.succeeded() {
            return Ok(Revision(header_revision(response.header())));
        }
        // The else branch read every key at the transaction's revision: find the culprit.
        for (op, read) in ops.iter().zip(response.op_responses()) {
            let found = match read {
                TxnOpResponse::Get(get) => get.kvs().first().map(|kv| Current {
                    create_revision: kv.create_revision(),
                    mod_revision: kv.mod_revision(),
                }),
                _ => None,
            };
            check_precondition(op, found.as_ref())?;
        }
        Err(Error::backend(
            context(),
            "etcd refused the transaction although every precondition holds",
        ))
    }

    fn watch(&self, prefix: &str, from: Revision) -> Result<Box<dyn Watch>, Error> {
        let (tx, rx) = mpsc::channel();
        let (cancel, cancelled) = tokio::sync::oneshot::channel();
        let (key, end) = key_range(prefix);
        self.inner.handle.spawn(pump_watch(
            Arc::clone(&self.inner.cluster),
            prefix.to_string(),
            key,
            end,
            from.0.max(1),
            tx,
            cancelled,
        ));
        Ok(Box::new(EtcdWatch {
            events: rx,
            _cancel: cancel,
            _inner: Arc::clone(&self.inner),
            ended: false,
        }))
    }

    fn revision(&self) -> Result<Revision, Error> {
        let response = self.kv_call(
            || "reading the revision".to_string(),
            |mut kv| async move {
                kv.get(vec![0u8], Some(GetOptions::new().with_count_only()))
                    .await
            },
        )?;
        Ok(Revision(header_revision(response.header())))
    }

    fn compact(&self, revision: Revision) -> Result<(), Error> {
        let context = || format!("compacting to revision {revision}");
        let current = self.revision()?;
        if revision > current {
            return Err(Error::backend(
                context(),
                format!("revision {revision} is beyond the current revision {current}"),
            ));
        }
        let result = self.kv_call(context, move |mut kv| async move {
            let options = etcd_client::CompactionOptions::new().with_physical();
            kv.compact(revision.0, Some(options)).await
        });
        match result {
            Ok(_) => Ok(()),
            // Already compacted at or beyond `revision`: nothing to do.
            Err(Error::Backend { source, .. })
                if source
                    .downcast_ref::<etcd_client::Error>()
                    .is_some_and(is_compacted) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// A watch fed by a task on the backend runtime.
struct EtcdWatch {
    events: mpsc::Receiver<Result<WatchEvent, Error>>,
    /// Dropping this stops the pump task (and so the etcd watch).
    _cancel: tokio::sync::oneshot::Sender<()>,
    /// Keeps the runtime and client alive as long as the watch.
    _inner: Arc<Inner>,
    ended: bool,
}

impl Watch for EtcdWatch {
    fn next(&mut self, timeout: Duration) -> Result<Option<WatchEvent>, Error> {
        if self.ended {
            return Ok(None);
        }
        match self.events.recv_timeout(timeout) {
            Ok(Ok(event)) => {
                if matches!(event, WatchEvent::Compacted { .. }) {
                    self.ended = true;
                }
                Ok(Some(event))
            }
            Ok(Err(e)) => Err(e),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                self.ended = true;
                Err(Error::backend(
                    "watching etcd",
                    "the watch task has stopped",
                ))
            }
        }
    }
}

/// Streams events for `[key, end)` from revision `next` into `tx` until cancelled, re-creating
/// the etcd watch from the first undelivered revision whenever the stream breaks.
async fn pump_watch(
    cluster: Arc<Cluster>,
    prefix: String,
    key: Vec<u8>,
    end: Vec<u8>,
    mut next: i64,
    tx: mpsc::Sender<Result<WatchEvent, Error>>,
    mut cancelled: tokio::sync::oneshot::Receiver<()>,
) {
    let mut retry = WATCH_RETRY_MIN;
    loop {
        let options = WatchOptions::new()
            .with_range(end.clone())
            .with_start_revision(next);
        let open = cluster.call(|client| {
            let mut client = client.watch_client().max_decoding_message_size(MAX_MESSAGE);
            let (key, options) = (key.clone(), options.clone());
            async move { client.watch(key, Some(options)).await }
        });
        let opened = tokio::select! {
            _ = &mut cancelled => return,
            opened = open => opened,
        };
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(%prefix, next, error = %e, "etcd watch failed, retrying");
                tokio::select! {
                    _ = &mut cancelled => return,
                    () = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(WATCH_RETRY_MAX);
                continue;
            }
        };
        loop {
            let message = tokio::select! {
                _ = &mut cancelled => return,
                message = stream.message() => message,
            };
            let response = match message {
                Ok(Some(response)) => response,
                Ok(None) => {
                    tracing::warn!(%prefix, next, "etcd watch stream ended, re-watching");
                    break;
                }
                Err(e) => {
                    tracing::warn!(%prefix, next, error = %e, "etcd watch stream broke, re-watching");
                    break;
                }
            };
            retry = WATCH_RETRY_MIN;
            if response.compact_revision() > 0 {
                let event = WatchEvent::Compacted {
                    compact_revision: Revision(response.compact_revision()),
                };
                let _ = tx.send(Ok(event));
                return;
            }
            if response.canceled() {
                tracing::warn!(%prefix, next, reason = response.cancel_reason(),
                    "etcd cancelled the watch, re-watching");
                break;
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let revision = kv.mod_revision();
                let converted = match event.event_type() {
                    EventType::Put => {
                        convert_kv(kv, || format!("watching {prefix}")).map(WatchEvent::Put)
                    }
                    EventType::Delete => std::str::from_utf8(kv.key())
                        .map(|key| WatchEvent::Delete {
                            key: key.to_string(),
                            revision: Revision(revision),
                        })
                        .map_err(|e| {
                            Error::backend(format!("watching {prefix}: a key is not UTF-8"), e)
                        }),
                };
                if tx.send(converted).is_err() {
                    return; // the watch was dropped
                }
                next = next.max(revision + 1);
            }
        }
        tokio::select! {
            _ = &mut cancelled => return,
            () = tokio::time::sleep(retry) => {}
        }
        retry = (retry * 2).min(WATCH_RETRY_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: tonic::Code, message: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::new(code, message))
    }

    #[test]
    fn only_failures_to_connect_move_to_the_next_endpoint() {
        assert!(is_connect_error(&status(
            tonic::Code::Unavailable,
            "tcp connect error"
        )));
        assert!(!is_connect_error(&status(
            tonic::Code::Unavailable,
            "connection reset by peer"
        )));
        assert!(!is_connect_error(&status(
            tonic::Code::FailedPrecondition,
            "tcp connect error"
        )));
    }

    #[test]
    fn recognises_etcd_compaction_errors() {
        let compacted = "etcdserver: mvcc: required revision has been compacted";
        assert!(is_compacted(&status(tonic::Code::OutOfRange, compacted)));
        assert!(!is_compacted(&status(
            tonic::Code::OutOfRange,
            "mvcc: required revision is a future revision"
        )));
    }

    #[test]
    fn key_ranges_cover_exactly_the_prefix() {
        assert_eq!(key_range("/a/"), (b"/a/".to_vec(), b"/a0".to_vec()));
        assert_eq!(key_range(""), (vec![0], vec![0]));
    }

    #[test]
    fn cas_on_a_positive_revision_needs_one_compare() {
        assert_eq!(exists_at(b"/k", Some(Revision(5))).len(), 1);
        assert_eq!(exists_at(b"/k", None).len(), 1);
        assert_eq!(exists_at(b"/k", Some(Revision(0))).len(), 2);
    }
}
