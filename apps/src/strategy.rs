//! Active-learning strategies: which unlabeled image a client should annotate next.
//!
//! * `random`: a random image, weighted by how long ago it was last served by this strategy
//!   (`now - info.strategy.random.ts`; never served → `now`), so recently served images are
//!   unlikely to come back soon. The response carries the chosen image's `weight` (MONAI Label
//!   reports the first image's weight instead; no client reads it).
//! * `first`: the smallest id in string order.

use rand::distributions::{Distribution, WeightedIndex};
use serde_json::{Map, Value};

/// An unlabeled image a strategy may pick.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The image id.
    pub id: String,
    /// Its datastore info (for `strategy.<name>.ts`).
    pub info: Map<String, Value>,
}

/// The strategies this crate implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Weighted random choice.
    Random,
    /// The first id in sort order.
    First,
}

impl Strategy {
    /// All strategies, in `/info/` order.
    pub const ALL: [Strategy; 2] = [Strategy::Random, Strategy::First];

    /// The strategy's protocol name.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Random => "random",
            Strategy::First => "first",
        }
    }

    /// The description `/info/` shows.
    pub fn description(self) -> &'static str {
        match self {
            Strategy::Random => "Random Strategy",
            Strategy::First => "Get First Sample",
        }
    }

    /// Looks a strategy up by name.
    pub fn from_name(name: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Picks an image; `None` when there is no candidate. The result holds `id` (and `weight`
    /// for `random`). `now` is epoch seconds.
    pub fn select(self, candidates: &[Candidate], now: i64) -> Option<Map<String, Value>> {
        if candidates.is_empty() {
            return None;
        }
        let mut out = Map::new();
        match self {
            Strategy::First => {
                let c = candidates.iter().min_by(|a, b| a.id.cmp(&b.id))?;
                out.insert("id".into(), c.id.clone().into());
            }
            Strategy::Random => {
                let weights: Vec<i64> = candidates
                    .iter()
                    .map(|c| {
                        let ts = c
                            .info
                            .get("strategy")
                            .and_then(|s| s.get(self.name()))
                            .and_then(|s| s.get("ts"))
                            .and_then(Value::as_i64)
                            .unwrap_or(0);
                        now.saturating_sub(ts).max(0)
                    })
                    .collect();
                let mut rng = rand::thread_rng();
                let i = match WeightedIndex::new(weights.iter().map(|&w| w as f64)) {
                    Ok(dist) => dist.sample(&mut rng),
                    // every image was served this very second: fall back to a uniform choice
                    Err(_) => rand::Rng::gen_range(&mut rng, 0..candidates.len()),
                };
                out.insert("id".into(), candidates[i].id.clone().into());
                out.insert("weight".into(), weights[i].into());
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cand(id: &str, info: Value) -> Candidate {
        Candidate {
            id: id.into(),
            info: info.as_object().unwrap().clone(),
        }
    }

    #[test]
    fn first_is_smallest_id() {
        let c = [
            cand("b", json!({})),
            cand("a", json!({})),
            cand("c", json!({})),
        ];
        assert_eq!(Strategy::First.select(&c, 100).unwrap()["id"], "a");
        assert!(Strategy::First.select(&[], 100).is_none());
    }

    #[test]
    fn random_avoids_just_served() {
        let now = 1_000_000;
        let c = [
            cand("served", json!({"strategy": {"random": {"ts": now}}})),
            cand("fresh", json!({})),
        ];
        for _ in 0..50 {
            let r = Strategy::Random.select(&c, now).unwrap();
            assert_eq!(r["id"], "fresh");
            assert_eq!(r["weight"], now);
        }
        let all_served = [cand("x", json!({"strategy": {"random": {"ts": now}}}))];
        assert_eq!(
            Strategy::Random.select(&all_served, now).unwrap()["id"],
            "x"
        );
    }

    #[test]
    fn names() {
        assert_eq!(Strategy::from_name("random"), Some(Strategy::Random));
        assert_eq!(Strategy::from_name("epistemic"), None);
    }
}
