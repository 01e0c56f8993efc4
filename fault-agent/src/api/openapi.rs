//! The API's OpenAPI 3.0 document, generated from the Rust types (schemars) and served at
//! `GET /openapi.json`. The repository keeps a copy in `docs/openapi.json`; a test fails when
//! it drifts (regenerate with `fault-agent openapi > docs/openapi.json`).
use fault_api::{
    ErrorBody, Fault, FaultList, FaultSpec,
    fault::{CleanupRequest, CleanupResponse},
    kill_switch::{KillSwitch, KillSwitchRequest},
    seed::{CleanupResult, InjectRequest, SeedFault, SeedFaultList},
};
use schemars::{JsonSchema, SchemaGenerator, generate::SchemaSettings};
use serde_json::{Value, json};

pub(super) fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Value {
    serde_json::to_value(generator.subschema_for::<T>()).unwrap_or(Value::Null)
}

pub(super) fn body(schema: Value) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": schema}}})
}

pub(super) fn ok(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

/// The whole document.
pub fn document() -> Value {
    let mut g = SchemaSettings::openapi3().into_generator();
    let spec = schema::<FaultSpec>(&mut g);
    let fault = schema::<Fault>(&mut g);
    let list = schema::<FaultList>(&mut g);
    let cleanup_req = schema::<CleanupRequest>(&mut g);
    let cleanup_res = schema::<CleanupResponse>(&mut g);
    let error = schema::<ErrorBody>(&mut g);
    let ks_req = schema::<KillSwitchRequest>(&mut g);
    let ks = schema::<KillSwitch>(&mut g);
    let inject = schema::<InjectRequest>(&mut g);
    let seed_fault = schema::<SeedFault>(&mut g);
    let seed_list = schema::<SeedFaultList>(&mut g);
    let seed_cleanup = schema::<CleanupResult>(&mut g);
    let verification = schema::<fault_api::Verification>(&mut g);
    let plan = schema::<fault_api::FaultPlan>(&mut g);
    // Every route but health: the request limits (src/api/limits.rs).
    let limited = [
        ("413", "Body over --max-body-bytes (`too_large`)"),
        (
            "429",
            "Over --rate-limit (`rate_limited`; `Retry-After` says when to retry)",
        ),
        (
            "503",
            "--max-concurrent-requests requests being served (`overloaded`; `Retry-After`)",
        ),
        (
            "504",
            "No answer within --request-timeout (`timeout`); a write that had begun is finished",
        ),
    ];
    let errors = |codes: &[(&str, &str)]| -> Value {
        codes
            .iter()
            .chain(limited.iter())
            .map(|(c, d)| (c.to_string(), ok(d, error.clone())))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let with = |mut base: Value, extra: Value| {
        if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        base
    };
    let id_param = |name: &str| json!([{"name": name, "in": "path", "required": true, "schema": {"type": "string"}}]);
    let invalid = [
        ("400", "Malformed body (field `body`)"),
        (
            "422",
            "Invalid field (named in `error.field`), or unsupported on this kernel",
        ),
        (
            "409",
            "Conflicts with other faults (`conflict`), or a limit would be exceeded (`capacity`: --max-faults, --max-rules-per-fault, a map's room); nothing was written",
        ),
        (
            "412",
            "A pre-flight check failed (`preflight_failed`: the message names the check and what it measured); nothing was applied",
        ),
    ];
    let missing = [
        ("404", "No such fault"),
        (
            "409",
            "Cluster API: the name is used in several namespaces; give namespace/name (`/` as `%2F`)",
        ),
    ];
    let schedule_paths = super::schedules::openapi_paths(&mut g, &errors(&[]), &error);
    let definitions = g.take_definitions(true);
    let mut doc = json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Faultline agent API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Network faults between pods. /v1 is Faultline's native API; /api/v1 is the Fault Injection API existing test suites speak. With --token-file every endpoint but the health ones needs `Authorization: Bearer <token>` (401 without a token, 403 with another). Every endpoint but the health ones is limited in body size (413), rate (429), concurrency (503) and time (504), each answered with the JSON error body before anything is written."
        },
        "paths": {
            "/v1/faults": {
                "get": {"summary": "List faults, newest first", "parameters": [{"name": "namespace", "in": "query", "required": false, "schema": {"type": "string"}}],
                        "responses": with(json!({"200": ok("Faults", list)}), errors(&[]))},
                "post": {"summary": "Create a fault; with ?verify=true, probe it once applied (the report is the answer's `verification`; a verify that cannot run is a warning); with ?dryRun=true, answer the plan (targets and peers per node, rule count, blast radius, the guards it would trip) and apply nothing", "requestBody": body(spec),
                         "parameters": [{"name": "verify", "in": "query", "required": false, "schema": {"type": "boolean"}},
                                        {"name": "dryRun", "in": "query", "required": false, "schema": {"type": "boolean"}}],
                         "responses": with(json!({"201": ok("Created and in the datapath", fault.clone()), "200": ok("?dryRun=true: the plan; nothing applied", plan)}), errors(&invalid))}
            },
            "/v1/faults/{id}": {
                "get": {"summary": "One fault", "parameters": id_param("id"), "responses": with(json!({"200": ok("The fault", fault.clone())}), errors(&missing))},
                "delete": {"summary": "Recover a fault now (traffic is whole again when this returns)", "parameters": id_param("id"),
                           "responses": with(json!({"200": ok("The fault, recovered", fault.clone())}), errors(&missing))}
            },
            "/v1/faults/{id}/recover": {
                "post": {"summary": "Recover a fault now", "parameters": id_param("id"), "responses": with(json!({"200": ok("The fault, recovered", fault.clone())}), errors(&missing))}
            },
            "/v1/faults/{id}/verify": {
                "post": {"summary": "Probe an active fault from its pods' network namespaces (ICMP echo, TCP SYN, UDP; at most 8 pairs, 50 echoes each, about a second) and say per pair whether it does what it should; standalone agents only for now",
                         "parameters": id_param("id"),
                         "responses": with(json!({"200": ok("The report (`outcome` verified or not_verified)", verification)}), errors(&[("404", "No such fault"), ("409", "The fault is not active"), ("422", "The fault's port is DNS or NATS, which is never probed"), ("501", "Cluster API: verify runs in standalone mode for now")]))}
            },
            "/v1/faults/cleanup": {
                "post": {"summary": "Recover every fault of a namespace (or all)", "requestBody": body(cleanup_req),
                         "responses": with(json!({"200": ok("Recovered ids", cleanup_res)}), errors(&invalid[..2]))}
            },
            "/v1/kill-switch": {
                "get": {"summary": "The kill switch: engaged or not, who last engaged and lifted it", "responses": with(json!({"200": ok("The switch", ks.clone())}), errors(&[]))},
                "post": {"summary": "Engage the kill switch: the datapath passes every packet from now on, whatever faults are held (faults keep their deadlines); records who, why, when, from where. On the cluster API: writes the ConfigMap every node agent follows (`faultline-kill-switch`)",
                         "requestBody": body(ks_req.clone()), "responses": with(json!({"200": ok("The switch, engaged", ks.clone())}), errors(&invalid[..2]))},
                "delete": {"summary": "Lift the kill switch: faults that did not expire act again", "requestBody": body(ks_req),
                           "responses": with(json!({"200": ok("The switch, lifted", ks)}), errors(&invalid[..2]))}
            },
            "/v1/pods": {"get": {"summary": "Pods the agent knows, their addresses and host veths", "responses": {"200": {"description": "Pods"}}}},
            "/v1/capabilities": {"get": {"summary": "Kernel capabilities and loaded programs (with run-time stats)", "responses": {"200": {"description": "Capabilities"}, "501": {"description": "The cluster API (`fault-agent api`): no datapath of its own; ask a node agent"}}}},
            "/api/v1/faults/network/inject": {
                "post": {"summary": "Inject a network fault (Fault Injection API)", "requestBody": body(inject),
                         "responses": with(json!({"200": ok("The fault", seed_fault.clone())}), errors(&invalid))}
            },
            "/api/v1/faults": {"get": {"summary": "List faults (Fault Injection API)", "responses": with(json!({"200": ok("Faults", seed_list)}), errors(&[]))}},
            "/api/v1/faults/{fault_id}": {
                "get": {"summary": "One fault (Fault Injection API)", "parameters": id_param("fault_id"), "responses": with(json!({"200": ok("The fault", seed_fault.clone())}), errors(&missing))}
            },
            "/api/v1/faults/{fault_id}/recover": {
                "post": {"summary": "Recover a fault (Fault Injection API)", "parameters": id_param("fault_id"), "responses": with(json!({"200": ok("The fault", seed_fault)}), errors(&missing))}
            },
            "/api/v1/faults/network/cleanup": {
                "post": {"summary": "Recover every fault of a namespace (Fault Injection API)",
                         "parameters": [{"name": "namespace", "in": "query", "required": true, "schema": {"type": "string"}}],
                         "responses": with(json!({"200": ok("Cleaned up", seed_cleanup)}), errors(&invalid[1..2]))}
            },
            "/health": {"get": {"summary": "Health (Fault Injection API)", "security": [], "responses": {"200": {"description": "{\"status\": \"healthy\"}"}}}},
            "/healthz": {"get": {"summary": "Liveness: syncs have not kept failing past --liveness-threshold (outside the request limits)", "security": [], "responses": {"200": {"description": "ok"}, "503": {"description": "unhealthy, and why"}}}},
            "/readyz": {"get": {"summary": "Readiness: a sync succeeded, the last one too, and the datapath is attached (outside the request limits)", "security": [], "responses": {"200": {"description": "ready"}, "503": {"description": "not ready, and why"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (OpenMetrics text): per-fault kernel counters of live faults, faults by phase, map fill, latencies; every series is listed in DEVELOPERS.md, Metrics",
                                 "responses": with(json!({"200": {"description": "OpenMetrics text", "content": {"application/openmetrics-text": {"schema": {"type": "string"}}}}}), errors(&[]))}},
            "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI 3.0 document"}}}}
        },
        "components": {
            "schemas": definitions,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        },
        "security": [{"bearer": []}]
    });
    if let (Some(paths), Value::Object(more)) = (doc["paths"].as_object_mut(), schedule_paths) {
        paths.extend(more);
    }
    doc
}

#[cfg(test)]
mod tests {
    /// The copy in the repository is what the code generates.
    #[test]
    fn docs_openapi_json_matches_the_types() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
        let generated = serde_json::to_string_pretty(&super::document()).unwrap() + "\n";
        let kept = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            kept == generated,
            "docs/openapi.json is stale: regenerate it with `cargo run -p fault-agent -- openapi > docs/openapi.json`"
        );
    }
}
