//! Call detail records (SPEC R18, R19): turning the proxy's call records into stored CDRs,
//! and `trustring cdr verify|export`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use api::parse_time;
use sip_core::proxy::{CallRecord, LegType};
use store::billing::{Rates, totals};
use store::{Cdr, CdrLeg, Store};

/// `trustring cdr` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum CdrCommand {
    /// Walk the hash chain; exit 1 naming the first record that was changed or removed.
    Verify(DataArgs),
    /// Print the records of a period and the totals per billing entity.
    Export(ExportArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct DataArgs {
    /// Data directory.
    #[arg(long, default_value = "./trustring-data", env = "TRUSTRING_DATA")]
    data: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Csv,
    Json,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ExportArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Start of the period (setup time): YYYY-MM-DD (UTC) or Unix milliseconds.
    #[arg(long)]
    from: Option<String>,
    /// End of the period, exclusive: YYYY-MM-DD (UTC) or Unix milliseconds.
    #[arg(long)]
    to: Option<String>,
    /// Only records billed (in part) to this entity.
    #[arg(long)]
    entity: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Csv)]
    format: Format,
    /// Per-minute rate of VoIP legs.
    #[arg(long, default_value_t = 0.0, env = "TRUSTRING_RATE_VOIP")]
    rate_voip: f64,
    /// Per-minute rate of PSTN legs.
    #[arg(long, default_value_t = 0.0, env = "TRUSTRING_RATE_PSTN")]
    rate_pstn: f64,
}

/// A stored CDR for a call the proxy saw end. `instant_ms` maps the core's `Instant`s to Unix
/// ms; `enterprise` is the called subscriber's: VoIP legs are billed to it, PSTN legs (through
/// the gateway to the phone's number) to the user, the called subscriber (R19).
pub(crate) fn from_call(
    r: &CallRecord,
    domain: &str,
    enterprise: &str,
    instant_ms: impl Fn(Instant) -> i64,
) -> Cdr {
    let answer_ms = r.answer_at.map(&instant_ms);
    let end_ms = instant_ms(r.end_at);
    let duration_ms = answer_ms.map_or(0, |a| (end_ms - a).max(0));
    let legs = r
        .branches
        .iter()
        .enumerate()
        .map(|(i, b)| CdrLeg {
            contact: b.contact.clone(),
            device: b.device.clone(),
            leg_type: b.leg.as_str().into(),
            rang_at_ms: b.rang_at.map(&instant_ms),
            outcome: b.outcome.map_or("failed", |o| o.as_str()).into(),
            status: b.status,
            billing_entity: match b.leg {
                LegType::Voip => enterprise.to_owned(),
                LegType::Pstn => r.called.clone(),
            },
            billable_ms: if r.answered_by == Some(i) {
                duration_ms
            } else {
                0
            },
        })
        .collect();
    Cdr {
        id: 0,
        call_id: r.call_id.clone(),
        caller: r.caller.clone(),
        called: format!("sip:{}@{domain}", r.called),
        setup_ms: instant_ms(r.setup_at),
        answer_ms,
        end_ms,
        duration_ms,
        final_status: r.final_status,
        released_by: r.released_by.as_str().into(),
        release_cause: r.release_cause.clone(),
        answered_by: r.answered_by,
        legs,
        prev_hash: String::new(),
        hash: String::new(),
    }
}

/// Maps an `Instant` to Unix ms by reading both clocks now.
pub(crate) fn instant_to_unix_ms() -> impl Fn(Instant) -> i64 {
    let (now, wall_ms) = (Instant::now(), crate::serve::unix_ms());
    move |t: Instant| {
        let back = i64::try_from(now.saturating_duration_since(t).as_millis()).unwrap_or(0);
        let ahead = i64::try_from(t.saturating_duration_since(now).as_millis()).unwrap_or(0);
        wall_ms - back + ahead
    }
}

pub(crate) fn run(cmd: CdrCommand) -> anyhow::Result<()> {
    match cmd {
        CdrCommand::Verify(a) => verify(&a.data),
        CdrCommand::Export(a) => export(a),
    }
}

fn open(data: &Path) -> anyhow::Result<store::SqliteStore> {
    let db = data.join("trustring.db");
    if !db.exists() {
        bail!("no database at {}", db.display());
    }
    store::SqliteStore::open(&db).with_context(|| format!("opening {}", db.display()))
}

fn verify(data: &Path) -> anyhow::Result<()> {
    let store = open(data)?;
    let r = store.verify_cdrs().context("reading the CDRs")?;
    match r.first_bad {
        None => {
            println!("{} CDR(s): hash chain intact", r.records);
            Ok(())
        }
        Some((id, why)) => {
            println!("CDR {id}: {why}");
            bail!("CDR hash chain broken at record {id}")
        }
    }
}

fn export(a: ExportArgs) -> anyhow::Result<()> {
    let from = a.from.as_deref().map(parse_time).transpose()?.unwrap_or(0);
    let to =
        a.to.as_deref()
            .map(parse_time)
            .transpose()?
            .unwrap_or(i64::MAX);
    let store = open(&a.data.data)?;
    let cdrs = store
        .cdrs(from, to, a.entity.as_deref())
        .context("reading the CDRs")?;
    let rates = Rates {
        voip_per_min: a.rate_voip,
        pstn_per_min: a.rate_pstn,
    };
    let t = totals(&cdrs, rates);
    match a.format {
        Format::Json => {
            let out = serde_json::json!({ "records": cdrs, "totals": t, "rates": rates });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Format::Csv => {
            println!(
                "id,call_id,caller,called,setup_ms,answer_ms,end_ms,duration_ms,final_status,released_by,release_cause,answering_leg,legs,billing_entity,hash"
            );
            for c in &cdrs {
                let answering = c
                    .answered_by
                    .and_then(|i| c.legs.get(i))
                    .map(|l| l.device.clone().unwrap_or_else(|| l.contact.clone()))
                    .unwrap_or_default();
                let legs = c
                    .legs
                    .iter()
                    .map(|l| {
                        format!(
                            "{}:{}:{}",
                            l.device.as_deref().unwrap_or(&l.contact),
                            l.leg_type,
                            l.outcome
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
                let entity = c
                    .answered_by
                    .and_then(|i| c.legs.get(i))
                    .or(c.legs.first())
                    .map(|l| l.billing_entity.clone())
                    .unwrap_or_default();
                let fields = [
                    c.id.to_string(),
                    c.call_id.clone(),
                    c.caller.clone(),
                    c.called.clone(),
                    c.setup_ms.to_string(),
                    c.answer_ms.map(|v| v.to_string()).unwrap_or_default(),
                    c.end_ms.to_string(),
                    c.duration_ms.to_string(),
                    c.final_status.to_string(),
                    c.released_by.clone(),
                    c.release_cause.clone(),
                    answering,
                    legs,
                    entity,
                    c.hash.clone(),
                ];
                println!(
                    "{}",
                    fields.iter().map(|f| csv(f)).collect::<Vec<_>>().join(",")
                );
            }
            println!();
            println!("entity,calls,billable_secs,amount");
            for e in &t {
                println!(
                    "{},{},{},{:.4}",
                    csv(&e.entity),
                    e.calls,
                    e.billable_secs,
                    e.amount
                );
            }
        }
    }
    Ok(())
}

/// RFC 4180 quoting when needed.
fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_millis() {
        assert_eq!(parse_time("1970-01-01").ok(), Some(0));
        assert_eq!(parse_time("2026-12-01").ok(), Some(1_796_083_200_000));
        assert_eq!(parse_time("1234").ok(), Some(1234));
        assert!(parse_time("2026-13-01").is_err());
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn csv_quotes_only_when_needed() {
        assert_eq!(csv("plain"), "plain");
        assert_eq!(
            csv("BYE (SIP;cause=200;text=\"x\")"),
            "\"BYE (SIP;cause=200;text=\"\"x\"\")\""
        );
    }
}
