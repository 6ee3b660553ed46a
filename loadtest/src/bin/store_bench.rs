//! `store_bench`: history appends and whole turns per second, with latency percentiles, against
//! one storage backend through the same `Store` port the engine uses.
//!
//! ```text
//! cargo run --release -p loadtest --bin store_bench -- --backend embedded --workload append
//! cargo run --release -p loadtest --bin store_bench -- --backend scylla --scylla-nodes 10.0.0.1:9042
//! ```
//!
//! Workloads:
//! - `append`: each writer records one inbound message per call (`Store::ingest`, one item, with
//!   its dedupe key), the write a webhook makes.
//! - `turn`: each writer plays a whole turn: the inbound message with its inbox entry, the
//!   turn's commit (state, the answer and its outbox entry, the inbox entry done) and the send's
//!   outcome (`outbox_sent`): the three durable writes of an answered turn.
//!
//! Writers spread over `--conversations` conversations of one tenant; each call's latency is
//! recorded in an HDR histogram. The embedded store runs in a fresh temporary directory (or
//! `--data-dir`) at its production durability (`synchronous=FULL`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use engine::conversation::{Conversation, ConversationState};
use engine::message::{
    Author, DeliveryStatus, Direction, InboxKind, IngestItem, IngestOutcome, MessageKind,
    StoredMessage,
};
use engine::ports::{ConversationCommit, Store};
use engine::{ContactId, MessageId, TenantId, Timestamp};
use hdrhistogram::Histogram;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// SQLite in WAL mode, one fsync per group commit (the default store).
    Embedded,
    /// ScyllaDB (needs `--scylla-nodes` and a migrated keyspace).
    Scylla,
    /// The in-memory test store: the cost of the port itself, for reference.
    Memory,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    Append,
    Turn,
}

#[derive(Debug, Parser)]
#[command(about = "History appends and turns per second against one storage backend")]
struct Args {
    #[arg(long, value_enum, default_value = "embedded")]
    backend: Backend,
    #[arg(long, value_enum, default_value = "append")]
    workload: Workload,
    /// Concurrent writers.
    #[arg(long, default_value_t = 64)]
    writers: usize,
    /// Conversations the writers spread over.
    #[arg(long, default_value_t = 1000)]
    conversations: u64,
    /// How long to write, after a 2 s warm-up.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Where the embedded store lives (default: a fresh temporary directory, removed afterwards).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long, env = "CONVERSA_SCYLLA_NODES", value_delimiter = ',')]
    scylla_nodes: Vec<String>,
    #[arg(
        long,
        env = "CONVERSA_SCYLLA_KEYSPACE",
        default_value = "conversa_bench"
    )]
    scylla_keyspace: String,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut cleanup = None;
    let store: Arc<dyn Store> = match args.backend {
        Backend::Embedded => {
            let dir = match &args.data_dir {
                Some(dir) => dir.clone(),
                None => {
                    let dir = std::env::temp_dir().join(format!(
                        "conversa-store-bench-{}-{}",
                        std::process::id(),
                        Instant::now().elapsed().as_nanos()
                    ));
                    cleanup = Some(dir.clone());
                    dir
                }
            };
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            Arc::new(schema::embedded::EmbeddedStore::open(&dir).await?)
        }
        Backend::Scylla => {
            anyhow::ensure!(
                !args.scylla_nodes.is_empty(),
                "--backend scylla needs --scylla-nodes (or CONVERSA_SCYLLA_NODES)"
            );
            let store = schema::scylla::ScyllaStore::new(schema::scylla::ScyllaSettings::new(
                args.scylla_nodes.clone(),
                args.scylla_keyspace.clone(),
            ));
            store.health().await.context("ScyllaDB is not reachable")?;
            Arc::new(store)
        }
        Backend::Memory => Arc::new(engine::testsuite::MemoryStore::new()),
    };
    let tenant = TenantId::parse("bench").expect("a valid tenant id");
    if store.get_tenant(&tenant).await?.is_none() {
        let mut t = engine::testsuite::tenant("bench");
        t.id = tenant.clone();
        store.create_tenant(&t).await?;
    }

    let run = Run {
        store,
        tenant,
        workload: args.workload,
        conversations: args.conversations.max(1),
        next: Arc::new(AtomicU64::new(0)),
        // A run id keeps dedupe keys and message ids unique across runs on one database.
        run_id: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis()),
    };
    // Warm-up: fills caches and creates the conversations' records.
    run.drive(args.writers, Duration::from_secs(2)).await?;
    let started = Instant::now();
    let (histogram, ops) = run.drive(args.writers, args.duration).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let unit = match args.workload {
        Workload::Append => "appends",
        Workload::Turn => "turns",
    };
    let report = serde_json::json!({
        "backend": format!("{:?}", args.backend).to_lowercase(),
        "workload": format!("{:?}", args.workload).to_lowercase(),
        "writers": args.writers,
        "conversations": args.conversations,
        "seconds": elapsed,
        "operations": ops,
        "per_second": ops as f64 / elapsed,
        "latency_ms": { "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p999": ms(0.999), "max": histogram.max() as f64 / 1000.0 },
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "{:?} {:?}: {ops} {unit} in {elapsed:.1} s = {:.0} {unit}/s with {} writers; latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            args.backend,
            args.workload,
            ops as f64 / elapsed,
            args.writers,
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            histogram.max() as f64 / 1000.0
        );
    }
    if let Some(dir) = cleanup {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

#[derive(Clone)]
struct Run {
    store: Arc<dyn Store>,
    tenant: TenantId,
    workload: Workload,
    conversations: u64,
    next: Arc<AtomicU64>,
    run_id: u128,
}

impl Run {
    /// Runs `writers` loops for `duration`; the merged latency histogram (µs) and the count.
    async fn drive(
        &self,
        writers: usize,
        duration: Duration,
    ) -> anyhow::Result<(Histogram<u64>, u64)> {
        let deadline = Instant::now() + duration;
        let mut tasks = Vec::with_capacity(writers);
        for _ in 0..writers {
            let run = self.clone();
            tasks.push(tokio::spawn(async move {
                let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                let mut ops = 0u64;
                while Instant::now() < deadline {
                    let started = Instant::now();
                    run.once().await?;
                    histogram.saturating_record(started.elapsed().as_micros() as u64);
                    ops += 1;
                }
                anyhow::Ok((histogram, ops))
            }));
        }
        let mut merged = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let mut total = 0;
        for task in tasks {
            let (histogram, ops) = task.await??;
            merged.add(&histogram)?;
            total += ops;
        }
        Ok((merged, total))
    }

    async fn once(&self) -> anyhow::Result<()> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let contact = ContactId::parse(&format!("55119{:08}", n % self.conversations))?;
        let now = Timestamp(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis() as i64,
        );
        let message = |direction: Direction, author: Author, text: &str| StoredMessage {
            id: MessageId(format!(
                "{}-{n}-{}",
                self.run_id,
                direction_label(direction)
            )),
            tenant: self.tenant.clone(),
            contact: contact.clone(),
            direction,
            author,
            kind: MessageKind::Text,
            text: text.to_owned(),
            provider_id: (direction == Direction::In).then(|| format!("wamid.{}.{n}", self.run_id)),
            at: now,
            status: (direction == Direction::Out).then_some(DeliveryStatus::Pending),
            expires_at: now.plus_days(30.0),
            amended: None,
        };
        let inbound = message(
            Direction::In,
            Author::Contact,
            "Oi, vocês entregam no centro hoje? Qual o prazo?",
        );
        let item = IngestItem {
            dedupe_key: format!("{contact}/{}.{n}", self.run_id),
            message: inbound,
            inbox: (self.workload == Workload::Turn).then_some(InboxKind::CustomerMessage),
        };
        let outcomes = self.store.ingest(&self.tenant, vec![item], now).await?;
        if self.workload == Workload::Append {
            return Ok(());
        }
        let Some(IngestOutcome::Recorded(Some(entry))) = outcomes.into_iter().next() else {
            anyhow::bail!("the message was not recorded with an inbox entry");
        };
        let mut conversation = self
            .store
            .load_conversation(&self.tenant, &contact)
            .await?
            .unwrap_or_else(|| Conversation::new(self.tenant.clone(), contact.clone(), now));
        conversation.state = ConversationState::IaAtiva;
        conversation.updated_at = now;
        let answer = message(
            Direction::Out,
            Author::Assistant,
            "Entregamos no centro em até 2 horas, de segunda a sábado.",
        );
        let outbox = self
            .store
            .commit(ConversationCommit {
                conversation,
                consumed_inbox: vec![entry.seq],
                outbound: vec![answer],
            })
            .await?;
        for item in outbox {
            self.store
                .outbox_sent(item.seq, Some(&format!("sent.{}.{n}", self.run_id)), now)
                .await?;
        }
        Ok(())
    }
}

fn direction_label(direction: Direction) -> &'static str {
    match direction {
        Direction::In => "in",
        Direction::Out => "out",
    }
}
