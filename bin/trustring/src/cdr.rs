//! Call detail records (SPEC R18, R19): turning the proxy's call records into stored CDRs,
//! and `trustring cdr verify|export|public-key|head` (`docs/cdr.md`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use api::parse_time;
use sip_core::proxy::{CallRecord, LegType};
use store::billing::{Rates, totals};
use store::signing::{HEAD_FILE, KEY_FILE};
use store::{Cdr, CdrLeg, CdrPublicKey, CdrSigner, SignedHead};

/// `trustring cdr` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum CdrCommand {
    /// Check every record (hash chain, stored columns, billing-entity rows, signatures) and
    /// the signed heads; exit 1 naming the first record that was changed, added or removed.
    Verify(VerifyArgs),
    /// Print the records of a period and the totals per billing entity.
    Export(ExportArgs),
    /// Print the public key that signs the records (hex), to keep outside the data directory
    /// for `cdr verify --public-key`.
    PublicKey(DataArgs),
    /// Print the signed head (the newest record's id and hash, signed), to keep elsewhere for
    /// `cdr verify --head`: a later truncation back before it is then detected.
    Head(DataArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct DataArgs {
    /// Data directory (the server's, or the gateway's for its leg records): the signing key
    /// and the signed head, and the SQLite database unless --db names another store.
    #[arg(long, default_value = "./trustring-data", env = "TRUSTRING_DATA")]
    data: PathBuf,
    /// The store the server was given (`serve --db`): a `postgres://` URL or a SQLite path.
    /// Default: DATA/trustring.db.
    #[arg(long, env = "TRUSTRING_DB")]
    db: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    data: DataArgs,
    /// The signing public key: 64 hex digits, or a file holding them (what `cdr public-key`
    /// printed, kept outside the data directory). Default: the key in the data directory
    /// itself, which proves nothing against someone who could rewrite that directory.
    #[arg(long, value_name = "FILE|HEX")]
    public_key: Option<String>,
    /// A signed head kept elsewhere (what `cdr head` printed), checked like DATA/cdr-head;
    /// repeatable.
    #[arg(long, value_name = "FILE")]
    head: Vec<PathBuf>,
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
        sig: None,
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
        CdrCommand::Verify(a) => verify(&a),
        CdrCommand::Export(a) => export(a),
        CdrCommand::PublicKey(a) => {
            let signer = CdrSigner::load(&a.data)?.with_context(|| {
                format!(
                    "no signing key at {} (the server or gateway makes it on its first start)",
                    a.data.join(KEY_FILE).display()
                )
            })?;
            println!("{}", signer.public_key());
            Ok(())
        }
        CdrCommand::Head(a) => {
            let path = a.data.join(HEAD_FILE);
            let head = SignedHead::read(&path)?
                .with_context(|| format!("no signed head at {}", path.display()))?;
            println!("{}", serde_json::to_string(&head)?);
            Ok(())
        }
    }
}

/// `--public-key`: 64 hex digits, or a file holding them.
fn public_key_arg(arg: &str) -> anyhow::Result<CdrPublicKey> {
    let text = if arg.len() == 64 && arg.bytes().all(|b| b.is_ascii_hexdigit()) {
        arg.to_owned()
    } else {
        std::fs::read_to_string(arg).with_context(|| format!("--public-key: reading {arg}"))?
    };
    text.parse()
        .with_context(|| format!("--public-key {arg}: expected 64 hex digits"))
}

/// The store of `a`: `--db`, else the SQLite file under the data directory (which must
/// exist: reading CDRs never creates a database).
fn open(a: &DataArgs) -> anyhow::Result<store::Backend> {
    let db = match &a.db {
        Some(db) => db.clone(),
        None => {
            let file = a.data.join("trustring.db");
            if !file.exists() {
                bail!("no database at {}", file.display());
            }
            file.to_string_lossy().into_owned()
        }
    };
    store::Backend::open(&db).with_context(|| format!("opening {}", store::redact_url(&db)))
}

fn verify(a: &VerifyArgs) -> anyhow::Result<()> {
    let data = &a.data.data;
    let store = open(&a.data)?;
    let (key, key_note) = match &a.public_key {
        Some(arg) => (Some(public_key_arg(arg)?), "the key given".to_owned()),
        None => match CdrSigner::load(data)? {
            Some(s) => (
                Some(s.public_key()),
                format!(
                    "the key in {} (pass --public-key, kept elsewhere, for evidence against \
                     someone who could rewrite that directory)",
                    data.join(KEY_FILE).display()
                ),
            ),
            None => (None, String::new()),
        },
    };
    let mut heads = Vec::new();
    let head_path = data.join(HEAD_FILE);
    let mut head_missing = false;
    match SignedHead::read(&head_path)? {
        Some(h) => heads.push((head_path.display().to_string(), h)),
        // Once there is a key, the head is always there (written with the key, then with
        // every record).
        None => head_missing = key.is_some(),
    }
    for path in &a.head {
        let h = SignedHead::read(path)?
            .with_context(|| format!("--head: no such file {}", path.display()))?;
        heads.push((path.display().to_string(), h));
    }
    let r = store
        .verify_cdrs_with(key.as_ref(), &heads)
        .context("reading the CDRs")?;
    if let Some((id, why)) = &r.first_bad {
        println!("CDR {id}: {why}");
    }
    if head_missing {
        println!(
            "{}: missing. It is rewritten with every record, so it was removed; without it \
             (or a head kept elsewhere, --head) removed newest records cannot be told",
            head_path.display()
        );
    }
    if let Some((id, _)) = r.first_bad {
        bail!("CDR hash chain broken at record {id}");
    }
    if head_missing {
        bail!("CDR signed head missing");
    }
    println!(
        "{} CDR(s): hash chain intact; stored columns and billing-entity rows match",
        r.records
    );
    match &key {
        Some(k) => println!(
            "signatures: {} record(s) signed, every signature valid, by {k} ({key_note})",
            r.signed
        ),
        None => println!(
            "signatures NOT checked: no --public-key, and no {}",
            data.join(KEY_FILE).display()
        ),
    }
    if let Some((first, last)) = r.unsigned {
        if key.is_some() {
            println!(
                "unsigned legacy records {first}..{last} (written before signing began; \
                 covered by the signed head that anchored them)"
            );
        } else {
            println!(
                "unsigned records {first}..{last} (legacy, written before signing began, or \
                 stripped: only a signed head vouches for them)"
            );
        }
    }
    let newest = r.last.as_ref().map_or(0, |l| l.0);
    for (from, id) in &r.heads {
        let after = if *id < newest {
            format!("records {}..{newest} came after it", id + 1)
        } else {
            "it names the newest record".to_owned()
        };
        println!(
            "signed head {from}: record {id}, matches{}; {after}",
            if key.is_some() {
                ""
            } else {
                " (its signature NOT checked)"
            }
        );
    }
    Ok(())
}

fn export(a: ExportArgs) -> anyhow::Result<()> {
    let from = a.from.as_deref().map(parse_time).transpose()?.unwrap_or(0);
    let to =
        a.to.as_deref()
            .map(parse_time)
            .transpose()?
            .unwrap_or(i64::MAX);
    let store = open(&a.data)?.into_store();
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
            // The signed head, to keep with the billing run as an anchor (`cdr verify --head`).
            let head = SignedHead::read(&a.data.data.join(HEAD_FILE))?;
            let out =
                serde_json::json!({ "records": cdrs, "totals": t, "rates": rates, "head": head });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Format::Csv => {
            let stdout = std::io::stdout();
            write_csv(stdout.lock(), &cdrs, &t).context("writing the CSV export")?;
        }
    }
    Ok(())
}

/// The CSV export (RFC 4180, quoted by the `csv` crate): one row per record, a blank line,
/// then the totals per billing entity.
fn write_csv(
    mut out: impl std::io::Write,
    cdrs: &[Cdr],
    totals: &[store::billing::EntityTotal],
) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(&mut out);
    w.write_record([
        "id",
        "call_id",
        "caller",
        "called",
        "setup_ms",
        "answer_ms",
        "end_ms",
        "duration_ms",
        "final_status",
        "released_by",
        "release_cause",
        "answering_leg",
        "legs",
        "billing_entity",
        "hash",
    ])?;
    for c in cdrs {
        let answered = c.answered_by.and_then(|i| c.legs.get(i));
        let answering = answered
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
        let entity = answered
            .or(c.legs.first())
            .map(|l| l.billing_entity.clone())
            .unwrap_or_default();
        w.write_record([
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
        ])?;
    }
    w.flush()?;
    drop(w);
    writeln!(out)?;
    let mut w = csv::Writer::from_writer(&mut out);
    w.write_record(["entity", "calls", "billable_secs", "amount"])?;
    for e in totals {
        w.write_record([
            e.entity.clone(),
            e.calls.to_string(),
            e.billable_secs.to_string(),
            format!("{:.4}", e.amount),
        ])?;
    }
    w.flush()?;
    Ok(())
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
    fn csv_export_quotes_only_when_needed_and_reads_back() {
        let cause = "BYE (SIP;cause=200;text=\"x, y\")";
        let totals = [store::billing::EntityTotal {
            entity: "acme, inc".into(),
            calls: 1,
            billable_secs: 60,
            amount: 0.5,
        }];
        let cdr = Cdr {
            id: 0,
            call_id: String::new(),
            caller: String::new(),
            called: String::new(),
            setup_ms: 0,
            answer_ms: None,
            end_ms: 0,
            duration_ms: 0,
            final_status: 487,
            released_by: "caller".into(),
            release_cause: cause.into(),
            answered_by: None,
            legs: Vec::new(),
            prev_hash: String::new(),
            hash: String::new(),
            sig: None,
        };
        let mut out = Vec::new();
        write_csv(&mut out, std::slice::from_ref(&cdr), &totals).expect("written");
        let text = String::from_utf8(out).expect("UTF-8");
        assert!(
            text.contains("\"BYE (SIP;cause=200;text=\"\"x, y\"\")\""),
            "{text}"
        );
        assert!(text.contains("\n0,,"), "plain fields unquoted: {text}");
        let (records, totals_part) = text.split_once("\n\n").expect("two sections");
        let mut r = csv::Reader::from_reader(records.as_bytes());
        let row = r.records().next().expect("one row").expect("parses");
        assert_eq!(row.get(10), Some(cause));
        let mut r = csv::Reader::from_reader(totals_part.as_bytes());
        let row = r.records().next().expect("one row").expect("parses");
        assert_eq!(row.get(0), Some("acme, inc"));
        assert_eq!(row.get(3), Some("0.5000"));
    }
}
