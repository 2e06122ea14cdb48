//! Per-source rate limits on `/v1/*`: a token bucket per source address,
//! `burst` requests at once, refilled at `per_second`. Past it the answer is
//! 429 `rate_limited` with `Retry-After` (whole seconds until a token is
//! back). Webhooks are not limited: the platforms retry on their own terms,
//! and their deliveries are signed.
//!
//! The source is the TCP peer, or the client a trusted reverse proxy names
//! in `server.trusted_proxy_header` (see [`super::access::source_ip`]). IPv6
//! sources count by their /64, which one host usually holds whole.
//!
//! The table is bounded: at [`MAX_SOURCES`] sources, buckets refilled to
//! full (idle long enough that forgetting them changes nothing) are dropped,
//! and if none is, the least recently seen one.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;

use super::ApiError;
use super::access::source_ip;
use crate::config::{RateLimit, ServerConfig};
use crate::domain::ErrorCode;

/// The most sources whose buckets are kept at once.
pub(crate) const MAX_SOURCES: usize = 10_000;

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The buckets of every source, shared by all workers.
pub(crate) struct RateLimiter {
    limit: Option<RateLimit>,
    proxy_header: Option<String>,
    max_sources: usize,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    pub(crate) fn new(server: &ServerConfig) -> Self {
        Self::with_capacity(server.rate_limit, server.trusted_proxy_header.clone(), MAX_SOURCES)
    }

    fn with_capacity(limit: Option<RateLimit>, proxy_header: Option<String>, max_sources: usize) -> Self {
        RateLimiter {
            limit,
            proxy_header,
            max_sources: max_sources.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token from `source`'s bucket, or says how long until one is
    /// back.
    fn take(&self, source: IpAddr, now: Instant) -> Result<(), Duration> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let burst = f64::from(limit.burst);
        let key = bucket_key(source);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(&key) && buckets.len() >= self.max_sources {
            evict(&mut buckets, limit, now, self.max_sources);
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * limit.per_second).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / limit.per_second))
        }
    }

    #[cfg(test)]
    fn sources(&self) -> usize {
        self.buckets.lock().unwrap().len()
    }
}

/// Makes room for one more source: drops every bucket that has refilled to
/// full, and if that frees nothing, the least recently seen one.
fn evict(buckets: &mut HashMap<IpAddr, Bucket>, limit: RateLimit, now: Instant, max: usize) {
    let refill = Duration::from_secs_f64(f64::from(limit.burst) / limit.per_second);
    buckets.retain(|_, b| now.saturating_duration_since(b.last) < refill);
    if buckets.len() >= max
        && let Some(oldest) = buckets.iter().min_by_key(|(_, b)| b.last).map(|(k, _)| *k)
    {
        buckets.remove(&oldest);
    }
}

/// IPv4 addresses (also IPv4-mapped IPv6) count alone; IPv6 ones by /64.
fn bucket_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The `/v1` middleware: answers 429 `rate_limited` past the source's
/// bucket. Without a [`RateLimiter`] in the app data, nothing is limited.
pub(super) async fn limit_v1(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if let Some(limiter) = req.app_data::<web::Data<RateLimiter>>() {
        let source = source_ip(req.request(), limiter.proxy_header.as_deref());
        if let Err(wait) = limiter.take(source, Instant::now()) {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            return Err(
                ApiError::new(ErrorCode::RateLimited, "too many requests from this source; slow down")
                    .retry_after(secs)
                    .into(),
            );
        }
    }
    next.call(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: f64, burst: u32, max: usize) -> RateLimiter {
        RateLimiter::with_capacity(Some(RateLimit { per_second, burst }), None, max)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_source_gets_its_burst_then_waits_for_the_refill() {
        let l = limiter(2.0, 3, 100);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.take(ip("10.0.0.1"), t0), Ok(()));
        }
        let wait = l.take(ip("10.0.0.1"), t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        // Another source has its own bucket.
        assert_eq!(l.take(ip("10.0.0.2"), t0), Ok(()));
        // Half a second later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(l.take(ip("10.0.0.1"), t1), Ok(()));
        assert!(l.take(ip("10.0.0.1"), t1).is_err());
    }

    #[test]
    fn off_never_limits() {
        let l = RateLimiter::with_capacity(None, None, 1);
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert_eq!(l.take(ip("10.0.0.1"), t0), Ok(()));
        }
        assert_eq!(l.sources(), 0);
    }

    #[test]
    fn the_table_is_bounded_dropping_idle_then_oldest_sources() {
        let l = limiter(1.0, 2, 3);
        let t0 = Instant::now();
        l.take(ip("10.0.0.1"), t0).unwrap();
        l.take(ip("10.0.0.2"), t0 + Duration::from_millis(10)).unwrap();
        l.take(ip("10.0.0.3"), t0 + Duration::from_millis(20)).unwrap();
        // Nobody idle long enough: the least recently seen goes.
        l.take(ip("10.0.0.4"), t0 + Duration::from_millis(30)).unwrap();
        assert_eq!(l.sources(), 3);
        assert!(!l.buckets.lock().unwrap().contains_key(&ip("10.0.0.1")));
        // Much later every bucket is full again: all of them go at once.
        l.take(ip("10.0.0.5"), t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(l.sources(), 1);
        for i in 0..10_000u32 {
            let a = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            l.take(IpAddr::V4(a), t0 + Duration::from_secs(11)).unwrap();
        }
        assert_eq!(l.sources(), 3);
    }

    #[test]
    fn ipv6_sources_count_by_their_64() {
        let l = limiter(1.0, 1, 100);
        let t0 = Instant::now();
        assert_eq!(l.take(ip("2001:db8:1:2::1"), t0), Ok(()));
        assert!(l.take(ip("2001:db8:1:2:ffff::9"), t0).is_err());
        assert_eq!(l.take(ip("2001:db8:1:3::1"), t0), Ok(()));
        assert_eq!(bucket_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
    }
}
