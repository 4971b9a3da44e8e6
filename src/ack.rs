//! Acknowledgements: when a Kafka input offset may be committed.
//!
//! An offset is stored (`store_offset`, to go out with the next commit) only when its
//! classification or rejection has been delivered (the producer's delivery report said so)
//! AND every earlier offset of the same partition taken by this worker is done too: cutouts
//! and batches finish out of order, and committing past an undelivered item would lose it
//! on a restart. [`OffsetTracker`] is that ordering logic, with no broker in it.
//!
//! Partitions come and go with rebalances. On revocation the stored offsets are committed
//! synchronously ([`AckContext`]'s rebalance callback) and the partition's state is dropped:
//! results of its in-flight items that are delivered later are ignored, so they never
//! store over the new owner's progress. Each assignment opens a new generation of a
//! partition; a completion only counts for an offset registered in the current one.
//!
//! This module owns that bookkeeping and the rdkafka contexts that drive it (consumer
//! rebalances, producer delivery reports). It does not consume or produce: the Kafka source
//! and sink do, with the contexts made here; the pipeline wires them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use rdkafka::TopicPartitionList;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::ProducerContext;

use crate::proto::StreamPosition;
use crate::telemetry::{ConsumerStats, Metrics};

/// A topic and partition.
pub type Partition = (String, i32);

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

    /// A partition was assigned to this worker: a new generation with nothing in flight.
    /// Returns that generation.
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

    /// The source took `offset` of `partition`. False when the partition is not assigned
    /// (the offset will not be acknowledged).
    pub fn register(&mut self, partition: &Partition, offset: i64) -> bool {
        match self.partitions.get_mut(partition) {
            Some(state) => {
                state.pending.insert(offset, false);
                true
            }
            None => false,
        }
    }

    /// `offset`'s result was delivered. Returns the highest offset that may now be stored
    /// (every offset up to it is done), or None when the position does not move: an earlier
    /// offset is still in flight, or the partition or offset is not in the current
    /// generation (revoked since it was taken).
    pub fn complete(&mut self, partition: &Partition, offset: i64) -> Option<i64> {
        let state = self.partitions.get_mut(partition)?;
        let done = state.pending.get_mut(&offset)?;
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

/// Shared between the consumer's rebalance callbacks, the producer's delivery reports and
/// the pipeline.
#[derive(Debug, Default)]
struct Shared {
    tracker: Mutex<OffsetTracker>,
    /// The consumer, once it exists (it is created with this context, so it is set after).
    /// Weak: the consumer owns its context, which owns this; a strong reference would keep
    /// the consumer alive forever and it would never leave the group.
    consumer: OnceLock<Weak<AckConsumer>>,
    /// Where the consumer's group membership and lag are reported, once given.
    metrics: OnceLock<Arc<Metrics>>,
}

/// The acknowledgement path of one worker: give its [`AckContext`] to the Kafka consumer
/// and its [`DeliveryContext`] to the producer, [`Acks::attach`] the consumer, register
/// each offset the source takes, and it stores offsets as their results are delivered.
#[derive(Debug, Clone, Default)]
pub struct Acks {
    shared: Arc<Shared>,
}

impl Acks {
    /// A fresh acknowledgement path with no partition assigned.
    pub fn new() -> Self {
        Self::default()
    }

    /// The consumer context: commits on revocation and keeps the tracker's assignment.
    pub fn consumer_context(&self) -> AckContext {
        AckContext {
            shared: self.shared.clone(),
        }
    }

    /// The producer context: delivery reports acknowledge offsets.
    pub fn delivery_context(&self) -> DeliveryContext {
        DeliveryContext {
            acks: Some(self.clone()),
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

    /// The source took this record: it will be acknowledged when delivered.
    pub fn register(&self, topic: &str, partition: i32, offset: i64) -> bool {
        self.tracker()
            .register(&(topic.to_string(), partition), offset)
    }

    /// The result of this record was delivered: store its partition's position if it moved.
    pub fn complete(&self, topic: &str, partition: i32, offset: i64) {
        // Declared before the guard so that it is dropped after it: dropping the last
        // reference closes the consumer, whose revocation callback takes the lock.
        let consumer = self.consumer();
        // The lock is held across the store, so that a revocation (which takes it too)
        // sees either the store, and commits it, or none.
        let mut tracker = self.tracker();
        let released = tracker.complete(&(topic.to_string(), partition), offset);
        if let (Some(last_done), Some(consumer)) = (released, &consumer) {
            // librdkafka stores `last_done + 1`: the next offset to read.
            if let Err(e) = consumer.store_offset(topic, partition, last_done) {
                tracing::debug!(topic, partition, offset = last_done, error = %e, "offset not stored");
            }
        }
        drop(tracker);
    }

    /// Items taken and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.tracker().in_flight()
    }

    /// Commits the stored offsets (asynchronously: the periodic commit of a long run).
    pub fn commit_async(&self) {
        self.commit(CommitMode::Async);
    }

    /// Commits the stored offsets and waits for the broker (shutdown).
    pub fn commit_sync(&self) -> KafkaResult<()> {
        match self.consumer() {
            Some(consumer) => commit_stored(&consumer, CommitMode::Sync),
            None => Ok(()),
        }
    }

    fn commit(&self, mode: CommitMode) {
        if let Some(consumer) = self.consumer()
            && let Err(e) = commit_stored(&consumer, mode)
        {
            tracing::warn!(error = %e, "offset commit failed; it is retried with the next one");
        }
    }

    fn consumer(&self) -> Option<Arc<AckConsumer>> {
        self.shared.consumer.get().and_then(Weak::upgrade)
    }

    fn tracker(&self) -> MutexGuard<'_, OffsetTracker> {
        lock(&self.shared.tracker)
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

/// The tracker stays consistent across a panic elsewhere (each method leaves it whole), so
/// a poisoned lock is taken over rather than propagated.
fn lock(tracker: &Mutex<OffsetTracker>) -> MutexGuard<'_, OffsetTracker> {
    tracker
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The consumer context: on revocation, commit what is stored for the revoked partitions
/// and forget their in-flight items; on assignment, open a new generation.
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
        if let Rebalance::Revoke(revoked) = rebalance {
            let partitions = partitions(revoked);
            // Held through the commit: no delivery report stores an offset in between.
            let mut tracker = lock(&self.shared.tracker);
            for partition in &partitions {
                let abandoned = tracker.revoke(partition);
                tracing::info!(topic = %partition.0, partition = partition.1, abandoned, "partition revoked");
            }
            if !partitions.is_empty() {
                // Commit before letting go, so the next owner starts where this one stopped.
                if let Err(e) = commit_stored(consumer, CommitMode::Sync) {
                    tracing::warn!(error = %e, "commit on revocation failed");
                }
            }
            drop(tracker);
        }
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

/// The producer context: a delivery report acknowledges the input record the message was
/// made from (its [`StreamPosition`], carried as the delivery opaque; None for input that
/// is not a stream).
#[derive(Debug, Clone, Default)]
pub struct DeliveryContext {
    /// None: a producer whose input is not a Kafka stream (nothing to acknowledge).
    acks: Option<Acks>,
}

impl DeliveryContext {
    /// A context for a producer with no acknowledgements (e.g. `radiogate publish`).
    pub fn without_acks() -> Self {
        Self { acks: None }
    }
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<Option<StreamPosition>>;

    fn delivery(&self, result: &DeliveryResult<'_>, input: Self::DeliveryOpaque) {
        let Some(input) = *input else {
            if let Err((e, _)) = result {
                tracing::error!(error = %e, "result not delivered");
            }
            return;
        };
        match result {
            Ok(_) => {
                if let Some(acks) = &self.acks {
                    acks.complete(&input.topic, input.partition, input.offset);
                }
            }
            Err((e, _)) => {
                // Not acknowledged: the input offset stays uncommitted and is read again on
                // a restart (at least once).
                tracing::error!(
                    topic = %input.topic, partition = input.partition, offset = input.offset, error = %e,
                    "result not delivered; its input will be read again after a restart"
                );
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

    #[test]
    fn in_order_completions_release_each_offset() {
        let mut t = OffsetTracker::new();
        t.assign(p(0));
        for o in 0..3 {
            assert!(t.register(&p(0), o));
        }
        assert_eq!(t.complete(&p(0), 0), Some(0));
        assert_eq!(t.complete(&p(0), 1), Some(1));
        assert_eq!(t.complete(&p(0), 2), Some(2));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn a_later_offset_waits_for_every_earlier_one() {
        let mut t = OffsetTracker::new();
        t.assign(p(0));
        for o in 10..15 {
            t.register(&p(0), o);
        }
        assert_eq!(t.complete(&p(0), 12), None, "10 and 11 are still in flight");
        assert_eq!(t.complete(&p(0), 14), None);
        assert_eq!(t.complete(&p(0), 11), None, "10 is still in flight");
        assert_eq!(
            t.complete(&p(0), 10),
            Some(12),
            "10, 11, 12 done; 13 is not"
        );
        assert_eq!(t.complete(&p(0), 13), Some(14));
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
        assert_eq!(t.complete(&p(1), 8), None);
        assert_eq!(
            t.complete(&p(0), 5),
            Some(5),
            "partition 1's gap does not hold partition 0"
        );
        assert_eq!(t.complete(&p(1), 7), Some(8));
    }

    #[test]
    fn gaps_in_offsets_do_not_hold_the_position() {
        // Offsets of a compacted topic or of transaction markers are not contiguous.
        let mut t = OffsetTracker::new();
        t.assign(p(0));
        t.register(&p(0), 3);
        t.register(&p(0), 9);
        assert_eq!(t.complete(&p(0), 9), None);
        assert_eq!(t.complete(&p(0), 3), Some(9));
    }

    #[test]
    fn revoked_partitions_ignore_late_completions() {
        let mut t = OffsetTracker::new();
        t.assign(p(0));
        t.register(&p(0), 1);
        t.register(&p(0), 2);
        assert_eq!(t.revoke(&p(0)), 2);
        assert_eq!(t.complete(&p(0), 1), None, "no longer ours");
        assert!(!t.register(&p(0), 3), "not assigned");
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
            t.complete(&p(0), 2),
            None,
            "an old generation's offset is not in this one"
        );
        assert_eq!(t.complete(&p(0), 1), None);
        assert_eq!(t.in_flight(), 1);
        assert_eq!(t.complete(&p(0), 40), Some(40));
    }

    #[test]
    fn unknown_offsets_and_partitions_release_nothing() {
        let mut t = OffsetTracker::new();
        assert_eq!(t.complete(&p(3), 0), None);
        t.assign(p(0));
        t.register(&p(0), 1);
        assert_eq!(t.complete(&p(0), 0), None, "never registered");
        assert_eq!(t.complete(&p(0), 1), Some(1));
        assert_eq!(t.complete(&p(0), 1), None, "already released");
    }
}
