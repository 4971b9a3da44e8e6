//! Acknowledgements: when a Kafka input offset may be committed, in either delivery mode.
//!
//! `at_least_once`: an offset is stored (`store_offset`, to go out with the next commit)
//! only when its classification or rejection has been delivered (the producer's delivery
//! report said so) AND every earlier offset of the same partition taken by this worker is
//! done too: cutouts and batches finish out of order, and committing past an undelivered item
//! would lose it on a restart. [`OffsetTracker`] is that ordering logic, with no broker in it.
//!
//! `exactly_once`: results and rejections are sent inside a producer transaction, and the
//! consumed positions are committed in the same transaction
//! (`send_offsets_to_transaction`, with the consumer's group metadata, so that the broker
//! fences a worker that has been expelled from the group). Outcomes reach the sink in input
//! order, so the position to commit for a partition is the offset after the last outcome
//! sent for it. A failed transaction is aborted and its partitions are rewound to where it
//! began; a fenced producer (another instance took its `transactional.id`) stops the worker.
//!
//! Partitions come and go with rebalances. Each assignment opens a new generation of a
//! partition, and every record carries the generation it was read in
//! ([`Origin::Stream`](crate::domain::Origin)). On revocation the stored offsets are
//! committed (the open transaction, in `exactly_once`) and the partition is forgotten: an
//! outcome of an earlier generation is never acknowledged (`at_least_once`) nor sent
//! (`exactly_once`), so it cannot commit over the new owner's progress. A rewind opens a
//! new generation the same way.
//!
//! This module owns that bookkeeping and the rdkafka contexts that drive it (consumer
//! rebalances, producer delivery reports), and in `exactly_once` the transaction. It does
//! not consume: the Kafka source does, with the context made here; the pipeline wires them.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, util::Timeout};

use crate::domain::Origin;
use crate::telemetry::{ConsumerStats, Metrics};

/// A topic and partition.
pub type Partition = (String, i32);

/// How many times a transactional call that timed out (a retriable error) is made before
/// the worker gives up on the transaction.
const TRANSACTION_TRIES: u32 = 5;

/// How long a transaction's broker round trips (offsets, commit, abort) may take.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// The input record an outcome acknowledges: its position and the generation it was read in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub partition: Partition,
    pub offset: i64,
    pub generation: u64,
}

impl Ack {
    /// The acknowledgement of a record from a stream; None for other input.
    pub fn of(origin: &Origin) -> Option<Ack> {
        match origin {
            Origin::Input(_) => None,
            Origin::Stream {
                topic,
                partition,
                offset,
                generation,
            } => Some(Ack {
                partition: (topic.clone(), *partition),
                offset: *offset,
                generation: *generation,
            }),
        }
    }
}

/// The in-flight offsets of one assigned partition.
#[derive(Debug, Default)]
struct PartitionState {
    /// Which assignment of this partition this state belongs to.
    generation: u64,
    /// Offsets taken and not yet released: offset -> done. Bounded by the items in flight,
    /// which the pipeline's bounded queues bound.
    pending: BTreeMap<i64, bool>,
}

/// Per partition, which offsets are in flight and which are done; says when the committed
/// position may advance. Pure logic: the broker-facing parts call it.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<Partition, PartitionState>,
    next_generation: u64,
}

impl OffsetTracker {
    /// An empty tracker: no partition assigned.
    pub fn new() -> Self {
        Self::default()
    }

    /// A partition was assigned to this worker (or rewound): a new generation with nothing
    /// in flight. Returns that generation.
    pub fn assign(&mut self, partition: Partition) -> u64 {
        self.next_generation += 1;
        let generation = self.next_generation;
        self.partitions.insert(
            partition,
            PartitionState {
                generation,
                pending: BTreeMap::new(),
            },
        );
        generation
    }

    /// A partition was revoked (or lost): forget it, so that late completions of its
    /// in-flight items are ignored. Returns how many were still in flight.
    pub fn revoke(&mut self, partition: &Partition) -> usize {
        self.partitions
            .remove(partition)
            .map_or(0, |state| state.pending.len())
    }

    /// The current generation of an assigned partition.
    pub fn generation(&self, partition: &Partition) -> Option<u64> {
        self.partitions.get(partition).map(|state| state.generation)
    }

    /// The source took `offset` of `partition`. Returns the generation it belongs to, or
    /// None when the partition is not assigned (the offset will not be acknowledged).
    pub fn register(&mut self, partition: &Partition, offset: i64) -> Option<u64> {
        let state = self.partitions.get_mut(partition)?;
        state.pending.insert(offset, false);
        Some(state.generation)
    }

    /// `ack`'s outcome was delivered. Returns the highest offset that may now be stored
    /// (every offset up to it is done), or None when the position does not move: an earlier
    /// offset is still in flight, or the record is not of the current generation (its
    /// partition was revoked or rewound since it was taken).
    pub fn complete(&mut self, ack: &Ack) -> Option<i64> {
        let state = self
            .partitions
            .get_mut(&ack.partition)
            .filter(|state| state.generation == ack.generation)?;
        let done = state.pending.get_mut(&ack.offset)?;
        *done = true;
        let mut released = None;
        while let Some(entry) = state.pending.first_entry() {
            if !*entry.get() {
                break;
            }
            released = Some(*entry.key());
            entry.remove();
        }
        released
    }

    /// Items taken and not yet done, over all assigned partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions
            .values()
            .map(|state| state.pending.len())
            .sum()
    }
}

/// The consumer as the acknowledgement path sees it: stores and commits offsets.
pub type AckConsumer = BaseConsumer<AckContext>;

/// The producer of results in `exactly_once` mode: its delivery reports acknowledge
/// nothing (the transaction's commit does).
pub type TransactionalProducer = ThreadedProducer<DeliveryContext>;

/// Why an acknowledgement could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AckError {
    /// The transactional producer was fenced: another instance with the same
    /// `transactional.id` started, or this one was expelled from its group. This instance
    /// must stop; what it did not commit is redone by the others.
    #[error("this worker was fenced and must stop (another instance took over its work): {0}")]
    Fenced(KafkaError),
    /// A transaction's commit did not finish in time and may still be going on, so it can
    /// be neither aborted nor taken as done: the worker stops, and the next instance with
    /// its `transactional.id` settles it (committed or aborted, never both).
    #[error(
        "a transaction's outcome is unknown after {TRANSACTION_TRIES} tries and this worker must stop (its restart settles it): {0}"
    )]
    Unsettled(KafkaError),
    /// `at_least_once`: results were not delivered (refused by the broker, or expired).
    #[error(
        "{failed} results were not delivered (the first: {first}); their records stay uncommitted and are read again after a restart"
    )]
    Undelivered { failed: u64, first: String },
    /// A partition could not be rewound to where an aborted transaction began: reading on
    /// would commit past records whose results were discarded.
    #[error(
        "cannot rewind {topic} [{partition}] to offset {offset} after an aborted transaction: {source}"
    )]
    Rewind {
        topic: String,
        partition: i32,
        offset: i64,
        #[source]
        source: KafkaError,
    },
    #[error("{action}: {source}")]
    Kafka {
        action: &'static str,
        #[source]
        source: KafkaError,
    },
}

/// The open transaction of an `exactly_once` worker.
struct Transaction {
    producer: Arc<TransactionalProducer>,
    open: bool,
    /// Per partition with outcomes in the open transaction: the first offset sent (where to
    /// rewind to if it aborts) and the next offset to consume (what it commits).
    ranges: BTreeMap<Partition, (i64, i64)>,
    /// Partitions to seek back after an abort, with the offset; applied by the source thread.
    rewinds: Vec<(Partition, i64)>,
    /// A fatal error: nothing more may be sent.
    fenced: Option<String>,
}

/// Shared between the consumer's rebalance callbacks, the producer's delivery reports, the
/// sink and the pipeline. Lock order: `transaction`, then `tracker`.
#[derive(Default)]
struct Shared {
    tracker: Mutex<OffsetTracker>,
    /// The consumer, once it exists (it is created with this context, so it is set after).
    /// Weak: the consumer owns its context, which owns this; a strong reference would keep
    /// the consumer alive forever and it would never leave the group.
    consumer: OnceLock<Weak<AckConsumer>>,
    /// Where the consumer's group membership and lag are reported, once given.
    metrics: OnceLock<Arc<Metrics>>,
    /// `exactly_once` only.
    transaction: Option<Mutex<Transaction>>,
    /// `at_least_once`: the results the producer could not deliver (their offsets hold
    /// their partitions' commits back).
    undelivered: Arc<DeliveryFailures>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("tracker", &self.tracker)
            .field("exactly_once", &self.transaction.is_some())
            .finish_non_exhaustive()
    }
}

/// The acknowledgement path of one worker: give its [`AckContext`] to the Kafka consumer
/// (and, in `at_least_once`, its [`DeliveryContext`] to the producer), [`Acks::attach`] the
/// consumer, register each offset the source takes; it stores offsets as their results are
/// delivered, or sends results in transactions that commit the offsets.
#[derive(Debug, Clone, Default)]
pub struct Acks {
    shared: Arc<Shared>,
}

impl Acks {
    /// An `at_least_once` acknowledgement path with no partition assigned.
    pub fn new() -> Self {
        Self::default()
    }

    /// An `exactly_once` acknowledgement path: results go out through `producer`, whose
    /// transactions are initialised (`init_transactions`), in transactions that also commit
    /// the consumed offsets.
    pub fn exactly_once(producer: TransactionalProducer) -> Self {
        Self {
            shared: Arc::new(Shared {
                transaction: Some(Mutex::new(Transaction {
                    producer: Arc::new(producer),
                    open: false,
                    ranges: BTreeMap::new(),
                    rewinds: Vec::new(),
                    fenced: None,
                })),
                ..Default::default()
            }),
        }
    }

    /// Whether results go out in transactions.
    pub fn is_transactional(&self) -> bool {
        self.shared.transaction.is_some()
    }

    /// The consumer context: commits on revocation and keeps the tracker's assignment.
    pub fn consumer_context(&self) -> AckContext {
        AckContext {
            shared: self.shared.clone(),
        }
    }

    /// The producer context of an `at_least_once` sink: delivery reports acknowledge offsets.
    pub fn delivery_context(&self) -> DeliveryContext {
        DeliveryContext {
            acks: Some(self.clone()),
            failures: self.shared.undelivered.clone(),
        }
    }

    /// `at_least_once`: Err once a result was not delivered. Its record's offset, and every
    /// later one of its partition, can no longer be committed: the worker must stop, and its
    /// restart reads them again.
    pub fn check_delivered(&self) -> Result<(), AckError> {
        match self.shared.undelivered.get() {
            None => Ok(()),
            Some((failed, first)) => Err(AckError::Undelivered {
                failed,
                first: first.to_string(),
            }),
        }
    }

    /// Gives the acknowledgement path the consumer to store offsets on. Call once.
    pub fn attach(&self, consumer: &Arc<AckConsumer>) {
        if self.shared.consumer.set(Arc::downgrade(consumer)).is_err() {
            tracing::warn!("a second consumer was attached to one acknowledgement path; ignored");
        }
    }

    /// Reports the consumer's group membership and lag (its statistics) to `metrics`. Call once.
    pub fn observe(&self, metrics: Arc<Metrics>) {
        let _ = self.shared.metrics.set(metrics);
    }

    /// The source took this record: it will be acknowledged when delivered. Returns the
    /// generation of its partition's assignment, None when the partition is not assigned.
    pub fn register(&self, topic: &str, partition: i32, offset: i64) -> Option<u64> {
        let partition = (topic.to_string(), partition);
        if let Some(transaction) = &self.shared.transaction
            && lock(transaction)
                .rewinds
                .iter()
                .any(|(p, _)| *p == partition)
        {
            // Read before the rewind's seek: read again after it.
            return None;
        }
        self.tracker().register(&partition, offset)
    }

    /// `at_least_once`: the result of this record was delivered; store its partition's
    /// position if it moved.
    pub fn complete(&self, ack: &Ack) {
        // Declared before the guard so that it is dropped after it: dropping the last
        // reference closes the consumer, whose revocation callback takes the lock.
        let consumer = self.consumer();
        // The lock is held across the store, so that a revocation (which takes it too)
        // sees either the store, and commits it, or none.
        let mut tracker = self.tracker();
        let released = tracker.complete(ack);
        if let (Some(last_done), Some(consumer)) = (released, &consumer) {
            let (topic, partition) = &ack.partition;
            // librdkafka stores `last_done + 1`: the next offset to read.
            if let Err(e) = consumer.store_offset(topic, *partition, last_done) {
                tracing::debug!(topic, partition, offset = last_done, error = %e, "offset not stored");
            }
        }
        drop(tracker);
    }

    /// `exactly_once`: sends one message inside the open transaction (opening one if none
    /// is). `send` queues it on the producer it is given. The outcome of a record from a
    /// partition revoked or rewound since it was read is not sent: that record is read
    /// again, by the new owner or after the rewind. Returns whether it was sent.
    pub fn send_in_transaction<E>(
        &self,
        ack: Option<&Ack>,
        send: impl FnOnce(&TransactionalProducer) -> Result<(), E>,
    ) -> Result<bool, TransactionSendError<E>> {
        let Some(transaction) = &self.shared.transaction else {
            return Err(TransactionSendError::NotTransactional);
        };
        let mut txn = lock(transaction);
        if let Some(reason) = &txn.fenced {
            return Err(TransactionSendError::Stopped(reason.clone()));
        }
        if let Some(ack) = ack {
            // In input order every earlier offset of the partition is already sent, so
            // this releases `ack.offset` itself; None: not of the current generation.
            if self.tracker().complete(ack).is_none() {
                tracing::debug!(topic = %ack.partition.0, partition = ack.partition.1, offset = ack.offset,
                    "outcome of a revoked or rewound partition dropped; its record is read again");
                return Ok(false);
            }
        }
        if !txn.open {
            txn.producer
                .begin_transaction()
                .map_err(|e| TransactionSendError::Kafka("cannot begin a transaction", e))?;
            txn.open = true;
        }
        send(&txn.producer).map_err(TransactionSendError::Send)?;
        if let Some(ack) = ack {
            txn.ranges
                .entry(ack.partition.clone())
                .and_modify(|range| range.1 = ack.offset + 1)
                .or_insert((ack.offset, ack.offset + 1));
        }
        Ok(true)
    }

    /// Items taken and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.tracker().in_flight()
    }

    /// The periodic commit of a long run (called by the source thread): `at_least_once`
    /// commits the stored offsets asynchronously; `exactly_once` commits the open
    /// transaction and applies the rewinds of an aborted one. Err only when the worker
    /// must stop.
    pub fn commit_periodic(&self) -> Result<(), AckError> {
        let Some(consumer) = self.consumer() else {
            return Ok(());
        };
        if self.shared.transaction.is_none() {
            if let Err(e) = commit_stored(&consumer, CommitMode::Async) {
                tracing::warn!(error = %e, "offset commit failed; it is retried with the next one");
            }
            return Ok(());
        }
        match self.commit_transaction(&consumer, &[]) {
            Err(e @ (AckError::Fenced(_) | AckError::Unsettled(_))) => Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "transaction aborted; its records are read again");
                self.rewind_aborted()
            }
            Ok(()) => Ok(()),
        }
    }

    /// Commits what is done and waits for the broker (shutdown, after the last outcome was
    /// written): the stored offsets, or the open transaction.
    pub fn commit_final(&self) -> Result<(), AckError> {
        let Some(consumer) = self.consumer() else {
            return Ok(());
        };
        if self.shared.transaction.is_some() {
            return self.commit_transaction(&consumer, &[]);
        }
        commit_stored(&consumer, CommitMode::Sync).map_err(|source| AckError::Kafka {
            action: "final offset commit",
            source,
        })
    }

    /// Commits the open transaction with its offsets; first forgets `revoking`, whose
    /// outcomes must not be sent after this commit. On an abortable failure, aborts and
    /// schedules the rewind of every partition it held.
    fn commit_transaction<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        revoking: &[Partition],
    ) -> Result<(), AckError> {
        let Some(transaction) = &self.shared.transaction else {
            return Ok(());
        };
        let mut txn = lock(transaction);
        {
            let mut tracker = self.tracker();
            for partition in revoking {
                let abandoned = tracker.revoke(partition);
                tracing::info!(topic = %partition.0, partition = partition.1, abandoned, "partition revoked");
            }
        }
        if !txn.open {
            return Ok(());
        }
        let result = commit_open(&txn.producer, consumer, &txn.ranges);
        match result {
            Ok(()) => {
                txn.open = false;
                txn.ranges.clear();
                Ok(())
            }
            Err(e) if is_fatal(&e) => {
                txn.fenced = Some(e.to_string());
                Err(AckError::Fenced(e))
            }
            Err(e) if is_retriable(&e) => {
                txn.fenced = Some(e.to_string());
                Err(AckError::Unsettled(e))
            }
            Err(e) => {
                tracing::warn!(error = %e, "transaction failed: aborting it and rewinding its partitions");
                let abort = txn.producer.abort_transaction(TRANSACTION_TIMEOUT);
                txn.open = false;
                let ranges = std::mem::take(&mut txn.ranges);
                {
                    let mut tracker = self.tracker();
                    for (partition, (first, _)) in ranges {
                        // Outcomes of the aborted range still in flight belong to the old
                        // generation and are dropped; the records are read again.
                        if tracker.generation(&partition).is_some() {
                            tracker.assign(partition.clone());
                            txn.rewinds.push((partition, first));
                        }
                    }
                }
                if let Err(abort) = abort {
                    if is_fatal(&abort) {
                        txn.fenced = Some(abort.to_string());
                        return Err(AckError::Fenced(abort));
                    }
                    tracing::warn!(error = %abort, "abort failed");
                }
                Err(AckError::Kafka {
                    action: "transaction aborted",
                    source: e,
                })
            }
        }
    }

    /// Seeks the consumer back to where aborted transactions began (call from the polling
    /// thread; a transaction aborted in a rebalance callback leaves its rewinds for this).
    /// Until then, records of those partitions are not registered (their outcomes are
    /// dropped), so nothing read past the aborted range can commit over it. Err when a
    /// partition still assigned could not be rewound: the worker must stop.
    pub fn rewind_aborted(&self) -> Result<(), AckError> {
        let (Some(transaction), Some(consumer)) = (&self.shared.transaction, self.consumer())
        else {
            return Ok(());
        };
        let rewinds = std::mem::take(&mut lock(transaction).rewinds);
        for ((topic, partition), offset) in rewinds {
            match consumer.seek(
                &topic,
                partition,
                Offset::Offset(offset),
                Timeout::After(TRANSACTION_TIMEOUT),
            ) {
                Ok(()) => tracing::info!(
                    topic,
                    partition,
                    offset,
                    "partition rewound after an aborted transaction"
                ),
                // Revoked meanwhile: its next owner reads from the committed offset.
                Err(_)
                    if self
                        .tracker()
                        .generation(&(topic.clone(), partition))
                        .is_none() => {}
                Err(source) => {
                    return Err(AckError::Rewind {
                        topic,
                        partition,
                        offset,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    fn consumer(&self) -> Option<Arc<AckConsumer>> {
        self.shared.consumer.get().and_then(Weak::upgrade)
    }

    fn tracker(&self) -> MutexGuard<'_, OffsetTracker> {
        lock(&self.shared.tracker)
    }
}

/// Why a message could not be sent in the transaction.
#[derive(Debug, thiserror::Error)]
pub enum TransactionSendError<E> {
    #[error("not an exactly_once acknowledgement path")]
    NotTransactional,
    #[error("the transactional producer stopped (fenced, or a transaction left unsettled): {0}")]
    Stopped(String),
    #[error("{0}: {1}")]
    Kafka(&'static str, KafkaError),
    #[error(transparent)]
    Send(E),
}

/// Sends the offsets of `ranges` into the open transaction and commits it.
fn commit_open<C: ConsumerContext>(
    producer: &TransactionalProducer,
    consumer: &BaseConsumer<C>,
    ranges: &BTreeMap<Partition, (i64, i64)>,
) -> KafkaResult<()> {
    if !ranges.is_empty() {
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), (_, next)) in ranges {
            offsets.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
        }
        // None only before the consumer joined: abort, and the records are read again.
        let group = consumer.group_metadata().ok_or(KafkaError::ConsumerCommit(
            rdkafka::types::RDKafkaErrorCode::State,
        ))?;
        retrying(|| producer.send_offsets_to_transaction(&offsets, &group, TRANSACTION_TIMEOUT))?;
    }
    retrying(|| producer.commit_transaction(TRANSACTION_TIMEOUT))
}

/// Makes a transactional call, again while it fails with a retriable error (it timed out
/// and goes on in the background; the next call waits for it), up to `TRANSACTION_TRIES`
/// times. librdkafka's documentation: retriable errors are retried, not aborted.
fn retrying(mut call: impl FnMut() -> KafkaResult<()>) -> KafkaResult<()> {
    let mut tries = 1;
    loop {
        match call() {
            Err(e) if is_retriable(&e) && tries < TRANSACTION_TRIES => {
                tracing::warn!(error = %e, tries, "transaction call not finished in time; trying again");
                tries += 1;
            }
            result => return result,
        }
    }
}

/// A transaction error that calling again may cure (a timeout), which does not ask for an
/// abort.
fn is_retriable(e: &KafkaError) -> bool {
    match e {
        KafkaError::Transaction(inner) => inner.is_retriable() && !inner.txn_requires_abort(),
        _ => false,
    }
}

/// A transaction error after which the producer cannot go on (fenced, or fatal).
fn is_fatal(e: &KafkaError) -> bool {
    match e {
        KafkaError::Transaction(inner) => inner.is_fatal(),
        _ => false,
    }
}

/// Commits the stored offsets; "nothing to commit" is not an error.
fn commit_stored<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    mode: CommitMode,
) -> KafkaResult<()> {
    match consumer.commit_consumer_state(mode) {
        Err(rdkafka::error::KafkaError::ConsumerCommit(
            rdkafka::types::RDKafkaErrorCode::NoOffset,
        )) => Ok(()),
        other => other,
    }
}

/// The tracker and the transaction stay consistent across a panic elsewhere (each method
/// leaves them whole), so a poisoned lock is taken over rather than propagated.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The consumer context: on revocation, commit what is done for the revoked partitions
/// (stored offsets, or the open transaction) and forget their in-flight items; on
/// assignment, open a new generation.
#[derive(Debug)]
pub struct AckContext {
    shared: Arc<Shared>,
}

impl ClientContext for AckContext {
    /// Every `statistics.interval.ms`, on the polling thread.
    fn stats(&self, statistics: rdkafka::Statistics) {
        if let Some(metrics) = self.shared.metrics.get() {
            metrics.consumer_stats(&consumer_stats(&statistics));
        }
    }
}

/// Group membership and the lag of each assigned partition whose lag is known.
fn consumer_stats(statistics: &rdkafka::Statistics) -> ConsumerStats {
    let lags = statistics
        .topics
        .values()
        .flat_map(|topic| {
            topic
                .partitions
                .values()
                // Partition -1 is librdkafka's internal one; lag -1 means not known yet.
                .filter(|p| p.desired && p.partition >= 0 && p.consumer_lag >= 0)
                .map(|p| (topic.topic.clone(), p.partition, p.consumer_lag))
        })
        .collect();
    let member = statistics.cgrp.as_ref().is_some_and(|group| {
        group.assignment_size > 0 || (group.state == "up" && group.join_state == "steady")
    });
    ConsumerStats { member, lags }
}

#[cfg(test)]
mod stats_tests {
    use rdkafka::statistics::{ConsumerGroup, Partition, Statistics, Topic};

    use super::consumer_stats;

    fn partition(id: i32, desired: bool, lag: i64) -> (i32, Partition) {
        let p = Partition {
            partition: id,
            desired,
            consumer_lag: lag,
            ..Default::default()
        };
        (id, p)
    }

    #[test]
    fn lag_of_assigned_partitions_whose_lag_is_known() {
        let topic = Topic {
            topic: "detections".into(),
            partitions: [
                partition(-1, false, -1),
                partition(0, true, 12),
                partition(1, true, -1),
                partition(2, false, 40),
            ]
            .into(),
            ..Default::default()
        };
        let statistics = Statistics {
            topics: [("detections".to_string(), topic)].into(),
            cgrp: Some(ConsumerGroup {
                state: "up".into(),
                join_state: "steady".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let stats = consumer_stats(&statistics);
        assert_eq!(stats.lags, [("detections".to_string(), 0, 12)]);
        assert!(stats.member);
    }

    #[test]
    fn not_a_member_before_joining() {
        let joining = Statistics {
            cgrp: Some(ConsumerGroup {
                state: "up".into(),
                join_state: "wait-join".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(!consumer_stats(&joining).member);
        assert!(
            !consumer_stats(&Statistics::default()).member,
            "no group state yet"
        );
    }
}

impl ConsumerContext for AckContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else {
            return;
        };
        let partitions = partitions(revoked);
        if partitions.is_empty() {
            return;
        }
        if self.shared.transaction.is_some() {
            // Commit before letting go, so the next owner starts where this one stopped
            // and none of this worker's later outcomes of these partitions is sent.
            let acks = Acks {
                shared: self.shared.clone(),
            };
            if let Err(e) = acks.commit_transaction(consumer, &partitions) {
                tracing::warn!(error = %e, "transaction on revocation not committed");
            }
            return;
        }
        // Held through the commit: no delivery report stores an offset in between.
        let mut tracker = lock(&self.shared.tracker);
        for partition in &partitions {
            let abandoned = tracker.revoke(partition);
            tracing::info!(topic = %partition.0, partition = partition.1, abandoned, "partition revoked");
        }
        if let Err(e) = commit_stored(consumer, CommitMode::Sync) {
            tracing::warn!(error = %e, "commit on revocation failed");
        }
        drop(tracker);
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(assigned) => {
                if let Some(metrics) = self.shared.metrics.get() {
                    metrics.joined_group();
                }
                let mut tracker = lock(&self.shared.tracker);
                for partition in partitions(assigned) {
                    let generation = tracker.assign(partition.clone());
                    tracing::info!(topic = %partition.0, partition = partition.1, generation, "partition assigned");
                }
            }
            Rebalance::Error(e) => tracing::error!(error = %e, "rebalance failed"),
            Rebalance::Revoke(_) => {}
        }
    }
}

fn partitions(list: &TopicPartitionList) -> Vec<Partition> {
    list.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

/// The producer context: in `at_least_once`, a delivery report acknowledges the input
/// record the message was made from (carried as the delivery opaque; None for input that
/// is not a stream). Without acknowledgements (`exactly_once`, where the transaction
/// commits the offsets, or `radiogate publish`) it acknowledges nothing. Either way it
/// counts the messages that were not delivered, for the sink to stop on.
#[derive(Debug, Clone, Default)]
pub struct DeliveryContext {
    /// None: nothing to acknowledge.
    acks: Option<Acks>,
    failures: Arc<DeliveryFailures>,
}

/// The messages a producer could not deliver (refused by the broker, or expired after
/// `message.timeout.ms` of retries): how many, and the first one's error.
#[derive(Debug, Default)]
pub struct DeliveryFailures {
    count: AtomicU64,
    first: OnceLock<String>,
}

impl DeliveryFailures {
    /// How many messages were not delivered, and why the first was not; None while every
    /// report so far was a delivery.
    pub fn get(&self) -> Option<(u64, &str)> {
        let count = self.count.load(Ordering::Acquire);
        (count > 0).then(|| (count, self.first.get().map_or("", String::as_str)))
    }

    fn add(&self, error: &KafkaError) {
        let _ = self.first.set(error.to_string());
        self.count.fetch_add(1, Ordering::Release);
    }
}

impl DeliveryContext {
    /// A context for a producer with no acknowledgements.
    pub fn without_acks() -> Self {
        Self::default()
    }

    /// The failures this context's producer reports.
    pub fn failures(&self) -> Arc<DeliveryFailures> {
        self.failures.clone()
    }
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<Option<Ack>>;

    fn delivery(&self, result: &DeliveryResult<'_>, input: Self::DeliveryOpaque) {
        match (result, *input) {
            (Ok(_), Some(ack)) => {
                if let Some(acks) = &self.acks {
                    acks.complete(&ack);
                }
            }
            (Ok(_), None) => {}
            (Err((e, _)), Some(ack)) => {
                // Not acknowledged: the input offset, and every later one of its partition,
                // stays uncommitted; the sink stops the worker, and the record is read again
                // on a restart (at least once). In a transaction, its commit fails and aborts.
                tracing::error!(
                    topic = %ack.partition.0, partition = ack.partition.1, offset = ack.offset, error = %e,
                    "result not delivered; its input will be read again"
                );
                self.failures.add(e);
            }
            (Err((e, _)), None) => {
                tracing::error!(error = %e, "message not delivered");
                self.failures.add(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> Partition {
        ("detections".to_string(), n)
    }

    /// The acknowledgement of `offset` of partition `n` in its current generation.
    fn ack(t: &OffsetTracker, n: i32, offset: i64) -> Ack {
        Ack {
            partition: p(n),
            offset,
            generation: t.generation(&p(n)).unwrap_or(0),
        }
    }

    #[test]
    fn in_order_completions_release_each_offset() {
        let mut t = OffsetTracker::new();
        t.assign(p(0));
        for o in 0..3 {
            assert!(t.register(&p(0), o).is_some());
        }
        assert_eq!(t.complete(&ack(&t, 0, 0)), Some(0));
        assert_eq!(t.complete(&ack(&t, 0, 1)), Some(1));
        assert_eq!(t.complete(&ack(&t, 0, 2)), Some(2));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn a_later_offset_waits_for_every_earlier_one() {
        let mut t = OffsetTracker::new();
        t.assign(p(0));
        for o in 10..15 {
            t.register(&p(0), o);
        }
        assert_eq!(
            t.complete(&ack(&t, 0, 12)),
            None,
            "10 and 11 are still in flight"
        );
        assert_eq!(t.complete(&ack(&t, 0, 14)), None);
        assert_eq!(t.complete(&ack(&t, 0, 11)), None, "10 is still in flight");
        assert_eq!(
            t.complete(&ack(&t, 0, 10)),
            Some(12),
            "10, 11, 12 done; 13 is not"
        );
        assert_eq!(t.complete(&ack(&t, 0, 13)), Some(14));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = OffsetTracker::new();
        t.assign(p(0));
        t.assign(p(1));
        t.register(&p(0), 5);
        t.register(&p(1), 7);
        t.register(&p(1), 8);
        assert_eq!(t.complete(&ack(&t, 1, 8)), None);
        assert_eq!(
            t.complete(&ack(&t, 0, 5)),
            Some(5),
            "partition 1's gap does not hold partition 0"
        );
        assert_eq!(t.complete(&ack(&t, 1, 7)), Some(8));
    }

    #[test]
    fn gaps_in_offsets_do_not_hold_the_position() {
        // Offsets of a compacted topic or of transaction markers are not contiguous.
        let mut t = OffsetTracker::new();
        t.assign(p(0));
        t.register(&p(0), 3);
        t.register(&p(0), 9);
        assert_eq!(t.complete(&ack(&t, 0, 9)), None);
        assert_eq!(t.complete(&ack(&t, 0, 3)), Some(9));
    }

    #[test]
    fn revoked_partitions_ignore_late_completions() {
        let mut t = OffsetTracker::new();
        t.assign(p(0));
        t.register(&p(0), 1);
        t.register(&p(0), 2);
        assert_eq!(t.revoke(&p(0)), 2);
        assert_eq!(t.complete(&ack(&t, 0, 1)), None, "no longer ours");
        assert_eq!(t.register(&p(0), 3), None, "not assigned");
        assert_eq!(t.generation(&p(0)), None);
    }

    #[test]
    fn a_reassigned_partition_starts_a_new_generation() {
        let mut t = OffsetTracker::new();
        let first = t.assign(p(0));
        t.register(&p(0), 1);
        t.register(&p(0), 2);
        t.revoke(&p(0));
        let second = t.assign(p(0));
        assert!(second > first);
        // The new owner's progress moved on to 40; this worker gets it back from there.
        t.register(&p(0), 40);
        assert_eq!(
            t.complete(&ack(&t, 0, 2)),
            None,
            "an old generation's offset is not in this one"
        );
        assert_eq!(t.complete(&ack(&t, 0, 1)), None);
        assert_eq!(t.in_flight(), 1);
        assert_eq!(t.complete(&ack(&t, 0, 40)), Some(40));
    }

    #[test]
    fn an_old_generation_cannot_complete_the_same_offset_read_again() {
        // Revoked with offset 5 in flight, assigned back before the new owner committed:
        // offset 5 is read again. The first reading's late outcome must not release it.
        let mut t = OffsetTracker::new();
        let first = t.assign(p(0));
        assert_eq!(t.register(&p(0), 5), Some(first));
        t.revoke(&p(0));
        let second = t.assign(p(0));
        assert_eq!(t.register(&p(0), 5), Some(second));
        let stale = Ack {
            partition: p(0),
            offset: 5,
            generation: first,
        };
        assert_eq!(t.complete(&stale), None);
        assert_eq!(t.in_flight(), 1);
        assert_eq!(t.complete(&ack(&t, 0, 5)), Some(5));
    }

    #[test]
    fn unknown_offsets_and_partitions_release_nothing() {
        let mut t = OffsetTracker::new();
        assert_eq!(t.complete(&ack(&t, 3, 0)), None);
        t.assign(p(0));
        t.register(&p(0), 1);
        assert_eq!(t.complete(&ack(&t, 0, 0)), None, "never registered");
        assert_eq!(t.complete(&ack(&t, 0, 1)), Some(1));
        assert_eq!(t.complete(&ack(&t, 0, 1)), None, "already released");
    }
}
