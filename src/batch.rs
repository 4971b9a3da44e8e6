//! The dynamic batcher: groups a stream of items into batches for the model. A batch
//! leaves when it holds `max_batch` items or when `max_wait` has passed since its first
//! item arrived, whichever comes first; the partial batch leaves at once when the input
//! closes. Items keep their order, within and across batches.
//!
//! It knows nothing about what it batches or where batches go: the pipeline gives it the
//! two channel ends. It reserves room downstream before it takes an item, so a slow
//! consumer holds items back in the (bounded) input queue instead of here.

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::config::BatchConfig;

/// Why [`run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// The input closed and every item was sent on.
    InputClosed,
    /// The consumer hung up; items not yet taken stay in the input queue.
    OutputClosed,
}

/// Reads items from `items_rx` and sends them on as batches to `batches_tx` until the
/// input closes (after flushing the partial batch) or the consumer hangs up.
///
/// `max_batch` below 1 counts as 1. A `max_wait` of zero sends whatever is ready at once.
pub async fn run<T>(
    mut items_rx: mpsc::Receiver<T>,
    batches_tx: mpsc::Sender<Vec<T>>,
    cfg: BatchConfig,
) -> Finished {
    let max_batch = cfg.max_batch.max(1);
    loop {
        // Room for the batch first: while the consumer is busy, items wait upstream.
        let Ok(permit) = batches_tx.reserve().await else {
            return Finished::OutputClosed;
        };
        let first = tokio::select! {
            first = items_rx.recv() => first,
            // The consumer may hang up while we wait for input.
            () = batches_tx.closed() => return Finished::OutputClosed,
        };
        let Some(first) = first else {
            return Finished::InputClosed;
        };
        let deadline = sleep_until(Instant::now() + cfg.max_wait);
        tokio::pin!(deadline);
        let mut batch = Vec::with_capacity(max_batch);
        batch.push(first);
        let mut input_open = true;
        while batch.len() < max_batch {
            tokio::select! {
                // Items that are already there go before the deadline is looked at.
                biased;
                item = items_rx.recv() => match item {
                    Some(item) => batch.push(item),
                    None => {
                        input_open = false;
                        break;
                    }
                },
                () = &mut deadline => break,
            }
        }
        permit.send(batch);
        if !input_open {
            return Finished::InputClosed;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::task::JoinHandle;

    use super::*;

    const WAIT: Duration = Duration::from_millis(50);

    /// A batcher with an input queue of 64 and room for `out_capacity` batches downstream.
    fn start(
        max_batch: usize,
        max_wait: Duration,
        out_capacity: usize,
    ) -> (
        mpsc::Sender<u32>,
        mpsc::Receiver<Vec<u32>>,
        JoinHandle<Finished>,
    ) {
        let (items_tx, items_rx) = mpsc::channel(64);
        let (batches_tx, batches_rx) = mpsc::channel(out_capacity);
        let task = tokio::spawn(run(
            items_rx,
            batches_tx,
            BatchConfig {
                max_batch,
                max_wait,
            },
        ));
        (items_tx, batches_rx, task)
    }

    async fn send_all(items_tx: &mpsc::Sender<u32>, items: impl IntoIterator<Item = u32>) {
        for item in items {
            items_tx.send(item).await.expect("batcher is running");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_leaves_without_waiting() {
        let (items_tx, mut batches_rx, _task) = start(4, WAIT, 4);
        let t0 = Instant::now();
        send_all(&items_tx, 0..4).await;
        assert_eq!(batches_rx.recv().await, Some(vec![0, 1, 2, 3]));
        assert_eq!(t0.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_batch_leaves_max_wait_after_its_first_item() {
        let (items_tx, mut batches_rx, _task) = start(4, WAIT, 4);
        tokio::time::sleep(Duration::from_millis(7)).await; // the clock before the first item does not count
        let t0 = Instant::now();
        send_all(&items_tx, [1]).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        send_all(&items_tx, [2]).await; // a later item does not restart the clock
        assert_eq!(batches_rx.recv().await, Some(vec![1, 2]));
        assert_eq!(t0.elapsed(), WAIT);

        // The next batch has its own clock, started by its own first item.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t1 = Instant::now();
        send_all(&items_tx, [3]).await;
        assert_eq!(batches_rx.recv().await, Some(vec![3]));
        assert_eq!(t1.elapsed(), WAIT);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_leaves_before_max_wait() {
        let (items_tx, mut batches_rx, _task) = start(4, WAIT, 4);
        send_all(&items_tx, [1, 2]).await;
        tokio::time::sleep(WAIT - Duration::from_millis(1)).await;
        assert!(batches_rx.try_recv().is_err(), "a batch left early");
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(batches_rx.recv().await, Some(vec![1, 2]));
    }

    #[tokio::test(start_paused = true)]
    async fn closing_the_input_flushes_the_partial_batch_at_once() {
        let (items_tx, mut batches_rx, task) = start(4, WAIT, 4);
        let t0 = Instant::now();
        send_all(&items_tx, 0..6).await;
        drop(items_tx);
        assert_eq!(batches_rx.recv().await, Some(vec![0, 1, 2, 3]));
        assert_eq!(batches_rx.recv().await, Some(vec![4, 5]));
        assert_eq!(batches_rx.recv().await, None);
        assert_eq!(t0.elapsed(), Duration::ZERO);
        assert_eq!(task.await.expect("batcher ran"), Finished::InputClosed);
    }

    #[tokio::test(start_paused = true)]
    async fn items_keep_their_order_across_batches() {
        let (items_tx, mut batches_rx, task) = start(7, WAIT, 2);
        let producer = tokio::spawn(async move {
            for i in 0..500u32 {
                items_tx.send(i).await.expect("batcher is running");
                if i % 13 == 0 {
                    tokio::time::sleep(Duration::from_millis(u64::from(i % 70))).await;
                }
            }
        });
        let mut seen = Vec::new();
        while let Some(batch) = batches_rx.recv().await {
            assert!(
                !batch.is_empty() && batch.len() <= 7,
                "batch of {}",
                batch.len()
            );
            seen.extend(batch);
        }
        producer.await.expect("producer ran");
        assert_eq!(seen, (0..500).collect::<Vec<_>>());
        assert_eq!(task.await.expect("batcher ran"), Finished::InputClosed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_consumer_holds_items_upstream() {
        let (items_tx, mut batches_rx, _task) = start(2, WAIT, 1);
        send_all(&items_tx, 0..10).await;
        tokio::time::sleep(WAIT * 4).await;
        // One batch waits downstream; the batcher waits for room before it takes more, so the
        // other 8 items are still in the input queue.
        assert_eq!(items_tx.capacity(), 64 - 8);
        assert_eq!(batches_rx.recv().await, Some(vec![0, 1]));
        assert_eq!(batches_rx.recv().await, Some(vec![2, 3]));
        assert_eq!(batches_rx.recv().await, Some(vec![4, 5]));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_max_wait_sends_what_is_ready() {
        let (items_tx, mut batches_rx, _task) = start(8, Duration::ZERO, 4);
        send_all(&items_tx, 0..3).await;
        assert_eq!(batches_rx.recv().await, Some(vec![0, 1, 2]));
        send_all(&items_tx, [3]).await;
        assert_eq!(batches_rx.recv().await, Some(vec![3]));
    }

    #[tokio::test(start_paused = true)]
    async fn stops_when_the_consumer_hangs_up() {
        let (items_tx, batches_rx, task) = start(4, WAIT, 1);
        drop(batches_rx);
        assert_eq!(task.await.expect("batcher ran"), Finished::OutputClosed);
        assert!(
            items_tx.send(1).await.is_err(),
            "input closed with the batcher"
        );
    }
}
