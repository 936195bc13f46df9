//! The partition readers: one consumer per worker, one
//! [`PartitionReader`] per assigned partition, each on its own partition
//! queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tidemark_dataflow::source::{PartitionReader, Poll, RawBatch};

use super::context::{KafkaConsumer, KafkaContext};
use super::metadata::{check_partitions, offsets_for_time, watermarks};
use super::settings::{KafkaPartition, KafkaSettings, StartAt};

/// Messages found on the consumer's shared queue instead of their partition
/// queue (see [`Shared::serve`]), kept in order for their reader.
type Stash = HashMap<(String, i32), Vec<(u64, Vec<u8>)>>;

/// The consumer of one worker, shared by its partition readers.
struct Shared {
    consumer: Arc<KafkaConsumer>,
    stash: Mutex<Stash>,
}

impl Shared {
    /// Serves the consumer queue: errors and events not tied to a partition
    /// (broker down, reconnects). librdkafka reconnects by itself; transient
    /// errors are logged (throttled) and the readers keep returning Waiting.
    fn serve(&self) -> Result<(), String> {
        while let Some(r) = self.consumer.poll(Duration::ZERO) {
            match r {
                // Partition queues are split before `assign`, so fetched
                // messages should never land here; if one does, keep it for
                // its reader rather than lose it.
                Ok(m) => {
                    let key = (m.topic().to_owned(), m.partition());
                    let rec = (m.offset() as u64, m.payload().unwrap_or(&[]).to_vec());
                    self.stash.lock().unwrap().entry(key).or_default().push(rec);
                }
                Err(e) => self.on_error(e, None)?,
            }
        }
        Ok(())
    }

    /// Fatal errors end the job with a message saying what to do; the rest
    /// are transient: logged, throttled.
    fn on_error(&self, e: KafkaError, tp: Option<(&str, i32)>) -> Result<(), String> {
        let at = tp.map_or(String::new(), |(t, p)| format!("topic {t} partition {p}: "));
        match &e {
            KafkaError::MessageConsumptionFatal(code) => {
                Err(format!("{at}fatal Kafka consumer error: {code}"))
            }
            // A partition's end seen on the consumer queue: news, not trouble.
            KafkaError::PartitionEOF(_) => Ok(()),
            KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset) => Err(format!(
                "{at}the position to read no longer exists on the broker (records deleted \
                 by retention, or the topic was recreated): {e}. To skip the lost records, \
                 start this partition from `earliest` (drop its checkpointed position) or \
                 set the property auto.offset.reset=earliest"
            )),
            _ => {
                let key = format!("{at}{:?}", e.rdkafka_error_code());
                self.consumer
                    .context()
                    .warn(&key, &format_args!("{at}{e} (retrying)"));
                Ok(())
            }
        }
    }
}

/// One assigned Kafka partition as a [`PartitionReader`].
pub struct KafkaReader {
    shared: Arc<Shared>,
    /// `None` once finished (or when the range was empty at open).
    queue: Option<PartitionQueue<KafkaContext>>,
    topic: String,
    partition: i32,
    index: u32,
    start: u64,
    next: u64,
    end: Option<u64>,
    /// The last thing the partition queue said was "end of partition" (the
    /// broker's high watermark as of its last answer), with no record since.
    at_eof: bool,
}

/// What a poll that found no record means (SPEC 3's idleness): an
/// unbounded partition is caught up only at the end the broker last
/// reported — partition EOF, with no record since. Anything else is
/// waiting: a bounded read below its end, a position behind the high
/// watermark, the time before the first fetch answers, a broker that hangs
/// or refuses connections. A waiting partition holds the frontier however
/// long it takes, so no record becomes late because of an outage.
pub fn empty_poll(bounded: bool, at_eof: bool) -> Poll {
    if !bounded && at_eof {
        Poll::CaughtUp
    } else {
        Poll::Waiting
    }
}

impl KafkaReader {
    /// The job's partition number.
    pub fn index(&self) -> u32 {
        self.index
    }
    /// The resolved start: next offset to read at open (for the initial
    /// `PartitionStart`).
    pub fn start_offset(&self) -> u64 {
        self.start
    }
    pub fn topic(&self) -> &str {
        &self.topic
    }
    pub fn partition(&self) -> i32 {
        self.partition
    }

    fn finish(&mut self) {
        if self.queue.take().is_some() {
            // Stop prefetching records past the end.
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&self.topic, self.partition);
            let _ = self.shared.consumer.pause(&tpl);
        }
    }

    /// librdkafka's position: past the last record *and* control record
    /// (transaction marker) handed out, which a bounded read needs when its
    /// end falls right after markers that carry no record.
    fn position(&self) -> Option<u64> {
        let pos = self.shared.consumer.position().ok()?;
        match pos.find_partition(&self.topic, self.partition)?.offset() {
            Offset::Offset(o) if o >= 0 => Some(o as u64),
            _ => None,
        }
    }

    fn push_stashed(&mut self, max: usize, batch: &mut RawBatch, pushed: &mut usize) {
        let mut stash = self.shared.stash.lock().unwrap();
        let Some(recs) = stash.get_mut(&(self.topic.clone(), self.partition)) else {
            return;
        };
        let mut taken = 0;
        for (offset, bytes) in recs.iter() {
            if *pushed >= max || self.end.is_some_and(|e| *offset >= e) {
                break;
            }
            taken += 1;
            if *offset >= self.next {
                batch.push(bytes, *offset);
                self.next = offset + 1;
                *pushed += 1;
                self.at_eof = false;
            }
        }
        recs.drain(..taken);
    }
}

impl PartitionReader for KafkaReader {
    fn poll(&mut self, max: usize, batch: &mut RawBatch) -> Result<Poll, String> {
        if self.queue.is_none() {
            return Ok(Poll::Finished);
        }
        self.shared.serve()?;
        let mut pushed = 0;
        self.push_stashed(max, batch, &mut pushed);
        let mut reached_end = self.end.is_some_and(|e| self.next >= e);
        while pushed < max && !reached_end {
            let Some(queue) = &self.queue else { break };
            match queue.poll(Duration::ZERO) {
                None => break,
                Some(Ok(m)) => {
                    let offset = m.offset() as u64;
                    if offset < self.next {
                        // Already handed out; librdkafka does not redeliver
                        // after reconnects, but positions must only grow.
                        continue;
                    }
                    if self.end.is_some_and(|e| offset >= e) {
                        reached_end = true;
                        break;
                    }
                    // A null value becomes empty bytes: the dataflow rejects it.
                    batch.push(m.payload().unwrap_or(&[]), offset);
                    self.next = offset + 1;
                    pushed += 1;
                    self.at_eof = false;
                    reached_end = self.end.is_some_and(|e| self.next >= e);
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    self.at_eof = true;
                    // Caught up. A bounded read may end in offsets that
                    // hold only control records: ask librdkafka's position.
                    if let Some(end) = self.end {
                        reached_end = self.position().is_some_and(|p| p >= end);
                    }
                    break;
                }
                Some(Err(e)) => {
                    self.shared
                        .on_error(e, Some((&self.topic, self.partition)))?;
                    break;
                }
            }
        }
        if reached_end {
            self.finish();
        }
        Ok(if pushed > 0 {
            Poll::Ready
        } else if self.queue.is_none() {
            Poll::Finished
        } else {
            empty_poll(self.end.is_some(), self.at_eof)
        })
    }

    fn describe(&self) -> String {
        match self.end {
            Some(end) => format!(
                "topic {} partition {}, at offset {} of {end}",
                self.topic, self.partition, self.next
            ),
            None => format!(
                "topic {} partition {}, at offset {}",
                self.topic, self.partition, self.next
            ),
        }
    }
}

/// Opens one consumer for `parts` (one worker's share; topics may differ)
/// and returns a reader per partition, in the order given.
///
/// Fails, naming the topic/partition and the fix, when a topic or partition
/// does not exist, when a start offset is no longer (or not yet) in the
/// partition, or when the brokers cannot be reached.
pub fn open_readers(
    settings: &KafkaSettings,
    parts: &[KafkaPartition],
) -> Result<Vec<KafkaReader>> {
    let consumer = Arc::new(settings.consumer()?);
    check_partitions(&consumer, &settings.brokers, parts)?;

    // Resolve every start to a concrete offset, so the caller can record it.
    let tps: Vec<(String, i32)> = parts
        .iter()
        .map(|p| (p.topic.clone(), p.partition))
        .collect();
    let mut starts = Vec::with_capacity(parts.len());
    let mut by_time: HashMap<i64, Vec<usize>> = HashMap::new();
    for (i, p) in parts.iter().enumerate() {
        let (low, high) = watermarks(&consumer, &p.topic, p.partition)?;
        let start = match (p.checkpoint, &p.start) {
            (Some(o), _) | (None, &StartAt::Offset(o)) => o,
            (None, StartAt::Earliest) => low,
            (None, StartAt::Latest) => high,
            (None, StartAt::TimestampMs(ms)) => {
                by_time.entry(*ms).or_default().push(i);
                high
            }
        };
        let what = if p.checkpoint.is_some() {
            "checkpointed position"
        } else {
            "start offset"
        };
        if start < low {
            bail!(
                "topic {} partition {}: {what} {start} was deleted (the oldest retained \
                 offset is {low}); records {start}..{low} are lost. Start from `earliest` \
                 to skip them",
                p.topic,
                p.partition
            );
        }
        if start > high {
            bail!(
                "topic {} partition {}: {what} {start} is past the end of the partition \
                 (high watermark {high}); was the topic recreated? Start from `earliest` \
                 or `latest` instead",
                p.topic,
                p.partition
            );
        }
        starts.push(start);
    }
    // A consumer of its own: resolving a time may read a record.
    let probe = if by_time.is_empty() {
        None
    } else {
        Some(settings.consumer()?)
    };
    for (ms, idx) in by_time {
        let list: Vec<(String, i32)> = idx.iter().map(|&i| tps[i].clone()).collect();
        let found = offsets_for_time(probe.as_ref().unwrap(), &list, ms)?;
        for (&i, o) in idx.iter().zip(found) {
            starts[i] = o;
        }
    }

    // Split the partition queues *before* assigning: fetched messages then
    // never pass through the shared consumer queue.
    let shared = Arc::new(Shared {
        consumer: consumer.clone(),
        stash: Mutex::new(HashMap::new()),
    });
    let mut tpl = TopicPartitionList::new();
    let mut readers = Vec::with_capacity(parts.len());
    for (p, &start) in parts.iter().zip(&starts) {
        let live = p.end.is_none_or(|e| start < e);
        let queue = if live {
            let q = consumer
                .split_partition_queue(&p.topic, p.partition)
                .ok_or_else(|| {
                    anyhow!(
                        "topic {} partition {}: no partition queue",
                        p.topic,
                        p.partition
                    )
                })?;
            tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(start as i64))
                .context("building the assignment")?;
            Some(q)
        } else {
            None
        };
        readers.push(KafkaReader {
            shared: shared.clone(),
            queue,
            topic: p.topic.clone(),
            partition: p.partition,
            index: p.index,
            start,
            next: start,
            end: p.end,
            at_eof: false,
        });
    }
    if tpl.count() > 0 {
        consumer
            .assign(&tpl)
            .context("assigning Kafka partitions")?;
    }
    Ok(readers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The idleness rule for Kafka (SPEC 3): only an unbounded partition at
    /// the broker's reported end is caught up. Every other empty poll waits,
    /// whatever happened before: a bounded read is never idle below its
    /// end (it finishes there), and without an end-of-partition since the
    /// last record — a hung broker, a refused connection, a fetch not yet
    /// answered — the partition may hold unread records.
    #[test]
    fn only_an_unbounded_partition_at_its_reported_end_is_caught_up() {
        let cases = [
            // (bounded, at_eof, expected)
            (false, true, Poll::CaughtUp),
            (false, false, Poll::Waiting),
            // A bounded read that saw an EOF (the high watermark of the
            // moment) but is still below its end: waiting, not idle.
            (true, true, Poll::Waiting),
            (true, false, Poll::Waiting),
        ];
        for (bounded, at_eof, want) in cases {
            assert_eq!(
                empty_poll(bounded, at_eof),
                want,
                "bounded {bounded}, at_eof {at_eof}"
            );
        }
    }
}
