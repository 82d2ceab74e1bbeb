//! Arbitrary bytes as the body of the public `POST /api/v1/enrol` (the one endpoint anyone on
//! the network may send a body to): the same parsing and checks the endpoint runs before it
//! asks the store (axum's JSON extractor into the request type, `deny_unknown_fields`; the
//! EULA acceptance; the zone key's text form; the code's hash), without a server. Nothing may
//! panic; the verdict is deterministic; a refusal is one of the endpoint's 400 codes; and an
//! accepted body is a JSON object that, written out again, is accepted alike.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let verdict = api::check_enrol_body(data);
    assert_eq!(verdict, api::check_enrol_body(data), "deterministic");
    match verdict {
        Ok(level) => {
            assert!(level == "software" || level == "pkcs11", "{level}");
            let v: serde_json::Value = serde_json::from_slice(data).expect("accepted: JSON");
            assert_eq!(v["accept_eula"], true);
            assert!(v["code"].is_string() && v["eula_version"].is_string());
            let again = serde_json::to_vec(&v).expect("serializes");
            assert_eq!(api::check_enrol_body(&again), verdict, "canonical form");
        }
        Err(code) => assert!(
            ["invalid_json", "invalid_request", "invalid_body"].contains(&code),
            "unexpected error code {code}"
        ),
    }
});
