//! Checks responses against the HTTP API's own description,
//! `docs/openapi.yaml`: the status must be listed for the operation, the
//! content type must be one it lists, and a JSON body must validate against
//! its schema (JSON Schema 2020-12, formats checked). The application's
//! test helpers ([`super::app::App`]) check every response they get, so
//! every end-to-end test checks the description too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Map, Value};

fn spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml");
        let text = std::fs::read_to_string(path).expect("docs/openapi.yaml");
        serde_norway::from_str(&text).expect("docs/openapi.yaml is YAML")
    })
}

/// Follows a local `$ref` (`#/components/...`).
fn deref(v: &Value) -> &Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => spec()
            .pointer(r.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("openapi: dangling $ref {r}")),
        None => v,
    }
}

/// The path template matching `path`, the one with most literal segments.
fn template(path: &str) -> Option<&'static str> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    spec()["paths"]
        .as_object()?
        .keys()
        .filter_map(|t| {
            let tsegs: Vec<&str> = t.trim_start_matches('/').split('/').collect();
            if tsegs.len() != segs.len() {
                return None;
            }
            let mut literal = 0;
            for (a, b) in tsegs.iter().zip(&segs) {
                if a.starts_with('{') {
                    if b.is_empty() {
                        return None;
                    }
                } else if a == b {
                    literal += 1;
                } else {
                    return None;
                }
            }
            Some((literal, t.as_str()))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, t)| t)
}

fn validator(key: String, schema: &Value) -> Arc<jsonschema::Validator> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<jsonschema::Validator>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(v) = cache.lock().unwrap().get(&key) {
        return v.clone();
    }
    // The schema at the root, beside the components its `$ref`s name.
    let mut root: Map<String, Value> = match schema {
        Value::Object(m) => m.clone(),
        other => panic!("openapi: {key}: schema is not an object: {other}"),
    };
    root.insert("components".into(), spec()["components"].clone());
    let v = Arc::new(
        jsonschema::options()
            .should_validate_formats(true)
            .build(&Value::Object(root))
            .unwrap_or_else(|e| panic!("openapi: {key}: the schema does not compile: {e}")),
    );
    cache.lock().unwrap().insert(key, v.clone());
    v
}

/// Panics, naming the difference, unless the response conforms.
pub fn check(method: &str, path: &str, status: u16, content_type: &str, body: &str) {
    let what = format!("{method} {path} -> {status}");
    let op = template(path).and_then(|t| spec()["paths"][t].get(method.to_ascii_lowercase()).map(|op| (t, op)));
    let Some((tpl, op)) = op else {
        // A route the API does not have: the catch-all 404.
        assert_eq!(status, 404, "openapi: {what}: no such operation, and not a 404");
        let schema = spec().pointer("/components/schemas/Error").unwrap();
        let body: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("openapi: {what}: not JSON: {body}"));
        let v = validator("#/components/schemas/Error".into(), schema);
        if let Err(e) = v.validate(&body) {
            panic!("openapi: {what}: {e} at {}; body: {body}", e.instance_path());
        }
        return;
    };
    let responses = &op["responses"];
    let response = responses
        .get(status.to_string())
        .or_else(|| responses.get("default"))
        .map(deref)
        .unwrap_or_else(|| panic!("openapi: {what}: status {status} is not documented for {method} {tpl}"));
    let Some(content) = response.get("content").and_then(Value::as_object) else {
        return;
    };
    let media = content_type.split(';').next().unwrap_or_default().trim();
    let Some(entry) = content.get(media) else {
        panic!(
            "openapi: {what}: content type `{content_type}` is not one of {:?}",
            content.keys().collect::<Vec<_>>()
        );
    };
    if media != "application/json" {
        return;
    }
    let body: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("openapi: {what}: not JSON: {body}"));
    let key = format!("{tpl} {method} {status} {media}");
    let v = validator(key, &entry["schema"]);
    if let Err(e) = v.validate(&body) {
        panic!("openapi: {what}: {e} at {}; body: {body}", e.instance_path());
    }
}
