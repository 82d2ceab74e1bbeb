//! Who is calling: digest authentication of our own users as callers (RFC 3261 §22.3) and
//! the identity the proxy asserts for them (RFC 3325, SPEC R25).
//!
//! - An out-of-dialog request (other than REGISTER, ACK, CANCEL and an OPTIONS ping of the
//!   server itself) whose From names a user of our domain must carry valid
//!   `Proxy-Authorization` credentials of our realm, else it gets 407 with the same
//!   SHA-256-then-MD5 challenges (and nonces) as the registrar's 401. Known and unknown users
//!   get the same 407 (SECURITY threat 4); wrong credentials are counted in the
//!   [`crate::auth::AuthFailureLimiter`]; a stale nonce gets `stale=true`.
//! - The authenticated user must be the From user, or a phone (`~id`) of that subscriber:
//!   bob's credentials on a From of alice get 403 (SECURITY threat 1).
//! - A request whose From is not ours is a call from a peer: it is not challenged, and only
//!   loses its identity claims.
//! - Forwarded requests lose every P-Asserted-Identity / P-Preferred-Identity (they come from
//!   untrusted sources), get `P-Asserted-Identity: <sip:user@DOMAIN>` when the caller
//!   authenticated as our subscriber, and lose the credentials of our realm (a proxy consumes
//!   its own realm's credentials, §22.3); credentials for other realms are passed on.
//!
//! # The digest `uri`
//! The `uri` of `Authorization` / `Proxy-Authorization` must name the Request-URI's resource
//! (RFC 7616 §3.4.6, RFC 2617 §3.2.2.5): the same user (both absent, or equal after
//! %-decoding), and the same host and port, where any two names of this server count as the
//! same (SIPp 3.6 sends `uri="sip:IP:PORT"` of the proxy for `REGISTER sip:localhost`).
//! Scheme (sip/sips) and URI parameters are not compared. A mismatch is answered
//! **400 Bad Request**, as both RFCs say: the client computed its digest over the `uri` it
//! sent, so a fresh challenge would only make it send the same mismatch again. The check is
//! made before the digest is verified: it depends only on the request, so the 400 says
//! nothing about the user, and a refused request burns no nonce count.

use std::time::Instant;

use super::{Proxy, Target};
use crate::auth::{AuthError, Credentials};
use crate::message::{HeaderName, Method, Request, Uri};

/// Who sent an out-of-dialog request, as far as the proxy vouches for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::proxy) enum Caller {
    /// Not authenticated: a caller from another domain (a peer's inbound call), or a request
    /// that is not subject to caller authentication (REGISTER, an OPTIONS ping).
    Unverified,
    /// Authenticated as this subscriber of ours (directly or through one of their phones).
    Subscriber(String),
}

impl Proxy {
    /// Whether `req` (out of dialog, not ACK/CANCEL) is exempt from caller authentication:
    /// REGISTER (the registrar authenticates it with `Authorization`) and an OPTIONS for the
    /// server itself (answered locally, it carries no caller identity anywhere).
    pub(in crate::proxy) fn caller_auth_exempt(&self, req: &Request) -> bool {
        match req.method {
            Method::Register | Method::Ack | Method::Cancel => true,
            Method::Options => req.uri.user.is_none() && self.is_ours(&req.uri.host, req.uri.port),
            _ => false,
        }
    }

    /// Authenticates the caller of out-of-dialog request `req` (server transaction `id`).
    ///
    /// `None`: a response (407, 400, 403) has been sent and the request is finished with.
    /// Otherwise who the caller is; for a [`Caller::Subscriber`] the credentials of our realm
    /// have been removed from `req`.
    pub(in crate::proxy) fn authenticate_caller(
        &mut self,
        id: u64,
        peer: Target,
        req: &mut Request,
        now: Instant,
    ) -> Option<Caller> {
        let Some(from) = req.from() else {
            self.reply(id, req, 400, now);
            return None;
        };
        if !from.uri.is_sip() || !self.is_ours(&from.uri.host, from.uri.port) {
            return Some(Caller::Unverified);
        }
        let user = from.uri.user_unescaped().unwrap_or_default();
        if self.limiter.is_blocked(now, peer.addr.ip(), &user) {
            let resp = self.make_reply(req, 403, "Too Many Failed Attempts");
            self.respond(id, &resp, now);
            return None;
        }
        // The first credentials of our realm; others are for proxies further on (§22.3).
        let realm = self.auth.config().realm.clone();
        let Some(creds) = req
            .headers
            .get_all(&HeaderName::ProxyAuthorization)
            .filter_map(|v| Credentials::parse(v).ok())
            .find(|c| c.realm == realm)
        else {
            self.proxy_challenge(id, req, false, now);
            return None;
        };
        if !self.digest_uri_matches(&creds.uri, &req.uri) {
            tracing::debug!(source = %peer.addr, "digest uri does not match the Request-URI");
            let resp = self.make_reply(req, 400, "Digest URI Does Not Match Request-URI");
            self.respond(id, &resp, now);
            return None;
        }
        let directory = &self.directory;
        let verified = self.auth.verify_credentials_from(
            now,
            req.method.as_str(),
            &creds,
            Some(peer.addr.ip()),
            |name, alg| directory.ha1(name, alg),
        );
        let verified = match verified {
            Ok(v) => {
                self.algorithms
                    .verified(&user, super::registrar::user_agent(req), v.algorithm);
                self.limiter.record_success(now, peer.addr.ip(), &user);
                v
            }
            // A nonce we cannot open (issued before a restart, or for another address)
            // gets a fresh one with stale=true: the client retries without asking its user
            // (RFC 7616 §3.3), and it is not counted as a failure.
            Err(AuthError::Stale | AuthError::UnknownNonce) => {
                self.proxy_challenge(id, req, true, now);
                return None;
            }
            Err(e) => {
                tracing::debug!(source = %peer.addr, error = %e, "caller authentication failed");
                self.stats.auth_failures += 1;
                if e.is_guess() {
                    self.limiter.record_failure(now, peer.addr.ip(), &user);
                }
                self.proxy_challenge(id, req, false, now);
                return None;
            }
        };
        // A phone calls as its subscriber only; everyone else as themselves.
        let allowed = match self.directory.device_for_username(&verified.username) {
            Some(d) => d.user == user,
            None => verified.username == user,
        };
        if !allowed || self.directory.subscriber(&user).is_none() {
            tracing::debug!(source = %peer.addr, "authenticated user is not the From user");
            self.stats.auth_failures += 1;
            let resp = self.make_reply(req, 403, "Forbidden");
            self.respond(id, &resp, now);
            return None;
        }
        self.consume_own_credentials(req);
        Some(Caller::Subscriber(user))
    }

    /// For REGISTER: answers 400 and returns `false` when the `Authorization` the registrar
    /// will verify (the first one, if it is ours) has a `uri` that is not the Request-URI.
    pub(in crate::proxy) fn check_register_digest_uri(
        &mut self,
        id: u64,
        req: &Request,
        now: Instant,
    ) -> bool {
        let Some(creds) = req
            .headers
            .get(&HeaderName::Authorization)
            .and_then(|v| Credentials::parse(v).ok())
        else {
            return true; // none, or unparsable: the registrar challenges
        };
        if creds.realm != self.auth.config().realm || self.digest_uri_matches(&creds.uri, &req.uri)
        {
            return true;
        }
        let resp = self.make_reply(req, 400, "Digest URI Does Not Match Request-URI");
        self.respond(id, &resp, now);
        false
    }

    /// Removes the `Proxy-Authorization` values of our realm (RFC 3261 §22.3); the others,
    /// and values we cannot parse (we cannot tell whose they are), stay.
    pub(in crate::proxy) fn consume_own_credentials(&self, req: &mut Request) {
        let realm = &self.auth.config().realm;
        req.headers.0.retain(|h| {
            h.name != HeaderName::ProxyAuthorization
                || !Credentials::parse(&h.value).is_ok_and(|c| c.realm == *realm)
        });
    }

    /// R25: drops every identity claim from the request and, for an authenticated
    /// subscriber, asserts theirs.
    pub(in crate::proxy) fn assert_identity(&self, req: &mut Request, caller: &Caller) {
        req.headers.remove_all(&HeaderName::PAssertedIdentity);
        req.headers.remove_all(&HeaderName::PPreferredIdentity);
        if let Caller::Subscriber(user) = caller {
            req.headers.push(
                HeaderName::PAssertedIdentity,
                format!("<sip:{}@{}>", escape_user(user), self.cfg.domain),
            );
        }
    }

    /// Whether a digest `uri` names the same resource as `request_uri` (see the module notes).
    pub(in crate::proxy) fn digest_uri_matches(&self, digest_uri: &str, request_uri: &Uri) -> bool {
        let Ok(d) = Uri::parse(digest_uri) else {
            return false;
        };
        if !d.is_sip() || !request_uri.is_sip() {
            return d == *request_uri;
        }
        if d.user_unescaped() != request_uri.user_unescaped() {
            return false;
        }
        let port = |u: &Uri| {
            u.port
                .unwrap_or(if u.scheme == "sips" { 5061 } else { 5060 })
        };
        let same = d.host == request_uri.host && port(&d) == port(request_uri);
        same || (self.is_ours(&d.host, d.port) && self.is_ours(&request_uri.host, request_uri.port))
    }

    /// 407 with the `Proxy-Authenticate` challenges this client gets (never a probe: see
    /// [`crate::auth::DigestPolicy`]).
    fn proxy_challenge(&mut self, id: u64, req: &Request, stale: bool, now: Instant) {
        let mut resp = self.make_reply(req, 407, "Proxy Authentication Required");
        let user = req
            .from()
            .and_then(|f| f.uri.user_unescaped())
            .unwrap_or_default();
        let offer = self
            .algorithms
            .offer(&user, super::registrar::user_agent(req), false);
        let client = self.servers.get(&id).map(|e| e.peer.addr.ip());
        for c in self.auth.challenges_for(now, stale, offer, client) {
            resp.headers.push(HeaderName::ProxyAuthenticate, c);
        }
        self.respond(id, &resp, now);
    }
}

/// A user name as the user part of a SIP URI (RFC 3261 §25.1 `user`): unreserved and
/// user-unreserved characters as they are, everything else %-escaped.
fn escape_user(user: &str) -> String {
    let mut out = String::with_capacity(user.len());
    for b in user.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()&=+$,;?/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape_user;

    #[test]
    fn user_escaping() {
        assert_eq!(escape_user("alice"), "alice");
        assert_eq!(escape_user("~d-9"), "~d-9");
        assert_eq!(escape_user("a b@c"), "a%20b%40c");
        assert_eq!(escape_user("é"), "%C3%A9");
    }
}
