//! The Kafka connector of keylink: `{ "type": "kafka", "bootstrap_servers": "host:9092" }`.
//!
//! A message connector for `keylink stream` (SPEC §11), on rdkafka with its bundled librdkafka:
//!
//! - **sink** ([`MessageSink`]): an idempotent producer with `acks=all`; `send` returns once the
//!   broker acknowledged every message of the batch (message key: what the engine gives, the
//!   keyLink);
//! - **source** ([`MessageSource`]): a consumer-group member with automatic commits off;
//!   positions are committed (synchronously) only when the engine says every output has the
//!   events. A new group starts at the beginning of the topic.
//!
//! - **transactions** ([`TransactionalSink`], for a batch job's `topic` targets): a
//!   transactional producer per run (see [`KafkaTransactions`]); messages become visible to
//!   `read_committed` consumers when the job commits, or never.
//!
//! Object reads and writes are refused (a topic is not an object store).
//!
//! # Settings
//!
//! ```yaml
//! connectors:
//!   bus:
//!     type: kafka
//!     bootstrap_servers: "broker-1:9092,broker-2:9092"
//!     security_protocol: sasl_plaintext      # plaintext (default) | sasl_plaintext | ssl | sasl_ssl
//!     sasl_mechanism: PLAIN
//!     sasl_username: keylink
//!     sasl_password: "…"                      # never printed
//!     properties: { "session.timeout.ms": "6000" }   # any further librdkafka setting
//! ```
//!
//! TLS (`ssl`, `sasl_ssl`, `tls_*`) needs the crate feature `ssl`: librdkafka's only TLS backend
//! is OpenSSL (no rustls), so it needs OpenSSL headers to build and links a second TLS stack next
//! to the cloud SDKs' rustls; without the feature these settings are refused with a clear error.
//! SCRAM also needs OpenSSL in librdkafka; PLAIN does not.
#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keylink_core::connector::{BuildContext, ConnectorConfig, ObjectLocation, Sink, Source};
use keylink_core::stream::{
    InMessage, MessageSink, MessageSource, MessageTransaction, OutMessage, Position, Subscription,
    TransactionalSink,
};
use keylink_core::{Error, ErrorKind, Result, Sensitive, async_trait, typetag};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

/// How the client talks to the brokers.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No TLS, no authentication (the default).
    #[default]
    Plaintext,
    /// SASL authentication without TLS.
    SaslPlaintext,
    /// TLS (needs the `ssl` feature).
    Ssl,
    /// SASL over TLS (needs the `ssl` feature).
    SaslSsl,
}

impl SecurityProtocol {
    fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// `{ "type": "kafka", … }`.
#[derive(Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Brokers to bootstrap from: `host:port[,host:port…]`.
    pub bootstrap_servers: String,
    /// `plaintext` (default), `sasl_plaintext`, `ssl`, `sasl_ssl`.
    #[serde(default)]
    pub security_protocol: SecurityProtocol,
    /// `PLAIN` (default with SASL), `SCRAM-SHA-256`, `SCRAM-SHA-512` (SCRAM needs the `ssl`
    /// feature).
    #[serde(default)]
    pub sasl_mechanism: Option<String>,
    /// The SASL user.
    #[serde(default)]
    pub sasl_username: Option<String>,
    /// The SASL password (never printed).
    #[serde(default)]
    pub sasl_password: Option<Sensitive<String>>,
    /// CA certificates (PEM) to verify the brokers with (TLS).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for mutual TLS.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// Client key (PEM), for mutual TLS.
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// The client key's password (never printed).
    #[serde(default)]
    pub tls_key_password: Option<Sensitive<String>>,
    /// Further librdkafka settings (`"session.timeout.ms": "6000"`), applied to producers and
    /// consumers; they override keylink's. Values are never printed.
    #[serde(default)]
    pub properties: BTreeMap<String, Sensitive<String>>,
}

impl fmt::Debug for KafkaConfig {
    // secrets (the SASL and key passwords, extra properties' values) are redacted
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("security_protocol", &self.security_protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &self.sasl_password)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("tls_key_password", &self.tls_key_password)
            .field("properties", &self.properties)
            .finish()
    }
}

/// Settings keylink fixes for at-least-once delivery; `properties` may not change them.
const FIXED: [&str; 4] = [
    "enable.idempotence",
    "acks",
    "enable.auto.commit",
    "enable.auto.offset.store",
];

impl KafkaConfig {
    /// A plaintext config for `bootstrap_servers`.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        KafkaConfig {
            bootstrap_servers: bootstrap_servers.into(),
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_key_password: None,
            properties: BTreeMap::new(),
        }
    }

    /// Adds a librdkafka setting.
    pub fn with_property(mut self, key: &str, value: &str) -> Self {
        self.properties
            .insert(key.to_string(), Sensitive::new(value.to_string()));
        self
    }

    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers)
            .set("security.protocol", self.security_protocol.as_str())
            // librdkafka's own log lines stay below -v (SPEC §8)
            .set("log_level", "3");
        if self.security_protocol.sasl() {
            c.set(
                "sasl.mechanism",
                self.sasl_mechanism.as_deref().unwrap_or("PLAIN"),
            );
            if let Some(u) = &self.sasl_username {
                c.set("sasl.username", u);
            }
            if let Some(p) = &self.sasl_password {
                c.set("sasl.password", p.expose());
            }
        }
        let path = |p: &PathBuf| p.display().to_string();
        if let Some(p) = &self.tls_ca_file {
            c.set("ssl.ca.location", path(p));
        }
        if let Some(p) = &self.tls_cert_file {
            c.set("ssl.certificate.location", path(p));
        }
        if let Some(p) = &self.tls_key_file {
            c.set("ssl.key.location", path(p));
        }
        if let Some(p) = &self.tls_key_password {
            c.set("ssl.key.password", p.expose());
        }
        for (k, v) in &self.properties {
            c.set(k, v.expose());
        }
        c
    }

    fn producer(&self) -> Result<FutureProducer> {
        let mut c = self.client_config();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            // a request of one event waits for its acknowledgement: 1 ms of lingering, not 5
            // (`cargo xtask bench stream`: single events ~2.4k/s at p50 6.7 ms with 5 ms);
            // under load batches fill while earlier ones are in flight anyway. `properties`
            // may override it.
            .set("linger.ms", "1");
        for (k, v) in &self.properties {
            if !FIXED.contains(&k.as_str()) {
                c.set(k, v.expose());
            }
        }
        c.create()
            .map_err(|e| kafka_error(e, "creating the Kafka producer"))
    }

    fn consumer(&self, sub: &Subscription) -> Result<StreamConsumer> {
        let mut c = self.client_config();
        c.set("group.id", &sub.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest");
        for (k, v) in &self.properties {
            if !FIXED.contains(&k.as_str()) {
                c.set(k, v.expose());
            }
        }
        c.create()
            .map_err(|e| kafka_error(e, "creating the Kafka consumer"))
    }

    /// Creates `topic` with `partitions` partitions (replication 1) unless it exists. For tests
    /// and set-up; keylink itself never creates topics.
    pub async fn create_topic(&self, topic: &str, partitions: i32) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = self
            .client_config()
            .create()
            .map_err(|e| kafka_error(e, "creating the Kafka admin client"))?;
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .create_topics([&new], &opts)
            .await
            .map_err(|e| kafka_error(e, &format!("creating topic {topic}")))?;
        for r in results {
            match r {
                Ok(_) => {}
                Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => {
                    return Err(Error::new(
                        ErrorKind::Other,
                        format!("creating topic {t}: {code}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Sends `messages` to `topic` in order and waits until the broker acknowledged each of them
/// (the producers here use `acks=all`); a full local queue is waited out, not an error. Used by
/// the plain sink and inside transactions alike.
async fn send_all(producer: &FutureProducer, topic: &str, messages: &[OutMessage]) -> Result<()> {
    let mut pending = Vec::with_capacity(messages.len());
    for m in messages {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(&m.payload[..]);
        if let Some(k) = &m.key {
            record = record.key(&k[..]);
        }
        // enqueue in order; a full local queue drains as deliveries complete
        loop {
            match producer.send_result(record) {
                Ok(f) => {
                    pending.push(f);
                    break;
                }
                Err((
                    KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    r,
                )) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => {
                    return Err(kafka_error(e, &format!("sending to {topic}")));
                }
            }
        }
    }
    for f in pending {
        match f.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(kafka_error(e, &format!("delivering to {topic}"))),
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Transient,
                    format!("delivering to {topic}: the producer was dropped"),
                ));
            }
        }
    }
    Ok(())
}

/// Maps a librdkafka error (its messages name brokers, topics and codes, never payloads).
fn kafka_error(e: KafkaError, what: &str) -> Error {
    use rdkafka::types::RDKafkaErrorCode as C;
    let kind = match e.rdkafka_error_code() {
        Some(C::TopicAuthorizationFailed | C::GroupAuthorizationFailed)
        | Some(C::SaslAuthenticationFailed | C::Authentication) => ErrorKind::PermissionDenied,
        Some(C::UnknownTopicOrPartition | C::UnknownTopic) => ErrorKind::NotFound,
        _ => match e {
            KafkaError::ClientConfig(..) => ErrorKind::Config,
            _ => ErrorKind::Transient,
        },
    };
    Error::new(kind, format!("{what}: {e}"))
}

keylink_core::register!(keylink_core::registry::Component {
    kind: keylink_core::registry::Kind::Connector,
    name: "kafka",
    description: "Apache Kafka topics (streams; tansu in tests)",
    example: r#"{ "type": "kafka", "bootstrap_servers": "broker:9092" }"#,
    schemes: &[],
    from_url: None,
    schema: keylink_core::schema::of::<KafkaConfig>,
});

#[async_trait]
#[typetag::serde(name = "kafka")]
impl ConnectorConfig for KafkaConfig {
    fn validate(&self) -> Result<()> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(Error::config(
                "bootstrap_servers: must name at least one broker (host:port)",
            ));
        }
        let tls_files = self.tls_ca_file.is_some()
            || self.tls_cert_file.is_some()
            || self.tls_key_file.is_some()
            || self.tls_key_password.is_some();
        if tls_files && !self.security_protocol.tls() {
            return Err(Error::config(format!(
                "tls_*: set, but security_protocol is {}; use ssl or sasl_ssl",
                self.security_protocol.as_str()
            )));
        }
        if self.security_protocol.tls() && !cfg!(feature = "ssl") {
            return Err(Error::not_supported(format!(
                "security_protocol {}: TLS to Kafka is not in this build (librdkafka's TLS is \
                 OpenSSL; build keylink with the kafka connector's `ssl` feature)",
                self.security_protocol.as_str()
            )));
        }
        let sasl_set = self.sasl_mechanism.is_some()
            || self.sasl_username.is_some()
            || self.sasl_password.is_some();
        if sasl_set && !self.security_protocol.sasl() {
            return Err(Error::config(format!(
                "sasl_*: set, but security_protocol is {}; use sasl_plaintext or sasl_ssl",
                self.security_protocol.as_str()
            )));
        }
        if self.security_protocol.sasl() {
            match self.sasl_mechanism.as_deref().unwrap_or("PLAIN") {
                "PLAIN" => {}
                "SCRAM-SHA-256" | "SCRAM-SHA-512" if cfg!(feature = "ssl") => {}
                "SCRAM-SHA-256" | "SCRAM-SHA-512" => {
                    return Err(Error::not_supported(
                        "sasl_mechanism: SCRAM needs OpenSSL in librdkafka; build keylink with \
                         the kafka connector's `ssl` feature, or use PLAIN",
                    ));
                }
                other => {
                    return Err(Error::config(format!(
                        "sasl_mechanism: {other:?} is not supported; expected PLAIN, \
                         SCRAM-SHA-256 or SCRAM-SHA-512"
                    )));
                }
            }
            if self.sasl_username.is_none() || self.sasl_password.is_none() {
                return Err(Error::config(
                    "sasl_username and sasl_password: both are needed with SASL",
                ));
            }
        }
        if let Some(k) = self.properties.keys().find(|k| FIXED.contains(&k.as_str())) {
            return Err(Error::config(format!(
                "properties.{k}: keylink sets this itself (at-least-once delivery depends on it)"
            )));
        }
        Ok(())
    }

    async fn build_source(&self, _: &BuildContext) -> Result<Arc<dyn Source>> {
        Err(Error::not_supported(
            "a kafka connector has topics, not objects; use it as a stream's source or target",
        ))
    }

    async fn build_sink(&self, _: &BuildContext) -> Result<Arc<dyn Sink>> {
        Err(Error::not_supported(
            "a kafka connector has topics, not objects; writing a batch job's output to a topic \
             is not supported yet",
        ))
    }

    fn location(&self, _: &BuildContext, path: &str) -> Result<ObjectLocation> {
        // the cluster, named by its sorted bootstrap list
        let mut servers: Vec<&str> = self
            .bootstrap_servers
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        servers.sort_unstable();
        Ok(ObjectLocation::new("kafka", servers.join(","), path))
    }

    async fn build_message_source(
        &self,
        _: &BuildContext,
        subscription: &Subscription,
    ) -> Result<Box<dyn MessageSource>> {
        self.validate()?;
        let consumer = self.consumer(subscription)?;
        consumer
            .subscribe(&[&subscription.topic])
            .map_err(|e| kafka_error(e, &format!("subscribing to {}", subscription.topic)))?;
        Ok(Box::new(KafkaSource {
            consumer: Arc::new(consumer),
            topic: subscription.topic.clone(),
        }))
    }

    async fn build_message_sink(&self, _: &BuildContext) -> Result<Arc<dyn MessageSink>> {
        self.validate()?;
        Ok(Arc::new(KafkaSink {
            producer: self.producer()?,
            servers: self.bootstrap_servers.clone(),
        }))
    }

    fn build_transactional_sink(&self, _: &BuildContext) -> Result<Arc<dyn TransactionalSink>> {
        self.validate()?;
        if self.properties.contains_key("transactional.id") {
            return Err(Error::config(
                "properties.transactional.id: keylink gives every run a transactional id of its \
                 own; remove it",
            ));
        }
        Ok(Arc::new(KafkaTransactions {
            config: self.clone(),
        }))
    }
}

/// An idempotent, `acks=all` producer.
pub struct KafkaSink {
    producer: FutureProducer,
    servers: String,
}

impl fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSink")
            .field("bootstrap_servers", &self.servers)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl MessageSink for KafkaSink {
    async fn send(&self, topic: &str, messages: &[OutMessage]) -> Result<()> {
        send_all(&self.producer, topic, messages).await
    }

    async fn check(&self) -> Result<()> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(3))
                .map(|_| ())
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Other, format!("metadata check failed: {e}")))?
        .map_err(|e| kafka_error(e, "reaching the Kafka brokers"))
    }

    fn describe(&self, topic: &str) -> String {
        format!("kafka://{}/{topic}", self.servers)
    }
}

/// A consumer-group member that commits only when told.
pub struct KafkaSource {
    consumer: Arc<StreamConsumer>,
    topic: String,
}

impl fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSource")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl MessageSource for KafkaSource {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<InMessage>> {
        let mut out = Vec::new();
        let mut budget = wait;
        while out.len() < max.max(1) {
            let m = match tokio::time::timeout(budget, self.consumer.recv()).await {
                Err(_) => break,
                // a consumption error (a broker restarting, a rebalance) is reported to the
                // consumer, which retries by itself: log it and poll on; anything else ends
                Ok(Err(e @ KafkaError::MessageConsumption(_))) => {
                    tracing::warn!(topic = %self.topic, error = %e, "reading: librdkafka retries");
                    if out.is_empty() {
                        // no busy loop while the error lasts
                        tokio::time::sleep(budget.min(Duration::from_millis(200))).await;
                    }
                    break;
                }
                Ok(Err(e)) => {
                    if out.is_empty() {
                        return Err(kafka_error(e, &format!("reading {}", self.topic)));
                    }
                    break;
                }
                Ok(Ok(m)) => m,
            };
            out.push(InMessage {
                payload: keylink_core::Bytes::copy_from_slice(m.payload().unwrap_or_default()),
                position: Position {
                    partition: m.partition(),
                    offset: m.offset(),
                },
            });
            // after the first message, take only what is already here
            budget = Duration::from_millis(1);
        }
        Ok(out)
    }

    async fn commit(&mut self, done: &[Position]) -> Result<()> {
        if done.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for p in done {
            tpl.add_partition_offset(&self.topic, p.partition, Offset::Offset(p.offset + 1))
                .map_err(|e| kafka_error(e, "building the commit"))?;
        }
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await
            .map_err(|e| Error::new(ErrorKind::Other, format!("commit failed: {e}")))?
            .map_err(|e| kafka_error(e, &format!("committing offsets of {}", self.topic)))
    }

    async fn last_positions(&mut self) -> Result<Vec<Position>> {
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || last_positions(&consumer, &topic))
            .await
            .map_err(|e| Error::new(ErrorKind::Other, format!("reading watermarks failed: {e}")))?
    }
}

/// Per partition of `topic`, the offset of its last message (high watermark − 1); partitions
/// without messages are left out. Blocking: call from `spawn_blocking`.
fn last_positions(consumer: &StreamConsumer, topic: &str) -> Result<Vec<Position>> {
    let timeout = Duration::from_secs(10);
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| kafka_error(e, &format!("reading the partitions of {topic}")))?;
    let mut out = Vec::new();
    for t in md.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(topic, p.id(), timeout)
                .map_err(|e| kafka_error(e, &format!("reading the end of {topic}")))?;
            if high > low {
                out.push(Position {
                    partition: p.id(),
                    offset: high - 1,
                });
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Transactional producers for a batch job's topic targets (SPEC §11).
///
/// Every [`TransactionalSink::begin`] makes a producer with a `transactional.id` of its own
/// (`keylink-batch-<time>-<pid>-<n>`), so runs never fence each other: two runs of one job at
/// once both commit their own messages, exactly as two runs writing objects both write theirs.
/// The price: a run killed mid-transaction is not fenced by the next run; its open transaction
/// stays open (holding back `read_committed` consumers of its partitions) until the broker
/// aborts it after `transaction.timeout.ms`. Its messages are never visible.
///
/// `transaction.timeout.ms` is also the longest a job may take from its first message to its
/// commit: the broker aborts a transaction open longer. keylink sets 900 000 (15 min, the
/// brokers' default `transaction.max.timeout.ms`); `properties` may change it (up to the
/// broker's maximum).
pub struct KafkaTransactions {
    config: KafkaConfig,
}

impl fmt::Debug for KafkaTransactions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaTransactions")
            .field("bootstrap_servers", &self.config.bootstrap_servers)
            .finish_non_exhaustive()
    }
}

/// How long a blocking transaction call may take.
const TX_TIMEOUT: Duration = Duration::from_secs(60);

fn transactional_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "keylink-batch-{nanos:x}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Runs a blocking producer call off the async threads.
async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> std::result::Result<T, KafkaError> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::new(ErrorKind::Other, format!("{what} failed: {e}")))?
        .map_err(|e| kafka_error(e, what))
}

#[async_trait]
impl TransactionalSink for KafkaTransactions {
    async fn begin(&self) -> Result<Box<dyn MessageTransaction>> {
        let mut c = self.config.client_config();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("transaction.timeout.ms", "900000");
        for (k, v) in &self.config.properties {
            if !FIXED.contains(&k.as_str()) {
                c.set(k, v.expose());
            }
        }
        c.set("transactional.id", transactional_id());
        let producer: FutureProducer = c
            .create()
            .map_err(|e| kafka_error(e, "creating the Kafka transactional producer"))?;
        let p = producer.clone();
        blocking("starting a Kafka transaction", move || {
            p.init_transactions(TX_TIMEOUT)?;
            p.begin_transaction()
        })
        .await?;
        Ok(Box::new(KafkaTransaction {
            producer,
            servers: self.config.bootstrap_servers.clone(),
            open: true,
        }))
    }

    fn describe(&self, topic: &str) -> String {
        format!("kafka://{}/{topic}", self.config.bootstrap_servers)
    }
}

/// An open Kafka transaction (its own producer).
pub struct KafkaTransaction {
    producer: FutureProducer,
    servers: String,
    open: bool,
}

impl fmt::Debug for KafkaTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaTransaction")
            .field("bootstrap_servers", &self.servers)
            .field("open", &self.open)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl MessageTransaction for KafkaTransaction {
    async fn send(&mut self, topic: &str, messages: &[OutMessage]) -> Result<()> {
        send_all(&self.producer, topic, messages).await
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        self.open = false;
        let p = self.producer.clone();
        let committed = blocking("committing the Kafka transaction", move || {
            p.commit_transaction(TX_TIMEOUT)
        })
        .await;
        if committed.is_err() {
            // nothing may become visible: abort what can be (a fatal error leaves it to the
            // broker's transaction timeout)
            let p = self.producer.clone();
            if let Err(e) = blocking("aborting the Kafka transaction", move || {
                p.abort_transaction(TX_TIMEOUT)
            })
            .await
            {
                tracing::warn!(error = %e, "abort after a failed commit failed");
            }
        }
        committed
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.open = false;
        let p = self.producer.clone();
        blocking("aborting the Kafka transaction", move || {
            p.abort_transaction(TX_TIMEOUT)
        })
        .await
    }
}

impl Drop for KafkaTransaction {
    fn drop(&mut self) {
        if self.open {
            // the broker aborts it after transaction.timeout.ms; its messages never show
            tracing::warn!(bootstrap_servers = %self.servers,
                "a Kafka transaction was dropped open; the broker aborts it when it times out");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Box<dyn ConnectorConfig>> {
        serde_json::from_str(json).map_err(|e| Error::config(e.to_string()))
    }

    #[test]
    fn secrets_are_redacted() {
        let c = parse(
            r#"{"type":"kafka","bootstrap_servers":"b:9092","security_protocol":"sasl_plaintext",
                "sasl_username":"u","sasl_password":"hunter2-secret",
                "properties":{"sasl.oauthbearer.config":"token-secret"}}"#,
        )
        .unwrap();
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2"), "{d}");
        assert!(!d.contains("token-secret"), "{d}");
        assert!(d.contains("b:9092"), "{d}");
        c.validate().unwrap();
    }

    #[test]
    fn settings_are_checked() {
        let bad = [
            r#"{"type":"kafka","bootstrap_servers":" "}"#,
            r#"{"type":"kafka","bootstrap_servers":"b:1","sasl_username":"u"}"#,
            r#"{"type":"kafka","bootstrap_servers":"b:1","tls_ca_file":"ca.pem"}"#,
            r#"{"type":"kafka","bootstrap_servers":"b:1","security_protocol":"sasl_plaintext"}"#,
            r#"{"type":"kafka","bootstrap_servers":"b:1","properties":{"acks":"1"}}"#,
            r#"{"type":"kafka","bootstrap_servers":"b:1","security_protocol":"sasl_plaintext",
                "sasl_mechanism":"GSSAPI","sasl_username":"u","sasl_password":"p"}"#,
        ];
        for b in bad {
            assert!(parse(b).unwrap().validate().is_err(), "{b}");
        }
        assert!(parse(r#"{"type":"kafka","bootstrap_servers":"b:1","bogus":1}"#).is_err());
        let tls = parse(r#"{"type":"kafka","bootstrap_servers":"b:1","security_protocol":"ssl"}"#)
            .unwrap()
            .validate();
        if cfg!(feature = "ssl") {
            tls.unwrap();
        } else {
            assert_eq!(tls.unwrap_err().kind(), ErrorKind::NotSupported);
        }
    }

    #[test]
    fn a_transactional_sink_is_built_without_io_and_owns_its_id() {
        let ctx = BuildContext::default();
        // nothing listens on port 1: building must not connect
        KafkaConfig::new("127.0.0.1:1")
            .build_transactional_sink(&ctx)
            .unwrap();
        let e = KafkaConfig::new("127.0.0.1:1")
            .with_property("transactional.id", "fixed")
            .build_transactional_sink(&ctx)
            .unwrap_err();
        assert!(e.to_string().contains("properties.transactional.id"), "{e}");
        assert_ne!(transactional_id(), transactional_id());
    }

    #[test]
    fn one_cluster_is_one_location() {
        let ctx = BuildContext::default();
        let a = KafkaConfig::new("b:2,a:1").location(&ctx, "t").unwrap();
        let b = KafkaConfig::new("a:1, b:2").location(&ctx, "t").unwrap();
        assert_eq!(a, b);
        assert_ne!(a, KafkaConfig::new("a:1").location(&ctx, "u").unwrap());
    }
}
