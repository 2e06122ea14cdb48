//! OPA bundles built by tests: a `.tar.gz` with a `.manifest`, Rego
//! modules and `data.json` files, optionally signed (`.signatures.json`,
//! one ES256 or RS256 JWT listing every file's SHA-256, as `opa sign`
//! writes it) with the test-only keys of `tests/fixtures/bundles`; a local
//! bundle server that answers with an ETag and checks `If-None-Match`.

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::json;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bundles");

pub fn es256_public_pem_path() -> String {
    format!("{FIXTURES}/test-only-bundle-es256-public.pem")
}

pub fn rs256_public_pem_path() -> String {
    format!("{FIXTURES}/test-only-bundle-rs256-public.pem")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signer {
    Es256,
    Rs256,
}

/// A bundle's files, in the order they go into the archive.
#[derive(Clone, Default, Debug)]
pub struct BundleBuilder {
    pub files: Vec<(String, Vec<u8>)>,
}

impl BundleBuilder {
    pub fn new(revision: &str, roots: &[&str]) -> Self {
        BundleBuilder::default().file(
            ".manifest",
            serde_json::to_vec_pretty(&json!({"revision": revision, "roots": roots})).unwrap(),
        )
    }

    pub fn file(mut self, name: &str, contents: impl AsRef<[u8]>) -> Self {
        self.files.retain(|(n, _)| n != name);
        self.files.push((name.to_owned(), contents.as_ref().to_vec()));
        self
    }

    /// Adds `.signatures.json` over the files present now.
    pub fn signed(self, signer: Signer) -> Self {
        let files: Vec<serde_json::Value> = self
            .files
            .iter()
            .map(|(name, bytes)| {
                json!({
                    "name": name,
                    "hash": portcullis::verdict::file_hash(name, bytes).unwrap(),
                    "algorithm": "SHA-256",
                })
            })
            .collect();
        let (alg, key) = match signer {
            Signer::Es256 => (
                jsonwebtoken::Algorithm::ES256,
                jsonwebtoken::EncodingKey::from_ec_pem(
                    &std::fs::read(format!("{FIXTURES}/test-only-bundle-es256-private.pem")).unwrap(),
                )
                .unwrap(),
            ),
            Signer::Rs256 => (
                jsonwebtoken::Algorithm::RS256,
                jsonwebtoken::EncodingKey::from_rsa_pem(
                    &std::fs::read(format!("{FIXTURES}/test-only-bundle-rs256-private.pem")).unwrap(),
                )
                .unwrap(),
            ),
        };
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = Some("test-key".into());
        let token = jsonwebtoken::encode(&header, &json!({"files": files, "scope": "write"}), &key).unwrap();
        self.file(
            ".signatures.json",
            serde_json::to_vec(&json!({"signatures": [token]})).unwrap(),
        )
    }

    /// The `.tar.gz` bytes; paths are written with a leading `/`, as `opa build` does.
    pub fn build(&self) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        for (name, bytes) in &self.files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            // The tar crate writes relative paths only: the name field is set by hand.
            let path = format!("/{name}");
            assert!(path.len() < 100, "test bundle paths are short");
            header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_cksum();
            tar.append(&header, bytes.as_slice()).unwrap();
        }
        let mut gz = tar.into_inner().unwrap();
        gz.flush().unwrap();
        gz.finish().unwrap()
    }

    pub fn write_to(&self, path: &std::path::Path) {
        std::fs::write(path, self.build()).unwrap();
    }
}

/// One request the bundle server saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub path: String,
    pub if_none_match: Option<String>,
    pub status: u16,
}

#[derive(Default)]
struct Served {
    body: Vec<u8>,
    etag: String,
    seen: Vec<Seen>,
    /// Set when a request broke the protocol (an If-None-Match that is not
    /// an ETag this server gave).
    violations: Vec<String>,
    given: Vec<String>,
}

/// A bundle server on loopback: `GET /bundles/app.tar.gz` answers the
/// current bundle with its ETag, or 304 when `If-None-Match` names it. An
/// `If-None-Match` naming an ETag this server never gave is recorded as a
/// violation (tests assert there are none).
#[derive(Clone)]
pub struct BundleServer {
    pub url: String,
    state: Arc<Mutex<Served>>,
}

impl BundleServer {
    pub async fn start(bundle: Vec<u8>, etag: &str) -> BundleServer {
        use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
        let state = Arc::new(Mutex::new(Served {
            body: bundle,
            etag: format!("\"{etag}\""),
            given: vec![],
            ..Default::default()
        }));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = state.clone();
        let server = HttpServer::new(move || {
            let shared = shared.clone();
            App::new().default_service(web::to(move |req: HttpRequest| {
                let shared = shared.clone();
                async move {
                    let mut s = shared.lock().unwrap();
                    let inm = req
                        .headers()
                        .get("if-none-match")
                        .map(|v| v.to_str().unwrap_or("").to_owned());
                    if req.method() != actix_web::http::Method::GET || req.path() != "/bundles/app.tar.gz" {
                        s.violations.push(format!("{} {}", req.method(), req.path()));
                        return HttpResponse::NotFound().finish();
                    }
                    if let Some(tag) = &inm
                        && !s.given.contains(tag)
                    {
                        s.violations.push(format!("If-None-Match {tag} was never given"));
                    }
                    let (status, response) = if inm.as_deref() == Some(s.etag.as_str()) {
                        (
                            304,
                            HttpResponse::NotModified()
                                .insert_header(("ETag", s.etag.clone()))
                                .finish(),
                        )
                    } else {
                        let tag = s.etag.clone();
                        s.given.push(tag.clone());
                        (
                            200,
                            HttpResponse::Ok()
                                .insert_header(("ETag", tag))
                                .content_type("application/gzip")
                                .body(s.body.clone()),
                        )
                    };
                    s.seen.push(Seen {
                        path: req.path().to_owned(),
                        if_none_match: inm,
                        status,
                    });
                    response
                }
            }))
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .run();
        tokio::spawn(server);
        BundleServer {
            url: format!("http://{addr}/bundles/app.tar.gz"),
            state,
        }
    }

    /// Serves `bundle` under a new ETag from now on.
    pub fn publish(&self, bundle: Vec<u8>, etag: &str) {
        let mut s = self.state.lock().unwrap();
        s.body = bundle;
        s.etag = format!("\"{etag}\"");
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }
}
