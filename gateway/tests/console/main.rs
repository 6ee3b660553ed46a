//! The operator console in a real browser: headless Chromium (Debian's `chromium`) driven over
//! the DevTools protocol, the real server, a fake Evolution API, and a TCP proxy between the
//! browser and the server so that the test can cut the network.
//!
//! When Chromium is not installed the test says so in its output and passes without running;
//! `.ci/run` installs it whenever Debian's packages are reachable.
//! Screenshots go to `$CARGO_TARGET_TMPDIR/console-screenshots/`.

#[path = "../stream/harness.rs"]
mod harness;

mod cdp;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cdp::{Browser, Page};
use harness::{Conversa, FakeEvolution, JOAO, MARIA, eventually};
use serde_json::Value;

/// Forwards 127.0.0.1:<port> to the server; `cut` drops every connection and refuses new ones
/// until `restore`, like a network that went away.
struct Proxy {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (d, c) = (down.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if d.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c.lock().unwrap().push(task);
            }
        });
        Self {
            addr,
            down,
            connections,
        }
    }

    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

fn shots_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots")
}

/// A JavaScript expression: the message bubbles whose text is exactly `text`.
fn bubbles_with(text: &str) -> String {
    format!(
        "[...document.querySelectorAll('#message-list li')].filter(li => li.querySelector('.text').textContent === {})",
        serde_json::json!(text)
    )
}

async fn count(page: &mut Page, expression: &str) -> u64 {
    page.eval(&format!("{expression}.length"))
        .await
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_works_a_conversation_live_in_the_console() {
    let browser = match Browser::launch().await {
        Ok(browser) => browser,
        Err(why) => {
            println!("SKIPPED console browser test: {why}");
            eprintln!("SKIPPED console browser test: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let (fake, evo) = FakeEvolution::start().await;
    let conversa = Conversa::start(dir.path()).await;
    let key = conversa.tenant("loja-centro", evo, false).await;
    let proxy = Proxy::start(conversa.addr).await;
    let shots = shots_dir();
    let mut page = browser.page().await;
    page.viewport(390, 844, true).await;

    // Sign in with the keyboard.
    page.navigate(&format!("http://{}/console", proxy.addr))
        .await;
    page.wait_for(
        "the sign-in form",
        "!document.getElementById('login').hidden && document.activeElement.id === 'api-key'",
    )
    .await;
    page.screenshot(&shots, "1-sign-in-phone").await;
    page.type_text("cvk_wrong").await;
    page.press_enter().await;
    page.wait_for(
        "the wrong key refused",
        "!document.getElementById('login-error').hidden",
    )
    .await;
    page.eval("document.getElementById('api-key').value = ''")
        .await;
    page.focus("#api-key").await;
    page.type_text(&key).await;
    page.press_enter().await;
    page.wait_for(
        "the console, live",
        "!document.getElementById('app').hidden && document.getElementById('connection').dataset.state === 'live'",
    )
    .await;

    // Customers write; the one waiting for a human comes first and stands out.
    conversa
        .customer_says(
            "loja-centro",
            MARIA,
            "CONSOLE01",
            "Quero falar com um atendente, por favor",
        )
        .await;
    page.wait_for(
        "Maria, waiting for a human",
        &format!("!!document.querySelector('button.conv.waiting[data-contact=\"{MARIA}\"]')"),
    )
    .await;
    conversa
        .customer_says("loja-centro", JOAO, "CONSOLE02", "Oi, bom dia!")
        .await;
    page.wait_for(
        "João in the list",
        &format!("!!document.querySelector('button.conv[data-contact=\"{JOAO}\"]')"),
    )
    .await;
    eventually("João answered by the assistant", || {
        !fake.texts_to(JOAO).is_empty()
    })
    .await;
    let first = page
        .eval("document.querySelector('#conversations button.conv').dataset.contact")
        .await;
    assert_eq!(
        first, MARIA,
        "waiting for a human comes first, even when older"
    );
    page.screenshot(&shots, "2-list-phone").await;

    // The conversation: history, then a message that arrives while it is open.
    page.click(&format!("button.conv[data-contact=\"{MARIA}\"]"))
        .await;
    page.wait_for(
        "Maria's history",
        &format!(
            "{}.length === 1",
            bubbles_with("Quero falar com um atendente, por favor")
        ),
    )
    .await;
    page.wait_for(
        "the assistant's hand-off message",
        "!!document.querySelector('#message-list li[data-author=assistant]')",
    )
    .await;
    let state = page
        .eval("document.getElementById('chat-state').innerText")
        .await;
    assert!(
        state.as_str().unwrap().contains("Aguardando humano"),
        "{state}"
    );
    conversa
        .customer_says("loja-centro", MARIA, "CONSOLE03", "Meu pedido é o 1234")
        .await;
    page.wait_for(
        "Maria's new message, live",
        &format!("{}.length === 1", bubbles_with("Meu pedido é o 1234")),
    )
    .await;

    // The operator answers from the keyboard; the reply is sent and ticked.
    let reply = "Olá Maria, sou a Ana. Vou verificar o pedido 1234.";
    page.focus("#reply-text").await;
    page.type_text(reply).await;
    page.press_enter().await;
    page.wait_for(
        "the reply, sent",
        &format!(
            "{}.some(li => li.dataset.author === 'human' && li.dataset.status === 'sent' && li.querySelector('.ticks[aria-label=Enviada]'))",
            bubbles_with(reply)
        ),
    )
    .await;
    assert_eq!(fake.texts_to(MARIA).last().map(String::as_str), Some(reply));
    page.wait_for(
        "the state after the reply",
        "document.getElementById('chat-state').innerText.includes('Humano respondeu')",
    )
    .await;
    assert_eq!(
        page.eval("document.getElementById('reply-text').value")
            .await,
        ""
    );
    // The customer's phone reports the reply delivered, then read: the ticks follow.
    let history: Value = conversa
        .http
        .get(format!(
            "{}/api/v1/conversations/{MARIA}/messages",
            conversa.base
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let provider_id = history
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["text"] == reply)
        .and_then(|m| m["provider_id"].as_str())
        .expect("the reply's provider id")
        .to_owned();
    for (fixture, label) in [
        ("messages.update.delivery-ack.json", "Entregue"),
        ("messages.update.read.json", "Lida"),
    ] {
        let mut update = harness::fixture_json(fixture);
        update["data"]["keyId"] = serde_json::json!(provider_id);
        let status = conversa
            .webhook("loja-centro", serde_json::to_vec(&update).unwrap())
            .await;
        assert_eq!(status, 200);
        page.wait_for(
            &format!("the reply ticked {label}"),
            &format!(
                "{}.some(li => li.querySelector('.ticks[aria-label={label}]'))",
                bubbles_with(reply)
            ),
        )
        .await;
    }
    page.screenshot(&shots, "3-chat-phone").await;

    // The network drops; a message arrives meanwhile; the console catches up, once.
    proxy.cut();
    page.wait_for(
        "the console to notice the drop",
        "document.getElementById('connection').dataset.state !== 'live'",
    )
    .await;
    page.wait_for(
        "the drop shown to the operator",
        "document.getElementById('connection').textContent.startsWith('Reconectando')",
    )
    .await;
    page.screenshot(&shots, "4-reconnecting-phone").await;
    conversa
        .customer_says("loja-centro", MARIA, "CONSOLE04", "Ainda está aí?")
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    proxy.restore();
    page.wait_for(
        "the missed message after reconnecting",
        &format!("{}.length === 1", bubbles_with("Ainda está aí?")),
    )
    .await;
    page.wait_for(
        "live again",
        "document.getElementById('connection').dataset.state === 'live'",
    )
    .await;
    let history: Value = conversa
        .http
        .get(format!(
            "{}/api/v1/conversations/{MARIA}/messages?limit=100",
            conversa.base
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<String> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    let shown = page
        .eval("[...document.querySelectorAll('#message-list li')].map(li => li.dataset.id)")
        .await;
    let mut shown: Vec<String> = serde_json::from_value(shown).unwrap();
    let mut expected = ids.clone();
    shown.sort();
    expected.sort();
    assert_eq!(
        shown, expected,
        "the console shows exactly the conversation's messages, none lost, none twice"
    );

    // Give the conversation back to the assistant, and take it over again, with the buttons.
    page.click("#release").await;
    page.wait_for(
        "released",
        "document.getElementById('chat-state').innerText.includes('IA ativa')",
    )
    .await;
    page.click("#takeover").await;
    page.wait_for(
        "taken over",
        "document.getElementById('chat-state').innerText.includes('Aguardando humano')",
    )
    .await;
    assert!(count(&mut page, &bubbles_with(reply)).await == 1);

    // The same console on a desktop screen.
    page.viewport(1280, 800, false).await;
    page.wait_for(
        "both panes side by side",
        "getComputedStyle(document.getElementById('list-pane')).display !== 'none' && getComputedStyle(document.getElementById('chat-pane')).display !== 'none'",
    )
    .await;
    let desktop = page.screenshot(&shots, "5-desktop").await;
    page.viewport(390, 844, true).await;
    page.click("#back").await;
    page.wait_for(
        "the list again on the phone",
        "getComputedStyle(document.getElementById('list-pane')).display !== 'none'",
    )
    .await;
    page.screenshot(&shots, "6-list-after-phone").await;

    assert!(
        page.problems.is_empty(),
        "the page had errors: {:#?}",
        page.problems
    );
    println!(
        "console screenshots: {}",
        desktop.parent().unwrap().display()
    );
    browser.close().await;
    conversa.stop().await;
}
