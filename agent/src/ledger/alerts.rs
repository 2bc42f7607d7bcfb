//! Alerts: the conditions [`super::Ledger::refresh`] finds (a type's slow share over
//! `--alert-slow-percent`, an SLO breached, a route's error share over `--alert-error-percent`,
//! a route regressed), each let through once per cooldown (`--alert-cooldown`, 5 minutes) per
//! key, so a storm is one alert. An alert is a `loupe: alert:` line on stderr and, with
//! `--alert-webhook URL`, a JSON POST there; every one is counted (`alerts`,
//! `alerts_suppressed`, `alert_webhook_failures`).
//!
//! The alert stage runs on a thread of its own: it refreshes the ledger every
//! [`EVALUATE_EVERY`] and its webhook requests never hold up anything but itself.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use rustc_hash::FxHashMap;
use serde::Serialize;
use tokio::sync::oneshot;

use super::Ledger;
use crate::{spans::clock::monotonic_now_ns, stats::Counters};

/// How often the routes' verdicts are refreshed and the alert conditions checked.
pub const EVALUATE_EVERY: Duration = Duration::from_secs(5);
/// Longest a webhook request may take.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// Webhook requests in flight at most; past it an alert's POST is counted as failed.
const WEBHOOK_IN_FLIGHT: usize = 8;
/// How long the alerts in flight at exit may still take.
const DRAIN: Duration = Duration::from_millis(400);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    SlowShare,
    SloBreach,
    ErrorRate,
    Regression,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SlowShare => "slow_share",
            Self::SloBreach => "slo_breach",
            Self::ErrorRate => "error_rate",
            Self::Regression => "regression",
        }
    }
}

/// A condition that holds now.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Firing {
    pub kind: AlertKind,
    /// None for a type's slow share (all services).
    pub service: Option<String>,
    /// The route, or the type (`http`, `db`, ...).
    pub subject: String,
    pub message: String,
    /// What was measured (a percentage, a p95 in ms, a compliance share) and its limit.
    pub value: f64,
    pub limit: f64,
    pub samples: u64,
}

impl Firing {
    /// What the cooldown is kept per: `regression:shop GET /api/x`.
    pub fn key(&self) -> String {
        match &self.service {
            Some(service) => format!("{}:{service} {}", self.kind.as_str(), self.subject),
            None => format!("{}:{}", self.kind.as_str(), self.subject),
        }
    }
}

/// An alert as it is sent (the webhook's JSON body): its condition's fields, its key and when.
#[derive(Clone, Debug, Serialize)]
pub struct Alert {
    pub source: &'static str,
    pub key: String,
    #[serde(flatten)]
    pub firing: Firing,
    /// When it fired (RFC 3339).
    pub at: String,
}

impl Alert {
    pub fn new(firing: Firing, at: SystemTime) -> Self {
        Self {
            source: "loupe",
            key: firing.key(),
            firing,
            at: humantime::format_rfc3339_seconds(at).to_string(),
        }
    }
}

/// One alert per key per period.
#[derive(Debug)]
pub struct Cooldown {
    period_ns: u64,
    last: FxHashMap<String, u64>,
}

impl Cooldown {
    pub fn new(period: Duration) -> Self {
        Self {
            period_ns: period.as_nanos() as u64,
            last: FxHashMap::default(),
        }
    }

    /// Whether an alert of `key` may go out at `now_ns` (then its period starts again).
    pub fn admit(&mut self, key: &str, now_ns: u64) -> bool {
        match self.last.get_mut(key) {
            Some(last) if now_ns.saturating_sub(*last) < self.period_ns => false,
            Some(last) => {
                *last = now_ns;
                true
            }
            None => {
                self.last.insert(key.to_owned(), now_ns);
                true
            }
        }
    }
}

/// Where alerts go and how often.
#[derive(Clone, Debug)]
pub struct AlertSettings {
    pub cooldown: Duration,
    pub webhook: Option<String>,
}

/// The alert stage: refreshes `ledger` every [`EVALUATE_EVERY`] and sends what fires, until
/// `stop`.
pub async fn run(
    ledger: Arc<Mutex<Ledger>>,
    settings: AlertSettings,
    counters: Arc<Counters>,
    mut stop: oneshot::Receiver<()>,
) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = settings.webhook.as_ref().and_then(|_| {
        reqwest::Client::builder()
            .timeout(WEBHOOK_TIMEOUT)
            .no_proxy()
            .tls_backend_rustls()
            .build()
            .map_err(|err| tracing::warn!("alert webhook off: {err}"))
            .ok()
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(WEBHOOK_IN_FLIGHT));
    let mut cooldown = Cooldown::new(settings.cooldown);
    let mut tick = tokio::time::interval(EVALUATE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => {
                // The alerts still being sent get a moment (the runtime ends with this stage).
                let all = WEBHOOK_IN_FLIGHT as u32;
                let _ = tokio::time::timeout(DRAIN, slots.acquire_many(all)).await;
                return;
            }
        }
        let now = monotonic_now_ns();
        let mut ledger_now = ledger.lock().unwrap_or_else(PoisonError::into_inner);
        let firing = ledger_now.refresh(now);
        Counters::set(&counters.stats_untracked, ledger_now.untracked);
        let mut sent = Vec::new();
        for condition in firing {
            if cooldown.admit(&condition.key(), now) {
                let alert = Alert::new(condition, SystemTime::now());
                ledger_now.note_alert(Some(alert.clone()));
                sent.push(alert);
            } else {
                ledger_now.note_alert(None);
                Counters::add(&counters.alerts_suppressed, 1);
            }
        }
        drop(ledger_now);
        for alert in sent {
            Counters::add(&counters.alerts, 1);
            eprintln!("loupe: alert: {}", alert.firing.message);
            let (Some(client), Some(url)) = (&client, &settings.webhook) else {
                continue;
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                Counters::add(&counters.alert_webhook_failures, 1);
                continue;
            };
            let body = serde_json::to_vec(&alert).unwrap_or_default();
            let request = client
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
            let counters = counters.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let ok = match request.send().await {
                    Ok(response) if response.status().is_success() => true,
                    Ok(response) => {
                        tracing::warn!("alert webhook answered {}", response.status());
                        false
                    }
                    Err(err) => {
                        tracing::warn!("alert webhook failed: {err}");
                        false
                    }
                };
                if !ok {
                    Counters::add(&counters.alert_webhook_failures, 1);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ledger whose inbound requests are all slow, as of now.
    fn slow_ledger() -> Arc<Mutex<Ledger>> {
        let thresholds = crate::config::Thresholds {
            http: Duration::from_millis(10),
            external: Duration::from_secs(2),
            db: Duration::from_millis(500),
            cache: Duration::from_millis(100),
        };
        let config = super::super::LedgerConfig {
            thresholds,
            slos: Vec::new(),
            regression_factor: 1.5,
            min_samples: 20,
            baseline: None,
            alert_slow_percent: Some(5.0),
            alert_error_percent: None,
        };
        let now = monotonic_now_ns();
        let mut ledger = Ledger::new(
            config,
            crate::process::services::ServiceNames::with_lookup(Some("shop".into()), |_| None),
            now,
        );
        for _ in 0..30 {
            let mut span = crate::detect::patterns::testing::server(0, 50);
            crate::detect::mark_slow(&mut span, &thresholds);
            ledger.record_request(&mut span, &[], now);
        }
        Arc::new(Mutex::new(ledger))
    }

    /// A webhook that answers every POST with `status`; the bodies it got.
    async fn webhook(status: u16) -> (String, Arc<Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/alerts", listener.local_addr().unwrap());
        let bodies: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = bodies.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // Head and body: the body is the JSON's closing brace.
                while !request.ends_with(b"}") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request).into_owned();
                seen.lock().unwrap().push(text);
                let reply = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
                let _ = stream.write_all(reply.as_bytes()).await;
            }
        });
        (url, bodies)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_firing_condition_is_posted_once_and_a_refused_post_is_counted() {
        for (status, failures) in [(200, 0), (500, 1)] {
            let (url, bodies) = webhook(status).await;
            let counters = Arc::new(Counters::default());
            let (stop, stopped) = oneshot::channel();
            let settings = AlertSettings {
                cooldown: Duration::from_secs(300),
                webhook: Some(url),
            };
            let stage = tokio::spawn(run(slow_ledger(), settings, counters.clone(), stopped));
            // The first evaluation is at once.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while Counters::get(&counters.alerts) + Counters::get(&counters.alert_webhook_failures)
                < 1 + failures
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = stop.send(());
            stage.await.unwrap();
            assert_eq!(Counters::get(&counters.alerts), 1, "answered {status}");
            assert_eq!(
                Counters::get(&counters.alert_webhook_failures),
                failures,
                "answered {status}"
            );
            let bodies = bodies.lock().unwrap();
            assert_eq!(bodies.len(), 1, "{bodies:?}");
            assert!(
                bodies[0].starts_with("POST /alerts HTTP/1.1\r\n"),
                "{}",
                bodies[0]
            );
            assert!(
                bodies[0].contains("\"key\":\"slow_share:http\""),
                "{}",
                bodies[0]
            );
        }
    }

    #[test]
    fn an_alert_key_goes_out_once_per_cooldown_and_keys_are_apart() {
        let mut cooldown = Cooldown::new(Duration::from_secs(300));
        let s = 1_000_000_000;
        assert!(cooldown.admit("regression:shop GET /a", 10 * s));
        assert!(!cooldown.admit("regression:shop GET /a", 11 * s));
        assert!(
            cooldown.admit("regression:shop GET /b", 11 * s),
            "another key"
        );
        assert!(!cooldown.admit("regression:shop GET /a", 309 * s));
        assert!(
            cooldown.admit("regression:shop GET /a", 310 * s),
            "the period is over"
        );
        assert!(!cooldown.admit("regression:shop GET /a", 311 * s));
    }

    #[test]
    fn an_alert_carries_its_key_and_kind_as_json() {
        let firing = Firing {
            kind: AlertKind::SloBreach,
            service: Some("shop".into()),
            subject: "GET /a".into(),
            message: "m".into(),
            value: 0.5,
            limit: 0.95,
            samples: 40,
        };
        assert_eq!(firing.key(), "slo_breach:shop GET /a");
        let alert = Alert::new(firing, SystemTime::UNIX_EPOCH);
        let json = serde_json::to_value(&alert).unwrap();
        assert_eq!(json["kind"], "slo_breach");
        assert_eq!(json["key"], "slo_breach:shop GET /a");
        assert_eq!(json["at"], "1970-01-01T00:00:00Z");
        assert_eq!(json["source"], "loupe");
    }
}
