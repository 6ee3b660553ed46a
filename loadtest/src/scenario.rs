//! Traffic shapes and the driver: one task owns every contact's state, spends send slots at the
//! target rate, and attributes each answer the recorder sees to the contact's open turn.
//!
//! A turn is one debounce burst from one contact: 1 fragment (steady chat, handoff) or 2–4 fragments
//! (typing burst) sent one after the other, each `--burst-gap` after the previous one's ack. The
//! contact then waits for its answer; after it (plus `--think-time`) the contact may start its next
//! turn. A handoff answer (the fallback message) silences the contact for the rest of the run.
//!
//! Attribution rules (see [`Driver::on_answer`]): an answer that arrives while more fragments of the
//! turn are still to be sent, or less than `debounce_ms` after the turn's latest fragment, cannot
//! contain that fragment: the server flushed early (a *debounce split*, which expects one more
//! answer) or, for a one-fragment turn, it belongs to the previous turn (a duplicate).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures_util::StreamExt as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::config::{Args, Shape};
use crate::listener::{self, ClientResult, Connect, SendClock};
use crate::llm::LlmServer;
use crate::payload::{ProviderKind, TenantSecrets, Webhook};
use crate::recorder::{self, Answer, Recorder};
use crate::report::{Answers, Dashboards, Latency, LlmView, Offered, Report, ServerView};
use crate::target::{self, FALLBACK, KNOWLEDGE, Scrape, Target, TenantInfo};

/// Questions the knowledge answers (steady chat and the last fragment of a burst).
const QUESTIONS: &[&str] = &[
    "Oi, vocês abrem amanhã?",
    "qual o horário de funcionamento da loja?",
    "vocês fazem entrega em São Paulo?",
    "o frete é grátis para compras acima de quanto?",
    "tem o tamanho M desse modelo?",
    "como funciona a troca com nota fiscal?",
    "vocês aceitam pix ou boleto?",
    "posso parcelar no cartão de crédito?",
    "a loja abre aos domingos?",
    "fazem entregas em toda a cidade?",
];
/// First fragments of a typing burst.
const OPENERS: &[&str] = &["oi", "tudo bem?", "boa tarde", "uma dúvida", "então"];
/// Turns that ask for a human (the default handoff keyword).
const HANDOFF: &[&str] = &[
    "quero falar com um atendente, por favor",
    "preciso de um atendente agora",
    "me passa para um atendente humano",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Ready,
    Sending,
    Awaiting,
    Cooling,
    Retired,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TurnKind {
    Steady,
    Burst,
    Handoff,
}

/// One contact's state; only its current turn is tracked (one open turn at a time).
#[derive(Debug, Clone)]
struct Contact {
    tenant: u32,
    phase: Phase,
    turn: u32,
    kind: TurnKind,
    fragments: u8,
    sent: u8,
    accepted: u8,
    in_flight: bool,
    answers: u16,
    expected: u16,
    last_sent: Option<Instant>,
    timed_out: bool,
    turns_done: u32,
    /// Attribution was ambiguous (a debounce split, a duplicate, an unexpected handoff, a
    /// timeout): the contact's history is audited on the server at the end.
    suspect: bool,
    /// Answers counted as duplicates by the client.
    duplicates: u16,
}

impl Contact {
    fn new(tenant: u32) -> Self {
        Self {
            tenant,
            phase: Phase::Ready,
            turn: 0,
            kind: TurnKind::Steady,
            fragments: 0,
            sent: 0,
            accepted: 0,
            in_flight: false,
            answers: 0,
            expected: 0,
            last_sent: None,
            timed_out: false,
            turns_done: 0,
            suspect: false,
            duplicates: 0,
        }
    }
}

/// A webhook's outcome, reported back to the driver.
#[derive(Debug)]
struct Ack {
    contact: u32,
    turn: u32,
    sent_at: Instant,
    done_at: Instant,
    /// `Ok`, or the error kind and whether the server answered (a rejection) or not (transport).
    result: Result<(), (String, bool)>,
}

/// Counters the progress bar reads.
#[derive(Debug, Default)]
struct Progress {
    sent: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    answers: AtomicU64,
    open_turns: AtomicU64,
    in_flight: AtomicU64,
}

/// Everything a spawned webhook POST needs.
#[derive(Debug)]
struct Sender {
    http: reqwest::Client,
    base: String,
    tenants: Vec<TenantInfo>,
    run: String,
    clock: Arc<SendClock>,
    acks: mpsc::UnboundedSender<Ack>,
    semaphore: Arc<Semaphore>,
    progress: Arc<Progress>,
}

impl Sender {
    fn spawn(
        self: &Arc<Self>,
        contact: u32,
        turn: u32,
        seq: u64,
        text: String,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let this = self.clone();
        this.progress.in_flight.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let tenant = &this.tenants[(contact as usize) % this.tenants.len()];
            let number = recorder::contact_number(contact);
            let message_id = format!("3A{}{seq:014X}", this.run.to_ascii_uppercase());
            let unix = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let hook = tenant.kind.text_webhook(
                &tenant.id,
                &tenant.secrets,
                &number,
                &message_id,
                &text,
                unix,
            );
            let sent_at = Instant::now();
            this.clock.mark(seq, sent_at);
            let result = post(&this.http, &this.base, hook).await;
            let done_at = Instant::now();
            drop(permit);
            this.progress.in_flight.fetch_sub(1, Ordering::Relaxed);
            let _ = this.acks.send(Ack {
                contact,
                turn,
                sent_at,
                done_at,
                result,
            });
        });
    }
}

async fn post(http: &reqwest::Client, base: &str, hook: Webhook) -> Result<(), (String, bool)> {
    let mut request = http
        .post(format!("{base}{}", hook.path))
        .header("content-type", "application/json")
        .body(hook.body);
    for (name, value) in hook.headers {
        request = request.header(name, value);
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status();
            let _ = response.bytes().await;
            if status.is_success() {
                Ok(())
            } else {
                Err((format!("http_{}", status.as_u16()), true))
            }
        }
        Err(e) => {
            let kind = if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "connect"
            } else {
                "transport"
            };
            Err((kind.to_owned(), false))
        }
    }
}

/// The driver's state and results.
#[derive(Debug)]
struct Driver {
    args: Args,
    cap: u64,
    contacts: Vec<Contact>,
    ready: VecDeque<u32>,
    cooling: VecDeque<(Instant, u32)>,
    continuations: VecDeque<(Instant, u32)>,
    timeouts: VecDeque<(Instant, u32, u32)>,
    rng: StdRng,
    seq: u64,
    reserved: u64,
    num_sending: u64,
    num_awaiting: u64,
    num_timed_out_unanswered: u64,
    num_retired: u64,
    ack_latency: Latency,
    turn_latency: Latency,
    answers: Answers,
    accepted: u64,
    rejected: u64,
    errors: BTreeMap<String, u64>,
    idle_slots: u64,
    backpressure_slots: u64,
    progress: Arc<Progress>,
}

impl Driver {
    fn turn_kind(&mut self) -> TurnKind {
        match self.args.shape {
            Shape::Steady => TurnKind::Steady,
            Shape::Burst => TurnKind::Burst,
            Shape::Handoff => TurnKind::Handoff,
            Shape::Mix => match self.rng.random_range(0..10) {
                0..=5 => TurnKind::Steady,
                6..=8 => TurnKind::Burst,
                _ => TurnKind::Handoff,
            },
        }
    }

    fn fragment_text(&mut self, kind: TurnKind, index: u8, fragments: u8, seq: u64) -> String {
        let text = match kind {
            TurnKind::Handoff => HANDOFF[self.rng.random_range(0..HANDOFF.len())],
            _ if index + 1 < fragments => OPENERS[self.rng.random_range(0..OPENERS.len())],
            _ => QUESTIONS[self.rng.random_range(0..QUESTIONS.len())],
        };
        format!("{text} {}", listener::encode_marker(seq))
    }

    /// Starts a turn for the next ready contact, if any and if the cap allows its fragments.
    fn start_turn(&mut self, now: Instant) -> Option<(u32, u32, u64, String)> {
        let kind = self.turn_kind();
        let fragments: u8 = match kind {
            TurnKind::Burst => self.rng.random_range(2..=4),
            _ => 1,
        };
        if self.reserved + u64::from(fragments) > self.cap {
            return None;
        }
        let index = self.ready.pop_front()?;
        self.reserved += u64::from(fragments);
        let c = &mut self.contacts[index as usize];
        c.phase = Phase::Sending;
        c.turn += 1;
        c.kind = kind;
        c.fragments = fragments;
        c.sent = 0;
        c.accepted = 0;
        c.answers = 0;
        c.expected = 0;
        c.timed_out = false;
        self.num_sending += 1;
        Some(self.next_fragment(index, now))
    }

    fn next_fragment(&mut self, index: u32, now: Instant) -> (u32, u32, u64, String) {
        self.seq += 1;
        let seq = self.seq;
        let (kind, sent, fragments, turn) = {
            let c = &self.contacts[index as usize];
            (c.kind, c.sent, c.fragments, c.turn)
        };
        let text = self.fragment_text(kind, sent, fragments, seq);
        let c = &mut self.contacts[index as usize];
        c.sent += 1;
        c.in_flight = true;
        c.last_sent = Some(now);
        (index, turn, seq, text)
    }

    fn on_ack(&mut self, ack: Ack) {
        let c = &mut self.contacts[ack.contact as usize];
        if c.turn != ack.turn || c.phase != Phase::Sending {
            return;
        }
        c.in_flight = false;
        match ack.result {
            Ok(()) => {
                c.accepted += 1;
                self.accepted += 1;
                self.ack_latency
                    .record(ack.done_at.saturating_duration_since(ack.sent_at));
            }
            Err((kind, answered)) => {
                if answered {
                    self.rejected += 1;
                }
                *self.errors.entry(kind).or_default() += 1;
                // The rest of the burst is abandoned; what was accepted still expects its answer.
                c.fragments = c.sent;
            }
        }
        if c.sent < c.fragments {
            self.continuations
                .push_back((ack.done_at + self.args.burst_gap, ack.contact));
            return;
        }
        self.num_sending -= 1;
        if c.accepted == 0 {
            c.phase = Phase::Cooling;
            self.cooling
                .push_back((ack.done_at + self.args.think_time, ack.contact));
            return;
        }
        self.answers.turns += 1;
        c.expected += 1;
        self.answers.expected += 1;
        c.phase = Phase::Awaiting;
        self.num_awaiting += 1;
        let deadline = c.last_sent.unwrap_or(ack.done_at) + self.args.turn_timeout;
        self.timeouts.push_back((deadline, ack.contact, c.turn));
        if c.answers >= c.expected {
            // The answer overtook the ack.
            let at = ack.done_at;
            self.complete(ack.contact, at, false);
        }
    }

    fn on_answer(&mut self, answer: Answer) {
        self.answers.received += 1;
        let debounce = Duration::from_millis(self.args.debounce_ms);
        let Some(c) = self.contacts.get_mut(answer.contact as usize) else {
            *self
                .errors
                .entry("answer_unknown_contact".into())
                .or_default() += 1;
            return;
        };
        if c.tenant != answer.tenant {
            *self.errors.entry("answer_wrong_tenant".into()).or_default() += 1;
        }
        if answer.fallback {
            self.answers.handoffs += 1;
        }
        match c.phase {
            Phase::Sending | Phase::Awaiting => {
                let more_to_come = c.phase == Phase::Sending && c.sent < c.fragments;
                let too_soon = c.last_sent.is_some_and(|t| answer.at < t + debounce);
                if more_to_come || too_soon {
                    c.suspect = true;
                    if c.sent > 1 || more_to_come {
                        // The server flushed before the latest fragment: one more answer is due.
                        self.answers.debounce_splits += 1;
                        c.expected += 1;
                        self.answers.expected += 1;
                        c.answers += 1;
                    } else {
                        self.answers.duplicated += 1;
                        c.duplicates += 1;
                    }
                    return;
                }
                c.answers += 1;
                if c.phase == Phase::Awaiting && c.answers >= c.expected {
                    self.complete(answer.contact, answer.at, answer.fallback);
                } else if answer.fallback && c.kind != TurnKind::Handoff {
                    self.answers.unexpected_handoffs += 1;
                    c.suspect = true;
                }
            }
            Phase::Retired if c.timed_out && c.answers < c.expected => {
                c.answers += 1;
                self.answers.late += 1;
                if c.answers >= c.expected {
                    self.num_timed_out_unanswered -= 1;
                }
            }
            Phase::Ready | Phase::Cooling | Phase::Retired => {
                if c.turn == 0 {
                    *self.errors.entry("answer_without_turn".into()).or_default() += 1;
                } else {
                    c.answers += 1;
                    c.duplicates += 1;
                    c.suspect = true;
                    self.answers.duplicated += 1;
                }
            }
        }
    }

    /// The open turn of `index` got all its answers.
    fn complete(&mut self, index: u32, at: Instant, fallback: bool) {
        let think = self
            .args
            .think_time
            .mul_f64(self.rng.random_range(0.5..1.5));
        let max_turns = self.args.turns_per_contact;
        let c = &mut self.contacts[index as usize];
        if let Some(sent) = c.last_sent {
            self.turn_latency.record(at.saturating_duration_since(sent));
        }
        self.num_awaiting -= 1;
        c.turns_done += 1;
        if fallback && c.kind != TurnKind::Handoff {
            self.answers.unexpected_handoffs += 1;
            c.suspect = true;
        }
        if fallback || (max_turns > 0 && c.turns_done >= max_turns) {
            c.phase = Phase::Retired;
            self.num_retired += 1;
        } else {
            c.phase = Phase::Cooling;
            self.cooling.push_back((at + think, index));
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(deadline, index, turn)) = self.timeouts.front() {
            if deadline > now {
                break;
            }
            self.timeouts.pop_front();
            let c = &mut self.contacts[index as usize];
            if c.turn == turn && c.phase == Phase::Awaiting {
                c.phase = Phase::Retired;
                c.timed_out = true;
                c.suspect = true;
                self.num_awaiting -= 1;
                self.num_retired += 1;
                self.num_timed_out_unanswered += 1;
                *self.errors.entry("turn_timeout".into()).or_default() += 1;
            }
        }
        while let Some(&(due, index)) = self.cooling.front() {
            if due > now {
                break;
            }
            self.cooling.pop_front();
            let c = &mut self.contacts[index as usize];
            if c.phase == Phase::Cooling {
                c.phase = Phase::Ready;
                self.ready.push_back(index);
            }
        }
    }

    /// Turns of contact `c` the client saw no answer for.
    fn lost_of(c: &Contact) -> u64 {
        if c.turn > 0 && c.accepted > 0 {
            u64::from(c.expected.saturating_sub(c.answers))
        } else {
            0
        }
    }

    fn lost(&self) -> u64 {
        self.contacts.iter().map(Self::lost_of).sum()
    }

    /// Contacts whose attribution was ambiguous or who lost an answer.
    fn suspects(&self) -> Vec<u32> {
        (0..self.contacts.len() as u32)
            .filter(|&i| {
                let c = &self.contacts[i as usize];
                c.suspect || Self::lost_of(c) > 0
            })
            .collect()
    }

    fn publish(&self) {
        let p = &self.progress;
        p.sent.store(self.seq, Ordering::Relaxed);
        p.accepted.store(self.accepted, Ordering::Relaxed);
        p.rejected.store(self.rejected, Ordering::Relaxed);
        p.answers.store(self.answers.received, Ordering::Relaxed);
        p.open_turns
            .store(self.num_sending + self.num_awaiting, Ordering::Relaxed);
    }
}

/// Peaks of what the server reported while the run went on.
#[derive(Debug, Default, Clone, Copy)]
struct Peaks {
    rss: Option<f64>,
    live: Option<f64>,
    mailbox: Option<f64>,
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Runs one load test against `args.target` and returns its report.
pub async fn run(args: Args) -> anyhow::Result<Report> {
    let cap = args.validate()?;
    let run_id = format!("{:06x}", rand::random::<u32>() & 0x00ff_ffff);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;
    let target = Target::new(&args.target, &args.admin_token, http.clone());
    target.check_health().await?;

    // Providers: keep the requested ones the server accepts, in order, without repeats.
    let mut accepted_kinds: Vec<ProviderKind> = Vec::new();
    let mut skipped: BTreeMap<String, String> = BTreeMap::new();
    for &kind in &args.providers {
        if accepted_kinds.contains(&kind) || skipped.contains_key(kind.as_str()) {
            continue;
        }
        match target.probe_provider(kind).await {
            Ok(()) => accepted_kinds.push(kind),
            Err(why) => {
                skipped.insert(kind.as_str().to_owned(), why);
            }
        }
    }
    if accepted_kinds.is_empty() {
        bail!("the server accepts none of the requested providers: {skipped:?}");
    }

    // The recorder knows every tenant key before the tenants exist (their provider points at it).
    let secrets: Vec<TenantSecrets> = (0..args.tenants)
        .map(|i| TenantSecrets::new(&run_id, i))
        .collect();
    let mut keys = HashMap::new();
    for (i, s) in secrets.iter().enumerate() {
        keys.insert(target::tenant_id(&run_id, i as u32), i as u32);
        keys.insert(s.phone_number_id.clone(), i as u32);
    }
    let (answer_tx, mut answer_rx) = mpsc::unbounded_channel::<Answer>();
    let recorder =
        Recorder::start(args.provider_listen, keys, FALLBACK.to_owned(), answer_tx).await?;
    let llm = LlmServer::start(args.llm_listen, args.llm_latency).await?;

    let mut tenants = Vec::with_capacity(args.tenants as usize);
    for (i, secrets) in secrets.into_iter().enumerate() {
        let id = target::tenant_id(&run_id, i as u32);
        let api_key = loop {
            let kind = accepted_kinds[i % accepted_kinds.len()];
            match target
                .create_tenant(&id, kind, &secrets, &recorder.base_url(), args.debounce_ms)
                .await?
            {
                Ok(key) => break (kind, key),
                Err(why) => {
                    accepted_kinds.retain(|k| *k != kind);
                    skipped.insert(kind.as_str().to_owned(), why);
                    if accepted_kinds.is_empty() {
                        bail!("the server accepts none of the requested providers: {skipped:?}");
                    }
                }
            }
        };
        target.put_knowledge(&api_key.1, KNOWLEDGE).await?;
        tenants.push(TenantInfo {
            id,
            kind: api_key.0,
            secrets,
            api_key: api_key.1,
        });
    }

    // Dashboards.
    let clock = Arc::new(SendClock::new(cap));
    let stop_dashboards = CancellationToken::new();
    let mut dashboards = Dashboards {
        requested: args.dashboards,
        status: if args.dashboards == 0 {
            "not_requested".into()
        } else {
            "ok".into()
        },
        ..Dashboards::default()
    };
    let mut readers = Vec::new();
    let mut setup_errors: BTreeMap<String, u64> = BTreeMap::new();
    if args.dashboards > 0 {
        let first_url = listener::stream_url(&args.target, &tenants[0].api_key);
        match listener::connect(&first_url, clock.clone(), stop_dashboards.clone()).await {
            Connect::Unavailable(why) => dashboards.status = format!("unavailable: {why}"),
            first => {
                let mut results = vec![first];
                let urls: Vec<String> = (1..args.dashboards)
                    .map(|i| {
                        listener::stream_url(
                            &args.target,
                            &tenants[(i % args.tenants) as usize].api_key,
                        )
                    })
                    .collect();
                let more: Vec<Connect> = futures_util::stream::iter(urls)
                    .map(|url| {
                        let clock = clock.clone();
                        let stop = stop_dashboards.clone();
                        async move { listener::connect(&url, clock, stop).await }
                    })
                    .buffer_unordered(32)
                    .collect()
                    .await;
                results.extend(more);
                for r in results {
                    match r {
                        Connect::Connected(h) => readers.push(h),
                        Connect::Unavailable(why) | Connect::Failed(why) => {
                            *setup_errors
                                .entry(format!("dashboard_connect: {why}"))
                                .or_default() += 1;
                        }
                    }
                }
                dashboards.connected = readers.len() as u32;
            }
        }
    }

    // Server sampling.
    let before = target.scrape().await.unwrap_or_default();
    let stop_sampling = CancellationToken::new();
    let sampler = {
        let target = target.clone();
        let stop = stop_sampling.clone();
        tokio::spawn(async move {
            let mut peaks = Peaks::default();
            loop {
                if let Ok(s) = target.scrape().await {
                    peaks.rss = max_opt(peaks.rss, s.value("process_resident_memory_bytes"));
                    peaks.live = max_opt(peaks.live, s.value("conversa_live_conversations"));
                    peaks.mailbox = max_opt(peaks.mailbox, s.value("conversa_mailbox_depth"));
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
            peaks
        })
    };

    // Progress.
    let progress = Arc::new(Progress::default());
    let show_bar = !args.no_progress && std::io::stderr().is_terminal();
    let bar = if show_bar {
        let bar = indicatif::ProgressBar::new(args.duration.as_millis() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let stop_progress = CancellationToken::new();
    let progress_task = {
        let bar = bar.clone();
        let progress = progress.clone();
        let stop = stop_progress.clone();
        let quiet = args.no_progress;
        let started = Instant::now();
        tokio::spawn(async move {
            let mut tick = 0u64;
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
                tick += 1;
                let line = format!(
                    "sent {} accepted {} rejected {} in flight {} open turns {} answers {}",
                    progress.sent.load(Ordering::Relaxed),
                    progress.accepted.load(Ordering::Relaxed),
                    progress.rejected.load(Ordering::Relaxed),
                    progress.in_flight.load(Ordering::Relaxed),
                    progress.open_turns.load(Ordering::Relaxed),
                    progress.answers.load(Ordering::Relaxed),
                );
                if show_bar {
                    bar.set_position(started.elapsed().as_millis() as u64);
                    bar.set_message(line);
                } else if !quiet && tick.is_multiple_of(40) {
                    eprintln!("[{:>5.0}s] {line}", started.elapsed().as_secs_f64());
                }
            }
        })
    };

    // The driver loop.
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<Ack>();
    let sender = Arc::new(Sender {
        http: http.clone(),
        base: target.base.clone(),
        tenants: tenants.clone(),
        run: run_id.clone(),
        clock: clock.clone(),
        acks: ack_tx,
        semaphore: Arc::new(Semaphore::new(args.concurrency)),
        progress: progress.clone(),
    });
    let mut driver = Driver {
        contacts: (0..args.contacts)
            .map(|i| Contact::new(i % args.tenants))
            .collect(),
        ready: (0..args.contacts).collect(),
        cooling: VecDeque::new(),
        continuations: VecDeque::new(),
        timeouts: VecDeque::new(),
        rng: StdRng::seed_from_u64(u64::from(rand::random::<u32>())),
        seq: 0,
        reserved: 0,
        num_sending: 0,
        num_awaiting: 0,
        num_timed_out_unanswered: 0,
        num_retired: 0,
        ack_latency: Latency::default(),
        turn_latency: Latency::default(),
        answers: Answers::default(),
        accepted: 0,
        rejected: 0,
        errors: setup_errors,
        idle_slots: 0,
        backpressure_slots: 0,
        progress: progress.clone(),
        cap,
        args: args.clone(),
    };
    let rate = f64::from(args.rate);
    let backlog_cap = u64::from(args.rate / 10) + args.concurrency as u64;
    let started = Instant::now();
    let send_until = started + args.duration;
    let mut slots_used: u64 = 0;
    let mut sending_ended: Option<Instant> = None;
    let mut settled_at: Option<Instant> = None;
    let settle = args.grace.min(Duration::from_secs(3));
    let mut interval = tokio::time::interval(Duration::from_millis(1));
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            Some(ack) = ack_rx.recv() => driver.on_ack(ack),
            Some(answer) = answer_rx.recv() => driver.on_answer(answer),
        }
        while let Ok(ack) = ack_rx.try_recv() {
            driver.on_ack(ack);
        }
        while let Ok(answer) = answer_rx.try_recv() {
            driver.on_answer(answer);
        }
        let now = Instant::now();
        driver.expire(now);

        // Burst continuations go out as soon as they are due (they are part of turns already started).
        while let Some(&(due, index)) = driver.continuations.front() {
            if due > now {
                break;
            }
            let Ok(permit) = sender.semaphore.clone().try_acquire_owned() else {
                break;
            };
            driver.continuations.pop_front();
            let (contact, turn, seq, text) = driver.next_fragment(index, now);
            sender.spawn(contact, turn, seq, text, permit);
            slots_used += 1;
        }

        if sending_ended.is_none() {
            let all_retired = driver.num_retired >= u64::from(args.contacts);
            if now >= send_until || driver.reserved >= cap || all_retired {
                sending_ended = Some(now);
            } else {
                let due = (rate * now.duration_since(started).as_secs_f64()) as u64;
                let mut available = due.saturating_sub(slots_used);
                if available > backlog_cap {
                    driver.backpressure_slots += available - backlog_cap;
                    slots_used += available - backlog_cap;
                    available = backlog_cap;
                }
                while available > 0 {
                    let Ok(permit) = sender.semaphore.clone().try_acquire_owned() else {
                        break;
                    };
                    let Some((contact, turn, seq, text)) = driver.start_turn(now) else {
                        driver.idle_slots += available;
                        slots_used += available;
                        break;
                    };
                    sender.spawn(contact, turn, seq, text, permit);
                    slots_used += 1;
                    available -= 1;
                }
            }
        }
        driver.publish();

        if let Some(ended) = sending_ended {
            let in_flight = progress.in_flight.load(Ordering::Relaxed);
            let quiet = driver.num_sending == 0
                && driver.num_awaiting == 0
                && driver.num_timed_out_unanswered == 0
                && in_flight == 0;
            if quiet {
                // Everything answered: wait a little longer for late duplicates, then stop.
                let at = *settled_at.get_or_insert(now);
                if now >= at + settle {
                    break;
                }
            } else {
                settled_at = None;
            }
            if now >= ended + args.grace.max(args.turn_timeout.min(args.grace)) + settle
                && in_flight == 0
            {
                break;
            }
        }
    }
    let send_secs = sending_ended
        .map_or(args.duration, |e| e.duration_since(started))
        .as_secs_f64()
        .max(1e-3);

    stop_progress.cancel();
    let _ = progress_task.await;
    bar.finish_and_clear();
    stop_dashboards.cancel();
    let mut dashboard_latency = Latency::default();
    for reader in readers {
        if let Ok(ClientResult {
            latency,
            events,
            matched,
            resync_required,
            disconnected,
        }) = reader.await
        {
            dashboard_latency.merge(&latency);
            dashboards.events += events;
            dashboards.matched_messages += matched;
            dashboards.resync_required += resync_required;
            dashboards.disconnects += u64::from(disconnected);
        }
    }
    stop_sampling.cancel();
    let peaks = sampler.await.unwrap_or_default();
    let after = target.scrape().await.unwrap_or_default();
    let unknown = recorder.stats.unknown.load(Ordering::Relaxed);
    if unknown > 0 {
        *driver
            .errors
            .entry("provider_request_unknown".into())
            .or_default() += unknown;
    }

    let mut answers = driver.answers.clone();
    answers.lost = driver.lost();
    answers.client_lost = answers.lost;
    answers.client_duplicated = answers.duplicated;
    audit(&target, &tenants, &driver, &mut answers).await;
    let chat_requests = llm.stats.chat_requests.load(Ordering::Relaxed);
    let server = server_view(&before, &after, peaks);
    let report = Report {
        accepted: driver.accepted,
        rejected: driver.rejected,
        ack_latency_ms: driver.ack_latency.summary(),
        turn_latency_ms: driver.turn_latency.summary(),
        dashboard_latency_ms: (!dashboard_latency.is_empty()).then(|| dashboard_latency.summary()),
        errors: driver.errors.clone(),
        rss_bytes: after.value("process_resident_memory_bytes"),
        cpu_seconds: after.value("process_cpu_seconds_total"),
        target: args.target.clone(),
        mode: if chat_requests > 0 {
            "llm".into()
        } else {
            "extractive".into()
        },
        shape: args.shape,
        duration_s: send_secs,
        webhooks_per_s: driver.accepted as f64 / send_secs,
        providers_used: {
            let mut used: Vec<String> =
                tenants.iter().map(|t| t.kind.as_str().to_owned()).collect();
            used.dedup();
            used.sort();
            used.dedup();
            used
        },
        providers_skipped: skipped,
        tenants: args.tenants,
        contacts: args.contacts,
        debounce_ms: args.debounce_ms,
        offered: Offered {
            rate_target: args.rate,
            sent: driver.seq,
            sent_per_s: driver.seq as f64 / send_secs,
            idle_slots: driver.idle_slots,
            backpressure_slots: driver.backpressure_slots,
            max_messages: cap,
        },
        dashboards,
        server,
        llm: LlmView {
            latency_ms: args.llm_latency.as_secs_f64() * 1000.0,
            chat_requests,
            embedding_requests: llm.stats.embedding_requests.load(Ordering::Relaxed),
        },
        ok: answers.lost == 0 && answers.duplicated == 0,
        answers,
    };
    Ok(report)
}

/// Most contacts whose history is audited at the end of a run.
const MAX_AUDITS: usize = 20_000;

/// Replaces the client's lost and duplicated counts of ambiguous contacts by what their histories
/// on the server say (see [`target::audit_history`]); beyond [`MAX_AUDITS`] contacts, or when a
/// history cannot be read, the client's counts stand.
async fn audit(target: &Target, tenants: &[TenantInfo], driver: &Driver, answers: &mut Answers) {
    let suspects = driver.suspects();
    if suspects.is_empty() {
        return;
    }
    let client = |i: u32| {
        let c = &driver.contacts[i as usize];
        (Driver::lost_of(c), u64::from(c.duplicates))
    };
    let (mut lost, mut duplicated) = suspects.iter().skip(MAX_AUDITS).fold((0, 0), |acc, &i| {
        let (l, d) = client(i);
        (acc.0 + l, acc.1 + d)
    });
    let audited: Vec<(u32, Option<(u64, u64)>)> =
        futures_util::stream::iter(suspects.iter().take(MAX_AUDITS).copied())
            .map(|i| {
                let tenant = &tenants[driver.contacts[i as usize].tenant as usize];
                async move {
                    let history = target
                        .history(&tenant.api_key, &recorder::contact_number(i))
                        .await;
                    (i, history.ok().map(|h| target::audit_history(&h)))
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
    for (i, result) in audited {
        let (l, d) = result.unwrap_or_else(|| client(i));
        answers.audited_contacts += u64::from(result.is_some());
        lost += l;
        duplicated += d;
    }
    // Contacts that were not suspects contribute nothing: their turns were answered exactly once.
    answers.lost = lost;
    answers.duplicated = duplicated;
}

fn server_view(before: &Scrape, after: &Scrape, peaks: Peaks) -> ServerView {
    let rss_end = after.value("process_resident_memory_bytes");
    let live_end = after.value("conversa_live_conversations");
    ServerView {
        rss_bytes_start: before.value("process_resident_memory_bytes"),
        rss_bytes_peak: max_opt(peaks.rss, rss_end),
        cpu_seconds_run: after
            .value("process_cpu_seconds_total")
            .zip(before.value("process_cpu_seconds_total"))
            .map(|(a, b)| a - b),
        open_fds: after.value("process_open_fds"),
        live_conversations_end: live_end,
        live_conversations_peak: max_opt(peaks.live, live_end),
        mailbox_depth_peak: max_opt(peaks.mailbox, after.value("conversa_mailbox_depth")),
        webhook_ack_ms: target::histogram_delta(before, after, "conversa_webhook_ack_seconds"),
        turn_engine_ms: target::histogram_delta(before, after, "conversa_turn_engine_seconds"),
        turn_buffer_ms: target::histogram_delta(before, after, "conversa_turn_buffer_seconds"),
        send_ms: target::histogram_delta(before, after, "conversa_send_seconds"),
        turns_by_outcome: {
            let b = before.by_label("conversa_turns_total", "outcome");
            after
                .by_label("conversa_turns_total", "outcome")
                .into_iter()
                .map(|(k, v)| {
                    let prev = b.get(&k).copied().unwrap_or(0.0);
                    (k, v - prev)
                })
                .collect()
        },
    }
}
