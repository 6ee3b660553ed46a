//! The dashboard stream (contract §4) over real sockets: the `conversa` server on 127.0.0.1:0,
//! a fake Evolution API, webhooks as the source of events and WebSocket clients as dashboards.
//!
//! Run the capacity measurement (ignored by default) with
//! `cargo test --release -p gateway --test stream -- --ignored --nocapture capacity`.

#[path = "stream/harness.rs"]
mod harness;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use harness::{Conversa, Dashboard, FakeEvolution, JOAO, MARIA, metric, refused_status};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

#[track_caller]
fn assert_contiguous(seqs: &[u64], after: u64) {
    let expected: Vec<u64> = (after + 1..after + 1 + seqs.len() as u64).collect();
    assert_eq!(
        seqs, expected,
        "events must be every seq after {after}, in order, once"
    );
}

#[tokio::test]
async fn only_a_tenant_api_key_opens_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (_fake, evo) = FakeEvolution::start().await;
    let conversa = Conversa::start(dir.path()).await;
    let key = conversa.tenant("loja-centro", evo, true).await;

    let refused = |result: Result<Dashboard, _>| match result {
        Ok(_) => panic!("the stream opened"),
        Err(e) => refused_status(&e),
    };
    let anonymous = tokio_tungstenite::connect_async(conversa.stream_url("")).await;
    assert_eq!(anonymous.err().as_ref().and_then(refused_status), Some(401));
    assert_eq!(
        refused(Dashboard::connect(&conversa, "cvk_not-a-key", None).await),
        Some(401)
    );
    assert_eq!(
        refused(Dashboard::connect(&conversa, &conversa.admin.clone(), None).await),
        Some(401),
        "the admin token is not a tenant key"
    );
    let wrong_query = conversa.stream_url("?access_token=cvk_nope");
    assert_eq!(
        tokio_tungstenite::connect_async(wrong_query)
            .await
            .err()
            .as_ref()
            .and_then(refused_status),
        Some(401)
    );

    // Header and query parameter both work.
    let mut by_header = Dashboard::connect(&conversa, &key, None).await.unwrap();
    assert_eq!(by_header.next_json().await["type"], "ready");
    let (ws, _) =
        tokio_tungstenite::connect_async(conversa.stream_url(&format!("?access_token={key}")))
            .await
            .unwrap();
    let mut by_query = Dashboard { ws };
    assert_eq!(by_query.next_json().await["type"], "ready");

    // A malformed `since`, and a plain HTTP request, get JSON errors.
    let resp = conversa
        .http
        .get(
            conversa
                .stream_url(&format!("?since=yesterday&access_token={key}"))
                .replace("ws://", "http://"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 422);
    let resp = conversa
        .http
        .get(format!("{}/api/v1/stream", conversa.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error(), "{}", resp.status());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "websocket_required");

    by_header.close().await;
    by_query.close().await;
    conversa.stop().await;
}

#[tokio::test]
async fn events_reach_the_dashboard_in_seq_order_with_their_conversation_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, evo) = FakeEvolution::start().await;
    let conversa = Conversa::start(dir.path()).await;
    let key = conversa.tenant("loja-centro", evo, false).await;
    let mut dash = Dashboard::connect(&conversa, &key, None).await.unwrap();
    let (replay, ready) = dash.until_ready().await;
    assert!(replay.is_empty(), "no `since`: live events only");

    conversa
        .customer_says(
            "loja-centro",
            MARIA,
            "ORDER01",
            "quero falar com um atendente",
        )
        .await;
    // The customer's message, the handoff, the fallback message, typing, its delivery.
    let mut events = Vec::new();
    let mut fallback_id = None;
    loop {
        let e = dash.next_event().await;
        if e["type"] == "message" && e["author"] == "assistant" {
            fallback_id = Some(e["id"].clone());
        }
        let delivered = e["type"] == "delivery" && Some(&e["id"]) == fallback_id.as_ref();
        events.push(e);
        if delivered {
            break;
        }
    }
    assert_contiguous(&seqs(&events), ready);
    for e in &events {
        assert_eq!(e["conversation"], MARIA, "{e}");
        let at = e["at"].as_str().unwrap();
        assert!(
            at.len() == 24 && at.ends_with('Z') && &at[10..11] == "T",
            "RFC 3339: {at}"
        );
    }
    let first = &events[0];
    assert_eq!(
        (
            &first["type"],
            &first["direction"],
            &first["author"],
            &first["text"]
        ),
        (
            &json!("message"),
            &json!("in"),
            &json!("contact"),
            &json!("quero falar com um atendente")
        ),
        "{first}"
    );
    assert!(first["id"].is_string());
    let handoff = events.iter().find(|e| e["type"] == "state").unwrap();
    assert_eq!(
        (&handoff["from"], &handoff["to"], &handoff["reason"]),
        (
            &json!("IA_ATIVA"),
            &json!("AGUARDANDO_HUMANO"),
            &json!("handoff_keyword")
        )
    );
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "typing" && e["on"] == true)
    );
    let delivery = events.last().unwrap();
    assert_eq!(delivery["status"], "sent");
    assert_eq!(fake.texts_to(MARIA).len(), 1);
    dash.close().await;
    conversa.stop().await;
}

/// Sends a command and reads up to its answer: the events before it and the answer.
async fn command(dash: &mut Dashboard, frame: Value) -> (Vec<Value>, Value) {
    let reference = frame["ref"].clone();
    dash.send(frame).await;
    let mut events = Vec::new();
    loop {
        let f = dash.next_json().await;
        if (f["type"] == "ack" || f["type"] == "error") && f["ref"] == reference {
            return (events, f);
        }
        events.push(f);
    }
}

#[tokio::test]
async fn operators_take_over_reply_and_release_through_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, evo) = FakeEvolution::start().await;
    let conversa = Conversa::start(dir.path()).await;
    let key = conversa.tenant("loja-centro", evo, false).await;
    let mut dash = Dashboard::connect(&conversa, &key, None).await.unwrap();
    dash.until_ready().await;

    // Each command's events come before its ack.
    let (events, ack) = command(
        &mut dash,
        json!({"type": "takeover", "conversation": JOAO, "ref": "t-1"}),
    )
    .await;
    assert_eq!(
        ack,
        json!({"type": "ack", "ref": "t-1", "state": "AGUARDANDO_HUMANO"})
    );
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (&events[0]["type"], &events[0]["to"], &events[0]["reason"]),
        (
            &json!("state"),
            &json!("AGUARDANDO_HUMANO"),
            &json!("operator_takeover")
        )
    );

    let (events, ack) = command(
        &mut dash,
        json!({"type": "reply", "conversation": format!("+{JOAO}"), "text": "Oi João, sou a Ana.", "ref": 42}),
    )
    .await;
    assert_eq!((&ack["type"], &ack["ref"]), (&json!("ack"), &json!(42)));
    let id = ack["id"].clone();
    assert!(id.is_string(), "{ack}");
    let message = events
        .iter()
        .find(|e| e["type"] == "message")
        .expect("the reply's message event comes before the ack");
    assert_eq!(
        (
            &message["id"],
            &message["author"],
            &message["direction"],
            &message["text"]
        ),
        (
            &id,
            &json!("human"),
            &json!("out"),
            &json!("Oi João, sou a Ana.")
        )
    );
    assert!(events.iter().any(|e| e["type"] == "state"
        && e["to"] == "HUMANO_RESPONDEU"
        && e["reason"] == "human_reply"));
    let delivery = dash
        .event_where(|e| e["type"] == "delivery" && e["id"] == id)
        .await;
    assert_eq!(delivery["status"], "sent");
    assert_eq!(fake.texts_to(JOAO), ["Oi João, sou a Ana."]);

    let (events, ack) = command(
        &mut dash,
        json!({"type": "release", "conversation": JOAO, "ref": "r-1"}),
    )
    .await;
    assert_eq!(ack["state"], "IA_ATIVA");
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "state" && e["reason"] == "operator_release")
    );
    let (_, ack) = command(&mut dash, json!({"type": "ping", "ref": "p"})).await;
    assert_eq!(ack, json!({"type": "ack", "ref": "p"}));

    // Mistakes are answered, never fatal.
    for (frame, code) in [
        (
            json!({"type": "reply", "conversation": JOAO, "text": "  ", "ref": "e1"}),
            "invalid_field",
        ),
        (
            json!({"type": "takeover", "conversation": "maria", "ref": "e2"}),
            "invalid_conversation",
        ),
        (json!({"type": "dance", "ref": "e3"}), "unknown_type"),
        (
            json!({"type": "reply", "conversation": JOAO, "ref": "e4"}),
            "invalid_command",
        ),
    ] {
        let (_, answer) = command(&mut dash, frame.clone()).await;
        assert_eq!(
            (&answer["type"], &answer["code"]),
            (&json!("error"), &json!(code)),
            "{frame}"
        );
        assert!(answer["message"].is_string());
    }
    dash.ws
        .send(Message::Text("{not json".into()))
        .await
        .unwrap();
    assert_eq!(dash.next_json().await["code"], "invalid_json");
    dash.ws
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(dash.next_json().await["code"], "unsupported_frame");
    let (_, ack) = command(&mut dash, json!({"type": "ping", "ref": "still-open"})).await;
    assert_eq!(ack["type"], "ack");

    let text = conversa.metrics().await;
    for (series, value) in [
        (
            r#"conversa_dashboard_commands_total{outcome="ok",type="reply"}"#,
            1.0,
        ),
        (
            r#"conversa_dashboard_commands_total{outcome="ok",type="takeover"}"#,
            1.0,
        ),
        (
            r#"conversa_dashboard_commands_total{outcome="invalid_field",type="reply"}"#,
            1.0,
        ),
        (
            r#"conversa_dashboard_commands_total{outcome="invalid_json",type="invalid"}"#,
            1.0,
        ),
        ("conversa_dashboard_clients", 1.0),
    ] {
        assert_eq!(metric(&text, series), Some(value), "{series}\n{text}");
    }
    dash.close().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&conversa.metrics().await, "conversa_dashboard_clients") != Some(0.0) {
        assert!(
            Instant::now() < deadline,
            "conversa_dashboard_clients never went back to 0"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    conversa.stop().await;
}

#[tokio::test]
async fn a_dashboard_that_reconnects_with_since_gets_every_missed_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_fake, evo) = FakeEvolution::start().await;
    let conversa = Conversa::start(dir.path()).await;
    let key = conversa.tenant("loja-centro", evo, true).await;
    // The reference: a dashboard that never disconnects.
    let mut steady = Dashboard::connect(&conversa, &key, None).await.unwrap();
    let (_, start) = steady.until_ready().await;

    let mut flaky = Dashboard::connect(&conversa, &key, None).await.unwrap();
    assert_eq!(flaky.until_ready().await.1, start);
    let mut seen = Vec::new();
    for n in 0..3 {
        conversa
            .customer_says(
                "loja-centro",
                MARIA,
                &format!("A{n}"),
                &format!("antes {n}"),
            )
            .await;
        seen.push(flaky.next_event().await);
    }
    let last_seen = seen.last().unwrap()["seq"].as_u64().unwrap();
    flaky.close().await;

    // While it is away.
    for n in 0..5 {
        conversa
            .customer_says(
                "loja-centro",
                JOAO,
                &format!("B{n}"),
                &format!("durante {n}"),
            )
            .await;
    }
    let mut flaky = Dashboard::connect(&conversa, &key, Some(last_seen))
        .await
        .unwrap();
    let (replay, position) = flaky.until_ready().await;
    assert_eq!(replay.len(), 5, "{replay:?}");
    assert_contiguous(&seqs(&replay), last_seen);
    assert_eq!(position, last_seen + 5);
    assert_eq!(replay[0]["text"], "durante 0");

    conversa
        .customer_says("loja-centro", MARIA, "C0", "depois")
        .await;
    let live = flaky.next_event().await;
    assert_eq!(live["seq"].as_u64().unwrap(), position + 1);

    // The same events, in the same order, as the dashboard that stayed.
    let mut reference = Vec::new();
    for _ in 0..9 {
        reference.push(steady.next_event().await);
    }
    let mut stitched = seen;
    stitched.extend(replay);
    stitched.push(live);
    assert_eq!(stitched, reference);
    assert_contiguous(&seqs(&stitched), start);

    // Up to date: nothing to replay.
    let mut current = Dashboard::connect(&conversa, &key, Some(position + 1))
        .await
        .unwrap();
    assert_eq!(current.until_ready().await, (vec![], position + 1));
    for d in [steady, flaky, current] {
        d.close().await;
    }
    conversa.stop().await;
}

#[tokio::test]
async fn events_published_during_a_replay_are_neither_lost_nor_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let (_fake, evo) = FakeEvolution::start().await;
    let conversa = Arc::new(Conversa::start(dir.path()).await);
    let key = conversa.tenant("loja-centro", evo, true).await;
    let mut first = Dashboard::connect(&conversa, &key, None).await.unwrap();
    let (_, start) = first.until_ready().await;
    first.close().await;
    for n in 0..30 {
        conversa
            .customer_says(
                "loja-centro",
                MARIA,
                &format!("PRE{n}"),
                &format!("pre {n}"),
            )
            .await;
    }
    // Webhooks keep coming while dashboards connect with `since` and replay.
    const DURING: usize = 60;
    let writer = {
        let conversa = conversa.clone();
        tokio::spawn(async move {
            for n in 0..DURING {
                conversa
                    .customer_says(
                        "loja-centro",
                        JOAO,
                        &format!("LIVE{n}"),
                        &format!("live {n}"),
                    )
                    .await;
            }
        })
    };
    let mut readers = Vec::new();
    for i in 0..8u64 {
        let (conversa, key) = (conversa.clone(), key.clone());
        readers.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 40)).await;
            let since = start + i * 3;
            let mut dash = Dashboard::connect(&conversa, &key, Some(since))
                .await
                .unwrap();
            let mut got = Vec::new();
            loop {
                let f = dash.next_json().await;
                if f["type"] == "ready" {
                    continue;
                }
                let text = f["text"].as_str().unwrap().to_owned();
                got.push(f);
                if text == format!("live {}", DURING - 1) {
                    break;
                }
            }
            dash.close().await;
            (since, got)
        }));
    }
    writer.await.unwrap();
    for reader in readers {
        let (since, got) = reader.await.unwrap();
        assert_contiguous(&seqs(&got), since);
        assert_eq!(got.len() as u64, start + 30 + DURING as u64 - since);
    }
    Arc::try_unwrap(conversa).ok().unwrap().stop().await;
}

#[tokio::test]
async fn a_since_outside_the_window_or_from_before_a_restart_gets_resync_required() {
    let dir = tempfile::tempdir().unwrap();
    let (_fake, evo) = FakeEvolution::start().await;
    let small_window = |c: &mut gateway::config::Config| c.stream_retention_events = 5;
    let conversa = Conversa::start_with(dir.path(), small_window).await;
    let key = conversa.tenant("loja-centro", evo, true).await;
    let mut dash = Dashboard::connect(&conversa, &key, None).await.unwrap();
    let (_, start) = dash.until_ready().await;
    for n in 0..8 {
        conversa
            .customer_says("loja-centro", MARIA, &format!("W{n}"), &format!("m {n}"))
            .await;
    }
    let last = start + 8;
    dash.close().await;

    // Retained: the last five. `since = last - 5` needs nothing that is gone.
    let mut ok = Dashboard::connect(&conversa, &key, Some(last - 5))
        .await
        .unwrap();
    let (replay, _) = ok.until_ready().await;
    assert_contiguous(&seqs(&replay), last - 5);
    assert_eq!(replay.len(), 5);
    ok.close().await;

    for since in [last - 6, start, 0, last + 1] {
        let mut stale = Dashboard::connect(&conversa, &key, Some(since))
            .await
            .unwrap();
        assert_eq!(
            stale.next_json().await,
            json!({"type": "resync_required", "reason": "since_too_old"}),
            "since = {since}"
        );
        assert_eq!(
            stale.closed().await,
            Some((4000, "since_too_old".to_owned()))
        );
    }
    assert_eq!(
        metric(
            &conversa.metrics().await,
            r#"conversa_dashboard_dropped_total{reason="since_too_old"}"#
        ),
        Some(4.0)
    );
    conversa.stop().await;

    // A restarted server numbers from its own start: every old position is unknown to it.
    let again = Conversa::start_with(dir.path(), small_window).await;
    let mut stale = Dashboard::connect(&again, &key, Some(last)).await.unwrap();
    assert_eq!(stale.next_json().await["type"], "resync_required");
    assert_eq!(stale.closed().await.map(|c| c.0), Some(4000));
    let mut fresh = Dashboard::connect(&again, &key, None).await.unwrap();
    let (_, position) = fresh.until_ready().await;
    assert!(position > last, "numbers must keep growing across restarts");
    fresh.close().await;
    again.stop().await;
}

#[tokio::test]
async fn a_slow_dashboard_is_told_to_resync_and_closed_while_others_keep_up() {
    const EVENTS: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let (_fake, evo) = FakeEvolution::start().await;
    let conversa = Conversa::start_with(dir.path(), |c| c.stream_client_queue = 32).await;
    let key = conversa.tenant("loja-centro", evo, true).await;

    let mut fast = Dashboard::connect(&conversa, &key, None).await.unwrap();
    let (_, start) = fast.until_ready().await;
    // A dashboard on a socket with a tiny receive buffer that stops reading.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(conversa.addr).await.unwrap();
    let mut slow = Dashboard::connect_over(&conversa, &key, stream)
        .await
        .unwrap();
    assert_eq!(slow.until_ready().await.1, start);

    let fast_reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < EVENTS {
            got.push(fast.next_event().await["seq"].as_u64().unwrap());
        }
        (fast, got)
    });
    // Large messages, so that the kernel's socket buffers (several MiB on loopback) fill up
    // and the server's writes to the slow dashboard block.
    let padding = "x".repeat(60_000);
    let mut slowest_webhook = Duration::ZERO;
    for n in 0..EVENTS {
        let started = Instant::now();
        conversa
            .customer_says(
                "loja-centro",
                MARIA,
                &format!("S{n}"),
                &format!("{n} {padding}"),
            )
            .await;
        slowest_webhook = slowest_webhook.max(started.elapsed());
    }
    let (fast, got) = tokio::time::timeout(Duration::from_secs(30), fast_reader)
        .await
        .expect("the fast dashboard was slowed down")
        .unwrap();
    assert_contiguous(&got, start);
    assert!(
        slowest_webhook < Duration::from_secs(5),
        "a webhook took {slowest_webhook:?} while a dashboard was stuck"
    );

    // The slow one reads again: a gap-free prefix, then `resync_required`, then the close.
    let mut prefix = Vec::new();
    let resync = loop {
        let f = slow.next_json().await;
        if f.get("seq").is_none() {
            break f;
        }
        prefix.push(f["seq"].as_u64().unwrap());
    };
    assert_eq!(
        resync,
        json!({"type": "resync_required", "reason": "slow_client"})
    );
    assert!(prefix.len() < EVENTS, "the slow dashboard got everything");
    assert_contiguous(&prefix, start);
    assert_eq!(slow.closed().await, Some((4000, "slow_client".to_owned())));
    assert_eq!(
        metric(
            &conversa.metrics().await,
            r#"conversa_dashboard_dropped_total{reason="slow_client"}"#
        ),
        Some(1.0)
    );
    fast.close().await;
    conversa.stop().await;
}

#[tokio::test]
async fn a_silent_dashboard_is_closed_and_one_that_answers_pings_stays() {
    let dir = tempfile::tempdir().unwrap();
    let (_fake, evo) = FakeEvolution::start().await;
    let conversa = Conversa::start_with(dir.path(), |c| {
        c.stream_ping_secs = 1;
        c.stream_idle_secs = 2;
    })
    .await;
    let key = conversa.tenant("loja-centro", evo, true).await;
    let mut silent = Dashboard::connect(&conversa, &key, None).await.unwrap();
    let mut alive = Dashboard::connect(&conversa, &key, None).await.unwrap();
    alive.until_ready().await;
    // `alive` keeps reading (its socket answers pings); `silent` reads nothing for 4 s.
    let alive = tokio::spawn(async move {
        let mut pings = 0;
        let until = Instant::now() + Duration::from_secs(4);
        while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(until.into(), alive.ws.next()).await
        {
            if matches!(frame, Message::Ping(_)) {
                pings += 1;
            }
        }
        (alive, pings)
    });
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(silent.next_json().await["type"], "ready");
    assert_eq!(silent.closed().await, Some((4001, "idle".to_owned())));

    let (mut alive, pings) = alive.await.unwrap();
    assert!(pings >= 2, "{pings} pings in 4 s");
    let (_, ack) = command(&mut alive, json!({"type": "ping", "ref": 1})).await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(
        metric(
            &conversa.metrics().await,
            r#"conversa_dashboard_dropped_total{reason="idle"}"#
        ),
        Some(1.0)
    );
    alive.close().await;
    conversa.stop().await;
}

#[tokio::test]
async fn a_tenant_key_never_receives_another_tenants_events() {
    let dir = tempfile::tempdir().unwrap();
    let (_fake, evo) = FakeEvolution::start().await;
    let conversa = Conversa::start(dir.path()).await;
    let key_a = conversa.tenant("loja-a", evo, true).await;
    let key_b = conversa.tenant("loja-b", evo, true).await;
    let mut a = Dashboard::connect(&conversa, &key_a, None).await.unwrap();
    let (_, start_a) = a.until_ready().await;
    let mut b = Dashboard::connect(&conversa, &key_b, None).await.unwrap();
    b.until_ready().await;

    for n in 0..5 {
        conversa
            .customer_says(
                "loja-b",
                MARIA,
                &format!("B{n}"),
                &format!("segredo da loja b {n}"),
            )
            .await;
    }
    conversa
        .customer_says("loja-a", MARIA, "A0", "mensagem da loja a")
        .await;
    let e = a.next_event().await;
    assert_eq!(e["text"], "mensagem da loja a", "{e}");
    assert_eq!(
        e["seq"].as_u64().unwrap(),
        start_a + 1,
        "loja-a's numbering is its own"
    );
    for n in 0..5 {
        assert_eq!(
            b.next_event().await["text"],
            format!("segredo da loja b {n}")
        );
    }
    // Commands act on the key's own tenant: loja-b hears nothing of loja-a's takeover.
    let (events, ack) = command(
        &mut a,
        json!({"type": "takeover", "conversation": MARIA, "ref": 1}),
    )
    .await;
    assert_eq!(ack["state"], "AGUARDANDO_HUMANO");
    assert_eq!(events.len(), 1);
    assert!(b.nothing_for(Duration::from_millis(700)).await);
    assert!(a.nothing_for(Duration::from_millis(100)).await);
    a.close().await;
    b.close().await;
    conversa.stop().await;
}

#[tokio::test]
async fn deleting_a_tenant_closes_its_dashboards_and_its_key_stops_working() {
    let dir = tempfile::tempdir().unwrap();
    let (_fake, evo) = FakeEvolution::start().await;
    let conversa = Conversa::start(dir.path()).await;
    let key = conversa.tenant("loja-centro", evo, true).await;
    let other = conversa.tenant("loja-outra", evo, true).await;
    let mut dash = Dashboard::connect(&conversa, &key, None).await.unwrap();
    dash.until_ready().await;
    let mut bystander = Dashboard::connect(&conversa, &other, None).await.unwrap();
    bystander.until_ready().await;
    conversa
        .customer_says("loja-centro", MARIA, "D0", "oi")
        .await;
    assert_eq!(dash.next_event().await["text"], "oi");

    let resp = conversa
        .http
        .delete(format!("{}/api/v1/tenants/loja-centro", conversa.base))
        .bearer_auth(&conversa.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(
        dash.closed().await,
        Some((4003, "tenant removed".to_owned()))
    );
    let again = Dashboard::connect(&conversa, &key, None).await;
    assert_eq!(again.err().as_ref().and_then(refused_status), Some(401));
    let (_, ack) = command(&mut bystander, json!({"type": "ping", "ref": 1})).await;
    assert_eq!(ack["type"], "ack", "other tenants' dashboards stay");
    bystander.close().await;
    conversa.stop().await;
}

#[tokio::test]
async fn shutting_down_closes_dashboards_with_going_away() {
    let dir = tempfile::tempdir().unwrap();
    let (_fake, evo) = FakeEvolution::start().await;
    let conversa = Conversa::start(dir.path()).await;
    let key = conversa.tenant("loja-centro", evo, true).await;
    let mut dash = Dashboard::connect(&conversa, &key, None).await.unwrap();
    dash.until_ready().await;
    let reader = tokio::spawn(async move { dash.closed().await });
    conversa.stop().await;
    assert_eq!(
        reader.await.unwrap(),
        Some((1001, "server shutting down".to_owned()))
    );
}

#[tokio::test]
async fn the_console_is_served_from_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let conversa = Conversa::start(dir.path()).await;
    for (path, kind) in [
        ("/console", "text/html"),
        ("/console/", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/app.css", "text/css"),
    ] {
        let resp = conversa
            .http
            .get(format!("{}{path}", conversa.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        if kind == "text/html" {
            assert!(resp.headers().contains_key("content-security-policy"));
            let page = resp.text().await.unwrap();
            assert!(page.contains(r#"lang="pt-BR""#) && page.contains("Entrar"));
        }
    }
    let resp = conversa
        .http
        .get(format!("{}/console/secret.txt", conversa.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    conversa.stop().await;
}

// ------------------------------------------------------------------------------------------
// Capacity: dashboards held per GB and fan-out latency with many connected dashboards.

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// User plus system CPU time of a process, from `/proc` (clock ticks of 10 ms).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Connects `CONVERSA_CAPACITY_CLIENTS` (1,000) dashboards to a `conversa` process, measures its
/// resident memory per connection, then posts `CONVERSA_CAPACITY_EVENTS` (200) customer messages
/// at 20 per second and measures, for every dashboard and message, the time from posting the
/// webhook to the dashboard reading the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --release --ignored --nocapture"]
async fn capacity_fan_out_to_many_dashboards() {
    let clients: usize = std::env::var("CONVERSA_CAPACITY_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let events: usize = std::env::var("CONVERSA_CAPACITY_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let (_fake, evo) = FakeEvolution::start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_conversa"))
        .env("CONVERSA_LISTEN", format!("127.0.0.1:{port}"))
        .env("CONVERSA_DATA_DIR", dir.path())
        .env("CONVERSA_ADMIN_TOKEN", "capacity-admin-token-0123")
        .env("CONVERSA_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..400 {
        if http.get(format!("{base}/health")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let created: Value = http
        .post(format!("{base}/api/v1/tenants"))
        .bearer_auth("capacity-admin-token-0123")
        .json(&json!({"id": "loja-centro", "name": "Loja", "provider": {"kind": "evolution",
               "base_url": format!("http://{evo}"), "instance": "loja-centro", "api_key": "k", "webhook_token": harness::TOKEN}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["api_key"].as_str().unwrap().to_owned();
    http.patch(format!("{base}/api/v1/tenants/loja-centro"))
        .bearer_auth("capacity-admin-token-0123")
        .json(&json!({"status": "suspended"}))
        .send()
        .await
        .unwrap();
    let post = |n: usize| {
        let http = http.clone();
        let url = format!("{base}/webhooks/evolution/loja-centro");
        async move {
            let resp = http
                .post(url)
                .header("apikey", harness::TOKEN)
                .body(harness::text_from(
                    MARIA,
                    &format!("CAP{n:06}"),
                    &format!("cap-{n} qual o horário de funcionamento?"),
                ))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 200);
        }
    };
    // Warm up the store and the hub, then measure the baseline.
    for n in 0..20 {
        post(1_000_000 + n).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_bytes(pid);

    let received: Arc<Mutex<HashMap<usize, Vec<Instant>>>> = Arc::default();
    let mut tasks = Vec::new();
    let url = format!("ws://127.0.0.1:{port}/api/v1/stream");
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(clients);
    for _ in 0..clients {
        let mut request = url.as_str().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        let (received, ready) = (received.clone(), ready_tx.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::with_capacity(events);
            while let Some(Ok(frame)) = ws.next().await {
                let Message::Text(text) = frame else { continue };
                let now = Instant::now();
                if text.contains(r#""type":"ready""#) {
                    let _ = ready.send(()).await;
                    continue;
                }
                if let Some(rest) = text.split("cap-").nth(1) {
                    let n: usize = rest.split(' ').next().unwrap().parse().unwrap();
                    mine.push((n, now));
                    if n + 1 == events {
                        break;
                    }
                }
            }
            {
                let mut all = received.lock().unwrap();
                for (n, at) in mine {
                    all.entry(n).or_default().push(at);
                }
            }
            let _ = ws.close(None).await;
        }));
    }
    for _ in 0..clients {
        ready_rx.recv().await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_connected = rss_bytes(pid);

    let cpu_before = cpu_seconds(pid);
    let mut sent_at = Vec::with_capacity(events);
    let mut ack = Vec::with_capacity(events);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    for n in 0..events {
        tick.tick().await;
        let started = Instant::now();
        sent_at.push(started);
        post(n).await;
        ack.push(started.elapsed());
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("every dashboard should get every event")
            .unwrap();
    }
    let rss_after = rss_bytes(pid);
    let cpu_events = cpu_seconds(pid) - cpu_before;
    let received = std::mem::take(&mut *received.lock().unwrap());
    let mut latencies = Vec::with_capacity(clients * events);
    let mut spreads = Vec::with_capacity(events);
    for (n, started) in sent_at.iter().enumerate() {
        let times = &received[&n];
        assert_eq!(
            times.len(),
            clients,
            "event {n} reached {} dashboards",
            times.len()
        );
        latencies.extend(times.iter().map(|t| t.duration_since(*started)));
        let first = times.iter().min().unwrap();
        let last = times.iter().max().unwrap();
        spreads.push(last.duration_since(*first));
    }
    latencies.sort();
    spreads.sort();
    ack.sort();
    let per_client = rss_connected.saturating_sub(rss_before) as f64 / clients as f64;
    println!("capacity: {clients} dashboards, {events} events at 20/s, one tenant");
    println!(
        "  server RSS: {:.1} MiB before, {:.1} MiB with dashboards connected, {:.1} MiB after the events",
        rss_before as f64 / 1048576.0,
        rss_connected as f64 / 1048576.0,
        rss_after as f64 / 1048576.0
    );
    println!(
        "  per dashboard: {:.1} KiB -> {:.0} dashboards per GiB",
        per_client / 1024.0,
        (1u64 << 30) as f64 / per_client
    );
    println!(
        "  webhook posted -> event read by a dashboard: p50 {:?}, p99 {:?}, max {:?} ({} samples)",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().unwrap(),
        latencies.len()
    );
    println!(
        "  first to last dashboard, per event: p50 {:?}, p99 {:?}",
        percentile(&spreads, 0.50),
        percentile(&spreads, 0.99)
    );
    println!(
        "  webhook answered (durable record): p50 {:?}, p99 {:?}",
        percentile(&ack, 0.50),
        percentile(&ack, 0.99)
    );
    println!(
        "  server CPU while the events flowed: {cpu_events:.2} s, {:.1} µs per event frame delivered",
        cpu_events * 1e6 / (clients * events) as f64
    );
    child.kill().await.unwrap();
}
