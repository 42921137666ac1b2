//! The registration endpoints on the proxy port (SPEC §8.5), answered by keygate itself
//! ([`crate::register::Registrar`]); 404 while `registration` is off.

use super::admit::{read_body, send_continue};
use super::ctx::Ctx;
use super::service::Gateway;
use crate::error::{ErrorCode, GatewayError};
use crate::register::{MAX_BODY, PATH};
use crate::request::plan::{Accumulator, Head};
use pingora::proxy::Session;

/// Whether the request is for the registration endpoints.
pub fn is_registration(path: &str) -> bool {
    path == PATH || path.starts_with(&format!("{PATH}/"))
}

impl Gateway {
    /// One registration call: its status and JSON answer.
    pub(super) async fn registration(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<(u16, Vec<u8>), GatewayError> {
        let not_found = || GatewayError::new(ErrorCode::NotFound, "Not found.");
        let Some(registrar) = self
            .registrar
            .as_ref()
            .filter(|_| ctx.rt.registration.is_some())
        else {
            return Err(not_found());
        };
        let req = session.req_header();
        let method = req.method.as_str().to_string();
        let path = req.uri.path().to_string();
        let query = req.uri.query().map(str::to_string);
        let rest = path[PATH.len()..].trim_start_matches('/');
        let (status, json) = match (method.as_str(), rest) {
            ("POST", "") => {
                let head = Head::read(&session.req_header().headers)?;
                let too_big = GatewayError::new(
                    ErrorCode::BodyTooLarge,
                    "The registration request is too large.",
                )
                .close();
                if head.content_length.is_some_and(|n| n > MAX_BODY) {
                    return Err(too_big);
                }
                send_continue(session, &head).await?;
                let acc = Accumulator::new(MAX_BODY, too_big);
                let body = read_body(session, acc, ctx.rt.server.body_timeout).await?;
                registrar.register(&body, ctx.client_ip).await?
            }
            ("GET", "verify") => registrar.verify(query.as_deref()).await?,
            ("GET", id) if !id.is_empty() && !id.contains('/') => {
                let token = session
                    .req_header()
                    .headers
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::trim);
                registrar.poll(id, token).await?
            }
            _ => return Err(not_found()),
        };
        Ok((status, serde_json::to_vec(&json).unwrap_or_default()))
    }
}
