//! `trustring admin …`: the operator's command line over the admin HTTP API (like kamctl over
//! Kamailio's RPC). The token comes from `TRUSTRING_ADMIN_TOKEN` or `DATA/admin-token`;
//! output is a readable table, or the API's JSON with `--json`.
//!
//! Over `https://` the server's key is pinned: `--tls-fingerprint`, else the fingerprint of
//! `DATA/tls/cert.pem` (the operator's CLI usually runs beside the server). `enrol` prints the
//! enrolment URI to hand to the user, and its QR code.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tls::Fingerprint;

/// Where the API is and how to reach it.
#[derive(Debug, clap::Args)]
pub(crate) struct AdminArgs {
    /// The admin API, e.g. http://127.0.0.1:8080 (loopback) or https://HOST:PORT.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "TRUSTRING_API")]
    server: String,
    /// With an https:// server: its TLS key fingerprint, sha256:HEX (default: that of
    /// DATA/tls/cert.pem).
    #[arg(long, env = "TRUSTRING_API_FINGERPRINT")]
    tls_fingerprint: Option<String>,
    /// Data directory holding `admin-token` (used when TRUSTRING_ADMIN_TOKEN is not set).
    #[arg(long, default_value = "./trustring-data", env = "TRUSTRING_DATA")]
    data: PathBuf,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AdminCommand {
    /// Subscribers (addresses of record).
    #[command(subcommand)]
    Subscribers(SubscriberCmd),
    /// The number identity pool.
    #[command(subcommand)]
    Pool(PoolCmd),
    /// EULA versions.
    #[command(subcommand)]
    Eulas(EulaCmd),
    /// Issue a one-time enrolment code for a subscriber's phone: prints the enrolment URI to
    /// give the user (it carries the code and the server's key fingerprint) and its QR code.
    Enrol {
        /// The subscriber.
        user: String,
        /// Lifetime of the code in seconds (server default if absent).
        #[arg(long)]
        ttl_secs: Option<u64>,
        /// Do not draw the QR code.
        #[arg(long)]
        no_qr: bool,
    },
    /// The server's domain, TLS key fingerprint and endpoints.
    Server,
    /// Enrolled phones.
    #[command(subcommand)]
    Devices(DeviceCmd),
    /// Security events (refused proofs, lockouts, refused enrolments).
    Events {
        /// Only events after this id (the cursor a previous page printed).
        #[arg(long, visible_alias = "since", default_value_t = 0)]
        after: i64,
        /// Events per page (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Call detail records and billing totals.
    Cdrs {
        /// Start (YYYY-MM-DD or Unix ms).
        #[arg(long)]
        from: Option<String>,
        /// End, exclusive (YYYY-MM-DD or Unix ms).
        #[arg(long)]
        to: Option<String>,
        /// Billing entity.
        #[arg(long)]
        entity: Option<String>,
    },
}

#[derive(Debug, clap::Subcommand)]
enum SubscriberCmd {
    /// List subscribers.
    List,
    /// Show one subscriber and its live registrations.
    Show {
        /// User name.
        user: String,
    },
    /// Create a subscriber.
    Add {
        /// User name.
        user: String,
        /// SIP password.
        #[arg(long, env = "TRUSTRING_SUBSCRIBER_PASSWORD", hide_env_values = true)]
        password: String,
        /// Enterprise (billing entity for VoIP legs).
        #[arg(long)]
        enterprise: String,
    },
    /// Delete a subscriber (their phones are revoked).
    Delete {
        /// User name.
        user: String,
    },
}

#[derive(Debug, clap::Subcommand)]
enum PoolCmd {
    /// Free / assigned / quarantined counts.
    Show,
    /// Load a range FIRST..LAST (or single identifiers with --list).
    Load {
        /// `+15550100000..+15550109999`, or identifiers with --list.
        spec: Vec<String>,
        /// Treat the arguments as a list of identifiers.
        #[arg(long)]
        list: bool,
    },
    /// Put identifiers quarantined at least this long ago back into the pool.
    Release {
        /// Minimum age in seconds.
        #[arg(long, default_value_t = 0)]
        min_age_secs: u64,
    },
}

#[derive(Debug, clap::Subcommand)]
enum EulaCmd {
    /// List versions (the newest is current).
    List,
    /// Publish a version from a text file.
    Publish {
        /// Version label.
        version: String,
        /// File with the agreement text.
        #[arg(long)]
        file: PathBuf,
    },
}

#[derive(Debug, clap::Subcommand)]
enum DeviceCmd {
    /// List phones (of one subscriber with --user).
    List {
        /// Only this subscriber's phones.
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a phone: non-payment, left-enterprise, eula-violation or lost.
    Revoke {
        /// Device id.
        id: String,
        /// Reason.
        #[arg(long)]
        reason: String,
    },
    /// Switch a phone's single-number service on or off.
    Service {
        /// Device id.
        id: String,
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Set a phone's own number (E.164, rung through the gateway), or `none` to clear it.
    Number {
        /// Device id.
        id: String,
        /// E.164 number, e.g. +15551230001, or `none`.
        number: String,
    },
}

pub(crate) struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Client {
    /// A client of the API at `base` with the admin `token`: plain HTTP for `http://`, HTTPS
    /// with the server key `pin` for `https://` (required then).
    pub(crate) fn new(base: &str, token: &str, pin: Option<Fingerprint>) -> anyhow::Result<Self> {
        let base = base.trim().trim_end_matches('/').to_owned();
        let agent = if base.to_ascii_lowercase().starts_with("https://") {
            let pin = pin.with_context(|| {
                format!("{base}: HTTPS needs the server's key fingerprint (--tls-fingerprint)")
            })?;
            crate::pinned::agent(pin)?
        } else {
            ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(15)))
                .http_status_as_error(false)
                .build()
                .into()
        };
        Ok(Self {
            base,
            token: token.to_owned(),
            agent,
        })
    }

    /// One API call; a non-2xx answer is an error carrying the API's message.
    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let mut resp = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("authorization", &auth).call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("authorization", &auth)
                .call(),
            (m, body) => {
                let bytes = serde_json::to_vec(&body.unwrap_or(Value::Null))?;
                let req = match m {
                    "PUT" => self.agent.put(&url),
                    _ => self.agent.post(&url),
                };
                req.header("authorization", &auth)
                    .header("content-type", "application/json")
                    .send(bytes.as_slice())
            }
        }
        .map_err(|e| match crate::pinned::refusal(&e) {
            Some(refusal) => anyhow::anyhow!("{}: {refusal}", self.base),
            None => anyhow::Error::new(e).context(format!("reaching {}", self.base)),
        })?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string()?;
        if !(200..300).contains(&status) {
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| {
                    Some(format!(
                        "{} ({})",
                        v["error"]["message"].as_str()?,
                        v["error"]["code"].as_str()?
                    ))
                })
                .unwrap_or(text);
            bail!("{method} {path}: {status}: {msg}");
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).context("the API answered something that is not JSON")
    }
}

fn token(a: &AdminArgs) -> anyhow::Result<String> {
    if let Ok(t) = std::env::var("TRUSTRING_ADMIN_TOKEN")
        && !t.trim().is_empty()
    {
        return Ok(t.trim().to_owned());
    }
    let path = a.data.join("admin-token");
    let t = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no TRUSTRING_ADMIN_TOKEN and cannot read {} (use --data)",
            path.display()
        )
    })?;
    Ok(t.trim().to_owned())
}

/// The server key to pin for an `https://` API: the flag, else `DATA/tls/cert.pem`'s.
fn pin(a: &AdminArgs) -> anyhow::Result<Option<Fingerprint>> {
    if !a.server.trim().to_ascii_lowercase().starts_with("https://") {
        return Ok(None);
    }
    if let Some(fp) = &a.tls_fingerprint {
        return Ok(Some(fp.parse()?));
    }
    let cert = a.data.join("tls").join(tls::CERT_FILE);
    let first = {
        use tls::pki_types::pem::PemObject as _;
        tls::pki_types::CertificateDer::pem_file_iter(&cert)
            .ok()
            .and_then(|mut certs| certs.next())
            .and_then(Result::ok)
    }
    .with_context(|| {
        format!(
            "no --tls-fingerprint and no certificate at {} (use --data, or give the \
             fingerprint `trustring serve` logged)",
            cert.display()
        )
    })?;
    Ok(Some(tls::spki_fingerprint(&first)?))
}

/// Minimal percent-encoding for a query value.
fn q(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(crate) fn run(a: AdminArgs) -> anyhow::Result<()> {
    let client = Client::new(&a.server, &token(&a)?, pin(&a)?)?;
    let (value, table) = match &a.command {
        AdminCommand::Subscribers(c) => match c {
            SubscriberCmd::List => {
                let v = client.call("GET", "/api/v1/subscribers", None)?;
                let t = rows(&v, &["user", "aor", "enterprise", "ring_timeout_secs"]);
                (v, t)
            }
            SubscriberCmd::Show { user } => {
                let sub = client.call("GET", &format!("/api/v1/subscribers/{}", q(user)), None)?;
                let regs = client.call(
                    "GET",
                    &format!("/api/v1/subscribers/{}/registrations", q(user)),
                    None,
                )?;
                let mut t = rows(&json!([sub.clone()]), &["user", "aor", "enterprise"]);
                t.push_str("\nregistrations:\n");
                t.push_str(&rows(
                    &regs,
                    &["contact", "transport", "source", "expires_in_secs", "q"],
                ));
                (json!({ "subscriber": sub, "registrations": regs }), t)
            }
            SubscriberCmd::Add {
                user,
                password,
                enterprise,
            } => {
                let v = client.call(
                    "POST",
                    "/api/v1/subscribers",
                    Some(json!({ "user": user, "password": password, "enterprise": enterprise })),
                )?;
                let t = format!("created {}\n", v["aor"].as_str().unwrap_or(user));
                (v, t)
            }
            SubscriberCmd::Delete { user } => {
                client.call("DELETE", &format!("/api/v1/subscribers/{}", q(user)), None)?;
                (json!({ "deleted": user }), format!("deleted {user}\n"))
            }
        },
        AdminCommand::Pool(c) => {
            let v = match c {
                PoolCmd::Show => client.call("GET", "/api/v1/pools/numbers", None)?,
                PoolCmd::Load { spec, list } => {
                    let body = if *list {
                        json!({ "identifiers": spec })
                    } else {
                        let [range] = spec.as_slice() else {
                            bail!("give one range FIRST..LAST (or --list with identifiers)");
                        };
                        json!({ "range": range })
                    };
                    client.call("POST", "/api/v1/pools/numbers", Some(body))?
                }
                PoolCmd::Release { min_age_secs } => client.call(
                    "POST",
                    "/api/v1/pools/numbers/release",
                    Some(json!({ "min_age_secs": min_age_secs })),
                )?,
            };
            let t = kv(&v);
            (v, t)
        }
        AdminCommand::Eulas(c) => match c {
            EulaCmd::List => {
                let v = client.call("GET", "/api/v1/eulas", None)?;
                let t = rows(&v, &["version", "published_at_ms"]);
                (v, t)
            }
            EulaCmd::Publish { version, file } => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let v = client.call(
                    "POST",
                    "/api/v1/eulas",
                    Some(json!({ "version": version, "text": text })),
                )?;
                (v, format!("published EULA {version} (now current)\n"))
            }
        },
        AdminCommand::Enrol {
            user,
            ttl_secs,
            no_qr,
        } => {
            let body = ttl_secs.map(|t| json!({ "ttl_secs": t }));
            let v = client.call(
                "POST",
                &format!("/api/v1/subscribers/{}/enrolments", q(user)),
                body.or(Some(json!({}))),
            )?;
            let t = enrolment_text(user, &v, !*no_qr);
            (v, t)
        }
        AdminCommand::Server => {
            let v = client.call("GET", "/api/v1/server", None)?;
            let t = kv(&v);
            (v, t)
        }
        AdminCommand::Devices(c) => match c {
            DeviceCmd::List { user } => {
                let path = match user {
                    Some(u) => format!("/api/v1/devices?user={}", q(u)),
                    None => "/api/v1/devices".to_owned(),
                };
                let v = client.call("GET", &path, None)?;
                let t = rows(
                    &v,
                    &[
                        "id",
                        "user",
                        "security_level",
                        "status",
                        "revoked_reason",
                        "service_on",
                        "number",
                    ],
                );
                (v, t)
            }
            DeviceCmd::Revoke { id, reason } => {
                let v = client.call(
                    "POST",
                    &format!("/api/v1/devices/{}/revoke", q(id)),
                    Some(json!({ "reason": reason })),
                )?;
                (v, format!("revoked {id} ({reason})\n"))
            }
            DeviceCmd::Service { id, state } => {
                let v = client.call(
                    "PUT",
                    &format!("/api/v1/devices/{}/service", q(id)),
                    Some(json!({ "on": state == "on" })),
                )?;
                (v, format!("service {state} for {id}\n"))
            }
            DeviceCmd::Number { id, number } => {
                let n = (number != "none").then_some(number.as_str());
                let v = client.call(
                    "PUT",
                    &format!("/api/v1/devices/{}/number", q(id)),
                    Some(json!({ "number": n })),
                )?;
                (v, format!("number {number} for {id}\n"))
            }
        },
        AdminCommand::Events { after, limit } => {
            let v = client.call(
                "GET",
                &format!("/api/v1/security-events?after={after}&limit={limit}"),
                None,
            )?;
            let mut t = rows(
                &v["events"],
                &["id", "at_ms", "kind", "user", "device_id", "detail"],
            );
            if let Some(next) = v["next"].as_i64() {
                t.push_str(&format!("more: --after {next}\n"));
            }
            (v, t)
        }
        AdminCommand::Cdrs { from, to, entity } => {
            let mut query = Vec::new();
            for (k, v) in [("from", from), ("to", to), ("entity", entity)] {
                if let Some(v) = v {
                    query.push(format!("{k}={}", q(v)));
                }
            }
            let path = if query.is_empty() {
                "/api/v1/cdrs".to_owned()
            } else {
                format!("/api/v1/cdrs?{}", query.join("&"))
            };
            let v = client.call("GET", &path, None)?;
            let mut t = rows(
                &v["records"],
                &[
                    "id",
                    "call_id",
                    "caller",
                    "called",
                    "final_status",
                    "duration_ms",
                    "released_by",
                ],
            );
            t.push_str("\ntotals:\n");
            t.push_str(&rows(
                &v["totals"],
                &["entity", "calls", "billable_secs", "amount"],
            ));
            (v, t)
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{table}");
    }
    Ok(())
}

/// What `admin enrol` prints: the code, the URI to hand over and its QR code.
fn enrolment_text(user: &str, v: &Value, qr: bool) -> String {
    let mut t = format!(
        "enrolment code for {user}: {} (valid once, until {} ms)\n",
        v["code"].as_str().unwrap_or("?"),
        v["expires_at_ms"]
    );
    let Some(uri) = v["uri"].as_str() else {
        t.push_str("(this server has no enrolment endpoint: no enrolment URI)\n");
        return t;
    };
    t.push_str(&format!(
        "enrolment URI (give it to the user; on the phone: trustring device enroll --zone ZONE \
         'URI'):\n{uri}\n"
    ));
    if qr
        && let Some(code) = uri
            .parse::<api::EnrolUri>()
            .ok()
            .and_then(|u| u.qr_terminal())
    {
        t.push_str(&code);
        t.push('\n');
    }
    t
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A table of `cols` for the array `v`, columns padded to their widest cell.
fn rows(v: &Value, cols: &[&str]) -> String {
    let items = v.as_array().cloned().unwrap_or_default();
    let mut grid: Vec<Vec<String>> = vec![cols.iter().map(|c| c.to_uppercase()).collect()];
    for it in &items {
        grid.push(cols.iter().map(|c| cell(&it[*c])).collect());
    }
    let widths: Vec<usize> = (0..cols.len())
        .map(|i| grid.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &grid {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if items.is_empty() {
        out.push_str("(none)\n");
    }
    out
}

/// `key: value` lines of an object.
fn kv(v: &Value) -> String {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| format!("{k}: {}\n", cell(v)))
                .collect()
        })
        .unwrap_or_else(|| format!("{v}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_and_mark_empty() {
        let v = json!([{"a": "x", "b": 1}, {"a": "longer", "b": null}]);
        assert_eq!(rows(&v, &["a", "b"]), "A       B\nx       1\nlonger  -\n");
        assert_eq!(rows(&json!([]), &["a"]), "A\n(none)\n");
        assert_eq!(q("a b+c"), "a%20b%2Bc");
    }
}
