//! Verification e-mails: queued (bounded) by the request that registers, sent by one
//! background worker through the configured relay with lettre, retried with backoff until
//! the code expires. A relay that is down never holds a request: the registration stays
//! pending and `keygate_email_errors_total` counts the failed attempts.

use crate::config::{RegistrationSettings, SmtpSettings};
use crate::state::State;
use crate::telemetry::metrics::METRICS;
use lettre::message::{header::ContentType, Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use secrecy::ExposeSecret;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// E-mails waiting to be sent (new and retrying), at most.
pub const QUEUE: usize = 1024;
/// One attempt's bound (connect, TLS, AUTH, DATA).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Waits between attempts: doubling from 1 s up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// An e-mail address for logs: its domain, and the local part's first character.
pub fn masked(addr: &str) -> String {
    match addr.split_once('@') {
        Some((local, domain)) => format!("{}***@{domain}", local.chars().next().unwrap_or('?')),
        None => "***".into(),
    }
}

/// One verification e-mail.
pub struct Email {
    pub to: String,
    pub link: String,
    pub site_url: String,
    /// Unix second the code expires: no attempt after it.
    pub expires_at: i64,
}

impl std::fmt::Debug for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The link holds the code.
        write!(f, "Email(to {}, [REDACTED LINK])", masked(&self.to))
    }
}

fn message(reg: &RegistrationSettings, e: &Email) -> Result<Message, String> {
    let from: Mailbox = reg
        .email_from
        .parse()
        .map_err(|e| format!("email_from: {e}"))?;
    let to: Mailbox = e.to.parse().map_err(|e| format!("recipient: {e}"))?;
    let body = format!(
        "Someone asked to register {} with this gateway using this address.\n\nTo confirm, open:\n{}\n\nThe link works once and expires. If this was not you, ignore this e-mail.\n",
        e.site_url, e.link
    );
    Message::builder()
        .from(from)
        .to(to)
        .subject("Confirm your site registration")
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| e.to_string())
}

fn transport(s: &SmtpSettings) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let params = || TlsParameters::new(s.host.clone()).map_err(|e| e.to_string());
    let tls = if s.implicit_tls {
        Tls::Wrapper(params()?)
    } else if s.starttls_required {
        Tls::Required(params()?)
    } else {
        // A relay on loopback: STARTTLS if it offers it.
        Tls::Opportunistic(params()?)
    };
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(s.host.clone())
        .port(s.port)
        .tls(tls)
        .timeout(Some(SEND_TIMEOUT));
    if let (Some(u), Some(p)) = (&s.username, &s.password) {
        b = b.credentials(Credentials::new(u.clone(), p.expose_secret().to_string()));
    }
    Ok(b.build())
}

/// Send one e-mail with the settings in force now.
async fn send(state: &State, e: &Email) -> Result<(), String> {
    let rt = state.runtime.load_full();
    let Some(reg) = &rt.registration else {
        return Err("registration is off".into());
    };
    let msg = message(reg, e)?;
    let t = transport(&reg.smtp)?;
    match tokio::time::timeout(SEND_TIMEOUT, t.send(msg)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(format!("SMTP {}:{}: {err}", reg.smtp.host, reg.smtp.port)),
        Err(_) => Err(format!(
            "SMTP {}:{}: timed out",
            reg.smtp.host, reg.smtp.port
        )),
    }
}

/// The queue's sending side.
pub type Outbox = mpsc::Sender<Email>;

pub fn queue() -> (Outbox, mpsc::Receiver<Email>) {
    mpsc::channel(QUEUE)
}

/// The worker: sends what is queued; a failure waits its backoff (others go meanwhile).
pub struct Mailer {
    pub state: Arc<State>,
    pub inbox: parking_lot::Mutex<Option<mpsc::Receiver<Email>>>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Mailer {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let Some(mut inbox) = self.inbox.lock().take() else {
            return;
        };
        // Retrying: when, what, the next wait. Bounded by QUEUE (an e-mail beyond it is
        // dropped and counted).
        let mut retry: Vec<(Instant, Email, Duration)> = Vec::new();
        loop {
            let next = retry.iter().map(|r| r.0).min();
            let wake = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let (email, wait) = tokio::select! {
                got = inbox.recv() => match got {
                    Some(e) => (e, Duration::from_secs(1)),
                    None => return,
                },
                _ = wake => {
                    let now = Instant::now();
                    let Some(i) = retry.iter().position(|r| r.0 <= now) else { continue };
                    let (_, e, wait) = retry.swap_remove(i);
                    (e, wait)
                }
                _ = shutdown.changed() => return,
            };
            match send(&self.state, &email).await {
                Ok(()) => {
                    METRICS.emails_sent.inc();
                    log::info!(
                        "registration: verification e-mail sent to {}",
                        masked(&email.to)
                    );
                }
                Err(err) => {
                    METRICS.email_errors.inc();
                    let retry_at = crate::clock::now_s() + wait.as_secs() as i64;
                    if retry_at >= email.expires_at || retry.len() >= QUEUE {
                        log::error!(
                            "registration: giving up on the e-mail to {}: {err}",
                            masked(&email.to)
                        );
                        continue;
                    }
                    log::warn!(
                        "registration: e-mail to {} not sent ({err}); retrying in {wait:?}",
                        masked(&email.to)
                    );
                    retry.push((Instant::now() + wait, email, (wait * 2).min(MAX_BACKOFF)));
                }
            }
        }
    }
}
