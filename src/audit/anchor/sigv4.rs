//! AWS Signature Version 4 for S3, header-based, with a signed payload
//! (`x-amz-content-sha256` holds the body's SHA-256): the canonical
//! request, the string to sign, the signing key and the `Authorization`
//! header, built from the crate's own SHA-256 and HMAC.
//!
//! The unit tests check it against the worked examples of the S3 API
//! reference ("Examples of signature calculations", header-based auth).

use time::OffsetDateTime;

use crate::crypto::{hmac_sha256, sha256_hex};

/// The SHA-256 of an empty body.
pub(crate) const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// One request as it is signed.
pub(crate) struct SignedRequest<'a> {
    pub method: &'a str,
    /// The path exactly as sent: each segment already URI-encoded once
    /// (see [`uri_encode`] with `encode_slash = false`).
    pub path: &'a str,
    /// Query parameters, not encoded: they are encoded and sorted here.
    pub query: &'a [(&'a str, &'a str)],
    /// Every header to sign, in any case and order: it must hold `host`,
    /// `x-amz-date` and `x-amz-content-sha256`, and every `x-amz-*` header
    /// sent.
    pub headers: &'a [(&'a str, &'a str)],
    /// Hex SHA-256 of the body (the value of `x-amz-content-sha256`).
    pub payload_sha256: &'a str,
}

/// The credentials and scope a request is signed with. Holds the secret
/// access key only for the duration of a signature; it has no `Debug`.
pub(crate) struct Signer<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    pub region: &'a str,
    pub service: &'a str,
}

impl Signer<'_> {
    /// The `Authorization` header's value for `req` at `amz_date`
    /// (`20130524T000000Z`).
    pub(crate) fn authorization(&self, amz_date: &str, req: &SignedRequest<'_>) -> String {
        let signature = self.signature(amz_date, req);
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{},SignedHeaders={},Signature={signature}",
            self.access_key_id,
            self.scope(amz_date),
            signed_headers(req.headers)
        )
    }

    /// The hex signature of `req` at `amz_date`.
    pub(crate) fn signature(&self, amz_date: &str, req: &SignedRequest<'_>) -> String {
        let string_to_sign = self.string_to_sign(amz_date, &canonical_request(req));
        let date = &amz_date[..amz_date.len().min(8)];
        let k_date = hmac_sha256(format!("AWS4{}", self.secret_access_key).as_bytes(), &[date.as_bytes()]);
        let k_region = hmac_sha256(&k_date, &[self.region.as_bytes()]);
        let k_service = hmac_sha256(&k_region, &[self.service.as_bytes()]);
        let k_signing = hmac_sha256(&k_service, &[b"aws4_request"]);
        hex::encode(hmac_sha256(&k_signing, &[string_to_sign.as_bytes()]))
    }

    /// `date/region/service/aws4_request`.
    fn scope(&self, amz_date: &str) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            &amz_date[..amz_date.len().min(8)],
            self.region,
            self.service
        )
    }

    /// The string to sign: algorithm, time, scope and the canonical
    /// request's hash, one per line.
    pub(crate) fn string_to_sign(&self, amz_date: &str, canonical_request: &str) -> String {
        format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{}\n{}",
            self.scope(amz_date),
            sha256_hex(canonical_request.as_bytes())
        )
    }
}

/// The canonical request: method, path, sorted encoded query, canonical
/// headers, the signed headers' names and the payload's hash.
pub(crate) fn canonical_request(req: &SignedRequest<'_>) -> String {
    format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        req.path,
        canonical_query(req.query),
        canonical_headers(req.headers),
        signed_headers(req.headers),
        req.payload_sha256
    )
}

/// The query string as signed, and as it must be sent: each name and value
/// URI-encoded (slashes too), sorted by name then value, `name=value`
/// joined by `&` (a parameter without a value is `name=`).
pub(crate) fn canonical_query(query: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (uri_encode(k, true), uri_encode(v, true)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Lowercase names, sorted, one `name:value` a line (value trimmed and
/// inner runs of spaces collapsed), each line ending in a newline.
fn canonical_headers(headers: &[(&str, &str)]) -> String {
    let mut lines: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_ascii_lowercase(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect();
    lines.sort();
    lines.iter().map(|(k, v)| format!("{k}:{v}\n")).collect()
}

/// The signed headers' lowercase names, sorted, joined by `;`.
fn signed_headers(headers: &[(&str, &str)]) -> String {
    let mut names: Vec<String> = headers.iter().map(|(k, _)| k.to_ascii_lowercase()).collect();
    names.sort();
    names.dedup();
    names.join(";")
}

/// S3's `UriEncode`: every byte but the unreserved `A-Z a-z 0-9 - . _ ~`
/// as `%XX` (upper-case hex); `/` is kept unless `encode_slash`.
pub(crate) fn uri_encode(s: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(b as char),
            b'/' if !encode_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The `x-amz-date` form of `t`: `20130524T000000Z` (UTC).
pub(crate) fn amz_date(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // The S3 API reference's examples: this key pair, bucket `examplebucket`
    // (virtual-hosted), region us-east-1, at 2013-05-24T00:00:00Z.
    const SIGNER: Signer<'static> = Signer {
        access_key_id: "AKIAIOSFODNN7EXAMPLE",
        secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        region: "us-east-1",
        service: "s3",
    };
    const AT: &str = "20130524T000000Z";
    const HOST: &str = "examplebucket.s3.amazonaws.com";

    #[test]
    fn the_get_object_example_with_a_range_signs_as_published() {
        let headers = [
            ("Host", HOST),
            ("Range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", AT),
        ];
        let req = SignedRequest {
            method: "GET",
            path: "/test.txt",
            query: &[],
            headers: &headers,
            payload_sha256: EMPTY_SHA256,
        };
        let canonical = canonical_request(&req);
        assert_eq!(
            canonical,
            "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\n\
             x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n\
             x-amz-date:20130524T000000Z\n\nhost;range;x-amz-content-sha256;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            SIGNER.string_to_sign(AT, &canonical),
            "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n\
             7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
        );
        assert_eq!(
            SIGNER.authorization(AT, &req),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn the_put_object_example_signs_as_published() {
        let body = b"Welcome to Amazon S3.";
        let payload = sha256_hex(body);
        assert_eq!(
            payload,
            "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"
        );
        let headers = [
            ("Host", HOST),
            ("Date", "Fri, 24 May 2013 00:00:00 GMT"),
            ("x-amz-date", AT),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ("x-amz-content-sha256", payload.as_str()),
        ];
        let path = format!("/{}", uri_encode("test$file.text", false));
        assert_eq!(path, "/test%24file.text");
        let req = SignedRequest {
            method: "PUT",
            path: &path,
            query: &[],
            headers: &headers,
            payload_sha256: &payload,
        };
        let canonical = canonical_request(&req);
        assert_eq!(
            canonical,
            "PUT\n/test%24file.text\n\ndate:Fri, 24 May 2013 00:00:00 GMT\n\
             host:examplebucket.s3.amazonaws.com\n\
             x-amz-content-sha256:44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072\n\
             x-amz-date:20130524T000000Z\nx-amz-storage-class:REDUCED_REDUNDANCY\n\n\
             date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class\n\
             44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"
        );
        assert_eq!(
            SIGNER.string_to_sign(AT, &canonical),
            "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n\
             9e0e90d9c76de8fa5b200d8c849cd5b8dc7a3be3951ddb7f6a76b4158342019d"
        );
        assert_eq!(
            SIGNER.signature(AT, &req),
            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
        );
    }

    fn bucket_get(query: &[(&str, &str)]) -> String {
        let headers = [
            ("host", HOST),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", AT),
        ];
        SIGNER.signature(
            AT,
            &SignedRequest {
                method: "GET",
                path: "/",
                query,
                headers: &headers,
                payload_sha256: EMPTY_SHA256,
            },
        )
    }

    #[test]
    fn the_get_bucket_lifecycle_example_signs_a_parameter_without_a_value() {
        assert_eq!(canonical_query(&[("lifecycle", "")]), "lifecycle=");
        assert_eq!(
            bucket_get(&[("lifecycle", "")]),
            "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"
        );
    }

    #[test]
    fn the_list_objects_example_signs_its_query_sorted() {
        assert_eq!(
            canonical_query(&[("prefix", "J"), ("max-keys", "2")]),
            "max-keys=2&prefix=J"
        );
        assert_eq!(
            bucket_get(&[("prefix", "J"), ("max-keys", "2")]),
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
        );
    }

    #[test]
    fn uri_encoding_keeps_only_unreserved_bytes() {
        assert_eq!(uri_encode("a b+c/d", false), "a%20b%2Bc/d");
        assert_eq!(uri_encode("a b+c/d", true), "a%20b%2Bc%2Fd");
        assert_eq!(uri_encode("A-z_0.9~", true), "A-z_0.9~");
        assert_eq!(uri_encode("=&?#%*", true), "%3D%26%3F%23%25%2A");
        assert_eq!(uri_encode("é", true), "%C3%A9");
        assert_eq!(
            canonical_query(&[("continuation-token", "a+b/c="), ("list-type", "2")]),
            "continuation-token=a%2Bb%2Fc%3D&list-type=2"
        );
    }

    #[test]
    fn header_values_are_trimmed_and_their_spaces_collapsed() {
        assert_eq!(
            canonical_headers(&[("X-Amz-Meta-A", "  one   two "), ("Host", "h")]),
            "host:h\nx-amz-meta-a:one two\n"
        );
    }

    #[test]
    fn amz_dates_are_utc_and_compact() {
        let t = time::macros::datetime!(2013-05-24 02:03:04 +02:00);
        assert_eq!(amz_date(t), "20130524T000304Z");
    }
}
