use super::sentinel_url::{SentinelUrl, UrlError, has_password};
use super::{check_url, url_has_password};

fn sentinels(list: &[(&str, u16)]) -> Vec<(String, u16)> {
    list.iter().map(|(h, p)| (h.to_string(), *p)).collect()
}

#[test]
fn a_sentinel_url_names_its_sentinels_master_and_database() {
    assert_eq!(
        SentinelUrl::parse("redis+sentinel://127.0.0.1:26379,127.0.0.1:26380,127.0.0.1:26381/mymaster"),
        Ok(SentinelUrl {
            sentinels: sentinels(&[("127.0.0.1", 26379), ("127.0.0.1", 26380), ("127.0.0.1", 26381)]),
            master: "mymaster".into(),
            db: 0,
            username: None,
            password: None,
        })
    );
    assert_eq!(
        SentinelUrl::parse("redis+sentinel://app:s%40cret%2F1@s1.example:5000,s2.example,[::1]:26390/cache-1/3"),
        Ok(SentinelUrl {
            sentinels: sentinels(&[("s1.example", 5000), ("s2.example", 26379), ("::1", 26390)]),
            master: "cache-1".into(),
            db: 3,
            username: Some("app".into()),
            password: Some("s@cret/1".into()),
        })
    );
    // A password alone; an empty database segment is database 0.
    assert_eq!(
        SentinelUrl::parse("REDIS+SENTINEL://:pw@[::1]/m/"),
        Ok(SentinelUrl {
            sentinels: sentinels(&[("::1", 26379)]),
            master: "m".into(),
            db: 0,
            username: None,
            password: Some("pw".into()),
        })
    );
    // A literal `/` in the password stays in the password.
    assert_eq!(
        SentinelUrl::parse("redis+sentinel://u:pa/ss@h:1/m/2").map(|u| (u.password, u.db)),
        Ok((Some("pa/ss".into()), 2))
    );
}

#[test]
fn a_malformed_sentinel_url_is_named_by_what_is_wrong() {
    let cases = [
        ("redis+sentinel://h:1", UrlError::NoMaster),
        ("redis+sentinel://h:1/", UrlError::NoMaster),
        ("redis+sentinel:///m", UrlError::NoSentinel),
        ("redis+sentinel://u:p@/m", UrlError::NoSentinel),
        ("redis+sentinel://h:1,,h:2/m", UrlError::Sentinel(2)),
        ("redis+sentinel://h:x/m", UrlError::Sentinel(1)),
        ("redis+sentinel://h:1,h:0/m", UrlError::Sentinel(2)),
        ("redis+sentinel://h:1,h:65536/m", UrlError::Sentinel(2)),
        ("redis+sentinel://h:/m", UrlError::Sentinel(1)),
        ("redis+sentinel://[::1/m", UrlError::Sentinel(1)),
        ("redis+sentinel://[::1]x/m", UrlError::Sentinel(1)),
        ("redis+sentinel://h o:1/m", UrlError::Sentinel(1)),
        ("redis+sentinel://h:1/m a", UrlError::MasterName),
        ("redis+sentinel://h:1/m/x", UrlError::Db),
        ("redis+sentinel://h:1/m/-1", UrlError::Db),
        ("redis+sentinel://h:1/m/70000", UrlError::Db),
        ("redis+sentinel://h:1/m/1/2", UrlError::TrailingPath),
        ("redis+sentinel://h:1/m?db=1", UrlError::Query),
        ("redis+sentinel://h:1/m#x", UrlError::Query),
        ("redis+sentinel://u:p%zz@h:1/m", UrlError::Credentials),
        ("redis+sentinel://u:p%2@h:1/m", UrlError::Credentials),
        ("redis+sentinel://u:p%ff@h:1/m", UrlError::Credentials),
        ("redis://h:1/0", UrlError::Scheme),
    ];
    for (url, want) in cases {
        assert_eq!(SentinelUrl::parse(url), Err(want), "{url}");
    }
}

#[test]
fn errors_and_debug_never_show_the_password() {
    for url in [
        "redis+sentinel://u:hunter2@h:x/m",
        "redis+sentinel://u:hunter2@h:1/m?x",
        "redis+sentinel://u:hunter2/@h:1",
        "redis+sentinel://u:hunter2@h:1/m/hunter2",
    ] {
        let err = SentinelUrl::parse(url).expect_err(url);
        assert!(!err.to_string().contains("hunter2"), "{url}: {err}");
    }
    let parsed = SentinelUrl::parse("redis+sentinel://u:hunter2@h:1/m").unwrap();
    assert_eq!(
        format!("{parsed:?}"),
        "SentinelUrl { sentinels: [(\"h\", 1)], master: \"m\", db: 0, username: Some(\"u\"), password: Some(\"***\") }"
    );
    let err = super::connect("redis+sentinel://u:hunter2@h:x/m").expect_err("refused");
    assert_eq!(
        err.to_string(),
        "invalid redis URL: sentinel 1 of the redis+sentinel:// URL is not host:port (a port from 1 to 65535)"
    );
}

#[test]
fn the_configuration_check_takes_every_scheme_and_spots_passwords() {
    for ok in [
        "redis://127.0.0.1:6379/0",
        "rediss://h:6380/1",
        "unix:///run/redis.sock",
        "redis+unix:///run/redis.sock",
        "redis+sentinel://h1:26379,h2:26379/m",
    ] {
        assert_eq!(check_url(ok), Ok(()), "{ok}");
    }
    assert_eq!(check_url("http://h:1"), Err(UrlError::Scheme));
    assert_eq!(check_url("redis+sentinel://h:1"), Err(UrlError::NoMaster));
    assert!(url_has_password("redis://:pw@h:1/0"));
    assert!(url_has_password("redis+sentinel://:pw@h:1,h:2/m"));
    assert!(
        has_password("redis+sentinel://u:pw@h:x/m"),
        "even when the rest is malformed"
    );
    assert!(!url_has_password("redis+sentinel://u@h:1/m"));
    assert!(!url_has_password("redis+sentinel://u:@h:1/m"));
    assert!(!url_has_password("redis://h:1/0"));
}
