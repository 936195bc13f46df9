//! What every AWS client of tidemark shares: a private tokio runtime (timely
//! workers are plain threads that block on it), HTTPS with rustls on ring,
//! the SDK's standard credential and region chain with a default region,
//! standard retries and timeouts. Each service crate builds its own client
//! from the [`SdkConfig`] this loads.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use tokio::runtime::Runtime;

/// The region used when neither the settings nor the SDK chain name one.
pub const DEFAULT_REGION: &str = "us-east-1";

/// Worker threads of a private runtime: it only waits on sockets.
const RUNTIME_THREADS: usize = 2;

/// A private runtime; shut down without blocking when the last user goes,
/// so dropping a client never panics or stalls, wherever it happens.
pub struct Rt(Option<Runtime>);

impl Rt {
    pub fn get(&self) -> &Runtime {
        self.0.as_ref().expect("runtime is present until drop")
    }
}

impl Drop for Rt {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Retries and timeouts of one service's calls.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_attempts: u32,
    pub connect: Duration,
    pub attempt: Duration,
    pub operation: Duration,
}

/// Starts a runtime named `name` and loads the SDK configuration on it:
/// `region` when given, else the SDK's chain (environment, profile, IMDS).
/// Nothing is sent until the first call; credentials are resolved then.
pub fn load(name: &str, region: Option<&str>, limits: Limits) -> Result<(SdkConfig, Arc<Rt>)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RUNTIME_THREADS)
        .thread_name(name)
        .enable_all()
        .build()
        .with_context(|| format!("starting the {name} runtime"))?;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    // Without an explicit region the loader asks its default chain, built on
    // the same HTTP client.
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
    if let Some(r) = region {
        loader = loader.region(Region::new(r.to_owned()));
    }
    let sdk = rt.block_on(
        loader
            .retry_config(RetryConfig::standard().with_max_attempts(limits.max_attempts))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(limits.connect)
                    .operation_attempt_timeout(limits.attempt)
                    .operation_timeout(limits.operation)
                    .build(),
            )
            .load(),
    );
    Ok((sdk, Arc::new(Rt(Some(rt)))))
}

/// [`DEFAULT_REGION`] when `sdk` has no region, for the service config.
pub fn fallback_region(sdk: &SdkConfig) -> Option<Region> {
    sdk.region()
        .is_none()
        .then(|| Region::from_static(DEFAULT_REGION))
}
