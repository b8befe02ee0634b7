//! A token bucket counted exactly in integers.
//!
//! A rate `{limit, per_ms, burst}` refills `limit` tokens every `per_ms`. To stay exact the
//! bucket counts *units* of `1 / per_ms` token: it gains `limit` units per millisecond, holds
//! at most `burst * per_ms` units, and a token costs `per_ms` units. No division happens on
//! refill, so nothing drifts however the refills are spaced.
//!
//! The guarantee this gives (checked by the property tests): in any window `[a, b]`, at most
//! `burst + limit * (b - a) / per_ms` tokens are taken, because the bucket holds at most
//! `burst * per_ms` units at `a` and gains at most `limit * (b - a)` units until `b`.

use serde::{Deserialize, Serialize};

use super::queue::RateLimit;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TokenBucket {
    /// Units held at `updated_ms` (a token is `per_ms` units).
    level_units: u64,
    updated_ms: u64,
}

impl TokenBucket {
    /// A full bucket: a new rate starts with its burst available.
    pub(crate) fn full(rate: &RateLimit, now_ms: u64) -> TokenBucket {
        TokenBucket { level_units: capacity_units(rate), updated_ms: now_ms }
    }

    /// A bucket for `new` holding no more whole tokens than `self` held under `old`, so a
    /// configuration change never hands out extra tokens.
    pub(crate) fn rescaled(&self, old: &RateLimit, new: &RateLimit, now_ms: u64) -> TokenBucket {
        let tokens = self.tokens_at(old, now_ms).min(new.burst);
        TokenBucket { level_units: tokens * new.per_ms, updated_ms: now_ms.max(self.updated_ms) }
    }

    fn level_at(&self, rate: &RateLimit, now_ms: u64) -> u64 {
        let elapsed_ms = now_ms.saturating_sub(self.updated_ms);
        let level = u128::from(self.level_units) + u128::from(elapsed_ms) * u128::from(rate.limit);
        // The capacity fits in a u64 (validated bounds), so the min does too.
        level.min(u128::from(capacity_units(rate))) as u64
    }

    /// Whole tokens available at `now_ms`.
    pub(crate) fn tokens_at(&self, rate: &RateLimit, now_ms: u64) -> u64 {
        self.level_at(rate, now_ms) / rate.per_ms
    }

    /// Takes `count` tokens at `now_ms`. The caller checked `count <= tokens_at(now_ms)`.
    pub(crate) fn take(&mut self, rate: &RateLimit, now_ms: u64, count: u64) {
        let level = self.level_at(rate, now_ms);
        let cost = count * rate.per_ms;
        assert!(cost <= level, "took {count} tokens, only {} available", level / rate.per_ms);
        self.level_units = level - cost;
        self.updated_ms = self.updated_ms.max(now_ms);
    }

    /// The earliest instant at or after `now_ms` at which one whole token is available.
    pub(crate) fn next_token_at_ms(&self, rate: &RateLimit, now_ms: u64) -> u64 {
        let level = self.level_at(rate, now_ms);
        if level >= rate.per_ms {
            return now_ms;
        }
        let missing_units = rate.per_ms - level;
        now_ms.max(self.updated_ms) + missing_units.div_ceil(rate.limit)
    }
}

/// `burst * per_ms`: at most 10^6 × 2.7·10^9 with the validated bounds, far below u64::MAX.
fn capacity_units(rate: &RateLimit) -> u64 {
    rate.burst * rate.per_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(limit: u64, per_ms: u64, burst: u64) -> RateLimit {
        RateLimit { limit, per_ms, burst }
    }

    #[test]
    fn bucket_starts_full_and_refills_exactly() {
        let r = rate(3, 1_000, 2);
        let mut bucket = TokenBucket::full(&r, 0);
        assert_eq!(bucket.tokens_at(&r, 0), 2);
        bucket.take(&r, 0, 2);
        assert_eq!(bucket.tokens_at(&r, 0), 0);
        // 3 tokens per second: one token every 333.33 ms, so the first at 334 ms.
        assert_eq!(bucket.next_token_at_ms(&r, 0), 334);
        assert_eq!(bucket.tokens_at(&r, 333), 0);
        assert_eq!(bucket.tokens_at(&r, 334), 1);
        // Refilling in many small steps loses nothing: 1000 ms in 1 ms steps gives 3 tokens.
        let mut stepped = bucket.clone();
        for now_ms in 1..=1_000 {
            stepped.take(&r, now_ms, 0);
        }
        assert_eq!(stepped.tokens_at(&r, 1_000), 2, "capped at burst");
        assert_eq!(bucket.tokens_at(&r, 1_000), 2);
    }

    #[test]
    fn rescale_never_adds_tokens() {
        let old = rate(1, 1_000, 10);
        let mut bucket = TokenBucket::full(&old, 0);
        bucket.take(&old, 0, 7);
        let new = rate(100, 10, 50);
        let rescaled = bucket.rescaled(&old, &new, 0);
        assert_eq!(rescaled.tokens_at(&new, 0), 3);
    }
}
