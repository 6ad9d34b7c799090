//! A fault injector: wraps any real backend and fails chosen operations on command.
//!
//! Failure semantics are only trustworthy when tested against real parts, so the reconciler's
//! storage-failure tests run a real backend (memory, filesystem, S3) behind this wrapper rather
//! than a mock. Every call the injector does not fail goes to the wrapped backend unchanged.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{Notify, Semaphore};

use crate::digest::Digest;
use crate::key::ObjectKey;
use crate::storage::{ByteRange, Capabilities, ObjectBody, ObjectMeta, ObjectSummary, Storage, StorageError};

/// The operations of the [`Storage`] contract that can be failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Put,
    Get,
    Stat,
    List,
    Delete,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Self::Put => "put",
            Self::Get => "get",
            Self::Stat => "stat",
            Self::List => "list",
            Self::Delete => "delete",
        }
    }
}

/// The failure returned by an injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// [`StorageError::Unavailable`] (an outage).
    Unavailable,
    /// [`StorageError::OverBudget`] with the given budget and bytes in use.
    OverBudget { used: u64, budget: u64 },
    /// [`StorageError::NoSpace`] (a full volume).
    NoSpace,
    /// [`StorageError::AccessDenied`].
    AccessDenied,
    /// [`StorageError::Corrupt`].
    Corrupt,
    /// [`StorageError::StoreMissing`] (the bucket or root is gone).
    StoreMissing,
}

impl Fault {
    fn error(self, op: Operation, key: &str, size: u64) -> StorageError {
        let injected = "injected by the fault injector".to_owned();
        // A list prefix ends with `/`; the variants that carry an ObjectKey name its directory.
        let object = ObjectKey::parse(key.trim_end_matches('/'));
        match (self, object) {
            (Self::Unavailable, _) => {
                StorageError::Unavailable { operation: op.name(), key: key.to_owned(), message: injected }
            }
            (Self::NoSpace, _) => {
                StorageError::NoSpace { operation: op.name(), key: key.to_owned(), message: injected }
            }
            (Self::AccessDenied, _) => StorageError::AccessDenied { key: key.to_owned(), message: injected },
            (Self::StoreMissing, _) => {
                StorageError::StoreMissing { operation: op.name(), key: key.to_owned(), message: injected }
            }
            (Self::OverBudget { used, budget }, Ok(key)) => StorageError::OverBudget { key, size, used, budget },
            (Self::Corrupt, Ok(key)) => StorageError::Corrupt { key, message: injected },
            (Self::OverBudget { .. } | Self::Corrupt, Err(e)) => StorageError::InvalidKey(e),
        }
    }
}

/// How many calls a rule fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Times {
    /// The next `n` matching calls.
    Next(u32),
    /// Every matching call until [`FaultInjector::clear`].
    Always,
}

struct Rule {
    op: Operation,
    fault: Fault,
    times: Times,
}

/// A pause point: calls of `op` wait at the gate until it is opened.
struct Gate {
    op: Operation,
    waiting: Arc<Notify>,
    open: Arc<Semaphore>,
}

/// One call seen by the injector: operation, key or prefix, and `Ok` or the error kind.
pub type Call = (Operation, String, Result<(), &'static str>);

/// Wraps a backend and fails or holds chosen operations.
pub struct FaultInjector {
    inner: Arc<dyn Storage>,
    rules: Mutex<VecDeque<Rule>>,
    gates: Mutex<Vec<Gate>>,
    calls: Mutex<Vec<Call>>,
}

/// An armed gate; [`GateHandle::open`] lets the held calls (and all later ones) through.
pub struct GateHandle {
    waiting: Arc<Notify>,
    open: Arc<Semaphore>,
}

impl GateHandle {
    /// Resolves once a call is waiting at the gate.
    pub async fn reached(&self) {
        self.waiting.notified().await;
    }

    /// Lets every held and later call through (a closed semaphore stops no one).
    pub fn open(&self) {
        self.open.close();
    }
}

impl FaultInjector {
    pub fn new(inner: Arc<dyn Storage>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            rules: Mutex::new(VecDeque::new()),
            gates: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
        })
    }

    /// Fails calls of `op` with `fault`, `times` over. Rules apply in the order they were added.
    pub fn fail(&self, op: Operation, fault: Fault, times: Times) {
        self.lock_rules().push_back(Rule { op, fault, times });
    }

    /// Removes every rule and opens every gate.
    pub fn clear(&self) {
        self.lock_rules().clear();
        for gate in self.gates.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            gate.open.close();
        }
    }

    /// Holds calls of `op` before they reach the backend until the handle is opened.
    pub fn hold(&self, op: Operation) -> GateHandle {
        let gate = Gate { op, waiting: Arc::new(Notify::new()), open: Arc::new(Semaphore::new(0)) };
        let handle = GateHandle { waiting: gate.waiting.clone(), open: gate.open.clone() };
        self.gates.lock().unwrap_or_else(|p| p.into_inner()).push(gate);
        handle
    }

    /// Every call so far: operation, key or prefix, and whether it succeeded (or the error kind).
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Calls of `op` that failed (injected or not).
    pub fn failures(&self, op: Operation) -> usize {
        self.calls().iter().filter(|(o, _, r)| *o == op && r.is_err()).count()
    }

    fn lock_rules(&self) -> std::sync::MutexGuard<'_, VecDeque<Rule>> {
        self.rules.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits at a gate of `op`, then returns the injected failure for this call, if any.
    async fn before(&self, op: Operation, key: &str, size: u64) -> Result<(), StorageError> {
        let gate = {
            let gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
            gates.iter().find(|g| g.op == op).map(|g| (g.waiting.clone(), g.open.clone()))
        };
        if let Some((waiting, open)) = gate {
            waiting.notify_one();
            // No permit is ever added: the wait ends when the gate is opened (closed).
            let _ = open.acquire().await;
        }
        let mut rules = self.lock_rules();
        let Some(index) = rules.iter().position(|r| r.op == op) else { return Ok(()) };
        let fault = rules[index].fault;
        match &mut rules[index].times {
            Times::Always => {}
            Times::Next(n) if *n <= 1 => {
                rules.remove(index);
            }
            Times::Next(n) => *n -= 1,
        }
        Err(fault.error(op, key, size))
    }

    fn record<T>(&self, op: Operation, key: &str, result: &Result<T, StorageError>) {
        let outcome = result.as_ref().map(|_| ()).map_err(StorageError::kind);
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).push((op, key.to_owned(), outcome));
    }

    async fn run<T>(
        &self,
        op: Operation,
        key: &str,
        size: u64,
        call: impl std::future::Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        let result = match self.before(op, key, size).await {
            Ok(()) => call.await,
            Err(e) => Err(e),
        };
        self.record(op, key, &result);
        result
    }
}

#[async_trait]
impl Storage for FaultInjector {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn put(&self, key: &ObjectKey, body: Bytes, digest: &Digest) -> Result<ObjectMeta, StorageError> {
        let size = body.len() as u64;
        self.run(Operation::Put, key.as_str(), size, self.inner.put(key, body, digest)).await
    }

    async fn get(&self, key: &ObjectKey, range: Option<ByteRange>) -> Result<ObjectBody, StorageError> {
        self.run(Operation::Get, key.as_str(), 0, self.inner.get(key, range)).await
    }

    async fn stat(&self, key: &ObjectKey) -> Result<ObjectMeta, StorageError> {
        self.run(Operation::Stat, key.as_str(), 0, self.inner.stat(key)).await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        self.run(Operation::Delete, key.as_str(), 0, self.inner.delete(key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectSummary>, StorageError> {
        self.run(Operation::List, prefix, 0, self.inner.list(prefix)).await
    }

    fn url(&self, key: &ObjectKey) -> String {
        self.inner.url(key)
    }
}
