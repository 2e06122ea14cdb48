//! Slack's rules for modal views (`views.open`), as the Slack fake checks
//! them: a `modal` with a plain-text title (at most 24 characters), submit
//! and close buttons (24), a `callback_id` (255) and `private_metadata`
//! (3000); at most 100 blocks, where input blocks carry a plain-text label
//! (2000), an optional hint (2000) and one `plain_text_input` whose
//! `action_id` (255), `min_length` (0..=3000) and `max_length` (1..=3000)
//! are checked; the other blocks follow the message rules
//! ([`super::slack_mock::check_blocks`]). A view with an input block needs
//! a submit button.

use serde_json::Value;

use super::slack_mock::check_blocks;

fn keys_allowed(what: &str, v: &Value, allowed: &[&str]) -> Result<(), String> {
    let obj = v.as_object().ok_or(format!("{what} is not an object"))?;
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!("{what} has an unknown key `{k}`")),
        None => Ok(()),
    }
}

fn plain(what: &str, v: &Value, max: usize) -> Result<(), String> {
    keys_allowed(what, v, &["type", "text", "emoji"])?;
    if v["type"] != "plain_text" {
        return Err(format!("{what} must be plain_text, is {}", v["type"]));
    }
    let n = v["text"].as_str().ok_or(format!("{what}: no text"))?.chars().count();
    if n == 0 || n > max {
        return Err(format!("{what}: text length {n} outside 1..={max}"));
    }
    Ok(())
}

fn input(what: &str, b: &Value) -> Result<(), String> {
    keys_allowed(
        what,
        b,
        &[
            "type",
            "block_id",
            "label",
            "element",
            "hint",
            "optional",
            "dispatch_action",
        ],
    )?;
    plain(&format!("{what}.label"), &b["label"], 2000)?;
    if let Some(h) = b.get("hint") {
        plain(&format!("{what}.hint"), h, 2000)?;
    }
    let e = &b["element"];
    let w = format!("{what}.element");
    keys_allowed(
        &w,
        e,
        &[
            "type",
            "action_id",
            "placeholder",
            "initial_value",
            "multiline",
            "min_length",
            "max_length",
            "focus_on_load",
            "dispatch_action_config",
        ],
    )?;
    if e["type"] != "plain_text_input" {
        return Err(format!("{w}: only plain_text_input is expected, got {}", e["type"]));
    }
    let id = e["action_id"].as_str().ok_or(format!("{w}: no action_id"))?;
    if id.is_empty() || id.len() > 255 {
        return Err(format!("{w}: action_id `{id}` is empty or too long"));
    }
    if let Some(p) = e.get("placeholder") {
        plain(&format!("{w}.placeholder"), p, 150)?;
    }
    if let Some(m) = e.get("multiline")
        && !m.is_boolean()
    {
        return Err(format!("{w}: multiline is not a boolean"));
    }
    let min = e
        .get("min_length")
        .map(|v| v.as_u64().ok_or(format!("{w}: min_length")));
    let max = e
        .get("max_length")
        .map(|v| v.as_u64().ok_or(format!("{w}: max_length")));
    let (min, max) = (min.transpose()?, max.transpose()?);
    if min.is_some_and(|m| m > 3000) || max.is_some_and(|m| m == 0 || m > 3000) {
        return Err(format!("{w}: min_length/max_length outside Slack's bounds"));
    }
    if let (Some(a), Some(b)) = (min, max)
        && a > b
    {
        return Err(format!("{w}: min_length {a} > max_length {b}"));
    }
    Ok(())
}

/// Slack's rules for a modal view.
pub fn check_view(view: &Value) -> Result<(), String> {
    keys_allowed(
        "view",
        view,
        &[
            "type",
            "title",
            "blocks",
            "close",
            "submit",
            "private_metadata",
            "callback_id",
            "clear_on_close",
            "notify_on_close",
            "external_id",
            "submit_disabled",
        ],
    )?;
    if view["type"] != "modal" {
        return Err(format!("view.type {} is not modal", view["type"]));
    }
    plain("view.title", &view["title"], 24)?;
    for k in ["submit", "close"] {
        if let Some(b) = view.get(k) {
            plain(&format!("view.{k}"), b, 24)?;
        }
    }
    if let Some(m) = view.get("private_metadata") {
        let n = m.as_str().ok_or("view.private_metadata is not a string")?.len();
        if n > 3000 {
            return Err(format!("view.private_metadata is {n} characters (3000 at most)"));
        }
    }
    if let Some(c) = view.get("callback_id") {
        let n = c.as_str().ok_or("view.callback_id is not a string")?.len();
        if n > 255 {
            return Err(format!("view.callback_id is {n} characters (255 at most)"));
        }
    }
    let blocks = view["blocks"].as_array().ok_or("view.blocks is not an array")?;
    if blocks.is_empty() || blocks.len() > 100 {
        return Err(format!("{} blocks in a view (1..=100)", blocks.len()));
    }
    let mut has_input = false;
    for (i, b) in blocks.iter().enumerate() {
        if b["type"] == "input" {
            has_input = true;
            input(&format!("view.blocks[{i}]"), b)?;
        } else {
            check_blocks(&Value::Array(vec![b.clone()])).map_err(|e| format!("view.blocks[{i}]: {e}"))?;
        }
    }
    if has_input && view.get("submit").is_none() {
        return Err("a view with input blocks needs a submit button".into());
    }
    Ok(())
}
