//! JSON Schemas of the types with their own serde forms. They are written to be valid
//! Kubernetes structural schemas (one type per field, OpenAPI v3.0 keywords), since the same
//! schemas describe the `NetworkFault` CRD and the HTTP API's OpenAPI document. Where the API
//! accepts more forms than the schema states (a number of seconds for a duration, `true` for
//! a partition), the description says so.
use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

use crate::{FaultDuration, PartitionMode, Percent, Rate, Selector};

impl JsonSchema for Percent {
    fn schema_name() -> Cow<'static, str> {
        "Percent".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "number",
            "minimum": 0.0001,
            "maximum": 100,
            "description": "Percent in (0, 100], resolution 0.0001 (1 ppm). The HTTP API also accepts \"30%\"."
        })
    }
}

impl JsonSchema for FaultDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^([0-9]+(\\.[0-9]+)?(ns|us|ms|s|m|h|d) *)+$",
            "description": "A positive duration like 500ms, 30s, 5m or 1h30m (at most 7d). The HTTP API also accepts a number of seconds."
        })
    }
}

impl JsonSchema for Rate {
    fn schema_name() -> Cow<'static, str> {
        "Rate".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[0-9]+(\\.[0-9]+)?([kKmMgG]?([bB][iI][tT]|[bB][pP][sS]))?$",
            "description": "A rate in tc(8) units: bit/kbit/mbit/gbit are bits per second, bps/kbps/mbps/gbps bytes per second (1mbps = 8 Mbit/s)."
        })
    }
}

impl JsonSchema for Selector {
    fn schema_name() -> Cow<'static, str> {
        "LabelSelector".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A Kubernetes label selector: k=v, k!=v, k in (a,b), k notin (a,b), k, !k, comma-separated (ANDed). The HTTP API also accepts a map of labels."
        })
    }
}

impl JsonSchema for PartitionMode {
    fn schema_name() -> Cow<'static, str> {
        "PartitionMode".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "enum": ["packets", "connections"],
            "description": "packets: drop every matching packet; connections: drop what opens a connection (NetworkPolicy semantics). The HTTP API also accepts true (= packets)."
        })
    }
}
