//! The two calls a shard reader makes (GetShardIterator, GetRecords),
//! behind [`ShardApi`] so tests can script answers and errors.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;

use super::client::{classify, ApiError, KinesisClient};
use super::{MAX_RECORDS_PER_CALL, READ_CALL_TIMEOUT};

/// Where a shard iterator starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IteratorStart {
    TrimHorizon,
    Latest,
    /// ms since the epoch.
    AtTimestamp(i64),
    AfterSequence(String),
}

/// One Kinesis record as GetRecords returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardRecord {
    pub sequence: String,
    /// ApproximateArrivalTimestamp, ms since the epoch.
    pub arrival_ms: Option<i64>,
    pub data: Vec<u8>,
}

/// One GetRecords answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordsPage {
    pub records: Vec<ShardRecord>,
    /// `None`: the shard is closed and was read to its end.
    pub next_iterator: Option<String>,
    pub millis_behind: Option<i64>,
}

/// The two calls a [`KinesisShardReader`] makes, behind a trait so tests can
/// inject answers and errors.
pub trait ShardApi: Send + 'static {
    fn shard_iterator(
        &mut self,
        shard_id: &str,
        start: &IteratorStart,
        timeout: Duration,
    ) -> Result<String, ApiError>;
    fn get_records(&mut self, iterator: &str, limit: usize) -> Result<RecordsPage, ApiError>;
}

/// [`ShardApi`] over the SDK. The SDK does not retry these calls: the
/// reader backs off itself and answers `Waiting` meanwhile.
pub struct SdkShardApi {
    client: KinesisClient,
    stream: String,
}

impl SdkShardApi {
    pub fn new(client: KinesisClient, stream: impl Into<String>) -> Self {
        SdkShardApi {
            client,
            stream: stream.into(),
        }
    }

    fn call_config(timeout: Duration) -> aws_sdk_kinesis::config::Builder {
        aws_sdk_kinesis::config::Builder::default()
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(timeout)
                    .operation_timeout(timeout)
                    .build(),
            )
    }
}

impl ShardApi for SdkShardApi {
    fn shard_iterator(
        &mut self,
        shard_id: &str,
        start: &IteratorStart,
        timeout: Duration,
    ) -> Result<String, ApiError> {
        let mut req = self
            .client
            .sdk()
            .get_shard_iterator()
            .stream_name(&self.stream)
            .shard_id(shard_id);
        req = match start {
            IteratorStart::TrimHorizon => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
            IteratorStart::Latest => req.shard_iterator_type(ShardIteratorType::Latest),
            IteratorStart::AtTimestamp(ms) => req
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from_millis(*ms)),
            IteratorStart::AfterSequence(s) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(s),
        };
        let out = self
            .client
            .block_on(
                req.customize()
                    .config_override(Self::call_config(timeout))
                    .send(),
            )
            .map_err(|e| classify(&e))?;
        out.shard_iterator
            .ok_or_else(|| ApiError::Transient("GetShardIterator returned no iterator".into()))
    }

    fn get_records(&mut self, iterator: &str, limit: usize) -> Result<RecordsPage, ApiError> {
        let req = self
            .client
            .sdk()
            .get_records()
            .shard_iterator(iterator)
            .limit(limit.clamp(1, MAX_RECORDS_PER_CALL) as i32);
        let out = self
            .client
            .block_on(
                req.customize()
                    .config_override(Self::call_config(READ_CALL_TIMEOUT))
                    .send(),
            )
            .map_err(|e| classify(&e))?;
        Ok(RecordsPage {
            records: out
                .records
                .into_iter()
                .map(|r| ShardRecord {
                    sequence: r.sequence_number,
                    arrival_ms: r
                        .approximate_arrival_timestamp
                        .and_then(|t| t.to_millis().ok()),
                    data: r.data.into_inner(),
                })
                .collect(),
            next_iterator: out.next_shard_iterator,
            millis_behind: out.millis_behind_latest,
        })
    }
}
