use std::time::Duration;

use super::super::Config;
use super::*;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn env(k: &str) -> Option<String> {
    match k {
        "KEY_ID" => Some("AKIDFROMVAR".into()),
        "KEY_SECRET" => Some("secret-from-var".into()),
        _ => None,
    }
}

fn with_aws_env(k: &str) -> Option<String> {
    match k {
        "AWS_ACCESS_KEY_ID" => Some("AKIDSTANDARD".into()),
        "AWS_SECRET_ACCESS_KEY" => Some("standard-secret".into()),
        _ => None,
    }
}

fn file(anchor: &str) -> String {
    format!("[audit.anchor]\n{anchor}\n")
}

const BASE: &str = r#"kind = "s3"
endpoint = "https://s3.eu-west-1.amazonaws.com"
region = "eu-west-1"
bucket = "acme-audit""#;

fn anchor_of(text: &str, env: &dyn Fn(&str) -> Option<String>) -> AnchorConfig {
    Config::from_toml(text, env).unwrap().audit.anchor.unwrap()
}

fn errors(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    match Config::from_toml(text, env) {
        Ok(_) => vec![],
        Err(e) => e.0.iter().map(|x| x.to_string()).collect(),
    }
}

#[test]
fn no_anchor_table_means_no_anchoring() {
    assert!(Config::from_toml("", &|_| None).unwrap().audit.anchor.is_none());
}

#[test]
fn every_key_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("s3-secret");
    std::fs::write(&secret, "secret-from-file\n").unwrap();
    let text = file(&format!(
        "{BASE}\nprefix = \"prod/trail\"\naccess_key_id = {{ env = \"KEY_ID\" }}\n\
         secret_access_key = {{ file = \"{}\" }}\nretain = \"7d\"\nmax_anchor_lag = \"90s\"\npath_style = false\n",
        secret.display()
    ));
    let a = anchor_of(&text, &env);
    assert_eq!(a.kind, AnchorKind::S3);
    assert_eq!(a.endpoint.as_str(), "https://s3.eu-west-1.amazonaws.com/");
    assert_eq!(a.region, "eu-west-1");
    assert_eq!(a.bucket, "acme-audit");
    assert_eq!(a.prefix, "prod/trail/");
    assert_eq!(a.access_key_id.expose(), "AKIDFROMVAR");
    assert_eq!(a.secret_access_key.expose(), "secret-from-file");
    assert_eq!(a.retain, 7 * DAY);
    assert_eq!(a.max_anchor_lag, Duration::from_secs(90));
    assert!(!a.path_style);
    let debug = format!("{a:?}");
    assert!(
        !debug.contains("secret-from-file") && !debug.contains("AKIDFROMVAR"),
        "{debug}"
    );
}

#[test]
fn defaults_take_the_standard_aws_variables_six_years_and_path_style() {
    let a = anchor_of(&file(BASE), &with_aws_env);
    assert_eq!(a.prefix, "");
    assert_eq!(a.access_key_id.expose(), "AKIDSTANDARD");
    assert_eq!(a.secret_access_key.expose(), "standard-secret");
    assert_eq!(a.retain, 2190 * DAY);
    assert_eq!(a.max_anchor_lag, Duration::from_secs(300));
    assert!(a.path_style);
    let local = anchor_of(
        &file(&BASE.replace("https://s3.eu-west-1.amazonaws.com", "http://127.0.0.1:9000")),
        &with_aws_env,
    );
    assert_eq!(local.endpoint.as_str(), "http://127.0.0.1:9000/");
    assert_eq!(
        anchor_of(&file(&format!("{BASE}\nprefix = \"p/\"")), &with_aws_env).prefix,
        "p/"
    );
}

#[test]
fn credentials_missing_everywhere_name_the_keys() {
    assert_eq!(
        errors(&file(BASE), &|_| None),
        vec![
            "audit.anchor.access_key_id: no S3 credentials: set access_key_id and secret_access_key \
             ({ env = \"VAR\" } or { file = \"path\" }), or the environment variables AWS_ACCESS_KEY_ID \
             and AWS_SECRET_ACCESS_KEY"
        ]
    );
    let only_id = |k: &str| (k == "AWS_ACCESS_KEY_ID").then(|| "AKID".to_string());
    assert_eq!(errors(&file(BASE), &only_id).len(), 1);
}

#[test]
fn half_a_key_pair_names_the_other_half() {
    assert_eq!(
        errors(&file(&format!("{BASE}\naccess_key_id = {{ env = \"KEY_ID\" }}")), &env),
        vec!["audit.anchor.secret_access_key: is required when access_key_id is set"]
    );
    assert_eq!(
        errors(
            &file(&format!("{BASE}\nsecret_access_key = {{ env = \"KEY_SECRET\" }}")),
            &env
        ),
        vec!["audit.anchor.access_key_id: is required when secret_access_key is set"]
    );
    assert_eq!(
        errors(
            &file(&format!(
                "{BASE}\naccess_key_id = \"AKIDINLINE\"\nsecret_access_key = {{ env = \"UNSET\" }}"
            )),
            &env
        ),
        vec![
            "audit.anchor.access_key_id: secrets are never written inline; use { env = \"VAR\" } or { file = \"path\" }",
            "audit.anchor.secret_access_key: environment variable `UNSET` is not set",
        ]
    );
}

#[test]
fn every_bad_value_is_reported_with_its_key() {
    let text = file(
        "kind = \"gcs\"\nendpoint = \"http://s3.example.com\"\nregion = \"EU West\"\nbucket = \"Acme_Audit\"\n\
         prefix = \"/abs\"\nretain = \"12h\"\nmax_anchor_lag = \"soon\"",
    );
    assert_eq!(
        errors(&text, &with_aws_env),
        vec![
            "audit.anchor.kind: `gcs` is not one of \"s3\"",
            "audit.anchor.endpoint: must be https (plain http is allowed only on loopback addresses)",
            "audit.anchor.region: is required: a region name such as \"eu-west-1\" (lower-case letters, digits and `-`)",
            "audit.anchor.bucket: `Acme_Audit` is not a bucket name (3 to 63 lower-case letters, digits, `.` and `-`)",
            "audit.anchor.prefix: `/abs` must not start with `/`",
            "audit.anchor.retain: `12h` is shorter than a day",
            "audit.anchor.max_anchor_lag: `soon` is not a duration (examples: \"90s\", \"30m\", \"24h\")",
        ]
    );
}

#[test]
fn missing_keys_are_required() {
    assert_eq!(
        errors(&file(""), &with_aws_env),
        vec![
            "audit.anchor.kind: is required (\"s3\")",
            "audit.anchor.endpoint: is required",
            "audit.anchor.region: is required: a region name such as \"eu-west-1\" (lower-case letters, digits and `-`)",
            "audit.anchor.bucket: is required",
        ]
    );
}

#[test]
fn endpoints_bucket_names_and_retention_have_bounds() {
    let one = |extra: &str, replace: (&str, &str)| {
        errors(
            &file(&format!("{}\n{extra}", BASE.replace(replace.0, replace.1))),
            &with_aws_env,
        )
    };
    assert_eq!(
        one("", ("s3.eu-west-1.amazonaws.com", "s3.example.com/bucket")),
        vec![
            "audit.anchor.endpoint: `https://s3.example.com/bucket` must be an origin only, such as https://s3.eu-west-1.amazonaws.com"
        ]
    );
    assert_eq!(
        one("path_style = false", ("acme-audit", "acme.audit")),
        vec![
            "audit.anchor.bucket: `acme.audit` holds dots, which cannot be a host name under TLS: keep path_style = true"
        ]
    );
    assert_eq!(one("", ("acme-audit", "acme.audit")), Vec::<String>::new());
    assert_eq!(
        one("retain = \"101years\"", ("", "")),
        vec!["audit.anchor.retain: `101years` is longer than 100 years"]
    );
    assert_eq!(one("retain = \"1d\"", ("", "")), Vec::<String>::new());
    assert_eq!(
        one("prefix = \"a/../b\"", ("", "")),
        vec!["audit.anchor.prefix: `a/../b` must not hold `.` or `..` segments"]
    );
}

#[test]
fn unknown_keys_fail() {
    let errs = errors(&file(&format!("{BASE}\nsession_token = 1")), &with_aws_env);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(
        errs[0],
        "audit.anchor.session_token (line 6, column 1): unknown key `session_token` in [audit.anchor]; the keys here are `kind`, `endpoint`, `region`, `bucket`, `prefix`, `access_key_id`, `secret_access_key`, `retain`, `max_anchor_lag`, `path_style`"
    );
}

#[test]
fn an_auditor_reads_the_file_without_the_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, file(BASE)).unwrap();
    let c = Config::load_without_secrets(&path).unwrap();
    assert_eq!(c.audit.anchor.unwrap().bucket, "acme-audit");
}
