//! The client against a scripted HTTP server: the requests it sends (and
//! that their signatures cover what is sent), and what it makes of each
//! answer. The real S3 behaviour is tested against moto in
//! `tests/integration/anchor_s3.rs`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use time::OffsetDateTime;

use super::s3::{Answer, failure, retain_until};
use super::sigv4::{SignedRequest, Signer};
use super::*;
use crate::config::Secret;

const SECRET: &str = "never-shown-secret/KEY";

/// One request as the scripted server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Answers each connection with the next of `answers` (status, body), then
/// closes; past the last, connections are refused.
fn scripted(answers: Vec<(u16, &'static str)>) -> (u16, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for (status, body) in answers {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let mut parts = line.split_whitespace();
            let (method, target) = (parts.next().unwrap().to_string(), parts.next().unwrap().to_string());
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                let (k, v) = h.split_once(':').unwrap();
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .map_or(0, |(_, v)| v.parse().unwrap());
            let mut body_in = vec![0; len];
            reader.read_exact(&mut body_in).unwrap();
            log.lock().unwrap().push(Seen {
                method,
                target,
                headers,
                body: body_in,
            });
            let mut out = stream;
            // 4040: a 404 for a key whose current version is a delete marker.
            let (status, extra) = match status {
                4040 => (404, "x-amz-delete-marker: true\r\n"),
                s => (s, ""),
            };
            let response = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/xml\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n{}",
                body.len(),
                body
            );
            out.write_all(response.as_bytes()).unwrap();
        }
    });
    (port, seen)
}

fn settings(port: u16) -> S3Settings {
    S3Settings {
        endpoint: url::Url::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
        region: "eu-west-1".into(),
        bucket: "trail".into(),
        prefix: "prod".into(),
        access_key_id: Secret::new("AKIDTEST"),
        secret_access_key: Secret::new(SECRET),
        retain: Duration::from_secs(3 * 86400),
        path_style: true,
        request_timeout: Duration::from_secs(5),
        list_page_size: None,
    }
}

fn anchor(port: u16) -> S3Anchor {
    S3Anchor::new(settings(port)).unwrap()
}

/// Re-signs what the server received with the same key: equal only if the
/// signature covers exactly the path, query and headers that were sent.
fn signature_covers_what_was_sent(seen: &Seen) {
    let auth = seen.header("authorization").unwrap();
    let signed_names = auth.split("SignedHeaders=").nth(1).unwrap().split(',').next().unwrap();
    let headers: Vec<(&str, &str)> = signed_names
        .split(';')
        .map(|n| (n, seen.header(n).unwrap_or_else(|| panic!("`{n}` signed but not sent"))))
        .collect();
    let (path, query) = seen.target.split_once('?').unwrap_or((&seen.target, ""));
    let decoded: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let pairs: Vec<(&str, &str)> = decoded.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let date = seen.header("x-amz-date").unwrap();
    let signer = Signer {
        access_key_id: "AKIDTEST",
        secret_access_key: SECRET,
        region: "eu-west-1",
        service: "s3",
    };
    let expected = signer.authorization(
        date,
        &SignedRequest {
            method: &seen.method,
            path,
            query: &pairs,
            headers: &headers,
            payload_sha256: &crate::crypto::sha256_hex(&seen.body),
        },
    );
    assert_eq!(auth, expected);
    assert_eq!(
        seen.header("x-amz-content-sha256").unwrap(),
        crate::crypto::sha256_hex(&seen.body)
    );
}

#[tokio::test]
async fn a_new_key_is_written_once_with_compliance_retention_and_a_checksum() {
    let (port, seen) = scripted(vec![(404, "<Error><Code>NoSuchKey</Code></Error>"), (200, "")]);
    let body = br#"{"checkpoint":1}"#;
    let before = OffsetDateTime::now_utc();
    let outcome = anchor(port)
        .put_once("checkpoints/1.json", body, "application/json")
        .await;
    assert_eq!(outcome, Ok(PutOutcome::Written));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].target.as_str()),
        ("GET", "/trail/prod/checkpoints/1.json")
    );
    let put = &seen[1];
    assert_eq!(
        (put.method.as_str(), put.target.as_str()),
        ("PUT", "/trail/prod/checkpoints/1.json")
    );
    assert_eq!(put.body, body);
    assert_eq!(put.header("if-none-match"), Some("*"));
    assert_eq!(put.header("content-type"), Some("application/json"));
    assert_eq!(put.header("x-amz-object-lock-mode"), Some("COMPLIANCE"));
    assert_eq!(put.header("x-amz-sdk-checksum-algorithm"), Some("SHA256"));
    let checksum = base64::engine::general_purpose::STANDARD.encode(crate::crypto::sha256(body));
    assert_eq!(put.header("x-amz-checksum-sha256"), Some(checksum.as_str()));
    let until = crate::time_fmt::parse_rfc3339(put.header("x-amz-object-lock-retain-until-date").unwrap()).unwrap();
    let retain = time::Duration::days(3);
    assert!(until >= before + retain && until <= OffsetDateTime::now_utc() + retain + time::Duration::SECOND);
    assert!(
        put.header("authorization")
            .unwrap()
            .starts_with("AWS4-HMAC-SHA256 Credential=AKIDTEST/")
    );
    assert!(put.header("authorization").unwrap().contains(
        "/eu-west-1/s3/aws4_request,SignedHeaders=content-type;host;if-none-match;x-amz-checksum-sha256;\
         x-amz-content-sha256;x-amz-date;x-amz-object-lock-mode;x-amz-object-lock-retain-until-date;\
         x-amz-sdk-checksum-algorithm,Signature="
    ));
    signature_covers_what_was_sent(&seen[0]);
    signature_covers_what_was_sent(put);
}

#[tokio::test]
async fn a_key_taken_at_the_put_is_compared_byte_for_byte() {
    let (port, seen) = scripted(vec![
        (404, ""),
        (412, "<Error><Code>PreconditionFailed</Code></Error>"),
        (200, "same"),
    ]);
    assert_eq!(
        anchor(port).put_once("a", b"same", "text/plain").await,
        Ok(PutOutcome::AlreadyIdentical)
    );
    let methods: Vec<String> = seen.lock().unwrap().iter().map(|s| s.method.clone()).collect();
    assert_eq!(methods, ["GET", "PUT", "GET"]);

    let (port, _) = scripted(vec![
        (404, ""),
        (412, "<Error><Code>PreconditionFailed</Code></Error>"),
        (200, "other"),
    ]);
    assert_eq!(
        anchor(port).put_once("a", b"same", "text/plain").await,
        Err(AnchorError::Conflict { key: "prod/a".into() })
    );

    let (port, _) = scripted(vec![
        (404, ""),
        (412, ""),
        (404, "<Error><Code>NoSuchKey</Code></Error>"),
    ]);
    assert_eq!(
        anchor(port).put_once("a", b"same", "text/plain").await,
        Err(AnchorError::Transient {
            reason: "PUT prod/a: the key was reported taken, then missing".into()
        })
    );
}

#[tokio::test]
async fn a_taken_key_is_never_put_even_on_a_server_that_ignores_if_none_match() {
    let (port, seen) = scripted(vec![(200, "forked"), (200, "ours")]);
    let a = anchor(port);
    assert_eq!(
        a.put_once("a", b"ours", "text/plain").await,
        Err(AnchorError::Conflict { key: "prod/a".into() })
    );
    assert_eq!(
        a.put_once("a", b"ours", "text/plain").await,
        Ok(PutOutcome::AlreadyIdentical)
    );
    let methods: Vec<String> = seen.lock().unwrap().iter().map(|s| s.method.clone()).collect();
    assert_eq!(methods, ["GET", "GET"]);
}

#[tokio::test]
async fn get_reads_an_object_or_nothing_but_not_a_missing_bucket() {
    let (port, _) = scripted(vec![
        (200, "bytes"),
        (404, "<Error><Code>NoSuchKey</Code></Error>"),
        (404, "<Error><Code>NoSuchBucket</Code></Error>"),
    ]);
    let a = anchor(port);
    assert_eq!(a.get("x").await, Ok(Some(b"bytes".to_vec())));
    assert_eq!(a.get("x").await, Ok(None));
    assert_eq!(
        a.get("x").await,
        Err(AnchorError::Refused {
            status: 404,
            code: "NoSuchBucket".into()
        })
    );
}

#[tokio::test]
async fn a_key_hidden_by_a_delete_marker_is_reported_and_never_written_beside() {
    let nsk = "<Error><Code>NoSuchKey</Code></Error>";
    let (port, seen) = scripted(vec![(4040, nsk), (4040, nsk)]);
    let a = anchor(port);
    let hidden = AnchorError::Hidden { key: "prod/a".into() };
    assert_eq!(a.get("a").await, Err(hidden.clone()));
    assert_eq!(a.put_once("a", b"x", "text/plain").await, Err(hidden));
    let methods: Vec<String> = seen.lock().unwrap().iter().map(|s| s.method.clone()).collect();
    assert_eq!(methods, ["GET", "GET"]);
}

const PAGE_1: &str = "<ListBucketResult><IsTruncated>true</IsTruncated>\
    <Contents><Key>prod/records/1</Key></Contents><Contents><Key>prod/records/2&amp;3</Key></Contents>\
    <NextContinuationToken>a+b/c=</NextContinuationToken></ListBucketResult>";
const PAGE_2: &str = "<ListBucketResult><IsTruncated>false</IsTruncated>\
    <Contents><Key>prod/records/4</Key></Contents></ListBucketResult>";

#[tokio::test]
async fn list_follows_continuation_tokens_and_strips_the_prefix() {
    let (port, seen) = scripted(vec![(200, PAGE_1), (200, PAGE_2)]);
    let mut s = settings(port);
    s.list_page_size = Some(2);
    let keys = S3Anchor::new(s).unwrap().list("records/").await;
    assert_eq!(
        keys,
        Ok(vec!["records/1".to_string(), "records/2&3".into(), "records/4".into()])
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0].target, "/trail?list-type=2&max-keys=2&prefix=prod%2Frecords%2F");
    assert_eq!(
        seen[1].target,
        "/trail?continuation-token=a%2Bb%2Fc%3D&list-type=2&max-keys=2&prefix=prod%2Frecords%2F"
    );
    signature_covers_what_was_sent(&seen[1]);
}

#[tokio::test]
async fn a_listing_that_cannot_be_followed_is_a_protocol_error() {
    let truncated = "<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>";
    let (port, _) = scripted(vec![(200, truncated)]);
    assert_eq!(
        anchor(port).list("").await,
        Err(AnchorError::Protocol {
            reason: "LIST prod/: a truncated listing without a continuation token".into()
        })
    );
    let foreign = "<ListBucketResult><Contents><Key>other/x</Key></Contents></ListBucketResult>";
    let (port, _) = scripted(vec![(200, foreign)]);
    assert_eq!(
        anchor(port).list("").await,
        Err(AnchorError::Protocol {
            reason: "LIST prod/: the listing holds a key outside the prefix".into()
        })
    );
}

#[test]
fn virtual_hosted_addressing_puts_the_bucket_in_the_host() {
    let mut s = settings(9000);
    s.endpoint = url::Url::parse("https://s3.eu-west-1.amazonaws.com").unwrap();
    s.path_style = false;
    let a = S3Anchor::new(s.clone()).unwrap();
    assert_eq!(
        (a.origin.as_str(), a.host.as_str(), a.bucket_path.as_str()),
        (
            "https://trail.s3.eu-west-1.amazonaws.com",
            "trail.s3.eu-west-1.amazonaws.com",
            ""
        )
    );
    s.endpoint = url::Url::parse("https://127.0.0.1:9000").unwrap();
    assert_eq!(
        S3Anchor::new(s).unwrap_err(),
        AnchorError::Invalid {
            reason: "virtual-hosted addressing needs a host name, not an address".into()
        }
    );
    let a = anchor(9000);
    assert_eq!(
        (a.origin.as_str(), a.host.as_str(), a.bucket_path.as_str()),
        ("http://127.0.0.1:9000", "127.0.0.1:9000", "/trail")
    );
}

fn answer(status: u16, body: &str) -> Answer {
    Answer {
        status,
        body: body.as_bytes().to_vec(),
        delete_marker: false,
    }
}

fn transient(reason: &str) -> AnchorError {
    AnchorError::Transient { reason: reason.into() }
}

fn refused(status: u16, code: &str) -> AnchorError {
    AnchorError::Refused {
        status,
        code: code.into(),
    }
}

#[test]
fn answers_are_transient_or_refused_by_status_and_code() {
    let e = |status, body| failure("PUT k", &answer(status, body));
    assert_eq!(
        e(503, "<Error><Code>SlowDown</Code></Error>"),
        transient("PUT k: HTTP 503 SlowDown")
    );
    assert_eq!(e(500, ""), transient("PUT k: HTTP 500 InternalServerError"));
    assert_eq!(e(429, ""), transient("PUT k: HTTP 429 TooManyRequests"));
    assert_eq!(
        e(400, "<Error><Code>RequestTimeout</Code></Error>"),
        transient("PUT k: HTTP 400 RequestTimeout")
    );
    assert_eq!(
        e(409, "<Error><Code>ConditionalRequestConflict</Code></Error>"),
        transient("PUT k: HTTP 409 ConditionalRequestConflict")
    );
    assert_eq!(
        e(403, "<Error><Code>AccessDenied</Code><Message>m</Message></Error>"),
        refused(403, "AccessDenied")
    );
    assert_eq!(
        e(400, "<Error><Code>InvalidRequest</Code></Error>"),
        refused(400, "InvalidRequest")
    );
    assert_eq!(
        e(301, "<Error><Code>PermanentRedirect</Code></Error>"),
        refused(301, "PermanentRedirect")
    );
    assert_eq!(e(403, ""), refused(403, "Forbidden"));
    assert_eq!(
        e(403, "<Error><Code>Not a code</Code></Error>"),
        refused(403, "Forbidden")
    );
}

#[tokio::test]
async fn no_server_is_transient() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    match anchor(port).get("k").await {
        Err(AnchorError::Transient { reason }) => {
            assert!(reason.starts_with("GET prod/k: cannot connect"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn keys_that_a_url_would_rewrite_are_refused_before_any_request() {
    let a = anchor(1);
    for key in ["", "/abs", "a/../b", "./a", "a/."] {
        assert_eq!(
            a.put_once(key, b"x", "text/plain").await,
            Err(AnchorError::Invalid {
                reason: format!("`{key}` is not an object key")
            })
        );
    }
    assert_eq!(a.object_key("a/b.json"), Ok("prod/a/b.json".into()));
    assert_eq!(
        a.object_key(&"k".repeat(1020)),
        Err(AnchorError::Invalid {
            reason: format!("`{}` is not an object key", "k".repeat(1020))
        })
    );
}

#[test]
fn retention_ends_on_a_whole_second_no_earlier_than_asked() {
    let now = time::macros::datetime!(2026-01-31 23:59:59.250 UTC);
    assert_eq!(
        retain_until(now, Duration::from_secs(86400)).unwrap(),
        "2026-02-02T00:00:00Z"
    );
    let whole = time::macros::datetime!(2026-01-31 12:00:00 UTC);
    assert_eq!(
        retain_until(whole, Duration::from_secs(2190 * 86400)).unwrap(),
        "2032-01-30T12:00:00Z"
    );
    assert_eq!(
        retain_until(whole, Duration::from_secs(u64::MAX)),
        Err(AnchorError::Invalid {
            reason: "the retention is out of range".into()
        })
    );
}

#[test]
fn neither_debug_nor_errors_show_the_secret() {
    let a = anchor(1);
    let debug = format!("{a:?}");
    assert!(!debug.contains(SECRET), "{debug}");
    assert!(debug.contains("[redacted]"), "{debug}");
    for e in [
        failure(
            "GET k",
            &answer(
                403,
                "<Error><Code>SignatureDoesNotMatch</Code><SignatureProvided>abc</SignatureProvided></Error>",
            ),
        ),
        AnchorError::Conflict { key: "k".into() },
    ] {
        let text = format!("{e} {e:?}");
        assert!(!text.contains(SECRET) && !text.contains("abc"), "{text}");
    }
}

#[test]
fn settings_come_from_the_validated_configuration() {
    let text = "[audit.anchor]\nkind = \"s3\"\nendpoint = \"https://s3.eu-west-1.amazonaws.com\"\n\
                region = \"eu-west-1\"\nbucket = \"acme-audit\"\nprefix = \"trail\"\n";
    let env = |k: &str| match k {
        "AWS_ACCESS_KEY_ID" => Some("AKID".to_string()),
        "AWS_SECRET_ACCESS_KEY" => Some("s".to_string()),
        _ => None,
    };
    let config = crate::config::Config::from_toml(text, &env).unwrap();
    let s = S3Settings::from_config(config.audit.anchor.as_ref().unwrap());
    assert_eq!(s.endpoint.as_str(), "https://s3.eu-west-1.amazonaws.com/");
    assert_eq!(
        (s.region.as_str(), s.bucket.as_str(), s.prefix.as_str()),
        ("eu-west-1", "acme-audit", "trail/")
    );
    assert_eq!((s.access_key_id.expose(), s.secret_access_key.expose()), ("AKID", "s"));
    assert_eq!(s.retain, Duration::from_secs(2190 * 86400));
    assert!(s.path_style);
    assert_eq!(s.request_timeout, Duration::from_secs(30));
    assert_eq!(s.list_page_size, None);
}
