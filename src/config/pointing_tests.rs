//! Parse errors that point: key path, line and column, the nearest key.

use super::*;

fn first_error(text: &str) -> String {
    match Config::from_toml(text, &|_| Some("s3cr3t".into())) {
        Ok(_) => panic!("the configuration should not load:\n{text}"),
        Err(e) => {
            assert_eq!(e.0.len(), 1, "{e}");
            e.0[0].to_string()
        }
    }
}

const ENV: &str = r#"[environments.production]
approvers = ["octocat"]
[environments.production.verdict]
required = false
"#;

#[test]
fn a_type_error_names_the_key_path_line_and_column_without_the_value() {
    let text =
        "[environments.production]\napprovers = \"not-a-list\"\n[environments.production.verdict]\nrequired = false\n";
    assert_eq!(
        first_error(text),
        "environments.production.approvers (line 2, column 13): invalid type: string, expected a sequence"
    );
}

#[test]
fn an_unknown_key_is_named_with_its_table_and_the_nearest_valid_key() {
    let text = format!("[server]\nlisten_typo = \"127.0.0.1:1\"\n{ENV}");
    assert_eq!(
        first_error(&text),
        "server.listen_typo (line 2, column 1): unknown key `listen_typo` in [server]; did you mean `listen`?"
    );
}

#[test]
fn an_unknown_key_deep_in_an_environment_points_at_it() {
    let text = format!("{ENV}mode = \"asserted\"\nevidence_shema = \"s.json\"\n");
    assert_eq!(
        first_error(&text),
        "environments.production.verdict.evidence_shema (line 6, column 1): unknown key `evidence_shema` in [environments.production.verdict]; did you mean `evidence_schema`?"
    );
}

#[test]
fn an_unknown_key_far_from_any_lists_the_valid_ones() {
    let text = format!("{ENV}[policies]\ncolour = 1\n");
    assert_eq!(
        first_error(&text),
        "policies.colour (line 6, column 1): unknown key `colour` in [policies]; the keys here are `paths`, `bundles`, `verification_key`, `polling_interval`"
    );
}

#[test]
fn an_unknown_top_level_table_is_named() {
    let text = format!("{ENV}[sever]\nlisten = \"x\"\n");
    assert_eq!(
        first_error(&text),
        "sever (line 5, column 2): unknown key `sever` in the top level; did you mean `server`?"
    );
}

#[test]
fn a_type_error_in_an_array_entry_names_its_index() {
    let text = "[[issuers]]\nname = \"a\"\n[[issuers]]\nname = 7\n";
    assert_eq!(
        first_error(text),
        "issuers[1].name (line 4, column 8): invalid type: integer, expected a string"
    );
}

#[test]
fn text_that_is_not_toml_points_at_the_place() {
    let text = "[server\nlisten = 1\n";
    let err = first_error(text);
    assert!(
        err.starts_with("configuration (line 1, column 8): not valid TOML: "),
        "{err}"
    );
}
