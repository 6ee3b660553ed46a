//! A short run against an in-process Conversa on 127.0.0.1:0: every shape completes with no lost or
//! duplicated answer, the report has the contract's fields, and providers the server lacks are skipped.

use std::time::Duration;

use clap::Parser as _;
use loadtest::Args;
use tokio::sync::oneshot;

async fn conversa(
    dir: &std::path::Path,
) -> (
    String,
    String,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let config = gateway::config::Config::for_tests(dir.to_path_buf());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let running = gateway::server::spawn(config, async move {
        let _ = stop_rx.await;
    })
    .await
    .expect("conversa starts");
    (
        format!("http://{}", running.addr),
        running.admin_token,
        stop_tx,
        running.task,
    )
}

fn args(target: &str, token: &str, shape: &str) -> Args {
    Args::parse_from([
        "loadtest",
        "--target",
        target,
        "--admin-token",
        token,
        "--duration",
        "2s",
        "--rate",
        "40",
        "--tenants",
        "2",
        "--contacts",
        "30",
        "--dashboards",
        "2",
        "--shape",
        shape,
        "--llm-listen",
        "127.0.0.1:0",
        "--debounce-ms",
        "150",
        "--burst-gap",
        "20ms",
        "--think-time",
        "200ms",
        "--grace",
        "10s",
        "--turn-timeout",
        "10s",
        "--no-progress",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shape_runs_to_the_end_with_exactly_one_answer_per_turn() {
    let dir = tempfile::tempdir().unwrap();
    let (target, token, stop, task) = conversa(dir.path()).await;
    for shape in ["steady", "burst", "handoff", "mix"] {
        let report = tokio::time::timeout(
            Duration::from_secs(60),
            loadtest::run(args(&target, &token, shape)),
        )
        .await
        .expect("the run stops by itself")
        .expect("the run completes");
        let text = report.text();
        eprintln!("{text}");
        assert!(report.accepted > 0, "{shape}: {text}");
        assert_eq!(report.rejected, 0, "{shape}: {text}");
        assert!(report.answers.turns > 0, "{shape}: {text}");
        assert_eq!(
            (report.answers.lost, report.answers.duplicated),
            (0, 0),
            "{shape}: {text}"
        );
        assert!(report.ok, "{shape}: {text}");
        assert_eq!(report.mode, "extractive");
        assert!(
            report.rss_bytes.unwrap_or(0.0) > 0.0,
            "{shape}: no RSS from /metrics"
        );
        assert!(
            report.turn_latency_ms.p50 >= 150.0,
            "{shape}: answers before the debounce: {text}"
        );
        assert!(
            report.providers_used.contains(&"evolution".to_owned()),
            "{text}"
        );
        for (provider, why) in &report.providers_skipped {
            assert!(
                !report.providers_used.contains(provider),
                "{provider} used and skipped ({why})"
            );
        }
        if shape == "handoff" {
            assert_eq!(report.answers.handoffs, report.answers.turns, "{text}");
        }
        if shape == "burst" {
            assert!(
                report.accepted > report.answers.turns,
                "bursts have several fragments: {text}"
            );
        }
        if report.dashboards.connected > 0 {
            assert!(
                report.dashboard_latency_ms.is_some(),
                "{shape}: dashboards saw no message: {text}"
            );
        }
        let json = serde_json::to_value(&report).unwrap();
        assert!(json["ack_latency_ms"]["p99"].is_number() && json["answers"]["lost"] == 0);
    }
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn refuses_targets_outside_loopback() {
    let err = loadtest::run(args("http://192.0.2.10:8080", "t", "steady"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("loopback"), "{err}");
}
