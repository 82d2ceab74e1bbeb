//! Billing totals over CDRs (SPEC R19): per billing entity, the calls it pays for, the
//! billable seconds and the rated amount at a per-minute rate per leg type.

use std::collections::BTreeMap;

use crate::Cdr;

/// Per-minute rates by leg type, as decimal amounts of the operator's currency (e.g. `0.02`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rates {
    /// Rate of VoIP legs (billed to the enterprise).
    pub voip_per_min: f64,
    /// Rate of PSTN legs through the gateway (billed to the user).
    pub pstn_per_min: f64,
}

impl Default for Rates {
    fn default() -> Self {
        Self {
            voip_per_min: 0.0,
            pstn_per_min: 0.0,
        }
    }
}

/// What one billing entity owes for a period.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EntityTotal {
    /// The billing entity (enterprise or user).
    pub entity: String,
    /// Calls with a billable (answered) leg billed to it.
    pub calls: u64,
    /// Billable seconds, rounded up per leg (telephone-exchange practice).
    pub billable_secs: u64,
    /// Rated amount, rounded to 4 decimals.
    pub amount: f64,
}

/// Totals per entity over `cdrs`, sorted by entity. Only legs with billable time count;
/// each leg's seconds are rounded up before rating.
pub fn totals(cdrs: &[Cdr], rates: Rates) -> Vec<EntityTotal> {
    let mut t = Totals::new(rates);
    for c in cdrs {
        t.add(c);
    }
    t.finish()
}

/// [`totals`] one record at a time (for a period read page by page).
#[derive(Debug, Clone)]
pub struct Totals {
    rates: Rates,
    by: BTreeMap<String, (u64, u64, f64)>,
}

impl Totals {
    /// No record yet.
    pub fn new(rates: Rates) -> Self {
        Self {
            rates,
            by: BTreeMap::new(),
        }
    }

    /// Counts one record.
    pub fn add(&mut self, c: &Cdr) {
        for leg in c.legs.iter().filter(|l| l.billable_ms > 0) {
            let secs = u64::try_from(leg.billable_ms.saturating_add(999) / 1000).unwrap_or(0);
            let rate = if leg.leg_type == "pstn" {
                self.rates.pstn_per_min
            } else {
                self.rates.voip_per_min
            };
            let e = self.by.entry(leg.billing_entity.clone()).or_default();
            e.0 += 1;
            e.1 += secs;
            e.2 += secs as f64 / 60.0 * rate;
        }
    }

    /// The totals, sorted by entity.
    pub fn finish(self) -> Vec<EntityTotal> {
        self.by
            .into_iter()
            .map(|(entity, (calls, billable_secs, amount))| EntityTotal {
                entity,
                calls,
                billable_secs,
                amount: (amount * 10_000.0).round() / 10_000.0,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CdrLeg;

    fn leg(entity: &str, kind: &str, ms: i64) -> CdrLeg {
        CdrLeg {
            contact: String::new(),
            device: None,
            leg_type: kind.into(),
            rang_at_ms: None,
            outcome: "answered".into(),
            status: Some(200),
            billing_entity: entity.into(),
            billable_ms: ms,
        }
    }

    fn cdr(legs: Vec<CdrLeg>) -> Cdr {
        Cdr {
            id: 0,
            call_id: String::new(),
            caller: String::new(),
            called: String::new(),
            setup_ms: 0,
            answer_ms: None,
            end_ms: 0,
            duration_ms: 0,
            final_status: 200,
            released_by: String::new(),
            release_cause: String::new(),
            answered_by: None,
            legs,
            prev_hash: String::new(),
            hash: String::new(),
            sig: None,
        }
    }

    #[test]
    fn rates_per_leg_type_and_rounds_seconds_up() {
        let cdrs = [
            cdr(vec![leg("acme", "voip", 60_000), leg("acme", "voip", 0)]),
            cdr(vec![leg("alice", "pstn", 30_001)]),
            cdr(vec![leg("acme", "voip", 1)]),
        ];
        let t = totals(
            &cdrs,
            Rates {
                voip_per_min: 0.02,
                pstn_per_min: 0.10,
            },
        );
        assert_eq!(t.len(), 2);
        assert_eq!(
            (t[0].entity.as_str(), t[0].calls, t[0].billable_secs),
            ("acme", 2, 61)
        );
        assert!((t[0].amount - 0.0203).abs() < 1e-9, "{}", t[0].amount);
        assert_eq!(
            (t[1].entity.as_str(), t[1].calls, t[1].billable_secs),
            ("alice", 1, 31)
        );
        assert!((t[1].amount - 0.0517).abs() < 1e-9, "{}", t[1].amount);
    }
}
