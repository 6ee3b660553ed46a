//! The command line (contract §6) and its validation: hard bounds on every count and duration, and
//! the rule that only loopback addresses are targeted unless `--allow-remote` says otherwise.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use clap::{Parser, ValueEnum};

use crate::payload::ProviderKind;

/// Longest run accepted.
pub const MAX_DURATION: Duration = Duration::from_secs(2 * 3600);
/// Highest webhook rate accepted, per second.
pub const MAX_RATE: u32 = 200_000;
/// Most webhooks one run may send.
pub const MAX_MESSAGES: u64 = 50_000_000;
pub const MAX_CONTACTS: u32 = 5_000_000;
pub const MAX_TENANTS: u32 = 1_000;
pub const MAX_DASHBOARDS: u32 = 20_000;

/// Load test for a running Conversa: provider-shaped webhooks at a target rate, a recording provider,
/// an OpenAI-compatible server, dashboards on the WebSocket stream. Stops by itself.
#[derive(Debug, Clone, Parser)]
#[command(name = "loadtest", version, about, long_about = None)]
pub struct Args {
    /// Base URL of the running Conversa (loopback only unless --allow-remote).
    #[arg(long, env = "LOADTEST_TARGET")]
    pub target: String,
    /// Conversa's admin token (CONVERSA_ADMIN_TOKEN of the target).
    #[arg(long, env = "CONVERSA_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    /// How long webhooks are sent (then a grace period waits for the last answers).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Target webhook rate, per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Tenants created for the run.
    #[arg(long, default_value_t = 10)]
    pub tenants: u32,
    /// Distinct contacts, spread over the tenants.
    #[arg(long, default_value_t = 10_000)]
    pub contacts: u32,
    /// Dashboard WebSocket clients kept connected, spread over the tenants.
    #[arg(long, default_value_t = 100)]
    pub dashboards: u32,
    /// Providers to send as; those the server does not accept are reported as skipped.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "evolution,waha,meta"
    )]
    pub providers: Vec<ProviderKind>,
    /// Latency of the OpenAI-compatible server's answers.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    pub llm_latency: Duration,
    /// Traffic shape.
    #[arg(long, value_enum, default_value = "mix")]
    pub shape: Shape,
    /// Address of the OpenAI-compatible server (start Conversa with OPENAI_BASE_URL=http://<this>/v1).
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub llm_listen: SocketAddr,
    /// Where to write the JSON report.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Allow a target or listen address outside the loopback range.
    #[arg(long)]
    pub allow_remote: bool,
    /// Address of the recording provider server (the tenants' provider base URL).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub provider_listen: SocketAddr,
    /// Most webhooks sent in the run [default: rate × duration].
    #[arg(long)]
    pub max_messages: Option<u64>,
    /// Most webhook requests in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// The tenants' `debounce_ms` setting (fragments of a burst are sent closer than this).
    #[arg(long, default_value_t = 300)]
    pub debounce_ms: u64,
    /// Gap between the fragments of a burst, after the previous fragment's ack.
    #[arg(long, default_value = "40ms", value_parser = humantime::parse_duration)]
    pub burst_gap: Duration,
    /// After an answer, how long a contact waits before its next turn.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub think_time: Duration,
    /// A turn without an answer after this long counts as lost (unless it arrives during the grace period).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub turn_timeout: Duration,
    /// After sending stops, how long to wait for the last answers.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// Turns per contact (0 = as many as the duration allows). 1 makes every contact write once.
    #[arg(long, default_value_t = 0)]
    pub turns_per_contact: u32,
    /// No progress bar (also off when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
}

/// Traffic shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// Typing bursts: 2–4 quick fragments per turn, exercising the debounce.
    Burst,
    /// Steady chat: one message per turn.
    Steady,
    /// Handoff storm: every turn asks for a human; each contact writes once and is then silenced.
    Handoff,
    /// 60% steady, 30% bursts, 10% handoffs, over every accepted provider.
    #[default]
    Mix,
}

impl Args {
    /// Checks every bound and the loopback rule; returns the webhook cap of the run.
    pub fn validate(&self) -> anyhow::Result<u64> {
        ensure!(
            !self.duration.is_zero() && self.duration <= MAX_DURATION,
            "--duration must be between 1ms and {}",
            humantime::format_duration(MAX_DURATION)
        );
        ensure!(
            (1..=MAX_RATE).contains(&self.rate),
            "--rate must be between 1 and {MAX_RATE}"
        );
        ensure!(
            (1..=MAX_TENANTS).contains(&self.tenants),
            "--tenants must be between 1 and {MAX_TENANTS}"
        );
        ensure!(
            (self.tenants..=MAX_CONTACTS).contains(&self.contacts),
            "--contacts must be between --tenants and {MAX_CONTACTS}"
        );
        ensure!(
            self.dashboards <= MAX_DASHBOARDS,
            "--dashboards must be at most {MAX_DASHBOARDS}"
        );
        ensure!(
            !self.providers.is_empty(),
            "--providers must name at least one provider"
        );
        ensure!(
            (1..=10_000).contains(&self.concurrency),
            "--concurrency must be between 1 and 10000"
        );
        ensure!(
            (10..=60_000).contains(&self.debounce_ms),
            "--debounce-ms must be between 10 and 60000"
        );
        ensure!(
            self.burst_gap < Duration::from_millis(self.debounce_ms),
            "--burst-gap must be shorter than --debounce-ms, or bursts split into several turns"
        );
        ensure!(
            self.grace <= Duration::from_secs(600) && self.turn_timeout <= Duration::from_secs(600),
            "--grace and --turn-timeout must be at most 10 minutes"
        );
        ensure!(
            self.llm_latency <= Duration::from_secs(120),
            "--llm-latency must be at most 2 minutes"
        );
        let default_cap = u64::from(self.rate)
            .saturating_mul(self.duration.as_millis() as u64)
            .div_ceil(1000);
        let cap = self.max_messages.unwrap_or(default_cap).min(MAX_MESSAGES);
        ensure!(cap > 0, "--max-messages must be positive");
        if !self.allow_remote {
            let host = target_host(&self.target)?;
            ensure!(
                is_loopback_host(&host),
                "--target {} is not a loopback address; load tests only target this machine \
                 (pass --allow-remote to override)",
                self.target
            );
            for (flag, addr) in [
                ("--llm-listen", self.llm_listen),
                ("--provider-listen", self.provider_listen),
            ] {
                ensure!(
                    addr.ip().is_loopback(),
                    "{flag} {addr} is not a loopback address (pass --allow-remote to override)"
                );
            }
        }
        Ok(cap)
    }
}

/// The host part of the target URL.
pub fn target_host(target: &str) -> anyhow::Result<String> {
    let url =
        reqwest::Url::parse(target).with_context(|| format!("--target {target} is not a URL"))?;
    match url.scheme() {
        "http" | "https" => {}
        other => bail!("--target must be http or https, not {other}"),
    }
    url.host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
        .context("--target has no host")
}

/// `localhost`, 127.0.0.0/8 and ::1.
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["loadtest", "--admin-token", "t"];
        if !extra.contains(&"--target") {
            argv.extend_from_slice(&["--target", "http://127.0.0.1:8080"]);
        }
        argv.extend_from_slice(extra);
        Args::parse_from(argv)
    }

    #[test]
    fn contract_flags_parse_with_their_defaults() {
        let a = args(&[]);
        assert_eq!(a.duration, Duration::from_secs(60));
        assert_eq!(
            (a.rate, a.tenants, a.contacts, a.dashboards),
            (1000, 10, 10_000, 100)
        );
        assert_eq!(
            a.providers,
            [
                ProviderKind::Evolution,
                ProviderKind::Waha,
                ProviderKind::Meta
            ]
        );
        assert_eq!(a.shape, Shape::Mix);
        assert_eq!(a.llm_listen.to_string(), "127.0.0.1:9100");
        assert_eq!(a.validate().unwrap(), 60_000);
        let a = args(&[
            "--duration",
            "5s",
            "--rate",
            "20",
            "--shape",
            "burst",
            "--providers",
            "evolution",
            "--llm-latency",
            "1s",
            "--json",
            "r.json",
        ]);
        assert_eq!(a.validate().unwrap(), 100);
        assert_eq!(a.llm_latency, Duration::from_secs(1));
    }

    #[test]
    fn only_loopback_targets_unless_told_otherwise() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://localhost:1",
            "http://[::1]:8080",
            "http://127.8.9.10",
        ] {
            assert!(args(&["--target", ok]).validate().is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1:8080",
            "http://192.168.1.2",
            "http://example.com",
            "http://0.0.0.0:8080",
        ] {
            let err = args(&["--target", bad]).validate().unwrap_err().to_string();
            assert!(err.contains("loopback"), "{bad}: {err}");
            assert!(
                args(&["--target", bad, "--allow-remote"])
                    .validate()
                    .is_ok(),
                "{bad}"
            );
        }
        assert!(args(&["--llm-listen", "0.0.0.0:9100"]).validate().is_err());
    }

    #[test]
    fn runs_are_bounded() {
        assert!(args(&["--duration", "3h"]).validate().is_err());
        assert!(args(&["--rate", "0"]).validate().is_err());
        assert!(args(&["--rate", "1000000"]).validate().is_err());
        assert!(args(&["--contacts", "5"]).validate().is_err());
        assert!(args(&["--burst-gap", "400ms"]).validate().is_err());
        assert_eq!(args(&["--max-messages", "7"]).validate().unwrap(), 7);
    }
}
